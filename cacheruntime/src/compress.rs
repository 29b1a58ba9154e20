//! Optional zstd compression of payloads (the `compression` feature).
//!
//! A cache built with [`compress_above`](crate::CacheBuilder::compress_above)
//! compresses every codec payload at least that long, and keeps the result
//! only when it is smaller; the envelope's [`FLAG_COMPRESSED`] says so, and
//! the signature covers the bytes as stored. Reading does not depend on the
//! setting: every handle of a build with the feature reads compressed and
//! plain entries alike, and a build without it does not know the flag, so
//! it refuses such entries (a miss that gets overwritten), never decoding
//! them wrong.
//!
//! Decompression is bounded: a frame must state its decompressed size, and
//! that size must be at most [`DECOMPRESSED_FACTOR`] times the reading
//! cache's `max_entry_bytes`; anything else (or a frame that decodes to
//! another size) is a decode failure, never an allocation a hostile or
//! corrupt entry chose.
//!
//! [`FLAG_COMPRESSED`]: crate::envelope::FLAG_COMPRESSED

use std::borrow::Cow;

use crate::envelope::FLAG_COMPRESSED;
use crate::Error;

/// A compressed payload may decompress to at most this many times the
/// cache's `max_entry_bytes` (32 MiB at the default 1 MiB); a writer does
/// not compress a payload longer than that, so what it writes reads back.
pub(crate) const DECOMPRESSED_FACTOR: usize = 32;

/// The zstd level when none is given: zstd's own default.
pub(crate) const DEFAULT_LEVEL: i32 = 3;

/// The levels a cache accepts (zstd's usual range).
pub(crate) const LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

/// A cache's compression settings: what it writes, and the bound on what
/// it reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compression {
    /// Payloads at least this long are compressed; `None`: none are.
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    above: Option<usize>,
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    level: i32,
    /// The most a compressed payload may decompress to.
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    limit: usize,
}

impl Compression {
    /// Compressing payloads of `above` bytes or more (never, for `None`) at
    /// `level`, for a cache whose entries are at most `max_entry_bytes`.
    pub(crate) fn new(above: Option<usize>, level: i32, max_entry_bytes: usize) -> Self {
        Compression {
            above,
            level,
            limit: max_entry_bytes.saturating_mul(DECOMPRESSED_FACTOR),
        }
    }

    /// Compresses the payload `out[start..]` in place when it is at or
    /// above the threshold and compression makes it smaller; whether it
    /// did (the caller sets [`FLAG_COMPRESSED`]).
    #[inline]
    pub(crate) fn compress_tail(&self, out: &mut Vec<u8>, start: usize) -> bool {
        #[cfg(feature = "compression")]
        if let Some(above) = self.above {
            let len = out.len() - start;
            if len >= above && len <= self.limit {
                if let Ok(packed) = contexts::compress(&out[start..], self.level) {
                    if packed.len() < len {
                        out.truncate(start);
                        out.extend_from_slice(&packed);
                        return true;
                    }
                }
            }
        }
        let _ = (out, start);
        false
    }

    /// The codec payload of an entry with `flags`: `payload` itself, or
    /// its decompression, bounded by the limit.
    #[inline]
    pub(crate) fn payload<'b>(&self, flags: u8, payload: &'b [u8]) -> Result<Cow<'b, [u8]>, Error> {
        if flags & FLAG_COMPRESSED == 0 {
            return Ok(Cow::Borrowed(payload));
        }
        self.decompress(payload).map(Cow::Owned)
    }

    #[cold]
    fn decompress(&self, data: &[u8]) -> Result<Vec<u8>, Error> {
        #[cfg(feature = "compression")]
        {
            let size = match zstd::zstd_safe::get_frame_content_size(data) {
                Ok(Some(size)) => size,
                Ok(None) => {
                    return Err(Error::decode(
                        "compressed entry does not state its decompressed size",
                    ))
                }
                Err(_) => return Err(Error::decode("compressed entry is corrupt")),
            };
            if size > self.limit as u64 {
                return Err(Error::decode(format!(
                    "compressed entry would decompress to {size} bytes, over this cache's \
                     limit of {} ({DECOMPRESSED_FACTOR} x max_entry_bytes)",
                    self.limit
                )));
            }
            let out = contexts::decompress(data, size as usize)
                .map_err(|e| Error::decode(format!("compressed entry is corrupt: {e}")))?;
            if out.len() as u64 != size {
                return Err(Error::decode(
                    "compressed entry decompressed to another size than it states",
                ));
            }
            Ok(out)
        }
        #[cfg(not(feature = "compression"))]
        {
            let _ = data;
            Err(Error::decode(
                "entry is compressed and the `compression` feature is not compiled in",
            ))
        }
    }
}

/// zstd contexts kept per thread: making one costs more than compressing
/// a few kilobytes with it (measured on the memory store: 21 µs a set +
/// get of a 780-byte feed with fresh contexts, 6 µs reused; BENCHMARKS.md),
/// so each thread keeps one of each.
#[cfg(feature = "compression")]
mod contexts {
    use std::cell::RefCell;
    use std::io;

    use zstd::bulk::{Compressor, Decompressor};

    thread_local! {
        static COMPRESSOR: RefCell<Option<(i32, Compressor<'static>)>> =
            const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> =
            const { RefCell::new(None) };
    }

    /// One zstd frame of `data` (stating its size) at `level`.
    pub(super) fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
        COMPRESSOR.with(|slot| {
            let mut slot = slot.try_borrow_mut().map_err(io::Error::other)?;
            match &mut *slot {
                Some((at, _)) if *at == level => {}
                Some((at, c)) => {
                    c.set_compression_level(level)?;
                    *at = level;
                }
                None => *slot = Some((level, Compressor::new(level)?)),
            }
            let (_, c) = slot.as_mut().expect("set above");
            c.compress(data)
        })
    }

    /// The frame `data` decompressed into at most `capacity` bytes.
    pub(super) fn decompress(data: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
        DECOMPRESSOR.with(|slot| {
            let mut slot = slot.try_borrow_mut().map_err(io::Error::other)?;
            if slot.is_none() {
                *slot = Some(Decompressor::new()?);
            }
            slot.as_mut().expect("set above").decompress(data, capacity)
        })
    }
}

#[cfg(all(test, feature = "compression"))]
mod tests {
    use super::*;

    /// A feed-like payload: repetitive text, as XML is.
    fn text(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(format!("<item><title>post {i}</title></item>").as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    /// Bytes zstd cannot shrink (xorshift noise).
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn sealed(c: &Compression, payload: &[u8]) -> (Vec<u8>, bool) {
        let mut out = b"head".to_vec();
        out.extend_from_slice(payload);
        let packed = c.compress_tail(&mut out, 4);
        assert_eq!(&out[..4], b"head");
        (out[4..].to_vec(), packed)
    }

    #[test]
    fn payloads_at_or_above_the_threshold_round_trip_compressed() {
        let c = Compression::new(Some(1000), DEFAULT_LEVEL, 1 << 20);
        for len in [1000, 5000, 100_000] {
            let raw = text(len);
            let (stored, packed) = sealed(&c, &raw);
            assert!(packed, "{len}");
            assert!(stored.len() < raw.len() / 3, "{len}: {}", stored.len());
            let back = c.payload(FLAG_COMPRESSED, &stored).unwrap();
            assert_eq!(&*back, &raw[..]);
            // The frame states its size: what the bound reads.
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&stored).unwrap(),
                Some(len as u64)
            );
        }
    }

    #[test]
    fn payloads_below_the_threshold_or_without_it_stay_raw() {
        let raw = text(999);
        let (stored, packed) = sealed(&Compression::new(Some(1000), 3, 1 << 20), &raw);
        assert!(!packed);
        assert_eq!(stored, raw);
        let (stored, packed) = sealed(&Compression::new(None, 3, 1 << 20), &text(100_000));
        assert!(!packed);
        assert_eq!(stored.len(), 100_000);
        // A plain payload is served as it is, borrowed.
        let c = Compression::new(None, 3, 1 << 20);
        assert!(matches!(c.payload(0, &raw).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn incompressible_payloads_stay_raw() {
        let c = Compression::new(Some(64), DEFAULT_LEVEL, 1 << 20);
        let raw = noise(10_000);
        let (stored, packed) = sealed(&c, &raw);
        assert!(!packed, "compression did not make it smaller");
        assert_eq!(stored, raw);
    }

    #[test]
    fn corrupt_compressed_payloads_are_decode_errors() {
        let c = Compression::new(Some(64), DEFAULT_LEVEL, 1 << 20);
        let (stored, packed) = sealed(&c, &text(10_000));
        assert!(packed);
        // Not a frame at all, a truncated one, one with a flipped byte, empty.
        assert!(c.payload(FLAG_COMPRESSED, b"plain text").is_err());
        assert!(c
            .payload(FLAG_COMPRESSED, &stored[..stored.len() / 2])
            .is_err());
        assert!(c.payload(FLAG_COMPRESSED, &[]).is_err());
        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        match c.payload(FLAG_COMPRESSED, &flipped) {
            Err(_) => {}
            // zstd checks no checksum by default; a flip that still decodes
            // must at least keep the stated size (the codec judges the rest).
            Ok(back) => assert_eq!(back.len(), 10_000),
        }
    }

    #[test]
    fn decompression_is_bounded_by_the_readers_limit() {
        // 4 MiB of zeros packs into a few hundred bytes: a zip bomb for a
        // reader whose entries are at most 64 KiB (limit 2 MiB).
        let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 3).unwrap();
        assert!(bomb.len() < 1024, "{}", bomb.len());
        let small = Compression::new(None, 3, 64 << 10);
        let err = small.payload(FLAG_COMPRESSED, &bomb).unwrap_err();
        assert!(err.to_string().contains("over this cache's limit"), "{err}");
        // A reader with room for it reads it.
        let large = Compression::new(None, 3, 1 << 20);
        assert_eq!(
            large.payload(FLAG_COMPRESSED, &bomb).unwrap().len(),
            4 << 20
        );
        // A frame that lies about its size (streamed, no size stated) is refused.
        let mut unsized_frame = Vec::new();
        {
            use std::io::Write;
            let mut enc = zstd::stream::Encoder::new(&mut unsized_frame, 3).unwrap();
            enc.write_all(&text(10_000)).unwrap();
            enc.finish().unwrap();
        }
        assert!(large.payload(FLAG_COMPRESSED, &unsized_frame).is_err());
        // A writer does not compress what its readers would refuse.
        let tiny = Compression::new(Some(16), 3, 100);
        let (_, packed) = sealed(&tiny, &text(100 * DECOMPRESSED_FACTOR + 1));
        assert!(!packed);
    }
}
