//! Writes the seed corpus: real entries written by `Cache::set` through each
//! codec, signed and not, for each value type of the fuzz target.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seeds` (from the repo
//! root); files go to fuzz/corpus/envelope/seed-*.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cacheruntime::Clock;
use cacheruntime_fuzz::{cache, sample_books, tag, Scalars, Slot, CODECS, KEY, TAG_LEN};

const TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/envelope");
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let slot = Arc::new(Slot::default());
    let clock = Clock::manual();
    let mut n = 0;
    for (codec_ix, codec) in CODECS.into_iter().enumerate() {
        for signed in [false, true] {
            let cache = cache(&slot, codec, signed, &clock);
            let mut captured = Vec::new();
            let mut capture = |ty: u8, name: String, value: &dyn erased::Value| {
                rt.block_on(value.set(&cache));
                let entry = slot.take().expect("set stored the entry");
                // The seeds reach the decoder: each reads back as written.
                slot.put(entry.clone());
                assert!(
                    rt.block_on(value.reads_back(&cache)),
                    "{name} does not read back"
                );
                if signed {
                    // The harness's tag is the cache's, or its mode 1 would
                    // test nothing past the signature check.
                    let body = &entry[..entry.len() - TAG_LEN];
                    assert_eq!(tag(KEY, body)[..], entry[body.len()..], "tag mismatch");
                }
                captured.push((ty, name, entry));
            };
            capture(0, "string".into(), &"héllo, cache".to_string());
            capture(1, "vec-u64".into(), &vec![0u64, 1, 300, u64::MAX]);
            for (i, book) in sample_books().into_iter().enumerate() {
                capture(2, format!("book{i}"), &book);
            }
            let scalars: Scalars = (255, -1, true, 'z', Some(65535));
            capture(3, "scalars".into(), &scalars);
            for (ty, name, entry) in captured {
                // Signed entries go in as stored (mode 2) and without their
                // tag, for the harness to append (mode 1).
                let variants = if signed {
                    vec![(2u8, &entry[..]), (1u8, &entry[..entry.len() - TAG_LEN])]
                } else {
                    vec![(0u8, &entry[..])]
                };
                for (signing, bytes) in variants {
                    let mode = codec_ix as u8 | signing << 1 | ty << 3;
                    let mut file = vec![mode];
                    file.extend_from_slice(bytes);
                    let codec_name = ["bincode", "postcard"][codec_ix];
                    let path = dir.join(format!("seed-{codec_name}-s{signing}-{name}"));
                    std::fs::write(path, file).unwrap();
                    n += 1;
                }
            }
        }
    }
    println!("wrote {n} seeds to {}", dir.display());
}

mod erased {
    use std::future::Future;
    use std::pin::Pin;

    use cacheruntime::Cache;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    /// A value of any type that `Cache::set` can store under the fuzz key.
    pub trait Value {
        fn set<'a>(&'a self, cache: &'a Cache) -> Pin<Box<dyn Future<Output = ()> + 'a>>;
        /// Whether `Cache::get` of the fuzz key serves this value.
        fn reads_back<'a>(&'a self, cache: &'a Cache) -> Pin<Box<dyn Future<Output = bool> + 'a>>;
    }

    impl<T: Serialize + DeserializeOwned + PartialEq> Value for T {
        fn set<'a>(&'a self, cache: &'a Cache) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
            Box::pin(async move {
                cache.set(super::KEY, self, super::TTL).await.unwrap();
            })
        }

        fn reads_back<'a>(&'a self, cache: &'a Cache) -> Pin<Box<dyn Future<Output = bool> + 'a>> {
            Box::pin(
                async move { cache.get::<T>(super::KEY).await.unwrap().as_ref() == Some(self) },
            )
        }
    }
}
