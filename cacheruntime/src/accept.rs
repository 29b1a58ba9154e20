//! Which entries a read accepts: fingerprints of types and versions, and
//! of the tags an entry was stored with.

use crate::envelope::{self, Header};
use crate::stamp::{self, Stamp};

/// The fingerprint of entries written by [`Cache::set`](crate::Cache::set):
/// the direct API checks values with the codec only, so
/// `set(k, &"text")` reads back as `get::<String>(k)`. Typed calls
/// (`#[cached]`, `get_or_compute`) see such an entry as another type's: a
/// miss.
pub(crate) const UNTYPED: u64 = 0;

/// The fingerprint of counters (`Cache::incr` / `decr`): their own, so
/// that a number cached by `set` or a computation is never taken for one,
/// and read back by `get::<i64>` ([`Accept::Direct`]).
pub(crate) const COUNTER: u64 = envelope::fingerprint("cacheruntime::counter", 0);

/// What `get::<i64>` asks for: it also reads counters.
pub(crate) const I64: u64 = envelope::fingerprint("i64", 0);

/// Which fingerprints a read accepts.
///
/// An entry stored with tags (its envelope has a tag section) has the
/// fingerprint of its type extended over that section
/// ([`stamp::covering`]): a tagged call accepts it by that fingerprint
/// alone ([`Stamped`](Accept::Stamped)); untagged calls never accept it;
/// the direct reads accept it only after checking its tokens in the store
/// (`Engine::tags_hold`).
#[derive(Clone, Copy)]
pub(crate) enum Accept {
    /// Exactly this one, untagged (typed calls).
    Exactly(u64),
    /// Exactly this one, tagged: the type's fingerprint extended over the
    /// tag section of the call's current tokens.
    Stamped(u64),
    /// `Cache::get`: entries from `Cache::set`, or typed entries of `T`
    /// at version 0 (and counters, for `T = i64`), tagged or not.
    Direct(u64),
    /// Any type: the untyped direct ops (`contains`, `ttl`, `touch`,
    /// `add`), which look at the envelope, never at the value.
    Any,
}

impl Accept {
    /// Whether the read knows its tags (typed calls: an entry's tags are
    /// checked by its fingerprint); the direct reads check an entry's
    /// tokens in the store before serving it.
    #[inline(always)]
    pub(crate) fn knows_tags(self) -> bool {
        matches!(self, Accept::Exactly(_) | Accept::Stamped(_))
    }

    /// Whether an entry with this header is of a kind this read accepts;
    /// `section` gives the entry's tag section when it has one (only
    /// asked of tagged entries read directly).
    #[inline(always)]
    pub(crate) fn admits<'b>(
        self,
        header: &Header,
        section: impl FnOnce() -> Option<&'b [u8]>,
    ) -> bool {
        let fp = header.fingerprint;
        let tagged = header.flags & envelope::FLAG_TAGGED != 0;
        match self {
            Accept::Exactly(want) => !tagged && fp == want,
            Accept::Stamped(want) => tagged && fp == want,
            Accept::Direct(typed) => {
                let section = if tagged {
                    match section() {
                        Some(section) => Some(section),
                        None => return false,
                    }
                } else {
                    None
                };
                let is = |base: u64| match section {
                    None => fp == base,
                    Some(section) => fp == stamp::covering(base, section),
                };
                is(UNTYPED) || is(typed) || (typed == I64 && is(COUNTER))
            }
            Accept::Any => true,
        }
    }
}

/// What a typed call (`#[cached]`, `get_or_compute`, the HTTP layer)
/// stores and accepts: its type fingerprint, and, when it has tags, the
/// stamp of their tokens as read before its read of the entry.
#[derive(Clone, Debug)]
pub(crate) struct Typed {
    /// The type-and-version fingerprint.
    pub(crate) fp: u64,
    /// The tags' stamp (`None`: the call has no tags).
    pub(crate) stamp: Option<std::sync::Arc<Stamp>>,
}

impl Typed {
    /// A call without tags.
    pub(crate) fn plain(fp: u64) -> Typed {
        Typed { fp, stamp: None }
    }

    /// The entries this call accepts: its own type, with its tags' current
    /// tokens when it has tags.
    #[inline]
    pub(crate) fn accept(&self) -> Accept {
        match &self.stamp {
            None => Accept::Exactly(self.fp),
            Some(stamp) => Accept::Stamped(stamp.fingerprint(self.fp)),
        }
    }

    /// What a write seals with.
    pub(crate) fn parts(&self) -> (u64, Option<&Stamp>) {
        (self.fp, self.stamp.as_deref())
    }
}
