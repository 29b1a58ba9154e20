//! The one duration grammar of cacheruntime.
//!
//! The `#[cached]` macro reads `ttl = "1h30m"` at compile time and the
//! runtime reads `?default_ttl=10m` in cache URLs. Both call [`parse`], so a
//! form accepted in one place is accepted, with the same value, in the other.
//! It is a crate of its own because the macro crate cannot depend on the
//! runtime (the runtime depends on it) and both must build from their own
//! package.
//!
//! Why not `humantime`: it accepts more than this grammar has promised
//! (`"10 minutes"`, `"2 days"`, and `"1M"` meaning a month beside `"1m"`
//! meaning a minute), so a typo could compile into a TTL thirty thousand
//! times too long; and it refuses bare seconds (`300`), which the README and
//! the URLs document.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

/// Parses a duration: whole seconds (`300`), or one or more
/// `<digits><unit>` spans written together (`90s`, `10m`, `1h30m`, `250ms`,
/// `1d`), with the units `ms`, `s`, `m`, `h` and `d`. Whitespace around the
/// text is ignored; anything else (spaces inside, fractions, signs, other
/// unit names, an overflow) is `None`.
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let span = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(span)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Inputs and what [`parse`] makes of them: every documented form and the
/// near misses users write. `tests/cached.rs` feeds the same texts to
/// `#[cached(ttl = ...)]` and to the runtime's URL parser and checks that
/// they agree with this table.
pub const EXAMPLES: &[(&str, Option<Duration>)] = &[
    ("300", Some(Duration::from_secs(300))),
    ("90s", Some(Duration::from_secs(90))),
    ("10m", Some(Duration::from_secs(600))),
    ("1h", Some(Duration::from_secs(3600))),
    ("1h30m", Some(Duration::from_secs(5400))),
    ("250ms", Some(Duration::from_millis(250))),
    ("500ms", Some(Duration::from_millis(500))),
    ("1d", Some(Duration::from_secs(86_400))),
    ("7d", Some(Duration::from_secs(604_800))),
    ("1m30s", Some(Duration::from_secs(90))),
    ("1s500ms", Some(Duration::from_millis(1500))),
    (" 90s ", Some(Duration::from_secs(90))),
    ("", None),
    ("h", None),
    ("1x", None),
    ("1h 30m", None),
    ("10 minutes", None),
    ("an hour", None),
    ("soon", None),
    ("1.5h", None),
    ("-5s", None),
    ("1M", None),
    ("99999999999999999999", None),
    ("999999999999999999d", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_parses_as_listed() {
        for &(text, expected) in EXAMPLES {
            assert_eq!(parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn bare_seconds_take_the_whole_u64_range() {
        assert_eq!(
            parse("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
