//! Change notices from a store to a near tier: [`Feed`], which a store that
//! pushes them (`Backend::follow_changes`: Redis) is handed, and
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

    /// The near tier's `near_check`: how often to make sure of the notices.
    pub fn check(&self) -> Duration {
        self.0
            .upgrade()
            .map_or(Duration::from_millis(100), |sink| sink.check())
    }
}
