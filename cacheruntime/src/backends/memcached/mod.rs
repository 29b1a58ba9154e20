//! Memcached backend (feature `memcached`).
//!
//! # Client
//! The async meta-protocol client of the `memcache` crate (0.21, module
//! `exp`), chosen over the alternatives because it is async on Tokio, pools
//! connections and discards a connection whose exchange was cancelled (so
//! the cache's op timeout cannot leave a half-read reply on a reused
//! socket), pipelines a batch of commands on one connection, and applies
//! Memcached's TTL rules (a TTL over 30 days is sent as an absolute
//! timestamp). `async-memcached` holds one connection behind `&mut self`
//! and has no pool; `memcache`'s classic client is blocking.
//!
//! The cost of that choice: this client speaks the text/meta protocol, and
//! Memcached's SASL needs the binary protocol, so **there is no SASL and no
//! TLS** here. Run Memcached on a private network (a VPC or a host firewall
//! that only admits the app servers), or behind a TLS tunnel (stunnel,
//! spiped) on loopback; for authenticated, encrypted caching of content
//! shown to users prefer the Redis backend (ACL + TLS).
//!
//! # A pool of servers
//! One client per server (`servers.rs`), so that each server has:
//! - **its own circuit breaker**: after repeated failures (errors, or
//!   exchanges the op timeout abandoned) the calls that need that server
//!   fail at once for a cool-down, while the others' keys are served and
//!   invalidated as usual. The backend says so through
//!   [`Backend::isolates_failures`], and the cache keeps its whole-store
//!   breaker out of the way ([`MemcachedConfig::circuit_breaker`]);
//! - **a bounded set of connections** (16 by default,
//!   [`MemcachedConfig::max_connections`], URL `max_connections`): a burst
//!   of calls queues for them within the op timeout instead of opening
//!   connections until the server refuses them.
//!
//! Keys and counters are placed by rendezvous hashing with a hash fixed in
//! `ring.rs` (FNV-1a and SplitMix64, never `DefaultHasher`) over each
//! server's resolved address, so every process places them alike however
//! it writes the servers (`localhost` or `127.0.0.1`, in any order), and
//! adding a server moves about `1/n` of them. Entries are placed by their
//! whole key, so the keys of one template spread over the pool.
//!
//! # Keys
//! `v:<key>` (entry), `l:<key>` (lock), `x:<key>` (the key's counter),
//! `g:<prefix>` (a prefix's counter); see `keys.rs`. Keys may be at most
//! 250 bytes with no whitespace or control characters: longer or unusual
//! ones are stored under a readable prefix plus a SHA-256 of the whole
//! key, deterministically.
//!
//! # Prefix invalidation and deletes
//! Generation counters, as on Redis: every `:`-prefix of a key and the key
//! itself have a counter; an entry records their values when its read was
//! made, and is served only if every counter still holds what it recorded.
//! Each counter has two copies, on two servers, read with the entry (one
//! multi-get per server involved, the servers in parallel: one round
//! trip); see `counters.rs` for why two, and what they guarantee when a
//! server dies or the pool changes. `invalidate_prefix` bumps the prefix's
//! copies (one more if there, else a fresh seed); `delete` removes the
//! entry and bumps the key's own copies, so a value computed before the
//! delete and written after it is never served.
//!
//! A missing counter (never used, evicted, expired, on a restarted server)
//! is never read as a value: the entry is a miss, and the read adds the
//! counter anew before its computation starts. A counter starts at the
//! current time in microseconds times 1,000 (plus a random part below
//! 1,000), so one that is lost and created again never repeats a value an
//! entry recorded (this relies on the app servers' clocks not running
//! backwards by more than the life of a counter's values). Prefix counters
//! live `max_ttl` (365 days, which caps entry TTLs); a key's own counter
//! lives an hour, and each write of the key extends it to the entry's TTL,
//! so the counters of keys no longer cached do not pile up. An entry that
//! outlives a counter is a miss, never wrong.

mod config;
mod counters;
mod keys;
mod ring;
mod servers;
mod setup;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use memcache::exp::{Arithmetic, Delete, Get, Meta, MutationStatus, Op, OpResult, Set};

pub use self::config::MemcachedConfig;
use self::counters::{current_entry, every_counter_read, stamp, Layout, Seen};
use self::keys::{lock_key, prefix_counter_key};
use self::servers::Pool;
use self::setup::Setup;
use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::backends::generations::{seed, wrap_entry};
use crate::clock::Clock;
use crate::url::redact;
use crate::Error;

const NAME: &str = "memcached";

/// A Memcached store; see the module docs.
pub struct MemcachedBackend {
    config: MemcachedConfig,
    /// The pool, set up in the background (`setup.rs`).
    setup: Setup,
    clock: Clock,
}

impl fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field(
                "servers",
                &self
                    .config
                    .servers
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn vanished() -> Error {
    Error::backend(
        NAME,
        "generation counters vanished as they were added (is the server out of memory?)",
    )
}

/// The results of one server's batch, or why it failed.
type Outcome = Result<Vec<OpResult>, Error>;

impl MemcachedBackend {
    /// Checks the settings (see [`MemcachedConfig`]) and prepares the
    /// backend without connecting.
    pub fn new(config: MemcachedConfig) -> Result<Self, Error> {
        config.check()?;
        Ok(MemcachedBackend {
            setup: Setup::new(config.clone()),
            config,
            clock: Clock::system(),
        })
    }

    async fn pool(&self) -> Result<&Pool, Error> {
        self.setup.pool().await
    }

    /// An entry's TTL as Memcached keeps it: whole seconds, at least one,
    /// at most `max_ttl` (checked at build to be at least one second).
    fn ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(Duration::from_secs(1), self.config.max_ttl)
    }

    /// How long a counter lives from its creation: a prefix's `max_ttl`
    /// (they are few, and entries of every TTL record them); a key's own an
    /// hour, extended to its entry's TTL by each write, so the counters of
    /// keys no longer cached do not pile up.
    fn life(&self, own: bool) -> Duration {
        if own {
            self.config.max_ttl.min(Duration::from_secs(3600))
        } else {
            self.config.max_ttl
        }
    }

    fn fresh_seed(&self, salt: usize) -> u64 {
        seed((u64::from(std::process::id()) ^ self.clock.now_ms()).wrapping_add(salt as u64))
    }

    /// Reads every counter copy of `layout`, and its entry when `entry`:
    /// one multi-get per server, the servers in parallel. Fails if the
    /// entry's server, or both copies of a counter, could not be asked.
    async fn read(
        &self,
        pool: &Pool,
        layout: &Layout,
        entry: bool,
    ) -> Result<(Option<Vec<u8>>, Vec<Seen>), Error> {
        // Per server: the slots asked there (`None`: the entry).
        let mut slots: Vec<Vec<Option<usize>>> = vec![Vec::new(); pool.ring().len()];
        if entry {
            slots[layout.home].push(None);
        }
        for (j, copy) in layout.copies.iter().enumerate() {
            slots[copy.server].push(Some(j));
        }
        let mut groups = Vec::with_capacity(slots.len());
        let mut batches = Vec::with_capacity(slots.len());
        for (server, group) in slots.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let ops = group
                .iter()
                .map(|slot| {
                    let key = slot.map_or(&layout.entry, |j| &layout.copies[j].key);
                    Op::from(Get::new(key))
                })
                .collect();
            batches.push((server, ops));
            groups.push(group);
        }
        let mut stored = None;
        let mut seen = vec![Seen::Unread; layout.copies.len()];
        let mut failure = None;
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for (slot, result) in group.into_iter().zip(results) {
                        let value = match result {
                            OpResult::Get(got) => got.value,
                            _ => None,
                        };
                        match slot {
                            None => stored = value,
                            Some(j) => seen[j] = Seen::of(value),
                        }
                    }
                }
                Err(e) if group.contains(&None) => return Err(e),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if !every_counter_read(layout, &seen) {
            return Err(failure.unwrap_or_else(vanished));
        }
        Ok((stored, seen))
    }

    /// Adds the missing copies of `seen` with a fresh seed and reads them
    /// again, in one exchange per server: the values a write after this
    /// read records. (`add` leaves a copy another process added first: the
    /// value read is the copy's either way.)
    async fn add_missing(
        &self,
        pool: &Pool,
        layout: &Layout,
        mut seen: Vec<Seen>,
    ) -> Result<Vec<Seen>, Error> {
        let mut slots: Vec<Vec<usize>> = vec![Vec::new(); pool.ring().len()];
        for (j, s) in seen.iter().enumerate() {
            if *s == Seen::Missing {
                slots[layout.copies[j].server].push(j);
            }
        }
        let mut groups = Vec::new();
        let mut batches = Vec::new();
        for (server, group) in slots.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut ops = Vec::with_capacity(2 * group.len());
            for &j in &group {
                let copy = &layout.copies[j];
                let fresh = self.fresh_seed(j).to_string();
                ops.push(Op::from(
                    Set::new(&copy.key, fresh).add().ttl(self.life(copy.own)),
                ));
                ops.push(Op::from(Get::new(&copy.key)));
            }
            batches.push((server, ops));
            groups.push(group);
        }
        let mut failure = None;
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for (j, pair) in group.into_iter().zip(results.chunks(2)) {
                        seen[j] = match pair.get(1) {
                            Some(OpResult::Get(got)) => Seen::of(got.value.clone()),
                            _ => Seen::Missing,
                        };
                        if seen[j] == Seen::Missing {
                            return Err(vanished());
                        }
                    }
                }
                Err(e) => {
                    for j in group {
                        seen[j] = Seen::Unread;
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        if !every_counter_read(layout, &seen) {
            return Err(failure.unwrap_or_else(vanished));
        }
        Ok(seen)
    }

    async fn run_get(&self, key: &str) -> Result<Lookup, Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let (stored, seen) = self.read(pool, &layout, true).await?;
        if let Some(stamp) = stamp(&seen) {
            let value = stored.and_then(|stored| current_entry(stored, &seen));
            return Ok(Lookup::new(value).with_ticket(Ticket::tag(stamp)));
        }
        // A counter copy is missing: nothing recorded under it is served.
        let seen = self.add_missing(pool, &layout, seen).await?;
        let stamp = stamp(&seen).ok_or_else(vanished)?;
        Ok(Lookup::new(None).with_ticket(Ticket::tag(stamp)))
    }

    /// What a write without a ticket records: the counters as they are now.
    async fn current_stamp(&self, pool: &Pool, layout: &Layout) -> Result<String, Error> {
        let (_, seen) = self.read(pool, layout, false).await?;
        if let Some(stamp) = stamp(&seen) {
            return Ok(stamp);
        }
        let seen = self.add_missing(pool, layout, seen).await?;
        stamp(&seen).ok_or_else(vanished)
    }

    async fn run_set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<(), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let stamp = match ticket.and_then(Ticket::as_tag) {
            // Stamped with what the read saw: if the counters moved since,
            // readers will not serve it.
            Some(stamp) => stamp.to_owned(),
            None => self.current_stamp(pool, &layout).await?,
        };
        let stored = wrap_entry(&stamp, &value);
        if stored.len() > self.config.max_item_bytes {
            return Err(Error::TooLarge {
                size: stored.len(),
                limit: self.config.max_item_bytes,
            });
        }
        let ttl = self.ttl(ttl);
        // The key's own counter lives as long as its entry (an hour when it
        // has none), touched in the same exchange as the write; a failed
        // touch lets it lapse early, which makes the entry a miss then.
        let own_life = ttl.max(self.life(true));
        let touch = |key: &str| Op::from(Get::new(key).touch(own_life).without_value());
        let mut batches = vec![(
            layout.home,
            vec![Op::from(Set::new(&layout.entry, stored).ttl(ttl))],
        )];
        for copy in layout.own() {
            match batches
                .iter_mut()
                .find(|(server, _)| *server == copy.server)
            {
                Some((_, ops)) => ops.push(touch(&copy.key)),
                None => batches.push((copy.server, vec![touch(&copy.key)])),
            }
        }
        let mut outcomes = pool.fan_out(batches).await.into_iter();
        match outcomes.next() {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Bumps `counter` on the servers of `copies` (one more if there,
    /// renewing its life; else a fresh seed), each after the ops given for
    /// its server, in one exchange per server, the servers in parallel.
    ///
    /// Succeeds when one copy was bumped: readers compare both, so a copy
    /// whose server could not be reached is outvoted while the other can
    /// be read (see `counters.rs`).
    async fn bump(
        &self,
        pool: &Pool,
        batches: Vec<(usize, Vec<Op>)>,
        counter: &str,
        life: Duration,
    ) -> Result<(), Error> {
        let fresh = self.fresh_seed(0);
        let bump = Arithmetic::new(counter)
            .initial(fresh, wire_ttl(life))
            .ttl(life);
        let batches: Vec<(usize, Vec<Op>)> = batches
            .into_iter()
            .map(|(server, mut ops)| {
                ops.push(Op::from(bump.clone()));
                (server, ops)
            })
            .collect();
        let servers: Vec<usize> = batches.iter().map(|(server, _)| *server).collect();
        let outcomes: Vec<Outcome> = pool.fan_out(batches).await;
        let bumped = |outcome: &Outcome| {
            matches!(outcome, Ok(results)
                if matches!(results.last(), Some(OpResult::Arithmetic(a)) if a.applied()))
        };
        if outcomes.iter().any(bumped) {
            for (server, outcome) in servers.iter().zip(&outcomes) {
                if let Err(e @ Error::Backend { .. }) = outcome {
                    tracing::warn!(
                        server = pool.shown(*server),
                        error = %e,
                        "an invalidation reached one copy of a Memcached counter: the other \
                         copy's server failed (readers compare both copies)"
                    );
                }
            }
            return Ok(());
        }
        Err(outcomes
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| Error::backend(NAME, "the counter was not bumped")))
    }

    async fn run_delete(&self, key: &str) -> Result<(), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut batches: Vec<(usize, Vec<Op>)> = Vec::with_capacity(2);
        let mut counter = String::new();
        for copy in layout.own() {
            // The entry first: a write stamped before the bump stays hidden
            // either way; this only frees its memory.
            let ops = if copy.server == layout.home {
                vec![Op::from(Delete::new(&layout.entry))]
            } else {
                Vec::new()
            };
            batches.push((copy.server, ops));
            counter.clone_from(&copy.key);
        }
        self.bump(pool, batches, &counter, self.life(true)).await
    }

    async fn run_invalidate(&self, prefix: &str) -> Result<(), Error> {
        // Whole segments only, as the cache checks (a store used directly
        // must not bump a counter no read consults).
        crate::key::check_prefix(prefix)?;
        if prefix.is_empty() {
            return Err(Error::InvalidPrefix {
                prefix: prefix.to_owned(),
                reason: "on Memcached, invalidating everything needs a namespace: give the cache \
                         one (`?namespace=app` or `.namespace(\"app\")`) and invalidate \"\" within it",
            });
        }
        let pool = self.pool().await?;
        let (first, second) = pool.ring().top2(prefix);
        let batches = std::iter::once(first)
            .chain(second)
            .map(|server| (server, Vec::new()))
            .collect();
        self.bump(pool, batches, &prefix_counter_key(prefix), self.life(false))
            .await
    }

    async fn run_lock(&self, key: &str, token: Bytes, ttl: Duration) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().top2(key).0;
        let add = Set::new(lock_key(key), &token[..]).add().ttl(self.ttl(ttl));
        let results = pool.run(home, vec![Op::from(add)]).await?;
        Ok(matches!(results.first(), Some(OpResult::Mutation(m)) if m.applied()))
    }

    async fn run_unlock(&self, key: &str, token: &[u8]) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().top2(key).0;
        let lock = lock_key(key);
        let read = Get::new(&lock).meta(Meta::NONE.cas());
        let results = pool.run(home, vec![Op::from(read)]).await?;
        let Some(OpResult::Get(held)) = results.into_iter().next() else {
            return Ok(false);
        };
        let (Some(value), Some(cas)) = (held.value, held.item.cas) else {
            return Ok(false);
        };
        if value != token {
            return Ok(false);
        }
        // Deleted only if nobody replaced it since we read it.
        let delete = Delete::new(&lock).compare_cas(cas);
        let results = pool.run(home, vec![Op::from(delete)]).await?;
        Ok(matches!(results.first(),
            Some(OpResult::Mutation(m)) if m.status == MutationStatus::Applied))
    }
}

/// A TTL as Memcached's protocol takes it where the client does not convert
/// it: seconds up to 30 days, an absolute Unix time beyond.
fn wire_ttl(ttl: Duration) -> u32 {
    const MONTH: u64 = 30 * 86_400;
    let secs = ttl.as_secs().max(1);
    if secs <= MONTH {
        return secs as u32;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_add(secs).min(u64::from(u32::MAX)) as u32
}

impl Backend for MemcachedBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// One breaker per server: a dead server fails its own keys fast and
    /// leaves the others' served.
    fn isolates_failures(&self) -> bool {
        true
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(self.run_get(key))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_set(key, value, ttl, ticket))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_delete(key))
    }

    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_invalidate(prefix))
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.run_lock(key, value, ttl))
    }

    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.run_unlock(key, value))
    }
}
