use cacheruntime::cached;

#[cached(key = "author:{autor_id}:top_books", ttl = 3600)]
async fn top_books(author_id: i64) -> Vec<i64> {
    vec![author_id]
}

fn main() {}
