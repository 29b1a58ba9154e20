//! One `#[cached]` function's static data: name, policy, counters.
//!
//! A `static` inside a generic function (or in any function of a generic
//! `impl`, whose parameters the macro cannot see) is one static for every
//! instantiation. So what a site caches for a type is kept beside the type
//! name it was computed from, and served only to callers of that same type
//! name; other instantiations compute theirs on the spot.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use crate::envelope;
use crate::policy::Policy;
use crate::stats::Counter;

/// The static every `#[cached]` function expands to. Not public API.
#[doc(hidden)]
pub struct Site {
    pub(crate) name: &'static str,
    pub(crate) module: &'static str,
    pub(crate) policy: Policy,
    /// The value type's name and its fingerprint.
    fingerprint: OnceLock<(&'static str, u64)>,
    default_prefix: OnceLock<String>,
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    /// Id of the cache this site was last registered with (0: none).
    pub(crate) last_cache: AtomicU64,
}

impl Site {
    #[doc(hidden)]
    pub const fn new(name: &'static str, module: &'static str, policy: Policy) -> Self {
        Site {
            name,
            module,
            policy,
            fingerprint: OnceLock::new(),
            default_prefix: OnceLock::new(),
            hits: Counter::new(),
            misses: Counter::new(),
            last_cache: AtomicU64::new(0),
        }
    }

    pub(crate) fn qualified_name(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }

    /// The policy of the function.
    #[doc(hidden)]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    #[inline]
    pub(crate) fn fingerprint<T: ?Sized>(&self) -> u64 {
        let type_name = std::any::type_name::<T>();
        let compute = || envelope::fingerprint(type_name, self.policy.version);
        let &(from, fingerprint) = self.fingerprint.get_or_init(|| (type_name, compute()));
        if same_name(from, type_name) {
            fingerprint
        } else {
            compute()
        }
    }

    /// `module.path.function`: the start of a key without a template. Dots,
    /// not `::`, so the path stays one key segment.
    #[doc(hidden)]
    pub fn default_prefix(&self) -> &str {
        self.default_prefix
            .get_or_init(|| format!("{}.{}", self.module.replace("::", "."), self.name))
    }
}

/// Type names are usually the same `&'static str` on every call: compare
/// the pointers first, then the text (the same name can be emitted in
/// several places of a binary).
#[inline(always)]
fn same_name(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_type_gets_its_own_fingerprint() {
        static SITE: Site = Site::new("f", "m", Policy::new());
        let u8_fp = SITE.fingerprint::<u8>();
        assert_ne!(SITE.fingerprint::<u16>(), u8_fp);
        assert_eq!(SITE.fingerprint::<u8>(), u8_fp);
    }
}
