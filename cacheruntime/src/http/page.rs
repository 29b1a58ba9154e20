//! A stored page, and the HTTP rules on both of its sides: which handler
//! responses may be stored (status, `Set-Cookie`, `Cache-Control`), and
//! what a response served from one carries downstream (`ETag`,
//! `Last-Modified`, `Age`, `Cache-Control`, `Vary`, `X-Cache`), including
//! the `304 Not Modified` answer to a conditional request.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, DATE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use ::http::response::Parts;
use ::http::{Response, StatusCode};
use bytes::Bytes;
use http_body::Body;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::body::CacheBody;
use super::layer::Settings;

/// A response as stored, with its headers ready to serve. Cheap to clone:
/// the memory store keeps one decoded page beside its entry and serves
/// clones of it, so a hit neither decodes nor copies the body.
#[derive(Clone)]
pub(crate) struct Page(Arc<Ready>);

/// What a page holds: the stored form, and what is derived from it once,
/// when the page is made or decoded.
struct Ready {
    stored: Stored,
    /// The stored headers parsed, with `Content-Length`; headers a stored
    /// name or value the `http` crate refuses are left out.
    headers: HeaderMap,
    last_modified: Option<SystemTime>,
    /// What a full response from the page carries under the first layer
    /// that serves it (its `Settings::id`): `headers` with `Cache-Control`,
    /// `Vary`, and `Age` and `X-Cache` set to be overwritten. A hit clones
    /// it and sets two values; other layers build theirs per response.
    served: OnceLock<(u64, HeaderMap)>,
}

/// A response as stored: status, end-to-end headers, body, and when and by
/// which request it was computed.
#[derive(Serialize, Deserialize)]
struct Stored {
    status: u16,
    /// Lower-case names; `ETag` and `Last-Modified` always among them.
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    /// Milliseconds since the epoch on the cache's clock.
    stored_ms: u64,
    /// Whether the layer wrote `Last-Modified` (the handler sent none).
    layer_dated: bool,
}

impl Serialize for Page {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.stored.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Page {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Stored::deserialize(deserializer).map(Page::ready)
    }
}

/// Why a handler's response is not stored (logged at debug level).
pub(crate) fn refusal(settings: &Settings, parts: &Parts) -> Option<&'static str> {
    if !settings.statuses.contains(&parts.status.as_u16()) {
        return Some("status not listed");
    }
    if parts.headers.contains_key(SET_COOKIE) {
        return Some("Set-Cookie");
    }
    if directives(&parts.headers, CACHE_CONTROL).any(|d| d == "private" || d == "no-store") {
        return Some("Cache-Control private or no-store");
    }
    // A response that varies on a header the key does not read (a
    // compression layer's `Vary: accept-encoding`) would be served to
    // requests it was not made for.
    if directives(&parts.headers, VARY)
        .any(|d| !settings.keyed_headers.iter().any(|k| k.as_str() == d))
    {
        return Some("Vary names a header the key does not read: add .vary_on_header(..)");
    }
    None
}

/// The lower-cased names of a comma-separated header's items.
fn directives(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let name = d.split('=').next().unwrap_or("");
            name.trim().to_ascii_lowercase()
        })
        .filter(|d| !d.is_empty())
}

/// Headers that belong to one connection or one transfer, never stored.
fn per_transfer(name: &HeaderName) -> bool {
    [CONNECTION, TRANSFER_ENCODING, CONTENT_LENGTH, DATE, AGE].contains(name)
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" | "x-cache"
        )
}

impl Page {
    /// Stores a response: adds a strong `ETag` (the body's SHA-256) and a
    /// `Last-Modified` (now) unless the handler sent its own.
    pub(crate) fn new(parts: &Parts, body: Bytes, now_ms: u64) -> Page {
        let mut headers: Vec<(String, Bytes)> = parts
            .headers
            .iter()
            .filter(|(n, _)| !per_transfer(n))
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        if !parts.headers.contains_key(ETAG) {
            let digest = Sha256::digest(&body);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            headers.push((ETAG.as_str().into(), format!("\"{hex}\"").into()));
        }
        let layer_dated = !parts.headers.contains_key(LAST_MODIFIED);
        if layer_dated {
            let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(now_ms));
            headers.push((LAST_MODIFIED.as_str().into(), date.into()));
        }
        Page::ready(Stored {
            status: parts.status.as_u16(),
            headers,
            body,
            stored_ms: now_ms,
            layer_dated,
        })
    }

    /// Parses what every response served from the page needs, once.
    fn ready(stored: Stored) -> Page {
        // Room for what `respond` adds, so that serving never rehashes.
        let mut headers = HeaderMap::with_capacity(stored.headers.len() + 6);
        for (name, value) in &stored.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value.clone()),
            ) {
                headers.append(name, value);
            }
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        let last_modified = headers
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        Page(Arc::new(Ready {
            stored,
            headers,
            last_modified,
            served: OnceLock::new(),
        }))
    }

    /// When the page was stored, in milliseconds on the cache's clock.
    pub(crate) fn stored_ms(&self) -> u64 {
        self.0.stored.stored_ms
    }

    fn status(&self) -> u16 {
        self.0.stored.status
    }

    #[cfg(test)]
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.0.headers.get(name).map(HeaderValue::as_bytes)
    }
}

/// What a request asks for conditionally.
pub(crate) struct Conditional {
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<SystemTime>,
}

impl Conditional {
    pub(crate) fn of(headers: &HeaderMap) -> Conditional {
        Conditional {
            if_none_match: headers.get_all(IF_NONE_MATCH).iter().cloned().collect(),
            if_modified_since: headers
                .get(IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        }
    }

    /// RFC 9110 §13.1.2 and §13.1.3: `If-None-Match` (weak comparison)
    /// decides when present; otherwise `If-Modified-Since` against
    /// `Last-Modified`. Only for 200 pages.
    fn not_modified(&self, page: &Page) -> bool {
        if page.status() != 200 {
            return false;
        }
        if !self.if_none_match.is_empty() {
            let Some(etag) = page.0.headers.get(ETAG) else {
                return false;
            };
            let etag = weak(etag.as_bytes());
            return self
                .if_none_match
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(|t| t.trim_ascii())
                .any(|t| t == b"*" || weak(t) == etag);
        }
        let Some(since) = self.if_modified_since else {
            return false;
        };
        if page.0.stored.layer_dated {
            // The layer's `Last-Modified` is the store time cut to the
            // second, so two pages stored in one second carry the same
            // date: only a page stored before `since` itself is unchanged
            // for sure. (Clients that send `If-None-Match` are answered by
            // the ETag, exactly.)
            let since_ms = since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64);
            return page.0.stored.stored_ms < since_ms;
        }
        matches!(page.0.last_modified, Some(modified) if modified <= since)
    }
}

fn weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// How a page reached this request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Served {
    Hit,
    Miss,
    Stale,
}

impl Served {
    fn label(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Stale => "stale",
        }
    }
}

/// The response for `page`: the stored one, or `304` when the request's
/// copy is current; without the body for HEAD.
pub(crate) fn respond<B: Body>(
    settings: &Settings,
    served: Served,
    conditional: &Conditional,
    head: bool,
    now_ms: u64,
    page: Page,
) -> Response<CacheBody<B>> {
    let not_modified = conditional.not_modified(&page);
    let mut headers = if not_modified {
        // RFC 9110 §15.4.5: a 304 carries what identifies and qualifies
        // the representation, not what describes its body.
        let mut kept = HeaderMap::with_capacity(page.0.headers.len() + 6);
        for (name, value) in &page.0.headers {
            if is_validator_or_cache_header(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    } else if let Some((_, served)) = page.0.served.get().filter(|(id, _)| *id == settings.id) {
        served.clone()
    } else {
        let mut full = page.0.headers.clone();
        add_layer_headers(settings, &mut full);
        // Placeholders, overwritten below: setting a present name never
        // grows the map.
        full.insert(AGE, HeaderValue::from_static("0"));
        if settings.x_cache {
            full.insert(X_CACHE, HeaderValue::from_static("hit"));
        }
        let _ = page.0.served.set((settings.id, full.clone()));
        full
    };
    if not_modified {
        add_layer_headers(settings, &mut headers);
    }
    if served == Served::Miss {
        headers.remove(AGE);
    } else {
        let age = now_ms.saturating_sub(page.stored_ms()) / 1000;
        headers.insert(AGE, age_value(age));
    }
    if settings.x_cache {
        headers.insert(X_CACHE, HeaderValue::from_static(served.label()));
    }
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::from_u16(page.status()).unwrap_or(StatusCode::OK)
    };
    let body = if not_modified || head {
        CacheBody::empty()
    } else {
        CacheBody::full(page.0.stored.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the layer adds to every page it serves: its `Cache-Control` unless
/// the handler sent one, and `Vary`.
fn add_layer_headers(settings: &Settings, headers: &mut HeaderMap) {
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, settings.cache_control.clone());
    }
    if let Some(vary) = &settings.vary_header {
        headers.append(VARY, vary.clone());
    }
}

/// `Age` in seconds; the first minute's values are static, so that most
/// hits on a page with a short TTL allocate nothing for it.
fn age_value(secs: u64) -> HeaderValue {
    const SMALL: [&str; 60] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59",
    ];
    match SMALL.get(secs as usize) {
        Some(small) => HeaderValue::from_static(small),
        None => HeaderValue::from(secs),
    }
}

fn is_validator_or_cache_header(name: &HeaderName) -> bool {
    [ETAG, LAST_MODIFIED, CACHE_CONTROL, VARY].contains(name)
        || matches!(name.as_str(), "expires" | "content-location")
}

/// Marks a response that was not stored: the handler ran, so `X-Cache:
/// miss`; HEAD gets its headers without the body.
pub(crate) fn uncached<B: Body>(
    settings: &Settings,
    mut response: Response<CacheBody<B>>,
    head: bool,
) -> Response<CacheBody<B>> {
    if settings.x_cache {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static("miss"));
    }
    if head {
        *response.body_mut() = CacheBody::empty();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(etag: Option<&str>) -> Page {
        let mut builder = Response::builder().status(200);
        if let Some(tag) = etag {
            builder = builder.header(ETAG, tag);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        Page::new(&parts, Bytes::from_static(b"hello"), 1_700_000_000_000)
    }

    #[test]
    fn etag_is_the_body_hash_unless_the_handler_sent_one() {
        let p = page(None);
        let tag = std::str::from_utf8(p.header(&ETAG).unwrap()).unwrap();
        assert!(tag.starts_with('"') && tag.len() == 34, "{tag}");
        assert_eq!(page(Some("\"v1\"")).header(&ETAG).unwrap(), b"\"v1\"");
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let p = page(Some("\"v1\""));
        let cond = |inm: Option<&str>, ims: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = inm {
                h.insert(IF_NONE_MATCH, v.parse().unwrap());
            }
            if let Some(v) = ims {
                h.insert(IF_MODIFIED_SINCE, v.parse().unwrap());
            }
            Conditional::of(&h).not_modified(&p)
        };
        assert!(cond(Some("\"x\", W/\"v1\""), None));
        assert!(cond(Some("*"), None));
        assert!(!cond(Some("\"x\""), Some("Fri, 01 Jan 2100 00:00:00 GMT")));
        assert!(cond(None, Some("Fri, 01 Jan 2100 00:00:00 GMT")));
        assert!(!cond(None, Some("Thu, 01 Jan 1970 00:00:00 GMT")));
        assert!(!cond(None, None));
    }

    /// Two pages stored within one second carry the same layer-written
    /// `Last-Modified`: a client holding the first must not be told by
    /// `If-Modified-Since` that the second is what it has.
    #[test]
    fn if_modified_since_never_confuses_two_pages_of_one_second() {
        let (parts, ()) = Response::builder()
            .status(200)
            .body(())
            .unwrap()
            .into_parts();
        let first = Page::new(&parts, Bytes::from_static(b"old"), 1_700_000_000_100);
        let second = Page::new(&parts, Bytes::from_static(b"new"), 1_700_000_000_900);
        let held = first.header(&LAST_MODIFIED).unwrap().to_vec();
        assert_eq!(held, second.header(&LAST_MODIFIED).unwrap(), "one second");
        let mut h = HeaderMap::new();
        h.insert(IF_MODIFIED_SINCE, HeaderValue::from_bytes(&held).unwrap());
        assert!(!Conditional::of(&h).not_modified(&second), "the new page");
        let mut later = HeaderMap::new();
        later.insert(
            IF_MODIFIED_SINCE,
            "Tue, 14 Nov 2023 22:13:21 GMT".parse().unwrap(),
        );
        assert!(
            Conditional::of(&later).not_modified(&second),
            "a later date: unchanged"
        );
    }
}
