// `user_id` changes the result but is neither in the key nor in `vary`:
// every user would get the first user's page.
use cacheruntime::cached;

#[cached(key = "dashboard:{team_id}", ttl = 60)]
async fn dashboard(team_id: u64, user_id: u64) -> String {
    format!("{team_id}:{user_id}")
}

fn main() {}
