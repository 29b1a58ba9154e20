use cacheruntime::{cached, CacheId};

struct Book {
    id: i64,
}

impl CacheId for Book {
    type Id = i64;
    fn cache_id(&self) -> i64 {
        self.id
    }
}

async fn load(ids: Vec<i64>) -> Result<Vec<Book>, String> {
    Ok(ids.into_iter().map(|id| Book { id }).collect())
}

// One object is `Option<Book>` (it may have been deleted), not `Book`.
#[cached(key = "book:{id}", ids = load)]
async fn book(id: i64) -> Result<Book, String> {
    Ok(Book { id })
}

fn main() {}
