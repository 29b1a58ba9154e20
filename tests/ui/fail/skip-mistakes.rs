// Every way `skip` can be wrong, each reported at its name.
use cacheruntime::cached;

#[cached(key = "user:{id}", ttl = 60, vary = locale, skip = [id, locale, nope, self, pool, pool])]
async fn profile(pool: &str, id: u64, locale: String) -> String {
    format!("{pool}{id}{locale}")
}

fn main() {}
