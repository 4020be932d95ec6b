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

/// Filters and search queries are text for people: control characters other than whitespace
/// (a NUL, which PostgreSQL cannot store or compare in text, among them) are INVALID_ARGUMENT
/// naming `field`, refused before any value is bound.
pub(crate) fn check_characters(field: &str, text: &str) -> Result<(), Error> {
    if text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(Error::invalid_argument(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Parses a filter; the empty filter is no terms.
pub fn parse(filter: &str) -> Result<Vec<Term>, Error> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(invalid(format!("at most {MAX_FILTER_LEN} bytes")));
    }
    check_characters("filter", filter)?;
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
        let (term, next) = scan_term(&chars, pos)?;
        pos = next;
        terms.push(term);
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

/// Scans one restriction `field OP value` starting at `pos`; returns it and the position after.
fn scan_term(chars: &[char], mut pos: usize) -> Result<(Term, usize), Error> {
    let skip_ws = |pos: &mut usize| {
        while *pos < chars.len() && chars[*pos].is_whitespace() {
            *pos += 1;
        }
    };
    // field
    let start = pos;
    // Label and annotation keys (`labels.app.kubernetes.io/name`) also hold `-` and `/`; a
    // leading `-` is negation and was consumed before.
    while pos < chars.len()
        && (chars[pos].is_ascii_alphanumeric()
            || chars[pos] == '_'
            || chars[pos] == '.'
            || (pos > start && matches!(chars[pos], '-' | '/')))
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
        while pos < chars.len() && !chars[pos].is_whitespace() && !matches!(chars[pos], '(' | ')') {
            pos += 1;
        }
        if start == pos {
            return Err(invalid(format!("expected a value for `{field}`")));
        }
        chars[start..pos].iter().collect()
    };
    Ok((Term { field, op, value }, pos))
}

/// A filter expression with AIP-160's connectives: `AND` (also juxtaposition), `OR` (binds
/// tighter than AND), `NOT` or `-`, and parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Term(Term),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

const MAX_NESTING: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Term(Term),
}

fn tokenize(filter: &str) -> Result<Vec<Token>, Error> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(invalid(format!("at most {MAX_FILTER_LEN} bytes")));
    }
    check_characters("filter", filter)?;
    let chars: Vec<char> = filter.chars().collect();
    let mut tokens = Vec::new();
    let mut pos = 0;
    let keyword = |pos: usize, word: &str| -> bool {
        let end = pos + word.len();
        end <= chars.len()
            && chars[pos..end].iter().collect::<String>() == word
            && chars
                .get(end)
                .is_none_or(|c| c.is_whitespace() || *c == '(')
    };
    while pos < chars.len() {
        let c = chars[pos];
        if c.is_whitespace() {
            pos += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            pos += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            pos += 1;
        } else if c == '-' {
            tokens.push(Token::Not);
            pos += 1;
        } else if keyword(pos, "AND") {
            tokens.push(Token::And);
            pos += 3;
        } else if keyword(pos, "OR") {
            tokens.push(Token::Or);
            pos += 2;
        } else if keyword(pos, "NOT") {
            tokens.push(Token::Not);
            pos += 3;
        } else {
            let (term, next) = scan_term(&chars, pos)?;
            tokens.push(Token::Term(term));
            pos = next;
        }
        if tokens.len() > MAX_TERMS * 4 {
            return Err(invalid(format!("at most {MAX_TERMS} terms")));
        }
    }
    Ok(tokens)
}

struct ExprParser {
    tokens: Vec<Token>,
    pos: usize,
    terms: usize,
}

impl ExprParser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn expression(&mut self, depth: usize) -> Result<Expr, Error> {
        if depth > MAX_NESTING {
            return Err(invalid(format!("nested more than {MAX_NESTING} levels")));
        }
        let mut parts = vec![self.factor(depth)?];
        loop {
            match self.peek() {
                Some(Token::And) => {
                    self.pos += 1;
                    parts.push(self.factor(depth)?);
                }
                // Juxtaposition is AND, as in AIP-160.
                Some(Token::Open | Token::Not | Token::Term(_)) => parts.push(self.factor(depth)?),
                _ => break,
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn factor(&mut self, depth: usize) -> Result<Expr, Error> {
        let mut parts = vec![self.unary(depth)?];
        while let Some(Token::Or) = self.peek() {
            self.pos += 1;
            parts.push(self.unary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, Error> {
        match self.peek().cloned() {
            Some(Token::Not) => {
                self.pos += 1;
                if depth + 1 > MAX_NESTING {
                    return Err(invalid(format!("nested more than {MAX_NESTING} levels")));
                }
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some(Token::Open) => {
                self.pos += 1;
                let inner = self.expression(depth + 1)?;
                match self.peek() {
                    Some(Token::Close) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(invalid("missing `)`")),
                }
            }
            Some(Token::Term(term)) => {
                self.pos += 1;
                self.terms += 1;
                if self.terms > MAX_TERMS {
                    return Err(invalid(format!("at most {MAX_TERMS} terms")));
                }
                Ok(Expr::Term(term))
            }
            Some(Token::Close) => Err(invalid("unexpected `)`")),
            Some(Token::And | Token::Or) => Err(invalid("AND/OR needs a term on each side")),
            None => Err(invalid("the filter ends where a term is expected")),
        }
    }
}

/// Parses a filter with AND, OR, NOT/`-` and parentheses; the empty filter is `None`.
pub fn parse_expr(filter: &str) -> Result<Option<Expr>, Error> {
    let tokens = tokenize(filter)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = ExprParser {
        tokens,
        pos: 0,
        terms: 0,
    };
    let expr = parser.expression(0)?;
    if parser.pos != parser.tokens.len() {
        return Err(invalid(
            "unexpected input after the end of the expression (a stray `)`?)",
        ));
    }
    Ok(Some(expr))
}

/// A value bound to the SQL a filter was turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// Binds `params` in order, after whatever `query` has bound already.
pub fn bind_params<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: &'q [Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        query = match p {
            Param::Text(s) => query.bind(s.as_str()),
            Param::Int(n) => query.bind(*n),
        };
    }
    query
}

/// SQL for an expression: `AND`, `OR` and `NOT` kept, each comparison rendered by `term_sql`.
pub fn expr_sql(
    expr: &Expr,
    term_sql: &mut dyn FnMut(&Term) -> Result<String, Error>,
) -> Result<String, Error> {
    Ok(match expr {
        Expr::Term(term) => term_sql(term)?,
        Expr::Not(inner) => format!("(NOT {})", expr_sql(inner, term_sql)?),
        Expr::And(parts) | Expr::Or(parts) => {
            let joiner = if matches!(expr, Expr::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let sql = parts
                .iter()
                .map(|p| expr_sql(p, term_sql))
                .collect::<Result<Vec<_>, _>>()?;
            format!("({})", sql.join(joiner))
        }
    })
}

/// SQL for a `labels.<key>` term over a table mirroring a resource's labels (`{table}` with
/// `tenant`, `{owner_column}`, `key`, `value`), for the resource `{alias}` (with `tenant` and
/// `id`): `=` and `!=` on the value, and presence `labels.<key>:*`.
pub fn label_term_sql(
    term: &Term,
    key: &str,
    table: &str,
    owner_column: &str,
    alias: &str,
    params: &mut Vec<Param>,
) -> Result<String, Error> {
    let field = crate::names::printable(&term.field);
    params.push(Param::Text(key.to_owned()));
    let k = params.len() + 1;
    let exists = |value: Option<usize>| {
        let value = value
            .map(|v| format!(" AND l.value = ${v}"))
            .unwrap_or_default();
        format!(
            "EXISTS (SELECT 1 FROM {table} l WHERE l.tenant = {alias}.tenant AND l.{owner_column} = {alias}.id AND l.key = ${k}{value})"
        )
    };
    match term.op {
        Op::Has if term.value == "*" => Ok(exists(None)),
        Op::Has => Err(invalid(format!("use `{field}:*` to test presence"))),
        Op::Eq | Op::Ne => {
            params.push(Param::Text(term.value.clone()));
            let sql = exists(Some(params.len() + 1));
            Ok(if term.op == Op::Eq {
                sql
            } else {
                format!("(NOT {sql})")
            })
        }
        _ => Err(invalid(format!("`{field}` supports =, != and :*"))),
    }
}

/// A comparison of a time field with an RFC 3339 value: `{column} OP $n` over microseconds,
/// the value pushed onto `params` (numbered after a first parameter, the tenant).
pub fn time_term_sql(term: &Term, column: &str, params: &mut Vec<Param>) -> Result<String, Error> {
    let field = &term.field;
    let op = match term.op {
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Has => return Err(invalid(format!("`{field}` takes a comparison"))),
    };
    let ts: prost_types::Timestamp = term
        .value
        .parse()
        .map_err(|_| invalid(format!("`{field}` takes an RFC 3339 time in quotes")))?;
    params.push(Param::Int(
        ts.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(ts.nanos) / 1000),
    ));
    Ok(format!("{column} {op} ${}", params.len() + 1))
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

    #[test]
    fn expressions_follow_aip_160_precedence() {
        let t = |f: &str, v: &str| {
            Expr::Term(Term {
                field: f.into(),
                op: Op::Eq,
                value: v.into(),
            })
        };
        let e = parse_expr(r#"kind = "a" AND (type = "b" OR type = "c") -labels.x:* "#)
            .expect("valid")
            .expect("some");
        assert_eq!(
            e,
            Expr::And(vec![
                t("kind", "a"),
                Expr::Or(vec![t("type", "b"), t("type", "c")]),
                Expr::Not(Box::new(Expr::Term(Term {
                    field: "labels.x".into(),
                    op: Op::Has,
                    value: "*".into()
                }))),
            ])
        );
        // OR binds tighter than AND.
        let e = parse_expr("a = 1 OR b = 2 AND c = 3")
            .expect("valid")
            .expect("some");
        assert_eq!(
            e,
            Expr::And(vec![Expr::Or(vec![t("a", "1"), t("b", "2")]), t("c", "3")])
        );
        assert_eq!(parse_expr("  ").expect("empty"), None);
        for bad in [
            "(a = 1",
            "a = 1)",
            "AND a = 1",
            "a = 1 OR",
            "NOT",
            "()",
            &"(".repeat(40),
            &format!("{}a = 1{}", "(".repeat(20), ")".repeat(20)),
        ] {
            assert!(parse_expr(bad).is_err(), "{bad:?}");
        }
    }
}
