//! The stores a [`Cache`](crate::Cache) can sit on.

pub mod disabled;
pub mod memory;

pub use disabled::DisabledBackend;
pub use memory::MemoryBackend;
