//! SQL backend through sqlx: PostgreSQL (feature `postgres`) and SQLite
//! (feature `sqlite`).
//!
//! # The table manages itself
//! On first use the backend makes sure its tables exist: when all four do,
//! it uses them as they are (a role that may only read and write tables
//! another role owns works with `auto_create` on); otherwise it runs the
//! DDL (PostgreSQL: inside a transaction holding an advisory lock, since
//! concurrent `CREATE TABLE IF NOT EXISTS` can fail with a unique
//! violation; SQLite: its own write lock). It never touches
//! `_sqlx_migrations` or any other table. The DDL is exported
//! ([`POSTGRES_DDL`], [`SQLITE_DDL`], [`ddl`] for another name, and the
//! files `cacheruntime/sql/*.sql`) for teams whose migrations own the
//! schema; then switch creation off with [`SqlConfig::auto_create`]. On
//! PostgreSQL the table may be schema-qualified (`app.web_cache`; the
//! schema must exist).
//!
//! # Schema
//! `key` (bytewise collation, primary key), `value` bytes, `expires_at` (ms,
//! indexed) and `epoch`. Reads ignore expired rows; a write is one upsert.
//! A background task removes expired rows in bounded batches and culls the
//! rows that expire soonest down to [`SqlConfig::max_entries`] (default
//! [`DEFAULT_MAX_ENTRIES`], 100,000; [`SqlConfig::unbounded`] for none);
//! it counts the table once per sweep, never per write, and sweeps early
//! after `max_entries / 10` writes (at least 100) so a burst of writes is
//! culled before the next interval.
//!
//! # Culling is only ever a miss
//! The cull deletes rows of the entries table, and nothing else: the
//! invalidation records, the epoch and its floor, and the locks live in
//! their own tables, which only their own rules sweep (below). A read of a
//! culled key is a miss; its computation writes under the ticket that miss
//! took, which is refused if an invalidation came since, as for any miss.
//! So a cull costs recomputations, never a value an invalidation hid.
//!
//! # One clock: the database's
//! Every time that decides which row lives (`expires_at`, the sweep, lock
//! expiry, when an invalidation record may go) is read from the database's
//! clock inside the statement, so application servers whose clocks
//! disagree still agree on them: a process minutes ahead neither sweeps
//! other processes' fresh rows nor takes their locks. (An entry's own
//! fresh and stale deadlines, inside its value, are the application's
//! clock on every store.)
//!
//! # Prefix invalidation and deletes
//! A short transaction: bump the invalidation epoch and record
//! `prefix -> epoch`. From then on reads ignore the prefix's older rows
//! and writes under an older ticket are refused; the rows themselves are
//! deleted after it, in batches, by a background task, as a primary-key
//! range (`key >= 'p:' AND key < 'p;'`; never `LIKE`, so `%` and `_` in keys
//! are plain characters) of the rows older than the invalidation. So an
//! invalidation takes the same few milliseconds whatever the prefix holds.
//! A delete records its exact key the same way (as the key followed by
//! `\u{1}`, which no prefix ends with) and deletes its row in the same
//! transaction. Every entry carries the epoch its read saw (the
//! [`Ticket`]); a write is refused, and a read ignores an entry, when an
//! invalidation of one of its prefixes or a delete of its key is newer, so
//! a value computed before either never shows after it.
//!
//! Epochs start from the database's clock in microseconds and each bump
//! takes at least the clock, so when the epoch row or every table is
//! created anew (an operator clearing them, a restored database) epochs
//! keep growing; the floor (below) starts with them, so no ticket from
//! before can write. A missing epoch row is created again by the next call.
//!
//! Records are swept after `max_ttl`, when every entry they could hide has
//! expired. A computation still running may hold an older ticket: the sweep
//! first raises a floor (row 2 of the epoch table) to the newest record it
//! removes, and writes under (or entries with) an older epoch are refused
//! (or ignored). So no sweep, by any process, whatever its `max_ttl`, lets a
//! value computed before an invalidation be served.
//!
//! # Change notices (PostgreSQL)
//! Invalidations, deletes, `set`, `set_many` and compare-and-set, and a
//! computation's write that replaced a live row, send a notice on the
//! channel `cacheruntime_changes` in their own transaction (`NOTIFY`,
//! delivered at commit), so that near tiers in other processes drop what
//! it names (`push.rs`; `statements::notifying` says which and why).
//! PostgreSQL serializes the commits of notifying transactions, which caps
//! those writes under concurrency (BENCHMARKS.md); reads are unchanged.
//! SQLite sends none: near tiers in front of it poll.
//!
//! # Keys
//! PostgreSQL text cannot hold NUL: a key or prefix containing one is
//! refused as bad input ([`Error::InvalidKey`], [`Error::InvalidPrefix`]),
//! never sent, so it never counts as a store failure.
//!
//! # Connections
//! Every parameter of the URL is honoured or refused at build (see
//! [`SqlConfig::new`]). Pools are created on first use (no I/O, no runtime
//! needed to build the backend), so the application starts while the
//! database is down; every call is bounded by the cache's op timeout and
//! circuit breaker like any other store. Opening a connection (TCP, TLS,
//! SCRAM) can take longer than the op timeout, which would cancel every
//! attempt and never connect; so connections are opened by a background
//! task that no caller's timeout cancels, started when the pool is made and
//! after any failure.
//!
//! # Files
//! `config.rs` ([`SqlConfig`] and its URL forms), `connect.rs` (the URL's
//! connection parameters, checked), `schema.rs` (the tables and their DDL),
//! `statements.rs` (every statement, per dialect), `entries.rs` (reads,
//! writes, locks), `invalidation.rs` (invalidations and deletes),
//! `sweep.rs` (the work done after calls), `push.rs` (PostgreSQL's change
//! notices for near tiers); the backend itself is here.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Lookup, ScanPage, StoreInfo, Ticket};
use crate::backends::Store;
use crate::secrets::{redact, Secrets};
use crate::Error;

pub use self::config::{SqlConfig, DEFAULT_MAX_ENTRIES, MAX_TTL_LIMIT, MIN_SWEEP_INTERVAL};
use self::connect::{connect_options, Connect};
use self::schema::validate_table_for;
pub use self::schema::{ddl, validate_table_name, POSTGRES_DDL, SQLITE_DDL};
use self::statements::Statements;

/// Which SQL database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

enum Pool {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// Runs one statement built by `$build` (a closure over a `sqlx::query`)
/// against whichever pool this is.
macro_rules! on_pool {
    ($pool:expr, |$q:ident| $body:expr) => {
        match $pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => {
                let $q = pool;
                $body
            }
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => {
                let $q = pool;
                $body
            }
        }
    };
}

/// Sends `$notices` (PostgreSQL's change notices for near tiers,
/// `statements::notify`; SQLite has none) in the transaction `$tx`.
macro_rules! notify_in {
    ($shared:expr, $tx:expr, $notices:expr) => {
        if !$shared.sql.notify.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe($shared.sql.notify.as_str()))
                .bind($notices)
                .execute(&mut *$tx)
                .await
                .map_err(|e| $shared.error(e))?;
        }
    };
}

// After `on_pool!` and `notify_in!`, which they use.
#[cfg(feature = "postgres")]
mod combined;
mod config;
mod connect;
mod entries;
mod invalidation;
mod many;
#[cfg(feature = "postgres")]
mod push;
mod scan;
mod schema;
mod statements;
mod sweep;

pub(super) struct Shared {
    config: SqlConfig,
    dialect: Dialect,
    sql: Statements,
    connect: Connect,
    pool: OnceLock<Pool>,
    /// Whether the tables are known to exist; cleared when a statement
    /// finds one missing (a restored or recreated database), so the next
    /// call creates them again.
    schema_ready: AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    /// A schema creation is running (in the background: no caller's op
    /// timeout cancels it), and callers wait for it here.
    schema_creating: AtomicBool,
    schema_done: tokio::sync::Notify,
    /// Why the last creation failed, for the callers that waited on it.
    schema_error: std::sync::Mutex<Option<String>>,
    writes_since_sweep: AtomicU64,
    sweeper: OnceLock<()>,
    warming: AtomicBool,
    /// One sweep at a time per process: two concurrent culls would each
    /// remove the excess and leave far fewer than `max_entries`.
    sweeping: tokio::sync::Mutex<()>,
    label: String,
    secrets: Secrets,
}

/// A PostgreSQL or SQLite store; see the module docs.
pub struct SqlBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlBackend")
            .field("url", &self.shared.label)
            .field("table", &self.shared.config.table)
            .finish_non_exhaustive()
    }
}

impl SqlBackend {
    /// Checks the configuration and prepares the backend without
    /// connecting: a URL parameter, table name or setting that cannot work
    /// is refused here, saying what to write instead.
    pub fn new(config: SqlConfig) -> Result<Self, Error> {
        let dialect = config.dialect()?;
        match dialect {
            #[cfg(not(feature = "postgres"))]
            Dialect::Postgres => {
                return Err(Error::Config(
                    "PostgreSQL support is not compiled in: enable the `postgres` feature".into(),
                ))
            }
            #[cfg(not(feature = "sqlite"))]
            Dialect::Sqlite => {
                return Err(Error::Config(
                    "SQLite support is not compiled in: enable the `sqlite` feature".into(),
                ))
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
        validate_table_for(dialect, &config.table)?;
        config.check()?;
        let label = redact(&config.url);
        let connect = connect_options(&config, dialect, &label)?;
        let sql = Statements::new(dialect, &config.table);
        let secrets = Secrets::of([&config.url]);
        Ok(SqlBackend {
            shared: Arc::new(Shared {
                config,
                dialect,
                sql,
                connect,
                pool: OnceLock::new(),
                schema_ready: AtomicBool::new(false),
                schema_lock: tokio::sync::Mutex::new(()),
                schema_creating: AtomicBool::new(false),
                schema_done: tokio::sync::Notify::new(),
                schema_error: std::sync::Mutex::new(None),
                writes_since_sweep: AtomicU64::new(0),
                sweeper: OnceLock::new(),
                warming: AtomicBool::new(false),
                sweeping: tokio::sync::Mutex::new(()),
                label,
                secrets,
            }),
        })
    }

    /// The database kind.
    pub fn dialect(&self) -> Dialect {
        self.shared.dialect
    }

    /// Runs one sweep now: expired rows (in batches), expired locks, old
    /// invalidation records, and the `max_entries` cull. Returns the number
    /// of entries removed. The background task calls this periodically.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let _one_at_a_time = self.shared.sweeping.lock().await;
        self.shared.sweep().await
    }
}

impl Shared {
    fn error(&self, e: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &e {
            // 42P01: PostgreSQL's undefined_table; SQLite says it in words.
            let missing =
                db.code().as_deref() == Some("42P01") || db.message().contains("no such table");
            if missing {
                self.schema_ready.store(false, Ordering::Release);
            }
        }
        Error::backend(self.backend_name(), self.secrets.scrub(&e.to_string()))
    }

    fn backend_name(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// What stands in for the database's clock: `None` (bound as NULL, so
    /// the statement reads the database's clock) unless a test gave one.
    fn now(&self) -> Option<i64> {
        self.config
            .database_clock
            .as_ref()
            .map(|c| i64::try_from(c.now_ms()).unwrap_or(i64::MAX))
    }

    fn pool(&self) -> &Pool {
        self.pool.get_or_init(|| match &self.connect {
            #[cfg(feature = "postgres")]
            Connect::Postgres(options) => Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(self.config.max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    // No ping before each statement (sqlx's default): it
                    // doubled every call's round trips. Only a connection
                    // idle for over a second is pinged first, so one
                    // broken while idle (a restarted server, an idle
                    // timeout on the way) is replaced rather than failing
                    // a call; under load none is idle that long.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for < Duration::from_secs(1) {
                                return Ok(true);
                            }
                            use sqlx::Connection;
                            Ok(conn.ping().await.is_ok())
                        })
                    })
                    .connect_lazy_with(options.clone()),
            ),
            #[cfg(feature = "sqlite")]
            Connect::Sqlite(options) => Pool::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(self.config.max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy_with(options.clone()),
            ),
        })
    }

    /// Creates the tables once per process (and starts the sweeper).
    async fn ready(self: &Arc<Self>) -> Result<&Pool, Error> {
        let fresh = self.pool.get().is_none();
        let pool = self.pool();
        if fresh {
            self.warm_up();
        }
        if self.config.auto_create && !self.schema_ready.load(Ordering::Acquire) {
            self.schema().await?;
        }
        self.start_sweeper();
        Ok(pool)
    }

    /// Opens a connection in the background (at most one attempt at a
    /// time) and returns it to the pool idle, so the next call finds it.
    fn warm_up(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.warming.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(pool) = shared.pool.get() {
                let opened = on_pool!(pool, |p| p.acquire().await.map(drop));
                if let Err(e) = opened {
                    tracing::debug!(error = %shared.error(e), "cache database not reachable yet");
                }
            }
            shared.warming.store(false, Ordering::Release);
        });
    }

    /// A TTL in ms, capped at `max_ttl`, at least 1.
    fn ttl_ms(&self, ttl: Duration) -> i64 {
        millis(ttl.min(self.config.max_ttl)).max(1)
    }
}

/// A duration in ms as SQL stores it, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqlBackend {
    /// Runs one operation; a failure (or a cancellation by the op timeout,
    /// noticed on the next call) starts a background reconnect.
    async fn op<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let guard = WarmOnDrop(&self.shared, true);
        let result = fut.await;
        std::mem::forget(guard);
        if matches!(&result, Err(e) if e.is_store_failure()) {
            self.shared.warm_up();
        }
        result
    }
}

/// Starts a warm-up if the operation holding it is dropped unfinished
/// (the op timeout cancelled it, typically while connecting).
struct WarmOnDrop<'a>(&'a Arc<Shared>, bool);

impl Drop for WarmOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.warm_up();
        }
    }
}

impl Store for SqlBackend {
    fn name(&self) -> &'static str {
        self.shared.backend_name()
    }

    fn max_ttl(&self) -> Option<Duration> {
        Some(self.shared.config.max_ttl)
    }

    fn get(&self, key: &str) -> impl Future<Output = Result<Lookup, Error>> + Send {
        self.op(self.shared.get(key))
    }

    fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.op(self.shared.set(key, value, ttl, ticket))
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.op(self.shared.delete(key))
    }

    fn invalidate_prefix(&self, prefix: &str) -> impl Future<Output = Result<(), Error>> + Send {
        self.op(self.shared.invalidate(prefix))
    }

    fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ScanPage, Error>> + Send {
        self.op(self.shared.scan(prefix, cursor))
    }

    fn describe(&self) -> impl Future<Output = Result<StoreInfo, Error>> + Send {
        self.op(self.shared.describe())
    }

    fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.op(self.shared.lock(key, value, ttl))
    }

    fn delete_if_equals(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.op(self.shared.unlock(key, value))
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.op(self.shared.swap(key, expected, value, ttl, ticket))
    }

    fn pushes_changes(&self) -> bool {
        self.shared.dialect == Dialect::Postgres
    }

    /// PostgreSQL: a cold miss in two round trips (`combined.rs`).
    fn combines_locks(&self) -> bool {
        self.shared.dialect == Dialect::Postgres
    }

    #[cfg(feature = "postgres")]
    fn get_or_lock(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(Lookup, bool), Error>> + Send {
        self.op(self.shared.get_or_lock(key, token, ttl))
    }

    #[cfg(feature = "postgres")]
    fn lock_and_get(
        &self,
        key: &str,
        token: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(bool, Option<Lookup>), Error>> + Send {
        self.op(self.shared.lock_and_get(key, token, ttl))
    }

    #[cfg(feature = "postgres")]
    fn set_and_unlock(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        token: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        self.op(self.shared.set_and_unlock(key, value, ttl, ticket, token))
    }

    fn follow_changes(&self, feed: crate::backend::Feed) -> bool {
        #[cfg(feature = "postgres")]
        return self.shared.follow(feed);
        #[cfg(not(feature = "postgres"))]
        {
            drop(feed);
            false
        }
    }

    fn get_many(&self, keys: &[&str]) -> impl Future<Output = Result<Vec<Lookup>, Error>> + Send {
        self.op(self.shared.get_many(keys))
    }

    fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.op(self.shared.set_many(entries, ttl))
    }

    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<(), Error>> + Send {
        self.op(self.shared.delete_many(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate() {
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(millis(Duration::from_millis(5)), 5);
    }
}
