//! `EnvironmentService`: a tenant's environments — their settings, deployment freezes (locks),
//! expiry, and the lifecycle of the driver steps that provision and tear them down.
//!
//! An environment row holds the encoded proto (`body`, the source of truth for what clients see)
//! and the columns queries filter and sort on, written together by [`environment_write`]; labels
//! are mirrored into `environment_labels` so `labels.<key>` filters run in SQL. The provision and
//! teardown steps are run by the deployment engine ([`crate::deployments::engine`]): this module
//! only queues them (`op_type`/`op_state` PENDING) or asks a running one to stop (`op_cancel`),
//! and the engine records how they went. Every client mutation commits with its audit record.
//!
//! Writers take the row lock before reading (a no-op UPDATE, as the engine does), so a client
//! call and a worker finishing a step never overwrite each other's body on PostgreSQL.

mod validate;

use std::sync::Arc;
use std::time::Duration;

use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as pb;
use prost::Message;
use sqlx::Row;
use tokio::sync::Notify;
use tonic::{Request, Status};
use tracing::instrument;

use crate::audit::{AuditLog, WatchAccess, micros, timestamp};
use crate::authz::Gate;
use crate::config::EngineConfig;
use crate::context::CallContext;
use crate::deployments::engine::{PURGE_AFTER_US, environment_note};
use crate::error::{Error, FieldViolation, RpcResult, respond};
use crate::filter::{self, Op, Param, bind_params};
use crate::idempotency;
use crate::names::{self, parse_child_name, parse_tenant_name};
use crate::pagination::{self, OrderKey};
use crate::store::{Store, WriteTx, now_micros};

use validate::{Expiry, StepKinds};

/// Setting or changing a driver needs this as well: a `command` driver runs programs on our hosts.
const DRIVERS_PERMISSION: &str = "environments.drivers.update";
const DELETE_METHOD: &str = "/platform.environments.v1.EnvironmentService/DeleteEnvironment";
const DELETE_PERMISSION: &str = "environments.environments.delete";

const PROVISIONING: i32 = pb::EnvironmentState::Provisioning as i32;
const READY: i32 = pb::EnvironmentState::Ready as i32;
const FAILED: i32 = pb::EnvironmentState::Failed as i32;
const TERMINATING: i32 = pb::EnvironmentState::Terminating as i32;
const TERMINATED: i32 = pb::EnvironmentState::Terminated as i32;

const OP_NONE: i64 = pb::EnvironmentOperationType::Unspecified as i64;
const OP_PROVISION: i64 = pb::EnvironmentOperationType::Provision as i64;
const OP_TEARDOWN: i64 = pb::EnvironmentOperationType::Teardown as i64;
const OP_PENDING: i64 = pb::EnvironmentOperationState::Pending as i64;
const OP_RUNNING: i64 = pb::EnvironmentOperationState::Running as i64;
const OP_SKIPPED: i64 = pb::EnvironmentOperationState::Skipped as i64;
const OP_CANCELLED: i64 = pb::EnvironmentOperationState::Cancelled as i64;

const DEPLOYMENT_QUEUED: i64 = dpb::DeploymentState::Queued as i64;
const DEPLOYMENT_RUNNING: i64 = dpb::DeploymentState::Running as i64;

/// An environment as stored: its proto and the engine's columns.
#[derive(Debug, Clone)]
struct EnvironmentRow {
    tenant: String,
    id: String,
    body: pb::Environment,
    log_seq: i64,
    op_type: i64,
    op_state: i64,
    op_cancel: bool,
}

const ROW_COLUMNS: &str = "tenant, id, body, etag, log_seq, op_type, op_state, op_cancel";

fn environment_from_row(row: &sqlx::any::AnyRow) -> Result<EnvironmentRow, Error> {
    let body: Vec<u8> = row.try_get("body")?;
    let mut body = pb::Environment::decode(body.as_slice())
        .map_err(|e| Error::internal(format!("stored environment: {e}")))?;
    body.etag = row.try_get("etag")?;
    Ok(EnvironmentRow {
        tenant: row.try_get("tenant")?,
        id: row.try_get("id")?,
        body,
        log_seq: row.try_get("log_seq")?,
        op_type: row.try_get("op_type")?,
        op_state: row.try_get("op_state")?,
        op_cancel: row.try_get::<i64, _>("op_cancel")? == 1,
    })
}

async fn environment_load<'e, E>(
    executor: E,
    tenant: &str,
    id: &str,
) -> Result<Option<EnvironmentRow>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {ROW_COLUMNS} FROM environments WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(executor)
    .await?;
    row.map(|row| environment_from_row(&row)).transpose()
}

/// Reads an environment to change it, holding its row lock until `tx` ends.
async fn environment_load_for_update(
    tx: &mut WriteTx,
    tenant: &str,
    id: &str,
) -> Result<Option<EnvironmentRow>, Error> {
    crate::store::row_lock(tx, "environments", tenant, id).await?;
    environment_load(&mut **tx, tenant, id).await
}

fn expire_micros(env: &pb::Environment) -> Option<i64> {
    match &env.expiration {
        Some(pb::environment::Expiration::ExpireTime(t)) => micros(&Some(*t)),
        _ => None,
    }
}

fn resource_name(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/environments/{id}")
}

fn actor(ctx: &CallContext) -> pb::Actor {
    pb::Actor {
        principal: ctx.principal.clone(),
        display_name: String::new(),
    }
}

fn state_name(state: i32) -> &'static str {
    pb::EnvironmentState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("ENVIRONMENT_STATE_"))
        .unwrap_or("UNSPECIFIED")
}

/// Inserts (`insert`) or rewrites an environment: body, mirrored columns, step columns and
/// labels, with a new etag and update time.
async fn environment_write(
    tx: &mut WriteTx,
    env: &mut EnvironmentRow,
    insert: bool,
) -> Result<(), Error> {
    let now = now_micros();
    env.body.update_time = Some(timestamp(now));
    env.body.etag = uuid::Uuid::new_v4().simple().to_string();
    let promotes_to = parse_child_name("promotes_to", &env.body.promotes_to, "environments")
        .map(|(_, id)| id)
        .unwrap_or_default();
    // An update also matches the immutable uid and create time, so a worker or a slow call can
    // never write over an environment that was purged and created again under the same id.
    let sql = if insert {
        "INSERT INTO environments (type, state, locked, promotes_to, display_name, expire_time_us, update_time_us, \
         purge_time_us, etag, body, op_type, op_state, op_cancel, create_time_us, uid, tenant, id, lease_owner, lease_expires_us, log_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, '', 0, 0)"
    } else {
        "UPDATE environments SET type = $1, state = $2, locked = $3, promotes_to = $4, display_name = $5, \
         expire_time_us = $6, update_time_us = $7, purge_time_us = $8, etag = $9, body = $10, op_type = $11, \
         op_state = $12, op_cancel = $13 WHERE create_time_us = $14 AND uid = $15 AND tenant = $16 AND id = $17"
    };
    sqlx::query(sql)
        .bind(i64::from(env.body.r#type))
        .bind(i64::from(env.body.state))
        .bind(i64::from(env.body.lock.is_some()))
        .bind(promotes_to)
        .bind(&env.body.display_name)
        .bind(expire_micros(&env.body))
        .bind(now)
        .bind(micros(&env.body.purge_time))
        .bind(&env.body.etag)
        .bind(env.body.encode_to_vec())
        .bind(env.op_type)
        .bind(env.op_state)
        .bind(i64::from(env.op_cancel))
        .bind(micros(&env.body.create_time).unwrap_or(now))
        .bind(&env.body.uid)
        .bind(&env.tenant)
        .bind(&env.id)
        .execute(&mut **tx)
        .await?;
    crate::store::labels_replace(
        tx,
        "environment_labels",
        "environment",
        &env.tenant,
        &env.id,
        &env.body.labels,
    )
    .await
}

/// The call a mutation of one environment comes from.
struct Mutation<'a> {
    name: &'a str,
    /// When not empty, the change is made only if it matches the current etag.
    etag: &'a str,
    request_id: &'a str,
    validate_only: bool,
}

/// The `EnvironmentService` implementation, and the preview-environment reaper.
#[derive(Debug, Clone)]
pub struct EnvironmentService {
    store: Store,
    audit: AuditLog,
    gate: Gate,
    /// Wakes the engine's workers when a step is queued or a lock is lifted.
    work: Arc<Notify>,
    config: EngineConfig,
    watch_access: Option<WatchAccess>,
}

impl EnvironmentService {
    pub fn new(
        store: Store,
        audit: AuditLog,
        gate: Gate,
        work: Arc<Notify>,
        config: EngineConfig,
        watch_access: Option<WatchAccess>,
    ) -> Self {
        EnvironmentService {
            store,
            audit,
            gate,
            work,
            config,
            watch_access,
        }
    }

    fn require_driver_permission(&self, ctx: &CallContext, resource: &str) -> Result<(), Error> {
        if self.gate.allows(ctx, resource, DRIVERS_PERMISSION) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                message: format!(
                    "{} lacks `{DRIVERS_PERMISSION}` on {resource}, needed to set a driver",
                    ctx.principal
                ),
            })
        }
    }

    /// Checks `promotes_to` (a resource name, possibly empty) for the environment `id`: same
    /// tenant, exists, not itself, no cycle.
    async fn promotes_to_check(
        tx: &mut WriteTx,
        tenant: &str,
        id: &str,
        promotes_to: &str,
    ) -> Result<(), Error> {
        if promotes_to.is_empty() {
            return Ok(());
        }
        let field = "environment.promotes_to";
        let (t, mut next) = parse_child_name(field, promotes_to, "environments")?;
        if t != tenant {
            return Err(Error::invalid_argument(
                field,
                "must be an environment of the same tenant",
            ));
        }
        if next == id {
            return Err(Error::invalid_argument(
                field,
                "an environment cannot promote to itself",
            ));
        }
        let mut first = true;
        for _ in 0..1000 {
            let row: Option<String> = sqlx::query_scalar(
                "SELECT promotes_to FROM environments WHERE tenant = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(&next)
            .fetch_optional(&mut **tx)
            .await?;
            match row {
                None if first => {
                    return Err(Error::NotFound {
                        resource_type: "environment",
                        name: promotes_to.to_owned(),
                    });
                }
                None => return Ok(()),
                Some(after) if after.is_empty() => return Ok(()),
                Some(after) if after == id => {
                    return Err(Error::invalid_argument(
                        field,
                        "would make a cycle in the promotion order",
                    ));
                }
                Some(after) => next = after,
            }
            first = false;
        }
        Err(Error::invalid_argument(
            field,
            "the promotion order is too long",
        ))
    }

    /// The environment a stored idempotent response names, as it is now.
    async fn current(&self, stored: pb::Environment) -> Result<pb::Environment, Error> {
        let Ok((tenant, id)) = parse_child_name("name", &stored.name, "environments") else {
            return Ok(stored);
        };
        Ok(environment_load(self.store.pool(), &tenant, &id)
            .await?
            .map(|e| e.body)
            .unwrap_or(stored))
    }

    #[instrument(skip_all)]
    async fn environment_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        names::validate_id("environment_id", &req.environment_id)?;
        idempotency::validate(&req.request_id)?;
        let given = req
            .environment
            .ok_or_else(|| Error::invalid_argument("environment", "required"))?;
        let now = now_micros();
        let mut violations = Vec::new();
        if !matches!(
            pb::EnvironmentType::try_from(given.r#type),
            Ok(t) if t != pb::EnvironmentType::Unspecified
        ) {
            violations.push(FieldViolation::new(
                "environment.type",
                "required: DEVELOPMENT, STAGING, PRODUCTION or PREVIEW",
            ));
        }
        validate::settings(&given, &mut violations);
        let expiry = validate::expiry(
            given.r#type,
            "environment",
            given.expiration.as_ref(),
            now,
            self.config.max_ttl,
            &mut violations,
        );
        if let Some(driver) = &given.driver {
            validate::driver("environment.driver", driver, &mut violations);
        }
        validate::secret_bindings(&tenant, &given.secret_bindings, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        if given.driver.is_some() {
            self.require_driver_permission(ctx, &req.parent)?;
        }
        let name = resource_name(&tenant, &req.environment_id);
        let driver = given.driver.clone().unwrap_or_else(|| pb::Driver {
            driver: Some(pb::driver::Driver::Noop(pb::NoopDriver::default())),
        });
        let steps = StepKinds::of(&driver);
        let mut body = pb::Environment {
            name: name.clone(),
            uid: if req.validate_only {
                String::new()
            } else {
                uuid::Uuid::new_v4().to_string()
            },
            display_name: if given.display_name.is_empty() {
                req.environment_id.clone()
            } else {
                given.display_name.clone()
            },
            description: given.description.clone(),
            r#type: given.r#type,
            labels: given.labels.clone(),
            annotations: given.annotations.clone(),
            variables: given.variables.clone(),
            secret_bindings: given.secret_bindings.clone(),
            promotes_to: given.promotes_to.clone(),
            expiration: match expiry {
                Expiry::At(t) => Some(pb::environment::Expiration::ExpireTime(timestamp(t))),
                Expiry::Never | Expiry::Unchanged => None,
            },
            driver: Some(driver),
            creator: Some(actor(ctx)),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
            ..Default::default()
        };
        let provisioning = pb::EnvironmentOperation {
            r#type: OP_PROVISION as i32,
            create_time: Some(timestamp(now)),
            requested_by: Some(actor(ctx)),
            ..Default::default()
        };
        let (op_type, op_state) = if steps.provision {
            body.state = PROVISIONING;
            body.state_message = "waiting for the provision step".into();
            body.provisioning = Some(pb::EnvironmentOperation {
                state: OP_PENDING as i32,
                ..provisioning
            });
            (OP_PROVISION, OP_PENDING)
        } else {
            body.state = READY;
            body.provisioning = Some(pb::EnvironmentOperation {
                state: OP_SKIPPED as i32,
                end_time: Some(timestamp(now)),
                ..provisioning
            });
            (OP_NONE, OP_SKIPPED)
        };
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Environment>(&mut tx, ctx, &req.request_id).await?
        {
            drop(tx);
            return self.current(previous).await;
        }
        let result = async {
            crate::iam::tenant_require(&mut tx, &tenant).await?;
            let taken: Option<String> =
                sqlx::query_scalar("SELECT id FROM environments WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&req.environment_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(Error::AlreadyExists {
                    resource_type: "environment",
                    name: name.clone(),
                });
            }
            Self::promotes_to_check(&mut tx, &tenant, &req.environment_id, &body.promotes_to)
                .await?;
            crate::secrets::inject::bindings_check(
                &mut tx,
                &self.gate,
                ctx,
                &req.environment_id,
                &body.secret_bindings,
                &Default::default(),
            )
            .await?;
            if req.validate_only {
                return Ok(body.clone());
            }
            let mut env = EnvironmentRow {
                tenant: tenant.clone(),
                id: req.environment_id.clone(),
                body: body.clone(),
                log_seq: 0,
                op_type,
                op_state,
                op_cancel: false,
            };
            environment_write(&mut tx, &mut env, true).await?;
            if steps.provision {
                environment_note(
                    &mut tx,
                    &tenant,
                    &env.id,
                    OP_PROVISION,
                    0,
                    format!("provision queued by {}", ctx.principal),
                )
                .await?;
            }
            idempotency::remember(&mut tx, ctx, &req.request_id, &env.body).await?;
            Ok(env.body)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        let env = self.audit.finish(ctx, tx, result, &["environment"]).await?;
        self.work.notify_one();
        Ok(env)
    }

    async fn environment_get(&self, name: &str) -> Result<EnvironmentRow, Error> {
        let (tenant, id) = parse_child_name("name", name, "environments")?;
        environment_load(self.store.pool(), &tenant, &id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "environment",
                name: name.to_owned(),
            })
    }

    #[instrument(skip_all)]
    async fn environments_list(
        &self,
        req: &pb::ListEnvironmentsRequest,
    ) -> Result<pb::ListEnvironmentsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        let page_size = pagination::page_size(req.page_size)?;
        let order = parse_order_by(&req.order_by)?;
        let mut params: Vec<Param> = Vec::new();
        let mut where_sql = String::from(" WHERE e.tenant = $1");
        if !req.show_deleted {
            params.push(Param::Int(i64::from(TERMINATED)));
            where_sql.push_str(&format!(" AND e.state <> ${}", params.len() + 1));
        }
        if let Some(expr) = filter::parse_expr(&req.filter)? {
            let clause = filter::expr_sql(&expr, &mut |term| term_sql(term, &tenant, &mut params))?;
            where_sql.push_str(" AND ");
            where_sql.push_str(&clause);
        }
        let fingerprint = pagination::query_fingerprint(&[
            &tenant,
            &req.filter,
            &req.order_by,
            if req.show_deleted { "deleted" } else { "" },
        ]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?;
        let total: i64 = bind_params(
            sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM environments e{where_sql}"
            ))
            .bind(&tenant),
            &params,
        )
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        let keyset = pagination::Keyset::new(&order, after.as_deref())?;
        let sql = format!(
            "SELECT e.tenant, e.id, e.body, e.etag, e.log_seq, e.op_type, e.op_state, e.op_cancel, {} FROM environments e{where_sql}{}{}",
            keyset.select_columns(),
            keyset.after_sql(params.len() + 2)?,
            keyset.order_sql(page_size + 1),
        );
        let query = keyset.bind(bind_params(sqlx::query(&sql).bind(&tenant), &params))?;
        let rows = query.fetch_all(self.store.pool()).await?;
        let (environments, next_page_token) =
            keyset.page(fingerprint, &rows, page_size, |row| {
                environment_from_row(row).map(|e| e.body)
            })?;
        Ok(pb::ListEnvironmentsResponse {
            environments,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    /// Runs `change` on the environment `name` under its row lock, checking `etag`, and commits
    /// the result with its audit record. `change` returns whether it changed anything.
    async fn environment_mutate<F>(
        &self,
        ctx: &CallContext,
        call: Mutation<'_>,
        changed_fields: &[&str],
        change: F,
    ) -> Result<pb::Environment, Error>
    where
        F: for<'a> FnOnce(
            &'a mut WriteTx,
            &'a mut EnvironmentRow,
        ) -> futures::future::BoxFuture<'a, Result<bool, Error>>,
    {
        let Mutation {
            name,
            etag,
            request_id,
            validate_only,
        } = call;
        let (tenant, id) = parse_child_name("name", name, "environments")?;
        idempotency::validate(request_id)?;
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Environment>(&mut tx, ctx, request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let mut env = environment_load_for_update(&mut tx, &tenant, &id)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "environment",
                    name: name.to_owned(),
                })?;
            if !etag.is_empty() && etag != env.body.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the environment changed since it was read".into(),
                });
            }
            let changed = change(&mut tx, &mut env).await?;
            if changed && !validate_only {
                environment_write(&mut tx, &mut env, false).await?;
            }
            if !validate_only {
                idempotency::remember(&mut tx, ctx, request_id, &env.body).await?;
            }
            Ok(env.body)
        }
        .await;
        if validate_only {
            drop(tx);
            return result;
        }
        let env = self.audit.finish(ctx, tx, result, changed_fields).await?;
        self.work.notify_waiters();
        self.work.notify_one();
        Ok(env)
    }

    #[instrument(skip_all)]
    async fn environment_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        let given = req
            .environment
            .ok_or_else(|| Error::invalid_argument("environment", "required"))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let fields = validate::update_mask(&mask)?;
        let now = now_micros();
        let mut violations = Vec::new();
        validate::settings(&given, &mut violations);
        if fields.secret_bindings {
            let tenant = names::tenant_of(&given.name).unwrap_or_default();
            validate::secret_bindings(tenant, &given.secret_bindings, &mut violations);
        }
        if fields.driver
            && let Some(driver) = &given.driver
        {
            validate::driver("environment.driver", driver, &mut violations);
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        if fields.driver {
            self.require_driver_permission(ctx, &given.name)?;
        }
        let max_ttl = self.config.max_ttl;
        let (gate, caller) = (self.gate.clone(), ctx.clone());
        let changed: Vec<&str> = fields.names();
        let (name, etag) = (given.name.clone(), given.etag.clone());
        self.environment_mutate(
            ctx,
            Mutation {
                name: &name,
                etag: &etag,
                request_id: &req.request_id,
                validate_only: req.validate_only,
            },
            &changed,
            move |tx, env| {
                Box::pin(async move {
                    if matches!(env.body.state, TERMINATING | TERMINATED) {
                        return Err(Error::FailedPrecondition {
                            message: format!(
                                "the environment is {} and can no longer be changed",
                                state_name(env.body.state)
                            ),
                        });
                    }
                    let b = &mut env.body;
                    if fields.display_name {
                        b.display_name = if given.display_name.is_empty() {
                            env.id.clone()
                        } else {
                            given.display_name.clone()
                        };
                    }
                    if fields.description {
                        b.description = given.description.clone();
                    }
                    if fields.labels {
                        b.labels = given.labels.clone();
                    }
                    if fields.annotations {
                        b.annotations = given.annotations.clone();
                    }
                    if fields.variables {
                        b.variables = given.variables.clone();
                    }
                    if fields.secret_bindings {
                        crate::secrets::inject::bindings_check(
                            tx,
                            &gate,
                            &caller,
                            &env.id,
                            &given.secret_bindings,
                            &b.secret_bindings,
                        )
                        .await?;
                        b.secret_bindings = given.secret_bindings.clone();
                    }
                    if fields.driver {
                        b.driver = Some(given.driver.clone().unwrap_or_else(|| pb::Driver {
                            driver: Some(pb::driver::Driver::Noop(pb::NoopDriver::default())),
                        }));
                    }
                    if fields.expiration {
                        let mut violations = Vec::new();
                        match validate::expiry(
                            b.r#type,
                            "environment",
                            given.expiration.as_ref(),
                            now,
                            max_ttl,
                            &mut violations,
                        ) {
                            _ if !violations.is_empty() => {
                                return Err(Error::InvalidArgument(violations));
                            }
                            Expiry::At(t) => {
                                b.expiration =
                                    Some(pb::environment::Expiration::ExpireTime(timestamp(t)));
                            }
                            Expiry::Never | Expiry::Unchanged => b.expiration = None,
                        }
                    }
                    if fields.promotes_to {
                        let (tenant, id) = (env.tenant.clone(), env.id.clone());
                        Self::promotes_to_check(tx, &tenant, &id, &given.promotes_to).await?;
                        env.body.promotes_to = given.promotes_to.clone();
                    }
                    Ok(true)
                })
            },
        )
        .await
    }

    /// Starts terminating an environment (DeleteEnvironment, and the reaper with `force`).
    /// Returns whether anything changed.
    async fn environment_terminate(
        tx: &mut WriteTx,
        env: &mut EnvironmentRow,
        requested_by: pb::Actor,
        force: bool,
    ) -> Result<bool, Error> {
        let name = env.body.name.clone();
        if matches!(env.body.state, TERMINATING | TERMINATED) {
            return Ok(false);
        }
        if let Some(lock) = &env.body.lock {
            return Err(Error::FailedPrecondition {
                message: format!(
                    "environment {name} is locked ({}); unlock it first",
                    names::printable(&lock.reason)
                ),
            });
        }
        let active: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM deployments WHERE tenant = $1 AND environment = $2 AND state IN ($3, $4) GROUP BY state",
        )
        .bind(&env.tenant)
        .bind(&env.id)
        .bind(DEPLOYMENT_QUEUED)
        .bind(DEPLOYMENT_RUNNING)
        .fetch_all(&mut **tx)
        .await?;
        let running = active
            .iter()
            .any(|(state, n)| *state == DEPLOYMENT_RUNNING && *n > 0);
        if !active.is_empty() && !force {
            let count: i64 = active.iter().map(|(_, n)| n).sum();
            return Err(Error::FailedPrecondition {
                message: format!(
                    "{count} deployment(s) are queued or running in {name}; wait for them, cancel them, or delete with force"
                ),
            });
        }
        let provision_running = env.op_type == OP_PROVISION && env.op_state == OP_RUNNING;
        if provision_running && !force {
            return Err(Error::FailedPrecondition {
                message: format!(
                    "{name} is being provisioned; delete with force to cancel the provision step"
                ),
            });
        }
        let now = now_micros();
        if running {
            // Running deployments stop when their workers next renew their lease; queued ones
            // are cancelled by the engine because the environment no longer takes deployments.
            sqlx::query(
                "UPDATE deployments SET cancel_requested = 1 WHERE tenant = $1 AND environment = $2 AND state = $3",
            )
            .bind(&env.tenant)
            .bind(&env.id)
            .bind(DEPLOYMENT_RUNNING)
            .execute(&mut **tx)
            .await?;
        }
        let was_failed = env.body.state == FAILED;
        let nothing_provisioned = env.op_type == OP_PROVISION
            && env.op_state == OP_PENDING
            && env.body.state == PROVISIONING;
        if nothing_provisioned {
            // The provision step never started: there is nothing to tear down.
            let p = env.body.provisioning.get_or_insert_with(Default::default);
            p.state = OP_CANCELLED as i32;
            p.end_time = Some(timestamp(now));
        }
        let teardown_step = env
            .body
            .driver
            .as_ref()
            .is_some_and(|d| StepKinds::of(d).teardown);
        let skip = nothing_provisioned
            || (was_failed && force)
            || (!teardown_step && !running && !provision_running);
        env.body.delete_time = Some(timestamp(now));
        let mut teardown = pb::EnvironmentOperation {
            r#type: OP_TEARDOWN as i32,
            state: OP_PENDING as i32,
            create_time: Some(timestamp(now)),
            requested_by: Some(requested_by.clone()),
            ..Default::default()
        };
        if skip {
            teardown.state = OP_SKIPPED as i32;
            teardown.end_time = Some(timestamp(now));
            env.body.state = TERMINATED;
            env.body.state_message = String::new();
            env.body.purge_time = Some(timestamp(now + PURGE_AFTER_US));
            env.op_type = OP_TEARDOWN;
            env.op_state = OP_SKIPPED;
            env.op_cancel = false;
        } else {
            env.body.state = TERMINATING;
            env.body.state_message = format!("termination requested by {}", requested_by.principal);
            if provision_running {
                // The engine stops the provision step, then runs the teardown (op_type follows).
                env.op_cancel = true;
            } else {
                env.op_type = OP_TEARDOWN;
                env.op_state = OP_PENDING;
                env.op_cancel = false;
            }
        }
        env.body.teardown = Some(teardown);
        environment_note(
            tx,
            &env.tenant,
            &env.id,
            OP_TEARDOWN,
            0,
            if skip {
                format!(
                    "TERMINATED by {}: nothing to tear down",
                    requested_by.principal
                )
            } else {
                format!("teardown queued by {}", requested_by.principal)
            },
        )
        .await?;
        Ok(true)
    }

    #[instrument(skip_all)]
    async fn environment_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        let by = actor(ctx);
        let force = req.force;
        self.environment_mutate(
            ctx,
            Mutation {
                name: &req.name,
                etag: &req.etag,
                request_id: &req.request_id,
                validate_only: req.validate_only,
            },
            &["state"],
            move |tx, env| Box::pin(Self::environment_terminate(tx, env, by, force)),
        )
        .await
    }

    #[instrument(skip_all)]
    async fn environment_lock(
        &self,
        ctx: &CallContext,
        req: pb::LockEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        let reason_len = req.reason.chars().count();
        if reason_len == 0 || reason_len > 1024 || req.reason.chars().any(|c| c == '\0') {
            return Err(Error::invalid_argument(
                "reason",
                "required: 1-1024 characters, no NUL",
            ));
        }
        let lock = pb::EnvironmentLock {
            reason: req.reason.clone(),
            locked_by: Some(actor(ctx)),
            lock_time: Some(timestamp(now_micros())),
        };
        self.environment_mutate(
            ctx,
            Mutation {
                name: &req.name,
                etag: &req.etag,
                request_id: &req.request_id,
                validate_only: false,
            },
            &["lock"],
            move |_tx, env| {
                Box::pin(async move {
                    if let Some(existing) = &env.body.lock {
                        return Err(Error::FailedPrecondition {
                            message: format!(
                                "the environment is already locked by {}: {}",
                                existing
                                    .locked_by
                                    .as_ref()
                                    .map(|a| a.principal.as_str())
                                    .unwrap_or("?"),
                                names::printable(&existing.reason)
                            ),
                        });
                    }
                    if matches!(env.body.state, TERMINATING | TERMINATED) {
                        return Err(Error::FailedPrecondition {
                            message: format!("the environment is {}", state_name(env.body.state)),
                        });
                    }
                    env.body.lock = Some(lock);
                    Ok(true)
                })
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn environment_unlock(
        &self,
        ctx: &CallContext,
        req: pb::UnlockEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        self.environment_mutate(
            ctx,
            Mutation {
                name: &req.name,
                etag: &req.etag,
                request_id: &req.request_id,
                validate_only: false,
            },
            &["lock"],
            |_tx, env| {
                Box::pin(async move {
                    if env.body.lock.take().is_none() {
                        return Err(Error::FailedPrecondition {
                            message: "the environment is not locked".into(),
                        });
                    }
                    Ok(true)
                })
            },
        )
        .await
    }

    #[instrument(skip_all)]
    async fn environment_renew(
        &self,
        ctx: &CallContext,
        req: pb::RenewEnvironmentRequest,
    ) -> Result<pb::Environment, Error> {
        let now = now_micros();
        let expiration = match req.expiration {
            Some(pb::renew_environment_request::Expiration::ExpireTime(t)) => {
                pb::environment::Expiration::ExpireTime(t)
            }
            Some(pb::renew_environment_request::Expiration::Ttl(d)) => {
                pb::environment::Expiration::Ttl(d)
            }
            None => {
                return Err(Error::invalid_argument(
                    "expiration",
                    "required: set expire_time or ttl",
                ));
            }
        };
        let mut violations = Vec::new();
        let expiry = validate::expiry(
            pb::EnvironmentType::Preview as i32,
            "",
            Some(&expiration),
            now,
            self.config.max_ttl,
            &mut violations,
        );
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let Expiry::At(at) = expiry else {
            return Err(Error::invalid_argument("expiration", "required"));
        };
        self.environment_mutate(
            ctx,
            Mutation {
                name: &req.name,
                etag: &req.etag,
                request_id: &req.request_id,
                validate_only: false,
            },
            &["expire_time"],
            move |_tx, env| {
                Box::pin(async move {
                    if matches!(env.body.state, TERMINATING | TERMINATED) {
                        return Err(Error::FailedPrecondition {
                            message: format!(
                                "the environment is {}",
                                state_name(env.body.state)
                            ),
                        });
                    }
                    if expire_micros(&env.body).is_none() {
                        return Err(Error::FailedPrecondition {
                            message: "the environment has no expiry to renew; set one with UpdateEnvironment".into(),
                        });
                    }
                    env.body.expiration =
                        Some(pb::environment::Expiration::ExpireTime(timestamp(at)));
                    Ok(true)
                })
            },
        )
        .await
    }

    async fn log_page(
        &self,
        tenant: &str,
        id: &str,
        operation: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<pb::LogLine>, Error> {
        let rows = sqlx::query(
            "SELECT seq, time_us, operation, stream, text, truncated, attempt FROM environment_log \
             WHERE tenant = $1 AND environment = $2 AND seq > $3 AND ($4 = 0 OR operation = $4) ORDER BY seq LIMIT $5",
        )
        .bind(tenant)
        .bind(id)
        .bind(after)
        .bind(operation)
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(pb::LogLine {
                    sequence: row.try_get("seq")?,
                    time: Some(timestamp(row.try_get("time_us")?)),
                    operation: row.try_get::<i64, _>("operation")? as i32,
                    stream: row.try_get::<i64, _>("stream")? as i32,
                    text: row.try_get("text")?,
                    truncated: row.try_get::<i64, _>("truncated")? == 1,
                    attempt: row.try_get::<i64, _>("attempt")? as i32,
                })
            })
            .collect()
    }

    #[instrument(skip_all)]
    async fn environment_log_get(
        &self,
        req: &pb::GetEnvironmentLogRequest,
    ) -> Result<pb::GetEnvironmentLogResponse, Error> {
        let env = self.environment_get(&req.name).await?;
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
        let operation = match pb::EnvironmentOperationType::try_from(req.operation) {
            Ok(op) => op as i64,
            Err(_) => {
                return Err(Error::invalid_argument(
                    "operation",
                    "UNSPECIFIED, PROVISION or TEARDOWN",
                ));
            }
        };
        let limit = match req.page_size {
            n if n < 0 => return Err(Error::invalid_argument("page_size", "must not be negative")),
            0 => 1000,
            n => i64::from(n).min(10_000),
        };
        let fingerprint = pagination::query_fingerprint(&[&req.name, &operation.to_string()]);
        let after = match pagination::decode_token(fingerprint, &req.page_token)? {
            Some(t) => t.parse().map_err(|_| {
                Error::invalid_argument("page_token", "not a page token of this query")
            })?,
            None => req.after_sequence,
        };
        let lines = self
            .log_page(&env.tenant, &env.id, operation, after, limit)
            .await?;
        let full_page = lines.len() as i64 == limit;
        let last = lines.last().map(|l| l.sequence).unwrap_or(after);
        Ok(pb::GetEnvironmentLogResponse {
            next_page_token: if full_page && last < env.log_seq {
                pagination::encode_token(fingerprint, &last.to_string())
            } else {
                String::new()
            },
            lines,
        })
    }

    async fn environment_watch(
        &self,
        ctx: Option<CallContext>,
        req: pb::WatchEnvironmentRequest,
    ) -> Result<
        tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEnvironmentResponse, Status>>,
        Error,
    > {
        if req.after_sequence < 0 {
            return Err(Error::invalid_argument(
                "after_sequence",
                "must not be negative",
            ));
        }
        let first = self.environment_get(&req.name).await?;
        let (tenant, id) = (first.tenant.clone(), first.id.clone());
        let (out, rx) = tokio::sync::mpsc::channel(256);
        let service = self.clone();
        let notify = self.audit.committed_signal();
        tokio::spawn(async move {
            use pb::watch_environment_response::Event;
            let send = |event: Event| {
                let out = out.clone();
                async move {
                    out.send(Ok(pb::WatchEnvironmentResponse { event: Some(event) }))
                        .await
                        .is_ok()
                }
            };
            let mut etag = first.body.etag.clone();
            if !send(Event::Environment(first.body)).await {
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
                // Lines first, then the state: the TERMINATED snapshot comes after every line.
                loop {
                    match service.log_page(&tenant, &id, 0, after, 500).await {
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
                let current = match environment_load(service.store.pool(), &tenant, &id).await {
                    Ok(Some(e)) => e,
                    Ok(None) => return, // purged
                    Err(err) => {
                        let _ = out.send(Err(err.into())).await;
                        return;
                    }
                };
                if current.body.etag != etag {
                    etag = current.body.etag.clone();
                    if !send(Event::Environment(current.body.clone())).await {
                        return;
                    }
                }
                if current.body.state == TERMINATED && after >= current.log_seq {
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

    /// Starts the background task that terminates expired preview environments (as
    /// `system:platformd`, audited, like a forced delete) and purges TERMINATED records past
    /// their purge time. It runs on one replica at a time (the holder of the `environment-reaper`
    /// task lease, taken over by another when it stops renewing), and each termination
    /// re-checks the row under its lock besides.
    pub fn start_reaper(&self) {
        let service = self.clone();
        tokio::spawn(async move {
            let ttl = service.config.reaper_interval * 3;
            loop {
                tokio::time::sleep(service.config.reaper_interval).await;
                if service.store.pool().is_closed() {
                    return; // shutting down
                }
                match service.store.task_lease("environment-reaper", ttl).await {
                    Ok(true) => {}
                    Ok(false) => continue, // another replica reaps
                    Err(err) => {
                        tracing::warn!(error = %err, "the reaper's lease could not be taken; retrying");
                        continue;
                    }
                }
                if let Err(err) = service.reap_once().await {
                    tracing::warn!(error = %err, "the preview-environment reaper failed; it will retry");
                }
            }
        });
    }

    /// One pass of the reaper.
    pub async fn reap_once(&self) -> Result<usize, Error> {
        let now = now_micros();
        let expired: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant, id FROM environments WHERE expire_time_us < $1 AND locked = 0 AND state IN ($2, $3, $4) LIMIT 100",
        )
        .bind(now)
        .bind(i64::from(PROVISIONING))
        .bind(i64::from(READY))
        .bind(i64::from(FAILED))
        .fetch_all(self.store.pool())
        .await?;
        let mut terminated = 0;
        for (tenant, id) in expired {
            let name = resource_name(&tenant, &id);
            let ctx = CallContext::system(DELETE_METHOD, DELETE_PERMISSION, Some(&tenant), &name);
            let by = actor(&ctx);
            let mut tx = self.store.write_tx().await?;
            let result: Result<bool, Error> = async {
                let Some(mut env) = environment_load_for_update(&mut tx, &tenant, &id).await?
                else {
                    return Ok(false);
                };
                let still_expired = expire_micros(&env.body).is_some_and(|t| t < now_micros());
                if !still_expired || env.body.lock.is_some() {
                    return Ok(false);
                }
                let changed = Self::environment_terminate(&mut tx, &mut env, by, true).await?;
                if changed {
                    environment_write(&mut tx, &mut env, false).await?;
                }
                Ok(changed)
            }
            .await;
            match result {
                Ok(true) => {
                    self.audit
                        .finish(&ctx, tx, Ok(()), &["state", "expire_time"])
                        .await?;
                    terminated += 1;
                    tracing::info!(environment = %name, "terminated an expired preview environment");
                }
                Ok(false) => drop(tx),
                Err(err) => {
                    drop(tx);
                    tracing::warn!(environment = %name, error = %err, "could not terminate an expired environment");
                }
            }
        }
        if terminated > 0 {
            self.work.notify_waiters();
        }
        self.purge(now).await?;
        Ok(terminated)
    }

    /// Removes TERMINATED environments whose purge time has passed, with their labels and log.
    async fn purge(&self, now: i64) -> Result<(), Error> {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT tenant, id FROM environments WHERE state = $1 AND purge_time_us < $2 LIMIT 100",
        )
        .bind(i64::from(TERMINATED))
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        for (tenant, id) in due {
            let mut tx = self.store.write_tx().await?;
            for table in [
                "DELETE FROM environment_log WHERE tenant = $1 AND environment = $2",
                "DELETE FROM environment_labels WHERE tenant = $1 AND environment = $2",
                "DELETE FROM environments WHERE tenant = $1 AND id = $2",
            ] {
                sqlx::query(table)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Parses ListEnvironments' `order_by`; `name` breaks ties.
fn parse_order_by(text: &str) -> Result<Vec<OrderKey>, Error> {
    const FIELDS: &[pagination::SortField] = &[
        ("name", "e.id", false),
        ("create_time", "e.create_time_us", true),
        // Environments that never expire sort after every expiring one.
        (
            "expire_time",
            "COALESCE(e.expire_time_us, 9223372036854775807)",
            true,
        ),
        ("display_name", "e.display_name", false),
    ];
    pagination::parse_order_by(
        text,
        FIELDS,
        "name, create_time, expire_time, display_name",
        &["e.id"],
    )
}

fn term_sql(term: &filter::Term, tenant: &str, params: &mut Vec<Param>) -> Result<String, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let field = term.field.as_str();
    let eq_op = |op: Op| match op {
        Op::Eq => Ok("="),
        Op::Ne => Ok("<>"),
        _ => Err(bad(format!(
            "`{}` supports = and !=",
            names::printable(field)
        ))),
    };
    let mut int = |column: &str, value: i64, op: &str| {
        params.push(Param::Int(value));
        format!("{column} {op} ${}", params.len() + 1)
    };
    if let Some(key) = field.strip_prefix("labels.") {
        let op = eq_op(term.op)?;
        params.push(Param::Text(key.to_owned()));
        let k = params.len() + 1;
        params.push(Param::Text(term.value.clone()));
        let v = params.len() + 1;
        let exists = format!(
            "EXISTS (SELECT 1 FROM environment_labels l WHERE l.tenant = e.tenant AND l.environment = e.id AND l.key = ${k} AND l.value = ${v})"
        );
        return Ok(if op == "=" {
            exists
        } else {
            format!("(NOT {exists})")
        });
    }
    match field {
        "type" => {
            let t = pb::EnvironmentType::from_str_name(&format!("ENVIRONMENT_TYPE_{}", term.value))
                .filter(|t| *t != pb::EnvironmentType::Unspecified)
                .ok_or_else(|| {
                    bad(format!(
                        "`{}` is not an environment type",
                        names::printable(&term.value)
                    ))
                })?;
            Ok(int("e.type", t as i64, eq_op(term.op)?))
        }
        "state" => {
            let s =
                pb::EnvironmentState::from_str_name(&format!("ENVIRONMENT_STATE_{}", term.value))
                    .filter(|s| *s != pb::EnvironmentState::Unspecified)
                    .ok_or_else(|| {
                        bad(format!(
                            "`{}` is not an environment state",
                            names::printable(&term.value)
                        ))
                    })?;
            Ok(int("e.state", s as i64, eq_op(term.op)?))
        }
        "locked" => {
            let locked = match term.value.as_str() {
                "true" => 1,
                "false" => 0,
                _ => return Err(bad("`locked` takes true or false".into())),
            };
            Ok(int("e.locked", locked, eq_op(term.op)?))
        }
        "promotes_to" => {
            let op = eq_op(term.op)?;
            let id = if term.value.is_empty() {
                String::new()
            } else {
                let (t, id) = parse_child_name("filter", &term.value, "environments")?;
                // Another tenant's environment is never a promotion target here.
                if t == tenant { id } else { "/".into() }
            };
            params.push(Param::Text(id));
            Ok(format!("e.promotes_to {op} ${}", params.len() + 1))
        }
        "expire_time" | "create_time" => {
            filter::time_term_sql(term, &format!("e.{field}_us"), params)
        }
        other => Err(bad(format!(
            "`{}` cannot be filtered on (fields: type, state, promotes_to, labels.<key>, locked, expire_time, create_time)",
            names::printable(other)
        ))),
    }
}

type WatchEnvironmentStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchEnvironmentResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::environment_service_server::EnvironmentService for EnvironmentService {
    #[instrument(skip_all)]
    async fn create_environment(
        &self,
        request: Request<pb::CreateEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_environment(
        &self,
        request: Request<pb::GetEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        respond(
            self.environment_get(&request.get_ref().name)
                .await
                .map(|e| e.body),
        )
    }
    #[instrument(skip_all)]
    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> RpcResult<pb::ListEnvironmentsResponse> {
        respond(self.environments_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_environment(
        &self,
        request: Request<pb::UpdateEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_environment(
        &self,
        request: Request<pb::DeleteEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn lock_environment(
        &self,
        request: Request<pb::LockEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_lock(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn unlock_environment(
        &self,
        request: Request<pb::UnlockEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_unlock(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn renew_environment(
        &self,
        request: Request<pb::RenewEnvironmentRequest>,
    ) -> RpcResult<pb::Environment> {
        let ctx = CallContext::of(&request)?;
        respond(self.environment_renew(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn watch_environment(
        &self,
        request: Request<pb::WatchEnvironmentRequest>,
    ) -> RpcResult<WatchEnvironmentStream> {
        let ctx = CallContext::of(&request).ok();
        let stream = self.environment_watch(ctx, request.into_inner()).await;
        respond(stream.map(|s| Box::pin(s) as WatchEnvironmentStream))
    }
    #[instrument(skip_all)]
    async fn get_environment_log(
        &self,
        request: Request<pb::GetEnvironmentLogRequest>,
    ) -> RpcResult<pb::GetEnvironmentLogResponse> {
        respond(self.environment_log_get(request.get_ref()).await)
    }
}
