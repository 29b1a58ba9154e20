//! The dog-pile, measured: a popular key expires while 4 app servers (4
//! `Cache` instances with their own connections to one real Redis) get 400
//! concurrent requests for it; the origin takes 100 ms. Reports origin calls
//! and caller latency (p50/p99) for:
//!
//! - no protection: get, and on a miss compute and set (raw redis-rs);
//! - single-flight only: our cache over a store without locks (in-process
//!   coalescing, one computation per server);
//! - stale-while-revalidate across the 4 servers (`stale` + the store lock);
//! - and a warm hit for reference.
//!
//! `cargo bench --features redis,postgres,sqlite --bench dogpile` (add `--
//! --quick` for fewer rounds). Not a criterion bench: it measures a burst,
//! not a steady state.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cacheruntime::backend::{Backend, BoxFuture, Lookup, Ticket};
use cacheruntime::backends::redis::{RedisBackend, RedisConfig};
use cacheruntime::{Cache, Clock, Policy};
use redis::AsyncCommands;

const SERVERS: usize = 4;
const CALLERS_PER_SERVER: usize = 100;
const ORIGIN: Duration = Duration::from_millis(100);

/// A store without locks: what "single-flight only" runs on.
#[derive(Debug)]
struct NoLocks(RedisBackend);

impl Backend for NoLocks {
    fn name(&self) -> &'static str {
        "redis-without-locks"
    }
    fn supports_locks(&self) -> bool {
        false
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Lookup, cacheruntime::Error>> {
        self.0.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        ticket: Option<&'a Ticket>,
    ) -> BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.0.set(key, value, ttl, ticket)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.0.delete(key)
    }
    fn invalidate_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(), cacheruntime::Error>> {
        self.0.invalidate_prefix(prefix)
    }
}

async fn origin(calls: &AtomicUsize) -> Vec<i64> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(ORIGIN).await;
    (0..10).collect()
}

#[derive(Default)]
struct Run {
    origin_calls: usize,
    latencies: Vec<Duration>,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.origin_calls += other.origin_calls;
        self.latencies.extend(other.latencies);
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// Fires every caller at once and collects latencies.
async fn burst<F, Fut>(call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..SERVERS * CALLERS_PER_SERVER)
        .map(|i| {
            let fut = call(i % SERVERS);
            tokio::spawn(async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2 } else { 10 };
    let server = support::RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = Clock::manual();
    let locked: Vec<Cache> = (0..SERVERS)
        .map(|_| {
            Cache::builder()
                .clock(clock.clone())
                .backend(RedisBackend::new(RedisConfig::new(&url)).unwrap())
                .op_timeout(Duration::from_secs(2))
                .build()
                .unwrap()
        })
        .collect();
    let unlocked: Vec<Cache> = (0..SERVERS)
        .map(|_| {
            Cache::builder()
                .clock(clock.clone())
                .backend(NoLocks(RedisBackend::new(RedisConfig::new(&url)).unwrap()))
                .op_timeout(Duration::from_secs(2))
                .build()
                .unwrap()
        })
        .collect();
    let raw: Vec<redis::aio::ConnectionManager> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..SERVERS {
            let client = redis::Client::open(url.as_str()).unwrap();
            v.push(client.get_connection_manager().await.unwrap());
        }
        v
    });
    let plain = Policy::new().ttl(Duration::from_secs(60));
    let stale = plain.stale(Duration::from_secs(3600));

    let mut none = Run::default();
    let mut single = Run::default();
    let mut swr = Run::default();
    let mut hit = Run::default();
    rt.block_on(async {
        for round in 0..rounds {
            // No protection: every caller that misses computes and sets.
            let calls = Arc::new(AtomicUsize::new(0));
            let key = format!("raw:report:{round}");
            let latencies = burst(|s| {
                let (mut con, calls, key) = (raw[s].clone(), calls.clone(), key.clone());
                async move {
                    let found: Option<Vec<u8>> = con.get(&key).await.unwrap();
                    if found.is_none() {
                        let v = origin(&calls).await;
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        let _: () = con.set_ex(&key, bytes, 60).await.unwrap();
                    }
                }
            })
            .await;
            none.add(Run {
                origin_calls: calls.load(Ordering::SeqCst),
                latencies,
            });

            // Single-flight only: coalesced per server, no store lock.
            let calls = Arc::new(AtomicUsize::new(0));
            let key = format!("sf:report:{round}");
            let latencies = burst(|s| {
                let (cache, calls, key) = (unlocked[s].clone(), calls.clone(), key.clone());
                async move {
                    let _: Vec<i64> = cache
                        .get_or_compute(&key, &plain, || async move { origin(&calls).await })
                        .await;
                }
            })
            .await;
            single.add(Run {
                origin_calls: calls.load(Ordering::SeqCst),
                latencies,
            });

            // Stale-while-revalidate: warm, let it go stale, then the burst.
            let calls = Arc::new(AtomicUsize::new(0));
            let key = format!("swr:report:{round}");
            {
                let calls = calls.clone();
                let _: Vec<i64> = locked[0]
                    .get_or_refresh(&key, &stale, || async move { origin(&calls).await })
                    .await;
            }
            // Reference: the same burst on the fresh key.
            let latencies = burst(|s| {
                let (cache, calls, key) = (locked[s].clone(), calls.clone(), key.clone());
                async move {
                    let _: Vec<i64> = cache
                        .get_or_refresh(&key, &stale, || async move { origin(&calls).await })
                        .await;
                }
            })
            .await;
            hit.add(Run {
                origin_calls: 0,
                latencies,
            });
            let before = calls.load(Ordering::SeqCst);
            clock.advance(Duration::from_secs(61));
            let latencies = burst(|s| {
                let (cache, calls, key) = (locked[s].clone(), calls.clone(), key.clone());
                async move {
                    let _: Vec<i64> = cache
                        .get_or_refresh(&key, &stale, || async move { origin(&calls).await })
                        .await;
                }
            })
            .await;
            // Let the refresh finish before counting.
            tokio::time::sleep(ORIGIN * 3).await;
            swr.add(Run {
                origin_calls: calls.load(Ordering::SeqCst) - before,
                latencies,
            });
        }
    });

    let callers = SERVERS * CALLERS_PER_SERVER;
    println!(
        "\n{rounds} rounds of {callers} concurrent callers ({SERVERS} caches x {CALLERS_PER_SERVER}) \
         on one expired key, origin {} ms\n",
        ORIGIN.as_millis()
    );
    println!(
        "{:<36} {:>14} {:>10} {:>10}",
        "scenario", "origin calls", "p50", "p99"
    );
    let hit_p99 = hit.pct(0.99);
    for (name, run) in [
        ("no protection (get, compute, set)", &mut none),
        ("single-flight only (no store lock)", &mut single),
        ("stale-while-revalidate, 4 caches", &mut swr),
        ("warm hit (reference)", &mut hit),
    ] {
        println!(
            "{name:<36} {:>14.1} {:>10.2?} {:>10.2?}",
            run.origin_calls as f64 / rounds as f64,
            run.pct(0.5),
            run.pct(0.99)
        );
    }
    let ratio = swr.pct(0.99).as_secs_f64() / hit_p99.as_secs_f64();
    println!("\nstale-serving p99 / hit p99 = {ratio:.2}x (target <= 2x)");
    drop(server);
}
