//! A cold miss in two round trips on Memcached (`Backend::combines_locks`):
//! the read that also takes the key's lock, then the write that also
//! releases it.
//!
//! # The read
//! The entry, its lock and the first copy of the key's own counter live on
//! one server (`counters.rs`), so the lock is taken in the same exchange
//! as the read, before it (`ms l:<key> .. ME`, add mode, then `mg` of the
//! lock, then of the entry): a holder writes its value before it releases
//! the lock on the same connection, so a caller whose add took a lock just
//! released reads that value.
//!
//! Memcached has no command that adds only when another key is absent, so
//! the lock is taken whether or not the entry is live; a read that finds
//! the entry live after taking the lock releases it again in the
//! background. The cache only reads this way keys it has not lately read
//! live (`warm.rs`), so hot keys keep the plain read.
//!
//! A key never read has no counter of its own, which the plain read adds
//! (and reads again) in a second exchange. Here each copy of it is added
//! (`ms x:<key> .. ME`, a fresh seed) and read in the same exchange: the
//! read the fill would make, made before it is known to be needed. A copy
//! already there is left as it is, and a key whose own counter this read
//! created is a miss, as on the plain read. Prefixes' counters are only
//! read: a copy added from a fresh seed where others have a value (a
//! server restarted empty) would lift the counter for every reader that
//! sees it before it is set back, and every entry under the prefix would
//! be a miss; so a key under a prefix no key used before (or whose
//! counter lost copies) takes a third exchange, the plain read's fill.
//!
//! Copies of the key's own counter created where others had a value (a
//! restart again) would make its live entry a miss: when there is an
//! entry, they are set back to the greatest of the others and read again,
//! in a second exchange, each only while it still holds the item this
//! read added (CAS from the add), so a bump that wrote the copy since
//! keeps it. Setting a copy only this read wrote down to a value other
//! copies hold never hides a bump: a bump that succeeded reached a
//! majority, and every read quorum holds one of those copies.
//!
//! # The release
//! Memcached compares a delete with the item's CAS, not its value, so the
//! release needs the lock's CAS: each lock this store takes (or finds held
//! with its token) is remembered with the CAS the server gave it, and the
//! write sends `md l:<key> C<cas>` after the entry's `ms` in one exchange.
//! A lock taken elsewhere (another handle, a restarted process) is released
//! as before: read, then delete if it holds the token. A server restarted
//! empty counts CAS values from the start again, so a remembered CAS may
//! match another holder's lock taken since: releasing it lets a second
//! process compute the key (a dog-pile of two, never a wrong answer, since
//! writes stay under their reads' counters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use memcache::exp::{Delete, Get, Meta, MutationStatus, Op, OpResult, Set};

use super::counters::{greatest, Layout, Seen};
use super::keys::lock_key;
use super::reads::Read;
use super::servers::{batches, Pool};
use super::{unlock_by_token, MemcachedBackend};
use crate::backend::{Lookup, Ticket};
use crate::Error;

/// How long a background release may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// The most locks remembered at once; past it the memory is cleared (the
/// locks it held are released in two exchanges instead of one).
const MAX_REMEMBERED: usize = 16_384;

/// The locks this store holds, by the key they lock: the token and the CAS
/// the server gave the lock item.
#[derive(Default)]
pub(super) struct Held(Mutex<HashMap<String, (Bytes, u64)>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Bytes, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that `token` holds `key`'s lock, whose item has `cas`.
    pub(super) fn remember(&self, key: &str, token: &[u8], cas: u64) {
        let mut map = self.map();
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
        map.insert(key.to_owned(), (Bytes::copy_from_slice(token), cas));
    }

    /// The CAS of `key`'s lock if `token` holds it, forgetting it (the
    /// caller is releasing it).
    pub(super) fn take(&self, key: &str, token: &[u8]) -> Option<u64> {
        let mut map = self.map();
        match map.get(key) {
            Some((held, cas)) if held[..] == *token => {
                let cas = *cas;
                map.remove(key);
                Some(cas)
            }
            _ => None,
        }
    }
}

/// What one op of a combined read is for.
#[derive(Clone, Copy)]
enum Slot {
    /// The lock's add.
    LockAdd,
    /// The lock's read after it.
    Lock,
    /// The entry.
    Entry,
    /// Copy `k` of the key's own counter, added if absent (its read
    /// follows).
    Add(usize),
    /// Copy `k` of counter `c`.
    Copy(usize, usize),
}

/// What a combined read found.
struct Locking {
    read: Read,
    /// The lock was free and this call took it.
    took: bool,
    /// The lock's CAS, when it is held with the token after the call.
    held: Option<u64>,
    /// Per copy of the key's own counter: the CAS of the item this call's
    /// add made, if it made one.
    created: Vec<Option<u64>>,
}

impl MemcachedBackend {
    /// Takes `key`'s lock with `token` if it is free and reads the key's
    /// entry and counters, in one exchange per server involved, the
    /// servers in parallel; with `create`, also adds the copies of the
    /// key's own counter that are absent. Fails only if the entry's server
    /// could not be asked.
    async fn read_locking(
        &self,
        pool: &Arc<Pool>,
        layout: &Layout,
        key: &str,
        token: &[u8],
        lease: Duration,
        create: bool,
    ) -> Result<Locking, Error> {
        let lock = lock_key(key);
        let own = layout.counters.len() - 1;
        let seed = self.fresh_seed(own).to_string();
        let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); pool.ring().len()];
        slots[layout.home].extend([Slot::LockAdd, Slot::Lock, Slot::Entry]);
        for (c, counter) in layout.counters.iter().enumerate() {
            for (k, &server) in counter.servers.iter().enumerate() {
                if create && c == own {
                    slots[server].push(Slot::Add(k));
                }
                slots[server].push(Slot::Copy(c, k));
            }
        }
        let (groups, batches) = batches(slots, |slot, ops| {
            ops.push(match *slot {
                Slot::LockAdd => Op::from(
                    Set::new(&lock, token)
                        .add()
                        .ttl(self.lease(lease))
                        .return_cas(),
                ),
                Slot::Lock => Op::from(Get::new(&lock).meta(Meta::NONE.cas())),
                Slot::Entry => Op::from(Get::new(&layout.entry).meta(Meta::NONE.cas())),
                Slot::Add(_) => Op::from(
                    Set::new(&layout.counters[own].key, &seed)
                        .add()
                        .ttl(self.life(true))
                        .return_cas(),
                ),
                Slot::Copy(c, _) => {
                    Op::from(Get::new(&layout.counters[c].key).meta(Meta::NONE.cas()))
                }
            });
        });
        let mut found = Locking {
            read: Read::blank(layout),
            took: false,
            held: None,
            created: vec![None; layout.counters[own].servers.len()],
        };
        for (group, outcome) in groups.into_iter().zip(pool.fan_out(batches).await) {
            let results = match outcome {
                Ok(results) => results,
                Err(e) if group.iter().any(|s| matches!(s, Slot::Entry)) => {
                    // The server may have taken the lock before it failed;
                    // the caller, told of an error, holds nothing.
                    if !matches!(e, Error::CircuitOpen { .. }) {
                        self.release_by_token(pool, layout.home, key, token);
                    }
                    return Err(e);
                }
                Err(e) => {
                    found.read.failed(&e);
                    continue;
                }
            };
            for (slot, result) in group.into_iter().zip(results) {
                match (slot, result) {
                    (Slot::LockAdd, OpResult::Mutation(m)) => found.took = m.applied(),
                    (Slot::Lock, OpResult::Get(got)) if got.value.as_deref() == Some(token) => {
                        found.held = got.item.cas;
                    }
                    (Slot::Entry, OpResult::Get(got)) => {
                        found.read.stored = got.value;
                        found.read.stored_cas = got.item.cas;
                    }
                    (Slot::Add(k), OpResult::Mutation(m)) if m.applied() => {
                        found.created[k] = m.cas;
                    }
                    (Slot::Copy(c, k), OpResult::Get(got)) => {
                        found.read.seen[c][k] = Seen::of(got.value.as_deref());
                        found.read.cas[c][k] = got.item.cas;
                    }
                    (Slot::Copy(c, k), _) => found.read.seen[c][k] = Seen::Absent,
                    _ => {}
                }
            }
        }
        match found.held {
            Some(cas) => self.held.remember(key, token, cas),
            // Taken, but its read did not see it: released by its token.
            None if found.took => self.release_by_token(pool, layout.home, key, token),
            None => {}
        }
        Ok(found)
    }

    /// Each counter's value from a combined read, and whether its entry may
    /// be served (see [`values`](Self::values)). A key whose own counter
    /// this read created is a miss: no entry recorded its new value. Where
    /// only some copies were created and the entry is there, they are set
    /// back first (the module docs say why).
    async fn settle(
        &self,
        pool: &Pool,
        layout: &Layout,
        found: &mut Locking,
    ) -> Result<(Vec<u64>, bool), Error> {
        if found.created.iter().all(Option::is_none) {
            return self.values(pool, layout, &mut found.read).await;
        }
        let own = layout.counters.len() - 1;
        let others: Vec<Seen> = found.read.seen[own]
            .iter()
            .zip(&found.created)
            .map(|(seen, created)| {
                if created.is_some() {
                    Seen::Absent
                } else {
                    *seen
                }
            })
            .collect();
        match greatest(&others) {
            Some(before) if found.read.stored.is_some() => {
                self.set_back(pool, layout, found, before).await;
                self.values(pool, layout, &mut found.read).await
            }
            _ => {
                let (values, _) = self.values(pool, layout, &mut found.read).await?;
                Ok((values, false))
            }
        }
    }

    /// Sets the copies of the key's own counter that this read created
    /// above `before` (the greatest of the others) back to it, and reads
    /// them again: one exchange per server. Only a copy that still holds
    /// the item this read added (its CAS unchanged since the add): one a
    /// bump set since is the bump's, and stays. A copy whose server fails
    /// is left as read (a miss, never a wrong answer).
    async fn set_back(&self, pool: &Pool, layout: &Layout, found: &mut Locking, before: u64) {
        let own = layout.counters.len() - 1;
        let counter = &layout.counters[own];
        let mut batches = Vec::new();
        let mut copies = Vec::new();
        for (k, &server) in counter.servers.iter().enumerate() {
            let above = matches!(found.read.seen[own][k], Seen::Value(v) if v > before);
            let ours = found.created[k].filter(|&cas| found.read.cas[own][k] == Some(cas));
            let (true, Some(cas)) = (above, ours) else {
                continue;
            };
            let set = Set::new(&counter.key, before.to_string())
                .compare_cas(cas)
                .ttl(self.life(true));
            let read = Get::new(&counter.key).meta(Meta::NONE.cas());
            batches.push((server, vec![Op::from(set), Op::from(read)]));
            copies.push(k);
        }
        for (k, outcome) in copies.into_iter().zip(pool.fan_out(batches).await) {
            if let Ok(results) = outcome {
                if let Some(OpResult::Get(got)) = results.get(1) {
                    found.read.seen[own][k] = Seen::of(got.value.as_deref());
                    found.read.cas[own][k] = got.item.cas;
                }
            }
        }
    }

    /// Releases `key`'s lock in the background if it holds `token`.
    fn release_by_token(&self, pool: &Arc<Pool>, home: usize, key: &str, token: &[u8]) {
        let (pool, lock, token) = (pool.clone(), lock_key(key), token.to_vec());
        tokio::spawn(async move {
            let release = unlock_by_token(&pool, home, &lock, &token);
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, release).await;
        });
    }

    /// Releases, in the background, the lock this read took (not one held
    /// with the token before it, which stays with the caller that took
    /// it), only if its item is unchanged: ours.
    fn give_back(
        &self,
        pool: &Arc<Pool>,
        layout: &Layout,
        key: &str,
        token: &[u8],
        found: &Locking,
    ) {
        let (true, Some(cas)) = (found.took, found.held) else {
            return;
        };
        self.held.take(key, token);
        let (pool, home) = (pool.clone(), layout.home);
        let delete = Op::from(Delete::new(lock_key(key)).compare_cas(cas));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, pool.run(home, vec![delete])).await;
        });
    }

    pub(super) async fn run_get_or_lock(
        &self,
        key: &str,
        token: Bytes,
        lease: Duration,
    ) -> Result<(Lookup, bool), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut found = self
            .read_locking(pool, &layout, key, &token, lease, true)
            .await?;
        let (values, servable) = match self.settle(pool, &layout, &mut found).await {
            Ok(settled) => settled,
            Err(e) => {
                // The caller, told of an error, holds nothing.
                self.give_back(pool, &layout, key, &token, &found);
                return Err(e);
            }
        };
        let lookup = self.answer(pool, &layout, &mut found.read, &values, servable);
        if lookup.value.is_some() {
            // Taken for nothing.
            self.give_back(pool, &layout, key, &token, &found);
            return Ok((lookup, false));
        }
        Ok((lookup, found.held.is_some()))
    }

    pub(super) async fn run_lock_and_get(
        &self,
        key: &str,
        token: Bytes,
        lease: Duration,
    ) -> Result<(bool, Option<Lookup>), Error> {
        let pool = self.pool().await?;
        let layout = Layout::of(pool.ring(), key);
        let mut found = self
            .read_locking(pool, &layout, key, &token, lease, false)
            .await?;
        let held = found.held.is_some();
        let (values, servable) = match self.values(pool, &layout, &mut found.read).await {
            Ok(settled) => settled,
            Err(e) => {
                // The caller holds the lock if it was taken, and releases
                // it (`Backend::lock_and_get`).
                tracing::debug!(error = %e, "the read with a lock failed");
                return Ok((held, None));
            }
        };
        let lookup = self.answer(pool, &layout, &mut found.read, &values, servable);
        Ok((held, Some(lookup)))
    }

    /// Stores as `set` does and releases `token`'s lock on `key` in the
    /// same exchange when this store knows the lock's CAS; otherwise
    /// releases it after, as `delete_if_equals` does.
    pub(super) async fn run_set_and_unlock(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&Ticket>,
        token: &[u8],
    ) -> Result<bool, Error> {
        let Some(cas) = self.held.take(key, token) else {
            self.write(key, value, ttl, ticket, None).await?;
            return Ok(self.run_unlock(key, token).await.is_ok());
        };
        let release = Op::from(Delete::new(lock_key(key)).compare_cas(cas));
        let results = match self.write(key, value, ttl, ticket, Some(release)).await {
            Ok(results) => results,
            Err(e) => {
                // The lock may still be held, and the caller releases it.
                self.held.remember(key, token, cas);
                return Err(e);
            }
        };
        // Released, or not ours (gone, or taken by another since it
        // expired): either way nothing is left to release.
        Ok(matches!(results.last(), Some(OpResult::Mutation(m))
            if matches!(m.status, MutationStatus::Applied
                | MutationStatus::NotFound
                | MutationStatus::CasMismatch)))
    }
}
