//! `cargo run --example third_party`: the job this library was written for.
//!
//! RSS feeds (XML) and Embedly-style oEmbed descriptions (JSON) come from
//! third parties that answer in hundreds of milliseconds and do not want one
//! request per page view. Fetching them inline makes every page as slow as
//! the slowest upstream; caching them with a plain TTL still makes one
//! unlucky caller per key and TTL wait for the upstream.
//!
//! `#[cached(key = .., ttl = 2, stale = 30)]` is stale-while-revalidate:
//! after the first fill every caller is served at hit speed, and once an
//! entry is past its TTL the next call returns it anyway and refreshes it in
//! a background task (one per key, across every process sharing the store).
//! So the upstream sees about one request per key per TTL however many
//! callers there are, and no caller waits on it after the first fill.
//!
//! The example runs offline. It starts its own slow upstream (axum on
//! 127.0.0.1, port 0) that counts requests per route and per URL, fetches
//! from it with reqwest, lets `--clients` tasks hammer three feeds and three
//! oEmbed URLs for `--seconds`, prints what it measured, and exits non-zero
//! if any key cost the upstream more than one request per TTL window (plus
//! one), or if the callers' p99 came anywhere near the upstream's latency.
//!
//! ```sh
//! cargo run --example third_party
//! cargo run --example third_party -- --latency-ms 300 --seconds 5 --clients 32
//! CACHE_URL_FEEDS=redis://127.0.0.1:6379/0 cargo run --features redis --example third_party
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cacheruntime::{cached, Caches};
use serde::{Deserialize, Serialize};

/// The `ttl` and `stale` of the two cached functions below (the attribute
/// takes literals: keep these in step with it).
const TTL: Duration = Duration::from_secs(2);
const STALE: Duration = Duration::from_secs(30);

const FEEDS: [&str; 3] = ["rust-blog", "this-week-in-rust", "tokio-blog"];
const VIDEOS: [&str; 3] = [
    "https://video.example/watch/1",
    "https://video.example/watch/2",
    "https://video.example/watch/3",
];

// ---------------------------------------------------------------------------
// The client side: what an application would write.

/// An oEmbed response (<https://oembed.com/#section2.3>), as Embedly-style
/// providers return it for a video.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Oembed {
    #[serde(rename = "type")]
    kind: String,
    version: String,
    title: String,
    author_name: String,
    provider_name: String,
    html: String,
    width: u32,
    height: u32,
    thumbnail_url: String,
}

/// Why a fetch failed; an `Err` is returned to the caller and never cached.
#[derive(Debug)]
struct FetchError(String);

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        FetchError(e.to_string())
    }
}

static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client builds")
});

/// Where the oEmbed provider lives (our local upstream, set once it is bound).
static OEMBED_ENDPOINT: OnceLock<String> = OnceLock::new();

/// How long each upstream fetch took, as the cached functions saw it.
static UPSTREAM_FETCHES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

fn record_fetch(started: Instant) {
    let took = started.elapsed();
    UPSTREAM_FETCHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(took);
}

/// The feed's XML, kept as the string the upstream sent.
#[cached(key = "feed:{url}", ttl = 2, stale = 30, cache = "feeds")]
async fn fetch_feed(url: String) -> Result<String, FetchError> {
    let started = Instant::now();
    let response = HTTP.get(&url).send().await?.error_for_status()?;
    let body = response.text().await?;
    record_fetch(started);
    if !body.contains("<rss") {
        return Err(FetchError(format!("{url} did not return an RSS document")));
    }
    Ok(body)
}

/// The oEmbed description of a page URL, from the provider's endpoint.
#[cached(key = "oembed:{url}", ttl = 2, stale = 30, cache = "feeds")]
async fn fetch_oembed(url: String) -> Result<Oembed, FetchError> {
    let endpoint = OEMBED_ENDPOINT.get().expect("the upstream is started");
    let request =
        reqwest::Url::parse_with_params(endpoint, [("url", url.as_str()), ("format", "json")])
            .map_err(|e| FetchError(e.to_string()))?;
    let started = Instant::now();
    let response = HTTP.get(request).send().await?.error_for_status()?;
    let oembed: Oembed = response.json().await?;
    record_fetch(started);
    Ok(oembed)
}

// ---------------------------------------------------------------------------
// The slow upstream.

/// Request counters of the local upstream: one atomic per route, and one
/// count per requested URL for the per-key check.
struct Upstream {
    latency: Duration,
    feed_requests: AtomicU64,
    oembed_requests: AtomicU64,
    per_key: Mutex<BTreeMap<String, u64>>,
}

impl Upstream {
    /// Counts a request on arrival and returns its number for this key.
    fn count(&self, route: &AtomicU64, key: String) -> u64 {
        route.fetch_add(1, Ordering::Relaxed);
        let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_key.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn requests_for(&self, key: &str) -> u64 {
        let per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        per_key.get(key).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.feed_requests.load(Ordering::Relaxed) + self.oembed_requests.load(Ordering::Relaxed)
    }
}

async fn feed(State(up): State<Arc<Upstream>>, Path(name): Path<String>) -> Response {
    let n = up.count(&up.feed_requests, format!("/feeds/{name}"));
    tokio::time::sleep(up.latency).await;
    if !FEEDS.contains(&name.as_str()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let items: String = (1..=5)
        .map(|i| {
            format!(
                "<item><title>{name} post {i}</title>\
                 <link>https://{name}.example/posts/{i}</link>\
                 <guid>https://{name}.example/posts/{i}</guid></item>"
            )
        })
        .collect();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <rss version=\"2.0\"><channel><title>{name}</title>\
         <link>https://{name}.example/</link><description>The {name} feed</description>\
         <generator>slow upstream, response {n}</generator>{items}</channel></rss>"
    );
    ([(header::CONTENT_TYPE, "application/rss+xml")], xml).into_response()
}

#[derive(Deserialize)]
struct OembedQuery {
    url: String,
}

async fn oembed(State(up): State<Arc<Upstream>>, Query(q): Query<OembedQuery>) -> Response {
    up.count(&up.oembed_requests, format!("/oembed?url={}", q.url));
    tokio::time::sleep(up.latency).await;
    let Some(id) = VIDEOS.iter().position(|v| *v == q.url) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    Json(Oembed {
        kind: "video".into(),
        version: "1.0".into(),
        title: format!("Video {}", id + 1),
        author_name: "Someone".into(),
        provider_name: "Video Example".into(),
        html: format!(
            "<iframe src=\"https://video.example/embed/{}\" width=\"640\" height=\"360\"></iframe>",
            id + 1
        ),
        width: 640,
        height: 360,
        thumbnail_url: format!("https://video.example/thumbs/{}.jpg", id + 1),
    })
    .into_response()
}

// ---------------------------------------------------------------------------
// The traffic and the report.

struct Options {
    latency: Duration,
    seconds: u64,
    clients: usize,
}

const USAGE: &str =
    "usage: cargo run --example third_party -- [--latency-ms 300] [--seconds 6] [--clients 32]";

impl Options {
    fn parse() -> Result<Options, String> {
        let mut opts = Options {
            latency: Duration::from_millis(300),
            seconds: 6,
            clients: 32,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let number: u64 = value
                .parse()
                .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))?;
            match flag.as_str() {
                "--latency-ms" => opts.latency = Duration::from_millis(number),
                "--seconds" => opts.seconds = number,
                "--clients" => opts.clients = number as usize,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if opts.seconds == 0 || opts.clients == 0 {
            return Err("--seconds and --clients must be at least 1".into());
        }
        Ok(opts)
    }
}

/// One cached thing the clients ask for.
enum Target {
    Feed(String),
    Oembed(String),
}

impl Target {
    /// Calls the cached function; the size of what came back.
    async fn call(&self) -> Result<usize, FetchError> {
        match self {
            Target::Feed(url) => fetch_feed(url.clone()).await.map(|xml| xml.len()),
            Target::Oembed(url) => fetch_oembed(url.clone()).await.map(|o| o.html.len()),
        }
    }

    /// What the upstream counts this target's requests under.
    fn upstream_key(&self) -> String {
        match self {
            Target::Feed(url) => url[url.find("/feeds/").expect("a feed URL")..].to_string(),
            Target::Oembed(url) => format!("/oembed?url={url}"),
        }
    }

    async fn invalidate(&self) -> Result<(), cacheruntime::Error> {
        match self {
            Target::Feed(url) => fetch_feed_invalidate(url.clone()).await,
            Target::Oembed(url) => fetch_oembed_invalidate(url.clone()).await,
        }
    }
}

/// What one client measured.
#[derive(Default)]
struct Samples {
    /// Calls of the first fill, made on a cold cache.
    cold: Vec<Duration>,
    /// Calls of the steady traffic after it.
    warm: Vec<Duration>,
    failures: Vec<String>,
}

impl Samples {
    fn record(&mut self, took: Duration, result: Result<usize, FetchError>, warm: bool) {
        match result {
            Ok(_) if warm => self.warm.push(took),
            Ok(_) => self.cold.push(took),
            Err(e) => self.failures.push(e.to_string()),
        }
    }
}

/// One client: first every key in turn on a cold cache (alongside every
/// other client), then, once all of them are past that, a call every
/// millisecond or so for `traffic`.
async fn client(
    id: usize,
    targets: Arc<Vec<Target>>,
    filled: Arc<tokio::sync::Barrier>,
    traffic: Duration,
) -> Samples {
    let mut samples = Samples::default();
    for target in targets.iter() {
        let started = Instant::now();
        let result = target.call().await;
        samples.record(started.elapsed(), result, false);
    }
    filled.wait().await;
    let deadline = Instant::now() + traffic;
    let mut i = id;
    while Instant::now() < deadline {
        let target = &targets[i % targets.len()];
        i += 1;
        let started = Instant::now();
        let result = target.call().await;
        samples.record(started.elapsed(), result, true);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    samples
}

/// The `p`-quantile (0..=1) of sorted samples.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The report's list of checks; any failure makes the exit status 1.
#[derive(Default)]
struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: String) {
        if ok {
            println!("  ok    {what}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what}");
        }
    }

    fn skip(&self, what: String) {
        println!("  skip  {what}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Shows the cache's fail-open warnings (a store that is down, a refresh
    // that failed), if any.
    tracing_subscriber::fmt().with_target(false).init();
    let opts = match Options::parse() {
        Ok(opts) => opts,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("{why}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };

    // The third-party data lives in the named cache `feeds`, apart from the
    // app's default cache (in production: its own bounded store, not the
    // job queue's Redis). CACHE_URL_FEEDS picks its store; without it the
    // feeds share CACHE_URL's (memory when unset). redis://.. needs the
    // `redis` feature; none:// shows the upstream taking every call (and the
    // checks fail, as they should).
    let env = Caches::from_env().await?;
    let cache = match env.get("feeds") {
        Ok(feeds) => feeds.clone(),
        Err(_) => env.default_cache().clone(),
    };
    Caches::builder()
        .default(env.default_cache().clone())
        .add("feeds", cache.clone())
        .build()?
        .install();

    let upstream = Arc::new(Upstream {
        latency: opts.latency,
        feed_requests: AtomicU64::new(0),
        oembed_requests: AtomicU64::new(0),
        per_key: Mutex::new(BTreeMap::new()),
    });
    let app = Router::new()
        .route("/feeds/{name}", get(feed))
        .route("/oembed", get(oembed))
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream server stopped: {e}");
        }
    });
    OEMBED_ENDPOINT
        .set(format!("{base}/oembed"))
        .expect("set once");

    let targets: Vec<Target> = FEEDS
        .iter()
        .map(|name| Target::Feed(format!("{base}/feeds/{name}")))
        .chain(VIDEOS.iter().map(|url| Target::Oembed(url.to_string())))
        .collect();
    // Start cold even on a store shared with earlier runs.
    for target in &targets {
        target.invalidate().await?;
    }

    println!(
        "cache {}, ttl {} s, stale {} s; upstream {base} answering in {}",
        cache.backend_name(),
        TTL.as_secs(),
        STALE.as_secs(),
        ms(opts.latency),
    );
    println!(
        "{} clients, {} feeds and {} oEmbed URLs, {} s of traffic\n",
        opts.clients,
        FEEDS.len(),
        VIDEOS.len(),
        opts.seconds
    );

    let traffic = Duration::from_secs(opts.seconds);
    let targets = Arc::new(targets);
    // The clients and this task: we learn when every client is past the fill.
    let filled = Arc::new(tokio::sync::Barrier::new(opts.clients + 1));
    let began = Instant::now();
    let tasks: Vec<_> = (0..opts.clients)
        .map(|id| tokio::spawn(client(id, targets.clone(), filled.clone(), traffic)))
        .collect();
    filled.wait().await;
    let fill_time = began.elapsed();
    let fill_requests = upstream.total();
    let fill_fetches = UPSTREAM_FETCHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();

    let mut all = Samples::default();
    for task in tasks {
        let s = task.await?;
        all.cold.extend(s.cold);
        all.warm.extend(s.warm);
        all.failures.extend(s.failures);
    }
    // Let the refreshes started by the last calls land before counting.
    tokio::time::sleep(opts.latency + Duration::from_millis(200)).await;
    let elapsed = began.elapsed();
    let stats = cache.stats();
    all.cold.sort_unstable();
    all.warm.sort_unstable();
    let mut fetches = UPSTREAM_FETCHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    fetches.sort_unstable();

    println!(
        "first fill: {} calls on a cold cache ({} clients x {} keys) in {}",
        all.cold.len(),
        opts.clients,
        targets.len(),
        ms(fill_time)
    );
    println!(
        "  upstream requests {fill_requests} ({fill_fetches} fetches): concurrent misses of a key share one"
    );
    println!(
        "  latency p50 {}  max {}   (these callers wait for the upstream)",
        ms(quantile(&all.cold, 0.5)),
        ms(quantile(&all.cold, 1.0))
    );

    let p99 = quantile(&all.warm, 0.99);
    let blocked = all.warm.iter().filter(|d| **d >= opts.latency).count();
    println!(
        "\nsteady traffic: {} calls in {} s, {} failed",
        all.warm.len(),
        opts.seconds,
        all.failures.len()
    );
    println!(
        "  cached calls   p50 {}  p99 {}  max {}",
        ms(quantile(&all.warm, 0.5)),
        ms(p99),
        ms(quantile(&all.warm, 1.0))
    );
    println!(
        "  upstream       {} configured; {} fetches by the cache, p50 {}  p99 {}",
        ms(opts.latency),
        fetches.len(),
        ms(quantile(&fetches, 0.5)),
        ms(quantile(&fetches, 0.99))
    );
    println!("  calls that took as long as the upstream: {blocked}");

    // A refresh can start only after a TTL has passed since the last fill,
    // so `windows + 1` requests per key is a ceiling with a window to spare.
    let windows = (elapsed.as_secs_f64() / TTL.as_secs_f64()).ceil() as u64;
    let bound = windows + 1;
    println!(
        "\nupstream requests in {:.1} s ({windows} windows of {} s, at most {bound} per key)",
        elapsed.as_secs_f64(),
        TTL.as_secs()
    );
    let mut per_key = Vec::new();
    for target in targets.iter() {
        let key = target.upstream_key();
        let n = upstream.requests_for(&key);
        println!("  GET {key:<52} {n:>3}");
        per_key.push((key, n));
    }
    println!(
        "  by route: /feeds/{{name}} {}, /oembed {}; total {} for {} calls",
        upstream.feed_requests.load(Ordering::Relaxed),
        upstream.oembed_requests.load(Ordering::Relaxed),
        upstream.total(),
        all.cold.len() + all.warm.len() + all.failures.len()
    );

    println!("\ncache.stats()");
    println!(
        "  hits {} (stale {})  misses {}  coalesced {}  computations {}",
        stats.hits, stats.stale_hits, stats.misses, stats.coalesced, stats.computations
    );
    println!(
        "  refreshes {}  refresh failures {}  errors {}  hit rate {:.2}%",
        stats.refreshes,
        stats.refresh_failures,
        stats.errors,
        stats.hit_rate() * 100.0
    );
    for f in &stats.functions {
        println!(
            "  {:<40} hits {:>7}  misses {:>4}",
            f.name, f.hits, f.misses
        );
    }

    println!("\nchecks");
    let mut checks = Checks::default();
    let worst = per_key.iter().map(|(_, n)| *n).max().unwrap_or(0);
    checks.check(
        worst <= bound,
        format!("at most {bound} upstream requests per key (worst: {worst})"),
    );
    if opts.latency >= Duration::from_millis(20) {
        let limit = opts.latency / 2;
        checks.check(
            !all.warm.is_empty() && p99 < limit,
            format!(
                "no caller waits on the upstream after the fill: p99 {} < {} (half its latency)",
                ms(p99),
                ms(limit)
            ),
        );
    } else {
        checks.skip(format!(
            "caller latency: an upstream answering in {} cannot be told apart from a hit",
            ms(opts.latency)
        ));
    }
    if traffic >= TTL + Duration::from_secs(1) {
        let least = per_key.iter().map(|(_, n)| *n).min().unwrap_or(0);
        checks.check(
            least >= 2 && stats.refreshes > 0 && stats.refresh_failures == 0,
            format!(
                "every key refreshed in the background (fewest requests per key: {least}, refreshes {})",
                stats.refreshes
            ),
        );
    } else {
        checks.skip(format!(
            "background refresh: {} s of traffic is too short to outlast the {} s TTL",
            opts.seconds,
            TTL.as_secs()
        ));
    }
    checks.check(
        all.failures.is_empty(),
        format!(
            "every call returned a value ({} failed)",
            all.failures.len()
        ),
    );
    if let Some(first) = all.failures.first() {
        println!("        first failure: {first}");
    }
    if checks.failed > 0 {
        eprintln!(
            "\n{} check(s) failed: the cache did not shield the upstream as it should",
            checks.failed
        );
        std::process::exit(1);
    }
    Ok(())
}
