//! `cachectl` against real Redis, PostgreSQL, SQLite and Memcached: every
//! command, its `--json` output and exit code, what it changes as the
//! application sees it, and no secret (URL password, signing key) in
//! anything it prints.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};
use std::time::Duration;

use cacheruntime::Cache;
use serde_json::Value;

use support::{MemcachedServer, Postgres, RedisOptions, RedisServer};

const SIGNING_KEY: &str = "cachectl-test-signing-key-0123";
const HOUR: Duration = Duration::from_secs(3600);

/// What one run of `cachectl` gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", self.stdout, self.stderr))
    }
}

/// Runs `cachectl args` with `CACHE_URL=url` and, when given, the signing
/// key; checks that nothing printed holds one of `secrets`.
fn cachectl(url: &str, key: Option<&str>, args: &[&str], secrets: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cachectl"));
    command
        .args(args)
        .env("CACHE_URL", url)
        .env_remove("CACHE_SIGNING_KEY");
    if let Some(key) = key {
        command.env("CACHE_SIGNING_KEY", key);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run cachectl");
    let run = Run {
        code: status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    for secret in secrets.iter().chain([&SIGNING_KEY]) {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "cachectl {args:?} printed a secret: {} / {}",
            run.stdout,
            run.stderr
        );
    }
    run
}

/// Every command against the store at `url` (namespace `ops`), whose kind
/// `info` names `kind`; `secrets` are the URL's.
async fn every_command(url: &str, kind: &str, secrets: &[&str]) {
    // The application's own handles: patient with a cold connection (every
    // URL here has a query: `?namespace=ops`).
    let patient = format!("{url}&op_timeout=5s&record_written_at=true");
    let app = Cache::from_url_signed(&patient, [SIGNING_KEY])
        .await
        .unwrap();
    app.set("author:1:top", &vec![11u32, 12, 13], HOUR)
        .await
        .unwrap();
    app.set("author:1:bio", "wrote books", HOUR).await.unwrap();
    app.set("author:2:top", &vec![21u32], HOUR).await.unwrap();
    app.set_tagged("book:9", "nine", HOUR, &["catalog"])
        .await
        .unwrap();
    let run = |args: &[&str]| cachectl(url, Some(SIGNING_KEY), args, secrets);

    let ping = run(&["ping", "--json"]);
    assert_eq!(ping.code, 0, "{}", ping.stderr);
    assert!(ping.json()["ms"].as_f64().is_some_and(|ms| ms > 0.0));

    let info = run(&["info", "--json"]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let info = info.json();
    assert_eq!(info["kind"], kind, "{info}");
    assert!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    assert!(info["warnings"].is_array(), "{info}");
    let human = run(&["info"]);
    assert!(
        human.stdout.starts_with(&format!("kind: {kind}")),
        "{}",
        human.stdout
    );

    let keys = run(&["keys", "author:", "--json"]);
    assert_eq!(keys.code, 0, "{}", keys.stderr);
    assert_eq!(
        keys.json()["keys"],
        serde_json::json!(["author:1:bio", "author:1:top", "author:2:top"])
    );
    let all = run(&["keys"]);
    let listed: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(
        listed,
        ["author:1:bio", "author:1:top", "author:2:top", "book:9"]
    );
    assert_eq!(keys.json()["complete"], true);
    let one = run(&["keys", "author:", "--limit", "1", "--json"]);
    assert_eq!(one.json()["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(one.json()["complete"], false, "two more were not listed");
    let three = run(&["keys", "author:", "--limit", "3"]);
    assert_eq!(three.stdout.lines().count(), 3);
    assert!(three.stderr.is_empty(), "exactly all: {}", three.stderr);
    let two = run(&["keys", "author:", "--limit", "2"]);
    assert!(
        two.stderr.contains("--limit"),
        "says there are more: {}",
        two.stderr
    );

    let inspect = run(&["inspect", "author:1:bio", "--json"]);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    let entry = inspect.json();
    assert_eq!(entry["state"], "fresh", "{entry}");
    assert_eq!(entry["signature"], "verified", "{entry}");
    assert_eq!(entry["codec"], "bincode", "{entry}");
    assert_eq!(entry["key"], "author:1:bio");
    assert!(
        entry["stored_key"]
            .as_str()
            .unwrap()
            .ends_with("author:1:bio"),
        "{entry}"
    );
    let fresh_until = entry["fresh_until_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(fresh_until > now + 3_000_000, "fresh for an hour: {entry}");
    // Written by the app a moment ago, and an hour before its TTL ends.
    let written = entry["written_at_ms"].as_u64().unwrap();
    assert!(written <= now && now - written < 120_000, "{entry}");
    assert_eq!(fresh_until - written, HOUR.as_millis() as u64, "{entry}");
    let tagged = run(&["inspect", "book:9", "--json"]).json();
    assert_eq!(tagged["tags"][0]["tag"], "catalog", "{tagged}");
    // Without the key the signature is not checked; with another, it fails.
    let unchecked = cachectl(url, None, &["inspect", "author:1:bio", "--json"], secrets);
    assert_eq!(unchecked.json()["signature"], "unchecked");
    let wrong = cachectl(
        url,
        Some("another-key-of-at-least-16-bytes"),
        &["inspect", "author:1:bio", "--json"],
        secrets,
    );
    assert_eq!(wrong.json()["signature"], "invalid");
    // What the application refuses, `get` does not give as its value.
    let refused = cachectl(
        url,
        Some("another-key-of-at-least-16-bytes"),
        &["get", "author:1:bio"],
        secrets,
    );
    assert_eq!(refused.code, 5, "{} / {}", refused.stdout, refused.stderr);
    assert!(
        !refused.stdout.contains("wrote books"),
        "{}",
        refused.stdout
    );
    // Unsigned under a key the application signs: refused too.
    // (In format 2, the default: no written-at.)
    let unsigned = Cache::from_url(&format!("{url}&op_timeout=5s"))
        .await
        .unwrap();
    unsigned.set("author:9:bio", "forged", HOUR).await.unwrap();
    let forged = run(&["inspect", "author:9:bio", "--json"]).json();
    assert_eq!(forged["signature"], "missing", "{forged}");
    assert!(forged["written_at"].is_null(), "{forged}");
    assert_eq!(run(&["get", "author:9:bio"]).code, 5);
    unsigned.delete("author:9:bio").await.unwrap();
    let human = run(&["inspect", "author:1:bio"]);
    assert!(
        human.stdout.contains("signature: verified"),
        "{}",
        human.stdout
    );

    let get = run(&["get", "author:1:bio"]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert!(
        get.stdout.contains("wrote books"),
        "a hex dump: {}",
        get.stdout
    );
    let raw = Command::new(env!("CARGO_BIN_EXE_cachectl"))
        .args(["get", "author:1:bio", "--raw"])
        .env("CACHE_URL", url)
        .output()
        .unwrap();
    assert!(raw.stdout.ends_with(b"wrote books"), "{:?}", raw.stdout);

    let missing = run(&["get", "author:3:top"]);
    assert_eq!(missing.code, 1, "no entry: exit 1");
    let missing = run(&["inspect", "author:3:top", "--json"]);
    assert_eq!(
        (missing.code, &missing.json()["found"]),
        (1, &Value::Bool(false))
    );

    // What cachectl changes, the application sees.
    assert_eq!(run(&["delete", "author:1:bio"]).code, 0);
    assert_eq!(app.get::<String>("author:1:bio").await.unwrap(), None);
    assert_eq!(run(&["get", "author:1:bio"]).code, 1);
    assert_eq!(
        run(&["invalidate", "author:1:", "--json"]).json()["invalidated"],
        "author:1:"
    );
    assert_eq!(app.get::<Vec<u32>>("author:1:top").await.unwrap(), None);
    assert_eq!(
        app.get::<Vec<u32>>("author:2:top").await.unwrap(),
        Some(vec![21])
    );
    let keys = run(&["keys", "author:", "--json"]).json();
    assert_eq!(keys["keys"], serde_json::json!(["author:2:top"]));
    assert_eq!(run(&["invalidate-tag", "catalog"]).code, 0);
    assert_eq!(app.get::<String>("book:9").await.unwrap(), None);

    let tag = run(&["invalidate-tag", "a#b"]);
    assert_eq!(tag.code, 4, "a tag with '#': {}", tag.stderr);
    let bad = run(&["invalidate", "auth"]);
    assert_eq!(bad.code, 4, "a prefix of part of a segment: {}", bad.stderr);
    assert!(bad.stderr.contains("whole"), "{}", bad.stderr);
}

#[tokio::test]
async fn redis() {
    let password = "redis-pass-5f2a9c";
    let server = RedisServer::start_with(RedisOptions {
        config: vec![format!("requirepass {password}")],
        ..RedisOptions::default()
    });
    let url = format!(
        "redis://:{password}@127.0.0.1:{}/?namespace=ops",
        server.port
    );
    every_command(&url, "redis", &[password]).await;
    // A wrong password and a store that is not there: exit 3, no password.
    let wrong = format!("redis://:not-{password}@127.0.0.1:{}", server.port);
    let run = cachectl(&wrong, None, &["ping"], &[password, "not-"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("authentication failed"),
        "{}",
        run.stderr
    );
    let gone = format!("redis://:{password}@127.0.0.1:{}", support::free_port());
    let run = cachectl(&gone, None, &["ping", "--json"], &[password]);
    assert_eq!(run.code, 3);
    assert_eq!(run.json()["exit"], 3);
}

#[tokio::test]
async fn postgres() {
    let pg = Postgres::start();
    let url = format!("{}?namespace=ops", pg.url());
    every_command(&url, "postgres", &[&pg.password]).await;
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?namespace=ops",
        dir.path().join("cache.db").display()
    );
    every_command(&url, "sqlite", &[]).await;
    // A mistyped path or table is an error, and creates nothing: listing
    // them as empty would tell the operator the cache is empty.
    let missing = dir.path().join("typo.db");
    let typo = format!("sqlite://{}", missing.display());
    let run = cachectl(&typo, None, &["keys", "author:", "--json"], &[]);
    assert_eq!(run.code, 3, "{} / {}", run.stdout, run.stderr);
    assert!(!missing.exists(), "cachectl created {missing:?}");
    let run = cachectl(
        &format!("{url}&table=typo"),
        None,
        &["keys", "author:"],
        &[],
    );
    assert_eq!(
        run.code, 3,
        "no table created: {} / {}",
        run.stdout, run.stderr
    );
}

#[tokio::test]
async fn memcached() {
    let server = MemcachedServer::start();
    let url = format!("memcached://{}?namespace=ops", server.addr());
    every_command(&url, "memcached", &[]).await;
}

#[test]
fn an_in_process_store_or_no_store_is_refused_with_what_to_set() {
    // Every spelling of an in-process or disabled store.
    for url in ["", "memory://", "mem://", "none://", "disabled://"] {
        let run = cachectl(url, None, &["ping"], &[]);
        assert_eq!(run.code, 4, "{url}: {}", run.stderr);
        assert!(run.stderr.contains("CACHE_URL"), "{}", run.stderr);
    }
    let usage = cachectl("", None, &["frobnicate"], &[]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
}
