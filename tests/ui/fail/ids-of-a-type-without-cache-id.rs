use cacheruntime::cached;

#[derive(Clone)]
struct Book {
    id: i64,
}

async fn load(ids: Vec<i64>) -> Result<Vec<Book>, String> {
    Ok(ids.into_iter().map(|id| Book { id }).collect())
}

// `Book` has no `CacheId`: there is no id to store.
#[cached(key = "author:{author_id}:top", ids = load)]
async fn top_books(author_id: i64) -> Result<Vec<Book>, String> {
    Ok(vec![Book { id: author_id }])
}

fn main() {}
