#![doc = include_str!("../../README.md")]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod backends;
mod breaker;
mod builder;
mod cache;
mod clock;
pub mod codec;
mod config;
mod default;
mod entry;
pub mod envelope;
mod errlog;
mod error;
mod fetch;
mod flight;
mod ids;
pub mod key;
mod lock;
mod memo;
mod params;
mod policy;
mod refresh;
mod secrets;
pub mod signing;
mod site;
mod stats;
pub mod url;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{Backend, Locality};
pub use builder::CacheBuilder;
pub use cache::{Always, Cache, Outcome};
pub use cachemacro::cached;
pub use clock::Clock;
pub use default::set_default;
pub use error::Error;
pub use policy::Policy;
pub use stats::{FunctionStats, Stats};

/// Types whose cached form is their id: `#[cached(ids = ...)]` stores the
/// ids of a result and fetches fresh objects by id on a hit, so updated rows
/// show their new values and deleted rows disappear.
pub trait CacheId {
    /// The id stored in the cache.
    type Id: serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + Eq
        + std::hash::Hash
        + Send
        + Sync
        + 'static;
    /// This object's id.
    fn cache_id(&self) -> Self::Id;
}
