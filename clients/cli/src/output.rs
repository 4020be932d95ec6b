//! Printing results: a table for people (chosen columns), or the whole message as JSON or YAML
//! for scripts. JSON is the Protobuf JSON mapping (camelCase names, enums by name, 64-bit
//! integers as strings), produced by decoding each message against the contract's descriptors
//! (`platform_api::FILE_DESCRIPTOR_SET`), so every field of every message prints without
//! hand-written conversions.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

use crate::CliError;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(platform_api::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptor set is compiled into this binary")
});

/// A generated message with its Protobuf full name.
pub trait Named: prost::Message {
    const NAME: &'static str;
}

macro_rules! named {
    ($($t:ty => $n:literal),* $(,)?) => {
        $(impl Named for $t { const NAME: &'static str = $n; })*
    };
}

use platform_sdk::{audit, catalog, deployments, environments, iam, insights, secrets};

named!(
    iam::Tenant => "platform.iam.v1.Tenant",
    iam::RoleBinding => "platform.iam.v1.RoleBinding",
    iam::GetCallerResponse => "platform.iam.v1.GetCallerResponse",
    iam::TestPermissionsResponse => "platform.iam.v1.TestPermissionsResponse",
    catalog::Entity => "platform.catalog.v1.Entity",
    catalog::ImportEntitiesResponse => "platform.catalog.v1.ImportEntitiesResponse",
    catalog::TraverseEntityGraphResponse => "platform.catalog.v1.TraverseEntityGraphResponse",
    environments::Environment => "platform.environments.v1.Environment",
    deployments::Deployment => "platform.deployments.v1.Deployment",
    deployments::LogLine => "platform.deployments.v1.LogLine",
    secrets::Secret => "platform.secrets.v1.Secret",
    secrets::SecretVersion => "platform.secrets.v1.SecretVersion",
    audit::AuditEvent => "platform.audit.v1.AuditEvent",
    audit::VerifyAuditChainResponse => "platform.audit.v1.VerifyAuditChainResponse",
    insights::DependencyGraph => "platform.insights.v1.DependencyGraph",
);

/// The message as its Protobuf JSON value.
pub fn json_of<M: Named>(message: &M) -> Value {
    let descriptor = POOL
        .get_message_by_name(M::NAME)
        .expect("every named message is in the contract");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes against its own descriptor");
    serde_json::to_value(&dynamic).unwrap_or(Value::Null)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A table column: its header and the dotted path of the JSON field it shows.
pub type Column = (&'static str, &'static str);

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
}

impl Printer {
    /// Prints one message.
    pub fn one<M: Named>(&self, message: &M, columns: &[Column]) -> Result<(), CliError> {
        let value = json_of(message);
        match self.format {
            Format::Table => print!("{}", table(std::slice::from_ref(&value), columns)),
            Format::Json => println!("{}", pretty(&value)),
            Format::Yaml => print!("{}", yaml(&value)),
        }
        Ok(())
    }

    /// Prints a list of messages (a JSON array, a YAML sequence, or table rows).
    pub fn list<M: Named>(&self, messages: &[M], columns: &[Column]) -> Result<(), CliError> {
        let values: Vec<Value> = messages.iter().map(json_of).collect();
        match self.format {
            Format::Table => print!("{}", table(&values, columns)),
            Format::Json => println!("{}", pretty(&Value::Array(values))),
            Format::Yaml => print!("{}", yaml(&Value::Array(values))),
        }
        Ok(())
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The field at a dotted path, as table text (lists joined by commas).
fn cell(value: &Value, path: &str) -> String {
    let mut current = value;
    for part in path.split('.') {
        match current.get(part) {
            Some(v) => current = v,
            None => return String::new(),
        }
    }
    text(current)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Rows under upper-case headers, columns padded to their widest cell.
pub fn table(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, path)| cell(row, path).replace(['\n', '\t'], " "))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(header.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        let mut out = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(columns.iter().map(|(h, _)| h.to_uppercase()).collect());
    for row in cells {
        out.push_str(&line(row));
    }
    out
}

/// A JSON value as block-style YAML (strings quoted whenever plain style could be misread).
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_into(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./@+-".contains(c))
                && !s.starts_with(['-', '.', '@'])
                && s.parse::<f64>().is_err()
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                );
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => String::new(),
    }
}

fn is_scalar(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

fn yaml_into(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                let key = yaml_scalar(&Value::String(key.clone()));
                if is_scalar(v) {
                    out.push_str(&format!("{pad}{key}: {}\n", yaml_scalar(v)));
                } else {
                    out.push_str(&format!("{pad}{key}:\n"));
                    yaml_into(v, indent + 2, out);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                if is_scalar(v) {
                    out.push_str(&format!("{pad}- {}\n", yaml_scalar(v)));
                } else {
                    // The first line of a block item sits after the dash.
                    let mut inner = String::new();
                    yaml_into(v, indent + 2, &mut inner);
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_join_lists() {
        let rows = vec![
            serde_json::json!({"name": "a", "tags": ["x", "y"], "spec": {"owner": "team-a"}}),
            serde_json::json!({"name": "longer-name"}),
        ];
        let out = table(
            &rows,
            &[("name", "name"), ("tags", "tags"), ("owner", "spec.owner")],
        );
        assert_eq!(
            out,
            "NAME         TAGS  OWNER\na            x,y   team-a\nlonger-name\n"
        );
    }

    #[test]
    fn yaml_quotes_what_plain_style_would_misread() {
        let v = serde_json::json!({
            "name": "payments",
            "empty": "",
            "colon": "a: b",
            "bool": "true",
            "num": "42",
            "list": ["one", {"k": "v", "n": 1}],
            "nested": {"x": []}
        });
        let out = yaml(&v);
        assert!(out.contains("name: payments\n"), "{out}");
        assert!(out.contains("empty: \"\"\n"), "{out}");
        assert!(out.contains("colon: \"a: b\"\n"), "{out}");
        assert!(out.contains("bool: \"true\"\n"), "{out}");
        assert!(out.contains("num: \"42\"\n"), "{out}");
        assert!(
            out.contains("list:\n  - one\n  - k: v\n    n: 1\n"),
            "{out}"
        );
        assert!(out.contains("nested:\n  x: []\n"), "{out}");
    }

    #[test]
    fn messages_print_with_the_protobuf_json_mapping() {
        let d = deployments::Deployment {
            name: "tenants/acme/deployments/1".into(),
            state: deployments::DeploymentState::Succeeded as i32,
            ..Default::default()
        };
        let v = json_of(&d);
        assert_eq!(v["name"], "tenants/acme/deployments/1");
        assert_eq!(v["state"], "DEPLOYMENT_STATE_SUCCEEDED");
    }
}
