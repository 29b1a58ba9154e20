use cacheruntime::cached;

struct Repo {
    id: u32,
}

impl Repo {
    #[cached(key = "repo:{self.id}", ttl = 60)]
    async fn name(self) -> String {
        self.id.to_string()
    }
}

fn main() {}
