//! How to reach the database and manage the table: [`SqlConfig`], built in
//! code or read from a cache URL (`postgres://`, `sqlite://`) by
//! `SqlConfig::from_url`, the SQL part of `Cache::from_url`.

use std::fmt;
use std::time::Duration;

use super::connect::{POSTGRES_PARAMS, SQLITE_PARAMS};
use super::schema::DEFAULT_TABLE;
use super::Dialect;
use crate::clock::Clock;
use crate::params::{CacheUrl, Common};
use crate::secrets::redact;
use crate::Error;

/// The longest [`SqlConfig::max_ttl`]: ten years, far within what the
/// `BIGINT` millisecond columns hold once added to the clock.
pub const MAX_TTL_LIMIT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The bound on entries a SQL store keeps unless told otherwise
/// ([`SqlConfig::max_entries`]). Django's database cache culls at 300
/// entries, sized for a small site's table; a shared cache table holds far
/// more: 100,000 entries is 0.1 to 1 GB at typical page and query sizes,
/// small for any database, and the sweep's `COUNT(*)` over it takes
/// milliseconds once a minute. A bound by default keeps a busy site with
/// long TTLs (or many distinct keys) from growing the table, and its
/// backups, without limit.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// The largest [`SqlConfig::max_entries`]: the count is a signed 64-bit
/// integer in SQL.
const MAX_ENTRIES_LIMIT: u64 = i64::MAX as u64;

/// The shortest [`SqlConfig::sweep_interval`].
pub const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    pub(super) url: String,
    pub(super) table: String,
    pub(super) auto_create: bool,
    pub(super) max_entries: Option<u64>,
    pub(super) sweep_interval: Duration,
    pub(super) sweep_batch: u32,
    pub(super) max_connections: u32,
    pub(super) max_ttl: Duration,
    pub(super) ssl_mode: Option<String>,
    pub(super) ssl_root_cert: Option<String>,
    pub(super) ssl_client_cert: Option<(String, String)>,
    pub(super) database_clock: Option<Clock>,
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
    /// [`SqlBackend::new`](super::SqlBackend::new), naming the fix.
    pub fn new(url: impl Into<String>) -> Self {
        SqlConfig {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            auto_create: true,
            max_entries: Some(DEFAULT_MAX_ENTRIES),
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

    /// Keep at most about this many entries (default
    /// [`DEFAULT_MAX_ENTRIES`], 100,000; from 1 to `i64::MAX`, else
    /// [`SqlBackend::new`](super::SqlBackend::new) refuses it). Each sweep
    /// (every `sweep_interval`, and early after `max_entries / 10` writes,
    /// at least 100) removes expired rows, counts the table, and deletes
    /// the excess rows that expire soonest: those lose the least of their
    /// cached life, and the `expires_at` index finds them without a scan
    /// (oldest-written or least-recently-read would need a column written
    /// on every write or read). Only entries are culled, never invalidation
    /// records, epochs or locks, so a culled entry is a miss, never a stale
    /// value.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// No bound on the number of entries (`?max_entries=unbounded`): rows
    /// leave when they expire or are invalidated, nothing else. For a table
    /// whose size you watch yourself.
    pub fn unbounded(mut self) -> Self {
        self.max_entries = None;
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

    pub(super) fn dialect(&self) -> Result<Dialect, Error> {
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
    pub(super) fn check(&self) -> Result<(), Error> {
        if self.max_ttl.is_zero() || self.max_ttl > MAX_TTL_LIMIT {
            return Err(Error::Config(format!(
                "max_ttl {:?} is out of range: give the sql backend a max_ttl between 1 ms and \
                 {} days (entries and invalidation records live at most this long)",
                self.max_ttl,
                MAX_TTL_LIMIT.as_secs() / 86_400
            )));
        }
        match self.max_entries {
            Some(n) if n == 0 || n > MAX_ENTRIES_LIMIT => {
                return Err(Error::Config(format!(
                    "max_entries {n} is out of range: give the sql backend a bound between 1 and \
                     {MAX_ENTRIES_LIMIT} (default {DEFAULT_MAX_ENTRIES}), or no bound with \
                     `max_entries=unbounded` (`SqlConfig::unbounded`)"
                )))
            }
            _ => {}
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
        match url.take("max_entries").as_deref() {
            None => {}
            Some("unbounded") => config = config.unbounded(),
            Some(n) => match n.parse::<u64>() {
                Ok(n) => config = config.max_entries(n),
                Err(_) => {
                    return Err(url.error(format!(
                        "`max_entries` is not a count: give a bound from 1 to {MAX_ENTRIES_LIMIT} \
                         (default {DEFAULT_MAX_ENTRIES}) or `unbounded`"
                    )))
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

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
