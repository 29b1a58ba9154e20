//! Generation stamps shared by the stores without server-side range
//! deletes (Redis, Memcached).
//!
//! Every `:`-prefix of a key has a generation counter, and so has the key
//! itself (bumped by `delete`). An entry records the values of all its
//! counters as its read saw them, in front of its bytes: a 2-byte big-endian
//! length, the generations (`N.N.N`, the key's own counter last), then the
//! bytes. A read fetches the entry and the counters together and serves the
//! entry only if every counter is there and still holds what it recorded.
//!
//! A counter that is missing (never used, evicted, or deleted by hand) is
//! not read as any value: it is created anew before a computation's read
//! counts, starting from the current time in microseconds times 1,000
//! (never a value an old counter held, which grew by one per invalidation
//! from an older such start). So losing a counter can only hide entries,
//! never bring an invalidated one back.
//!
//! # Names
//! Both stores keep an entry, its lock and each counter under a name that
//! starts with its [`Kind`]'s letter and `:` (`v:`, `l:`, `g:`, `x:`),
//! followed by the key or prefix in the store's own form (Redis adds a
//! Cluster hash tag, `redis/keys.rs`; Memcached shortens a long or unusual
//! key, `memcached/keys.rs`); and both read a key's counters in the order
//! [`counters`] gives, which is the order its entry records them in.

use bytes::Bytes;

/// A counter's first value: microseconds since the Unix epoch times 1,000,
/// plus `salt` below 1,000. About 1.8e18 today, within `i64` (Redis) and
/// `u64` (Memcached) for centuries; invalidations add one each, so a counter
/// created later starts above any value an earlier one reached.
#[cfg_attr(not(feature = "memcached"), allow(dead_code))]
pub(crate) fn seed(salt: u64) -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    micros.saturating_mul(1000).saturating_add(salt % 1000)
}

/// The generations as recorded (`N.N.N`), or `None` if a counter is
/// missing: such a read cannot stamp a write.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn generations(current: &[Option<Vec<u8>>]) -> Option<String> {
    let mut out = String::with_capacity(current.len() * 20);
    for (i, g) in current.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(std::str::from_utf8(g.as_deref()?).ok()?);
    }
    Some(out)
}

/// The entry's bytes if it was written under the `current` generations,
/// every one of which must be there. (Memcached checks its two copies of
/// each counter in `backends/memcached/counters.rs`.)
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn unwrap_entry(stored: Vec<u8>, current: &[Option<Vec<u8>>]) -> Option<Bytes> {
    let len = usize::from(u16::from_be_bytes([*stored.first()?, *stored.get(1)?]));
    let recorded = stored.get(2..2 + len)?;
    let matches = if current.is_empty() {
        recorded.is_empty()
    } else {
        let mut parts = recorded.split(|&b| b == b'.');
        current
            .iter()
            .all(|g| matches!((parts.next(), g), (Some(r), Some(g)) if r == &g[..]))
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

/// What a stored name holds: its letter starts the name on every store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An entry.
    Entry,
    /// An entry's lock.
    Lock,
    /// A prefix's generation counter.
    Prefix,
    /// A key's own generation counter (bumped by `delete`).
    Own,
}

impl Kind {
    /// The letter a name of this kind starts with, before its `:`.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Kind::Entry => "v",
            Kind::Lock => "l",
            Kind::Prefix => "g",
            Kind::Own => "x",
        }
    }
}

/// The counters a read of `key` consults, each with the key or prefix it
/// is named for, in the order an entry records their generations: each
/// prefix's, shallowest first, then the key's own.
pub(crate) fn counters(key: &str) -> impl Iterator<Item = (Kind, &str)> {
    prefixes(key)
        .map(|prefix| (Kind::Prefix, prefix))
        .chain(std::iter::once((Kind::Own, key)))
}

/// The `:`-ending prefixes of `key`, shallowest first: the prefixes an
/// invalidation can name (the empty one aside, which a namespace stands for).
pub(crate) fn prefixes(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices(':').map(move |(i, _)| &key[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gens(g: &[&str]) -> Vec<Option<Vec<u8>>> {
        g.iter()
            .map(|s| (*s != "-").then(|| s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn wrapped_entries_unwrap_under_the_same_generations_only() {
        let stored = wrap_entry("7.4", b"payload");
        assert_eq!(
            unwrap_entry(stored.clone(), &gens(&["7", "4"])).as_deref(),
            Some(&b"payload"[..])
        );
        assert_eq!(unwrap_entry(stored.clone(), &gens(&["7", "5"])), None);
        assert_eq!(unwrap_entry(stored.clone(), &gens(&["7"])), None);
        assert_eq!(unwrap_entry(stored, &gens(&["7", "4", "1"])), None);
        assert_eq!(
            unwrap_entry(vec![0, 0, b'x'], &[]).as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(unwrap_entry(vec![0], &gens(&["0"])), None, "truncated");
        assert_eq!(unwrap_entry(vec![0, 9, b'0'], &gens(&["0"])), None, "short");
    }

    #[test]
    fn a_missing_counter_never_matches_what_an_entry_recorded() {
        // Entries of older versions recorded a missing counter as `0`.
        let old = wrap_entry("0.3", b"v");
        assert_eq!(unwrap_entry(old, &gens(&["-", "3"])), None);
        // No read with a missing counter can stamp a write.
        assert_eq!(generations(&gens(&["5", "-"])), None);
        assert_eq!(generations(&gens(&["5", "6"])).as_deref(), Some("5.6"));
    }

    #[test]
    fn seeds_grow_with_time_far_faster_than_invalidations() {
        let a = seed(999);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = seed(0);
        // 2 ms later: more than a million invalidations of `a` apart.
        assert!(b > a + 1_000_000, "{a} {b}");
        assert!(b < i64::MAX as u64);
    }

    #[test]
    fn both_stores_share_the_letters_and_the_order_of_counters() {
        // Deployed data lives under names that start with these letters, and
        // entries record counters in this order: neither may change.
        let letters: Vec<&str> = [Kind::Entry, Kind::Lock, Kind::Prefix, Kind::Own]
            .into_iter()
            .map(Kind::letter)
            .collect();
        assert_eq!(letters, ["v", "l", "g", "x"]);
        assert_eq!(
            counters("shop:author:42:top").collect::<Vec<_>>(),
            [
                (Kind::Prefix, "shop:"),
                (Kind::Prefix, "shop:author:"),
                (Kind::Prefix, "shop:author:42:"),
                (Kind::Own, "shop:author:42:top"),
            ]
        );
        assert_eq!(counters("solo").collect::<Vec<_>>(), [(Kind::Own, "solo")]);
    }

    #[test]
    fn prefixes_are_whole_segments() {
        assert_eq!(prefixes("a:b:c").collect::<Vec<_>>(), ["a:", "a:b:"]);
        assert_eq!(prefixes("k").count(), 0);
    }
}
