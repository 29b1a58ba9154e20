//! A circuit breaker in front of the store.
//!
//! After `threshold` consecutive store failures the circuit opens and calls
//! skip the store (costing only the computation) for `cool_down`. Then one
//! call is let through as a probe: success closes the circuit, failure opens
//! it for another cool-down. Without this, every call to a dead store would
//! pay a full op timeout.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down_ms: u64,
    failures: AtomicU32,
    /// 0 when closed; otherwise the ms at which the next probe may go.
    open_until_ms: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cool_down_ms: cool_down.as_millis().min(u128::from(u64::MAX)) as u64,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether a store call may go ahead now.
    #[inline]
    pub(crate) fn allow(&self, now_ms: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        // Open: after the cool-down exactly one caller wins the probe.
        now_ms >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now_ms.saturating_add(self.cool_down_ms),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    #[inline]
    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Relaxed) != 0
            && self.open_until_ms.swap(0, Ordering::AcqRel) != 0
        {
            tracing::info!("cache store answered again; circuit closed");
        }
    }

    /// Records a failure; returns true when this one opened the circuit.
    pub(crate) fn failure(&self, now_ms: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            let was = self
                .open_until_ms
                .swap(now_ms.saturating_add(self.cool_down_ms), Ordering::AcqRel);
            return was == 0;
        }
        false
    }

    /// Whether the circuit is open (or half-open: a probe may be out).
    #[cfg(any(test, feature = "metrics"))]
    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_cool_down() {
        let b = Breaker::new(3, Duration::from_millis(100));
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        assert!(b.failure(0));
        assert!(!b.allow(50));
        assert!(b.allow(100), "first caller after the cool-down probes");
        assert!(!b.allow(100), "only one probe at a time");
        b.success();
        assert!(b.allow(101));
        assert!(!b.is_open());
    }
}
