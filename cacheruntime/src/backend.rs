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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::Error;

/// A boxed, `Send` future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend knew about its invalidation state when it answered a read.
///
/// A miss hands the ticket to the writer, which stores the computed value
/// *under that state*: if a prefix covering the key was invalidated, or the
/// key deleted, while the value was being computed, the entry is never
/// visible. This is what makes `invalidate_prefix` and `delete` safe against
/// concurrent writers: no entry computed before either returned is served
/// after it.
///
/// Tickets also decide who may share a computation: a caller is handed the
/// value of a computation already running only if that computation's read
/// saw every invalidation of the key that the caller's own read saw
/// ([`covers`](Ticket::covers)).
///
/// Backends choose what a ticket holds: the memory store a sequence number,
/// SQL a sequence number and the newest invalidation of the key, Redis and
/// Memcached the generations of the key and its prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(TicketRepr);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TicketRepr {
    Seq(u64),
    Scoped { seq: u64, scope: u64 },
    Tag(Arc<str>),
}

impl Ticket {
    /// A ticket holding a store-wide sequence number that only grows.
    pub fn seq(n: u64) -> Self {
        Ticket(TicketRepr::Seq(n))
    }

    /// A store-wide sequence number for writes, and `scope`: a number that
    /// grows with every invalidation or delete reaching this key, and only
    /// with those. Two reads of a key with the same scope saw the same
    /// invalidations of it, whatever happened elsewhere in the store.
    pub fn scoped(seq: u64, scope: u64) -> Self {
        Ticket(TicketRepr::Scoped { seq, scope })
    }

    /// A ticket holding a text tag: `.`-separated numbers that only grow
    /// (generations), or any text compared for equality.
    pub fn tag(tag: impl Into<Arc<str>>) -> Self {
        Ticket(TicketRepr::Tag(tag.into()))
    }

    /// The sequence number, if this is one.
    pub fn as_seq(&self) -> Option<u64> {
        match &self.0 {
            TicketRepr::Seq(n) | TicketRepr::Scoped { seq: n, .. } => Some(*n),
            TicketRepr::Tag(_) => None,
        }
    }

    /// The tag, if this is one.
    pub fn as_tag(&self) -> Option<&str> {
        match &self.0 {
            TicketRepr::Tag(t) => Some(t),
            _ => None,
        }
    }

    /// Whether a read under `self` saw every invalidation of the key that a
    /// read under `other` saw, so that a value computed after the `self`
    /// read may be handed to the `other` reader.
    ///
    /// Sequence numbers compare as numbers, scopes as numbers, tags number
    /// by number when both are `.`-separated numbers of the same length
    /// (generations), and otherwise only equal tags cover each other.
    pub fn covers(&self, other: &Ticket) -> bool {
        match (&self.0, &other.0) {
            (TicketRepr::Seq(a), TicketRepr::Seq(b)) => a >= b,
            (TicketRepr::Scoped { scope: a, .. }, TicketRepr::Scoped { scope: b, .. }) => a >= b,
            (TicketRepr::Tag(a), TicketRepr::Tag(b)) => a == b || generations_cover(a, b),
            _ => false,
        }
    }
}

/// `a` and `b` are `.`-separated decimal numbers of the same count, and
/// each of `a`'s is at least `b`'s.
fn generations_cover(a: &str, b: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (mut xs, mut ys) = (a.split('.'), b.split('.'));
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if number(x) && number(y) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                if (x.len(), x) < (y.len(), y) {
                    return false;
                }
            }
            _ => return false,
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

    /// The largest value (in bytes) the store can hold, if it has a limit
    /// below what the cache might hand it: the cache refuses, at build, a
    /// `max_entry_bytes` above it rather than drop such values in silence.
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether the backend isolates failures itself, finer than the whole
    /// store: it keeps its own circuit breakers (Memcached: one per server)
    /// and fails fast, with [`Error::CircuitOpen`], only the calls that
    /// need the part of the store that is down.
    ///
    /// When true, the cache does not count this backend's failures towards
    /// its own whole-store breaker, so one dead server of a pool does not
    /// switch caching off for the keys the other servers hold. Default
    /// `false`: the cache's breaker covers the store.
    fn isolates_failures(&self) -> bool {
        false
    }

    /// Reads the entry under `key`, ignoring expired or invalidated ones.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>>;

    /// Stores `value` under `key` for `ttl`. `ticket` is the one returned by
    /// the read that missed, if any (see [`Ticket`]).
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Removes the entry under `key`, if any, including an entry being
    /// written concurrently under an older [`Ticket`]: after this returns, a
    /// write under a ticket read before it must never become visible.
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
    fn max_value_bytes(&self) -> Option<usize> {
        (**self).max_value_bytes()
    }
    fn isolates_failures(&self) -> bool {
        (**self).isolates_failures()
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        (**self).get(key)
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
