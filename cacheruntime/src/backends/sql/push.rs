//! Change notices for near tiers (`near.rs`), over PostgreSQL
//! `LISTEN`/`NOTIFY`.
//!
//! Every statement that writes entries sends the notice of each row it
//! wrote (`statements::notifying`), and every invalidation or delete sends
//! its own in its transaction (`k<key>`, `p<prefix>`, or `*` for a name
//! too long for `NOTIFY`). PostgreSQL delivers a notice only when its
//! transaction commits, so no change takes effect without one, and none
//! announces a change that did not happen. A near tier in front of this
//! store follows the channel on a connection of its own and drops what
//! each notice names.
//!
//! What it may serve rests on one documented fact: a listening session
//! receives notices in the order their transactions committed. So the
//! follower also listens on a channel of its own and, every
//! `near_check / 4`, notifies itself there: when that notice comes back,
//! every change committed before it was sent has come back before it. The
//! follower then tells the near tier it is in sync as of the moment it
//! sent it; the near tier serves only while that is less than
//! `near_check` ago. A stalled or silently dead connection therefore stops
//! near hits within `near_check`; a lost one (and every new connection,
//! which cannot know what was sent before it listened) drops the whole
//! near tier first.
//!
//! Every process that changes the store must send the notices: one
//! running an older version of this crate, or writing rows by hand, is not
//! heard until `near_ttl` ends the entries it changed. A near tier costs
//! one more connection to the database per cache.

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
    let pool = PgPoolOptions::new()
        .max_connections(1)
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
                if notice.channel() != own {
                    feed.apply(notice.payload().as_bytes());
                } else if let Some((n, at)) = asked {
                    if notice.payload() == n.to_string() {
                        // Every change committed before it was sent has
                        // been applied.
                        feed.synced(at);
                        asked = None;
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
                tokio::time::timeout(
                    patience,
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(own.as_str())
                        .bind(sent.to_string())
                        .execute(&mut listener),
                )
                .await
                .map_err(|_| timed_out())??;
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
