//! How to reach Redis: [`RedisConfig`], built in code or read from a cache
//! URL (`redis://`, `rediss://`, `redis+cluster://`) by
//! `RedisConfig::from_url`, the Redis part of `Cache::from_url`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::params::{CacheUrl, Common};
use crate::secrets::redact;
use crate::Error;

/// How to reach Redis. Secrets in the URLs never appear in `Debug` output or
/// errors.
///
/// ```
/// use std::time::Duration;
/// use cacheruntime::backends::redis::RedisConfig;
///
/// let single = RedisConfig::new("rediss://cache:secret@redis.internal:6380/0")
///     .ca_file("/etc/ssl/redis-ca.pem")
///     .client_cert("/etc/ssl/app.pem", "/etc/ssl/app.key");
/// let cluster = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .max_ttl(Duration::from_secs(7 * 86_400));
/// # let _ = (single, cluster);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    pub(super) nodes: Vec<String>,
    pub(super) cluster: bool,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert: Option<(PathBuf, PathBuf)>,
    pub(super) max_ttl: Duration,
    pub(super) connect_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact(n)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// One server: `redis://[user:password@]host[:port][/db]` or `rediss://...`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            nodes: vec![url.into()],
            cluster: false,
            ca_file: None,
            client_cert: None,
            max_ttl: Duration::from_secs(30 * 86_400),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A Redis Cluster, from one or more of its nodes (same URL forms).
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        RedisConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::new(String::new())
        }
    }

    /// Verify the server's certificate against this CA (PEM) instead of the
    /// system's roots. For `rediss://`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Longest life of an entry (default 30 days); longer TTLs are capped
    /// to it.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reads a cache URL (`Cache::from_url`) for this store; returns the
    /// parameters every scheme shares for the cache. Forms:
    /// `redis://[user:pass@]host[:port][/db]`, `rediss://...` and
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2`, with `ca_file`, `cert_file`,
    /// `key_file` and `max_ttl` beside the common parameters.
    pub(crate) fn from_url(url: &mut CacheUrl<'_>) -> Result<(RedisConfig, Common), Error> {
        let ca_file = url.take("ca_file");
        let cert_file = url.take("cert_file");
        let key_file = url.take("key_file");
        let max_ttl = url.take_duration("max_ttl")?;
        let common = url.finish("ca_file, cert_file, key_file, max_ttl")?;
        let tls = url.scheme.starts_with("rediss");
        let base = if tls { "rediss" } else { "redis" };
        let mut config = if url.scheme.ends_with("+cluster") {
            if url.hosts.is_empty() {
                return Err(url.error(
                    "name at least one cluster node: `redis+cluster://host1:6379,host2:6379`",
                ));
            }
            let userinfo = url.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            Self::cluster(
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
            Self::new(format!("{base}://{}", url.rest))
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
        Ok((config, common))
    }
}
