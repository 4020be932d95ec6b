//! Scorecard evaluation: EvaluateEntity and ListScorecardEvaluations.
//!
//! Evaluations are computed on demand, never stored, so they always reflect the catalog and the
//! deployment history as they are. One evaluation reads the entities a scorecard applies to (one
//! query), their relations (one query), and per distinct deployment window the DORA figures of
//! every Component at once (the GetDoraMetrics queries grouped by Component); the rules then run
//! in memory. A listing is sorted and filtered in memory and paged with a keyset token that also
//! pins the evaluation time, so later pages use the same windows as the first.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::insights::v1 as pb;
use sqlx::Row;

use super::scorecards::{self, DEFAULT_ENTITY_FILTER, DEFAULT_WINDOW_US, duration_micros};
use crate::audit::timestamp;
use crate::catalog::{model, normalized_ref, parse_name_or_ref};
use crate::error::Error;
use crate::filter::{self, Op, Param, bind_params};
use crate::names::{self, parse_child_name, parse_tenant_name};
use crate::pagination;
use crate::store::{Store, now_micros};

use pb::scorecard_rule::Check;

/// A page token of ListScorecardEvaluations is good for this long.
const TOKEN_LIFETIME_US: i64 = 3_600_000_000;

/// One catalog entity with what the rules look at.
#[derive(Debug, Clone)]
struct Subject {
    /// Canonical lowercase reference, `component:default/payments`.
    reference: String,
    /// `tenants/{t}/entities/{kind}/{namespace}/{name}`.
    name: String,
    owner: String,
    entity: cat::Entity,
    relations: Vec<RelationFact>,
}

#[derive(Debug, Clone)]
struct RelationFact {
    relation: i32,
    target: String,
    resolved: bool,
}

impl Subject {
    fn is_component(&self) -> bool {
        self.reference.starts_with("component:")
    }
    fn metadata(&self) -> cat::EntityMetadata {
        self.entity.metadata.clone().unwrap_or_default()
    }
    fn relations(&self, relation: cat::RelationType) -> impl Iterator<Item = &RelationFact> {
        self.relations
            .iter()
            .filter(move |r| r.relation == relation as i32)
    }
}

/// The entities of `tenant` matching a ListEntities filter (`entity_filter`; empty means the
/// scorecard default), optionally only the one with reference `only`, with their relations.
async fn subjects_load(
    store: &Store,
    tenant: &str,
    entity_filter: &str,
    only: Option<&str>,
) -> Result<Vec<Subject>, Error> {
    let filter_text = if entity_filter.is_empty() {
        DEFAULT_ENTITY_FILTER
    } else {
        entity_filter
    };
    // The entities' conditions over `e`, beside the tenant ($1), for both queries below.
    let (condition, mut params) = crate::catalog::entity_filter_condition(filter_text)?;
    let mut entity_sql = String::new();
    if !condition.is_empty() {
        entity_sql.push_str(&format!(" AND ({condition})"));
    }
    if let Some(reference) = only {
        params.push(Param::Text(reference.to_owned()));
        entity_sql.push_str(&format!(" AND e.ref = ${}", params.len() + 1));
    }
    let sql = format!(
        "SELECT e.ref, e.kind, e.namespace, e.name, e.owner_ref, e.body FROM catalog_entities e \
         WHERE e.tenant = $1{entity_sql} ORDER BY e.ref"
    );
    let query = bind_params(sqlx::query(&sql).bind(tenant), &params);
    let mut subjects = Vec::new();
    let mut index = HashMap::new();
    for row in query.fetch_all(store.pool()).await? {
        let body: Vec<u8> = row.try_get("body")?;
        let entity = <cat::Entity as prost::Message>::decode(body.as_slice())
            .map_err(|e| Error::internal(format!("stored entity: {e}")))?;
        let reference: String = row.try_get("ref")?;
        index.insert(reference.clone(), subjects.len());
        subjects.push(Subject {
            name: format!(
                "tenants/{tenant}/entities/{}/{}/{}",
                row.try_get::<String, _>("kind")?,
                row.try_get::<String, _>("namespace")?,
                row.try_get::<String, _>("name")?
            ),
            owner: row.try_get("owner_ref")?,
            reference,
            entity,
            relations: Vec::new(),
        });
    }
    if subjects.is_empty() {
        return Ok(subjects);
    }
    // Relations of the same entities, with whether each target exists.
    let sql = format!(
        "SELECT DISTINCT r.source_ref, r.type, r.target_ref, CASE WHEN t.ref IS NULL THEN 0 ELSE 1 END AS resolved \
         FROM catalog_relations r JOIN catalog_entities e ON e.tenant = r.tenant AND e.ref = r.source_ref \
         LEFT JOIN catalog_entities t ON t.tenant = r.tenant AND t.ref = r.target_ref \
         WHERE r.tenant = $1{entity_sql}"
    );
    let query = bind_params(sqlx::query(&sql).bind(tenant), &params);
    for row in query.fetch_all(store.pool()).await? {
        let source: String = row.try_get("source_ref")?;
        if let Some(&i) = index.get(&source) {
            subjects[i].relations.push(RelationFact {
                relation: row.try_get("type")?,
                target: row.try_get("target_ref")?,
                resolved: row.try_get::<i32, _>("resolved")? == 1,
            });
        }
    }
    Ok(subjects)
}

/// The look-back and environments of one deployment-based rule: the key its figures are
/// computed and shared under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WindowKey {
    length_us: i64,
    /// Environment ids, sorted; empty means every PRODUCTION environment.
    environments: Vec<String>,
}

fn window_key(window: Option<&pb::DeploymentWindow>) -> WindowKey {
    let length_us = window
        .and_then(|w| duration_micros(&w.window))
        .unwrap_or(DEFAULT_WINDOW_US);
    let mut environments: Vec<String> = window
        .map(|w| {
            w.environments
                .iter()
                .filter_map(|n| parse_child_name("environments", n, "environments").ok())
                .map(|(_, id)| id)
                .collect()
        })
        .unwrap_or_default();
    environments.sort();
    environments.dedup();
    WindowKey {
        length_us,
        environments,
    }
}

/// The deployment window of a rule, if its check is deployment-based.
fn rule_window(rule: &pb::ScorecardRule) -> Option<WindowKey> {
    match rule.check.as_ref()? {
        Check::DeployedRecently(c) => Some(window_key(c.within.as_ref())),
        Check::ChangeFailureRate(c) => Some(window_key(c.window.as_ref())),
        Check::DeploymentFrequency(c) => Some(window_key(c.window.as_ref())),
        Check::LeadTime(c) => Some(window_key(c.window.as_ref())),
        Check::TimeToRestore(c) => Some(window_key(c.window.as_ref())),
        Check::DoraBand(c) => Some(window_key(c.window.as_ref())),
        _ => None,
    }
}

/// DORA figures per window, per Component, as of `now`.
type DeploymentFacts = HashMap<WindowKey, BTreeMap<String, pb::DoraFigures>>;

/// Computes the figures every deployment-based rule of `scorecards` needs, for the Component
/// `only` or (None) for every Component of the tenant.
async fn deployment_facts(
    store: &Store,
    tenant: &str,
    scorecards: &[&pb::Scorecard],
    only: Option<&str>,
    now: i64,
) -> Result<DeploymentFacts, Error> {
    let windows: HashSet<WindowKey> = scorecards
        .iter()
        .flat_map(|s| s.rules.iter().filter_map(rule_window))
        .collect();
    let mut facts = DeploymentFacts::new();
    let mut production: Option<Vec<String>> = None;
    for key in windows {
        let environments = if key.environments.is_empty() {
            if production.is_none() {
                production = Some(super::dora::environments(store, tenant, &[]).await?);
            }
            production.clone().unwrap_or_default()
        } else {
            key.environments.clone()
        };
        let only: Option<Vec<String>> = only.map(|c| vec![c.to_owned()]);
        let figures = super::dora::component_figures(
            store,
            tenant,
            only.as_deref(),
            &environments,
            (now - key.length_us, now),
        )
        .await?;
        facts.insert(key, figures);
    }
    Ok(facts)
}

/// What one check found: `Some(passed)` with a message, or no data.
enum Found {
    Pass(String),
    Fail(String),
    NoData(String),
}

fn found(passed: bool, message: String) -> Found {
    if passed {
        Found::Pass(message)
    } else {
        Found::Fail(message)
    }
}

fn days(us: i64) -> String {
    let d = us as f64 / super::dora::DAY_US as f64;
    if (d - d.round()).abs() < 1e-9 {
        format!("{} days", d.round() as i64)
    } else {
        format!("{:.1} days", d)
    }
}

fn human_duration(us: i64) -> String {
    let h = us as f64 / super::dora::HOUR_US as f64;
    if h < 48.0 {
        format!("{h:.1} h")
    } else {
        format!("{:.1} days", h / 24.0)
    }
}

/// Runs one check against one subject.
fn check_run(
    check: &Check,
    subject: &Subject,
    rule: &pb::ScorecardRule,
    facts: &DeploymentFacts,
) -> Found {
    let meta = subject.metadata();
    match check {
        Check::HasOwner(c) => {
            let owned_by: Vec<&RelationFact> =
                subject.relations(cat::RelationType::OwnedBy).collect();
            if subject.owner.is_empty() && owned_by.is_empty() {
                return Found::Fail("no owner".into());
            }
            let owner = owned_by
                .first()
                .map(|r| r.target.clone())
                .unwrap_or_else(|| subject.owner.clone());
            if c.require_resolved && !owned_by.iter().any(|r| r.resolved) {
                return Found::Fail(format!("owner {owner} is not in the catalog"));
            }
            Found::Pass(format!("owner is {owner}"))
        }
        Check::HasLifecycle(c) => {
            let lifecycle = spec_field(&subject.entity, "lifecycle")
                .into_iter()
                .next()
                .unwrap_or_default();
            if lifecycle.is_empty() {
                return Found::Fail("no lifecycle".into());
            }
            if !c.allowed_values.is_empty()
                && !c
                    .allowed_values
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(&lifecycle))
            {
                return Found::Fail(format!(
                    "lifecycle {lifecycle} is not one of {}",
                    c.allowed_values.join(", ")
                ));
            }
            Found::Pass(format!("lifecycle is {lifecycle}"))
        }
        Check::HasLink(c) => {
            let hit = meta.links.iter().find(|l| {
                let kind = if l.r#type.is_empty() {
                    &l.icon
                } else {
                    &l.r#type
                };
                kind.eq_ignore_ascii_case(&c.r#type) && l.url.starts_with(&c.url_prefix)
            });
            match hit {
                Some(l) => Found::Pass(format!("link of type {} to {}", c.r#type, l.url)),
                None if c.url_prefix.is_empty() => {
                    Found::Fail(format!("no link of type {}", c.r#type))
                }
                None => Found::Fail(format!(
                    "no link of type {} starting with {}",
                    c.r#type, c.url_prefix
                )),
            }
        }
        Check::HasAnnotation(c) => match meta.annotations.get(&c.key) {
            None => Found::Fail(format!("no annotation {}", c.key)),
            Some(v) if !c.value.is_empty() && *v != c.value => {
                Found::Fail(format!("annotation {} is {v:?}, not {:?}", c.key, c.value))
            }
            Some(v) => Found::Pass(format!("annotation {} is {v:?}", c.key)),
        },
        Check::HasLabel(c) => match meta.labels.get(&c.key) {
            None => Found::Fail(format!("no label {}", c.key)),
            Some(v) if !c.value.is_empty() && *v != c.value => {
                Found::Fail(format!("label {} is {v:?}, not {:?}", c.key, c.value))
            }
            Some(v) => Found::Pass(format!("label {} is {v:?}", c.key)),
        },
        Check::HasTag(c) => found(
            meta.tags.iter().any(|t| t == &c.tag),
            if meta.tags.iter().any(|t| t == &c.tag) {
                format!("tagged {}", c.tag)
            } else {
                format!("not tagged {}", c.tag)
            },
        ),
        Check::HasDescription(c) => {
            let min = c.min_length.max(1) as usize;
            let n = meta.description.trim().chars().count();
            found(
                n >= min,
                format!("description has {n} characters (at least {min} wanted)"),
            )
        }
        Check::ProvidesApi(c) => {
            let apis: Vec<&RelationFact> =
                subject.relations(cat::RelationType::ProvidesApi).collect();
            let counted = apis
                .iter()
                .filter(|r| r.resolved || !c.require_resolved)
                .count();
            if counted > 0 {
                Found::Pass(format!(
                    "provides {}",
                    apis.iter()
                        .map(|r| r.target.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else if apis.is_empty() {
                Found::Fail("provides no API".into())
            } else {
                Found::Fail("provides no API that is in the catalog".into())
            }
        }
        Check::HasRelation(c) => {
            let Some(relation) = model::relation_type_from_name(&c.relation_type) else {
                return Found::Fail(format!("unknown relation type {}", c.relation_type));
            };
            let kind = c.target_kind.to_ascii_lowercase();
            let count = subject
                .relations(relation)
                .filter(|r| kind.is_empty() || r.target.split(':').next() == Some(kind.as_str()))
                .filter(|r| r.resolved || !c.require_resolved)
                .count();
            let min = c.min_count.max(1) as usize;
            let what = model::backstage_type_name(relation);
            found(
                count >= min,
                format!("{count} {what} relation(s) (at least {min} wanted)"),
            )
        }
        Check::Field(c) => field_check(c, &subject.entity),
        Check::DeployedRecently(_)
        | Check::ChangeFailureRate(_)
        | Check::DeploymentFrequency(_)
        | Check::LeadTime(_)
        | Check::TimeToRestore(_)
        | Check::DoraBand(_) => {
            let Some(key) = rule_window(rule) else {
                return Found::NoData("no window".into());
            };
            if !subject.is_component() {
                return Found::NoData("not a Component: no deployments".into());
            }
            let over = days(key.length_us);
            let figures = facts.get(&key).and_then(|m| m.get(&subject.reference));
            deployment_check(check, figures, &over)
        }
    }
}

/// A deployment-based check over the Component's figures in its window (`None`: no
/// deployments there).
fn deployment_check(check: &Check, figures: Option<&pb::DoraFigures>, over: &str) -> Found {
    let no_deployments = || Found::NoData(format!("no deployments in the last {over}"));
    let Some(f) = figures else {
        return no_deployments();
    };
    let cfr = f.change_failure_rate.unwrap_or_default();
    let freq = f.deployment_frequency.unwrap_or_default();
    if cfr.finished_deployments + cfr.excluded_cancelled == 0 {
        return no_deployments();
    }
    match check {
        Check::DeployedRecently(_) => found(
            freq.successful_deployments > 0,
            format!(
                "{} successful deployment(s) in the last {over}",
                freq.successful_deployments
            ),
        ),
        Check::ChangeFailureRate(c) => match cfr.rate {
            None => Found::NoData(format!("no finished deployments in the last {over}")),
            Some(rate) => {
                let passed = rate <= c.max_rate;
                found(
                    passed,
                    format!(
                        "change failure rate {rate:.2} over {over} ({} deployments) {} {}",
                        cfr.finished_deployments,
                        if passed { "<=" } else { ">" },
                        c.max_rate
                    ),
                )
            }
        },
        Check::DeploymentFrequency(c) => {
            let passed = freq.deployments_per_day >= c.min_per_day;
            found(
                passed,
                format!(
                    "{:.3} successful deployments per day over {over} {} {}",
                    freq.deployments_per_day,
                    if passed { ">=" } else { "<" },
                    c.min_per_day
                ),
            )
        }
        Check::LeadTime(c) => {
            let lead = f.lead_time_for_changes.unwrap_or_default();
            let max = duration_micros(&c.max_median).unwrap_or(0);
            match duration_micros(&lead.median) {
                None => Found::NoData(format!("no lead time samples in the last {over}")),
                Some(m) => found(
                    m < max,
                    format!(
                        "median lead time {} over {over} ({} samples), limit {}",
                        human_duration(m),
                        lead.sample_count,
                        human_duration(max)
                    ),
                ),
            }
        }
        Check::TimeToRestore(c) => {
            let restore = f.time_to_restore.unwrap_or_default();
            let max = duration_micros(&c.max_median).unwrap_or(0);
            match duration_micros(&restore.median) {
                None => Found::NoData(format!("no restored failures in the last {over}")),
                Some(m) => found(
                    m < max,
                    format!(
                        "median time to restore {} over {over} ({} restores), limit {}",
                        human_duration(m),
                        restore.sample_count,
                        human_duration(max)
                    ),
                ),
            }
        }
        Check::DoraBand(c) => {
            let band = pb::DoraPerformanceBand::try_from(f.band).unwrap_or_default();
            if band == pb::DoraPerformanceBand::Unspecified {
                return Found::NoData(format!("no DORA band over {over}"));
            }
            // Bands are numbered best (1) to worst (4).
            let wanted = pb::DoraPerformanceBand::try_from(c.min_band).unwrap_or_default();
            found(
                f.band <= c.min_band,
                format!(
                    "DORA band {} over {over} (at least {} wanted)",
                    band.as_str_name()
                        .trim_start_matches("DORA_PERFORMANCE_BAND_"),
                    wanted
                        .as_str_name()
                        .trim_start_matches("DORA_PERFORMANCE_BAND_")
                ),
            )
        }
        _ => Found::NoData("not a deployment check".into()),
    }
}

/// A FieldCheck over the descriptor path `c.field`.
fn field_check(c: &pb::FieldCheck, entity: &cat::Entity) -> Found {
    let values = field_values(entity, &c.field);
    let reference_kind = reference_default_kind(&c.field);
    let namespace = model::EntityRef::of_entity(entity).namespace;
    let canon = |v: &str| match reference_kind {
        Some(kind) => {
            let n = normalized_ref(v, kind, &namespace);
            if n.is_empty() { v.to_owned() } else { n }
        }
        None => v.to_owned(),
    };
    let shown = if values.is_empty() {
        format!("{} is not set", c.field)
    } else {
        format!("{} is {}", c.field, values.join(", "))
    };
    match pb::FieldOperator::try_from(c.operator).unwrap_or_default() {
        pb::FieldOperator::Exists => found(values.iter().any(|v| !v.is_empty()), shown),
        pb::FieldOperator::In => {
            let wanted: HashSet<String> = c.values.iter().map(|v| canon(v)).collect();
            found(values.iter().any(|v| wanted.contains(&canon(v))), shown)
        }
        pb::FieldOperator::NotIn => {
            let unwanted: HashSet<String> = c.values.iter().map(|v| canon(v)).collect();
            found(!values.iter().any(|v| unwanted.contains(&canon(v))), shown)
        }
        pb::FieldOperator::Matches => {
            match c.values.first().map(|p| scorecards::field_pattern(p)) {
                Some(Ok(re)) => found(values.iter().any(|v| re.is_match(v)), shown),
                _ => Found::Fail("the pattern does not compile".into()),
            }
        }
        pb::FieldOperator::Unspecified => Found::Fail("no operator".into()),
    }
}

/// Spec fields whose values are entity references, with the default kind of each.
fn reference_default_kind(path: &str) -> Option<&'static str> {
    Some(match path.strip_prefix("spec.")? {
        "owner" => "group",
        "system" => "system",
        "subcomponentOf" => "component",
        "providesApis" | "consumesApis" => "api",
        "dependsOn" | "dependencyOf" => "component",
        "domain" | "subdomainOf" => "domain",
        "parent" | "children" | "memberOf" => "group",
        "members" => "user",
        _ => return None,
    })
}

/// The values at a descriptor path (`kind`, `metadata.title`, `metadata.annotations.<key>`,
/// `spec.lifecycle`, `spec.someCustomField.inner`, …); a list contributes every element.
fn field_values(entity: &cat::Entity, path: &str) -> Vec<String> {
    let meta = entity.metadata.clone().unwrap_or_default();
    let one = |v: &str| {
        if v.is_empty() {
            Vec::new()
        } else {
            vec![v.to_owned()]
        }
    };
    match path {
        "kind" => return one(&entity.kind),
        "apiVersion" => return one(&entity.api_version),
        "metadata.name" => return one(&meta.name),
        "metadata.namespace" => return one(&meta.namespace),
        "metadata.title" => return one(&meta.title),
        "metadata.description" => return one(&meta.description),
        "metadata.tags" => return meta.tags.clone(),
        "metadata.links" => return meta.links.iter().map(|l| l.url.clone()).collect(),
        _ => {}
    }
    if let Some(key) = path.strip_prefix("metadata.labels.") {
        return meta
            .labels
            .get(key)
            .map(|v| vec![v.clone()])
            .unwrap_or_default();
    }
    if let Some(key) = path.strip_prefix("metadata.annotations.") {
        return meta
            .annotations
            .get(key)
            .map(|v| vec![v.clone()])
            .unwrap_or_default();
    }
    if let Some(rest) = path.strip_prefix("metadata.") {
        return struct_values(meta.additional_metadata.as_ref(), rest);
    }
    if let Some(rest) = path.strip_prefix("spec.") {
        let typed = spec_field(entity, rest);
        if !typed.is_empty() {
            return typed;
        }
        return struct_values(entity.additional_spec.as_ref(), rest);
    }
    Vec::new()
}

/// A typed spec field by its descriptor (camelCase) name.
fn spec_field(entity: &cat::Entity, field: &str) -> Vec<String> {
    use cat::entity::Spec;
    let one = |v: &String| {
        if v.is_empty() {
            Vec::new()
        } else {
            vec![v.clone()]
        }
    };
    let profile = |p: &Option<cat::Profile>, f: &str| {
        let p = p.clone().unwrap_or_default();
        match f {
            "profile.displayName" => one(&p.display_name),
            "profile.email" => one(&p.email),
            "profile.picture" => one(&p.picture),
            _ => Vec::new(),
        }
    };
    match (&entity.spec, field) {
        (Some(Spec::ComponentSpec(s)), f) => match f {
            "type" => one(&s.r#type),
            "lifecycle" => one(&s.lifecycle),
            "owner" => one(&s.owner),
            "system" => one(&s.system),
            "subcomponentOf" => one(&s.subcomponent_of),
            "providesApis" => s.provides_apis.clone(),
            "consumesApis" => s.consumes_apis.clone(),
            "dependsOn" => s.depends_on.clone(),
            "dependencyOf" => s.dependency_of.clone(),
            _ => Vec::new(),
        },
        (Some(Spec::ApiSpec(s)), f) => match f {
            "type" => one(&s.r#type),
            "lifecycle" => one(&s.lifecycle),
            "owner" => one(&s.owner),
            "system" => one(&s.system),
            "definition" => one(&s.definition),
            _ => Vec::new(),
        },
        (Some(Spec::ResourceSpec(s)), f) => match f {
            "type" => one(&s.r#type),
            "owner" => one(&s.owner),
            "system" => one(&s.system),
            "dependsOn" => s.depends_on.clone(),
            "dependencyOf" => s.dependency_of.clone(),
            _ => Vec::new(),
        },
        (Some(Spec::SystemSpec(s)), f) => match f {
            "owner" => one(&s.owner),
            "domain" => one(&s.domain),
            "type" => one(&s.r#type),
            _ => Vec::new(),
        },
        (Some(Spec::DomainSpec(s)), f) => match f {
            "owner" => one(&s.owner),
            "subdomainOf" => one(&s.subdomain_of),
            "type" => one(&s.r#type),
            _ => Vec::new(),
        },
        (Some(Spec::GroupSpec(s)), f) => match f {
            "type" => one(&s.r#type),
            "parent" => one(&s.parent),
            "children" => s.children.clone(),
            "members" => s.members.clone(),
            f => profile(&s.profile, f),
        },
        (Some(Spec::UserSpec(s)), f) => match f {
            "memberOf" => s.member_of.clone(),
            f => profile(&s.profile, f),
        },
        (Some(Spec::LocationSpec(s)), f) => match f {
            "type" => one(&s.r#type),
            "target" => one(&s.target),
            "targets" => s.targets.clone(),
            "presence" => one(&s.presence),
            _ => Vec::new(),
        },
        (None, _) => Vec::new(),
    }
}

/// Values at a dotted path inside a Struct (unknown descriptor fields).
fn struct_values(root: Option<&prost_types::Struct>, path: &str) -> Vec<String> {
    use prost_types::value::Kind;
    let mut current: Option<&prost_types::Value> = None;
    let mut fields = root.map(|s| &s.fields);
    for part in path.split('.') {
        let Some(map) = fields else { return Vec::new() };
        current = map.get(part);
        fields = match current.and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => Some(&s.fields),
            _ => None,
        };
    }
    fn scalar(v: &prost_types::Value) -> Option<String> {
        match v.kind.as_ref()? {
            Kind::StringValue(s) => Some(s.clone()),
            Kind::NumberValue(n) => Some(if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{}", *n as i64)
            } else {
                n.to_string()
            }),
            Kind::BoolValue(b) => Some(b.to_string()),
            Kind::StructValue(s) if !s.fields.is_empty() => Some("{…}".to_owned()),
            _ => None,
        }
    }
    match current.and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(list)) => list.values.iter().filter_map(scalar).collect(),
        Some(_) => current.and_then(scalar).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Evaluates one subject against one scorecard.
fn evaluate(
    scorecard: &pb::Scorecard,
    subject: &Subject,
    facts: &DeploymentFacts,
    now: i64,
) -> pb::ScorecardEvaluation {
    let mut rule_results = Vec::with_capacity(scorecard.rules.len());
    for rule in &scorecard.rules {
        let outcome = match &rule.check {
            Some(check) => check_run(check, subject, rule, facts),
            None => Found::Fail("the rule has no check".into()),
        };
        let (outcome, passed, message) = match outcome {
            Found::Pass(m) => (pb::RuleOutcome::Passed, true, m),
            Found::Fail(m) => (pb::RuleOutcome::Failed, false, m),
            Found::NoData(m) => (pb::RuleOutcome::NoData, rule.pass_without_data, m),
        };
        rule_results.push(pb::RuleResult {
            rule: rule.id.clone(),
            level: rule.level.clone(),
            outcome: outcome as i32,
            passed,
            message,
        });
    }
    let mut level_results = Vec::with_capacity(scorecard.levels.len());
    let mut reached_so_far = true;
    let mut level = String::new();
    let mut level_rank = 0;
    for (i, l) in scorecard.levels.iter().enumerate() {
        let rules: Vec<&pb::RuleResult> = rule_results.iter().filter(|r| r.level == l.id).collect();
        let passed_rules = rules.iter().filter(|r| r.passed).count();
        let all_rules_passed = passed_rules == rules.len();
        reached_so_far &= all_rules_passed;
        if reached_so_far {
            level = l.id.clone();
            level_rank = i as i32 + 1;
        }
        level_results.push(pb::LevelResult {
            level: l.id.clone(),
            all_rules_passed,
            reached: reached_so_far,
            passed_rules: passed_rules as i32,
            total_rules: rules.len() as i32,
        });
    }
    let next_level = scorecard
        .levels
        .get(level_rank as usize)
        .map(|l| l.id.clone())
        .unwrap_or_default();
    let passed = rule_results.iter().filter(|r| r.passed).count();
    let meta = subject.metadata();
    pb::ScorecardEvaluation {
        scorecard: scorecard.name.clone(),
        entity_ref: subject.reference.clone(),
        entity: subject.name.clone(),
        entity_title: meta.title,
        level,
        level_rank,
        next_level,
        level_results,
        score: if rule_results.is_empty() {
            0.0
        } else {
            passed as f64 / rule_results.len() as f64
        },
        rule_results,
        evaluate_time: Some(timestamp(now)),
    }
}

/// EvaluateEntity.
pub async fn entity_evaluate(
    store: &Store,
    req: &pb::EvaluateEntityRequest,
) -> Result<pb::EvaluateEntityResponse, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    if req.entity.is_empty() {
        return Err(Error::invalid_argument("entity", "required"));
    }
    if req.scorecards.len() > 100 {
        return Err(Error::invalid_argument(
            "scorecards",
            "at most 100 scorecards",
        ));
    }
    let key = parse_name_or_ref("entity", &tenant, &req.entity, Some("component"))?;
    let reference = key.ref_key();
    super::entity_require(store, &tenant, &reference, &req.entity).await?;
    // The scorecards: the named ones (each must exist and apply), or every one that applies.
    let mut chosen: Vec<(pb::Scorecard, Subject)> = Vec::new();
    if req.scorecards.is_empty() {
        for scorecard in scorecards::scorecards_all(store, &tenant).await? {
            if let Some(subject) =
                subjects_load(store, &tenant, &scorecard.entity_filter, Some(&reference))
                    .await?
                    .pop()
            {
                chosen.push((scorecard, subject));
            }
        }
    } else {
        let mut names: Vec<&String> = req.scorecards.iter().collect();
        names.sort();
        names.dedup();
        for (i, name) in names.into_iter().enumerate() {
            let field = format!("scorecards[{i}]");
            let (t, scorecard) = scorecards::scorecard_get_by_name(store, &field, name).await?;
            if t != tenant {
                return Err(Error::invalid_argument(
                    field,
                    "must be a scorecard of the tenant in `parent`",
                ));
            }
            let subject = subjects_load(store, &tenant, &scorecard.entity_filter, Some(&reference))
                .await?
                .pop()
                .ok_or_else(|| Error::FailedPrecondition {
                    message: format!(
                        "scorecard `{name}` does not apply to `{}`: its entity_filter does not match",
                        names::printable(&req.entity)
                    ),
                })?;
            chosen.push((scorecard, subject));
        }
    }
    let now = now_micros();
    let scorecard_refs: Vec<&pb::Scorecard> = chosen.iter().map(|(s, _)| s).collect();
    let facts = deployment_facts(store, &tenant, &scorecard_refs, Some(&reference), now).await?;
    let mut evaluations: Vec<pb::ScorecardEvaluation> = chosen
        .iter()
        .map(|(scorecard, subject)| evaluate(scorecard, subject, &facts, now))
        .collect();
    evaluations.sort_by(|a, b| a.scorecard.cmp(&b.scorecard));
    Ok(pb::EvaluateEntityResponse { evaluations })
}

/// A sort key value of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyValue {
    Int(i64),
    Text(String),
}

impl KeyValue {
    fn to_json(&self) -> serde_json::Value {
        match self {
            KeyValue::Int(n) => serde_json::Value::from(*n),
            KeyValue::Text(s) => serde_json::Value::from(s.as_str()),
        }
    }
    fn from_json(v: &serde_json::Value) -> Option<KeyValue> {
        match v {
            serde_json::Value::Number(n) => n.as_i64().map(KeyValue::Int),
            serde_json::Value::String(s) => Some(KeyValue::Text(s.clone())),
            _ => None,
        }
    }
}

/// Where a page ends: the evaluation time of the listing and the last row's sort key.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cursor {
    t: i64,
    k: Vec<serde_json::Value>,
}

/// One row of a listing with what it sorts and filters by.
struct Listed {
    evaluation: pb::ScorecardEvaluation,
    owner: String,
}

impl Listed {
    fn key(&self, order: &[pagination::OrderKey]) -> Vec<KeyValue> {
        order
            .iter()
            .map(|k| match k.column {
                "level" => KeyValue::Int(i64::from(self.evaluation.level_rank)),
                // Scores are fractions of at most 200 rules: fixed point keeps them exact enough
                // and comparable as integers in page tokens.
                "score" => KeyValue::Int((self.evaluation.score * 1e9).round() as i64),
                "owner" => KeyValue::Text(self.owner.clone()),
                _ => KeyValue::Text(self.evaluation.entity_ref.clone()),
            })
            .collect()
    }
}

fn compare_keys(order: &[pagination::OrderKey], a: &[KeyValue], b: &[KeyValue]) -> Ordering {
    for (i, k) in order.iter().enumerate() {
        let o = a[i].cmp(&b[i]);
        let o = if k.desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// The catalog fields an evaluation filter may name, handed to the catalog's own filter.
const CATALOG_FIELDS: [&str; 8] = [
    "kind",
    "namespace",
    "name",
    "spec.type",
    "spec.lifecycle",
    "owner",
    "system",
    "tags",
];

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Has => ":",
    }
}

/// A filter term checked against the scorecard, ready to run in memory.
enum Predicate {
    Level(Op, i32),
    Rule(Op, String, pb::RuleOutcome),
    Score(Op, f64),
    /// The references of the entities matching a catalog term.
    Catalog(HashSet<String>),
}

fn compare<T: PartialOrd>(op: Op, a: T, b: T) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Has => false,
    }
}

/// Builds the predicate of one term; catalog terms run as one catalog query each.
async fn predicate(
    store: &Store,
    tenant: &str,
    scorecard: &pb::Scorecard,
    term: &filter::Term,
) -> Result<Predicate, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let field = term.field.as_str();
    if field == "level" {
        if term.op == Op::Has {
            return Err(bad("`level` supports =, !=, <, <=, > and >=".into()));
        }
        let rank = if term.value.is_empty() {
            0
        } else {
            match scorecard.levels.iter().position(|l| l.id == term.value) {
                Some(i) => i as i32 + 1,
                None => {
                    return Err(bad(format!(
                        "`{}` is not a level of this scorecard",
                        names::printable(&term.value)
                    )));
                }
            }
        };
        return Ok(Predicate::Level(term.op, rank));
    }
    if let Some(rule) = field.strip_prefix("rules.") {
        if !scorecard.rules.iter().any(|r| r.id == rule) {
            return Err(bad(format!(
                "`{}` is not a rule of this scorecard",
                names::printable(rule)
            )));
        }
        if !matches!(term.op, Op::Eq | Op::Ne) {
            return Err(bad(format!(
                "`{}` supports = and !=",
                names::printable(field)
            )));
        }
        let outcome = match term.value.as_str() {
            "PASSED" => pb::RuleOutcome::Passed,
            "FAILED" => pb::RuleOutcome::Failed,
            "NO_DATA" => pb::RuleOutcome::NoData,
            _ => {
                return Err(bad(format!(
                    "`{}` is PASSED, FAILED or NO_DATA",
                    names::printable(field)
                )));
            }
        };
        return Ok(Predicate::Rule(term.op, rule.to_owned(), outcome));
    }
    if field == "score" {
        let value: f64 = term
            .value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| bad("`score` compares with a number, e.g. `score >= 0.5`".into()))?;
        if term.op == Op::Has {
            return Err(bad("`score` supports =, !=, <, <=, > and >=".into()));
        }
        return Ok(Predicate::Score(term.op, value));
    }
    if CATALOG_FIELDS.contains(&field) || field.starts_with("labels.") {
        let quoted = term.value.replace('\\', "\\\\").replace('"', "\\\"");
        let text = format!("{field} {} \"{quoted}\"", op_text(term.op));
        let (condition, params) = crate::catalog::entity_filter_condition(&text)?;
        let sql =
            format!("SELECT e.ref FROM catalog_entities e WHERE e.tenant = $1 AND ({condition})");
        let rows = bind_params(sqlx::query(&sql).bind(tenant), &params)
            .fetch_all(store.pool())
            .await?;
        let refs = rows
            .iter()
            .map(|row| row.try_get::<String, _>("ref"))
            .collect::<Result<_, _>>()?;
        return Ok(Predicate::Catalog(refs));
    }
    Err(bad(format!(
        "cannot filter on `{}` (fields: level, rules.<rule-id>, score, kind, namespace, name, spec.type, spec.lifecycle, owner, system, labels.<key>, tags)",
        names::printable(field)
    )))
}

/// A filter expression with its terms turned into predicates, in the same shape.
enum Matcher {
    Leaf(Predicate),
    Not(Box<Matcher>),
    And(Vec<Matcher>),
    Or(Vec<Matcher>),
}

fn matcher_build<'a>(
    store: &'a Store,
    tenant: &'a str,
    scorecard: &'a pb::Scorecard,
    expr: &'a filter::Expr,
) -> futures::future::BoxFuture<'a, Result<Matcher, Error>> {
    Box::pin(async move {
        Ok(match expr {
            filter::Expr::Term(t) => Matcher::Leaf(predicate(store, tenant, scorecard, t).await?),
            filter::Expr::Not(inner) => Matcher::Not(Box::new(
                matcher_build(store, tenant, scorecard, inner).await?,
            )),
            filter::Expr::And(parts) | filter::Expr::Or(parts) => {
                let mut built = Vec::with_capacity(parts.len());
                for p in parts {
                    built.push(matcher_build(store, tenant, scorecard, p).await?);
                }
                if matches!(expr, filter::Expr::And(_)) {
                    Matcher::And(built)
                } else {
                    Matcher::Or(built)
                }
            }
        })
    })
}

impl Matcher {
    fn matches(&self, e: &pb::ScorecardEvaluation) -> bool {
        match self {
            Matcher::Leaf(Predicate::Level(op, rank)) => compare(*op, e.level_rank, *rank),
            Matcher::Leaf(Predicate::Rule(op, rule, outcome)) => {
                let is = e
                    .rule_results
                    .iter()
                    .any(|r| &r.rule == rule && r.outcome == *outcome as i32);
                if *op == Op::Eq { is } else { !is }
            }
            Matcher::Leaf(Predicate::Score(op, v)) => compare(*op, e.score, *v),
            Matcher::Leaf(Predicate::Catalog(refs)) => refs.contains(&e.entity_ref),
            Matcher::Not(inner) => !inner.matches(e),
            Matcher::And(parts) => parts.iter().all(|p| p.matches(e)),
            Matcher::Or(parts) => parts.iter().any(|p| p.matches(e)),
        }
    }
}

/// ListScorecardEvaluations.
pub async fn scorecard_evaluations_list(
    store: &Store,
    req: &pb::ListScorecardEvaluationsRequest,
) -> Result<pb::ListScorecardEvaluationsResponse, Error> {
    let page_size = pagination::page_size(req.page_size)?;
    let order_by = if req.order_by.trim().is_empty() {
        "level desc, entity"
    } else {
        req.order_by.as_str()
    };
    let order = pagination::parse_order_by(
        order_by,
        &[
            ("level", "level", true),
            ("score", "score", true),
            ("entity", "entity", false),
            ("owner", "owner", false),
        ],
        "level, score, entity, owner",
        &["entity"],
    )?;
    let expr = filter::parse_expr(&req.filter)?;
    let (tenant, scorecard) =
        scorecards::scorecard_get_by_name(store, "parent", &req.parent).await?;
    let fingerprint = pagination::query_fingerprint(&[
        &req.parent,
        &req.filter,
        order_by,
        "scorecard-evaluations",
    ]);
    let now = now_micros();
    let invalid = || Error::invalid_argument("page_token", "not a page token of this query");
    let cursor = match pagination::decode_token(fingerprint, &req.page_token)? {
        None => None,
        Some(text) => {
            let cursor: Cursor = serde_json::from_str(&text).map_err(|_| invalid())?;
            let key: Vec<KeyValue> = cursor
                .k
                .iter()
                .map(KeyValue::from_json)
                .collect::<Option<_>>()
                .ok_or_else(invalid)?;
            if key.len() != order.len() {
                return Err(invalid());
            }
            if cursor.t > now || now - cursor.t > TOKEN_LIFETIME_US {
                return Err(Error::invalid_argument(
                    "page_token",
                    "the listing this token continues is more than an hour old; start again from the first page",
                ));
            }
            Some((cursor.t, key))
        }
    };
    let evaluate_time = cursor.as_ref().map_or(now, |(t, _)| *t);
    let matcher = match &expr {
        Some(e) => Some(matcher_build(store, &tenant, &scorecard, e).await?),
        None => None,
    };
    let subjects = subjects_load(store, &tenant, &scorecard.entity_filter, None).await?;
    let facts = deployment_facts(store, &tenant, &[&scorecard], None, evaluate_time).await?;
    let mut level_counts: Vec<pb::LevelCount> = scorecard
        .levels
        .iter()
        .map(|l| pb::LevelCount {
            level: l.id.clone(),
            count: 0,
        })
        .chain(std::iter::once(pb::LevelCount::default()))
        .collect();
    let none = level_counts.len() - 1;
    let mut rows: Vec<(Vec<KeyValue>, Listed)> = Vec::new();
    for subject in &subjects {
        let evaluation = evaluate(&scorecard, subject, &facts, evaluate_time);
        let slot = if evaluation.level_rank == 0 {
            none
        } else {
            evaluation.level_rank as usize - 1
        };
        level_counts[slot].count += 1;
        if matcher.as_ref().is_some_and(|m| !m.matches(&evaluation)) {
            continue;
        }
        let row = Listed {
            evaluation,
            owner: subject.owner.clone(),
        };
        rows.push((row.key(&order), row));
    }
    let total_size = i32::try_from(rows.len()).unwrap_or(i32::MAX);
    rows.sort_by(|a, b| compare_keys(&order, &a.0, &b.0));
    let start = match &cursor {
        None => 0,
        Some((_, after)) => {
            rows.partition_point(|(k, _)| compare_keys(&order, k, after) != Ordering::Greater)
        }
    };
    let page_len = usize::try_from(page_size).unwrap_or(usize::MAX);
    let end = rows.len().min(start.saturating_add(page_len));
    let next_page_token = if end < rows.len() && end > start {
        let cursor = Cursor {
            t: evaluate_time,
            k: rows[end - 1].0.iter().map(KeyValue::to_json).collect(),
        };
        pagination::encode_token(
            fingerprint,
            &serde_json::to_string(&cursor)
                .map_err(|e| Error::internal(format!("page token: {e}")))?,
        )
    } else {
        String::new()
    };
    let evaluations = rows
        .drain(start..end)
        .map(|(_, row)| row.evaluation)
        .collect();
    Ok(pb::ListScorecardEvaluationsResponse {
        evaluations,
        next_page_token,
        total_size,
        level_counts,
        evaluate_time: Some(timestamp(evaluate_time)),
    })
}
