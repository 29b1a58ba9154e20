//! Redis backend (feature `redis`): standalone, TLS, ACL users and Cluster.
//!
//! # Prefix invalidation in O(1)
//! No `KEYS`, no `SCAN`. Every prefix that has been invalidated has a
//! generation counter, and every entry records the generations of all its
//! `:`-prefixes as its miss saw them (`0.0.3`), in front of its bytes. A
//! read is one plain `MGET` of the entry and those counters (one round trip,
//! no Lua, so a hit costs the server about what a `GET` does); the entry is
//! served only if the generations it records are the current ones.
//! `invalidate_prefix("author:42:")` is one `INCR`: from then on every entry
//! under the prefix records an old generation and reads as a miss until it
//! is rewritten or its TTL removes it. Writes go through a small Lua script
//! that stores the entry only if the generations are still the ones its miss
//! saw (the [`Ticket`]), so a value computed before an invalidation is
//! never stored as current, whatever the interleaving of writers.
//!
//! Generation counters expire after `max_ttl` (30 days by default, renewed
//! by every invalidation) and entry TTLs are capped to it, so a counter that
//! lapses back to 0 can only hide entries, never revive one.
//!
//! # Cluster
//! Keys carry a hash tag of their first segment (`{author}`), so an entry and
//! the generations of all its prefixes sit in one slot and the read script
//! stays one round trip. With a cache namespace the first segment is the
//! namespace, so the whole namespace lives in one slot; without one, keys
//! spread by their first segment.
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
//! `maxmemory` and `maxmemory-policy` (where `CONFIG GET` is allowed) and
//! warns when the store cannot evict.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Script, Value};

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::backends::generations::{generations, unwrap_entry};
use crate::url::{redact, Secrets};
use crate::Error;

const NAME: &str = "redis";

/// How to reach Redis. Secrets in the URLs never appear in `Debug` output or
/// errors.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::backends::redis::RedisConfig;
///
/// let single = RedisConfig::new("rediss://cache:secret@redis.internal:6380/0")
///     .ca_file("/etc/ssl/redis-ca.pem")
///     .client_cert("/etc/ssl/app.pem", "/etc/ssl/app.key");
/// let cluster = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .max_ttl(Duration::from_secs(7 * 86_400));
/// # let _ = (single, cluster);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    nodes: Vec<String>,
    cluster: bool,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    max_ttl: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// One server: `redis://[user:password@]host[:port][/db]` or `rediss://...`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            nodes: vec![url.into()],
            cluster: false,
            ca_file: None,
            client_cert: None,
            max_ttl: Duration::from_secs(30 * 86_400),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A Redis Cluster, from one or more of its nodes (same URL forms).
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        RedisConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::new(String::new())
        }
    }

    /// Verify the server's certificate against this CA (PEM) instead of the
    /// system's roots. For `rediss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Longest life of an entry and of a generation counter (default 30
    /// days); longer TTLs are capped to it.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

enum Conn {
    Single(Box<SingleConn>),
    Cluster(Box<ClusterConn>),
}

/// The manager is made on first use: redis-rs spawns its reconnect task
/// then, so building the backend needs no runtime.
struct SingleConn {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: std::sync::OnceLock<ConnectionManager>,
}

struct ClusterConn {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

/// A connection of either kind, for commands and scripts.
#[derive(Clone)]
enum AnyConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Stores an entry under the current generations. KEYS[1]: entry key;
/// KEYS[2..]: generation keys, shallowest first. ARGV[1]: value, ARGV[2]:
/// TTL ms, ARGV[3]: the generations the writer's miss saw, or `*` for
/// "whatever is current" (direct `set`). Writes nothing if they moved.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local gens = ''
if #KEYS > 1 then
  local g = redis.call('MGET', unpack(KEYS, 2))
  for i = 1, #g do
    if not g[i] then g[i] = '0' end
  end
  gens = table.concat(g, '.')
end
if ARGV[3] ~= '*' and ARGV[3] ~= gens then
  return 0
end
redis.call('SET', KEYS[1], struct.pack('>I2', #gens) .. gens .. ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// Bumps a prefix's generation and renews its life (ARGV[1] ms).
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return g
",
    )
});

/// Deletes a lock only if it still holds our token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// A Redis (or Redis Cluster) store; see the module docs.
pub struct RedisBackend {
    conn: Conn,
    label: String,
    secrets: Secrets,
    cluster: bool,
    max_ttl_ms: u64,
    checked_config: AtomicBool,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.label)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the Redis {what} file {}: {e}",
            path.display()
        ))
    })
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
        let certs = if config.ca_file.is_some() || config.client_cert.is_some() {
            let root_cert = config
                .ca_file
                .as_ref()
                .map(|p| read_pem(p, "CA"))
                .transpose()?;
            let client_tls = match &config.client_cert {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read_pem(cert, "client certificate")?,
                    client_key: read_pem(key, "client key")?,
                }),
                None => None,
            };
            Some(redis::TlsCertificates {
                client_tls,
                root_cert,
            })
        } else {
            None
        };
        let bad_url = |e: RedisError| Error::InvalidUrl {
            url: label.clone(),
            message: secrets.scrub(&e.to_string()),
        };
        let conn = if config.cluster {
            let mut builder = ClusterClient::builder(config.nodes.clone())
                .connection_timeout(config.connect_timeout)
                .retries(1);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(bad_url)?;
            Conn::Cluster(Box::new(ClusterConn {
                client,
                conn: tokio::sync::OnceCell::new(),
            }))
        } else {
            let url = config.nodes[0].as_str();
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url, certs),
                None => redis::Client::open(url),
            }
            .map_err(bad_url)?;
            Conn::Single(Box::new(SingleConn {
                client,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1)),
                manager: std::sync::OnceLock::new(),
            }))
        };
        Ok(RedisBackend {
            conn,
            label,
            secrets,
            cluster: config.cluster,
            max_ttl_ms: config.max_ttl.as_millis().max(1) as u64,
            checked_config: AtomicBool::new(false),
        })
    }

    /// Whether this talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    async fn connection(&self) -> Result<AnyConn, Error> {
        let conn = match &self.conn {
            Conn::Single(single) => {
                let manager = match single.manager.get() {
                    Some(m) => m.clone(),
                    None => {
                        let made = single
                            .client
                            .get_connection_manager_lazy(single.config.clone())
                            .map_err(|e| self.error(e))?;
                        single.manager.get_or_init(|| made).clone()
                    }
                };
                AnyConn::Single(manager)
            }
            Conn::Cluster(cluster) => AnyConn::Cluster(
                cluster
                    .conn
                    .get_or_try_init(|| cluster.client.get_async_connection())
                    .await
                    .map_err(|e| self.error(e))?
                    .clone(),
            ),
        };
        Ok(conn)
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

    /// After the first successful call: warn when the server cannot evict,
    /// since cache entries could then fill a store shared with a queue.
    fn check_config_once(&self, conn: &AnyConn) {
        if self.checked_config.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut conn = conn.clone();
        let label = self.label.clone();
        tokio::spawn(async move {
            let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            let maxmemory: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory")
                .query_async(&mut conn)
                .await;
            match (policy, maxmemory) {
                (Ok(policy), Ok(maxmemory)) => {
                    let policy = policy.get(1).cloned().unwrap_or_default();
                    let maxmemory = maxmemory.get(1).cloned().unwrap_or_default();
                    if policy == "noeviction" || maxmemory == "0" {
                        tracing::warn!(
                            url = %label,
                            maxmemory_policy = %policy,
                            maxmemory = %maxmemory,
                            "Redis cannot evict (maxmemory-policy noeviction or maxmemory 0): \
                             cache entries only leave by TTL and can fill the server, starving \
                             anything else it stores (such as a job queue); give the cache its \
                             own instance or set maxmemory with an allkeys-lru or volatile-lru policy"
                        );
                    }
                }
                _ => tracing::debug!(
                    url = %label,
                    "CONFIG GET not allowed; cannot check the Redis eviction policy"
                ),
            }
        });
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
        for g in layout.gens() {
            mget.arg(g);
        }
        let mut found: Vec<Option<Vec<u8>>> = mget
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.check_config_once(&conn);
        if found.len() != layout.gens.len() + 1 {
            return Err(Error::backend(
                NAME,
                "MGET answered with the wrong number of values",
            ));
        }
        let value = found[0]
            .take()
            .and_then(|stored| unwrap_entry(stored, &found[1..]));
        // Hits carry the ticket too: a background refresh of a stale entry
        // writes under the generations its read saw.
        let current = generations(&found[1..]);
        Ok(Lookup::new(value).with_ticket(Ticket::tag(current)))
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
        for g in layout.gens() {
            call.key(g);
        }
        let _: i64 = call
            .arg(value)
            .arg(self.ttl_ms(ttl))
            .arg(expected)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_delete(&self, key: &str) -> Result<(), Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let _: i64 = redis::cmd("UNLINK")
            .arg(entry_key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_invalidate(&self, prefix: &str) -> Result<(), Error> {
        let gen_key = match gen_key(prefix) {
            Some(k) => k,
            None => {
                return Err(Error::InvalidPrefix {
                    prefix: prefix.to_owned(),
                    reason: "on Redis, invalidating everything needs a namespace: give the cache \
                             one (`?namespace=app` or `.namespace(\"app\")`) and invalidate \"\" \
                             within it",
                })
            }
        };
        let mut conn = self.connection().await?;
        let _: i64 = BUMP
            .key(gen_key)
            .arg(self.max_ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn run_set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let done: Option<String> = redis::cmd("SET")
            .arg(lock_key(key))
            .arg(&value[..])
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms(ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(done.is_some())
    }

    async fn run_delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        self.validate_key(key)?;
        let mut conn = self.connection().await?;
        let n: i64 = RELEASE
            .key(lock_key(key))
            .arg(value)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }
}

/// The hash tag of a key: its first segment.
fn tag_of(key: &str) -> &str {
    key.split(':').next().unwrap_or("")
}

/// `v:{tag}<rest of key>`: the entry's base key, before `#generations`.
fn entry_key(key: &str) -> String {
    let tag = tag_of(key);
    format!("v:{{{tag}}}{}", &key[tag.len()..])
}

fn lock_key(key: &str) -> String {
    let tag = tag_of(key);
    format!("l:{{{tag}}}{}", &key[tag.len()..])
}

/// The generation counter of a prefix ending with `:`; `None` for the
/// empty prefix, which has none (see the module docs).
fn gen_key(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return None;
    }
    Some(format!("g:{{{}}}:{prefix}", tag_of(prefix)))
}

/// An entry's key and its prefixes' generation keys, in one buffer (one
/// allocation per call instead of one per key).
struct Layout {
    buf: String,
    entry: std::ops::Range<usize>,
    gens: Vec<std::ops::Range<usize>>,
}

impl Layout {
    fn of(key: &str) -> Layout {
        use std::fmt::Write;
        let tag = tag_of(key);
        let mut buf = String::with_capacity(key.len() * 5 + 32);
        let mut gens = Vec::with_capacity(4);
        let _ = write!(buf, "v:{{{tag}}}{}", &key[tag.len()..]);
        let entry = 0..buf.len();
        for (i, _) in key.match_indices(':') {
            let start = buf.len();
            let _ = write!(buf, "g:{{{tag}}}:{}", &key[..=i]);
            gens.push(start..buf.len());
        }
        Layout { buf, entry, gens }
    }

    fn entry(&self) -> &str {
        &self.buf[self.entry.clone()]
    }

    fn gens(&self) -> impl Iterator<Item = &str> + '_ {
        self.gens.iter().map(|r| &self.buf[r.clone()])
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(self.run_get(key))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        // A generation string never contains `*`: it means "current".
        let expected = ticket.and_then(Ticket::as_tag).unwrap_or("*");
        Box::pin(async move { self.run_write(key, &value, ttl, expected).await })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_delete(key))
    }

    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run_invalidate(prefix))
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.run_set_if_absent(key, value, ttl))
    }

    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.run_delete_if_equals(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_tags_every_key_of_a_prefix_into_one_slot() {
        let l = Layout::of("shop:author:42:top");
        assert_eq!(l.entry(), "v:{shop}:author:42:top");
        assert_eq!(
            l.gens().collect::<Vec<_>>(),
            [
                "g:{shop}:shop:",
                "g:{shop}:shop:author:",
                "g:{shop}:shop:author:42:"
            ]
        );
        // The counters an invalidation bumps are the ones reads consult.
        let l = Layout::of("a:b");
        assert_eq!(l.gens().collect::<Vec<_>>(), ["g:{a}:a:"]);
        assert_eq!(gen_key("a:").as_deref(), l.gens().next());
        assert_eq!(gen_key(""), None);
        assert_eq!(l.entry(), entry_key("a:b"));
    }

    #[test]
    fn entries_are_served_only_under_the_generations_they_record() {
        let gens = |g: &[&str]| -> Vec<Option<Vec<u8>>> {
            g.iter()
                .map(|s| (*s != "-").then(|| s.as_bytes().to_vec()))
                .collect()
        };
        let mut stored = vec![0, 5];
        stored.extend_from_slice(b"0.1.0payload");
        let served = unwrap_entry(stored.clone(), &gens(&["-", "1", "0"]));
        assert_eq!(
            served.as_deref(),
            Some(&b"payload"[..]),
            "missing counts as 0"
        );
        assert_eq!(unwrap_entry(stored.clone(), &gens(&["0", "2", "0"])), None);
        assert_eq!(unwrap_entry(stored.clone(), &gens(&["0", "1"])), None);
        assert_eq!(unwrap_entry(stored, &gens(&["0", "1", "0", "0"])), None);
        assert_eq!(
            unwrap_entry(vec![0, 0, b'x'], &[]).as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(unwrap_entry(vec![0], &gens(&["0"])), None, "truncated");
        assert_eq!(unwrap_entry(vec![0, 9, b'0'], &gens(&["0"])), None, "short");
        assert_eq!(generations(&[None, Some(b"3".to_vec())]), "0.3");
    }

    #[test]
    fn glob_characters_stay_literal_text() {
        // No pattern matching anywhere: a prefix is a counter's name.
        assert_eq!(gen_key("a*:").unwrap(), "g:{a*}:a*:");
        assert_eq!(entry_key("a[1]:?"), "v:{a[1]}:?");
    }
}
