//! The backend of a disabled cache: stores nothing.

use std::future::{ready, Future};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Lookup, ScanPage, Ticket};
use crate::backends::Store;
use crate::Error;

/// Stores nothing and finds nothing. A cache built on it also skips
/// single-flight, so every call computes exactly as without a cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct DisabledBackend;

impl Store for DisabledBackend {
    fn name(&self) -> &'static str {
        "disabled"
    }

    fn supports_locks(&self) -> bool {
        false
    }

    fn scan(
        &self,
        _prefix: &str,
        _cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send {
        ready(Ok(ScanPage::default()))
    }

    fn get(&self, _key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send {
        ready(Ok(Lookup::new(None)))
    }

    fn set(
        &self,
        _key: &str,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        ready(Ok(()))
    }

    fn delete(&self, _key: &str) -> impl Future<Output = Result<(), Error>> + Send {
        ready(Ok(()))
    }

    fn invalidate_prefix(&self, _prefix: &str) -> impl Future<Output = Result<(), Error>> + Send {
        ready(Ok(()))
    }

    /// Nothing is stored, so nothing is locked: never called, since
    /// [`supports_locks`](Store::supports_locks) says so.
    fn set_if_absent(
        &self,
        _key: &str,
        _value: Bytes,
        _ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        ready(Err(Error::Unsupported {
            backend: "disabled",
            operation: "set_if_absent",
        }))
    }

    fn delete_if_equals(
        &self,
        _key: &str,
        _value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        ready(Err(Error::Unsupported {
            backend: "disabled",
            operation: "delete_if_equals",
        }))
    }

    /// Nothing is stored: nothing is ever there to compare, and a swap
    /// would store nothing, so none is made (the cache answers its `add`,
    /// `touch` and counters before calling this).
    fn compare_and_set(
        &self,
        _key: &str,
        _expected: Option<&[u8]>,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        ready(Ok(false))
    }
}
