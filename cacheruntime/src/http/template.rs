//! Page keys: the template, parsed and checked once when the layer is built
//! (a placeholder the layer cannot see is an error at startup, not a
//! surprise per request), and rendered per request with every value made
//! unable to forge another key.
//!
//! Values are escaped with the rules of [`crate::key`] (`:` is `%3A`), so a
//! path, a header or a cookie carrying `:` never adds a segment; the query
//! is rewritten in one canonical encoding, which has no `:` either. The
//! canonical forms also close a cache-poisoning hole: the layer must see a
//! request the way the handler's extractors do, or `?pag%65=2` (which the
//! handler reads as `page=2`) could be stored under the key of a request
//! without `page`.

use std::borrow::Cow;

use ::http::header::{HeaderName, AUTHORIZATION, COOKIE};
use ::http::{HeaderMap, Method, Uri};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use super::layer::LayerError;
use crate::key::{self, KeyBuilder};

/// What the template may name, in the error that refuses anything else.
const KNOWN: &str = "{method}, {path}, {query}, {header:NAME} and {cookie:NAME}";

/// One piece of a template.
#[derive(Debug)]
enum Part {
    Literal(String),
    Method,
    Path,
    Query,
    Header(HeaderName),
    Cookie(String),
}

/// A parsed key template.
#[derive(Debug)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses and checks `source`: known placeholders only, a `:` between
    /// any two of them (so two renderings never run into each other), no
    /// `#` (it marks shortened long keys) and no NUL.
    pub(crate) fn parse(source: &str) -> Result<Template, LayerError> {
        let err = |reason: String| LayerError::Template {
            template: source.to_owned(),
            reason,
        };
        if source.is_empty() {
            return Err(err(format!(
                "the template is empty: write the page's key, such as \"page:{{path}}:{{query}}\" \
                 (placeholders: {KNOWN})"
            )));
        }
        if source.contains(['#', '\0']) {
            return Err(err(
                "'#' and NUL are not allowed in a key template ('#' marks shortened long keys)"
                    .into(),
            ));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            let open = rest.find(['{', '}']).unwrap_or(rest.len());
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
                rest = &rest[open..];
                continue;
            }
            if rest.starts_with('}') {
                return Err(err("a '}' with no '{' before it".into()));
            }
            let Some(close) = rest.find('}') else {
                return Err(err("a '{' with no '}' after it".into()));
            };
            let name = &rest[1..close];
            rest = &rest[close + 1..];
            if matches!(parts.last(), Some(p) if !matches!(p, Part::Literal(_)))
                || matches!(parts.last(), Some(Part::Literal(l)) if !l.contains(':') && parts.len() > 1)
            {
                return Err(err(format!(
                    "{{{name}}} follows another placeholder without a ':' between them: \
                     write \"...:{{{name}}}\" so two values cannot run into each other"
                )));
            }
            parts.push(placeholder(name).map_err(err)?);
        }
        Ok(Template { parts })
    }

    /// The headers the template reads (for `Vary`).
    pub(crate) fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.parts.iter().filter_map(|p| match p {
            Part::Header(h) => Some(h),
            _ => None,
        })
    }

    /// Whether the template reads a cookie (so responses vary on `Cookie`).
    pub(crate) fn reads_cookies(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Cookie(_)))
    }

    /// Renders the key of a request (its head) into `out`.
    pub(crate) fn render(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        query: &QueryRules,
        out: &mut KeyBuilder,
    ) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => {
                    out.literal(text);
                }
                // HEAD is answered from the GET entry.
                Part::Method if method == Method::HEAD => {
                    out.literal("GET");
                }
                Part::Method => {
                    out.value(method.as_str());
                }
                Part::Path => {
                    out.value(&normal_path(uri.path()));
                }
                // Canonical encoding: no ':', '#', whitespace or controls.
                Part::Query => {
                    out.literal(&query.normalise(uri.query()));
                }
                Part::Header(name) => {
                    out.literal(&header_segment(headers, name));
                }
                Part::Cookie(name) => {
                    out.value(cookie(headers, name).unwrap_or(""));
                }
            }
        }
    }
}

fn placeholder(name: &str) -> Result<Part, String> {
    match name {
        "method" => return Ok(Part::Method),
        "path" => return Ok(Part::Path),
        "query" => return Ok(Part::Query),
        _ => {}
    }
    if let Some(header) = name.strip_prefix("header:") {
        return HeaderName::from_bytes(header.as_bytes())
            .map(Part::Header)
            .map_err(|_| format!("{{{name}}}: {header:?} is not a valid header name"));
    }
    if let Some(cookie) = name.strip_prefix("cookie:") {
        if cookie.is_empty() || cookie.contains([';', '=', ' ', ',']) {
            return Err(format!("{{{name}}}: {cookie:?} is not a cookie name"));
        }
        return Ok(Part::Cookie(cookie.to_owned()));
    }
    Err(format!(
        "unknown placeholder {{{name}}}: the layer sees {KNOWN}; for a value your app puts \
         in the request extensions (the signed-in user), call `.vary_on_user::<T>()` instead"
    ))
}

/// A header's key segment: its value escaped (absent and empty alike);
/// for `Authorization`, a SHA-256 of it instead, so credentials never reach
/// the store. Bytes that are not UTF-8 are written as `%~` and hex, a form
/// escaping never produces, so no two values share a segment.
pub(crate) fn header_segment(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut raw = Vec::new();
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            raw.extend_from_slice(b", ");
        }
        raw.extend_from_slice(value.as_bytes());
    }
    if raw.is_empty() {
        return String::new();
    }
    if name == AUTHORIZATION {
        return hex(&Sha256::digest(&raw)[..16]);
    }
    match std::str::from_utf8(&raw) {
        Ok(text) => key::escape(text).into_owned(),
        Err(_) => format!("%~{}", hex(&raw)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// RFC 3986 §6.2.2 normalisation: percent-encoded unreserved characters
/// decoded (`/books/%34%32` is `/books/42`), other escapes in upper case.
/// Nothing else is decoded: `%2F` stays, so no path can take another's key.
fn normal_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hexval = |c: u8| (c as char).to_digit(16);
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hexval(bytes[i + 1]), hexval(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                } else {
                    out.push_str(&format!("%{c:02X}"));
                }
                i += 3;
                continue;
            }
        }
        out.push(b as char);
        i += 1;
    }
    // Only ASCII bytes were pushed one by one; a non-ASCII path (not valid
    // in a URI, but tolerated by parsers) is left as it was.
    if path.is_ascii() {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    }
}

/// Characters kept as they are in the canonical query (RFC 3986 unreserved).
const QUERY_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A parameter-name pattern: exact, or a prefix when it ends with `*`.
#[derive(Debug, Clone)]
struct Pattern {
    text: Vec<u8>,
    prefix: bool,
}

impl Pattern {
    fn parse(method: &'static str, pattern: &str) -> Result<Pattern, LayerError> {
        let (text, prefix) = match pattern.strip_suffix('*') {
            Some(head) => (head, true),
            None => (pattern, false),
        };
        if text.contains('*') || (text.is_empty() && !prefix) {
            return Err(LayerError::Setting {
                method,
                value: pattern.to_owned(),
                reason: "a parameter name, or a prefix ending in one '*' (\"utm_*\")".into(),
            });
        }
        Ok(Pattern {
            text: text.as_bytes().to_vec(),
            prefix,
        })
    }

    fn matches(&self, name: &[u8]) -> bool {
        if self.prefix {
            name.starts_with(&self.text)
        } else {
            name == self.text.as_slice()
        }
    }
}

/// Which query parameters make up `{query}`, and how it is written.
#[derive(Debug, Default)]
pub(crate) struct QueryRules {
    only: Option<Vec<Pattern>>,
    ignore: Vec<Pattern>,
}

impl QueryRules {
    pub(crate) fn new(only: Option<&[String]>, ignore: &[String]) -> Result<Self, LayerError> {
        let only = only
            .map(|o| o.iter().map(|p| Pattern::parse("only_query", p)).collect())
            .transpose()?;
        let ignore = ignore
            .iter()
            .map(|p| Pattern::parse("ignore_query", p))
            .collect::<Result<_, _>>()?;
        Ok(QueryRules { only, ignore })
    }

    /// The query as the handler's extractors read it (form decoding: `+`
    /// is a space, `%XX` a byte), kept parameters only, sorted by name
    /// (a stable sort: repeated names keep their order), each name and
    /// value written in one canonical percent-encoding.
    pub(crate) fn normalise(&self, query: Option<&str>) -> String {
        let Some(query) = query else {
            return String::new();
        };
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, v) = p.split_once('=').unwrap_or((p, ""));
                (form_decode(n), form_decode(v))
            })
            .filter(|(n, _)| {
                self.only
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|p| p.matches(n)))
                    && !self.ignore.iter().any(|p| p.matches(n))
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::with_capacity(query.len());
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode(&mut out, name);
            out.push('=');
            encode(&mut out, value);
        }
        out
    }
}

fn form_decode(text: &str) -> Vec<u8> {
    let plus = text.replace('+', " ");
    percent_decode(plus.as_bytes()).collect()
}

fn encode(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.extend(utf8_percent_encode(text, QUERY_KEEP)),
        Err(_) => {
            for b in bytes {
                if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                    out.push(*b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, uri: &str, rules: &QueryRules) -> String {
        let (parts, ()) = ::http::Request::get(uri)
            .header("accept-language", "fr:en")
            .header("cookie", "theme=dark; lang=de")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = KeyBuilder::new();
        Template::parse(template).unwrap().render(
            &parts.method,
            &parts.uri,
            &parts.headers,
            rules,
            &mut out,
        );
        out.finish()
    }

    #[test]
    fn unknown_and_glued_placeholders_are_refused_with_the_fix() {
        let e = Template::parse("page:{user}").unwrap_err().to_string();
        assert!(e.contains("{user}") && e.contains("vary_on_user"), "{e}");
        let e = Template::parse("page:{path}{query}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a ':'"), "{e}");
        assert!(Template::parse("page:{header:bad name}").is_err());
        assert!(Template::parse("page:#{path}").is_err());
        assert!(Template::parse("page:{path").is_err());
        assert!(Template::parse("{method}:{path}:{query}").is_ok());
    }

    #[test]
    fn values_cannot_add_segments() {
        let rules = QueryRules::default();
        assert_eq!(
            render("p:{path}:{header:accept-language}", "/a:b", &rules),
            "p:/a%3Ab:fr%3Aen"
        );
        assert_eq!(render("p:{cookie:lang}", "/", &rules), "p:de");
        assert_eq!(
            render("p:{path}", "/books/%34%32%2f", &rules),
            "p:/books/42%252F"
        );
    }

    #[test]
    fn query_is_decoded_filtered_sorted_and_reencoded() {
        let rules = QueryRules::new(None, &["utm_*".into()]).unwrap();
        let a = render("p:{query}", "/?b=2&utm_source=x&a=1+2&a=0", &rules);
        assert_eq!(a, "p:a=1%202&a=0&b=2");
        let b = render("p:{query}", "/?utm%5Fmedium=y&a=1%202&b=2&a=0", &rules);
        assert_eq!(a, b, "encoded names are matched decoded");
        assert_eq!(render("p:{query}", "/?x=a%3Ab", &rules), "p:x=a%3Ab");
        let only = QueryRules::new(Some(&["page".into()]), &[]).unwrap();
        assert_eq!(render("p:{query}", "/?pag%65=2&q=1", &only), "p:page=2");
        assert!(QueryRules::new(None, &["u*m".into()]).is_err());
    }
}
