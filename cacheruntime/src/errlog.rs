//! Rate-limited logging of cache failures.
//!
//! A dead store fails every call; logging each at warn level would flood the
//! logs exactly when they matter. One warning per interval carries the count
//! of failures suppressed since the last one; every failure is still counted
//! in `Stats::errors` and logged at debug level.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

#[derive(Debug)]
pub(crate) struct ErrorLog {
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl ErrorLog {
    pub(crate) fn new(interval_ms: u64) -> Self {
        ErrorLog {
            interval_ms,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub(crate) fn report(&self, now_ms: u64, backend: &'static str, op: &'static str, err: &Error) {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                backend,
                op,
                error = %err,
                suppressed,
                "cache operation failed; the call computed its value instead"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(backend, op, error = %err, "cache operation failed");
        }
    }
}
