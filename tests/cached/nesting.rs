//! Cached functions that await other cached functions: each level's
//! future holds the core's state once, not copies of the levels under it.
//! (Every async layer keeps its own copy of an unstarted body, so before
//! the entry points boxed it a future grew several-fold per level: three
//! levels with a hydrator overflowed a 2 MiB test thread in a debug build.)

use cacheruntime::CacheId;

use super::*;

#[cached(key = "nest:1:{n}", ttl = 60, cache = cache)]
async fn level1(cache: &Cache, n: u64) -> u64 {
    n + 1
}

#[cached(key = "nest:2:{n}", ttl = 60, cache = cache)]
async fn level2(cache: &Cache, n: u64) -> u64 {
    level1(cache, n).await * 2
}

#[cached(key = "nest:3:{n}", ttl = 60, cache = cache)]
async fn level3(cache: &Cache, n: u64) -> Result<u64, MyError> {
    Ok(level2(cache, n).await * 3)
}

/// A refreshing body owns its arguments (it may run in a spawned task).
#[cached(key = "nest:4:{n}", ttl = 60, stale = 60, cache = cache, skip = [inner])]
async fn refreshing4(cache: Cache, inner: Cache, n: u64) -> u64 {
    level3(&inner, n).await.unwrap() + 1
}

#[tokio::test]
async fn a_cached_function_awaiting_others_is_no_bigger_than_one_alone() {
    let cache = fresh();
    let one = std::mem::size_of_val(&level1(&cache, 1));
    let two = std::mem::size_of_val(&level2(&cache, 1));
    let three = std::mem::size_of_val(&level3(&cache, 1));
    let four = std::mem::size_of_val(&refreshing4(cache.clone(), cache.clone(), 1));
    // Each level's own state differs a little (a `Result`, a refresh);
    // the levels under it are on the heap.
    for (level, size) in [(2, two), (3, three), (4, four)] {
        assert!(
            size <= one + 256,
            "level {level}'s future is {size} bytes, level 1's {one}"
        );
    }
    // And they still answer, computing each level once.
    assert_eq!(refreshing4(cache.clone(), cache.clone(), 1).await, 13);
    assert_eq!(refreshing4(cache.clone(), cache.clone(), 1).await, 13);
    assert_eq!(level3(&cache, 1).await, Ok(12));
    assert_eq!(cache.stats().computations, 4);
}

#[derive(Debug, Clone, PartialEq)]
struct Item(u64);

impl CacheId for Item {
    type Id = u64;
    fn cache_id(&self) -> u64 {
        self.0
    }
}

async fn load(ids: &[u64]) -> Result<Vec<Item>, MyError> {
    Ok(ids.iter().map(|&id| Item(id)).collect())
}

#[cached(key = "nest:ids1:{n}", ttl = 60, cache = cache, ids = |ids| load(&ids))]
async fn items1(cache: &Cache, n: u64) -> Result<Vec<Item>, MyError> {
    Ok(vec![Item(n), Item(n + 1)])
}

#[cached(key = "nest:ids2:{n}", ttl = 60, cache = cache, ids = |ids| load(&ids))]
async fn items2(cache: &Cache, n: u64) -> Result<Vec<Item>, MyError> {
    let mut items = items1(cache, n).await?;
    items.reverse();
    Ok(items)
}

#[cached(key = "nest:ids3:{n}", ttl = 60, cache = cache, ids = |ids| load(&ids))]
async fn items3(cache: &Cache, n: u64) -> Result<Vec<Item>, MyError> {
    let mut items = items2(cache, n).await?;
    items.push(Item(0));
    Ok(items)
}

#[tokio::test]
async fn functions_storing_ids_awaiting_others_are_no_bigger_than_one_alone() {
    let cache = fresh();
    let one = std::mem::size_of_val(&items1(&cache, 1));
    let three = std::mem::size_of_val(&items3(&cache, 1));
    assert!(three <= one + 256, "level 3: {three} bytes, level 1: {one}");
    let want = vec![Item(2), Item(1), Item(0)];
    assert_eq!(items3(&cache, 1).await, Ok(want.clone()));
    // A hit hydrates the stored ids, in their order.
    assert_eq!(items3(&cache, 1).await, Ok(want));
    assert_eq!(cache.stats().computations, 3);
}

#[tokio::test]
async fn nested_get_or_compute_calls_are_no_bigger_than_one_alone() {
    let cache = fresh();
    let policy = Policy::new().ttl(Duration::from_secs(60));
    let inner = || cache.get_or_compute("nest:inner", &policy, || async { 20u64 });
    let one = std::mem::size_of_val(&inner());
    let outer = cache.get_or_compute("nest:outer", &policy, || async { inner().await + 1 });
    let two = std::mem::size_of_val(&outer);
    assert!(two <= one + 256, "nested: {two} bytes, alone: {one}");
    assert_eq!(outer.await, 21);
    assert_eq!(inner().await, 20);
    assert_eq!(cache.stats().computations, 2);
}
