//! The Prometheus text format, parsed just enough to read values by name
//! and labels; and the bookshop's load test, run as the CI runs it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("`series value`");
                let value: f64 = value.parse().expect("a number");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                (name.to_owned(), labels, value)
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The one sample of `name` whose labels include `labels` (summed if
    /// several match: the labels left out are added up).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// The label sets of `name`'s samples.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> + 'a {
        self.samples
            .iter()
            .filter(move |(n, _, _)| n == name)
            .map(|(_, l, _)| l)
    }

    /// Whether a series of this name (a histogram's `_bucket`, `_sum` and
    /// `_count` included) has a sample.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// `k="v",k2="v2"` (values without escaped quotes, as the library's are).
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"').expect("a closing quote");
        out.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
        rest = after;
    }
    out
}

/// The bookshop example's binary: built by `cargo test --all-targets` next
/// to this test's; built here when it is not, or is older than this test
/// (left by an earlier build).
fn bookshop() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    let path = dir.join("examples").join("bookshop");
    let built = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh =
        matches!((built(&path), built(&me)), (Some(example), Some(test)) if example >= test);
    if !fresh {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "bookshop", "--all-features"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the bookshop failed");
    }
    path
}

/// `bookshop --load --seconds 2` on the memory store: stdout, after a
/// successful exit.
pub fn run_bookshop_load() -> String {
    let out = Command::new(bookshop())
        .args(["--load", "--seconds", "2", "--concurrency", "8"])
        .env_remove("CACHE_URL")
        .output()
        .expect("run the bookshop");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the bookshop's load test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
