//! Per-call policies against every store: `stale_if_error` (an expired
//! value stands in for a failed computation, inside its window, on every
//! handle, and never once it is invalidated or deleted).

use std::time::Duration;

use cacheruntime::Policy;

use crate::scenarios::{short_ttl, Findings, MINUTE};
use crate::stores::Store;

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
