//! Page sizes and page tokens for every List method (AIP-158).
//!
//! A page token is opaque to clients: base64url of the last key of the page and a hash of the
//! query it belongs to (parent, filter, order). A token from another query, another tenant or
//! forged bytes is INVALID_ARGUMENT; a token never grants anything — every page is authorized and
//! filtered like the first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The page size to use: default 50, clamped to 1000; negative is INVALID_ARGUMENT.
pub fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid_argument("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// Identifies a query; a page token only continues the query it came from.
pub fn query_fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Encodes the position after which the next page starts.
pub fn encode_token(fingerprint: [u8; 8], after: &str) -> String {
    let mut bytes = fingerprint.to_vec();
    bytes.extend_from_slice(after.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a page token of this query; `None` for the first page.
pub fn decode_token(fingerprint: [u8; 8], token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid_argument("page_token", "not a page token of this query");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() < 8 || bytes[..8] != fingerprint {
        return Err(invalid());
    }
    String::from_utf8(bytes[8..].to_vec())
        .map(Some)
        .map_err(|_| invalid())
}

/// One sort key of a keyset-paged list: an SQL expression over the listed table, its
/// direction, and whether its values are integers (bound as such from page tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub column: &'static str,
    pub desc: bool,
    pub integer: bool,
}

/// The keyset condition "after this row" for a sort of mixed directions:
/// `(k1 > v1) OR (k1 = v1 AND k2 > v2) OR …`, with `<` for descending keys. Parameters are
/// numbered from `first`, one per key.
pub fn keyset_after(order: &[OrderKey], first: usize, values: &[String]) -> Result<String, Error> {
    if values.len() != order.len() {
        return Err(Error::invalid_argument(
            "page_token",
            "not a page token of this query",
        ));
    }
    // One direction throughout: a row-value comparison, which both engines match to an index.
    if order.iter().all(|k| k.desc == order[0].desc) {
        let columns: Vec<String> = order.iter().map(|k| k.column.to_owned()).collect();
        let params: Vec<String> = (0..order.len())
            .map(|i| format!("${}", first + i))
            .collect();
        let op = if order[0].desc { "<" } else { ">" };
        return Ok(format!(
            "(({}) {op} ({}))",
            columns.join(", "),
            params.join(", ")
        ));
    }
    let mut alternatives = Vec::new();
    for i in 0..order.len() {
        let mut parts: Vec<String> = (0..i)
            .map(|j| format!("{} = ${}", order[j].column, first + j))
            .collect();
        let op = if order[i].desc { "<" } else { ">" };
        parts.push(format!("{} {op} ${}", order[i].column, first + i));
        alternatives.push(format!("({})", parts.join(" AND ")));
    }
    Ok(format!("({})", alternatives.join(" OR ")))
}

/// A field a list may be sorted by: its name in `order_by`, the SQL expression, and whether its
/// values are integers.
pub type SortField = (&'static str, &'static str, bool);

/// Parses `order_by` (AIP-132: `field [desc], …`) against `fields`; `help` lists the field names
/// for the error. The `tie_break` columns are appended (ascending) where not already named, so
/// that the order is total and keyset pages never skip or repeat a row.
pub fn parse_order_by(
    text: &str,
    fields: &[SortField],
    help: &str,
    tie_break: &[&'static str],
) -> Result<Vec<OrderKey>, Error> {
    let mut keys: Vec<OrderKey> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let field = words.next().unwrap_or_default();
        let desc = match (words.next(), words.next()) {
            (None, _) => false,
            (Some(d), None) if d.eq_ignore_ascii_case("desc") => true,
            (Some(a), None) if a.eq_ignore_ascii_case("asc") => false,
            _ => {
                return Err(Error::invalid_argument(
                    "order_by",
                    format!(
                        "`{}` is not `field` or `field desc`",
                        crate::names::printable(part)
                    ),
                ));
            }
        };
        let Some(&(_, column, integer)) = fields.iter().find(|(name, _, _)| *name == field) else {
            return Err(Error::invalid_argument(
                "order_by",
                format!(
                    "cannot sort by `{}` (fields: {help})",
                    crate::names::printable(field)
                ),
            ));
        };
        if keys.iter().any(|k| k.column == column) {
            return Err(Error::invalid_argument(
                "order_by",
                format!("`{field}` appears twice"),
            ));
        }
        keys.push(OrderKey {
            column,
            desc,
            integer,
        });
    }
    for &column in tie_break {
        if !keys.iter().any(|k| k.column == column) {
            keys.push(OrderKey {
                column,
                desc: false,
                integer: false,
            });
        }
    }
    Ok(keys)
}

/// A keyset-paged query's sort: the select list, ORDER BY, the "after this row" condition and
/// the page tokens, for lists ordered by any [`OrderKey`]s (ListEntities, ListEnvironments).
#[derive(Debug)]
pub struct Keyset<'a> {
    order: &'a [OrderKey],
    /// The sort values of the last row of the previous page; empty on the first page.
    after: Vec<String>,
}

impl<'a> Keyset<'a> {
    /// Reads the sort values a page token carries (`after` is what [`decode_token`] returned).
    pub fn new(order: &'a [OrderKey], after: Option<&str>) -> Result<Self, Error> {
        let after = match after {
            None => Vec::new(),
            Some(after) => serde_json::from_str(after)
                .ok()
                .filter(|v: &Vec<String>| v.len() == order.len())
                .ok_or_else(|| {
                    Error::invalid_argument("page_token", "not a page token of this query")
                })?,
        };
        Ok(Keyset { order, after })
    }

    /// The sort values as extra select columns `o0, o1, …`, read back by [`Keyset::token`].
    pub fn select_columns(&self) -> String {
        let columns: Vec<String> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} AS o{i}", k.column))
            .collect();
        columns.join(", ")
    }

    /// ` AND (after the previous page)` when there is one, its parameters numbered from `first`.
    pub fn after_sql(&self, first: usize) -> Result<String, Error> {
        if self.after.is_empty() {
            return Ok(String::new());
        }
        Ok(format!(
            " AND {}",
            keyset_after(self.order, first, &self.after)?
        ))
    }

    /// ` ORDER BY … LIMIT {limit}`.
    pub fn order_sql(&self, limit: i64) -> String {
        let keys: Vec<String> = self
            .order
            .iter()
            .map(|k| format!("{} {}", k.column, if k.desc { "DESC" } else { "ASC" }))
            .collect();
        format!(" ORDER BY {} LIMIT {limit}", keys.join(", "))
    }

    /// Binds the parameters of [`Keyset::after_sql`], after those already bound.
    pub fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>, Error> {
        for (k, value) in self.order.iter().zip(&self.after) {
            query = if k.integer {
                query.bind(value.parse::<i64>().map_err(|_| {
                    Error::invalid_argument("page_token", "not a page token of this query")
                })?)
            } else {
                query.bind(value.as_str())
            };
        }
        Ok(query)
    }

    /// The token of the page after the one ending with `last` (a row selected with
    /// [`Keyset::select_columns`]).
    pub fn token(&self, fingerprint: [u8; 8], last: &sqlx::any::AnyRow) -> Result<String, Error> {
        use sqlx::Row;
        let values = self
            .order
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let column = format!("o{i}");
                Ok(if k.integer {
                    last.try_get::<i64, _>(column.as_str())?.to_string()
                } else {
                    last.try_get::<String, _>(column.as_str())?
                })
            })
            .collect::<Result<Vec<String>, Error>>()?;
        let json = serde_json::to_string(&values)
            .map_err(|e| Error::internal(format!("page token: {e}")))?;
        Ok(encode_token(fingerprint, &json))
    }
}

impl Keyset<'_> {
    /// Splits rows fetched with [`Keyset::order_sql`]`(page_size + 1)` into the page's items,
    /// made by `item`, and the token of the next page (empty on the last).
    pub fn page<T>(
        &self,
        fingerprint: [u8; 8],
        rows: &[sqlx::any::AnyRow],
        page_size: i64,
        item: impl Fn(&sqlx::any::AnyRow) -> Result<T, Error>,
    ) -> Result<(Vec<T>, String), Error> {
        let take = usize::try_from(page_size).unwrap_or(usize::MAX);
        let items = rows
            .iter()
            .take(take)
            .map(item)
            .collect::<Result<Vec<T>, Error>>()?;
        let token = match rows.get(take) {
            Some(_) => self.token(fingerprint, &rows[take - 1])?,
            None => String::new(),
        };
        Ok((items, token))
    }
}

/// Pages an in-memory, sorted list by key (for small collections such as roles).
pub fn paginate<T>(
    items: Vec<T>,
    page_size: i32,
    page_token: &str,
    query: &[&str],
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, String, i32), Error> {
    let page_size = self::page_size(page_size)? as usize;
    let fingerprint = query_fingerprint(query);
    let after = decode_token(fingerprint, page_token)?;
    let total = items.len() as i32;
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_deref().is_none_or(|a| key(item).as_str() > a))
        .take(page_size + 1)
        .collect();
    let next = if page.len() > page_size {
        page.truncate(page_size);
        page.last()
            .map(|last| encode_token(fingerprint, &key(last)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((page, next, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_clamped() {
        assert_eq!(page_size(0).expect("ok"), 50);
        assert_eq!(page_size(7).expect("ok"), 7);
        assert_eq!(page_size(i32::MAX).expect("ok"), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_are_bound_to_their_query() {
        let q1 = query_fingerprint(&["tenants/a", ""]);
        let q2 = query_fingerprint(&["tenants/b", ""]);
        let token = encode_token(q1, "k42");
        assert_eq!(
            decode_token(q1, &token).expect("ok").as_deref(),
            Some("k42")
        );
        assert!(decode_token(q2, &token).is_err());
        assert!(decode_token(q1, "!!!").is_err());
        assert!(decode_token(q1, "AAAA").is_err());
        assert_eq!(decode_token(q1, "").expect("first page"), None);
    }
}
