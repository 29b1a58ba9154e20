//! SQL backend hits against a raw sqlx `SELECT value FROM .. WHERE key = $1`
//! on a pool of the same kind and size, on PostgreSQL and SQLite, in one run.
//!
//! `cargo bench --features postgres,sqlite --bench sql` (add `-- --quick`
//! for CI's short mode). Prints the ratios at the end.

#[path = "common/ratio.rs"]
mod ratio;
use ratio::mean_ns;

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::OnceLock;

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
    let (pg_pool, lite_pool) = rt.block_on(async {
        PG.set(Cache::from_url(&pg.url()).await.unwrap()).unwrap();
        LITE.set(Cache::from_url(&sqlite_url).await.unwrap())
            .unwrap();
        ours_pg(42).await.unwrap();
        ours_sqlite(42).await.unwrap();
        let before = (
            PG.get().unwrap().stats().hits,
            LITE.get().unwrap().stats().hits,
        );
        ours_pg(42).await.unwrap();
        ours_sqlite(42).await.unwrap();
        assert_eq!(
            PG.get().unwrap().stats().hits,
            before.0 + 1,
            "measuring hits"
        );
        assert_eq!(
            LITE.get().unwrap().stats().hits,
            before.1 + 1,
            "measuring hits"
        );
        let pg_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&pg.url())
            .await
            .unwrap();
        let lite_pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(10)
            .connect(&sqlite_url)
            .await
            .unwrap();
        (pg_pool, lite_pool)
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
    drop(pg);
}
