//! The HTTP layer over loopback with a real HTTP client (reqwest, keep-alive,
//! the same client for every contestant), side by side in one run:
//!
//! - **hit**: a handler returning a static 2 KiB body, bare and behind our
//!   `CacheLayer` on the memory store (a hit), and behind
//!   `axum-response-cache` 0.5 (its own in-process cache, a hit), one
//!   request at a time and from 16 concurrent clients;
//! - **slow handler**: a handler taking 50 ms, Zipf traffic (s = 1.1) over
//!   1,000 pages from 32 concurrent clients for a fixed time: without the
//!   layer, then with it from a cold cache, then again on the cache the
//!   cold run left (warm): requests/s and the layer's hit rate in each run,
//!   printed in a table of its own.
//!
//! `cargo bench --features http --bench http` (full: 10 s per throughput
//! run) or with `-- --quick` (CI's short mode: 2 s). Prints the ratios at
//! the end; BENCHMARKS.md records them.

#[path = "common/ratio.rs"]
mod ratio;
#[path = "common/warm.rs"]
mod warm;
use ratio::mean_ns;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cacheruntime::http::CacheLayer;
use cacheruntime::Cache;
use criterion::Criterion;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};

/// The static body every hit contestant returns.
static BODY: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(vec![b'x'; 2048]));

const PAGES: u64 = 1_000;
const ZIPF_S: f64 = 1.1;
const SLOW: Duration = Duration::from_millis(50);
const SLOW_CLIENTS: usize = 32;
const HIT_CLIENTS: u64 = 16;

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// How many times each hit contestant's handler ran: bare, ours, peer.
static RUNS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn static_route(runs: &'static AtomicU64) -> axum::routing::MethodRouter {
    get(move || async move {
        runs.fetch_add(1, Ordering::Relaxed);
        BODY.clone()
    })
}

/// One GET, body read whole; its length and `X-Cache`.
async fn fetch(client: &reqwest::Client, url: &str) -> (usize, Option<String>) {
    let r = client.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let x_cache = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.bytes().await.unwrap().len(), x_cache)
}

/// Runs `iters` requests to `url` over `HIT_CLIENTS` concurrent clients;
/// wall time scaled to `iters`.
async fn concurrently(client: &reqwest::Client, url: &str, iters: u64) -> Duration {
    with_clients(client, url, iters, HIT_CLIENTS).await
}

/// Runs `iters` requests to `url` over `clients` concurrent clients; wall
/// time scaled to `iters`.
async fn with_clients(client: &reqwest::Client, url: &str, iters: u64, clients: u64) -> Duration {
    let per = iters / clients + 1;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                for _ in 0..per {
                    fetch(&client, &url).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started
        .elapsed()
        .mul_f64(iters.max(1) as f64 / (per * clients) as f64)
}

/// Medians of rounds that take turns between the contestants (the order
/// rotating each round), so that a swing in the machine's load, which on
/// two shared cores moves loopback figures by up to 2x within a run, falls
/// on every contestant alike rather than on whichever criterion measured
/// at the time.
struct Interleaved {
    clients: u64,
    rounds: usize,
    per_round: u64,
    /// ns per request: bare, ours, axum-response-cache.
    medians: [f64; 3],
}

async fn interleaved(
    client: &reqwest::Client,
    urls: [&str; 3],
    clients: u64,
    rounds: usize,
    per_round: u64,
) -> Interleaved {
    let mut samples: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for turn in 0..3 {
            let i = (round + turn) % 3;
            let took = with_clients(client, urls[i], per_round, clients).await;
            samples[i].push(took.as_nanos() as f64 / per_round as f64);
        }
    }
    let medians = samples.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    Interleaved {
        clients,
        rounds,
        per_round,
        medians,
    }
}

fn print_interleaved(runs: &[Interleaved]) {
    println!("\ninterleaved rounds (median ns per request; throughput ratio = other / ours)");
    println!(
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>9}   {:>14} {:>22}",
        "clients",
        "rounds",
        "requests",
        "bare",
        "ours",
        "peer",
        "ours vs bare",
        "ours vs axum-resp-cache"
    );
    for r in runs {
        let [bare, ours, peer] = r.medians;
        println!(
            "{:>7} {:>7} {:>9} {:>9.0} {:>9.0} {:>9.0}   {:>13.3}x {:>22.3}x",
            r.clients,
            r.rounds,
            r.per_round,
            bare,
            ours,
            peer,
            bare / ours,
            peer / ours
        );
    }
    println!("targets: ours vs bare >= 0.85x; ours vs axum-response-cache > 1x (faster)");
}

/// The same three routes called in process (`Router` as a tower service,
/// body collected), without sockets or an HTTP client: what the layer
/// itself costs per hit, which the loopback groups show only as a share of
/// a request's whole cost.
fn in_process(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    use tower::ServiceExt;
    let cache = &Cache::builder().memory(64 << 20).build().unwrap();
    static RUNS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    let layer = CacheLayer::builder(cache.clone())
        .key("inproc:{path}")
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let peer = axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(3600));
    let routers = [
        (
            "bare",
            Router::new().route("/static", static_route(&RUNS[0])),
        ),
        (
            "ours",
            Router::new()
                .route("/static", static_route(&RUNS[1]))
                .layer(layer),
        ),
        (
            "axum_response_cache",
            Router::new().route("/static", static_route(&RUNS[2]).layer(peer)),
        ),
    ];
    let call = |router: Router| async move {
        let request = axum::http::Request::get("/static")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .len()
    };
    rt.block_on(async {
        for (name, router) in &routers {
            assert_eq!(call(router.clone()).await, 2048, "{name}");
        }
        warm::until_hit(cache, || call(routers[1].1.clone())).await;
    });
    let mut g = c.benchmark_group("http_hit_2k_in_process");
    for (name, router) in &routers {
        g.bench_function(*name, |b| b.to_async(rt).iter(|| call(router.clone())));
    }
    g.finish();
    let runs = |i: usize| RUNS[i].load(Ordering::Relaxed);
    assert_eq!((runs(1), runs(2)), (1, 1), "ours, axum-response-cache");
}

struct Contestants {
    bare: String,
    ours: String,
    peer: String,
}

fn hits(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
) -> (Cache, Vec<Interleaved>) {
    let cache = Cache::builder().memory(64 << 20).build().unwrap();
    let urls = rt.block_on(async {
        let layer = CacheLayer::builder(cache.clone())
            .key("page:{path}")
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        let peer = axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(3600));
        let urls = Contestants {
            bare: format!(
                "{}/static",
                serve(Router::new().route("/static", static_route(&RUNS[0]))).await
            ),
            ours: format!(
                "{}/static",
                serve(
                    Router::new()
                        .route("/static", static_route(&RUNS[1]))
                        .layer(layer)
                )
                .await
            ),
            peer: format!(
                "{}/static",
                serve(Router::new().route("/static", static_route(&RUNS[2]).layer(peer))).await
            ),
        };
        for url in [&urls.bare, &urls.ours, &urls.peer] {
            assert_eq!(fetch(client, url).await.0, 2048, "{url}");
        }
        warm::until_hit(&cache, || fetch(client, &urls.ours)).await;
        assert_eq!(fetch(client, &urls.ours).await.1.as_deref(), Some("hit"));
        urls
    });
    in_process(c, rt);
    let contestants = [
        ("bare", &urls.bare),
        ("ours", &urls.ours),
        ("axum_response_cache", &urls.peer),
    ];
    {
        let mut g = c.benchmark_group("http_hit_2k");
        for (name, url) in contestants {
            g.bench_function(name, |b| b.to_async(rt).iter(|| fetch(client, url)));
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("http_hit_2k_16_clients");
        for (name, url) in contestants {
            g.bench_function(name, |b| {
                b.to_async(rt).iter_custom(|n| concurrently(client, url, n))
            });
        }
        g.finish();
    }
    let rounds = if std::env::args().any(|a| a == "--quick") {
        5
    } else {
        21
    };
    let urls3 = [urls.bare.as_str(), urls.ours.as_str(), urls.peer.as_str()];
    let fair = rt.block_on(async {
        vec![
            interleaved(client, urls3, 1, rounds, 400).await,
            interleaved(client, urls3, HIT_CLIENTS, rounds, 4000).await,
        ]
    });
    // Both caches answered every measured request: each handler ran once,
    // for the first request.
    let runs = |i: usize| RUNS[i].load(Ordering::Relaxed);
    assert_eq!((runs(1), runs(2)), (1, 1), "ours, axum-response-cache");
    (cache, fair)
}

/// Requests answered and the layer's hit rate (if any) of one timed run of
/// Zipf traffic against `base/page/{n}`.
struct Run {
    requests: u64,
    seconds: f64,
    hit_rate: Option<f64>,
}

async fn zipf_traffic(
    client: &reqwest::Client,
    base: &str,
    clients: usize,
    run_for: Duration,
) -> (u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (client, base, done) = (client.clone(), base.to_owned(), done.clone());
            tokio::spawn(async move {
                let zipf = Zipf::new(PAGES as f64, ZIPF_S).expect("valid Zipf");
                let mut rng = SmallRng::seed_from_u64(i as u64);
                while Instant::now() < deadline {
                    let page = zipf.sample(&mut rng) as u64;
                    fetch(&client, &format!("{base}/page/{page}")).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (
        done.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    )
}

fn slow_handler(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    clients: usize,
    run_for: Duration,
) -> [Run; 3] {
    let slow_page = || {
        get(|Path(n): Path<u64>| async move {
            tokio::time::sleep(SLOW).await;
            format!("page {n}\n{}", "x".repeat(2048))
        })
    };
    rt.block_on(async {
        let bare = serve(Router::new().route("/page/{n}", slow_page())).await;
        let (requests, seconds) = zipf_traffic(client, &bare, clients, run_for).await;
        let without = Run {
            requests,
            seconds,
            hit_rate: None,
        };
        let cache = Cache::builder().memory(64 << 20).build().unwrap();
        let layer = CacheLayer::builder(cache.clone())
            .key("page:{path}")
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        let cached = serve(Router::new().route("/page/{n}", slow_page()).layer(layer)).await;
        let mut runs = Vec::new();
        let mut before = cache.stats();
        for _cold_then_warm in 0..2 {
            let (requests, seconds) = zipf_traffic(client, &cached, clients, run_for).await;
            let after = cache.stats();
            let hits = (after.hits + after.stale_hits) - (before.hits + before.stale_hits);
            let calls = after.calls() - before.calls();
            runs.push(Run {
                requests,
                seconds,
                hit_rate: Some(hits as f64 / calls.max(1) as f64),
            });
            before = after;
        }
        let [cold, warm]: [Run; 2] = runs.try_into().ok().unwrap();
        [without, cold, warm]
    })
}

fn print_hit_ratios() {
    let rows = [
        (
            "http_hit_2k",
            "ours",
            "bare",
            "time per request; target <= 1.18 (throughput >= 0.85x)",
        ),
        ("http_hit_2k", "ours", "axum_response_cache", "target < 1"),
        (
            "http_hit_2k_in_process",
            "ours",
            "axum_response_cache",
            "the layer alone, no sockets",
        ),
        (
            "http_hit_2k_16_clients",
            "ours",
            "bare",
            "time per request; target <= 1.18 (throughput >= 0.85x)",
        ),
        (
            "http_hit_2k_16_clients",
            "ours",
            "axum_response_cache",
            "target < 1",
        ),
    ];
    println!(
        "\n{:<24} {:<6} {:>9}   {:<20} {:>9}   {:>6}   {:>14}",
        "group", "ours", "ns", "peer", "ns", "ratio", "throughput"
    );
    for (group, a, b, note) in rows {
        if let (Some(x), Some(y)) = (mean_ns(group, a), mean_ns(group, b)) {
            println!(
                "{group:<24} {a:<6} {x:>9.0}   {b:<20} {y:>9.0}   {:>5.3}x   {:>12.3}x  {note}",
                x / y,
                y / x
            );
        }
    }
}

fn print_slow(runs: &[Run; 3], clients: usize, run_for: Duration) {
    println!(
        "\nslow handler ({} ms), Zipf s = {ZIPF_S} over {PAGES} pages, {clients} clients, {:?} per run",
        SLOW.as_millis(),
        run_for
    );
    println!(
        "{:<19} {:>9} {:>9} {:>10} {:>9}",
        "", "requests", "req/s", "hit rate", "ratio"
    );
    let rps = |r: &Run| r.requests as f64 / r.seconds;
    let names = ["without layer", "with layer (cold)", "with layer (warm)"];
    for (name, run) in names.iter().zip(runs) {
        let rate = run
            .hit_rate
            .map_or("-".to_owned(), |h| format!("{:.2}%", h * 100.0));
        println!(
            "{name:<19} {:>9} {:>9.0} {rate:>10} {:>8.1}x",
            run.requests,
            rps(run),
            rps(run) / rps(&runs[0])
        );
    }
    println!("targets: with / without >= 50x, hit rate >= 95%");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let (cache, fair) = hits(&mut c, &rt, &client);
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.stale_hits),
        (1, 0),
        "every measured request of ours was a hit"
    );
    let run_for = Duration::from_secs(if quick { 2 } else { 10 });
    let slow = slow_handler(&rt, &client, SLOW_CLIENTS, run_for);
    c.final_summary();
    print_hit_ratios();
    print_interleaved(&fair);
    print_slow(&slow, SLOW_CLIENTS, run_for);
}
