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
//! A background task removes expired rows in bounded batches and, when
//! [`SqlConfig::max_entries`] is set, culls the rows that expire soonest;
//! it counts the table once per sweep, never per write.
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

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Row};

use crate::backend::{Backend, BoxFuture, Lookup, Ticket};
use crate::clock::Clock;
use crate::params::{CacheUrl, Common};
use crate::secrets::{redact, Secrets};
use crate::Error;

use self::connect::{connect_options, Connect};
pub(crate) use self::connect::{POSTGRES_PARAMS, SQLITE_PARAMS};
pub use self::schema::{ddl, validate_table_name, POSTGRES_DDL, SQLITE_DDL};
use self::schema::{validate_table_for, DEFAULT_TABLE};
use self::statements::Statements;

/// The longest [`SqlConfig::max_ttl`]: ten years, far within what the
/// `BIGINT` millisecond columns hold once added to the clock.
pub const MAX_TTL_LIMIT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The shortest [`SqlConfig::sweep_interval`].
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    database_clock: Option<Clock>,
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
    ///
    /// The URL's connection parameters are honoured: for PostgreSQL
    /// `sslmode` (use `verify-full` with `sslrootcert` in production),
    /// `sslrootcert`, `sslcert` with `sslkey`, and `application_name`; for
    /// SQLite `mode` (`rw` or `rwc`), `cache=private` and `vfs`. Any other
    /// parameter, a cache setting (`table`, `max_ttl`, ...: use the methods,
    /// or `Cache::from_url`), an in-memory SQLite database, or a value given
    /// both here and by a method with another value is refused by
    /// [`SqlBackend::new`], naming the fix.
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
            database_clock: None,
        }
    }

    /// Once the clock for expiry times. Rows' times now come from the
    /// database's clock (see the module docs), so an application clock
    /// never decides them: this setting does nothing. Tests that moved a
    /// manual clock to expire rows use [`database_clock`](Self::database_clock).
    #[deprecated(
        since = "0.1.0",
        note = "rows' times come from the database's clock; tests: use `database_clock`"
    )]
    pub fn clock(self, clock: Clock) -> Self {
        let _ = clock;
        self
    }

    /// For tests: a clock that stands in for the database's, so a
    /// [`Clock::manual`] expires rows, locks and invalidation records
    /// without sleeping. Give every handle on the same tables the same
    /// clock (and the cache's builder too, for entries' own deadlines).
    pub fn database_clock(mut self, clock: Clock) -> Self {
        self.database_clock = Some(clock);
        self
    }

    /// The table's name (default `cache_entries`; on PostgreSQL
    /// `schema.table` too); validated, never interpolated unchecked.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Create the tables on first use when they are missing (default true).
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

    /// How often expired rows are swept (default 60 s; at least
    /// [`MIN_SWEEP_INTERVAL`]).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Pool size (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Longest life of an entry (default 30 days, at most
    /// [`MAX_TTL_LIMIT`]); longer TTLs are capped. Invalidation records
    /// are kept this long.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// PostgreSQL `sslmode` (`disable`, `allow`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`). In production use `verify-full` with
    /// [`ssl_root_cert`](Self::ssl_root_cert): the others either send in
    /// plaintext or accept any certificate.
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
        let scheme = self.url.split(':').next().unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "sqlite" => Ok(Dialect::Sqlite),
            _ => Err(Error::InvalidUrl {
                url: redact(&self.url),
                message: "expected `postgres://...` or `sqlite://...`".into(),
            }),
        }
    }

    /// The settings that no database can work with, refused at build.
    fn check(&self) -> Result<(), Error> {
        if self.max_ttl.is_zero() || self.max_ttl > MAX_TTL_LIMIT {
            return Err(Error::Config(format!(
                "max_ttl {:?} is out of range: give the sql backend a max_ttl between 1 ms and \
                 {} days (entries and invalidation records live at most this long)",
                self.max_ttl,
                MAX_TTL_LIMIT.as_secs() / 86_400
            )));
        }
        if self.sweep_interval < MIN_SWEEP_INTERVAL {
            return Err(Error::Config(format!(
                "sweep_interval {:?} would sweep continuously (each sweep is a few \
                 transactions): set it to at least 1s; 30s to 60s suits most caches",
                self.sweep_interval
            )));
        }
        Ok(())
    }

    /// Reads a cache URL (`Cache::from_url`) for this store; returns the
    /// parameters every scheme shares for the cache. Forms:
    /// `postgres://user:pass@host/db?sslmode=verify-full&sslrootcert=ca.pem` and
    /// `sqlite://path/to/cache.db`, with `table`, `auto_create`, `max_entries`,
    /// `sweep_interval`, `max_connections`, `max_ttl` beside the common ones,
    /// and the connection parameters (PostgreSQL `sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`, `application_name`; SQLite `mode`, `cache`, `vfs`),
    /// which go to the backend's URL and are checked there, as for
    /// `SqlConfig::new`.
    pub(crate) fn from_url(url: &mut CacheUrl<'_>) -> Result<(SqlConfig, Common), Error> {
        let postgres = url.scheme.starts_with("postgres");
        if postgres && url.hosts.contains(',') {
            return Err(url.error("name one PostgreSQL server: `postgres://user:pass@host/db`"));
        }
        let connection: &[&str] = if postgres {
            &POSTGRES_PARAMS
        } else {
            &SQLITE_PARAMS
        };
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for name in connection {
            if let Some(value) = url.take(name) {
                query.append_pair(name, &value);
            }
        }
        let query = query.finish();
        let base = format!("{}://{}", url.scheme, url.rest);
        let mut config = Self::new(if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        });
        if let Some(table) = url.take("table") {
            config = config.table(table);
        }
        if let Some(v) = url.take_parsed::<bool>("auto_create", "`true` or `false`")? {
            config = config.auto_create(v);
        }
        if let Some(n) = url.take_parsed::<u64>("max_entries", "a count")? {
            config = config.max_entries(n);
        }
        if let Some(d) = url.take_duration("sweep_interval")? {
            config = config.sweep_interval(d);
        }
        if let Some(n) = url.take_parsed::<u32>("max_connections", "a count")? {
            config = config.max_connections(n);
        }
        if let Some(d) = url.take_duration("max_ttl")? {
            config = config.max_ttl(d);
        }
        let common = url.finish(&format!(
            "table, auto_create, max_entries, sweep_interval, max_connections, max_ttl, {}",
            connection.join(", ")
        ))?;
        Ok((config, common))
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

// After `on_pool!`, which they use.
mod connect;
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

    /// Creates the tables in a background task (one at a time) and waits
    /// for it. The creation (an advisory lock, DDL, seeding the epochs) can
    /// take longer than an op timeout on a cold or loaded database; a
    /// caller's timeout then ends the wait, never the creation, so the
    /// next call finds the tables made instead of starting over.
    async fn schema(self: &Arc<Self>) -> Result<(), Error> {
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

    async fn set(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
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
                let result = match pool {
                    #[cfg(feature = "postgres")]
                    Pool::Postgres(p) => sqlx::query(AssertSqlSafe(self.sql.put_ticketed.as_str()))
                        .bind(key)
                        .bind(&value[..])
                        .bind(ttl)
                        .bind(epoch)
                        .bind(Self::records(key))
                        .bind(now)
                        .execute(p)
                        .await
                        .map(|_| ()),
                    #[cfg(feature = "sqlite")]
                    Pool::Sqlite(p) => sqlx::query(AssertSqlSafe(self.sql.put_ticketed.as_str()))
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
                let put = || async {
                    on_pool!(pool, |p| sqlx::query(AssertSqlSafe(
                        self.sql.put_current.as_str()
                    ))
                    .bind(key)
                    .bind(&value[..])
                    .bind(ttl)
                    .bind(now)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()))
                    .map_err(|e| self.error(e))
                };
                if put().await? == 0 {
                    // No epoch row to write under: created again, then
                    // written, within this call.
                    self.seed(pool).await?;
                    put().await?;
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

    async fn delete(self: &Arc<Self>, key: &str) -> Result<(), Error> {
        check_key(key)?;
        self.invalidate_rows(&deleted(key), Rows::Key(key)).await
    }

    async fn invalidate(self: &Arc<Self>, prefix: &str) -> Result<(), Error> {
        // Whole segments only, as the cache checks: a store used directly
        // must not read `abc` as everything.
        crate::key::check_prefix(prefix)?;
        // `p:` .. `p;`: the keys starting with `p:` in bytewise order.
        let rows = match prefix.strip_suffix(':') {
            Some(head) => Rows::Range(prefix.to_owned(), format!("{head};")),
            None => Rows::All,
        };
        self.invalidate_rows(prefix, rows).await
    }

    /// One short transaction: bump the epoch, record `name` under it, and
    /// for a delete remove its row. A prefix's rows, already hidden by the
    /// record, are deleted afterwards in batches ([`Shared::purge`]), so
    /// the call takes the same time whatever the prefix holds.
    async fn invalidate_rows(self: &Arc<Self>, name: &str, rows: Rows<'_>) -> Result<(), Error> {
        let pool = self.ready().await?;
        let epoch = match self.bump_and_record(pool, name, &rows).await? {
            Some(epoch) => epoch,
            None => {
                self.seed(pool).await?;
                self.bump_and_record(pool, name, &rows)
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

    /// The invalidation's transaction; `None` (nothing done) when the
    /// epoch row is missing.
    async fn bump_and_record(
        &self,
        pool: &Pool,
        name: &str,
        rows: &Rows<'_>,
    ) -> Result<Option<i64>, Error> {
        let now = self.now();
        macro_rules! run {
            ($p:expr) => {{
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
                tx.commit().await.map_err(|e| self.error(e))?;
                Ok(Some(epoch))
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

    async fn unlock(self: &Arc<Self>, key: &str, token: &[u8]) -> Result<bool, Error> {
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
fn check_key(key: &str) -> Result<(), Error> {
    if key.contains('\0') {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: crate::key::NUL_REASON,
        });
    }
    Ok(())
}

/// The record of a delete of `key`: the key and `\u{1}`, which no prefix
/// ends with (prefixes are empty or end with `:`), so it names that key
/// only.
fn deleted(key: &str) -> String {
    format!("{key}\u{1}")
}

/// A duration in ms as SQL stores it, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The rows an invalidation removes.
enum Rows<'a> {
    Key(&'a str),
    /// `key >= from AND key < to`.
    Range(String, String),
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
            if matches!(&result, Err(e) if e.is_store_failure()) {
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

    #[test]
    fn conversions_saturate() {
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(millis(Duration::from_millis(5)), 5);
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        for config in [
            SqlConfig::new("sqlite:///tmp/x.db").max_ttl(Duration::MAX),
            SqlConfig::new("sqlite:///tmp/x.db").max_ttl(Duration::ZERO),
            SqlConfig::new("sqlite:///tmp/x.db").sweep_interval(Duration::ZERO),
        ] {
            let err = config.check().unwrap_err().to_string();
            assert!(
                err.contains("max_ttl") || err.contains("sweep_interval"),
                "{err}"
            );
        }
        assert!(SqlConfig::new("sqlite:///tmp/x.db")
            .max_ttl(MAX_TTL_LIMIT)
            .check()
            .is_ok());
    }
}
