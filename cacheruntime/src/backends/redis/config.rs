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
    pub(super) tls_pin_sha256: Option<String>,
    pub(super) tls_insecure: bool,
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
            .field("tls_pin_sha256", &self.tls_pin_sha256)
            .field("tls_insecure", &self.tls_insecure)
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
            tls_pin_sha256: None,
            tls_insecure: false,
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

    /// Accept the server's certificate if, and only if, the SHA-256 of its
    /// leaf certificate (DER) is `sha256`: 64 hex digits, in either case,
    /// with or without `:` between bytes (as `openssl x509 -fingerprint
    /// -sha256` prints it). For managed services with a self-signed
    /// certificate (Heroku): the pin replaces the CA and host name checks;
    /// the handshake's signature is still checked against that certificate.
    /// `rediss://` on one server only; a malformed pin is refused by
    /// `RedisBackend::new`.
    pub fn tls_pin_sha256(mut self, sha256: impl Into<String>) -> Self {
        self.tls_pin_sha256 = Some(sha256.into());
        self
    }

    /// Accept any server certificate: **the connection can be intercepted**
    /// by anyone on the path, who then reads and writes the cache (and
    /// sees its password). Logged as a warning at every connection; prefer
    /// [`tls_pin_sha256`](Self::tls_pin_sha256). `rediss://` on one server
    /// only.
    pub fn tls_insecure(mut self, insecure: bool) -> Self {
        self.tls_insecure = insecure;
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
    /// `key_file`, `tls_pin_sha256`, `tls_insecure` and `max_ttl` beside the
    /// common parameters.
    pub(crate) fn from_url(url: &mut CacheUrl<'_>) -> Result<(RedisConfig, Common), Error> {
        let ca_file = url.take("ca_file");
        let cert_file = url.take("cert_file");
        let key_file = url.take("key_file");
        let pin = url.take("tls_pin_sha256");
        let insecure = url.take("tls_insecure");
        let max_ttl = url.take_duration("max_ttl")?;
        let common =
            url.finish("ca_file, cert_file, key_file, tls_pin_sha256, tls_insecure, max_ttl")?;
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
        let insecure = match insecure.as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => return Err(url.error("`tls_insecure` takes `true` or `false`")),
        };
        if let Some(pin) = &pin {
            parse_pin(pin).map_err(|m| url.error(m))?;
        }
        if let Some(why) = refuse_trust(
            tls,
            config.cluster,
            pin.is_some(),
            insecure,
            ca_file.is_some(),
        ) {
            return Err(url.error(why));
        }
        if let Some(pin) = pin {
            config = config.tls_pin_sha256(pin);
        }
        config = config.tls_insecure(insecure);
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

/// The pin's expected form, for errors.
const PIN_FORM: &str = "`tls_pin_sha256` takes the SHA-256 of the server's certificate (DER) as \
                        64 hex digits, with or without `:` between bytes, e.g. \
                        `openssl x509 -in server.pem -noout -fingerprint -sha256`";

/// Reads a certificate pin: 32 bytes as hex, any case, `:` between bytes
/// allowed (or none at all).
pub(super) fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let digits: String = pin.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PIN_FORM.to_owned());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Why a pin or `tls_insecure` cannot be used as configured, if it cannot.
pub(super) fn refuse_trust(
    tls: bool,
    cluster: bool,
    pin: bool,
    insecure: bool,
    ca_file: bool,
) -> Option<&'static str> {
    if !pin && !insecure {
        return None;
    }
    Some(if pin && insecure {
        "`tls_pin_sha256` and `tls_insecure` exclude each other: keep the pin, which still \
         refuses every other certificate"
    } else if !tls {
        "`tls_pin_sha256` and `tls_insecure` are TLS settings: use `rediss://`"
    } else if cluster {
        "`tls_pin_sha256` and `tls_insecure` are for one server: on a cluster, give the CA \
         with `ca_file`"
    } else if ca_file {
        "`ca_file` with `tls_pin_sha256` or `tls_insecure`: the pin (or the insecure switch) \
         replaces the CA check, so give one or the other"
    } else {
        return None;
    })
}
