//! What a get-or-compute call returns, and which part of it is cached.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::decision::Decision;

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
    /// What the computation decided about storing its value.
    #[inline]
    fn decision(&self) -> Decision {
        Decision::new()
    }
    /// Whether the computation succeeded but declined to store its value.
    #[inline]
    fn declined(&self) -> bool {
        false
    }
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

/// An outcome with its computation's [`Decision`]: a value it declines
/// (`unless`, a zero TTL) is not cacheable, so it is neither stored nor
/// shared with waiters, exactly like an `Err`.
pub(crate) struct Decided<O>(pub(crate) O, pub(crate) Decision);

impl<O: Outcome> Outcome for Decided<O> {
    type Value = O::Value;
    #[inline]
    fn cacheable(&self) -> Option<&O::Value> {
        if self.1.stores_nothing() {
            None
        } else {
            self.0.cacheable()
        }
    }
    #[inline]
    fn from_cached(value: O::Value) -> Self {
        Decided(O::from_cached(value), Decision::new())
    }
    #[inline]
    fn decision(&self) -> Decision {
        self.1
    }
    #[inline]
    fn declined(&self) -> bool {
        self.1.stores_nothing() && self.0.cacheable().is_some()
    }
}
