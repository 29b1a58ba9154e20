//! The Memcached backend against real `memcached` processes. One binary.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::Backend;
use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
use cacheruntime::{cached, Cache, Error};
use futures::StreamExt as _;
use support::{MemcachedServer, StallProxy};

#[derive(Debug, PartialEq)]
struct Upstream;

#[cached(key = "author:{author_id}:top_books", ttl = 600, cache = cache)]
async fn top_books(cache: &Cache, author_id: i64) -> Result<Vec<i64>, Upstream> {
    Ok(vec![author_id, author_id * 3])
}

fn cache_on(servers: &[&MemcachedServer]) -> Cache {
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new(addrs)).unwrap())
        .op_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_round_trip_and_expiry() {
    let server = MemcachedServer::start();
    let cache = Cache::from_url(&format!("memcached://{}", server.addr()))
        .await
        .unwrap();
    assert_eq!(top_books(&cache, 2).await, Ok(vec![2, 6]));
    assert_eq!(top_books(&cache, 2).await, Ok(vec![2, 6]));
    // This cache's own count: other tests call the function meanwhile.
    assert_eq!(cache.stats().computations, 1);
    assert_eq!(cache.stats().hits, 1);
    // The server expires entries by their TTL (whole seconds).
    cache
        .set("short", &1u8, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(cache.get::<u8>("short").await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(cache.get::<u8>("short").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_over_thirty_days_is_kept_not_expired_at_once() {
    let server = MemcachedServer::start();
    let cache = cache_on(&[&server]);
    // Sent as a relative 40-day TTL, Memcached would read it as a date in
    // 1970 and drop the item at once.
    cache
        .set("long-lived", &"kept", Duration::from_secs(40 * 86_400))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<String>("long-lived").await.unwrap().as_deref(),
        Some("kept")
    );
}

/// Memcached expires items at the ticks of its own one-second clock: sent
/// as "1 second", an item written just before a tick was gone a
/// millisecond later. Ten writes spread over a second put some just before
/// a tick whatever the clock's phase; each must be served for its TTL and
/// not after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_lives_its_ttl_whatever_the_phase_of_the_servers_clock() {
    let server = MemcachedServer::start();
    let cache = cache_on(&[&server]);
    let ttl = Duration::from_secs(1);
    let writes = (0..10u64).map(|i| {
        let cache = cache.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let key = format!("phase:{i}");
            cache.set(&key, &i, ttl).await.unwrap();
            let written = Instant::now();
            tokio::time::sleep(Duration::from_millis(600)).await;
            let before = cache.get::<u64>(&key).await.unwrap();
            let past_ttl = written + ttl + Duration::from_millis(50);
            tokio::time::sleep_until(past_ttl.into()).await;
            let after = cache.get::<u64>(&key).await.unwrap();
            (i, before, after)
        }
    });
    for (i, before, after) in futures::future::join_all(writes).await {
        assert_eq!(
            before,
            Some(i),
            "write {i} was gone 600 ms into its 1 s TTL"
        );
        assert_eq!(after, None, "write {i} was still served after its 1 s TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_unusual_keys_round_trip_distinctly() {
    let server = MemcachedServer::start();
    let cache = cache_on(&[&server]);
    let long = format!("user:{}:feed", "x".repeat(400));
    let spaced = "user:a b\tc:feed".to_string();
    cache
        .set(&long, &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    cache
        .set(&format!("{long}2"), &2u8, Duration::from_secs(60))
        .await
        .unwrap();
    cache
        .set(&spaced, &3u8, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get::<u8>(&long).await.unwrap(), Some(1));
    assert_eq!(cache.get::<u8>(&format!("{long}2")).await.unwrap(), Some(2));
    assert_eq!(cache.get::<u8>(&spaced).await.unwrap(), Some(3));
    // Prefix invalidation still reaches hashed keys.
    cache.invalidate_prefix("user:").await.unwrap();
    assert_eq!(cache.get::<u8>(&long).await.unwrap(), None);
    assert_eq!(cache.get::<u8>(&spaced).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_invalidation_reaches_exactly_the_right_keys() {
    let server = MemcachedServer::start();
    let cache = cache_on(&[&server]);
    let ttl = Duration::from_secs(60);
    for k in [
        "author:42:a",
        "author:42:b:c",
        "author:420:a",
        "author:4",
        "book:1",
    ] {
        cache.set(k, &k.to_string(), ttl).await.unwrap();
    }
    cache.invalidate_prefix("author:42:").await.unwrap();
    let has = |k: &'static str| {
        let cache = cache.clone();
        async move { cache.get::<String>(k).await.unwrap().is_some() }
    };
    assert!(!has("author:42:a").await);
    assert!(!has("author:42:b:c").await);
    assert!(has("author:420:a").await);
    assert!(has("author:4").await);
    assert!(has("book:1").await);
    // Written after the invalidation: visible again.
    cache
        .set("author:42:a", &"new".to_string(), ttl)
        .await
        .unwrap();
    assert!(has("author:42:a").await);
    let err = cache.invalidate_prefix("").await.unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
    assert!(matches!(
        cache.invalidate_prefix("author:4").await,
        Err(Error::InvalidPrefix { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_computed_before_an_invalidation_never_shows_after_it() {
    let server = MemcachedServer::start();
    let backend = MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap();
    support::stale_write_stays_hidden(&backend).await;
    support::partial_prefixes_are_refused(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_round_trip_and_invalidate() {
    let server = MemcachedServer::start();
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap())
        .build()
        .unwrap();
    support::long_keys_round_trip_and_invalidate(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_several_servers_and_stay_readable() {
    let servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let url = format!(
        "memcached://{}",
        servers
            .iter()
            .map(|s| s.addr())
            .collect::<Vec<_>>()
            .join(",")
    );
    let cache = Cache::from_url(&url).await.unwrap();
    for i in 0..60 {
        cache
            .set(&format!("t{i}:item"), &i, Duration::from_secs(60))
            .await
            .unwrap();
    }
    for i in 0..60 {
        assert_eq!(
            cache.get::<i32>(&format!("t{i}:item")).await.unwrap(),
            Some(i)
        );
    }
    // Each key is seven items: its entry (on the server its whole key maps
    // to) and three copies (one per server, on a pool of three) of its
    // prefix's counter and of its own.
    let per_server: Vec<u64> = servers.iter().map(|s| s.items()).collect();
    assert_eq!(per_server.iter().sum::<u64>(), 420, "{per_server:?}");
    assert!(
        per_server.iter().all(|&n| n >= 120 + 10),
        "spread: {per_server:?}"
    );
    // The entries alone spread too.
    let entries: Vec<usize> = servers
        .iter()
        .map(|s| {
            memcached_keys(s.port)
                .iter()
                .filter(|k| k.starts_with("v:"))
                .count()
        })
        .collect();
    assert_eq!(entries.iter().sum::<usize>(), 60, "{entries:?}");
    assert!(entries.iter().all(|&n| n >= 10), "entries: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_survived_and_used_again_after_restart() {
    let mut server = MemcachedServer::start();
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap())
        .op_timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 3]));
    server.kill();
    for i in 0..20 {
        assert_eq!(top_books(&cache, i).await, Ok(vec![i, 3 * i]), "while down");
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = top_books(&cache, 77).await;
        let hits = cache.stats().hits;
        assert_eq!(top_books(&cache, 77).await, Ok(vec![77, 231]));
        if cache.stats().hits > hits {
            break;
        }
        assert!(Instant::now() < deadline, "not used again after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_values_are_not_stored_but_returned() {
    #[cached(key = "blob:{n}", ttl = 60, cache = cache)]
    async fn blob(cache: &Cache, n: usize) -> Vec<u8> {
        vec![7; n]
    }
    let server = MemcachedServer::start_with_item_max("1m");
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap())
        .max_entry_bytes(8 << 20)
        .op_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(blob(&cache, 2 << 20).await.len(), 2 << 20);
    assert_eq!(blob(&cache, 2 << 20).await.len(), 2 << 20);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.oversize, stats.errors),
        (0, 2, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_admit_one_holder_and_release_only_their_own() {
    let server = MemcachedServer::start();
    let backend = MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap();
    let ttl = Duration::from_secs(5);
    let (a, b) = (
        Bytes::from_static(b"token-a"),
        Bytes::from_static(b"token-b"),
    );
    assert!(backend
        .set_if_absent("lock:k", a.clone(), ttl)
        .await
        .unwrap());
    assert!(!backend
        .set_if_absent("lock:k", b.clone(), ttl)
        .await
        .unwrap());
    assert!(!backend.delete_if_equals("lock:k", &b).await.unwrap());
    assert!(backend.delete_if_equals("lock:k", &a).await.unwrap());
    assert!(backend.set_if_absent("lock:k", b, ttl).await.unwrap());
}

#[tokio::test]
async fn credentials_in_the_url_are_refused_with_the_reason() {
    let err = Cache::from_url("memcached://user:secret@127.0.0.1:11211")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no SASL") && !err.contains("secret"), "{err}");
}

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

/// A read that misses creates the key's counters; its own counter, which
/// no entry records, lives an hour (not `max_ttl`), so the counters of keys
/// no longer cached do not pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_counter_no_entry_records_lives_an_hour() {
    use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
    let server = MemcachedServer::start();
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(MemcachedConfig::new([server.addr()])).unwrap())
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // A read of a key that is not cached (Cache::get, or a computation
    // returning Err): nothing is written but the counters.
    assert_eq!(cache.get::<u32>("grp:k1").await.unwrap(), None);
    let own = memcached_ask(server.port, "mg x:grp:k1 t\r\n");
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

// ------------------------------------------------- issue 13: pools of servers

/// One `stats` figure of the server on `port`.
fn memcached_stat(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"stats\r\n").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"END\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the stats connection");
        out.extend_from_slice(&buf[..n]);
    }
    let prefix = format!("STAT {name} ");
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in stats"))
}

/// Every key stored on the server on `port` (`lru_crawler metadump all`).
fn memcached_keys(port: u16) -> Vec<String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"lru_crawler metadump all\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 16 << 10];
        while !out.ends_with(b"END\r\n") && !out.starts_with(b"BUSY") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "memcached closed the connection");
            out.extend_from_slice(&buf[..n]);
        }
        if out.ends_with(b"END\r\n") {
            return String::from_utf8_lossy(&out)
                .lines()
                .filter_map(|l| l.strip_prefix("key="))
                .map(|l| {
                    let raw = l.split(' ').next().unwrap_or("");
                    percent_encoding::percent_decode_str(raw)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect();
        }
        // BUSY: a crawl is running; ask again.
        assert!(Instant::now() < deadline, "metadump kept failing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pool_url(servers: &[&MemcachedServer], host: &str) -> String {
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| format!("{host}:{}", s.port))
        .collect();
    format!("memcached://{}", hosts.join(","))
}

/// Finding 11: with one server of three dead, the keys the other two hold
/// keep being served and their prefixes keep being invalidated; only the
/// dead server's keys compute (and fail fast once its breaker opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_server_leaves_the_keys_of_the_others_cached() {
    let mut servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let url = pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1");
    let cache = Cache::from_url(&format!("{url}?op_timeout=500ms"))
        .await
        .unwrap();
    let n = 90;
    for i in 0..n {
        cache
            .set(&format!("t{i}:top"), &i, Duration::from_secs(600))
            .await
            .unwrap();
    }
    // The keys whose entry the doomed server holds.
    let doomed = memcached_keys(servers[2].port);
    let on_doomed = |i: i32| doomed.iter().any(|k| k.ends_with(&format!("v:t{i}:top")));
    let healthy: Vec<i32> = (0..n).filter(|&i| !on_doomed(i)).collect();
    assert!(
        !healthy.is_empty() && healthy.len() < n as usize,
        "keys should spread over the servers: {} of {n} on the two kept",
        healthy.len()
    );
    servers[2].kill();
    let (mut hits, mut asked) = (0, 0);
    let mut failed_invalidations = Vec::new();
    for round in 0..3 {
        // A burst of requests for the dead server's keys, then the rest.
        for i in (0..n).filter(|i| !healthy.contains(i)) {
            let _ = cache.get::<i32>(&format!("t{i}:top")).await;
        }
        for &i in &healthy {
            asked += 1;
            if matches!(cache.get::<i32>(&format!("t{i}:top")).await, Ok(Some(v)) if v == i) {
                hits += 1;
            }
        }
        // Invalidate a few of the healthy keys' prefixes, then write again.
        for &i in healthy.iter().filter(|&&i| i % 7 == round) {
            if let Err(e) = cache.invalidate_prefix(&format!("t{i}:")).await {
                failed_invalidations.push(format!("t{i}: {e}"));
            }
            let _ = cache
                .set(&format!("t{i}:top"), &i, Duration::from_secs(600))
                .await;
        }
    }
    let rate = f64::from(hits) / f64::from(asked);
    assert!(
        hits == asked,
        "hit rate on the keys of the healthy servers fell to {rate:.2} ({hits} of {asked})"
    );
    assert!(
        failed_invalidations.is_empty(),
        "{} invalidations of healthy prefixes failed: {:?}",
        failed_invalidations.len(),
        &failed_invalidations[..failed_invalidations.len().min(3)]
    );
}

/// Finding 12: the keys of one template (with or without a namespace)
/// spread evenly over the servers, and invalidation still reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_one_template_spread_evenly_over_the_servers() {
    for namespace in ["", "shop"] {
        let servers = [
            MemcachedServer::start(),
            MemcachedServer::start(),
            MemcachedServer::start(),
        ];
        let mut url = pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1");
        url.push_str("?op_timeout=5s");
        if !namespace.is_empty() {
            url.push_str(&format!("&namespace={namespace}"));
        }
        let cache = Cache::from_url(&url).await.unwrap();
        let keys = 10_000;
        let writes = futures::stream::iter(0..keys).map(|i| {
            let cache = cache.clone();
            async move {
                cache
                    .set(&format!("author:{i}:top"), &i, Duration::from_secs(600))
                    .await
            }
        });
        let results: Vec<_> = writes.buffer_unordered(32).collect().await;
        assert!(results.iter().all(Result::is_ok), "writes failed");
        let items: Vec<u64> = servers.iter().map(|s| s.items()).collect();
        let mean = items.iter().sum::<u64>() as f64 / 3.0;
        assert!(
            items.iter().all(|&n| (n as f64 - mean).abs() <= 0.2 * mean),
            "namespace {namespace:?}: items per server {items:?}, mean {mean:.0}"
        );
        // An entry and the counters it is checked against stay consistent.
        cache.invalidate_prefix("author:7:").await.unwrap();
        assert_eq!(cache.get::<i32>("author:7:top").await.unwrap(), None);
        assert_eq!(cache.get::<i32>("author:8:top").await.unwrap(), Some(8));
        cache.delete("author:9:top").await.unwrap();
        assert_eq!(cache.get::<i32>("author:9:top").await.unwrap(), None);
        cache.invalidate_prefix("author:").await.unwrap();
        assert_eq!(cache.get::<i32>("author:8:top").await.unwrap(), None);
    }
}

/// Finding 13: processes that write the same servers differently (names,
/// order) route every key alike, so an invalidation made by one is seen
/// by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_written_differently_route_alike() {
    let servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let by_ip = Cache::from_url(&pool_url(
        &[&servers[0], &servers[1], &servers[2]],
        "127.0.0.1",
    ))
    .await
    .unwrap();
    let by_name = Cache::from_url(&pool_url(
        &[&servers[2], &servers[0], &servers[1]],
        "localhost",
    ))
    .await
    .unwrap();
    let ttl = Duration::from_secs(600);
    let mut stale = Vec::new();
    for i in 0..30 {
        let key = format!("p{i}:price");
        by_ip.set(&key, &1, ttl).await.unwrap();
        assert_eq!(by_ip.get::<i32>(&key).await.unwrap(), Some(1));
        by_name.invalidate_prefix(&format!("p{i}:")).await.unwrap();
        if by_ip.get::<i32>(&key).await.unwrap() == Some(1) {
            stale.push(key);
        }
    }
    assert!(stale.is_empty(), "served after invalidation: {stale:?}");
}

/// Finding 13: growing a pool and shrinking it back (or the reverse, or
/// processes on both pools at once during a rolling change) never serves a
/// value invalidated or deleted in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_grown_and_shrunk_never_serves_an_invalidated_value() {
    let servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let (two_url, three_url) = (
        pool_url(&[&servers[0], &servers[1]], "127.0.0.1"),
        pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1"),
    );
    let two = || Cache::from_url(&two_url);
    let three = || Cache::from_url(&three_url);
    let ttl = Duration::from_secs(600);
    let mut stale = Vec::new();
    // 2 -> 3 -> 2, then 3 -> 2 -> 3.
    for (round, (before, during, after)) in [
        (
            two().await.unwrap(),
            three().await.unwrap(),
            two().await.unwrap(),
        ),
        (
            three().await.unwrap(),
            two().await.unwrap(),
            three().await.unwrap(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        for i in 0..30 {
            let key = format!("r{round}k{i}:price");
            before.set(&key, &1, ttl).await.unwrap();
            assert_eq!(before.get::<i32>(&key).await.unwrap(), Some(1));
        }
        for i in 0..30 {
            let key = format!("r{round}k{i}:price");
            if i % 2 == 0 {
                during
                    .invalidate_prefix(&format!("r{round}k{i}:"))
                    .await
                    .unwrap();
            } else {
                during.delete(&key).await.unwrap();
            }
            // Processes still on the old pool see it at once too.
            if before.get::<i32>(&key).await.unwrap() == Some(1) {
                stale.push(format!("{key} (old pool, during)"));
            }
            during.set(&key, &2, ttl).await.unwrap();
        }
        for i in 0..30 {
            let key = format!("r{round}k{i}:price");
            if after.get::<i32>(&key).await.unwrap() == Some(1) {
                stale.push(format!("{key} (after)"));
            }
        }
    }
    assert!(stale.is_empty(), "{} stale: {stale:?}", stale.len());
}

/// Finding 14: a burst of calls queues for a bounded set of connections
/// per server (16 by default, `max_connections` in the URL) within the op
/// timeout, instead of opening one per call until the server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_stays_within_the_connection_cap() {
    for (query, cap) in [("", 16u64), ("&max_connections=4", 4)] {
        let server = MemcachedServer::start();
        let cache = Cache::from_url(&format!(
            "memcached://{}?op_timeout=5s{query}",
            server.addr()
        ))
        .await
        .unwrap();
        cache
            .set("warm", &0, Duration::from_secs(60))
            .await
            .unwrap();
        let before = memcached_stat(server.port, "total_connections");
        let calls = (0..2_000).map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<i32>(&format!("burst:{i}")).await.map(|_| ()) })
        });
        let results = futures::future::join_all(calls).await;
        let errors = results
            .into_iter()
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count();
        // Minus the `stats` connections of this test.
        let opened = memcached_stat(server.port, "total_connections") - before - 1;
        assert_eq!(errors, 0, "cap {cap}: {errors} of 2000 calls failed");
        assert!(opened <= cap, "cap {cap}: {opened} connections opened");
    }
}

/// Finding 15: a `max_ttl` Memcached cannot keep (under a second, or past
/// its 32-bit clock) is refused when the cache is built, with the reason;
/// no TTL a call passes can make it panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ttl_out_of_range_is_refused_at_build_and_no_call_panics() {
    let server = MemcachedServer::start();
    for bad in ["500ms", "0", "999999d"] {
        let err = Cache::from_url(&format!("memcached://{}?max_ttl={bad}", server.addr()))
            .await
            .err()
            .unwrap_or_else(|| panic!("max_ttl={bad} was accepted"))
            .to_string();
        assert!(err.contains("max_ttl"), "{bad}: {err}");
    }
    let err = MemcachedBackend::new(
        MemcachedConfig::new([server.addr()]).max_ttl(Duration::from_millis(999)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_ttl"), "{err}");
    // The smallest and the largest accepted value: every TTL is taken (an
    // item living one second may be gone at once: Memcached's clock ticks
    // in whole seconds).
    for ok in ["1s", "3650d"] {
        let cache = Cache::from_url(&format!("memcached://{}?max_ttl={ok}", server.addr()))
            .await
            .unwrap();
        for ttl in [
            Duration::from_millis(1),
            Duration::from_secs(60),
            Duration::MAX,
        ] {
            cache.set("ttl:k", &1, ttl).await.unwrap();
            let got = cache.get::<i32>("ttl:k").await.unwrap();
            if ok != "1s" && ttl >= Duration::from_secs(60) {
                assert_eq!(got, Some(1), "{ok} {ttl:?}");
            }
        }
        cache.invalidate_prefix("ttl:").await.unwrap();
        cache.delete("ttl:k").await.unwrap();
    }
}

/// The pid of the `memcached` listening on `port` (from `/proc`).
fn memcached_pid(port: u16) -> i32 {
    let wanted = format!("-p\0{port}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("memcached\0") && c.contains(&wanted)
            })
        })
        .expect("memcached's pid")
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A server that hangs (stopped, connections open but unanswered) costs
/// the calls that need it an op timeout only until its breaker opens; then
/// they fail at once, and the other servers' keys are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_skipped_after_a_few_timeouts() {
    let servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let url = pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1");
    let cache = Cache::from_url(&format!("{url}?op_timeout=200ms"))
        .await
        .unwrap();
    for i in 0..60 {
        cache
            .set(&format!("h{i}:top"), &i, Duration::from_secs(600))
            .await
            .unwrap();
    }
    let hung = memcached_keys(servers[2].port);
    let (stuck, healthy): (Vec<i32>, Vec<i32>) =
        (0..60).partition(|i| hung.iter().any(|k| k.ends_with(&format!("v:h{i}:top"))));
    let pid = memcached_pid(servers[2].port);
    signal(pid, "-STOP");
    // A few calls wait out the op timeout, then the breaker opens.
    for &i in stuck.iter().cycle().take(8) {
        let _ = cache.get::<i32>(&format!("h{i}:top")).await;
    }
    let started = Instant::now();
    for &i in &stuck {
        assert!(cache.get::<i32>(&format!("h{i}:top")).await.is_err());
    }
    let per_call = started.elapsed() / stuck.len() as u32;
    let mut hits = 0;
    for &i in &healthy {
        if cache.get::<i32>(&format!("h{i}:top")).await.unwrap() == Some(i) {
            hits += 1;
        }
    }
    signal(pid, "-CONT");
    assert!(
        per_call < Duration::from_millis(50),
        "the hung server's keys took {per_call:?} each once its breaker was open"
    );
    assert_eq!(
        hits,
        healthy.len(),
        "the other servers' keys stopped hitting"
    );
    assert!(cache.stats().circuit_skips > 0);
}

/// A server that cannot be resolved fails calls with its name and the fix
/// (placement needs every server), then fails them at once for a
/// cool-down; the same server written twice is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_be_placed_says_why() {
    let server = MemcachedServer::start();
    let unresolvable = Cache::builder()
        .backend(
            MemcachedBackend::new(MemcachedConfig::new([
                server.addr(),
                "no-such-host.invalid:11211".into(),
            ]))
            .unwrap(),
        )
        .build()
        .unwrap();
    let err = unresolvable.get::<i32>("k").await.unwrap_err().to_string();
    assert!(
        err.contains("cannot resolve") && err.contains("no-such-host.invalid:11211"),
        "{err}"
    );
    let err = unresolvable.get::<i32>("k").await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err}");

    let twice = Cache::from_url(&format!(
        "memcached://127.0.0.1:{0},localhost:{0}",
        server.port
    ))
    .await
    .unwrap();
    let err = twice.get::<i32>("k").await.unwrap_err().to_string();
    assert!(err.contains("are one server"), "{err}");
}

// ------------------------------------------- quorum copies of the counters

/// Breakers of the pools behind stall proxies: open after this many
/// failures of a server, for 300 ms.
const THRESHOLD: u32 = 3;

/// A pool of `n` servers, each behind a stall proxy, and a cache on it
/// (op timeout 200 ms).
fn proxied_pool(n: usize) -> (Vec<MemcachedServer>, Vec<StallProxy>, Cache) {
    let servers: Vec<MemcachedServer> = (0..n).map(|_| MemcachedServer::start()).collect();
    let proxies: Vec<StallProxy> = servers.iter().map(|s| StallProxy::start(s.port)).collect();
    let cache = Cache::builder()
        .backend(
            MemcachedBackend::new(
                MemcachedConfig::new(proxies.iter().map(StallProxy::addr))
                    .circuit_breaker(THRESHOLD, Duration::from_millis(300)),
            )
            .unwrap(),
        )
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    (servers, proxies, cache)
}

/// Calls `get` on `key` until a stalled server it needs has failed often
/// enough for its breaker to open (each call waits out the op timeout).
async fn trip_breaker(cache: &Cache, key: &str) {
    for _ in 0..THRESHOLD + 1 {
        let _ = cache.get::<String>(key).await;
    }
}

/// Writes `value` under `key`, retrying: the first calls also connect, on
/// a busy machine, within a 200 ms op timeout.
async fn write_retrying(cache: &Cache, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache
        .set(key, &value.to_string(), Duration::from_secs(600))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no write of {key}");
    }
}

/// Waits until every server answers `key`'s reads again.
async fn until_answered(cache: &Cache, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.get::<String>(key).await.is_err() {
        assert!(Instant::now() < deadline, "{key}: not answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the server holding `name`.
fn holder(servers: &[MemcachedServer], name: &str) -> usize {
    servers
        .iter()
        .position(|s| memcached_ask(s.port, &format!("mg {name}\r\n")).starts_with("HD"))
        .unwrap_or_else(|| panic!("{name} is on none of the servers"))
}

/// The value of `name` on the server on `port`, if there.
fn stored(port: u16, name: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("get {name}\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"END\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed the connection");
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines()
        .nth(1)
        .filter(|_| text.starts_with("VALUE"))
        .map(str::to_owned)
}

/// Review finding (double fault): a pool of two servers behind stall
/// proxies. The server holding the entry stalls until its breaker opens;
/// the prefix is invalidated, which can reach only the other server's copy
/// of its counter; the first server comes back (its copy never bumped) and
/// the second stalls, so a read sees only the first server.
///
/// Before: the invalidation returned `Ok` having bumped one copy, and the
/// read served the value written before it. Now, on two servers, an
/// invalidation needs both copies (it returns `Err`, saying to retry, and
/// the caller retries until `Ok`); on three it needs two of three, and a
/// read takes the greatest of at least two copies, so neither pool serves
/// the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_fault_never_serves_an_invalidated_value() {
    let mut failures = Vec::new();
    for pool in [2usize, 3] {
        let (servers, proxies, cache) = proxied_pool(pool);
        let key = "df:k";
        write_retrying(&cache, key, "old").await;
        assert_eq!(
            cache.get::<String>(key).await.unwrap().as_deref(),
            Some("old")
        );
        // The first fault: the entry's server stalls until its breaker opens.
        let first = holder(&servers, "v:df:k");
        proxies[first].stall();
        trip_breaker(&cache, key).await;
        let invalidated = cache.invalidate_prefix("df:").await;
        if pool == 2 && invalidated.is_ok() {
            failures.push(format!(
                "pool of {pool}: the invalidation reached one of two copies and returned Ok"
            ));
        }
        if let Err(e) = &invalidated {
            let said = e.to_string();
            if pool == 2 && !said.contains("retry") {
                failures.push(format!(
                    "pool of {pool}: the error does not say to retry: {said}"
                ));
            }
            if pool == 3 {
                failures.push(format!("pool of {pool}: one server down failed it: {said}"));
            }
        }
        // The first server comes back; a caller that was told the
        // invalidation may not have happened retries it until it lands.
        proxies[first].resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut landed = invalidated.is_ok();
        while !landed {
            tokio::time::sleep(Duration::from_millis(50)).await;
            landed = cache.invalidate_prefix("df:").await.is_ok();
            assert!(
                Instant::now() < deadline,
                "pool of {pool}: the retry never landed"
            );
        }
        // Every server answers again (the first one's breaker closed).
        until_answered(&cache, key).await;
        // The second fault: another server stalls until its breaker opens.
        let second = (first + 1) % pool;
        proxies[second].stall();
        trip_breaker(&cache, key).await;
        let mut answered = 0;
        for _ in 0..3 {
            match cache.get::<String>(key).await {
                Ok(Some(v)) => {
                    failures.push(format!(
                        "pool of {pool}: served {v:?} after the invalidation"
                    ));
                    break;
                }
                Ok(None) => answered += 1,
                Err(_) => {}
            }
        }
        // The read was made, from the first server (and the third).
        if answered == 0 && failures.is_empty() {
            failures.push(format!(
                "pool of {pool}: no read answered in the second fault"
            ));
        }
        proxies[second].resume();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Review finding F4: a name lookup slower than the op timeout while the
/// pool is set up. Before, the op timeout cancelled the setup before a
/// failure was recorded, so every call started a new blocking lookup and
/// waited out the op timeout. Now one setup runs in the background, which
/// no caller's timeout cancels; once a caller has given up on it, calls
/// fail at once until it ends; a failed setup is recorded and calls fail
/// at once for a cool-down, then one starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lookup_sets_the_pool_up_once_and_calls_fail_fast_meanwhile() {
    use std::net::ToSocketAddrs as _;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = MemcachedServer::start();
    let lookups = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(AtomicBool::new(true));
    let lookup = Duration::from_millis(1000);
    let config = MemcachedConfig::new([format!("localhost:{}", server.port)])
        .circuit_breaker(5, Duration::from_millis(500))
        .resolver({
            let (lookups, fail) = (lookups.clone(), fail.clone());
            move |addr| {
                lookups.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(lookup);
                if fail.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("the name server timed out"));
                }
                addr.to_socket_addrs().map(Iterator::collect)
            }
        });
    let cache = Cache::builder()
        .backend(MemcachedBackend::new(config).unwrap())
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut problems = Vec::new();
    // A lookup that ends in failure, then one that succeeds, both slow.
    for (round, ends_in) in ["failure", "success"].into_iter().enumerate() {
        let started = Instant::now();
        // The call that starts the setup waits for it up to its op timeout.
        let first = cache.get::<i32>("dns:k").await;
        assert!(first.is_err(), "{ends_in}: {first:?}");
        // Then calls fail at once while it runs, and start no lookup.
        let mut slowest = Duration::ZERO;
        while started.elapsed() < lookup - Duration::from_millis(200) {
            let call = Instant::now();
            let got = cache.get::<i32>("dns:k").await;
            assert!(got.is_err(), "{ends_in}: {got:?}");
            slowest = slowest.max(call.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if slowest > Duration::from_millis(50) {
            problems.push(format!(
                "{ends_in}: a call during the lookup took {slowest:?}"
            ));
        }
        let n = lookups.load(Ordering::SeqCst);
        if n != round + 1 {
            problems.push(format!(
                "{ends_in}: {n} lookups started (expected {})",
                round + 1
            ));
        }
        // The lookup ends.
        tokio::time::sleep((lookup + Duration::from_millis(100)).saturating_sub(started.elapsed()))
            .await;
        if round == 0 {
            // The failure is recorded: calls fail at once for a cool-down.
            let call = Instant::now();
            let err = cache.get::<i32>("dns:k").await.unwrap_err();
            if !matches!(err, Error::CircuitOpen { .. })
                || call.elapsed() > Duration::from_millis(50)
            {
                problems.push(format!("after the failure: {err} in {:?}", call.elapsed()));
            }
            fail.store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    // Set up: served, with no further lookup.
    let served = match cache.set("dns:k", &7, Duration::from_secs(60)).await {
        Ok(()) => cache.get::<i32>("dns:k").await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if served != Ok(Some(7)) {
        problems.push(format!("once set up: {served:?}"));
    }
    let n = lookups.load(Ordering::SeqCst);
    if n != 2 {
        problems.push(format!("{n} lookups in all (expected 2)"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A bump that reached a majority but not every copy (one server stalled),
/// then the loss of the copies it reached (their servers restarted): the
/// copy it missed must not bring the old value back. The next read with
/// every server up brings that copy up to the counter's value, in the
/// background; before that repair, the entry written before the
/// invalidation was served again once both servers had restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_copies_a_bump_reached_never_brings_the_old_value_back() {
    let (mut servers, proxies, cache) = proxied_pool(3);
    let key = "rp:k";
    write_retrying(&cache, key, "old").await;
    // The entry's server misses the invalidation, which reaches the others.
    let missed = holder(&servers, "v:rp:k");
    proxies[missed].stall();
    trip_breaker(&cache, key).await;
    cache.invalidate_prefix("rp:").await.unwrap();
    proxies[missed].resume();
    until_answered(&cache, key).await;
    let reached: Vec<usize> = (0..3).filter(|&i| i != missed).collect();
    let bumped = stored(servers[reached[0]].port, "g:rp:").expect("the bumped copy");
    // A read with every server up repairs the copy the bump missed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(servers[missed].port, "g:rp:").as_ref() != Some(&bumped) {
        assert!(
            Instant::now() < deadline,
            "the missed copy was never repaired"
        );
        let _ = cache.get::<String>(key).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The servers the bump reached lose everything.
    for &i in &reached {
        servers[i].restart();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get::<String>(key).await {
            Ok(got) => {
                assert_eq!(got, None, "the invalidated value came back");
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "never answered"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What servers down do, by pool size (README, Memcached): each counter has
/// `min(3, servers)` copies; an invalidation needs a majority of them, a
/// read the rest (one of two, two of three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_servers_down_do_depends_on_the_pool_size() {
    let mut problems = Vec::new();
    for n in 1..=3usize {
        let mut servers: Vec<MemcachedServer> = (0..n).map(|_| MemcachedServer::start()).collect();
        let cache = Cache::from_url(&format!(
            "{}?op_timeout=500ms",
            pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1")
        ))
        .await
        .unwrap();
        let keys = 30;
        for i in 0..keys {
            cache
                .set(&format!("ps{i}:k"), &i, Duration::from_secs(600))
                .await
                .unwrap();
        }
        let homes: Vec<usize> = (0..keys)
            .map(|i| holder(&servers, &format!("v:ps{i}:k")))
            .collect();
        for down in 1..n.min(2) + 1 {
            servers[down - 1].kill();
            // The keys whose entry a live server holds.
            let live: Vec<i32> = (0..keys).filter(|&i| homes[i as usize] >= down).collect();
            let mut hits = 0;
            for &i in &live {
                if let Ok(Some(v)) = cache.get::<i32>(&format!("ps{i}:k")).await {
                    hits += usize::from(v == i);
                }
            }
            let invalidated = match live.first() {
                Some(i) => cache.invalidate_prefix(&format!("ps{i}:")).await,
                None => cache.invalidate_prefix("ps0:").await,
            };
            // Reads need R copies of each counter, invalidations W.
            let (reads, invalidations) = match (n, down) {
                (2, 1) | (3, 1) => (true, n == 3),
                _ => (false, false),
            };
            let said = format!("{n} servers, {down} down");
            if reads && hits != live.len() {
                problems.push(format!("{said}: {hits} of {} live keys hit", live.len()));
            }
            if !reads && hits > 0 {
                problems.push(format!("{said}: {hits} hits with counters unknown"));
            }
            match invalidated {
                Ok(()) if !invalidations => {
                    problems.push(format!("{said}: an invalidation without a majority was Ok"))
                }
                Err(e) if invalidations => {
                    problems.push(format!("{said}: the invalidation failed: {e}"))
                }
                Err(e) if n > 1 && !e.to_string().contains("retry") => {
                    problems.push(format!("{said}: the error does not say to retry: {e}"))
                }
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Many callers creating one counter at once (the first writes under a new
/// prefix, on a pool of three) must settle on one value: a caller that
/// found some copies added and others not yet must not record a value that
/// a copy landing later outgrows, which made its entry a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_creating_a_counter_at_once_settle_on_one_value() {
    let servers = [
        MemcachedServer::start(),
        MemcachedServer::start(),
        MemcachedServer::start(),
    ];
    let url = pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1");
    let cache = Cache::from_url(&format!("{url}?op_timeout=5s"))
        .await
        .unwrap();
    let (prefixes, per_prefix) = (40, 32);
    let keys: Vec<String> = (0..prefixes)
        .flat_map(|p| (0..per_prefix).map(move |i| format!("cc{p}:k{i}")))
        .collect();
    let writes = futures::stream::iter(keys.iter().enumerate()).map(|(i, key)| {
        let cache = cache.clone();
        async move { cache.set(key, &i, Duration::from_secs(600)).await }
    });
    let results: Vec<_> = writes.buffer_unordered(per_prefix).collect().await;
    assert!(results.iter().all(Result::is_ok), "writes failed");
    let mut missed = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if cache.get::<usize>(key).await.unwrap() != Some(i) {
            missed.push(key.clone());
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} entries written are misses: {:?}",
        missed.len(),
        keys.len(),
        &missed[..missed.len().min(5)]
    );
}

/// `delete_many` over a pool of three needs, like `delete`, a majority of
/// each key's counter copies: with one server down it deletes (the keys
/// read as misses after it) in its two round trips; with two down it fails
/// and says to retry, rather than report a delete that readers may miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_many_keeps_the_quorum_of_delete() {
    let mut servers: Vec<MemcachedServer> = (0..3).map(|_| MemcachedServer::start()).collect();
    let cache = Cache::from_url(&format!(
        "{}?op_timeout=500ms",
        pool_url(&servers.iter().collect::<Vec<_>>(), "127.0.0.1")
    ))
    .await
    .unwrap();
    let keys: Vec<String> = (0..12).map(|i| format!("dm{i}:k")).collect();
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, Duration::from_secs(600)).await.unwrap();
    }
    let live: Vec<&str> = keys
        .iter()
        .filter(|k| holder(&servers, &format!("v:{k}")) != 0)
        .map(String::as_str)
        .collect();
    servers[0].kill();
    assert!(!live.is_empty());
    cache.delete_many(&live).await.unwrap();
    for got in cache.get_many::<usize>(&live).await.unwrap() {
        assert_eq!(got, None);
    }
    servers[1].kill();
    let err = cache.delete_many(&live).await.unwrap_err();
    assert!(err.to_string().contains("retry"), "{err}");
}

#[cached(key = "feed:{id}", ttl = 600, cache = cache)]
async fn feed(cache: &Cache, id: i64) -> Result<String, Upstream> {
    Ok(format!("feed {id}"))
}

/// How many exchanges each proxy forwarded during `call`, once the calls
/// it left running in the background (a lock released after a hit) are
/// done: no lock is left on `servers`.
async fn exchanges_of<F: std::future::Future>(
    servers: &[MemcachedServer],
    proxies: &[StallProxy],
    call: F,
) -> Vec<u64> {
    let before: Vec<u64> = proxies.iter().map(StallProxy::exchanges).collect();
    call.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers
        .iter()
        .any(|s| memcached_keys(s.port).iter().any(|k| k.starts_with("l:")))
    {
        assert!(Instant::now() < deadline, "a lock was left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxies
        .iter()
        .zip(before)
        .map(|(p, b)| p.exchanges() - b)
        .collect()
}

/// A cold miss costs two exchanges with each server it needs, in parallel:
/// the read, which takes the key's lock and adds a never-seen key's own
/// counter in the same exchange, and the write, which releases the lock.
/// Before, a never-seen key took six on its entry's server (the read, the
/// counter's creation, the lock, a look at the entry, the write, and the
/// unlock's read and delete in the background). A key under a prefix no
/// key used before takes a third, which creates the prefix's counter.
/// Counted at a proxy in front of each of three servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_miss_costs_two_round_trips_the_read_that_locks_and_the_write_that_unlocks() {
    let (servers, proxies, cache) = proxied_pool(3);
    // Connected (the pool set up, a connection open to each server), and
    // the `feed:` prefix's counter made.
    let deadline = Instant::now() + Duration::from_secs(10);
    while feed(&cache, 0).await.is_err() || cache.get::<String>("feed:0").await.is_err() {
        assert!(Instant::now() < deadline, "the pool never answered");
    }
    let before = cache.stats();
    for id in 1..=3 {
        let cold = exchanges_of(&servers, &proxies, feed(&cache, id)).await;
        assert_eq!(
            cold.iter().max(),
            Some(&2),
            "feed {id}: a never-seen key: the read that locks, the write that unlocks; \
             exchanges per server {cold:?}"
        );
        cache.delete(&format!("feed:{id}")).await.unwrap();
        let deleted = exchanges_of(&servers, &proxies, feed(&cache, id)).await;
        assert_eq!(
            deleted.iter().max(),
            Some(&2),
            "feed {id}: a deleted key not read live since: the same two; {deleted:?}"
        );
        // The first hit reads with the lock (released again, in the
        // background); from then on the plain read, one exchange.
        let first = exchanges_of(&servers, &proxies, feed(&cache, id)).await;
        assert!(first.iter().all(|&n| n <= 2), "{first:?}");
        let warm = exchanges_of(&servers, &proxies, feed(&cache, id)).await;
        assert_eq!(warm.iter().max(), Some(&1), "a warm hit: {warm:?}");
    }
    let new_prefix = exchanges_of(&servers, &proxies, top_books(&cache, 7)).await;
    assert_eq!(
        new_prefix.iter().max(),
        Some(&3),
        "a key under a new prefix (`author:7:`): one more, to create its counter; \
         {new_prefix:?}"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.hits - before.hits, stats.errors - before.errors),
        (6, 0),
        "{stats:?}"
    );
}

/// A server restarted empty loses its copies of every counter. The read
/// that takes a cold key's lock adds absent copies in its own exchange
/// (from a fresh seed, for a never-seen key); where other copies have a
/// value, the added ones are set back to it before the read decides. So a
/// restart does not lift a prefix's counter above what every entry under
/// it recorded (which would make them all misses), nor a key's own one
/// above what its entry recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_a_restarted_server_lost_come_back_at_their_value_not_a_new_one() {
    let mut servers: Vec<MemcachedServer> = (0..3).map(|_| MemcachedServer::start()).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let backend = MemcachedBackend::new(MemcachedConfig::new(addrs)).unwrap();
    let ttl = Duration::from_secs(600);
    let keys: Vec<String> = (0..12).map(|i| format!("shop:item:{i}")).collect();
    for key in &keys {
        backend
            .set(key, Bytes::from(key.clone()), ttl, None)
            .await
            .unwrap();
    }
    let prefixes = ["g:shop:", "g:shop:item:"];
    let counters = |servers: &[MemcachedServer]| -> Vec<Vec<Option<String>>> {
        prefixes
            .iter()
            .map(|name| servers.iter().map(|s| stored(s.port, name)).collect())
            .collect()
    };
    let before = counters(&servers);
    assert!(before.iter().flatten().all(Option::is_some), "{before:?}");
    let homes: Vec<usize> = keys
        .iter()
        .map(|k| holder(&servers, &format!("v:{k}")))
        .collect();
    let survivors = homes.iter().filter(|&&h| h != 0).count();
    assert!(survivors > 0, "every entry on server 0: {homes:?}");
    servers[0].restart();
    let token = Bytes::from_static(b"reader");
    for (key, &home) in keys.iter().zip(&homes) {
        let (found, locked) = backend.get_or_lock(key, token.clone(), ttl).await.unwrap();
        if home == 0 {
            assert_eq!(found.value, None, "{key}: its server restarted empty");
            assert!(locked, "{key}: a miss takes the lock");
            backend.delete_if_equals(key, &token).await.unwrap();
        } else {
            assert_eq!(
                found.value,
                Some(Bytes::from(key.clone())),
                "{key}: its entry survived the restart but read as a miss"
            );
            assert!(!locked, "{key}: a hit keeps no lock");
        }
    }
    assert_eq!(
        counters(&servers),
        before,
        "the prefixes' counters moved with the restart"
    );
}
