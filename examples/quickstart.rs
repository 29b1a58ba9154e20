//! `cargo run --example quickstart`: an in-memory cache in front of a slow
//! function, printing what each call cost and what the cache counted.

use std::time::{Duration, Instant};

use cacheruntime::{cached, Cache};

#[derive(Debug)]
struct DbError;

/// Pretends to rank an author's books with an expensive query.
#[cached(key = "author:{author_id}:top_books", ttl = 3600)]
async fn top_books(author_id: i64) -> Result<Vec<i64>, DbError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(vec![
        author_id * 10 + 1,
        author_id * 10 + 2,
        author_id * 10 + 3,
    ])
}

/// Per-user content varies by user but sits under the page's key prefix.
#[cached(key = "page:{slug}", ttl = "10m", vary = user_id)]
async fn render_page(slug: &str, user_id: u64) -> String {
    tokio::time::sleep(Duration::from_millis(50)).await;
    format!("<h1>{slug}</h1><p>hello user {user_id}</p>")
}

async fn timed<T: std::fmt::Debug>(label: &str, fut: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let value = fut.await;
    println!("{label:<42} {:>10.3?}  -> {value:?}", started.elapsed());
    value
}

#[tokio::main]
async fn main() -> Result<(), cacheruntime::Error> {
    // CACHE_URL picks the store (memory when unset, none:// to switch off).
    let cache = Cache::from_env().await?;
    cacheruntime::set_default(cache.clone());
    println!("cache: {}\n", cache.backend_name());

    timed("top_books(42)   miss", top_books(42)).await.ok();
    timed("top_books(42)   hit", top_books(42)).await.ok();
    timed("top_books(7)    miss", top_books(7)).await.ok();
    timed("render_page(home, 1) miss", render_page("home", 1)).await;
    timed("render_page(home, 2) miss", render_page("home", 2)).await;
    timed("render_page(home, 1) hit", render_page("home", 1)).await;

    // A purchase changes author 42's ranking: drop everything under it.
    cache.invalidate_prefix("author:42:").await?;
    timed("top_books(42) after invalidation", top_books(42))
        .await
        .ok();
    timed("top_books(7)  still cached", top_books(7)).await.ok();
    // Every variant of one page, without retyping the key template.
    render_page_invalidate("home").await?;
    timed(
        "render_page(home, 2) after invalidation",
        render_page("home", 2),
    )
    .await;

    let stats = cache.stats();
    println!(
        "\ncalls: {}  hits: {}  misses: {}  errors: {}  hit rate: {:.0}%",
        stats.hits + stats.misses,
        stats.hits,
        stats.misses,
        stats.errors,
        stats.hit_rate() * 100.0
    );
    for f in &stats.functions {
        println!(
            "  {:<40} hits {:>3}  misses {:>3}",
            f.name, f.hits, f.misses
        );
    }
    Ok(())
}
