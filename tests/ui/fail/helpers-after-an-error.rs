use cacheruntime::cached;

// One mistake, one error: the function and its helpers stay callable, so
// their callers add no "cannot find function" errors.
#[cached(key = "user:{id}", ttl = "10 minutes")]
async fn user(id: u64) -> String {
    id.to_string()
}

async fn callers() {
    let _: String = user(1).await;
    let _: String = user_cache_key(1);
    let _ = user_invalidate(1).await;
}

fn main() {
    let _ = callers();
}
