//! What operators ask of every store (`Cache::keys`, `Cache::inspect`,
//! `Cache::store_info`, `Cache::ping`; `cachectl`): one meaning everywhere.
//! A key is listed, and an entry inspected, exactly when a read would find
//! it: never after its expiry, an invalidation or a delete, from either
//! handle; never a lock or a tag's token.

use std::time::Duration;

use cacheruntime::inspect::{Freshness, Signature};

use cacheruntime::Policy;

use crate::scenarios::{short_ttl, Findings};
use crate::stores::Store;

/// Longer than the short TTL and what the test lets elapse (a manual
/// clock's short TTL is a minute).
const LONG: Duration = Duration::from_secs(3600);

pub async fn keys_and_inspect_show_live_entries_only(s: &Store) {
    let mut f = Findings::new(s, "keys_and_inspect_show_live_entries_only");
    for key in ["ops:1", "ops:2", "ops:3", "opsx:1", "other:1"] {
        if let Err(e) = s.a.set(key, &format!("value of {key}"), LONG).await {
            f.fail(format!("A.set({key}) failed: {e}"));
        }
    }
    s.a.set_tagged("ops:tagged", &7u32, LONG, &["ops-tag"])
        .await
        .unwrap_or_else(|e| f.fail(format!("A.set_tagged failed: {e}")));
    let short = short_ttl(s);
    s.a.set("ops:short", &0u8, short)
        .await
        .unwrap_or_else(|e| f.fail(format!("A.set(ops:short) failed: {e}")));
    // A lock beside the entries (a cold miss's) is no entry.
    let _ =
        s.a.get_or_compute("ops:computed", &Policy::new().ttl(LONG), || async { 1u8 })
            .await;
    s.settle().await;
    let listed = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let all = listed(&[
        "ops:1",
        "ops:2",
        "ops:3",
        "ops:computed",
        "ops:short",
        "ops:tagged",
    ]);
    let mut progress = 0;
    match s.b.keys("ops:", 1000, |n| progress = n).await {
        Ok(keys) => f.expect(keys == all, || {
            format!("B.keys(ops:) = {keys:?}, want {all:?}")
        }),
        Err(e) => f.fail(format!("B.keys failed: {e}")),
    }
    f.expect(progress >= all.len() as u64, || {
        format!("progress said {progress}")
    });
    match s.a.keys("ops", 1000, |_| {}).await {
        Ok(keys) => f.expect(
            keys.contains(&"opsx:1".to_owned()) && keys.len() == 7,
            || format!("A.keys(ops) = {keys:?}: a prefix is any text, not only whole segments"),
        ),
        Err(e) => f.fail(format!("A.keys(ops) failed: {e}")),
    }
    match s.b.keys("ops:", 2, |_| {}).await {
        Ok(keys) => f.expect(keys.len() == 2, || format!("keys with limit 2 = {keys:?}")),
        Err(e) => f.fail(format!("B.keys(limit 2) failed: {e}")),
    }
    match s.b.inspect("ops:1").await {
        Ok(Some(info)) => {
            f.expect(info.freshness == Freshness::Fresh, || format!("{info:?}"));
            f.expect(
                info.codec == "bincode" && info.signature == Signature::Unsigned,
                || format!("{info:?}"),
            );
            f.expect(
                info.size > info.payload.len() && info.tags.is_empty(),
                || format!("{info:?}"),
            );
            let text = String::from_utf8_lossy(&info.payload);
            f.expect(text.contains("value of ops:1"), || {
                format!("payload {text:?}")
            });
            let left = info
                .fresh_until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            f.expect(left > Duration::from_secs(1800), || {
                format!("fresh for {left:?}")
            });
            // Written in format 2 (the default): no written-at recorded
            // (`cachectl`'s tests cover caches that record it).
            f.expect(info.written_at.is_none(), || {
                format!("written at {:?} by a cache not asked to", info.written_at)
            });
        }
        other => f.fail(format!("B.inspect(ops:1) = {other:?}")),
    }
    match s.b.inspect("ops:tagged").await {
        Ok(Some(info)) => f.expect(info.tags.len() == 1 && info.tags[0].0 == "ops-tag", || {
            format!("tags {:?}", info.tags)
        }),
        other => f.fail(format!("B.inspect(ops:tagged) = {other:?}")),
    }
    // Gone every way: from the other handle, and past the TTL.
    s.b.delete("ops:2")
        .await
        .unwrap_or_else(|e| f.fail(format!("B.delete failed: {e}")));
    s.b.invalidate_tag("ops-tag")
        .await
        .unwrap_or_else(|e| f.fail(format!("B.invalidate_tag failed: {e}")));
    s.elapse(short + Duration::from_millis(100)).await;
    s.settle().await;
    let left = listed(&["ops:1", "ops:3", "ops:computed"]);
    match s.a.keys("ops:", 1000, |_| {}).await {
        Ok(keys) => f.expect(keys == left, || {
            format!("after delete, tag, expiry: {keys:?}")
        }),
        Err(e) => f.fail(format!("A.keys failed: {e}")),
    }
    for gone in ["ops:2", "ops:short", "ops:tagged", "ops:never"] {
        match s.a.inspect(gone).await {
            Ok(None) => {}
            other => f.fail(format!("A.inspect({gone}) = {other:?}, want None")),
        }
    }
    s.a.invalidate_prefix("ops:")
        .await
        .unwrap_or_else(|e| f.fail(format!("A.invalidate_prefix failed: {e}")));
    s.settle().await;
    match s.b.keys("ops:", 1000, |_| {}).await {
        Ok(keys) => f.expect(keys.is_empty(), || format!("after invalidation: {keys:?}")),
        Err(e) => f.fail(format!("B.keys failed: {e}")),
    }
    match s.b.inspect("ops:1").await {
        Ok(None) => {}
        other => f.fail(format!("B.inspect(ops:1) after invalidation = {other:?}")),
    }
    match s.b.keys("other:", 1000, |_| {}).await {
        Ok(keys) => f.expect(keys == listed(&["other:1"]), || format!("other: {keys:?}")),
        Err(e) => f.fail(format!("B.keys(other:) failed: {e}")),
    }
    match s.a.store_info().await {
        Ok(info) => f.expect(!info.kind.is_empty(), || format!("{info:?}")),
        Err(e) => f.fail(format!("store_info failed: {e}")),
    }
    if let Err(e) = s.b.ping().await {
        f.fail(format!("ping failed: {e}"));
    }
    f.finish();
}
