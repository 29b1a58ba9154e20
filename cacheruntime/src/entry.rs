//! Sealing values into entries and opening them again: the envelope's
//! deadlines, the type fingerprint, signatures, XFetch, and the check that a
//! type survives its codec before anything of it is stored.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{LocalEntry, Ticket};
use crate::cache::Cache;
use crate::codec::Codec;
use crate::envelope::{self, Header};
use crate::fetch::{Accept, Due};
use crate::memo::Memo;
use crate::policy::Policy;
use crate::{refresh, signing, Error};

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

impl Cache {
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
        let now = self.inner.clock.now_ms();
        if entry.expires_ms() <= now {
            return Ok(None);
        }
        let Some((payload, due)) =
            self.check_header_at(entry.bytes(), fp, now, policy, Source::Process)?
        else {
            return Ok(None);
        };
        if let (Some(get), Some(decoded)) = (memo.get, entry.decoded.get()) {
            if let Some(v) = get(decoded) {
                return Ok(Some((v, due)));
            }
        }
        let value = self.inner.codec.decode(payload)?;
        if let Some(put) = memo.put {
            let _ = entry.decoded.set(put(&value));
        }
        Ok(Some((value, due)))
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
        let now = self.inner.clock.now_ms();
        match self.check_header_at(bytes, fp, now, policy, source)? {
            Some((payload, due)) => Ok(Some((self.inner.codec.decode(payload)?, due))),
            None => Ok(None),
        }
    }

    /// The payload of a servable entry that `fp` admits, and whether it is
    /// due for a refresh; `Ok(None)` when it cannot be served.
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
    ) -> Result<Option<(&'b [u8], Due)>, Error> {
        let (header, mut payload) = Header::read(bytes)?;
        let signed = header.flags & envelope::FLAG_SIGNED != 0;
        if signed {
            if payload.len() < signing::TAG_LEN {
                return Err(Error::decode("signed entry shorter than its tag"));
            }
            payload = &payload[..payload.len() - signing::TAG_LEN];
        }
        // Entries read from a shared store must carry a tag of ours.
        if let (Some(signer), Source::Store(key), false) =
            (&self.inner.signer, source, self.inner.local)
        {
            let body = &bytes[..bytes.len() - if signed { signing::TAG_LEN } else { 0 }];
            let tag = &bytes[body.len()..];
            if !signed || !signer.verify(key, body, tag) {
                self.inner.counters.signature_failures.incr();
                return Err(Error::decode(
                    "entry is not signed with a current signing key",
                ));
            }
        }
        if header.codec != self.inner.codec.id() {
            return Err(Error::decode(format!(
                "entry written by codec {} but this cache uses {}",
                header.codec,
                self.inner.codec.name()
            )));
        }
        if !fp.admits(header.fingerprint) {
            return Err(Error::decode(
                "entry stored under another type or version for the same key",
            ));
        }
        if now >= header.stale_until_ms {
            return Ok(None);
        }
        let refreshing = policy.filter(|p| p.refreshes());
        if now >= header.fresh_until_ms {
            return Ok(refreshing.map(|_| (payload, Due::Stale)));
        }
        if let Some(beta) = refreshing.and_then(|p| p.early) {
            let gap = f64::from(header.compute_ms) * beta * -refresh::uniform().ln();
            if now as f64 + gap >= header.fresh_until_ms as f64 {
                return Ok(Some((payload, Due::Early)));
            }
        }
        Ok(Some((payload, Due::No)))
    }

    /// The payload of an entry this process sealed (signature tag
    /// stripped, nothing verified).
    fn own_payload(bytes: &[u8]) -> Result<&[u8], Error> {
        let (header, payload) = Header::read(bytes)?;
        if header.flags & envelope::FLAG_SIGNED == 0 {
            return Ok(payload);
        }
        payload
            .len()
            .checked_sub(signing::TAG_LEN)
            .map(|len| &payload[..len])
            .ok_or_else(|| Error::decode("signed entry shorter than its tag"))
    }

    pub(crate) fn seal_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        stale: Duration,
        fp: u64,
        compute_ms: u32,
    ) -> Result<Bytes, Error> {
        let now = self.inner.clock.now_ms();
        let fresh_until = now.saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64);
        let stale_until =
            fresh_until.saturating_add(stale.as_millis().min(u64::MAX as u128) as u64);
        let mut out = Vec::with_capacity(64);
        let signer = self.inner.signer.as_ref();
        Header {
            codec: self.inner.codec.id(),
            flags: if signer.is_some() {
                envelope::FLAG_SIGNED
            } else {
                0
            },
            fingerprint: fp,
            fresh_until_ms: fresh_until,
            stale_until_ms: stale_until,
            compute_ms,
        }
        .write(&mut out);
        self.inner.codec.encode(value, &mut out)?;
        if let Some(signer) = signer {
            let tag = signer.sign(key, &out);
            out.extend_from_slice(&tag);
        }
        Ok(Bytes::from(out))
    }

    /// Encodes a computed value under `policy`: the envelope's deadlines and
    /// the physical TTL (`ttl + stale`, saturating).
    pub(crate) fn seal_for<T: Serialize + ?Sized>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        fp: u64,
        compute_ms: u32,
    ) -> Result<(Bytes, Duration), Error> {
        let ttl = policy.ttl.unwrap_or(self.inner.default_ttl);
        let stale = policy.stale.unwrap_or(Duration::ZERO);
        let bytes = self.seal_with(key, value, ttl, stale, fp, compute_ms)?;
        Ok((bytes, ttl.saturating_add(stale)))
    }

    /// [`seal_for`](Self::seal_for), for values that will be stored: `None`
    /// (counted and logged) when the value cannot be encoded, or when it
    /// does not read back through the codec. Every write is checked, since
    /// some shapes fail for some values only (`skip_serializing_if`); the
    /// first failure of a type (fingerprint) is reported once, and from then
    /// on the type is never stored: every call computes, as without a cache.
    pub(crate) fn seal_checked<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        fp: u64,
        compute_ms: u32,
    ) -> Option<(Bytes, Duration)> {
        if self.unreadable(fp) {
            return None;
        }
        match self.seal_for(key, policy, value, fp, compute_ms) {
            Ok((bytes, ttl)) => self.reads_back::<T>(&bytes, fp).then_some((bytes, ttl)),
            Err(e) => {
                self.failed("encode", &e);
                None
            }
        }
    }

    /// Whether values of the type behind `fp` have failed to read back.
    pub(crate) fn unreadable(&self, fp: u64) -> bool {
        !self.inner.unreadable.is_empty() && self.inner.unreadable.contains_key(&fp)
    }

    /// Whether `bytes`, just sealed, decode again as `T`. The first failure
    /// of a type is counted in `decode_failures` and reported at warn level
    /// with what to do.
    fn reads_back<T: DeserializeOwned>(&self, bytes: &Bytes, fp: u64) -> bool {
        let decoded =
            Self::own_payload(bytes).and_then(|payload| self.inner.codec.decode::<T>(payload));
        let Err(e) = decoded else {
            return true;
        };
        if self.inner.unreadable.insert(fp, ()).is_none() {
            self.inner.counters.decode_failures.incr();
            tracing::warn!(
                value_type = std::any::type_name::<T>(),
                codec = self.inner.codec.name(),
                error = %e,
                "a value of this type did not read back through the cache's codec, so values of \
                 this type are no longer stored: every call computes. The codecs are not \
                 self-describing and cannot read serde_json::Value, #[serde(untagged)], \
                 internally or adjacently tagged enums, #[serde(flatten)] or \
                 #[serde(skip_serializing_if)]: cache a type without them (for JSON, its text \
                 as a String)"
            );
        }
        false
    }

    /// Writes an entry through the store (no type check), bounded by
    /// `timeout`.
    pub(crate) async fn write(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
    ) -> Result<(), Error> {
        if bytes.len() > self.inner.max_entry_bytes {
            return Err(Error::TooLarge {
                size: bytes.len(),
                limit: self.inner.max_entry_bytes,
            });
        }
        let backend = &*self.inner.backend;
        if let Some(done) = backend.set_now(key, &bytes, ttl, ticket.as_ref()) {
            return done;
        }
        self.guarded_for("set", timeout, || {
            backend.set(key, bytes, ttl, ticket.as_ref())
        })
        .await
    }

    /// Stores an encoded entry within `timeout`, counting (never returning)
    /// failures.
    pub(crate) async fn store(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
    ) {
        match self.write(key, bytes, ttl, ticket, timeout).await {
            Ok(()) => {}
            // The call's budget ran out, not the store: the value is simply
            // not stored this time.
            Err(Error::Timeout { .. }) if timeout < self.inner.op_timeout => {
                tracing::debug!(key, "value not stored: the call's store budget ran out");
            }
            Err(e) => self.failed("set", &e),
        }
    }
}
