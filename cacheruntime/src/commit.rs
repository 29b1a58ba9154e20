//! Invalidating around a database transaction.
//!
//! Invalidating *before* a commit is the classic mistake: between the
//! invalidation and the commit, a reader misses, reads the old row (the
//! transaction is not visible yet) and caches it, and it stays until its
//! TTL. Invalidating *after* the commit returns is right with this cache:
//! a reader that read the old row before the commit began its call before
//! the invalidation, and the cache never lets a value computed before an
//! invalidation be seen after it returns (the fencing guarantee), so its
//! write stays hidden; a reader after the invalidation reads the new row.
//! [`Cache::invalidate_after`] is that pattern as one call, with what a
//! failed invalidation needs: the commit's result is returned (the data
//! changed whatever the cache did), and the invalidation is retried in the
//! background until it lands.

use std::future::Future;
use std::time::Duration;

use crate::{Cache, Error};

/// How long a failed invalidation after a commit is retried for, at most.
const RETRY_FOR: Duration = Duration::from_secs(600);

impl Cache {
    /// Awaits `commit` (a transaction's commit, or any write), then
    /// invalidates `prefixes`; see the [module docs](crate::commit) for
    /// why after and not before. A failed commit invalidates nothing and
    /// returns its error. A failed invalidation does not fail the write
    /// that already happened: it is counted in `Stats::errors`, logged, and
    /// retried in the background (backing off, for up to ten minutes) until
    /// it lands; meanwhile readers may get the old value, as they would
    /// without a cache for the length of a replica's lag. Prefixes are
    /// checked first (whole segments, length, and everything without a
    /// namespace on a shared store), so one that would be refused is an
    /// error before the commit (then `commit` is dropped unawaited, which
    /// for sqlx rolls back). The invalidations run in a task of their own,
    /// so a caller dropped after the commit (a client gone) does not cancel
    /// them.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod demo {
    /// # async fn demo(pool: sqlx::PgPool, cache: cacheruntime::Cache) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE books SET price_cents = $1 WHERE id = $2")
    ///     .bind(1299_i64)
    ///     .bind(42_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// // Commit, then drop the book's entries and its author's rankings.
    /// cache.invalidate_after(tx.commit(), &["book:42:", "author:7:"]).await??;
    /// # Ok(()) }
    /// # }
    /// # fn main() {}
    /// ```
    pub async fn invalidate_after<T, F>(&self, commit: F, prefixes: &[&str]) -> Result<T, Error>
    where
        F: Future<Output = T>,
    {
        // Everything that would refuse an invalidation, before the write.
        for prefix in prefixes {
            self.checked_prefix(prefix)?;
        }
        let committed = commit.await;
        let prefixes: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
        match tokio::runtime::Handle::try_current() {
            // In a task of its own: a caller dropped after the commit (a
            // client gone, a timeout layer) must not cancel the
            // invalidation of data that already changed.
            Ok(runtime) => {
                let cache = self.clone();
                let (first, done) = tokio::sync::oneshot::channel();
                runtime.spawn(async move {
                    let failed = cache.invalidate_each(prefixes).await;
                    let _ = first.send(());
                    if !failed.is_empty() {
                        cache.retry_invalidations(failed).await;
                    }
                });
                // The first attempt, whatever it did, before returning.
                let _ = done.await;
            }
            Err(_) => {
                let failed = self.invalidate_each(prefixes).await;
                if !failed.is_empty() {
                    tracing::error!(
                        prefixes = ?failed,
                        "invalidation after a commit failed and cannot be retried outside \
                         a Tokio runtime: entries under these prefixes may be old until \
                         their TTL"
                    );
                }
            }
        }
        Ok(committed)
    }

    /// Invalidates each prefix once; the ones that failed (counted and
    /// logged).
    async fn invalidate_each(&self, prefixes: Vec<String>) -> Vec<String> {
        let mut failed = Vec::new();
        for prefix in prefixes {
            if let Err(e) = self.invalidate_prefix(&prefix).await {
                self.engine.failed("invalidate_after", &e);
                failed.push(prefix);
            }
        }
        if !failed.is_empty() {
            tracing::warn!(
                prefixes = ?failed,
                "invalidation after a commit failed; retrying in the background (readers may \
                 get the old value until it lands)"
            );
        }
        failed
    }

    /// Retries `prefixes` until each lands or [`RETRY_FOR`] passes.
    async fn retry_invalidations(self, mut prefixes: Vec<String>) {
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        while !prefixes.is_empty() && started.elapsed() < RETRY_FOR {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
            let mut left = Vec::new();
            for prefix in prefixes {
                if self.invalidate_prefix(&prefix).await.is_err() {
                    left.push(prefix);
                }
            }
            prefixes = left;
        }
        if !prefixes.is_empty() {
            tracing::error!(
                prefixes = ?prefixes,
                "gave up invalidating after a commit: entries under these prefixes may be old \
                 until their TTL"
            );
        }
    }
}
