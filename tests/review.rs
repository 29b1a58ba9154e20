//! Adversarial review reproductions (branch `review`). Each test states the
//! claim it breaks; a failing test is a finding.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cacheruntime::backends::sql::{SqlBackend, SqlConfig};
use cacheruntime::{Cache, Policy};
use tokio::sync::oneshot;

fn sql_cache(backend: Arc<SqlBackend>) -> Cache {
    Cache::builder()
        .backend(backend)
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Claim: after `invalidate_prefix` returns (in any process), no call that
/// starts afterwards is answered with a value computed before it; callers
/// join a flight only if its ticket covers theirs.
///
/// SQL tickets carry `scope` = the newest record naming the key. A sweep
/// (by any process, after its own `max_ttl`) deletes the records and
/// raises the floor, but the scope ignores the floor: a caller reading
/// after the sweep gets scope 0 again, which an in-flight computation's
/// pre-invalidation ticket (scope 0) "covers", so it joins that flight and
/// is answered with the value computed before the invalidation.
async fn sql_flight_join_after_sweep(url_a: String) {
    let a_backend = Arc::new(SqlBackend::new(SqlConfig::new(url_a.clone()).ssl_mode_if_pg(&url_a)).unwrap());
    // Another process: same table, a short max_ttl (its sweeps remove
    // records older than 1 ms).
    let b_backend = Arc::new(
        SqlBackend::new(
            SqlConfig::new(url_a.clone())
                .ssl_mode_if_pg(&url_a)
                .max_ttl(Duration::from_millis(1)),
        )
        .unwrap(),
    );
    let a = sql_cache(a_backend);
    let b = sql_cache(b_backend.clone());
    let p = Policy::new().ttl(Duration::from_secs(600));
    // Warm the schema.
    a.set("warm", &1u32, Duration::from_secs(1)).await.unwrap();

    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let a1 = a.clone();
    let first = tokio::spawn(async move {
        a1.get_or_compute("grp:1:k", &p, move || async move {
            let _ = entered_tx.send(());
            let _ = release_rx.await;
            "old".to_string()
        })
        .await
    });
    entered_rx.await.unwrap();
    // Process B invalidates; it returns.
    b.invalidate_prefix("grp:1:").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Process B's periodic sweep runs (records older than its max_ttl).
    b_backend.sweep().await.unwrap();
    // A call that starts now, in process A.
    let a2 = a.clone();
    let computed = Arc::new(AtomicUsize::new(0));
    let c2 = computed.clone();
    let later = tokio::spawn(async move {
        a2.get_or_compute("grp:1:k", &p, move || async move {
            c2.fetch_add(1, Ordering::SeqCst);
            "new".to_string()
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = release_tx.send(());
    assert_eq!(first.await.unwrap(), "old");
    let got = later.await.unwrap();
    assert_eq!(
        got, "new",
        "a call that started after invalidate_prefix returned got the value computed before it"
    );
}

trait PgPlain {
    fn ssl_mode_if_pg(self, url: &str) -> Self;
}
impl PgPlain for SqlConfig {
    fn ssl_mode_if_pg(self, url: &str) -> Self {
        if url.starts_with("postgres") {
            self.ssl_mode("disable")
        } else {
            self
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_flight_join_after_sweep_serves_pre_invalidation_value() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    sql_flight_join_after_sweep(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flight_join_after_sweep_serves_pre_invalidation_value() {
    let pg = support::Postgres::start();
    sql_flight_join_after_sweep(pg.url()).await;
}

// ------------------------------------------------------------ refresh lock

use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::Clock;

fn redis_cache(url: &str, clock: Option<Clock>) -> Cache {
    let mut b = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(url)).unwrap())
        .op_timeout(Duration::from_millis(500));
    if let Some(c) = clock {
        b = b.clock(c);
    }
    b.build().unwrap()
}

/// Claim: background refreshes take a lock of their own (`key#refresh`),
/// so a failed refresh (which keeps its lock for `lock_ttl`) never makes a
/// cold miss wait. But `key#refresh` is also the store lock of the key
/// `key#refresh`, which the direct API accepts (only templates refuse `#`):
/// a cold miss of `k#refresh` in another process waits the full lock TTL
/// for the failed refresh of `k`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refresh_of_k_stalls_cold_miss_of_k_hash_refresh() {
    let server = support::RedisServer::start();
    let clock = Clock::manual();
    let a = redis_cache(&server.url(), Some(clock.clone()));
    let b = redis_cache(&server.url(), None);
    let lock_ttl = Duration::from_secs(4);
    let p = Policy::new()
        .ttl(Duration::from_secs(1))
        .stale(Duration::from_secs(600))
        .lock_ttl(lock_ttl);
    let v: Result<u32, String> = a
        .try_get_or_refresh("k", &p, || async { Ok::<u32, String>(1) })
        .await;
    assert_eq!(v, Ok(1));
    clock.advance(Duration::from_secs(2));
    // Stale: served, and a refresh that fails is spawned.
    let v: Result<u32, String> = a
        .try_get_or_refresh("k", &p, || async { Err::<u32, String>("down".into()) })
        .await;
    assert_eq!(v, Ok(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.stats().refresh_failures, 1);
    // Another process, another key.
    let started = std::time::Instant::now();
    let got = b
        .get_or_compute("k#refresh", &Policy::new().lock_ttl(lock_ttl), || async {
            7u32
        })
        .await;
    assert_eq!(got, 7);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a cold miss of an unrelated key waited {:?} (lock_waits {}, lock_timeouts {})",
        started.elapsed(),
        b.stats().lock_waits,
        b.stats().lock_timeouts
    );
}

// ------------------------------------------------------- counter lifetimes

fn memcached_ask(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Claim (README, memcached.rs docs): "a key's own counter lives an hour"
/// unless an entry's write extends it, "so the counters of keys no longer
/// cached do not pile up". A read that misses creates the counters; on
/// Memcached it creates the key's own counter with `max_ttl` (365 days).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_read_only_miss_creates_own_counter_for_a_year() {
    use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
    let server = support::MemcachedServer::start();
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap())
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // A read of a key that is not cached (Cache::get, or a computation
    // returning Err): nothing is written but the counters.
    assert_eq!(cache.get::<u32>("grp:k1").await.unwrap(), None);
    let own = memcached_ask(server.port, "mg {grp}x:grp:k1 t\r\n");
    let ttl: i64 = own
        .trim()
        .split(' ')
        .find_map(|f| f.strip_prefix('t'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("own counter not found: {own:?}"));
    assert!(
        ttl <= 3600,
        "the key's own counter, recorded by no entry, lives {ttl} s (claim: an hour)"
    );
}

// ----------------------------------------------------------------- secrets

/// Claim: secrets never appear in URL errors, Debug or logs. Probe odd
/// forms against the real parsers/drivers (nothing listens on port 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_secrets_never_show_in_errors_or_debug() {
    let secret = "Hu\\nt\"er2é";
    let enc = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let forms = [
        format!("redis://u:{enc}@127.0.0.1:1/0"),
        format!("redis://u:{enc}@127.0.0.1:notaport/0"),
        format!("redis://u:{enc}@127.0.0.1:1/0?namespace=a%20b"),
        format!("redis://u:{enc}@127.0.0.1:1/x"),
        format!("rediss://u:{enc}@127.0.0.1:1/0?op_timeout=bogus"),
        format!("redis+cluster://u:{enc}@127.0.0.1:1,u:{enc}@127.0.0.1:2"),
        format!("postgres://u:{enc}@127.0.0.1:1/db?op_timeout=50ms"),
        format!("postgres://u:{enc}@127.0.0.1:1/db?sslmode=bogus"),
        format!("postgres://u@127.0.0.1:1/db?password={enc}&sslmode=nope"),
        format!("postgres://u:{enc}@[::1/db"),
        format!("postgresql://u:{enc}@127.0.0.1:99999/db"),
        format!("memcached://u:{enc}@127.0.0.1:1"),
        format!("memcached://127.0.0.1:1?token={enc}&bogus=1"),
        format!("redis://u:{enc}@127.0.0.1:1/0#{enc}"),
        format!("redis://u:{enc}@127.0.0.1:1?namespace=x&max_entry_bytes={enc}"),
        format!("redis://{enc}@127.0.0.1:1"),
    ];
    let decoded_forms = [
        secret.to_string(),
        enc.clone(),
        "nt\\\"er2".to_string(),
        "Hu\\\\nt".to_string(),
        "er2é".to_string(),
        "er2\\u{e9}".to_string(),
        "Hu%5Cnt".to_string(),
        "er2%C3%A9".to_string(),
    ];
    let mut leaks = Vec::new();
    for url in &forms {
        let mut seen = Vec::new();
        match Cache::from_url(url).await {
            Err(e) => {
                seen.push(format!("{e}"));
                seen.push(format!("{e:?}"));
            }
            Ok(cache) => {
                seen.push(format!("{cache:?}"));
                let _ = cache.get::<u32>("k").await.map_err(|e| {
                    seen.push(format!("{e}"));
                    seen.push(format!("{e:?}"));
                });
                let _ = cache.set("k", &1u32, Duration::from_secs(1)).await.map_err(|e| {
                    seen.push(format!("{e}"));
                    seen.push(format!("{e:?}"));
                });
            }
        }
        for text in seen {
            for f in &decoded_forms {
                if text.contains(f.as_str()) {
                    leaks.push(format!("{url}\n  -> {text}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}

// ------------------------------------------------- backends without tickets

/// A third-party backend written against the public trait: `Lookup::new`
/// ("a read that found value (or nothing) with no ticket"), `ticket:
/// Option<&Ticket>` in `set`. Tickets are optional in the API.
#[derive(Debug, Default)]
struct PlainMap {
    map: std::sync::Mutex<std::collections::HashMap<String, bytes::Bytes>>,
    sets: AtomicUsize,
}

impl cacheruntime::Backend for PlainMap {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<cacheruntime::backend::Lookup, cacheruntime::Error>>
    {
        let v = self.map.lock().unwrap().get(key).cloned();
        Box::pin(async move { Ok(cacheruntime::backend::Lookup::new(v)) })
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        _ttl: Duration,
        _ticket: Option<&'a cacheruntime::backend::Ticket>,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().insert(key.to_owned(), value);
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.map.lock().unwrap().remove(key);
        Box::pin(async { Ok(()) })
    }
    fn invalidate_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.map.lock().unwrap().retain(|k, _| !k.starts_with(prefix));
        Box::pin(async { Ok(()) })
    }
}

/// A store that answers reads without a ticket is never written by
/// get-or-compute: `Flights::join` returns `Role::Alone` for `None`, which
/// computes and returns without storing; every call is a miss, no call is
/// ever single-flighted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_without_tickets_never_caches() {
    let store = Arc::new(PlainMap::default());
    let cache = Cache::builder().backend(store.clone()).build().unwrap();
    let p = Policy::new().ttl(Duration::from_secs(60));
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let r = runs.clone();
        let v: u32 = cache
            .get_or_compute("k", &p, move || async move {
                r.fetch_add(1, Ordering::SeqCst);
                5
            })
            .await;
        assert_eq!(v, 5);
    }
    assert_eq!(
        (runs.load(Ordering::SeqCst), store.sets.load(Ordering::SeqCst)),
        (1, 1),
        "computations and store writes"
    );
}

// ------------------------------------------------------------- default keys

/// Claim: default keys start with the function's full path (`type_name` of
/// a closure made in its body), so functions never share them. Two
/// functions of the same name in two block scopes of one function (or in
/// two closures of it) have the same `type_name` path: they share keys,
/// and the second is answered with the first one's values.
async fn two_blocks(x: u32) -> (u32, u32) {
    let a = {
        #[cacheruntime::cached(ttl = 60)]
        async fn inner(x: u32) -> u32 {
            x + 1
        }
        inner(x).await
    };
    let b = {
        #[cacheruntime::cached(ttl = 60)]
        async fn inner(x: u32) -> u32 {
            x + 1000
        }
        inner(x).await
    };
    (a, b)
}

#[tokio::test]
async fn same_named_functions_in_two_blocks_share_default_keys() {
    assert_eq!(two_blocks(1).await, (2, 1001));
}

// ----------------------------------------------------- cancelled lock taker

/// Claim: store locks are released if the holder is cancelled. A caller
/// cancelled while its `SET NX` is in flight (its own future dropped by
/// the application's timeout, not the op timeout) never gets a HeldLock:
/// the request still executes on the server and the lock stays for its
/// whole TTL, stalling every other process's cold miss of the key.
/// (CLIENT PAUSE WRITE holds the SET NX on the server while letting the
/// read through, standing in for a slow network.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancelled_while_taking_the_lock_leaves_it_held() {
    let server = support::RedisServer::start();
    let mk = || {
        Cache::builder()
            .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
            .op_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (a, b) = (mk(), mk());
    let lock_ttl = Duration::from_secs(6);
    let p = Policy::new().ttl(Duration::from_secs(60)).lock_ttl(lock_ttl);
    // Counters exist, so A's read is one MGET.
    assert_eq!(a.get::<u32>("grp:k").await.unwrap(), None);
    assert_eq!(b.get::<u32>("grp:k").await.unwrap(), None);
    server.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(400),
        a.get_or_compute("grp:k", &p, || async { 1u32 }),
    )
    .await;
    assert!(cancelled.is_err(), "A's call was to be cancelled by the app");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    let got = b.get_or_compute("grp:k", &p, || async { 2u32 }).await;
    assert_eq!(got, 2);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "B's cold miss waited {:?} for a lock nobody holds (lock_waits {}, lock_timeouts {})",
        started.elapsed(),
        b.stats().lock_waits,
        b.stats().lock_timeouts
    );
}

// ------------------------------------------------- restart from a snapshot

/// README: "eviction or a restart without persistence can only cost
/// misses". Not claimed, but worth pinning: a restart *with* persistence
/// (Redis' default config snapshots RDB; AOF everysec loses up to 1 s)
/// rolls counters and entries back together, and a value invalidated
/// before the crash is served again after `invalidate_prefix` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_restart_from_snapshot_resurrects_invalidated_value() {
    let mut server = support::RedisServer::start();
    let a = redis_cache(&server.url(), None);
    let p = Policy::new().ttl(Duration::from_secs(600));
    assert_eq!(a.get_or_compute("grp:k", &p, || async { 1u32 }).await, 1);
    server.cli(&["SAVE"]); // a periodic RDB snapshot
    a.invalidate_prefix("grp:").await.unwrap();
    server.kill();
    server.restart(); // loads dump.rdb from its dir
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = redis_cache(&server.url(), None);
    let got = b.get_or_compute("grp:k", &p, || async { 2u32 }).await;
    assert_eq!(got, 2, "value computed before a returned invalidation served after restart");
}
