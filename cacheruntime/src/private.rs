//! What `#[cached]` expands to. Not public API: no stability promise.
//!
//! This module is the whole contract between the macro and the runtime:
//! generated code names nothing else of the crate but `Cache` and `Error`.
//! It gets a `Site` static, a `KeyBuilder`, a `Memo` picked by `Probe`, then
//! calls `local_hit` (a `Fast::Hit` returns at once) and, on anything else,
//! one of the four `cached_*` entry points with the `Fast` unopened. Every
//! bound on the stored type is [`Cacheable`], so one unmet bound is one
//! error at the return type. Engine details (refresh jobs, calls, tickets)
//! stay behind these functions, so the engine changes without the macro.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::decision::{ttl_of, Decision, IntoTtl};
pub use crate::default::default_cache;
use crate::entry::Accept;
use crate::fetch::Call;
pub use crate::ids::{assert_id_shape, clone_for_refresh, store_ids, IdShape, IdSlot, Rows};
pub use crate::key::KeyBuilder;
pub use crate::memo::{Memo, Probe, ViaClone, ViaDecode};
pub use crate::named::NamedCache;
use crate::outcome::{Always, Decided, Outcome};
pub use crate::policy::Policy;
use crate::read::Fast;
use crate::refresh::{spawn_refresh, RefreshJob};
pub use crate::site::Site;
use crate::stamp::Stamp;
use crate::Cache;

/// What a `#[cached]` function's stored value needs. Every bound the
/// generated code puts on that type goes through this one trait, and the
/// calls carrying it are spanned at the type in the signature: a type
/// without `Serialize` or `Deserialize` gives one error, there, saying what
/// to derive.
#[diagnostic::on_unimplemented(
    message = "`#[cached]` cannot store `{Self}`: it needs `serde::Serialize` and `serde::Deserialize`",
    label = "the cached value: it is stored serialized",
    note = "derive both where they are missing: `#[derive(serde::Serialize, serde::Deserialize)]`; for a type from another crate, see whether the crate has a `serde` feature"
)]
pub trait Cacheable: Serialize + DeserializeOwned {}

/// Any serde type. `do_not_recommend`: a missing impl is reported as
/// `Cacheable` (the message above), not as the serde bound behind it.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Cacheable for T {}

/// A key builder that starts with the cache's namespace.
#[inline]
pub fn key_for(cache: &Cache) -> KeyBuilder {
    let mut k = KeyBuilder::new();
    let namespace = cache.engine.namespace();
    if !namespace.is_empty() {
        k.literal(namespace);
    }
    k
}

/// `early = CONST`: XFetch's beta from a constant expression, checked
/// where the function's static policy is evaluated (at compile time).
pub const fn early_beta(beta: f64) -> f64 {
    assert!(
        beta.is_finite() && beta > 0.0,
        "`early` must be a positive number (XFetch's beta), like 1.0"
    );
    beta
}

/// What the synchronous read found when it is not a hit, opaque to the
/// generated code: handed on, unopened, to a `cached_*` entry point. (The
/// engine's enum stays private, so it can change without the macro.)
pub struct First<T>(Fast<T>, Option<Stamp>);

/// The synchronous hit path `#[cached]` tries first: in-process stores
/// answer here without building the async machinery. `Ok` is a fresh hit
/// (already counted).
#[inline]
pub fn local_hit<T: Cacheable>(
    cache: &Cache,
    site: &'static Site,
    key: &KeyBuilder,
    memo: Memo<T>,
) -> Result<T, First<T>> {
    if !key.tags().is_empty() {
        return tagged_local_hit(cache, site, key, memo);
    }
    match local_read(
        cache,
        site,
        key,
        memo,
        Accept::Exactly(site.fingerprint::<T>()),
    ) {
        Fast::Hit(value) => Ok(value),
        other => Err(First(other, None)),
    }
}

/// [`local_hit`] for a call with tags: on the in-process store, their
/// tokens are read (synchronously) first, and kept for the miss path.
#[inline(never)]
fn tagged_local_hit<T: Cacheable>(
    cache: &Cache,
    site: &'static Site,
    key: &KeyBuilder,
    memo: Memo<T>,
) -> Result<T, First<T>> {
    let engine = &cache.engine;
    let Some(memory) = engine.store.memory() else {
        return Err(First(Fast::Remote, None));
    };
    // A tag that cannot be read or created: the miss path reports it.
    let Ok(stamp) = engine.stamp_local(memory, key.tags()) else {
        return Err(First(Fast::Remote, None));
    };
    let accept = Accept::Stamped(stamp.fingerprint(site.fingerprint::<T>()));
    match local_read(cache, site, key, memo, accept) {
        Fast::Hit(value) => Ok(value),
        other => Err(First(other, Some(stamp))),
    }
}

#[inline(always)]
fn local_read<T: Cacheable>(
    cache: &Cache,
    site: &'static Site,
    key: &KeyBuilder,
    memo: Memo<T>,
    accept: Accept,
) -> Fast<T> {
    if !cache.engine.enabled() {
        return Fast::Remote;
    }
    // A hit is this call's answer (counted there); anything else is
    // counted by the core.
    cache.engine.local_read::<T, true>(
        &crate::key::stored(key.as_str()),
        accept,
        Some(site),
        memo,
        Some(&site.policy),
    )
}

/// What the four `cached_*` entry points share: the site's fingerprint and
/// policy, then the get-or-compute core.
#[inline]
async fn run<O, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<O::Value>,
    first: First<O::Value>,
    body: F,
    refresh: Option<fn(F, RefreshJob)>,
) -> O
where
    O: Outcome,
    F: Future<Output = O>,
{
    let fp = site.fingerprint::<O::Value>();
    let mut call = Call::new(&site.policy, fp, Some(site), memo);
    let engine = &cache.engine;
    let First(first, stamp) = first;
    if !key.tags().is_empty() && engine.enabled() {
        // The tags' tokens are read before the entry: a value computed
        // from here on is recorded under them.
        let stamp = match stamp {
            Some(stamp) => Ok(stamp),
            None => engine.stamp(key.tags()).await,
        };
        match stamp {
            Ok(stamp) => call = call.stamped(std::sync::Arc::new(stamp)),
            // Unknown tokens: computed, not stored, as without a cache.
            Err(e) => return engine.uncached(site, "tags", &e, body).await,
        }
    }
    engine
        .fetch(
            &crate::key::stored(key.as_str()),
            call,
            first,
            body,
            refresh,
        )
        .await
}

/// A `#[cached]` function whose every return value is cached.
#[inline]
pub async fn cached_value<T, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> T
where
    T: Cacheable,
    F: Future<Output = T>,
{
    run(
        cache,
        site,
        key,
        memo,
        first,
        async move { Always(body.await) },
        None,
    )
    .await
    .0
}

/// A `#[cached]` function returning `Result`: `Ok` is cached, `Err` never.
#[inline]
pub async fn cached_result<T, E, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> Result<T, E>
where
    T: Cacheable,
    F: Future<Output = Result<T, E>>,
{
    run(cache, site, key, memo, first, body, None).await
}

/// The key prefix covering every variant of one rendered key.
pub fn variants_prefix(key: &str) -> String {
    format!("{key}:")
}

/// Checks at the argument's span that a key placeholder is `Display`, and
/// captures it both typed (for the integer fast path) and as `&dyn Display`
/// (so the fallback needs no bound of its own, and a missing `Display` is
/// reported once, here).
#[inline(always)]
pub fn display<T: std::fmt::Display>(value: &T) -> KeyArg<'_, T> {
    KeyArg(value, value)
}

/// One interpolated key value. `(&&KeyArg(..)).push_to(k)` writes integers
/// with `itoa` (they never need escaping) and everything else through
/// `Display` with escaping: autoref specialisation, resolved at compile time.
pub struct KeyArg<'a, T>(pub &'a T, pub &'a dyn std::fmt::Display);

/// Integers: formatted without `fmt` machinery.
pub trait KeyInt {
    /// Appends the value to the key.
    fn push_to(&self, key: &mut KeyBuilder);
}

macro_rules! key_ints {
    ($($t:ty),*) => {$(
        impl KeyInt for &KeyArg<'_, $t> {
            #[inline]
            fn push_to(&self, key: &mut KeyBuilder) {
                key.literal(itoa::Buffer::new().format(*self.0));
            }
        }
    )*};
}
key_ints!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

/// Everything else: `Display`, escaped.
pub trait KeyDisplay {
    /// Appends the value to the key.
    fn push_to(&self, key: &mut KeyBuilder);
}

impl<T> KeyDisplay for KeyArg<'_, T> {
    #[inline]
    fn push_to(&self, key: &mut KeyBuilder) {
        key.value(self.1);
    }
}

/// The default key's prefix for the helpers `<name>_cache_key` and
/// `<name>_invalidate` (`helper`), computed on the spot: `probe` is a
/// closure made in the helper, whose path is the function's with the
/// helper's name in place of the function's (the helpers take the same
/// generic parameters, so the rest of the path is the same).
pub fn helper_default_prefix<C>(
    probe: C,
    name: &str,
    helper: &str,
    line: u32,
    column: u32,
) -> String {
    let path = crate::site::type_name_of(probe);
    crate::site::default_prefix(&rename_last(path, helper, name), line, column)
}

/// `path` with its segment `::<helper>` (the last one, before the generic
/// arguments and closures) renamed `::<name>`.
fn rename_last<'a>(path: &'a str, helper: &str, name: &str) -> std::borrow::Cow<'a, str> {
    let segment = format!("::{helper}");
    let mut trimmed = path;
    while let Some(rest) = trimmed.strip_suffix("::{{closure}}") {
        trimmed = rest;
    }
    // The helper's segment ends the path or opens its generic arguments;
    // the arguments come after it, so the last such match is the helper.
    let found = trimmed
        .rmatch_indices(&segment)
        .map(|(at, _)| at)
        .find(|&at| {
            matches!(
                trimmed.as_bytes().get(at + segment.len()),
                None | Some(b'<')
            )
        });
    match found {
        Some(at) => std::borrow::Cow::Owned(format!(
            "{}::{name}{}",
            &trimmed[..at],
            &trimmed[at + segment.len()..]
        )),
        // Only if a compiler printed paths otherwise: the helper's own path
        // (tests/cached.rs compares the helpers' keys with the function's).
        None => std::borrow::Cow::Borrowed(path),
    }
}

/// [`cached_value`] with background refresh (`stale` / `early`): the body
/// must be `Send + 'static` since it may run in a spawned task.
#[inline]
pub async fn cached_value_refreshing<T, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> T
where
    T: Cacheable + Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let body = async move { Always(body.await) };
    run(cache, site, key, memo, first, body, Some(spawn_refresh))
        .await
        .0
}

/// [`cached_result`] with background refresh (`stale` / `early`).
#[inline]
pub async fn cached_result_refreshing<T, E, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> Result<T, E>
where
    T: Cacheable + Send + 'static,
    E: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    run(cache, site, key, memo, first, body, Some(spawn_refresh)).await
}

/// A body yielding `(outcome, decision)` as the engine's [`Decided`].
async fn decided<T, E>(
    body: impl Future<Output = (Result<T, E>, Decision)>,
) -> Decided<Result<T, E>> {
    let (out, decision) = body.await;
    Decided(out, decision)
}

/// A `#[cached]` function whose computation decides how (or whether) its
/// value is stored: `ttl` or `stale` expressions, `ttl = |value| ..`,
/// `unless = |value| ..`. The body yields the outcome and the decision; a
/// function returning a plain value passes `Ok::<T, Infallible>`.
#[inline]
pub async fn cached_result_deciding<T, E, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> Result<T, E>
where
    T: Cacheable,
    F: Future<Output = (Result<T, E>, Decision)>,
{
    let body = decided(body);
    run(cache, site, key, memo, first, body, None).await.0
}

/// [`cached_result_deciding`] with background refresh (`stale` / `early`).
#[inline]
pub async fn cached_result_deciding_refreshing<T, E, F>(
    cache: &Cache,
    site: &'static Site,
    key: KeyBuilder,
    memo: Memo<T>,
    first: First<T>,
    body: F,
) -> Result<T, E>
where
    T: Cacheable + Send + 'static,
    E: Send + 'static,
    F: Future<Output = (Result<T, E>, Decision)> + Send + 'static,
{
    let body = decided(body);
    run(cache, site, key, memo, first, body, Some(spawn_refresh))
        .await
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_name_the_function_in_its_path() {
        assert_eq!(
            rename_last(
                "app::Repo<u8>::get_cache_key::{{closure}}",
                "get_cache_key",
                "get"
            ),
            "app::Repo<u8>::get"
        );
        assert_eq!(
            rename_last(
                "app::f_invalidate::g::f_invalidate<app::T>::{{closure}}::{{closure}}",
                "f_invalidate",
                "f"
            ),
            "app::f_invalidate::g::f<app::T>"
        );
    }
}
