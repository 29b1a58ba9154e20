use cacheruntime::cached;

#[cached(key = "user:{id}", ttl = 60)]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
