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
use crate::backends::generations::{generations, prefixes, unwrap_entry};
use crate::params::{CacheUrl, Common};
use crate::secrets::{redact, Secrets};
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

    /// Longest life of an entry (default 30 days); longer TTLs are capped
    /// to it.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reads a cache URL (`Cache::from_url`) for this store; returns the
    /// parameters every scheme shares for the cache. Forms:
    /// `redis://[user:pass@]host[:port][/db]`, `rediss://...` and
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2`, with `ca_file`, `cert_file`,
    /// `key_file` and `max_ttl` beside the common parameters.
    pub(crate) fn from_url(url: &mut CacheUrl<'_>) -> Result<(RedisConfig, Common), Error> {
        let ca_file = url.take("ca_file");
        let cert_file = url.take("cert_file");
        let key_file = url.take("key_file");
        let max_ttl = url.take_duration("max_ttl")?;
        let common = url.finish("ca_file, cert_file, key_file, max_ttl")?;
        let tls = url.scheme.starts_with("rediss");
        let base = if tls { "rediss" } else { "redis" };
        let mut config = if url.scheme.ends_with("+cluster") {
            if url.hosts.is_empty() {
                return Err(url.error(
                    "name at least one cluster node: `redis+cluster://host1:6379,host2:6379`",
                ));
            }
            let userinfo = url.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            Self::cluster(
                url.hosts
                    .split(',')
                    .map(|h| format!("{base}://{userinfo}{h}")),
            )
        } else {
            if url.hosts.is_empty() {
                return Err(url.error("name the server: `redis://host:6379/0`"));
            }
            if url.hosts.contains(',') {
                return Err(url.error(format!(
                    "`{}://` takes one server; name several nodes of a cluster as \
                     `{base}+cluster://host1:6379,host2:6379`",
                    url.scheme
                )));
            }
            Self::new(format!("{base}://{}", url.rest))
        };
        if (ca_file.is_some() || cert_file.is_some()) && !tls {
            return Err(url.error("`ca_file` and `cert_file` need TLS: use `rediss://`"));
        }
        if let Some(ca) = ca_file {
            config = config.ca_file(ca);
        }
        match (cert_file, key_file) {
            (Some(cert), Some(key)) => config = config.client_cert(cert, key),
            (None, None) => {}
            _ => return Err(url.error("mutual TLS needs both `cert_file` and `key_file`")),
        }
        if let Some(max_ttl) = max_ttl {
            config = config.max_ttl(max_ttl);
        }
        Ok((config, common))
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

/// A fresh counter value from the server's clock: microseconds times 1,000
/// (see `generations::seed`). Shared by the scripts below.
const SEED_LUA: &str = r"
local function seed()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
end
local function bump(key, life)
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCR', key)
  else
    redis.call('SET', key, seed(), 'PX', life)
  end
end
";

/// Creates the missing counters of a read. KEYS: counters; ARGV[1]: their
/// life in ms until an entry's write extends it. Returns every counter's
/// value.
static ENSURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
local out = {{}}
local fresh = nil
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    fresh = fresh or seed()
    redis.call('SET', KEYS[i], fresh, 'PX', ARGV[1])
    v = fresh
  end
  out[i] = v
end
return out
"
    ))
});

/// Stores an entry under the current generations. KEYS[1]: entry key;
/// KEYS[2..]: its counters (prefixes shallowest first, then the key's own).
/// ARGV[1]: value, ARGV[2]: TTL ms, ARGV[3]: the generations the writer's
/// read saw, or `*` for "whatever is current" (direct `set`, which creates
/// missing counters). Writes nothing if a counter moved or is missing.
/// Every counter is made to live at least as long as the entry.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
local g = {{}}
if #KEYS > 1 then
  g = redis.call('MGET', unpack(KEYS, 2))
end
for i = 1, #g do
  if not g[i] then
    if ARGV[3] ~= '*' then
      return 0
    end
    g[i] = seed()
    redis.call('SET', KEYS[i + 1], g[i])
  end
end
local gens = table.concat(g, '.')
if ARGV[3] ~= '*' and ARGV[3] ~= gens then
  return 0
end
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
redis.call('SET', KEYS[1], struct.pack('>I2', #gens) .. gens .. ARGV[1], 'PX', ttl)
return 1
"
    ))
});

/// Bumps a prefix's generation, or creates it from the clock if missing
/// (to live ARGV[1] ms unless an entry's write extends it).
static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
bump(KEYS[1], ARGV[1])
return 1
"
    ))
});

/// Deletes an entry and bumps the key's own counter, so a write under a
/// ticket read before the delete is refused. KEYS[1]: entry, KEYS[2]: the
/// key's counter; ARGV[1]: its life in ms if it has to be created.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SEED_LUA}
redis.call('UNLINK', KEYS[1])
bump(KEYS[2], ARGV[1])
return 1
"
    ))
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
            // Redis refuses expiry times that overflow its clock: cap far below.
            max_ttl_ms: config.max_ttl.as_millis().clamp(1, i64::MAX as u128 / 4) as u64,
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

    /// After the first successful call: load the scripts, and warn when the
    /// server cannot evict (cache entries could then fill a store shared
    /// with a queue) or can roll invalidations back (persistence).
    fn check_config_once(&self, conn: &AnyConn) {
        if self.checked_config.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut conn = conn.clone();
        let label = self.label.clone();
        tokio::spawn(async move {
            // Load the scripts now, so a first write does not pay the
            // NOSCRIPT round trips inside some call's budget.
            for script in [&*ENSURE, &*WRITE, &*BUMP, &*DELETE, &*RELEASE] {
                if script.load_async(&mut conn).await.is_err() {
                    break;
                }
            }
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
            let setting = |name: &'static str| {
                let mut conn = conn.clone();
                async move {
                    let found: Result<Vec<String>, _> = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async(&mut conn)
                        .await;
                    found.ok().and_then(|v| v.get(1).cloned())
                }
            };
            let (save, aof, fsync) = (
                setting("save").await,
                setting("appendonly").await,
                setting("appendfsync").await,
            );
            if let (Some(save), Some(aof), Some(fsync)) = (save, aof, fsync) {
                if loses_acknowledged_writes(&save, &aof, &fsync) {
                    tracing::warn!(
                        url = %label,
                        save = %save,
                        appendonly = %aof,
                        appendfsync = %fsync,
                        "Redis persists without syncing every write (RDB snapshots, or AOF \
                         without appendfsync always): a crash and restart restores data from \
                         before the latest invalidations, and entries they hid are served \
                         again. Run the cache's Redis without persistence (save \"\" and \
                         appendonly no, so a restart empties it) or with appendfsync always"
                    );
                }
            }
        });
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
        let mut found: Vec<Option<Vec<u8>>> = mget
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        self.check_config_once(&conn);
        if found.len() != layout.counters.len() + 1 {
            return Err(Error::backend(
                NAME,
                "MGET answered with the wrong number of values",
            ));
        }
        let stored = found[0].take();
        // Hits carry the ticket too: a background refresh of a stale entry
        // writes under the generations its read saw.
        if let Some(current) = generations(&found[1..]) {
            let value = stored.and_then(|stored| unwrap_entry(stored, &found[1..]));
            return Ok(Lookup::new(value).with_ticket(Ticket::tag(current)));
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
            None => Err(Error::backend(
                NAME,
                "generation counters vanished as they were created (is the server out of memory?)",
            )),
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

/// Whether a Redis with these settings can come back from a crash with an
/// older state than it acknowledged: RDB snapshots without an AOF (when
/// both are on, Redis loads the AOF), or an AOF not synced on every write.
fn loses_acknowledged_writes(save: &str, appendonly: &str, appendfsync: &str) -> bool {
    if appendonly == "yes" {
        appendfsync != "always"
    } else {
        !save.trim().is_empty()
    }
}

/// What a physical key holds.
#[derive(Clone, Copy)]
enum Kind {
    Entry,
    Lock,
    /// A prefix's generation counter.
    Prefix,
    /// A key's own generation counter (bumped by `delete`).
    Own,
}

impl Kind {
    fn letter(self) -> &'static str {
        match self {
            Kind::Entry => "v",
            Kind::Lock => "l",
            Kind::Prefix => "g",
            Kind::Own => "x",
        }
    }
}

/// The physical key of `kind` for `name` (a key, or a prefix for
/// [`Kind::Prefix`]), tagged with `name`'s first segment so everything of
/// one key lands in one Cluster slot.
///
/// `<k>:{<first segment>}<rest>` when the first segment is a valid tag
/// (non-empty, no braces): `v:{author}:42:top`, and for a prefix counter
/// `g:{author}:author:42:`. Otherwise `<k>:{~<hash of it>}!<name>`: the `!`
/// after the tag never follows a valid tag (a rest is empty or starts with
/// `:`), so the two forms never meet.
fn physical(kind: Kind, name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 24);
    push_physical(&mut out, kind, name);
    out
}

fn push_physical(out: &mut String, kind: Kind, name: &str) {
    use std::fmt::Write;
    let first = name.split(':').next().unwrap_or("");
    let k = kind.letter();
    if first.is_empty() || first.contains(['{', '}']) {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(first.as_bytes());
        let _ = write!(out, "{k}:{{~");
        for b in &digest[..8] {
            let _ = write!(out, "{b:02x}");
        }
        let _ = write!(out, "}}!{name}");
    } else if let Kind::Prefix = kind {
        let _ = write!(out, "{k}:{{{first}}}:{name}");
    } else {
        let _ = write!(out, "{k}:{{{first}}}{}", &name[first.len()..]);
    }
}

fn lock_key(key: &str) -> String {
    physical(Kind::Lock, key)
}

/// An entry's key and its counters' keys (prefixes shallowest first, then
/// the key's own), in one buffer: one allocation per call, not one per key.
struct Layout {
    buf: String,
    entry: std::ops::Range<usize>,
    counters: Vec<std::ops::Range<usize>>,
}

impl Layout {
    fn of(key: &str) -> Layout {
        let mut buf = String::with_capacity(key.len() * 5 + 48);
        let mut counters = Vec::with_capacity(5);
        push_physical(&mut buf, Kind::Entry, key);
        let entry = 0..buf.len();
        for prefix in prefixes(key) {
            let start = buf.len();
            push_physical(&mut buf, Kind::Prefix, prefix);
            counters.push(start..buf.len());
        }
        let start = buf.len();
        push_physical(&mut buf, Kind::Own, key);
        counters.push(start..buf.len());
        Layout {
            buf,
            entry,
            counters,
        }
    }

    fn entry(&self) -> &str {
        &self.buf[self.entry.clone()]
    }

    fn counters(&self) -> impl Iterator<Item = &str> + '_ {
        self.counters.iter().map(|r| &self.buf[r.clone()])
    }

    fn own_counter(&self) -> &str {
        let own = self.counters.last().expect("every key has its own counter");
        &self.buf[own.clone()]
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

    /// The slot of a physical key, as Redis Cluster computes it: CRC16 of
    /// the hash tag when there is a non-empty one.
    fn slot_of(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        });
        let mut crc: u16 = 0;
        for &b in tagged.unwrap_or(bytes) {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn layout_tags_every_key_of_a_prefix_into_one_slot() {
        let l = Layout::of("shop:author:42:top");
        assert_eq!(l.entry(), "v:{shop}:author:42:top");
        assert_eq!(
            l.counters().collect::<Vec<_>>(),
            [
                "g:{shop}:shop:",
                "g:{shop}:shop:author:",
                "g:{shop}:shop:author:42:",
                "x:{shop}:author:42:top",
            ]
        );
        // The counters an invalidation or delete bumps are the ones reads
        // consult.
        let l = Layout::of("a:b");
        assert_eq!(
            l.counters().next(),
            Some(physical(Kind::Prefix, "a:").as_str())
        );
        assert_eq!(l.own_counter(), "x:{a}:b");
        assert_eq!(lock_key("a:b"), "l:{a}:b");
    }

    #[test]
    fn keys_without_a_usable_first_segment_still_share_one_slot() {
        for key in [":posts", "::x:y", "{a}:b", "a}b:c:d", "}:x", "solo", "{}:q"] {
            let l = Layout::of(key);
            let slot = slot_of(l.entry());
            for c in l.counters() {
                assert_eq!(slot_of(c), slot, "{key}: {c} vs {}", l.entry());
            }
            assert_eq!(slot_of(&lock_key(key)), slot, "{key}");
            // The invalidation of each prefix bumps a counter in that slot.
            for p in prefixes(key) {
                assert_eq!(slot_of(&physical(Kind::Prefix, p)), slot, "{key}: {p}");
            }
        }
        // And the odd form never takes the shape of a usual one.
        assert_ne!(
            physical(Kind::Entry, ":posts"),
            physical(Kind::Entry, "x:posts")
        );
        assert!(physical(Kind::Entry, ":posts").starts_with("v:{~"));
        assert_ne!(physical(Kind::Entry, "~0:"), physical(Kind::Entry, ":"));
    }

    #[test]
    fn persistence_that_can_roll_invalidations_back_is_recognised() {
        assert!(loses_acknowledged_writes(
            "3600 1 300 100",
            "no",
            "everysec"
        ));
        assert!(loses_acknowledged_writes("", "yes", "everysec"));
        assert!(loses_acknowledged_writes("3600 1", "yes", "no"));
        assert!(!loses_acknowledged_writes("", "no", "everysec"));
        assert!(!loses_acknowledged_writes("3600 1", "yes", "always"));
    }

    #[test]
    fn glob_characters_stay_literal_text() {
        // No pattern matching anywhere: a prefix is a counter's name.
        assert_eq!(physical(Kind::Prefix, "a*:"), "g:{a*}:a*:");
        assert_eq!(physical(Kind::Entry, "a[1]:?"), "v:{a[1]}:?");
    }
}
