use cacheruntime::cached;

#[cached(key = "user:{id}", ttl = 60, ttl = "1h")]
async fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
