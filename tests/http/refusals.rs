//! Responses the layer must pass through without storing them: cookies,
//! private and no-store, 5xx, `Vary` on unkeyed headers, failing and
//! oversize bodies; and handlers' own `Cache-Control`.

use super::*;

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
