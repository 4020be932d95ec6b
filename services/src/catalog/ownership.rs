//! Ownership drives access: the members of the Group that owns a catalog entity (and a User named
//! as its owner) hold the tenant's configured owner role on that entity.
//!
//! Why it is decided here, at request time, and not written into Casbin as one grant per entity:
//! a tenant with 100,000 owned entities would put 100,000 policy lines in front of every request
//! the enforcer evaluates, and every import would force a policy reload. Instead the gate asks
//! this module only when the ordinary policy has already said no, with a handful of indexed
//! lookups (the entity's owner, the principal's User entities, their groups), so an ownership
//! change is in force on every replica as soon as it commits. What the owner role permits is still
//! Casbin's answer: the role's permissions come from the same role definitions (`g2`) as every
//! binding.
//!
//! The same memberships are mirrored into IAM groups linked to a catalog Group
//! (`Group.catalog_group`, members with source CATALOG), so role bindings made to such a group
//! follow the catalog too.

use std::collections::{BTreeSet, HashSet};

use platform_api::platform::catalog::v1 as pb;
use sqlx::Row;

use crate::error::Error;
use crate::store::{Store, WriteTx, now_micros};

use super::EntityKey;
use super::model;
use super::settings::{Settings, settings_get};

/// How deep `include_child_groups` follows `parentOf` (Backstage hierarchies are shallow; the
/// bound keeps a cyclic catalog from looping).
const MAX_GROUP_DEPTH: usize = 16;

/// The catalog entity a resource name is, or lies under: `tenants/{t}/entities/{kind}/{ns}/{name}`.
pub fn entity_of_resource(resource: &str) -> Option<(String, EntityKey)> {
    let rest = resource.strip_prefix("tenants/")?;
    let mut parts = rest.split('/');
    let tenant = parts.next()?;
    if parts.next()? != "entities" {
        return None;
    }
    let kind = parts.next()?;
    let namespace = parts.next()?;
    let name = parts.next()?;
    if tenant.is_empty() || kind.is_empty() || namespace.is_empty() || name.is_empty() {
        return None;
    }
    Some((
        tenant.to_owned(),
        EntityKey {
            kind: kind.to_lowercase(),
            namespace: namespace.to_lowercase(),
            name: name.to_lowercase(),
        },
    ))
}

/// The values of the subject annotation that identify `principal`: the principal itself and,
/// for a user, the bare subject (read as `user:{value}`).
fn subject_values(principal: &str) -> Vec<String> {
    let mut values = vec![principal.to_owned()];
    if let Some(subject) = principal.strip_prefix("user:") {
        values.push(subject.to_owned());
    }
    values
}

/// The principal an annotation value names, or `None` when it names none of this tenant.
fn principal_of_annotation(tenant: &str, value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some(sa) = value.strip_prefix("serviceAccount:") {
        let prefix = format!("tenants/{tenant}/serviceAccounts/");
        return sa.starts_with(&prefix).then(|| value.to_owned());
    }
    if value.starts_with("group:") {
        return None;
    }
    let subject = value.strip_prefix("user:").unwrap_or(value);
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return None;
    }
    Some(format!("user:{subject}"))
}

/// The owner role (as a policy role key) `principal` holds on `resource` through catalog
/// ownership, if any.
pub async fn owner_role_for(
    store: &Store,
    principal: &str,
    tenant: &str,
    resource: &str,
) -> Result<Option<String>, Error> {
    let Some((resource_tenant, key)) = entity_of_resource(resource) else {
        return Ok(None);
    };
    if resource_tenant != tenant {
        return Ok(None);
    }
    let settings = settings_get(store.pool(), tenant).await?;
    if settings.owner_role.is_empty() {
        return Ok(None);
    }
    let owner: Option<String> =
        sqlx::query_scalar("SELECT owner_ref FROM catalog_entities WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(key.ref_key())
            .fetch_optional(store.pool())
            .await?;
    let Some(owner) = owner.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    if principal_owns(store, &settings, principal, tenant, &owner).await? {
        Ok(Some(crate::iam::policy_role_key(&settings.owner_role)))
    } else {
        Ok(None)
    }
}

/// Is `principal` the owner `owner_ref`, or a member of it (or of a descendant Group of it, when
/// the settings say so)?
async fn principal_owns(
    store: &Store,
    settings: &Settings,
    principal: &str,
    tenant: &str,
    owner_ref: &str,
) -> Result<bool, Error> {
    let values = subject_values(principal);
    let placeholders: Vec<String> = (0..values.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT ref FROM catalog_annotations WHERE tenant = $1 AND key = $2 AND value IN ({}) AND ref LIKE 'user:%'",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql)
        .bind(tenant)
        .bind(&settings.subject_annotation);
    for v in &values {
        query = query.bind(v.as_str());
    }
    let users: Vec<String> = query.fetch_all(store.pool()).await?;
    if users.is_empty() {
        return Ok(false);
    }
    if users.iter().any(|u| u == owner_ref) {
        return Ok(true);
    }
    if !owner_ref.starts_with("group:") {
        return Ok(false);
    }
    let placeholders: Vec<String> = (0..users.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT DISTINCT target_ref FROM catalog_relations WHERE tenant = $1 AND type = $2 AND source_ref IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql)
        .bind(tenant)
        .bind(pb::RelationType::MemberOf as i32);
    for u in &users {
        query = query.bind(u.as_str());
    }
    let groups: HashSet<String> = query.fetch_all(store.pool()).await?.into_iter().collect();
    if groups.contains(owner_ref) {
        return Ok(true);
    }
    if !settings.include_child_groups || groups.is_empty() {
        return Ok(false);
    }
    // Walk down from the owner, one level per query.
    let mut seen: HashSet<String> = HashSet::from([owner_ref.to_owned()]);
    let mut frontier = vec![owner_ref.to_owned()];
    for _ in 0..MAX_GROUP_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let placeholders: Vec<String> =
            (0..frontier.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT DISTINCT target_ref FROM catalog_relations WHERE tenant = $1 AND type = $2 AND source_ref IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql)
            .bind(tenant)
            .bind(pb::RelationType::ParentOf as i32);
        for g in &frontier {
            query = query.bind(g.as_str());
        }
        let children = query.fetch_all(store.pool()).await?;
        if children.iter().any(|c| groups.contains(c)) {
            return Ok(true);
        }
        frontier = children
            .into_iter()
            .filter(|c| seen.insert(c.clone()))
            .collect();
    }
    Ok(false)
}

/// Re-derives the CATALOG-sourced members of every IAM group of `tenant` linked to a catalog
/// Group, inside the caller's transaction; bumps the policy version when anything changed so
/// every replica reloads. Cheap when no group is linked (one indexed query).
pub async fn iam_groups_sync(tx: &mut WriteTx, tenant: &str) -> Result<(), Error> {
    let linked = sqlx::query(
        "SELECT id, catalog_group FROM iam_groups WHERE tenant = $1 AND catalog_group <> ''",
    )
    .bind(tenant)
    .fetch_all(&mut **tx)
    .await?;
    if linked.is_empty() {
        return Ok(());
    }
    let settings = settings_get(&mut **tx, tenant).await?;
    let mut changed = false;
    for row in linked {
        let group_id: String = row.try_get("id")?;
        let catalog_group: String = row.try_get("catalog_group")?;
        let desired: BTreeSet<String> = match model::parse_entity_ref(
            &catalog_group,
            Some("group"),
            "default",
        ) {
            Ok(r) => {
                let group_ref = EntityKey::from_ref(&r).ref_key();
                sqlx::query_scalar::<_, String>(
                        "SELECT a.value FROM catalog_relations r JOIN catalog_annotations a \
                         ON a.tenant = r.tenant AND a.ref = r.source_ref AND a.key = $3 \
                         WHERE r.tenant = $1 AND r.target_ref = $2 AND r.type = $4 AND r.source_ref LIKE 'user:%'",
                    )
                    .bind(tenant)
                    .bind(&group_ref)
                    .bind(&settings.subject_annotation)
                    .bind(pb::RelationType::MemberOf as i32)
                    .fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .filter_map(|v| principal_of_annotation(tenant, v))
                    .collect()
            }
            Err(_) => BTreeSet::new(),
        };
        let current = sqlx::query(
            "SELECT member, source FROM iam_group_members WHERE tenant = $1 AND group_id = $2",
        )
        .bind(tenant)
        .bind(&group_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut manual: HashSet<String> = HashSet::new();
        let mut from_catalog: BTreeSet<String> = BTreeSet::new();
        for row in &current {
            let member: String = row.try_get("member")?;
            let source: i32 = row.try_get("source")?;
            if source == crate::iam::CATALOG_MEMBER_SOURCE {
                from_catalog.insert(member);
            } else {
                manual.insert(member);
            }
        }
        let now = now_micros();
        let mut group_changed = false;
        for gone in from_catalog.difference(&desired) {
            sqlx::query(
                "DELETE FROM iam_group_members WHERE tenant = $1 AND group_id = $2 AND member = $3",
            )
            .bind(tenant)
            .bind(&group_id)
            .bind(gone)
            .execute(&mut **tx)
            .await?;
            group_changed = true;
        }
        for new in desired.difference(&from_catalog) {
            if manual.contains(new) {
                continue; // already a member by hand; the manual row stays authoritative
            }
            sqlx::query(
                "INSERT INTO iam_group_members (tenant, group_id, member, source, add_time_us) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant)
            .bind(&group_id)
            .bind(new)
            .bind(crate::iam::CATALOG_MEMBER_SOURCE)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            group_changed = true;
        }
        if group_changed {
            sqlx::query(
                "UPDATE iam_groups SET etag = $1, update_time_us = $2 WHERE tenant = $3 AND id = $4",
            )
            .bind(uuid::Uuid::new_v4().simple().to_string())
            .bind(now)
            .bind(tenant)
            .bind(&group_id)
            .execute(&mut **tx)
            .await?;
            changed = true;
        }
    }
    if changed {
        sqlx::query("UPDATE policy_version SET version = version + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_resources_are_recognised() {
        let (t, key) =
            entity_of_resource("tenants/acme/entities/Component/Default/Payments").expect("entity");
        assert_eq!(t, "acme");
        assert_eq!(key.ref_key(), "component:default/payments");
        assert!(entity_of_resource("tenants/acme/entities/component/default").is_none());
        assert!(entity_of_resource("tenants/acme/environments/prod").is_none());
        assert!(entity_of_resource("tenants/acme").is_none());
    }

    #[test]
    fn annotation_values_become_principals_of_the_tenant_only() {
        assert_eq!(
            principal_of_annotation("acme", "alice").as_deref(),
            Some("user:alice")
        );
        assert_eq!(
            principal_of_annotation("acme", "user:alice").as_deref(),
            Some("user:alice")
        );
        assert_eq!(
            principal_of_annotation("acme", "serviceAccount:tenants/acme/serviceAccounts/ci")
                .as_deref(),
            Some("serviceAccount:tenants/acme/serviceAccounts/ci")
        );
        assert_eq!(
            principal_of_annotation("acme", "serviceAccount:tenants/other/serviceAccounts/ci"),
            None
        );
        assert_eq!(
            principal_of_annotation("acme", "group:tenants/acme/groups/x"),
            None
        );
        assert_eq!(principal_of_annotation("acme", "  "), None);
    }
}
