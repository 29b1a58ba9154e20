//! What of a URL may be shown, and what must be scrubbed: [`redact`] for
//! errors, `Debug` output and logs, and `Secrets` for the messages of the
//! remote stores' client libraries.
//!
//! A leaf on purpose: every backend, URL parsing (`params.rs`) and the
//! error type rely on it, and it relies on nothing else in the crate, so
//! no store has to reach into URL parsing (or the cache) to keep a
//! password out of a message.

/// What [`redact`] shows of a text it cannot read as a URL or a host.
pub(crate) const NOT_SHOWN: &str = "(not shown)";

/// What of a URL may be shown in an error, a `Debug` or a log line: its
/// scheme, hosts and ports (`redis://10.0.0.1:6379`,
/// `memcached://h1:11211,h2:11211`, `postgres://db.internal:5432`), and for
/// SQLite the file path. Never the user name or password, the path (a Redis
/// database number, a PostgreSQL database name), or the query (any value
/// may be a secret: `password=`, `sslpassword=`, a token).
///
/// A text without `://` is read as `[user:password@]host:port[,...]` (how
/// Memcached servers are given). When the URL is malformed so that a
/// password could be read as a host (an `@` after the first `/`, `?` or
/// `#`, as in `redis://u:pa/ss@host`), only the scheme is shown.
pub fn redact(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return shown_hosts(None, Pieces::of(url));
    };
    if !is_scheme(scheme) {
        return NOT_SHOWN.to_owned();
    }
    if scheme == "sqlite" {
        // A file path, which SQLite reads as is; `@` is the one sign that a
        // user info (and so a password) was written into it.
        if after.contains('@') {
            return "sqlite://".to_owned();
        }
        let path = after.split('?').next().unwrap_or("");
        return format!("sqlite://{path}");
    }
    let pieces = Pieces::of(after);
    if pieces.stray_at {
        return format!("{scheme}://");
    }
    format!("{scheme}://{}", shown_hosts(Some(scheme), pieces))
}

/// Letters, digits, `+`, `-` and `.`, starting with a letter.
pub(crate) fn is_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Each host as the `url` crate reads it (`host`, `host:port`, `[::1]:6379`),
/// comma-separated; a host it cannot read is not shown.
fn shown_hosts(scheme: Option<&str>, pieces: Pieces<'_>) -> String {
    if pieces.stray_at {
        return NOT_SHOWN.to_owned();
    }
    pieces
        .hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| match host_and_port(scheme.unwrap_or("x"), h) {
            Ok((host, Some(port))) => format!("{host}:{port}"),
            Ok((host, None)) => host,
            Err(_) => NOT_SHOWN.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One host of a host list, through the `url` crate.
pub(crate) fn host_and_port(
    scheme: &str,
    host: &str,
) -> Result<(String, Option<u16>), url::ParseError> {
    let parsed = url::Url::parse(&format!("{scheme}://{host}"))?;
    Ok((parsed.host_str().unwrap_or("").to_owned(), parsed.port()))
}

/// The text after `scheme://`, cut as RFC 3986 cuts it: the authority ends
/// at the first `/`, `?` or `#`, and its user info at the authority's last
/// `@`. The hosts are split on `,` by the callers that take several (a
/// Redis Cluster, Memcached servers), which `url::Url` cannot parse as one.
pub(crate) struct Pieces<'a> {
    /// `user:password`, as written.
    pub(crate) userinfo: Option<&'a str>,
    /// `host:port` or `h1:p1,h2:p2`.
    pub(crate) hosts: &'a str,
    /// From the first `/`, `?` or `#` on.
    pub(crate) tail: &'a str,
    /// An `@` in the tail: a password with a raw `/`, `?` or `#` (or an `@`
    /// in a parameter value), so that the "hosts" may be part of the
    /// password. Nothing of such a URL but its scheme is shown.
    pub(crate) stray_at: bool,
}

impl<'a> Pieces<'a> {
    pub(crate) fn of(after_scheme: &'a str) -> Pieces<'a> {
        let end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        let (authority, tail) = after_scheme.split_at(end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        Pieces {
            userinfo,
            hosts,
            tail,
            stray_at: tail.contains('@'),
        }
    }
}

#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "memcached"
))]
pub(crate) use self::scrub::Secrets;

/// Removing secrets from the messages of the remote stores' client libraries.
#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "memcached"
))]
mod scrub {
    use std::fmt;

    use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

    use super::Pieces;

    /// The password of a `user:password` user info.
    fn password_in(userinfo: &str) -> Option<&str> {
        userinfo.split_once(':').map(|(_, password)| password)
    }

    /// The characters the `url` crate percent-encodes in a user info, so that
    /// a password can be recognised as the `url` crate writes it back.
    const USERINFO: &AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'/')
        .add(b':')
        .add(b';')
        .add(b'=')
        .add(b'@')
        .add(b'[')
        .add(b'\\')
        .add(b']')
        .add(b'^')
        .add(b'|');

    /// The secret-bearing parts of some URLs (passwords and query values), in
    /// every form a client library may echo them: as written, percent-decoded
    /// (`+` as a space or not), and percent-encoded the ways URLs and forms
    /// encode. The one way every backend removes secrets from a library's
    /// message: exact matching of the password as given is not enough, since
    /// redis-rs and sqlx decode it and the `url` crate re-encodes it.
    ///
    /// Every remote backend (Redis, SQL, Memcached) builds one from every
    /// URL or server it is given and passes every message of its client
    /// library through [`scrub`](Secrets::scrub) before it goes into an
    /// error or a log line.
    ///
    /// A password written carelessly (a raw `/`, `?`, `#` or `@`) is found both
    /// where the URL grammar ends it and where its writer meant it to end (the
    /// last `@`), so it is scrubbed whichever way a library reads the URL.
    #[derive(Clone, Default)]
    pub(crate) struct Secrets(Vec<String>);

    impl fmt::Debug for Secrets {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Secrets([redacted; {}])", self.0.len())
        }
    }

    impl Secrets {
        /// The secrets of these URLs (or `[user:password@]host:port` texts).
        pub(crate) fn of<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Secrets {
            let mut parts: Vec<&str> = Vec::new();
            let urls: Vec<S> = urls.into_iter().collect();
            for url in &urls {
                let url = url.as_ref();
                let after = url.split_once("://").map_or(url, |(_, after)| after);
                parts.extend(Pieces::of(after).userinfo.and_then(password_in));
                parts.extend(after.rsplit_once('@').and_then(|(u, _)| password_in(u)));
                if let Some((_, query)) = after.split_once('?') {
                    parts.push(query);
                    for pair in query.split(['&', '#']) {
                        parts.extend(pair.split_once('=').map(|(_, value)| value));
                    }
                }
            }
            let mut forms: Vec<String> = Vec::new();
            for part in parts.into_iter().filter(|p| !p.is_empty()) {
                let decoded = percent_decode_str(part).decode_utf8_lossy().into_owned();
                let form_decoded = percent_decode_str(&part.replace('+', "%20"))
                    .decode_utf8_lossy()
                    .into_owned();
                for text in [part.to_owned(), decoded, form_decoded] {
                    forms.extend([
                        utf8_percent_encode(&text, USERINFO).to_string(),
                        utf8_percent_encode(&text, NON_ALPHANUMERIC).to_string(),
                        url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
                        text,
                    ]);
                }
            }
            forms.retain(|f| !f.is_empty());
            // Longest first, so that no shorter form leaves part of a longer one.
            forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            forms.dedup();
            Secrets(forms)
        }

        /// `message` with every form of every secret replaced by `***`.
        pub(crate) fn scrub(&self, message: &str) -> String {
            self.0.iter().fold(message.to_owned(), |m, secret| {
                m.replace(secret.as_str(), "***")
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every character a careless password may hold raw, where the URL
    /// grammar gives it a meaning, and `%`, which decoders read.
    pub(crate) const PASSWORDS: [&str; 8] = [
        "pa/ss-word",
        "pa?ss-word",
        "pa#ss-word",
        "pa@ss-word",
        "pa:ss-word",
        "pa%ss-word",
        "pa%2Fss-word",
        "p/a?s#s@w:o%rd",
    ];

    #[test]
    fn redaction_shows_scheme_hosts_and_ports_only() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0?x=1"),
            "redis://host:6379"
        );
        assert_eq!(redact("redis://:s3cret@host"), "redis://host");
        assert_eq!(redact("memory://?max_bytes=1"), "memory://");
        assert_eq!(
            redact("redis+cluster://u:p@h1:7000,h2:7000"),
            "redis+cluster://h1:7000,h2:7000"
        );
        assert_eq!(
            redact("postgres://app:pw@db.internal/app?sslmode=verify-full&password=x"),
            "postgres://db.internal"
        );
        assert_eq!(
            redact("sqlite:///var/cache/app.db?table=t&password=x"),
            "sqlite:///var/cache/app.db"
        );
        assert_eq!(redact("sqlite://u:pw@h/app.db"), "sqlite://");
        assert_eq!(redact("u:pw@127.0.0.1:11211"), "127.0.0.1:11211");
        // Without an `@` nothing is a password; a "port" that is not one is
        // not shown either.
        assert_eq!(redact("redis://u:pw"), "redis://(not shown)");
        assert_eq!(redact("not a url"), "(not shown)");
        assert_eq!(redact("u:pw://h"), "(not shown)");
    }

    #[cfg(any(
        feature = "redis",
        feature = "postgres",
        feature = "sqlite",
        feature = "memcached"
    ))]
    #[test]
    fn scrubbing_removes_every_form_of_a_secret() {
        let secrets = Secrets::of(["redis://u:p%2Fa%40ss%20w@h:1/0?password=t0k%2Ben+x&db=1"]);
        for form in [
            "p%2Fa%40ss%20w",
            "p/a@ss w",
            "p%2Fa%40ss+w",
            "t0k%2Ben+x",
            "t0k+en x",
            "t0k+en+x",
            "t0k%2Ben%20x",
        ] {
            assert_eq!(secrets.scrub(&format!("<{form}>")), "<***>", "{form}");
        }
        assert!(!format!("{secrets:?}").contains("ss"));
        // A careless password: scrubbed where its writer meant it to end.
        for password in PASSWORDS {
            let url = format!("postgres://u:{password}@h:1/db");
            let scrubbed = Secrets::of([&url]).scrub(&format!("echo {url}"));
            assert!(!scrubbed.contains("ss-word"), "{scrubbed}");
        }
        let secrets = Secrets::of(["u:pa/ss-word@h:11211", "h2:11211"]);
        assert_eq!(secrets.scrub("pa/ss-word pa%2Fss-word"), "*** ***");
        // The user name and the hosts stay: they are what the reader needs.
        assert_eq!(
            Secrets::of(["redis://app:pw@h:1"]).scrub("app@h:1"),
            "app@h:1"
        );
    }
}
