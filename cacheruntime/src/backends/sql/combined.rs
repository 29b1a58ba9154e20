//! A cold miss in two round trips on PostgreSQL
//! (`Backend::combines_locks`): the read that takes the key's lock when it
//! finds no live entry, then the write that releases it, each one
//! statement (`statements::combined`).
//!
//! A statement reads under one snapshot, but takes the lock as the lock
//! table is now: a holder that wrote its value and released the lock after
//! the snapshot leaves a read that missed the value and a lock that was
//! free. The statement says so (`was_busy`: the snapshot saw another live
//! lock, which the statement took), and the read is made once more, so
//! such a race costs a third round trip rather than a second computation.

// With only the `postgres` feature, `Pool` has one variant.
#![allow(irrefutable_let_patterns)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Row};

use super::entries::check_key;
use super::{Pool, Shared};
use crate::backend::{Lookup, Ticket};
use crate::Error;

/// What a combined read answered.
struct Answer {
    found: Option<Lookup>,
    locked: bool,
    was_busy: bool,
}

impl Shared {
    pub(super) async fn get_or_lock(
        self: &Arc<Self>,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> Result<(Lookup, bool), Error> {
        let answer = self
            .read_locking(key, &token, ttl, &self.sql.get_or_lock)
            .await?;
        let lookup = match answer.found {
            Some(lookup) if !(answer.locked && answer.was_busy) => lookup,
            // A missing epoch row (created again by `get`), or a lock
            // released since the snapshot: read again. If that fails, the
            // lock the statement took goes too (the caller, told of an
            // error, holds nothing).
            _ => match self.get(key).await {
                Ok(lookup) => lookup,
                Err(e) => {
                    if answer.locked {
                        let _ = self.unlock(key, &token).await;
                    }
                    return Err(e);
                }
            },
        };
        Ok((lookup, answer.locked))
    }

    pub(super) async fn lock_and_get(
        self: &Arc<Self>,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> Result<(bool, Option<Lookup>), Error> {
        let answer = self
            .read_locking(key, &token, ttl, &self.sql.lock_and_get)
            .await?;
        let found = match answer.found {
            Some(lookup) if !(answer.locked && answer.was_busy) => Some(lookup),
            // A failed read answers `None`: the caller holds the lock if
            // it was taken, and releases it (`Backend::lock_and_get`).
            _ => match self.get(key).await {
                Ok(lookup) => Some(lookup),
                Err(e) => {
                    tracing::debug!(error = %e, "the read after taking a lock failed");
                    None
                }
            },
        };
        Ok((answer.locked, found))
    }

    /// One of the combined reads: the entry (`None` when an epoch row is
    /// missing), whether the lock is held with `token` after it, and
    /// whether the snapshot saw another live lock.
    async fn read_locking(
        self: &Arc<Self>,
        key: &str,
        token: &[u8],
        ttl: Duration,
        sql: &str,
    ) -> Result<Answer, Error> {
        check_key(key)?;
        let pool = self.ready().await?;
        let Pool::Postgres(pool) = pool else {
            return Err(self.no_combined());
        };
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .bind(self.now())
            .bind(Self::records(key))
            .bind(token)
            .bind(self.ttl_ms(ttl))
            .fetch_one(pool)
            .await
            .map_err(|e| self.error(e))?;
        let get = |column: &str| -> Result<Option<i64>, Error> {
            row.try_get::<Option<i64>, _>(column)
                .map_err(|e| self.error(e))
        };
        let (epoch, scope, floor) = (get("now_epoch")?, get("scope")?, get("floor")?);
        let value: Option<Vec<u8>> = row.try_get("value").map_err(|e| self.error(e))?;
        let locked = get("locked")?.unwrap_or(0) > 0;
        let was_busy: bool = row.try_get("was_busy").map_err(|e| self.error(e))?;
        let seq = |n: i64| u64::try_from(n).unwrap_or(0);
        let found = match (epoch, floor) {
            (Some(epoch), Some(floor)) => Some(Lookup::new(value.map(Bytes::from)).with_ticket(
                Ticket::scoped(seq(epoch), seq(scope.unwrap_or(0).max(floor))),
            )),
            _ => None,
        };
        Ok(Answer {
            found,
            locked,
            was_busy,
        })
    }

    /// Stores `value` as `set` does and releases `token`'s lock on `key`,
    /// in one statement (`Shared::write`); a lock held by another token is
    /// left alone.
    pub(super) async fn set_and_unlock(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        token: &[u8],
    ) -> Result<bool, Error> {
        if self.sql.put_current_unlock.is_empty() {
            return Err(self.no_combined());
        }
        self.write(key, value, ttl, ticket, Some(token)).await?;
        Ok(true)
    }

    fn no_combined(&self) -> Error {
        Error::backend(
            self.backend_name(),
            "this store has no combined lock operations (SQLite): the cache does not call them",
        )
    }
}
