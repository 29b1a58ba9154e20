//! The near tier over a store shared by two handles (two "processes"),
//! with a manual clock and reads and writes that can be held in flight, so
//! that each race the near tier must win is played out in one order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::backends::MemoryBackend;
use crate::{Cache, Clock, Error, Policy};

const TTL: Duration = Duration::from_secs(600);
const CHECK: Duration = Duration::from_millis(100);

/// A gate a call can be held at, after the store has answered it.
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    reached: Notify,
    release: Notify,
}

impl Gate {
    async fn pass(&self) {
        if self.armed.swap(false, Ordering::AcqRel) {
            self.reached.notify_one();
            self.release.notified().await;
        }
    }
}

/// A memory store seen as a shared one, counting reads, with a gate on
/// reads and one on writes (each held after the store has done the call).
#[derive(Default)]
struct Inner {
    gets: AtomicU64,
    hold_get: Gate,
    hold_set: Gate,
}

#[derive(Clone)]
struct Shared(Arc<MemoryBackend>, Arc<Inner>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Backend for Shared {
    fn name(&self) -> &'static str {
        "shared"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async move {
            self.1.gets.fetch_add(1, Ordering::Relaxed);
            let found = Backend::get(&*self.0, key).await;
            self.1.hold_get.pass().await;
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
        Box::pin(async move {
            let done = Backend::set(&*self.0, key, value, ttl, ticket).await;
            self.1.hold_set.pass().await;
            done
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Backend::delete(&*self.0, key)
    }
    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Backend::compare_and_set(&*self.0, key, expected, value, ttl, ticket)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Backend::invalidate_prefix(&*self.0, prefix)
    }
}

struct Fixture {
    clock: Clock,
    /// With a near tier.
    a: Cache,
    a_store: Arc<Inner>,
    /// Another process, without one.
    b: Cache,
}

fn fixture() -> Fixture {
    let clock = Clock::manual();
    let memory = Arc::new(MemoryBackend::with_clock(4 << 20, clock.clone()));
    let a_store = Arc::new(Inner::default());
    let handle = |inner: Arc<Inner>, near: bool| {
        let mut builder = Cache::builder()
            .backend(Shared(memory.clone(), inner))
            .namespace("app")
            .clock(clock.clone());
        if near {
            builder = builder.near(1 << 20).near_check(CHECK);
        }
        builder.build().unwrap()
    };
    Fixture {
        a: handle(a_store.clone(), true),
        b: handle(Arc::default(), false),
        clock: clock.clone(),
        a_store,
    }
}

impl Fixture {
    fn gets(&self) -> u64 {
        self.a_store.gets.load(Ordering::Relaxed)
    }

    async fn a_get(&self, key: &str) -> Option<u32> {
        self.a.get::<u32>(key).await.unwrap()
    }
}

#[tokio::test]
async fn a_read_is_answered_near_the_next_time_without_the_store() {
    let f = fixture();
    f.b.set("k:1", &7u32, TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(7));
    let gets = f.gets();
    for _ in 0..3 {
        assert_eq!(f.a_get("k:1").await, Some(7));
    }
    assert_eq!(f.gets(), gets, "near hits never reach the store");
    let stats = f.a.stats();
    assert_eq!((stats.hits, stats.near_hits), (4, 3));
    // `get_or_compute` is answered near too.
    let p = Policy::new().ttl(TTL);
    let v: u32 = f.a.get_or_compute("k:2", &p, || async { 8 }).await;
    let gets = f.gets();
    let again: u32 = f.a.get_or_compute("k:2", &p, || async { 0 }).await;
    assert_eq!((v, again, f.gets()), (8, 8, gets));
}

#[tokio::test]
async fn this_process_sees_its_own_writes_deletes_and_invalidations_at_once() {
    let f = fixture();
    f.a.set("k:1", &1u32, TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(1));
    let gets = f.gets();
    f.a.set("k:1", &2u32, TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(2));
    assert_eq!(f.gets(), gets, "a write is kept near");
    f.a.delete("k:1").await.unwrap();
    assert_eq!(f.a_get("k:1").await, None);
    f.a.set("k:1", &3u32, TTL).await.unwrap();
    f.a.invalidate_prefix("k:").await.unwrap();
    assert_eq!(f.a_get("k:1").await, None);
    f.a.set("k:1", &4u32, TTL).await.unwrap();
    f.a.delete_many(&["k:1"]).await.unwrap();
    assert_eq!(f.a_get("k:1").await, None);
    f.a.set("k:1", &5u32, TTL).await.unwrap();
    f.a.clear().await.unwrap();
    assert_eq!(f.a_get("k:1").await, None);
    f.a.set_many(&[("k:1", 6u32)], TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(6));
}

#[tokio::test]
async fn another_process_change_is_seen_within_near_check() {
    let f = fixture();
    f.b.set("k:1", &1u32, TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(1));
    f.b.set("k:1", &2u32, TTL).await.unwrap();
    f.b.invalidate_prefix("j:").await.unwrap();
    // Within the bound the near copy may still answer...
    f.clock.advance(CHECK - Duration::from_millis(1));
    assert_eq!(f.a_get("k:1").await, Some(1));
    // ...and past it, never.
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(f.a_get("k:1").await, Some(2));
    f.b.invalidate_prefix("k:").await.unwrap();
    f.clock.advance(CHECK);
    assert_eq!(f.a_get("k:1").await, None);
}

/// Holds A's next read of `key` after the store answered it, runs `change`
/// on A meanwhile, then lets the read finish: what A answers next.
async fn read_held_across(f: &Fixture, key: &str, change: impl std::future::Future<Output = ()>) {
    f.a_store.hold_get.armed.store(true, Ordering::Release);
    let reached = f.a_store.hold_get.reached.notified();
    let a = f.a.clone();
    let key_owned = key.to_owned();
    let read = tokio::spawn(async move { a.get::<u32>(&key_owned).await.unwrap() });
    reached.await;
    change.await;
    f.a_store.hold_get.release.notify_one();
    read.await.unwrap();
}

#[tokio::test]
async fn a_read_that_began_before_a_write_never_keeps_the_old_value() {
    let f = fixture();
    f.b.set("k:1", &1u32, TTL).await.unwrap();
    read_held_across(&f, "k:1", async {
        f.a.set("k:1", &2u32, TTL).await.unwrap();
    })
    .await;
    assert_eq!(f.a_get("k:1").await, Some(2));
}

#[tokio::test]
async fn a_read_that_began_before_an_invalidation_or_delete_is_not_kept() {
    let f = fixture();
    f.b.set("k:1", &1u32, TTL).await.unwrap();
    read_held_across(&f, "k:1", async {
        f.a.invalidate_prefix("k:").await.unwrap();
    })
    .await;
    assert_eq!(f.a_get("k:1").await, None);
    f.b.set("k:2", &1u32, TTL).await.unwrap();
    read_held_across(&f, "k:2", async {
        f.a.delete("k:2").await.unwrap();
    })
    .await;
    assert_eq!(f.a_get("k:2").await, None);
}

#[tokio::test]
async fn overlapping_writes_of_a_key_leave_the_store_to_answer() {
    let f = fixture();
    // The first write reaches the store and is held; the second one
    // reaches it after and returns first: the store holds 2.
    f.a_store.hold_set.armed.store(true, Ordering::Release);
    let reached = f.a_store.hold_set.reached.notified();
    let a = f.a.clone();
    let first = tokio::spawn(async move { a.set("k:1", &1u32, TTL).await.unwrap() });
    reached.await;
    f.a.set("k:1", &2u32, TTL).await.unwrap();
    f.a_store.hold_set.release.notify_one();
    first.await.unwrap();
    assert_eq!(
        f.a_get("k:1").await,
        Some(2),
        "the store's value, not the last to return"
    );
}

#[tokio::test]
async fn a_cancelled_write_leaves_nothing_near() {
    let f = fixture();
    f.a.set("k:1", &1u32, TTL).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(1));
    f.a_store.hold_set.armed.store(true, Ordering::Release);
    let reached = f.a_store.hold_set.reached.notified();
    let a = f.a.clone();
    let write = tokio::spawn(async move { a.set("k:1", &2u32, TTL).await.unwrap() });
    reached.await;
    write.abort();
    let _ = write.await;
    f.a_store.hold_set.release.notify_one();
    assert_eq!(f.a_get("k:1").await, Some(2), "the store took the write");
}

#[tokio::test]
async fn a_computation_that_read_before_another_process_invalidated_is_not_kept_past_the_bound() {
    let f = fixture();
    let p = Policy::new().ttl(TTL);
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let a = f.a.clone();
    let call = tokio::spawn(async move {
        a.get_or_compute("k:1", &p, move || async move {
            let _ = entered_tx.send(());
            let _ = go_rx.await;
            1u32
        })
        .await
    });
    entered_rx.await.unwrap();
    // The value is computed from data another process changes now.
    f.b.invalidate_prefix("k:").await.unwrap();
    f.clock.advance(CHECK);
    go_tx.send(()).unwrap();
    assert_eq!(call.await.unwrap(), 1);
    assert_eq!(
        f.a_get("k:1").await,
        None,
        "vouched for by a read before the invalidation, past the bound"
    );
}

#[tokio::test]
async fn tagged_entries_and_oversized_values_are_not_kept_near() {
    let f = fixture();
    f.a.set_tagged("k:1", &1u32, TTL, &["t"]).await.unwrap();
    assert_eq!(f.a_get("k:1").await, Some(1));
    let gets = f.gets();
    assert_eq!(f.a_get("k:1").await, Some(1));
    assert!(f.gets() > gets, "a tagged entry is read from the store");
    f.b.invalidate_tag("t").await.unwrap();
    assert_eq!(f.a_get("k:1").await, None);
    assert_eq!(f.a.stats().near_hits, 0);
}

#[tokio::test]
async fn the_near_tier_holds_no_more_than_its_bytes() {
    let f = fixture();
    let payload = vec![7u8; 2000];
    for i in 0..2000 {
        f.a.set(&format!("k:{i}"), &payload, TTL).await.unwrap();
    }
    let near = f.a.engine.near.as_ref().unwrap();
    let used = near.memory().used_bytes();
    assert!(used <= 1 << 20, "{used} bytes held for a 1 MiB near tier");
    assert!(used > 1 << 19, "{used}: the near tier is used");
}

#[tokio::test]
async fn a_near_tier_needs_a_shared_store_and_sane_settings() {
    let err = |b: crate::CacheBuilder| b.build().unwrap_err().to_string();
    assert!(err(Cache::builder().near(1 << 20)).contains("shared store"));
    assert!(err(Cache::builder().disabled().near(1 << 20)).contains("shared store"));
    let shared = || Shared(Arc::new(MemoryBackend::new(1 << 20)), Arc::default());
    assert!(err(Cache::builder().backend(shared()).near(0)).contains("greater than zero"));
    assert!(err(Cache::builder().backend(shared()).near_check(CHECK)).contains("without a near"));
    assert!(err(Cache::builder()
        .backend(shared())
        .near(1 << 20)
        .near_check(Duration::ZERO))
    .contains("greater than zero"));
}

#[tokio::test]
async fn near_settings_come_from_the_url() {
    let err = Cache::from_url("memory://?near=32MiB").await.unwrap_err();
    assert!(err.to_string().contains("shared store"), "{err}");
    let err = Cache::from_url("memory://?near=lots").await.unwrap_err();
    assert!(
        err.to_string().contains("`near` is not a byte size"),
        "{err}"
    );
    let err = Cache::from_url("memory://?near_check=soon")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`near_check` is not a duration"),
        "{err}"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_url_puts_a_near_tier_in_front_of_a_shared_store() {
    let dir = std::env::temp_dir().join(format!("near-url-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!(
        "sqlite://{}?near=32MiB&near_check=250ms",
        dir.join("c.db").display()
    );
    let cache = Cache::from_url(&url).await.unwrap();
    let near = cache.engine.near.as_ref().expect("a near tier");
    assert_eq!(near.memory().max_bytes(), 32 << 20);
    assert_eq!(near.check_ms, 250);
    let _ = std::fs::remove_dir_all(&dir);
}
