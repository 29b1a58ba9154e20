// With `ids`, what is stored is the ids: no TTL from the value.
use cacheruntime::{cached, CacheId};

#[derive(Clone)]
struct Book {
    id: u64,
}

impl CacheId for Book {
    type Id = u64;
    fn cache_id(&self) -> u64 {
        self.id
    }
}

async fn by_ids(ids: &[u64]) -> Result<Vec<Book>, std::io::Error> {
    Ok(ids.iter().map(|&id| Book { id }).collect())
}

#[cached(key = "top:{n}", ttl = |books| books.len() as u64, ids = |ids| by_ids(&ids))]
async fn top(n: u64) -> Result<Vec<Book>, std::io::Error> {
    by_ids(&[n]).await
}

fn main() {}
