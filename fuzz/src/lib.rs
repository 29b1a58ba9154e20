//! What the fuzz target and the seed writer share: the value types, a
//! one-entry store, and caches built through the public builder.
//!
//! The store answers every read with the bytes the fuzzer supplied, so
//! `Cache::get` runs the whole read path of a hit from a shared store: the
//! envelope header, the signature check (with signing keys set), the codec
//! and fingerprint checks, the deadlines, then the codec's decode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cacheruntime::backend::{Backend, BoxFuture, Lookup, Ticket};
use cacheruntime::codec::{AnyCodec, BincodeCodec, PostcardCodec};
use cacheruntime::{Cache, Clock, Error};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The key every entry is read under (no namespace, so it is the full key
/// the tag covers).
pub const KEY: &str = "fuzz:entry";
/// The one signing key of the signed caches.
pub const SIGNING_KEY: &[u8] = b"fuzz-signing-key-0123456789abcdef";
/// Length of the HMAC-SHA256 tag that ends a signed entry.
pub const TAG_LEN: usize = cacheruntime::signing::TAG_LEN;

/// A nested value like the ones apps cache: strings, sequences, options,
/// maps and an enum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub id: u64,
    pub title: String,
    pub authors: Vec<Author>,
    pub isbn: Option<String>,
    pub stock: HashMap<String, u32>,
    pub kind: Kind,
    pub flags: (bool, char, i16),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Author {
    pub name: String,
    pub born: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    Paper,
    Ebook { bytes: u64 },
    Audio(u32, String),
}

/// Scalars whose decoders validate (bool, char, option tags).
pub type Scalars = (u8, i64, bool, char, Option<u16>);

/// A store holding one entry: the next read's answer.
#[derive(Debug, Default)]
pub struct Slot {
    entry: Mutex<Option<Bytes>>,
}

impl Slot {
    /// The bytes every read returns from now on.
    pub fn put(&self, bytes: Bytes) {
        *self.entry.lock().unwrap() = Some(bytes);
    }

    /// What the last read would see (the last write, for the seed writer).
    pub fn take(&self) -> Option<Bytes> {
        self.entry.lock().unwrap().take()
    }
}

impl Backend for Slot {
    fn name(&self) -> &'static str {
        "fuzz-slot"
    }
    fn supports_locks(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Lookup, Error>> {
        let found = Lookup::new(self.entry.lock().unwrap().clone());
        Box::pin(async move { Ok(found) })
    }

    fn set<'a>(
        &'a self,
        _key: &'a str,
        value: Bytes,
        _ttl: Duration,
        _ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.put(value);
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        *self.entry.lock().unwrap() = None;
        Box::pin(async { Ok(()) })
    }

    fn invalidate_prefix<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        *self.entry.lock().unwrap() = None;
        Box::pin(async { Ok(()) })
    }
}

/// The codecs, by the index the fuzz input picks.
pub const CODECS: [AnyCodec; 2] = [
    AnyCodec::Bincode(BincodeCodec),
    AnyCodec::Postcard(PostcardCodec),
];

/// A cache over `slot` with `codec`, signing entries when `signed`. The
/// clock stands still, so an input opens the same way on every run.
pub fn cache(slot: &Arc<Slot>, codec: AnyCodec, signed: bool, clock: &Clock) -> Cache {
    let mut builder = Cache::builder()
        .backend(Arc::clone(slot))
        .codec(codec)
        .clock(clock.clone())
        // Seeds of the newer format (the default writes format 2, which
        // is format 3 less 8 bytes of its header).
        .record_written_at(true);
    if signed {
        builder = builder.signing_keys([SIGNING_KEY]);
    }
    builder.build().expect("fuzz cache settings are valid")
}

/// The tag `signing.rs` documents: HMAC-SHA256 over the key's length (u64
/// little endian), the key, then the envelope.
pub fn tag(key: &str, body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_KEY).unwrap();
    mac.update(&(key.len() as u64).to_le_bytes());
    mac.update(key.as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// A few of each value type, for the seeds.
pub fn sample_books() -> Vec<Book> {
    vec![
        Book {
            id: 7,
            title: "Dune".into(),
            authors: vec![Author {
                name: "Frank Herbert".into(),
                born: Some(1920),
            }],
            isbn: Some("978-0441013593".into()),
            stock: HashMap::from([("paris".into(), 3), ("lyon".into(), 0)]),
            kind: Kind::Paper,
            flags: (true, 'é', -2),
        },
        Book {
            id: u64::MAX,
            title: String::new(),
            authors: vec![],
            isbn: None,
            stock: HashMap::new(),
            kind: Kind::Audio(3600, "narrated".into()),
            flags: (false, '\u{10FFFF}', i16::MIN),
        },
    ]
}
