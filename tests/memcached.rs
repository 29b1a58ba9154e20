//! The Memcached backend against real `memcached` processes. One binary.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::Backend;
use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
use cacheruntime::{cached, Cache, Error};
use support::MemcachedServer;

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
    // Each key is three items, on one server: the entry, its prefix's
    // generation counter and its own.
    let per_server: Vec<u64> = servers.iter().map(|s| s.items()).collect();
    assert_eq!(per_server.iter().sum::<u64>(), 180, "{per_server:?}");
    assert!(
        per_server.iter().all(|&n| n >= 15),
        "spread: {per_server:?}"
    );
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
