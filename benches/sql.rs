//! SQL backend hits against a raw sqlx `SELECT value FROM .. WHERE key = $1`
//! on a pool of the same kind and size, on PostgreSQL and SQLite, in one run.
//!
//! Then `invalidate_prefix` on a prefix holding a million rows (10,000 in
//! `--quick` mode), against what it cost before issue 13: the range
//! `DELETE` in the epoch bump's transaction.
//!
//! `cargo bench --features postgres,sqlite --bench sql` (add `-- --quick`
//! for CI's short mode). Prints the ratios at the end.

#[path = "common/ratio.rs"]
mod ratio;
#[path = "common/warm.rs"]
mod warm;
use ratio::mean_ns;

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cacheruntime::Cache;
use criterion::Criterion;
use sqlx::Row;

#[derive(Debug, Clone)]
pub struct DbError;

fn ranking(author_id: i64) -> Vec<i64> {
    (0..10).map(|i| author_id * 100 + i).collect()
}

static PG: OnceLock<Cache> = OnceLock::new();
static LITE: OnceLock<Cache> = OnceLock::new();

#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = PG.get().unwrap())]
async fn ours_pg(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = LITE.get().unwrap())]
async fn ours_sqlite(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

fn main() {
    let pg = support::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pg_pool, pg_no_ping, lite_pool) = rt.block_on(async {
        PG.set(Cache::from_url(&pg.url()).await.unwrap()).unwrap();
        LITE.set(Cache::from_url(&sqlite_url).await.unwrap())
            .unwrap();
        // Tables are created at first use: warm until each store serves.
        warm::until_hit(PG.get().unwrap(), || ours_pg(42)).await;
        warm::until_hit(LITE.get().unwrap(), || ours_sqlite(42)).await;
        let pg_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&pg.url())
            .await
            .unwrap();
        // sqlx pings a connection before each statement unless told not
        // to (the store does not): both, so that ours is compared like for
        // like.
        let pg_no_ping = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .test_before_acquire(false)
            .connect(&pg.url())
            .await
            .unwrap();
        let lite_pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(10)
            .connect(&sqlite_url)
            .await
            .unwrap();
        (pg_pool, pg_no_ping, lite_pool)
    });

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("postgres_hit");
        g.bench_function("ours", |b| b.to_async(&rt).iter(|| ours_pg(black_box(42))));
        g.bench_function("raw_select", |b| {
            b.to_async(&rt).iter(|| async {
                let row = sqlx::query("SELECT value FROM cache_entries WHERE key = $1")
                    .bind("author:42:top_books")
                    .fetch_optional(&pg_pool)
                    .await
                    .unwrap()
                    .unwrap();
                row.get::<Vec<u8>, _>(0)
            })
        });
        g.bench_function("raw_select_no_ping", |b| {
            b.to_async(&rt).iter(|| async {
                let row = sqlx::query("SELECT value FROM cache_entries WHERE key = $1")
                    .bind("author:42:top_books")
                    .fetch_optional(&pg_no_ping)
                    .await
                    .unwrap()
                    .unwrap();
                row.get::<Vec<u8>, _>(0)
            })
        });
        g.finish();
    }
    {
        // An author never asked for before, each time: the long tail's
        // first request (the read that locks, the write that unlocks).
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_000_000);
        let mut g = c.benchmark_group("postgres_cold_miss");
        g.bench_function("ours", |b| {
            b.to_async(&rt)
                .iter(|| ours_pg(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("sqlite_hit");
        g.bench_function("ours", |b| {
            b.to_async(&rt).iter(|| ours_sqlite(black_box(42)))
        });
        g.bench_function("raw_select", |b| {
            b.to_async(&rt).iter(|| async {
                let row = sqlx::query("SELECT value FROM cache_entries WHERE key = ?1")
                    .bind("author:42:top_books")
                    .fetch_optional(&lite_pool)
                    .await
                    .unwrap()
                    .unwrap();
                row.get::<Vec<u8>, _>(0)
            })
        });
        g.finish();
    }
    c.final_summary();
    // A million rows in a measuring run; 10,000 under `--quick` and in
    // criterion's test mode (`cargo test` runs benches without `--bench`;
    // `cargo bench -- --test` adds `--test`), which only check that the
    // bench works.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let measuring = has("--bench") && !has("--quick") && !has("--test");
    let rows = if measuring { 1_000_000 } else { 10_000 };
    let pg_url = format!("{}?sslmode=disable", pg.url());
    let invalidations = [
        ("postgres", rt.block_on(invalidation(&pg_url, rows))),
        ("sqlite", rt.block_on(invalidation(&sqlite_url, rows))),
    ];
    println!(
        "\n{:<14} {:>12} {:>14} {:>8}",
        "group", "ours ns", "raw_select ns", "ratio"
    );
    for group in ["postgres_hit", "sqlite_hit"] {
        if let (Some(x), Some(y)) = (mean_ns(group, "ours"), mean_ns(group, "raw_select")) {
            println!(
                "{group:<14} {x:>12.0} {y:>14.0} {:>7.3}x  target <= 1.10",
                x / y
            );
        }
    }
    // Against one round trip: a plain SELECT on a pool that does not ping.
    for (group, id) in [("postgres_hit", "ours"), ("postgres_cold_miss", "ours")] {
        if let (Some(x), Some(y)) = (
            mean_ns(group, id),
            mean_ns("postgres_hit", "raw_select_no_ping"),
        ) {
            println!(
                "{group:<18} {x:>12.0} ns, one SELECT round trip {y:>8.0} ns: {:>6.2}x",
                x / y
            );
        }
    }
    println!(
        "\n{:<9} {:>9} {:>22} {:>20} {:>26}",
        "store", "rows", "invalidate_prefix", "rows gone after", "before: DELETE in the tx"
    );
    for (store, m) in invalidations {
        println!(
            "{store:<9} {rows:>9} {:>19.2} ms {:>17.0} ms {:>23.0} ms",
            m.call.as_secs_f64() * 1e3,
            m.purged.as_secs_f64() * 1e3,
            m.one_transaction.as_secs_f64() * 1e3,
        );
    }
    drop(pg);
}

/// What invalidating a prefix of many rows costs.
struct Invalidation {
    /// The call, median of three (each on a freshly filled prefix).
    call: Duration,
    /// From the call until the last of the prefix's rows is deleted.
    purged: Duration,
    /// Before issue 13: bump, record and range `DELETE` in one transaction.
    one_transaction: Duration,
}

async fn invalidation(url: &str, rows: u32) -> Invalidation {
    let table = "inv_bench";
    let cache = Cache::from_url(&format!(
        // Unbounded: the rows are for the invalidation to delete, not a cull.
        "{url}{}table={table}&op_timeout=60s&max_entries=unbounded",
        if url.contains('?') { '&' } else { '?' }
    ))
    .await
    .unwrap();
    cache
        .set("big:0", &0u8, Duration::from_secs(3600))
        .await
        .unwrap();
    let pg = url.starts_with("postgres");
    let fill = if pg {
        format!(
            "INSERT INTO {table} (key, value, expires_at, epoch) \
             SELECT 'big:' || i, '\\x00'::bytea, 9000000000000000, \
             (SELECT epoch FROM {table}_epoch WHERE id = 1) FROM generate_series(1, {rows}) i"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO {table} (key, value, expires_at, epoch) \
             SELECT 'big:' || i, x'00', 9000000000000000, \
             (SELECT epoch FROM {table}_epoch WHERE id = 1) FROM n"
        )
    };
    let count = format!("SELECT COUNT(*) FROM {table}");
    let old_way = if pg {
        format!(
            "BEGIN; UPDATE {table}_epoch SET epoch = epoch + 1 WHERE id = 1; \
             DELETE FROM {table} WHERE key >= 'big:' AND key < 'big;'; COMMIT;"
        )
    } else {
        format!(
            "BEGIN IMMEDIATE; UPDATE {table}_epoch SET epoch = epoch + 1 WHERE id = 1; \
             DELETE FROM {table} WHERE key >= 'big:' AND key < 'big;'; COMMIT;"
        )
    };
    let run = |sql: String| async move {
        if pg {
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
    };
    let rows_left = |sql: String| async move {
        if pg {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        }
    };
    let mut calls = Vec::new();
    let mut purged = Duration::ZERO;
    for _ in 0..3 {
        run(fill.clone()).await;
        let started = Instant::now();
        cache.invalidate_prefix("big:").await.unwrap();
        calls.push(started.elapsed());
        while rows_left(count.clone()).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        purged = started.elapsed();
    }
    calls.sort();
    run(fill).await;
    let started = Instant::now();
    run(old_way).await;
    let one_transaction = started.elapsed();
    Invalidation {
        call: calls[1],
        purged,
        one_transaction,
    }
}
