//! `IamService`: tenants, roles, role bindings, groups, service accounts and their tokens, and
//! permission checks — handlers and their storage queries together.
//!
//! The gate (`authz`) has already authenticated the caller and authorized the RPC's permission
//! on the resource named in the request before any handler here runs. Mutations run in one write
//! transaction with their audit record (`AuditLog::finish`); a change to policy (bindings,
//! memberships, custom roles) is applied to the in-memory policy engine after it commits and
//! before the call returns, so the next request sees it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use platform_api::platform::iam::v1 as pb;
use platform_policy::{Binding, CustomRole, Membership, PolicyEngine, PolicySnapshot};
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::Request;
use tracing::instrument;

use crate::audit::{AuditLog, AuditRecord, Outcome, timestamp};
use crate::auth::Authenticator;
use crate::authz::Gate;
use crate::context::CallContext;
use crate::error::{Error, FieldViolation, RpcResult, respond};
use crate::idempotency;
use crate::names::{self, parse_child_name, parse_tenant_name, validate_id};
use crate::pagination::{self, paginate};
use crate::store::{Store, WriteTx, now_micros};

const BUILT_IN_TENANT_ROLES: [&str; 5] =
    ["viewer", "developer", "deployer", "secret-admin", "admin"];
const PLATFORM_ADMIN_ROLE: &str = "roles/platform-admin";
const TENANT_ACTIVE: i32 = pb::TenantState::Active as i32;
const TENANT_DELETED: i32 = pb::TenantState::Deleted as i32;

fn new_etag() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn to_json(map: &HashMap<String, String>) -> Result<String, Error> {
    serde_json::to_string(map).map_err(|e| Error::internal(format!("encoding a map: {e}")))
}

fn from_json(text: &str) -> HashMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn opt_time(us: Option<i64>) -> Option<prost_types::Timestamp> {
    us.map(timestamp)
}

fn check_etag(given: &str, current: &str) -> Result<(), Error> {
    if !given.is_empty() && given != current {
        return Err(Error::Aborted {
            message:
                "etag mismatch: the resource changed since it was read; read it again and retry"
                    .into(),
        });
    }
    Ok(())
}

fn violations_to_result(violations: Vec<FieldViolation>) -> Result<(), Error> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// `iam_group_members.source` of memberships mirrored from a linked catalog Group.
pub(crate) const CATALOG_MEMBER_SOURCE: i32 = pb::GroupMemberSource::Catalog as i32;

/// Maps a role name as bound (`tenants/{t}/roles/{r}` or `roles/platform-admin`) to the policy
/// engine's role key: a built-in id, or the custom role's full name.
pub(crate) fn policy_role_key(role_name: &str) -> String {
    if role_name == PLATFORM_ADMIN_ROLE {
        return "platform-admin".into();
    }
    match role_name.rsplit_once("/roles/") {
        Some((_, id)) if BUILT_IN_TENANT_ROLES.contains(&id) => id.to_owned(),
        _ => role_name.to_owned(),
    }
}

fn principal_tenant(principal: &str) -> Option<&str> {
    principal
        .strip_prefix("serviceAccount:")
        .or_else(|| principal.strip_prefix("group:"))
        .and_then(names::tenant_of)
}

/// Validates a bindable principal: `user:{sub}`, `serviceAccount:…` or `group:…`.
fn validate_principal(field: &str, principal: &str, allow_group: bool) -> Result<(), Error> {
    if let Some(subject) = principal.strip_prefix("user:") {
        if !subject.is_empty()
            && subject.len() <= 256
            && subject.bytes().all(|b| b.is_ascii_graphic())
        {
            return Ok(());
        }
    } else if let Some(name) = principal.strip_prefix("serviceAccount:") {
        if parse_child_name(field, name, "serviceAccounts").is_ok() {
            return Ok(());
        }
    } else if let Some(name) = principal.strip_prefix("group:")
        && allow_group
        && parse_child_name(field, name, "groups").is_ok()
    {
        return Ok(());
    }
    Err(Error::invalid_argument(
        field,
        if allow_group {
            "must be `user:{subject}`, `serviceAccount:tenants/{t}/serviceAccounts/{id}` or `group:tenants/{t}/groups/{id}`"
        } else {
            "must be `user:{subject}` or `serviceAccount:tenants/{t}/serviceAccounts/{id}`"
        },
    ))
}

/// Loads the whole policy from the database (at start-up, and as a periodic safety net).
pub async fn load_policy(store: &Store) -> Result<PolicySnapshot, Error> {
    let bindings = sqlx::query("SELECT tenant, principal, role, resource FROM iam_role_bindings")
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|row| {
            let tenant: String = row.try_get("tenant")?;
            let role: String = row.try_get("role")?;
            Ok(Binding {
                principal: row.try_get("principal")?,
                tenant: (!tenant.is_empty()).then_some(tenant),
                scope: row.try_get("resource")?,
                role: policy_role_key(&role),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let memberships = sqlx::query("SELECT tenant, group_id, member FROM iam_group_members")
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|row| {
            let tenant: String = row.try_get("tenant")?;
            let group: String = row.try_get("group_id")?;
            Ok(Membership {
                group: format!("group:tenants/{tenant}/groups/{group}"),
                tenant,
                member: row.try_get("member")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let custom_roles = sqlx::query("SELECT tenant, id, permissions FROM iam_roles")
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|row| {
            let tenant: String = row.try_get("tenant")?;
            let id: String = row.try_get("id")?;
            let permissions: String = row.try_get("permissions")?;
            Ok(CustomRole {
                name: format!("tenants/{tenant}/roles/{id}"),
                permissions: serde_json::from_str(&permissions).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(PolicySnapshot {
        bindings,
        memberships,
        custom_roles,
    })
}

/// NOT_FOUND unless `tenant` exists and is active (checked inside the caller's transaction).
pub async fn tenant_require(tx: &mut WriteTx, tenant: &str) -> Result<(), Error> {
    tenant_active(&mut **tx, tenant).await
}

/// NOT_FOUND unless `tenant` exists and is active (for reads outside a write transaction).
pub async fn tenant_active<'e, E>(executor: E, tenant: &str) -> Result<(), Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let state: Option<i32> = sqlx::query_scalar("SELECT state FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(executor)
        .await?;
    if state == Some(TENANT_ACTIVE) {
        Ok(())
    } else {
        Err(Error::NotFound {
            resource_type: "tenant",
            name: format!("tenants/{tenant}"),
        })
    }
}

/// Loads the policy and installs it unless the engine changed meanwhile (a change applied while
/// the snapshot was read would otherwise be undone). Returns whether it was installed.
async fn replace_policy_guarded(store: &Store, policy: &PolicyEngine) -> Result<bool, Error> {
    let generation = policy.generation();
    let snapshot = load_policy(store).await?;
    policy
        .replace_if_unchanged(snapshot, generation)
        .await
        .map_err(|e| Error::internal(format!("policy reload: {e}")))
}

/// Every revoked token id (loaded into the authenticator at start-up).
pub async fn load_revoked_tokens(
    store: &Store,
) -> Result<std::collections::HashSet<String>, Error> {
    Ok(sqlx::query_scalar::<_, String>(
        "SELECT jti FROM iam_tokens WHERE revoke_time_us IS NOT NULL",
    )
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .collect())
}

#[derive(Clone)]
pub struct IamService {
    store: Store,
    audit: AuditLog,
    gate: Gate,
    authenticator: Arc<Authenticator>,
    sync: Arc<PolicySync>,
}

/// Keeps this replica's policy and revoked tokens in step with the database: every policy change
/// bumps `policy_version` in its own transaction; a poller reloads when the version differs from
/// the one this replica has applied, so changes made on other replicas are in force within about
/// a second.
#[derive(Debug, Default)]
pub struct PolicySync {
    applied: std::sync::atomic::AtomicI64,
}

impl PolicySync {
    /// Records a version this replica produced and applied itself, if it directly follows the
    /// last one applied (otherwise another replica changed something too, and the poller reloads).
    fn note_local(&self, version: i64) {
        let _ = self.applied.compare_exchange(
            version - 1,
            version,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    /// The start-up load: the version first, then the policy and revocations it covers (a change
    /// committed in between only makes the data newer than the version, and the first poll
    /// reloads). The version becomes the applied one.
    pub async fn load_initial(
        &self,
        store: &Store,
    ) -> Result<(PolicySnapshot, std::collections::HashSet<String>), Error> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM policy_version WHERE id = 1")
            .fetch_one(store.pool())
            .await?;
        let snapshot = load_policy(store).await?;
        let revoked = load_revoked_tokens(store).await?;
        self.applied
            .store(version, std::sync::atomic::Ordering::Release);
        Ok((snapshot, revoked))
    }

    /// Reloads policy and revocations when the database's version differs from the applied one.
    pub async fn poll_once(
        &self,
        store: &Store,
        policy: &PolicyEngine,
        authenticator: &Authenticator,
    ) -> Result<bool, Error> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM policy_version WHERE id = 1")
            .fetch_one(store.pool())
            .await?;
        if version == self.applied.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        // Revocations only ever grow: add, never replace, so a revocation applied locally while
        // this snapshot was read cannot be undone by it.
        for jti in load_revoked_tokens(store).await? {
            authenticator.revoke(jti);
        }
        // A local change applied while the snapshot was read makes it stale: then keep the
        // policy and leave `applied` behind, so the next poll reloads.
        if !replace_policy_guarded(store, policy).await? {
            return Ok(false);
        }
        self.applied
            .store(version, std::sync::atomic::Ordering::Release);
        Ok(true)
    }

    /// Runs [`PolicySync::poll_once`] every `interval` until the process ends — and, on
    /// PostgreSQL, at once whenever another replica's policy change commits (LISTEN on
    /// [`POLICY_CHANNEL`]); the timer stays as the safety net for a lost connection.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        policy: Arc<PolicyEngine>,
        authenticator: Arc<Authenticator>,
        interval: Duration,
    ) {
        let mut listener = None;
        loop {
            if listener.is_none()
                && let Some(url) = store.postgres_url()
            {
                listener = policy_listener(url).await;
            }
            match &mut listener {
                Some(l) => {
                    tokio::select! {
                        received = l.recv() => {
                            if let Err(err) = received {
                                tracing::warn!(error = %err, "policy notifications lost; polling until reconnected");
                                listener = None;
                            }
                        }
                        () = tokio::time::sleep(interval) => {}
                    }
                }
                None => tokio::time::sleep(interval).await,
            }
            if store.pool().is_closed() {
                return; // shutting down
            }
            match self.poll_once(&store, &policy, &authenticator).await {
                Ok(true) => tracing::debug!("policy reloaded after a change on another replica"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "policy poll failed; keeping the current policy")
                }
            }
        }
    }
}

/// The PostgreSQL channel a policy change is announced on (in the changing transaction, so the
/// notification arrives only once the change is committed).
pub const POLICY_CHANNEL: &str = "platform_policy";

async fn policy_listener(url: &str) -> Option<sqlx::postgres::PgListener> {
    let mut listener = match sqlx::postgres::PgListener::connect(url).await {
        Ok(l) => l,
        Err(err) => {
            tracing::warn!(error = %err, "cannot LISTEN for policy changes; polling");
            return None;
        }
    };
    match listener.listen(POLICY_CHANNEL).await {
        Ok(()) => Some(listener),
        Err(err) => {
            tracing::warn!(error = %err, "cannot LISTEN for policy changes; polling");
            None
        }
    }
}

impl std::fmt::Debug for IamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IamService")
    }
}

impl IamService {
    pub fn new(
        store: Store,
        audit: AuditLog,
        gate: Gate,
        authenticator: Arc<Authenticator>,
        sync: Arc<PolicySync>,
    ) -> Self {
        IamService {
            store,
            audit,
            gate,
            authenticator,
            sync,
        }
    }

    /// `AuditLog::finish` for changes to policy: also bumps `policy_version` in the same
    /// transaction, so other replicas reload.
    async fn finish_policy<T>(
        &self,
        ctx: &CallContext,
        mut tx: WriteTx,
        result: Result<T, Error>,
        changed_fields: &[&str],
    ) -> Result<T, Error> {
        if result.is_ok() {
            let bumped = sqlx::query_scalar::<_, i64>(
                "UPDATE policy_version SET version = version + 1 WHERE id = 1 RETURNING version",
            )
            .fetch_one(&mut *tx)
            .await;
            let bumped = match (bumped, self.store.engine()) {
                (Ok(version), crate::store::Engine::Postgres) => {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(POLICY_CHANNEL)
                        .bind(version.to_string())
                        .execute(&mut *tx)
                        .await
                        .map(|_| version)
                }
                (other, _) => other,
            };
            match bumped {
                Ok(version) => self.sync.note_local(version),
                Err(err) => {
                    return self
                        .audit
                        .finish(ctx, tx, Err(Error::from(err)), changed_fields)
                        .await;
                }
            }
        }
        self.audit.finish(ctx, tx, result, changed_fields).await
    }

    fn policy(&self) -> &Arc<PolicyEngine> {
        self.gate.policy()
    }

    // ---------------------------------------------------------------- tenants

    #[instrument(skip_all)]
    async fn tenant_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateTenantRequest,
    ) -> Result<pb::Tenant, Error> {
        validate_id("tenant_id", &req.tenant_id)?;
        idempotency::validate(&req.request_id)?;
        let tenant = req.tenant.unwrap_or_default();
        let mut violations = Vec::new();
        names::validate_text(
            "tenant.display_name",
            &tenant.display_name,
            256,
            &mut violations,
        );
        names::validate_text(
            "tenant.description",
            &tenant.description,
            1024,
            &mut violations,
        );
        names::validate_labels("tenant.labels", &tenant.labels, &mut violations);
        names::validate_annotations("tenant.annotations", &tenant.annotations, &mut violations);
        violations_to_result(violations)?;

        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Tenant>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(&req.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(Error::AlreadyExists { resource_type: "tenant", name: format!("tenants/{}", req.tenant_id) });
            }
            let now = now_micros();
            let out = pb::Tenant {
                name: format!("tenants/{}", req.tenant_id),
                uid: new_uid(),
                display_name: if tenant.display_name.is_empty() { req.tenant_id.clone() } else { tenant.display_name.clone() },
                description: tenant.description.clone(),
                labels: tenant.labels.clone(),
                annotations: tenant.annotations.clone(),
                state: TENANT_ACTIVE,
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
                delete_time: None,
                etag: new_etag(),
            };
            if req.validate_only {
                return Ok(out);
            }
            sqlx::query(
                "INSERT INTO tenants (id, uid, display_name, description, labels, annotations, state, \
                 create_time_us, update_time_us, delete_time_us, etag) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)",
            )
            .bind(&req.tenant_id)
            .bind(&out.uid)
            .bind(&out.display_name)
            .bind(&out.description)
            .bind(to_json(&out.labels)?)
            .bind(to_json(&out.annotations)?)
            .bind(TENANT_ACTIVE)
            .bind(now)
            .bind(now)
            .bind(&out.etag)
            .execute(&mut *tx)
            .await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            return result;
        }
        // Tenant creation is recorded in the platform chain (the tenant's own chain starts empty).
        self.audit
            .finish(
                ctx,
                tx,
                result,
                &[
                    "tenant_id",
                    "display_name",
                    "description",
                    "labels",
                    "annotations",
                ],
            )
            .await
    }

    fn tenant_from_row(row: &AnyRow) -> Result<pb::Tenant, Error> {
        let id: String = row.try_get("id")?;
        Ok(pb::Tenant {
            name: format!("tenants/{id}"),
            uid: row.try_get("uid")?,
            display_name: row.try_get("display_name")?,
            description: row.try_get("description")?,
            labels: from_json(&row.try_get::<String, _>("labels")?),
            annotations: from_json(&row.try_get::<String, _>("annotations")?),
            state: row.try_get("state")?,
            create_time: Some(timestamp(row.try_get("create_time_us")?)),
            update_time: Some(timestamp(row.try_get("update_time_us")?)),
            delete_time: opt_time(row.try_get("delete_time_us")?),
            etag: row.try_get("etag")?,
        })
    }

    async fn tenant_get(&self, name: &str) -> Result<pb::Tenant, Error> {
        let id = parse_tenant_name("name", name)?;
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
            .bind(&id)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "tenant",
                name: name.to_owned(),
            })?;
        Self::tenant_from_row(&row)
    }

    async fn tenants_list(
        &self,
        req: &pb::ListTenantsRequest,
    ) -> Result<pb::ListTenantsResponse, Error> {
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering tenants is not supported yet",
            ));
        }
        if !matches!(req.order_by.as_str(), "" | "name") {
            return Err(Error::invalid_argument(
                "order_by",
                "only `name` is supported",
            ));
        }
        let page_size = pagination::page_size(req.page_size)?;
        let fingerprint =
            pagination::query_fingerprint(&["tenants", &req.show_deleted.to_string()]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?.unwrap_or_default();
        let state_clause = if req.show_deleted {
            ""
        } else {
            " AND state = 1"
        };
        let rows = sqlx::query(&format!(
            "SELECT * FROM tenants WHERE id > $1{state_clause} ORDER BY id LIMIT {}",
            page_size + 1
        ))
        .bind(&after)
        .fetch_all(self.store.pool())
        .await?;
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM tenants WHERE 1 = 1{state_clause}"
        ))
        .fetch_one(self.store.pool())
        .await?;
        let more = rows.len() as i64 > page_size;
        let tenants = rows
            .iter()
            .take(page_size as usize)
            .map(Self::tenant_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = match (more, tenants.last()) {
            (true, Some(last)) => {
                pagination::encode_token(fingerprint, last.name.trim_start_matches("tenants/"))
            }
            _ => String::new(),
        };
        Ok(pb::ListTenantsResponse {
            tenants,
            next_page_token,
            total_size: total as i32,
        })
    }

    async fn tenant_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateTenantRequest,
    ) -> Result<pb::Tenant, Error> {
        let tenant = req.tenant.unwrap_or_default();
        let id = parse_tenant_name("tenant.name", &tenant.name)?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if mask.is_empty() {
            return Err(Error::invalid_argument(
                "update_mask",
                "required: name the fields to change",
            ));
        }
        let mut violations = Vec::new();
        for path in &mask {
            if !matches!(
                path.as_str(),
                "display_name" | "description" | "labels" | "annotations" | "*"
            ) {
                violations.push(FieldViolation::new(
                    "update_mask",
                    format!("`{}` cannot be updated", names::printable(path)),
                ));
            }
        }
        names::validate_text(
            "tenant.display_name",
            &tenant.display_name,
            256,
            &mut violations,
        );
        names::validate_text(
            "tenant.description",
            &tenant.description,
            1024,
            &mut violations,
        );
        names::validate_labels("tenant.labels", &tenant.labels, &mut violations);
        names::validate_annotations("tenant.annotations", &tenant.annotations, &mut violations);
        violations_to_result(violations)?;
        let all = mask.iter().any(|p| p == "*");
        let has = |f: &str| all || mask.iter().any(|p| p == f);
        let changed: Vec<&str> = ["display_name", "description", "labels", "annotations"]
            .into_iter()
            .filter(|f| has(f))
            .collect();

        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query("SELECT * FROM tenants WHERE id = $1 AND state = 1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "tenant", name: tenant.name.clone() })?;
            let mut current = Self::tenant_from_row(&row)?;
            check_etag(&tenant.etag, &current.etag)?;
            if has("display_name") { current.display_name = if tenant.display_name.is_empty() { id.clone() } else { tenant.display_name.clone() }; }
            if has("description") { current.description = tenant.description.clone(); }
            if has("labels") { current.labels = tenant.labels.clone(); }
            if has("annotations") { current.annotations = tenant.annotations.clone(); }
            let now = now_micros();
            current.update_time = Some(timestamp(now));
            current.etag = new_etag();
            if req.validate_only {
                return Ok(current);
            }
            sqlx::query("UPDATE tenants SET display_name = $1, description = $2, labels = $3, annotations = $4, update_time_us = $5, etag = $6 WHERE id = $7")
                .bind(&current.display_name)
                .bind(&current.description)
                .bind(to_json(&current.labels)?)
                .bind(to_json(&current.annotations)?)
                .bind(now)
                .bind(&current.etag)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            Ok(current)
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &changed).await
    }

    async fn tenant_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteTenantRequest,
    ) -> Result<pb::Tenant, Error> {
        let id = parse_tenant_name("name", &req.name)?;
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query("SELECT * FROM tenants WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "tenant", name: req.name.clone() })?;
            let mut current = Self::tenant_from_row(&row)?;
            if current.state == TENANT_DELETED {
                return Err(Error::NotFound { resource_type: "tenant", name: req.name.clone() });
            }
            check_etag(&req.etag, &current.etag)?;
            let now = now_micros();
            current.state = TENANT_DELETED;
            current.delete_time = Some(timestamp(now));
            current.update_time = Some(timestamp(now));
            current.etag = new_etag();
            if req.validate_only {
                return Ok(current);
            }
            sqlx::query("UPDATE tenants SET state = $1, delete_time_us = $2, update_time_us = $2, etag = $3 WHERE id = $4")
                .bind(TENANT_DELETED)
                .bind(now)
                .bind(&current.etag)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            // Access goes with the tenant: its bindings, memberships and custom roles are removed.
            for table in ["iam_role_bindings", "iam_group_members", "iam_roles"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE tenant = $1")).bind(&id).execute(&mut *tx).await?;
            }
            Ok(current)
        }
        .await;
        if req.validate_only {
            return result;
        }
        let out = self.finish_policy(ctx, tx, result, &["state"]).await?;
        self.reload_policy().await?;
        Ok(out)
    }

    /// Replaces the in-memory policy with the database's (after bulk changes).
    pub async fn reload_policy(&self) -> Result<(), Error> {
        for _ in 0..5 {
            if replace_policy_guarded(&self.store, self.policy()).await? {
                return Ok(());
            }
        }
        Err(Error::Unavailable {
            message: "policy is changing too fast to reload; retry".into(),
        })
    }
}

// -------------------------------------------------------------------- roles

impl IamService {
    fn builtin_role(tenant: Option<&str>, id: &str) -> Option<pb::Role> {
        let role = platform_policy::roles::builtin_roles()
            .iter()
            .find(|r| r.id == id)?;
        let name = match (tenant, id) {
            (_, "platform-admin") => PLATFORM_ADMIN_ROLE.to_owned(),
            (Some(t), _) => format!("tenants/{t}/roles/{id}"),
            (None, _) => return None,
        };
        Some(pb::Role {
            name,
            uid: String::new(),
            title: role.title.clone(),
            description: role.description.clone(),
            permissions: role.permissions.clone(),
            built_in: true,
            create_time: None,
            update_time: None,
            etag: String::new(),
        })
    }

    fn role_from_row(row: &AnyRow) -> Result<pb::Role, Error> {
        let tenant: String = row.try_get("tenant")?;
        let id: String = row.try_get("id")?;
        let permissions: String = row.try_get("permissions")?;
        Ok(pb::Role {
            name: format!("tenants/{tenant}/roles/{id}"),
            uid: row.try_get("uid")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            permissions: serde_json::from_str(&permissions).unwrap_or_default(),
            built_in: false,
            create_time: Some(timestamp(row.try_get("create_time_us")?)),
            update_time: Some(timestamp(row.try_get("update_time_us")?)),
            etag: row.try_get("etag")?,
        })
    }

    async fn role_get(&self, name: &str) -> Result<pb::Role, Error> {
        if name == PLATFORM_ADMIN_ROLE {
            return Self::builtin_role(None, "platform-admin")
                .ok_or_else(|| Error::internal("platform-admin role missing"));
        }
        let (tenant, id) = parse_child_name("name", name, "roles")?;
        if let Some(role) = Self::builtin_role(Some(&tenant), &id) {
            return Ok(role);
        }
        let row = sqlx::query("SELECT * FROM iam_roles WHERE tenant = $1 AND id = $2")
            .bind(&tenant)
            .bind(&id)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "role",
                name: name.to_owned(),
            })?;
        Self::role_from_row(&row)
    }

    async fn roles_list(&self, req: &pb::ListRolesRequest) -> Result<pb::ListRolesResponse, Error> {
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering roles is not supported yet",
            ));
        }
        let tenant = if req.parent.is_empty() {
            None
        } else {
            Some(parse_tenant_name("parent", &req.parent)?)
        };
        let mut roles: Vec<pb::Role> = match &tenant {
            None => Self::builtin_role(None, "platform-admin")
                .into_iter()
                .collect(),
            Some(t) => {
                let mut roles: Vec<pb::Role> = BUILT_IN_TENANT_ROLES
                    .iter()
                    .filter_map(|id| Self::builtin_role(Some(t), id))
                    .collect();
                let rows = sqlx::query("SELECT * FROM iam_roles WHERE tenant = $1 ORDER BY id")
                    .bind(t)
                    .fetch_all(self.store.pool())
                    .await?;
                for row in &rows {
                    roles.push(Self::role_from_row(row)?);
                }
                roles
            }
        };
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        paginate(
            roles,
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.order_by],
            |r| r.name.clone(),
        )
        .map(|(roles, next_page_token, total)| pb::ListRolesResponse {
            roles,
            next_page_token,
            total_size: total,
        })
    }

    fn validate_role_permissions(permissions: &[String]) -> Result<Vec<String>, Error> {
        let known: BTreeSet<&str> = platform_policy::permissions::known_permissions()
            .into_iter()
            .collect();
        let mut out = BTreeSet::new();
        let mut violations = Vec::new();
        if permissions.is_empty() || permissions.len() > 500 {
            violations.push(FieldViolation::new(
                "role.permissions",
                "between 1 and 500 permissions",
            ));
        }
        for (i, p) in permissions.iter().enumerate() {
            let tenant_scope = platform_policy::permissions::permission_scope(p)
                == Some(platform_policy::permissions::Scope::Tenant);
            if !known.contains(p.as_str()) || !tenant_scope {
                violations.push(FieldViolation::new(
                    format!("role.permissions[{i}]"),
                    format!(
                        "`{}` is not a known tenant-scope permission (see ListPermissions)",
                        names::printable(p)
                    ),
                ));
            }
            out.insert(p.clone());
        }
        violations_to_result(violations)?;
        Ok(out.into_iter().collect())
    }

    async fn role_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateRoleRequest,
    ) -> Result<pb::Role, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        validate_id("role_id", &req.role_id)?;
        idempotency::validate(&req.request_id)?;
        if BUILT_IN_TENANT_ROLES.contains(&req.role_id.as_str()) || req.role_id == "platform-admin"
        {
            return Err(Error::AlreadyExists {
                resource_type: "role",
                name: format!("tenants/{tenant}/roles/{}", req.role_id),
            });
        }
        let role = req.role.unwrap_or_default();
        let mut violations = Vec::new();
        names::validate_text("role.title", &role.title, 256, &mut violations);
        names::validate_text("role.description", &role.description, 1024, &mut violations);
        violations_to_result(violations)?;
        let permissions = Self::validate_role_permissions(&role.permissions)?;
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Role>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            tenant_require(&mut tx, &tenant).await?;
            let now = now_micros();
            let out = pb::Role {
                name: format!("tenants/{tenant}/roles/{}", req.role_id),
                uid: new_uid(),
                title: if role.title.is_empty() { req.role_id.clone() } else { role.title.clone() },
                description: role.description.clone(),
                permissions: permissions.clone(),
                built_in: false,
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
                etag: new_etag(),
            };
            let inserted = sqlx::query(
                "INSERT INTO iam_roles (tenant, id, uid, title, description, permissions, create_time_us, update_time_us, etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(&tenant)
            .bind(&req.role_id)
            .bind(&out.uid)
            .bind(&out.title)
            .bind(&out.description)
            .bind(serde_json::to_string(&permissions).map_err(|e| Error::internal(e.to_string()))?)
            .bind(now)
            .bind(&out.etag)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists { resource_type: "role", name: out.name.clone() });
            }
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        let out = self
            .finish_policy(
                ctx,
                tx,
                result,
                &["role_id", "title", "description", "permissions"],
            )
            .await?;
        self.policy()
            .put_custom_role(&CustomRole {
                name: out.name.clone(),
                permissions: out.permissions.clone(),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))?;
        Ok(out)
    }

    async fn role_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateRoleRequest,
    ) -> Result<pb::Role, Error> {
        let role = req.role.unwrap_or_default();
        let (tenant, id) = parse_child_name("role.name", &role.name, "roles")?;
        if BUILT_IN_TENANT_ROLES.contains(&id.as_str()) {
            return Err(Error::FailedPrecondition {
                message: "built-in roles cannot be changed".into(),
            });
        }
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        if mask.is_empty() {
            return Err(Error::invalid_argument(
                "update_mask",
                "required: name the fields to change",
            ));
        }
        let all = mask.iter().any(|p| p == "*");
        for path in &mask {
            if !matches!(path.as_str(), "title" | "description" | "permissions" | "*") {
                return Err(Error::invalid_argument(
                    "update_mask",
                    format!("`{}` cannot be updated", names::printable(path)),
                ));
            }
        }
        let has = |f: &str| all || mask.iter().any(|p| p == f);
        let permissions = if has("permissions") {
            Some(Self::validate_role_permissions(&role.permissions)?)
        } else {
            None
        };
        let mut violations = Vec::new();
        names::validate_text("role.title", &role.title, 256, &mut violations);
        names::validate_text("role.description", &role.description, 1024, &mut violations);
        violations_to_result(violations)?;
        let changed: Vec<&str> = ["title", "description", "permissions"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query("SELECT * FROM iam_roles WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "role", name: role.name.clone() })?;
            let mut current = Self::role_from_row(&row)?;
            check_etag(&role.etag, &current.etag)?;
            if has("title") { current.title = if role.title.is_empty() { id.clone() } else { role.title.clone() }; }
            if has("description") { current.description = role.description.clone(); }
            if let Some(p) = &permissions { current.permissions = p.clone(); }
            let now = now_micros();
            current.update_time = Some(timestamp(now));
            current.etag = new_etag();
            if !req.validate_only {
                sqlx::query("UPDATE iam_roles SET title = $1, description = $2, permissions = $3, update_time_us = $4, etag = $5 WHERE tenant = $6 AND id = $7")
                    .bind(&current.title)
                    .bind(&current.description)
                    .bind(serde_json::to_string(&current.permissions).map_err(|e| Error::internal(e.to_string()))?)
                    .bind(now)
                    .bind(&current.etag)
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(current)
        }
        .await;
        if req.validate_only {
            return result;
        }
        let out = self.finish_policy(ctx, tx, result, &changed).await?;
        self.policy()
            .put_custom_role(&CustomRole {
                name: out.name.clone(),
                permissions: out.permissions.clone(),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))?;
        Ok(out)
    }

    async fn role_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteRoleRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "roles")?;
        if BUILT_IN_TENANT_ROLES.contains(&id.as_str()) {
            return Err(Error::FailedPrecondition {
                message: "built-in roles cannot be deleted".into(),
            });
        }
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let etag: String =
                sqlx::query_scalar("SELECT etag FROM iam_roles WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        resource_type: "role",
                        name: req.name.clone(),
                    })?;
            check_etag(&req.etag, &etag)?;
            let in_use: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM iam_role_bindings WHERE tenant = $1 AND role = $2",
            )
            .bind(&tenant)
            .bind(&req.name)
            .fetch_one(&mut *tx)
            .await?;
            if in_use > 0 && !req.force {
                return Err(Error::FailedPrecondition {
                    message: format!(
                        "{in_use} role bindings use this role; delete them or set force"
                    ),
                });
            }
            if !req.validate_only {
                sqlx::query("DELETE FROM iam_role_bindings WHERE tenant = $1 AND role = $2")
                    .bind(&tenant)
                    .bind(&req.name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM iam_roles WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.finish_policy(ctx, tx, result, &["role"]).await?;
        self.reload_policy().await
    }
}

// ------------------------------------------------------------- role bindings

impl IamService {
    fn binding_from_row(row: &AnyRow) -> Result<pb::RoleBinding, Error> {
        let tenant: String = row.try_get("tenant")?;
        let id: String = row.try_get("id")?;
        Ok(pb::RoleBinding {
            name: if tenant.is_empty() {
                format!("roleBindings/{id}")
            } else {
                format!("tenants/{tenant}/roleBindings/{id}")
            },
            uid: row.try_get("uid")?,
            principal: row.try_get("principal")?,
            role: row.try_get("role")?,
            resource: row.try_get("resource")?,
            description: row.try_get("description")?,
            creator: row.try_get("creator")?,
            create_time: Some(timestamp(row.try_get("create_time_us")?)),
            etag: row.try_get("etag")?,
        })
    }

    /// Parses a binding name into (tenant or "" for platform, id).
    fn parse_binding_name(name: &str) -> Result<(String, String), Error> {
        if let Some(id) = name.strip_prefix("roleBindings/") {
            validate_id("name", id)?;
            return Ok((String::new(), id.to_owned()));
        }
        parse_child_name("name", name, "roleBindings")
    }

    /// The roles the binding may name must exist; the caller must hold every permission of the role
    /// on the binding's scope (no privilege escalation).
    async fn binding_validate(
        &self,
        ctx: &CallContext,
        tx: &mut WriteTx,
        tenant: &str,
        binding: &pb::RoleBinding,
    ) -> Result<Vec<String>, Error> {
        validate_principal(
            "role_binding.principal",
            &binding.principal,
            !tenant.is_empty(),
        )?;
        if let Some(owner) = principal_tenant(&binding.principal)
            && owner != tenant
        {
            return Err(Error::invalid_argument(
                "role_binding.principal",
                "service accounts and groups can only be bound in their own tenant",
            ));
        }
        let mut violations = Vec::new();
        names::validate_text(
            "role_binding.description",
            &binding.description,
            1024,
            &mut violations,
        );
        violations_to_result(violations)?;
        if tenant.is_empty() {
            if binding.role != PLATFORM_ADMIN_ROLE {
                return Err(Error::invalid_argument(
                    "role_binding.role",
                    "a platform binding can only grant roles/platform-admin",
                ));
            }
            if !binding.resource.is_empty() {
                return Err(Error::invalid_argument(
                    "role_binding.resource",
                    "a platform binding covers every tenant; leave it empty",
                ));
            }
            return Ok(Vec::new());
        }
        let (role_tenant, role_id) = parse_child_name("role_binding.role", &binding.role, "roles")?;
        if role_tenant != tenant {
            return Err(Error::invalid_argument(
                "role_binding.role",
                "must be a role of the binding's tenant",
            ));
        }
        if !binding.resource.is_empty() {
            names::validate_resource_name("role_binding.resource", &binding.resource)?;
            if names::tenant_of(&binding.resource) != Some(tenant) {
                return Err(Error::invalid_argument(
                    "role_binding.resource",
                    "must be a resource inside the binding's tenant",
                ));
            }
        }
        let permissions = match Self::builtin_role(Some(tenant), &role_id) {
            Some(role) => role.permissions,
            None => {
                let text: Option<String> = sqlx::query_scalar(
                    "SELECT permissions FROM iam_roles WHERE tenant = $1 AND id = $2",
                )
                .bind(tenant)
                .bind(&role_id)
                .fetch_optional(&mut **tx)
                .await?;
                let text = text.ok_or_else(|| Error::FailedPrecondition {
                    message: format!("role {} does not exist", binding.role),
                })?;
                serde_json::from_str(&text).unwrap_or_default()
            }
        };
        let scope = if binding.resource.is_empty() {
            format!("tenants/{tenant}")
        } else {
            binding.resource.clone()
        };
        let missing: Vec<&String> = permissions
            .iter()
            .filter(|p| !self.gate.allows(ctx, &scope, p))
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::PermissionDenied {
                message: format!(
                    "granting this role needs every permission it contains; you lack `{first}` (and {} more) on {scope}",
                    missing.len() - 1
                ),
            });
        }
        Ok(permissions)
    }

    async fn binding_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateRoleBindingRequest,
    ) -> Result<pb::RoleBinding, Error> {
        let tenant = if req.parent.is_empty() {
            String::new()
        } else {
            parse_tenant_name("parent", &req.parent)?
        };
        validate_id("role_binding_id", &req.role_binding_id)?;
        idempotency::validate(&req.request_id)?;
        let binding = req.role_binding.unwrap_or_default();
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::RoleBinding>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            if !tenant.is_empty() {
                tenant_require(&mut tx, &tenant).await?;
            }
            self.binding_validate(ctx, &mut tx, &tenant, &binding).await?;
            let now = now_micros();
            let out = pb::RoleBinding {
                name: if tenant.is_empty() { format!("roleBindings/{}", req.role_binding_id) } else { format!("tenants/{tenant}/roleBindings/{}", req.role_binding_id) },
                uid: new_uid(),
                principal: binding.principal.clone(),
                role: binding.role.clone(),
                resource: binding.resource.clone(),
                description: binding.description.clone(),
                creator: ctx.principal.clone(),
                create_time: Some(timestamp(now)),
                etag: new_etag(),
            };
            if req.validate_only {
                return Ok(out);
            }
            let inserted = sqlx::query(
                "INSERT INTO iam_role_bindings (tenant, id, uid, principal, role, resource, description, creator, create_time_us, etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(&tenant)
            .bind(&req.role_binding_id)
            .bind(&out.uid)
            .bind(&out.principal)
            .bind(&out.role)
            .bind(&out.resource)
            .bind(&out.description)
            .bind(&out.creator)
            .bind(now)
            .bind(&out.etag)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists { resource_type: "role binding", name: out.name.clone() });
            }
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            return result;
        }
        let out = self
            .finish_policy(
                ctx,
                tx,
                result,
                &["principal", "role", "resource", "description"],
            )
            .await?;
        self.policy()
            .add_binding(&Binding {
                principal: out.principal.clone(),
                tenant: (!tenant.is_empty()).then(|| tenant.clone()),
                scope: out.resource.clone(),
                role: policy_role_key(&out.role),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))?;
        Ok(out)
    }

    async fn binding_get(&self, name: &str) -> Result<pb::RoleBinding, Error> {
        let (tenant, id) = Self::parse_binding_name(name)?;
        let row = sqlx::query("SELECT * FROM iam_role_bindings WHERE tenant = $1 AND id = $2")
            .bind(&tenant)
            .bind(&id)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "role binding",
                name: name.to_owned(),
            })?;
        Self::binding_from_row(&row)
    }

    async fn bindings_list(
        &self,
        req: &pb::ListRoleBindingsRequest,
    ) -> Result<pb::ListRoleBindingsResponse, Error> {
        let tenant = if req.parent.is_empty() {
            String::new()
        } else {
            parse_tenant_name("parent", &req.parent)?
        };
        let mut principal_filter = None;
        for term in crate::filter::parse(&req.filter)? {
            match (term.field.as_str(), term.op) {
                ("principal", crate::filter::Op::Eq) => principal_filter = Some(term.value),
                _ => {
                    return Err(Error::invalid_argument(
                        "filter",
                        "only `principal = \"…\"` is supported",
                    ));
                }
            }
        }
        let rows = sqlx::query("SELECT * FROM iam_role_bindings WHERE tenant = $1 ORDER BY id")
            .bind(&tenant)
            .fetch_all(self.store.pool())
            .await?;
        let bindings = rows
            .iter()
            .map(Self::binding_from_row)
            .filter(|b| match (b, &principal_filter) {
                (Ok(b), Some(p)) => &b.principal == p,
                _ => true,
            })
            .collect::<Result<Vec<_>, _>>()?;
        paginate(
            bindings,
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.filter, &req.order_by],
            |b| b.name.clone(),
        )
        .map(
            |(role_bindings, next_page_token, total)| pb::ListRoleBindingsResponse {
                role_bindings,
                next_page_token,
                total_size: total,
            },
        )
    }

    async fn binding_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteRoleBindingRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = Self::parse_binding_name(&req.name)?;
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query("SELECT * FROM iam_role_bindings WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound {
                    resource_type: "role binding",
                    name: req.name.clone(),
                })?;
            let binding = Self::binding_from_row(&row)?;
            check_etag(&req.etag, &binding.etag)?;
            if tenant.is_empty() {
                let admins: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM iam_role_bindings WHERE tenant = '' AND role = $1",
                )
                .bind(PLATFORM_ADMIN_ROLE)
                .fetch_one(&mut *tx)
                .await?;
                if admins <= 1 {
                    return Err(Error::FailedPrecondition {
                        message: "the last platform-admin binding cannot be deleted".into(),
                    });
                }
            }
            if !req.validate_only {
                sqlx::query("DELETE FROM iam_role_bindings WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(binding)
        }
        .await;
        if req.validate_only {
            return result.map(|_| ());
        }
        let binding = self
            .finish_policy(ctx, tx, result, &["role_binding"])
            .await?;
        // Two bindings may grant the same thing; the grant goes only with the last of them.
        let identical: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM iam_role_bindings WHERE tenant = $1 AND principal = $2 AND role = $3 AND resource = $4",
        )
        .bind(&tenant)
        .bind(&binding.principal)
        .bind(&binding.role)
        .bind(&binding.resource)
        .fetch_one(self.store.pool())
        .await?;
        if identical > 0 {
            return Ok(());
        }
        self.policy()
            .remove_binding(&Binding {
                principal: binding.principal,
                tenant: (!tenant.is_empty()).then_some(tenant),
                scope: binding.resource,
                role: policy_role_key(&binding.role),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))?;
        Ok(())
    }
}

// ----------------------------------------------------------- groups, members

impl IamService {
    /// A row of [`SELECT_GROUPS`].
    fn group_from_row(row: &AnyRow) -> Result<pb::Group, Error> {
        let tenant: String = row.try_get("tenant")?;
        let id: String = row.try_get("id")?;
        let members: i64 = row.try_get("member_count")?;
        let name = format!("tenants/{tenant}/groups/{id}");
        Ok(pb::Group {
            principal: format!("group:{name}"),
            name,
            uid: row.try_get("uid")?,
            display_name: row.try_get("display_name")?,
            description: row.try_get("description")?,
            labels: from_json(&row.try_get::<String, _>("labels")?),
            annotations: from_json(&row.try_get::<String, _>("annotations")?),
            catalog_group: row.try_get("catalog_group")?,
            member_count: members as i32,
            create_time: Some(timestamp(row.try_get("create_time_us")?)),
            update_time: Some(timestamp(row.try_get("update_time_us")?)),
            etag: row.try_get("etag")?,
        })
    }

    async fn group_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateGroupRequest,
    ) -> Result<pb::Group, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        validate_id("group_id", &req.group_id)?;
        idempotency::validate(&req.request_id)?;
        let group = req.group.unwrap_or_default();
        let mut violations = Vec::new();
        names::validate_text(
            "group.display_name",
            &group.display_name,
            256,
            &mut violations,
        );
        names::validate_text(
            "group.description",
            &group.description,
            1024,
            &mut violations,
        );
        names::validate_text(
            "group.catalog_group",
            &group.catalog_group,
            512,
            &mut violations,
        );
        names::validate_labels("group.labels", &group.labels, &mut violations);
        names::validate_annotations("group.annotations", &group.annotations, &mut violations);
        violations_to_result(violations)?;
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Group>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            tenant_require(&mut tx, &tenant).await?;
            let now = now_micros();
            let name = format!("tenants/{tenant}/groups/{}", req.group_id);
            let out = pb::Group {
                principal: format!("group:{name}"),
                name,
                uid: new_uid(),
                display_name: if group.display_name.is_empty() { req.group_id.clone() } else { group.display_name.clone() },
                description: group.description.clone(),
                labels: group.labels.clone(),
                annotations: group.annotations.clone(),
                catalog_group: group.catalog_group.clone(),
                member_count: 0,
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
                etag: new_etag(),
            };
            if req.validate_only {
                return Ok(out);
            }
            let inserted = sqlx::query(
                "INSERT INTO iam_groups (tenant, id, uid, display_name, description, labels, annotations, catalog_group, create_time_us, update_time_us, etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(&tenant)
            .bind(&req.group_id)
            .bind(&out.uid)
            .bind(&out.display_name)
            .bind(&out.description)
            .bind(to_json(&out.labels)?)
            .bind(to_json(&out.annotations)?)
            .bind(&out.catalog_group)
            .bind(now)
            .bind(&out.etag)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists { resource_type: "group", name: out.name.clone() });
            }
            // A group linked to a catalog Group starts with that Group's members.
            crate::catalog::iam_groups_sync(&mut tx, &tenant).await?;
            let mut out = out;
            out.member_count = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM iam_group_members WHERE tenant = $1 AND group_id = $2")
                .bind(&tenant)
                .bind(&req.group_id)
                .fetch_one(&mut *tx)
                .await? as i32;
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit
            .finish(
                ctx,
                tx,
                result,
                &[
                    "group_id",
                    "display_name",
                    "description",
                    "labels",
                    "annotations",
                    "catalog_group",
                ],
            )
            .await
    }

    async fn group_get(&self, name: &str) -> Result<pb::Group, Error> {
        let (tenant, id) = parse_child_name("name", name, "groups")?;
        let row = sqlx::query(&format!(
            "{SELECT_GROUPS} WHERE g.tenant = $1 AND g.id = $2"
        ))
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "group",
            name: name.to_owned(),
        })?;
        Self::group_from_row(&row)
    }

    async fn groups_list(
        &self,
        req: &pb::ListGroupsRequest,
    ) -> Result<pb::ListGroupsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering groups is not supported yet",
            ));
        }
        let rows = sqlx::query(&format!(
            "{SELECT_GROUPS} WHERE g.tenant = $1 ORDER BY g.id"
        ))
        .bind(&tenant)
        .fetch_all(self.store.pool())
        .await?;
        let groups = rows
            .iter()
            .map(Self::group_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        paginate(
            groups,
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.order_by],
            |g| g.name.clone(),
        )
        .map(|(groups, next_page_token, total)| pb::ListGroupsResponse {
            groups,
            next_page_token,
            total_size: total,
        })
    }

    async fn group_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteGroupRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "groups")?;
        let principal = format!("group:{}", req.name);
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let etag: String =
                sqlx::query_scalar("SELECT etag FROM iam_groups WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        resource_type: "group",
                        name: req.name.clone(),
                    })?;
            check_etag(&req.etag, &etag)?;
            let bound: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM iam_role_bindings WHERE principal = $1")
                    .bind(&principal)
                    .fetch_one(&mut *tx)
                    .await?;
            if bound > 0 && !req.force {
                return Err(Error::FailedPrecondition {
                    message: format!(
                        "{bound} role bindings name this group; delete them or set force"
                    ),
                });
            }
            if !req.validate_only {
                sqlx::query("DELETE FROM iam_role_bindings WHERE principal = $1")
                    .bind(&principal)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM iam_group_members WHERE tenant = $1 AND group_id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM iam_groups WHERE tenant = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.finish_policy(ctx, tx, result, &["group"]).await?;
        self.reload_policy().await
    }

    async fn member_add(
        &self,
        ctx: &CallContext,
        req: pb::AddGroupMemberRequest,
    ) -> Result<pb::GroupMember, Error> {
        let (tenant, id) = parse_child_name("group", &req.group, "groups")?;
        validate_principal("member", &req.member, false)?;
        if let Some(owner) = principal_tenant(&req.member)
            && owner != tenant
        {
            return Err(Error::invalid_argument(
                "member",
                "service accounts can only join groups of their own tenant",
            ));
        }
        idempotency::validate(&req.request_id)?;
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::GroupMember>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM iam_groups WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(Error::NotFound { resource_type: "group", name: req.group.clone() });
            }
            let now = now_micros();
            let inserted = sqlx::query(
                "INSERT INTO iam_group_members (tenant, group_id, member, source, add_time_us) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (tenant, group_id, member) DO NOTHING",
            )
            .bind(&tenant)
            .bind(&id)
            .bind(&req.member)
            .bind(pb::GroupMemberSource::Manual as i32)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists { resource_type: "group member", name: req.member.clone() });
            }
            sqlx::query("UPDATE iam_groups SET etag = $1, update_time_us = $2 WHERE tenant = $3 AND id = $4")
                .bind(new_etag())
                .bind(now)
                .bind(&tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            let out = pb::GroupMember { member: req.member.clone(), source: pb::GroupMemberSource::Manual as i32, add_time: Some(timestamp(now)) };
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        let out = self.finish_policy(ctx, tx, result, &["members"]).await?;
        self.policy()
            .add_membership(&Membership {
                tenant: tenant.clone(),
                member: req.member.clone(),
                group: format!("group:{}", req.group),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))?;
        Ok(out)
    }

    async fn member_remove(
        &self,
        ctx: &CallContext,
        req: pb::RemoveGroupMemberRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = parse_child_name("group", &req.group, "groups")?;
        validate_principal("member", &req.member, false)?;
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let source: Option<i32> = sqlx::query_scalar("SELECT source FROM iam_group_members WHERE tenant = $1 AND group_id = $2 AND member = $3")
                .bind(&tenant)
                .bind(&id)
                .bind(&req.member)
                .fetch_optional(&mut *tx)
                .await?;
            match source {
                None => return Err(Error::NotFound { resource_type: "group member", name: req.member.clone() }),
                Some(s) if s == pb::GroupMemberSource::Catalog as i32 => {
                    return Err(Error::FailedPrecondition { message: "this membership comes from the catalog; change the catalog Group instead".into() });
                }
                Some(_) => {}
            }
            sqlx::query("DELETE FROM iam_group_members WHERE tenant = $1 AND group_id = $2 AND member = $3")
                .bind(&tenant)
                .bind(&id)
                .bind(&req.member)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE iam_groups SET etag = $1, update_time_us = $2 WHERE tenant = $3 AND id = $4")
                .bind(new_etag())
                .bind(now_micros())
                .bind(&tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        .await;
        self.finish_policy(ctx, tx, result, &["members"]).await?;
        self.policy()
            .remove_membership(&Membership {
                tenant,
                member: req.member.clone(),
                group: format!("group:{}", req.group),
            })
            .await
            .map_err(|e| Error::internal(format!("policy: {e}")))
    }

    async fn members_list(
        &self,
        req: &pb::ListGroupMembersRequest,
    ) -> Result<pb::ListGroupMembersResponse, Error> {
        let (tenant, id) = parse_child_name("group", &req.group, "groups")?;
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering members is not supported yet",
            ));
        }
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM iam_groups WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(self.store.pool())
                .await?;
        if exists.is_none() {
            return Err(Error::NotFound {
                resource_type: "group",
                name: req.group.clone(),
            });
        }
        let rows = sqlx::query("SELECT member, source, add_time_us FROM iam_group_members WHERE tenant = $1 AND group_id = $2 ORDER BY member")
            .bind(&tenant)
            .bind(&id)
            .fetch_all(self.store.pool())
            .await?;
        let members = rows
            .iter()
            .map(|row| {
                Ok(pb::GroupMember {
                    member: row.try_get("member")?,
                    source: row.try_get("source")?,
                    add_time: Some(timestamp(row.try_get("add_time_us")?)),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        paginate(
            members,
            req.page_size,
            &req.page_token,
            &[&req.group],
            |m| m.member.clone(),
        )
        .map(
            |(members, next_page_token, total)| pb::ListGroupMembersResponse {
                members,
                next_page_token,
                total_size: total,
            },
        )
    }
}

// ------------------------------------------------ service accounts and tokens

/// Groups with their member counts, in one query (no per-row count).
const SELECT_GROUPS: &str = "SELECT g.*, (SELECT COUNT(*) FROM iam_group_members m \
     WHERE m.tenant = g.tenant AND m.group_id = g.id) AS member_count FROM iam_groups g";

/// Service accounts with their active-token counts; `$1` is the current time in microseconds.
const SELECT_SERVICE_ACCOUNTS: &str = "SELECT a.*, (SELECT COUNT(*) FROM iam_tokens t \
     WHERE t.tenant = a.tenant AND t.service_account = a.id AND t.revoke_time_us IS NULL \
     AND t.expire_time_us > $1) AS active_token_count FROM iam_service_accounts a";

const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

impl IamService {
    /// A row of [`SELECT_SERVICE_ACCOUNTS`] (which binds the current time as `$1`).
    fn service_account_from_row(row: &AnyRow) -> Result<pb::ServiceAccount, Error> {
        let tenant: String = row.try_get("tenant")?;
        let id: String = row.try_get("id")?;
        let name = format!("tenants/{tenant}/serviceAccounts/{id}");
        let active: i64 = row.try_get("active_token_count")?;
        Ok(pb::ServiceAccount {
            principal: format!("serviceAccount:{name}"),
            name,
            uid: row.try_get("uid")?,
            display_name: row.try_get("display_name")?,
            description: row.try_get("description")?,
            labels: from_json(&row.try_get::<String, _>("labels")?),
            annotations: from_json(&row.try_get::<String, _>("annotations")?),
            active_token_count: active as i32,
            create_time: Some(timestamp(row.try_get("create_time_us")?)),
            update_time: Some(timestamp(row.try_get("update_time_us")?)),
            etag: row.try_get("etag")?,
        })
    }

    async fn service_account_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateServiceAccountRequest,
    ) -> Result<pb::ServiceAccount, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        validate_id("service_account_id", &req.service_account_id)?;
        idempotency::validate(&req.request_id)?;
        let sa = req.service_account.unwrap_or_default();
        let mut violations = Vec::new();
        names::validate_text(
            "service_account.display_name",
            &sa.display_name,
            256,
            &mut violations,
        );
        names::validate_text(
            "service_account.description",
            &sa.description,
            1024,
            &mut violations,
        );
        names::validate_labels("service_account.labels", &sa.labels, &mut violations);
        names::validate_annotations(
            "service_account.annotations",
            &sa.annotations,
            &mut violations,
        );
        violations_to_result(violations)?;
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::ServiceAccount>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            tenant_require(&mut tx, &tenant).await?;
            let now = now_micros();
            let name = format!("tenants/{tenant}/serviceAccounts/{}", req.service_account_id);
            let out = pb::ServiceAccount {
                principal: format!("serviceAccount:{name}"),
                name,
                uid: new_uid(),
                display_name: if sa.display_name.is_empty() { req.service_account_id.clone() } else { sa.display_name.clone() },
                description: sa.description.clone(),
                labels: sa.labels.clone(),
                annotations: sa.annotations.clone(),
                active_token_count: 0,
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
                etag: new_etag(),
            };
            if req.validate_only {
                return Ok(out);
            }
            let inserted = sqlx::query(
                "INSERT INTO iam_service_accounts (tenant, id, uid, display_name, description, labels, annotations, create_time_us, update_time_us, etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(&tenant)
            .bind(&req.service_account_id)
            .bind(&out.uid)
            .bind(&out.display_name)
            .bind(&out.description)
            .bind(to_json(&out.labels)?)
            .bind(to_json(&out.annotations)?)
            .bind(now)
            .bind(&out.etag)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists { resource_type: "service account", name: out.name.clone() });
            }
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit
            .finish(
                ctx,
                tx,
                result,
                &[
                    "service_account_id",
                    "display_name",
                    "description",
                    "labels",
                    "annotations",
                ],
            )
            .await
    }

    async fn service_account_get(&self, name: &str) -> Result<pb::ServiceAccount, Error> {
        let (tenant, id) = parse_child_name("name", name, "serviceAccounts")?;
        let row = sqlx::query(&format!(
            "{SELECT_SERVICE_ACCOUNTS} WHERE a.tenant = $2 AND a.id = $3"
        ))
        .bind(now_micros())
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "service account",
            name: name.to_owned(),
        })?;
        Self::service_account_from_row(&row)
    }

    async fn service_accounts_list(
        &self,
        req: &pb::ListServiceAccountsRequest,
    ) -> Result<pb::ListServiceAccountsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering service accounts is not supported yet",
            ));
        }
        let rows = sqlx::query(&format!(
            "{SELECT_SERVICE_ACCOUNTS} WHERE a.tenant = $2 ORDER BY a.id"
        ))
        .bind(now_micros())
        .bind(&tenant)
        .fetch_all(self.store.pool())
        .await?;
        let accounts = rows
            .iter()
            .map(Self::service_account_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        paginate(
            accounts,
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.order_by],
            |a| a.name.clone(),
        )
        .map(|(service_accounts, next_page_token, total)| {
            pb::ListServiceAccountsResponse {
                service_accounts,
                next_page_token,
                total_size: total,
            }
        })
    }

    async fn service_account_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteServiceAccountRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "serviceAccounts")?;
        let principal = format!("serviceAccount:{}", req.name);
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let etag: String = sqlx::query_scalar("SELECT etag FROM iam_service_accounts WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "service account", name: req.name.clone() })?;
            check_etag(&req.etag, &etag)?;
            let bound: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM iam_role_bindings WHERE principal = $1")
                .bind(&principal)
                .fetch_one(&mut *tx)
                .await?;
            if bound > 0 && !req.force {
                return Err(Error::FailedPrecondition { message: format!("{bound} role bindings name this service account; delete them or set force") });
            }
            let mut revoked: Vec<String> = Vec::new();
            if !req.validate_only {
                revoked = sqlx::query_scalar("SELECT jti FROM iam_tokens WHERE tenant = $1 AND service_account = $2 AND revoke_time_us IS NULL")
                    .bind(&tenant)
                    .bind(&id)
                    .fetch_all(&mut *tx)
                    .await?;
                // Its tokens die with it.
                sqlx::query("UPDATE iam_tokens SET revoke_time_us = $1, revoke_reason = 'service account deleted' WHERE tenant = $2 AND service_account = $3 AND revoke_time_us IS NULL")
                    .bind(now_micros())
                    .bind(&tenant)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM iam_role_bindings WHERE principal = $1").bind(&principal).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM iam_group_members WHERE member = $1").bind(&principal).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM iam_service_accounts WHERE tenant = $1 AND id = $2").bind(&tenant).bind(&id).execute(&mut *tx).await?;
            }
            Ok(revoked)
        }
        .await;
        if req.validate_only {
            return result.map(|_| ());
        }
        let revoked = self
            .finish_policy(ctx, tx, result, &["service_account"])
            .await?;
        for jti in revoked {
            self.authenticator.revoke(jti);
        }
        self.reload_policy().await
    }

    fn token_from_row(row: &AnyRow) -> Result<pb::ServiceAccountToken, Error> {
        let tenant: String = row.try_get("tenant")?;
        let sa: String = row.try_get("service_account")?;
        let jti: String = row.try_get("jti")?;
        let expire: i64 = row.try_get("expire_time_us")?;
        let revoke: Option<i64> = row.try_get("revoke_time_us")?;
        let state = if revoke.is_some() {
            pb::ServiceAccountTokenState::Revoked
        } else if expire <= now_micros() {
            pb::ServiceAccountTokenState::Expired
        } else {
            pb::ServiceAccountTokenState::Active
        };
        Ok(pb::ServiceAccountToken {
            name: format!("tenants/{tenant}/serviceAccounts/{sa}/tokens/{jti}"),
            jti,
            display_name: row.try_get("display_name")?,
            state: state as i32,
            issue_time: Some(timestamp(row.try_get("issue_time_us")?)),
            expire_time: Some(timestamp(expire)),
            revoke_time: opt_time(revoke),
            issuer: row.try_get("issuer")?,
            revoke_reason: row.try_get("revoke_reason")?,
        })
    }

    async fn token_issue(
        &self,
        ctx: &CallContext,
        req: pb::IssueServiceAccountTokenRequest,
    ) -> Result<pb::IssueServiceAccountTokenResponse, Error> {
        let (tenant, id) = parse_child_name("parent", &req.parent, "serviceAccounts")?;
        idempotency::validate(&req.request_id)?;
        let mut violations = Vec::new();
        names::validate_text("display_name", &req.display_name, 256, &mut violations);
        violations_to_result(violations)?;
        let ttl = match &req.ttl {
            None => DEFAULT_TOKEN_TTL,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::invalid_argument("ttl", "must be positive"));
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
        };
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
            return Err(Error::invalid_argument(
                "ttl",
                "between 1 minute and 365 days",
            ));
        }
        let subject = format!("serviceAccount:{}", req.parent);
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM iam_service_accounts WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(Error::NotFound { resource_type: "service account", name: req.parent.clone() });
            }
            // A retry with the same request_id re-signs the same claims (the token string is
            // never stored), so the client gets an equivalent token, not a second one.
            let earlier: Option<pb::ServiceAccountToken> = idempotency::lookup(&mut tx, ctx, &req.request_id).await?;
            let (jti, issue_us, expire_us) = match &earlier {
                Some(token) => {
                    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000).unwrap_or_default();
                    (token.jti.clone(), ts(&token.issue_time), ts(&token.expire_time))
                }
                None => {
                    let now = now_micros();
                    (uuid::Uuid::new_v4().to_string(), now, now + ttl.as_micros() as i64)
                }
            };
            let _ = issue_us;
            // A retry re-signs with the same jti and (to the second) the same expiry.
            let remaining = Duration::from_secs(((expire_us - now_micros()) / 1_000_000).max(1) as u64);
            let (access_token, _) = self
                .authenticator
                .issue(&subject, Some(&tenant), &[], remaining, Some(jti.clone()))
                .map_err(|e| Error::internal(format!("signing a token: {e}")))?;
            if let Some(token) = earlier {
                return Ok(pb::IssueServiceAccountTokenResponse { service_account_token: Some(token), access_token });
            }
            sqlx::query(
                "INSERT INTO iam_tokens (jti, tenant, service_account, subject, display_name, issuer, issue_time_us, expire_time_us, revoke_time_us, revoke_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, '')",
            )
            .bind(&jti)
            .bind(&tenant)
            .bind(&id)
            .bind(&subject)
            .bind(&req.display_name)
            .bind(&ctx.principal)
            .bind(issue_us)
            .bind(expire_us)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query("SELECT * FROM iam_tokens WHERE jti = $1").bind(&jti).fetch_one(&mut *tx).await?;
            let token = Self::token_from_row(&row)?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &token).await?;
            Ok(pb::IssueServiceAccountTokenResponse { service_account_token: Some(token), access_token })
        }
        .await;
        self.audit.finish(ctx, tx, result, &["tokens"]).await
    }

    async fn tokens_list(
        &self,
        req: &pb::ListServiceAccountTokensRequest,
    ) -> Result<pb::ListServiceAccountTokensResponse, Error> {
        let (tenant, id) = parse_child_name("parent", &req.parent, "serviceAccounts")?;
        if !req.filter.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                "filtering tokens is not supported yet",
            ));
        }
        let rows = sqlx::query(
            "SELECT * FROM iam_tokens WHERE tenant = $1 AND service_account = $2 ORDER BY jti",
        )
        .bind(&tenant)
        .bind(&id)
        .fetch_all(self.store.pool())
        .await?;
        let tokens = rows
            .iter()
            .map(Self::token_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        paginate(
            tokens,
            req.page_size,
            &req.page_token,
            &[&req.parent, &req.order_by],
            |t| t.jti.clone(),
        )
        .map(|(service_account_tokens, next_page_token, total)| {
            pb::ListServiceAccountTokensResponse {
                service_account_tokens,
                next_page_token,
                total_size: total,
            }
        })
    }

    /// Marks a token revoked (in `tx`); returns whether a row changed.
    async fn token_revoke_in(
        tx: &mut WriteTx,
        jti: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, Error> {
        let updated = sqlx::query("UPDATE iam_tokens SET revoke_time_us = $1, revoke_reason = $2 WHERE jti = $3 AND revoke_time_us IS NULL")
            .bind(now)
            .bind(reason)
            .bind(jti)
            .execute(&mut **tx)
            .await?;
        Ok(updated.rows_affected() > 0)
    }

    async fn token_revoke(
        &self,
        ctx: &CallContext,
        req: pb::RevokeServiceAccountTokenRequest,
    ) -> Result<pb::ServiceAccountToken, Error> {
        let (sa_name, jti) = req.name.rsplit_once("/tokens/").ok_or_else(|| {
            Error::invalid_argument(
                "name",
                "must be `tenants/{t}/serviceAccounts/{sa}/tokens/{jti}`",
            )
        })?;
        let (tenant, id) = parse_child_name("name", sa_name, "serviceAccounts")?;
        let mut violations = Vec::new();
        names::validate_text("reason", &req.reason, 1024, &mut violations);
        violations_to_result(violations)?;
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query(
                "SELECT * FROM iam_tokens WHERE jti = $1 AND tenant = $2 AND service_account = $3",
            )
            .bind(jti)
            .bind(&tenant)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "token",
                name: req.name.clone(),
            })?;
            let _ = row;
            Self::token_revoke_in(&mut tx, jti, &req.reason, now_micros()).await?;
            let row = sqlx::query("SELECT * FROM iam_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_one(&mut *tx)
                .await?;
            Self::token_from_row(&row)
        }
        .await;
        let out = self
            .finish_policy(ctx, tx, result, &["revoke_time", "revoke_reason"])
            .await?;
        self.authenticator.revoke(jti.to_owned());
        Ok(out)
    }

    async fn token_revoke_any(
        &self,
        ctx: &CallContext,
        req: pb::RevokeTokenRequest,
    ) -> Result<pb::RevokeTokenResponse, Error> {
        if req.jti.is_empty()
            || req.jti.len() > 128
            || !req.jti.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::invalid_argument(
                "jti",
                "must be a token id (1-128 printable ASCII characters)",
            ));
        }
        let mut violations = Vec::new();
        names::validate_text("reason", &req.reason, 1024, &mut violations);
        violations_to_result(violations)?;
        let mut tx = self.store.write_tx().await?;
        let now = now_micros();
        let result = async {
            let existing = sqlx::query("SELECT tenant, service_account FROM iam_tokens WHERE jti = $1").bind(&req.jti).fetch_optional(&mut *tx).await?;
            let service_account_token = match existing {
                Some(row) => {
                    Self::token_revoke_in(&mut tx, &req.jti, &req.reason, now).await?;
                    let tenant: String = row.try_get("tenant")?;
                    let sa: String = row.try_get("service_account")?;
                    if sa.is_empty() { String::new() } else { format!("tenants/{tenant}/serviceAccounts/{sa}/tokens/{}", req.jti) }
                }
                None => {
                    // Unknown ids are recorded too, so a leaked offline token can be revoked.
                    sqlx::query(
                        "INSERT INTO iam_tokens (jti, tenant, service_account, subject, display_name, issuer, issue_time_us, expire_time_us, revoke_time_us, revoke_reason) \
                         VALUES ($1, '', '', '', '', '', 0, 0, $2, $3)",
                    )
                    .bind(&req.jti)
                    .bind(now)
                    .bind(&req.reason)
                    .execute(&mut *tx)
                    .await?;
                    String::new()
                }
            };
            Ok(pb::RevokeTokenResponse { jti: req.jti.clone(), revoke_time: Some(timestamp(now)), service_account_token })
        }
        .await;
        let out = self
            .finish_policy(ctx, tx, result, &["revoke_time", "revoke_reason"])
            .await?;
        self.authenticator.revoke(req.jti.clone());
        Ok(out)
    }
}

// ------------------------------------------------------ permission questions

impl IamService {
    fn test_permissions(
        &self,
        ctx: &CallContext,
        req: &pb::TestPermissionsRequest,
    ) -> Result<pb::TestPermissionsResponse, Error> {
        if !req.resource.is_empty() {
            names::validate_resource_name("resource", &req.resource)?;
        }
        if req.permissions.is_empty() || req.permissions.len() > 100 {
            return Err(Error::invalid_argument(
                "permissions",
                "between 1 and 100 permissions",
            ));
        }
        let known: BTreeSet<&str> = platform_policy::permissions::known_permissions()
            .into_iter()
            .collect();
        let mut violations = Vec::new();
        for (i, p) in req.permissions.iter().enumerate() {
            if !known.contains(p.as_str()) {
                violations.push(FieldViolation::new(
                    format!("permissions[{i}]"),
                    format!("`{}` is not a known permission", names::printable(p)),
                ));
            }
        }
        violations_to_result(violations)?;
        let mut seen = BTreeSet::new();
        let permissions = req
            .permissions
            .iter()
            .filter(|p| seen.insert(p.as_str()))
            .filter(|p| self.gate.allows(ctx, &req.resource, p))
            .cloned()
            .collect();
        Ok(pb::TestPermissionsResponse { permissions })
    }

    async fn caller(&self, ctx: &CallContext) -> Result<pb::GetCallerResponse, Error> {
        let (principal_type, subject) = if let Some(sub) = ctx.principal.strip_prefix("user:") {
            (pb::PrincipalType::User, sub.to_owned())
        } else {
            (pb::PrincipalType::ServiceAccount, ctx.principal.clone())
        };
        let groups: Vec<String> = sqlx::query("SELECT tenant, group_id FROM iam_group_members WHERE member = $1 ORDER BY tenant, group_id")
            .bind(&ctx.principal)
            .fetch_all(self.store.pool())
            .await?
            .iter()
            .map(|row| Ok(format!("group:tenants/{}/groups/{}", row.try_get::<String, _>("tenant")?, row.try_get::<String, _>("group_id")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let mut principals = vec![ctx.principal.clone()];
        principals.extend(groups.iter().cloned());
        let mut tenants: std::collections::BTreeMap<String, Vec<pb::CallerRoleGrant>> =
            Default::default();
        for principal in &principals {
            let rows = sqlx::query("SELECT tenant, role, resource FROM iam_role_bindings WHERE principal = $1 AND tenant <> ''")
                .bind(principal)
                .fetch_all(self.store.pool())
                .await?;
            for row in rows {
                let tenant: String = row.try_get("tenant")?;
                tenants
                    .entry(tenant)
                    .or_default()
                    .push(pb::CallerRoleGrant {
                        role: row.try_get("role")?,
                        resource: row.try_get("resource")?,
                        via_principal: if principal == &ctx.principal {
                            String::new()
                        } else {
                            principal.clone()
                        },
                    });
            }
        }
        for (tenant, role) in &ctx.token_grants {
            if let Some(t) = tenant {
                tenants
                    .entry(t.clone())
                    .or_default()
                    .push(pb::CallerRoleGrant {
                        role: format!("tenants/{t}/roles/{role}"),
                        resource: String::new(),
                        via_principal: "token".into(),
                    });
            }
        }
        let mut out_tenants = Vec::new();
        for (tenant, grants) in tenants {
            let display_name: Option<String> =
                sqlx::query_scalar("SELECT display_name FROM tenants WHERE id = $1 AND state = 1")
                    .bind(&tenant)
                    .fetch_optional(self.store.pool())
                    .await?;
            if let Some(display_name) = display_name {
                out_tenants.push(pb::CallerTenant {
                    tenant: format!("tenants/{tenant}"),
                    display_name,
                    grants,
                });
            }
        }
        Ok(pb::GetCallerResponse {
            principal: ctx.principal.clone(),
            principal_type: principal_type as i32,
            subject,
            token_issuer: ctx.token_issuer.clone(),
            token_id: ctx.token_id.clone(),
            token_expire_time: (ctx.token_expire_us > 0).then(|| timestamp(ctx.token_expire_us)),
            platform_admin: self.gate.allows(ctx, "", "iam.tenants.create"),
            groups,
            tenants: out_tenants,
        })
    }

    fn permissions_list(
        &self,
        req: &pb::ListPermissionsRequest,
    ) -> Result<pb::ListPermissionsResponse, Error> {
        use platform_policy::permissions::{Scope, permission_scope};
        let mut name_eq: Option<String> = None;
        let mut scope_eq: Option<Scope> = None;
        let mut role_has: Option<String> = None;
        for term in crate::filter::parse(&req.filter)? {
            match (term.field.as_str(), term.op) {
                ("name", crate::filter::Op::Eq) => name_eq = Some(term.value),
                ("scope", crate::filter::Op::Eq) => {
                    scope_eq = Some(match term.value.as_str() {
                        "TENANT" => Scope::Tenant,
                        "PLATFORM" => Scope::Platform,
                        _ => {
                            return Err(Error::invalid_argument(
                                "filter",
                                "scope is TENANT or PLATFORM",
                            ));
                        }
                    })
                }
                ("built_in_roles", crate::filter::Op::Has) => role_has = Some(term.value),
                _ => {
                    return Err(Error::invalid_argument(
                        "filter",
                        "supported: name =, scope =, built_in_roles:",
                    ));
                }
            }
        }
        let roles = platform_policy::roles::builtin_roles();
        let mut permissions = Vec::new();
        for name in platform_policy::permissions::known_permissions() {
            if let Some(pattern) = &name_eq {
                let matches = match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pattern,
                };
                if !matches {
                    continue;
                }
            }
            let scope = permission_scope(name).unwrap_or(Scope::Tenant);
            if scope_eq.is_some_and(|s| s != scope) {
                continue;
            }
            let built_in_roles: Vec<String> = roles
                .iter()
                .filter(|r| r.permissions.iter().any(|p| p == name))
                .map(|r| r.id.clone())
                .collect();
            if let Some(role) = &role_has
                && !built_in_roles.contains(role)
            {
                continue;
            }
            let methods: Vec<String> = platform_policy::permissions::all()
                .iter()
                .filter(|e| e.permission == name)
                .map(|e| e.method.to_owned())
                .collect();
            permissions.push(pb::Permission {
                name: name.to_owned(),
                description: format!("Allows {}.", describe_permission(name)),
                scope: match scope {
                    Scope::Tenant => pb::PermissionScope::Tenant as i32,
                    Scope::Platform => pb::PermissionScope::Platform as i32,
                },
                methods,
                built_in_roles,
            });
        }
        let page_size = if req.page_size == 0 {
            1000
        } else {
            req.page_size
        };
        paginate(
            permissions,
            page_size,
            &req.page_token,
            &[&req.filter],
            |p| p.name.clone(),
        )
        .map(
            |(permissions, next_page_token, total)| pb::ListPermissionsResponse {
                permissions,
                next_page_token,
                total_size: total,
            },
        )
    }
}

/// `deployments.deployments.create` → "create on deployments (deployments service)".
fn describe_permission(name: &str) -> String {
    let mut parts = name.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(service), Some(collection), Some(verb)) => {
            format!("`{verb}` on {collection} of the {service} service")
        }
        _ => name.to_owned(),
    }
}

// ------------------------------------------------------------------ the RPCs

#[tonic::async_trait]
impl pb::iam_service_server::IamService for IamService {
    #[instrument(skip_all)]
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> RpcResult<pb::Tenant> {
        let mut ctx = CallContext::of(&request)?;
        // Creating a tenant is a platform act: recorded in the platform chain.
        ctx.tenant = None;
        respond(self.tenant_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> RpcResult<pb::Tenant> {
        respond(self.tenant_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> RpcResult<pb::ListTenantsResponse> {
        respond(self.tenants_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> RpcResult<pb::Tenant> {
        let ctx = CallContext::of(&request)?;
        respond(self.tenant_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> RpcResult<pb::Tenant> {
        let mut ctx = CallContext::of(&request)?;
        ctx.tenant = None;
        respond(self.tenant_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn create_role(&self, request: Request<pb::CreateRoleRequest>) -> RpcResult<pb::Role> {
        let ctx = CallContext::of(&request)?;
        respond(self.role_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_role(&self, request: Request<pb::GetRoleRequest>) -> RpcResult<pb::Role> {
        respond(self.role_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> RpcResult<pb::ListRolesResponse> {
        respond(self.roles_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_role(&self, request: Request<pb::UpdateRoleRequest>) -> RpcResult<pb::Role> {
        let ctx = CallContext::of(&request)?;
        respond(self.role_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_role(&self, request: Request<pb::DeleteRoleRequest>) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.role_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn create_role_binding(
        &self,
        request: Request<pb::CreateRoleBindingRequest>,
    ) -> RpcResult<pb::RoleBinding> {
        let ctx = CallContext::of(&request)?;
        respond(self.binding_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_role_binding(
        &self,
        request: Request<pb::GetRoleBindingRequest>,
    ) -> RpcResult<pb::RoleBinding> {
        respond(self.binding_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_role_bindings(
        &self,
        request: Request<pb::ListRoleBindingsRequest>,
    ) -> RpcResult<pb::ListRoleBindingsResponse> {
        respond(self.bindings_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn delete_role_binding(
        &self,
        request: Request<pb::DeleteRoleBindingRequest>,
    ) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.binding_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn create_group(&self, request: Request<pb::CreateGroupRequest>) -> RpcResult<pb::Group> {
        let ctx = CallContext::of(&request)?;
        respond(self.group_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_group(&self, request: Request<pb::GetGroupRequest>) -> RpcResult<pb::Group> {
        respond(self.group_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> RpcResult<pb::ListGroupsResponse> {
        respond(self.groups_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_group(&self, request: Request<pb::UpdateGroupRequest>) -> RpcResult<pb::Group> {
        let ctx = CallContext::of(&request)?;
        respond(self.group_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_group(&self, request: Request<pb::DeleteGroupRequest>) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.group_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn add_group_member(
        &self,
        request: Request<pb::AddGroupMemberRequest>,
    ) -> RpcResult<pb::GroupMember> {
        let ctx = CallContext::of(&request)?;
        respond(self.member_add(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn remove_group_member(
        &self,
        request: Request<pb::RemoveGroupMemberRequest>,
    ) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.member_remove(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn list_group_members(
        &self,
        request: Request<pb::ListGroupMembersRequest>,
    ) -> RpcResult<pb::ListGroupMembersResponse> {
        respond(self.members_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> RpcResult<pb::ServiceAccount> {
        let ctx = CallContext::of(&request)?;
        respond(
            self.service_account_create(&ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> RpcResult<pb::ServiceAccount> {
        respond(self.service_account_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> RpcResult<pb::ListServiceAccountsResponse> {
        respond(self.service_accounts_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_service_account(
        &self,
        request: Request<pb::UpdateServiceAccountRequest>,
    ) -> RpcResult<pb::ServiceAccount> {
        let ctx = CallContext::of(&request)?;
        respond(
            self.service_account_update(&ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(
            self.service_account_delete(&ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn issue_service_account_token(
        &self,
        request: Request<pb::IssueServiceAccountTokenRequest>,
    ) -> RpcResult<pb::IssueServiceAccountTokenResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.token_issue(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn list_service_account_tokens(
        &self,
        request: Request<pb::ListServiceAccountTokensRequest>,
    ) -> RpcResult<pb::ListServiceAccountTokensResponse> {
        respond(self.tokens_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn revoke_service_account_token(
        &self,
        request: Request<pb::RevokeServiceAccountTokenRequest>,
    ) -> RpcResult<pb::ServiceAccountToken> {
        let ctx = CallContext::of(&request)?;
        respond(self.token_revoke(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> RpcResult<pb::RevokeTokenResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.token_revoke_any(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn test_permissions(
        &self,
        request: Request<pb::TestPermissionsRequest>,
    ) -> RpcResult<pb::TestPermissionsResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.test_permissions(&ctx, request.get_ref()))
    }
    #[instrument(skip_all)]
    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> RpcResult<pb::GetCallerResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.caller(&ctx).await)
    }
    #[instrument(skip_all)]
    async fn list_permissions(
        &self,
        request: Request<pb::ListPermissionsRequest>,
    ) -> RpcResult<pb::ListPermissionsResponse> {
        respond(self.permissions_list(request.get_ref()))
    }
}

/// Records an act of the server itself (bootstrap, offline token issue) in the platform chain.
pub async fn audit_system_act(
    audit: &AuditLog,
    method: &str,
    permission: &'static str,
    resource: &str,
    changed: &[&str],
) -> Result<(), Error> {
    let ctx = CallContext::system(method, permission, None, resource);
    let record = AuditRecord::of_call(&ctx, Outcome::Allowed, tonic::Code::Ok, changed);
    audit.append_now(&record).await.map(|_| ())
}

/// The descriptive fields groups and service accounts share, as an update carries them.
struct DescriptiveUpdate<'a> {
    table: &'static str,
    resource_type: &'static str,
    name: &'a str,
    tenant: String,
    id: String,
    display_name: &'a str,
    description: &'a str,
    labels: &'a HashMap<String, String>,
    annotations: &'a HashMap<String, String>,
    etag: &'a str,
}

impl IamService {
    /// Applies an update mask over display_name, description, labels and annotations of a row in
    /// `iam_groups` or `iam_service_accounts`; returns the changed field names.
    async fn descriptive_update(
        &self,
        ctx: &CallContext,
        update: DescriptiveUpdate<'_>,
        mask: Vec<String>,
        validate_only: bool,
    ) -> Result<(), Error> {
        if mask.is_empty() {
            return Err(Error::invalid_argument(
                "update_mask",
                "required: name the fields to change",
            ));
        }
        let all = mask.iter().any(|p| p == "*");
        let mut violations = Vec::new();
        for path in &mask {
            if !matches!(
                path.as_str(),
                "display_name" | "description" | "labels" | "annotations" | "*"
            ) {
                violations.push(FieldViolation::new(
                    "update_mask",
                    format!("`{}` cannot be updated", names::printable(path)),
                ));
            }
        }
        names::validate_text("display_name", update.display_name, 256, &mut violations);
        names::validate_text("description", update.description, 1024, &mut violations);
        names::validate_labels("labels", update.labels, &mut violations);
        names::validate_annotations("annotations", update.annotations, &mut violations);
        violations_to_result(violations)?;
        let has = |f: &str| all || mask.iter().any(|p| p == f);
        let changed: Vec<&str> = ["display_name", "description", "labels", "annotations"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        let table = update.table;
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let row = sqlx::query(&format!("SELECT display_name, description, labels, annotations, etag FROM {table} WHERE tenant = $1 AND id = $2"))
                .bind(&update.tenant)
                .bind(&update.id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: update.resource_type, name: update.name.to_owned() })?;
            let current_etag: String = row.try_get("etag")?;
            check_etag(update.etag, &current_etag)?;
            let mut display_name: String = row.try_get("display_name")?;
            let mut description: String = row.try_get("description")?;
            let mut labels: String = row.try_get("labels")?;
            let mut annotations: String = row.try_get("annotations")?;
            if has("display_name") {
                display_name = if update.display_name.is_empty() { update.id.clone() } else { update.display_name.to_owned() };
            }
            if has("description") {
                description = update.description.to_owned();
            }
            if has("labels") {
                labels = to_json(update.labels)?;
            }
            if has("annotations") {
                annotations = to_json(update.annotations)?;
            }
            if !validate_only {
                sqlx::query(&format!(
                    "UPDATE {table} SET display_name = $1, description = $2, labels = $3, annotations = $4, update_time_us = $5, etag = $6 WHERE tenant = $7 AND id = $8"
                ))
                .bind(display_name)
                .bind(description)
                .bind(labels)
                .bind(annotations)
                .bind(now_micros())
                .bind(new_etag())
                .bind(&update.tenant)
                .bind(&update.id)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        }
        .await;
        if validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &changed).await
    }

    async fn group_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateGroupRequest,
    ) -> Result<pb::Group, Error> {
        let group = req.group.unwrap_or_default();
        let (tenant, id) = parse_child_name("group.name", &group.name, "groups")?;
        let update = DescriptiveUpdate {
            table: "iam_groups",
            resource_type: "group",
            name: &group.name,
            tenant,
            id,
            display_name: &group.display_name,
            description: &group.description,
            labels: &group.labels,
            annotations: &group.annotations,
            etag: &group.etag,
        };
        self.descriptive_update(
            ctx,
            update,
            req.update_mask.map(|m| m.paths).unwrap_or_default(),
            req.validate_only,
        )
        .await?;
        self.group_get(&group.name).await
    }

    async fn service_account_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateServiceAccountRequest,
    ) -> Result<pb::ServiceAccount, Error> {
        let sa = req.service_account.unwrap_or_default();
        let (tenant, id) = parse_child_name("service_account.name", &sa.name, "serviceAccounts")?;
        let update = DescriptiveUpdate {
            table: "iam_service_accounts",
            resource_type: "service account",
            name: &sa.name,
            tenant,
            id,
            display_name: &sa.display_name,
            description: &sa.description,
            labels: &sa.labels,
            annotations: &sa.annotations,
            etag: &sa.etag,
        };
        self.descriptive_update(
            ctx,
            update,
            req.update_mask.map(|m| m.paths).unwrap_or_default(),
            req.validate_only,
        )
        .await?;
        self.service_account_get(&sa.name).await
    }
}
