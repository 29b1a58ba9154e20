//! One fixture per store. Each gives two `Cache` handles on one store under
//! a namespace of their own (two "processes": separate builds, separate
//! connections, no shared in-process state), a way to open a third, the
//! store's clock when the store keeps time by an injectable one, and a hook
//! that loses the store's invalidation state the way that store can lose it.
//!
//! A store added later gets every scenario by adding a constructor here and
//! its name to the `conformance!` list in `tests/conformance.rs`.
//!
//! Servers are started once per test binary (and stopped when it exits);
//! each test gets a fresh namespace (and, on SQL, a fresh table), so tests
//! running side by side never see each other's entries.

use std::any::Any;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::backends::sql::{SqlBackend, SqlConfig};
use cacheruntime::backends::MemoryBackend;
use cacheruntime::{Backend, Cache, Clock};

use crate::support::{MemcachedServer, Postgres, RedisCluster, RedisServer};

type Lose = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
/// Builds a handle: under the fixture's namespace, or the one given.
type Make = Box<dyn Fn(&Options, Option<&str>) -> Cache + Send + Sync>;
type Keep = Vec<Box<dyn Any + Send + Sync>>;

/// How a fixture builds its handles.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub op_timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cool_down: Duration,
    /// `CacheBuilder::compress_above`.
    pub compress_above: Option<usize>,
    /// `CacheBuilder::max_entry_bytes`.
    pub max_entry_bytes: Option<usize>,
    /// The envelope flags the handle reads (`read_flags_only`): a process
    /// built without a feature.
    pub read_flags: Option<u8>,
    /// A near tier (1 MiB) with this `near_check` on every handle.
    pub near_check: Option<Duration>,
}

impl Options {
    /// Healthy stores on a busy two-core machine: a generous op timeout, so
    /// a fail-open in a scenario means the store failed, not the scheduler.
    pub const DEFAULT: Options = Options {
        op_timeout: Duration::from_secs(2),
        breaker_threshold: 5,
        breaker_cool_down: Duration::from_secs(1),
        compress_above: None,
        max_entry_bytes: None,
        read_flags: None,
        near_check: None,
    };

    /// Stores being broken on purpose: calls give up quickly and compute.
    pub const FAULTS: Options = Options {
        op_timeout: Duration::from_millis(200),
        breaker_threshold: 5,
        breaker_cool_down: Duration::from_millis(500),
        compress_above: None,
        max_entry_bytes: None,
        read_flags: None,
        near_check: None,
    };
}

/// A store under test: see the module docs.
pub struct Store {
    pub name: &'static str,
    /// The first "process".
    pub a: Cache,
    /// The second "process".
    pub b: Cache,
    clock: Option<Clock>,
    options: Options,
    make: Make,
    lose: Lose,
    _keep: Keep,
}

impl Store {
    async fn new(
        name: &'static str,
        clock: Option<Clock>,
        options: Options,
        make: Make,
        lose: Lose,
        keep: Keep,
    ) -> Store {
        let store = Store {
            name,
            a: make(&options, None),
            b: make(&options, None),
            clock,
            options,
            make,
            lose,
            _keep: keep,
        };
        // Connections, TLS-free logins and SQL tables are made before a
        // scenario starts, so its first call is not a cold start.
        for handle in [&store.a, &store.b] {
            ready(name, handle).await;
        }
        store
    }

    /// A third "process" on the same store and namespace.
    pub fn handle(&self) -> Cache {
        (self.make)(&self.options, None)
    }

    /// A third "process" built with `options` (which start from the
    /// fixture's, [`options`](Self::options)).
    pub fn handle_with(&self, options: Options) -> Cache {
        (self.make)(&options, None)
    }

    /// The options the fixture's handles are built with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// A handle on the same store under another namespace (`""`: none).
    pub fn handle_in(&self, namespace: &str) -> Cache {
        (self.make)(&self.options, Some(namespace))
    }

    /// The manual clock that the store and its handles keep time by, for
    /// stores that take one (memory, SQL); `None` where the server keeps
    /// time itself (Redis, Memcached).
    pub fn manual_clock(&self) -> Option<&Clock> {
        self.clock.as_ref()
    }

    /// Lets `by` pass: the manual clock moves, or real time is waited out.
    pub async fn elapse(&self, by: Duration) {
        match &self.clock {
            Some(clock) => clock.advance(by),
            None => tokio::time::sleep(by).await,
        }
    }

    /// Lets a change made through one handle reach the others' near tiers:
    /// their `near_check` passes (nothing to wait for without near tiers).
    /// A near tier's contract across processes: another process's write,
    /// delete or invalidation is seen within `near_check` of its return.
    pub async fn settle(&self) {
        if let Some(check) = self.options.near_check {
            if self.pushes() {
                tokio::time::sleep(check).await;
            } else {
                self.elapse(check).await;
            }
        }
    }

    /// Whether the handles' near tiers follow the store's pushed notices
    /// (Redis, a Redis Cluster, PostgreSQL): their `near_check` is a lease in
    /// real time, whatever clock the handles keep entries' time by.
    /// Elsewhere near tiers poll, and `near_check` runs on that clock.
    pub fn pushes(&self) -> bool {
        self.options.near_check.is_some()
            && matches!(
                self.name,
                "redis_near" | "redis_cluster_near" | "postgres_near"
            )
    }

    /// Loses the store's record of past invalidations, as the store can:
    /// Redis and Memcached lose generation counters (eviction, restart),
    /// SQL sweeps invalidation rows older than `max_ttl`, memory drops its
    /// records after enough invalidations once its longest TTL has passed.
    pub async fn lose_invalidation_state(&self) {
        (self.lose)().await
    }
}

async fn ready(name: &str, cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache
        .set("ready:0", &0u8, Duration::from_secs(600))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{name}: the store never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn build(backend: impl Backend, namespace: &str, clock: Option<&Clock>, o: &Options) -> Cache {
    let mut builder = Cache::builder()
        .backend(backend)
        .namespace(namespace)
        .op_timeout(o.op_timeout)
        .circuit_breaker(o.breaker_threshold, o.breaker_cool_down);
    if let Some(clock) = clock {
        builder = builder.clock(clock.clone());
    }
    if let Some(bytes) = o.compress_above {
        builder = builder.compress_above(bytes);
    }
    if let Some(bytes) = o.max_entry_bytes {
        builder = builder.max_entry_bytes(bytes);
    }
    if let Some(flags) = o.read_flags {
        builder = builder.read_flags_only(flags);
    }
    if let Some(check) = o.near_check {
        builder = builder.near(1 << 20).near_check(check);
    }
    builder.build().expect("a valid cache configuration")
}

/// A namespace no other test of this binary uses.
fn namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ------------------------------------------------------------ shared servers

/// Servers shared by the whole binary; dropped (stopped) when it exits.
static KEEP_UNTIL_EXIT: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn stop_shared_servers() {
    let servers = std::mem::take(
        &mut *KEEP_UNTIL_EXIT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    drop(servers);
}

/// Starts a server once per binary and returns what tests need of it.
async fn shared<I: Clone + Send + Sync + 'static>(
    cell: &'static OnceLock<I>,
    start: fn() -> (Box<dyn Any + Send>, I),
) -> I {
    if let Some(info) = cell.get() {
        return info.clone();
    }
    tokio::task::spawn_blocking(move || {
        cell.get_or_init(|| {
            static REGISTER: Once = Once::new();
            // SAFETY: registers a plain `extern "C"` function, once.
            REGISTER.call_once(|| unsafe {
                atexit(stop_shared_servers);
            });
            let (server, info) = start();
            KEEP_UNTIL_EXIT
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(server);
            info
        })
        .clone()
    })
    .await
    .expect("the server started")
}

// -------------------------------------------------------------------- memory

/// Two handles over one shared `Arc<MemoryBackend>` (4 MiB) and a manual
/// clock.
pub async fn memory() -> Store {
    let ns = namespace();
    let clock = Clock::manual();
    let backend = Arc::new(MemoryBackend::with_clock(4 << 20, clock.clone()));
    let make: Make = {
        let (backend, ns, clock) = (backend.clone(), ns.clone(), clock.clone());
        Box::new(move |o, other: Option<&str>| {
            build(backend.clone(), other.unwrap_or(&ns), Some(&clock), o)
        })
    };
    let losses = Arc::new(AtomicU32::new(0));
    let lose: Lose = {
        let clock = clock.clone();
        Box::new(move || {
            let (backend, clock, ns, losses) =
                (backend.clone(), clock.clone(), ns.clone(), losses.clone());
            Box::pin(async move {
                // Past every TTL the scenarios use, then enough
                // invalidations elsewhere for the store to sweep its records
                // (it sweeps when their count doubles, from 1,024).
                clock.advance(Duration::from_secs(2 * 86_400));
                let n = 1100usize << losses.fetch_add(1, Ordering::Relaxed);
                for i in 0..n {
                    backend
                        .invalidate_prefix(&format!("{ns}:lost{i}:"))
                        .await
                        .expect("memory invalidation");
                }
            })
        })
    };
    Store::new(
        "memory",
        Some(clock),
        Options::DEFAULT,
        make,
        lose,
        Vec::new(),
    )
    .await
}

// --------------------------------------------------------------- near tiers

/// The near tier's `near_check` in the `*_near` fixtures.
pub const NEAR_CHECK: Duration = Duration::from_millis(100);

const NEAR: Options = Options {
    near_check: Some(NEAR_CHECK),
    ..Options::DEFAULT
};

/// Standalone Redis, every handle with a near tier.
pub async fn redis_near() -> Store {
    let info = redis_info().await;
    redis_at("redis_near", info.url, info.ports, false, NEAR).await
}

/// A Redis Cluster, every handle with a near tier.
pub async fn redis_cluster_near() -> Store {
    let info = redis_cluster_info().await;
    redis_at("redis_cluster_near", info.url, info.ports, true, NEAR).await
}

/// PostgreSQL, every handle with a near tier.
pub async fn postgres_near() -> Store {
    let url = postgres_url().await;
    sql_at("postgres_near", url, NEAR, Vec::new()).await
}

/// SQLite, every handle with a near tier.
pub async fn sqlite_near() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cache.db").display());
    sql_at("sqlite_near", url, NEAR, vec![Box::new(dir)]).await
}

/// Memcached, every handle with a near tier.
pub async fn memcached_near() -> Store {
    let port = memcached_port().await;
    memcached_at("memcached_near", port, NEAR).await
}

// --------------------------------------------------------------------- redis

#[derive(Clone)]
struct RedisInfo {
    url: String,
    ports: Vec<u16>,
}

static REDIS: OnceLock<RedisInfo> = OnceLock::new();
static REDIS_CLUSTER: OnceLock<RedisInfo> = OnceLock::new();

/// Standalone Redis, shared by the binary.
pub async fn redis() -> Store {
    let info = redis_info().await;
    redis_at("redis", info.url, info.ports, false, Options::DEFAULT).await
}

async fn redis_cluster_info() -> RedisInfo {
    shared(&REDIS_CLUSTER, || {
        let cluster = RedisCluster::start();
        let info = RedisInfo {
            url: cluster.url(),
            ports: cluster.nodes.iter().map(|n| n.port).collect(),
        };
        (Box::new(cluster), info)
    })
    .await
}

async fn redis_info() -> RedisInfo {
    shared(&REDIS, || {
        let server = RedisServer::start();
        let info = RedisInfo {
            url: server.url(),
            ports: vec![server.port],
        };
        (Box::new(server), info)
    })
    .await
}

/// A three-master Redis Cluster, shared by the binary.
pub async fn redis_cluster() -> Store {
    let info = redis_cluster_info().await;
    redis_at(
        "redis_cluster",
        info.url,
        info.ports,
        true,
        Options::DEFAULT,
    )
    .await
}

/// Redis (or a cluster) at `url`, whose nodes listen on `ports`.
pub async fn redis_at(
    name: &'static str,
    url: String,
    ports: Vec<u16>,
    cluster: bool,
    options: Options,
) -> Store {
    let ns = namespace();
    let make: Make = {
        let (ns, ports) = (ns.clone(), ports.clone());
        Box::new(move |o, other: Option<&str>| {
            let config = if cluster {
                RedisConfig::cluster(ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
            } else {
                RedisConfig::new(url.clone())
            };
            build(
                RedisBackend::new(config).unwrap(),
                other.unwrap_or(&ns),
                None,
                o,
            )
        })
    };
    let lose: Lose = Box::new(move || {
        let (ports, ns) = (ports.clone(), ns.clone());
        Box::pin(async move {
            // Generation counters are `g:{<first segment>}:<prefix>` (of
            // prefixes) and `x:{<first segment>}<rest of key>` (of keys);
            // with a namespace the first segment is the namespace.
            let patterns = [format!("g:{{{ns}}}:*"), format!("x:{{{ns}}}*")];
            let deleted = tokio::task::spawn_blocking(move || {
                ports
                    .iter()
                    .flat_map(|&port| patterns.iter().map(move |p| delete_redis_keys(port, p)))
                    .sum::<usize>()
            })
            .await
            .unwrap();
            assert!(
                deleted > 0,
                "found no Redis generation counters (g:{{{ns}}}:*) to delete: if the key \
                 layout changed, update stores::redis_at's lose_invalidation_state"
            );
        })
    });
    Store::new(name, None, options, make, lose, Vec::new()).await
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the keys matching `pattern` on one node; returns how many.
fn delete_redis_keys(port: u16, pattern: &str) -> usize {
    let found = redis_cli(port, &["--scan", "--pattern", pattern]);
    let keys: Vec<&str> = found.lines().filter(|l| !l.is_empty()).collect();
    for key in &keys {
        redis_cli(port, &["DEL", key]);
    }
    keys.len()
}

// ----------------------------------------------------------------------- sql

/// Entries and invalidation records live at most this long on the SQL
/// fixtures (`SqlConfig::max_ttl`); the loss hook moves the clock past it.
const SQL_MAX_TTL: Duration = Duration::from_secs(3600);

static POSTGRES: OnceLock<String> = OnceLock::new();

/// PostgreSQL, shared by the binary; a table per test.
pub async fn postgres() -> Store {
    let url = postgres_url().await;
    sql_at("postgres", url, Options::DEFAULT, Vec::new()).await
}

async fn postgres_url() -> String {
    shared(&POSTGRES, || {
        let pg = Postgres::start();
        let url = pg.url();
        (Box::new(pg), url)
    })
    .await
}

/// A SQLite file of its own in a temp dir.
pub async fn sqlite() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cache.db").display());
    sql_at("sqlite", url, Options::DEFAULT, vec![Box::new(dir)]).await
}

/// PostgreSQL or SQLite at `url`, in a table of its own, on a manual clock.
pub async fn sql_at(name: &'static str, url: String, options: Options, keep: Keep) -> Store {
    let ns = namespace();
    let clock = Clock::manual();
    let config: Arc<dyn Fn() -> SqlConfig + Send + Sync> = {
        let (table, clock) = (format!("conf_{ns}"), clock.clone());
        Arc::new(move || {
            let config = SqlConfig::new(url.clone())
                .table(table.clone())
                .database_clock(clock.clone())
                .max_ttl(SQL_MAX_TTL)
                .max_connections(6);
            if url.starts_with("postgres") {
                // Plain TCP: the scenarios are not about TLS, and debug-build
                // handshakes are slow.
                config.ssl_mode("disable")
            } else {
                config
            }
        })
    };
    let make: Make = {
        let (config, ns, clock) = (config.clone(), ns.clone(), clock.clone());
        Box::new(move |o, other: Option<&str>| {
            build(
                SqlBackend::new(config()).unwrap(),
                other.unwrap_or(&ns),
                Some(&clock),
                o,
            )
        })
    };
    let sweeper = Arc::new(SqlBackend::new(config()).unwrap());
    let lose: Lose = {
        let clock = clock.clone();
        Box::new(move || {
            let (sweeper, clock) = (sweeper.clone(), clock.clone());
            Box::pin(async move {
                // Invalidation rows are swept once older than `max_ttl`.
                clock.advance(SQL_MAX_TTL + Duration::from_secs(1));
                sweeper.sweep().await.expect("the SQL sweep");
            })
        })
    };
    Store::new(name, Some(clock), options, make, lose, keep).await
}

// ----------------------------------------------------------------- memcached

static MEMCACHED: OnceLock<u16> = OnceLock::new();

/// Memcached (`-I 1m`), shared by the binary.
pub async fn memcached() -> Store {
    let port = memcached_port().await;
    memcached_at("memcached", port, Options::DEFAULT).await
}

async fn memcached_port() -> u16 {
    shared(&MEMCACHED, || {
        let server = MemcachedServer::start();
        let port = server.port;
        (Box::new(server), port)
    })
    .await
}

/// Memcached on a loopback `port`.
pub async fn memcached_at(name: &'static str, port: u16, options: Options) -> Store {
    memcached_on(name, vec![port], options).await
}

static MEMCACHED_POOL: OnceLock<Vec<u16>> = OnceLock::new();

/// A pool of three Memcached servers, shared by the binary: every key's
/// entry and counters spread over them.
pub async fn memcached_pool() -> Store {
    let ports = shared(&MEMCACHED_POOL, || {
        let servers: Vec<MemcachedServer> = (0..3).map(|_| MemcachedServer::start()).collect();
        let ports = servers.iter().map(|s| s.port).collect();
        (Box::new(servers), ports)
    })
    .await;
    memcached_on("memcached_pool", ports, Options::DEFAULT).await
}

/// Memcached on the loopback `ports`, one pool.
async fn memcached_on(name: &'static str, ports: Vec<u16>, options: Options) -> Store {
    let ns = namespace();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let make: Make = {
        let ns = ns.clone();
        Box::new(move |o, other: Option<&str>| {
            // Memcached keeps a breaker per server in place of the cache's.
            let config = MemcachedConfig::new(addrs.clone())
                .circuit_breaker(o.breaker_threshold, o.breaker_cool_down);
            build(
                MemcachedBackend::new(config).unwrap(),
                other.unwrap_or(&ns),
                None,
                o,
            )
        })
    };
    let lose: Lose = Box::new(move || {
        let ns = ns.clone();
        let ports = ports.clone();
        Box::pin(async move {
            // Counters are `g:<prefix>` (of prefixes) and `x:<key>` (of
            // keys), one copy of each on each of up to three servers of a
            // pool (all of them here); every key and prefix of the test
            // starts with its namespace. Every copy is deleted: losing
            // some only is a test of `tests/memcached.rs`.
            let prefixes = [format!("g:{ns}:"), format!("x:{ns}:")];
            let deleted = tokio::task::spawn_blocking(move || {
                ports
                    .iter()
                    .flat_map(|&port| prefixes.iter().map(move |p| delete_memcached_keys(port, p)))
                    .sum::<usize>()
            })
            .await
            .unwrap();
            assert!(
                deleted > 0,
                "found no Memcached generation counters (g:{ns}:*) to delete: if the key \
                 layout changed, update stores::memcached_on's lose_invalidation_state"
            );
        })
    });
    Store::new(name, None, options, make, lose, Vec::new()).await
}

/// One request on a fresh text-protocol connection; the reply up to one
/// of `ends`, or a one-line refusal (`BUSY ...`, `ERROR ...`).
fn memcached_ask(port: u16, request: &str, ends: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect memcached");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let refused = |out: &[u8]| {
        (out.starts_with(b"BUSY") || out.starts_with(b"ERROR") || out.starts_with(b"CLIENT_ERROR"))
            && out.ends_with(b"\r\n")
    };
    while !ends.iter().any(|e| out.ends_with(e.as_bytes())) && !refused(&out) {
        let n = s.read(&mut buf).expect("memcached answers");
        assert!(n > 0, "memcached closed the connection");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Deletes every key starting with `prefix` (listed with `lru_crawler
/// metadump`); returns how many.
fn delete_memcached_keys(port: u16, prefix: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let dump = loop {
        let dump = memcached_ask(port, "lru_crawler metadump all\r\n", &["END\r\n"]);
        if dump.ends_with("END\r\n") {
            break dump;
        }
        // BUSY: a crawl is running; ask again.
        assert!(Instant::now() < deadline, "metadump kept failing: {dump}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let keys: Vec<String> = dump
        .lines()
        .filter_map(|l| l.strip_prefix("key="))
        .map(|l| percent_decode(l.split(' ').next().unwrap_or("")))
        .filter(|k| k.starts_with(prefix))
        .collect();
    for key in &keys {
        memcached_ask(
            port,
            &format!("delete {key}\r\n"),
            &["DELETED\r\n", "NOT_FOUND\r\n"],
        );
    }
    keys.len()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
