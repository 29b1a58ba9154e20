//! The stores a [`Cache`](crate::Cache) can sit on.

pub mod disabled;
#[cfg(any(feature = "redis", feature = "memcached"))]
pub(crate) mod generations;
#[cfg(feature = "memcached")]
#[cfg_attr(docsrs, doc(cfg(feature = "memcached")))]
pub mod memcached;
pub mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod sql;
mod store;

pub(crate) use store::Store;

pub use disabled::DisabledBackend;
pub use memory::MemoryBackend;
