//! The load test (`--load`): starts the bookshop as a child server, drives
//! it over HTTP and prints the table BENCHMARKS.md shows.

use std::io::{BufRead, BufReader, IsTerminal};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::Value;

use crate::{flag, AUTHORS, BOOKS, USERS};

struct Options {
    seconds: u64,
    concurrency: usize,
    /// Purchases per 1,000 actions.
    purchases: u32,
}

/// One run's figures.
struct Run {
    label: String,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    stats: Value,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i =
            ((self.latencies_us.len() as f64 * p).ceil() as usize).min(self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn hit_rate(&self) -> f64 {
        let hits = self.stats["hits"].as_u64().unwrap_or(0) as f64;
        let misses = self.stats["misses"].as_u64().unwrap_or(0) as f64;
        if hits + misses == 0.0 {
            0.0
        } else {
            hits / (hits + misses)
        }
    }

    fn origin(&self) -> u64 {
        let o = &self.stats["origin"];
        ["top_books", "also_bought", "recommended"]
            .iter()
            .map(|k| o[k].as_u64().unwrap_or(0))
            .sum()
    }
}

/// A server child process: this program with `--serve-child`.
struct Child {
    process: std::process::Child,
    base: String,
}

impl Child {
    fn start(cache_url: &str, pages: bool) -> Result<Child, Box<dyn std::error::Error>> {
        let mut process = Command::new(std::env::current_exe()?)
            .args(["--serve-child"])
            .args((!pages).then_some("--no-page-cache"))
            .env("CACHE_URL", cache_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(process.stdout.take().expect("piped")).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("the server did not start: {line:?}"))?
            .to_owned();
        Ok(Child { process, base })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.process.stdin.take());
        let _ = self.process.wait();
    }
}

/// The three actions, with Zipf-distributed targets: popular authors and
/// books get most of the traffic, as on a real shop. Page views carry the
/// shopper's id when signed in.
enum Action {
    Author(i64, Option<i64>),
    Book(i64, Option<i64>),
    Purchase(i64, i64),
}

struct Traffic {
    authors: Zipf<f64>,
    books: Zipf<f64>,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            authors: Zipf::new(AUTHORS as f64, 1.1).expect("valid Zipf"),
            books: Zipf::new(BOOKS as f64, 1.1).expect("valid Zipf"),
        }
    }

    /// `purchases` in 1,000 actions are purchases; of the page views, 60%
    /// are book pages and 40% author pages, a third of them signed in.
    /// Each client is one shopper (`user`), as in a Locust run.
    fn next(&self, rng: &mut SmallRng, user: i64, purchases: u32) -> Action {
        let roll = rng.random_range(0..1000);
        let author = self.authors.sample(rng) as i64;
        let book = self.books.sample(rng) as i64;
        if roll < purchases {
            return Action::Purchase(book, user);
        }
        let signed_in = rng.random_range(0..3) == 0;
        let user = signed_in.then_some(user);
        if rng.random_range(0..10) < 6 {
            Action::Book(book, user)
        } else {
            Action::Author(author, user)
        }
    }
}

async fn drive(
    label: &str,
    cache_url: &str,
    pages: bool,
    opts: &Options,
) -> Result<Run, Box<dyn std::error::Error>> {
    let child = Child::start(cache_url, pages)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let traffic = Arc::new(Traffic::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.seconds);
    let mut workers = Vec::new();
    for worker in 0..opts.concurrency {
        let (client, base) = (client.clone(), child.base.clone());
        let (requests, errors, traffic) = (requests.clone(), errors.clone(), traffic.clone());
        let purchases = opts.purchases;
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let request = match traffic.next(&mut rng, 1 + worker as i64 % USERS, purchases) {
                    Action::Author(id, Some(user)) => {
                        client.get(format!("{base}/authors/{id}?user={user}"))
                    }
                    Action::Author(id, None) => client.get(format!("{base}/authors/{id}")),
                    Action::Book(id, Some(user)) => {
                        client.get(format!("{base}/books/{id}?user={user}"))
                    }
                    Action::Book(id, None) => client.get(format!("{base}/books/{id}")),
                    Action::Purchase(id, user) => {
                        client.post(format!("{base}/books/{id}/purchase?user={user}"))
                    }
                };
                let sent = Instant::now();
                let ok = match request.send().await {
                    Ok(response) => {
                        response.status().is_success() && response.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                requests.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    // The progress line.
    let progress = {
        let (requests, errors, label) = (requests.clone(), errors.clone(), label.to_owned());
        let seconds = opts.seconds;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let elapsed = started.elapsed().as_secs_f64();
                let n = requests.load(Ordering::Relaxed);
                let line = format!(
                    "  {label:<10} {elapsed:>5.1}/{seconds} s  {n:>8} requests  {:>8.0}/s  {} errors",
                    n as f64 / elapsed,
                    errors.load(Ordering::Relaxed)
                );
                // One line redrawn on a terminal; one line per second in a log.
                if std::io::stderr().is_terminal() {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    };
    let mut latencies_us = Vec::new();
    for w in workers {
        latencies_us.extend(w.await?);
    }
    let elapsed = started.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    latencies_us.sort_unstable();
    let stats: Value = client
        .get(format!("{}/stats", child.base))
        .send()
        .await?
        .json()
        .await?;
    drop(child);
    Ok(Run {
        label: label.to_owned(),
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
        stats,
    })
}

fn report(runs: &[Run], opts: &Options, cache_url: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{} s per run, {} concurrent clients (one shopper each), {} purchases per 1,000 actions, cache on = {cache_url}\n\n",
        opts.seconds, opts.concurrency, opts.purchases
    ));
    out.push_str("| run | requests | requests/s | p50 ms | p95 ms | p99 ms | hit rate | origin computations | errors |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1}% | {} | {} |\n",
            r.label,
            r.requests,
            r.rps(),
            r.percentile_ms(0.50),
            r.percentile_ms(0.95),
            r.percentile_ms(0.99),
            r.hit_rate() * 100.0,
            r.origin(),
            r.errors
        ));
    }
    if let [off, on] = runs {
        out.push_str(&format!(
            "\nWith the cache: {:.1}x the requests/s, p99 {:.2}x.\n",
            on.rps() / off.rps(),
            on.percentile_ms(0.99) / off.percentile_ms(0.99)
        ));
        out.push_str("\n| function (cache on) | hits | misses | hit rate | computations |\n|---|---:|---:|---:|---:|\n");
        for f in on.stats["functions"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap_or("?");
            out.push_str(&format!(
                "| {name} | {} | {} | {:.1}% | {} |\n",
                f["hits"],
                f["misses"],
                f["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
                on.stats["origin"][name]
            ));
        }
    }
    out
}

/// `--load`: the runs, their table, and a non-zero exit if a request failed.
pub(crate) async fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let opts = Options {
        seconds: flag(args, "--seconds", 60)?,
        concurrency: flag(args, "--concurrency", 32)?,
        purchases: flag(args, "--purchases-per-mille", 3)?,
    };
    if opts.purchases > 1000 {
        return Err("--purchases-per-mille is out of 1000, e.g. `--purchases-per-mille 3`".into());
    }
    let cache_url = match std::env::var("CACHE_URL") {
        Ok(url) if !url.trim().is_empty() && url.trim() != "none://" => url,
        _ => "memory://".to_owned(),
    };
    eprintln!(
        "bookshop load test: {} s per run, {} clients",
        opts.seconds, opts.concurrency
    );
    let off = drive("cache off", "none://", false, &opts).await?;
    let on = drive("cache on", &cache_url, false, &opts).await?;
    let runs = [off, on];
    println!("{}", report(&runs, &opts, &cache_url));
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    Ok(())
}
