//! The envelope around every stored value.
//!
//! ```text
//! offset size field
//! 0      1    format version (FORMAT_VERSION)
//! 1      1    codec id
//! 2      1    flags: bit 0 set when a 32-byte HMAC tag ends the entry;
//!             bit 1 set when the payload is zstd-compressed; bit 2 set
//!             when the tag section below follows the header
//! 3      8    fingerprint: hash of the value's type name and `version = N`
//! 11     8    fresh until, ms since the Unix epoch
//! 19     8    stale until, ms since the Unix epoch (>= fresh until)
//! 27     8    kept until, ms since the Unix epoch (>= stale until): past
//!             stale until, the value is only served when its computation
//!             fails (`stale_if_error`); the store keeps it this long
//! 35     4    measured computation time, ms
//! 39     8    written at, ms since the Unix epoch: when the value was
//!             stored (a touch keeps it)
//! 47     ..   (bit 2 only) the tag section: its length in bytes (2, little
//!             endian), then for each tag of the entry, in byte order, its
//!             length (2), its name and the token it had when the value's
//!             read began (8); the fingerprint then covers the section
//!             (`tags.rs`)
//! ..     ..   codec payload, or (bit 1) a zstd frame of it that states
//!             its decompressed size
//! ```
//!
//! Anything that does not match (short input, another format or codec,
//! another type, a flag this build does not know) is a miss that gets
//! overwritten, never a wrong value: a flag changes how the payload reads,
//! so an entry with an unknown one is never decoded. Format 2 (before
//! `written at`: the same layout without it, the tag section at 39) is
//! read, and written unless a cache asks for `written at`
//! (`CacheBuilder::record_written_at`): the release before this one reads
//! only format 2, and would take a format-3 entry for an absent one.
//! Format 1 (before `kept until`) is read as another format.
//!
//! Compression (bit 1) is known only to builds with the `compression`
//! feature: a process built without it refuses compressed entries, as any
//! other unknown flag (a miss, never a wrong value), and overwrites them
//! with plain ones. The signature covers the bytes as stored (compressed).

use crate::Error;

/// Bumped whenever the layout above changes.
pub const FORMAT_VERSION: u8 = 3;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 47;
/// The format before `written at`: read, and written unless a cache asks
/// for `written at` (`CacheBuilder::record_written_at`), since a release
/// before this one reads only it.
pub const PREVIOUS_VERSION: u8 = 2;
/// Size of the fixed header of [`PREVIOUS_VERSION`] entries.
const PREVIOUS_HEADER_LEN: usize = 39;
/// Flag: the entry ends with an HMAC-SHA256 tag (see [`crate::signing`]).
pub const FLAG_SIGNED: u8 = 1;
/// Flag: the payload is a zstd frame of the codec's output (the
/// `compression` feature; see `CacheBuilder::compress_above`).
pub const FLAG_COMPRESSED: u8 = 2;
/// Flag: a tag section follows the header (entries stored with tags,
/// `invalidate_tag`).
pub const FLAG_TAGGED: u8 = 4;
/// Every flag this build reads; an entry with another is refused. Only a
/// build with the `compression` feature reads [`FLAG_COMPRESSED`].
#[cfg(feature = "compression")]
pub const KNOWN_FLAGS: u8 = FLAG_SIGNED | FLAG_COMPRESSED | FLAG_TAGGED;
/// Every flag this build reads; an entry with another is refused. Only a
/// build with the `compression` feature reads [`FLAG_COMPRESSED`].
#[cfg(not(feature = "compression"))]
pub const KNOWN_FLAGS: u8 = FLAG_SIGNED | FLAG_TAGGED;

/// The decoded fixed part of an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Codec that wrote the payload.
    pub codec: u8,
    /// [`FLAG_SIGNED`] and [`FLAG_COMPRESSED`], or 0.
    pub flags: u8,
    /// Type-and-version fingerprint.
    pub fingerprint: u64,
    /// Fresh until this wall-clock ms.
    pub fresh_until_ms: u64,
    /// Servable (stale) until this wall-clock ms.
    pub stale_until_ms: u64,
    /// Kept until this wall-clock ms: served past `stale_until_ms` only
    /// when the computation fails (`stale_if_error`).
    pub kept_until_ms: u64,
    /// How long the value took to compute.
    pub compute_ms: u32,
    /// When the value was stored, wall-clock ms: `None` in format 2, which
    /// does not record it. Touching an entry keeps it (in format 3).
    pub written_ms: Option<u64>,
}

impl Header {
    /// Writes the header to the front of `out` (which must be empty) in
    /// `format`: [`FORMAT_VERSION`], or [`PREVIOUS_VERSION`] (without
    /// `written at`).
    pub fn write_as(&self, out: &mut Vec<u8>, format: u8) {
        debug_assert!(out.is_empty());
        debug_assert!(format == FORMAT_VERSION || format == PREVIOUS_VERSION);
        out.push(format);
        out.push(self.codec);
        out.push(self.flags);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.fresh_until_ms.to_le_bytes());
        out.extend_from_slice(&self.stale_until_ms.to_le_bytes());
        out.extend_from_slice(&self.kept_until_ms.to_le_bytes());
        out.extend_from_slice(&self.compute_ms.to_le_bytes());
        if format == FORMAT_VERSION {
            out.extend_from_slice(&self.written_ms.unwrap_or(0).to_le_bytes());
        }
    }

    /// Splits an entry into its header and payload (past the tag section,
    /// if the entry has one: see [`tag_section`]).
    #[inline]
    pub fn read(bytes: &[u8]) -> Result<(Header, &[u8]), Error> {
        Header::read_known(bytes, KNOWN_FLAGS)
    }

    /// [`read`](Self::read), refusing any flag outside `known` (a subset of
    /// [`KNOWN_FLAGS`]: what a build with fewer features reads).
    #[inline]
    pub fn read_known(bytes: &[u8], known: u8) -> Result<(Header, &[u8]), Error> {
        let Some(len) = header_len(bytes) else {
            return Err(match bytes.first() {
                Some(&v) if v != FORMAT_VERSION && v != PREVIOUS_VERSION => Error::decode(format!(
                    "entry has format version {v}, this build reads \
                         {PREVIOUS_VERSION} and {FORMAT_VERSION}"
                )),
                _ => Error::decode("entry shorter than the envelope header"),
            });
        };
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let header = Header {
            codec: bytes[1],
            flags: bytes[2],
            fingerprint: u64_at(3),
            fresh_until_ms: u64_at(11),
            stale_until_ms: u64_at(19),
            kept_until_ms: u64_at(27),
            compute_ms: u32::from_le_bytes(bytes[35..39].try_into().unwrap()),
            written_ms: (len == HEADER_LEN).then(|| u64_at(39)),
        };
        if header.stale_until_ms < header.fresh_until_ms
            || header.kept_until_ms < header.stale_until_ms
        {
            return Err(Error::decode("entry's deadlines are out of order"));
        }
        if header.flags & !known != 0 {
            return Err(Error::decode(format!(
                "entry has flags {:#04x}, this build reads {known:#04x}",
                header.flags
            )));
        }
        if header.flags & FLAG_TAGGED == 0 {
            return Ok((header, &bytes[len..]));
        }
        let section =
            tag_section(bytes).ok_or_else(|| Error::decode("entry's tag section is cut short"))?;
        Ok((header, &bytes[len + 2 + section.len()..]))
    }
}

/// The length of the fixed header of `bytes`'s format, `None` for a format
/// this build does not read or an entry too short for its header.
fn header_len(bytes: &[u8]) -> Option<usize> {
    let len = match *bytes.first()? {
        FORMAT_VERSION => HEADER_LEN,
        PREVIOUS_VERSION => PREVIOUS_HEADER_LEN,
        _ => return None,
    };
    (bytes.len() >= len).then_some(len)
}

/// An entry's flags byte, without reading the rest of its header, or
/// `None` when it is too short to have one: what decides, before any
/// parsing, whether an entry carries a tag section.
pub fn flags(bytes: &[u8]) -> Option<u8> {
    bytes.get(2).copied()
}

/// The tag section of an entry whose flags have [`FLAG_TAGGED`] (what
/// follows its length, after the header of the entry's format), or `None`
/// when the entry is too short to hold it or of a format this build does
/// not read. Read nothing else from an entry without the flag.
pub fn tag_section(bytes: &[u8]) -> Option<&[u8]> {
    let at = header_len(bytes)?;
    let len = bytes.get(at..at + 2)?;
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    bytes.get(at + 2..at + 2 + len)
}

/// FNV-1a over the type name and the user's version: stable across processes
/// and builds of the same code, unlike `DefaultHasher`.
/// (`const`, so fixed fingerprints such as counters' are constants.)
pub const fn fingerprint(type_name: &str, version: u32) -> u64 {
    const fn mix(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        h
    }
    let h = mix(0xcbf2_9ce4_8422_2325, type_name.as_bytes());
    mix(h, &version.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with every field set, with `flags`.
    fn sample(flags: u8) -> Header {
        Header {
            codec: 1,
            flags,
            fingerprint: 42,
            fresh_until_ms: 10,
            stale_until_ms: 20,
            kept_until_ms: 30,
            compute_ms: 7,
            written_ms: Some(5),
        }
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = sample(0);
        let mut out = Vec::new();
        h.write_as(&mut out, FORMAT_VERSION);
        out.extend_from_slice(b"xyz");
        let (back, payload) = Header::read(&out).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, b"xyz");
        assert!(Header::read(&out[..10]).is_err());
        let mut unknown_flag = out.clone();
        unknown_flag[2] = 0x80;
        assert!(Header::read(&unknown_flag).is_err(), "unknown flag");
        let mut compressed = out.clone();
        compressed[2] = FLAG_COMPRESSED | FLAG_SIGNED;
        assert_eq!(
            Header::read(&compressed).is_ok(),
            cfg!(feature = "compression"),
            "compressed entries are read by builds with the feature only"
        );
        assert!(
            Header::read_known(&compressed, FLAG_SIGNED).is_err(),
            "what a build without the feature reads"
        );
        let mut disordered = out.clone();
        disordered[27..35].copy_from_slice(&15u64.to_le_bytes());
        assert!(Header::read(&disordered).is_err(), "kept before stale");
        let mut tagged = out.clone();
        tagged[2] = FLAG_TAGGED;
        assert!(
            Header::read(&tagged).is_err(),
            "section length past the end"
        );
        tagged.truncate(HEADER_LEN);
        tagged.extend_from_slice(&[3, 0, b'a', b'b', b'c', b'p']);
        let (_, payload) = Header::read(&tagged).unwrap();
        assert_eq!(payload, b"p", "the payload follows the section");
        assert_eq!(tag_section(&tagged), Some(&b"abc"[..]));
        out[0] = 1;
        assert!(Header::read(&out).is_err(), "format 1");
        out[0] = FORMAT_VERSION + 1;
        assert!(Header::read(&out).is_err(), "a later format");
    }

    /// What the previous release wrote: the same header without `written
    /// at`, the tag section right after it.
    fn previous_format(current: &[u8]) -> Vec<u8> {
        let mut old = [&current[..PREVIOUS_HEADER_LEN], &current[HEADER_LEN..]].concat();
        old[0] = PREVIOUS_VERSION;
        old
    }

    #[test]
    fn entries_of_the_previous_format_read_with_no_written_at() {
        let h = sample(FLAG_TAGGED);
        let mut out = Vec::new();
        h.write_as(&mut out, FORMAT_VERSION);
        out.extend_from_slice(&[3, 0, b'a', b'b', b'c', b'p', b'q']);
        let old = previous_format(&out);
        let (back, payload) = Header::read(&old).unwrap();
        assert_eq!(
            back,
            Header {
                written_ms: None,
                ..h
            }
        );
        // What `write_as` writes in the previous format is that layout.
        let mut written = Vec::new();
        h.write_as(&mut written, PREVIOUS_VERSION);
        written.extend_from_slice(&out[HEADER_LEN..]);
        assert_eq!(written, old);
        assert_eq!(payload, b"pq");
        assert_eq!(tag_section(&old), Some(&b"abc"[..]));
        assert_eq!(tag_section(&out), Some(&b"abc"[..]));
        // Cut inside either header: refused, never read short.
        assert!(Header::read(&old[..PREVIOUS_HEADER_LEN - 1]).is_err());
        assert!(Header::read(&out[..HEADER_LEN - 1]).is_err());
        assert_eq!(tag_section(&out[..HEADER_LEN - 1]), None);
        let mut later = out.clone();
        later[0] = FORMAT_VERSION + 1;
        assert_eq!(
            tag_section(&later),
            None,
            "a format this build does not read"
        );
    }

    #[test]
    fn fingerprint_depends_on_type_and_version() {
        assert_ne!(fingerprint("Vec<i64>", 0), fingerprint("Vec<i32>", 0));
        assert_ne!(fingerprint("Vec<i64>", 0), fingerprint("Vec<i64>", 1));
        assert_eq!(fingerprint("Vec<i64>", 3), fingerprint("Vec<i64>", 3));
    }
}
