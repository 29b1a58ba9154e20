//! What operators ask of the SQL store (`Cache::keys`, `Cache::store_info`,
//! `cachectl`): a range of the entries table, and the database's version,
//! TLS and size.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Row};

use super::{Dialect, Pool, Shared};
use crate::backend::{ScanPage, StoreInfo};
use crate::Error;

/// Keys per page.
const PAGE: i64 = 1_000;

impl Shared {
    /// Keys from `prefix` on, past `cursor`, in key order (an index range:
    /// PostgreSQL's table has `COLLATE "C"`, SQLite's order is bytewise):
    /// the page ends at the first key without the prefix.
    pub(super) async fn scan(
        self: &Arc<Self>,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<ScanPage, Error> {
        let pool = self.ready().await?;
        let after = cursor.unwrap_or("");
        let rows: Vec<String> =
            on_pool!(pool, |p| sqlx::query(AssertSqlSafe(self.sql.scan.as_str()))
                .bind(prefix)
                .bind(after)
                .bind(PAGE)
                .fetch_all(p)
                .await
                .and_then(|rows| rows
                    .into_iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect()))
            .map_err(|e| self.error(e))?;
        let examined = rows.len() as u64;
        let full = rows.len() as i64 == PAGE;
        let keys: Vec<String> = rows
            .into_iter()
            .take_while(|key| key.starts_with(prefix))
            .collect();
        let next = (full && keys.len() as i64 == PAGE)
            .then(|| keys.last().cloned())
            .flatten();
        Ok(ScanPage::new(keys, next, examined))
    }

    /// The database's version, whether the connection is encrypted, the
    /// entries table's row count and bound.
    pub(super) async fn describe(self: &Arc<Self>) -> Result<StoreInfo, Error> {
        let pool = self.ready().await?;
        let mut info = StoreInfo::new(self.backend_name());
        let one = |sql: String| async move {
            on_pool!(pool, |p| sqlx::query(AssertSqlSafe(sql))
                .fetch_optional(p)
                .await
                .and_then(|row| row
                    .map(|r| r.try_get::<Option<String>, _>(0))
                    .transpose()))
            .map(Option::flatten)
            .map_err(|e| self.error(e))
        };
        let (version, tls) = match self.dialect {
            Dialect::Postgres => (
                one("SHOW server_version".into()).await?,
                one(
                    "SELECT CASE WHEN ssl THEN 'yes' ELSE 'no' END FROM pg_stat_ssl \
                     WHERE pid = pg_backend_pid()"
                        .into(),
                )
                .await
                .ok()
                .flatten()
                .map(|ssl| ssl == "yes"),
            ),
            Dialect::Sqlite => (one("SELECT sqlite_version()".into()).await?, None),
        };
        info.version = version;
        info.tls = tls;
        let rows = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
            self.sql.count.as_str()
        ))
        .fetch_one(p)
        .await
        .and_then(|r| r.try_get::<i64, _>(0)))
        .map_err(|e| self.error(e))?;
        info.memory = Some(match self.config.max_entries {
            Some(max) => format!("{rows} entries of at most {max}"),
            None => format!("{rows} entries, unbounded"),
        });
        info.eviction = Some(
            match self.config.max_entries {
                Some(_) => "expired rows swept; past max_entries the soonest to expire are culled",
                None => "expired rows swept; no bound (max_entries off)",
            }
            .into(),
        );
        info.details
            .push(("table".into(), self.config.table.clone()));
        info.details.push(("url".into(), self.label.clone()));
        Ok(info)
    }
}
