//! Service status: what version of a Component runs in each environment, since when, by whom,
//! the outcome of its last deployment there and what is in flight — read from the deployments
//! table with its (tenant, environment, component, state, end_time_us) index, a few rows per
//! environment.

use std::collections::{BTreeMap, BTreeSet};

use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::insights::v1 as pb;
use sqlx::Row;

use crate::audit::timestamp;
use crate::catalog::{EntityKey, parse_name_or_ref};
use crate::error::Error;
use crate::filter::{Param, bind_params};
use crate::names::{parse_child_name, parse_tenant_name};
use crate::pagination;
use crate::store::{Store, now_micros};

const QUEUED: i64 = dpb::DeploymentState::Queued as i64;
const RUNNING: i64 = dpb::DeploymentState::Running as i64;
const SUCCEEDED: i64 = dpb::DeploymentState::Succeeded as i64;
const FAILED: i64 = dpb::DeploymentState::Failed as i64;
const CANCELLED: i64 = dpb::DeploymentState::Cancelled as i64;

/// An environment as the status view shows it.
#[derive(Debug, Clone)]
pub struct Env {
    id: String,
    display_name: String,
    production: bool,
    locked: bool,
    promotes_to: String,
}

/// The environments to show, in promotion order: chains followed from the environments no other
/// promotes to, then the rest by name.
async fn environments(store: &Store, tenant: &str, named: &[String]) -> Result<Vec<Env>, Error> {
    let rows = sqlx::query(
        "SELECT id, display_name, type, locked, promotes_to, state FROM environments WHERE tenant = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(store.pool())
    .await?;
    let mut all: BTreeMap<String, (Env, i64)> = BTreeMap::new();
    for row in rows {
        let env = Env {
            id: row.try_get("id")?,
            display_name: row.try_get("display_name")?,
            production: row.try_get::<i64, _>("type")? == epb::EnvironmentType::Production as i64,
            locked: row.try_get::<i64, _>("locked")? == 1,
            promotes_to: row.try_get("promotes_to")?,
        };
        all.insert(env.id.clone(), (env, row.try_get("state")?));
    }
    let chosen: BTreeSet<String> = if named.is_empty() {
        all.iter()
            .filter(|(_, (_, state))| *state != epb::EnvironmentState::Terminated as i64)
            .map(|(id, _)| id.clone())
            .collect()
    } else {
        let mut ids = BTreeSet::new();
        for (i, name) in named.iter().enumerate() {
            let field = format!("environments[{i}]");
            let (t, id) = parse_child_name(&field, name, "environments")?;
            if t != tenant {
                return Err(Error::invalid_argument(
                    field,
                    "must be an environment of the tenant in `parent`",
                ));
            }
            if !all.contains_key(&id) {
                return Err(Error::NotFound {
                    resource_type: "environment",
                    name: name.clone(),
                });
            }
            ids.insert(id);
        }
        ids
    };
    let targets: BTreeSet<&str> = chosen
        .iter()
        .filter_map(|id| all.get(id).map(|(e, _)| e.promotes_to.as_str()))
        .filter(|t| !t.is_empty() && chosen.contains(*t))
        .collect();
    let mut ordered = Vec::new();
    let mut seen = BTreeSet::new();
    for head in chosen.iter().filter(|id| {
        !targets.contains(id.as_str())
            && all
                .get(*id)
                .is_some_and(|(e, _)| chosen.contains(&e.promotes_to))
    }) {
        let mut next = Some(head.clone());
        while let Some(id) = next.take() {
            if !chosen.contains(&id) || !seen.insert(id.clone()) {
                break;
            }
            let (env, _) = &all[&id];
            ordered.push(env.clone());
            next = Some(env.promotes_to.clone());
        }
    }
    for id in &chosen {
        if !seen.contains(id) {
            ordered.push(all[id].0.clone());
        }
    }
    Ok(ordered)
}

/// One environment by resource name (NOT_FOUND if it does not exist).
pub async fn environment_named(store: &Store, tenant: &str, name: &str) -> Result<Env, Error> {
    environments(store, tenant, &[name.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound {
            resource_type: "environment",
            name: name.to_owned(),
        })
}

/// The status of the Component `reference` in `env` (for graph nodes).
pub async fn status_in(
    store: &Store,
    tenant: &str,
    reference: &str,
    env: &Env,
) -> Result<Option<pb::EnvironmentStatus>, Error> {
    let component = Component {
        reference: reference.to_owned(),
        ..Default::default()
    };
    Ok(
        status_of(store, tenant, &component, std::slice::from_ref(env), false)
            .await?
            .environments
            .pop(),
    )
}

/// A Component as the catalog describes it (empty fields when it is not in the catalog).
#[derive(Debug, Default, Clone)]
struct Component {
    reference: String,
    entity: String,
    title: String,
    owner_ref: String,
    system_ref: String,
    lifecycle: String,
}

const COMPONENT_COLUMNS: &str = "ref, namespace, name, title, owner_ref, system_ref, lifecycle";

fn component_from_row(tenant: &str, row: &sqlx::any::AnyRow) -> Result<Component, Error> {
    let namespace: String = row.try_get("namespace")?;
    let name: String = row.try_get("name")?;
    Ok(Component {
        reference: row.try_get("ref")?,
        entity: format!("tenants/{tenant}/entities/component/{namespace}/{name}"),
        title: row.try_get("title")?,
        owner_ref: row.try_get("owner_ref")?,
        system_ref: row.try_get("system_ref")?,
        lifecycle: row.try_get("lifecycle")?,
    })
}

fn deployment_name(tenant: &str, id: &str) -> String {
    format!("tenants/{tenant}/deployments/{id}")
}

/// The status of one Component in each of `envs`.
async fn status_of(
    store: &Store,
    tenant: &str,
    component: &Component,
    envs: &[Env],
    only_deployed: bool,
) -> Result<pb::ServiceStatus, Error> {
    let mut out = Vec::new();
    for env in envs {
        let current = sqlx::query(
            "SELECT id, version, commit_sha, requested_by, end_time_us, rollback_of, promoted_from FROM deployments \
             WHERE tenant = $1 AND environment = $2 AND component = $3 AND state = $4 \
             ORDER BY end_time_us DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(&env.id)
        .bind(&component.reference)
        .bind(SUCCEEDED)
        .fetch_optional(store.pool())
        .await?;
        let last = sqlx::query(
            "SELECT id, state, end_time_us FROM deployments WHERE tenant = $1 AND environment = $2 AND component = $3 \
             AND state IN ($4, $5, $6) ORDER BY end_time_us DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(&env.id)
        .bind(&component.reference)
        .bind(SUCCEEDED)
        .bind(FAILED)
        .bind(CANCELLED)
        .fetch_optional(store.pool())
        .await?;
        let flying = sqlx::query(
            "SELECT id, version, state, requested_by, create_time_us, start_time_us FROM deployments \
             WHERE tenant = $1 AND environment = $2 AND component = $3 AND state IN ($4, $5) \
             ORDER BY CASE WHEN state = $5 THEN 0 ELSE 1 END, create_time_us",
        )
        .bind(tenant)
        .bind(&env.id)
        .bind(&component.reference)
        .bind(QUEUED)
        .bind(RUNNING)
        .fetch_all(store.pool())
        .await?;
        if only_deployed && current.is_none() && last.is_none() && flying.is_empty() {
            continue;
        }
        let current = match current {
            Some(row) => {
                let id: String = row.try_get("id")?;
                let end: Option<i64> = row.try_get("end_time_us")?;
                Some(pb::DeployedVersion {
                    version: row.try_get("version")?,
                    commit_sha: row.try_get("commit_sha")?,
                    deployment: deployment_name(tenant, &id),
                    deployed_by: row.try_get("requested_by")?,
                    deployed_by_display_name: String::new(),
                    since: end.map(timestamp),
                    rollback: !row.try_get::<String, _>("rollback_of")?.is_empty(),
                    promoted_from: row.try_get("promoted_from")?,
                })
            }
            None => None,
        };
        let (last_outcome, last_deployment, last_end_time) = match last {
            Some(row) => {
                let id: String = row.try_get("id")?;
                let end: Option<i64> = row.try_get("end_time_us")?;
                let outcome = match row.try_get::<i64, _>("state")? {
                    SUCCEEDED => pb::DeploymentOutcome::Succeeded,
                    FAILED => pb::DeploymentOutcome::Failed,
                    _ => pb::DeploymentOutcome::Cancelled,
                };
                (outcome, deployment_name(tenant, &id), end.map(timestamp))
            }
            None => (pb::DeploymentOutcome::Unspecified, String::new(), None),
        };
        let mut in_flight = Vec::new();
        for row in &flying {
            let id: String = row.try_get("id")?;
            let start: Option<i64> = row.try_get("start_time_us")?;
            in_flight.push(pb::InFlightDeployment {
                deployment: deployment_name(tenant, &id),
                version: row.try_get("version")?,
                state: if row.try_get::<i64, _>("state")? == RUNNING {
                    pb::InFlightState::Running
                } else {
                    pb::InFlightState::Queued
                } as i32,
                requested_by: row.try_get("requested_by")?,
                create_time: Some(timestamp(row.try_get("create_time_us")?)),
                start_time: start.map(timestamp),
            });
        }
        out.push(pb::EnvironmentStatus {
            environment: format!("tenants/{tenant}/environments/{}", env.id),
            environment_display_name: env.display_name.clone(),
            production: env.production,
            locked: env.locked,
            current,
            deployment_in_flight: !in_flight.is_empty(),
            in_flight,
            last_outcome: last_outcome as i32,
            last_deployment,
            last_end_time,
        });
    }
    Ok(pb::ServiceStatus {
        component: component.reference.clone(),
        entity: component.entity.clone(),
        title: component.title.clone(),
        owner_ref: component.owner_ref.clone(),
        system_ref: component.system_ref.clone(),
        lifecycle: component.lifecycle.clone(),
        environments: out,
        compute_time: Some(timestamp(now_micros())),
    })
}

/// GetServiceStatus.
pub async fn service_status_get(
    store: &Store,
    req: &pb::GetServiceStatusRequest,
) -> Result<pb::ServiceStatus, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    if req.component.is_empty() {
        return Err(Error::invalid_argument("component", "required"));
    }
    let key: EntityKey =
        parse_name_or_ref("component", &tenant, &req.component, Some("component"))?;
    if key.kind != "component" {
        return Err(Error::invalid_argument("component", "must be a Component"));
    }
    crate::iam::tenant_active(store.pool(), &tenant).await?;
    let reference = key.ref_key();
    let row = sqlx::query(&format!(
        "SELECT {COMPONENT_COLUMNS} FROM catalog_entities WHERE tenant = $1 AND ref = $2"
    ))
    .bind(&tenant)
    .bind(&reference)
    .fetch_optional(store.pool())
    .await?;
    let component = match row {
        Some(row) => component_from_row(&tenant, &row)?,
        None => {
            let deployed: Option<String> = sqlx::query_scalar(
                "SELECT id FROM deployments WHERE tenant = $1 AND component = $2 LIMIT 1",
            )
            .bind(&tenant)
            .bind(&reference)
            .fetch_optional(store.pool())
            .await?;
            if deployed.is_none() {
                return Err(Error::NotFound {
                    resource_type: "component",
                    name: req.component.clone(),
                });
            }
            Component {
                reference,
                ..Default::default()
            }
        }
    };
    let envs = environments(store, &tenant, &req.environments).await?;
    status_of(store, &tenant, &component, &envs, req.only_deployed).await
}

/// ListServiceStatuses.
pub async fn service_statuses_list(
    store: &Store,
    req: &pb::ListServiceStatusesRequest,
) -> Result<pb::ListServiceStatusesResponse, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    let page_size = pagination::page_size(req.page_size)?;
    let order = pagination::parse_order_by(
        &req.order_by,
        &[
            ("component", "c.ref", false),
            ("title", "c.title", false),
            ("owner", "c.owner_ref", false),
            ("system", "c.system_ref", false),
        ],
        "component, title, owner, system",
        &["c.ref"],
    )?;
    crate::iam::tenant_active(store.pool(), &tenant).await?;
    let mut params: Vec<Param> = Vec::new();
    let mut where_sql = String::from(" WHERE c.tenant = $1 AND c.kind = 'component'");
    // The catalog's own filter, so `filter` means exactly what it means in ListEntities. Its
    // parameters are numbered from $2, so they go first.
    let (condition, filter_params) = crate::catalog::entity_filter_condition(&req.filter)?;
    if !condition.is_empty() {
        params.extend(filter_params);
        where_sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM catalog_entities e WHERE e.tenant = c.tenant AND e.ref = c.ref AND {condition})"
        ));
    }
    if !req.scope.is_empty() {
        let key = parse_name_or_ref("scope", &tenant, &req.scope, None)?;
        let reference = key.ref_key();
        super::entity_require(store, &tenant, &reference, &req.scope).await?;
        let (column, values) = match key.kind.as_str() {
            "system" => ("c.system_ref", vec![reference]),
            "group" => (
                "c.owner_ref",
                super::groups_under(store, &tenant, reference, req.include_child_groups).await?,
            ),
            _ => {
                return Err(Error::invalid_argument(
                    "scope",
                    "must be a System or a Group",
                ));
            }
        };
        let list = values
            .into_iter()
            .map(|v| {
                params.push(Param::Text(v));
                format!("${}", params.len() + 1)
            })
            .collect::<Vec<_>>()
            .join(", ");
        where_sql.push_str(&format!(" AND {column} IN ({list})"));
    }
    if req.only_deployed {
        where_sql.push_str(
            " AND EXISTS (SELECT 1 FROM deployments d WHERE d.tenant = c.tenant AND d.component = c.ref)",
        );
    }
    let envs = environments(store, &tenant, &req.environments).await?;
    let env_key = req.environments.join(",");
    let fingerprint = pagination::query_fingerprint(&[
        &tenant,
        &req.scope,
        if req.include_child_groups {
            "children"
        } else {
            ""
        },
        &env_key,
        if req.only_deployed { "deployed" } else { "" },
        &req.filter,
        &req.order_by,
        "service-statuses",
    ]);
    let after = pagination::decode_token(fingerprint, &req.page_token)?;
    let total: i64 = bind_params(
        sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM catalog_entities c{where_sql}"
        ))
        .bind(&tenant),
        &params,
    )
    .fetch_one(store.pool())
    .await?
    .try_get("n")?;
    let keyset = pagination::Keyset::new(&order, after.as_deref())?;
    let sql = format!(
        "SELECT c.ref AS ref, c.namespace AS namespace, c.name AS name, c.title AS title, c.owner_ref AS owner_ref, \
         c.system_ref AS system_ref, c.lifecycle AS lifecycle, {} FROM catalog_entities c{where_sql}{}{}",
        keyset.select_columns(),
        keyset.after_sql(params.len() + 2)?,
        keyset.order_sql(page_size + 1),
    );
    let rows = keyset
        .bind(bind_params(sqlx::query(&sql).bind(&tenant), &params))?
        .fetch_all(store.pool())
        .await?;
    let (components, next_page_token) = keyset.page(fingerprint, &rows, page_size, |row| {
        component_from_row(&tenant, row)
    })?;
    let mut service_statuses = Vec::with_capacity(components.len());
    for component in &components {
        service_statuses
            .push(status_of(store, &tenant, component, &envs, req.only_deployed).await?);
    }
    Ok(pb::ListServiceStatusesResponse {
        service_statuses,
        next_page_token,
        total_size: i32::try_from(total).unwrap_or(i32::MAX),
    })
}
