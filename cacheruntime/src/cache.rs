//! The [`Cache`] handle: building, the direct API, get-or-compute entry
//! points and stats. The get-or-compute core is in `fetch.rs`, entries are
//! sealed and opened in `entry.rs`, store locks live in `lock.rs`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, BoxFuture, Locality};
use crate::backends::MemoryBackend;
use crate::breaker::Breaker;
use crate::builder::CacheBuilder;
use crate::clock::Clock;
use crate::codec::AnyCodec;
use crate::envelope;
use crate::errlog::ErrorLog;
use crate::fetch::{Accept, Answer, Budget, Call, Fast, Read, UNTYPED};
use crate::flight::Flights;
use crate::memo::Memo;
use crate::policy::Policy;
use crate::refresh::{self, RefreshJob};
use crate::signing::Signer;
use crate::site::Site;
use crate::stats::{Counters, FunctionStats, Stats};
use crate::{key, Error};

/// A handle on a cache: cheap to clone (one `Arc`), `Send + Sync + 'static`.
///
/// # Contents
/// - Building: [`Cache::memory`], [`Cache::disabled`], [`Cache::from_url`],
///   [`Cache::from_env`], [`Cache::builder`].
/// - Direct use: [`get`](Cache::get), [`set`](Cache::set),
///   [`delete`](Cache::delete), [`invalidate_prefix`](Cache::invalidate_prefix).
/// - Get-or-compute: [`get_or_compute`](Cache::get_or_compute),
///   [`try_get_or_compute`](Cache::try_get_or_compute) (what `#[cached]` calls).
/// - Watching: [`stats`](Cache::stats).
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    id: u64,
    pub(crate) backend: Arc<dyn Backend>,
    /// The store is in this process ([`Locality::InProcess`]): no signature
    /// checks, no store locks; asked of the backend once, at build.
    pub(crate) local: bool,
    pub(crate) enabled: bool,
    /// `""` or `"namespace:"`.
    namespace: Box<str>,
    pub(crate) default_ttl: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) codec: AnyCodec,
    pub(crate) max_entry_bytes: usize,
    pub(crate) clock: Clock,
    pub(crate) flights: Flights,
    /// Keys with a background refresh running in this process.
    pub(crate) refreshing: dashmap::DashMap<Box<str>, ()>,
    pub(crate) counters: Counters,
    breaker: Breaker,
    errlog: ErrorLog,
    functions: Mutex<Vec<&'static Site>>,
    pub(crate) signer: Option<Signer>,
    /// Type fingerprints of values that did not read back through the
    /// codec: never stored again.
    pub(crate) unreadable: dashmap::DashMap<u64, ()>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend)
            .field("enabled", &self.inner.enabled)
            .field("namespace", &self.inner.namespace)
            .field("default_ttl", &self.inner.default_ttl)
            .field("op_timeout", &self.inner.op_timeout)
            .finish_non_exhaustive()
    }
}

/// The parts a [`CacheBuilder`] hands over.
pub(crate) struct Parts {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) enabled: bool,
    pub(crate) namespace: String,
    pub(crate) default_ttl: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) codec: AnyCodec,
    pub(crate) max_entry_bytes: usize,
    pub(crate) clock: Clock,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cool_down: Duration,
    pub(crate) signer: Option<Signer>,
}

/// What a get-or-compute call returns, and which part of it is cached.
///
/// `Result<T, E>` caches `Ok` only; [`Always<T>`] caches every value,
/// `None` included (negative caching).
pub trait Outcome: Sized {
    /// The stored type.
    type Value: Serialize + DeserializeOwned;
    /// The part to store, if any.
    fn cacheable(&self) -> Option<&Self::Value>;
    /// Rebuilds the outcome from a stored value.
    fn from_cached(value: Self::Value) -> Self;
}

impl<T: Serialize + DeserializeOwned, E> Outcome for Result<T, E> {
    type Value = T;
    #[inline]
    fn cacheable(&self) -> Option<&T> {
        self.as_ref().ok()
    }
    #[inline]
    fn from_cached(value: T) -> Self {
        Ok(value)
    }
}

/// An outcome that is always cached.
#[derive(Debug)]
pub struct Always<T>(pub T);

impl<T: Serialize + DeserializeOwned> Outcome for Always<T> {
    type Value = T;
    #[inline]
    fn cacheable(&self) -> Option<&T> {
        Some(&self.0)
    }
    #[inline]
    fn from_cached(value: T) -> Self {
        Always(value)
    }
}

/// Milliseconds on a monotonic clock, for the breaker and the error log,
/// which must not stand still under a manual test clock.
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Cache {
    /// A builder for every setting: backend, namespace, default TTL, op
    /// timeout, codec, max entry size, circuit breaker, clock.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// An in-process cache bounded to 64 MiB, with the default settings.
    /// Needs no runtime, so it can initialise a `static LazyLock`.
    pub fn memory() -> Cache {
        Cache::builder()
            .backend(MemoryBackend::new(MemoryBackend::DEFAULT_MAX_BYTES))
            .build()
            .expect("the default configuration is valid")
    }

    /// A cache that stores nothing: every call computes. For running an app
    /// with caching switched off (`CACHE_URL=none://`).
    pub fn disabled() -> Cache {
        Cache::builder()
            .disabled()
            .build()
            .expect("the default configuration is valid")
    }

    /// Builds a cache from a URL: `memory://?max_bytes=67108864`, `none://`,
    /// and the remote backends enabled by features. Query parameters common
    /// to all: `namespace`, `default_ttl`, `op_timeout`, `max_entry_bytes`
    /// (durations as `300`, `"90s"`, `"10m"`, `"250ms"`). See [`crate::url`].
    pub async fn from_url(url: &str) -> Result<Cache, Error> {
        crate::config::build(url, Vec::new()).await
    }

    /// Builds a cache from the `CACHE_URL` environment variable, or an
    /// in-memory cache when it is unset or empty. `CACHE_SIGNING_KEY`
    /// (comma-separated for rotation, the first signs) turns on signed
    /// entries; keys never go in the URL.
    pub async fn from_env() -> Result<Cache, Error> {
        let keys: Vec<Vec<u8>> = std::env::var("CACHE_SIGNING_KEY")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        match std::env::var("CACHE_URL") {
            Ok(url) if !url.trim().is_empty() => crate::config::build(url.trim(), keys).await,
            _ => Cache::builder().signing_keys(keys).build(),
        }
    }

    pub(crate) fn from_parts(p: Parts) -> Cache {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let namespace = if p.namespace.is_empty() {
            String::new()
        } else {
            format!("{}:", p.namespace)
        };
        Cache {
            inner: Arc::new(Inner {
                id: IDS.fetch_add(1, Ordering::Relaxed),
                local: p.backend.locality() == Locality::InProcess,
                backend: p.backend,
                enabled: p.enabled,
                namespace: namespace.into_boxed_str(),
                default_ttl: p.default_ttl,
                op_timeout: p.op_timeout,
                codec: p.codec,
                max_entry_bytes: p.max_entry_bytes,
                clock: p.clock,
                flights: Flights::default(),
                refreshing: dashmap::DashMap::new(),
                counters: Counters::default(),
                breaker: Breaker::new(p.breaker_threshold, p.breaker_cool_down),
                errlog: ErrorLog::new(10_000),
                functions: Mutex::new(Vec::new()),
                signer: p.signer,
                unreadable: dashmap::DashMap::new(),
            }),
        }
    }

    /// Whether the cache stores anything (false for [`Cache::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The backend's name (`memory`, `disabled`, `redis`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The TTL used when a call does not give one.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// A snapshot of the counters, with the per-function counters of the
    /// `#[cached]` functions that used this cache.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let functions = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| FunctionStats {
                name: s.qualified_name(),
                hits: s.hits.get(),
                stale_hits: s.stale_hits.get(),
                misses: s.misses.get(),
            })
            .collect();
        Stats {
            hits: c.hits.get(),
            misses: c.misses.get(),
            stale_hits: c.stale_hits.get(),
            errors: c.errors.get(),
            computations: c.computations.get(),
            coalesced: c.coalesced.get(),
            decode_failures: c.decode_failures.get(),
            oversize: c.oversize.get(),
            circuit_skips: c.circuit_skips.get(),
            refreshes: c.refreshes.get(),
            refresh_failures: c.refresh_failures.get(),
            lock_waits: c.lock_waits.get(),
            lock_timeouts: c.lock_timeouts.get(),
            signature_failures: c.signature_failures.get(),
            functions,
        }
    }

    /// Reads `key`. `Ok(None)` for a miss, an expired entry, or an entry that
    /// does not decode as `T` (which also counts in `Stats::decode_failures`).
    /// Counts a hit or a miss (a failed read counts as a miss and an error).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        key::check_key(key)?;
        let typed = envelope::fingerprint(std::any::type_name::<T>(), 0);
        let full = self.full_key(key);
        let read = self
            .read::<T>(
                &full,
                Accept::Direct(typed),
                Memo::decode_only(),
                None,
                &mut Budget::new(self.inner.op_timeout),
            )
            .await;
        match read {
            Ok(Read::Hit(v) | Read::Refresh(v, _, _)) => {
                self.tally(None, Answer::Hit);
                Ok(Some(v))
            }
            Ok(Read::Miss(_)) => {
                self.tally(None, Answer::Miss);
                Ok(None)
            }
            Err(e) => {
                self.tally(None, Answer::Miss);
                self.failed("get", &e);
                Err(e)
            }
        }
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), Error> {
        key::check_key(key)?;
        if !self.inner.enabled {
            return Ok(());
        }
        let full = self.full_key(key);
        let bytes = self.seal_with(&full, value, ttl, Duration::ZERO, UNTYPED, 0)?;
        self.write(&full, bytes, ttl, None, self.inner.op_timeout)
            .await
    }

    /// Removes `key`.
    ///
    /// Like [`invalidate_prefix`](Self::invalidate_prefix), it fences
    /// computations in flight: after it returns, no caller in any process
    /// sharing the store is answered with a value computed before it (a
    /// computation of `key` still running stores nothing visible, and later
    /// callers do not wait for it).
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        key::check_key(key)?;
        if !self.inner.enabled {
            return Ok(());
        }
        let full = self.full_key(key);
        let backend = &*self.inner.backend;
        self.guarded("delete", || backend.delete(&full)).await?;
        // After the store: nobody may join a computation of the key that
        // started before the delete.
        self.inner.flights.detach_key(&full);
        Ok(())
    }

    /// Invalidates every entry whose key starts with `prefix`.
    ///
    /// Prefixes are whole `:`-separated segments: `"author:42:"` reaches
    /// `author:42:top_books` (and every `vary` variant of it) but not
    /// `author:420:...`. A prefix that does not end with `:` is rejected
    /// with [`Error::InvalidPrefix`] instead of matching fewer keys than
    /// asked; `""` invalidates everything in this cache's namespace.
    ///
    /// Entries being computed while this runs are not stored visibly: after
    /// it returns, no reader gets a value computed before it.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<(), Error> {
        key::check_prefix(prefix)?;
        if !self.inner.enabled {
            return Ok(());
        }
        let full = self.full_prefix(prefix)?;
        let backend = &*self.inner.backend;
        self.guarded("invalidate_prefix", || backend.invalidate_prefix(&full))
            .await?;
        // After the store: a flight started before this point may carry a
        // value computed before the invalidation; nobody may join it now.
        self.inner.flights.detach_prefix(&full);
        Ok(())
    }

    /// Returns the cached value of `key`, or runs `compute`, caches its value
    /// and returns it. Every value is cached, `None` included.
    pub async fn get_or_compute<T, F, Fut>(&self, key: &str, policy: &Policy, compute: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.fetch_keyed(key, policy, async move { Always(compute().await) }, None)
            .await
            .0
    }

    /// Like [`get_or_compute`](Self::get_or_compute) for fallible
    /// computations: `Ok` values are cached, `Err` never is.
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
        // on hits: it may do work before its future.
        self.fetch_keyed(key, policy, async move { compute().await }, None)
            .await
    }

    /// Like [`get_or_compute`](Self::get_or_compute), with the policy's
    /// `stale` window and `early` refresh carried out in the background:
    /// callers are served the current value while one caller (across all
    /// processes sharing the store) recomputes it in a spawned task, which
    /// is why the computation must be `Send + 'static`.
    ///
    /// With `get_or_compute` a stale entry is recomputed in the foreground,
    /// as a miss, and early refresh does not happen.
    pub async fn get_or_refresh<T, F, Fut>(&self, key: &str, policy: &Policy, compute: F) -> T
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        // Called only when the computation runs (a miss or a refresh).
        let body = async move { Always(compute().await) };
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
        // Called only when the computation runs (a miss or a refresh).
        let body = async move { compute().await };
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
            self.failed("get", &e);
            let call = Call::new(policy, fp, None, Memo::decode_only());
            return self.fetch("", call, Fast::Remote, compute, refresh).await;
        }
        let full = self.full_key(key);
        let call = Call::new(policy, fp, None, Memo::decode_only());
        self.fetch(&full, call, Fast::Remote, compute, refresh)
            .await
    }

    /// `""` or `"namespace:"`, what every stored key starts with.
    pub(crate) fn namespace_prefix(&self) -> &str {
        &self.inner.namespace
    }

    /// The key as the store sees it: namespaced, and shortened when long
    /// ([`key::stored`]).
    #[inline]
    fn full_key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        if self.inner.namespace.is_empty() {
            return key::stored(key);
        }
        let full = format!("{}{key}", self.inner.namespace);
        // The namespaced key itself unless it had to be shortened.
        let shortened = match key::stored(&full) {
            Cow::Owned(short) => Some(short),
            Cow::Borrowed(_) => None,
        };
        Cow::Owned(shortened.unwrap_or(full))
    }

    /// The prefix as the store sees it ([`key::stored_prefix`]).
    fn full_prefix<'k>(&self, prefix: &'k str) -> Result<Cow<'k, str>, Error> {
        let namespace = &*self.inner.namespace;
        let refused = || Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason: "a prefix longer than 959 bytes (with the namespace) is applied as its \
                     whole ':'-segments within them, and this one has none (past the \
                     namespace): put a ':' early in it, or invalidate a shorter prefix",
        };
        if namespace.is_empty() {
            return key::stored_prefix(prefix, 0)
                .map(Cow::Borrowed)
                .ok_or_else(refused);
        }
        let mut full = format!("{namespace}{prefix}");
        // Always a leading part of `full`: keep that much of it.
        let len = key::stored_prefix(&full, namespace.len())
            .ok_or_else(refused)?
            .len();
        full.truncate(len);
        Ok(Cow::Owned(full))
    }

    /// Counts and logs a failure the caller recovers from.
    pub(crate) fn failed(&self, op: &'static str, err: &Error) {
        let inner = &*self.inner;
        match err {
            Error::CircuitOpen { .. } => {}
            Error::Decode { .. } => inner.counters.decode_failures.incr(),
            // Over the cache's limit or the store's (Memcached's item size).
            Error::TooLarge { .. } => inner.counters.oversize.incr(),
            _ => inner.counters.errors.incr(),
        }
        if !matches!(err, Error::CircuitOpen { .. }) {
            inner
                .errlog
                .report(monotonic_ms(), inner.backend.name(), op, err);
        }
    }

    #[inline]
    pub(crate) fn register(&self, site: &'static Site) {
        if site.last_cache.load(Ordering::Relaxed) == self.inner.id {
            return;
        }
        let mut fns = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !fns.iter().any(|s| std::ptr::eq(*s, site)) {
            fns.push(site);
        }
        site.last_cache.store(self.inner.id, Ordering::Relaxed);
    }

    /// Runs one store call under the circuit breaker and the op timeout.
    pub(crate) async fn guarded<'b, T>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        self.guarded_for(op, self.inner.op_timeout, call).await
    }

    /// [`guarded`](Self::guarded) with a shorter bound: what is left of a
    /// call's budget (see `fetch::Budget`).
    pub(crate) async fn guarded_for<'b, T>(
        &self,
        op: &'static str,
        timeout: Duration,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        let inner = &*self.inner;
        let backend = inner.backend.name();
        if !inner.breaker.allow(monotonic_ms()) {
            inner.counters.circuit_skips.incr();
            return Err(Error::CircuitOpen { backend });
        }
        // The call is made only now, so an open circuit costs no store work.
        let result = match tokio::time::timeout(timeout, call()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { backend, timeout }),
        };
        match &result {
            Ok(_) => inner.breaker.success(),
            // Skipped by one of the backend's own breakers.
            Err(Error::CircuitOpen { .. }) => inner.counters.circuit_skips.incr(),
            // A backend that isolates failures (per server) keeps them from
            // opening the whole store's circuit.
            // ... and a timeout shorter than the op timeout (what was left
            // of a call's budget) is the call's limit, not the store's
            // failure.
            Err(e)
                if e.is_store_failure()
                    && !inner.backend.isolates_failures()
                    && !(matches!(e, Error::Timeout { .. }) && timeout < inner.op_timeout) =>
            {
                if inner.breaker.failure(monotonic_ms()) {
                    tracing::warn!(
                        backend,
                        op,
                        "cache store failing repeatedly; circuit open, calls skip it for a cool-down"
                    );
                }
            }
            Err(_) => {}
        }
        result
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
