//! What a computation decides about storing its own value: the TTL and
//! stale window from expressions evaluated when the value is computed
//! (`#[cached(ttl = FEED_TTL)]`, `ttl = settings::feed_ttl()`), from the
//! value itself (`ttl = |token| token.expires_in`), or not to store it at
//! all (`unless = |feed| feed.items.is_empty()`, or a TTL of zero).
//!
//! The decision travels with the computation's outcome to the write, so a
//! refresh in the background decides again for its own value. Reads do not
//! need it: an entry carries its fresh-until and stale-until.

use std::time::Duration;

use crate::policy::Policy;

/// What one computation decided; built by `#[cached]`'s generated code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    ttl: Option<Duration>,
    stale: Option<Duration>,
    skip: bool,
}

impl Decision {
    /// Store as the policy says.
    pub const fn new() -> Self {
        Decision {
            ttl: None,
            stale: None,
            skip: false,
        }
    }

    /// Keep the value fresh this long; zero means do not store it.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Serve it stale this long past its TTL while one caller refreshes.
    #[must_use]
    pub fn stale(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }

    /// Do not store the value (`unless = ..` said so).
    #[must_use]
    pub fn skip(mut self) -> Self {
        self.skip = true;
        self
    }

    /// Whether the value is not to be stored.
    pub(crate) fn stores_nothing(&self) -> bool {
        self.skip || self.ttl.is_some_and(|t| t.is_zero())
    }

    /// `policy` with this decision's TTL and stale window.
    pub(crate) fn apply(&self, policy: &Policy) -> Policy {
        let mut decided = *policy;
        if let Some(ttl) = self.ttl {
            decided = decided.ttl(ttl);
        }
        if let Some(stale) = self.stale {
            decided = decided.stale(stale);
        }
        decided
    }
}

/// What `ttl = ...` and `stale = ...` expressions may be: a [`Duration`],
/// or whole seconds as an integer (a negative number is zero: not stored).
#[diagnostic::on_unimplemented(
    message = "a `#[cached]` duration must be a `std::time::Duration` or whole seconds as an integer, not `{Self}`",
    label = "this expression",
    note = "write `Duration::from_secs(..)`, or an integer number of seconds"
)]
pub trait IntoTtl {
    /// The duration.
    fn into_ttl(self) -> Duration;
}

impl IntoTtl for Duration {
    fn into_ttl(self) -> Duration {
        self
    }
}

impl IntoTtl for &Duration {
    fn into_ttl(self) -> Duration {
        *self
    }
}

macro_rules! unsigned_seconds {
    ($($t:ty),*) => {$(
        impl IntoTtl for $t {
            fn into_ttl(self) -> Duration {
                Duration::from_secs(u64::from(self))
            }
        }
    )*};
}
unsigned_seconds!(u8, u16, u32, u64);

impl IntoTtl for usize {
    fn into_ttl(self) -> Duration {
        Duration::from_secs(u64::try_from(self).unwrap_or(u64::MAX))
    }
}

macro_rules! signed_seconds {
    ($($t:ty),*) => {$(
        impl IntoTtl for $t {
            fn into_ttl(self) -> Duration {
                Duration::from_secs(u64::try_from(self).unwrap_or(0))
            }
        }
    )*};
}
signed_seconds!(i8, i16, i32, i64, isize);

/// The duration of a `ttl = ...` / `stale = ...` expression.
#[inline]
pub fn ttl_of<T: IntoTtl>(value: T) -> Duration {
    value.into_ttl()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_whole_seconds_and_what_stores_nothing() {
        assert_eq!(ttl_of(90u32), Duration::from_secs(90));
        assert_eq!(ttl_of(-5i64), Duration::ZERO, "negative: not stored");
        assert_eq!(
            ttl_of(Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
        assert!(Decision::new().ttl(Duration::ZERO).stores_nothing());
        assert!(Decision::new().skip().stores_nothing());
        assert!(!Decision::new().ttl(Duration::from_secs(1)).stores_nothing());
        let p = Decision::new()
            .ttl(Duration::from_secs(7))
            .stale(Duration::from_secs(9))
            .apply(&Policy::new().ttl(Duration::from_secs(1)));
        assert_eq!(p.ttl_value(), Some(Duration::from_secs(7)));
        assert_eq!(p.stale, Some(Duration::from_secs(9)));
    }
}
