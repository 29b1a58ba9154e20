// A cache name must be one CACHE_URL_<NAME> can spell.
use cacheruntime::cached;

#[cached(key = "feed:{url}", cache = "Third-Party")]
async fn feed(url: String) -> String {
    url
}

fn main() {}
