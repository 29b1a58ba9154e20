//! The near tier a builder puts in front of a shared store
//! ([`CacheBuilder::near`](crate::CacheBuilder::near)), checked.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::engine::Store;
use crate::near::{Near, NearBackend, NearSettings};
use crate::Error;

/// The store with a near tier of `near` bytes in front, if one is asked for.
pub(super) fn near_tier(
    namespace: &str,
    near: Option<u64>,
    near_check: Option<Duration>,
    near_ttl: Option<Duration>,
    clock: &Clock,
    store: Store,
    max_value_bytes: usize,
) -> Result<(Store, Option<Arc<Near>>), Error> {
    let Some(max_bytes) = near else {
        if near_check.is_some() {
            return Err(Error::Config(
                "near_check is set without a near tier: add `near` (e.g. `?near=32MiB`) \
                     or drop near_check"
                    .into(),
            ));
        }
        return Ok((store, None));
    };
    let check = near_check.unwrap_or(crate::near::DEFAULT_CHECK);
    if check.is_zero() {
        return Err(Error::Config(
            "near_check must be greater than zero (leave `near` out for no near tier)".into(),
        ));
    }
    if max_bytes == 0 {
        return Err(Error::Config(
            "near must be greater than zero bytes (leave it out for no near tier)".into(),
        ));
    }
    let Store::Shared(shared) = store else {
        return Err(Error::Config(
            "a near tier goes in front of a shared store (Redis, PostgreSQL, SQLite, \
                 Memcached); this cache's store is in-process or disabled already: drop `near`"
                .into(),
        ));
    };
    let ttl = near_ttl.unwrap_or(crate::near::DEFAULT_TTL);
    if ttl.is_zero() {
        return Err(Error::Config(
            "near_ttl must be greater than zero (leave `near` out for no near tier)".into(),
        ));
    }
    let settings = NearSettings {
        max_bytes,
        check,
        ttl,
    };
    let push = shared.pushes_changes();
    let namespace = if namespace.is_empty() {
        String::new()
    } else {
        format!("{namespace}:")
    };
    let near = Arc::new(Near::new(
        settings,
        max_value_bytes,
        clock.clone(),
        push,
        &namespace,
    ));
    let wrapped = NearBackend::new(shared, near.clone());
    Ok((Store::Shared(Arc::new(wrapped)), Some(near)))
}
