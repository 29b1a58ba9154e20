use cacheruntime::cached;

#[cached(key = "user:{id}", ttl = "10 minutes")]
async fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
