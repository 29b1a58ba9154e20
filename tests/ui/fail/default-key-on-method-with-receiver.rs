use cacheruntime::cached;

struct Repo {
    base: u64,
    shard: u32,
}

impl Repo {
    // Two `Repo`s would share entries: the default key cannot see `self`.
    #[cached(ttl = 60)]
    async fn get(&self, id: u64) -> u64 {
        self.base + u64::from(self.shard) + id
    }

    #[cached(ttl = 60)]
    async fn name(&self) -> String {
        self.label()
    }

    fn label(&self) -> String {
        self.base.to_string()
    }
}

fn main() {}
