use cacheruntime::cached;

struct Filter {
    tags: Vec<String>,
}

#[cached(key = "search:{filter}", ttl = 60)]
async fn search(filter: Filter) -> usize {
    filter.tags.len()
}

fn main() {}
