//! Properties over arbitrary input: the envelope decoder never panics and
//! never returns a value it was not given, and distinct arguments never
//! render the same key. Plus: secrets never reach log output, and no form
//! of a URL's password or query values shows in an error, a `Debug` or a log
//! line, whichever path parses the URL.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheruntime::codec::{BincodeCodec, Codec};
use cacheruntime::envelope::{tag_section, Header, FLAG_TAGGED, HEADER_LEN, PREVIOUS_VERSION};
use cacheruntime::key::{escape, KeyBuilder};
use cacheruntime::{cached, Cache};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte string is an error or a well-formed header and payload.
    #[test]
    fn envelope_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok((header, payload)) = Header::read(&bytes) {
            prop_assert!(header.stale_until_ms >= header.fresh_until_ms);
            // A tagged entry's section sits between the header and payload.
            let section = if header.flags & FLAG_TAGGED != 0 {
                let section = tag_section(&bytes);
                prop_assert!(section.is_some());
                2 + section.map_or(0, <[u8]>::len)
            } else {
                0
            };
            // Format 2's header lacks format 3's 8-byte written-at.
            let header_len = match bytes[0] {
                PREVIOUS_VERSION => HEADER_LEN - 8,
                _ => HEADER_LEN,
            };
            prop_assert_eq!(header.written_ms.is_some(), header_len == HEADER_LEN);
            prop_assert_eq!(payload.len() + header_len + section, bytes.len());
        }
    }

    /// Decoding arbitrary bytes as common cached shapes errs or succeeds,
    /// never panics or allocates past the limit.
    #[test]
    fn decoder_survives_arbitrary_payloads(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = BincodeCodec.decode::<Vec<i64>>(&bytes);
        let _ = BincodeCodec.decode::<String>(&bytes);
        let _ = BincodeCodec.decode::<Option<Vec<String>>>(&bytes);
        let _ = BincodeCodec.decode::<(u64, Vec<u8>, bool)>(&bytes);
    }

    /// What was encoded decodes back to exactly itself.
    #[test]
    fn codec_round_trips(v in proptest::collection::vec(any::<i64>(), 0..64), s in ".*") {
        let mut out = Vec::new();
        BincodeCodec.encode(&(v.clone(), s.clone()), &mut out).unwrap();
        prop_assert_eq!(BincodeCodec.decode::<(Vec<i64>, String)>(&out).unwrap(), (v, s));
    }

    /// `pair:{a}:{b}` renders distinct keys for distinct (a, b).
    #[test]
    fn distinct_arguments_render_distinct_keys(
        a1 in ".{0,12}", b1 in ".{0,12}", a2 in ".{0,12}", b2 in ".{0,12}",
    ) {
        let render = |a: &str, b: &str| {
            let mut k = KeyBuilder::new();
            k.literal("pair:");
            k.value(a);
            k.literal(":");
            k.value(b);
            k.finish()
        };
        if (a1.as_str(), b1.as_str()) != (a2.as_str(), b2.as_str()) {
            prop_assert_ne!(render(&a1, &b1), render(&a2, &b2));
        }
        // Escaped values never contain a segment separator, whitespace or
        // control characters.
        let e = escape(&a1);
        prop_assert!(!e.contains(':'));
        prop_assert!(!e.chars().any(|c| c.is_whitespace() || c.is_control()));
    }
}

/// Collects everything `tracing` prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cached(key = "page:{id}", ttl = 60, cache = cache)]
async fn page(cache: &Cache, id: u32) -> String {
    format!("page {id}")
}

#[test]
fn secrets_never_reach_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            // A cache whose store is unreachable logs its failures; built
            // with a password in the URL and a signing key.
            let cache = Cache::builder()
                .signing_keys(["signing-secret-0123456789"])
                .op_timeout(Duration::from_millis(50))
                .build()
                .unwrap();
            let _ = page(&cache, 1).await;
            #[cfg(feature = "redis")]
            {
                let remote =
                    Cache::from_url("redis://app:hunter2-secret@127.0.0.1:1/0?op_timeout=50ms")
                        .await
                        .unwrap();
                for i in 0..3 {
                    assert_eq!(page(&remote, i).await, format!("page {i}"));
                }
                tracing::info!(cache = ?remote, "debug-printed cache");
            }
            tracing::info!(cache = ?cache, "debug-printed cache");
        });
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("debug-printed cache"),
        "logs were captured: {text}"
    );
    for secret in ["hunter2-secret", "signing-secret"] {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
    #[cfg(feature = "redis")]
    assert!(
        text.contains("cache operation failed"),
        "failures are logged: {text}"
    );
}

/// A secret drawn from every printable ASCII character, around a marker
/// (`Q7`) that no message, host or log line contains: a match is the secret,
/// never a port or a word that happens to equal it.
fn secret() -> impl Strategy<Value = String> {
    ("[ -~]{0,8}", "[ -~]{0,8}").prop_map(|(a, b)| format!("{a}Q7{b}"))
}

/// Every byte but letters and digits as `%XX`: a URL can carry anything so.
fn encoded(secret: &str) -> String {
    percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The characters a URL's user info must have encoded (what the `url`
/// crate encodes when it writes one back).
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
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

/// Every form a secret may take in a message: as written, encoded the ways
/// URLs and forms encode it, and decoded; only forms of at least 4
/// characters, since a shorter one matches by chance.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        encoded(secret),
        percent_encoding::utf8_percent_encode(secret, USERINFO).to_string(),
        encoded(secret).replace("%20", "+"),
        percent_encoding::percent_decode_str(secret)
            .decode_utf8_lossy()
            .into_owned(),
    ];
    forms.retain(|f| f.len() >= 4);
    forms.sort();
    forms.dedup();
    forms
}

/// Uses a cache the way an application does (a direct call and a
/// `#[cached]` function that logs its failures), keeping what it printed.
async fn use_cache(cache: &Cache, shown: &mut Vec<String>) {
    shown.push(format!("{cache:?}"));
    if let Err(e) = cache.get::<u8>("k").await {
        shown.push(format!("{e} {e:?}"));
    }
    let _ = page(cache, 1).await;
}

/// A cache on `backend` with a short op timeout.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
fn direct(backend: impl cacheruntime::Backend) -> Cache {
    Cache::builder()
        .backend(backend)
        .op_timeout(Duration::from_millis(20))
        .build()
        .unwrap()
}

/// Keeps what a constructor's result prints.
fn keep<T: std::fmt::Debug>(
    result: Result<T, cacheruntime::Error>,
    shown: &mut Vec<String>,
) -> Option<T> {
    match result {
        Ok(v) => {
            shown.push(format!("{v:?}"));
            Some(v)
        }
        Err(e) => {
            shown.push(format!("{e} {e:?}"));
            None
        }
    }
}

/// Feeds `password` and a secret query `value`, as written, to every way a
/// URL gets parsed: `Cache::from_url` for each scheme, each backend's config
/// and constructor, and the first operation (where SQL pools and Redis
/// connections parse the URL again). Stores are unreachable loopback ports.
async fn every_parse_path(password: &str, value: &str, shown: &mut Vec<String>) {
    let (p, v) = (password, value);
    let cache_urls = [
        format!("memory://u:{p}@h?max_bytes=1"),
        format!("memory://?max_bytes=1&password={v}"),
        format!("none://:{p}@h"),
        format!("none://?token={v}"),
        format!("redis://u:{p}@127.0.0.1:1/0?op_timeout=20ms"),
        format!("redis://:{p}@127.0.0.1:1?op_timeout=20ms&password={v}"),
        format!("rediss://u:{p}@127.0.0.1:1/0?op_timeout=20ms"),
        format!("redis+cluster://u:{p}@127.0.0.1:1,127.0.0.1:2?op_timeout=20ms"),
        format!("rediss+cluster://u:{p}@127.0.0.1:1,127.0.0.1:2?auth={v}"),
        format!("postgres://u:{p}@127.0.0.1:1/db?op_timeout=20ms"),
        format!("postgres://u:{p}@127.0.0.1:1/db?sslpassword={v}"),
        format!("sqlite://u:{p}@127.0.0.1:1/x.db?op_timeout=20ms"),
        format!("sqlite:///nonexistent-dir/x.db?op_timeout=20ms&password={v}"),
        format!("memcached://u:{p}@127.0.0.1:1"),
        format!("memcached://127.0.0.1:1?op_timeout=20ms&token={v}"),
    ];
    for url in &cache_urls {
        if let Some(cache) = keep(Cache::from_url(url).await, shown) {
            use_cache(&cache, shown).await;
        }
    }
    #[cfg(feature = "redis")]
    {
        use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
        let configs = [
            RedisConfig::new(format!("redis://u:{p}@127.0.0.1:1/0")),
            RedisConfig::new(format!("rediss://:{p}@127.0.0.1:1?password={v}")),
            RedisConfig::cluster([
                format!("redis://u:{p}@127.0.0.1:1"),
                format!("redis://u:{p}@127.0.0.1:2"),
            ]),
        ];
        for config in configs {
            shown.push(format!("{config:?}"));
            if let Some(backend) = keep(RedisBackend::new(config), shown) {
                use_cache(&direct(backend), shown).await;
            }
        }
    }
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    {
        use cacheruntime::backends::sql::{SqlBackend, SqlConfig};
        let configs = [
            SqlConfig::new(format!("postgres://u:{p}@127.0.0.1:1/db?sslpassword={v}")),
            SqlConfig::new(format!("sqlite://u:{p}@127.0.0.1:1/x.db")),
            SqlConfig::new(format!("sqlite:///nonexistent-dir/x.db?password={v}")),
        ];
        for config in configs {
            shown.push(format!("{config:?}"));
            if let Some(backend) = keep(SqlBackend::new(config), shown) {
                use_cache(&direct(backend), shown).await;
            }
        }
    }
    #[cfg(feature = "memcached")]
    {
        use cacheruntime::backends::memcached::{MemcachedBackend, MemcachedConfig};
        let config = MemcachedConfig::new([format!("u:{p}@127.0.0.1:1"), "127.0.0.1:2".into()]);
        shown.push(format!("{config:?}"));
        keep(MemcachedBackend::new(config), shown);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No form of a password or of a query value, encoded as a URL needs
    /// or written raw, shows in an error, a `Debug` or a log line, whatever
    /// path parsed the URL.
    #[test]
    fn url_secrets_never_show(password in secret(), value in secret()) {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut shown = Vec::new();
        tracing::subscriber::with_default(subscriber, || {
            rt.block_on(async {
                for (p, v) in [
                    (encoded(&password), encoded(&value)),
                    (password.clone(), value.clone()),
                ] {
                    every_parse_path(&p, &v, &mut shown).await;
                }
            });
        });
        // Lookups of hosts read from a mangled URL may still be running on
        // blocking threads; do not wait for them.
        rt.shutdown_background();
        shown.push(String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned());
        for secret in [&password, &value] {
            for form in forms(secret) {
                for text in &shown {
                    prop_assert!(!text.contains(&form), "{form:?} shows in: {text}");
                }
            }
        }
    }
}

/// A duration from the edges: zero, the smallest, everyday values, and the
/// largest that can be written, where sums overflow.
fn extreme_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(60)),
        Just(Duration::from_secs(u64::MAX / 1000)),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::MAX),
        (0u64..u64::MAX).prop_map(Duration::from_millis),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No duration, however large, makes a cache call panic: every place
    /// that adds durations (TTL + stale window, deadlines, lock waits,
    /// expiry times in ms, the breaker's cool-down) saturates.
    #[test]
    fn extreme_durations_never_panic(
        ttl in extreme_duration(),
        stale in extreme_duration(),
        lock_ttl in extreme_duration(),
        default_ttl in extreme_duration(),
        cool_down in extreme_duration(),
        max_ttl in extreme_duration(),
        early in prop_oneof![Just(0.5f64), Just(1e300), Just(f64::MAX)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            // The SQL store refuses, at build, a max_ttl its columns cannot
            // hold; it then runs with the longest one.
            let sql_max_ttl = if max_ttl.is_zero() || max_ttl > cacheruntime::backends::sql::MAX_TTL_LIMIT {
                let refused = cacheruntime::backends::sql::SqlBackend::new(
                    cacheruntime::backends::sql::SqlConfig::new("sqlite:///unused.db").max_ttl(max_ttl),
                );
                prop_assert!(refused.is_err());
                cacheruntime::backends::sql::MAX_TTL_LIMIT
            } else {
                max_ttl
            };
            let sqlite = Arc::new(cacheruntime::backends::sql::SqlBackend::new(
                cacheruntime::backends::sql::SqlConfig::new(format!(
                    "sqlite://{}",
                    dir.path().join("c.db").display()
                ))
                .max_ttl(sql_max_ttl),
            )
            .unwrap());
            let stores: [Box<dyn Fn(cacheruntime::CacheBuilder) -> cacheruntime::CacheBuilder>; 2] = [
                Box::new(|b| b.memory(1 << 20)),
                Box::new(move |b| b.backend(sqlite.clone())),
            ];
            for store in &stores {
                let built = store(Cache::builder())
                    .default_ttl(default_ttl.max(Duration::from_millis(1)))
                    .op_timeout(Duration::from_secs(5))
                    .circuit_breaker(1, cool_down)
                    .build();
                let cache = match built {
                    Ok(c) => c,
                    Err(e) => panic!("refused: {e}"),
                };
                let policy = cacheruntime::Policy::new()
                    .ttl(ttl)
                    .stale(stale)
                    .early(early)
                    .lock_ttl(lock_ttl);
                let v: u32 = cache.get_or_compute("d:1", &policy, || async { 1 }).await;
                prop_assert_eq!(v, 1);
                let v: u32 = cache.get_or_refresh("d:1", &policy, || async { 2 }).await;
                prop_assert!(v == 1 || v == 2);
                let _ = cache.set("d:2", &3u32, ttl).await;
                let _ = cache.get::<u32>("d:2").await;
                let _ = cache.delete("d:2").await;
                let _ = cache.invalidate_prefix("d:").await;
            }
            // Remote stores' configuration takes any duration too.
            let redis = cacheruntime::backends::redis::RedisBackend::new(
                cacheruntime::backends::redis::RedisConfig::new("redis://127.0.0.1:1")
                    .max_ttl(max_ttl),
            );
            prop_assert!(redis.is_ok());
            Ok(())
        })?;
    }
}

/// Odd URL forms against the real parsers and drivers (nothing listens on
/// port 1): a password with `\`, `"` and a non-ASCII letter, per-host
/// credentials, secrets in query values and fragments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_url_forms_never_show_their_secrets() {
    let secret = "Hu\\nt\"er2é";
    let enc = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let forms = [
        format!("redis://u:{enc}@127.0.0.1:1/0"),
        format!("redis://u:{enc}@127.0.0.1:notaport/0"),
        format!("redis://u:{enc}@127.0.0.1:1/0?namespace=a%20b"),
        format!("redis://u:{enc}@127.0.0.1:1/x"),
        format!("rediss://u:{enc}@127.0.0.1:1/0?op_timeout=bogus"),
        format!("redis+cluster://u:{enc}@127.0.0.1:1,u:{enc}@127.0.0.1:2"),
        format!("postgres://u:{enc}@127.0.0.1:1/db?op_timeout=50ms"),
        format!("postgres://u:{enc}@127.0.0.1:1/db?sslmode=bogus"),
        format!("postgres://u@127.0.0.1:1/db?password={enc}&sslmode=nope"),
        format!("postgres://u:{enc}@[::1/db"),
        format!("postgresql://u:{enc}@127.0.0.1:99999/db"),
        format!("memcached://u:{enc}@127.0.0.1:1"),
        format!("memcached://127.0.0.1:1?token={enc}&bogus=1"),
        format!("redis://u:{enc}@127.0.0.1:1/0#{enc}"),
        format!("redis://u:{enc}@127.0.0.1:1?namespace=x&max_entry_bytes={enc}"),
        format!("redis://{enc}@127.0.0.1:1"),
    ];
    let decoded_forms = [
        secret.to_string(),
        enc.clone(),
        "nt\\\"er2".to_string(),
        "Hu\\\\nt".to_string(),
        "er2é".to_string(),
        "er2\\u{e9}".to_string(),
        "Hu%5Cnt".to_string(),
        "er2%C3%A9".to_string(),
    ];
    let mut leaks = Vec::new();
    for url in &forms {
        let mut seen = Vec::new();
        match Cache::from_url(url).await {
            Err(e) => {
                seen.push(format!("{e}"));
                seen.push(format!("{e:?}"));
            }
            Ok(cache) => {
                seen.push(format!("{cache:?}"));
                let _ = cache.get::<u32>("k").await.map_err(|e| {
                    seen.push(format!("{e}"));
                    seen.push(format!("{e:?}"));
                });
                let _ = cache
                    .set("k", &1u32, Duration::from_secs(1))
                    .await
                    .map_err(|e| {
                        seen.push(format!("{e}"));
                        seen.push(format!("{e:?}"));
                    });
            }
        }
        for text in seen {
            for f in &decoded_forms {
                if text.contains(f.as_str()) {
                    leaks.push(format!("{url}\n  -> {text}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}
