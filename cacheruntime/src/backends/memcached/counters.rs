//! Where a key's entry and generation counters live, what one read of the
//! counters says, and the quorums that make invalidations stick.
//!
//! A key's counters are its prefixes' (shallowest first) and its own. Each
//! counter has `N = min(3, servers)` copies, on the `N` servers its name
//! scores highest for; the entry, its lock and the first copy of its own
//! counter live on the server the key scores highest for. So the entries
//! of one template spread over the pool (placed by their whole key), and a
//! read is one multi-get per server involved, the servers in parallel: one
//! round trip.
//!
//! # Quorums
//! A bump (an invalidation, a delete) must reach `W = N/2 + 1` copies (a
//! majority) to succeed; a read must hear from `R = N - W + 1` copies of
//! each counter to know its value. `R + W > N`, so every read quorum
//! meets every write quorum: a read sees at least one copy that each
//! successful bump reached.
//!
//! | servers | `N` | `W` | `R` | one server down | two servers down |
//! |---|---|---|---|---|---|
//! | 1 | 1 | 1 | 1 | nothing cached, bumps fail | |
//! | 2 | 2 | 2 | 1 | reads work, bumps fail | nothing cached, bumps fail |
//! | 3 | 3 | 2 | 2 | reads and bumps work | nothing cached, bumps fail |
//! | 4 or more | 3 | 2 | 2 | reads and bumps work | counters with two copies there: unknown, not bumped |
//!
//! (A down server's own entries are misses in every case.)
//!
//! A counter's value is the **greatest** value among the copies a read
//! heard from (a server that answered without the copy counts as heard
//! from, with no value). An entry records that value for each counter and
//! is served only if every counter's greatest value still equals it. A
//! bump reads the copies (from at least `R`), then sets every copy it can
//! reach to a value above the greatest it read and at least a fresh clock
//! seed; so the bumped value is above anything an entry recorded before
//! the bump, and a read quorum always contains a copy holding it.
//! Concurrent bumps may leave copies at different values, all above
//! anything from before either: that only costs misses. Copies a read
//! finds below their counter's value (a bump reached a majority only) are
//! raised to it in the background, compare-and-set (`repair` in
//! `reads.rs`), so that losing the copies the bump reached later cannot
//! bring the old value back.
//!
//! A read that hears from fewer than `R` copies of a counter does not know
//! it: the entry is a miss, and the read gives no ticket, so nothing
//! computed after it is stored. A counter whose every copy heard from is
//! absent (never used, evicted, expired, on restarted servers) is
//! missing: the read adds it on those copies from a fresh clock seed,
//! above any value it held, reads them again, and the entry is a miss. A
//! counter with some copies absent (a server restarted or added, or a
//! counter being created by another caller at this moment) has them added
//! with its greatest value and read again before the read decides: so
//! callers that create a counter at once settle on one value, rather
//! than record a value that a copy landing later outgrows. Only these
//! reads take a second round trip. The read that also takes a cold key's
//! lock (`combined.rs`) adds absent copies of the key's own counter in its
//! first exchange, before reading them (a fresh seed), and sets those it
//! added where others had a value back to the greatest of those, when the
//! key has an entry to keep.
//!
//! A pool that changes by one server (grown, shrunk, one replaced, or
//! processes on the old and the new pool side by side) keeps at least
//! `min(N, N') - 1` of
//! each counter's servers (rendezvous hashing: removing a server promotes
//! the next choice, an added one takes at most one place): with no server
//! down, every bump reaches copies that readers under either pool read.

use bytes::Bytes;

use super::keys::{entry_key, name};
use super::ring::Ring;
use crate::backends::generations::{self, Kind};

/// The most copies a counter has.
pub(super) const MAX_COPIES: usize = 3;

/// How many copies each counter has, and how many a bump and a read need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Quorum {
    /// `N`: copies of each counter.
    pub(super) copies: usize,
    /// `W`: copies a bump must reach to succeed (a majority).
    pub(super) write: usize,
    /// `R`: copies a read must hear from to know a counter (`R + W > N`).
    pub(super) read: usize,
}

impl Quorum {
    /// The quorum of a pool of `servers`.
    pub(super) fn of(servers: usize) -> Quorum {
        let copies = servers.clamp(1, MAX_COPIES);
        let write = copies / 2 + 1;
        Quorum {
            copies,
            write,
            read: copies - write + 1,
        }
    }
}

/// One generation counter of a key.
pub(super) struct Counter {
    /// Its name on the servers (every copy shares it).
    pub(super) key: String,
    /// The key's own counter (not a prefix's).
    pub(super) own: bool,
    /// The servers holding its copies, best first.
    pub(super) servers: Vec<usize>,
}

/// Where a key's entry and counters live.
pub(super) struct Layout {
    /// The server of the entry, its lock and its own counter's first copy.
    pub(super) home: usize,
    pub(super) entry: String,
    /// Prefixes shallowest first, the key's own counter last: the order
    /// entries record.
    pub(super) counters: Vec<Counter>,
    pub(super) quorum: Quorum,
}

impl Layout {
    pub(super) fn of(ring: &Ring, key: &str) -> Layout {
        let quorum = Quorum::of(ring.len());
        let counters: Vec<Counter> = generations::counters(key)
            .map(|(kind, key_or_prefix)| Counter {
                key: name(kind, key_or_prefix),
                own: kind == Kind::Own,
                servers: ring.top(key_or_prefix, quorum.copies),
            })
            .collect();
        // The key's own counter, last, is placed by the key itself.
        let home = counters.last().expect("a key has its own counter").servers[0];
        Layout {
            home,
            entry: entry_key(key),
            counters,
            quorum,
        }
    }

    /// The key's own counter.
    pub(super) fn own(&self) -> &Counter {
        self.counters.last().expect("a key has its own counter")
    }
}

/// What a read found of one counter copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Its value.
    Value(u64),
    /// Its server answered without it (never used, evicted, expired, or
    /// not a number).
    Absent,
    /// Its server could not be asked (down, circuit open).
    Unread,
}

impl Seen {
    /// What a server that answered returned for a copy.
    pub(super) fn of(value: Option<&[u8]>) -> Seen {
        match value.and_then(number) {
            Some(n) => Seen::Value(n),
            None => Seen::Absent,
        }
    }
}

/// What the copies read say of a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// At least `R` copies answered, each with a value: the greatest.
    Known(u64),
    /// At least `R` copies answered, some without a value: the greatest of
    /// those with one, `None` when none has (the counter is missing). The
    /// absent copies are added (with that value, or a fresh seed for a
    /// missing counter) and read again before anything is recorded under
    /// the counter, so callers creating it at once, or filling copies lost
    /// in a restart, settle on the same value.
    Incomplete(Option<u64>),
    /// Fewer than `R` copies answered: nothing is served or recorded.
    Unknown {
        /// How many did.
        answered: usize,
    },
}

/// What `seen`, one counter's copies, say of it under `quorum`.
pub(super) fn reading(seen: &[Seen], quorum: Quorum) -> Reading {
    let answered = seen.iter().filter(|s| **s != Seen::Unread).count();
    if answered < quorum.read {
        return Reading::Unknown { answered };
    }
    match greatest(seen) {
        Some(value) if !seen.contains(&Seen::Absent) => Reading::Known(value),
        greatest => Reading::Incomplete(greatest),
    }
}

/// The greatest value among `seen`.
pub(super) fn greatest(seen: &[Seen]) -> Option<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Value(v) => Some(*v),
            _ => None,
        })
        .max()
}

/// The value a bump sets: above the greatest value it read, and at least a
/// `fresh` clock seed (so that a counter bumped where its copies with the
/// greatest value could not be read still moves above them, as long as
/// the app servers' clocks do not run backwards).
pub(super) fn bumped(greatest: Option<u64>, fresh: u64) -> u64 {
    greatest.map_or(fresh, |g| fresh.max(g.saturating_add(1)))
}

/// The record of a read for the entry written after it: each counter's
/// value, `.`-separated.
pub(super) fn stamp(values: &[u64]) -> String {
    let mut out = String::with_capacity(values.len() * 20);
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&value.to_string());
    }
    out
}

/// The entry's bytes if what it recorded equals every counter's value now.
pub(super) fn current_entry(stored: Vec<u8>, values: &[u64]) -> Option<Bytes> {
    let len = usize::from(u16::from_be_bytes([*stored.first()?, *stored.get(1)?]));
    let recorded = stored.get(2..2 + len)?;
    let mut parts = recorded.split(|&b| b == b'.');
    for value in values {
        if number(parts.next()?)? != *value {
            return None;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Bytes::from(stored).slice(2 + len..))
}

/// Decimal digits as a number.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
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

    #[test]
    fn every_read_quorum_meets_every_write_quorum() {
        let q = |n| {
            let q = Quorum::of(n);
            (q.copies, q.write, q.read)
        };
        assert_eq!(q(1), (1, 1, 1));
        assert_eq!(q(2), (2, 2, 1));
        assert_eq!(q(3), (3, 2, 2));
        assert_eq!(q(7), (3, 2, 2));
        for n in 1..10 {
            let q = Quorum::of(n);
            assert!(q.read + q.write > q.copies, "{q:?}");
            assert!(q.write > q.copies / 2, "{q:?}: two bumps' quorums meet");
        }
    }

    #[test]
    fn a_key_has_up_to_three_copies_of_each_counter_on_distinct_servers() {
        let layout = Layout::of(&ring(5), "shop:author:42:top");
        let names: Vec<&str> = layout.counters.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            names,
            [
                "g:shop:",
                "g:shop:author:",
                "g:shop:author:42:",
                "x:shop:author:42:top"
            ]
        );
        for counter in &layout.counters {
            let mut servers = counter.servers.clone();
            servers.sort_unstable();
            servers.dedup();
            assert_eq!(servers.len(), 3, "{}", counter.key);
        }
        // The entry and its own counter's first copy share a server.
        assert_eq!(layout.own().servers[0], layout.home);
        assert!(layout.own().own);
        assert_eq!(Layout::of(&ring(2), "a:b").counters[0].servers.len(), 2);
        let single = Layout::of(&ring(1), "a:b");
        assert!(single.counters.iter().all(|c| c.servers == [0]));
    }

    #[test]
    fn a_counter_is_the_greatest_of_at_least_r_copies() {
        use Seen::{Absent, Unread, Value};
        let three = Quorum::of(3);
        let known = |seen: &[Seen]| reading(seen, three);
        assert_eq!(known(&[Value(7), Value(9), Value(8)]), Reading::Known(9));
        // One copy down: two still decide.
        assert_eq!(known(&[Unread, Value(9), Value(8)]), Reading::Known(9));
        // A copy absent answered, without a value: it is filled first.
        assert_eq!(
            known(&[Absent, Unread, Value(8)]),
            Reading::Incomplete(Some(8))
        );
        assert_eq!(known(&[Absent, Unread, Absent]), Reading::Incomplete(None));
        assert_eq!(
            known(&[Unread, Unread, Value(8)]),
            Reading::Unknown { answered: 1 }
        );
        let two = Quorum::of(2);
        assert_eq!(reading(&[Unread, Value(8)], two), Reading::Known(8));
        assert_eq!(
            reading(&[Unread, Unread], two),
            Reading::Unknown { answered: 0 }
        );
        let one = Quorum::of(1);
        assert_eq!(reading(&[Absent], one), Reading::Incomplete(None));
        assert_eq!(reading(&[Unread], one), Reading::Unknown { answered: 0 });
    }

    #[test]
    fn a_bump_moves_above_what_it_read_and_the_clock() {
        assert_eq!(bumped(None, 100), 100);
        assert_eq!(bumped(Some(5), 100), 100);
        // A copy set by a process whose clock is ahead.
        assert_eq!(bumped(Some(500), 100), 501);
        assert_eq!(bumped(Some(u64::MAX), 1), u64::MAX);
    }

    #[test]
    fn an_entry_matches_only_the_values_it_recorded() {
        let stored = wrap_entry(&stamp(&[7, 18]), b"payload");
        let served = |values: &[u64]| current_entry(stored.clone(), values);
        assert_eq!(served(&[7, 18]).as_deref(), Some(&b"payload"[..]));
        assert_eq!(served(&[8, 18]), None);
        assert_eq!(served(&[7, 19]), None);
        // Another layout, or entries of the two-copy layout (a number per
        // copy), never match.
        assert_eq!(served(&[7]), None);
        assert_eq!(served(&[7, 18, 1]), None);
        let old = wrap_entry("7.7.18.18", b"payload");
        assert_eq!(current_entry(old, &[7, 18]), None);
        assert_eq!(current_entry(vec![0], &[]), None, "truncated");
        assert_eq!(current_entry(wrap_entry("+7", b"x"), &[7]), None);
    }

    #[test]
    fn only_decimal_numbers_are_values() {
        assert_eq!(Seen::of(Some(b"12")), Seen::Value(12));
        assert_eq!(Seen::of(Some(b"1.2")), Seen::Absent);
        assert_eq!(Seen::of(Some(b"")), Seen::Absent);
        assert_eq!(Seen::of(Some(b"99999999999999999999999")), Seen::Absent);
        assert_eq!(Seen::of(None), Seen::Absent);
    }
}
