// `stale_if_error` needs a body that can fail.
use cacheruntime::cached;

#[cached(key = "n:{id}", ttl = 60, stale_if_error = "1h")]
async fn never_fails(id: u64) -> u64 {
    id
}

fn main() {}
