//! What operators ask of a cache's store (`cachectl`): is it there, what is
//! it, what is under a key, which keys are under a prefix. Nothing here is
//! on a cached call's path.
//!
//! Listing keys is a walk over the store (Redis `SCAN`, a range of the SQL
//! table, Memcached's LRU crawler dump, the memory store's entries): fine
//! for an operator, never done by the cache itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::envelope::{self, Header};
use crate::reader::Reader;
use crate::stamp::recorded;
use crate::{Cache, Error};

/// How long an operator's store call may take: a page of a scan on a large
/// keyspace takes longer than a cached call's op timeout allows.
const PATIENCE: Duration = Duration::from_secs(30);

/// How many keys a scan checks for liveness in one read.
const BATCH: usize = 256;

/// One page of [`Backend::scan`](crate::Backend::scan).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScanPage {
    /// Stored keys starting with the prefix (some may be expired,
    /// invalidated, or the store's own records).
    pub keys: Vec<String>,
    /// Where the next page starts, `None` after the last.
    pub next: Option<String>,
    /// How many stored items the store looked at for this page (a
    /// progress measure: more than `keys` when others were skipped).
    pub examined: u64,
}

impl ScanPage {
    /// A page of `keys`, after `examined` items, continued at `next`.
    pub fn new(keys: Vec<String>, next: Option<String>, examined: u64) -> Self {
        ScanPage {
            keys,
            next,
            examined,
        }
    }
}

/// What [`Backend::describe`](crate::Backend::describe) says of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreInfo {
    /// The store's kind (`redis`, `postgres`, `sqlite`, `memcached`, `memory`).
    pub kind: String,
    /// The server's version, when it says.
    pub version: Option<String>,
    /// Whether the connection is encrypted (`None`: in process).
    pub tls: Option<bool>,
    /// How the store makes room when full.
    pub eviction: Option<String>,
    /// Memory (or rows) used and the limit, as the store reports them.
    pub memory: Option<String>,
    /// What the cache warns about this store's configuration (Redis: what
    /// it also logs at connect; Memcached: a server that cannot evict).
    pub warnings: Vec<String>,
    /// Anything else worth showing, as `(name, value)`.
    pub details: Vec<(String, String)>,
}

impl StoreInfo {
    /// What is known of a store by its name alone.
    pub fn new(kind: impl Into<String>) -> Self {
        StoreInfo {
            kind: kind.into(),
            ..StoreInfo::default()
        }
    }
}

/// Whether an entry's signature checks out, in [`EntryInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signature {
    /// Stored without a signature.
    Unsigned,
    /// Signed, and one of the cache's signing keys verifies it.
    Verified,
    /// Signed, and none of the cache's keys verifies it: another key, or
    /// tampered with. A reading cache refuses it.
    Invalid,
    /// Signed, but the cache has no key to check it with (set
    /// `CACHE_SIGNING_KEY`).
    Unchecked,
    /// Stored without a signature, while the cache has signing keys: a
    /// reading cache refuses it (as it refuses an invalid one).
    Missing,
}

/// Where an entry stands against its deadlines, in [`EntryInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Before its TTL: served as a hit.
    Fresh,
    /// Past its TTL, inside its stale window: served while refreshed.
    Stale,
    /// Past its stale window: served only when its computation fails
    /// (`stale_if_error`).
    KeptForErrors,
    /// Past every deadline; the store has yet to drop it.
    Expired,
}

/// What [`Cache::inspect`] finds under a key: the entry's envelope, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The key as the store has it (namespace included, long keys shortened).
    pub stored_key: String,
    /// The entry's size as stored, bytes.
    pub size: usize,
    /// The codec that wrote the payload (`bincode`, `postcard`, or its id).
    pub codec: String,
    /// The hash of the value's type name and `#[cached(version = N)]`: a
    /// reader of another type or version refuses the entry.
    pub fingerprint: u64,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
    /// The signature, checked with the cache's signing keys.
    pub signature: Signature,
    /// The tags the entry was stored with and the token each had.
    pub tags: Vec<(String, u64)>,
    /// When the value was stored (a touch keeps it); `None` for an entry of
    /// format 2 (what a cache writes unless it has
    /// [`record_written_at`](crate::CacheBuilder::record_written_at)),
    /// which does not record it.
    pub written_at: Option<SystemTime>,
    /// Fresh until this time.
    pub fresh_until: SystemTime,
    /// Servable while refreshed (stale) until this time.
    pub stale_until: SystemTime,
    /// Kept for `stale_if_error` until this time; the store drops it then.
    pub kept_until: SystemTime,
    /// Where it stands now.
    pub freshness: Freshness,
    /// How long the value took to compute.
    pub compute_time: Duration,
    /// The codec's payload (decompressed), to show or decode.
    pub payload: Bytes,
}

/// `ms` since the epoch, or the last second of 9999 where the platform's
/// clock cannot hold it (an entry kept until evicted: `u64::MAX`).
fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(253_402_300_799))
}

fn codec_name(id: u8) -> String {
    match id {
        1 => "bincode".into(),
        2 => "postcard".into(),
        other => format!("codec {other}"),
    }
}

impl Cache {
    /// Whether the entry `bytes` (with `header`) could still answer a
    /// call: before its last deadline, its tags' tokens current.
    async fn live(&self, header: &Header, bytes: &[u8]) -> Result<bool, Error> {
        let engine = &self.engine;
        Ok(engine.sealer.clock.now_ms() < header.kept_until_ms
            && engine.tags_hold(bytes, Reader::Operator(PATIENCE)).await?)
    }

    /// One round trip to the store (a read of a key nobody writes), timed.
    /// An error says why the store cannot be used.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let engine = &self.engine;
        let backend = engine.store.backend();
        let key = engine.full_key("cachectl:ping");
        let started = Instant::now();
        engine
            .operator_call("ping", PATIENCE, || backend.get(&key))
            .await?;
        Ok(started.elapsed())
    }

    /// What the store is: kind, version, TLS, eviction, memory, and the
    /// warnings the cache logs about it ([`Backend::describe`](crate::Backend::describe)).
    pub async fn store_info(&self) -> Result<StoreInfo, Error> {
        let backend = self.engine.store.backend();
        self.engine
            .operator_call("describe", PATIENCE, || backend.describe())
            .await
    }

    /// The entry under `key` (as a `#[cached]` key renders it, without the
    /// namespace), decoded: when it was written, deadlines, codec,
    /// fingerprint, signature, tags and payload. `None` when the entry is
    /// absent, past its last deadline, deleted, or invalidated (by prefix
    /// or by one of its tags). An entry a call would still refuse is shown,
    /// saying why: another type or version (its `fingerprint`), or a
    /// signature that does not verify ([`Signature::Invalid`],
    /// [`Signature::Missing`]). One past its TTL but
    /// inside its stale window (or kept for `stale_if_error`) is shown,
    /// with its [`Freshness`]. Something stored there that is not an entry
    /// of this crate (a lock, a tag's token) is a `Decode` error.
    pub async fn inspect(&self, key: &str) -> Result<Option<EntryInfo>, Error> {
        crate::key::check_key(key)?;
        let engine = &self.engine;
        let stored = engine.full_key(key);
        let backend = engine.store.backend();
        let found = engine
            .operator_call("inspect", PATIENCE, || backend.get(&stored))
            .await?;
        let Some(bytes) = found.value else {
            return Ok(None);
        };
        let (header, payload) = Header::read_known(&bytes, envelope::KNOWN_FLAGS)?;
        if !self.live(&header, &bytes).await? {
            return Ok(None);
        }
        let signed = header.flags & envelope::FLAG_SIGNED != 0;
        let (payload, signature) = if signed {
            let body = payload.len().checked_sub(crate::signing::TAG_LEN);
            let body = body.ok_or_else(|| Error::decode("signed entry shorter than its tag"))?;
            let check = engine.sealer.check_signature(&stored, &bytes);
            (&payload[..body], check)
        } else if engine.sealer.requires_signature() {
            (payload, Signature::Missing)
        } else {
            (payload, Signature::Unsigned)
        };
        let tags = match envelope::flags(&bytes) {
            Some(flags) if flags & envelope::FLAG_TAGGED != 0 => envelope::tag_section(&bytes)
                .and_then(recorded)
                .ok_or_else(|| Error::decode("entry's tag section does not parse"))?
                .into_iter()
                .map(|(tag, token)| (tag.to_owned(), token))
                .collect(),
            _ => Vec::new(),
        };
        let plain = engine.sealer.plain_payload(header.flags, payload)?;
        let now = engine.sealer.clock.now_ms();
        let freshness = if now < header.fresh_until_ms {
            Freshness::Fresh
        } else if now < header.stale_until_ms {
            Freshness::Stale
        } else if now < header.kept_until_ms {
            Freshness::KeptForErrors
        } else {
            Freshness::Expired
        };
        Ok(Some(EntryInfo {
            stored_key: stored.into_owned(),
            size: bytes.len(),
            codec: codec_name(header.codec),
            fingerprint: header.fingerprint,
            compressed: header.flags & envelope::FLAG_COMPRESSED != 0,
            signature,
            tags,
            written_at: header.written_ms.map(at),
            fresh_until: at(header.fresh_until_ms),
            stale_until: at(header.stale_until_ms),
            kept_until: at(header.kept_until_ms),
            freshness,
            compute_time: Duration::from_millis(header.compute_ms.into()),
            payload: Bytes::copy_from_slice(&plain),
        }))
    }

    /// Up to `limit` keys of live entries starting with `prefix` (any text;
    /// keys as `#[cached]` renders them, without the namespace), sorted.
    /// Walks the store page by page ([`Backend::scan`](crate::Backend::scan)),
    /// reading each page's keys back to keep the entries a `#[cached]` call
    /// could still be answered with (as [`inspect`](Self::inspect) shows
    /// them); with a `limit`, the first found in the store's walk order
    /// (key order on SQL, arbitrary on Redis and Memcached). `progress`
    /// hears how many stored names the walk has looked at so far. Keys
    /// longer than the stores take are listed as stored (shortened, with a
    /// hash); on Memcached, keys stored under a hashed name (over about 247
    /// bytes, or with spaces or control characters) are not listed. For
    /// operators (`cachectl keys`): its cost grows with the store's size.
    pub async fn keys(
        &self,
        prefix: &str,
        limit: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<Vec<String>, Error> {
        if prefix.contains('\0') {
            return Err(Error::InvalidPrefix {
                prefix: prefix.chars().take(64).collect(),
                reason: "keys never contain NUL, so no key starts with this prefix",
            });
        }
        let engine = &self.engine;
        let namespace = engine.namespace();
        let full = format!("{namespace}{prefix}");
        let backend = engine.store.backend();
        let mut cursor: Option<String> = None;
        let mut examined = 0;
        let mut out = BTreeSet::new();
        while out.len() < limit {
            let page = engine
                .operator_call("scan", PATIENCE, || backend.scan(&full, cursor.as_deref()))
                .await?;
            examined += page.examined;
            progress(examined);
            for batch in page.keys.chunks(BATCH) {
                let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                let found = engine
                    .operator_call("scan_read", PATIENCE, || backend.get_many(&refs))
                    .await?;
                // Entries only: locks and tokens are not envelopes.
                let entries: Vec<(&String, Bytes, Header)> = batch
                    .iter()
                    .zip(found)
                    .filter_map(|(key, lookup)| {
                        let bytes = lookup.value?;
                        let (header, _) = Header::read_known(&bytes, envelope::KNOWN_FLAGS).ok()?;
                        Some((key, bytes, header))
                    })
                    .collect();
                let raw: Vec<Option<&[u8]>> =
                    entries.iter().map(|(_, b, _)| Some(&b[..])).collect();
                let tags = engine
                    .tags_hold_many(&raw, Reader::Operator(PATIENCE))
                    .await?;
                let now = engine.sealer.clock.now_ms();
                for ((key, _, header), holds) in entries.iter().zip(tags) {
                    if holds && now < header.kept_until_ms && key.starts_with(&full) {
                        out.insert(key[namespace.len()..].to_owned());
                    }
                }
            }
            if page.next.is_some() && page.next == cursor {
                // A store's scan that does not move on would walk forever.
                return Err(Error::backend(
                    backend.name(),
                    "the store's scan gave back the cursor it was given: the walk \
                     would not end",
                ));
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }
}
