//! Over a real Redis: invalidation seen by a second instance, one refresh of
//! a stale page across two instances, credentials kept out of the store,
//! and a store that stalls or dies.

use super::*;

fn redis_cache(url: &str) -> Cache {
    Cache::builder()
        .backend(RedisBackend::new(RedisConfig::new(url)).unwrap())
        .namespace("shop")
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_on_one_instance_reaches_another_sharing_redis() {
    let server = RedisServer::start();
    let (runs_a, runs_b) = (Runs::default(), Runs::default());
    let (cache_a, cache_b) = (redis_cache(&server.url()), redis_cache(&server.url()));
    let instance = |cache: &Cache, runs: &Runs, name: &'static str| {
        let layer = CacheLayer::builder(cache.clone())
            .key("page:{path}")
            .build()
            .unwrap();
        Router::new()
            .route("/books/42", counting_page(runs, name))
            .layer(layer)
    };
    let a = serve(instance(&cache_a, &runs_a, "from a")).await;
    let b = serve(instance(&cache_b, &runs_b, "from b")).await;
    let c = client();
    let r = c.get(format!("{a}/books/42")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "from a #1");
    let r = c.get(format!("{b}/books/42")).send().await.unwrap();
    assert_eq!(x_cache(&r), "hit", "b reads a's page from Redis");
    assert_eq!(r.text().await.unwrap(), "from a #1");
    assert_eq!(runs_b.get(), 0);

    cache_a.invalidate_prefix("page:/books/42:").await.unwrap();
    let r = c.get(format!("{b}/books/42")).send().await.unwrap();
    assert_eq!(x_cache(&r), "miss", "a's invalidation reached b");
    assert_eq!(r.text().await.unwrap(), "from b #1");
    let r = c.get(format!("{a}/books/42")).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "from b #1",
        "and b's page reached a"
    );
    assert_eq!((runs_a.get(), runs_b.get()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varying_on_authorization_caches_per_credential_without_storing_it() {
    let server = RedisServer::start();
    let runs = Runs::default();
    let layer = CacheLayer::builder(redis_cache(&server.url()))
        .key("page:{path}")
        .vary_on_header("Authorization")
        .build()
        .unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/feed",
            get(move |headers: HeaderMap| async move {
                counted.bump();
                format!("feed for {:?}", headers["authorization"])
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    let get = |token: &str| {
        c.get(format!("{base}/feed"))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    for (token, expect) in [
        ("s3cret-a", "miss"),
        ("s3cret-b", "miss"),
        ("s3cret-a", "hit"),
    ] {
        let r = get(token).await.unwrap();
        assert_eq!(x_cache(&r), expect, "{token}");
        assert_eq!(header_of(&r, "cache-control"), Some("private, max-age=300"));
        assert_eq!(header_of(&r, "vary"), Some("authorization"));
        assert!(r.text().await.unwrap().contains(token));
    }
    assert_eq!(runs.get(), 2);
    let keys = server.cli(&["--scan"]);
    assert!(keys.contains("shop:page:/feed:"), "{keys}");
    assert!(!keys.contains("s3cret"), "credentials in the store: {keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stalls_or_dies_still_serves_within_the_op_timeout() {
    let mut server = RedisServer::start();
    let cache = redis_cache(&server.url());
    let runs = Runs::default();
    let layer = CacheLayer::builder(cache.clone()).build().unwrap();
    let base = serve(
        Router::new()
            .route("/home", counting_page(&runs, "home"))
            .layer(layer),
    )
    .await;
    let c = client();
    let get = || c.get(format!("{base}/home")).send();
    assert_eq!(get().await.unwrap().text().await.unwrap(), "home #1");
    assert_eq!(x_cache(&get().await.unwrap()), "hit");

    server.pause();
    let started = Instant::now();
    let r = get().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(r.text().await.unwrap(), "home #2");
    assert!(
        took < Duration::from_millis(600),
        "op timeout 200 ms: {took:?}"
    );
    server.resume();

    server.kill();
    for i in 3..6 {
        let started = Instant::now();
        let r = get().await.unwrap();
        assert_eq!(r.text().await.unwrap(), format!("home #{i}"));
        assert!(started.elapsed() < Duration::from_millis(600));
    }
    assert!(cache.stats().errors + cache.stats().circuit_skips > 0);
}

/// A GET answered 200: its `X-Cache` and its body.
async fn served(c: &reqwest::Client, url: String) -> (String, String) {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    (x_cache(&r).to_owned(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_page_refreshes_once_across_two_instances_sharing_redis() {
    let server = RedisServer::start();
    let clock = Clock::manual();
    let cache = || {
        Cache::builder()
            .clock(clock.clone())
            .backend(RedisBackend::new(RedisConfig::new(server.url())).unwrap())
            .op_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (cache_a, cache_b) = (cache(), cache());
    // Runs counted across both instances. Every run after the first waits
    // for a permit, so the refresh is still running while the stale page is
    // asked for, whatever the machine's speed.
    let runs = Runs::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let instance = |cache: &Cache| {
        let layer = CacheLayer::builder(cache.clone())
            .key("page:{path}")
            .ttl(Duration::from_secs(60))
            .stale(Duration::from_secs(600))
            .build()
            .unwrap();
        let (runs, gate) = (runs.clone(), gate.clone());
        let page = get(move || async move {
            let n = runs.bump();
            if n > 1 {
                gate.acquire().await.unwrap().forget();
            }
            format!("news #{n}")
        });
        Router::new().route("/news", page).layer(layer)
    };
    let a = serve(instance(&cache_a)).await;
    let b = serve(instance(&cache_b)).await;
    let c = client();
    assert_eq!(
        served(&c, format!("{a}/news")).await,
        ("miss".into(), "news #1".into())
    );
    assert_eq!(
        served(&c, format!("{b}/news")).await,
        ("hit".into(), "news #1".into())
    );

    clock.advance(Duration::from_secs(61));
    let requests = (0..16).map(|i| {
        let url = format!("{}/news", if i % 2 == 0 { &a } else { &b });
        let c = c.clone();
        async move { served(&c, url).await }
    });
    for answer in futures::future::join_all(requests).await {
        assert_eq!(answer, ("stale".into(), "news #1".into()));
    }
    let refreshing = Instant::now() + Duration::from_secs(5);
    while runs.get() < 2 {
        assert!(Instant::now() < refreshing, "no refresh started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runs.get(), 2, "one refresh across both instances");
    assert_eq!(cache_a.stats().refreshes + cache_b.stats().refreshes, 1);

    let keys = server.cli(&["--scan"]);
    assert!(keys.contains("/news:_#refresh"), "the refresh lock: {keys}");

    // Let the refresh finish: it stores the page, then drops its lock.
    gate.add_permits(16);
    let stored = Instant::now() + Duration::from_secs(5);
    while server.cli(&["--scan"]).contains("#refresh") {
        assert!(Instant::now() < stored, "the refresh never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for base in [&a, &b] {
        let fresh = served(&c, format!("{base}/news")).await;
        assert_eq!(fresh, ("hit".into(), "news #2".into()), "{base}");
    }
    assert_eq!(runs.get(), 2, "and no second refresh after it");
    assert_eq!(cache_a.stats().refreshes + cache_b.stats().refreshes, 1);
}
