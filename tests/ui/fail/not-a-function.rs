use cacheruntime::cached;

#[cached(key = "x", ttl = 60)]
struct Config {
    url: String,
}

fn main() {}
