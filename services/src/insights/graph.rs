//! The runtime dependency graph: Components and Resources linked by `dependsOn`, and Components
//! linked through the APIs one consumes and another provides (collapsed into one edge naming the
//! APIs), grown breadth-first from the roots over the catalog's relation rows, which hold every
//! relation in both directions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use platform_api::platform::insights::v1 as pb;
use sqlx::Row;

use crate::audit::timestamp;
use crate::catalog::parse_name_or_ref;
use crate::error::Error;
use crate::names::parse_tenant_name;
use crate::store::{Store, now_micros};

const DEPENDS_ON: i64 = 5;
const DEPENDENCY_OF: i64 = 6;
const PROVIDES_API: i64 = 7;
const API_PROVIDED_BY: i64 = 8;
const CONSUMES_API: i64 = 9;
const API_CONSUMED_BY: i64 = 10;

/// The targets of `source`'s relations of `kind`.
async fn related(
    store: &Store,
    tenant: &str,
    source: &str,
    kind: i64,
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT target_ref FROM catalog_relations WHERE tenant = $1 AND source_ref = $2 AND type = $3 ORDER BY target_ref",
    )
    .bind(tenant)
    .bind(source)
    .bind(kind)
    .fetch_all(store.pool())
    .await?)
}

/// An edge being collected: `from` needs `to`.
#[derive(Debug, Default)]
struct EdgeFacts {
    direct: bool,
    via_apis: BTreeSet<String>,
}

/// The neighbours of `node` in one direction, with the edge each implies (as (from, to)).
async fn neighbours(
    store: &Store,
    tenant: &str,
    node: &str,
    dependencies: bool,
    edges: &mut BTreeMap<(String, String), EdgeFacts>,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let (direct, own_api, other_api) = if dependencies {
        (DEPENDS_ON, CONSUMES_API, API_PROVIDED_BY)
    } else {
        (DEPENDENCY_OF, PROVIDES_API, API_CONSUMED_BY)
    };
    let edge_key = |other: &str| {
        if dependencies {
            (node.to_owned(), other.to_owned())
        } else {
            (other.to_owned(), node.to_owned())
        }
    };
    for other in related(store, tenant, node, direct).await? {
        edges.entry(edge_key(&other)).or_default().direct = true;
        out.push(other);
    }
    for api in related(store, tenant, node, own_api).await? {
        for other in related(store, tenant, &api, other_api).await? {
            if other == node {
                continue;
            }
            edges
                .entry(edge_key(&other))
                .or_default()
                .via_apis
                .insert(api.clone());
            out.push(other);
        }
    }
    Ok(out)
}

/// GetDependencyGraph.
pub async fn dependency_graph_get(
    store: &Store,
    req: &pb::GetDependencyGraphRequest,
) -> Result<pb::DependencyGraph, Error> {
    let tenant = parse_tenant_name("parent", &req.parent)?;
    if req.roots.is_empty() || req.roots.len() > 100 {
        return Err(Error::invalid_argument("roots", "1 to 100 roots"));
    }
    let max_depth = match req.max_depth {
        0 => 3,
        d if (1..=10).contains(&d) => d,
        _ => return Err(Error::invalid_argument("max_depth", "between 1 and 10")),
    };
    let max_nodes = match req.max_nodes {
        0 => 1000,
        n if (1..=10_000).contains(&n) => n as usize,
        _ => return Err(Error::invalid_argument("max_nodes", "between 1 and 10000")),
    };
    let (dependencies, dependents) = match pb::DependencyDirection::try_from(req.direction) {
        Ok(pb::DependencyDirection::Unspecified | pb::DependencyDirection::Dependencies) => {
            (true, false)
        }
        Ok(pb::DependencyDirection::Dependents) => (false, true),
        Ok(pb::DependencyDirection::Both) => (true, true),
        Err(_) => return Err(Error::invalid_argument("direction", "unknown direction")),
    };
    crate::iam::tenant_active(store.pool(), &tenant).await?;
    let environment = if req.environment.is_empty() {
        None
    } else {
        Some(super::status::environment_named(store, &tenant, &req.environment).await?)
    };

    // Roots: Components and Resources as they are, a System as all its Components.
    let mut root_refs = Vec::new();
    for (i, text) in req.roots.iter().enumerate() {
        let field = format!("roots[{i}]");
        let key = parse_name_or_ref(&field, &tenant, text, Some("component"))?;
        if !matches!(key.kind.as_str(), "component" | "resource" | "system") {
            return Err(Error::invalid_argument(
                field,
                "must be a Component, Resource or System",
            ));
        }
        let reference = key.ref_key();
        super::entity_require(store, &tenant, &reference, text).await?;
        if key.kind == "system" {
            let members: Vec<String> = sqlx::query_scalar(
                "SELECT ref FROM catalog_entities WHERE tenant = $1 AND kind = 'component' AND system_ref = $2 ORDER BY ref",
            )
            .bind(&tenant)
            .bind(&reference)
            .fetch_all(store.pool())
            .await?;
            root_refs.extend(members);
        } else {
            root_refs.push(reference);
        }
    }
    root_refs.dedup();

    // Breadth-first; each entity at the depth it is first reached.
    let mut depth_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut edges: BTreeMap<(String, String), EdgeFacts> = BTreeMap::new();
    let mut truncated = false;
    let mut rows: BTreeMap<String, Option<sqlx::any::AnyRow>> = BTreeMap::new();
    for r in &root_refs {
        if depth_of.len() >= max_nodes {
            truncated = true;
            break;
        }
        if depth_of.insert(r.clone(), 0).is_none() {
            queue.push_back(r.clone());
        }
    }
    while let Some(node) = queue.pop_front() {
        let row = sqlx::query(
            "SELECT kind, namespace, name, title, spec_type, lifecycle, owner_ref, system_ref FROM catalog_entities \
             WHERE tenant = $1 AND ref = $2",
        )
        .bind(&tenant)
        .bind(&node)
        .fetch_optional(store.pool())
        .await?;
        let resolved = row.is_some();
        rows.insert(node.clone(), row);
        let depth = depth_of[&node];
        if !resolved || depth >= max_depth {
            continue; // dangling references are not expanded
        }
        let mut next = Vec::new();
        if dependencies {
            next.extend(neighbours(store, &tenant, &node, true, &mut edges).await?);
        }
        if dependents {
            next.extend(neighbours(store, &tenant, &node, false, &mut edges).await?);
        }
        for other in next {
            let kind = other.split(':').next().unwrap_or_default();
            let wanted = match kind {
                "component" => true,
                "resource" => !req.exclude_resources,
                _ => false,
            };
            if !wanted {
                continue;
            }
            if depth_of.contains_key(&other) {
                continue;
            }
            if depth_of.len() >= max_nodes {
                truncated = true;
                continue;
            }
            depth_of.insert(other.clone(), depth + 1);
            queue.push_back(other);
        }
    }

    let mut nodes = Vec::new();
    for (reference, depth) in &depth_of {
        let row = rows.get(reference).and_then(Option::as_ref);
        if row.is_none() && req.exclude_unresolved {
            continue;
        }
        let kind_of_ref = reference.split(':').next().unwrap_or_default();
        let mut node = pb::DependencyNode {
            r#ref: reference.clone(),
            depth: *depth,
            resolved: row.is_some(),
            kind: capitalized(kind_of_ref),
            ..Default::default()
        };
        if let Some(row) = row {
            let kind: String = row.try_get("kind")?;
            let namespace: String = row.try_get("namespace")?;
            let name: String = row.try_get("name")?;
            node.entity = format!("tenants/{tenant}/entities/{kind}/{namespace}/{name}");
            node.kind = capitalized(&kind);
            node.title = row.try_get("title")?;
            node.r#type = row.try_get("spec_type")?;
            node.lifecycle = row.try_get("lifecycle")?;
            node.owner_ref = row.try_get("owner_ref")?;
            node.system_ref = row.try_get("system_ref")?;
            if let Some(env) = &environment
                && kind == "component"
            {
                node.status = super::status::status_in(store, &tenant, reference, env).await?;
            }
        }
        nodes.push(node);
    }
    nodes.sort_by(|a, b| (a.depth, &a.r#ref).cmp(&(b.depth, &b.r#ref)));
    let kept: BTreeSet<&str> = nodes.iter().map(|n| n.r#ref.as_str()).collect();
    let edges = edges
        .into_iter()
        .filter(|((from, to), _)| kept.contains(from.as_str()) && kept.contains(to.as_str()))
        .map(|((from, to), facts)| pb::DependencyEdge {
            from_ref: from,
            to_ref: to,
            direct: facts.direct,
            via_apis: facts.via_apis.into_iter().collect(),
        })
        .collect();
    Ok(pb::DependencyGraph {
        roots: root_refs,
        nodes,
        edges,
        truncated,
        environment: req.environment.clone(),
        compute_time: Some(timestamp(now_micros())),
    })
}

/// `component` → `Component` (the catalog's kinds as Backstage writes them).
fn capitalized(kind: &str) -> String {
    let mut chars = kind.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
