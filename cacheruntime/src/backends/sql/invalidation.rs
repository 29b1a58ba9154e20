//! Invalidations and deletes: one short transaction that bumps the epoch
//! and records the prefix (or the deleted key) under it, so reads ignore
//! older rows at once; the rows themselves go afterwards, in batches.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row};

use super::entries::check_key;
use super::{Pool, Shared};
use crate::Error;

impl Shared {
    /// The records that can name `key`: `""`, each prefix ending with `:`,
    /// and the key's delete record ([`deleted`]).
    pub(super) fn records(key: &str) -> Vec<String> {
        std::iter::once(String::new())
            .chain(key.match_indices(':').map(|(i, _)| key[..=i].to_owned()))
            .chain(std::iter::once(deleted(key)))
            .collect()
    }

    pub(super) async fn delete(self: &Arc<Self>, key: &str) -> Result<(), Error> {
        check_key(key)?;
        self.invalidate_rows(
            &deleted(key),
            Rows::Key(key),
            notice(crate::changes::key_notice(key)),
        )
        .await
    }

    pub(super) async fn invalidate(self: &Arc<Self>, prefix: &str) -> Result<(), Error> {
        // Whole segments only, as the cache checks: a store used directly
        // must not read `abc` as everything.
        crate::key::check_prefix(prefix)?;
        // `p:` .. `p;`: the keys starting with `p:` in bytewise order.
        let rows = match prefix.strip_suffix(':') {
            Some(head) => Rows::Range(prefix.to_owned(), format!("{head};")),
            None => Rows::All,
        };
        self.invalidate_rows(prefix, rows, notice(crate::changes::prefix_notice(prefix)))
            .await
    }

    /// One short transaction: bump the epoch, record `name` under it, and
    /// for a delete remove its row. A prefix's rows, already hidden by the
    /// record, are deleted afterwards in batches ([`Shared::purge`]), so
    /// the call takes the same time whatever the prefix holds.
    async fn invalidate_rows(
        self: &Arc<Self>,
        name: &str,
        rows: Rows<'_>,
        notice: String,
    ) -> Result<(), Error> {
        let pool = self.ready().await?;
        let epoch = match self.bump_and_record(pool, name, &rows, &notice).await? {
            Some(epoch) => epoch,
            None => {
                self.seed(pool).await?;
                self.bump_and_record(pool, name, &rows, &notice)
                    .await?
                    .ok_or_else(|| {
                        Error::backend(
                            self.backend_name(),
                            format!(
                                "the epoch row of {}_epoch could not be created: create the \
                                 tables with the DDL (`backends::sql::ddl`) or enable auto_create",
                                self.config.table
                            ),
                        )
                    })?
            }
        };
        match rows {
            Rows::Key(_) => {}
            Rows::Range(from, to) => self.purge(Some((from, to)), epoch),
            Rows::All => self.purge(None, epoch),
        }
        Ok(())
    }

    /// The invalidation's transaction, with its change notice on
    /// PostgreSQL (sent when it commits); `None` (nothing done) when the
    /// epoch row is missing.
    async fn bump_and_record(
        &self,
        pool: &Pool,
        name: &str,
        rows: &Rows<'_>,
        notice: &str,
    ) -> Result<Option<i64>, Error> {
        let now = self.now();
        macro_rules! run {
            ($p:expr, $notices:expr) => {{
                let mut tx = $p.begin().await.map_err(|e| self.error(e))?;
                let epoch: Option<i64> = sqlx::query(AssertSqlSafe(self.sql.bump.as_str()))
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| row.map(|r| r.try_get::<i64, _>(0)).transpose())
                    .map_err(|e| self.error(e))?;
                let Some(epoch) = epoch else {
                    return Ok(None);
                };
                sqlx::query(AssertSqlSafe(self.sql.record.as_str()))
                    .bind(name)
                    .bind(epoch)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                if let Rows::Key(key) = rows {
                    sqlx::query(AssertSqlSafe(self.sql.delete.as_str()))
                        .bind(*key)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.error(e))?;
                }
                notify_in!(self, tx, $notices);
                tx.commit().await.map_err(|e| self.error(e))?;
                Ok(Some(epoch))
            }};
        }
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => run!(p, [notice]),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => run!(p, notice),
        }
    }
}

/// The record of a delete of `key`: the key and `\u{1}`, which no prefix
/// ends with (prefixes are empty or end with `:`), so it names that key
/// only.
pub(super) fn deleted(key: &str) -> String {
    format!("{key}\u{1}")
}

/// A change notice for near tiers (`push.rs`, `changes::key_notice`) as
/// PostgreSQL's `NOTIFY` takes it: `*` ("anything may have changed") when
/// too long for it.
pub(super) fn notice(notice: String) -> String {
    if notice.len() >= super::statements::MAX_NOTICE {
        return "*".to_owned();
    }
    notice
}

/// The rows an invalidation removes.
enum Rows<'a> {
    Key(&'a str),
    /// `key >= from AND key < to`.
    Range(String, String),
    All,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_whole_segments_and_the_key_itself() {
        assert_eq!(Shared::records("a:b:c"), ["", "a:", "a:b:", "a:b:c\u{1}"]);
        assert_eq!(Shared::records("k"), ["", "k\u{1}"]);
        // A key ending with `:` has a delete record of its own, not its
        // prefix's.
        assert_ne!(deleted("a:"), "a:");
    }

    #[test]
    fn notices_too_long_for_notify_say_anything_changed() {
        let short = notice(crate::changes::prefix_notice("a:"));
        assert!(short.starts_with('P') && short.ends_with("a:"), "{short}");
        assert_eq!(notice(crate::changes::key_notice(&"x".repeat(8_000))), "*");
    }
}
