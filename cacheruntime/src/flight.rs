//! In-process single-flight: one computation per key at a time.
//!
//! The first caller to miss a key becomes the leader and computes; callers
//! that miss while it runs wait for the encoded entry and decode their own
//! copy (so values need not be `Clone`). If the leader's result is not
//! cacheable (an `Err`) the waiters compute for themselves, as they would
//! have without a cache. If the leader is dropped mid-computation its guard
//! marks the flight abandoned and a waiter takes over: nothing stays locked.
//!
//! A caller joins a flight only if the flight's read saw every invalidation
//! of the key that the caller's own read saw (the caller's [`Ticket`] is
//! covered by the flight's): a computation that started before an
//! invalidation, in this process or any other, is never shared with a
//! caller that knows of it. Such a caller starts a new flight in its place;
//! the old one finishes for the callers that had already joined it. A
//! caller whose read failed cannot tell, and computes on its own. A store
//! that gives no tickets at all (a third-party backend may not) shares
//! computations among its ticketless callers, as before tickets existed:
//! only in-process invalidations fence them.
//!
//! A flight is a mutex-guarded state plus one `Notify`, and the leader only
//! notifies when someone waits: most misses have no waiter, and waking
//! nobody should cost nothing (tokio's `watch` notified eight `Notify`s on
//! every send and close, half the cost of a memory miss).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::backend::Ticket;

/// What a flight left for its waiters.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// Still computing.
    Pending,
    /// The full encoded entry (envelope included).
    Entry(Bytes),
    /// Nothing shareable: waiters compute their own value.
    Nothing,
    /// The leader went away without a result.
    Abandoned,
}

pub(crate) struct Flight {
    /// The invalidation state the leader's read saw (`None`: the store
    /// gives no tickets).
    ticket: Option<Ticket>,
    state: Mutex<Landing>,
    notify: Notify,
    waiters: AtomicUsize,
    /// What waiters left to be dropped when the flight ends (a store lock
    /// a waiter's read took: released once the leader has stored); `None`
    /// once it ended.
    kept: Mutex<Option<Vec<Box<dyn Send>>>>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("ticket", &self.ticket)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Flight {
    /// Keeps `thing` until the flight ends (the leader's guard drops, after
    /// its write), or drops it now if the flight has ended.
    pub(crate) fn keep_until_end(&self, thing: Box<dyn Send>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match kept.as_mut() {
            Some(kept) => kept.push(thing),
            None => {
                drop(kept);
                drop(thing);
            }
        }
    }

    fn land(&self, landing: Landing, only_if_pending: bool) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if only_if_pending && !matches!(*state, Landing::Pending) {
                return;
            }
            *state = landing;
        }
        // Ordered by the mutex: a waiter that counted itself before our
        // unlock is notified; one that counts itself after sees the state.
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: DashMap<Box<str>, Arc<Flight>>,
}

pub(crate) enum Role<'a> {
    Leader(LeaderGuard<'a>),
    Waiter(Arc<Flight>),
    /// The read failed, or the caller is the computation it would wait
    /// for: compute without sharing.
    Alone,
}

/// What the caller's read of the store told it.
#[derive(Clone, Copy)]
pub(crate) enum Seen<'t> {
    /// The store answered, with this ticket (or none, if it gives none).
    Answered(Option<&'t Ticket>),
    /// The read failed: nothing is known.
    Failed,
}

impl Flights {
    /// Joins the flight of `key` if `may_join` admits its ticket (a caller
    /// and a flight without tickets always match), or leads a new one
    /// (taking the old one's place for later callers).
    pub(crate) fn join<'a>(
        &'a self,
        key: &str,
        seen: Seen<'_>,
        may_join: impl FnOnce(&Ticket, &Ticket) -> bool,
    ) -> Role<'a> {
        let Seen::Answered(ticket) = seen else {
            return Role::Alone;
        };
        if inside_computation_of(key) {
            // Re-entered from the computation it would wait for (a function
            // calling itself under its own key, a retry inside it): waiting
            // would never end.
            return Role::Alone;
        }
        let admits = |flight: &Option<Ticket>| match (flight, ticket) {
            (Some(flight), Some(mine)) => may_join(flight, mine),
            (None, None) => true,
            _ => false,
        };
        let lead = |flights: &'a Flights| {
            let flight = Arc::new(Flight {
                ticket: ticket.cloned(),
                state: Mutex::new(Landing::Pending),
                notify: Notify::new(),
                waiters: AtomicUsize::new(0),
                kept: Mutex::new(Some(Vec::new())),
            });
            let guard = LeaderGuard {
                flights,
                key: key.into(),
                flight: flight.clone(),
            };
            (flight, guard)
        };
        match self.map.entry(key.into()) {
            Entry::Occupied(mut e) => {
                if admits(&e.get().ticket) {
                    return Role::Waiter(e.get().clone());
                }
                let (flight, guard) = lead(self);
                e.insert(flight);
                Role::Leader(guard)
            }
            Entry::Vacant(e) => {
                let (flight, guard) = lead(self);
                e.insert(flight);
                Role::Leader(guard)
            }
        }
    }

    /// Whether a computation of `key` runs in this process.
    pub(crate) fn is_running(&self, key: &str) -> bool {
        !self.map.is_empty() && self.map.contains_key(key)
    }

    /// Stops new callers from joining flights under `prefix`: their values
    /// may have been computed before an invalidation that just returned.
    /// Current waiters keep waiting (they asked before it); the leaders'
    /// guards find their entries gone and remove nothing else.
    pub(crate) fn detach_prefix(&self, prefix: &str) {
        if !self.map.is_empty() {
            self.map.retain(|key, _| !key.starts_with(prefix));
        }
    }

    /// Stops new callers from joining the flight of `key` (a delete).
    pub(crate) fn detach_key(&self, key: &str) {
        if !self.map.is_empty() {
            self.map.remove(key);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Held by the computing caller. Dropping it ends the flight: after a
/// [`publish`](Self::publish) late callers find the store instead; without
/// one (cancellation, panic) the waiters are told to try again.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: Box<str>,
    flight: Arc<Flight>,
}

impl LeaderGuard<'_> {
    /// Hands the outcome to current waiters and to callers that join until
    /// the guard is dropped (while the leader is still storing the value).
    pub(crate) fn publish(&self, landing: Landing) {
        self.flight.land(landing, false);
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .map
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
        self.flight.land(Landing::Abandoned, true);
        let kept = self
            .flight
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(kept);
    }
}

tokio::task_local! {
    /// The keys whose computations the current future runs inside,
    /// innermost last.
    static COMPUTING: Vec<Box<str>>;
}

/// Whether the current future runs inside the computation of `key` (led
/// here): a call for `key` from there must not wait for that computation.
fn inside_computation_of(key: &str) -> bool {
    COMPUTING
        .try_with(|keys| keys.iter().any(|k| &**k == key))
        .unwrap_or(false)
}

/// Runs a leader's computation of `key`, so that calls it makes know they
/// are inside it. Futures it spawns are not: a computation that waits on a
/// spawned task calling its own key still waits for itself.
pub(crate) async fn computing<F: std::future::Future>(key: &str, computation: F) -> F::Output {
    let mut keys = COMPUTING.try_with(Clone::clone).unwrap_or_default();
    keys.push(key.into());
    COMPUTING.scope(keys, computation).await
}

/// Counts a waiter for as long as it waits, cancellation included.
struct Waiting<'a>(&'a Flight);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits for the leader. `None` means the leader went away without landing:
/// the caller should try again (and may become the leader).
pub(crate) async fn wait(flight: Arc<Flight>) -> Option<Landing> {
    flight.waiters.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(&flight);
    loop {
        let notified = flight.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let state = flight
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match state {
            Landing::Pending => notified.await,
            Landing::Abandoned => return None,
            done => return Some(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_leader_frees_the_key_and_wakes_waiters() {
        let flights = Flights::default();
        let t = Ticket::seq(1);
        let Role::Leader(leader) = flights.join("k", Seen::Answered(Some(&t)), |_, _| true) else {
            panic!("first caller must lead")
        };
        let Role::Waiter(flight) = flights.join("k", Seen::Answered(Some(&t)), |_, _| true) else {
            panic!("second caller must wait")
        };
        let waiter = tokio::spawn(wait(flight));
        tokio::task::yield_now().await;
        drop(leader);
        assert!(waiter.await.unwrap().is_none());
        assert_eq!(flights.len(), 0);
        assert!(matches!(
            flights.join("k", Seen::Answered(Some(&t)), |_, _| true),
            Role::Leader(_)
        ));
    }

    #[tokio::test]
    async fn published_entry_reaches_waiters_before_and_after_publication() {
        let flights = Flights::default();
        let t = Ticket::seq(1);
        let Role::Leader(leader) = flights.join("k", Seen::Answered(Some(&t)), |_, _| true) else {
            panic!()
        };
        let Role::Waiter(early) = flights.join("k", Seen::Answered(Some(&t)), |_, _| true) else {
            panic!()
        };
        let early = tokio::spawn(wait(early));
        tokio::task::yield_now().await;
        leader.publish(Landing::Entry(Bytes::from_static(b"v")));
        let Role::Waiter(late) = flights.join("k", Seen::Answered(Some(&t)), |_, _| true) else {
            panic!("the flight lasts until the guard drops")
        };
        drop(leader);
        assert!(matches!(early.await.unwrap(), Some(Landing::Entry(b)) if &b[..] == b"v"));
        assert!(matches!(wait(late).await, Some(Landing::Entry(b)) if &b[..] == b"v"));
    }

    #[tokio::test]
    async fn a_caller_never_joins_a_flight_its_ticket_is_newer_than() {
        let flights = Flights::default();
        let old = Ticket::tag("1.4");
        let new = Ticket::tag("1.5");
        let covers = |f: &Ticket, mine: &Ticket| f.covers(mine);
        let Role::Leader(stale_leader) = flights.join("k", Seen::Answered(Some(&old)), covers)
        else {
            panic!()
        };
        // The newer caller leads a flight of its own, in the old one's place.
        let Role::Leader(fresh_leader) = flights.join("k", Seen::Answered(Some(&new)), covers)
        else {
            panic!("a caller that saw a newer invalidation must not join an older flight")
        };
        // Later callers that saw the same state join the new flight, and the
        // old leader's end does not remove it.
        drop(stale_leader);
        let Role::Waiter(joined) = flights.join("k", Seen::Answered(Some(&new)), covers) else {
            panic!()
        };
        assert_eq!(joined.ticket, Some(new));
        drop(fresh_leader);
        // After a failed read there is nothing to compare: compute alone.
        assert!(matches!(
            flights.join("k", Seen::Failed, |_, _| true),
            Role::Alone
        ));
        // A store without tickets: its callers share, as before tickets.
        let Role::Leader(plain) = flights.join("p", Seen::Answered(None), covers) else {
            panic!()
        };
        assert!(matches!(
            flights.join("p", Seen::Answered(None), covers),
            Role::Waiter(_)
        ));
        drop(plain);
    }
}
