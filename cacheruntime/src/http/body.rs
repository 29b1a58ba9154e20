//! The body of every response the layer returns, and reading a handler's
//! body up to the size limit.
//!
//! A page is stored whole, so the layer buffers a body to decide; but a
//! body over the limit must reach the client complete and without waiting
//! for its end, so buffering stops at the limit and the response carries
//! what was read followed by the rest of the handler's stream, unchanged
//! (its trailers and its errors included).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The body of a response from [`CacheService`](super::CacheService): a
/// stored page's bytes, or the handler's own body (after what the layer
/// read of it, if anything).
pub struct CacheBody<B: Body> {
    state: State<B>,
}

enum State<B: Body> {
    Full(Option<Bytes>),
    Stream {
        head: Option<Bytes>,
        held: Option<Result<Frame<Bytes>, B::Error>>,
        rest: Option<Pin<Box<B>>>,
    },
}

// No field is pinned in place: the handler's body is boxed.
impl<B: Body> Unpin for CacheBody<B> {}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            State::Full(b) => f
                .debug_struct("CacheBody::Full")
                .field("len", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            State::Stream { .. } => f.write_str("CacheBody::Stream"),
        }
    }
}

impl<B: Body> CacheBody<B> {
    /// A stored page's bytes.
    pub(crate) fn full(bytes: Bytes) -> Self {
        CacheBody {
            state: State::Full(Some(bytes)),
        }
    }

    /// No body (HEAD, 304).
    pub(crate) fn empty() -> Self {
        CacheBody {
            state: State::Full(None),
        }
    }

    /// The handler's body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self::resume(Bytes::new(), None, Box::pin(body))
    }

    fn resume(
        head: Bytes,
        held: Option<Result<Frame<Bytes>, B::Error>>,
        rest: Pin<Box<B>>,
    ) -> Self {
        CacheBody {
            state: State::Stream {
                head: Some(head),
                held,
                rest: Some(rest),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().state {
            State::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            State::Stream { head, held, rest } => {
                if let Some(bytes) = head.take().filter(|b| !b.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if let Some(frame) = held.take() {
                    if frame.is_err() {
                        *rest = None;
                    }
                    return Poll::Ready(Some(frame));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            State::Stream { head, held, rest } => {
                head.as_ref().is_none_or(Bytes::is_empty)
                    && held.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            State::Stream { head, held, rest } => {
                let head = head.as_ref().map_or(0, |b| b.len() as u64);
                let mut hint = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                if held.is_some() {
                    return SizeHint::new();
                }
                hint.set_lower(hint.lower() + head);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

/// What reading a handler's body up to the limit gave.
pub(crate) enum Read<B: Body> {
    /// The whole body, within the limit: storable.
    Whole(Bytes),
    /// Over the limit, or with trailers or an error: to pass through.
    Passed(CacheBody<B>),
}

/// Reads `body` whole if it is at most `limit` bytes; otherwise stops at
/// the limit and hands back a body that replays what was read, then the
/// rest. A body known to be larger is not read at all.
pub(crate) async fn read_up_to<B>(body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Read::Passed(CacheBody::passthrough(body));
    }
    // Boxed once, so a body that is not `Unpin` can be polled here and
    // handed on as it is.
    let mut body = Box::pin(body);
    // Most handlers answer in one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    let read = |first: Option<Bytes>, more: BytesMut| match first {
        Some(first) if more.is_empty() => first,
        Some(first) => {
            let mut all = BytesMut::with_capacity(first.len() + more.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&more);
            all.freeze()
        }
        None => Bytes::new(),
    };
    loop {
        let frame = body.frame().await;
        let len = first.as_ref().map_or(0, Bytes::len) + more.len();
        match frame {
            None => return Read::Whole(read(first, more)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if len + data.len() <= limit => match &first {
                    None => first = Some(data),
                    Some(_) => more.extend_from_slice(&data),
                },
                Ok(data) => {
                    let head = read(first, more);
                    let mut all = BytesMut::with_capacity(head.len() + data.len());
                    all.extend_from_slice(&head);
                    all.extend_from_slice(&data);
                    return Read::Passed(CacheBody::resume(all.freeze(), None, body));
                }
                Err(trailers) => {
                    let head = read(first, more);
                    return Read::Passed(CacheBody::resume(head, Some(Ok(trailers)), body));
                }
            },
            Some(Err(e)) => {
                let head = read(first, more);
                return Read::Passed(CacheBody::resume(head, Some(Err(e)), body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body in chunks with no size hint, as a streaming handler sends.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(parts.iter().copied().collect())
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_stored_one_byte_more_replays_whole() {
        match read_up_to(chunks(&["abc", "de"]), 5).await {
            Read::Whole(b) => assert_eq!(b, "abcde"),
            Read::Passed(_) => panic!("5 bytes fit a 5-byte limit"),
        }
        let Read::Passed(body) = read_up_to(chunks(&["abc", "def", "gh"]), 5).await else {
            panic!("8 bytes do not fit");
        };
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdefgh", "what was read, then the rest");
        let full = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        assert!(
            matches!(read_up_to(full, 5).await, Read::Passed(_)),
            "a body known to be larger is not read"
        );
    }
}
