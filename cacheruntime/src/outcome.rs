//! What a get-or-compute call returns, and which part of it is cached.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a get-or-compute call returns, and which part of it is cached.
///
/// `Result<T, E>` caches `Ok` only; [`Always<T>`] caches every value,
/// `None` included (negative caching).
pub(crate) trait Outcome: Sized {
    /// The stored type.
    type Value: Serialize + DeserializeOwned;
    /// The part to store, if any.
    fn cacheable(&self) -> Option<&Self::Value>;
    /// Rebuilds the outcome from a stored value.
    fn from_cached(value: Self::Value) -> Self;
}

impl<T: Serialize + DeserializeOwned, E> Outcome for Result<T, E> {
    type Value = T;
    #[inline]
    fn cacheable(&self) -> Option<&T> {
        self.as_ref().ok()
    }
    #[inline]
    fn from_cached(value: T) -> Self {
        Ok(value)
    }
}

/// An outcome that is always cached.
#[derive(Debug)]
pub(crate) struct Always<T>(pub(crate) T);

impl<T: Serialize + DeserializeOwned> Outcome for Always<T> {
    type Value = T;
    #[inline]
    fn cacheable(&self) -> Option<&T> {
        Some(&self.0)
    }
    #[inline]
    fn from_cached(value: T) -> Self {
        Always(value)
    }
}
