//! Counters and the [`Stats`] snapshot.
//!
//! Counters are striped over cache-line-padded cells picked per thread, so
//! that two threads serving hits do not fight over one cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 8;

#[repr(align(128))]
struct Cell128(AtomicU64);

/// A relaxed counter, striped per thread.
pub(crate) struct Counter {
    cells: [Cell128; STRIPES],
}

impl Counter {
    pub(crate) const fn new() -> Self {
        Counter {
            cells: [const { Cell128(AtomicU64::new(0)) }; STRIPES],
        }
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.cells[stripe()].0.fetch_add(1, Ordering::Relaxed);
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

#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(v);
        v
    })
}

/// The live counters of one [`Cache`](crate::Cache).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) errors: Counter,
    pub(crate) computations: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) decode_failures: Counter,
    pub(crate) oversize: Counter,
    pub(crate) circuit_skips: Counter,
}

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads answered from the store.
    pub hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// Reads answered with an entry past its TTL but inside its stale window.
    pub stale_hits: u64,
    /// Store operations that failed or timed out (each one fell back to
    /// computing), plus values that could not be encoded.
    pub errors: u64,
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
    /// Per-function counters of the `#[cached]` functions that used this cache.
    pub functions: Vec<FunctionStats>,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 when nothing was read.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Hit and miss counts of one `#[cached]` function.
///
/// A function's counters are process-wide: if it is called with several
/// caches, each cache's `Stats` shows the same totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionStats {
    /// `module::path::function`.
    pub name: String,
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that had to compute (or wait for a computation).
    pub misses: u64,
}

impl FunctionStats {
    /// `hits / (hits + misses)`, or 0 before the first call.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}
