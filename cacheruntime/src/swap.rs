//! Read, decide, compare-and-set: how the direct ops that write from what
//! they read (`add`, `touch`, `incr`, `decr`) keep one meaning on every
//! store.
//!
//! The entry is read as `get` reads it (the store hides invalidated and
//! deleted entries; the envelope's signature, codec and deadline are checked
//! here), the op decides from that what to write, and the write is a
//! [`Backend::compare_and_set`](crate::Backend::compare_and_set) against
//! exactly what was read, under the read's ticket. If another writer, a
//! delete or an invalidation came between the two, nothing is written and
//! the op reads again. So an entry hidden by an invalidation or a delete,
//! expired, or not signed with a current key is absent to these ops, as to
//! `get`, and two callers deciding from the same state cannot both win.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{Lookup, Ticket};
use crate::engine::Engine;
use crate::entry::Accept;
use crate::envelope::{self, Header};
use crate::reader::Reader;
use crate::Error;

/// What an op decided from the live entry (if any).
pub(crate) enum Step<R> {
    /// Answer without writing.
    Done(R),
    /// Write these bytes for this TTL, then answer.
    Write(Bytes, Duration, R),
}

/// What one read found: the bytes as the store answered them (what the
/// swap compares with) and the read's ticket.
pub(crate) struct Seen {
    raw: Option<Bytes>,
    ticket: Option<Ticket>,
    /// Whether the entry's tags (if it has any) are all current.
    tags_hold: bool,
}

impl Seen {
    /// The live entry's header and payload, for what `fp` admits: none for
    /// an entry one of whose tags was invalidated.
    pub(crate) fn live<'s>(
        &'s self,
        engine: &Engine,
        key: &str,
        fp: Accept,
    ) -> Option<(Header, &'s [u8])> {
        if !self.tags_hold {
            return None;
        }
        engine.sealer.live(self.raw.as_deref()?, key, fp)
    }

    /// The entry's tag section, when it has one.
    pub(crate) fn section(&self) -> Option<&[u8]> {
        let raw = self.raw.as_deref()?;
        let flags = envelope::flags(raw)?;
        (flags & envelope::FLAG_TAGGED != 0)
            .then(|| envelope::tag_section(raw))
            .flatten()
    }
}

impl Engine {
    /// One guarded read of `key` (namespaced) for a direct op: the memory
    /// store answers synchronously, the others under the op timeout and
    /// the breaker.
    pub(crate) async fn look(&self, op: &'static str, key: &str) -> Result<Seen, Error> {
        let lookup: Lookup = match self.store.memory() {
            Some(memory) => memory.lookup(key),
            None => {
                let backend = self.store.backend();
                self.guarded(op, || backend.get(key)).await?
            }
        };
        let tags_hold = match &lookup.value {
            Some(bytes) => self.tags_hold(bytes, Reader::App).await?,
            None => true,
        };
        Ok(Seen {
            raw: lookup.value,
            ticket: lookup.ticket,
            tags_hold,
        })
    }

    /// Reads `key` (namespaced), lets `decide` choose from what it found,
    /// and writes what it chose only if the store still holds what was
    /// read; reads again otherwise, for up to the op timeout (then
    /// [`Error::Contended`]). Each store call runs under the op timeout and
    /// the breaker.
    pub(crate) async fn swap<R>(
        &self,
        op: &'static str,
        key: &str,
        mut decide: impl FnMut(&Seen) -> Result<Step<R>, Error>,
    ) -> Result<R, Error> {
        let started = Instant::now();
        let backend = self.store.backend();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let seen = self.look(op, key).await?;
            let (bytes, ttl, answer) = match decide(&seen)? {
                Step::Done(answer) => return Ok(answer),
                Step::Write(bytes, ttl, answer) => (bytes, ttl, answer),
            };
            if bytes.len() > self.max_entry_bytes {
                return Err(Error::TooLarge {
                    size: bytes.len(),
                    limit: self.max_entry_bytes,
                });
            }
            let expected = seen.raw.as_deref();
            let ticket = seen.ticket.as_ref();
            let swapped = self
                .guarded(op, || {
                    backend.compare_and_set(key, expected, bytes, ttl, ticket)
                })
                .await?;
            if swapped {
                return Ok(answer);
            }
            if started.elapsed() >= self.op_timeout {
                return Err(Error::Contended {
                    key: key.chars().take(64).collect(),
                    attempts,
                });
            }
            // Another writer came first: give it the processor before
            // reading what it wrote.
            tokio::task::yield_now().await;
        }
    }
}
