//! The Django-style low-level API on [`Cache`]: `contains`, `ttl`, `touch`,
//! `add` and `clear` (this file); the batched ops in `many.rs`; counters in
//! `counter.rs`.
//!
//! One meaning on every store: an entry hidden by an invalidation or a
//! delete, expired, or not signed with a current key is absent to every op
//! here, as it is to [`Cache::get`]. The ops that write from what they read
//! (`touch`, `add`) do it with a compare-and-set against what they read
//! (`swap.rs`), so they never bring back an entry an invalidation or delete
//! hid, and two concurrent `add`s of one key, from any processes, never
//! both store.

use std::time::Duration;

use serde::Serialize;

use crate::cache::Cache;
use crate::engine::Answer;
use crate::entry::{Accept, UNTYPED};
use crate::swap::Step;
use crate::{key, Error};

impl Cache {
    /// Whether a live entry is under `key`, whatever its type: what
    /// `get::<T>` of the right `T` would find. False for a key never set,
    /// expired, deleted, or under an invalidated prefix. One read of the
    /// store (the one `get` makes: one round trip on every store), counted
    /// as a hit or a miss like `get`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// cache.set("user:1:name", "ada", Duration::from_secs(60)).await?;
    /// assert!(cache.contains("user:1:name").await?);
    /// cache.invalidate_prefix("user:1:").await?;
    /// assert!(!cache.contains("user:1:name").await?);
    /// # Ok(()) }
    /// ```
    pub async fn contains(&self, key: &str) -> Result<bool, Error> {
        Ok(self.remaining("contains", key).await?.is_some())
    }

    /// The time `key`'s live entry has left before it expires (its TTL
    /// from when it was written or last touched), or `None` when there is
    /// no live entry (never set, expired, deleted, invalidated). Read from
    /// the entry's envelope by this cache's clock, in milliseconds; an
    /// entry with a `stale` window is served as stale past this by
    /// `get_or_refresh`. One read (one round trip), counted as `contains`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// cache.set("otp:42", &123456u32, Duration::from_secs(300)).await?;
    /// let left = cache.ttl("otp:42").await?.unwrap();
    /// assert!(left <= Duration::from_secs(300) && left > Duration::from_secs(290));
    /// assert_eq!(cache.ttl("otp:43").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, Error> {
        self.remaining("ttl", key).await
    }

    /// Gives `key`'s live entry a new TTL, from now, leaving its value (and
    /// its stale window) as they are; returns whether there was one. An
    /// absent, expired, deleted or invalidated entry stays absent (`false`;
    /// nothing is written, so `touch` never brings an entry back). Two
    /// round trips (a read, then a compare-and-set against it; Memcached:
    /// three), more if another writer changes the key between them.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// cache.set("session:9", "alice", Duration::from_secs(60)).await?;
    /// // The user is active: keep the session another half hour.
    /// assert!(cache.touch("session:9", Duration::from_secs(1800)).await?);
    /// assert!(!cache.touch("session:10", Duration::from_secs(1800)).await?);
    /// # Ok(()) }
    /// ```
    pub async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, Error> {
        key::check_key(key)?;
        if !self.engine.enabled() {
            return Ok(false);
        }
        let full = self.engine.full_key(key);
        let engine = &self.engine;
        engine
            .swap("touch", &full, |seen| {
                Ok(match seen.live(engine, &full, Accept::Any) {
                    None => Step::Done(false),
                    Some((header, payload)) => {
                        let section = seen.section();
                        let (bytes, physical) =
                            engine.sealer.reseal(&full, &header, section, payload, ttl);
                        Step::Write(bytes, physical, true)
                    }
                })
            })
            .await
    }

    /// Stores `value` under `key` for `ttl` only if no live entry is there
    /// (of any type); returns whether it stored. An expired, deleted or
    /// invalidated entry is not there: `add` stores over it.
    ///
    /// Atomic across processes: of concurrent `add`s of one key, from any
    /// handles on the store, exactly one returns `true` (a compare-and-set
    /// against the read that found the key free: a Lua script on Redis, one
    /// conditional upsert on SQL, `add`/CAS on Memcached). Two round trips
    /// (Memcached: three), more if another writer changes the key between
    /// them. What it stores reads back as [`set`](Self::set)'s does.
    ///
    /// On [`Cache::disabled`] it returns `true` and stores nothing, as
    /// `set` returns `Ok` there: every call is as without a cache.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// let ttl = Duration::from_secs(600);
    /// // The first sender of this idempotency key wins; a retry does not.
    /// assert!(cache.add("idem:7f3a", "order-1", ttl).await?);
    /// assert!(!cache.add("idem:7f3a", "order-2", ttl).await?);
    /// assert_eq!(cache.get::<String>("idem:7f3a").await?.as_deref(), Some("order-1"));
    /// # Ok(()) }
    /// ```
    pub async fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<bool, Error> {
        key::check_key(key)?;
        if !self.engine.enabled() {
            return Ok(true);
        }
        let full = self.engine.full_key(key);
        let engine = &self.engine;
        let bytes = engine.sealer.seal_with(
            &full,
            value,
            crate::entry::Windows::ttl(ttl),
            UNTYPED,
            0,
            None,
        )?;
        engine
            .swap("add", &full, |seen| {
                Ok(match seen.live(engine, &full, Accept::Any) {
                    Some(_) => Step::Done(false),
                    None => Step::Write(bytes.clone(), ttl, true),
                })
            })
            .await
    }

    /// Removes everything this cache stored: every entry and counter under
    /// its namespace, in O(1) (one invalidation of the namespace, as
    /// `invalidate_prefix("")`: a generation bump on Redis and Memcached, a
    /// record on SQL and memory), fencing computations in flight like it.
    /// Other namespaces on the same store are untouched.
    ///
    /// A cache with no namespace on a shared store (Redis, SQL, Memcached,
    /// a custom backend) is refused with [`Error::NamespaceRequired`]
    /// rather than reaching other applications' entries: give it a
    /// namespace. The memory store belongs to the process: without a
    /// namespace, `clear` empties it (every handle sharing it included). On
    /// [`Cache::disabled`] it does nothing.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::builder().namespace("shop").build()?;
    /// cache.set("cart:1", &3u32, Duration::from_secs(60)).await?;
    /// cache.incr("views:home", 1, Duration::from_secs(60)).await?;
    /// cache.clear().await?;
    /// assert!(!cache.contains("cart:1").await?);
    /// assert_eq!(cache.incr("views:home", 1, Duration::from_secs(60)).await?, 1);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<(), Error> {
        let engine = &self.engine;
        if engine.store.is_shared() && engine.namespace().is_empty() {
            return Err(Error::NamespaceRequired {
                backend: engine.store.backend().name(),
                operation: "clear",
            });
        }
        self.invalidate_prefix("").await
    }

    /// What `contains` and `ttl` share: one counted read of the envelope.
    async fn remaining(&self, op: &'static str, key: &str) -> Result<Option<Duration>, Error> {
        key::check_key(key)?;
        let engine = &self.engine;
        if !engine.enabled() {
            engine.tally(None, Answer::Miss);
            return Ok(None);
        }
        let full = engine.full_key(key);
        let seen = match engine.look(op, &full).await {
            Ok(seen) => seen,
            Err(e) => {
                engine.tally(None, Answer::Miss);
                engine.failed(op, &e);
                return Err(e);
            }
        };
        let now = engine.sealer.clock.now_ms();
        let left = seen
            .live(engine, &full, Accept::Any)
            .map(|(header, _)| Duration::from_millis(header.fresh_until_ms.saturating_sub(now)));
        engine.tally(
            None,
            if left.is_some() {
                Answer::Hit
            } else {
                Answer::Miss
            },
        );
        Ok(left)
    }
}
