//! How to reach a Memcached pool, and the checks made when the cache is
//! built, so that no setting can make a call fail in a way the user did not
//! choose (or panic).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ring::with_port;
use crate::params::{CacheUrl, Common};
use crate::secrets::redact;
use crate::Error;

/// The longest `max_ttl` accepted: Memcached's expiry times are 32-bit
/// Unix seconds (they end in 2106), and a TTL over 30 days is sent as one.
const MAX_TTL_LIMIT: Duration = Duration::from_secs(3650 * 86_400);

/// How to reach Memcached. `Debug` shows the servers' hosts and ports only.
///
/// ```no_run
/// use std::time::Duration;
/// use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
/// use cacheruntime::Cache;
///
/// # fn main() -> Result<(), cacheruntime::Error> {
/// // The same as `Cache::from_url("memcached://10.0.0.1,10.0.0.2,10.0.0.3?max_ttl=1d")`.
/// let config = MemcachedConfig::new(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])
///     .max_ttl(Duration::from_secs(86_400));
/// let cache = Cache::builder()
///     .backend(MemcachedBackend::new(config)?)
///     .namespace("shop")
///     .build()?;
/// # let _ = cache;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct MemcachedConfig {
    pub(super) servers: Vec<String>,
    pub(super) max_ttl: Duration,
    pub(super) max_item_bytes: usize,
    pub(super) connect_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) breaker_threshold: u32,
    pub(super) breaker_cool_down: Duration,
    /// Resolves `host:port` in place of the system's resolver (tests).
    pub(super) resolver: Option<Resolver>,
}

/// A name lookup run on a blocking thread: `host:port` to its addresses.
pub(super) type Resolver = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

impl fmt::Debug for MemcachedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact(s)).collect();
        f.debug_struct("MemcachedConfig")
            .field("servers", &servers)
            .field("max_ttl", &self.max_ttl)
            .field("max_item_bytes", &self.max_item_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_connections", &self.max_connections)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .finish()
    }
}

impl MemcachedConfig {
    /// Connections per server a process opens at most, by default.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

    /// One or more servers as `host:port` (`host` alone means port 11211).
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        MemcachedConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            max_ttl: Duration::from_secs(365 * 86_400),
            max_item_bytes: (1 << 20) - 512,
            connect_timeout: Duration::from_secs(1),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(1),
            resolver: None,
        }
    }

    /// Longest life of an entry and of a generation counter (365 days),
    /// between one second and 3650 days.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// The server's item size limit (`memcached -I`, 1 MiB by default),
    /// less its per-item overhead: larger values are not sent.
    pub fn max_item_bytes(mut self, bytes: usize) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    /// Connections this process keeps open to each server at most (16 by
    /// default; URL parameter `max_connections`). A call finding them all
    /// busy waits for one, within the cache's op timeout, rather than
    /// opening more: a burst of calls cannot use up the server's
    /// connection limit (`memcached -c`, 1024 by default, shared by every
    /// process).
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Each server's circuit breaker: after `threshold` consecutive
    /// failures of a server (errors, or exchanges abandoned unanswered at
    /// the op timeout) the calls that need it fail at once for
    /// `cool_down`, then one call probes it. Default: 5 failures, 1 s.
    /// These replace the cache's whole-store breaker
    /// (`CacheBuilder::circuit_breaker`) for this backend, so that one
    /// dead server does not switch caching off for the others' keys.
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// For tests: looks the servers' names up with `resolve` (called on a
    /// blocking thread with `host:port`) instead of the system's resolver,
    /// to make a lookup slow or fail without touching DNS. Addresses
    /// written as IPs are never looked up.
    #[doc(hidden)]
    pub fn resolver(
        mut self,
        resolve: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        self.resolver = Some(Arc::new(resolve));
        self
    }

    /// Every setting a call depends on, checked when the cache is built.
    pub(super) fn check(&self) -> Result<(), Error> {
        if self.servers.iter().all(|s| s.trim().is_empty()) {
            return Err(Error::Config(
                "Memcached needs at least one server, e.g. `memcached://127.0.0.1:11211`".into(),
            ));
        }
        let mut seen: Vec<String> = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            if server.trim().is_empty() {
                return Err(Error::Config(
                    "a Memcached server is empty: write the servers as `host:port,host:port`"
                        .into(),
                ));
            }
            let written = with_port(server).to_ascii_lowercase();
            if seen.contains(&written) {
                return Err(Error::Config(format!(
                    "the Memcached server `{}` is listed twice: list each server once",
                    redact(&written)
                )));
            }
            seen.push(written);
        }
        if self.max_ttl < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "Memcached max_ttl is {:?}, under its one-second resolution: give at least one \
                 second (`?max_ttl=1s`, `MemcachedConfig::max_ttl`); the default is 365 days",
                self.max_ttl
            )));
        }
        if self.max_ttl > MAX_TTL_LIMIT {
            return Err(Error::Config(format!(
                "Memcached max_ttl is {} days, past what its 32-bit expiry times can hold: give \
                 at most 3650 days (`?max_ttl=3650d`); the default is 365 days",
                self.max_ttl.as_secs() / 86_400
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config(
                "Memcached max_connections is 0, which would leave every call waiting: give at \
                 least 1 (`?max_connections=16`, the default)"
                    .into(),
            ));
        }
        if self.max_item_bytes == 0 {
            return Err(Error::Config(
                "Memcached max_item_bytes is 0, so nothing could be stored: give the server's \
                 item size limit (`memcached -I`, 1 MiB by default) or leave it unset"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Reads a cache URL (`Cache::from_url`) for this store; returns the
    /// parameters every scheme shares for the cache. Forms:
    /// `memcached://host:11211[,host2:11211...]`, with `max_ttl`,
    /// `max_item_bytes` and `max_connections` (per server) beside the common
    /// parameters.
    pub(crate) fn from_url(url: &mut CacheUrl<'_>) -> Result<(MemcachedConfig, Common), Error> {
        if url.hosts.is_empty() || url.userinfo.is_some() {
            return Err(url.error(
                "name the servers as `memcached://host:11211,host2:11211` (no credentials: this \
                 client has no SASL; see the memcached backend's docs)",
            ));
        }
        let mut config = Self::new(url.hosts.split(','));
        if let Some(d) = url.take_duration("max_ttl")? {
            config = config.max_ttl(d);
        }
        if let Some(n) = url.take_parsed::<usize>("max_item_bytes", "a byte count")? {
            config = config.max_item_bytes(n);
        }
        if let Some(n) = url.take_parsed::<usize>("max_connections", "a number of connections")? {
            config = config.max_connections(n);
        }
        let common = url.finish("max_ttl, max_item_bytes, max_connections")?;
        Ok((config, common))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: MemcachedConfig) -> Result<(), String> {
        config.check().map_err(|e| e.to_string())
    }

    #[test]
    fn settings_no_call_could_live_with_are_refused_with_the_fix() {
        let one = || MemcachedConfig::new(["h:11211"]);
        assert!(check(one()).is_ok());
        for (config, says) in [
            (
                MemcachedConfig::new(Vec::<String>::new()),
                "at least one server",
            ),
            (MemcachedConfig::new(["h:1", " "]), "is empty"),
            (MemcachedConfig::new(["h", "H:11211"]), "listed twice"),
            (one().max_ttl(Duration::from_millis(500)), "?max_ttl=1s"),
            (one().max_ttl(Duration::ZERO), "?max_ttl=1s"),
            (one().max_ttl(Duration::MAX), "?max_ttl=3650d"),
            (one().max_connections(0), "?max_connections="),
            (one().max_item_bytes(0), "item size limit"),
        ] {
            let err = check(config).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        assert!(check(one().max_ttl(Duration::from_secs(1))).is_ok());
        assert!(check(one().max_ttl(MAX_TTL_LIMIT)).is_ok());
    }

    #[test]
    fn debug_shows_no_credentials() {
        let shown = format!("{:?}", MemcachedConfig::new(["u:hunter2@h:11211"]));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
