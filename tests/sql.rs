//! The SQL backend against a real PostgreSQL (initdb in a temp dir, TLS on)
//! and SQLite files. One binary for the area.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::Backend;
use cacheruntime::backends::sql::{self, Dialect, SqlBackend, SqlConfig};
use cacheruntime::{cached, Cache, Clock, Error};
use sqlx::Row;
use support::Postgres;

#[derive(Debug, PartialEq)]
struct DbError;

#[cached(key = "author:{author_id}:top_books", ttl = 600, cache = cache)]
async fn top_books(cache: &Cache, author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(vec![author_id, author_id + 100])
}

fn sqlite_url(dir: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite://{}", dir.path().join(name).display())
}

fn cache_with(config: SqlConfig, clock: Option<Clock>) -> Cache {
    let mut b = Cache::builder().op_timeout(Duration::from_secs(5));
    if let Some(c) = clock {
        b = b.clock(c);
    }
    b.backend(SqlBackend::new(config).unwrap()).build().unwrap()
}

async fn round_trip_and_expiry(url: String) {
    let clock = Clock::manual();
    let cache = cache_with(
        SqlConfig::new(url).clock(clock.clone()),
        Some(clock.clone()),
    );
    // This cache's own counters: the SQLite and PostgreSQL variants run
    // at the same time and share the function's process-wide counters.
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 101]));
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 101]));
    assert_eq!(cache.stats().computations, 1, "second call was a hit");
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().errors, 0);
    clock.advance(Duration::from_secs(601));
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 101]));
    assert_eq!(cache.stats().computations, 2, "expired after its TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_round_trip_through_cached_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    round_trip_and_expiry(sqlite_url(&dir, "cache.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_round_trip_through_cached_and_expiry() {
    let pg = Postgres::start();
    round_trip_and_expiry(pg.url()).await;
}

async fn prefix_exactness(url: String) {
    let cache = cache_with(SqlConfig::new(url), None);
    let ttl = Duration::from_secs(60);
    for k in [
        "a%:1",
        "a_:1",
        "ab:1",
        "a%b:1",
        "author:42:x",
        "author:420:x",
        "author:42",
    ] {
        cache.set(k, &k.to_string(), ttl).await.unwrap();
    }
    cache.invalidate_prefix("a%:").await.unwrap();
    cache.invalidate_prefix("author:42:").await.unwrap();
    let left = |k: &'static str| {
        let cache = cache.clone();
        async move { cache.get::<String>(k).await.unwrap().is_some() }
    };
    assert!(!left("a%:1").await, "the prefix itself is gone");
    assert!(left("a_:1").await, "`_` is not a wildcard");
    assert!(left("ab:1").await, "`%` is not a wildcard");
    assert!(left("a%b:1").await);
    assert!(!left("author:42:x").await);
    assert!(left("author:420:x").await);
    assert!(left("author:42").await);
    assert!(matches!(
        cache.invalidate_prefix("author:4").await,
        Err(Error::InvalidPrefix { .. })
    ));
    cache.invalidate_prefix("").await.unwrap();
    assert!(!left("ab:1").await, "everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_prefix_invalidation_is_exact_with_percent_and_underscore() {
    let dir = tempfile::tempdir().unwrap();
    prefix_exactness(sqlite_url(&dir, "p.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prefix_invalidation_is_exact_with_percent_and_underscore() {
    let pg = Postgres::start();
    prefix_exactness(pg.url()).await;
}

async fn stale_write_stays_hidden(url: String) {
    let backend = SqlBackend::new(SqlConfig::new(url)).unwrap();
    support::stale_write_stays_hidden(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_computed_before_an_invalidation_never_shows_after_it() {
    let dir = tempfile::tempdir().unwrap();
    stale_write_stays_hidden(sqlite_url(&dir, "s.db")).await;
    let pg = Postgres::start();
    stale_write_stays_hidden(pg.url()).await;
}

async fn long_keys(url: String) {
    let cache = Cache::builder()
        .backend(SqlBackend::new(SqlConfig::new(url)).unwrap())
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    support::long_keys_round_trip_and_invalidate(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_keys_round_trip_and_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    long_keys(sqlite_url(&dir, "long.db")).await;
    let pg = Postgres::start();
    long_keys(pg.url()).await;
}

async fn concurrent_first_use(url: String) {
    // Eight independent backends (eight pools) all creating the table.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let cache = Cache::builder()
                    .op_timeout(Duration::from_secs(10))
                    .backend(SqlBackend::new(SqlConfig::new(url)).unwrap())
                    .build()
                    .unwrap();
                cache
                    .set(&format!("k:{i}"), &i, Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("first use from 8 tasks at once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_creates_the_table_once_without_error() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_first_use(sqlite_url(&dir, "c.db")).await;
    let pg = Postgres::start();
    concurrent_first_use(pg.url()).await;
}

/// Child half of the two-process test: runs when CACHE_SQL_CHILD_URL is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_first_use() {
    let Ok(url) = std::env::var("CACHE_SQL_CHILD_URL") else {
        return; // only meaningful as the child of the test below
    };
    let cache = Cache::builder()
        .op_timeout(Duration::from_secs(10))
        .backend(SqlBackend::new(SqlConfig::new(url)).unwrap())
        .build()
        .unwrap();
    cache
        .set("from:child", &std::process::id(), Duration::from_secs(60))
        .await
        .expect("child's first use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_creating_the_table_at_once_both_succeed() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    for url in [pg.url(), sqlite_url(&dir, "two.db")] {
        let exe = std::env::current_exe().unwrap();
        let spawn = || {
            std::process::Command::new(&exe)
                .args(["--exact", "child_process_first_use", "--quiet"])
                .env("CACHE_SQL_CHILD_URL", &url)
                .output()
                .unwrap()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            (a.join().unwrap(), b.join().unwrap())
        });
        for out in [a, b] {
            assert!(
                out.status.success(),
                "child failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cache = cache_with(SqlConfig::new(url.as_str()), None);
        assert!(cache.get::<u32>("from:child").await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_expired_rows_and_culls_to_max_entries() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "sweep.db");
    let clock = Clock::manual();
    let backend =
        SqlBackend::new(SqlConfig::new(&url).clock(clock.clone()).max_entries(50)).unwrap();
    for i in 0..120 {
        let ttl = Duration::from_secs(if i < 40 { 10 } else { 1000 + i });
        backend
            .set(&format!("k:{i}"), Bytes::from_static(b"v"), ttl, None)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(11));
    // (Writes past max_entries / 10 may already have started a sweep.)
    backend.sweep().await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM cache_entries")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50, "expired rows swept, the rest culled to max_entries");
    let expired: i64 =
        sqlx::query("SELECT COUNT(*) FROM cache_entries WHERE key IN ('k:0', 'k:39')")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(expired, 0);
    let left: Vec<String> = sqlx::query("SELECT key FROM cache_entries ORDER BY expires_at")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    // The culled rows are the ones expiring soonest.
    assert!(left.contains(&"k:119".to_string()), "{left:?}");
    assert!(backend.get("k:119").await.unwrap().value.is_some());
    assert!(backend.get("k:40").await.unwrap().value.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_accepts_the_right_ca_and_refuses_a_wrong_one() {
    let pg = Postgres::start();
    let good = Cache::from_url(&format!(
        "{}?sslmode=verify-full&sslrootcert={}&op_timeout=5s",
        pg.url_localhost(),
        pg.certs.ca.display()
    ))
    .await
    .unwrap();
    good.set("tls:1", &"over tls", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        good.get::<String>("tls:1").await.unwrap().as_deref(),
        Some("over tls")
    );

    let wrong = Cache::from_url(&format!(
        "{}?sslmode=verify-full&sslrootcert={}&op_timeout=5s",
        pg.url_localhost(),
        pg.certs.other_ca.display()
    ))
    .await
    .unwrap();
    let err = wrong.get::<String>("tls:1").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(!err.to_string().contains(&pg.password), "{err}");
    assert_eq!(top_books(&wrong, 5).await, Ok(vec![5, 105]), "fails open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_run_is_survived_and_used_again() {
    let mut pg = Postgres::start();
    let backend = std::sync::Arc::new(SqlBackend::new(SqlConfig::new(pg.url())).unwrap());
    let cache = Cache::builder()
        .backend(backend.clone())
        .op_timeout(Duration::from_millis(500))
        .circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(top_books(&cache, 3).await, Ok(vec![3, 103]));
    pg.stop();
    for i in 0..20 {
        assert_eq!(
            top_books(&cache, i).await,
            Ok(vec![i, i + 100]),
            "while down"
        );
    }
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = top_books(&cache, 77).await;
        let hits = cache.stats().hits;
        assert_eq!(top_books(&cache, 77).await, Ok(vec![77, 177]));
        if cache.stats().hits > hits {
            break;
        }
        if Instant::now() >= deadline {
            let err = cache.get::<Vec<i64>>("author:77:top_books").await;
            panic!("not used again after restart: {err:?} {:?}", cache.stats());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_entries_survive_a_process_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "persist.db");
    {
        let cache = Cache::from_url(&url).await.unwrap();
        cache
            .set("kept", &"across restarts", Duration::from_secs(600))
            .await
            .unwrap();
    }
    // A new pool, as a new process would open.
    let cache = Cache::from_url(&url).await.unwrap();
    assert_eq!(
        cache.get::<String>("kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tables_are_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "dropped.db");
    let cache = cache_with(SqlConfig::new(url.as_str()), None);
    cache.set("a", &1u8, Duration::from_secs(60)).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql("DROP TABLE cache_entries; DROP TABLE cache_entries_epoch;")
        .execute(&pool)
        .await
        .unwrap();
    // The first call finds them missing (and fails open), the next heals.
    assert!(cache.get::<u8>("a").await.is_err());
    cache.set("a", &2u8, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u8>("a").await.unwrap(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serves_many_tasks_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::from_url(&sqlite_url(&dir, "many.db")).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let key = format!("t:{}:{}", t % 4, i % 10);
                    cache
                        .set(&key, &(t, i), Duration::from_secs(60))
                        .await
                        .unwrap();
                    let _ = cache.get::<(i32, i32)>(&key).await.unwrap();
                    if i % 13 == 0 {
                        cache
                            .invalidate_prefix(&format!("t:{}:", t % 4))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cache.stats().errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_the_exported_ddl_is_the_schema() {
    let pg = Postgres::start();
    let url = format!("{}?auto_create=false&table=app_cache", pg.url());
    let cache = Cache::from_url(&url).await.unwrap();
    assert_eq!(top_books(&cache, 8).await, Ok(vec![8, 108]), "fails open");
    let err = cache.get::<Vec<i64>>("x").await.unwrap_err().to_string();
    assert!(err.contains("app_cache"), "names the missing table: {err}");

    // The application's own migrations table is never touched.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        sql::ddl(Dialect::Postgres, "app_cache").unwrap(),
    ))
    .execute(&pool)
    .await
    .unwrap();
    cache.set("x", &1u8, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get::<u8>("x").await.unwrap(), Some(1));
    let tables: Vec<String> =
        sqlx::query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "app_cache",
            "app_cache_epoch",
            "app_cache_invalidations",
            "app_cache_locks"
        ]
    );
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // The exported constant and the shipped file are the same DDL.
    assert_eq!(
        sql::POSTGRES_DDL,
        include_str!("../cacheruntime/sql/postgres.sql")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_admit_one_holder_on_both_databases() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    for url in [pg.url(), sqlite_url(&dir, "locks.db")] {
        let clock = Clock::manual();
        let backend = SqlBackend::new(SqlConfig::new(url).clock(clock.clone())).unwrap();
        let ttl = Duration::from_secs(5);
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
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
        clock.advance(Duration::from_secs(6));
        assert!(
            backend.set_if_absent("lock:k", a, ttl).await.unwrap(),
            "expired lock taken"
        );
    }
}

#[tokio::test]
async fn bad_table_names_and_secrets_are_handled() {
    let err = Cache::from_url("sqlite:///tmp/x.db?table=x;drop%20table%20y")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not allowed"), "{err}");
    let cache = Cache::from_url("postgres://app:hunter2@127.0.0.1:1/db")
        .await
        .unwrap();
    assert!(!format!("{cache:?}").contains("hunter2"));
    let err = cache.get::<u8>("k").await.unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = Cache::from_url("sqlite:///tmp/x.db?sslmode=require")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown query parameter `sslmode`"), "{err}");
}
