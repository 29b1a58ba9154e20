//! The memory store's entries: shared by reference count, each with a slot
//! for the decoded value the cache keeps beside hot entries.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::backend::Ticket;
use crate::memo::Decoded;

/// An entry held in process memory, shared by reference count, with a slot
/// where the cache keeps the decoded value of hot `Clone` types (the memory
/// hit path: [`MemoryBackend::local`](super::MemoryBackend::local)).
pub(crate) struct LocalEntry {
    bytes: Bytes,
    expires_ms: u64,
    tag: u64,
    pub(crate) decoded: OnceLock<Decoded>,
}

impl fmt::Debug for LocalEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEntry")
            .field("len", &self.bytes.len())
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl LocalEntry {
    /// An entry of `bytes` live until `expires_ms`; `tag` is the backend's.
    pub(crate) fn new(bytes: Bytes, expires_ms: u64, tag: u64) -> Self {
        LocalEntry {
            bytes,
            expires_ms,
            tag,
            decoded: OnceLock::new(),
        }
    }

    /// The stored bytes.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Wall-clock ms after which the entry is gone.
    pub(crate) fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// The backend's own number for the entry (the memory store's sequence).
    pub(crate) fn tag(&self) -> u64 {
        self.tag
    }
}

/// What [`MemoryBackend::local`](super::MemoryBackend::local) found.
#[derive(Debug)]
pub(crate) struct LocalLookup {
    /// The entry, if any, not yet checked for expiry: the caller compares
    /// [`LocalEntry::expires_ms`] with the clock it reads anyway (one clock
    /// read per hit instead of two).
    pub(crate) entry: Option<Arc<LocalEntry>>,
    /// As in [`Lookup::ticket`].
    pub(crate) ticket: Ticket,
}

impl LocalLookup {
    /// A read that found `entry` (or nothing) under `ticket`.
    pub(crate) fn new(entry: Option<Arc<LocalEntry>>, ticket: Ticket) -> Self {
        LocalLookup { entry, ticket }
    }
}
