//! Cold keys under concurrent callers on two handles (two "processes"):
//! one computation on a shared store, and no lock left behind when the
//! computation fails, whichever caller's read took the key's lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cacheruntime::{Cache, Policy};

use crate::scenarios::{Findings, MINUTE};
use crate::stores::Store;

/// 8 callers on each handle ask for a cold key at once; its computation
/// takes 150 ms (`Ok`) or fails after 150 ms (`Err`).
async fn burst(
    s: &Store,
    key: &'static str,
    p: &Policy,
    ok: bool,
    runs: &Arc<AtomicUsize>,
) -> Vec<(Result<String, String>, Duration)> {
    let calls = [&s.a, &s.b].into_iter().flat_map(|h: &Cache| {
        (0..8).map(move |_| {
            let h = h.clone();
            let p = *p;
            let runs = Arc::clone(runs);
            async move {
                let started = Instant::now();
                let got = h
                    .try_get_or_compute(key, &p, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        if ok {
                            Ok(format!("value of {key}"))
                        } else {
                            Err("upstream down".to_owned())
                        }
                    })
                    .await;
                (got, started.elapsed())
            }
        })
    });
    futures::future::join_all(calls).await
}

pub async fn cold_key_is_computed_once_and_leaves_no_lock(s: &Store) {
    let mut f = Findings::new(s, "cold_key_is_computed_once_and_leaves_no_lock");
    let p = Policy::new().ttl(MINUTE).lock_ttl(Duration::from_secs(30));
    // The memory store locks in process only: one computation per handle.
    let most = if s.name == "memory" { 2 } else { 1 };
    let runs = Arc::new(AtomicUsize::new(0));
    for (got, took) in burst(s, "cold:1:x", &p, true, &runs).await {
        f.expect(got.as_deref() == Ok("value of cold:1:x"), || {
            format!("a caller got {got:?} after {took:?}")
        });
    }
    let n = runs.load(Ordering::SeqCst);
    f.expect(n >= 1 && n <= most, || {
        format!("16 callers on two handles computed a cold key {n} times (at most {most})")
    });

    // A failing computation stores nothing: every caller gets its own
    // error, and neither handle then waits out a lock (30 s) for a value
    // that never comes.
    let runs = Arc::new(AtomicUsize::new(0));
    let bound = Duration::from_secs(5);
    for (got, took) in burst(s, "cold:2:x", &p, false, &runs).await {
        f.expect(got.is_err(), || format!("a failing caller got {got:?}"));
        f.expect(took < bound, || {
            format!("a caller of a failing computation took {took:?} (lock left behind?)")
        });
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let started = Instant::now();
        let got: Result<String, String> = h
            .try_get_or_compute("cold:2:x", &p, || async { Ok("now".to_owned()) })
            .await;
        let took = started.elapsed();
        f.expect(got.as_deref() == Ok("now") && took < bound, || {
            format!("after the failures, {name} got {got:?} in {took:?}")
        });
        let stats = h.stats();
        f.expect(stats.lock_timeouts == 0, || {
            format!("{name}: lock_timeouts={}", stats.lock_timeouts)
        });
    }
    f.finish();
}
