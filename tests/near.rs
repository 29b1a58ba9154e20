//! Near tiers across two real processes, and under a stalled connection.
//!
//! The other process is `near-reader` (`tests/near/reader.rs`): it reads
//! one key through its near tier as fast as it can and reports, for each
//! version it saw, when the last read that returned it started. This
//! process writes a version, waits for the reader to see it, invalidates,
//! and checks the near tier's promise: no read that started `near_check`
//! after the invalidation returned got the old version, and none got it
//! back later. On Redis the change reaches the reader by push; the time it
//! took (invalidation returned, to the reader's first read without it) is
//! printed as `NEAR | propagation | ...` for BENCHMARKS.md.
//!
//! ```sh
//! cargo test --all-features --test near -- --nocapture
//! NEAR_ROUNDS=10000 cargo test --all-features --test near -- --nocapture redis
//! ```

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cacheruntime::Cache;

use crate::support::{MemcachedServer, Postgres, RedisServer, StallProxy};

const CHECK: Duration = Duration::from_millis(100);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The reader process and its lines; killed on drop.
struct Reader {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Reader {
    fn start(url: &str, key: &str) -> Reader {
        let mut child = Command::new(env!("CARGO_BIN_EXE_near-reader"))
            .args([url, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start near-reader");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let reader = Reader { child, lines };
        reader.expect("ready", Duration::from_secs(30));
        reader
    }

    /// The next line, which must start with `what`; `back` lines fail.
    fn expect(&self, what: &str, within: Duration) -> String {
        let line = self
            .lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("the reader said no `{what}` within {within:?}"));
        assert!(
            !line.starts_with("back"),
            "the reader got an invalidated version again: {line}"
        );
        assert!(
            line.starts_with(what),
            "expected `{what}`, the reader said {line}"
        );
        line
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rounds` of: write version n, wait for the reader to serve it,
/// invalidate, wait for the reader to stop serving it. Asserts the
/// promise; returns the propagation times (µs) of the rounds.
async fn rounds(store: &str, writer: &Cache, reader_url: &str, rounds: u64) -> Vec<u64> {
    let key = "hot:1:k";
    let reader = Reader::start(reader_url, key);
    let mut lags = Vec::with_capacity(rounds as usize);
    for n in 1..=rounds {
        writer.set(key, &n, Duration::from_secs(600)).await.unwrap();
        let seen = reader.expect("seen", Duration::from_secs(10));
        assert_eq!(seen, format!("seen {n}"), "{store}: round {n}");
        // Let the reader answer from its near tier for a moment.
        tokio::time::sleep(Duration::from_micros(200)).await;
        writer.invalidate_prefix("hot:").await.unwrap();
        let returned = now_us();
        let gone = reader.expect("gone", Duration::from_secs(10));
        let parts: Vec<u64> = gone
            .split(' ')
            .skip(1)
            .map(|p| p.parse().unwrap())
            .collect();
        let [version, last_start, seen_at] = parts[..] else {
            panic!("{store}: {gone}")
        };
        assert_eq!(version, n, "{store}: {gone}");
        // The promise: a read that started near_check after the
        // invalidation returned never got the old version (plus 5 ms: the
        // millisecond clocks, and the coarse system clock's tick that
        // polling stores measure near_check by).
        let bound = returned + CHECK.as_micros() as u64 + 5_000;
        assert!(
            last_start <= bound,
            "{store}: round {n}: the reader served version {n} from a read that started \
             {} us after the invalidation returned (near_check {CHECK:?})",
            last_start - returned
        );
        lags.push(seen_at.saturating_sub(returned));
    }
    drop(reader);
    lags
}

fn report(store: &str, mut lags: Vec<u64>) {
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "NEAR | propagation | {store} | invalidations={} p50={:.2}ms p99={:.2}ms max={:.2}ms \
         (near_check {CHECK:?})",
        lags.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn near_url(base: &str, extra: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}namespace=np&near=8MiB&near_check={}ms{extra}",
        CHECK.as_millis()
    )
}

fn env_rounds(default: u64) -> u64 {
    std::env::var("NEAR_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_another_process_stops_serving_an_invalidated_value_by_push() {
    let server = RedisServer::start();
    let url = server.url();
    let writer = Cache::from_url(&near_url(&url, "")).await.unwrap();
    // This process serves reads of the key from its own near tier too.
    let busy = writer.clone();
    let reads = tokio::spawn(async move {
        loop {
            let _ = busy.get::<u64>("hot:1:k").await;
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    });
    let lags = rounds("redis", &writer, &near_url(&url, ""), env_rounds(2_000)).await;
    reads.abort();
    report("redis", lags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stores_stop_serving_an_invalidated_value_within_near_check() {
    let pg = Postgres::start();
    let memcached = MemcachedServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("c.db").display());
    for (store, url) in [
        ("postgres", format!("{}?sslmode=disable", pg.url())),
        ("sqlite", sqlite),
        ("memcached", format!("memcached://{}", memcached.addr())),
    ] {
        let writer = Cache::from_url(&near_url(&url, "")).await.unwrap();
        let lags = rounds(store, &writer, &near_url(&url, ""), env_rounds(30)).await;
        report(store, lags);
    }
}

/// A near tier whose notice connection stalls (a stalling proxy between it
/// and Redis) stops serving within `near_check`: it cannot know what it
/// missed. It serves again once the connection is back and caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_notice_connection_stops_near_hits_within_near_check() {
    let server = RedisServer::start();
    let proxy = StallProxy::start(server.port);
    let direct = Cache::from_url(&format!("{}?namespace=np", server.url()))
        .await
        .unwrap();
    let stalled = Cache::from_url(&near_url(
        &format!("redis://{}", proxy.addr()),
        "&op_timeout=50ms",
    ))
    .await
    .unwrap();
    direct
        .set("k:1", &1u64, Duration::from_secs(600))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled.stats().near_hits == 0 {
        assert_eq!(stalled.get::<u64>("k:1").await.unwrap(), Some(1));
        assert!(Instant::now() < deadline, "the near tier never served");
    }
    proxy.stall();
    direct.invalidate_prefix("k:").await.unwrap();
    let returned = Instant::now();
    let mut served_old_after = None;
    while returned.elapsed() < CHECK * 3 {
        let started = returned.elapsed();
        if let Ok(Some(1)) = stalled.get::<u64>("k:1").await {
            served_old_after = Some(started);
        }
    }
    // It may have gone on serving for up to near_check (its last sync was
    // just before the stall), never longer.
    let last = served_old_after.unwrap_or_default();
    assert!(
        last <= CHECK + Duration::from_millis(1),
        "a stalled near tier served the invalidated value {last:?} after the invalidation \
         returned (near_check {CHECK:?})"
    );
    // Back: the notices held by the proxy arrive, and nothing old is served.
    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = stalled.get::<u64>("k:1").await;
        assert!(
            !matches!(got, Ok(Some(1))),
            "served the invalidated value after the stall"
        );
        if matches!(got, Ok(None)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never answered again: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct
        .set("k:1", &2u64, Duration::from_secs(600))
        .await
        .unwrap();
    let hits = stalled.stats().near_hits;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled.stats().near_hits == hits {
        let got = stalled.get::<u64>("k:1").await.unwrap();
        assert!(got.is_none() || got == Some(2), "{got:?}");
        assert!(
            Instant::now() < deadline,
            "the near tier never served again"
        );
    }
}

/// With Redis's notices, an entry is served as long as nothing changes it
/// (up to `near_ttl`), not only for `near_check`: what polling stores
/// cannot do. A change made elsewhere still ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_outlive_near_check_while_notices_flow() {
    let server = RedisServer::start();
    let near = Cache::from_url(&near_url(&server.url(), "")).await.unwrap();
    let other = Cache::from_url(&format!("{}?namespace=np", server.url()))
        .await
        .unwrap();
    other
        .set("k:1", &1u64, Duration::from_secs(600))
        .await
        .unwrap();
    // The first reads start following the notices (which drops what was
    // kept before): read until the near tier answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while near.stats().near_hits == 0 {
        assert_eq!(near.get::<u64>("k:1").await.unwrap(), Some(1));
        assert!(Instant::now() < deadline, "the near tier never served");
    }
    tokio::time::sleep(CHECK * 3).await;
    let before = near.stats().near_hits;
    assert_eq!(near.get::<u64>("k:1").await.unwrap(), Some(1));
    assert_eq!(
        near.stats().near_hits,
        before + 1,
        "kept past near_check: the notices vouch for it"
    );
    other.invalidate_prefix("k:").await.unwrap();
    let deadline = Instant::now() + CHECK;
    while near.get::<u64>("k:1").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "served after near_check");
        tokio::task::yield_now().await;
    }
}

/// Resident memory of this process, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A stream of distinct keys through a near tier of 16 MiB (each read
/// twice: kept, then answered near) leaves the process's resident memory
/// within 1.2 times the bound plus what the same reads cost without a near
/// tier and a fixed 8 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_tier_holds_its_bound_under_a_stream_of_distinct_keys() {
    const BOUND: u64 = 16 << 20;
    const KEYS: usize = 12_000;
    let server = RedisServer::start();
    let writer = Cache::from_url(&format!("{}?namespace=rs", server.url()))
        .await
        .unwrap();
    let value = vec![7u8; 2048];
    let keys: Vec<String> = (0..KEYS).map(|i| format!("s:{i}:v")).collect();
    for chunk in keys.chunks(1000) {
        let pairs: Vec<(&str, Vec<u8>)> =
            chunk.iter().map(|k| (k.as_str(), value.clone())).collect();
        writer
            .set_many(&pairs, Duration::from_secs(600))
            .await
            .unwrap();
    }
    async fn read_all(cache: &Cache, keys: &[String], times: usize) {
        for key in keys {
            for _ in 0..times {
                let got = cache.get::<Vec<u8>>(key).await.unwrap();
                assert_eq!(got.map(|v| v.len()), Some(2048), "{key}");
            }
        }
    }
    // The same reads without a near tier: the client's buffers and the
    // allocator's pools.
    read_all(&writer, &keys, 1).await;
    let before = rss_bytes();
    read_all(&writer, &keys, 1).await;
    let plain = rss_bytes().saturating_sub(before);
    let near = Cache::from_url(&format!(
        "{}?namespace=rs&near={BOUND}&near_check=10s",
        server.url()
    ))
    .await
    .unwrap();
    let start = rss_bytes();
    read_all(&near, &keys, 2).await;
    let grew = rss_bytes().saturating_sub(start);
    let limit = BOUND * 12 / 10 + plain + (8 << 20);
    let hits = near.stats().near_hits;
    println!(
        "NEAR | rss | bound={}MiB keys={KEYS} value=2KiB grew={:.1}MiB plain_reads={:.1}MiB \
         near_hits={hits}",
        BOUND >> 20,
        grew as f64 / (1 << 20) as f64,
        plain as f64 / (1 << 20) as f64,
    );
    assert!(
        hits > KEYS as u64 / 2,
        "the reads went through the near tier ({hits} near hits)"
    );
    assert!(
        grew <= limit,
        "{KEYS} distinct 2 KiB entries through a {} MiB near tier grew the process by {} MiB \
         (limit {} MiB)",
        BOUND >> 20,
        grew >> 20,
        limit >> 20
    );
}
