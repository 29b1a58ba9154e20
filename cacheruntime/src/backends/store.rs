//! How the crate's own stores implement [`Backend`]: a crate-private trait
//! with `impl Future` methods (plain `async fn`s in each store), and one
//! blanket impl that boxes them for the object-safe public trait.
//!
//! So no store repeats the boxing, every store of the crate reports that it
//! has locks (its `set_if_absent` and `delete_if_equals` are required
//! here, not defaulted to an error), and the public trait stays what a
//! user's own backend implements.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{unsupported, Backend, BoxFuture, Feed, Lookup, ScanPage, StoreInfo, Ticket};
use crate::Error;

/// A store of this crate; see [`Backend`] for what each method must do.
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    /// As [`Backend::name`].
    fn name(&self) -> &'static str;

    /// As [`Backend::max_value_bytes`].
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }

    /// As [`Backend::max_ttl`].
    fn max_ttl(&self) -> Option<Duration> {
        None
    }

    /// As [`Backend::isolates_failures`].
    fn isolates_failures(&self) -> bool {
        false
    }

    /// As [`Backend::supports_locks`]: every store of the crate has them
    /// but the disabled one.
    fn supports_locks(&self) -> bool {
        true
    }

    /// As [`Backend::combines_locks`].
    fn combines_locks(&self) -> bool {
        false
    }

    /// As `Backend::pushes_changes`.
    fn pushes_changes(&self) -> bool {
        false
    }

    /// As `Backend::follow_changes`.
    fn follow_changes(&self, _feed: Feed) -> bool {
        false
    }

    /// As [`Backend::get`].
    fn get(&self, key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send;

    /// As [`Backend::set`].
    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// As [`Backend::delete`].
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// As [`Backend::invalidate_prefix`].
    fn invalidate_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// As [`Backend::set_if_absent`].
    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// As [`Backend::delete_if_equals`].
    fn delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// As [`Backend::get_many`]: by default one key after the other.
    fn get_many(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<Lookup>, Error>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.get(key).await?);
            }
            Ok(found)
        }
    }

    /// As [`Backend::set_many`]: by default one key after the other.
    fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            for (key, value) in entries {
                self.set(key, value.clone(), ttl, None).await?;
            }
            Ok(())
        }
    }

    /// As [`Backend::delete_many`]: by default one key after the other.
    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            for key in keys {
                self.delete(key).await?;
            }
            Ok(())
        }
    }

    /// As [`Backend::compare_and_set`].
    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// As [`Backend::lock_and_get`]; only stores that
    /// [`combines_locks`](Store::combines_locks) have it.
    fn lock_and_get(
        &self,
        _key: &str,
        _token: Bytes,
        _ttl: Duration,
    ) -> impl Future<Output = Result<(bool, Option<Lookup>), Error>> + Send {
        unsupported(self.name(), "lock_and_get")
    }

    /// As [`Backend::get_or_lock`]; only stores that
    /// [`combines_locks`](Store::combines_locks) have it.
    fn get_or_lock(
        &self,
        _key: &str,
        _token: Bytes,
        _ttl: Duration,
    ) -> impl Future<Output = Result<(Lookup, bool), Error>> + Send {
        unsupported(self.name(), "get_or_lock")
    }

    /// As [`Backend::set_and_unlock`]; only stores that
    /// [`combines_locks`](Store::combines_locks) have it.
    fn set_and_unlock(
        &self,
        _key: &str,
        _value: Bytes,
        _ttl: Duration,
        _ticket: Option<&Ticket>,
        _token: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        unsupported(self.name(), "set_and_unlock")
    }

    /// As [`Backend::scan`]: every store of the crate lists its keys.
    fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send;

    /// As [`Backend::describe`].
    fn describe(&self) -> impl Future<Output = Result<StoreInfo, Error>> + Send {
        std::future::ready(Ok(StoreInfo::new(self.name())))
    }
}

impl<S: Store> Backend for S {
    fn name(&self) -> &'static str {
        Store::name(self)
    }

    fn max_value_bytes(&self) -> Option<usize> {
        Store::max_value_bytes(self)
    }

    fn max_ttl(&self) -> Option<Duration> {
        Store::max_ttl(self)
    }

    fn isolates_failures(&self) -> bool {
        Store::isolates_failures(self)
    }

    fn supports_locks(&self) -> bool {
        Store::supports_locks(self)
    }

    fn combines_locks(&self) -> bool {
        Store::combines_locks(self)
    }

    fn pushes_changes(&self) -> bool {
        Store::pushes_changes(self)
    }

    fn follow_changes(&self, feed: Feed) -> bool {
        Store::follow_changes(self, feed)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        Box::pin(Store::get(self, key))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Store::set(self, key, value, ttl, ticket))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Store::delete(self, key))
    }

    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Store::invalidate_prefix(self, prefix))
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(Store::set_if_absent(self, key, value, ttl))
    }

    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(Store::delete_if_equals(self, key, value))
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(Store::compare_and_set(
            self, key, expected, value, ttl, ticket,
        ))
    }

    fn lock_and_get<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(bool, Option<Lookup>), Error>> {
        Box::pin(Store::lock_and_get(self, key, token, ttl))
    }

    fn set_and_unlock<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(Store::set_and_unlock(self, key, value, ttl, ticket, token))
    }

    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(Lookup, bool), Error>> {
        Box::pin(Store::get_or_lock(self, key, token, ttl))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Lookup>, Error>> {
        Box::pin(Store::get_many(self, keys))
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Store::set_many(self, entries, ttl))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Store::delete_many(self, keys))
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ScanPage, Error>> {
        Box::pin(Store::scan(self, prefix, cursor))
    }

    fn describe(&self) -> BoxFuture<'_, Result<StoreInfo, Error>> {
        Box::pin(Store::describe(self))
    }
}
