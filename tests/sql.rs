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
        SqlConfig::new(url).database_clock(clock.clone()),
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
    // Everything needs a namespace (refused since ab28904): nothing hidden.
    assert!(matches!(
        cache.invalidate_prefix("").await,
        Err(Error::NamespaceRequired { .. })
    ));
    assert!(
        left("ab:1").await,
        "nothing invalidated by the refused call"
    );
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
    support::partial_prefixes_are_refused(&backend).await;
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
    let backend = SqlBackend::new(
        SqlConfig::new(&url)
            .database_clock(clock.clone())
            .max_entries(50),
    )
    .unwrap();
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
    // A generous op timeout: the test is about persistence, and each cache
    // here opens its pool (and the first creates the tables) in its first
    // calls, which took longer than the default 250 ms once beside the
    // other tests on a 2-core VM.
    let url = format!("{}?op_timeout=5s", sqlite_url(&dir, "persist.db"));
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
    // op_timeout as in `sqlite_entries_survive_a_process_restart`: the
    // first calls after the DDL open connections.
    let url = format!(
        "{}?auto_create=false&table=app_cache&op_timeout=5s",
        pg.url()
    );
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
        let backend = SqlBackend::new(SqlConfig::new(url).database_clock(clock.clone())).unwrap();
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

// ------------------------------------------------------------- issue 13

/// A superuser pool on `pg` (plain TCP).
async fn admin(pg: &Postgres) -> sqlx::PgPool {
    sqlx::PgPool::connect(&format!("{}?sslmode=disable", pg.url()))
        .await
        .unwrap()
}

/// Turns TLS off on a running server (reloaded, no restart) and waits
/// until new connections see it.
async fn tls_off(pg: &Postgres) {
    let pool = admin(pg).await;
    for statement in ["ALTER SYSTEM SET ssl = off", "SELECT pg_reload_conf()"] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = admin(pg).await;
        let ssl: String = sqlx::query("SHOW ssl")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        pool.close().await;
        if ssl == "off" {
            return;
        }
        assert!(Instant::now() < deadline, "ssl still {ssl}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_config_new_honours_verify_full_in_its_url() {
    let pg = Postgres::start();
    let url = |ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url_localhost(),
            ca.display()
        )
    };
    let good = SqlBackend::new(SqlConfig::new(url(&pg.certs.ca))).unwrap();
    good.set(
        "tls:1",
        Bytes::from_static(b"v"),
        Duration::from_secs(60),
        None,
    )
    .await
    .expect("the right CA is accepted");
    // The doc example's form: a server certificate from another CA is
    // refused, through the backend and through the cache.
    let wrong = SqlBackend::new(SqlConfig::new(url(&pg.certs.other_ca))).unwrap();
    let err = wrong
        .get("tls:1")
        .await
        .expect_err("untrusted certificate accepted");
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains(&pg.password), "{err}");
    let cache = cache_with(SqlConfig::new(url(&pg.certs.other_ca)), None);
    assert_eq!(top_books(&cache, 6).await, Ok(vec![6, 106]), "fails open");
    assert_eq!(cache.stats().hits, 0);
    assert_eq!(top_books(&cache, 6).await, Ok(vec![6, 106]));
    assert_eq!(
        cache.stats().hits,
        0,
        "nothing was stored over the untrusted link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_refuses_a_server_without_tls() {
    let pg = Postgres::start();
    tls_off(&pg).await;
    let require = format!("{}?sslmode=require", pg.url());
    // Through `Cache::from_url`.
    let cache = Cache::from_url(&format!("{require}&op_timeout=5s"))
        .await
        .unwrap();
    let err = cache.get::<u8>("k").await.expect_err("plaintext accepted");
    assert!(err.to_string().contains("TLS"), "{err}");
    // Through `SqlConfig::new`.
    let backend = SqlBackend::new(SqlConfig::new(require.as_str())).unwrap();
    let err = backend.get("k").await.expect_err("plaintext accepted");
    assert!(err.to_string().contains("TLS"), "{err}");
    // The server is reachable: `prefer` connects in plaintext.
    let prefer = SqlBackend::new(SqlConfig::new(pg.url())).unwrap();
    prefer
        .set("k", Bytes::from_static(b"v"), Duration::from_secs(60), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_parameters_in_a_sql_config_url_are_refused() {
    for (url, says) in [
        ("postgres://u:hunter2@h/db?sslmod=require", "`sslmod`"),
        ("postgres://u:hunter2@h/db?sslmode=verify-fulll", "sslmode"),
        ("postgres://u:hunter2@h/db?table=t", "SqlConfig::table"),
        ("postgres://u:hunter2@h/db?sslcert=c.pem", "sslkey"),
        ("sqlite:///tmp/x.db?sslmode=require", "`sslmode`"),
        ("sqlite:///tmp/x.db?max_ttl=1d", "SqlConfig::max_ttl"),
    ] {
        let err = SqlBackend::new(SqlConfig::new(url))
            .expect_err(url)
            .to_string();
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// Fills `rows` entries under `big:` straight through SQL (the tables
/// exist), expiring far in the future, written under the current epoch.
async fn fill(url: &str, rows: u32) {
    let sql = if url.starts_with("postgres") {
        format!(
            "INSERT INTO cache_entries (key, value, expires_at, epoch) \
             SELECT 'big:' || i, '\\x00'::bytea, 9000000000000000, \
             (SELECT epoch FROM cache_entries_epoch WHERE id = 1) \
             FROM generate_series(1, {rows}) i"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO cache_entries (key, value, expires_at, epoch) \
             SELECT 'big:' || i, x'00', 9000000000000000, \
             (SELECT epoch FROM cache_entries_epoch WHERE id = 1) FROM n"
        )
    };
    execute(url, &sql).await;
}

/// Runs `sql` (one or more statements) on the database at `url`.
async fn execute(url: &str, sql: &str) {
    let sql = sql.to_owned();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// One number from the database at `url`.
async fn number(url: &str, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).fetch_one(&pool).await.unwrap().get(0)
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).fetch_one(&pool).await.unwrap().get(0)
    }
}

async fn large_prefix(url: String, rows: u32) {
    // Unbounded: the rows are for the deletion to remove, not a cull.
    let backend =
        std::sync::Arc::new(SqlBackend::new(SqlConfig::new(url.as_str()).unbounded()).unwrap());
    // The default op timeout (250 ms).
    let cache = Cache::builder().backend(backend.clone()).build().unwrap();
    let ttl = Duration::from_secs(600);
    backend
        .set("big:0", Bytes::from_static(b"v"), ttl, None)
        .await
        .unwrap();
    fill(&url, rows).await;
    assert!(backend.get("big:7").await.unwrap().value.is_some());
    let started = Instant::now();
    cache
        .invalidate_prefix("big:")
        .await
        .unwrap_or_else(|e| panic!("{rows} rows: {e} after {:?}", started.elapsed()));
    // Hidden at once, whatever is left to delete.
    for k in ["big:0", "big:7", &format!("big:{rows}")] {
        assert!(backend.get(k).await.unwrap().value.is_none(), "{k} shows");
    }
    // Written after the invalidation: kept by the deletion that follows.
    let miss = backend.get("big:8").await.unwrap();
    backend
        .set(
            "big:8",
            Bytes::from_static(b"new"),
            ttl,
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = number(
            &url,
            "SELECT COUNT(*) FROM cache_entries WHERE key LIKE 'big:%'",
        )
        .await;
        if left == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = backend.get("big:8").await.unwrap().value;
    assert_eq!(got.as_deref(), Some(&b"new"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_large_prefix_returns_within_the_op_timeout() {
    let dir = tempfile::tempdir().unwrap();
    large_prefix(sqlite_url(&dir, "large.db"), 300_000).await;
    let pg = Postgres::start();
    large_prefix(format!("{}?sslmode=disable", pg.url()), 300_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_table_names_work_on_postgres() {
    let pg = Postgres::start();
    execute(&pg.url(), "CREATE SCHEMA app").await;
    for table in ["app.cache_entries", "app.web_cache"] {
        let url = format!("{}?table={table}&op_timeout=5s", pg.url());
        let cache = Cache::from_url(&url).await.unwrap();
        assert_eq!(top_books(&cache, 9).await, Ok(vec![9, 109]));
        assert_eq!(top_books(&cache, 9).await, Ok(vec![9, 109]));
        assert_eq!(cache.stats().hits, 1, "{table}: {:?}", cache.stats());
        cache.invalidate_prefix("author:9:").await.unwrap();
        cache.delete("author:9:top_books").await.unwrap();
        let backend = SqlBackend::new(SqlConfig::new(pg.url()).table(table)).unwrap();
        let token = Bytes::from_static(b"t");
        assert!(backend
            .set_if_absent("lock:q", token.clone(), Duration::from_secs(5))
            .await
            .unwrap());
        assert!(!backend
            .set_if_absent("lock:q", token.clone(), Duration::from_secs(5))
            .await
            .unwrap());
        assert!(backend.delete_if_equals("lock:q", &token).await.unwrap());
        backend.sweep().await.unwrap();
        let n = number(
            &pg.url(),
            &format!("SELECT COUNT(*) FROM {table}_invalidations"),
        )
        .await;
        assert_eq!(n, 2, "{table}: the prefix and the delete are recorded");
    }
    let public = number(
        &pg.url(),
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
    )
    .await;
    assert_eq!(public, 0, "nothing created outside the schema");
    // SQLite has no schemas: refused at build, saying so.
    let dir = tempfile::tempdir().unwrap();
    let err = Cache::from_url(&format!("{}?table=app.t", sqlite_url(&dir, "s.db")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_nul_is_bad_input_not_a_store_failure() {
    let pg = Postgres::start();
    let backend = std::sync::Arc::new(SqlBackend::new(SqlConfig::new(pg.url())).unwrap());
    let cache = Cache::builder()
        .backend(backend.clone())
        .op_timeout(Duration::from_secs(5))
        .circuit_breaker(2, Duration::from_secs(600))
        .build()
        .unwrap();
    let bad = "user:a\0b:feed";
    for _ in 0..5 {
        let err = cache.get::<u8>(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
        let v: u8 = cache
            .get_or_compute(bad, &cacheruntime::Policy::new(), || async { 7 })
            .await;
        assert_eq!(v, 7);
    }
    let stats = cache.stats();
    assert!(stats.errors >= 5, "{stats:?}");
    assert_eq!(stats.circuit_skips, 0, "{stats:?}");
    // The store is still used for every other key.
    cache
        .set("user:ok", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get::<u8>("user:ok").await.unwrap(), Some(1));
    // The backend refuses it as bad input too, whoever calls it.
    let err = backend.get(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    let err = cache.invalidate_prefix("user:a\0b:").await.unwrap_err();
    assert!(matches!(err, Error::InvalidPrefix { .. }), "{err}");
    // Every store validates keys the same way.
    let memory = Cache::memory();
    let err = memory.get::<u8>(bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
}

async fn epoch_row_deleted(url: String) {
    let cache = cache_with(SqlConfig::new(url.as_str()), None);
    let ttl = Duration::from_secs(60);
    cache.set("e:1", &1u8, ttl).await.unwrap();
    execute(&url, "DELETE FROM cache_entries_epoch").await;
    // Within one call each.
    cache.set("e:2", &2u8, ttl).await.unwrap();
    assert_eq!(cache.get::<u8>("e:2").await.unwrap(), Some(2));
    cache.invalidate_prefix("e:").await.unwrap();
    assert_eq!(cache.get::<u8>("e:2").await.unwrap(), None);
    assert_eq!(top_books(&cache, 4).await, Ok(vec![4, 104]));
    assert_eq!(top_books(&cache, 4).await, Ok(vec![4, 104]));
    assert!(cache.stats().hits >= 2, "{:?}", cache.stats());
    // The floor row alone: created again at the current epoch, within the
    // call; a computation that read before may not write.
    let backend = SqlBackend::new(SqlConfig::new(url.as_str())).unwrap();
    let before = backend.get("f:1").await.unwrap();
    backend.invalidate_prefix("g:").await.unwrap();
    execute(&url, "DELETE FROM cache_entries_epoch WHERE id = 2").await;
    let after = backend.get("f:2").await.unwrap();
    assert!(after.ticket.is_some());
    backend
        .set(
            "f:1",
            Bytes::from_static(b"old"),
            ttl,
            before.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert!(backend.get("f:1").await.unwrap().value.is_none());
    backend
        .set(
            "f:2",
            Bytes::from_static(b"new"),
            ttl,
            after.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert!(backend.get("f:2").await.unwrap().value.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_epoch_row_is_recovered_within_one_call() {
    let dir = tempfile::tempdir().unwrap();
    epoch_row_deleted(sqlite_url(&dir, "epoch.db")).await;
    let pg = Postgres::start();
    epoch_row_deleted(pg.url()).await;
}

async fn tables_recreated(url: String) {
    let backend = SqlBackend::new(SqlConfig::new(url.as_str())).unwrap();
    let ttl = Duration::from_secs(60);
    for _ in 0..5 {
        backend.invalidate_prefix("other:").await.unwrap();
    }
    // A computation starts: its read's ticket.
    let miss = backend.get("user:1:feed").await.unwrap();
    let old = miss.ticket.as_ref().and_then(|t| t.as_seq()).unwrap();
    // An operator drops the tables while it computes; another call
    // creates them again.
    execute(
        &url,
        "DROP TABLE cache_entries; DROP TABLE cache_entries_invalidations; \
         DROP TABLE cache_entries_epoch; DROP TABLE cache_entries_locks;",
    )
    .await;
    let _ = backend.get("x").await;
    let fresh = backend.get("user:2:feed").await.unwrap();
    let new = fresh.ticket.as_ref().and_then(|t| t.as_seq()).unwrap();
    assert!(new > old, "the epoch went back: {old} -> {new}");
    // The computation's write, under the old epoch, then an invalidation.
    backend
        .set(
            "user:1:feed",
            Bytes::from_static(b"old"),
            ttl,
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    backend.invalidate_prefix("user:1:").await.unwrap();
    assert!(
        backend.get("user:1:feed").await.unwrap().value.is_none(),
        "a value computed before the invalidation shows after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_never_go_back_when_the_tables_are_recreated() {
    let dir = tempfile::tempdir().unwrap();
    tables_recreated(sqlite_url(&dir, "recreated.db")).await;
    let pg = Postgres::start();
    tables_recreated(pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_and_counts_beyond_the_columns_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "limits.db");
    // A max_ttl that no column holds is refused at build, naming the limit.
    let err = SqlBackend::new(SqlConfig::new(url.as_str()).max_ttl(Duration::MAX))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_ttl"), "{err}");
    // A max_entries no count column holds, or 0, is refused at build,
    // naming the range and the way to have no bound.
    for n in [0, u64::MAX, i64::MAX as u64 + 1] {
        let err = SqlBackend::new(SqlConfig::new(url.as_str()).max_entries(n))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_entries") && err.contains("unbounded"),
            "{err}"
        );
    }
    SqlBackend::new(SqlConfig::new(url.as_str()).max_entries(i64::MAX as u64)).unwrap();
}

async fn clock_ahead(url: String) {
    // Process A's clock is five minutes ahead of process B's and of the
    // database's.
    let ahead = Clock::manual();
    ahead.advance(Duration::from_secs(300));
    #[allow(deprecated)]
    let a = SqlBackend::new(SqlConfig::new(url.as_str()).clock(ahead.clone())).unwrap();
    let b = SqlBackend::new(SqlConfig::new(url.as_str())).unwrap();
    let ttl = Duration::from_secs(60);
    b.set("fresh:1", Bytes::from_static(b"v"), ttl, None)
        .await
        .unwrap();
    assert!(b
        .set_if_absent("lock:1", Bytes::from_static(b"b"), Duration::from_secs(10))
        .await
        .unwrap());
    a.sweep().await.unwrap();
    assert!(
        b.get("fresh:1").await.unwrap().value.is_some(),
        "A swept B's fresh entry"
    );
    assert!(
        !a.set_if_absent("lock:1", Bytes::from_static(b"a"), Duration::from_secs(10))
            .await
            .unwrap(),
        "A took the lock B holds"
    );
    // A's own entries live their TTL for B too.
    a.set("fresh:2", Bytes::from_static(b"v"), ttl, None)
        .await
        .unwrap();
    assert!(b.get("fresh:2").await.unwrap().value.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_clock_is_ahead_neither_sweeps_fresh_rows_nor_takes_held_locks() {
    let dir = tempfile::tempdir().unwrap();
    clock_ahead(sqlite_url(&dir, "skew.db")).await;
    let pg = Postgres::start();
    clock_ahead(pg.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_that_cannot_work_are_refused_at_build() {
    for url in ["sqlite://:memory:", "sqlite://?mode=memory", "sqlite://"] {
        let err = Cache::from_url(url).await.expect_err(url).to_string();
        assert!(err.contains("name a file"), "{url}: {err}");
    }
    for url in [
        "sqlite://:memory:",
        "sqlite::memory:",
        "sqlite://?mode=memory",
    ] {
        let err = SqlBackend::new(SqlConfig::new(url))
            .expect_err(url)
            .to_string();
        assert!(err.contains("name a file"), "{url}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "zero.db");
    let err = Cache::from_url(&format!("{url}?sweep_interval=0"))
        .await
        .expect_err("sweep_interval=0")
        .to_string();
    assert!(err.contains("sweep_interval"), "{err}");
    let err = SqlBackend::new(SqlConfig::new(url.as_str()).sweep_interval(Duration::ZERO))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sweep_interval"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_uses_tables_that_another_user_owns() {
    let pg = Postgres::start();
    // The owner (here the superuser) creates the tables; the application's
    // role may only read and write them.
    let owner = admin(&pg).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        sql::ddl(Dialect::Postgres, "cache_entries").unwrap(),
    ))
    .execute(&owner)
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON cache_entries, cache_entries_epoch, \
         cache_entries_invalidations, cache_entries_locks TO app;",
    )
    .execute(&owner)
    .await
    .unwrap();
    let url = format!("postgres://app:app-pw@127.0.0.1:{}/postgres", pg.port);
    let cache = cache_with(SqlConfig::new(url.as_str()), None);
    assert_eq!(top_books(&cache, 2).await, Ok(vec![2, 102]));
    assert_eq!(top_books(&cache, 2).await, Ok(vec![2, 102]));
    assert_eq!(cache.stats().hits, 1, "{:?}", cache.stats());
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
    cache.invalidate_prefix("author:2:").await.unwrap();
    let backend = SqlBackend::new(SqlConfig::new(url.as_str())).unwrap();
    backend.sweep().await.unwrap();
}

/// Invalidating everything without a namespace means one thing on every
/// shared store: refused, naming the fix. SQL used to accept it and hide
/// every row of the table, other namespaces' included (Redis and Memcached
/// refused it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_everything_without_a_namespace_is_refused_and_reaches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "shared.db");
    let other_app = Cache::builder()
        .backend(SqlBackend::new(SqlConfig::new(url.clone())).unwrap())
        .namespace("other")
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    support::until_ready(&other_app).await;
    other_app
        .set("kept", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    let bare = cache_with(SqlConfig::new(url), None);
    let e = bare.invalidate_prefix("").await.unwrap_err();
    assert!(
        matches!(e, cacheruntime::Error::NamespaceRequired { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("namespace"), "{e}");
    assert_eq!(other_app.get::<u8>("kept").await.unwrap(), Some(1));
    assert!(bare.clear().await.is_err(), "clear agrees");
}

/// The price of `id` as a cached read of the database: `slow` holds the
/// computation between its SELECT and its return (to let a commit land
/// between them).
async fn cached_price(
    cache: &Cache,
    pool: &sqlx::PgPool,
    id: i64,
    slow: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
) -> i64 {
    let pool = pool.clone();
    let policy = cacheruntime::Policy::new().ttl(Duration::from_secs(600));
    cache
        .get_or_compute(&format!("price:{id}:cents"), &policy, || async move {
            let cents: i64 = sqlx::query("SELECT cents FROM prices WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            if let Some((read, go)) = slow {
                let _ = read.send(());
                let _ = go.await;
            }
            cents
        })
        .await
}

/// Invalidating before a commit leaves the old row cached (a reader misses
/// between the two and caches what it still sees); `invalidate_after`
/// commits first, and a reader that read the old row before the commit
/// and stores after it stays hidden: every read begun after the call
/// returned sees the new row. Against real PostgreSQL, with a concurrent
/// reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_after_a_commit_leaves_no_old_row_where_invalidating_before_it_does() {
    let pg = Postgres::start();
    let url = pg.url();
    execute(
        &url,
        "CREATE TABLE prices (id BIGINT PRIMARY KEY, cents BIGINT NOT NULL);
         INSERT INTO prices VALUES (1, 100), (2, 100);",
    )
    .await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let cache = Cache::builder()
        .backend(SqlBackend::new(SqlConfig::new(url.clone())).unwrap())
        .namespace("shop")
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    support::until_ready(&cache).await;

    // The mistake: invalidate, then commit.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE prices SET cents = 200 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    cache.invalidate_prefix("price:1:").await.unwrap();
    assert_eq!(
        cached_price(&cache, &pool, 1, None).await,
        100,
        "not committed yet"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        cached_price(&cache, &pool, 1, None).await,
        100,
        "invalidating before the commit left the old row cached"
    );

    // The pattern: a reader reads the old row before the commit and stores
    // after it; the commit and the invalidation land in between.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE prices SET cents = 200 WHERE id = 2")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let early = {
        let (cache, pool) = (cache.clone(), pool.clone());
        tokio::spawn(async move { cached_price(&cache, &pool, 2, Some((read_tx, go_rx))).await })
    };
    read_rx.await.unwrap();
    let committed = cache
        .invalidate_after(tx.commit(), &["price:2:"])
        .await
        .unwrap();
    committed.unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(
        early.await.unwrap(),
        100,
        "its call began before the commit"
    );
    // Every read from here on, from concurrent readers too.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, pool) = (cache.clone(), pool.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    assert_eq!(cached_price(&cache, &pool, 2, None).await, 200);
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(cache.stats().errors, 0);
}

/// Writes `n` entries through `backend`, entry `i` expiring after `1000 + i`
/// seconds (so the soonest to expire are the first written).
async fn write_entries(backend: &SqlBackend, prefix: &str, n: u64) {
    for i in 0..n {
        backend
            .set(
                &format!("{prefix}{i}"),
                Bytes::from_static(b"v"),
                Duration::from_secs(1000 + i),
                None,
            )
            .await
            .unwrap();
    }
}

async fn culls_to_the_bound(url: String) {
    let backend = SqlBackend::new(SqlConfig::new(url.as_str()).max_entries(50)).unwrap();
    write_entries(&backend, "many:", 230).await;
    // Sweeps started by the writes run one at a time with this one.
    backend.sweep().await.unwrap();
    assert_eq!(
        number(&url, "SELECT COUNT(*) FROM cache_entries").await,
        50,
        "culled down to max_entries"
    );
    // The ones left are the latest to expire; a culled one is a miss.
    assert!(backend.get("many:229").await.unwrap().value.is_some());
    assert!(backend.get("many:180").await.unwrap().value.is_some());
    assert!(backend.get("many:0").await.unwrap().value.is_none());
    assert!(backend.get("many:179").await.unwrap().value.is_none());
    // Unbounded keeps everything.
    let all = SqlBackend::new(SqlConfig::new(url.as_str()).unbounded()).unwrap();
    write_entries(&all, "all:", 120).await;
    all.sweep().await.unwrap();
    assert_eq!(
        number(
            &url,
            "SELECT COUNT(*) FROM cache_entries WHERE key LIKE 'all:%'"
        )
        .await,
        120
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writing_past_max_entries_is_culled_back_to_the_bound_soonest_to_expire_first() {
    let dir = tempfile::tempdir().unwrap();
    culls_to_the_bound(sqlite_url(&dir, "bound.db")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writing_past_max_entries_is_culled_back_to_the_bound_soonest_to_expire_first() {
    let pg = Postgres::start();
    culls_to_the_bound(pg.url()).await;
}

async fn invalidations_survive_the_cull(url: String) {
    let backend = SqlBackend::new(SqlConfig::new(url.as_str()).max_entries(20)).unwrap();
    let ttl = Duration::from_secs(100_000);
    // Entries that outlive the cull, then hidden by an invalidation and a
    // delete; a computation that read before the invalidation.
    for k in ["feed:1", "feed:2", "page:1"] {
        backend
            .set(k, Bytes::from_static(b"old"), ttl, None)
            .await
            .unwrap();
    }
    let before = backend.get("feed:3").await.unwrap();
    assert!(before.value.is_none());
    backend.invalidate_prefix("feed:").await.unwrap();
    backend.delete("page:1").await.unwrap();
    let records = number(&url, "SELECT COUNT(*) FROM cache_entries_invalidations").await;
    assert!(records >= 2, "an invalidation and a delete recorded");
    let epochs = number(&url, "SELECT COUNT(*) FROM cache_entries_epoch").await;
    // Far more entries than the bound, all expiring before the old ones.
    write_entries(&backend, "filler:", 150).await;
    backend.sweep().await.unwrap();
    assert!(number(&url, "SELECT COUNT(*) FROM cache_entries").await <= 20);
    assert_eq!(
        number(&url, "SELECT COUNT(*) FROM cache_entries_invalidations").await,
        records,
        "the cull removes no invalidation record"
    );
    assert_eq!(
        number(&url, "SELECT COUNT(*) FROM cache_entries_epoch").await,
        epochs,
        "nor the epoch rows"
    );
    for k in ["feed:1", "feed:2", "page:1"] {
        assert!(
            backend.get(k).await.unwrap().value.is_none(),
            "{k}: hidden before the cull, hidden after it"
        );
    }
    // The computation that read before the invalidation still cannot store.
    backend
        .set(
            "feed:3",
            Bytes::from_static(b"stale"),
            ttl,
            before.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert!(backend.get("feed:3").await.unwrap().value.is_none());
    // A fresh read's value is stored and served.
    let now = backend.get("feed:3").await.unwrap();
    backend
        .set(
            "feed:3",
            Bytes::from_static(b"new"),
            ttl,
            now.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(
        backend.get("feed:3").await.unwrap().value.as_deref(),
        Some(&b"new"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_deletes_still_hold_after_a_cull_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    invalidations_survive_the_cull(sqlite_url(&dir, "cull.db")).await;
    let pg = Postgres::start();
    invalidations_survive_the_cull(pg.url()).await;
}

#[tokio::test]
async fn max_entries_is_bounded_by_default_and_its_url_parameter_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "params.db");
    assert_eq!(sql::DEFAULT_MAX_ENTRIES, 100_000);
    let default = format!("{:?}", SqlConfig::new(url.as_str()));
    assert!(default.contains("max_entries: Some(100000)"), "{default}");
    assert!(format!("{:?}", SqlConfig::new(url.as_str()).unbounded()).contains("max_entries: None"));
    for ok in [
        "?max_entries=1",
        "?max_entries=250000",
        "?max_entries=unbounded",
    ] {
        Cache::from_url(&format!("{url}{ok}")).await.expect(ok);
    }
    for (bad, says) in [
        ("?max_entries=0", "out of range"),
        ("?max_entries=9223372036854775808", "out of range"),
        ("?max_entries=-5", "not a count"),
        ("?max_entries=lots", "not a count"),
        ("?max_entries=99999999999999999999", "not a count"),
    ] {
        let Err(err) = Cache::from_url(&format!("{url}{bad}")).await else {
            panic!("{bad} was accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains(says) && err.contains("max_entries") && err.contains("unbounded"),
            "{bad}: {err}"
        );
    }
}

/// A value written over an invalidated row just after the invalidation
/// outlives the invalidation's background purge, which deletes only rows
/// older than the invalidation. The purge used to re-check only the key of
/// a row rewritten while it ran (PostgreSQL re-reads a concurrently updated
/// row against the outer `WHERE`, and the epoch test was in a subquery), so
/// it deleted the new value: a lost write, and two concurrent `add`s of one
/// key could both return `true` (the conformance suite's add race caught it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_just_after_an_invalidation_outlive_its_purge() {
    let pg = Postgres::start();
    let cache = Cache::builder()
        .namespace("purge")
        .op_timeout(Duration::from_secs(10))
        .backend(SqlBackend::new(SqlConfig::new(pg.url())).unwrap())
        .build()
        .unwrap();
    let ttl = Duration::from_secs(600);
    let rows: Vec<(String, String)> = (0..20_000)
        .map(|i| (format!("p:{i:05}"), "old".to_owned()))
        .collect();
    let pairs: Vec<(&str, &str)> = rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cache.set_many(&pairs, ttl).await.unwrap();
    cache.invalidate_prefix("p:").await.unwrap();
    // Rewrite every 50th row while the purge walks the prefix: half by
    // `add` (over an invalidated row, it stores), half by `set`.
    let rewritten: Vec<String> = (0..20_000)
        .step_by(50)
        .map(|i| format!("p:{i:05}"))
        .collect();
    let writes = rewritten.iter().enumerate().map(|(n, key)| {
        let cache = cache.clone();
        async move {
            if n % 2 == 0 {
                assert!(
                    cache.add(key, "new", ttl).await.unwrap(),
                    "{key}: add refused"
                );
            } else {
                cache.set(key, "new", ttl).await.unwrap();
            }
        }
    });
    futures::future::join_all(writes).await;
    // The purge is done when no row it should delete is left.
    let admin = admin(&pg).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query("SELECT COUNT(*) FROM cache_entries")
            .fetch_one(&admin)
            .await
            .unwrap()
            .get(0);
        if left <= rewritten.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the purge left {left} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lost = Vec::new();
    for key in &rewritten {
        if cache.get::<String>(key).await.unwrap().as_deref() != Some("new") {
            lost.push(key.as_str());
        }
    }
    assert!(
        lost.is_empty(),
        "the purge deleted {} rewritten rows: {lost:?}",
        lost.len()
    );
}

/// A cold miss on PostgreSQL costs two statements, one round trip each,
/// counted in the server's statement log: the read that takes the key's
/// lock as it finds no entry, and the write that releases it (before: the
/// read, the lock, a look at the entry, the write, and the release in the
/// background, each after a ping of the connection: ten round trips, five
/// of them statements). A hit is one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_miss_on_postgres_costs_two_statements() {
    let pg = Postgres::start();
    let url = format!("{}?sslmode=disable", pg.url());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql).execute(&admin).await.unwrap();
    }
    let cache = cache_with(SqlConfig::new(url.clone()), None);
    let policy = cacheruntime::Policy::new().ttl(Duration::from_secs(600));
    let feed = |n: u32| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_compute(&format!("feed:{n}"), &policy, || async move {
                    format!("feed {n}")
                })
                .await
        }
    };
    // The statements the cache ran on its table between two marks.
    let mut marks = 0;
    let mut mark = || {
        marks += 1;
        let sql = format!("SELECT 'mark {marks}'");
        let admin = admin.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .unwrap();
        }
    };
    let between = |from: u32| {
        let log = std::fs::read_to_string(pg.dir.path().join("log")).unwrap();
        let start = log.find(&format!("'mark {from}'")).expect("the first mark");
        let end = log
            .find(&format!("'mark {}'", from + 1))
            .expect("the second mark");
        log[start..end]
            .lines()
            .filter(|l| l.contains("LOG:  execute") && l.contains("cache_entries"))
            .map(|l| l.splitn(3, ": ").nth(2).unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    // Connected, the tables made (the sweeper's first pass comes after
    // `sweep_interval`, 60 s: not during this test).
    assert_eq!(feed(0).await, "feed 0");
    mark().await;
    assert_eq!(feed(1).await, "feed 1");
    mark().await;
    assert_eq!(feed(1).await, "feed 1");
    mark().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cold = between(1);
    assert_eq!(
        cold.len(),
        2,
        "a cold miss: the read that locks, the write that unlocks; got {cold:#?}"
    );
    let hit = between(2);
    assert_eq!(hit.len(), 1, "a hit: one read; got {hit:#?}");
    assert_eq!(cache.stats().computations, 2);
    // No lock left behind: another handle computes at once.
    let other = cache_with(SqlConfig::new(url), None);
    cache.delete("feed:1").await.unwrap();
    let started = Instant::now();
    let got: String = other
        .get_or_compute("feed:1", &policy, || async { "again".to_owned() })
        .await;
    assert_eq!(got, "again");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for a lock"
    );
}

/// Which PostgreSQL changes announce themselves to near tiers: those that
/// may replace a value a near tier serves (`set`, invalidations), not a
/// computation's write after a true miss (no near tier holds a servable
/// copy then), whose notice would only serialize commits (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notices_announce_changes_near_tiers_may_serve_not_cold_misses() {
    let pg = Postgres::start();
    let url = format!("{}?sslmode=disable", pg.url());
    let cache = cache_with(SqlConfig::new(url.clone()), None);
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen("cacheruntime_changes").await.unwrap();
    let policy = cacheruntime::Policy::new().ttl(Duration::from_secs(600));
    for n in 0..5 {
        let got: String = cache
            .get_or_compute(&format!("feed:{n}"), &policy, || async move {
                format!("feed {n}")
            })
            .await;
        assert_eq!(got, format!("feed {n}"));
    }
    cache
        .set("feed:0", &"edited".to_owned(), Duration::from_secs(600))
        .await
        .unwrap();
    cache.invalidate_prefix("feed:").await.unwrap();
    let mut heard = Vec::new();
    while let Ok(Ok(Some(notice))) =
        tokio::time::timeout(Duration::from_millis(500), listener.try_recv()).await
    {
        heard.push(notice.payload().to_owned());
    }
    assert_eq!(
        heard.len(),
        2,
        "five cold misses, a set, an invalidation: {heard:?}"
    );
    assert_eq!(heard[0], "kfeed:0", "{heard:?}");
    assert!(
        heard[1].starts_with('P') && heard[1].ends_with("feed:"),
        "{heard:?}"
    );
}
