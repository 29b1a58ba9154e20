//! Rendering keys from templates, and what a prefix may be.
//!
//! A key is the template's literal text, kept verbatim, with every
//! interpolated value escaped: `%` becomes `%25`, `:` becomes `%3A`, `#` becomes `%23`, and
//! whitespace and control characters become `%XX` of their UTF-8 bytes. Since
//! an escaped value never contains `:` (nor whitespace or control
//! characters, ASCII or not), and the macro requires a `:` between
//! any two placeholders, two different argument lists never render the same
//! key: `pair:{a}:{b}` gives `pair:1%3A2:3` for `("1:2", "3")` and
//! `pair:1:2%3A3` for `("1", "2:3")`.
//!
//! Prefixes are whole `:`-separated segments. `invalidate_prefix("author:42:")`
//! reaches `author:42:top_books` and `author:42:bio` but not `author:420:...`;
//! a prefix that does not end with `:` (other than the empty prefix, which
//! means everything) is rejected rather than silently matching fewer keys
//! than a character-wise prefix would.

use std::borrow::Cow;
use std::fmt::{self, Display, Write};

use arrayvec::ArrayString;

use crate::Error;

/// Bytes that may start something to escape: `%`, `:`, `#`, ASCII
/// whitespace and controls, and any non-ASCII byte (checked per character).
/// `#` is escaped so no rendered key below [`MAX_STORED_KEY`] can take the
/// shape of a shortened long key (`...#<digest>`).
#[inline]
fn needs_escape(b: u8) -> bool {
    b == b'%' || b == b':' || b == b'#' || b <= b' ' || b >= 0x7f
}

#[inline]
fn escaped_char(c: char) -> bool {
    c == '%' || c == ':' || c == '#' || c.is_whitespace() || c.is_control()
}

/// Escapes one interpolated value the way `#[cached]` keys do, for building a
/// prefix by hand: `format!("embed:{}:", escape(url))`.
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.bytes().any(needs_escape) || !value.chars().any(escaped_char) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    push_escaped(&mut out, value);
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, s: &str) {
    let mut utf8 = [0u8; 4];
    for c in s.chars() {
        if escaped_char(c) {
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

struct Escaping<'a>(&'a mut KeyBuilder);

impl Write for Escaping<'_> {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.bytes().any(needs_escape) && s.chars().any(escaped_char) {
            let mut escaped = String::with_capacity(s.len() + 8);
            push_escaped(&mut escaped, s);
            self.0.push(&escaped);
        } else {
            self.0.push(s);
        }
        Ok(())
    }
}

/// What a tag's token key holds after the namespace (`tags.rs`): no
/// key can hold it, since keys never hold `#`.
pub(crate) const TOKEN_MARK: &str = "#t:";

/// Keys up to this many bytes are rendered without a heap allocation.
const INLINE: usize = 64;

/// Builds a key piece by piece; what `#[cached]` expands to.
///
/// Short keys live in an inline buffer (a hit then allocates nothing for
/// its key); longer ones spill to a `String`.
#[derive(Debug, Default)]
pub struct KeyBuilder {
    inline: ArrayString<INLINE>,
    heap: Option<String>,
    /// The call's tags (`#[cached(tags = [..])]`), rendered like keys;
    /// boxed so an untagged key stays one word larger, not three (the
    /// memory hit path moves it).
    #[allow(clippy::box_collection)]
    tags: Option<Box<Vec<String>>>,
}

impl KeyBuilder {
    /// An empty key.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty key; `capacity` is a hint for keys that outgrow the inline
    /// buffer.
    #[inline]
    pub fn with_capacity(capacity: usize) -> Self {
        KeyBuilder {
            inline: ArrayString::new(),
            heap: (capacity > INLINE).then(|| String::with_capacity(capacity)),
            tags: None,
        }
    }

    #[inline(always)]
    fn push(&mut self, s: &str) {
        match &mut self.heap {
            Some(h) => h.push_str(s),
            None => {
                if self.inline.try_push_str(s).is_err() {
                    let mut h = String::with_capacity(self.inline.len() + s.len() + 32);
                    h.push_str(&self.inline);
                    h.push_str(s);
                    self.heap = Some(h);
                }
            }
        }
    }

    /// Appends template text verbatim.
    #[inline]
    pub fn literal(&mut self, text: &str) -> &mut Self {
        self.push(text);
        self
    }

    /// Appends an interpolated value, escaped.
    #[inline]
    pub fn value<T: Display + ?Sized>(&mut self, value: &T) -> &mut Self {
        let _ = write!(Escaping(self), "{value}");
        self
    }

    /// Appends `:` and an escaped value: how `vary` arguments and the
    /// arguments of a default key are added.
    #[inline]
    pub fn segment<T: Display + ?Sized>(&mut self, value: &T) -> &mut Self {
        self.push(":");
        self.value(value)
    }

    /// The key so far.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.heap {
            Some(h) => h,
            None => &self.inline,
        }
    }

    /// Adds a tag (rendered by a builder of its own) to the call this key
    /// is for: `#[cached(tags = ["author:{author_id}"])]`.
    pub fn tag(&mut self, tag: KeyBuilder) -> &mut Self {
        self.tags.get_or_insert_default().push(tag.finish());
        self
    }

    /// The call's tags, as rendered.
    #[inline(always)]
    pub fn tags(&self) -> &[String] {
        self.tags.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The rendered key.
    pub fn finish(self) -> String {
        match self.heap {
            Some(h) => h,
            None => self.inline.as_str().to_owned(),
        }
    }
}

/// Why a key or prefix with NUL is refused.
pub(crate) const NUL_REASON: &str =
    "keys and prefixes must not contain NUL (U+0000), which PostgreSQL text \
                   cannot hold (so no key with one could be used on every store): escape values \
                   with `cacheruntime::key::escape` (it writes `%00`)";

/// Checks that `prefix` is one `invalidate_prefix` can honour exactly.
pub fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.contains('\0') {
        return Err(Error::InvalidPrefix {
            prefix: prefix.chars().take(64).collect(),
            reason: NUL_REASON,
        });
    }
    if prefix.is_empty() || prefix.ends_with(':') {
        Ok(())
    } else {
        Err(Error::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason: "prefixes are whole ':'-separated segments and must end with ':' \
                     (write \"author:42:\", not \"author:42\" or \"author:4\"); \
                     to drop a single key use `delete`",
        })
    }
}

/// The longest key a store is handed as written: PostgreSQL's index entries
/// are limited to about 2.7 KB (after compression), Memcached's keys to 250
/// bytes (it shortens further), and long keys cost memory and time
/// everywhere. A longer key (with the namespace) is stored shortened: its
/// whole `:`-segments within the first `MAX_STORED_KEY - 65` bytes, then `#`
/// and the SHA-256 of the whole key, so it stays distinct and prefix
/// invalidation still reaches it.
pub const MAX_STORED_KEY: usize = 1024;

/// `'#'` and 64 hex digits of SHA-256.
const DIGEST_LEN: usize = 65;

/// The longest `:`-ending prefix of `text` within `budget` bytes (`""` if
/// none): whole segments, so prefix invalidation can still reach it.
fn segment_prefix(text: &str, budget: usize) -> &str {
    let head = &text.as_bytes()[..budget.min(text.len())];
    match head.iter().rposition(|&b| b == b':') {
        Some(i) => &text[..=i],
        None => "",
    }
}

/// The key a store is handed: `key` itself up to [`MAX_STORED_KEY`] bytes;
/// beyond that, its whole `:`-segments that fit (kept readable, so prefix
/// invalidation still reaches it), `#` and the SHA-256 of the whole key.
/// Deterministic, so every process agrees; collision-resistant, so two
/// long keys never share an entry.
#[inline]
pub(crate) fn stored(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_STORED_KEY {
        return Cow::Borrowed(key);
    }
    Cow::Owned(hashed(key))
}

#[cold]
fn hashed(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let readable = segment_prefix(key, MAX_STORED_KEY - DIGEST_LEN);
    let mut out = String::with_capacity(readable.len() + DIGEST_LEN);
    out.push_str(readable);
    out.push('#');
    for b in Sha256::digest(key.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The prefix a store is asked to invalidate for `prefix`: itself when
/// every key under it keeps it readable ([`stored`]); otherwise its longest
/// `:`-ending prefix that does, which reaches every shortened key under
/// `prefix` and some beside it: more than asked, never less.
///
/// `keep` bytes (the namespace) must survive: `None` for a prefix whose
/// readable part would be shorter, which is refused rather than widened to
/// the whole store.
pub(crate) fn stored_prefix(prefix: &str, keep: usize) -> Option<&str> {
    if prefix.len() <= MAX_STORED_KEY - DIGEST_LEN {
        return Some(prefix);
    }
    let readable = segment_prefix(prefix, MAX_STORED_KEY - DIGEST_LEN);
    (!readable.is_empty() && readable.len() >= keep).then_some(readable)
}

/// Checks that a key is usable on every store, so that a key works (or is
/// refused) the same whichever store is configured: not empty; without
/// NUL, which PostgreSQL text cannot hold (every other character is held by
/// every store: Memcached's keys are encoded, SQL and Redis take any other
/// text); and without `#`, which marks a shortened long key
/// (`...#<sha256>`): a key written with one could take the shape of another
/// key's shortened form and share its entry. A refused key is bad input,
/// never a store failure: `get_or_compute` and `#[cached]` compute without
/// caching (counted in `Stats::errors` and logged).
pub fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: String::new(),
            reason: "keys must not be empty",
        });
    }
    if key.contains('\0') {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: NUL_REASON,
        });
    }
    if key.contains('#') {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: "keys must not contain '#', which marks shortened long keys: escape \
                     values with `cacheruntime::key::escape` (it writes `%23`)",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_keep_their_whole_segments_and_hash_the_rest() {
        let short = format!("feed:{}", "a".repeat(100));
        assert_eq!(stored(&short), short.as_str());
        let url = format!("https%3A%2F%2Fex.test%2F{}", "x".repeat(2000));
        let long = format!("ns:feed:{url}:body");
        let s = stored(&long);
        assert!(s.len() <= MAX_STORED_KEY);
        assert!(s.starts_with("ns:feed:#"), "{s}");
        assert_eq!(s, stored(&long), "deterministic");
        let other = format!("ns:feed:{url}:head");
        assert_ne!(stored(&other), s, "the hash covers the whole key");
        // A prefix too long to stay readable falls back to the segments
        // that do, which every key under it keeps.
        let prefix = format!("ns:feed:{url}:");
        let p = stored_prefix(&prefix, 3).unwrap();
        assert_eq!(p, "ns:feed:");
        assert!(s.starts_with(p) && stored(&other).starts_with(p));
        assert_eq!(stored_prefix("ns:feed:", 3).unwrap(), "ns:feed:");
        // Never widened to everything, nor past the namespace.
        let flat_prefix = format!("{}:", "q".repeat(2000));
        assert!(stored_prefix(&flat_prefix, 0).is_none());
        assert!(stored_prefix(&format!("{}:x:{}:", "n".repeat(1000), "y"), 1001).is_none());
        // A key with no `:` early on is all hash.
        let flat = "z".repeat(3000);
        assert_eq!(stored(&flat).len(), DIGEST_LEN);
    }

    fn render(parts: &[&str]) -> String {
        let mut k = KeyBuilder::new();
        k.literal("pair:");
        k.value(parts[0]);
        k.literal(":");
        k.value(parts[1]);
        k.finish()
    }

    #[test]
    fn colon_in_values_cannot_collide() {
        assert_ne!(render(&["1:2", "3"]), render(&["1", "2:3"]));
        assert_eq!(render(&["1:2", "3"]), "pair:1%3A2:3");
    }

    #[test]
    fn long_keys_spill_to_the_heap_intact() {
        let mut k = KeyBuilder::new();
        k.literal("long:");
        let value = "x:".repeat(100);
        k.value(&value);
        assert_eq!(k.as_str(), format!("long:{}", escape(&value)));
        assert_eq!(k.finish().len(), 5 + 400);
    }

    #[test]
    fn percent_and_whitespace_are_escaped() {
        assert_eq!(escape("a%3Ab"), "a%253Ab");
        assert_eq!(escape("a b\n"), "a%20b%0A");
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
        // Unicode whitespace and controls too; other non-ASCII stays.
        assert_eq!(escape("a\u{2028}b\u{80}"), "a%E2%80%A8b%C2%80");
        assert!(matches!(escape("café"), Cow::Borrowed("café")));
    }

    #[test]
    fn nul_is_refused_and_escaped() {
        assert!(matches!(check_key("a\0b"), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            check_prefix("a\0:"),
            Err(Error::InvalidPrefix { .. })
        ));
        assert!(
            check_key("a\tb\u{1}:c").is_ok(),
            "other controls every store holds"
        );
        // Interpolated values never bring one into a rendered key.
        let mut k = KeyBuilder::new();
        k.literal("user:").value("a\0b");
        assert_eq!(k.as_str(), "user:a%00b");
        assert!(check_key(k.as_str()).is_ok());
    }

    #[test]
    fn prefixes_must_be_whole_segments() {
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("author:42:").is_ok());
        let err = check_prefix("author:4").unwrap_err().to_string();
        assert!(err.contains("must end with ':'"), "{err}");
    }
}
