//! Where a key's entry and generation counters live, and what one read of
//! them says.
//!
//! A key's counters are its prefixes' (shallowest first) and its own. Each
//! counter has two copies, on the two servers its name scores highest for
//! (one copy in a pool of one); the entry, its lock and the first copy of
//! its own counter live on the server the key scores highest for. So the
//! entries of one template spread over the pool (placed by their whole
//! key), and a read is one multi-get per server involved, the servers in
//! parallel: one round trip.
//!
//! An entry records every copy's value when its read was made, in the
//! order of [`Layout::copies`] (`.`-separated). It is served only if every
//! copy read now holds what it recorded; a copy that could not be read
//! (its server down) is skipped, as long as each counter has one copy
//! read. Invalidations bump both copies and succeed when one was bumped.
//!
//! Why two copies:
//! - **A dead server** holds one copy of some counters, never both: every
//!   counter stays readable and bumpable, so keys on the live servers keep
//!   being served and invalidated.
//! - **A pool that changes** by one server (grown, shrunk, a server back
//!   after it left, or processes on the old and the new pool side by side
//!   during a rolling change): a counter's two servers in the old pool and
//!   in the new share at least one, which both pools read and bump. An
//!   invalidation made under either pool moves a copy that readers under
//!   the other compare, so an entry recorded before it never matches
//!   again. (Placement is rendezvous hashing: removing a server promotes
//!   each of its names' second choice, and an added server takes at most
//!   one of a name's two places.)

use bytes::Bytes;

use super::keys::{entry_key, own_counter_key, prefix_counter_key};
use super::ring::Ring;
use crate::backends::generations::prefixes;

/// One copy of a counter.
pub(super) struct Copy {
    /// The server holding it.
    pub(super) server: usize,
    /// Its name on the server (both copies of a counter share it).
    pub(super) key: String,
    /// Which counter: its position among the key's counters.
    pub(super) counter: usize,
    /// The key's own counter (not a prefix's).
    pub(super) own: bool,
}

/// Where a key's entry and counters live.
pub(super) struct Layout {
    /// The server of the entry, its lock and its own counter's first copy.
    pub(super) home: usize,
    pub(super) entry: String,
    /// Each counter's copies, the first copy first; prefixes shallowest
    /// first, the key's own counter last: the order entries record.
    pub(super) copies: Vec<Copy>,
    /// How many counters (a prefix's or the key's own).
    pub(super) counters: usize,
}

impl Layout {
    pub(super) fn of(ring: &Ring, key: &str) -> Layout {
        let mut copies = Vec::with_capacity(2 * (key.matches(':').count() + 1));
        let mut counters = 0;
        let mut place = |name: &str, stored: String, own: bool| {
            let (first, second) = ring.top2(name);
            if let Some(second) = second {
                copies.push(Copy {
                    server: first,
                    key: stored.clone(),
                    counter: counters,
                    own,
                });
                copies.push(Copy {
                    server: second,
                    key: stored,
                    counter: counters,
                    own,
                });
            } else {
                copies.push(Copy {
                    server: first,
                    key: stored,
                    counter: counters,
                    own,
                });
            }
            counters += 1;
            first
        };
        for prefix in prefixes(key) {
            place(prefix, prefix_counter_key(prefix), false);
        }
        let home = place(key, own_counter_key(key), true);
        Layout {
            home,
            entry: entry_key(key),
            copies,
            counters,
        }
    }

    /// The copies of the key's own counter.
    pub(super) fn own(&self) -> impl Iterator<Item = &Copy> {
        self.copies.iter().filter(|c| c.own)
    }
}

/// What a read found of one counter copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Its value (decimal digits).
    Value(Vec<u8>),
    /// Not there (never used, evicted, expired, or not a number): entries
    /// recording it are misses, and it must be added before a write.
    Missing,
    /// Its server could not be asked (down, circuit open).
    Unread,
}

impl Seen {
    /// What a read returned for a copy.
    pub(super) fn of(value: Option<Vec<u8>>) -> Seen {
        match value {
            Some(v) if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => Seen::Value(v),
            _ => Seen::Missing,
        }
    }
}

/// Whether every counter has a copy that was read.
pub(super) fn every_counter_read(layout: &Layout, seen: &[Seen]) -> bool {
    (0..layout.counters).all(|counter| {
        layout
            .copies
            .iter()
            .zip(seen)
            .any(|(copy, s)| copy.counter == counter && *s != Seen::Unread)
    })
}

/// The record of a read for the entry written after it: each copy's value
/// (`0` for a copy not read, which no copy holds, so such an entry is a
/// miss once that copy is read again). `None` when a copy is missing.
pub(super) fn stamp(seen: &[Seen]) -> Option<String> {
    let mut out = String::with_capacity(seen.len() * 20);
    for (i, s) in seen.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match s {
            Seen::Value(v) => out.push_str(std::str::from_utf8(v).ok()?),
            Seen::Unread => out.push('0'),
            Seen::Missing => return None,
        }
    }
    Some(out)
}

/// The entry's bytes if what it recorded matches every copy read now.
pub(super) fn current_entry(stored: Vec<u8>, seen: &[Seen]) -> Option<Bytes> {
    let len = usize::from(u16::from_be_bytes([*stored.first()?, *stored.get(1)?]));
    let recorded = stored.get(2..2 + len)?;
    let mut parts = recorded.split(|&b| b == b'.');
    for s in seen {
        let part = parts.next()?;
        match s {
            Seen::Value(v) if v.as_slice() == part => {}
            Seen::Unread => {}
            _ => return None,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Bytes::from(stored).slice(2 + len..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::generations::wrap_entry;

    fn ring(n: usize) -> Ring {
        Ring::new(
            &(0..n)
                .map(|i| format!("10.0.0.{i}:11211"))
                .collect::<Vec<_>>(),
        )
    }

    fn v(s: &str) -> Seen {
        Seen::Value(s.as_bytes().to_vec())
    }

    #[test]
    fn a_key_has_two_copies_of_each_counter_on_distinct_servers() {
        let layout = Layout::of(&ring(3), "shop:author:42:top");
        assert_eq!(layout.counters, 4);
        assert_eq!(layout.copies.len(), 8);
        for pair in layout.copies.chunks(2) {
            assert_eq!(pair[0].key, pair[1].key);
            assert_ne!(pair[0].server, pair[1].server);
        }
        let names: Vec<&str> = layout
            .copies
            .iter()
            .step_by(2)
            .map(|c| c.key.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "g:shop:",
                "g:shop:author:",
                "g:shop:author:42:",
                "x:shop:author:42:top"
            ]
        );
        // The entry and its own counter's first copy share a server.
        assert_eq!(layout.own().next().unwrap().server, layout.home);
        assert_eq!(layout.own().count(), 2);
        // A pool of one: one copy each, the stamp as before pools existed.
        let single = Layout::of(&ring(1), "a:b");
        assert_eq!(single.copies.len(), 2);
        assert!(single.copies.iter().all(|c| c.server == 0));
    }

    #[test]
    fn an_entry_matches_the_copies_it_recorded_skipping_unread_ones() {
        let stored = wrap_entry("7.8.4.5", b"payload");
        let served = |seen: &[Seen]| current_entry(stored.clone(), seen);
        assert_eq!(
            served(&[v("7"), v("8"), v("4"), v("5")]).as_deref(),
            Some(&b"payload"[..])
        );
        // One copy bumped: a miss, whichever copy.
        assert_eq!(served(&[v("7"), v("9"), v("4"), v("5")]), None);
        assert_eq!(served(&[v("8"), v("8"), v("4"), v("5")]), None);
        // A copy not read is skipped; the other copy still decides.
        assert!(served(&[Seen::Unread, v("8"), v("4"), Seen::Unread]).is_some());
        assert_eq!(served(&[Seen::Unread, v("9"), v("4"), Seen::Unread]), None);
        // A missing copy never matches; nor does another layout.
        assert_eq!(served(&[v("7"), Seen::Missing, v("4"), v("5")]), None);
        assert_eq!(served(&[v("7"), v("8"), v("4")]), None);
        assert_eq!(served(&[v("7"), v("8"), v("4"), v("5"), v("1")]), None);
        assert_eq!(current_entry(vec![0], &[]), None, "truncated");
    }

    #[test]
    fn a_read_stamps_unread_copies_as_zero_and_missing_ones_not_at_all() {
        assert_eq!(stamp(&[v("7"), Seen::Unread]).as_deref(), Some("7.0"));
        assert_eq!(stamp(&[v("7"), Seen::Missing]), None);
        // An entry written after a read that could not reach a copy is a
        // miss once that copy is read again.
        let stored = wrap_entry(&stamp(&[v("7"), Seen::Unread]).unwrap(), b"x");
        assert!(current_entry(stored.clone(), &[v("7"), Seen::Unread]).is_some());
        assert_eq!(current_entry(stored, &[v("7"), v("3")]), None);
        assert_eq!(Seen::of(Some(b"12".to_vec())), v("12"));
        assert_eq!(Seen::of(Some(b"1.2".to_vec())), Seen::Missing);
        assert_eq!(Seen::of(Some(Vec::new())), Seen::Missing);
        assert_eq!(Seen::of(None), Seen::Missing);
    }

    #[test]
    fn every_counter_needs_one_copy_read() {
        let layout = Layout::of(&ring(3), "a:b");
        let mut seen = vec![v("1"); layout.copies.len()];
        assert!(every_counter_read(&layout, &seen));
        seen[0] = Seen::Unread;
        assert!(every_counter_read(&layout, &seen));
        seen[1] = Seen::Unread;
        assert!(!every_counter_read(&layout, &seen));
    }
}
