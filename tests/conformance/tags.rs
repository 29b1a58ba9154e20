//! Tags against every store: `#[cached(tags = [..])]` and `set_tagged`
//! entries dropped by `invalidate_tag` of any of their tags, from either
//! handle; the direct reads that do not know an entry's tags (`get`,
//! `contains`, `ttl`, `touch`, `add`, `get_many`) seeing it gone; and a
//! computation in flight across an `invalidate_tag` never served after it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheruntime::{cached, Cache};
use tokio::sync::{oneshot, Notify};

use crate::scenarios::{Findings, MINUTE};
use crate::stores::Store;

/// The origin of a book's card: each computation returns a new value
/// (`book<id>@<n>`); the next one can be held until released.
#[derive(Default)]
pub struct Origin {
    calls: AtomicU32,
    hold: Mutex<Option<oneshot::Receiver<()>>>,
    started: Notify,
}

impl Origin {
    async fn card(&self, book: u32) -> String {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let held = self.hold.lock().unwrap().take();
        if let Some(release) = held {
            self.started.notify_one();
            let _ = release.await;
        }
        format!("book{book}@{n}")
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Holds the next computation until the sender fires.
    fn hold_next(&self) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel();
        *self.hold.lock().unwrap() = Some(held);
        release
    }
}

/// A book's card, tagged with its author and the whole catalog. `author`
/// follows from `book`, so it is not in the key.
#[cached(
    key = "tagcard:{book}",
    tags = ["author:{author}", "catalog"],
    ttl = 600,
    cache = cache,
    skip = [author, origin]
)]
async fn card(cache: &Cache, book: u32, author: u32, origin: &Origin) -> String {
    origin.card(book).await
}

pub async fn invalidate_tag_drops_every_entry_with_the_tag(s: &Store) {
    let mut f = Findings::new(s, "invalidate_tag_drops_every_entry_with_the_tag");
    let origin = Origin::default();
    let first1 = card(&s.a, 1, 42, &origin).await;
    let first2 = card(&s.a, 2, 43, &origin).await;
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let (c1, c2) = (card(h, 1, 42, &origin).await, card(h, 2, 43, &origin).await);
        f.expect(c1 == first1 && c2 == first2, || {
            format!("{name}: before any invalidation got {c1:?}, {c2:?}; expected {first1:?}, {first2:?}")
        });
    }
    f.expect(origin.calls() == 2, || {
        format!(
            "{} computations before invalidating, expected 2",
            origin.calls()
        )
    });
    if let Err(e) = s.b.invalidate_tag("author:42").await {
        f.fail(format!("B.invalidate_tag failed: {e}"));
    }
    let again1 = card(&s.a, 1, 42, &origin).await;
    f.expect(again1 != first1, || {
        format!("A served {again1:?} for book 1 after B invalidated its author's tag")
    });
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let c2 = card(h, 2, 43, &origin).await;
        f.expect(c2 == first2, || {
            format!("{name}: book 2 (another author) got {c2:?} after author:42's invalidation, expected {first2:?}")
        });
        let c1 = card(h, 1, 42, &origin).await;
        f.expect(c1 == again1, || {
            format!("{name}: book 1 got {c1:?}, expected the recomputed {again1:?}")
        });
    }
    // The tag every card has.
    if let Err(e) = s.a.invalidate_tag("catalog").await {
        f.fail(format!("A.invalidate_tag failed: {e}"));
    }
    for (name, h, book, author, old) in [("B", &s.b, 1, 42, &again1), ("A", &s.a, 2, 43, &first2)] {
        let c = card(h, book, author, &origin).await;
        f.expect(&c != old, || {
            format!("{name}: book {book} served {c:?} after the catalog tag was invalidated")
        });
    }
    // Other fences still apply to tagged entries.
    let before = card(&s.a, 2, 43, &origin).await;
    if let Err(e) = s.b.invalidate_prefix("tagcard:").await {
        f.fail(format!("B.invalidate_prefix failed: {e}"));
    }
    let after = card(&s.a, 2, 43, &origin).await;
    f.expect(after != before, || {
        format!("A served {after:?} after invalidate_prefix(\"tagcard:\")")
    });
    f.finish();
}

pub async fn direct_reads_see_tag_invalidations(s: &Store) {
    let mut f = Findings::new(s, "direct_reads_see_tag_invalidations");
    let ttl = MINUTE * 10;
    for (key, tags) in [
        ("tagged:1", &["author:1", "catalog"][..]),
        ("tagged:2", &["author:2", "catalog"][..]),
    ] {
        if let Err(e) = s.a.set_tagged(key, key, ttl, tags).await {
            f.fail(format!("A.set_tagged({key}) failed: {e}"));
        }
    }
    let got = s.b.get::<String>("tagged:1").await;
    f.expect(matches!(&got, Ok(Some(v)) if v == "tagged:1"), || {
        format!("B.get of a tagged entry: {got:?}")
    });
    if let Err(e) = s.b.invalidate_tag("author:1").await {
        f.fail(format!("B.invalidate_tag failed: {e}"));
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let got = h.get::<String>("tagged:1").await;
        f.expect(matches!(got, Ok(None)), || {
            format!("{name}.get after invalidate_tag: {got:?}")
        });
        let has = h.contains("tagged:1").await;
        f.expect(matches!(has, Ok(false)), || {
            format!("{name}.contains after invalidate_tag: {has:?}")
        });
        let left = h.ttl("tagged:1").await;
        f.expect(matches!(left, Ok(None)), || {
            format!("{name}.ttl after invalidate_tag: {left:?}")
        });
        let touched = h.touch("tagged:1", ttl).await;
        f.expect(matches!(touched, Ok(false)), || {
            format!(
                "{name}.touch after invalidate_tag: {touched:?} (it would bring the entry back)"
            )
        });
        let many = h.get_many::<String>(&["tagged:1", "tagged:2"]).await;
        f.expect(
            matches!(&many, Ok(v) if v[0].is_none() && v[1].as_deref() == Some("tagged:2")),
            || format!("{name}.get_many after invalidate_tag: {many:?}"),
        );
    }
    // An untouched tagged entry keeps its tags through `touch`.
    let touched = s.a.touch("tagged:2", ttl).await;
    f.expect(matches!(touched, Ok(true)), || {
        format!("A.touch of a live tagged entry: {touched:?}")
    });
    if let Err(e) = s.a.invalidate_tag("catalog").await {
        f.fail(format!("A.invalidate_tag(catalog) failed: {e}"));
    }
    let got = s.b.get::<String>("tagged:2").await;
    f.expect(matches!(got, Ok(None)), || {
        format!("B.get of a touched entry after its tag's invalidation: {got:?}")
    });
    // `add` stores over an entry its tag invalidated.
    let added = s.b.add("tagged:1", "fresh", ttl).await;
    f.expect(matches!(added, Ok(true)), || {
        format!("B.add over a tag-invalidated entry: {added:?}")
    });
    let got = s.a.get::<String>("tagged:1").await;
    f.expect(matches!(&got, Ok(Some(v)) if v == "fresh"), || {
        format!("A.get after B.add: {got:?}")
    });
    // Bad tags are refused before anything is written.
    let bad = s.a.set_tagged("tagged:3", "x", ttl, &["a#b"]).await;
    f.expect(
        matches!(bad, Err(cacheruntime::Error::InvalidTag { .. })),
        || format!("set_tagged with '#' in a tag: {bad:?}"),
    );
    f.finish();
}

pub async fn invalidate_tag_fences_a_computation_in_flight(s: &Store) {
    let mut f = Findings::new(s, "invalidate_tag_fences_a_computation_in_flight");
    let origin = Arc::new(Origin::default());
    let release = origin.hold_next();
    let early = {
        let (a, origin) = (s.a.clone(), Arc::clone(&origin));
        tokio::spawn(async move { card(&a, 5, 7, &origin).await })
    };
    let started = tokio::time::timeout(Duration::from_secs(15), origin.started.notified()).await;
    f.expect(started.is_ok(), || {
        "the first computation never started".into()
    });
    if let Err(e) = s.b.invalidate_tag("author:7").await {
        f.fail(format!("B.invalidate_tag failed: {e}"));
    }
    // Started after the invalidation returned: never the old computation's
    // value, though that computation is still running in this process.
    let late = {
        let (a, origin) = (s.a.clone(), Arc::clone(&origin));
        tokio::spawn(async move { card(&a, 5, 7, &origin).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = release.send(());
    let early = early.await.expect("the first call");
    let late = late.await.expect("the second call");
    f.expect(early == "book5@0", || {
        format!("the call that started first got {early:?}")
    });
    f.expect(late != early, || {
        format!("a call started after invalidate_tag returned got the value computed before it: {late:?}")
    });
    // Nor is the old value stored: every later read computes or finds a
    // newer one.
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let got = card(h, 5, 7, &origin).await;
        f.expect(got != early, || {
            format!("{name} served {got:?}, computed before the invalidation, after it returned")
        });
    }
    f.finish();
}

/// An origin that can fail, and hold its next computation.
#[derive(Default)]
pub struct Flaky {
    down: std::sync::atomic::AtomicBool,
    origin: Origin,
}

/// A tagged function that serves its expired value when the origin fails.
#[cached(
    key = "sietag:{id}",
    tags = ["sie:{id}"],
    ttl = 1,
    stale_if_error = "1h",
    cache = cache,
    skip = [flaky]
)]
async fn flaky_card(cache: &Cache, id: u32, flaky: &Flaky) -> Result<String, String> {
    let card = flaky.origin.card(id).await;
    if flaky.down.load(Ordering::SeqCst) {
        Err("upstream down".into())
    } else {
        Ok(card)
    }
}

pub async fn stale_if_error_never_serves_a_value_whose_tag_was_invalidated(s: &Store) {
    let mut f = Findings::new(
        s,
        "stale_if_error_never_serves_a_value_whose_tag_was_invalidated",
    );
    let flaky = Arc::new(Flaky::default());
    let first = flaky_card(&s.a, 1, &flaky).await;
    f.expect(first == Ok("book1@0".into()), || {
        format!("first call: {first:?}")
    });
    s.elapse(Duration::from_millis(1300)).await;
    flaky.down.store(true, Ordering::SeqCst);
    // Expired and the origin down: the kept value stands in.
    let kept = flaky_card(&s.b, 1, &flaky).await;
    f.expect(kept == first, || {
        format!("B with the origin down after expiry got {kept:?}, expected the kept {first:?}")
    });
    // The tag is invalidated while a computation that began before it
    // runs: when that computation fails, the kept value is not served.
    let release = flaky.origin.hold_next();
    let call = {
        let (a, flaky) = (s.a.clone(), Arc::clone(&flaky));
        tokio::spawn(async move { flaky_card(&a, 1, &flaky).await })
    };
    let started =
        tokio::time::timeout(Duration::from_secs(15), flaky.origin.started.notified()).await;
    f.expect(started.is_ok(), || "the computation never started".into());
    if let Err(e) = s.b.invalidate_tag("sie:1").await {
        f.fail(format!("B.invalidate_tag failed: {e}"));
    }
    let _ = release.send(());
    let got = call.await.expect("the call");
    f.expect(got == Err("upstream down".into()), || {
        format!(
            "a failed computation after its tag was invalidated got {got:?}, expected the error"
        )
    });
    let later = flaky_card(&s.b, 1, &flaky).await;
    f.expect(later == Err("upstream down".into()), || {
        format!("B after the invalidation, origin down: {later:?}")
    });
    f.finish();
}
