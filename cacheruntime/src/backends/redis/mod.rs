//! Redis backend (feature `redis`): standalone, TLS, ACL users and Cluster.
//!
//! # Prefix invalidation in O(1)
//! No `KEYS`, no `SCAN`. Every `:`-prefix of a key has a generation counter,
//! and so has the key itself, and every entry records the generations of
//! all of them as its read saw them, in front of its bytes. A read is one
//! plain `MGET` of the entry and those counters (one round trip, no Lua, so
//! a hit costs the server about what a `GET` does); the entry is served only
//! if every counter is there and holds what it recorded.
//! `invalidate_prefix("author:42:")` is one `INCR`, and `delete` unlinks the
//! entry and bumps the key's own counter, in one script: from then on every
//! entry under the prefix (or of the key) records an old generation and
//! reads as a miss until it is rewritten or its TTL removes it. Writes go
//! through a small Lua script that stores the entry only if the generations
//! are still the ones its read saw (the [`Ticket`]), so a value computed
//! before an invalidation or delete is never stored as current, whatever
//! the interleaving of writers.
//!
//! # Counters that disappear
//! A counter may be evicted (`allkeys-lru`), expire, or be deleted by hand.
//! A missing counter is never read as a value: the entry is a miss, and the
//! read creates the counter anew (`SET NX`) from the server's clock
//! (microseconds times 1,000), above any value an older counter of that name
//! reached, before its computation starts. Writes refuse a missing counter.
//! So a lost counter can only hide entries, never bring an invalidated one
//! back. A counter lives at least as long as the entries that record it
//! (every write extends it to its entry's TTL), and an hour otherwise, so
//! the counters of keys no longer cached do not pile up. Entry TTLs are
//! capped at `max_ttl` (30 days by default).
//!
//! # Cluster
//! Keys carry a hash tag of their first segment (`{author}`), so an entry and
//! the generations of all its prefixes sit in one slot and each script stays
//! one round trip. With a cache namespace the first segment is the
//! namespace, so the whole namespace lives in one slot; without one, keys
//! spread by their first segment. A first segment that cannot be a tag
//! (empty, as in `:posts`, or holding `{` or `}`) is replaced in the tag by
//! `~` and a hash of it, in a key form no other key can take.
//!
//! The empty prefix ("everything") is only accepted with a cache namespace,
//! where it is the namespace's own prefix and has a counter like any other.
//! Without a namespace it would need a counter read by every call (one more
//! key per read, and on Cluster a key in no common slot), so it is rejected
//! with an error that says to set a namespace.
//!
//! # Connections
//! Building the backend does no I/O: the first call connects (bounded by the
//! cache's op timeout like every call), so an application starts and serves
//! while Redis is down. Standalone connections go through redis-rs's
//! `ConnectionManager`, which reconnects in the background; cluster
//! connections are created on first use and retried on the next call after a
//! failure. After the first successful connection the backend reads
//! `maxmemory` and `maxmemory-policy` (with `CONFIG GET`, or from `INFO
//! memory` where managed services block `CONFIG`) and warns when the store
//! cannot evict, or when it could read neither.
//!
//! # Self-signed certificates
//! A managed Redis whose certificate is self-signed, for a name other than
//! the one connected to (Heroku's), is reached by pinning the certificate:
//! [`RedisConfig::tls_pin_sha256`] (`?tls_pin_sha256=` with the SHA-256 of
//! the leaf certificate's DER as hex, any case, `:` between bytes or not).
//! The pin replaces the CA and name checks; the handshake signature is
//! still verified against the pinned certificate's key, so only its holder
//! gets through. [`RedisConfig::tls_insecure`] (`?tls_insecure=true`)
//! accepts any certificate and logs a warning at every connection that it
//! can be intercepted and that the pin is the fix. redis-rs takes no
//! verifier of ours, so these connections are made here (tokio-rustls),
//! handed to redis-rs's multiplexed connection, and made again on the next
//! call after one closes. Both are for one `rediss://` server: a Cluster
//! redirects to nodes this cannot reach the same way, and is refused.
//!
//! # Files
//! `config.rs` ([`RedisConfig`] and its URL forms), `connection.rs` (the
//! clients, made on first use), `pinned.rs` (TLS with a pinned certificate
//! or none checked), `keys.rs` (the names things are stored
//! under, and their hash tags), `scripts.rs` (the Lua), `server_config.rs`
//! (what is checked of the server's own settings); the calls are here.

mod cluster_push;
mod config;
mod connection;
mod keys;
mod locks;
mod many;
mod pinned;
mod push;
mod scan;
mod scripts;
mod server_config;

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use redis::RedisError;

pub use self::config::RedisConfig;
use self::connection::{AnyConn, Conn};
use self::keys::{physical, Layout};
use self::scripts::{BUMP, DELETE, ENSURE, SWAP, WRITE};
use crate::backend::{Lookup, ScanPage, StoreInfo, Ticket};
use crate::backends::generations::{generations, unwrap_entry, Kind};
use crate::backends::Store;
use crate::secrets::{redact, Secrets};
use crate::Error;

const NAME: &str = "redis";

/// A Redis (or Redis Cluster) store; see the module docs.
pub struct RedisBackend {
    conn: Conn,
    label: String,
    secrets: Secrets,
    cluster: bool,
    max_ttl_ms: u64,
    checked_config: AtomicBool,
    /// Whether every node is reached over TLS (`rediss://`), and whether
    /// without checking certificates.
    tls: bool,
    tls_insecure: bool,
    /// The first node's host: where a one-master Cluster that lists itself
    /// without a host is (`scan.rs`).
    seed_host: Option<String>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.label)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Prepares the backend without connecting: a down server does not stop
    /// the application from starting.
    pub fn new(config: RedisConfig) -> Result<Self, Error> {
        if config.nodes.is_empty() || config.nodes.iter().any(|n| n.is_empty()) {
            return Err(Error::Config(
                "Redis needs at least one node URL, e.g. `redis://127.0.0.1:6379`".into(),
            ));
        }
        let label = config
            .nodes
            .iter()
            .map(|n| redact(n))
            .collect::<Vec<_>>()
            .join(",");
        let secrets = Secrets::of(&config.nodes);
        let conn = Conn::new(&config, &label, |e: RedisError| Error::InvalidUrl {
            url: label.clone(),
            message: secrets.scrub(&e.to_string()),
        })?;
        Ok(RedisBackend {
            conn,
            label,
            secrets,
            cluster: config.cluster,
            // Redis refuses expiry times that overflow its clock: cap far below.
            max_ttl_ms: config.max_ttl.as_millis().clamp(1, i64::MAX as u128 / 4) as u64,
            checked_config: AtomicBool::new(false),
            tls: config.nodes.iter().all(|n| n.starts_with("rediss://")),
            tls_insecure: config.tls_insecure,
            seed_host: config.nodes.first().and_then(|node| {
                let url = url::Url::parse(node).ok()?;
                Some(url.host_str()?.trim_matches(['[', ']']).to_owned())
            }),
        })
    }

    /// Whether this talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    async fn connection(&self) -> Result<AnyConn, Error> {
        self.conn.get().await.map_err(|e| self.error(e))
    }

    fn error(&self, e: RedisError) -> Error {
        let message = match e.kind() {
            redis::ErrorKind::AuthenticationFailed => format!(
                "authentication failed: check the user name and password in the cache URL ({})",
                self.secrets.scrub(&e.to_string())
            ),
            _ => self.secrets.scrub(&e.to_string()),
        };
        Error::backend(NAME, message)
    }

    /// How long a counter no entry records lives: an hour (or `max_ttl`
    /// if shorter). Writes extend a counter to the life of the entries that
    /// record it, so counters of keys long gone do not pile up, and a
    /// computation longer than this finds its counter gone and writes
    /// nothing.
    fn idle_ms(&self) -> u64 {
        self.max_ttl_ms.min(3_600_000)
    }

    fn ttl_ms(&self, ttl: Duration) -> u64 {
        (ttl.as_millis().min(u128::from(u64::MAX)) as u64).clamp(1, self.max_ttl_ms)
    }

    /// Entry base key and generation keys for `key`.
    fn layout(&self, key: &str) -> Layout {
        Layout::of(key)
    }

    fn validate_key(&self, key: &str) -> Result<(), Error> {
        if key.len() > 64 * 1024 {
            return Err(Error::InvalidKey {
                key: key.chars().take(64).collect(),
                reason: "Redis keys over 64 KiB are refused; shorten the key template",
            });
        }
        Ok(())
    }

    async fn run_get(&self, key: &str) -> Result<Lookup, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut mget = redis::cmd("MGET");
        mget.arg(layout.entry());
        for c in layout.counters() {
            mget.arg(c);
        }
        let found: Vec<Option<Vec<u8>>> = mget
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.check_config_once(&conn);
        // Hits carry the ticket too: a background refresh of a stale entry
        // writes under the generations its read saw.
        if let Some(lookup) = lookup(found, &layout, "MGET")? {
            return Ok(lookup);
        }
        // A counter is missing: nothing recorded under it can be served, and
        // the computation this miss starts needs counters to write under.
        let mut ensure = ENSURE.prepare_invoke();
        for c in layout.counters() {
            ensure.key(c);
        }
        let current: Vec<Option<Vec<u8>>> = ensure
            .arg(self.idle_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        match generations(&current) {
            Some(current) => Ok(Lookup::new(None).with_ticket(Ticket::tag(current))),
            // Gone again at once (a store evicting everything): no ticket, so
            // the caller computes without writing.
            None => Err(Error::backend(NAME, VANISHED)),
        }
    }

    async fn run_write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        expected: &str,
    ) -> Result<(), Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut call = WRITE.key(layout.entry());
        for c in layout.counters() {
            call.key(c);
        }
        let _: i64 = call
            .arg(value)
            .arg(self.ttl_ms(ttl))
            .arg(expected)
            .arg(self.key_notice(key))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_delete(&self, key: &str) -> Result<(), Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let _: i64 = DELETE
            .key(layout.entry())
            .key(layout.own_counter())
            .arg(self.idle_ms())
            .arg(self.key_notice(key))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_invalidate(&self, prefix: &str) -> Result<(), Error> {
        // Whole segments only, as the cache checks (a store used directly
        // must not bump a counter no read consults).
        crate::key::check_prefix(prefix)?;
        if prefix.is_empty() {
            return Err(Error::InvalidPrefix {
                prefix: prefix.to_owned(),
                reason: "on Redis, invalidating everything needs a namespace: give the cache \
                         one (`?namespace=app` or `.namespace(\"app\")`) and invalidate \"\" \
                         within it",
            });
        }
        let mut conn = self.connection().await?;
        let _: i64 = BUMP
            .key(physical(Kind::Prefix, prefix))
            .arg(self.idle_ms())
            .arg(self.prefix_notice(prefix))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Duration,
        seen: &str,
    ) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let layout = self.layout(key);
        let mut call = SWAP.key(layout.entry());
        for c in layout.counters() {
            call.key(c);
        }
        let swapped: i64 = call
            .arg(value)
            .arg(self.ttl_ms(ttl))
            .arg(seen)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(self.key_notice(key))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(swapped == 1)
    }
}

/// What a read whose counters were all just created or found says.
const VANISHED: &str =
    "generation counters vanished as they were created (is the server out of memory?)";

/// The entry and counters a read fetched (`what` did), as the read's
/// answer: `None` when a counter is missing (nothing can be served, and
/// there is nothing to write under).
fn lookup(
    mut found: Vec<Option<Vec<u8>>>,
    layout: &Layout,
    what: &str,
) -> Result<Option<Lookup>, Error> {
    if found.len() != layout.counters.len() + 1 {
        return Err(Error::backend(
            NAME,
            format!("{what} answered with the wrong number of values"),
        ));
    }
    let stored = found[0].take();
    Ok(generations(&found[1..]).map(|current| {
        let value = stored.and_then(|stored| unwrap_entry(stored, &found[1..]));
        Lookup::new(value).with_ticket(Ticket::tag(current))
    }))
}

impl Store for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send {
        self.scan_page(prefix, cursor)
    }

    fn describe(&self) -> impl Future<Output = Result<StoreInfo, Error>> + Send {
        self.describe_server()
    }

    fn max_ttl(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.max_ttl_ms))
    }

    fn get(&self, key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send {
        self.run_get(key)
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<(), Error> {
        // A generation string never contains `*`: it means "current".
        let expected = ticket.and_then(Ticket::as_tag).unwrap_or("*");
        self.run_write(key, &value, ttl, expected).await
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_delete(key)
    }

    fn invalidate_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_invalidate(prefix)
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_set_if_absent(key, value, ttl)
    }

    fn delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.run_delete_if_equals(key, value)
    }

    fn combines_locks(&self) -> bool {
        true
    }

    fn pushes_changes(&self) -> bool {
        self.conn.notices().is_some()
    }

    fn follow_changes(&self, feed: crate::backend::Feed) -> bool {
        self.follow(feed)
    }

    fn get_or_lock(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(Lookup, bool), Error>> + Send {
        self.run_get_or_lock(key, token, ttl)
    }

    fn lock_and_get(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(bool, Option<Lookup>), Error>> + Send {
        self.run_lock_get(key, token, ttl)
    }

    async fn set_and_unlock(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        token: &[u8],
    ) -> Result<bool, Error> {
        let expected = ticket.and_then(Ticket::as_tag).unwrap_or("*");
        self.run_write_unlock(key, &value, ttl, expected, token)
            .await
    }

    fn get_many(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<Lookup>, Error>> + Send {
        self.run_get_many(keys)
    }

    fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_set_many(entries, ttl)
    }

    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<(), Error>> + Send {
        self.run_delete_many(keys)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<bool, Error> {
        let seen = ticket.and_then(Ticket::as_tag).unwrap_or("*");
        self.run_swap(key, expected, &value, ttl, seen).await
    }
}
