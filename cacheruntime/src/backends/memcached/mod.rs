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
//!   [`Backend::isolates_failures`](crate::Backend::isolates_failures), and the cache keeps its whole-store
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
//! server involved, the servers in parallel: one round trip; `reads.rs`).
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
//! set; `bumps.rs`). `delete` also removes the entry (in the first), so a
//! value computed before the delete and written after it is never served.
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
//!
//! # Cold misses
//! In two exchanges with each server involved (`combined.rs`): the read
//! adds the key's lock and any absent copies of the key's own counter
//! before reading them, and the write releases the lock by its CAS after
//! writing the entry. A key under a prefix no key used before takes a
//! third, to create the prefix's counter.

mod bumps;
mod combined;
mod config;
mod counters;
mod dump;
mod keys;
mod reads;
mod ring;
mod servers;
mod setup;
mod swap;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use memcache::exp::{Delete, Get, Meta, MutationStatus, Op, OpResult, Set};

use self::combined::Held;
pub use self::config::MemcachedConfig;
use self::counters::{stamp, Layout};
use self::keys::lock_key;
use self::servers::Pool;
use self::setup::Setup;
use crate::backend::{Lookup, ScanPage, StoreInfo, Ticket};
use crate::backends::generations::{seed, wrap_entry};
use crate::backends::Store;
use crate::clock::Clock;
use crate::secrets::redact;
use crate::Error;

const NAME: &str = "memcached";

/// A Memcached store; see the module docs.
pub struct MemcachedBackend {
    config: MemcachedConfig,
    /// The pool, set up in the background (`setup.rs`).
    setup: Setup,
    /// The counters whose copies are being brought up to their greatest.
    repairing: Arc<Mutex<HashSet<String>>>,
    /// The locks this store holds, with their CAS (`combined.rs`).
    held: Held,
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
            held: Held::default(),
            clock: Clock::system(),
        })
    }

    async fn pool(&self) -> Result<&Arc<Pool>, Error> {
        self.setup.pool().await
    }

    /// How long Memcached keeps an entry written for `ttl`: a second more
    /// than asked (sent rounded up to whole seconds), at most `max_ttl`
    /// (checked at build to be at least one second).
    ///
    /// Memcached counts expiry in whole seconds of its own clock: an item
    /// written for one second is gone at the server's next tick, which can
    /// come a millisecond later. The spare second keeps the item at least
    /// as long as its TTL; the deadline in its envelope, in milliseconds,
    /// is what ends it for readers (`entry::Sealer::live`).
    fn ttl(&self, ttl: Duration) -> Duration {
        ttl.saturating_add(Duration::from_secs(1))
            .min(self.config.max_ttl)
    }

    /// A lock's lease as Memcached keeps it: whole seconds, at least one,
    /// at most `max_ttl`. Not padded like entries: a lock has no envelope
    /// to end it sooner, so the lease is the TTL asked for, rounded up.
    fn lease(&self, ttl: Duration) -> Duration {
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

    async fn run_get(&self, key: &str) -> Result<Lookup, Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut read = self.read(pool, &layout, true).await?;
        let (values, servable) = self.values(pool, &layout, &mut read).await?;
        Ok(self.answer(pool, &layout, &mut read, &values, servable))
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
        self.write(key, value, ttl, ticket, None).await?;
        Ok(())
    }

    /// Stores `value` under `key` as `set` does; `then` runs on the entry's
    /// server after the write, in the same exchange. The entry's server's
    /// results.
    async fn write(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        then: Option<Op>,
    ) -> Result<Vec<OpResult>, Error> {
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
        batches[0].1.extend(then);
        let mut outcomes = pool.fan_out(batches).await.into_iter();
        match outcomes.next() {
            Some(Err(e)) => Err(e),
            Some(Ok(results)) => Ok(results),
            None => Ok(Vec::new()),
        }
    }

    async fn run_lock(&self, key: &str, token: Bytes, ttl: Duration) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().first(key);
        let add = Set::new(lock_key(key), &token[..])
            .add()
            .ttl(self.lease(ttl))
            .return_cas();
        let results = pool.run(home, vec![Op::from(add)]).await?;
        match results.first() {
            Some(OpResult::Mutation(m)) if m.applied() => {
                if let Some(cas) = m.cas {
                    self.held.remember(key, &token, cas);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn run_unlock(&self, key: &str, token: &[u8]) -> Result<bool, Error> {
        let pool = self.pool().await?;
        let home = pool.ring().first(key);
        let lock = lock_key(key);
        if let Some(cas) = self.held.take(key, token) {
            // Ours, as the add or read that took it left it: one exchange.
            let delete = Delete::new(&lock).compare_cas(cas);
            let results = pool.run(home, vec![Op::from(delete)]).await?;
            return Ok(matches!(results.first(),
                Some(OpResult::Mutation(m)) if m.status == MutationStatus::Applied));
        }
        unlock_by_token(pool, home, &lock, token).await
    }
}

/// Deletes the lock item `lock` on server `home` if it holds `token`: read,
/// then delete only if nobody replaced it since (CAS). Two exchanges.
async fn unlock_by_token(
    pool: &Pool,
    home: usize,
    lock: &str,
    token: &[u8],
) -> Result<bool, Error> {
    let read = Get::new(lock).meta(Meta::NONE.cas());
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
    let delete = Delete::new(lock).compare_cas(cas);
    let results = pool.run(home, vec![Op::from(delete)]).await?;
    Ok(matches!(results.first(),
        Some(OpResult::Mutation(m)) if m.status == MutationStatus::Applied))
}

impl Store for MemcachedBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn max_ttl(&self) -> Option<Duration> {
        Some(self.config.max_ttl)
    }

    /// One breaker per server: a dead server fails its own keys fast and
    /// leaves the others' served.
    fn isolates_failures(&self) -> bool {
        true
    }

    /// A cold miss in two exchanges (`combined.rs`).
    fn combines_locks(&self) -> bool {
        true
    }

    fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send {
        self.dump_server(prefix, cursor)
    }

    fn describe(&self) -> impl Future<Output = Result<StoreInfo, Error>> + Send {
        self.describe_servers()
    }

    fn get(&self, key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send {
        self.run_get(key)
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_set(key, value, ttl, ticket)
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_delete(key)
    }

    fn invalidate_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_invalidate(prefix)
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_lock(key, value, ttl)
    }

    fn delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_unlock(key, value)
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_swap(key, expected, value, ttl, ticket)
    }

    fn get_many(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<Lookup>, Error>> + Send {
        self.run_get_many(keys)
    }

    fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_set_many(entries, ttl)
    }

    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_delete_many(keys)
    }

    fn get_or_lock(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(Lookup, bool), Error>> + Send {
        self.run_get_or_lock(key, token, ttl)
    }

    fn lock_and_get(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(bool, Option<Lookup>), Error>> + Send {
        self.run_lock_and_get(key, token, ttl)
    }

    fn set_and_unlock(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        token: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_set_and_unlock(key, value, ttl, ticket, token)
    }
}
