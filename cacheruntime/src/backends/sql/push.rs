//! Change notices for near tiers (`near.rs`), over PostgreSQL
//! `LISTEN`/`NOTIFY`.
//!
//! Every statement that may replace a value a near tier serves sends the
//! notice of each row it wrote (`statements::notifying`: `k<key>`), and
//! every invalidation or
//! delete sends its own in its transaction (`changes::key_notice` and
//! `prefix_notice`, stamped with the time they were sent), as does a
//! recreation of the epoch rows, which hides every entry (`*`, as a name
//! too long for `NOTIFY` is sent). PostgreSQL delivers a notice only when
//! its transaction commits, so no change takes effect without one, and
//! none announces a change that did not happen. (The `max_entries` cull
//! sends none: it evicts, as Redis's `maxmemory` does, and a near copy of
//! an evicted entry is still the right value.) A near tier in front of this
//! store follows the channel on a connection of its own and drops what
//! each notice names.
//!
//! What it may serve rests on one documented fact: a listening session
//! receives notices in the order their transactions committed. So the
//! follower also listens on a channel of its own and, every
//! `near_check / 4`, sends a notice there: when that notice comes back,
//! every change committed before it was sent has come back before it. The
//! follower then tells the near tier it is in sync as of the moment it
//! sent it; the near tier serves only while that is less than
//! `near_check` ago. A stalled or silently dead connection therefore stops
//! near hits within `near_check`; a lost one (and every new connection,
//! which cannot know what was sent before it listened) drops the whole
//! near tier first.
//!
//! The notice the follower sends itself goes out from a second connection
//! of its own, not from the listening one, so it travels as every other
//! process's notice does: if those are lost on the way, so is it, and the
//! lease lapses. That is what happens behind a transaction-pooling proxy
//! (PgBouncer's `pool_mode=transaction`), which drops notices that reach a
//! server process while no client is linked to it: the near tier never
//! gets in sync there and serves nothing (and the listening server
//! process, handed to other clients, may fail their statements with an
//! unexpected notice). Point a cache with a near tier at PostgreSQL
//! directly or through session pooling.
//!
//! Every process that changes the store must send the notices: one
//! running an older version of this crate, or writing rows by hand, is not
//! heard until `near_ttl` ends the entries it changed. A near tier costs
//! two more connections to the database per cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::connect::Connect;
use super::statements::NOTICES;
use super::Shared;
use crate::backend::Feed;

impl Shared {
    /// Starts following the notices for `feed`, if this store can (a
    /// PostgreSQL store, on a tokio runtime): a task that lives as long as
    /// the near tier.
    pub(super) fn follow(self: &Arc<Self>, feed: Feed) -> bool {
        #[allow(irrefutable_let_patterns)]
        let Connect::Postgres(options) = &self.connect
        else {
            return false;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let options = options.clone();
        let shared = Arc::clone(self);
        runtime.spawn(async move {
            feed.keep_following(
                &shared.label,
                |m| shared.secrets.scrub(m),
                "PostgreSQL change notices (or could not listen)",
                |feed| {
                    let options = options.clone();
                    async move { follow_one(&options, &feed).await }
                },
            )
            .await;
        });
        true
    }
}

/// Follows the notices on one connection until it fails (`Err`) or the near
/// tier is gone (`Ok`).
async fn follow_one(options: &PgConnectOptions, feed: &Feed) -> Result<(), sqlx::Error> {
    let check = feed.check();
    let patience = check.max(Duration::from_secs(1));
    let timed_out = || {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "PostgreSQL did not answer the notice connection in time",
        ))
    };
    // One connection listens, the other sends the follower's own notices.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(patience)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let mut listener = tokio::time::timeout(patience, PgListener::connect_with(&pool))
        .await
        .map_err(|_| timed_out())??;
    // A lost connection is this function's failure, not something to hide
    // by reconnecting: the notices sent meanwhile are gone.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    let own = format!(
        "cacheruntime_sync_{:016x}",
        getrandom::u64().map_err(|e| sqlx::Error::Protocol(e.to_string()))?
    );
    tokio::time::timeout(patience, listener.listen_all([NOTICES, own.as_str()]))
        .await
        .map_err(|_| timed_out())??;
    // Whatever was sent before the LISTEN is unknown here.
    feed.lost();
    let mut ticks = tokio::time::interval((check / 4).max(Duration::from_millis(2)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The self-notice in flight: its number and when it was sent.
    let mut asked: Option<(u64, Instant)> = None;
    let mut sent: u64 = 0;
    loop {
        if !feed.is_open() {
            return Ok(());
        }
        tokio::select! {
            got = listener.try_recv() => {
                let Some(notice) = got? else {
                    return Err(closed());
                };
                // sqlx's accessors panic on text that is not UTF-8 (a
                // foreign notice in a SQL_ASCII database): unreadable, so
                // as if anything had changed.
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (notice.channel() == own, notice.payload().to_owned())
                }));
                match read {
                    Err(_) => feed.lost(),
                    Ok((false, payload)) => feed.apply(payload.as_bytes()),
                    Ok((true, payload)) => {
                        if let Some((n, at)) = asked {
                            if payload == n.to_string() {
                                // Every change committed before it was
                                // sent has been applied.
                                feed.synced(at);
                                asked = None;
                            }
                        }
                    }
                }
            }
            _ = ticks.tick() => {
                if let Some((_, at)) = asked {
                    if at.elapsed() > patience {
                        return Err(timed_out());
                    }
                    continue;
                }
                sent += 1;
                let at = Instant::now();
                // Sent from the follower's second connection, not the
                // listening one: it reaches the listener as every other
                // process's notice does, so it proves they arrive (and
                // the app's pool, however busy, does not delay it).
                // A pool too busy or a database down to send it: no sync
                // this time, and the lease lapses (the listening
                // connection's own failure is what ends this function).
                let sent_ok = tokio::time::timeout(
                    patience,
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(own.as_str())
                        .bind(sent.to_string())
                        .execute(&pool),
                )
                .await;
                if !matches!(sent_ok, Ok(Ok(_))) {
                    continue;
                }
                asked = Some((sent, at));
            }
        }
    }
}

fn closed() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the notice connection closed",
    ))
}
