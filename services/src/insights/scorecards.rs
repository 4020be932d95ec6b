//! Scorecard definitions: Create / Get / List / Update / Delete. A scorecard is stored as its
//! encoded proto beside the columns ListScorecards filters and sorts on; it holds no results,
//! because evaluations are computed on demand ([`super::evaluate`]) from the catalog and the
//! deployment history, so a changed rule applies to the very next evaluation.
//!
//! Everything a definition can get wrong is found here, at write time, with a field violation
//! per problem (rule ids, levels, operands, regular expressions, filters, environments), so that
//! evaluation never meets a rule it cannot run.

use std::collections::HashSet;

use platform_api::platform::insights::v1 as pb;
use prost::Message;
use sqlx::Row;
use tracing::instrument;

use crate::audit::{AuditLog, micros, timestamp};
use crate::context::CallContext;
use crate::error::{Error, FieldViolation};
use crate::filter::{self, Op, Param, bind_params};
use crate::names::{self, parse_child_name, parse_tenant_name};
use crate::store::{Store, WriteTx, now_micros};
use crate::{idempotency, pagination};

use pb::scorecard_rule::Check;

/// The entity filter of a scorecard that names none.
pub(super) const DEFAULT_ENTITY_FILTER: &str = "kind = \"Component\"";
/// Deployment windows: default, shortest and longest look-back.
pub(super) const DEFAULT_WINDOW_US: i64 = 30 * super::dora::DAY_US;
const MIN_WINDOW_US: i64 = super::dora::HOUR_US;
const MAX_WINDOW_US: i64 = 366 * super::dora::DAY_US;
/// The longest regular expression a FieldCheck may hold, and the compiled size allowed.
const MAX_PATTERN_LEN: usize = 1024;
const MAX_PATTERN_SIZE: usize = 1 << 20;

pub(super) fn scorecard_name(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/scorecards/{id}")
}

/// A scorecard as stored.
#[derive(Debug, Clone)]
struct ScorecardRow {
    tenant: String,
    id: String,
    body: pb::Scorecard,
}

fn scorecard_from_row(row: &sqlx::any::AnyRow) -> Result<ScorecardRow, Error> {
    let bytes: Vec<u8> = row.try_get("body")?;
    let mut body = pb::Scorecard::decode(bytes.as_slice())
        .map_err(|e| Error::internal(format!("stored scorecard: {e}")))?;
    body.etag = row.try_get("etag")?;
    Ok(ScorecardRow {
        tenant: row.try_get("tenant")?,
        id: row.try_get("id")?,
        body,
    })
}

async fn scorecard_load<'e, E>(
    executor: E,
    tenant: &str,
    id: &str,
) -> Result<Option<ScorecardRow>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row =
        sqlx::query("SELECT tenant, id, body, etag FROM scorecards WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(executor)
            .await?;
    row.map(|r| scorecard_from_row(&r)).transpose()
}

/// The scorecard named `name` (`tenants/{tenant}/scorecards/{id}`, parsed for `field`), read
/// outside a transaction: what GetScorecard and the evaluations read.
pub(super) async fn scorecard_get_by_name(
    store: &Store,
    field: &str,
    name: &str,
) -> Result<(String, pb::Scorecard), Error> {
    let (tenant, id) = parse_child_name(field, name, "scorecards")?;
    let row = scorecard_load(store.pool(), &tenant, &id)
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "scorecard",
            name: name.to_owned(),
        })?;
    Ok((tenant, row.body))
}

/// Every scorecard of a tenant, by name: what EvaluateEntity without a list evaluates.
pub(super) async fn scorecards_all(
    store: &Store,
    tenant: &str,
) -> Result<Vec<pb::Scorecard>, Error> {
    let rows =
        sqlx::query("SELECT tenant, id, body, etag FROM scorecards WHERE tenant = $1 ORDER BY id")
            .bind(tenant)
            .fetch_all(store.pool())
            .await?;
    rows.iter()
        .map(|r| scorecard_from_row(r).map(|s| s.body))
        .collect()
}

/// Reads a scorecard to change it, holding its row lock until `tx` ends (PostgreSQL).
async fn scorecard_load_for_update(
    tx: &mut WriteTx,
    tenant: &str,
    name: &str,
    id: &str,
) -> Result<ScorecardRow, Error> {
    crate::store::row_lock(tx, "scorecards", tenant, id).await?;
    scorecard_load(&mut **tx, tenant, id)
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "scorecard",
            name: name.to_owned(),
        })
}

/// Inserts (`insert`) or rewrites a scorecard with a new etag and update time, and its labels.
async fn scorecard_write(
    tx: &mut WriteTx,
    row: &mut ScorecardRow,
    insert: bool,
) -> Result<(), Error> {
    let now = now_micros();
    row.body.update_time = Some(timestamp(now));
    row.body.etag = uuid::Uuid::new_v4().simple().to_string();
    let sql = if insert {
        "INSERT INTO scorecards (uid, display_name, create_time_us, update_time_us, etag, body, tenant, id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    } else {
        "UPDATE scorecards SET uid = $1, display_name = $2, create_time_us = $3, update_time_us = $4, \
         etag = $5, body = $6 WHERE tenant = $7 AND id = $8"
    };
    sqlx::query(sql)
        .bind(&row.body.uid)
        .bind(&row.body.display_name)
        .bind(micros(&row.body.create_time).unwrap_or(now))
        .bind(now)
        .bind(&row.body.etag)
        .bind(row.body.encode_to_vec())
        .bind(&row.tenant)
        .bind(&row.id)
        .execute(&mut **tx)
        .await?;
    crate::store::labels_replace(
        tx,
        "scorecard_labels",
        "scorecard",
        &row.tenant,
        &row.id,
        &row.body.labels,
    )
    .await
}

/// Validates a whole definition (after an update's merge) of a scorecard of `tenant`, pushing
/// one violation per problem; returns the environment ids its rules name, to be checked for
/// existence in the write transaction.
fn validate_definition(
    tenant: &str,
    sc: &pb::Scorecard,
    violations: &mut Vec<FieldViolation>,
) -> Vec<String> {
    names::validate_text("scorecard.display_name", &sc.display_name, 256, violations);
    names::validate_text("scorecard.description", &sc.description, 4096, violations);
    names::validate_labels("scorecard.labels", &sc.labels, violations);
    names::validate_annotations("scorecard.annotations", &sc.annotations, violations);
    if let Err(Error::InvalidArgument(v)) =
        crate::catalog::entity_filter_condition(&sc.entity_filter)
    {
        violations.extend(
            v.into_iter()
                .map(|v| FieldViolation::new("scorecard.entity_filter", v.description)),
        );
    }
    if sc.levels.is_empty() || sc.levels.len() > 10 {
        violations.push(FieldViolation::new(
            "scorecard.levels",
            "between 1 and 10 levels, lowest first",
        ));
    }
    let mut levels = HashSet::new();
    for (i, level) in sc.levels.iter().enumerate() {
        let field = format!("scorecard.levels[{i}]");
        if !names::is_dns_label(&level.id) {
            violations.push(FieldViolation::new(
                format!("{field}.id"),
                "must be a lowercase DNS label, e.g. `bronze`",
            ));
        } else if !levels.insert(level.id.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.id"),
                format!("duplicate level id `{}`", level.id),
            ));
        }
        names::validate_text(
            &format!("{field}.display_name"),
            &level.display_name,
            256,
            violations,
        );
        names::validate_text(
            &format!("{field}.description"),
            &level.description,
            1024,
            violations,
        );
    }
    if sc.rules.is_empty() || sc.rules.len() > 200 {
        violations.push(FieldViolation::new(
            "scorecard.rules",
            "between 1 and 200 rules",
        ));
    }
    let mut rules = HashSet::new();
    let mut environments = Vec::new();
    for (i, rule) in sc.rules.iter().enumerate() {
        let field = format!("scorecard.rules[{i}]");
        if !names::is_dns_label(&rule.id) {
            violations.push(FieldViolation::new(
                format!("{field}.id"),
                "must be a lowercase DNS label, e.g. `has-owner`",
            ));
        } else if !rules.insert(rule.id.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.id"),
                format!("duplicate rule id `{}`", rule.id),
            ));
        }
        if !levels.contains(rule.level.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.level"),
                format!(
                    "`{}` is not one of the scorecard's levels",
                    names::printable(&rule.level)
                ),
            ));
        }
        names::validate_text(
            &format!("{field}.display_name"),
            &rule.display_name,
            256,
            violations,
        );
        names::validate_text(
            &format!("{field}.description"),
            &rule.description,
            4096,
            violations,
        );
        match &rule.check {
            None => violations.push(FieldViolation::new(
                format!("{field}.check"),
                "required: one of the check kinds",
            )),
            Some(check) => {
                validate_check(tenant, &field, check, violations, &mut environments);
            }
        }
    }
    environments.sort();
    environments.dedup();
    environments
}

/// Validates one rule's check (operands, thresholds, windows).
fn validate_check(
    tenant: &str,
    field: &str,
    check: &Check,
    violations: &mut Vec<FieldViolation>,
    environments: &mut Vec<String>,
) {
    let mut bad = |path: &str, why: String| {
        violations.push(FieldViolation::new(format!("{field}.{path}"), why));
    };
    let required = |value: &str| value.trim().is_empty();
    match check {
        Check::HasOwner(_) | Check::ProvidesApi(_) => {}
        Check::HasLifecycle(c) => {
            if c.allowed_values.iter().any(|v| required(v)) {
                bad(
                    "has_lifecycle.allowed_values",
                    "must not hold empty values".into(),
                );
            }
        }
        Check::HasLink(c) => {
            if required(&c.r#type) {
                bad("has_link.type", "required, e.g. `runbook`".into());
            }
        }
        Check::HasAnnotation(c) => {
            if required(&c.key) {
                bad("has_annotation.key", "required".into());
            }
        }
        Check::HasLabel(c) => {
            if required(&c.key) {
                bad("has_label.key", "required".into());
            }
        }
        Check::HasTag(c) => {
            if required(&c.tag) {
                bad("has_tag.tag", "required".into());
            }
        }
        Check::HasDescription(c) => {
            if c.min_length < 0 {
                bad("has_description.min_length", "must not be negative".into());
            }
        }
        Check::HasRelation(c) => {
            if crate::catalog::model::relation_type_from_name(&c.relation_type).is_none() {
                bad(
                    "has_relation.relation_type",
                    format!(
                        "`{}` is not a relation type (ownedBy, ownerOf, partOf, hasPart, dependsOn, dependencyOf, providesApi, apiProvidedBy, consumesApi, apiConsumedBy, memberOf, hasMember, parentOf, childOf)",
                        names::printable(&c.relation_type)
                    ),
                );
            }
            if c.min_count < 0 {
                bad("has_relation.min_count", "must not be negative".into());
            }
        }
        Check::Field(c) => {
            if required(&c.field) {
                bad("field.field", "required, e.g. `spec.type`".into());
            }
            let operands = c.values.len();
            match pb::FieldOperator::try_from(c.operator) {
                Ok(pb::FieldOperator::Exists) if operands != 0 => {
                    bad("field.values", "EXISTS takes no values".into());
                }
                Ok(pb::FieldOperator::In | pb::FieldOperator::NotIn) if operands == 0 => {
                    bad(
                        "field.values",
                        "IN and NOT_IN need at least one value".into(),
                    );
                }
                Ok(pb::FieldOperator::Matches) => {
                    if operands != 1 {
                        bad(
                            "field.values",
                            "MATCHES takes exactly one regular expression".into(),
                        );
                    } else if let Err(why) = field_pattern(&c.values[0]) {
                        bad("field.values[0]", why);
                    }
                }
                Ok(pb::FieldOperator::Unspecified) | Err(_) => {
                    bad(
                        "field.operator",
                        "required: EXISTS, IN, NOT_IN or MATCHES".into(),
                    );
                }
                Ok(_) => {}
            }
        }
        Check::DeployedRecently(c) => match &c.within {
            None => bad(
                "deployed_recently.within",
                "required: the look-back window".into(),
            ),
            Some(w) => validate_window(
                tenant,
                "deployed_recently.within",
                w,
                &mut bad,
                environments,
            ),
        },
        Check::ChangeFailureRate(c) => {
            if !(0.0..=1.0).contains(&c.max_rate) {
                bad(
                    "change_failure_rate.max_rate",
                    "must be between 0 and 1".into(),
                );
            }
            if let Some(w) = &c.window {
                validate_window(
                    tenant,
                    "change_failure_rate.window",
                    w,
                    &mut bad,
                    environments,
                );
            }
        }
        Check::DeploymentFrequency(c) => {
            if !c.min_per_day.is_finite() || c.min_per_day <= 0.0 {
                bad(
                    "deployment_frequency.min_per_day",
                    "must be a positive number".into(),
                );
            }
            if let Some(w) = &c.window {
                validate_window(
                    tenant,
                    "deployment_frequency.window",
                    w,
                    &mut bad,
                    environments,
                );
            }
        }
        Check::LeadTime(c) => {
            if duration_micros(&c.max_median).is_none_or(|us| us <= 0) {
                bad(
                    "lead_time.max_median",
                    "required: a positive duration".into(),
                );
            }
            if let Some(w) = &c.window {
                validate_window(tenant, "lead_time.window", w, &mut bad, environments);
            }
        }
        Check::TimeToRestore(c) => {
            if duration_micros(&c.max_median).is_none_or(|us| us <= 0) {
                bad(
                    "time_to_restore.max_median",
                    "required: a positive duration".into(),
                );
            }
            if let Some(w) = &c.window {
                validate_window(tenant, "time_to_restore.window", w, &mut bad, environments);
            }
        }
        Check::DoraBand(c) => {
            match pb::DoraPerformanceBand::try_from(c.min_band) {
                Ok(pb::DoraPerformanceBand::Unspecified) | Err(_) => {
                    bad(
                        "dora_band.min_band",
                        "required: ELITE, HIGH, MEDIUM or LOW".into(),
                    );
                }
                Ok(_) => {}
            }
            if let Some(w) = &c.window {
                validate_window(tenant, "dora_band.window", w, &mut bad, environments);
            }
        }
    }
}

/// Validates a deployment window and collects the environment ids it names.
fn validate_window(
    tenant: &str,
    path: &str,
    window: &pb::DeploymentWindow,
    bad: &mut impl FnMut(&str, String),
    environments: &mut Vec<String>,
) {
    if window.window.is_some() {
        match duration_micros(&window.window) {
            Some(us) if (MIN_WINDOW_US..=MAX_WINDOW_US).contains(&us) => {}
            _ => bad(
                &format!("{path}.window"),
                "must be between 1 hour and 366 days".into(),
            ),
        }
    }
    if window.environments.len() > 100 {
        bad(
            &format!("{path}.environments"),
            "at most 100 environments".into(),
        );
    }
    for (i, name) in window.environments.iter().enumerate() {
        match parse_child_name("environments", name, "environments") {
            Ok((t, id)) if t == tenant => environments.push(id),
            _ => bad(
                &format!("{path}.environments[{i}]"),
                "must be an environment of the scorecard's tenant, `tenants/{tenant}/environments/{environment}`".into(),
            ),
        }
    }
}

/// A protobuf Duration in microseconds (saturating); `None` when absent or malformed.
pub(super) fn duration_micros(d: &Option<prost_types::Duration>) -> Option<i64> {
    let d = d.as_ref()?;
    if d.nanos.abs() >= 1_000_000_000
        || (d.seconds > 0 && d.nanos < 0)
        || (d.seconds < 0 && d.nanos > 0)
    {
        return None;
    }
    Some(
        d.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(d.nanos / 1000)),
    )
}

/// A FieldCheck's pattern, compiled as a whole-value match with bounded size.
pub(super) fn field_pattern(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!("at most {MAX_PATTERN_LEN} bytes"));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_PATTERN_SIZE)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "the regular expression is too large".to_owned(),
            _ => "not a valid regular expression (RE2 syntax)".to_owned(),
        })
}

/// INVALID_ARGUMENT naming the rule operands whose environments do not exist.
async fn environments_require(tx: &mut WriteTx, tenant: &str, ids: &[String]) -> Result<(), Error> {
    let mut violations = Vec::new();
    for id in ids {
        let state: Option<i64> =
            sqlx::query_scalar("SELECT state FROM environments WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
        if state.is_none() {
            violations.push(FieldViolation::new(
                "scorecard.rules",
                format!("environment `tenants/{tenant}/environments/{id}` does not exist"),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// Defaults filled in as the contract says: display names default to ids.
fn fill_defaults(id: &str, sc: &mut pb::Scorecard) {
    if sc.display_name.is_empty() {
        sc.display_name = id.to_owned();
    }
}

/// Creates a scorecard.
#[instrument(skip_all)]
pub async fn scorecard_create(
    store: &Store,
    audit: &AuditLog,
    ctx: &CallContext,
    req: pb::CreateScorecardRequest,
) -> Result<pb::Scorecard, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    names::validate_id("scorecard_id", &req.scorecard_id)?;
    idempotency::validate(&req.request_id)?;
    let given = req
        .scorecard
        .ok_or_else(|| Error::invalid_argument("scorecard", "required"))?;
    let now = now_micros();
    let name = scorecard_name(&tenant, &req.scorecard_id);
    let mut body = pb::Scorecard {
        name: name.clone(),
        uid: uuid::Uuid::new_v4().to_string(),
        display_name: given.display_name,
        description: given.description,
        entity_filter: given.entity_filter,
        levels: given.levels,
        rules: given.rules,
        labels: given.labels,
        annotations: given.annotations,
        creator: ctx.principal.clone(),
        create_time: Some(timestamp(now)),
        update_time: Some(timestamp(now)),
        etag: String::new(),
    };
    fill_defaults(&req.scorecard_id, &mut body);
    let mut violations = Vec::new();
    let environments = validate_definition(&tenant, &body, &mut violations);
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    let mut tx = store.write_tx().await?;
    if let Some(previous) =
        idempotency::lookup::<pb::Scorecard>(&mut tx, ctx, &req.request_id).await?
    {
        return Ok(previous);
    }
    let result = async {
        crate::iam::tenant_require(&mut tx, &tenant).await?;
        environments_require(&mut tx, &tenant, &environments).await?;
        if scorecard_load(&mut *tx, &tenant, &req.scorecard_id)
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists {
                resource_type: "scorecard",
                name: name.clone(),
            });
        }
        let mut row = ScorecardRow {
            tenant: tenant.clone(),
            id: req.scorecard_id.clone(),
            body,
        };
        if req.validate_only {
            return Ok(row.body);
        }
        scorecard_write(&mut tx, &mut row, true).await?;
        idempotency::remember(&mut tx, ctx, &req.request_id, &row.body).await?;
        Ok(row.body)
    }
    .await;
    if req.validate_only {
        return result;
    }
    audit.finish(ctx, tx, result, &["scorecard"]).await
}

/// Returns a scorecard.
pub async fn scorecard_get(store: &Store, name: &str) -> Result<pb::Scorecard, Error> {
    scorecard_get_by_name(store, "name", name)
        .await
        .map(|(_, body)| body)
}

/// Lists a tenant's scorecards.
#[instrument(skip_all)]
pub async fn scorecards_list(
    store: &Store,
    req: &pb::ListScorecardsRequest,
) -> Result<pb::ListScorecardsResponse, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    let page_size = pagination::page_size(req.page_size)?;
    let order = pagination::parse_order_by(
        &req.order_by,
        &[
            ("name", "s.id", false),
            ("display_name", "s.display_name", false),
            ("create_time", "s.create_time_us", true),
            ("update_time", "s.update_time_us", true),
        ],
        "name, display_name, create_time, update_time",
        &["s.id"],
    )?;
    let mut params: Vec<Param> = Vec::new();
    let mut where_sql = String::from(" WHERE s.tenant = $1");
    for term in filter::parse(&req.filter)? {
        where_sql.push_str(" AND ");
        where_sql.push_str(&scorecard_term_sql(&term, &tenant, &mut params)?);
    }
    let fingerprint =
        pagination::query_fingerprint(&[&tenant, &req.filter, &req.order_by, "scorecards"]);
    let after = pagination::decode_token(fingerprint, &req.page_token)?;
    let total: i64 = bind_params(
        sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM scorecards s{where_sql}"
        ))
        .bind(&tenant),
        &params,
    )
    .fetch_one(store.pool())
    .await?
    .try_get("n")?;
    let keyset = pagination::Keyset::new(&order, after.as_deref())?;
    let sql = format!(
        "SELECT s.tenant, s.id, s.body, s.etag, {} FROM scorecards s{where_sql}{}{}",
        keyset.select_columns(),
        keyset.after_sql(params.len() + 2)?,
        keyset.order_sql(page_size + 1),
    );
    let rows = keyset
        .bind(bind_params(sqlx::query(&sql).bind(&tenant), &params))?
        .fetch_all(store.pool())
        .await?;
    let (scorecards, next_page_token) = keyset.page(fingerprint, &rows, page_size, |row| {
        scorecard_from_row(row).map(|s| s.body)
    })?;
    Ok(pb::ListScorecardsResponse {
        scorecards,
        next_page_token,
        total_size: i32::try_from(total).unwrap_or(i32::MAX),
    })
}

/// SQL for one ListScorecards filter term (`name`, `display_name`, `labels.<key>`).
fn scorecard_term_sql(
    term: &filter::Term,
    tenant: &str,
    params: &mut Vec<Param>,
) -> Result<String, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let field = term.field.as_str();
    if let Some(key) = field.strip_prefix("labels.") {
        return filter::label_term_sql(term, key, "scorecard_labels", "scorecard", "s", params);
    }
    let negate = match term.op {
        Op::Eq => false,
        Op::Ne => true,
        _ => {
            return Err(bad(format!(
                "`{}` supports = and !=",
                names::printable(field)
            )));
        }
    };
    let (column, value) = match field {
        "name" => {
            let prefix = format!("tenants/{tenant}/scorecards/");
            match term.value.strip_prefix(&prefix) {
                Some(id) => ("s.id", id.to_owned()),
                // Another tenant's name never matches.
                None => return Ok(if negate { "1 = 1" } else { "1 = 0" }.into()),
            }
        }
        "display_name" => ("s.display_name", term.value.clone()),
        other => {
            return Err(bad(format!(
                "cannot filter on `{}` (fields: name, display_name, labels.<key>)",
                names::printable(other)
            )));
        }
    };
    let sql = match value.strip_suffix('*') {
        Some(stem) => {
            params.push(Param::Text(stem.to_owned()));
            let p = params.len() + 1;
            params.push(Param::Int(stem.chars().count() as i64));
            let n = params.len() + 1;
            format!("SUBSTR({column}, 1, CAST(${n} AS INTEGER)) = ${p}")
        }
        None => {
            params.push(Param::Text(value));
            format!("{column} = ${}", params.len() + 1)
        }
    };
    Ok(if negate { format!("(NOT {sql})") } else { sql })
}

/// Which fields an UpdateScorecard replaces.
#[derive(Debug, Default)]
struct UpdateFields {
    display_name: bool,
    description: bool,
    entity_filter: bool,
    levels: bool,
    rules: bool,
    labels: bool,
    annotations: bool,
}

impl UpdateFields {
    fn all() -> Self {
        UpdateFields {
            display_name: true,
            description: true,
            entity_filter: true,
            levels: true,
            rules: true,
            labels: true,
            annotations: true,
        }
    }

    /// The mask's fields; an empty mask means every field set in `given` (AIP-134).
    fn of(mask: Option<&prost_types::FieldMask>, given: &pb::Scorecard) -> Result<Self, Error> {
        let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
        if paths.is_empty() {
            return Ok(UpdateFields {
                display_name: !given.display_name.is_empty(),
                description: !given.description.is_empty(),
                entity_filter: !given.entity_filter.is_empty(),
                levels: !given.levels.is_empty(),
                rules: !given.rules.is_empty(),
                labels: !given.labels.is_empty(),
                annotations: !given.annotations.is_empty(),
            });
        }
        let mut f = UpdateFields::default();
        for path in paths {
            match path.as_str() {
                "*" => f = UpdateFields::all(),
                "display_name" => f.display_name = true,
                "description" => f.description = true,
                "entity_filter" => f.entity_filter = true,
                "levels" => f.levels = true,
                "rules" => f.rules = true,
                "labels" => f.labels = true,
                "annotations" => f.annotations = true,
                p => {
                    return Err(Error::invalid_argument(
                        "update_mask",
                        format!(
                            "`{}` is not a mutable field (display_name, description, entity_filter, levels, rules, labels, annotations)",
                            names::printable(p)
                        ),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn names(&self) -> Vec<&'static str> {
        [
            (self.display_name, "display_name"),
            (self.description, "description"),
            (self.entity_filter, "entity_filter"),
            (self.levels, "levels"),
            (self.rules, "rules"),
            (self.labels, "labels"),
            (self.annotations, "annotations"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// Updates a scorecard's definition.
#[instrument(skip_all)]
pub async fn scorecard_update(
    store: &Store,
    audit: &AuditLog,
    ctx: &CallContext,
    req: pb::UpdateScorecardRequest,
) -> Result<pb::Scorecard, Error> {
    let given = req
        .scorecard
        .ok_or_else(|| Error::invalid_argument("scorecard", "required"))?;
    let (tenant, id) = parse_child_name("scorecard.name", &given.name, "scorecards")?;
    idempotency::validate(&req.request_id)?;
    let fields = UpdateFields::of(req.update_mask.as_ref(), &given)?;
    let mut tx = store.write_tx().await?;
    if let Some(previous) =
        idempotency::lookup::<pb::Scorecard>(&mut tx, ctx, &req.request_id).await?
    {
        return Ok(previous);
    }
    let result = async {
        let mut row = scorecard_load_for_update(&mut tx, &tenant, &given.name, &id).await?;
        if !given.etag.is_empty() && given.etag != row.body.etag {
            return Err(Error::Aborted {
                message: "etag mismatch: the scorecard changed since it was read".into(),
            });
        }
        let body = &mut row.body;
        if fields.display_name {
            body.display_name = given.display_name.clone();
        }
        if fields.description {
            body.description = given.description.clone();
        }
        if fields.entity_filter {
            body.entity_filter = given.entity_filter.clone();
        }
        if fields.levels {
            body.levels = given.levels.clone();
        }
        if fields.rules {
            body.rules = given.rules.clone();
        }
        if fields.labels {
            body.labels = given.labels.clone();
        }
        if fields.annotations {
            body.annotations = given.annotations.clone();
        }
        fill_defaults(&id, body);
        let mut violations = Vec::new();
        let environments = validate_definition(&tenant, body, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        environments_require(&mut tx, &tenant, &environments).await?;
        if req.validate_only {
            return Ok(row.body);
        }
        scorecard_write(&mut tx, &mut row, false).await?;
        idempotency::remember(&mut tx, ctx, &req.request_id, &row.body).await?;
        Ok(row.body)
    }
    .await;
    if req.validate_only {
        return result;
    }
    audit.finish(ctx, tx, result, &fields.names()).await
}

/// Deletes a scorecard.
#[instrument(skip_all)]
pub async fn scorecard_delete(
    store: &Store,
    audit: &AuditLog,
    ctx: &CallContext,
    req: pb::DeleteScorecardRequest,
) -> Result<(), Error> {
    let (tenant, id) = parse_child_name("name", &req.name, "scorecards")?;
    idempotency::validate(&req.request_id)?;
    let mut tx = store.write_tx().await?;
    if idempotency::lookup::<()>(&mut tx, ctx, &req.request_id)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let result = async {
        let row = match scorecard_load_for_update(&mut tx, &tenant, &req.name, &id).await {
            Ok(row) => row,
            Err(Error::NotFound { .. }) if req.allow_missing => return Ok(false),
            Err(e) => return Err(e),
        };
        if !req.etag.is_empty() && req.etag != row.body.etag {
            return Err(Error::Aborted {
                message: "etag mismatch: the scorecard changed since it was read".into(),
            });
        }
        if req.validate_only {
            return Ok(true);
        }
        for sql in [
            "DELETE FROM scorecard_labels WHERE tenant = $1 AND scorecard = $2",
            "DELETE FROM scorecards WHERE tenant = $1 AND id = $2",
        ] {
            sqlx::query(sql)
                .bind(&tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        idempotency::remember(&mut tx, ctx, &req.request_id, &()).await?;
        Ok(true)
    }
    .await;
    match result {
        // Nothing to delete (allow_missing) or nothing to write (validate_only): no change to audit.
        Ok(false) => Ok(()),
        _ if req.validate_only => result.map(|_| ()),
        _ => audit
            .finish(ctx, tx, result, &["scorecard"])
            .await
            .map(|_| ()),
    }
}
