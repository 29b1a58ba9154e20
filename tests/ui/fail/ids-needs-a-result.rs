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

// A hit fetches the objects by id, which can fail: `ids` needs a `Result`.
#[cached(key = "author:{author_id}:top", ids = load)]
async fn top_books(author_id: i64) -> Vec<Book> {
    vec![Book { id: author_id }]
}

// The hydrator is handed the ids: one argument.
#[cached(key = "author:{author_id}:new", ids = |a, b| load(a))]
async fn new_books(author_id: i64) -> Result<Vec<Book>, String> {
    Ok(vec![Book { id: author_id }])
}

fn main() {}
