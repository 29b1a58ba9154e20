//! What operators ask of Redis (`Cache::keys`, `Cache::store_info`,
//! `cachectl`): `SCAN` over the entries' names (on every master of a
//! Cluster, one after the other), and `INFO`.

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use redis::cluster_async::ClusterConnection;

use super::cluster_push::{masters, Master};
use super::connection::AnyConn;
use super::server_config::{config_warnings, info_field};
use super::{RedisBackend, NAME};
use crate::backend::{ScanPage, StoreInfo};
use crate::backends::generations::Kind;
use crate::Error;

/// `SCAN`'s `COUNT`: slots looked at per call.
const COUNT: u32 = 1_000;

/// The `SCAN` pattern of the entries whose keys start with `prefix`: their
/// names are `v:{<first segment>}<rest>` (`keys.rs`), so a prefix whose
/// first segment is whole narrows the walk to that segment's names; any
/// other walks every entry's name (and the keys are filtered after).
fn pattern(prefix: &str) -> String {
    let entry = Kind::Entry.letter();
    match prefix.split_once(':') {
        Some((first, rest)) if !first.is_empty() && !first.contains(['{', '}']) => {
            format!("{entry}:{{{}}}:{}*", glob_escape(first), glob_escape(rest))
        }
        _ => format!("{entry}:*"),
    }
}

/// `text` matched literally by a Redis glob.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The key of the entry stored under `name` (`keys.rs`, read backwards):
/// `v:{<first segment>}<rest>`, or `v:{~<hash>}!<key>` for a first segment
/// that cannot be a tag. A tag holds no brace, and a rest is empty or
/// starts with `:`, so the first `}` ends the tag and a `!` after it marks
/// the second form (a first segment may itself start with `~`).
fn key_of(name: &str) -> Option<String> {
    let rest = name.strip_prefix(Kind::Entry.letter())?.strip_prefix(':')?;
    let (tag, after) = rest.strip_prefix('{')?.split_once('}')?;
    Some(match after.strip_prefix('!') {
        Some(key) => key.to_owned(),
        None => format!("{tag}{after}"),
    })
}

/// `SCAN`'s reply: the next cursor and the names (bytes: a name that is
/// not UTF-8 is no entry of ours, and is skipped rather than failing the
/// page).
fn reply(value: Value) -> Result<(u64, Vec<Vec<u8>>), redis::RedisError> {
    redis::from_redis_value(value).map_err(redis::RedisError::from)
}

/// The masters a Cluster's keys are on: those `CLUSTER NODES` lists with
/// slots (a failed master whose slots went to its replica has none), with
/// the slots they own, in the order of their ids. A slot being migrated
/// (`[77->-id]`, shown only by the node it leaves or joins, so not alike
/// from every node) is left out: the walk notices the move once it is done.
fn slot_owners(nodes: &str) -> Vec<(&str, String)> {
    let mut owners: Vec<(&str, String)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
            let master = fields.get(2)?.split(',').any(|flag| flag == "master");
            let slots: Vec<&str> = fields
                .get(8..)
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|f| !f.starts_with('['))
                .collect();
            let slots = slots.join(" ");
            (master && !slots.is_empty()).then_some((fields[0], slots))
        })
        .collect();
    owners.sort();
    owners
}

impl RedisBackend {
    /// One page. The cursor is `<master id>/<shape>:<cursor>` (`-` for the
    /// one server): a Cluster's slot-owning masters are walked in the order
    /// of their ids, and `<shape>` is a hash of which master owns which
    /// slots, so a change between two pages (a failover, a resharding, a
    /// master joining or leaving) ends the walk with an error rather than
    /// skipping or repeating keys.
    pub(super) async fn scan_page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<ScanPage, Error> {
        let mut conn = self.connection().await?;
        let pattern = pattern(prefix);
        let mut scan = redis::cmd("SCAN");
        let (node, at) = match cursor {
            None => (None, 0),
            Some(c) => {
                let (node, at) = parse_cursor(c)?;
                (Some(node), at)
            }
        };
        scan.arg(at)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(COUNT);
        let (next, names) = match &mut conn {
            AnyConn::Cluster(cluster) => {
                let (masters, shape) = self.masters(cluster).await?;
                let moved = || {
                    Error::backend(
                        NAME,
                        "the Redis Cluster's slots moved during the listing (a failover, a \
                         resharding, a master joining or leaving): list again",
                    )
                };
                let here = match node {
                    None => 0,
                    Some(node) => {
                        let (id, seen) = node.split_once('/').ok_or_else(|| bad_cursor(node))?;
                        if seen != format!("{shape:016x}") {
                            return Err(moved());
                        }
                        masters.iter().position(|m| m.id == id).ok_or_else(moved)?
                    }
                };
                let master = masters.get(here).ok_or_else(|| {
                    Error::backend(NAME, "no Redis Cluster master owns slots: nothing to list")
                })?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: master.host.clone(),
                    port: master.port,
                });
                let value = cluster
                    .route_command(scan, routing)
                    .await
                    .map_err(|e| self.error(e))?;
                let (next, names) = reply(value).map_err(|e| self.error(e))?;
                let next = match (next, masters.get(here + 1)) {
                    (0, None) => None,
                    (0, Some(after)) => Some(format!("{}/{shape:016x}:0", after.id)),
                    (next, _) => Some(format!("{}/{shape:016x}:{next}", master.id)),
                };
                (next, names)
            }
            single => {
                let (next, names): (u64, Vec<Vec<u8>>) =
                    scan.query_async(single).await.map_err(|e| self.error(e))?;
                ((next != 0).then(|| format!("-:{next}")), names)
            }
        };
        let examined = names.len() as u64;
        let keys = names
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok())
            .filter_map(key_of)
            .filter(|key| key.starts_with(prefix))
            .collect();
        Ok(ScanPage::new(keys, next, examined))
    }

    /// The Cluster's masters, by id: an error for one with no address yet
    /// (its keys could not be listed). A one-master Cluster lists itself
    /// without a host: the first configured node's stands in.
    /// The slot-owning masters (by id) and the hash of who owns which slots.
    async fn masters(&self, cluster: &mut ClusterConnection) -> Result<(Vec<Master>, u64), Error> {
        let listed: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(cluster)
            .await
            .map_err(|e| self.error(e))?;
        let owners = slot_owners(&listed);
        let shape: String = owners
            .iter()
            .map(|(id, slots)| format!("{id} {slots}\n"))
            .collect();
        // FNV-1a: stable across processes, so a cursor outlives its process.
        let shape = crate::envelope::fingerprint(&shape, 0);
        let mut masters = masters(&listed, self.seed_host.as_deref())
            .into_iter()
            .filter(|(id, _)| owners.iter().any(|(owner, _)| owner == id))
            .map(|(id, master)| {
                master.ok_or_else(|| {
                    Error::backend(
                        NAME,
                        format!("the Redis Cluster master {id} has no address yet: list again"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        masters.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((masters, shape))
    }

    /// Version, memory, eviction and the configuration warnings, from the
    /// server (on a Cluster, from the node the client picks).
    pub(super) async fn describe_server(&self) -> Result<StoreInfo, Error> {
        let mut conn = self.connection().await?;
        let info = self.info(&mut conn, "server").await?;
        let memory = self.info(&mut conn, "memory").await?;
        let mut out = StoreInfo::new(if self.cluster {
            "redis cluster"
        } else {
            "redis"
        });
        out.version = info_field(&info, "redis_version");
        out.tls = Some(self.tls);
        if self.tls_insecure {
            out.warnings.push(
                "TLS without certificate verification (tls_insecure): anyone on the path can \
                 pose as the server"
                    .into(),
            );
        }
        out.eviction = info_field(&memory, "maxmemory_policy");
        let used = info_field(&memory, "used_memory_human").unwrap_or_default();
        out.memory = Some(match info_field(&memory, "maxmemory_human") {
            Some(max) if max != "0B" => format!("{used} used of {max}"),
            _ => format!("{used} used, no maxmemory"),
        });
        out.warnings = config_warnings(&mut conn).await;
        if let Some(mode) = info_field(&info, "redis_mode") {
            out.details.push(("mode".into(), mode));
        }
        out.details.push(("url".into(), self.label.clone()));
        Ok(out)
    }
}

impl RedisBackend {
    /// One section of `INFO`: a Cluster client asks every node and answers
    /// with a map of them, of which the first is taken.
    async fn info(&self, conn: &mut AnyConn, section: &str) -> Result<String, Error> {
        let value: Value = redis::cmd("INFO")
            .arg(section)
            .query_async(conn)
            .await
            .map_err(|e| self.error(e))?;
        let value = match value {
            Value::Map(nodes) => nodes.into_iter().next().map_or(Value::Nil, |(_, v)| v),
            other => other,
        };
        redis::from_redis_value(value).map_err(|e| self.error(e.into()))
    }
}

/// `<master id>:<cursor>`, as [`scan_page`](RedisBackend::scan_page)
/// gives it.
fn parse_cursor(cursor: &str) -> Result<(&str, u64), Error> {
    cursor
        .rsplit_once(':')
        .and_then(|(node, at)| Some((node, at.parse().ok()?)))
        .ok_or_else(|| bad_cursor(cursor))
}

fn bad_cursor(cursor: &str) -> Error {
    Error::Config(format!("{cursor:?} is not a cursor this store gave"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::redis::keys::physical;

    #[test]
    fn a_cluster_is_walked_on_the_masters_that_own_slots() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 myself,master - 0 0 3 connected 10923-16383 [77->-67ed]
e7d1 127.0.0.1:30001@40001 master,fail - 1426238316232 0 1 disconnected
07c4 127.0.0.1:30005@40005 master - 0 0 5 connected 0-5460
";
        assert_eq!(
            slot_owners(nodes),
            [
                ("07c4", "0-5460".to_owned()),
                ("292f", "10923-16383".to_owned()),
                ("67ed", "5461-10922".to_owned()),
            ],
            "the failed master without slots is not walked"
        );
    }

    #[test]
    fn entry_names_read_back_as_their_keys_and_match_their_prefix_patterns() {
        for key in [
            "author:42:top",
            "a*b:[x]:1",
            ":lead",
            "{tag}:x",
            "solo",
            "~abc:x",
            "~a:b}!c",
            "a}b:c",
        ] {
            let name = physical(Kind::Entry, key);
            assert_eq!(key_of(&name).as_deref(), Some(key), "{name}");
        }
        assert_eq!(pattern("author:42:"), "v:{author}:42:*");
        assert_eq!(pattern("a*b:"), "v:{a\\*b}:*");
        assert_eq!(pattern("auth"), "v:*");
        assert_eq!(
            key_of("g:{author}:author:"),
            None,
            "a counter, not an entry"
        );
    }
}
