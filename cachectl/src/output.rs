//! What `cachectl` prints: the human text and the `--json` document of
//! each answer.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use cacheruntime::backend::StoreInfo;
use cacheruntime::inspect::{EntryInfo, Freshness, Signature};
use serde_json::{json, Value};

/// A key as printed for people: as it is, or escaped (`\n`, `\u{1b}`) when
/// it holds a control character, so one key stays one line and no escape
/// sequence reaches the terminal.
pub(crate) fn shown(key: &str) -> String {
    if key.chars().any(char::is_control) {
        key.escape_debug().to_string()
    } else {
        key.to_owned()
    }
}

/// `info`: one `name: value` line each, warnings last.
pub(crate) fn store_info(info: &StoreInfo) -> (String, Value) {
    let mut human = format!("kind: {}\n", shown(&info.kind));
    let mut line = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(human, "{name}: {}", shown(value));
        }
    };
    line("version", &info.version);
    line(
        "tls",
        &info.tls.map(|on| if on { "yes" } else { "no" }.to_owned()),
    );
    line("eviction", &info.eviction);
    line("memory", &info.memory);
    for (name, value) in &info.details {
        let _ = writeln!(human, "{}: {}", shown(name), shown(value));
    }
    for warning in &info.warnings {
        let _ = writeln!(human, "warning: {}", shown(warning));
    }
    if info.warnings.is_empty() {
        human.push_str("warnings: none\n");
    }
    let details: serde_json::Map<String, Value> = info
        .details
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let document = json!({
        "kind": info.kind,
        "version": info.version,
        "tls": info.tls,
        "eviction": info.eviction,
        "memory": info.memory,
        "warnings": info.warnings,
        "details": details,
    });
    (human.trim_end().to_owned(), document)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time as RFC 3339; past what RFC 3339 writes (the year 9999: a
/// deadline of an entry kept until evicted, or a damaged header), its
/// milliseconds since the epoch.
fn rfc3339(t: SystemTime) -> String {
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_millis(t)) {
        Ok(()) => text,
        Err(_) => format!("{} ms since the Unix epoch", ms(t)),
    }
}

fn signature(s: Signature) -> &'static str {
    match s {
        Signature::Unsigned => "unsigned",
        Signature::Verified => "verified",
        Signature::Invalid => "INVALID (no signing key verifies it: a reader refuses it)",
        Signature::Unchecked => "signed, not checked (set CACHE_SIGNING_KEY to check it)",
        Signature::Missing => {
            "MISSING (unsigned, and the signing keys require one: a reader refuses it)"
        }
        _ => "unknown",
    }
}

fn freshness(f: Freshness) -> &'static str {
    match f {
        Freshness::Fresh => "fresh",
        Freshness::Stale => "stale (served while refreshed)",
        Freshness::KeptForErrors => "expired, kept for stale_if_error",
        Freshness::Expired => "expired",
        _ => "unknown",
    }
}

/// `inspect`: the envelope, decoded.
pub(crate) fn inspected(key: &str, e: &EntryInfo) -> (String, Value) {
    let tags: Vec<Value> = e
        .tags
        .iter()
        .map(|(tag, token)| json!({ "tag": tag, "token": token }))
        .collect();
    let mut human = String::new();
    let _ = writeln!(human, "key: {}", shown(key));
    let _ = writeln!(human, "stored as: {}", shown(&e.stored_key));
    let _ = writeln!(human, "state: {}", freshness(e.freshness));
    let written = e.written_at.map_or_else(
        || "not recorded (format 2: the writing cache did not set record_written_at)".to_owned(),
        rfc3339,
    );
    let _ = writeln!(human, "written at: {written}");
    let _ = writeln!(human, "fresh until: {}", rfc3339(e.fresh_until));
    let _ = writeln!(human, "stale until: {}", rfc3339(e.stale_until));
    let _ = writeln!(human, "kept until: {}", rfc3339(e.kept_until));
    let _ = writeln!(human, "codec: {}", e.codec);
    let _ = writeln!(human, "fingerprint: {:016x}", e.fingerprint);
    let _ = writeln!(human, "signature: {}", signature(e.signature));
    let _ = writeln!(
        human,
        "size: {} bytes stored, payload {} bytes{}",
        e.size,
        e.payload.len(),
        if e.compressed {
            " (zstd-compressed)"
        } else {
            ""
        }
    );
    let _ = writeln!(human, "computed in: {} ms", e.compute_time.as_millis());
    for (tag, token) in &e.tags {
        let _ = writeln!(human, "tag: {} (token {token:016x})", shown(tag));
    }
    let document = json!({
        "key": key,
        "found": true,
        "stored_key": e.stored_key,
        "state": format!("{:?}", e.freshness).to_lowercase(),
        "written_at": e.written_at.map(rfc3339),
        "written_at_ms": e.written_at.map(ms),
        "fresh_until": rfc3339(e.fresh_until),
        "fresh_until_ms": ms(e.fresh_until),
        "stale_until": rfc3339(e.stale_until),
        "stale_until_ms": ms(e.stale_until),
        "kept_until": rfc3339(e.kept_until),
        "kept_until_ms": ms(e.kept_until),
        "codec": e.codec,
        "fingerprint": format!("{:016x}", e.fingerprint),
        "signature": format!("{:?}", e.signature).to_lowercase(),
        "compressed": e.compressed,
        "size": e.size,
        "payload_size": e.payload.len(),
        "compute_ms": e.compute_time.as_millis() as u64,
        "tags": tags,
    });
    (human.trim_end().to_owned(), document)
}

/// `get`: 16 bytes a line, offset, hex, and the printable ones.
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_control_characters_are_shown_escaped_on_one_line() {
        assert_eq!(shown("author:1"), "author:1");
        assert_eq!(shown("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn hex_dumps_show_offsets_bytes_and_text() {
        let dump = hex_dump(b"\x05hello, cache world!");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("00000000  05 68 65 6c"), "{dump}");
        assert!(lines[0].ends_with(".hello, cache wo"), "{dump}");
        assert!(lines[1].starts_with("00000010  72 6c 64 21"), "{dump}");
    }
}
