//! DORA metrics, computed in the database: counts with one grouped query, medians and 90th
//! percentiles with window functions that return only the ranked rows, so the cost grows with
//! the number of buckets, not with the number of deployments sent back. Definitions (which
//! deployments count, nearest-rank percentiles, the bands) are the contract's, in
//! `proto/platform/insights/v1/resources.proto`.
//!
//! A period (the whole window, or one bucket) is `[origin + b·len, origin + (b+1)·len)` clipped to
//! the window; every query groups by `b = (end_time_us - origin) / len`. Deployments belong to a
//! period by their `end_time_us`; restores are looked for up to the window's end.

use std::collections::BTreeMap;

use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::insights::v1 as pb;
use sqlx::Row;

use crate::audit::{micros, timestamp};
use crate::catalog::{EntityKey, parse_name_or_ref};
use crate::error::Error;
use crate::filter::{Param, bind_params};
use crate::names::{parse_child_name, parse_tenant_name};
use crate::store::{Store, now_micros};

pub(super) const DAY_US: i64 = 86_400_000_000;
pub(super) const HOUR_US: i64 = 3_600_000_000;
const SUCCEEDED: i64 = dpb::DeploymentState::Succeeded as i64;
const FAILED: i64 = dpb::DeploymentState::Failed as i64;
const CANCELLED: i64 = dpb::DeploymentState::Cancelled as i64;

/// SQL text with its bound parameters, numbered as they are added.
struct Sql {
    params: Vec<Param>,
}

impl Sql {
    fn new() -> Self {
        Sql { params: Vec::new() }
    }
    fn p(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }
    fn int(&mut self, value: i64) -> String {
        self.p(Param::Int(value))
    }
    fn text(&mut self, value: &str) -> String {
        self.p(Param::Text(value.to_owned()))
    }
}

/// Which deployments count: the tenant, the scope's components, the environments.
struct Selection {
    tenant: String,
    /// `None`: every component (tenant scope).
    components: Option<Vec<String>>,
    environments: Vec<String>,
}

impl Selection {
    /// The WHERE conditions on `d` (without the time range and state).
    fn conditions(&self, sql: &mut Sql) -> String {
        let mut out = format!("d.tenant = {}", sql.text(&self.tenant));
        let list = |sql: &mut Sql, values: &[String]| -> String {
            values
                .iter()
                .map(|v| sql.text(v))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.components {
            Some(c) if c.is_empty() => out.push_str(" AND 1 = 0"),
            Some(c) => out.push_str(&format!(" AND d.component IN ({})", list(sql, c))),
            None => {}
        }
        if self.environments.is_empty() {
            out.push_str(" AND 1 = 0");
        } else {
            out.push_str(&format!(
                " AND d.environment IN ({})",
                list(sql, &self.environments)
            ));
        }
        out
    }
}

/// The periods figures are computed for.
#[derive(Debug, Clone, Copy)]
struct Periods {
    start: i64,
    end: i64,
    origin: i64,
    len: i64,
}

impl Periods {
    fn count(&self) -> i64 {
        (self.end - self.origin + self.len - 1) / self.len
    }
    /// Bucket `b`, clipped to the window.
    fn bounds(&self, b: i64) -> (i64, i64) {
        let s = (self.origin + b * self.len).max(self.start);
        let e = (self.origin + (b + 1) * self.len).min(self.end);
        (s, e)
    }
}

/// What the queries return for one period.
#[derive(Debug, Default, Clone)]
struct Raw {
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    rolled_back: i64,
    rollbacks: i64,
    without_commit: i64,
    commit_after: i64,
    lead: Percentiles,
    restore: Percentiles,
    unrestored: i64,
}

#[derive(Debug, Default, Clone)]
struct Percentiles {
    n: i64,
    median: Option<i64>,
    p90: Option<i64>,
}

fn duration(us: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Computes GetDoraMetrics.
pub async fn dora_metrics_get(
    store: &Store,
    req: &pb::GetDoraMetricsRequest,
) -> Result<pb::DoraMetrics, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    let now = now_micros();
    let end = micros(&req.end_time).unwrap_or(now);
    let start = micros(&req.start_time).unwrap_or(end - 30 * DAY_US);
    if start >= end {
        return Err(Error::invalid_argument(
            "start_time",
            "the window is empty or inverted: start_time must be before end_time",
        ));
    }
    if end - start > 366 * DAY_US {
        return Err(Error::invalid_argument(
            "end_time",
            "the window is longer than 366 days",
        ));
    }
    let granularity = pb::DoraGranularity::try_from(req.granularity)
        .map_err(|_| Error::invalid_argument("granularity", "unknown granularity"))?;
    if req.environments.len() > 100 {
        return Err(Error::invalid_argument(
            "environments",
            "at most 100 environments",
        ));
    }
    crate::iam::tenant_active(store.pool(), &tenant).await?;
    let (scope_type, scope_ref, components) = scope(store, &tenant, req).await?;
    let environments = environments(store, &tenant, &req.environments).await?;
    let selection = Selection {
        tenant: tenant.clone(),
        components: components.clone(),
        environments: environments.clone(),
    };
    let whole = Periods {
        start,
        end,
        origin: start,
        len: end - start,
    };
    let summary = figures_of(
        &raw_figures::<i64>(store, &selection, whole, GroupBy::Bucket)
            .await?
            .remove(&0)
            .unwrap_or_default(),
        whole.bounds(0),
    );
    let buckets = match granularity {
        pb::DoraGranularity::Unspecified => Vec::new(),
        pb::DoraGranularity::Day | pb::DoraGranularity::Week => {
            let day = start.div_euclid(DAY_US);
            let (origin, len) = if granularity == pb::DoraGranularity::Day {
                (day * DAY_US, DAY_US)
            } else {
                // 1970-01-01 was a Thursday: Monday is 3 days before.
                let monday = day - (day + 3).rem_euclid(7);
                (monday * DAY_US, 7 * DAY_US)
            };
            let periods = Periods {
                start,
                end,
                origin,
                len,
            };
            let mut raw = raw_figures::<i64>(store, &selection, periods, GroupBy::Bucket).await?;
            (0..periods.count())
                .map(|b| {
                    let bounds = periods.bounds(b);
                    pb::DoraBucket {
                        start_time: Some(timestamp(bounds.0)),
                        end_time: Some(timestamp(bounds.1)),
                        figures: Some(figures_of(&raw.remove(&b).unwrap_or_default(), bounds)),
                    }
                })
                .collect()
        }
    };
    let mut environment_names: Vec<String> = environments
        .iter()
        .map(|e| format!("tenants/{tenant}/environments/{e}"))
        .collect();
    environment_names.sort();
    Ok(pb::DoraMetrics {
        tenant: format!("tenants/{tenant}"),
        scope_type: scope_type as i32,
        scope_ref,
        component_count: match (scope_type, &components) {
            (pb::DoraScopeType::Tenant, _) | (_, None) => 0,
            (_, Some(c)) => i32::try_from(c.len()).unwrap_or(i32::MAX),
        },
        environments: environment_names,
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
        summary: Some(summary),
        granularity: granularity as i32,
        buckets,
        compute_time: Some(timestamp(now)),
    })
}

/// DORA figures per Component over `[start, end)` for deployments to `environments` (ids): of
/// the given Components, or of every Component with `None`. The data of the scorecards'
/// deployment checks, computed by the same queries as GetDoraMetrics, grouped by Component.
pub(super) async fn component_figures(
    store: &Store,
    tenant: &str,
    components: Option<Vec<String>>,
    environments: Vec<String>,
    (start, end): (i64, i64),
) -> Result<BTreeMap<String, pb::DoraFigures>, Error> {
    let selection = Selection {
        tenant: tenant.to_owned(),
        components,
        environments,
    };
    let whole = Periods {
        start,
        end,
        origin: start,
        len: end - start,
    };
    let raw: BTreeMap<String, Raw> =
        raw_figures(store, &selection, whole, GroupBy::Component).await?;
    Ok(raw
        .into_iter()
        .map(|(component, r)| (component, figures_of(&r, (start, end))))
        .collect())
}

/// The scope's type, canonical reference and component references (`None` for the tenant).
async fn scope(
    store: &Store,
    tenant: &str,
    req: &pb::GetDoraMetricsRequest,
) -> Result<(pb::DoraScopeType, String, Option<Vec<String>>), Error> {
    if req.scope.is_empty() {
        return Ok((pb::DoraScopeType::Tenant, String::new(), None));
    }
    let key: EntityKey = parse_name_or_ref("scope", tenant, &req.scope, Some("component"))?;
    let reference = key.ref_key();
    super::entity_require(store, tenant, &reference, &req.scope).await?;
    let components_where = |column: &str, values: &[String]| {
        let mut sql = Sql::new();
        let t = sql.text(tenant);
        let list = values
            .iter()
            .map(|v| sql.text(v))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!(
                "SELECT ref FROM catalog_entities WHERE tenant = {t} AND kind = 'component' AND {column} IN ({list}) ORDER BY ref"
            ),
            sql.params,
        )
    };
    match key.kind.as_str() {
        "component" => Ok((
            pb::DoraScopeType::Component,
            reference.clone(),
            Some(vec![reference]),
        )),
        "system" => {
            let (sql, params) = components_where("system_ref", std::slice::from_ref(&reference));
            let refs: Vec<String> = bind_params(sqlx::query(&sql), &params)
                .fetch_all(store.pool())
                .await?
                .iter()
                .map(|r| r.try_get("ref"))
                .collect::<Result<_, _>>()?;
            Ok((pb::DoraScopeType::System, reference, Some(refs)))
        }
        "group" => {
            let groups =
                super::groups_under(store, tenant, reference.clone(), req.include_child_groups)
                    .await?;
            let (sql, params) = components_where("owner_ref", &groups);
            let refs: Vec<String> = bind_params(sqlx::query(&sql), &params)
                .fetch_all(store.pool())
                .await?
                .iter()
                .map(|r| r.try_get("ref"))
                .collect::<Result<_, _>>()?;
            Ok((pb::DoraScopeType::Group, reference, Some(refs)))
        }
        _ => Err(Error::invalid_argument(
            "scope",
            "must be a Component, System or Group",
        )),
    }
}

/// The environment ids whose deployments count: the named ones (each must exist), or every
/// PRODUCTION environment of the tenant, deleted ones included.
pub(super) async fn environments(
    store: &Store,
    tenant: &str,
    named: &[String],
) -> Result<Vec<String>, Error> {
    if named.is_empty() {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM environments WHERE tenant = $1 AND type = $2 ORDER BY id",
        )
        .bind(tenant)
        .bind(epb::EnvironmentType::Production as i64)
        .fetch_all(store.pool())
        .await?;
        return Ok(ids);
    }
    let mut ids = Vec::new();
    for (i, name) in named.iter().enumerate() {
        let field = format!("environments[{i}]");
        let (t, id) = parse_child_name(&field, name, "environments")?;
        if t != tenant {
            return Err(Error::invalid_argument(
                field,
                "must be an environment of the tenant in `parent`",
            ));
        }
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM environments WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(&id)
                .fetch_optional(store.pool())
                .await?;
        if exists.is_none() {
            return Err(Error::NotFound {
                resource_type: "environment",
                name: name.clone(),
            });
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// How figures are grouped: by bucket of `periods` (an integer key) or by Component over the
/// whole window (the reference as key, for the scorecards' deployment checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    Bucket,
    Component,
}

impl GroupBy {
    /// The key expression over `d`, binding what it needs (PostgreSQL rejects unused parameters).
    fn key(self, sql: &mut Sql, periods: Periods) -> String {
        match self {
            GroupBy::Bucket => {
                let (origin, len) = (sql.int(periods.origin), sql.int(periods.len));
                format!("(d.end_time_us - {origin}) / {len}")
            }
            GroupBy::Component => "d.component".to_owned(),
        }
    }
}

/// Runs the queries for `periods` and gathers their results by key: the bucket number (`i64`)
/// or the Component (`String`), as `group` says.
async fn raw_figures<K>(
    store: &Store,
    selection: &Selection,
    periods: Periods,
    group: GroupBy,
) -> Result<BTreeMap<K, Raw>, Error>
where
    K: Ord + for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    let mut raw: BTreeMap<K, Raw> = BTreeMap::new();

    // Counts by outcome, rollbacks, and what lead time leaves out.
    let mut sql = Sql::new();
    let cond = selection.conditions(&mut sql);
    let key = group.key(&mut sql, periods);
    let (s, e) = (sql.int(periods.start), sql.int(periods.end));
    let (ok, failed, cancelled) = (sql.int(SUCCEEDED), sql.int(FAILED), sql.int(CANCELLED));

    let count = |when: &str| format!("CAST(SUM(CASE WHEN {when} THEN 1 ELSE 0 END) AS BIGINT)");
    let text = format!(
        "SELECT {key} AS b, {} AS succeeded, {} AS failed, {} AS cancelled, \
         {} AS rollbacks, {} AS without_commit, {} AS commit_after \
         FROM deployments d WHERE {cond} AND d.end_time_us >= {s} AND d.end_time_us < {e} \
         AND d.state IN ({ok}, {failed}, {cancelled}) GROUP BY {key}",
        count(&format!("d.state = {ok}")),
        count(&format!("d.state = {failed}")),
        count(&format!("d.state = {cancelled}")),
        count(&format!("d.state = {ok} AND d.rollback_of <> ''")),
        count(&format!(
            "d.state = {ok} AND d.rollback_of = '' AND d.commit_time_us IS NULL"
        )),
        count(&format!(
            "d.state = {ok} AND d.rollback_of = '' AND d.commit_time_us > d.end_time_us"
        )),
    );
    for row in bind_params(sqlx::query(&text), &sql.params)
        .fetch_all(store.pool())
        .await?
    {
        let r = raw.entry(row.try_get("b")?).or_default();
        r.succeeded = row.try_get("succeeded")?;
        r.failed = row.try_get("failed")?;
        r.cancelled = row.try_get("cancelled")?;
        r.rollbacks = row.try_get("rollbacks")?;
        r.without_commit = row.try_get("without_commit")?;
        r.commit_after = row.try_get("commit_after")?;
    }

    // Rolled back: walked from the rollbacks created before the window's end (few) to the
    // deployments they name, by primary key, rather than probing every deployment.
    let mut sql = Sql::new();
    let cond = selection.conditions(&mut sql);
    let prefix = format!("tenants/{}/deployments/", selection.tenant);
    let key = group.key(&mut sql, periods);
    let (s, e, ok, tenant, from) = (
        sql.int(periods.start),
        sql.int(periods.end),
        sql.int(SUCCEEDED),
        sql.text(&selection.tenant),
        sql.int(prefix.len() as i64 + 1),
    );
    let text = format!(
        "SELECT {key} AS b, COUNT(DISTINCT d.id) AS n \
         FROM deployments r JOIN deployments d ON d.tenant = r.tenant AND d.id = SUBSTR(r.rollback_of, CAST({from} AS INTEGER)) \
         WHERE r.tenant = {tenant} AND r.rollback_of > '' AND r.create_time_us < {e} \
         AND {cond} AND d.state = {ok} AND d.end_time_us >= {s} AND d.end_time_us < {e} \
         GROUP BY {key}"
    );
    for row in bind_params(sqlx::query(&text), &sql.params)
        .fetch_all(store.pool())
        .await?
    {
        raw.entry(row.try_get("b")?).or_default().rolled_back = row.try_get("n")?;
    }

    // Lead time: end - commit of successful non-rollback deployments with a usable commit time.
    let mut sql = Sql::new();
    let cond = selection.conditions(&mut sql);
    let key = group.key(&mut sql, periods);
    let (s, e, ok) = (
        sql.int(periods.start),
        sql.int(periods.end),
        sql.int(SUCCEEDED),
    );
    let samples = format!(
        "SELECT {key} AS b, d.end_time_us - d.commit_time_us AS v FROM deployments d \
         WHERE {cond} AND d.end_time_us >= {s} AND d.end_time_us < {e} AND d.state = {ok} \
         AND d.rollback_of = '' AND d.commit_time_us IS NOT NULL AND d.commit_time_us <= d.end_time_us"
    );
    for (b, p) in percentiles(store, &samples, &sql.params).await? {
        raw.entry(b).or_default().lead = p;
    }

    // Time to restore: from each failure to the first later success of the same component and
    // environment before the window's end.
    let mut sql = Sql::new();
    let cond = selection.conditions(&mut sql);
    let key = group.key(&mut sql, periods);
    let (s, e, ok, failed) = (
        sql.int(periods.start),
        sql.int(periods.end),
        sql.int(SUCCEEDED),
        sql.int(FAILED),
    );
    let restores = format!(
        "SELECT {key} AS b, \
           (SELECT MIN(x.end_time_us) FROM deployments x WHERE x.tenant = d.tenant AND x.environment = d.environment \
            AND x.component = d.component AND x.state = {ok} AND x.end_time_us > d.end_time_us AND x.end_time_us < {e}) \
           - d.end_time_us AS v \
         FROM deployments d WHERE {cond} AND d.end_time_us >= {s} AND d.end_time_us < {e} AND d.state = {failed}"
    );
    let unrestored = format!(
        "SELECT f.b AS b, COUNT(*) AS n FROM ({restores}) f WHERE f.v IS NULL GROUP BY f.b"
    );
    for row in bind_params(sqlx::query(&unrestored), &sql.params)
        .fetch_all(store.pool())
        .await?
    {
        raw.entry(row.try_get("b")?).or_default().unrestored = row.try_get("n")?;
    }
    let restored = format!("SELECT f.b AS b, f.v AS v FROM ({restores}) f WHERE f.v IS NOT NULL");
    for (b, p) in percentiles(store, &restored, &sql.params).await? {
        raw.entry(b).or_default().restore = p;
    }
    Ok(raw)
}

/// Nearest-rank median (rank ⌈n/2⌉) and 90th percentile (rank ⌈0.9·n⌉) of `v` per bucket `b`
/// of `samples`, ranked by the database, which returns only the rows at those ranks.
async fn percentiles<K>(
    store: &Store,
    samples: &str,
    params: &[Param],
) -> Result<BTreeMap<K, Percentiles>, Error>
where
    K: Ord + for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    let sql = format!(
        "SELECT r.b AS b, r.v AS v, r.rn AS rn, r.n AS n FROM ( \
           SELECT s.b AS b, s.v AS v, ROW_NUMBER() OVER (PARTITION BY s.b ORDER BY s.v) AS rn, \
                  COUNT(*) OVER (PARTITION BY s.b) AS n \
           FROM ({samples}) s) r \
         WHERE r.rn = (r.n + 1) / 2 OR r.rn = (9 * r.n + 9) / 10"
    );
    let mut out: BTreeMap<K, Percentiles> = BTreeMap::new();
    for row in bind_params(sqlx::query(&sql), params)
        .fetch_all(store.pool())
        .await?
    {
        let (b, v, rn, n): (K, i64, i64, i64) = (
            row.try_get("b")?,
            row.try_get("v")?,
            row.try_get("rn")?,
            row.try_get("n")?,
        );
        let p = out.entry(b).or_default();
        p.n = n;
        if rn == (n + 1) / 2 {
            p.median = Some(v);
        }
        if rn == (9 * n + 9) / 10 {
            p.p90 = Some(v);
        }
    }
    Ok(out)
}

fn band_of(thresholds: [bool; 3]) -> pb::DoraPerformanceBand {
    match thresholds {
        [true, _, _] => pb::DoraPerformanceBand::Elite,
        [_, true, _] => pb::DoraPerformanceBand::High,
        [_, _, true] => pb::DoraPerformanceBand::Medium,
        _ => pb::DoraPerformanceBand::Low,
    }
}

/// The contract's figures from the raw counts of one period `[start, end)`.
fn figures_of(raw: &Raw, (start, end): (i64, i64)) -> pb::DoraFigures {
    use pb::DoraPerformanceBand as Band;
    let days = (end - start) as f64 / DAY_US as f64;
    let per_day = if days > 0.0 {
        raw.succeeded as f64 / days
    } else {
        0.0
    };
    let frequency = pb::DeploymentFrequency {
        deployments_per_day: per_day,
        successful_deployments: raw.succeeded,
        days,
        band: if raw.succeeded + raw.failed == 0 {
            Band::Unspecified
        } else {
            band_of([per_day >= 1.0, per_day >= 1.0 / 7.0, per_day >= 1.0 / 30.0])
        } as i32,
    };
    let lead_band = raw.lead.median.map_or(Band::Unspecified, |m| {
        band_of([m < DAY_US, m < 7 * DAY_US, m < 30 * DAY_US])
    });
    let lead = pb::LeadTimeForChanges {
        median: raw.lead.median.map(duration),
        p90: raw.lead.p90.map(duration),
        sample_count: raw.lead.n,
        excluded_without_commit_time: raw.without_commit,
        excluded_commit_after_deploy: raw.commit_after,
        excluded_rollbacks: raw.rollbacks,
        band: lead_band as i32,
    };
    let finished = raw.succeeded + raw.failed;
    let rate = (finished > 0).then(|| (raw.failed + raw.rolled_back) as f64 / finished as f64);
    let cfr = pb::ChangeFailureRate {
        rate,
        finished_deployments: finished,
        failed_deployments: raw.failed,
        rolled_back_deployments: raw.rolled_back,
        excluded_cancelled: raw.cancelled,
        band: rate.map_or(Band::Unspecified, |r| {
            band_of([r <= 0.05, r <= 0.10, r <= 0.15])
        }) as i32,
    };
    let restore_band = raw.restore.median.map_or(Band::Unspecified, |m| {
        band_of([m < HOUR_US, m < DAY_US, m < 7 * DAY_US])
    });
    let restore = pb::TimeToRestore {
        median: raw.restore.median.map(duration),
        p90: raw.restore.p90.map(duration),
        sample_count: raw.restore.n,
        unrestored_failures: raw.unrestored,
        band: restore_band as i32,
    };
    // The worst band that exists: bands are numbered best (1) to worst (4), 0 = none.
    let overall = [frequency.band, lead.band, cfr.band, restore.band]
        .into_iter()
        .filter(|b| *b != Band::Unspecified as i32)
        .max()
        .unwrap_or(Band::Unspecified as i32);
    pb::DoraFigures {
        deployment_frequency: Some(frequency),
        lead_time_for_changes: Some(lead),
        change_failure_rate: Some(cfr),
        time_to_restore: Some(restore),
        band: overall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_the_contract_thresholds() {
        use pb::DoraPerformanceBand as Band;
        let period = (0, 30 * DAY_US);
        // 30 successes in 30 days: 1 per day, elite; no failures: rate 0, elite.
        let raw = Raw {
            succeeded: 30,
            ..Default::default()
        };
        let f = figures_of(&raw, period);
        let freq = f.deployment_frequency.expect("frequency");
        assert_eq!(freq.deployments_per_day, 1.0);
        assert_eq!(freq.band, Band::Elite as i32);
        assert_eq!(f.change_failure_rate.expect("cfr").band, Band::Elite as i32);
        assert_eq!(f.band, Band::Elite as i32, "lead and restore have no band");
        // Only failures: frequency 0 and LOW; the rate is 1.
        let raw = Raw {
            failed: 2,
            unrestored: 2,
            ..Default::default()
        };
        let f = figures_of(&raw, period);
        assert_eq!(
            f.deployment_frequency.expect("frequency").band,
            Band::Low as i32
        );
        assert_eq!(f.change_failure_rate.expect("cfr").rate, Some(1.0));
        assert_eq!(f.band, Band::Low as i32);
        // Nothing at all: no band anywhere.
        let f = figures_of(&Raw::default(), period);
        assert_eq!(f.band, Band::Unspecified as i32);
        assert_eq!(f.change_failure_rate.expect("cfr").rate, None);
        // Edges: exactly 5% is elite, a lead time of exactly one day is high.
        let raw = Raw {
            succeeded: 19,
            failed: 1,
            lead: Percentiles {
                n: 1,
                median: Some(DAY_US),
                p90: Some(DAY_US),
            },
            ..Default::default()
        };
        let f = figures_of(&raw, period);
        assert_eq!(f.change_failure_rate.expect("cfr").band, Band::Elite as i32);
        assert_eq!(
            f.lead_time_for_changes.expect("lead").band,
            Band::High as i32
        );
    }

    #[test]
    fn weekly_periods_start_on_monday_and_are_clipped() {
        // 2026-11-04 is a Wednesday.
        let day = 20_761; // days since 1970-01-01 of 2026-11-04
        let start = day * DAY_US + 5 * HOUR_US;
        let monday = day - (day + 3).rem_euclid(7);
        assert_eq!(day - monday, 2, "Wednesday is two days after Monday");
        let p = Periods {
            start,
            end: start + 10 * DAY_US,
            origin: monday * DAY_US,
            len: 7 * DAY_US,
        };
        assert_eq!(p.count(), 2);
        assert_eq!(p.bounds(0).0, start);
        assert_eq!(p.bounds(1).1, start + 10 * DAY_US);
        assert_eq!(p.bounds(0).1, p.bounds(1).0);
    }
}
