//! Properties over arbitrary input: the envelope decoder never panics and
//! never returns a value it was not given, and distinct arguments never
//! render the same key. Plus: secrets never reach log output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cacheruntime::codec::{BincodeCodec, Codec};
use cacheruntime::envelope::Header;
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
            prop_assert_eq!(payload.len() + 31, bytes.len());
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
