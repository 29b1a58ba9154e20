use cacheruntime::cached;

#[cached(key = user_key, ttl = 60)]
async fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
