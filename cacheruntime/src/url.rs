//! Cache URLs: `Cache::from_url` and `CACHE_URL`.
//!
//! | URL | store |
//! |---|---|
//! | `memory://` or `memory://?max_bytes=16777216` | bounded in-process memory |
//! | `none://` (also `disabled://`) | nothing; every call computes |
//!
//! Query parameters every scheme accepts: `namespace`, `default_ttl`,
//! `op_timeout` (durations: `300` seconds, or `"90s"`, `"10m"`, `"1h"`,
//! `"250ms"`), `max_entry_bytes`. Unknown parameters are errors, so a typo
//! does not silently fall back to a default.
//!
//! URLs are cut with the `url` crate: the hosts of a cluster or a Memcached
//! pool (`redis+cluster://u:p@h1:7000,h2:7000`) are split on `,` first,
//! since `url::Url` reads one authority. Errors show a URL as [`redact`]
//! does: scheme, hosts and ports, never user info, path or query values.

use std::time::Duration;

use crate::builder::CacheBuilder;
use crate::{Cache, Error};

pub use crate::secrets::redact;
use crate::secrets::{host_and_port, is_scheme, Pieces, NOT_SHOWN};

/// Parses `300`, `"90s"`, `"10m"`, `"1h30m"`, `"250ms"`, `"1d"`: the
/// grammar `#[cached(ttl = ...)]` checks at compile time, from the one
/// implementation both use (the `cacheduration` crate).
pub fn parse_duration(text: &str) -> Option<Duration> {
    cacheduration::parse(text)
}

/// A parsed cache URL: its scheme, user info, hosts and path as written
/// (what the backend's own client is given), and its query parameters,
/// decoded, each taken at most once.
pub(crate) struct CacheUrl<'a> {
    pub(crate) scheme: &'a str,
    /// `user:password`, as written.
    #[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
    pub(crate) userinfo: Option<&'a str>,
    /// `host:port`, or `h1:p1,h2:p2` for a cluster or a Memcached pool;
    /// each checked by the `url` crate. Empty for SQLite.
    #[cfg_attr(
        not(any(
            feature = "redis",
            feature = "memcached",
            feature = "postgres",
            feature = "sqlite"
        )),
        allow(dead_code)
    )]
    pub(crate) hosts: &'a str,
    /// Between `://` and `?`: user info, hosts and path (SQLite: the file).
    pub(crate) rest: &'a str,
    /// What errors show of it: see [`redact`].
    shown: String,
    params: Vec<(String, String, bool)>,
    signing_keys: Vec<Vec<u8>>,
}

/// What a user most likely got wrong when a password shows up where the
/// URL grammar puts a host, path or query.
const ENCODE_THE_PASSWORD: &str = "percent-encode `@ : / ? # %` in a user name or password \
    (`%40 %3A %2F %3F %23 %25`) and `& # @ %` in a parameter value";

impl<'a> CacheUrl<'a> {
    pub(crate) fn parse(raw: &'a str) -> Result<Self, Error> {
        let invalid = |url: String, message: String| Error::InvalidUrl { url, message };
        let Some((scheme, after)) = raw.split_once("://") else {
            return Err(invalid(
                NOT_SHOWN.into(),
                "expected `scheme://...`, e.g. `memory://` or `redis://host:6379/0`".into(),
            ));
        };
        if !is_scheme(scheme) {
            return Err(invalid(
                NOT_SHOWN.into(),
                "the part before `://` is not a scheme such as `memory`, `redis` or `postgres`"
                    .into(),
            ));
        }
        let shown = redact(raw);
        let (userinfo, hosts, rest, query) = if scheme == "sqlite" {
            // A file path, which sqlx reads as is: only its query is a URL's.
            let (rest, query) = after.split_once('?').unwrap_or((after, ""));
            (None, "", rest, query.to_owned())
        } else {
            let pieces = Pieces::of(after);
            if pieces.stray_at {
                return Err(invalid(
                    shown,
                    format!("an `@` after the host: {ENCODE_THE_PASSWORD}"),
                ));
            }
            for host in pieces.hosts.split(',').filter(|h| !h.is_empty()) {
                if let Err(e) = host_and_port(scheme, host) {
                    return Err(invalid(
                        shown,
                        format!(
                            "a host is not `host` or `host:port` ({e}); write IPv6 addresses \
                             in brackets (`[::1]:6379`) and {ENCODE_THE_PASSWORD}"
                        ),
                    ));
                }
            }
            // One host in place of the list, so that `url::Url` reads the
            // rest: user info, path, query, fragment.
            let first = pieces.hosts.split(',').next().unwrap_or("");
            let userinfo = pieces.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let one = url::Url::parse(&format!("{scheme}://{userinfo}{first}{}", pieces.tail))
                .map_err(|e| invalid(shown.clone(), format!("{e}; {ENCODE_THE_PASSWORD}")))?;
            if one.fragment().is_some() {
                return Err(invalid(
                    shown,
                    format!("`#` starts a fragment, which cache URLs do not have; {ENCODE_THE_PASSWORD}"),
                ));
            }
            let rest = &after[..after.find('?').unwrap_or(after.len())];
            (
                pieces.userinfo,
                pieces.hosts,
                rest,
                one.query().unwrap_or("").to_owned(),
            )
        };
        let mut params: Vec<(String, String, bool)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if params.iter().any(|(seen, _, _)| *seen == k) {
                return Err(invalid(
                    shown,
                    format!("query parameter {} is given twice", shown_name(&k)),
                ));
            }
            params.push((k.into_owned(), v.into_owned(), false));
        }
        Ok(CacheUrl {
            scheme,
            userinfo,
            hosts,
            rest,
            shown,
            params,
            signing_keys: Vec::new(),
        })
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> Error {
        Error::InvalidUrl {
            url: self.shown.clone(),
            message: message.into(),
        }
    }

    /// Takes a parameter's value, marking it used.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        self.params
            .iter_mut()
            .find(|(k, _, used)| k == name && !*used)
            .map(|(_, v, used)| {
                *used = true;
                v.clone()
            })
    }

    pub(crate) fn take_parsed<T: std::str::FromStr>(
        &mut self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, Error> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("`{name}` is not {what}"))),
        }
    }

    pub(crate) fn take_duration(&mut self, name: &str) -> Result<Option<Duration>, Error> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => parse_duration(&v).map(Some).ok_or_else(|| {
                self.error(format!(
                    "`{name}` is not a duration; write seconds (`300`) or `90s`, `10m`, `1h`, `250ms`"
                ))
            }),
        }
    }

    /// Applies the parameters every scheme shares.
    pub(crate) fn common(&mut self, mut b: CacheBuilder) -> Result<CacheBuilder, Error> {
        if !self.signing_keys.is_empty() {
            b = b.signing_keys(&self.signing_keys);
        }
        if let Some(ns) = self.take("namespace") {
            b = b.namespace(ns);
        }
        if let Some(ttl) = self.take_duration("default_ttl")? {
            b = b.default_ttl(ttl);
        }
        if let Some(t) = self.take_duration("op_timeout")? {
            b = b.op_timeout(t);
        }
        if let Some(n) = self.take_parsed::<usize>("max_entry_bytes", "a byte count")? {
            b = b.max_entry_bytes(n);
        }
        Ok(b)
    }

    /// Fails on any parameter nothing took.
    pub(crate) fn finish(&self, known: &str) -> Result<(), Error> {
        match self.params.iter().find(|(_, _, used)| !used) {
            None => Ok(()),
            Some((k, _, _)) => Err(self.error(format!(
                "unknown query parameter {}; `{}://` accepts {known}, namespace, default_ttl, op_timeout, max_entry_bytes",
                shown_name(k),
                self.scheme
            ))),
        }
    }
}

/// A parameter's name in backquotes, if it looks like one; otherwise not
/// shown, since it may be a piece of a password written with a raw `?`.
fn shown_name(name: &str) -> String {
    let plain = name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        format!("`{name}`")
    } else {
        "(a name that is not letters, digits and `_-.`; not shown)".to_owned()
    }
}

pub(crate) async fn build(raw: &str, signing_keys: Vec<Vec<u8>>) -> Result<Cache, Error> {
    let mut url = CacheUrl::parse(raw)?;
    url.signing_keys = signing_keys;
    match url.scheme {
        "memory" | "mem" => {
            if !url.rest.is_empty() {
                return Err(
                    url.error("`memory://` takes no host or path; size it with `?max_bytes=`")
                );
            }
            let mut b = Cache::builder();
            if let Some(n) = url.take_parsed::<u64>("max_bytes", "a byte count")? {
                b = b.memory(n);
            } else {
                b = b.memory(crate::backends::MemoryBackend::DEFAULT_MAX_BYTES);
            }
            let b = url.common(b)?;
            url.finish("max_bytes")?;
            b.build()
        }
        "none" | "disabled" | "dummy" => {
            let b = url.common(Cache::builder().disabled())?;
            url.finish("no backend parameters")?;
            b.build()
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => redis_cache(url),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Err(url
            .error("Redis support is not compiled in: enable the `redis` feature of cacheruntime")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => sql_cache(url),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(url.error(
            "PostgreSQL support is not compiled in: enable the `postgres` feature of cacheruntime",
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => sql_cache(url),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(url.error(
            "SQLite support is not compiled in: enable the `sqlite` feature of cacheruntime",
        )),
        #[cfg(feature = "memcached")]
        "memcached" | "memcache" => memcached_cache(url),
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

/// `postgres://user:pass@host/db?sslmode=verify-full&sslrootcert=ca.pem` and
/// `sqlite://path/to/cache.db`, with `table`, `auto_create`, `max_entries`,
/// `sweep_interval`, `max_connections`, `max_ttl` beside the common ones,
/// and the connection parameters (PostgreSQL `sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey`, `application_name`; SQLite `mode`, `cache`, `vfs`),
/// which go to the backend's URL and are checked there, as for
/// `SqlConfig::new`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn sql_cache(mut url: CacheUrl<'_>) -> Result<Cache, Error> {
    use crate::backends::sql::{SqlBackend, SqlConfig, POSTGRES_PARAMS, SQLITE_PARAMS};
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
    let mut config = SqlConfig::new(if query.is_empty() {
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
    let builder = url.common(Cache::builder())?;
    url.finish(&format!(
        "table, auto_create, max_entries, sweep_interval, max_connections, max_ttl, {}",
        connection.join(", ")
    ))?;
    builder.backend(SqlBackend::new(config)?).build()
}

/// `memcached://host:11211[,host2:11211...]`, with `max_ttl`,
/// `max_item_bytes` and `max_connections` (per server) beside the common
/// parameters.
#[cfg(feature = "memcached")]
fn memcached_cache(mut url: CacheUrl<'_>) -> Result<Cache, Error> {
    use crate::backends::memcached::{MemcachedBackend, MemcachedConfig};
    if url.hosts.is_empty() || url.userinfo.is_some() {
        return Err(url.error(
            "name the servers as `memcached://host:11211,host2:11211` (no credentials: this \
             client has no SASL; see the memcached backend's docs)",
        ));
    }
    let mut config = MemcachedConfig::new(url.hosts.split(','));
    if let Some(d) = url.take_duration("max_ttl")? {
        config = config.max_ttl(d);
    }
    if let Some(n) = url.take_parsed::<usize>("max_item_bytes", "a byte count")? {
        config = config.max_item_bytes(n);
    }
    if let Some(n) = url.take_parsed::<usize>("max_connections", "a number of connections")? {
        config = config.max_connections(n);
    }
    let builder = url.common(Cache::builder())?;
    url.finish("max_ttl, max_item_bytes, max_connections")?;
    builder.backend(MemcachedBackend::new(config)?).build()
}

/// `redis://[user:pass@]host[:port][/db]`, `rediss://...` and
/// `redis+cluster://[user:pass@]h1:p1,h2:p2`, with `ca_file`, `cert_file`,
/// `key_file` and `max_ttl` beside the common parameters.
#[cfg(feature = "redis")]
fn redis_cache(mut url: CacheUrl<'_>) -> Result<Cache, Error> {
    use crate::backends::redis::{RedisBackend, RedisConfig};
    let ca_file = url.take("ca_file");
    let cert_file = url.take("cert_file");
    let key_file = url.take("key_file");
    let max_ttl = url.take_duration("max_ttl")?;
    let builder = url.common(Cache::builder())?;
    url.finish("ca_file, cert_file, key_file, max_ttl")?;
    let tls = url.scheme.starts_with("rediss");
    let base = if tls { "rediss" } else { "redis" };
    let mut config = if url.scheme.ends_with("+cluster") {
        if url.hosts.is_empty() {
            return Err(url
                .error("name at least one cluster node: `redis+cluster://host1:6379,host2:6379`"));
        }
        let userinfo = url.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        RedisConfig::cluster(
            url.hosts
                .split(',')
                .map(|h| format!("{base}://{userinfo}{h}")),
        )
    } else {
        if url.hosts.is_empty() {
            return Err(url.error("name the server: `redis://host:6379/0`"));
        }
        if url.hosts.contains(',') {
            return Err(url.error(format!(
                "`{}://` takes one server; name several nodes of a cluster as \
                 `{base}+cluster://host1:6379,host2:6379`",
                url.scheme
            )));
        }
        RedisConfig::new(format!("{base}://{}", url.rest))
    };
    if (ca_file.is_some() || cert_file.is_some()) && !tls {
        return Err(url.error("`ca_file` and `cert_file` need TLS: use `rediss://`"));
    }
    if let Some(ca) = ca_file {
        config = config.ca_file(ca);
    }
    match (cert_file, key_file) {
        (Some(cert), Some(key)) => config = config.client_cert(cert, key),
        (None, None) => {}
        _ => return Err(url.error("mutual TLS needs both `cert_file` and `key_file`")),
    }
    if let Some(max_ttl) = max_ttl {
        config = config.max_ttl(max_ttl);
    }
    builder.backend(RedisBackend::new(config)?).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::tests::PASSWORDS;

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

    /// The text of an error, `Display` and `Debug`.
    fn text(e: &Error) -> String {
        format!("{e} {e:?}")
    }

    #[test]
    fn ipv6_hosts_parse_and_show() {
        assert_eq!(redact("redis://u:p@[::1]:6379/0"), "redis://[::1]:6379");
        assert_eq!(
            redact("redis+cluster://u:p@[::1]:7000,[::1]:7001"),
            "redis+cluster://[::1]:7000,[::1]:7001"
        );
        let url = CacheUrl::parse("redis://u:p@[::1]:6379/0?namespace=a").unwrap();
        assert_eq!((url.userinfo, url.hosts), (Some("u:p"), "[::1]:6379"));
        assert_eq!(url.rest, "u:p@[::1]:6379/0");
        let url = CacheUrl::parse("memcached://[::1]:11211,10.0.0.2:11211").unwrap();
        assert_eq!(url.hosts, "[::1]:11211,10.0.0.2:11211");
        let err = CacheUrl::parse("redis://u:p@[::1:6379").err().unwrap();
        assert!(text(&err).contains("IPv6"), "{err}");
    }

    #[test]
    fn special_characters_in_passwords_never_show() {
        for password in PASSWORDS {
            for url in [
                format!("redis://u:{password}@host:6379/0"),
                format!("rediss://:{password}@host:6380"),
                format!("redis+cluster://u:{password}@h1:7000,h2:7000"),
                format!("postgres://u:{password}@[::1]:5432/db"),
                format!("sqlite://u:{password}@h/x.db"),
                format!("memcached://u:{password}@h:11211"),
                format!("memory://u:{password}@h"),
            ] {
                let shown = redact(&url);
                assert!(
                    !shown.contains("ss-word") && !shown.contains("rd"),
                    "{url} -> {shown}"
                );
                if let Err(e) = CacheUrl::parse(&url) {
                    assert!(!text(&e).contains("ss-word"), "{url} -> {e:?}");
                }
            }
            // Raw `/`, `?` and `#` end the authority early: such a URL is
            // refused, saying how to write it, and shows only its scheme.
            let url = format!("redis://u:{password}@host:6379/0");
            if password.contains(['/', '?', '#']) {
                let err = CacheUrl::parse(&url).err().expect(&url);
                assert!(text(&err).contains("percent-encode"), "{err}");
                assert_eq!(redact(&url), "redis://");
            } else {
                // `@`, `:` and `%` can stay raw: the last `@` ends the user
                // info, the first `:` the user name.
                assert_eq!(redact(&url), "redis://host:6379");
                let parsed = CacheUrl::parse(&url).unwrap();
                assert_eq!(parsed.userinfo, Some(&*format!("u:{password}")));
                assert_eq!(parsed.hosts, "host:6379");
            }
        }
    }

    #[test]
    fn query_values_never_show() {
        for url in [
            "memory://?password=hunter2-value",
            "memory://?max_bytes=1&sslpassword=hunter2-value",
            "memory://?max_bytes=hunter2-value",
            "memory://?op_timeout=hunter2-value",
            "none://?token=hunter2-value&token=hunter2-value",
            "redis://h:6379/0?password=hunter2-value#frag",
            "redis://h:6379/0?password=hunter2@value",
            "memory://?hunter2-value@host=1",
        ] {
            let err = CacheUrl::parse(url)
                .and_then(|mut u| {
                    let b = u.common(CacheBuilder::new())?;
                    u.take_parsed::<u64>("max_bytes", "a byte count")?;
                    u.finish("max_bytes").map(|()| b)
                })
                .map(|_| ())
                .expect_err(url);
            assert!(!text(&err).contains("hunter2"), "{url} -> {err:?}");
        }
        // Names are shown, so the error still names what to fix.
        let err = CacheUrl::parse("memory://?password=x")
            .and_then(|u| u.finish("max_bytes"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("`password`"), "{err}");
    }

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
}
