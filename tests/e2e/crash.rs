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

use std::path::Path;

use platform_api::platform::deployments::v1 as dpb;

use crate::deployments::{
    components, deploy, environment, environments, log_text, noop, script, terminal, wait_until,
};
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

/// One caller writing until the server stops answering; records what it was told was written
/// and returns the answer of the call that stopped it.
async fn writer(
    client: TestClient,
    caller: usize,
    acked: Arc<Mutex<Vec<Acknowledged>>>,
) -> tonic::Status {
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
            Err(status) => return status,
        }
    }
    unreachable!("the writer loops until a call fails")
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
        assert_survived(&db, &admin, &acked).await;
        println!(
            "sigkill: {} acknowledged writes, all there after restart",
            acked.len()
        );
    }
);

/// Every acknowledged write is there (secret values read back), both audit chains verify, and
/// a SQLite file passes its integrity check.
async fn assert_survived(db: &TestDb, admin: &TestClient, acked: &[Acknowledged]) {
    let secrets = Secrets::new(admin.channel.clone());
    for ack in acked {
        match ack {
            Acknowledged::Environment(name) => {
                environments(admin)
                    .get_environment(admin.req(epb::GetEnvironmentRequest { name: name.clone() }))
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
                crate::catalog::get(admin, name)
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e:?}"));
            }
            Acknowledged::RoleBinding(name) => {
                admin
                    .iam()
                    .get_role_binding(admin.req(iam::GetRoleBindingRequest { name: name.clone() }))
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
}

storage_test!(
    sigterm_finishes_calls_refuses_new_ones_and_hands_deployments_back,
    |backend| async move {
        let db = TestDb::new(backend).await;
        // A lease far longer than the test can wait: a handed-back deployment must run again at
        // once after the restart, not when its lease has run out.
        let args = ["--deploy-lease-secs=600", "--deploy-workers=4"];
        let first = ServerProcess::start(&db, &args).await;
        let token = read_bootstrap_token(db.data_dir.path());
        let admin = first.client().await.with_token(&token);
        create_tenant(&admin, "acme").await;
        let names = ["svc0", "svc1", "svc2"];
        components(&admin, &names).await;
        // The first attempt notes its pid and sleeps far past the shutdown; later ones finish.
        let dir = tempfile::tempdir().expect("dir");
        let body = format!(
            "echo $$ > {d}/$PLATFORM_DEPLOYMENT.$PLATFORM_ATTEMPT; \
             if [ $PLATFORM_ATTEMPT = 1 ]; then sleep 300; fi; echo finished attempt $PLATFORM_ATTEMPT",
            d = dir.path().display()
        );
        environment(
            &admin,
            "dev",
            epb::EnvironmentType::Development,
            script(&body),
            "",
        )
        .await;
        let mut deployed = Vec::new();
        for name in names {
            deployed.push(deploy(&admin, name, "v1", "dev", "").await.expect("deploy"));
        }
        let started = |d: &dpb::Deployment| {
            let id = d.name.rsplit('/').next().unwrap_or_default();
            dir.path().join(format!("{id}.1"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !deployed.iter().all(|d| started(d).exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the first attempts never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Load: six writers, and one big import that is surely still running at the signal.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for caller in 0..6 {
            let client = first.client().await.with_token(&token);
            writers.push(tokio::spawn(writer(client, caller, acked.clone())));
        }
        let big: String = (0..3000)
            .map(|i| format!("---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: big-{i}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"))
            .collect();
        let importer = first.client().await.with_token(&token);
        let import = tokio::spawn(async move {
            crate::catalog::catalog(&importer)
                .import_entities(importer.req(cat::ImportEntitiesRequest {
                    parent: "tenants/acme".into(),
                    sources: vec![cat::ImportSource {
                        path: "big.yaml".into(),
                        content: big,
                    }],
                    ..Default::default()
                }))
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.signal("TERM");
        tokio::time::sleep(Duration::from_millis(200)).await;

        // New calls are refused with UNAVAILABLE, on a new connection and on an open one.
        let fresh = TestClient {
            channel: tonic::transport::Channel::from_shared(format!("http://{}", first.addr))
                .expect("endpoint")
                .connect_lazy(),
            token: Some(token.clone()),
        };
        for (which, client) in [("a new connection", &fresh), ("an open connection", &admin)] {
            let refused = client
                .iam()
                .get_caller(client.req(iam::GetCallerRequest::default()))
                .await
                .expect_err("no new calls after SIGTERM");
            assert_eq!(
                refused.code(),
                tonic::Code::Unavailable,
                "{which}: {refused:?}"
            );
            assert!(
                refused.message().contains("shutting down"),
                "{which}: the server's own answer: {refused:?}"
            );
        }
        // The call in flight completes.
        let imported = import
            .await
            .expect("join")
            .expect("the import in flight at SIGTERM completes")
            .into_inner();
        assert_eq!(imported.created_count, 3000);
        let code = first.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(code, Some(0), "a clean exit");
        let mut stopped_by = Vec::new();
        for w in writers {
            stopped_by.push(
                tokio::time::timeout(Duration::from_secs(30), w)
                    .await
                    .expect("writer ends")
                    .expect("join"),
            );
        }
        assert!(
            stopped_by
                .iter()
                .all(|s| s.code() == tonic::Code::Unavailable
                    && s.message().contains("shutting down")),
            "each writer's next call came during the drain and got the server's answer:  were turned away with UNAVAILABLE: {stopped_by:?}"
        );
        // The first attempts' scripts were stopped, not left behind.
        for d in &deployed {
            let pid = std::fs::read_to_string(started(d)).expect("pid");
            assert!(
                !Path::new(&format!("/proc/{}", pid.trim())).exists(),
                "the script of {} still runs",
                d.name
            );
        }

        let second = ServerProcess::start(&db, &args).await;
        let admin = second.client().await.with_token(&token);
        for d in &deployed {
            let d = wait_until(&admin, &d.name, terminal).await;
            assert_eq!(d.state, dpb::DeploymentState::Succeeded as i32, "{d:#?}");
            assert_eq!(d.attempts.len(), 2, "{d:#?}");
            assert!(
                d.attempts[0].handed_back && !d.attempts[0].interrupted,
                "{d:#?}"
            );
            assert_eq!(d.interrupted_attempt_count, 0, "{d:#?}");
            let log = log_text(&admin, &d.name).await.join("\n");
            assert!(log.contains("attempt 1 handed back"), "{log}");
            assert!(log.contains("finished attempt 2"), "{log}");
        }
        let acked = acked.lock().expect("acks").clone();
        assert_survived(&db, &admin, &acked).await;
        println!(
            "sigterm: the import in flight completed, {} acknowledged writes there after restart, \
             {} deployments handed back and finished",
            acked.len(),
            deployed.len()
        );
    }
);
