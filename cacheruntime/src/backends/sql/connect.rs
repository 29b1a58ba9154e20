//! From a `SqlConfig` to sqlx's connect options, at build: every parameter
//! in the URL is honoured or refused with an error naming the fix (sqlx's
//! own URL parsing drops what it does not know with a log line that shows
//! the value, and `SqlConfig::new` once dropped the whole query,
//! `sslmode` included).

use std::str::FromStr;
#[cfg(feature = "sqlite")]
use std::time::Duration;

use super::{Dialect, SqlConfig};
use crate::params::shown_name;
use crate::Error;

/// Connection parameters a PostgreSQL URL may carry (libpq's names).
pub(super) const POSTGRES_PARAMS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
];

/// Connection parameters a SQLite URL may carry (SQLite's URI names;
/// values that cannot hold a shared cache are refused).
pub(super) const SQLITE_PARAMS: [&str; 3] = ["mode", "cache", "vfs"];

#[cfg(feature = "postgres")]
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Settings of the cache rather than of the connection: where each goes.
fn setting_home(name: &str) -> Option<&'static str> {
    Some(match name {
        "table" => "SqlConfig::table",
        "auto_create" => "SqlConfig::auto_create",
        "max_entries" => "SqlConfig::max_entries",
        "sweep_interval" => "SqlConfig::sweep_interval",
        "max_connections" => "SqlConfig::max_connections",
        "max_ttl" => "SqlConfig::max_ttl",
        "namespace" => "CacheBuilder::namespace",
        "default_ttl" => "CacheBuilder::default_ttl",
        "op_timeout" => "CacheBuilder::op_timeout",
        "max_entry_bytes" => "CacheBuilder::max_entry_bytes",
        _ => return None,
    })
}

/// Removes parameter `name` from `pairs`, giving its value.
#[cfg(feature = "postgres")]
fn take(pairs: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let i = pairs.iter().position(|(k, _)| k == name)?;
    Some(pairs.remove(i).1)
}

/// What the pool connects with.
pub(super) enum Connect {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::postgres::PgConnectOptions),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
}

/// A URL's query, decoded, each name at most once.
fn query_pairs(
    query: &str,
    invalid: &dyn Fn(String) -> Error,
) -> Result<Vec<(String, String)>, Error> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let name = shown_name(&k);
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(invalid(format!("parameter {name} is given twice")));
        }
        if let Some(home) = setting_home(&k) {
            return Err(invalid(format!(
                "{name} is a cache setting, not a connection parameter: set it with `{home}`, \
                 or give the whole URL to `Cache::from_url`"
            )));
        }
        pairs.push((k.into_owned(), v.into_owned()));
    }
    Ok(pairs)
}

/// Takes a setting given both in the URL and by a `SqlConfig` method:
/// equal, or refused (a URL saying `verify-full` never loses to code
/// saying otherwise, nor the other way round, silently).
#[cfg(feature = "postgres")]
fn one_of(
    name: &str,
    from_url: Option<String>,
    from_method: Option<&String>,
    invalid: &dyn Fn(String) -> Error,
) -> Result<Option<String>, Error> {
    match (from_url, from_method) {
        (Some(a), Some(b)) if a != *b => Err(invalid(format!(
            "`{name}` is given in the URL and by a `SqlConfig` method with different values: \
             give it once"
        ))),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b.cloned()),
    }
}

pub(super) fn connect_options(
    config: &SqlConfig,
    dialect: Dialect,
    label: &str,
) -> Result<Connect, Error> {
    let invalid = |message: String| Error::InvalidUrl {
        url: label.to_owned(),
        message,
    };
    let (base, query) = config
        .url
        .split_once('?')
        .unwrap_or((config.url.as_str(), ""));
    #[allow(unused_mut)]
    let mut pairs = query_pairs(query, &invalid)?;
    match dialect {
        #[cfg(feature = "postgres")]
        Dialect::Postgres => {
            use sqlx::postgres::{PgConnectOptions, PgSslMode};
            let mode = one_of(
                "sslmode",
                take(&mut pairs, "sslmode"),
                config.ssl_mode.as_ref(),
                &invalid,
            )?;
            let ca = one_of(
                "sslrootcert",
                take(&mut pairs, "sslrootcert"),
                config.ssl_root_cert.as_ref(),
                &invalid,
            )?;
            let (method_cert, method_key) = match &config.ssl_client_cert {
                Some((c, k)) => (Some(c), Some(k)),
                None => (None, None),
            };
            let cert = one_of(
                "sslcert",
                take(&mut pairs, "sslcert"),
                method_cert,
                &invalid,
            )?;
            let key = one_of("sslkey", take(&mut pairs, "sslkey"), method_key, &invalid)?;
            let application_name = take(&mut pairs, "application_name");
            if let Some((name, _)) = pairs.first() {
                return Err(invalid(format!(
                    "unknown connection parameter {}; a PostgreSQL URL takes {}",
                    shown_name(name),
                    POSTGRES_PARAMS.join(", ")
                )));
            }
            let mut options = PgConnectOptions::from_str(base).map_err(|e| {
                invalid(format!(
                    "not a PostgreSQL URL ({}); write `postgres://user:password@host:5432/db`",
                    kind(&e)
                ))
            })?;
            if let Some(mode) = mode {
                if !SSL_MODES.contains(&mode.to_ascii_lowercase().as_str()) {
                    return Err(invalid(format!(
                        "`sslmode` is one of {}; in production use `verify-full` with \
                         `sslrootcert`",
                        SSL_MODES.join(", ")
                    )));
                }
                let mode = PgSslMode::from_str(&mode).map_err(|_| invalid("`sslmode`".into()))?;
                options = options.ssl_mode(mode);
            }
            if let Some(ca) = ca {
                options = options.ssl_root_cert(ca);
            }
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    options = options.ssl_client_cert(cert).ssl_client_key(key);
                }
                (None, None) => {}
                _ => {
                    return Err(invalid(
                        "a client certificate needs both `sslcert` and `sslkey`".into(),
                    ))
                }
            }
            if let Some(name) = application_name {
                options = options.application_name(&name);
            }
            Ok(Connect::Postgres(options))
        }
        #[cfg(feature = "sqlite")]
        Dialect::Sqlite => {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
            let path = base
                .strip_prefix("sqlite://")
                .or_else(|| base.strip_prefix("sqlite:"))
                .unwrap_or(base);
            let in_memory = path.is_empty()
                || path == ":memory:"
                || path.starts_with("file::memory:")
                || pairs.iter().any(|(k, v)| k == "mode" && v == "memory");
            if in_memory {
                return Err(invalid(
                    "an in-memory SQLite database is not shared safely by a pool's connections \
                     (SQLITE_LOCKED under load, nothing cached): name a file \
                     (`sqlite:///var/cache/app/cache.db`), or use `memory://` for an in-process \
                     cache"
                        .into(),
                ));
            }
            // `mode=rw`: the database file must exist (sqlx's meaning, kept
            // rather than overridden below); by default it is created.
            let create = !pairs.iter().any(|(k, v)| k == "mode" && v == "rw");
            let mut kept = Vec::new();
            for (name, value) in pairs {
                let fine = match name.as_str() {
                    "mode" => matches!(value.as_str(), "rw" | "rwc"),
                    "cache" => value == "private",
                    "vfs" => true,
                    _ => {
                        return Err(invalid(format!(
                            "unknown connection parameter {}; a SQLite URL takes {}",
                            shown_name(&name),
                            SQLITE_PARAMS.join(", ")
                        )))
                    }
                };
                if !fine {
                    return Err(invalid(format!(
                        "`{name}` may only be {} here: a cache writes to its file, from \
                         several connections",
                        match name.as_str() {
                            "mode" => "`rw` or `rwc`",
                            _ => "`private`",
                        }
                    )));
                }
                kept.push((name, value));
            }
            let mut url = base.to_owned();
            if !kept.is_empty() {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &kept {
                    query.append_pair(k, v);
                }
                url = format!("{url}?{}", query.finish());
            }
            let options = SqliteConnectOptions::from_str(&url)
                .map_err(|e| invalid(format!("not a SQLite URL ({})", kind(&e))))?
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            Ok(Connect::Sqlite(options))
        }
        #[allow(unreachable_patterns)]
        _ => Err(Error::Config("this SQL dialect is not compiled in".into())),
    }
}

/// What kind of error sqlx found in a URL, without its text (which may
/// quote a password).
fn kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "a malformed URL or value",
        _ => "unreadable",
    }
}

#[cfg(all(test, feature = "postgres", feature = "sqlite"))]
mod tests {
    use super::*;

    fn check(config: SqlConfig) -> Result<(), String> {
        let dialect = config.dialect().map_err(|e| e.to_string())?;
        connect_options(&config, dialect, "shown")
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn connection_parameters_are_honoured_or_refused() {
        assert!(check(SqlConfig::new(
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=ca.pem&application_name=web"
        ))
        .is_ok());
        // The same value twice is fine; two different ones are not.
        assert!(
            check(SqlConfig::new("postgres://h/db?sslmode=require").ssl_mode("require")).is_ok()
        );
        let err = check(SqlConfig::new("postgres://h/db?sslmode=require").ssl_mode("disable"))
            .unwrap_err();
        assert!(err.contains("give it once"), "{err}");
        let err = check(SqlConfig::new("postgres://h/db?sslmode=a&sslmode=b")).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        for (url, says) in [
            ("sqlite:///tmp/x.db?mode=ro", "`rw` or `rwc`"),
            ("sqlite:///tmp/x.db?cache=shared", "`private`"),
            ("sqlite:///tmp/x.db?immutable=1", "`immutable`"),
            (
                "sqlite:///tmp/x.db?op_timeout=1s",
                "CacheBuilder::op_timeout",
            ),
        ] {
            let err = check(SqlConfig::new(url)).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(check(SqlConfig::new("sqlite:///tmp/x.db?mode=rwc&cache=private")).is_ok());
    }
}
