//! [`Ticket`]: what a store knew about a key's invalidation state when it
//! answered a read, which the write after a miss and the sharing of a
//! computation are checked against.

use std::sync::Arc;

/// What a backend knew about its invalidation state when it answered a read.
///
/// A miss hands the ticket to the writer, which stores the computed value
/// *under that state*: if a prefix covering the key was invalidated, or the
/// key deleted, while the value was being computed, the entry is never
/// visible. This is what makes `invalidate_prefix` and `delete` safe against
/// concurrent writers: no entry computed before either returned is served
/// after it.
///
/// Tickets also decide who may share a computation: a caller is handed the
/// value of a computation already running only if that computation's read
/// saw every invalidation of the key that the caller's own read saw
/// ([`covers`](Ticket::covers)).
///
/// Backends choose what a ticket holds: the memory store a sequence number,
/// SQL a sequence number and the newest invalidation of the key, Redis and
/// Memcached the generations of the key and its prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(TicketRepr);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TicketRepr {
    Seq(u64),
    Scoped {
        seq: u64,
        scope: u64,
    },
    Tag(Arc<str>),
    /// A read through a near tier: what the near tier had seen (see
    /// `near.rs`) and the shared store's own ticket, which the near tier
    /// hands on to the store in place of this one.
    Near(Arc<(NearMark, Option<Ticket>)>),
}

/// Where a near tier stood when a read through it began: its sequence
/// number (every invalidation or delete it applies takes a newer one) and
/// the time, in the cache clock's milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NearMark {
    pub(crate) seq: u64,
    pub(crate) at_ms: u64,
}

impl Ticket {
    /// A ticket holding a store-wide sequence number that only grows.
    pub fn seq(n: u64) -> Self {
        Ticket(TicketRepr::Seq(n))
    }

    /// A store-wide sequence number for writes, and `scope`: a number that
    /// grows with every invalidation or delete reaching this key, and only
    /// with those. Two reads of a key with the same scope saw the same
    /// invalidations of it, whatever happened elsewhere in the store.
    pub fn scoped(seq: u64, scope: u64) -> Self {
        Ticket(TicketRepr::Scoped { seq, scope })
    }

    /// A ticket holding a text tag: `.`-separated numbers that only grow
    /// (generations), or any text compared for equality.
    pub fn tag(tag: impl Into<Arc<str>>) -> Self {
        Ticket(TicketRepr::Tag(tag.into()))
    }

    /// A near tier's ticket: its mark and the shared store's ticket.
    pub(crate) fn near(mark: NearMark, inner: Option<Ticket>) -> Self {
        Ticket(TicketRepr::Near(Arc::new((mark, inner))))
    }

    /// The near tier's mark and the shared store's ticket, if this is a
    /// near tier's ticket.
    pub(crate) fn as_near(&self) -> Option<(NearMark, Option<&Ticket>)> {
        match &self.0 {
            TicketRepr::Near(near) => Some((near.0, near.1.as_ref())),
            _ => None,
        }
    }

    /// The sequence number, if this is one.
    pub fn as_seq(&self) -> Option<u64> {
        match &self.0 {
            TicketRepr::Seq(n) | TicketRepr::Scoped { seq: n, .. } => Some(*n),
            TicketRepr::Tag(_) | TicketRepr::Near(_) => None,
        }
    }

    /// The tag, if this is one.
    pub fn as_tag(&self) -> Option<&str> {
        match &self.0 {
            TicketRepr::Tag(t) => Some(t),
            _ => None,
        }
    }

    /// Whether a read under `self` saw every invalidation of the key that a
    /// read under `other` saw, so that a value computed after the `self`
    /// read may be handed to the `other` reader.
    ///
    /// Sequence numbers compare as numbers, scopes as numbers, tags number
    /// by number when both are `.`-separated numbers of the same length
    /// (generations), and otherwise only equal tags cover each other.
    pub fn covers(&self, other: &Ticket) -> bool {
        match (&self.0, &other.0) {
            (TicketRepr::Seq(a), TicketRepr::Seq(b)) => a >= b,
            (TicketRepr::Scoped { scope: a, .. }, TicketRepr::Scoped { scope: b, .. }) => a >= b,
            (TicketRepr::Tag(a), TicketRepr::Tag(b)) => a == b || generations_cover(a, b),
            // Through a near tier: the store's tickets, which saw every
            // invalidation of the key. (The near tier's number moves with
            // any change to any key this process hears of: comparing it
            // would split flights for nothing.)
            (TicketRepr::Near(a), TicketRepr::Near(b)) => match (&a.1, &b.1) {
                (Some(a), Some(b)) => a.covers(b),
                (None, None) => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// `a` and `b` are `.`-separated decimal numbers of the same count, and
/// each of `a`'s is at least `b`'s.
fn generations_cover(a: &str, b: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (mut xs, mut ys) = (a.split('.'), b.split('.'));
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if number(x) && number(y) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                if (x.len(), x) < (y.len(), y) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}
