//! The conformance suite: every store through the same scenarios, and a
//! randomized history checker, against real servers.
//!
//! `stores.rs` has one fixture per store (memory, Redis, Redis Cluster,
//! PostgreSQL, SQLite, Memcached): two `Cache` handles standing for two
//! processes, a third on demand, the store's clock, and a hook that loses
//! its invalidation state. `scenarios.rs` writes the contract once. The
//! `conformance!` list below makes one test per (store, scenario), named
//! `<store>::<scenario>`, so adding a store to it runs every scenario
//! against it.
//!
//! ```sh
//! cargo test --all-features --test conformance
//! ```

#[path = "support/mod.rs"]
mod support;

#[path = "conformance/scenarios.rs"]
mod scenarios;
#[path = "conformance/stores.rs"]
mod stores;

use std::future::Future;
use std::time::Duration;

/// Runs a test body, failing it (instead of hanging the binary) past `limit`.
async fn bounded(label: &str, limit: Duration, body: impl Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{label}: did not finish within {limit:?}");
    }
}

const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

macro_rules! conformance {
    (stores: [$($store:ident),* $(,)?], scenarios: $scenarios:tt $(,)?) => {
        $( conformance!(@store $store $scenarios); )*
    };
    (@store $store:ident [$($scenario:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let label = concat!(stringify!($store), "::", stringify!($scenario));
                    crate::bounded(label, crate::SCENARIO_LIMIT, async {
                        let store = crate::stores::$store().await;
                        crate::scenarios::$scenario(&store).await;
                    })
                    .await;
                }
            )*
        }
    };
}

conformance! {
    stores: [memory, redis, redis_cluster, postgres, sqlite, memcached],
    scenarios: [
        round_trip,
        ttl_expiry,
        negative_caching,
        fence_invalidate_same_handle,
        fence_delete_same_handle,
        fence_invalidate_other_handle,
        fence_delete_other_handle,
        lock_released_after_cancel,
        lock_released_after_panic,
        invalidation_survives_state_loss,
        in_flight_write_hidden_after_state_loss,
        oversize,
        stats_identity,
        refresh_after_delete,
        refresh_after_invalidate,
        set_not_overwritten_by_older_computation,
    ],
}
