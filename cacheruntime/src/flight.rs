//! In-process single-flight: one computation per key at a time.
//!
//! The first caller to miss a key becomes the leader and computes; callers
//! that miss while it runs wait on a `watch` channel for the encoded entry
//! and decode their own copy (so values need not be `Clone`). If the leader's
//! result is not cacheable (an `Err`) the waiters compute for themselves, as
//! they would have without a cache. If the leader is dropped mid-computation
//! its guard removes the flight, the channel closes, and a waiter takes over:
//! nothing stays locked.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

/// What a finished flight left for its waiters.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// Still computing.
    Pending,
    /// The full encoded entry (envelope included).
    Entry(Bytes),
    /// Nothing shareable: waiters compute their own value.
    Nothing,
}

#[derive(Debug)]
struct Flight {
    tx: watch::Sender<Landing>,
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: DashMap<Box<str>, Arc<Flight>>,
}

pub(crate) enum Role<'a> {
    Leader(LeaderGuard<'a>),
    Waiter(watch::Receiver<Landing>),
}

impl Flights {
    pub(crate) fn join<'a>(&'a self, key: &str) -> Role<'a> {
        match self.map.entry(key.into()) {
            Entry::Occupied(e) => Role::Waiter(e.get().tx.subscribe()),
            Entry::Vacant(e) => {
                let (tx, _) = watch::channel(Landing::Pending);
                let flight = Arc::new(Flight { tx });
                e.insert(flight.clone());
                Role::Leader(LeaderGuard {
                    flights: self,
                    key: key.into(),
                    flight,
                })
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Held by the computing caller. Dropping it ends the flight: after a
/// [`publish`](Self::publish) late callers find the store instead; without
/// one (cancellation, panic) a waiter takes over.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: Box<str>,
    flight: Arc<Flight>,
}

impl LeaderGuard<'_> {
    /// Hands the outcome to current waiters and to callers that join until
    /// the guard is dropped (while the leader is still storing the value).
    pub(crate) fn publish(&self, landing: Landing) {
        self.flight.tx.send_replace(landing);
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .map
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
    }
}

/// Waits for the leader. `None` means the leader went away without landing:
/// the caller should try again (and may become the leader).
pub(crate) async fn wait(mut rx: watch::Receiver<Landing>) -> Option<Landing> {
    let landed = rx
        .wait_for(|l| !matches!(l, Landing::Pending))
        .await
        .ok()
        .map(|l| l.clone());
    landed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_leader_frees_the_key_and_wakes_waiters() {
        let flights = Flights::default();
        let leader = match flights.join("k") {
            Role::Leader(g) => g,
            Role::Waiter(_) => panic!("first caller must lead"),
        };
        let rx = match flights.join("k") {
            Role::Waiter(rx) => rx,
            Role::Leader(_) => panic!("second caller must wait"),
        };
        drop(leader);
        assert!(wait(rx).await.is_none());
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }

    #[tokio::test]
    async fn landed_entry_reaches_late_subscribers_before_removal() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join("k") else {
            panic!()
        };
        let Role::Waiter(rx) = flights.join("k") else {
            panic!()
        };
        leader.publish(Landing::Entry(Bytes::from_static(b"v")));
        drop(leader);
        assert!(matches!(wait(rx).await, Some(Landing::Entry(b)) if &b[..] == b"v"));
    }
}
