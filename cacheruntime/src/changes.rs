//! Change notices from a store to a near tier: their format
//! ([`key_notice`], [`prefix_notice`]), [`Feed`], which a store that pushes
//! them (`Backend::follow_changes`: Redis, PostgreSQL) is handed, and
//! [`ChangeSink`], what the near tier (`near.rs`) does with each. A leaf:
//! the stores see the near tier only through this.

use std::fmt;
use std::time::Duration;

/// What a near tier does with a store's change notices (see
/// [`Feed`]). The crate's own near tier implements it.
#[doc(hidden)]
pub trait ChangeSink: Send + Sync {
    /// The entry under `key` was written or deleted.
    fn key_changed(&self, key: &str);
    /// The entries under `prefix` were invalidated.
    fn prefix_invalidated(&self, prefix: &str);
    /// Notices may have been missed: drop everything, serve nothing until
    /// [`synced`](Self::synced).
    fn lost(&self);
    /// Every notice published before `asked` has been applied.
    fn synced(&self, asked: std::time::Instant);
    /// How often to make sure of the notices (`near_check`).
    fn check(&self) -> Duration;
    /// A notice arrived `lag` after its change was sent.
    fn arrived(&self, lag: Duration);
}

/// The length of a notice's stamp: its kind (`K` or `P`) and the time it
/// was sent, 16 hex digits of microseconds since the Unix epoch.
pub const STAMP_LEN: usize = 17;

/// The notice of a write or delete of `key`, as the stores publish it:
/// `K`, the time it is sent (see [`STAMP_LEN`]), the key.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub fn key_notice(key: &str) -> String {
    stamped('K', key)
}

/// The notice of an invalidation of `prefix`: `P`, the time, the prefix.
#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
pub fn prefix_notice(prefix: &str) -> String {
    stamped('P', prefix)
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "sqlite"))]
fn stamped(kind: char, name: &str) -> String {
    format!("{kind}{:016x}{name}", unix_us())
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What a store that pushes change notices feeds a near tier with
/// ([`Backend::follow_changes`]): it lives as long as the near tier, and
/// does nothing once the near tier is gone.
#[doc(hidden)]
#[derive(Clone)]
pub struct Feed(std::sync::Weak<dyn ChangeSink>);

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Feed {
    /// A feed of the near tier `sink`.
    pub fn new(sink: std::sync::Weak<dyn ChangeSink>) -> Self {
        Feed(sink)
    }

    /// Whether the near tier still exists (the follower stops otherwise).
    pub fn is_open(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// The entry under `key` was written or deleted.
    pub fn key_changed(&self, key: &str) {
        if let Some(sink) = self.0.upgrade() {
            sink.key_changed(key);
        }
    }

    /// The entries under `prefix` were invalidated.
    pub fn prefix_invalidated(&self, prefix: &str) {
        if let Some(sink) = self.0.upgrade() {
            sink.prefix_invalidated(prefix);
        }
    }

    /// Applies one notice as the stores publish it: [`key_notice`] and
    /// [`prefix_notice`] (whose send time measures the lag), or `k<key>` and
    /// `p<prefix>` without one. Anything else (`*`, which a store sends for
    /// a name too long for its channel, or a notice from a newer version)
    /// is read as "anything may have changed".
    pub fn apply(&self, notice: &[u8]) {
        self.apply_measured(notice, true);
    }

    /// [`apply`](Self::apply), measuring the lag only when `measure`: a
    /// copy of a notice already applied (a Cluster's bus forwards each
    /// notice to every node) is applied again, and not counted twice.
    pub fn apply_measured(&self, notice: &[u8], measure: bool) {
        let Some(sink) = self.0.upgrade() else {
            return;
        };
        let (kind, name) = match notice.first() {
            Some(&kind @ (b'K' | b'P')) if notice.len() >= STAMP_LEN => {
                let sent = std::str::from_utf8(&notice[1..STAMP_LEN])
                    .ok()
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok());
                let Some(sent) = sent else {
                    return sink.lost();
                };
                if measure {
                    sink.arrived(Duration::from_micros(unix_us().saturating_sub(sent)));
                }
                (kind.to_ascii_lowercase(), &notice[STAMP_LEN..])
            }
            Some(&kind) => (kind, &notice[1..]),
            None => return sink.lost(),
        };
        match (kind, std::str::from_utf8(name)) {
            (b'k', Ok(key)) => sink.key_changed(key),
            (b'p', Ok(prefix)) => sink.prefix_invalidated(prefix),
            _ => sink.lost(),
        }
    }

    /// Notices may have been missed: everything is dropped, and nothing is
    /// served until [`synced`](Self::synced).
    pub fn lost(&self) {
        if let Some(sink) = self.0.upgrade() {
            sink.lost();
        }
    }

    /// Every notice published before `asked` has been applied: entries may
    /// be served until `near_check` after it.
    pub fn synced(&self, asked: std::time::Instant) {
        if let Some(sink) = self.0.upgrade() {
            sink.synced(asked);
        }
    }

    /// Follows a store's notices for as long as the near tier lives: `one`
    /// follows them on one connection until it fails (`Err`) or the near
    /// tier is gone (`Ok`). After each failure everything near is dropped
    /// ([`lost`](Self::lost)) and the next connection waits a back-off (50
    /// ms doubling to 1 s; 50 ms again after a connection that lasted 10
    /// s). The first failure is logged at warn, with `what` (which store,
    /// and what a refusal would need), the others at debug: a server that
    /// restarts is not news.
    pub async fn keep_following<Fut, E>(
        self,
        label: &str,
        scrub: impl Fn(&str) -> String,
        what: &'static str,
        mut one: impl FnMut(Feed) -> Fut,
    ) where
        Fut: std::future::Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let mut pause = Duration::from_millis(50);
        let mut told = false;
        while self.is_open() {
            let started = std::time::Instant::now();
            match one(self.clone()).await {
                Ok(()) => return,
                Err(e) if !told => {
                    told = true;
                    tracing::warn!(
                        url = %label,
                        error = %scrub(&e.to_string()),
                        "the near tier lost its {what}; it serves nothing until it has them again"
                    );
                }
                Err(e) => tracing::debug!(
                    url = %label,
                    error = %scrub(&e.to_string()),
                    "the near tier lost its {what}"
                ),
            }
            self.lost();
            if started.elapsed() > Duration::from_secs(10) {
                pause = Duration::from_millis(50);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The near tier's `near_check`: how often to make sure of the notices.
    pub fn check(&self) -> Duration {
        self.0
            .upgrade()
            .map_or(Duration::from_millis(100), |sink| sink.check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what each notice did.
    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl ChangeSink for Heard {
        fn key_changed(&self, key: &str) {
            self.0.lock().unwrap().push(format!("key {key}"));
        }
        fn prefix_invalidated(&self, prefix: &str) {
            self.0.lock().unwrap().push(format!("prefix {prefix}"));
        }
        fn lost(&self) {
            self.0.lock().unwrap().push("lost".into());
        }
        fn synced(&self, _: std::time::Instant) {}
        fn check(&self) -> Duration {
            Duration::from_millis(100)
        }
        fn arrived(&self, lag: Duration) {
            assert!(lag < Duration::from_secs(60), "{lag:?}");
            self.0.lock().unwrap().push("lag".into());
        }
    }

    #[test]
    fn notices_name_what_changed_and_anything_unreadable_drops_everything() {
        let heard = Arc::new(Heard::default());
        let feed = Feed::new(Arc::downgrade(&heard) as std::sync::Weak<dyn ChangeSink>);
        let stamped = format!("K{:016x}a:b", unix_us());
        for notice in [
            stamped.as_str(),
            &format!("P{:016x}a:", unix_us()),
            "ka:c",
            "pz:",
            "*",
            "",
            "Kzz",
            "Kxxxxxxxxxxxxxxxxa:b",
        ] {
            feed.apply(notice.as_bytes());
        }
        assert_eq!(
            *heard.0.lock().unwrap(),
            [
                "lag",
                "key a:b",
                "lag",
                "prefix a:",
                "key a:c",
                "prefix z:",
                "lost",
                "lost",
                "lost",
                "lost"
            ]
        );
    }
}
