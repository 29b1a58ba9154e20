#![doc = include_str!("../docs/crate.md")]
#![warn(missing_docs)]
// docs.rs builds on nightly with `--cfg docsrs` (Cargo.toml). Since the
// `doc_auto_cfg` feature was merged into `doc_cfg` (rust-lang/rust#138907),
// `doc_cfg` alone labels every `#[cfg(feature = "..")]` item with its
// feature (checked on nightly 1.97: `PostcardCodec`, which has no
// `doc(cfg)`, shows "Available on crate feature postcard only"), so items
// need no `#[cfg_attr(docsrs, doc(cfg(..)))]` of their own.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
pub mod backend;
pub mod backends;
mod breaker;
mod builder;
mod cache;
mod changes;
mod clock;
pub mod codec;
pub mod commit;
mod compress;
mod config;
mod counter;
mod decision;
mod default;
mod engine;
mod entry;
// The entry format: crate-private, but the fuzz targets and property tests
// feed it bytes directly (feature `fuzzing`; no stability promise).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod envelope;
#[cfg(not(feature = "fuzzing"))]
mod envelope;
mod errlog;
mod error;
mod fetch;
mod flight;
mod guarded;
#[cfg(feature = "http")]
pub mod http;
mod ids;
pub mod inspect;
pub mod key;
mod lag;
mod lock;
mod many;
mod memo;
mod named;
mod near;
mod ops;
mod outcome;
mod params;
mod policy;
mod read;
mod reader;
mod refresh;
mod secrets;
#[cfg(feature = "metrics")]
mod series;
pub mod signing;
mod site;
#[cfg(feature = "spans")]
mod spans;
mod stamp;
mod stats;
mod swap;
pub mod tags;
mod ticket;
pub mod url;
mod warm;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::Backend;
pub use builder::CacheBuilder;
pub use cache::Cache;
#[doc = include_str!("../docs/cached.md")]
#[doc(inline)]
pub use cachemacro::cached;
pub use clock::Clock;
pub use default::set_default;
pub use error::Error;
pub use lag::LagHistogram;
pub use named::{Caches, CachesBuilder};
pub use policy::{Policy, UNTIL_EVICTED};
pub use stats::{FunctionStats, Stats};

/// Types whose cached form is their id: `#[cached(ids = ...)]` stores the
/// ids of a result and fetches fresh objects by id on a hit, so updated rows
/// show their new values and deleted rows disappear.
///
/// Implement it on the row type, returning its primary key: the id is what
/// the store keeps (so it must be serde-serializable, and `Eq + Hash`, since
/// hits put the fetched rows back in the stored order by id), while the row
/// itself need not be `Serialize` at all.
///
/// ```
/// use cacheruntime::CacheId;
///
/// struct Book { id: i64, title: String }
///
/// impl CacheId for Book {
///     type Id = i64;
///     fn cache_id(&self) -> i64 { self.id }
/// }
///
/// let book = Book { id: 7, title: "Emma".into() };
/// assert_eq!(book.cache_id(), 7);
/// # let _ = book.title;
/// ```
///
/// The [`ids` option](cached#ids) shows it in a `#[cached]` function, with
/// the hydrator that fetches rows by id.
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

/// The README's Rust snippets, compiled and run with the doctests, so the
/// project's front page cannot drift from the API. The README lives outside
/// the package, so this exists only when doctests are collected.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
