//! The names things are stored under on the servers.
//!
//! | name | what | on |
//! |---|---|---|
//! | `v:<key>` | an entry | the key's server |
//! | `l:<key>` | its lock | the key's server |
//! | `x:<key>` | the key's own counter | the key's servers (up to three) |
//! | `g:<prefix>` | a prefix's counter | the prefix's servers (up to three) |
//!
//! The letters, and the order a key's counters are read and recorded in,
//! are the ones Redis uses too (`generations.rs`).
//!
//! Memcached keys are at most 250 bytes with no whitespace or control
//! characters: a longer or unusual key or prefix is stored under a
//! readable part of it plus a SHA-256 of the whole, the same in every
//! process. Placement (`ring.rs`) hashes the key or prefix itself, not
//! these names.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::backends::generations::Kind;

/// Memcached's key length limit.
pub(super) const MAX_KEY: usize = 250;

pub(super) fn valid_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// The name of `kind` for `text` (a key, or a prefix for a prefix's
/// counter): `kind`'s letter and `:` (the layout Redis shares,
/// `generations.rs`), then `text` itself when short and clean, otherwise a
/// readable clean part of it and a SHA-256 of the whole.
pub(super) fn name(kind: Kind, text: &str) -> String {
    let budget = MAX_KEY - kind.letter().len() - 1;
    let mut out = String::with_capacity(kind.letter().len() + 1 + text.len().min(budget));
    out.push_str(kind.letter());
    out.push(':');
    if text.len() <= budget && text.bytes().all(valid_byte) {
        out.push_str(text);
        return out;
    }
    let digest = Sha256::digest(text.as_bytes());
    let readable = text
        .chars()
        .filter(char::is_ascii_graphic)
        .take(budget - 33);
    out.extend(readable);
    out.push('#');
    for b in digest.iter().take(16) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub(super) fn entry_key(key: &str) -> String {
    name(Kind::Entry, key)
}

pub(super) fn lock_key(key: &str) -> String {
    name(Kind::Lock, key)
}

pub(super) fn prefix_counter_key(prefix: &str) -> String {
    name(Kind::Prefix, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_obey_memcached_rules_and_stay_distinct() {
        let long = format!("user:{}:feed", "x".repeat(400));
        for key in ["author:42:top", "a b:\u{1}c", long.as_str(), "solo", "é:ü"] {
            for name in [entry_key(key), lock_key(key), name(Kind::Own, key)] {
                assert!(name.len() <= MAX_KEY, "{name}");
                assert!(name.bytes().all(valid_byte), "{name:?}");
            }
        }
        assert_eq!(entry_key("author:42:top"), "v:author:42:top");
        assert_eq!(prefix_counter_key("shop:author:"), "g:shop:author:");
        // Deterministic, distinct for distinct keys, and a shortened name
        // keeps the start of the key (the conformance suite finds a
        // namespace's counters by it).
        assert_eq!(entry_key(&long), entry_key(&long));
        assert_ne!(entry_key(&long), entry_key(&format!("{long}2")));
        assert_ne!(entry_key("a b:1"), entry_key("a_b:1"));
        assert!(name(Kind::Own, &long).starts_with("x:user:xxx"));
    }

    #[test]
    fn stored_names_are_pinned() {
        // Deployed data lives under these names: changing one strands it.
        let key = "shop:author:42:top";
        assert_eq!(entry_key(key), "v:shop:author:42:top");
        assert_eq!(lock_key(key), "l:shop:author:42:top");
        assert_eq!(name(Kind::Own, key), "x:shop:author:42:top");
        assert_eq!(prefix_counter_key("shop:author:"), "g:shop:author:");
        assert_eq!(
            entry_key("a b:1"),
            "v:ab:1#d70f071cfe988d2dba8e5e637082d919"
        );
        let long = format!("user:{}:feed", "x".repeat(400));
        assert_eq!(
            name(Kind::Own, &long),
            format!(
                "x:user:{}#361eb275f87e0190aa9def765069db14",
                "x".repeat(210)
            )
        );
        assert_eq!(
            prefix_counter_key("a\u{1}b:"),
            "g:ab:#9350963255789199d7089ecbfd3a9981"
        );
    }
}
