//! Warming a cache before a benchmark measures its hits.

use std::future::Future;
use std::time::{Duration, Instant};

use cacheruntime::Cache;

/// Calls `call` until it is answered from the cache (a hit is counted), so
/// the measurement starts warm. A shared store is set up at first use (a
/// connection opened, SQL tables created in the background), and on a
/// loaded machine the first calls may run out of the op timeout and
/// compute without storing: the benchmark must not mistake that for its
/// subject. Panics if no hit comes within 30 s.
pub async fn until_hit<F, Fut>(cache: &Cache, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = cache.stats().hits;
        call().await;
        if cache.stats().hits > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the {} store never served a hit",
            cache.backend_name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
