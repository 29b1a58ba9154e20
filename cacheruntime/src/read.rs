//! Reading an entry for a call: the synchronous read of in-process stores
//! (the `#[cached]` hit path's), and the store read, which on a shared
//! store with locks takes a cold key's lock in the same round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::backend::Ticket;
use crate::engine::{Answer, Engine};
use crate::entry::{Accept, Due, Source};
use crate::guarded::Budget;
use crate::lock::HeldLock;
use crate::memo::Memo;
use crate::near::Near;
use crate::policy::Policy;
use crate::reader::Reader;
use crate::site::Site;
use crate::Error;

/// What a read of the store found.
pub(crate) enum Read<V> {
    /// A fresh entry; `true` when the near tier answered (no round trip).
    Hit(V, bool),
    /// Servable, and due for a refresh (stale, or picked by early refresh).
    Refresh(V, Option<Ticket>, Due),
    Miss(Option<Ticket>),
    /// Nothing servable, but an expired value kept for a caller whose
    /// computation fails (`stale_if_error`); otherwise a miss.
    Fallback(V, Option<Ticket>),
}

/// What the synchronous in-process read found.
pub(crate) enum Fast<V> {
    /// A live entry, decoded (and already counted as a hit).
    Hit(V),
    /// A servable entry due for a background refresh, with the read's ticket.
    Refresh(V, Option<Ticket>, Due),
    /// Nothing usable; the ticket of the read.
    Miss(Option<Ticket>),
    /// As [`Read::Fallback`].
    Fallback(V, Option<Ticket>),
    /// The store is remote: read it asynchronously.
    Remote,
}

impl Engine {
    /// Reads and opens an entry. Store failures are returned; undecodable
    /// entries are misses (counted in `decode_failures`). Not counted as a
    /// call's answer: the caller does that.
    pub(crate) async fn read<V: DeserializeOwned>(
        self: &Arc<Self>,
        key: &str,
        fp: Accept,
        memo: Memo<V>,
        policy: Option<&Policy>,
        budget: &mut Budget,
    ) -> Result<Read<V>, Error> {
        self.read_with(key, fp, memo, policy, budget, None).await.0
    }

    /// [`read`](Self::read), taking the key's lock for `lock` (its TTL)
    /// where the store finds no live entry: the lock, if held after it.
    pub(crate) async fn read_with<V: DeserializeOwned>(
        self: &Arc<Self>,
        key: &str,
        fp: Accept,
        memo: Memo<V>,
        policy: Option<&Policy>,
        budget: &mut Budget,
        lock: Option<Duration>,
    ) -> (Result<Read<V>, Error>, Option<HeldLock>) {
        let mut held = None;
        let read = async {
            let inner = self;
            if !inner.enabled() {
                return Ok(Read::Miss(None));
            }
            match self.local_read::<V, false>(key, fp, None, memo, policy) {
                // With a near tier, the in-process read is the near tier's.
                Fast::Hit(v) => return Ok(Read::Hit(v, inner.near.is_some())),
                Fast::Refresh(v, ticket, due) => return Ok(Read::Refresh(v, ticket, due)),
                Fast::Miss(ticket) => return Ok(Read::Miss(ticket)),
                Fast::Fallback(v, ticket) => return Ok(Read::Fallback(v, ticket)),
                Fast::Remote => {}
            }
            let backend = inner.store.backend();
            // A retried read of a call that spent its budget: as if the store
            // timed out.
            let timeout = budget.left().ok_or(Error::Timeout {
                backend: backend.name(),
                timeout: inner.op_timeout,
            })?;
            let started = Instant::now();
            let found = match lock {
                Some(ttl) => {
                    let (found, lock) = self.get_or_lock(key, ttl, timeout).await;
                    held = lock;
                    found
                }
                None => self.guarded_for("get", timeout, || backend.get(key)).await,
            };
            budget.spend(started);
            let lookup = found?;
            if let Some(bytes) = lookup.value {
                match inner
                    .sealer
                    .open_checked::<V>(&bytes, fp, policy, Source::Store(key))
                {
                    Ok(Some((v, due))) => {
                        if !fp.knows_tags() && !self.tags_hold(&bytes, Reader::App).await? {
                            return Ok(Read::Miss(lookup.ticket));
                        }
                        if let Some(near) = &inner.near {
                            near.keep_read(key, &bytes, lookup.ticket.as_ref());
                        }
                        return Ok(match due {
                            Due::No => Read::Hit(v, false),
                            Due::Early(_) | Due::Stale(_) => Read::Refresh(v, lookup.ticket, due),
                            Due::IfError(_) => Read::Fallback(v, lookup.ticket),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => self.failed("decode", &e),
                }
            }
            Ok(Read::Miss(lookup.ticket))
        }
        .await;
        (read, held)
    }

    /// The synchronous read of in-process stores; `Fast::Remote` for others.
    /// With `HIT_IS_ANSWER` a fresh hit is counted here as the call's answer
    /// (the `#[cached]` fast path returns it at once); otherwise nothing is
    /// counted, and the caller counts.
    #[inline]
    pub(crate) fn local_read<V: DeserializeOwned, const HIT_IS_ANSWER: bool>(
        &self,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Fast<V> {
        let inner = self;
        let Some(memory) = inner.store.memory() else {
            return match &inner.near {
                Some(near) => self.near_read::<V, HIT_IS_ANSWER>(near, key, fp, site, memo, policy),
                None => Fast::Remote,
            };
        };
        let found = memory.local(key);
        if let Some(entry) = found.entry {
            match inner.sealer.open_local(&entry, fp, memo, policy) {
                // The direct reads (never the `#[cached]` hit path, which
                // knows its tags) check an entry's tokens.
                Ok(Some(_))
                    if !HIT_IS_ANSWER
                        && !fp.knows_tags()
                        && !self.tags_hold_local(memory, entry.bytes()) => {}
                Ok(Some((v, due))) => {
                    return match due {
                        Due::No => {
                            if HIT_IS_ANSWER {
                                self.tally(site, Answer::Hit);
                                #[cfg(feature = "spans")]
                                if crate::spans::wanted() {
                                    crate::spans::local_hit(self, site, key, false);
                                }
                            }
                            Fast::Hit(v)
                        }
                        Due::Early(_) | Due::Stale(_) => Fast::Refresh(v, Some(found.ticket), due),
                        Due::IfError(_) => Fast::Fallback(v, Some(found.ticket)),
                    };
                }
                Ok(None) => {}
                Err(e) => self.failed("decode", &e),
            }
        }
        Fast::Miss(Some(found.ticket))
    }
}

impl Engine {
    /// [`local_read`](Engine::local_read) on a shared store with a near
    /// tier: a fresh entry of the near tier is a hit; anything else (a
    /// miss, an entry due for a refresh, one kept for `stale_if_error`) is
    /// the shared store's to answer, under its own ticket.
    #[inline]
    pub(crate) fn near_read<V: DeserializeOwned, const HIT_IS_ANSWER: bool>(
        &self,
        near: &Near,
        key: &str,
        fp: Accept,
        site: Option<&'static Site>,
        memo: Memo<V>,
        policy: Option<&Policy>,
    ) -> Fast<V> {
        if !near.serving() {
            return Fast::Remote;
        }
        let Some(entry) = near.memory().local(key).entry else {
            return Fast::Remote;
        };
        match self.sealer.open_local(&entry, fp, memo, policy) {
            Ok(Some((v, Due::No))) => {
                // Counted as a near hit where it is counted as the call's
                // hit (here, or by the caller: `Read::Hit(_, true)`).
                if HIT_IS_ANSWER {
                    self.tally_near_hit(site, &near.hits);
                    #[cfg(feature = "spans")]
                    if crate::spans::wanted() {
                        crate::spans::local_hit(self, site, key, true);
                    }
                }
                Fast::Hit(v)
            }
            Ok(_) => Fast::Remote,
            Err(e) => {
                self.failed("decode", &e);
                Fast::Remote
            }
        }
    }
}
