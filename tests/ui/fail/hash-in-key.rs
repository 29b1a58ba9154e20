use cacheruntime::cached;

#[cached(key = "feed#{id}:body", ttl = 60)]
async fn feed(id: u64) -> String {
    id.to_string()
}

fn main() {}
