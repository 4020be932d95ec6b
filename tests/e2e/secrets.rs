//! Secrets end to end, on SQLite and PostgreSQL: values of every size and kind round-trip; a
//! canary value never reaches the database, the server's log, the audit trail or any response
//! but AccessSecretVersion; sealed bytes moved between rows do not decrypt; disabled and
//! destroyed versions; key rotation through the RPC (no restart) and through `platformd keys
//! rotate` (restart without the old key); permissions and tenants; and injection into
//! deployments, rollbacks included.

use std::path::Path;
use std::time::Duration;

use platform_api::platform::audit::v1 as audit;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::secrets::v1 as spb;
use prost::Message;
use tonic::Code;

use crate::catalog::setup;
use crate::deployments::{
    components, deploy, deployments, environment, environments, log_text, script, terminal,
    wait_until,
};
use crate::storage_test;
use crate::support::{
    Backend, ServerProcess, TestClient, TestDb, TestServer, read_bootstrap_token, run_platformd,
};

type Secrets = spb::secret_service_client::SecretServiceClient<tonic::transport::Channel>;

fn secrets(client: &TestClient) -> Secrets {
    Secrets::new(client.channel.clone())
}

fn secret_name(id: &str) -> String {
    format!("tenants/acme/secrets/{id}")
}

async fn create_secret(client: &TestClient, id: &str, environment: &str) -> spb::Secret {
    secrets(client)
        .create_secret(client.req(spb::CreateSecretRequest {
            parent: "tenants/acme".into(),
            secret_id: id.into(),
            secret: Some(spb::Secret {
                environment: environment.into(),
                description: format!("the {id} credential"),
                labels: [("team".to_owned(), "payments".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("create secret {id}: {e:?}"))
        .into_inner()
}

async fn add(
    client: &TestClient,
    id: &str,
    data: &[u8],
    crc: Option<u32>,
) -> Result<spb::SecretVersion, tonic::Status> {
    secrets(client)
        .add_secret_version(client.req(spb::AddSecretVersionRequest {
            parent: secret_name(id),
            payload: Some(spb::SecretPayload {
                data: data.to_vec(),
                data_crc32c: crc,
            }),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

async fn access(client: &TestClient, name: &str) -> Result<spb::SecretPayload, tonic::Status> {
    secrets(client)
        .access_secret_version(client.req(spb::AccessSecretVersionRequest { name: name.into() }))
        .await
        .map(|r| r.into_inner().payload.expect("payload"))
}

async fn get_secret(client: &TestClient, id: &str) -> spb::Secret {
    secrets(client)
        .get_secret(client.req(spb::GetSecretRequest {
            name: secret_name(id),
        }))
        .await
        .expect("get secret")
        .into_inner()
}

fn crc32c(data: &[u8]) -> u32 {
    platformd::secrets::crc32c(data)
}

async fn audit_events(client: &TestClient, tenant: &str) -> Vec<audit::AuditEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .audit()
            .list_audit_events(client.req(audit::ListAuditEventsRequest {
                parent: format!("tenants/{tenant}"),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("audit")
            .into_inner();
        out.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every byte the database holds: the SQLite files, or every PostgreSQL table as text.
async fn database_bytes(db: &TestDb) -> Vec<u8> {
    match &db.database {
        platformd::config::DatabaseUrl::Sqlite(path) => {
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{}{suffix}", path.display());
                if let Ok(bytes) = std::fs::read(&file) {
                    all.extend(bytes);
                }
            }
            all
        }
        platformd::config::DatabaseUrl::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            )
            .fetch_all(&mut conn)
            .await
            .expect("tables");
            assert!(tables.iter().any(|t| t == "secret_versions"));
            let mut all = Vec::new();
            for table in tables {
                let text: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t"
                ))
                .fetch_one(&mut conn)
                .await
                .expect("dump");
                all.extend(text.unwrap_or_default().into_bytes());
            }
            all
        }
    }
}

async fn create_tenant(admin: &TestClient, id: &str) {
    admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: id.into(),
            ..Default::default()
        }))
        .await
        .expect("tenant");
}

async fn bind(admin: &TestClient, tenant: &str, id: &str, principal: &str, role: &str) {
    admin
        .iam()
        .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
            parent: format!("tenants/{tenant}"),
            role_binding_id: id.into(),
            role_binding: Some(iam::RoleBinding {
                principal: principal.into(),
                role: format!("tenants/{tenant}/roles/{role}"),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("bind");
}

/// Sets the secret bindings of environment `env` (only that field).
async fn bind_secrets(
    client: &TestClient,
    env: &str,
    bindings: &[(&str, &str)],
) -> Result<epb::Environment, tonic::Status> {
    environments(client)
        .update_environment(
            client.req(epb::UpdateEnvironmentRequest {
                environment: Some(epb::Environment {
                    name: format!("tenants/acme/environments/{env}"),
                    secret_bindings: bindings
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["secret_bindings".into()],
                }),
                ..Default::default()
            }),
        )
        .await
        .map(|r| r.into_inner())
}

/// An environment whose deploy step writes the injected value to `$OUT_DIR/<deployment id>` and
/// echoes it (the log must mask it).
async fn injecting_environment(admin: &TestClient, id: &str, out_dir: &Path, binding: &str) {
    environment(
        admin,
        id,
        epb::EnvironmentType::Development,
        script(
            "printf %s \"$DB_PASSWORD\" > \"$OUT_DIR/$PLATFORM_DEPLOYMENT\"; echo \"password is $DB_PASSWORD\"",
        ),
        "",
    )
    .await;
    environments(admin)
        .update_environment(admin.req(epb::UpdateEnvironmentRequest {
            environment: Some(epb::Environment {
                name: format!("tenants/acme/environments/{id}"),
                variables: [("OUT_DIR".to_owned(), out_dir.display().to_string())].into(),
                secret_bindings: [("DB_PASSWORD".to_owned(), binding.to_owned())].into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["variables".into(), "secret_bindings".into()],
            }),
            ..Default::default()
        }))
        .await
        .expect("bind the secret");
}

storage_test!(
    values_round_trip_and_the_limits_hold,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        create_secret(&admin, "blob", "").await;
        let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let utf8 = "pässwörd ✓ 秘密".as_bytes().to_vec();
        let full = vec![0xA5u8; 65_536];
        let values: Vec<Vec<u8>> = vec![Vec::new(), vec![7], full.clone(), binary, utf8];
        for (i, value) in values.iter().enumerate() {
            let v = add(&admin, "blob", value, Some(crc32c(value)))
                .await
                .expect("add");
            assert_eq!(v.number, i as i64 + 1);
            assert_eq!(v.payload_size_bytes as usize, value.len());
            assert_eq!(v.payload_crc32c, crc32c(value));
            let read = access(&admin, &v.name).await.expect("access");
            assert_eq!(&read.data, value, "version {}", v.number);
            assert_eq!(read.data_crc32c, Some(crc32c(value)));
        }
        // `latest` is the newest enabled version.
        let latest = access(&admin, &format!("{}/versions/latest", secret_name("blob")))
            .await
            .expect("latest");
        assert_eq!(latest.data, values[4]);

        // One byte too many, or a wrong checksum: refused, nothing stored.
        let too_big = add(&admin, "blob", &[1u8; 65_537], None)
            .await
            .expect_err("64 KiB + 1");
        assert_eq!(too_big.code(), Code::InvalidArgument);
        assert!(too_big.message().contains("payload.data"), "{too_big:?}");
        let bad_crc = add(&admin, "blob", b"abc", Some(crc32c(b"abd")))
            .await
            .expect_err("checksum");
        assert_eq!(bad_crc.code(), Code::InvalidArgument);
        assert!(bad_crc.message().contains("payload.data_crc32c"));
        let secret = get_secret(&admin, "blob").await;
        assert_eq!(secret.latest_version_number, 5);
        assert_eq!(secret.enabled_version_count, 5);

        // Check-and-set, idempotent retries, validate_only.
        let stale = secrets(&admin)
            .add_secret_version(admin.req(spb::AddSecretVersionRequest {
                parent: secret_name("blob"),
                payload: Some(spb::SecretPayload {
                    data: b"x".to_vec(),
                    data_crc32c: None,
                }),
                expected_latest_version: Some(4),
                ..Default::default()
            }))
            .await
            .expect_err("stale check-and-set");
        assert_eq!(stale.code(), Code::Aborted);
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut numbers = Vec::new();
        for _ in 0..2 {
            let v = secrets(&admin)
                .add_secret_version(admin.req(spb::AddSecretVersionRequest {
                    parent: secret_name("blob"),
                    payload: Some(spb::SecretPayload {
                        data: b"once".to_vec(),
                        data_crc32c: None,
                    }),
                    expected_latest_version: Some(5),
                    request_id: request_id.clone(),
                    ..Default::default()
                }))
                .await
                .expect("add once")
                .into_inner();
            numbers.push(v.number);
        }
        assert_eq!(numbers, vec![6, 6], "a retry returns the first result");
        let dry = secrets(&admin)
            .add_secret_version(admin.req(spb::AddSecretVersionRequest {
                parent: secret_name("blob"),
                payload: Some(spb::SecretPayload {
                    data: b"dry".to_vec(),
                    data_crc32c: None,
                }),
                validate_only: true,
                ..Default::default()
            }))
            .await
            .expect("validate only")
            .into_inner();
        assert_eq!(dry.number, 7);
        assert_eq!(get_secret(&admin, "blob").await.latest_version_number, 6);

        // Bad names and missing things.
        for (name, code) in [
            (
                "tenants/acme/secrets/blob/versions/0",
                Code::InvalidArgument,
            ),
            (
                "tenants/acme/secrets/blob/versions/x",
                Code::InvalidArgument,
            ),
            ("tenants/acme/secrets/../versions/1", Code::InvalidArgument),
            ("tenants/acme/secrets/blob/versions/99", Code::NotFound),
            ("tenants/acme/secrets/nope/versions/1", Code::NotFound),
            ("tenants/acme/secrets/nope/versions/latest", Code::NotFound),
        ] {
            let err = access(&admin, name).await.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err:?}");
        }
        let dup = secrets(&admin)
            .create_secret(admin.req(spb::CreateSecretRequest {
                parent: "tenants/acme".into(),
                secret_id: "blob".into(),
                secret: Some(spb::Secret::default()),
                ..Default::default()
            }))
            .await
            .expect_err("exists");
        assert_eq!(dup.code(), Code::AlreadyExists);
        let scoped = secrets(&admin)
            .create_secret(admin.req(spb::CreateSecretRequest {
                parent: "tenants/acme".into(),
                secret_id: "scoped".into(),
                secret: Some(spb::Secret {
                    environment: "tenants/acme/environments/nowhere".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect_err("no such environment");
        assert_eq!(scoped.code(), Code::FailedPrecondition);
        server.stop().await;
    }
);

storage_test!(states_moved_ciphertext_and_metadata, |backend| async move {
    let (_db, server, admin) = setup(backend).await;
    create_secret(&admin, "alpha", "").await;
    create_secret(&admin, "beta", "").await;
    let a1 = add(&admin, "alpha", b"alpha-value-1", None)
        .await
        .expect("a1");
    let b1 = add(&admin, "beta", b"beta-value-1", None)
        .await
        .expect("b1");

    // Sealed bytes copied from alpha's row onto beta's do not decrypt.
    let pool = server.store.pool();
    let row: (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
        "SELECT wrapped_key, ciphertext, kek_id FROM secret_versions WHERE secret = 'alpha' AND number = 1",
    )
    .fetch_one(pool)
    .await
    .expect("alpha row");
    sqlx::query(
        "UPDATE secret_versions SET wrapped_key = $1, ciphertext = $2, kek_id = $3 WHERE secret = 'beta' AND number = 1",
    )
    .bind(row.0)
    .bind(row.1)
    .bind(row.2)
    .execute(pool)
    .await
    .expect("move");
    let moved = access(&admin, &b1.name)
        .await
        .expect_err("moved ciphertext");
    assert_eq!(moved.code(), Code::DataLoss, "{moved:?}");
    assert!(moved.message().contains(&b1.name), "{moved:?}");
    assert!(!moved.message().contains("alpha-value"));
    assert_eq!(
        access(&admin, &a1.name).await.expect("alpha intact").data,
        b"alpha-value-1"
    );

    // Disable: refused and skipped by `latest`; enable brings it back.
    let a2 = add(&admin, "alpha", b"alpha-value-2", None)
        .await
        .expect("a2");
    let latest = format!("{}/versions/latest", secret_name("alpha"));
    let disabled = secrets(&admin)
        .disable_secret_version(admin.req(spb::DisableSecretVersionRequest {
            name: a2.name.clone(),
            etag: a2.etag.clone(),
        }))
        .await
        .expect("disable")
        .into_inner();
    assert_eq!(disabled.state, spb::SecretVersionState::Disabled as i32);
    let refused = access(&admin, &a2.name).await.expect_err("disabled");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("DISABLED"));
    assert_eq!(
        access(&admin, &latest).await.expect("latest").data,
        b"alpha-value-1"
    );
    let stale = secrets(&admin)
        .enable_secret_version(admin.req(spb::EnableSecretVersionRequest {
            name: a2.name.clone(),
            etag: a2.etag.clone(),
        }))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    secrets(&admin)
        .enable_secret_version(admin.req(spb::EnableSecretVersionRequest {
            name: a2.name.clone(),
            etag: String::new(),
        }))
        .await
        .expect("enable");
    assert_eq!(
        access(&admin, &latest).await.expect("latest").data,
        b"alpha-value-2"
    );

    // Destroy: the sealed bytes are gone for good, the metadata stays.
    let destroyed = secrets(&admin)
        .destroy_secret_version(admin.req(spb::DestroySecretVersionRequest {
            name: a1.name.clone(),
            etag: String::new(),
        }))
        .await
        .expect("destroy")
        .into_inner();
    assert_eq!(destroyed.state, spb::SecretVersionState::Destroyed as i32);
    assert!(destroyed.destroy_time.is_some());
    assert_eq!(destroyed.payload_crc32c, crc32c(b"alpha-value-1"));
    assert_eq!(destroyed.payload_size_bytes, 13);
    assert!(destroyed.key_encryption_key_id.is_empty());
    let gone = access(&admin, &a1.name).await.expect_err("destroyed");
    assert_eq!(gone.code(), Code::FailedPrecondition);
    assert!(gone.message().contains("DESTROYED"));
    let (ciphertext, wrapped): (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT ciphertext, wrapped_key FROM secret_versions WHERE secret = 'alpha' AND number = 1",
    )
    .fetch_one(pool)
    .await
    .expect("row");
    assert!(ciphertext.is_none() && wrapped.is_none());
    let again = secrets(&admin)
        .enable_secret_version(admin.req(spb::EnableSecretVersionRequest {
            name: a1.name.clone(),
            etag: String::new(),
        }))
        .await
        .expect_err("destroyed is terminal");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let for_latest = secrets(&admin)
        .disable_secret_version(admin.req(spb::DisableSecretVersionRequest {
            name: latest.clone(),
            etag: String::new(),
        }))
        .await
        .expect_err("latest is not a state-change target");
    assert_eq!(for_latest.code(), Code::InvalidArgument);

    // Counts, lists and filters.
    let secret = get_secret(&admin, "alpha").await;
    assert_eq!(
        (
            secret.latest_version_number,
            secret.enabled_version_count,
            secret.disabled_version_count,
            secret.destroyed_version_count
        ),
        (2, 1, 0, 1)
    );
    let versions = secrets(&admin)
        .list_secret_versions(admin.req(spb::ListSecretVersionsRequest {
            parent: secret_name("alpha"),
            ..Default::default()
        }))
        .await
        .expect("versions")
        .into_inner();
    let numbers: Vec<i64> = versions.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, vec![2, 1], "newest first");
    let enabled = secrets(&admin)
        .list_secret_versions(admin.req(spb::ListSecretVersionsRequest {
            parent: secret_name("alpha"),
            filter: "state = \"ENABLED\"".into(),
            order_by: "number".into(),
            ..Default::default()
        }))
        .await
        .expect("filtered")
        .into_inner();
    assert_eq!(enabled.versions.len(), 1);
    assert_eq!(enabled.total_size, 1);
    let bad = secrets(&admin)
        .list_secret_versions(admin.req(spb::ListSecretVersionsRequest {
            parent: secret_name("alpha"),
            filter: "payload = \"x\"".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown field");
    assert_eq!(bad.code(), Code::InvalidArgument);
    for i in 0..5 {
        create_secret(&admin, &format!("db-{i}"), "").await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = secrets(&admin)
            .list_secrets(admin.req(spb::ListSecretsRequest {
                parent: "tenants/acme".into(),
                filter:
                    "name = \"tenants/acme/secrets/db-*\" AND labels.team = \"payments\"".into(),
                order_by: "name desc".into(),
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(page.total_size, 5);
        seen.extend(page.secrets.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        (0..5)
            .rev()
            .map(|i| secret_name(&format!("db-{i}")))
            .collect::<Vec<_>>()
    );

    // Update metadata with an etag; delete erases every version.
    let current = get_secret(&admin, "alpha").await;
    let updated = secrets(&admin)
        .update_secret(admin.req(spb::UpdateSecretRequest {
            secret: Some(spb::Secret {
                name: secret_name("alpha"),
                description: "rotated monthly".into(),
                etag: current.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["description".into()],
            }),
            ..Default::default()
        }))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.description, "rotated monthly");
    assert_eq!(
        updated.labels.get("team").map(String::as_str),
        Some("payments")
    );
    let immutable = secrets(&admin)
        .update_secret(admin.req(spb::UpdateSecretRequest {
            secret: Some(spb::Secret {
                name: secret_name("alpha"),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["environment".into()],
            }),
            ..Default::default()
        }))
        .await
        .expect_err("immutable");
    assert_eq!(immutable.code(), Code::InvalidArgument);
    let stale = secrets(&admin)
        .delete_secret(admin.req(spb::DeleteSecretRequest {
            name: secret_name("alpha"),
            etag: current.etag,
            ..Default::default()
        }))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    secrets(&admin)
        .delete_secret(admin.req(spb::DeleteSecretRequest {
            name: secret_name("alpha"),
            ..Default::default()
        }))
        .await
        .expect("delete");
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM secret_versions WHERE secret = 'alpha'")
            .fetch_one(pool)
            .await
            .expect("count");
    assert_eq!(left, 0);
    assert_eq!(
        access(&admin, &a2.name).await.expect_err("deleted").code(),
        Code::NotFound
    );
    server.stop().await;
});

storage_test!(
    a_canary_value_appears_only_in_access_responses,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let server = ServerProcess::start(&db, &[]).await;
        let admin = server
            .client()
            .await
            .with_token(&read_bootstrap_token(db.data_dir.path()));
        create_tenant(&admin, "acme").await;
        let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
        let created = create_secret(&admin, "api-key", "").await;
        let version = add(
            &admin,
            "api-key",
            canary.as_bytes(),
            Some(crc32c(canary.as_bytes())),
        )
        .await
        .expect("add");
        let read = access(&admin, &version.name).await.expect("access");
        assert_eq!(read.data, canary.as_bytes());

        // A deployment gets the value injected, and its log masks it.
        components(&admin, &["payments"]).await;
        let out = tempfile::tempdir().expect("out dir");
        injecting_environment(&admin, "dev", out.path(), &secret_name("api-key")).await;
        let d = deploy(&admin, "payments", "v1", "dev", "")
            .await
            .expect("deploy");
        let d = wait_until(&admin, &d.name, terminal).await;
        assert_eq!(d.state, dpb::DeploymentState::Succeeded as i32, "{d:#?}");
        let id = d.name.rsplit('/').next().expect("id");
        assert_eq!(
            std::fs::read_to_string(out.path().join(id)).expect("the step wrote it"),
            canary,
            "the driver received the value"
        );
        let log = log_text(&admin, &d.name).await;
        assert!(
            log.iter().any(|l| l == "password is ***"),
            "masked in the log: {log:?}"
        );

        // Every other response, encoded, is free of it.
        let mut responses: Vec<Vec<u8>> = vec![
            created.encode_to_vec(),
            version.encode_to_vec(),
            get_secret(&admin, "api-key").await.encode_to_vec(),
            d.encode_to_vec(),
        ];
        responses.push(
            secrets(&admin)
                .list_secrets(admin.req(spb::ListSecretsRequest {
                    parent: "tenants/acme".into(),
                    ..Default::default()
                }))
                .await
                .expect("list")
                .into_inner()
                .encode_to_vec(),
        );
        responses.push(
            secrets(&admin)
                .list_secret_versions(admin.req(spb::ListSecretVersionsRequest {
                    parent: secret_name("api-key"),
                    ..Default::default()
                }))
                .await
                .expect("versions")
                .into_inner()
                .encode_to_vec(),
        );
        let events = audit_events(&admin, "acme").await;
        assert!(
            events
                .iter()
                .any(|e| e.method.ends_with("AccessSecretVersion")
                    && e.resource == version.name
                    && e.outcome == audit::Outcome::Allowed as i32),
            "the access is audited with the concrete version"
        );
        assert!(
            events.iter().any(|e| e.actor == "system:platformd"
                && e.resource == version.name
                && e.request_id == d.name),
            "the injection is audited"
        );
        responses.extend(events.iter().map(|e| e.encode_to_vec()));
        for (i, bytes) in responses.iter().enumerate() {
            assert!(!contains(bytes, canary.as_bytes()), "response {i} leaks it");
        }
        let stored = database_bytes(&db).await;
        assert!(!stored.is_empty());
        assert!(
            !contains(&stored, canary.as_bytes()),
            "the database holds it"
        );
        assert!(
            !contains(&stored, hex(canary.as_bytes()).as_bytes()),
            "the database holds it hex-encoded"
        );
        server.signal("TERM");
        let log_lines = server.log_lines();
        assert!(!log_lines.is_empty());
        assert!(
            !log_lines.iter().any(|l| l.contains(&canary)),
            "the server log holds it"
        );
    }
);

storage_test!(
    bindings_resolve_to_versions_and_rollbacks_reuse_them,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        components(&admin, &["payments"]).await;
        create_secret(&admin, "db", "").await;
        let out = tempfile::tempdir().expect("out dir");
        injecting_environment(&admin, "dev", out.path(), &secret_name("db")).await;

        // No version yet: the deployment fails, naming the variable.
        let d0 = deploy(&admin, "payments", "v0", "dev", "")
            .await
            .expect("d0");
        let d0 = wait_until(&admin, &d0.name, terminal).await;
        assert_eq!(d0.state, dpb::DeploymentState::Failed as i32);
        assert!(
            d0.state_message.contains("secret binding DB_PASSWORD")
                && d0.state_message.contains("no enabled version"),
            "{}",
            d0.state_message
        );

        let v1 = add(&admin, "db", b"first-password", None)
            .await
            .expect("v1");
        let d1 = deploy(&admin, "payments", "v1", "dev", "")
            .await
            .expect("d1");
        let d1 = wait_until(&admin, &d1.name, terminal).await;
        assert_eq!(d1.state, dpb::DeploymentState::Succeeded as i32, "{d1:#?}");
        let inputs = &d1.snapshot.as_ref().expect("snapshot").secrets;
        assert_eq!(
            inputs,
            &vec![dpb::SecretInput {
                variable: "DB_PASSWORD".into(),
                secret_version: v1.name.clone(),
            }]
        );
        add(&admin, "db", b"second-password", None)
            .await
            .expect("v2");
        let d2 = deploy(&admin, "payments", "v2", "dev", "")
            .await
            .expect("d2");
        let d2 = wait_until(&admin, &d2.name, terminal).await;
        assert_eq!(d2.state, dpb::DeploymentState::Succeeded as i32);
        let read = |d: &dpb::Deployment| {
            std::fs::read_to_string(out.path().join(d.name.rsplit('/').next().expect("id")))
                .expect("written")
        };
        assert_eq!(read(&d1), "first-password");
        assert_eq!(read(&d2), "second-password");

        // Rolling back d2 returns to d1's inputs: the first password again.
        let rollback = deployments(&admin)
            .rollback_deployment(admin.req(dpb::RollbackDeploymentRequest {
                name: d2.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("rollback")
            .into_inner();
        let rollback = wait_until(&admin, &rollback.name, terminal).await;
        assert_eq!(rollback.state, dpb::DeploymentState::Succeeded as i32);
        assert_eq!(read(&rollback), "first-password");

        // A rollback whose version was disabled since fails, naming it.
        secrets(&admin)
            .disable_secret_version(admin.req(spb::DisableSecretVersionRequest {
                name: v1.name.clone(),
                etag: String::new(),
            }))
            .await
            .expect("disable v1");
        let again = deployments(&admin)
            .rollback_deployment(admin.req(dpb::RollbackDeploymentRequest {
                name: d2.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("rollback")
            .into_inner();
        let again = wait_until(&admin, &again.name, terminal).await;
        assert_eq!(again.state, dpb::DeploymentState::Failed as i32);
        assert!(
            again.state_message.contains(&v1.name) && again.state_message.contains("DISABLED"),
            "{}",
            again.state_message
        );

        // Bindings are checked when they are set.
        for (binding, why) in [
            ("tenants/acme/secrets/missing", "does not exist"),
            ("tenants/other/secrets/db", "environment's tenant"),
            ("not-a-name", "must be"),
        ] {
            let err = bind_secrets(&admin, "dev", &[("X", binding)])
                .await
                .expect_err(binding);
            assert_eq!(err.code(), Code::InvalidArgument, "{binding}");
            assert!(err.message().contains(why), "{binding}: {err:?}");
        }
        environment(
            &admin,
            "prod",
            epb::EnvironmentType::Production,
            script("true"),
            "",
        )
        .await;
        create_secret(&admin, "prod-only", "tenants/acme/environments/prod").await;
        let scoped = bind_secrets(&admin, "dev", &[("X", &secret_name("prod-only"))])
            .await
            .expect_err("scoped to prod");
        assert_eq!(scoped.code(), Code::InvalidArgument);
        assert!(
            scoped.message().contains("another environment"),
            "{scoped:?}"
        );
        server.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_read_values() {
    let (_db, server, admin) = setup(Backend::Sqlite).await;
    create_tenant(&admin, "globex").await;
    create_secret(&admin, "db", "").await;
    let v1 = add(&admin, "db", b"top-secret-value", None)
        .await
        .expect("v1");
    bind(&admin, "acme", "viewer", "user:vic", "viewer").await;
    bind(&admin, "acme", "dev", "user:dana", "developer").await;
    bind(&admin, "acme", "sec", "user:sam", "secret-admin").await;
    bind(&admin, "globex", "admin", "user:gus", "admin").await;

    // A viewer sees names and metadata, never values.
    let vic = server.user("vic").await;
    let listed = secrets(&vic)
        .list_secrets(vic.req(spb::ListSecretsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await
        .expect("viewers list")
        .into_inner();
    assert_eq!(listed.secrets.len(), 1);
    assert!(!contains(&listed.encode_to_vec(), b"top-secret-value"));
    let denied = access(&vic, &v1.name).await.expect_err("viewer");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(!denied.message().contains("top-secret-value"));

    // A developer writes values but cannot read them back, nor bind them for a driver to read.
    let dana = server.user("dana").await;
    add(&dana, "db", b"from-dana", None)
        .await
        .expect("developers add");
    assert_eq!(
        access(&dana, &v1.name).await.expect_err("developer").code(),
        Code::PermissionDenied
    );
    environment(
        &admin,
        "dev",
        epb::EnvironmentType::Development,
        script("true"),
        "",
    )
    .await;
    let bind_denied = bind_secrets(&dana, "dev", &[("DB", &secret_name("db"))])
        .await
        .expect_err("binding needs access");
    assert_eq!(
        bind_denied.code(),
        Code::PermissionDenied,
        "{bind_denied:?}"
    );

    // Another tenant's admin is denied; the secret admin reads.
    let gus = server.user("gus").await;
    assert_eq!(
        access(&gus, &v1.name)
            .await
            .expect_err("other tenant")
            .code(),
        Code::PermissionDenied
    );
    let sam = server.user("sam").await;
    assert_eq!(
        access(&sam, &v1.name).await.expect("secret admin").data,
        b"top-secret-value"
    );

    // Every access, allowed or denied, is on the record.
    let events = audit_events(&admin, "acme").await;
    let accesses: Vec<(String, i32)> = events
        .iter()
        .filter(|e| {
            e.permission == "secrets.versions.access" && e.method.ends_with("AccessSecretVersion")
        })
        .map(|e| (e.actor.clone(), e.outcome))
        .collect();
    for (actor, outcome) in [
        ("user:vic", audit::Outcome::Denied),
        ("user:dana", audit::Outcome::Denied),
        ("user:gus", audit::Outcome::Denied),
        ("user:sam", audit::Outcome::Allowed),
    ] {
        assert!(
            accesses.contains(&(actor.to_owned(), outcome as i32)),
            "{actor} {outcome:?} missing from {accesses:?}"
        );
    }
    server.stop().await;
}

/// Keys in a file the test controls: `KEY_ID:BASE64` lines.
fn key_line(id: &str, byte: u8) -> String {
    use base64::Engine as _;
    format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_rotates_keys_without_a_restart() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = db.data_dir.path().join("kek.txt");
    std::fs::write(&keys, format!("{}\n", key_line("old", 1))).expect("keys");
    let mut config = db.config();
    config.keys.file = Some(keys.clone());
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    create_tenant(&admin, "acme").await;
    create_secret(&admin, "db", "").await;
    let mut names = Vec::new();
    for i in 0..5 {
        names.push(
            add(&admin, "db", format!("value-{i}").as_bytes(), None)
                .await
                .expect("add")
                .name,
        );
    }
    // The operator adds a new primary key to the file; the running server picks it up.
    std::fs::write(
        &keys,
        format!("{}\n{}\n", key_line("new", 2), key_line("old", 1)),
    )
    .expect("keys");
    let wrong = secrets(&admin)
        .rewrap_data_keys(admin.req(spb::RewrapDataKeysRequest {
            target_key_encryption_key: "keyEncryptionKeys/old".into(),
            batch_size: 2,
        }))
        .await
        .expect_err("old is not primary");
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    let mut rounds = 0;
    loop {
        let r = secrets(&admin)
            .rewrap_data_keys(admin.req(spb::RewrapDataKeysRequest {
                target_key_encryption_key: String::new(),
                batch_size: 2,
            }))
            .await
            .expect("rewrap")
            .into_inner();
        assert_eq!(r.target_key_encryption_key, "keyEncryptionKeys/new");
        rounds += 1;
        if r.done {
            assert_eq!(r.remaining_count, 0);
            break;
        }
        assert!(rounds < 10);
    }
    assert_eq!(rounds, 3, "5 data keys in batches of 2");
    let listed = secrets(&admin)
        .list_key_encryption_keys(admin.req(spb::ListKeyEncryptionKeysRequest::default()))
        .await
        .expect("keys")
        .into_inner();
    let summary: Vec<(String, i32, i64)> = listed
        .key_encryption_keys
        .iter()
        .map(|k| (k.key_id.clone(), k.state, k.wrapped_data_key_count))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("new".into(), spb::KeyEncryptionKeyState::Primary as i32, 5),
            (
                "old".into(),
                spb::KeyEncryptionKeyState::DecryptOnly as i32,
                0
            ),
        ]
    );
    // The old key leaves the file; every value still reads, and new versions use the new key.
    std::fs::write(&keys, format!("{}\n", key_line("new", 2))).expect("keys");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            access(&admin, name).await.expect("reads").data,
            format!("value-{i}").into_bytes()
        );
    }
    let added = add(&admin, "db", b"after", None).await.expect("add");
    assert_eq!(added.key_encryption_key_id, "new");
    let viewer = server.user("vic").await;
    let refused = secrets(&viewer)
        .list_key_encryption_keys(viewer.req(spb::ListKeyEncryptionKeysRequest::default()))
        .await
        .expect_err("platform-admin only");
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;
}

storage_test!(
    rotate_remove_the_old_key_restart_and_read,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let mut values = Vec::new();
        {
            let server = ServerProcess::start(&db, &[]).await;
            let admin = server
                .client()
                .await
                .with_token(&read_bootstrap_token(db.data_dir.path()));
            create_tenant(&admin, "acme").await;
            for s in 0..3 {
                create_secret(&admin, &format!("s{s}"), "").await;
                for v in 0..3 {
                    let value = format!("value-{s}-{v}");
                    let version = add(&admin, &format!("s{s}"), value.as_bytes(), None)
                        .await
                        .expect("add");
                    values.push((version.name, value));
                }
            }
            server.signal("TERM");
            server.wait_exit(Duration::from_secs(30)).await;
        }
        let dir = db.data_dir.path();
        let key_file = dir.join(platformd::secrets::keyring::GENERATED_KEY_FILE);
        let before = std::fs::read_to_string(&key_file).expect("generated key file");
        let old_id = before
            .lines()
            .find(|l| !l.starts_with('#') && l.contains(':'))
            .and_then(|l| l.split(':').next())
            .expect("a key")
            .to_owned();
        let database = db.database_arg();
        let args = [
            "keys",
            "rotate",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--database",
            &database,
        ];
        let (code, stderr) = run_platformd(&args, dir);
        assert_eq!(code, Some(0), "{stderr}");
        // Remove the old key: keep only the new first line.
        let after = std::fs::read_to_string(&key_file).expect("key file");
        let new_line = after.lines().next().expect("new key").to_owned();
        assert!(!new_line.starts_with(&format!("{old_id}:")));
        std::fs::write(&key_file, format!("{new_line}\n")).expect("drop the old key");

        let server = ServerProcess::start(&db, &[]).await;
        let admin = server.client().await.with_token(&read_bootstrap_token(dir));
        for (name, value) in &values {
            assert_eq!(
                access(&admin, name)
                    .await
                    .expect("reads after rotation")
                    .data,
                value.as_bytes()
            );
        }
        server.signal("TERM");
        server.wait_exit(Duration::from_secs(30)).await;

        // A key file without the key the data keys name: platformd refuses to start, naming it.
        let (_, other) = platformd::secrets::keyring::new_key_entry("stranger");
        std::fs::write(&key_file, format!("{}\n", other.as_str())).expect("wrong key");
        let serve = [
            "serve",
            "--listen=127.0.0.1:0",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--database",
            &database,
        ];
        let (code, stderr) = run_platformd(&serve, dir);
        assert_eq!(code, Some(2), "{stderr}");
        let new_id = new_line.split(':').next().expect("id");
        assert!(stderr.contains(new_id), "names the missing key: {stderr}");
        assert!(!stderr.contains(other.split(':').nth(1).expect("material")));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_environment_variable() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = format!("{},{}", key_line("env-a", 3), key_line("env-b", 4));
    let server =
        ServerProcess::start_with_env(&db, &[], &[("PLATFORM_SECRET_KEYS", keys.as_str())]).await;
    let admin = server
        .client()
        .await
        .with_token(&read_bootstrap_token(db.data_dir.path()));
    create_tenant(&admin, "acme").await;
    create_secret(&admin, "db", "").await;
    let v = add(&admin, "db", b"from-env-keys", None)
        .await
        .expect("add");
    assert_eq!(
        v.key_encryption_key_id, "env-a",
        "the first key is the primary"
    );
    assert_eq!(
        access(&admin, &v.name).await.expect("access").data,
        b"from-env-keys"
    );
    let listed = secrets(&admin)
        .list_key_encryption_keys(admin.req(spb::ListKeyEncryptionKeysRequest::default()))
        .await
        .expect("keys")
        .into_inner();
    let summary: Vec<(String, i32, i32, i64)> = listed
        .key_encryption_keys
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                k.state,
                k.source,
                k.wrapped_data_key_count,
            )
        })
        .collect();
    let env = spb::KeyEncryptionKeySource::Environment as i32;
    assert_eq!(
        summary,
        vec![
            (
                "env-a".into(),
                spb::KeyEncryptionKeyState::Primary as i32,
                env,
                1
            ),
            (
                "env-b".into(),
                spb::KeyEncryptionKeyState::DecryptOnly as i32,
                env,
                0
            ),
        ]
    );
    assert!(
        !db.data_dir
            .path()
            .join(platformd::secrets::keyring::GENERATED_KEY_FILE)
            .exists(),
        "no development key is generated when keys are configured"
    );
    let log = server.log_lines().join("\n");
    assert!(
        !log.contains(&key_line("env-a", 3)[6..]),
        "key material logged"
    );
}
