//! Cache URLs: `Cache::from_url` and `CACHE_URL`.
//!
//! | URL | store |
//! |---|---|
//! | `memory://` or `memory://?max_bytes=16777216` | bounded in-process memory |
//! | `none://` (also `disabled://`) | nothing; every call computes |
//! | `redis://[user:pass@]host:6379/0`, `rediss://...` | Redis, plain or TLS (feature `redis`) |
//! | `redis+cluster://h1:7000,h2:7000` (`rediss+cluster://` for TLS) | Redis Cluster (feature `redis`) |
//! | `postgres://user:pass@host/db?sslmode=verify-full` | PostgreSQL (feature `postgres`) |
//! | `sqlite://path/to/cache.db` | SQLite file (feature `sqlite`) |
//! | `memcached://h1:11211,h2:11211` | a Memcached pool (feature `memcached`) |
//!
//! Each store's own parameters are listed on its config type:
//! [`RedisConfig`](crate::backends::redis::RedisConfig),
//! [`SqlConfig`](crate::backends::sql::SqlConfig),
//! [`MemcachedConfig`](crate::backends::memcached::MemcachedConfig).
//!
//! Query parameters every scheme accepts: `namespace`, `default_ttl`,
//! `op_timeout` (durations: `300` seconds, or `"90s"`, `"10m"`, `"1h"`,
//! `"250ms"`), `max_entry_bytes`, `record_written_at` (`true` or `false`;
//! see [`CacheBuilder::record_written_at`](crate::CacheBuilder::record_written_at)),
//! `near`, `near_check`, `near_ttl`, and with the `compression` feature
//! `compress_above` (bytes) and `compress_level` (1 to 22; see
//! [`CacheBuilder::compress_above`](crate::CacheBuilder::compress_above)),
//! which without the feature are errors saying to enable it. Unknown
//! parameters are errors, so a typo does not silently fall back to a
//! default.
//!
//! URLs are cut with the `url` crate: the hosts of a cluster or a Memcached
//! pool (`redis+cluster://u:p@h1:7000,h2:7000`) are split on `,` first,
//! since `url::Url` reads one authority. Errors show a URL as [`redact`]
//! does: scheme, hosts and ports, never user info, path or query values.
//!
//! Where the pieces live: URL parsing and the shared parameters in
//! `params.rs`, each store's own parameters in its config type
//! (`RedisConfig::from_url`, `SqlConfig::from_url`,
//! `MemcachedConfig::from_url`), from URL to cache in `config.rs`, and what
//! may be shown of a URL in `secrets.rs`. This module is their public face.

use std::time::Duration;

pub use crate::secrets::redact;

/// Parses `300`, `"90s"`, `"10m"`, `"1h30m"`, `"250ms"`, `"1d"`: the
/// grammar `#[cached(ttl = ...)]` checks at compile time, from the one
/// implementation both use (the `cacheduration` crate).
pub fn parse_duration(text: &str) -> Option<Duration> {
    cacheduration::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_documented_form() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("h"), None);
    }
}
