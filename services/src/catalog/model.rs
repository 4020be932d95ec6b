//! The catalog's entity model as pure logic: Backstage descriptor YAML → validated
//! `platform.catalog.v1.Entity`, entity references, derived relations and content hashes. No
//! I/O and no storage: `catalog/mod.rs` stores what this module produces.
//!
//! Why it is one module apart from the handlers: the same rules must hold for entities that
//! arrive as YAML (ImportEntities) and as proto (CreateEntity/UpdateEntity), and they are
//! Backstage's rules, which users bring from existing catalogs. Keeping them here, free of the
//! database, makes them testable against the conformance corpus of real descriptor files.
//!
//! How a document becomes an entity ([`document_to_entity`]):
//! 1. shape and types, while reading the YAML tree ([`super::yaml`]): a mapping at the root,
//!    `apiVersion`, `kind` and `metadata` present, strings where strings belong, no duplicate
//!    keys. Spec keys the typed spec does not model, obsolete fields and unresolved placeholders
//!    (`{$text: ...}`) go unchanged into `additional_spec`; unknown `metadata` keys into
//!    `additional_metadata`.
//! 2. the rules ([`check_entity`], shared with the proto path): Backstage's name, namespace,
//!    label, annotation and tag formats, required spec fields, parseable references, and the
//!    limits of the proto contract. Everything Backstage accepts but that is probably a mistake
//!    is a warning, never an error: an unknown kind (kept as a generic entity), an obsolete or
//!    unknown field, a placeholder, a reference to an unexpected kind, trailing whitespace.
//! 3. normalisation ([`normalize_entity`]): namespace `default` filled in, duplicate tags
//!    dropped, surrounding whitespace of display texts trimmed.
//!
//! Every error and warning names the field by its YAML path (`metadata.tags[1]`,
//! `spec.owner`, `metadata.labels["team"]`) and, for YAML, the line.
//!
//! References follow Backstage's `[kind:][namespace/]name` with the field's default kind
//! ([`parse_entity_ref`]). Backstage rejects a `dependsOn`/`dependencyOf` reference without a
//! kind; the contract instead reads it as `component:` with a warning (see resources.proto).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use platform_api::platform::catalog::v1 as pb;
use prost::Message;
use prost_types::value::Kind;
use sha2::{Digest, Sha256};

use pb::RelationType;
use pb::entity::Spec;

pub use super::yaml::{
    Limits, Node, ParseError, ParseErrorKind, RawDocument, Value as YamlValue, parse_documents,
};

/// The namespace of entities and references that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Most nesting allowed inside `additional_spec` and `additional_metadata`.
const MAX_VALUE_DEPTH: usize = 64;

/// Stable reasons of [`Issue`]s (`EntityIssue.reason`).
pub mod reason {
    /// A required field is absent or empty.
    pub const MISSING_FIELD: &str = "MISSING_FIELD";
    /// A field has the wrong YAML/JSON type.
    pub const WRONG_TYPE: &str = "WRONG_TYPE";
    /// A mapping repeats a key.
    pub const DUPLICATE_KEY: &str = "DUPLICATE_KEY";
    /// A field is both typed and in `additional_spec`/`additional_metadata`.
    pub const DUPLICATE_FIELD: &str = "DUPLICATE_FIELD";
    /// A top-level key Backstage does not know (it cannot be kept).
    pub const UNKNOWN_FIELD: &str = "UNKNOWN_FIELD";
    /// A field the server ignores (owned by the server, or not kept).
    pub const IGNORED_FIELD: &str = "IGNORED_FIELD";
    /// `metadata.name` breaks Backstage's name rule.
    pub const INVALID_NAME: &str = "INVALID_NAME";
    /// `metadata.namespace` is not a lowercase DNS label.
    pub const INVALID_NAMESPACE: &str = "INVALID_NAMESPACE";
    /// `kind` is not `[a-zA-Z][a-zA-Z0-9]*`.
    pub const INVALID_KIND: &str = "INVALID_KIND";
    /// `apiVersion` is not `[group/]version`.
    pub const INVALID_API_VERSION: &str = "INVALID_API_VERSION";
    /// A label key or value breaks the label rules.
    pub const INVALID_LABEL: &str = "INVALID_LABEL";
    /// An annotation key breaks the key rules.
    pub const INVALID_ANNOTATION: &str = "INVALID_ANNOTATION";
    /// A tag breaks Backstage's tag rule.
    pub const INVALID_TAG: &str = "INVALID_TAG";
    /// A link URL is not absolute.
    pub const INVALID_URL: &str = "INVALID_URL";
    /// An e-mail address without exactly one `@`.
    pub const INVALID_EMAIL: &str = "INVALID_EMAIL";
    /// A value outside its allowed set.
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    /// An entity reference that cannot be parsed.
    pub const INVALID_REFERENCE: &str = "INVALID_REFERENCE";
    /// The typed spec is not the one of `kind`.
    pub const SPEC_KIND_MISMATCH: &str = "SPEC_KIND_MISMATCH";
    /// A text or list longer than allowed.
    pub const TOO_LONG: &str = "TOO_LONG";
    /// More entries than allowed.
    pub const TOO_MANY: &str = "TOO_MANY";
    /// Nesting deeper than allowed.
    pub const TOO_DEEP: &str = "TOO_DEEP";
    /// A kind outside the core model (warning).
    pub const UNKNOWN_KIND: &str = "UNKNOWN_KIND";
    /// An `apiVersion` outside `backstage.io` (warning).
    pub const UNKNOWN_API_VERSION: &str = "UNKNOWN_API_VERSION";
    /// An obsolete field, kept in `additional_spec` (warning).
    pub const OBSOLETE_FIELD: &str = "OBSOLETE_FIELD";
    /// A `$text`/`$json`/`$yaml` placeholder, kept verbatim (warning).
    pub const UNRESOLVED_PLACEHOLDER: &str = "UNRESOLVED_PLACEHOLDER";
    /// A reference to a kind the field does not expect (warning).
    pub const UNEXPECTED_REFERENCE_KIND: &str = "UNEXPECTED_REFERENCE_KIND";
    /// A `dependsOn`/`dependencyOf` reference without kind, read as `component:` (warning).
    pub const MISSING_REFERENCE_KIND: &str = "MISSING_REFERENCE_KIND";
    /// Whitespace around a value (warning).
    pub const TRAILING_WHITESPACE: &str = "TRAILING_WHITESPACE";
    /// A tag listed twice; the later ones are dropped (warning).
    pub const DUPLICATE_TAG: &str = "DUPLICATE_TAG";
}

/// One problem found in a document or entity: an error or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The YAML path of the field, e.g. `metadata.tags[1]`; empty for the whole document.
    pub field: String,
    /// One of the [`reason`] constants.
    pub reason: String,
    /// A sentence naming the field and the rule.
    pub message: String,
    /// The 1-based line in the YAML source; 0 when not known (proto input).
    pub line: usize,
}

impl Issue {
    fn new(field: impl Into<String>, reason: &str, message: impl Into<String>) -> Issue {
        Issue {
            field: field.into(),
            reason: reason.to_owned(),
            message: message.into(),
            line: 0,
        }
    }

    /// The proto form.
    pub fn to_proto(&self) -> pb::EntityIssue {
        pb::EntityIssue {
            field: self.field.clone(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            line: i32::try_from(self.line).unwrap_or(i32::MAX),
        }
    }
}

/// What became of one YAML document.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per document, moved once: boxing would buy nothing
pub enum DocumentOutcome {
    /// A valid entity (normalised), with what was odd about it.
    Entity {
        /// The entity: api_version, kind, metadata, spec and the additional structs are set;
        /// name, uid, relations, status, source, times and etag are left for the store.
        entity: pb::Entity,
        /// Warnings, each with field path and line.
        warnings: Vec<Issue>,
    },
    /// An invalid document: every error found, each with field path and line.
    Invalid {
        /// The errors.
        errors: Vec<Issue>,
    },
}

// ------------------------------------------------------------------------------------------
// Kinds

/// The kinds of Backstage's core model, which have a typed spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoreKind {
    /// `Component`.
    Component,
    /// `API`.
    Api,
    /// `Resource`.
    Resource,
    /// `System`.
    System,
    /// `Domain`.
    Domain,
    /// `Group`.
    Group,
    /// `User`.
    User,
    /// `Location`.
    Location,
}

impl CoreKind {
    /// The core kind of `kind`, compared case-insensitively; `None` for other kinds.
    pub fn parse(kind: &str) -> Option<CoreKind> {
        Some(match kind.to_ascii_lowercase().as_str() {
            "component" => CoreKind::Component,
            "api" => CoreKind::Api,
            "resource" => CoreKind::Resource,
            "system" => CoreKind::System,
            "domain" => CoreKind::Domain,
            "group" => CoreKind::Group,
            "user" => CoreKind::User,
            "location" => CoreKind::Location,
            _ => return None,
        })
    }

    /// Backstage's spelling, e.g. `API`.
    pub fn name(self) -> &'static str {
        match self {
            CoreKind::Component => "Component",
            CoreKind::Api => "API",
            CoreKind::Resource => "Resource",
            CoreKind::System => "System",
            CoreKind::Domain => "Domain",
            CoreKind::Group => "Group",
            CoreKind::User => "User",
            CoreKind::Location => "Location",
        }
    }

    /// The `spec` keys the typed spec models.
    fn spec_keys(self) -> &'static [&'static str] {
        match self {
            CoreKind::Component => &[
                "type",
                "lifecycle",
                "owner",
                "system",
                "subcomponentOf",
                "providesApis",
                "consumesApis",
                "dependsOn",
                "dependencyOf",
            ],
            CoreKind::Api => &["type", "lifecycle", "owner", "system", "definition"],
            CoreKind::Resource => &["type", "owner", "system", "dependsOn", "dependencyOf"],
            CoreKind::System => &["owner", "domain", "type"],
            CoreKind::Domain => &["owner", "subdomainOf", "type"],
            CoreKind::Group => &["type", "profile", "parent", "children", "members"],
            CoreKind::User => &["profile", "memberOf"],
            CoreKind::Location => &["type", "target", "targets", "presence"],
        }
    }

    /// Spec keys of older Backstage versions, kept with a warning.
    fn obsolete_spec_keys(self) -> &'static [&'static str] {
        match self {
            CoreKind::Group => &["ancestors", "descendants"],
            CoreKind::Component => &["implementsApis"],
            _ => &[],
        }
    }

    fn of_spec(spec: &Spec) -> CoreKind {
        match spec {
            Spec::ComponentSpec(_) => CoreKind::Component,
            Spec::ApiSpec(_) => CoreKind::Api,
            Spec::ResourceSpec(_) => CoreKind::Resource,
            Spec::SystemSpec(_) => CoreKind::System,
            Spec::DomainSpec(_) => CoreKind::Domain,
            Spec::GroupSpec(_) => CoreKind::Group,
            Spec::UserSpec(_) => CoreKind::User,
            Spec::LocationSpec(_) => CoreKind::Location,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Backstage's format rules

/// Backstage's entity name rule: 1-63 characters, `[a-zA-Z0-9]` separated by single `-`, `_`
/// or `.`.
pub fn is_valid_entity_name(name: &str) -> bool {
    separated(
        name,
        63,
        |c| c.is_ascii_alphanumeric(),
        |c| matches!(c, '-' | '_' | '.'),
    )
}

/// A lowercase DNS label: 1-63 characters of `[a-z0-9]` separated by single `-`.
pub fn is_valid_namespace(namespace: &str) -> bool {
    separated(
        namespace,
        63,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        |c| c == '-',
    )
}

/// Backstage's tag rule: 1-63 characters of `[a-z0-9:+#]` separated by single `-`.
pub fn is_valid_tag(tag: &str) -> bool {
    separated(
        tag,
        63,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ':' | '+' | '#'),
        |c| c == '-',
    )
}

/// An entity kind: 1-63 characters, `[a-zA-Z][a-zA-Z0-9]*`.
pub fn is_valid_kind(kind: &str) -> bool {
    let mut chars = kind.chars();
    kind.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name an entity
/// name.
pub fn is_valid_label_key(key: &str) -> bool {
    match key.split_once('/') {
        None => is_valid_entity_name(key),
        Some((prefix, name)) => is_valid_dns_subdomain(prefix) && is_valid_entity_name(name),
    }
}

/// A label value: empty, or an entity name.
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty() || is_valid_entity_name(value)
}

/// `[group/]version`, 1-253 characters: the group a DNS subdomain, the version 1-63 of
/// `[a-zA-Z0-9]`.
pub fn is_valid_api_version(api_version: &str) -> bool {
    let version_ok =
        |v: &str| !v.is_empty() && v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric());
    api_version.len() <= 253
        && match api_version.split_once('/') {
            None => version_ok(api_version),
            Some((group, version)) => is_valid_dns_subdomain(group) && version_ok(version),
        }
}

fn is_valid_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_valid_namespace)
}

/// An absolute URL: a scheme (`[a-zA-Z][a-zA-Z0-9+.-]*`), `:`, and more, without whitespace.
fn is_absolute_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        && !rest.is_empty()
        && !url.chars().any(char::is_whitespace)
}

/// 1..=max characters: runs of `word` characters separated by single `sep` characters.
fn separated(
    text: &str,
    max: usize,
    word: impl Fn(char) -> bool,
    sep: impl Fn(char) -> bool,
) -> bool {
    if text.is_empty() || text.len() > max {
        return false;
    }
    let mut previous_sep = true; // no leading separator
    for c in text.chars() {
        if sep(c) {
            if previous_sep {
                return false;
            }
            previous_sep = true;
        } else if word(c) {
            previous_sep = false;
        } else {
            return false;
        }
    }
    !previous_sep
}

const NAME_RULE: &str = r#"1-63 characters of [a-zA-Z0-9] separated by "-", "_" or ".""#;
const NAMESPACE_RULE: &str =
    r#"a lowercase DNS label: 1-63 characters of [a-z0-9] separated by "-""#;
const TAG_RULE: &str = r#"1-63 characters of [a-z0-9:+#] separated by "-""#;
const LABEL_KEY_RULE: &str = r#"[prefix/]name, the prefix a DNS subdomain and the name 1-63 characters of [a-zA-Z0-9] separated by "-", "_" or ".""#;

// ------------------------------------------------------------------------------------------
// Entity references

/// A parsed entity reference. `kind` and `namespace` are lowercase; `name` is as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRef {
    /// The kind, lowercase (`component`).
    pub kind: String,
    /// The namespace, lowercase (`default`).
    pub namespace: String,
    /// The name as written (`Petstore`).
    pub name: String,
}

impl EntityRef {
    /// `kind:namespace/name`, kind and namespace lowercase, name as written.
    pub fn canonical(&self) -> String {
        format!("{}:{}/{}", self.kind, self.namespace, self.name)
    }

    /// The reference of an entity: its kind, namespace (`default` when empty) and name.
    pub fn of_entity(entity: &pb::Entity) -> EntityRef {
        let metadata = entity.metadata.as_ref();
        EntityRef {
            kind: entity.kind.to_ascii_lowercase(),
            namespace: entity_namespace(entity),
            name: metadata.map(|m| m.name.clone()).unwrap_or_default(),
        }
    }

    /// Whether two references name the same entity (all parts compared case-insensitively).
    pub fn same_entity(&self, other: &EntityRef) -> bool {
        self.kind == other.kind
            && self.namespace == other.namespace
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefError {
    /// The text is empty.
    Empty,
    /// An empty kind, namespace or name part (`:x`, `a:/b`, `ns/`).
    Malformed(String),
    /// No kind written and the field has no default kind.
    MissingKind(String),
    /// The kind is not `[a-zA-Z][a-zA-Z0-9]*`.
    InvalidKind(String),
    /// The namespace is not a DNS label.
    InvalidNamespace(String),
    /// The name breaks Backstage's name rule.
    InvalidName(String),
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefError::Empty => write!(f, "an entity reference must not be empty"),
            RefError::Malformed(text) => {
                write!(f, "{text:?} is not of the form [kind:][namespace/]name")
            }
            RefError::MissingKind(text) => {
                write!(
                    f,
                    "{text:?} has no kind and this field has no default kind; write it as kind:[namespace/]name"
                )
            }
            RefError::InvalidKind(kind) => write!(
                f,
                "kind {kind:?} must be 1-63 characters of [a-zA-Z][a-zA-Z0-9]*"
            ),
            RefError::InvalidNamespace(ns) => {
                write!(f, "namespace {ns:?} must be {NAMESPACE_RULE}")
            }
            RefError::InvalidName(name) => write!(f, "name {name:?} must be {NAME_RULE}"),
        }
    }
}

impl std::error::Error for RefError {}

/// Parses Backstage's `[kind:][namespace/]name` the way Backstage's `parseEntityRef` splits it
/// (the first `:` ends the kind unless a `/` comes before it; the first `/` ends the namespace),
/// then applies the defaults: `default_kind` when no kind is written (none → [`RefError::MissingKind`]),
/// `default_namespace` when no namespace is written. Kind and namespace are compared
/// case-insensitively and returned lowercase; the name keeps its case. Unlike Backstage, every
/// part must be valid (a reference that can never name an entity is an error, not a dangling
/// relation).
pub fn parse_entity_ref(
    text: &str,
    default_kind: Option<&str>,
    default_namespace: &str,
) -> Result<EntityRef, RefError> {
    if text.is_empty() {
        return Err(RefError::Empty);
    }
    let slash = text.find('/');
    let colon = text.find(':').filter(|&c| slash.is_none_or(|s| c < s));
    let kind = colon.map(|c| &text[..c]);
    let after_kind = colon.map_or(0, |c| c + 1);
    let namespace = slash.map(|s| &text[after_kind..s]);
    let name = &text[slash.map_or(after_kind, |s| s + 1)..];
    if kind == Some("") || namespace == Some("") || name.is_empty() {
        return Err(RefError::Malformed(text.to_owned()));
    }
    let kind = match kind.or(default_kind) {
        Some(kind) => kind,
        None => return Err(RefError::MissingKind(text.to_owned())),
    };
    if !is_valid_kind(kind) {
        return Err(RefError::InvalidKind(kind.to_owned()));
    }
    let namespace = namespace.unwrap_or(default_namespace).to_ascii_lowercase();
    if !is_valid_namespace(&namespace) {
        return Err(RefError::InvalidNamespace(namespace));
    }
    if !is_valid_entity_name(name) {
        return Err(RefError::InvalidName(name.to_owned()));
    }
    Ok(EntityRef {
        kind: kind.to_ascii_lowercase(),
        namespace,
        name: name.to_owned(),
    })
}

/// The namespace of an entity, lowercase, `default` when empty.
fn entity_namespace(entity: &pb::Entity) -> String {
    match entity.metadata.as_ref().map(|m| m.namespace.as_str()) {
        None | Some("") => DEFAULT_NAMESPACE.to_owned(),
        Some(ns) => ns.to_ascii_lowercase(),
    }
}

// ------------------------------------------------------------------------------------------
// Relations

/// The Backstage name of a relation type (`ownedBy`, `apiProvidedBy`, ...); empty for
/// unspecified or unknown values. Takes the enum or its `i32` (as stored).
pub fn backstage_type_name(relation: impl Into<i32>) -> &'static str {
    match RelationType::try_from(relation.into()) {
        Ok(RelationType::OwnedBy) => "ownedBy",
        Ok(RelationType::OwnerOf) => "ownerOf",
        Ok(RelationType::PartOf) => "partOf",
        Ok(RelationType::HasPart) => "hasPart",
        Ok(RelationType::DependsOn) => "dependsOn",
        Ok(RelationType::DependencyOf) => "dependencyOf",
        Ok(RelationType::ProvidesApi) => "providesApi",
        Ok(RelationType::ApiProvidedBy) => "apiProvidedBy",
        Ok(RelationType::ConsumesApi) => "consumesApi",
        Ok(RelationType::ApiConsumedBy) => "apiConsumedBy",
        Ok(RelationType::MemberOf) => "memberOf",
        Ok(RelationType::HasMember) => "hasMember",
        Ok(RelationType::ParentOf) => "parentOf",
        Ok(RelationType::ChildOf) => "childOf",
        Ok(RelationType::Unspecified) | Err(_) => "",
    }
}

/// The relation type of a Backstage name (`ownedBy` → OWNED_BY), case-insensitively.
pub fn relation_type_from_name(name: &str) -> Option<RelationType> {
    ALL_RELATION_TYPES
        .iter()
        .copied()
        .find(|r| backstage_type_name(*r).eq_ignore_ascii_case(name))
}

const ALL_RELATION_TYPES: [RelationType; 14] = [
    RelationType::OwnedBy,
    RelationType::OwnerOf,
    RelationType::PartOf,
    RelationType::HasPart,
    RelationType::DependsOn,
    RelationType::DependencyOf,
    RelationType::ProvidesApi,
    RelationType::ApiProvidedBy,
    RelationType::ConsumesApi,
    RelationType::ApiConsumedBy,
    RelationType::MemberOf,
    RelationType::HasMember,
    RelationType::ParentOf,
    RelationType::ChildOf,
];

/// The relation the target holds towards the source: when A has `relation` to B, B has
/// `inverse(relation)` to A. UNSPECIFIED maps to itself.
pub fn inverse(relation: RelationType) -> RelationType {
    match relation {
        RelationType::OwnedBy => RelationType::OwnerOf,
        RelationType::OwnerOf => RelationType::OwnedBy,
        RelationType::PartOf => RelationType::HasPart,
        RelationType::HasPart => RelationType::PartOf,
        RelationType::DependsOn => RelationType::DependencyOf,
        RelationType::DependencyOf => RelationType::DependsOn,
        RelationType::ProvidesApi => RelationType::ApiProvidedBy,
        RelationType::ApiProvidedBy => RelationType::ProvidesApi,
        RelationType::ConsumesApi => RelationType::ApiConsumedBy,
        RelationType::ApiConsumedBy => RelationType::ConsumesApi,
        RelationType::MemberOf => RelationType::HasMember,
        RelationType::HasMember => RelationType::MemberOf,
        RelationType::ParentOf => RelationType::ChildOf,
        RelationType::ChildOf => RelationType::ParentOf,
        RelationType::Unspecified => RelationType::Unspecified,
    }
}

/// One reference-holding field of a spec.
struct RefField<'e> {
    /// YAML path, e.g. `spec.providesApis[1]`.
    field: String,
    text: &'e str,
    /// The kind used when none is written; `None` for dependsOn/dependencyOf (read as
    /// `component` with a warning).
    default_kind: Option<&'static str>,
    /// Kinds the field expects (lowercase); empty: any.
    expected: &'static [&'static str],
    relation: RelationType,
}

fn ref_fields(entity: &pb::Entity) -> Vec<RefField<'_>> {
    let mut out = Vec::new();
    fn single<'e>(
        out: &mut Vec<RefField<'e>>,
        key: &str,
        text: &'e str,
        default_kind: Option<&'static str>,
        expected: &'static [&'static str],
        relation: RelationType,
    ) {
        if !text.is_empty() {
            out.push(RefField {
                field: format!("spec.{key}"),
                text,
                default_kind,
                expected,
                relation,
            });
        }
    }
    fn list<'e>(
        out: &mut Vec<RefField<'e>>,
        key: &str,
        texts: &'e [String],
        default_kind: Option<&'static str>,
        expected: &'static [&'static str],
        relation: RelationType,
    ) {
        for (i, text) in texts.iter().enumerate() {
            out.push(RefField {
                field: format!("spec.{key}[{i}]"),
                text,
                default_kind,
                expected,
                relation,
            });
        }
    }
    const OWNER: &[&str] = &["group", "user"];
    const SYSTEM: &[&str] = &["system"];
    const COMPONENT: &[&str] = &["component"];
    const API: &[&str] = &["api"];
    const DOMAIN: &[&str] = &["domain"];
    const GROUP: &[&str] = &["group"];
    const USER: &[&str] = &["user"];
    const ANY: &[&str] = &[];
    match &entity.spec {
        Some(Spec::ComponentSpec(s)) => {
            single(
                &mut out,
                "owner",
                &s.owner,
                Some("group"),
                OWNER,
                RelationType::OwnedBy,
            );
            single(
                &mut out,
                "system",
                &s.system,
                Some("system"),
                SYSTEM,
                RelationType::PartOf,
            );
            single(
                &mut out,
                "subcomponentOf",
                &s.subcomponent_of,
                Some("component"),
                COMPONENT,
                RelationType::PartOf,
            );
            list(
                &mut out,
                "providesApis",
                &s.provides_apis,
                Some("api"),
                API,
                RelationType::ProvidesApi,
            );
            list(
                &mut out,
                "consumesApis",
                &s.consumes_apis,
                Some("api"),
                API,
                RelationType::ConsumesApi,
            );
            list(
                &mut out,
                "dependsOn",
                &s.depends_on,
                None,
                ANY,
                RelationType::DependsOn,
            );
            list(
                &mut out,
                "dependencyOf",
                &s.dependency_of,
                None,
                ANY,
                RelationType::DependencyOf,
            );
        }
        Some(Spec::ApiSpec(s)) => {
            single(
                &mut out,
                "owner",
                &s.owner,
                Some("group"),
                OWNER,
                RelationType::OwnedBy,
            );
            single(
                &mut out,
                "system",
                &s.system,
                Some("system"),
                SYSTEM,
                RelationType::PartOf,
            );
        }
        Some(Spec::ResourceSpec(s)) => {
            single(
                &mut out,
                "owner",
                &s.owner,
                Some("group"),
                OWNER,
                RelationType::OwnedBy,
            );
            single(
                &mut out,
                "system",
                &s.system,
                Some("system"),
                SYSTEM,
                RelationType::PartOf,
            );
            list(
                &mut out,
                "dependsOn",
                &s.depends_on,
                None,
                ANY,
                RelationType::DependsOn,
            );
            list(
                &mut out,
                "dependencyOf",
                &s.dependency_of,
                None,
                ANY,
                RelationType::DependencyOf,
            );
        }
        Some(Spec::SystemSpec(s)) => {
            single(
                &mut out,
                "owner",
                &s.owner,
                Some("group"),
                OWNER,
                RelationType::OwnedBy,
            );
            single(
                &mut out,
                "domain",
                &s.domain,
                Some("domain"),
                DOMAIN,
                RelationType::PartOf,
            );
        }
        Some(Spec::DomainSpec(s)) => {
            single(
                &mut out,
                "owner",
                &s.owner,
                Some("group"),
                OWNER,
                RelationType::OwnedBy,
            );
            single(
                &mut out,
                "subdomainOf",
                &s.subdomain_of,
                Some("domain"),
                DOMAIN,
                RelationType::PartOf,
            );
        }
        Some(Spec::GroupSpec(s)) => {
            single(
                &mut out,
                "parent",
                &s.parent,
                Some("group"),
                GROUP,
                RelationType::ChildOf,
            );
            list(
                &mut out,
                "children",
                &s.children,
                Some("group"),
                GROUP,
                RelationType::ParentOf,
            );
            list(
                &mut out,
                "members",
                &s.members,
                Some("user"),
                USER,
                RelationType::HasMember,
            );
        }
        Some(Spec::UserSpec(s)) => {
            list(
                &mut out,
                "memberOf",
                &s.member_of,
                Some("group"),
                GROUP,
                RelationType::MemberOf,
            );
        }
        Some(Spec::LocationSpec(_)) | None => {}
    }
    out
}

/// A reference field resolved: the target, or why not, plus a warning if it is odd.
fn resolve_ref_field(
    field: &RefField<'_>,
    namespace: &str,
) -> Result<(EntityRef, Option<Issue>), RefError> {
    let (target, mut warning) = match parse_entity_ref(field.text, field.default_kind, namespace) {
        Err(RefError::MissingKind(_)) => {
            let target = parse_entity_ref(field.text, Some("component"), namespace)?;
            let warning = Issue::new(
                &field.field,
                reason::MISSING_REFERENCE_KIND,
                format!(
                    "{} {:?} names no kind; it is read as {:?}",
                    field.field,
                    field.text,
                    target.canonical()
                ),
            );
            (target, Some(warning))
        }
        other => (other?, None),
    };
    if warning.is_none()
        && !field.expected.is_empty()
        && !field.expected.contains(&target.kind.as_str())
    {
        warning = Some(Issue::new(
            &field.field,
            reason::UNEXPECTED_REFERENCE_KIND,
            format!(
                "{} {:?} names a {}, but this field expects {}",
                field.field,
                field.text,
                target.kind,
                field.expected.join(" or ")
            ),
        ));
    }
    Ok((target, warning))
}

/// Every relation the entity declares through its own spec, in its own direction (the store
/// adds the inverse side with [`inverse`]), in spec order without duplicates. References that
/// do not parse are skipped ([`check_entity`] reports them); a `dependsOn`/`dependencyOf`
/// reference without kind is read as `component:`.
pub fn derive_relations(entity: &pb::Entity) -> Vec<(RelationType, EntityRef)> {
    let namespace = entity_namespace(entity);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for field in ref_fields(entity) {
        if let Ok((target, _)) = resolve_ref_field(&field, &namespace)
            && seen.insert((field.relation, target.clone()))
        {
            out.push((field.relation, target));
        }
    }
    out
}

/// Warnings that need more than one entity: a reference whose target is not among `entities`
/// although an entity of another kind with that namespace and name is (e.g. `owner:
/// user:team-b` where `team-b` is a Group). One list per entity, in order. The store can run
/// the same test against the database for targets outside the batch.
pub fn reference_kind_warnings(entities: &[pb::Entity]) -> Vec<Vec<Issue>> {
    let mut by_name: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut present: HashSet<(String, String, String)> = HashSet::new();
    for e in entities {
        let r = EntityRef::of_entity(e);
        let name = r.name.to_ascii_lowercase();
        by_name
            .entry((r.namespace.clone(), name.clone()))
            .or_default()
            .push(e.kind.clone());
        present.insert((r.kind, r.namespace, name));
    }
    entities
        .iter()
        .map(|entity| {
            let namespace = entity_namespace(entity);
            let mut warnings = Vec::new();
            for field in ref_fields(entity) {
                let Ok((target, _)) = resolve_ref_field(&field, &namespace) else { continue };
                let name = target.name.to_ascii_lowercase();
                if present.contains(&(target.kind.clone(), target.namespace.clone(), name.clone())) {
                    continue;
                }
                if let Some(kinds) = by_name.get(&(target.namespace.clone(), name)) {
                    warnings.push(Issue::new(
                        &field.field,
                        reason::UNEXPECTED_REFERENCE_KIND,
                        format!(
                            "{} {:?} names {}, which does not exist; an entity of kind {} has that name",
                            field.field,
                            field.text,
                            target.canonical(),
                            kinds.join(", ")
                        ),
                    ));
                }
            }
            warnings
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Content hash

/// The bytes that identify an entity's stored content: api_version, kind, metadata and spec
/// (typed and additional), with maps in key order and an empty namespace read as `default`.
/// Output-only fields (name, uid, relations, status, source, times, etag) are left out, so an
/// identical re-import gives identical bytes.
pub fn content_bytes(entity: &pb::Entity) -> Vec<u8> {
    let mut metadata = entity.metadata.clone().unwrap_or_default();
    if metadata.namespace.is_empty() {
        metadata.namespace = DEFAULT_NAMESPACE.to_owned();
    }
    // Label and annotation maps are hash maps, whose encoding order varies: they are appended
    // sorted instead. Everything else encodes deterministically (Struct fields are BTreeMaps).
    let labels: BTreeMap<String, String> =
        std::mem::take(&mut metadata.labels).into_iter().collect();
    let annotations: BTreeMap<String, String> = std::mem::take(&mut metadata.annotations)
        .into_iter()
        .collect();
    let content = pb::Entity {
        api_version: entity.api_version.clone(),
        kind: entity.kind.clone(),
        metadata: Some(metadata),
        spec: entity.spec.clone(),
        additional_spec: entity.additional_spec.clone(),
        ..Default::default()
    };
    let mut out = b"catalog-entity-v1\0".to_vec();
    let body = content.encode_to_vec();
    out.extend((body.len() as u64).to_le_bytes());
    out.extend(body);
    for map in [labels, annotations] {
        out.extend((map.len() as u64).to_le_bytes());
        for (k, v) in map {
            for s in [k, v] {
                out.extend((s.len() as u64).to_le_bytes());
                out.extend(s.as_bytes());
            }
        }
    }
    out
}

/// A stable hash of [`content_bytes`]: lowercase hex SHA-256. Equal content, equal hash.
pub fn content_hash(entity: &pb::Entity) -> String {
    let digest = Sha256::digest(content_bytes(entity));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

// ------------------------------------------------------------------------------------------
// Rules shared by YAML and proto input

/// What [`check_entity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Rule violations: the entity must not be stored.
    pub errors: Vec<Issue>,
    /// Odd but accepted.
    pub warnings: Vec<Issue>,
}

/// Validates an entity (from YAML or from CreateEntity/UpdateEntity) against Backstage's rules
/// and the contract's limits. Issues carry YAML field paths (`metadata.name`, `spec.owner`)
/// and line 0.
pub fn check_entity(entity: &pb::Entity) -> Checked {
    let mut c = Checked::default();
    let namespace = entity_namespace(entity);

    // apiVersion and kind.
    if entity.api_version.is_empty() {
        c.error(
            "apiVersion",
            reason::MISSING_FIELD,
            "apiVersion is required (e.g. backstage.io/v1alpha1)",
        );
    } else if !is_valid_api_version(&entity.api_version) {
        c.error(
            "apiVersion",
            reason::INVALID_API_VERSION,
            format!(
                "apiVersion {:?} must be [group/]version (e.g. backstage.io/v1alpha1)",
                entity.api_version
            ),
        );
    } else if !entity.api_version.starts_with("backstage.io/") {
        c.warn(
            "apiVersion",
            reason::UNKNOWN_API_VERSION,
            format!(
                "apiVersion {:?} is not a backstage.io version",
                entity.api_version
            ),
        );
    }
    let core = CoreKind::parse(&entity.kind);
    if entity.kind.is_empty() {
        c.error(
            "kind",
            reason::MISSING_FIELD,
            "kind is required (e.g. Component)",
        );
    } else if !is_valid_kind(&entity.kind) {
        c.error(
            "kind",
            reason::INVALID_KIND,
            format!(
                "kind {:?} must be 1-63 characters of [a-zA-Z][a-zA-Z0-9]*",
                entity.kind
            ),
        );
    } else if core.is_none() {
        c.warn(
            "kind",
            reason::UNKNOWN_KIND,
            format!("kind {:?} is not a core kind; the entity is kept as a generic entity with its whole spec", entity.kind),
        );
    }
    match (&entity.spec, core) {
        (Some(spec), Some(kind)) if CoreKind::of_spec(spec) != kind => c.error(
            "spec",
            reason::SPEC_KIND_MISMATCH,
            format!(
                "the typed spec is a {} spec, but kind is {:?}",
                CoreKind::of_spec(spec).name(),
                entity.kind
            ),
        ),
        (Some(spec), None) => c.error(
            "spec",
            reason::SPEC_KIND_MISMATCH,
            format!(
                "kind {:?} has no typed spec (a {} spec is set); use additional_spec",
                entity.kind,
                CoreKind::of_spec(spec).name()
            ),
        ),
        _ => {}
    }

    // metadata.
    match &entity.metadata {
        None => c.error("metadata", reason::MISSING_FIELD, "metadata is required"),
        Some(m) => check_metadata(&mut c, m),
    }

    // spec.
    let additional = entity.additional_spec.as_ref().map(|s| &s.fields);
    let has_placeholder = |key: &str| {
        additional
            .and_then(|f| f.get(key))
            .is_some_and(is_placeholder_value)
    };
    if let Some(kind) = core {
        let default_spec;
        let spec = match &entity.spec {
            Some(spec) if CoreKind::of_spec(spec) == kind => spec,
            Some(_) => return c,
            None => {
                default_spec = empty_spec(kind);
                &default_spec
            }
        };
        check_spec(&mut c, spec, &has_placeholder);
        let typed = typed_keys_set(spec);
        if let Some(fields) = additional {
            for (key, value) in fields {
                let path = format!("spec.{key}");
                if kind.spec_keys().contains(&key.as_str()) {
                    if typed.contains(key.as_str()) {
                        c.error(
                            &path,
                            reason::DUPLICATE_FIELD,
                            format!("{path} is set both in the typed spec and in additional_spec"),
                        );
                    } else if is_placeholder_value(value) {
                        c.warn(
                            &path,
                            reason::UNRESOLVED_PLACEHOLDER,
                            format!("{path} is a placeholder ({}); it is kept as written and not fetched", placeholder_key(value)),
                        );
                    } else {
                        c.error(
                            &path,
                            reason::DUPLICATE_FIELD,
                            format!(
                                "{path} is a field of the {} spec: set it in the typed spec",
                                kind.name()
                            ),
                        );
                    }
                } else if kind.obsolete_spec_keys().contains(&key.as_str()) {
                    c.warn(&path, reason::OBSOLETE_FIELD, format!("{path} is obsolete in Backstage's {} model; it is kept but has no effect", kind.name()));
                } else {
                    c.warn(
                        &path,
                        reason::UNKNOWN_FIELD,
                        format!(
                            "{path} is not a field of the {} spec; it is kept as written",
                            kind.name()
                        ),
                    );
                }
            }
        }
        for field in ref_fields(entity) {
            match resolve_ref_field(&field, &namespace) {
                Ok((_, Some(warning))) => c.warnings.push(warning),
                Ok((_, None)) => {}
                Err(e) => c.error(
                    &field.field,
                    reason::INVALID_REFERENCE,
                    format!("{}: {e}", field.field),
                ),
            }
        }
    }
    if let Some(spec) = &entity.additional_spec
        && struct_depth(spec) > MAX_VALUE_DEPTH
    {
        c.error(
            "spec",
            reason::TOO_DEEP,
            format!("spec is nested deeper than {MAX_VALUE_DEPTH} levels"),
        );
    }
    c
}

/// The errors of [`check_entity`] as (field path, description) pairs, for BadRequest field
/// violations of CreateEntity/UpdateEntity. Paths are YAML paths (`metadata.name`).
pub fn validate_entity(entity: &pb::Entity) -> Vec<(String, String)> {
    check_entity(entity)
        .errors
        .into_iter()
        .map(|i| (i.field, i.message))
        .collect()
}

impl Checked {
    fn error(&mut self, field: &str, reason: &str, message: impl Into<String>) {
        self.errors.push(Issue::new(field, reason, message));
    }
    fn warn(&mut self, field: &str, reason: &str, message: impl Into<String>) {
        self.warnings.push(Issue::new(field, reason, message));
    }
    fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.error(
                field,
                reason::TOO_LONG,
                format!("{field} is {n} characters; at most {max} are allowed"),
            );
        }
    }
    fn max_items(&mut self, field: &str, n: usize, max: usize) {
        if n > max {
            self.error(
                field,
                reason::TOO_MANY,
                format!("{field} has {n} entries; at most {max} are allowed"),
            );
        }
    }
    fn required(&mut self, field: &str, value: &str, placeholder: bool) {
        if value.is_empty() && !placeholder {
            self.error(field, reason::MISSING_FIELD, format!("{field} is required"));
        }
    }
    /// A required-or-optional free-form short text: 1-63 characters when set.
    fn short_text(&mut self, field: &str, value: &str) {
        self.max_chars(field, value, 63);
    }
}

/// The YAML path of a map entry: `metadata.labels["key"]`.
fn map_path(base: &str, key: &str) -> String {
    format!("{base}[{key:?}]")
}

fn check_metadata(c: &mut Checked, m: &pb::EntityMetadata) {
    if m.name.is_empty() {
        c.error(
            "metadata.name",
            reason::MISSING_FIELD,
            "metadata.name is required",
        );
    } else if !is_valid_entity_name(&m.name) {
        c.error(
            "metadata.name",
            reason::INVALID_NAME,
            format!("metadata.name {:?} must be {NAME_RULE}", m.name),
        );
    }
    if !m.namespace.is_empty() && !is_valid_namespace(&m.namespace) {
        c.error(
            "metadata.namespace",
            reason::INVALID_NAMESPACE,
            format!(
                "metadata.namespace {:?} must be {NAMESPACE_RULE}",
                m.namespace
            ),
        );
    }
    c.max_chars("metadata.title", &m.title, 256);
    c.max_chars("metadata.description", &m.description, 16384);

    c.max_items("metadata.labels", m.labels.len(), 64);
    let mut labels: Vec<_> = m.labels.iter().collect();
    labels.sort();
    for (key, value) in labels {
        let path = map_path("metadata.labels", key);
        if !is_valid_label_key(key) {
            c.error(
                &path,
                reason::INVALID_LABEL,
                format!("label key {key:?} must be {LABEL_KEY_RULE}"),
            );
        }
        if !is_valid_label_value(value) {
            c.error(
                &path,
                reason::INVALID_LABEL,
                format!("label value {value:?} of {key:?} must be empty or {NAME_RULE}"),
            );
        }
    }
    c.max_items("metadata.annotations", m.annotations.len(), 256);
    let mut annotations: Vec<_> = m.annotations.iter().collect();
    annotations.sort();
    for (key, value) in annotations {
        let path = map_path("metadata.annotations", key);
        if !is_valid_label_key(key) {
            c.error(
                &path,
                reason::INVALID_ANNOTATION,
                format!("annotation key {key:?} must be {LABEL_KEY_RULE}"),
            );
        }
        c.max_chars(&path, value, 65536);
    }
    let distinct: HashSet<&String> = m.tags.iter().collect();
    c.max_items("metadata.tags", distinct.len(), 64);
    for (i, tag) in m.tags.iter().enumerate() {
        if !is_valid_tag(tag) {
            let path = format!("metadata.tags[{i}]");
            c.error(
                &path,
                reason::INVALID_TAG,
                format!("{path} {tag:?} must be {TAG_RULE}"),
            );
        }
    }
    c.max_items("metadata.links", m.links.len(), 64);
    for (i, link) in m.links.iter().enumerate() {
        let base = format!("metadata.links[{i}]");
        let url_path = format!("{base}.url");
        if link.url.is_empty() {
            c.error(
                &url_path,
                reason::MISSING_FIELD,
                format!("{url_path} is required"),
            );
        } else if !is_absolute_url(&link.url) {
            c.error(
                &url_path,
                reason::INVALID_URL,
                format!("{url_path} {:?} must be an absolute URL", link.url),
            );
        }
        c.max_chars(&url_path, &link.url, 2048);
        c.max_chars(&format!("{base}.title"), &link.title, 256);
        c.max_chars(&format!("{base}.icon"), &link.icon, 63);
        c.max_chars(&format!("{base}.type"), &link.r#type, 63);
    }
    if let Some(extra) = &m.additional_metadata {
        for key in extra.fields.keys() {
            let path = format!("metadata.{key}");
            if METADATA_KEYS.contains(&key.as_str()) {
                c.error(
                    &path,
                    reason::DUPLICATE_FIELD,
                    format!(
                        "{path} is a typed metadata field; it must not be in additional_metadata"
                    ),
                );
            } else if !SERVER_METADATA_KEYS.contains(&key.as_str()) {
                c.warn(
                    &path,
                    reason::UNKNOWN_FIELD,
                    format!("{path} is not a Backstage metadata field; it is kept as written"),
                );
            }
        }
        if struct_depth(extra) > MAX_VALUE_DEPTH {
            c.error(
                "metadata",
                reason::TOO_DEEP,
                format!("metadata is nested deeper than {MAX_VALUE_DEPTH} levels"),
            );
        }
    }
}

const METADATA_KEYS: &[&str] = &[
    "name",
    "namespace",
    "title",
    "description",
    "labels",
    "annotations",
    "tags",
    "links",
];
/// Metadata keys the server owns: ignored on input.
const SERVER_METADATA_KEYS: &[&str] = &["uid", "etag", "generation"];

fn empty_spec(kind: CoreKind) -> Spec {
    match kind {
        CoreKind::Component => Spec::ComponentSpec(Default::default()),
        CoreKind::Api => Spec::ApiSpec(Default::default()),
        CoreKind::Resource => Spec::ResourceSpec(Default::default()),
        CoreKind::System => Spec::SystemSpec(Default::default()),
        CoreKind::Domain => Spec::DomainSpec(Default::default()),
        CoreKind::Group => Spec::GroupSpec(Default::default()),
        CoreKind::User => Spec::UserSpec(Default::default()),
        CoreKind::Location => Spec::LocationSpec(Default::default()),
    }
}

/// The YAML keys of the typed spec's fields that are set.
fn typed_keys_set(spec: &Spec) -> HashSet<&'static str> {
    let mut keys = HashSet::new();
    let mut add = |key: &'static str, set: bool| {
        if set {
            keys.insert(key);
        }
    };
    match spec {
        Spec::ComponentSpec(s) => {
            add("type", !s.r#type.is_empty());
            add("lifecycle", !s.lifecycle.is_empty());
            add("owner", !s.owner.is_empty());
            add("system", !s.system.is_empty());
            add("subcomponentOf", !s.subcomponent_of.is_empty());
            add("providesApis", !s.provides_apis.is_empty());
            add("consumesApis", !s.consumes_apis.is_empty());
            add("dependsOn", !s.depends_on.is_empty());
            add("dependencyOf", !s.dependency_of.is_empty());
        }
        Spec::ApiSpec(s) => {
            add("type", !s.r#type.is_empty());
            add("lifecycle", !s.lifecycle.is_empty());
            add("owner", !s.owner.is_empty());
            add("system", !s.system.is_empty());
            add("definition", !s.definition.is_empty());
        }
        Spec::ResourceSpec(s) => {
            add("type", !s.r#type.is_empty());
            add("owner", !s.owner.is_empty());
            add("system", !s.system.is_empty());
            add("dependsOn", !s.depends_on.is_empty());
            add("dependencyOf", !s.dependency_of.is_empty());
        }
        Spec::SystemSpec(s) => {
            add("owner", !s.owner.is_empty());
            add("domain", !s.domain.is_empty());
            add("type", !s.r#type.is_empty());
        }
        Spec::DomainSpec(s) => {
            add("owner", !s.owner.is_empty());
            add("subdomainOf", !s.subdomain_of.is_empty());
            add("type", !s.r#type.is_empty());
        }
        Spec::GroupSpec(s) => {
            add("type", !s.r#type.is_empty());
            add("profile", s.profile.is_some());
            add("parent", !s.parent.is_empty());
            add("children", !s.children.is_empty());
            add("members", !s.members.is_empty());
        }
        Spec::UserSpec(s) => {
            add("profile", s.profile.is_some());
            add("memberOf", !s.member_of.is_empty());
        }
        Spec::LocationSpec(s) => {
            add("type", !s.r#type.is_empty());
            add("target", !s.target.is_empty());
            add("targets", !s.targets.is_empty());
            add("presence", !s.presence.is_empty());
        }
    }
    keys
}

fn check_spec(c: &mut Checked, spec: &Spec, placeholder: &dyn Fn(&str) -> bool) {
    const MAX_REFS: usize = 256;
    match spec {
        Spec::ComponentSpec(s) => {
            c.required("spec.type", &s.r#type, placeholder("type"));
            c.short_text("spec.type", &s.r#type);
            c.required("spec.lifecycle", &s.lifecycle, placeholder("lifecycle"));
            c.short_text("spec.lifecycle", &s.lifecycle);
            c.required("spec.owner", &s.owner, placeholder("owner"));
            c.max_items("spec.providesApis", s.provides_apis.len(), MAX_REFS);
            c.max_items("spec.consumesApis", s.consumes_apis.len(), MAX_REFS);
            c.max_items("spec.dependsOn", s.depends_on.len(), MAX_REFS);
            c.max_items("spec.dependencyOf", s.dependency_of.len(), MAX_REFS);
        }
        Spec::ApiSpec(s) => {
            c.required("spec.type", &s.r#type, placeholder("type"));
            c.short_text("spec.type", &s.r#type);
            c.required("spec.lifecycle", &s.lifecycle, placeholder("lifecycle"));
            c.short_text("spec.lifecycle", &s.lifecycle);
            c.required("spec.owner", &s.owner, placeholder("owner"));
            // The contract calls it required, but Backstage's own examples have APIs without
            // one (an `mcp-server` with `remotes`), and Backstage accepts them: a warning.
            if s.definition.is_empty() && !placeholder("definition") {
                c.warn(
                    "spec.definition",
                    reason::MISSING_FIELD,
                    "spec.definition is empty; the API has no definition",
                );
            }
            if s.definition.len() > 1024 * 1024 {
                c.error(
                    "spec.definition",
                    reason::TOO_LONG,
                    "spec.definition is larger than 1 MiB",
                );
            }
        }
        Spec::ResourceSpec(s) => {
            c.required("spec.type", &s.r#type, placeholder("type"));
            c.short_text("spec.type", &s.r#type);
            c.required("spec.owner", &s.owner, placeholder("owner"));
            c.max_items("spec.dependsOn", s.depends_on.len(), MAX_REFS);
            c.max_items("spec.dependencyOf", s.dependency_of.len(), MAX_REFS);
        }
        Spec::SystemSpec(s) => {
            c.required("spec.owner", &s.owner, placeholder("owner"));
            c.short_text("spec.type", &s.r#type);
        }
        Spec::DomainSpec(s) => {
            c.required("spec.owner", &s.owner, placeholder("owner"));
            c.short_text("spec.type", &s.r#type);
        }
        Spec::GroupSpec(s) => {
            c.required("spec.type", &s.r#type, placeholder("type"));
            c.short_text("spec.type", &s.r#type);
            if let Some(p) = &s.profile {
                check_profile(c, p);
            }
        }
        Spec::UserSpec(s) => {
            if let Some(p) = &s.profile {
                check_profile(c, p);
            }
        }
        Spec::LocationSpec(s) => {
            c.short_text("spec.type", &s.r#type);
            if !s.target.is_empty() && !s.targets.is_empty() {
                c.error(
                    "spec.targets",
                    reason::INVALID_VALUE,
                    "spec.target and spec.targets must not both be set",
                );
            }
            c.max_chars("spec.target", &s.target, 2048);
            c.max_items("spec.targets", s.targets.len(), 1000);
            for (i, target) in s.targets.iter().enumerate() {
                c.max_chars(&format!("spec.targets[{i}]"), target, 2048);
            }
            if !matches!(s.presence.as_str(), "" | "required" | "optional") {
                c.error(
                    "spec.presence",
                    reason::INVALID_VALUE,
                    format!(
                        "spec.presence {:?} must be \"required\" or \"optional\"",
                        s.presence
                    ),
                );
            }
        }
    }
}

fn check_profile(c: &mut Checked, p: &pb::Profile) {
    c.max_chars("spec.profile.displayName", &p.display_name, 256);
    c.max_chars("spec.profile.email", &p.email, 254);
    if !p.email.is_empty() && p.email.matches('@').count() != 1 {
        c.error(
            "spec.profile.email",
            reason::INVALID_EMAIL,
            format!("spec.profile.email {:?} must contain one \"@\"", p.email),
        );
    }
    c.max_chars("spec.profile.picture", &p.picture, 2048);
}

/// Backstage's placeholder form: a mapping with one key starting with `$` (`$text`, `$json`,
/// `$yaml`, ...).
fn is_placeholder_value(value: &prost_types::Value) -> bool {
    match &value.kind {
        Some(Kind::StructValue(s)) => {
            s.fields.len() == 1 && s.fields.keys().all(|k| k.starts_with('$'))
        }
        _ => false,
    }
}

fn placeholder_key(value: &prost_types::Value) -> &str {
    match &value.kind {
        Some(Kind::StructValue(s)) => s
            .fields
            .keys()
            .next()
            .map(String::as_str)
            .unwrap_or_default(),
        _ => "",
    }
}

/// Nesting depth of a Struct (the struct itself is level 1), without recursion.
fn struct_depth(root: &prost_types::Struct) -> usize {
    let mut max = 1;
    let mut stack: Vec<(&prost_types::Value, usize)> =
        root.fields.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        match &value.kind {
            Some(Kind::StructValue(s)) => {
                max = max.max(depth);
                stack.extend(s.fields.values().map(|v| (v, depth + 1)));
            }
            Some(Kind::ListValue(l)) => {
                max = max.max(depth);
                stack.extend(l.values.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Brings an entity to its stored form and returns what it changed, as warnings: an empty
/// namespace becomes `default`; duplicate tags are dropped (first kept); surrounding
/// whitespace of the title and profile display name is trimmed; server-owned metadata keys
/// (`uid`, `etag`, `generation`) are removed from `additional_metadata`.
pub fn normalize_entity(entity: &mut pb::Entity) -> Vec<Issue> {
    let mut warnings = Vec::new();
    let metadata = entity.metadata.get_or_insert_with(Default::default);
    if metadata.namespace.is_empty() {
        metadata.namespace = DEFAULT_NAMESPACE.to_owned();
    }
    trim_field(&mut metadata.title, "metadata.title", &mut warnings);
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for (i, tag) in metadata.tags.iter().enumerate() {
        if !seen.insert(tag.clone()) {
            duplicates.push((i, tag.clone()));
        }
    }
    if !duplicates.is_empty() {
        for (i, tag) in &duplicates {
            warnings.push(Issue::new(
                format!("metadata.tags[{i}]"),
                reason::DUPLICATE_TAG,
                format!("tag {tag:?} is listed more than once; the repetition is dropped"),
            ));
        }
        let mut kept = HashSet::new();
        metadata.tags.retain(|t| kept.insert(t.clone()));
    }
    if let Some(extra) = &mut metadata.additional_metadata {
        for key in SERVER_METADATA_KEYS {
            if extra.fields.remove(*key).is_some() {
                warnings.push(Issue::new(
                    format!("metadata.{key}"),
                    reason::IGNORED_FIELD,
                    format!("metadata.{key} is set by the server; the given value is ignored"),
                ));
            }
        }
        if extra.fields.is_empty() {
            metadata.additional_metadata = None;
        }
    }
    let profile = match &mut entity.spec {
        Some(Spec::GroupSpec(s)) => s.profile.as_mut(),
        Some(Spec::UserSpec(s)) => s.profile.as_mut(),
        _ => None,
    };
    if let Some(p) = profile {
        trim_field(
            &mut p.display_name,
            "spec.profile.displayName",
            &mut warnings,
        );
    }
    warnings
}

fn trim_field(value: &mut String, field: &str, warnings: &mut Vec<Issue>) {
    let trimmed = value.trim();
    if trimmed.len() != value.len() {
        warnings.push(Issue::new(
            field,
            reason::TRAILING_WHITESPACE,
            format!("{field} {value:?} has surrounding whitespace; it is trimmed"),
        ));
        *value = trimmed.to_owned();
    }
}

// ------------------------------------------------------------------------------------------
// YAML → Entity

/// Turns one YAML document into an entity, or says precisely why it cannot be one. Never
/// panics; every error found is reported (not only the first), each with field path and line.
pub fn document_to_entity(doc: &RawDocument) -> DocumentOutcome {
    let mut conv = Converter {
        errors: Vec::new(),
        warnings: Vec::new(),
        lines: HashMap::new(),
    };
    let entity = conv.entity(&doc.root);
    let mut errors = conv.errors;
    let mut warnings = conv.warnings;
    let lines = conv.lines;
    let line_of = |field: &str| -> usize {
        let mut path = field;
        loop {
            if let Some(line) = lines.get(path) {
                return *line;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return doc.line,
            }
        }
    };
    if let Some(mut entity) = entity {
        let checked = check_entity(&entity);
        // A field already reported while reading (e.g. `metadata.name: 123`) reads as empty;
        // the rules would report it again ("metadata.name is required"): keep the first.
        let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
        let covered = |field: &str| {
            reported.iter().any(|r| {
                field == r
                    || (field.starts_with(r.as_str())
                        && matches!(field.as_bytes().get(r.len()), Some(b'.' | b'[')))
            })
        };
        errors.extend(checked.errors.into_iter().filter(|e| !covered(&e.field)));
        if errors.is_empty() {
            warnings.extend(checked.warnings);
            warnings.extend(normalize_entity(&mut entity));
            for w in &mut warnings {
                if w.line == 0 {
                    w.line = line_of(&w.field);
                }
            }
            warnings.sort_by_key(|w| w.line);
            return DocumentOutcome::Entity { entity, warnings };
        }
    }
    for e in &mut errors {
        if e.line == 0 {
            e.line = line_of(&e.field);
        }
    }
    errors.sort_by_key(|e| e.line);
    DocumentOutcome::Invalid { errors }
}

struct Converter {
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
    /// Line of each field path seen.
    lines: HashMap<String, usize>,
}

impl Converter {
    fn error(&mut self, field: &str, reason: &str, message: String, line: usize) {
        self.errors.push(Issue {
            field: field.to_owned(),
            reason: reason.to_owned(),
            message,
            line,
        });
    }

    fn warn(&mut self, field: &str, reason: &str, message: String, line: usize) {
        self.warnings.push(Issue {
            field: field.to_owned(),
            reason: reason.to_owned(),
            message,
            line,
        });
    }

    fn wrong_type(&mut self, path: &str, expected: &str, node: &Node) {
        let what = if path.is_empty() {
            "the document"
        } else {
            path
        };
        self.error(
            path,
            reason::WRONG_TYPE,
            format!("{what} must be {expected}, not {}", node.value.type_name()),
            node.line,
        );
    }

    /// The entries of a mapping with string keys, in order; reports a non-mapping, non-scalar
    /// keys and duplicate keys. Records the line of every entry.
    fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        key_path: fn(&str, &str) -> String,
    ) -> Option<Vec<(String, &'n Node)>> {
        let YamlValue::Map(pairs) = &node.value else {
            self.wrong_type(path, "a mapping", node);
            return None;
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(pairs.len());
        for (key_node, value) in pairs {
            let Some(key) = scalar_key(&key_node.value) else {
                self.error(
                    path,
                    reason::WRONG_TYPE,
                    format!(
                        "{} has a key that is {}; keys must be strings",
                        display_path(path),
                        key_node.value.type_name()
                    ),
                    key_node.line,
                );
                continue;
            };
            let child = key_path(path, &key);
            if !seen.insert(key.clone()) {
                self.error(
                    &child,
                    reason::DUPLICATE_KEY,
                    format!("{child} is given more than once"),
                    key_node.line,
                );
                continue;
            }
            self.lines.insert(child, key_node.line);
            out.push((key, value));
        }
        Some(out)
    }

    /// A string field: `None` when null (absent) or of the wrong type (reported).
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            YamlValue::String(s) => {
                if node.trailing_whitespace {
                    self.warn(
                        path,
                        reason::TRAILING_WHITESPACE,
                        format!("{path} is followed by trailing whitespace on its line (ignored)"),
                        node.line,
                    );
                }
                Some(s.clone())
            }
            YamlValue::Null => None,
            _ => {
                self.wrong_type(path, "a string", node);
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, path: &str) -> Vec<String> {
        match &node.value {
            YamlValue::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let item_path = format!("{path}[{i}]");
                    self.lines.insert(item_path.clone(), item.line);
                    match &item.value {
                        YamlValue::Null => {
                            self.wrong_type(&item_path, "a string", item);
                            None
                        }
                        _ => self.string(item, &item_path),
                    }
                })
                .collect(),
            YamlValue::Null => Vec::new(),
            _ => {
                self.wrong_type(path, "a list of strings", node);
                Vec::new()
            }
        }
    }

    fn string_map(&mut self, node: &Node, path: &str) -> HashMap<String, String> {
        if node.value == YamlValue::Null {
            return HashMap::new();
        }
        let Some(entries) = self.entries(node, path, map_path) else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for (key, value) in entries {
            let child = map_path(path, &key);
            match &value.value {
                YamlValue::String(s) => {
                    out.insert(key, s.clone());
                }
                _ => self.wrong_type(&child, "a string", value),
            }
        }
        out
    }

    /// Any YAML value as a protobuf Value (numbers as doubles; non-finite numbers as null, as
    /// JSON has them).
    fn value(&mut self, node: &Node, path: &str) -> prost_types::Value {
        let kind = match &node.value {
            YamlValue::Null => Kind::NullValue(0),
            YamlValue::Bool(b) => Kind::BoolValue(*b),
            YamlValue::Int(i) => Kind::NumberValue(*i as f64),
            YamlValue::Float(f) if f.is_finite() => Kind::NumberValue(*f),
            YamlValue::Float(_) => Kind::NullValue(0),
            YamlValue::String(s) => Kind::StringValue(s.clone()),
            YamlValue::Seq(items) => Kind::ListValue(prost_types::ListValue {
                values: items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(item, &format!("{path}[{i}]")))
                    .collect(),
            }),
            YamlValue::Map(_) => Kind::StructValue(self.structure(node, path)),
        };
        prost_types::Value { kind: Some(kind) }
    }

    fn structure(&mut self, node: &Node, path: &str) -> prost_types::Struct {
        let mut fields = BTreeMap::new();
        if let Some(entries) = self.entries(node, path, dotted) {
            for (key, value) in entries {
                let child = dotted(path, &key);
                fields.insert(key, self.value(value, &child));
            }
        }
        prost_types::Struct { fields }
    }

    fn entity(&mut self, root: &Node) -> Option<pb::Entity> {
        let top = self.entries(root, "", dotted)?;
        let mut entity = pb::Entity::default();
        let (mut metadata, mut spec) = (None, None);
        for (key, node) in top {
            match key.as_str() {
                "apiVersion" => {
                    entity.api_version = self.string(node, "apiVersion").unwrap_or_default()
                }
                "kind" => entity.kind = self.string(node, "kind").unwrap_or_default(),
                "metadata" => metadata = Some(node),
                "spec" => spec = Some(node),
                "relations" | "status" => self.warn(
                    &key,
                    reason::IGNORED_FIELD,
                    format!("{key} is derived by the server; the given value is ignored"),
                    node.line,
                ),
                _ => self.error(
                    &key,
                    reason::UNKNOWN_FIELD,
                    format!(
                        "{key} is not an entity field (expected apiVersion, kind, metadata, spec)"
                    ),
                    node.line,
                ),
            }
        }
        // Missing fields are left to check_entity, which also runs on proto input.
        if let Some(node) = metadata {
            entity.metadata = self.metadata(node);
        }
        let core = if is_valid_kind(&entity.kind) {
            CoreKind::parse(&entity.kind)
        } else {
            None
        };
        match (spec, core) {
            (Some(node), _) if node.value == YamlValue::Null => {}
            (Some(node), Some(kind)) => self.spec(node, kind, &mut entity),
            (Some(node), None) => {
                if matches!(node.value, YamlValue::Map(_)) {
                    let additional = self.structure(node, "spec");
                    entity.additional_spec = Some(additional).filter(|s| !s.fields.is_empty());
                } else {
                    self.wrong_type("spec", "a mapping", node);
                }
            }
            (None, _) => {}
        }
        if let Some(kind) = core
            && entity.spec.is_none()
        {
            entity.spec = Some(empty_spec(kind));
        }
        Some(entity)
    }

    fn metadata(&mut self, node: &Node) -> Option<pb::EntityMetadata> {
        let entries = self.entries(node, "metadata", dotted)?;
        let mut m = pb::EntityMetadata::default();
        let mut extra = BTreeMap::new();
        for (key, value) in entries {
            let path = dotted("metadata", &key);
            match key.as_str() {
                "name" => m.name = self.string(value, &path).unwrap_or_default(),
                "namespace" => m.namespace = self.string(value, &path).unwrap_or_default(),
                "title" => m.title = self.string(value, &path).unwrap_or_default(),
                "description" => m.description = self.string(value, &path).unwrap_or_default(),
                "labels" => m.labels = self.string_map(value, &path),
                "annotations" => m.annotations = self.string_map(value, &path),
                "tags" => m.tags = self.string_list(value, &path),
                "links" => m.links = self.links(value, &path),
                "uid" | "etag" | "generation" => self.warn(
                    &path,
                    reason::IGNORED_FIELD,
                    format!("{path} is set by the server; the given value is ignored"),
                    value.line,
                ),
                _ => {
                    extra.insert(key, self.value(value, &path));
                }
            }
        }
        if !extra.is_empty() {
            m.additional_metadata = Some(prost_types::Struct { fields: extra });
        }
        Some(m)
    }

    fn links(&mut self, node: &Node, path: &str) -> Vec<pb::EntityLink> {
        let items = match &node.value {
            YamlValue::Seq(items) => items,
            YamlValue::Null => return Vec::new(),
            _ => {
                self.wrong_type(path, "a list of links", node);
                return Vec::new();
            }
        };
        let mut links = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let base = format!("{path}[{i}]");
            self.lines.insert(base.clone(), item.line);
            let Some(entries) = self.entries(item, &base, dotted) else {
                continue;
            };
            let mut link = pb::EntityLink::default();
            for (key, value) in entries {
                let field = dotted(&base, &key);
                match key.as_str() {
                    "url" => link.url = self.string(value, &field).unwrap_or_default(),
                    "title" => link.title = self.string(value, &field).unwrap_or_default(),
                    "icon" => link.icon = self.string(value, &field).unwrap_or_default(),
                    "type" => link.r#type = self.string(value, &field).unwrap_or_default(),
                    _ => self.warn(
                        &field,
                        reason::IGNORED_FIELD,
                        format!(
                            "{field} is not a link field (url, title, icon, type); it is not kept"
                        ),
                        value.line,
                    ),
                }
            }
            links.push(link);
        }
        links
    }

    fn profile(&mut self, node: &Node, path: &str) -> Option<pb::Profile> {
        if node.value == YamlValue::Null {
            return None;
        }
        let entries = self.entries(node, path, dotted)?;
        let mut p = pb::Profile::default();
        for (key, value) in entries {
            let field = dotted(path, &key);
            match key.as_str() {
                "displayName" => p.display_name = self.string(value, &field).unwrap_or_default(),
                "email" => p.email = self.string(value, &field).unwrap_or_default(),
                "picture" => p.picture = self.string(value, &field).unwrap_or_default(),
                _ => self.warn(
                    &field,
                    reason::IGNORED_FIELD,
                    format!("{field} is not a profile field (displayName, email, picture); it is not kept"),
                    value.line,
                ),
            }
        }
        Some(p)
    }

    fn spec(&mut self, node: &Node, kind: CoreKind, entity: &mut pb::Entity) {
        let Some(entries) = self.entries(node, "spec", dotted) else {
            return;
        };
        let mut known: HashMap<&'static str, &Node> = HashMap::new();
        let mut additional = BTreeMap::new();
        for (key, value) in entries {
            let typed = kind.spec_keys().iter().find(|k| **k == key).copied();
            match typed {
                Some(k) if !is_placeholder_node(value) => {
                    known.insert(k, value);
                }
                _ => {
                    let path = dotted("spec", &key);
                    additional.insert(key, self.value(value, &path));
                }
            }
        }
        let s = |c: &mut Converter, key: &str| -> String {
            known
                .get(key)
                .and_then(|n| c.string(n, &format!("spec.{key}")))
                .unwrap_or_default()
        };
        let spec = match kind {
            CoreKind::Component => Spec::ComponentSpec(pb::ComponentSpec {
                r#type: s(self, "type"),
                lifecycle: s(self, "lifecycle"),
                owner: s(self, "owner"),
                system: s(self, "system"),
                subcomponent_of: s(self, "subcomponentOf"),
                provides_apis: self.known_list(&known, "providesApis"),
                consumes_apis: self.known_list(&known, "consumesApis"),
                depends_on: self.known_list(&known, "dependsOn"),
                dependency_of: self.known_list(&known, "dependencyOf"),
            }),
            CoreKind::Api => Spec::ApiSpec(pb::ApiSpec {
                r#type: s(self, "type"),
                lifecycle: s(self, "lifecycle"),
                owner: s(self, "owner"),
                system: s(self, "system"),
                definition: s(self, "definition"),
            }),
            CoreKind::Resource => Spec::ResourceSpec(pb::ResourceSpec {
                r#type: s(self, "type"),
                owner: s(self, "owner"),
                system: s(self, "system"),
                depends_on: self.known_list(&known, "dependsOn"),
                dependency_of: self.known_list(&known, "dependencyOf"),
            }),
            CoreKind::System => Spec::SystemSpec(pb::SystemSpec {
                owner: s(self, "owner"),
                domain: s(self, "domain"),
                r#type: s(self, "type"),
            }),
            CoreKind::Domain => Spec::DomainSpec(pb::DomainSpec {
                owner: s(self, "owner"),
                subdomain_of: s(self, "subdomainOf"),
                r#type: s(self, "type"),
            }),
            CoreKind::Group => Spec::GroupSpec(pb::GroupSpec {
                r#type: s(self, "type"),
                profile: known
                    .get("profile")
                    .and_then(|n| self.profile(n, "spec.profile")),
                parent: s(self, "parent"),
                children: self.known_list(&known, "children"),
                members: self.known_list(&known, "members"),
            }),
            CoreKind::User => Spec::UserSpec(pb::UserSpec {
                profile: known
                    .get("profile")
                    .and_then(|n| self.profile(n, "spec.profile")),
                member_of: self.known_list(&known, "memberOf"),
            }),
            CoreKind::Location => Spec::LocationSpec(pb::LocationSpec {
                r#type: s(self, "type"),
                target: s(self, "target"),
                targets: self.known_list(&known, "targets"),
                presence: s(self, "presence"),
            }),
        };
        entity.spec = Some(spec);
        if !additional.is_empty() {
            entity.additional_spec = Some(prost_types::Struct { fields: additional });
        }
    }

    fn known_list(&mut self, known: &HashMap<&'static str, &Node>, key: &str) -> Vec<String> {
        match known.get(key) {
            Some(node) => self.string_list(node, &format!("spec.{key}")),
            None => Vec::new(),
        }
    }
}

fn is_placeholder_node(node: &Node) -> bool {
    match &node.value {
        YamlValue::Map(pairs) => {
            pairs.len() == 1
                && pairs
                    .iter()
                    .all(|(k, _)| matches!(&k.value, YamlValue::String(s) if s.starts_with('$')))
        }
        _ => false,
    }
}

/// A mapping key as text: strings as they are, other scalars as JSON would print them.
fn scalar_key(value: &YamlValue) -> Option<String> {
    match value {
        YamlValue::String(s) => Some(s.clone()),
        YamlValue::Int(i) => Some(i.to_string()),
        YamlValue::Float(f) => Some(f.to_string()),
        YamlValue::Bool(b) => Some(b.to_string()),
        YamlValue::Null => Some("null".to_owned()),
        YamlValue::Seq(_) | YamlValue::Map(_) => None,
    }
}

fn dotted(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn docs(source: &str) -> Vec<RawDocument> {
        parse_documents(source, &Limits::default()).expect("valid YAML")
    }

    fn convert(source: &str) -> DocumentOutcome {
        let docs = docs(source);
        assert_eq!(docs.len(), 1, "one document expected");
        document_to_entity(&docs[0])
    }

    fn entity_of(source: &str) -> (pb::Entity, Vec<Issue>) {
        match convert(source) {
            DocumentOutcome::Entity { entity, warnings } => (entity, warnings),
            DocumentOutcome::Invalid { errors } => panic!("unexpected errors: {errors:#?}"),
        }
    }

    fn errors_of(source: &str) -> Vec<Issue> {
        match convert(source) {
            DocumentOutcome::Invalid { errors } => errors,
            DocumentOutcome::Entity { entity, .. } => panic!("unexpectedly valid: {entity:#?}"),
        }
    }

    fn has(issues: &[Issue], field: &str, reason: &str) -> bool {
        issues
            .iter()
            .any(|i| i.field == field && i.reason == reason)
    }

    const COMPONENT: &str = "apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments
  description: Takes money
  labels:
    tier: critical
  annotations:
    backstage.io/techdocs-ref: dir:.
  tags: [java, payments]
  custom:
    nested: [1, true, null, x]
spec:
  type: service
  lifecycle: production
  owner: team-a
  system: billing
  providesApis: [payments-api]
  consumesApis: ['api:ledger/ledger-api']
  dependsOn: ['resource:payments-db', 'queue']
  costCenter: 42
  definition:
    $text: ./x.yaml
";

    // ---- the conformance corpus -------------------------------------------------------

    /// `shared/conformance/backstage`, found by walking up from the crate: it sits beside the
    /// repository (`../shared` from the repository root), or beside a scratch crate.
    fn corpus_dir() -> PathBuf {
        let start = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in start.ancestors() {
            let candidate = dir.join("shared/conformance/backstage");
            if candidate.join("EXPECTED.json").is_file() {
                return candidate;
            }
        }
        panic!(
            "shared/conformance/backstage/EXPECTED.json not found above {}",
            start.display()
        );
    }

    fn yaml_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("readable corpus")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                yaml_files(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let relative = path
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push(relative);
            }
        }
    }

    fn map_get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
        match &node.value {
            YamlValue::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.value == YamlValue::String(key.to_owned()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn str_of(node: &Node) -> String {
        match &node.value {
            YamlValue::String(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }

    struct Corpus {
        /// file → entities (kind, namespace, name) in document order.
        produced: BTreeMap<String, Vec<(String, String, String)>>,
        /// file → (entity, warnings).
        entities: Vec<(String, pb::Entity, Vec<Issue>)>,
    }

    fn load_corpus() -> Corpus {
        let root = corpus_dir();
        let mut files = Vec::new();
        yaml_files(&root, &root, &mut files);
        let mut corpus = Corpus {
            produced: BTreeMap::new(),
            entities: Vec::new(),
        };
        for file in files.iter().filter(|f| !f.starts_with("invalid/")) {
            let source = std::fs::read_to_string(root.join(file)).expect("readable file");
            let documents = parse_documents(&source, &Limits::default())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let list = corpus.produced.entry(file.clone()).or_default();
            for doc in &documents {
                match document_to_entity(doc) {
                    DocumentOutcome::Entity { entity, warnings } => {
                        let m = entity.metadata.clone().unwrap_or_default();
                        list.push((entity.kind.clone(), m.namespace.clone(), m.name.clone()));
                        corpus.entities.push((file.clone(), entity, warnings));
                    }
                    DocumentOutcome::Invalid { errors } => {
                        panic!("{file} document {}: {errors:#?}", doc.index)
                    }
                }
            }
        }
        assert!(!corpus.produced.is_empty(), "no corpus files found");
        if std::env::var_os("CATALOG_PRINT_WARNINGS").is_some() {
            for (file, _, warnings) in &corpus.entities {
                for w in warnings {
                    eprintln!("{file}:{} {} {} — {}", w.line, w.field, w.reason, w.message);
                }
            }
        }
        corpus
    }

    #[test]
    fn conformance_corpus_produces_every_expected_entity() {
        let root = corpus_dir();
        let expected_text =
            std::fs::read_to_string(root.join("EXPECTED.json")).expect("EXPECTED.json");
        let expected_docs = docs(&expected_text);
        let expected_root = &expected_docs[0].root;
        let corpus = load_corpus();

        let files = map_get(expected_root, "files").expect("files");
        let YamlValue::Map(file_entries) = &files.value else {
            panic!("files is not a mapping")
        };
        let mut expected_files = BTreeSet::new();
        let mut checked_entities = 0;
        let mut kind_totals: BTreeMap<String, usize> = BTreeMap::new();
        for (file_node, list) in file_entries {
            let file = str_of(file_node);
            if file.starts_with("invalid/") {
                continue;
            }
            expected_files.insert(file.clone());
            let YamlValue::Seq(items) = &list.value else {
                panic!("{file}: not a list")
            };
            let expected: Vec<(String, String, String)> = items
                .iter()
                .map(|item| {
                    let field = |k: &str| {
                        str_of(map_get(item, k).unwrap_or_else(|| panic!("{file}: {k} missing")))
                    };
                    (field("kind"), field("namespace"), field("name"))
                })
                .collect();
            let produced = corpus
                .produced
                .get(&file)
                .unwrap_or_else(|| panic!("{file} is in EXPECTED.json but not in the corpus"));
            assert_eq!(produced, &expected, "{file}");
            checked_entities += expected.len();
            if !file.starts_with("locations/") {
                for (kind, _, _) in &expected {
                    *kind_totals.entry(kind.clone()).or_default() += 1;
                }
            }
        }
        let produced_files: BTreeSet<String> = corpus.produced.keys().cloned().collect();
        assert_eq!(
            produced_files, expected_files,
            "corpus files and EXPECTED.json disagree"
        );

        // The totals of EXPECTED.json.
        let totals = map_get(expected_root, "totals").expect("totals");
        let YamlValue::Map(total_entries) = &totals.value else {
            panic!("totals is not a mapping")
        };
        for (kind, count) in total_entries {
            let YamlValue::Int(count) = count.value else {
                panic!("count")
            };
            assert_eq!(
                kind_totals.get(&str_of(kind)).copied().unwrap_or(0) as i64,
                count,
                "total of {}",
                str_of(kind)
            );
        }
        let all = map_get(expected_root, "totals_all_kinds").map(|n| n.value.clone());
        assert_eq!(
            all,
            Some(YamlValue::Int(kind_totals.values().sum::<usize>() as i64)),
            "totals_all_kinds"
        );
        assert_eq!(corpus.entities.len(), checked_entities);
    }

    #[test]
    fn conformance_corpus_warnings_and_generic_kinds() {
        let corpus = load_corpus();
        let find = |kind: &str, name: &str| {
            corpus
                .entities
                .iter()
                .find(|(_, e, _)| {
                    e.kind == kind && e.metadata.as_ref().is_some_and(|m| m.name == name)
                })
                .unwrap_or_else(|| panic!("{kind} {name} not produced"))
        };
        // Unknown kind kept as a generic entity, whole spec in additional_spec.
        let (_, dev, warnings) = find("Environment", "dev");
        assert!(dev.spec.is_none());
        let spec = dev.additional_spec.as_ref().expect("spec kept");
        assert_eq!(
            spec.fields.get("lifecycle").and_then(|v| v.kind.clone()),
            Some(Kind::StringValue("dev".into()))
        );
        assert!(has(warnings, "kind", reason::UNKNOWN_KIND), "{warnings:#?}");
        // Obsolete Group fields kept with a warning.
        let (_, boxoffice, warnings) = find("Group", "boxoffice");
        assert!(
            has(warnings, "spec.ancestors", reason::OBSOLETE_FIELD),
            "{warnings:#?}"
        );
        assert!(
            boxoffice
                .additional_spec
                .as_ref()
                .is_some_and(|s| s.fields.contains_key("descendants"))
        );
        // $text placeholder kept, typed definition empty.
        let (_, webhook, warnings) = find("API", "petstore-webhook");
        let Some(Spec::ApiSpec(api)) = &webhook.spec else {
            panic!("api spec")
        };
        assert!(api.definition.is_empty());
        assert!(
            has(warnings, "spec.definition", reason::UNRESOLVED_PLACEHOLDER),
            "{warnings:#?}"
        );
        let placeholder = warnings
            .iter()
            .find(|w| w.reason == reason::UNRESOLVED_PLACEHOLDER)
            .expect("warning");
        assert_eq!(placeholder.line, 20);
        // Trailing whitespace after "Guest User".
        let (_, guest, warnings) = find("User", "guest");
        assert!(
            has(
                warnings,
                "spec.profile.displayName",
                reason::TRAILING_WHITESPACE
            ),
            "{warnings:#?}"
        );
        let Some(Spec::UserSpec(user)) = &guest.spec else {
            panic!("user spec")
        };
        assert_eq!(
            user.profile.as_ref().map(|p| p.display_name.as_str()),
            Some("Guest User")
        );
        // consumesApis naming a Component.
        let (_, _, warnings) = find("Component", "dream11-svc");
        assert!(
            has(
                warnings,
                "spec.consumesApis[0]",
                reason::UNEXPECTED_REFERENCE_KIND
            ),
            "{warnings:#?}"
        );
        // A Group referenced as user: (needs the other entities).
        let all: Vec<pb::Entity> = corpus.entities.iter().map(|(_, e, _)| e.clone()).collect();
        let cross = reference_kind_warnings(&all);
        let podcast = all
            .iter()
            .position(|e| e.metadata.as_ref().is_some_and(|m| m.name == "podcast"))
            .expect("podcast");
        assert!(
            has(
                &cross[podcast],
                "spec.owner",
                reason::UNEXPECTED_REFERENCE_KIND
            ),
            "{:#?}",
            cross[podcast]
        );
        // Locations are kept as written.
        let (_, location, _) = find("Location", "example-groups");
        let Some(Spec::LocationSpec(l)) = &location.spec else {
            panic!("location spec")
        };
        assert_eq!(l.targets.len(), 7);
    }

    #[test]
    fn conformance_corpus_relations_in_both_directions() {
        let corpus = load_corpus();
        // What the store keeps: each declared relation and its inverse.
        let mut graph: BTreeSet<(String, &'static str, String)> = BTreeSet::new();
        for (_, entity, _) in &corpus.entities {
            let source = EntityRef::of_entity(entity).canonical();
            for (relation, target) in derive_relations(entity) {
                graph.insert((
                    source.clone(),
                    backstage_type_name(relation),
                    target.canonical(),
                ));
                graph.insert((
                    target.canonical(),
                    backstage_type_name(inverse(relation)),
                    source.clone(),
                ));
            }
        }
        let expect = |source: &str, relation: &'static str, target: &str| {
            assert!(
                graph.contains(&(source.to_owned(), relation, target.to_owned())),
                "missing {source} {relation} {target}"
            );
        };
        expect(
            "component:default/artist-lookup",
            "ownedBy",
            "group:default/team-a",
        );
        expect(
            "group:default/team-a",
            "ownerOf",
            "component:default/artist-lookup",
        );
        expect(
            "component:default/artist-lookup",
            "partOf",
            "system:default/artist-engagement-portal",
        );
        expect(
            "system:default/artist-engagement-portal",
            "hasPart",
            "component:default/artist-lookup",
        );
        expect(
            "component:default/artist-lookup",
            "dependsOn",
            "resource:default/artists-db",
        );
        expect(
            "resource:default/artists-db",
            "dependencyOf",
            "component:default/artist-lookup",
        );
        expect(
            "component:default/wayback-archive-ingestion",
            "partOf",
            "component:default/wayback-archive",
        );
        expect(
            "component:default/petstore",
            "providesApi",
            "api:default/petstore",
        );
        expect(
            "api:default/petstore",
            "apiProvidedBy",
            "component:default/petstore",
        );
        expect(
            "component:default/wayback-search",
            "consumesApi",
            "api:default/wayback-archive",
        );
        expect(
            "system:default/audio-playback",
            "partOf",
            "domain:default/playback",
        );
        expect(
            "group:default/acme-corp",
            "parentOf",
            "group:default/infrastructure",
        );
        expect(
            "group:default/infrastructure",
            "childOf",
            "group:default/acme-corp",
        );
        expect(
            "group:default/boxoffice",
            "parentOf",
            "group:default/team-c",
        );
        expect("group:default/team-e", "childOf", "group:default/boxoffice");
        expect(
            "group:default/team-a",
            "hasMember",
            "user:default/breanna.davison",
        );
        expect(
            "user:default/breanna.davison",
            "memberOf",
            "group:default/team-a",
        );
        expect("user:development/guest", "memberOf", "group:default/team-a");
        expect(
            "group:default/team-a",
            "hasMember",
            "user:development/guest",
        );
        // References resolve against the holder's namespace, or the one written.
        expect(
            "component:alternative/different-namespace",
            "ownedBy",
            "group:default/team-a",
        );
        // Dangling and mis-kinded references are kept.
        expect("component:default/petstore", "ownedBy", "group:default/sre");
        expect("system:default/podcast", "ownedBy", "user:default/team-b");
        expect(
            "component:default/dream11-svc",
            "consumesApi",
            "component:default/artist-lookup",
        );
        // Obsolete fields derive nothing.
        assert!(!graph.iter().any(|(s, r, t)| s == "group:default/acme-corp"
            && *r == "parentOf"
            && t == "group:default/team-a"));
    }

    #[test]
    fn invalid_component_is_rejected_naming_the_fields() {
        let path = corpus_dir().join("invalid/invalid-component.yaml");
        let source = std::fs::read_to_string(path).expect("invalid-component.yaml");
        let documents = docs(&source);
        let DocumentOutcome::Invalid { errors } = document_to_entity(&documents[0]) else {
            panic!("invalid-component.yaml was accepted");
        };
        let name = errors
            .iter()
            .find(|e| e.field == "metadata.name")
            .expect("metadata.name error");
        assert_eq!((name.reason.as_str(), name.line), (reason::INVALID_NAME, 4));
        assert!(
            name.message.contains("\"invalid component\""),
            "{}",
            name.message
        );
        let tag = errors
            .iter()
            .find(|e| e.field == "metadata.tags[1]")
            .expect("tag error");
        assert_eq!((tag.reason.as_str(), tag.line), (reason::INVALID_TAG, 11));
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    // ---- conversion ---------------------------------------------------------------------

    #[test]
    fn component_converts_with_typed_and_additional_fields() {
        let (entity, warnings) = entity_of(COMPONENT);
        assert_eq!(entity.api_version, "backstage.io/v1alpha1");
        let m = entity.metadata.as_ref().expect("metadata");
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str()),
            ("payments", "default")
        );
        assert_eq!(m.labels.get("tier").map(String::as_str), Some("critical"));
        assert_eq!(m.tags, vec!["java", "payments"]);
        let custom = m
            .additional_metadata
            .as_ref()
            .and_then(|s| s.fields.get("custom"))
            .expect("custom kept");
        let Some(Kind::StructValue(custom)) = &custom.kind else {
            panic!("struct")
        };
        let Some(Kind::ListValue(list)) = &custom.fields["nested"].kind else {
            panic!("list")
        };
        let kinds: Vec<_> = list.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                Some(Kind::NumberValue(1.0)),
                Some(Kind::BoolValue(true)),
                Some(Kind::NullValue(0)),
                Some(Kind::StringValue("x".into()))
            ]
        );
        let Some(Spec::ComponentSpec(s)) = &entity.spec else {
            panic!("component spec")
        };
        assert_eq!(
            (s.r#type.as_str(), s.lifecycle.as_str(), s.owner.as_str()),
            ("service", "production", "team-a")
        );
        assert_eq!(s.depends_on, vec!["resource:payments-db", "queue"]);
        let extra = entity.additional_spec.as_ref().expect("additional spec");
        assert_eq!(
            extra.fields["costCenter"].kind,
            Some(Kind::NumberValue(42.0))
        );
        assert!(extra.fields.contains_key("definition"));
        assert!(has(&warnings, "spec.costCenter", reason::UNKNOWN_FIELD));
        assert!(has(&warnings, "spec.definition", reason::UNKNOWN_FIELD));
        assert!(has(&warnings, "metadata.custom", reason::UNKNOWN_FIELD));
        assert!(has(
            &warnings,
            "spec.dependsOn[1]",
            reason::MISSING_REFERENCE_KIND
        ));
        let w = warnings
            .iter()
            .find(|w| w.field == "spec.dependsOn[1]")
            .expect("warning");
        assert_eq!(w.line, 20);

        let relations: Vec<(RelationType, String)> = derive_relations(&entity)
            .into_iter()
            .map(|(r, t)| (r, t.canonical()))
            .collect();
        assert_eq!(
            relations,
            vec![
                (RelationType::OwnedBy, "group:default/team-a".to_owned()),
                (RelationType::PartOf, "system:default/billing".to_owned()),
                (
                    RelationType::ProvidesApi,
                    "api:default/payments-api".to_owned()
                ),
                (
                    RelationType::ConsumesApi,
                    "api:ledger/ledger-api".to_owned()
                ),
                (
                    RelationType::DependsOn,
                    "resource:default/payments-db".to_owned()
                ),
                (
                    RelationType::DependsOn,
                    "component:default/queue".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn missing_and_wrongly_typed_fields_are_errors_with_lines() {
        let errors = errors_of("metadata:\n  name: x\n");
        assert!(
            has(&errors, "apiVersion", reason::MISSING_FIELD),
            "{errors:#?}"
        );
        assert!(has(&errors, "kind", reason::MISSING_FIELD), "{errors:#?}");

        let errors = errors_of(
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nspec: {type: x, lifecycle: y, owner: z}\n",
        );
        assert!(
            has(&errors, "metadata", reason::MISSING_FIELD),
            "{errors:#?}"
        );

        let errors = errors_of(
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: 123\nspec:\n  type: service\n  lifecycle: production\n  owner: [a, b]\n",
        );
        let name = errors
            .iter()
            .find(|e| e.field == "metadata.name")
            .expect("name error");
        assert_eq!((name.reason.as_str(), name.line), (reason::WRONG_TYPE, 4));
        assert!(
            name.message.contains("must be a string, not a number"),
            "{}",
            name.message
        );
        let owner = errors
            .iter()
            .find(|e| e.field == "spec.owner")
            .expect("owner error");
        assert_eq!((owner.reason.as_str(), owner.line), (reason::WRONG_TYPE, 8));
        assert_eq!(
            errors.len(),
            2,
            "no second error for the same field: {errors:#?}"
        );

        let errors = errors_of(
            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\nspec:\n  type: service\n",
        );
        assert!(has(&errors, "spec.lifecycle", reason::MISSING_FIELD));
        assert!(has(&errors, "spec.owner", reason::MISSING_FIELD));
        assert!(errors.iter().all(|e| e.line == 5), "{errors:#?}");

        let errors = errors_of("- a\n- b\n");
        assert!(has(&errors, "", reason::WRONG_TYPE), "{errors:#?}");

        let errors = errors_of(
            "apiVersion: v1\nkind: Group\nmetadata: {name: a, name: b}\nspec: {type: team}\nextra: 1\n",
        );
        assert!(
            has(&errors, "metadata.name", reason::DUPLICATE_KEY),
            "{errors:#?}"
        );
        assert!(has(&errors, "extra", reason::UNKNOWN_FIELD), "{errors:#?}");

        let errors = errors_of(
            "apiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: -bad\n  namespace: Payments\n  labels: {'a b': x, ok: 'no spaces allowed'}\n  annotations: {'x/y/z': v}\n  links: [{url: not-a-url}]\nspec: {type: team, children: ['group:a/b/c'], members: ['']}\n",
        );
        for (field, reason) in [
            ("metadata.name", reason::INVALID_NAME),
            ("metadata.namespace", reason::INVALID_NAMESPACE),
            ("metadata.labels[\"a b\"]", reason::INVALID_LABEL),
            ("metadata.labels[\"ok\"]", reason::INVALID_LABEL),
            (
                "metadata.annotations[\"x/y/z\"]",
                reason::INVALID_ANNOTATION,
            ),
            ("metadata.links[0].url", reason::INVALID_URL),
            ("spec.children[0]", reason::INVALID_REFERENCE),
            ("spec.members[0]", reason::INVALID_REFERENCE),
        ] {
            assert!(has(&errors, field, reason), "{field} {reason}: {errors:#?}");
        }
        let label = errors
            .iter()
            .find(|e| e.field == "metadata.labels[\"a b\"]")
            .expect("label");
        assert_eq!(label.line, 6);
    }

    #[test]
    fn warnings_for_odd_but_accepted_documents() {
        let (entity, warnings) = entity_of(
            "apiVersion: example.com/v2\nkind: Template\nmetadata:\n  name: t\n  uid: abc\n  title: '  Padded  '\n  tags: [a, b, a]\nspec:\n  steps: [1]\nrelations: []\n",
        );
        assert!(has(&warnings, "apiVersion", reason::UNKNOWN_API_VERSION));
        assert!(has(&warnings, "kind", reason::UNKNOWN_KIND));
        assert!(has(&warnings, "metadata.uid", reason::IGNORED_FIELD));
        assert!(has(&warnings, "relations", reason::IGNORED_FIELD));
        assert!(has(
            &warnings,
            "metadata.title",
            reason::TRAILING_WHITESPACE
        ));
        assert!(has(&warnings, "metadata.tags[2]", reason::DUPLICATE_TAG));
        let m = entity.metadata.as_ref().expect("metadata");
        assert_eq!(m.title, "Padded");
        assert_eq!(m.tags, vec!["a", "b"]);
        assert!(m.additional_metadata.is_none());
        assert!(entity.spec.is_none());
        assert!(
            entity
                .additional_spec
                .as_ref()
                .is_some_and(|s| s.fields.contains_key("steps"))
        );
        assert!(warnings.iter().all(|w| w.line > 0));
    }

    #[test]
    fn kind_is_case_insensitive_and_kept_as_written() {
        let (entity, warnings) = entity_of(
            "apiVersion: backstage.io/v1alpha1\nkind: component\nmetadata: {name: X}\nspec: {type: a, lifecycle: b, owner: c}\n",
        );
        assert_eq!(entity.kind, "component");
        assert!(matches!(entity.spec, Some(Spec::ComponentSpec(_))));
        assert!(!has(&warnings, "kind", reason::UNKNOWN_KIND));
    }

    // ---- references ---------------------------------------------------------------------

    #[test]
    fn entity_references() {
        let ok = |text: &str, kind: Option<&str>, ns: &str| -> String {
            parse_entity_ref(text, kind, ns)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .canonical()
        };
        let table: &[(&str, Option<&str>, &str, &str)] = &[
            ("team-a", Some("Group"), "default", "group:default/team-a"),
            ("group:team-a", None, "default", "group:default/team-a"),
            ("user:guest", Some("group"), "default", "user:default/guest"),
            (
                "default/team-a",
                Some("group"),
                "alternative",
                "group:default/team-a",
            ),
            (
                "team-a",
                Some("group"),
                "alternative",
                "group:alternative/team-a",
            ),
            (
                "Component:Default/Petstore",
                None,
                "default",
                "component:default/Petstore",
            ),
            (
                "group:default/team-a",
                Some("user"),
                "x",
                "group:default/team-a",
            ),
            (
                "API:payments/ledger.v2_api",
                None,
                "default",
                "api:payments/ledger.v2_api",
            ),
            (
                "breanna.davison",
                Some("User"),
                "default",
                "user:default/breanna.davison",
            ),
        ];
        for (text, kind, ns, expected) in table {
            assert_eq!(ok(text, *kind, ns), *expected, "{text}");
        }
        let err = |text: &str, kind: Option<&str>| {
            parse_entity_ref(text, kind, "default").expect_err(text)
        };
        assert_eq!(err("", Some("group")), RefError::Empty);
        assert_eq!(err("team-a", None), RefError::MissingKind("team-a".into()));
        assert_eq!(err(":x", None), RefError::Malformed(":x".into()));
        assert_eq!(err("group:", None), RefError::Malformed("group:".into()));
        assert_eq!(
            err("group:/x", None),
            RefError::Malformed("group:/x".into())
        );
        assert_eq!(err("ns/", Some("group")), RefError::Malformed("ns/".into()));
        assert_eq!(
            err("1group:x", None),
            RefError::InvalidKind("1group".into())
        );
        assert_eq!(
            err("group:bad_ns/x", None),
            RefError::InvalidNamespace("bad_ns".into())
        );
        assert_eq!(
            err("group:team a", None),
            RefError::InvalidName("team a".into())
        );
        assert_eq!(
            err("ns/a/b", Some("group")),
            RefError::InvalidName("a/b".into())
        );
        // A slash before the colon: everything after the slash is the name.
        assert_eq!(
            err("ns/kind:x", Some("group")),
            RefError::InvalidName("kind:x".into())
        );
        assert_eq!(err("a:b:c", None), RefError::InvalidName("b:c".into()));
        assert!(err("team-a", None).to_string().contains("no kind"));
        // Canonical references parse back to themselves.
        let r = parse_entity_ref("Component:Default/Petstore", None, "default").expect("ref");
        assert_eq!(
            parse_entity_ref(&r.canonical(), None, "x").expect("again"),
            r
        );
        assert!(r.same_entity(
            &parse_entity_ref("component:default/petstore", None, "x").expect("lower")
        ));
    }

    #[test]
    fn relation_types_invert_and_have_backstage_names() {
        for r in ALL_RELATION_TYPES {
            assert_eq!(inverse(inverse(r)), r);
            assert_ne!(inverse(r), r);
            assert_eq!(relation_type_from_name(backstage_type_name(r)), Some(r));
            assert_eq!(backstage_type_name(r as i32), backstage_type_name(r));
        }
        assert_eq!(backstage_type_name(99), "");
        assert_eq!(
            inverse(RelationType::ProvidesApi),
            RelationType::ApiProvidedBy
        );
    }

    #[test]
    fn group_and_user_relations() {
        let (group, _) = entity_of(
            "apiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata: {name: team-a, namespace: eng}\nspec: {type: team, parent: org, children: [sub, 'default/other'], members: [jane, jane]}\n",
        );
        let relations: Vec<(RelationType, String)> = derive_relations(&group)
            .into_iter()
            .map(|(r, t)| (r, t.canonical()))
            .collect();
        assert_eq!(
            relations,
            vec![
                (RelationType::ChildOf, "group:eng/org".to_owned()),
                (RelationType::ParentOf, "group:eng/sub".to_owned()),
                (RelationType::ParentOf, "group:default/other".to_owned()),
                (RelationType::HasMember, "user:eng/jane".to_owned()),
            ]
        );
        let (domain, _) = entity_of(
            "apiVersion: backstage.io/v1beta1\nkind: Domain\nmetadata: {name: d}\nspec: {owner: o, subdomainOf: top}\n",
        );
        assert_eq!(
            derive_relations(&domain)[1].1.canonical(),
            "domain:default/top"
        );
    }

    // ---- content hash -------------------------------------------------------------------

    #[test]
    fn content_hash_is_stable_and_sensitive() {
        let (a, _) = entity_of(COMPONENT);
        let (b, _) = entity_of(COMPONENT);
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_eq!(content_hash(&a).len(), 64);
        // Output-only fields do not count.
        let mut stored = a.clone();
        stored.uid = "u".into();
        stored.etag = "e".into();
        stored.name = "tenants/t/entities/component/default/payments".into();
        stored.status = Some(pb::EntityStatus {
            warnings: vec![],
            unresolved_relation_count: 3,
        });
        assert_eq!(content_hash(&stored), content_hash(&a));
        // Label order does not count (hash maps); many labels to make an order change likely.
        let mut many = a.clone();
        let mut reversed = a.clone();
        for i in 0..50 {
            many.metadata
                .as_mut()
                .expect("m")
                .labels
                .insert(format!("k{i}"), format!("v{i}"));
        }
        for i in (0..50).rev() {
            reversed
                .metadata
                .as_mut()
                .expect("m")
                .labels
                .insert(format!("k{i}"), format!("v{i}"));
        }
        assert_eq!(content_hash(&many), content_hash(&reversed));
        // A changed description, spec field or additional value changes it.
        let changed = entity_of(&COMPONENT.replace("Takes money", "Takes more money")).0;
        assert_ne!(content_hash(&changed), content_hash(&a));
        let changed = entity_of(&COMPONENT.replace("costCenter: 42", "costCenter: 43")).0;
        assert_ne!(content_hash(&changed), content_hash(&a));
        let changed =
            entity_of(&COMPONENT.replace("lifecycle: production", "lifecycle: deprecated")).0;
        assert_ne!(content_hash(&changed), content_hash(&a));
        // An empty namespace reads as default.
        let mut no_ns = a.clone();
        no_ns.metadata.as_mut().expect("m").namespace.clear();
        assert_eq!(content_hash(&no_ns), content_hash(&a));
    }

    // ---- proto validation ---------------------------------------------------------------

    #[test]
    fn proto_entities_get_the_same_rules() {
        let (valid, _) = entity_of(COMPONENT);
        assert!(
            validate_entity(&valid).is_empty(),
            "{:?}",
            validate_entity(&valid)
        );

        let mut e = valid.clone();
        e.kind = "API".into();
        let v = validate_entity(&e);
        assert!(v.iter().any(|(f, _)| f == "spec"), "{v:?}");

        let mut e = valid.clone();
        e.additional_spec
            .get_or_insert_with(Default::default)
            .fields
            .insert(
                "owner".into(),
                prost_types::Value {
                    kind: Some(Kind::StringValue("x".into())),
                },
            );
        let v = validate_entity(&e);
        assert!(v.iter().any(|(f, _)| f == "spec.owner"), "{v:?}");

        let mut e = valid.clone();
        e.metadata.as_mut().expect("m").name = "bad name".into();
        e.metadata.as_mut().expect("m").tags.push("Upper".into());
        let v = validate_entity(&e);
        assert!(
            v.iter()
                .any(|(f, d)| f == "metadata.name" && d.contains("1-63 characters")),
            "{v:?}"
        );
        assert!(v.iter().any(|(f, _)| f == "metadata.tags[2]"), "{v:?}");

        let mut e = valid.clone();
        e.spec = None;
        let v = validate_entity(&e);
        assert!(
            v.iter().any(|(f, _)| f == "spec.owner"),
            "missing spec reads as empty: {v:?}"
        );

        // An API whose definition is a placeholder satisfies "required".
        let (api, warnings) = entity_of(
            "apiVersion: backstage.io/v1alpha1\nkind: API\nmetadata: {name: a}\nspec: {type: openapi, lifecycle: x, owner: o, definition: {$text: ./a.yaml}}\n",
        );
        assert!(validate_entity(&api).is_empty());
        assert!(has(
            &warnings,
            "spec.definition",
            reason::UNRESOLVED_PLACEHOLDER
        ));
        let mut without = api.clone();
        without.additional_spec = None;
        assert!(validate_entity(&without).is_empty());
        assert!(has(
            &check_entity(&without).warnings,
            "spec.definition",
            reason::MISSING_FIELD
        ));

        // Deep additional values are refused.
        let mut deep = prost_types::Value {
            kind: Some(Kind::NullValue(0)),
        };
        for _ in 0..70 {
            deep = prost_types::Value {
                kind: Some(Kind::ListValue(prost_types::ListValue {
                    values: vec![deep],
                })),
            };
        }
        let mut e = valid.clone();
        e.additional_spec
            .get_or_insert_with(Default::default)
            .fields
            .insert("deep".into(), deep);
        assert!(validate_entity(&e).iter().any(|(f, _)| f == "spec"));
    }

    #[test]
    fn normalize_fills_defaults() {
        let mut e = pb::Entity {
            api_version: "backstage.io/v1alpha1".into(),
            kind: "User".into(),
            metadata: Some(pb::EntityMetadata {
                name: "jane".into(),
                ..Default::default()
            }),
            spec: Some(Spec::UserSpec(pb::UserSpec {
                profile: Some(pb::Profile {
                    display_name: " Jane ".into(),
                    ..Default::default()
                }),
                member_of: vec!["team-a".into()],
            })),
            ..Default::default()
        };
        let warnings = normalize_entity(&mut e);
        assert_eq!(
            e.metadata.as_ref().map(|m| m.namespace.as_str()),
            Some("default")
        );
        assert!(has(
            &warnings,
            "spec.profile.displayName",
            reason::TRAILING_WHITESPACE
        ));
        assert!(check_entity(&e).errors.is_empty());
    }

    #[test]
    fn no_panic_on_truncated_or_mangled_documents() {
        let root = corpus_dir();
        let mut files = Vec::new();
        yaml_files(&root, &root, &mut files);
        let mut sources: Vec<String> = files
            .iter()
            .take(12)
            .map(|f| std::fs::read_to_string(root.join(f)).expect("file"))
            .collect();
        sources.push(COMPONENT.to_owned());
        for source in &sources {
            let cuts = source.char_indices().map(|(i, _)| i).step_by(7);
            for cut in cuts {
                for variant in [
                    source[..cut].to_owned(),
                    format!("{}\u{0}{}", &source[..cut], &source[cut..]),
                    format!("{}: [\n{}", &source[..cut], &source[cut..]),
                    source[..cut].replace(':', " "),
                    source[cut..].to_owned(),
                ] {
                    if let Ok(documents) = parse_documents(&variant, &Limits::default()) {
                        for doc in &documents {
                            if let DocumentOutcome::Entity { entity, .. } = document_to_entity(doc)
                            {
                                let _ = (
                                    derive_relations(&entity),
                                    content_hash(&entity),
                                    validate_entity(&entity),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn conversion_is_fast_enough_for_bulk_imports() {
        let source = (0..2_000)
            .map(|i| COMPONENT.replace("name: payments", &format!("name: payments-{i}")))
            .collect::<Vec<_>>()
            .join("---\n");
        let start = std::time::Instant::now();
        let documents = parse_documents(&source, &Limits::default()).expect("parse");
        let mut n = 0;
        for doc in &documents {
            if let DocumentOutcome::Entity { entity, .. } = document_to_entity(doc) {
                let _ = (derive_relations(&entity), content_hash(&entity));
                n += 1;
            }
        }
        assert_eq!(n, 2_000);
        let elapsed = start.elapsed();
        eprintln!("2000 documents parsed, converted, hashed in {elapsed:?}");
        assert!(elapsed < std::time::Duration::from_secs(15), "{elapsed:?}");
    }

    // ---- bombs through the public entry point ---------------------------------------------

    #[test]
    fn yaml_bombs_are_rejected_with_the_limit_named() {
        let start = std::time::Instant::now();
        let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for pair in names.windows(2) {
            let (prev, name) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 10].join(", ");
            laughs.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let err = parse_documents(&laughs, &Limits::default()).expect_err("billion laughs");
        assert_eq!(err.kind, ParseErrorKind::AliasExpansion);
        assert!(err.to_string().contains("ALIAS_EXPANSION"), "{err}");

        let deep = format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse_documents(&deep, &Limits::default()).expect_err("deep");
        assert_eq!(err.kind, ParseErrorKind::TooDeep);
        assert!(err.to_string().contains("64 levels"), "{err}");

        let big = format!(
            "apiVersion: v1\nkind: Component\nmetadata:\n  name: big\n  description: {}\n",
            "x".repeat(10 * 1024 * 1024)
        );
        let err = parse_documents(&big, &Limits::default()).expect_err("big");
        assert_eq!(err.kind, ParseErrorKind::DocumentTooLarge);
        assert!(
            err.to_string().contains("larger than 1048576 bytes"),
            "{err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
