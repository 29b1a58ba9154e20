//! Named caches, Django's `CACHES` aliases: a default cache and any number
//! of others by name, so that third-party blobs live in a store apart from
//! the job queue's Redis. Configured from the environment (`CACHE_URL`,
//! and `CACHE_URL_<NAME>` for each named one) or in code, installed once
//! for the process, and picked by `#[cached(cache = "feeds")]`.
//!
//! A function names its cache by a string, so a name can be wrong only at
//! run time: the first call of such a function looks the name up, and an
//! unknown name is an error logged once with the names that exist, counted
//! in the default cache's `Stats::errors`, and the function computes
//! without a cache (as with a cache that fails: never a failed request).
//! [`Caches::get`] is the same check at startup, as an `Err`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::{Cache, Error};

/// The default cache and the named ones, Django's `CACHES` aliases: the
/// default from `CACHE_URL`, the others from `CACHE_URL_<NAME>` (or a
/// builder), installed once for the process and picked by
/// `#[cached(cache = "feeds")]`. An unknown name in a function is an error
/// logged once with the names there are, counted in the default cache's
/// `Stats::errors`, and the function computes without a cache (never a
/// failed call); [`Caches::get`] is the same check at startup.
///
/// ```
/// use cacheruntime::{cached, Cache, Caches};
///
/// #[cached(key = "feed:{url}", ttl = "10m", cache = "feeds")]
/// async fn feed(url: &str) -> String {
///     format!("<rss from {url}>")
/// }
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> Result<(), cacheruntime::Error> {
///     // In production `Caches::from_env()`: CACHE_URL, CACHE_URL_FEEDS, ...
///     let feeds = Cache::from_url("memory://?namespace=feeds").await?;
///     let caches = Caches::builder()
///         .default(Cache::memory())
///         .add("feeds", feeds.clone())
///         .build()?;
///     caches.install();
///
///     feed("https://example.test/rss").await;
///     assert_eq!(feeds.stats().misses, 1); // stored in the feeds cache
///     assert!(Caches::installed().unwrap().get("feds").is_err()); // lists "feeds"
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Caches {
    default: Cache,
    named: BTreeMap<String, Cache>,
}

/// Builds [`Caches`] in code; see [`Caches::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct CachesBuilder {
    default: Option<Cache>,
    named: Vec<(String, Cache)>,
}

impl CachesBuilder {
    /// The default cache (functions without `cache = ...`); a process-wide
    /// [`Cache::memory`] if not given.
    pub fn default(mut self, cache: Cache) -> Self {
        self.default = Some(cache);
        self
    }

    /// A named cache: `name` is lower-case ASCII letters, digits and `_`,
    /// as `CACHE_URL_<NAME>` spells it in upper case.
    pub fn add(mut self, name: impl Into<String>, cache: Cache) -> Self {
        self.named.push((name.into(), cache));
        self
    }

    /// Checks the names: valid, each given once, none `default`.
    pub fn build(self) -> Result<Caches, Error> {
        let mut named = BTreeMap::new();
        for (name, cache) in self.named {
            check_name(&name)?;
            if named.insert(name.clone(), cache).is_some() {
                return Err(Error::Config(format!(
                    "the cache name `{name}` is given twice: give each name once"
                )));
            }
        }
        // Named once every name is checked: a refused set names nothing.
        for (name, cache) in &named {
            cache.engine.name_once(name);
        }
        Ok(Caches {
            default: self.default.unwrap_or_else(Cache::memory),
            named,
        })
    }
}

/// A name `#[cached(cache = "...")]` and `CACHE_URL_<NAME>` can both spell.
fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Error::Config(format!(
            "the cache name {name:?} is not lower-case letters, digits and `_`: \
             name it as `CACHE_URL_<NAME>` spells it, in lower case (`feeds` for CACHE_URL_FEEDS)"
        )));
    }
    if name == "default" {
        return Err(Error::Config(
            "`default` names the default cache: set it with CachesBuilder::default \
             (or CACHE_URL), not as a named cache"
                .to_owned(),
        ));
    }
    Ok(())
}

impl Caches {
    /// Starts a registry in code.
    pub fn builder() -> CachesBuilder {
        <CachesBuilder as Default>::default()
    }

    /// The default cache from `CACHE_URL` (as [`Cache::from_env`]: memory
    /// when unset) and one named cache per `CACHE_URL_<NAME>` variable
    /// (`CACHE_URL_FEEDS` is `feeds`). Signing keys come from
    /// `CACHE_SIGNING_KEY_<NAME>`, or `CACHE_SIGNING_KEY` when that is
    /// unset. A URL that does not parse or a store that cannot be set up is
    /// an error naming the variable.
    pub async fn from_env() -> Result<Caches, Error> {
        let default = Cache::from_env().await?;
        let mut builder = Caches::builder().default(default);
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter_map(|(k, v)| Some((k.strip_prefix("CACHE_URL_")?.to_owned(), v)))
            .collect();
        vars.sort();
        for (upper, url) in vars {
            let name = upper.to_ascii_lowercase();
            check_name(&name).map_err(|e| Error::Config(format!("CACHE_URL_{upper}: {e}")))?;
            let keys = signing_keys(&format!("CACHE_SIGNING_KEY_{upper}"))
                .or_else(|| signing_keys("CACHE_SIGNING_KEY"))
                .unwrap_or_default();
            let cache = crate::config::build(url.trim(), keys)
                .await
                .map_err(|e| Error::Config(format!("CACHE_URL_{upper}: {e}")))?;
            builder = builder.add(name, cache);
        }
        builder.build()
    }

    /// The default cache.
    pub fn default_cache(&self) -> &Cache {
        &self.default
    }

    /// The cache named `name` (`"default"` is the default one), or an error
    /// listing the names there are.
    pub fn get(&self, name: &str) -> Result<&Cache, Error> {
        if name == "default" {
            return Ok(&self.default);
        }
        self.named
            .get(name)
            .ok_or_else(|| Error::Config(self.unknown(name)))
    }

    /// The named caches' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.named.keys().map(String::as_str)
    }

    fn unknown(&self, name: &str) -> String {
        let known: Vec<&str> = std::iter::once("default").chain(self.names()).collect();
        format!(
            "no cache named `{name}`; the caches are: {}. Set CACHE_URL_{} or add it with \
             Caches::builder().add({name:?}, ..)",
            known.join(", "),
            name.to_ascii_uppercase()
        )
    }

    /// Makes these the process's caches: the default one is installed as
    /// [`set_default`](crate::set_default) does, and `#[cached(cache =
    /// "name")]` functions find theirs here. Call it once at startup;
    /// replacing them works, but the replaced handles are kept alive for
    /// the rest of the process (calls may hold them), as with `set_default`.
    pub fn install(self) {
        crate::default::set_default(self.default.clone());
        let new = Box::into_raw(Box::new(self));
        INSTALLED.swap(new, Ordering::AcqRel);
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }

    /// The caches installed with [`install`](Self::install), if any.
    pub fn installed() -> Option<&'static Caches> {
        let p = INSTALLED.load(Ordering::Acquire);
        // SAFETY: pointers stored in INSTALLED come from Box::into_raw and
        // are never freed, so they are valid for 'static.
        (!p.is_null()).then(|| unsafe { &*p })
    }
}

fn signing_keys(var: &str) -> Option<Vec<Vec<u8>>> {
    let raw = std::env::var(var).ok()?;
    let keys: Vec<Vec<u8>> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| k.as_bytes().to_vec())
        .collect();
    (!keys.is_empty()).then_some(keys)
}

static INSTALLED: AtomicPtr<Caches> = AtomicPtr::new(std::ptr::null_mut());
/// Bumped by every install, so that a function's resolved cache follows.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A `#[cached(cache = "name")]` function's cache: the name resolved once
/// per install, so a call costs two atomic loads. Not public API.
#[derive(Debug)]
pub struct NamedCache {
    name: &'static str,
    /// The cache and the install generation it was resolved under,
    /// published together (null: never resolved). Each resolution leaks
    /// one small record: once per install per function.
    resolved: AtomicPtr<Resolved>,
}

#[derive(Debug)]
struct Resolved {
    generation: u64,
    cache: &'static Cache,
}

impl NamedCache {
    /// A slot for `name`.
    pub const fn new(name: &'static str) -> Self {
        NamedCache {
            name,
            resolved: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The cache of that name, or a disabled cache when there is none (the
    /// error logged once per install, and counted).
    #[inline]
    pub fn get(&'static self) -> &'static Cache {
        let generation = GENERATION.load(Ordering::Acquire);
        let p = self.resolved.load(Ordering::Acquire);
        // SAFETY: non-null pointers here come from Box::leak below and are
        // never freed.
        if let Some(r) = unsafe { p.as_ref() } {
            if r.generation == generation {
                return r.cache;
            }
        }
        self.resolve(generation)
    }

    #[cold]
    fn resolve(&'static self, generation: u64) -> &'static Cache {
        let found: &'static Cache = match Caches::installed() {
            Some(caches) => match caches.get(self.name) {
                Ok(cache) => cache,
                Err(e) => unknown(self.name, &e, caches.default_cache()),
            },
            None => {
                let e = Error::Config(format!(
                    "no cache named `{}`: no caches are installed; call \
                     Caches::from_env().await?.install() at startup (CACHE_URL_{} names it)",
                    self.name,
                    self.name.to_ascii_uppercase()
                ));
                unknown(self.name, &e, crate::default::default_cache())
            }
        };
        let mine: *mut Resolved = Box::leak(Box::new(Resolved {
            generation,
            cache: found,
        }));
        // Publish unless a resolution under a newer install got there
        // first: a slow resolver never puts back a replaced cache.
        let mut current = self.resolved.load(Ordering::Acquire);
        loop {
            // SAFETY: as in `get`.
            let newer = unsafe { current.as_ref() }.is_some_and(|r| r.generation > generation);
            if newer {
                break;
            }
            match self
                .resolved
                .compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        found
    }
}

/// What a function naming an unknown cache uses: a disabled cache, so it
/// computes on every call as without a cache. Logged and counted here,
/// once per resolution.
fn unknown(name: &str, e: &Error, count_in: &Cache) -> &'static Cache {
    static DISABLED: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    tracing::error!(cache = name, error = %e, "#[cached] names an unknown cache; computing without a cache");
    count_in.engine.failed("named cache", e);
    DISABLED.get_or_init(Cache::disabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_unknown_ones_list_the_known() {
        assert!(Caches::builder()
            .add("Feeds", Cache::memory())
            .build()
            .is_err());
        assert!(Caches::builder()
            .add("default", Cache::memory())
            .build()
            .is_err());
        let twice = Caches::builder()
            .add("feeds", Cache::memory())
            .add("feeds", Cache::memory())
            .build();
        assert!(twice.unwrap_err().to_string().contains("twice"));
        let caches = Caches::builder()
            .add("feeds", Cache::memory())
            .add("oembed", Cache::memory())
            .build()
            .unwrap();
        let e = caches.get("feed").unwrap_err().to_string();
        assert!(
            e.contains("default, feeds, oembed") && e.contains("CACHE_URL_FEED"),
            "{e}"
        );
        assert!(caches.get("default").is_ok());
        assert_eq!(caches.names().collect::<Vec<_>>(), ["feeds", "oembed"]);
    }

    /// Runs [`from_env_child`] in a child process with the variables set
    /// (the environment is process-wide: setting it here would race other
    /// tests).
    #[test]
    fn from_env_reads_cache_url_and_each_cache_url_name() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "named::tests::from_env_child"])
            .env("CACHE_URL", "memory://?namespace=main")
            .env("CACHE_URL_FEEDS", "memory://?namespace=feeds")
            .env("CACHE_URL_OEMBED_2", "memory://?namespace=oembed")
            .env(
                "CACHE_SIGNING_KEY_FEEDS",
                "feeds-secret-of-32-bytes-or-so!!",
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
        let bad = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "named::tests::from_env_child_fails"])
            .env("CACHE_URL_FEEDS", "rediss://[::1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&bad.stdout);
        assert!(
            bad.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
    }

    #[tokio::test]
    #[ignore = "run by from_env_reads_cache_url_and_each_cache_url_name"]
    async fn from_env_child() {
        let caches = Caches::from_env().await.unwrap();
        assert_eq!(caches.names().collect::<Vec<_>>(), ["feeds", "oembed_2"]);
        assert_eq!(caches.default_cache().engine.namespace(), "main:");
        let feeds = caches.get("feeds").unwrap();
        assert_eq!(feeds.engine.namespace(), "feeds:");
        assert!(feeds.engine.sealer.signs(), "CACHE_SIGNING_KEY_FEEDS");
        assert!(!caches.get("oembed_2").unwrap().engine.sealer.signs());
    }

    #[tokio::test]
    #[ignore = "run by from_env_reads_cache_url_and_each_cache_url_name"]
    async fn from_env_child_fails() {
        let e = Caches::from_env().await.unwrap_err().to_string();
        assert!(e.contains("CACHE_URL_FEEDS"), "{e}");
    }
}
