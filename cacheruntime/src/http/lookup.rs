//! The layer's calls into the engine, as `#[cached]` makes them: the key
//! namespaced and checked once, a synchronous in-process read that answers
//! a hit without building a future, and the get-or-refresh core for
//! everything else, handed what that read found. Pages are memoised
//! ([`Memo::cloning`]): the memory store keeps one decoded page beside its
//! entry, and a hit clones it (a reference count) instead of decoding.

use std::future::Future;

use super::layer::Settings;
use super::page::Page;
use crate::entry::Accept;
use crate::fetch::{Call, Told};
use crate::key;
use crate::memo::Memo;
use crate::read::Fast;
use crate::refresh;

/// The key as the store sees it (shortened when long), or `""` when it
/// cannot be stored on every store: then the page is computed as without
/// a cache, and the failure counted and logged, as for `Cache::get`.
pub(crate) fn stored(settings: &Settings, rendered: String) -> String {
    if let Err(e) = key::check_key(&rendered) {
        settings.cache.engine.failed("get", &e);
        return String::new();
    }
    match key::stored(&rendered) {
        std::borrow::Cow::Borrowed(_) => rendered,
        std::borrow::Cow::Owned(shortened) => shortened,
    }
}

/// The synchronous read of an in-process store: `Fast::Hit` is a fresh
/// page, already counted; `Fast::Remote` for other stores.
pub(crate) fn first(settings: &Settings, key: &str) -> Fast<Page> {
    let engine = &settings.cache.engine;
    if !engine.enabled() || key.is_empty() {
        return Fast::Remote;
    }
    engine.local_read::<Page, true>(
        key,
        Accept::Exactly(settings.fingerprint),
        None,
        Memo::cloning(),
        Some(&settings.policy),
    )
}

/// The get-or-refresh core (single-flight, stale-while-revalidate, locks,
/// fail-open) for what [`first`] did not answer; `told` gets how the call
/// was answered, as the stats count it.
pub(crate) async fn fetch<E, F, Fut>(
    settings: &Settings,
    key: &str,
    first: Fast<Page>,
    told: &Told,
    compute: F,
) -> Result<Page, E>
where
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page, E>> + Send + 'static,
{
    let call = Call::new(
        &settings.policy,
        settings.fingerprint,
        None,
        Memo::cloning(),
    )
    .telling(told);
    // Called only when the computation runs (a miss or a refresh), and
    // boxed then: the layers under this one each keep a copy of the
    // unstarted body, which stays as small as the closure.
    let body = async move { Box::pin(compute()).await };
    settings
        .cache
        .engine
        .fetch(key, call, first, body, Some(refresh::spawn_refresh))
        .await
}
