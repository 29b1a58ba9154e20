use cacheruntime::cached;

#[cached(key = "repo:{self.id}", ttl = 60)]
async fn name(id: u32) -> String {
    id.to_string()
}

fn main() {}
