//! The near tier: an in-process copy of entries read from (or written to)
//! a shared store, answered on the synchronous hit path as the memory
//! store's entries are.
//!
//! # What it may serve
//! An entry is served only while this process knows nothing newer has
//! reached the shared store for its key, and at most for `near_check`
//! after the shared store last vouched for it: the start of the read that
//! found it, or of the computation's read whose value this process wrote
//! (so an invalidation made elsewhere is seen here within `near_check` of
//! its return, whatever the store). Within that:
//!
//! - This handle's own invalidations, deletes and writes reach its near
//!   tier before the call returns (read-your-invalidations). Another
//!   handle's, in this process or another, are what `near_check` bounds.
//! - A read that began before one of them may have found the old value: it
//!   carries the near tier's [`NearMark`] in its ticket, and is not kept
//!   if anything was taken in for its key since.
//! - A write is kept only if nothing was taken in for its key since its
//!   computation's read (or since the write began, for `set`): not an
//!   invalidation, not a delete, and not another write, whose order in the
//!   store against this one is unknown here. Otherwise the key is dropped,
//!   and the store answers the next read. Each write taken in fences the
//!   key as a delete does, so two overlapping writes of a key never leave
//!   the one the store did not keep.
//! - Entries with tags are never kept (their tokens live in the shared
//!   store), nor are tag tokens.
//!
//! The near tier is a [`MemoryBackend`] (bounded by bytes, the memory hit
//! path), wrapped around the shared store by [`NearBackend`] so that every
//! read carries its mark and every write reaches it; `Engine::near_read`
//! (`read.rs`) is its part of the hit path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{ChangeSink, Feed, Lookup, Ticket};
use crate::backends::MemoryBackend;
use crate::clock::{monotonic_ms, monotonic_ms_at, Clock};
use crate::envelope;
use crate::lag::LagRecorder;
use crate::stats::Counter;
use crate::ticket::NearMark;

mod backend;

pub(crate) use backend::NearBackend;

/// The near tier's settings, as the builder or a URL gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NearSettings {
    /// The bound on the bytes the near tier holds.
    pub(crate) max_bytes: u64,
    /// How long after the shared store vouched for an entry the near tier
    /// serves it: the longest an invalidation made in another process can
    /// go unseen here.
    pub(crate) check: Duration,
    /// On a store that pushes change notices: how long an entry is kept
    /// (the notices, not time, end its use).
    pub(crate) ttl: Duration,
}

/// The default `near_check`: 100 ms.
pub(crate) const DEFAULT_CHECK: Duration = Duration::from_millis(100);

/// How long the near tier remembers a delete, a write or another process's
/// change to a key (see `MemoryBackend::remember_deletes_for`): long enough
/// for any read in flight (an op timeout), so that a notice, which may name
/// a key this process does not hold, costs memory for 2 s at most.
const DELETES_REMEMBERED_MS: u64 = 2_000;

/// The default `near_ttl`: a minute.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// One cache's near tier; see the module docs.
pub(crate) struct Near {
    memory: MemoryBackend,
    /// `""` or `"namespace:"`: notices about other namespaces' keys are not
    /// this near tier's (the channel is the server's).
    namespace: Box<str>,
    clock: Clock,
    check_ms: u64,
    /// The store pushes change notices (`Backend::pushes_changes`): entries
    /// live `ttl`, and are served only under the lease below.
    push: bool,
    ttl: Duration,
    /// With notices: serve only before this (`clock::monotonic_ms`: real time whatever the cache's clock): `near_check`
    /// after the last moment the notices were known complete.
    lease_until: AtomicU64,
    /// The notices are being followed (or being started).
    following: AtomicBool,
    /// Calls answered from the near tier (also counted as hits).
    pub(crate) hits: Counter,
    /// How long the store's notices took to arrive.
    pub(crate) lag: LagRecorder,
}

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("memory", &self.memory)
            .field("check_ms", &self.check_ms)
            .finish_non_exhaustive()
    }
}

impl Near {
    pub(crate) fn new(
        settings: NearSettings,
        max_value_bytes: usize,
        clock: Clock,
        push: bool,
        namespace: &str,
    ) -> Near {
        Near {
            namespace: namespace.into(),
            memory: MemoryBackend::sized(settings.max_bytes, max_value_bytes, clock.clone())
                .remember_deletes_for(DELETES_REMEMBERED_MS),
            clock,
            check_ms: settings.check.as_millis().clamp(1, u64::MAX as u128) as u64,
            push,
            ttl: settings.ttl,
            lease_until: AtomicU64::new(0),
            following: AtomicBool::new(false),
            hits: Counter::new(),
            lag: LagRecorder::default(),
        }
    }

    /// The entries.
    #[inline(always)]
    pub(crate) fn memory(&self) -> &MemoryBackend {
        &self.memory
    }

    /// Where the near tier stands now: what a read or write beginning now
    /// is checked against when it ends.
    pub(crate) fn mark(&self) -> NearMark {
        NearMark {
            seq: self.memory.current_seq(),
            at_ms: self.clock.now_ms(),
        }
    }

    /// Whether entries may be served now: always when polling; with
    /// notices, while the lease holds.
    #[inline(always)]
    pub(crate) fn serving(&self) -> bool {
        !self.push || monotonic_ms() < self.lease_until.load(Ordering::Acquire)
    }

    /// Starts following the store's notices, once (again, if it could not).
    pub(crate) fn follow(self: &Arc<Self>, shared: &dyn crate::backend::Backend) {
        if !self.push || self.following.load(Ordering::Relaxed) {
            return;
        }
        if !self.following.swap(true, Ordering::AcqRel)
            && !shared.follow_changes(Feed::new(Arc::downgrade(self) as Weak<dyn ChangeSink>))
        {
            self.following.store(false, Ordering::Release);
        }
    }

    /// How long an entry the shared store vouched for at `mark` may still
    /// be served (at most `ttl`), or `None` if no longer. With notices, the
    /// near tier's `ttl`: the notices end it.
    fn life(&self, mark: NearMark, ttl: Duration) -> Option<Duration> {
        if self.push {
            return Some(ttl.min(self.ttl));
        }
        let until = mark.at_ms.saturating_add(self.check_ms);
        let left = until
            .checked_sub(self.clock.now_ms())
            .filter(|&ms| ms > 0)?;
        Some(Duration::from_millis(left).min(ttl))
    }

    /// Keeps what a read of the shared store found (verified by the cache:
    /// signature, type, deadline) under the mark its ticket carries.
    pub(crate) fn keep_read(&self, key: &str, bytes: &Bytes, ticket: Option<&Ticket>) {
        let Some((mark, _)) = ticket.and_then(Ticket::as_near) else {
            return;
        };
        if !may_hold(key, bytes) {
            return;
        }
        if let Some(life) = self.life(mark, Duration::MAX) {
            self.memory.keep_read(key, bytes.clone(), life, mark.seq);
        }
    }

    /// Drops `key`, fencing reads that began before.
    pub(crate) fn forget(&self, key: &str) {
        self.memory.take_write(key, None, Duration::ZERO, 0);
    }

    /// Drops every key under `prefix`, fencing reads that began before.
    pub(crate) fn forget_prefix(&self, prefix: &str) {
        self.memory.forget_prefix(prefix);
    }

    /// A write of `key` to the shared store begins, vouched for as of
    /// `since`; the guard takes in its outcome (or, dropped unfinished,
    /// drops the key).
    fn write(self: &Arc<Self>, key: &str, since: NearMark) -> WriteGuard {
        WriteGuard {
            near: self.clone(),
            key: key.into(),
            since,
            done: false,
        }
    }
}

impl ChangeSink for Near {
    fn key_changed(&self, key: &str) {
        if key.starts_with(&*self.namespace) {
            self.forget(key);
        }
    }

    fn prefix_invalidated(&self, prefix: &str) {
        // A prefix that is not in the namespace covers none of its keys
        // (a cache with a namespace never invalidates "" unnamespaced).
        if prefix.starts_with(&*self.namespace) {
            self.forget_prefix(prefix);
        }
    }

    fn lost(&self) {
        self.lease_until.store(0, Ordering::Release);
        self.forget_prefix("");
    }

    fn synced(&self, asked: Instant) {
        let until = monotonic_ms_at(asked).saturating_add(self.check_ms);
        self.lease_until.fetch_max(until, Ordering::AcqRel);
    }

    fn check(&self) -> Duration {
        Duration::from_millis(self.check_ms)
    }

    fn arrived(&self, lag: Duration) {
        self.lag.record(lag);
    }
}

/// Whether the near tier may hold `bytes` under `key`: not a tag token,
/// not an entry with tags.
fn may_hold(key: &str, bytes: &[u8]) -> bool {
    !key.contains(crate::key::TOKEN_MARK)
        && envelope::flags(bytes).is_some_and(|flags| flags & envelope::FLAG_TAGGED == 0)
}

/// A write of one key to the shared store, in flight.
struct WriteGuard {
    near: Arc<Near>,
    key: Box<str>,
    /// Where the near tier stood when the value's computation read the
    /// store (or the write began).
    since: NearMark,
    done: bool,
}

impl WriteGuard {
    /// Takes in the write's outcome: `Some(value)` if the store took it
    /// (for `ttl`).
    fn finish(mut self, value: Option<Bytes>, ttl: Duration) {
        self.done = true;
        let near = &self.near;
        let life = near.life(self.since, ttl);
        let value = value.filter(|v| life.is_some() && may_hold(&self.key, v));
        let life = life.unwrap_or(Duration::ZERO);
        near.memory
            .take_write(&self.key, value, life, self.since.seq);
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled (a timeout, a dropped caller): the store may or may
            // not have the value.
            self.near.forget(&self.key);
        }
    }
}

/// The near tier's mark and the shared store's ticket, from a ticket a read
/// through [`NearBackend`] returned (any other ticket is the store's own).
fn split(ticket: Option<&Ticket>) -> (Option<NearMark>, Option<&Ticket>) {
    match ticket.map(|t| (t, t.as_near())) {
        Some((_, Some((mark, inner)))) => (Some(mark), inner),
        Some((t, None)) => (None, Some(t)),
        None => (None, None),
    }
}

/// A read's answer with the near tier's mark added to its ticket. A read
/// without a ticket stays without one (callers tell a store that gives
/// none, as SQL's batched reads, by it), and is never kept near.
fn marked(lookup: Lookup, mark: NearMark) -> Lookup {
    match lookup.ticket {
        Some(ticket) => Lookup::new(lookup.value).with_ticket(Ticket::near(mark, Some(ticket))),
        None => lookup,
    }
}

#[cfg(test)]
mod tests;
