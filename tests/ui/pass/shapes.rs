//! Every supported shape of function compiles and is callable.
use std::sync::{Arc, LazyLock, OnceLock};

use cacheruntime::{cached, Cache};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug)]
pub struct MyError;

#[derive(Serialize, Deserialize)]
pub struct Embed {
    pub html: String,
}

static THIRD_PARTY: OnceLock<Cache> = OnceLock::new();
static SHARED: LazyLock<Arc<Cache>> = LazyLock::new(|| Arc::new(Cache::memory()));
static PLAIN: LazyLock<Cache> = LazyLock::new(Cache::memory);

#[cached(key = "author:{author_id}:top_books", ttl = 3600)]
async fn top_books(author_id: i64) -> Result<Vec<i64>, MyError> {
    Ok(vec![author_id])
}

#[cached(key = "embed:{url}", ttl = 86400, vary = user_id)]
async fn embed(url: &str, user_id: u64) -> Result<Embed, MyError> {
    Ok(Embed {
        html: format!("{url}{user_id}"),
    })
}

#[cached(key = "feed:{feed_id}", ttl = 600, cache = THIRD_PARTY.get().unwrap())]
async fn feed(feed_id: u32) -> Result<String, MyError> {
    Ok(feed_id.to_string())
}

#[cached(key = "arc:{x}", ttl = "90s", cache = SHARED)]
async fn with_arc(x: u8) -> Option<u8> {
    Some(x)
}

#[cached(key = "plain:{x}", ttl = "1h30m", cache = *PLAIN, version = 3)]
async fn with_plain(x: u8) -> u8 {
    x
}

#[cached(ttl = 60, vary = [a, b])]
async fn default_key(a: u8, b: String) -> String {
    format!("{a}{b}")
}

#[cached(key = "io:{path}", ttl = 5)]
async fn io_alias(path: &str) -> std::io::Result<String> {
    let n: usize = path.len();
    if n == 0 {
        return Err(std::io::Error::other("empty"));
    }
    Ok(path.to_owned())
}

#[cached(key = "generic:{id}", ttl = 60, skip = [_unused])]
async fn generic<'a, T, U: std::fmt::Display>(id: U, _unused: &'a str) -> T
where
    T: Default + Serialize + DeserializeOwned,
{
    let _ = id.to_string();
    T::default()
}

#[cached(key = "impl:{x}", ttl = 60)]
async fn impl_arg(x: impl std::fmt::Display + Send) -> String {
    x.to_string()
}

#[cached(key = "mut:{x}", ttl = 60)]
async fn mut_arg(mut x: u32) -> u32 {
    x += 1;
    x
}

#[cached(key = "swr:{x}", ttl = "10m", stale = "1h", early = 1.5)]
async fn refreshing(x: String) -> Result<String, MyError> {
    Ok(x)
}

#[cached(key = "literal {{braces}}:{x}", ttl = 60)]
async fn braces(x: u32) -> u32 {
    x
}

pub struct Service {
    id: u32,
    cache: Cache,
}

impl Service {
    #[cached(key = "svc:{self.id}:{name}", ttl = 60, cache = self.cache)]
    pub async fn greet(&self, name: &str) -> String {
        format!("hi {name} from {}", self.id)
    }

    #[cached(key = "svc:{n}", ttl = 60, skip = [self])]
    async fn no_self_in_key(&self, n: u32) -> u32 {
        n + self.id
    }
}

fn assert_send<F: std::future::Future + Send>(f: F) -> F {
    f
}

async fn use_all() {
    let _ = THIRD_PARTY.set(Cache::memory());
    let _ = assert_send(top_books(1)).await;
    let _ = embed("u", 1).await;
    let _ = feed(1).await;
    let _ = with_arc(1).await;
    let _ = with_plain(1).await;
    let _ = default_key(1, "b".into()).await;
    let _ = io_alias("p").await;
    let _: u64 = generic(1u8, "x").await;
    let _ = impl_arg(5).await;
    let _ = mut_arg(5).await;
    let _ = braces(5).await;
    let _ = assert_send(refreshing("s".into())).await;
    let svc = Service {
        id: 1,
        cache: Cache::memory(),
    };
    let _ = assert_send(svc.greet("x")).await;
    let _ = svc.no_self_in_key(1).await;
    // Generated helpers.
    let _: String = top_books_cache_key(1);
    let _ = top_books_invalidate(1).await;
    let _ = embed_invalidate("u").await;
    let _ = svc.greet_invalidate("x").await;
    let _: String = svc.greet_cache_key("x");
    let _: String = generic_cache_key(1u8);
    let _: String = default_key_cache_key(1, "b".into());
    let _: String = Service::no_self_in_key_cache_key(1);
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(use_all());
}
