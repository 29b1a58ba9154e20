//! Which store `cachectl` talks to, and with which signing keys: the
//! application's environment (`CACHE_URL`, `CACHE_URL_<NAME>`,
//! `CACHE_SIGNING_KEY[_<NAME>]`), or `--url`.

use cacheruntime::Cache;

use crate::{Exit, Failure};

/// The cache of `--url`, of the named cache `--cache NAME`, or of
/// `CACHE_URL`. An in-process store (`memory://`, `none://`, or no URL at
/// all) is refused: it lives inside the application, out of reach.
pub(crate) async fn cache(url: Option<&str>, name: Option<&str>) -> Result<Cache, Failure> {
    let (url, keys_var) = match (url, name) {
        (Some(url), _) => (url.to_owned(), "CACHE_SIGNING_KEY".to_owned()),
        (None, Some(name)) => {
            let upper = name.to_ascii_uppercase();
            let var = format!("CACHE_URL_{upper}");
            let url = std::env::var(&var).map_err(|_| {
                Failure(
                    Exit::BadInput,
                    format!("{var} is not set: set it, or pass --url"),
                )
            })?;
            (url, format!("CACHE_SIGNING_KEY_{upper}"))
        }
        (None, None) => {
            let url = std::env::var("CACHE_URL").unwrap_or_default();
            (url, "CACHE_SIGNING_KEY".to_owned())
        }
    };
    let in_process = || {
        Failure(
            Exit::BadInput,
            "no shared store to reach: a memory store lives inside the application's \
             process (and a disabled one stores nothing); set CACHE_URL (or pass --url) to \
             the application's Redis, PostgreSQL, SQLite or Memcached URL"
                .into(),
        )
    };
    let url = url.trim();
    if url.is_empty() {
        return Err(in_process());
    }
    let keys = signing_keys(&keys_var).or_else(|| signing_keys("CACHE_SIGNING_KEY"));
    let url = looking_only(url);
    let cache = Cache::from_url_signed(&url, keys.unwrap_or_default()).await?;
    // Whatever the scheme's spelling (`memory://`, `mem://`, `none://`,
    // `disabled://`...): decided by the store the URL made.
    if matches!(cache.backend_name(), "memory" | "disabled") {
        return Err(in_process());
    }
    Ok(cache)
}

/// An operator's look at a SQL store creates nothing: not the table
/// (`auto_create=false`), not a SQLite database file (`mode=rw`), so a
/// mistyped path or table name is an error rather than an empty listing.
/// Either parameter given in the URL is kept as given.
fn looking_only(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        // Not a URL: the library says what is wrong with it.
        return url.to_owned();
    };
    let sqlite = parsed.scheme() == "sqlite";
    if !sqlite && !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return url.to_owned();
    }
    let has = |name: &str| parsed.query_pairs().any(|(k, _)| k == name);
    let mut added = Vec::new();
    if !has("auto_create") {
        added.push("auto_create=false");
    }
    if sqlite && !has("mode") {
        added.push("mode=rw");
    }
    if added.is_empty() {
        return url.to_owned();
    }
    let joint = if parsed.query().is_some() { '&' } else { '?' };
    format!("{url}{joint}{}", added.join("&"))
}

/// The comma-separated keys of `var`, as the library reads them.
fn signing_keys(var: &str) -> Option<Vec<String>> {
    let raw = std::env::var(var).ok()?;
    let keys: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    (!keys.is_empty()).then_some(keys)
}

#[cfg(test)]
mod tests {
    use super::looking_only;

    #[test]
    fn sql_urls_are_opened_to_look_not_to_create() {
        assert_eq!(
            looking_only("sqlite:///var/cache/app.db"),
            "sqlite:///var/cache/app.db?auto_create=false&mode=rw"
        );
        assert_eq!(
            looking_only("postgres://u:p@127.0.0.1/app?table=c"),
            "postgres://u:p@127.0.0.1/app?table=c&auto_create=false"
        );
        let given = "sqlite:///x.db?mode=rwc&auto_create=true";
        assert_eq!(looking_only(given), given, "what the operator asked");
        let redis = "redis://127.0.0.1:6379/0";
        assert_eq!(looking_only(redis), redis);
    }
}
