//! A second process for `tests/near.rs`: reads one key through a cache with
//! a near tier as fast as it can, and says on stdout what it saw change.
//!
//! `near-reader <cache URL> <key>`; lines out:
//! - `ready`: the cache is built and has read the key once;
//! - `seen <v>`: the first read that returned version `v`;
//! - `gone <v> <last_start_us> <seen_us>`: the first read that no longer
//!   returned `v` ended at `seen_us`; `last_start_us` is when the last read
//!   that did return `v` started (µs since the Unix epoch, both);
//! - `back <v>`: a read returned `v` after it was gone (a wrong answer).
//!
//! Exits when its stdin closes.

use std::collections::HashSet;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use cacheruntime::Cache;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: near-reader <cache URL> <key>");
        std::process::exit(2);
    };
    let cache = Cache::from_url(&url).await.expect("a valid cache URL");
    // Stops with the parent.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let out = std::io::stdout();
    let say = |line: String| {
        let mut out = out.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let _ = cache.get::<u64>(&key).await;
    say("ready".into());
    let mut current: Option<(u64, u64)> = None;
    let mut gone: HashSet<u64> = HashSet::new();
    loop {
        let started = now_us();
        let got = cache.get::<u64>(&key).await;
        let ended = now_us();
        match (got, current) {
            (Ok(Some(v)), _) if gone.contains(&v) => say(format!("back {v}")),
            (Ok(Some(v)), Some((c, _))) if v == c => current = Some((v, started)),
            (Ok(Some(v)), _) => {
                if let Some((c, last)) = current {
                    gone.insert(c);
                    say(format!("gone {c} {last} {ended}"));
                }
                current = Some((v, started));
                say(format!("seen {v}"));
            }
            (Ok(None), Some((c, last))) => {
                gone.insert(c);
                say(format!("gone {c} {last} {ended}"));
                current = None;
            }
            _ => {}
        }
        tokio::task::yield_now().await;
    }
}
