//! Catalog settings: one row per tenant (absent until first changed), holding how catalog
//! ownership maps to access and how strict imports are.
//!
//! Kept as a row of plain columns rather than an encoded proto so the ownership check in the
//! authorization gate can read `owner_role` and the subject annotation with one indexed lookup.

use platform_api::platform::catalog::v1 as pb;
use sqlx::Row;
use tracing::instrument;

use crate::audit::timestamp;
use crate::context::CallContext;
use crate::error::{Error, FieldViolation};
use crate::idempotency;
use crate::names;
use crate::store::{Store, WriteTx, now_micros};

use super::CatalogService;

/// The annotation that names a User entity's IAM principal when a tenant sets none.
pub const DEFAULT_SUBJECT_ANNOTATION: &str = "platform/subject";
/// The role owners hold when a tenant sets none.
const DEFAULT_OWNER_ROLE_ID: &str = "developer";

/// A tenant's catalog settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub owner_role: String,
    pub include_child_groups: bool,
    pub subject_annotation: String,
    pub match_email: bool,
    pub reject_unknown_kinds: bool,
    pub update_time_us: i64,
    pub etag: String,
}

impl Settings {
    fn defaults(tenant: &str) -> Settings {
        Settings {
            owner_role: format!("tenants/{tenant}/roles/{DEFAULT_OWNER_ROLE_ID}"),
            include_child_groups: false,
            subject_annotation: DEFAULT_SUBJECT_ANNOTATION.to_owned(),
            match_email: false,
            reject_unknown_kinds: false,
            update_time_us: 0,
            etag: String::new(),
        }
    }

    fn to_proto(&self, tenant: &str) -> pb::CatalogSettings {
        pb::CatalogSettings {
            name: format!("tenants/{tenant}/catalogSettings"),
            owner_role: self.owner_role.clone(),
            include_child_groups: self.include_child_groups,
            subject_annotation: self.subject_annotation.clone(),
            match_email: self.match_email,
            reject_unknown_kinds: self.reject_unknown_kinds,
            update_time: (self.update_time_us > 0).then(|| timestamp(self.update_time_us)),
            etag: self.etag.clone(),
        }
    }
}

/// Reads a tenant's settings (the defaults when it never changed them).
#[instrument(skip(executor))]
pub async fn settings_get<'e, E>(executor: E, tenant: &str) -> Result<Settings, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT owner_role, include_child_groups, subject_annotation, match_email, reject_unknown_kinds, \
         update_time_us, etag FROM catalog_settings WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_optional(executor)
    .await?;
    let Some(row) = row else {
        return Ok(Settings::defaults(tenant));
    };
    Ok(Settings {
        owner_role: row.try_get("owner_role")?,
        include_child_groups: row.try_get::<i64, _>("include_child_groups")? != 0,
        subject_annotation: row.try_get("subject_annotation")?,
        match_email: row.try_get::<i64, _>("match_email")? != 0,
        reject_unknown_kinds: row.try_get::<i64, _>("reject_unknown_kinds")? != 0,
        update_time_us: row.try_get("update_time_us")?,
        etag: row.try_get("etag")?,
    })
}

/// `tenants/{tenant}/catalogSettings` → tenant.
fn parse_settings_name(field: &str, name: &str) -> Result<String, Error> {
    match name
        .strip_prefix("tenants/")
        .and_then(|rest| rest.strip_suffix("/catalogSettings"))
    {
        Some(tenant) if names::is_dns_label(tenant) => Ok(tenant.to_owned()),
        _ => Err(Error::invalid_argument(
            field,
            "must be `tenants/{tenant}/catalogSettings`",
        )),
    }
}

/// Checks that `role` names a role of `tenant` that exists (built-in or custom).
async fn owner_role_check(tx: &mut WriteTx, tenant: &str, role: &str) -> Result<(), Error> {
    let id = match role
        .strip_prefix("tenants/")
        .and_then(|rest| rest.split_once("/roles/"))
    {
        Some((t, id)) if t == tenant && !id.is_empty() && !id.contains('/') => id,
        _ => {
            return Err(Error::invalid_argument(
                "catalog_settings.owner_role",
                format!("must be a role of this tenant, `tenants/{tenant}/roles/{{role}}`"),
            ));
        }
    };
    let builtin = platform_policy::roles::builtin_roles()
        .iter()
        .any(|r| r.id == id && r.id != "platform-admin");
    if builtin {
        return Ok(());
    }
    let exists: Option<String> =
        sqlx::query_scalar("SELECT id FROM iam_roles WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    if exists.is_none() {
        return Err(Error::FailedPrecondition {
            message: format!(
                "owner_role `{}` does not exist in this tenant",
                names::printable(role)
            ),
        });
    }
    Ok(())
}

/// Annotation keys: Backstage's `[prefix/]name`, printable ASCII without spaces.
fn annotation_key_valid(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !key.starts_with('/')
        && !key.ends_with('/')
}

impl CatalogService {
    pub(super) async fn catalog_settings_get(
        &self,
        req: &pb::GetCatalogSettingsRequest,
    ) -> Result<pb::CatalogSettings, Error> {
        let tenant = parse_settings_name("name", &req.name)?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
            .bind(&tenant)
            .fetch_optional(self.pool())
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound {
                resource_type: "tenant",
                name: format!("tenants/{tenant}"),
            });
        }
        Ok(settings_get(self.pool(), &tenant).await?.to_proto(&tenant))
    }

    pub(super) async fn catalog_settings_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateCatalogSettingsRequest,
    ) -> Result<pb::CatalogSettings, Error> {
        idempotency::validate(&req.request_id)?;
        let given = req
            .catalog_settings
            .ok_or_else(|| Error::invalid_argument("catalog_settings", "required"))?;
        let tenant = parse_settings_name("catalog_settings.name", &given.name)?;
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            // AIP-134: an absent mask updates every field that is set.
            _ => {
                let mut set = Vec::new();
                if !given.owner_role.is_empty() {
                    set.push("owner_role".to_owned());
                }
                if given.include_child_groups {
                    set.push("include_child_groups".to_owned());
                }
                if !given.subject_annotation.is_empty() {
                    set.push("subject_annotation".to_owned());
                }
                if given.match_email {
                    set.push("match_email".to_owned());
                }
                if given.reject_unknown_kinds {
                    set.push("reject_unknown_kinds".to_owned());
                }
                set
            }
        };
        let mut violations = Vec::new();
        if !given.subject_annotation.is_empty() && !annotation_key_valid(&given.subject_annotation)
        {
            violations.push(FieldViolation::new(
                "catalog_settings.subject_annotation",
                "must be an annotation key (`[prefix/]name`, letters, digits, `-_./`)",
            ));
        }
        for path in &paths {
            if !matches!(
                path.as_str(),
                "*" | "owner_role"
                    | "include_child_groups"
                    | "subject_annotation"
                    | "match_email"
                    | "reject_unknown_kinds"
            ) {
                violations.push(FieldViolation::new(
                    "update_mask",
                    format!("`{}` is not a settable field", names::printable(path)),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let all = paths.iter().any(|p| p == "*");
        let has = |field: &str| all || paths.iter().any(|p| p == field);

        let mut tx = self.store.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::CatalogSettings>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            crate::iam::tenant_require(&mut tx, &tenant).await?;
            let mut settings = settings_get(&mut *tx, &tenant).await?;
            if !given.etag.is_empty() && given.etag != settings.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the settings changed since they were read".into(),
                });
            }
            if has("owner_role") {
                if !given.owner_role.is_empty() {
                    owner_role_check(&mut tx, &tenant, &given.owner_role).await?;
                }
                settings.owner_role = given.owner_role.clone();
            }
            if has("include_child_groups") {
                settings.include_child_groups = given.include_child_groups;
            }
            if has("subject_annotation") {
                settings.subject_annotation = if given.subject_annotation.is_empty() {
                    DEFAULT_SUBJECT_ANNOTATION.to_owned()
                } else {
                    given.subject_annotation.clone()
                };
            }
            if has("match_email") {
                if given.match_email {
                    // Matching needs a verified `email` claim and an index of User emails;
                    // neither exists yet, and storing the flag without honouring it would lie.
                    return Err(Error::unimplemented(
                        "match_email is not supported yet: link principals with the subject annotation",
                    ));
                }
                settings.match_email = false;
            }
            if has("reject_unknown_kinds") {
                settings.reject_unknown_kinds = given.reject_unknown_kinds;
            }
            settings.update_time_us = now_micros();
            settings.etag = uuid::Uuid::new_v4().simple().to_string();
            sqlx::query(
                "INSERT INTO catalog_settings (tenant, owner_role, include_child_groups, subject_annotation, match_email, \
                 reject_unknown_kinds, update_time_us, etag) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant) DO UPDATE SET owner_role = excluded.owner_role, include_child_groups = excluded.include_child_groups, \
                 subject_annotation = excluded.subject_annotation, match_email = excluded.match_email, \
                 reject_unknown_kinds = excluded.reject_unknown_kinds, update_time_us = excluded.update_time_us, etag = excluded.etag",
            )
            .bind(&tenant)
            .bind(&settings.owner_role)
            .bind(i64::from(settings.include_child_groups))
            .bind(&settings.subject_annotation)
            .bind(i64::from(settings.match_email))
            .bind(i64::from(settings.reject_unknown_kinds))
            .bind(settings.update_time_us)
            .bind(&settings.etag)
            .execute(&mut *tx)
            .await?;
            // Which principals are members of which catalog Group depends on the subject
            // annotation: re-derive the IAM groups linked to catalog Groups.
            super::ownership::iam_groups_sync(&mut tx, &tenant).await?;
            let out = settings.to_proto(&tenant);
            idempotency::remember(&mut tx, ctx, &req.request_id, &out).await?;
            Ok(out)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        self.audit
            .finish(ctx, tx, result, &["catalog_settings"])
            .await
    }
}

/// Used by writes that must honour `reject_unknown_kinds`.
pub async fn rejects_unknown_kinds(store: &Store, tenant: &str) -> Result<bool, Error> {
    Ok(settings_get(store.pool(), tenant)
        .await?
        .reject_unknown_kinds)
}
