//! The `metrics` feature: every cache's counters, published through the
//! [`metrics`] facade, and the latencies recorded as they happen.
//!
//! The hit path is not touched: the counters a hit bumps are the striped
//! ones [`stats`](crate::Cache::stats) reads (`stats.rs`), and a thread of
//! this module's copies every cache's counters into the recorder as
//! absolute values once a second ([`Cache::export_metrics`] does it at
//! once, for a scrape handler that wants exact figures). Caches under one
//! label add up, dropped ones included, so a series only ever grows. A recorder that
//! counted each hit itself would put a shared atomic (or a hash lookup) on
//! every hit; copying keeps the hit as it is, at the price of series up to
//! a second old. Latencies are recorded where they are measured: a
//! computation, a store operation (both far slower than the recording).
//!
//! Every series is in the README's table ("Metrics"); the names
//! follow Prometheus' conventions (`_total` counters, base units in the
//! name), and [`describe`] gives each its unit and help text.
//!
//! [`Cache::export_metrics`]: crate::Cache::export_metrics

use std::collections::BTreeMap;
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
        "Times a call's computation ran (misses that computed; background refreshes are cache_refreshes_total).",
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

/// The `#[cached]` functions that have run through any cache: their
/// counters are process-wide, so they are published once, not per cache.
static SITES: Mutex<Vec<&'static Site>> = Mutex::new(Vec::new());

/// One series' labels: the cache's name and its store's.
type Label = (String, &'static str);

/// What caches dropped had counted, per label: added to the live caches'
/// counts, so that a counter never goes down when a cache is rebuilt under
/// its name (an exporter would read a drop as a reset, or hold the old
/// maximum).
static RETIRED: Mutex<BTreeMap<Label, Totals>> = Mutex::new(BTreeMap::new());

/// What the last publication set: the counters' values per label (never
/// lowered: a cache dropped between reading the live caches and retiring
/// would otherwise be missing from one publication, a dip an exporter that
/// stores the value reads as a reset), and the labels whose gauges were
/// set (reset to 0 once no live cache has the label, rather than left at
/// their last value). The lock also makes publications one at a time.
struct Published {
    totals: BTreeMap<Label, Totals>,
    gauges: BTreeMap<Label, Gauges>,
}

static PUBLISHED: Mutex<Published> = Mutex::new(Published {
    totals: BTreeMap::new(),
    gauges: BTreeMap::new(),
});

/// How often the publishing thread copies the counters.
const EVERY: Duration = Duration::from_secs(1);

/// A cache's counters as its series publish them: the calls by result
/// (hit, near hit, stale, miss), then [`COUNTERS`] in order.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    calls: [u64; 4],
    counters: [u64; COUNTERS.len()],
}

impl Totals {
    fn of(engine: &Engine) -> Totals {
        let s = engine.stats();
        Totals {
            calls: [
                // Exact: `hits` is the store's hits plus `near_hits`.
                s.hits.saturating_sub(s.near_hits),
                s.near_hits,
                s.stale_hits,
                s.misses,
            ],
            counters: [
                s.computations,
                s.coalesced,
                s.errors,
                s.timeouts,
                s.circuit_skips,
                s.decode_failures,
                s.oversize,
                s.signature_failures,
                s.refreshes,
                s.refresh_failures,
                s.stale_if_error,
                s.lock_waits,
                s.lock_timeouts,
                s.near_lag.count(),
            ],
        }
    }

    fn add(&mut self, other: &Totals) {
        self.merge(other, |mine, theirs| mine + theirs);
    }

    /// Each counter the greater of the two.
    fn raise(&mut self, other: &Totals) {
        self.merge(other, u64::max);
    }

    /// Each counter `f` of its value here and in `other`.
    fn merge(&mut self, other: &Totals, f: impl Fn(u64, u64) -> u64) {
        let pairs = self.calls.iter_mut().zip(other.calls);
        for (mine, theirs) in pairs.chain(self.counters.iter_mut().zip(other.counters)) {
            *mine = f(*mine, theirs);
        }
    }
}

/// The gauges of the caches under one label: the breaker open in any of
/// them, and the bytes they hold in process.
#[derive(Clone, Default)]
struct Gauges {
    open: bool,
    memory: Option<u64>,
    near: Option<u64>,
}

fn label(engine: &Engine) -> Label {
    (engine.label().to_owned(), engine.store.backend().name())
}

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
                // A recorder that panics loses one publication, not all
                // the ones after it.
                let _ = std::panic::catch_unwind(publish_all);
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

/// Functions that ran through a cache: their counters are published from
/// now on, whatever becomes of the cache.
fn functions(found: Vec<&'static Site>) {
    let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
    for site in found {
        if !sites.iter().any(|s| std::ptr::eq(*s, site)) {
            sites.push(site);
        }
    }
}

/// A cache dropped: what it counted stays in its label's series, and its
/// functions in theirs.
impl Drop for Engine {
    fn drop(&mut self) {
        functions(self.sites());
        let totals = Totals::of(self);
        RETIRED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label(self))
            .or_default()
            .add(&totals);
    }
}

/// Publishes every series: the live caches' counters (summed with the
/// dropped ones' under each label, so two caches of one name add up
/// rather than overwrite each other), their gauges, and every function's
/// counters (summed over the functions of one name).
pub(crate) fn publish_all() {
    let mut published = PUBLISHED.lock().unwrap_or_else(|e| e.into_inner());
    describe();
    // The live ones first: a cache dropped after this is held here, and
    // one dropped before has retired (or is about to: then it is missing
    // from one publication, and a recorder keeping the greatest value, as
    // Prometheus' does, shows no dip).
    let live: Vec<Arc<Engine>> = {
        let mut list = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|weak| weak.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    let mut totals = RETIRED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut gauges: BTreeMap<Label, Gauges> = BTreeMap::new();
    for engine in &live {
        functions(engine.sites());
        let key = label(engine);
        totals
            .entry(key.clone())
            .or_default()
            .add(&Totals::of(engine));
        let g = gauges.entry(key).or_default();
        g.open |= engine.breaker.is_open();
        if let Some(memory) = engine.store.memory() {
            *g.memory.get_or_insert(0) += memory.used_bytes();
        }
        if let Some(near) = &engine.near {
            *g.near.get_or_insert(0) += near.memory().used_bytes();
        }
    }
    drop(live);
    for (label, t) in totals {
        let t = {
            let high = published.totals.entry(label.clone()).or_default();
            high.raise(&t);
            *high
        };
        let (cache, store) = label;
        let labels = [("cache", cache), ("store", store.to_owned())];
        for (result, value) in ["hit", "near_hit", "stale", "miss"].iter().zip(t.calls) {
            let mut with = labels.to_vec();
            with.push(("result", (*result).to_owned()));
            counter!(CALLS, &with).absolute(value);
        }
        for ((name, _), value) in COUNTERS.iter().zip(t.counters) {
            counter!(*name, &labels).absolute(value);
        }
    }
    // Labels no live cache has any more: their gauges go back to 0.
    for (label, was) in &published.gauges {
        if !gauges.contains_key(label) {
            let zero = Gauges {
                open: false,
                memory: was.memory.map(|_| 0),
                near: was.near.map(|_| 0),
            };
            gauges.insert(label.clone(), zero);
        }
    }
    published.gauges.clone_from(&gauges);
    for ((cache, store), g) in gauges {
        let labels = [("cache", cache), ("store", store.to_owned())];
        gauge!(BREAKER_OPEN, &labels).set(if g.open { 1.0 } else { 0.0 });
        for (tier, bytes) in [("memory", g.memory), ("near", g.near)] {
            if let Some(bytes) = bytes {
                let mut with = labels.to_vec();
                with.push(("tier", tier.to_owned()));
                gauge!(MEMORY_BYTES, &with).set(bytes as f64);
            }
        }
    }
    let mut functions: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for site in SITES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let sum = functions.entry(site.qualified_name()).or_default();
        sum[0] += site.hits.get();
        sum[1] += site.stale_hits.get();
        sum[2] += site.misses.get();
    }
    for (function, [hits, stale, misses]) in functions {
        for (result, value) in [("hit", hits), ("stale", stale), ("miss", misses)] {
            counter!(FUNCTION_CALLS, "function" => function.clone(), "result" => result)
                .absolute(value);
        }
    }
}

impl Engine {
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
