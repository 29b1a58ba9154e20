//! The `metrics` feature: every cache's counters, published through the
//! [`metrics`] facade, and the latencies recorded as they happen.
//!
//! The hit path is not touched: the counters a hit bumps are the striped
//! ones [`stats`](crate::Cache::stats) reads (`stats.rs`), and a thread of
//! this module's copies every live cache's counters into the recorder as
//! absolute values once a second ([`Cache::export_metrics`] does it at
//! once, for a scrape handler that wants exact figures). A recorder that
//! counted each hit itself would put a shared atomic (or a hash lookup) on
//! every hit; copying keeps the hit as it is, at the price of series up to
//! a second old. Latencies are recorded where they are measured: a
//! computation, a store operation (both far slower than the recording).
//!
//! Every series is in the table of the crate docs ("Metrics"); the names
//! follow Prometheus' conventions (`_total` counters, base units in the
//! name), and [`describe`] gives each its unit and help text.
//!
//! [`Cache::export_metrics`]: crate::Cache::export_metrics

use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::engine::Engine;
use crate::site::Site;

/// Calls of a cache by how they were answered.
pub(crate) const CALLS: &str = "cache_calls_total";
/// Calls of one `#[cached]` function by how they were answered.
pub(crate) const FUNCTION_CALLS: &str = "cache_function_calls_total";
/// Computations' durations, per function.
pub(crate) const COMPUTE_SECONDS: &str = "cache_compute_duration_seconds";
/// Store operations' durations, per cache and operation.
pub(crate) const STORE_SECONDS: &str = "cache_store_operation_duration_seconds";
/// Whether the circuit breaker is open.
pub(crate) const BREAKER_OPEN: &str = "cache_breaker_open";
/// Bytes held in process (the memory store, a near tier).
pub(crate) const MEMORY_BYTES: &str = "cache_memory_bytes";

/// The cache-wide counters besides calls: (series, help).
const COUNTERS: [(&str, &str); 14] = [
    (
        "cache_computations_total",
        "Times a cached computation ran (misses that computed, refreshes).",
    ),
    (
        "cache_coalesced_total",
        "Callers that waited for another caller's computation of the same key.",
    ),
    (
        "cache_errors_total",
        "Store operations that failed or timed out, plus values that could not be encoded.",
    ),
    (
        "cache_timeouts_total",
        "Of the errors, store operations that did not answer within the op timeout.",
    ),
    (
        "cache_circuit_skips_total",
        "Store operations skipped while the circuit breaker was open.",
    ),
    (
        "cache_decode_failures_total",
        "Stored entries rejected on read: corrupt, another type or version.",
    ),
    (
        "cache_oversize_total",
        "Values not stored because they exceeded the max entry size.",
    ),
    (
        "cache_signature_failures_total",
        "Entries rejected because they were unsigned or their HMAC did not verify.",
    ),
    (
        "cache_refreshes_total",
        "Background refreshes started (stale entries and early refreshes).",
    ),
    (
        "cache_refresh_failures_total",
        "Background refreshes whose computation failed; the old value stayed.",
    ),
    (
        "cache_stale_if_error_total",
        "Calls whose computation failed, answered with the expired value.",
    ),
    (
        "cache_lock_waits_total",
        "Cold misses that waited for another process's computation.",
    ),
    (
        "cache_lock_timeouts_total",
        "Lock waits that gave up after the lock TTL and computed.",
    ),
    (
        "cache_near_lag_notices_total",
        "Change notices that reached the near tier (their lag is in Stats::near_lag).",
    ),
];

/// Gives every series its unit and help text (the recorder keeps the
/// first; later calls are cheap).
fn describe() {
    describe_counter!(
        CALLS,
        "Calls by how they were answered: hit (from the store), near_hit (from the near tier), \
         stale (served while refreshed), miss (computed or waited)."
    );
    describe_counter!(
        FUNCTION_CALLS,
        "Calls of one #[cached] function by how they were answered: hit, stale, miss."
    );
    describe_histogram!(
        COMPUTE_SECONDS,
        metrics::Unit::Seconds,
        "How long computations took, per function (misses and background refreshes)."
    );
    describe_histogram!(
        STORE_SECONDS,
        metrics::Unit::Seconds,
        "How long operations on a shared store took, per operation, failures included."
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the cache's circuit breaker is open (store calls skipped), else 0."
    );
    describe_gauge!(
        MEMORY_BYTES,
        metrics::Unit::Bytes,
        "Bytes held in process: the memory store (tier=memory) or a near tier (tier=near)."
    );
    for (name, help) in COUNTERS {
        describe_counter!(name, help);
    }
}

/// The caches alive in the process, for the publishing thread.
static LIVE: Mutex<Vec<Weak<Engine>>> = Mutex::new(Vec::new());

/// How often the publishing thread copies the counters.
const EVERY: Duration = Duration::from_secs(1);

/// Adds a cache to those published, and starts the publishing thread with
/// the first. A thread rather than a task: caches outlive runtimes (a
/// `static` cache used from several `#[tokio::test]`s) and the recorder's
/// calls are synchronous.
pub(crate) fn follow(engine: &Arc<Engine>) {
    static STARTED: Once = Once::new();
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(engine));
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("cacheruntime-metrics".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                publish_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(
                error = %e,
                "could not start the thread that publishes the cache's metrics; they are \
                 published only when Cache::export_metrics is called"
            );
        }
    });
}

/// Publishes every live cache (and forgets the dropped ones).
fn publish_all() {
    let live: Vec<Arc<Engine>> = {
        let mut list = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|weak| weak.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for engine in live {
        engine.export_metrics();
    }
}

impl Engine {
    /// Copies this cache's counters, its functions' counters and its gauges
    /// into the recorder.
    pub(crate) fn export_metrics(&self) {
        describe();
        let stats = self.stats();
        let cache = self.label().to_owned();
        let store = self.store.backend().name();
        let labels = [("cache", cache), ("store", store.to_owned())];
        let calls = |result: &'static str, value: u64| {
            let mut with = labels.to_vec();
            with.push(("result", result.to_owned()));
            counter!(CALLS, &with).absolute(value);
        };
        calls("hit", stats.hits - stats.near_hits.min(stats.hits));
        calls("near_hit", stats.near_hits);
        calls("stale", stats.stale_hits);
        calls("miss", stats.misses);
        let values = [
            stats.computations,
            stats.coalesced,
            stats.errors,
            stats.timeouts,
            stats.circuit_skips,
            stats.decode_failures,
            stats.oversize,
            stats.signature_failures,
            stats.refreshes,
            stats.refresh_failures,
            stats.stale_if_error,
            stats.lock_waits,
            stats.lock_timeouts,
            stats.near_lag.count(),
        ];
        for ((name, _), value) in COUNTERS.iter().zip(values) {
            counter!(*name, &labels).absolute(value);
        }
        gauge!(BREAKER_OPEN, &labels).set(if self.breaker.is_open() { 1.0 } else { 0.0 });
        let tiers = [
            ("memory", self.store.memory().map(|m| m.used_bytes())),
            ("near", self.near.as_ref().map(|n| n.memory().used_bytes())),
        ];
        for (tier, bytes) in tiers {
            if let Some(bytes) = bytes {
                let mut with = labels.to_vec();
                with.push(("tier", tier.to_owned()));
                gauge!(MEMORY_BYTES, &with).set(bytes as f64);
            }
        }
        for function in stats.functions {
            for (result, value) in [
                ("hit", function.hits),
                ("stale", function.stale_hits),
                ("miss", function.misses),
            ] {
                counter!(FUNCTION_CALLS, "function" => function.name.clone(), "result" => result)
                    .absolute(value);
            }
        }
    }

    /// Records how long a store operation took.
    pub(crate) fn store_timed(&self, op: &'static str, took: Duration) {
        histogram!(
            STORE_SECONDS,
            "cache" => self.label().to_owned(),
            "store" => self.store.backend().name(),
            "op" => op
        )
        .record(took.as_secs_f64());
    }
}

/// Records how long a computation of `site`'s function (`None`: a direct
/// `get_or_compute` or the HTTP layer) took.
pub(crate) fn computed(site: Option<&Site>, took: Duration) {
    let function = site.map_or_else(|| crate::site::DIRECT.to_owned(), Site::qualified_name);
    histogram!(COMPUTE_SECONDS, "function" => function).record(took.as_secs_f64());
}
