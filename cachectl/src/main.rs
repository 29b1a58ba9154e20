//! `cachectl`: look into a cacheruntime store and act on it, as an
//! operator. It reaches the store the application does (`CACHE_URL`, or a
//! named cache's `CACHE_URL_<NAME>`, or `--url`), with the same namespace
//! and signing keys, so keys are written as the application's `#[cached]`
//! keys render them.
//!
//! ```text
//! cachectl ping                      one round trip, timed
//! cachectl info                      kind, version, TLS, eviction, memory, warnings
//! cachectl get KEY [--raw]           the entry's payload (hex dump, or raw bytes)
//! cachectl inspect KEY               the entry's envelope, decoded
//! cachectl delete KEY
//! cachectl invalidate PREFIX         every key under PREFIX (whole `:` segments)
//! cachectl invalidate-tag TAG
//! cachectl keys [PREFIX] [--limit N] live entries' keys, walking the store
//! ```
//!
//! `--json` prints one JSON document on stdout instead. Exit codes: 0 done,
//! 1 no such entry (`get`, `inspect`), 2 bad usage, 3 the store failed or
//! cannot be reached, 4 a bad URL, key, prefix, tag or setting, 5 the store
//! holds something under the key that is no entry of this library, or
//! cannot do what was asked. Secrets (URL passwords, signing keys) are
//! never printed: errors come scrubbed from the library, and URLs are shown
//! without their passwords. Keys with control characters are printed
//! escaped (`\n`), so a listing keeps one key per line.

mod output;
mod target;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use cacheruntime::inspect::Signature;
use cacheruntime::{Cache, Error};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::output::{hex_dump, inspected, store_info};

/// Look into and act on the store of a cacheruntime cache.
#[derive(Debug, Parser)]
#[command(name = "cachectl", version, about, long_about = None)]
struct Cli {
    /// The cache URL, as the application's `CACHE_URL` (default: that
    /// variable, or `CACHE_URL_<NAME>` with `--cache`).
    #[arg(long, global = true)]
    url: Option<String>,
    /// A named cache: its URL from `CACHE_URL_<NAME>`, its signing keys
    /// from `CACHE_SIGNING_KEY_<NAME>` (else `CACHE_SIGNING_KEY`).
    #[arg(long, global = true, conflicts_with = "url")]
    cache: Option<String>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One round trip to the store, timed.
    Ping,
    /// What the store is: kind, version, TLS, eviction, memory, and the
    /// warnings the library logs about it.
    Info,
    /// The payload of the entry under KEY (a hex dump, or the bytes).
    Get {
        key: String,
        /// Write the payload's bytes as they are.
        #[arg(long)]
        raw: bool,
    },
    /// The entry under KEY, decoded: codec, fingerprint, signature,
    /// deadlines, tags, size.
    Inspect { key: String },
    /// Delete the entry under KEY (in every process sharing the store).
    Delete { key: String },
    /// Drop every entry under PREFIX (whole `:`-separated segments, such as
    /// `author:42:`; empty for all).
    Invalidate { prefix: String },
    /// Drop every entry stored with TAG.
    InvalidateTag { tag: String },
    /// The keys of live entries starting with PREFIX (any text), in order.
    /// Walks the store (SCAN on Redis): an operator's tool, never used by
    /// the library.
    Keys {
        #[arg(default_value = "")]
        prefix: String,
        /// List at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// No progress bar (it shows only on a terminal, never with --json).
        #[arg(long)]
        no_progress: bool,
    },
}

/// How `cachectl` ends (its exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Done = 0,
    NotFound = 1,
    StoreFailed = 3,
    BadInput = 4,
    NotAnEntry = 5,
}

/// A failure: what to print and how to exit.
struct Failure(Exit, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let exit = match e {
            Error::Config(_)
            | Error::InvalidUrl { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidPrefix { .. }
            | Error::InvalidTag { .. }
            | Error::NamespaceRequired { .. } => Exit::BadInput,
            Error::Decode { .. } | Error::Unsupported { .. } => Exit::NotAnEntry,
            _ => Exit::StoreFailed,
        };
        Failure(exit, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(json, Failure(Exit::StoreFailed, e.to_string())),
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(failure) => fail(json, failure),
    }
}

/// Says why on stderr (and, with `--json`, as a document on stdout).
fn fail(json: bool, Failure(exit, message): Failure) -> ExitCode {
    if json {
        out(&json!({ "error": message, "exit": exit as u8 }).to_string());
    }
    eprintln!("cachectl: {message}");
    ExitCode::from(exit as u8)
}

/// A line on stdout; a closed pipe (`cachectl keys | head`) ends the
/// output quietly rather than in a panic.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

async fn run(cli: Cli) -> Result<Exit, Failure> {
    let cache = target::cache(cli.url.as_deref(), cli.cache.as_deref()).await?;
    let json = cli.json;
    match cli.command {
        Command::Ping => {
            let took = cache.ping().await?;
            let kind = cache.backend_name();
            let ms = took.as_secs_f64() * 1e3;
            print(json, json!({ "store": kind, "ms": ms }), || {
                format!("PONG from {kind} in {ms:.2} ms")
            });
        }
        Command::Info => {
            let info = cache.store_info().await?;
            let (human, document) = store_info(&info);
            print(json, document, || human);
        }
        Command::Get { key, raw } => {
            let Some(entry) = cache.inspect(&key).await? else {
                return not_found(json, &key);
            };
            if matches!(entry.signature, Signature::Invalid | Signature::Missing) {
                // What the application would refuse is not its value.
                return Err(Failure(
                    Exit::NotAnEntry,
                    format!(
                        "the entry under {key:?} is not signed with a current signing key \
                         (CACHE_SIGNING_KEY), so the application refuses it; \
                         `cachectl inspect` shows it"
                    ),
                ));
            }
            if raw && !json {
                let mut out = std::io::stdout().lock();
                match out.write_all(&entry.payload).and_then(|()| out.flush()) {
                    // `cachectl get --raw KEY | head -c 10`: the reader had enough.
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        return Err(Failure(Exit::StoreFailed, format!("stdout: {e}")));
                    }
                    _ => {}
                }
            } else {
                let hex: String = entry.payload.iter().map(|b| format!("{b:02x}")).collect();
                let document = json!({ "key": key, "found": true, "payload_hex": hex });
                print(json, document, || hex_dump(&entry.payload));
            }
        }
        Command::Inspect { key } => {
            let Some(entry) = cache.inspect(&key).await? else {
                return not_found(json, &key);
            };
            let (human, document) = inspected(&key, &entry);
            print(json, document, || human);
        }
        Command::Delete { key } => {
            cache.delete(&key).await?;
            print(json, json!({ "deleted": key }), || {
                format!("deleted {}", output::shown(&key))
            });
        }
        Command::Invalidate { prefix } => {
            cache.invalidate_prefix(&prefix).await?;
            print(json, json!({ "invalidated": prefix }), || {
                format!("invalidated every key under {prefix:?}")
            });
        }
        Command::InvalidateTag { tag } => {
            cache.invalidate_tag(&tag).await?;
            print(json, json!({ "invalidated_tag": tag }), || {
                format!("invalidated every entry tagged {tag:?}")
            });
        }
        Command::Keys {
            prefix,
            limit,
            no_progress,
        } => keys(&cache, &prefix, limit, json || no_progress, json).await?,
    }
    Ok(Exit::Done)
}

/// `keys`: the list, with a spinner counting what the walk examined (on a
/// terminal only).
async fn keys(
    cache: &Cache,
    prefix: &str,
    limit: usize,
    quiet: bool,
    json: bool,
) -> Result<(), Failure> {
    let bar = if quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    let mut examined = 0;
    // One more than asked: whether the list is whole.
    let found = cache
        .keys(prefix, limit.saturating_add(1), |n| {
            examined = n;
            bar.set_message(format!("{n} stored items examined"));
        })
        .await;
    bar.finish_and_clear();
    let mut found = found?;
    let complete = found.len() <= limit;
    found.truncate(limit);
    let document = json!({
        "prefix": prefix,
        "keys": found,
        "complete": complete,
        "examined": examined,
    });
    print(json, document, || {
        let shown: Vec<String> = found.iter().map(|k| output::shown(k)).collect();
        shown.join("\n")
    });
    if !complete && !json {
        eprintln!(
            "cachectl: more keys under {prefix:?} than --limit {limit}: raise it to see them"
        );
    }
    Ok(())
}

/// No live entry under `key`: exit 1, saying so.
fn not_found(json: bool, key: &str) -> Result<Exit, Failure> {
    if json {
        out(&json!({ "key": key, "found": false }).to_string());
    } else {
        eprintln!("cachectl: no live entry under {key:?}");
    }
    Ok(Exit::NotFound)
}

/// Prints `document` (with `--json`) or the human text.
fn print(json: bool, document: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        out(&document.to_string());
    } else {
        let text = human();
        if !text.is_empty() {
            out(&text);
        }
    }
}
