use cacheruntime::cached;

struct Page {
    html: String,
}

#[cached(key = "page:{id}", ttl = 60)]
async fn page(id: u64) -> Page {
    Page { html: id.to_string() }
}

fn main() {}
