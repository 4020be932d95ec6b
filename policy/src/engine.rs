//! The policy engine: Casbin decides, a cache makes it fast.
//!
//! # How a decision is made
//!
//! Casbin evaluates its matcher against every `p` line of an enforcer, one after the other (about
//! 1 µs per line on the reference machine), so the cost of a decision grows with the number of
//! lines. Two things keep that number small:
//!
//! - the model's `p` lines are *grants* (a role on a scope), not bindings: a binding is a `g` link
//!   from its principal to a grant, found through the role manager's hash index; principals bound
//!   to the same role on the same scope share one grant line (see `policy/model.conf`);
//! - the engine keeps **one Casbin enforcer per tenant** (a Casbin domain: that tenant's grants,
//!   links, memberships and custom roles) plus one **platform enforcer** holding the platform
//!   bindings (tenant `*`). A decision in tenant `t` asks the platform enforcer, then `t`'s; a
//!   platform-scope decision asks only the platform enforcer.
//!
//! All enforcers use the same model (`policy/model.conf`); built-in roles (domain `*` of `g2`) are
//! answered by a shared, read-only table loaded from `policy/roles.toml` instead of being copied
//! into every tenant (see `ShardRoleManager`).
//!
//! # The decision cache, and why it is exact
//!
//! Decisions are memoised by (principal, tenant, resource, permission). Every entry is tagged
//! with the *stamp* of the policy it was computed under: `max(platform stamp, tenant stamp)`.
//! Every change takes the state's write lock, applies itself and sets the stamp of what it
//! changed (the tenant, or the platform) to a fresh value of a global counter, larger than any
//! stamp before. A lookup reads the current stamp under the state's read lock and uses an entry
//! only if its tag is equal, and a decision is computed and tagged under one read lock, so a
//! decision computed under an old policy can never be used after a change returns, even if it
//! is inserted late. A change in one tenant leaves the other tenants' entries valid. The cache is
//! bounded: a shard that grows over its share of the capacity is cleared.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use casbin::function_map::OperatorFunction;
use casbin::rhai::Dynamic;
use casbin::{CoreApi, DefaultModel, Enforcer, EventData, RoleManager};
use parking_lot::RwLock;

use crate::PolicyError;
use crate::permissions::{Scope, is_known_permission, permission_scope};
use crate::roles::{PLATFORM_ADMIN, RoleTable, load_builtin_roles};

/// The text of `policy/model.conf`, the Casbin model.
pub const MODEL_CONF: &str = include_str!("../model.conf");

/// The Casbin domain of platform bindings and platform-scope requests.
const PLATFORM_DOMAIN: &str = "*";

/// Default bound of the decision cache, in entries (about 150 bytes each).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// A role binding, as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// `user:{subject}`, `serviceAccount:tenants/{t}/serviceAccounts/{id}` or
    /// `group:tenants/{t}/groups/{id}` (service accounts and groups of the binding's tenant).
    pub principal: String,
    /// The tenant id (`acme`); `None` for a platform binding, which applies in every tenant and
    /// at platform scope (only of role `platform-admin`, with an empty scope, to a user or a
    /// service account).
    pub tenant: Option<String>,
    /// `""` for the whole tenant; otherwise a resource name inside the tenant
    /// (`tenants/acme/environments/prod`), covering it and every name under it.
    pub scope: String,
    /// A built-in role id (`developer`), or a custom role's full name (`tenants/acme/roles/r`) of
    /// the binding's tenant.
    pub role: String,
}

/// A group membership: `member` is in `group`, in `tenant`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The tenant id (`acme`).
    pub tenant: String,
    /// `user:{subject}` or `serviceAccount:tenants/{tenant}/serviceAccounts/{id}` (groups do not
    /// nest).
    pub member: String,
    /// `group:tenants/{tenant}/groups/{id}`.
    pub group: String,
}

/// A custom role of a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomRole {
    /// `tenants/{tenant}/roles/{id}`.
    pub name: String,
    /// Known tenant-scope permission names (no wildcards).
    pub permissions: Vec<String>,
}

/// The whole policy, as stored in the database.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    /// Every role binding, tenant and platform.
    pub bindings: Vec<Binding>,
    /// Every group membership.
    pub memberships: Vec<Membership>,
    /// Every custom role.
    pub custom_roles: Vec<CustomRole>,
}

/// Tuning of the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// The decision cache's bound, in entries (0 disables the cache).
    pub cache_capacity: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// Where a principal holds a permission inside a tenant (see [`PolicyEngine::scopes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scopes {
    /// On the whole tenant.
    All,
    /// Only on these resources and what is under them (sorted; empty: nowhere).
    Only(Vec<String>),
}

impl Scopes {
    /// Whether the permission is held on `name` (which lies inside the tenant).
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Only(scopes) => scopes.iter().any(|s| scope_covers(s, name)),
        }
    }

    /// Whether the permission is held nowhere.
    pub fn is_empty(&self) -> bool {
        matches!(self, Scopes::Only(scopes) if scopes.is_empty())
    }
}

/// Whether a binding on `scope` covers `resource`: an empty scope covers everything, otherwise
/// the scope itself and names under it (`scope/...`), never a sibling that merely starts alike.
pub fn scope_covers(scope: &str, resource: &str) -> bool {
    scope.is_empty()
        || resource
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `scopeCovers(p.scope, r.obj)` in the model's matcher.
fn scope_covers_fn(scope: Dynamic, resource: Dynamic) -> Dynamic {
    let (Ok(scope), Ok(resource)) = (
        scope.into_immutable_string(),
        resource.into_immutable_string(),
    ) else {
        return Dynamic::FALSE;
    };
    Dynamic::from_bool(scope_covers(&scope, &resource))
}

/// The authorization policy in force, and the decisions made under it. `Send + Sync`: share it
/// in an `Arc` between all request tasks.
pub struct PolicyEngine {
    template: DefaultModel,
    builtins: Arc<RoleTable>,
    state: RwLock<State>,
    cache: DecisionCache,
    generation: AtomicU64,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.read();
        f.debug_struct("PolicyEngine")
            .field("tenants", &state.tenants.len())
            .field("custom_roles", &state.custom_roles.len())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

struct Shard {
    enforcer: Enforcer,
    /// The global generation at this shard's last change (0: never changed).
    stamp: u64,
    /// Grant id → number of bindings (`g` links) to it; a grant line lives while it is bound.
    grants: HashMap<String, usize>,
}

struct State {
    platform: Shard,
    tenants: HashMap<String, Shard>,
    /// Custom role name → its permissions (sorted), mirrored from the tenants' `g2` lines.
    custom_roles: HashMap<String, Vec<String>>,
}

impl State {
    fn stamp(&self, tenant: Option<&str>) -> u64 {
        let tenant_stamp = tenant
            .and_then(|t| self.tenants.get(t))
            .map_or(0, |s| s.stamp);
        self.platform.stamp.max(tenant_stamp)
    }

    /// Casbin's decision: the platform enforcer, then the tenant's.
    fn decide(
        &self,
        principal: &str,
        tenant: Option<&str>,
        resource: &str,
        permission: &str,
    ) -> bool {
        let domain = tenant.unwrap_or(PLATFORM_DOMAIN);
        let request = (principal, domain, resource, permission);
        if !self.platform.grants.is_empty()
            && self.platform.enforcer.enforce(request).unwrap_or(false)
        {
            return true;
        }
        match tenant.and_then(|t| self.tenants.get(t)) {
            Some(shard) if !shard.grants.is_empty() => {
                shard.enforcer.enforce(request).unwrap_or(false)
            }
            _ => false,
        }
    }
}

impl PolicyEngine {
    /// Loads the model, the built-in roles and `snapshot`.
    pub async fn new(snapshot: PolicySnapshot) -> Result<Self, PolicyError> {
        Self::with_options(snapshot, EngineOptions::default()).await
    }

    /// As [`PolicyEngine::new`], with tuning.
    pub async fn with_options(
        snapshot: PolicySnapshot,
        options: EngineOptions,
    ) -> Result<Self, PolicyError> {
        let roles = load_builtin_roles()?;
        let builtins = Arc::new(RoleTable::new(roles));
        let template = DefaultModel::from_str(MODEL_CONF)
            .await
            .map_err(|e| PolicyError::Model(e.to_string()))?;
        let platform = Shard {
            enforcer: new_enforcer(&template, &builtins).await?,
            stamp: 0,
            grants: HashMap::new(),
        };
        let engine = Self {
            template,
            builtins,
            state: RwLock::new(State {
                platform,
                tenants: HashMap::new(),
                custom_roles: HashMap::new(),
            }),
            cache: DecisionCache::new(options.cache_capacity),
            generation: AtomicU64::new(0),
        };
        engine.replace(snapshot).await?;
        Ok(engine)
    }

    /// A fresh value of the global generation. Called with the state's write lock held.
    fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Increases on every change of the policy.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Replaces the whole policy with `snapshot` (a full reload from the database). Invalid
    /// entries fail the whole reload and leave the policy as it was. The new policy is built
    /// aside and swapped in at once; changes made meanwhile through the incremental methods are
    /// overwritten: for periodic reloads use [`PolicyEngine::replace_if_unchanged`].
    pub async fn replace(&self, snapshot: PolicySnapshot) -> Result<(), PolicyError> {
        self.swap_in(snapshot, None).await.map(|_| ())
    }

    /// Replaces the whole policy with `snapshot` only if no change was applied since
    /// [`PolicyEngine::generation`] returned `generation`; returns whether it did. Read the
    /// generation *before* reading the snapshot from the database: a binding revoked (in the
    /// database and here) while the snapshot was read is then never brought back by a reload of
    /// the older snapshot. On `false`, read again (or rely on the incremental changes).
    pub async fn replace_if_unchanged(
        &self,
        snapshot: PolicySnapshot,
        generation: u64,
    ) -> Result<bool, PolicyError> {
        self.swap_in(snapshot, Some(generation)).await
    }

    async fn swap_in(
        &self,
        snapshot: PolicySnapshot,
        expected_generation: Option<u64>,
    ) -> Result<bool, PolicyError> {
        let PolicySnapshot {
            bindings,
            memberships,
            custom_roles,
        } = snapshot;

        let mut roles: HashMap<String, Vec<String>> = HashMap::new();
        let mut per_tenant: HashMap<String, TenantLines> = HashMap::new();
        for role in custom_roles {
            let (tenant, permissions) = validate_custom_role(&role, &self.builtins)?;
            let lines = per_tenant.entry(tenant.to_owned()).or_default();
            for p in &permissions {
                lines
                    .g2
                    .push(vec![role.name.clone(), p.clone(), tenant.to_owned()]);
            }
            roles.insert(role.name, permissions);
        }
        for m in memberships {
            validate_membership(&m)?;
            per_tenant
                .entry(m.tenant.clone())
                .or_default()
                .g
                .push(vec![m.member, m.group, m.tenant]);
        }
        let mut platform_lines = Vec::new();
        for b in bindings {
            validate_binding(&b, &self.builtins, |name| roles.contains_key(name))?;
            match &b.tenant {
                None => platform_lines.push(b),
                Some(t) => per_tenant.entry(t.clone()).or_default().bindings.push(b),
            }
        }

        let mut platform = Shard {
            enforcer: new_enforcer(&self.template, &self.builtins).await?,
            stamp: 0,
            grants: HashMap::new(),
        };
        platform.load(&platform_lines, Vec::new(), Vec::new())?;
        let mut tenants = HashMap::with_capacity(per_tenant.len());
        for (tenant, lines) in per_tenant {
            let mut shard = Shard {
                enforcer: new_enforcer(&self.template, &self.builtins).await?,
                stamp: 0,
                grants: HashMap::new(),
            };
            shard.load(&lines.bindings, lines.g, lines.g2)?;
            shard.prime(&tenant);
            tenants.insert(tenant, shard);
        }

        let mut state = self.state.write();
        if expected_generation.is_some_and(|g| g != self.generation()) {
            return Ok(false);
        }
        let stamp = self.bump();
        platform.stamp = stamp;
        for shard in tenants.values_mut() {
            shard.stamp = stamp;
        }
        *state = State {
            platform,
            tenants,
            custom_roles: roles,
        };
        drop(state);
        self.cache.clear();
        Ok(true)
    }

    /// Makes sure tenant `tenant` has an enforcer (creating one needs an `await`, which cannot
    /// happen under the state lock), then applies `change` to it under the write lock and stamps
    /// the tenant. Retries if a concurrent `replace` dropped the new enforcer in between.
    async fn change_tenant<R>(
        &self,
        tenant: &str,
        mut change: impl FnMut(&mut Shard, &mut HashMap<String, Vec<String>>) -> Result<R, PolicyError>,
    ) -> Result<R, PolicyError> {
        loop {
            if !self.state.read().tenants.contains_key(tenant) {
                let enforcer = new_enforcer(&self.template, &self.builtins).await?;
                self.state
                    .write()
                    .tenants
                    .entry(tenant.to_owned())
                    .or_insert(Shard {
                        enforcer,
                        stamp: 0,
                        grants: HashMap::new(),
                    });
            }
            let mut guard = self.state.write();
            let state = &mut *guard;
            if let Some(shard) = state.tenants.get_mut(tenant) {
                let result = change(shard, &mut state.custom_roles)?;
                shard.stamp = self.bump();
                return Ok(result);
            }
        }
    }

    /// Adds a role binding (no-op if it exists).
    pub async fn add_binding(&self, binding: &Binding) -> Result<(), PolicyError> {
        self.change_binding(binding, true).await
    }

    /// Removes a role binding (no-op if it does not exist). Once this returns, no decision
    /// allows anything through it.
    pub async fn remove_binding(&self, binding: &Binding) -> Result<(), PolicyError> {
        self.change_binding(binding, false).await
    }

    async fn change_binding(&self, binding: &Binding, add: bool) -> Result<(), PolicyError> {
        match &binding.tenant {
            None => {
                validate_binding(binding, &self.builtins, |_| false)?;
                let mut state = self.state.write();
                state.platform.change_binding(binding, add)?;
                state.platform.stamp = self.bump();
                Ok(())
            }
            Some(tenant) => {
                if !add {
                    // Removal needs no role check: a binding whose role is gone still goes.
                    validate_binding_shape(binding)?;
                }
                self.change_tenant(tenant, |shard, custom_roles| {
                    if add {
                        validate_binding(binding, &self.builtins, |name| {
                            custom_roles.contains_key(name)
                        })?;
                    }
                    shard.change_binding(binding, add)
                })
                .await
            }
        }
    }

    /// Adds a group membership (no-op if it exists).
    pub async fn add_membership(&self, membership: &Membership) -> Result<(), PolicyError> {
        self.change_membership(membership, true).await
    }

    /// Removes a group membership (no-op if it does not exist). Once this returns, the member no
    /// longer holds anything through the group.
    pub async fn remove_membership(&self, membership: &Membership) -> Result<(), PolicyError> {
        self.change_membership(membership, false).await
    }

    async fn change_membership(&self, m: &Membership, add: bool) -> Result<(), PolicyError> {
        validate_membership(m)?;
        let rule = vec![m.member.clone(), m.group.clone(), m.tenant.clone()];
        self.change_tenant(&m.tenant, |shard, _| shard.change_g("g", rule.clone(), add))
            .await
    }

    /// Creates or replaces a custom role. Its bindings grant the new permissions from the next
    /// decision on.
    pub async fn put_custom_role(&self, role: &CustomRole) -> Result<(), PolicyError> {
        let (tenant, permissions) = validate_custom_role(role, &self.builtins)?;
        self.change_tenant(tenant, |shard, custom_roles| {
            let old = custom_roles.get(&role.name).cloned().unwrap_or_default();
            for p in &old {
                shard.change_g(
                    "g2",
                    vec![role.name.clone(), p.clone(), tenant.to_owned()],
                    false,
                )?;
            }
            for p in &permissions {
                shard.change_g(
                    "g2",
                    vec![role.name.clone(), p.clone(), tenant.to_owned()],
                    true,
                )?;
            }
            custom_roles.insert(role.name.clone(), permissions.clone());
            Ok(())
        })
        .await
    }

    /// Deletes a custom role (no-op if it does not exist). Bindings that name it grant nothing
    /// from then on (delete them too).
    pub async fn delete_custom_role(&self, name: &str) -> Result<(), PolicyError> {
        let tenant = custom_role_tenant(name)?;
        self.change_tenant(tenant, |shard, custom_roles| {
            for p in custom_roles.remove(name).unwrap_or_default() {
                shard.change_g("g2", vec![name.to_owned(), p, tenant.to_owned()], false)?;
            }
            Ok(())
        })
        .await
    }

    /// Is `principal` allowed `permission` on `resource` in `tenant` (`None`: at platform scope)?
    ///
    /// `tenant` is the tenant id (`acme`). `resource` is a name inside it: `tenants/acme` for a
    /// whole-tenant check (`""` means the same), or `tenants/acme/environments/prod/...`; a
    /// resource outside the tenant is denied. At platform scope `resource` is informational. An
    /// unknown permission, an empty principal or a malformed tenant is denied.
    pub fn is_allowed(
        &self,
        principal: &str,
        tenant: Option<&str>,
        resource: &str,
        permission: &str,
    ) -> bool {
        let Some(resource) = checked_request(principal, tenant, resource, permission) else {
            return false;
        };
        let state = self.state.read();
        self.decide_cached(
            &state,
            Kind::Exact,
            principal,
            tenant,
            &resource,
            permission,
        )
    }

    fn decide_cached(
        &self,
        state: &State,
        kind: Kind,
        principal: &str,
        tenant: Option<&str>,
        resource: &str,
        permission: &str,
    ) -> bool {
        let stamp = state.stamp(tenant);
        let key = cache_key(kind, principal, tenant, resource, permission);
        if let Some(allowed) = self.cache.get(&key, stamp) {
            return allowed;
        }
        let allowed = match kind {
            // Only plain names reach Casbin inside a tenant (scopes are compared as strings).
            _ if tenant.is_some() && !is_plain_name(resource) => false,
            Kind::Exact => state.decide(principal, tenant, resource, permission),
            Kind::Within => {
                self.decide_cached(state, Kind::Exact, principal, tenant, resource, permission)
                    || match tenant {
                        Some(t) => self
                            .granted_scopes(state, principal, t, permission)
                            .iter()
                            .any(|scope| scope_covers(resource, scope)),
                        None => false,
                    }
            }
        };
        self.cache.insert(key, allowed, stamp);
        allowed
    }

    /// Is `principal` allowed `permission` on `resource` or on anything under it? True when
    /// [`PolicyEngine::is_allowed`] is, and also when a resource-scoped binding grants it on a
    /// resource inside `resource` (`ListSecrets` on `tenants/acme` by a caller who may list
    /// only some secrets). For [`crate::Access::Partial`] RPCs; the handler then narrows with
    /// [`PolicyEngine::scopes`].
    pub fn is_allowed_within(
        &self,
        principal: &str,
        tenant: Option<&str>,
        resource: &str,
        permission: &str,
    ) -> bool {
        let Some(resource) = checked_request(principal, tenant, resource, permission) else {
            return false;
        };
        let state = self.state.read();
        self.decide_cached(
            &state,
            Kind::Within,
            principal,
            tenant,
            &resource,
            permission,
        )
    }

    /// Where `principal` holds `permission` in `tenant`: on the whole tenant, or only on some
    /// resources (and what is under them). Lists use it to show only what the caller may see:
    /// an item is visible when `scopes.covers(item_name)`. Each scope is confirmed by Casbin.
    pub fn scopes(&self, principal: &str, tenant: &str, permission: &str) -> Scopes {
        let whole = format!("tenants/{tenant}");
        let Some(resource) = checked_request(principal, Some(tenant), &whole, permission) else {
            return Scopes::Only(Vec::new());
        };
        let state = self.state.read();
        if self.decide_cached(
            &state,
            Kind::Exact,
            principal,
            Some(tenant),
            &resource,
            permission,
        ) {
            return Scopes::All;
        }
        Scopes::Only(self.granted_scopes(&state, principal, tenant, permission))
    }

    /// The scopes of `principal`'s resource-scoped bindings in `tenant` (direct or through its
    /// groups) on which Casbin allows `permission`.
    fn granted_scopes(
        &self,
        state: &State,
        principal: &str,
        tenant: &str,
        permission: &str,
    ) -> Vec<String> {
        let Some(shard) = state.tenants.get(tenant) else {
            return Vec::new();
        };
        // The scopes of the grants the principal reaches (directly or through a group)...
        let rm = shard.enforcer.get_role_manager();
        let rm = rm.read();
        let mut candidates: BTreeSet<&str> = BTreeSet::new();
        for rule in shard.rules("p", "p") {
            if let (Some(grant), Some(scope)) = (rule.first(), rule.get(2))
                && !scope.is_empty()
                && rm.has_link(principal, grant, Some(tenant))
            {
                candidates.insert(scope.as_str());
            }
        }
        drop(rm);
        // ...on which Casbin allows the permission.
        candidates
            .into_iter()
            .filter(|scope| state.decide(principal, Some(tenant), scope, permission))
            .map(str::to_owned)
            .collect()
    }

    /// Does built-in role `role_id` include `permission`? For tokens that carry role grants
    /// (offline-issued tokens). A custom role's full name (`tenants/t/roles/r`) is looked up too.
    pub fn role_includes(&self, role_id: &str, permission: &str) -> bool {
        if self.builtins.includes(role_id, permission) {
            return true;
        }
        self.state
            .read()
            .custom_roles
            .get(role_id)
            .is_some_and(|perms| perms.iter().any(|p| p == permission))
    }

    /// The permissions of a built-in role id or a custom role's full name, sorted; `None` if it
    /// does not exist. For the no-escalation check of `CreateRoleBinding`.
    pub fn role_permissions(&self, role: &str) -> Option<Vec<String>> {
        if let Some(perms) = self.builtins.permissions(role) {
            let mut perms: Vec<String> = perms.iter().cloned().collect();
            perms.sort();
            return Some(perms);
        }
        self.state.read().custom_roles.get(role).cloned()
    }

    /// Number of memoised decisions (for metrics and tests).
    pub fn cached_decisions(&self) -> usize {
        self.cache.len()
    }
}

/// What a cache entry answers.
#[derive(Clone, Copy)]
enum Kind {
    Exact = 0,
    Within = 1,
}

/// Checks a request's shape; returns the resource to use (`tenants/{t}` for an empty one).
fn checked_request<'a>(
    principal: &str,
    tenant: Option<&str>,
    resource: &'a str,
    permission: &str,
) -> Option<Cow<'a, str>> {
    // Only principals are asked about: a grant id, a role or a permission name posing as a
    // principal would reach itself in the role manager.
    let principal_ok = ["user:", "serviceAccount:", "group:"]
        .iter()
        .any(|prefix| principal.len() > prefix.len() && principal.starts_with(prefix));
    if !principal_ok || !is_known_permission(permission) {
        return None;
    }
    match tenant {
        None => Some(Cow::Borrowed(resource)),
        Some(t) => {
            if !valid_tenant_id(t) {
                return None;
            }
            if resource.is_empty() {
                return Some(Cow::Owned(format!("tenants/{t}")));
            }
            let inside = resource
                .strip_prefix("tenants/")
                .and_then(|rest| rest.strip_prefix(t))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            // (Whether the name is plain is checked on a cache miss: see `decide_cached`.)
            inside.then_some(Cow::Borrowed(resource))
        }
    }
}

/// A resource name without empty, `.` or `..` segments: scopes are compared as strings, so
/// `tenants/a/environments/prod/../staging` must never reach a decision.
fn is_plain_name(name: &str) -> bool {
    name.split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

fn valid_tenant_id(tenant: &str) -> bool {
    !tenant.is_empty() && tenant != PLATFORM_DOMAIN && !tenant.contains('/')
}

/// A length-prefixed encoding of the request, so that no two requests share a key.
fn cache_key(
    kind: Kind,
    principal: &str,
    tenant: Option<&str>,
    resource: &str,
    permission: &str,
) -> Vec<u8> {
    let tenant_len = tenant.map_or(0, str::len);
    let mut key = Vec::with_capacity(
        2 + 16 + principal.len() + tenant_len + resource.len() + permission.len(),
    );
    key.push(kind as u8);
    let mut field = |s: &str| {
        key.extend_from_slice(&(s.len() as u64).to_le_bytes());
        key.extend_from_slice(s.as_bytes());
    };
    field(principal);
    field(resource);
    field(permission);
    match tenant {
        Some(t) => {
            key.push(1);
            key.extend_from_slice(t.as_bytes());
        }
        None => key.push(0),
    }
    key
}

/// A binding's Casbin lines: its grant (`p, grant:{role}@{scope}, dom, scope, role`) and its
/// link (`g, principal, grant:{role}@{scope}, dom`). Role names never contain `@` (they are
/// validated), so the grant id is unique per (role, scope).
fn lines_of(b: &Binding) -> (String, Vec<String>, Vec<String>) {
    let domain = b
        .tenant
        .clone()
        .unwrap_or_else(|| PLATFORM_DOMAIN.to_owned());
    let grant = format!("grant:{}@{}", b.role, b.scope);
    let link = vec![b.principal.clone(), grant.clone(), domain.clone()];
    let line = vec![grant.clone(), domain, b.scope.clone(), b.role.clone()];
    (grant, line, link)
}

#[derive(Default)]
struct TenantLines {
    bindings: Vec<Binding>,
    g: Vec<Vec<String>>,
    g2: Vec<Vec<String>>,
}

/// A new enforcer of the model, with the shared built-in roles and `scopeCovers`.
async fn new_enforcer(
    template: &DefaultModel,
    builtins: &Arc<RoleTable>,
) -> Result<Enforcer, PolicyError> {
    let mut enforcer = Enforcer::new(template.clone(), ())
        .await
        .map_err(|e| PolicyError::Model(e.to_string()))?;
    enforcer.enable_auto_save(false);
    enforcer
        .set_role_manager(Arc::new(RwLock::new(ShardRoleManager::new(Arc::clone(
            builtins,
        )))))
        .map_err(|e| PolicyError::Model(e.to_string()))?;
    enforcer.add_function("scopeCovers", OperatorFunction::Arg2(scope_covers_fn));
    Ok(enforcer)
}

impl Shard {
    fn rules(&self, sec: &str, ptype: &str) -> impl Iterator<Item = &Vec<String>> {
        self.enforcer
            .get_model()
            .get_model()
            .get(sec)
            .and_then(|map| map.get(ptype))
            .into_iter()
            .flat_map(|assertion| assertion.get_policy().iter())
    }

    /// Bulk load into a fresh shard.
    fn load(
        &mut self,
        bindings: &[Binding],
        g: Vec<Vec<String>>,
        g2: Vec<Vec<String>>,
    ) -> Result<(), PolicyError> {
        let model = self.enforcer.get_mut_model();
        for b in bindings {
            let (id, grant, link) = lines_of(b);
            if model.add_policy("g", "g", link) {
                let count = self.grants.entry(id).or_insert(0);
                if *count == 0 {
                    model.add_policy("p", "p", grant);
                }
                *count += 1;
            }
        }
        for rule in g {
            model.add_policy("g", "g", rule);
        }
        for rule in g2 {
            model.add_policy("g", "g2", rule);
        }
        self.enforcer
            .build_role_links()
            .map_err(|e| PolicyError::Model(e.to_string()))
    }

    /// Makes one throw-away decision, so that the script engine's lazily built lookups are ready
    /// before the first real request (the first decision of an enforcer is several times slower).
    fn prime(&self, domain: &str) {
        let _ = self
            .enforcer
            .enforce(("user:", domain, "", "catalog.entities.get"));
    }

    /// Adds or removes a binding: its link, and its grant line when it is the grant's first or
    /// last binding.
    fn change_binding(&mut self, binding: &Binding, add: bool) -> Result<(), PolicyError> {
        let (id, grant, link) = lines_of(binding);
        let model = self.enforcer.get_mut_model();
        if model.has_policy("g", "g", link.clone()) == add {
            return Ok(());
        }
        let linked = self.grants.get(&id).copied().unwrap_or(0);
        if add {
            if linked == 0 {
                model.add_policy("p", "p", grant);
            }
            self.grants.insert(id, linked + 1);
        } else if linked <= 1 {
            model.remove_policy("p", "p", grant);
            self.grants.remove(&id);
        } else {
            self.grants.insert(id, linked - 1);
        }
        self.change_g("g", link, add)
    }

    /// Adds or removes a `g`/`g2` line, in the model and in the role manager.
    fn change_g(&mut self, ptype: &str, rule: Vec<String>, add: bool) -> Result<(), PolicyError> {
        let model = self.enforcer.get_mut_model();
        let changed = if add {
            model.add_policy("g", ptype, rule.clone())
        } else {
            model.remove_policy("g", ptype, rule.clone())
        };
        if !changed {
            return Ok(());
        }
        let event = if add {
            EventData::AddPolicy("g".to_owned(), ptype.to_owned(), rule)
        } else {
            EventData::RemovePolicy("g".to_owned(), ptype.to_owned(), rule)
        };
        self.enforcer
            .build_incremental_role_links(event)
            .map_err(|e| PolicyError::Model(e.to_string()))
    }
}

fn invalid_binding(b: &Binding, why: &str) -> PolicyError {
    PolicyError::InvalidBinding(format!(
        "{} → {} in {} on `{}`: {why}",
        b.principal,
        b.role,
        b.tenant.as_deref().unwrap_or("every tenant"),
        b.scope
    ))
}

/// The id-free checks of a binding: principal, tenant and scope.
fn validate_binding_shape(b: &Binding) -> Result<(), PolicyError> {
    match &b.tenant {
        None => {
            if !(b.principal.starts_with("user:") || b.principal.starts_with("serviceAccount:")) {
                return Err(invalid_binding(
                    b,
                    "a platform binding names a user or a service account",
                ));
            }
            if !b.scope.is_empty() {
                return Err(invalid_binding(
                    b,
                    "a platform binding has no resource scope",
                ));
            }
        }
        Some(t) => {
            if !valid_tenant_id(t) {
                return Err(invalid_binding(b, "bad tenant id"));
            }
            validate_principal(&b.principal, t).map_err(|why| invalid_binding(b, &why))?;
            let scope_ok = b.scope.is_empty()
                || (scope_covers(&format!("tenants/{t}"), &b.scope) && is_plain_name(&b.scope));
            if !scope_ok {
                return Err(invalid_binding(
                    b,
                    "the scope is not a resource of the binding's tenant",
                ));
            }
        }
    }
    Ok(())
}

fn validate_binding(
    b: &Binding,
    builtins: &RoleTable,
    custom_role_exists: impl Fn(&str) -> bool,
) -> Result<(), PolicyError> {
    validate_binding_shape(b)?;
    match &b.tenant {
        None if b.role != PLATFORM_ADMIN => Err(invalid_binding(
            b,
            "a platform binding grants platform-admin and nothing else",
        )),
        None => Ok(()),
        Some(_) if b.role == PLATFORM_ADMIN => Err(invalid_binding(
            b,
            "platform-admin is bound at platform scope only",
        )),
        Some(_) if builtins.contains_role(&b.role) => Ok(()),
        Some(t) => {
            if custom_role_tenant(&b.role).ok() != Some(t.as_str()) {
                return Err(invalid_binding(
                    b,
                    "the role is neither built in nor a custom role of the tenant",
                ));
            }
            if !custom_role_exists(&b.role) {
                return Err(PolicyError::UnknownRole(b.role.clone()));
            }
            Ok(())
        }
    }
}

/// Principals that may be bound or be members in tenant `t`.
fn validate_principal(principal: &str, tenant: &str) -> Result<(), String> {
    let in_tenant = |rest: &str, collection: &str| {
        rest.strip_prefix("tenants/")
            .and_then(|r| r.strip_prefix(tenant))
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_prefix(collection))
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    };
    if let Some(subject) = principal.strip_prefix("user:") {
        if subject.is_empty() || subject.chars().any(char::is_whitespace) {
            return Err("bad user subject".to_owned());
        }
        Ok(())
    } else if let Some(rest) = principal.strip_prefix("serviceAccount:") {
        if in_tenant(rest, "serviceAccounts") {
            Ok(())
        } else {
            Err("a service account of another tenant, or malformed".to_owned())
        }
    } else if let Some(rest) = principal.strip_prefix("group:") {
        if in_tenant(rest, "groups") {
            Ok(())
        } else {
            Err("a group of another tenant, or malformed".to_owned())
        }
    } else {
        Err("a principal is `user:`, `serviceAccount:` or `group:`".to_owned())
    }
}

fn validate_membership(m: &Membership) -> Result<(), PolicyError> {
    let invalid = |why: &str| {
        PolicyError::InvalidMembership(format!("{} in {} ({}): {why}", m.member, m.group, m.tenant))
    };
    if !valid_tenant_id(&m.tenant) {
        return Err(invalid("bad tenant id"));
    }
    if !m.group.starts_with("group:") {
        return Err(invalid("not a group"));
    }
    validate_principal(&m.group, &m.tenant).map_err(|why| invalid(&why))?;
    if m.member.starts_with("group:") {
        return Err(invalid("groups do not nest"));
    }
    validate_principal(&m.member, &m.tenant).map_err(|why| invalid(&why))
}

/// The tenant id of a custom role name `tenants/{t}/roles/{id}`.
fn custom_role_tenant(name: &str) -> Result<&str, PolicyError> {
    let bad =
        || PolicyError::InvalidRole(format!("`{name}` is not `tenants/{{tenant}}/roles/{{id}}`"));
    let rest = name.strip_prefix("tenants/").ok_or_else(bad)?;
    let (tenant, rest) = rest.split_once('/').ok_or_else(bad)?;
    let id = rest.strip_prefix("roles/").ok_or_else(bad)?;
    // A lowercase DNS label: in particular no `/` and no `@` (grant ids rely on it).
    let id_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid_tenant_id(tenant) || !id_ok {
        return Err(bad());
    }
    Ok(tenant)
}

/// Checks a custom role; returns its tenant and its sorted, distinct permissions.
fn validate_custom_role<'a>(
    role: &'a CustomRole,
    builtins: &RoleTable,
) -> Result<(&'a str, Vec<String>), PolicyError> {
    let tenant = custom_role_tenant(&role.name)?;
    let id = role.name.rsplit('/').next().unwrap_or_default();
    if builtins.contains_role(id) {
        return Err(PolicyError::InvalidRole(format!(
            "`{}`: `{id}` is a built-in role id",
            role.name
        )));
    }
    let mut permissions: Vec<String> = Vec::with_capacity(role.permissions.len());
    for p in &role.permissions {
        match permission_scope(p) {
            None => {
                return Err(PolicyError::UnknownPermission(format!(
                    "{p} (in `{}`)",
                    role.name
                )));
            }
            Some(Scope::Platform) => {
                return Err(PolicyError::InvalidRole(format!(
                    "`{}`: `{p}` is a platform-scope permission",
                    role.name
                )));
            }
            Some(Scope::Tenant) => permissions.push(p.clone()),
        }
    }
    permissions.sort();
    permissions.dedup();
    Ok((tenant, permissions))
}

/// The role manager of every enforcer: links of its own domains (group memberships, custom
/// roles), plus domain `*` answered from the shared built-in role table, so that the ~400
/// built-in `g2` lines are not copied into each of thousands of tenants.
struct ShardRoleManager {
    builtins: Arc<RoleTable>,
    /// domain → name → names it links to.
    links: HashMap<String, HashMap<String, HashSet<String>>>,
}

/// Casbin's default hierarchy depth.
const MAX_HIERARCHY: usize = 10;
const DEFAULT_RM_DOMAIN: &str = "";

impl ShardRoleManager {
    fn new(builtins: Arc<RoleTable>) -> Self {
        Self {
            builtins,
            links: HashMap::new(),
        }
    }
}

impl RoleManager for ShardRoleManager {
    fn clear(&mut self) {
        self.links.clear();
    }

    fn add_link(&mut self, name1: &str, name2: &str, domain: Option<&str>) {
        let domain = domain.unwrap_or(DEFAULT_RM_DOMAIN);
        self.links
            .entry(domain.to_owned())
            .or_default()
            .entry(name1.to_owned())
            .or_default()
            .insert(name2.to_owned());
    }

    fn matching_fn(
        &mut self,
        _role_matching_fn: Option<casbin::MatchingFn>,
        _domain_matching_fn: Option<casbin::MatchingFn>,
    ) {
        // The model uses exact names only.
    }

    fn delete_link(
        &mut self,
        name1: &str,
        name2: &str,
        domain: Option<&str>,
    ) -> casbin::Result<()> {
        let domain = domain.unwrap_or(DEFAULT_RM_DOMAIN);
        if let Some(names) = self.links.get_mut(domain) {
            if let Some(targets) = names.get_mut(name1) {
                targets.remove(name2);
                if targets.is_empty() {
                    names.remove(name1);
                }
            }
            if names.is_empty() {
                self.links.remove(domain);
            }
        }
        Ok(())
    }

    fn has_link(&self, name1: &str, name2: &str, domain: Option<&str>) -> bool {
        if name1 == name2 {
            return true;
        }
        let domain = domain.unwrap_or(DEFAULT_RM_DOMAIN);
        if domain == PLATFORM_DOMAIN && self.builtins.includes(name1, name2) {
            return true;
        }
        // The domain's links, plus the links of `*`, which hold in every domain (platform
        // bindings live in the platform enforcer's role manager under `*`).
        let own = self.links.get(domain);
        let everywhere = if domain == PLATFORM_DOMAIN {
            None
        } else {
            self.links.get(PLATFORM_DOMAIN)
        };
        if own.is_none() && everywhere.is_none() {
            return false;
        }
        let targets = |name: &str| {
            own.and_then(|names| names.get(name))
                .into_iter()
                .chain(everywhere.and_then(|names| names.get(name)))
                .flatten()
        };
        // Breadth-first to Casbin's default depth; principal → group → grant is two steps.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut frontier: Vec<&str> = vec![name1];
        for _ in 0..MAX_HIERARCHY {
            let mut next = Vec::new();
            for name in frontier {
                for target in targets(name) {
                    if target == name2 {
                        return true;
                    }
                    if seen.insert(target.as_str()) {
                        next.push(target.as_str());
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        false
    }

    fn get_roles(&self, name: &str, domain: Option<&str>) -> Vec<String> {
        let domain = domain.unwrap_or(DEFAULT_RM_DOMAIN);
        let mut roles: Vec<String> = self
            .links
            .get(domain)
            .and_then(|names| names.get(name))
            .map(|targets| targets.iter().cloned().collect())
            .unwrap_or_default();
        if domain == PLATFORM_DOMAIN
            && let Some(permissions) = self.builtins.permissions(name)
        {
            roles.extend(permissions.iter().cloned());
        }
        roles
    }

    fn get_users(&self, name: &str, domain: Option<&str>) -> Vec<String> {
        let domain = domain.unwrap_or(DEFAULT_RM_DOMAIN);
        self.links
            .get(domain)
            .map(|names| {
                names
                    .iter()
                    .filter(|(_, targets)| targets.contains(name))
                    .map(|(user, _)| user.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Memoised decisions, sharded to keep lock contention low. See the module docs for why the
/// stamps make it exact.
struct DecisionCache {
    shards: Vec<CacheShard>,
    shard_capacity: usize,
    hasher: RandomState,
}

type CacheShard = RwLock<HashMap<Box<[u8]>, Cached>>;

#[derive(Clone, Copy)]
struct Cached {
    allowed: bool,
    stamp: u64,
}

const CACHE_SHARDS: usize = 32;

impl DecisionCache {
    fn new(capacity: usize) -> Self {
        let shard_capacity = capacity.div_ceil(CACHE_SHARDS);
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
            shard_capacity,
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8]) -> Option<&CacheShard> {
        let index = (self.hasher.hash_one(key) % CACHE_SHARDS as u64) as usize;
        self.shards.get(index)
    }

    fn get(&self, key: &[u8], stamp: u64) -> Option<bool> {
        if self.shard_capacity == 0 {
            return None;
        }
        let shard = self.shard(key)?.read();
        shard
            .get(key)
            .filter(|c| c.stamp == stamp)
            .map(|c| c.allowed)
    }

    fn insert(&self, key: Vec<u8>, allowed: bool, stamp: u64) {
        if self.shard_capacity == 0 {
            return;
        }
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let mut shard = shard.write();
        if shard.len() >= self.shard_capacity && !shard.contains_key(key.as_slice()) {
            shard.clear();
        }
        shard.insert(key.into_boxed_slice(), Cached { allowed, stamp });
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard.write().clear();
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_covering() {
        assert!(scope_covers("", "tenants/a/environments/prod"));
        assert!(scope_covers(
            "tenants/a/environments/prod",
            "tenants/a/environments/prod"
        ));
        assert!(scope_covers(
            "tenants/a/environments/prod",
            "tenants/a/environments/prod/x"
        ));
        assert!(!scope_covers(
            "tenants/a/environments/prod",
            "tenants/a/environments/prod2"
        ));
        assert!(!scope_covers(
            "tenants/a/environments/prod",
            "tenants/a/environments"
        ));
        assert!(!scope_covers("tenants/a/environments/prod", "tenants/a"));
    }

    #[test]
    fn cache_keys_are_unambiguous() {
        let a = cache_key(Kind::Exact, "user:a", Some("t"), "tenants/t/x", "p.q.r");
        let b = cache_key(Kind::Exact, "user:a", Some("t"), "tenants/t/x", "p.q.r");
        assert_eq!(a, b);
        let pairs = [
            cache_key(Kind::Exact, "ab", None, "c", "d"),
            cache_key(Kind::Exact, "a", None, "bc", "d"),
            cache_key(Kind::Exact, "a", Some(""), "bc", "d"),
            cache_key(Kind::Within, "a", None, "bc", "d"),
        ];
        for (i, x) in pairs.iter().enumerate() {
            for y in pairs.iter().skip(i + 1) {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn custom_role_names() {
        assert_eq!(custom_role_tenant("tenants/a/roles/r").ok(), Some("a"));
        assert!(custom_role_tenant("tenants/a/roles/").is_err());
        assert!(custom_role_tenant("tenants/a/roles/r/x").is_err());
        assert!(custom_role_tenant("roles/r").is_err());
        assert!(custom_role_tenant("tenants/*/roles/r").is_err());
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PolicyEngine>();
    }
}
