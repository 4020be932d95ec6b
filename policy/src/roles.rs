//! The built-in roles, read from `policy/roles.toml` (embedded at build time).
//!
//! Wildcards (`secrets.*`, `*`) and `includes` are expanded when the file is loaded, against
//! [`crate::known_permissions`]; a role naming an unknown permission, or a tenant role naming a
//! platform-scope one, fails the load.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::PolicyError;
use crate::permissions::{Scope, permission_scope, permissions};

/// The text of `policy/roles.toml`.
pub const ROLES_TOML: &str = include_str!("../roles.toml");

/// The id of the one platform role.
pub const PLATFORM_ADMIN: &str = "platform-admin";

/// A built-in role with its permissions expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// The role id: `viewer`, `developer`, `deployer`, `secret-admin`, `admin`, `platform-admin`.
    pub id: String,
    /// Short human-readable title.
    pub title: String,
    /// What the role is for.
    pub description: String,
    /// True for `platform-admin`: bound at platform scope, holds platform-scope permissions.
    pub platform: bool,
    /// The expanded permissions, sorted and distinct.
    pub permissions: Vec<String>,
}

impl Role {
    /// Whether the role includes `permission` (an exact name).
    pub fn includes(&self, permission: &str) -> bool {
        self.permissions
            .binary_search_by(|p| p.as_str().cmp(permission))
            .is_ok()
    }

    /// The role's resource name in a tenant (`tenants/acme/roles/viewer`), or
    /// `roles/platform-admin` for the platform role.
    pub fn name_in(&self, tenant: &str) -> String {
        if self.platform {
            format!("roles/{}", self.id)
        } else {
            format!("tenants/{tenant}/roles/{}", self.id)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    roles: Vec<RoleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    id: String,
    title: String,
    description: String,
    #[serde(default)]
    platform: bool,
    #[serde(default)]
    includes: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
}

/// Expands one permission pattern of a role. `platform` says whether platform-scope permissions
/// may be included.
fn expand(pattern: &str, platform: bool, role: &str) -> Result<Vec<String>, PolicyError> {
    let allowed = |scope: Scope| platform || scope == Scope::Tenant;
    if let Some(prefix) = pattern.strip_suffix('*') {
        if !(prefix.is_empty() || prefix.ends_with('.')) || prefix.contains('*') {
            return Err(PolicyError::Roles(format!(
                "role `{role}`: wildcard `{pattern}` must be `*` or end in `.*`"
            )));
        }
        let matched: Vec<String> = permissions()
            .iter()
            .filter(|p| p.name.starts_with(prefix) && allowed(p.scope))
            .map(|p| p.name.to_owned())
            .collect();
        if matched.is_empty() {
            return Err(PolicyError::Roles(format!(
                "role `{role}`: wildcard `{pattern}` matches no known permission"
            )));
        }
        return Ok(matched);
    }
    match permission_scope(pattern) {
        None => Err(PolicyError::UnknownPermission(format!(
            "{pattern} (in built-in role `{role}`)"
        ))),
        Some(scope) if !allowed(scope) => Err(PolicyError::Roles(format!(
            "role `{role}`: `{pattern}` is a platform-scope permission; only platform-admin holds those"
        ))),
        Some(_) => Ok(vec![pattern.to_owned()]),
    }
}

/// Parses and expands a roles file (the text of `roles.toml`).
pub fn parse_roles(text: &str) -> Result<Vec<Role>, PolicyError> {
    let file: RolesFile =
        toml::from_str(text).map_err(|e| PolicyError::Roles(format!("roles.toml: {e}")))?;
    let mut roles: Vec<Role> = Vec::with_capacity(file.roles.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in file.roles {
        if entry.id.is_empty()
            || !entry
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(PolicyError::Roles(format!(
                "role id `{}` is not a lowercase DNS label",
                entry.id
            )));
        }
        if seen.contains_key(&entry.id) {
            return Err(PolicyError::Roles(format!(
                "role `{}` is defined twice",
                entry.id
            )));
        }
        if entry.platform && entry.id != PLATFORM_ADMIN {
            return Err(PolicyError::Roles(format!(
                "role `{}`: only `{PLATFORM_ADMIN}` may be a platform role",
                entry.id
            )));
        }
        if entry.id == PLATFORM_ADMIN && !entry.platform {
            return Err(PolicyError::Roles(format!(
                "role `{PLATFORM_ADMIN}` must say `platform = true`"
            )));
        }
        let mut set: BTreeSet<String> = BTreeSet::new();
        for included in &entry.includes {
            let index = seen.get(included).copied().ok_or_else(|| {
                PolicyError::Roles(format!(
                    "role `{}` includes `{included}`, which is not defined before it",
                    entry.id
                ))
            })?;
            if let Some(other) = roles.get(index) {
                set.extend(other.permissions.iter().cloned());
            }
        }
        for pattern in &entry.permissions {
            set.extend(expand(pattern, entry.platform, &entry.id)?);
        }
        if set.is_empty() {
            return Err(PolicyError::Roles(format!(
                "role `{}` has no permissions",
                entry.id
            )));
        }
        seen.insert(entry.id.clone(), roles.len());
        roles.push(Role {
            id: entry.id,
            title: entry.title,
            description: entry.description,
            platform: entry.platform,
            permissions: set.into_iter().collect(),
        });
    }
    if !seen.contains_key(PLATFORM_ADMIN) {
        return Err(PolicyError::Roles(format!(
            "roles.toml must define `{PLATFORM_ADMIN}`"
        )));
    }
    Ok(roles)
}

static BUILTIN: OnceLock<Result<Vec<Role>, PolicyError>> = OnceLock::new();

/// The built-in roles of `roles.toml`, checked and expanded; an error if the file is invalid
/// (the tests make sure it is not).
pub fn load_builtin_roles() -> Result<&'static [Role], PolicyError> {
    match BUILTIN.get_or_init(|| parse_roles(ROLES_TOML)) {
        Ok(roles) => Ok(roles),
        Err(e) => Err(e.clone()),
    }
}

/// The built-in roles, in file order (viewer, developer, deployer, secret-admin, admin,
/// platform-admin). Empty only if `roles.toml` is invalid, which [`load_builtin_roles`] reports
/// and `PolicyEngine::new` refuses.
pub fn builtin_roles() -> &'static [Role] {
    load_builtin_roles().unwrap_or_default()
}

/// The built-in role with this id.
pub fn builtin_role(id: &str) -> Option<&'static Role> {
    builtin_roles().iter().find(|r| r.id == id)
}

/// The ids of the built-in roles that include `permission` (for `ListPermissions`).
pub fn builtin_roles_with(permission: &str) -> Vec<&'static str> {
    builtin_roles()
        .iter()
        .filter(|r| r.includes(permission))
        .map(|r| r.id.as_str())
        .collect()
}

/// Built-in role → permission sets, for fast lookups on the decision path.
#[derive(Debug, Default)]
pub(crate) struct RoleTable {
    roles: HashMap<String, HashSet<String>>,
}

impl RoleTable {
    pub(crate) fn new(roles: &[Role]) -> Self {
        Self {
            roles: roles
                .iter()
                .map(|r| (r.id.clone(), r.permissions.iter().cloned().collect()))
                .collect(),
        }
    }

    pub(crate) fn includes(&self, role: &str, permission: &str) -> bool {
        self.roles
            .get(role)
            .is_some_and(|perms| perms.contains(permission))
    }

    pub(crate) fn contains_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub(crate) fn permissions(&self, role: &str) -> Option<&HashSet<String>> {
        self.roles.get(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::known_permissions;

    fn role(id: &str) -> &'static Role {
        builtin_role(id).expect("built-in role")
    }

    #[test]
    fn builtin_roles_load() {
        let roles = load_builtin_roles().expect("roles.toml is valid");
        let ids: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "viewer",
                "developer",
                "deployer",
                "secret-admin",
                "admin",
                "platform-admin"
            ]
        );
        for r in roles {
            let mut sorted = r.permissions.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, r.permissions, "{} sorted and distinct", r.id);
        }
    }

    #[test]
    fn role_contents() {
        let viewer = role("viewer");
        assert!(viewer.includes("catalog.entities.get"));
        assert!(viewer.includes("secrets.secrets.get"));
        assert!(!viewer.includes("secrets.versions.access"));
        assert!(!viewer.includes("audit.auditEvents.list"));
        assert!(!viewer.includes("deployments.deployments.create"));

        let developer = role("developer");
        assert!(viewer.permissions.iter().all(|p| developer.includes(p)));
        assert!(developer.includes("deployments.deployments.create"));
        assert!(developer.includes("secrets.versions.add"));
        assert!(!developer.includes("deployments.deployments.createProduction"));
        assert!(!developer.includes("secrets.versions.access"));
        assert!(!developer.includes("environments.drivers.update"));

        let deployer = role("deployer");
        assert!(deployer.includes("deployments.deployments.createProduction"));
        assert_eq!(deployer.permissions.len(), developer.permissions.len() + 1);

        let secret_admin = role("secret-admin");
        assert!(secret_admin.includes("secrets.versions.access"));
        assert!(secret_admin.includes("secrets.versions.destroy"));
        assert!(
            !secret_admin.includes("secrets.keys.rewrap"),
            "platform scope"
        );
        assert!(!secret_admin.includes("deployments.deployments.create"));

        let admin = role("admin");
        let platform_admin = role("platform-admin");
        for p in crate::permissions() {
            assert_eq!(
                admin.includes(p.name),
                p.scope == Scope::Tenant,
                "{}",
                p.name
            );
            assert!(platform_admin.includes(p.name), "{}", p.name);
        }
        assert_eq!(platform_admin.permissions.len(), known_permissions().len());
        assert_eq!(platform_admin.name_in("acme"), "roles/platform-admin");
        assert_eq!(admin.name_in("acme"), "tenants/acme/roles/admin");
        assert_eq!(builtin_roles_with("iam.tenants.create"), ["platform-admin"]);
    }

    #[test]
    fn unknown_permission_is_a_load_error() {
        let text = r#"
            [[roles]]
            id = "viewer"
            title = "V"
            description = "d"
            permissions = ["catalog.entities.gett"]
            [[roles]]
            id = "platform-admin"
            title = "P"
            description = "d"
            platform = true
            permissions = ["*"]
        "#;
        let err = parse_roles(text).expect_err("unknown permission");
        assert!(
            matches!(err, PolicyError::UnknownPermission(ref p) if p.contains("catalog.entities.gett")),
            "{err}"
        );
    }

    #[test]
    fn bad_files_are_load_errors() {
        let base = |body: &str| {
            format!(
                "{body}\n[[roles]]\nid = \"platform-admin\"\ntitle = \"P\"\ndescription = \"d\"\nplatform = true\npermissions = [\"*\"]\n"
            )
        };
        let cases = [
            // A wildcard that matches nothing.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"nothing.*\"]",
            // A wildcard in the middle.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"secrets.*.get\"]",
            // A platform-scope permission in a tenant role.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"iam.tenants.create\"]",
            // Including a role not defined before.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\nincludes = [\"y\"]\npermissions = [\"iam.tenants.get\"]",
            // An unknown key.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermision = [\"iam.tenants.get\"]",
            // Twice the same id.
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"iam.tenants.get\"]\n[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"iam.tenants.get\"]",
        ];
        for case in cases {
            assert!(parse_roles(&base(case)).is_err(), "{case}");
        }
        // Without platform-admin.
        assert!(
            parse_roles(
                "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"*\"]"
            )
            .is_err()
        );
        // A tenant role's wildcard expands to tenant-scope permissions only.
        let roles = parse_roles(&base(
            "[[roles]]\nid = \"x\"\ntitle = \"X\"\ndescription = \"d\"\npermissions = [\"iam.*\"]",
        ))
        .expect("valid");
        assert!(roles[0].includes("iam.roles.get"));
        assert!(!roles[0].includes("iam.tenants.create"));
    }
}
