//! What `#[cached]` expands to. Not public API: no stability promise.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::Always;
pub use crate::default::default_cache;
pub use crate::key::KeyBuilder;
pub use crate::policy::Policy;
pub use crate::site::Site;
use crate::Cache;

/// A `#[cached]` function whose every return value is cached.
#[inline]
pub async fn cached_value<T, F>(cache: &Cache, site: &'static Site, key: String, body: F) -> T
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = T>,
{
    let fp = site.fingerprint::<T>();
    cache
        .fetch(&key, &site.policy, fp, Some(site), async move {
            Always(body.await)
        })
        .await
        .0
}

/// A `#[cached]` function returning `Result`: `Ok` is cached, `Err` never.
#[inline]
pub async fn cached_result<T, E, F>(
    cache: &Cache,
    site: &'static Site,
    key: String,
    body: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = Result<T, E>>,
{
    let fp = site.fingerprint::<T>();
    cache.fetch(&key, &site.policy, fp, Some(site), body).await
}

/// The key prefix covering every variant of one rendered key.
pub fn variants_prefix(key: &str) -> String {
    format!("{key}:")
}

/// Checks at the argument's span that a key placeholder is `Display`.
#[inline(always)]
pub fn display<T: std::fmt::Display + ?Sized>(value: &T) -> &T {
    value
}

/// Checks at the return type's span that the cached value is storable.
pub fn assert_cacheable<T: Serialize + DeserializeOwned>() {}

/// The default key's prefix, computed on the spot (for the helpers).
pub fn default_prefix(module: &str, name: &str) -> String {
    format!("{}.{}", module.replace("::", "."), name)
}
