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
//! Placement needs every server's address, so the pool is set up (names
//! looked up, a client per server) once, in a background task that no
//! caller's op timeout cancels (`setup.rs`): while a lookup slower than
//! the op timeout runs, calls fail at once (the cache computes) instead of
//! each starting another lookup and waiting out the op timeout; a failed
//! setup is tried again after the breaker's cool-down.
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
//! made, and is served only if every counter still has the value it
//! recorded. Each counter has `N = min(3, servers)` copies, on the servers
//! its name scores highest for, read with the entry (one multi-get per
//! server involved, the servers in parallel: one round trip).
//!
//! Copies are kept by quorum (`counters.rs`): a counter's value is the
//! greatest among its copies that answered, provided at least `R` did
//! (else the read is a miss that stores nothing); `invalidate_prefix`
//! and `delete` read the counter's copies, then set each one they can
//! reach to a value above the greatest read and at least a fresh clock
//! seed, and succeed only when a majority (`W = N/2 + 1`) took it. With
//! `R + W > N` every read meets a copy that every successful bump moved.
//! A bump that reaches fewer returns an error saying it may have partly
//! happened and to retry it. A bump costs two round trips (read, then
//! set). `delete` also removes the entry (in the first), so a value
//! computed before the delete and written after it is never served.
//!
//! | servers | one server down | two servers down |
//! |---|---|---|
//! | 1 | nothing cached, bumps fail | |
//! | 2 | reads work, bumps fail | nothing cached, bumps fail |
//! | 3 | reads and bumps work | nothing cached, bumps fail |
//! | 4+ | reads and bumps work | counters with two copies there: unknown |
//!
//! A missing counter (every copy that answered is absent: never used,
//! evicted, expired, on restarted servers) is never read as a value: the
//! entry is a miss, and the read adds the counter anew on those copies
//! before its computation starts. A counter with only some copies absent
//! (a server restarted or added, or another caller creating the counter
//! at this moment) has them added with its greatest value and read again
//! before the read decides, so that callers settle on one value; only
//! these reads take a second round trip. A counter starts at the current time in
//! microseconds times 1,000 (plus a random part below 1,000), so one that
//! is lost and created again never repeats a value an entry recorded
//! (this relies on the app servers' clocks not running backwards by more
//! than the life of a counter's values). Prefix counters live `max_ttl`
//! (365 days, which caps entry TTLs); a key's own counter lives an hour,
//! and each write of the key extends it to the entry's TTL, so the
//! counters of keys no longer cached do not pile up. An entry that
//! outlives a counter is a miss, never wrong.

mod config;
mod counters;
mod keys;
mod ring;
mod servers;
mod setup;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use memcache::exp::{Delete, Get, Meta, MutationStatus, Op, OpResult, Set};

pub use self::config::MemcachedConfig;
use self::counters::{
    bumped, current_entry, greatest, reading as reading_of, stamp, Counter, Layout, Quorum,
    Reading, Seen,
};
use self::keys::{lock_key, prefix_counter_key};
use self::servers::Pool;
use self::setup::Setup;
use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::backends::generations::{seed, wrap_entry};
use crate::clock::Clock;
use crate::secrets::redact;
use crate::Error;

const NAME: &str = "memcached";

/// How long a background repair of counter copies may take.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(1);

/// A Memcached store; see the module docs.
pub struct MemcachedBackend {
    config: MemcachedConfig,
    /// The pool, set up in the background (`setup.rs`).
    setup: Setup,
    /// The counters whose copies are being brought up to their greatest.
    repairing: Arc<Mutex<HashSet<String>>>,
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

/// What one read of a key's counters (and entry) found.
struct Read {
    /// The entry, if asked for and there.
    stored: Option<Vec<u8>>,
    /// Each counter's copies, in the order of their servers.
    seen: Vec<Vec<Seen>>,
    /// The CAS token of each copy read with a value.
    cas: Vec<Vec<Option<u64>>>,
    /// Why a server holding copies could not be asked, if one could not.
    failure: Option<Error>,
}

/// The error of a read that heard from too few copies of a counter: its
/// server's own when that is a circuit open (the cache counts a skip),
/// else one that says what is unknown.
fn unknown(layout: &Layout, counter: usize, answered: usize, failure: Option<Error>) -> Error {
    if let Some(e @ Error::CircuitOpen { .. }) = failure {
        return e;
    }
    let quorum = layout.quorum;
    Error::backend(
        NAME,
        format!(
            "{answered} of the {n} servers holding the generation counter `{name}` answered, \
             {r} needed to know its value: the entry is a miss and nothing computed now is \
             stored{}",
            cause(failure.as_ref()),
            name = layout.counters[counter].key,
            n = quorum.copies,
            r = quorum.read,
        ),
    )
}

/// ` (<why>)` when there is a why.
fn cause(failure: Option<&Error>) -> String {
    failure.map_or_else(String::new, |e| format!(" ({e})"))
}

impl MemcachedBackend {
    /// Checks the settings (see [`MemcachedConfig`]) and prepares the
    /// backend without connecting.
    pub fn new(config: MemcachedConfig) -> Result<Self, Error> {
        config.check()?;
        Ok(MemcachedBackend {
            setup: Setup::new(config.clone()),
            config,
            repairing: Arc::default(),
            clock: Clock::system(),
        })
    }

    async fn pool(&self) -> Result<&Arc<Pool>, Error> {
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
    /// one multi-get per server, the servers in parallel. Fails only if the
    /// entry's server could not be asked; a copy whose server could not be
    /// is [`Seen::Unread`].
    async fn read(&self, pool: &Pool, layout: &Layout, entry: bool) -> Result<Read, Error> {
        // Per server: the slots asked there (`None`: the entry; else a
        // counter and which of its copies).
        let mut slots: Vec<Vec<Option<(usize, usize)>>> = vec![Vec::new(); pool.ring().len()];
        if entry {
            slots[layout.home].push(None);
        }
        for (c, counter) in layout.counters.iter().enumerate() {
            for (k, &server) in counter.servers.iter().enumerate() {
                slots[server].push(Some((c, k)));
            }
        }
        let mut groups = Vec::with_capacity(slots.len());
        let mut batches = Vec::with_capacity(slots.len());
        for (server, group) in slots.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let ops = group
                .iter()
                .map(|slot| match slot {
                    None => Op::from(Get::new(&layout.entry)),
                    Some((c, _)) => {
                        Op::from(Get::new(&layout.counters[*c].key).meta(Meta::NONE.cas()))
                    }
                })
                .collect();
            batches.push((server, ops));
            groups.push(group);
        }
        let mut read = Read {
            stored: None,
            seen: layout
                .counters
                .iter()
                .map(|c| vec![Seen::Unread; c.servers.len()])
                .collect(),
            cas: layout
                .counters
                .iter()
                .map(|c| vec![None; c.servers.len()])
                .collect(),
            failure: None,
        };
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for (slot, result) in group.into_iter().zip(results) {
                        let (value, cas) = match result {
                            OpResult::Get(got) => (got.value, got.item.cas),
                            _ => (None, None),
                        };
                        match slot {
                            None => read.stored = value,
                            Some((c, k)) => {
                                read.seen[c][k] = Seen::of(value.as_deref());
                                read.cas[c][k] = cas;
                            }
                        }
                    }
                }
                Err(e) if group.contains(&None) => return Err(e),
                Err(e) => {
                    read.failure.get_or_insert(e);
                }
            }
        }
        Ok(read)
    }

    /// Every counter's value from a read that found each one at least
    /// `R` answers (see [`Reading`]): adds the copies that answered
    /// without a value (with the counter's greatest value, or a fresh seed
    /// when it has none) and reads them again, in one exchange per server,
    /// then takes the greatest of what the two rounds saw. (`add` leaves a
    /// copy another caller added first: the value read is the copy's
    /// either way, and copies with a value do not change but by a bump.)
    async fn fill(
        &self,
        pool: &Pool,
        layout: &Layout,
        readings: &[Reading],
        seen: &[Vec<Seen>],
    ) -> Result<Vec<u64>, Error> {
        // One value per counter, the same on each of its copies: a counter
        // whose copies differ loses entries when its greatest copy is down.
        let added: Vec<String> = readings
            .iter()
            .enumerate()
            .map(|(c, reading)| match reading {
                Reading::Incomplete(Some(value)) => value.to_string(),
                _ => self.fresh_seed(c).to_string(),
            })
            .collect();
        let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); pool.ring().len()];
        for (c, reading) in readings.iter().enumerate() {
            if let Reading::Incomplete(_) = reading {
                for (k, s) in seen[c].iter().enumerate() {
                    if *s == Seen::Absent {
                        slots[layout.counters[c].servers[k]].push((c, k));
                    }
                }
            }
        }
        let mut groups = Vec::new();
        let mut batches = Vec::new();
        for (server, group) in slots.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut ops = Vec::with_capacity(2 * group.len());
            for &(c, _) in &group {
                let counter = &layout.counters[c];
                ops.push(Op::from(
                    Set::new(&counter.key, &added[c][..])
                        .add()
                        .ttl(self.life(counter.own)),
                ));
                ops.push(Op::from(Get::new(&counter.key)));
            }
            batches.push((server, ops));
            groups.push(group);
        }
        // What the copies hold now: those read with a value, as read (only
        // a bump changes them); the others, as read again.
        let mut now: Vec<Vec<Seen>> = seen
            .iter()
            .map(|copies| {
                copies
                    .iter()
                    .map(|s| match s {
                        Seen::Value(_) => *s,
                        _ => Seen::Unread,
                    })
                    .collect()
            })
            .collect();
        let mut failure = None;
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            match outcome {
                Ok(results) => {
                    for ((c, k), pair) in group.into_iter().zip(results.chunks(2)) {
                        now[c][k] = match pair.get(1) {
                            Some(OpResult::Get(got)) => Seen::of(got.value.as_deref()),
                            _ => Seen::Absent,
                        };
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut values = Vec::with_capacity(readings.len());
        for (c, reading) in readings.iter().enumerate() {
            values.push(match *reading {
                Reading::Known(value) => value,
                Reading::Incomplete(_) => match reading_of(&now[c], layout.quorum) {
                    Reading::Unknown { answered } => {
                        return Err(unknown(layout, c, answered, failure))
                    }
                    // A copy absent just after it was added: evicted at
                    // once. The others decide, if any has a value.
                    Reading::Known(value) | Reading::Incomplete(Some(value)) => value,
                    Reading::Incomplete(None) => return Err(vanished()),
                },
                Reading::Unknown { answered } => return Err(unknown(layout, c, answered, failure)),
            });
        }
        Ok(values)
    }

    /// Each counter's value from `read`, filling absent copies; `Err` if
    /// one is unknown (fewer than `R` copies answered). The second item
    /// says whether an entry may be served: not when a counter was missing
    /// (no entry can have recorded its new value).
    async fn values(
        &self,
        pool: &Pool,
        layout: &Layout,
        read: &mut Read,
    ) -> Result<(Vec<u64>, bool), Error> {
        let readings: Vec<Reading> = read
            .seen
            .iter()
            .map(|seen| reading_of(seen, layout.quorum))
            .collect();
        let mut complete = Vec::with_capacity(readings.len());
        for (c, reading) in readings.iter().enumerate() {
            match reading {
                Reading::Known(value) => complete.push(*value),
                Reading::Unknown { answered } => {
                    return Err(unknown(layout, c, *answered, read.failure.take()))
                }
                Reading::Incomplete(_) => {}
            }
        }
        if complete.len() == readings.len() {
            return Ok((complete, true));
        }
        let missing = readings.contains(&Reading::Incomplete(None));
        let values = self.fill(pool, layout, &readings, &read.seen).await?;
        Ok((values, !missing))
    }

    /// Brings the copies a read found below their counter's value up to
    /// it, in the background (the read stays one round trip), each only if
    /// unchanged since the read (CAS). So a bump that reached a majority
    /// but not every copy, or copies added concurrently with different
    /// seeds, converge: the counter keeps its value when the servers
    /// holding its greatest copies go down, and a later loss of those
    /// copies cannot bring a lower value back. Copies absent are left
    /// alone (adding one could bring back a value lost since the read).
    fn repair(&self, pool: &Arc<Pool>, layout: &Layout, read: &Read, values: &[u64]) {
        let mut batches: Vec<(usize, Vec<Op>)> = Vec::new();
        let mut keys = Vec::new();
        for ((counter, value), (seen, cas)) in layout
            .counters
            .iter()
            .zip(values)
            .zip(read.seen.iter().zip(&read.cas))
        {
            let behind: Vec<(usize, u64)> = counter
                .servers
                .iter()
                .zip(seen.iter().zip(cas))
                .filter_map(|(&server, (s, cas))| match (s, cas) {
                    (Seen::Value(v), Some(cas)) if v < value => Some((server, *cas)),
                    _ => None,
                })
                .collect();
            if behind.is_empty() {
                continue;
            }
            let mut repairing = self.repairing.lock().unwrap_or_else(|e| e.into_inner());
            if !repairing.insert(counter.key.clone()) {
                continue;
            }
            drop(repairing);
            keys.push(counter.key.clone());
            let set = Set::new(&counter.key, value.to_string()).ttl(self.life(counter.own));
            for (server, cas) in behind {
                let op = Op::from(set.clone().compare_cas(cas));
                match batches.iter_mut().find(|(s, _)| *s == server) {
                    Some((_, ops)) => ops.push(op),
                    None => batches.push((server, vec![op])),
                }
            }
        }
        if batches.is_empty() {
            return;
        }
        let (pool, repairing) = (pool.clone(), self.repairing.clone());
        tokio::spawn(async move {
            // Bounded like a call: a hung server does not keep it.
            let _ = tokio::time::timeout(REPAIR_TIMEOUT, pool.fan_out(batches)).await;
            let mut repairing = repairing.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                repairing.remove(&key);
            }
        });
    }

    async fn run_get(&self, key: &str) -> Result<Lookup, Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut read = self.read(pool, &layout, true).await?;
        let (values, servable) = self.values(pool, &layout, &mut read).await?;
        self.repair(pool, &layout, &read, &values);
        let value = match read.stored {
            Some(stored) if servable => current_entry(stored, &values),
            _ => None,
        };
        Ok(Lookup::new(value).with_ticket(Ticket::tag(stamp(&values))))
    }

    /// What a write without a ticket records: the counters as they are now.
    async fn current_stamp(&self, pool: &Pool, layout: &Layout) -> Result<String, Error> {
        let mut read = self.read(pool, layout, false).await?;
        let (values, _) = self.values(pool, layout, &mut read).await?;
        Ok(stamp(&values))
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
        // touch lets a copy lapse early, which the other copies cover, or
        // makes the entry a miss.
        let own_life = ttl.max(self.life(true));
        let own = layout.own();
        let touch = || Op::from(Get::new(&own.key).touch(own_life).without_value());
        // The own counter's first copy is on the entry's server.
        let mut batches: Vec<(usize, Vec<Op>)> = own
            .servers
            .iter()
            .map(|&server| (server, vec![touch()]))
            .collect();
        batches[0]
            .1
            .insert(0, Op::from(Set::new(&layout.entry, stored).ttl(ttl)));
        let mut outcomes = pool.fan_out(batches).await.into_iter();
        match outcomes.next() {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Bumps `counter` (`what` says which, for errors): reads its copies,
    /// then sets every copy to a value above the greatest read and at
    /// least a fresh seed, the servers in parallel each time. `first` runs
    /// on the first copy's server just before its read.
    ///
    /// Succeeds when at least `W` copies took the new value: every read
    /// quorum contains one of them. Otherwise the error says the bump may
    /// have partly happened and to retry it: a read that hears only from
    /// copies it missed still sees the old value.
    async fn bump(
        &self,
        pool: &Pool,
        quorum: Quorum,
        counter: &Counter,
        mut first: Option<Op>,
        what: &str,
    ) -> Result<(), Error> {
        let batches: Vec<(usize, Vec<Op>)> = counter
            .servers
            .iter()
            .map(|&server| {
                let read = Op::from(Get::new(&counter.key));
                (server, first.take().into_iter().chain([read]).collect())
            })
            .collect();
        let mut seen = Vec::with_capacity(counter.servers.len());
        let mut failure = None;
        for outcome in pool.fan_out(batches).await {
            seen.push(match outcome {
                Ok(results) => match results.last() {
                    Some(OpResult::Get(got)) => Seen::of(got.value.as_deref()),
                    _ => Seen::Absent,
                },
                Err(e) => {
                    failure.get_or_insert(e);
                    Seen::Unread
                }
            });
        }
        if let Reading::Unknown { answered } = reading_of(&seen, quorum) {
            return Err(Error::backend(
                NAME,
                format!(
                    "{what} did not happen: {answered} of the {n} servers holding its generation \
                     counter answered, {r} needed to know its value; retry it{}",
                    cause(failure.as_ref()),
                    n = quorum.copies,
                    r = quorum.read,
                ),
            ));
        }
        let next = bumped(greatest(&seen), self.fresh_seed(0)).to_string();
        let set = Set::new(&counter.key, next).ttl(self.life(counter.own));
        let batches = counter
            .servers
            .iter()
            .map(|&server| (server, vec![Op::from(set.clone())]))
            .collect();
        let outcomes = pool.fan_out(batches).await;
        let took = outcomes
            .iter()
            .filter(|outcome| {
                matches!(outcome, Ok(results)
                    if matches!(results.first(), Some(OpResult::Mutation(m)) if m.applied()))
            })
            .count();
        let mut failure = None;
        for (&server, outcome) in counter.servers.iter().zip(outcomes) {
            if let Err(e) = outcome {
                if took >= quorum.write {
                    tracing::warn!(
                        server = pool.shown(server),
                        error = %e,
                        "an invalidation reached a majority of a Memcached counter's copies \
                         but not this server's (readers take the greatest of a majority; the \
                         next read with every server up brings it level)"
                    );
                }
                failure.get_or_insert(e);
            }
        }
        if took >= quorum.write {
            return Ok(());
        }
        Err(Error::backend(
            NAME,
            format!(
                "{what} may have partly happened: {took} of the {n} copies of its generation \
                 counter took the new value, {w} needed, so some readers may still see the old \
                 one; retry it until it succeeds{}",
                cause(failure.as_ref()),
                n = quorum.copies,
                w = quorum.write,
            ),
        ))
    }

    async fn run_delete(&self, key: &str) -> Result<(), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        // The entry first, on its server (its own counter's first copy's):
        // a write stamped before the bump stays hidden either way; this
        // only frees its memory.
        let entry = Op::from(Delete::new(&layout.entry));
        let what = format!("the delete of `{key}`");
        self.bump(pool, layout.quorum, layout.own(), Some(entry), &what)
            .await
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
        let quorum = Quorum::of(pool.ring().len());
        let counter = Counter {
            key: prefix_counter_key(prefix),
            own: false,
            servers: pool.ring().top(prefix, quorum.copies),
        };
        let what = format!("the invalidation of `{prefix}`");
        self.bump(pool, quorum, &counter, None, &what).await
    }

    async fn run_lock(&self, key: &str, token: Bytes, ttl: Duration) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().first(key);
        let add = Set::new(lock_key(key), &token[..]).add().ttl(self.ttl(ttl));
        let results = pool.run(home, vec![Op::from(add)]).await?;
        Ok(matches!(results.first(), Some(OpResult::Mutation(m)) if m.applied()))
    }

    async fn run_unlock(&self, key: &str, token: &[u8]) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().first(key);
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
