// Per-computation options written wrong, each reported at its place.
use cacheruntime::cached;

#[cached(key = "a:{id}", ttl = |a, b| 1, unless = 3)]
async fn two_inputs(id: u64) -> u64 {
    id
}

#[cached(key = "b:{id}", ttl = 60, stale = |v| 10)]
async fn stale_closure(id: u64) -> u64 {
    id
}

fn main() {}
