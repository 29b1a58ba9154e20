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

#[path = "http/pages.rs"]
mod pages;
#[path = "http/refusals.rs"]
mod refusals;
#[path = "http/stores.rs"]
mod stores;
#[path = "http/variants.rs"]
mod variants;

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
