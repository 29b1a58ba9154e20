//! Per-call policies against every store: `stale_if_error` (an expired
//! value stands in for a failed computation, inside its window, on every
//! handle, and never once it is invalidated or deleted); and compression
//! (`compress_above`), whose entries every handle of a build with the
//! feature reads, and a build without it refuses as misses.

use std::time::Duration;

use cacheruntime::Policy;

use crate::scenarios::{short_ttl, Findings, MINUTE};
use crate::stores::{Options, Store};

/// A computation that answers `Ok(v)` or fails.
async fn answer(ok: Option<&'static str>) -> Result<String, String> {
    ok.map(str::to_owned)
        .ok_or_else(|| "upstream down".to_owned())
}

pub async fn stale_if_error_serves_the_kept_value_until_it_is_fenced(s: &Store) {
    let mut f = Findings::new(s, "stale_if_error_serves_the_kept_value_until_it_is_fenced");
    let ttl = short_ttl(s);
    let p = Policy::new().ttl(ttl).stale_if_error(MINUTE * 10);
    for (key, fence) in [
        ("sie:1:a", None),
        ("sie:2:a", Some("delete")),
        ("sie:3:a", Some("invalidate")),
    ] {
        let first = s.a.try_get_or_compute(key, &p, || answer(Some("v1"))).await;
        f.expect(first == Ok("v1".into()), || {
            format!("{key}: A computed {first:?}")
        });
        s.elapse(ttl + Duration::from_millis(200)).await;
        match fence {
            Some("delete") => {
                if let Err(e) = s.b.delete(key).await {
                    f.fail(format!("{key}: B.delete failed: {e}"));
                }
            }
            Some(_) => {
                let prefix = &key[..key.len() - 1];
                if let Err(e) = s.b.invalidate_prefix(prefix).await {
                    f.fail(format!("{key}: B.invalidate_prefix failed: {e}"));
                }
            }
            None => {}
        }
        for (name, h) in [("A", &s.a), ("B", &s.b)] {
            let got = h.try_get_or_compute(key, &p, || answer(None)).await;
            let want = if fence.is_none() {
                Ok("v1".to_owned())
            } else {
                Err("upstream down".to_owned())
            };
            f.expect(got == want, || {
                format!(
                    "{key}: {name} whose computation failed after expiry{} got {got:?}, expected {want:?}",
                    fence.map(|w| format!(" and a {w}")).unwrap_or_default()
                )
            });
        }
        // Not a value to serve otherwise: expired to every other read.
        let plain = s.a.get::<String>(key).await;
        f.expect(matches!(plain, Ok(None)), || {
            format!("{key}: A.get of an expired entry returned {plain:?}")
        });
    }
    let kept = s.a.stats().stale_if_error + s.b.stats().stale_if_error;
    f.expect(kept == 2, || {
        format!("Stats::stale_if_error: {kept}, expected 2 (A and B on sie:1)")
    });
    // A caller that did not ask for it gets the error.
    let key = "sie:4:a";
    let _ = s.a.try_get_or_compute(key, &p, || answer(Some("v1"))).await;
    s.elapse(ttl + Duration::from_millis(200)).await;
    let plain_policy = Policy::new().ttl(ttl);
    let got =
        s.b.try_get_or_compute(key, &plain_policy, || answer(None))
            .await;
    f.expect(got == Err("upstream down".into()), || {
        format!("{key}: B without stale_if_error got {got:?}")
    });
    f.finish();
}

/// `UNTIL_EVICTED` ("as long as the store allows") is accepted by every
/// store and capped at its limit: the entry is there, with a TTL.
pub async fn until_evicted_is_capped_by_every_store(s: &Store) {
    let mut f = Findings::new(s, "until_evicted_is_capped_by_every_store");
    let forever = cacheruntime::UNTIL_EVICTED;
    if let Err(e) = s.a.set("forever:1", &7u32, forever).await {
        f.fail(format!("A.set with UNTIL_EVICTED failed: {e}"));
    }
    let got = s.b.get::<u32>("forever:1").await;
    f.expect(matches!(got, Ok(Some(7))), || {
        format!("B.get returned {got:?}")
    });
    let p = Policy::new().ttl(forever);
    let computed = s.a.get_or_compute("forever:2", &p, || async { 8u32 }).await;
    let again = s.b.get_or_compute("forever:2", &p, || async { 9u32 }).await;
    f.expect((computed, again) == (8, 8), || {
        format!("get_or_compute with UNTIL_EVICTED: {computed} then {again}, expected 8 twice")
    });
    let left = s.a.ttl("forever:1").await;
    // Shared stores cap it at their max_ttl (the SQL fixtures' is an hour,
    // Memcached's default 365 days); the memory store keeps it until its
    // byte bound evicts it.
    let cap = if s.name == "memory" {
        Duration::MAX
    } else {
        Duration::from_secs(366 * 86_400)
    };
    f.expect(
        matches!(left, Ok(Some(d)) if d > Duration::from_secs(3_000) && d <= cap),
        || format!("A.ttl of an UNTIL_EVICTED entry: {left:?}"),
    );
    let errors = s.a.stats().errors + s.b.stats().errors;
    f.expect(errors == 0, || format!("store errors: {errors}"));
    f.finish();
}
/// An RSS feed as `examples/third_party.rs` serves it, with `items` items.
fn feed(name: &str, items: usize) -> String {
    let items: String = (1..=items)
        .map(|i| {
            format!(
                "<item><title>{name} post {i}</title>\
                 <link>https://{name}.example/posts/{i}</link>\
                 <guid>https://{name}.example/posts/{i}</guid></item>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <rss version=\"2.0\"><channel><title>{name}</title>\
         <link>https://{name}.example/</link><description>The {name} feed</description>\
         {items}</channel></rss>"
    )
}

/// A handle compressing payloads of 512 bytes or more (Z), the fixture's
/// plain handles (A, B), and one reading only the signed flag, as a build
/// without the `compression` feature does (Old: `Header::read` there knows
/// `FLAG_SIGNED` alone), all with entries of at most 4 KiB. Every handle of
/// the feature reads the others' entries, plain or compressed, on every
/// path (get, get_or_compute, get_many, touch, incr); Old sees compressed
/// entries as misses (decode failures) and overwrites them with plain
/// ones; the 4 KiB limit applies to the stored size, so a feed of 16 KiB
/// is stored by Z and refused by A.
pub async fn compressed_and_plain_entries_read_across_handles(s: &Store) {
    let mut f = Findings::new(s, "compressed_and_plain_entries_read_across_handles");
    let limited = Options {
        max_entry_bytes: Some(4096),
        ..s.options()
    };
    let z = s.handle_with(Options {
        compress_above: Some(512),
        ..limited
    });
    let a = s.handle_with(limited);
    let b = &s.b;
    let old = s.handle_with(Options {
        read_flags: Some(cacheruntime::envelope::FLAG_SIGNED),
        ..limited
    });
    let big = feed("news", 20);
    let huge = feed("huge", 150);
    assert!(big.len() > 2048 && big.len() < 4000, "{}", big.len());
    assert!(huge.len() > 16 << 10, "{}", huge.len());

    // Compressed by Z, read by everyone with the feature.
    for (key, value) in [("z:1", &big), ("z:2", &huge)] {
        if let Err(e) = z.set(key, value, MINUTE).await {
            f.fail(format!("{key}: Z.set of {} bytes failed: {e}", value.len()));
        }
        for (name, h) in [("Z", &z), ("A", &a), ("B", b)] {
            let got = h.get::<String>(key).await;
            f.expect(got.as_ref().ok() == Some(&Some(value.clone())), || {
                format!(
                    "{key}: {name}.get of Z's compressed entry: {:?}",
                    short(&got)
                )
            });
        }
    }
    // The limit is on stored bytes: A cannot store what Z did.
    let plain = a.set("z:3", &huge, MINUTE).await;
    f.expect(plain.is_err(), || {
        "z:3: A stored a 16 KiB feed under a 4 KiB limit".to_owned()
    });
    // Plain entries (A's, and Z's below the threshold), read by Z.
    let small = feed("tiny", 1);
    assert!(small.len() < 512);
    for (key, value, writer) in [("z:4", &big, &a), ("z:5", &small, &z)] {
        if let Err(e) = writer.set(key, value, MINUTE).await {
            f.fail(format!("{key}: set failed: {e}"));
        }
        for (name, h) in [("Z", &z), ("B", b), ("Old", &old)] {
            let got = h.get::<String>(key).await;
            f.expect(got.as_ref().ok() == Some(&Some(value.clone())), || {
                format!("{key}: {name}.get of a plain entry: {:?}", short(&got))
            });
        }
    }
    // A build without the feature: a miss, counted, never a wrong value.
    let before = old.stats().decode_failures;
    let got = old.get::<String>("z:1").await;
    f.expect(matches!(got, Ok(None)), || {
        format!("z:1: Old.get of a compressed entry: {:?}", short(&got))
    });
    let refused = old.stats().decode_failures - before;
    f.expect(refused == 1, || {
        format!("z:1: Old counted {refused} decode failures, expected 1")
    });

    // get_or_compute: Z computes and stores compressed, A and B hit it;
    // Old computes again and overwrites it plain, which Z then reads.
    let p = Policy::new().ttl(MINUTE);
    let key = "z:6";
    let first = z.get_or_compute(key, &p, || async { big.clone() }).await;
    f.expect(first == big, || format!("{key}: Z computed another value"));
    for (name, h) in [("A", &a), ("B", b)] {
        let got = h
            .get_or_compute(key, &p, || async { "recomputed".to_owned() })
            .await;
        f.expect(got == big, || {
            format!(
                "{key}: {name} did not hit Z's compressed entry: {}",
                got.len()
            )
        });
    }
    let again = old
        .get_or_compute(key, &p, || async { small.clone() })
        .await;
    f.expect(again == small, || {
        format!(
            "{key}: Old served {} bytes, not its own computation",
            again.len()
        )
    });
    s.settle().await;
    let got = z
        .get_or_compute(key, &p, || async { "recomputed".to_owned() })
        .await;
    f.expect(got == small, || {
        format!(
            "{key}: Z did not hit Old's plain entry: {} bytes",
            got.len()
        )
    });

    // get_many over plain and compressed entries, from a plain handle.
    let many = b
        .get_many::<String>(&["z:1", "z:4", "z:5", "z:missing"])
        .await;
    let want = vec![
        Some(big.clone()),
        Some(big.clone()),
        Some(small.clone()),
        None,
    ];
    f.expect(many.as_ref().ok() == Some(&want), || {
        format!(
            "B.get_many: {:?}",
            many.map(|v| v
                .iter()
                .map(|x| x.as_ref().map(String::len))
                .collect::<Vec<_>>())
        )
    });

    // touch keeps the payload as stored: still compressed, still readable.
    let ttl = short_ttl(s);
    if let Err(e) = z.set("z:7", &big, ttl).await {
        f.fail(format!("z:7: Z.set failed: {e}"));
    }
    let touched = a.touch("z:7", MINUTE * 10).await;
    f.expect(matches!(touched, Ok(true)), || {
        format!("z:7: A.touch of Z's compressed entry: {touched:?}")
    });
    s.elapse(ttl + Duration::from_millis(200)).await;
    for (name, h) in [("Z", &z), ("A", &a)] {
        let got = h.get::<String>("z:7").await;
        f.expect(got.as_ref().ok() == Some(&Some(big.clone())), || {
            format!("z:7: {name}.get after A's touch: {:?}", short(&got))
        });
    }
    let old_touch = old.touch("z:7", MINUTE).await;
    f.expect(matches!(old_touch, Ok(false)), || {
        format!("z:7: Old.touch of a compressed entry (absent to it): {old_touch:?}")
    });

    // Counters are tiny: never compressed, shared by every handle.
    let mut total = 0;
    for h in [&z, &a, &old] {
        match h.incr("z:ctr", 2, MINUTE).await {
            Ok(n) => total = n,
            Err(e) => f.fail(format!("z:ctr: incr failed: {e}")),
        }
    }
    f.expect(total == 6, || format!("z:ctr: counted {total}, expected 6"));
    f.finish();
}

/// A result's shape, without kilobytes of XML.
fn short(got: &Result<Option<String>, cacheruntime::Error>) -> String {
    match got {
        Ok(Some(v)) => format!("Ok(Some({} bytes))", v.len()),
        other => format!("{other:?}"),
    }
}
