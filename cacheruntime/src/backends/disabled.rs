//! The backend of a disabled cache: stores nothing.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::Error;

/// Stores nothing and finds nothing. A cache built on it also skips
/// single-flight, so every call computes exactly as without a cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct DisabledBackend;

impl Backend for DisabledBackend {
    fn name(&self) -> &'static str {
        "disabled"
    }

    fn get<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(async { Ok(Lookup::new(None)) })
    }

    fn set<'a>(
        &'a self,
        _key: &'a str,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn invalidate_prefix<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
