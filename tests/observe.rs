//! Observability (issue #18): the `metrics` series against `stats()`, the
//! `spans` feature's spans and their fields, spans reaching an
//! OpenTelemetry exporter, the bookshop's Grafana dashboard against the
//! series the library exports, and the bookshop's `/metrics` under load.
//!
//! One Prometheus recorder is installed for the whole binary; each test
//! names its caches (namespaces) so its series are its own.

#[path = "support/mod.rs"]
mod support;

#[path = "observe/capture.rs"]
mod capture;
#[path = "observe/dashboard.rs"]
mod dashboard;
#[path = "observe/scrape.rs"]
mod scrape;

use std::sync::OnceLock;
use std::time::Duration;

use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::{cached, Cache, Policy};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use scrape::Scrape;
use support::{RedisOptions, RedisServer, StallProxy};

/// The binary's recorder: histograms as real Prometheus histograms, as the
/// bookshop renders them.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0])
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only recorder");
        handle
    })
}

/// A scrape of what `cache` has published, taken now.
fn scrape(cache: &Cache) -> Scrape {
    cache.export_metrics();
    Scrape::parse(&prometheus().render())
}

fn redis_cache(url: &str, namespace: &str) -> Cache {
    let config = RedisConfig::new(url);
    Cache::builder()
        .backend(RedisBackend::new(config).expect("redis backend"))
        .namespace(namespace)
        .build()
        .expect("cache")
}

#[cached(key = "square:{n}", ttl = 60, cache = cache)]
async fn square(cache: &Cache, n: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(2)).await;
    n * n
}

#[tokio::test]
async fn the_call_series_count_what_stats_counts() {
    prometheus();
    let cache = Cache::builder().namespace("obs_calls").build().unwrap();
    for n in [1, 1, 1, 2, 2, 3] {
        square(&cache, n).await;
    }
    let s = scrape(&cache);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 3));
    let at = [("cache", "obs_calls"), ("store", "memory")];
    assert_eq!(
        s.value("cache_calls_total", &[at[0], at[1], ("result", "hit")]),
        Some(3.0)
    );
    assert_eq!(
        s.value("cache_calls_total", &[at[0], at[1], ("result", "miss")]),
        Some(3.0)
    );
    assert_eq!(
        s.value("cache_calls_total", &[at[0], ("result", "stale")]),
        Some(0.0)
    );
    assert_eq!(s.value("cache_computations_total", &at), Some(3.0));
    // Per function: `module::name`, never a rendered key.
    let function = stats.functions[0].name.clone();
    assert!(function.ends_with("::square"), "{function}");
    let f = [("function", function.as_str())];
    let hits = s.value("cache_function_calls_total", &[f[0], ("result", "hit")]);
    assert!(hits.is_some_and(|h| h >= 3.0), "{hits:?}");
    assert!(!s.text.contains("square:1"), "a rendered key in the series");
    // Each computation timed: at least the 2 ms it sleeps.
    let computed = s.value("cache_compute_duration_seconds_count", &f);
    assert!(computed.is_some_and(|n| n >= 3.0), "{computed:?}");
    let sum = s.value("cache_compute_duration_seconds_sum", &f).unwrap();
    assert!(sum >= 0.006, "three 2 ms computations took {sum} s");
    let bytes = s.value("cache_memory_bytes", &[at[0], ("tier", "memory")]);
    assert!(bytes.is_some_and(|b| b > 0.0), "{bytes:?}");
    assert_eq!(s.value("cache_breaker_open", &at), Some(0.0));
    // The series carry help text and the histogram its unit.
    assert!(s.text.contains("# HELP cache_calls_total"), "{}", s.text);
}

#[tokio::test]
async fn caches_of_one_name_add_up_and_a_dropped_one_keeps_its_counts() {
    prometheus();
    let build = || Cache::builder().namespace("obs_sum").build().unwrap();
    let (a, b) = (build(), build());
    let policy = Policy::new();
    for cache in [&a, &a, &b] {
        cache.get_or_compute("k", &policy, || async { 1u8 }).await;
    }
    let calls = |s: &Scrape, result| {
        s.value(
            "cache_calls_total",
            &[("cache", "obs_sum"), ("result", result)],
        )
    };
    let s = scrape(&b);
    assert_eq!(
        (calls(&s, "hit"), calls(&s, "miss")),
        (Some(1.0), Some(2.0))
    );
    drop(a);
    let s = scrape(&b);
    assert_eq!(
        (calls(&s, "hit"), calls(&s, "miss")),
        (Some(1.0), Some(2.0)),
        "a dropped cache's counts stay"
    );
    let c = build();
    c.get_or_compute("k", &policy, || async { 1u8 }).await;
    let s = scrape(&c);
    assert_eq!(
        calls(&s, "miss"),
        Some(3.0),
        "a rebuilt cache continues them"
    );
}

#[tokio::test]
async fn store_operations_are_timed_per_operation() {
    prometheus();
    let server = RedisServer::start();
    let cache = redis_cache(&server.url(), "obs_ops");
    let policy = Policy::new();
    for _ in 0..3 {
        cache.get_or_compute("k", &policy, || async { 7u32 }).await;
    }
    cache.delete("k").await.unwrap();
    let s = scrape(&cache);
    let at = |op| [("cache", "obs_ops"), ("store", "redis"), ("op", op)];
    let timed: Vec<_> = s
        .series("cache_store_operation_duration_seconds_count")
        .filter(|l| l.get("cache").map(String::as_str) == Some("obs_ops"))
        .map(|l| l["op"].clone())
        .collect();
    assert!(timed.iter().any(|op| op == "delete"), "{timed:?}");
    let deletes = s.value(
        "cache_store_operation_duration_seconds_count",
        &at("delete"),
    );
    assert_eq!(deletes, Some(1.0), "{timed:?}");
    let stats = cache.stats();
    let hits = s.value(
        "cache_calls_total",
        &[("cache", "obs_ops"), ("result", "hit")],
    );
    assert_eq!(hits, Some(stats.hits as f64));
    // Direct calls have no function of their own.
    let direct = s.value(
        "cache_compute_duration_seconds_count",
        &[("function", "(direct)")],
    );
    assert!(direct.is_some_and(|n| n >= 1.0), "{direct:?}");
}

#[tokio::test]
async fn a_stalled_store_shows_as_errors_timeouts_and_an_open_breaker() {
    prometheus();
    let server = RedisServer::start();
    let proxy = StallProxy::start(server.port);
    let config = RedisConfig::new(format!("redis://{}", proxy.addr()));
    let cache = Cache::builder()
        .backend(RedisBackend::new(config).unwrap())
        .namespace("obs_stalled")
        .op_timeout(Duration::from_millis(50))
        .circuit_breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let policy = Policy::new();
    // Connected and answering first, then stalled.
    cache.get_or_compute("k", &policy, || async { 1u8 }).await;
    proxy.stall();
    for _ in 0..4 {
        assert_eq!(
            cache.get_or_compute("k", &policy, || async { 2u8 }).await,
            2
        );
    }
    let s = scrape(&cache);
    let stats = cache.stats();
    let at = [("cache", "obs_stalled"), ("store", "redis")];
    assert!(stats.timeouts >= 2, "{stats:?}");
    assert_eq!(
        s.value("cache_errors_total", &at),
        Some(stats.errors as f64)
    );
    assert_eq!(
        s.value("cache_timeouts_total", &at),
        Some(stats.timeouts as f64)
    );
    assert_eq!(
        s.value("cache_circuit_skips_total", &at),
        Some(stats.circuit_skips as f64)
    );
    assert!(stats.circuit_skips >= 1, "{stats:?}");
    assert_eq!(s.value("cache_breaker_open", &at), Some(1.0));
    proxy.resume();
    // Dropped with its breaker open: the gauge goes back to 0 (no cache of
    // the name is left to be open), the counts stay.
    // (Its tasks may hold the engine a moment longer.)
    drop(cache);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = scrape(&Cache::memory());
        if s.value("cache_breaker_open", &at) != Some(1.0) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s.value("cache_breaker_open", &at), Some(0.0));
    // (Operations in flight at the snapshot may have timed out since.)
    let kept = s.value("cache_timeouts_total", &at).unwrap_or(0.0);
    assert!(kept >= stats.timeouts as f64, "{kept} < {stats:?}");
}

#[tokio::test]
async fn near_hits_are_a_part_of_the_hits() {
    prometheus();
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url());
    let cache = Cache::builder()
        .backend(RedisBackend::new(config).unwrap())
        .namespace("obs_near")
        .near(1 << 20)
        .build()
        .unwrap();
    // Until the near tier follows the server's notices and answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().near_hits < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.stats());
        square(&cache, 8).await;
        cache.get::<u64>("square:8").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = scrape(&cache);
    let stats = cache.stats();
    let at = |result| [("cache", "obs_near"), ("result", result)];
    let (hit, near) = (
        s.value("cache_calls_total", &at("hit")).unwrap(),
        s.value("cache_calls_total", &at("near_hit")).unwrap(),
    );
    assert_eq!(near, stats.near_hits as f64, "{stats:?}");
    assert_eq!(hit + near, stats.hits as f64, "{stats:?}");
    assert!(stats.near_hits <= stats.hits, "{stats:?}");
}

#[tokio::test]
async fn a_call_the_near_tier_answers_says_so_in_its_span() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
        .namespace("obs_near_span")
        .near(1 << 20)
        .build()
        .unwrap();
    let policy = Policy::new().ttl(Duration::from_secs(60));
    let call = || cache.get_or_compute("near:span", &policy, || async { 1u8 });
    // Until the near tier follows the server's notices and answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().near_hits == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", cache.stats());
        call().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (spans, _guard) = capture::install();
    let before = cache.stats();
    call().await;
    let after = cache.stats();
    assert_eq!(after.near_hits - before.near_hits, 1, "{after:?}");
    let spans = spans.taken();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "cache.call").collect();
    assert_eq!(calls.len(), 1, "{spans:#?}");
    assert_eq!(calls[0].field("result"), Some("near_hit"), "{:?}", calls[0]);
}

#[tokio::test]
async fn each_call_has_a_span_with_its_store_operations_inside() {
    let server = RedisServer::start();
    let (spans, _guard) = capture::install();
    let cache = redis_cache(&server.url(), "obs_spans");
    square(&cache, 4).await; // a miss: read, lock, computation, write
    square(&cache, 4).await; // a hit
    let spans = spans.taken();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "cache.call").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let (miss, hit) = (calls[0], calls[1]);
    assert_eq!(miss.field("result"), Some("miss"), "{miss:?}");
    assert_eq!(hit.field("result"), Some("hit"), "{hit:?}");
    for call in [miss, hit] {
        assert!(
            call.field("function").unwrap().ends_with("::square"),
            "{call:?}"
        );
        assert_eq!(call.field("store"), Some("redis"));
        assert_eq!(call.field("cache"), Some("obs_spans"));
        assert_eq!(call.field("key"), None, "keys are recorded only when asked");
    }
    let ms: f64 = miss.field("compute_ms").unwrap().parse().unwrap();
    assert!(ms >= 2.0, "the computation sleeps 2 ms: {ms}");
    assert_eq!(hit.field("compute_ms"), None);
    // The store's operations are the call's children, named by operation.
    let children: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "cache.store" && s.parent == Some(miss.id))
        .map(|s| s.field("op").unwrap())
        .collect();
    assert!(children.len() >= 2, "{spans:#?}");
    assert!(children.contains(&"set"), "{children:?}");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "cache.store" && s.parent == Some(hit.id)),
        "{spans:#?}"
    );
}

#[tokio::test]
async fn keys_are_in_spans_only_on_a_cache_that_asks() {
    let (spans, _guard) = capture::install();
    let cache = Cache::builder()
        .namespace("obs_keys")
        .trace_keys(true)
        .build()
        .unwrap();
    square(&cache, 5).await;
    square(&cache, 5).await; // the memory store's synchronous hit
    let spans = spans.taken();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "cache.call").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    for call in &calls {
        assert_eq!(call.field("key"), Some("obs_keys:square:5"), "{call:?}");
        assert_eq!(call.field("store"), Some("memory"));
    }
    assert_eq!(calls[1].field("result"), Some("hit"));
}

#[tokio::test]
async fn a_store_error_is_on_its_span_without_the_password() {
    let (spans, _guard) = capture::install();
    let port = support::free_port();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    let cache = redis_cache(&url, "obs_errors");
    assert_eq!(square(&cache, 6).await, 36);
    let spans = spans.taken();
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "cache.store")
        .filter_map(|s| s.field("error"))
        .collect();
    assert!(!failed.is_empty(), "{spans:#?}");
    for error in &failed {
        assert!(!error.contains("hunter2"), "{error}");
    }
    let call = spans.iter().find(|s| s.name == "cache.call").unwrap();
    assert_eq!(call.field("result"), Some("miss"));
}

#[tokio::test]
async fn spans_reach_an_opentelemetry_exporter() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    // The wiring README's "Tracing" section shows: an OpenTelemetry tracer
    // (here with an in-memory exporter; an OTLP exporter in production)
    // under `tracing-opentelemetry`'s layer.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("bookshop");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    let _guard = tracing::subscriber::set_default(subscriber);

    let cache = Cache::builder().namespace("obs_otel").build().unwrap();
    square(&cache, 7).await;
    square(&cache, 7).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "cache.call").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let results: Vec<_> = calls.iter().map(|s| attribute(s, "result")).collect();
    assert_eq!(results, [Some("miss".into()), Some("hit".into())]);
    assert!(attribute(calls[0], "function")
        .unwrap()
        .ends_with("::square"));
    assert!(attribute(calls[0], "compute_ms").is_some());
}

#[tokio::test]
async fn the_dashboard_loads_and_charts_only_series_the_library_exports() {
    prometheus();
    // Every series, for real: a memory cache and a Redis one, with
    // computations, store operations, and an invalidation.
    let server = RedisServer::start_with(RedisOptions::default());
    let shared = redis_cache(&server.url(), "obs_dash");
    let local = Cache::builder().namespace("obs_dash_mem").build().unwrap();
    for cache in [&shared, &local] {
        for n in [1, 1, 2] {
            square(cache, n).await;
        }
        cache.invalidate_prefix("square:").await.unwrap();
    }
    local.export_metrics();
    let s = scrape(&shared);
    let board = dashboard::load();
    let charted = board.series();
    assert!(charted.len() >= 8, "{charted:?}");
    for name in &charted {
        assert!(
            s.has(name),
            "the dashboard charts {name}, which the library does not export"
        );
    }
}

#[test]
fn the_bookshop_serves_metrics_that_agree_with_its_stats() {
    let out = scrape::run_bookshop_load();
    assert!(
        out.contains("metrics agree with stats"),
        "the load test did not check /metrics:\n{out}"
    );
}
