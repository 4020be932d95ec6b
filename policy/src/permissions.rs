//! The permission table: every RPC of the contract, the one permission it needs, and where the
//! tenant and the resource to check come from in its request.
//!
//! The names are exactly those in the `Permission:` line of each RPC's comment in
//! `proto/platform/*/v1/*.proto`; the contract tests in `tests/contract.rs` walk the encoded
//! descriptor set and fail when an RPC has no entry, an entry names an RPC that does not exist, or
//! a field path does not lead to a `string` field of the request. At run time an RPC missing
//! from the table must be denied ([`rpc_permission`] returns `None`).

use std::collections::HashSet;
use std::sync::OnceLock;

/// Where a permission is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Inside a tenant, on the tenant or on a resource in it. May appear in custom roles.
    Tenant,
    /// At platform scope, outside every tenant. Held only through `platform-admin`.
    Platform,
}

/// A permission the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermissionDef {
    /// `<service>.<collection>.<verb>`, e.g. `secrets.versions.access`.
    pub name: &'static str,
    /// Where it is checked.
    pub scope: Scope,
    /// What holding it allows, in one sentence (served by `ListPermissions`).
    pub description: &'static str,
}

/// Where the interceptor finds the tenant and the resource of a request.
///
/// Field paths are proto field names, dot-separated through nested messages
/// (`role_binding.name`); each names a `string` field. A resource name `tenants/{t}/...` puts the
/// check in tenant `t`; any other value (including an empty one, e.g. `ListRoleBindings` with an
/// empty `parent`) puts it at platform scope, where only platform-admins are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceSource {
    /// The resource is the value of this field; the tenant is its `tenants/{t}` prefix.
    Field(&'static str),
    /// The check is on the whole tenant named by the `tenants/{t}` prefix of this field (the
    /// resource is `tenants/{t}`): for methods whose comment says "on the tenant" although the
    /// request names a resource in it (`GetRoleBinding`, `GetAuditEvent`, ...), so that a binding
    /// scoped to one resource never grants them. A value outside every tenant (`roleBindings/x`,
    /// `roles/platform-admin`) is checked at platform scope.
    TenantOf(&'static str),
    /// The resource is the `resource` field when it is set, otherwise the `tenant` field; the
    /// tenant comes from the `tenant` field, and a `resource` outside it is denied
    /// (`CreateRoleBinding`: `parent` and `role_binding.resource`).
    Scoped {
        /// The field naming the tenant, `tenants/{t}` (empty: platform scope).
        tenant: &'static str,
        /// The optional field naming a resource inside that tenant.
        resource: &'static str,
    },
    /// The resource is `tenants/{<field>}`, built from an id field (`CreateTenant`: `tenant_id`).
    TenantIdField(&'static str),
    /// Platform scope, no resource in the request (`ListTenants`, `RevokeToken`, ...).
    Platform,
    /// Any authenticated caller; no permission is checked by the interceptor (`GetCaller`,
    /// `ListPermissions`; `TestPermissions` checks inside its handler).
    AnyAuthenticated,
}

/// How the interceptor's decision relates to the handler's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The permission must be held on the resource: through a binding on the whole tenant, on the
    /// resource itself or on a resource above it. The interceptor's decision is final.
    Resource,
    /// The permission must be held on the resource or on anything inside it (a caller holding it
    /// only through resource-scoped bindings passes). The handler must then narrow: a List shows
    /// only what [`crate::PolicyEngine::scopes`] covers, `DeleteRoleBinding` checks the binding's
    /// own resource. A caller holding the permission nowhere under the resource is denied.
    Partial,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcPermission {
    /// The full gRPC method path, `/platform.iam.v1.IamService/CreateTenant`.
    pub method: &'static str,
    /// The permission the method needs; empty for [`ResourceSource::AnyAuthenticated`].
    pub permission: &'static str,
    /// Where the tenant and the resource come from.
    pub resource: ResourceSource,
    /// Whether the interceptor decides alone or lets the handler narrow.
    pub access: Access,
}

/// Where a request is authorized: computed by [`RpcPermission::target`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The tenant id (`acme`), or `None` for the platform scope.
    pub tenant: Option<String>,
    /// The resource name to check (`tenants/acme` for the whole tenant); for platform-scope checks
    /// the name the request gave, if any, so that audit records can show it.
    pub resource: String,
}

impl RpcPermission {
    /// The tenant and resource to check for a request, given a way to read its string fields by
    /// path (`field("role_binding.resource")`; an unset field reads as `""`).
    ///
    /// Returns `None` when the request cannot be authorized as given (a `Scoped` resource outside
    /// its tenant, a `tenants/` name without a tenant id): deny it. Platform-scope permissions
    /// are always checked at platform scope, whatever the request names.
    pub fn target(&self, field: impl Fn(&str) -> String) -> Option<Target> {
        let target = match self.resource {
            ResourceSource::Field(path) => target_of_name(field(path))?,
            ResourceSource::TenantOf(path) => {
                let value = field(path);
                match tenant_segment(&value)? {
                    Some(tenant) => Target {
                        resource: format!("tenants/{tenant}"),
                        tenant: Some(tenant.to_owned()),
                    },
                    None => Target {
                        tenant: None,
                        resource: value,
                    },
                }
            }
            ResourceSource::Scoped { tenant, resource } => {
                let tenant_name = field(tenant);
                let resource_name = field(resource);
                let base = target_of_name(tenant_name)?;
                if resource_name.is_empty() {
                    base
                } else {
                    match &base.tenant {
                        Some(t) if tenant_of(&resource_name) == Some(t.as_str()) => Target {
                            tenant: base.tenant,
                            resource: resource_name,
                        },
                        // A resource outside the binding's tenant, or a resource on a platform
                        // binding: never authorized.
                        _ => return None,
                    }
                }
            }
            ResourceSource::TenantIdField(path) => {
                let id = field(path);
                if id.is_empty() || id.contains('/') || id == "*" {
                    return None;
                }
                Target {
                    resource: format!("tenants/{id}"),
                    tenant: Some(id),
                }
            }
            ResourceSource::Platform | ResourceSource::AnyAuthenticated => Target {
                tenant: None,
                resource: String::new(),
            },
        };
        if permission_scope(self.permission) == Some(Scope::Platform) {
            return Some(Target {
                tenant: None,
                resource: target.resource,
            });
        }
        Some(target)
    }
}

/// `Some(Some(t))` for `tenants/{t}` or `tenants/{t}/...`, `Some(None)` for a name outside every
/// tenant, `None` for a malformed `tenants/` name (no tenant id).
fn tenant_segment(name: &str) -> Option<Option<&str>> {
    match name.strip_prefix("tenants/") {
        None => Some(None),
        Some(rest) => {
            let id = rest.split('/').next().unwrap_or_default();
            if id.is_empty() || id == "*" {
                None
            } else {
                Some(Some(id))
            }
        }
    }
}

fn target_of_name(name: String) -> Option<Target> {
    let tenant = tenant_segment(&name)?.map(str::to_owned);
    Some(Target {
        tenant,
        resource: name,
    })
}

/// The tenant id of a resource name: `acme` for `tenants/acme` and `tenants/acme/...`; `None` for
/// a name outside every tenant or a malformed one.
pub fn tenant_of(resource: &str) -> Option<&str> {
    tenant_segment(resource).flatten()
}

/// The RPC's row, by full method path (`/platform.iam.v1.IamService/CreateTenant`). `None` means
/// the RPC is unknown: deny it.
pub fn rpc_permission(method_path: &str) -> Option<&'static RpcPermission> {
    static INDEX: OnceLock<std::collections::HashMap<&'static str, &'static RpcPermission>> =
        OnceLock::new();
    INDEX
        .get_or_init(|| RPCS.iter().map(|row| (row.method, row)).collect())
        .get(method_path)
        .copied()
}

/// Every row of the table.
pub fn all() -> &'static [RpcPermission] {
    RPCS
}

/// Every permission the server knows, with its scope and description, sorted by name.
pub fn permissions() -> &'static [PermissionDef] {
    PERMISSIONS
}

/// Every permission name, sorted and distinct: those the table checks and those that handlers
/// check themselves (`deployments.deployments.createProduction`, `environments.drivers.update`).
pub fn known_permissions() -> Vec<&'static str> {
    PERMISSIONS.iter().map(|p| p.name).collect()
}

/// Whether `permission` is a known permission name (no wildcards).
pub fn is_known_permission(permission: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| PERMISSIONS.iter().map(|p| p.name).collect())
        .contains(permission)
}

/// The scope of a known permission; `None` for an unknown name.
pub fn permission_scope(permission: &str) -> Option<Scope> {
    PERMISSIONS
        .binary_search_by(|p| p.name.cmp(permission))
        .ok()
        .and_then(|i| PERMISSIONS.get(i))
        .map(|p| p.scope)
}

/// The methods whose row names `permission` (for `ListPermissions`).
pub fn methods_requiring(permission: &str) -> Vec<&'static str> {
    RPCS.iter()
        .filter(|row| row.permission == permission)
        .map(|row| row.method)
        .collect()
}

macro_rules! perm {
    ($name:literal, $scope:ident, $description:literal) => {
        PermissionDef {
            name: $name,
            scope: Scope::$scope,
            description: $description,
        }
    };
}

/// Sorted by name (a test checks it; `permission_scope` relies on it).
#[rustfmt::skip]
static PERMISSIONS: &[PermissionDef] = &[
    perm!("audit.auditEvents.get", Tenant, "Read one audit event of the tenant's chain."),
    perm!("audit.auditEvents.list", Tenant, "List and filter the audit events of the tenant's chain."),
    perm!("audit.auditEvents.verify", Tenant, "Verify the integrity of the tenant's audit hash chain."),
    perm!("audit.auditEvents.watch", Tenant, "Stream the tenant's audit events as they are committed."),
    perm!("catalog.entities.create", Tenant, "Create catalog entities."),
    perm!("catalog.entities.delete", Tenant, "Delete catalog entities (also needed to prune on import)."),
    perm!("catalog.entities.get", Tenant, "Read catalog entities and their relations."),
    perm!("catalog.entities.import", Tenant, "Import Backstage descriptor files (creating and updating entities)."),
    perm!("catalog.entities.list", Tenant, "List, search, traverse and watch catalog entities."),
    perm!("catalog.entities.update", Tenant, "Update catalog entities."),
    perm!("catalog.settings.get", Tenant, "Read the tenant's catalog settings."),
    perm!("catalog.settings.update", Tenant, "Change the tenant's catalog settings, including the role owners get."),
    perm!("deployments.deployments.cancel", Tenant, "Cancel deployments."),
    perm!("deployments.deployments.create", Tenant, "Create deployments, rollbacks and promotions."),
    perm!("deployments.deployments.createProduction", Tenant, "Deploy, roll back or promote into PRODUCTION environments (in addition to deployments.deployments.create)."),
    perm!("deployments.deployments.get", Tenant, "Read deployments, watch them and read their logs."),
    perm!("deployments.deployments.list", Tenant, "List deployments."),
    perm!("environments.drivers.update", Tenant, "Set or change an environment's driver (the program that deploys into it)."),
    perm!("environments.environments.create", Tenant, "Create environments."),
    perm!("environments.environments.delete", Tenant, "Delete (tear down) environments."),
    perm!("environments.environments.get", Tenant, "Read environments, watch them and read their logs."),
    perm!("environments.environments.list", Tenant, "List environments."),
    perm!("environments.environments.lock", Tenant, "Lock environments (deployment freeze)."),
    perm!("environments.environments.renew", Tenant, "Extend the expiry of preview environments."),
    perm!("environments.environments.unlock", Tenant, "Unlock environments."),
    perm!("environments.environments.update", Tenant, "Update environments."),
    perm!("iam.groupMembers.add", Tenant, "Add members to groups (as powerful as creating role bindings for the group's roles)."),
    perm!("iam.groupMembers.list", Tenant, "List the members of groups."),
    perm!("iam.groupMembers.remove", Tenant, "Remove members from groups."),
    perm!("iam.groups.create", Tenant, "Create groups."),
    perm!("iam.groups.delete", Tenant, "Delete groups."),
    perm!("iam.groups.get", Tenant, "Read groups."),
    perm!("iam.groups.list", Tenant, "List groups."),
    perm!("iam.groups.update", Tenant, "Update groups."),
    perm!("iam.roleBindings.create", Tenant, "Grant roles (only roles whose permissions the caller holds itself)."),
    perm!("iam.roleBindings.delete", Tenant, "Revoke role bindings."),
    perm!("iam.roleBindings.get", Tenant, "Read role bindings."),
    perm!("iam.roleBindings.list", Tenant, "List role bindings."),
    perm!("iam.roles.create", Tenant, "Create custom roles."),
    perm!("iam.roles.delete", Tenant, "Delete custom roles."),
    perm!("iam.roles.get", Tenant, "Read roles."),
    perm!("iam.roles.list", Tenant, "List roles."),
    perm!("iam.roles.update", Tenant, "Change custom roles."),
    perm!("iam.serviceAccountTokens.issue", Tenant, "Issue tokens for service accounts."),
    perm!("iam.serviceAccountTokens.list", Tenant, "List the token metadata of service accounts."),
    perm!("iam.serviceAccountTokens.revoke", Tenant, "Revoke service-account tokens."),
    perm!("iam.serviceAccounts.create", Tenant, "Create service accounts."),
    perm!("iam.serviceAccounts.delete", Tenant, "Delete service accounts."),
    perm!("iam.serviceAccounts.get", Tenant, "Read service accounts."),
    perm!("iam.serviceAccounts.list", Tenant, "List service accounts."),
    perm!("iam.serviceAccounts.update", Tenant, "Update service accounts."),
    perm!("iam.tenants.create", Platform, "Create tenants."),
    perm!("iam.tenants.delete", Platform, "Delete tenants."),
    perm!("iam.tenants.get", Tenant, "Read the tenant."),
    perm!("iam.tenants.list", Platform, "List all tenants."),
    perm!("iam.tenants.update", Tenant, "Update the tenant's display name, description, labels and annotations."),
    perm!("iam.tokens.revoke", Platform, "Revoke any platform-issued token by its jti."),
    perm!("insights.dependencyGraphs.get", Tenant, "Read runtime dependency graphs."),
    perm!("insights.doraMetrics.get", Tenant, "Read DORA metrics."),
    perm!("insights.scorecards.create", Tenant, "Create scorecards."),
    perm!("insights.scorecards.delete", Tenant, "Delete scorecards."),
    perm!("insights.scorecards.evaluate", Tenant, "Evaluate entities against scorecards."),
    perm!("insights.scorecards.get", Tenant, "Read scorecards."),
    perm!("insights.scorecards.list", Tenant, "List scorecards."),
    perm!("insights.scorecards.update", Tenant, "Change scorecards."),
    perm!("insights.serviceStatuses.get", Tenant, "Read what runs where for one component."),
    perm!("insights.serviceStatuses.list", Tenant, "List what runs where for many components."),
    perm!("secrets.keys.get", Platform, "Read a key-encryption key's metadata."),
    perm!("secrets.keys.list", Platform, "List the key-encryption keys and what they wrap."),
    perm!("secrets.keys.rewrap", Platform, "Re-wrap data keys under another key-encryption key."),
    perm!("secrets.secrets.create", Tenant, "Create secrets (metadata; values are versions)."),
    perm!("secrets.secrets.delete", Tenant, "Delete secrets and every version, for good."),
    perm!("secrets.secrets.get", Tenant, "Read secret metadata (never values)."),
    perm!("secrets.secrets.list", Tenant, "List secrets (metadata only)."),
    perm!("secrets.secrets.update", Tenant, "Update secret metadata."),
    perm!("secrets.versions.access", Tenant, "Read secret values, and bind secrets to environments."),
    perm!("secrets.versions.add", Tenant, "Add secret versions (write values)."),
    perm!("secrets.versions.destroy", Tenant, "Destroy secret versions for good."),
    perm!("secrets.versions.disable", Tenant, "Disable secret versions."),
    perm!("secrets.versions.enable", Tenant, "Enable disabled secret versions."),
    perm!("secrets.versions.get", Tenant, "Read secret version metadata (never values)."),
    perm!("secrets.versions.list", Tenant, "List secret versions (metadata only)."),
];

macro_rules! rpc {
    ($service:literal, $method:literal, $permission:literal, $resource:expr) => {
        rpc!($service, $method, $permission, $resource, Resource)
    };
    ($service:literal, $method:literal, $permission:literal, $resource:expr, $access:ident) => {
        RpcPermission {
            method: concat!("/", $service, "/", $method),
            permission: $permission,
            resource: $resource,
            access: Access::$access,
        }
    };
}

use ResourceSource::{AnyAuthenticated, Field, Platform, Scoped, TenantIdField, TenantOf};

/// The table. Grouped by service, in the order of the proto files; one row per line.
#[rustfmt::skip]
static RPCS: &[RpcPermission] = &[
    // platform.audit.v1.AuditService: always on the whole tenant (or the platform chain).
    rpc!("platform.audit.v1.AuditService", "ListAuditEvents", "audit.auditEvents.list", Field("parent")),
    rpc!("platform.audit.v1.AuditService", "GetAuditEvent", "audit.auditEvents.get", TenantOf("name")),
    rpc!("platform.audit.v1.AuditService", "WatchAuditEvents", "audit.auditEvents.watch", Field("parent")),
    rpc!("platform.audit.v1.AuditService", "VerifyAuditChain", "audit.auditEvents.verify", Field("tenant")),
    // platform.catalog.v1.CatalogService
    rpc!("platform.catalog.v1.CatalogService", "CreateEntity", "catalog.entities.create", Field("parent")),
    rpc!("platform.catalog.v1.CatalogService", "GetEntity", "catalog.entities.get", Field("name")),
    rpc!("platform.catalog.v1.CatalogService", "BatchGetEntities", "catalog.entities.get", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "ListEntities", "catalog.entities.list", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "UpdateEntity", "catalog.entities.update", Field("entity.name")),
    rpc!("platform.catalog.v1.CatalogService", "DeleteEntity", "catalog.entities.delete", Field("name")),
    rpc!("platform.catalog.v1.CatalogService", "ImportEntities", "catalog.entities.import", Field("parent")),
    rpc!("platform.catalog.v1.CatalogService", "ListEntityRelations", "catalog.entities.get", Field("parent")),
    rpc!("platform.catalog.v1.CatalogService", "TraverseEntityGraph", "catalog.entities.list", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "SearchEntities", "catalog.entities.list", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "GetEntityFacets", "catalog.entities.list", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "WatchEntities", "catalog.entities.list", Field("parent"), Partial),
    rpc!("platform.catalog.v1.CatalogService", "GetCatalogSettings", "catalog.settings.get", TenantOf("name")),
    rpc!("platform.catalog.v1.CatalogService", "UpdateCatalogSettings", "catalog.settings.update", TenantOf("catalog_settings.name")),
    // platform.deployments.v1.DeploymentService. CreateDeployment is checked on the environment
    // (a binding on the tenant covers it); createProduction is checked by the handler.
    rpc!("platform.deployments.v1.DeploymentService", "CreateDeployment", "deployments.deployments.create", Scoped { tenant: "parent", resource: "deployment.environment" }),
    rpc!("platform.deployments.v1.DeploymentService", "GetDeployment", "deployments.deployments.get", Field("name")),
    rpc!("platform.deployments.v1.DeploymentService", "ListDeployments", "deployments.deployments.list", Field("parent"), Partial),
    rpc!("platform.deployments.v1.DeploymentService", "CancelDeployment", "deployments.deployments.cancel", Field("name")),
    rpc!("platform.deployments.v1.DeploymentService", "RollbackDeployment", "deployments.deployments.create", Field("name")),
    rpc!("platform.deployments.v1.DeploymentService", "PromoteDeployment", "deployments.deployments.create", Field("name")),
    rpc!("platform.deployments.v1.DeploymentService", "WatchDeployment", "deployments.deployments.get", Field("name")),
    rpc!("platform.deployments.v1.DeploymentService", "GetDeploymentLog", "deployments.deployments.get", Field("name")),
    // platform.environments.v1.EnvironmentService
    rpc!("platform.environments.v1.EnvironmentService", "CreateEnvironment", "environments.environments.create", Field("parent")),
    rpc!("platform.environments.v1.EnvironmentService", "GetEnvironment", "environments.environments.get", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "ListEnvironments", "environments.environments.list", Field("parent"), Partial),
    rpc!("platform.environments.v1.EnvironmentService", "UpdateEnvironment", "environments.environments.update", Field("environment.name")),
    rpc!("platform.environments.v1.EnvironmentService", "DeleteEnvironment", "environments.environments.delete", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "LockEnvironment", "environments.environments.lock", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "UnlockEnvironment", "environments.environments.unlock", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "RenewEnvironment", "environments.environments.renew", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "WatchEnvironment", "environments.environments.get", Field("name")),
    rpc!("platform.environments.v1.EnvironmentService", "GetEnvironmentLog", "environments.environments.get", Field("name")),
    // platform.iam.v1.IamService
    rpc!("platform.iam.v1.IamService", "CreateTenant", "iam.tenants.create", TenantIdField("tenant_id")),
    rpc!("platform.iam.v1.IamService", "GetTenant", "iam.tenants.get", Field("name")),
    rpc!("platform.iam.v1.IamService", "ListTenants", "iam.tenants.list", Platform),
    rpc!("platform.iam.v1.IamService", "UpdateTenant", "iam.tenants.update", Field("tenant.name")),
    rpc!("platform.iam.v1.IamService", "DeleteTenant", "iam.tenants.delete", Field("name")),
    rpc!("platform.iam.v1.IamService", "CreateRole", "iam.roles.create", Field("parent")),
    rpc!("platform.iam.v1.IamService", "GetRole", "iam.roles.get", TenantOf("name")),
    rpc!("platform.iam.v1.IamService", "ListRoles", "iam.roles.list", Field("parent")),
    rpc!("platform.iam.v1.IamService", "UpdateRole", "iam.roles.update", TenantOf("role.name")),
    rpc!("platform.iam.v1.IamService", "DeleteRole", "iam.roles.delete", TenantOf("name")),
    rpc!("platform.iam.v1.IamService", "CreateRoleBinding", "iam.roleBindings.create", Scoped { tenant: "parent", resource: "role_binding.resource" }),
    rpc!("platform.iam.v1.IamService", "GetRoleBinding", "iam.roleBindings.get", TenantOf("name")),
    rpc!("platform.iam.v1.IamService", "ListRoleBindings", "iam.roleBindings.list", Field("parent"), Partial),
    rpc!("platform.iam.v1.IamService", "DeleteRoleBinding", "iam.roleBindings.delete", TenantOf("name"), Partial),
    rpc!("platform.iam.v1.IamService", "CreateGroup", "iam.groups.create", Field("parent")),
    rpc!("platform.iam.v1.IamService", "GetGroup", "iam.groups.get", Field("name")),
    rpc!("platform.iam.v1.IamService", "ListGroups", "iam.groups.list", Field("parent"), Partial),
    rpc!("platform.iam.v1.IamService", "UpdateGroup", "iam.groups.update", Field("group.name")),
    rpc!("platform.iam.v1.IamService", "DeleteGroup", "iam.groups.delete", Field("name")),
    rpc!("platform.iam.v1.IamService", "AddGroupMember", "iam.groupMembers.add", Field("group")),
    rpc!("platform.iam.v1.IamService", "RemoveGroupMember", "iam.groupMembers.remove", Field("group")),
    rpc!("platform.iam.v1.IamService", "ListGroupMembers", "iam.groupMembers.list", Field("group")),
    rpc!("platform.iam.v1.IamService", "CreateServiceAccount", "iam.serviceAccounts.create", Field("parent")),
    rpc!("platform.iam.v1.IamService", "GetServiceAccount", "iam.serviceAccounts.get", Field("name")),
    rpc!("platform.iam.v1.IamService", "ListServiceAccounts", "iam.serviceAccounts.list", Field("parent"), Partial),
    rpc!("platform.iam.v1.IamService", "UpdateServiceAccount", "iam.serviceAccounts.update", Field("service_account.name")),
    rpc!("platform.iam.v1.IamService", "DeleteServiceAccount", "iam.serviceAccounts.delete", Field("name")),
    rpc!("platform.iam.v1.IamService", "IssueServiceAccountToken", "iam.serviceAccountTokens.issue", Field("parent")),
    rpc!("platform.iam.v1.IamService", "ListServiceAccountTokens", "iam.serviceAccountTokens.list", Field("parent")),
    rpc!("platform.iam.v1.IamService", "RevokeServiceAccountToken", "iam.serviceAccountTokens.revoke", Field("name")),
    rpc!("platform.iam.v1.IamService", "RevokeToken", "iam.tokens.revoke", Platform),
    rpc!("platform.iam.v1.IamService", "TestPermissions", "", AnyAuthenticated),
    rpc!("platform.iam.v1.IamService", "GetCaller", "", AnyAuthenticated),
    rpc!("platform.iam.v1.IamService", "ListPermissions", "", AnyAuthenticated),
    // platform.insights.v1.InsightsService. "(or on the scope entity)" in a comment names an
    // entity reference that only the handler can resolve: the interceptor checks the tenant.
    rpc!("platform.insights.v1.InsightsService", "GetDoraMetrics", "insights.doraMetrics.get", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "GetServiceStatus", "insights.serviceStatuses.get", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "ListServiceStatuses", "insights.serviceStatuses.list", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "GetDependencyGraph", "insights.dependencyGraphs.get", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "CreateScorecard", "insights.scorecards.create", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "GetScorecard", "insights.scorecards.get", Field("name")),
    rpc!("platform.insights.v1.InsightsService", "ListScorecards", "insights.scorecards.list", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "UpdateScorecard", "insights.scorecards.update", Field("scorecard.name")),
    rpc!("platform.insights.v1.InsightsService", "DeleteScorecard", "insights.scorecards.delete", Field("name")),
    rpc!("platform.insights.v1.InsightsService", "EvaluateEntity", "insights.scorecards.evaluate", Field("parent")),
    rpc!("platform.insights.v1.InsightsService", "ListScorecardEvaluations", "insights.scorecards.evaluate", TenantOf("parent")),
    // platform.secrets.v1.SecretService. Versions are named under their secret, so a binding on
    // the secret covers them.
    rpc!("platform.secrets.v1.SecretService", "CreateSecret", "secrets.secrets.create", Field("parent")),
    rpc!("platform.secrets.v1.SecretService", "GetSecret", "secrets.secrets.get", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "ListSecrets", "secrets.secrets.list", Field("parent"), Partial),
    rpc!("platform.secrets.v1.SecretService", "UpdateSecret", "secrets.secrets.update", Field("secret.name")),
    rpc!("platform.secrets.v1.SecretService", "DeleteSecret", "secrets.secrets.delete", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "AddSecretVersion", "secrets.versions.add", Field("parent")),
    rpc!("platform.secrets.v1.SecretService", "GetSecretVersion", "secrets.versions.get", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "ListSecretVersions", "secrets.versions.list", Field("parent")),
    rpc!("platform.secrets.v1.SecretService", "AccessSecretVersion", "secrets.versions.access", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "DisableSecretVersion", "secrets.versions.disable", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "EnableSecretVersion", "secrets.versions.enable", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "DestroySecretVersion", "secrets.versions.destroy", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "ListKeyEncryptionKeys", "secrets.keys.list", Platform),
    rpc!("platform.secrets.v1.SecretService", "GetKeyEncryptionKey", "secrets.keys.get", Field("name")),
    rpc!("platform.secrets.v1.SecretService", "RewrapDataKeys", "secrets.keys.rewrap", Field("target_key_encryption_key")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_sorted_and_distinct() {
        for pair in PERMISSIONS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn methods_are_distinct() {
        let mut seen = HashSet::new();
        for row in RPCS {
            assert!(seen.insert(row.method), "{} twice", row.method);
        }
    }

    #[test]
    fn lookup() {
        let row = rpc_permission("/platform.iam.v1.IamService/CreateTenant").expect("row");
        assert_eq!(row.permission, "iam.tenants.create");
        assert!(rpc_permission("/platform.iam.v1.IamService/Nope").is_none());
        assert_eq!(
            permission_scope("iam.tenants.create"),
            Some(Scope::Platform)
        );
        assert_eq!(permission_scope("iam.tenants.get"), Some(Scope::Tenant));
        assert_eq!(permission_scope("nope"), None);
    }

    fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> String + 'a {
        move |path| {
            pairs
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, v)| (*v).to_owned())
                .unwrap_or_default()
        }
    }

    fn target(method: &str, pairs: &[(&str, &str)]) -> Option<Target> {
        rpc_permission(method).and_then(|row| row.target(fields(pairs)))
    }

    fn t(tenant: Option<&str>, resource: &str) -> Option<Target> {
        Some(Target {
            tenant: tenant.map(str::to_owned),
            resource: resource.to_owned(),
        })
    }

    #[test]
    fn targets() {
        assert_eq!(
            target(
                "/platform.environments.v1.EnvironmentService/GetEnvironment",
                &[("name", "tenants/a/environments/prod")]
            ),
            t(Some("a"), "tenants/a/environments/prod")
        );
        // Empty parent: the platform bindings.
        assert_eq!(
            target("/platform.iam.v1.IamService/ListRoleBindings", &[]),
            t(None, "")
        );
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/GetRoleBinding",
                &[("name", "tenants/a/roleBindings/rb1")]
            ),
            t(Some("a"), "tenants/a")
        );
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/GetRoleBinding",
                &[("name", "roleBindings/rb1")]
            ),
            t(None, "roleBindings/rb1")
        );
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/GetRole",
                &[("name", "roles/platform-admin")]
            ),
            t(None, "roles/platform-admin")
        );
        // Platform-scope permissions are checked at platform scope.
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/CreateTenant",
                &[("tenant_id", "acme")]
            ),
            t(None, "tenants/acme")
        );
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/CreateTenant",
                &[("tenant_id", "")]
            ),
            None
        );
        assert_eq!(
            target(
                "/platform.iam.v1.IamService/DeleteTenant",
                &[("name", "tenants/acme")]
            ),
            t(None, "tenants/acme")
        );
        // Scoped: the resource when set and inside the tenant, else the tenant; outside: denied.
        let create_binding = "/platform.iam.v1.IamService/CreateRoleBinding";
        assert_eq!(
            target(create_binding, &[("parent", "tenants/a")]),
            t(Some("a"), "tenants/a")
        );
        assert_eq!(
            target(
                create_binding,
                &[
                    ("parent", "tenants/a"),
                    ("role_binding.resource", "tenants/a/environments/prod")
                ]
            ),
            t(Some("a"), "tenants/a/environments/prod")
        );
        assert_eq!(
            target(
                create_binding,
                &[
                    ("parent", "tenants/a"),
                    ("role_binding.resource", "tenants/b/environments/prod")
                ]
            ),
            None
        );
        assert_eq!(
            target(
                create_binding,
                &[("parent", ""), ("role_binding.resource", "tenants/b")]
            ),
            None
        );
        assert_eq!(target(create_binding, &[]), t(None, ""));
        assert_eq!(
            target(
                "/platform.deployments.v1.DeploymentService/CreateDeployment",
                &[
                    ("parent", "tenants/a"),
                    ("deployment.environment", "tenants/a/environments/prod")
                ]
            ),
            t(Some("a"), "tenants/a/environments/prod")
        );
        // Malformed tenant names are denied outright.
        assert_eq!(
            target(
                "/platform.secrets.v1.SecretService/GetSecret",
                &[("name", "tenants//secrets/x")]
            ),
            None
        );
        assert_eq!(
            target(
                "/platform.secrets.v1.SecretService/GetSecret",
                &[("name", "tenants/*/secrets/x")]
            ),
            None
        );
        // A name outside every tenant is a platform-scope check.
        assert_eq!(
            target(
                "/platform.secrets.v1.SecretService/GetSecret",
                &[("name", "secrets/x")]
            ),
            t(None, "secrets/x")
        );
        assert_eq!(tenant_of("tenants/acme"), Some("acme"));
        assert_eq!(tenant_of("tenants/acme/x"), Some("acme"));
        assert_eq!(tenant_of("tenantsacme"), None);
        assert_eq!(tenant_of(""), None);
    }
}
