//! The bounded in-process backend.
//!
//! Eviction is quick_cache's (S3-FIFO, sharded, weighted): measured here a
//! hit is ~30 ns against ~200 ns for moka, and the hit path is what this
//! backend is for. Entries are weighed in bytes (key + value + a fixed
//! per-entry overhead), so `max_bytes` bounds memory whatever the entry count.
//!
//! Prefix invalidation does not touch entries. Every write is stamped with a
//! sequence number (the [`Ticket`] of the read that missed, or the current
//! one); `invalidate_prefix(p)` records `p -> next sequence number`. A read
//! treats an entry as gone when a recorded prefix of its key (`""`, then
//! each prefix ending in `:`) is newer than the entry. The cost is one map
//! lookup per key segment, only for entries older than the newest
//! invalidation; it does not depend on how many other keys exist.
//!
//! Prefix records are dropped once every entry they could hide has expired.
//! A computation still running may hold a ticket older than a dropped
//! record: the store remembers the newest sequence number it has dropped
//! (the floor) and refuses writes under older tickets (and hides entries
//! under them), so no sweep can let a value computed before an invalidation
//! be stored.
//!
//! A delete removes the entry and records the key with the next sequence
//! number, under a lock striped by key that writes take too, so a write
//! under an older ticket is refused rather than racing past it. Reads never
//! consult these records (the entry is gone), so deletes cost the hit path
//! nothing. They are kept for a minute, for the computations that read
//! before the delete and have yet to write; when older ones are dropped, a
//! write floor rises to the newest dropped, and writes under older tickets
//! (computations running for over a minute across a delete) are refused.
//!
//! # Large values
//! quick_cache splits the byte bound across shards and silently refuses an
//! entry heavier than its shard's share. The store therefore picks its shard
//! count so that the largest value it is built for fits a shard, and says
//! how large that is ([`MemoryBackend::max_value_bytes`]): the cache refuses
//! at build a `max_entry_bytes` above it, and a write over it (which the
//! cache never sends) is an error, counted, never a silent drop.
//!
//! An entry is charged twice its encoded size: once for its bytes and once
//! as the estimate of the decoded copy the cache keeps beside hot entries
//! of `Clone` types (so that a hit clones instead of decoding). The decoded
//! size of an arbitrary type cannot be known; for strings and byte blobs it
//! is close to the encoded size, for lists of small integers it is larger.

use std::future::{ready, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;

use crate::backend::{Lookup, ScanPage, StoreInfo, Ticket};
use crate::backends::Store;
use crate::clock::Clock;
use crate::key::MAX_STORED_KEY;
use crate::Error;

mod entry;
mod listing;
mod near;

pub(crate) use entry::{LocalEntry, LocalLookup};

/// Bytes charged per entry on top of key and value: the entry struct, the
/// boxed key's header and quick_cache's slot.
const ENTRY_OVERHEAD: u64 = 96;

/// What an entry of `value` bytes under the longest stored key weighs.
const fn heaviest(value: u64) -> u64 {
    MAX_STORED_KEY as u64 + 2 * value + ENTRY_OVERHEAD
}

/// The heaviest entry one of `shards` shards admits: quick_cache admits an
/// entry up to its shard's "hot" share, 97% of the shard (less one for
/// rounding).
fn shard_admits(max_bytes: u64, shards: u64) -> u64 {
    ((max_bytes / shards) as f64 * 0.97) as u64 - 1
}

/// How many locks a store's writes and deletes are spread over.
const STRIPES: usize = 64;

/// How long a delete is remembered for the computations that read before
/// it (ms).
const DELETE_MEMORY_MS: u64 = 60_000;

type Entries = quick_cache::sync::Cache<
    Box<str>,
    Entry,
    EntryWeight,
    quick_cache::DefaultHashBuilder,
    quick_cache::sync::DefaultLifecycle<Box<str>, Entry>,
>;

type Entry = Arc<LocalEntry>;

#[derive(Clone, Copy, Debug, Default)]
struct EntryWeight;

impl quick_cache::Weighter<Box<str>, Entry> for EntryWeight {
    fn weight(&self, key: &Box<str>, val: &Entry) -> u64 {
        key.len() as u64 + 2 * val.bytes().len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone, Copy, Debug)]
struct Invalidation {
    seq: u64,
    at_ms: u64,
}

/// Bounded memory store; see the module docs.
pub struct MemoryBackend {
    entries: Entries,
    max_bytes: u64,
    /// The heaviest entry a shard admits.
    admits: u64,
    clock: Clock,
    seq: AtomicU64,
    newest_invalidation: AtomicU64,
    /// Prefix invalidations (`""` or ending with `:`).
    invalidations: DashMap<Box<str>, Invalidation>,
    /// Deletes, by exact key: consulted by writes only.
    deleted: DashMap<Box<str>, Invalidation>,
    /// The newest sequence number of a swept prefix record: writes under
    /// older tickets are refused, entries under them hidden.
    floor: AtomicU64,
    /// The newest sequence number of a swept delete record: writes under
    /// older tickets are refused.
    write_floor: AtomicU64,
    /// Serialise a key's write (check, then insert) with its delete.
    stripes: Box<[std::sync::Mutex<()>]>,
    next_sweep_len: AtomicU64,
    next_delete_sweep_len: AtomicU64,
    longest_ttl_ms: AtomicU64,
    /// How long a delete is remembered ([`DELETE_MEMORY_MS`] unless set).
    delete_memory_ms: u64,
    /// Locks live apart from entries, so a lock never shadows an entry.
    locks: std::sync::Mutex<std::collections::HashMap<Box<str>, (Bytes, u64)>>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_bytes", &self.max_bytes)
            .field("used_bytes", &self.entries.weight())
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl MemoryBackend {
    /// The default bound: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

    /// The value size [`new`](Self::new) sizes its shards for: 1 MiB, the
    /// cache's default `max_entry_bytes`.
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

    /// A store holding at most about `max_bytes` of keys and values, built
    /// for values up to 1 MiB (or up to what `max_bytes` allows, if less:
    /// see [`max_value_bytes`](Self::max_value_bytes)).
    pub fn new(max_bytes: u64) -> Self {
        Self::with_clock(max_bytes, Clock::system())
    }

    /// Like [`new`](Self::new) with an injected clock (for TTL tests).
    pub fn with_clock(max_bytes: u64, clock: Clock) -> Self {
        Self::sized(max_bytes, Self::DEFAULT_MAX_VALUE_BYTES, clock)
    }

    /// A store of `max_bytes` built to hold values up to `max_value_bytes`
    /// (encoded, envelope included): it uses fewer shards if it must, and
    /// [`max_value_bytes`](Self::max_value_bytes) says what fits when even
    /// one shard cannot (an entry is charged about twice its size).
    pub fn sized(max_bytes: u64, max_value_bytes: usize, clock: Clock) -> Self {
        let max_bytes = max_bytes.max(4096);
        // quick_cache sizes its tables from this estimate; 512 B per entry
        // is a middle guess for rendered fragments and id lists.
        let estimated = (max_bytes / 512).clamp(64, 1 << 24) as usize;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = (cores as u64 * 4).next_power_of_two();
        let need = heaviest(max_value_bytes as u64);
        while shards > 1 && shard_admits(max_bytes, shards) < need {
            shards /= 2;
        }
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(max_bytes)
            .shards(shards as usize)
            .build()
            .expect("capacity and items are set");
        MemoryBackend {
            entries: Entries::with_options(
                options,
                EntryWeight,
                Default::default(),
                Default::default(),
            ),
            max_bytes,
            admits: shard_admits(max_bytes, shards),
            clock,
            seq: AtomicU64::new(1),
            newest_invalidation: AtomicU64::new(0),
            invalidations: DashMap::new(),
            deleted: DashMap::new(),
            floor: AtomicU64::new(0),
            write_floor: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
            next_delete_sweep_len: AtomicU64::new(1024),
            next_sweep_len: AtomicU64::new(1024),
            longest_ttl_ms: AtomicU64::new(0),
            delete_memory_ms: DELETE_MEMORY_MS,
            locks: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Bytes currently charged against the bound.
    pub fn used_bytes(&self) -> u64 {
        self.entries.weight()
    }

    /// The bound given at construction.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The largest entry (encoded, envelope included) the store can hold:
    /// what its shards admit under the longest key.
    pub fn max_value_bytes(&self) -> usize {
        (self
            .admits
            .saturating_sub(MAX_STORED_KEY as u64 + ENTRY_OVERHEAD)
            / 2) as usize
    }

    /// Number of entries held (live or not yet evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Whether a prefix record newer than `entry_seq` covers `key` (or may
    /// have, before a sweep). The hit path: entries newer than the newest
    /// invalidation answer with one load.
    #[inline(always)]
    fn hidden(&self, key: &str, entry_seq: u64) -> bool {
        entry_seq < self.newest_invalidation.load(Ordering::Acquire)
            && self.hidden_by_records(key, entry_seq)
    }

    #[cold]
    #[inline(never)]
    fn hidden_by_records(&self, key: &str, entry_seq: u64) -> bool {
        let newer = |records: &DashMap<Box<str>, Invalidation>, p: &str| {
            records.get(p).is_some_and(|inv| inv.seq > entry_seq)
        };
        // The records first, then the floor: a sweep raises the floor before
        // it removes a record, so a record gone by the time it is looked up
        // has its number under the floor read after (the other order could
        // miss both).
        newer(&self.invalidations, "")
            || key
                .match_indices(':')
                .any(|(i, _)| newer(&self.invalidations, &key[..=i]))
            // Under a ticket older than a swept record: it may be one the
            // record hid (and a live entry this old can only be such a write).
            || entry_seq < self.floor.load(Ordering::Acquire)
    }

    /// Whether a write under `seq` would be stored and visible for `key`
    /// now: no invalidation or delete of it is newer (nor may a swept one
    /// have been).
    fn admits(&self, key: &str, seq: u64) -> bool {
        // Records before floors, as in `hidden_by_records`.
        !self.hidden(key, seq)
            && self.deleted.get(key).is_none_or(|d| d.seq <= seq)
            && seq >= self.write_floor.load(Ordering::Acquire)
    }

    /// Whether a value computed after a read under `ticket` would still be
    /// stored and served for `key` now (no invalidation or delete has
    /// reached the key since): lets the cache decide at once whether a
    /// computation already running may be shared.
    #[inline]
    pub(crate) fn is_current(&self, key: &str, ticket: &Ticket) -> bool {
        ticket.as_seq().is_some_and(|seq| self.admits(key, seq))
    }

    /// The lock a key's writes and deletes share.
    fn stripe(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        // FNV-1a: in-process only, so any spread will do.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.stripes[(hash % STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The entry under `key` unless invalidated; expiry left to the caller.
    /// The memory hit path: the entry itself, without copying its bytes, so
    /// the cache can keep the decoded value beside it.
    #[inline(always)]
    pub(crate) fn local(&self, key: &str) -> LocalLookup {
        let ticket = Ticket::seq(self.seq.load(Ordering::Acquire));
        let entry = self.entries.get(key).filter(|e| !self.hidden(key, e.tag()));
        LocalLookup::new(entry, ticket)
    }

    /// A read with the expiry checked and the bytes copied out.
    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        let local = self.local(key);
        let now = self.clock.now_ms();
        let value = local
            .entry
            .filter(|e| e.expires_ms() > now)
            .map(|e| e.bytes().clone());
        Lookup::new(value).with_ticket(local.ticket)
    }

    /// Stores an entry synchronously (the cache's writes need no timer: the
    /// store cannot block).
    pub(crate) fn store(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<(), Error> {
        self.check_weight(key, &value)?;
        let seq = self.seq_of(ticket);
        let _one_at_a_time = self.stripe(key);
        if !self.admits(key, seq) {
            // Computed before an invalidation or delete that covers it (or
            // one since swept): never visible.
            return Ok(());
        }
        self.insert(key, value, ttl, seq);
        Ok(())
    }

    /// [`Backend::compare_and_set`](crate::Backend::compare_and_set): under
    /// the key's stripe, so no write or delete of the key comes between the
    /// comparison and the swap.
    pub(crate) fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<bool, Error> {
        self.check_weight(key, &value)?;
        let seq = self.seq_of(ticket);
        let _one_at_a_time = self.stripe(key);
        if !self.admits(key, seq) {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let current = self
            .entries
            .get(key)
            .filter(|e| !self.hidden(key, e.tag()) && e.expires_ms() > now);
        let same = match (&current, expected) {
            (None, None) => true,
            (Some(entry), Some(expected)) => entry.bytes()[..] == *expected,
            _ => false,
        };
        if same {
            self.insert(key, value, ttl, seq);
        }
        Ok(same)
    }

    fn seq_of(&self, ticket: Option<&Ticket>) -> u64 {
        match ticket.and_then(Ticket::as_seq) {
            Some(seq) => seq,
            None => self.seq.load(Ordering::Acquire),
        }
    }

    fn check_weight(&self, key: &str, value: &Bytes) -> Result<(), Error> {
        let weight = key.len() as u64 + 2 * value.len() as u64 + ENTRY_OVERHEAD;
        if weight > self.admits {
            return Err(Error::TooLarge {
                size: value.len(),
                limit: self.max_value_bytes(),
            });
        }
        Ok(())
    }

    /// Inserts an entry; the caller holds the key's stripe and checked
    /// that `seq` is admitted.
    fn insert(&self, key: &str, value: Bytes, ttl: Duration, seq: u64) {
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        // Tag tokens live long (30 days) but need no invalidation record
        // kept for them: one they outlive only brings back a token whose
        // entries have expired, since a record outlives every entry.
        if !key.contains(crate::key::TOKEN_MARK) {
            self.longest_ttl_ms.fetch_max(ttl_ms, Ordering::Relaxed);
        }
        let expires_ms = self.clock.now_ms().saturating_add(ttl_ms);
        self.entries.insert(
            key.into(),
            Arc::new(LocalEntry::new(value, expires_ms, seq)),
        );
    }

    fn invalidate(&self, prefix: &str) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.record_invalidation(prefix, seq);
    }

    /// Records an invalidation of `prefix` that took sequence number `seq`
    /// (a write may be taken in between the two: see `near.rs`).
    fn record_invalidation(&self, prefix: &str, seq: u64) {
        let now = self.clock.now_ms();
        self.invalidations
            .insert(prefix.into(), Invalidation { seq, at_ms: now });
        self.newest_invalidation.fetch_max(seq, Ordering::AcqRel);
        if prefix.is_empty() {
            // Everything is hidden anyway; give the memory back now.
            self.entries.clear();
        }
        self.sweep_invalidations(now);
    }

    pub(crate) fn delete_key(&self, key: &str) {
        let now = self.clock.now_ms();
        {
            let _one_at_a_time = self.stripe(key);
            let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            self.deleted
                .insert(key.into(), Invalidation { seq, at_ms: now });
            self.entries.remove(key);
        }
        self.sweep_deletes(now);
    }

    /// Drops prefix records that can no longer hide a live entry: any entry
    /// older than the record was written before it and has expired. The
    /// floor rises to the newest dropped record first, so a write (or an
    /// entry) under an older ticket is refused (or hidden) once the record is
    /// gone. Amortised: runs when the record count doubles.
    fn sweep_invalidations(&self, now: u64) {
        let len = self.invalidations.len() as u64;
        if len < self.next_sweep_len.load(Ordering::Relaxed) {
            return;
        }
        let horizon = self.longest_ttl_ms.load(Ordering::Relaxed);
        let dead = |inv: &Invalidation| inv.at_ms.saturating_add(horizon) < now;
        for r in self.invalidations.iter().filter(|r| dead(r.value())) {
            self.floor.fetch_max(r.seq, Ordering::AcqRel);
        }
        self.invalidations.retain(|_, inv| !dead(inv));
        let left = self.invalidations.len() as u64;
        self.next_sweep_len
            .store((left * 2).max(1024), Ordering::Relaxed);
    }

    /// Drops delete records older than `delete_memory_ms`, raising the
    /// write floor to the newest dropped first. Amortised like
    /// [`sweep_invalidations`](Self::sweep_invalidations).
    fn sweep_deletes(&self, now: u64) {
        let len = self.deleted.len() as u64;
        if len < self.next_delete_sweep_len.load(Ordering::Relaxed) {
            return;
        }
        let dead = |d: &Invalidation| d.at_ms.saturating_add(self.delete_memory_ms) < now;
        for r in self.deleted.iter().filter(|r| dead(r.value())) {
            self.write_floor.fetch_max(r.seq, Ordering::AcqRel);
        }
        self.deleted.retain(|_, d| !dead(d));
        let left = self.deleted.len() as u64;
        self.next_delete_sweep_len
            .store((left * 2).max(1024), Ordering::Relaxed);
    }

    #[cfg(test)]
    fn invalidation_records(&self) -> usize {
        self.invalidations.len()
    }
}

impl Store for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn scan(
        &self,
        prefix: &str,
        _cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send {
        ready(Ok(self.listing(prefix)))
    }

    fn describe(&self) -> impl Future<Output = Result<StoreInfo, Error>> + Send {
        ready(Ok(self.info()))
    }

    fn max_value_bytes(&self) -> Option<usize> {
        Some(MemoryBackend::max_value_bytes(self))
    }

    fn get(&self, key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send {
        ready(Ok(self.lookup(key)))
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        ready(self.store(key, value, ttl, ticket))
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.delete_key(key);
        ready(Ok(()))
    }

    fn invalidate_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), Error>> + Send {
        // Whole segments only, as the cache checks.
        ready(crate::key::check_prefix(prefix).map(|()| self.invalidate(prefix)))
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        let now = self.clock.now_ms();
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.len() > 1024 {
            locks.retain(|_, (_, expires)| *expires > now);
        }
        let taken = match locks.get(key) {
            Some((_, expires)) if *expires > now => false,
            _ => {
                let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
                let expires = now.saturating_add(ttl_ms);
                locks.insert(key.into(), (value, expires));
                true
            }
        };
        ready(Ok(taken))
    }

    fn delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        let now = self.clock.now_ms();
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let ours =
            matches!(locks.get(key), Some((v, expires)) if *expires > now && v[..] == *value);
        if ours {
            locks.remove(key);
        }
        ready(Ok(ours))
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        ready(self.swap(key, expected, value, ttl, ticket))
    }
}

#[cfg(test)]
mod tests;
