use cacheruntime::cached;

#[cached(key = "touch:{id}", ttl = 60)]
async fn touch(id: u64) {
    let _ = id;
}

fn main() {}
