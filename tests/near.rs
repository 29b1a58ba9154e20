//! Near tiers across two real processes, and under a stalled connection.
//!
//! The other process is `near-reader` (`tests/near/reader.rs`): it reads
//! one key through its near tier as fast as it can and reports, for each
//! version it saw, when the last read that returned it started. This
//! process writes a version, waits for the reader to see it, invalidates,
//! and checks the near tier's promise: no read that started `near_check`
//! after the invalidation returned got the old version, and none got it
//! back later. On Redis and PostgreSQL the change reaches the reader by
//! push; the time it took (invalidation returned, to the reader's first read without it) is
//! printed as `NEAR | propagation | ...` for BENCHMARKS.md.
//!
//! ```sh
//! cargo test --all-features --test near -- --nocapture
//! NEAR_ROUNDS=10000 cargo test --all-features --test near -- --nocapture by_push
//! ```

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cacheruntime::Cache;

use crate::support::{MemcachedServer, Postgres, RedisCluster, RedisServer, StallProxy};

const CHECK: Duration = Duration::from_millis(100);

/// Held for reading by every test, and for writing by the one that
/// measures this process's memory, which the others' servers and caches
/// would add to.
static ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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

/// `cache.set`, retried for a while: a store's first call connects (and
/// makes its tables), which may outlast the op timeout on a loaded machine.
async fn set_soon(cache: &Cache, key: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = cache.set(key, &value, Duration::from_secs(600)).await {
        assert!(Instant::now() < deadline, "set {key}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        set_soon(writer, key, n).await;
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

/// Rounds against a store that pushes its changes (Redis, PostgreSQL),
/// while this process serves reads of the key from its own near tier too.
async fn push_rounds(store: &str, url: &str) {
    let writer = Cache::from_url(&near_url(url, "")).await.unwrap();
    let busy = writer.clone();
    let reads = tokio::spawn(async move {
        loop {
            let _ = busy.get::<u64>("hot:1:k").await;
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    });
    let n = env_rounds(2_000);
    let lags = rounds(store, &writer, &near_url(url, ""), n).await;
    reads.abort();
    report(store, lags);
    // This process's near tier heard its own invalidations too, each with
    // the time it was sent: `Stats::near_lag` counts them.
    let lag = writer.stats().near_lag;
    assert!(
        lag.count() >= n,
        "{store}: {} notices measured for {n} invalidations",
        lag.count()
    );
    println!(
        "NEAR | stats near_lag | {store} | notices={} p50<={:?} p99<={:?} mean={:?}",
        lag.count(),
        lag.quantile(0.5),
        lag.quantile(0.99),
        lag.mean()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_another_process_stops_serving_an_invalidated_value_by_push() {
    let _shared = ALONE.read().await;
    let server = RedisServer::start();
    push_rounds("redis", &server.url()).await;
}

/// On a Cluster the follower subscribes on every master (the bus's
/// copies of a notice are neither ordered nor sure): the same promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_another_process_stops_serving_an_invalidated_value_by_push() {
    let _shared = ALONE.read().await;
    let cluster = RedisCluster::start();
    push_rounds("redis_cluster", &cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_another_process_stops_serving_an_invalidated_value_by_push() {
    let _shared = ALONE.read().await;
    let pg = Postgres::start();
    push_rounds("postgres", &format!("{}?sslmode=disable", pg.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stores_stop_serving_an_invalidated_value_within_near_check() {
    let _shared = ALONE.read().await;
    let memcached = MemcachedServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("c.db").display());
    for (store, url) in [
        ("sqlite", sqlite),
        ("memcached", format!("memcached://{}", memcached.addr())),
    ] {
        let writer = Cache::from_url(&near_url(&url, "")).await.unwrap();
        let lags = rounds(store, &writer, &near_url(&url, ""), env_rounds(30)).await;
        report(store, lags);
    }
}

/// A near tier whose notice connection stalls (a stalling proxy between it
/// and the store) stops serving within `near_check`: it cannot know what
/// it missed. It serves again once the connection is back and caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_notice_connection_stops_near_hits_within_near_check() {
    let _shared = ALONE.read().await;
    let redis = RedisServer::start();
    let redis_proxy = StallProxy::start(redis.port);
    stalled_notices(
        "redis",
        &redis_proxy,
        &redis.url(),
        &format!("redis://{}", redis_proxy.addr()),
    )
    .await;
    let pg = Postgres::start();
    let pg_proxy = StallProxy::start(pg.port);
    stalled_notices(
        "postgres",
        &pg_proxy,
        &format!("{}?sslmode=disable", pg.url()),
        &format!(
            "postgres://postgres:{}@{}/postgres?sslmode=disable",
            pg.password,
            pg_proxy.addr()
        ),
    )
    .await;
}

/// The stall scenario on one store: `direct` reaches it straight,
/// `through` by `proxy`.
async fn stalled_notices(store: &str, proxy: &StallProxy, direct: &str, through: &str) {
    let sep = |u: &str| if u.contains('?') { '&' } else { '?' };
    let direct = Cache::from_url(&format!("{direct}{}namespace=np", sep(direct)))
        .await
        .unwrap();
    let stalled = Cache::from_url(&near_url(through, "&op_timeout=50ms"))
        .await
        .unwrap();
    set_soon(&direct, "k:1", 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled.stats().near_hits == 0 {
        // Errors while the short op timeout cuts the first connections.
        match stalled.get::<u64>("k:1").await {
            Ok(got) => assert_eq!(got, Some(1), "{store}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        assert!(
            Instant::now() < deadline,
            "{store}: the near tier never served"
        );
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
        "{store}: a stalled near tier served the invalidated value {last:?} after the \
         invalidation returned (near_check {CHECK:?})"
    );
    // Back: the notices held by the proxy arrive, and nothing old is served.
    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = stalled.get::<u64>("k:1").await;
        assert!(
            !matches!(got, Ok(Some(1))),
            "{store}: served the invalidated value after the stall"
        );
        if matches!(got, Ok(None)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{store}: the store never answered again: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct
        .set("k:1", &2u64, Duration::from_secs(600))
        .await
        .unwrap();
    let hits = stalled.stats().near_hits;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stalled.stats().near_hits == hits {
        let got = stalled.get::<u64>("k:1").await;
        assert!(
            matches!(got, Ok(None) | Ok(Some(2)) | Err(_)),
            "{store}: {got:?}"
        );
        assert!(
            Instant::now() < deadline,
            "{store}: the near tier never served again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With pushed notices (Redis, a Redis Cluster, PostgreSQL), an entry is served as long as
/// nothing changes it (up to `near_ttl`), not only for `near_check`: what
/// polling stores cannot do. A change made elsewhere still ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_entries_outlive_near_check_while_notices_flow() {
    let _shared = ALONE.read().await;
    let redis = RedisServer::start();
    let cluster = RedisCluster::start();
    let pg = Postgres::start();
    for (store, url) in [
        ("redis", redis.url()),
        ("redis_cluster", cluster.url()),
        ("postgres", format!("{}?sslmode=disable", pg.url())),
    ] {
        let near = Cache::from_url(&near_url(&url, "")).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let other = Cache::from_url(&format!("{url}{sep}namespace=np"))
            .await
            .unwrap();
        set_soon(&other, "k:1", 1).await;
        // The first reads start following the notices (which drops what
        // was kept before): read until the near tier answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while near.stats().near_hits == 0 {
            // Errors while the first connections are made.
            match near.get::<u64>("k:1").await {
                Ok(got) => assert_eq!(got, Some(1), "{store}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            assert!(
                Instant::now() < deadline,
                "{store}: the near tier never served"
            );
        }
        tokio::time::sleep(CHECK * 3).await;
        let before = near.stats().near_hits;
        assert_eq!(near.get::<u64>("k:1").await.unwrap(), Some(1), "{store}");
        assert_eq!(
            near.stats().near_hits,
            before + 1,
            "{store}: kept past near_check: the notices vouch for it"
        );
        other.invalidate_prefix("k:").await.unwrap();
        let deadline = Instant::now() + CHECK;
        while near.get::<u64>("k:1").await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{store}: served after near_check"
            );
            tokio::task::yield_now().await;
        }
    }
}

/// A Cluster that changes shape (here a master joins: it could be handed
/// slots, or import one, and run changes the follower does not hear)
/// drops the near tier, which follows the masters anew and serves again;
/// a master that stops answering stops its hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_changes_shape_drops_the_near_tier_which_follows_it_anew() {
    let _shared = ALONE.read().await;
    let mut cluster = RedisCluster::start();
    let near = Cache::from_url(&near_url(&cluster.url(), ""))
        .await
        .unwrap();
    let other = Cache::from_url(&format!("{}?namespace=np", cluster.url()))
        .await
        .unwrap();
    set_soon(&other, "k:1", 1).await;
    let served_near = |near: &Cache| {
        let near = near.clone();
        async move {
            let before = near.stats().near_hits;
            let got = near.get::<u64>("k:1").await;
            matches!(got, Ok(Some(1))) && near.stats().near_hits > before
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_near(&near).await {
        assert!(Instant::now() < deadline, "the near tier never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.add_node();
    // Every node knows the new one: the next check drops the near tier
    // (its entries too, so the first read after it goes to the store).
    let known = Instant::now();
    while served_near(&near).await {
        assert!(
            known.elapsed() < CHECK * 2,
            "still serving {:?} after every node knew of the new one",
            known.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_near(&near).await {
        assert!(
            Instant::now() < deadline,
            "the near tier never followed the new shape"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A master that stops answering (the new one, which holds no slot, so
    // every read still has its store) stops the vouching: near hits end
    // within near_check.
    cluster.nodes[3].pause();
    let paused = Instant::now();
    loop {
        // When the read started: a read that starts `near_check` after the
        // last vouching (at the latest, the pause) is never a near hit.
        let started = paused.elapsed();
        if !served_near(&near).await {
            break;
        }
        assert!(
            started < CHECK + Duration::from_millis(10),
            "a read {started:?} after a master stopped answering was a near hit"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cluster.nodes[3].resume();
}

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
    // Alone: the bound is on the whole process's memory.
    let _alone = ALONE.write().await;
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
