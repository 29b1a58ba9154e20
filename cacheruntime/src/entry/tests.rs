//! Unit tests of sealing and opening entries.
#[test]
fn windows_fit_the_store_cap() {
    use super::Windows;
    use std::time::Duration;
    let d = Duration::from_secs;
    let w = Windows {
        ttl: d(100),
        stale: d(50),
        kept: d(80),
    }
    .capped(d(120));
    assert_eq!((w.ttl, w.stale, w.kept), (d(100), d(20), d(20)));
    let w = Windows {
        ttl: Duration::MAX,
        stale: d(5),
        kept: d(5),
    }
    .capped(d(60));
    assert_eq!((w.ttl, w.stale, w.kept), (d(60), d(0), d(0)));
    let w = Windows::ttl(d(10)).capped(Duration::MAX);
    assert_eq!((w.ttl, w.stale, w.kept), (d(10), d(0), d(0)));
}

#[test]
fn get_of_i64_reads_counters_and_nothing_else_does() {
    use super::{Accept, COUNTER, I64};
    let i64_fp = crate::envelope::fingerprint(std::any::type_name::<i64>(), 0);
    assert_eq!(I64, i64_fp);
    let of = |fingerprint| crate::envelope::Header {
        codec: 0,
        flags: 0,
        fingerprint,
        fresh_until_ms: 0,
        stale_until_ms: 0,
        kept_until_ms: 0,
        compute_ms: 0,
        written_ms: None,
    };
    assert!(Accept::Direct(i64_fp).admits(&of(COUNTER), || None));
    let u64_fp = crate::envelope::fingerprint(std::any::type_name::<u64>(), 0);
    assert!(!Accept::Direct(u64_fp).admits(&of(COUNTER), || None));
    assert!(!Accept::Exactly(i64_fp).admits(&of(COUNTER), || None));
}

#[test]
fn tagged_entries_are_accepted_by_their_stamp_and_by_direct_reads_only() {
    use super::Accept;
    let section: &[u8] = b"\x01\x00a\x01\x00\x00\x00\x00\x00\x00\x00";
    let typed = 77;
    let covered = crate::stamp::covering(typed, section);
    let header = crate::envelope::Header {
        codec: 0,
        flags: crate::envelope::FLAG_TAGGED,
        fingerprint: covered,
        fresh_until_ms: 0,
        stale_until_ms: 0,
        kept_until_ms: 0,
        compute_ms: 0,
        written_ms: None,
    };
    assert!(Accept::Stamped(covered).admits(&header, || Some(section)));
    assert!(!Accept::Stamped(covered + 1).admits(&header, || Some(section)));
    // An untagged call never takes a tagged entry, even of its fingerprint.
    assert!(!Accept::Exactly(covered).admits(&header, || Some(section)));
    assert!(!Accept::Stamped(typed).admits(
        &crate::envelope::Header {
            flags: 0,
            fingerprint: typed,
            ..header
        },
        || None
    ));
    assert!(Accept::Direct(typed).admits(&header, || Some(section)));
    assert!(!Accept::Direct(typed + 1).admits(&header, || Some(section)));
    assert!(Accept::Any.admits(&header, || Some(section)));
}

/// Signed and compressed: the tag covers the compressed bytes, a
/// shared-store read verifies and decompresses them, every other path
/// (reseal, the write path's read-back, counters' decode) keeps the
/// flag, and a reader that does not know the flag refuses the entry.
#[cfg(feature = "compression")]
#[test]
fn signed_compressed_entries_round_trip_and_reseal() {
    use super::{Accept, Sealer, Source, Windows, UNTYPED};
    use crate::compress::Compression;
    use crate::envelope::{Header, FLAG_COMPRESSED, FLAG_SIGNED, KNOWN_FLAGS};
    use crate::signing::{Signer, SigningKeys};
    use std::time::Duration;
    let keys = SigningKeys(vec![b"a-signing-key-of-16+-bytes".to_vec()]);
    let sealer = |above, known| {
        Sealer::new(super::SealerParts {
            codec: Default::default(),
            signer: Signer::new(&keys).unwrap(),
            clock: crate::clock::Clock::manual(),
            verify: true,
            default_ttl: Duration::from_secs(60),
            max_ttl: None,
            compression: Compression::new(above, 3, 1 << 20),
            known_flags: known,
            record_written_at: true,
        })
    };
    let (z, plain) = (sealer(Some(256), KNOWN_FLAGS), sealer(None, KNOWN_FLAGS));
    let value = "<item><title>post</title></item>".repeat(200);
    let ttl = Windows::ttl(Duration::from_secs(60));
    let bytes = z.seal_with("k", &value, ttl, UNTYPED, 0, None).unwrap();
    let (header, _) = Header::read(&bytes).unwrap();
    assert_eq!(header.flags, FLAG_SIGNED | FLAG_COMPRESSED);
    assert!(bytes.len() < value.len() / 4, "{}", bytes.len());
    let read = |s: &Sealer, b: &[u8], key| {
        s.open_checked::<String>(b, Accept::Direct(0), None, Source::Store(key))
            .map(|o| o.map(|(v, _)| v))
    };
    for s in [&z, &plain] {
        assert_eq!(read(s, &bytes, "k").unwrap().as_ref(), Some(&value));
        assert_eq!(s.decode_own::<String>(&bytes).unwrap(), value);
    }
    // The tag is over the stored bytes: another key, or a flipped byte
    // of the compressed payload, fails the signature first.
    assert!(read(&plain, &bytes, "other").is_err());
    let mut flipped = bytes.to_vec();
    flipped[60] ^= 1;
    assert!(read(&plain, &flipped, "k").is_err());
    let before = plain.signature_failures.get();
    assert!(before >= 2);
    // Touch: resealed with the flag, still signed and readable.
    let (header, payload) = plain.live(&bytes, "k", Accept::Any).unwrap();
    assert_eq!(
        plain.codec_decode::<String>(&header, payload).unwrap(),
        value
    );
    let (touched, _) = plain.reseal("k", &header, None, payload, Duration::from_secs(600));
    assert_eq!(Header::read(&touched).unwrap().0.flags, header.flags);
    assert_eq!(read(&z, &touched, "k").unwrap().as_ref(), Some(&value));
    // What a build without the feature reads: refused, not decoded.
    let old = sealer(None, FLAG_SIGNED);
    assert!(read(&old, &bytes, "k").is_err());
    assert!(old.live(&bytes, "k", Accept::Any).is_none());
    // Below the threshold: plain, signed.
    let small = z.seal_with("k", "short", ttl, UNTYPED, 0, None).unwrap();
    assert_eq!(Header::read(&small).unwrap().0.flags, FLAG_SIGNED);
    assert_eq!(read(&old, &small, "k").unwrap().as_deref(), Some("short"));
}

#[test]
fn uniform_stays_in_the_open_closed_unit_interval() {
    for _ in 0..10_000 {
        let u = super::uniform();
        assert!(u > 0.0 && u <= 1.0, "{u}");
    }
}
