//! Counters on [`Cache`]: `incr` and `decr`, atomic across processes on
//! every store, for rate limits and counts.
//!
//! A counter is an entry like any other (envelope, signature, deadline,
//! invalidation and delete), holding an `i64` under a fingerprint of its
//! own, so a number cached by `set` or by a computation is never taken for
//! one. Each step is a read and a compare-and-set against it (`swap.rs`),
//! retried when another writer came first: never a store's native
//! increment, whose meanings differ (Memcached's is unsigned and stops at
//! 0, and neither knows the envelope).

use std::time::Duration;

use crate::cache::Cache;
use crate::entry::{Accept, COUNTER};
use crate::swap::Step;
use crate::{key, Error};

impl Cache {
    /// Adds `delta` to the counter under `key` and returns its new value.
    ///
    /// - A key with no live entry (never set, expired, deleted, or under an
    ///   invalidated prefix) starts at 0 and lives `ttl` from now: the
    ///   result is `delta`. So a counter under an invalidated prefix starts
    ///   over.
    /// - A live counter keeps the TTL it started with (`ttl` is not
    ///   applied again): a fixed window for rate limits.
    /// - A counter the store drops early (evicted by Redis or Memcached
    ///   under memory pressure, culled past the SQL store's `max_entries`)
    ///   is absent and starts over at 0, as any evicted entry is a miss.
    /// - A live value that is not a counter (written by `set`, `add` or a
    ///   computation, numbers included) is left as it is and the call
    ///   returns [`Error::NotACounter`]; past `i64`,
    ///   [`Error::CounterOverflow`]. Negative values are fine.
    ///
    /// Atomic across processes: concurrent increments from any handles on
    /// the store each count once. Two round trips (a read and a
    /// compare-and-set; Memcached: three), more when another writer changes
    /// the key between them. `get::<i64>` reads a counter. On
    /// [`Cache::disabled`] it stores nothing and returns `delta`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// let window = Duration::from_secs(60);
    /// // At most 3 requests a minute per client.
    /// for n in 1..=3 {
    ///     assert_eq!(cache.incr("rate:10.0.0.7", 1, window).await?, n);
    /// }
    /// assert!(cache.incr("rate:10.0.0.7", 1, window).await? > 3);
    /// assert_eq!(cache.get::<i64>("rate:10.0.0.7").await?, Some(4));
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, Error> {
        self.count(key, i128::from(delta), ttl).await
    }

    /// Subtracts `delta` from the counter under `key` and returns its new
    /// value: [`incr`](Self::incr) of `-delta`, with the same meaning for
    /// missing keys, TTLs, other values and overflow. Counters go below
    /// zero on every store.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// let day = Duration::from_secs(86_400);
    /// assert_eq!(cache.incr("stock:sku9", 2, day).await?, 2);
    /// assert_eq!(cache.decr("stock:sku9", 3, day).await?, -1);
    /// # Ok(()) }
    /// ```
    pub async fn decr(&self, key: &str, delta: i64, ttl: Duration) -> Result<i64, Error> {
        self.count(key, -i128::from(delta), ttl).await
    }

    /// What `incr` and `decr` share: `delta` in `i128`, so that `decr` of
    /// `i64::MIN` is an ordinary step.
    async fn count(&self, key: &str, delta: i128, ttl: Duration) -> Result<i64, Error> {
        key::check_key(key)?;
        let overflow = |value: i64| Error::CounterOverflow {
            key: key.to_owned(),
            value,
            delta,
        };
        let engine = &self.engine;
        if !engine.enabled() {
            return i64::try_from(delta).map_err(|_| overflow(0));
        }
        let full = engine.full_key(key);
        engine
            .swap("incr", &full, |seen| {
                let now = engine.sealer.clock.now_ms();
                let (current, ttl) = match seen.live(engine, &full, Accept::Any) {
                    None => (0, ttl),
                    Some((header, payload)) => {
                        let not_a_counter = || Error::NotACounter {
                            key: key.to_owned(),
                        };
                        if header.fingerprint != COUNTER {
                            return Err(not_a_counter());
                        }
                        let value: i64 = engine
                            .sealer
                            .codec_decode(&header, payload)
                            .map_err(|_| not_a_counter())?;
                        // What is left of the window it started with.
                        let left = header.fresh_until_ms.saturating_sub(now).max(1);
                        (value, Duration::from_millis(left))
                    }
                };
                let next =
                    i64::try_from(i128::from(current) + delta).map_err(|_| overflow(current))?;
                let bytes = engine.sealer.seal_with(
                    &full,
                    &next,
                    crate::entry::Windows::ttl(ttl),
                    COUNTER,
                    0,
                    None,
                )?;
                Ok(Step::Write(bytes, ttl, next))
            })
            .await
    }
}
