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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::backend::Ticket;
use crate::engine::{Answer, Engine};
use crate::entry::{Due, Source, Typed};
use crate::flight::{self, Landing, LeaderGuard, Role, Seen};
use crate::guarded::Budget;
use crate::lock::{Contended, HeldLock};
use crate::memo::Memo;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::read::{Fast, Read};
use crate::refresh::RefreshJob;
use crate::site::Site;
use crate::stamp::Stamp;
use crate::Error;

/// What one get-or-compute call knows about its value.
pub(crate) struct Call<'p, V> {
    policy: &'p Policy,
    typed: Typed,
    site: Option<&'static Site>,
    memo: Memo<V>,
    /// Where to say how the call was answered (as counted in the stats),
    /// for a caller that reports it (the HTTP layer's `X-Cache`, the
    /// call's span).
    told: Option<&'p Told>,
}

/// How a call was answered, and for a hit whether the near tier answered
/// it: as the stats count it.
pub(crate) type Told = OnceLock<(Answer, bool)>;

impl<'p, V> Call<'p, V> {
    pub(crate) fn new(
        policy: &'p Policy,
        fp: u64,
        site: Option<&'static Site>,
        memo: Memo<V>,
    ) -> Self {
        Call {
            policy,
            typed: Typed::plain(fp),
            site,
            memo,
            told: None,
        }
    }

    /// A call with tags: `stamp` holds their tokens as read before the
    /// call's read of the entry.
    pub(crate) fn stamped(mut self, stamp: Arc<Stamp>) -> Self {
        self.typed.stamp = Some(stamp);
        self
    }

    /// Says in `told` how the call was answered, exactly as it is counted.
    #[cfg(feature = "http")]
    pub(crate) fn telling(self, told: &'p Told) -> Self {
        Call {
            told: Some(told),
            ..self
        }
    }
}

/// Whether a computed value may be written, and under which ticket.
enum Stored {
    /// The read answered (with this ticket, if the store gives them).
    Under(Option<Ticket>),
    /// The read failed (no ticket to write under) or used half the call's
    /// store budget: the value is only returned (and shared in process).
    Never,
}

impl Engine {
    /// Runs a call's computation without the cache, after `err` made the
    /// cache unusable for it (reported as a failed `op`): counted as a miss
    /// and a computation, its value neither stored nor shared.
    pub(crate) async fn uncached<F: Future>(
        &self,
        site: &'static Site,
        op: &'static str,
        err: &Error,
        compute: F,
    ) -> F::Output {
        self.failed(op, err);
        self.register(site);
        self.tally(Some(site), Answer::Miss);
        self.computation(Some(site), compute).await
    }

    /// Runs a call's computation: counted, and timed for the `metrics`
    /// histogram and the call's span.
    async fn computation<F: Future>(&self, site: Option<&'static Site>, compute: F) -> F::Output {
        self.counters.computations.incr();
        let started = Instant::now();
        let out = compute.await;
        self.computed(site, started.elapsed());
        out
    }

    /// Records how long a computation of `site`'s function took.
    #[inline]
    pub(crate) fn computed(&self, site: Option<&Site>, took: Duration) {
        #[cfg(feature = "metrics")]
        crate::series::computed(site, took);
        #[cfg(feature = "spans")]
        crate::spans::computed(took);
        let _ = (site, took);
    }

    /// The get-or-compute core ([`answer`](Self::answer)), inside the
    /// call's span when the `spans` feature is on and a subscriber wants it.
    ///
    /// `key` already carries the namespace. `first` is what the synchronous
    /// in-process read found (`Fast::Remote` if it was not tried).
    pub(crate) async fn fetch<O, F>(
        self: &Arc<Self>,
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
        #[cfg(feature = "spans")]
        if crate::spans::wanted() {
            use tracing::Instrument;
            let span = crate::spans::call(self, call.site, key);
            if !span.is_disabled() {
                let told = OnceLock::new();
                let outer = call.told;
                let call = Call {
                    told: Some(&told),
                    ..call
                };
                let out = self
                    .answer(key, call, first, compute, refresh)
                    .instrument(span.clone())
                    .await;
                if let Some(&(answer, near)) = told.get() {
                    crate::spans::answered(&span, answer, near);
                    if let Some(outer) = outer {
                        let _ = outer.set((answer, near));
                    }
                }
                return out;
            }
        }
        self.answer(key, call, first, compute, refresh).await
    }

    /// The get-or-compute core; see the module docs for its guarantees.
    async fn answer<O, F>(
        self: &Arc<Self>,
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
            typed,
            site,
            memo,
            told,
        } = call;
        let inner = &**self;
        let accept = typed.accept();
        if let Some(site) = site {
            self.register(site);
        }
        let tell = |answer, near| {
            if let Some(told) = told {
                let _ = told.set((answer, near));
            }
        };
        if !inner.enabled() || key.is_empty() {
            self.tally(site, Answer::Miss);
            tell(Answer::Miss, false);
            return self.computation(site, compute).await;
        }
        let mut compute = Some(compute);
        let mut first = Some(first);
        // Whether a superseded flight already sent this call round again.
        let mut retried = false;
        let mut budget = Budget::new(inner.op_timeout);
        // Whether this call has been counted: once, at its first read.
        let mut counted = false;
        // `near`: a hit the near tier answered.
        let mut tally = |answer, near| {
            if !std::mem::replace(&mut counted, true) {
                match answer {
                    Answer::Hit => self.tally_hit(site, near),
                    _ => self.tally(site, answer),
                }
                tell(answer, near);
            }
        };
        // On a shared store with locks, a key not read live lately is read
        // with a read that takes its lock where no live entry is (one round
        // trip for both); a warm one with the plain read, cheaper on a hit
        // (`warm.rs`).
        let warm = inner
            .warm
            .as_ref()
            .filter(|_| !self.unreadable(typed.fp))
            .map(|warm| (warm, warm.hash(key)));
        loop {
            // The lock this call's read took: the leader's to release with
            // its write, a waiter's to keep until the flight it joined ends.
            let mut read_lock = None;
            let read = match first.take() {
                // Counted where it was read.
                Some(Fast::Hit(v)) => return O::from_cached(v),
                Some(Fast::Refresh(v, ticket, due)) => Ok(Read::Refresh(v, ticket, due)),
                Some(Fast::Miss(ticket)) => Ok(Read::Miss(ticket)),
                Some(Fast::Fallback(v, ticket)) => Ok(Read::Fallback(v, ticket)),
                Some(Fast::Remote) | None => {
                    // Nor while a computation of the key runs here: its
                    // callers wait for it, and the lock is already ours.
                    let lock_on_read = warm
                        .filter(|(warm, hash)| {
                            !warm.is_warm(*hash) && !inner.flights.is_running(key)
                        })
                        .map(|_| policy.lock_ttl);
                    let (read, lock) = self
                        .read_with::<O::Value>(
                            key,
                            accept,
                            memo,
                            Some(policy),
                            &mut budget,
                            lock_on_read,
                        )
                        .await;
                    read_lock = lock;
                    if let Some((warm, hash)) = warm {
                        match &read {
                            Ok(Read::Hit(..) | Read::Refresh(..)) => warm.mark(hash),
                            Ok(Read::Miss(_) | Read::Fallback(..)) => warm.cool(hash),
                            Err(_) => {}
                        }
                    }
                    read
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
                Ok(Read::Hit(v, near)) => {
                    tally(Answer::Hit, near);
                    return O::from_cached(v);
                }
                Ok(Read::Refresh(v, ticket, due)) => match refresh {
                    Some(spawn) => {
                        let answer = if matches!(due, Due::Stale(_)) {
                            Answer::Stale
                        } else {
                            Answer::Hit
                        };
                        tally(answer, false);
                        let compute = compute.take().expect("computed at most once");
                        self.begin_refresh(
                            key,
                            (policy, site),
                            &typed,
                            (ticket, due),
                            compute,
                            spawn,
                        );
                        return O::from_cached(v);
                    }
                    // No background refresh possible: early refreshes are
                    // skipped, stale entries are computed as misses.
                    None if matches!(due, Due::Early(_)) => {
                        tally(Answer::Hit, false);
                        return O::from_cached(v);
                    }
                    None => ticket,
                },
                // A kept value is only read again if the computation fails.
                Ok(Read::Miss(ticket) | Read::Fallback(_, ticket)) => ticket,
                Err(e) => {
                    self.failed("get", &e);
                    None
                }
            };
            tally(Answer::Miss, false);
            let seen = if store_answered {
                Seen::Answered(ticket.as_ref())
            } else {
                Seen::Failed
            };
            let memory = inner.store.memory();
            let role = inner.flights.join(key, seen, |flight, mine| match memory {
                Some(memory) => memory.is_current(key, flight),
                None => flight.covers(mine),
            });
            match role {
                Role::Leader(guard) => {
                    // A flight that landed between our read and our join
                    // already stored the value: read once more when that is
                    // free (in-process stores) instead of computing twice.
                    let again = memory.map(|memory| memory.lookup(key));
                    if let Some(found) = again {
                        if let Some(bytes) = found.value {
                            if let Ok(Some((v, Due::No))) = inner.sealer.open_checked::<O::Value>(
                                &bytes,
                                accept,
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
                    let out = self
                        .lead(
                            guard,
                            key,
                            (stored, read_lock),
                            (policy, site),
                            &typed,
                            compute,
                            &mut budget,
                        )
                        .await;
                    return self
                        .or_kept(key, out, &typed, memo, policy, &mut budget)
                        .await;
                }
                Role::Alone => {
                    let compute = compute.take().expect("computed at most once");
                    let out = self.computation(site, compute).await;
                    // Re-entered from inside the computation of this key: a
                    // lock the read took is released once this computation
                    // ends. (One the outer computation already held, with
                    // the same token, is then released before its write:
                    // another process may compute too, nothing worse.)
                    drop(read_lock);
                    return self
                        .or_kept(key, out, &typed, memo, policy, &mut budget)
                        .await;
                }
                Role::Waiter(rx) => {
                    inner.counters.coalesced.incr();
                    // Released once the leader has stored, not before:
                    // another process would take it and compute again.
                    if let Some(lock) = read_lock {
                        rx.keep_until_end(Box::new(lock));
                    }
                    match flight::wait(rx).await {
                        Some(Landing::Entry(bytes)) => {
                            match inner.sealer.open_checked::<O::Value>(
                                &bytes,
                                accept,
                                None,
                                Source::Process,
                            ) {
                                Ok(Some((v, _))) => return O::from_cached(v),
                                // Computed under tag tokens an invalidation
                                // replaced since: that flight is over, so
                                // read again (once) and lead a computation
                                // that is stored, rather than compute alone.
                                Ok(None) if typed.stamp.is_some() && !retried => {
                                    retried = true;
                                    continue;
                                }
                                _ => {}
                            }
                        }
                        Some(Landing::Nothing | Landing::Pending | Landing::Abandoned) => {}
                        // The leader went away: try again, maybe as leader.
                        None => continue,
                    }
                    // Nothing shareable: compute our own, as without a cache.
                    let compute = compute.take().expect("computed at most once");
                    let out = self.computation(site, compute).await;
                    return self
                        .or_kept(key, out, &typed, memo, policy, &mut budget)
                        .await;
                }
            }
        }
    }

    /// `out`, or, when the computation failed and `policy` keeps values for
    /// that (`stale_if_error`), the value the store holds for `key` now.
    /// Read again rather than remembered from before the computation: an
    /// invalidation or delete that returned meanwhile must hide it.
    async fn or_kept<O: Outcome>(
        self: &Arc<Self>,
        key: &str,
        out: O,
        typed: &Typed,
        memo: Memo<O::Value>,
        policy: &Policy,
        budget: &mut Budget,
    ) -> O {
        if policy.stale_if_error.is_none() || out.cacheable().is_some() || out.declined() {
            return out;
        }
        // A tagged call reads its tags' tokens again: a tag invalidated
        // since the call began hides the kept value, as a delete would.
        let accept = match &typed.stamp {
            None => typed.accept(),
            Some(stamp) => match self.restamp(stamp).await {
                Ok(now) => Typed {
                    fp: typed.fp,
                    stamp: Some(Arc::new(now)),
                }
                .accept(),
                Err(_) => return out,
            },
        };
        match self
            .read::<O::Value>(key, accept, memo, Some(policy), budget)
            .await
        {
            // Another caller stored a value meanwhile, or it is servable
            // stale: as good as a hit would have been.
            Ok(Read::Hit(v, _) | Read::Refresh(v, _, _)) => O::from_cached(v),
            Ok(Read::Fallback(v, _)) => {
                self.counters.stale_if_error.incr();
                self.kept_served(key);
                O::from_cached(v)
            }
            Ok(Read::Miss(_)) | Err(_) => out,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn lead<O, F>(
        self: &Arc<Self>,
        guard: LeaderGuard<'_>,
        key: &str,
        (stored, read_lock): (Stored, Option<HeldLock>),
        (policy, site): (&Policy, Option<&'static Site>),
        typed: &Typed,
        compute: F,
        budget: &mut Budget,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let inner = &**self;
        // Across processes: one computes under the store's lock, the others
        // wait for its value (in-process callers already wait on `guard`).
        // The lock is released when this future ends however it ends:
        // returned, cancelled, or unwound by a panicking computation.
        // A value that will not be stored (the read used the budget, or
        // failed) is no reason to make other processes wait for it.
        let mut lock = read_lock.filter(|_| matches!(stored, Stored::Under(_)));
        let combined = inner.store.backend().combines_locks();
        // Taken by the read, which saw no live entry: nothing to look at.
        // Otherwise the lock (with the look at the entry that comes with
        // it) and the write: the lock only if what is left covers both (the
        // write matters more).
        if lock.is_none()
            && inner.store.is_shared()
            && matches!(stored, Stored::Under(_))
            && !self.unreadable(typed.fp)
            && budget.affords(if combined { 2 } else { 3 })
        {
            match self
                .lock_or_value::<O::Value>(key, typed.accept(), policy.lock_ttl, budget)
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
        let took = started.elapsed();
        self.computed(site, took);
        let compute_ms = took.as_millis().min(u32::MAX as u128) as u32;
        let decided = out.decision().apply(policy);
        let sealed = out
            .cacheable()
            .and_then(|value| self.seal_checked(key, &decided, value, typed, compute_ms));
        match sealed {
            Some((bytes, ttl)) => {
                // Waiters (and callers arriving until the store finishes)
                // get the value now; the guard's drop ends the flight.
                guard.publish(Landing::Entry(bytes.clone()));
                if let (Stored::Under(ticket), Some(left)) = (stored, budget.left()) {
                    match lock.take_if(|_| combined) {
                        // The write releases the lock in the same store call.
                        Some(held) => {
                            self.store_unlocking(key, bytes, ttl, ticket, left, held)
                                .await
                        }
                        None => self.store(key, bytes, ttl, ticket, left).await,
                    }
                }
            }
            None => guard.publish(Landing::Nothing),
        }
        // A lock not released by a write: released in the background, the
        // caller has its value and need not wait for the store.
        drop(lock);
        out
    }

    /// Starts a background refresh of `key` unless one already runs in this
    /// process; the job itself takes the cross-process refresh lock.
    fn begin_refresh<O, F>(
        self: &Arc<Self>,
        key: &str,
        (policy, site): (&Policy, Option<&'static Site>),
        typed: &Typed,
        (ticket, due): (Option<Ticket>, Due),
        compute: F,
        spawn: fn(F, RefreshJob),
    ) where
        O: Outcome,
        F: Future<Output = O>,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.refreshing.insert(key.into(), ()).is_some() {
            return;
        }
        spawn(
            compute,
            RefreshJob::new(
                Arc::clone(self),
                key.to_owned(),
                *policy,
                typed.clone(),
                ticket,
                due.fresh_until(),
            )
            .of(site),
        );
    }
}
