//! Pages served and stored: hits and misses, HEAD, the query in the key,
//! conditional requests, stale-while-revalidate on a manual clock.

use super::*;

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
    // The layer's `Last-Modified` is the store time cut to the second: the
    // page's own date does not prove the client holds this page (another
    // could have been stored in that second), so it gets the page; a date
    // after the page was stored is answered 304.
    let r = conditional("if-modified-since", &modified).await.unwrap();
    assert_eq!(r.status(), 200);
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let r = conditional("if-modified-since", later).await.unwrap();
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

/// A page keeps the headers it was first served with ready for the next
/// hit; a second layer with other settings reading the same entry must
/// still send its own `Cache-Control` and `X-Cache` choice, not the first
/// layer's.
#[tokio::test]
async fn two_layers_sharing_an_entry_each_send_their_own_headers() {
    let cache = Cache::memory();
    let runs = Runs::default();
    let public = CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let private = CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .ttl(Duration::from_secs(60))
        .private()
        .x_cache_header(false)
        .build()
        .unwrap();
    let a = serve(
        Router::new()
            .route("/shared", counting_page(&runs, "one page"))
            .layer(public),
    )
    .await;
    let b = serve(
        Router::new()
            .route("/shared", counting_page(&runs, "one page"))
            .layer(private),
    )
    .await;
    let c = client();
    for (round, base) in [&a, &b, &a, &b].into_iter().enumerate() {
        let r = c.get(format!("{base}/shared")).send().await.unwrap();
        let (cc, xc) = (header_of(&r, "cache-control"), header_of(&r, "x-cache"));
        if base == &a {
            assert_eq!(cc, Some("public, max-age=60"), "round {round}");
            assert_eq!(xc, Some(if round == 0 { "miss" } else { "hit" }));
        } else {
            assert_eq!(cc, Some("private, max-age=60"), "round {round}");
            assert_eq!(xc, None, "round {round}: switched off on this layer");
        }
        assert_eq!(r.text().await.unwrap(), "one page #1");
    }
    assert_eq!(runs.get(), 1, "one entry served both layers");
}

/// `X-Cache` says what the stats count: requests that waited for another
/// request's render of the same page were misses (they got no stored
/// entry), not hits.
#[tokio::test]
async fn requests_that_waited_for_a_render_are_misses_in_x_cache_and_stats() {
    let cache = Cache::memory();
    let runs = Runs::default();
    let counted = runs.clone();
    let layer = CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let slow = get(move || async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        format!("rendered #{}", counted.bump())
    });
    let base = serve(Router::new().route("/slow", slow).layer(layer)).await;
    let c = client();
    let answers = futures::future::join_all((0..6).map(|_| {
        let (c, url) = (c.clone(), format!("{base}/slow"));
        async move {
            let r = c.get(url).send().await.unwrap();
            let label = x_cache(&r).to_owned();
            (label, r.text().await.unwrap())
        }
    }))
    .await;
    assert_eq!(runs.get(), 1, "one render for all six");
    for (label, body) in &answers {
        assert_eq!((label.as_str(), body.as_str()), ("miss", "rendered #1"));
    }
    let after = c.get(format!("{base}/slow")).send().await.unwrap();
    assert_eq!(x_cache(&after), "hit");
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.hits),
        (6, 1),
        "the same split as X-Cache"
    );
}
