use cacheruntime::cached;

#[cached(key = "user:{id}", ttl = 60, expire = 10)]
async fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
