//! The golden table: (principal, tenant, resource, permission) → allow/deny, over every built-in
//! role, group membership, resource-scoped bindings, platform-admin, custom roles and tenant
//! isolation; then the same engine after changes (a revoked binding never allows again).

use platform_policy::{
    Binding, CustomRole, Membership, PolicyEngine, PolicyError, PolicySnapshot, Scopes,
};

fn binding(principal: &str, tenant: Option<&str>, scope: &str, role: &str) -> Binding {
    Binding {
        principal: principal.to_owned(),
        tenant: tenant.map(str::to_owned),
        scope: scope.to_owned(),
        role: role.to_owned(),
    }
}

fn membership(tenant: &str, member: &str, group: &str) -> Membership {
    Membership {
        tenant: tenant.to_owned(),
        member: member.to_owned(),
        group: group.to_owned(),
    }
}

const SRE: &str = "group:tenants/a/groups/sre";
const CI: &str = "serviceAccount:tenants/a/serviceAccounts/ci";
const PROD: &str = "tenants/a/environments/prod";
const AUDITOR: &str = "tenants/a/roles/auditor";

fn snapshot() -> PolicySnapshot {
    PolicySnapshot {
        bindings: vec![
            binding("user:alice", Some("a"), "", "viewer"),
            binding("user:dave", Some("a"), "", "developer"),
            binding("user:dora", Some("a"), "", "deployer"),
            binding("user:sam", Some("a"), "", "secret-admin"),
            binding("user:ada", Some("a"), "", "admin"),
            binding("user:pat", None, "", "platform-admin"),
            binding("user:rita", Some("a"), PROD, "deployer"),
            binding(
                "user:vic",
                Some("a"),
                "tenants/a/secrets/db",
                "secret-admin",
            ),
            binding(SRE, Some("a"), "", "developer"),
            binding("user:olga", Some("a"), "", AUDITOR),
            binding("user:bob", Some("b"), "", "admin"),
            binding(
                "serviceAccount:tenants/b/serviceAccounts/bot",
                Some("b"),
                "",
                "viewer",
            ),
        ],
        memberships: vec![membership("a", "user:gina", SRE), membership("a", CI, SRE)],
        custom_roles: vec![CustomRole {
            name: AUDITOR.to_owned(),
            permissions: vec![
                "audit.auditEvents.list".to_owned(),
                "audit.auditEvents.get".to_owned(),
            ],
        }],
    }
}

/// (principal, tenant, resource, permission, allowed)
type Row = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    bool,
);

#[rustfmt::skip]
const GOLDEN: &[Row] = &[
    // viewer: reads, no writes, no secret values, no audit.
    ("user:alice", Some("a"), "tenants/a", "catalog.entities.list", true),
    ("user:alice", Some("a"), "tenants/a/entities/component/default/payments", "catalog.entities.get", true),
    ("user:alice", Some("a"), PROD, "environments.environments.get", true),
    ("user:alice", Some("a"), "tenants/a/deployments/d1", "deployments.deployments.get", true),
    ("user:alice", Some("a"), "tenants/a/secrets/db", "secrets.secrets.get", true),
    ("user:alice", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.get", true),
    ("user:alice", Some("a"), "tenants/a", "iam.roleBindings.list", true),
    ("user:alice", Some("a"), "tenants/a", "insights.doraMetrics.get", true),
    ("user:alice", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", false),
    ("user:alice", Some("a"), "tenants/a", "audit.auditEvents.list", false),
    ("user:alice", Some("a"), "tenants/a", "catalog.entities.create", false),
    ("user:alice", Some("a"), PROD, "deployments.deployments.create", false),
    ("user:alice", Some("a"), "tenants/a", "iam.roleBindings.create", false),
    // developer: catalog and environment changes, non-production deployments, secret writes.
    ("user:dave", Some("a"), "tenants/a", "catalog.entities.create", true),
    ("user:dave", Some("a"), "tenants/a", "catalog.entities.import", true),
    ("user:dave", Some("a"), PROD, "environments.environments.lock", true),
    ("user:dave", Some("a"), "tenants/a/environments/pr-42", "environments.environments.renew", true),
    ("user:dave", Some("a"), PROD, "deployments.deployments.create", true),
    ("user:dave", Some("a"), "tenants/a/deployments/d1", "deployments.deployments.cancel", true),
    ("user:dave", Some("a"), "tenants/a/secrets/db", "secrets.versions.add", true),
    ("user:dave", Some("a"), PROD, "deployments.deployments.createProduction", false),
    ("user:dave", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", false),
    ("user:dave", Some("a"), PROD, "environments.environments.delete", false),
    ("user:dave", Some("a"), PROD, "environments.drivers.update", false),
    ("user:dave", Some("a"), "tenants/a", "iam.roleBindings.create", false),
    ("user:dave", Some("a"), "tenants/a", "audit.auditEvents.list", false),
    // deployer: developer plus production.
    ("user:dora", Some("a"), PROD, "deployments.deployments.createProduction", true),
    ("user:dora", Some("a"), PROD, "deployments.deployments.create", true),
    ("user:dora", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", false),
    ("user:dora", Some("a"), "tenants/a", "iam.roleBindings.create", false),
    // secret-admin: every secret operation, nothing else beyond viewer.
    ("user:sam", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", true),
    ("user:sam", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.destroy", true),
    ("user:sam", Some("a"), "tenants/a/secrets/db", "secrets.secrets.delete", true),
    ("user:sam", Some("a"), "tenants/a", "catalog.entities.list", true),
    ("user:sam", Some("a"), PROD, "deployments.deployments.create", false),
    ("user:sam", None, "", "secrets.keys.rewrap", false),
    ("user:sam", Some("a"), "tenants/a", "secrets.keys.list", false),
    // admin: everything in the tenant, nothing at platform scope.
    ("user:ada", Some("a"), "tenants/a", "audit.auditEvents.verify", true),
    ("user:ada", Some("a"), "tenants/a", "iam.roleBindings.create", true),
    ("user:ada", Some("a"), "tenants/a", "iam.roles.create", true),
    ("user:ada", Some("a"), PROD, "environments.drivers.update", true),
    ("user:ada", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", true),
    ("user:ada", Some("a"), "tenants/a", "iam.tenants.update", true),
    ("user:ada", None, "tenants/c", "iam.tenants.create", false),
    ("user:ada", None, "", "iam.tenants.list", false),
    ("user:ada", None, "", "audit.auditEvents.list", false),
    ("user:ada", Some("a"), "tenants/a", "iam.tenants.delete", false),
    // platform-admin: every permission, in every tenant, and at platform scope.
    ("user:pat", None, "tenants/c", "iam.tenants.create", true),
    ("user:pat", None, "", "iam.tenants.list", true),
    ("user:pat", None, "", "iam.tokens.revoke", true),
    ("user:pat", None, "keyEncryptionKeys/k1", "secrets.keys.rewrap", true),
    ("user:pat", None, "", "audit.auditEvents.list", true),
    ("user:pat", None, "", "iam.roleBindings.create", true),
    ("user:pat", Some("a"), "tenants/a/secrets/db/versions/1", "secrets.versions.access", true),
    ("user:pat", Some("b"), "tenants/b", "iam.roleBindings.create", true),
    ("user:pat", Some("zzz"), "tenants/zzz/environments/x", "deployments.deployments.createProduction", true),
    // Resource-scoped binding: deployer on tenants/a/environments/prod only.
    ("user:rita", Some("a"), PROD, "deployments.deployments.createProduction", true),
    ("user:rita", Some("a"), PROD, "deployments.deployments.create", true),
    ("user:rita", Some("a"), PROD, "environments.environments.get", true),
    ("user:rita", Some("a"), "tenants/a/environments/prod/deployments/d7", "deployments.deployments.cancel", true),
    ("user:rita", Some("a"), "tenants/a/environments/prod2", "deployments.deployments.create", false),
    ("user:rita", Some("a"), "tenants/a/environments/staging", "deployments.deployments.create", false),
    ("user:rita", Some("a"), "tenants/a/environments", "environments.environments.list", false),
    ("user:rita", Some("a"), "tenants/a", "environments.environments.list", false),
    ("user:rita", Some("a"), "tenants/a", "deployments.deployments.list", false),
    ("user:rita", Some("b"), "tenants/b/environments/prod", "deployments.deployments.create", false),
    ("user:vic", Some("a"), "tenants/a/secrets/db/versions/3", "secrets.versions.access", true),
    ("user:vic", Some("a"), "tenants/a/secrets/dbx", "secrets.secrets.get", false),
    ("user:vic", Some("a"), "tenants/a/secrets/api", "secrets.versions.access", false),
    // Group membership: the group's developer binding applies to its members.
    ("user:gina", Some("a"), PROD, "deployments.deployments.create", true),
    (CI, Some("a"), "tenants/a", "catalog.entities.import", true),
    ("user:gina", Some("a"), PROD, "deployments.deployments.createProduction", false),
    (SRE, Some("a"), "tenants/a", "catalog.entities.create", true),
    ("user:gina", Some("b"), "tenants/b", "catalog.entities.list", false),
    ("user:nobody", Some("a"), "tenants/a", "catalog.entities.list", false),
    // Custom role: exactly its permissions.
    ("user:olga", Some("a"), "tenants/a", "audit.auditEvents.list", true),
    ("user:olga", Some("a"), "tenants/a", "audit.auditEvents.get", true),
    ("user:olga", Some("a"), "tenants/a", "audit.auditEvents.verify", false),
    ("user:olga", Some("a"), "tenants/a", "catalog.entities.list", false),
    ("user:olga", Some("b"), "tenants/b", "audit.auditEvents.list", false),
    // A role in tenant B grants nothing in tenant A, and the reverse.
    ("user:bob", Some("b"), "tenants/b", "iam.roleBindings.create", true),
    ("user:bob", Some("a"), "tenants/a", "catalog.entities.list", false),
    ("user:bob", Some("a"), "tenants/a", "iam.roleBindings.create", false),
    ("user:alice", Some("b"), "tenants/b", "catalog.entities.list", false),
    ("serviceAccount:tenants/b/serviceAccounts/bot", Some("b"), "tenants/b", "catalog.entities.list", true),
    ("serviceAccount:tenants/b/serviceAccounts/bot", Some("a"), "tenants/a", "catalog.entities.list", false),
    // A resource outside the tenant checked is never allowed, whatever the caller holds.
    ("user:ada", Some("a"), "tenants/b", "catalog.entities.list", false),
    ("user:ada", Some("a"), "tenants/ab", "catalog.entities.list", false),
    ("user:bob", Some("b"), "tenants/a/secrets/db", "secrets.secrets.get", false),
    // Names that could escape a scope when compared as strings are denied.
    ("user:rita", Some("a"), "tenants/a/environments/prod/../staging", "deployments.deployments.create", false),
    ("user:rita", Some("a"), "tenants/a/environments/prod//x", "deployments.deployments.create", false),
    ("user:ada", Some("a"), "tenants/a/", "catalog.entities.list", false),
    // An empty resource means the whole tenant.
    ("user:alice", Some("a"), "", "catalog.entities.list", true),
    // Unknown permissions, role ids used as permissions, malformed tenants: denied.
    ("user:ada", Some("a"), "tenants/a", "catalog.entities.frobnicate", false),
    ("user:ada", Some("a"), "tenants/a", "admin", false),
    ("user:ada", Some("a"), "tenants/a", "", false),
    ("user:pat", Some("*"), "", "catalog.entities.list", false),
    ("", Some("a"), "tenants/a", "catalog.entities.list", false),
];

async fn engine() -> PolicyEngine {
    PolicyEngine::new(snapshot()).await.expect("snapshot loads")
}

fn check_golden(engine: &PolicyEngine) {
    let mut wrong = Vec::new();
    for &(principal, tenant, resource, permission, expected) in GOLDEN {
        if engine.is_allowed(principal, tenant, resource, permission) != expected {
            wrong.push(format!(
                "{principal} {tenant:?} {resource} {permission}: expected {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn golden_table() {
    let engine = engine().await;
    // Cold (Casbin), then warm (cache): the same answers.
    check_golden(&engine);
    assert!(engine.cached_decisions() > 0);
    check_golden(&engine);
}

#[tokio::test]
async fn golden_table_without_cache() {
    let engine = PolicyEngine::with_options(
        snapshot(),
        platform_policy::EngineOptions { cache_capacity: 0 },
    )
    .await
    .expect("loads");
    check_golden(&engine);
    assert_eq!(engine.cached_decisions(), 0);
}

#[tokio::test]
async fn golden_table_built_incrementally() {
    let engine = PolicyEngine::new(PolicySnapshot::default())
        .await
        .expect("empty");
    let snap = snapshot();
    for role in &snap.custom_roles {
        engine.put_custom_role(role).await.expect("role");
    }
    for m in &snap.memberships {
        engine.add_membership(m).await.expect("membership");
    }
    for b in &snap.bindings {
        engine.add_binding(b).await.expect("binding");
    }
    check_golden(&engine);
}

#[tokio::test]
async fn removing_a_binding_denies_a_cached_allow() {
    let engine = engine().await;
    let args = (
        "user:dave",
        Some("a"),
        PROD,
        "deployments.deployments.create",
    );
    assert!(engine.is_allowed(args.0, args.1, args.2, args.3));
    assert!(engine.is_allowed(args.0, args.1, args.2, args.3), "cached");
    let generation = engine.generation();
    engine
        .remove_binding(&binding("user:dave", Some("a"), "", "developer"))
        .await
        .expect("removed");
    assert!(engine.generation() > generation);
    assert!(!engine.is_allowed(args.0, args.1, args.2, args.3));
    engine
        .add_binding(&binding("user:dave", Some("a"), "", "developer"))
        .await
        .expect("added");
    assert!(engine.is_allowed(args.0, args.1, args.2, args.3));

    // Platform bindings too.
    assert!(engine.is_allowed("user:pat", None, "", "iam.tenants.list"));
    assert!(engine.is_allowed("user:pat", Some("a"), "tenants/a", "catalog.entities.list"));
    engine
        .remove_binding(&binding("user:pat", None, "", "platform-admin"))
        .await
        .expect("removed");
    assert!(!engine.is_allowed("user:pat", None, "", "iam.tenants.list"));
    assert!(!engine.is_allowed("user:pat", Some("a"), "tenants/a", "catalog.entities.list"));

    // Resource-scoped bindings too.
    assert!(engine.is_allowed(
        "user:rita",
        Some("a"),
        PROD,
        "deployments.deployments.createProduction"
    ));
    engine
        .remove_binding(&binding("user:rita", Some("a"), PROD, "deployer"))
        .await
        .expect("removed");
    assert!(!engine.is_allowed(
        "user:rita",
        Some("a"),
        PROD,
        "deployments.deployments.createProduction"
    ));

    // Removing what does not exist is a no-op.
    engine
        .remove_binding(&binding("user:rita", Some("a"), PROD, "deployer"))
        .await
        .expect("no-op");
}

#[tokio::test]
async fn removing_a_membership_revokes_the_groups_roles() {
    let engine = engine().await;
    assert!(engine.is_allowed(
        "user:gina",
        Some("a"),
        PROD,
        "deployments.deployments.create"
    ));
    engine
        .remove_membership(&membership("a", "user:gina", SRE))
        .await
        .expect("removed");
    assert!(!engine.is_allowed(
        "user:gina",
        Some("a"),
        PROD,
        "deployments.deployments.create"
    ));
    // The other member keeps them.
    assert!(engine.is_allowed(CI, Some("a"), PROD, "deployments.deployments.create"));
    // Removing the group's binding revokes them from every member.
    engine
        .remove_binding(&binding(SRE, Some("a"), "", "developer"))
        .await
        .expect("removed");
    assert!(!engine.is_allowed(CI, Some("a"), PROD, "deployments.deployments.create"));
    // A new membership grants from the next decision on.
    engine
        .add_binding(&binding(SRE, Some("a"), "", "viewer"))
        .await
        .expect("added");
    engine
        .add_membership(&membership("a", "user:gina", SRE))
        .await
        .expect("added");
    assert!(engine.is_allowed(
        "user:gina",
        Some("a"),
        PROD,
        "environments.environments.get"
    ));
    assert!(!engine.is_allowed(
        "user:gina",
        Some("a"),
        PROD,
        "deployments.deployments.create"
    ));
}

#[tokio::test]
async fn custom_role_changes_apply_at_once() {
    let engine = engine().await;
    assert!(engine.is_allowed(
        "user:olga",
        Some("a"),
        "tenants/a",
        "audit.auditEvents.list"
    ));
    assert!(!engine.is_allowed(
        "user:olga",
        Some("a"),
        "tenants/a",
        "audit.auditEvents.verify"
    ));
    engine
        .put_custom_role(&CustomRole {
            name: AUDITOR.to_owned(),
            permissions: vec!["audit.auditEvents.verify".to_owned()],
        })
        .await
        .expect("updated");
    assert!(!engine.is_allowed(
        "user:olga",
        Some("a"),
        "tenants/a",
        "audit.auditEvents.list"
    ));
    assert!(engine.is_allowed(
        "user:olga",
        Some("a"),
        "tenants/a",
        "audit.auditEvents.verify"
    ));
    assert!(engine.role_includes(AUDITOR, "audit.auditEvents.verify"));
    assert_eq!(
        engine.role_permissions(AUDITOR),
        Some(vec!["audit.auditEvents.verify".to_owned()])
    );
    engine.delete_custom_role(AUDITOR).await.expect("deleted");
    assert!(!engine.is_allowed(
        "user:olga",
        Some("a"),
        "tenants/a",
        "audit.auditEvents.verify"
    ));
    assert_eq!(engine.role_permissions(AUDITOR), None);
    // Binding a custom role that does not exist is refused.
    let err = engine
        .add_binding(&binding("user:olga", Some("a"), "", AUDITOR))
        .await
        .expect_err("unknown");
    assert!(matches!(err, PolicyError::UnknownRole(_)), "{err}");
}

#[tokio::test]
async fn a_change_in_one_tenant_keeps_the_others_cached() {
    let engine = engine().await;
    assert!(engine.is_allowed("user:bob", Some("b"), "tenants/b", "catalog.entities.list"));
    let cached = engine.cached_decisions();
    engine
        .add_binding(&binding("user:zoe", Some("a"), "", "viewer"))
        .await
        .expect("added");
    // Still answered from the cache (no new entry needed), and still right.
    assert!(engine.is_allowed("user:bob", Some("b"), "tenants/b", "catalog.entities.list"));
    assert_eq!(engine.cached_decisions(), cached);
    assert!(engine.is_allowed("user:zoe", Some("a"), "tenants/a", "catalog.entities.list"));
}

#[tokio::test]
async fn replace_reloads_everything() {
    let engine = engine().await;
    assert!(engine.is_allowed(
        "user:alice",
        Some("a"),
        "tenants/a",
        "catalog.entities.list"
    ));
    let mut snap = snapshot();
    snap.bindings.retain(|b| b.principal != "user:alice");
    engine.replace(snap).await.expect("reloaded");
    assert!(!engine.is_allowed(
        "user:alice",
        Some("a"),
        "tenants/a",
        "catalog.entities.list"
    ));
    assert!(engine.is_allowed("user:dave", Some("a"), "tenants/a", "catalog.entities.list"));
    // An invalid snapshot leaves the policy as it was.
    let mut bad = snapshot();
    bad.bindings
        .push(binding("user:x", Some("a"), "", "no-such-role"));
    assert!(engine.replace(bad).await.is_err());
    assert!(!engine.is_allowed(
        "user:alice",
        Some("a"),
        "tenants/a",
        "catalog.entities.list"
    ));
}

#[tokio::test]
async fn invalid_policy_is_refused() {
    let engine = PolicyEngine::new(PolicySnapshot::default())
        .await
        .expect("empty");
    let bad_bindings = [
        binding("alice", Some("a"), "", "viewer"),
        binding("user:alice", Some("a"), "", "platform-admin"),
        binding("user:alice", None, "", "admin"),
        binding("user:alice", None, "tenants/a", "platform-admin"),
        binding("group:tenants/a/groups/g", None, "", "platform-admin"),
        binding(
            "user:alice",
            Some("a"),
            "tenants/b/environments/x",
            "viewer",
        ),
        binding("user:alice", Some("a"), "tenants/ab", "viewer"),
        binding(
            "user:alice",
            Some("a"),
            "tenants/a/environments/../x",
            "viewer",
        ),
        binding(
            "serviceAccount:tenants/b/serviceAccounts/x",
            Some("a"),
            "",
            "viewer",
        ),
        binding("group:tenants/b/groups/x", Some("a"), "", "viewer"),
        binding("user:alice", Some("a"), "", "tenants/b/roles/r"),
        binding("user:alice", Some("a"), "", "nope"),
        binding("user:alice", Some("*"), "", "viewer"),
        binding("user:alice", Some("a/b"), "", "viewer"),
    ];
    for b in &bad_bindings {
        assert!(engine.add_binding(b).await.is_err(), "{b:?}");
    }
    let bad_memberships = [
        membership("a", "user:x", "group:tenants/b/groups/g"),
        membership("a", "group:tenants/a/groups/h", "group:tenants/a/groups/g"),
        membership("a", "user:x", "user:y"),
        membership(
            "a",
            "serviceAccount:tenants/b/serviceAccounts/s",
            "group:tenants/a/groups/g",
        ),
    ];
    for m in &bad_memberships {
        assert!(engine.add_membership(m).await.is_err(), "{m:?}");
    }
    let bad_roles = [
        CustomRole {
            name: "tenants/a/roles/r".into(),
            permissions: vec!["iam.tenants.create".into()],
        },
        CustomRole {
            name: "tenants/a/roles/r".into(),
            permissions: vec!["catalog.*".into()],
        },
        CustomRole {
            name: "tenants/a/roles/admin".into(),
            permissions: vec![],
        },
        CustomRole {
            name: "roles/r".into(),
            permissions: vec![],
        },
    ];
    for r in &bad_roles {
        assert!(engine.put_custom_role(r).await.is_err(), "{r:?}");
    }
    assert_eq!(
        engine.generation(),
        1,
        "nothing changed after the initial load"
    );
}

#[tokio::test]
async fn scopes_and_partial_access() {
    let engine = engine().await;
    assert_eq!(
        engine.scopes("user:alice", "a", "secrets.secrets.list"),
        Scopes::All
    );
    assert_eq!(
        engine.scopes("user:vic", "a", "secrets.secrets.list"),
        Scopes::Only(vec!["tenants/a/secrets/db".to_owned()])
    );
    assert!(
        engine
            .scopes("user:vic", "a", "secrets.secrets.list")
            .covers("tenants/a/secrets/db")
    );
    assert!(
        !engine
            .scopes("user:vic", "a", "secrets.secrets.list")
            .covers("tenants/a/secrets/dbx")
    );
    assert!(
        engine
            .scopes("user:bob", "a", "secrets.secrets.list")
            .is_empty()
    );
    assert_eq!(
        engine.scopes("user:rita", "a", "environments.environments.list"),
        Scopes::Only(vec![PROD.to_owned()])
    );
    // ListSecrets on the tenant: vic may call it (and sees only db), bob may not.
    assert!(!engine.is_allowed("user:vic", Some("a"), "tenants/a", "secrets.secrets.list"));
    assert!(engine.is_allowed_within("user:vic", Some("a"), "tenants/a", "secrets.secrets.list"));
    assert!(!engine.is_allowed_within("user:bob", Some("a"), "tenants/a", "secrets.secrets.list"));
    assert!(!engine.is_allowed_within(
        "user:vic",
        Some("a"),
        "tenants/a/secrets/api",
        "secrets.secrets.list"
    ));
    assert!(engine.is_allowed_within("user:alice", Some("a"), "tenants/a", "secrets.secrets.list"));
    // Group bindings count.
    engine
        .add_binding(&binding(
            SRE,
            Some("a"),
            "tenants/a/secrets/api",
            "secret-admin",
        ))
        .await
        .expect("added");
    assert_eq!(
        engine.scopes("user:gina", "a", "secrets.versions.access"),
        Scopes::Only(vec!["tenants/a/secrets/api".to_owned()])
    );
    // And revocation is exact for these too.
    assert!(engine.is_allowed_within(
        "user:gina",
        Some("a"),
        "tenants/a",
        "secrets.versions.access"
    ));
    engine
        .remove_membership(&membership("a", "user:gina", SRE))
        .await
        .expect("removed");
    assert!(!engine.is_allowed_within(
        "user:gina",
        Some("a"),
        "tenants/a",
        "secrets.versions.access"
    ));
    assert!(
        engine
            .scopes("user:gina", "a", "secrets.versions.access")
            .is_empty()
    );
}

#[tokio::test]
async fn scopes_agree_with_decisions() {
    let engine = engine().await;
    let principals = [
        "user:alice",
        "user:dave",
        "user:rita",
        "user:vic",
        "user:gina",
        "user:olga",
        "user:bob",
        CI,
    ];
    let resources = [
        "tenants/a",
        PROD,
        "tenants/a/environments/prod/x",
        "tenants/a/environments/prod2",
        "tenants/a/secrets/db",
        "tenants/a/secrets/db/versions/1",
        "tenants/a/secrets/dbx",
    ];
    for principal in principals {
        for permission in platform_policy::known_permissions() {
            let scopes = engine.scopes(principal, "a", permission);
            for resource in resources {
                assert_eq!(
                    scopes.covers(resource),
                    engine.is_allowed(principal, Some("a"), resource, permission),
                    "{principal} {resource} {permission}"
                );
            }
        }
    }
}

#[tokio::test]
async fn authorize_uses_the_table() {
    let engine = engine().await;
    let target = |method: &str, fields: &[(&str, &str)]| {
        let row = platform_policy::rpc_permission(method).expect("row");
        let owned: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let target = row
            .target(|path| {
                owned
                    .iter()
                    .find(|(k, _)| k == path)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .expect("target");
        (row, target)
    };
    let (row, t) = target(
        "/platform.secrets.v1.SecretService/ListSecrets",
        &[("parent", "tenants/a")],
    );
    assert!(engine.authorize("user:vic", row, &t));
    assert!(!engine.authorize("user:bob", row, &t));
    let (row, t) = target(
        "/platform.iam.v1.IamService/CreateTenant",
        &[("tenant_id", "c")],
    );
    assert!(engine.authorize("user:pat", row, &t));
    assert!(!engine.authorize("user:ada", row, &t));
    let (row, t) = target("/platform.iam.v1.IamService/GetCaller", &[]);
    assert!(engine.authorize("user:nobody", row, &t));
    let (row, t) = target(
        "/platform.audit.v1.AuditService/GetAuditEvent",
        &[("name", "tenants/a/auditEvents/7")],
    );
    assert!(engine.authorize("user:olga", row, &t));
    assert!(!engine.authorize("user:alice", row, &t));
    let (row, t) = target(
        "/platform.deployments.v1.DeploymentService/CreateDeployment",
        &[("parent", "tenants/a"), ("deployment.environment", PROD)],
    );
    assert!(engine.authorize("user:rita", row, &t));
    let (_, t2) = target(
        "/platform.deployments.v1.DeploymentService/CreateDeployment",
        &[
            ("parent", "tenants/a"),
            ("deployment.environment", "tenants/a/environments/staging"),
        ],
    );
    assert!(!engine.authorize("user:rita", row, &t2));
}

#[tokio::test]
async fn bindings_sharing_a_role_on_a_scope_are_independent() {
    let engine = PolicyEngine::new(PolicySnapshot::default())
        .await
        .expect("empty");
    let scoped = |p: &str| binding(p, Some("a"), PROD, "deployer");
    for p in ["user:one", "user:two", SRE] {
        engine.add_binding(&scoped(p)).await.expect("added");
    }
    engine
        .add_membership(&membership("a", "user:three", SRE))
        .await
        .expect("added");
    // Adding the same binding twice is a no-op, and so is its single removal afterwards.
    engine
        .add_binding(&scoped("user:one"))
        .await
        .expect("again");
    let allowed = |p: &str| {
        engine.is_allowed(
            p,
            Some("a"),
            PROD,
            "deployments.deployments.createProduction",
        )
    };
    assert!(allowed("user:one") && allowed("user:two") && allowed("user:three"));
    engine
        .remove_binding(&scoped("user:one"))
        .await
        .expect("removed");
    assert!(!allowed("user:one"));
    assert!(allowed("user:two") && allowed("user:three"));
    engine.remove_binding(&scoped(SRE)).await.expect("removed");
    assert!(!allowed("user:three"));
    assert!(allowed("user:two"));
    engine
        .remove_binding(&scoped("user:two"))
        .await
        .expect("removed");
    assert!(!allowed("user:two"));
    engine
        .add_binding(&scoped("user:one"))
        .await
        .expect("added back");
    assert!(allowed("user:one") && !allowed("user:two"));
    // A grant id, a role or a permission posing as a principal is never allowed.
    for fake in [
        "grant:deployer@tenants/a/environments/prod",
        "deployer",
        "user:",
        "system:platformd",
    ] {
        assert!(
            !engine.is_allowed(fake, Some("a"), PROD, "deployments.deployments.create"),
            "{fake}"
        );
    }
}

#[tokio::test]
async fn a_stale_reload_never_resurrects_a_revoked_binding() {
    let engine = engine().await;
    // A reload reads the generation, then the database (here: a snapshot with dave still bound)...
    let generation = engine.generation();
    let stale = snapshot();
    // ...while dave's binding is revoked.
    engine
        .remove_binding(&binding("user:dave", Some("a"), "", "developer"))
        .await
        .expect("removed");
    assert!(
        !engine
            .replace_if_unchanged(stale, generation)
            .await
            .expect("checked")
    );
    assert!(!engine.is_allowed(
        "user:dave",
        Some("a"),
        "tenants/a",
        "catalog.entities.create"
    ));
    // With nothing changed in between, the reload goes through.
    let generation = engine.generation();
    let mut fresh = snapshot();
    fresh.bindings.retain(|b| b.principal != "user:dave");
    assert!(
        engine
            .replace_if_unchanged(fresh, generation)
            .await
            .expect("replaced")
    );
    assert!(engine.generation() > generation);
    assert!(!engine.is_allowed(
        "user:dave",
        Some("a"),
        "tenants/a",
        "catalog.entities.create"
    ));
    assert!(engine.is_allowed(
        "user:dora",
        Some("a"),
        "tenants/a",
        "catalog.entities.create"
    ));
}
