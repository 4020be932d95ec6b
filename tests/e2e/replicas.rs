//! Scale-out on PostgreSQL: two real `platformd` processes on two ports sharing one database
//! (and one data dir, as replicas share their signing and secret keys). A role binding made on
//! one is enforced on the other within a second, and so is its removal; 100 deployments created
//! alternately on both all complete, each run exactly once; a replica killed with SIGKILL
//! mid-deployment has its work finished by the other; 8 concurrent writers per replica on one
//! tenant leave an audit chain that verifies. Skipped without `PLATFORM_TEST_POSTGRES_URL`.

use std::time::{Duration, Instant};

use platform_api::platform::audit::v1 as audit;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::deployments::{components, deploy, environment, environments, get, script, terminal};
use crate::support::{
    Backend, ServerProcess, TestClient, TestDb, postgres_configured, read_bootstrap_token,
};

/// Two replicas on a fresh PostgreSQL database, and an admin client of each.
async fn two_replicas(extra: &[&str]) -> (TestDb, [ServerProcess; 2], [TestClient; 2]) {
    let db = TestDb::new(Backend::Postgres).await;
    let a = ServerProcess::start(&db, extra).await;
    let b = ServerProcess::start(&db, extra).await;
    let token = read_bootstrap_token(db.data_dir.path());
    let ca = a.client().await.with_token(&token);
    let cb = b.client().await.with_token(&token);
    ca.iam()
        .create_tenant(ca.req(iam::CreateTenantRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect("tenant");
    (db, [a, b], [ca, cb])
}

/// A token for `user:{subject}` without grants, issued offline from the shared data dir.
fn user_token(db: &TestDb, subject: &str) -> String {
    let dir = db.data_dir.path();
    let output = std::process::Command::new(crate::support::platformd_bin())
        .args([
            "token",
            "issue",
            "--subject",
            subject,
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--database",
            &db.database_arg(),
        ])
        .env_remove("PLATFORM_CONFIG")
        .output()
        .expect("token issue");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

async fn can_list(client: &TestClient) -> Result<(), Code> {
    environments(client)
        .list_environments(client.req(epb::ListEnvironmentsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

/// Polls `check` every 10 ms until it returns `want`; returns how long that took.
async fn time_until(client: &TestClient, want: Result<(), Code>, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if can_list(client).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "not {want:?} within {limit:?} on the other replica"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_is_in_force_on_every_replica_within_a_second() {
    if !postgres_configured() {
        return;
    }
    let (db, _servers, [a, b]) = two_replicas(&[]).await;
    let token = user_token(&db, "carol");
    let carol_on_b = b.clone().with_token(&token);
    assert_eq!(can_list(&carol_on_b).await, Err(Code::PermissionDenied));
    a.iam()
        .create_role_binding(a.req(iam::CreateRoleBindingRequest {
            parent: "tenants/acme".into(),
            role_binding_id: "carol-viewer".into(),
            role_binding: Some(iam::RoleBinding {
                principal: "user:carol".into(),
                role: "tenants/acme/roles/viewer".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("bind on A");
    let granted = time_until(&carol_on_b, Ok(()), Duration::from_secs(1)).await;
    let carol_on_a = a.clone().with_token(&token);
    b.iam()
        .delete_role_binding(b.req(iam::DeleteRoleBindingRequest {
            name: "tenants/acme/roleBindings/carol-viewer".into(),
            ..Default::default()
        }))
        .await
        .expect("unbind on B");
    let revoked = time_until(
        &carol_on_a,
        Err(Code::PermissionDenied),
        Duration::from_secs(1),
    )
    .await;
    eprintln!("binding in force on the other replica after {granted:?}; removal after {revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_spread_over_replicas_run_once_and_survive_a_kill() {
    if !postgres_configured() {
        return;
    }
    let (_db, mut servers, [a, b]) = two_replicas(&["--deploy-lease-secs=2"]).await;
    let out = tempfile::tempdir().expect("out dir");
    let ran = out.path().join("ran.log");
    let names: Vec<String> = (0..10).map(|i| format!("svc-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    components(&a, &refs).await;
    for env in ["dev", "qa"] {
        environment(
            &a,
            env,
            epb::EnvironmentType::Development,
            script(&format!(
                "echo \"$PLATFORM_DEPLOYMENT\" >> {}",
                ran.display()
            )),
            "",
        )
        .await;
    }

    // 100 deployments, created alternately on A and B, over 20 lanes.
    let mut created = Vec::new();
    for i in 0..100 {
        let client = if i % 2 == 0 { &a } else { &b };
        let d = deploy(
            client,
            &names[i % 10],
            &format!("v{i}"),
            if i % 4 < 2 { "dev" } else { "qa" },
            "",
        )
        .await
        .expect("create");
        created.push(d.name);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for name in &created {
        loop {
            let d = get(&b, name).await;
            if terminal(&d) {
                assert_eq!(d.state, dpb::DeploymentState::Succeeded as i32, "{d:#?}");
                assert_eq!(d.attempt_count, 1, "{d:#?}");
                break;
            }
            assert!(Instant::now() < deadline, "not finished: {d:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let log = std::fs::read_to_string(&ran).expect("ran log");
    let mut ids: Vec<&str> = log.lines().collect();
    assert_eq!(ids.len(), 100, "each ran once");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100, "none ran twice");
    let workers: std::collections::BTreeSet<String> = {
        let mut set = std::collections::BTreeSet::new();
        for name in &created {
            let d = get(&a, name).await;
            let worker = &d.attempts[0].worker;
            set.insert(worker.split('/').next().unwrap_or_default().to_owned());
        }
        set
    };
    eprintln!(
        "the 100 deployments ran on {} processes: {workers:?}",
        workers.len()
    );

    // A long deployment; kill the replica running it; the other finishes it.
    environment(
        &a,
        "slow",
        epb::EnvironmentType::Development,
        script("sleep 2; echo finished"),
        "",
    )
    .await;
    let d = deploy(&a, "svc-0", "long", "slow", "").await.expect("long");
    let running = loop {
        let d = get(&a, &d.name).await;
        if d.state == dpb::DeploymentState::Running as i32 {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let worker_pid = running.attempts[0]
        .worker
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("worker pid")
        .to_owned();
    let victim = servers
        .iter()
        .position(|s| s.pid().to_string() == worker_pid)
        .expect("one of the two replicas runs it");
    servers[victim].signal("KILL");
    let survivor = if victim == 0 { &b } else { &a };
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let d = get(survivor, &d.name).await;
        if terminal(&d) {
            break d;
        }
        assert!(Instant::now() < deadline, "never finished: {d:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        done.state,
        dpb::DeploymentState::Succeeded as i32,
        "{done:#?}"
    );
    assert_eq!(done.attempt_count, 2);
    assert_eq!(done.interrupted_attempt_count, 1);
    assert_ne!(done.attempts[1].worker, done.attempts[0].worker);
    servers.iter_mut().for_each(|s| s.signal("TERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_replicas_keep_one_audit_chain() {
    if !postgres_configured() {
        return;
    }
    let (_db, _servers, [a, b]) = two_replicas(&[]).await;
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let client = if writer % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                environments(&client)
                    .create_environment(client.req(epb::CreateEnvironmentRequest {
                        parent: "tenants/acme".into(),
                        environment_id: format!("w{writer}-e{n}"),
                        environment: Some(epb::Environment {
                            r#type: epb::EnvironmentType::Development as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
                    .await
                    .expect("create");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let verified = a
        .audit()
        .verify_audit_chain(a.req(audit::VerifyAuditChainRequest {
            tenant: "tenants/acme".into(),
            anchors: vec![],
        }))
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.verified_count >= 160, "{verified:?}");
    let listed = environments(&b)
        .list_environments(b.req(epb::ListEnvironmentsRequest {
            parent: "tenants/acme".into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total_size, 160);

    // A request id retried against the other replica returns the first result.
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut uids = Vec::new();
    for client in [&a, &b] {
        let env = environments(client)
            .create_environment(client.req(epb::CreateEnvironmentRequest {
                parent: "tenants/acme".into(),
                environment_id: "retried".into(),
                environment: Some(epb::Environment {
                    r#type: epb::EnvironmentType::Development as i32,
                    ..Default::default()
                }),
                request_id: request_id.clone(),
                ..Default::default()
            }))
            .await
            .expect("first call and its retry both succeed")
            .into_inner();
        uids.push(env.uid);
    }
    assert_eq!(uids[0], uids[1]);
}
