//! Tags: invalidating every entry stored with a tag (`author:42`,
//! `catalog`) in O(1), on every store, with the fencing guarantee of
//! `invalidate_prefix`.
//!
//! Each tag has a token in the store, under `<namespace>#t:<tag>` (a name
//! no key can take: keys never hold `#`). `invalidate_tag` writes a fresh
//! random token; nothing else changes it. An entry stored with tags
//! records, in its envelope's tag section, each tag with the token it had
//! when the value's read began, and its fingerprint covers that section
//! (`Stamp::fingerprint`).
//!
//! So an entry is current only while every token it recorded is still in
//! the store:
//! - a tagged call (`#[cached(tags = ..)]`) reads the tokens before its
//!   read of the entry and accepts only the fingerprint they give
//!   (`Accept::Stamped`): an entry, a flight's value, a stale or kept value
//!   recorded under an older token is another fingerprint, never served;
//!   and its own value is recorded under the tokens it read before
//!   computing, so a value computed across an `invalidate_tag` is never
//!   served after it returned;
//! - a direct read that does not know the tags (`get`, `contains`, `ttl`,
//!   `touch`, `add`, `get_many`) reads the tokens the entry names and
//!   treats it as absent unless all are current (`Engine::tags_hold`).
//!
//! A token that is missing (never written, expired, evicted, dropped by
//! `clear`) holds no entry: entries recorded a value, and a token created
//! anew is random. Tokens live 30 days (within the store's cap), so a
//! tagged entry lives at most that long after its tag was last
//! invalidated or first used.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::Lookup;
use crate::backends::MemoryBackend;
use crate::cache::Cache;
use crate::engine::Engine;
use crate::envelope;
use crate::reader::Reader;
use crate::stamp::{recorded, Stamp};
pub use crate::stamp::{MAX_TAGS, MAX_TAG_LEN};
use crate::Error;

/// How long a tag's token lives: a tagged entry is dropped at the latest
/// when its tokens expire (created or last invalidated this long ago).
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a tag's token key starts with, after the namespace.
const TOKEN_PREFIX: &str = crate::key::TOKEN_MARK;

/// Refuses a tag no store could keep or that could be confused with
/// another: empty, over [`MAX_TAG_LEN`] bytes, or holding a NUL or `#`.
pub fn check_tag(tag: &str) -> Result<(), Error> {
    let reason = if tag.is_empty() {
        "tags must not be empty"
    } else if tag.len() > MAX_TAG_LEN {
        "tags are at most 250 bytes: tag a shorter name (an id rather than a URL)"
    } else if tag.contains('\0') {
        "tags must not contain NUL"
    } else if tag.contains('#') {
        "tags must not contain '#': escape values with `cacheruntime::key::escape` \
         (it writes `%23`)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTag {
        tag: tag.chars().take(64).collect(),
        reason,
    })
}

/// Checks a write's tags: each valid, at most [`MAX_TAGS`].
pub(crate) fn check_tags<T: AsRef<str>>(tags: &[T]) -> Result<(), Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidTag {
            tag: tags[MAX_TAGS].as_ref().chars().take(64).collect(),
            reason: "an entry has at most 32 tags: tag a coarser group",
        });
    }
    tags.iter().try_for_each(|t| check_tag(t.as_ref()))
}

/// A token as stored (8 bytes), or `None` for anything else.
fn token_of(lookup: &Lookup) -> Option<u64> {
    Some(u64::from_le_bytes(
        lookup.value.as_deref()?.try_into().ok()?,
    ))
}

/// A token that could not be read or created in a few attempts.
fn contended(key: &str, attempts: u32) -> Error {
    Error::Contended {
        key: key.chars().take(64).collect(),
        attempts,
    }
}

/// A fresh random token.
fn fresh_token() -> Result<u64, Error> {
    getrandom::u64().map_err(|e| Error::Backend {
        backend: "tags",
        message: format!("no randomness for a tag's token: {e}"),
    })
}

impl Engine {
    /// The store's name for `tag`'s token.
    fn token_key(&self, tag: &str) -> String {
        let mut key = String::new();
        self.token_key_into(tag, &mut key);
        key
    }

    /// [`token_key`](Self::token_key), written into `buffer`.
    fn token_key_into<'b>(&self, tag: &str, buffer: &'b mut String) -> &'b str {
        buffer.clear();
        buffer.push_str(self.namespace());
        buffer.push_str(TOKEN_PREFIX);
        buffer.push_str(tag);
        if let Cow::Owned(short) = crate::key::stored(buffer) {
            *buffer = short;
        }
        buffer
    }

    /// How long a token is kept: [`TOKEN_TTL`] within the store's cap.
    fn token_ttl(&self) -> Duration {
        let cap = self.store.backend().max_ttl().unwrap_or(Duration::MAX);
        TOKEN_TTL.min(cap)
    }

    /// The current tokens of `tags` (in order), `None` for a missing one,
    /// each with the read that found it.
    async fn tokens(&self, tags: &[&str]) -> Result<Vec<(Option<u64>, Lookup)>, Error> {
        self.tokens_for(tags, Reader::App).await
    }

    /// [`tokens`](Self::tokens), read for `reader`.
    async fn tokens_for(
        &self,
        tags: &[&str],
        reader: Reader,
    ) -> Result<Vec<(Option<u64>, Lookup)>, Error> {
        if let Some(memory) = self.store.memory() {
            return Ok(self.tokens_local(memory, tags));
        }
        let keys: Vec<String> = tags.iter().map(|t| self.token_key(t)).collect();
        let refs: Vec<&str> = keys.iter().map(|k| &**k).collect();
        let backend = self.store.backend();
        let found = match reader {
            Reader::App => self.guarded("get", || backend.get_many(&refs)).await?,
            Reader::Operator(patience) => {
                self.operator_call("tag_tokens", patience, || backend.get_many(&refs))
                    .await?
            }
        };
        Ok(found.into_iter().map(|l| (token_of(&l), l)).collect())
    }

    /// [`tokens`](Self::tokens) from the in-process store, synchronously.
    fn tokens_local(&self, memory: &MemoryBackend, tags: &[&str]) -> Vec<(Option<u64>, Lookup)> {
        tags.iter()
            .map(|t| memory.lookup(&self.token_key(t)))
            .map(|l| (token_of(&l), l))
            .collect()
    }

    /// The stamp a value computed from now on is recorded under: the
    /// current token of each tag, a missing one created (a compare-and-set
    /// against its absence, so concurrent creators agree on one).
    pub(crate) async fn stamp<T: AsRef<str>>(&self, tags: &[T]) -> Result<Stamp, Error> {
        check_tags(tags)?;
        if let Some(memory) = self.store.memory() {
            return self.stamp_local(memory, tags);
        }
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        let mut found = self.tokens(&tags).await?;
        let backend = self.store.backend();
        for (tag, (token, lookup)) in tags.iter().zip(found.iter_mut()) {
            let key = self.token_key(tag);
            let mut attempts = 0;
            while token.is_none() {
                attempts += 1;
                if attempts > 6 {
                    return Err(contended(&key, attempts));
                }
                if lookup.ticket.is_none() && attempts == 1 {
                    // A batched read may give no ticket (SQL); the
                    // compare-and-set needs the one of its own read.
                    *lookup = self.guarded("get", || backend.get(&key)).await?;
                    *token = token_of(lookup);
                    continue;
                }
                let fresh = fresh_token()?;
                let bytes = Bytes::copy_from_slice(&fresh.to_le_bytes());
                let (expected, ticket) = (lookup.value.as_deref(), lookup.ticket.as_ref());
                let ttl = self.token_ttl();
                let created = if ticket.is_none() {
                    // A store without tickets: a plain write. Two creators
                    // may both write; the one that loses only costs the
                    // entries stamped with its token a miss.
                    self.guarded("set", || backend.set(&key, bytes, ttl, None))
                        .await?;
                    true
                } else {
                    self.guarded("set", || {
                        backend.compare_and_set(&key, expected, bytes, ttl, ticket)
                    })
                    .await?
                };
                if created {
                    *token = Some(fresh);
                } else {
                    // Another caller created it first: read what it wrote.
                    *lookup = self.guarded("get", || backend.get(&key)).await?;
                    *token = token_of(lookup);
                }
            }
        }
        Ok(Stamp::new(
            tags.iter()
                .zip(&found)
                .filter_map(|(tag, (token, _))| Some((*tag, (*token)?)))
                .collect(),
        ))
    }

    /// The stamp of the same tags as `stamp`, with their tokens now (no
    /// token is created: a missing one is an error, the caller's answer
    /// then stands without the cache).
    pub(crate) async fn restamp(&self, stamp: &Stamp) -> Result<Stamp, Error> {
        let recorded = recorded(stamp.section()).ok_or_else(|| Error::decode("malformed stamp"))?;
        let tags: Vec<&str> = recorded.iter().map(|(t, _)| *t).collect();
        let current = self.tokens(&tags).await?;
        let tokens = tags
            .iter()
            .zip(current)
            .map(|(tag, (token, _))| token.map(|t| (*tag, t)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::decode("a tag's token is gone"))?;
        Ok(Stamp::new(tokens))
    }

    /// [`stamp`](Self::stamp) on the in-process store, synchronously: the
    /// tagged `#[cached]` hit path, so one key buffer serves every tag and
    /// a token is read in place.
    pub(crate) fn stamp_local<T: AsRef<str>>(
        &self,
        memory: &MemoryBackend,
        tags: &[T],
    ) -> Result<Stamp, Error> {
        check_tags(tags)?;
        let now = self.sealer.clock.now_ms();
        let mut tokens = Vec::with_capacity(tags.len());
        let mut buffer = String::with_capacity(self.namespace().len() + 64);
        for tag in tags {
            let tag = tag.as_ref();
            let key = self.token_key_into(tag, &mut buffer);
            let current = memory.local(key);
            let token = current
                .entry
                .as_deref()
                .filter(|e| e.expires_ms() > now)
                .and_then(|e| <[u8; 8]>::try_from(&e.bytes()[..]).ok())
                .map(u64::from_le_bytes);
            let token = match token {
                Some(token) => token,
                None => self.create_local(memory, key)?,
            };
            tokens.push((tag, token));
        }
        Ok(Stamp::new(tokens))
    }

    /// A missing token, created in the in-process store (or the one a
    /// concurrent creator wrote first).
    #[cold]
    fn create_local(&self, memory: &MemoryBackend, key: &str) -> Result<u64, Error> {
        for attempt in 1.. {
            let found = memory.lookup(key);
            if let Some(token) = token_of(&found) {
                return Ok(token);
            }
            if attempt > 6 {
                return Err(contended(key, attempt));
            }
            let fresh = fresh_token()?;
            let bytes = Bytes::copy_from_slice(&fresh.to_le_bytes());
            let (expected, ticket) = (found.value.as_deref(), found.ticket.as_ref());
            if memory.swap(key, expected, bytes, self.token_ttl(), ticket)? {
                return Ok(fresh);
            }
        }
        unreachable!("the loop returns")
    }

    /// Whether the entry `bytes` is current as far as tags go: true for an
    /// entry without tags; for a tagged one, whether every token its
    /// section records is still the tag's token in the store. What the
    /// direct reads that do not know an entry's tags ask before serving it.
    pub(crate) async fn tags_hold(&self, bytes: &[u8], reader: Reader) -> Result<bool, Error> {
        match recorded_in(bytes) {
            Recorded::Untagged => Ok(true),
            Recorded::Malformed => Ok(false),
            Recorded::Tags(recorded) => {
                let tags: Vec<&str> = recorded.iter().map(|(t, _)| *t).collect();
                Ok(all_current(
                    &recorded,
                    &self.tokens_for(&tags, reader).await?,
                ))
            }
        }
    }

    /// [`tags_hold`](Self::tags_hold) for several entries, with one read
    /// of all their tags' tokens (`get_many`: one round trip more, and
    /// only when an entry has tags).
    pub(crate) async fn tags_hold_many(
        &self,
        entries: &[Option<&[u8]>],
        reader: Reader,
    ) -> Result<Vec<bool>, Error> {
        let recorded: Vec<Recorded<'_>> = entries
            .iter()
            .map(|e| e.map_or(Recorded::Untagged, recorded_in))
            .collect();
        let mut tags: Vec<&str> = recorded
            .iter()
            .filter_map(|r| match r {
                Recorded::Tags(tags) => Some(tags.iter().map(|(t, _)| *t)),
                _ => None,
            })
            .flatten()
            .collect();
        tags.sort_unstable();
        tags.dedup();
        let current = if tags.is_empty() {
            Vec::new()
        } else {
            self.tokens_for(&tags, reader).await?
        };
        let token = |tag: &str| {
            tags.binary_search(&tag)
                .ok()
                .and_then(|i| current.get(i))
                .and_then(|(t, _)| *t)
        };
        Ok(recorded
            .iter()
            .map(|r| match r {
                Recorded::Untagged => true,
                Recorded::Malformed => false,
                Recorded::Tags(recorded) => {
                    recorded.iter().all(|(tag, want)| token(tag) == Some(*want))
                }
            })
            .collect())
    }

    /// [`tags_hold`](Self::tags_hold) on the in-process store, synchronously.
    pub(crate) fn tags_hold_local(&self, memory: &MemoryBackend, bytes: &[u8]) -> bool {
        match recorded_in(bytes) {
            Recorded::Untagged => true,
            Recorded::Malformed => false,
            Recorded::Tags(recorded) => {
                let tags: Vec<&str> = recorded.iter().map(|(t, _)| *t).collect();
                all_current(&recorded, &self.tokens_local(memory, &tags))
            }
        }
    }
}

/// Whether every recorded token is the current one.
fn all_current(recorded: &[(&str, u64)], current: &[(Option<u64>, Lookup)]) -> bool {
    recorded.len() == current.len()
        && recorded
            .iter()
            .zip(current)
            .all(|((_, want), (have, _))| *have == Some(*want))
}

/// What an entry records of tags.
enum Recorded<'b> {
    Untagged,
    /// A tag section that does not parse: no tags can hold.
    Malformed,
    Tags(Vec<(&'b str, u64)>),
}

/// The tags and tokens entry `bytes` records.
fn recorded_in(bytes: &[u8]) -> Recorded<'_> {
    match envelope::flags(bytes) {
        Some(flags) if flags & envelope::FLAG_TAGGED != 0 => {}
        _ => return Recorded::Untagged,
    }
    match envelope::tag_section(bytes).and_then(recorded) {
        Some(tags) => Recorded::Tags(tags),
        None => Recorded::Malformed,
    }
}

impl Cache {
    /// Makes every entry stored with `tag` invisible, on every store, in
    /// O(1) whatever the number of entries: one write of a fresh token for
    /// the tag. Like [`invalidate_prefix`](Cache::invalidate_prefix), it
    /// fences computations in flight: no call in any process sharing the
    /// store that starts after it returns is answered with a value
    /// computed under the old token (stored, shared in process, stale), and
    /// a `stale_if_error` fallback is never one of its entries.
    ///
    /// Entries get tags from `#[cached(tags = ["author:{author_id}"])]` or
    /// [`set_tagged`](Cache::set_tagged). A tag is any text up to 250
    /// bytes without NUL or `#`. Values interpolated in a `#[cached]` tag
    /// template are escaped as in keys, so name the same tag the same way:
    /// `format!("url:{}", cacheruntime::key::escape(url))` for
    /// `tags = ["url:{url}"]` (ids and plain words need no escaping).
    ///
    /// Tags are scoped to the cache's namespace: invalidate through a
    /// handle with the namespace the entries were stored under. Without a
    /// namespace on a shared store, applications sharing it share their
    /// tags too (an invalidation of one's `catalog` drops the other's:
    /// misses, never wrong answers).
    ///
    /// Every store answers it; a custom [`Backend`](crate::Backend) needs
    /// [`compare_and_set`](crate::Backend::compare_and_set) for a tagged
    /// call's first use of a tag (without it the call computes without the
    /// cache and the error is logged).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheruntime::Cache;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cacheruntime::Error> {
    /// let cache = Cache::memory();
    /// let ttl = Duration::from_secs(60);
    /// cache.set_tagged("book:7:card", "Dune", ttl, &["author:42", "catalog"]).await?;
    /// cache.set_tagged("book:8:card", "Emma", ttl, &["author:43", "catalog"]).await?;
    /// cache.invalidate_tag("author:42").await?;
    /// assert_eq!(cache.get::<String>("book:7:card").await?, None);
    /// assert_eq!(cache.get::<String>("book:8:card").await?.as_deref(), Some("Emma"));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        check_tag(tag)?;
        let engine = &self.engine;
        if !engine.enabled() {
            return Ok(());
        }
        let key = engine.token_key(tag);
        let bytes = Bytes::copy_from_slice(&fresh_token()?.to_le_bytes());
        let ttl = engine.token_ttl();
        match engine.store.memory() {
            Some(memory) => memory.store(&key, bytes, ttl, None),
            None => {
                let backend = engine.store.backend();
                engine
                    .guarded("invalidate_tag", || backend.set(&key, bytes, ttl, None))
                    .await
            }
        }
    }

    /// [`set`](Cache::set) with tags: the entry is dropped by
    /// [`invalidate_tag`](Cache::invalidate_tag) of any of them (as well as
    /// by `delete`, `invalidate_prefix` and its TTL). Reads need not know
    /// the tags: `get`, `contains`, `ttl` and the rest check them from the
    /// entry. At most 32 tags. Costs one more read of the store than `set`
    /// (the tags' tokens; a write the first time a tag is used).
    pub async fn set_tagged<T: serde::Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[&str],
    ) -> Result<(), Error> {
        crate::key::check_key(key)?;
        check_tags(tags)?;
        let engine = &self.engine;
        if !engine.enabled() {
            return Ok(());
        }
        if tags.is_empty() {
            return self.put(key, value, ttl, None).await;
        }
        let stamp = engine.stamp(tags).await?;
        self.put(key, value, ttl, Some(&stamp)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lost_token_never_brings_back_an_entry() {
        let cache = Cache::builder().namespace("t").build().unwrap();
        let ttl = Duration::from_secs(60);
        cache.set_tagged("k:1", "v", ttl, &["a"]).await.unwrap();
        assert_eq!(
            cache.get::<String>("k:1").await.unwrap().as_deref(),
            Some("v")
        );
        let engine = &cache.engine;
        let memory = engine.store.memory().expect("a memory cache");
        // The token is evicted: the entry it stamped is gone for good, even
        // once a new token is created for the tag.
        memory.delete_key(&engine.token_key("a"));
        assert_eq!(cache.get::<String>("k:1").await.unwrap(), None);
        assert!(!cache.contains("k:1").await.unwrap());
        let renewed = engine.stamp(&["a"]).await.unwrap();
        assert_eq!(recorded(renewed.section()).unwrap().len(), 1);
        assert_eq!(cache.get::<String>("k:1").await.unwrap(), None);
        // A garbage token is no token.
        memory
            .store(
                &engine.token_key("a"),
                Bytes::from_static(b"junk"),
                ttl,
                None,
            )
            .unwrap();
        cache.set_tagged("k:2", "w", ttl, &["a"]).await.unwrap();
        assert_eq!(
            cache.get::<String>("k:2").await.unwrap().as_deref(),
            Some("w")
        );
        cache.invalidate_tag("a").await.unwrap();
        assert_eq!(cache.get::<String>("k:2").await.unwrap(), None);
    }

    #[test]
    fn tags_that_no_store_keeps_exactly_are_refused() {
        assert!(check_tag("author:42").is_ok());
        for bad in ["", "a#b", "a\0b"] {
            assert!(
                matches!(check_tag(bad), Err(Error::InvalidTag { .. })),
                "{bad:?}"
            );
        }
        assert!(check_tag(&"x".repeat(251)).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert!(check_tags(&many).is_err());
        assert!(check_tags(&many[..32]).is_ok());
    }
}
