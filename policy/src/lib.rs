//! Authorization for the platform API.
//!
//! Three things live here, each in a file an operator can read without reading Rust:
//!
//! - `policy/model.conf`, the Casbin model: tenants are Casbin domains; a role binding gives a
//!   role to a principal (a user, a service account or a group) on a whole tenant, on one resource
//!   and what is under it, or in every tenant (a platform binding); group membership and role →
//!   permission are Casbin role links (`g`, `g2`).
//! - `policy/roles.toml`, the built-in roles (`viewer`, `developer`, `deployer`, `secret-admin`,
//!   `admin`, `platform-admin`) and their permissions.
//! - [`permissions`], the one table that maps every RPC of the contract to the permission it needs
//!   and to where its tenant and resource come from in the request.
//!
//! Both files are embedded with `include_str!`: the binary cannot run with a model or roles that
//! differ from the ones reviewed with the code, and no deployment can lose them. Both are checked
//! when the [`PolicyEngine`] starts (an unknown permission in a role is an error, never a
//! silently smaller role).
//!
//! The [`PolicyEngine`] holds the policy (bindings, memberships, custom roles) that the server
//! loads from its database, lets Casbin decide, and memoises decisions with exact invalidation:
//! after a change returns, no decision made under the old policy is ever used (see [`engine`]).
//!
//! # Wiring (what the server does per request)
//!
//! ```ignore
//! let Some(rpc) = platform_policy::rpc_permission(method_path) else { deny };
//! let Some(target) = rpc.target(|path| read_string_field(&request, path)) else { deny };
//! let allowed = engine.authorize(&principal, rpc, &target);
//! ```

pub mod engine;
pub mod permissions;
pub mod roles;

pub use engine::{
    Binding, CustomRole, EngineOptions, MODEL_CONF, Membership, PolicyEngine, PolicySnapshot,
    Scopes, scope_covers,
};
pub use permissions::{
    Access, PermissionDef, ResourceSource, RpcPermission, Scope, Target, all, is_known_permission,
    known_permissions, methods_requiring, permission_scope, permissions, rpc_permission, tenant_of,
};
pub use roles::{
    PLATFORM_ADMIN, ROLES_TOML, Role, builtin_role, builtin_roles, builtin_roles_with,
    load_builtin_roles, parse_roles,
};

/// Why the policy could not be loaded or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The Casbin model could not be loaded, or Casbin refused an operation.
    #[error("casbin model: {0}")]
    Model(String),
    /// `roles.toml` is invalid.
    #[error("built-in roles: {0}")]
    Roles(String),
    /// A permission name that the server does not know.
    #[error("unknown permission: {0}")]
    UnknownPermission(String),
    /// A binding names a custom role that does not exist.
    #[error("unknown role: {0}")]
    UnknownRole(String),
    /// A malformed binding.
    #[error("invalid role binding: {0}")]
    InvalidBinding(String),
    /// A malformed group membership.
    #[error("invalid group membership: {0}")]
    InvalidMembership(String),
    /// A malformed custom role.
    #[error("invalid custom role: {0}")]
    InvalidRole(String),
}

impl PolicyEngine {
    /// The interceptor's decision for one RPC: `rpc` from [`rpc_permission`], `target` from
    /// [`RpcPermission::target`]. `AnyAuthenticated` RPCs are allowed; [`Access::Partial`] ones
    /// are allowed when the permission is held on the target or anywhere under it (the handler
    /// narrows).
    pub fn authorize(&self, principal: &str, rpc: &RpcPermission, target: &Target) -> bool {
        match (rpc.resource, rpc.access) {
            (ResourceSource::AnyAuthenticated, _) => !principal.is_empty(),
            (_, Access::Resource) => self.is_allowed(
                principal,
                target.tenant.as_deref(),
                &target.resource,
                rpc.permission,
            ),
            (_, Access::Partial) => self.is_allowed_within(
                principal,
                target.tenant.as_deref(),
                &target.resource,
                rpc.permission,
            ),
        }
    }
}
