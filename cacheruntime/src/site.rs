//! One `#[cached]` function's static data: name, policy, counters, and the
//! default key's first segment.
//!
//! A `static` inside a generic function (or in any function of a generic
//! `impl`, whose parameters the macro cannot see) is one static for every
//! instantiation. So what a site caches for a type is kept beside the type
//! name it was computed from, and served only to callers of that same type
//! name; other instantiations compute theirs on the spot.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use crate::envelope;
use crate::policy::Policy;
use crate::stats::Counter;

/// The `function` that metrics and spans give calls made without
/// `#[cached]` (`get_or_compute`, the HTTP layer).
#[cfg(any(feature = "metrics", feature = "spans"))]
pub(crate) const DIRECT: &str = "(direct)";

/// The static every `#[cached]` function expands to. Not public API.
#[doc(hidden)]
pub struct Site {
    pub(crate) name: &'static str,
    pub(crate) module: &'static str,
    pub(crate) policy: Policy,
    /// The value type's name and its fingerprint.
    fingerprint: OnceLock<(&'static str, u64)>,
    /// The function's path (the name of a closure type made in its body)
    /// and the default key's first segment rendered from it.
    default_prefix: OnceLock<(&'static str, String)>,
    pub(crate) hits: Counter,
    pub(crate) stale_hits: Counter,
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
        let type_name = std::any::type_name::<T>();
        let compute = || envelope::fingerprint(type_name, self.policy.version);
        let &(from, fingerprint) = self.fingerprint.get_or_init(|| (type_name, compute()));
        if same_name(from, type_name) {
            fingerprint
        } else {
            compute()
        }
    }

    /// The first segment of a key without a template, for the function
    /// whose body made `probe` (a closure, `|| ()`), as the module's
    /// `default_prefix` renders it: borrowed from the site for the
    /// instantiation that came first (a hit allocates nothing for it),
    /// computed for others.
    #[doc(hidden)]
    #[inline]
    pub fn default_prefix<C>(&self, probe: C, line: u32, column: u32) -> Cow<'_, str> {
        let path = type_name_of(probe);
        let (from, prefix) = self
            .default_prefix
            .get_or_init(|| (path, default_prefix(path, line, column)));
        if same_name(from, path) {
            Cow::Borrowed(prefix)
        } else {
            Cow::Owned(default_prefix(path, line, column))
        }
    }
}

/// The type name of a value, taken by value so a closure literal can be
/// passed as it is.
#[inline(always)]
pub(crate) fn type_name_of<C>(_probe: C) -> &'static str {
    std::any::type_name::<C>()
}

/// Type names are usually the same `&'static str` on every call: compare
/// the pointers first, then the text (the same name can be emitted in
/// several places of a binary).
#[inline(always)]
fn same_name(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The default key's first segment from the type name of a closure made in
/// the function's body: `my_app::Users::count::{{closure}}::{{closure}}`
/// (an `async fn` adds closures) becomes `my_app.Users.count`. The path
/// carries what tells functions apart: the impl type and its generic
/// arguments, the function's own (`row_count<my_app::Books>`), and the
/// functions it is nested in. Dots replace `::` and the rest is escaped like
/// an interpolated value, so the path stays one key segment.
///
/// Then `@L<line>C<column>` of the `#[cached]` attribute: two functions of
/// one name nested in sibling blocks of one function have the same path
/// (type names do not show blocks), never the same place in the file.
pub(crate) fn default_prefix(path: &str, line: u32, column: u32) -> String {
    let mut path = path;
    while let Some(rest) = path.strip_suffix("::{{closure}}") {
        path = rest;
    }
    let mut out = crate::key::escape(&path.replace("::", ".")).into_owned();
    let _ = write!(out, "@L{line}C{column}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefixes_are_one_readable_segment() {
        assert_eq!(
            default_prefix("my_app::Users::count::{{closure}}::{{closure}}", 1, 2),
            "my_app.Users.count@L1C2"
        );
        assert_eq!(
            default_prefix("my_app::row_count<my_app::Books>::{{closure}}", 1, 2),
            "my_app.row_count<my_app.Books>@L1C2"
        );
        assert_eq!(
            default_prefix("my_app::outer::{{closure}}::inner::{{closure}}", 1, 2),
            "my_app.outer.{{closure}}.inner@L1C2"
        );
        assert_eq!(
            default_prefix("<my_app::Foo as my_app::Tr>::m::{{closure}}", 1, 2),
            "<my_app.Foo%20as%20my_app.Tr>.m@L1C2"
        );
        assert_eq!(
            default_prefix("my_app::f<'_, u8, ':'>::{{closure}}", 1, 2),
            "my_app.f<'_,%20u8,%20'%3A'>@L1C2"
        );
    }

    #[test]
    fn each_value_type_gets_its_own_fingerprint() {
        static SITE: Site = Site::new("f", "m", Policy::new());
        let u8_fp = SITE.fingerprint::<u8>();
        assert_ne!(SITE.fingerprint::<u16>(), u8_fp);
        assert_eq!(SITE.fingerprint::<u8>(), u8_fp);
    }

    #[test]
    fn each_instantiation_gets_its_own_default_prefix() {
        static SITE: Site = Site::new("f", "m", Policy::new());
        // `T` shows in the closure's type name, which is the point.
        #[allow(clippy::extra_unused_type_parameters)]
        fn probe<T>() -> impl Fn() {
            || ()
        }
        let first = SITE.default_prefix(probe::<u8>(), 3, 4);
        assert!(matches!(first, Cow::Borrowed(_)), "{first}");
        assert!(first.ends_with("probe<u8>@L3C4"), "{first}");
        let other = SITE.default_prefix(probe::<u16>(), 3, 4);
        assert!(other.ends_with("probe<u16>@L3C4"), "{other}");
        let again = SITE.default_prefix(probe::<u8>(), 3, 4);
        assert!(matches!(again, Cow::Borrowed(_)), "{again}");
    }
}
