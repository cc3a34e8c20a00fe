//! Subscription filters: the grammar of
//! <https://cloud.google.com/pubsub/docs/subscription-message-filter> as a parser and an
//! evaluator over message attributes (Go's `pstest/filtering.go` does the same with an
//! AIP-160 library).
//!
//! ```text
//! filter     = or
//! or         = and { "OR" and }          -- AND and OR may not be mixed without parentheses
//! and        = unary { "AND" unary }
//! unary      = ("NOT" | "-") unary | primary
//! primary    = "(" or ")"
//!            | "attributes" ":" key
//!            | "attributes" "." key ("=" | "!=") string
//!            | "hasPrefix" "(" "attributes" "." key "," string ")"
//! key        = identifier of letters, digits, '-' and '_'  |  string
//! string     = '"' with \" \\ \n \t \r \xHH \uHHHH \OOO escapes '"'
//! ```
//!
//! A filter is at most 256 bytes. `attributes.k != "v"` also matches messages without `k`,
//! as the page's examples (and pstest) have it.

use std::collections::HashMap;
use std::fmt;

/// The longest filter the service accepts (same page: "The maximum length of a filter is 256
/// bytes").
pub const MAX_FILTER_BYTES: usize = 256;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    HasKey(String),
    Equals(String, String),
    NotEquals(String, String),
    HasPrefix(String, String),
    Not(Box<Filter>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// Why a filter is invalid, and where (a byte offset into the filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub position: usize,
    pub reason: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid filter at position {}: {}",
            self.position, self.reason
        )
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// Parses `text`; the empty filter is `None` (every message matches).
    pub fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                position: MAX_FILTER_BYTES,
                reason: format!(
                    "the filter is {} bytes, the maximum is {MAX_FILTER_BYTES}",
                    text.len()
                ),
            });
        }
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            end: text.len(),
            bare_and_at: None,
        };
        let filter = parser.or()?;
        if let Some(t) = parser.peek() {
            return Err(FilterError {
                position: t.position,
                reason: format!("unexpected {}", t.kind),
            });
        }
        Ok(Some(filter))
    }

    pub fn matches(&self, attributes: &HashMap<String, String>) -> bool {
        match self {
            Filter::HasKey(k) => attributes.contains_key(k),
            Filter::Equals(k, v) => attributes.get(k) == Some(v),
            Filter::NotEquals(k, v) => attributes.get(k) != Some(v),
            Filter::HasPrefix(k, p) => attributes.get(k).is_some_and(|v| v.starts_with(p)),
            Filter::Not(f) => !f.matches(attributes),
            Filter::And(fs) => fs.iter().all(|f| f.matches(attributes)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(attributes)),
        }
    }
}

impl fmt::Display for Filter {
    /// The filter in the grammar above (always parenthesised, so it parses back to itself).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn key(k: &str) -> String {
            if k.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                k.to_string()
            } else {
                quote(k)
            }
        }
        fn quote(s: &str) -> String {
            let mut out = String::from('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        match self {
            Filter::HasKey(k) => write!(f, "attributes:{}", key(k)),
            Filter::Equals(k, v) => write!(f, "attributes.{} = {}", key(k), quote(v)),
            Filter::NotEquals(k, v) => write!(f, "attributes.{} != {}", key(k), quote(v)),
            Filter::HasPrefix(k, p) => write!(f, "hasPrefix(attributes.{}, {})", key(k), quote(p)),
            Filter::Not(inner) => write!(f, "NOT ({inner})"),
            Filter::And(fs) | Filter::Or(fs) => {
                let op = if matches!(self, Filter::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                for (i, inner) in fs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "({inner})")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Colon,
    Dot,
    Comma,
    Eq,
    NotEq,
    Minus,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "`{s}`"),
            Kind::Str(s) => write!(f, "string {s:?}"),
            Kind::LParen => f.write_str("`(`"),
            Kind::RParen => f.write_str("`)`"),
            Kind::Colon => f.write_str("`:`"),
            Kind::Dot => f.write_str("`.`"),
            Kind::Comma => f.write_str("`,`"),
            Kind::Eq => f.write_str("`=`"),
            Kind::NotEq => f.write_str("`!=`"),
            Kind::Minus => f.write_str("`-`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    position: usize,
}

fn error(position: usize, reason: impl Into<String>) -> FilterError {
    FilterError {
        position,
        reason: reason.into(),
    }
}

fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let simple = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Some(Kind::LParen),
            b')' => Some(Kind::RParen),
            b':' => Some(Kind::Colon),
            b'.' => Some(Kind::Dot),
            b',' => Some(Kind::Comma),
            b'=' => Some(Kind::Eq),
            b'-' => Some(Kind::Minus),
            _ => None,
        };
        if let Some(kind) = simple {
            tokens.push(Token {
                kind,
                position: start,
            });
            i += 1;
            continue;
        }
        if c == b'!' {
            if bytes.get(i + 1) == Some(&b'=') {
                tokens.push(Token {
                    kind: Kind::NotEq,
                    position: start,
                });
                i += 2;
                continue;
            }
            return Err(error(start, "`!` must be followed by `=`"));
        }
        if c == b'"' {
            let (s, next) = string_literal(text, i)?;
            tokens.push(Token {
                kind: Kind::Str(s),
                position: start,
            });
            i = next;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            // '-' belongs to a key once a key has started (`attributes:my-key`).
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
            {
                i += 1;
            }
            tokens.push(Token {
                kind: Kind::Ident(text[start..i].to_string()),
                position: start,
            });
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('?');
        return Err(error(start, format!("unexpected character {ch:?}")));
    }
    Ok(tokens)
}

/// Reads the string literal starting at the quote at `start`; returns it and the index after it.
fn string_literal(text: &str, start: usize) -> Result<(String, usize), FilterError> {
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let at = start + 1 + offset;
        match c {
            '"' => return Ok((out, at + 1)),
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    break;
                };
                match e {
                    '"' | '\\' | '\'' | '?' | '`' => out.push(e),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut value = 0u32;
                        for _ in 0..digits {
                            let d = chars
                                .next()
                                .and_then(|(_, d)| d.to_digit(16))
                                .ok_or_else(|| error(at, format!("bad \\{e} escape")))?;
                            value = value * 16 + d;
                        }
                        out.push(
                            char::from_u32(value)
                                .ok_or_else(|| error(at, "escape is not a character"))?,
                        );
                    }
                    '0'..='7' => {
                        let mut value = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let d = chars
                                .next()
                                .and_then(|(_, d)| d.to_digit(8))
                                .ok_or_else(|| error(at, "bad octal escape"))?;
                            value = value * 8 + d;
                        }
                        out.push(
                            char::from_u32(value)
                                .ok_or_else(|| error(at, "escape is not a character"))?,
                        );
                    }
                    other => return Err(error(at, format!("unknown escape \\{other}"))),
                }
            }
            c => out.push(c),
        }
    }
    Err(error(start, "unterminated string literal"))
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    end: usize,
    /// Where the last `and()` joined terms with an AND outside parentheses (the first such
    /// AND): such a chain may not meet an OR.
    bare_and_at: Option<usize>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn position(&self) -> usize {
        self.peek().map_or(self.end, |t| t.position)
    }

    fn next(&mut self, what: &str) -> Result<Token, FilterError> {
        let t = self.peek().cloned().ok_or_else(|| {
            error(
                self.end,
                format!("the filter ends where {what} was expected"),
            )
        })?;
        self.at += 1;
        Ok(t)
    }

    fn expect(&mut self, kind: Kind, what: &str) -> Result<(), FilterError> {
        let t = self.next(what)?;
        if t.kind == kind {
            Ok(())
        } else {
            Err(error(
                t.position,
                format!("expected {what}, found {}", t.kind),
            ))
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Ident(w), .. }) if w == word)
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mixed = |at| error(at, "AND and OR cannot be mixed without parentheses");
        let first = self.and()?;
        let first_bare_and = self.bare_and_at;
        let mut all = vec![first];
        while self.keyword("OR") {
            if first_bare_and.is_some() {
                return Err(mixed(self.position()));
            }
            self.at += 1;
            all.push(self.and()?);
            if let Some(and) = self.bare_and_at {
                return Err(mixed(and));
            }
        }
        self.bare_and_at = first_bare_and;
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Filter::Or(all)
        })
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let first = self.unary()?;
        let mut all = vec![first];
        let mut first_and = None;
        while self.keyword("AND") {
            first_and.get_or_insert(self.position());
            self.at += 1;
            all.push(self.unary()?);
        }
        self.bare_and_at = first_and;
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Filter::And(all)
        })
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("NOT") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if matches!(
            self.peek(),
            Some(Token {
                kind: Kind::Minus,
                ..
            })
        ) {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let t = self.next("a condition")?;
        match t.kind {
            Kind::LParen => {
                let inner = self.or()?;
                self.expect(Kind::RParen, "`)`")?;
                // Parentheses make an AND safe to combine with OR.
                self.bare_and_at = None;
                Ok(inner)
            }
            Kind::Ident(w) if w == "attributes" => {
                let op = self.next("`:` or `.` after `attributes`")?;
                match op.kind {
                    Kind::Colon => Ok(Filter::HasKey(self.key()?)),
                    Kind::Dot => {
                        let key = self.key()?;
                        let cmp = self.next("`=` or `!=`")?;
                        let value = self.string("a string literal value")?;
                        match cmp.kind {
                            Kind::Eq => Ok(Filter::Equals(key, value)),
                            Kind::NotEq => Ok(Filter::NotEquals(key, value)),
                            other => Err(error(
                                cmp.position,
                                format!("expected `=` or `!=`, found {other}"),
                            )),
                        }
                    }
                    other => Err(error(
                        op.position,
                        format!("expected `:` or `.` after `attributes`, found {other}"),
                    )),
                }
            }
            Kind::Ident(w) if w == "hasPrefix" => {
                self.expect(Kind::LParen, "`(` after hasPrefix")?;
                let attributes = self.next("`attributes`")?;
                if attributes.kind != Kind::Ident("attributes".into()) {
                    return Err(error(
                        attributes.position,
                        format!(
                            "hasPrefix takes `attributes.KEY`, found {}",
                            attributes.kind
                        ),
                    ));
                }
                self.expect(Kind::Dot, "`.` after `attributes`")?;
                let key = self.key()?;
                self.expect(Kind::Comma, "`,` between hasPrefix's arguments")?;
                let prefix = self.string("a string literal prefix")?;
                self.expect(Kind::RParen, "`)` closing hasPrefix")?;
                Ok(Filter::HasPrefix(key, prefix))
            }
            other => Err(error(
                t.position,
                format!(
                    "expected a condition (`attributes:KEY`, `attributes.KEY = \"VALUE\"`, `hasPrefix(...)`, NOT or `(`), found {other}"
                ),
            )),
        }
    }

    fn key(&mut self) -> Result<String, FilterError> {
        let t = self.next("an attribute key")?;
        match t.kind {
            Kind::Ident(k) | Kind::Str(k) => Ok(k),
            other => Err(error(
                t.position,
                format!("expected an attribute key, found {other}"),
            )),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, FilterError> {
        let t = self.next(what)?;
        match t.kind {
            Kind::Str(s) => Ok(s),
            other => Err(error(t.position, format!("expected {what}, found {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(s: &str) -> Filter {
        Filter::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .unwrap_or_else(|| panic!("{s}: empty"))
    }

    #[test]
    fn the_documented_forms_parse_and_match() {
        let a = attrs(&[
            ("domain", "com"),
            ("iana.org/language_tag", "en"),
            ("name", "co-op"),
        ]);
        for (filter, want) in [
            ("attributes:domain", true),
            ("attributes:missing", false),
            ("attributes.domain = \"com\"", true),
            ("attributes.domain != \"com\"", false),
            ("attributes.missing != \"com\"", true),
            ("hasPrefix(attributes.name, \"co\")", true),
            ("hasPrefix(attributes.missing, \"\")", false),
            ("attributes.\"iana.org/language_tag\" = \"en\"", true),
            ("NOT attributes:domain", false),
            ("-attributes:domain", false),
            ("attributes:domain AND attributes:name", true),
            ("attributes:missing OR attributes:name", true),
            (
                "(attributes:missing OR attributes:name) AND NOT attributes:x",
                true,
            ),
            ("attributes.name = \"co\\x2dop\"", true),
        ] {
            assert_eq!(parse(filter).matches(&a), want, "{filter}");
        }
        assert_eq!(Filter::parse("  ").unwrap(), None);
    }

    #[test]
    fn errors_name_the_position() {
        for (filter, position) in [
            ("attributes:a AND attributes:b OR attributes:c", 30),
            ("attributes:a OR attributes:b AND attributes:c", 29),
            ("attributes.a = value", 15),
            ("attributes.a == \"v\"", 14),
            ("attributes:", 11),
            ("(attributes:a", 13),
            ("attributes:a )", 13),
            ("labels:a", 0),
            ("attributes.a = \"unterminated", 15),
            ("hasPrefix(attributes.a \"x\")", 23),
        ] {
            let e = Filter::parse(filter).expect_err(filter);
            assert_eq!(e.position, position, "{filter}: {e}");
        }
        let long = format!("attributes:{}", "k".repeat(250));
        assert!(Filter::parse(&long).is_err(), "over 256 bytes");
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z_][a-z0-9_-]{0,6}", "[ -~]{1,6}"]
    }

    fn value() -> impl Strategy<Value = String> {
        "[ -~]{0,6}"
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let leaf = prop_oneof![
            key().prop_map(Filter::HasKey),
            (key(), value()).prop_map(|(k, v)| Filter::Equals(k, v)),
            (key(), value()).prop_map(|(k, v)| Filter::NotEquals(k, v)),
            (key(), value()).prop_map(|(k, v)| Filter::HasPrefix(k, v)),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
                prop::collection::vec(inner.clone(), 2..=3).prop_map(Filter::And),
                prop::collection::vec(inner, 2..=3).prop_map(Filter::Or),
            ]
        })
    }

    proptest! {
        #[test]
        fn printing_and_parsing_give_back_the_same_filter(f in filter()) {
            let text = f.to_string();
            prop_assume!(text.len() <= MAX_FILTER_BYTES);
            prop_assert_eq!(Filter::parse(&text), Ok(Some(f)));
        }

        #[test]
        fn boolean_operators_mean_what_they_say(
            a in filter(), b in filter(),
            present in prop::collection::hash_map("[a-z_][a-z0-9_-]{0,6}", "[ -~]{0,6}", 0..4)
        ) {
            let and = Filter::And(vec![a.clone(), b.clone()]);
            let or = Filter::Or(vec![a.clone(), b.clone()]);
            let not = Filter::Not(Box::new(a.clone()));
            prop_assert_eq!(and.matches(&present), a.matches(&present) && b.matches(&present));
            prop_assert_eq!(or.matches(&present), a.matches(&present) || b.matches(&present));
            prop_assert_eq!(not.matches(&present), !a.matches(&present));
        }

        #[test]
        fn any_text_parses_or_fails_with_a_position_inside_it(text in "[ -~]{0,64}") {
            if let Err(e) = Filter::parse(&text) {
                prop_assert!(e.position <= text.len(), "{} > {}", e.position, text.len());
            }
        }
    }
}
