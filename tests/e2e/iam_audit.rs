//! IAM and audit over the wire, on SQLite and PostgreSQL: the bootstrap admin creates a tenant and
//! binds a developer; the developer is allowed and denied as the built-in roles say; denials are
//! audited; the chain verifies, and a direct edit of an audit row is found.

use std::time::Duration;

use platform_api::platform::audit::v1 as audit;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::storage_test;
use crate::support::{Backend, TestClient, TestDb, TestServer};

pub(crate) async fn create_tenant(admin: &TestClient, id: &str) -> iam::Tenant {
    admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: id.into(),
            ..Default::default()
        }))
        .await
        .expect("create tenant")
        .into_inner()
}

pub(crate) async fn bind(
    admin: &TestClient,
    tenant: &str,
    id: &str,
    principal: &str,
    role: &str,
    resource: &str,
) -> Result<iam::RoleBinding, tonic::Status> {
    admin
        .iam()
        .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
            parent: format!("tenants/{tenant}"),
            role_binding_id: id.into(),
            role_binding: Some(iam::RoleBinding {
                principal: principal.into(),
                role: format!("tenants/{tenant}/roles/{role}"),
                resource: resource.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn test_permissions(
    client: &TestClient,
    resource: &str,
    permissions: &[&str],
) -> Vec<String> {
    client
        .iam()
        .test_permissions(client.req(iam::TestPermissionsRequest {
            resource: resource.into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        }))
        .await
        .expect("test permissions")
        .into_inner()
        .permissions
}

async fn list_groups(
    client: &TestClient,
    tenant: &str,
) -> Result<iam::ListGroupsResponse, tonic::Status> {
    client
        .iam()
        .list_groups(client.req(iam::ListGroupsRequest {
            parent: format!("tenants/{tenant}"),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn create_group(
    client: &TestClient,
    tenant: &str,
    id: &str,
) -> Result<iam::Group, tonic::Status> {
    client
        .iam()
        .create_group(client.req(iam::CreateGroupRequest {
            parent: format!("tenants/{tenant}"),
            group_id: id.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn verify(client: &TestClient, tenant: &str) -> audit::VerifyAuditChainResponse {
    client
        .audit()
        .verify_audit_chain(client.req(audit::VerifyAuditChainRequest {
            tenant: tenant.into(),
            anchors: vec![],
        }))
        .await
        .expect("verify")
        .into_inner()
}

async fn list_events(client: &TestClient, parent: &str, filter: &str) -> Vec<audit::AuditEvent> {
    client
        .audit()
        .list_audit_events(client.req(audit::ListAuditEventsRequest {
            parent: parent.into(),
            filter: filter.into(),
            ..Default::default()
        }))
        .await
        .expect("list audit events")
        .into_inner()
        .audit_events
}

storage_test!(
    admin_binds_a_developer_who_is_allowed_and_denied_and_audited,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(
                db.data_dir
                    .path()
                    .join(platformd::server::BOOTSTRAP_TOKEN_FILE),
            )
            .expect("file")
            .permissions()
            .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let caller = admin
            .iam()
            .get_caller(admin.req(iam::GetCallerRequest {}))
            .await
            .expect("who am i")
            .into_inner();
        assert!(caller.platform_admin);
        assert_eq!(caller.principal, "user:bootstrap-admin");

        create_tenant(&admin, "acme").await;
        create_tenant(&admin, "other").await;
        bind(&admin, "acme", "dev-binding", "user:dev", "developer", "")
            .await
            .expect("bind developer");

        let dev = server.user("dev").await;
        let held = test_permissions(
            &dev,
            "tenants/acme",
            &[
                "deployments.deployments.create",
                "deployments.deployments.createProduction",
                "iam.roleBindings.create",
                "catalog.entities.get",
            ],
        )
        .await;
        assert_eq!(
            held,
            ["deployments.deployments.create", "catalog.entities.get"]
        );
        assert!(
            test_permissions(&dev, "tenants/other", &["catalog.entities.get"])
                .await
                .is_empty(),
            "a role in acme grants nothing in other"
        );

        // Allowed: developers read groups. Denied: managing access, other tenants, platform acts.
        list_groups(&dev, "acme")
            .await
            .expect("developer lists groups");
        let denied = bind(&dev, "acme", "escalate", "user:dev", "admin", "")
            .await
            .expect_err("developer cannot bind");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let denied = list_groups(&dev, "other").await.expect_err("other tenant");
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            !denied.message().contains("other"),
            "no hint about tenant B: {}",
            denied.message()
        );
        let denied = dev
            .iam()
            .create_tenant(dev.req(iam::CreateTenantRequest {
                tenant_id: "mine".into(),
                ..Default::default()
            }))
            .await
            .expect_err("not platform admin");
        assert_eq!(denied.code(), Code::PermissionDenied);

        // The denial is in acme's audit log, with who, what and the code.
        let denials = list_events(
            &admin,
            "tenants/acme",
            r#"outcome = "DENIED" AND actor = "user:dev""#,
        )
        .await;
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert_eq!(denials[0].permission, "iam.roleBindings.create");
        assert_eq!(denials[0].grpc_code, Code::PermissionDenied as i32);
        assert!(!denials[0].request_id.is_empty());
        // The binding change is recorded with its field names, never values.
        let changes = list_events(
            &admin,
            "tenants/acme",
            r#"permission = "iam.roleBindings.*" AND outcome = "ALLOWED""#,
        )
        .await;
        assert_eq!(changes.len(), 1);
        assert!(changes[0].changed_fields.contains(&"role".to_owned()));
        // A developer cannot read the audit log.
        let denied = dev
            .audit()
            .list_audit_events(dev.req(audit::ListAuditEventsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            }))
            .await
            .expect_err("no audit for developers");
        assert_eq!(denied.code(), Code::PermissionDenied);

        // Both chains verify; a direct edit of one row is found, at that row.
        let report = verify(&admin, "tenants/acme").await;
        assert!(report.ok, "{report:?}");
        assert!(report.verified_count >= 2);
        assert!(verify(&admin, "").await.ok);
        sqlx::query(
            "UPDATE audit_events SET actor = 'user:mallory' WHERE chain = 'acme' AND seq = 1",
        )
        .execute(server.store.pool())
        .await
        .expect("tamper");
        let report = verify(&admin, "tenants/acme").await;
        assert!(!report.ok);
        let broken = report.broken_link.expect("broken link");
        assert_eq!(broken.sequence, 1);
        assert_eq!(broken.reason, audit::BrokenLinkReason::HashMismatch as i32);
        server.stop().await;
    }
);

storage_test!(
    deleting_or_reordering_audit_rows_is_found,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;
        create_tenant(&admin, "acme").await;
        for i in 0..4 {
            create_group(&admin, "acme", &format!("g{i}"))
                .await
                .expect("group");
        }
        assert!(verify(&admin, "tenants/acme").await.ok);

        // Deleting the newest record: the head kept apart says the chain is shorter than it was.
        sqlx::query("DELETE FROM audit_events WHERE chain = 'acme' AND seq = 4")
            .execute(server.store.pool())
            .await
            .expect("delete");
        let report = verify(&admin, "tenants/acme").await;
        assert_eq!(
            report.broken_link.expect("broken").reason,
            audit::BrokenLinkReason::HeadMismatch as i32
        );

        // Deleting one in the middle: a gap.
        sqlx::query("DELETE FROM audit_events WHERE chain = 'acme' AND seq = 2")
            .execute(server.store.pool())
            .await
            .expect("delete");
        let report = verify(&admin, "tenants/acme").await;
        let broken = report.broken_link.expect("broken");
        assert_eq!(broken.reason, audit::BrokenLinkReason::SequenceGap as i32);
        assert_eq!(broken.expected_sequence, 2);

        // Swapping two records' places (renumbering them) breaks the links.
        let db2 = TestDb::new(backend).await;
        let server2 = TestServer::start(&db2).await;
        let admin2 = server2.admin().await;
        create_tenant(&admin2, "acme").await;
        create_group(&admin2, "acme", "a").await.expect("a");
        create_group(&admin2, "acme", "b").await.expect("b");
        let pool = server2.store.pool();
        sqlx::query("UPDATE audit_events SET seq = 100 WHERE chain = 'acme' AND seq = 1")
            .execute(pool)
            .await
            .expect("swap");
        sqlx::query("UPDATE audit_events SET seq = 1 WHERE chain = 'acme' AND seq = 2")
            .execute(pool)
            .await
            .expect("swap");
        sqlx::query("UPDATE audit_events SET seq = 2 WHERE chain = 'acme' AND seq = 100")
            .execute(pool)
            .await
            .expect("swap");
        assert!(!verify(&admin2, "tenants/acme").await.ok);
        server2.stop().await;
        server.stop().await;
    }
);

storage_test!(
    concurrent_writers_never_fork_a_chain,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;
        create_tenant(&admin, "acme").await;
        let mut tasks = Vec::new();
        for i in 0..30 {
            let client = server.admin().await;
            tasks.push(tokio::spawn(async move {
                create_group(&client, "acme", &format!("g{i}")).await
            }));
        }
        for task in tasks {
            task.await.expect("join").expect("create group");
        }
        let report = verify(&admin, "tenants/acme").await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.verified_count, 30);
        assert_eq!(report.head_sequence, 30);
        server.stop().await;
    }
);

storage_test!(
    a_mutation_whose_audit_record_cannot_be_written_does_not_happen,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;
        create_tenant(&admin, "acme").await;
        let trigger = match backend {
            Backend::Sqlite => vec![
                "CREATE TRIGGER audit_fail BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit storage full'); END",
            ],
            Backend::Postgres => vec![
                "CREATE FUNCTION audit_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit storage full'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER audit_fail BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_fail()",
            ],
        };
        for statement in trigger {
            sqlx::query(statement)
                .execute(server.store.pool())
                .await
                .expect("install failing trigger");
        }
        let err = create_group(&admin, "acme", "ghost")
            .await
            .expect_err("must fail closed");
        assert_eq!(err.code(), Code::Internal, "{err:?}");
        assert!(
            !err.message().contains("audit storage full"),
            "internal detail leaked: {}",
            err.message()
        );
        let groups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM iam_groups WHERE id = 'ghost'")
            .fetch_one(server.store.pool())
            .await
            .expect("count");
        assert_eq!(groups, 0, "the change happened without its audit record");
        server.stop().await;
    }
);

storage_test!(
    revoking_a_binding_or_a_token_takes_effect_on_the_next_request,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;
        create_tenant(&admin, "acme").await;

        // A binding: allowed (and cached), then revoked, then denied.
        let binding = bind(&admin, "acme", "viewer", "user:vic", "viewer", "")
            .await
            .expect("bind");
        let vic = server.user("vic").await;
        for _ in 0..3 {
            list_groups(&vic, "acme")
                .await
                .expect("allowed while bound");
        }
        admin
            .iam()
            .delete_role_binding(admin.req(iam::DeleteRoleBindingRequest {
                name: binding.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("unbind");
        assert_eq!(
            list_groups(&vic, "acme").await.expect_err("revoked").code(),
            Code::PermissionDenied
        );

        // Group membership: a binding on the group applies to its members.
        let group = create_group(&admin, "acme", "ops").await.expect("group");
        bind(
            &admin,
            "acme",
            "ops-viewers",
            &group.principal,
            "viewer",
            "",
        )
        .await
        .expect("bind group");
        admin
            .iam()
            .add_group_member(admin.req(iam::AddGroupMemberRequest {
                group: group.name.clone(),
                member: "user:vic".into(),
                ..Default::default()
            }))
            .await
            .expect("add member");
        list_groups(&vic, "acme")
            .await
            .expect("allowed through the group");
        let listed = list_groups(&admin, "acme").await.expect("list groups");
        assert_eq!(listed.groups[0].member_count, 1, "{listed:?}");
        admin
            .iam()
            .remove_group_member(admin.req(iam::RemoveGroupMemberRequest {
                group: group.name.clone(),
                member: "user:vic".into(),
                ..Default::default()
            }))
            .await
            .expect("remove member");
        assert_eq!(
            list_groups(&vic, "acme")
                .await
                .expect_err("left the group")
                .code(),
            Code::PermissionDenied
        );

        // A service-account token: works, is revoked, is refused (even though it was cached).
        let sa = admin
            .iam()
            .create_service_account(admin.req(iam::CreateServiceAccountRequest {
                parent: "tenants/acme".into(),
                service_account_id: "ci".into(),
                ..Default::default()
            }))
            .await
            .expect("sa")
            .into_inner();
        bind(&admin, "acme", "ci-dev", &sa.principal, "developer", "")
            .await
            .expect("bind sa");
        let issued = admin
            .iam()
            .issue_service_account_token(admin.req(iam::IssueServiceAccountTokenRequest {
                parent: sa.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("issue")
            .into_inner();
        let bot = server.client().await.with_token(&issued.access_token);
        list_groups(&bot, "acme").await.expect("the bot may list");
        let account = |name: String| {
            let admin = &admin;
            async move {
                admin
                    .iam()
                    .get_service_account(admin.req(iam::GetServiceAccountRequest { name }))
                    .await
                    .expect("get service account")
                    .into_inner()
            }
        };
        assert_eq!(account(sa.name.clone()).await.active_token_count, 1);
        let token = issued.service_account_token.expect("metadata");
        let listed = admin
            .iam()
            .list_service_account_tokens(admin.req(iam::ListServiceAccountTokensRequest {
                parent: sa.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("list tokens")
            .into_inner();
        assert_eq!(listed.service_account_tokens.len(), 1);
        admin
            .iam()
            .revoke_service_account_token(admin.req(iam::RevokeServiceAccountTokenRequest {
                name: token.name.clone(),
                reason: "rotated".into(),
            }))
            .await
            .expect("revoke");
        let refused = list_groups(&bot, "acme").await.expect_err("revoked token");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(
            refused.message().contains("revoked"),
            "{}",
            refused.message()
        );
        assert_eq!(account(sa.name.clone()).await.active_token_count, 0);
        // Issuing and revoking tokens is audited, without the token.
        let events = list_events(
            &admin,
            "tenants/acme",
            r#"permission = "iam.serviceAccountTokens.*""#,
        )
        .await;
        assert_eq!(events.len(), 2, "{events:?}");
        for event in &events {
            assert!(!format!("{event:?}").contains(&issued.access_token));
        }
        server.stop().await;
    }
);

#[tokio::test]
async fn calls_without_valid_credentials_are_unauthenticated() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let anonymous = server.client().await;
    let err = anonymous
        .iam()
        .get_caller(anonymous.req(iam::GetCallerRequest {}))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    for bad in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        &"x".repeat(10_000),
    ] {
        let client = server.client().await.with_token(bad);
        let err = client
            .iam()
            .get_caller(client.req(iam::GetCallerRequest {}))
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}");
        assert!(!err.message().contains(bad), "the token was echoed");
    }
    // Health and reflection stay open for operators and load balancers.
    anonymous.wait_serving().await;
    server.stop().await;
}

#[tokio::test]
async fn retried_creates_with_one_request_id_create_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let admin = server.admin().await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let make = || iam::CreateTenantRequest {
        tenant_id: "acme".into(),
        request_id: request_id.clone(),
        ..Default::default()
    };
    let first = admin
        .iam()
        .create_tenant(admin.req(make()))
        .await
        .expect("first")
        .into_inner();
    let second = admin
        .iam()
        .create_tenant(admin.req(make()))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.uid, second.uid);
    let again = admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect_err("exists");
    assert_eq!(again.code(), Code::AlreadyExists);
    let bad = admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "Not A Label".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn resource_scoped_bindings_cover_the_resource_and_below_only() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    bind(
        &admin,
        "acme",
        "prod-deployer",
        "user:dee",
        "deployer",
        "tenants/acme/environments/prod",
    )
    .await
    .expect("bind");
    let dee = server.user("dee").await;
    let perms = [
        "deployments.deployments.create",
        "deployments.deployments.createProduction",
    ];
    assert_eq!(
        test_permissions(&dee, "tenants/acme/environments/prod", &perms).await,
        perms
    );
    assert_eq!(
        test_permissions(&dee, "tenants/acme/environments/prod/x", &perms).await,
        perms
    );
    assert!(
        test_permissions(&dee, "tenants/acme/environments/prod2", &perms)
            .await
            .is_empty()
    );
    assert!(
        test_permissions(&dee, "tenants/acme/environments/staging", &perms)
            .await
            .is_empty()
    );
    assert!(
        test_permissions(&dee, "tenants/acme", &perms)
            .await
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn audit_watch_streams_new_events() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    let mut stream = admin
        .audit()
        .watch_audit_events(admin.req(audit::WatchAuditEventsRequest {
            parent: "tenants/acme".into(),
            after_sequence: Some(0),
            ..Default::default()
        }))
        .await
        .expect("watch")
        .into_inner();
    create_group(&admin, "acme", "g1").await.expect("group");
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("some");
    match event.kind {
        Some(audit::watch_audit_events_response::Kind::AuditEvent(e)) => {
            assert_eq!(e.permission, "iam.groups.create")
        }
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn updates_are_conditional_on_the_etag() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&db).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    let group = create_group(&admin, "acme", "ops").await.expect("group");
    let update = |etag: &str| iam::UpdateGroupRequest {
        group: Some(iam::Group {
            name: group.name.clone(),
            display_name: "Operations".into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
        ..Default::default()
    };
    let stale = admin
        .iam()
        .update_group(admin.req(update("stale")))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    let updated = admin
        .iam()
        .update_group(admin.req(update(&group.etag)))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.display_name, "Operations");
    assert_ne!(updated.etag, group.etag);
    let bad_mask = admin
        .iam()
        .update_group(admin.req(iam::UpdateGroupRequest {
            group: Some(iam::Group {
                name: group.name.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["uid".into()],
            }),
            ..Default::default()
        }))
        .await
        .expect_err("uid is output only");
    assert_eq!(bad_mask.code(), Code::InvalidArgument);
    // Both the failed (stale) and the successful update are in the audit log.
    let events = list_events(
        &admin,
        "tenants/acme",
        r#"permission = "iam.groups.update""#,
    )
    .await;
    let outcomes: Vec<i32> = events.iter().map(|e| e.outcome).collect();
    assert!(
        outcomes.contains(&(audit::Outcome::Allowed as i32))
            && outcomes.contains(&(audit::Outcome::Failed as i32)),
        "{events:?}"
    );
    server.stop().await;
}

storage_test!(
    a_change_on_one_replica_is_in_force_on_another_within_seconds,
    |backend: Backend| async move {
        let db = TestDb::new(backend).await;
        let a = TestServer::start(&db).await;
        let mut config = db.config();
        config.listen = "127.0.0.1:0".parse().expect("addr");
        let b = TestServer::start_with(config).await;
        let admin_a = a.admin().await;
        create_tenant(&admin_a, "acme").await;
        let binding = bind(&admin_a, "acme", "viewer", "user:vic", "viewer", "")
            .await
            .expect("bind on A");

        // Replica B signs with the same key (same data dir) and sees A's binding after its poll.
        let vic_b = b.user("vic").await;
        let mut allowed = false;
        for _ in 0..60 {
            if list_groups(&vic_b, "acme").await.is_ok() {
                allowed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(allowed, "B never saw the binding made on A");

        admin_a
            .iam()
            .delete_role_binding(admin_a.req(iam::DeleteRoleBindingRequest {
                name: binding.name,
                ..Default::default()
            }))
            .await
            .expect("unbind on A");
        let mut denied = false;
        for _ in 0..60 {
            if list_groups(&vic_b, "acme").await.is_err() {
                denied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(denied, "B kept allowing a binding revoked on A");
        b.stop().await;
        a.stop().await;
    }
);

#[tokio::test]
async fn an_open_audit_watch_ends_when_its_permission_is_revoked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = db.config();
    config.watch_recheck = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    let binding = bind(&admin, "acme", "auditor", "user:aud", "admin", "")
        .await
        .expect("bind");
    let auditor = server.user("aud").await;
    let mut stream = auditor
        .audit()
        .watch_audit_events(auditor.req(audit::WatchAuditEventsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await
        .expect("watch")
        .into_inner();
    admin
        .iam()
        .delete_role_binding(admin.req(iam::DeleteRoleBindingRequest {
            name: binding.name,
            ..Default::default()
        }))
        .await
        .expect("unbind");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_eq!(ended.map(|s| s.code()), Some(Code::PermissionDenied));
    server.stop().await;
}
