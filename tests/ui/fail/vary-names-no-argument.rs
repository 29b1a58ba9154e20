use cacheruntime::cached;

#[cached(key = "embed:{url}", ttl = 60, vary = user)]
async fn embed(url: String, user_id: u64) -> String {
    format!("{url}{user_id}")
}

fn main() {}
