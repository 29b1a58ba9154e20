//! The service a [`CacheLayer`](super::CacheLayer) wraps around a handler:
//! decides whether a request may use the cache, renders its key, and asks
//! the cache for the page through [`Cache::try_get_or_refresh`], so that
//! single-flight, stale-while-revalidate, fail-open, signing and stats are
//! the engine's, exactly as for `#[cached]`. A response that may not be
//! stored travels back as the computation's `Err`, which the engine never
//! caches.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::http::header::AUTHORIZATION;
use ::http::{Method, Request, Response};
use bytes::Bytes;
use http_body::Body;
use tower::{Service, ServiceExt};

use super::body::{read_up_to, CacheBody, Read};
use super::layer::Settings;
use super::page::{self, Conditional, Page, Served};
use crate::key::KeyBuilder;
use crate::Cache;

/// The [`CacheLayer`](super::CacheLayer)'s service around `S`.
///
/// It is always ready: each request runs on a clone of `S` through
/// [`ServiceExt::oneshot`] (a refresh in the background needs its own), so
/// `S`'s readiness is awaited per request rather than here.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        CacheService { inner, settings }
    }
}

/// What a computation that must not be stored hands back.
enum Uncached<B: Body, E> {
    /// The handler's response, as it goes to the client.
    Response(Box<Response<CacheBody<B>>>),
    /// The handler's error.
    Failed(E),
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let inner = self.inner.clone();
        let settings = self.settings.clone();
        Box::pin(serve(settings, inner, request))
    }
}

/// Who may use the cache, and the key, or `None` to pass the request on.
fn key_for<B>(settings: &Settings, request: &Request<B>) -> Option<String> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return None;
    }
    if request.headers().contains_key(AUTHORIZATION) && !settings.keyed_on_credentials {
        return None;
    }
    let user = match &settings.user {
        // No user value: the auth layer did not run (or ran after this
        // one); storing would hand one user's page to others.
        Some(user) => Some((user.read)(request.extensions())?),
        None => None,
    };
    let headers = request.headers();
    let mut key = KeyBuilder::new();
    settings.template.render(
        request.method(),
        request.uri(),
        headers,
        &settings.query,
        &mut key,
    );
    key.literal(":");
    if settings.vary.is_empty() && user.is_none() {
        // One segment even when nothing varies, so that
        // `invalidate_prefix("<rendered template>:")` always reaches it.
        key.literal("_");
    }
    for (i, name) in settings.vary.iter().enumerate() {
        if i > 0 {
            key.literal(":");
        }
        let segment = super::template::header_segment(headers, name);
        // Absent (or empty): `%`, which no escaped value is, and never an
        // empty last segment (a key must not look like a prefix).
        key.literal(if segment.is_empty() { "%" } else { &segment });
    }
    if let Some(user) = user {
        if !settings.vary.is_empty() {
            key.literal(":");
        }
        // `u=` keeps a user's segment apart from any header's.
        key.literal("u=").value(&user);
    }
    Some(key.finish())
}

/// A number no other request of this process (nor, but by chance, of
/// another process) carries.
fn request_id() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn serve<S, ReqB, ResB>(
    settings: Arc<Settings>,
    inner: S,
    mut request: Request<ReqB>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let Some(key) = key_for(&settings, &request) else {
        let response = inner.oneshot(request).await?;
        return Ok(response.map(CacheBody::passthrough));
    };
    let head = request.method() == Method::HEAD;
    if head {
        // Filled from (and into) the GET entry.
        *request.method_mut() = Method::GET;
    }
    let conditional = Conditional::of(request.headers());
    let id = request_id();
    let cache: Cache = settings.cache.clone();
    let computing = settings.clone();
    let answer = cache
        .try_get_or_refresh(&key, &settings.policy, move || {
            compute(computing, inner, request, id)
        })
        .await;
    let now = cache.clock().now_ms();
    match answer {
        Ok(page) => {
            let served = if page.computed_by == id {
                Served::Miss
            } else if now >= page.stored_ms.saturating_add(settings.ttl_ms) {
                Served::Stale
            } else {
                Served::Hit
            };
            Ok(page::respond(
                &settings,
                page,
                served,
                &conditional,
                head,
                now,
            ))
        }
        Err(Uncached::Response(response)) => Ok(page::uncached(&settings, *response, head)),
        Err(Uncached::Failed(e)) => Err(e),
    }
}

/// Runs the handler and reads its response into a page, or hands it back
/// as it is when it may not be stored.
async fn compute<S, ReqB, ResB>(
    settings: Arc<Settings>,
    inner: S,
    request: Request<ReqB>,
    id: u64,
) -> Result<Page, Uncached<ResB, S::Error>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let response = inner.oneshot(request).await.map_err(Uncached::Failed)?;
    let (parts, body) = response.into_parts();
    if let Some(reason) = page::refusal(&settings, &parts) {
        tracing::debug!(reason, status = %parts.status, "response not cached");
        let body = CacheBody::passthrough(body);
        return Err(Uncached::Response(Box::new(Response::from_parts(
            parts, body,
        ))));
    }
    match read_up_to(body, settings.max_body).await {
        Read::Whole(bytes) => {
            let now = settings.cache.clock().now_ms();
            Ok(Page::new(&parts, bytes, now, id))
        }
        Read::Passed(body) => {
            tracing::debug!(limit = settings.max_body, "response body not cached");
            Err(Uncached::Response(Box::new(Response::from_parts(
                parts, body,
            ))))
        }
    }
}
