//! What the memory store does as a near tier (`near.rs`): keep what a
//! read of the shared store found without overwriting anything newer, and
//! take in what this process wrote so that no read that began before the
//! write puts the old value back.
//!
//! Both go through the key's stripe, as the store's own writes and deletes
//! do, so each check and its insert are one step for the key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{Invalidation, MemoryBackend};

impl MemoryBackend {
    /// Remembers deletes for `ms` instead of a minute. A near tier takes a
    /// notice of every change another process makes as a delete, so it
    /// remembers them for less: they fence reads in flight (shorter than
    /// the op timeout) and computations, whose writes are refused once the
    /// record is swept (the write floor rises), which costs a miss.
    pub(crate) fn remember_deletes_for(mut self, ms: u64) -> Self {
        self.delete_memory_ms = ms;
        self
    }

    /// The sequence number a read starting now is marked with: every
    /// invalidation, delete or write taken in after this takes a newer one.
    #[inline]
    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Keeps `value`, which a read of the shared store marked with `seq`
    /// found, for `ttl`: unless an invalidation, a delete or a write of the
    /// key was taken in since `seq` (the read may have begun before it
    /// reached the shared store), or an entry vouched for later is there.
    /// Whether it was kept.
    pub(crate) fn keep_read(&self, key: &str, value: Bytes, ttl: Duration, seq: u64) -> bool {
        if self.check_weight(key, &value).is_err() {
            return false;
        }
        let _one_at_a_time = self.stripe(key);
        if !self.admits(key, seq) {
            return false;
        }
        if self.entries.get(key).is_some_and(|e| e.tag() > seq) {
            return false;
        }
        self.insert(key, value, ttl, seq);
        true
    }

    /// Takes in a write of `key` that this process made to the shared store:
    /// `Some(value)` (for `ttl`) when the near tier may hold what the store
    /// now has, `None` when it must not hold anything for the key. `since`
    /// is where the near tier stood when the value's computation read the
    /// store (or the write began): if an invalidation or delete of the key
    /// was taken in since, the value is not kept.
    ///
    /// Either way the key is fenced at a new sequence number, as a delete
    /// is: a read that began before the write may have found the old value,
    /// and must not keep it. The value itself is kept under `since`, not
    /// the new number, so that an invalidation that took its number before
    /// this write but is recorded after the check above still hides it.
    pub(crate) fn take_write(&self, key: &str, value: Option<Bytes>, ttl: Duration, since: u64) {
        let value = value.filter(|v| self.check_weight(key, v).is_ok());
        let now = self.clock.now_ms();
        {
            let _one_at_a_time = self.stripe(key);
            let keep = value.filter(|_| self.admits(key, since));
            let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            self.deleted
                .insert(key.into(), Invalidation { seq, at_ms: now });
            match keep {
                Some(value) => self.insert(key, value, ttl, since),
                None => {
                    self.entries.remove(key);
                }
            }
        }
        self.sweep_deletes(now);
    }

    /// Invalidates `prefix` (`""` or ending with `:`), as the store's
    /// `invalidate_prefix` does.
    pub(crate) fn forget_prefix(&self, prefix: &str) {
        self.invalidate(prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_write_taken_in_while_an_invalidation_is_being_recorded_is_hidden_by_it() {
        let m = MemoryBackend::new(1 << 20);
        let since = m.current_seq();
        // The invalidation takes its number; the write is taken in before
        // the invalidation is recorded, so its check sees no record.
        let seq = m.seq.fetch_add(1, Ordering::AcqRel) + 1;
        m.take_write("a:k", Some(Bytes::from_static(b"old")), TTL, since);
        m.record_invalidation("a:", seq);
        assert!(m.local("a:k").entry.is_none());
    }

    #[test]
    fn a_read_is_not_kept_over_a_write_or_a_later_read() {
        let m = MemoryBackend::new(1 << 20);
        let before = m.current_seq();
        m.take_write("a:k", Some(Bytes::from_static(b"new")), TTL, before);
        // A read that began before the write found the old value.
        assert!(!m.keep_read("a:k", Bytes::from_static(b"old"), TTL, before));
        let later = m.current_seq();
        assert!(m.keep_read("a:k", Bytes::from_static(b"newer"), TTL, later));
        assert!(!m.keep_read("a:k", Bytes::from_static(b"new"), TTL, later - 1));
        let found = m.local("a:k").entry.unwrap();
        assert_eq!(&found.bytes()[..], b"newer");
    }
}
