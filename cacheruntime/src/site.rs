//! One `#[cached]` function's static data: name, policy, counters.

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
    /// Generic functions can return several types; their fingerprint is
    /// computed per call instead of once.
    generic: bool,
    fingerprint: OnceLock<u64>,
    default_prefix: OnceLock<String>,
    pub(crate) hits: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) misses: Counter,
    /// Id of the cache this site was last registered with (0: none).
    pub(crate) last_cache: AtomicU64,
}

impl Site {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        module: &'static str,
        policy: Policy,
        generic: bool,
    ) -> Self {
        Site {
            name,
            module,
            policy,
            generic,
            fingerprint: OnceLock::new(),
            default_prefix: OnceLock::new(),
            hits: Counter::new(),
            stale_hits: Counter::new(),
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
        let compute = || envelope::fingerprint(std::any::type_name::<T>(), self.policy.version);
        if self.generic {
            compute()
        } else {
            *self.fingerprint.get_or_init(compute)
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
