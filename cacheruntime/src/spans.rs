//! The `spans` feature: a `tracing` span per cached call, and one per
//! store operation inside it.
//!
//! - `cache.call` (info): `cache` (its name), `function` (`module::name`,
//!   or `(direct)` for `get_or_compute` and the HTTP layer), `store`,
//!   `result` (`hit`, `near_hit`, `stale`, `miss`), `compute_ms` (on a
//!   computation), and `key` only on a cache built with
//!   [`CacheBuilder::trace_keys`](crate::CacheBuilder::trace_keys) (keys
//!   may hold user ids).
//! - `cache.store` (debug), a child of the call's span when the operation
//!   is one of the call's: `op`, `store`, and `error` (its message, which
//!   never holds secrets) when it failed.
//!
//! Behind a feature because a span per hit, once a subscriber records it,
//! costs several times a memory hit (BENCHMARKS.md); without the feature
//! nothing of this is compiled.

use std::time::Duration;

use tracing::field::Empty;
use tracing::Span;

use crate::engine::{Answer, Engine};
use crate::site::Site;

/// Whether any subscriber may want a call span: one relaxed load, inlined
/// into the hit path, so that without a subscriber (or one filtering info
/// out) a hit makes no call for its span.
#[inline(always)]
pub(crate) fn wanted() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    STATIC_MAX_LEVEL >= tracing::Level::INFO && LevelFilter::current() >= tracing::Level::INFO
}

/// The span of one cached call (its `result` recorded when known).
pub(crate) fn call(engine: &Engine, site: Option<&Site>, key: &str) -> Span {
    let span = tracing::info_span!(
        "cache.call",
        cache = engine.label(),
        function = Empty,
        store = engine.store.backend().name(),
        result = Empty,
        compute_ms = Empty,
        key = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    match site {
        Some(site) => span.record(
            "function",
            tracing::field::display(format_args!("{}::{}", site.module, site.name)),
        ),
        None => span.record("function", crate::site::DIRECT),
    };
    if engine.trace_keys {
        span.record("key", key);
    }
    span
}

/// Records how the call of `span` was answered.
pub(crate) fn answered(span: &Span, answer: Answer, near: bool) {
    let result = match answer {
        Answer::Hit if near => "near_hit",
        Answer::Hit => "hit",
        Answer::Stale => "stale",
        Answer::Miss => "miss",
    };
    span.record("result", result);
}

/// A call answered on the synchronous path (memory store or near tier):
/// its span opens and closes at once.
#[inline(never)]
pub(crate) fn local_hit(engine: &Engine, site: Option<&Site>, key: &str, near: bool) {
    let span = call(engine, site, key);
    answered(&span, Answer::Hit, near);
}

/// Records a computation's duration on the current call's span.
pub(crate) fn computed(took: Duration) {
    Span::current().record("compute_ms", took.as_secs_f64() * 1e3);
}

/// The span of one store operation.
pub(crate) fn store(engine: &Engine, op: &'static str) -> Span {
    tracing::debug_span!(
        "cache.store",
        op,
        store = engine.store.backend().name(),
        error = Empty,
    )
}
