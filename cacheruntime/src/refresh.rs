//! Background refreshes: stale-while-revalidate and early refresh.
//!
//! A caller that finds an entry due for a refresh returns the current value
//! at once and hands its own (not yet started) computation to a spawned
//! task. At most one such task runs per key in a process, and the task runs
//! the computation only if it takes the store's lock for the key, so across
//! all processes sharing the store one caller refreshes. If the refresh
//! fails (`Err` or panic) it is counted and logged, the old value keeps
//! being served until its stale window ends, and the refresh lock is left to
//! expire so the next attempt comes after the lock TTL rather than on every
//! read. The refresh lock is not the key's own lock: a cold miss of the key
//! (once the stale window is over) never waits for a failed refresh.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Ticket;
use crate::engine::Engine;
use crate::entry::{Accept, Source, Typed};
use crate::lock::{refresh_lock_key, LockState};
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::site::Site;

/// Everything a refresh task needs besides the computation. Not public API.
pub(crate) struct RefreshJob {
    engine: Arc<Engine>,
    key: String,
    policy: Policy,
    typed: Typed,
    ticket: Option<Ticket>,
    /// The fresh-until of the entry the job was started for.
    seen: u64,
    /// The `#[cached]` function refreshed, for its computations' metrics.
    site: Option<&'static Site>,
}

/// The job owns the key's place in the in-process set of refreshing keys
/// (taken before it is spawned): it gives it back however the task ends,
/// including a task dropped before it first runs (its runtime shutting
/// down), which would otherwise leave the key marked, and never refreshed,
/// for the life of the cache.
impl Drop for RefreshJob {
    fn drop(&mut self) {
        self.engine.finish_refresh(&self.key);
    }
}

impl RefreshJob {
    pub(crate) fn new(
        engine: Arc<Engine>,
        key: String,
        policy: Policy,
        typed: Typed,
        ticket: Option<Ticket>,
        seen: u64,
    ) -> Self {
        RefreshJob {
            engine,
            key,
            policy,
            typed,
            ticket,
            seen,
            site: None,
        }
    }

    /// The job of a `#[cached]` function's call.
    pub(crate) fn of(mut self, site: Option<&'static Site>) -> Self {
        self.site = site;
        self
    }

    /// Takes the lock, computes (in its own task, so a panic is caught),
    /// stores the value and releases the lock.
    pub(crate) async fn run<O, F>(self, compute: F)
    where
        O: Outcome + Send + 'static,
        F: Future<Output = O> + Send + 'static,
    {
        let (engine, key, policy, typed) =
            (&self.engine, self.key.as_str(), &self.policy, &self.typed);
        let lock = match engine
            .try_lock(&refresh_lock_key(key), policy.lock_ttl, engine.op_timeout)
            .await
        {
            LockState::Held(held) => Some(held),
            LockState::Unsupported => None,
            // Someone else refreshes (or a failed refresh backs off), or the
            // store is failing (and could not take the value anyway): keep
            // serving what is there.
            LockState::Busy | LockState::Failed => return,
        };
        // A reader late past another refresh (its read came before that
        // refresh stored, its lock after that refresh released) finds a
        // newer entry than the one it was started for: computing again
        // would be a second origin call for one stale entry.
        if refreshed_since(engine, key, typed.accept(), self.seen).await {
            if let Some(held) = lock {
                held.release().await;
            }
            return;
        }
        let counters = &engine.counters;
        counters.refreshes.incr();
        let started = Instant::now();
        let outcome = tokio::spawn(compute).await;
        let took = started.elapsed();
        engine.computed(self.site, took);
        let compute_ms = took.as_millis().min(u32::MAX as u128) as u32;
        if outcome.as_ref().is_ok_and(Outcome::declined) {
            // A value it decided not to store (`unless`, a zero TTL): not a
            // failure, and the stale value stays in service until the next
            // reader past the lock's TTL tries again.
            tracing::debug!(key = %key, "background refresh declined to store its value");
            if let Some(held) = lock {
                held.keep();
            }
            return;
        }
        let value = match &outcome {
            Ok(out) => out.cacheable(),
            Err(_) => None,
        };
        let Some(value) = value else {
            counters.refresh_failures.incr();
            let why = if outcome.is_err() {
                "panicked"
            } else {
                "returned an error"
            };
            tracing::warn!(
                key = %key,
                "background refresh {why}; the stale value is served until the next attempt \
                 after the lock TTL"
            );
            if let Some(held) = lock {
                held.keep();
            }
            return;
        };
        let decided = outcome
            .as_ref()
            .map_or(*policy, |out| out.decision().apply(policy));
        if let Some((bytes, ttl)) = engine.seal_checked(key, &decided, value, typed, compute_ms) {
            engine
                .store(key, bytes, ttl, self.ticket.clone(), engine.op_timeout)
                .await;
        }
        if let Some(held) = lock {
            held.release().await;
        }
    }
}

/// Spawns a refresh on the current Tokio runtime; what `#[cached(stale
/// = ..)]` and `early` hand to the cache. Not public API.
pub(crate) fn spawn_refresh<O, F>(compute: F, job: RefreshJob)
where
    O: Outcome + Send + 'static,
    F: Future<Output = O> + Send + 'static,
{
    tokio::spawn(job.run(compute));
}

/// Whether the entry now in the store for `key` is newer than the one with
/// fresh-until `seen` (a refresh stored it since). A read that fails, or
/// finds nothing, says no: the job refreshes, as it would have.
async fn refreshed_since(engine: &Engine, key: &str, accept: Accept, seen: u64) -> bool {
    let backend = engine.store.backend();
    let found = engine.guarded("get", || backend.get(key)).await;
    found
        .ok()
        .and_then(|found| found.value)
        .and_then(|bytes| {
            engine
                .sealer
                .fresh_until(&bytes, accept, Source::Store(key))
                .ok()
        })
        .is_some_and(|fresh_until| fresh_until > seen)
}
