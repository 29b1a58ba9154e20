//! The HTTP layer (`cacheruntime::http::CacheLayer`) in front of real axum
//! servers on loopback ports, called with a real HTTP client; the
//! cross-instance and store-down cases over a real `redis-server`.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::http::{cache_control, never_cache, CacheLayer};
use cacheruntime::{Cache, Clock};
use support::RedisServer;

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// How many times a handler ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn x_cache(r: &reqwest::Response) -> &str {
    r.headers()
        .get("x-cache")
        .map_or("(none)", |v| v.to_str().unwrap())
}

fn header_of<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// A page that says how many times its handler ran.
fn counting_page(runs: &Runs, text: &'static str) -> axum::routing::MethodRouter {
    let runs = runs.clone();
    get(move || async move { format!("{text} #{}", runs.bump()) })
}

#[tokio::test]
async fn second_request_is_a_hit_with_validators_and_cache_control() {
    let cache = Cache::memory();
    let runs = Runs::default();
    let layer = CacheLayer::builder(cache.clone())
        .key("page:{path}:{query}")
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/books/42", counting_page(&runs, "Emma"))
            .layer(layer),
    )
    .await;
    let c = client();
    let first = c.get(format!("{base}/books/42")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "miss");
    assert!(header_of(&first, "age").is_none(), "no Age on a miss");
    let etag = header_of(&first, "etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "strong: {etag}");
    assert_eq!(
        header_of(&first, "cache-control"),
        Some("public, max-age=60")
    );
    assert!(header_of(&first, "last-modified").unwrap().ends_with("GMT"));
    assert_eq!(first.text().await.unwrap(), "Emma #1");

    let second = c.get(format!("{base}/books/42")).send().await.unwrap();
    assert_eq!(x_cache(&second), "hit");
    assert_eq!(header_of(&second, "etag"), Some(etag.as_str()));
    let age: u64 = header_of(&second, "age").unwrap().parse().unwrap();
    assert!(age < 60, "{age}");
    assert_eq!(second.text().await.unwrap(), "Emma #1", "the stored page");
    assert_eq!(runs.get(), 1, "the handler ran once");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    // Stored under `page:/books/42::_`: the prefix of the page reaches it.
    cache.invalidate_prefix("page:/books/42:").await.unwrap();
    let third = c.get(format!("{base}/books/42")).send().await.unwrap();
    assert_eq!(x_cache(&third), "miss");
    assert_eq!(third.text().await.unwrap(), "Emma #2");
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory()).build().unwrap();
    let base = serve(
        Router::new()
            .route("/about", counting_page(&runs, "About us"))
            .layer(layer),
    )
    .await;
    let c = client();
    let head = c.head(format!("{base}/about")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(x_cache(&head), "miss");
    assert_eq!(
        header_of(&head, "content-length"),
        Some("11"),
        "the GET body's length"
    );
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
    // The HEAD miss stored the GET page...
    let get = c.get(format!("{base}/about")).send().await.unwrap();
    assert_eq!(x_cache(&get), "hit");
    assert_eq!(get.text().await.unwrap(), "About us #1");
    // ...and a HEAD after it is a hit too.
    let head = c.head(format!("{base}/about")).send().await.unwrap();
    assert_eq!(x_cache(&head), "hit");
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn query_is_normalised_and_filtered() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory())
        .key("list:{path}:{query}")
        .ignore_query(["utm_*", "fbclid"])
        .build()
        .unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/list",
            get(
                move |Query(q): Query<std::collections::BTreeMap<String, String>>| async move {
                    counted.bump();
                    format!("page={} sort={}", q["page"], q["sort"])
                },
            ),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    let get = |q: &str| c.get(format!("{base}/list?{q}")).send();
    let a = get("sort=title&page=2&utm_source=mail").await.unwrap();
    assert_eq!(x_cache(&a), "miss");
    assert_eq!(a.text().await.unwrap(), "page=2 sort=title");
    // Same parameters, another order, other tracking, another encoding.
    for q in [
        "page=2&sort=title",
        "fbclid=x&sort=ti%74le&page=2",
        "utm%5Fmedium=y&page=2&sort=title",
    ] {
        let r = get(q).await.unwrap();
        assert_eq!(x_cache(&r), "hit", "{q}");
        assert_eq!(r.text().await.unwrap(), "page=2 sort=title");
    }
    // A parameter the handler reads is never dropped from the key.
    let b = get("page=3&sort=title").await.unwrap();
    assert_eq!(x_cache(&b), "miss");
    assert_eq!(b.text().await.unwrap(), "page=3 sort=title");
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn vary_on_header_keeps_one_variant_per_value_under_one_prefix() {
    let cache = Cache::memory();
    let runs = Runs::default();
    let layer = CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .vary_on_header("Accept-Language")
        .build()
        .unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/hello",
            get(move |headers: HeaderMap| async move {
                counted.bump();
                match headers.get("accept-language").map(|v| v.to_str().unwrap()) {
                    Some("fr") => "Bonjour",
                    Some(_) => "Hello",
                    None => "Hi",
                }
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    let get = |lang: Option<&'static str>| {
        let mut r = c.get(format!("{base}/hello"));
        if let Some(l) = lang {
            r = r.header("accept-language", l);
        }
        r.send()
    };
    for round in 0..2 {
        let expect = if round == 0 { "miss" } else { "hit" };
        for (lang, text) in [(Some("fr"), "Bonjour"), (Some("en"), "Hello"), (None, "Hi")] {
            let r = get(lang).await.unwrap();
            assert_eq!(x_cache(&r), expect, "{lang:?}");
            assert_eq!(header_of(&r, "vary"), Some("accept-language"));
            assert_eq!(r.text().await.unwrap(), text);
        }
    }
    assert_eq!(runs.get(), 3);
    // A value with ':' cannot reach another variant's key.
    let forged = get(Some("en:x")).await.unwrap();
    assert_eq!(x_cache(&forged), "miss");
    cache.invalidate_prefix("page:/hello:").await.unwrap();
    for lang in [Some("fr"), Some("en"), None] {
        assert_eq!(x_cache(&get(lang).await.unwrap()), "miss", "{lang:?}");
    }
    assert_eq!(runs.get(), 7);
}

/// What the app's auth layer puts in the request extensions.
#[derive(Clone, Debug)]
struct User(String);

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stand-in auth layer: the user named by `x-user`.
async fn auth(mut request: Request, next: Next) -> Response {
    if let Some(name) = request.headers().get("x-user") {
        let name = name.to_str().unwrap().to_owned();
        request.extensions_mut().insert(User(name));
    }
    next.run(request).await
}

#[tokio::test]
async fn vary_on_user_never_serves_one_users_page_to_another() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory())
        .key("me:{path}")
        .vary_on_header("Accept-Language")
        .vary_on_user::<User>()
        .build()
        .unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/me",
            get(move |request: Request| async move {
                counted.bump();
                let user = request.extensions().get::<User>().map(|u| u.0.clone());
                format!("private page of {user:?}")
            }),
        )
        .layer(layer)
        .layer(middleware::from_fn(auth));
    let base = serve(app).await;
    let c = client();
    let get = |user: &str, lang: &str| {
        c.get(format!("{base}/me"))
            .header("x-user", user)
            .header("accept-language", lang)
            .send()
    };
    let a = get("alice", "en").await.unwrap();
    assert_eq!(header_of(&a, "cache-control"), Some("private, max-age=300"));
    assert_eq!(a.text().await.unwrap(), "private page of Some(\"alice\")");
    let b = get("bob", "en").await.unwrap();
    assert_eq!(x_cache(&b), "miss");
    assert_eq!(b.text().await.unwrap(), "private page of Some(\"bob\")");
    // Attempts to reach alice's key with `:` in the user or the header.
    for (user, lang) in [
        ("en:u=alice", "en"),
        ("mallory", "en:u=alice"),
        ("u=alice", "en"),
    ] {
        let r = get(user, lang).await.unwrap();
        assert_eq!(x_cache(&r), "miss", "{user} {lang}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("\"alice\""), "{user} {lang}: {body}");
    }
    let a = get("alice", "en").await.unwrap();
    assert_eq!(x_cache(&a), "hit");
    assert_eq!(a.text().await.unwrap(), "private page of Some(\"alice\")");
    assert_eq!(runs.get(), 5);
    // No user value: never cached (the page could be anyone's).
    for _ in 0..2 {
        let anon = c.get(format!("{base}/me")).send().await.unwrap();
        assert_eq!(x_cache(&anon), "(none)");
        assert_eq!(anon.text().await.unwrap(), "private page of None");
    }
    assert_eq!(runs.get(), 7);
}

#[tokio::test]
async fn authorization_bypasses_a_cache_that_does_not_vary_on_it() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory()).build().unwrap();
    let base = serve(
        Router::new()
            .route("/feed", counting_page(&runs, "feed"))
            .layer(layer),
    )
    .await;
    let c = client();
    for i in 1..=2 {
        let r = c
            .get(format!("{base}/feed"))
            .header("authorization", "Bearer secret")
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&r), "(none)");
        assert_eq!(r.text().await.unwrap(), format!("feed #{i}"));
    }
    let r = c.get(format!("{base}/feed")).send().await.unwrap();
    assert_eq!(x_cache(&r), "miss", "anonymous requests are cached");
}

#[tokio::test]
async fn if_none_match_is_answered_304_from_the_cache() {
    let cache = Cache::memory();
    let runs = Runs::default();
    let layer = CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .build()
        .unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/static",
            get(move || async move {
                counted.bump();
                "same body every time"
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    let first = c.get(format!("{base}/static")).send().await.unwrap();
    let etag = header_of(&first, "etag").unwrap().to_owned();
    let modified = header_of(&first, "last-modified").unwrap().to_owned();
    let conditional = |name: &'static str, value: &str| {
        c.get(format!("{base}/static")).header(name, value).send()
    };
    // With the page cached: 304 without running the handler.
    let r = conditional("if-none-match", &etag).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(x_cache(&r), "hit");
    assert_eq!(header_of(&r, "etag"), Some(etag.as_str()));
    assert!(header_of(&r, "cache-control").is_some());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = conditional("if-modified-since", &modified).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = conditional("if-none-match", "\"another\"").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "same body every time");
    assert_eq!(runs.get(), 1);
    // Without it: the handler runs, and the unchanged body is still a 304.
    cache.invalidate_prefix("page:/static:").await.unwrap();
    let r = conditional("if-none-match", &etag).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(x_cache(&r), "miss");
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn set_cookie_private_no_store_and_server_errors_are_not_cached() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory()).build().unwrap();
    let r1 = runs.clone();
    let r2 = runs.clone();
    let r3 = runs.clone();
    let r4 = runs.clone();
    let r5 = runs.clone();
    let app = Router::new()
        .route(
            "/cookie",
            get(move || async move {
                r1.bump();
                ([(header::SET_COOKIE, "session=abc")], "welcome")
            }),
        )
        .route(
            "/private",
            get(move || async move {
                r2.bump();
                ([(header::CACHE_CONTROL, "Private, max-age=10")], "yours")
            }),
        )
        .route(
            "/nostore",
            get(move || async move {
                r3.bump();
                ([(header::CACHE_CONTROL, "no-store")], "nope")
            }),
        )
        .route(
            "/broken",
            get(move || async move {
                r4.bump();
                (StatusCode::SERVICE_UNAVAILABLE, "down")
            }),
        )
        .route(
            "/missing",
            get(move || async move {
                r5.bump();
                (StatusCode::NOT_FOUND, "no such page")
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    for path in ["/cookie", "/private", "/nostore", "/broken"] {
        let before = runs.get();
        for _ in 0..2 {
            let r = c.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(x_cache(&r), "miss", "{path}");
            assert!(header_of(&r, "etag").is_none(), "{path}: untouched");
        }
        assert_eq!(runs.get(), before + 2, "{path} ran each time");
    }
    // A listed status is cached.
    let before = runs.get();
    for _ in 0..2 {
        let r = c.get(format!("{base}/missing")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.text().await.unwrap(), "no such page");
    }
    assert_eq!(runs.get(), before + 1);
}

#[tokio::test]
async fn handlers_setting_their_own_cache_control_keep_it() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory())
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let (r1, r2) = (runs.clone(), runs.clone());
    let app = Router::new()
        .route(
            "/account",
            get(move || async move {
                r1.bump();
                (never_cache(), "balance")
            }),
        )
        .route(
            "/logo",
            get(move || async move {
                r2.bump();
                let year = Duration::from_secs(365 * 24 * 3600);
                let cc = cache_control().public().max_age(year).immutable();
                (cc.header(), "<svg/>")
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    for _ in 0..2 {
        let r = c.get(format!("{base}/account")).send().await.unwrap();
        assert_eq!(x_cache(&r), "miss");
        let cc = header_of(&r, "cache-control").unwrap();
        assert!(cc.contains("no-store") && cc.contains("private"), "{cc}");
    }
    assert_eq!(runs.get(), 2, "never_cache: never stored");
    for expect in ["miss", "hit"] {
        let r = c.get(format!("{base}/logo")).send().await.unwrap();
        assert_eq!(x_cache(&r), expect);
        assert_eq!(
            header_of(&r, "cache-control"),
            Some("public, immutable, max-age=31536000"),
            "the handler's, not the layer's max-age=60"
        );
    }
    assert_eq!(runs.get(), 3);
}

#[tokio::test]
async fn a_response_varying_on_a_header_the_key_does_not_read_is_not_cached() {
    let runs = Runs::default();
    let app = |layer: CacheLayer| {
        let counted = runs.clone();
        Router::new()
            .route(
                "/packed",
                get(move || async move {
                    counted.bump();
                    ([(header::VARY, "Accept-Encoding")], "as if compressed")
                }),
            )
            .layer(layer)
    };
    let unkeyed = serve(app(CacheLayer::builder(Cache::memory()).build().unwrap())).await;
    let keyed = CacheLayer::builder(Cache::memory())
        .vary_on_header("Accept-Encoding")
        .build()
        .unwrap();
    let keyed = serve(app(keyed)).await;
    let c = client();
    for expect in ["miss", "miss"] {
        let r = c.get(format!("{unkeyed}/packed")).send().await.unwrap();
        assert_eq!(x_cache(&r), expect);
    }
    assert_eq!(runs.get(), 2);
    for expect in ["miss", "hit"] {
        let r = c.get(format!("{keyed}/packed")).send().await.unwrap();
        assert_eq!(x_cache(&r), expect);
    }
    assert_eq!(runs.get(), 3);
}

#[tokio::test]
async fn a_body_that_fails_midway_is_not_cached() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory()).build().unwrap();
    let counted = runs.clone();
    let app = Router::new()
        .route(
            "/flaky",
            get(move || async move {
                counted.bump();
                let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                    Ok("partial "),
                    Err(std::io::Error::other("database went away")),
                ];
                Body::from_stream(futures::stream::iter(chunks)).into_response()
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    for _ in 0..2 {
        // The client sees the failure: an aborted response, before or
        // after its head (the layer has read the body up to the error).
        let outcome = match c.get(format!("{base}/flaky")).send().await {
            Ok(r) => r.bytes().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(outcome.is_err(), "{outcome:?}");
    }
    assert_eq!(runs.get(), 2, "never served from the cache");
}

#[tokio::test]
async fn oversize_bodies_pass_through_complete_and_uncached() {
    let runs = Runs::default();
    let layer = CacheLayer::builder(Cache::memory())
        .max_body_bytes(4096)
        .build()
        .unwrap();
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (full, streamed) = (big.clone(), big.clone());
    let (r1, r2) = (runs.clone(), runs.clone());
    let app = Router::new()
        .route(
            "/full",
            get(move || async move {
                r1.bump();
                full
            }),
        )
        .route(
            "/streamed",
            get(move || async move {
                r2.bump();
                let chunks: Vec<Result<String, std::io::Error>> = streamed
                    .as_bytes()
                    .chunks(1000)
                    .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
                    .collect();
                Body::from_stream(futures::stream::iter(chunks)).into_response()
            }),
        )
        .layer(layer);
    let base = serve(app).await;
    let c = client();
    for path in ["/full", "/streamed"] {
        for _ in 0..2 {
            let r = c.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(x_cache(&r), "miss", "{path}");
            assert_eq!(r.text().await.unwrap(), big, "{path}: complete");
        }
    }
    assert_eq!(runs.get(), 4);
}

#[tokio::test]
async fn stale_page_is_served_while_one_refresh_runs() {
    let clock = Clock::manual();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let runs = Runs::default();
    let layer = CacheLayer::builder(cache)
        .ttl(Duration::from_secs(60))
        .stale(Duration::from_secs(600))
        .build()
        .unwrap();
    let base = serve(
        Router::new()
            .route("/news", counting_page(&runs, "news"))
            .layer(layer),
    )
    .await;
    let c = client();
    let first = c.get(format!("{base}/news")).send().await.unwrap();
    assert_eq!(
        header_of(&first, "cache-control"),
        Some("public, max-age=60, stale-while-revalidate=600")
    );
    assert_eq!(first.text().await.unwrap(), "news #1");
    clock.advance(Duration::from_secs(61));
    let stale = c.get(format!("{base}/news")).send().await.unwrap();
    assert_eq!(x_cache(&stale), "stale");
    assert_eq!(header_of(&stale, "age"), Some("61"));
    assert_eq!(stale.text().await.unwrap(), "news #1", "served at once");
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        let r = c.get(format!("{base}/news")).send().await.unwrap();
        if x_cache(&r) == "hit" {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "refreshed in the background");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(fresh, "news #2");
    assert_eq!(runs.get(), 2, "one refresh");
}

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

#[test]
fn a_template_naming_what_the_layer_cannot_see_fails_at_build() {
    let err = CacheLayer::builder(Cache::memory())
        .key("page:{path}:{user_id}")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown placeholder {user_id}"), "{err}");
    assert!(err.contains("vary_on_user"), "names the fix: {err}");
}
