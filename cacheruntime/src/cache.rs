//! The [`Cache`] handle and its get-or-compute core.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, BoxFuture, LocalEntry, Ticket};
use crate::backends::MemoryBackend;
use crate::breaker::Breaker;
use crate::builder::CacheBuilder;
use crate::clock::Clock;
use crate::codec::{AnyCodec, Codec};
use crate::envelope::{self, Header};
use crate::errlog::ErrorLog;
use crate::flight::{self, Flights, Landing, Role};
use crate::memo::Memo;
use crate::policy::Policy;
use crate::refresh::{self, RefreshJob};
use crate::signing::{self, Signer};
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
    backend: Arc<dyn Backend>,
    /// The store answers in process (no cross-process locks needed);
    /// asked of the backend once, at build.
    local: bool,
    enabled: bool,
    /// `""` or `"namespace:"`.
    namespace: Box<str>,
    default_ttl: Duration,
    op_timeout: Duration,
    codec: AnyCodec,
    max_entry_bytes: usize,
    clock: Clock,
    flights: Flights,
    /// Keys with a background refresh running in this process.
    refreshing: dashmap::DashMap<Box<str>, ()>,
    counters: Counters,
    breaker: Breaker,
    errlog: ErrorLog,
    functions: Mutex<Vec<&'static Site>>,
    signer: Option<Signer>,
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

/// The fingerprint of entries written by [`Cache::set`]: the direct API
/// checks values with the codec only, so `set(k, &"text")` reads back as
/// `get::<String>(k)`. Typed calls (`#[cached]`, `get_or_compute`) see such
/// an entry as another type's: a miss.
const UNTYPED: u64 = 0;

/// Which fingerprints a read accepts.
#[derive(Clone, Copy)]
pub(crate) enum Accept {
    /// Exactly this one (typed calls).
    Exactly(u64),
    /// `Cache::get`: entries from `Cache::set`, or typed entries of `T`
    /// at version 0.
    Direct(u64),
}

impl Accept {
    #[inline]
    fn admits(self, fp: u64) -> bool {
        match self {
            Accept::Exactly(want) => fp == want,
            Accept::Direct(typed) => fp == UNTYPED || fp == typed,
        }
    }
}

enum Read<V> {
    Hit(V),
    /// Servable, and due for a refresh (stale, or picked by early refresh).
    Refresh(V, Option<Ticket>, Due),
    Miss(Option<Ticket>),
}

/// What one get-or-compute call knows about its value.
pub(crate) struct Call<'p, V> {
    policy: &'p Policy,
    fp: u64,
    site: Option<&'static Site>,
    memo: Memo<V>,
}

impl<'p, V> Call<'p, V> {
    pub(crate) fn new(
        policy: &'p Policy,
        fp: u64,
        site: Option<&'static Site>,
        memo: Memo<V>,
    ) -> Self {
        Call {
            policy,
            fp,
            site,
            memo,
        }
    }
}

/// Whether a servable entry should be refreshed in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum Due {
    No,
    /// Fresh, but picked by probabilistic early refresh.
    Early,
    /// Past its TTL, inside its stale window.
    Stale,
}

/// Whether a computed value may be written, and under which ticket.
enum Stored {
    /// The read answered (with this ticket, if the store gives them).
    Under(Option<Ticket>),
    /// The read failed: no ticket to write under; the value is only returned
    /// (and shared with in-process waiters).
    Never,
}

/// What a cold miss found when it went for the store's lock.
enum Contended<V> {
    /// Another process computed it meanwhile.
    Value(V, Bytes),
    /// We hold the lock (this token).
    Locked(Bytes),
    /// No lock (unsupported, failing store, or waited too long): compute.
    Alone,
}

/// The outcome of taking a store lock.
pub(crate) enum LockState {
    Held,
    Busy,
    /// The store has no locks: in-process protection only.
    Unsupported,
    /// The store failed; the caller goes on without the lock.
    Failed,
}

/// What the synchronous in-process read found. Not public API.
#[doc(hidden)]
pub enum Fast<V> {
    /// A live entry, decoded.
    Hit(V),
    /// A servable entry due for a background refresh, with the read's ticket.
    Refresh(V, Option<Ticket>, Due),
    /// Nothing usable; the ticket of the read.
    Miss(Option<Ticket>),
    /// The store is remote: read it asynchronously.
    Remote,
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
        crate::url::build(url, Vec::new()).await
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
            Ok(url) if !url.trim().is_empty() => crate::url::build(url.trim(), keys).await,
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
                local: p.backend.get_local("").is_some(),
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
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        key::check_key(key)?;
        let typed = envelope::fingerprint(std::any::type_name::<T>(), 0);
        let full = self.full_key(key);
        match self
            .read::<T>(
                &full,
                Accept::Direct(typed),
                None,
                Memo::decode_only(),
                None,
            )
            .await?
        {
            Read::Hit(v) | Read::Refresh(v, _, _) => Ok(Some(v)),
            Read::Miss(_) => Ok(None),
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
        self.write(&full, bytes, ttl, None).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        key::check_key(key)?;
        if !self.inner.enabled {
            return Ok(());
        }
        let full = self.full_key(key);
        let backend = &*self.inner.backend;
        self.guarded("delete", || backend.delete(&full)).await
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
        self.fetch_keyed(key, policy, compute(), None).await
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
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let compute = compute();
        let body = async move { Always(compute.await) };
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
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.fetch_keyed(key, policy, compute(), Some(refresh::spawn_refresh))
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

    /// The get-or-compute core; see the type docs for its guarantees.
    ///
    /// `key` already carries the namespace.
    pub(crate) async fn fetch<O, F>(
        &self,
        key: &str,
        call: Call<'_, O::Value>,
        first: Fast<O::Value>,
        compute: F,
        refresh: Option<fn(F, RefreshJob)>,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let Call {
            policy,
            fp,
            site,
            memo,
        } = call;
        let inner = &*self.inner;
        if let Some(site) = site {
            self.register(site);
        }
        let mut first = match first {
            Fast::Hit(v) => return O::from_cached(v),
            Fast::Refresh(v, ticket, due) => match refresh {
                Some(spawn) => {
                    self.begin_refresh(key, policy, fp, ticket, compute, spawn);
                    return O::from_cached(v);
                }
                // No background refresh possible: early refreshes are
                // skipped, stale entries are computed as misses.
                None if due == Due::Early => return O::from_cached(v),
                None => Some(ticket),
            },
            Fast::Miss(ticket) => Some(ticket),
            Fast::Remote => None,
        };
        if !inner.enabled || key.is_empty() {
            inner.counters.misses.incr();
            inner.counters.computations.incr();
            if let Some(site) = site {
                site.misses.incr();
            }
            return compute.await;
        }
        let mut compute = Some(compute);
        let mut counted = false;
        loop {
            let read = match first.take() {
                Some(ticket) => Ok(Read::Miss(ticket)),
                None => {
                    self.read::<O::Value>(key, Accept::Exactly(fp), site, memo, Some(policy))
                        .await
                }
            };
            // Whether the store answered. A failed read left no ticket (no
            // record of the invalidation state it saw), so its value must
            // not be written: stored as "current", a value computed before
            // an invalidation that returns meanwhile would be served after
            // it. And a store that just failed is not asked for a lock or a
            // write either, so the call costs one op timeout, not three.
            let store_answered = read.is_ok();
            let ticket = match read {
                Ok(Read::Hit(v)) => return O::from_cached(v),
                Ok(Read::Refresh(v, ticket, due)) => match refresh {
                    Some(spawn) => {
                        let compute = compute.take().expect("computed at most once");
                        self.begin_refresh(key, policy, fp, ticket, compute, spawn);
                        return O::from_cached(v);
                    }
                    None if due == Due::Early => return O::from_cached(v),
                    None => ticket,
                },
                Ok(Read::Miss(ticket)) => ticket,
                Err(e) => {
                    self.failed("get", &e);
                    None
                }
            };
            if !counted {
                counted = true;
                inner.counters.misses.incr();
                if let Some(site) = site {
                    site.misses.incr();
                }
            }
            match inner.flights.join(key) {
                Role::Leader(guard) => {
                    // A flight that landed between our read and our join
                    // already stored the value: read once more when that is
                    // free (in-process stores) instead of computing twice.
                    if let Some(Ok(found)) = inner.backend.get_now(key) {
                        if let Some(bytes) = found.value {
                            if let Ok(Some((v, Due::No))) = self.open_checked::<O::Value>(
                                &bytes,
                                Accept::Exactly(fp),
                                None,
                                None,
                            ) {
                                guard.publish(Landing::Entry(bytes));
                                return O::from_cached(v);
                            }
                        }
                    }
                    let compute = compute.take().expect("computed at most once");
                    let ticket = if store_answered {
                        Stored::Under(ticket)
                    } else {
                        Stored::Never
                    };
                    return self.lead(guard, key, ticket, policy, fp, compute).await;
                }
                Role::Waiter(rx) => {
                    inner.counters.coalesced.incr();
                    match flight::wait(rx).await {
                        Some(Landing::Entry(bytes)) => {
                            if let Ok(Some((v, _))) = self.open_checked::<O::Value>(
                                &bytes,
                                Accept::Exactly(fp),
                                None,
                                None,
                            ) {
                                return O::from_cached(v);
                            }
                        }
                        Some(Landing::Nothing | Landing::Pending | Landing::Abandoned) => {}
                        // The leader went away: try again, maybe as leader.
                        None => continue,
                    }
                    // Nothing shareable: compute our own, as without a cache.
                    inner.counters.computations.incr();
                    let compute = compute.take().expect("computed at most once");
                    return compute.await;
                }
            }
        }
    }

    async fn lead<O, F>(
        &self,
        guard: flight::LeaderGuard<'_>,
        key: &str,
        stored: Stored,
        policy: &Policy,
        fp: u64,
        compute: F,
    ) -> O
    where
        O: Outcome,
        F: Future<Output = O>,
    {
        let inner = &*self.inner;
        // Across processes: one computes under the store's lock, the others
        // wait for its value (in-process callers already wait on `guard`).
        let mut lock = None;
        if !inner.local && matches!(stored, Stored::Under(_)) {
            match self
                .lock_or_value::<O::Value>(key, fp, policy.lock_ttl)
                .await
            {
                Contended::Value(v, bytes) => {
                    guard.publish(Landing::Entry(bytes));
                    return O::from_cached(v);
                }
                Contended::Locked(token) => lock = Some(token),
                Contended::Alone => {}
            }
        }
        inner.counters.computations.incr();
        let started = Instant::now();
        let out = compute.await;
        let Some(value) = out.cacheable() else {
            guard.publish(Landing::Nothing);
            if let Some(token) = lock {
                self.unlock(key, &token).await;
            }
            return out;
        };
        let compute_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
        match self.seal_for(key, policy, value, fp, compute_ms) {
            Ok((bytes, ttl)) => {
                // Waiters (and callers arriving until the store finishes)
                // get the value now; the guard's drop ends the flight.
                guard.publish(Landing::Entry(bytes.clone()));
                if let Stored::Under(ticket) = stored {
                    self.store(key, bytes, ttl, ticket).await;
                }
            }
            Err(e) => {
                guard.publish(Landing::Nothing);
                self.failed("encode", &e);
            }
        }
        if let Some(token) = lock {
            self.unlock(key, &token).await;
        }
        out
    }

    /// Encodes a computed value under `policy`: the envelope's deadlines and
    /// the physical TTL (`ttl + stale`).
    pub(crate) fn seal_for<T: Serialize + ?Sized>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        fp: u64,
        compute_ms: u32,
    ) -> Result<(Bytes, Duration), Error> {
        let ttl = policy.ttl.unwrap_or(self.inner.default_ttl);
        let stale = policy.stale.unwrap_or(Duration::ZERO);
        let bytes = self.seal_with(key, value, ttl, stale, fp, compute_ms)?;
        Ok((bytes, ttl + stale))
    }

    /// Stores an encoded entry, counting (never returning) failures.
    pub(crate) async fn store(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
    ) {
        let inner = &*self.inner;
        if bytes.len() > inner.max_entry_bytes {
            self.failed(
                "set",
                &Error::TooLarge {
                    size: bytes.len(),
                    limit: inner.max_entry_bytes,
                },
            );
        } else if let Err(e) = self.write(key, bytes, ttl, ticket).await {
            self.failed("set", &e);
        }
    }

    /// Starts a background refresh of `key` unless one already runs in this
    /// process; the job itself takes the cross-process lock.
    fn begin_refresh<O, F>(
        &self,
        key: &str,
        policy: &Policy,
        fp: u64,
        ticket: Option<Ticket>,
        compute: F,
        spawn: fn(F, RefreshJob),
    ) where
        O: Outcome,
        F: Future<Output = O>,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.inner.refreshing.insert(key.into(), ()).is_some() {
            return;
        }
        spawn(
            compute,
            RefreshJob::new(self.clone(), key.to_owned(), *policy, fp, ticket),
        );
    }

    pub(crate) fn finish_refresh(&self, key: &str) {
        self.inner.refreshing.remove(key);
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn report(&self, op: &'static str, err: &Error) {
        self.failed(op, err);
    }

    /// Takes the store's lock for `key` (kept apart from entries).
    pub(crate) async fn try_lock(&self, key: &str, token: &Bytes, ttl: Duration) -> LockState {
        let backend = &*self.inner.backend;
        match self
            .guarded("lock", || backend.set_if_absent(key, token.clone(), ttl))
            .await
        {
            Ok(true) => LockState::Held,
            Ok(false) => LockState::Busy,
            Err(Error::Unsupported { .. }) => LockState::Unsupported,
            Err(e) => {
                self.failed("lock", &e);
                LockState::Failed
            }
        }
    }

    pub(crate) async fn unlock(&self, key: &str, token: &Bytes) {
        let backend = &*self.inner.backend;
        if let Err(e) = self
            .guarded("unlock", || backend.delete_if_equals(key, token))
            .await
        {
            if !matches!(e, Error::Unsupported { .. }) {
                self.failed("unlock", &e);
            }
        }
    }

    /// Takes the store's lock for a cold key, or waits for the value of
    /// whoever holds it: polling (5 ms backing off to 100 ms) for the value
    /// and for the lock, which a holder releases (or lets expire) without
    /// a visible value when its computation failed or was invalidated.
    /// Gives up after `bound` and computes without the lock.
    async fn lock_or_value<V: DeserializeOwned>(
        &self,
        key: &str,
        fp: u64,
        bound: Duration,
    ) -> Contended<V> {
        let token = refresh::token();
        let deadline = Instant::now() + bound;
        let mut pause = Duration::from_millis(5);
        let mut waited = false;
        loop {
            match self.try_lock(key, &token, bound).await {
                LockState::Held => {
                    // The holder before us may have stored the value between
                    // our miss and our lock: look once more.
                    if let Some((v, bytes)) = self.peek::<V>(key, fp).await {
                        self.unlock(key, &token).await;
                        return Contended::Value(v, bytes);
                    }
                    return Contended::Locked(token);
                }
                LockState::Busy => {}
                LockState::Unsupported | LockState::Failed => return Contended::Alone,
            }
            if !waited {
                waited = true;
                self.inner.counters.lock_waits.incr();
            }
            if Instant::now() >= deadline {
                self.inner.counters.lock_timeouts.incr();
                return Contended::Alone;
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            if let Some((v, bytes)) = self.peek::<V>(key, fp).await {
                return Contended::Value(v, bytes);
            }
        }
    }

    /// One uncounted read of a fresh entry: the value and its bytes.
    async fn peek<V: DeserializeOwned>(&self, key: &str, fp: u64) -> Option<(V, Bytes)> {
        let backend = &*self.inner.backend;
        let found = self.guarded("get", || backend.get(key)).await.ok()?;
        let bytes = found.value?;
        match self.open_checked::<V>(&bytes, Accept::Exactly(fp), None, Some(key)) {
            Ok(Some((v, _))) => Some((v, bytes)),
            _ => None,
        }
    }

    /// Counts and logs a failure the caller recovers from.
    fn failed(&self, op: &'static str, err: &Error) {
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
    fn register(&self, site: &'static Site) {
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

    /// Reads and opens an entry, counting hits and misses. Store failures
    /// are returned; undecodable entries are misses (counted).
    async fn read<V: DeserializeOwned>(
        &self,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Result<Read<V>, Error> {
        let inner = &*self.inner;
        if !inner.enabled {
            return Ok(Read::Miss(None));
        }
        match self.local_read(key, fp, site, memo, policy) {
            Fast::Hit(v) => return Ok(Read::Hit(v)),
            Fast::Refresh(v, ticket, due) => return Ok(Read::Refresh(v, ticket, due)),
            Fast::Miss(ticket) => return Ok(Read::Miss(ticket)),
            Fast::Remote => {}
        }
        let lookup = match inner.backend.get_now(key) {
            Some(found) => found?,
            None => {
                let backend = &*inner.backend;
                self.guarded("get", || backend.get(key)).await?
            }
        };
        if let Some(bytes) = lookup.value {
            match self.open_checked::<V>(&bytes, fp, policy, Some(key)) {
                Ok(Some((v, due))) => {
                    self.count_hit(site, due);
                    return Ok(match due {
                        Due::No => Read::Hit(v),
                        Due::Early | Due::Stale => Read::Refresh(v, lookup.ticket, due),
                    });
                }
                Ok(None) => {}
                Err(e) => self.failed("decode", &e),
            }
        }
        Ok(Read::Miss(lookup.ticket))
    }

    /// The synchronous read of in-process stores; `Fast::Remote` for others.
    #[inline]
    pub(crate) fn local_read<V: DeserializeOwned>(
        &self,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Fast<V> {
        let inner = &*self.inner;
        let Some(found) = inner.backend.get_local(key) else {
            return Fast::Remote;
        };
        if let Some(entry) = found.entry {
            match self.open_local(&entry, fp, memo, policy) {
                Ok(Some((v, due))) => {
                    self.count_hit(site, due);
                    return match due {
                        Due::No => Fast::Hit(v),
                        Due::Early | Due::Stale => Fast::Refresh(v, Some(found.ticket), due),
                    };
                }
                Ok(None) => {}
                Err(e) => self.failed("decode", &e),
            }
        }
        Fast::Miss(Some(found.ticket))
    }

    #[inline]
    fn count_hit(&self, site: Option<&'static Site>, due: Due) {
        let counters = &self.inner.counters;
        let slot = crate::stats::slot();
        counters.hits.incr_in(slot);
        if due == Due::Stale {
            counters.stale_hits.incr_in(slot);
        }
        if let Some(site) = site {
            site.hits.incr_in(slot);
        }
    }

    /// Opens an in-process entry, serving (and keeping) the decoded copy
    /// when `memo` allows. The header is checked first either way, so a
    /// memoised value is never served past its deadline or to a caller
    /// expecting another fingerprint.
    #[inline]
    fn open_local<V: DeserializeOwned>(
        &self,
        entry: &LocalEntry,
        fp: Accept,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Result<Option<(V, Due)>, Error> {
        let now = self.inner.clock.now_ms();
        if entry.expires_ms() <= now {
            return Ok(None);
        }
        // In-process entries need no signature check: nothing outside the
        // process can write them.
        let Some((payload, due)) = self.check_header_at(entry.bytes(), fp, now, policy, None)?
        else {
            return Ok(None);
        };
        if let (Some(get), Some(decoded)) = (memo.get, entry.decoded.get()) {
            if let Some(v) = get(decoded) {
                return Ok(Some((v, due)));
            }
        }
        let value = self.inner.codec.decode(payload)?;
        if let Some(put) = memo.put {
            let _ = entry.decoded.set(put(&value));
        }
        Ok(Some((value, due)))
    }

    /// `Ok(None)` when the entry is past its deadline.
    #[inline]
    fn open_checked<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        fp: Accept,
        policy: Option<&Policy>,
        from_store: Option<&str>,
    ) -> Result<Option<(V, Due)>, Error> {
        let now = self.inner.clock.now_ms();
        match self.check_header_at(bytes, fp, now, policy, from_store)? {
            Some((payload, due)) => Ok(Some((self.inner.codec.decode(payload)?, due))),
            None => Ok(None),
        }
    }

    /// The payload of a servable entry that `fp` admits, and whether it is
    /// due for a refresh; `Ok(None)` when it cannot be served.
    ///
    /// Past its TTL an entry is served only to callers whose policy refreshes
    /// (`stale` or `early`): everyone else sees a miss, as without a stale
    /// window. Before its TTL, `early` may pick it for a refresh (XFetch):
    /// refresh when `now - compute_time * beta * ln(u) >= fresh_until`.
    #[inline]
    fn check_header_at<'b>(
        &self,
        bytes: &'b [u8],
        fp: Accept,
        now: u64,
        policy: Option<&Policy>,
        from_store: Option<&str>,
    ) -> Result<Option<(&'b [u8], Due)>, Error> {
        let (header, mut payload) = Header::read(bytes)?;
        let signed = header.flags & envelope::FLAG_SIGNED != 0;
        if signed {
            if payload.len() < signing::TAG_LEN {
                return Err(Error::decode("signed entry shorter than its tag"));
            }
            payload = &payload[..payload.len() - signing::TAG_LEN];
        }
        // Entries read from a shared store must carry a tag of ours.
        if let (Some(signer), Some(key)) = (&self.inner.signer, from_store) {
            let body = &bytes[..bytes.len() - if signed { signing::TAG_LEN } else { 0 }];
            let tag = &bytes[body.len()..];
            if !signed || !signer.verify(key, body, tag) {
                self.inner.counters.signature_failures.incr();
                return Err(Error::decode(
                    "entry is not signed with a current signing key",
                ));
            }
        }
        if header.codec != self.inner.codec.id() {
            return Err(Error::decode(format!(
                "entry written by codec {} but this cache uses {}",
                header.codec,
                self.inner.codec.name()
            )));
        }
        if !fp.admits(header.fingerprint) {
            return Err(Error::decode(
                "entry stored under another type or version for the same key",
            ));
        }
        if now >= header.stale_until_ms {
            return Ok(None);
        }
        let refreshing = policy.filter(|p| p.refreshes());
        if now >= header.fresh_until_ms {
            return Ok(refreshing.map(|_| (payload, Due::Stale)));
        }
        if let Some(beta) = refreshing.and_then(|p| p.early) {
            let gap = f64::from(header.compute_ms) * beta * -refresh::uniform().ln();
            if now as f64 + gap >= header.fresh_until_ms as f64 {
                return Ok(Some((payload, Due::Early)));
            }
        }
        Ok(Some((payload, Due::No)))
    }

    fn seal_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        stale: Duration,
        fp: u64,
        compute_ms: u32,
    ) -> Result<Bytes, Error> {
        let now = self.inner.clock.now_ms();
        let fresh_until = now.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
        let stale_until =
            fresh_until.saturating_add(stale.as_millis().min(u64::MAX as u128) as u64);
        let mut out = Vec::with_capacity(64);
        let signer = self.inner.signer.as_ref();
        Header {
            codec: self.inner.codec.id(),
            flags: if signer.is_some() {
                envelope::FLAG_SIGNED
            } else {
                0
            },
            fingerprint: fp,
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            compute_ms,
        }
        .write(&mut out);
        self.inner.codec.encode(value, &mut out)?;
        if let Some(signer) = signer {
            let tag = signer.sign(key, &out);
            out.extend_from_slice(&tag);
        }
        Ok(Bytes::from(out))
    }

    async fn write(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
    ) -> Result<(), Error> {
        if bytes.len() > self.inner.max_entry_bytes {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: self.inner.max_entry_bytes,
            });
        }
        let backend = &*self.inner.backend;
        if let Some(done) = backend.set_now(key, &bytes, ttl, ticket.as_ref()) {
            return done;
        }
        self.guarded("set", || backend.set(key, bytes, ttl, ticket.as_ref()))
            .await
    }

    /// Runs one store call under the circuit breaker and the op timeout.
    async fn guarded<'b, T>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> BoxFuture<'b, Result<T, Error>>,
    ) -> Result<T, Error> {
        let inner = &*self.inner;
        let backend = inner.backend.name();
        if !inner.breaker.allow(monotonic_ms()) {
            inner.counters.circuit_skips.incr();
            return Err(Error::CircuitOpen { backend });
        }
        // The call is made only now, so an open circuit costs no store work.
        let result = match tokio::time::timeout(inner.op_timeout, call()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                backend,
                timeout: inner.op_timeout,
            }),
        };
        match &result {
            Ok(_) => inner.breaker.success(),
            Err(e) if e.is_store_failure() => {
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
