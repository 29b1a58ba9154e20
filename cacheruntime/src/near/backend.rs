//! [`NearBackend`]: the shared store as the cache sees it when a near tier
//! is on. Every read carries the near tier's mark in its ticket; every
//! write, delete and invalidation reaches the near tier when the store has
//! answered it (or when the call is cancelled, as if it had gone through).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{marked, split, Near, WriteGuard};
use crate::backend::{Backend, BoxFuture, Lookup, ScanPage, StoreInfo, Ticket};
use crate::Error;

/// A shared store with a near tier in front; see the module docs.
pub(crate) struct NearBackend {
    shared: Arc<dyn Backend>,
    near: Arc<Near>,
}

impl std::fmt::Debug for NearBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearBackend")
            .field("shared", &self.shared)
            .field("near", &self.near)
            .finish()
    }
}

impl NearBackend {
    pub(crate) fn new(shared: Arc<dyn Backend>, near: Arc<Near>) -> Self {
        NearBackend { shared, near }
    }

    /// A write of `key` under `ticket` begins: its guard, vouched for as of
    /// the ticket's read (or now, for a write without one), and the store's
    /// own ticket to write under.
    fn begin<'t>(&self, key: &str, ticket: Option<&'t Ticket>) -> (WriteGuard, Option<&'t Ticket>) {
        let (since, inner) = split(ticket);
        let since = since.unwrap_or_else(|| self.near.mark());
        (self.near.write(key, since), inner)
    }
}

/// Drops keys, or a prefix, from the near tier when dropped itself: after
/// the store answered a delete or an invalidation, or when the call was
/// cancelled (the store may have applied it).
enum Forget<'a> {
    Keys(&'a Near, &'a [&'a str]),
    Prefix(&'a Near, &'a str),
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        match self {
            Forget::Keys(near, keys) => keys.iter().for_each(|key| near.forget(key)),
            Forget::Prefix(near, prefix) => near.forget_prefix(prefix),
        }
    }
}

impl Backend for NearBackend {
    fn name(&self) -> &'static str {
        self.shared.name()
    }
    fn max_value_bytes(&self) -> Option<usize> {
        self.shared.max_value_bytes()
    }
    fn max_ttl(&self) -> Option<Duration> {
        self.shared.max_ttl()
    }
    fn isolates_failures(&self) -> bool {
        self.shared.isolates_failures()
    }
    fn supports_locks(&self) -> bool {
        self.shared.supports_locks()
    }
    fn combines_locks(&self) -> bool {
        self.shared.combines_locks()
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ScanPage, Error>> {
        self.shared.scan(prefix, cursor)
    }

    fn describe(&self) -> BoxFuture<'_, Result<StoreInfo, Error>> {
        self.shared.describe()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.near.follow(&*self.shared);
        let mark = self.near.mark();
        Box::pin(async move { Ok(marked(self.shared.get(key).await?, mark)) })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Lookup>, Error>> {
        let mark = self.near.mark();
        Box::pin(async move {
            let found = self.shared.get_many(keys).await?;
            Ok(found.into_iter().map(|l| marked(l, mark)).collect())
        })
    }

    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(Lookup, bool), Error>> {
        self.near.follow(&*self.shared);
        let mark = self.near.mark();
        Box::pin(async move {
            let (lookup, held) = self.shared.get_or_lock(key, token, ttl).await?;
            Ok((marked(lookup, mark), held))
        })
    }

    fn lock_and_get<'a>(
        &'a self,
        key: &'a str,
        token: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(bool, Option<Lookup>), Error>> {
        let mark = self.near.mark();
        Box::pin(async move {
            let (taken, lookup) = self.shared.lock_and_get(key, token, ttl).await?;
            Ok((taken, lookup.map(|l| marked(l, mark))))
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let (write, inner) = self.begin(key, ticket);
        Box::pin(async move {
            let done = self.shared.set(key, value.clone(), ttl, inner).await;
            write.finish(done.is_ok().then_some(value), ttl);
            done
        })
    }

    fn set_and_unlock<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let (write, inner) = self.begin(key, ticket);
        Box::pin(async move {
            let done = self
                .shared
                .set_and_unlock(key, value.clone(), ttl, inner, token)
                .await;
            write.finish(done.is_ok().then_some(value), ttl);
            done
        })
    }

    fn set_many<'a>(
        &'a self,
        entries: &'a [(&'a str, Bytes)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let since = self.near.mark();
        let writes: Vec<_> = entries
            .iter()
            .map(|(k, _)| self.near.write(k, since))
            .collect();
        Box::pin(async move {
            let done = self.shared.set_many(entries, ttl).await;
            for (write, (_, value)) in writes.into_iter().zip(entries) {
                write.finish(done.is_ok().then(|| value.clone()), ttl);
            }
            done
        })
    }

    fn compare_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let (write, inner) = self.begin(key, ticket);
        Box::pin(async move {
            let done = self
                .shared
                .compare_and_set(key, expected, value.clone(), ttl, inner)
                .await;
            // Swapped: the store holds `value`. Not swapped: the near tier
            // may hold what the swap expected; drop it.
            let kept = matches!(done, Ok(true)).then_some(value);
            write.finish(kept, ttl);
            done
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let _forget = Forget::Keys(&self.near, std::slice::from_ref(&key));
            self.shared.delete(key).await
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let _forget = Forget::Keys(&self.near, keys);
            self.shared.delete_many(keys).await
        })
    }

    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let _forget = Forget::Prefix(&self.near, prefix);
            self.shared.invalidate_prefix(prefix).await
        })
    }

    // Locks live apart from entries: the near tier takes no part.
    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.shared.set_if_absent(key, value, ttl)
    }

    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.shared.delete_if_equals(key, value)
    }
}
