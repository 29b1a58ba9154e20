use cacheruntime::cached;

// A refresh runs in a spawned task, so `stale` needs owned arguments.
#[cached(key = "embed:{url}", ttl = 60, stale = 600)]
async fn embed(url: &str) -> String {
    url.to_owned()
}

fn main() {}
