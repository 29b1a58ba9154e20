use cacheruntime::cached;

#[cached(key = "a:{nope}", ttl = "soon", vary = missing, colour = 1)]
async fn many(id: u64) -> u64 {
    id
}

fn main() {}
