// A method whose key reads nothing of `self`: every receiver shares it.
use cacheruntime::cached;

struct Tenant {
    id: u64,
}

impl Tenant {
    #[cached(key = "plan:{month}", ttl = 60)]
    async fn invoice(&self, month: u32) -> String {
        format!("{}:{month}", self.id)
    }
}

fn main() {}
