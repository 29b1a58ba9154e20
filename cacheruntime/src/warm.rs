//! Which keys this process lately read live from a shared store: a guess
//! that picks how a get-or-compute call reads.
//!
//! On Redis, a read that also takes a cold key's lock is a script, and a
//! script costs the server about ten times an `MGET` (6.5 against 0.6 us a
//! call, measured with `INFO commandstats` on Redis 7.0): on a hot key that
//! is most of a hit's cost. So a key this process read live lately is read
//! with the plain read (its miss, when it expires, then takes the lock in a
//! call of its own), and any other key (the long tail's first request)
//! with the locking read, which makes its miss two round trips.
//!
//! A fixed table of hashes, one per slot: bounded, lock-free, and wrong
//! only in ways that cost time (a collision picks the other read), never
//! answers: both reads answer the same.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// 16,384 slots: 128 KiB per cache handle on a shared store.
const SLOTS: usize = 1 << 14;

pub(crate) struct Warm {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Warm {
    pub(crate) fn new() -> Warm {
        Warm {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The key's hash, never 0 (an empty slot).
    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key) | 1
    }

    fn slot(&self, hash: u64) -> &AtomicU64 {
        &self.slots[hash as usize & (SLOTS - 1)]
    }

    /// Whether the key of `hash` was read live lately.
    pub(crate) fn is_warm(&self, hash: u64) -> bool {
        self.slot(hash).load(Ordering::Relaxed) == hash
    }

    /// A read found the key live.
    pub(crate) fn mark(&self, hash: u64) {
        let slot = self.slot(hash);
        if slot.load(Ordering::Relaxed) != hash {
            slot.store(hash, Ordering::Relaxed);
        }
    }

    /// A read found nothing live under the key.
    pub(crate) fn cool(&self, hash: u64) {
        let _ = self
            .slot(hash)
            .compare_exchange(hash, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_warm_after_a_live_read_and_cold_after_a_miss() {
        let warm = Warm::new();
        let (a, b) = (warm.hash("author:1:top"), warm.hash("author:2:top"));
        assert!(!warm.is_warm(a));
        warm.mark(a);
        assert!(warm.is_warm(a));
        assert!(!warm.is_warm(b) || a & (SLOTS as u64 - 1) == b & (SLOTS as u64 - 1));
        // A miss of another key in the same slot leaves it alone.
        warm.cool(a ^ (SLOTS as u64));
        assert!(warm.is_warm(a));
        warm.cool(a);
        assert!(!warm.is_warm(a));
    }
}
