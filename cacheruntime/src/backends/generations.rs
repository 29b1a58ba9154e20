//! Generation stamps shared by the stores without server-side range
//! deletes (Redis, Memcached).
//!
//! Every prefix that has been invalidated has a counter; an entry records
//! the counters of all its prefixes as its miss saw them, in front of its
//! bytes: a 2-byte big-endian length, the generations (`0.3.0`, a missing
//! counter read as `0`), then the bytes. A read fetches the entry and the
//! counters together and serves the entry only if they still match.

use bytes::Bytes;

/// `0.3.0`: the generations as stored, missing counters as `0`.
pub(crate) fn generations(gens: &[Option<Vec<u8>>]) -> String {
    let mut out = String::with_capacity(gens.len() * 2);
    for (i, g) in gens.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match g {
            Some(bytes) => out.push_str(std::str::from_utf8(bytes).unwrap_or("?")),
            None => out.push('0'),
        }
    }
    out
}

/// The entry's bytes if it was written under the `current` generations.
/// Layout: 2-byte big-endian length, the generations (`0.3.0`), the bytes.
pub(crate) fn unwrap_entry(stored: Vec<u8>, current: &[Option<Vec<u8>>]) -> Option<Bytes> {
    let len = usize::from(u16::from_be_bytes([*stored.first()?, *stored.get(1)?]));
    let recorded = stored.get(2..2 + len)?;
    let matches = if current.is_empty() {
        recorded.is_empty()
    } else {
        let mut parts = recorded.split(|&b| b == b'.');
        current
            .iter()
            .all(|g| parts.next() == Some(g.as_deref().unwrap_or(b"0")))
            && parts.next().is_none()
    };
    matches.then(|| Bytes::from(stored).slice(2 + len..))
}

/// The stored form of an entry written under `gens` (Redis builds it in its
/// write script instead).
#[cfg_attr(not(feature = "memcached"), allow(dead_code))]
pub(crate) fn wrap_entry(gens: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + gens.len() + value.len());
    out.extend_from_slice(&(gens.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(gens.as_bytes());
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_entries_unwrap_under_the_same_generations_only() {
        let stored = wrap_entry("0.4", b"payload");
        let same = [None, Some(b"4".to_vec())];
        let moved = [None, Some(b"5".to_vec())];
        assert_eq!(
            unwrap_entry(stored.clone(), &same).as_deref(),
            Some(&b"payload"[..])
        );
        assert_eq!(unwrap_entry(stored, &moved), None);
    }
}
