//! `SecretService`: versioned secrets of a tenant, sealed with envelope encryption
//! ([`keyring`]), served by value only through AccessSecretVersion, and injected into the
//! driver steps of the environments that bind them ([`inject`]).
//!
//! A secret row holds its encoded proto (metadata and version counts) beside the columns lists
//! filter and sort on, labels mirrored in `secret_labels`; a version row holds its metadata, the
//! sealed value and the wrapped data key. Every mutation commits with its audit record. Every
//! AccessSecretVersion is audited — allowed ones here, with the concrete version name, denied
//! ones by the gate — and the audit record must be written before a value leaves the server.
//!
//! Values are handled only as bytes inside [`zeroize::Zeroizing`] buffers between the request
//! and the seal (or the open and the response). Nothing in this module formats a value: no
//! error, log line or audit record can contain one. Destroying a version or deleting a secret
//! overwrites its ciphertext and wrapped key; on SQLite `secure_delete` also zeroes the freed
//! pages (see `store`).

pub mod inject;
pub mod keyring;

use std::collections::BTreeMap;
use std::sync::Arc;

use platform_api::platform::secrets::v1 as pb;
use prost::Message;
use sqlx::Row;
use tonic::Request;
use tracing::instrument;
use zeroize::Zeroizing;

use crate::audit::{AuditLog, AuditRecord, Outcome, micros, timestamp};
use crate::context::CallContext;
use crate::error::{Error, FieldViolation, RpcResult, respond};
use crate::filter::{self, Op, Param, bind_params};
use crate::idempotency;
use crate::names::{self, parse_child_name, parse_tenant_name};
use crate::pagination::{self, OrderKey};
use crate::store::{Store, WriteTx, now_micros};

pub use keyring::{KeyError, Keyring, KeyringConfig, OpenError, VersionAad};

/// The largest value a version may hold.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

const ENABLED: i64 = pb::SecretVersionState::Enabled as i64;
const DISABLED: i64 = pb::SecretVersionState::Disabled as i64;
const DESTROYED: i64 = pb::SecretVersionState::Destroyed as i64;

/// CRC32C (Castagnoli), as cloud secret managers checksum payloads.
pub fn crc32c(data: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(data)
}

fn secret_name(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/secrets/{id}")
}

fn version_name(tenant: &str, secret: &str, number: i64) -> String {
    format!("tenants/{tenant}/secrets/{secret}/versions/{number}")
}

/// A version named by number or by the alias `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(i64),
    Latest,
}

/// Parses `tenants/{tenant}/secrets/{secret}/versions/{version}`.
pub fn parse_version_name(field: &str, name: &str) -> Result<(String, String, VersionRef), Error> {
    let bad = || {
        Error::invalid_argument(
            field,
            "must be a name `tenants/{tenant}/secrets/{secret}/versions/{version}` with a number or `latest`",
        )
    };
    let (secret, version) = name.rsplit_once("/versions/").ok_or_else(bad)?;
    let (tenant, id) = parse_child_name(field, secret, "secrets").map_err(|_| bad())?;
    let version = match version {
        "latest" => VersionRef::Latest,
        n if !n.is_empty()
            && n.len() <= 18
            && n.bytes().all(|b| b.is_ascii_digit())
            && !n.starts_with('0') =>
        {
            VersionRef::Number(n.parse().map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    };
    Ok((tenant, id, version))
}

// ---------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------

/// A secret as stored.
#[derive(Debug, Clone)]
struct SecretRow {
    tenant: String,
    id: String,
    body: pb::Secret,
}

fn secret_from_row(row: &sqlx::any::AnyRow) -> Result<SecretRow, Error> {
    let bytes: Vec<u8> = row.try_get("body")?;
    let mut body = pb::Secret::decode(bytes.as_slice())
        .map_err(|e| Error::internal(format!("stored secret: {e}")))?;
    body.etag = row.try_get("etag")?;
    Ok(SecretRow {
        tenant: row.try_get("tenant")?,
        id: row.try_get("id")?,
        body,
    })
}

async fn secret_load<'e, E>(executor: E, tenant: &str, id: &str) -> Result<Option<SecretRow>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row =
        sqlx::query("SELECT tenant, id, body, etag FROM secrets WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(executor)
            .await?;
    row.map(|r| secret_from_row(&r)).transpose()
}

/// Reads a secret to change it, holding its row lock until `tx` ends (PostgreSQL).
async fn secret_load_for_update(
    tx: &mut WriteTx,
    tenant: &str,
    name: &str,
    id: &str,
) -> Result<SecretRow, Error> {
    crate::store::row_lock(tx, "secrets", tenant, id).await?;
    secret_load(&mut **tx, tenant, id)
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "secret",
            name: name.to_owned(),
        })
}

/// Inserts (`insert`) or rewrites a secret with a new etag and update time; rewrites its label
/// rows when `labels` says they may have changed.
async fn secret_write(
    tx: &mut WriteTx,
    secret: &mut SecretRow,
    insert: bool,
    labels: bool,
) -> Result<(), Error> {
    let now = now_micros();
    secret.body.update_time = Some(timestamp(now));
    secret.body.etag = uuid::Uuid::new_v4().simple().to_string();
    let environment = parse_child_name("environment", &secret.body.environment, "environments")
        .map(|(_, id)| id)
        .unwrap_or_default();
    let sql = if insert {
        "INSERT INTO secrets (uid, environment, create_time_us, update_time_us, latest_version, etag, body, tenant, id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    } else {
        "UPDATE secrets SET uid = $1, environment = $2, create_time_us = $3, update_time_us = $4, \
         latest_version = $5, etag = $6, body = $7 WHERE tenant = $8 AND id = $9"
    };
    sqlx::query(sql)
        .bind(&secret.body.uid)
        .bind(environment)
        .bind(micros(&secret.body.create_time).unwrap_or(now))
        .bind(now)
        .bind(secret.body.latest_version_number)
        .bind(&secret.body.etag)
        .bind(secret.body.encode_to_vec())
        .bind(&secret.tenant)
        .bind(&secret.id)
        .execute(&mut **tx)
        .await?;
    if labels {
        crate::store::labels_replace(
            tx,
            "secret_labels",
            "secret",
            &secret.tenant,
            &secret.id,
            &secret.body.labels,
        )
        .await?;
    }
    Ok(())
}

/// Moves one version's count in the secret's body from state `from` (0 for a new version) to
/// `to`. The secret's row is locked by the caller, so the counts stay exact without recounting
/// every version on each change.
fn secret_counts_move(secret: &mut SecretRow, from: i64, to: i64) {
    let body = &mut secret.body;
    for (state, delta) in [(from, -1), (to, 1)] {
        let count = match state {
            ENABLED => &mut body.enabled_version_count,
            DISABLED => &mut body.disabled_version_count,
            DESTROYED => &mut body.destroyed_version_count,
            _ => continue,
        };
        *count = (*count + delta).max(0);
    }
}

const VERSION_COLUMNS: &str = "v.tenant, v.secret, v.number, v.uid, v.state, v.create_time_us, v.update_time_us, \
     v.destroy_time_us, v.crc32c, v.size_bytes, v.kek_id, v.wrap_time_us, v.etag";

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<pb::SecretVersion, Error> {
    let tenant: String = row.try_get("tenant")?;
    let secret: String = row.try_get("secret")?;
    let number: i64 = row.try_get("number")?;
    let destroy: Option<i64> = row.try_get("destroy_time_us")?;
    let wrap: Option<i64> = row.try_get("wrap_time_us")?;
    Ok(pb::SecretVersion {
        name: version_name(&tenant, &secret, number),
        uid: row.try_get("uid")?,
        number,
        state: i32::try_from(row.try_get::<i64, _>("state")?).unwrap_or_default(),
        create_time: Some(timestamp(row.try_get("create_time_us")?)),
        update_time: Some(timestamp(row.try_get("update_time_us")?)),
        destroy_time: destroy.map(timestamp),
        payload_crc32c: u32::try_from(row.try_get::<i64, _>("crc32c")?).unwrap_or_default(),
        payload_size_bytes: i32::try_from(row.try_get::<i64, _>("size_bytes")?).unwrap_or_default(),
        key_encryption_key_id: row.try_get("kek_id")?,
        key_wrap_time: wrap.map(timestamp),
        etag: row.try_get("etag")?,
    })
}

/// Finds a version (`latest`: the highest-numbered ENABLED one).
async fn version_find<'e, E>(
    executor: E,
    tenant: &str,
    secret: &str,
    version: VersionRef,
) -> Result<Option<pb::SecretVersion>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = match version {
        VersionRef::Number(n) => {
            sqlx::query(&format!(
                "SELECT {VERSION_COLUMNS} FROM secret_versions v WHERE v.tenant = $1 AND v.secret = $2 AND v.number = $3"
            ))
            .bind(tenant)
            .bind(secret)
            .bind(n)
            .fetch_optional(executor)
            .await?
        }
        VersionRef::Latest => {
            sqlx::query(&format!(
                "SELECT {VERSION_COLUMNS} FROM secret_versions v WHERE v.tenant = $1 AND v.secret = $2 AND v.state = $3 \
                 ORDER BY v.number DESC LIMIT 1"
            ))
            .bind(tenant)
            .bind(secret)
            .bind(ENABLED)
            .fetch_optional(executor)
            .await?
        }
    };
    row.map(|r| version_from_row(&r)).transpose()
}

fn version_not_found(tenant: &str, secret: &str, version: VersionRef) -> Error {
    Error::NotFound {
        resource_type: "secret version",
        name: match version {
            VersionRef::Number(n) => version_name(tenant, secret, n),
            VersionRef::Latest => {
                format!(
                    "{}/versions/latest (no ENABLED version)",
                    secret_name(tenant, secret)
                )
            }
        },
    }
}

fn state_word(state: i32) -> &'static str {
    pb::SecretVersionState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("SECRET_VERSION_STATE_"))
        .unwrap_or("UNSPECIFIED")
}

/// Opens the value of a version. `Err` is the reason the value cannot be had.
async fn version_open(
    store: &Store,
    keyring: &Keyring,
    tenant: &str,
    secret: &str,
    number: i64,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let row = sqlx::query(
        "SELECT s.uid AS secret_uid, v.state, v.kek_id, v.wrapped_key, v.ciphertext, v.crc32c \
         FROM secret_versions v JOIN secrets s ON s.tenant = v.tenant AND s.id = v.secret \
         WHERE v.tenant = $1 AND v.secret = $2 AND v.number = $3",
    )
    .bind(tenant)
    .bind(secret)
    .bind(number)
    .fetch_optional(store.pool())
    .await?
    .ok_or_else(|| version_not_found(tenant, secret, VersionRef::Number(number)))?;
    let name = version_name(tenant, secret, number);
    let state = row.try_get::<i64, _>("state")?;
    if state != ENABLED {
        return Err(Error::FailedPrecondition {
            message: format!(
                "{name} is {}; only ENABLED versions can be accessed",
                state_word(i32::try_from(state).unwrap_or_default())
            ),
        });
    }
    let secret_uid: String = row.try_get("secret_uid")?;
    let kek_id: String = row.try_get("kek_id")?;
    let wrapped_key: Option<Vec<u8>> = row.try_get("wrapped_key")?;
    let ciphertext: Option<Vec<u8>> = row.try_get("ciphertext")?;
    let stored_crc: i64 = row.try_get("crc32c")?;
    let corrupt = || Error::DataLoss {
        message: format!(
            "the stored ciphertext of {name} failed authenticated decryption: it does not belong to this version, or storage is corrupt"
        ),
    };
    let (Some(wrapped_key), Some(ciphertext)) = (wrapped_key, ciphertext) else {
        return Err(corrupt());
    };
    let aad = VersionAad {
        tenant,
        secret,
        secret_uid: &secret_uid,
        number,
    };
    let value = keyring
        .open(&aad, &kek_id, &wrapped_key, &ciphertext)
        .map_err(|e| match e {
            OpenError::MissingKey(id) => Error::FailedPrecondition {
                message: format!(
                    "the data key of {name} is wrapped by key-encryption key `{id}`, which this server does not hold"
                ),
            },
            OpenError::Corrupt => corrupt(),
        })?;
    if i64::from(crc32c(&value)) != stored_crc {
        return Err(Error::DataLoss {
            message: format!("the value of {name} does not match its stored CRC32C"),
        });
    }
    Ok(value)
}

/// Re-wraps up to `batch` data keys not yet wrapped by `target` in one transaction; returns
/// (re-wrapped, still wrapped by another key). Safe beside other replicas doing the same: each
/// row is updated only if it is still wrapped by the key it was read with.
pub async fn data_keys_rewrap(
    store: &Store,
    keyring: &Keyring,
    target: &str,
    batch: i64,
) -> Result<(i64, i64), Error> {
    let mut tx = store.write_tx().await?;
    let rows = sqlx::query(
        "SELECT v.tenant, v.secret, v.number, v.kek_id, v.wrapped_key, s.uid AS secret_uid \
         FROM secret_versions v JOIN secrets s ON s.tenant = v.tenant AND s.id = v.secret \
         WHERE v.kek_id <> '' AND v.kek_id <> $1 AND v.state <> $2 \
         ORDER BY v.tenant, v.secret, v.number LIMIT $3",
    )
    .bind(target)
    .bind(DESTROYED)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let now = now_micros();
    let mut done = 0;
    for row in rows {
        let tenant: String = row.try_get("tenant")?;
        let secret: String = row.try_get("secret")?;
        let number: i64 = row.try_get("number")?;
        let kek_id: String = row.try_get("kek_id")?;
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped_key")?;
        let secret_uid: String = row.try_get("secret_uid")?;
        let aad = VersionAad {
            tenant: &tenant,
            secret: &secret,
            secret_uid: &secret_uid,
            number,
        };
        let name = version_name(&tenant, &secret, number);
        let rewrapped = keyring
            .rewrap(&aad, &kek_id, wrapped.as_deref().unwrap_or_default(), target)
            .map_err(|e| match e {
                OpenError::MissingKey(id) => Error::FailedPrecondition {
                    message: format!(
                        "the data key of {name} is wrapped by key-encryption key `{id}`, which this server does not hold"
                    ),
                },
                OpenError::Corrupt => Error::DataLoss {
                    message: format!("the wrapped data key of {name} failed authenticated decryption"),
                },
            })?;
        done += sqlx::query(
            "UPDATE secret_versions SET kek_id = $1, wrapped_key = $2, wrap_time_us = $3 \
             WHERE tenant = $4 AND secret = $5 AND number = $6 AND kek_id = $7",
        )
        .bind(target)
        .bind(rewrapped)
        .bind(now)
        .bind(&tenant)
        .bind(&secret)
        .bind(number)
        .bind(&kek_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
    }
    let remaining: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM secret_versions WHERE kek_id <> '' AND kek_id <> $1 AND state <> $2",
    )
    .bind(target)
    .bind(DESTROYED)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((done, remaining))
}

/// How many data keys each key id wraps (versions not destroyed), across the whole database.
pub async fn data_key_counts(store: &Store) -> Result<BTreeMap<String, i64>, Error> {
    let rows = sqlx::query(
        "SELECT kek_id, COUNT(*) AS n FROM secret_versions WHERE kek_id <> '' AND state <> $1 GROUP BY kek_id",
    )
    .bind(DESTROYED)
    .fetch_all(store.pool())
    .await?;
    let mut counts = BTreeMap::new();
    for row in rows {
        counts.insert(row.try_get("kek_id")?, row.try_get("n")?);
    }
    Ok(counts)
}

/// Refuses to start when a wrapped data key names a key this server does not hold.
pub async fn keys_check_complete(store: &Store, keyring: &Keyring) -> Result<(), String> {
    let counts = data_key_counts(store)
        .await
        .map_err(|e| format!("cannot read the wrapped data keys: {e}"))?;
    let missing: Vec<String> = counts
        .iter()
        .filter(|(id, _)| !keyring.holds(id))
        .map(|(id, n)| format!("`{id}` ({n} data keys)"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stored secrets are wrapped by key-encryption keys this server does not have: {}; \
             add them to --secret-keys-file or {} (see README, \"Secrets and keys\")",
            missing.join(", "),
            keyring::KEYS_ENV
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

/// The `SecretService` implementation.
#[derive(Debug, Clone)]
pub struct SecretService {
    store: Store,
    audit: AuditLog,
    keyring: Arc<Keyring>,
}

/// Which mutable fields an UpdateSecret touches.
#[derive(Debug, Default)]
struct UpdateFields {
    description: bool,
    labels: bool,
    annotations: bool,
    /// `labels.<key>` paths.
    label_keys: Vec<String>,
}

fn update_fields(mask: Option<&prost_types::FieldMask>) -> Result<UpdateFields, Error> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid_argument(
            "update_mask",
            "required: any of description, labels, annotations, or *",
        ));
    }
    let mut f = UpdateFields::default();
    for path in paths {
        match path.as_str() {
            "*" => {
                f.description = true;
                f.labels = true;
                f.annotations = true;
            }
            "description" => f.description = true,
            "labels" => f.labels = true,
            "annotations" => f.annotations = true,
            p if p.starts_with("labels.") && p.len() > 7 => f.label_keys.push(p[7..].to_owned()),
            p => {
                return Err(Error::invalid_argument(
                    "update_mask",
                    format!(
                        "`{}` is not a mutable field (description, labels, annotations)",
                        names::printable(p)
                    ),
                ));
            }
        }
    }
    Ok(f)
}

fn validate_metadata(secret: &pb::Secret, violations: &mut Vec<FieldViolation>) {
    names::validate_text("secret.description", &secret.description, 1024, violations);
    names::validate_labels("secret.labels", &secret.labels, violations);
    names::validate_annotations("secret.annotations", &secret.annotations, violations);
}

impl SecretService {
    pub fn new(store: Store, audit: AuditLog, keyring: Arc<Keyring>) -> Self {
        SecretService {
            store,
            audit,
            keyring,
        }
    }

    #[instrument(skip_all)]
    async fn secret_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateSecretRequest,
    ) -> Result<pb::Secret, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        names::validate_id("secret_id", &req.secret_id)?;
        idempotency::validate(&req.request_id)?;
        let given = req
            .secret
            .ok_or_else(|| Error::invalid_argument("secret", "required"))?;
        let mut violations = Vec::new();
        validate_metadata(&given, &mut violations);
        let environment = if given.environment.is_empty() {
            None
        } else {
            match parse_child_name("secret.environment", &given.environment, "environments") {
                Ok((t, id)) if t == tenant => Some(id),
                Ok(_) => {
                    violations.push(FieldViolation::new(
                        "secret.environment",
                        "must be an environment of the same tenant",
                    ));
                    None
                }
                Err(_) => {
                    violations.push(FieldViolation::new(
                        "secret.environment",
                        "must be `tenants/{tenant}/environments/{environment}`",
                    ));
                    None
                }
            }
        };
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let now = now_micros();
        let name = secret_name(&tenant, &req.secret_id);
        let body = pb::Secret {
            name: name.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            description: given.description,
            environment: given.environment,
            labels: given.labels,
            annotations: given.annotations,
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
            ..Default::default()
        };
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Secret>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            crate::iam::tenant_require(&mut tx, &tenant).await?;
            if let Some(env) = &environment {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT id FROM environments WHERE tenant = $1 AND id = $2")
                        .bind(&tenant)
                        .bind(env)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err(Error::FailedPrecondition {
                        message: format!("environment `{}` does not exist", body.environment),
                    });
                }
            }
            if secret_load(&mut *tx, &tenant, &req.secret_id)
                .await?
                .is_some()
            {
                return Err(Error::AlreadyExists {
                    resource_type: "secret",
                    name: name.clone(),
                });
            }
            let mut row = SecretRow {
                tenant: tenant.clone(),
                id: req.secret_id.clone(),
                body: body.clone(),
            };
            if req.validate_only {
                return Ok(row.body);
            }
            secret_write(&mut tx, &mut row, true, true).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &row.body).await?;
            Ok(row.body)
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &["secret"]).await
    }

    async fn secret_get(&self, name: &str) -> Result<pb::Secret, Error> {
        let (tenant, id) = parse_child_name("name", name, "secrets")?;
        secret_load(self.store.pool(), &tenant, &id)
            .await?
            .map(|s| s.body)
            .ok_or_else(|| Error::NotFound {
                resource_type: "secret",
                name: name.to_owned(),
            })
    }

    #[instrument(skip_all)]
    async fn secrets_list(
        &self,
        req: &pb::ListSecretsRequest,
    ) -> Result<pb::ListSecretsResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        let page_size = pagination::page_size(req.page_size)?;
        let order = pagination::parse_order_by(
            &req.order_by,
            &[
                ("name", "s.id", false),
                ("create_time", "s.create_time_us", true),
                ("update_time", "s.update_time_us", true),
            ],
            "name, create_time, update_time",
            &["s.id"],
        )?;
        let mut params: Vec<Param> = Vec::new();
        let mut where_sql = String::from(" WHERE s.tenant = $1");
        if let Some(expr) = filter::parse_expr(&req.filter)? {
            let clause = filter::expr_sql(&expr, &mut |term| {
                secret_term_sql(term, &tenant, &mut params)
            })?;
            where_sql.push_str(" AND ");
            where_sql.push_str(&clause);
        }
        let fingerprint =
            pagination::query_fingerprint(&[&tenant, &req.filter, &req.order_by, "secrets"]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?;
        let total: i64 = bind_params(
            sqlx::query(&format!("SELECT COUNT(*) AS n FROM secrets s{where_sql}")).bind(&tenant),
            &params,
        )
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        let keyset = pagination::Keyset::new(&order, after.as_deref())?;
        let sql = format!(
            "SELECT s.tenant, s.id, s.body, s.etag, {} FROM secrets s{where_sql}{}{}",
            keyset.select_columns(),
            keyset.after_sql(params.len() + 2)?,
            keyset.order_sql(page_size + 1),
        );
        let rows = keyset
            .bind(bind_params(sqlx::query(&sql).bind(&tenant), &params))?
            .fetch_all(self.store.pool())
            .await?;
        let (secrets, next_page_token) = keyset.page(fingerprint, &rows, page_size, |row| {
            secret_from_row(row).map(|s| s.body)
        })?;
        Ok(pb::ListSecretsResponse {
            secrets,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    #[instrument(skip_all)]
    async fn secret_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateSecretRequest,
    ) -> Result<pb::Secret, Error> {
        let given = req
            .secret
            .ok_or_else(|| Error::invalid_argument("secret", "required"))?;
        let (tenant, id) = parse_child_name("secret.name", &given.name, "secrets")?;
        idempotency::validate(&req.request_id)?;
        let fields = update_fields(req.update_mask.as_ref())?;
        let mut violations = Vec::new();
        validate_metadata(&given, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Secret>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let mut row = secret_load_for_update(&mut tx, &tenant, &given.name, &id).await?;
            if !given.etag.is_empty() && given.etag != row.body.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the secret changed since it was read".into(),
                });
            }
            if fields.description {
                row.body.description = given.description.clone();
            }
            if fields.labels {
                row.body.labels = given.labels.clone();
            }
            for key in &fields.label_keys {
                match given.labels.get(key) {
                    Some(value) => {
                        row.body.labels.insert(key.clone(), value.clone());
                    }
                    None => {
                        row.body.labels.remove(key);
                    }
                }
            }
            if fields.annotations {
                row.body.annotations = given.annotations.clone();
            }
            let mut violations = Vec::new();
            names::validate_labels("secret.labels", &row.body.labels, &mut violations);
            if !violations.is_empty() {
                return Err(Error::InvalidArgument(violations));
            }
            if req.validate_only {
                return Ok(row.body);
            }
            let labels = fields.labels || !fields.label_keys.is_empty();
            secret_write(&mut tx, &mut row, false, labels).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &row.body).await?;
            Ok(row.body)
        }
        .await;
        if req.validate_only {
            return result;
        }
        let mut changed: Vec<&str> = Vec::new();
        if fields.description {
            changed.push("description");
        }
        if fields.labels || !fields.label_keys.is_empty() {
            changed.push("labels");
        }
        if fields.annotations {
            changed.push("annotations");
        }
        self.audit.finish(ctx, tx, result, &changed).await
    }

    #[instrument(skip_all)]
    async fn secret_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteSecretRequest,
    ) -> Result<(), Error> {
        let (tenant, id) = parse_child_name("name", &req.name, "secrets")?;
        idempotency::validate(&req.request_id)?;
        let mut tx = self.store.write_tx().await?;
        if idempotency::lookup::<()>(&mut tx, ctx, &req.request_id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let result = async {
            let row = secret_load_for_update(&mut tx, &tenant, &req.name, &id).await?;
            if !req.etag.is_empty() && req.etag != row.body.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the secret changed since it was read".into(),
                });
            }
            if req.validate_only {
                return Ok(());
            }
            // Overwrite before deleting, so the sealed bytes do not linger in freed pages.
            sqlx::query(
                "UPDATE secret_versions SET ciphertext = NULL, wrapped_key = NULL, kek_id = '' WHERE tenant = $1 AND secret = $2",
            )
            .bind(&tenant)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            for table in ["secret_versions", "secret_labels"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE tenant = $1 AND secret = $2"
                ))
                .bind(&tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM secrets WHERE tenant = $1 AND id = $2")
                .bind(&tenant)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &()).await?;
            Ok(())
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &["secret"]).await
    }

    #[instrument(skip_all)]
    async fn version_add(
        &self,
        ctx: &CallContext,
        req: pb::AddSecretVersionRequest,
    ) -> Result<pb::SecretVersion, Error> {
        let (tenant, id) = parse_child_name("parent", &req.parent, "secrets")?;
        idempotency::validate(&req.request_id)?;
        let payload = req
            .payload
            .ok_or_else(|| Error::invalid_argument("payload", "required"))?;
        let data = Zeroizing::new(payload.data);
        if data.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::invalid_argument(
                "payload.data",
                format!(
                    "is {} bytes; a secret value is at most {MAX_PAYLOAD_BYTES} bytes (64 KiB)",
                    data.len()
                ),
            ));
        }
        let checksum = crc32c(&data);
        if let Some(given) = payload.data_crc32c
            && given != checksum
        {
            return Err(Error::invalid_argument(
                "payload.data_crc32c",
                "does not match the CRC32C (Castagnoli) of payload.data; the value was not stored",
            ));
        }
        if let Some(expected) = req.expected_latest_version
            && expected < 0
        {
            return Err(Error::invalid_argument(
                "expected_latest_version",
                "must be 0 or more",
            ));
        }
        let mut tx = self.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::SecretVersion>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let mut secret = secret_load_for_update(&mut tx, &tenant, &req.parent, &id).await?;
            if let Some(expected) = req.expected_latest_version
                && expected != secret.body.latest_version_number
            {
                return Err(Error::Aborted {
                    message: format!(
                        "check-and-set failed: the latest version is {}, not {expected}",
                        secret.body.latest_version_number
                    ),
                });
            }
            let number = secret.body.latest_version_number + 1;
            let now = now_micros();
            let mut version = pb::SecretVersion {
                name: version_name(&tenant, &id, number),
                uid: uuid::Uuid::new_v4().to_string(),
                number,
                state: ENABLED as i32,
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
                destroy_time: None,
                payload_crc32c: checksum,
                payload_size_bytes: data.len() as i32,
                key_encryption_key_id: String::new(),
                key_wrap_time: Some(timestamp(now)),
                etag: uuid::Uuid::new_v4().simple().to_string(),
            };
            if req.validate_only {
                version.key_encryption_key_id = self.keyring.primary_id();
                return Ok(version);
            }
            let sealed = self.keyring.seal(
                &VersionAad {
                    tenant: &tenant,
                    secret: &id,
                    secret_uid: &secret.body.uid,
                    number,
                },
                &data,
            );
            version.key_encryption_key_id = sealed.kek_id.clone();
            sqlx::query(
                "INSERT INTO secret_versions (tenant, secret, number, uid, state, create_time_us, update_time_us, \
                 destroy_time_us, crc32c, size_bytes, kek_id, wrap_time_us, wrapped_key, ciphertext, etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&tenant)
            .bind(&id)
            .bind(number)
            .bind(&version.uid)
            .bind(ENABLED)
            .bind(now)
            .bind(now)
            .bind(i64::from(checksum))
            .bind(data.len() as i64)
            .bind(&sealed.kek_id)
            .bind(now)
            .bind(sealed.wrapped_key)
            .bind(sealed.ciphertext)
            .bind(&version.etag)
            .execute(&mut *tx)
            .await?;
            secret.body.latest_version_number = number;
            secret_counts_move(&mut secret, 0, ENABLED);
            secret_write(&mut tx, &mut secret, false, false).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &version).await?;
            Ok(version)
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &["versions"]).await
    }

    async fn version_get(&self, name: &str) -> Result<pb::SecretVersion, Error> {
        let (tenant, secret, version) = parse_version_name("name", name)?;
        let found = version_find(self.store.pool(), &tenant, &secret, version).await?;
        match found {
            Some(v) => Ok(v),
            None => {
                self.secret_get(&secret_name(&tenant, &secret)).await?;
                Err(version_not_found(&tenant, &secret, version))
            }
        }
    }

    #[instrument(skip_all)]
    async fn versions_list(
        &self,
        req: &pb::ListSecretVersionsRequest,
    ) -> Result<pb::ListSecretVersionsResponse, Error> {
        let (tenant, secret) = parse_child_name("parent", &req.parent, "secrets")?;
        let page_size = pagination::page_size(req.page_size)?;
        let order = pagination::parse_order_by(
            &req.order_by,
            &[("number", "v.number", true)],
            "number",
            &[],
        )?;
        let order: Vec<OrderKey> = if order.is_empty() {
            vec![OrderKey {
                column: "v.number",
                desc: true,
                integer: true,
            }]
        } else {
            order
        };
        let mut params: Vec<Param> = vec![Param::Text(secret.clone())];
        let mut where_sql = String::from(" WHERE v.tenant = $1 AND v.secret = $2");
        if let Some(expr) = filter::parse_expr(&req.filter)? {
            let clause = filter::expr_sql(&expr, &mut |term| version_term_sql(term, &mut params))?;
            where_sql.push_str(" AND ");
            where_sql.push_str(&clause);
        }
        self.secret_get(&req.parent).await?;
        let fingerprint = pagination::query_fingerprint(&[
            &tenant,
            &secret,
            &req.filter,
            &req.order_by,
            "secret-versions",
        ]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?;
        let total: i64 = bind_params(
            sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM secret_versions v{where_sql}"
            ))
            .bind(&tenant),
            &params,
        )
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        let keyset = pagination::Keyset::new(&order, after.as_deref())?;
        let sql = format!(
            "SELECT {VERSION_COLUMNS}, {} FROM secret_versions v{where_sql}{}{}",
            keyset.select_columns(),
            keyset.after_sql(params.len() + 2)?,
            keyset.order_sql(page_size + 1),
        );
        let rows = keyset
            .bind(bind_params(sqlx::query(&sql).bind(&tenant), &params))?
            .fetch_all(self.store.pool())
            .await?;
        let (versions, next_page_token) =
            keyset.page(fingerprint, &rows, page_size, version_from_row)?;
        Ok(pb::ListSecretVersionsResponse {
            versions,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    /// Resolves and opens the value; `Err` carries the concrete name when it was resolved.
    async fn version_access_resolve(
        &self,
        name: &str,
    ) -> Result<(String, Zeroizing<Vec<u8>>, u32), (Option<String>, Error)> {
        let (tenant, secret, _) = parse_version_name("name", name).map_err(|e| (None, e))?;
        let found = self.version_get(name).await.map_err(|e| (None, e))?;
        let concrete = found.name.clone();
        if found.state != ENABLED as i32 {
            return Err((
                Some(concrete.clone()),
                Error::FailedPrecondition {
                    message: format!(
                        "{concrete} is {}; only ENABLED versions can be accessed",
                        state_word(found.state)
                    ),
                },
            ));
        }
        let value = version_open(&self.store, &self.keyring, &tenant, &secret, found.number)
            .await
            .map_err(|e| (Some(concrete.clone()), e))?;
        Ok((concrete, value, found.payload_crc32c))
    }

    #[instrument(skip_all)]
    async fn version_access(
        &self,
        ctx: &CallContext,
        req: pb::AccessSecretVersionRequest,
    ) -> Result<pb::AccessSecretVersionResponse, Error> {
        let resolved = self.version_access_resolve(&req.name).await;
        let (resource, outcome, code) = match &resolved {
            Ok((concrete, _, _)) => (concrete.clone(), Outcome::Allowed, tonic::Code::Ok),
            Err((concrete, err)) => (
                concrete.clone().unwrap_or_else(|| ctx.resource.clone()),
                Outcome::Failed,
                err.code(),
            ),
        };
        let mut record = AuditRecord::of_call(ctx, outcome, code, &[]);
        record.resource = resource;
        // No value leaves before its access is on the record.
        self.audit.append_now(&record).await?;
        let (name, value, checksum) = resolved.map_err(|(_, e)| e)?;
        Ok(pb::AccessSecretVersionResponse {
            name,
            payload: Some(pb::SecretPayload {
                data: value.to_vec(),
                data_crc32c: Some(checksum),
            }),
        })
    }

    #[instrument(skip_all)]
    async fn version_state_set(
        &self,
        ctx: &CallContext,
        name: &str,
        etag: &str,
        target: i64,
    ) -> Result<pb::SecretVersion, Error> {
        let (tenant, id, version) = parse_version_name("name", name)?;
        let VersionRef::Number(number) = version else {
            return Err(Error::invalid_argument(
                "name",
                "state changes need a numbered version, not `latest`",
            ));
        };
        let mut tx = self.store.write_tx().await?;
        let result = async {
            let mut secret =
                secret_load_for_update(&mut tx, &tenant, &secret_name(&tenant, &id), &id).await?;
            let current = version_find(&mut *tx, &tenant, &id, version)
                .await?
                .ok_or_else(|| version_not_found(&tenant, &id, version))?;
            if !etag.is_empty() && etag != current.etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the version changed since it was read".into(),
                });
            }
            let state = i64::from(current.state);
            if state == target {
                return Ok((current, false));
            }
            if state == DESTROYED {
                return Err(Error::FailedPrecondition {
                    message: format!("{name} is DESTROYED; its state can no longer change"),
                });
            }
            let now = now_micros();
            let new_etag = uuid::Uuid::new_v4().simple().to_string();
            if target == DESTROYED {
                sqlx::query(
                    "UPDATE secret_versions SET state = $1, update_time_us = $2, destroy_time_us = $2, \
                     ciphertext = NULL, wrapped_key = NULL, kek_id = '', wrap_time_us = NULL, etag = $3 \
                     WHERE tenant = $4 AND secret = $5 AND number = $6",
                )
                .bind(target)
                .bind(now)
                .bind(&new_etag)
                .bind(&tenant)
                .bind(&id)
                .bind(number)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE secret_versions SET state = $1, update_time_us = $2, etag = $3 \
                     WHERE tenant = $4 AND secret = $5 AND number = $6",
                )
                .bind(target)
                .bind(now)
                .bind(&new_etag)
                .bind(&tenant)
                .bind(&id)
                .bind(number)
                .execute(&mut *tx)
                .await?;
            }
            secret_counts_move(&mut secret, state, target);
            secret_write(&mut tx, &mut secret, false, false).await?;
            let updated = version_find(&mut *tx, &tenant, &id, version)
                .await?
                .ok_or_else(|| version_not_found(&tenant, &id, version))?;
            Ok((updated, true))
        }
        .await;
        match result {
            Ok((version, false)) => Ok(version), // nothing changed: nothing to record
            Ok((version, true)) => self.audit.finish(ctx, tx, Ok(version), &["state"]).await,
            Err(err) => self.audit.finish(ctx, tx, Err(err), &["state"]).await,
        }
    }

    fn key_info(&self, id: &str, counts: &BTreeMap<String, i64>) -> pb::KeyEncryptionKey {
        let held = self.keyring.keys().into_iter().find(|k| k.id == id);
        let (state, source, load_time) = match held {
            Some(k) => (
                if k.primary {
                    pb::KeyEncryptionKeyState::Primary
                } else {
                    pb::KeyEncryptionKeyState::DecryptOnly
                },
                match k.source {
                    keyring::KeySource::File => pb::KeyEncryptionKeySource::File,
                    keyring::KeySource::Environment => pb::KeyEncryptionKeySource::Environment,
                    keyring::KeySource::Generated => pb::KeyEncryptionKeySource::Generated,
                },
                Some(timestamp(k.load_time_us)),
            ),
            None => (
                pb::KeyEncryptionKeyState::Missing,
                pb::KeyEncryptionKeySource::Unspecified,
                None,
            ),
        };
        pb::KeyEncryptionKey {
            name: format!("keyEncryptionKeys/{id}"),
            key_id: id.to_owned(),
            state: state as i32,
            source: source as i32,
            wrapped_data_key_count: counts.get(id).copied().unwrap_or_default(),
            load_time,
        }
    }

    #[instrument(skip_all)]
    async fn keys_list(
        &self,
        req: &pb::ListKeyEncryptionKeysRequest,
    ) -> Result<pb::ListKeyEncryptionKeysResponse, Error> {
        let page_size = pagination::page_size(req.page_size)? as usize;
        self.keyring.refresh_if_changed();
        let counts = data_key_counts(&self.store).await?;
        let mut ids: Vec<String> = self.keyring.keys().into_iter().map(|k| k.id).collect();
        ids.extend(counts.keys().filter(|id| !self.keyring.holds(id)).cloned());
        let fingerprint = pagination::query_fingerprint(&["keyEncryptionKeys"]);
        let start: usize = match pagination::decode_token(fingerprint, &req.page_token)? {
            Some(after) => after
                .parse()
                .map_err(|_| Error::invalid_argument("page_token", "malformed"))?,
            None => 0,
        };
        let page: Vec<pb::KeyEncryptionKey> = ids
            .iter()
            .skip(start)
            .take(page_size)
            .map(|id| self.key_info(id, &counts))
            .collect();
        let next = start + page.len();
        Ok(pb::ListKeyEncryptionKeysResponse {
            key_encryption_keys: page,
            next_page_token: if next < ids.len() {
                pagination::encode_token(fingerprint, &next.to_string())
            } else {
                String::new()
            },
            total_size: i32::try_from(ids.len()).unwrap_or(i32::MAX),
        })
    }

    async fn key_get(&self, name: &str) -> Result<pb::KeyEncryptionKey, Error> {
        let id = name
            .strip_prefix("keyEncryptionKeys/")
            .filter(|id| keyring::valid_key_id(id))
            .ok_or_else(|| Error::invalid_argument("name", "must be `keyEncryptionKeys/{key}`"))?;
        self.keyring.refresh_if_changed();
        let counts = data_key_counts(&self.store).await?;
        if !self.keyring.holds(id) && !counts.contains_key(id) {
            return Err(Error::NotFound {
                resource_type: "key-encryption key",
                name: name.to_owned(),
            });
        }
        Ok(self.key_info(id, &counts))
    }

    #[instrument(skip_all)]
    async fn keys_rewrap(
        &self,
        ctx: &CallContext,
        req: pb::RewrapDataKeysRequest,
    ) -> Result<pb::RewrapDataKeysResponse, Error> {
        if req.batch_size < 0 {
            return Err(Error::invalid_argument(
                "batch_size",
                "must not be negative",
            ));
        }
        let batch = match req.batch_size {
            0 => 500,
            n => i64::from(n.min(10_000)),
        };
        self.keyring.refresh_if_changed();
        let target = if req.target_key_encryption_key.is_empty() {
            self.keyring.primary_id()
        } else {
            req.target_key_encryption_key
                .strip_prefix("keyEncryptionKeys/")
                .filter(|id| keyring::valid_key_id(id))
                .ok_or_else(|| {
                    Error::invalid_argument(
                        "target_key_encryption_key",
                        "must be `keyEncryptionKeys/{key}`",
                    )
                })?
                .to_owned()
        };
        let result = if target != self.keyring.primary_id() {
            Err(Error::FailedPrecondition {
                message: format!(
                    "key-encryption key `{target}` is not this server's primary key (`{}`); make it primary first",
                    self.keyring.primary_id()
                ),
            })
        } else {
            data_keys_rewrap(&self.store, &self.keyring, &target, batch).await
        };
        let mut record = AuditRecord::of_call(
            ctx,
            if result.is_ok() {
                Outcome::Allowed
            } else {
                Outcome::Failed
            },
            result
                .as_ref()
                .map(|_| tonic::Code::Ok)
                .unwrap_or_else(|e| e.code()),
            &["key_encryption_key_id"],
        );
        record.resource = format!("keyEncryptionKeys/{target}");
        self.audit.append_now(&record).await?;
        let (rewrapped, remaining) = result?;
        tracing::info!(target_key = %target, rewrapped, remaining, "re-wrapped data keys");
        Ok(pb::RewrapDataKeysResponse {
            target_key_encryption_key: format!("keyEncryptionKeys/{target}"),
            rewrapped_count: rewrapped,
            remaining_count: remaining,
            done: remaining == 0,
        })
    }
}

/// SQL for one ListSecrets filter term.
fn secret_term_sql(
    term: &filter::Term,
    tenant: &str,
    params: &mut Vec<Param>,
) -> Result<String, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let field = term.field.as_str();
    if let Some(key) = field.strip_prefix("labels.") {
        return filter::label_term_sql(term, key, "secret_labels", "secret", "s", params);
    }
    let eq = |op: Op| match op {
        Op::Eq => Ok("="),
        Op::Ne => Ok("<>"),
        _ => Err(bad(format!(
            "`{}` supports = and !=",
            names::printable(field)
        ))),
    };
    match field {
        "name" => {
            let op = eq(term.op)?;
            let prefix = format!("tenants/{tenant}/secrets/");
            let Some(id) = term.value.strip_prefix(&prefix) else {
                // Another tenant's name never matches.
                return Ok(if op == "=" {
                    "1 = 0".into()
                } else {
                    "1 = 1".into()
                });
            };
            if let Some(stem) = id.strip_suffix('*') {
                params.push(Param::Text(stem.to_owned()));
                let p = params.len() + 1;
                params.push(Param::Int(stem.len() as i64));
                let n = params.len() + 1;
                let sql = format!("SUBSTR(s.id, 1, CAST(${n} AS INTEGER)) = ${p}");
                return Ok(if op == "=" {
                    sql
                } else {
                    format!("(NOT {sql})")
                });
            }
            params.push(Param::Text(id.to_owned()));
            Ok(format!("s.id {op} ${}", params.len() + 1))
        }
        "environment" => {
            let op = eq(term.op)?;
            let id = if term.value.is_empty() {
                String::new()
            } else {
                match parse_child_name("filter", &term.value, "environments") {
                    Ok((t, id)) if t == tenant => id,
                    Ok(_) => "/".into(), // another tenant's environment: matches nothing
                    Err(e) => return Err(e),
                }
            };
            params.push(Param::Text(id));
            Ok(format!("s.environment {op} ${}", params.len() + 1))
        }
        "create_time" => filter::time_term_sql(term, "s.create_time_us", params),
        "update_time" => filter::time_term_sql(term, "s.update_time_us", params),
        other => Err(bad(format!(
            "cannot filter on `{}` (fields: name, environment, labels.<key>, create_time, update_time)",
            names::printable(other)
        ))),
    }
}

/// SQL for one ListSecretVersions filter term.
fn version_term_sql(term: &filter::Term, params: &mut Vec<Param>) -> Result<String, Error> {
    let bad = |why: String| Error::invalid_argument("filter", why);
    let cmp = |op: Op| match op {
        Op::Eq => Ok("="),
        Op::Ne => Ok("<>"),
        Op::Lt => Ok("<"),
        Op::Le => Ok("<="),
        Op::Gt => Ok(">"),
        Op::Ge => Ok(">="),
        Op::Has => Err(bad(format!(
            "`{}` takes a comparison",
            names::printable(&term.field)
        ))),
    };
    match term.field.as_str() {
        "state" => {
            let op = match term.op {
                Op::Eq | Op::Ne => cmp(term.op)?,
                _ => return Err(bad("`state` supports = and !=".into())),
            };
            let state = pb::SecretVersionState::from_str_name(&format!(
                "SECRET_VERSION_STATE_{}",
                term.value
            ))
            .filter(|s| *s != pb::SecretVersionState::Unspecified)
            .ok_or_else(|| {
                bad(format!(
                    "`{}` is not a version state (ENABLED, DISABLED, DESTROYED)",
                    names::printable(&term.value)
                ))
            })?;
            params.push(Param::Int(state as i64));
            Ok(format!("v.state {op} ${}", params.len() + 1))
        }
        "number" => {
            let op = match term.op {
                Op::Ne => return Err(bad("`number` supports =, <, <=, >, >=".into())),
                other => cmp(other)?,
            };
            let n: i64 = term
                .value
                .parse()
                .map_err(|_| bad("`number` takes an integer".into()))?;
            params.push(Param::Int(n));
            Ok(format!("v.number {op} ${}", params.len() + 1))
        }
        "create_time" => filter::time_term_sql(term, "v.create_time_us", params),
        "key_encryption_key_id" => {
            let op = match term.op {
                Op::Eq | Op::Ne => cmp(term.op)?,
                _ => return Err(bad("`key_encryption_key_id` supports = and !=".into())),
            };
            params.push(Param::Text(term.value.clone()));
            Ok(format!("v.kek_id {op} ${}", params.len() + 1))
        }
        other => Err(bad(format!(
            "cannot filter on `{}` (fields: state, number, create_time, key_encryption_key_id)",
            names::printable(other)
        ))),
    }
}

#[tonic::async_trait]
impl pb::secret_service_server::SecretService for SecretService {
    #[instrument(skip_all)]
    async fn create_secret(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> RpcResult<pb::Secret> {
        let ctx = CallContext::of(&request)?;
        respond(self.secret_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_secret(&self, request: Request<pb::GetSecretRequest>) -> RpcResult<pb::Secret> {
        respond(self.secret_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> RpcResult<pb::ListSecretsResponse> {
        respond(self.secrets_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_secret(
        &self,
        request: Request<pb::UpdateSecretRequest>,
    ) -> RpcResult<pb::Secret> {
        let ctx = CallContext::of(&request)?;
        respond(self.secret_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_secret(&self, request: Request<pb::DeleteSecretRequest>) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.secret_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn add_secret_version(
        &self,
        request: Request<pb::AddSecretVersionRequest>,
    ) -> RpcResult<pb::SecretVersion> {
        let ctx = CallContext::of(&request)?;
        respond(self.version_add(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_secret_version(
        &self,
        request: Request<pb::GetSecretVersionRequest>,
    ) -> RpcResult<pb::SecretVersion> {
        respond(self.version_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_secret_versions(
        &self,
        request: Request<pb::ListSecretVersionsRequest>,
    ) -> RpcResult<pb::ListSecretVersionsResponse> {
        respond(self.versions_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn access_secret_version(
        &self,
        request: Request<pb::AccessSecretVersionRequest>,
    ) -> RpcResult<pb::AccessSecretVersionResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.version_access(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn disable_secret_version(
        &self,
        request: Request<pb::DisableSecretVersionRequest>,
    ) -> RpcResult<pb::SecretVersion> {
        let ctx = CallContext::of(&request)?;
        let req = request.into_inner();
        respond(
            self.version_state_set(&ctx, &req.name, &req.etag, DISABLED)
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn enable_secret_version(
        &self,
        request: Request<pb::EnableSecretVersionRequest>,
    ) -> RpcResult<pb::SecretVersion> {
        let ctx = CallContext::of(&request)?;
        let req = request.into_inner();
        respond(
            self.version_state_set(&ctx, &req.name, &req.etag, ENABLED)
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn destroy_secret_version(
        &self,
        request: Request<pb::DestroySecretVersionRequest>,
    ) -> RpcResult<pb::SecretVersion> {
        let ctx = CallContext::of(&request)?;
        let req = request.into_inner();
        respond(
            self.version_state_set(&ctx, &req.name, &req.etag, DESTROYED)
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn list_key_encryption_keys(
        &self,
        request: Request<pb::ListKeyEncryptionKeysRequest>,
    ) -> RpcResult<pb::ListKeyEncryptionKeysResponse> {
        respond(self.keys_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn get_key_encryption_key(
        &self,
        request: Request<pb::GetKeyEncryptionKeyRequest>,
    ) -> RpcResult<pb::KeyEncryptionKey> {
        respond(self.key_get(&request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn rewrap_data_keys(
        &self,
        request: Request<pb::RewrapDataKeysRequest>,
    ) -> RpcResult<pb::RewrapDataKeysResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.keys_rewrap(&ctx, request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn version_names_parse() {
        assert_eq!(
            parse_version_name("name", "tenants/a/secrets/db/versions/12").expect("ok"),
            ("a".into(), "db".into(), VersionRef::Number(12))
        );
        assert_eq!(
            parse_version_name("name", "tenants/a/secrets/db/versions/latest")
                .expect("ok")
                .2,
            VersionRef::Latest
        );
        for bad in [
            "tenants/a/secrets/db/versions/0",
            "tenants/a/secrets/db/versions/-1",
            "tenants/a/secrets/db/versions/01",
            "tenants/a/secrets/db/versions/",
            "tenants/a/secrets/db/versions/99999999999999999999",
            "tenants/a/secrets/db",
            "tenants/a/secrets/../versions/1",
        ] {
            assert!(parse_version_name("name", bad).is_err(), "{bad}");
        }
    }
}
