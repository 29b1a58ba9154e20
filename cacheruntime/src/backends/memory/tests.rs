//! The memory store's own tests: bounds, shards, invalidation records,
//! the floor, deletes and locks.

use super::*;

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn get(m: &MemoryBackend, key: &str) -> Option<Bytes> {
    m.lookup(key).value
}

#[test]
fn entries_expire_by_the_injected_clock() {
    let clock = Clock::manual();
    let m = MemoryBackend::with_clock(1 << 20, clock.clone());
    m.store("k", bytes("v"), Duration::from_secs(10), None)
        .unwrap();
    clock.advance(Duration::from_secs(9));
    assert_eq!(get(&m, "k").as_deref(), Some(&b"v"[..]));
    clock.advance(Duration::from_secs(1));
    assert_eq!(get(&m, "k"), None);
}

#[test]
fn prefix_invalidation_reaches_exactly_whole_segments() {
    let m = MemoryBackend::new(1 << 20);
    for k in [
        "author:42:top",
        "author:42:bio",
        "author:420:top",
        "author:4",
        "book:1",
    ] {
        m.store(k, bytes(k), Duration::from_secs(60), None).unwrap();
    }
    m.invalidate("author:42:");
    assert_eq!(get(&m, "author:42:top"), None);
    assert_eq!(get(&m, "author:42:bio"), None);
    assert!(get(&m, "author:420:top").is_some());
    assert!(get(&m, "author:4").is_some());
    assert!(get(&m, "book:1").is_some());
    // Written after the invalidation: visible.
    m.store("author:42:top", bytes("new"), Duration::from_secs(60), None)
        .unwrap();
    assert_eq!(get(&m, "author:42:top").as_deref(), Some(&b"new"[..]));
}

#[test]
fn write_computed_before_an_invalidation_never_shows() {
    let m = MemoryBackend::new(1 << 20);
    let ticket = m.lookup("user:7:feed").ticket;
    m.invalidate("user:7:");
    m.store(
        "user:7:feed",
        bytes("old"),
        Duration::from_secs(60),
        ticket.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "user:7:feed"), None);
}

#[test]
fn byte_bound_holds_under_a_stream_of_distinct_keys() {
    let m = MemoryBackend::new(256 << 10);
    let value = Bytes::from(vec![7u8; 1000]);
    for i in 0..10_000 {
        m.store(
            &format!("k:{i}"),
            value.clone(),
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        assert!(m.used_bytes() <= m.max_bytes(), "over the bound at {i}");
    }
    assert!(m.len() < 300, "{} entries kept in 256 KiB", m.len());
}

#[test]
fn invalidation_records_are_swept_after_the_longest_ttl() {
    let clock = Clock::manual();
    let m = MemoryBackend::with_clock(1 << 20, clock.clone());
    m.store("a:1", bytes("v"), Duration::from_secs(5), None)
        .unwrap();
    for i in 0..2000 {
        m.invalidate(&format!("user:{i}:"));
    }
    clock.advance(Duration::from_secs(6));
    for i in 0..2000 {
        m.invalidate(&format!("team:{i}:"));
    }
    assert!(
        m.invalidation_records() <= 2100,
        "{}",
        m.invalidation_records()
    );
}

#[tokio::test]
async fn set_if_absent_admits_one_holder() {
    let m = MemoryBackend::new(1 << 20);
    let ttl = Duration::from_secs(5);
    assert!(m.set_if_absent("lock:k", bytes("a"), ttl).await.unwrap());
    assert!(!m.set_if_absent("lock:k", bytes("b"), ttl).await.unwrap());
    assert!(!m.delete_if_equals("lock:k", b"b").await.unwrap());
    assert!(m.delete_if_equals("lock:k", b"a").await.unwrap());
    assert!(m.set_if_absent("lock:k", bytes("b"), ttl).await.unwrap());
}

#[test]
fn write_computed_before_a_delete_never_shows() {
    let m = MemoryBackend::new(1 << 20);
    m.store("feed:1", bytes("v1"), Duration::from_secs(60), None)
        .unwrap();
    let ticket = m.lookup("feed:2").ticket;
    m.delete_key("feed:2");
    m.store(
        "feed:2",
        bytes("old"),
        Duration::from_secs(60),
        ticket.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "feed:2"), None);
    assert!(!m.is_current("feed:2", ticket.as_ref().unwrap()));
    // Only that key: its neighbours and later writes are untouched.
    assert!(get(&m, "feed:1").is_some());
    let fresh = m.lookup("feed:2").ticket;
    m.store(
        "feed:2",
        bytes("new"),
        Duration::from_secs(60),
        fresh.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "feed:2").as_deref(), Some(&b"new"[..]));
}

#[test]
fn a_sweep_never_lets_an_older_computation_store_its_value() {
    let clock = Clock::manual();
    let m = MemoryBackend::with_clock(1 << 20, clock.clone());
    m.store("a:1", bytes("v"), Duration::from_secs(5), None)
        .unwrap();
    // A computation reads user:7:feed, then the prefix is invalidated.
    let ticket = m.lookup("user:7:feed").ticket;
    m.invalidate("user:7:");
    // Past the longest TTL, 1,024+ other invalidations sweep its record.
    clock.advance(Duration::from_secs(6));
    for i in 0..2000 {
        m.invalidate(&format!("team:{i}:"));
    }
    assert!(m.invalidations.get("user:7:").is_none(), "record swept");
    // The old computation finishes: its value must not be stored.
    m.store(
        "user:7:feed",
        bytes("old"),
        Duration::from_secs(60),
        ticket.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "user:7:feed"), None);
    // A computation that read after the sweep stores as usual.
    let fresh = m.lookup("user:7:feed").ticket;
    m.store(
        "user:7:feed",
        bytes("new"),
        Duration::from_secs(60),
        fresh.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "user:7:feed").as_deref(), Some(&b"new"[..]));
}

#[test]
fn every_value_up_to_max_value_bytes_is_stored() {
    // 4 MiB, built for the default 1 MiB values: shards are sized so a
    // 300 KB (or 1 MiB) value fits one.
    let m = MemoryBackend::new(4 << 20);
    assert!(m.max_value_bytes() >= 1 << 20, "{}", m.max_value_bytes());
    for size in [300_000, 1 << 20] {
        let key = format!("big:{size}");
        m.store(
            &key,
            Bytes::from(vec![1u8; size]),
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        assert_eq!(get(&m, &key).map(|b| b.len()), Some(size));
    }
    // A small store says what it can hold (under the longest key), and
    // refuses more loudly.
    let small = MemoryBackend::new(256 << 10);
    let limit = small.max_value_bytes();
    assert!(limit > 100 << 10 && limit < 128 << 10, "{limit}");
    let longest = "k".repeat(MAX_STORED_KEY);
    small
        .store(
            &longest,
            Bytes::from(vec![0u8; limit]),
            Duration::from_secs(60),
            None,
        )
        .unwrap();
    assert!(get(&small, &longest).is_some());
    let over = small.store(
        "y",
        Bytes::from(vec![0u8; limit + MAX_STORED_KEY]),
        Duration::from_secs(60),
        None,
    );
    assert!(matches!(over, Err(Error::TooLarge { .. })), "{over:?}");
}

#[test]
fn deletes_cost_reads_nothing_and_are_forgotten_after_a_minute() {
    let clock = Clock::manual();
    let m = MemoryBackend::with_clock(1 << 20, clock.clone());
    m.store("kept:1", bytes("v"), Duration::from_secs(600), None)
        .unwrap();
    let old = m.lookup("gone:1").ticket;
    for i in 0..2000 {
        m.delete_key(&format!("gone:{i}"));
    }
    // Reads of other entries stay on the fast path.
    assert_eq!(m.newest_invalidation.load(Ordering::Relaxed), 0);
    assert_eq!(get(&m, "kept:1").as_deref(), Some(&b"v"[..]));
    // A minute on, the records go, and the write floor keeps refusing
    // writes from before them.
    clock.advance(Duration::from_secs(61));
    for i in 0..1100 {
        m.delete_key(&format!("later:{i}"));
    }
    assert!(m.deleted.len() <= 1100, "{}", m.deleted.len());
    m.store(
        "gone:1",
        bytes("old"),
        Duration::from_secs(60),
        old.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "gone:1"), None);
    assert!(!m.is_current("gone:1", old.as_ref().unwrap()));
    let fresh = m.lookup("gone:1").ticket;
    m.store(
        "gone:1",
        bytes("new"),
        Duration::from_secs(60),
        fresh.as_ref(),
    )
    .unwrap();
    assert_eq!(get(&m, "gone:1").as_deref(), Some(&b"new"[..]));
}

#[tokio::test]
async fn partial_prefixes_are_refused_by_the_store_itself() {
    let m = MemoryBackend::new(1 << 20);
    for bad in ["abc", "a:b"] {
        assert!(matches!(
            m.invalidate_prefix(bad).await,
            Err(Error::InvalidPrefix { .. })
        ));
    }
    assert!(m.invalidate_prefix("a:").await.is_ok());
}
