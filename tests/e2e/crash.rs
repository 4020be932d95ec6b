//! Crashes, on SQLite and PostgreSQL: the real platformd binary is killed with SIGKILL in the
//! middle of a burst of mixed writes from several callers (environments, secrets with a version,
//! catalog imports, role bindings). Started again on the same data, every write it acknowledged
//! is there (each secret value reads back), both audit chains verify, and SQLite's integrity
//! check passes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform_api::platform::audit::v1 as audit;
use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::secrets::v1 as spb;

use crate::deployments::{environments, noop};
use crate::iam_audit::create_tenant;
use crate::storage_test;
use crate::support::{ServerProcess, TestClient, TestDb, read_bootstrap_token};

type Secrets = spb::secret_service_client::SecretServiceClient<tonic::transport::Channel>;

/// What a caller was told was written.
#[derive(Debug, Clone)]
enum Acknowledged {
    Environment(String),
    SecretVersion(String, Vec<u8>),
    Entity(String),
    RoleBinding(String),
}

/// One caller writing until the server stops answering; returns what it was told was written.
async fn writer(client: TestClient, caller: usize, acked: Arc<Mutex<Vec<Acknowledged>>>) {
    let secrets = Secrets::new(client.channel.clone());
    for i in 0.. {
        let id = format!("c{caller}-{i}");
        let result = match i % 4 {
            0 => environments(&client)
                .create_environment(client.req(epb::CreateEnvironmentRequest {
                    parent: "tenants/acme".into(),
                    environment_id: id.clone(),
                    environment: Some(epb::Environment {
                        r#type: epb::EnvironmentType::Development as i32,
                        driver: Some(noop()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .map(|r| Acknowledged::Environment(r.into_inner().name)),
            1 => {
                let value = format!("value of {id}").into_bytes();
                let created = secrets
                    .clone()
                    .create_secret(client.req(spb::CreateSecretRequest {
                        parent: "tenants/acme".into(),
                        secret_id: id.clone(),
                        secret: Some(spb::Secret::default()),
                        ..Default::default()
                    }))
                    .await;
                match created {
                    Err(e) => Err(e),
                    Ok(_) => secrets
                        .clone()
                        .add_secret_version(client.req(spb::AddSecretVersionRequest {
                            parent: format!("tenants/acme/secrets/{id}"),
                            payload: Some(spb::SecretPayload {
                                data: value.clone(),
                                data_crc32c: None,
                            }),
                            ..Default::default()
                        }))
                        .await
                        .map(|r| Acknowledged::SecretVersion(r.into_inner().name, value)),
                }
            }
            2 => crate::catalog::catalog(&client)
                .import_entities(client.req(cat::ImportEntitiesRequest {
                    parent: "tenants/acme".into(),
                    sources: vec![cat::ImportSource {
                        path: format!("{id}.yaml"),
                        content: format!(
                            "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: {id}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"
                        ),
                    }],
                    ..Default::default()
                }))
                .await
                .map(|_| {
                    Acknowledged::Entity(format!(
                        "tenants/acme/entities/component/default/{id}"
                    ))
                }),
            _ => client
                .iam()
                .create_role_binding(client.req(iam::CreateRoleBindingRequest {
                    parent: "tenants/acme".into(),
                    role_binding_id: id.clone(),
                    role_binding: Some(iam::RoleBinding {
                        principal: format!("user:{id}"),
                        role: "tenants/acme/roles/viewer".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .map(|r| Acknowledged::RoleBinding(r.into_inner().name)),
        };
        match result {
            Ok(ack) => acked.lock().expect("acks").push(ack),
            // The server is gone (or going): stop.
            Err(_) => return,
        }
    }
}

storage_test!(
    acknowledged_writes_survive_a_sigkill,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let first = ServerProcess::start(&db, &[]).await;
        let token = read_bootstrap_token(db.data_dir.path());
        let admin = first.client().await.with_token(&token);
        create_tenant(&admin, "acme").await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for caller in 0..6 {
            let client = first.client().await.with_token(&token);
            writers.push(tokio::spawn(writer(client, caller, acked.clone())));
        }
        // Let the burst run, then kill the server in the middle of it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        first.signal("KILL");
        let _ = first.wait_exit(Duration::from_secs(10)).await;
        for w in writers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let acked = acked.lock().expect("acks").clone();
        assert!(
            acked.len() >= 20,
            "the burst wrote too little to mean anything: {}",
            acked.len()
        );

        let second = ServerProcess::start(&db, &[]).await;
        let admin = second.client().await.with_token(&token);
        let secrets = Secrets::new(admin.channel.clone());
        for ack in &acked {
            match ack {
                Acknowledged::Environment(name) => {
                    environments(&admin)
                        .get_environment(
                            admin.req(epb::GetEnvironmentRequest { name: name.clone() }),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e:?}"));
                }
                Acknowledged::SecretVersion(name, value) => {
                    let payload = secrets
                        .clone()
                        .access_secret_version(
                            admin.req(spb::AccessSecretVersionRequest { name: name.clone() }),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e:?}"))
                        .into_inner()
                        .payload
                        .expect("payload");
                    assert_eq!(&payload.data, value, "{name} reads back");
                }
                Acknowledged::Entity(name) => {
                    crate::catalog::get(&admin, name)
                        .await
                        .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e:?}"));
                }
                Acknowledged::RoleBinding(name) => {
                    admin
                        .iam()
                        .get_role_binding(
                            admin.req(iam::GetRoleBindingRequest { name: name.clone() }),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e:?}"));
                }
            }
        }
        for tenant in ["tenants/acme", ""] {
            let verified = admin
                .audit()
                .verify_audit_chain(admin.req(audit::VerifyAuditChainRequest {
                    tenant: tenant.into(),
                    ..Default::default()
                }))
                .await
                .expect("verify")
                .into_inner();
            assert!(
                verified.ok,
                "the {tenant:?} chain verifies after the kill: {verified:?}"
            );
        }
        if let platformd::config::DatabaseUrl::Sqlite(path) = &db.database {
            let url = format!("sqlite://{}?mode=ro", path.display());
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.expect("open the file");
            let check: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&pool)
                .await
                .expect("integrity check");
            assert_eq!(check, "ok");
            pool.close().await;
        }
        println!(
            "sigkill: {} acknowledged writes, all there after restart",
            acked.len()
        );
    }
);
