//! The load test (`--load`): starts the bookshop as a child server three
//! times (cache off, functions only, functions and pages), drives each over
//! HTTP, checks every page it gets for a wrong answer, and prints the
//! table BENCHMARKS.md shows.
//!
//! The checks, against what purchases whose response had returned before
//! the page was asked for said:
//! - an author's copies sold (on the author's page and on each of their
//!   books' pages) is at least what the last such purchase of one of their
//!   books returned: a page the purchase should have dropped shows less;
//! - a signed-in page never recommends a book its shopper bought.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::ACCEPT_LANGUAGE;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Deserialize;
use serde_json::Value;

use crate::{flag, AUTHORS, BOOKS, BOOKS_PER_AUTHOR, USERS};

struct Options {
    seconds: u64,
    concurrency: usize,
    /// Purchases per 1,000 actions.
    purchases: u32,
}

/// The `X-Cache` values a page view is counted under, in this order.
const X_CACHE: [&str; 4] = ["hit", "stale", "miss", "(none)"];

/// One run's figures.
struct Run {
    label: String,
    pages: bool,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    /// Page views by their `X-Cache` header ([`X_CACHE`]): anonymous,
    /// then signed in.
    x_cache: [[u64; 4]; 2],
    /// Pages that failed a check (module docs).
    wrong: u64,
    stats: Value,
}

fn rate(hits: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        hits as f64 / calls as f64
    }
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

    /// The cached functions' hit rate, from the server's stats.
    fn function_hit_rate(&self) -> f64 {
        let (mut hits, mut calls) = (0, 0);
        for f in self.stats["functions"].as_array().into_iter().flatten() {
            let (h, m) = (
                f["hits"].as_u64().unwrap_or(0),
                f["misses"].as_u64().unwrap_or(0),
            );
            hits += h;
            calls += h + m;
        }
        rate(hits, calls)
    }

    /// The page cache's (hits, stale hits, misses), from the server's stats.
    fn page_calls(&self) -> (u64, u64, u64) {
        let p = &self.stats["pages"];
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        (n("hits"), n("stale_hits"), n("misses"))
    }

    /// The page cache's hit rate (stale hits included), from the stats.
    fn page_hit_rate(&self) -> f64 {
        let (hits, stale, misses) = self.page_calls();
        rate(hits + stale, hits + stale + misses)
    }

    fn origin(&self) -> u64 {
        let o = &self.stats["origin"];
        ["top_books", "also_bought", "recommended"]
            .iter()
            .map(|k| o[k].as_u64().unwrap_or(0))
            .sum()
    }
}

/// Empties a shared store's namespace before a run: each run starts from a
/// cold cache and a fresh database, and a shared store (unlike `memory://`,
/// which dies with the server) still holds what the last run's database
/// made, which this run's pages would be checked against.
async fn empty(cache_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    if cache_url.starts_with("memory") || cache_url.starts_with("none") {
        return Ok(());
    }
    let cache = cacheruntime::Cache::from_url(cache_url).await?;
    match cache.clear().await {
        Ok(()) => Ok(()),
        Err(e @ cacheruntime::Error::NamespaceRequired { .. }) => Err(format!(
            "the load test empties CACHE_URL's namespace before each run ({e}); give it a \
             namespace of its own, e.g. `?namespace=bookshop-load`"
        )
        .into()),
        Err(e) => Err(format!("the load test could not empty the cache before a run: {e}").into()),
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

/// What a client does next. Targets are Zipf-distributed: popular authors
/// and books get most of the traffic, as on a real shop.
enum Action {
    /// A page view: its path and `Accept-Language`, signed in or not, and
    /// the author whose sales it shows.
    View {
        path: String,
        language: &'static str,
        signed_in: bool,
        author: i64,
    },
    Purchase(i64),
}

/// The `Accept-Language` values page views send, with their weights (out
/// of 10): three languages, one way of writing each.
const LANGUAGES: [(&str, u32); 3] = [
    ("en-GB,en;q=0.9", 6),
    ("fr-FR,fr;q=0.9,en;q=0.5", 3),
    ("de-DE,de;q=0.9", 1),
];

fn language(rng: &mut SmallRng) -> &'static str {
    let mut roll = rng.random_range(0..10);
    for (value, weight) in LANGUAGES {
        if roll < weight {
            return value;
        }
        roll -= weight;
    }
    LANGUAGES[0].0
}

/// One client: one shopper, as in a Locust run, with one language.
struct Session {
    user: i64,
    language: &'static str,
    rng: SmallRng,
    /// The books this shopper bought in this run, each once its purchase's
    /// response returned.
    bought: HashSet<i64>,
    /// The ids recommended on the shopper's last signed-in page.
    recommended: Vec<i64>,
}

/// What the checks read of a page.
#[derive(Deserialize)]
struct Page {
    /// The author's copies sold (`author_sold` on a book's page).
    #[serde(alias = "author_sold")]
    sold: u64,
    /// Signed-in pages only.
    recommended: Option<Vec<Listed>>,
}

#[derive(Deserialize)]
struct Listed {
    id: i64,
}

/// What the checks read of a purchase's response.
#[derive(Deserialize)]
struct Purchased {
    author: usize,
    author_sold: u64,
}

impl Session {
    fn new(worker: usize) -> Session {
        let mut rng = SmallRng::seed_from_u64(worker as u64);
        Session {
            user: 1 + worker as i64 % USERS,
            language: language(&mut rng),
            rng,
            bought: HashSet::new(),
            recommended: Vec::new(),
        }
    }

    /// Checks a page (module docs), whatever served it: the page cache,
    /// the functions' entries or the database. `sold` is the author's
    /// copies sold by the purchases that had returned when it was asked
    /// for. Returns whether it is wrong.
    fn check(&mut self, path: &str, body: &[u8], sold: u64) -> Result<bool, serde_json::Error> {
        let page: Page = serde_json::from_slice(body)?;
        let mut wrong = false;
        if page.sold < sold {
            eprintln!(
                "wrong answer: {path} shows {} copies sold by its author, a purchase had returned {sold}",
                page.sold
            );
            wrong = true;
        }
        if let Some(recommended) = page.recommended {
            self.recommended = recommended.into_iter().map(|b| b.id).collect();
            if let Some(id) = self.recommended.iter().find(|id| self.bought.contains(id)) {
                eprintln!(
                    "wrong answer: {path} recommends book {id} to user {}, who had bought it",
                    self.user
                );
                wrong = true;
            }
        }
        Ok(wrong)
    }
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

    /// `purchases` in 1,000 actions are purchases, half of them (when the
    /// shopper has seen recommendations) of the first book recommended to
    /// them, as shoppers buy what a shop suggests. Of the page views, 60%
    /// are book pages and 40% author pages, a third of them signed in
    /// (in the shopper's language; anonymous views draw one each).
    fn next(&self, s: &mut Session, purchases: u32) -> Action {
        let rng = &mut s.rng;
        let roll = rng.random_range(0..1000);
        let author = self.authors.sample(rng) as i64;
        let book = self.books.sample(rng) as i64;
        if roll < purchases {
            return match s.recommended.first() {
                Some(&suggested) if rng.random_range(0..2) == 0 => Action::Purchase(suggested),
                _ => Action::Purchase(book),
            };
        }
        let signed_in = rng.random_range(0..3) == 0;
        let (path, author) = if rng.random_range(0..10) < 6 {
            // The seed gives each author a run of BOOKS_PER_AUTHOR ids.
            (format!("/books/{book}"), (book - 1) / BOOKS_PER_AUTHOR + 1)
        } else {
            (format!("/authors/{author}"), author)
        };
        let language = if signed_in { s.language } else { language(rng) };
        Action::View {
            path,
            language,
            signed_in,
            author,
        }
    }
}

/// The counters every client adds to.
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    x_cache: [[AtomicU64; 4]; 2],
    wrong: AtomicU64,
    /// Per author, the highest copies sold a purchase's response returned.
    sold: Vec<AtomicU64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            x_cache: Default::default(),
            wrong: AtomicU64::new(0),
            sold: (0..=AUTHORS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// One client's loop until `deadline`; returns its latencies.
async fn shop(
    mut s: Session,
    client: reqwest::Client,
    base: String,
    traffic: Arc<Traffic>,
    tally: Arc<Tally>,
    deadline: Instant,
    purchases: u32,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let action = traffic.next(&mut s, purchases);
        // Read before the request is sent: what it must at least see.
        let mut sold = 0;
        let request = match &action {
            Action::View {
                path,
                language,
                signed_in,
                author,
            } => {
                sold = tally.sold[*author as usize].load(Ordering::Relaxed);
                let url = if *signed_in {
                    format!("{base}{path}?user={}", s.user)
                } else {
                    format!("{base}{path}")
                };
                client.get(url).header(ACCEPT_LANGUAGE, *language)
            }
            Action::Purchase(book) => {
                client.post(format!("{base}/books/{book}/purchase?user={}", s.user))
            }
        };
        let sent = Instant::now();
        let answer = async {
            let response = request.send().await.ok()?;
            let ok = response.status().is_success();
            let x_cache = response.headers().get("x-cache").map_or(3, |v| {
                X_CACHE
                    .iter()
                    .position(|x| v.as_bytes() == x.as_bytes())
                    .unwrap_or(3)
            });
            let body = response.bytes().await.ok()?;
            ok.then_some((x_cache, body))
        }
        .await;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let Some((x_cache, body)) = answer else {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let checked = match action {
            Action::Purchase(book) => {
                s.bought.insert(book);
                serde_json::from_slice::<Purchased>(&body).map(|p| {
                    if let Some(sold) = tally.sold.get(p.author) {
                        sold.fetch_max(p.author_sold, Ordering::Relaxed);
                    }
                    false
                })
            }
            Action::View {
                path, signed_in, ..
            } => {
                tally.x_cache[usize::from(signed_in)][x_cache].fetch_add(1, Ordering::Relaxed);
                s.check(&path, &body, sold)
            }
        };
        match checked {
            Ok(false) => {}
            Ok(true) => {
                tally.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    latencies
}

async fn drive(
    label: &str,
    cache_url: &str,
    pages: bool,
    opts: &Options,
) -> Result<Run, Box<dyn std::error::Error>> {
    empty(cache_url).await?;
    let child = Child::start(cache_url, pages)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tally = Arc::new(Tally::new());
    let traffic = Arc::new(Traffic::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.seconds);
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|worker| {
            tokio::spawn(shop(
                Session::new(worker),
                client.clone(),
                child.base.clone(),
                traffic.clone(),
                tally.clone(),
                deadline,
                opts.purchases,
            ))
        })
        .collect();
    // The progress line.
    let progress = {
        let (tally, label) = (tally.clone(), label.to_owned());
        let seconds = opts.seconds;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let elapsed = started.elapsed().as_secs_f64();
                let n = tally.requests.load(Ordering::Relaxed);
                let line = format!(
                    "  {label:<16} {elapsed:>5.1}/{seconds} s  {n:>8} requests  {:>8.0}/s  {} errors  {} wrong",
                    n as f64 / elapsed,
                    tally.errors.load(Ordering::Relaxed),
                    tally.wrong.load(Ordering::Relaxed),
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
    // Halfway through, `/metrics` must already show the series the
    // dashboard charts.
    let midway = {
        let (client, base) = (client.clone(), child.base.clone());
        let half = Duration::from_secs(opts.seconds) / 2;
        tokio::spawn(async move {
            tokio::time::sleep(half).await;
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            let scrape = Scrape::parse(&text);
            match MIDWAY_SERIES.iter().find(|name| !scrape.has(name)) {
                Some(missing) => Err(format!("/metrics lacks {missing} under load").into()),
                None => Ok::<_, Box<dyn std::error::Error + Send + Sync>>(()),
            }
        })
    };
    let mut latencies_us = Vec::new();
    for w in workers {
        latencies_us.extend(w.await?);
    }
    midway.await?.map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    latencies_us.sort_unstable();
    // Scraped before `/stats`, with no request in between: the same counts.
    let scraped = client
        .get(format!("{}/metrics", child.base))
        .send()
        .await?
        .text()
        .await?;
    let stats: Value = client
        .get(format!("{}/stats", child.base))
        .send()
        .await?
        .json()
        .await?;
    drop(child);
    metrics_agree(label, &Scrape::parse(&scraped), &stats)?;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(Run {
        label: label.to_owned(),
        pages,
        requests: load(&tally.requests),
        errors: load(&tally.errors),
        elapsed,
        latencies_us,
        x_cache: tally.x_cache.each_ref().map(|x| x.each_ref().map(load)),
        wrong: load(&tally.wrong),
        stats,
    })
}

/// Series `/metrics` shows once requests have come in, on every run (the
/// cache off included: its calls are misses, its computations timed).
const MIDWAY_SERIES: [&str; 5] = [
    "cache_calls_total",
    "cache_function_calls_total",
    "cache_compute_duration_seconds_bucket",
    "cache_breaker_open",
    "cache_errors_total",
];

/// The Prometheus text format, read just enough to add up a series' samples.
struct Scrape(Vec<(String, String, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                Some((name.to_owned(), labels.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape(samples)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n == name)
    }

    /// The sum of `name`'s samples having the label `label` (`k="v"`).
    fn sum(&self, name: &str, label: &str) -> u64 {
        let total: f64 = self
            .0
            .iter()
            .filter(|(n, labels, _)| n == name && labels.contains(label))
            .map(|(_, _, v)| v)
            .sum();
        total as u64
    }
}

/// Checks that the calls `/metrics` counts, by result, are the ones
/// `stats()` (`/stats`) counts, and says so.
fn metrics_agree(label: &str, scrape: &Scrape, stats: &Value) -> Result<(), String> {
    let from_metrics = ["hit", "near_hit", "stale", "miss"]
        .map(|r| scrape.sum("cache_calls_total", &format!("result=\"{r}\"")));
    let [hits, near, stale, misses] = from_metrics;
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    let from_stats = (n("hits"), n("stale_hits"), n("misses"));
    if (hits + near, stale, misses) != from_stats {
        return Err(format!(
            "{label}: /metrics counts (hits, stale, misses) = {:?}, stats() {from_stats:?}",
            (hits + near, stale, misses)
        ));
    }
    let served = hits + near + stale;
    println!(
        "{label}: metrics agree with stats: {} calls, hit rate {:.1}% in both",
        served + misses,
        rate(served, served + misses) * 100.0
    );
    Ok(())
}

fn report(runs: &[Run], opts: &Options, cache_url: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{} s per run, {} concurrent clients (one shopper each), {} purchases per 1,000 actions, cache on = {cache_url}\n\n",
        opts.seconds, opts.concurrency, opts.purchases
    ));
    out.push_str("| run | requests | requests/s | p50 ms | p95 ms | p99 ms | function hit rate | page hit rate | origin computations | errors | wrong answers |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let pages = if r.pages {
            format!("{:.1}%", r.page_hit_rate() * 100.0)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1}% | {pages} | {} | {} | {} |\n",
            r.label,
            r.requests,
            r.rps(),
            r.percentile_ms(0.50),
            r.percentile_ms(0.95),
            r.percentile_ms(0.99),
            r.function_hit_rate() * 100.0,
            r.origin(),
            r.errors,
            r.wrong,
        ));
    }
    if let [off, on, pages] = runs {
        out.push_str(&format!(
            "\nFunctions cached: {:.1}x the requests/s of cache off, p99 {:.2}x.\n",
            on.rps() / off.rps(),
            on.percentile_ms(0.99) / off.percentile_ms(0.99)
        ));
        out.push_str(&format!(
            "Pages cached too: {:.1}x the requests/s of cache off and {:.2}x of functions only, p99 {:.2}x of functions only.\n",
            pages.rps() / off.rps(),
            pages.rps() / on.rps(),
            pages.percentile_ms(0.99) / on.percentile_ms(0.99)
        ));
        let (hits, stale, misses) = pages.page_calls();
        out.push_str(&format!(
            "Page cache, by the cache's stats: {hits} hits, {stale} stale, {misses} misses ({:.1}%).\n",
            pages.page_hit_rate() * 100.0,
        ));
        for (who, [xh, xs, xm, xn]) in ["anonymous", "signed in"].iter().zip(pages.x_cache) {
            out.push_str(&format!(
                "X-Cache on {who} page views: {xh} hit, {xs} stale, {xm} miss, {xn} without ({:.1}%).\n",
                rate(xh + xs, xh + xs + xm + xn) * 100.0,
            ));
        }
        for run in [on, pages] {
            out.push_str(&format!(
                "\n| function ({}) | hits | misses | hit rate | computations |\n|---|---:|---:|---:|---:|\n",
                run.label
            ));
            for f in run.stats["functions"].as_array().into_iter().flatten() {
                let name = f["name"].as_str().unwrap_or("?");
                out.push_str(&format!(
                    "| {name} | {} | {} | {:.1}% | {} |\n",
                    f["hits"],
                    f["misses"],
                    f["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
                    run.stats["origin"][name]
                ));
            }
        }
    }
    out
}

/// `--load`: the three runs and their table; a non-zero exit if a request
/// failed or a page was wrong.
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
        Ok(url) if !url.trim().is_empty() && url.trim() != "none://" => url.trim().to_owned(),
        _ => "memory://".to_owned(),
    };
    eprintln!(
        "bookshop load test: {} s per run, {} clients",
        opts.seconds, opts.concurrency
    );
    let off = drive("cache off", "none://", false, &opts).await?;
    let on = drive("cache on", &cache_url, false, &opts).await?;
    let pages = drive("cache on + pages", &cache_url, true, &opts).await?;
    let runs = [off, on, pages];
    println!("{}", report(&runs, &opts, &cache_url));
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    let wrong: u64 = runs.iter().map(|r| r.wrong).sum();
    if errors > 0 || wrong > 0 {
        return Err(format!("{errors} requests failed, {wrong} pages were wrong").into());
    }
    Ok(())
}
