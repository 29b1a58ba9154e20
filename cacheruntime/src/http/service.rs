//! The service a [`CacheLayer`](super::CacheLayer) wraps around a handler:
//! decides whether a request may use the cache, renders its key, and asks
//! the engine for the page as `#[cached]` does (see [`super::lookup`]): an
//! in-process hit is answered before any future is built; anything else
//! goes through the get-or-refresh core, so that single-flight,
//! stale-while-revalidate, fail-open, signing and stats are the engine's.
//! A response that may not be stored travels back as the computation's
//! `Err`, which the engine never caches.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::http::header::AUTHORIZATION;
use ::http::{Method, Request, Response};
use bytes::Bytes;
use http_body::Body;
use tower::{Service, ServiceExt};

use super::body::{read_up_to, CacheBody, Read};
use super::layer::Settings;
use super::lookup;
use super::page::{self, Conditional, Page, Served};
use crate::engine::Answer;
use crate::read::Fast;

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

/// The [`CacheService`]'s future: ready at once when the page was an
/// in-process hit, the engine's (boxed) otherwise.
pub struct ResponseFuture<T> {
    state: State<T>,
}

enum State<T> {
    Ready(Option<T>),
    Pending(BoxFuture<T>),
}

// The answer is only ever moved out, never pinned; the pending future is
// boxed.
impl<T> Unpin for ResponseFuture<T> {}

impl<T> Future for ResponseFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.get_mut().state {
            State::Ready(answer) => Poll::Ready(answer.take().expect("polled after completion")),
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Ready(_) => "ready",
            State::Pending(_) => "pending",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<T> ResponseFuture<T> {
    fn ready(answer: T) -> Self {
        ResponseFuture {
            state: State::Ready(Some(answer)),
        }
    }

    fn pending(future: impl Future<Output = T> + Send + 'static) -> Self {
        ResponseFuture {
            state: State::Pending(Box::pin(future)),
        }
    }
}

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
    type Future = ResponseFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let settings = &self.settings;
        let Some(key) = key_for(settings, &request) else {
            let inner = self.inner.clone();
            return ResponseFuture::pending(async move {
                let response = inner.oneshot(request).await?;
                Ok(response.map(CacheBody::passthrough))
            });
        };
        let first = lookup::first(settings, &key);
        let Fast::Hit(page) = first else {
            let (settings, inner) = (settings.clone(), self.inner.clone());
            return ResponseFuture::pending(serve(settings, inner, request, key, first));
        };
        let now = settings.cache.clock().now_ms();
        ResponseFuture::ready(Ok(page::respond(
            settings,
            Served::Hit,
            &Conditional::of(request.headers()),
            request.method() == Method::HEAD,
            now,
            page,
        )))
    }
}

/// How the page reached the request, as the stats counted the call: a
/// request that waited for another's computation is a miss, like the one
/// that computed.
fn served(answer: Option<&Answer>) -> Served {
    match answer {
        Some(Answer::Hit) => Served::Hit,
        Some(Answer::Stale) => Served::Stale,
        Some(Answer::Miss) | None => Served::Miss,
    }
}

/// Who may use the cache, and the key as the store sees it, or `None` to
/// pass the request on.
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
    let mut key = crate::__private::key_for(&settings.cache);
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
    Some(lookup::stored(settings, key.finish()))
}

async fn serve<S, ReqB, ResB>(
    settings: Arc<Settings>,
    inner: S,
    mut request: Request<ReqB>,
    key: String,
    first: Fast<Page>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let head = request.method() == Method::HEAD;
    if head {
        // Filled from (and into) the GET entry.
        *request.method_mut() = Method::GET;
    }
    let conditional = Conditional::of(request.headers());
    let computing = settings.clone();
    let told = OnceLock::new();
    let answer = lookup::fetch(&settings, &key, first, &told, move || {
        compute(computing, inner, request)
    })
    .await;
    match answer {
        Ok(page) => {
            let now = settings.cache.clock().now_ms();
            let served = served(told.get().map(|(answer, _)| answer));
            Ok(page::respond(
                &settings,
                served,
                &conditional,
                head,
                now,
                page,
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
            Ok(Page::new(&parts, bytes, now))
        }
        Read::Passed(body) => {
            tracing::debug!(limit = settings.max_body, "response body not cached");
            Err(Uncached::Response(Box::new(Response::from_parts(
                parts, body,
            ))))
        }
    }
}
