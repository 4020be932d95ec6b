//! DORA metrics, folded from day rollups ([`dora_days`]) rather than read from every deployment:
//! a 90-day tenant window is a row per (environment, Component, day), plus the rows of the two
//! days the window's ends cut. Definitions (which deployments count, nearest-rank percentiles,
//! the bands) are the contract's, in `proto/platform/insights/v1/resources.proto`.
//!
//! A period (the whole window, or one bucket) is `[origin + b·len, origin + (b+1)·len)` clipped to
//! the window; buckets are whole days or weeks, so each rollup falls in exactly one. Deployments
//! belong to a period by their `end_time_us`; restores are looked for up to the window's end.

use std::collections::BTreeMap;

use platform_api::platform::environments::v1 as epb;
use platform_api::platform::insights::v1 as pb;
use sqlx::Row;

use crate::audit::{micros, timestamp};
use crate::catalog::{EntityKey, parse_name_or_ref};
use crate::error::Error;
use crate::filter::{Param, bind_params};
use crate::names::{parse_child_name, parse_tenant_name};
use crate::store::{Store, now_micros};

use super::dora_days;

pub(super) const DAY_US: i64 = 86_400_000_000;
pub(super) const HOUR_US: i64 = 3_600_000_000;

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
    fn text(&mut self, value: &str) -> String {
        self.p(Param::Text(value.to_owned()))
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
    let pieces = dora_days::pieces(
        store,
        &dora_days::Scope {
            tenant: &tenant,
            components: components.as_deref(),
            environments: &environments,
        },
        (start, end),
    )
    .await?;
    let summary = figures_of(
        &fold(&pieces, end, |_| ()).remove(&()).unwrap_or_default(),
        (start, end),
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
            let mut raw = fold(&pieces, end, |p| (p.start - origin).div_euclid(len));
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
/// deployment checks, computed from the same day rollups as GetDoraMetrics, by Component.
pub(super) async fn component_figures(
    store: &Store,
    tenant: &str,
    components: Option<&[String]>,
    environments: &[String],
    (start, end): (i64, i64),
) -> Result<BTreeMap<String, pb::DoraFigures>, Error> {
    let scope = dora_days::Scope {
        tenant,
        components,
        environments,
    };
    let pieces = dora_days::pieces(store, &scope, (start, end)).await?;
    Ok(fold(&pieces, end, |p| p.component.clone())
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

/// Folds pieces (sorted by environment, Component and start; see [`dora_days::pieces`]) into
/// raw figures per key: a bucket, the whole window, or a Component. Failures still open at the
/// end of a piece are carried to the next success of the same Component and environment, and
/// count as unrestored if none comes before the window's end.
fn fold<K: Ord + Clone>(
    pieces: &[dora_days::Piece],
    window_end: i64,
    key_of: impl Fn(&dora_days::Piece) -> K,
) -> BTreeMap<K, Raw> {
    let mut raw: BTreeMap<K, Raw> = BTreeMap::new();
    let mut leads: BTreeMap<K, Vec<i64>> = BTreeMap::new();
    let mut restores: BTreeMap<K, Vec<i64>> = BTreeMap::new();
    let mut carried: Vec<(K, i64)> = Vec::new();
    let mut lane: Option<(&str, &str)> = None;
    for piece in pieces {
        let this = (piece.environment.as_str(), piece.component.as_str());
        if lane != Some(this) {
            for (k, _) in carried.drain(..) {
                raw.entry(k).or_default().unrestored += 1;
            }
            lane = Some(this);
        }
        let k = key_of(piece);
        let p = &piece.rollup;
        let r = raw.entry(k.clone()).or_default();
        r.succeeded += p.succeeded;
        r.failed += p.failed;
        r.cancelled += p.cancelled;
        r.rollbacks += p.rollbacks;
        r.without_commit += p.without_commit;
        r.commit_after += p.commit_after;
        r.rolled_back += p.rolled_back_at.iter().filter(|&&t| t < window_end).count() as i64;
        leads.entry(k.clone()).or_default().extend(&p.lead);
        if let Some(first) = p.first_success {
            for (fk, failed_at) in carried.drain(..) {
                restores.entry(fk).or_default().push(first - failed_at);
            }
        }
        restores.entry(k.clone()).or_default().extend(&p.restores);
        carried.extend(p.open_failures.iter().map(|&f| (k.clone(), f)));
    }
    for (k, _) in carried {
        raw.entry(k).or_default().unrestored += 1;
    }
    let percentiles = |samples: &mut Vec<i64>| {
        let (median, p90) = dora_days::nearest_ranks(samples);
        Percentiles {
            n: samples.len() as i64,
            median,
            p90,
        }
    };
    for (k, mut samples) in leads {
        raw.entry(k).or_default().lead = percentiles(&mut samples);
    }
    for (k, mut samples) in restores {
        raw.entry(k).or_default().restore = percentiles(&mut samples);
    }
    raw
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
