//! `Cache-Control` for handlers that must set their own, in the spirit of
//! Django's `@cache_control` and `@never_cache`.
//!
//! The layer keeps a handler's `Cache-Control` rather than writing its
//! own, and refuses to store a response marked `private` or `no-store`; so
//! one line in a handler both tells browsers and CDNs what to do and keeps
//! the page out of the layer's cache when it must be. The helpers return
//! header pairs, which axum takes as response parts:
//! `(never_cache(), body)`.

use std::time::Duration;

use ::http::header::{HeaderName, HeaderValue, CACHE_CONTROL};

/// The header of a response no cache may keep or reuse without asking:
/// `Cache-Control: max-age=0, no-cache, no-store, must-revalidate, private`
/// (what Django's `never_cache` sends). The layer never stores it.
///
/// ```
/// use cacheruntime::http::never_cache;
///
/// async fn account() -> impl axum::response::IntoResponse {
///     (never_cache(), "your balance")
/// }
/// # let (name, value) = &never_cache()[0];
/// # assert_eq!(name, "cache-control");
/// # assert!(value.to_str().unwrap().contains("no-store"));
/// ```
pub fn never_cache() -> [(HeaderName, HeaderValue); 1] {
    [(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=0, no-cache, no-store, must-revalidate, private"),
    )]
}

/// Starts a `Cache-Control` header for a handler to send
/// ([`CacheControl::header`]). Directives come out in the order of RFC
/// 9111's list, whatever the order of the calls.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::http::cache_control;
///
/// async fn logo() -> impl axum::response::IntoResponse {
///     let year = Duration::from_secs(365 * 24 * 3600);
///     (cache_control().public().max_age(year).immutable().header(), "<svg/>")
/// }
/// let cc = cache_control().max_age(Duration::from_secs(60)).stale_while_revalidate(Duration::from_secs(600));
/// assert_eq!(cc.to_string(), "max-age=60, stale-while-revalidate=600");
/// ```
pub fn cache_control() -> CacheControl {
    CacheControl::default()
}

/// The directives of a `Cache-Control` header: see [`cache_control`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct CacheControl {
    public: bool,
    private: bool,
    no_cache: bool,
    no_store: bool,
    must_revalidate: bool,
    immutable: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

impl CacheControl {
    /// `public`: shared caches (CDNs) may keep it.
    pub fn public(mut self) -> Self {
        self.public = true;
        self.private = false;
        self
    }

    /// `private`: browsers only; the layer does not store it either.
    pub fn private(mut self) -> Self {
        self.private = true;
        self.public = false;
        self
    }

    /// `no-cache`: keep it, but ask the server before each reuse.
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// `no-store`: keep it nowhere; the layer does not store it either.
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// `must-revalidate`: never serve it stale.
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }

    /// `immutable`: it will not change while fresh (fingerprinted assets).
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// `max-age`, in whole seconds.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age.as_secs());
        self
    }

    /// `s-maxage`: `max-age` for shared caches only.
    pub fn s_maxage(mut self, age: Duration) -> Self {
        self.s_maxage = Some(age.as_secs());
        self
    }

    /// `stale-while-revalidate`: how long past `max-age` a cache may serve
    /// it while fetching a fresh one.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window.as_secs());
        self
    }

    /// `stale-if-error`: how long past `max-age` a cache may serve it when
    /// the server fails.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window.as_secs());
        self
    }

    /// The header pair, for a handler's response parts.
    pub fn header(self) -> [(HeaderName, HeaderValue); 1] {
        [(CACHE_CONTROL, HeaderValue::from(self))]
    }
}

impl std::fmt::Display for CacheControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = [
            (self.public, "public"),
            (self.private, "private"),
            (self.no_cache, "no-cache"),
            (self.no_store, "no-store"),
            (self.must_revalidate, "must-revalidate"),
            (self.immutable, "immutable"),
        ];
        let values = [
            (self.max_age, "max-age"),
            (self.s_maxage, "s-maxage"),
            (self.stale_while_revalidate, "stale-while-revalidate"),
            (self.stale_if_error, "stale-if-error"),
        ];
        let mut sep = "";
        for (on, name) in flags {
            if on {
                write!(f, "{sep}{name}")?;
                sep = ", ";
            }
        }
        for (value, name) in values {
            if let Some(secs) = value {
                write!(f, "{sep}{name}={secs}")?;
                sep = ", ";
            }
        }
        Ok(())
    }
}

impl From<CacheControl> for HeaderValue {
    fn from(cc: CacheControl) -> HeaderValue {
        // Directive names and decimal numbers: always a valid value.
        HeaderValue::from_str(&cc.to_string()).expect("ASCII directives")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_in_a_fixed_order_and_public_private_exclusive() {
        let cc = cache_control()
            .stale_if_error(Duration::from_secs(5))
            .max_age(Duration::from_secs(60))
            .private()
            .public();
        assert_eq!(cc.to_string(), "public, max-age=60, stale-if-error=5");
        assert_eq!(cache_control().to_string(), "");
        assert_eq!(
            cache_control().no_store().private().header()[0].1,
            "private, no-store"
        );
    }
}
