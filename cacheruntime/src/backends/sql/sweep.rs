//! Work done after the caller's call: the periodic sweep (expired rows and
//! locks, old invalidation records, the `max_entries` cull), and the
//! deletion of the rows an invalidation has already hidden.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Row};

use super::{millis, Pool, Shared};
use crate::Error;

/// Rows one statement of an invalidation's deletion removes: small enough
/// that it holds SQLite's write lock for milliseconds, so callers' writes
/// wait little between batches.
const PURGE_BATCH: i64 = 5_000;

impl Shared {
    pub(super) fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.sweeper.set(()).is_err() {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(self);
        let every = self.config.sweep_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                let Ok(_one_at_a_time) = shared.sweeping.try_lock() else {
                    continue;
                };
                if let Err(e) = shared.sweep().await {
                    tracing::debug!(error = %e, "cache sweep failed; retrying next interval");
                }
            }
        });
    }

    pub(super) async fn sweep(&self) -> Result<u64, Error> {
        let pool = self.pool();
        let now = self.now();
        let batch = i64::from(self.config.sweep_batch);
        let max_ttl = millis(self.config.max_ttl);
        let mut removed = 0u64;
        // Bounded: at most 100 batches per sweep.
        for _ in 0..100 {
            let n = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
                self.sql.sweep.as_str()
            ))
            .bind(now)
            .bind(batch)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| self.error(e))?;
            removed += n;
            if n < batch as u64 {
                break;
            }
        }
        on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
            self.sql.sweep_locks.as_str()
        ))
        .bind(now)
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.error(e))?;
        // A missing floor is created first (from the epoch), so records are
        // never removed without a floor to stand for them.
        self.seed(pool).await?;
        on_pool!(pool, |p| {
            // The floor rises with the records it replaces, in one
            // transaction: no reader or writer sees the records gone and
            // the floor not yet raised.
            let mut tx = p.begin().await.map_err(|e| self.error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.raise_floor.as_str()))
                .bind(now)
                .bind(max_ttl)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.sweep_invalidations.as_str()))
                .bind(now)
                .bind(max_ttl)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            tx.commit().await.map_err(|e| self.error(e))?;
        });
        if let Some(max) = self.config.max_entries {
            let count: i64 = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
                self.sql.count.as_str()
            ))
            .fetch_one(p)
            .await
            .and_then(|row| row.try_get::<i64, _>("n")))
            .map_err(|e| self.error(e))?;
            // Saturating: a bound beyond i64 culls nothing.
            let excess = count.saturating_sub(i64::try_from(max).unwrap_or(i64::MAX));
            if excess > 0 {
                let n = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(self.sql.cull.as_str()))
                    .bind(excess)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()))
                .map_err(|e| self.error(e))?;
                removed += n;
            }
        }
        self.writes_since_sweep.store(0, Ordering::Relaxed);
        Ok(removed)
    }

    /// Deletes, in the background and in batches, the rows of `range`
    /// (`None`: every row) written under an epoch older than `epoch`: the
    /// rows the invalidation recorded under `epoch` already hides. A value
    /// written after it (under `epoch` or newer) stays. If this process
    /// stops first, the rows stay hidden until they expire or the sweep's
    /// floor passes them.
    pub(super) fn purge(self: &Arc<Self>, range: Option<(String, String)>, epoch: i64) {
        let weak = Arc::downgrade(self);
        let (mut from, to) = match range {
            Some((from, to)) => (from, Some(to)),
            None => (String::new(), None),
        };
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let Some(shared) = weak.upgrade() else { return };
                match shared.purge_batch(&from, to.as_deref(), epoch).await {
                    Ok(keys) => {
                        // Until a batch deletes nothing: a batch can delete
                        // fewer than it picked (rows written again while it
                        // ran stay), so a short one is not the last.
                        match keys.into_iter().max() {
                            Some(last) => from = last,
                            None => return,
                        }
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= 10 {
                            tracing::debug!(
                                error = %e,
                                "deleting invalidated rows failed; they stay hidden and \
                                 expire"
                            );
                            return;
                        }
                        drop(shared);
                        tokio::time::sleep(Duration::from_millis(200 * failures)).await;
                    }
                }
            }
        });
    }

    /// One batch: the keys it deleted.
    async fn purge_batch(
        &self,
        from: &str,
        to: Option<&str>,
        epoch: i64,
    ) -> Result<Vec<String>, Error> {
        on_pool!(self.pool(), |p| sqlx::query(AssertSqlSafe(
            self.sql.purge.as_str()
        ))
        .bind(from)
        .bind(to)
        .bind(epoch)
        .bind(PURGE_BATCH)
        .fetch_all(p)
        .await
        .and_then(|rows| rows
            .into_iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect()))
        .map_err(|e| self.error(e))
    }
}
