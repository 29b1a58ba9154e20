//! `key` templates: literal text with `{arg}` / `{arg.field}` placeholders.
//!
//! Like thiserror's `fmt.rs`: the literal is scanned once into pieces, and
//! every problem is reported at the literal's span with what to write.
//! The literal text may not contain `#`, which marks shortened long keys,
//! nor NUL, which PostgreSQL cannot store.

/// One piece of a template.
#[derive(Debug)]
pub enum Piece {
    /// Text kept verbatim (with `{{`/`}}` unescaped).
    Literal(String),
    /// `{root.a.b}`: `root` is an argument name or `self`.
    Placeholder { root: String, path: Vec<String> },
}

/// Splits a template, or explains every problem found.
pub fn parse(template: &str) -> Result<Vec<Piece>, Vec<String>> {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut literal = String::new();
    let mut literal_hash = false;
    let mut literal_nul = false;
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                chars.next();
                literal.push('}');
            }
            '}' => errors.push(format!(
                "unmatched `}}` at byte {i}; write `}}}}` for a literal brace"
            )),
            '{' => {
                let Some(end) = template[i + 1..].find('}') else {
                    errors.push(format!(
                        "unclosed `{{` at byte {i}; close the placeholder with `}}` or write `{{{{` for a literal brace"
                    ));
                    break;
                };
                let inner = &template[i + 1..i + 1 + end];
                for _ in 0..=end {
                    chars.next();
                }
                match placeholder(inner) {
                    Ok((root, path)) => {
                        if !literal.is_empty() || pieces.is_empty() {
                            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                        }
                        pieces.push(Piece::Placeholder { root, path });
                    }
                    Err(e) => errors.push(e),
                }
            }
            '#' => {
                if !literal_hash {
                    errors.push(
                        "`#` cannot be part of a key: keys over 1 KiB are stored as \
                         `<segments>#<SHA-256>`, and a `#` written here could make a short key \
                         take that shape and read a long key's entry; separate with `:` (or use \
                         `-`, `_`, `.`)"
                            .to_owned(),
                    );
                    literal_hash = true;
                }
                literal.push('#');
            }
            '\0' => {
                if !literal_nul {
                    errors.push(
                        "NUL cannot be part of a key: PostgreSQL text cannot hold it, so such a \
                         key could not be stored on every store; remove it (values are escaped \
                         for you: a NUL in an argument becomes `%00`)"
                            .to_owned(),
                    );
                    literal_nul = true;
                }
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    // Two placeholders must be separated by text containing ':' (escaped
    // values never contain one), or ("1", "23") and ("12", "3") collide.
    let mut last_placeholder: Option<&str> = None;
    let mut separated = true;
    for p in &pieces {
        match p {
            Piece::Literal(text) => separated |= text.contains(':'),
            Piece::Placeholder { root, .. } => {
                if let (Some(prev), false) = (last_placeholder, separated) {
                    errors.push(format!(
                        "placeholders `{{{prev}}}` and `{{{root}}}` must be separated by `:` so that \
                         different arguments can never render the same key; write `{{{prev}}}:{{{root}}}`"
                    ));
                }
                last_placeholder = Some(root);
                separated = false;
            }
        }
    }
    if errors.is_empty() {
        Ok(pieces)
    } else {
        Err(errors)
    }
}

fn placeholder(inner: &str) -> Result<(String, Vec<String>), String> {
    let trimmed = inner.trim();
    if trimmed.is_empty() {
        return Err(
            "empty placeholder `{}`; name an argument: `{author_id}` or `{book.id}`".into(),
        );
    }
    if let Some((name, spec)) = trimmed.split_once(':') {
        return Err(format!(
            "format spec `:{spec}` in `{{{inner}}}` is not supported: keys use `Display`; write `{{{name}}}`"
        ));
    }
    let mut parts = trimmed.split('.');
    let root = parts.next().unwrap_or_default().to_owned();
    let path: Vec<String> = parts.map(str::to_owned).collect();
    let ident_ok = |s: &str| {
        let mut cs = s.chars();
        cs.next().is_some_and(|c| c == '_' || c.is_alphabetic())
            && cs.all(|c| c == '_' || c.is_alphanumeric())
    };
    let field_ok =
        |s: &str| ident_ok(s) || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()));
    if !ident_ok(&root) || !path.iter().all(|p| field_ok(p)) {
        return Err(format!(
            "`{{{inner}}}` is not an argument or a field path; write `{{arg}}` or `{{arg.field.sub}}`"
        ));
    }
    Ok((root, path))
}

/// The arguments (or `self`) a template's placeholders start from.
pub fn roots(pieces: &[Piece]) -> Vec<String> {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Placeholder { root, .. } => Some(root.clone()),
            Piece::Literal(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_the_literal_text_is_refused() {
        let errors = parse("a\0b:{x}\0").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("NUL"), "{errors:?}");
    }

    #[test]
    fn splits_literals_and_placeholders() {
        let p = parse("author:{author_id}:top_{{x}}:{book.id}").unwrap();
        assert_eq!(p.len(), 4);
        assert!(matches!(&p[1], Piece::Placeholder { root, .. } if root == "author_id"));
        assert!(matches!(&p[2], Piece::Literal(t) if t == ":top_{x}:"));
        assert!(
            matches!(&p[3], Piece::Placeholder { root, path } if root == "book" && path == &["id"])
        );
    }

    #[test]
    fn adjacent_placeholders_are_rejected() {
        assert!(parse("{a}{b}").is_err());
        assert!(parse("{a}-{b}").is_err());
        assert!(parse("{a}:{b}").is_ok());
        assert!(parse("x{a}").is_ok());
    }

    #[test]
    fn malformed_placeholders_are_explained() {
        assert!(parse("a:{").unwrap_err()[0].contains("unclosed"));
        assert!(parse("a:{}").unwrap_err()[0].contains("empty"));
        assert!(parse("a:{x:?}").unwrap_err()[0].contains("format spec"));
        assert!(parse("a}").unwrap_err()[0].contains("unmatched"));
        assert!(parse("a:{x-y}").unwrap_err()[0].contains("not an argument"));
    }

    #[test]
    fn hash_is_refused_once_per_template() {
        let errors = parse("feed#{id}#x").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("`#` cannot be part of a key"));
        assert!(parse("feed:{id}:x").is_ok());
    }
}
