//! HTTP response caching as a [`tower::Layer`] (feature `http`): whole GET
//! pages in the same [`Cache`](crate::Cache) as `#[cached]` functions.
//!
//! Why a layer on the cache rather than a cache of its own: a page then
//! gets everything the engine gives a function (single-flight, so a
//! thousand requests for a cold page run the handler once;
//! stale-while-revalidate across every process; fail-open within the op
//! timeout when the store is down; signed entries; [`Stats`](crate::Stats))
//! and one `invalidate_prefix` drops a page on every instance sharing the
//! store, where path-keyed response caches can only wait for a TTL.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use cacheruntime::http::CacheLayer;
//! use cacheruntime::Cache;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::memory();
//! let pages = CacheLayer::builder(cache.clone())
//!     .key("page:{path}:{query}")
//!     .ignore_query(["utm_*", "fbclid"])
//!     .ttl(Duration::from_secs(60))
//!     .stale(Duration::from_secs(600))
//!     .vary_on_header("Accept-Language")
//!     .build()?; // a template naming what the layer cannot see fails here
//!
//! let app = Router::new()
//!     .route("/books/{id}", get(|| async { "<h1>Emma</h1>" }))
//!     .layer(pages);
//!
//! // A purchase changed book 42: every query and language variant goes.
//! cache.invalidate_prefix("page:/books/42:").await?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Keys
//! [`CacheLayerBuilder::key`] is a template over `{method}`, `{path}`,
//! `{query}`, `{header:NAME}` and `{cookie:NAME}` (default
//! `"{path}:{query}"`); anything else, or two placeholders without a `:`
//! between them, is refused by [`CacheLayerBuilder::build`] with the fix.
//! Values are escaped as in `#[cached]` keys (`:` is `%3A`, see
//! [`key::escape`](crate::key::escape)): a path or header with a `:` cannot
//! reach another page's key or another user's variant. `{path}` is the
//! path as sent, with percent-encoded unreserved characters decoded;
//! `{query}` is the query as the handler's extractors read it, filtered by
//! [`only_query`](CacheLayerBuilder::only_query) /
//! [`ignore_query`](CacheLayerBuilder::ignore_query), sorted by name and
//! written in one encoding. `{method}` is `GET` for HEAD too. Header and
//! cookie values are written into the key as they are (escaped), so the
//! store sees them: key on a language or a theme, not on a session cookie
//! (vary on the user instead); `Authorization` alone is keyed by a hash.
//!
//! After the rendered template come `:` and the variant: one segment per
//! [`vary_on_header`](CacheLayerBuilder::vary_on_header) (its value, `%`
//! when absent), then `u=` and the user for
//! [`vary_on_user`](CacheLayerBuilder::vary_on_user), or `_` when the layer
//! varies on nothing. So `page:{path}:{query}` stores `/books/42?b=2&a=1`
//! as `page:/books/42:a=1&b=2:_`, and `invalidate_prefix("page:/books/42:")`
//! drops every variant of that page, whatever the layer varies on.
//!
//! # What is cached
//! - GET and HEAD only; HEAD is answered from the GET entry (a HEAD miss
//!   runs the handler as GET and stores its page). Other methods pass
//!   through untouched.
//! - Only the listed statuses ([`statuses`](CacheLayerBuilder::statuses),
//!   default 200, 203, 301, 404, 410); never a 5xx nor a handler error,
//!   never a response with `Set-Cookie`, `Cache-Control: private` or
//!   `no-store`, nor one whose `Vary` names a header the key does not
//!   read (`*`, or a compression layer's `Accept-Encoding`: add
//!   [`vary_on_header`](CacheLayerBuilder::vary_on_header) for it).
//! - A request with `Authorization` passes through, unless the key varies
//!   on the user or on `Authorization` (keyed by a SHA-256 of it, never the
//!   credentials). With `vary_on_user`, a request whose extensions hold no
//!   user value passes through too: put the auth layer outside this one
//!   (added after it with `Router::layer`) and have it insert a value for
//!   anonymous visitors.
//! - Bodies over [`max_body_bytes`](CacheLayerBuilder::max_body_bytes)
//!   (1 MiB) pass through complete, streamed after the part read.
//!
//! # Headers sent downstream
//! On pages it serves or stores: a strong `ETag` (the body's SHA-256,
//! unless the handler sent one), `Last-Modified` (when stored, unless the
//! handler sent one), `Age` on hits, `Cache-Control` unless the handler
//! sent one (`public, max-age=<ttl>, stale-while-revalidate=<stale>`;
//! `private` when varying on the user or on `Authorization`, or with
//! [`private`](CacheLayerBuilder::private)), `Vary` listing the headers
//! the key reads (`Cookie` for `{cookie:..}`), and `X-Cache: hit`, `miss`
//! or `stale` ([`x_cache_header`](CacheLayerBuilder::x_cache_header)):
//! `X-Cache` says what the [`Stats`](crate::Stats) count, so a request that
//! waited for another request's render of the page is a `miss`.
//! A response the handler made for a cacheable request but that may not be
//! stored goes out as the handler sent it, with `X-Cache: miss` only; a
//! request that bypasses the cache (another method, `Authorization`, no
//! user value) gets the handler's response untouched, without `X-Cache`.
//! `If-None-Match` (or, without it, `If-Modified-Since`) matching the page
//! is answered `304 Not Modified`, from the cache without running the
//! handler when the page is there. The layer's own `Last-Modified` is the
//! store time cut to the second, so two pages stored in one second share
//! it: `If-Modified-Since` is answered 304 only for a date after the page
//! was stored (its own date gets the page); `If-None-Match`, which browsers
//! send, decides exactly by the ETag. A handler's own `Last-Modified` is
//! compared as usual.
//!
//! The derived `Cache-Control` lets browsers and CDNs keep a page for its
//! TTL, and no `invalidate_prefix` reaches their copies. For pages dropped
//! on writes, send
//! [`client_cache_control`](CacheLayerBuilder::client_cache_control)`(cache_control().no_cache())`
//! instead: clients then ask each time with `If-None-Match`, answered `304`
//! from the cache.
//!
//! A handler that must set its own `Cache-Control` keeps it: the layer
//! then sends the handler's, and does not store a response marked
//! `private` or `no-store`. [`cache_control`] and [`never_cache`] write
//! those headers.
//!
//! # Staleness adds up
//! A page rendered from `#[cached]` function results can store a result
//! that was already up to the function's TTL (plus its `stale` window)
//! old, and then serve it for the page's TTL (plus its own `stale`). When
//! a write must show at once, drop the page and the function's entries;
//! when a bound is documented, the page's and the functions' TTLs together
//! must stay within it (the bookshop example splits ten minutes as 120 s
//! of page and 480 s of function).
//!
//! # When the store fails
//! As for any get-or-compute call: the handler runs and its response is
//! served, the store costing at most the cache's op timeout.

mod body;
mod control;
mod layer;
mod lookup;
mod page;
mod service;
mod template;

pub use body::CacheBody;
pub use control::{cache_control, never_cache, CacheControl};
pub use layer::{CacheLayer, CacheLayerBuilder, LayerError};
pub use service::{CacheService, ResponseFuture};
