//! The one error type of the crate.
//!
//! Messages say what to do about the problem. None of them ever carries a
//! password, a token or a signing key: of a URL an error shows the scheme,
//! hosts and ports only (see [`crate::url::redact`]), and the messages of
//! client libraries are scrubbed of every form of the URL's secrets.

use std::time::Duration;

/// Everything that can go wrong in a cache call.
///
/// `#[cached]` functions never see these: a failing cache makes them compute
/// and return their own value, and the error is counted in
/// [`Stats::errors`](crate::Stats) and logged. The direct API (`get`, `set`,
/// `invalidate_prefix`, ...) returns them so that callers can decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store answered with an error or the connection failed.
    #[error("cache backend `{backend}` failed: {message}")]
    Backend {
        /// The backend's name (`memory`, `redis`, ...).
        backend: &'static str,
        /// What the backend said, without secrets.
        message: String,
    },
    /// The store did not answer within the op timeout.
    #[error(
        "cache backend `{backend}` did not answer within {timeout:?}; if the store is \
         just slow, raise the limit with `Cache::builder().op_timeout(..)`"
    )]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// The op timeout that ran out.
        timeout: Duration,
    },
    /// Calls skip the store for a while after repeated failures.
    #[error(
        "cache backend `{backend}` is skipped after repeated failures (circuit open); \
         it is tried again on its own after the cool-down"
    )]
    CircuitOpen {
        /// The backend's name.
        backend: &'static str,
    },
    /// The value could not be serialized by the codec.
    #[error("could not encode the value with the {codec} codec: {message}")]
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// A stored entry could not be read back (corrupt, another type, another
    /// format version). The entry is treated as a miss and overwritten.
    #[error("could not decode the cached entry: {message}")]
    Decode {
        /// Why the entry was rejected.
        message: String,
    },
    /// The encoded value is larger than the cache accepts; it is not stored.
    #[error(
        "the encoded value is {size} bytes, over the max entry size of {limit} bytes; it was \
         not stored (raise the limit with `Cache::builder().max_entry_bytes(..)`)"
    )]
    TooLarge {
        /// Encoded size of the entry.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A prefix that this cache cannot invalidate exactly.
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// Why, and what to pass instead.
        reason: &'static str,
    },
    /// A key that no backend can store.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why, and what to pass instead.
        reason: &'static str,
    },
    /// A tag that entries cannot be stored or invalidated under.
    #[error("invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The tag as given (at most 64 characters of it).
        tag: String,
        /// Why, and what to pass instead.
        reason: &'static str,
    },
    /// A malformed or unsupported cache URL.
    #[error("invalid cache URL `{url}`: {message}")]
    InvalidUrl {
        /// The URL's scheme, hosts and ports (for SQLite, the file path):
        /// never its user info, path or query, see [`crate::url::redact`].
        url: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A builder setting out of range.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// A read-then-write op (`add`, `touch`, `incr`, `decr`) found the key
    /// changed by other writers between its read and its write on every
    /// attempt, for the whole op timeout. Nothing was written.
    #[error(
        "key {key:?} kept changing under other writers for {attempts} attempts within the op \
         timeout; nothing was written: retry, spread the writes over more keys, or raise \
         `Cache::builder().op_timeout(..)`"
    )]
    Contended {
        /// The key (namespaced, as stored; at most 64 characters of it).
        key: String,
        /// How many times it read and tried to write.
        attempts: u32,
    },
    /// `incr` / `decr` found a live value under the key that is not one of
    /// their counters. The value was left as it was.
    #[error(
        "key {key:?} holds a value that is not a counter (written by `set`, `add` or a \
         computation), so it was not incremented and was left as it is: `delete` it first, \
         or keep counters under keys of their own"
    )]
    NotACounter {
        /// The key as given.
        key: String,
    },
    /// `incr` / `decr` would take a counter past `i64`. The counter was left
    /// as it was.
    #[error(
        "counter {key:?} is {value} and adding {delta} would overflow i64; it was left as it \
         is: `delete` it to start again from 0"
    )]
    CounterOverflow {
        /// The key as given.
        key: String,
        /// The counter's value.
        value: i64,
        /// What was to be added (negative for `decr`; wide enough for
        /// `decr` of `i64::MIN`).
        delta: i128,
    },
    /// An operation that reaches everything of this cache (`clear`) on a
    /// shared store, by a cache with no namespace: it would reach every
    /// entry on the store, other applications' included, so it is refused.
    #[error(
        "{operation} on the shared `{backend}` store needs a cache namespace to know which \
         entries are this cache's (without one it would reach every entry on the store, other \
         applications' included): give the cache one, `?namespace=app` in the cache URL or \
         `Cache::builder().namespace(\"app\")`"
    )]
    NamespaceRequired {
        /// The backend's name.
        backend: &'static str,
        /// The refused operation.
        operation: &'static str,
    },
    /// The backend has no such operation.
    #[error("the `{backend}` backend does not support {operation}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The missing operation.
        operation: &'static str,
    },
}

impl Error {
    /// Shorthand for a backend failure.
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
        }
    }

    pub(crate) fn decode(message: impl Into<String>) -> Self {
        Error::Decode {
            message: message.into(),
        }
    }

    /// Whether this error says the store itself is unhealthy (as opposed to
    /// one bad value), which is what the circuit breaker counts.
    pub(crate) fn is_store_failure(&self) -> bool {
        matches!(self, Error::Backend { .. } | Error::Timeout { .. })
    }
}
