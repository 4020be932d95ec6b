//! `DeploymentService`: queueing deployments of catalog components to environments, and reading
//! how they went — handlers and storage together. The work itself is done by [`engine`].
//!
//! A deployment row holds the encoded proto (`body`, the source of truth for what clients see)
//! and the columns the engine claims and clients filter on, written together by
//! [`deployment_save`]. The log lives in its own table, numbered per deployment, so appending a
//! line never rewrites the deployment. Every client mutation commits with its audit record; the
//! engine's state transitions are not client calls and are recorded in the deployment itself
//! (state history, attempts, SYSTEM log lines).

pub mod engine;
mod group_commit;

use std::sync::Arc;
use std::time::Duration;

use platform_api::platform::deployments::v1 as pb;
use platform_api::platform::environments::v1 as epb;
use prost::Message;
use sqlx::Row;
use tokio::sync::Notify;
use tonic::{Request, Status};
use tracing::instrument;

use crate::audit::{AuditLog, WatchAccess, micros, timestamp};
use crate::authz::Gate;
use crate::catalog::model;
use crate::context::CallContext;
use crate::error::{Error, FieldViolation, RpcResult, respond};
use crate::filter::{self, Op, Param, bind_params};
use crate::idempotency;
use crate::names::{self, parse_child_name, parse_tenant_name};
use crate::pagination;
use crate::store::{Store, WriteTx, now_micros};

use engine::{CANCELLED, Engine, FAILED, QUEUED, RUNNING, SUCCEEDED};

const PRODUCTION_PERMISSION: &str = "deployments.deployments.createProduction";

/// A deployment as stored: its proto and the engine's columns.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentRow {
    pub body: pb::Deployment,
    pub environment_id: String,
    pub lease_owner: String,
    pub cancel_requested: bool,
}

/// Reads a deployment; `log_line_count` and `etag` come from their columns.
pub(crate) async fn deployment_load<'e, E>(
    executor: E,
    tenant: &str,
    id: &str,
) -> Result<Option<DeploymentRow>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT body, environment, lease_owner, cancel_requested, log_seq, etag FROM deployments WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| deployment_from_row(&row)).transpose()
}

/// Reads a deployment to change it, holding its row lock until `tx` ends. SQLite's write
/// transactions are serial already; on PostgreSQL the no-op UPDATE takes the row lock first, so a
/// cancel and a worker finishing the same deployment never overwrite each other's body.
pub(crate) async fn deployment_load_for_update(
    tx: &mut WriteTx,
    tenant: &str,
    id: &str,
) -> Result<Option<DeploymentRow>, Error> {
    crate::store::row_lock(tx, "deployments", tenant, id).await?;
    deployment_load(&mut **tx, tenant, id).await
}

fn deployment_from_row(row: &sqlx::any::AnyRow) -> Result<DeploymentRow, Error> {
    let body: Vec<u8> = row.try_get("body")?;
    let mut body = pb::Deployment::decode(body.as_slice())
        .map_err(|e| Error::internal(format!("stored deployment: {e}")))?;
    body.log_line_count = row.try_get("log_seq")?;
    body.etag = row.try_get("etag")?;
    Ok(DeploymentRow {
        body,
        environment_id: row.try_get("environment")?,
        lease_owner: row.try_get("lease_owner")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? == 1,
    })
}

/// Writes a deployment's body and mirrored columns with a new etag and update time. `lease`
/// replaces the lease (owner, expiry) when given.
pub(crate) async fn deployment_save(
    tx: &mut WriteTx,
    d: &mut DeploymentRow,
    lease: Option<(&str, i64)>,
) -> Result<(), Error> {
    let now = now_micros();
    d.body.update_time = Some(timestamp(now));
    d.body.etag = uuid::Uuid::new_v4().simple().to_string();
    if let Some((owner, until)) = lease {
        d.lease_owner = owner.to_owned();
        sqlx::query("UPDATE deployments SET lease_owner = $1, lease_expires_us = $2 WHERE tenant = $3 AND id = $4")
            .bind(owner)
            .bind(until)
            .bind(tenant_of(&d.body.name))
            .bind(id_of(&d.body.name))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "UPDATE deployments SET state = $1, start_time_us = $2, end_time_us = $3, update_time_us = $4, \
         cancel_requested = $5, attempt_count = $6, etag = $7, body = $8 WHERE tenant = $9 AND id = $10",
    )
    .bind(i64::from(d.body.state))
    .bind(micros(&d.body.start_time))
    .bind(micros(&d.body.end_time))
    .bind(now)
    .bind(i64::from(d.cancel_requested))
    .bind(i64::from(d.body.attempt_count))
    .bind(&d.body.etag)
    .bind(d.body.encode_to_vec())
    .bind(tenant_of(&d.body.name))
    .bind(id_of(&d.body.name))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fills `commit_time_us` (migration 0013) from the bodies of deployments written before it, once
/// per database; returns how many rows got a commit time.
pub async fn commit_time_backfill(store: &Store) -> Result<u64, Error> {
    const DONE: &str = "deployments_commit_time_backfilled";
    if store.meta_get(DONE).await?.is_some() {
        return Ok(0);
    }
    let (mut after_tenant, mut after_id) = (String::new(), String::new());
    let mut filled = 0;
    loop {
        let rows = sqlx::query(
            "SELECT tenant, id, body FROM deployments WHERE tenant > $1 OR (tenant = $1 AND id > $2) \
             ORDER BY tenant, id LIMIT 500",
        )
        .bind(&after_tenant)
        .bind(&after_id)
        .fetch_all(store.pool())
        .await?;
        let Some(last) = rows.last() else { break };
        after_tenant = last.try_get("tenant")?;
        after_id = last.try_get("id")?;
        let mut tx = store.write_tx().await?;
        for row in &rows {
            let body: Vec<u8> = row.try_get("body")?;
            let d = pb::Deployment::decode(body.as_slice())
                .map_err(|e| Error::internal(format!("stored deployment: {e}")))?;
            if let Some(t) = micros(&d.commit_time) {
                sqlx::query(
                    "UPDATE deployments SET commit_time_us = $1 WHERE tenant = $2 AND id = $3",
                )
                .bind(t)
                .bind(row.try_get::<String, _>("tenant")?)
                .bind(row.try_get::<String, _>("id")?)
                .execute(&mut *tx)
                .await?;
                filled += 1;
            }
        }
        tx.commit().await?;
    }
    let mut tx = store.write_tx().await?;
    store.meta_put_if_absent(&mut tx, DONE, "1").await?;
    tx.commit().await?;
    Ok(filled)
}

fn tenant_of(name: &str) -> &str {
    names::tenant_of(name).unwrap_or_default()
}

fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or_default()
}

/// The environment facts a new deployment is checked against.
struct TargetEnvironment {
    id: String,
    name: String,
    r#type: i32,
    state: i32,
    lock_reason: Option<String>,
    promotes_to: String,
}

async fn environment_target(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    tenant: &str,
    id: &str,
) -> Result<Option<TargetEnvironment>, Error> {
    let row = sqlx::query("SELECT body FROM environments WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let body: Vec<u8> = row.try_get("body")?;
    let env = epb::Environment::decode(body.as_slice())
        .map_err(|e| Error::internal(format!("stored environment: {e}")))?;
    Ok(Some(TargetEnvironment {
        id: id.to_owned(),
        name: format!("tenants/{tenant}/environments/{id}"),
        r#type: env.r#type,
        state: env.state,
        lock_reason: env.lock.map(|l| l.reason),
        promotes_to: env.promotes_to,
    }))
}

impl TargetEnvironment {
    /// Refuses deployments into an environment that cannot take them.
    fn check_open(&self) -> Result<(), Error> {
        if let Some(reason) = &self.lock_reason {
            return Err(Error::FailedPrecondition {
                message: format!(
                    "environment {} is locked: {}",
                    self.name,
                    names::printable(reason)
                ),
            });
        }
        if !matches!(
            self.state as i64,
            engine::ENV_READY | engine::ENV_PROVISIONING
        ) {
            return Err(Error::FailedPrecondition {
                message: format!(
                    "environment {} is {} and takes no deployments",
                    self.name,
                    epb::EnvironmentState::try_from(self.state)
                        .map(|s| s.as_str_name().trim_start_matches("ENVIRONMENT_STATE_"))
                        .unwrap_or("UNSPECIFIED")
                ),
            });
        }
        Ok(())
    }
}

/// Deploying into a PRODUCTION environment needs its own permission.
fn check_production(gate: &Gate, ctx: &CallContext, env: &TargetEnvironment) -> Result<(), Error> {
    if env.r#type == epb::EnvironmentType::Production as i32
        && !gate.allows(ctx, &env.name, PRODUCTION_PERMISSION)
    {
        return Err(Error::PermissionDenied {
            message: format!(
                "{} lacks `{PRODUCTION_PERMISSION}` on {}",
                ctx.principal, env.name
            ),
        });
    }
    Ok(())
}

/// A new QUEUED deployment of `d`'s client fields into `env`, named and stamped (nameless for
/// `validate_only`); [`deployments_insert`] stores it.
fn deployment_new(
    ctx: &CallContext,
    tenant: &str,
    mut d: pb::Deployment,
    env: &TargetEnvironment,
    validate_only: bool,
) -> pb::Deployment {
    let now = now_micros();
    if validate_only {
        d.name = String::new();
        d.uid = String::new();
    } else {
        d.name = format!(
            "tenants/{tenant}/deployments/d{}",
            uuid::Uuid::now_v7().simple()
        );
        d.uid = uuid::Uuid::new_v4().to_string();
    }
    d.environment = env.name.clone();
    d.requested_by = Some(pb::Actor {
        principal: ctx.principal.clone(),
        display_name: String::new(),
    });
    d.state = QUEUED as i32;
    d.state_message = "queued".into();
    d.state_history = vec![pb::StateTransition {
        state: QUEUED as i32,
        time: Some(timestamp(now)),
        message: "queued".into(),
    }];
    d.create_time = Some(timestamp(now));
    d.update_time = Some(timestamp(now));
    d.etag = uuid::Uuid::new_v4().simple().to_string();
    // The first log line, "QUEUED by …", written with it.
    d.log_line_count = i64::from(!validate_only);
    d
}

/// Stores new deployments from [`deployment_new`] (requester, deployment, environment id) with
/// the first line of each one's log, in one multi-row insert per table.
async fn deployments_insert(
    tx: &mut WriteTx,
    rows: &[(&CallContext, &pb::Deployment, &str)],
) -> Result<(), Error> {
    const COLUMNS: usize = 22;
    for chunk in rows.chunks(crate::store::MAX_BIND_PARAMETERS / COLUMNS) {
        let sql = format!(
            "INSERT INTO deployments (tenant, id, uid, component, environment, state, version, commit_sha, \
             requested_by, rollback_of, promoted_from, create_time_us, update_time_us, cancel_requested, \
             attempt_count, lease_owner, lease_expires_us, log_seq, etag, body, lane, commit_time_us) \
             VALUES {}",
            crate::store::values_placeholders(chunk.len(), COLUMNS)
        );
        let mut insert = sqlx::query(&sql);
        for (ctx, d, env_id) in chunk {
            let tenant = tenant_of(&d.name);
            let created = micros(&d.create_time).unwrap_or_default();
            insert = insert
                .bind(tenant.to_owned())
                .bind(id_of(&d.name).to_owned())
                .bind(d.uid.clone())
                .bind(d.component.clone())
                .bind(env_id.to_string())
                .bind(QUEUED)
                .bind(d.version.clone())
                .bind(d.commit_sha.clone())
                .bind(ctx.principal.clone())
                .bind(d.rollback_of.clone())
                .bind(d.promoted_from.clone())
                .bind(created)
                .bind(created)
                .bind(0i64)
                .bind(0i64)
                .bind(String::new())
                .bind(0i64)
                .bind(1i64)
                .bind(d.etag.clone())
                .bind(d.encode_to_vec())
                .bind(format!("{tenant}/{env_id}/{}", d.component))
                .bind(micros(&d.commit_time));
        }
        insert.execute(&mut **tx).await?;
    }
    // The log's first line, numbered 1 above (log_seq): a new deployment needs no counter lock.
    const LOG_COLUMNS: usize = 8;
    for chunk in rows.chunks(crate::store::MAX_BIND_PARAMETERS / LOG_COLUMNS) {
        let sql = format!(
            "INSERT INTO deployment_log (tenant, deployment, seq, time_us, stream, text, truncated, attempt) \
             VALUES {}",
            crate::store::values_placeholders(chunk.len(), LOG_COLUMNS)
        );
        let mut insert = sqlx::query(&sql);
        for (ctx, d, _) in chunk {
            insert = insert
                .bind(tenant_of(&d.name).to_owned())
                .bind(id_of(&d.name).to_owned())
                .bind(1i64)
                .bind(micros(&d.create_time).unwrap_or_default())
                .bind(pb::LogStream::System as i64)
                .bind(format!("QUEUED by {}", ctx.principal))
                .bind(0i64)
                .bind(0i64);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The deployment a stored idempotent response names, as it is now.
async fn deployment_current(
    store: &Store,
    stored: pb::Deployment,
) -> Result<pb::Deployment, Error> {
    if stored.name.is_empty() {
        return Ok(stored);
    }
    Ok(
        deployment_load(store.pool(), tenant_of(&stored.name), id_of(&stored.name))
            .await?
            .map(|d| d.body)
            .unwrap_or(stored),
    )
}

/// The `DeploymentService` implementation.
#[derive(Debug, Clone)]
pub struct DeploymentService {
    store: Store,
    audit: AuditLog,
    gate: Gate,
    engine: Arc<Engine>,
    work: Arc<Notify>,
    watch_access: Option<WatchAccess>,
    /// Creates commit in groups (see [`group_commit`]).
    creates: group_commit::CreateQueue,
}

fn validate_new(d: &pb::Deployment, violations: &mut Vec<FieldViolation>) {
    let v = &d.version;
    if v.is_empty() || v.len() > 256 || !v.chars().all(|c| c.is_ascii_graphic()) {
        violations.push(FieldViolation::new(
            "deployment.version",
            "1-256 printable ASCII characters without whitespace",
        ));
    }
    let c = &d.commit_sha;
    if !c.is_empty()
        && (!(7..=64).contains(&c.len())
            || !c
                .chars()
                .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)))
    {
        violations.push(FieldViolation::new(
            "deployment.commit_sha",
            "7-64 lowercase hex characters",
        ));
    }
    if let Some(t) = micros(&d.commit_time)
        && t > now_micros() + 5 * 60 * 1_000_000
    {
        violations.push(FieldViolation::new(
            "deployment.commit_time",
            "must not be more than 5 minutes in the future",
        ));
    }
    if d.reason.chars().count() > 1024 || d.reason.chars().any(|c| c == '\0') {
        violations.push(FieldViolation::new(
            "deployment.reason",
            "at most 1024 characters, no NUL",
        ));
    }
    names::validate_labels("deployment.labels", &d.labels, violations);
    names::validate_annotations("deployment.annotations", &d.annotations, violations);
}

/// `[component:][namespace/]name` → `component:{namespace}/{name}`.
fn component_ref(text: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::invalid_argument("deployment.component", why.to_owned());
    if text.is_empty() {
        return Err(bad("required: a catalog Component reference"));
    }
    let r = model::parse_entity_ref(text, Some("component"), "default")
        .map_err(|_| bad("not an entity reference `[component:][namespace/]name`"))?;
    let key = crate::catalog::EntityKey::from_ref(&r);
    if key.kind != "component" {
        return Err(bad("must reference a Component"));
    }
    Ok(key.ref_key())
}

impl DeploymentService {
    pub fn new(
        store: Store,
        audit: AuditLog,
        gate: Gate,
        engine: Arc<Engine>,
        work: Arc<Notify>,
        watch_access: Option<WatchAccess>,
    ) -> Self {
        let creates = group_commit::CreateQueue::start(
            store.clone(),
            audit.clone(),
            gate.clone(),
            work.clone(),
        );
        DeploymentService {
            store,
            audit,
            gate,
            engine,
            work,
            watch_access,
            creates,
        }
    }

    /// Inserts a new QUEUED deployment (inside `tx`) and returns it.
    async fn deployment_insert(
        &self,
        tx: &mut WriteTx,
        ctx: &CallContext,
        tenant: &str,
        d: pb::Deployment,
        env: &TargetEnvironment,
        validate_only: bool,
    ) -> Result<pb::Deployment, Error> {
        let d = deployment_new(ctx, tenant, d, env, validate_only);
        if !validate_only {
            deployments_insert(tx, &[(ctx, &d, env.id.as_str())]).await?;
        }
        Ok(d)
    }

    /// The deployment a stored idempotent response names, as it is now.
    async fn current(&self, stored: pb::Deployment) -> Result<pb::Deployment, Error> {
        deployment_current(&self.store, stored).await
    }

    #[instrument(skip_all)]
    async fn deployment_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateDeploymentRequest,
    ) -> Result<pb::Deployment, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        idempotency::validate(&req.request_id)?;
        let given = req
            .deployment
            .ok_or_else(|| Error::invalid_argument("deployment", "required"))?;
        let mut violations = Vec::new();
        validate_new(&given, &mut violations);
        let component = match component_ref(&given.component) {
            Ok(c) => Some(c),
            Err(Error::InvalidArgument(v)) => {
                violations.extend(v);
                None
            }
            Err(other) => return Err(other),
        };
        let env_id =
            match parse_child_name("deployment.environment", &given.environment, "environments") {
                Ok((t, id)) if t == tenant => Some(id),
                Ok(_) => {
                    violations.push(FieldViolation::new(
                        "deployment.environment",
                        "must be an environment of the tenant in `parent`",
                    ));
                    None
                }
                Err(Error::InvalidArgument(v)) => {
                    violations.extend(v);
                    None
                }
                Err(other) => return Err(other),
            };
        let (Some(component), Some(env_id)) = (component, env_id) else {
            return Err(Error::InvalidArgument(violations));
        };
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        self.creates
            .create(group_commit::NewDeploymentRequest {
                ctx: ctx.clone(),
                tenant,
                environment_id: env_id,
                environment_name: given.environment,
                // Only the fields a client sets; the rest is the server's.
                given: pb::Deployment {
                    component: component.clone(),
                    version: given.version,
                    commit_sha: given.commit_sha,
                    commit_time: given.commit_time,
                    reason: given.reason,
                    labels: given.labels,
                    annotations: given.annotations,
                    ..Default::default()
                },
                component,
                request_id: req.request_id,
                validate_only: req.validate_only,
            })
            .await
    }

    async fn deployment_get(&self, name: &str) -> Result<DeploymentRow, Error> {
        let (tenant, id) = parse_child_name("name", name, "deployments")?;
        deployment_load(self.store.pool(), &tenant, &id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "deployment",
                name: name.to_owned(),
            })
    }

    #[instrument(skip_all)]
    async fn deployments_list(
        &self,
        req: &pb::ListDeploymentsRequest,
    ) -> Result<pb::ListDeploymentsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        let desc = match req.order_by.trim() {
            "" | "create_time desc" => true,
            "create_time" | "create_time asc" => false,
            _ => {
                return Err(Error::invalid_argument(
                    "order_by",
                    "`create_time desc` (the default) or `create_time`",
                ));
            }
        };
        let page_size = pagination::page_size(req.page_size)?;
        let mut clauses = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        if let Some(expr) = filter::parse_expr(&req.filter)? {
            clauses.push(filter::expr_sql(&expr, &mut |term| {
                deployment_term_sql(term, &tenant, &mut params)
            })?);
        }
        let fingerprint = pagination::query_fingerprint(&[&tenant, &req.filter, &req.order_by]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?;
        let mut where_sql = String::from(" WHERE tenant = $1");
        for c in &clauses {
            where_sql.push_str(" AND ");
            where_sql.push_str(c);
        }
        let count_sql = format!("SELECT COUNT(*) AS n FROM deployments{where_sql}");
        let total: i64 = bind_params(sqlx::query(&count_sql).bind(&tenant), &params)
            .fetch_one(self.store.pool())
            .await?
            .try_get("n")?;
        let mut sql = format!(
            "SELECT body, environment, lease_owner, cancel_requested, log_seq, etag, create_time_us, id FROM deployments{where_sql}"
        );
        let mut after_parts = None;
        if let Some(after) = after {
            let (t, id) = after
                .split_once(' ')
                .and_then(|(t, id)| t.parse::<i64>().ok().map(|t| (t, id.to_owned())))
                .ok_or_else(|| {
                    Error::invalid_argument("page_token", "not a page token of this query")
                })?;
            let n = params.len() + 2;
            let op = if desc { "<" } else { ">" };
            sql.push_str(&format!(
                " AND ((create_time_us, id) {op} (${n}, ${}))",
                n + 1
            ));
            after_parts = Some((t, id));
        }
        let dir = if desc { "DESC" } else { "ASC" };
        sql.push_str(&format!(
            " ORDER BY create_time_us {dir}, id {dir} LIMIT {}",
            page_size + 1
        ));
        let mut query = bind_params(sqlx::query(&sql).bind(&tenant), &params);
        if let Some((t, id)) = &after_parts {
            query = query.bind(*t).bind(id.clone());
        }
        let rows = query.fetch_all(self.store.pool()).await?;
        let more = rows.len() as i64 > page_size;
        let mut deployments = Vec::new();
        let mut last = None;
        for row in rows.iter().take(page_size as usize) {
            deployments.push(deployment_from_row(row)?.body);
            last = Some((
                row.try_get::<i64, _>("create_time_us")?,
                row.try_get::<String, _>("id")?,
            ));
        }
        let next_page_token = match (more, last) {
            (true, Some((t, id))) => pagination::encode_token(fingerprint, &format!("{t} {id}")),
            _ => String::new(),
        };
        Ok(pb::ListDeploymentsResponse {
            deployments,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    #[instrument(skip_all)]
    async fn deployment_cancel(
        &self,
        ctx: &CallContext,
        req: pb::CancelDeploymentRequest,
    ) -> Result<pb::Deployment, Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "deployments")?;
        idempotency::validate(&req.request_id)?;
        if req.reason.chars().count() > 1024 {
            return Err(Error::invalid_argument("reason", "at most 1024 characters"));
        }
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Deployment>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let mut d = deployment_load_for_update(&mut tx, &tenant, &id)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "deployment",
                    name: req.name.clone(),
                })?;
            if !req.etag.is_empty() && req.etag != d.body.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the deployment changed since it was read".into(),
                });
            }
            let state = i64::from(d.body.state);
            if matches!(state, SUCCEEDED | FAILED | CANCELLED) {
                return Err(Error::FailedPrecondition {
                    message: format!("the deployment is already {}", engine::state_name(state)),
                });
            }
            if d.cancel_requested {
                return Ok(d.body);
            }
            let now = now_micros();
            d.cancel_requested = true;
            d.body.cancellation = Some(pb::Cancellation {
                requested_by: Some(pb::Actor {
                    principal: ctx.principal.clone(),
                    display_name: String::new(),
                }),
                request_time: Some(timestamp(now)),
                reason: req.reason.clone(),
            });
            let note = if req.reason.is_empty() {
                format!("cancellation requested by {}", ctx.principal)
            } else {
                format!(
                    "cancellation requested by {}: {}",
                    ctx.principal,
                    names::printable(&req.reason)
                )
            };
            engine::deployment_note(&mut tx, &tenant, &id, i64::from(d.body.attempt_count), note)
                .await?;
            if state == QUEUED {
                let message = format!("cancelled by {}", ctx.principal);
                engine::transition(&mut d.body, CANCELLED, &message, now);
                engine::deployment_note(&mut tx, &tenant, &id, 0, format!("CANCELLED: {message}"))
                    .await?;
            }
            deployment_save(&mut tx, &mut d, None).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &d.body).await?;
            Ok(d.body)
        }
        .await;
        let d = self
            .audit
            .finish(ctx, tx, result, &["cancellation"])
            .await?;
        if i64::from(d.state) == RUNNING {
            self.engine.cancel_local(&tenant, &id);
        }
        self.work.notify_one();
        Ok(d)
    }

    #[instrument(skip_all)]
    async fn deployment_rollback(
        &self,
        ctx: &CallContext,
        req: pb::RollbackDeploymentRequest,
    ) -> Result<pb::Deployment, Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "deployments")?;
        idempotency::validate(&req.request_id)?;
        let target_id = if req.target.is_empty() {
            None
        } else {
            let (t, target) = parse_child_name("target", &req.target, "deployments")?;
            if t != tenant {
                return Err(Error::invalid_argument(
                    "target",
                    "must be a deployment of the same tenant",
                ));
            }
            Some(target)
        };
        if req.reason.chars().count() > 1024 {
            return Err(Error::invalid_argument("reason", "at most 1024 characters"));
        }
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Deployment>(&mut tx, ctx, &req.request_id).await?
        {
            drop(tx);
            return self.current(previous).await;
        }
        let result = async {
            let undone = deployment_load(&mut *tx, &tenant, &id)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "deployment", name: req.name.clone() })?;
            let created = micros(&undone.body.create_time).unwrap_or_default();
            let target = match &target_id {
                Some(target_id) => {
                    let t = deployment_load(&mut *tx, &tenant, target_id)
                        .await?
                        .ok_or_else(|| Error::NotFound { resource_type: "deployment", name: req.target.clone() })?;
                    let ok = i64::from(t.body.state) == SUCCEEDED
                        && t.body.component == undone.body.component
                        && t.environment_id == undone.environment_id
                        && micros(&t.body.create_time).unwrap_or_default() < created;
                    if !ok {
                        return Err(Error::FailedPrecondition {
                            message: "the target must be a SUCCEEDED deployment of the same component and environment, created before the one rolled back".into(),
                        });
                    }
                    t
                }
                None => {
                    let row = sqlx::query(
                        "SELECT body, environment, lease_owner, cancel_requested, log_seq, etag FROM deployments \
                         WHERE tenant = $1 AND environment = $2 AND component = $3 AND state = $4 AND create_time_us < $5 AND id <> $6 \
                         ORDER BY create_time_us DESC LIMIT 1",
                    )
                    .bind(&tenant)
                    .bind(&undone.environment_id)
                    .bind(&undone.body.component)
                    .bind(SUCCEEDED)
                    .bind(created)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::FailedPrecondition {
                        message: "no earlier deployment of this component succeeded in this environment".into(),
                    })?;
                    deployment_from_row(&row)?
                }
            };
            let env = environment_target(&mut *tx, &tenant, &undone.environment_id)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "environment", name: undone.body.environment.clone() })?;
            check_production(&self.gate, ctx, &env)?;
            env.check_open()?;
            let mut snapshot = target.body.snapshot.clone().unwrap_or_default();
            snapshot.copied_from = target.body.name.clone();
            let d = pb::Deployment {
                component: undone.body.component.clone(),
                version: target.body.version.clone(),
                commit_sha: target.body.commit_sha.clone(),
                commit_time: target.body.commit_time,
                reason: if req.reason.is_empty() { format!("rollback of {}", req.name) } else { req.reason.clone() },
                rollback_of: undone.body.name.clone(),
                rollback_target: target.body.name.clone(),
                snapshot: Some(snapshot),
                ..Default::default()
            };
            let d = self.deployment_insert(&mut tx, ctx, &tenant, d, &env, req.validate_only).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &d).await?;
            Ok(d)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        let d = self.audit.finish(ctx, tx, result, &["deployment"]).await?;
        self.work.notify_one();
        Ok(d)
    }

    #[instrument(skip_all)]
    async fn deployment_promote(
        &self,
        ctx: &CallContext,
        req: pb::PromoteDeploymentRequest,
    ) -> Result<pb::Deployment, Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "deployments")?;
        idempotency::validate(&req.request_id)?;
        if req.reason.chars().count() > 1024 {
            return Err(Error::invalid_argument("reason", "at most 1024 characters"));
        }
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Deployment>(&mut tx, ctx, &req.request_id).await?
        {
            drop(tx);
            return self.current(previous).await;
        }
        let result = async {
            let source = deployment_load(&mut *tx, &tenant, &id)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "deployment",
                    name: req.name.clone(),
                })?;
            if i64::from(source.body.state) != SUCCEEDED {
                return Err(Error::FailedPrecondition {
                    message: "only a SUCCEEDED deployment can be promoted".into(),
                });
            }
            let from = environment_target(&mut *tx, &tenant, &source.environment_id)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "environment",
                    name: source.body.environment.clone(),
                })?;
            if from.promotes_to.is_empty() {
                return Err(Error::FailedPrecondition {
                    message: format!("environment {} has no promotes_to environment", from.name),
                });
            }
            let (_, to_id) = parse_child_name("promotes_to", &from.promotes_to, "environments")
                .map_err(|_| Error::internal("stored promotes_to is not an environment name"))?;
            let to = environment_target(&mut *tx, &tenant, &to_id)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "environment",
                    name: from.promotes_to.clone(),
                })?;
            if !self
                .gate
                .allows(ctx, &to.name, "deployments.deployments.create")
            {
                return Err(Error::PermissionDenied {
                    message: format!(
                        "{} lacks `deployments.deployments.create` on {}",
                        ctx.principal, to.name
                    ),
                });
            }
            check_production(&self.gate, ctx, &to)?;
            to.check_open()?;
            let d = pb::Deployment {
                component: source.body.component.clone(),
                version: source.body.version.clone(),
                commit_sha: source.body.commit_sha.clone(),
                commit_time: source.body.commit_time,
                reason: if req.reason.is_empty() {
                    format!("promotion of {}", req.name)
                } else {
                    req.reason.clone()
                },
                promoted_from: source.body.name.clone(),
                ..Default::default()
            };
            let d = self
                .deployment_insert(&mut tx, ctx, &tenant, d, &to, req.validate_only)
                .await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &d).await?;
            Ok(d)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        let d = self.audit.finish(ctx, tx, result, &["deployment"]).await?;
        self.work.notify_one();
        Ok(d)
    }

    async fn log_page(
        &self,
        tenant: &str,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<pb::LogLine>, Error> {
        let rows = sqlx::query(
            "SELECT seq, time_us, stream, text, truncated, attempt FROM deployment_log \
             WHERE tenant = $1 AND deployment = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(tenant)
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(pb::LogLine {
                    sequence: row.try_get("seq")?,
                    time: Some(timestamp(row.try_get("time_us")?)),
                    stream: row.try_get::<i64, _>("stream")? as i32,
                    text: row.try_get("text")?,
                    truncated: row.try_get::<i64, _>("truncated")? == 1,
                    attempt: row.try_get::<i64, _>("attempt")? as i32,
                })
            })
            .collect()
    }

    #[instrument(skip_all)]
    async fn deployment_log_get(
        &self,
        req: &pb::GetDeploymentLogRequest,
    ) -> Result<pb::GetDeploymentLogResponse, Error> {
        let d = self.deployment_get(&req.name).await?;
        let (tenant, id) = parse_child_name("name", &req.name, "deployments")?;
        if req.after_sequence < 0 {
            return Err(Error::invalid_argument(
                "after_sequence",
                "must not be negative",
            ));
        }
        if req.after_sequence > 0 && !req.page_token.is_empty() {
            return Err(Error::invalid_argument(
                "page_token",
                "set either after_sequence or page_token",
            ));
        }
        let limit = match req.page_size {
            n if n < 0 => return Err(Error::invalid_argument("page_size", "must not be negative")),
            0 => 1000,
            n => i64::from(n).min(10_000),
        };
        let fingerprint = pagination::query_fingerprint(&[&req.name]);
        let after = match pagination::decode_token(fingerprint, &req.page_token)? {
            Some(t) => t.parse().map_err(|_| {
                Error::invalid_argument("page_token", "not a page token of this deployment")
            })?,
            None => req.after_sequence,
        };
        let lines = self.log_page(&tenant, &id, after, limit).await?;
        let last = lines.last().map(|l| l.sequence).unwrap_or(after);
        let end = last >= d.body.log_line_count;
        let terminal = matches!(i64::from(d.body.state), SUCCEEDED | FAILED | CANCELLED);
        Ok(pb::GetDeploymentLogResponse {
            next_page_token: if end {
                String::new()
            } else {
                pagination::encode_token(fingerprint, &last.to_string())
            },
            complete: end && terminal,
            lines,
        })
    }

    async fn deployment_watch(
        &self,
        ctx: Option<CallContext>,
        req: pb::WatchDeploymentRequest,
    ) -> Result<
        tokio_stream::wrappers::ReceiverStream<Result<pb::WatchDeploymentResponse, Status>>,
        Error,
    > {
        if req.after_sequence < 0 {
            return Err(Error::invalid_argument(
                "after_sequence",
                "must not be negative",
            ));
        }
        let first = self.deployment_get(&req.name).await?;
        let (tenant, id) = parse_child_name("name", &req.name, "deployments")?;
        let (out, rx) = tokio::sync::mpsc::channel(256);
        let service = self.clone();
        let notify = self.audit.committed_signal();
        tokio::spawn(async move {
            use pb::watch_deployment_response::Event;
            let send = |event: Event| {
                let out = out.clone();
                async move {
                    out.send(Ok(pb::WatchDeploymentResponse { event: Some(event) }))
                        .await
                        .is_ok()
                }
            };
            let mut etag = first.body.etag.clone();
            if !send(Event::Deployment(first.body)).await {
                return;
            }
            let mut after = req.after_sequence;
            let recheck = service
                .watch_access
                .as_ref()
                .map(|a| a.recheck)
                .unwrap_or(Duration::MAX);
            let mut last_check = std::time::Instant::now();
            loop {
                let woken = notify.notified();
                // Lines first, then the state: a terminal snapshot comes after every line.
                loop {
                    match service.log_page(&tenant, &id, after, 500).await {
                        Ok(lines) => {
                            let n = lines.len();
                            for line in lines {
                                after = line.sequence;
                                if !send(Event::LogLine(line)).await {
                                    return;
                                }
                            }
                            if n < 500 {
                                break;
                            }
                        }
                        Err(err) => {
                            let _ = out.send(Err(err.into())).await;
                            return;
                        }
                    }
                }
                let current = match deployment_load(service.store.pool(), &tenant, &id).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return,
                    Err(err) => {
                        let _ = out.send(Err(err.into())).await;
                        return;
                    }
                };
                let terminal = matches!(
                    i64::from(current.body.state),
                    SUCCEEDED | FAILED | CANCELLED
                );
                if current.body.etag != etag {
                    etag = current.body.etag.clone();
                    if !send(Event::Deployment(current.body.clone())).await {
                        return;
                    }
                }
                if terminal && after >= current.body.log_line_count {
                    return; // OK: everything has been sent
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), woken).await;
                if last_check.elapsed() >= recheck {
                    last_check = std::time::Instant::now();
                    if let (Some(access), Some(ctx)) = (&service.watch_access, &ctx)
                        && let Some(status) = access.revoked(ctx)
                    {
                        let _ = out.send(Err(status)).await;
                        return;
                    }
                }
                if out.is_closed() {
                    return;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn deployment_term_sql(
    term: &filter::Term,
    tenant: &str,
    params: &mut Vec<Param>,
) -> Result<String, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let eq_op = |op: Op| match op {
        Op::Eq => Ok("="),
        Op::Ne => Ok("<>"),
        _ => Err(bad(format!(
            "`{}` supports = and !=",
            names::printable(&term.field)
        ))),
    };
    let mut text = |column: &str, value: String, op: Op| -> Result<String, Error> {
        let op = eq_op(op)?;
        params.push(Param::Text(value));
        Ok(format!("{column} {op} ${}", params.len() + 1))
    };
    match term.field.as_str() {
        "component" => {
            let value = component_ref(&term.value)
                .map_err(|_| bad("`component` takes a Component reference".into()))?;
            text("component", value, term.op)
        }
        "environment" => {
            let (t, id) = parse_child_name("filter", &term.value, "environments")?;
            let id = if t == tenant { id } else { String::new() };
            text("environment", id, term.op)
        }
        "state" => {
            let state =
                pb::DeploymentState::from_str_name(&format!("DEPLOYMENT_STATE_{}", term.value))
                    .filter(|s| *s != pb::DeploymentState::Unspecified)
                    .ok_or_else(|| {
                        bad(format!(
                            "`{}` is not a deployment state",
                            names::printable(&term.value)
                        ))
                    })?;
            let op = eq_op(term.op)?;
            params.push(Param::Int(state as i64));
            Ok(format!("state {op} ${}", params.len() + 1))
        }
        "version" => text("version", term.value.clone(), term.op),
        "commit_sha" => text("commit_sha", term.value.clone(), term.op),
        "requested_by" => text("requested_by", term.value.clone(), term.op),
        "rollback_of" => text("rollback_of", term.value.clone(), term.op),
        "promoted_from" => text("promoted_from", term.value.clone(), term.op),
        field @ ("create_time" | "start_time" | "end_time") => {
            filter::time_term_sql(term, &format!("{field}_us"), params)
        }
        other => Err(bad(format!(
            "`{}` cannot be filtered on (fields: component, environment, state, version, commit_sha, requested_by, rollback_of, promoted_from, create_time, start_time, end_time)",
            names::printable(other)
        ))),
    }
}

type WatchDeploymentStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchDeploymentResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::deployment_service_server::DeploymentService for DeploymentService {
    #[instrument(skip_all)]
    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> RpcResult<pb::Deployment> {
        let ctx = CallContext::of(&request)?;
        respond(self.deployment_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> RpcResult<pb::Deployment> {
        respond(
            self.deployment_get(&request.get_ref().name)
                .await
                .map(|d| d.body),
        )
    }
    #[instrument(skip_all)]
    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> RpcResult<pb::ListDeploymentsResponse> {
        respond(self.deployments_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn cancel_deployment(
        &self,
        request: Request<pb::CancelDeploymentRequest>,
    ) -> RpcResult<pb::Deployment> {
        let ctx = CallContext::of(&request)?;
        respond(self.deployment_cancel(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn rollback_deployment(
        &self,
        request: Request<pb::RollbackDeploymentRequest>,
    ) -> RpcResult<pb::Deployment> {
        let ctx = CallContext::of(&request)?;
        respond(self.deployment_rollback(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn promote_deployment(
        &self,
        request: Request<pb::PromoteDeploymentRequest>,
    ) -> RpcResult<pb::Deployment> {
        let ctx = CallContext::of(&request)?;
        respond(self.deployment_promote(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn watch_deployment(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> RpcResult<WatchDeploymentStream> {
        let ctx = CallContext::of(&request).ok();
        let stream = self.deployment_watch(ctx, request.into_inner()).await;
        respond(stream.map(|s| Box::pin(s) as WatchDeploymentStream))
    }
    #[instrument(skip_all)]
    async fn get_deployment_log(
        &self,
        request: Request<pb::GetDeploymentLogRequest>,
    ) -> RpcResult<pb::GetDeploymentLogResponse> {
        respond(self.deployment_log_get(request.get_ref()).await)
    }
}
