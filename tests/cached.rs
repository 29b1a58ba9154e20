//! Behaviour of `#[cached]` functions and the `Cache` handle on the memory
//! backend and on failing test backends. One binary for the whole area.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::{Backend, BoxFuture, Lookup, Ticket};
use cacheruntime::backends::MemoryBackend;
use cacheruntime::{cached, Cache, Clock, Error, Policy};
use serde::{Deserialize, Serialize};

mod support;

#[path = "cached/answers.rs"]
mod answers;
#[path = "cached/decided.rs"]
mod decided;
#[path = "cached/nesting.rs"]
mod nesting;

#[derive(Debug, PartialEq)]
struct MyError(String);

/// A default key: the function's path, `@L<line>C<column>` of its
/// attribute, then the arguments.
#[track_caller]
fn assert_default_key(key: &str, path: &str, args: &str) {
    let place = key
        .strip_prefix(path)
        .and_then(|rest| rest.strip_suffix(args))
        .and_then(|place| place.strip_prefix("@L"))
        .and_then(|place| place.split_once('C'));
    let numbers = |(l, c): (&str, &str)| {
        !l.is_empty() && !c.is_empty() && (l.to_owned() + c).bytes().all(|b| b.is_ascii_digit())
    };
    assert!(
        place.is_some_and(numbers),
        "{key:?} is not {path}@L<n>C<n>{args}"
    );
}

fn fresh() -> Cache {
    Cache::builder().memory(8 << 20).build().unwrap()
}

// ---------------------------------------------------------------- hits, misses

#[cached(key = "author:{author_id}:top_books", ttl = 3600, cache = cache)]
async fn top_books(cache: &Cache, author_id: i64) -> Result<Vec<i64>, MyError> {
    Ok(vec![author_id, author_id + 1])
}

#[tokio::test]
async fn second_call_is_a_hit_and_skips_the_body() {
    let cache = fresh();
    assert_eq!(top_books(&cache, 7).await, Ok(vec![7, 8]));
    assert_eq!(top_books(&cache, 7).await, Ok(vec![7, 8]));
    // This cache's own count: other tests call the function meanwhile.
    assert_eq!(cache.stats().computations, 1);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (1, 1, 0));
    let f = stats
        .functions
        .iter()
        .find(|f| f.name.ends_with("::top_books"))
        .expect("per-function stats");
    assert!(f.hits >= 1 && f.misses >= 1);
    // The key is the template, verbatim.
    assert_eq!(top_books_cache_key(7), "author:7:top_books");
    assert_eq!(
        cache.get::<Vec<i64>>("author:7:top_books").await.unwrap(),
        Some(vec![7, 8])
    );
}

// ---------------------------------------------------------------- ttl

static CLOCKED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "clocked:{id}", ttl = "1m", cache = cache)]
async fn clocked(cache: &Cache, id: u32) -> u32 {
    CLOCKED_RUNS.fetch_add(1, Ordering::SeqCst) as u32 + id
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let clock = Clock::manual();
    let cache = Cache::builder()
        .clock(clock.clone())
        .memory(1 << 20)
        .build()
        .unwrap();
    let first = clocked(&cache, 1).await;
    clock.advance(Duration::from_secs(59));
    assert_eq!(clocked(&cache, 1).await, first, "fresh for 59 s");
    clock.advance(Duration::from_secs(1));
    assert_ne!(clocked(&cache, 1).await, first, "recomputed at 60 s");
}

#[tokio::test]
async fn default_ttl_applies_when_the_attribute_has_none() {
    #[cached(key = "no_ttl:{x}", cache = cache)]
    async fn no_ttl(cache: &Cache, x: u8) -> (u8, u64) {
        static N: AtomicUsize = AtomicUsize::new(0);
        (x, N.fetch_add(1, Ordering::SeqCst) as u64)
    }
    let clock = Clock::manual();
    let cache = Cache::builder()
        .clock(clock.clone())
        .memory(1 << 20)
        .default_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let a = no_ttl(&cache, 1).await;
    clock.advance(Duration::from_secs(9));
    assert_eq!(no_ttl(&cache, 1).await, a);
    clock.advance(Duration::from_secs(2));
    assert_ne!(no_ttl(&cache, 1).await, a);
}

/// One `#[cached(ttl = $text)]` function per accepted text of the shared
/// duration table, each checked against the runtime's URL parser: the
/// entry is fresh 1 ms before what `url::parse_duration` reads and gone at
/// it. (The texts both refuse are compile errors here: the trybuild cases
/// `bad-ttl-string`, `stale-bad-duration`, `every-error-at-once`.)
macro_rules! ttl_agrees_with_url_grammar {
    ($($text:tt),* $(,)?) => {{
        let mut fed = Vec::new();
        $({
            static RUNS: AtomicUsize = AtomicUsize::new(0);
            #[cached(key = "ttl_grammar:{x}", ttl = $text, cache = cache)]
            async fn probe(cache: &Cache, x: u8) -> usize {
                RUNS.fetch_add(1, Ordering::SeqCst) + usize::from(x)
            }
            let runtime = cacheruntime::url::parse_duration($text)
                .unwrap_or_else(|| panic!("the runtime refuses {:?}", $text));
            let clock = Clock::manual();
            let cache = Cache::builder()
                .clock(clock.clone())
                .memory(1 << 20)
                .build()
                .unwrap();
            let first = probe(&cache, 0).await;
            clock.advance(runtime - Duration::from_millis(1));
            assert_eq!(probe(&cache, 0).await, first, "ttl = {:?}: fresh just before {runtime:?}", $text);
            clock.advance(Duration::from_millis(1));
            assert_ne!(probe(&cache, 0).await, first, "ttl = {:?}: expired at {runtime:?}", $text);
            fed.push(($text, runtime));
        })*
        fed
    }};
}

#[tokio::test]
async fn macro_and_url_read_durations_alike() {
    let fed = ttl_agrees_with_url_grammar!(
        "300", "90s", "10m", "1h", "1h30m", "250ms", "500ms", "1d", "7d", "1m30s", "1s500ms",
        " 90s ",
    );
    // The table both crates test against: what the macro was fed is every
    // accepted text of it, with the value it lists; the runtime refuses the
    // rest, as the macro does.
    let accepted: Vec<(&str, Duration)> = cacheduration::EXAMPLES
        .iter()
        .filter_map(|&(text, d)| d.map(|d| (text, d)))
        .collect();
    assert_eq!(fed, accepted);
    for &(text, d) in cacheduration::EXAMPLES {
        assert_eq!(cacheruntime::url::parse_duration(text), d, "{text:?}");
    }
}

// ---------------------------------------------------------------- vary

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Embed {
    html: String,
}

#[cached(key = "embed:{url}", ttl = 86400, vary = user_id, cache = cache)]
async fn embed(cache: &Cache, url: &str, user_id: u64) -> Result<Embed, MyError> {
    Ok(Embed {
        html: format!("{url} for user {user_id}"),
    })
}

#[tokio::test]
async fn vary_isolates_users_and_one_prefix_clears_every_variant() {
    let cache = fresh();
    let a = embed(&cache, "https://x.test/a", 1).await.unwrap();
    let b = embed(&cache, "https://x.test/a", 2).await.unwrap();
    assert_eq!(a.html, "https://x.test/a for user 1");
    assert_eq!(b.html, "https://x.test/a for user 2");
    assert_eq!(embed(&cache, "https://x.test/a", 1).await.unwrap(), a);
    assert_eq!(cache.stats().hits, 1);

    embed_invalidate(&cache, "https://x.test/a").await.unwrap();
    let key1 = format!("{}:1", embed_cache_key("https://x.test/a"));
    let key2 = format!("{}:2", embed_cache_key("https://x.test/a"));
    assert_eq!(cache.get::<Embed>(&key1).await.unwrap(), None);
    assert_eq!(cache.get::<Embed>(&key2).await.unwrap(), None);
}

// ---------------------------------------------------------------- key injectivity

#[cached(key = "pair:{a}:{b}", ttl = 60, cache = cache)]
async fn pair(cache: &Cache, a: &str, b: &str) -> String {
    format!("{a}|{b}")
}

#[tokio::test]
async fn different_arguments_never_share_a_key() {
    let cache = fresh();
    assert_eq!(pair(&cache, "1:2", "3").await, "1:2|3");
    assert_eq!(pair(&cache, "1", "2:3").await, "1|2:3");
    assert_eq!(pair(&cache, "1%3A2", "3").await, "1%3A2|3");
    assert_eq!(pair(&cache, "1 2", "3").await, "1 2|3");
    let keys = [
        pair_cache_key("1:2", "3"),
        pair_cache_key("1", "2:3"),
        pair_cache_key("1%3A2", "3"),
        pair_cache_key("1 2", "3"),
    ];
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(' ')), "{keys:?}");
    assert_eq!(cache.stats().hits, 0);
}

// ---------------------------------------------------------------- Err, None

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "flaky:{n}", ttl = 60, cache = cache)]
async fn flaky(cache: &Cache, n: u32) -> Result<u32, MyError> {
    let run = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    if run == 0 {
        return Err(MyError("upstream down".into()));
    }
    let doubled: u32 = "2".parse::<u32>().map_err(|e| MyError(e.to_string()))? * n;
    Ok(doubled)
}

#[tokio::test]
async fn err_is_never_cached() {
    let cache = fresh();
    assert_eq!(flaky(&cache, 5).await, Err(MyError("upstream down".into())));
    assert_eq!(flaky(&cache, 5).await, Ok(10));
    assert_eq!(flaky(&cache, 5).await, Ok(10));
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
}

static LOOKUP_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "user:{email}", ttl = 60, cache = cache)]
async fn lookup_user(cache: &Cache, email: String) -> Option<u64> {
    LOOKUP_RUNS.fetch_add(1, Ordering::SeqCst);
    (email == "known@x.test").then_some(1)
}

#[tokio::test]
async fn none_is_cached() {
    let cache = fresh();
    assert_eq!(lookup_user(&cache, "nobody@x.test".into()).await, None);
    assert_eq!(lookup_user(&cache, "nobody@x.test".into()).await, None);
    assert_eq!(LOOKUP_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().hits, 1);
}

// ---------------------------------------------------------------- failing stores

#[derive(Debug, Clone, Copy)]
enum Failure {
    Error,
    Stall,
}

/// A store that always fails, the way a dead or wedged Redis would.
#[derive(Debug)]
struct BrokenBackend {
    failure: Failure,
    calls: AtomicUsize,
}

impl BrokenBackend {
    fn new(failure: Failure) -> Arc<Self> {
        Arc::new(BrokenBackend {
            failure,
            calls: AtomicUsize::new(0),
        })
    }

    fn fail<'a, T: Send + 'a>(&'a self) -> BoxFuture<'a, Result<T, Error>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failure = self.failure;
        Box::pin(async move {
            match failure {
                Failure::Error => Err(Error::backend("broken", "connection refused")),
                Failure::Stall => std::future::pending().await,
            }
        })
    }
}

impl Backend for BrokenBackend {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.fail()
    }
    fn set<'a>(
        &'a self,
        _key: &'a str,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.fail()
    }
    fn delete<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.fail()
    }
    fn invalidate_prefix<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.fail()
    }
}

#[cached(key = "price:{id}", ttl = 60, cache = cache)]
async fn price(cache: &Cache, id: u32) -> Result<u32, MyError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(id * 100)
}

#[tokio::test]
async fn erroring_store_falls_back_to_computing_and_counts_errors() {
    let store = BrokenBackend::new(Failure::Error);
    let cache = Cache::builder()
        .backend(store.clone())
        .circuit_breaker(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(price(&cache, 4).await, Ok(400));
    }
    let stats = cache.stats();
    // A call whose read failed does not write: it has no ticket to write
    // under, and an invalidation it cannot see must not be lost.
    assert_eq!(stats.errors, 3, "one failed get per call, no set");
    assert_eq!(stats.hits, 0);
    // The direct API reports the failure instead.
    assert!(matches!(
        cache.get::<u32>("price:4").await,
        Err(Error::Backend { .. })
    ));
}

#[tokio::test]
async fn stalled_store_costs_at_most_the_op_timeout_per_call() {
    let store = BrokenBackend::new(Failure::Stall);
    let cache = Cache::builder()
        .backend(store.clone())
        .op_timeout(Duration::from_millis(50))
        .circuit_breaker(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(price(&cache, 3).await, Ok(300));
    let took = started.elapsed();
    // get (50 ms timeout) + compute (20 ms), with slack; no lock, no set.
    assert!(took < Duration::from_millis(250), "{took:?}");
    assert!(matches!(
        cache.get::<u32>("price:3").await,
        Err(Error::Timeout { .. })
    ));
}

#[tokio::test]
async fn open_circuit_skips_a_dead_store_until_the_cool_down() {
    let store = BrokenBackend::new(Failure::Stall);
    let cache = Cache::builder()
        .backend(store.clone())
        .op_timeout(Duration::from_millis(30))
        .circuit_breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    // Two reads time out: open.
    assert_eq!(price(&cache, 1).await, Ok(100));
    assert_eq!(price(&cache, 1).await, Ok(100));
    let calls = store.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(price(&cache, 1).await, Ok(100));
    }
    assert_eq!(
        store.calls.load(Ordering::SeqCst),
        calls,
        "store not called"
    );
    // 20 computations of 20 ms, no timeouts.
    assert!(started.elapsed() < Duration::from_millis(20 * 20 + 300));
    assert!(cache.stats().circuit_skips >= 20);
}

// ---------------------------------------------------------------- single-flight

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "slow:{id}", ttl = 60, cache = cache)]
async fn slow(cache: &Cache, id: u32) -> Result<u64, MyError> {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(u64::from(id) * 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_compute_once() {
    static CACHE: LazyLock<Cache> =
        LazyLock::new(|| Cache::builder().memory(1 << 20).build().unwrap());
    let before = SLOW_RUNS.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async { slow(&CACHE, 9).await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(27));
    }
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst) - before, 1);
    let stats = CACHE.stats();
    assert_eq!(stats.computations, 1);
    assert_eq!(stats.coalesced, 999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_leader_hands_the_computation_to_a_waiter() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "cancel:{id}", ttl = 60, cache = cache)]
    async fn guarded(cache: &Cache, id: u32) -> u32 {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        id + 1
    }
    let cache = fresh();
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move { guarded(&cache, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiter = {
        let cache = cache.clone();
        tokio::spawn(async move { guarded(&cache, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("waiter is not stuck")
        .unwrap();
    assert_eq!(got, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "the waiter took over");
    assert_eq!(guarded(&cache, 1).await, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "and its value was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_compute_their_own_value_when_the_leader_errs() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "errs:{id}", ttl = 60, cache = cache)]
    async fn errs(cache: &Cache, id: u32) -> Result<u32, MyError> {
        let run = RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if run == 0 {
            Err(MyError("first fails".into()))
        } else {
            Ok(id)
        }
    }
    let cache = fresh();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { errs(&cache, 3).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(results.iter().filter(|r| **r == Ok(3)).count(), 4);
}

// ---------------------------------------------------------------- prefixes

#[cached(key = "author:{author_id}:bio", ttl = 600, cache = cache)]
async fn bio(cache: &Cache, author_id: i64) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("bio {author_id} #{}", N.fetch_add(1, Ordering::SeqCst))
}

#[tokio::test]
async fn prefix_invalidation_reaches_exactly_the_right_keys() {
    let cache = fresh();
    let _ = top_books(&cache, 42).await;
    let bio42 = bio(&cache, 42).await;
    let bio420 = bio(&cache, 420).await;
    let bio4 = bio(&cache, 4).await;
    cache
        .set("author:42", &"exact", Duration::from_secs(60))
        .await
        .unwrap();

    cache.invalidate_prefix("author:42:").await.unwrap();

    assert_eq!(
        cache.get::<Vec<i64>>("author:42:top_books").await.unwrap(),
        None
    );
    assert_ne!(bio(&cache, 42).await, bio42, "recomputed");
    assert_eq!(bio(&cache, 420).await, bio420, "author:420 untouched");
    assert_eq!(bio(&cache, 4).await, bio4, "author:4 untouched");
    assert_eq!(
        cache.get::<String>("author:42").await.unwrap().as_deref(),
        Some("exact")
    );

    let err = cache.invalidate_prefix("author:4").await.unwrap_err();
    assert!(matches!(err, Error::InvalidPrefix { .. }));
    assert!(err.to_string().contains("must end with ':'"), "{err}");

    cache.invalidate_prefix("").await.unwrap();
    assert_eq!(cache.get::<String>("author:42").await.unwrap(), None);
    assert_ne!(bio(&cache, 420).await, bio420);
}

#[tokio::test]
async fn namespaces_keep_caches_on_one_store_apart() {
    let store = Arc::new(MemoryBackend::new(1 << 20));
    let a = Cache::builder()
        .backend(store.clone())
        .namespace("a")
        .build()
        .unwrap();
    let b = Cache::builder()
        .backend(store.clone())
        .namespace("b")
        .build()
        .unwrap();
    a.set("k", &1u8, Duration::from_secs(60)).await.unwrap();
    b.set("k", &2u8, Duration::from_secs(60)).await.unwrap();
    a.invalidate_prefix("").await.unwrap();
    assert_eq!(a.get::<u8>("k").await.unwrap(), None);
    assert_eq!(b.get::<u8>("k").await.unwrap(), Some(2));
    assert!(Cache::builder().namespace("has space").build().is_err());
}

// ---------------------------------------------------------------- memory bound

#[tokio::test]
async fn memory_cap_holds_under_a_stream_of_distinct_keys() {
    #[cached(key = "blob:{i}", ttl = 600, cache = cache)]
    async fn blob(cache: &Cache, i: u32) -> Vec<u8> {
        vec![(i % 251) as u8; 2000]
    }
    let store = Arc::new(MemoryBackend::new(512 << 10));
    let cache = Cache::builder().backend(store.clone()).build().unwrap();
    for i in 0..5000 {
        assert_eq!(blob(&cache, i).await.len(), 2000);
        assert!(
            store.used_bytes() <= 512 << 10,
            "{} bytes at {i}",
            store.used_bytes()
        );
    }
    assert!(store.len() < 150, "{} entries in 512 KiB", store.len());
    // Recent entries are still served.
    let hits = cache.stats().hits;
    let _ = blob(&cache, 4999).await;
    assert_eq!(cache.stats().hits, hits + 1);
}

// ---------------------------------------------------------------- bad entries

#[tokio::test]
async fn corrupt_and_foreign_entries_are_misses_that_get_overwritten() {
    let store = Arc::new(MemoryBackend::new(1 << 20));
    let cache = Cache::builder().backend(store.clone()).build().unwrap();
    let ttl = Duration::from_secs(60);
    // Random bytes, a truncated envelope, and another type under the key.
    store
        .set(
            "author:1:top_books",
            Bytes::from_static(b"garbage"),
            ttl,
            None,
        )
        .await
        .unwrap();
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 2]));
    assert_eq!(cache.stats().decode_failures, 1);
    assert_eq!(top_books(&cache, 1).await, Ok(vec![1, 2]));
    assert_eq!(cache.stats().hits, 1, "overwritten with a good entry");

    cache
        .set("author:2:top_books", &"a string", ttl)
        .await
        .unwrap();
    assert_eq!(top_books(&cache, 2).await, Ok(vec![2, 3]));
    assert_eq!(cache.stats().decode_failures, 2);

    let good = store
        .get("author:2:top_books")
        .await
        .unwrap()
        .value
        .unwrap();
    store
        .set(
            "author:3:top_books",
            good.slice(..good.len() - 1),
            ttl,
            None,
        )
        .await
        .unwrap();
    assert_eq!(top_books(&cache, 3).await, Ok(vec![3, 4]));
    assert_eq!(cache.stats().decode_failures, 3);
}

#[tokio::test]
async fn version_bump_turns_old_entries_into_misses() {
    #[cached(key = "shape:{id}", ttl = 60, cache = cache)]
    async fn v1(cache: &Cache, id: u8) -> u8 {
        id
    }
    #[cached(key = "shape:{id}", ttl = 60, version = 2, cache = cache)]
    async fn v2(cache: &Cache, id: u8) -> u8 {
        id + 100
    }
    let cache = fresh();
    assert_eq!(v1(&cache, 1).await, 1);
    assert_eq!(v2(&cache, 1).await, 101, "not the version-0 entry");
}

#[tokio::test]
async fn oversize_values_are_returned_but_not_stored() {
    #[cached(key = "big:{n}", ttl = 60, cache = cache)]
    async fn big(cache: &Cache, n: usize) -> Vec<u8> {
        vec![1; n]
    }
    let cache = Cache::builder()
        .memory(8 << 20)
        .max_entry_bytes(1000)
        .build()
        .unwrap();
    assert_eq!(big(&cache, 5000).await.len(), 5000);
    assert_eq!(big(&cache, 5000).await.len(), 5000);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.oversize), (0, 2));
    assert_eq!(big(&cache, 10).await.len(), 10);
    assert_eq!(big(&cache, 10).await.len(), 10);
    assert_eq!(cache.stats().hits, 1);
}

// ---------------------------------------------------------------- shapes of functions

struct Catalog {
    shop_id: u32,
    cache: Cache,
}

impl Catalog {
    #[cached(key = "shop:{self.shop_id}:count:{kind}", ttl = 60, cache = self.cache)]
    async fn count(&self, kind: &str) -> usize {
        kind.len() + self.shop_id as usize
    }
}

#[tokio::test]
async fn methods_key_on_self_fields() {
    let catalog = Catalog {
        shop_id: 3,
        cache: fresh(),
    };
    assert_eq!(catalog.count("books").await, 8);
    assert_eq!(catalog.count("books").await, 8);
    assert_eq!(catalog.cache.stats().hits, 1);
    assert_eq!(catalog.count_cache_key("books"), "shop:3:count:books");
    catalog.count_invalidate("books").await.unwrap();
    assert_eq!(
        catalog
            .cache
            .get::<usize>("shop:3:count:books")
            .await
            .unwrap(),
        None
    );
}

#[cached(key = "generic:{id}", ttl = 60, cache = cache)]
async fn generic_default<T: Default + Serialize + serde::de::DeserializeOwned>(
    cache: &Cache,
    id: u32,
) -> T {
    let _ = id;
    T::default()
}

#[tokio::test]
async fn generic_functions_keep_types_apart() {
    let cache = fresh();
    let n: u64 = generic_default(&cache, 1).await;
    let s: String = generic_default(&cache, 1).await;
    assert_eq!((n, s.as_str()), (0, ""));
    let n: u64 = generic_default(&cache, 1).await;
    assert_eq!(n, 0);
    assert!(
        cache.stats().decode_failures >= 1,
        "same key, other type: a miss"
    );
}

// ---------------------------------------------------------------- default keys

/// Keys without a template: each function, impl type and generic
/// instantiation has its own, and the helpers render the function's own.
mod default_keys {
    use std::fmt::Display;
    use std::future::Future;

    use super::*;

    static IMPLS: LazyLock<Cache> = LazyLock::new(fresh);

    pub struct Users;
    pub struct Orders;

    impl Users {
        #[cached(ttl = 60, cache = *IMPLS)]
        pub async fn count(t: u64) -> u64 {
            1000 + t
        }
    }

    impl Orders {
        #[cached(ttl = 60, cache = *IMPLS)]
        pub async fn count(t: u64) -> u64 {
            2000 + t
        }
    }

    #[tokio::test]
    async fn default_keys_of_two_impls_never_share_entries() {
        assert_eq!(Users::count(7).await, 1007);
        assert_eq!(Orders::count(7).await, 2007, "not the Users entry");
        assert_eq!(Users::count(7).await, 1007);
        assert_eq!(Orders::count(7).await, 2007);
        let stats = IMPLS.stats();
        assert_eq!((stats.computations, stats.hits), (2, 2));
        // Readable, and the helpers render the function's own key.
        assert_default_key(
            &Users::count_cache_key(7),
            "cached.default_keys.Users.count",
            ":7",
        );
        assert_eq!(
            IMPLS.get::<u64>(&Orders::count_cache_key(7)).await.unwrap(),
            Some(2007)
        );
        Users::count_invalidate(7).await.unwrap();
        assert_eq!(
            IMPLS.get::<u64>(&Users::count_cache_key(7)).await.unwrap(),
            None
        );
        assert_eq!(Orders::count(7).await, 2007, "still cached");
        assert_eq!(IMPLS.stats().computations, 2);
    }

    static GENERICS: LazyLock<Cache> = LazyLock::new(fresh);

    pub trait Table {
        const ROWS: u64;
    }
    pub struct Books;
    pub struct Authors;
    impl Table for Books {
        const ROWS: u64 = 100;
    }
    impl Table for Authors {
        const ROWS: u64 = 200;
    }

    /// `T` is in no argument: only the instantiation tells the calls apart.
    #[cached(ttl = 60, cache = *GENERICS)]
    pub async fn row_count<T: Table>(shard: u64) -> u64 {
        T::ROWS + shard
    }

    #[tokio::test]
    async fn default_keys_of_two_generic_instantiations_never_share_entries() {
        assert_eq!(row_count::<Books>(3).await, 103);
        assert_eq!(row_count::<Authors>(3).await, 203, "not the Books entry");
        assert_eq!(row_count::<Books>(3).await, 103);
        assert_eq!(row_count::<Authors>(3).await, 203);
        let stats = GENERICS.stats();
        assert_eq!((stats.computations, stats.hits), (2, 2));
        assert_default_key(
            &row_count_cache_key::<Books>(3),
            "cached.default_keys.row_count<cached.default_keys.Books>",
            ":3",
        );
        row_count_invalidate::<Authors>(3).await.unwrap();
        assert_eq!(
            GENERICS
                .get::<u64>(&row_count_cache_key::<Authors>(3))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            GENERICS
                .get::<u64>(&row_count_cache_key::<Books>(3))
                .await
                .unwrap(),
            Some(103)
        );
    }

    static NESTED: LazyLock<Cache> = LazyLock::new(fresh);

    /// The future of a nested cached `inner`, and its key.
    fn outer_one(x: u32) -> (impl Future<Output = u32>, String) {
        #[cached(ttl = 60, cache = *NESTED)]
        async fn inner(x: u32) -> u32 {
            x + 100
        }
        (inner(x), inner_cache_key(x))
    }

    /// Another `inner`, nested in another function of the same module.
    fn outer_two(x: u32) -> (impl Future<Output = u32>, String) {
        #[cached(ttl = 60, cache = *NESTED)]
        async fn inner(x: u32) -> u32 {
            x + 200
        }
        (inner(x), inner_cache_key(x))
    }

    #[tokio::test]
    async fn default_keys_of_nested_functions_never_share_entries() {
        assert_eq!(outer_one(1).0.await, 101);
        assert_eq!(outer_two(1).0.await, 201, "not the other inner's entry");
        assert_eq!(outer_one(1).0.await, 101);
        assert_eq!(outer_two(1).0.await, 201);
        let stats = NESTED.stats();
        assert_eq!((stats.computations, stats.hits), (2, 2));
        let (one, two) = (outer_one(1).1, outer_two(1).1);
        assert_default_key(&one, "cached.default_keys.outer_one.inner", ":1");
        assert_eq!(NESTED.get::<u32>(&two).await.unwrap(), Some(201));
    }

    static SHAPES: LazyLock<Cache> = LazyLock::new(fresh);

    /// `'a` is early-bound (it is in a bound), so it shows in the path.
    #[cached(ttl = 60, cache = *SHAPES)]
    pub async fn early_bound<'a, T: Display + 'a>(name: &'a str, extra: T) -> String
    where
        &'a str: Send,
    {
        format!("{name}{extra}")
    }

    #[cached(ttl = 60, cache = *SHAPES)]
    pub async fn impl_trait(a: impl Display + Send, n: u8) -> String {
        format!("{a}{n}")
    }

    #[cached(ttl = 60, cache = *SHAPES)]
    pub async fn const_generic<const N: usize>(x: usize) -> usize {
        N + x
    }

    #[tokio::test]
    async fn default_key_helpers_render_the_functions_own_key() {
        assert_eq!(early_bound("a", 1u8).await, "a1");
        assert_eq!(impl_trait("b", 2).await, "b2");
        assert_eq!(const_generic::<3>(4).await, 7);
        assert_eq!(const_generic::<5>(4).await, 9);
        let early = early_bound_cache_key("a", 1u8);
        assert_eq!(
            SHAPES.get::<String>(&early).await.unwrap().as_deref(),
            Some("a1"),
            "{early}"
        );
        let imp = impl_trait_cache_key("b", 2);
        assert_eq!(
            SHAPES.get::<String>(&imp).await.unwrap().as_deref(),
            Some("b2"),
            "{imp}"
        );
        let three = const_generic_cache_key::<3>(4);
        assert_eq!(
            SHAPES.get::<usize>(&three).await.unwrap(),
            Some(7),
            "{three}"
        );
        const_generic_invalidate::<5>(4).await.unwrap();
        assert_eq!(
            SHAPES
                .get::<usize>(&const_generic_cache_key::<5>(4))
                .await
                .unwrap(),
            None
        );
        assert_eq!(SHAPES.get::<usize>(&three).await.unwrap(), Some(7));
    }
}

// ---------------------------------------------------------------- generic impls

/// The macro cannot see an enclosing impl's parameters: only the calls know
/// which type they store.
mod generic_impls {
    use std::marker::PhantomData;

    use serde::de::DeserializeOwned;

    use super::*;

    pub trait Fresh {
        fn fresh(id: u64) -> Self;
    }
    impl Fresh for u8 {
        fn fresh(id: u64) -> u8 {
            id as u8
        }
    }
    impl Fresh for u64 {
        fn fresh(id: u64) -> u64 {
            1_000_000 + id
        }
    }
    impl Fresh for String {
        fn fresh(id: u64) -> String {
            format!("row {id}")
        }
    }

    static REPO_TEMPLATE: LazyLock<Cache> = LazyLock::new(fresh);
    static REPO_DEFAULT: LazyLock<Cache> = LazyLock::new(fresh);

    pub struct Repo<T>(PhantomData<T>);

    impl<T: Fresh + Serialize + DeserializeOwned> Repo<T> {
        #[cached(key = "repo:{id}", ttl = 60, cache = *REPO_TEMPLATE)]
        pub async fn get(id: u64) -> T {
            T::fresh(id)
        }

        #[cached(ttl = 60, cache = *REPO_DEFAULT)]
        pub async fn get_default(id: u64) -> T {
            T::fresh(id)
        }
    }

    #[tokio::test]
    async fn one_key_in_a_generic_impl_never_serves_another_types_value() {
        assert_eq!(Repo::<u8>::get(1).await, 1);
        // Same key, other type: a miss that overwrites, never the u8 entry
        // read as a u64 (bincode's 1u8 decodes as 1u64).
        assert_eq!(Repo::<u64>::get(1).await, 1_000_001);
        assert_eq!(Repo::<String>::get(1).await, "row 1");
        assert_eq!(Repo::<String>::get(1).await, "row 1");
        let stats = REPO_TEMPLATE.stats();
        assert_eq!((stats.computations, stats.hits), (3, 1));
    }

    #[tokio::test]
    async fn default_keys_of_a_generic_impl_never_share_entries() {
        assert_eq!(Repo::<u8>::get_default(2).await, 2);
        assert_eq!(Repo::<u64>::get_default(2).await, 1_000_002);
        assert_eq!(Repo::<u8>::get_default(2).await, 2);
        assert_eq!(Repo::<u64>::get_default(2).await, 1_000_002);
        let stats = REPO_DEFAULT.stats();
        assert_eq!((stats.computations, stats.hits), (2, 2));
        assert_default_key(
            &Repo::<u64>::get_default_cache_key(2),
            "cached.generic_impls.Repo<u64>.get_default",
            ":2",
        );
        assert_eq!(
            REPO_DEFAULT
                .get::<u8>(&Repo::<u8>::get_default_cache_key(2))
                .await
                .unwrap(),
            Some(2)
        );
    }
}

mod defaults {
    use super::*;

    #[derive(Clone, Copy)]
    pub struct Point {
        pub x: i32,
        pub y: i32,
    }

    #[cached(key = "point:{p.x}:{p.y}", ttl = 60)]
    pub async fn norm(p: Point) -> i64 {
        i64::from(p.x * p.x + p.y * p.y)
    }

    #[cached(ttl = 60)]
    pub async fn area(w: u32, h: u32) -> u64 {
        u64::from(w) * u64::from(h)
    }

    static FEED_RUNS: AtomicUsize = AtomicUsize::new(0);

    #[cached(key = "feed:{url}", ttl = 60, cache = "feeds")]
    pub async fn feed(url: &str) -> String {
        format!(
            "feed {url} #{}",
            FEED_RUNS.fetch_add(1, Ordering::SeqCst) + 1
        )
    }
}

static SHARED: LazyLock<Arc<Cache>> = LazyLock::new(|| Arc::new(fresh()));
static THIRD_PARTY: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

#[cached(key = "arc:{x}", ttl = 60, cache = SHARED)]
async fn via_arc(x: u8) -> u8 {
    x
}

#[cached(key = "feed:{feed_id}", ttl = 600, cache = THIRD_PARTY.get().unwrap())]
async fn feed(feed_id: u32) -> Result<String, MyError> {
    Ok(format!("<rss id={feed_id}/>"))
}

#[tokio::test]
async fn cache_expression_accepts_cache_refs_and_arcs() {
    assert_eq!(via_arc(1).await, 1);
    assert_eq!(via_arc(1).await, 1);
    assert_eq!(SHARED.stats().hits, 1);
    let _ = THIRD_PARTY.set(fresh());
    assert_eq!(feed(5).await.unwrap(), "<rss id=5/>");
    assert_eq!(feed(5).await.unwrap(), "<rss id=5/>");
    assert_eq!(THIRD_PARTY.get().unwrap().stats().hits, 1);
}

#[tokio::test]
async fn disabled_cache_computes_every_call() {
    static N: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "off:{x}", ttl = 60, cache = cache)]
    async fn off(cache: &Cache, x: u8) -> u8 {
        N.fetch_add(1, Ordering::SeqCst);
        x
    }
    let cache = Cache::disabled();
    for _ in 0..3 {
        assert_eq!(off(&cache, 1).await, 1);
    }
    assert_eq!(N.load(Ordering::SeqCst), 3);
    cache.set("k", &1u8, Duration::from_secs(1)).await.unwrap();
    assert_eq!(cache.get::<u8>("k").await.unwrap(), None);
}

// ---------------------------------------------------------------- direct API and URLs

#[tokio::test]
async fn get_or_compute_serves_code_without_the_macro() {
    let cache = fresh();
    let policy = Policy::new().ttl(Duration::from_secs(30));
    let v: Vec<String> = cache
        .get_or_compute("tags:1", &policy, || async { vec!["a".to_string()] })
        .await;
    let again: Vec<String> = cache
        .get_or_compute("tags:1", &policy, || async { unreachable!("cached") })
        .await;
    assert_eq!(v, again);
    let err: Result<u8, &str> = cache
        .try_get_or_compute("t:2", &policy, || async { Err("no") })
        .await;
    assert_eq!(err, Err("no"));
    let ok: Result<u8, &str> = cache
        .try_get_or_compute("t:2", &policy, || async { Ok(2) })
        .await;
    assert_eq!(ok, Ok(2));
    cache.delete("t:2").await.unwrap();
    assert_eq!(cache.get::<u8>("t:2").await.unwrap(), None);
}

#[tokio::test]
async fn urls_build_caches_and_reject_mistakes_with_the_fix() {
    let c = Cache::from_url("memory://?max_bytes=1048576&namespace=app&default_ttl=90s")
        .await
        .unwrap();
    assert_eq!(c.backend_name(), "memory");
    assert_eq!(c.default_ttl(), Duration::from_secs(90));
    assert!(!Cache::from_url("none://").await.unwrap().is_enabled());

    let err = Cache::from_url("memory://?max_byte=1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown query parameter `max_byte`") && err.contains("max_bytes"),
        "{err}"
    );
    let err = Cache::from_url("memory://?op_timeout=soon")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a duration"), "{err}");
    let err = Cache::from_url("ftp://x").await.unwrap_err().to_string();
    assert!(err.contains("unknown scheme"), "{err}");
    // Built (with the `redis` feature) or refused (without it): either way
    // the password never shows.
    let built = Cache::from_url("redis://user:hunter2@localhost:6379").await;
    let shown = match &built {
        Ok(cache) => format!("{cache:?}"),
        Err(err) => format!("{err} {err:?}"),
    };
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("localhost"), "{shown}");
}

#[tokio::test]
async fn from_env_defaults_to_memory() {
    // CACHE_URL is not set in the test environment.
    if std::env::var_os("CACHE_URL").is_none() {
        assert_eq!(Cache::from_env().await.unwrap().backend_name(), "memory");
    }
}

#[tokio::test]
async fn default_cache_and_default_key_work_until_set_default_replaces_them() {
    // One test, since set_default changes process-wide state.
    use defaults::*;
    assert_eq!(norm(Point { x: 3, y: 4 }).await, 25);
    assert_eq!(norm(Point { x: 3, y: 4 }).await, 25);
    assert_eq!(area(2, 3).await, 6);
    assert_eq!(area(2, 3).await, 6);
    // Stable across processes: module path, name, the attribute's place and
    // Display of each arg.
    assert_default_key(&area_cache_key(2, 3), "cached.defaults.area", ":2:3");
    assert_eq!(norm_cache_key(Point { x: 3, y: 4 }), "point:3:4");
    let process_cache = cacheruntime::__private::default_cache();
    assert_eq!(
        process_cache
            .get::<u64>(&area_cache_key(2, 3))
            .await
            .unwrap(),
        Some(6)
    );
    assert!(process_cache.stats().hits >= 2);

    let mine = Cache::memory();
    cacheruntime::set_default(mine.clone());
    assert_eq!(area(7, 7).await, 49);
    assert_eq!(area(7, 7).await, 49);
    assert_eq!((mine.stats().hits, mine.stats().misses), (1, 1));
    area_invalidate(7, 7).await.unwrap();
    assert_eq!(mine.get::<u64>(&area_cache_key(7, 7)).await.unwrap(), None);

    // Named caches, in the same test (installing them sets the default).
    // Before any install, a named function computes without a cache and
    // counts the error in the default cache.
    let errors = mine.stats().errors;
    assert_eq!(defaults::feed("a").await, "feed a #1");
    assert_eq!(defaults::feed("a").await, "feed a #2", "no cache: computed");
    assert_eq!(
        mine.stats().errors,
        errors + 1,
        "counted once, not per call"
    );
    let feeds = Cache::memory();
    let main_cache = Cache::memory();
    cacheruntime::Caches::builder()
        .default(main_cache.clone())
        .add("feeds", feeds.clone())
        .build()
        .unwrap()
        .install();
    assert_eq!(defaults::feed("a").await, "feed a #3");
    assert_eq!(defaults::feed("a").await, "feed a #3", "a hit in `feeds`");
    assert_eq!((feeds.stats().hits, feeds.stats().misses), (1, 1));
    assert_eq!(
        main_cache.stats().calls(),
        0,
        "nothing in the default cache"
    );
    defaults::feed_invalidate("a").await.unwrap();
    assert_eq!(
        defaults::feed("a").await,
        "feed a #4",
        "invalidated in `feeds`"
    );
    assert_eq!(area(8, 8).await, 64);
    assert_eq!(
        main_cache.stats().misses,
        1,
        "the default is the installed one"
    );
    // Installed again without `feeds`: an error listing what there is.
    cacheruntime::Caches::builder()
        .default(main_cache.clone())
        .add("oembed", Cache::memory())
        .build()
        .unwrap()
        .install();
    let errors = main_cache.stats().errors;
    assert_eq!(defaults::feed("a").await, "feed a #5");
    assert_eq!(defaults::feed("a").await, "feed a #6");
    assert_eq!(main_cache.stats().errors, errors + 1);
    let e = cacheruntime::Caches::installed()
        .unwrap()
        .get("feeds")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("default, oembed") && e.contains("CACHE_URL_FEEDS"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_after_an_invalidation_never_join_a_computation_from_before_it() {
    let cache = fresh();
    let version = Arc::new(AtomicUsize::new(1));
    let slow = {
        let cache = cache.clone();
        let version = version.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute("doc:9:body", &Policy::new(), || async move {
                    let v = version.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    v
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    version.store(2, Ordering::SeqCst);
    cache.invalidate_prefix("doc:9:").await.unwrap();
    let after: usize = cache
        .get_or_compute("doc:9:body", &Policy::new(), || {
            let version = version.clone();
            async move { version.load(Ordering::SeqCst) }
        })
        .await;
    assert_eq!(
        after, 2,
        "not the in-flight value computed before the invalidation"
    );
    assert_eq!(
        slow.await.unwrap(),
        1,
        "the earlier caller keeps its own answer"
    );
    let stored: Option<usize> = cache.get("doc:9:body").await.unwrap();
    assert_ne!(
        stored,
        Some(1),
        "the stale computation was not stored visibly"
    );
}

#[tokio::test]
async fn long_keys_round_trip_and_invalidate_in_memory() {
    support::long_keys_round_trip_and_invalidate(&fresh()).await;
    let namespaced = Cache::builder().namespace("app").build().unwrap();
    support::long_keys_round_trip_and_invalidate(&namespaced).await;
}

// ---------------------------------------------------------------- ids, not objects

mod ids {
    use std::time::Duration;

    use cacheruntime::{cached, Cache, CacheId, Clock};
    use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

    #[derive(Debug, Clone, PartialEq)]
    struct Book {
        id: i64,
        title: String,
        price: i64,
    }

    impl CacheId for Book {
        type Id = i64;
        fn cache_id(&self) -> i64 {
            self.id
        }
    }

    #[derive(Debug)]
    struct ShopError(String);

    impl From<sqlx::Error> for ShopError {
        fn from(e: sqlx::Error) -> Self {
            ShopError(e.to_string())
        }
    }

    type Row = (i64, String, i64);

    fn book((id, title, price): Row) -> Book {
        Book { id, title, price }
    }

    impl Book {
        /// By id, in id order (not the order asked for).
        async fn by_ids(pool: &SqlitePool, ids: &[i64]) -> Result<Vec<Book>, sqlx::Error> {
            count(pool, "hydrations").await?;
            let marks = vec!["?"; ids.len()].join(",");
            let sql =
                format!("SELECT id, title, price FROM books WHERE id IN ({marks}) ORDER BY id");
            let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
            for id in ids {
                query = query.bind(id);
            }
            Ok(query.fetch_all(pool).await?.into_iter().map(book).collect())
        }

        async fn one(pool: &SqlitePool, id: i64) -> Result<Option<Book>, sqlx::Error> {
            let row = sqlx::query_as::<_, Row>("SELECT id, title, price FROM books WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(book))
        }
    }

    /// Counts calls in the test's own database, so tests running at once
    /// do not see each other's.
    async fn count(pool: &SqlitePool, name: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE counts SET n = n + 1 WHERE name = ?")
            .bind(name)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn counted(pool: &SqlitePool, name: &str) -> i64 {
        sqlx::query_as::<_, (i64,)>("SELECT n FROM counts WHERE name = ?")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap()
            .0
    }

    /// The expensive part: which books, in which order.
    #[cached(
        key = "shop:author:{author_id}:top",
        ttl = 3600,
        cache = cache,
        skip = [pool],
        ids = |ids| Book::by_ids(pool, &ids)
    )]
    async fn top_books(
        cache: &Cache,
        pool: &SqlitePool,
        author_id: i64,
    ) -> Result<Vec<Book>, ShopError> {
        count(pool, "rankings").await?;
        let rows = sqlx::query_as::<_, Row>(
            "SELECT id, title, price FROM books WHERE author_id = ? ORDER BY sales DESC",
        )
        .bind(author_id)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(book).collect())
    }

    /// One object, hydrated by a one-row loader (`Option` rows).
    #[cached(key = "shop:book:{id}", ttl = 3600, cache = cache, skip = [pool], ids = |ids| Book::one(pool, ids[0]))]
    async fn find_book(
        cache: &Cache,
        pool: &SqlitePool,
        id: i64,
    ) -> Result<Option<Book>, ShopError> {
        count(pool, "lookups").await?;
        Ok(Book::one(pool, id).await?)
    }

    async fn shop() -> SqlitePool {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER, title TEXT, price INTEGER, sales INTEGER)",
        )
        .execute(&pool)
        .await
        .unwrap();
        exec(
            &pool,
            "CREATE TABLE counts (name TEXT PRIMARY KEY, n INTEGER)",
        )
        .await;
        exec(
            &pool,
            "INSERT INTO counts VALUES ('rankings', 0), ('lookups', 0), ('hydrations', 0)",
        )
        .await;
        for (id, title, price, sales) in [
            (1, "Emma", 10, 50),
            (2, "Persuasion", 12, 10),
            (3, "Sanditon", 9, 90),
        ] {
            sqlx::query("INSERT INTO books VALUES (?, 1, ?, ?, ?)")
                .bind(id)
                .bind(title)
                .bind(price)
                .bind(sales)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool
    }

    async fn exec(pool: &SqlitePool, sql: &'static str) {
        sqlx::query(sql).execute(pool).await.unwrap();
    }

    fn titles(books: &[Book]) -> Vec<&str> {
        books.iter().map(|b| b.title.as_str()).collect()
    }

    fn fresh() -> Cache {
        Cache::builder().memory(1 << 20).build().unwrap()
    }

    #[tokio::test]
    async fn a_hit_stores_only_ids_and_keeps_the_ranked_order() {
        let (cache, pool) = (fresh(), shop().await);
        let ranked = top_books(&cache, &pool, 1).await.unwrap();
        assert_eq!(titles(&ranked), ["Sanditon", "Emma", "Persuasion"]);
        // What is stored is the ids, in rank order.
        assert_eq!(
            cache.get::<Vec<i64>>("shop:author:1:top").await.unwrap(),
            Some(vec![3, 1, 2])
        );
        // The hydrator returns rows in id order; the hit puts them back.
        let hit = top_books(&cache, &pool, 1).await.unwrap();
        assert_eq!(hit, ranked);
    }

    #[tokio::test]
    async fn an_updated_row_shows_its_new_value_without_rerunning_the_body() {
        let (cache, pool) = (fresh(), shop().await);
        top_books(&cache, &pool, 1).await.unwrap();
        let rankings = counted(&pool, "rankings").await;
        exec(
            &pool,
            "UPDATE books SET price = 99, title = 'Emma (2nd ed.)' WHERE id = 1",
        )
        .await;
        let hit = top_books(&cache, &pool, 1).await.unwrap();
        assert_eq!(hit[1].price, 99);
        assert_eq!(hit[1].title, "Emma (2nd ed.)");
        // A sales change does not reorder until the ids are invalidated.
        assert_eq!(counted(&pool, "rankings").await, rankings);
    }

    #[tokio::test]
    async fn a_deleted_row_disappears_and_the_rest_keep_their_order() {
        let (cache, pool) = (fresh(), shop().await);
        top_books(&cache, &pool, 1).await.unwrap();
        exec(&pool, "DELETE FROM books WHERE id = 1").await;
        let hit = top_books(&cache, &pool, 1).await.unwrap();
        assert_eq!(titles(&hit), ["Sanditon", "Persuasion"]);
    }

    #[tokio::test]
    async fn the_hydrators_error_is_the_functions_error_and_is_not_cached() {
        let (cache, pool) = (fresh(), shop().await);
        top_books(&cache, &pool, 1).await.unwrap();
        exec(&pool, "ALTER TABLE books RENAME TO books_away").await;
        let err = top_books(&cache, &pool, 1).await.unwrap_err();
        assert!(err.0.contains("no such table"), "{err:?}");
        exec(&pool, "ALTER TABLE books_away RENAME TO books").await;
        let rankings = counted(&pool, "rankings").await;
        let hit = top_books(&cache, &pool, 1).await.unwrap();
        assert_eq!(titles(&hit), ["Sanditon", "Emma", "Persuasion"]);
        // The stored ids survived the failed hydration.
        assert_eq!(counted(&pool, "rankings").await, rankings);
    }

    #[tokio::test]
    async fn an_empty_result_skips_the_hydrator() {
        let (cache, pool) = (fresh(), shop().await);
        assert!(top_books(&cache, &pool, 42).await.unwrap().is_empty());
        assert!(top_books(&cache, &pool, 42).await.unwrap().is_empty());
        assert_eq!(
            cache.get::<Vec<i64>>("shop:author:42:top").await.unwrap(),
            Some(vec![])
        );
        assert_eq!(counted(&pool, "hydrations").await, 0);
    }

    #[tokio::test]
    async fn a_single_object_is_hydrated_fresh_and_vanishes_when_deleted() {
        let (cache, pool) = (fresh(), shop().await);
        let first = find_book(&cache, &pool, 2).await.unwrap().unwrap();
        assert_eq!(first.price, 12);
        let lookups = counted(&pool, "lookups").await;
        assert_eq!(
            cache.get::<Option<i64>>("shop:book:2").await.unwrap(),
            Some(Some(2))
        );
        exec(&pool, "UPDATE books SET price = 15 WHERE id = 2").await;
        assert_eq!(
            find_book(&cache, &pool, 2).await.unwrap().unwrap().price,
            15
        );
        exec(&pool, "DELETE FROM books WHERE id = 2").await;
        assert_eq!(find_book(&cache, &pool, 2).await.unwrap(), None);
        assert_eq!(counted(&pool, "lookups").await, lookups);
        // A missing object is cached as no id.
        assert_eq!(find_book(&cache, &pool, 404).await.unwrap(), None);
        assert_eq!(
            cache.get::<Option<i64>>("shop:book:404").await.unwrap(),
            Some(None)
        );
    }

    /// Owned arguments: the body borrows them, so the hydrator can still
    /// use them when another caller's computation (or the store) answers.
    #[cached(key = "shop:owned:{author_id}", ttl = 3600, cache = cache, skip = [pool], ids = |ids| Book::by_ids(&pool, &ids))]
    async fn owned_top(
        cache: Cache,
        pool: SqlitePool,
        author_id: i64,
    ) -> Result<Vec<Book>, ShopError> {
        top_books(&cache, &pool, author_id).await
    }

    /// `stale` refreshes in a spawned task that owns clones of the
    /// arguments; stale hits hydrate with the originals.
    #[cached(
        key = "shop:stale:{author_id}",
        ttl = 60,
        stale = 3600,
        cache = cache,
        skip = [pool],
        ids = |ids| Book::by_ids(&pool, &ids)
    )]
    async fn stale_top(
        cache: Cache,
        pool: SqlitePool,
        author_id: i64,
    ) -> Result<Vec<Book>, ShopError> {
        count(&pool, "rankings").await?;
        let rows = sqlx::query_as::<_, Row>(
            "SELECT id, title, price FROM books WHERE author_id = ? ORDER BY sales DESC",
        )
        .bind(author_id)
        .fetch_all(&pool)
        .await?;
        Ok(rows.into_iter().map(book).collect())
    }

    #[tokio::test]
    async fn owned_arguments_are_still_there_for_the_hydrator() {
        let (cache, pool) = (fresh(), shop().await);
        let calls = (0..4).map(|_| owned_top(cache.clone(), pool.clone(), 1));
        for r in futures::future::join_all(calls).await {
            assert_eq!(titles(&r.unwrap()), ["Sanditon", "Emma", "Persuasion"]);
        }
        exec(&pool, "UPDATE books SET title = 'Emma!' WHERE id = 1").await;
        let hit = owned_top(cache.clone(), pool.clone(), 1).await.unwrap();
        assert_eq!(titles(&hit), ["Sanditon", "Emma!", "Persuasion"]);
    }

    #[tokio::test]
    async fn a_stale_hit_hydrates_fresh_rows_while_the_ranking_refreshes() {
        let clock = Clock::manual();
        let cache = Cache::builder()
            .clock(clock.clone())
            .memory(1 << 20)
            .build()
            .unwrap();
        let pool = shop().await;
        stale_top(cache.clone(), pool.clone(), 1).await.unwrap();
        // Sales move Persuasion to the top, and Emma's price changes.
        exec(&pool, "UPDATE books SET sales = 1000 WHERE id = 2").await;
        exec(&pool, "UPDATE books SET price = 11 WHERE id = 1").await;
        clock.advance(Duration::from_secs(61));
        // Served stale (the old order) at once, with today's price...
        let stale = stale_top(cache.clone(), pool.clone(), 1).await.unwrap();
        assert_eq!(titles(&stale), ["Sanditon", "Emma", "Persuasion"]);
        assert_eq!(stale[1].price, 11);
        // ...while one background refresh re-ranks.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = stale_top(cache.clone(), pool.clone(), 1).await.unwrap();
            if titles(&now) == ["Persuasion", "Sanditon", "Emma"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never refreshed: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counted(&pool, "rankings").await, 2);
    }

    #[tokio::test]
    async fn concurrent_cold_callers_run_the_ranking_once_and_agree() {
        let (cache, pool) = (fresh(), shop().await);
        let before = counted(&pool, "rankings").await;
        let calls = (0..8).map(|_| top_books(&cache, &pool, 1));
        let results = futures::future::join_all(calls).await;
        for r in &results {
            assert_eq!(
                titles(r.as_ref().unwrap()),
                ["Sanditon", "Emma", "Persuasion"]
            );
        }
        assert_eq!(counted(&pool, "rankings").await - before, 1);
    }
}

// ---------------------------------------------------------------- default keys in blocks

/// Two functions of one name in two blocks of one function have the same
/// path (type names do not show blocks): the attribute's place in the file
/// tells their default keys apart.
async fn two_blocks(x: u32) -> (u32, u32) {
    let a = {
        #[cacheruntime::cached(ttl = 60)]
        async fn inner(x: u32) -> u32 {
            x + 1
        }
        inner(x).await
    };
    let b = {
        #[cacheruntime::cached(ttl = 60)]
        async fn inner(x: u32) -> u32 {
            x + 1000
        }
        inner(x).await
    };
    (a, b)
}

#[tokio::test]
async fn same_named_functions_in_sibling_blocks_never_share_default_keys() {
    assert_eq!(two_blocks(1).await, (2, 1001));
}

/// A memory store whose first `fails` invalidations fail, and whose
/// invalidations take `slow` each.
#[derive(Debug)]
struct FlakyInvalidation {
    inner: MemoryBackend,
    fails: AtomicUsize,
    slow: Duration,
}

impl Backend for FlakyInvalidation {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.inner.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.set(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.inner.delete(key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.slow).await;
            let left = self.fails.load(Ordering::SeqCst);
            if left > 0 {
                self.fails.store(left - 1, Ordering::SeqCst);
                return Err(Error::backend("flaky", "connection reset"));
            }
            self.inner.invalidate_prefix(prefix).await
        })
    }
}

/// The write behind `invalidate_after` already happened: a failed
/// invalidation does not fail it, and is retried until it lands.
#[tokio::test]
async fn a_failed_invalidation_after_a_commit_returns_the_commit_and_lands_later() {
    let cache = Cache::builder()
        .backend(FlakyInvalidation {
            inner: MemoryBackend::new(1 << 20),
            fails: AtomicUsize::new(2),
            slow: Duration::ZERO,
        })
        .circuit_breaker(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    cache
        .set("p:1:x", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    let committed = cache
        .invalidate_after(async { "committed" }, &["p:1:"])
        .await
        .unwrap();
    assert_eq!(committed, "committed");
    assert_eq!(cache.stats().errors, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get::<u8>("p:1:x").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the invalidation never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A malformed prefix is refused before the commit runs.
    let ran = AtomicUsize::new(0);
    let refused = cache
        .invalidate_after(async { ran.fetch_add(1, Ordering::SeqCst) }, &["p:1"])
        .await;
    assert!(matches!(refused, Err(Error::InvalidPrefix { .. })));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

/// A caller dropped after the commit (a client gone, a timeout layer) does
/// not cancel the invalidation of what the commit changed; and a prefix the
/// store would refuse is refused before the commit runs.
#[tokio::test]
async fn invalidate_after_survives_its_caller_and_refuses_before_the_commit() {
    let cache = Cache::builder()
        .backend(FlakyInvalidation {
            inner: MemoryBackend::new(1 << 20),
            fails: AtomicUsize::new(0),
            slow: Duration::from_millis(200),
        })
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    cache
        .set("q:1:x", &1u8, Duration::from_secs(60))
        .await
        .unwrap();
    let committed = Arc::new(AtomicUsize::new(0));
    let c = committed.clone();
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        cache.invalidate_after(async move { c.fetch_add(1, Ordering::SeqCst) }, &["q:1:"]),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the caller gave up during the invalidation"
    );
    assert_eq!(committed.load(Ordering::SeqCst), 1, "the commit ran");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get::<u8>("q:1:x").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the invalidation was cancelled with its caller"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything, without a namespace, on a shared store: refused first.
    let ran = AtomicUsize::new(0);
    let refused = cache
        .invalidate_after(async { ran.fetch_add(1, Ordering::SeqCst) }, &[""])
        .await;
    assert!(
        matches!(refused, Err(Error::NamespaceRequired { .. })),
        "{refused:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the commit did not run");
}
