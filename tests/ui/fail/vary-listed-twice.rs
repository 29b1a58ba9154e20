use cacheruntime::cached;

#[cached(key = "feed:{id}", ttl = 60, vary = [user, user])]
async fn feed(id: u64, user: u64) -> u64 {
    id + user
}

fn main() {}
