//! The layer's builder and what it checks before a single request is
//! served: a key template, header names, query patterns and statuses that
//! cannot work are refused by [`CacheLayerBuilder::build`] with the fix,
//! rather than found out per request. The settings are frozen in one `Arc`
//! shared by every clone of the layer and its services.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use ::http::Extensions;

use super::control::CacheControl;
use super::service::CacheService;
use super::template::{QueryRules, Template};
use crate::{Cache, Policy};

/// Why a [`CacheLayer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The key template names something the layer cannot see, or cannot
    /// render without ambiguity.
    #[error("key template {template:?}: {reason}")]
    Template {
        /// The template as written.
        template: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// A setting that cannot work.
    #[error("`.{method}({value})`: {reason}")]
    Setting {
        /// The builder method.
        method: &'static str,
        /// The value given to it.
        value: String,
        /// What is wrong and how to write it.
        reason: String,
    },
}

/// Reads the user a request belongs to from its extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserVary {
    pub(crate) type_name: &'static str,
    pub(crate) read: fn(&Extensions) -> Option<String>,
}

fn read_user<T: Display + Clone + Send + Sync + 'static>(ext: &Extensions) -> Option<String> {
    ext.get::<T>().map(ToString::to_string)
}

/// Everything a service needs per request, built once.
pub(crate) struct Settings {
    /// Unique per built layer in this process: pages remember the headers
    /// they were served with under it.
    pub(crate) id: u64,
    pub(crate) cache: Cache,
    pub(crate) template: Template,
    pub(crate) query: QueryRules,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) user: Option<UserVary>,
    pub(crate) policy: Policy,
    /// The stored pages' type fingerprint under `policy`.
    pub(crate) fingerprint: u64,
    pub(crate) statuses: Vec<u16>,
    pub(crate) max_body: usize,
    /// Whether a request with `Authorization` may use the cache.
    pub(crate) keyed_on_credentials: bool,
    pub(crate) cache_control: HeaderValue,
    pub(crate) vary_header: Option<HeaderValue>,
    /// The headers the key reads: a response varying on any other is not
    /// stored (it would be served to requests it was not made for).
    pub(crate) keyed_headers: Vec<HeaderName>,
    pub(crate) x_cache: bool,
}

/// A `tower::Layer` caching whole GET responses in a [`Cache`]: see the
/// [module documentation](super) for what is cached, the key and the
/// headers it sends. Built with [`CacheLayer::builder`]; cheap to clone.
#[derive(Clone)]
pub struct CacheLayer {
    settings: Arc<Settings>,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.settings.cache)
            .field("template", &self.settings.template)
            .field("vary", &self.settings.vary)
            .field("user", &self.settings.user.map(|u| u.type_name))
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// Starts a layer over `cache`. The default key is
    /// `"{path}:{query}"`; the default TTL the cache's own.
    pub fn builder(cache: Cache) -> CacheLayerBuilder {
        CacheLayerBuilder {
            cache,
            key: "{path}:{query}".to_owned(),
            ttl: None,
            stale: None,
            statuses: vec![200, 203, 301, 404, 410],
            max_body: 1 << 20,
            only_query: None,
            ignore_query: Vec::new(),
            vary: Vec::new(),
            user: None,
            private: None,
            client: None,
            x_cache: true,
        }
    }
}

impl<S> tower::Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService::new(inner, self.settings.clone())
    }
}

/// Configures a [`CacheLayer`]; [`build`](Self::build) checks it.
#[must_use]
#[derive(Debug)]
pub struct CacheLayerBuilder {
    cache: Cache,
    key: String,
    ttl: Option<Duration>,
    stale: Option<Duration>,
    statuses: Vec<u16>,
    max_body: usize,
    only_query: Option<Vec<String>>,
    ignore_query: Vec<String>,
    vary: Vec<String>,
    user: Option<UserVary>,
    private: Option<bool>,
    client: Option<CacheControl>,
    x_cache: bool,
}

impl CacheLayerBuilder {
    /// The key template: literal text with `{method}`, `{path}`,
    /// `{query}`, `{header:NAME}` and `{cookie:NAME}`, two placeholders
    /// separated by a `:` (`"page:{path}:{query}"`). Without `{query}`
    /// every query of a path shares one entry: leave it out only on routes
    /// that read no query.
    pub fn key(mut self, template: impl Into<String>) -> Self {
        self.key = template.into();
        self
    }

    /// How long a page stays fresh (the cache's default TTL otherwise);
    /// sent downstream as `max-age`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Stale-while-revalidate: after the TTL, serve the page for up to
    /// `stale` more while one request (across every process sharing the
    /// store) runs the handler again in the background; sent downstream as
    /// `stale-while-revalidate`.
    pub fn stale(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }

    /// The statuses that are cached (default 200, 203, 301, 404, 410).
    /// 1xx, 206, 304 and 5xx are refused.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Bodies larger than this pass through uncached (default 1 MiB): up to
    /// this much is buffered, the rest streamed as it comes. The cache's
    /// own `max_entry_bytes` (1 MiB by default) also bounds a stored page,
    /// headers included: a page over it is served and not stored (counted
    /// in `Stats::oversize`), so raise both together.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Only these query parameters make up `{query}` (exact names, or
    /// prefixes ending in `*`); the handler must read no others.
    pub fn only_query<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.only_query = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// These query parameters are left out of `{query}`
    /// (`["utm_*", "fbclid"]`); the handler must not read them.
    pub fn ignore_query<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.ignore_query.extend(names.into_iter().map(Into::into));
        self
    }

    /// One variant of each page per value of this request header: appends
    /// a `:`-segment to the key and lists the header in `Vary`. Varying on
    /// `Authorization` keys on a SHA-256 of it (never the credentials) and
    /// lets requests that carry it use the cache.
    pub fn vary_on_header(mut self, name: impl Into<String>) -> Self {
        self.vary.push(name.into());
        self
    }

    /// One variant of each page per user: the `T` your auth layer puts in
    /// the request extensions, by its `Display`, as the last `:`-segment of
    /// the key. Requests without a `T` are not cached (a layer order that
    /// runs the cache before the auth layer would otherwise store one
    /// user's page for everyone): have the auth layer insert a value for
    /// anonymous visitors too. Makes `Cache-Control` `private`.
    pub fn vary_on_user<T: Display + Clone + Send + Sync + 'static>(mut self) -> Self {
        self.user = Some(UserVary {
            type_name: std::any::type_name::<T>(),
            read: read_user::<T>,
        });
        self
    }

    /// `Cache-Control: private` (browsers only) instead of `public`.
    /// Without this or [`public`](Self::public), private when varying on
    /// the user or on `Authorization`.
    pub fn private(mut self) -> Self {
        self.private = Some(true);
        self
    }

    /// `Cache-Control: public` even when varying on the user: shared caches
    /// (CDNs) may then keep per-user pages, keyed only by `Vary`.
    pub fn public(mut self) -> Self {
        self.private = Some(false);
        self
    }

    /// The `Cache-Control` sent to clients, instead of the one derived from
    /// the TTL (`max-age`) and the stale window. Use it for pages you drop
    /// on writes: no invalidation reaches a browser's or a CDN's copy, so
    /// `cache_control().private().no_cache()` has them ask each time, and
    /// the layer answers their `If-None-Match` with a `304` from the cache.
    /// A handler's own `Cache-Control` still wins. With `vary_on_user` or a
    /// key on `Authorization`, it must say `private` or `no-store`
    /// ([`build`](Self::build) refuses it otherwise: a shared cache would
    /// hand one user's page to another).
    pub fn client_cache_control(mut self, header: CacheControl) -> Self {
        self.client = Some(header);
        self
    }

    /// Whether to send `X-Cache: hit | miss | stale` (default on).
    pub fn x_cache_header(mut self, on: bool) -> Self {
        self.x_cache = on;
        self
    }

    /// Checks every setting and builds the layer.
    pub fn build(self) -> Result<CacheLayer, LayerError> {
        let template = Template::parse(&self.key)?;
        let query = QueryRules::new(self.only_query.as_deref(), &self.ignore_query)?;
        let mut vary: Vec<HeaderName> = Vec::new();
        for name in &self.vary {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| setting("vary_on_header", name, "not a valid header name"))?;
            if !vary.contains(&header) {
                vary.push(header);
            }
        }
        for status in &self.statuses {
            if !(200..500).contains(status) || *status == 206 || *status == 304 {
                return Err(setting(
                    "statuses",
                    status,
                    "only final 2xx, 3xx and 4xx responses are cached (not 206 or 304, \
                     and never a 5xx)",
                ));
            }
        }
        let ttl = self.ttl.unwrap_or_else(|| self.cache.default_ttl());
        if ttl.is_zero() {
            return Err(setting(
                "ttl",
                "0s",
                "a zero TTL caches nothing: remove the layer",
            ));
        }
        let mut policy = Policy::new().ttl(ttl);
        if let Some(stale) = self.stale {
            policy = policy.stale(stale);
        }
        // Every header the key reads is one the response varies on.
        let mut listed: Vec<HeaderName> = template.headers().cloned().collect();
        listed.extend(vary.iter().cloned());
        if template.reads_cookies() {
            listed.push(COOKIE);
        }
        listed.dedup();
        let on_credentials = listed.contains(&AUTHORIZATION);
        let private = self
            .private
            .unwrap_or(self.user.is_some() || on_credentials);
        let mut cache_control = format!(
            "{}, max-age={}",
            if private { "private" } else { "public" },
            ttl.as_secs()
        );
        if let Some(stale) = self.stale {
            cache_control.push_str(&format!(", stale-while-revalidate={}", stale.as_secs()));
        }
        if let Some(client) = self.client {
            let given = client.to_string();
            if given.is_empty() {
                return Err(setting(
                    "client_cache_control",
                    "cache_control()",
                    "no directive given: add one, e.g. `cache_control().private().no_cache()`",
                ));
            }
            let per_user = self.user.is_some() || on_credentials;
            if per_user && !(given.contains("private") || given.contains("no-store")) {
                return Err(setting(
                    "client_cache_control",
                    &given,
                    "pages vary on the user: say `private` (or `no-store`), or a shared \
                     cache could hand one user's page to another",
                ));
            }
            cache_control = given;
        }
        let mut names: Vec<&str> = Vec::new();
        for name in &listed {
            if !names.contains(&name.as_str()) {
                names.push(name.as_str());
            }
        }
        let vary_header = (!names.is_empty())
            .then(|| HeaderValue::from_str(&names.join(", ")).expect("header names are valid"));
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let settings = Settings {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            template,
            query,
            vary,
            user: self.user,
            fingerprint: crate::envelope::fingerprint(
                std::any::type_name::<super::page::Page>(),
                policy.version,
            ),
            policy,
            statuses: self.statuses,
            max_body: self.max_body,
            keyed_on_credentials: on_credentials || self.user.is_some(),
            cache_control: HeaderValue::from_str(&cache_control).expect("ASCII"),
            vary_header,
            keyed_headers: listed,
            x_cache: self.x_cache,
            cache: self.cache,
        };
        Ok(CacheLayer {
            settings: Arc::new(settings),
        })
    }
}

fn setting(method: &'static str, value: impl Display, reason: &str) -> LayerError {
    LayerError::Setting {
        method,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_refuses_what_cannot_work_and_names_the_fix() {
        let cache = Cache::memory();
        let e = CacheLayer::builder(cache.clone())
            .key("page:{path}:{session}")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("{session}") && e.contains("{header:NAME}"),
            "{e}"
        );
        let e = CacheLayer::builder(cache.clone())
            .statuses([200, 500])
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("statuses(500)") && e.contains("5xx"), "{e}");
        let e = CacheLayer::builder(cache.clone())
            .vary_on_header("Accept Language")
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("vary_on_header"), "{e}");
        assert!(CacheLayer::builder(cache.clone())
            .ttl(Duration::ZERO)
            .build()
            .is_err());
    }

    #[test]
    fn cache_control_and_vary_follow_the_settings() {
        let layer = CacheLayer::builder(Cache::memory())
            .key("page:{path}:{header:Accept}")
            .ttl(Duration::from_secs(60))
            .stale(Duration::from_secs(600))
            .vary_on_header("accept-language")
            .build()
            .unwrap();
        let s = &layer.settings;
        assert_eq!(
            s.cache_control,
            "public, max-age=60, stale-while-revalidate=600"
        );
        assert_eq!(s.vary_header.as_ref().unwrap(), "accept, accept-language");
        assert!(!s.keyed_on_credentials);
        let per_user = CacheLayer::builder(Cache::memory())
            .vary_on_user::<u64>()
            .build()
            .unwrap();
        assert_eq!(per_user.settings.cache_control, "private, max-age=300");
        assert!(per_user.settings.keyed_on_credentials);
    }

    #[test]
    fn client_cache_control_replaces_the_derived_one_but_never_shares_per_user_pages() {
        use crate::http::cache_control;
        let layer = CacheLayer::builder(Cache::memory())
            .ttl(Duration::from_secs(60))
            .client_cache_control(cache_control().public().no_cache())
            .build()
            .unwrap();
        assert_eq!(layer.settings.cache_control, "public, no-cache");
        let per_user = CacheLayer::builder(Cache::memory())
            .vary_on_user::<u64>()
            .client_cache_control(cache_control().private().no_cache())
            .build()
            .unwrap();
        assert_eq!(per_user.settings.cache_control, "private, no-cache");
        for shared in [
            cache_control().public().no_cache(),
            cache_control().no_cache(),
        ] {
            let e = CacheLayer::builder(Cache::memory())
                .vary_on_user::<u64>()
                .client_cache_control(shared)
                .build()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("client_cache_control") && e.contains("private"),
                "{e}"
            );
        }
        let e = CacheLayer::builder(Cache::memory())
            .client_cache_control(cache_control())
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no directive"), "{e}");
    }
}
