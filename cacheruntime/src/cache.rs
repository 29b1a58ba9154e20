//! The [`Cache`] handle and its public methods: the direct API, the
//! get-or-compute entry points and stats. The handle is an `Arc` of the
//! engine (`engine.rs`); the get-or-compute core is in `fetch.rs`, entries
//! are sealed and opened in `entry.rs`, store I/O is guarded in
//! `guarded.rs`, store locks live in `lock.rs`. Building is in
//! `builder.rs`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Clock;
use crate::engine::{Answer, Engine};
use crate::entry::{Accept, UNTYPED};
use crate::envelope;
use crate::fetch::Call;
use crate::guarded::Budget;
use crate::memo::Memo;
use crate::outcome::{Always, Outcome};
use crate::policy::Policy;
use crate::read::{Fast, Read};
use crate::refresh::{self, RefreshJob};
use crate::stats::Stats;
use crate::{key, Error};

/// A handle on a cache: cheap to clone (one `Arc`), `Send + Sync + 'static`.
///
/// # Contents
/// - Building: [`Cache::memory`], [`Cache::disabled`], [`Cache::from_url`],
///   [`Cache::from_env`], [`Cache::builder`].
/// - Direct use: [`get`](Cache::get), [`set`](Cache::set),
///   [`delete`](Cache::delete), [`invalidate_prefix`](Cache::invalidate_prefix);
///   and the low-level ops, absent meaning the same as for `get`:
///   [`contains`](Cache::contains), [`ttl`](Cache::ttl),
///   [`touch`](Cache::touch), [`add`](Cache::add),
///   [`get_many`](Cache::get_many), [`set_many`](Cache::set_many),
///   [`delete_many`](Cache::delete_many), counters with
///   [`incr`](Cache::incr) and [`decr`](Cache::decr), and
///   [`clear`](Cache::clear).
/// - Get-or-compute: [`get_or_compute`](Cache::get_or_compute),
///   [`try_get_or_compute`](Cache::try_get_or_compute) (what `#[cached]` calls),
///   and with `stale` / `early` refreshed in the background:
///   [`get_or_refresh`](Cache::get_or_refresh),
///   [`try_get_or_refresh`](Cache::try_get_or_refresh).
/// - Watching: [`stats`](Cache::stats), [`is_enabled`](Cache::is_enabled),
///   [`backend_name`](Cache::backend_name), [`default_ttl`](Cache::default_ttl).
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::{Cache, Policy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cacheruntime::Error> {
/// // One handle per app, cloned into every request (an `Arc` inside).
/// let cache = Cache::memory();
///
/// // What `#[cached]` does for you, by hand: the closure runs on a miss.
/// const RANKING: Policy = Policy::new().ttl(Duration::from_secs(3600));
/// let top: Vec<u64> = cache
///     .get_or_compute("author:42:top_books", &RANKING, || async { vec![421, 422] })
///     .await;
/// assert_eq!(top, [421, 422]);
///
/// // A purchase changed author 42's data: drop everything under it.
/// cache.invalidate_prefix("author:42:").await?;
/// assert_eq!(cache.get::<Vec<u64>>("author:42:top_books").await?, None);
/// # Ok(()) }
/// ```
///
/// # When the store fails
/// Get-or-compute never fails because of the cache: a store error, a timeout
/// (every store call is bounded by the op timeout), an undecodable entry or
/// an oversize value make the call compute and return its own value. The
/// failure is counted in [`Stats::errors`] and logged (rate-limited). After
/// repeated store failures a circuit breaker skips the store for a cool-down,
/// so a dead store costs the computation alone, not a timeout per call.
///
/// # Concurrent calls on the same key
/// Within a process, callers that miss the same key while it is being
/// computed wait for that one computation (single-flight) and each decode
/// their own copy of its value. If the computing caller is dropped, a waiter
/// takes over. If the computation returns `Err` (never cached), each waiter
/// computes for itself, as it would have without a cache.
///
/// A caller waits for a computation only if that computation's read of the
/// store saw every invalidation and delete of the key that the caller's own
/// read saw, in this process or any other; otherwise it computes anew. A
/// caller whose read of the store failed computes on its own.
///
/// # Invalidations and deletes
/// After [`invalidate_prefix`](Cache::invalidate_prefix) or
/// [`delete`](Cache::delete) returns, no call that starts afterwards, in any
/// process sharing the store, is answered with a value computed before it:
/// computations already running when it happened finish for the callers
/// that were waiting for them, but their values are not stored and not
/// shared with later callers.
///
/// # Runtime
/// Store calls are bounded with `tokio::time::timeout`, so they must run
/// inside a Tokio runtime with the time driver enabled. Building a memory or
/// disabled cache needs no runtime (they can live in a `static LazyLock`).
#[derive(Clone)]
pub struct Cache {
    pub(crate) engine: Arc<Engine>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.engine.fmt(f)
    }
}

impl Cache {
    /// The handle on a freshly built engine.
    pub(crate) fn from_engine(engine: Engine) -> Cache {
        let engine = Arc::new(engine);
        #[cfg(feature = "metrics")]
        crate::series::follow(&engine);
        Cache { engine }
    }

    /// Copies the counters of every cache of the process (this one
    /// included) into the `metrics` recorder now (feature `metrics`). They
    /// are copied every second in any case; a handler that renders a
    /// scrape calls this first for figures that match
    /// [`stats`](Self::stats) exactly. The series are listed in the
    /// README ("Metrics"). Caches under one name (`cache` label: the name
    /// installed under, else the namespace, else `default`) add up.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = cacheruntime::Cache::memory();
    /// cache.get_or_compute("k", &Default::default(), || async { 1u8 }).await;
    /// // With a recorder installed (`metrics::set_global_recorder`, or an
    /// // exporter's `install`), `cache_calls_total{result="miss"}` is 1.
    /// cache.export_metrics();
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn export_metrics(&self) {
        crate::series::publish_all();
    }

    /// A snapshot of the counters, with the per-function counters of the
    /// `#[cached]` functions that used this cache.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Whether the cache stores anything (false for [`Cache::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.engine.enabled()
    }

    /// The backend's name (`memory`, `disabled`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.engine.store.backend().name()
    }

    /// The TTL used when a call does not give one.
    pub fn default_ttl(&self) -> Duration {
        self.engine.sealer.default_ttl
    }

    /// The clock entry deadlines are read from ([`Clock::manual`] in tests):
    /// what layers above the cache use to date what they store (the HTTP
    /// layer's `Age` and `Last-Modified`), so they agree with the engine on
    /// when an entry turns stale.
    pub fn clock(&self) -> &Clock {
        &self.engine.sealer.clock
    }

    /// Reads `key`. `Ok(None)` for a miss, an expired entry, or an entry that
    /// does not decode as `T` (which also counts in `Stats::decode_failures`).
    /// Counts a hit or a miss (a failed read counts as a miss and an error).
    ///
    /// It reads what [`set`](Self::set) wrote, and what `get_or_compute`
    /// wrote for the same `T` (at policy version 0); a value of another type
    /// under the key is a miss, never a wrong value.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// cache.set("feed:etag", "W/\"42\"", Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get::<String>("feed:etag").await?.as_deref(), Some("W/\"42\""));
    /// assert_eq!(cache.get::<u64>("feed:etag").await?, None, "another type: a miss");
    /// # Ok(()) }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        key::check_key(key)?;
        let typed = envelope::fingerprint(std::any::type_name::<T>(), 0);
        let full = self.engine.full_key(key);
        let read = self
            .engine
            .read::<T>(
                &full,
                Accept::Direct(typed),
                Memo::decode_only(),
                None,
                &mut Budget::new(self.engine.op_timeout),
            )
            .await;
        match read {
            Ok(Read::Hit(v, near)) => {
                self.engine.tally_hit(None, near);
                Ok(Some(v))
            }
            Ok(Read::Refresh(v, _, _)) => {
                self.engine.tally(None, Answer::Hit);
                Ok(Some(v))
            }
            Ok(Read::Miss(_) | Read::Fallback(..)) => {
                self.engine.tally(None, Answer::Miss);
                Ok(None)
            }
            Err(e) => {
                self.engine.tally(None, Answer::Miss);
                self.engine.failed("get", &e);
                Err(e)
            }
        }
    }

    /// Stores `value` under `key` for `ttl`.
    ///
    /// A plain write, the last one wins: unlike
    /// [`delete`](Self::delete) and
    /// [`invalidate_prefix`](Self::invalidate_prefix) it fences nothing, so
    /// a computation of the same key already running may overwrite it.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), Error> {
        key::check_key(key)?;
        self.put(key, value, ttl, None).await
    }

    /// What `set` and `set_tagged` share: seal (with the tags' stamp, if
    /// any) and write, fencing nothing.
    pub(crate) async fn put<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        stamp: Option<&crate::stamp::Stamp>,
    ) -> Result<(), Error> {
        if !self.engine.enabled() {
            return Ok(());
        }
        let full = self.engine.full_key(key);
        let bytes = self.engine.sealer.seal_with(
            &full,
            value,
            crate::entry::Windows::ttl(ttl),
            UNTYPED,
            0,
            stamp,
        )?;
        self.engine
            .write(&full, bytes, ttl, None, self.engine.op_timeout)
            .await
    }

    /// Removes `key`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// cache.set("session:9", &"alice", Duration::from_secs(60)).await?;
    /// cache.delete("session:9").await?;
    /// assert_eq!(cache.get::<String>("session:9").await?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// Like [`invalidate_prefix`](Self::invalidate_prefix), it fences
    /// computations in flight: after it returns, no caller in any process
    /// sharing the store is answered with a value computed before it (a
    /// computation of `key` still running stores nothing visible, and later
    /// callers do not wait for it). Another handle with a near tier
    /// ([`CacheBuilder::near`](crate::CacheBuilder::near)) sees it within
    /// `near_check`; this one, at once.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        key::check_key(key)?;
        if !self.engine.enabled() {
            return Ok(());
        }
        let full = self.engine.full_key(key);
        let backend = self.engine.store.backend();
        self.engine
            .guarded("delete", || backend.delete(&full))
            .await?;
        // After the store: nobody may join a computation of the key that
        // started before the delete.
        self.engine.flights.detach_key(&full);
        Ok(())
    }

    /// Invalidates every entry whose key starts with `prefix`.
    ///
    /// Prefixes are whole `:`-separated segments: `"author:42:"` reaches
    /// `author:42:top_books` (and every `vary` variant of it) but not
    /// `author:420:...`. A prefix that does not end with `:` is rejected
    /// with [`Error::InvalidPrefix`] instead of matching fewer keys than
    /// asked; `""` invalidates everything in this cache's namespace (on a
    /// shared store, only with a namespace: without one it is refused with
    /// [`Error::NamespaceRequired`] on every shared store, as
    /// [`clear`](Cache::clear) is, since it would reach other applications'
    /// entries).
    ///
    /// Entries being computed while this runs are not stored visibly: after
    /// it returns, no reader gets a value computed before it (another handle
    /// with a near tier, [`CacheBuilder::near`](crate::CacheBuilder::near):
    /// within `near_check`; this one: at once).
    ///
    /// ```
    /// # use cacheruntime::{Cache, Error};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let cache = Cache::memory();
    /// cache.invalidate_prefix("author:42:").await?; // author 42's entries
    /// cache.invalidate_prefix("").await?; // everything in the namespace
    /// // Not a whole segment: refused, rather than reaching `author:420:` too.
    /// assert!(matches!(
    ///     cache.invalidate_prefix("author:42").await,
    ///     Err(Error::InvalidPrefix { .. })
    /// ));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<(), Error> {
        if !self.engine.enabled() {
            return key::check_prefix(prefix);
        }
        let full = self.checked_prefix(prefix)?;
        let backend = self.engine.store.backend();
        self.engine
            .guarded("invalidate_prefix", || backend.invalidate_prefix(&full))
            .await?;
        // After the store: a flight started before this point may carry a
        // value computed before the invalidation; nobody may join it now.
        self.engine.flights.detach_prefix(&full);
        Ok(())
    }

    /// The prefix as the store sees it, or why it cannot be invalidated:
    /// not whole segments, too long to apply, or everything without a
    /// namespace on a store others may share (refused on every shared store
    /// alike, as `clear` is: it would reach other applications' entries).
    pub(crate) fn checked_prefix<'p>(&self, prefix: &'p str) -> Result<Cow<'p, str>, Error> {
        key::check_prefix(prefix)?;
        if prefix.is_empty() && self.engine.namespace().is_empty() && self.engine.store.is_shared()
        {
            return Err(Error::NamespaceRequired {
                backend: self.engine.store.backend().name(),
                operation: "invalidate_prefix(\"\")",
            });
        }
        self.engine.full_prefix(prefix)
    }

    /// Returns the cached value of `key`, or runs `compute`, caches its value
    /// and returns it. Every value is cached, `None` included (negative
    /// caching: a lookup that found nothing is not repeated for the TTL).
    ///
    /// Callers missing the same key at once share one computation (see
    /// [`Cache`]); if the store fails, `compute` runs and its value is
    /// returned as without a cache.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::{Cache, Policy};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = Cache::memory();
    /// let policy = Policy::new().ttl(Duration::from_secs(60));
    /// let user_id = 7;
    /// let key = format!("user:{user_id}:avatar");
    /// let avatar: Option<String> = cache.get_or_compute(&key, &policy, || async { None }).await;
    /// assert_eq!(avatar, None);
    /// // Cached, `None` included: this closure does not run.
    /// let again: Option<String> = cache
    ///     .get_or_compute(&key, &policy, || async { unreachable!() })
    ///     .await;
    /// assert_eq!(again, None);
    /// assert_eq!(cache.stats().hits, 1);
    /// # }
    /// ```
    pub async fn get_or_compute<T, F, Fut>(&self, key: &str, policy: &Policy, compute: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        // The computation's future goes on the heap when it runs (a miss):
        // the layers under this one each keep a copy of the unstarted body
        // (see `__private::cached_value`), which stays as small as the
        // closure.
        let body = async move { Always(Box::pin(compute()).await) };
        self.fetch_keyed(key, policy, body, None).await.0
    }

    /// Like [`get_or_compute`](Self::get_or_compute) for fallible
    /// computations: `Ok` values are cached, `Err` never is.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::{Cache, Policy};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = Cache::memory();
    /// let policy = Policy::new().ttl(Duration::from_secs(300));
    /// // An upstream failure is returned, not cached: the next call retries.
    /// let failed: Result<String, &str> = cache
    ///     .try_get_or_compute("oembed:v1", &policy, || async { Err("upstream 503") })
    ///     .await;
    /// assert!(failed.is_err());
    /// let ok: Result<String, &str> = cache
    ///     .try_get_or_compute("oembed:v1", &policy, || async { Ok("<iframe>".to_string()) })
    ///     .await;
    /// assert_eq!(ok.unwrap(), "<iframe>");
    /// # }
    /// ```
    pub async fn try_get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The closure runs only when the computation does (a miss), not
        // on hits: it may do work before its future, which is boxed then
        // (see `get_or_compute`).
        let body = async move { Box::pin(compute()).await };
        self.fetch_keyed(key, policy, body, None).await
    }

    /// Like [`get_or_compute`](Self::get_or_compute), with the policy's
    /// `stale` window and `early` refresh carried out in the background:
    /// callers are served the current value while one caller (across all
    /// processes sharing the store) recomputes it in a spawned task, which
    /// is why the computation must be `Send + 'static`.
    ///
    /// With `get_or_compute` a stale entry is recomputed in the foreground,
    /// as a miss, and early refresh does not happen.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::{Cache, Policy};
    /// # async fn fetch_feed(url: String) -> String { url }
    /// # #[tokio::main]
    /// # async fn main() {
    /// let cache = Cache::memory();
    /// // Fresh for a minute, then served for up to an hour more while one
    /// // caller refreshes it in the background.
    /// const FEED: Policy = Policy::new()
    ///     .ttl(Duration::from_secs(60))
    ///     .stale(Duration::from_secs(3600));
    /// let url = "https://example.test/rss".to_string();
    /// let body = cache
    ///     .get_or_refresh("feed:example", &FEED, move || fetch_feed(url))
    ///     .await;
    /// assert_eq!(body, "https://example.test/rss");
    /// # }
    /// ```
    pub async fn get_or_refresh<T, F, Fut>(&self, key: &str, policy: &Policy, compute: F) -> T
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        // Called only when the computation runs (a miss or a refresh), and
        // boxed then (see `get_or_compute`).
        let body = async move { Always(Box::pin(compute()).await) };
        self.fetch_keyed(key, policy, body, Some(refresh::spawn_refresh))
            .await
            .0
    }

    /// [`get_or_refresh`](Self::get_or_refresh) for fallible computations:
    /// `Ok` values are cached, and a refresh returning `Err` keeps the old
    /// value in service (counted in `Stats::refresh_failures`).
    pub async fn try_get_or_refresh<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Called only when the computation runs (a miss or a refresh), and
        // boxed then (see `get_or_compute`).
        let body = async move { Box::pin(compute()).await };
        self.fetch_keyed(key, policy, body, Some(refresh::spawn_refresh))
            .await
    }

    /// What the four get-or-compute methods share: fingerprint the stored
    /// type, namespace the key, run the core.
    async fn fetch_keyed<O, F>(
        &self,
        key: &str,
        policy: &Policy,
        compute: F,
        refresh: Option<fn(F, RefreshJob)>,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let fp = envelope::fingerprint(std::any::type_name::<O::Value>(), policy.version);
        if let Err(e) = key::check_key(key) {
            // Not cacheable under this key: computed as without a cache,
            // counted and logged (never silently).
            self.engine.failed("get", &e);
            let call = Call::new(policy, fp, None, Memo::decode_only());
            return self
                .engine
                .fetch("", call, Fast::Remote, compute, refresh)
                .await;
        }
        let full = self.engine.full_key(key);
        let call = Call::new(policy, fp, None, Memo::decode_only());
        self.engine
            .fetch(&full, call, Fast::Remote, compute, refresh)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_send_sync_static_and_cheap_to_clone() {
        fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
        assert_bounds::<Cache>();
        assert_eq!(std::mem::size_of::<Cache>(), std::mem::size_of::<usize>());
    }
}
