//! The contract, written once and run against every store.
//!
//! Each scenario collects what it observed against what the contract says
//! and fails once, at the end, with every problem on one line
//! (`<store>::<scenario>: observed ...; observed ...`), so one run shows
//! everything a store gets wrong rather than the first thing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheruntime::{Cache, Policy, Stats};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::stores::Store;

/// A computed value: the key it is for and the origin's version it was
/// computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Val {
    pub key: String,
    pub version: u64,
}

/// The source of truth for one key: a version, starting at 1, and how many
/// times the cache asked for it.
#[derive(Clone)]
struct Origin {
    key: &'static str,
    version: Arc<AtomicU64>,
    runs: Arc<AtomicUsize>,
}

/// Holds a computation that has read the origin until released.
struct Gate {
    /// The version the computation read.
    entered: oneshot::Receiver<u64>,
    release: oneshot::Sender<()>,
    /// The computation returned its value.
    done: oneshot::Receiver<()>,
}

type Compute = Box<dyn FnOnce() -> BoxFuture<'static, Val> + Send>;

impl Origin {
    fn new(key: &'static str) -> Origin {
        Origin {
            key,
            version: Arc::new(AtomicU64::new(1)),
            runs: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The app's update: the new version.
    fn bump(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn val(&self, version: u64) -> Val {
        Val {
            key: self.key.to_owned(),
            version,
        }
    }

    /// A computation reading the origin when it runs.
    fn compute(&self) -> Compute {
        let o = self.clone();
        Box::new(move || {
            Box::pin(async move {
                o.runs.fetch_add(1, Ordering::SeqCst);
                o.val(o.version.load(Ordering::SeqCst))
            })
        })
    }

    /// A computation that reads the origin, says so, and waits for the
    /// gate before returning what it read.
    fn gated(&self) -> (Gate, Compute) {
        let (entered_tx, entered) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let o = self.clone();
        let compute: Compute = Box::new(move || {
            Box::pin(async move {
                o.runs.fetch_add(1, Ordering::SeqCst);
                let version = o.version.load(Ordering::SeqCst);
                let _ = entered_tx.send(version);
                let _ = release_rx.await;
                let _ = done_tx.send(());
                o.val(version)
            })
        });
        (
            Gate {
                entered,
                release,
                done,
            },
            compute,
        )
    }
}

pub use crate::dogpile::*;
pub use crate::lowlevel::*;
pub use crate::operators::*;
pub use crate::policies::*;
pub use crate::tags::*;

/// What a scenario saw that the contract forbids.
pub struct Findings {
    label: String,
    problems: Vec<String>,
}

impl Findings {
    pub fn new(store: &Store, scenario: &str) -> Findings {
        Findings {
            label: format!("{}::{scenario}", store.name),
            problems: Vec::new(),
        }
    }

    pub fn fail(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    pub fn expect(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    pub fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{}: {}",
            self.label,
            self.problems.join("; ")
        );
    }
}

async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// A get-or-compute call on its own task (so the test can do other things
/// while it runs).
fn spawn_call(
    cache: &Cache,
    key: &'static str,
    policy: Policy,
    compute: Compute,
) -> tokio::task::JoinHandle<Val> {
    let cache = cache.clone();
    tokio::spawn(async move { cache.get_or_compute(key, &policy, compute).await })
}

/// The answer of a spawned call, or why there is none.
async fn answer(call: tokio::task::JoinHandle<Val>, limit: Duration) -> Result<Val, String> {
    match within(limit, call).await {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("the call panicked: {e}")),
        None => Err(format!("no answer within {limit:?}")),
    }
}

pub const MINUTE: Duration = Duration::from_secs(60);
/// How long a step may take before the scenario calls it stuck.
const STUCK: Duration = Duration::from_secs(15);

/// TTLs for scenarios that need an entry to expire: a minute on a manual
/// clock, a second where the server keeps time.
pub fn short_ttl(s: &Store) -> Duration {
    if s.manual_clock().is_some() {
        MINUTE
    } else {
        Duration::from_secs(1)
    }
}

// ------------------------------------------------------------- 1. round trip

/// `set`/`get` across handles; `get_or_compute` computes once, then hits,
/// in this process and the other.
pub async fn round_trip(s: &Store) {
    let mut f = Findings::new(s, "round_trip");
    let v = Val {
        key: "rt:1".into(),
        version: 1,
    };
    if let Err(e) = s.a.set("rt:1", &v, MINUTE).await {
        f.fail(format!("A.set failed: {e}"));
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let got = h.get::<Val>("rt:1").await;
        f.expect(matches!(&got, Ok(Some(g)) if *g == v), || {
            format!("{name}.get after A.set returned {got:?}, expected {v:?}")
        });
    }
    let o = Origin::new("rt:2");
    let p = Policy::new().ttl(MINUTE);
    for (name, h) in [("A", &s.a), ("A", &s.a), ("B", &s.b)] {
        let got = h.get_or_compute(o.key, &p, o.compute()).await;
        f.expect(got == o.val(1), || {
            format!("{name}.get_or_compute returned {got:?}")
        });
    }
    f.expect(o.runs() == 1, || {
        format!(
            "get_or_compute ran the computation {} times over 3 calls (A, A, B), expected once",
            o.runs()
        )
    });
    let (a, b) = (s.a.stats(), s.b.stats());
    f.expect(a.hits >= 2 && b.hits >= 2, || {
        format!(
            "hits: A {} (expected >= 2), B {} (expected >= 2)",
            a.hits, b.hits
        )
    });
    f.expect(a.errors == 0 && b.errors == 0, || {
        format!("store errors: A {}, B {}", a.errors, b.errors)
    });
    f.finish();
}

// -------------------------------------------------------------------- 2. TTL

/// An entry is served until its TTL and gone after it, for `set` entries
/// and computed ones, on both handles.
pub async fn ttl_expiry(s: &Store) {
    let mut f = Findings::new(s, "ttl_expiry");
    let ttl = short_ttl(s);
    let p = Policy::new().ttl(ttl);
    let o = Origin::new("ttl:1");
    let written = Instant::now();
    if let Err(e) = s.a.set("ttl:0", &o.val(0), ttl).await {
        f.fail(format!("A.set failed: {e}"));
    }
    s.a.get_or_compute(o.key, &p, o.compute()).await;
    if s.manual_clock().is_some() {
        s.elapse(ttl - Duration::from_secs(1)).await;
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        for key in ["ttl:0", "ttl:1"] {
            let got = h.get::<Val>(key).await;
            f.expect(matches!(got, Ok(Some(_))), || {
                format!("{name}.get({key}) before the TTL returned {got:?}")
            });
        }
    }
    s.b.get_or_compute(o.key, &p, o.compute()).await;
    f.expect(o.runs() == 1, || {
        format!("B recomputed before the TTL ({} runs)", o.runs())
    });
    let gone = |h: &Cache| {
        let h = h.clone();
        async move {
            matches!(h.get::<Val>("ttl:0").await, Ok(None))
                && matches!(h.get::<Val>("ttl:1").await, Ok(None))
        }
    };
    if s.manual_clock().is_some() {
        s.elapse(Duration::from_secs(1)).await;
        for (name, h) in [("A", &s.a), ("B", &s.b)] {
            f.expect(gone(h).await, || {
                format!("{name} still served an entry when the manual clock reached its TTL")
            });
        }
    } else {
        // Server-kept time: poll, within the TTL plus the server's own
        // granularity (Memcached counts whole seconds).
        let deadline = written + ttl + Duration::from_secs(3);
        loop {
            if gone(&s.a).await && gone(&s.b).await {
                break;
            }
            if Instant::now() > deadline {
                f.fail(format!(
                    "an entry with a {ttl:?} TTL was still served {:?} after it was written",
                    written.elapsed()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    s.a.get_or_compute(o.key, &p, o.compute()).await;
    f.expect(o.runs() == 2, || {
        format!(
            "get_or_compute after the TTL did not recompute ({} runs, expected 2)",
            o.runs()
        )
    });
    f.finish();
}

// ------------------------------------------------------- 3. negative caching

/// `get_or_compute` returning `None` caches the `None`.
pub async fn negative_caching(s: &Store) {
    let mut f = Findings::new(s, "negative_caching");
    let p = Policy::new().ttl(MINUTE);
    let runs = Arc::new(AtomicUsize::new(0));
    for name in ["A", "A", "B"] {
        let h = if name == "A" { &s.a } else { &s.b };
        let r = runs.clone();
        let got: Option<Val> = h
            .get_or_compute("neg:1", &p, move || async move {
                r.fetch_add(1, Ordering::SeqCst);
                None
            })
            .await;
        f.expect(got.is_none(), || {
            format!("{name}.get_or_compute returned {got:?}")
        });
    }
    let n = runs.load(Ordering::SeqCst);
    f.expect(n == 1, || {
        format!("a computed None was not cached: {n} runs over 3 calls (A, A, B)")
    });
    let got = s.b.get::<Option<Val>>("neg:1").await;
    f.expect(matches!(got, Ok(Some(None))), || {
        format!("B.get of the cached None returned {got:?}, expected Ok(Some(None))")
    });
    f.finish();
}

// ---------------------------------------------------------------- 4, 5. fences

#[derive(Clone, Copy, PartialEq)]
enum Fence {
    Invalidate,
    Delete,
    /// `delete_many` of the key and another one.
    DeleteMany,
    /// `clear` of the whole namespace.
    Clear,
}

impl Fence {
    fn name(self) -> &'static str {
        match self {
            Fence::Invalidate => "invalidate_prefix",
            Fence::Delete => "delete",
            Fence::DeleteMany => "delete_many",
            Fence::Clear => "clear",
        }
    }
}

/// A's computation reads version 1 and waits; the origin moves to 2 and a
/// fence (`invalidate_prefix` or `delete`, through A or through B)
/// returns; then callers on A and B start while A's computation is still
/// running; then it finishes. No call that started after the fence
/// returned may get version 1: not the callers that started while A's
/// computation ran, not any later call on A, B or a new handle.
async fn fence(s: &Store, scenario: &str, fence: Fence, through_b: bool) {
    let mut f = Findings::new(s, scenario);
    let o = Origin::new("acct:7:balance");
    let p = Policy::new().ttl(MINUTE);
    let (gate, compute) = o.gated();
    let first = spawn_call(&s.a, o.key, p, compute);
    match within(STUCK, gate.entered).await {
        Some(Ok(1)) => {}
        other => {
            f.fail(format!("A's computation never started ({other:?})"));
            return f.finish();
        }
    }
    o.bump();
    let (via, fencer) = if through_b { ("B", &s.b) } else { ("A", &s.a) };
    let fenced = match fence {
        Fence::Invalidate => fencer.invalidate_prefix("acct:7:").await,
        Fence::Delete => fencer.delete(o.key).await,
        Fence::DeleteMany => fencer.delete_many(&["acct:8:balance", o.key]).await,
        Fence::Clear => fencer.clear().await,
    };
    if let Err(e) = fenced {
        f.fail(format!("{via}.{} failed: {e}", fence.name()));
    }
    let what = format!("{via}.{}", fence.name());
    let on_a = spawn_call(&s.a, o.key, p, o.compute());
    let on_b = spawn_call(&s.b, o.key, p, o.compute());
    // Let them get where they go (join A's flight, wait on the store lock,
    // or compute) while A's computation of version 1 is still running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = gate.release.send(());
    if let Err(e) = answer(first, STUCK).await {
        f.fail(format!("A's first call: {e}"));
    }
    for (name, call) in [("A", on_a), ("B", on_b)] {
        match answer(call, STUCK).await {
            Ok(v) => f.expect(v.version >= 2, || {
                format!(
                    "a call on {name} that started after {what} returned, while A's computation \
                     of version 1 was in flight, got version {} (expected 2)",
                    v.version
                )
            }),
            Err(e) => f.fail(format!(
                "a call on {name} started after {what} returned: {e}"
            )),
        }
    }
    later_calls_see(s, &mut f, &o, 2, &format!("after {what} returned")).await;
    f.finish();
}

/// Every later call, on A, B and a new handle, gets `min` or newer: `get`
/// (or nothing) and `get_or_compute`. With near tiers, once the change has
/// had `near_check` to reach them ([`Store::settle`]).
async fn later_calls_see(s: &Store, f: &mut Findings, o: &Origin, min: u64, when: &str) {
    s.settle().await;
    let c = s.handle();
    let p = Policy::new().ttl(MINUTE);
    for (name, h) in [("A", &s.a), ("B", &s.b), ("a new handle", &c)] {
        match h.get::<Val>(o.key).await {
            Ok(Some(v)) if v.version < min => f.fail(format!(
                "{name}.get {when}: version {} (expected {min} or nothing)",
                v.version
            )),
            Ok(_) => {}
            Err(e) => f.fail(format!("{name}.get {when} failed: {e}")),
        }
        match within(STUCK, h.get_or_compute(o.key, &p, o.compute())).await {
            Some(v) => f.expect(v.version >= min, || {
                format!(
                    "{name}.get_or_compute {when}: version {} (expected {min})",
                    v.version
                )
            }),
            None => f.fail(format!(
                "{name}.get_or_compute {when}: no answer within {STUCK:?}"
            )),
        }
    }
}

pub async fn fence_invalidate_same_handle(s: &Store) {
    fence(s, "fence_invalidate_same_handle", Fence::Invalidate, false).await;
}

pub async fn fence_delete_same_handle(s: &Store) {
    fence(s, "fence_delete_same_handle", Fence::Delete, false).await;
}

pub async fn fence_invalidate_other_handle(s: &Store) {
    fence(s, "fence_invalidate_other_handle", Fence::Invalidate, true).await;
}

pub async fn fence_delete_other_handle(s: &Store) {
    fence(s, "fence_delete_other_handle", Fence::Delete, true).await;
}

pub async fn fence_delete_many_same_handle(s: &Store) {
    fence(s, "fence_delete_many_same_handle", Fence::DeleteMany, false).await;
}

pub async fn fence_delete_many_other_handle(s: &Store) {
    fence(s, "fence_delete_many_other_handle", Fence::DeleteMany, true).await;
}

pub async fn fence_clear_other_handle(s: &Store) {
    fence(s, "fence_clear_other_handle", Fence::Clear, true).await;
}

// ------------------------------------------------------------- 6, 7. locks

#[derive(Clone, Copy)]
enum Break {
    Cancel,
    Panic,
}

fn boom() -> Val {
    panic!("the computation panics on purpose (conformance lock scenario)")
}

/// A caller on A takes the key (and, on shared stores, the store's lock,
/// 30 s TTL) and is cancelled or panics inside its computation. The next
/// caller of that key, on A and on B, must compute at once, not wait out
/// the lock.
async fn lock_release(s: &Store, scenario: &str, how: Break) {
    let mut f = Findings::new(s, scenario);
    let p = Policy::new().ttl(MINUTE).lock_ttl(Duration::from_secs(30));
    let cases = [
        ("A (same handle)", &s.a, Origin::new("lk:1:x")),
        ("B (other handle)", &s.b, Origin::new("lk:2:x")),
    ];
    for (_, _, o) in &cases {
        let (entered_tx, entered) = oneshot::channel::<()>();
        match how {
            Break::Cancel => {
                let call = s.a.get_or_compute(o.key, &p, move || async move {
                    let _ = entered_tx.send(());
                    std::future::pending::<Val>().await
                });
                // Dropping the call mid-computation cancels it.
                tokio::select! {
                    _ = call => f.fail("the pending computation returned"),
                    r = within(STUCK, entered) => f.expect(matches!(r, Some(Ok(()))), || {
                        format!("A's computation of {} never started", o.key)
                    }),
                }
            }
            Break::Panic => {
                let a = s.a.clone();
                let key = o.key;
                let task = tokio::spawn(async move {
                    a.get_or_compute(key, &p, move || async move {
                        let _ = entered_tx.send(());
                        boom()
                    })
                    .await
                });
                let _ = within(STUCK, entered).await;
                match within(STUCK, task).await {
                    Some(Err(e)) if e.is_panic() => {}
                    other => f.fail(format!(
                        "A's panicking call on {key} ended otherwise: {other:?}"
                    )),
                }
            }
        }
    }
    let bound = Duration::from_secs(3);
    let give_up = Duration::from_secs(6);
    let next = cases.iter().map(|(name, h, o)| async move {
        let started = Instant::now();
        let got = within(give_up, h.get_or_compute(o.key, &p, o.compute())).await;
        (*name, o.key, started.elapsed(), got, h.stats())
    });
    for (name, key, took, got, stats) in futures::future::join_all(next).await {
        match got {
            None => f.fail(format!(
                "the next caller of {key} on {name} had no answer after {give_up:?} (lock TTL \
                 30 s): it waits on the broken call's lock (lock_waits={}, lock_timeouts={})",
                stats.lock_waits, stats.lock_timeouts
            )),
            Some(v) => {
                f.expect(took <= bound, || {
                    format!(
                        "the next caller of {key} on {name} took {took:?} (expected under \
                         {bound:?}; lock_waits={})",
                        stats.lock_waits
                    )
                });
                f.expect(v.version == 1, || {
                    format!("the next caller on {name} got {v:?}")
                });
            }
        }
        f.expect(stats.lock_timeouts == 0, || {
            format!("{name}: lock_timeouts={}", stats.lock_timeouts)
        });
    }
    f.finish();
}

pub async fn lock_released_after_cancel(s: &Store) {
    lock_release(s, "lock_released_after_cancel", Break::Cancel).await;
}

pub async fn lock_released_after_panic(s: &Store) {
    lock_release(s, "lock_released_after_panic", Break::Panic).await;
}

// ------------------------------------------------- 8. invalidation state loss

/// Entries hidden by an invalidation stay hidden after the store loses its
/// invalidation state.
pub async fn invalidation_survives_state_loss(s: &Store) {
    let mut f = Findings::new(s, "invalidation_survives_state_loss");
    let p = Policy::new().ttl(MINUTE);
    let origins = [
        Origin::new("grp:1:a"),
        Origin::new("grp:1:b"),
        Origin::new("grp:1:c"),
        Origin::new("grp:1:d"),
    ];
    // Two written with `set`, two computed (one on each handle).
    for (i, o) in origins.iter().enumerate() {
        let (name, h) = if i % 2 == 0 { ("A", &s.a) } else { ("B", &s.b) };
        if i < 2 {
            if let Err(e) = h.set(o.key, &o.val(1), MINUTE).await {
                f.fail(format!("{name}.set({}) failed: {e}", o.key));
            }
        } else {
            h.get_or_compute(o.key, &p, o.compute()).await;
        }
    }
    for o in &origins {
        let got = s.a.get::<Val>(o.key).await;
        f.expect(matches!(&got, Ok(Some(v)) if v.version == 1), || {
            format!("A.get({}) before the invalidation returned {got:?}", o.key)
        });
        o.bump();
    }
    if let Err(e) = s.a.invalidate_prefix("grp:1:").await {
        f.fail(format!("A.invalidate_prefix failed: {e}"));
    }
    s.settle().await;
    for o in &origins {
        let got = s.b.get::<Val>(o.key).await;
        f.expect(matches!(got, Ok(None)), || {
            format!("B.get({}) after the invalidation returned {got:?}", o.key)
        });
    }
    s.lose_invalidation_state().await;
    for o in &origins {
        later_calls_see(s, &mut f, o, 2, "after the invalidation state was lost").await;
    }
    f.finish();
}

/// A computation on A that read before B's invalidation writes after the
/// invalidation and after the store lost its invalidation state: its value
/// must not become visible, nor may a caller on A that starts after them
/// be handed it while it runs.
pub async fn in_flight_write_hidden_after_state_loss(s: &Store) {
    let mut f = Findings::new(s, "in_flight_write_hidden_after_state_loss");
    let o = Origin::new("grp:2:a");
    let p = Policy::new().ttl(MINUTE);
    let (gate, compute) = o.gated();
    let first = spawn_call(&s.a, o.key, p, compute);
    if !matches!(within(STUCK, gate.entered).await, Some(Ok(1))) {
        f.fail("A's computation never started");
        return f.finish();
    }
    o.bump();
    if let Err(e) = s.b.invalidate_prefix("grp:2:").await {
        f.fail(format!("B.invalidate_prefix failed: {e}"));
    }
    s.lose_invalidation_state().await;
    // Started after the invalidation and the loss, while A's computation
    // from before them still runs: must neither wait for it nor get its
    // value (a lost record must not make the old computation look current).
    match answer(spawn_call(&s.a, o.key, p, o.compute()), STUCK).await {
        Ok(v) if v.version < 2 => f.fail(format!(
            "a call on A started after B's invalidation and the state loss got version {} \
             (expected 2): it joined A's computation from before them",
            v.version
        )),
        Ok(_) => {}
        Err(e) => f.fail(format!("a call on A after the state loss: {e}")),
    }
    let _ = gate.release.send(());
    if let Err(e) = answer(first, STUCK).await {
        f.fail(format!("A's first call: {e}"));
    }
    later_calls_see(
        s,
        &mut f,
        &o,
        2,
        "after B's invalidation, the state loss and the write of a value computed before them",
    )
    .await;
    f.finish();
}

// --------------------------------------------------------------- 9. oversize

/// Over `max_entry_bytes` (1 MiB): returned, not stored, counted. Under it
/// (300 KB): stored and served, to both handles.
pub async fn oversize(s: &Store) {
    let mut f = Findings::new(s, "oversize");
    let p = Policy::new().ttl(MINUTE);
    let base = s.a.stats();
    let big = vec![9u8; 3 << 19];
    let big_runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (value, runs) = (big.clone(), big_runs.clone());
        let got: Vec<u8> =
            s.a.get_or_compute("big:1", &p, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .await;
        f.expect(got == big, || {
            format!("a 1.5 MiB value came back as {} bytes", got.len())
        });
    }
    let n = big_runs.load(Ordering::SeqCst);
    f.expect(n == 2, || {
        format!("the 1.5 MiB value was computed {n} times over 2 calls (expected 2: never stored)")
    });
    let oversize = s.a.stats().oversize - base.oversize;
    f.expect(oversize == 2, || {
        format!("stats().oversize counted {oversize} for 2 oversize values")
    });
    let got = s.b.get::<Vec<u8>>("big:1").await;
    f.expect(matches!(got, Ok(None)), || {
        format!(
            "B.get of the oversize key returned {:?}",
            got.map(|v| v.map(|v| v.len()))
        )
    });

    let small = vec![7u8; 300_000];
    let small_runs = Arc::new(AtomicUsize::new(0));
    for name in ["A", "A", "B"] {
        let h = if name == "A" { &s.a } else { &s.b };
        let (value, runs) = (small.clone(), small_runs.clone());
        let got: Vec<u8> = h
            .get_or_compute("small:1", &p, move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                value
            })
            .await;
        f.expect(got == small, || {
            format!("{name}: the 300 KB value came back as {} bytes", got.len())
        });
    }
    let n = small_runs.load(Ordering::SeqCst);
    f.expect(n == 1, || {
        format!(
            "a 300 KB value (under the 1 MiB max entry) was computed {n} times over 3 calls \
             (A, A, B): it was not stored"
        )
    });
    match s.a.set("small:2", &small, MINUTE).await {
        Ok(()) => {
            let got = s.b.get::<Vec<u8>>("small:2").await;
            f.expect(matches!(&got, Ok(Some(v)) if *v == small), || {
                format!(
                    "A.set of a 300 KB value returned Ok but B.get found {:?}",
                    got.map(|v| v.map(|v| v.len()))
                )
            });
        }
        Err(e) => f.fail(format!("A.set of a 300 KB value failed: {e}")),
    }
    let errors = s.a.stats().errors - base.errors;
    f.expect(errors == 0, || format!("A counted {errors} store errors"));
    f.finish();
}

// ----------------------------------------------------------- 10. stats identity

/// Every read call counts exactly once: `hits + stale_hits + misses`
/// equals the number of calls, per handle.
pub async fn stats_identity(s: &Store) {
    let mut f = Findings::new(s, "stats_identity");
    let ttl = short_ttl(s);
    let p = Policy::new().ttl(ttl);
    let ps = p.stale(Duration::from_secs(600));
    let (base_a, base_b) = (s.a.stats(), s.b.stats());
    let (o1, o2, o3) = (
        Origin::new("st:1"),
        Origin::new("st:2"),
        Origin::new("st:3"),
    );
    let mut calls_a = 0u64;
    let mut calls_b = 0u64;
    // A: a miss and a hit through get-or-compute, a hit and a miss through
    // `get`, and two entries with a stale window.
    s.a.get_or_compute(o1.key, &p, o1.compute()).await;
    s.a.get_or_compute(o1.key, &p, o1.compute()).await;
    let _ = s.a.get::<Val>(o1.key).await;
    let _ = s.a.get::<Val>("st:none").await;
    s.a.get_or_compute(o2.key, &ps, o2.compute()).await;
    s.a.get_or_compute(o3.key, &ps, o3.compute()).await;
    calls_a += 6;
    s.elapse(ttl + Duration::from_millis(200)).await;
    // A stale hit, refreshed in the background...
    s.a.get_or_refresh(o2.key, &ps, o2.compute()).await;
    // ...and a stale entry recomputed in the foreground (get_or_compute
    // has no background refresh).
    s.a.get_or_compute(o3.key, &ps, o3.compute()).await;
    calls_a += 2;
    // B: an expired entry (a miss), then hits, then a `get` miss.
    s.b.get_or_compute(o1.key, &p, o1.compute()).await;
    s.b.get_or_compute(o1.key, &p, o1.compute()).await;
    let _ = s.b.get::<Val>(o3.key).await;
    let _ = s.b.get::<Val>("st:none").await;
    calls_b += 4;
    for (name, h, base, calls) in [("A", &s.a, base_a, calls_a), ("B", &s.b, base_b, calls_b)] {
        let now = h.stats();
        let d = |g: fn(&Stats) -> u64| g(&now) - g(&base);
        let (hits, stale, misses) = (d(|s| s.hits), d(|s| s.stale_hits), d(|s| s.misses));
        f.expect(hits + stale + misses == calls, || {
            format!(
                "{name}: hits {hits} + stale_hits {stale} + misses {misses} = {} over {calls} calls",
                hits + stale + misses
            )
        });
    }
    f.finish();
}

// ------------------------------------------------------------------- extras

/// A stale entry on A is being refreshed in the background (its
/// computation read version 1) when the origin moves to 2 and B fences the
/// key. The refresh's write must not bring version 1 back.
async fn refresh_then(s: &Store, scenario: &str, fence: Fence) {
    let mut f = Findings::new(s, scenario);
    let ttl = short_ttl(s);
    let ps = Policy::new().ttl(ttl).stale(Duration::from_secs(600));
    let o = Origin::new("rf:1:feed");
    s.a.get_or_compute(o.key, &ps, o.compute()).await;
    s.elapse(ttl + Duration::from_millis(200)).await;
    let (gate, compute) = o.gated();
    let served = s.a.get_or_refresh(o.key, &ps, compute).await;
    f.expect(served.version == 1, || {
        format!("the stale read returned {served:?}")
    });
    if !matches!(within(STUCK, gate.entered).await, Some(Ok(1))) {
        f.fail("no background refresh started");
        return f.finish();
    }
    o.bump();
    let fenced = match fence {
        Fence::Invalidate => s.b.invalidate_prefix("rf:1:").await,
        Fence::Delete => s.b.delete(o.key).await,
        Fence::DeleteMany => s.b.delete_many(&[o.key, "rf:2"]).await,
        Fence::Clear => s.b.clear().await,
    };
    if let Err(e) = fenced {
        f.fail(format!("B.{} failed: {e}", fence.name()));
    }
    let _ = gate.release.send(());
    let _ = within(STUCK, gate.done).await;
    // The refresh stores its value right after computing it: watch for it.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Ok(Some(v)) = s.b.get::<Val>(o.key).await {
            if v.version < 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let what = format!(
        "after B.{} returned during A's background refresh",
        fence.name()
    );
    later_calls_see(s, &mut f, &o, 2, &what).await;
    f.finish();
}

pub async fn refresh_after_delete(s: &Store) {
    refresh_then(s, "refresh_after_delete", Fence::Delete).await;
}

pub async fn refresh_after_invalidate(s: &Store) {
    refresh_then(s, "refresh_after_invalidate", Fence::Invalidate).await;
}

pub async fn refresh_after_delete_many(s: &Store) {
    refresh_then(s, "refresh_after_delete_many", Fence::DeleteMany).await;
}

pub async fn refresh_after_clear(s: &Store) {
    refresh_then(s, "refresh_after_clear", Fence::Clear).await;
}

/// A's computation reads version 1; the origin moves to 2 and B `delete`s
/// the key, then `set`s version 2 (the documented way to replace a value
/// that computations may be producing: `set` alone is last-writer-wins);
/// then A's computation finishes. Its older value must not replace the one
/// `set` stored.
pub async fn delete_then_set_outlasts_an_older_computation(s: &Store) {
    let mut f = Findings::new(s, "delete_then_set_outlasts_an_older_computation");
    let o = Origin::new("wr:1:x");
    let p = Policy::new().ttl(MINUTE);
    let (gate, compute) = o.gated();
    let first = spawn_call(&s.a, o.key, p, compute);
    if !matches!(within(STUCK, gate.entered).await, Some(Ok(1))) {
        f.fail("A's computation never started");
        return f.finish();
    }
    let v2 = o.val(o.bump());
    if let Err(e) = s.b.delete(o.key).await {
        f.fail(format!("B.delete failed: {e}"));
    }
    if let Err(e) = s.b.set(o.key, &v2, MINUTE).await {
        f.fail(format!("B.set failed: {e}"));
    }
    let _ = gate.release.send(());
    if let Err(e) = answer(first, STUCK).await {
        f.fail(format!("A's first call: {e}"));
    }
    later_calls_see(
        s,
        &mut f,
        &o,
        2,
        "after B.delete and B.set(version 2) returned",
    )
    .await;
    f.finish();
}

/// A handle sees its own changes at once, near tier or not: after A reads a
/// key (kept near, where A has a near tier), A's `set`, `set_many`,
/// `delete`, `delete_many`, `invalidate_prefix` and `clear` are seen by A's
/// very next read, without waiting for anything.
pub async fn own_changes_are_seen_at_once(s: &Store) {
    let mut f = Findings::new(s, "own_changes_are_seen_at_once");
    let key = "own:1:k";
    let read = |want: Option<u64>, after: &'static str| {
        let a = s.a.clone();
        async move {
            let got = a.get::<u64>(key).await;
            (
                matches!(&got, Ok(v) if *v == want),
                format!("A.get after A.{after}: {got:?}, expected {want:?}"),
            )
        }
    };
    let steps: [(&'static str, Option<u64>); 7] = [
        ("set", Some(1)),
        ("set (again)", Some(2)),
        ("set_many", Some(3)),
        ("delete", None),
        ("set, then delete_many", None),
        ("set, then invalidate_prefix", None),
        ("set, then clear", None),
    ];
    for (i, (step, want)) in steps.into_iter().enumerate() {
        // Kept near first, where there is a near tier.
        let _ = s.a.get::<u64>(key).await;
        let _ = s.a.get::<u64>(key).await;
        let done = match i {
            0 => s.a.set(key, &1u64, MINUTE).await,
            1 => s.a.set(key, &2u64, MINUTE).await,
            2 => s.a.set_many(&[(key, 3u64)], MINUTE).await,
            3 => s.a.delete(key).await,
            _ => {
                let _ = s.a.set(key, &9u64, MINUTE).await;
                let _ = s.a.get::<u64>(key).await;
                match i {
                    4 => s.a.delete_many(&[key]).await,
                    5 => s.a.invalidate_prefix("own:").await,
                    _ => s.a.clear().await,
                }
            }
        };
        if let Err(e) = done {
            f.fail(format!("A.{step} failed: {e}"));
        }
        let (ok, what) = read(want, step).await;
        f.expect(ok, || what);
    }
    f.finish();
}
