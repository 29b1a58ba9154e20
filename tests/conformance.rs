//! The conformance suite: every store through the same scenarios, and a
//! randomized history checker, against real servers.
//!
//! `stores.rs` has one fixture per store (memory, Redis, Redis Cluster,
//! PostgreSQL, SQLite, Memcached on one server and on a pool of three):
//! two `Cache` handles standing for two processes, a third on demand, the
//! store's clock, and a hook that loses its invalidation state. `scenarios.rs` writes the contract once;
//! `history.rs` runs random operations over three handles and checks every
//! answer against the origin. The `conformance!` list below makes one test
//! per (store, scenario), named `<store>::<scenario>`, so adding a store
//! to it runs every scenario against it.
//!
//! ```sh
//! cargo test --all-features --test conformance
//! cargo test --all-features --test conformance -- --nocapture history
//! CONFORMANCE_SECONDS=60 CONFORMANCE_SEED=123 cargo test --all-features \
//!     --test conformance -- --nocapture redis::history
//! ```

#[path = "support/mod.rs"]
mod support;

#[path = "conformance/dogpile.rs"]
mod dogpile;
#[path = "conformance/history.rs"]
mod history;
#[path = "conformance/lowlevel.rs"]
mod lowlevel;
#[path = "conformance/operators.rs"]
mod operators;
#[path = "conformance/policies.rs"]
mod policies;
#[path = "conformance/scenarios.rs"]
mod scenarios;
#[path = "conformance/stores.rs"]
mod stores;
#[path = "conformance/tags.rs"]
mod tags;

use std::future::Future;
use std::time::Duration;

/// Scenarios run side by side; a history runs alone, since its load would
/// starve the scenarios' time bounds (and theirs its own) on two cores.
mod turns {
    use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    static TURNS: RwLock<()> = RwLock::const_new(());

    pub async fn beside_others() -> RwLockReadGuard<'static, ()> {
        TURNS.read().await
    }

    pub async fn alone() -> RwLockWriteGuard<'static, ()> {
        TURNS.write().await
    }
}

/// Runs a test body, failing it (instead of hanging the binary) past `limit`.
async fn bounded(label: &str, limit: Duration, body: impl Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{label}: did not finish within {limit:?}");
    }
}

const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
const HISTORY_LIMIT: Duration = Duration::from_secs(600);

macro_rules! conformance {
    (
        stores: [$($store:ident),* $(,)?],
        scenarios: $scenarios:tt,
        alone: $alone:tt $(,)?
    ) => {
        $( conformance!(@store $store $scenarios $alone); )*
    };
    (@store $store:ident [$($scenario:ident),* $(,)?] [$($solo:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _turn = crate::turns::beside_others().await;
                    let label = concat!(stringify!($store), "::", stringify!($scenario));
                    crate::bounded(label, crate::SCENARIO_LIMIT, async {
                        let store = crate::stores::$store().await;
                        crate::scenarios::$scenario(&store).await;
                    })
                    .await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $solo() {
                    let _turn = crate::turns::alone().await;
                    let label = concat!(stringify!($store), "::", stringify!($solo));
                    crate::bounded(label, crate::HISTORY_LIMIT, async {
                        let store = crate::stores::$store().await;
                        crate::history::$solo(&store).await;
                    })
                    .await;
                }
            )*
        }
    };
}

conformance! {
    stores: [
        memory, redis, redis_cluster, postgres, sqlite, memcached, memcached_pool,
        redis_near, redis_cluster_near, postgres_near, sqlite_near, memcached_near,
    ],
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
        delete_then_set_outlasts_an_older_computation,
        contains_and_ttl,
        touch_extends_and_never_resurrects,
        add_only_if_absent,
        add_race_across_handles,
        many_answer_as_single_key_ops,
        fence_delete_many_same_handle,
        fence_delete_many_other_handle,
        refresh_after_delete_many,
        counters,
        incr_sum_across_handles,
        clear_is_scoped_to_the_namespace,
        fence_clear_other_handle,
        refresh_after_clear,
        stale_if_error_serves_the_kept_value_until_it_is_fenced,
        until_evicted_is_capped_by_every_store,
        compressed_and_plain_entries_read_across_handles,
        invalidate_tag_drops_every_entry_with_the_tag,
        direct_reads_see_tag_invalidations,
        invalidate_tag_fences_a_computation_in_flight,
        stale_if_error_never_serves_a_value_whose_tag_was_invalidated,
        cold_key_is_computed_once_and_leaves_no_lock,
        own_changes_are_seen_at_once,
        keys_and_inspect_show_live_entries_only,
    ],
    alone: [history],
}

/// The history with faults injected, where `tests/support` can inject them
/// (each on a server of its own, since it kills it).
mod faults {
    macro_rules! under_faults {
        ($($name:ident => $run:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let _turn = crate::turns::alone().await;
                    let label = concat!("faults::", stringify!($name));
                    crate::bounded(label, crate::HISTORY_LIMIT, crate::history::$run()).await;
                }
            )*
        };
    }

    under_faults! {
        redis_history => redis_under_faults,
        redis_near_history => redis_near_under_faults,
        memcached_history => memcached_under_faults,
        postgres_history => postgres_under_faults,
        postgres_near_history => postgres_near_under_faults,
    }
}
