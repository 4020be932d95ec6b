//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz, nightly) and for the corpus replay
//! that runs on stable in the ordinary test suite: each takes arbitrary bytes, feeds them to one
//! of the parsers that see untrusted input first, and checks what must hold for any input —
//! no panic, and the invariants named below. They are here, in the library, so that the fuzzers
//! and the replay exercise exactly the same code.

use std::sync::LazyLock;

use crate::auth::{AuthConfig, Authenticator, SigningKey};
use crate::catalog::{EntityKey, model, yaml};
use crate::{filter, names};

/// Resource names and entity references: whatever parses must be what a name is made of.
pub fn resource_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tenant) = names::parse_tenant_name("name", text) {
        assert!(names::is_dns_label(&tenant), "{tenant:?}");
        assert_eq!(format!("tenants/{tenant}"), text);
    }
    for collection in ["environments", "secrets", "scorecards", "deployments"] {
        if let Ok((tenant, id)) = names::parse_child_name("name", text, collection) {
            // No traversal, no separators, no other tenant hidden in a parsed name.
            assert!(names::is_dns_label(&tenant), "{tenant:?} from {text:?}");
            assert!(!id.is_empty() && !id.contains('/') && id != ".." && id != ".");
            assert_eq!(format!("tenants/{tenant}/{collection}/{id}"), text);
        }
    }
    if let Ok((tenant, key)) = EntityKey::parse_name("name", text) {
        assert!(names::is_dns_label(&tenant));
        assert!(!key.name.contains('/'));
    }
    if let Ok(reference) = model::parse_entity_ref(text, Some("component"), "default") {
        // A parsed reference parses again to itself.
        let again = model::parse_entity_ref(&reference.canonical(), None, "default")
            .expect("a canonical reference parses");
        assert_eq!(again, reference);
    }
}

/// List filters (AIP-160 subset) and the catalog's filter, which turns them into SQL: values
/// are always bound, so no caller text reaches the SQL — which would show as a statement
/// separator or a comment, neither of which the generated SQL ever has.
pub fn filters(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = filter::parse(text);
    let _ = filter::parse_expr(text);
    if let Ok((sql, _params)) = crate::catalog::entity_filter_condition(text) {
        assert!(
            !sql.contains(';') && !sql.contains("--") && !sql.contains("/*"),
            "caller text reached the SQL: {sql:?}"
        );
    }
}

/// Backstage descriptor files: parsed within the limits, every document either an entity that
/// validates or a reported failure.
pub fn backstage_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = yaml::Limits::default();
    let Ok(documents) = yaml::parse_documents(text, &limits) else {
        return;
    };
    for document in &documents {
        let _ = model::document_to_entity(document);
    }
}

static AUTHENTICATOR: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::new(
        AuthConfig::default(),
        SigningKey::generate().expect("a signing key"),
    )
    .expect("an authenticator")
});

/// Bearer tokens: the header parser and the verifier refuse garbage without panicking; nothing
/// the fuzzer can make is accepted (it has no signing key).
pub fn tokens(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = crate::auth::parse_authorization_header(text) {
        assert!(
            AUTHENTICATOR.verify(token).is_err(),
            "a forged token was accepted"
        );
    }
    assert!(
        AUTHENTICATOR.verify(text).is_err(),
        "a forged token was accepted"
    );
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the corpus replay know them.
pub const TARGETS: [(&str, Target); 4] = [
    ("resource_names", resource_names),
    ("filters", filters),
    ("backstage_yaml", backstage_yaml),
    ("tokens", tokens),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The smoke mode of fuzzing that runs everywhere (stable, CI): every input the fuzzers have
    /// kept in `fuzz/corpus/<target>/` (seeds, and what they found interesting) goes through its
    /// target again.
    #[test]
    fn the_fuzz_corpora_replay_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut replayed = 0;
            for entry in entries {
                let path = entry.expect("entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                target(&data);
                replayed += 1;
            }
            assert!(replayed > 0, "the {name} corpus is empty");
        }
    }

    #[test]
    fn the_targets_refuse_what_they_must() {
        // A name with traversal parses to nothing; a forged token is refused.
        resource_names(b"tenants/acme/environments/../secrets");
        tokens(b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.");
        filters(b"name = \"x'; DROP TABLE tenants; --\"");
        backstage_yaml(b"a: &x [*x, *x, *x]");
    }
}
