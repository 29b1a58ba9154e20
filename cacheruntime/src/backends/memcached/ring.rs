//! Which servers hold a name: rendezvous (highest random weight) hashing
//! with a hash fixed here, over each server's resolved address.
//!
//! Every process must place a counter on the same servers, or an
//! invalidation bumps a counter that readers elsewhere never look at. So
//! placement depends on nothing but the name and the set of servers: not on
//! the Rust release (`DefaultHasher` may change between releases), not on
//! how a server is written (`localhost:11211` and `127.0.0.1:11211` are one
//! server), not on the order the servers are listed.
//!
//! The hash: FNV-1a (64-bit, the offset basis and prime of its
//! specification) of the name's bytes and of each server's identity,
//! finished with SplitMix64's mixer; a name scores `mix(mix(fnv(name)) ^
//! mix(fnv(identity)))` on each server. Changing any of it moves keys and
//! counters: `placement_is_pinned` pins it.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use super::config::Resolver;

/// Memcached's port, for a server written without one.
const DEFAULT_PORT: u16 = 11211;

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finalizer: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The servers of a pool as placement sees them.
pub(super) struct Ring {
    /// One per server, in the configured order: `mix(fnv(identity))`.
    weights: Vec<u64>,
}

impl Ring {
    pub(super) fn new<S: AsRef<str>>(identities: &[S]) -> Ring {
        Ring {
            weights: identities
                .iter()
                .map(|id| mix(fnv1a(id.as_ref().as_bytes())))
                .collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    /// The `n` servers `name` scores highest on, best first (every server,
    /// in a pool of `n` or fewer). Ties, which need equal 64-bit scores, go
    /// to the higher weight, so the order servers are listed in never
    /// matters. The first `k` of them do not depend on `n`.
    pub(super) fn top(&self, name: &str, n: usize) -> Vec<usize> {
        let hash = mix(fnv1a(name.as_bytes()));
        let mut best: Vec<(u64, u64, usize)> = Vec::with_capacity(n + 1);
        for (i, &weight) in self.weights.iter().enumerate() {
            let candidate = (mix(hash ^ weight), weight, i);
            let at = best
                .iter()
                .position(|b| candidate > *b)
                .unwrap_or(best.len());
            if at < n {
                best.insert(at, candidate);
                best.truncate(n);
            }
        }
        best.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The server `name` scores highest on.
    pub(super) fn first(&self, name: &str) -> usize {
        self.top(name, 1).first().copied().unwrap_or(0)
    }
}

/// `host:port`, with Memcached's port when none is written.
pub(super) fn with_port(server: &str) -> String {
    let server = server.trim();
    let has_port = match server.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        // More than one `:` is an IPv6 address without brackets: left as
        // written, and resolving it says what is wrong.
        None => server.contains(':'),
    };
    if has_port {
        server.to_owned()
    } else {
        format!("{server}:{DEFAULT_PORT}")
    }
}

/// What a server is placed by: the address `server` (`host:port`)
/// resolves to, as `ip:port`: its lowest IPv4 address, or its lowest IPv6
/// one when it has no IPv4 address. So `localhost:11211` and
/// `127.0.0.1:11211` are one server, in every process that resolves
/// `localhost` alike. Names are looked up on a blocking thread, with
/// `resolver` when given (tests), else the system's resolver.
pub(super) async fn identity(server: &str, resolver: Option<&Resolver>) -> io::Result<String> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    let owned = server.to_owned();
    let resolver = resolver.cloned();
    let addrs: Vec<SocketAddr> = tokio::task::spawn_blocking(move || match resolver {
        Some(resolve) => resolve(&owned),
        None => owned.to_socket_addrs().map(Iterator::collect),
    })
    .await
    .map_err(io::Error::other)??;
    chosen(&addrs)
        .map(|addr| addr.to_string())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "it resolved to no address"))
}

fn chosen(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).min();
    v4.or_else(|| addrs.iter().min()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:11211", i + 1)).collect()
    }

    #[test]
    fn placement_is_pinned() {
        // Every process and every build must agree: these values may only
        // change with a documented change of the key layout.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let ring = Ring::new(&pool(5));
        let placed: Vec<String> = (0..12)
            .map(|i| {
                let top = ring.top(&format!("shop:author:{i}:top"), 2);
                format!("{}{}", top[0], top[1])
            })
            .collect();
        assert_eq!(placed.join(" "), PINNED);
    }

    const PINNED: &str = "31 03 42 40 24 43 41 04 03 40 13 04";

    #[test]
    fn the_order_servers_are_listed_in_does_not_matter() {
        let servers = pool(5);
        let mut reversed = servers.clone();
        reversed.reverse();
        let (a, b) = (Ring::new(&servers), Ring::new(&reversed));
        for i in 0..1000 {
            let name = format!("k{i}:x");
            let (p, q) = (a.top(&name, 3), b.top(&name, 3));
            for (i, j) in p.into_iter().zip(q) {
                assert_eq!(servers[i], reversed[j]);
            }
        }
    }

    #[test]
    fn names_of_one_template_spread_evenly() {
        let ring = Ring::new(&pool(3));
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[ring.first(&format!("shop:author:{i}:top"))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn adding_a_server_moves_only_what_it_takes() {
        let four = Ring::new(&pool(4));
        let five = Ring::new(&pool(5));
        let mut moved = 0;
        for i in 0..10_000 {
            let name = format!("t{i}:x");
            let (before, after) = (four.first(&name), five.first(&name));
            if before != after {
                // Only to the new server, never between old ones.
                assert_eq!(after, 4);
                moved += 1;
            }
        }
        assert!((1500..2500).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn a_pool_changed_by_one_server_keeps_all_but_one_of_a_names_servers() {
        // So a counter's copies under the old pool and the new share all
        // but one server: removing a server promotes the next choice, an
        // added one takes at most one place, and the rest keep their order.
        let servers = pool(5);
        let ring = Ring::new(&servers);
        for i in 0..500 {
            let name = format!("n{i}:");
            let top = ring.top(&name, 3);
            assert_eq!(top[..2], ring.top(&name, 2)[..]);
            for gone in 0..servers.len() {
                let rest: Vec<String> = servers
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != gone)
                    .map(|(_, s)| s.clone())
                    .collect();
                let after: Vec<&String> = Ring::new(&rest)
                    .top(&name, 3)
                    .into_iter()
                    .map(|j| &rest[j])
                    .collect();
                let kept: Vec<&String> = top
                    .iter()
                    .filter(|&&j| j != gone)
                    .map(|&j| &servers[j])
                    .collect();
                // The servers kept come first, in the same order.
                assert_eq!(after[..kept.len()], kept[..], "{name} without {gone}");
            }
        }
    }

    #[test]
    fn a_server_added_removed_or_replaced_leaves_two_of_a_names_three() {
        // So a counter's copies before and after one change share two
        // servers: every read quorum (two of three) after the change meets
        // a copy that a bump made before it, with every server up, moved.
        let all = pool(7);
        let ring_of = |servers: &[String]| Ring::new(servers);
        let top = |servers: &[String], name: &str| -> Vec<String> {
            ring_of(servers)
                .top(name, 3)
                .into_iter()
                .map(|i| servers[i].clone())
                .collect()
        };
        let before: Vec<String> = all[..5].to_vec();
        let added: Vec<String> = all[..6].to_vec();
        let replaced: Vec<String> = all[1..6].to_vec();
        let removed: Vec<String> = all[1..5].to_vec();
        for i in 0..2000 {
            let name = format!("n{i}:");
            let old = top(&before, &name);
            for after in [&added, &replaced, &removed] {
                let new = top(after, &name);
                let shared = old.iter().filter(|s| new.contains(s)).count();
                assert!(shared >= 2, "{name}: {old:?} then {new:?}");
            }
        }
    }

    #[test]
    fn servers_get_a_port_and_resolve_to_one_identity() {
        assert_eq!(with_port("h"), "h:11211");
        assert_eq!(with_port(" h:1 "), "h:1");
        assert_eq!(with_port("[::1]"), "[::1]:11211");
        assert_eq!(with_port("[::1]:7"), "[::1]:7");
        let v4: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let v4b: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(chosen(&[v6, v4, v4b]), Some(v4b));
        assert_eq!(chosen(&[v6]), Some(v6));
        assert_eq!(chosen(&[]), None);
    }

    #[tokio::test]
    async fn localhost_and_its_address_are_one_server() {
        assert_eq!(
            identity("127.0.0.1:11211", None).await.unwrap(),
            "127.0.0.1:11211"
        );
        assert_eq!(
            identity("localhost:11211", None).await.unwrap(),
            "127.0.0.1:11211"
        );
        assert!(identity("no-such-host.invalid:1", None).await.is_err());
    }
}
