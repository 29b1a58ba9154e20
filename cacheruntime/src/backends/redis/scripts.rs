//! The Lua scripts of the Redis backend: each write, delete and
//! invalidation is one script, so it is atomic and one round trip, and a
//! Cluster runs it in the slot of the key's hash tag (`keys.rs`).
//!
//! Each change also publishes its notice (`push.rs`) on [`NOTICES`], in the
//! same script: the last ARGV (`changes::key_notice` for a write or
//! delete, `changes::prefix_notice` for an invalidation; on a Cluster too,
//! where the node that runs the script delivers it, `cluster_push.rs`).
//! Near tiers in other processes drop what it names.
//! The notice is published before the change is made: Redis does not undo
//! a script that fails halfway, so a `PUBLISH` refused (an ACL user without
//! it) must fail the script before it changes anything, never after. (The
//! subscribers hear it when the script has ended, whole.)

use std::sync::LazyLock;

use redis::Script;

/// The Pub/Sub channel of change notices (`push.rs`; on a Cluster,
/// `cluster_push.rs`).
pub(super) const NOTICES: &str = "cacheruntime:changes";

/// What the scripts below share: `seed()`, a fresh counter value from the
/// server's clock (microseconds times 1,000, see `generations::seed`);
/// `notify()`, which publishes the script's notice (its last ARGV);
/// `bump(key, life)`; and `put(last, gens)`, the end of every write: the
/// counters `KEYS[2..last]` made to live at least the entry's TTL
/// (ARGV[2] ms), the notice, and the entry `KEYS[1]` set to ARGV[1] under
/// the generations `gens`.
const SEED_LUA: &str = r"
local function notify()
  if ARGV[#ARGV] ~= '' then
    redis.call('PUBLISH', 'cacheruntime:changes', ARGV[#ARGV])
  end
end
local function seed()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
end
local function bump(key, life)
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCR', key)
  else
    redis.call('SET', key, seed(), 'PX', life)
  end
end
local function put(last, gens)
  local ttl = tonumber(ARGV[2])
  for i = 2, last do
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
  notify()
  redis.call('SET', KEYS[1], struct.pack('>I2', #gens) .. gens .. ARGV[1], 'PX', ttl)
end
";

/// Creates the missing counters of a read. KEYS: counters; ARGV[1]: their
/// life in ms until an entry's write extends it. Returns every counter's
/// value.
pub(super) static ENSURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
local out = {{}}
local fresh = nil
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    fresh = fresh or seed()
    redis.call('SET', KEYS[i], fresh, 'PX', ARGV[1])
    v = fresh
  end
  out[i] = v
end
return out
"
    ))
});

/// The body of [`WRITE`] and [`WRITE_UNLOCK`]: a function `write(last)`
/// taking the entry's counters from `KEYS[2..last]`.
const WRITE_LUA: &str = r"
local function write(last)
  local g = {}
  if last > 1 then
    g = redis.call('MGET', unpack(KEYS, 2, last))
  end
  for i = 1, #g do
    if not g[i] then
      if ARGV[3] ~= '*' then
        return 0
      end
      g[i] = seed()
      redis.call('SET', KEYS[i + 1], g[i])
    end
  end
  local gens = table.concat(g, '.')
  if ARGV[3] ~= '*' and ARGV[3] ~= gens then
    return 0
  end
  put(last, gens)
  return 1
end
";

/// Stores an entry under the current generations. KEYS[1]: entry key;
/// KEYS[2..]: its counters (prefixes shallowest first, then the key's own).
/// ARGV[1]: value, ARGV[2]: TTL ms, ARGV[3]: the generations the writer's
/// read saw, or `*` for "whatever is current" (direct `set`, which creates
/// missing counters), then the notice. Writes nothing if a counter moved or
/// is missing. Every counter is made to live at least as long as the entry.
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}{WRITE_LUA}
return write(#KEYS)
"
    ))
});

/// [`WRITE`], then the release of the key's lock if it still holds our
/// token, in one round trip: the end of a cold miss that held the lock.
/// KEYS as [`WRITE`] with the lock's key last; ARGV as [`WRITE`], ARGV[4]:
/// the token, ARGV[5] the notice. The lock is released whether or not the
/// write was refused.
pub(super) static WRITE_UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}{WRITE_LUA}
local written = write(#KEYS - 1)
if redis.call('GET', KEYS[#KEYS]) == ARGV[4] then
  redis.call('DEL', KEYS[#KEYS])
end
return written
"
    ))
});

/// Takes a key's lock if it is free and reads the key's entry and counters,
/// in one round trip. KEYS[1]: the lock; KEYS[2]: the entry; KEYS[3..]: its
/// counters. ARGV[1]: our token, ARGV[2]: the lock's TTL in ms. Returns
/// `{1 or 0 (taken: now, or already with our token), {entry,
/// counters...}}` (`false` for a missing one).
/// Atomic: a value a holder stored before releasing is seen by whoever
/// takes the lock after it.
pub(super) static LOCK_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local taken = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  or redis.call('GET', KEYS[1]) == ARGV[1]
local found = redis.call('MGET', unpack(KEYS, 2))
if taken then
  return {1, found}
end
return {0, found}
",
    )
});

/// Swaps an entry only if what a read of it answers now is what the caller
/// read: KEYS as [`WRITE`]; ARGV[1]: value, ARGV[2]: TTL ms, ARGV[3]: the
/// generations the caller's read saw (`*`: whatever is current), ARGV[4]:
/// `1` when the caller read bytes (ARGV[5]), `0` when it read no live
/// entry; ARGV[6]: the notice. An entry recorded under other generations than the current ones
/// is no live entry, as on a read. Returns 0 (nothing written) when a
/// counter is missing or moved since the caller's read, or the entry is not
/// what it read.
pub(super) static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
local g = {{}}
if #KEYS > 1 then
  g = redis.call('MGET', unpack(KEYS, 2))
end
for i = 1, #g do
  if not g[i] then
    return 0
  end
end
local gens = table.concat(g, '.')
if ARGV[3] ~= '*' and ARGV[3] ~= gens then
  return 0
end
local raw = redis.call('GET', KEYS[1])
local live = false
if raw and #raw >= 2 then
  local n = struct.unpack('>I2', raw)
  if string.sub(raw, 3, 2 + n) == gens then
    live = string.sub(raw, 3 + n)
  end
end
if ARGV[4] == '1' then
  if live ~= ARGV[5] then
    return 0
  end
elseif live then
  return 0
end
put(#KEYS, gens)
return 1
"
    ))
});

/// A get-or-compute read: the entry and its counters (missing counters
/// created, as [`ENSURE`] does) and, when no live entry is there, the key's
/// lock, in one round trip. KEYS[1]: entry; KEYS[2..n-1]: its counters;
/// KEYS[n]: the lock. ARGV[1]: our token; ARGV[2]: the lock's TTL in ms;
/// ARGV[3]: a created counter's life in ms. Returns `{locked, created,
/// {entry, counters...}}`: `locked` 1 when the lock holds our token after
/// the call (taken now, or already ours); `created` 1 when a counter was
/// missing (nothing recorded before can be served).
///
/// Live means as a read sees it: stored under the current generations.
/// An entry past its deadline in the envelope is live here; the caller
/// takes the lock in a call of its own for it.
pub(super) static READ_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
local last = #KEYS - 1
local found = redis.call('MGET', unpack(KEYS, 1, last))
local fresh = nil
for i = 2, last do
  if not found[i] then
    fresh = fresh or seed()
    redis.call('SET', KEYS[i], fresh, 'PX', ARGV[3])
    found[i] = fresh
  end
end
local live = false
local raw = found[1]
if not fresh and raw and #raw >= 2 then
  local n = struct.unpack('>I2', raw)
  live = string.sub(raw, 3, 2 + n) == table.concat(found, '.', 2, last)
end
local locked = 0
if not live then
  local lock = KEYS[#KEYS]
  if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', lock) == ARGV[1] then
    locked = 1
  end
end
local created = 0
if fresh then
  created = 1
end
return {{locked, created, found}}
"
    ))
});

/// Bumps a prefix's generation, or creates it from the clock if missing
/// (to live ARGV[1] ms unless an entry's write extends it); ARGV[2]: the
/// notice.
pub(super) static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
notify()
bump(KEYS[1], ARGV[1])
return 1
"
    ))
});

/// Deletes an entry and bumps the key's own counter, so a write under a
/// ticket read before the delete is refused. KEYS[1]: entry, KEYS[2]: the
/// key's counter; ARGV[1]: its life in ms if it has to be created, ARGV[2]:
/// the notice.
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
notify()
redis.call('UNLINK', KEYS[1])
bump(KEYS[2], ARGV[1])
return 1
"
    ))
});

/// Deletes a lock only if it still holds our token.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});
