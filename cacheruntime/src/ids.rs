//! Storing ids instead of objects: what `#[cached(ids = ...)]` runs.
//!
//! Caching whole rows serves stale prices and lists deleted rows. The
//! robust pattern caches the expensive part (which ids to show) and fetches
//! fresh rows by id, which databases do in milliseconds. On a miss the
//! function's body runs and its result is returned as computed while only
//! the ids are stored; on a hit the stored ids go to the hydrator and its
//! rows are put back in the stored order, dropping rows that no longer
//! exist.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::CacheId;

/// The result shapes whose ids can be stored: `Vec<T>` (a list, in order)
/// and `Option<T>` (one object or none), for `T: CacheId`.
#[diagnostic::on_unimplemented(
    message = "`#[cached(ids = ...)]` stores the ids of a `Vec<T>` or an `Option<T>`, not of `{Self}`",
    label = "return `Result<Vec<T>, E>` or `Result<Option<T>, E>` where `T: CacheId`",
    note = "to cache `{Self}` itself, drop `ids = ...`"
)]
pub trait IdShape: Sized {
    /// What is stored: `Vec<T::Id>` or `Option<T::Id>`.
    type Ids: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// The object type.
    type Item: CacheId;
    /// The ids of this result, in order.
    fn ids(&self) -> Self::Ids;
    /// The stored ids as the list the hydrator is handed.
    fn list(ids: &Self::Ids) -> Vec<<Self::Item as CacheId>::Id>;
    /// The hydrated rows in the stored order; ids without a row are dropped
    /// (the row was deleted since the ids were stored).
    fn arrange(ids: Self::Ids, rows: Vec<Self::Item>) -> Self;
}

impl<T: CacheId> IdShape for Vec<T> {
    type Ids = Vec<T::Id>;
    type Item = T;

    fn ids(&self) -> Vec<T::Id> {
        self.iter().map(CacheId::cache_id).collect()
    }

    fn list(ids: &Vec<T::Id>) -> Vec<T::Id> {
        ids.clone()
    }

    fn arrange(ids: Vec<T::Id>, rows: Vec<T>) -> Vec<T> {
        let mut by_id: HashMap<T::Id, T> = HashMap::with_capacity(rows.len());
        for row in rows {
            by_id.entry(row.cache_id()).or_insert(row);
        }
        // A repeated id takes its row at its first position.
        ids.iter().filter_map(|id| by_id.remove(id)).collect()
    }
}

impl<T: CacheId> IdShape for Option<T> {
    type Ids = Option<T::Id>;
    type Item = T;

    fn ids(&self) -> Option<T::Id> {
        self.as_ref().map(CacheId::cache_id)
    }

    fn list(ids: &Option<T::Id>) -> Vec<T::Id> {
        ids.iter().cloned().collect()
    }

    fn arrange(ids: Option<T::Id>, rows: Vec<T>) -> Option<T> {
        let id = ids?;
        rows.into_iter().find(|row| row.cache_id() == id)
    }
}

/// What a hydrator may resolve to (inside its `Result`): the rows found, as
/// a `Vec<T>` or, for a one-object loader, an `Option<T>`.
#[diagnostic::on_unimplemented(
    message = "the `ids` hydrator must resolve to `Result<Vec<T>, E>` or `Result<Option<T>, E>`, not to `Result<{Self}, E>`",
    label = "the rows found for the ids, in any order"
)]
pub trait Rows<T> {
    /// The rows, in any order.
    fn into_rows(self) -> Vec<T>;
}

impl<T> Rows<T> for Vec<T> {
    fn into_rows(self) -> Vec<T> {
        self
    }
}

impl<T> Rows<T> for Option<T> {
    fn into_rows(self) -> Vec<T> {
        self.into_iter().collect()
    }
}

/// Where a miss's body leaves the objects it computed, so the caller that
/// ran it returns them as they are instead of fetching them again by id.
/// Only a body run by the caller's own task fills it: a background refresh
/// (`stale` / `early`) that happens to finish first must not stand in for
/// the hydration of the stale ids the caller is served.
pub struct IdSlot<S> {
    objects: Arc<Mutex<Option<S>>>,
    task: Option<tokio::task::Id>,
}

impl<S> IdSlot<S> {
    /// An empty slot.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        IdSlot {
            objects: Arc::new(Mutex::new(None)),
            task: tokio::task::try_id(),
        }
    }

    /// The objects a body computed for this call, if it ran here.
    pub fn take(&self) -> Option<S> {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Runs the function's body, keeps its objects in `slot` and yields their
/// ids for the cache to store. The slot is shared (not borrowed) so the
/// body can also run as a `stale` / `early` background refresh.
pub fn store_ids<S, E, F>(slot: &IdSlot<S>, body: F) -> impl Future<Output = Result<S::Ids, E>>
where
    S: IdShape,
    F: Future<Output = Result<S, E>>,
{
    let (objects_slot, task) = (Arc::clone(&slot.objects), slot.task);
    async move {
        let objects = body.await?;
        let ids = objects.ids();
        if tokio::task::try_id() == task {
            *objects_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(objects);
        }
        Ok(ids)
    }
}

/// A copy of an argument for the background refresh of an `ids` function
/// with `stale` or `early`: the refresh owns its copy, the caller keeps the
/// original for the hydrator.
#[diagnostic::on_unimplemented(
    message = "`ids` with `stale` or `early` needs the arguments to be `Clone`, not `{Self}`",
    label = "the background refresh takes a clone; the hydrator uses the original",
    note = "wrap it in an `Arc`, or drop `stale` / `early`"
)]
pub trait CloneForRefresh {
    /// The copy.
    fn clone_for_refresh(&self) -> Self;
}

impl<T: Clone> CloneForRefresh for T {
    fn clone_for_refresh(&self) -> T {
        self.clone()
    }
}

/// What generated code calls to clone an argument for the refresh: through
/// `CloneForRefresh`, so a missing `Clone` is reported in its words.
pub fn clone_for_refresh<T: CloneForRefresh>(value: &T) -> T {
    value.clone_for_refresh()
}

/// Checks at the return type's span that the result's ids can be stored.
pub fn assert_id_shape<S: IdShape>() {}
