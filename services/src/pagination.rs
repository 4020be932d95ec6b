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
