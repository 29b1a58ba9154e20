//! `Cache::from_url` and `Cache::from_env`: from a cache URL to a cache.
//!
//! The scheme picks the store; the store's own config module reads its
//! parameters (`RedisConfig::from_url`, `SqlConfig::from_url`,
//! `MemcachedConfig::from_url`) with the helpers of `params.rs`; this module
//! hands the builder the store and what every scheme shares. It depends on
//! the backends and the builder, and nothing in the backends depends on it.
//! The URL forms are documented on [`crate::url`].

use crate::backends::MemoryBackend;
use crate::builder::CacheBuilder;
use crate::params::{CacheUrl, Common};
use crate::{Cache, Error};

#[cfg(feature = "memcached")]
use crate::backends::memcached::{MemcachedBackend, MemcachedConfig};
#[cfg(feature = "redis")]
use crate::backends::redis::{RedisBackend, RedisConfig};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::backends::sql::{SqlBackend, SqlConfig};

impl Cache {
    /// Builds a cache from a URL: `memory://?max_bytes=67108864`, `none://`,
    /// and the remote backends enabled by features. Query parameters common
    /// to all: `namespace`, `default_ttl`, `op_timeout`, `max_entry_bytes`
    /// (durations as `300`, `"90s"`, `"10m"`, `"250ms"`). See [`crate::url`].
    pub async fn from_url(url: &str) -> Result<Cache, Error> {
        build(url, Vec::new()).await
    }

    /// [`from_url`](Self::from_url) with signing keys (the first signs,
    /// every one verifies: see [`CacheBuilder::signing_keys`]), for keys
    /// that come from elsewhere than `CACHE_SIGNING_KEY` (a secret store);
    /// keys never go in a URL. No keys: as `from_url`.
    ///
    /// [`CacheBuilder::signing_keys`]: crate::CacheBuilder::signing_keys
    pub async fn from_url_signed<K: AsRef<[u8]>>(
        url: &str,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Cache, Error> {
        let keys = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        build(url, keys).await
    }

    /// Builds a cache from the `CACHE_URL` environment variable, or an
    /// in-memory cache when it is unset or empty. `CACHE_SIGNING_KEY`
    /// (comma-separated for rotation, the first signs) turns on signed
    /// entries; keys never go in the URL.
    pub async fn from_env() -> Result<Cache, Error> {
        let keys: Vec<Vec<u8>> = std::env::var("CACHE_SIGNING_KEY")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        match std::env::var("CACHE_URL") {
            Ok(url) if !url.trim().is_empty() => build(url.trim(), keys).await,
            _ => Cache::builder().signing_keys(keys).build(),
        }
    }
}

/// The cache `raw` describes, signing with `signing_keys` (from
/// `CACHE_SIGNING_KEY`: keys never go in a URL).
pub(crate) async fn build(raw: &str, signing_keys: Vec<Vec<u8>>) -> Result<Cache, Error> {
    let mut url = CacheUrl::parse(raw)?;
    let (mut builder, common) = store(&mut url)?;
    builder = compression(builder, &common).map_err(|e| url.error(e))?;
    if !signing_keys.is_empty() {
        builder = builder.signing_keys(&signing_keys);
    }
    if let Some(namespace) = common.namespace {
        builder = builder.namespace(namespace);
    }
    if let Some(ttl) = common.default_ttl {
        builder = builder.default_ttl(ttl);
    }
    if let Some(timeout) = common.op_timeout {
        builder = builder.op_timeout(timeout);
    }
    if let Some(bytes) = common.max_entry_bytes {
        builder = builder.max_entry_bytes(bytes);
    }
    if let Some(bytes) = common.near {
        builder = builder.near(bytes);
    }
    if let Some(check) = common.near_check {
        builder = builder.near_check(check);
    }
    if let Some(ttl) = common.near_ttl {
        builder = builder.near_ttl(ttl);
    }
    if let Some(on) = common.record_written_at {
        builder = builder.record_written_at(on);
    }
    builder.build()
}

/// `?compress_above=` and `?compress_level=`, which need the
/// `compression` feature.
#[cfg(feature = "compression")]
fn compression(mut builder: CacheBuilder, common: &Common) -> Result<CacheBuilder, String> {
    if common.compress_level.is_some() && common.compress_above.is_none() {
        return Err(
            "`compress_level` without `compress_above`: add the size above which \
                    entries are compressed (e.g. `compress_above=4096`)"
                .into(),
        );
    }
    if let Some(bytes) = common.compress_above {
        builder = builder.compress_above(bytes);
    }
    if let Some(level) = common.compress_level {
        builder = builder.compression_level(level);
    }
    Ok(builder)
}

#[cfg(not(feature = "compression"))]
fn compression(builder: CacheBuilder, common: &Common) -> Result<CacheBuilder, String> {
    if common.compress_above.is_some() || common.compress_level.is_some() {
        return Err(
            "compression is not compiled in: enable the `compression` feature of \
                    cacheruntime to use `compress_above`"
                .into(),
        );
    }
    Ok(builder)
}

/// A builder holding the store `url`'s scheme names, read with that
/// store's own parameters, and the parameters every scheme shares.
fn store(url: &mut CacheUrl<'_>) -> Result<(CacheBuilder, Common), Error> {
    match url.scheme {
        "memory" | "mem" => {
            if !url.rest.is_empty() {
                return Err(
                    url.error("`memory://` takes no host or path; size it with `?max_bytes=`")
                );
            }
            let max_bytes = url
                .take_parsed::<u64>("max_bytes", "a byte count")?
                .unwrap_or(MemoryBackend::DEFAULT_MAX_BYTES);
            let common = url.finish("max_bytes")?;
            Ok((CacheBuilder::new().memory(max_bytes), common))
        }
        "none" | "disabled" | "dummy" => {
            let common = url.finish("no backend parameters")?;
            Ok((CacheBuilder::new().disabled(), common))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            let (config, common) = RedisConfig::from_url(url)?;
            Ok((
                CacheBuilder::new().backend(RedisBackend::new(config)?),
                common,
            ))
        }
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Err(url
            .error("Redis support is not compiled in: enable the `redis` feature of cacheruntime")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => sql(url),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(url.error(
            "PostgreSQL support is not compiled in: enable the `postgres` feature of cacheruntime",
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => sql(url),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(url.error(
            "SQLite support is not compiled in: enable the `sqlite` feature of cacheruntime",
        )),
        #[cfg(feature = "memcached")]
        "memcached" | "memcache" => {
            let (config, common) = MemcachedConfig::from_url(url)?;
            Ok((
                CacheBuilder::new().backend(MemcachedBackend::new(config)?),
                common,
            ))
        }
        #[cfg(not(feature = "memcached"))]
        "memcached" | "memcache" => Err(url.error(
            "Memcached support is not compiled in: enable the `memcached` feature of cacheruntime",
        )),
        other => Err(url.error(format!(
            "unknown scheme `{other}`; expected memory://, none://, redis://, rediss://, \
             redis+cluster://, postgres://, sqlite:// or memcached://"
        ))),
    }
}

/// `postgres://...` and `sqlite://...`: one backend for both.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn sql(url: &mut CacheUrl<'_>) -> Result<(CacheBuilder, Common), Error> {
    let (config, common) = SqlConfig::from_url(url)?;
    Ok((
        CacheBuilder::new().backend(SqlBackend::new(config)?),
        common,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_documented_form_still_parses() {
        for url in [
            "memory://",
            "memory://?max_bytes=16777216&namespace=shop&default_ttl=10m",
            "mem://?op_timeout=250ms&max_entry_bytes=1024",
            "none://",
            "disabled://?namespace=x",
        ] {
            build(url, Vec::new()).await.expect(url);
        }
        let parsed = CacheUrl::parse("sqlite:///tmp/my cache/x.db?table=t&max_ttl=1d").unwrap();
        assert_eq!(parsed.rest, "/tmp/my cache/x.db");
        let parsed = CacheUrl::parse("redis+cluster://u:p@h1:7000,h2:7000?namespace=a").unwrap();
        assert_eq!(parsed.hosts, "h1:7000,h2:7000");
        #[cfg(all(
            feature = "redis",
            feature = "postgres",
            feature = "sqlite",
            feature = "memcached"
        ))]
        for url in [
            "redis://h:6379/0",
            "redis://user:pass@h:6379/0?max_ttl=7d",
            "redis://u:p%2Fw@[::1]:6379/0",
            "redis+cluster://u:p@h1:7000,h2:7000",
            "rediss+cluster://h1:7000,h2:7000?namespace=a",
            "postgres://user:pass@host/db?sslmode=verify-full&sslrootcert=ca.pem",
            "postgresql://user:pass@host:5432/db?sslcert=c.pem&sslkey=c.key&table=t",
            "postgres:///db",
            "sqlite://path/to/cache.db?max_entries=10&sweep_interval=30s",
            "sqlite:///tmp/x.db?auto_create=false&max_connections=2",
            "memcached://h1:11211,h2:11211?max_ttl=1d&max_item_bytes=1000&max_connections=4",
            "memcache://[::1]:11211",
        ] {
            build(url, Vec::new()).await.expect(url);
        }
        #[cfg(feature = "redis")]
        {
            // Parsed; then the files are read, and these do not exist.
            let url = "rediss://h:6380/0?ca_file=ca.pem&cert_file=c.pem&key_file=c.key";
            let err = build(url, Vec::new()).await.err().unwrap();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    /// `tls_pin_sha256` and `tls_insecure`: the forms accepted, and every
    /// refusal saying what to do instead.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_certificate_pins_parse_in_every_spelling_and_misuse_is_refused_clearly() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let mixed = format!("aB{}", &colons[2..]);
        for pin in [&hex, &colons, &mixed] {
            let url = format!("rediss://:secret@h:6380/0?tls_pin_sha256={pin}");
            build(&url, Vec::new()).await.expect(&url);
        }
        for on in ["true", "1", "false", "0"] {
            let url = format!("rediss://h:6380?tls_insecure={on}");
            build(&url, Vec::new()).await.expect(&url);
        }
        let refused = |url: String, says: &'static [&'static str]| async move {
            let Err(err) = build(&url, Vec::new()).await else {
                panic!("{url} was accepted");
            };
            let text = err.to_string();
            for s in says {
                assert!(text.contains(s), "{url}: {text}");
            }
            assert!(!text.contains("secret"), "{text}");
        };
        for bad in [
            "ab".repeat(31),
            "zz".repeat(32),
            "ab".repeat(33),
            "ab:".repeat(31),
        ] {
            refused(
                format!("rediss://:secret@h:6380?tls_pin_sha256={bad}"),
                &["64 hex digits", "SHA-256"],
            )
            .await;
        }
        refused(
            format!("redis://:secret@h:6379?tls_pin_sha256={hex}"),
            &["rediss://"],
        )
        .await;
        refused(
            "redis://:secret@h:6379?tls_insecure=true".into(),
            &["rediss://"],
        )
        .await;
        refused(
            format!("rediss://:secret@h:6380?tls_pin_sha256={hex}&tls_insecure=true"),
            &["exclude each other"],
        )
        .await;
        refused(
            format!("rediss+cluster://:secret@h1:7000,h2:7000?tls_pin_sha256={hex}"),
            &["one server", "cluster"],
        )
        .await;
        refused(
            format!("rediss://:secret@h:6380?tls_pin_sha256={hex}&ca_file=ca.pem"),
            &["ca_file", "replaces the CA check"],
        )
        .await;
        refused(
            "rediss://:secret@h:6380?tls_insecure=yes".into(),
            &["`tls_insecure` takes `true` or `false`"],
        )
        .await;

        // The builder is checked as the URL is, when the backend is made.
        use crate::backends::redis::{RedisBackend, RedisConfig};
        let err = RedisBackend::new(RedisConfig::new("rediss://h:6380").tls_pin_sha256("abc"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let err = RedisBackend::new(RedisConfig::cluster(["rediss://h1:7000"]).tls_insecure(true))
            .err()
            .unwrap();
        assert!(err.to_string().contains("one server"), "{err}");
        RedisBackend::new(RedisConfig::new("rediss://h:6380").tls_pin_sha256(&colons)).unwrap();
        let shown = format!(
            "{:?}",
            RedisConfig::new("rediss://u:secret@h:6380").tls_pin_sha256(&hex)
        );
        assert!(shown.contains(&hex) && !shown.contains("secret"), "{shown}");
    }
}

#[cfg(test)]
mod compression_tests {
    use super::*;

    /// `?compress_above=` builds a compressing cache with the feature, and
    /// is refused, saying why, without it or out of range.
    #[tokio::test]
    async fn compress_above_is_read_or_refused_with_a_reason() {
        async fn refused(url: &str) -> Option<String> {
            build(url, Vec::new()).await.err().map(|e| e.to_string())
        }
        if cfg!(feature = "compression") {
            assert_eq!(refused("memory://?compress_above=4096").await, None);
            assert_eq!(
                refused("mem://?compress_above=1024&compress_level=19").await,
                None
            );
            for (url, says) in [
                ("memory://?compress_above=0", "greater than zero"),
                ("memory://?compress_above=-1", "not a byte count"),
                ("memory://?compress_above=4k", "not a byte count"),
                ("memory://?compress_above=64&compress_level=23", "1 to 22"),
                ("memory://?compress_above=64&compress_level=0", "1 to 22"),
                ("memory://?compress_level=3", "without `compress_above`"),
            ] {
                let err = refused(url)
                    .await
                    .unwrap_or_else(|| panic!("{url} was accepted"));
                assert!(err.contains(says), "{url}: {err}");
            }
        } else {
            let err = refused("memory://?compress_above=4096").await.unwrap();
            assert!(err.contains("`compression` feature"), "{err}");
        }
    }
}
