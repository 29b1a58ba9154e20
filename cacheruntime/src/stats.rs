//! Counters and the [`Stats`] snapshot.
//!
//! Every hit increments two counters (the cache's and the function's), and
//! a locked `fetch_add` costs about as much as the rest of a memory hit's
//! bookkeeping. So each thread claims one of [`STRIPES`] cells exclusively
//! (for every counter at once) and increments it with a plain load and
//! store: no lock prefix, no cache line shared with other writers. Threads
//! beyond the first [`STRIPES`] alive at once share a last cell with
//! `fetch_add`. A thread's claim is released when it exits and the next
//! claimer continues its cells, so no increment is ever lost.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const STRIPES: usize = 16;

#[repr(align(64))]
struct Cell64(AtomicU64);

/// A relaxed counter, striped per thread.
pub(crate) struct Counter {
    /// `STRIPES` exclusive cells, then the shared one.
    cells: [Cell64; STRIPES + 1],
}

impl Counter {
    pub(crate) const fn new() -> Self {
        Counter {
            cells: [const { Cell64(AtomicU64::new(0)) }; STRIPES + 1],
        }
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.incr_in(slot());
    }

    /// `incr` with the thread's slot already looked up (a hit bumps two
    /// counters; one thread-local lookup serves both).
    #[inline]
    pub(crate) fn incr_in(&self, slot: Option<usize>) {
        match slot {
            Some(i) => {
                // Single writer for this cell: no read-modify-write needed.
                let cell = &self.cells[i].0;
                cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            None => {
                self.cells[STRIPES].0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Bit `i` set: cell `i` of every counter belongs to a live thread.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

struct Slot(Option<usize>);

impl Slot {
    fn claim() -> Slot {
        let mut claimed = CLAIMED.load(Ordering::Relaxed);
        loop {
            let free = (!claimed).trailing_zeros() as usize;
            if free >= STRIPES {
                return Slot(None);
            }
            // Acquire: see every store of the cell's previous owner.
            match CLAIMED.compare_exchange_weak(
                claimed,
                claimed | (1 << free),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Slot(Some(free)),
                Err(now) => claimed = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            // Release: the next owner sees this thread's last stores.
            CLAIMED.fetch_and(!(1 << i), Ordering::Release);
        }
    }
}

#[inline(always)]
pub(crate) fn slot() -> Option<usize> {
    thread_local! {
        static SLOT: Slot = Slot::claim();
    }
    // During thread teardown the slot may be gone: use the shared cell.
    SLOT.try_with(|s| s.0).ok().flatten()
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    #[test]
    fn no_increment_is_lost_across_many_short_threads() {
        static C: Counter = Counter::new();
        let threads: Vec<_> = (0..40)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        C.incr();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(C.get(), 40_000);
    }
}

/// The live counters of one [`Cache`](crate::Cache).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) errors: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) computations: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) decode_failures: Counter,
    pub(crate) oversize: Counter,
    pub(crate) circuit_skips: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) refresh_failures: Counter,
    pub(crate) stale_if_error: Counter,
    pub(crate) lock_waits: Counter,
    pub(crate) lock_timeouts: Counter,
}

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
///
/// A failing cache never fails a call (it computes instead), so these
/// counters are where a failing store shows: export them to your metrics
/// and watch `errors` and `circuit_skips` (the store is down or too slow for
/// the op timeout), `decode_failures` (entries of another type or version,
/// or values the codec cannot read back) and `oversize` (values over the max
/// entry size, never stored), beside the hit rate. Counters only grow; take
/// differences between snapshots for rates.
///
/// ```
/// use cacheruntime::{cached, Cache};
///
/// #[cached(key = "square:{n}", cache = cache)]
/// async fn square(cache: &Cache, n: u64) -> u64 {
///     n * n
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::memory();
/// square(&cache, 3).await; // a miss: computed
/// square(&cache, 3).await; // a hit
///
/// let stats = cache.stats();
/// assert_eq!((stats.hits, stats.misses, stats.calls()), (1, 1, 2));
/// assert_eq!(stats.hit_rate(), 0.5);
/// assert_eq!((stats.errors, stats.computations), (0, 1));
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls answered with a fresh value from the cache.
    pub hits: u64,
    /// Calls that found nothing usable: they computed, or waited for another
    /// caller's computation (a stale entry recomputed in the foreground
    /// included). `hits + stale_hits + misses` is the number of calls.
    pub misses: u64,
    /// Calls answered with an entry past its TTL but inside its stale
    /// window, while it is refreshed in the background.
    pub stale_hits: u64,
    /// Store operations that failed or timed out (each one fell back to
    /// computing), plus values that could not be encoded.
    pub errors: u64,
    /// Of the `errors`, store operations that did not answer within the op
    /// timeout (a store too slow or unreachable, rather than one refusing).
    pub timeouts: u64,
    /// Times a cached function's body ran through the cache.
    pub computations: u64,
    /// Callers that waited for another caller's computation of the same key
    /// instead of running their own (single-flight).
    pub coalesced: u64,
    /// Stored entries rejected on read: corrupt, another type or version, or
    /// another format. Each is a miss and is overwritten.
    pub decode_failures: u64,
    /// Values not stored because they exceeded the max entry size.
    pub oversize: u64,
    /// Store operations skipped while the circuit breaker was open.
    pub circuit_skips: u64,
    /// Background refreshes started (stale entries and early refreshes),
    /// counted once the refresh lock was taken.
    pub refreshes: u64,
    /// Background refreshes whose computation returned `Err` or panicked;
    /// the old value kept being served.
    pub refresh_failures: u64,
    /// Calls whose computation failed and that were answered with the
    /// expired value instead (`stale_if_error`); counted as misses too.
    pub stale_if_error: u64,
    /// Cold misses that waited for another process's computation.
    pub lock_waits: u64,
    /// Of those, the ones that gave up after the lock TTL and computed.
    pub lock_timeouts: u64,
    /// Entries from a shared store rejected because they were unsigned or
    /// their HMAC did not verify (with signing keys set); each is a miss.
    pub signature_failures: u64,
    /// Of the hits, those answered from the near tier (an in-process copy
    /// in front of a shared store: `CacheBuilder::near`) without a round
    /// trip to the store. `hits - near_hits` went to the store.
    pub near_hits: u64,
    /// How long the shared store's change notices took to reach this
    /// cache's near tier (stores that push them: Redis, PostgreSQL); see
    /// [`LagHistogram`](crate::LagHistogram).
    pub near_lag: crate::LagHistogram,
    /// Per-function counters of the `#[cached]` functions that used this cache.
    pub functions: Vec<FunctionStats>,
}

impl Stats {
    /// Calls counted: `hits + stale_hits + misses`.
    pub fn calls(&self) -> u64 {
        self.hits + self.stale_hits + self.misses
    }

    /// The share of calls answered from the cache, stale hits included, or
    /// 0 before the first call.
    pub fn hit_rate(&self) -> f64 {
        rate(self.hits + self.stale_hits, self.calls())
    }
}

fn rate(served: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        served as f64 / total as f64
    }
}

/// Hit and miss counts of one `#[cached]` function, in [`Stats::functions`].
///
/// A cache-wide hit rate hides a function whose key never repeats (a
/// timestamp in the key, an argument that differs on every call): per
/// function, it shows as a hit rate near zero, and that function's entries
/// only take room from the others.
///
/// A function's counters are process-wide: if it is called with several
/// caches, each cache's `Stats` shows the same totals.
///
/// ```
/// use cacheruntime::{cached, Cache};
///
/// #[cached(key = "profile:{user_id}", cache = cache)]
/// async fn profile(cache: &Cache, user_id: u64) -> String {
///     format!("user {user_id}")
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::memory();
/// for user_id in [1, 1, 1, 2] {
///     profile(&cache, user_id).await;
/// }
/// for f in cache.stats().functions {
///     // `name` is `module::path::function`, here `rust_out::profile`.
///     println!("{}: {:.0}% hits", f.name, f.hit_rate() * 100.0);
///     assert!(f.name.ends_with("::profile"));
///     assert_eq!((f.hits, f.misses), (2, 2));
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionStats {
    /// `module::path::function`.
    pub name: String,
    /// Calls answered with a fresh value from the cache.
    pub hits: u64,
    /// Calls answered with a stale value while it was refreshed.
    pub stale_hits: u64,
    /// Calls that had to compute (or wait for a computation).
    pub misses: u64,
}

impl FunctionStats {
    /// The share of calls answered from the cache (stale hits included),
    /// or 0 before the first call.
    pub fn hit_rate(&self) -> f64 {
        rate(
            self.hits + self.stale_hits,
            self.hits + self.stale_hits + self.misses,
        )
    }
}
