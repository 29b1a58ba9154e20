//! The batched calls, each one statement (`delete_many`: one transaction
//! of three, whatever the number of keys): `get_many` reads every live row
//! of the keys with the records naming them, `set_many` upserts every row
//! under the current epoch, `delete_many` bumps the epoch once, records a
//! delete of every key under it and removes their rows, so that, as for
//! one `delete`, no write under an older ticket is stored after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Row};

use super::entries::check_key;
use super::{Pool, Shared};
use crate::backend::Lookup;
use crate::Error;

#[cfg(feature = "sqlite")]
use super::entries::json_array;

impl Shared {
    pub(super) async fn get_many(self: &Arc<Self>, keys: &[&str]) -> Result<Vec<Lookup>, Error> {
        for key in keys {
            check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.ready().await?;
        let mut records: Vec<String> = keys.iter().flat_map(|k| Self::records(k)).collect();
        records.sort_unstable();
        records.dedup();
        let now = self.now();
        let rows: Vec<(String, Vec<u8>)> = match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => sqlx::query(AssertSqlSafe(self.sql.get_many.as_str()))
                .bind(keys)
                .bind(now)
                .bind(&records)
                .fetch_all(p)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect()
                }),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => sqlx::query(AssertSqlSafe(self.sql.get_many.as_str()))
                .bind(json_array(keys))
                .bind(now)
                .bind(json_array(&records))
                .fetch_all(p)
                .await
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect()
                }),
        }
        .map_err(|e| self.error(e))?;
        let found: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        Ok(keys
            .iter()
            .map(|k| Lookup::new(found.get(*k).cloned().map(Bytes::from)))
            .collect())
    }

    pub(super) async fn set_many(
        self: &Arc<Self>,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> Result<(), Error> {
        for (key, _) in entries {
            check_key(key)?;
        }
        // One row per key, the last value given for it (an upsert may not
        // touch a row twice).
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, (key, _)) in entries.iter().enumerate() {
            last.insert(key, i);
        }
        let mut chosen: Vec<usize> = last.into_values().collect();
        chosen.sort_unstable();
        if chosen.is_empty() {
            return Ok(());
        }
        let pool = self.ready().await?;
        let (ttl, now) = (self.ttl_ms(ttl), self.now());
        let put = || async {
            match pool {
                #[cfg(feature = "postgres")]
                Pool::Postgres(p) => {
                    let keys: Vec<&str> = chosen.iter().map(|&i| entries[i].0).collect();
                    let values: Vec<&[u8]> = chosen.iter().map(|&i| &entries[i].1[..]).collect();
                    sqlx::query(AssertSqlSafe(self.sql.set_many.as_str()))
                        .bind(now)
                        .bind(ttl)
                        .bind(keys)
                        .bind(values)
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())
                }
                #[cfg(feature = "sqlite")]
                Pool::Sqlite(p) => {
                    let pairs = chosen
                        .iter()
                        .map(|&i| {
                            let pair = [entries[i].0.to_owned(), hex(&entries[i].1)];
                            json_array(&pair)
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    sqlx::query(AssertSqlSafe(self.sql.set_many.as_str()))
                        .bind(now)
                        .bind(ttl)
                        .bind(format!("[{pairs}]"))
                        .execute(p)
                        .await
                        .map(|r| r.rows_affected())
                }
            }
            .map_err(|e| self.error(e))
        };
        if put().await? == 0 {
            // No epoch row to write under: created again, then written.
            self.seed(pool).await?;
            put().await?;
        }
        Ok(())
    }

    pub(super) async fn delete_many(self: &Arc<Self>, keys: &[&str]) -> Result<(), Error> {
        for key in keys {
            check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(());
        }
        let pool = self.ready().await?;
        let names: Vec<String> = keys
            .iter()
            .map(|k| super::invalidation::deleted(k))
            .collect();
        if !self.delete_many_once(pool, keys, &names).await? {
            self.seed(pool).await?;
            if !self.delete_many_once(pool, keys, &names).await? {
                return Err(Error::backend(
                    self.backend_name(),
                    format!(
                        "the epoch row of {}_epoch could not be created: create the tables \
                         with the DDL (`backends::sql::ddl`) or enable auto_create",
                        self.config.table
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One transaction: bump the epoch, record every key's delete under
    /// it, remove the rows. False (nothing done) when the epoch row is
    /// missing.
    async fn delete_many_once(
        &self,
        pool: &Pool,
        keys: &[&str],
        names: &[String],
    ) -> Result<bool, Error> {
        let now = self.now();
        macro_rules! run {
            ($p:expr, $keys:expr, $names:expr, $notices:expr) => {{
                let mut tx = $p.begin().await.map_err(|e| self.error(e))?;
                let epoch: Option<i64> = sqlx::query(AssertSqlSafe(self.sql.bump.as_str()))
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| row.map(|r| r.try_get::<i64, _>(0)).transpose())
                    .map_err(|e| self.error(e))?;
                let Some(epoch) = epoch else {
                    return Ok(false);
                };
                sqlx::query(AssertSqlSafe(self.sql.record_many.as_str()))
                    .bind($names)
                    .bind(epoch)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                sqlx::query(AssertSqlSafe(self.sql.delete_many.as_str()))
                    .bind($keys)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                notify_in!(self, tx, $notices);
                tx.commit().await.map_err(|e| self.error(e))?;
                Ok(true)
            }};
        }
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => run!(
                p,
                keys,
                names,
                keys.iter()
                    .map(|k| super::invalidation::notice(crate::changes::key_notice(k)))
                    .collect::<Vec<_>>()
            ),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => run!(p, json_array(keys), json_array(names), ""),
        }
    }
}

#[cfg(feature = "sqlite")]
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
