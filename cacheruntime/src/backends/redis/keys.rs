//! The names the Redis backend stores things under: entries, locks and
//! generation counters, each hash-tagged so that everything one key's
//! read or write touches sits in one Cluster slot.

use crate::backends::generations::{counters, Kind};

/// The physical key of `kind` for `name` (a key, or a prefix for
/// [`Kind::Prefix`]), tagged with `name`'s first segment so everything of
/// one key lands in one Cluster slot.
///
/// `<k>:{<first segment>}<rest>` when the first segment is a valid tag
/// (non-empty, no braces): `v:{author}:42:top`, and for a prefix counter
/// `g:{author}:author:42:`. Otherwise `<k>:{~<hash of it>}!<name>`: the `!`
/// after the tag never follows a valid tag (a rest is empty or starts with
/// `:`), so the two forms never meet.
pub(super) fn physical(kind: Kind, name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 24);
    push_physical(&mut out, kind, name);
    out
}

fn push_physical(out: &mut String, kind: Kind, name: &str) {
    use std::fmt::Write;
    let first = name.split(':').next().unwrap_or("");
    let k = kind.letter();
    if first.is_empty() || first.contains(['{', '}']) {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(first.as_bytes());
        let _ = write!(out, "{k}:{{~");
        for b in &digest[..8] {
            let _ = write!(out, "{b:02x}");
        }
        let _ = write!(out, "}}!{name}");
    } else if let Kind::Prefix = kind {
        let _ = write!(out, "{k}:{{{first}}}:{name}");
    } else {
        let _ = write!(out, "{k}:{{{first}}}{}", &name[first.len()..]);
    }
}

pub(super) fn lock_key(key: &str) -> String {
    physical(Kind::Lock, key)
}

/// An entry's key and its counters' keys (prefixes shallowest first, then
/// the key's own), in one buffer: one allocation per call, not one per key.
pub(super) struct Layout {
    buf: String,
    entry: std::ops::Range<usize>,
    pub(super) counters: Vec<std::ops::Range<usize>>,
}

impl Layout {
    pub(super) fn of(key: &str) -> Layout {
        let mut buf = String::with_capacity(key.len() * 5 + 48);
        push_physical(&mut buf, Kind::Entry, key);
        let entry = 0..buf.len();
        let mut ranges = Vec::with_capacity(5);
        for (kind, name) in counters(key) {
            let start = buf.len();
            push_physical(&mut buf, kind, name);
            ranges.push(start..buf.len());
        }
        Layout {
            buf,
            entry,
            counters: ranges,
        }
    }

    pub(super) fn entry(&self) -> &str {
        &self.buf[self.entry.clone()]
    }

    pub(super) fn counters(&self) -> impl Iterator<Item = &str> + '_ {
        self.counters.iter().map(|r| &self.buf[r.clone()])
    }

    pub(super) fn own_counter(&self) -> &str {
        let own = self.counters.last().expect("every key has its own counter");
        &self.buf[own.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::generations::prefixes;

    /// The slot of a physical key, as Redis Cluster computes it: CRC16 of
    /// the hash tag when there is a non-empty one.
    fn slot_of(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        });
        let mut crc: u16 = 0;
        for &b in tagged.unwrap_or(bytes) {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn layout_tags_every_key_of_a_prefix_into_one_slot() {
        let l = Layout::of("shop:author:42:top");
        assert_eq!(l.entry(), "v:{shop}:author:42:top");
        assert_eq!(
            l.counters().collect::<Vec<_>>(),
            [
                "g:{shop}:shop:",
                "g:{shop}:shop:author:",
                "g:{shop}:shop:author:42:",
                "x:{shop}:author:42:top",
            ]
        );
        // The counters an invalidation or delete bumps are the ones reads
        // consult.
        let l = Layout::of("a:b");
        assert_eq!(
            l.counters().next(),
            Some(physical(Kind::Prefix, "a:").as_str())
        );
        assert_eq!(l.own_counter(), "x:{a}:b");
        assert_eq!(lock_key("a:b"), "l:{a}:b");
    }

    #[test]
    fn keys_without_a_usable_first_segment_still_share_one_slot() {
        for key in [":posts", "::x:y", "{a}:b", "a}b:c:d", "}:x", "solo", "{}:q"] {
            let l = Layout::of(key);
            let slot = slot_of(l.entry());
            for c in l.counters() {
                assert_eq!(slot_of(c), slot, "{key}: {c} vs {}", l.entry());
            }
            assert_eq!(slot_of(&lock_key(key)), slot, "{key}");
            // The invalidation of each prefix bumps a counter in that slot.
            for p in prefixes(key) {
                assert_eq!(slot_of(&physical(Kind::Prefix, p)), slot, "{key}: {p}");
            }
        }
        // And the odd form never takes the shape of a usual one.
        assert_ne!(
            physical(Kind::Entry, ":posts"),
            physical(Kind::Entry, "x:posts")
        );
        assert!(physical(Kind::Entry, ":posts").starts_with("v:{~"));
        assert_ne!(physical(Kind::Entry, "~0:"), physical(Kind::Entry, ":"));
    }

    #[test]
    fn glob_characters_stay_literal_text() {
        // No pattern matching anywhere: a prefix is a counter's name.
        assert_eq!(physical(Kind::Prefix, "a*:"), "g:{a*}:a*:");
        assert_eq!(physical(Kind::Entry, "a[1]:?"), "v:{a[1]}:?");
    }

    #[test]
    fn stored_names_are_pinned() {
        // Deployed data lives under these names: changing one strands it.
        let key = "shop:author:42:top";
        assert_eq!(physical(Kind::Entry, key), "v:{shop}:author:42:top");
        assert_eq!(lock_key(key), "l:{shop}:author:42:top");
        assert_eq!(physical(Kind::Own, key), "x:{shop}:author:42:top");
        assert_eq!(
            physical(Kind::Prefix, "shop:author:"),
            "g:{shop}:shop:author:"
        );
        assert_eq!(
            physical(Kind::Entry, ":posts"),
            "v:{~e3b0c44298fc1c14}!:posts"
        );
        assert_eq!(physical(Kind::Prefix, "{a}:"), "g:{~460c3a93211614ac}!{a}:");
        assert_eq!(lock_key("{a}:b"), "l:{~460c3a93211614ac}!{a}:b");
    }
}
