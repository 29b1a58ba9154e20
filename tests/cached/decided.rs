//! TTLs and storing decided per computation: `ttl` and `stale` as
//! expressions (evaluated when the value is computed, arguments in scope),
//! `ttl = |value| ..`, and `unless = |value| ..`.

use super::*;

fn clocked_cache() -> (Cache, Clock) {
    let clock = Clock::manual();
    let cache = Cache::builder()
        .clock(clock.clone())
        .memory(1 << 20)
        .build()
        .unwrap();
    (cache, clock)
}

const FEED_TTL: Duration = Duration::from_secs(30);

fn settings_ttl(kind: &str) -> u64 {
    if kind == "slow" {
        120
    } else {
        10
    }
}

#[tokio::test]
async fn ttl_expressions_are_evaluated_with_the_arguments_in_scope() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "feed:{kind}", ttl = settings_ttl(&kind), cache = cache)]
    async fn feed(cache: &Cache, kind: String) -> usize {
        RUNS.fetch_add(1, Ordering::SeqCst)
    }
    #[cached(key = "const_feed", ttl = FEED_TTL, cache = cache)]
    async fn const_feed(cache: &Cache) -> usize {
        RUNS.fetch_add(1, Ordering::SeqCst)
    }
    let (cache, clock) = clocked_cache();
    let slow = feed(&cache, "slow".into()).await;
    let fast = feed(&cache, "fast".into()).await;
    let constant = const_feed(&cache).await;
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        const_feed(&cache).await,
        constant,
        "FEED_TTL: fresh at 29 s"
    );
    assert_ne!(feed(&cache, "fast".into()).await, fast, "10 s for fast");
    assert_eq!(feed(&cache, "slow".into()).await, slow, "120 s for slow");
    clock.advance(Duration::from_secs(1));
    assert_ne!(const_feed(&cache).await, constant, "FEED_TTL: gone at 30 s");
    clock.advance(Duration::from_secs(90));
    assert_ne!(feed(&cache, "slow".into()).await, slow, "gone at 120 s");
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Token {
    value: u32,
    expires_in: u64,
}

#[tokio::test]
async fn a_ttl_taken_from_the_value_and_zero_means_not_stored() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "token:{scope}", ttl = |t| t.expires_in, cache = cache)]
    async fn token(cache: &Cache, scope: u8) -> Result<Token, Error> {
        let value = RUNS.fetch_add(1, Ordering::SeqCst) as u32;
        // Scope 0 hands out tokens that expire at once: never stored.
        let expires_in = if scope == 0 { 0 } else { 60 };
        Ok(Token { value, expires_in })
    }
    let (cache, clock) = clocked_cache();
    let first = token(&cache, 1).await.unwrap();
    clock.advance(Duration::from_secs(59));
    assert_eq!(token(&cache, 1).await.unwrap(), first, "fresh for its 60 s");
    clock.advance(Duration::from_secs(1));
    assert_ne!(token(&cache, 1).await.unwrap(), first, "gone at 60 s");
    let a = token(&cache, 0).await.unwrap();
    let b = token(&cache, 0).await.unwrap();
    assert_ne!(a, b, "a zero TTL is not stored");
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn unless_keeps_a_value_out_of_the_cache_and_errors_stay_out_too() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[cached(key = "items:{page}", ttl = 60, unless = |items| items.is_empty(), cache = cache)]
    async fn items(cache: &Cache, page: u32) -> Vec<u32> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        if page == 0 {
            Vec::new()
        } else {
            vec![page]
        }
    }
    #[cached(key = "flaky:{n}", ttl = 60, unless = |v: &u32| *v == 0, cache = cache)]
    async fn flaky(cache: &Cache, n: u32) -> Result<u32, String> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        if n == 9 {
            Err("upstream down".into())
        } else {
            Ok(n)
        }
    }
    let (cache, _clock) = clocked_cache();
    let before = RUNS.load(Ordering::SeqCst);
    assert_eq!(items(&cache, 0).await, Vec::<u32>::new());
    assert_eq!(items(&cache, 0).await, Vec::<u32>::new());
    assert_eq!(RUNS.load(Ordering::SeqCst) - before, 2, "empty: not stored");
    assert_eq!(items(&cache, 3).await, vec![3]);
    assert_eq!(items(&cache, 3).await, vec![3]);
    assert_eq!(RUNS.load(Ordering::SeqCst) - before, 3, "non-empty: stored");
    assert_eq!(flaky(&cache, 0).await, Ok(0));
    assert_eq!(flaky(&cache, 0).await, Ok(0));
    assert_eq!(flaky(&cache, 9).await, Err("upstream down".into()));
    assert_eq!(flaky(&cache, 9).await, Err("upstream down".into()));
    assert_eq!(flaky(&cache, 5).await, Ok(5));
    assert_eq!(flaky(&cache, 5).await, Ok(5));
    assert_eq!(
        RUNS.load(Ordering::SeqCst) - before,
        8,
        "only Ok(5) was stored"
    );
}

#[tokio::test]
async fn a_stale_window_from_an_expression_serves_stale_while_refreshing() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn window() -> Duration {
        Duration::from_secs(100)
    }
    #[cached(key = "rates", ttl = 10, stale = window(), cache = cache)]
    async fn rates(cache: Cache) -> usize {
        RUNS.fetch_add(1, Ordering::SeqCst)
    }
    let (cache, clock) = clocked_cache();
    let first = rates(cache.clone()).await;
    clock.advance(Duration::from_secs(50));
    assert_eq!(rates(cache.clone()).await, first, "stale at 50 s, served");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().refreshes == 0 || RUNS.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the refresh never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The refresh stored its value with the same decided window.
    assert_ne!(rates(cache.clone()).await, first, "the refreshed value");
    assert_eq!(cache.stats().stale_hits, 1);
}

static UPSTREAM_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static FEED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "sie:{name}", ttl = 10, stale_if_error = 100, cache = cache)]
async fn flaky_feed(cache: &Cache, name: &str) -> Result<String, String> {
    let n = FEED_RUNS.fetch_add(1, Ordering::SeqCst);
    if UPSTREAM_DOWN.load(Ordering::SeqCst) {
        return Err(format!("{name}: upstream down"));
    }
    Ok(format!("{name} v{n}"))
}

/// One test (the upstream switch is shared by the function).
#[tokio::test]
async fn stale_if_error_serves_the_expired_value_only_when_the_body_fails_and_never_after_an_invalidation(
) {
    let (cache, clock) = clocked_cache();
    UPSTREAM_DOWN.store(false, Ordering::SeqCst);
    let first = flaky_feed(&cache, "a").await.unwrap();
    clock.advance(Duration::from_secs(50));
    // Expired; the upstream answers: a new value, as without the option.
    let second = flaky_feed(&cache, "a").await.unwrap();
    assert_ne!(second, first);
    clock.advance(Duration::from_secs(50));
    UPSTREAM_DOWN.store(true, Ordering::SeqCst);
    assert_eq!(
        flaky_feed(&cache, "a").await,
        Ok(second.clone()),
        "expired 40 s ago, inside the 100 s window: served for the error"
    );
    assert_eq!(cache.stats().stale_if_error, 1);
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        flaky_feed(&cache, "a").await,
        Err("a: upstream down".into()),
        "expired 101 s ago: past the window, the error"
    );
    // An invalidation hides the kept value from the fallback too.
    UPSTREAM_DOWN.store(false, Ordering::SeqCst);
    let third = flaky_feed(&cache, "b").await.unwrap();
    clock.advance(Duration::from_secs(20));
    cache.invalidate_prefix("sie:").await.unwrap();
    UPSTREAM_DOWN.store(true, Ordering::SeqCst);
    assert_eq!(
        flaky_feed(&cache, "b").await,
        Err("b: upstream down".into())
    );
    assert_ne!(third, String::new());
    // A plain `get` never sees a kept value: it is expired.
    UPSTREAM_DOWN.store(false, Ordering::SeqCst);
    flaky_feed(&cache, "c").await.unwrap();
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        cache
            .get::<String>(&flaky_feed_cache_key("c"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(cache.stats().stale_if_error, 1);
}

/// A caller's own `stale_if_error` window bounds what it is served, even
/// when the entry was written with a longer one (a deploy that shortened
/// it, or another caller's policy).
#[tokio::test]
async fn a_fallback_is_only_served_within_the_callers_own_window() {
    let (cache, clock) = clocked_cache();
    let writer = Policy::new()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(3600));
    let reader = Policy::new()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60));
    let ok = cache
        .try_get_or_compute("win:1", &writer, || async { Ok::<_, String>(1u32) })
        .await;
    assert_eq!(ok, Ok(1));
    clock.advance(Duration::from_secs(10 + 30));
    let within = cache
        .try_get_or_compute("win:1", &reader, || async {
            Err::<u32, _>("down".to_owned())
        })
        .await;
    assert_eq!(within, Ok(1), "30 s past the TTL: inside the reader's 60 s");
    clock.advance(Duration::from_secs(60));
    let past = cache
        .try_get_or_compute("win:1", &reader, || async {
            Err::<u32, _>("down".to_owned())
        })
        .await;
    assert_eq!(
        past,
        Err("down".to_owned()),
        "90 s past: outside the reader's window"
    );
    let writer_side = cache
        .try_get_or_compute("win:1", &writer, || async {
            Err::<u32, _>("down".to_owned())
        })
        .await;
    assert_eq!(writer_side, Ok(1), "still inside the writer's hour");
}
