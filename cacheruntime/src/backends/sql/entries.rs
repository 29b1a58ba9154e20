//! Reading and writing entries and locks: each one statement, and each
//! entry stamped with the epoch its read saw, so a value computed before an
//! invalidation or a delete is never stored or served after it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Row};

use super::{Pool, Shared};
use crate::backend::{Lookup, Ticket};
use crate::Error;

impl Shared {
    pub(super) async fn get(self: &Arc<Self>, key: &str) -> Result<Lookup, Error> {
        check_key(key)?;
        let pool = self.ready().await?;
        let found = self.read(pool, key).await?;
        let (epoch, scope, floor, value) = match found {
            Some(found) => found,
            None => {
                // The epoch rows are gone (an operator cleared the table):
                // created again, from the clock, within this call.
                self.seed(pool).await?;
                self.read(pool, key).await?.ok_or_else(|| {
                    Error::backend(
                        self.backend_name(),
                        format!(
                            "the epoch rows of {}_epoch could not be created: create the \
                             tables with the DDL (`backends::sql::ddl`) or enable auto_create",
                            self.config.table
                        ),
                    )
                })?
            }
        };
        // Epochs are never negative; saturating all the same.
        let seq = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Lookup::new(value.map(Bytes::from))
            .with_ticket(Ticket::scoped(seq(epoch), seq(scope.max(floor)))))
    }

    /// The epoch, the key's scope, the floor and the live entry; `None`
    /// when an epoch row is missing.
    async fn read(
        &self,
        pool: &Pool,
        key: &str,
    ) -> Result<Option<(i64, i64, i64, Option<Vec<u8>>)>, Error> {
        let now = self.now();
        let records = Self::records(key);
        type Columns = (
            Result<Option<i64>, sqlx::Error>,
            Result<Option<i64>, sqlx::Error>,
            Result<Option<i64>, sqlx::Error>,
            Result<Option<Vec<u8>>, sqlx::Error>,
        );
        fn columns<R: Row>(r: R) -> Columns
        where
            for<'c> &'c str: sqlx::ColumnIndex<R>,
            Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            Option<Vec<u8>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            (
                r.try_get::<Option<i64>, _>("now_epoch"),
                r.try_get::<Option<i64>, _>("scope"),
                r.try_get::<Option<i64>, _>("floor"),
                r.try_get::<Option<Vec<u8>>, _>("value"),
            )
        }
        let row: Option<Columns> = match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => sqlx::query(AssertSqlSafe(self.sql.get.as_str()))
                .bind(key)
                .bind(now)
                .bind(&records)
                .fetch_optional(p)
                .await
                .map(|row| row.map(columns)),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => sqlx::query(AssertSqlSafe(self.sql.get.as_str()))
                .bind(key)
                .bind(now)
                .bind(json_array(&records))
                .fetch_optional(p)
                .await
                .map(|row| row.map(columns)),
        }
        .map_err(|e| self.error(e))?;
        let Some((epoch, scope, floor, value)) = row else {
            return Ok(None);
        };
        let epoch = epoch.map_err(|e| self.error(e))?;
        let floor = floor.map_err(|e| self.error(e))?;
        let scope = scope.map_err(|e| self.error(e))?.unwrap_or(0);
        let value = value.map_err(|e| self.error(e))?;
        Ok(match (epoch, floor) {
            (Some(epoch), Some(floor)) => Some((epoch, scope, floor, value)),
            _ => None,
        })
    }

    pub(super) async fn set(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<(), Error> {
        self.write(key, value, ttl, ticket, None).await
    }

    /// `set`, and with `release` the release of that token's lock on `key`
    /// in the same statement (PostgreSQL's `set_and_unlock`, `combined.rs`;
    /// SQLite has no such statements, and is never asked).
    pub(super) async fn write(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        release: Option<&[u8]>,
    ) -> Result<(), Error> {
        check_key(key)?;
        let pool = self.ready().await?;
        let ttl = self.ttl_ms(ttl);
        let now = self.now();
        match ticket.and_then(Ticket::as_seq) {
            Some(epoch) => {
                // A ticket from a read: refused (silently: a write is a
                // best effort) if anything newer names the key. A missing
                // floor refuses it too; the next read creates the floor.
                let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
                let sql = if release.is_some() {
                    self.sql.put_ticketed_unlock.as_str()
                } else {
                    self.sql.put_ticketed.as_str()
                };
                let result = match pool {
                    #[cfg(feature = "postgres")]
                    Pool::Postgres(p) => {
                        let q = sqlx::query(AssertSqlSafe(sql))
                            .bind(key)
                            .bind(&value[..])
                            .bind(ttl)
                            .bind(epoch)
                            .bind(Self::records(key))
                            .bind(now);
                        match release {
                            Some(token) => q.bind(token),
                            None => q,
                        }
                        .execute(p)
                        .await
                        .map(|_| ())
                    }
                    #[cfg(feature = "sqlite")]
                    Pool::Sqlite(p) => sqlx::query(AssertSqlSafe(sql))
                        .bind(key)
                        .bind(&value[..])
                        .bind(ttl)
                        .bind(epoch)
                        .bind(json_array(&Self::records(key)))
                        .bind(now)
                        .execute(p)
                        .await
                        .map(|_| ()),
                };
                result.map_err(|e| self.error(e))?;
            }
            None => {
                let (mut sql, mut token) = match release {
                    Some(_) => (&self.sql.put_current_unlock, release),
                    None => (&self.sql.put_current, None),
                };
                for attempt in 0..2 {
                    let written = on_pool!(pool, |p| {
                        let q = sqlx::query(AssertSqlSafe(sql.as_str()))
                            .bind(key)
                            .bind(&value[..])
                            .bind(ttl)
                            .bind(now);
                        match token {
                            Some(token) => q.bind(token),
                            None => q,
                        }
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())
                    })
                    .map_err(|e| self.error(e))?;
                    if written > 0 || attempt == 1 {
                        break;
                    }
                    // No epoch row to write under (a lock to release is
                    // released): created again, then written, within this
                    // call.
                    self.seed(pool).await?;
                    (sql, token) = (&self.sql.put_current, None);
                }
            }
        }
        // Sweep early when writes outpace the interval under a bound.
        if let Some(max) = self.config.max_entries {
            let writes = self.writes_since_sweep.fetch_add(1, Ordering::Relaxed) + 1;
            if writes >= (max / 10).max(100) {
                self.writes_since_sweep.store(0, Ordering::Relaxed);
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(_one_at_a_time) = shared.sweeping.try_lock() {
                        let _ = shared.sweep().await;
                    }
                });
            }
        }
        Ok(())
    }

    /// [`Backend::compare_and_set`](crate::Backend::compare_and_set): one
    /// statement, `swap_absent` or `swap_present`.
    pub(super) async fn swap(
        self: &Arc<Self>,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<bool, Error> {
        check_key(key)?;
        let Some(epoch) = ticket.and_then(Ticket::as_seq) else {
            return Err(Error::backend(
                self.backend_name(),
                "compare_and_set needs the ticket of the read it compares with",
            ));
        };
        let pool = self.ready().await?;
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        let sql = match expected {
            None => self.sql.swap_absent.as_str(),
            Some(_) => self.sql.swap_present.as_str(),
        };
        let (ttl, now, records) = (self.ttl_ms(ttl), self.now(), Self::records(key));
        let n = match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => {
                let q = sqlx::query(AssertSqlSafe(sql))
                    .bind(key)
                    .bind(&value[..])
                    .bind(ttl)
                    .bind(epoch)
                    .bind(&records)
                    .bind(now);
                let q = match expected {
                    Some(x) => q.bind(x),
                    None => q,
                };
                q.execute(p).await.map(|r| r.rows_affected())
            }
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => {
                let q = sqlx::query(AssertSqlSafe(sql))
                    .bind(key)
                    .bind(&value[..])
                    .bind(ttl)
                    .bind(epoch)
                    .bind(json_array(&records))
                    .bind(now);
                let q = match expected {
                    Some(x) => q.bind(x),
                    None => q,
                };
                q.execute(p).await.map(|r| r.rows_affected())
            }
        }
        .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    pub(super) async fn lock(
        self: &Arc<Self>,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> Result<bool, Error> {
        check_key(key)?;
        let pool = self.ready().await?;
        let n = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
            self.sql.lock_take.as_str()
        ))
        .bind(key)
        .bind(&token[..])
        .bind(self.ttl_ms(ttl))
        .bind(self.now())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    pub(super) async fn unlock(self: &Arc<Self>, key: &str, token: &[u8]) -> Result<bool, Error> {
        check_key(key)?;
        let pool = self.ready().await?;
        let n = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
            self.sql.lock_release.as_str()
        ))
        .bind(key)
        .bind(token)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }
}

/// Refuses, as bad input, a key no SQL database can hold.
pub(super) fn check_key(key: &str) -> Result<(), Error> {
    if key.contains('\0') {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: crate::key::NUL_REASON,
        });
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
pub(super) fn json_array<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.as_ref().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    #[test]
    fn json_arrays_escape_quotes_and_controls() {
        assert_eq!(json_array(&["", "a\"b:", "c\\:"]), r#"["","a\"b:","c\\:"]"#);
        assert_eq!(json_array(&["k\u{1}"]), r#"["k\u0001"]"#);
        assert_eq!(json_array(&["\n"]), r#"["\u000a"]"#);
    }
}
