//! The storage interface every backend implements.
//!
//! A backend moves opaque bytes: the [`Cache`](crate::Cache) above it owns
//! encoding, envelopes, deadlines, single-flight and fail-open behaviour. The
//! trait is object-safe (methods return boxed futures, as sqlx's `Any`
//! driver does) so a `Cache` can hold any backend, and it grows through
//! default methods so that adding an operation does not break implementors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

#[doc(hidden)]
pub use crate::changes::{ChangeSink, Feed};
pub use crate::inspect::{ScanPage, StoreInfo};
pub use crate::ticket::Ticket;
use crate::Error;

/// A boxed, `Send` future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer to a read.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Lookup {
    /// The stored bytes, if a live entry exists.
    pub value: Option<Bytes>,
    /// The invalidation state seen by this read; pass it to
    /// [`Backend::set`] when writing the value computed after this miss.
    pub ticket: Option<Ticket>,
}

impl Lookup {
    /// A read that found `value` (or nothing) with no ticket.
    pub fn new(value: Option<Bytes>) -> Self {
        Lookup {
            value,
            ticket: None,
        }
    }

    /// Attaches the invalidation state seen by the read.
    pub fn with_ticket(mut self, ticket: Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

/// A store of bytes under string keys, with TTLs and prefix invalidation.
///
/// Keys arrive fully formed (namespace included). Prefixes passed to
/// [`invalidate_prefix`](Backend::invalidate_prefix) are whole
/// `:`-separated segments: either empty (everything) or ending in `:`; the
/// [`Cache`](crate::Cache) rejects any other prefix before it reaches the
/// backend, so every backend gives the call the same meaning.
///
/// The cache treats every backend but its own memory store as shared with
/// other processes: entries read from it are signature-checked when signing
/// keys are set, and (with [`supports_locks`](Backend::supports_locks)) cold
/// misses take its lock.
///
/// # Writing one
/// What makes a backend correct is the [`Ticket`]: a write under the ticket
/// of a read must not become visible if the key was deleted or a prefix of
/// it invalidated after that read. The simplest correct scheme, below, is
/// one counter that every delete and invalidation bumps: a write whose read
/// saw an older count is dropped (coarse: it drops writes of unrelated keys
/// too, which costs misses, never wrong answers).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::{Duration, Instant};
///
/// use bytes::Bytes;
/// use cacheruntime::backend::{Backend, BoxFuture, Lookup, Ticket};
/// use cacheruntime::{Cache, Error, Policy};
///
/// #[derive(Debug, Default)]
/// struct MapBackend(Mutex<Map>);
///
/// #[derive(Debug, Default)]
/// struct Map {
///     entries: HashMap<String, (Bytes, Instant)>,
///     /// Bumped by every delete and invalidation.
///     fence: u64,
/// }
///
/// impl Backend for MapBackend {
///     fn name(&self) -> &'static str {
///         "map"
///     }
///
///     // No `set_if_absent` / `delete_if_equals`: each process computes
///     // its own cold misses.
///     fn supports_locks(&self) -> bool {
///         false
///     }
///
///     fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
///         let map = self.0.lock().unwrap();
///         let value = map.entries.get(key).filter(|(_, until)| *until > Instant::now());
///         let lookup = Lookup::new(value.map(|(bytes, _)| bytes.clone()))
///             .with_ticket(Ticket::seq(map.fence));
///         Box::pin(async move { Ok(lookup) })
///     }
///
///     fn set<'a>(
///         &'a self,
///         key: &'a str,
///         value: Bytes,
///         ttl: Duration,
///         ticket: Option<&'a Ticket>,
///     ) -> BoxFuture<'a, Result<(), Error>> {
///         let mut map = self.0.lock().unwrap();
///         // Read before a delete or invalidation: never visible.
///         let fenced = ticket.and_then(Ticket::as_seq).is_some_and(|seen| seen < map.fence);
///         if !fenced {
///             let until = Instant::now() + ttl;
///             map.entries.insert(key.to_owned(), (value, until));
///         }
///         Box::pin(async { Ok(()) })
///     }
///
///     fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
///         let mut map = self.0.lock().unwrap();
///         map.fence += 1;
///         map.entries.remove(key);
///         Box::pin(async { Ok(()) })
///     }
///
///     fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
///         let mut map = self.0.lock().unwrap();
///         map.fence += 1;
///         map.entries.retain(|key, _| !key.starts_with(prefix));
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let cache = Cache::builder().backend(MapBackend::default()).build()?;
/// let policy = Policy::new().ttl(Duration::from_secs(60));
/// let v: u32 = cache.get_or_compute("answer:1", &policy, || async { 42 }).await;
/// assert_eq!(v, 42);
/// assert_eq!(cache.get::<u32>("answer:1").await?, Some(42));
/// cache.invalidate_prefix("answer:").await?;
/// assert_eq!(cache.get::<u32>("answer:1").await?, None);
/// # Ok(()) }
/// ```
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Short name used in errors, logs and stats (`memory`, `redis`, ...).
    fn name(&self) -> &'static str;

    /// The largest value (in bytes) the store can hold, if it has a limit
    /// below what the cache might hand it: the cache refuses, at build, a
    /// `max_entry_bytes` above it rather than drop such values in silence.
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }

    /// The longest TTL the store keeps an entry for, if it caps them: the
    /// cache then seals entries with deadlines within it, so what it
    /// reports of an entry (`Cache::ttl`) is what the store keeps. Default
    /// `None`: TTLs are kept as given.
    fn max_ttl(&self) -> Option<Duration> {
        None
    }

    /// Whether the backend isolates failures itself, finer than the whole
    /// store: it keeps its own circuit breakers (Memcached: one per server)
    /// and fails fast, with [`Error::CircuitOpen`], only the calls that
    /// need the part of the store that is down.
    ///
    /// When true, the cache does not count this backend's failures towards
    /// its own whole-store breaker, so one dead server of a pool does not
    /// switch caching off for the keys the other servers hold. Default
    /// `false`: the cache's breaker covers the store.
    fn isolates_failures(&self) -> bool {
        false
    }

    /// Whether [`set_if_absent`](Backend::set_if_absent) and
    /// [`delete_if_equals`](Backend::delete_if_equals) are implemented, so
    /// that cold misses across processes take the store's lock (one
    /// computes, the others wait for its value) and a background refresh
    /// runs once across processes. With `false` the cache never calls them
    /// and each process computes its own misses and refreshes.
    ///
    /// Required, with no default: a wrapper that forwards the lock methods
    /// of the store it wraps must forward this too, or its locks would be
    /// off without a word.
    fn supports_locks(&self) -> bool;

    /// Whether [`get_or_lock`](Backend::get_or_lock),
    /// [`lock_and_get`](Backend::lock_and_get) and
    /// [`set_and_unlock`](Backend::set_and_unlock) are each one round trip
    /// (the backend overrides all three, and its `lock_and_get` counts a
    /// lock already held with the token as taken). Only then does the cache
    /// use them: cold misses take the lock in their read and release it in
    /// their write. Otherwise (the default) it locks, looks and releases in
    /// calls of their own, the release in the background.
    fn combines_locks(&self) -> bool {
        false
    }

    /// Whether the store publishes a notice of every change (the Redis
    /// store: Pub/Sub; PostgreSQL: `LISTEN`/`NOTIFY`), so that a near tier in front of it can follow them
    /// (`follow_changes`) instead of polling. The crate's own stores only.
    #[doc(hidden)]
    fn pushes_changes(&self) -> bool {
        false
    }

    /// Starts following the store's change notices for a near tier; false
    /// if it cannot now (the near tier then serves nothing).
    #[doc(hidden)]
    fn follow_changes(&self, _feed: Feed) -> bool {
        false
    }

    /// Reads the entry under `key`, ignoring expired or invalidated ones.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>>;

    /// Stores `value` under `key` for `ttl`. `ticket` is the one returned by
    /// the read that missed, if any (see [`Ticket`]).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Removes the entry under `key`, if any, including an entry being
    /// written concurrently under an older [`Ticket`]: after this returns, a
    /// write under a ticket read before it must never become visible.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Makes every entry whose key starts with `prefix` invisible, including
    /// entries being written concurrently under an older [`Ticket`]. `prefix`
    /// is empty or ends with `:`.
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Atomically stores `value` under `key` only if no live entry is there;
    /// returns whether it did. The building block of cross-process locks.
    fn set_if_absent<'a>(
        &'a self,
        _key: &'a str,
        _value: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        unsupported(self.name(), "set_if_absent")
    }

    /// Reads several keys: one [`Lookup`] per key, in order, each what
    /// [`get`](Backend::get) would answer for it. The default reads them
    /// one after the other; a store that can read them in one round trip
    /// (Redis `MGET`, one SQL statement) overrides it.
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Lookup>, Error>> {
        Box::pin(async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.get(key).await?);
            }
            Ok(found)
        })
    }

    /// Stores each `(key, value)` for `ttl`, as [`set`](Backend::set)
    /// without a ticket does. The default writes them one after the other.
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for (key, value) in entries {
                self.set(key, value.clone(), ttl, None).await?;
            }
            Ok(())
        })
    }

    /// Deletes each key, as [`delete`](Backend::delete) does (fencing
    /// writes under older tickets). The default deletes them one after the
    /// other.
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for key in keys {
                self.delete(key).await?;
            }
            Ok(())
        })
    }

    /// Atomically replaces the entry under `key` with `value` (for `ttl`)
    /// only if [`get`](Backend::get) would still answer `expected` for it:
    /// the bytes a read returned, or `None` when the read found no live
    /// entry (an absent, expired, invalidated or deleted one alike). With
    /// a `ticket` (the one that read returned), it also swaps nothing if
    /// an invalidation or a delete reached the key since that read, as
    /// [`set`](Backend::set) would hide such a write. Returns whether it
    /// swapped.
    ///
    /// What `Cache::add`, `touch`, `incr` and `decr` are built on: the cache
    /// reads, decides from the entry's envelope what to write, and swaps,
    /// reading again when another writer came first. The default says the
    /// backend has no such operation, which those methods return.
    fn compare_and_set<'a>(
        &'a self,
        _key: &'a str,
        _expected: Option<&'a [u8]>,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        unsupported(
            self.name(),
            "compare_and_set (needed by add, touch, incr and decr)",
        )
    }

    /// Atomically removes `key` only if it holds exactly `value`; returns
    /// whether it did. Releases a lock taken with
    /// [`set_if_absent`](Backend::set_if_absent) without touching a lock
    /// another holder took after ours expired.
    fn delete_if_equals<'a>(
        &'a self,
        _key: &'a str,
        _value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        unsupported(self.name(), "delete_if_equals")
    }

    /// Takes the lock for `key` as [`set_if_absent`](Backend::set_if_absent)
    /// does, and reads the entry as [`get`](Backend::get) does; returns
    /// whether the lock was taken, and the read, or `None` if the read
    /// failed after the lock was taken (the caller holds it and must release
    /// it).
    ///
    /// A cold miss takes the lock and must then look at the entry, since the
    /// holder before it may have stored the value between its miss and its
    /// lock; a caller waiting for a lock wants the value as soon as it is
    /// there. Both are one question, which a store that
    /// [`combines_locks`](Backend::combines_locks) answers in one round
    /// trip (the Redis store: one script). The cache calls it only then;
    /// the default says the backend has no such operation.
    ///
    /// A store that takes locks in [`get_or_lock`](Backend::get_or_lock)
    /// must count a lock already held with `token` as taken here too: the
    /// token is one per cache handle, and the caller that leads a key's
    /// computation need not be the one whose read took its lock.
    fn lock_and_get<'a>(
        &'a self,
        _key: &'a str,
        _token: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<(bool, Option<Lookup>), Error>> {
        unsupported(self.name(), "lock_and_get")
    }

    /// Reads `key` as [`get`](Backend::get) does and, when no live entry is
    /// there, takes the lock for `key` with `token` as
    /// [`set_if_absent`](Backend::set_if_absent) does, in the same round
    /// trip; `true` when the lock is held with `token` after the call (a
    /// lock already held with it counts).
    ///
    /// So that a cold miss costs two round trips: this, then
    /// [`set_and_unlock`](Backend::set_and_unlock). The cache calls it only
    /// when the backend [`combines_locks`](Backend::combines_locks); the
    /// default says the backend has no such operation.
    fn get_or_lock<'a>(
        &'a self,
        _key: &'a str,
        _token: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<(Lookup, bool), Error>> {
        unsupported(self.name(), "get_or_lock")
    }

    /// Stores `value` as [`set`](Backend::set) does, then releases the lock
    /// `token` holds on `key` as [`delete_if_equals`](Backend::delete_if_equals)
    /// does. `Err` if the write failed (the lock may still be held);
    /// otherwise whether the release is done (`false`: the store failed to
    /// answer it, and the caller retries). A lock held by another token is
    /// left alone, and counts as released.
    ///
    /// The end of a cold miss that held the lock, on a store that
    /// [`combines_locks`](Backend::combines_locks) (the Redis store: one
    /// script); elsewhere the cache writes, then releases in the
    /// background. The default says the backend has no such operation.
    fn set_and_unlock<'a>(
        &'a self,
        _key: &'a str,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&'a Ticket>,
        _token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        unsupported(self.name(), "set_and_unlock")
    }

    /// One page of the keys stored under `prefix` (any text: not only
    /// whole segments), from `cursor` (`None` for the first page, then
    /// each page's [`next`](ScanPage::next)). For operators
    /// ([`Cache::keys`](crate::Cache::keys), `cachectl keys`): the cache
    /// itself never lists keys. A page may hold keys of expired or
    /// invalidated entries and of the store's own records; `Cache::keys`
    /// keeps the live entries. By default: unsupported.
    fn scan<'a>(
        &'a self,
        _prefix: &'a str,
        _cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ScanPage, Error>> {
        unsupported(self.name(), "scan")
    }

    /// What the store is, for operators ([`Cache::store_info`](crate::Cache::store_info),
    /// `cachectl info`): its version, memory, eviction, and the warnings
    /// the cache logs about its configuration. By default only its name.
    fn describe(&self) -> BoxFuture<'_, Result<StoreInfo, Error>> {
        Box::pin(std::future::ready(Ok(StoreInfo::new(self.name()))))
    }
}

/// The answer of an operation `backend` does not have.
pub(crate) fn unsupported<'a, T: Send + 'a>(
    backend: &'static str,
    operation: &'static str,
) -> BoxFuture<'a, Result<T, Error>> {
    Box::pin(std::future::ready(Err(Error::Unsupported {
        backend,
        operation,
    })))
}

/// A shared backend is a backend, so tests and apps can keep a handle on the
/// store a [`Cache`](crate::Cache) uses.
impl<B: Backend> Backend for std::sync::Arc<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn max_ttl(&self) -> Option<Duration> {
        (**self).max_ttl()
    }
    fn max_value_bytes(&self) -> Option<usize> {
        (**self).max_value_bytes()
    }
    fn isolates_failures(&self) -> bool {
        (**self).isolates_failures()
    }
    fn supports_locks(&self) -> bool {
        (**self).supports_locks()
    }
    fn combines_locks(&self) -> bool {
        (**self).combines_locks()
    }
    fn pushes_changes(&self) -> bool {
        (**self).pushes_changes()
    }
    fn follow_changes(&self, feed: Feed) -> bool {
        (**self).follow_changes(feed)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        (**self).get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).set(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        (**self).delete(key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        (**self).invalidate_prefix(prefix)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).set_if_absent(key, value, ttl)
    }
    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).delete_if_equals(key, value)
    }
    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).compare_and_set(key, expected, value, ttl, ticket)
    }
    fn lock_and_get<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(bool, Option<Lookup>), Error>> {
        (**self).lock_and_get(key, token, ttl)
    }
    fn set_and_unlock<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).set_and_unlock(key, value, ttl, ticket, token)
    }
    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(Lookup, bool), Error>> {
        (**self).get_or_lock(key, token, ttl)
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Lookup>, Error>> {
        (**self).get_many(keys)
    }
    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).set_many(entries, ttl)
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<(), Error>> {
        (**self).delete_many(keys)
    }
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ScanPage, Error>> {
        (**self).scan(prefix, cursor)
    }
    fn describe(&self) -> BoxFuture<'_, Result<StoreInfo, Error>> {
        (**self).describe()
    }
}
