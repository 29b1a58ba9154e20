use cacheruntime::cached;

// A tag's placeholder must name an argument, a tag is a string literal,
// and a tag is never empty.
#[cached(key = "book:{id}", tags = ["author:{author}", 42, ""])]
async fn book(id: u32) -> String {
    id.to_string()
}

// An argument only in a tag is not in the key: the privacy guard still
// asks for it in the key, `vary` or `skip`.
#[cached(key = "card:{id}", tags = ["author:{author}"])]
async fn card(id: u32, author: u32) -> String {
    format!("{id}:{author}")
}

fn main() {}
