//! What the Redis backend checks of the server's own configuration, once,
//! after its first successful call: it loads the scripts, and warns when
//! the server cannot evict or can roll invalidations back on a restart.

use std::sync::atomic::Ordering;

use super::connection::AnyConn;
use super::scripts::{
    BUMP, DELETE, ENSURE, LOCK_GET, READ_LOCK, RELEASE, SWAP, WRITE, WRITE_UNLOCK,
};
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
            // Load the scripts now, so a first call does not pay the
            // NOSCRIPT round trips inside its budget: the get-or-compute
            // read and the write ending a cold miss first.
            for script in [
                &*READ_LOCK,
                &*WRITE_UNLOCK,
                &*LOCK_GET,
                &*ENSURE,
                &*WRITE,
                &*BUMP,
                &*DELETE,
                &*RELEASE,
                &*SWAP,
            ] {
                if script.load_async(&mut conn).await.is_err() {
                    break;
                }
            }
            for warning in config_warnings(&mut conn).await {
                tracing::warn!(url = %label, "{warning}");
            }
        });
    }
}

/// What the backend warns of the server's configuration: it cannot evict
/// (cache entries could then fill a store shared with a queue), or it can
/// roll invalidations back (persistence). Logged once per backend, and
/// shown by `Cache::store_info` (`cachectl info`).
pub(super) async fn config_warnings(conn: &mut AnyConn) -> Vec<String> {
    let mut warnings = Vec::new();
    // `CONFIG GET`, or `INFO memory` where managed services block
    // `CONFIG` (ElastiCache, Heroku, Upstash), or neither.
    match eviction_settings(conn).await {
        Some((policy, maxmemory)) if policy == "noeviction" || maxmemory == "0" => {
            warnings.push(format!(
                "Redis cannot evict (maxmemory-policy {policy}, maxmemory {maxmemory}): cache \
                 entries only leave by TTL and can fill the server, starving anything else it \
                 stores (such as a job queue); give the cache its own instance or set \
                 maxmemory with an allkeys-lru or volatile-lru policy"
            ));
        }
        Some(_) => {}
        None => warnings.push(
            "could not check whether Redis can evict: both CONFIG GET and INFO memory were \
             refused; make sure it has maxmemory set with an allkeys-lru or volatile-lru \
             policy, or cache entries can fill it"
                .into(),
        ),
    }
    let (save, aof, fsync) = (
        setting(conn, "save").await,
        setting(conn, "appendonly").await,
        setting(conn, "appendfsync").await,
    );
    if let (Some(save), Some(aof), Some(fsync)) = (save, aof, fsync) {
        if loses_acknowledged_writes(&save, &aof, &fsync) {
            warnings.push(format!(
                "Redis persists without syncing every write (save {save:?}, appendonly {aof}, \
                 appendfsync {fsync}): a crash and restart restores data from before the \
                 latest invalidations, and entries they hid are served again. Run the cache's \
                 Redis without persistence (save \"\" and appendonly no, so a restart empties \
                 it) or with appendfsync always"
            ));
        }
    }
    warnings
}

/// One setting from `CONFIG GET`, `None` where it is refused.
async fn setting(conn: &mut AnyConn, name: &str) -> Option<String> {
    let found: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await;
    found.ok().and_then(|v| v.get(1).cloned())
}

/// `maxmemory-policy` and `maxmemory`, from `CONFIG GET`, else from `INFO
/// memory`; `None` when the server refuses both.
async fn eviction_settings(conn: &mut AnyConn) -> Option<(String, String)> {
    let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    let maxmemory: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query_async(conn)
        .await;
    if let (Ok(policy), Ok(maxmemory)) = (policy, maxmemory) {
        if let (Some(policy), Some(maxmemory)) = (policy.get(1), maxmemory.get(1)) {
            return Some((policy.clone(), maxmemory.clone()));
        }
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .ok()?;
    info_memory(&info)
}

/// `maxmemory_policy` and `maxmemory` from the text of `INFO memory`.
fn info_memory(info: &str) -> Option<(String, String)> {
    Some((
        info_field(info, "maxmemory_policy")?,
        info_field(info, "maxmemory")?,
    ))
}

/// A `name:value` line of an `INFO` reply.
pub(super) fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .map(str::to_owned)
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
    fn info_memory_gives_the_policy_and_the_limit() {
        let info = "# Memory\r\nused_memory:1024\r\nmaxmemory:268435456\r\nmaxmemory_human:256.00M\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(
            info_memory(info),
            Some(("allkeys-lru".to_owned(), "268435456".to_owned()))
        );
        assert_eq!(info_memory("# Memory\r\nused_memory:1\r\n"), None);
    }

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
