//! zstd compression (`compress_above`) on feed-sized entries: set + get
//! with and without it, on the memory store and on a real `redis-server`
//! on loopback, with the compression ratio (stored bytes / raw bytes) read
//! back from Redis.
//!
//! `cargo bench --features compression,redis --bench compression` (full) or
//! with `-- --quick` (CI's short mode). Prints the ratios at the end;
//! BENCHMARKS.md records them.
//!
//! The payloads are the RSS feeds of `examples/third_party.rs`, made by a
//! copy of its generator (`feed` below, the same XML without the response
//! counter): the example's own feeds have 5 items (under 1 KiB); the
//! 50-item feed is the same generator at a common real feed length. Their
//! items differ only in the post number, so they compress better than real
//! feeds, whose titles and descriptions are prose: read the ratio as a best
//! case, the times as what zstd costs at that size.

#[path = "common/ratio.rs"]
mod ratio;
#[path = "common/warm.rs"]
mod warm;
use ratio::mean_ns;

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::Cache;
use criterion::Criterion;

/// An RSS feed as `examples/third_party.rs` serves it, with `items` items.
fn feed(name: &str, items: usize) -> String {
    let items: String = (1..=items)
        .map(|i| {
            format!(
                "<item><title>{name} post {i}</title>\
                 <link>https://{name}.example/posts/{i}</link>\
                 <guid>https://{name}.example/posts/{i}</guid></item>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <rss version=\"2.0\"><channel><title>{name}</title>\
         <link>https://{name}.example/</link><description>The {name} feed</description>\
         {items}</channel></rss>"
    )
}

/// Payloads of this many bytes or more are compressed: below the 5-item
/// feed, so both sizes are.
const ABOVE: usize = 512;
const TTL: Duration = Duration::from_secs(3600);
const SIZES: [(&str, usize); 2] = [("feed_5_items", 5), ("feed_50_items", 50)];

static MEM_ZSTD: OnceLock<Cache> = OnceLock::new();
static MEM_PLAIN: OnceLock<Cache> = OnceLock::new();

fn feed_50() -> &'static str {
    static FEED: OnceLock<String> = OnceLock::new();
    FEED.get_or_init(|| feed("news", 50))
}

#[derive(Debug, Clone)]
pub struct Upstream;

#[cacheruntime::cached(key = "hit:{name}", ttl = 3600, cache = MEM_ZSTD.get().unwrap())]
async fn hit_zstd(name: &str) -> Result<String, Upstream> {
    Ok(feed_50().to_owned())
}

#[cacheruntime::cached(key = "hit:{name}", ttl = 3600, cache = MEM_PLAIN.get().unwrap())]
async fn hit_plain(name: &str) -> Result<String, Upstream> {
    Ok(feed_50().to_owned())
}

/// The largest value Redis holds under a key naming `namespace` and `key`:
/// the entry (the other keys a cache keeps are counters of a few bytes).
fn stored_len(server: &support::RedisServer, namespace: &str, key: &str) -> usize {
    server
        .cli(&["--scan", "--pattern", &format!("*{namespace}*{key}*")])
        .lines()
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            server
                .cli(&["STRLEN", k.trim()])
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

fn main() {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let redis = |namespace: &str, compress: bool| {
        let backend = RedisBackend::new(RedisConfig::new(server.url())).unwrap();
        let mut builder = Cache::builder().backend(backend).namespace(namespace);
        if compress {
            builder = builder.compress_above(ABOVE);
        }
        builder.build().unwrap()
    };
    let memory = |compress: bool| {
        let mut builder = Cache::builder().memory(64 << 20);
        if compress {
            builder = builder.compress_above(ABOVE);
        }
        builder.build().unwrap()
    };
    MEM_ZSTD.set(memory(true)).unwrap();
    MEM_PLAIN.set(memory(false)).unwrap();
    let caches = [
        ("memory_plain", memory(false)),
        ("memory_zstd", memory(true)),
        ("redis_plain", redis("plain", false)),
        ("redis_zstd", redis("zstd", true)),
    ];

    // The ratio, from what Redis holds (the memory store holds the same
    // bytes: the entry format does not depend on the store).
    let mut ratios = Vec::new();
    rt.block_on(async {
        for (_, cache) in &caches[2..] {
            warm::until_hit(cache, || async {
                cache.set("warm", &1u8, TTL).await.ok();
                cache.get::<u8>("warm").await.ok()
            })
            .await;
        }
        for (label, items) in SIZES {
            let raw = feed("news", items);
            for (_, cache) in &caches[2..] {
                cache.set(label, &raw, TTL).await.unwrap();
            }
            let plain = stored_len(&server, "plain", label);
            let zstd = stored_len(&server, "zstd", label);
            ratios.push((label, raw.len(), plain, zstd));
        }
    });

    let mut c = Criterion::default().configure_from_args();
    for (label, items) in SIZES {
        let value = feed("news", items);
        let mut g = c.benchmark_group(format!("compression_set_get_{label}"));
        for (name, cache) in &caches {
            g.bench_function(*name, |b| {
                b.to_async(&rt).iter(|| async {
                    cache.set(label, black_box(&value), TTL).await.unwrap();
                    let got: Option<String> = cache.get(label).await.unwrap();
                    assert_eq!(got.as_ref().map(String::len), Some(value.len()));
                    got
                })
            });
        }
        g.finish();
    }
    {
        // `#[cached]` hits of a `Clone` type on the memory store are served
        // from the decoded copy beside the entry: no decompression per hit.
        rt.block_on(async {
            hit_zstd("news").await.unwrap();
            hit_plain("news").await.unwrap();
        });
        let mut g = c.benchmark_group("compression_memory_hit_feed_50_items");
        g.bench_function("memory_plain", |b| {
            b.to_async(&rt).iter(|| hit_plain(black_box("news")))
        });
        g.bench_function("memory_zstd", |b| {
            b.to_async(&rt).iter(|| hit_zstd(black_box("news")))
        });
        g.finish();
    }
    c.final_summary();

    println!(
        "\n{:<16} {:>9} {:>13} {:>12} {:>8}",
        "payload", "raw bytes", "stored plain", "stored zstd", "ratio"
    );
    for (label, raw, plain, zstd) in ratios {
        println!(
            "{label:<16} {raw:>9} {plain:>13} {zstd:>12} {:>8.3}  (stored zstd / raw XML)",
            zstd as f64 / raw.max(1) as f64
        );
    }
    println!(
        "\n{:<40} {:<13} {:>9}   {:<12} {:>9}   {:>6}",
        "group", "zstd", "ns", "plain", "ns", "ratio"
    );
    let mut groups: Vec<(String, &str)> = SIZES
        .iter()
        .flat_map(|(label, _)| {
            [
                (format!("compression_set_get_{label}"), "memory"),
                (format!("compression_set_get_{label}"), "redis"),
            ]
        })
        .collect();
    groups.push(("compression_memory_hit_feed_50_items".into(), "memory"));
    for (group, store) in groups {
        let (z, p) = (format!("{store}_zstd"), format!("{store}_plain"));
        if let (Some(x), Some(y)) = (mean_ns(&group, &z), mean_ns(&group, &p)) {
            println!(
                "{group:<40} {z:<13} {x:>9.1}   {p:<12} {y:>9.1}   {:>6.2}x",
                x / y
            );
        }
    }
}
