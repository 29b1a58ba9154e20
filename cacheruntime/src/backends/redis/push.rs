//! Change notices for near tiers (`near.rs`), over Redis Pub/Sub.
//!
//! Every write, delete and invalidation script publishes a notice on
//! [`NOTICES`] in the script itself (`scripts.rs`), so no change takes
//! effect without its notice. A near tier in front of this store follows
//! the channel on a connection of its own and drops what each notice names.
//!
//! What it may serve rests on one fact: Redis answers commands on a
//! connection in order, so when the answer to a `PING` sent at `t` comes
//! back, every notice published before the server saw that `PING` has come
//! back before it. After each answer the follower applies the notices
//! received and tells the near tier it is in sync as of `t`; the near tier
//! serves only while that is less than `near_check` ago. A stalled or
//! silently dead connection therefore stops near hits within `near_check`;
//! a lost one (and every new subscription, which cannot know what was
//! published before it) drops the whole near tier first.
//!
//! On a Cluster a notice is delivered to the subscribers of the node that
//! ran the script, in order with its other replies, and forwarded over the
//! cluster bus to the others, which is neither ordered nor sure: the
//! follower subscribes on every master and sends each its `PING`
//! (`cluster_push.rs`).
//!
//! Why Pub/Sub and not client tracking (`CLIENT TRACKING ... BCAST`): a
//! notice names the cache key or prefix itself, where tracking names the
//! store's keys (entries, counters) to be mapped back, and it works on
//! RESP2 connections. The cost is a `PUBLISH` in every change script
//! (BENCHMARKS.md). Every process that changes the store must publish:
//! one running an older version of this crate, or writing by hand, is not
//! heard until `near_ttl` ends the entries it changed.

use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};

use super::cluster_push::follow_cluster;
use super::connection::Notices;
use super::RedisBackend;
use crate::backend::Feed;

pub(super) use super::scripts::NOTICES;

/// The most notices applied at once after a `PING` answer.
const MAX_DRAIN: usize = 100_000;

impl RedisBackend {
    /// The notice of a write or delete of `key`.
    pub(super) fn key_notice(&self, key: &str) -> String {
        crate::changes::key_notice(key)
    }

    /// The notice of an invalidation of `prefix`.
    pub(super) fn prefix_notice(&self, prefix: &str) -> String {
        crate::changes::prefix_notice(prefix)
    }
}

impl RedisBackend {
    /// Starts following the notices for `feed`, if this store can: a task
    /// on the current runtime that lives as long as the near tier.
    pub(super) fn follow(&self, feed: Feed) -> bool {
        let Some(notices) = self.conn.notices() else {
            return false;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let label = self.label.clone();
        let secrets = self.secrets.clone();
        runtime.spawn(async move {
            feed.keep_following(
                &label,
                |m| secrets.scrub(m),
                "Redis change notices (or could not subscribe: an ACL user needs SUBSCRIBE \
                 and the channel cacheruntime:changes)",
                |feed| {
                    let notices = notices.clone();
                    async move {
                        match notices {
                            Notices::One(client) => follow_one(&client, &feed).await,
                            Notices::Cluster(seeds) => follow_cluster(&seeds, &feed).await,
                        }
                    }
                },
            )
            .await;
        });
        true
    }
}

/// Follows the notices on one connection until it fails (`Err`) or the near
/// tier is gone (`Ok`).
pub(super) async fn follow_one(
    client: &redis::Client,
    feed: &Feed,
) -> Result<(), redis::RedisError> {
    let check = feed.check();
    let patience = check.max(Duration::from_secs(1));
    let timed_out = || {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer the notice connection in time",
        ))
    };
    let pubsub = tokio::time::timeout(patience, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    let (mut sink, mut stream) = pubsub.split();
    tokio::time::timeout(patience, sink.subscribe(NOTICES))
        .await
        .map_err(|_| timed_out())??;
    // Whatever was published before the subscription is unknown here.
    feed.lost();
    let mut ticks = tokio::time::interval((check / 4).max(Duration::from_millis(2)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !feed.is_open() {
            return Ok(());
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => feed.apply(msg.get_payload_bytes()),
                None => return Err(closed()),
            },
            _ = ticks.tick() => {
                let asked = Instant::now();
                tokio::time::timeout(patience, sink.ping::<redis::Value>())
                    .await
                    .map_err(|_| timed_out())??;
                // The notices published before the server saw the PING
                // came before its answer: apply them, then vouch. Out of
                // tokio's budget, which would make a full queue look empty;
                // at most a bounded batch, so that a flood cannot hold the
                // thread (no vouching then: the lease may lapse, and the
                // near tier reads the store until it catches up).
                let drained = tokio::task::unconstrained(async {
                    drain(std::slice::from_mut(&mut stream), |notice| feed.apply(notice))
                })
                .await?;
                if drained {
                    feed.synced(asked);
                }
            }
        }
    }
}

/// Applies every notice each stream holds now, at most `MAX_DRAIN` in
/// all (run out of tokio's budget, which would make a full queue look
/// empty); `Ok(false)` if that bound stopped it, `Err` if a stream ended
/// (its subscription is gone).
pub(super) fn drain(
    streams: &mut [redis::aio::PubSubStream],
    mut apply: impl FnMut(&[u8]),
) -> Result<bool, redis::RedisError> {
    let mut left = MAX_DRAIN;
    for stream in streams.iter_mut() {
        loop {
            match stream.next().now_or_never() {
                Some(Some(msg)) => apply(msg.get_payload_bytes()),
                Some(None) => return Err(closed()),
                None => break,
            }
            left -= 1;
            if left == 0 {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

pub(super) fn closed() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the notice connection closed",
    ))
}
