//! Store locks: one computation per key across every process sharing the
//! store.
//!
//! A lock is a [`HeldLock`] for as long as it is held. Dropping one without
//! [`release`](HeldLock::release) (the computing caller was cancelled, or its
//! computation panicked) releases it from a spawned task, so the next caller
//! of the key, in any process, computes at once instead of waiting out the
//! lock's TTL. A lock is only left to expire on purpose
//! ([`keep`](HeldLock::keep): a failed background refresh backs off so).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::backend::{Lookup, Ticket};
use crate::engine::Engine;
use crate::entry::{Accept, Source};
use crate::guarded::Budget;
use crate::Error;

/// The outcome of taking a store lock.
pub(crate) enum LockState {
    Held(HeldLock),
    Busy,
    /// The store has no locks: in-process protection only.
    Unsupported,
    /// The store failed; the caller goes on without the lock.
    Failed,
}

/// What a cold miss found when it went for the store's lock.
pub(crate) enum Contended<V> {
    /// Another process computed it meanwhile.
    Value(V, Bytes),
    /// We hold the lock.
    Locked(HeldLock),
    /// No lock (unsupported, failing store, or waited too long): compute.
    Alone,
}

/// A store lock this process holds; released on drop if not before.
pub(crate) struct HeldLock {
    engine: Arc<Engine>,
    key: Box<str>,
    token: Bytes,
    /// When the store lets the lock expire by itself (`None`: too far to
    /// say): retrying a release past it is pointless.
    expires: Option<Instant>,
    done: bool,
}

impl HeldLock {
    /// Releases the lock (compare-and-delete on our token). If the store
    /// fails to answer, the release is retried in the background.
    pub(crate) async fn release(mut self) {
        let released = self.engine.unlock(&self.key, &self.token).await;
        // Only now: if this future is dropped mid-release, `drop` retries;
        // a store that failed gets the retries too.
        self.done = released;
    }

    /// Leaves the lock to expire on its own.
    pub(crate) fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled or panicking holder (or a release the store failed):
        // release in the background, since `drop` cannot wait, retrying
        // while the store fails and the lock has not expired by itself.
        // Outside a runtime the lock expires by itself.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::clone(&self.engine);
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        let expires = self.expires;
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(50);
            while !engine.unlock(&key, &token).await {
                let next = Instant::now() + pause;
                if expires.is_some_and(|e| next >= e) {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }
}

/// The lock a background refresh of `key` takes: apart from the key's own
/// lock, so a refresh that fails and backs off never makes a cold miss of
/// the key wait. No key's own lock has this name: keys may not contain `#`
/// (`key::check_key`), and a shortened long key's `#` is followed by its
/// digest only.
pub(crate) fn refresh_lock_key(key: &str) -> String {
    format!("{key}#refresh")
}

/// A lock token unique to this process and moment.
fn token() -> Bytes {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Bytes::from(format!("{}-{nanos}-{n}", std::process::id()))
}

impl Engine {
    /// Takes the store's lock for `key` (locks live apart from entries).
    pub(crate) async fn try_lock(
        self: &Arc<Self>,
        key: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> LockState {
        self.take_lock(key, token(), ttl, timeout, false).await.0
    }

    /// A get-or-compute read of `key` that also takes the key's lock for
    /// `ttl` where no live entry is there ([`Backend::get_or_lock`]): the
    /// read, and the lock if it is held (with the engine's token) after it.
    /// Armed before the request goes out, as [`take_lock`](Self::take_lock).
    ///
    /// [`Backend::get_or_lock`]: crate::Backend::get_or_lock
    pub(crate) async fn get_or_lock(
        self: &Arc<Self>,
        key: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> (Result<Lookup, Error>, Option<HeldLock>) {
        let backend = self.store.backend();
        let mut held = self.held(key, self.lock_token.clone(), ttl);
        let found = self
            .guarded_for("get", timeout, || {
                backend.get_or_lock(key, held.token.clone(), ttl)
            })
            .await;
        match found {
            Ok((lookup, true)) => (Ok(lookup), Some(held)),
            Ok((lookup, false)) => {
                held.done = true;
                (Ok(lookup), None)
            }
            Err(e) => {
                held.done = !matches!(e, Error::Timeout { .. });
                (Err(e), None)
            }
        }
    }

    /// A lock on `key` with `token`, to be released on drop unless marked
    /// done.
    fn held(self: &Arc<Self>, key: &str, token: Bytes, ttl: Duration) -> HeldLock {
        HeldLock {
            engine: Arc::clone(self),
            key: key.into(),
            token,
            expires: Instant::now().checked_add(ttl),
            done: false,
        }
    }

    /// Takes the store's lock for `key` with `token` and, with `read`,
    /// reads the key's entry in the same store call ([`Backend::lock_and_get`]): the read,
    /// if the store answered it.
    ///
    /// The release is armed before the request goes out: if this call is
    /// dropped while the store takes the lock (a client timeout around the
    /// caller), or the request times out after the store took it, the lock
    /// is released from a spawned task rather than left to its TTL.
    ///
    /// [`Backend::lock_and_get`]: crate::Backend::lock_and_get
    async fn take_lock(
        self: &Arc<Self>,
        key: &str,
        token: Bytes,
        ttl: Duration,
        timeout: Duration,
        read: bool,
    ) -> (LockState, Option<Lookup>) {
        let backend = self.store.backend();
        if !backend.supports_locks() {
            return (LockState::Unsupported, None);
        }
        let mut held = self.held(key, token, ttl);
        let taken = self
            .guarded_for("lock", timeout, || {
                let token = held.token.clone();
                if read {
                    backend.lock_and_get(key, token, ttl)
                } else {
                    Box::pin(
                        async move { Ok((backend.set_if_absent(key, token, ttl).await?, None)) },
                    )
                }
            })
            .await;
        match taken {
            Ok((true, found)) => (LockState::Held(held), found),
            Ok((false, found)) => {
                held.done = true;
                (LockState::Busy, found)
            }
            Err(e) => {
                // A timeout shorter than the op timeout is the call's budget
                // running out, not the store failing.
                if !(matches!(e, Error::Timeout { .. }) && timeout < self.op_timeout) {
                    self.failed("lock", &e);
                }
                // Only a timed-out request may still have taken the lock:
                // for it the release goes out (on drop); not for others.
                held.done = !matches!(e, Error::Timeout { .. });
                (LockState::Failed, None)
            }
        }
    }

    /// Releases our lock on `key`; `false` if the store failed to answer
    /// (a lock that is no longer ours, or none, counts as released).
    pub(crate) async fn unlock(&self, key: &str, token: &Bytes) -> bool {
        let backend = self.store.backend();
        match self
            .guarded("unlock", || backend.delete_if_equals(key, token))
            .await
        {
            Ok(_) => true,
            // A backend that takes locks but cannot release them early: the
            // lock is left to its TTL, not retried until then.
            Err(Error::Unsupported { .. }) => true,
            Err(e) => {
                self.failed("unlock", &e);
                false
            }
        }
    }

    /// Takes the store's lock for a cold key, or waits for the value of
    /// whoever holds it: polling (5 ms backing off to 100 ms) for the lock,
    /// each attempt reading the entry in the same store call (a holder may
    /// release without a visible value: its computation failed, was
    /// invalidated, cancelled or panicked). Gives up after `bound` and
    /// computes without the lock.
    ///
    /// The first attempt comes out of the call's `budget`; with none left
    /// the call computes without the lock. Polls while waiting for another
    /// process are waiting for its computation, bounded by `bound` as a
    /// whole.
    pub(crate) async fn lock_or_value<V: DeserializeOwned>(
        self: &Arc<Self>,
        key: &str,
        accept: Accept,
        bound: Duration,
        budget: &mut Budget,
    ) -> Contended<V> {
        // `None`: a bound too far to represent; wait for as long as it takes.
        let deadline = Instant::now().checked_add(bound);
        let mut pause = Duration::from_millis(5);
        let mut waited = false;
        let op_timeout = self.op_timeout;
        // A store that takes locks with a read in one round trip: each
        // attempt looks at the entry too. Others lock, then look in a call
        // of its own.
        let combined = self.store.backend().combines_locks();
        loop {
            // The first attempt comes out of the call's budget; later ones
            // are part of waiting, which is not charged.
            let timeout = if waited {
                op_timeout
            } else {
                let Some(left) = budget.left() else {
                    return Contended::Alone;
                };
                left
            };
            let started = Instant::now();
            // Where reads take locks, the engine's token: the lock a read of
            // another of its callers took counts as this call's (see
            // `Engine::lock_token`). Elsewhere a token of the call's own.
            let token = if combined {
                self.lock_token.clone()
            } else {
                token()
            };
            let (state, found) = self.take_lock(key, token, bound, timeout, combined).await;
            if waited {
                // Waiting took the place of computing: what follows (the
                // write) gets a budget of its own.
                budget.refill();
            } else {
                budget.spend(started);
            }
            // A fresh value: stored by the holder before us, between our
            // miss and this attempt, or by the holder we wait for.
            let mut value = found.and_then(|found| self.fresh::<V>(key, accept, found));
            match state {
                LockState::Held(held) => {
                    // The holder before us may have stored the value between
                    // our miss and our lock: without a combined look, look
                    // once more if what is left covers the look and the
                    // write.
                    if !combined && budget.affords(2) {
                        if let Some(left) = budget.left() {
                            let started = Instant::now();
                            value = self.peek::<V>(key, accept, left).await;
                            budget.spend(started);
                        }
                    }
                    if let Some((v, bytes)) = value {
                        // Released in the background: the caller has its
                        // value and need not wait for the store.
                        drop(held);
                        return Contended::Value(v, bytes);
                    }
                    return Contended::Locked(held);
                }
                LockState::Busy => {
                    if let Some((v, bytes)) = value {
                        return Contended::Value(v, bytes);
                    }
                }
                LockState::Unsupported | LockState::Failed => return Contended::Alone,
            }
            if !waited {
                waited = true;
                self.counters.lock_waits.incr();
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                self.counters.lock_timeouts.incr();
                return Contended::Alone;
            }
            let left = deadline.map_or(pause, |d| d.saturating_duration_since(now));
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            if !combined {
                if let Some((v, bytes)) = self.peek::<V>(key, accept, op_timeout).await {
                    return Contended::Value(v, bytes);
                }
            }
        }
    }

    /// One uncounted read of a fresh entry: the value and its bytes.
    async fn peek<V: DeserializeOwned>(
        &self,
        key: &str,
        accept: Accept,
        timeout: Duration,
    ) -> Option<(V, Bytes)> {
        let backend = self.store.backend();
        let found = self
            .guarded_for("get", timeout, || backend.get(key))
            .await
            .ok()?;
        self.fresh(key, accept, found)
    }

    /// Stores a cold miss's value and releases its lock, in one store call
    /// where the store allows ([`Backend::set_and_unlock`]); failures are
    /// counted as [`store`](Engine::store)'s are, and a release the store
    /// did not confirm is retried in the background.
    ///
    /// [`Backend::set_and_unlock`]: crate::Backend::set_and_unlock
    pub(crate) async fn store_unlocking(
        &self,
        key: &str,
        bytes: Bytes,
        ttl: Duration,
        ticket: Option<Ticket>,
        timeout: Duration,
        mut held: HeldLock,
    ) {
        match self
            .write_unlocking(key, bytes, ttl, ticket, timeout, &held.token)
            .await
        {
            Ok(released) => held.done = released,
            Err(e) => self.store_failed(key, e, timeout),
        }
    }

    /// What a lock attempt read, if it is a fresh entry of the wanted type:
    /// the value and its bytes. Uncounted, like every look a lock takes.
    fn fresh<V: DeserializeOwned>(
        &self,
        key: &str,
        accept: Accept,
        found: Lookup,
    ) -> Option<(V, Bytes)> {
        let bytes = found.value?;
        match self
            .sealer
            .open_checked::<V>(&bytes, accept, None, Source::Store(key))
        {
            Ok(Some((v, _))) => Some((v, bytes)),
            _ => None,
        }
    }
}
