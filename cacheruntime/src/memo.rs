//! Keeping a decoded copy of hot in-process entries.
//!
//! A memory hit would otherwise decode the stored bytes on every call. For
//! value types that are `Clone`, the cache keeps the first decoded value
//! beside the entry and serves clones of it, which is what a hand-written
//! in-process cache does. `#[cached]` picks the mode at compile time by
//! autoref specialisation ([`Probe`]); generic functions and the direct API
//! decode.

use std::any::Any;
use std::marker::PhantomData;

/// A decoded value, type-erased.
pub type Decoded = Box<dyn Any + Send + Sync>;

/// How values of `T` may be memoised: clone functions, or none.
pub struct Memo<T> {
    pub(crate) get: Option<fn(&Decoded) -> Option<T>>,
    pub(crate) put: Option<fn(&T) -> Decoded>,
}

impl<T> Clone for Memo<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Memo<T> {}

impl<T> Memo<T> {
    /// Decode on every hit.
    pub const fn decode_only() -> Self {
        Memo {
            get: None,
            put: None,
        }
    }
}

fn get_cloned<T: Clone + 'static>(decoded: &Decoded) -> Option<T> {
    decoded.downcast_ref::<T>().cloned()
}

fn put_cloned<T: Clone + Send + Sync + 'static>(value: &T) -> Decoded {
    Box::new(value.clone())
}

impl<T: Clone + Send + Sync + 'static> Memo<T> {
    /// Keep a decoded copy and serve clones of it.
    pub const fn cloning() -> Self {
        Memo {
            get: Some(get_cloned::<T>),
            put: Some(put_cloned::<T>),
        }
    }
}

/// Picks [`Memo::cloning`] when `T: Clone + Send + Sync + 'static` and
/// [`Memo::decode_only`] otherwise: `(&&Probe::<T>::new()).memo()`.
pub struct Probe<T>(PhantomData<T>);

impl<T> Probe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The specialised choice (found first, on `&&Probe<T>`).
pub trait ViaClone<T> {
    /// The memo mode for `T`.
    fn memo(&self) -> Memo<T>;
}

impl<T: Clone + Send + Sync + 'static> ViaClone<T> for &Probe<T> {
    fn memo(&self) -> Memo<T> {
        Memo::cloning()
    }
}

/// The fallback (found after one auto-deref).
pub trait ViaDecode<T> {
    /// The memo mode for `T`.
    fn memo(&self) -> Memo<T>;
}

impl<T> ViaDecode<T> for Probe<T> {
    fn memo(&self) -> Memo<T> {
        Memo::decode_only()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NotClone;

    #[test]
    #[allow(clippy::needless_borrow)]
    fn probe_picks_cloning_only_for_clone_types() {
        #[allow(unused_imports)]
        use super::{ViaClone as _, ViaDecode as _};
        assert!((&&Probe::<Vec<i64>>::new()).memo().get.is_some());
        assert!((&&Probe::<NotClone>::new()).memo().get.is_none());
    }
}
