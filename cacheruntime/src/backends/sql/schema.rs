//! The tables: their names, their DDL, and making sure they exist.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::{Dialect, Pool, Shared};
use crate::Error;

/// The PostgreSQL DDL for the default table name, `cache_entries`.
pub const POSTGRES_DDL: &str = include_str!("../../../sql/postgres.sql");
/// The SQLite DDL for the default table name, `cache_entries`.
pub const SQLITE_DDL: &str = include_str!("../../../sql/sqlite.sql");

pub(super) const DEFAULT_TABLE: &str = "cache_entries";

/// The index's name in the shipped DDL.
const DEFAULT_INDEX: &str = "cache_entries_expires_at";

/// Checks a table name (optionally `schema.table`): letters, digits and
/// `_`, not starting with a digit, at most 48 characters so the derived
/// names (`<table>_invalidations`, ...) stay within PostgreSQL's 63.
pub fn validate_table_name(name: &str) -> Result<(), Error> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if name.len() <= 48 && parts.len() <= 2 && parts.iter().all(|p| ok_part(p)) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "table name {name:?} is not allowed: use letters, digits and `_` (optionally \
             `schema.table` on PostgreSQL), not starting with a digit, at most 48 characters"
        )))
    }
}

/// Checks a table name for `dialect`: SQLite has no schemas (a `x.` prefix
/// names an attached database, which a pool's connections do not share).
pub(super) fn validate_table_for(dialect: Dialect, name: &str) -> Result<(), Error> {
    validate_table_name(name)?;
    if dialect == Dialect::Sqlite && name.contains('.') {
        return Err(Error::Config(format!(
            "table name {name:?} names a schema, which SQLite does not have: use a plain \
             name (`web_cache`), or another database file for another cache"
        )));
    }
    Ok(())
}

/// The DDL for `table` in the given dialect.
pub fn ddl(dialect: Dialect, table: &str) -> Result<String, Error> {
    validate_table_name(table)?;
    let base = match dialect {
        Dialect::Postgres => POSTGRES_DDL,
        Dialect::Sqlite => SQLITE_DDL,
    };
    // The index is named after the table without its schema (CREATE INDEX
    // takes no schema: the index goes to its table's). Set aside first, so
    // that the table's own renaming cannot reach into it.
    let unqualified = table.rsplit('.').next().unwrap_or(table);
    Ok(base
        .replace(DEFAULT_INDEX, "\u{0}")
        .replace(DEFAULT_TABLE, table)
        .replace('\u{0}', &format!("{unqualified}_expires_at")))
}

/// The four tables' names.
fn table_names(table: &str) -> [String; 4] {
    [
        table.to_owned(),
        format!("{table}_invalidations"),
        format!("{table}_epoch"),
        format!("{table}_locks"),
    ]
}

impl Shared {
    /// Creates the tables in a background task (one at a time) and waits
    /// for it. The creation (an advisory lock, DDL, seeding the epochs) can
    /// take longer than an op timeout on a cold or loaded database; a
    /// caller's timeout then ends the wait, never the creation, so the
    /// next call finds the tables made instead of starting over.
    pub(super) async fn schema(self: &Arc<Self>) -> Result<(), Error> {
        let done = self.schema_done.notified();
        let mut done = std::pin::pin!(done);
        done.as_mut().enable();
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if tokio::runtime::Handle::try_current().is_ok()
            && !self.schema_creating.swap(true, Ordering::AcqRel)
        {
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                let created = async {
                    let _one_at_a_time = shared.schema_lock.lock().await;
                    if shared.schema_ready.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    shared.create_schema(shared.pool()).await
                }
                .await;
                match created {
                    Ok(()) => shared.schema_ready.store(true, Ordering::Release),
                    Err(e) => {
                        *shared
                            .schema_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        shared.warm_up();
                    }
                }
                shared.schema_creating.store(false, Ordering::Release);
                shared.schema_done.notify_waiters();
            });
        }
        done.await;
        if self.schema_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = self
            .schema_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the cache tables could not be created".to_owned());
        Err(Error::backend(self.backend_name(), why))
    }

    /// Makes sure the tables exist: nothing to do when they all do (so a
    /// role that may only read and write tables someone else owns, and
    /// may not create any, works with `auto_create` on); otherwise the DDL.
    pub(super) async fn create_schema(&self, pool: &Pool) -> Result<(), Error> {
        let ddl = ddl(self.dialect, &self.config.table)?;
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => {
                if self
                    .pg_tables_exist(pool)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    return Ok(());
                }
                let mut tx = pool.begin().await.map_err(|e| self.error(e))?;
                // Serialise creators across processes; released at commit.
                let lock_id = crate::envelope::fingerprint(&self.config.table, 0x5ca1) as i64;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                sqlx::raw_sql(AssertSqlSafe(ddl))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.schema_error(e))?;
                tx.commit().await.map_err(|e| self.error(e))?;
            }
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => {
                // Processes opening a new file at once can meet SQLITE_BUSY
                // where the busy handler does not apply (switching the file
                // to WAL): retry briefly; the op timeout bounds the total.
                let script = format!("BEGIN IMMEDIATE;\n{ddl}\nCOMMIT;");
                let mut attempt = 0;
                loop {
                    let created = match self.sqlite_tables_exist(pool).await {
                        Ok(true) => Ok(()),
                        Ok(false) => sqlx::raw_sql(AssertSqlSafe(script.as_str()))
                            .execute(pool)
                            .await
                            .map(drop),
                        Err(e) => Err(e),
                    };
                    match created {
                        Ok(()) => break,
                        Err(sqlx::Error::Database(db))
                            if attempt < 100
                                && (db.message().contains("locked")
                                    || db.message().contains("busy")) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        Err(e) => return Err(self.schema_error(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the four tables exist (in the search path's schema, or the
    /// named one).
    #[cfg(feature = "postgres")]
    async fn pg_tables_exist(&self, pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
        use sqlx::Row;
        let [a, b, c, d] = table_names(&self.config.table);
        let found: i64 = sqlx::query(
            "SELECT ((to_regclass($1) IS NOT NULL)::int + (to_regclass($2) IS NOT NULL)::int \
             + (to_regclass($3) IS NOT NULL)::int + (to_regclass($4) IS NOT NULL)::int)::bigint",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(d)
        .fetch_one(pool)
        .await?
        .try_get(0)?;
        Ok(found == 4)
    }

    /// Whether the four tables exist in the file.
    #[cfg(feature = "sqlite")]
    async fn sqlite_tables_exist(&self, pool: &sqlx::SqlitePool) -> Result<bool, sqlx::Error> {
        use sqlx::Row;
        let [a, b, c, d] = table_names(&self.config.table);
        let found: i64 = sqlx::query(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2, ?3, ?4)",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(d)
        .fetch_one(pool)
        .await?
        .try_get(0)?;
        Ok(found == 4)
    }

    /// A failure to create the tables, saying what to do about it.
    fn schema_error(&self, e: sqlx::Error) -> Error {
        let hint = match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => Some(
                "this role may not create the cache tables: create them once as a role that \
                 may (the DDL is `backends::sql::ddl`), grant this one SELECT, INSERT, UPDATE \
                 and DELETE on them, and the backend uses them as they are",
            ),
            sqlx::Error::Database(db) if db.code().as_deref() == Some("3F000") => {
                Some("the table's schema does not exist: create it (`CREATE SCHEMA ...`) first")
            }
            _ => None,
        };
        match (self.error(e), hint) {
            (Error::Backend { backend, message }, Some(hint)) => Error::Backend {
                backend,
                message: format!("{message}: {hint}"),
            },
            (other, _) => other,
        }
    }

    /// Creates the epoch rows anew when they are missing (an operator
    /// cleared the table): row 1 from the clock, above every epoch handed
    /// out before, and the floor with it, so no ticket from before (whose
    /// invalidation records may be gone too) may write.
    pub(super) async fn seed(&self, pool: &Pool) -> Result<(), Error> {
        macro_rules! run {
            ($p:expr, $everything:expr) => {{
                let mut tx = $p.begin().await.map_err(|e| self.error(e))?;
                let seeded = sqlx::query(AssertSqlSafe(self.sql.seed_epoch.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?
                    .rows_affected();
                let floor = if seeded > 0 {
                    &self.sql.floor_to_epoch
                } else {
                    &self.sql.floor_if_missing
                };
                sqlx::query(AssertSqlSafe(floor.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                // Every entry is hidden now: near tiers drop everything.
                if seeded > 0 {
                    notify_in!(self, tx, $everything);
                }
                tx.commit().await.map_err(|e| self.error(e))?;
                if seeded > 0 {
                    tracing::warn!(
                        table = %self.config.table,
                        "the cache's epoch row was missing and was created anew; \
                         entries written before are no longer served"
                    );
                }
                Ok(())
            }};
        }
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => run!(p, ["*"]),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => run!(p, "*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_against_injection() {
        assert!(validate_table_name("cache_entries").is_ok());
        assert!(validate_table_name("app.web_cache").is_ok());
        for bad in [
            "",
            "1abc",
            "a;drop table x",
            "a b",
            "a.b.c",
            "x\"y",
            &"a".repeat(49),
        ] {
            assert!(validate_table_name(bad).is_err(), "{bad:?} accepted");
        }
        let err = validate_table_for(Dialect::Sqlite, "app.t").unwrap_err();
        assert!(err.to_string().contains("schema"), "{err}");
        assert!(validate_table_for(Dialect::Postgres, "app.t").is_ok());
    }

    #[test]
    fn ddl_renames_every_table_and_index_once() {
        let d = ddl(Dialect::Postgres, "app.web_cache").unwrap();
        assert!(!d.contains("cache_entries"), "{d}");
        assert!(d.contains("CREATE TABLE IF NOT EXISTS app.web_cache_invalidations"));
        assert!(d.contains("CREATE INDEX IF NOT EXISTS web_cache_expires_at ON app.web_cache"));
        // A schema-qualified default name: the index keeps a bare name.
        let d = ddl(Dialect::Postgres, "app.cache_entries").unwrap();
        assert!(
            d.contains("CREATE INDEX IF NOT EXISTS cache_entries_expires_at ON app.cache_entries "),
            "{d}"
        );
        assert!(!d.contains("app.app."), "{d}");
        assert!(!d.contains("app.cache_entries_expires_at"), "{d}");
        assert!(ddl(Dialect::Sqlite, "x;y").is_err());
        assert_eq!(ddl(Dialect::Sqlite, "cache_entries").unwrap(), SQLITE_DDL);
    }
}
