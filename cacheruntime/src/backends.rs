//! The stores a [`Cache`](crate::Cache) can sit on.

pub mod disabled;
pub mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use disabled::DisabledBackend;
pub use memory::MemoryBackend;
