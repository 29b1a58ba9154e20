//! The process-wide cache `#[cached]` uses when no `cache = ...` is given.

use std::sync::atomic::{AtomicPtr, Ordering};

use crate::Cache;

static DEFAULT: AtomicPtr<Cache> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the cache that `#[cached]` functions without `cache = ...` use.
///
/// This is what keeps the store out of the code: functions name no cache,
/// and `main` decides, from configuration, which one they all share. Call it
/// once at startup, before serving: until then (or if it is never called)
/// they use a process-wide [`Cache::memory`].
///
/// ```
/// use cacheruntime::{cached, Cache};
///
/// #[cached(key = "greeting:{name}")]
/// async fn greeting(name: &str) -> String {
///     format!("hello {name}")
/// }
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> Result<(), cacheruntime::Error> {
///     // In production `Cache::from_env()`, which reads CACHE_URL.
///     let cache = Cache::from_url("memory://?namespace=web").await?;
///     cacheruntime::set_default(cache.clone());
///
///     assert_eq!(greeting("Ann").await, "hello Ann");
///     assert_eq!(cache.stats().misses, 1); // the call went to the installed cache
///     Ok(())
/// }
/// ```
///
/// Replacing an installed cache works, but the replaced cache is never
/// dropped: calls already running may hold a `&'static` reference to it, so
/// its handle is leaked on purpose, and with it its store (a memory store's
/// entries, a remote store's connections) for the rest of the process. Call
/// it once; to switch stores at run time, pass your own handle with
/// `#[cached(cache = ...)]` instead.
pub fn set_default(cache: Cache) {
    let new = Box::into_raw(Box::new(cache));
    DEFAULT.swap(new, Ordering::AcqRel);
}

/// The cache installed by [`set_default`], or the process-wide memory cache.
#[inline]
pub fn default_cache() -> &'static Cache {
    let p = DEFAULT.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: pointers stored in DEFAULT come from Box::into_raw and are
        // never freed, so they are valid for 'static.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Cache::memory()));
    match DEFAULT.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: as above; we just stored it.
        Ok(_) => unsafe { &*fresh },
        Err(current) => {
            // SAFETY: `fresh` was never shared; `current` is a leaked Box.
            drop(unsafe { Box::from_raw(fresh) });
            unsafe { &*current }
        }
    }
}
