//! The storage interface every backend implements.
//!
//! A backend moves opaque bytes: the [`Cache`](crate::Cache) above it owns
//! encoding, envelopes, deadlines, single-flight and fail-open behaviour. The
//! trait is object-safe (methods return boxed futures, as sqlx's `Any`
//! driver does) so a `Cache` can hold any backend, and it grows through
//! default methods so that adding an operation does not break implementors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::memo::Decoded;
use crate::Error;

/// A boxed, `Send` future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend knew about its invalidation state when it answered a read.
///
/// A miss hands the ticket to the writer, which stores the computed value
/// *under that state*: if a prefix covering the key was invalidated while the
/// value was being computed, the entry is never visible. This is what makes
/// `invalidate_prefix` safe against concurrent writers: no entry computed
/// before the invalidation returned is served after it.
///
/// Backends choose what a ticket holds: the memory store a sequence number,
/// Redis and Memcached the generations of the key's prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(TicketRepr);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TicketRepr {
    Seq(u64),
    Tag(Arc<str>),
}

impl Ticket {
    /// A ticket holding a sequence number.
    pub fn seq(n: u64) -> Self {
        Ticket(TicketRepr::Seq(n))
    }

    /// A ticket holding a text tag.
    pub fn tag(tag: impl Into<Arc<str>>) -> Self {
        Ticket(TicketRepr::Tag(tag.into()))
    }

    /// The sequence number, if this is one.
    pub fn as_seq(&self) -> Option<u64> {
        match &self.0 {
            TicketRepr::Seq(n) => Some(*n),
            TicketRepr::Tag(_) => None,
        }
    }

    /// The tag, if this is one.
    pub fn as_tag(&self) -> Option<&str> {
        match &self.0 {
            TicketRepr::Tag(t) => Some(t),
            TicketRepr::Seq(_) => None,
        }
    }
}

/// The answer to a read.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Lookup {
    /// The stored bytes, if a live entry exists.
    pub value: Option<Bytes>,
    /// The invalidation state seen by this read; pass it to
    /// [`Backend::set`] when writing the value computed after this miss.
    pub ticket: Option<Ticket>,
}

impl Lookup {
    /// A read that found `value` (or nothing) with no ticket.
    pub fn new(value: Option<Bytes>) -> Self {
        Lookup {
            value,
            ticket: None,
        }
    }

    /// Attaches the invalidation state seen by the read.
    pub fn with_ticket(mut self, ticket: Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

/// An entry held in process memory, shared by reference count, with a slot
/// where the cache keeps the decoded value of hot `Clone` types (see
/// [`Backend::get_local`]).
pub struct LocalEntry {
    bytes: Bytes,
    expires_ms: u64,
    tag: u64,
    pub(crate) decoded: OnceLock<Decoded>,
}

impl fmt::Debug for LocalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEntry")
            .field("len", &self.bytes.len())
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl LocalEntry {
    /// An entry of `bytes` live until `expires_ms`; `tag` is the backend's.
    pub fn new(bytes: Bytes, expires_ms: u64, tag: u64) -> Self {
        LocalEntry {
            bytes,
            expires_ms,
            tag,
            decoded: OnceLock::new(),
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Wall-clock ms after which the entry is gone.
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// The backend's own number for the entry (the memory store's sequence).
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

/// The answer of [`Backend::get_local`].
#[derive(Debug)]
#[non_exhaustive]
pub struct LocalLookup {
    /// The entry, if any, not yet checked for expiry: the caller compares
    /// [`LocalEntry::expires_ms`] with the clock it reads anyway (one clock
    /// read per hit instead of two).
    pub entry: Option<Arc<LocalEntry>>,
    /// As in [`Lookup::ticket`].
    pub ticket: Ticket,
}

impl LocalLookup {
    /// A read that found `entry` (or nothing) under `ticket`.
    pub fn new(entry: Option<Arc<LocalEntry>>, ticket: Ticket) -> Self {
        LocalLookup { entry, ticket }
    }
}

/// A store of bytes under string keys, with TTLs and prefix invalidation.
///
/// Keys arrive fully formed (namespace included). Prefixes passed to
/// [`invalidate_prefix`](Backend::invalidate_prefix) are whole
/// `:`-separated segments: either empty (everything) or ending in `:`; the
/// [`Cache`](crate::Cache) rejects any other prefix before it reaches the
/// backend, so every backend gives the call the same meaning.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Short name used in errors, logs and stats (`memory`, `redis`, ...).
    fn name(&self) -> &'static str;

    /// Reads the entry under `key`, ignoring expired or invalidated ones.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>>;

    /// Answers a read without a future when the backend is in-process.
    ///
    /// Returning `Some` lets the cache skip boxing a future and arming the op
    /// timeout, which is most of the cost of a memory hit. Remote backends
    /// keep the default (`None`).
    fn get_now(&self, _key: &str) -> Option<Result<Lookup, Error>> {
        None
    }

    /// For in-process stores: the entry itself, without copying its bytes,
    /// so the cache can keep the decoded value beside it. This is the memory
    /// hit path; everything else uses [`get`](Backend::get).
    fn get_local(&self, _key: &str) -> Option<LocalLookup> {
        None
    }

    /// Stores `value` under `key` for `ttl`. `ticket` is the one returned by
    /// the read that missed, if any (see [`Ticket`]).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Stores without a future when the backend is in-process (the memory
    /// store), so a miss does not arm a timer for an operation that cannot
    /// block. Remote backends keep the default (`None`).
    fn set_now(
        &self,
        _key: &str,
        _value: &Bytes,
        _ttl: Duration,
        _ticket: Option<&Ticket>,
    ) -> Option<Result<(), Error>> {
        None
    }

    /// Removes the entry under `key`, if any.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Makes every entry whose key starts with `prefix` invisible, including
    /// entries being written concurrently under an older [`Ticket`]. `prefix`
    /// is empty or ends with `:`.
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Atomically stores `value` under `key` only if no live entry is there;
    /// returns whether it did. The building block of cross-process locks.
    fn set_if_absent<'a>(
        &'a self,
        _key: &'a str,
        _value: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let backend = self.name();
        Box::pin(async move {
            Err(Error::Unsupported {
                backend,
                operation: "set_if_absent",
            })
        })
    }

    /// Atomically removes `key` only if it holds exactly `value`; returns
    /// whether it did. Releases a lock taken with
    /// [`set_if_absent`](Backend::set_if_absent) without touching a lock
    /// another holder took after ours expired.
    fn delete_if_equals<'a>(
        &'a self,
        _key: &'a str,
        _value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let backend = self.name();
        Box::pin(async move {
            Err(Error::Unsupported {
                backend,
                operation: "delete_if_equals",
            })
        })
    }
}

/// A shared backend is a backend, so tests and apps can keep a handle on the
/// store a [`Cache`](crate::Cache) uses.
impl<B: Backend> Backend for std::sync::Arc<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        (**self).get(key)
    }
    #[inline]
    fn get_now(&self, key: &str) -> Option<Result<Lookup, Error>> {
        (**self).get_now(key)
    }
    #[inline]
    fn get_local(&self, key: &str) -> Option<LocalLookup> {
        (**self).get_local(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).set(key, value, ttl, ticket)
    }
    fn set_now(
        &self,
        key: &str,
        value: &Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Option<Result<(), Error>> {
        (**self).set_now(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        (**self).delete(key)
    }
    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        (**self).invalidate_prefix(prefix)
    }
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).set_if_absent(key, value, ttl)
    }
    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).delete_if_equals(key, value)
    }
}
