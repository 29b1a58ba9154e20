//! Per-call caching policy.

use std::time::Duration;

/// How a get-or-compute call caches its value: what `#[cached(ttl = ..,
/// stale = .., early = .., version = ..)]` expands to, and what
/// [`Cache::get_or_compute`](crate::Cache::get_or_compute) and its siblings
/// take, so code without the macro gets the same behaviour.
///
/// Every method is `const`: a policy shared by several call sites can be a
/// `const` item, written once beside the data it describes.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::{Cache, Policy};
///
/// /// Feeds: fresh for 10 minutes, then served for up to an hour more while
/// /// one caller refreshes them in the background.
/// const FEEDS: Policy = Policy::new()
///     .ttl(Duration::from_secs(600))
///     .stale(Duration::from_secs(3600))
///     .version(2);
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::memory();
/// let feed: String = cache
///     .get_or_refresh("feed:news", &FEEDS, || async { "<rss/>".to_string() })
///     .await;
/// assert_eq!(feed, "<rss/>");
///
/// // `get_or_compute` takes the same policy, but without a task to spawn it
/// // recomputes a stale entry in the foreground.
/// let again: String = cache
///     .get_or_compute("feed:news", &FEEDS, || async { unreachable!("a hit") })
///     .await;
/// assert_eq!(again, "<rss/>");
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    pub(crate) ttl: Option<Duration>,
    pub(crate) version: u32,
    pub(crate) stale: Option<Duration>,
    pub(crate) early: Option<f64>,
    pub(crate) lock_ttl: Duration,
    pub(crate) stale_if_error: Option<Duration>,
}

/// "As long as the store allows", Django's `TIMEOUT = None`: a TTL the
/// stores cap at their own limit. The memory store keeps the entry until
/// its byte bound evicts it; Redis and SQL cap it at their `max_ttl` (30
/// days unless configured), Memcached at its `max_ttl` (365 days unless
/// configured). Every entry still has a TTL, so nothing outlives the
/// store's cap. `#[cached(ttl = cacheruntime::UNTIL_EVICTED)]`,
/// `Policy::new().ttl(UNTIL_EVICTED)`, `cache.set(key, &v, UNTIL_EVICTED)`.
pub const UNTIL_EVICTED: Duration = Duration::MAX;

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

impl Policy {
    /// The cache's default TTL, version 0, no stale window, no early
    /// refresh, 10 s refresh locks.
    pub const fn new() -> Self {
        Policy {
            ttl: None,
            version: 0,
            stale: None,
            early: None,
            lock_ttl: Duration::from_secs(10),
            stale_if_error: None,
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

    /// After the TTL, keep serving the value for up to `stale` more while
    /// one caller (across all processes) refreshes it in the background.
    /// The store keeps the entry for `ttl + stale`.
    #[must_use]
    pub const fn stale(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al., VLDB 2015): each
    /// fresh read refreshes in the background with a probability that rises
    /// as expiry nears, scaled by the measured computation time and `beta`
    /// (1.0 is the paper's choice; larger refreshes earlier).
    #[must_use]
    pub const fn early(mut self, beta: f64) -> Self {
        self.early = Some(beta);
        self
    }

    /// Stale-if-error (RFC 5861's name): when the computation fails (`Err`)
    /// and the value it would replace expired less than `window` ago, that
    /// value is served instead of the error (counted in
    /// `Stats::stale_if_error`, logged once per key). The store keeps
    /// entries for `ttl` plus the longer of `stale` and `window`. For
    /// fallible computations; a computation that cannot fail never needs it.
    #[must_use]
    pub const fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// How long a refresh or cold-miss lock is held at most (default 10 s):
    /// callers in other processes wait this long for a value before
    /// computing themselves, and a failed refresh is retried after it.
    #[must_use]
    pub const fn lock_ttl(mut self, lock_ttl: Duration) -> Self {
        self.lock_ttl = lock_ttl;
        self
    }

    /// The TTL, if set.
    pub const fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// Whether entries may be served past their TTL while refreshing.
    pub(crate) fn refreshes(&self) -> bool {
        self.stale.is_some() || self.early.is_some()
    }
}
