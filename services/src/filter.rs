//! A small AIP-160 filter subset shared by List methods: terms `field OP value` joined by `AND`,
//! where OP is one of `=`, `!=`, `<`, `<=`, `>`, `>=`, `:` and value is a double-quoted string
//! (with `\"` and `\\` escapes) or a bare word/number. Each service decides which fields and
//! operators it accepts and turns terms into bound SQL parameters — never into SQL text.

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub field: String,
    pub op: Op,
    pub value: String,
}

const MAX_FILTER_LEN: usize = 4096;
const MAX_TERMS: usize = 32;

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid_argument("filter", msg)
}

/// Parses a filter; the empty filter is no terms.
pub fn parse(filter: &str) -> Result<Vec<Term>, Error> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(invalid(format!("at most {MAX_FILTER_LEN} bytes")));
    }
    let chars: Vec<char> = filter.chars().collect();
    let mut pos = 0;
    let mut terms = Vec::new();
    let skip_ws = |pos: &mut usize| {
        while *pos < chars.len() && chars[*pos].is_whitespace() {
            *pos += 1;
        }
    };
    skip_ws(&mut pos);
    if pos == chars.len() {
        return Ok(terms);
    }
    loop {
        // field
        let start = pos;
        while pos < chars.len()
            && (chars[pos].is_ascii_alphanumeric() || chars[pos] == '_' || chars[pos] == '.')
        {
            pos += 1;
        }
        if start == pos {
            return Err(invalid(format!(
                "expected a field name at position {start}"
            )));
        }
        let field: String = chars[start..pos].iter().collect();
        skip_ws(&mut pos);
        // operator
        let rest: String = chars[pos..chars.len().min(pos + 2)].iter().collect();
        let (op, len) = if rest.starts_with("!=") {
            (Op::Ne, 2)
        } else if rest.starts_with("<=") {
            (Op::Le, 2)
        } else if rest.starts_with(">=") {
            (Op::Ge, 2)
        } else if rest.starts_with('=') {
            (Op::Eq, 1)
        } else if rest.starts_with('<') {
            (Op::Lt, 1)
        } else if rest.starts_with('>') {
            (Op::Gt, 1)
        } else if rest.starts_with(':') {
            (Op::Has, 1)
        } else {
            return Err(invalid(format!("expected an operator after `{field}`")));
        };
        pos += len;
        skip_ws(&mut pos);
        // value
        let value = if pos < chars.len() && chars[pos] == '"' {
            pos += 1;
            let mut value = String::new();
            loop {
                match chars.get(pos) {
                    None => return Err(invalid("unterminated string")),
                    Some('"') => {
                        pos += 1;
                        break;
                    }
                    Some('\\') => {
                        match chars.get(pos + 1) {
                            Some(c @ ('"' | '\\')) => value.push(*c),
                            _ => return Err(invalid("only \\\" and \\\\ escapes are allowed")),
                        }
                        pos += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        pos += 1;
                    }
                }
            }
            value
        } else {
            let start = pos;
            while pos < chars.len() && !chars[pos].is_whitespace() {
                pos += 1;
            }
            if start == pos {
                return Err(invalid(format!("expected a value for `{field}`")));
            }
            chars[start..pos].iter().collect()
        };
        terms.push(Term { field, op, value });
        if terms.len() > MAX_TERMS {
            return Err(invalid(format!("at most {MAX_TERMS} terms")));
        }
        skip_ws(&mut pos);
        if pos == chars.len() {
            return Ok(terms);
        }
        let word: String = chars[pos..chars.len().min(pos + 3)].iter().collect();
        if word != "AND" {
            return Err(invalid(format!(
                "expected AND at position {pos} (OR and parentheses are not supported)"
            )));
        }
        pos += 3;
        if pos >= chars.len() || !chars[pos].is_whitespace() {
            return Err(invalid("expected a term after AND"));
        }
        skip_ws(&mut pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms() {
        let terms = parse(r#"actor = "user:a\"b" AND sequence>=5 AND changed_fields:"labels""#)
            .expect("valid");
        assert_eq!(
            terms,
            vec![
                Term {
                    field: "actor".into(),
                    op: Op::Eq,
                    value: "user:a\"b".into()
                },
                Term {
                    field: "sequence".into(),
                    op: Op::Ge,
                    value: "5".into()
                },
                Term {
                    field: "changed_fields".into(),
                    op: Op::Has,
                    value: "labels".into()
                },
            ]
        );
        assert!(parse("").expect("empty").is_empty());
        assert!(parse("   ").expect("blank").is_empty());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "actor",
            "actor =",
            "= x",
            "a = \"x",
            "a = x OR b = y",
            "a = x AND",
            "a = x ANDb = y",
            "a ~ x",
            "(a = x)",
            "a = \"\\n\"",
            "\u{0}",
            "a = x b = y",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"a = x AND ".repeat(40)).is_err());
        assert!(parse(&"x".repeat(5000)).is_err());
    }
}
