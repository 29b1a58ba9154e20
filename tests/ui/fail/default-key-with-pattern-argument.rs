use cacheruntime::cached;

#[cached(ttl = 60)]
async fn sum((a, b): (u32, u32)) -> u32 {
    a + b
}

fn main() {}
