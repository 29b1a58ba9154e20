//! What the Redis backend checks of the server's own configuration, once,
//! after its first successful call: it loads the scripts, and warns when
//! the server cannot evict or can roll invalidations back on a restart.

use std::sync::atomic::Ordering;

use super::connection::AnyConn;
use super::scripts::{BUMP, DELETE, ENSURE, RELEASE, WRITE};
use super::RedisBackend;

impl RedisBackend {
    /// After the first successful call: load the scripts, and warn when the
    /// server cannot evict (cache entries could then fill a store shared
    /// with a queue) or can roll invalidations back (persistence).
    pub(super) fn check_config_once(&self, conn: &AnyConn) {
        if self.checked_config.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut conn = conn.clone();
        let label = self.label.clone();
        tokio::spawn(async move {
            // Load the scripts now, so a first write does not pay the
            // NOSCRIPT round trips inside some call's budget.
            for script in [&*ENSURE, &*WRITE, &*BUMP, &*DELETE, &*RELEASE] {
                if script.load_async(&mut conn).await.is_err() {
                    break;
                }
            }
            let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            let maxmemory: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory")
                .query_async(&mut conn)
                .await;
            match (policy, maxmemory) {
                (Ok(policy), Ok(maxmemory)) => {
                    let policy = policy.get(1).cloned().unwrap_or_default();
                    let maxmemory = maxmemory.get(1).cloned().unwrap_or_default();
                    if policy == "noeviction" || maxmemory == "0" {
                        tracing::warn!(
                            url = %label,
                            maxmemory_policy = %policy,
                            maxmemory = %maxmemory,
                            "Redis cannot evict (maxmemory-policy noeviction or maxmemory 0): \
                             cache entries only leave by TTL and can fill the server, starving \
                             anything else it stores (such as a job queue); give the cache its \
                             own instance or set maxmemory with an allkeys-lru or volatile-lru policy"
                        );
                    }
                }
                _ => tracing::debug!(
                    url = %label,
                    "CONFIG GET not allowed; cannot check the Redis eviction policy"
                ),
            }
            let setting = |name: &'static str| {
                let mut conn = conn.clone();
                async move {
                    let found: Result<Vec<String>, _> = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(name)
                        .query_async(&mut conn)
                        .await;
                    found.ok().and_then(|v| v.get(1).cloned())
                }
            };
            let (save, aof, fsync) = (
                setting("save").await,
                setting("appendonly").await,
                setting("appendfsync").await,
            );
            if let (Some(save), Some(aof), Some(fsync)) = (save, aof, fsync) {
                if loses_acknowledged_writes(&save, &aof, &fsync) {
                    tracing::warn!(
                        url = %label,
                        save = %save,
                        appendonly = %aof,
                        appendfsync = %fsync,
                        "Redis persists without syncing every write (RDB snapshots, or AOF \
                         without appendfsync always): a crash and restart restores data from \
                         before the latest invalidations, and entries they hid are served \
                         again. Run the cache's Redis without persistence (save \"\" and \
                         appendonly no, so a restart empties it) or with appendfsync always"
                    );
                }
            }
        });
    }
}

/// Whether a Redis with these settings can come back from a crash with an
/// older state than it acknowledged: RDB snapshots without an AOF (when
/// both are on, Redis loads the AOF), or an AOF not synced on every write.
fn loses_acknowledged_writes(save: &str, appendonly: &str, appendfsync: &str) -> bool {
    if appendonly == "yes" {
        appendfsync != "always"
    } else {
        !save.trim().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_that_can_roll_invalidations_back_is_recognised() {
        assert!(loses_acknowledged_writes(
            "3600 1 300 100",
            "no",
            "everysec"
        ));
        assert!(loses_acknowledged_writes("", "yes", "everysec"));
        assert!(loses_acknowledged_writes("3600 1", "yes", "no"));
        assert!(!loses_acknowledged_writes("", "no", "everysec"));
        assert!(!loses_acknowledged_writes("3600 1", "yes", "always"));
    }
}
