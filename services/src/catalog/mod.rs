//! `CatalogService`: a Backstage-compatible software catalog — handlers and storage together.
//!
//! `model` turns Backstage YAML and proto entities into validated entities, entity references
//! and derived relations (pure logic, no I/O). This module stores them: one row per entity (the
//! encoded proto plus the columns List filters and sorts on), its labels and tags for selectors,
//! and its relations in both directions, each row tagged with the entity that declared it so a
//! rewrite replaces exactly its own relations. Targets that do not exist yet are kept; they
//! resolve when the target arrives, because resolution is a join at read time.
//!
//! Every write runs in one transaction with its audit record; an import writes all its valid
//! documents and one audit record together, and re-importing identical content changes nothing
//! (the content hash decides).

mod changes;
pub mod model;
pub mod ownership;
mod search;
mod settings;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pb::entity::Spec;
use platform_api::platform::catalog::v1 as pb;
use prost::Message;
use sqlx::Row;
use sqlx::any::AnyRow;
use tonic::Request;
use tracing::instrument;

use crate::audit::{AuditLog, timestamp};
use crate::context::CallContext;
use crate::error::{Error, FieldViolation, RpcResult, respond};
use crate::filter::{self, Op, Param};
use crate::idempotency;
use crate::names::{self, parse_tenant_name};
use crate::pagination;
use crate::store::{Store, WriteTx, now_micros};

pub use changes::run_retention as run_change_retention;
use model::EntityRef;
pub use ownership::iam_groups_sync;

/// Fills what later migrations added to the index (`api_version`, annotation rows) for entities
/// stored before them: such rows have an empty `api_version`, which no valid entity has. Runs at
/// start-up; a no-op (one indexed count) once done.
pub async fn index_backfill(store: &Store) -> Result<u64, Error> {
    let mut done = 0;
    loop {
        let rows = sqlx::query(
            "SELECT tenant, ref, body FROM catalog_entities WHERE api_version = '' LIMIT 500",
        )
        .fetch_all(store.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut tx = store.write_tx().await?;
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            let ref_key: String = row.try_get("ref")?;
            let entity = CatalogStore::entity_from_row(row)?;
            let api_version = if entity.api_version.is_empty() {
                "unknown".to_owned()
            } else {
                entity.api_version.clone()
            };
            sqlx::query(
                "UPDATE catalog_entities SET api_version = $1 WHERE tenant = $2 AND ref = $3",
            )
            .bind(api_version)
            .bind(&tenant)
            .bind(&ref_key)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM catalog_annotations WHERE tenant = $1 AND ref = $2")
                .bind(&tenant)
                .bind(&ref_key)
                .execute(&mut *tx)
                .await?;
            for (k, v) in entity.metadata.iter().flat_map(|m| m.annotations.iter()) {
                sqlx::query("INSERT INTO catalog_annotations (tenant, ref, key, value) VALUES ($1, $2, $3, $4)")
                    .bind(&tenant)
                    .bind(&ref_key)
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        done += rows.len() as u64;
    }
    if done > 0 {
        tracing::info!(
            entities = done,
            "re-indexed catalog entities stored before an index migration"
        );
    }
    Ok(done)
}

/// Limits of one ImportEntities call.
const MAX_IMPORT_SOURCES: usize = 1000;
const MAX_TRAVERSAL_ROOTS: usize = 100;

/// The stored identity of an entity: lowercased kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl EntityKey {
    fn of(entity: &pb::Entity) -> EntityKey {
        let metadata = entity.metadata.clone().unwrap_or_default();
        let namespace = if metadata.namespace.is_empty() {
            "default".to_owned()
        } else {
            metadata.namespace
        };
        EntityKey {
            kind: entity.kind.to_lowercase(),
            namespace: namespace.to_lowercase(),
            name: metadata.name.to_lowercase(),
        }
    }

    pub fn from_ref(r: &EntityRef) -> EntityKey {
        EntityKey {
            kind: r.kind.to_lowercase(),
            namespace: r.namespace.to_lowercase(),
            name: r.name.to_lowercase(),
        }
    }

    /// The canonical reference used as the relation key: `kind:namespace/name`, lowercased.
    pub fn ref_key(&self) -> String {
        format!("{}:{}/{}", self.kind, self.namespace, self.name)
    }

    /// Parses `tenants/{t}/entities/{kind}/{namespace}/{name}` into (tenant, key).
    pub fn parse_name(field: &str, name: &str) -> Result<(String, EntityKey), Error> {
        let bad = || {
            Error::invalid_argument(
                field,
                "must be `tenants/{tenant}/entities/{kind}/{namespace}/{name}`",
            )
        };
        let mut parts = name.split('/');
        let (
            Some("tenants"),
            Some(tenant),
            Some("entities"),
            Some(kind),
            Some(namespace),
            Some(entity_name),
            None,
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(bad());
        };
        if !names::is_dns_label(tenant)
            || kind.is_empty()
            || namespace.is_empty()
            || entity_name.is_empty()
            || entity_name.len() > 63
        {
            return Err(bad());
        }
        Ok((
            tenant.to_owned(),
            EntityKey {
                kind: kind.to_lowercase(),
                namespace: namespace.to_lowercase(),
                name: entity_name.to_lowercase(),
            },
        ))
    }
}

/// Parses an entity given as a resource name or as a reference `[kind:][namespace/]name`.
pub(crate) fn parse_name_or_ref(
    field: &str,
    tenant: &str,
    text: &str,
    default_kind: Option<&str>,
) -> Result<EntityKey, Error> {
    if text.starts_with("tenants/") {
        let (t, key) = EntityKey::parse_name(field, text)?;
        if t != tenant {
            return Err(Error::invalid_argument(
                field,
                "names an entity of another tenant",
            ));
        }
        return Ok(key);
    }
    let r = model::parse_entity_ref(text, default_kind, "default")
        .map_err(|e| Error::invalid_argument(field, format!("not an entity reference: {e}")))?;
    Ok(EntityKey::from_ref(&r))
}

fn resource_name(tenant: &str, entity: &pb::Entity) -> String {
    let key = EntityKey::of(entity);
    let name = entity
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    format!(
        "tenants/{tenant}/entities/{}/{}/{name}",
        key.kind, key.namespace
    )
}

/// The columns List filters and sorts on, taken from the typed spec.
struct SummaryColumns {
    spec_type: String,
    lifecycle: String,
    owner_ref: String,
    system_ref: String,
}

pub(crate) fn normalized_ref(text: &str, default_kind: &str, namespace: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    model::parse_entity_ref(text, Some(default_kind), namespace)
        .map(|r| EntityKey::from_ref(&r).ref_key())
        .unwrap_or_default()
}

fn summary_columns(entity: &pb::Entity) -> SummaryColumns {
    let key = EntityKey::of(entity);
    let ns = key.namespace.as_str();
    let (spec_type, lifecycle, owner, system) = match &entity.spec {
        Some(Spec::ComponentSpec(s)) => (
            s.r#type.clone(),
            s.lifecycle.clone(),
            s.owner.clone(),
            s.system.clone(),
        ),
        Some(Spec::ApiSpec(s)) => (
            s.r#type.clone(),
            s.lifecycle.clone(),
            s.owner.clone(),
            s.system.clone(),
        ),
        Some(Spec::ResourceSpec(s)) => (
            s.r#type.clone(),
            String::new(),
            s.owner.clone(),
            s.system.clone(),
        ),
        Some(Spec::SystemSpec(s)) => (
            s.r#type.clone(),
            String::new(),
            s.owner.clone(),
            String::new(),
        ),
        Some(Spec::DomainSpec(s)) => (
            s.r#type.clone(),
            String::new(),
            s.owner.clone(),
            String::new(),
        ),
        Some(Spec::GroupSpec(s)) => (
            s.r#type.clone(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Some(Spec::LocationSpec(s)) => (
            s.r#type.clone(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Some(Spec::UserSpec(_)) | None => {
            (String::new(), String::new(), String::new(), String::new())
        }
    };
    SummaryColumns {
        spec_type,
        lifecycle,
        owner_ref: normalized_ref(&owner, "group", ns),
        system_ref: normalized_ref(&system, "system", ns),
    }
}

fn search_text(entity: &pb::Entity) -> String {
    let m = entity.metadata.clone().unwrap_or_default();
    format!("{}\n{}\n{}", m.name, m.title, m.description).to_lowercase()
}

/// The stored state of an entity that decides what a write does to it.
#[derive(Debug, Clone)]
struct StoredHead {
    uid: String,
    content_hash: String,
    etag: String,
    location_key: String,
    create_time_us: i64,
    update_time_us: i64,
}

/// What writing an entity did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutOutcome {
    Created,
    Updated,
    Unchanged,
}

/// Storage queries of the catalog. Every write takes the caller's transaction.
#[derive(Debug, Clone)]
struct CatalogStore {
    store: Store,
}

impl CatalogStore {
    /// Inserts or replaces an entity with its labels, tags and declared relations.
    /// `expect_new` makes an existing entity ALREADY_EXISTS; `etag` makes a replace conditional.
    #[instrument(skip_all, fields(tenant))]
    async fn entity_put(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        entity: &mut pb::Entity,
        location_key: &str,
        expect_new: bool,
        etag: &str,
    ) -> Result<PutOutcome, Error> {
        let key = EntityKey::of(entity);
        let ref_key = key.ref_key();
        let hash = model::content_hash(entity);
        let existing = sqlx::query("SELECT uid, content_hash, etag, location_key, create_time_us, update_time_us FROM catalog_entities WHERE tenant = $1 AND kind = $2 AND namespace = $3 AND name_key = $4")
            .bind(tenant)
            .bind(&key.kind)
            .bind(&key.namespace)
            .bind(&key.name)
            .fetch_optional(&mut **tx)
            .await?;
        let now = now_micros();
        entity.name = resource_name(tenant, entity);
        entity.relations.clear();
        if let Some(row) = &existing {
            if expect_new {
                return Err(Error::AlreadyExists {
                    resource_type: "entity",
                    name: entity.name.clone(),
                });
            }
            let current_etag: String = row.try_get("etag")?;
            if !etag.is_empty() && etag != current_etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the entity changed since it was read".into(),
                });
            }
            let current_hash: String = row.try_get("content_hash")?;
            let current_location: String = row.try_get("location_key")?;
            entity.uid = row.try_get("uid")?;
            entity.create_time = Some(timestamp(row.try_get("create_time_us")?));
            if current_hash == hash && current_location == location_key {
                entity.etag = current_etag;
                entity.update_time = Some(timestamp(row.try_get("update_time_us")?));
                return Ok(PutOutcome::Unchanged);
            }
            entity.etag = hash.clone();
            entity.update_time = Some(timestamp(now));
            let columns = summary_columns(entity);
            sqlx::query(
                "UPDATE catalog_entities SET name = $1, title = $2, description = $3, spec_type = $4, lifecycle = $5, owner_ref = $6, \
                 system_ref = $7, search_text = $8, body = $9, content_hash = $10, etag = $11, location_key = $12, update_time_us = $13, \
                 api_version = $14 WHERE tenant = $15 AND ref = $16",
            )
            .bind(entity.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default())
            .bind(entity.metadata.as_ref().map(|m| m.title.clone()).unwrap_or_default())
            .bind(entity.metadata.as_ref().map(|m| m.description.clone()).unwrap_or_default())
            .bind(&columns.spec_type)
            .bind(&columns.lifecycle)
            .bind(&columns.owner_ref)
            .bind(&columns.system_ref)
            .bind(search_text(entity))
            .bind(entity.encode_to_vec())
            .bind(&hash)
            .bind(&hash)
            .bind(location_key)
            .bind(now)
            .bind(&entity.api_version)
            .bind(tenant)
            .bind(&ref_key)
            .execute(&mut **tx)
            .await?;
            changes::record(
                tx,
                tenant,
                &[changes::Change::of(
                    changes::ChangeType::Updated,
                    tenant,
                    entity,
                )],
            )
            .await?;
            self.entity_index_clear(tx, tenant, &ref_key).await?;
            self.entity_index_write(tx, tenant, &ref_key, entity)
                .await?;
            return Ok(PutOutcome::Updated);
        }
        entity.uid = uuid::Uuid::new_v4().to_string();
        entity.etag = hash.clone();
        entity.create_time = Some(timestamp(now));
        entity.update_time = Some(timestamp(now));
        self.entities_insert_batch(
            tx,
            tenant,
            &[&*entity],
            location_key,
            std::slice::from_ref(&hash),
        )
        .await?;
        self.entity_index_write(tx, tenant, &ref_key, entity)
            .await?;
        Ok(PutOutcome::Created)
    }

    async fn entity_index_clear(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        ref_key: &str,
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM catalog_labels WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(ref_key)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM catalog_tags WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(ref_key)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM catalog_annotations WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(ref_key)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM catalog_relations WHERE tenant = $1 AND origin_ref = $2")
            .bind(tenant)
            .bind(ref_key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn entity_index_write(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        ref_key: &str,
        entity: &pb::Entity,
    ) -> Result<(), Error> {
        self.index_write_batch(tx, tenant, &[(ref_key.to_owned(), entity)])
            .await
    }

    /// Writes the labels, tags and declared relations of many entities with multi-row INSERTs
    /// (a few statements per few hundred entities: imports write thousands per call).
    async fn index_write_batch(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        entities: &[(String, &pb::Entity)],
    ) -> Result<(), Error> {
        let mut labels: Vec<(&str, String, String)> = Vec::new();
        let mut annotations: Vec<(&str, String, String)> = Vec::new();
        let mut tags: BTreeSet<(&str, String)> = BTreeSet::new();
        let mut relations: BTreeSet<(String, i32, String, &str)> = BTreeSet::new();
        for (ref_key, entity) in entities {
            let ref_key = ref_key.as_str();
            if let Some(metadata) = &entity.metadata {
                for (k, v) in &metadata.labels {
                    labels.push((ref_key, k.clone(), v.clone()));
                }
                for (k, v) in &metadata.annotations {
                    annotations.push((ref_key, k.clone(), v.clone()));
                }
                for tag in &metadata.tags {
                    tags.insert((ref_key, tag.clone()));
                }
            }
            for (relation, target) in model::derive_relations(entity) {
                let target_key = EntityKey::from_ref(&target).ref_key();
                if target_key == ref_key {
                    continue;
                }
                relations.insert((
                    ref_key.to_owned(),
                    relation as i32,
                    target_key.clone(),
                    ref_key,
                ));
                relations.insert((
                    target_key,
                    model::inverse(relation) as i32,
                    ref_key.to_owned(),
                    ref_key,
                ));
            }
        }
        // At most 250 rows (≤ 1,001 parameters) per statement, well under both engines' limits.
        for (table, rows) in [
            ("catalog_labels", &labels),
            ("catalog_annotations", &annotations),
        ] {
            for chunk in rows.chunks(250) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| format!("($1, ${}, ${}, ${})", 2 + 3 * i, 3 + 3 * i, 4 + 3 * i))
                    .collect();
                let sql = format!(
                    "INSERT INTO {table} (tenant, ref, key, value) VALUES {} ON CONFLICT DO NOTHING",
                    values.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(tenant);
                for (r, k, v) in chunk {
                    query = query.bind(*r).bind(k.as_str()).bind(v.as_str());
                }
                query.execute(&mut **tx).await?;
            }
        }
        let tags: Vec<_> = tags.into_iter().collect();
        for chunk in tags.chunks(250) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${})", 2 + 2 * i, 3 + 2 * i))
                .collect();
            let sql = format!(
                "INSERT INTO catalog_tags (tenant, ref, tag) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant);
            for (r, tag) in chunk {
                query = query.bind(*r).bind(tag.as_str());
            }
            query.execute(&mut **tx).await?;
        }
        let relations: Vec<_> = relations.into_iter().collect();
        for chunk in relations.chunks(250) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "($1, ${}, ${}, ${}, ${})",
                        2 + 4 * i,
                        3 + 4 * i,
                        4 + 4 * i,
                        5 + 4 * i
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO catalog_relations (tenant, source_ref, type, target_ref, origin_ref) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant);
            for (source, relation, target, origin) in chunk {
                query = query
                    .bind(source.as_str())
                    .bind(*relation)
                    .bind(target.as_str())
                    .bind(*origin);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// What is stored now of each entity among `refs`, for deciding what an import changes.
    async fn heads_by_ref(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        refs: &[String],
    ) -> Result<HashMap<String, StoredHead>, Error> {
        let mut out = HashMap::with_capacity(refs.len());
        for chunk in refs.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT ref, uid, content_hash, etag, location_key, create_time_us, update_time_us \
                 FROM catalog_entities WHERE tenant = $1 AND ref IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant);
            for r in chunk {
                query = query.bind(r.as_str());
            }
            for row in query.fetch_all(&mut **tx).await? {
                out.insert(
                    row.try_get::<String, _>("ref")?,
                    StoredHead {
                        uid: row.try_get("uid")?,
                        content_hash: row.try_get("content_hash")?,
                        etag: row.try_get("etag")?,
                        location_key: row.try_get("location_key")?,
                        create_time_us: row.try_get("create_time_us")?,
                        update_time_us: row.try_get("update_time_us")?,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Inserts new entities with multi-row INSERTs; `uid`, `etag`, `name` and times are set.
    async fn entities_insert_batch(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        entities: &[&pb::Entity],
        location_key: &str,
        content_hashes: &[String],
    ) -> Result<(), Error> {
        const COLUMNS: usize = 20;
        for (chunk_index, chunk) in entities.chunks(40).enumerate() {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let base = 2 + COLUMNS * i;
                    let cols: Vec<String> =
                        (0..COLUMNS).map(|c| format!("${}", base + c)).collect();
                    format!("($1, {})", cols.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO catalog_entities (tenant, kind, namespace, name_key, name, ref, uid, title, description, spec_type, \
                 lifecycle, owner_ref, system_ref, search_text, body, content_hash, etag, location_key, create_time_us, update_time_us, api_version) \
                 VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant);
            for (i, entity) in chunk.iter().enumerate() {
                let key = EntityKey::of(entity);
                let columns = summary_columns(entity);
                let metadata = entity.metadata.clone().unwrap_or_default();
                let created = entity
                    .create_time
                    .as_ref()
                    .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
                    .unwrap_or_default();
                query = query
                    .bind(key.kind.clone())
                    .bind(key.namespace.clone())
                    .bind(key.name.clone())
                    .bind(metadata.name.clone())
                    .bind(key.ref_key())
                    .bind(entity.uid.clone())
                    .bind(metadata.title.clone())
                    .bind(metadata.description.clone())
                    .bind(columns.spec_type)
                    .bind(columns.lifecycle)
                    .bind(columns.owner_ref)
                    .bind(columns.system_ref)
                    .bind(search_text(entity))
                    .bind(entity.encode_to_vec())
                    .bind(content_hashes[chunk_index * 40 + i].clone())
                    .bind(entity.etag.clone())
                    .bind(location_key.to_owned())
                    .bind(created)
                    .bind(created)
                    .bind(entity.api_version.clone());
            }
            query.execute(&mut **tx).await?;
        }
        let created: Vec<changes::Change> = entities
            .iter()
            .map(|e| changes::Change::of(changes::ChangeType::Created, tenant, e))
            .collect();
        changes::record(tx, tenant, &created).await?;
        Ok(())
    }

    async fn entity_delete(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        key: &EntityKey,
    ) -> Result<bool, Error> {
        let ref_key = key.ref_key();
        let deleted = sqlx::query(
            "DELETE FROM catalog_entities WHERE tenant = $1 AND ref = $2 RETURNING uid, name",
        )
        .bind(tenant)
        .bind(&ref_key)
        .fetch_optional(&mut **tx)
        .await?;
        self.entity_index_clear(tx, tenant, &ref_key).await?;
        let Some(row) = deleted else { return Ok(false) };
        let name: String = row.try_get("name")?;
        let change = changes::Change {
            change: changes::ChangeType::Deleted,
            name: format!(
                "tenants/{tenant}/entities/{}/{}/{name}",
                key.kind, key.namespace
            ),
            uid: row.try_get("uid")?,
            ref_key,
        };
        changes::record(tx, tenant, &[change]).await?;
        Ok(true)
    }

    fn entity_from_row(row: &AnyRow) -> Result<pb::Entity, Error> {
        let body: Vec<u8> = row.try_get("body")?;
        pb::Entity::decode(body.as_slice())
            .map_err(|e| Error::internal(format!("stored entity: {e}")))
    }

    /// The relations of an entity, with whether each target exists.
    async fn relations_of(&self, tenant: &str, ref_key: &str) -> Result<Vec<pb::Relation>, Error> {
        let rows = sqlx::query(
            "SELECT DISTINCT r.type, r.target_ref, e.name AS target_name, e.kind AS target_kind, e.namespace AS target_ns \
             FROM catalog_relations r LEFT JOIN catalog_entities e ON e.tenant = r.tenant AND e.ref = r.target_ref \
             WHERE r.tenant = $1 AND r.source_ref = $2 ORDER BY r.type, r.target_ref",
        )
        .bind(tenant)
        .bind(ref_key)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| Self::relation_from_row(tenant, row))
            .collect()
    }

    /// One relation from a row with `type`, `target_ref` and the target's `target_name`,
    /// `target_kind` and `target_ns` (NULL when the target does not exist).
    fn relation_from_row(tenant: &str, row: &AnyRow) -> Result<pb::Relation, Error> {
        let relation: i32 = row.try_get("type")?;
        let target_ref: String = row.try_get("target_ref")?;
        let target_name: Option<String> = row.try_get("target_name")?;
        let kind: Option<String> = row.try_get("target_kind")?;
        let ns: Option<String> = row.try_get("target_ns")?;
        let resolved = target_name.is_some();
        Ok(pb::Relation {
            r#type: relation,
            type_name: model::backstage_type_name(relation).to_owned(),
            target_name: match (target_name, kind, ns) {
                (Some(n), Some(k), Some(s)) => format!("tenants/{tenant}/entities/{k}/{s}/{n}"),
                _ => String::new(),
            },
            target_ref,
            target_resolved: resolved,
        })
    }

    /// The references among `refs` whose entities exist and match `filter`.
    async fn refs_matching(
        &self,
        tenant: &str,
        filter: &EntityFilter,
        refs: BTreeSet<String>,
    ) -> Result<BTreeSet<String>, Error> {
        let refs: Vec<String> = refs.into_iter().collect();
        let mut out = BTreeSet::new();
        for chunk in refs.chunks(200) {
            let first = filter.params.len() + 2;
            let placeholders: Vec<String> = (0..chunk.len())
                .map(|i| format!("${}", first + i))
                .collect();
            let sql = format!(
                "SELECT e.ref FROM catalog_entities e{} AND e.ref IN ({})",
                filter.where_sql(),
                placeholders.join(", ")
            );
            let mut query = bind_all(sqlx::query(&sql).bind(tenant), &filter.params);
            for r in chunk {
                query = query.bind(r.as_str());
            }
            for row in query.fetch_all(self.store.pool()).await? {
                out.insert(row.try_get::<String, _>("ref")?);
            }
        }
        Ok(out)
    }

    /// The stored entities among `refs` (canonical lowercase references), by reference.
    async fn entities_by_ref(
        &self,
        tenant: &str,
        refs: &[String],
    ) -> Result<HashMap<String, pb::Entity>, Error> {
        let mut out = HashMap::with_capacity(refs.len());
        for chunk in refs.chunks(500) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT ref, body FROM catalog_entities WHERE tenant = $1 AND ref IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant);
            for r in chunk {
                query = query.bind(r.as_str());
            }
            for row in query.fetch_all(self.store.pool()).await? {
                out.insert(
                    row.try_get::<String, _>("ref")?,
                    Self::entity_from_row(&row)?,
                );
            }
        }
        Ok(out)
    }

    async fn entity_get(
        &self,
        tenant: &str,
        key: &EntityKey,
        full: bool,
    ) -> Result<Option<pb::Entity>, Error> {
        if !full {
            let row =
                sqlx::query("SELECT body FROM catalog_entities WHERE tenant = $1 AND ref = $2")
                    .bind(tenant)
                    .bind(key.ref_key())
                    .fetch_optional(self.store.pool())
                    .await?;
            return row.map(|row| Self::entity_from_row(&row)).transpose();
        }
        // The entity and its relations in one round trip to the database instead of two: one
        // row per relation, or one with NULL relation columns if it has none. Only the first
        // row carries the body, so an entity with very many relations is not copied once per
        // relation.
        let rows = sqlx::query(
            "SELECT CASE WHEN r.rn IS NULL OR r.rn = 1 THEN e.body END AS body, \
                    r.type, r.target_ref, t.name AS target_name, t.kind AS target_kind, t.namespace AS target_ns \
             FROM catalog_entities e \
             LEFT JOIN (SELECT d.type, d.target_ref, ROW_NUMBER() OVER (ORDER BY d.type, d.target_ref) AS rn \
                        FROM (SELECT DISTINCT type, target_ref FROM catalog_relations \
                              WHERE tenant = $1 AND source_ref = $2) d) r ON 1 = 1 \
             LEFT JOIN catalog_entities t ON t.tenant = e.tenant AND t.ref = r.target_ref \
             WHERE e.tenant = $1 AND e.ref = $2 \
             ORDER BY r.rn",
        )
        .bind(tenant)
        .bind(key.ref_key())
        .fetch_all(self.store.pool())
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut entity = Self::entity_from_row(first)?;
        entity.relations = rows
            .iter()
            .filter(|row| matches!(row.try_get::<Option<i32>, _>("type"), Ok(Some(_))))
            .map(|row| Self::relation_from_row(tenant, row))
            .collect::<Result<_, Error>>()?;
        if let Some(status) = entity.status.as_mut() {
            status.unresolved_relation_count = entity
                .relations
                .iter()
                .filter(|r| !r.target_resolved)
                .count() as i32;
        }
        Ok(Some(entity))
    }
}

/// A ListEntities `filter` as one SQL condition over `catalog_entities e` (empty for an empty
/// filter) and its parameters, numbered from `$2` (`$1` is the tenant), for other services that
/// select Components the way the catalog does (ListServiceStatuses).
pub(crate) fn entity_filter_condition(filter_text: &str) -> Result<(String, Vec<Param>), Error> {
    let filter = EntityFilter::parse(filter_text, "")?;
    Ok((
        filter.clauses.join(" AND "),
        filter.params.into_iter().map(Param::Text).collect(),
    ))
}

/// A ListEntities filter and query as SQL over `catalog_entities e`, with bound parameters.
struct EntityFilter {
    clauses: Vec<String>,
    params: Vec<String>,
}

impl EntityFilter {
    fn param(&mut self, value: String) -> String {
        self.params.push(value);
        format!("${}", self.params.len() + 1) // $1 is the tenant
    }

    /// `column = value` or, with a trailing `*`, a prefix match; negated for `!=`.
    fn compare(&mut self, column: &str, op: Op, value: &str, lowercase: bool) -> Result<(), Error> {
        let value = if lowercase {
            value.to_lowercase()
        } else {
            value.to_owned()
        };
        let negate = match op {
            Op::Eq => false,
            Op::Ne => true,
            _ => {
                return Err(Error::invalid_argument(
                    "filter",
                    format!("`{column}` supports = and !="),
                ));
            }
        };
        let clause = match value.strip_suffix('*') {
            Some(prefix) => {
                let p = self.param(prefix.to_owned());
                format!("substr({column}, 1, length({p})) = {p}")
            }
            None => {
                let p = self.param(value);
                format!("{column} = {p}")
            }
        };
        self.clauses.push(if negate {
            format!("NOT ({clause})")
        } else {
            clause
        });
        Ok(())
    }

    /// SQL for a filter expression: terms become bound comparisons, connectives stay connectives.
    fn expr_sql(&mut self, expr: &filter::Expr) -> Result<String, Error> {
        Ok(match expr {
            filter::Expr::Term(term) => {
                let before = self.clauses.len();
                self.apply_term(term)?;
                let parts: Vec<String> = self.clauses.drain(before..).collect();
                format!("({})", parts.join(" AND "))
            }
            filter::Expr::Not(inner) => format!("(NOT {})", self.expr_sql(inner)?),
            filter::Expr::And(parts) => {
                let sql = parts
                    .iter()
                    .map(|p| self.expr_sql(p))
                    .collect::<Result<Vec<_>, _>>()?;
                format!("({})", sql.join(" AND "))
            }
            filter::Expr::Or(parts) => {
                let sql = parts
                    .iter()
                    .map(|p| self.expr_sql(p))
                    .collect::<Result<Vec<_>, _>>()?;
                format!("({})", sql.join(" OR "))
            }
        })
    }

    /// Appends the SQL of one restriction to `clauses`.
    fn apply_term(&mut self, term: &filter::Term) -> Result<(), Error> {
        let field = term.field.as_str();
        match field {
            "kind" => self.compare("e.kind", term.op, &term.value, true)?,
            "namespace" => self.compare("e.namespace", term.op, &term.value, true)?,
            "name" | "metadata.name" => self.compare("e.name_key", term.op, &term.value, true)?,
            "title" | "metadata.title" => self.compare("e.title", term.op, &term.value, false)?,
            "type" | "spec.type" => self.compare("e.spec_type", term.op, &term.value, false)?,
            "lifecycle" | "spec.lifecycle" => {
                self.compare("e.lifecycle", term.op, &term.value, false)?
            }
            "owner" | "system" => {
                let default_kind = if field == "owner" { "group" } else { "system" };
                let normalized =
                    normalized_ref(term.value.trim_end_matches('*'), default_kind, "default");
                if normalized.is_empty() {
                    return Err(Error::invalid_argument(
                        "filter",
                        format!(
                            "`{}` is not an entity reference",
                            names::printable(&term.value)
                        ),
                    ));
                }
                self.compare(&format!("e.{field}_ref"), term.op, &normalized, true)?;
            }
            "tags" => {
                if term.op != Op::Has {
                    return Err(Error::invalid_argument("filter", "use `tags:\"value\"`"));
                }
                let p = self.param(term.value.clone());
                self.clauses.push(format!("EXISTS (SELECT 1 FROM catalog_tags t WHERE t.tenant = e.tenant AND t.ref = e.ref AND t.tag = {p})"));
            }
            "api_version" => self.compare("e.api_version", term.op, &term.value, false)?,
            "domain" | "parent" => {
                // System.domain derives partOf a Domain; Group.parent derives childOf a Group.
                let (default_kind, relation) = if field == "domain" {
                    ("domain", pb::RelationType::PartOf)
                } else {
                    ("group", pb::RelationType::ChildOf)
                };
                let target = normalized_ref(&term.value, default_kind, "default");
                self.relation_exists(term, relation, target)?;
            }
            _ if field.starts_with("relations.") => {
                let name = &field["relations.".len()..];
                let relation = model::relation_type_from_name(name).ok_or_else(|| {
                    Error::invalid_argument(
                        "filter",
                        format!(
                            "`{}` is not a relation type (e.g. relations.dependsOn, relations.ownedBy)",
                            names::printable(name)
                        ),
                    )
                })?;
                let target = model::parse_entity_ref(&term.value, None, "default")
                    .map(|r| EntityKey::from_ref(&r).ref_key())
                    .unwrap_or_default();
                self.relation_exists(term, relation, target)?;
            }
            "unresolved" => {
                let wanted = match (term.op, term.value.as_str()) {
                    (Op::Eq, "true") | (Op::Ne, "false") => true,
                    (Op::Eq, "false") | (Op::Ne, "true") => false,
                    _ => {
                        return Err(Error::invalid_argument(
                            "filter",
                            "`unresolved` is a boolean: `unresolved = true` or `unresolved = false`",
                        ));
                    }
                };
                let exists = "EXISTS (SELECT 1 FROM catalog_relations r WHERE r.tenant = e.tenant AND r.source_ref = e.ref \
                     AND NOT EXISTS (SELECT 1 FROM catalog_entities t WHERE t.tenant = r.tenant AND t.ref = r.target_ref))";
                self.clauses.push(if wanted {
                    exists.to_owned()
                } else {
                    format!("NOT {exists}")
                });
            }
            "create_time" | "update_time" => {
                let op = match term.op {
                    Op::Lt => "<",
                    Op::Le => "<=",
                    Op::Gt => ">",
                    Op::Ge => ">=",
                    _ => {
                        return Err(Error::invalid_argument(
                            "filter",
                            format!("`{field}` supports <, <=, > and >="),
                        ));
                    }
                };
                let ts: prost_types::Timestamp = term.value.parse().map_err(|_| {
                    Error::invalid_argument(
                        "filter",
                        format!("`{field}` takes an RFC 3339 time in quotes"),
                    )
                })?;
                let micros = ts
                    .seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(ts.nanos) / 1000);
                // A parsed integer, so it is safe to inline (EntityFilter binds only text).
                self.clauses.push(format!("e.{field}_us {op} {micros}"));
            }
            _ if field.starts_with("labels.") || field.starts_with("annotations.") => {
                let (table, key) = match field.split_once('.') {
                    Some(("labels", key)) => ("catalog_labels", key),
                    Some((_, key)) => ("catalog_annotations", key),
                    None => unreachable_field(field)?,
                };
                let k = self.param(key.to_owned());
                match (term.op, term.value.as_str()) {
                    (Op::Has, "*") => self.clauses.push(format!("EXISTS (SELECT 1 FROM {table} l WHERE l.tenant = e.tenant AND l.ref = e.ref AND l.key = {k})")),
                    (Op::Eq | Op::Ne, value) => {
                        let v = self.param(value.to_owned());
                        let exists = format!("EXISTS (SELECT 1 FROM {table} l WHERE l.tenant = e.tenant AND l.ref = e.ref AND l.key = {k} AND l.value = {v})");
                        self.clauses.push(if term.op == Op::Ne { format!("NOT {exists}") } else { exists });
                    }
                    _ => return Err(Error::invalid_argument("filter", "labels.<key> and annotations.<key> support =, != and :*")),
                }
            }
            other => {
                return Err(Error::invalid_argument(
                    "filter",
                    format!(
                        "`{}` cannot be filtered on (fields: kind, namespace, api_version, name, title, type, lifecycle, owner, system, domain, parent, tags, labels.<key>, annotations.<key>, relations.<type>, unresolved, create_time, update_time)",
                        names::printable(other)
                    ),
                ));
            }
        }

        Ok(())
    }

    /// `field = "ref"` / `field:"ref"`: the entity has a `relation` to `target`.
    fn relation_exists(
        &mut self,
        term: &filter::Term,
        relation: pb::RelationType,
        target: String,
    ) -> Result<(), Error> {
        if target.is_empty() {
            return Err(Error::invalid_argument(
                "filter",
                format!(
                    "`{}` is not an entity reference (`kind:[namespace/]name`)",
                    names::printable(&term.value)
                ),
            ));
        }
        let t = self.param(target);
        let exists = format!(
            "EXISTS (SELECT 1 FROM catalog_relations r WHERE r.tenant = e.tenant AND r.source_ref = e.ref AND r.type = {} AND r.target_ref = {t})",
            relation as i32
        );
        match term.op {
            Op::Eq | Op::Has => self.clauses.push(exists),
            Op::Ne => self.clauses.push(format!("NOT {exists}")),
            _ => {
                return Err(Error::invalid_argument(
                    "filter",
                    format!("`{}` supports =, != and :", names::printable(&term.field)),
                ));
            }
        }
        Ok(())
    }

    fn parse(filter_text: &str, query: &str) -> Result<EntityFilter, Error> {
        let mut f = EntityFilter {
            clauses: Vec::new(),
            params: Vec::new(),
        };
        if let Some(expr) = filter::parse_expr(filter_text)? {
            let sql = f.expr_sql(&expr)?;
            f.clauses.push(sql);
        }
        if query.chars().count() > 256 {
            return Err(Error::invalid_argument("query", "at most 256 characters"));
        }
        filter::check_characters("query", query)?;
        for word in query.split_whitespace() {
            let p = f.param(word.to_lowercase());
            // instr/strpos are not shared by both engines; a substring test through replace() is.
            f.clauses.push(format!(
                "length(e.search_text) <> length(replace(e.search_text, {p}, ''))"
            ));
        }
        Ok(f)
    }

    fn where_sql(&self) -> String {
        let mut sql = String::from(" WHERE e.tenant = $1");
        for clause in &self.clauses {
            sql.push_str(" AND ");
            sql.push_str(clause);
        }
        sql
    }
}

/// Parses `order_by` (AIP-132); the full key (kind, namespace, name) is appended to break ties.
fn parse_order_by(text: &str) -> Result<Vec<pagination::OrderKey>, Error> {
    const FIELDS: &[pagination::SortField] = &[
        ("kind", "e.kind", false),
        ("namespace", "e.namespace", false),
        ("name", "e.name_key", false),
        ("metadata.name", "e.name_key", false),
        ("title", "e.title", false),
        ("metadata.title", "e.title", false),
        ("type", "e.spec_type", false),
        ("spec.type", "e.spec_type", false),
        ("lifecycle", "e.lifecycle", false),
        ("spec.lifecycle", "e.lifecycle", false),
        ("owner", "e.owner_ref", false),
        ("system", "e.system_ref", false),
        ("create_time", "e.create_time_us", true),
        ("update_time", "e.update_time_us", true),
    ];
    pagination::parse_order_by(
        text,
        FIELDS,
        "kind, namespace, name, title, type, lifecycle, owner, system, create_time, update_time",
        &["e.kind", "e.namespace", "e.name_key"],
    )
}

fn unreachable_field<T>(field: &str) -> Result<T, Error> {
    Err(Error::invalid_argument(
        "filter",
        format!("`{}` cannot be filtered on", names::printable(field)),
    ))
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    params: &'q [String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for p in params {
        query = query.bind(p.as_str());
    }
    query
}

fn summary(tenant: &str, entity: &pb::Entity) -> pb::EntitySummary {
    let key = EntityKey::of(entity);
    let columns = summary_columns(entity);
    let m = entity.metadata.clone().unwrap_or_default();
    pb::EntitySummary {
        name: resource_name(tenant, entity),
        r#ref: key.ref_key(),
        kind: entity.kind.clone(),
        title: m.title,
        description: m.description,
        r#type: columns.spec_type,
        lifecycle: columns.lifecycle,
        owner_ref: columns.owner_ref,
        system_ref: columns.system_ref,
        tags: m.tags,
        resolved: true,
    }
}

fn unresolved_summary(ref_key: &str) -> pb::EntitySummary {
    pb::EntitySummary {
        r#ref: ref_key.to_owned(),
        kind: ref_key.split(':').next().unwrap_or_default().to_owned(),
        resolved: false,
        ..Default::default()
    }
}

/// The `CatalogService` implementation.
#[derive(Debug, Clone)]
pub struct CatalogService {
    store: CatalogStore,
    audit: AuditLog,
    /// What open WatchEntities streams re-check (token expiry and revocation, the permission).
    watch_access: Option<crate::audit::WatchAccess>,
    /// Entities changed by imports since the planner statistics were last refreshed.
    changes_since_analyze: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl CatalogService {
    pub fn new(
        store: Store,
        audit: AuditLog,
        watch_access: Option<crate::audit::WatchAccess>,
    ) -> Self {
        CatalogService {
            store: CatalogStore { store },
            audit,
            watch_access,
            changes_since_analyze: Default::default(),
        }
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.store.store.pool()
    }

    /// Normalizes and validates a proto entity for Create/Update (the same rules as imports);
    /// warnings are kept in its status.
    fn validate(entity: &mut pb::Entity, reject_unknown_kinds: bool) -> Result<(), Error> {
        let mut warnings = model::normalize_entity(entity);
        let checked = model::check_entity(entity);
        let mut violations: Vec<FieldViolation> = checked
            .errors
            .iter()
            .map(|issue| {
                FieldViolation::new(format!("entity.{}", issue.field), issue.message.clone())
            })
            .collect();
        if reject_unknown_kinds
            && checked
                .warnings
                .iter()
                .any(|w| w.reason == model::reason::UNKNOWN_KIND)
        {
            violations.push(FieldViolation::new(
                "entity.kind",
                "kinds outside the core model are rejected by this tenant's catalog settings",
            ));
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        warnings.extend(checked.warnings);
        let status = entity.status.get_or_insert_with(Default::default);
        status.warnings = warnings
            .into_iter()
            .map(|w| issue(&w.field, &w.reason, w.message, w.line as i32))
            .collect();
        Ok(())
    }

    async fn entity_create(
        &self,
        ctx: &CallContext,
        req: pb::CreateEntityRequest,
    ) -> Result<pb::Entity, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        idempotency::validate(&req.request_id)?;
        let mut entity = req
            .entity
            .ok_or_else(|| Error::invalid_argument("entity", "required"))?;
        let strict = settings::rejects_unknown_kinds(&self.store.store, &tenant).await?;
        Self::validate(&mut entity, strict)?;
        let key = EntityKey::of(&entity);
        if !req.entity_id.is_empty()
            && req.entity_id.to_lowercase()
                != format!("{}/{}/{}", key.kind, key.namespace, key.name)
        {
            return Err(Error::invalid_argument(
                "entity_id",
                "must equal `{kind}/{namespace}/{name}` of the entity",
            ));
        }
        entity.source = None;
        let mut tx = self.store.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Entity>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            crate::iam::tenant_require(&mut tx, &tenant).await?;
            self.store
                .entity_put(&mut tx, &tenant, &mut entity, "", true, "")
                .await?;
            ownership::iam_groups_sync(&mut tx, &tenant).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &entity).await?;
            Ok(())
        }
        .await;
        if req.validate_only {
            drop(tx);
            result?;
        } else {
            self.audit.finish(ctx, tx, result, &["entity"]).await?;
        }
        entity.relations = if req.validate_only {
            Vec::new()
        } else {
            self.store.relations_of(&tenant, &key.ref_key()).await?
        };
        Ok(entity)
    }

    async fn entity_get(&self, req: &pb::GetEntityRequest) -> Result<pb::Entity, Error> {
        let (tenant, key) = EntityKey::parse_name("name", &req.name)?;
        let full = req.view != pb::EntityView::Basic as i32;
        self.store
            .entity_get(&tenant, &key, full)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "entity",
                name: req.name.clone(),
            })
    }

    async fn entities_batch_get(
        &self,
        req: &pb::BatchGetEntitiesRequest,
    ) -> Result<pb::BatchGetEntitiesResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        if req.names.is_empty() || req.names.len() > 1000 {
            return Err(Error::invalid_argument(
                "names",
                "between 1 and 1000 entities",
            ));
        }
        let default_kind = (!req.default_kind.is_empty()).then_some(req.default_kind.as_str());
        let full = req.view != pb::EntityView::Basic as i32;
        let mut seen = HashSet::new();
        let mut out = pb::BatchGetEntitiesResponse::default();
        for (i, name) in req.names.iter().enumerate() {
            let key = parse_name_or_ref(&format!("names[{i}]"), &tenant, name, default_kind)?;
            if !seen.insert(key.clone()) {
                continue;
            }
            match self.store.entity_get(&tenant, &key, full).await? {
                Some(entity) => out.entities.push(entity),
                None => out.not_found.push(name.clone()),
            }
        }
        Ok(out)
    }

    async fn entities_list(
        &self,
        req: &pb::ListEntitiesRequest,
    ) -> Result<pb::ListEntitiesResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        let order = parse_order_by(&req.order_by)?;
        let page_size = pagination::page_size(req.page_size)?;
        let filter = EntityFilter::parse(&req.filter, &req.query)?;
        let fingerprint = pagination::query_fingerprint(&[
            &tenant,
            &req.filter,
            &req.query,
            &req.order_by,
            &req.view.to_string(),
        ]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?;
        let where_sql = filter.where_sql();
        let total: i64 = bind_all(
            sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM catalog_entities e{where_sql}"
            ))
            .bind(&tenant),
            &filter.params,
        )
        .fetch_all(self.pool())
        .await?
        .first()
        .map(|row| row.try_get("n"))
        .transpose()?
        .unwrap_or(0);
        let keyset = pagination::Keyset::new(&order, after.as_deref())?;
        let sql = format!(
            "SELECT e.body, e.ref, {} FROM catalog_entities e{where_sql}{}{}",
            keyset.select_columns(),
            keyset.after_sql(filter.params.len() + 2)?,
            keyset.order_sql(page_size + 1),
        );
        let query = keyset.bind(bind_all(sqlx::query(&sql).bind(&tenant), &filter.params))?;
        let rows = query.fetch_all(self.pool()).await?;
        let more = rows.len() as i64 > page_size;
        let full = req.view == pb::EntityView::Full as i32;
        let mut entities = Vec::with_capacity(rows.len().min(page_size as usize));
        for row in rows.iter().take(page_size as usize) {
            let mut entity = CatalogStore::entity_from_row(row)?;
            if full {
                let ref_key: String = row.try_get("ref")?;
                entity.relations = self.store.relations_of(&tenant, &ref_key).await?;
            }
            entities.push(entity);
        }
        let next_page_token = match (more, rows.get(entities.len().wrapping_sub(1))) {
            (true, Some(last)) => keyset.token(fingerprint, last)?,
            _ => String::new(),
        };
        Ok(pb::ListEntitiesResponse {
            entities,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    async fn entity_update(
        &self,
        ctx: &CallContext,
        req: pb::UpdateEntityRequest,
    ) -> Result<pb::Entity, Error> {
        let given = req
            .entity
            .ok_or_else(|| Error::invalid_argument("entity", "required"))?;
        idempotency::validate(&req.request_id)?;
        let (tenant, key) = EntityKey::parse_name("entity.name", &given.name)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut tx = self.store.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::Entity>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            let row = sqlx::query("SELECT body, location_key FROM catalog_entities WHERE tenant = $1 AND ref = $2")
                .bind(&tenant)
                .bind(key.ref_key())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Error::NotFound { resource_type: "entity", name: given.name.clone() })?;
            let location_key: String = row.try_get("location_key")?;
            if !location_key.is_empty() && !req.force_unmanaged {
                return Err(Error::FailedPrecondition {
                    message: "this entity is managed by an import location; re-import it, or set force_unmanaged".into(),
                });
            }
            let current = CatalogStore::entity_from_row(&row)?;
            let mut updated = apply_mask(&current, &given, &paths)?;
            if EntityKey::of(&updated) != key {
                return Err(Error::invalid_argument("entity", "kind, metadata.namespace and metadata.name are immutable"));
            }
            let strict = settings::settings_get(&mut *tx, &tenant).await?.reject_unknown_kinds;
            Self::validate(&mut updated, strict)?;
            updated.source = None;
            self.store.entity_put(&mut tx, &tenant, &mut updated, "", false, &given.etag).await?;
            ownership::iam_groups_sync(&mut tx, &tenant).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &updated).await?;
            Ok(updated)
        }
        .await;
        let changed: Vec<&str> = if paths.is_empty() {
            vec!["*"]
        } else {
            paths.iter().map(String::as_str).collect()
        };
        let mut entity = if req.validate_only {
            drop(tx);
            result?
        } else {
            self.audit.finish(ctx, tx, result, &changed).await?
        };
        entity.relations = self.store.relations_of(&tenant, &key.ref_key()).await?;
        Ok(entity)
    }

    async fn entity_delete(
        &self,
        ctx: &CallContext,
        req: pb::DeleteEntityRequest,
    ) -> Result<(), Error> {
        let (tenant, key) = EntityKey::parse_name("name", &req.name)?;
        let mut tx = self.store.store.write_tx().await?;
        let etag: Option<String> =
            sqlx::query_scalar("SELECT etag FROM catalog_entities WHERE tenant = $1 AND ref = $2")
                .bind(&tenant)
                .bind(key.ref_key())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(etag) = etag else {
            return if req.allow_missing {
                Ok(())
            } else {
                Err(Error::NotFound {
                    resource_type: "entity",
                    name: req.name.clone(),
                })
            };
        };
        let result = async {
            if !req.etag.is_empty() && req.etag != etag {
                return Err(Error::Aborted {
                    message: "etag mismatch: the entity changed since it was read".into(),
                });
            }
            if !req.validate_only {
                self.store.entity_delete(&mut tx, &tenant, &key).await?;
                ownership::iam_groups_sync(&mut tx, &tenant).await?;
            }
            Ok(())
        }
        .await;
        if req.validate_only {
            return result;
        }
        self.audit.finish(ctx, tx, result, &["entity"]).await
    }
}

/// Applies an UpdateEntity mask to the stored entity. Empty mask: every field set in `given`
/// (AIP-134); `*`: replace the whole entity.
fn apply_mask(
    current: &pb::Entity,
    given: &pb::Entity,
    paths: &[String],
) -> Result<pb::Entity, Error> {
    let mut out = current.clone();
    let given_meta = given.metadata.clone().unwrap_or_default();
    let meta = out.metadata.get_or_insert_with(Default::default);
    let paths: Vec<String> = if paths.is_empty() {
        let mut implied = Vec::new();
        if !given.api_version.is_empty() {
            implied.push("api_version".to_owned());
        }
        if !given_meta.title.is_empty() {
            implied.push("metadata.title".into());
        }
        if !given_meta.description.is_empty() {
            implied.push("metadata.description".into());
        }
        if !given_meta.labels.is_empty() {
            implied.push("metadata.labels".into());
        }
        if !given_meta.annotations.is_empty() {
            implied.push("metadata.annotations".into());
        }
        if !given_meta.tags.is_empty() {
            implied.push("metadata.tags".into());
        }
        if !given_meta.links.is_empty() {
            implied.push("metadata.links".into());
        }
        if given.spec.is_some() {
            implied.push("spec".into());
        }
        if given.additional_spec.is_some() {
            implied.push("additional_spec".into());
        }
        implied
    } else {
        paths.to_vec()
    };
    for path in &paths {
        match path.as_str() {
            "*" => {
                let mut whole = given.clone();
                whole.name = current.name.clone();
                return Ok(whole);
            }
            "api_version" => out.api_version = given.api_version.clone(),
            "metadata.title" => meta.title = given_meta.title.clone(),
            "metadata.description" => meta.description = given_meta.description.clone(),
            "metadata.labels" => meta.labels = given_meta.labels.clone(),
            "metadata.annotations" => meta.annotations = given_meta.annotations.clone(),
            "metadata.tags" => meta.tags = given_meta.tags.clone(),
            "metadata.links" => meta.links = given_meta.links.clone(),
            "additional_spec" => out.additional_spec = given.additional_spec.clone(),
            "spec" | "component_spec" | "api_spec" | "resource_spec" | "system_spec"
            | "domain_spec" | "group_spec" | "user_spec" | "location_spec" => {
                out.spec = given.spec.clone()
            }
            p if p.starts_with("metadata.labels.") => {
                let k = &p["metadata.labels.".len()..];
                match given_meta.labels.get(k) {
                    Some(v) => {
                        meta.labels.insert(k.to_owned(), v.clone());
                    }
                    None => {
                        meta.labels.remove(k);
                    }
                }
            }
            "kind" | "metadata.name" | "metadata.namespace" => {}
            other => {
                return Err(Error::invalid_argument(
                    "update_mask",
                    format!("`{}` cannot be updated", names::printable(other)),
                ));
            }
        }
    }
    Ok(out)
}

fn issue(field: &str, reason: &str, message: String, line: i32) -> pb::EntityIssue {
    pb::EntityIssue {
        field: field.to_owned(),
        reason: reason.to_owned(),
        message,
        line,
    }
}

impl CatalogService {
    #[instrument(skip_all)]
    async fn entities_import(
        &self,
        ctx: &CallContext,
        req: pb::ImportEntitiesRequest,
    ) -> Result<pb::ImportEntitiesResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        idempotency::validate(&req.request_id)?;
        if req.sources.is_empty() || req.sources.len() > MAX_IMPORT_SOURCES {
            return Err(Error::invalid_argument(
                "sources",
                format!("between 1 and {MAX_IMPORT_SOURCES} sources"),
            ));
        }
        if req.prune && req.location_key.is_empty() {
            return Err(Error::invalid_argument("prune", "needs a location_key"));
        }
        let mut violations = Vec::new();
        names::validate_text("location_key", &req.location_key, 512, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        // Parse everything first: a source that is not YAML, or breaks a limit, rejects the whole
        // request before anything is written.
        let limits = model::Limits::default();
        let mut documents = Vec::new();
        let mut parse_violations = Vec::new();
        for (i, source) in req.sources.iter().enumerate() {
            match model::parse_documents(&source.content, &limits) {
                Ok(docs) => documents.extend(docs.into_iter().map(|d| (i, d))),
                Err(err) => parse_violations.push(FieldViolation::new(
                    format!("sources[{i}].content"),
                    err.to_string(),
                )),
            }
        }
        if !parse_violations.is_empty() {
            return Err(Error::InvalidArgument(parse_violations));
        }

        let mut tx = self.store.store.write_tx().await?;
        if let Some(previous) =
            idempotency::lookup::<pb::ImportEntitiesResponse>(&mut tx, ctx, &req.request_id).await?
        {
            return Ok(previous);
        }
        let result = async {
            crate::iam::tenant_require(&mut tx, &tenant).await?;
            let strict = settings::settings_get(&mut *tx, &tenant).await?.reject_unknown_kinds;
            let mut response = pb::ImportEntitiesResponse::default();
            // Pass 1: convert every document; collect the entities to write.
            let mut seen: HashSet<EntityKey> = HashSet::new();
            let mut imported: BTreeSet<String> = BTreeSet::new();
            let mut candidates: Vec<(usize, pb::Entity)> = Vec::new();
            for (source_index, doc) in &documents {
                let mut result = pb::ImportDocumentResult {
                    source_index: *source_index as i32,
                    document_index: doc.index as i32,
                    line: doc.line as i32,
                    ..Default::default()
                };
                match model::document_to_entity(doc) {
                    model::DocumentOutcome::Invalid { errors } => {
                        result.action = pb::ImportAction::Failed as i32;
                        result.errors = errors
                            .into_iter()
                            .map(|e| issue(&e.field, &e.reason, e.message, e.line as i32))
                            .collect();
                    }
                    model::DocumentOutcome::Entity {
                        mut entity,
                        warnings,
                    } => {
                        let key = EntityKey::of(&entity);
                        result.entity_ref = key.ref_key();
                        result.warnings = warnings
                            .into_iter()
                            .map(|w| issue(&w.field, &w.reason, w.message, w.line as i32))
                            .collect();
                        if strict
                            && let Some(w) = result
                                .warnings
                                .iter()
                                .find(|w| w.reason == model::reason::UNKNOWN_KIND)
                        {
                            let e = issue(
                                "kind",
                                model::reason::UNKNOWN_KIND,
                                "kinds outside the core model are rejected by this tenant's catalog settings".into(),
                                w.line,
                            );
                            result.errors.push(e);
                        }
                        if !result.errors.is_empty() {
                            result.action = pb::ImportAction::Failed as i32;
                        } else if !seen.insert(key.clone()) {
                            result.action = pb::ImportAction::Failed as i32;
                            result.errors.push(issue(
                                "metadata.name",
                                "DUPLICATE_ENTITY",
                                format!("{} is declared earlier in this request", key.ref_key()),
                                doc.line as i32,
                            ));
                        } else {
                            entity.source = Some(pb::EntitySource {
                                location_key: req.location_key.clone(),
                                path: req
                                    .sources
                                    .get(*source_index)
                                    .map(|s| s.path.clone())
                                    .unwrap_or_default(),
                                document_index: doc.index as i32,
                            });
                            entity.status.get_or_insert_with(Default::default).warnings =
                                result.warnings.clone();
                            candidates.push((response.results.len(), entity));
                        }
                    }
                }
                response.results.push(result);
            }

            // Pass 2: decide against what is stored (one query per 500 entities) and write in
            // batches: new entities with multi-row INSERTs, changed ones row by row.
            let refs: Vec<String> = candidates
                .iter()
                .map(|(_, e)| EntityKey::of(e).ref_key())
                .collect();
            let heads = self.store.heads_by_ref(&mut tx, &tenant, &refs).await?;
            let now = now_micros();
            let mut created: Vec<(usize, pb::Entity, String)> = Vec::new();
            for ((result_index, mut entity), ref_key) in candidates.into_iter().zip(refs) {
                let hash = model::content_hash(&entity);
                entity.name = resource_name(&tenant, &entity);
                let action = match heads.get(&ref_key) {
                    Some(head)
                        if !head.location_key.is_empty()
                            && head.location_key != req.location_key =>
                    {
                        let line = response.results[result_index].line;
                        response.results[result_index].errors.push(issue(
                            "",
                            "MANAGED_BY_OTHER_LOCATION",
                            "this entity is managed by another import location".into(),
                            line,
                        ));
                        pb::ImportAction::Failed
                    }
                    Some(head)
                        if head.content_hash == hash && head.location_key == req.location_key =>
                    {
                        entity.uid = head.uid.clone();
                        entity.etag = head.etag.clone();
                        entity.create_time = Some(timestamp(head.create_time_us));
                        entity.update_time = Some(timestamp(head.update_time_us));
                        pb::ImportAction::Unchanged
                    }
                    Some(_) => {
                        let outcome = self
                            .store
                            .entity_put(&mut tx, &tenant, &mut entity, &req.location_key, false, "")
                            .await?;
                        if outcome == PutOutcome::Unchanged {
                            pb::ImportAction::Unchanged
                        } else {
                            pb::ImportAction::Updated
                        }
                    }
                    None => {
                        entity.uid = uuid::Uuid::new_v4().to_string();
                        entity.etag = hash.clone();
                        entity.create_time = Some(timestamp(now));
                        entity.update_time = Some(timestamp(now));
                        pb::ImportAction::Created
                    }
                };
                let result = &mut response.results[result_index];
                result.action = action as i32;
                if action != pb::ImportAction::Failed {
                    result.entity_name = entity.name.clone();
                    imported.insert(ref_key);
                }
                if action == pb::ImportAction::Created {
                    created.push((result_index, entity, hash));
                } else if req.return_entities && action != pb::ImportAction::Failed {
                    result.entity = Some(entity);
                }
            }
            let new_entities: Vec<&pb::Entity> = created.iter().map(|(_, e, _)| e).collect();
            let hashes: Vec<String> = created.iter().map(|(_, _, h)| h.clone()).collect();
            self.store
                .entities_insert_batch(&mut tx, &tenant, &new_entities, &req.location_key, &hashes)
                .await?;
            let indexed: Vec<(String, &pb::Entity)> = created
                .iter()
                .map(|(_, e, _)| (EntityKey::of(e).ref_key(), e))
                .collect();
            self.store
                .index_write_batch(&mut tx, &tenant, &indexed)
                .await?;
            if req.return_entities {
                for (result_index, entity, _) in created {
                    response.results[result_index].entity = Some(entity);
                }
            }
            let failed = response
                .results
                .iter()
                .any(|r| r.action == pb::ImportAction::Failed as i32);
            if req.prune && !failed {
                let managed: Vec<String> = sqlx::query_scalar(
                    "SELECT ref FROM catalog_entities WHERE tenant = $1 AND location_key = $2",
                )
                .bind(&tenant)
                .bind(&req.location_key)
                .fetch_all(&mut *tx)
                .await?;
                for ref_key in managed.into_iter().filter(|r| !imported.contains(r)) {
                    let r = model::parse_entity_ref(&ref_key, None, "default")
                        .map_err(|e| Error::internal(format!("stored ref: {e}")))?;
                    self.store
                        .entity_delete(&mut tx, &tenant, &EntityKey::from_ref(&r))
                        .await?;
                    response.results.push(pb::ImportDocumentResult {
                        action: pb::ImportAction::Deleted as i32,
                        entity_ref: ref_key,
                        source_index: -1,
                        document_index: -1,
                        ..Default::default()
                    });
                }
            }
            for r in &response.results {
                match pb::ImportAction::try_from(r.action) {
                    Ok(pb::ImportAction::Created) => response.created_count += 1,
                    Ok(pb::ImportAction::Updated) => response.updated_count += 1,
                    Ok(pb::ImportAction::Unchanged) => response.unchanged_count += 1,
                    Ok(pb::ImportAction::Failed) => response.failed_count += 1,
                    Ok(pb::ImportAction::Deleted) => response.deleted_count += 1,
                    _ => {}
                }
                response.warning_count += r.warnings.len() as i32;
            }
            ownership::iam_groups_sync(&mut tx, &tenant).await?;
            idempotency::remember(&mut tx, ctx, &req.request_id, &response).await?;
            Ok(response)
        }
        .await;
        if req.validate_only {
            drop(tx);
            return result;
        }
        let response = self.audit.finish(ctx, tx, result, &["entities"]).await?;
        self.refresh_statistics(
            response.created_count + response.updated_count + response.deleted_count,
        )
        .await;
        Ok(response)
    }

    /// After a bulk change, refreshes the planner's statistics so that filtered Lists keep
    /// using the right index (PostgreSQL otherwise plans with stale row counts until autovacuum
    /// gets to it). Best effort: a failure only costs speed.
    async fn refresh_statistics(&self, changed: i32) {
        use std::sync::atomic::Ordering;
        // Every ~5,000 changed entities (summed over imports), not after every import.
        let pending = self
            .changes_since_analyze
            .fetch_add(i64::from(changed), Ordering::AcqRel)
            + i64::from(changed);
        if pending < 5000 {
            return;
        }
        self.changes_since_analyze.store(0, Ordering::Release);
        let sql = match self.store.store.engine() {
            crate::store::Engine::Postgres => {
                "ANALYZE catalog_entities, catalog_labels, catalog_tags, catalog_relations"
            }
            crate::store::Engine::Sqlite => "PRAGMA optimize",
        };
        if let Err(err) = sqlx::query(sql).execute(self.pool()).await {
            tracing::warn!(error = %err, "refreshing catalog statistics failed");
        }
    }

    async fn relations_list(
        &self,
        req: &pb::ListEntityRelationsRequest,
    ) -> Result<pb::ListEntityRelationsResponse, Error> {
        let (tenant, key) = EntityKey::parse_name("parent", &req.parent)?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT ref FROM catalog_entities WHERE tenant = $1 AND ref = $2")
                .bind(&tenant)
                .bind(key.ref_key())
                .fetch_optional(self.pool())
                .await?;
        if exists.is_none() {
            return Err(Error::NotFound {
                resource_type: "entity",
                name: req.parent.clone(),
            });
        }
        let types: HashSet<i32> = req.relation_types.iter().copied().collect();
        let mut relations = Vec::new();
        for relation in self.store.relations_of(&tenant, &key.ref_key()).await? {
            if (!types.is_empty() && !types.contains(&relation.r#type))
                || (req.resolved_only && !relation.target_resolved)
            {
                continue;
            }
            let target = if relation.target_resolved {
                let r = model::parse_entity_ref(&relation.target_ref, None, "default")
                    .map_err(|e| Error::internal(e.to_string()))?;
                self.store
                    .entity_get(&tenant, &EntityKey::from_ref(&r), false)
                    .await?
                    .map(|e| summary(&tenant, &e))
            } else {
                Some(unresolved_summary(&relation.target_ref))
            };
            relations.push(pb::RelationWithTarget {
                relation: Some(relation),
                target,
            });
        }
        let key_of = |r: &pb::RelationWithTarget| {
            r.relation
                .as_ref()
                .map(|r| format!("{:03}\u{0}{}", r.r#type, r.target_ref))
                .unwrap_or_default()
        };
        let page_size = req.page_size;
        let query = format!("{:?}{}", req.relation_types, req.resolved_only);
        let (relations, next_page_token, total) = pagination::paginate(
            relations,
            page_size,
            &req.page_token,
            &[&req.parent, &query],
            key_of,
        )?;
        Ok(pb::ListEntityRelationsResponse {
            relations,
            next_page_token,
            total_size: total,
        })
    }

    async fn graph_traverse(
        &self,
        req: &pb::TraverseEntityGraphRequest,
    ) -> Result<pb::TraverseEntityGraphResponse, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        if req.roots.is_empty() || req.roots.len() > MAX_TRAVERSAL_ROOTS {
            return Err(Error::invalid_argument("roots", "between 1 and 100 roots"));
        }
        if req.relation_types.is_empty()
            || req
                .relation_types
                .iter()
                .any(|t| *t == 0 || pb::RelationType::try_from(*t).is_err())
        {
            return Err(Error::invalid_argument(
                "relation_types",
                "at least one known relation type",
            ));
        }
        let direction = pb::TraversalDirection::try_from(req.direction)
            .unwrap_or(pb::TraversalDirection::Unspecified);
        if direction == pb::TraversalDirection::Unspecified {
            return Err(Error::invalid_argument(
                "direction",
                "required: DOWNSTREAM, UPSTREAM or BOTH",
            ));
        }
        let max_depth = match req.max_depth {
            0 => 3,
            d @ 1..=10 => d,
            _ => return Err(Error::invalid_argument("max_depth", "between 1 and 10")),
        };
        let max_nodes = match req.max_nodes {
            0 => 1000,
            n @ 1..=10_000 => n as usize,
            _ => return Err(Error::invalid_argument("max_nodes", "between 1 and 10000")),
        };
        let node_filter = if req.node_filter.trim().is_empty() {
            None
        } else {
            Some(EntityFilter::parse(&req.node_filter, "").map_err(|err| {
                match err {
                    Error::InvalidArgument(violations) => Error::InvalidArgument(
                        violations
                            .into_iter()
                            .map(|v| FieldViolation::new("node_filter", v.description))
                            .collect(),
                    ),
                    other => other,
                }
            })?)
        };
        // The relation rows to follow: forwards for DOWNSTREAM; the inverse rows (X has T to E is
        // stored as E has inverse(T) to X) for UPSTREAM.
        let mut follow: BTreeSet<i32> = BTreeSet::new();
        for t in &req.relation_types {
            let relation = pb::RelationType::try_from(*t)
                .map_err(|_| Error::invalid_argument("relation_types", "unknown type"))?;
            if matches!(
                direction,
                pb::TraversalDirection::Downstream | pb::TraversalDirection::Both
            ) {
                follow.insert(relation as i32);
            }
            if matches!(
                direction,
                pb::TraversalDirection::Upstream | pb::TraversalDirection::Both
            ) {
                follow.insert(model::inverse(relation) as i32);
            }
        }
        let follow_sql = follow
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut depth_of: BTreeMap<String, i32> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for (i, root) in req.roots.iter().enumerate() {
            let key = parse_name_or_ref(&format!("roots[{i}]"), &tenant, root, None)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = depth_of.entry(key.ref_key())
            {
                slot.insert(0);
                order.push(key.ref_key());
            }
        }
        let mut edges: BTreeSet<(String, i32, String)> = BTreeSet::new();
        let mut frontier: Vec<String> = order.clone();
        let mut truncated = false;
        'levels: for depth in 1..=max_depth {
            if frontier.is_empty() {
                break;
            }
            let mut next: BTreeSet<String> = BTreeSet::new();
            for chunk in frontier.chunks(200) {
                let placeholders: Vec<String> =
                    (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let sql = format!(
                    "SELECT DISTINCT source_ref, type, target_ref FROM catalog_relations WHERE tenant = $1 AND type IN ({follow_sql}) AND source_ref IN ({}) ORDER BY source_ref, type, target_ref",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(&sql).bind(&tenant);
                for r in chunk {
                    query = query.bind(r.as_str());
                }
                for row in query.fetch_all(self.pool()).await? {
                    let source: String = row.try_get("source_ref")?;
                    let relation: i32 = row.try_get("type")?;
                    let target: String = row.try_get("target_ref")?;
                    // Edges are reported as the relation reads forwards.
                    let forward = req.relation_types.contains(&relation);
                    let edge = if forward {
                        (source.clone(), relation, target.clone())
                    } else {
                        let inverse = pb::RelationType::try_from(relation)
                            .map(|r| model::inverse(r) as i32)
                            .unwrap_or(relation);
                        (target.clone(), inverse, source.clone())
                    };
                    edges.insert(edge);
                    if !depth_of.contains_key(&target) {
                        next.insert(target);
                    }
                }
            }
            // Nodes outside the node filter are neither included nor expanded (a dangling
            // reference has no fields to match, so a filter leaves it out).
            if let Some(filter) = &node_filter {
                next = self.store.refs_matching(&tenant, filter, next).await?;
            }
            let mut level: Vec<String> = Vec::new();
            for r in next {
                if order.len() >= max_nodes {
                    truncated = true;
                    break;
                }
                depth_of.insert(r.clone(), depth);
                order.push(r.clone());
                level.push(r);
            }
            frontier = level;
            if truncated {
                break 'levels;
            }
        }
        let stored = self.store.entities_by_ref(&tenant, &order).await?;
        let mut nodes = Vec::with_capacity(order.len());
        for r in &order {
            let node_summary = match stored.get(r) {
                Some(e) => summary(&tenant, e),
                None if req.exclude_unresolved => continue,
                None => unresolved_summary(r),
            };
            nodes.push(pb::GraphNode {
                entity: Some(node_summary),
                depth: depth_of.get(r).copied().unwrap_or_default(),
            });
        }
        let kept: HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.entity.as_ref().map(|e| e.r#ref.as_str()))
            .collect();
        let edges = edges
            .into_iter()
            .filter(|(s, _, t)| kept.contains(s.as_str()) && kept.contains(t.as_str()))
            .map(|(source_ref, r#type, target_ref)| pb::GraphEdge {
                source_ref,
                target_ref,
                r#type,
            })
            .collect();
        Ok(pb::TraverseEntityGraphResponse {
            nodes,
            edges,
            truncated,
        })
    }
}

type WatchEntitiesStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchEntitiesResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogService {
    #[instrument(skip_all)]
    async fn create_entity(
        &self,
        request: Request<pb::CreateEntityRequest>,
    ) -> RpcResult<pb::Entity> {
        let ctx = CallContext::of(&request)?;
        respond(self.entity_create(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn get_entity(&self, request: Request<pb::GetEntityRequest>) -> RpcResult<pb::Entity> {
        respond(self.entity_get(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn batch_get_entities(
        &self,
        request: Request<pb::BatchGetEntitiesRequest>,
    ) -> RpcResult<pb::BatchGetEntitiesResponse> {
        respond(self.entities_batch_get(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn list_entities(
        &self,
        request: Request<pb::ListEntitiesRequest>,
    ) -> RpcResult<pb::ListEntitiesResponse> {
        respond(self.entities_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_entity(
        &self,
        request: Request<pb::UpdateEntityRequest>,
    ) -> RpcResult<pb::Entity> {
        let ctx = CallContext::of(&request)?;
        respond(self.entity_update(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn delete_entity(&self, request: Request<pb::DeleteEntityRequest>) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(self.entity_delete(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn import_entities(
        &self,
        request: Request<pb::ImportEntitiesRequest>,
    ) -> RpcResult<pb::ImportEntitiesResponse> {
        let ctx = CallContext::of(&request)?;
        respond(self.entities_import(&ctx, request.into_inner()).await)
    }
    #[instrument(skip_all)]
    async fn list_entity_relations(
        &self,
        request: Request<pb::ListEntityRelationsRequest>,
    ) -> RpcResult<pb::ListEntityRelationsResponse> {
        respond(self.relations_list(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn search_entities(
        &self,
        request: Request<pb::SearchEntitiesRequest>,
    ) -> RpcResult<pb::SearchEntitiesResponse> {
        respond(self.entities_search(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn get_entity_facets(
        &self,
        request: Request<pb::GetEntityFacetsRequest>,
    ) -> RpcResult<pb::GetEntityFacetsResponse> {
        respond(self.entity_facets_get(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn watch_entities(
        &self,
        request: Request<pb::WatchEntitiesRequest>,
    ) -> RpcResult<WatchEntitiesStream> {
        let ctx = CallContext::of(&request).ok();
        let stream = self.entities_watch(ctx, request.into_inner()).await;
        respond(stream.map(|s| Box::pin(s) as WatchEntitiesStream))
    }
    #[instrument(skip_all)]
    async fn get_catalog_settings(
        &self,
        request: Request<pb::GetCatalogSettingsRequest>,
    ) -> RpcResult<pb::CatalogSettings> {
        respond(self.catalog_settings_get(request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_catalog_settings(
        &self,
        request: Request<pb::UpdateCatalogSettingsRequest>,
    ) -> RpcResult<pb::CatalogSettings> {
        let ctx = CallContext::of(&request)?;
        respond(
            self.catalog_settings_update(&ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn traverse_entity_graph(
        &self,
        request: Request<pb::TraverseEntityGraphRequest>,
    ) -> RpcResult<pb::TraverseEntityGraphResponse> {
        respond(self.graph_traverse(request.get_ref()).await)
    }
}
