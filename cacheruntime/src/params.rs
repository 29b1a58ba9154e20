//! Reading a cache URL: cutting it into scheme, user info, hosts and path,
//! and walking its query parameters, each taken at most once, with the
//! parameters every scheme shares (`namespace`, `default_ttl`, `op_timeout`,
//! `max_entry_bytes`; durations through the `cacheduration` crate).
//!
//! Each backend reads its own parameters with these helpers, in its config
//! type (`RedisConfig::from_url`, ...); `config.rs` picks the backend
//! by scheme and builds the cache. This module depends on no backend and
//! on no part of the cache, so the backends can use it.

use std::time::Duration;

use crate::secrets::{host_and_port, is_scheme, redact, Pieces, NOT_SHOWN};
use crate::Error;

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
            Some(v) => cacheduration::parse(&v).map(Some).ok_or_else(|| {
                self.error(format!(
                    "`{name}` is not a duration; write seconds (`300`) or `90s`, `10m`, `1h`, `250ms`"
                ))
            }),
        }
    }

    /// A byte size: a count (`33554432`) or with a unit (`32MiB`, `64KB`;
    /// the `bytesize` crate's grammar: `KiB` and `MiB` are powers of two,
    /// `KB` and `MB` of ten).
    pub(crate) fn take_bytes(&mut self, name: &str) -> Result<Option<u64>, Error> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| Some(b.as_u64()))
                .map_err(|_| {
                    self.error(format!(
                        "`{name}` is not a byte size; write a count (`33554432`) or `32MiB`, `512KiB`, `1GiB`"
                    ))
                }),
        }
    }

    /// Takes the parameters every scheme shares, then fails on any
    /// parameter nothing took (`known` lists the scheme's own, for that
    /// error). The last step of reading a URL, whichever the scheme.
    pub(crate) fn finish(&mut self, known: &str) -> Result<Common, Error> {
        let common = Common {
            namespace: self.take("namespace"),
            default_ttl: self.take_duration("default_ttl")?,
            op_timeout: self.take_duration("op_timeout")?,
            max_entry_bytes: self.take_parsed::<usize>("max_entry_bytes", "a byte count")?,
            compress_above: self.take_parsed::<usize>("compress_above", "a byte count")?,
            compress_level: self.take_parsed::<i32>("compress_level", "a zstd level (1 to 22)")?,
            near: self.take_bytes("near")?,
            near_check: self.take_duration("near_check")?,
            near_ttl: self.take_duration("near_ttl")?,
            record_written_at: self
                .take_parsed::<bool>("record_written_at", "`true` or `false`")?,
        };
        match self.params.iter().find(|(_, _, used)| !used) {
            None => Ok(common),
            Some((k, _, _)) => Err(self.error(format!(
                "unknown query parameter {}; `{}://` accepts {known}, namespace, default_ttl, op_timeout, max_entry_bytes, compress_above, compress_level, near, near_check, near_ttl, record_written_at",
                shown_name(k),
                self.scheme
            ))),
        }
    }
}

/// The parameters every scheme accepts, as a URL gave them: what the cache
/// is built with beside its store (`config.rs` hands them to the builder).
#[derive(Debug, Default)]
pub(crate) struct Common {
    pub(crate) namespace: Option<String>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) op_timeout: Option<Duration>,
    pub(crate) max_entry_bytes: Option<usize>,
    /// Needs the `compression` feature (`config.rs` says so otherwise).
    pub(crate) compress_above: Option<usize>,
    pub(crate) compress_level: Option<i32>,
    /// The near tier's bytes (`?near=32MiB`).
    pub(crate) near: Option<u64>,
    pub(crate) near_check: Option<Duration>,
    pub(crate) near_ttl: Option<Duration>,
    /// Entries record when they were written (format 3).
    pub(crate) record_written_at: Option<bool>,
}

/// A parameter's name in backquotes, if it looks like one; otherwise not
/// shown, since it may be a piece of a password written with a raw `?`.
pub(crate) fn shown_name(name: &str) -> String {
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::tests::PASSWORDS;

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
                    u.take_parsed::<u64>("max_bytes", "a byte count")?;
                    u.finish("max_bytes")
                })
                .map(|_| ())
                .expect_err(url);
            assert!(!text(&err).contains("hunter2"), "{url} -> {err:?}");
        }
        // Names are shown, so the error still names what to fix.
        let err = CacheUrl::parse("memory://?password=x")
            .and_then(|mut u| u.finish("max_bytes"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("`password`"), "{err}");
    }
}
