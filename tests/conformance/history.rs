//! The randomized history checker.
//!
//! Tasks over three `Cache` handles sharing one store run random
//! operations for a bounded time (`CONFORMANCE_SECONDS`, default 5; 6 with
//! faults) on a small key set (`k:<group>:<i>`, 3 groups of 4 keys):
//! `get_or_compute`, `get_or_refresh` (with a stale window, as are all
//! reads of the last group), `get`, `get_many` (of two keys, checked as two
//! reads), `set`, `add`, `delete`, `delete_many` (of two keys),
//! `invalidate_prefix("k:<group>:")`, `clear`, and origin updates.
//!
//! The origin is a version per key. A computation returns `(key, version)`
//! read from the origin when it starts (then sleeps 0-3 ms to widen
//! races). Writers follow the app's discipline: update the origin, then
//! `delete` the key (or keys) or invalidate its prefix (or the whole
//! namespace); a `set` or an `add` writes the current version while
//! holding the key's origin lock, so it is never older than the origin at
//! its start. Every operation is recorded with its start and
//! end on one global counter (a total order agreeing with real time), and
//! its result.
//!
//! The checker asserts, for every value a read returned:
//! (a) it belongs to the key asked (the value embeds its key);
//! (b) its version is not older than the version that any `delete` or
//!     `invalidate_prefix` covering the key had set before it was issued,
//!     if that fence returned before the read started; with near tiers
//!     (the `*_near` stores), a fence made through another handle binds
//!     only reads that started `near_check` after it returned (on the
//!     handles' clock), one made through the reader's own handle at once.
//!
//! Seeded (`CONFORMANCE_SEED=<n>` replays a run's operation sequences; the
//! interleaving is the scheduler's). Each run prints one line:
//! `CONFORMANCE | history | <store> | ...`, and a failure describes the
//! first violations with the history of the key around them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cacheruntime::{Cache, Clock, Policy};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::stores::{self, Options, Store};
use crate::support::{MemcachedServer, Postgres, RedisServer, StallProxy};

const GROUPS: usize = 3;
const PER_GROUP: usize = 4;
const KEYS: usize = GROUPS * PER_GROUP;
const TASKS: usize = 12;
const HANDLES: usize = 3;
/// A cap on what one task records, whatever the store's speed.
const MAX_OPS_PER_TASK: usize = 50_000;
/// `get_or_compute`'s and `set`'s TTL.
const TTL: Duration = Duration::from_secs(2);
/// `get_or_refresh`'s, and every read's on the last group's keys: fences
/// replace entries every few milliseconds, so only a short TTL lets
/// entries go stale, to be served stale and refreshed in the background
/// (`get_or_refresh`) or recomputed in the foreground (`get_or_compute`).
const REFRESH_TTL: Duration = Duration::from_millis(20);
const STALE: Duration = Duration::from_secs(10);
const LOCK_TTL: Duration = Duration::from_secs(2);

fn key_name(k: usize) -> String {
    format!("k:{}:{}", k / PER_GROUP, k % PER_GROUP)
}

fn group_prefix(g: usize) -> String {
    format!("k:{g}:")
}

/// A value as the origin made it: which key, which version, which
/// operation computed or wrote it, and when it read the origin.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct HVal {
    key: String,
    version: u64,
    by: u64,
    read_at: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    GetOrCompute,
    GetOrRefresh,
    Get,
    Set,
    /// A `set` only if absent; `result` is its value when it stored.
    Add,
    Delete,
    /// `delete_many` of the keys in `versions`.
    DeleteMany,
    /// `key` holds the group.
    Invalidate,
    /// The whole namespace.
    Clear,
    /// Origin only, no fence.
    Update,
}

struct Op {
    id: u64,
    handle: usize,
    kind: Kind,
    key: usize,
    start: u64,
    end: u64,
    result: Option<HVal>,
    error: Option<String>,
    /// For fences (and updates): the versions set before the call.
    versions: Vec<(usize, u64)>,
}

impl Op {
    fn is_read(&self) -> bool {
        matches!(
            self.kind,
            Kind::GetOrCompute | Kind::GetOrRefresh | Kind::Get
        )
    }

    fn is_fence(&self) -> bool {
        matches!(
            self.kind,
            Kind::Delete | Kind::DeleteMany | Kind::Invalidate | Kind::Clear
        ) && self.error.is_none()
    }

    fn touches(&self, k: usize) -> bool {
        match self.kind {
            Kind::Invalidate => self.key == k / PER_GROUP,
            Kind::DeleteMany => self.versions.iter().any(|(key, _)| *key == k),
            Kind::Clear => true,
            _ => self.key == k,
        }
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            Kind::Invalidate => format!("invalidate_prefix({})", group_prefix(self.key)),
            Kind::GetOrCompute => format!("get_or_compute({})", key_name(self.key)),
            Kind::GetOrRefresh => format!("get_or_refresh({})", key_name(self.key)),
            Kind::Get => format!("get({})", key_name(self.key)),
            Kind::Set => format!(
                "set({}, v{})",
                key_name(self.key),
                self.result.as_ref().map_or(0, |v| v.version)
            ),
            Kind::Add => format!(
                "add({}, v{}) -> {}",
                key_name(self.key),
                self.result.as_ref().map_or(0, |v| v.version),
                if self.result.is_some() {
                    "stored"
                } else {
                    "refused"
                }
            ),
            Kind::Delete => format!("delete({})", key_name(self.key)),
            Kind::DeleteMany => {
                let keys: Vec<String> = self.versions.iter().map(|(k, _)| key_name(*k)).collect();
                format!("delete_many({})", keys.join(", "))
            }
            Kind::Clear => "clear()".to_owned(),
            Kind::Update => format!("origin update({})", key_name(self.key)),
        };
        let mut out = format!(
            "op#{} {what} on handle {} [seq {}..{}]",
            self.id,
            handle_name(self.handle),
            self.start,
            self.end
        );
        if let Some(v) = self
            .result
            .as_ref()
            .filter(|_| !matches!(self.kind, Kind::Set | Kind::Add))
        {
            out += &format!(
                " -> {} v{} (by op#{}, origin read at seq {})",
                v.key, v.version, v.by, v.read_at
            );
        }
        if !self.versions.is_empty() {
            let set: Vec<String> = self
                .versions
                .iter()
                .map(|(k, v)| format!("{}=v{v}", key_name(*k)))
                .collect();
            out += &format!(" set origin {}", set.join(","));
        }
        if let Some(e) = &self.error {
            out += &format!(" ERR {e}");
        }
        out
    }
}

fn handle_name(h: usize) -> char {
    (b'A' + h as u8) as char
}

/// The origin and the history's clock.
struct World {
    versions: Vec<AtomicU64>,
    locks: Vec<tokio::sync::Mutex<()>>,
    seq: AtomicU64,
    ids: AtomicU64,
    /// The clock the handles keep time by, read around every tick.
    clock: Clock,
    /// `(tick, ms before it, ms after it)` on `clock`, then on the real
    /// clock (since `started`): what a near tier's staleness bound is
    /// checked against (the real one where near tiers follow pushed
    /// notices, `Store::pushes`).
    times: Mutex<Vec<(u64, [u64; 4])>>,
    started: Instant,
}

impl World {
    fn new(clock: Clock) -> World {
        World {
            versions: (0..KEYS).map(|_| AtomicU64::new(1)).collect(),
            locks: (0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect(),
            seq: AtomicU64::new(1),
            ids: AtomicU64::new(1),
            clock,
            times: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    fn tick(&self) -> u64 {
        let real = || self.started.elapsed().as_millis() as u64;
        let (before, real_before) = (self.clock.now_ms(), real());
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let (after, real_after) = (self.clock.now_ms(), real() + 1);
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((seq, [before, after, real_before, real_after]));
        seq
    }

    /// The app's update of one key, under its lock: the new version.
    async fn bump(&self, k: usize) -> u64 {
        let _held = self.locks[k].lock().await;
        self.versions[k].fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// SplitMix64: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn compute(
    world: Arc<World>,
    k: usize,
    by: u64,
    work_ms: u64,
) -> impl FnOnce() -> BoxFuture<'static, HVal> {
    move || {
        Box::pin(async move {
            let read_at = world.tick();
            let version = world.versions[k].load(Ordering::SeqCst);
            if work_ms > 0 {
                tokio::time::sleep(Duration::from_millis(work_ms)).await;
            }
            HVal {
                key: key_name(k),
                version,
                by,
                read_at,
            }
        })
    }
}

async fn worker(seed: u64, handles: Arc<Vec<Cache>>, world: Arc<World>, until: Instant) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut ops = Vec::new();
    let p = Policy::new().ttl(TTL).lock_ttl(LOCK_TTL);
    let ps = p.ttl(REFRESH_TTL).stale(STALE);
    while Instant::now() < until && ops.len() < MAX_OPS_PER_TASK {
        let roll = rng.below(100);
        let h = rng.below(handles.len());
        let k = rng.below(KEYS);
        let g = rng.below(GROUPS);
        let work_ms = rng.below(4) as u64;
        let pause = rng.below(3);
        let cache = &handles[h];
        let name = key_name(k);
        let stale_group = k / PER_GROUP == GROUPS - 1;
        let mut op = Op {
            id: world.ids.fetch_add(1, Ordering::Relaxed),
            handle: h,
            kind: Kind::Get,
            key: k,
            start: 0,
            end: 0,
            result: None,
            error: None,
            versions: Vec::new(),
        };
        match roll {
            0..45 => {
                op.kind = Kind::GetOrCompute;
                op.start = world.tick();
                let v = cache
                    .get_or_compute(
                        &name,
                        if stale_group { &ps } else { &p },
                        compute(world.clone(), k, op.id, work_ms),
                    )
                    .await;
                op.end = world.tick();
                op.result = Some(v);
            }
            45..60 => {
                op.kind = Kind::GetOrRefresh;
                op.start = world.tick();
                let v = cache
                    .get_or_refresh(&name, &ps, compute(world.clone(), k, op.id, work_ms))
                    .await;
                op.end = world.tick();
                op.result = Some(v);
            }
            60..69 => {
                op.kind = Kind::Get;
                op.start = world.tick();
                let got = cache.get::<HVal>(&name).await;
                op.end = world.tick();
                match got {
                    Ok(v) => op.result = v,
                    Err(e) => op.error = Some(e.to_string()),
                }
            }
            69..72 => {
                // Two reads in one call, recorded (and checked) as two gets.
                let k2 = rng.below(KEYS);
                let start = world.tick();
                let got = cache.get_many::<HVal>(&[&name, &key_name(k2)]).await;
                let end = world.tick();
                let mut second = Op {
                    id: world.ids.fetch_add(1, Ordering::Relaxed),
                    handle: h,
                    kind: Kind::Get,
                    key: k2,
                    start,
                    end,
                    result: None,
                    error: None,
                    versions: Vec::new(),
                };
                (op.start, op.end) = (start, end);
                match got {
                    Ok(mut values) => {
                        second.result = values.pop().flatten();
                        op.result = values.pop().flatten();
                    }
                    Err(e) => {
                        op.error = Some(e.to_string());
                        second.error = Some(e.to_string());
                    }
                }
                ops.push(second);
            }
            72..77 => {
                op.kind = Kind::Set;
                let _held = world.locks[k].lock().await;
                op.start = world.tick();
                let v = HVal {
                    key: name.clone(),
                    version: world.versions[k].load(Ordering::SeqCst),
                    by: op.id,
                    read_at: op.start,
                };
                let done = cache.set(&name, &v, TTL).await;
                op.end = world.tick();
                op.result = Some(v);
                op.error = done.err().map(|e| e.to_string());
            }
            77..80 => {
                op.kind = Kind::Add;
                let _held = world.locks[k].lock().await;
                op.start = world.tick();
                let v = HVal {
                    key: name.clone(),
                    version: world.versions[k].load(Ordering::SeqCst),
                    by: op.id,
                    read_at: op.start,
                };
                let done = cache.add(&name, &v, TTL).await;
                op.end = world.tick();
                match done {
                    Ok(true) => op.result = Some(v),
                    Ok(false) => {}
                    // It may have stored: the checker excuses its value.
                    Err(e) => {
                        op.result = Some(v);
                        op.error = Some(e.to_string());
                    }
                }
            }
            80..85 => {
                op.kind = Kind::Delete;
                op.start = world.tick();
                op.versions.push((k, world.bump(k).await));
                let done = cache.delete(&name).await;
                op.end = world.tick();
                op.error = done.err().map(|e| e.to_string());
            }
            85..87 => {
                op.kind = Kind::DeleteMany;
                let k2 = (k + 1 + rng.below(KEYS - 1)) % KEYS;
                op.start = world.tick();
                op.versions.push((k, world.bump(k).await));
                op.versions.push((k2, world.bump(k2).await));
                let done = cache.delete_many(&[&name, &key_name(k2)]).await;
                op.end = world.tick();
                op.error = done.err().map(|e| e.to_string());
            }
            87..91 => {
                op.kind = Kind::Invalidate;
                op.key = g;
                op.start = world.tick();
                for k in g * PER_GROUP..(g + 1) * PER_GROUP {
                    op.versions.push((k, world.bump(k).await));
                }
                let done = cache.invalidate_prefix(&group_prefix(g)).await;
                op.end = world.tick();
                op.error = done.err().map(|e| e.to_string());
            }
            91 => {
                op.kind = Kind::Clear;
                op.start = world.tick();
                for k in 0..KEYS {
                    op.versions.push((k, world.bump(k).await));
                }
                let done = cache.clear().await;
                op.end = world.tick();
                op.error = done.err().map(|e| e.to_string());
            }
            _ => {
                op.kind = Kind::Update;
                op.start = world.tick();
                op.versions.push((k, world.bump(k).await));
                op.end = world.tick();
            }
        }
        ops.push(op);
        match pause {
            0 => tokio::task::yield_now().await,
            1 => {}
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    ops
}

/// How a violating value reached its reader: the fence it ignored, and
/// whether the computation that made it was still running, on the
/// reader's handle or another, when the read started, or had finished (the
/// value came from the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Cause {
    fence: &'static str,
    path: &'static str,
}

impl Cause {
    fn of(op: &Op, fence: &Op, producer: Option<&Op>) -> Cause {
        let fence = match fence.kind {
            Kind::Delete => "delete",
            Kind::DeleteMany => "delete_many",
            Kind::Clear => "clear",
            _ => "invalidate_prefix",
        };
        let path = match producer {
            None => "written by an unrecorded operation",
            Some(p) if p.kind == Kind::Set => "a set's value, from the store",
            Some(p) if p.kind == Kind::Add => "an add's value, from the store",
            // Only a computation on the reader's own handle can hand its
            // value over in process (single-flight).
            Some(p) if p.end > op.start && p.handle == op.handle => {
                "computed on the reader's handle, still running when the read started"
            }
            // A get_or_refresh that returned an older value: what it
            // computed was its background refresh's, written after it
            // returned.
            Some(p) if p.result.as_ref().is_some_and(|v| v.by != p.id) => {
                "a background refresh's write, from the store"
            }
            Some(_) => "a computation's write, from the store",
        };
        Cause { fence, path }
    }
}

/// What the checker found.
struct Verdict {
    reads: usize,
    returned: usize,
    fences: usize,
    violations: Vec<(Cause, String)>,
    /// Old values written by a `set` that returned an error: it may land
    /// at any time, like any write whose outcome the caller never learned.
    excused: usize,
}

/// With near tiers on the handles: their `near_check`, and when each tick
/// happened on the handles' clock. A fence made through another handle
/// binds a read only once `near_check` has passed since it returned; one
/// made through the reader's own handle binds it at once.
struct Near {
    check_ms: u64,
    times: HashMap<u64, [u64; 4]>,
    /// The bound runs on the real clock (`Store::pushes`).
    real: bool,
}

impl Near {
    /// Whether a fence through `fence.handle` that returned at tick
    /// `fence.end` binds `read` (which started after it).
    fn binds(&self, fence: &Op, read: &Op) -> bool {
        if fence.handle == read.handle {
            return true;
        }
        // The fence's end is taken no earlier, the read's start no later,
        // than they happened.
        let (returned, started) = if self.real {
            (self.times[&fence.end][3], self.times[&read.start][2])
        } else {
            (self.times[&fence.end][1], self.times[&read.start][0])
        };
        returned + self.check_ms <= started
    }
}

fn check(ops: &[Op], near: Option<&Near>) -> Verdict {
    let by_id: HashMap<u64, &Op> = ops.iter().map(|o| (o.id, o)).collect();
    // Per key: fences by end, with the highest version set so far.
    let mut fences: Vec<Vec<(u64, u64, u64)>> = vec![Vec::new(); KEYS];
    for op in ops.iter().filter(|o| o.is_fence()) {
        for &(k, v) in &op.versions {
            fences[k].push((op.end, v, op.id));
        }
    }
    let floors: Vec<Vec<(u64, u64)>> = fences
        .iter_mut()
        .map(|f| {
            f.sort_unstable();
            f.iter()
                .scan((0u64, 0u64), |top, &(_, v, id)| {
                    if v > top.0 {
                        *top = (v, id);
                    }
                    Some(*top)
                })
                .collect()
        })
        .collect();
    let mut verdict = Verdict {
        reads: 0,
        returned: 0,
        fences: fences.iter().map(Vec::len).sum(),
        violations: Vec::new(),
        excused: 0,
    };
    for op in ops.iter().filter(|o| o.is_read()) {
        verdict.reads += 1;
        let Some(val) = &op.result else { continue };
        verdict.returned += 1;
        let k = op.key;
        if val.key != key_name(k) {
            let cause = Cause {
                fence: "none",
                path: "another key's value",
            };
            let what = format!(
                "{} returned another key's value ({})",
                op.describe(),
                val.key
            );
            verdict.violations.push((cause, what));
            continue;
        }
        let before = fences[k].partition_point(|f| f.0 < op.start);
        if before == 0 {
            continue;
        }
        let (floor, fence_id) = match near {
            None => floors[k][before - 1],
            // The highest version set by a fence that binds this read.
            Some(near) => match fences[k][..before]
                .iter()
                .filter(|f| near.binds(by_id[&f.2], op))
                .max_by_key(|f| f.1)
            {
                Some(&(_, v, id)) => (v, id),
                None => continue,
            },
        };
        if val.version >= floor {
            continue;
        }
        let producer = by_id.get(&val.by).copied();
        if producer.is_some_and(|p| matches!(p.kind, Kind::Set | Kind::Add) && p.error.is_some()) {
            verdict.excused += 1;
            continue;
        }
        let fence = by_id[&fence_id];
        let cause = Cause::of(op, fence, producer);
        verdict
            .violations
            .push((cause, explain(ops, op, val, fence, floor, producer)));
    }
    verdict
}

/// One violation and the history of its key around it.
fn explain(
    ops: &[Op],
    op: &Op,
    val: &HVal,
    fence: &Op,
    floor: u64,
    producer: Option<&Op>,
) -> String {
    let k = op.key;
    let mut out = format!(
        "{}, but {} returned before it started, having set {} to v{floor}; the value came from {}",
        op.describe(),
        fence.describe(),
        key_name(k),
        producer.map_or("an unrecorded operation".to_owned(), Op::describe),
    );
    let from = producer
        .map_or(fence.start, |p| p.start.min(fence.start))
        .min(val.read_at);
    let mut window: Vec<&Op> = ops
        .iter()
        .filter(|o| o.touches(k) && o.end >= from && o.start <= op.end)
        .collect();
    window.sort_by_key(|o| o.start);
    out += &format!("\n  history of {} from seq {from}:", key_name(k));
    for o in window.iter().take(30) {
        out += &format!("\n    {}", o.describe());
    }
    if window.len() > 30 {
        out += &format!("\n    ... {} more", window.len() - 30);
    }
    out
}

/// Faults injected while a history runs: a blocking loop that stops when
/// told to, leaving the store up.
pub struct Faults {
    what: &'static str,
    inject: Box<dyn FnOnce(Arc<AtomicBool>) + Send>,
}

/// Sleeps `d` in slices; true when told to stop.
fn wait(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Acquire) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.load(Ordering::Acquire)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// One history on `s`, checked; panics with the violations.
async fn run(s: &Store, faults: Option<Faults>) {
    let default_secs = if faults.is_some() { 6 } else { 5 };
    let secs = env_u64("CONFORMANCE_SECONDS").unwrap_or(default_secs);
    let seed = env_u64("CONFORMANCE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let handles = Arc::new(vec![s.a.clone(), s.b.clone(), s.handle()]);
    debug_assert_eq!(handles.len(), HANDLES);
    let base: Vec<_> = handles.iter().map(Cache::stats).collect();
    let clock = s.manual_clock().cloned().unwrap_or_else(Clock::system);
    let world = Arc::new(World::new(clock));
    let stop = Arc::new(AtomicBool::new(false));
    // Time passes on manual clocks too (5x real time), so entries expire
    // and go stale while the history runs.
    let ticker = s.manual_clock().cloned().map(|clock| {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                clock.advance(Duration::from_millis(50));
            }
        })
    });
    let what = faults.as_ref().map_or("none", |f| f.what);
    let injector = faults.map(|f| {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || (f.inject)(stop))
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut mix = Rng(seed ^ (t as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            tokio::spawn(worker(mix.next(), handles.clone(), world.clone(), until))
        })
        .collect();
    let mut ops = Vec::new();
    let mut panicked = Vec::new();
    for w in workers {
        match w.await {
            Ok(done) => ops.extend(done),
            Err(e) => panicked.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Release);
    if let Some(t) = ticker {
        t.await.unwrap();
    }
    if let Some(i) = injector {
        i.await.expect("the fault injector failed");
    }
    let near = s.options().near_check.map(|check| Near {
        check_ms: check.as_millis() as u64,
        times: std::mem::take(&mut *world.times.lock().unwrap())
            .into_iter()
            .collect(),
        real: s.pushes(),
    });
    let verdict = check(&ops, near.as_ref());
    let stats: Vec<_> = handles.iter().map(Cache::stats).collect();
    let sum = |f: fn(&cacheruntime::Stats) -> u64| -> u64 {
        stats.iter().zip(&base).map(|(s, b)| f(s) - f(b)).sum()
    };
    let count = |kind: Kind| ops.iter().filter(|o| o.kind == kind).count();
    println!(
        "CONFORMANCE | history | {} | seed={seed} secs={secs} faults={what} | ops={} reads={} \
         returned={} gets={} sets={} adds={} deletes={} delete_manys={} invalidations={} \
         clears={} fences={} hits={} near_hits={} stale_hits={} \
         misses={} computations={} store_errors={} op_errors={} excused={} violations={}",
        s.name,
        ops.len(),
        verdict.reads,
        verdict.returned,
        count(Kind::Get),
        count(Kind::Set),
        count(Kind::Add),
        count(Kind::Delete),
        count(Kind::DeleteMany),
        count(Kind::Invalidate),
        count(Kind::Clear),
        verdict.fences,
        sum(|s| s.hits),
        sum(|s| s.near_hits),
        sum(|s| s.stale_hits),
        sum(|s| s.misses),
        sum(|s| s.computations),
        sum(|s| s.errors),
        ops.iter().filter(|o| o.error.is_some()).count(),
        verdict.excused,
        verdict.violations.len(),
    );
    assert!(
        panicked.is_empty(),
        "{}: history workers panicked: {panicked:?}",
        s.name
    );
    if !verdict.violations.is_empty() {
        // One example per cause, the first of each.
        let mut causes: Vec<(Cause, usize, &str)> = Vec::new();
        for (cause, text) in &verdict.violations {
            match causes.iter_mut().find(|(c, _, _)| c == cause) {
                Some((_, n, _)) => *n += 1,
                None => causes.push((*cause, 1, text)),
            }
        }
        causes.sort_by_key(|(c, _, _)| *c);
        let summary: Vec<String> = causes
            .iter()
            .map(|(c, n, _)| format!("{n} after {}: {}", c.fence, c.path))
            .collect();
        let examples: Vec<String> = causes
            .iter()
            .map(|(c, _, text)| format!("[{} / {}] {text}", c.fence, c.path))
            .collect();
        println!(
            "CONFORMANCE | history | {} | violations by cause: {}",
            s.name,
            summary.join("; ")
        );
        panic!(
            "{}::history: {} violation(s) in {} operations: {} (seed {seed}, faults {what}; \
             replay with CONFORMANCE_SEED={seed}); the first of each cause:\n{}",
            s.name,
            verdict.violations.len(),
            ops.len(),
            summary.join("; "),
            examples.join("\n")
        );
    }
}

/// The history on a healthy store.
pub async fn history(s: &Store) {
    run(s, None).await;
}

/// Redis killed and restarted (empty: entries and generation counters
/// gone) and frozen with SIGSTOP, in turns.
pub async fn redis_under_faults() {
    redis_faults("redis", Options::FAULTS).await;
}

/// [`redis_under_faults`] with a near tier on every handle.
pub async fn redis_near_under_faults() {
    let options = Options {
        near_check: Some(stores::NEAR_CHECK),
        ..Options::FAULTS
    };
    redis_faults("redis_near", options).await;
}

async fn redis_faults(name: &'static str, options: Options) {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = stores::redis_at(name, server.url(), vec![server.port], false, options).await;
    let faults = Faults {
        what: "redis kill+restart (300 ms down), SIGSTOP (400 ms)",
        inject: Box::new(move |stop| {
            let mut server = server;
            loop {
                if wait(&stop, Duration::from_millis(700)) {
                    break;
                }
                server.kill();
                wait(&stop, Duration::from_millis(300));
                server.restart();
                if wait(&stop, Duration::from_millis(700)) {
                    break;
                }
                server.pause();
                wait(&stop, Duration::from_millis(400));
                server.resume();
            }
            // Down with the history's end; nothing calls it any more.
            drop(server);
        }),
    };
    run(&store, Some(faults)).await;
}

/// Memcached killed and restarted (empty).
pub async fn memcached_under_faults() {
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let store = stores::memcached_at("memcached", server.port, Options::FAULTS).await;
    let faults = Faults {
        what: "memcached kill+restart (300 ms down)",
        inject: Box::new(move |stop| {
            let mut server = server;
            loop {
                if wait(&stop, Duration::from_millis(900)) {
                    break;
                }
                server.kill();
                wait(&stop, Duration::from_millis(300));
                server.restart();
            }
            drop(server);
        }),
    };
    run(&store, Some(faults)).await;
}

/// PostgreSQL behind a proxy that stalls (500 ms), and stopped
/// (`-m immediate`) and started again, in turns.
pub async fn postgres_under_faults() {
    postgres_faults("postgres", Options::FAULTS).await;
}

/// [`postgres_under_faults`] with a near tier on every handle: its
/// `LISTEN` connection goes through the stalling proxy too, and is cut
/// when the server stops.
pub async fn postgres_near_under_faults() {
    let options = Options {
        near_check: Some(stores::NEAR_CHECK),
        ..Options::FAULTS
    };
    postgres_faults("postgres_near", options).await;
}

async fn postgres_faults(name: &'static str, options: Options) {
    let (pg, proxy) = tokio::task::spawn_blocking(|| {
        let pg = Postgres::start();
        let proxy = StallProxy::start(pg.port);
        (pg, proxy)
    })
    .await
    .unwrap();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        pg.password, proxy.port
    );
    let store = stores::sql_at(name, url, options, Vec::new()).await;
    let faults = Faults {
        what: "postgres proxy stall (500 ms), stop+start (300 ms down)",
        inject: Box::new(move |stop| {
            let mut pg = pg;
            loop {
                if wait(&stop, Duration::from_millis(700)) {
                    break;
                }
                proxy.stall();
                wait(&stop, Duration::from_millis(500));
                proxy.resume();
                if wait(&stop, Duration::from_millis(700)) {
                    break;
                }
                pg.stop();
                wait(&stop, Duration::from_millis(300));
                pg.start_again();
            }
            drop((pg, proxy));
        }),
    };
    run(&store, Some(faults)).await;
}
