//! SQL backend through sqlx: PostgreSQL (feature `postgres`) and SQLite
//! (feature `sqlite`).
//!
//! # The table manages itself
//! On first use the backend creates its tables if they are missing
//! (PostgreSQL: inside a transaction holding an advisory lock, since
//! concurrent `CREATE TABLE IF NOT EXISTS` can fail with a unique violation;
//! SQLite: its own write lock). It never touches `_sqlx_migrations` or any
//! other table. The DDL is exported ([`POSTGRES_DDL`], [`SQLITE_DDL`], and
//! the files `cacheruntime/sql/*.sql`) for teams whose migrations own the
//! schema; then switch creation off with [`SqlConfig::auto_create`].
//!
//! # Schema
//! `key` (bytewise collation, primary key), `value` bytes, `expires_at` (ms,
//! indexed) and `epoch`. Reads ignore expired rows; a write is one upsert.
//! A background task removes expired rows in bounded batches and, when
//! [`SqlConfig::max_entries`] is set, culls the rows that expire soonest;
//! it counts the table once per sweep, never per write.
//!
//! # Prefix invalidation and deletes
//! One transaction: bump the invalidation epoch, record `prefix -> epoch`,
//! and delete the prefix's rows as a primary-key range (`key >= 'p:' AND key
//! < 'p;'`; never `LIKE`, so `%` and `_` in keys are plain characters). A
//! delete records its exact key the same way (as the key followed by
//! `\u{1}`, which no prefix ends with). Every entry carries the epoch its read
//! saw (the [`Ticket`]); a write is refused, and a read ignores an entry,
//! when an invalidation of one of its prefixes or a delete of its key is
//! newer, so a value computed before either never shows after it.
//!
//! Records are swept after `max_ttl`, when every entry they could hide has
//! expired. A computation still running may hold an older ticket: the sweep
//! first raises a floor (row 2 of the epoch table) to the newest record it
//! removes, and writes under (or entries with) an older epoch are refused
//! (or ignored). So no sweep, by any process, whatever its `max_ttl`, lets a
//! value computed before an invalidation be served.
//!
//! # Connections
//! Pools are created on first use (no I/O, no runtime needed to build the
//! backend), so the application starts while the database is down; every
//! call is bounded by the cache's op timeout and circuit breaker like any
//! other store. Opening a connection (TCP, TLS, SCRAM) can take longer than
//! the op timeout, which would cancel every attempt and never connect; so
//! connections are opened by a background task that no caller's timeout
//! cancels, started when the pool is made and after any failure.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Row};

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::clock::Clock;
use crate::url::{redact, Secrets};
use crate::Error;

/// The PostgreSQL DDL for the default table name, `cache_entries`.
pub const POSTGRES_DDL: &str = include_str!("../../sql/postgres.sql");
/// The SQLite DDL for the default table name, `cache_entries`.
pub const SQLITE_DDL: &str = include_str!("../../sql/sqlite.sql");

const DEFAULT_TABLE: &str = "cache_entries";

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
             `schema.table`), not starting with a digit, at most 48 characters"
        )))
    }
}

/// The DDL for `table` in the given dialect.
pub fn ddl(dialect: Dialect, table: &str) -> Result<String, Error> {
    validate_table_name(table)?;
    let base = match dialect {
        Dialect::Postgres => POSTGRES_DDL,
        Dialect::Sqlite => SQLITE_DDL,
    };
    // Index names cannot be schema-qualified in CREATE INDEX.
    let unqualified = table.rsplit('.').next().unwrap_or(table);
    Ok(base
        .replace(
            "cache_entries_expires_at",
            &format!("{unqualified}_expires_at"),
        )
        .replace(DEFAULT_TABLE, table))
}

/// Which SQL database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// How to reach the database and manage the table.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::backends::sql::SqlConfig;
///
/// let config = SqlConfig::new("postgres://app:secret@db.internal/app?sslmode=verify-full")
///     .table("web_cache")
///     .max_entries(500_000)
///     .sweep_interval(Duration::from_secs(30));
/// # let _ = config;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct SqlConfig {
    url: String,
    table: String,
    auto_create: bool,
    max_entries: Option<u64>,
    sweep_interval: Duration,
    sweep_batch: u32,
    max_connections: u32,
    max_ttl: Duration,
    ssl_mode: Option<String>,
    ssl_root_cert: Option<String>,
    ssl_client_cert: Option<(String, String)>,
    clock: Clock,
}

impl fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlConfig")
            .field("url", &redact(&self.url))
            .field("table", &self.table)
            .field("auto_create", &self.auto_create)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl SqlConfig {
    /// `postgres://user:pass@host/db` or `sqlite://path/to/cache.db`.
    pub fn new(url: impl Into<String>) -> Self {
        SqlConfig {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            auto_create: true,
            max_entries: None,
            sweep_interval: Duration::from_secs(60),
            sweep_batch: 1000,
            max_connections: 10,
            max_ttl: Duration::from_secs(30 * 86_400),
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_client_cert: None,
            clock: Clock::system(),
        }
    }

    /// The clock for expiry times (tests use [`Clock::manual`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The table's name (default `cache_entries`); validated, never
    /// interpolated unchecked.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Create the tables on first use (default true).
    pub fn auto_create(mut self, yes: bool) -> Self {
        self.auto_create = yes;
        self
    }

    /// Keep at most about this many entries: each sweep culls the rows that
    /// expire soonest beyond it.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// How often expired rows are swept (default 60 s).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Pool size (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Longest life of an entry (default 30 days); longer TTLs are capped.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// PostgreSQL `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`).
    pub fn ssl_mode(mut self, mode: impl Into<String>) -> Self {
        self.ssl_mode = Some(mode.into());
        self
    }

    /// PostgreSQL CA certificate file to verify the server with.
    pub fn ssl_root_cert(mut self, path: impl Into<String>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// PostgreSQL client certificate and key files.
    pub fn ssl_client_cert(mut self, cert: impl Into<String>, key: impl Into<String>) -> Self {
        self.ssl_client_cert = Some((cert.into(), key.into()));
        self
    }

    fn dialect(&self) -> Result<Dialect, Error> {
        let scheme = self.url.split("://").next().unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "sqlite" => Ok(Dialect::Sqlite),
            _ => Err(Error::InvalidUrl {
                url: redact(&self.url),
                message: "expected `postgres://...` or `sqlite://...`".into(),
            }),
        }
    }
}

/// The statements, with the validated table name in place.
struct Statements {
    get: String,
    raise_floor: String,
    ensure_floor: String,
    put_ticketed: String,
    put_current: String,
    delete: String,
    bump: String,
    record: String,
    range_delete: String,
    delete_all: String,
    lock_take: String,
    lock_release: String,
    sweep: String,
    sweep_locks: String,
    sweep_invalidations: String,
    count: String,
    cull: String,
}

impl Statements {
    fn new(dialect: Dialect, t: &str) -> Statements {
        let pg = dialect == Dialect::Postgres;
        // Placeholders: $n on PostgreSQL, ?n on SQLite (same numbering).
        let p = |n: u32| if pg { format!("${n}") } else { format!("?{n}") };
        // Invalidation records naming the key, its prefixes or its delete,
        // bound as one array parameter.
        let records_of = |n: u32| {
            if pg {
                format!("i.prefix = ANY({}::text[])", p(n))
            } else {
                format!("i.prefix IN (SELECT value FROM json_each({}))", p(n))
            }
        };
        let floor = format!("COALESCE((SELECT epoch FROM {t}_epoch WHERE id = 2), 0)");
        Statements {
            // One round trip: the current epoch (the ticket), the newest
            // record naming the key and the floor (the newer is its scope:
            // a swept record leaves the floor at least as high), and the
            // entry, unless expired, under the floor, or older than a record
            // naming it.
            get: format!(
                "SELECT (SELECT epoch FROM {t}_epoch WHERE id = 1) AS now_epoch, \
                 (SELECT COALESCE(MAX(i.epoch), 0) FROM {t}_invalidations i WHERE {records}) \
                 AS scope, {floor} AS floor, \
                 (SELECT c.value FROM {t} c WHERE c.key = {k} AND c.expires_at > {now} \
                 AND c.epoch >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > c.epoch)) AS value",
                k = p(1),
                now = p(2),
                records = records_of(3),
            ),
            // Refused when the ticket is under the floor or a record naming
            // the key is newer than it.
            put_ticketed: format!(
                "INSERT INTO {t} (key, value, expires_at, epoch) \
                 SELECT {k}, {v}, {exp}, {e} WHERE {e} >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > {e}) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at, epoch = excluded.epoch",
                k = p(1),
                v = p(2),
                exp = p(3),
                e = p(4),
                records = records_of(5),
            ),
            put_current: format!(
                "INSERT INTO {t} (key, value, expires_at, epoch) \
                 SELECT {}, {}, {}, epoch FROM {t}_epoch WHERE id = 1 \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at, epoch = excluded.epoch",
                p(1),
                p(2),
                p(3)
            ),
            delete: format!("DELETE FROM {t} WHERE key = {}", p(1)),
            ensure_floor: format!(
                "INSERT INTO {t}_epoch (id, epoch) VALUES (2, 0) ON CONFLICT (id) DO NOTHING"
            ),
            raise_floor: format!(
                "UPDATE {t}_epoch SET epoch = \
                 (SELECT MAX(epoch) FROM {t}_invalidations WHERE at <= {h}) \
                 WHERE id = 2 AND epoch < \
                 (SELECT COALESCE(MAX(epoch), 0) FROM {t}_invalidations WHERE at <= {h})",
                h = p(1)
            ),
            bump: format!("UPDATE {t}_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch"),
            record: format!(
                "INSERT INTO {t}_invalidations (prefix, epoch, at) VALUES ({}, {}, {}) \
                 ON CONFLICT (prefix) DO UPDATE SET epoch = excluded.epoch, at = excluded.at",
                p(1),
                p(2),
                p(3)
            ),
            range_delete: format!("DELETE FROM {t} WHERE key >= {} AND key < {}", p(1), p(2)),
            delete_all: format!("DELETE FROM {t}"),
            lock_take: format!(
                "INSERT INTO {t}_locks (key, token, expires_at) VALUES ({}, {}, {}) \
                 ON CONFLICT (key) DO UPDATE SET token = excluded.token, \
                 expires_at = excluded.expires_at WHERE {t}_locks.expires_at <= {}",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            lock_release: format!(
                "DELETE FROM {t}_locks WHERE key = {} AND token = {}",
                p(1),
                p(2)
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} WHERE expires_at <= {} LIMIT {})",
                p(1),
                p(2)
            ),
            sweep_locks: format!("DELETE FROM {t}_locks WHERE expires_at <= {}", p(1)),
            sweep_invalidations: format!("DELETE FROM {t}_invalidations WHERE at <= {}", p(1)),
            count: format!("SELECT COUNT(*) AS n FROM {t}"),
            cull: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} ORDER BY expires_at LIMIT {})",
                p(1)
            ),
        }
    }
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

struct Shared {
    config: SqlConfig,
    dialect: Dialect,
    sql: Statements,
    pool: OnceLock<Pool>,
    /// Whether the tables are known to exist; cleared when a statement
    /// finds one missing (a restored or recreated database), so the next
    /// call creates them again.
    schema_ready: std::sync::atomic::AtomicBool,
    schema_lock: tokio::sync::Mutex<()>,
    clock: Clock,
    writes_since_sweep: AtomicU64,
    sweeper: OnceLock<()>,
    warming: std::sync::atomic::AtomicBool,
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
    /// Prepares the backend without connecting.
    pub fn new(config: SqlConfig) -> Result<Self, Error> {
        validate_table_name(&config.table)?;
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
        let sql = Statements::new(dialect, &config.table);
        let label = redact(&config.url);
        let secrets = Secrets::of([&config.url]);
        let clock = config.clock.clone();
        Ok(SqlBackend {
            shared: Arc::new(Shared {
                config,
                dialect,
                sql,
                pool: OnceLock::new(),
                schema_ready: std::sync::atomic::AtomicBool::new(false),
                schema_lock: tokio::sync::Mutex::new(()),
                clock,
                writes_since_sweep: AtomicU64::new(0),
                sweeper: OnceLock::new(),
                warming: std::sync::atomic::AtomicBool::new(false),
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

    fn pool(&self) -> Result<&Pool, Error> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let made = self.make_pool()?;
        Ok(self.pool.get_or_init(|| made))
    }

    fn make_pool(&self) -> Result<Pool, Error> {
        let c = &self.config;
        let bad = |e: sqlx::Error| Error::InvalidUrl {
            url: self.label.clone(),
            message: self.secrets.scrub(&e.to_string()),
        };
        match self.dialect {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => {
                use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
                let base = c.url.split('?').next().unwrap_or(&c.url);
                let mut options = PgConnectOptions::from_str(base).map_err(bad)?;
                if let Some(mode) = &c.ssl_mode {
                    options = options.ssl_mode(PgSslMode::from_str(mode).map_err(bad)?);
                }
                if let Some(ca) = &c.ssl_root_cert {
                    options = options.ssl_root_cert(ca);
                }
                if let Some((cert, key)) = &c.ssl_client_cert {
                    options = options.ssl_client_cert(cert).ssl_client_key(key);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(c.max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(options);
                Ok(Pool::Postgres(pool))
            }
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => {
                use sqlx::sqlite::{
                    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
                };
                let options = SqliteConnectOptions::from_str(&c.url)
                    .map_err(bad)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(c.max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy_with(options);
                Ok(Pool::Sqlite(pool))
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::Config("this SQL dialect is not compiled in".into())),
        }
    }

    /// Creates the tables once per process (and starts the sweeper).
    async fn ready(self: &Arc<Self>) -> Result<&Pool, Error> {
        let fresh = self.pool.get().is_none();
        let pool = self.pool()?;
        if fresh {
            self.warm_up();
        }
        if self.config.auto_create && !self.schema_ready.load(Ordering::Acquire) {
            let _creating = self.schema_lock.lock().await;
            if !self.schema_ready.load(Ordering::Acquire) {
                let created = self.create_schema(pool).await;
                if created.is_err() {
                    self.warm_up();
                }
                created?;
                self.schema_ready.store(true, Ordering::Release);
            }
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

    async fn create_schema(&self, pool: &Pool) -> Result<(), Error> {
        let ddl = ddl(self.dialect, &self.config.table)?;
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => {
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
                    .map_err(|e| self.error(e))?;
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
                    match sqlx::raw_sql(AssertSqlSafe(script.as_str()))
                        .execute(pool)
                        .await
                    {
                        Ok(_) => break,
                        Err(sqlx::Error::Database(db))
                            if attempt < 100
                                && (db.message().contains("locked")
                                    || db.message().contains("busy")) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => return Err(self.error(e)),
                    }
                }
            }
        }
        Ok(())
    }

    fn start_sweeper(self: &Arc<Self>) {
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

    async fn sweep(&self) -> Result<u64, Error> {
        let pool = self.pool()?;
        let now = self.clock.now_ms() as i64;
        let batch = i64::from(self.config.sweep_batch);
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
            if (n as i64) < batch {
                break;
            }
        }
        let horizon = now.saturating_sub(millis(self.config.max_ttl));
        on_pool!(pool, |p| {
            sqlx::query(AssertSqlSafe(self.sql.sweep_locks.as_str()))
                .bind(now)
                .execute(p)
                .await
                .map_err(|e| self.error(e))?;
            // The floor rises with the records it replaces, in one
            // transaction: no reader or writer sees the records gone and
            // the floor not yet raised.
            let mut tx = p.begin().await.map_err(|e| self.error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.ensure_floor.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.raise_floor.as_str()))
                .bind(horizon)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
            sqlx::query(AssertSqlSafe(self.sql.sweep_invalidations.as_str()))
                .bind(horizon)
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
            let excess = count - max as i64;
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

    /// The records that can name `key`: `""`, each prefix ending with `:`,
    /// and the key's delete record ([`deleted`]).
    fn records(key: &str) -> Vec<String> {
        std::iter::once(String::new())
            .chain(key.match_indices(':').map(|(i, _)| key[..=i].to_owned()))
            .chain(std::iter::once(deleted(key)))
            .collect()
    }

    /// A TTL in ms, capped at `max_ttl`, at least 1.
    fn ttl_ms(&self, ttl: Duration) -> i64 {
        millis(ttl.min(self.config.max_ttl)).max(1)
    }

    async fn get(self: &Arc<Self>, key: &str) -> Result<Lookup, Error> {
        let pool = self.ready().await?;
        let now = self.clock.now_ms() as i64;
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
        let missing = || {
            Error::backend(
                self.backend_name(),
                "the epoch row is missing: the cache tables were not created \
                 (run the DDL or enable auto_create)",
            )
        };
        let (epoch, scope, floor, value) = row.ok_or_else(missing)?;
        let epoch = epoch.map_err(|e| self.error(e))?.ok_or_else(missing)?;
        let scope = scope.map_err(|e| self.error(e))?.unwrap_or(0);
        let floor = floor.map_err(|e| self.error(e))?.unwrap_or(0);
        let scope = scope.max(floor);
        let value = value.map_err(|e| self.error(e))?;
        Ok(Lookup::new(value.map(Bytes::from))
            .with_ticket(Ticket::scoped(epoch as u64, scope as u64)))
    }

    async fn set(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
    ) -> Result<(), Error> {
        let pool = self.ready().await?;
        let expires = (self.clock.now_ms() as i64).saturating_add(self.ttl_ms(ttl));
        let result = match (ticket.and_then(Ticket::as_seq), pool) {
            #[cfg(feature = "postgres")]
            (Some(epoch), Pool::Postgres(p)) => {
                sqlx::query(AssertSqlSafe(self.sql.put_ticketed.as_str()))
                    .bind(key)
                    .bind(&value[..])
                    .bind(expires)
                    .bind(epoch as i64)
                    .bind(Self::records(key))
                    .execute(p)
                    .await
                    .map(|_| ())
            }
            #[cfg(feature = "sqlite")]
            (Some(epoch), Pool::Sqlite(p)) => {
                sqlx::query(AssertSqlSafe(self.sql.put_ticketed.as_str()))
                    .bind(key)
                    .bind(&value[..])
                    .bind(expires)
                    .bind(epoch as i64)
                    .bind(json_array(&Self::records(key)))
                    .execute(p)
                    .await
                    .map(|_| ())
            }
            (None, pool) => on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
                self.sql.put_current.as_str()
            ))
            .bind(key)
            .bind(&value[..])
            .bind(expires)
            .execute(p)
            .await
            .map(|_| ())),
        };
        result.map_err(|e| self.error(e))?;
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

    async fn delete(self: &Arc<Self>, key: &str) -> Result<(), Error> {
        self.invalidate_rows(&deleted(key), Rows::Key(key)).await
    }

    async fn invalidate(self: &Arc<Self>, prefix: &str) -> Result<(), Error> {
        // `p:` .. `p;`: the keys starting with `p:` in bytewise order.
        let rows = match prefix.strip_suffix(':') {
            Some(head) => Rows::Range(prefix, format!("{head};")),
            None => Rows::All,
        };
        self.invalidate_rows(prefix, rows).await
    }

    /// One transaction: bump the epoch, record `name` under it, delete
    /// `rows`.
    async fn invalidate_rows(self: &Arc<Self>, name: &str, rows: Rows<'_>) -> Result<(), Error> {
        let pool = self.ready().await?;
        let now = self.clock.now_ms() as i64;
        macro_rules! run {
            ($p:expr) => {{
                let mut tx = $p.begin().await.map_err(|e| self.error(e))?;
                let epoch: i64 = sqlx::query(AssertSqlSafe(self.sql.bump.as_str()))
                    .fetch_one(&mut *tx)
                    .await
                    .and_then(|row| row.try_get::<i64, _>(0))
                    .map_err(|e| self.error(e))?;
                sqlx::query(AssertSqlSafe(self.sql.record.as_str()))
                    .bind(name)
                    .bind(epoch)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.error(e))?;
                match &rows {
                    Rows::Key(key) => {
                        sqlx::query(AssertSqlSafe(self.sql.delete.as_str()))
                            .bind(*key)
                            .execute(&mut *tx)
                            .await
                    }
                    Rows::Range(from, to) => {
                        sqlx::query(AssertSqlSafe(self.sql.range_delete.as_str()))
                            .bind(*from)
                            .bind(to.as_str())
                            .execute(&mut *tx)
                            .await
                    }
                    Rows::All => {
                        sqlx::query(AssertSqlSafe(self.sql.delete_all.as_str()))
                            .execute(&mut *tx)
                            .await
                    }
                }
                .map_err(|e| self.error(e))?;
                tx.commit().await.map_err(|e| self.error(e))
            }};
        }
        match pool {
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => run!(p),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => run!(p),
        }
    }

    async fn lock(self: &Arc<Self>, key: &str, token: Bytes, ttl: Duration) -> Result<bool, Error> {
        let pool = self.ready().await?;
        let now = self.clock.now_ms() as i64;
        let expires = now.saturating_add(self.ttl_ms(ttl));
        let n = on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
            self.sql.lock_take.as_str()
        ))
        .bind(key)
        .bind(&token[..])
        .bind(expires)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    async fn unlock(self: &Arc<Self>, key: &str, token: &[u8]) -> Result<bool, Error> {
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

/// The record of a delete of `key`: the key and `\u{1}`, which no prefix
/// ends with (prefixes are empty or end with `:`), so it names that key
/// only.
fn deleted(key: &str) -> String {
    format!("{key}\u{1}")
}

/// A duration in ms as SQL stores it, saturating.
fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The rows an invalidation deletes.
enum Rows<'a> {
    Key(&'a str),
    /// `key >= from AND key < to`.
    Range(&'a str, String),
    All,
}

#[cfg(feature = "sqlite")]
fn json_array<S: AsRef<str>>(items: &[S]) -> String {
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

impl SqlBackend {
    /// Runs one operation; a failure (or a cancellation by the op timeout,
    /// noticed on the next call) starts a background reconnect.
    fn op<'a, T: Send + 'a>(
        &'a self,
        fut: impl std::future::Future<Output = Result<T, Error>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, Error>> {
        Box::pin(async move {
            let guard = WarmOnDrop(&self.shared, true);
            let result = fut.await;
            std::mem::forget(guard);
            if result.is_err() {
                self.shared.warm_up();
            }
            result
        })
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

impl Backend for SqlBackend {
    fn name(&self) -> &'static str {
        self.shared.backend_name()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        self.op(self.shared.get(key))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.op(self.shared.set(key, value, ttl, ticket))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.op(self.shared.delete(key))
    }

    fn invalidate_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        self.op(self.shared.invalidate(prefix))
    }

    fn set_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.op(self.shared.lock(key, value, ttl))
    }

    fn delete_if_equals<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.op(self.shared.unlock(key, value))
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
    }

    #[test]
    fn ddl_renames_every_table_and_index() {
        let d = ddl(Dialect::Postgres, "app.web_cache").unwrap();
        assert!(!d.contains("cache_entries"), "{d}");
        assert!(d.contains("CREATE TABLE IF NOT EXISTS app.web_cache_invalidations"));
        assert!(d.contains("CREATE INDEX IF NOT EXISTS web_cache_expires_at ON app.web_cache"));
        assert!(ddl(Dialect::Sqlite, "x;y").is_err());
    }

    #[test]
    fn records_are_whole_segments_and_the_key_itself() {
        assert_eq!(Shared::records("a:b:c"), ["", "a:", "a:b:", "a:b:c\u{1}"]);
        assert_eq!(Shared::records("k"), ["", "k\u{1}"]);
        // A key ending with `:` has a delete record of its own, not its
        // prefix's.
        assert_ne!(deleted("a:"), "a:");
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn json_arrays_escape_quotes_and_controls() {
        assert_eq!(json_array(&["", "a\"b:", "c\\:"]), r#"["","a\"b:","c\\:"]"#);
        assert_eq!(json_array(&["k\u{1}"]), r#"["k\u0001"]"#);
        assert_eq!(json_array(&["\n"]), r#"["\u000a"]"#);
    }
}
