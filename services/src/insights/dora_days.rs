//! DORA day rollups: what one UTC day of one Component's deployments to one environment
//! contributes to the four metrics, so GetDoraMetrics reads a row per (environment, Component,
//! day) instead of every deployment (100,000 deployments over 90 days in 20 Components are
//! 1,800 rows).
//!
//! The rollups stay exact. A day holds its counts, every lead-time sample, the restores that
//! happen within the day, the failures still open at its end and its first success (which
//! restores the failures carried from earlier days), and when each success was first named by a
//! rollback; a window is the fold of its days in time order, so the percentiles are the
//! nearest-rank ones over exactly the same samples as a computation over the rows. Days cut by
//! the window's start or end are computed from the rows on each call.
//!
//! Rollups are kept in `dora_days` (migration 0015). Triggers on `deployments` mark a day stale
//! in the same transaction as any change to it; a call computes stale days from the rows and
//! stores them back only if no change came in between (the row's version is unchanged).

use std::collections::{BTreeMap, HashMap};

use platform_api::platform::deployments::v1 as dpb;
use prost::Message;
use sqlx::Row;

use super::dora::DAY_US;
use crate::error::Error;
use crate::filter::{Param, bind_params};
use crate::store::{Engine, Store};

const SUCCEEDED: i64 = dpb::DeploymentState::Succeeded as i64;
const FAILED: i64 = dpb::DeploymentState::Failed as i64;
const CANCELLED: i64 = dpb::DeploymentState::Cancelled as i64;

/// What a stretch of time (a day, or part of one) of one Component in one environment holds.
#[derive(Clone, PartialEq, Message)]
pub(super) struct Rollup {
    #[prost(int64, tag = "1")]
    pub succeeded: i64,
    #[prost(int64, tag = "2")]
    pub failed: i64,
    #[prost(int64, tag = "3")]
    pub cancelled: i64,
    /// Successful rollbacks (left out of lead time).
    #[prost(int64, tag = "4")]
    pub rollbacks: i64,
    /// Successful non-rollbacks without a commit time.
    #[prost(int64, tag = "5")]
    pub without_commit: i64,
    /// Successful non-rollbacks whose commit time is after their end.
    #[prost(int64, tag = "6")]
    pub commit_after: i64,
    /// Lead times (end − commit) of the other successful non-rollbacks, microseconds.
    #[prost(int64, repeated, tag = "7")]
    pub lead: Vec<i64>,
    /// For each success named by a rollback: when the first such rollback was created.
    #[prost(int64, repeated, tag = "8")]
    pub rolled_back_at: Vec<i64>,
    /// The end of the first success, which restores every failure carried from before.
    #[prost(int64, optional, tag = "9")]
    pub first_success: Option<i64>,
    /// Times to restore of failures restored by a success in the same stretch.
    #[prost(int64, repeated, tag = "10")]
    pub restores: Vec<i64>,
    /// End times of failures no success in the stretch came after.
    #[prost(int64, repeated, tag = "11")]
    pub open_failures: Vec<i64>,
}

/// One finished deployment as the rollups need it.
struct Finished {
    environment: String,
    component: String,
    state: i64,
    end: i64,
    commit: Option<i64>,
    is_rollback: bool,
    rolled_back_at: Option<i64>,
}

impl Rollup {
    /// The rollup of `rows`, sorted by end time.
    fn of(rows: &[&Finished]) -> Rollup {
        let mut r = Rollup::default();
        let mut pending: Vec<i64> = Vec::new();
        for d in rows {
            match d.state {
                SUCCEEDED => {
                    r.succeeded += 1;
                    if d.is_rollback {
                        r.rollbacks += 1;
                    } else {
                        match d.commit {
                            None => r.without_commit += 1,
                            Some(c) if c > d.end => r.commit_after += 1,
                            Some(c) => r.lead.push(d.end - c),
                        }
                    }
                    if let Some(t) = d.rolled_back_at {
                        r.rolled_back_at.push(t);
                    }
                    r.first_success.get_or_insert(d.end);
                    // A success restores the failures that ended strictly before it.
                    pending.retain(|&f| {
                        if f < d.end {
                            r.restores.push(d.end - f);
                            false
                        } else {
                            true
                        }
                    });
                }
                FAILED => {
                    r.failed += 1;
                    pending.push(d.end);
                }
                _ => r.cancelled += 1,
            }
        }
        r.open_failures = pending;
        r
    }
}

/// A rollup with where it sits: environment, Component and the start of its stretch.
pub(super) struct Piece {
    pub environment: String,
    pub component: String,
    pub start: i64,
    pub rollup: Rollup,
}

/// Which deployments count.
pub(super) struct Scope<'a> {
    pub tenant: &'a str,
    /// `None`: every Component.
    pub components: Option<&'a [String]>,
    pub environments: &'a [String],
}

impl Scope<'_> {
    /// `AND …` conditions on `{alias}.environment` and `{alias}.component`, binding into `params`
    /// (numbered after the ones already there).
    fn conditions(&self, alias: &str, params: &mut Vec<Param>) -> String {
        let list = |values: &[String], params: &mut Vec<Param>| {
            values
                .iter()
                .map(|v| {
                    params.push(Param::Text(v.clone()));
                    format!("${}", params.len())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        if self.environments.is_empty() {
            out.push_str(" AND 1 = 0");
        } else {
            out.push_str(&format!(
                " AND {alias}.environment IN ({})",
                list(self.environments, params)
            ));
        }
        match self.components {
            Some([]) => out.push_str(" AND 1 = 0"),
            Some(c) => out.push_str(&format!(" AND {alias}.component IN ({})", list(c, params))),
            None => {}
        }
        out
    }
}

/// The finished deployments of `scope` that ended in `[start, end)`, by end time.
async fn finished_rows(
    store: &Store,
    scope: &Scope<'_>,
    (start, end): (i64, i64),
) -> Result<Vec<Finished>, Error> {
    let mut params = vec![
        Param::Text(scope.tenant.to_owned()),
        Param::Int(start),
        Param::Int(end),
        Param::Text(format!("tenants/{}/deployments/", scope.tenant)),
    ];
    let conditions = scope.conditions("d", &mut params);
    let sql = format!(
        "SELECT d.environment, d.component, d.state, d.end_time_us, d.commit_time_us, \
           CASE WHEN d.rollback_of <> '' THEN 1 ELSE 0 END AS is_rollback, \
           CASE WHEN d.state = {SUCCEEDED} THEN (SELECT MIN(r.create_time_us) FROM deployments r \
             WHERE r.tenant = d.tenant AND r.rollback_of = $4 || d.id) END AS rolled_back_at \
         FROM deployments d WHERE d.tenant = $1 AND d.end_time_us >= $2 AND d.end_time_us < $3 \
           AND d.state IN ({SUCCEEDED}, {FAILED}, {CANCELLED}){conditions} \
         ORDER BY d.end_time_us"
    );
    let rows = bind_params(sqlx::query(&sql), &params)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Finished {
                environment: row.try_get("environment")?,
                component: row.try_get("component")?,
                state: row.try_get("state")?,
                end: row.try_get("end_time_us")?,
                commit: row.try_get("commit_time_us")?,
                is_rollback: row.try_get::<i32, _>("is_rollback")? == 1,
                rolled_back_at: row.try_get("rolled_back_at")?,
            })
        })
        .collect()
}

/// Rollups of `rows` per (environment, Component, day), each starting at its day's start or at
/// `start`, whichever is later.
fn pieces_of(rows: &[Finished], start: i64) -> Vec<Piece> {
    let mut groups: BTreeMap<(&str, &str, i64), Vec<&Finished>> = BTreeMap::new();
    for d in rows {
        groups
            .entry((&d.environment, &d.component, d.end.div_euclid(DAY_US)))
            .or_default()
            .push(d);
    }
    groups
        .into_iter()
        .map(|((environment, component, day), rows)| Piece {
            environment: environment.to_owned(),
            component: component.to_owned(),
            start: (day * DAY_US).max(start),
            rollup: Rollup::of(&rows),
        })
        .collect()
}

/// The pieces of `[start, end)`: stored rollups for whole days (computing and storing the stale
/// ones), rows for the cut days at either end. Sorted by environment, Component and start.
pub(super) async fn pieces(
    store: &Store,
    scope: &Scope<'_>,
    (start, end): (i64, i64),
) -> Result<Vec<Piece>, Error> {
    let first_day = start.div_euclid(DAY_US) + i64::from(start.rem_euclid(DAY_US) != 0);
    let end_day = end.div_euclid(DAY_US); // exclusive
    let mut out = Vec::new();
    if first_day >= end_day {
        out.extend(pieces_of(
            &finished_rows(store, scope, (start, end)).await?,
            start,
        ));
    } else {
        if start < first_day * DAY_US {
            let rows = finished_rows(store, scope, (start, first_day * DAY_US)).await?;
            out.extend(pieces_of(&rows, start));
        }
        out.extend(stored_pieces(store, scope, (first_day, end_day)).await?);
        if end_day * DAY_US < end {
            let rows = finished_rows(store, scope, (end_day * DAY_US, end)).await?;
            out.extend(pieces_of(&rows, end_day * DAY_US));
        }
    }
    out.sort_by(|a, b| {
        (&a.environment, &a.component, a.start).cmp(&(&b.environment, &b.component, b.start))
    });
    Ok(out)
}

/// The stored rollups of days `[first_day, end_day)`, with the stale ones computed (and stored
/// back when unchanged meanwhile).
async fn stored_pieces(
    store: &Store,
    scope: &Scope<'_>,
    (first_day, end_day): (i64, i64),
) -> Result<Vec<Piece>, Error> {
    let mut params = vec![
        Param::Text(scope.tenant.to_owned()),
        Param::Int(first_day),
        Param::Int(end_day),
    ];
    let conditions = scope.conditions("r", &mut params);
    let sql = format!(
        "SELECT r.environment, r.day, r.component, r.version, r.rollup FROM dora_days r \
         WHERE r.tenant = $1 AND r.day >= $2 AND r.day < $3{conditions}"
    );
    // The versions are read before the rows a stale day is computed from, so a rollup is never
    // older than the version it is stored under.
    let rows = bind_params(sqlx::query(&sql), &params)
        .fetch_all(store.pool())
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut stale: HashMap<(String, String, i64), i64> = HashMap::new();
    for row in &rows {
        let environment: String = row.try_get("environment")?;
        let component: String = row.try_get("component")?;
        let day: i64 = row.try_get("day")?;
        match row.try_get::<Option<Vec<u8>>, _>("rollup")? {
            Some(bytes) => out.push(Piece {
                environment,
                component,
                start: day * DAY_US,
                rollup: Rollup::decode(bytes.as_slice())
                    .map_err(|e| Error::internal(format!("stored DORA rollup: {e}")))?,
            }),
            None => {
                stale.insert((environment, component, day), row.try_get("version")?);
            }
        }
    }
    if stale.is_empty() {
        return Ok(out);
    }
    // One read for every stale day, from the first to the last.
    let (low, high) = stale.keys().fold((i64::MAX, i64::MIN), |(lo, hi), k| {
        (lo.min(k.2), hi.max(k.2))
    });
    let finished = finished_rows(store, scope, (low * DAY_US, (high + 1) * DAY_US)).await?;
    let mut computed: Vec<(i64, usize)> = Vec::new();
    for piece in pieces_of(&finished, low * DAY_US) {
        let day = piece.start.div_euclid(DAY_US);
        let key = (piece.environment.clone(), piece.component.clone(), day);
        if let Some(version) = stale.remove(&key) {
            computed.push((version, out.len()));
            out.push(piece);
        }
    }
    // Stale days left over have no finished deployments any more: empty rollups.
    for ((environment, component, day), version) in stale {
        computed.push((version, out.len()));
        out.push(Piece {
            environment,
            component,
            start: day * DAY_US,
            rollup: Rollup::default(),
        });
    }
    let computed: Vec<(i64, &Piece)> = computed.into_iter().map(|(v, i)| (v, &out[i])).collect();
    if let Err(e) = rollups_store(store, scope.tenant, &computed).await {
        // A cache that could not be written is computed again next time; the answer stands.
        tracing::warn!(error = %e, "could not store DORA day rollups");
    }
    Ok(out)
}

/// Stores computed rollups where the version is still the one read. On PostgreSQL each row is
/// its own statement, so this never holds one row's lock while waiting for another's (a writer
/// marking days stale locks them in its own order).
async fn rollups_store(
    store: &Store,
    tenant: &str,
    computed: &[(i64, &Piece)],
) -> Result<(), Error> {
    const SQL: &str = "UPDATE dora_days SET rollup = $1 WHERE tenant = $2 AND environment = $3 \
                       AND day = $4 AND component = $5 AND version = $6 AND rollup IS NULL";
    let mut tx = match store.engine() {
        Engine::Sqlite => Some(store.write_tx().await?),
        Engine::Postgres => None,
    };
    for (version, piece) in computed {
        let bytes = piece.rollup.encode_to_vec();
        let query = sqlx::query(SQL)
            .bind(bytes)
            .bind(tenant)
            .bind(&piece.environment)
            .bind(piece.start.div_euclid(DAY_US))
            .bind(&piece.component)
            .bind(*version);
        match tx.as_mut() {
            Some(tx) => query.execute(&mut **tx).await?,
            None => query.execute(store.pool()).await?,
        };
    }
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(())
}

/// Sorted samples' nearest-rank median (rank ⌈n/2⌉) and 90th percentile (rank ⌈0.9·n⌉).
pub(super) fn nearest_ranks(samples: &mut [i64]) -> (Option<i64>, Option<i64>) {
    let n = samples.len();
    if n == 0 {
        return (None, None);
    }
    samples.sort_unstable();
    (
        Some(samples[n.div_ceil(2) - 1]),
        Some(samples[(9 * n).div_ceil(10) - 1]),
    )
}
