use cacheruntime::cached;

const BETA: f64 = -1.0;

// A constant beta is checked where the function's policy is evaluated.
#[cached(key = "feed:{id}", ttl = 600, early = BETA)]
async fn feed(id: u32) -> String {
    id.to_string()
}

// A beta is a number, not a duration.
#[cached(key = "page:{id}", ttl = 600, early = std::time::Duration::from_secs(1))]
async fn page(id: u32) -> String {
    id.to_string()
}

fn main() {}
