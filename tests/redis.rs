//! The Redis backend against real `redis-server` processes: plain, TLS,
//! ACL, killed, stalled and clustered. One binary for the area.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::Backend;
use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::{cached, Cache, Error, Policy};
use redis::AsyncCommands;
use support::{RedisCluster, RedisOptions, RedisServer, StallProxy};

#[derive(Debug, PartialEq)]
struct Upstream(String);

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn all_keys(con: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys = Vec::new();
    let mut iter: redis::AsyncIter<String> = con.scan().await.unwrap();
    while let Some(k) = iter.next_item().await {
        keys.push(k.unwrap());
    }
    keys
}

fn cache_on(url: &str) -> Cache {
    Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(url)).unwrap())
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[cached(key = "author:{author_id}:top_books", ttl = 600, cache = cache)]
async fn top_books(cache: &Cache, author_id: i64) -> Result<Vec<i64>, Upstream> {
    Ok(vec![author_id, author_id * 2])
}

#[cached(key = "author:{author_id}:bio", ttl = 600, cache = cache)]
async fn bio(cache: &Cache, author_id: i64) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("bio {author_id} #{}", N.fetch_add(1, Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_round_trip_stores_every_key_with_a_ttl() {
    let server = RedisServer::start();
    let cache = Cache::from_url(&format!("{}/0?namespace=app", server.url()))
        .await
        .unwrap();
    assert_eq!(top_books(&cache, 5).await, Ok(vec![5, 10]));
    assert_eq!(top_books(&cache, 5).await, Ok(vec![5, 10]));
    // This cache's own count: other tests call the function meanwhile.
    assert_eq!(cache.stats().computations, 1);
    assert_eq!(cache.stats().hits, 1);
    cache.invalidate_prefix("author:5:").await.unwrap();
    let _ = top_books(&cache, 5).await;

    let mut con = raw(&server.url()).await;
    let keys = all_keys(&mut con).await;
    assert!(keys.len() >= 2, "entry and generation: {keys:?}");
    for key in keys {
        assert!(key.contains("{app}"), "namespaced: {key}");
        let pttl: i64 = con.pttl(&key).await.unwrap();
        assert!(pttl > 0, "{key} has no TTL ({pttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_invalidation_reaches_exactly_the_right_keys() {
    let server = RedisServer::start();
    let cache = cache_on(&server.url());
    let bio42 = bio(&cache, 42).await;
    let bio420 = bio(&cache, 420).await;
    let bio4 = bio(&cache, 4).await;
    let _ = top_books(&cache, 42).await;
    cache
        .set("author:42", &"exact", Duration::from_secs(60))
        .await
        .unwrap();

    cache.invalidate_prefix("author:42:").await.unwrap();

    assert_eq!(
        cache.get::<Vec<i64>>("author:42:top_books").await.unwrap(),
        None
    );
    assert_ne!(bio(&cache, 42).await, bio42);
    assert_eq!(bio(&cache, 420).await, bio420);
    assert_eq!(bio(&cache, 4).await, bio4);
    assert_eq!(
        cache.get::<String>("author:42").await.unwrap().as_deref(),
        Some("exact")
    );

    // Glob characters are text, not patterns.
    cache
        .set("p*:1", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    cache
        .set("px:1", &2u8, Duration::from_secs(60))
        .await
        .unwrap();
    cache.invalidate_prefix("p*:").await.unwrap();
    assert_eq!(cache.get::<u8>("p*:1").await.unwrap(), None);
    assert_eq!(cache.get::<u8>("px:1").await.unwrap(), Some(2));

    // Everything: only with a namespace (no counter is read for it otherwise).
    let err = cache.invalidate_prefix("").await.unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
    assert!(matches!(
        cache.invalidate_prefix("author:4").await,
        Err(Error::InvalidPrefix { .. })
    ));
    let ns = Cache::from_url(&format!("{}?namespace=app", server.url()))
        .await
        .unwrap();
    ns.set("author:42", &"exact", Duration::from_secs(60))
        .await
        .unwrap();
    ns.invalidate_prefix("").await.unwrap();
    assert_eq!(ns.get::<String>("author:42").await.unwrap(), None);
    assert_eq!(
        cache.get::<String>("author:42").await.unwrap().as_deref(),
        Some("exact"),
        "another namespace on the same server is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_with_100k_unrelated_keys_never_scans_the_keyspace() {
    let server = RedisServer::start();
    let cache = cache_on(&server.url());
    let mut con = raw(&server.url()).await;
    for chunk in 0..100 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.set(format!("unrelated:{chunk}:{i}"), i).ignore();
        }
        let _: () = pipe.query_async(&mut con).await.unwrap();
    }
    let _ = bio(&cache, 7).await;
    let cached = bio(&cache, 7).await;
    // The first call's lock is released in the background after it
    // returns: let that finish before counting commands.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let locks: Vec<String> = redis::cmd("KEYS")
            .arg("l:*")
            .query_async(&mut con)
            .await
            .unwrap();
        if locks.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lock was never released: {locks:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();

    let started = Instant::now();
    cache.invalidate_prefix("author:7:").await.unwrap();
    let took = started.elapsed();

    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    for forbidden in [
        "cmdstat_scan",
        "cmdstat_keys",
        "cmdstat_del:",
        "cmdstat_unlink",
    ] {
        assert!(!stats.contains(forbidden), "{forbidden} ran:\n{stats}");
    }
    assert_ne!(bio(&cache, 7).await, cached);
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert!(size > 100_000);
    assert!(took < Duration::from_millis(200), "one INCR took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_computed_before_an_invalidation_never_shows_after_it() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(RedisConfig::new(server.url())).unwrap();
    support::stale_write_stays_hidden(&backend).await;
    support::partial_prefixes_are_refused(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_round_trip_and_invalidate() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
        .build()
        .unwrap();
    support::long_keys_round_trip_and_invalidate(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_invalidations_lose_no_invalidation() {
    let server = RedisServer::start();
    let cache = cache_on(&server.url());
    // `version` is the source data; `invalidated` is the newest version
    // whose invalidation has returned. A read that starts after that must
    // never be served an older version.
    let version = Arc::new(AtomicUsize::new(0));
    let invalidated = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let cache = cache.clone();
        let version = version.clone();
        let invalidated = invalidated.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                if t == 0 && i % 5 == 0 {
                    let v = version.fetch_add(1, Ordering::SeqCst) + 1;
                    cache.invalidate_prefix("doc:1:").await.unwrap();
                    invalidated.fetch_max(v, Ordering::SeqCst);
                    continue;
                }
                let floor = invalidated.load(Ordering::SeqCst);
                let got: usize = cache
                    .get_or_compute("doc:1:body", &cacheruntime::Policy::new(), || {
                        let version = version.clone();
                        async move {
                            let v = version.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            v
                        }
                    })
                    .await;
                assert!(
                    got >= floor,
                    "served version {got} after {floor} was invalidated"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(cache.stats().hits > 0, "the cache was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_works_and_a_wrong_ca_is_refused() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let certs = server.certs.as_ref().unwrap();
    let good = Cache::from_url(&format!("{}?ca_file={}", server.url(), certs.ca.display()))
        .await
        .unwrap();
    good.set("tls:1", &"secret text", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        good.get::<String>("tls:1").await.unwrap().as_deref(),
        Some("secret text")
    );

    let wrong = Cache::from_url(&format!(
        "{}?ca_file={}",
        server.url(),
        certs.other_ca.display()
    ))
    .await
    .unwrap();
    let err = wrong.get::<String>("tls:1").await.unwrap_err();
    assert!(
        matches!(err, Error::Backend { .. } | Error::Timeout { .. }),
        "{err}"
    );
    // The cached function still returns its value.
    assert_eq!(bio(&wrong, 1).await.split(' ').nth(1), Some("1"));
    assert!(wrong.stats().errors >= 1);

    let plain = Cache::from_url(&format!("redis://127.0.0.1:{}", server.port))
        .await
        .unwrap();
    assert!(
        plain.get::<String>("tls:1").await.is_err(),
        "plain text refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        require_client_cert: true,
        ..RedisOptions::default()
    });
    let c = server.certs.as_ref().unwrap();
    let with_cert = Cache::from_url(&format!(
        "{}?ca_file={}&cert_file={}&key_file={}",
        server.url(),
        c.ca.display(),
        c.client_cert.display(),
        c.client_key.display()
    ))
    .await
    .unwrap();
    with_cert
        .set("m:1", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(with_cert.get::<u8>("m:1").await.unwrap(), Some(1));
    let without = Cache::from_url(&format!("{}?ca_file={}", server.url(), c.ca.display()))
        .await
        .unwrap();
    assert!(without.get::<u8>("m:1").await.is_err());
}

const ACL_USER: &str =
    "user cacheapp on >s3cret-pass ~* resetchannels &cacheruntime:changes -@all +get +set +mget \
     +incr +exists +time +pttl +pexpire +unlink +del +eval +evalsha +script|load +ping +select \
     +hello +publish +subscribe";

/// Every change script publishes its notice before it changes anything:
/// Redis does not undo a script that fails halfway, so a user that may not
/// `PUBLISH` must change nothing (a change without its notice would leave
/// other processes' near tiers serving the old value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_without_publish_changes_nothing() {
    let no_publish = ACL_USER.replace(" +publish", "");
    let server = RedisServer::start_with(RedisOptions {
        config: vec![no_publish],
        ..RedisOptions::default()
    });
    let admin = cache_on(&server.url());
    let limited = cache_on(&format!(
        "redis://cacheapp:s3cret-pass@127.0.0.1:{}",
        server.port
    ));
    let ttl = Duration::from_secs(600);
    admin.set("acct:1:k", &1u64, ttl).await.unwrap();
    assert!(limited.set("acct:1:k", &2u64, ttl).await.is_err());
    assert!(limited.delete("acct:1:k").await.is_err());
    assert!(limited.invalidate_prefix("acct:").await.is_err());
    assert!(limited.add("acct:2:k", &3u64, ttl).await.is_err());
    assert_eq!(admin.get::<u64>("acct:1:k").await.unwrap(), Some(1));
    assert_eq!(admin.get::<u64>("acct:2:k").await.unwrap(), None);
    // Reads need no PUBLISH; a computation still answers (fail-open).
    assert_eq!(limited.get::<u64>("acct:1:k").await.unwrap(), Some(1));
    assert_eq!(top_books(&limited, 3).await, Ok(vec![3, 6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_limited_to_cache_commands_works() {
    let server = RedisServer::start_with(RedisOptions {
        config: vec![ACL_USER.into()],
        ..RedisOptions::default()
    });
    let url = format!("redis://cacheapp:s3cret-pass@127.0.0.1:{}", server.port);
    let cache = cache_on(&url);
    assert_eq!(top_books(&cache, 9).await, Ok(vec![9, 18]));
    assert_eq!(top_books(&cache, 9).await, Ok(vec![9, 18]));
    cache.invalidate_prefix("author:9:").await.unwrap();
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(
        cache.stats().errors,
        0,
        "CONFIG GET being denied is not an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_clearly_and_the_function_still_returns() {
    let server = RedisServer::start_with(RedisOptions {
        config: vec![ACL_USER.into()],
        ..RedisOptions::default()
    });
    let url = format!(
        "redis://cacheapp:not-the-password@127.0.0.1:{}",
        server.port
    );
    let cache = cache_on(&url);
    assert_eq!(top_books(&cache, 3).await, Ok(vec![3, 6]));
    let err = cache
        .get::<Vec<i64>>("author:3:top_books")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!format!("{err:?}").contains("not-the-password"));
    assert!(!format!("{cache:?}").contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_survived_and_used_again_after_restart() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
        .op_timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 2]));
    server.kill();
    for i in 0..20 {
        assert_eq!(top_books(&cache, i).await, Ok(vec![i, 2 * i]), "while down");
    }
    assert!(cache.stats().errors + cache.stats().circuit_skips > 0);
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = top_books(&cache, 77).await;
        let hits = cache.stats().hits;
        assert_eq!(top_books(&cache, 77).await, Ok(vec![77, 154]));
        if cache.stats().hits > hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache not used again after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_costs_at_most_the_op_timeout() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
        .op_timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_secs(30))
        .build()
        .unwrap();
    let _ = top_books(&cache, 1).await;
    server.pause();
    // Each of the first two calls waits for one timed-out read (a call
    // whose read failed neither locks nor writes)...
    for id in [2, 3] {
        let started = Instant::now();
        assert_eq!(top_books(&cache, id).await, Ok(vec![id, 2 * id]));
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(250),
            "one read bounded: {took:?}"
        );
    }
    // ...and two failures open the circuit: calls cost the computation alone.
    let started = Instant::now();
    for i in 10..30 {
        assert_eq!(top_books(&cache, i).await, Ok(vec![i, 2 * i]));
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_built_while_redis_is_down_starts_and_connects_later() {
    let port = support::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(&url)).unwrap())
        .op_timeout(Duration::from_millis(200))
        .circuit_breaker(1000, Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(top_books(&cache, 4).await, Ok(vec![4, 8]));
    assert!(cache.stats().errors >= 1);
    let _server = RedisServer::start_on(port, RedisOptions::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache
        .set("up", &1u8, Duration::from_secs(60))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cache.get::<u8>("up").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_admit_one_holder_and_release_only_their_own() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(RedisConfig::new(server.url())).unwrap();
    let ttl = Duration::from_millis(300);
    let a = Bytes::from_static(b"token-a");
    let b = Bytes::from_static(b"token-b");
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
    assert!(backend
        .set_if_absent("lock:k", b.clone(), ttl)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        backend.set_if_absent("lock:k", a, ttl).await.unwrap(),
        "expired on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_round_trip_and_invalidation_across_slots() {
    let cluster = RedisCluster::start();
    let cache = Cache::from_url(&cluster.url()).await.unwrap();
    // Different first segments hash to different slots (and masters).
    for author in 0..20 {
        assert_eq!(
            top_books(&cache, author).await,
            Ok(vec![author, 2 * author])
        );
    }
    for shop in 0..20 {
        cache
            .set(
                &format!("shop{shop}:item:1"),
                &shop,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    let hits = cache.stats().hits;
    for author in 0..20 {
        let _ = top_books(&cache, author).await;
    }
    assert_eq!(cache.stats().hits, hits + 20);
    cache.invalidate_prefix("author:3:").await.unwrap();
    cache.invalidate_prefix("shop5:").await.unwrap();
    assert_eq!(
        cache.get::<Vec<i64>>("author:3:top_books").await.unwrap(),
        None
    );
    assert_eq!(
        cache.get::<Vec<i64>>("author:4:top_books").await.unwrap(),
        Some(vec![4, 8])
    );
    assert_eq!(cache.get::<i32>("shop5:item:1").await.unwrap(), None);
    assert_eq!(cache.get::<i32>("shop6:item:1").await.unwrap(), Some(6));
    let err = cache.invalidate_prefix("").await.unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
    // With a namespace, "everything" is one prefix in one slot.
    let ns = Cache::from_url(&format!("{}?namespace=tenant1", cluster.url()))
        .await
        .unwrap();
    ns.set("a:1", &1u8, Duration::from_secs(60)).await.unwrap();
    ns.invalidate_prefix("").await.unwrap();
    assert_eq!(ns.get::<u8>("a:1").await.unwrap(), None);
}

/// Without a namespace, a batch's keys spread over slots and masters:
/// `get_many` is one `MGET` split by slot, `set_many` / `delete_many` one
/// pipeline per hash tag; each answers as the single-key calls would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_span_slots() {
    let cluster = RedisCluster::start();
    let cache = Cache::from_url(&cluster.url()).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("shop{i}:item:{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let pairs: Vec<(&str, u32)> = refs.iter().zip(0u32..).map(|(k, i)| (*k, i)).collect();
    cache
        .set_many(&pairs, Duration::from_secs(60))
        .await
        .unwrap();
    cache.invalidate_prefix("shop3:").await.unwrap();
    let got = cache.get_many::<u32>(&refs).await.unwrap();
    for (i, got) in got.iter().enumerate() {
        let want = (i != 3).then_some(i as u32);
        assert_eq!(*got, want, "{}", refs[i]);
    }
    cache.delete_many(&refs[..10]).await.unwrap();
    let got = cache.get_many::<u32>(&refs).await.unwrap();
    assert!(got[..10].iter().all(Option::is_none), "{got:?}");
    assert!(got[10..].iter().all(Option::is_some), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_whose_first_segment_cannot_be_a_hash_tag_still_work() {
    let cluster = RedisCluster::start();
    let cache = Cache::from_url(&cluster.url()).await.unwrap();
    let policy = cacheruntime::Policy::new().ttl(Duration::from_secs(60));
    let keys = [
        ":posts", ":posts:1", "::x", "{a}:b", "a}b:c:d", "}:x", "{}:q",
    ];
    for (i, key) in keys.iter().enumerate() {
        let v: usize = cache.get_or_compute(key, &policy, || async { i }).await;
        assert_eq!(v, i);
        let v: usize = cache.get_or_compute(key, &policy, || async { 99 }).await;
        assert_eq!(v, i, "{key} was not served from the cache");
    }
    // Their prefixes invalidate them, and deletes reach them.
    cache.invalidate_prefix(":").await.unwrap();
    cache.delete("{a}:b").await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        let gone = key.starts_with(':') || *key == "{a}:b";
        let v: usize = cache
            .get_or_compute(key, &policy, || async { 100 + i })
            .await;
        assert_eq!(v, if gone { 100 + i } else { i }, "{key}");
    }
    let stats = cache.stats();
    assert_eq!(
        stats.errors, 0,
        "CROSSSLOT or other store errors: {stats:?}"
    );
    assert_eq!(stats.hits, keys.len() as u64 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_generation_counters_never_bring_invalidated_entries_back() {
    // A small instance that evicts any key, under far more data than fits.
    let server = RedisServer::start_with(RedisOptions {
        config: vec![
            "maxmemory 4mb".into(),
            "maxmemory-policy allkeys-lru".into(),
            "maxmemory-samples 3".into(),
        ],
        ..RedisOptions::default()
    });
    let cache = cache_on(&server.url());
    let policy = cacheruntime::Policy::new().ttl(Duration::from_secs(600));
    let keys: Vec<String> = (0..200).map(|i| format!("author:{i}:top")).collect();
    for key in &keys {
        let v: u32 = cache.get_or_compute(key, &policy, || async { 0 }).await;
        assert_eq!(v, 0);
    }
    // The origin moves on; every key's prefix is invalidated.
    for i in 0..200 {
        cache
            .invalidate_prefix(&format!("author:{i}:"))
            .await
            .unwrap();
    }
    let filler = vec![7u8; 8 << 10];
    let mut revived = Vec::new();
    for round in 0..40 {
        for j in 0..60 {
            cache
                .set(
                    &format!("filler:{round}:{j}"),
                    &filler,
                    Duration::from_secs(600),
                )
                .await
                .unwrap();
        }
        // Plain reads: they never write, so an old entry stays as it was.
        for key in &keys {
            if let Some(v) = cache.get::<u32>(key).await.unwrap() {
                revived.push((round, key.clone(), v));
            }
        }
    }
    let evicted = server.cli(&["INFO", "stats"]);
    let evicted: u64 = evicted
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        evicted > 1000,
        "the test did not put Redis under pressure: {evicted} evicted"
    );
    assert!(
        revived.is_empty(),
        "invalidated entries served again after evictions: {:?}",
        &revived[..revived.len().min(5)]
    );
}

#[tokio::test]
async fn urls_and_configs_never_print_secrets() {
    let cache = Cache::from_url("redis://app:hunter2@127.0.0.1:1/0?op_timeout=50ms")
        .await
        .unwrap();
    assert!(!format!("{cache:?}").contains("hunter2"), "{cache:?}");
    let config = RedisConfig::cluster(["redis://app:hunter2@h1:1", "redis://app:hunter2@h2:1"]);
    assert!(!format!("{config:?}").contains("hunter2"));
    let err = Cache::from_url("redis://app:hunter2@127.0.0.1:1/?ca_file=/x")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
    let err = cache.get::<u8>("k").await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Cache::from_url("redis://h/?colour=blue")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("colour") && err.contains("ca_file"), "{err}");
}

#[test]
fn backend_builds_outside_any_runtime() {
    // No runtime here: building must not spawn anything.
    let backend = RedisBackend::new(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
    let cache = Cache::builder().backend(backend).build().unwrap();
    assert_eq!(cache.backend_name(), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_entries_reject_forgeries_and_survive_key_rotation() {
    let server = RedisServer::start();
    let backend = || RedisBackend::new(RedisConfig::new(server.url())).unwrap();
    let signed = |keys: &[&str]| {
        Cache::builder()
            .backend(backend())
            .signing_keys(keys.iter().map(|k| k.as_bytes()))
            .build()
            .unwrap()
    };
    let old = signed(&["old-signing-key-0123456789"]);
    old.set("page:1", &"<p>hello</p>", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        old.get::<String>("page:1").await.unwrap().as_deref(),
        Some("<p>hello</p>")
    );

    // Someone with write access to Redis but not the key plants content.
    let unsigned = Cache::builder().backend(backend()).build().unwrap();
    unsigned
        .set(
            "page:2",
            &"<script>steal()</script>",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        old.get::<String>("page:2").await.unwrap(),
        None,
        "unsigned: a miss"
    );
    assert_eq!(old.stats().signature_failures, 1);

    // A valid entry copied under another key, or altered, does not verify.
    let raw_backend = backend();
    let stolen = raw_backend.get("page:1").await.unwrap().value.unwrap();
    let miss = raw_backend.get("page:3").await.unwrap();
    raw_backend
        .set(
            "page:3",
            stolen.clone(),
            Duration::from_secs(60),
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(
        old.get::<String>("page:3").await.unwrap(),
        None,
        "moved entry"
    );
    let mut altered = stolen.to_vec();
    let at = altered.len() - 40;
    altered[at] ^= 1;
    let miss = raw_backend.get("page:4").await.unwrap();
    raw_backend
        .set(
            "page:4",
            Bytes::from(altered),
            Duration::from_secs(60),
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(
        old.get::<String>("page:4").await.unwrap(),
        None,
        "altered entry"
    );
    assert_eq!(old.stats().signature_failures, 3);

    // Rotation: new key signs, old key still verifies; then the old retires.
    let rotating = signed(&["new-signing-key-0123456789", "old-signing-key-0123456789"]);
    assert_eq!(
        rotating.get::<String>("page:1").await.unwrap().as_deref(),
        Some("<p>hello</p>")
    );
    let retired = signed(&["new-signing-key-0123456789"]);
    assert_eq!(retired.get::<String>("page:1").await.unwrap(), None);

    // A cached function fails open to its own value on a forged entry.
    assert_eq!(top_books(&old, 11).await, Ok(vec![11, 22]));
    unsigned
        .set(
            "author:11:top_books",
            &vec![666i64],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        top_books(&old, 11).await,
        Ok(vec![11, 22]),
        "never the planted value"
    );
    assert!(!format!("{old:?}").contains("signing-key"), "{old:?}");
    assert!(Cache::builder().signing_keys(["short"]).build().is_err());
}

/// A caller cancelled while its `SET NX` is in flight (its future dropped
/// by the application's timeout, not the op timeout): the request still
/// takes the lock on the server, and the release armed before it went out
/// frees it (retrying while the server does not answer), so another
/// process's cold miss of the key does not wait out the lock. (`CLIENT
/// PAUSE WRITE` holds the `SET NX` on the server while letting reads
/// through, standing in for a slow network.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cancelled_while_taking_the_lock_releases_it() {
    let server = RedisServer::start();
    let mk = || {
        Cache::builder()
            .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
            .op_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (a, b) = (mk(), mk());
    let lock_ttl = Duration::from_secs(6);
    let p = Policy::new()
        .ttl(Duration::from_secs(60))
        .lock_ttl(lock_ttl);
    // Counters exist, so A's read is one MGET.
    assert_eq!(a.get::<u32>("grp:k").await.unwrap(), None);
    assert_eq!(b.get::<u32>("grp:k").await.unwrap(), None);
    server.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(400),
        a.get_or_compute("grp:k", &p, || async { 1u32 }),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "A's call was to be cancelled by the app"
    );
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

/// Collects what the cache logs, for tests that check a warning is given.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the cache logs in this test binary, collected from the first call
/// on (one subscriber per process: every test that checks a warning reads
/// this one).
fn logs() -> &'static Logs {
    static LOGS: LazyLock<Logs> = LazyLock::new(|| {
        let logs = Logs::default();
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .try_init();
        logs
    });
    &LOGS
}

impl Logs {
    /// Whether a line mentions `port` and `text`.
    fn has(&self, port: u16, text: &str) -> bool {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .any(|l| l.contains(text) && l.contains(&format!(":{port}")))
    }
}

/// Managed Redis services block `CONFIG` (ElastiCache, Heroku, Upstash):
/// the check that the server can evict reads `INFO memory` there, and says
/// so when it cannot check at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eviction_check_reads_info_where_config_is_blocked_and_says_when_it_cannot_check() {
    let logs = logs();
    let blocked = |lines: &[&str]| {
        RedisServer::start_with(RedisOptions {
            config: lines.iter().map(|l| (*l).to_owned()).collect(),
            ..RedisOptions::default()
        })
    };
    let no_eviction = blocked(&["rename-command CONFIG \"\""]);
    let evicting = blocked(&[
        "rename-command CONFIG \"\"",
        "maxmemory 64mb",
        "maxmemory-policy allkeys-lru",
    ]);
    let opaque = blocked(&["rename-command CONFIG \"\"", "rename-command INFO \"\""]);
    for server in [&no_eviction, &evicting, &opaque] {
        let cache = cache_on(&server.url());
        assert_eq!(top_books(&cache, 4).await, Ok(vec![4, 8]));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(logs.has(no_eviction.port, "cannot evict")
        && logs.has(opaque.port, "could not check whether Redis can evict"))
    {
        assert!(Instant::now() < deadline, "missing warnings");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!logs.has(evicting.port, "cannot evict"));
    assert!(!logs.has(evicting.port, "could not check"));
    assert!(!logs.has(no_eviction.port, "could not check"));
}

/// A Redis that can come back from a crash with an older state than it
/// acknowledged (RDB snapshots, AOF not synced per write) rolls
/// invalidations back with the entries they hid: the guarantee needs a
/// Redis without persistence (a restart empties it) or with `appendfsync
/// always`, and the cache says so when it connects to one that persists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_can_roll_back_invalidations_is_named_in_a_warning() {
    let logs = logs();
    let persisting = RedisServer::start_with(RedisOptions {
        config: vec!["save 3600 1".into()],
        ..RedisOptions::default()
    });
    let plain = RedisServer::start();
    for server in [&persisting, &plain] {
        let cache = cache_on(&server.url());
        assert_eq!(top_books(&cache, 3).await, Ok(vec![3, 6]));
    }
    let warned = |port: u16| {
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        text.lines()
            .any(|l| l.contains("appendfsync always") && l.contains(&format!(":{port}")))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !warned(persisting.port) {
        assert!(Instant::now() < deadline, "no warning about persistence");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !warned(plain.port),
        "a Redis without persistence was warned about"
    );
    // Without persistence a crash and restart empties the store: nothing
    // invalidated can come back.
    let mut plain = plain;
    let cache = cache_on(&plain.url());
    cache.invalidate_prefix("author:3:").await.unwrap();
    plain.kill();
    plain.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get::<Vec<i64>>("author:3:top_books").await {
            Ok(found) => {
                assert_eq!(found, None);
                break;
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "Redis did not come back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// On a slow link every store call takes long: the cache adds at most one
/// op timeout to a call, all its store calls together, and a call whose
/// read was slow computes without taking the lock or writing (each used to
/// get an op timeout of its own: read, lock, look, write, unlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_costs_a_call_one_op_timeout_at_most() {
    let server = RedisServer::start();
    let proxy = StallProxy::start(server.port);
    let op_timeout = Duration::from_millis(300);
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(format!("redis://{}", proxy.addr()))).unwrap())
        .op_timeout(op_timeout)
        .build()
        .unwrap();
    let policy = Policy::new().ttl(Duration::from_secs(60));
    // Connected, the scripts of a cold miss loaded, and the key's counters
    // made, while the link is fast.
    let _: u32 = cache
        .get_or_compute("slow:0", &policy, || async { 0 })
        .await;
    assert_eq!(cache.get::<u32>("slow:1").await.unwrap(), None);
    proxy.set_delay(Duration::from_millis(90));
    let started = Instant::now();
    let v: u32 = cache
        .get_or_compute("slow:1", &policy, || async { 5 })
        .await;
    let took = started.elapsed();
    assert_eq!(v, 5);
    assert!(
        took < op_timeout + Duration::from_millis(100),
        "a call on a slow link took {took:?} with a {op_timeout:?} op timeout"
    );
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
}

fn slow_link_cache(addr: &str, op_timeout: Duration) -> Cache {
    Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(format!("redis://{addr}"))).unwrap())
        .op_timeout(op_timeout)
        .build()
        .unwrap()
}

/// A healthy store whose round trip is under a third of the op timeout
/// (every store call well within it) still caches misses, the first one of
/// a new key included (its read takes two round trips, its counters being
/// made), without store errors: the write comes before the lock in the
/// call's budget, and a budget running out is not the store failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_within_a_third_of_the_op_timeout_still_caches_without_errors() {
    let server = RedisServer::start();
    let proxy = StallProxy::start(server.port);
    let op_timeout = Duration::from_millis(300);
    let cache = slow_link_cache(&proxy.addr(), op_timeout);
    let policy = Policy::new().ttl(Duration::from_secs(60));
    // Connect while the link is fast.
    assert_eq!(cache.get::<u32>("warm").await.unwrap(), None);
    proxy.set_delay(Duration::from_millis(45));
    let mut read = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(cache.get::<u32>("warm").await.unwrap(), None);
        read = read.min(t.elapsed());
    }
    eprintln!("one read of the store takes {read:?}");
    let mut report = Vec::new();
    for i in 0..3u32 {
        let key = format!("third:{i}");
        // Two misses in a row (the first creates the key's counters).
        for attempt in 0..2 {
            let errors = cache.stats().errors;
            let started = Instant::now();
            let v: u32 = cache
                .get_or_compute(&key, &policy, move || async move { i })
                .await;
            assert_eq!(v, i);
            let took = started.elapsed();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cached = cache.get::<u32>(&key).await.ok().flatten() == Some(i);
            report.push(format!(
                "{key} call {attempt}: {took:?}, cached {cached}, store errors +{}",
                cache.stats().errors - errors
            ));
            if cached {
                break;
            }
        }
    }
    let stats = cache.stats();
    eprintln!("{report:#?}\n{stats:?}");
    assert!(
        report
            .iter()
            .all(|r| r.contains("call 0") && r.contains("cached true"))
            && stats.errors == 0,
        "a read takes {read:?} of a {op_timeout:?} op timeout: {report:#?}"
    );
}

/// A caller that waited (polling) for another process's lock, then took
/// the lock after that process's computation failed, computes under the
/// lock and writes its value: waiting is not charged to its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_takes_over_a_lock_after_waiting_writes_its_value() {
    let server = RedisServer::start();
    let proxy = StallProxy::start(server.port);
    let op_timeout = Duration::from_millis(100);
    // Process A: direct; process B: a 5 ms link each way (~10 ms RTT).
    let a = slow_link_cache(&format!("127.0.0.1:{}", server.port), op_timeout);
    let b = slow_link_cache(&proxy.addr(), op_timeout);
    assert_eq!(a.get::<u32>("warm").await.unwrap(), None);
    assert_eq!(b.get::<u32>("warm").await.unwrap(), None);
    proxy.set_delay(Duration::from_millis(5));
    let policy = Policy::new().ttl(Duration::from_secs(60));
    let pa = policy;
    let failing = tokio::spawn(async move {
        let r: Result<u32, String> = a
            .try_get_or_compute("lw:1", &pa, || async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Err("upstream failed".to_owned())
            })
            .await;
        assert!(r.is_err());
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v: u32 = b.get_or_compute("lw:1", &policy, || async { 7 }).await;
    assert_eq!(v, 7);
    failing.await.unwrap();
    let stats = b.stats();
    eprintln!("{stats:?}");
    assert!(stats.lock_waits >= 1, "B should have waited for A's lock");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.get::<u32>("lw:1").await.unwrap(),
        Some(7),
        "B held the lock and computed, but its value was never written"
    );
}

/// `tls_pin_sha256`'s form: the SHA-256 of the certificate's DER as hex,
/// `separator` between bytes.
fn pin_of(der: &[u8], separator: &str, upper: bool) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// Heroku's Redis presents a self-signed certificate for a name that is
/// not the one the app connects to: a pin of that certificate connects
/// (neither CA nor name checked), a pin of any other certificate is
/// refused and the cache fails open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_self_signed_certificate_connects_and_any_other_pin_is_refused() {
    let mut server = RedisServer::start_with(RedisOptions {
        tls: true,
        self_signed: true,
        ..RedisOptions::default()
    });
    let certs = server.certs.take().unwrap();
    let right = pin_of(&certs.self_signed_der, ":", false);
    let pinned = Cache::from_url(&format!("{}?tls_pin_sha256={right}", server.url()))
        .await
        .unwrap();
    pinned
        .set("pin:1", &"over pinned TLS", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        pinned.get::<String>("pin:1").await.unwrap().as_deref(),
        Some("over pinned TLS")
    );
    assert_eq!(top_books(&pinned, 3).await, Ok(vec![3, 6]));
    assert_eq!(top_books(&pinned, 3).await, Ok(vec![3, 6]));
    assert!(pinned.stats().hits >= 1, "served from Redis");

    // The builder takes the other spelling.
    let built = Cache::builder()
        .backend(
            RedisBackend::new(RedisConfig::new(server.url()).tls_pin_sha256(pin_of(
                &certs.self_signed_der,
                "",
                true,
            )))
            .unwrap(),
        )
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(
        built.get::<String>("pin:1").await.unwrap().as_deref(),
        Some("over pinned TLS")
    );

    // The CA-signed certificate's pin is a wrong pin for this server.
    let wrong = pin_of(&certs.server_der, ":", true);
    let refused = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(server.url()).tls_pin_sha256(wrong)).unwrap())
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = refused.get::<String>("pin:1").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(
        err.to_string().contains(&right.to_uppercase())
            && err.to_string().contains("tls_pin_sha256"),
        "the error names the certificate's actual fingerprint and the option: {err}"
    );
    assert_eq!(bio(&refused, 7).await.split(' ').nth(1), Some("7"));
    assert!(refused.stats().errors >= 2, "the call failed open");

    // Without a pin the certificate is refused (no CA vouches for it).
    let by_ca = Cache::from_url(&format!("{}?ca_file={}", server.url(), certs.ca.display()))
        .await
        .unwrap();
    assert!(by_ca.get::<String>("pin:1").await.is_err());

    // A restarted server is reached again over a new pinned connection.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned
        .set("pin:2", &"after restart", Duration::from_secs(60))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pinned.get::<String>("pin:2").await.unwrap().as_deref(),
        Some("after restart")
    );
}

/// `tls_insecure` connects whatever the certificate, and says at every
/// connection that it can be intercepted and what to use instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_insecure_connects_to_a_self_signed_server_of_another_name_and_warns() {
    let logs = logs();
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        self_signed: true,
        ..RedisOptions::default()
    });
    let cache = Cache::from_url(&format!("{}?tls_insecure=true", server.url()))
        .await
        .unwrap();
    cache
        .set("insecure:1", &5u32, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("insecure:1").await.unwrap(), Some(5));
    assert!(
        logs.has(server.port, "can intercept this connection"),
        "warned at connect"
    );
    assert!(logs.has(server.port, "tls_pin_sha256"), "names the fix");
}

/// The commands clients send a Redis server (not those its scripts run),
/// seen through `redis-cli monitor`.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        use std::io::BufRead;
        let port = server.url().rsplit(':').next().unwrap().to_owned();
        let mut child = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run redis-cli monitor (redis-tools)");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Attached once it said OK.
        let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first.trim(), "OK");
        Monitor { child, lines }
    }

    /// The client commands seen since the last call, up to a marker this
    /// sends through `con`: each as its name and first key.
    async fn commands(&self, con: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let marker = format!("marker-{}", N.fetch_add(1, Ordering::SeqCst));
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(con)
            .await
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(10)).unwrap();
            if line.contains(&marker) {
                return seen;
            }
            // `1700000000.123456 [0 127.0.0.1:54321] "MGET" "v:{a}..." ...`;
            // a script's own commands show `[0 lua]`.
            if line.contains(" lua]") {
                continue;
            }
            let words: Vec<&str> = line.split("] ").nth(1).unwrap_or("").split(' ').collect();
            seen.push(words.iter().take(2).copied().collect::<Vec<_>>().join(" "));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cached(key = "feed:{id}", ttl = 600, cache = cache)]
async fn cold_feed(cache: &Cache, id: u32) -> String {
    format!("feed {id}")
}

/// The commands one call of `cold_feed(1)` sends, by name, once anything
/// it left to the background is done.
async fn one_call(
    cache: &Cache,
    monitor: &Monitor,
    con: &mut redis::aio::MultiplexedConnection,
) -> Vec<String> {
    assert_eq!(cold_feed(cache, 1).await, "feed 1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = monitor.commands(con).await;
    sent.iter()
        .map(|c| {
            c.split(' ')
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_owned()
        })
        .collect()
}

/// A cold miss costs two round trips: the read, which takes the key's lock
/// as it finds no entry (creating a never-seen key's counter too), and the
/// write, which releases the lock. Before: a read, the counter's creation,
/// the lock, a look at the entry, the write and the unlock (six calls; five
/// for a key whose counter exists). That read is a script, which costs the
/// server ten times an `MGET`: a key this process read live lately is read
/// with `MGET`, and its miss (after an expiry or a delete) costs three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_miss_costs_two_round_trips_the_read_that_locks_and_the_write_that_unlocks() {
    let server = RedisServer::start();
    let cache = cache_on(&server.url());
    let mut con = raw(&server.url()).await;
    // Connected, the eviction check made and every script loaded.
    assert_eq!(cold_feed(&cache, 0).await, "feed 0");
    cache.delete("feed:0").await.unwrap();
    assert_eq!(cold_feed(&cache, 0).await, "feed 0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let monitor = Monitor::start(&server);
    monitor.commands(&mut con).await;
    let never_seen = one_call(&cache, &monitor, &mut con).await;
    assert_eq!(
        never_seen,
        ["EVALSHA", "EVALSHA"],
        "a never-seen key: the read that locks, the write that unlocks; got {never_seen:?}"
    );
    cache.delete("feed:1").await.unwrap();
    monitor.commands(&mut con).await;
    let again = one_call(&cache, &monitor, &mut con).await;
    assert_eq!(
        again,
        ["EVALSHA", "EVALSHA"],
        "a deleted key not read live since: the same two; got {again:?}"
    );
    // The first hit reads with the script, and from then on with MGET.
    let first_hit = one_call(&cache, &monitor, &mut con).await;
    assert_eq!(first_hit, ["EVALSHA"], "{first_hit:?}");
    let warm_hit = one_call(&cache, &monitor, &mut con).await;
    assert_eq!(warm_hit, ["MGET"], "{warm_hit:?}");
    // A warm key's miss: the read, the lock with a look, the write with the
    // unlock.
    cache.delete("feed:1").await.unwrap();
    monitor.commands(&mut con).await;
    let warm_miss = one_call(&cache, &monitor, &mut con).await;
    assert_eq!(
        warm_miss,
        ["MGET", "EVALSHA", "EVALSHA"],
        "a warm key's miss; got {warm_miss:?}"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.errors), (2, 0), "{stats:?}");
    let keys = all_keys(&mut con).await;
    assert!(
        !keys.iter().any(|k| k.starts_with("l:")),
        "a lock was left: {keys:?}"
    );
}

#[cached(key = "flaky:{id}", ttl = 600, cache = cache, skip = runs)]
async fn flaky(cache: &Cache, id: u32, runs: &AtomicUsize) -> Result<String, Upstream> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Err(Upstream(format!("upstream down for {id}")))
}

/// The read of a cold key takes its lock, and the caller whose read took
/// it may end up waiting on another caller's computation in its process:
/// the lock is then released when that computation ends, stored or not,
/// so no process waits out the lock's TTL for a value that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_a_waiters_read_took_is_released_when_the_flight_ends() {
    let server = RedisServer::start();
    let a = cache_on(&server.url());
    let b = cache_on(&server.url());
    let mut con = raw(&server.url()).await;
    let runs = AtomicUsize::new(0);
    for round in 0..20 {
        let calls = (0..16).map(|_| flaky(&a, round, &runs));
        for out in futures::future::join_all(calls).await {
            assert!(out.is_err());
        }
        // Released within a moment (in the background), not left to its
        // 10 s TTL.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let keys = all_keys(&mut con).await;
            if !keys.iter().any(|k| k.starts_with("l:")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: a lock was left: {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another handle computes at once.
        let started = Instant::now();
        assert!(flaky(&b, round, &runs).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: the other handle waited {:?}",
            started.elapsed()
        );
    }
}
