use cacheruntime::cached;

#[cached(key = "hot:{id}", ttl = 60, early = 0.0)]
async fn hot(id: u64) -> u64 {
    id
}

fn main() {}
