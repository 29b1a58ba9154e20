//! Every way to build a [`Cache`]: [`Cache::memory`], [`Cache::disabled`],
//! and [`CacheBuilder`] with every setting, checked at
//! [`build`](CacheBuilder::build). (`Cache::from_url` and `from_env` parse a
//! URL into a builder.)

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::backends::{DisabledBackend, MemoryBackend};
use crate::cache::Cache;
use crate::clock::Clock;
use crate::codec::AnyCodec;
use crate::engine::{Engine, Parts, Store};
use crate::signing::{Signer, SigningKeys};
use crate::Error;

mod near_tier;

use near_tier::near_tier;

/// The default `max_entry_bytes`: 1 MiB.
const DEFAULT_MAX_ENTRY_BYTES: usize = 1 << 20;

/// Builds a [`Cache`]. Start from [`Cache::builder`].
///
/// Every setting has a default that suits a web application (see
/// [`new`](Self::new)), so a builder names only what differs. The
/// settings are checked together in [`build`](Self::build), which never
/// connects anywhere: a cache on a remote store is built while the store is
/// down, and its calls compute until it answers. [`Cache::from_url`] and
/// [`Cache::from_env`] build the same caches from configuration.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::{Cache, backends::MemoryBackend};
///
/// let cache = Cache::builder()
///     .backend(MemoryBackend::new(16 << 20))
///     .namespace("shop")
///     .default_ttl(Duration::from_secs(600))
///     .op_timeout(Duration::from_millis(100))
///     .build()
///     .unwrap();
/// # let _ = cache;
/// ```
///
/// Signed entries, for a shared store that others can write to: the first
/// key signs and every key verifies, so a key rotates without a wave of
/// misses (add the new key last, then move it first, then drop the old one
/// once the entries it signed have expired).
///
/// ```
/// use cacheruntime::Cache;
///
/// let cache = Cache::builder()
///     .signing_keys(["new-key-at-least-16-bytes", "old-key-at-least-16-bytes"])
///     .build()
///     .unwrap();
/// # let _ = cache;
/// ```
///
/// Mistakes are errors at `build`, saying what to change, rather than a
/// cache that misbehaves later:
///
/// ```
/// use cacheruntime::{Cache, Error};
///
/// // A namespace is one key segment: letters, digits and `._-`.
/// let err = Cache::builder().namespace("my shop").build().unwrap_err();
/// assert!(matches!(err, Error::Config(_)), "{err}");
/// ```
#[must_use]
#[derive(Debug)]
pub struct CacheBuilder {
    backend: Option<Store>,
    /// A memory store of this many bytes, made at `build` (so it is sized
    /// for the final `max_entry_bytes`, whatever the order of the calls).
    memory: Option<u64>,
    namespace: String,
    default_ttl: Duration,
    op_timeout: Duration,
    codec: AnyCodec,
    /// `None`: 1 MiB, or less if the store cannot hold that much.
    max_entry_bytes: Option<usize>,
    clock: Clock,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    signing_keys: SigningKeys,
    /// Payloads at least this long are compressed (`None`: off).
    compress_above: Option<usize>,
    compression_level: Option<i32>,
    /// The envelope flags read (tests narrow it, see `read_flags_only`).
    known_flags: u8,
    /// Entries are written in format 3, with their written-at.
    record_written_at: bool,
    /// A near tier of this many bytes in front of a shared store.
    near: Option<u64>,
    near_check: Option<Duration>,
    near_ttl: Option<Duration>,
    /// Whether call spans carry the rendered key (`spans` feature).
    #[cfg(feature = "spans")]
    trace_keys: bool,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheBuilder {
    /// Defaults: 64 MiB memory backend, no namespace, 5 min TTL, 250 ms op
    /// timeout, bincode, 1 MiB max entry, breaker opening after 5
    /// consecutive store failures for 1 s.
    pub fn new() -> Self {
        CacheBuilder {
            backend: None,
            memory: None,
            namespace: String::new(),
            default_ttl: Duration::from_secs(300),
            op_timeout: Duration::from_millis(250),
            codec: AnyCodec::default(),
            max_entry_bytes: None,
            clock: Clock::system(),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(1),
            signing_keys: SigningKeys::default(),
            compress_above: None,
            compression_level: None,
            known_flags: crate::envelope::KNOWN_FLAGS,
            record_written_at: false,
            near: None,
            near_check: None,
            near_ttl: None,
            #[cfg(feature = "spans")]
            trace_keys: false,
        }
    }

    /// Sign every entry with HMAC-SHA256 and reject, on reads from a shared
    /// store, entries without a valid tag (see [`crate::signing`]). The
    /// first key signs; all of them verify, for rotation. At least 16
    /// bytes each; `Cache::from_env` reads them from `CACHE_SIGNING_KEY`
    /// (comma-separated).
    pub fn signing_keys<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.signing_keys = SigningKeys(keys.into_iter().map(|k| k.as_ref().to_vec()).collect());
        self
    }

    /// The store. Any [`Backend`], including an `Arc` of one you keep.
    ///
    /// A [`MemoryBackend`] (or an `Arc` of one) is the in-process store:
    /// entries are answered synchronously and not signature-checked. A
    /// [`DisabledBackend`] switches caching off, as
    /// [`disabled`](Self::disabled) does (every call computes, without
    /// single-flight).
    /// Every other backend is treated as shared with other processes,
    /// however it is implemented (a wrapper around a memory store
    /// included): its entries are signature-checked and its cold misses
    /// take its lock.
    pub fn backend<B: Backend>(mut self, backend: B) -> Self {
        self.backend = Some(store_of(backend));
        self.memory = None;
        self
    }

    /// A bounded in-memory store of `max_bytes`, sharing the builder's
    /// clock and sized to hold entries up to `max_entry_bytes`.
    pub fn memory(mut self, max_bytes: u64) -> Self {
        self.backend = None;
        self.memory = Some(max_bytes);
        self
    }

    /// Store nothing; every call computes.
    pub fn disabled(mut self) -> Self {
        self.backend = Some(Store::Disabled);
        self.memory = None;
        self
    }

    /// Prefix every key with `namespace:`, so several apps or versions can
    /// share a store. Letters, digits and `._-` only.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// TTL for calls that do not set one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Upper bound on every store call; past it the call counts as failed
    /// and the value is computed.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The value codec.
    pub fn codec(mut self, codec: impl Into<AnyCodec>) -> Self {
        self.codec = codec.into();
        self
    }

    /// Encoded entries larger than this are not stored (the value is still
    /// returned) and count in `Stats::oversize`. Default 1 MiB, or what the
    /// store can hold if less ([`Backend::max_value_bytes`]); a limit above
    /// what the store can hold is refused by [`build`](Self::build), so
    /// every entry up to the limit is stored.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// Compress entries whose encoded value (the codec's output) is `bytes`
    /// long or more with zstd (feature `compression`), at zstd's default
    /// level (3; see [`compression_level`](Self::compression_level)). Off by
    /// default; `?compress_above=4096` in a cache URL.
    ///
    /// A compressed payload is kept only when it is smaller; the entry's
    /// envelope records it, the signature (if any) covers the compressed
    /// bytes, and [`max_entry_bytes`](Self::max_entry_bytes) applies to the
    /// stored, compressed size. Every process built with the feature reads
    /// compressed and plain entries alike, whatever its own setting; one
    /// built without it treats compressed entries as misses (and overwrites
    /// them). Reading is bounded: an entry that would decompress to more
    /// than 32 times the reader's `max_entry_bytes` is a decode failure
    /// (counted in `Stats::decode_failures`), never a large allocation.
    ///
    /// On the memory store, hits of `Clone` types are served from the
    /// decoded copy kept beside the entry, so they do not decompress; the
    /// store charges an entry twice its stored size, which for a
    /// compressed entry underestimates that copy. Compression pays where
    /// bytes cross a network or fill a server (Redis, Memcached, SQL).
    ///
    /// ```
    /// let cache = cacheruntime::Cache::builder()
    ///     .compress_above(4096)
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    #[cfg(feature = "compression")]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// The zstd level for [`compress_above`](Self::compress_above), 1 to
    /// 22 (default 3: higher is smaller and slower to write; reading speed
    /// hardly changes). `?compress_level=` in a cache URL.
    #[cfg(feature = "compression")]
    pub fn compression_level(mut self, level: i32) -> Self {
        self.compression_level = Some(level);
        self
    }

    /// Reads only the envelope flags in `flags` (of those this build
    /// knows): a handle behaving as a build without a feature, e.g.
    /// `FLAG_SIGNED` alone for one without `compression`. For tests.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn read_flags_only(mut self, flags: u8) -> Self {
        self.known_flags = flags;
        self
    }

    /// Open the circuit after `threshold` consecutive store failures, for
    /// `cool_down`, then probe with one call.
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// The clock for entry deadlines (tests use [`Clock::manual`]); a store
    /// made by [`memory`](Self::memory) (or the default one) shares it.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Puts a near tier of `max_bytes` in front of the shared store (Redis,
    /// Redis Cluster, PostgreSQL, SQLite, Memcached): an in-process copy of
    /// the entries this handle reads and writes, answered without a round
    /// trip, as the memory store answers (URL: `?near=32MiB`). Off by
    /// default.
    ///
    /// What it may serve: this handle's own writes, deletes and
    /// invalidations reach it before they return; an invalidation or write
    /// made through another handle (another process) is seen within
    /// [`near_check`](Self::near_check) (100 ms by default) of its return,
    /// on a Redis server usually within a millisecond (change notices).
    /// Entries with tags are not kept near. Switch it on for keys read far
    /// more often than they change, where a tenth of a second of staleness
    /// across processes is acceptable; see the crate docs' "Near tier".
    ///
    /// ```
    /// use cacheruntime::Cache;
    ///
    /// // A near tier needs a shared store: the memory store is in-process.
    /// let err = Cache::builder().near(32 << 20).build().unwrap_err();
    /// assert!(err.to_string().contains("shared store"), "{err}");
    /// ```
    pub fn near(mut self, max_bytes: u64) -> Self {
        self.near = Some(max_bytes);
        self
    }

    /// The longest a change made through another handle (another process)
    /// goes unseen by this handle's near tier. Default 100 ms; URL:
    /// `?near_check=250ms`. On a Redis server and on PostgreSQL (change
    /// notices) the near tier serves only within this of its last proof
    /// that it has every notice (Redis: a `PING` answered on its notice
    /// connection; PostgreSQL: a notice sent to itself come back), and
    /// changes usually arrive within a millisecond or two; on Redis
    /// Cluster, SQLite and Memcached (no notices) an entry is served for
    /// this long after the
    /// store vouched for it (the start of the read that found it, or of the
    /// read before the computation whose value this handle wrote), then
    /// read again: a longer check saves round trips on hot keys and serves
    /// their old values for longer.
    pub fn near_check(mut self, check: Duration) -> Self {
        self.near_check = Some(check);
        self
    }

    /// On a store that pushes change notices (PostgreSQL, or one Redis
    /// server: not a Cluster, nor one reached with `tls_pin_sha256`), how long the near
    /// tier keeps an entry at most (default 60 s; URL `?near_ttl=5m`): the
    /// notices end it sooner when it changes, and this bounds what a change
    /// that publishes none (made by hand, or by an older version of this
    /// crate) leaves. (Elsewhere `near_check` is what ends an entry.)
    pub fn near_ttl(mut self, ttl: Duration) -> Self {
        self.near_ttl = Some(ttl);
        self
    }

    /// Whether entries record when they were written (`cachectl inspect`
    /// shows it): envelope format 3, 8 bytes more per entry. Off by
    /// default, because a release before this one reads only format 2 and
    /// takes a format-3 entry for an absent one: while such processes
    /// share the store, their `add` could succeed over a live entry and
    /// their `incr` restart a count. Turn it on once every process sharing
    /// the store runs this release (or a later one); this release reads
    /// both formats either way. URL: `?record_written_at=true`.
    pub fn record_written_at(mut self, on: bool) -> Self {
        self.record_written_at = on;
        self
    }

    /// Whether each call's span (feature `spans`) records the rendered key
    /// in its `key` field. Off by default: keys hold what the arguments
    /// hold (user ids, URLs), and spans often leave the process (an
    /// OpenTelemetry collector); the function's name is always recorded.
    #[cfg(feature = "spans")]
    pub fn trace_keys(mut self, on: bool) -> Self {
        self.trace_keys = on;
        self
    }

    /// Checks the settings and builds the cache. Never connects anywhere.
    pub fn build(self) -> Result<Cache, Error> {
        if let Some(bad) = self
            .namespace
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(Error::Config(format!(
                "namespace {:?} contains {bad:?}; use letters, digits and `._-` only",
                self.namespace
            )));
        }
        if self.default_ttl.is_zero() {
            return Err(Error::Config(
                "default_ttl must be greater than zero".into(),
            ));
        }
        if self.op_timeout.is_zero() {
            return Err(Error::Config("op_timeout must be greater than zero".into()));
        }
        if self.max_entry_bytes == Some(0) {
            return Err(Error::Config(
                "max_entry_bytes must be greater than zero".into(),
            ));
        }
        if self.compress_above == Some(0) {
            return Err(Error::Config(
                "compress_above must be greater than zero (leave it out to not compress)".into(),
            ));
        }
        let level = self
            .compression_level
            .unwrap_or(crate::compress::DEFAULT_LEVEL);
        if !crate::compress::LEVELS.contains(&level) {
            return Err(Error::Config(format!(
                "compression level {level} is out of range: use 1 to 22 (3 is zstd's default)"
            )));
        }
        let signer = Signer::new(&self.signing_keys)?;
        let wanted = self.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES);
        let store = match self.backend {
            Some(store) => store,
            None => Store::Memory(Arc::new(MemoryBackend::sized(
                self.memory.unwrap_or(MemoryBackend::DEFAULT_MAX_BYTES),
                wanted,
                self.clock.clone(),
            ))),
        };
        let (store, near) = near_tier(
            &self.namespace,
            self.near,
            self.near_check,
            self.near_ttl,
            &self.clock,
            store,
            wanted,
        )?;
        let backend = store.backend();
        let max_entry_bytes = match (backend.max_value_bytes(), self.max_entry_bytes) {
            (Some(holds), Some(asked)) if asked > holds => {
                return Err(Error::Config(format!(
                    "max_entry_bytes is {asked} but the {} store holds entries up to {holds} \
                     bytes (a memory store charges an entry about twice its size against one \
                     shard of its bound): raise the store's size or lower max_entry_bytes",
                    backend.name()
                )))
            }
            (Some(holds), None) => wanted.min(holds),
            _ => wanted,
        };
        Ok(Cache::from_engine(Engine::new(Parts {
            store,
            namespace: self.namespace,
            default_ttl: self.default_ttl,
            op_timeout: self.op_timeout,
            codec: self.codec,
            max_entry_bytes,
            clock: self.clock,
            breaker_threshold: self.breaker_threshold,
            breaker_cool_down: self.breaker_cool_down,
            signer,
            compress_above: self.compress_above,
            compression_level: level,
            known_flags: self.known_flags,
            record_written_at: self.record_written_at,
            near,
            #[cfg(feature = "spans")]
            trace_keys: self.trace_keys,
        })))
    }
}

/// The kind of store `backend` is, from its type: the crate's memory store
/// (or an `Arc` of it) is in-process, the disabled store stores nothing,
/// anything else is shared.
fn store_of<B: Backend>(backend: B) -> Store {
    let any: Box<dyn Any> = Box::new(backend);
    let any = match any.downcast::<MemoryBackend>() {
        Ok(memory) => return Store::Memory(Arc::new(*memory)),
        Err(other) => other,
    };
    let any = match any.downcast::<Arc<MemoryBackend>>() {
        Ok(memory) => return Store::Memory(*memory),
        Err(other) => other,
    };
    if any.is::<DisabledBackend>() || any.is::<Arc<DisabledBackend>>() {
        return Store::Disabled;
    }
    match any.downcast::<B>() {
        Ok(backend) => Store::Shared(Arc::new(*backend)),
        Err(_) => unreachable!("a Box<dyn Any> of a B is a B"),
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store kind comes from the store's type: the crate's memory store
    /// (or an `Arc` of it) is in-process, the disabled store switches
    /// caching off as `.disabled()` does, anything else is shared.
    #[test]
    fn the_store_kind_comes_from_the_store_type() {
        let kind = |builder: CacheBuilder| {
            let cache = builder.build().unwrap();
            match &cache.engine.store {
                Store::Memory(_) => "memory",
                Store::Disabled => "disabled",
                Store::Shared(_) => "shared",
            }
        };
        assert_eq!(kind(Cache::builder()), "memory");
        assert_eq!(kind(Cache::builder().memory(1 << 20)), "memory");
        let memory = MemoryBackend::new(1 << 20);
        assert_eq!(kind(Cache::builder().backend(memory)), "memory");
        let shared = Arc::new(MemoryBackend::new(1 << 20));
        assert_eq!(kind(Cache::builder().backend(shared.clone())), "memory");
        // A wrapper is somebody else's store: shared, signature-checked.
        assert_eq!(kind(Cache::builder().backend(Arc::new(shared))), "shared");
        assert_eq!(kind(Cache::builder().backend(DisabledBackend)), "disabled");
        assert_eq!(kind(Cache::builder().disabled()), "disabled");
        assert!(!Cache::builder()
            .backend(DisabledBackend)
            .build()
            .unwrap()
            .is_enabled());
        assert_eq!(
            kind(
                Cache::builder()
                    .disabled()
                    .backend(MemoryBackend::new(1 << 20))
            ),
            "memory",
            "the last store set wins"
        );
    }

    #[test]
    fn max_entry_bytes_above_what_the_store_holds_is_refused_at_build() {
        // A 256 KiB memory store holds entries up to about 127 KiB.
        let err = Cache::builder()
            .backend(MemoryBackend::new(256 << 10))
            .max_entry_bytes(1 << 20)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_entry_bytes"), "{err}");
        assert!(err.contains("raise the store's size"), "{err}");
        // Unset, the limit becomes what the store holds.
        let cache = Cache::builder()
            .backend(MemoryBackend::new(256 << 10))
            .build()
            .unwrap();
        assert!(cache.engine.max_entry_bytes < 128 << 10);
        assert!(cache.engine.max_entry_bytes > 100 << 10);
        // A store made by the builder is sized for the limit, in any order.
        let cache = Cache::builder()
            .max_entry_bytes(4 << 20)
            .memory(64 << 20)
            .build()
            .unwrap();
        assert_eq!(cache.engine.max_entry_bytes, 4 << 20);
        let cache = Cache::builder()
            .memory(64 << 20)
            .max_entry_bytes(4 << 20)
            .build()
            .unwrap();
        assert_eq!(cache.engine.max_entry_bytes, 4 << 20);
    }
}
