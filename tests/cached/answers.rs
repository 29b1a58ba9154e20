//! What the get-or-compute core answers: no value from before an
//! invalidation or delete, one count per call, types that cannot be read
//! back, signatures on shared stores. On the memory store (two handles on
//! one store standing in for two processes) and on a test backend.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cacheruntime::backend::{Backend, BoxFuture, Lookup, Ticket};
use cacheruntime::backends::MemoryBackend;
use cacheruntime::{Cache, Clock, Error, Policy};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

fn minute() -> Policy {
    Policy::new().ttl(Duration::from_secs(60))
}

/// Two caches on one memory store: two processes sharing a store.
fn two_handles() -> (Cache, Cache) {
    let store = Arc::new(MemoryBackend::new(8 << 20));
    let a = Cache::builder().backend(store.clone()).build().unwrap();
    let b = Cache::builder().backend(store).build().unwrap();
    (a, b)
}

/// An origin whose reads can be held at a gate: `read` returns the version
/// current when it started, after waiting for `release`.
#[derive(Default)]
struct Origin {
    version: AtomicU64,
    gate: Notify,
    gated: AtomicUsize,
    reads: AtomicUsize,
}

impl Origin {
    async fn read(&self, held: bool) -> u64 {
        let v = self.version.load(Ordering::SeqCst);
        self.reads.fetch_add(1, Ordering::SeqCst);
        if held {
            let released = self.gate.notified();
            self.gated.fetch_add(1, Ordering::SeqCst);
            released.await;
        }
        v
    }

    async fn until_gated(&self, n: usize) {
        while self.gated.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A computation of `key` that read the origin at version 0 is held while
/// the origin moves to 1 and `fence` runs; then it is released. Every call
/// starting after `fence` returned, on either handle, must see version 1.
async fn fenced(fence: impl AsyncFnOnce(&Cache, &Cache), key: &'static str, via_other: bool) {
    let (a, b) = two_handles();
    let origin = Arc::new(Origin::default());
    let old = {
        let (a, origin) = (a.clone(), origin.clone());
        tokio::spawn(async move { a.get_or_compute(key, &minute(), || origin.read(true)).await })
    };
    origin.until_gated(1).await;
    origin.version.store(1, Ordering::SeqCst);
    if via_other {
        fence(&b, &a).await;
    } else {
        fence(&a, &b).await;
    }
    // Started after the fence, while the old computation still runs: must
    // not wait for it (it would hand over version 0).
    let late = {
        let (a, origin) = (a.clone(), origin.clone());
        tokio::spawn(async move {
            a.get_or_compute(key, &minute(), || origin.read(false))
                .await
        })
    };
    let late = tokio::time::timeout(Duration::from_secs(5), late)
        .await
        .expect("a caller after the fence must not wait for the old computation")
        .unwrap();
    assert_eq!(late, 1, "a call after the fence got the old value");
    origin.gate.notify_waiters();
    assert_eq!(
        old.await.unwrap(),
        0,
        "the old caller gets what it computed"
    );
    for cache in [&a, &b] {
        let v: u64 = cache
            .get_or_compute(key, &minute(), || origin.read(false))
            .await;
        assert_eq!(
            v, 1,
            "the old computation's value was stored after the fence"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_fences_a_computation_in_flight() {
    fenced(
        async |c, _| c.delete("feed:1").await.unwrap(),
        "feed:1",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_another_process_fences_a_computation_in_flight() {
    fenced(
        async |c, _| c.delete("feed:2").await.unwrap(),
        "feed:2",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_from_another_process_fences_a_computation_in_flight() {
    fenced(
        async |c, _| c.invalidate_prefix("feed:").await.unwrap(),
        "feed:3",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_invalidation_does_not_stop_callers_sharing_a_computation() {
    let (a, b) = two_handles();
    let origin = Arc::new(Origin::default());
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (a, origin) = (a.clone(), origin.clone());
            tokio::spawn(async move {
                a.get_or_compute("hot:1", &minute(), || origin.read(true))
                    .await
            })
        })
        .collect();
    origin.until_gated(1).await;
    b.invalidate_prefix("cold:").await.unwrap();
    b.delete("hot:2").await.unwrap();
    let late = {
        let (a, origin) = (a.clone(), origin.clone());
        tokio::spawn(async move {
            a.get_or_compute("hot:1", &minute(), || origin.read(true))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    origin.gate.notify_waiters();
    for c in callers {
        assert_eq!(c.await.unwrap(), 0);
    }
    assert_eq!(late.await.unwrap(), 0);
    assert_eq!(origin.reads.load(Ordering::SeqCst), 1, "one computation");
}

#[tokio::test]
async fn every_call_counts_exactly_one_answer() {
    let clock = Clock::manual();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let stale = Policy::new()
        .ttl(Duration::from_secs(10))
        .stale(Duration::from_secs(100));
    let mut calls = 0;
    let mut call = async |key: &str, policy: &Policy, refresh: bool| {
        calls += 1;
        if refresh {
            cache.get_or_refresh(key, policy, || async { 1u32 }).await
        } else {
            cache.get_or_compute(key, policy, || async { 1u32 }).await
        }
    };
    call("a", &stale, false).await; // miss
    call("a", &stale, false).await; // hit
    clock.advance(Duration::from_secs(20));
    call("a", &stale, true).await; // stale hit, refreshed in the background
    tokio::task::yield_now().await;
    clock.advance(Duration::from_secs(20));
    call("a", &stale, false).await; // stale, recomputed in the foreground: a miss
    call("b", &minute(), false).await; // miss
    let before = cache.stats();
    assert_eq!(
        (before.hits, before.stale_hits, before.misses),
        (1, 1, 3),
        "{before:?}"
    );
    let _ = cache.get::<u32>("b").await.unwrap(); // hit
    let _ = cache.get::<u32>("nothing").await.unwrap(); // miss
    calls += 2;
    let stats = cache.stats();
    assert_eq!(
        stats.hits + stats.stale_hits + stats.misses,
        calls,
        "{stats:?}"
    );
    assert_eq!(
        (stats.hits, stats.stale_hits, stats.misses),
        (2, 1, 4),
        "{stats:?}"
    );
    // A disabled cache counts its calls too.
    let off = Cache::disabled();
    let _ = off.get_or_compute("k", &minute(), || async { 1u8 }).await;
    let _ = off.get::<u8>("k").await.unwrap();
    assert_eq!(
        off.stats().hits + off.stats().stale_hits + off.stats().misses,
        2
    );
    assert_eq!(off.stats().misses, 2);
}

/// bincode cannot read `untagged` enums back (it is not self-describing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
enum Loose {
    Number(u64),
    Text(String),
}

#[tokio::test]
async fn types_that_do_not_read_back_are_reported_once_and_never_stored() {
    let store = Arc::new(MemoryBackend::new(8 << 20));
    let cache = Cache::builder().backend(store.clone()).build().unwrap();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = cache
            .get_or_compute("loose:1", &minute(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Loose::Text("x".into())
            })
            .await;
        assert_eq!(v, Loose::Text("x".into()));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "computed every time");
    assert_eq!(store.len(), 0, "an entry it can never read was stored");
    assert_eq!(
        cache.stats().decode_failures,
        1,
        "reported once, not per call"
    );
    // Other types of the same cache are cached as usual.
    let _: u8 = cache.get_or_compute("n:1", &minute(), || async { 1 }).await;
    let _: u8 = cache.get_or_compute("n:1", &minute(), || async { 2 }).await;
    assert_eq!(cache.stats().hits, 1);
}

/// A store shared with other processes built on the in-process memory
/// store: wrapping the memory store must not make it trusted (only the
/// memory store itself is in-process).
#[derive(Debug)]
struct SharedWithFastPath(Arc<MemoryBackend>);

impl Backend for SharedWithFastPath {
    fn name(&self) -> &'static str {
        "shared-fast"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.0.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.0.set(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.0.delete(key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.0.invalidate_prefix(prefix)
    }
}

#[tokio::test]
async fn a_shared_store_is_signature_checked_whatever_store_it_wraps() {
    let store = Arc::new(MemoryBackend::new(8 << 20));
    let writer = Cache::builder()
        .backend(SharedWithFastPath(store.clone()))
        .signing_keys(["writer-key-0123456789"])
        .build()
        .unwrap();
    let reader = Cache::builder()
        .backend(SharedWithFastPath(store))
        .signing_keys(["reader-key-0123456789"])
        .build()
        .unwrap();
    let _: String = writer
        .get_or_compute("page:1", &minute(), || async { "forged".to_string() })
        .await;
    let v: String = reader
        .get_or_compute("page:1", &minute(), || async { "genuine".to_string() })
        .await;
    assert_eq!(v, "genuine", "an entry signed with another key was served");
    assert_eq!(reader.stats().signature_failures, 1);
}

/// A third-party backend written against the public trait: `Lookup::new`
/// ("a read that found value (or nothing) with no ticket"), `ticket:
/// Option<&Ticket>` in `set`. Tickets are optional in the API.
#[derive(Debug, Default)]
struct PlainMap {
    map: std::sync::Mutex<std::collections::HashMap<String, bytes::Bytes>>,
    sets: AtomicUsize,
}

impl cacheruntime::Backend for PlainMap {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> cacheruntime::backend::BoxFuture<
        'a,
        Result<cacheruntime::backend::Lookup, cacheruntime::Error>,
    > {
        let v = self.map.lock().unwrap().get(key).cloned();
        Box::pin(async move { Ok(cacheruntime::backend::Lookup::new(v)) })
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: bytes::Bytes,
        _ttl: Duration,
        _ticket: Option<&'a cacheruntime::backend::Ticket>,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().insert(key.to_owned(), value);
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.map.lock().unwrap().remove(key);
        Box::pin(async { Ok(()) })
    }
    fn invalidate_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> cacheruntime::backend::BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.map
            .lock()
            .unwrap()
            .retain(|k, _| !k.starts_with(prefix));
        Box::pin(async { Ok(()) })
    }
}

/// A store that gives no tickets (the trait allows it) still caches and
/// shares computations, as before tickets existed: only its failed reads
/// make a call compute alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_tickets_still_caches() {
    let store = Arc::new(PlainMap::default());
    let cache = Cache::builder().backend(store.clone()).build().unwrap();
    let p = Policy::new().ttl(Duration::from_secs(60));
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let r = runs.clone();
        let v: u32 = cache
            .get_or_compute("k", &p, move || async move {
                r.fetch_add(1, Ordering::SeqCst);
                5
            })
            .await;
        assert_eq!(v, 5);
    }
    assert_eq!(
        (
            runs.load(Ordering::SeqCst),
            store.sets.load(Ordering::SeqCst)
        ),
        (1, 1),
        "computations and store writes"
    );
}

#[tokio::test]
async fn keys_with_a_hash_are_refused_with_the_fix() {
    let cache = Cache::memory();
    // `#` marks a shortened long key: no key may be written with one.
    let err = cache.get::<u32>("k#refresh").await.unwrap_err().to_string();
    assert!(err.contains("escape"), "{err}");
    assert!(cache
        .set("a#1", &1u32, Duration::from_secs(60))
        .await
        .is_err());
    assert!(cache.delete("a#1").await.is_err());
    // Get-or-compute cannot fail: it computes as without a cache, counted.
    let v: u32 = cache.get_or_compute("a#1", &minute(), || async { 4 }).await;
    let v2: u32 = cache.get_or_compute("a#1", &minute(), || async { 5 }).await;
    assert_eq!((v, v2), (4, 5));
    assert_eq!(cache.stats().errors, 2);
}

#[tokio::test]
async fn closures_run_only_when_the_computation_does() {
    let cache = Cache::memory();
    let runs = Arc::new(AtomicUsize::new(0));
    // Work before the future (the closure's own body) counts as running.
    let closure = |n: u32| {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { n }
        }
    };
    for _ in 0..3 {
        let _: u32 = cache.get_or_compute("c:1", &minute(), closure(1)).await;
    }
    for _ in 0..3 {
        let f = closure(2);
        let _ = cache
            .try_get_or_compute(
                "c:2",
                &minute(),
                || async move { Ok::<u32, String>(f().await) },
            )
            .await;
    }
    let f = closure(3);
    for _ in 0..3 {
        let _: u32 = cache.get_or_refresh("c:3", &minute(), f.clone()).await;
    }
    let f = closure(4);
    for _ in 0..3 {
        let f = f.clone();
        let _ = cache
            .try_get_or_refresh("c:4", &minute(), move || async move {
                Ok::<u32, String>(f().await)
            })
            .await;
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "each closure once: on its miss, never on a hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_that_asks_for_its_own_key_does_not_wait_for_itself() {
    let (a, _) = two_handles();
    // A retry under the same key inside the computation: the inner call
    // would wait for the outer computation, which waits for it.
    let policy = minute();
    let outer = a.get_or_compute("self:1", &policy, || async {
        let inner: u32 = a.get_or_compute("self:1", &minute(), || async { 7 }).await;
        inner + 1
    });
    let v = tokio::time::timeout(Duration::from_secs(5), outer)
        .await
        .expect("a computation waited for itself");
    assert_eq!(v, 8);
    // The outer value is the one stored.
    let again: u32 = a.get_or_compute("self:1", &minute(), || async { 0 }).await;
    assert_eq!(again, 8);
}

#[test]
fn a_refresh_dropped_before_it_runs_gives_its_key_back() {
    let clock = Clock::manual();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let policy = Policy::new()
        .ttl(Duration::from_secs(10))
        .stale(Duration::from_secs(600));
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let v: u32 = runtime().block_on(cache.get_or_refresh("r:1", &policy, || async { 1 }));
    assert_eq!(v, 1);
    clock.advance(Duration::from_secs(20));
    // A stale hit spawns a refresh on this runtime, which shuts down before
    // the task first runs.
    let stale = runtime();
    let v: u32 = stale.block_on(cache.get_or_refresh("r:1", &policy, || async { 2 }));
    assert_eq!(v, 1);
    drop(stale);
    assert_eq!(cache.stats().refreshes, 0);
    // The key is not left marked as refreshing: the next stale read
    // refreshes it.
    let next = runtime();
    next.block_on(async {
        let v: u32 = cache.get_or_refresh("r:1", &policy, || async { 3 }).await;
        assert_eq!(v, 1);
        for _ in 0..100 {
            if cache.stats().refreshes == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert_eq!(
        cache.stats().refreshes,
        1,
        "the key stayed marked as refreshing"
    );
}

/// A store shared by processes (a wrapper around the memory store: shared,
/// with its locks) whose reads answer late: the bytes are read at once and
/// handed back after `delay`, as a slow network would.
#[derive(Debug)]
struct LateReads {
    store: Arc<MemoryBackend>,
    delay_ms: Arc<AtomicU64>,
}

impl Backend for LateReads {
    fn name(&self) -> &'static str {
        "late-reads"
    }
    fn supports_locks(&self) -> bool {
        true
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        let delay = Duration::from_millis(self.delay_ms.load(Ordering::SeqCst));
        let read = self.store.get(key);
        Box::pin(async move {
            let found = read.await;
            tokio::time::sleep(delay).await;
            found
        })
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.store.set(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.store.delete(key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.store.invalidate_prefix(prefix)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.store.set_if_absent(key, value, ttl)
    }
    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.store.delete_if_equals(key, value)
    }
}

/// A caller that read the stale entry before another process's refresh
/// stored the new one, and whose own refresh job asks for the lock after
/// that refresh released it, must not compute the page again: one refresh
/// per stale entry across processes, not one per late reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_late_past_a_finished_refresh_does_not_refresh_again() {
    let clock = Clock::manual();
    let store = Arc::new(MemoryBackend::with_clock(8 << 20, clock.clone()));
    let handle = |delay_ms: Arc<AtomicU64>| {
        Cache::builder()
            .backend(LateReads {
                store: store.clone(),
                delay_ms,
            })
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let (fast, late_delay) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, b) = (handle(fast), handle(late_delay.clone()));
    let policy = Policy::new()
        .ttl(Duration::from_secs(60))
        .stale(Duration::from_secs(600));
    let runs = Arc::new(AtomicUsize::new(0));
    let page = |cache: Cache| {
        let runs = runs.clone();
        async move {
            cache
                .get_or_refresh("news:1", &policy, move || async move {
                    format!("v{}", runs.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
        }
    };
    assert_eq!(page(a.clone()).await, "v1");
    clock.advance(Duration::from_secs(61));
    // B reads the stale entry now and gets its answer 150 ms later (within
    // the 250 ms op timeout)...
    late_delay.store(150, Ordering::SeqCst);
    let late = tokio::spawn(page(b.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...while A serves it stale and refreshes it to completion.
    assert_eq!(page(a.clone()).await, "v1");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.get::<String>("news:1").await.unwrap().as_deref() != Some("v2") {
        assert!(std::time::Instant::now() < deadline, "A never refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        late.await.unwrap(),
        "v1",
        "B read before the refresh: stale"
    );
    // B's refresh job runs after A's released the lock: give it time to
    // compute, if it were going to.
    late_delay.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the page was refreshed twice for one stale entry"
    );
    assert_eq!(page(b).await, "v2");
}
