//! The permission table against the contract: every RPC has exactly one row, every row names a
//! real RPC, every field path leads to a string field of the request, and every permission is
//! the one the proto comment names.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use platform_policy::{
    ResourceSource, Scope, all, known_permissions, permission_scope, rpc_permission,
};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

struct Contract {
    /// Full method path → fully-qualified input message name (without the leading dot).
    methods: HashMap<String, String>,
    /// Fully-qualified message name → descriptor.
    messages: HashMap<String, DescriptorProto>,
}

fn collect_messages(
    prefix: &str,
    messages: &[DescriptorProto],
    out: &mut HashMap<String, DescriptorProto>,
) {
    for m in messages {
        let name = format!("{prefix}.{}", m.name());
        collect_messages(&name, &m.nested_type, out);
        out.insert(name, m.clone());
    }
}

fn contract() -> Contract {
    let set = FileDescriptorSet::decode(platform_api::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut methods = HashMap::new();
    let mut messages = HashMap::new();
    for file in &set.file {
        collect_messages(file.package(), &file.message_type, &mut messages);
        if !file.package().starts_with("platform.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let input = method.input_type().trim_start_matches('.').to_owned();
                assert!(
                    methods.insert(path.clone(), input).is_none(),
                    "{path} twice"
                );
            }
        }
    }
    assert!(
        methods.len() > 50,
        "the contract has its RPCs ({} found)",
        methods.len()
    );
    Contract { methods, messages }
}

#[test]
fn every_rpc_has_exactly_one_row() {
    let contract = contract();
    let missing: Vec<&String> = contract
        .methods
        .keys()
        .filter(|m| rpc_permission(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "RPCs without a permission row: {missing:?}"
    );
    let extra: Vec<&str> = all()
        .iter()
        .map(|row| row.method)
        .filter(|m| !contract.methods.contains_key(*m))
        .collect();
    assert!(
        extra.is_empty(),
        "rows naming RPCs that do not exist: {extra:?}"
    );
    assert_eq!(all().len(), contract.methods.len(), "one row per RPC");
}

/// Follows `path` through `message`; the last field must be a singular string.
fn check_string_path(contract: &Contract, message: &str, path: &str) -> Result<(), String> {
    let mut current = message.to_owned();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let descriptor = contract
            .messages
            .get(&current)
            .ok_or_else(|| format!("no message {current}"))?;
        let field = descriptor
            .field
            .iter()
            .find(|f| f.name() == *segment)
            .ok_or_else(|| format!("{current} has no field `{segment}`"))?;
        if field.label() == Label::Repeated {
            return Err(format!("{current}.{segment} is repeated"));
        }
        let last = i + 1 == segments.len();
        match (last, field.r#type()) {
            (true, Type::String) => return Ok(()),
            (true, other) => return Err(format!("{current}.{segment} is {other:?}, not a string")),
            (false, Type::Message) => {
                current = field.type_name().trim_start_matches('.').to_owned()
            }
            (false, other) => {
                return Err(format!("{current}.{segment} is {other:?}, not a message"));
            }
        }
    }
    Err(format!("empty path in {message}"))
}

#[test]
fn field_paths_name_string_fields_of_the_request() {
    let contract = contract();
    let mut errors = Vec::new();
    for row in all() {
        let Some(input) = contract.methods.get(row.method) else {
            continue;
        };
        let paths: Vec<&str> = match row.resource {
            ResourceSource::Field(p)
            | ResourceSource::TenantOf(p)
            | ResourceSource::TenantIdField(p) => vec![p],
            ResourceSource::Scoped { tenant, resource } => vec![tenant, resource],
            ResourceSource::Platform | ResourceSource::AnyAuthenticated => vec![],
        };
        for path in paths {
            if let Err(e) = check_string_path(&contract, input, path) {
                errors.push(format!("{}: `{path}`: {e}", row.method));
            }
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

fn is_permission_shaped(p: &str) -> bool {
    let parts: Vec<&str> = p.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1].starts_with(|c: char| c.is_ascii_lowercase())
        && parts[2].starts_with(|c: char| c.is_ascii_lowercase())
}

#[test]
fn permissions_are_well_formed_and_known() {
    let known: BTreeSet<&str> = known_permissions().into_iter().collect();
    assert_eq!(known.len(), known_permissions().len(), "distinct");
    assert!(
        known_permissions().windows(2).all(|w| w[0] < w[1]),
        "sorted"
    );
    let services: BTreeSet<&str> = [
        "audit",
        "catalog",
        "deployments",
        "environments",
        "iam",
        "insights",
        "secrets",
    ]
    .into();
    for p in &known {
        assert!(
            is_permission_shaped(p),
            "{p} is <service>.<collection>.<verb>"
        );
        assert!(
            services.contains(p.split('.').next().unwrap_or_default()),
            "{p}: unknown service"
        );
    }
    for row in all() {
        match row.resource {
            ResourceSource::AnyAuthenticated => {
                assert!(row.permission.is_empty(), "{}", row.method)
            }
            _ => assert!(
                known.contains(row.permission),
                "{}: `{}` unknown",
                row.method,
                row.permission
            ),
        }
        // The method's service matches the permission's service.
        if !row.permission.is_empty() {
            let service = row.permission.split('.').next().unwrap_or_default();
            assert!(
                row.method.starts_with(&format!("/platform.{service}.v1.")),
                "{} needs {}",
                row.method,
                row.permission
            );
        }
    }
}

/// The proto files of the contract, as (file name, text).
fn proto_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/platform");
    let mut out = Vec::new();
    for service in std::fs::read_dir(&root).expect("proto/platform") {
        let dir = service.expect("entry").path().join("v1");
        for file in std::fs::read_dir(&dir).expect("v1") {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|e| e == "proto") {
                let text = std::fs::read_to_string(&path).expect("readable");
                out.push((path.display().to_string(), text));
            }
        }
    }
    assert!(!out.is_empty());
    out
}

fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_permission_named_in_the_protos_is_known_and_vice_versa() {
    let services = [
        "audit.",
        "catalog.",
        "deployments.",
        "environments.",
        "iam.",
        "insights.",
        "secrets.",
    ];
    let mut named: BTreeSet<String> = BTreeSet::new();
    for (_, text) in proto_sources() {
        for word in backticked(&text) {
            if is_permission_shaped(word) && services.iter().any(|s| word.starts_with(s)) {
                named.insert(word.to_owned());
            }
        }
    }
    let known: BTreeSet<String> = known_permissions().into_iter().map(str::to_owned).collect();
    assert_eq!(
        named, known,
        "permissions named in the protos vs known_permissions()"
    );
}

#[test]
fn each_row_names_the_permission_of_its_comment() {
    let mut checked = 0;
    for (file, text) in proto_sources() {
        let mut package = String::new();
        let mut service = String::new();
        let mut comment: Vec<&str> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(p) = line.strip_prefix("package ") {
                package = p.trim_end_matches(';').to_owned();
            } else if let Some(s) = line.strip_prefix("service ") {
                service = s.split_whitespace().next().unwrap_or_default().to_owned();
            }
            if let Some(c) = line.strip_prefix("//") {
                comment.push(c);
                continue;
            }
            if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or_default().trim();
                let method = format!("/{package}.{service}/{name}");
                let block = comment.join("\n");
                let permission_line = block
                    .split("Permission:")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{file}: {method} has no `Permission:` line"));
                let row = rpc_permission(&method).unwrap_or_else(|| panic!("{method} has no row"));
                if permission_line.trim_start().starts_with("none") {
                    assert_eq!(row.resource, ResourceSource::AnyAuthenticated, "{method}");
                } else {
                    let first = backticked(permission_line)
                        .first()
                        .copied()
                        .unwrap_or_default();
                    assert_eq!(row.permission, first, "{method}");
                    if permission_line.contains("at platform scope (platform-admin)") {
                        assert_eq!(permission_scope(first), Some(Scope::Platform), "{method}");
                    }
                }
                checked += 1;
            }
            comment.clear();
        }
    }
    assert_eq!(checked, all().len(), "every RPC's comment was checked");
}
