//! Wall-clock time in milliseconds, replaceable by a manual clock in tests.
//!
//! Entry deadlines are absolute wall-clock milliseconds so that several
//! processes sharing a remote store agree on them. Tests use
//! [`Clock::manual`] and [`Clock::advance`] instead of sleeping.
//!
//! On Linux the system clock is read with `CLOCK_REALTIME_COARSE`: 2 ns
//! instead of 28 ns for `SystemTime::now()` (measured here), at the price
//! of the kernel tick's resolution (1 to 4 ms). A memory hit reads the clock
//! twice, so this is a fifth of its cost; deadlines measured in seconds do
//! not notice a few milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time source of a [`Cache`](crate::Cache) or a backend.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that stands still until [`advance`](Self::advance)d, starting
    /// at the current wall-clock time. Clones share the same time.
    pub fn manual() -> Self {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(system_ms()))),
        }
    }

    /// Moves a manual clock forward. Does nothing on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(ms) = &self.manual {
            let by = by.as_millis().min(u128::from(u64::MAX)) as u64;
            let _ = ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
        }
    }

    /// Milliseconds since the Unix epoch.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            None => system_ms(),
            Some(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

#[cfg(target_os = "linux")]
#[inline]
fn system_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return precise_ms();
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn system_ms() -> u64 {
    precise_ms()
}

fn precise_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds on a monotonic clock since the first call (at least 1),
/// for what must not stand still under a manual test clock: the breaker,
/// the error log, a near tier's lease.
pub(crate) fn monotonic_ms() -> u64 {
    monotonic_ms_at(Instant::now())
}

/// [`monotonic_ms`] of the moment `at`.
pub(crate) fn monotonic_ms_at(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn coarse_clock_agrees_with_system_time_within_a_tick() {
        let coarse = super::system_ms();
        let precise = super::precise_ms();
        assert!(precise.abs_diff(coarse) < 50, "{coarse} vs {precise}");
    }
}
