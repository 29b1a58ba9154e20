//! The engine behind every [`Cache`](crate::Cache) handle: the store, the
//! settings and the shared state (flights, counters, breaker) that the
//! get-or-compute core (`fetch.rs`), store locks (`lock.rs`) and background
//! refreshes (`refresh.rs`) work on.
//!
//! The handle is an `Arc` of this and nothing else, so a refresh job or a
//! lock release running in the background holds the engine, never a
//! `Cache`; and nothing here depends on the public API in `cache.rs`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Backend;
use crate::backends::{DisabledBackend, MemoryBackend};
use crate::breaker::Breaker;
use crate::clock::{monotonic_ms, Clock};
use crate::codec::{AnyCodec, Codec};
use crate::compress::Compression;
use crate::entry::{Sealer, SealerParts, Typed};
use crate::errlog::ErrorLog;
use crate::flight::Flights;
use crate::near::Near;
use crate::policy::Policy;
use crate::signing::Signer;
use crate::site::Site;
use crate::stats::{slot, Counter, Counters, FunctionStats, Stats};
use crate::warm::Warm;
use crate::{key, Error};

/// What kind of store a cache has, decided once, at build, from the
/// store's type (never from which methods a backend implements).
///
/// Only the crate's own memory store is in-process: its entries are
/// answered synchronously and kept decoded, without signature checks or
/// store locks (nothing outside the process can write them). Every other
/// [`Backend`] is shared, however fast it answers, so its entries are
/// signature-checked and its cold misses take the store's lock.
pub(crate) enum Store {
    /// The in-process memory store.
    Memory(Arc<MemoryBackend>),
    /// Stores nothing: every call computes, without single-flight.
    Disabled,
    /// A store shared with other processes (a server, a file).
    Shared(Arc<dyn Backend>),
}

impl Store {
    /// The store as a [`Backend`], for the calls every kind answers alike.
    #[inline]
    pub(crate) fn backend(&self) -> &dyn Backend {
        match self {
            Store::Memory(memory) => &**memory,
            Store::Disabled => &DisabledBackend,
            Store::Shared(shared) => &**shared,
        }
    }

    /// The memory store, when that is the kind.
    #[inline(always)]
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        match self {
            Store::Memory(memory) => Some(memory),
            _ => None,
        }
    }

    /// Whether other processes share the store: their entries are
    /// signature-checked and cold misses take the store's lock.
    #[inline]
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Store::Shared(_))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Memory(memory) => memory.fmt(f),
            Store::Disabled => f.write_str("Disabled"),
            Store::Shared(shared) => shared.fmt(f),
        }
    }
}

/// The parts a [`CacheBuilder`](crate::CacheBuilder) hands over, checked.
pub(crate) struct Parts {
    pub(crate) store: Store,
    pub(crate) namespace: String,
    pub(crate) default_ttl: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) codec: AnyCodec,
    pub(crate) max_entry_bytes: usize,
    pub(crate) clock: Clock,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cool_down: Duration,
    pub(crate) signer: Option<Signer>,
    /// Payloads at least this long are compressed (`None`: none).
    pub(crate) compress_above: Option<usize>,
    pub(crate) compression_level: i32,
    /// The envelope flags this cache reads (tests narrow it).
    pub(crate) known_flags: u8,
    /// Entries are written in format 3, with their written-at.
    pub(crate) record_written_at: bool,
    /// The near tier in front of a shared store, if on (the store is then
    /// a [`NearBackend`](crate::near::NearBackend) around it).
    pub(crate) near: Option<Arc<Near>>,
    /// Whether call spans record the rendered key.
    #[cfg(feature = "spans")]
    pub(crate) trace_keys: bool,
}

/// One cache's store, settings and shared state.
pub(crate) struct Engine {
    id: u64,
    pub(crate) store: Store,
    /// `""` or `"namespace:"`.
    namespace: Box<str>,
    pub(crate) op_timeout: Duration,
    pub(crate) max_entry_bytes: usize,
    /// Seals and opens entries: codec, signer, clock, TTL defaults.
    pub(crate) sealer: Sealer,
    pub(crate) flights: Flights,
    /// Keys with a background refresh running in this process.
    pub(crate) refreshing: dashmap::DashMap<Box<str>, ()>,
    pub(crate) counters: Counters,
    pub(crate) breaker: Breaker,
    errlog: ErrorLog,
    functions: Mutex<Vec<&'static Site>>,
    /// Type fingerprints of values that did not read back through the
    /// codec: never stored again.
    pub(crate) unreadable: dashmap::DashMap<u64, ()>,
    /// Keys an expired value was served for after a failed computation
    /// (`stale_if_error`), each logged once (up to [`KEPT_LOGGED`] keys).
    kept_logged: dashmap::DashMap<Box<str>, ()>,
    /// What this engine's cold-miss locks hold: one token for the whole
    /// engine, so that whichever of its callers leads a key's computation
    /// holds the lock another of its callers' reads took (see `lock.rs`).
    pub(crate) lock_token: Bytes,
    /// On a shared store that takes locks in its reads
    /// (`Backend::combines_locks`): the keys read live lately, which
    /// get-or-compute calls read without taking the lock (`warm.rs`).
    pub(crate) warm: Option<Warm>,
    /// The near tier in front of a shared store, if on (`near.rs`).
    pub(crate) near: Option<Arc<Near>>,
    /// The name the cache was installed under (`Caches`), for its metrics
    /// and spans.
    name: std::sync::OnceLock<Box<str>>,
    /// Whether call spans record the rendered key (`spans.rs`).
    #[cfg(feature = "spans")]
    pub(crate) trace_keys: bool,
}

/// How many keys `stale_if_error` logs by name; past that, only counted.
const KEPT_LOGGED: usize = 10_000;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.store)
            .field("enabled", &self.enabled())
            .field("namespace", &self.namespace)
            .field("default_ttl", &self.sealer.default_ttl)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// How a call was answered: each call counts exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A fresh value from the cache.
    Hit,
    /// A value past its TTL, inside its stale window, served while it is
    /// refreshed in the background.
    Stale,
    /// Computed, or waited for another caller's computation.
    Miss,
}

impl Engine {
    pub(crate) fn new(p: Parts) -> Engine {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let namespace = if p.namespace.is_empty() {
            String::new()
        } else {
            format!("{}:", p.namespace)
        };
        let verify = p.store.is_shared();
        let combines = p.store.backend();
        let warm = (p.store.is_shared() && combines.supports_locks() && combines.combines_locks())
            .then(Warm::new);
        let max_ttl = p.store.backend().max_ttl();
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Engine {
            id,
            lock_token: Bytes::from(format!("{}-{nanos}-e{id}", std::process::id())),
            warm,
            near: p.near,
            store: p.store,
            namespace: namespace.into_boxed_str(),
            op_timeout: p.op_timeout,
            max_entry_bytes: p.max_entry_bytes,
            sealer: Sealer::new(SealerParts {
                codec: p.codec,
                signer: p.signer,
                clock: p.clock,
                verify,
                default_ttl: p.default_ttl,
                max_ttl,
                compression: Compression::new(
                    p.compress_above,
                    p.compression_level,
                    p.max_entry_bytes,
                ),
                known_flags: p.known_flags,
                record_written_at: p.record_written_at,
            }),
            flights: Flights::default(),
            refreshing: dashmap::DashMap::new(),
            counters: Counters::default(),
            breaker: Breaker::new(p.breaker_threshold, p.breaker_cool_down),
            errlog: ErrorLog::new(10_000),
            functions: Mutex::new(Vec::new()),
            unreadable: dashmap::DashMap::new(),
            kept_logged: dashmap::DashMap::new(),
            name: std::sync::OnceLock::new(),
            #[cfg(feature = "spans")]
            trace_keys: p.trace_keys,
        }
    }

    /// Names the cache (its first name wins), as `Caches` installs it.
    pub(crate) fn name_once(&self, name: &str) {
        let _ = self.name.set(name.into());
    }

    /// The cache's name in its metrics and spans: the name it was installed
    /// under, else its namespace, else `default`.
    #[cfg(any(feature = "metrics", feature = "spans"))]
    pub(crate) fn label(&self) -> &str {
        match self.name.get() {
            Some(name) => name,
            None if self.namespace.is_empty() => "default",
            None => self.namespace.trim_end_matches(':'),
        }
    }

    /// Whether the cache stores anything.
    #[inline(always)]
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self.store, Store::Disabled)
    }

    /// `""` or `"namespace:"`, what every stored key starts with.
    #[inline]
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key as the store sees it: namespaced, and shortened when long
    /// ([`key::stored`]).
    #[inline]
    pub(crate) fn full_key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        if self.namespace.is_empty() {
            return key::stored(key);
        }
        let full = format!("{}{key}", self.namespace);
        // The namespaced key itself unless it had to be shortened.
        let shortened = match key::stored(&full) {
            Cow::Owned(short) => Some(short),
            Cow::Borrowed(_) => None,
        };
        Cow::Owned(shortened.unwrap_or(full))
    }

    /// The prefix as the store sees it ([`key::stored_prefix`]).
    pub(crate) fn full_prefix<'k>(&self, prefix: &'k str) -> Result<Cow<'k, str>, Error> {
        let namespace = &*self.namespace;
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

    /// Counts how a call was answered.
    #[inline(always)]
    pub(crate) fn tally(&self, site: Option<&'static Site>, answer: Answer) {
        let counters = &self.counters;
        let slot = slot();
        let (cache, function) = match answer {
            Answer::Hit => (&counters.hits, site.map(|s| &s.hits)),
            Answer::Stale => (&counters.stale_hits, site.map(|s| &s.stale_hits)),
            Answer::Miss => (&counters.misses, site.map(|s| &s.misses)),
        };
        cache.incr_in(slot);
        if let Some(function) = function {
            function.incr_in(slot);
        }
    }

    /// Counts a hit: a near hit when the near tier answered it.
    #[inline]
    pub(crate) fn tally_hit(&self, site: Option<&'static Site>, near: bool) {
        match (&self.near, near) {
            (Some(tier), true) => self.tally_near_hit(site, &tier.hits),
            _ => self.tally(site, Answer::Hit),
        }
    }

    /// Counts a hit the near tier answered in its own counter (`near_hits`)
    /// and not in the store's hits: [`stats`](Self::stats) adds the two, so
    /// whenever they are read, near hits are exactly a part of the hits.
    #[inline]
    pub(crate) fn tally_near_hit(&self, site: Option<&'static Site>, near_hits: &Counter) {
        let slot = slot();
        near_hits.incr_in(slot);
        if let Some(site) = site {
            site.hits.incr_in(slot);
        }
    }

    /// Logs, once per key, that an expired value stood in for a failed
    /// computation (`stale_if_error`).
    pub(crate) fn kept_served(&self, key: &str) {
        if self.kept_logged.len() >= KEPT_LOGGED || self.kept_logged.contains_key(key) {
            return;
        }
        if self.kept_logged.insert(key.into(), ()).is_none() {
            tracing::warn!(
                key = %key,
                "the computation failed; serving the expired value kept for stale_if_error \
                 (logged once per key, counted in Stats::stale_if_error)"
            );
        }
    }

    /// Counts and logs a failure the caller recovers from.
    pub(crate) fn failed(&self, op: &'static str, err: &Error) {
        match err {
            Error::CircuitOpen { .. } => {}
            Error::Decode { .. } => self.counters.decode_failures.incr(),
            // Over the cache's limit or the store's (Memcached's item size).
            Error::TooLarge { .. } => self.counters.oversize.incr(),
            Error::Timeout { .. } => {
                self.counters.errors.incr();
                self.counters.timeouts.incr();
            }
            _ => self.counters.errors.incr(),
        }
        if !matches!(err, Error::CircuitOpen { .. }) {
            self.errlog
                .report(monotonic_ms(), self.store.backend().name(), op, err);
        }
    }

    /// Records that a `#[cached]` function used this cache, for
    /// [`stats`](Self::stats).
    #[inline]
    pub(crate) fn register(&self, site: &'static Site) {
        if site.last_cache.load(Ordering::Relaxed) == self.id {
            return;
        }
        let mut fns = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if !fns.iter().any(|s| std::ptr::eq(*s, site)) {
            fns.push(site);
        }
        site.last_cache.store(self.id, Ordering::Relaxed);
    }

    /// The `#[cached]` functions that have used this cache.
    #[cfg(feature = "metrics")]
    pub(crate) fn sites(&self) -> Vec<&'static Site> {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A background refresh of `key` in this process ended.
    pub(crate) fn finish_refresh(&self, key: &str) {
        self.refreshing.remove(key);
    }

    /// A snapshot of the counters, with the per-function counters of the
    /// `#[cached]` functions that used this cache.
    pub(crate) fn stats(&self) -> Stats {
        // Counted apart from the store's hits (`tally_near_hit`).
        let near_hits = self.near.as_ref().map_or(0, |n| n.hits.get());
        let c = &self.counters;
        let functions = self
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
            hits: c.hits.get() + near_hits,
            misses: c.misses.get(),
            stale_hits: c.stale_hits.get(),
            errors: c.errors.get(),
            timeouts: c.timeouts.get(),
            computations: c.computations.get(),
            coalesced: c.coalesced.get(),
            decode_failures: c.decode_failures.get(),
            oversize: c.oversize.get(),
            circuit_skips: c.circuit_skips.get(),
            refreshes: c.refreshes.get(),
            refresh_failures: c.refresh_failures.get(),
            stale_if_error: c.stale_if_error.get(),
            lock_waits: c.lock_waits.get(),
            lock_timeouts: c.lock_timeouts.get(),
            signature_failures: self.sealer.signature_failures.get(),
            near_hits,
            near_lag: self
                .near
                .as_ref()
                .map_or_else(Default::default, |n| n.lag.snapshot()),
            functions,
        }
    }

    /// [`seal_for`](Sealer::seal_for), for values that will be stored: `None`
    /// (counted and logged) when the value cannot be encoded, or when it
    /// does not read back through the codec. Every write is checked, since
    /// some shapes fail for some values only (`skip_serializing_if`); the
    /// first failure of a type (fingerprint) is reported once, and from then
    /// on the type is never stored: every call computes, as without a cache.
    pub(crate) fn seal_checked<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        typed: &Typed,
        compute_ms: u32,
    ) -> Option<(Bytes, Duration)> {
        let fp = typed.fp;
        if self.unreadable(fp) {
            return None;
        }
        match self
            .sealer
            .seal_for(key, policy, value, typed.parts(), compute_ms)
        {
            Ok((bytes, ttl)) => self.reads_back::<T>(&bytes, fp).then_some((bytes, ttl)),
            Err(e) => {
                self.failed("encode", &e);
                None
            }
        }
    }

    /// Whether values of the type behind `fp` have failed to read back.
    pub(crate) fn unreadable(&self, fp: u64) -> bool {
        !self.unreadable.is_empty() && self.unreadable.contains_key(&fp)
    }

    /// Whether `bytes`, just sealed, decode again as `T`. The first failure
    /// of a type is counted in `decode_failures` and reported at warn level
    /// with what to do.
    fn reads_back<T: DeserializeOwned>(&self, bytes: &Bytes, fp: u64) -> bool {
        let decoded = self.sealer.decode_own::<T>(bytes);
        let Err(e) = decoded else {
            return true;
        };
        if self.unreadable.insert(fp, ()).is_none() {
            self.counters.decode_failures.incr();
            tracing::warn!(
                value_type = std::any::type_name::<T>(),
                codec = self.sealer.codec.name(),
                error = %e,
                "a value of this type did not read back through the cache's codec, so values of \
                 this type are no longer stored: every call computes. The codecs are not \
                 self-describing and cannot read serde_json::Value, #[serde(untagged)], \
                 internally or adjacently tagged enums, #[serde(flatten)] or \
                 #[serde(skip_serializing_if)]: cache a type without them (for JSON, its text \
                 as a String)"
            );
        }
        false
    }
}
