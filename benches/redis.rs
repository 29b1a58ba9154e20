//! Redis backend against a real `redis-server` on loopback, side by side with
//! raw redis-rs and the `cached` crate's `AsyncRedisCache` in one run.
//!
//! `cargo bench --features redis --bench redis` (full) or with `-- --quick`
//! (CI's short mode, which skips the 1M-key invalidation). Prints the ratios
//! at the end; BENCHMARKS.md records them.

#[path = "common/ratio.rs"]
mod ratio;
#[path = "common/warm.rs"]
mod warm;
use ratio::mean_ns;

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::Cache;
use criterion::{BatchSize, Criterion};
use redis::AsyncCommands;

#[derive(Debug, Clone)]
pub struct DbError;

fn ranking(author_id: i64) -> Vec<i64> {
    (0..10).map(|i| author_id * 100 + i).collect()
}

static OURS: OnceLock<Cache> = OnceLock::new();
static NEAR: OnceLock<Cache> = OnceLock::new();
static MEMORY: OnceLock<Cache> = OnceLock::new();
static URL: OnceLock<String> = OnceLock::new();

#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = OURS.get().unwrap())]
async fn ours(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

/// `ours` on the same Redis with a near tier (`?near=32MiB`, near_check
/// 100 ms): a hot key is read from Redis once per near_check.
#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = NEAR.get().unwrap())]
async fn ours_near(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

/// `ours` on the memory store: what the near tier's hit is held to.
#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = MEMORY.get().unwrap())]
async fn ours_memory(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

#[cached::macros::concurrent_cached(
    map_error = r##"|_e| DbError"##,
    ty = "cached::AsyncRedisCache<i64, Vec<i64>>",
    create = r##" {
        cached::AsyncRedisCache::builder("peer_top_books")
            .ttl(std::time::Duration::from_secs(3600))
            .connection_string(URL.get().unwrap())
            .connection_manager(true)
            .build()
            .await
            .expect("build the cached crate's redis cache")
    } "##
)]
async fn peer(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

/// An author no call asked for before (the long tail's first request): a
/// cold miss of `ours` or `peer`.
fn fresh() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_000_000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs `op` `iters` times spread over 64 concurrent tasks; wall time.
async fn concurrently<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = iters / 64 + 1;
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed() * (iters as u32).max(1) / (per * 64) as u32
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let server = support::RedisServer::start();
    URL.set(server.url()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = RedisBackend::new(RedisConfig::new(server.url())).unwrap();
    OURS.set(Cache::builder().backend(backend).build().unwrap())
        .unwrap();
    let near = RedisBackend::new(RedisConfig::new(server.url())).unwrap();
    NEAR.set(
        Cache::builder()
            .backend(near)
            .near(32 << 20)
            .build()
            .unwrap(),
    )
    .unwrap();
    MEMORY.set(Cache::memory()).unwrap();
    let raw: redis::aio::ConnectionManager = rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let mut con = client.get_connection_manager().await.unwrap();
        // The raw baseline reads a value of the same size.
        let mut bytes = Vec::new();
        for v in ranking(42) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let _: () = con.set("raw:author:42:top_books", bytes).await.unwrap();
        peer(42).await.unwrap();
        // Measure hits: warm until the store serves one.
        warm::until_hit(OURS.get().unwrap(), || ours(42)).await;
        warm::until_hit(NEAR.get().unwrap(), || ours_near(42)).await;
        warm::until_hit(MEMORY.get().unwrap(), || ours_memory(42)).await;
        con
    });

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("redis_hit");
        g.bench_function("ours", |b| b.to_async(&rt).iter(|| ours(black_box(42))));
        g.bench_function("raw_get", |b| {
            b.to_async(&rt).iter(|| {
                let mut con = raw.clone();
                async move {
                    let v: Vec<u8> = con.get("raw:author:42:top_books").await.unwrap();
                    v
                }
            })
        });
        g.bench_function("cached_crate", |b| {
            b.to_async(&rt).iter(|| peer(black_box(42)))
        });
        g.bench_function("ours_near", |b| {
            b.to_async(&rt).iter(|| ours_near(black_box(42)))
        });
        g.bench_function("memory", |b| {
            b.to_async(&rt).iter(|| ours_memory(black_box(42)))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("redis_hit_64_tasks");
        g.bench_function("ours", |b| {
            b.to_async(&rt).iter_custom(|n| {
                concurrently(n, || async {
                    ours(42).await.unwrap();
                })
            })
        });
        g.bench_function("raw_get", |b| {
            b.to_async(&rt).iter_custom(|n| {
                let raw = raw.clone();
                concurrently(n, move || {
                    let mut con = raw.clone();
                    async move {
                        let _: Vec<u8> = con.get("raw:author:42:top_books").await.unwrap();
                    }
                })
            })
        });
        g.bench_function("raw_mget_same_keys", |b| {
            b.to_async(&rt).iter_custom(|n| {
                let raw = raw.clone();
                concurrently(n, move || {
                    let mut con = raw.clone();
                    async move {
                        let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                            .arg("v:{author}:42:top_books")
                            .arg("g:{author}:author:")
                            .arg("g:{author}:author:42:")
                            .arg("x:{author}:42:top_books")
                            .query_async(&mut con)
                            .await
                            .unwrap();
                    }
                })
            })
        });
        g.bench_function("cached_crate", |b| {
            b.to_async(&rt).iter_custom(|n| {
                concurrently(n, || async {
                    peer(42).await.unwrap();
                })
            })
        });
        g.bench_function("ours_near", |b| {
            b.to_async(&rt).iter_custom(|n| {
                concurrently(n, || async {
                    ours_near(42).await.unwrap();
                })
            })
        });
        g.finish();
    }
    {
        // A cold miss: ours (read, lock, computation, write) against one raw
        // GET round trip, and the `cached` crate's miss (GET, then SET, with
        // no protection against dog-piles).
        let mut g = c.benchmark_group("redis_cold_miss");
        g.bench_function("ours", |b| b.to_async(&rt).iter(|| ours(fresh())));
        g.bench_function("raw_get", |b| {
            b.to_async(&rt).iter(|| {
                let mut con = raw.clone();
                async move {
                    let v: Vec<u8> = con.get("raw:author:42:top_books").await.unwrap();
                    v
                }
            })
        });
        g.bench_function("cached_crate", |b| b.to_async(&rt).iter(|| peer(fresh())));
        g.finish();
    }
    let sizes: &[usize] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let cache = OURS.get().unwrap().clone();
    let mut con = raw.clone();
    for &size in sizes {
        // `size` keys under 100 prefixes; each run drops prefix `bulk:7:`.
        rt.block_on(async {
            let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
            for start in (0..size).step_by(10_000) {
                let mut pipe = redis::pipe();
                for i in start..(start + 10_000).min(size) {
                    pipe.set(format!("bulk:{}:{i}", i % 100), i).ignore();
                }
                let _: () = pipe.query_async(&mut con).await.unwrap();
            }
        });
        let refill = {
            let con = con.clone();
            move || {
                let mut con = con.clone();
                let mut pipe = redis::pipe();
                for i in (7..size).step_by(100) {
                    pipe.set(format!("bulk:7:{i}"), i).ignore();
                }
                (pipe, move |pipe: redis::Pipeline| async move {
                    let _: () = pipe.query_async(&mut con).await.unwrap();
                })
            }
        };
        let mut g = c.benchmark_group(format!("invalidate_{size}_keys"));
        g.sample_size(10);
        g.bench_function("ours", |b| {
            b.to_async(&rt)
                .iter(|| async { cache.invalidate_prefix("bulk:7:").await.unwrap() })
        });
        g.bench_function("scan_unlink", |b| {
            b.to_async(&rt).iter_batched(
                || {
                    let (pipe, run) = refill();
                    futures::executor::block_on(rt.spawn(run(pipe))).unwrap();
                },
                |()| {
                    let mut con = con.clone();
                    async move {
                        let mut cursor: u64 = 0;
                        loop {
                            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg("bulk:7:*")
                                .arg("COUNT")
                                .arg(1000)
                                .query_async(&mut con)
                                .await
                                .unwrap();
                            if !keys.is_empty() {
                                let _: i64 = con.unlink(keys).await.unwrap();
                            }
                            if next == 0 {
                                break;
                            }
                            cursor = next;
                        }
                    }
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
    c.final_summary();
    drop(Arc::new(()));

    let mut rows = vec![
        ("redis_hit", "ours", "raw_get", "latency, target <= 1.10"),
        ("redis_hit", "ours", "cached_crate", ""),
        (
            "redis_hit",
            "ours_near",
            "memory",
            "near tier hit against the memory store's, target <= 2",
        ),
        ("redis_hit", "ours_near", "raw_get", ""),
        (
            "redis_hit_64_tasks",
            "ours_near",
            "raw_get",
            "time per op, target <= 0.2 (throughput >= 5x)",
        ),
        (
            "redis_hit_64_tasks",
            "ours",
            "raw_get",
            "time per op, target <= 1.11 (throughput >= 0.9x)",
        ),
        ("redis_hit_64_tasks", "ours", "cached_crate", ""),
        (
            "redis_cold_miss",
            "ours",
            "raw_get",
            "round trips of a cold miss against one GET, target <= 2.2",
        ),
        (
            "redis_cold_miss",
            "ours",
            "cached_crate",
            "no dog-pile protection",
        ),
        (
            "redis_hit_64_tasks",
            "ours",
            "raw_mget_same_keys",
            "the same reply without our work",
        ),
    ];
    let groups: Vec<String> = sizes
        .iter()
        .map(|s| format!("invalidate_{s}_keys"))
        .collect();
    for g in &groups {
        rows.push((g.as_str(), "ours", "scan_unlink", "target: flat, <= 1 ms"));
    }
    println!(
        "\n{:<26} {:<9} {:>12}   {:<14} {:>12}   {:>8}",
        "group", "ours", "ns", "peer", "ns", "ratio"
    );
    for (group, a, b, note) in rows {
        if let (Some(x), Some(y)) = (mean_ns(group, a), mean_ns(group, b)) {
            println!(
                "{group:<26} {a:<9} {x:>12.0}   {b:<14} {y:>12.0}   {:>8.3}x  {note}",
                x / y
            );
        }
    }
    drop(server);
}
