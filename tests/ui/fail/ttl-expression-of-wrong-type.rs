// A `ttl` expression must be a `Duration` or whole seconds.
use cacheruntime::cached;

fn ttl_setting() -> String {
    "1h".to_owned()
}

#[cached(key = "c:{id}", ttl = ttl_setting())]
async fn feed(id: u64) -> u64 {
    id
}

fn main() {}
