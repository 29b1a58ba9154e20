//! Sealing values into entries and opening them again: the envelope's
//! deadlines, the type fingerprint, signatures and XFetch. Synchronous and
//! store-free; the check that a type survives its codec before anything of
//! it is stored is the engine's (`engine.rs`), since it counts and logs.

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backends::memory::LocalEntry;
use crate::clock::Clock;
use crate::codec::{AnyCodec, Codec};
use crate::compress::Compression;
use crate::envelope::{self, Header};
use crate::memo::Memo;
use crate::policy::Policy;
use crate::signing::{self, Signer};
use crate::stamp::Stamp;
use crate::stats::Counter;
use crate::Error;

#[cfg(test)]
use crate::accept::I64;
pub(crate) use crate::accept::{Accept, Typed, COUNTER, UNTYPED};

/// How long an entry is fresh, then servable stale, then kept (for
/// `stale_if_error`), `stale` and `kept` both counted from the end of
/// `ttl` (`kept` at least `stale`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows {
    pub(crate) ttl: Duration,
    pub(crate) stale: Duration,
    pub(crate) kept: Duration,
}

impl Windows {
    /// The windows within a store's cap: fresh for at most `max`, and
    /// kept (so stale too) for at most what is left of it.
    fn capped(self, max: Duration) -> Windows {
        let ttl = self.ttl.min(max);
        let left = max.saturating_sub(ttl);
        Windows {
            ttl,
            stale: self.stale.min(left),
            kept: self.kept.min(left),
        }
    }

    /// Fresh for `ttl`, then gone.
    pub(crate) fn ttl(ttl: Duration) -> Windows {
        Windows {
            ttl,
            stale: Duration::ZERO,
            kept: Duration::ZERO,
        }
    }
}

/// Whether a servable entry should be refreshed in the background, with
/// the entry's fresh-until (ms) when it should: a refresh job compares it
/// with the entry in the store when it gets the lock, so that it does not
/// compute again for an entry another refresh already replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    No,
    /// Fresh, but picked by probabilistic early refresh.
    Early(u64),
    /// Past its TTL, inside its stale window.
    Stale(u64),
    /// Past what may be served, but kept for a caller whose computation
    /// fails (`stale_if_error`): a miss that holds a fallback.
    IfError(u64),
}

impl Due {
    /// The fresh-until of the entry due for a refresh (0 when it is not).
    pub(crate) fn fresh_until(self) -> u64 {
        match self {
            Due::No => 0,
            Due::Early(until) | Due::Stale(until) | Due::IfError(until) => until,
        }
    }
}

/// Where an entry's bytes come from, which decides whether its signature is
/// checked.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'k> {
    /// Sealed in this process (a flight's landing, an in-process store).
    Process,
    /// Read from the store under this key: checked when signing is on and
    /// the store is shared.
    Store(&'k str),
}

/// A servable entry's payload (as stored), whether it is due for a
/// refresh, and its envelope flags (which say how the payload reads).
type Servable<'b> = (&'b [u8], Due, u8);

/// Seals values into entries and opens them: synchronous, with no store,
/// so it can be tested and fuzzed on bytes alone.
/// What a [`Sealer`] is made of (the engine's settings).
pub(crate) struct SealerParts {
    pub(crate) codec: AnyCodec,
    pub(crate) signer: Option<Signer>,
    pub(crate) clock: Clock,
    pub(crate) verify: bool,
    pub(crate) default_ttl: Duration,
    /// The store's cap on TTLs, if it has one.
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) compression: Compression,
    /// The envelope flags this cache reads (`KNOWN_FLAGS`, or fewer).
    pub(crate) known_flags: u8,
    /// Entries are written in format 3 (with their written-at), not 2.
    pub(crate) record_written_at: bool,
}

pub(crate) struct Sealer {
    pub(crate) codec: AnyCodec,
    signer: Option<Signer>,
    pub(crate) clock: Clock,
    /// Entries read from the store are checked against the signing keys:
    /// the store is shared (an in-process store's entries were sealed
    /// here).
    verify: bool,
    /// The TTL of calls whose policy sets none.
    pub(crate) default_ttl: Duration,
    /// The store's cap on TTLs (`Duration::MAX` when it has none): every
    /// deadline sealed fits within it, so an entry says what the store
    /// keeps.
    max_ttl: Duration,
    /// Entries refused for a missing or wrong signature.
    pub(crate) signature_failures: Counter,
    /// What is compressed on write, and the bound on decompression.
    compression: Compression,
    /// The envelope flags read ([`envelope::KNOWN_FLAGS`], or fewer to
    /// behave as a build without a feature: tests).
    known_flags: u8,
    /// The format entries are written in: 3 (with their written-at) or 2.
    format: u8,
}

impl Sealer {
    pub(crate) fn new(parts: SealerParts) -> Self {
        let SealerParts {
            codec,
            signer,
            clock,
            verify,
            default_ttl,
            max_ttl,
            compression,
            known_flags,
            record_written_at,
        } = parts;
        Sealer {
            codec,
            signer,
            clock,
            verify,
            default_ttl,
            max_ttl: max_ttl.unwrap_or(Duration::MAX),
            signature_failures: Counter::default(),
            compression,
            known_flags: known_flags & envelope::KNOWN_FLAGS,
            format: if record_written_at {
                envelope::FORMAT_VERSION
            } else {
                envelope::PREVIOUS_VERSION
            },
        }
    }

    /// Decodes a payload of an entry with `flags` (decompressing it first
    /// when the entry says it is compressed).
    #[inline]
    pub(crate) fn decode<V: DeserializeOwned>(
        &self,
        flags: u8,
        payload: &[u8],
    ) -> Result<V, Error> {
        if flags & envelope::FLAG_COMPRESSED == 0 {
            return self.codec.decode(payload);
        }
        self.codec
            .decode(&self.compression.payload(flags, payload)?)
    }

    /// Opens an in-process entry, serving (and keeping) the decoded copy
    /// when `memo` allows. The header is checked first either way, so a
    /// memoised value is never served past its deadline or to a caller
    /// expecting another fingerprint.
    #[inline]
    pub(crate) fn open_local<V: DeserializeOwned>(
        &self,
        entry: &LocalEntry,
        fp: Accept,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Result<Option<(V, Due)>, Error> {
        let now = self.clock.now_ms();
        if entry.expires_ms() <= now {
            return Ok(None);
        }
        let Some((payload, due, flags)) =
            self.check_header_at(entry.bytes(), fp, now, policy, Source::Process)?
        else {
            return Ok(None);
        };
        if let (Some(get), Some(decoded)) = (memo.get, entry.decoded.get()) {
            if let Some(v) = get(decoded) {
                return Ok(Some((v, due)));
            }
        }
        let value = self.decode(flags, payload)?;
        if let Some(put) = memo.put {
            let _ = entry.decoded.set(put(&value));
        }
        Ok(Some((value, due)))
    }

    /// Whether entries are signed.
    #[cfg(test)]
    pub(crate) fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// `Ok(None)` when the entry is past its deadline.
    #[inline]
    pub(crate) fn open_checked<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        fp: Accept,
        policy: Option<&Policy>,
        source: Source<'_>,
    ) -> Result<Option<(V, Due)>, Error> {
        let now = self.clock.now_ms();
        match self.check_header_at(bytes, fp, now, policy, source)? {
            Some((payload, due, flags)) => Ok(Some((self.decode(flags, payload)?, due))),
            None => Ok(None),
        }
    }

    /// The payload of a servable entry that `fp` admits, whether it is due
    /// for a refresh, and the entry's flags; `Ok(None)` when it cannot be
    /// served.
    ///
    /// Past its TTL an entry is served only to callers whose policy refreshes
    /// (`stale` or `early`): everyone else sees a miss, as without a stale
    /// window. Before its TTL, `early` may pick it for a refresh (XFetch):
    /// refresh when `now - compute_time * beta * ln(u) >= fresh_until`.
    #[inline]
    fn check_header_at<'b>(
        &self,
        bytes: &'b [u8],
        fp: Accept,
        now: u64,
        policy: Option<&Policy>,
        source: Source<'_>,
    ) -> Result<Option<Servable<'b>>, Error> {
        let Some((header, payload)) = self.verified(bytes, fp, source)? else {
            return Ok(None);
        };
        let flags = header.flags;
        if now >= header.kept_until_ms {
            return Ok(None);
        }
        let refreshing = policy.filter(|p| p.refreshes());
        if now >= header.fresh_until_ms {
            let f = header.fresh_until_ms;
            if now < header.stale_until_ms && refreshing.is_some() {
                return Ok(Some((payload, Due::Stale(f), flags)));
            }
            // Not servable; a fallback only for a caller that asked for one,
            // within its own window (the writer's may be longer).
            let fallback = policy.and_then(|p| p.stale_if_error).is_some_and(|w| {
                now < f.saturating_add(w.as_millis().min(u64::MAX as u128) as u64)
            });
            return Ok(fallback.then_some((payload, Due::IfError(f), flags)));
        }
        if let Some(beta) = refreshing.and_then(|p| p.early) {
            let gap = f64::from(header.compute_ms) * beta * -uniform().ln();
            if now as f64 + gap >= header.fresh_until_ms as f64 {
                return Ok(Some((payload, Due::Early(header.fresh_until_ms), flags)));
            }
        }
        Ok(Some((payload, Due::No, flags)))
    }

    /// Whether entries read from the store must carry a signature of ours
    /// (signing keys, on a shared store).
    pub(crate) fn requires_signature(&self) -> bool {
        self.signer.is_some() && self.verify
    }

    /// Whether the signature ending `bytes` (stored under `key`) verifies
    /// with this cache's keys (operators' `Cache::inspect`).
    pub(crate) fn check_signature(&self, key: &str, bytes: &[u8]) -> crate::inspect::Signature {
        use crate::inspect::Signature;
        let Some(signer) = &self.signer else {
            return Signature::Unchecked;
        };
        let body = bytes.len().saturating_sub(signing::TAG_LEN);
        if signer.verify(key, &bytes[..body], &bytes[body..]) {
            Signature::Verified
        } else {
            Signature::Invalid
        }
    }

    /// The codec's bytes of a payload with envelope `flags`, decompressed.
    pub(crate) fn plain_payload<'b>(
        &self,
        flags: u8,
        payload: &'b [u8],
    ) -> Result<std::borrow::Cow<'b, [u8]>, Error> {
        self.compression.payload(flags, payload)
    }

    /// The fresh-until (ms) of an entry `fp` admits, whatever its age:
    /// what a refresh job compares with the entry it was started for.
    pub(crate) fn fresh_until(
        &self,
        bytes: &[u8],
        fp: Accept,
        source: Source<'_>,
    ) -> Result<u64, Error> {
        let verified = self.verified(bytes, fp, source)?;
        let (header, _) =
            verified.ok_or_else(|| Error::decode("entry stored under a replaced tag token"))?;
        Ok(header.fresh_until_ms)
    }

    /// The header and payload of an entry whose signature (from a shared
    /// store), codec and fingerprint are what this cache accepts; `None`
    /// for a tagged entry a tag invalidation superseded.
    #[inline]
    fn verified<'b>(
        &self,
        bytes: &'b [u8],
        fp: Accept,
        source: Source<'_>,
    ) -> Result<Option<(Header, &'b [u8])>, Error> {
        let (header, mut payload) = Header::read_known(bytes, self.known_flags)?;
        let signed = header.flags & envelope::FLAG_SIGNED != 0;
        if signed {
            if payload.len() < signing::TAG_LEN {
                return Err(Error::decode("signed entry shorter than its tag"));
            }
            payload = &payload[..payload.len() - signing::TAG_LEN];
        }
        // Entries read from a shared store must carry a tag of ours.
        if let (Some(signer), Source::Store(key), true) = (&self.signer, source, self.verify) {
            let body = &bytes[..bytes.len() - if signed { signing::TAG_LEN } else { 0 }];
            let tag = &bytes[body.len()..];
            if !signed || !signer.verify(key, body, tag) {
                self.signature_failures.incr();
                return Err(Error::decode(
                    "entry is not signed with a current signing key",
                ));
            }
        }
        if header.codec != self.codec.id() {
            return Err(Error::decode(format!(
                "entry written by codec {} but this cache uses {}",
                header.codec,
                self.codec.name()
            )));
        }
        if !fp.admits(&header, || envelope::tag_section(bytes)) {
            // Tagged under tokens a tag invalidation has since replaced,
            // or written before the function gained or lost its tags: a
            // plain miss (not a decode failure) for a typed call.
            let tagged = header.flags & envelope::FLAG_TAGGED != 0;
            if matches!(fp, Accept::Stamped(_)) || (tagged && matches!(fp, Accept::Exactly(_))) {
                return Ok(None);
            }
            return Err(Error::decode(
                "entry stored under another type or version for the same key",
            ));
        }
        Ok(Some((header, payload)))
    }

    /// The header and payload (signature tag stripped) of an entry read
    /// from the store under `key` that a direct read would serve if `fp`
    /// admits it: signed as this cache requires, of its codec, and before
    /// its TTL. `None` for anything else: absent to every direct op.
    pub(crate) fn live<'b>(
        &self,
        bytes: &'b [u8],
        key: &str,
        fp: Accept,
    ) -> Option<(Header, &'b [u8])> {
        let (header, payload) = self.verified(bytes, fp, Source::Store(key)).ok()??;
        (self.clock.now_ms() < header.fresh_until_ms).then_some((header, payload))
    }

    /// The entry `header` and `payload` came from (see [`live`](Self::live)),
    /// fresh for `ttl` from now and keeping its stale window and its
    /// written-at, sealed again (and signed again) for `key`, in this
    /// build's format; with the TTL the store keeps it for.
    ///
    /// `section` is the entry's tag section (`None` when it has none): the
    /// entry keeps its tags, and the tokens it recorded.
    pub(crate) fn reseal(
        &self,
        key: &str,
        header: &Header,
        section: Option<&[u8]>,
        payload: &[u8],
        ttl: Duration,
    ) -> (Bytes, Duration) {
        let now = self.clock.now_ms();
        let windows = Windows {
            ttl,
            stale: Duration::from_millis(header.stale_until_ms - header.fresh_until_ms),
            kept: Duration::from_millis(header.kept_until_ms - header.fresh_until_ms),
        }
        .capped(self.max_ttl);
        let ttl = windows.ttl;
        let stale_ms = windows.stale.as_millis() as u64;
        let kept_ms = windows.kept.max(windows.stale).as_millis() as u64;
        let fresh_until = now.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
        let signer = self.signer.as_ref();
        let mut out = Vec::with_capacity(envelope::HEADER_LEN + payload.len() + 32);
        // The payload is kept as it is, compressed or not, and the tags.
        let kept_flags = header.flags & (envelope::FLAG_COMPRESSED | envelope::FLAG_TAGGED);
        Header {
            flags: kept_flags
                | if signer.is_some() {
                    envelope::FLAG_SIGNED
                } else {
                    0
                },
            fresh_until_ms: fresh_until,
            stale_until_ms: fresh_until.saturating_add(stale_ms),
            kept_until_ms: fresh_until.saturating_add(kept_ms),
            ..*header
        }
        .write_as(&mut out, self.format);
        if let Some(section) = section {
            push_section(&mut out, section);
        }
        out.extend_from_slice(payload);
        if let Some(signer) = signer {
            let tag = signer.sign(key, &out);
            out.extend_from_slice(&tag);
        }
        let physical = ttl.saturating_add(Duration::from_millis(kept_ms));
        (Bytes::from(out), physical)
    }

    /// Decodes the payload of an entry with `header` (from
    /// [`live`](Self::live)) with this cache's codec, decompressing it
    /// first if need be.
    pub(crate) fn codec_decode<V: DeserializeOwned>(
        &self,
        header: &Header,
        payload: &[u8],
    ) -> Result<V, Error> {
        self.decode(header.flags, payload)
    }

    /// Decodes an entry this process sealed (nothing verified): what the
    /// write path reads back before storing it.
    pub(crate) fn decode_own<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, Error> {
        let (header, payload) = Header::read(bytes)?;
        let payload = if header.flags & envelope::FLAG_SIGNED == 0 {
            payload
        } else {
            payload
                .len()
                .checked_sub(signing::TAG_LEN)
                .map(|len| &payload[..len])
                .ok_or_else(|| Error::decode("signed entry shorter than its tag"))?
        };
        self.decode(header.flags, payload)
    }

    /// Seals `value` for `key`: the envelope (with `stamp`'s tag section
    /// and the fingerprint extended over it, when the write has tags), the
    /// payload (compressed above the threshold) and the signature.
    pub(crate) fn seal_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        windows: Windows,
        fp: u64,
        compute_ms: u32,
        stamp: Option<&Stamp>,
    ) -> Result<Bytes, Error> {
        let Windows { ttl, stale, kept } = windows.capped(self.max_ttl);
        let now = self.clock.now_ms();
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let fresh_until = now.saturating_add(ms(ttl));
        let stale_until = fresh_until.saturating_add(ms(stale));
        let kept_until = fresh_until.saturating_add(ms(kept.max(stale)));
        let mut out = Vec::with_capacity(64);
        let signer = self.signer.as_ref();
        let signed = if signer.is_some() {
            envelope::FLAG_SIGNED
        } else {
            0
        };
        let tagged = if stamp.is_some() {
            envelope::FLAG_TAGGED
        } else {
            0
        };
        Header {
            codec: self.codec.id(),
            flags: signed | tagged,
            fingerprint: stamp.map_or(fp, |s| s.fingerprint(fp)),
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            kept_until_ms: kept_until,
            compute_ms,
            written_ms: Some(now),
        }
        .write_as(&mut out, self.format);
        if let Some(stamp) = stamp {
            push_section(&mut out, stamp.section());
        }
        let payload_at = out.len();
        self.codec.encode(value, &mut out)?;
        if self.compression.compress_tail(&mut out, payload_at) {
            out[2] |= envelope::FLAG_COMPRESSED; // the flags byte
        }
        if let Some(signer) = signer {
            let tag = signer.sign(key, &out);
            out.extend_from_slice(&tag);
        }
        Ok(Bytes::from(out))
    }

    /// Encodes a computed value under `policy`: the envelope's deadlines and
    /// the physical TTL (`ttl` plus the longer of `stale` and
    /// `stale_if_error`, saturating).
    pub(crate) fn seal_for<T: Serialize + ?Sized>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        (fp, stamp): (u64, Option<&Stamp>),
        compute_ms: u32,
    ) -> Result<(Bytes, Duration), Error> {
        let ttl = policy.ttl.unwrap_or(self.default_ttl);
        let stale = policy.stale.unwrap_or(Duration::ZERO);
        let kept = policy.stale_if_error.unwrap_or(Duration::ZERO).max(stale);
        let windows = Windows { ttl, stale, kept };
        let bytes = self.seal_with(key, value, windows, fp, compute_ms, stamp)?;
        let kept = windows.capped(self.max_ttl);
        Ok((bytes, kept.ttl.saturating_add(kept.kept.max(kept.stale))))
    }
}

/// Appends a tag section (its length, then itself) after the header.
fn push_section(out: &mut Vec<u8>, section: &[u8]) {
    out.extend_from_slice(&(section.len() as u16).to_le_bytes());
    out.extend_from_slice(section);
}

/// A uniform number in (0, 1] from a per-thread xorshift generator: enough
/// for XFetch's coin, no dependency.
pub(crate) fn uniform() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64);
            (seed ^ (std::thread::current().id().as_u64_fallback())) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    })
}

trait ThreadIdBits {
    fn as_u64_fallback(&self) -> u64;
}

impl ThreadIdBits for std::thread::ThreadId {
    fn as_u64_fallback(&self) -> u64 {
        crate::envelope::fingerprint(&format!("{self:?}"), 0)
    }
}

#[cfg(test)]
mod tests;
