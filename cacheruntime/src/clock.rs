//! Wall-clock time in milliseconds, replaceable by a manual clock in tests.
//!
//! Entry deadlines are absolute wall-clock milliseconds so that several
//! processes sharing a remote store agree on them. Tests use
//! [`Clock::manual`] and [`Clock::advance`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
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

#[inline]
fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
