//! The tenant-isolation matrix, on SQLite and PostgreSQL: for every RPC of the contract (read from
//! the compiled descriptor set), a request against a resource of tenant B, sent as five
//! principals who must not reach it:
//!
//! - nobody (no token) and a revoked service-account token of B's: UNAUTHENTICATED;
//! - tenant A's admin: PERMISSION_DENIED (the three methods any caller may use — GetCaller,
//!   ListPermissions, TestPermissions — answer, but about the caller only);
//! - B's viewer, for every method the viewer role does not grant: PERMISSION_DENIED;
//! - a principal bound as admin on another resource of B only: PERMISSION_DENIED.
//!
//! Every cell writes nothing (the data tables are byte-for-byte the same afterwards), leaks
//! nothing (no response or error holds B's canary strings), and each refusal of a known
//! is in the audit trail: the use of a revoked token in the service account's tenant, calls
//! without a token in the platform chain as `anonymous` (within a per-peer budget, so a flood of
//! anonymous calls cannot grow the chain without bound). A method added to the contract without
//! a request builder below fails the test.

use std::collections::BTreeMap;

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::insights::v1 as ipb;
use platform_api::platform::secrets::v1 as spb;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};
use tonic::Code;

use crate::deployments::noop;
use crate::iam_audit::bind;
use crate::storage_test;
use crate::support::{TestClient, TestDb, TestServer, set_field_path};

/// Strings only tenant B's data holds: no cell's answer may contain them.
const CANARIES: [&str; 4] = [
    "CANARY-B-TENANT",
    "CANARY-B-ENTITY",
    "canary-b-label",
    "CANARY-B-SCORECARD",
];

/// The request fields each method gets: (field path, value). Values name tenant B's resources
/// through the placeholders `{deployment}`, `{token}` and `{kek}`, filled in from the fixture.
fn request_fields(method: &str) -> Option<Vec<(&'static str, &'static str)>> {
    let b = "tenants/b";
    let fields: Vec<(&str, &str)> = match method {
        // Audit.
        "ListAuditEvents" | "WatchAuditEvents" => vec![("parent", b)],
        "GetAuditEvent" => vec![("name", "tenants/b/auditEvents/1")],
        "VerifyAuditChain" => vec![("tenant", b)],
        // Catalog.
        "CreateEntity" => vec![
            ("parent", b),
            ("entity.api_version", "backstage.io/v1alpha1"),
            ("entity.kind", "Component"),
            ("entity.metadata.name", "intruder"),
            ("entity.component_spec.type", "service"),
            ("entity.component_spec.lifecycle", "production"),
            ("entity.component_spec.owner", "team-b"),
        ],
        "GetEntity" | "DeleteEntity" => {
            vec![("name", "tenants/b/entities/component/default/b-svc")]
        }
        "UpdateEntity" => vec![
            ("entity.name", "tenants/b/entities/component/default/b-svc"),
            ("entity.metadata.title", "defaced"),
        ],
        "BatchGetEntities" => vec![
            ("parent", b),
            ("names", "tenants/b/entities/component/default/b-svc"),
        ],
        "ListEntities" | "WatchEntities" => vec![("parent", b)],
        "GetEntityFacets" => vec![("parent", b), ("facets", "spec.type")],
        "SearchEntities" => vec![("parent", b), ("query", "svc")],
        "ImportEntities" => vec![
            ("parent", b),
            ("sources.path", "x.yaml"),
            (
                "sources.content",
                "kind: Component\nmetadata:\n  name: intruder\n",
            ),
        ],
        "ListEntityRelations" => vec![("parent", "tenants/b/entities/component/default/b-svc")],
        "TraverseEntityGraph" => vec![
            ("parent", b),
            ("roots", "tenants/b/entities/component/default/b-svc"),
            ("relation_types", "RELATION_TYPE_OWNED_BY"),
            ("direction", "TRAVERSAL_DIRECTION_BOTH"),
        ],
        "GetCatalogSettings" => vec![("name", "tenants/b/catalogSettings")],
        "UpdateCatalogSettings" => vec![
            ("catalog_settings.name", "tenants/b/catalogSettings"),
            ("catalog_settings.owner_role", "tenants/b/roles/admin"),
        ],
        // Deployments.
        "CreateDeployment" => vec![
            ("parent", b),
            ("deployment.component", "b-svc"),
            ("deployment.version", "evil"),
            ("deployment.environment", "tenants/b/environments/b-prod"),
        ],
        "GetDeployment" | "CancelDeployment" | "RollbackDeployment" | "PromoteDeployment"
        | "WatchDeployment" | "GetDeploymentLog" => vec![("name", "{deployment}")],
        "ListDeployments" => vec![("parent", b)],
        // Environments.
        "CreateEnvironment" => vec![("parent", b), ("environment_id", "intruder")],
        "GetEnvironment" | "DeleteEnvironment" | "UnlockEnvironment" | "RenewEnvironment"
        | "WatchEnvironment" | "GetEnvironmentLog" => {
            vec![("name", "tenants/b/environments/b-prod")]
        }
        "LockEnvironment" => vec![
            ("name", "tenants/b/environments/b-prod"),
            ("reason", "frozen by a stranger"),
        ],
        "ListEnvironments" => vec![("parent", b)],
        "UpdateEnvironment" => vec![
            ("environment.name", "tenants/b/environments/b-prod"),
            ("environment.display_name", "defaced"),
        ],
        // IAM.
        "CreateTenant" => vec![("tenant_id", "intruder")],
        "GetTenant" | "DeleteTenant" => vec![("name", b)],
        "ListTenants" => vec![],
        "UpdateTenant" => vec![("tenant.name", b), ("tenant.display_name", "defaced")],
        "CreateRole" => vec![
            ("parent", b),
            ("role_id", "intruder"),
            ("role.permissions", "secrets.versions.access"),
        ],
        "GetRole" | "DeleteRole" => vec![("name", "tenants/b/roles/b-role")],
        "ListRoles" => vec![("parent", b)],
        "UpdateRole" => vec![
            ("role.name", "tenants/b/roles/b-role"),
            ("role.permissions", "secrets.versions.access"),
        ],
        "CreateRoleBinding" => vec![
            ("parent", b),
            ("role_binding_id", "intruder"),
            ("role_binding.principal", "user:mallory"),
            ("role_binding.role", "tenants/b/roles/admin"),
        ],
        "GetRoleBinding" | "DeleteRoleBinding" => {
            vec![("name", "tenants/b/roleBindings/b-binding")]
        }
        "ListRoleBindings" => vec![("parent", b)],
        "CreateGroup" => vec![("parent", b), ("group_id", "intruders")],
        "GetGroup" | "DeleteGroup" => vec![("name", "tenants/b/groups/b-group")],
        "ListGroups" => vec![("parent", b)],
        "UpdateGroup" => vec![
            ("group.name", "tenants/b/groups/b-group"),
            ("group.display_name", "defaced"),
        ],
        "AddGroupMember" | "RemoveGroupMember" => vec![
            ("group", "tenants/b/groups/b-group"),
            ("member", "user:mallory"),
        ],
        "ListGroupMembers" => vec![("group", "tenants/b/groups/b-group")],
        "CreateServiceAccount" => vec![("parent", b), ("service_account_id", "intruder")],
        "GetServiceAccount" | "DeleteServiceAccount" => {
            vec![("name", "tenants/b/serviceAccounts/b-bot")]
        }
        "ListServiceAccounts" => vec![("parent", b)],
        "UpdateServiceAccount" => vec![
            ("service_account.name", "tenants/b/serviceAccounts/b-bot"),
            ("service_account.display_name", "defaced"),
        ],
        "IssueServiceAccountToken" | "ListServiceAccountTokens" => {
            vec![("parent", "tenants/b/serviceAccounts/b-bot")]
        }
        "RevokeServiceAccountToken" => vec![("name", "{token}")],
        "RevokeToken" => vec![("jti", "{jti}")],
        "TestPermissions" => vec![
            ("resource", "tenants/b/secrets/b-secret"),
            ("permissions", "secrets.versions.access"),
        ],
        "GetCaller" | "ListPermissions" => vec![],
        // Insights.
        "GetDoraMetrics" | "ListServiceStatuses" | "ListScorecards" => vec![("parent", b)],
        "GetServiceStatus" => vec![("parent", b), ("component", "b-svc")],
        "GetDependencyGraph" => vec![("parent", b), ("roots", "b-svc")],
        "CreateScorecard" => vec![
            ("parent", b),
            ("scorecard_id", "intruder"),
            ("scorecard.levels.id", "bronze"),
        ],
        "GetScorecard" | "DeleteScorecard" => vec![("name", "tenants/b/scorecards/b-card")],
        "UpdateScorecard" => vec![
            ("scorecard.name", "tenants/b/scorecards/b-card"),
            ("scorecard.display_name", "defaced"),
        ],
        "EvaluateEntity" => vec![("parent", b), ("entity", "b-svc")],
        "ListScorecardEvaluations" => vec![("parent", "tenants/b/scorecards/b-card")],
        // Secrets.
        "CreateSecret" => vec![("parent", b), ("secret_id", "intruder")],
        "GetSecret" | "DeleteSecret" => vec![("name", "tenants/b/secrets/b-secret")],
        "ListSecrets" => vec![("parent", b)],
        "UpdateSecret" => vec![
            ("secret.name", "tenants/b/secrets/b-secret"),
            ("secret.description", "defaced"),
        ],
        "AddSecretVersion" => vec![
            ("parent", "tenants/b/secrets/b-secret"),
            ("payload.data", "stolen"),
        ],
        "GetSecretVersion"
        | "AccessSecretVersion"
        | "DisableSecretVersion"
        | "EnableSecretVersion"
        | "DestroySecretVersion" => {
            vec![("name", "tenants/b/secrets/b-secret/versions/1")]
        }
        "ListSecretVersions" => vec![("parent", "tenants/b/secrets/b-secret")],
        "ListKeyEncryptionKeys" => vec![],
        "GetKeyEncryptionKey" => vec![("name", "{kek}")],
        "RewrapDataKeys" => vec![],
        _ => return None,
    };
    Some(fields)
}

/// Sets the dotted field `path` of `message` to `value`, read as the leaf field's type.
fn set_path(message: &mut DynamicMessage, path: &str, value: &str) {
    let mut fields = Vec::new();
    let mut descriptor = message.descriptor();
    for name in path.split('.') {
        let field = descriptor
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{} has no field {name}", descriptor.full_name()));
        if let Some(inner) = field.kind().as_message() {
            descriptor = inner.clone();
        }
        fields.push(field);
    }
    let leaf = fields.last().expect("a field").kind();
    let value = match leaf {
        prost_reflect::Kind::Bytes => Value::Bytes(value.as_bytes().to_vec().into()),
        prost_reflect::Kind::Enum(e) => Value::EnumNumber(
            e.get_value_by_name(value)
                .unwrap_or_else(|| panic!("{path}: no {value} in {}", e.full_name()))
                .number(),
        ),
        prost_reflect::Kind::Int32 => Value::I32(value.parse().expect("an int32")),
        prost_reflect::Kind::Bool => Value::Bool(value == "true"),
        _ => Value::String(value.to_owned()),
    };
    set_field_path(message, &fields, value);
}

fn secrets(
    client: &TestClient,
) -> spb::secret_service_client::SecretServiceClient<tonic::transport::Channel> {
    spb::secret_service_client::SecretServiceClient::new(client.channel.clone())
}

fn insights(
    client: &TestClient,
) -> ipb::insights_service_client::InsightsServiceClient<tonic::transport::Channel> {
    ipb::insights_service_client::InsightsServiceClient::new(client.channel.clone())
}

/// Tenant B with one of everything, tenant A with its admin, and the principals of the matrix.
struct Fixture {
    placeholders: BTreeMap<&'static str, String>,
    a_admin: TestClient,
    b_viewer: TestClient,
    b_scoped: TestClient,
    revoked: TestClient,
    nobody: TestClient,
}

async fn fixture(server: &TestServer, admin: &TestClient) -> Fixture {
    let create_tenant = |id: &'static str, display: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .iam()
                .create_tenant(admin.req(iam::CreateTenantRequest {
                    tenant_id: id.into(),
                    tenant: Some(iam::Tenant {
                        display_name: display.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .expect("tenant");
        }
    };
    create_tenant("a", "Tenant A").await;
    create_tenant("b", "CANARY-B-TENANT").await;
    // Tenant B's data, written by the bootstrap admin in tenant "b".
    let b_admin = admin.clone();
    let yaml = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: b-svc\n  title: CANARY-B-ENTITY\n  labels:\n    tier: canary-b-label\nspec:\n  type: service\n  lifecycle: production\n  owner: team-b\n";
    let imported = import_into(&b_admin, "b", yaml).await;
    assert_eq!(imported.failed_count, 0, "{imported:?}");
    environment_in(&b_admin, "b", "b-prod", epb::EnvironmentType::Production).await;
    environment_in(
        &b_admin,
        "b",
        "b-sandbox",
        epb::EnvironmentType::Development,
    )
    .await;
    let deployment = deploy_in(&b_admin, "b").await;
    secrets(&b_admin)
        .create_secret(b_admin.req(spb::CreateSecretRequest {
            parent: "tenants/b".into(),
            secret_id: "b-secret".into(),
            secret: Some(spb::Secret {
                labels: [("tier".to_owned(), "canary-b-label".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("secret");
    secrets(&b_admin)
        .add_secret_version(b_admin.req(spb::AddSecretVersionRequest {
            parent: "tenants/b/secrets/b-secret".into(),
            payload: Some(spb::SecretPayload {
                data: b"CANARY-B-SECRET-VALUE".to_vec(),
                data_crc32c: None,
            }),
            ..Default::default()
        }))
        .await
        .expect("version");
    let mut iam_client = b_admin.iam();
    iam_client
        .create_role(b_admin.req(iam::CreateRoleRequest {
            parent: "tenants/b".into(),
            role_id: "b-role".into(),
            role: Some(iam::Role {
                permissions: vec!["catalog.entities.get".into()],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("role");
    bind(&b_admin, "b", "b-binding", "user:bob", "b-role", "")
        .await
        .expect("binding");
    iam_client
        .create_group(b_admin.req(iam::CreateGroupRequest {
            parent: "tenants/b".into(),
            group_id: "b-group".into(),
            ..Default::default()
        }))
        .await
        .expect("group");
    for id in ["b-bot", "b-revoked"] {
        iam_client
            .create_service_account(b_admin.req(iam::CreateServiceAccountRequest {
                parent: "tenants/b".into(),
                service_account_id: id.into(),
                ..Default::default()
            }))
            .await
            .expect("service account");
    }
    let bot_token = iam_client
        .issue_service_account_token(b_admin.req(iam::IssueServiceAccountTokenRequest {
            parent: "tenants/b/serviceAccounts/b-bot".into(),
            ..Default::default()
        }))
        .await
        .expect("token")
        .into_inner();
    let revoked_token = iam_client
        .issue_service_account_token(b_admin.req(iam::IssueServiceAccountTokenRequest {
            parent: "tenants/b/serviceAccounts/b-revoked".into(),
            ..Default::default()
        }))
        .await
        .expect("token")
        .into_inner();
    bind(
        &b_admin,
        "b",
        "revoked-admin",
        "serviceAccount:tenants/b/serviceAccounts/b-revoked",
        "admin",
        "",
    )
    .await
    .expect("binding");
    iam_client
        .revoke_service_account_token(
            b_admin.req(iam::RevokeServiceAccountTokenRequest {
                name: revoked_token
                    .service_account_token
                    .as_ref()
                    .expect("token")
                    .name
                    .clone(),
                ..Default::default()
            }),
        )
        .await
        .expect("revoke");
    insights(&b_admin)
        .create_scorecard(b_admin.req(ipb::CreateScorecardRequest {
            parent: "tenants/b".into(),
            scorecard_id: "b-card".into(),
            scorecard: Some(ipb::Scorecard {
                display_name: "CANARY-B-SCORECARD".into(),
                levels: vec![ipb::ScorecardLevel {
                    id: "bronze".into(),
                    ..Default::default()
                }],
                rules: vec![ipb::ScorecardRule {
                    id: "has-owner".into(),
                    level: "bronze".into(),
                    check: Some(ipb::scorecard_rule::Check::HasOwner(
                        ipb::HasOwnerCheck::default(),
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("scorecard");
    let kek = secrets(&b_admin)
        .list_key_encryption_keys(b_admin.req(spb::ListKeyEncryptionKeysRequest::default()))
        .await
        .expect("keys")
        .into_inner()
        .key_encryption_keys
        .first()
        .expect("a key")
        .name
        .clone();

    // The principals.
    bind(admin, "a", "alice", "user:alice", "admin", "")
        .await
        .expect("A's admin");
    bind(admin, "b", "vic", "user:vic", "viewer", "")
        .await
        .expect("B's viewer");
    bind(
        admin,
        "b",
        "rita",
        "user:rita",
        "admin",
        "tenants/b/environments/b-sandbox",
    )
    .await
    .expect("scoped admin");
    let bot = bot_token.service_account_token.expect("token");
    Fixture {
        placeholders: [
            ("{deployment}", deployment),
            ("{token}", bot.name),
            ("{jti}", bot.jti),
            ("{kek}", kek),
        ]
        .into(),
        a_admin: server.user("alice").await,
        b_viewer: server.user("vic").await,
        b_scoped: server.user("rita").await,
        revoked: server
            .client()
            .await
            .with_token(&revoked_token.access_token),
        nobody: server.client().await,
    }
}

async fn import_into(client: &TestClient, tenant: &str, yaml: &str) -> cat::ImportEntitiesResponse {
    crate::catalog::catalog(client)
        .import_entities(client.req(cat::ImportEntitiesRequest {
            parent: format!("tenants/{tenant}"),
            sources: vec![cat::ImportSource {
                path: "catalog-info.yaml".into(),
                content: yaml.into(),
            }],
            ..Default::default()
        }))
        .await
        .expect("import")
        .into_inner()
}

async fn environment_in(client: &TestClient, tenant: &str, id: &str, kind: epb::EnvironmentType) {
    crate::deployments::environments(client)
        .create_environment(client.req(epb::CreateEnvironmentRequest {
            parent: format!("tenants/{tenant}"),
            environment_id: id.into(),
            environment: Some(epb::Environment {
                r#type: kind as i32,
                driver: Some(noop()),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("environment");
}

async fn deploy_in(client: &TestClient, tenant: &str) -> String {
    let d = crate::deployments::deployments(client)
        .create_deployment(client.req(dpb::CreateDeploymentRequest {
            parent: format!("tenants/{tenant}"),
            deployment: Some(dpb::Deployment {
                component: "b-svc".into(),
                version: "v1".into(),
                environment: format!("tenants/{tenant}/environments/b-prod"),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("deployment")
        .into_inner();
    crate::deployments::wait_until(client, &d.name, crate::deployments::terminal).await;
    d.name
}

/// Every data table's rows as text, in a stable order: what "nothing was written" compares.
async fn data_snapshot(pool: &sqlx::AnyPool) -> BTreeMap<&'static str, Vec<String>> {
    let tables: [(&str, &str); 18] = [
        ("tenants", "id || ':' || etag"),
        ("iam_roles", "tenant || ':' || id || ':' || etag"),
        ("iam_role_bindings", "tenant || ':' || id || ':' || etag"),
        ("iam_groups", "tenant || ':' || id || ':' || etag"),
        (
            "iam_group_members",
            "tenant || ':' || group_id || ':' || member",
        ),
        ("iam_service_accounts", "tenant || ':' || id || ':' || etag"),
        (
            "iam_tokens",
            "jti || ':' || COALESCE(CAST(revoke_time_us AS TEXT), '-')",
        ),
        ("catalog_entities", "tenant || ':' || ref || ':' || etag"),
        (
            "catalog_settings",
            "tenant || ':' || CAST(update_time_us AS TEXT)",
        ),
        ("environments", "tenant || ':' || id || ':' || etag"),
        ("deployments", "tenant || ':' || id || ':' || etag"),
        ("secrets", "tenant || ':' || id || ':' || etag"),
        ("secret_versions", "tenant || ':' || secret || ':' || etag"),
        ("scorecards", "tenant || ':' || id || ':' || etag"),
        (
            "secret_labels",
            "tenant || ':' || secret || ':' || key || '=' || value",
        ),
        (
            "catalog_labels",
            "tenant || ':' || ref || ':' || key || '=' || value",
        ),
        (
            "environment_log",
            "tenant || ':' || environment || ':' || CAST(seq AS TEXT)",
        ),
        (
            "deployment_log",
            "tenant || ':' || deployment || ':' || CAST(seq AS TEXT)",
        ),
    ];
    let mut out = BTreeMap::new();
    for (table, row) in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT {row} AS r FROM {table} ORDER BY 1"))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("snapshot of {table}: {e}"));
        out.insert(table, rows);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Revoked,
    AAdmin,
    BViewer,
    BScoped,
}

/// The methods any authenticated caller may use; they answer about the caller only.
const ABOUT_THE_CALLER: [&str; 3] = ["GetCaller", "ListPermissions", "TestPermissions"];

storage_test!(
    no_rpc_reaches_another_tenant_or_past_a_role,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let server = TestServer::start(&db).await;
        let admin = server.admin().await;
        let fixture = fixture(&server, &admin).await;
        let pool = server.store.pool().clone();
        let pool_for_audit = pool.clone();
        let before = data_snapshot(&pool).await;
        let descriptors =
            DescriptorPool::decode(platform_api::FILE_DESCRIPTOR_SET).expect("descriptors");
        let viewer = platform_policy::roles::builtin_role("viewer").expect("viewer role");

        let mut missing = Vec::new();
        let mut cells = 0;
        let mut controls = 0;
        let mut invalid: Vec<String> = Vec::new();
        let mut expected_denials: BTreeMap<&str, i64> = BTreeMap::new();
        for service in descriptors.services() {
            if !service.full_name().starts_with("platform.") {
                continue;
            }
            for method in service.methods() {
                let Some(fields) = request_fields(method.name()) else {
                    missing.push(method.full_name().to_owned());
                    continue;
                };
                let mut message = DynamicMessage::new(method.input());
                for (path, value) in fields {
                    let value = fixture
                        .placeholders
                        .get(value)
                        .map(String::as_str)
                        .unwrap_or(value);
                    set_path(&mut message, path, value);
                }
                let bytes = prost::Message::encode_to_vec(&message);
                let path: &'static str = Box::leak(
                    format!("/{}/{}", service.full_name(), method.name()).into_boxed_str(),
                );
                let permission = platform_policy::permissions::rpc_permission(path)
                    .map(|p| p.permission)
                    .unwrap_or_default();
                for who in [
                    Who::Nobody,
                    Who::Revoked,
                    Who::AAdmin,
                    Who::BViewer,
                    Who::BScoped,
                ] {
                    let (client, expected, actor) = match who {
                        Who::Nobody => (
                            &fixture.nobody,
                            Code::Unauthenticated,
                            Some(platformd::authz::ANONYMOUS_PRINCIPAL),
                        ),
                        Who::Revoked => (
                            &fixture.revoked,
                            Code::Unauthenticated,
                            Some("serviceAccount:tenants/b/serviceAccounts/b-revoked"),
                        ),
                        Who::AAdmin => {
                            (&fixture.a_admin, Code::PermissionDenied, Some("user:alice"))
                        }
                        Who::BViewer => {
                            if permission.is_empty() {
                                continue;
                            }
                            if viewer.includes(permission) {
                                // The control: B's viewer may, so the very request strangers are
                                // refused is valid and names a real resource of B.
                                if !method.is_server_streaming() {
                                    let answer =
                                        fixture.b_viewer.call_raw(path, bytes.clone(), &[]).await;
                                    if let Err(status) = answer {
                                        invalid.push(format!(
                                            "{path}: {:?} {}",
                                            status.code(),
                                            status.message()
                                        ));
                                    }
                                    controls += 1;
                                }
                                continue;
                            }
                            (&fixture.b_viewer, Code::PermissionDenied, Some("user:vic"))
                        }
                        Who::BScoped => {
                            (&fixture.b_scoped, Code::PermissionDenied, Some("user:rita"))
                        }
                    };
                    cells += 1;
                    let answer = client.call_raw(path, bytes.clone(), &[]).await;
                    let text = match &answer {
                        Ok(response) => String::from_utf8_lossy(response.get_ref()).into_owned(),
                        Err(status) => format!("{} {:?}", status.message(), status.details()),
                    };
                    let about_the_caller = ABOUT_THE_CALLER.contains(&method.name());
                    // A member of B (bound there, if only on one resource) may learn about B in
                    // answers about itself (GetCaller lists its tenants); nobody else may.
                    let member_of_b = who == Who::BScoped;
                    for canary in CANARIES {
                        assert!(
                            (about_the_caller && member_of_b) || !text.contains(canary),
                            "{path} as {who:?} leaked {canary}: {text}"
                        );
                    }
                    match (&answer, about_the_caller, actor) {
                        // Any caller may ask about itself: the answer holds nothing of B.
                        (Ok(response), true, Some(_)) => {
                            if method.name() == "TestPermissions" {
                                let granted =
                                    iam::TestPermissionsResponse::decode_from(response.get_ref());
                                assert!(
                                    granted.permissions.is_empty(),
                                    "{who:?} holds nothing on B's secret: {granted:?}"
                                );
                            }
                        }
                        (Err(status), _, _) if status.code() == expected => {
                            if let Some(actor) = actor {
                                *expected_denials.entry(actor).or_default() += 1;
                            }
                        }
                        _ => panic!(
                            "{path} as {who:?}: expected {expected:?}, got {:?}",
                            answer
                                .as_ref()
                                .map(|_| "OK")
                                .map_err(|s| (s.code(), s.message().to_owned()))
                        ),
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "methods of the contract without a request builder in this test: {missing:?}"
        );
        assert!(cells > 300, "the matrix has {cells} cells");

        // Nothing was written by any cell.
        assert_eq!(
            data_snapshot(&pool).await,
            before,
            "a denied call changed data"
        );
        // Every denial is in an audit chain (B's, or the platform's for platform-scope methods
        // and for calls without a token).
        for (actor, expected) in &expected_denials {
            let recorded: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_events WHERE actor = $1 AND outcome = $2",
            )
            .bind(*actor)
            .bind(platform_api::platform::audit::v1::Outcome::Denied as i32)
            .fetch_one(&pool_for_audit)
            .await
            .expect("audit count");
            assert_eq!(recorded, *expected, "denials of {actor} in the audit trail");
        }
        assert!(
            invalid.is_empty(),
            "requests B's viewer is not answered: {invalid:#?}"
        );
        assert!(
            controls > 30,
            "{controls} requests checked valid by B's viewer"
        );
        println!(
            "isolation matrix: {cells} cells, {controls} requests answered for B's viewer, denials audited: {expected_denials:?}"
        );
        server.stop().await;
    }
);

/// Decoding a known response type from raw bytes.
trait DecodeFrom: Sized {
    fn decode_from(bytes: &[u8]) -> Self;
}

impl<T: prost::Message + Default> DecodeFrom for T {
    fn decode_from(bytes: &[u8]) -> Self {
        T::decode(bytes).expect("a response of the expected type")
    }
}
