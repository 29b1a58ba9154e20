// `skip` says an argument does not change the result: with a template it
// may stay out of the key; with a default key it is left out of it (so it
// needs no `Display`); `skip = [self]` for a method whose receiver is a
// handle; an argument that is the `cache` expression itself needs none.
use cacheruntime::{cached, Cache};

struct Pool;

#[cached(key = "book:{id}", ttl = 60, skip = [pool])]
async fn book(pool: &Pool, id: u64) -> String {
    let _ = pool;
    format!("book {id}")
}

#[cached(ttl = 60, skip = pool)]
async fn author(pool: &Pool, id: u64) -> String {
    let _ = pool;
    format!("author {id}")
}

#[cached(key = "price:{sku}", cache = cache)]
async fn price(cache: &Cache, sku: u64) -> u64 {
    let _ = cache;
    sku
}

// A default key leaves the cache argument out too (a `Cache` is no
// `Display`): where a value is stored does not change it.
#[cached(ttl = 60, cache = cache)]
async fn stock(cache: &Cache, sku: u64) -> u64 {
    let _ = cache;
    sku + 1
}

struct Repo;

impl Repo {
    #[cached(key = "repo:count:{kind}", skip = [self])]
    async fn count(&self, kind: u8) -> u64 {
        u64::from(kind)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(book(&Pool, 1).await, "book 1");
    assert_eq!(author(&Pool, 2).await, "author 2");
    assert_eq!(author_cache_key(2).len() > 0, true);
    assert_eq!(price(&Cache::memory(), 3).await, 3);
    let shop = Cache::memory();
    assert_eq!(stock(&shop, 4).await, 5);
    assert_eq!(stock(&shop, 4).await, 5);
    assert_eq!(shop.stats().hits, 1);
    assert!(stock_cache_key(4).ends_with(":4"));
    assert_eq!(Repo.count(4).await, 4);
}
