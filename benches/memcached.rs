//! Memcached hit through `#[cached]` against the raw client's get of the
//! same bytes, on one `memcached` started by the bench, in one run; and a
//! cold miss (a key never asked for, each time) against that get's round
//! trip.
//!
//! `cargo bench --features memcached --bench memcached` (add `-- --quick`
//! for CI's short mode). Prints the ratio at the end.

#[path = "common/ratio.rs"]
mod ratio;
#[path = "common/warm.rs"]
mod warm;
use ratio::mean_ns;

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::OnceLock;

use cacheruntime::Cache;
use criterion::Criterion;

#[derive(Debug, Clone)]
pub struct DbError;

static OURS: OnceLock<Cache> = OnceLock::new();

#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = OURS.get().unwrap())]
async fn ours(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok((0..10).map(|i| author_id * 100 + i).collect())
}

fn main() {
    let server = support::MemcachedServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = rt.block_on(async {
        OURS.set(
            Cache::from_url(&format!("memcached://{}", server.addr()))
                .await
                .unwrap(),
        )
        .unwrap();
        // Measure hits: warm until the store serves one.
        warm::until_hit(OURS.get().unwrap(), || ours(42)).await;
        let raw = memcache::exp::MemcacheBuilder::new()
            .connect_async([server.addr()])
            .await
            .unwrap();
        let bytes: Vec<u8> = (0..10i64).flat_map(|i| (4200 + i).to_le_bytes()).collect();
        raw.set(
            "raw:author:42:top_books",
            bytes,
            std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
        raw
    });

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("memcached_hit");
    g.bench_function("ours", |b| b.to_async(&rt).iter(|| ours(black_box(42))));
    g.bench_function("raw_get", |b| {
        b.to_async(&rt).iter(|| async {
            let v: Option<Vec<u8>> = raw.get("raw:author:42:top_books").await.unwrap();
            v.unwrap()
        })
    });
    g.finish();
    // An author never asked for before, each time: the long tail's first
    // request (the read that locks, the write that unlocks).
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_000_000);
    let mut g = c.benchmark_group("memcached_cold_miss");
    g.bench_function("ours", |b| {
        b.to_async(&rt)
            .iter(|| ours(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    });
    g.finish();
    c.final_summary();
    if let (Some(x), Some(y)) = (
        mean_ns("memcached_hit", "ours"),
        mean_ns("memcached_hit", "raw_get"),
    ) {
        println!(
            "\nmemcached_hit  ours {x:.0} ns  raw_get {y:.0} ns  ratio {:.3}x  target <= 1.10",
            x / y
        );
        if let Some(z) = mean_ns("memcached_cold_miss", "ours") {
            println!(
                "memcached_cold_miss  ours {z:.0} ns  {:.2}x one raw get's round trip",
                z / y
            );
        }
    }
    drop(server);
}
