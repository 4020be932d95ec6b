//! Resource names and ids: parsing and validation shared by every service.
//!
//! Ids are lowercase DNS labels; names are `tenants/{tenant}/{collection}/{id}/…`. Parsing is
//! strict (no empty segments, no `..`, no upper case, no control characters) because names are
//! authorization scopes: a name that two parsers read differently is a way across a tenant.

use std::collections::HashMap;

use crate::error::{Error, FieldViolation};

/// Checks a lowercase DNS label: `[a-z]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn is_dns_label(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Validates an id field, naming the field in the violation.
pub fn validate_id(field: &str, id: &str) -> Result<(), Error> {
    if is_dns_label(id) {
        Ok(())
    } else if id.is_empty() {
        Err(Error::invalid_argument(field, "required"))
    } else {
        Err(Error::invalid_argument(
            field,
            "must be a lowercase DNS label: a-z, 0-9 and '-', 1-63 characters, starting with a letter",
        ))
    }
}

/// Parses `tenants/{tenant}` and returns the tenant id.
pub fn parse_tenant_name(field: &str, name: &str) -> Result<String, Error> {
    match name.strip_prefix("tenants/") {
        Some(id) if is_dns_label(id) => Ok(id.to_owned()),
        _ => Err(Error::invalid_argument(
            field,
            "must be a tenant name `tenants/{tenant}`",
        )),
    }
}

/// Parses `tenants/{tenant}/{collection}/{id}` and returns (tenant, id).
pub fn parse_child_name(
    field: &str,
    name: &str,
    collection: &str,
) -> Result<(String, String), Error> {
    let bad = || {
        Error::invalid_argument(
            field,
            format!("must be a name `tenants/{{tenant}}/{collection}/{{id}}`"),
        )
    };
    let mut parts = name.split('/');
    let (Some("tenants"), Some(tenant), Some(c), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if c != collection || !is_dns_label(tenant) || !is_dns_label(id) {
        return Err(bad());
    }
    Ok((tenant.to_owned(), id.to_owned()))
}

/// The tenant a resource name belongs to (`tenants/{t}` or `tenants/{t}/…`), if any.
pub fn tenant_of(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("tenants/")?;
    let tenant = rest.split('/').next().unwrap_or_default();
    is_dns_label(tenant).then_some(tenant)
}

/// Checks that a resource name is well formed: `/`-separated non-empty segments of printable
/// ASCII without `..`, at most 1024 bytes.
pub fn validate_resource_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_graphic())
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            field,
            "must be a resource name: `/`-separated non-empty segments of printable ASCII, at most 1024 bytes",
        ))
    }
}

/// Validates free text: at most `max` characters, no control characters except newline and tab.
pub fn validate_text(field: &str, value: &str, max: usize, violations: &mut Vec<FieldViolation>) {
    if value.chars().count() > max {
        violations.push(FieldViolation::new(
            field,
            format!("at most {max} characters"),
        ));
    } else if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        violations.push(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
}

/// Validates labels: at most 64; keys `[a-z]([a-z0-9_-]{0,62})`, values `[a-z0-9_-]{0,63}`.
pub fn validate_labels(
    field: &str,
    labels: &HashMap<String, String>,
    violations: &mut Vec<FieldViolation>,
) {
    if labels.len() > 64 {
        violations.push(FieldViolation::new(field, "at most 64 labels"));
        return;
    }
    for (key, value) in labels {
        let key_ok = key.len() <= 63
            && key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let value_ok = value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !key_ok {
            violations.push(FieldViolation::new(
                format!("{field}[{}]", printable(key)),
                "label keys match [a-z][a-z0-9_-]{0,62}",
            ));
        } else if !value_ok {
            violations.push(FieldViolation::new(
                format!("{field}[{key}]"),
                "label values match [a-z0-9_-]{0,63}",
            ));
        }
    }
}

/// Validates annotations: at most 64; keys 1-256 printable ASCII, values ≤ 4096 bytes, 64 KiB total.
pub fn validate_annotations(
    field: &str,
    annotations: &HashMap<String, String>,
    violations: &mut Vec<FieldViolation>,
) {
    if annotations.len() > 64 {
        violations.push(FieldViolation::new(field, "at most 64 annotations"));
        return;
    }
    let mut total = 0;
    for (key, value) in annotations {
        total += key.len() + value.len();
        if key.is_empty() || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            violations.push(FieldViolation::new(
                format!("{field}[{}]", printable(key)),
                "annotation keys are 1-256 printable ASCII characters without spaces",
            ));
        } else if value.len() > 4096 {
            violations.push(FieldViolation::new(
                format!("{field}[{key}]"),
                "at most 4096 bytes",
            ));
        }
    }
    if total > 64 * 1024 {
        violations.push(FieldViolation::new(field, "at most 64 KiB in total"));
    }
}

/// A short, printable rendering of caller input for error messages.
pub fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "dev", "team-a", "a1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-",
            "a_b",
            "a.b",
            "é",
            "a b",
            &"a".repeat(64),
            "../x",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_tenant_name("name", "tenants/acme").expect("ok"),
            "acme"
        );
        assert!(parse_tenant_name("name", "tenants/acme/x").is_err());
        assert!(parse_tenant_name("name", "tenants/").is_err());
        assert_eq!(
            parse_child_name("name", "tenants/a/groups/g", "groups").expect("ok"),
            ("a".to_owned(), "g".to_owned())
        );
        for bad in [
            "tenants/a/groups/g/x",
            "tenants/a/roles/g",
            "tenants/A/groups/g",
            "tenants/a/groups/",
            "tenants/../groups/g",
        ] {
            assert!(parse_child_name("name", bad, "groups").is_err(), "{bad}");
        }
        assert_eq!(tenant_of("tenants/a/environments/prod"), Some("a"));
        assert_eq!(tenant_of("tenants/a"), Some("a"));
        assert_eq!(tenant_of("roles/platform-admin"), None);
        assert_eq!(tenant_of("tenants/../x"), None);
        assert!(validate_resource_name("r", "tenants/a/environments/prod").is_ok());
        for bad in [
            "",
            "tenants//a",
            "tenants/a/../b",
            "tenants/a b",
            "/tenants/a",
            "tenants/a/",
        ] {
            assert!(validate_resource_name("r", bad).is_err(), "{bad}");
        }
    }
}
