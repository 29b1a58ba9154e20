use cacheruntime::cached;

// Tags over arguments, fields and `self`, on functions and methods.
#[cached(key = "book:{id}", tags = ["author:{author}", "catalog"], skip = [author])]
async fn book(id: u32, author: u32) -> String {
    format!("{id}:{author}")
}

struct Shelf {
    id: u32,
}

impl Shelf {
    #[cached(key = "shelf:{self.id}:count", tags = "shelf:{self.id}")]
    async fn count(&self) -> u32 {
        self.id
    }
}

fn main() {
    let _ = book(1, 2);
    let _ = Shelf { id: 1 }.count();
}
