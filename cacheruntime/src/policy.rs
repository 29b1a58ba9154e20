//! Per-call caching policy.

use std::time::Duration;

/// How a get-or-compute call caches its value: what `#[cached(ttl = ..,
/// version = ..)]` expands to, and what [`Cache::get_or_compute`](crate::Cache::get_or_compute)
/// takes.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::Policy;
/// let p = Policy::new().ttl(Duration::from_secs(600)).version(2);
/// # let _ = p;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    pub(crate) ttl: Option<Duration>,
    pub(crate) version: u32,
}

impl Policy {
    /// The cache's default TTL, version 0.
    pub const fn new() -> Self {
        Policy {
            ttl: None,
            version: 0,
        }
    }

    /// How long a value stays fresh.
    #[must_use]
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// A number mixed into the entry's type fingerprint: bump it when the
    /// meaning of a cached value changes without its Rust type changing, and
    /// old entries become misses instead of wrong answers.
    #[must_use]
    pub const fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The TTL, if set.
    pub const fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }
}
