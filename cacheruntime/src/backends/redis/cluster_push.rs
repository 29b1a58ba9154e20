//! Change notices from a Redis Cluster, for near tiers (`push.rs` says
//! what a notice is and what a near tier does with it).
//!
//! A change script publishes its notice with `PUBLISH` on the node that
//! runs it. Redis delivers it to that node's own subscribers in order with
//! the node's other replies, and forwards it over the cluster bus to every
//! other node, which is ordered with nothing a client sees and not sure to
//! arrive. So the follower subscribes on every master and, each tick,
//! sends each one a `PING` on its subscription: once every master has
//! answered, every notice published on a master before it saw our `PING`
//! has arrived on that master's own subscription. (The copies the bus
//! brings from the other masters are applied again, which is harmless,
//! and their lag is not measured twice.)
//!
//! That proves nothing about a node the follower does not subscribe to. A
//! node runs change scripts only as a master that owns a slot or imports
//! one (`ASK`), and it becomes one by a failover or a slot handed to it,
//! which raise the cluster's configuration epoch, or by joining the
//! cluster, which changes the number of nodes every node knows. So:
//! - every node listed as a master is subscribed to, whatever its flags (a
//!   master flagged `fail` may come back and take writes); one that cannot
//!   be reached stops the follower, and the near tier serves nothing until
//!   it is back or forgotten (`CLUSTER FORGET`);
//! - once subscribed, each master must report `cluster_state:ok` and list,
//!   in its own `CLUSTER NODES`, itself as a master and exactly the masters
//!   subscribed to: a change between the listing and the subscriptions
//!   shows there;
//! - each tick, after the `PING`s, every master must report the
//!   `cluster_current_epoch` and `cluster_known_nodes` of that check.
//!
//! Any change drops the whole near tier, and the follower subscribes anew
//! on the masters there are then. A master that fails or does not answer
//! stops the vouching: the lease lapses within `near_check`, as on one
//! server.
//!
//! What it cannot see at once: a master learns of a change it took no part
//! in over the cluster bus (gossip, usually within milliseconds). A
//! failover after a master died stops the vouching (its `PING` fails or
//! goes unanswered, and the lease lapses within `near_check`); a change a master makes without the others' agreement (`CLUSTER
//! FAILOVER TAKEOVER`, `SETSLOT .. NODE`) is seen once a subscribed master
//! has heard of it. Nodes are reached at the address `CLUSTER NODES` gives
//! (an IP): with TLS, certificates must name it, or the near tier serves
//! nothing (and says so once).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{ConnectionAddr, RedisError};

use super::push::{closed, drain, NOTICES};
use crate::backend::Feed;

/// How many notices are remembered to tell the bus's copies from new ones.
const RECENT: usize = 4096;

/// A master as `CLUSTER NODES` lists it.
#[derive(Debug, PartialEq)]
pub(super) struct Master {
    pub(super) id: String,
    pub(super) host: String,
    pub(super) port: u16,
}

/// What a master's `CLUSTER INFO` says of the cluster's shape.
#[derive(Debug, PartialEq)]
struct Shape {
    epoch: u64,
    known: u64,
}

fn failure(what: impl Into<String>) -> RedisError {
    RedisError::from(std::io::Error::other(what.into()))
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "a Redis Cluster master did not answer the notice connection in time",
    ))
}

/// The masters in a `CLUSTER NODES` reply, whatever their flags (`fail`
/// too: one may come back and take writes); `None` for one with no
/// address to reach it at (`noaddr`, or still in `handshake`). The node
/// that answered lists itself with no host until it has met another
/// (a one-master cluster): `here`, where it was reached, stands in.
pub(super) fn masters(nodes: &str, here: Option<&str>) -> Vec<(String, Option<Master>)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (id, addr, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") {
                return None;
            }
            let reachable = !flags.iter().any(|f| matches!(*f, "noaddr" | "handshake"));
            let here = here.filter(|_| flags.contains(&"myself"));
            let master = if reachable {
                address(id, addr, here)
            } else {
                None
            };
            Some((id.to_owned(), master))
        })
        .collect()
}

/// Where the node `id` listed at `addr` (`ip:port@cport[,hostname]`, IPv6
/// in brackets or not) is reached; `here` for one listed with no host.
fn address(id: &str, addr: &str, here: Option<&str>) -> Option<Master> {
    let at = addr.split(['@', ',']).next()?;
    let (host, port) = at.rsplit_once(':')?;
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => here?,
        host => host,
    };
    Some(Master {
        id: id.to_owned(),
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// Whether a master's own `CLUSTER NODES` shows it to be the master `me`
/// (the node dialed for it, not another at that address) and lists
/// exactly the masters `ids`.
fn agrees(nodes: &str, me: &str, ids: &HashSet<&str>) -> bool {
    let mine = nodes.lines().any(|line| {
        let mut fields = line.split(' ');
        let (id, flags) = (fields.next().unwrap_or(""), fields.nth(1).unwrap_or(""));
        let flags: Vec<&str> = flags.split(',').collect();
        id == me && flags.contains(&"myself") && flags.contains(&"master")
    });
    let listed: HashSet<String> = masters(nodes, None).into_iter().map(|(id, _)| id).collect();
    mine && listed.len() == ids.len() && ids.iter().all(|id| listed.contains(*id))
}

/// The shape a `CLUSTER INFO` reply gives, if the cluster is `ok`.
fn shape(info: &str) -> Result<Shape, RedisError> {
    let field = |name: &str| {
        info.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim().to_owned())
        })
    };
    if field("cluster_state").as_deref() != Some("ok") {
        return Err(failure(
            "a Redis Cluster master reports cluster_state other than ok",
        ));
    }
    let number = |name: &str| {
        field(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| failure(format!("CLUSTER INFO has no {name}")))
    };
    Ok(Shape {
        epoch: number("cluster_current_epoch")?,
        known: number("cluster_known_nodes")?,
    })
}

/// A client for the node at `host:port`, with `seed`'s credentials and TLS.
fn node_client(seed: &redis::Client, host: &str, port: u16) -> Result<redis::Client, RedisError> {
    let info = seed.get_connection_info().clone();
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

/// The notices applied lately: a copy the bus brings is applied again but
/// its lag is not measured again.
#[derive(Default)]
struct Recent {
    order: VecDeque<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
}

impl Recent {
    fn apply(&mut self, feed: &Feed, notice: &[u8]) {
        let first = !self.seen.contains(notice);
        if first {
            if self.order.len() >= RECENT {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
            self.order.push_back(notice.to_vec());
            self.seen.insert(notice.to_vec());
        }
        feed.apply_measured(notice, first);
    }
}

/// The masters, as listed by the first of `seeds` that answers, and the
/// seed that did. `Err` if one cannot be reached (no address yet).
async fn find_masters(
    seeds: &[redis::Client],
    patience: Duration,
) -> Result<(&redis::Client, Vec<Master>), RedisError> {
    let mut last = None;
    for seed in seeds {
        let listed = tokio::time::timeout(patience, async {
            let mut conn = seed.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
        })
        .await;
        match listed {
            Ok(Ok(nodes)) => {
                let here = match seed.get_connection_info().addr() {
                    ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => {
                        Some(host.as_str())
                    }
                    _ => None,
                };
                let masters = masters(&nodes, here)
                    .into_iter()
                    .map(|(id, master)| {
                        master.ok_or_else(|| {
                            failure(format!(
                                "Redis Cluster master {id} has no address yet: not followed"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if masters.is_empty() {
                    return Err(failure("the Redis Cluster lists no master"));
                }
                return Ok((seed, masters));
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(timed_out()),
        }
    }
    Err(last.unwrap_or_else(|| failure("no Redis Cluster node is configured")))
}

/// Every master's shape, asked on its monitoring connection (one per
/// master of `masters`, in order); with `ids`, also checks that each is
/// the master it was dialed for and lists exactly those masters.
async fn shapes(
    monitors: &mut [redis::aio::MultiplexedConnection],
    masters: &[Master],
    patience: Duration,
    ids: Option<&HashSet<&str>>,
) -> Result<Vec<Shape>, RedisError> {
    let asks = monitors
        .iter_mut()
        .zip(masters)
        .map(|(conn, master)| async move {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(conn).await?;
            let shape = shape(&info)?;
            if let Some(ids) = ids {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
                if !agrees(&nodes, &master.id, ids) {
                    return Err(failure(
                        "the Redis Cluster's masters changed while they were being followed",
                    ));
                }
            }
            Ok(shape)
        });
    tokio::time::timeout(patience, futures_util::future::join_all(asks))
        .await
        .map_err(|_| timed_out())?
        .into_iter()
        .collect()
}

/// Follows the notices of every master of a Cluster until one fails or
/// the cluster changes shape (`Err`), or the near tier is gone (`Ok`).
pub(super) async fn follow_cluster(seeds: &[redis::Client], feed: &Feed) -> Result<(), RedisError> {
    let check = feed.check();
    let patience = check.max(Duration::from_secs(1));
    let (seed, masters) = find_masters(seeds, patience).await?;
    let mut sinks = Vec::with_capacity(masters.len());
    let mut streams = Vec::with_capacity(masters.len());
    let mut monitors = Vec::with_capacity(masters.len());
    for master in &masters {
        let client = node_client(seed, &master.host, master.port)?;
        let pubsub = tokio::time::timeout(patience, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out())??;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(patience, sink.subscribe(NOTICES))
            .await
            .map_err(|_| timed_out())??;
        sinks.push(sink);
        streams.push(stream);
        monitors.push(
            tokio::time::timeout(patience, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| timed_out())??,
        );
    }
    let ids: HashSet<&str> = masters.iter().map(|m| m.id.as_str()).collect();
    let subscribed = shapes(&mut monitors, &masters, patience, Some(&ids)).await?;
    // Whatever was published before the subscriptions is unknown here.
    feed.lost();
    let mut recent = Recent::default();
    let mut ticks = tokio::time::interval((check / 4).max(Duration::from_millis(2)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !feed.is_open() {
            return Ok(());
        }
        let next = futures_util::future::select_all(streams.iter_mut().map(|s| s.next()));
        tokio::select! {
            (msg, _, _) = next => match msg {
                Some(msg) => recent.apply(feed, msg.get_payload_bytes()),
                None => return Err(closed()),
            },
            _ = ticks.tick() => {
                let asked = Instant::now();
                let pings = sinks.iter_mut().map(|sink| sink.ping::<redis::Value>());
                for answer in tokio::time::timeout(patience, futures_util::future::join_all(pings))
                    .await
                    .map_err(|_| timed_out())?
                {
                    answer?;
                }
                let drained = tokio::task::unconstrained(async {
                    drain(&mut streams, |notice| recent.apply(feed, notice))
                })
                .await?;
                if shapes(&mut monitors, &masters, patience, None).await? != subscribed {
                    return Err(failure(
                        "the Redis Cluster changed (a failover, a slot moved, or a node added \
                         or removed): following its masters anew",
                    ));
                }
                if drained {
                    feed.synced(asked);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes_whatever_their_flags() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,cache-b master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 myself,master - 0 0 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 master,fail - 1426238316232 0 1 disconnected
9a1b [::1]:30005@40005 master - 0 0 5 connected [77->-67ed]
0000 :0@0 master,noaddr - 0 0 0 disconnected
";
        let found = masters(nodes, None);
        let at = |id: &str, host: &str, port| {
            (
                id.to_owned(),
                Some(Master {
                    id: id.to_owned(),
                    host: host.to_owned(),
                    port,
                }),
            )
        };
        assert_eq!(
            found,
            [
                at("67ed", "127.0.0.1", 30002),
                at("292f", "127.0.0.1", 30003),
                at("e7d1", "127.0.0.1", 30001),
                at("9a1b", "::1", 30005),
                ("0000".to_owned(), None),
            ]
        );
        let ids: HashSet<&str> = ["67ed", "292f", "e7d1", "9a1b", "0000"].into();
        assert!(agrees(nodes, "292f", &ids));
        assert!(!agrees(nodes, "67ed", &ids), "another node at that address");
        let fewer: HashSet<&str> = ["67ed", "292f", "e7d1", "9a1b"].into();
        assert!(!agrees(nodes, "292f", &fewer), "a master not followed");
        assert!(
            !agrees(
                &nodes.replace("myself,master", "myself,slave"),
                "292f",
                &ids
            ),
            "no longer a master itself"
        );
        // A node that has met no other lists itself with no host.
        let alone = "5d1c :7000@17000 myself,master - 0 0 0 connected 0-16383\n";
        assert_eq!(
            masters(alone, Some("10.0.0.9")),
            [(
                "5d1c".to_owned(),
                Some(Master {
                    id: "5d1c".to_owned(),
                    host: "10.0.0.9".to_owned(),
                    port: 7000
                })
            )]
        );
        assert_eq!(masters(alone, None), [("5d1c".to_owned(), None)]);
    }

    #[test]
    fn a_shape_needs_an_ok_cluster() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n\
                    cluster_known_nodes:6\r\ncluster_current_epoch:9\r\ncluster_my_epoch:2\r\n";
        assert_eq!(shape(info).unwrap(), Shape { epoch: 9, known: 6 });
        assert!(shape(&info.replace("state:ok", "state:fail")).is_err());
        assert!(shape("cluster_state:ok\r\n").is_err());
    }
}
