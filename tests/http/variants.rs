//! Variants of one page: per header, per user, per credential; and the
//! forged values that must not reach another variant.

use super::*;

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
