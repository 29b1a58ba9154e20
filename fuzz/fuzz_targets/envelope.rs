//! Arbitrary bytes through the read path of a cache hit from a shared store.
//!
//! Input: one mode byte, then the stored entry.
//! - bit 0: codec (bincode, postcard);
//! - bits 1-2: signing: 0 the cache has no keys; 1 the cache has keys and
//!   the harness appends a valid tag to the entry (so the decoder behind the
//!   check is reachable); 2 and 3 the cache has keys and the entry is taken
//!   as stored, tag included (so the check itself is fuzzed);
//! - bits 3-4: value type (String, Vec<u64>, Book, Scalars).
//!
//! Checked: nothing panics or allocates past libFuzzer's limit; a value the
//! cache serves is what the envelope's payload decodes to through the public
//! pieces (`Header::read`, the codec); every value that decodes re-encodes
//! and decodes back to itself; a validly tagged entry never counts as a
//! signature failure, and an unsigned cache never counts one.
#![no_main]

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cacheruntime::codec::{AnyCodec, Codec};
use cacheruntime::envelope::{Header, FLAG_SIGNED};
use cacheruntime::{Cache, Clock};
use cacheruntime_fuzz::{cache, tag, Book, Scalars, Slot, CODECS, KEY, TAG_LEN};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

struct Harness {
    rt: tokio::runtime::Runtime,
    slot: Arc<Slot>,
    /// `[codec][signed]`
    caches: [[Cache; 2]; 2],
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let slot = Arc::new(Slot::default());
        let clock = Clock::manual();
        let caches = CODECS.map(|c| [false, true].map(|signed| cache(&slot, c, signed, &clock)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Harness { rt, slot, caches }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, entry)) = data.split_first() else {
        return;
    };
    let codec = (mode & 1) as usize;
    let signing = (mode >> 1) & 3;
    match (mode >> 3) & 3 {
        0 => check::<String>(codec, signing, entry),
        1 => check::<Vec<u64>>(codec, signing, entry),
        2 => check::<Book>(codec, signing, entry),
        _ => check::<Scalars>(codec, signing, entry),
    }
});

fn check<T>(codec_ix: usize, signing: u8, entry: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let h = harness();
    let codec = CODECS[codec_ix];
    let cache = &h.caches[codec_ix][usize::from(signing != 0)];
    let mut stored = entry.to_vec();
    if signing == 1 {
        stored.extend_from_slice(&tag(KEY, entry));
    }
    h.slot.put(Bytes::from(stored.clone()));

    let failures_before = cache.stats().signature_failures;
    let served: Option<T> =
        h.rt.block_on(cache.get::<T>(KEY))
            .expect("a read from the slot store cannot fail");
    let failures = cache.stats().signature_failures - failures_before;

    let header = Header::read(&stored).ok();
    match (signing, header) {
        (0, _) => assert_eq!(failures, 0, "a cache without keys checked a tag"),
        (1, Some((h, _))) if h.flags & FLAG_SIGNED != 0 => {
            assert_eq!(failures, 0, "a validly tagged entry failed its check")
        }
        _ => {}
    }

    if let Some(value) = &served {
        let (header, payload) = header.expect("served an entry whose header does not read");
        assert_eq!(header.codec, codec.id(), "served another codec's entry");
        let payload = if header.flags & FLAG_SIGNED != 0 {
            &payload[..payload.len() - TAG_LEN]
        } else {
            payload
        };
        let direct: T = codec
            .decode(payload)
            .expect("served a payload the codec does not decode");
        assert_eq!(&direct, value, "served something else than the payload");
        round_trip(codec, value);
    }

    // The decoder on its own, whatever the header says, so coverage does not
    // wait for the fuzzer to match fingerprints and deadlines.
    if let Some(payload) = entry.get(cacheruntime::envelope::HEADER_LEN..) {
        if let Ok(value) = codec.decode::<T>(payload) {
            round_trip(codec, &value);
        }
    }
}

fn round_trip<T>(codec: AnyCodec, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut out = Vec::new();
    codec
        .encode(value, &mut out)
        .expect("a decoded value encodes");
    let back: T = codec.decode(&out).expect("an encoded value decodes");
    assert_eq!(&back, value, "the value changed through encode and decode");
}
