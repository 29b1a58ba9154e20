use cacheruntime::cached;

#[cached(key = "feed:{id}", ttl = 60, stale = "an hour")]
async fn feed(id: u64) -> String {
    id.to_string()
}

fn main() {}
