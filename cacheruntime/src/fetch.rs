//! The get-or-compute core: read, share a computation or lead one, store.
//!
//! The guarantees it keeps (see [`Cache`]'s docs):
//! - A caller is handed the value of a computation already running (in-
//!   process single-flight) only if that computation's read saw every
//!   invalidation and delete of the key that the caller's own read saw, so a
//!   value computed before an invalidation that returned before a call
//!   started is never that call's answer, whichever process invalidated.
//! - A value is written under the [`Ticket`] of the read before its
//!   computation: the store refuses or hides it if the key was invalidated
//!   or deleted meanwhile. A call whose read failed has no ticket: it
//!   computes on its own and writes nothing.
//! - Every call counts exactly one of hit, stale hit or miss.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::backend::Ticket;
use crate::cache::{Cache, Outcome};
use crate::entry::Source;
use crate::flight::{self, Landing, LeaderGuard, Role, Seen};
use crate::lock::Contended;
use crate::memo::Memo;
use crate::policy::Policy;
use crate::refresh::RefreshJob;
use crate::site::Site;
use crate::stats::slot;
use crate::Error;

/// The fingerprint of entries written by [`Cache::set`]: the direct API
/// checks values with the codec only, so `set(k, &"text")` reads back as
/// `get::<String>(k)`. Typed calls (`#[cached]`, `get_or_compute`) see such
/// an entry as another type's: a miss.
pub(crate) const UNTYPED: u64 = 0;

/// Which fingerprints a read accepts.
#[derive(Clone, Copy)]
pub(crate) enum Accept {
    /// Exactly this one (typed calls).
    Exactly(u64),
    /// `Cache::get`: entries from `Cache::set`, or typed entries of `T`
    /// at version 0.
    Direct(u64),
}

impl Accept {
    #[inline]
    pub(crate) fn admits(self, fp: u64) -> bool {
        match self {
            Accept::Exactly(want) => fp == want,
            Accept::Direct(typed) => fp == UNTYPED || fp == typed,
        }
    }
}

/// What a read of the store found.
pub(crate) enum Read<V> {
    Hit(V),
    /// Servable, and due for a refresh (stale, or picked by early refresh).
    Refresh(V, Option<Ticket>, Due),
    Miss(Option<Ticket>),
}

/// How a call was answered: each call counts exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A fresh value from the cache.
    Hit,
    /// A value past its TTL, inside its stale window, served while it is
    /// refreshed in the background.
    Stale,
    /// Computed, or waited for another caller's computation.
    Miss,
}

/// What one call may spend in store operations, all together: the op
/// timeout, so the cache adds at most that much to a call however slow the
/// store. The write comes first: the lock (and the look at the store that
/// follows it) is taken only when what is left also covers the write, at
/// the pace the call's read showed; the write gets what is left, and a call
/// whose read used it all skips both. Waiting for another process's
/// computation is not charged (it takes the place of computing), and a call
/// that waited
/// gets a fresh budget for what follows.
pub(crate) struct Budget {
    total: Duration,
    left: Duration,
    /// How long one store call took: the first one's duration.
    pace: Option<Duration>,
}

impl Budget {
    pub(crate) fn new(total: Duration) -> Self {
        Budget {
            total,
            left: total,
            pace: None,
        }
    }

    /// What is left, or `None` when nothing is.
    pub(crate) fn left(&self) -> Option<Duration> {
        (!self.left.is_zero()).then_some(self.left)
    }

    /// Takes the time since `started` off what is left.
    pub(crate) fn spend(&mut self, started: Instant) {
        let took = started.elapsed();
        self.pace.get_or_insert(took);
        self.left = self.left.saturating_sub(took);
    }

    /// Whether what is left covers `calls` more store calls at the pace
    /// seen so far.
    pub(crate) fn affords(&self, calls: u32) -> bool {
        let pace = self.pace.unwrap_or(Duration::ZERO);
        !self.left.is_zero() && self.left >= pace.saturating_mul(calls)
    }

    /// A fresh budget, after waiting for another process's computation.
    pub(crate) fn refill(&mut self) {
        self.left = self.total;
    }
}

/// What one get-or-compute call knows about its value.
pub(crate) struct Call<'p, V> {
    policy: &'p Policy,
    fp: u64,
    site: Option<&'static Site>,
    memo: Memo<V>,
}

impl<'p, V> Call<'p, V> {
    pub(crate) fn new(
        policy: &'p Policy,
        fp: u64,
        site: Option<&'static Site>,
        memo: Memo<V>,
    ) -> Self {
        Call {
            policy,
            fp,
            site,
            memo,
        }
    }
}

/// Whether a servable entry should be refreshed in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum Due {
    No,
    /// Fresh, but picked by probabilistic early refresh.
    Early,
    /// Past its TTL, inside its stale window.
    Stale,
}

/// Whether a computed value may be written, and under which ticket.
enum Stored {
    /// The read answered (with this ticket, if the store gives them).
    Under(Option<Ticket>),
    /// The read failed (no ticket to write under) or used half the call's
    /// store budget: the value is only returned (and shared in process).
    Never,
}

/// What the synchronous in-process read found. Not public API.
#[doc(hidden)]
pub enum Fast<V> {
    /// A live entry, decoded (and already counted as a hit).
    Hit(V),
    /// A servable entry due for a background refresh, with the read's ticket.
    Refresh(V, Option<Ticket>, Due),
    /// Nothing usable; the ticket of the read.
    Miss(Option<Ticket>),
    /// The store is remote: read it asynchronously.
    Remote,
}

impl Cache {
    /// Counts how a call was answered.
    #[inline(always)]
    pub(crate) fn tally(&self, site: Option<&'static Site>, answer: Answer) {
        let counters = &self.inner.counters;
        let slot = slot();
        let (cache, function) = match answer {
            Answer::Hit => (&counters.hits, site.map(|s| &s.hits)),
            Answer::Stale => (&counters.stale_hits, site.map(|s| &s.stale_hits)),
            Answer::Miss => (&counters.misses, site.map(|s| &s.misses)),
        };
        cache.incr_in(slot);
        if let Some(function) = function {
            function.incr_in(slot);
        }
    }

    /// The get-or-compute core; see the module docs for its guarantees.
    ///
    /// `key` already carries the namespace. `first` is what the synchronous
    /// in-process read found (`Fast::Remote` if it was not tried).
    pub(crate) async fn fetch<O, F>(
        &self,
        key: &str,
        call: Call<'_, O::Value>,
        first: Fast<O::Value>,
        compute: F,
        refresh: Option<fn(F, RefreshJob)>,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let Call {
            policy,
            fp,
            site,
            memo,
        } = call;
        let inner = &*self.inner;
        if let Some(site) = site {
            self.register(site);
        }
        if !inner.enabled || key.is_empty() {
            self.tally(site, Answer::Miss);
            inner.counters.computations.incr();
            return compute.await;
        }
        let mut compute = Some(compute);
        let mut first = Some(first);
        let mut budget = Budget::new(inner.op_timeout);
        // Whether this call has been counted: once, at its first read.
        let mut counted = false;
        let mut tally = |answer| {
            if !std::mem::replace(&mut counted, true) {
                self.tally(site, answer);
            }
        };
        loop {
            let read = match first.take() {
                // Counted where it was read.
                Some(Fast::Hit(v)) => return O::from_cached(v),
                Some(Fast::Refresh(v, ticket, due)) => Ok(Read::Refresh(v, ticket, due)),
                Some(Fast::Miss(ticket)) => Ok(Read::Miss(ticket)),
                Some(Fast::Remote) | None => {
                    self.read::<O::Value>(key, Accept::Exactly(fp), memo, Some(policy), &mut budget)
                        .await
                }
            };
            // Whether the store answered. A failed read left no ticket (no
            // record of the invalidation state it saw), so its value must
            // not be written, nor may it share a computation: either could
            // serve a value computed before an invalidation that returned
            // before this call began. A store that just failed is not asked
            // for a lock or a write either, so the call costs one op
            // timeout, not three.
            let store_answered = read.is_ok();
            let ticket = match read {
                Ok(Read::Hit(v)) => {
                    tally(Answer::Hit);
                    return O::from_cached(v);
                }
                Ok(Read::Refresh(v, ticket, due)) => match refresh {
                    Some(spawn) => {
                        tally(if due == Due::Stale {
                            Answer::Stale
                        } else {
                            Answer::Hit
                        });
                        let compute = compute.take().expect("computed at most once");
                        self.begin_refresh(key, policy, fp, ticket, compute, spawn);
                        return O::from_cached(v);
                    }
                    // No background refresh possible: early refreshes are
                    // skipped, stale entries are computed as misses.
                    None if due == Due::Early => {
                        tally(Answer::Hit);
                        return O::from_cached(v);
                    }
                    None => ticket,
                },
                Ok(Read::Miss(ticket)) => ticket,
                Err(e) => {
                    self.failed("get", &e);
                    None
                }
            };
            tally(Answer::Miss);
            let backend = &*inner.backend;
            let seen = if store_answered {
                Seen::Answered(ticket.as_ref())
            } else {
                Seen::Failed
            };
            let role = inner.flights.join(key, seen, |flight, mine| {
                backend
                    .is_current(key, flight)
                    .unwrap_or_else(|| flight.covers(mine))
            });
            match role {
                Role::Leader(guard) => {
                    // A flight that landed between our read and our join
                    // already stored the value: read once more when that is
                    // free (in-process stores) instead of computing twice.
                    let again = if inner.local {
                        backend.get_now(key)
                    } else {
                        None
                    };
                    if let Some(Ok(found)) = again {
                        if let Some(bytes) = found.value {
                            if let Ok(Some((v, Due::No))) = self.open_checked::<O::Value>(
                                &bytes,
                                Accept::Exactly(fp),
                                None,
                                Source::Store(key),
                            ) {
                                guard.publish(Landing::Entry(bytes));
                                return O::from_cached(v);
                            }
                        }
                    }
                    let compute = compute.take().expect("computed at most once");
                    // A read that used the whole budget: no lock and no
                    // write, rather than add more to the call. (With some
                    // left, the write gets what is left.)
                    let slow = budget.left().is_none();
                    let stored = if store_answered && !slow {
                        Stored::Under(ticket)
                    } else {
                        Stored::Never
                    };
                    return self
                        .lead(guard, key, stored, policy, fp, compute, &mut budget)
                        .await;
                }
                Role::Alone => {
                    inner.counters.computations.incr();
                    let compute = compute.take().expect("computed at most once");
                    return compute.await;
                }
                Role::Waiter(rx) => {
                    inner.counters.coalesced.incr();
                    match flight::wait(rx).await {
                        Some(Landing::Entry(bytes)) => {
                            if let Ok(Some((v, _))) = self.open_checked::<O::Value>(
                                &bytes,
                                Accept::Exactly(fp),
                                None,
                                Source::Process,
                            ) {
                                return O::from_cached(v);
                            }
                        }
                        Some(Landing::Nothing | Landing::Pending | Landing::Abandoned) => {}
                        // The leader went away: try again, maybe as leader.
                        None => continue,
                    }
                    // Nothing shareable: compute our own, as without a cache.
                    inner.counters.computations.incr();
                    let compute = compute.take().expect("computed at most once");
                    return compute.await;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn lead<O, F>(
        &self,
        guard: LeaderGuard<'_>,
        key: &str,
        stored: Stored,
        policy: &Policy,
        fp: u64,
        compute: F,
        budget: &mut Budget,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let inner = &*self.inner;
        // Across processes: one computes under the store's lock, the others
        // wait for its value (in-process callers already wait on `guard`).
        // The lock is released when this future ends however it ends:
        // returned, cancelled, or unwound by a panicking computation.
        let mut lock = None;
        // The lock, the look that follows it and the write: the lock only
        // if what is left covers all three (the write matters more).
        if !inner.local
            && matches!(stored, Stored::Under(_))
            && !self.unreadable(fp)
            && budget.affords(3)
        {
            match self
                .lock_or_value::<O::Value>(key, fp, policy.lock_ttl, budget)
                .await
            {
                Contended::Value(v, bytes) => {
                    guard.publish(Landing::Entry(bytes));
                    return O::from_cached(v);
                }
                Contended::Locked(held) => lock = Some(held),
                Contended::Alone => {}
            }
        }
        inner.counters.computations.incr();
        let started = Instant::now();
        let out = flight::computing(key, compute).await;
        let compute_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
        let sealed = out
            .cacheable()
            .and_then(|value| self.seal_checked(key, policy, value, fp, compute_ms));
        match sealed {
            Some((bytes, ttl)) => {
                // Waiters (and callers arriving until the store finishes)
                // get the value now; the guard's drop ends the flight.
                guard.publish(Landing::Entry(bytes.clone()));
                if let (Stored::Under(ticket), Some(left)) = (stored, budget.left()) {
                    self.store(key, bytes, ttl, ticket, left).await;
                }
            }
            None => guard.publish(Landing::Nothing),
        }
        // Released in the background (after the write above): the caller
        // has its value and need not wait for the store.
        drop(lock);
        out
    }

    /// Reads and opens an entry. Store failures are returned; undecodable
    /// entries are misses (counted in `decode_failures`). Not counted as a
    /// call's answer: the caller does that.
    pub(crate) async fn read<V: DeserializeOwned>(
        &self,
        key: &str,
        fp: Accept,
        memo: Memo<V>,
        policy: Option<&Policy>,
        budget: &mut Budget,
    ) -> Result<Read<V>, Error> {
        let inner = &*self.inner;
        if !inner.enabled {
            return Ok(Read::Miss(None));
        }
        match self.local_read::<V, false>(key, fp, None, memo, policy) {
            Fast::Hit(v) => return Ok(Read::Hit(v)),
            Fast::Refresh(v, ticket, due) => return Ok(Read::Refresh(v, ticket, due)),
            Fast::Miss(ticket) => return Ok(Read::Miss(ticket)),
            Fast::Remote => {}
        }
        let lookup = match inner.backend.get_now(key) {
            Some(found) => found?,
            None => {
                let backend = &*inner.backend;
                // A retried read of a call that spent its budget: as if the
                // store timed out.
                let timeout = budget.left().ok_or(Error::Timeout {
                    backend: backend.name(),
                    timeout: inner.op_timeout,
                })?;
                let started = Instant::now();
                let found = self.guarded_for("get", timeout, || backend.get(key)).await;
                budget.spend(started);
                found?
            }
        };
        if let Some(bytes) = lookup.value {
            match self.open_checked::<V>(&bytes, fp, policy, Source::Store(key)) {
                Ok(Some((v, due))) => {
                    return Ok(match due {
                        Due::No => Read::Hit(v),
                        Due::Early | Due::Stale => Read::Refresh(v, lookup.ticket, due),
                    });
                }
                Ok(None) => {}
                Err(e) => self.failed("decode", &e),
            }
        }
        Ok(Read::Miss(lookup.ticket))
    }

    /// The synchronous read of in-process stores; `Fast::Remote` for others.
    /// With `HIT_IS_ANSWER` a fresh hit is counted here as the call's answer
    /// (the `#[cached]` fast path returns it at once); otherwise nothing is
    /// counted, and the caller counts.
    #[inline]
    pub(crate) fn local_read<V: DeserializeOwned, const HIT_IS_ANSWER: bool>(
        &self,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Fast<V> {
        let inner = &*self.inner;
        if !inner.local {
            return Fast::Remote;
        }
        let Some(found) = inner.backend.get_local(key) else {
            return Fast::Remote;
        };
        if let Some(entry) = found.entry {
            match self.open_local(&entry, fp, memo, policy) {
                Ok(Some((v, due))) => {
                    return match due {
                        Due::No => {
                            if HIT_IS_ANSWER {
                                self.tally(site, Answer::Hit);
                            }
                            Fast::Hit(v)
                        }
                        Due::Early | Due::Stale => Fast::Refresh(v, Some(found.ticket), due),
                    };
                }
                Ok(None) => {}
                Err(e) => self.failed("decode", &e),
            }
        }
        Fast::Miss(Some(found.ticket))
    }

    /// Starts a background refresh of `key` unless one already runs in this
    /// process; the job itself takes the cross-process refresh lock.
    fn begin_refresh<O, F>(
        &self,
        key: &str,
        policy: &Policy,
        fp: u64,
        ticket: Option<Ticket>,
        compute: F,
        spawn: fn(F, RefreshJob),
    ) where
        O: Outcome,
        F: Future<Output = O>,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.inner.refreshing.insert(key.into(), ()).is_some() {
            return;
        }
        spawn(
            compute,
            RefreshJob::new(self.clone(), key.to_owned(), *policy, fp, ticket),
        );
    }

    pub(crate) fn finish_refresh(&self, key: &str) {
        self.inner.refreshing.remove(key);
    }
}
