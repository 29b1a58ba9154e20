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
use std::time::Duration;

use bytes::Bytes;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

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

    /// Stores `value` under `key` for `ttl`. `ticket` is the one returned by
    /// the read that missed, if any (see [`Ticket`]).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>>;

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
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).set(key, value, ttl, ticket)
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
