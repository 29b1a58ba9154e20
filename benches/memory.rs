//! Memory backend, side by side with the peers in one run.
//!
//! `cargo bench --bench memory` (full) or `cargo bench --bench memory -- --quick`
//! (the short mode CI runs). Prints the ratios at the end; BENCHMARKS.md
//! records them.
//!
//! Async calls that complete in one poll (every hit here) are driven by
//! polling once with a no-op waker, so executor overhead does not blur the
//! comparison; the same driver runs our functions and the peers'.

#[path = "common/ratio.rs"]
mod ratio;
use ratio::mean_ns;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use cacheruntime::codec::{BincodeCodec, Codec};
use cacheruntime::key::KeyBuilder;
use cacheruntime::Cache;
use criterion::{Criterion, Throughput};

#[derive(Debug)]
pub struct DbError;

fn ranking(author_id: i64) -> Vec<i64> {
    (0..10).map(|i| author_id * 100 + i).collect()
}

static OURS: LazyLock<Cache> = LazyLock::new(|| Cache::builder().memory(64 << 20).build().unwrap());

#[cacheruntime::cached(key = "author:{author_id}:top_books", ttl = 3600, cache = *OURS)]
async fn ours(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

/// `ours` with two tags: what a hit pays for them (reading both tags'
/// tokens, checking the entry was stored under them).
#[cacheruntime::cached(
    key = "author:{author_id}:top_books_tagged",
    tags = ["author:{author_id}", "catalog"],
    ttl = 3600,
    cache = *OURS
)]
async fn ours_two_tags(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

#[cached::macros::cached(max_size = 100_000, ttl_secs = 3600)]
async fn peer_cached(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

#[cached::macros::concurrent_cached(max_size = 100_000, ttl_secs = 3600)]
async fn peer_concurrent(author_id: i64) -> Result<Vec<i64>, DbError> {
    Ok(ranking(author_id))
}

static QC: LazyLock<quick_cache::sync::Cache<String, Vec<i64>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(100_000));

/// The hand-written equivalent: same key, same body, quick_cache underneath.
async fn hand_quick_cache(author_id: i64) -> Result<Vec<i64>, DbError> {
    let key = format!("author:{author_id}:top_books");
    if let Some(v) = QC.get(&key) {
        return Ok(v);
    }
    let v = ranking(author_id);
    QC.insert(key, v.clone());
    Ok(v)
}

/// Polls a future once; every hit completes in one poll. Anything that
/// does not (never the case for hits) is finished on the runtime.
fn ready<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(fut),
    }
}

fn hits(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    // Warm every cache.
    ready(rt, ours(42)).unwrap();
    ready(rt, peer_cached(42)).unwrap();
    ready(rt, peer_concurrent(42)).unwrap();
    ready(rt, hand_quick_cache(42)).unwrap();
    assert_eq!(OURS.stats().hits, 0);
    ready(rt, ours(42)).unwrap();
    assert_eq!(OURS.stats().hits, 1, "the benchmark measures hits");
    ready(rt, ours_two_tags(42)).unwrap();
    ready(rt, ours_two_tags(42)).unwrap();
    assert_eq!(OURS.stats().hits, 2, "the tagged benchmark measures hits");

    let mut g = c.benchmark_group("hit");
    g.bench_function("ours", |b| b.iter(|| ready(rt, ours(black_box(42)))));
    g.bench_function("ours_two_tags", |b| {
        b.iter(|| ready(rt, ours_two_tags(black_box(42))))
    });
    g.bench_function("cached_crate", |b| {
        b.iter(|| ready(rt, peer_cached(black_box(42))))
    });
    g.bench_function("cached_crate_concurrent", |b| {
        b.iter(|| ready(rt, peer_concurrent(black_box(42))))
    });
    g.bench_function("hand_quick_cache", |b| {
        b.iter(|| ready(rt, hand_quick_cache(black_box(42))))
    });
    // The `spans` feature with a subscriber that records info spans (as
    // an app logging at info does): what a hit's span costs once recorded.
    #[cfg(feature = "spans")]
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .with(tracing_subscriber::filter::LevelFilter::INFO);
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("ours_span_recorded", |b| {
                b.iter(|| ready(rt, ours(black_box(42))))
            });
        });
    }
    let key = "author:42:top_books".to_string();
    g.bench_function("raw_quick_cache_get", |b| {
        b.iter(|| QC.get(black_box(key.as_str())))
    });
    g.finish();
}

fn misses(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    let mut g = c.benchmark_group("miss");
    g.bench_function("ours", |b| {
        b.iter(|| ready(rt, ours(NEXT.fetch_add(1, Ordering::Relaxed) as i64)))
    });
    g.bench_function("cached_crate", |b| {
        b.iter(|| ready(rt, peer_cached(NEXT.fetch_add(1, Ordering::Relaxed) as i64)))
    });
    g.bench_function("hand_quick_cache", |b| {
        b.iter(|| {
            ready(
                rt,
                hand_quick_cache(NEXT.fetch_add(1, Ordering::Relaxed) as i64),
            )
        })
    });
    g.finish();
}

fn keys_and_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.bench_function("ours_template", |b| {
        b.iter(|| {
            let mut k = KeyBuilder::new();
            k.literal("author:");
            k.value(&black_box(42i64));
            k.literal(":top_books");
            k
        })
    });
    g.bench_function("format_macro", |b| {
        b.iter(|| format!("author:{}:top_books", black_box(42i64)))
    });
    g.bench_function("ours_escaped_text", |b| {
        b.iter(|| {
            let mut k = KeyBuilder::new();
            k.literal("embed:");
            k.value(black_box("https://example.test/a b:c"));
            k
        })
    });
    g.finish();

    let mut g = c.benchmark_group("codec");
    let value = ranking(42);
    let codec = BincodeCodec;
    g.bench_function("bincode_roundtrip_vec10", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(64);
            codec.encode(black_box(&value), &mut out).unwrap();
            codec.decode::<Vec<i64>>(&out).unwrap()
        })
    });
    g.finish();
}

/// Hits from two threads at once, time per hit: on one hot key (every hit
/// touches the same entry) and spread over 1,024 warm keys.
fn throughput(c: &mut Criterion, rt: &'static tokio::runtime::Runtime) {
    fn two_threads<F, Fut>(
        iters: u64,
        keys: i64,
        rt: &'static tokio::runtime::Runtime,
        f: F,
    ) -> Duration
    where
        F: Fn(i64) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future,
    {
        let per = iters / 2 + 1;
        let start = Instant::now();
        let threads: Vec<_> = (0..2i64)
            .map(|t| {
                std::thread::spawn(move || {
                    let _guard = rt.enter();
                    for i in 0..per as i64 {
                        black_box(ready(rt, f(black_box((i * 7 + t * 513) % keys))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        start.elapsed()
    }
    for k in 0..1024 {
        ready(rt, ours(k)).unwrap();
        ready(rt, peer_cached(k)).unwrap();
        ready(rt, peer_concurrent(k)).unwrap();
        ready(rt, hand_quick_cache(k)).unwrap();
    }
    for (group, keys) in [
        ("throughput_2_threads_hot_key", 1),
        ("throughput_2_threads_1k_keys", 1024),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        g.bench_function("ours", |b| {
            b.iter_custom(|n| two_threads(n, keys, rt, ours))
        });
        g.bench_function("cached_crate", |b| {
            b.iter_custom(|n| two_threads(n, keys, rt, peer_cached))
        });
        g.bench_function("cached_crate_concurrent", |b| {
            b.iter_custom(|n| two_threads(n, keys, rt, peer_concurrent))
        });
        g.bench_function("hand_quick_cache", |b| {
            b.iter_custom(|n| two_threads(n, keys, rt, hand_quick_cache))
        });
        g.finish();
    }
}

fn print_ratios() {
    let rows = [
        ("hit", "ours", "cached_crate", "target <= 0.70"),
        ("hit", "ours", "cached_crate_concurrent", ""),
        ("hit", "ours", "hand_quick_cache", ""),
        ("hit", "ours", "raw_quick_cache_get", "target <= 3.00"),
        ("hit", "ours_two_tags", "ours", "two tags vs none"),
        ("miss", "ours", "cached_crate", ""),
        ("miss", "ours", "hand_quick_cache", ""),
        ("key", "ours_template", "format_macro", ""),
        (
            "throughput_2_threads_hot_key",
            "ours",
            "cached_crate",
            "wall time per hit",
        ),
        (
            "throughput_2_threads_hot_key",
            "ours",
            "cached_crate_concurrent",
            "",
        ),
        (
            "throughput_2_threads_hot_key",
            "ours",
            "hand_quick_cache",
            "",
        ),
        (
            "throughput_2_threads_1k_keys",
            "ours",
            "cached_crate",
            "wall time per hit",
        ),
        (
            "throughput_2_threads_1k_keys",
            "ours",
            "cached_crate_concurrent",
            "",
        ),
        (
            "throughput_2_threads_1k_keys",
            "ours",
            "hand_quick_cache",
            "",
        ),
    ];
    println!(
        "\n{:<30} {:<14} {:>8}   {:<24} {:>8}   {:>6}",
        "group", "ours", "ns", "peer", "ns", "ratio"
    );
    for (group, a, b, note) in rows {
        if let (Some(x), Some(y)) = (mean_ns(group, a), mean_ns(group, b)) {
            println!(
                "{group:<30} {a:<14} {x:>8.1}   {b:<24} {y:>8.1}   {:>6.2}x  {note}",
                x / y
            );
        }
    }
}

fn main() {
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let _guard = rt.enter();
    // With the `metrics` feature, a real recorder: the one the bookshop
    // installs (the hit path records nothing; the counters are copied once
    // a second by the cache's publishing thread).
    #[cfg(feature = "metrics")]
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a Prometheus recorder");
    let mut c = Criterion::default().configure_from_args();
    hits(&mut c, rt);
    misses(&mut c, rt);
    keys_and_codec(&mut c);
    throughput(&mut c, rt);
    c.final_summary();
    print_ratios();
}
