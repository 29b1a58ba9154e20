//! The low-level API (`contains`, `ttl`, `touch`, `add`, the batched ops,
//! counters, `clear`) against every store: one meaning everywhere, and an
//! entry hidden by an invalidation or a delete, or expired, is absent to
//! every op.

use std::time::Duration;

use cacheruntime::{Cache, Stats};

use crate::scenarios::{short_ttl, Findings, MINUTE};
use crate::stores::Store;

/// How a key was made absent after it was set.
#[derive(Clone, Copy, Debug)]
enum Gone {
    Never,
    Expired,
    Invalidated,
    Deleted,
}

const GONE: [Gone; 4] = [Gone::Never, Gone::Expired, Gone::Invalidated, Gone::Deleted];

/// Sets `key` (under the prefix `prefix`) on A and makes it absent the
/// `how` way, the fence coming from B. `Never`: it never was set.
async fn make_absent(s: &Store, f: &mut Findings, prefix: &str, key: &str, how: Gone) {
    let ttl = short_ttl(s);
    let set_ttl = if matches!(how, Gone::Expired) {
        ttl
    } else {
        MINUTE
    };
    if !matches!(how, Gone::Never) {
        if let Err(e) = s.a.set(key, "old", set_ttl).await {
            f.fail(format!("A.set({key}) failed: {e}"));
        }
    }
    match how {
        Gone::Never => {}
        Gone::Expired => s.elapse(ttl + Duration::from_millis(100)).await,
        Gone::Invalidated => {
            if let Err(e) = s.b.invalidate_prefix(prefix).await {
                f.fail(format!("B.invalidate_prefix({prefix}) failed: {e}"));
            }
        }
        Gone::Deleted => {
            if let Err(e) = s.b.delete(key).await {
                f.fail(format!("B.delete({key}) failed: {e}"));
            }
        }
    }
    // A's near tier (if any) kept its write: let B's change reach it.
    s.settle().await;
}

fn calls(h: &Cache) -> u64 {
    let st: Stats = h.stats();
    st.calls()
}

/// `contains` and `ttl`: true and the time left for a live entry, on both
/// handles; false and `None` for a key never set, expired, invalidated or
/// deleted; each call counted once in the stats.
pub async fn contains_and_ttl(s: &Store) {
    let mut f = Findings::new(s, "contains_and_ttl");
    let (before_a, before_b) = (calls(&s.a), calls(&s.b));
    let mut counted_a = 0;
    if let Err(e) = s.a.set("ct:live:k", "v", MINUTE).await {
        f.fail(format!("A.set failed: {e}"));
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let has = h.contains("ct:live:k").await;
        f.expect(matches!(has, Ok(true)), || {
            format!("{name}.contains of a live entry returned {has:?}")
        });
        let left = h.ttl("ct:live:k").await;
        f.expect(
            matches!(left, Ok(Some(d)) if d <= MINUTE && d > MINUTE - Duration::from_secs(30)),
            || format!("{name}.ttl of an entry set for {MINUTE:?} returned {left:?}"),
        );
    }
    counted_a += 2;
    for how in GONE {
        let prefix = format!("ct:{how:?}:");
        let key = format!("{prefix}k");
        make_absent(s, &mut f, &prefix, &key, how).await;
        for (name, h) in [("A", &s.a), ("B", &s.b)] {
            let has = h.contains(&key).await;
            f.expect(matches!(has, Ok(false)), || {
                format!("{name}.contains of a key {how:?} returned {has:?}, expected false")
            });
            let left = h.ttl(&key).await;
            f.expect(matches!(left, Ok(None)), || {
                format!("{name}.ttl of a key {how:?} returned {left:?}, expected None")
            });
        }
        counted_a += 2;
    }
    // A value of another type is there all the same (these ops are untyped).
    let _ = s.a.set("ct:typed:k", &7u64, MINUTE).await;
    let has = s.b.contains("ct:typed:k").await;
    f.expect(matches!(has, Ok(true)), || {
        format!("B.contains of a u64 entry returned {has:?}")
    });
    let (a, b) = (calls(&s.a) - before_a, calls(&s.b) - before_b);
    f.expect(a == counted_a, || {
        format!("A counted {a} calls for {counted_a} contains/ttl calls")
    });
    f.expect(b == counted_a + 1, || {
        format!(
            "B counted {b} calls for {} contains/ttl calls",
            counted_a + 1
        )
    });
    f.finish();
}

/// `touch` gives a live entry a new TTL (seen by the other handle), and
/// leaves an absent one absent: a key never set, expired, invalidated or
/// deleted is not brought back.
pub async fn touch_extends_and_never_resurrects(s: &Store) {
    let mut f = Findings::new(s, "touch_extends_and_never_resurrects");
    let ttl = short_ttl(s);
    if let Err(e) = s.a.set("tc:live:k", "v", ttl).await {
        f.fail(format!("A.set failed: {e}"));
    }
    let longer = ttl * 10;
    let touched = s.b.touch("tc:live:k", longer).await;
    f.expect(matches!(touched, Ok(true)), || {
        format!("B.touch of a live entry returned {touched:?}")
    });
    s.elapse(ttl + Duration::from_millis(100)).await;
    let got = s.a.get::<String>("tc:live:k").await;
    f.expect(matches!(&got, Ok(Some(v)) if v == "v"), || {
        format!("A.get past the old TTL of a touched entry returned {got:?}")
    });
    let left = s.a.ttl("tc:live:k").await;
    f.expect(
        matches!(left, Ok(Some(d)) if d > longer - 2 * ttl && d <= longer),
        || format!("A.ttl of an entry touched for {longer:?} returned {left:?}"),
    );
    for how in GONE {
        let prefix = format!("tc:{how:?}:");
        let key = format!("{prefix}k");
        make_absent(s, &mut f, &prefix, &key, how).await;
        let touched = s.a.touch(&key, MINUTE).await;
        f.expect(matches!(touched, Ok(false)), || {
            format!("A.touch of a key {how:?} returned {touched:?}, expected false")
        });
        for (name, h) in [("A", &s.a), ("B", &s.b)] {
            let got = h.get::<String>(&key).await;
            f.expect(matches!(got, Ok(None)), || {
                format!("{name}.get of a key {how:?} after a touch returned {got:?}")
            });
        }
    }
    f.finish();
}

/// `add` stores only when no live entry is there: not over a live one (of
/// any type), but over a key never set, expired, invalidated or deleted.
pub async fn add_only_if_absent(s: &Store) {
    let mut f = Findings::new(s, "add_only_if_absent");
    let added = s.a.add("ad:live:k", "first", MINUTE).await;
    f.expect(matches!(added, Ok(true)), || {
        format!("A.add of a new key returned {added:?}")
    });
    let again = s.b.add("ad:live:k", "second", MINUTE).await;
    f.expect(matches!(again, Ok(false)), || {
        format!("B.add of a live key returned {again:?}, expected false")
    });
    let got = s.b.get::<String>("ad:live:k").await;
    f.expect(matches!(&got, Ok(Some(v)) if v == "first"), || {
        format!("B.get after a refused add returned {got:?}, expected the first value")
    });
    let _ = s.a.set("ad:typed:k", &7u64, MINUTE).await;
    let typed = s.b.add("ad:typed:k", "text", MINUTE).await;
    f.expect(matches!(typed, Ok(false)), || {
        format!("B.add over a live u64 entry returned {typed:?}, expected false")
    });
    for how in GONE {
        let prefix = format!("ad:{how:?}:");
        let key = format!("{prefix}k");
        make_absent(s, &mut f, &prefix, &key, how).await;
        let added = s.a.add(&key, "new", MINUTE).await;
        f.expect(matches!(added, Ok(true)), || {
            format!("A.add of a key {how:?} returned {added:?}, expected true")
        });
        for (name, h) in [("A", &s.a), ("B", &s.b)] {
            let got = h.get::<String>(&key).await;
            f.expect(matches!(&got, Ok(Some(v)) if v == "new"), || {
                format!("{name}.get after A.add of a key {how:?} returned {got:?}")
            });
        }
    }
    f.finish();
}

/// Two handles (two processes) `add` one key at once, many times, over a
/// key never set and over one an invalidation hid: exactly one of each
/// pair stores, and its value is the one read back.
pub async fn add_race_across_handles(s: &Store) {
    let mut f = Findings::new(s, "add_race_across_handles");
    for round in 0..24 {
        let prefix = format!("ar:{round}:");
        let key = format!("{prefix}k");
        if round % 2 == 1 {
            let _ = s.a.set(&key, "hidden", MINUTE).await;
            let _ = s.b.invalidate_prefix(&prefix).await;
        }
        let (a, b) = (s.a.clone(), s.b.clone());
        let (ka, kb) = (key.clone(), key.clone());
        let ta = tokio::spawn(async move { a.add(&ka, "A", MINUTE).await });
        let tb = tokio::spawn(async move { b.add(&kb, "B", MINUTE).await });
        let (ra, rb) = (ta.await.expect("no panic"), tb.await.expect("no panic"));
        let winner = match (&ra, &rb) {
            (Ok(true), Ok(false)) => Some("A"),
            (Ok(false), Ok(true)) => Some("B"),
            _ => {
                f.fail(format!(
                    "round {round}: A.add returned {ra:?} and B.add {rb:?}: exactly one must store"
                ));
                None
            }
        };
        if let Some(winner) = winner {
            s.settle().await;
            let got = s.a.get::<String>(&key).await;
            f.expect(matches!(&got, Ok(Some(v)) if v == winner), || {
                format!("round {round}: {winner}'s add won but A.get returned {got:?}")
            });
        }
    }
    f.finish();
}

/// `get_many` answers, key by key, what `get` answers: the values
/// `set_many` wrote, and nothing for keys never set, expired, invalidated,
/// deleted (one by one or with `delete_many`) or of another type; each key
/// counts one call in the stats.
pub async fn many_answer_as_single_key_ops(s: &Store) {
    let mut f = Findings::new(s, "many_answer_as_single_key_ops");
    let mut keys: Vec<String> = Vec::new();
    let mut want: Vec<Option<String>> = Vec::new();
    for how in GONE {
        let prefix = format!("mn:{how:?}:");
        let key = format!("{prefix}k");
        make_absent(s, &mut f, &prefix, &key, how).await;
        keys.push(key);
        want.push(None);
    }
    let live: Vec<(String, String)> = (0..5)
        .map(|i| (format!("mn:live:{i}"), format!("value {i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = live.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(e) = s.a.set_many(&pairs, MINUTE).await {
        f.fail(format!("A.set_many failed: {e}"));
    }
    for (k, v) in &live {
        keys.push(k.clone());
        want.push(Some(v.clone()));
    }
    let _ = s.a.set("mn:typed:k", &7u64, MINUTE).await;
    keys.push("mn:typed:k".into());
    want.push(None);
    // Deleted together, through the other handle.
    let _ =
        s.a.set_many(&[("mn:dm:1", "x"), ("mn:dm:2", "y")], MINUTE)
            .await;
    if let Err(e) = s.b.delete_many(&["mn:dm:1", "mn:dm:2"]).await {
        f.fail(format!("B.delete_many failed: {e}"));
    }
    s.settle().await;
    keys.extend(["mn:dm:1".to_string(), "mn:dm:2".to_string()]);
    want.extend([None, None]);
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let before = calls(h);
        let got = h.get_many::<String>(&refs).await;
        let counted = calls(h) - before;
        match got {
            Ok(got) => {
                for ((key, got), want) in refs.iter().zip(&got).zip(&want) {
                    f.expect(got == want, || {
                        format!("{name}.get_many: {key} was {got:?}, expected {want:?}")
                    });
                    let single = h.get::<String>(key).await;
                    f.expect(matches!(&single, Ok(v) if v == got), || {
                        format!("{name}: get({key}) = {single:?} but get_many said {got:?}")
                    });
                }
            }
            Err(e) => f.fail(format!("{name}.get_many failed: {e}")),
        }
        f.expect(counted == refs.len() as u64, || {
            format!(
                "{name}.get_many of {} keys counted {counted} calls",
                refs.len()
            )
        });
    }
    let empty = s.a.get_many::<String>(&[]).await;
    f.expect(matches!(&empty, Ok(v) if v.is_empty()), || {
        format!("A.get_many of no keys returned {empty:?}")
    });
    f.finish();
}

/// Counters: a missing key starts at 0 with the given TTL, either handle
/// adds to it, below zero too, and `get::<i64>` reads it; a counter that
/// expired, was deleted or is under an invalidated prefix starts over; a
/// live counter keeps its first TTL; a value that is not a counter (text,
/// or a number from `set`) is an error and left as it was; overflow is an
/// error and leaves the counter as it was.
pub async fn counters(s: &Store) {
    let mut f = Findings::new(s, "counters");
    let ttl = short_ttl(s);
    let long = ttl * 10;
    let steps = [
        (s.a.incr("cn:live:k", 1, long).await, 1),
        (s.b.incr("cn:live:k", 5, long).await, 6),
        (s.a.decr("cn:live:k", 10, long).await, -4),
    ];
    for (i, (got, want)) in steps.into_iter().enumerate() {
        f.expect(matches!(got, Ok(v) if v == want), || {
            format!("step {i} of incr 1, incr 5, decr 10: {got:?}, expected {want}")
        });
    }
    s.settle().await;
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        let got = h.get::<i64>("cn:live:k").await;
        f.expect(matches!(got, Ok(Some(-4))), || {
            format!("{name}.get::<i64> of the counter returned {got:?}")
        });
    }
    // Its first TTL stays: an increment with a longer one does not extend it.
    let _ = s.a.incr("cn:live:k", 1, long * 100).await;
    let left = s.b.ttl("cn:live:k").await;
    f.expect(matches!(left, Ok(Some(d)) if d <= long), || {
        format!("ttl of a counter started for {long:?} and incremented with a longer TTL: {left:?}")
    });
    for how in GONE {
        let prefix = format!("cn:{how:?}:");
        let key = format!("{prefix}k");
        // A counter (not a `set` value) made absent.
        let first_ttl = if matches!(how, Gone::Expired) {
            ttl
        } else {
            long
        };
        if !matches!(how, Gone::Never) {
            let _ = s.a.incr(&key, 41, first_ttl).await;
        }
        match how {
            Gone::Never => {}
            Gone::Expired => s.elapse(ttl + Duration::from_millis(100)).await,
            Gone::Invalidated => {
                let _ = s.b.invalidate_prefix(&prefix).await;
            }
            Gone::Deleted => {
                let _ = s.b.delete(&key).await;
            }
        }
        let got = s.a.incr(&key, 2, long).await;
        f.expect(matches!(got, Ok(2)), || {
            format!("A.incr by 2 of a counter {how:?} returned {got:?}, expected a restart at 2")
        });
        let left = s.b.ttl(&key).await;
        f.expect(matches!(left, Ok(Some(d)) if d > long - 2 * ttl), || {
            format!("a counter {how:?} restarted for {long:?} has ttl {left:?}")
        });
    }
    let _ = s.a.set("cn:text:k", "hello", MINUTE).await;
    let _ = s.a.set("cn:num:k", &5i64, MINUTE).await;
    for key in ["cn:text:k", "cn:num:k"] {
        let got = s.b.incr(key, 1, MINUTE).await;
        f.expect(
            matches!(&got, Err(cacheruntime::Error::NotACounter { key: k }) if k == key),
            || format!("B.incr of a `set` value under {key} returned {got:?}"),
        );
    }
    let text = s.a.get::<String>("cn:text:k").await;
    f.expect(matches!(&text, Ok(Some(v)) if v == "hello"), || {
        format!("the value under a refused incr became {text:?}")
    });
    let num = s.a.get::<i64>("cn:num:k").await;
    f.expect(matches!(num, Ok(Some(5))), || {
        format!("the number under a refused incr became {num:?}")
    });
    let _ = s.a.incr("cn:max:k", i64::MAX, MINUTE).await;
    let over = s.b.incr("cn:max:k", 1, MINUTE).await;
    f.expect(
        matches!(
            over,
            Err(cacheruntime::Error::CounterOverflow {
                value: i64::MAX,
                ..
            })
        ),
        || format!("incr past i64::MAX returned {over:?}"),
    );
    let under = s.b.decr("cn:min:k", i64::MIN, MINUTE).await;
    f.expect(
        matches!(under, Err(cacheruntime::Error::CounterOverflow { .. })),
        || format!("decr of i64::MIN from 0 returned {under:?}"),
    );
    let kept = s.a.get::<i64>("cn:max:k").await;
    f.expect(matches!(kept, Ok(Some(i64::MAX))), || {
        format!("a counter after a refused overflow is {kept:?}")
    });
    f.finish();
}

/// Two handles (two processes) increment one counter concurrently, 20
/// tasks each: the counter ends at exactly 40, and each increment returned
/// a different value (each counted once).
pub async fn incr_sum_across_handles(s: &Store) {
    let mut f = Findings::new(s, "incr_sum_across_handles");
    let mut tasks = Vec::new();
    for h in [&s.a, &s.b] {
        for _ in 0..20 {
            let h = h.clone();
            tasks.push(tokio::spawn(
                async move { h.incr("sum:k", 1, MINUTE).await },
            ));
        }
    }
    let mut seen = Vec::new();
    for task in tasks {
        match task.await.expect("no panic") {
            Ok(v) => seen.push(v),
            Err(e) => f.fail(format!("an incr failed: {e}")),
        }
    }
    seen.sort_unstable();
    let want: Vec<i64> = (1..=40).collect();
    f.expect(seen == want, || {
        format!("40 increments returned {seen:?}, expected each of 1..=40 once")
    });
    s.settle().await;
    let total = s.a.get::<i64>("sum:k").await;
    f.expect(matches!(total, Ok(Some(40))), || {
        format!("after 40 increments A.get::<i64> returned {total:?}")
    });
    f.finish();
}

/// `clear` on A removes every entry and counter of the namespace, for A
/// and B, and nothing of another namespace on the same store; a handle
/// with no namespace is refused on a shared store (the memory store, the
/// process's own, is emptied).
pub async fn clear_is_scoped_to_the_namespace(s: &Store) {
    let mut f = Findings::new(s, "clear_is_scoped_to_the_namespace");
    let elsewhere_ns = format!(
        "elsewhere{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let elsewhere = s.handle_in(&elsewhere_ns);
    let _ = s.a.set("cl:1:k", "v", MINUTE).await;
    let _ = s.a.set("solo", "v", MINUTE).await;
    let _ = s.b.incr("cl:count", 5, MINUTE).await;
    if let Err(e) = elsewhere.set("cl:1:k", "kept", MINUTE).await {
        f.fail(format!("set in another namespace failed: {e}"));
    }
    if let Err(e) = s.a.clear().await {
        f.fail(format!("A.clear failed: {e}"));
    }
    for (name, h) in [("A", &s.a), ("B", &s.b)] {
        for key in ["cl:1:k", "solo", "cl:count"] {
            let has = h.contains(key).await;
            f.expect(matches!(has, Ok(false)), || {
                format!("{name}.contains({key}) after A.clear returned {has:?}")
            });
        }
    }
    let restarted = s.b.incr("cl:count", 1, MINUTE).await;
    f.expect(matches!(restarted, Ok(1)), || {
        format!("B.incr of a cleared counter returned {restarted:?}, expected 1")
    });
    let kept = elsewhere.get::<String>("cl:1:k").await;
    f.expect(matches!(&kept, Ok(Some(v)) if v == "kept"), || {
        format!("another namespace's entry after A.clear: {kept:?}")
    });
    let bare = s.handle_in("");
    let refused = bare.clear().await;
    if s.name == "memory" {
        f.expect(refused.is_ok(), || {
            format!("clear without a namespace on the memory store returned {refused:?}")
        });
    } else {
        f.expect(
            matches!(&refused, Err(e @ cacheruntime::Error::NamespaceRequired { .. })
                if e.to_string().contains("namespace(")),
            || format!("clear without a namespace on a shared store returned {refused:?}"),
        );
        let still = elsewhere.get::<String>("cl:1:k").await;
        f.expect(matches!(&still, Ok(Some(v)) if v == "kept"), || {
            format!("another namespace's entry after a refused clear: {still:?}")
        });
    }
    f.finish();
}
