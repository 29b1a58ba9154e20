// A pattern-bound argument cannot be named in a key template; `_` can be
// left out, since the function cannot read it.
use cacheruntime::cached;

#[cached(key = "area:{scale}", ttl = 60)]
async fn area(scale: u64, (w, h): (u64, u64), _: u8) -> u64 {
    scale * w * h
}

fn main() {}
