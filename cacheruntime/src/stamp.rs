//! A write's tags and their tokens, as an entry's envelope records them
//! (the tag section), and the fingerprint that covers them. Pure data: the
//! tokens' reads and writes are `tags.rs`'s.

/// The most tags one entry may have.
pub const MAX_TAGS: usize = 32;
/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 250;

/// The tags of one write with their tokens as read before the value was
/// computed: the envelope's tag section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    section: Box<[u8]>,
}

impl Stamp {
    /// The section for `tags` (sorted and without repeats, so the same
    /// tags in any order give one section).
    pub(crate) fn new(mut tags: Vec<(&str, u64)>) -> Stamp {
        if !tags.is_sorted() {
            tags.sort_unstable();
        }
        tags.dedup_by(|a, b| a.0 == b.0);
        let mut section = Vec::with_capacity(tags.iter().map(|(t, _)| t.len() + 10).sum());
        for (tag, token) in tags {
            section.extend_from_slice(&(tag.len() as u16).to_le_bytes());
            section.extend_from_slice(tag.as_bytes());
            section.extend_from_slice(&token.to_le_bytes());
        }
        Stamp {
            section: section.into_boxed_slice(),
        }
    }

    /// The section as the envelope holds it.
    pub(crate) fn section(&self) -> &[u8] {
        &self.section
    }

    /// The fingerprint of an entry of type fingerprint `fp` stored with
    /// this stamp: a tagged call accepts only this one.
    pub(crate) fn fingerprint(&self, fp: u64) -> u64 {
        covering(fp, &self.section)
    }
}

/// The fingerprint `fp` extended over a tag section (FNV-1a, as
/// [`crate::envelope::fingerprint`]): stable across processes and builds.
///
/// The section is taken eight bytes at a time (little endian), then the
/// bytes left one by one, with its length last: the same value on every
/// platform, and a word per step on the tagged hit path.
pub(crate) fn covering(fp: u64, section: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = (0xcbf2_9ce4_8422_2325u64 ^ fp).wrapping_mul(PRIME);
    let mut words = section.chunks_exact(8);
    for word in &mut words {
        h = (h ^ u64::from_le_bytes(word.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
        h ^= h >> 29;
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    h = (h ^ section.len() as u64).wrapping_mul(PRIME);
    h ^ (h >> 32)
}

/// The tags and tokens a section records; `None` for a malformed one.
pub(crate) fn recorded(section: &[u8]) -> Option<Vec<(&str, u64)>> {
    let mut out = Vec::new();
    let mut rest = section;
    while !rest.is_empty() {
        if out.len() == MAX_TAGS {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]));
        let tag = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        let token = u64::from_le_bytes(rest.get(2 + len..10 + len)?.try_into().ok()?);
        out.push((tag, token));
        rest = &rest[10 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_one_section_for_the_same_tags_in_any_order() {
        let a = Stamp::new(vec![("b", 2), ("a", 1), ("b", 2)]);
        let b = Stamp::new(vec![("a", 1), ("b", 2)]);
        assert_eq!(a, b);
        assert_eq!(recorded(a.section()), Some(vec![("a", 1), ("b", 2)]));
        assert_ne!(
            a.fingerprint(7),
            Stamp::new(vec![("a", 1), ("b", 3)]).fingerprint(7)
        );
        assert_ne!(a.fingerprint(7), a.fingerprint(8));
        assert_eq!(recorded(&[5, 0, b'a']), None, "cut short");
    }
}
