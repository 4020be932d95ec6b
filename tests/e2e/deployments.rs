//! Deployments end to end, on SQLite and PostgreSQL, with the `command` driver running real
//! shell scripts: deploy and watch it live, failures with their output, cancellation that kills
//! the process tree, rollback, promotion, locks, idempotent retries, one running deployment per
//! (component, environment), the production permission — and a platformd killed with SIGKILL
//! mid-deployment that loses nothing when it comes back.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::catalog::{import, setup};
use crate::storage_test;
use crate::support::{Backend, ServerProcess, TestClient, TestDb, read_bootstrap_token};

type Deployments =
    dpb::deployment_service_client::DeploymentServiceClient<tonic::transport::Channel>;
type Environments =
    epb::environment_service_client::EnvironmentServiceClient<tonic::transport::Channel>;

pub(crate) fn deployments(client: &TestClient) -> Deployments {
    Deployments::new(client.channel.clone())
}

pub(crate) fn environments(client: &TestClient) -> Environments {
    Environments::new(client.channel.clone())
}

/// A `command` driver whose deploy step is a shell script.
pub(crate) fn script(deploy: &str) -> epb::Driver {
    epb::Driver {
        driver: Some(epb::driver::Driver::Command(epb::CommandDriver {
            deploy: Some(epb::CommandStep {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), deploy.into()],
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

pub(crate) async fn components(admin: &TestClient, names: &[&str]) {
    let docs: String = names
        .iter()
        .map(|n| format!("---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: {n}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"))
        .collect();
    let imported = import(
        admin,
        vec![platform_api::platform::catalog::v1::ImportSource {
            path: "components.yaml".into(),
            content: docs,
        }],
        "",
    )
    .await
    .expect("components");
    assert_eq!(imported.failed_count, 0);
}

pub(crate) async fn environment(
    client: &TestClient,
    id: &str,
    r#type: epb::EnvironmentType,
    driver: epb::Driver,
    promotes_to: &str,
) -> epb::Environment {
    environments(client)
        .create_environment(client.req(epb::CreateEnvironmentRequest {
            parent: "tenants/acme".into(),
            environment_id: id.into(),
            environment: Some(epb::Environment {
                r#type: r#type as i32,
                driver: Some(driver),
                promotes_to: promotes_to.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("environment {id}: {e:?}"))
        .into_inner()
}

pub(crate) async fn deploy(
    client: &TestClient,
    component: &str,
    version: &str,
    env: &str,
    request_id: &str,
) -> Result<dpb::Deployment, tonic::Status> {
    deployments(client)
        .create_deployment(client.req(dpb::CreateDeploymentRequest {
            parent: "tenants/acme".into(),
            deployment: Some(dpb::Deployment {
                component: component.into(),
                version: version.into(),
                environment: format!("tenants/acme/environments/{env}"),
                commit_sha: "0123abc".into(),
                ..Default::default()
            }),
            request_id: request_id.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

pub(crate) fn terminal(d: &dpb::Deployment) -> bool {
    matches!(
        dpb::DeploymentState::try_from(d.state),
        Ok(dpb::DeploymentState::Succeeded
            | dpb::DeploymentState::Failed
            | dpb::DeploymentState::Cancelled)
    )
}

/// The driver that does nothing and succeeds.
pub(crate) fn noop() -> epb::Driver {
    epb::Driver {
        driver: Some(epb::driver::Driver::Noop(epb::NoopDriver::default())),
    }
}

/// Deploys each (component, environment) as version `v{index}` and waits until all have
/// finished: real deployments, which fixtures then give their own facts and times.
pub(crate) async fn deploy_all_finished(
    client: &TestClient,
    targets: impl IntoIterator<Item = (&str, &str)>,
) -> Vec<String> {
    let mut names = Vec::new();
    for (i, (component, environment)) in targets.into_iter().enumerate() {
        let d = deploy(client, component, &format!("v{i}"), environment, "")
            .await
            .expect("deploy");
        names.push(d.name);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for name in &names {
        while !terminal(&get(client, name).await) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    names
}

pub(crate) async fn get(client: &TestClient, name: &str) -> dpb::Deployment {
    deployments(client)
        .get_deployment(client.req(dpb::GetDeploymentRequest { name: name.into() }))
        .await
        .expect("get deployment")
        .into_inner()
}

/// Polls until the deployment satisfies `done` (generous deadline: the machine is shared).
pub(crate) async fn wait_until(
    client: &TestClient,
    name: &str,
    done: impl Fn(&dpb::Deployment) -> bool,
) -> dpb::Deployment {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = get(client, name).await;
        if done(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "deployment never got there: {d:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn log_text(client: &TestClient, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = deployments(client)
            .get_deployment_log(client.req(dpb::GetDeploymentLogRequest {
                name: name.into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .expect("log")
            .into_inner();
        out.extend(page.lines.into_iter().map(|l| l.text));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

const ECHO: &str = "echo \"deploying $PLATFORM_COMPONENT $PLATFORM_VERSION to $PLATFORM_ENVIRONMENT\"; echo \"attempt $PLATFORM_ATTEMPT\" >&2";

storage_test!(
    deployments_run_watch_roll_back_and_promote,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        components(&admin, &["payments"]).await;
        environment(
            &admin,
            "staging",
            epb::EnvironmentType::Staging,
            script(ECHO),
            "",
        )
        .await;
        environment(
            &admin,
            "dev",
            epb::EnvironmentType::Development,
            script(ECHO),
            "tenants/acme/environments/staging",
        )
        .await;

        // Deploy and watch it live until the stream ends.
        let request_id = uuid::Uuid::new_v4().to_string();
        let v1 = deploy(&admin, "payments", "v1", "dev", &request_id)
            .await
            .expect("deploy v1");
        assert_eq!(v1.component, "component:default/payments");
        assert_eq!(v1.state, dpb::DeploymentState::Queued as i32);
        let mut stream = deployments(&admin)
            .watch_deployment(admin.req(dpb::WatchDeploymentRequest {
                name: v1.name.clone(),
                after_sequence: 0,
            }))
            .await
            .expect("watch")
            .into_inner();
        let mut states = Vec::new();
        let mut lines = Vec::new();
        let mut last_seq = 0;
        while let Some(event) = tokio::time::timeout(Duration::from_secs(90), stream.next())
            .await
            .expect("the watch ends")
        {
            match event.expect("event").event {
                Some(dpb::watch_deployment_response::Event::Deployment(d)) => {
                    if states.last() != Some(&d.state) {
                        states.push(d.state);
                    }
                }
                Some(dpb::watch_deployment_response::Event::LogLine(l)) => {
                    assert_eq!(l.sequence, last_seq + 1, "no gaps, no duplicates");
                    last_seq = l.sequence;
                    lines.push((l.stream, l.text));
                }
                None => panic!("empty event"),
            }
        }
        assert_eq!(
            states.last(),
            Some(&(dpb::DeploymentState::Succeeded as i32)),
            "{states:?}"
        );
        assert!(
            lines.contains(&(
                dpb::LogStream::Stdout as i32,
                "deploying component:default/payments v1 to dev".to_owned()
            )),
            "{lines:#?}"
        );
        assert!(lines.contains(&(dpb::LogStream::Stderr as i32, "attempt 1".to_owned())));
        assert!(
            lines
                .iter()
                .any(|(s, t)| *s == dpb::LogStream::System as i32 && t.starts_with("SUCCEEDED"))
        );
        let v1 = get(&admin, &v1.name).await;
        assert_eq!(v1.log_line_count, last_seq);
        assert_eq!(v1.attempt_count, 1);
        assert_eq!(v1.result.as_ref().and_then(|r| r.exit_code), Some(0));
        assert_eq!(
            v1.snapshot.as_ref().map(|s| s.driver.as_str()),
            Some("command")
        );
        assert_eq!(
            log_text(&admin, &v1.name).await.len() as i64,
            v1.log_line_count
        );

        // A retried create returns the first deployment.
        let again = deploy(&admin, "payments", "v1", "dev", &request_id)
            .await
            .expect("retry");
        assert_eq!(again.name, v1.name);
        assert_eq!(again.state, dpb::DeploymentState::Succeeded as i32);

        // v2, then roll it back: the new deployment runs v1 again.
        let v2 = deploy(&admin, "payments", "v2", "dev", "")
            .await
            .expect("v2");
        let v2 = wait_until(&admin, &v2.name, terminal).await;
        assert_eq!(v2.state, dpb::DeploymentState::Succeeded as i32);
        let rollback = deployments(&admin)
            .rollback_deployment(admin.req(dpb::RollbackDeploymentRequest {
                name: v2.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("rollback")
            .into_inner();
        assert_eq!(rollback.version, "v1");
        assert_eq!(rollback.rollback_of, v2.name);
        assert_eq!(rollback.rollback_target, v1.name);
        let rollback = wait_until(&admin, &rollback.name, terminal).await;
        assert_eq!(rollback.state, dpb::DeploymentState::Succeeded as i32);
        assert!(
            log_text(&admin, &rollback.name)
                .await
                .contains(&"deploying component:default/payments v1 to dev".to_owned())
        );

        // Promote v2 from dev to staging.
        let promoted = deployments(&admin)
            .promote_deployment(admin.req(dpb::PromoteDeploymentRequest {
                name: v2.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("promote")
            .into_inner();
        assert_eq!(promoted.environment, "tenants/acme/environments/staging");
        assert_eq!(
            (promoted.version.as_str(), promoted.promoted_from.as_str()),
            ("v2", v2.name.as_str())
        );
        let promoted = wait_until(&admin, &promoted.name, terminal).await;
        assert_eq!(promoted.state, dpb::DeploymentState::Succeeded as i32);
        // staging promotes nowhere.
        let nowhere = deployments(&admin)
            .promote_deployment(admin.req(dpb::PromoteDeploymentRequest {
                name: promoted.name.clone(),
                ..Default::default()
            }))
            .await
            .expect_err("no promotes_to");
        assert_eq!(nowhere.code(), Code::FailedPrecondition);

        // A lock refuses new deployments, naming its reason.
        environments(&admin)
            .lock_environment(admin.req(epb::LockEnvironmentRequest {
                name: "tenants/acme/environments/staging".into(),
                reason: "release freeze".into(),
                ..Default::default()
            }))
            .await
            .expect("lock");
        let refused = deploy(&admin, "payments", "v3", "staging", "")
            .await
            .expect_err("locked");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("release freeze"), "{refused:?}");

        // Lists filter and page newest first.
        let listed = deployments(&admin)
            .list_deployments(
                admin.req(dpb::ListDeploymentsRequest {
                    parent: "tenants/acme".into(),
                    filter:
                        "environment = \"tenants/acme/environments/dev\" AND state = \"SUCCEEDED\""
                            .into(),
                    page_size: 2,
                    ..Default::default()
                }),
            )
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.total_size, 3);
        assert_eq!(listed.deployments[0].name, rollback.name);
        assert!(!listed.next_page_token.is_empty());
        server.stop().await;
    }
);

storage_test!(
    failures_cancellation_and_bad_input_are_handled,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        components(&admin, &["payments", "web"]).await;
        let dir = tempfile::tempdir().expect("dir");
        let pid_file = dir.path().join("pid");
        environment(
            &admin,
            "broken",
            epb::EnvironmentType::Development,
            script(
                "echo boom; printf 'bin \\377\\376 \\033[31mred\\n'; head -c 100000 /dev/zero | tr '\\0' a; echo; exit 3",
            ),
            "",
        )
        .await;
        environment(
            &admin,
            "slow",
            epb::EnvironmentType::Development,
            script(&format!(
                "sleep 1000 & echo $! > {}; wait",
                pid_file.display()
            )),
            "",
        )
        .await;

        let failed = deploy(&admin, "payments", "v1", "broken", "")
            .await
            .expect("deploy");
        let failed = wait_until(&admin, &failed.name, terminal).await;
        assert_eq!(failed.state, dpb::DeploymentState::Failed as i32);
        assert_eq!(failed.result.as_ref().and_then(|r| r.exit_code), Some(3));
        assert_eq!(failed.state_message, "exited with status 3");
        let log = log_text(&admin, &failed.name).await;
        assert!(log.contains(&"boom".to_owned()), "{log:#?}");
        assert!(
            log.iter()
                .any(|l| l.contains('\u{fffd}') && l.contains("\\x1b")),
            "{log:#?}"
        );
        // A 100,000-byte line is stored cut at the line limit (16 KiB) and flagged.
        let lines = deployments(&admin)
            .get_deployment_log(admin.req(dpb::GetDeploymentLogRequest {
                name: failed.name.clone(),
                ..Default::default()
            }))
            .await
            .expect("log")
            .into_inner()
            .lines;
        let long = lines
            .iter()
            .find(|l| l.text.starts_with("aaaa"))
            .expect("the long line");
        assert!(long.truncated, "{:?}", long.text.len());
        assert!(long.text.len() <= 16 * 1024 && long.text.len() > 1000);

        // Cancel kills the script and what it started.
        let slow = deploy(&admin, "web", "v1", "slow", "")
            .await
            .expect("deploy");
        wait_until(&admin, &slow.name, |d| {
            d.state == dpb::DeploymentState::Running as i32
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let sleeper: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the script never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(Path::new(&format!("/proc/{sleeper}")).exists());
        let cancelling = deployments(&admin)
            .cancel_deployment(admin.req(dpb::CancelDeploymentRequest {
                name: slow.name.clone(),
                reason: "wrong version".into(),
                ..Default::default()
            }))
            .await
            .expect("cancel")
            .into_inner();
        assert!(cancelling.cancellation.is_some());
        let cancelled = wait_until(&admin, &slow.name, terminal).await;
        assert_eq!(
            cancelled.state,
            dpb::DeploymentState::Cancelled as i32,
            "{cancelled:#?}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{sleeper}")).exists() {
            assert!(
                Instant::now() < deadline,
                "the script's child survived the cancel"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let again = deployments(&admin)
            .cancel_deployment(admin.req(dpb::CancelDeploymentRequest {
                name: slow.name.clone(),
                ..Default::default()
            }))
            .await
            .expect_err("already cancelled");
        assert_eq!(again.code(), Code::FailedPrecondition);

        // Bad input.
        for (component, version, env, code) in [
            ("nothing", "v1", "slow", Code::NotFound),
            ("payments", "v1", "nowhere", Code::NotFound),
            ("api:payments", "v1", "slow", Code::InvalidArgument),
            ("payments", "has space", "slow", Code::InvalidArgument),
            ("payments", "", "slow", Code::InvalidArgument),
        ] {
            let err = deploy(&admin, component, version, env, "")
                .await
                .expect_err(component);
            assert_eq!(err.code(), code, "{component} {version} {env}: {err:?}");
        }
        let wrong_tenant = deployments(&admin)
            .create_deployment(admin.req(dpb::CreateDeploymentRequest {
                parent: "tenants/acme".into(),
                deployment: Some(dpb::Deployment {
                    component: "payments".into(),
                    version: "v1".into(),
                    environment: "tenants/other/environments/slow".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect_err("another tenant's environment");
        assert!(matches!(
            wrong_tenant.code(),
            Code::InvalidArgument | Code::PermissionDenied
        ));
        server.stop().await;
    }
);

storage_test!(
    one_deployment_runs_per_component_and_environment,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        components(&admin, &["payments"]).await;
        let dir = tempfile::tempdir().expect("dir");
        let lock = dir.path().join("lock");
        // Fails (exit 9) if another deployment of the lane is running at the same time.
        let body = format!(
            "mkdir {lock} || exit 9; echo \"$PLATFORM_VERSION\" >> {order}; sleep 0.3; rmdir {lock}",
            lock = lock.display(),
            order = dir.path().join("order").display()
        );
        environment(
            &admin,
            "dev",
            epb::EnvironmentType::Development,
            script(&body),
            "",
        )
        .await;
        let mut names = Vec::new();
        for v in ["v1", "v2", "v3", "v4"] {
            names.push(
                deploy(&admin, "payments", v, "dev", "")
                    .await
                    .expect("deploy")
                    .name,
            );
        }
        for name in &names {
            let d = wait_until(&admin, name, terminal).await;
            assert_eq!(d.state, dpb::DeploymentState::Succeeded as i32, "{d:#?}");
        }
        let order = std::fs::read_to_string(dir.path().join("order")).expect("order");
        assert_eq!(order, "v1\nv2\nv3\nv4\n");
        server.stop().await;
    }
);

storage_test!(
    concurrent_creates_commit_together_each_with_its_own_answer,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        components(&admin, &["payments", "web"]).await;
        for (id, r#type) in [
            ("dev", epb::EnvironmentType::Development),
            ("frozen", epb::EnvironmentType::Development),
            ("prod", epb::EnvironmentType::Production),
        ] {
            environment(&admin, id, r#type, noop(), "").await;
        }
        environments(&admin)
            .lock_environment(admin.req(epb::LockEnvironmentRequest {
                name: "tenants/acme/environments/frozen".into(),
                reason: "release freeze".into(),
                ..Default::default()
            }))
            .await
            .expect("lock");
        crate::iam_audit::bind(&admin, "acme", "dana", "user:dana", "developer", "")
            .await
            .expect("bind");
        let dana = server.user("dana").await;
        // The database refuses one version's row: that create alone must fail.
        let poison = match backend {
            Backend::Sqlite => vec![
                "CREATE TRIGGER poison BEFORE INSERT ON deployments WHEN NEW.version = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
            ],
            Backend::Postgres => vec![
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.version = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER poison BEFORE INSERT ON deployments FOR EACH ROW EXECUTE FUNCTION poison()",
            ],
        };
        for statement in poison {
            sqlx::query(statement)
                .execute(server.store.pool())
                .await
                .expect("install the poison trigger");
        }

        // What each concurrent call is expected to get.
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Expect {
            Created,
            Refused(Code),
            /// One of the calls sharing this request id (by different principals) is created,
            /// the other refused.
            Contested,
        }
        let retried: Vec<String> = (0..15).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let contested: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let mut calls: Vec<(&TestClient, &str, String, &str, String, Expect)> = Vec::new();
        for i in 0..30 {
            let component = if i % 2 == 0 { "payments" } else { "web" };
            calls.push((
                &admin,
                component,
                format!("v{i}"),
                "dev",
                String::new(),
                Expect::Created,
            ));
        }
        for (i, id) in retried.iter().enumerate() {
            for _ in 0..3 {
                calls.push((
                    &admin,
                    "payments",
                    format!("r{i}"),
                    "dev",
                    id.clone(),
                    Expect::Created,
                ));
            }
        }
        for id in &contested {
            calls.push((
                &admin,
                "web",
                "c".into(),
                "dev",
                id.clone(),
                Expect::Contested,
            ));
            calls.push((
                &dana,
                "web",
                "c".into(),
                "dev",
                id.clone(),
                Expect::Contested,
            ));
        }
        for i in 0..8 {
            let v = format!("x{i}");
            calls.push((
                &admin,
                "payments",
                v.clone(),
                "frozen",
                String::new(),
                Expect::Refused(Code::FailedPrecondition),
            ));
            calls.push((
                &admin,
                "nothing",
                v.clone(),
                "dev",
                String::new(),
                Expect::Refused(Code::NotFound),
            ));
            calls.push((
                &admin,
                "payments",
                v.clone(),
                "nowhere",
                String::new(),
                Expect::Refused(Code::NotFound),
            ));
            calls.push((
                &dana,
                "payments",
                v.clone(),
                "prod",
                String::new(),
                Expect::Refused(Code::PermissionDenied),
            ));
            calls.push((&dana, "web", v, "dev", String::new(), Expect::Created));
        }
        calls.push((
            &admin,
            "payments",
            "poison".into(),
            "dev",
            String::new(),
            Expect::Refused(Code::Internal),
        ));
        let results = futures::future::join_all(calls.iter().map(
            |(client, component, version, env, request_id, _)| {
                deploy(client, component, version, env, request_id)
            },
        ))
        .await;

        let mut created = std::collections::HashSet::new();
        let mut by_request_id: std::collections::HashMap<
            &str,
            Vec<&Result<dpb::Deployment, tonic::Status>>,
        > = Default::default();
        let mut refused = 0;
        for (call, result) in calls.iter().zip(&results) {
            let (_, component, version, env, request_id, expect) = call;
            let call =
                format!("{component} {version} to {env} ({request_id}), expecting {expect:?}");
            if !request_id.is_empty() {
                by_request_id
                    .entry(request_id.as_str())
                    .or_default()
                    .push(result);
            }
            match (expect, result) {
                (Expect::Created, Ok(d)) => {
                    assert_eq!(d.version, *version);
                    assert_eq!(d.environment, format!("tenants/acme/environments/{env}"));
                    assert_eq!(d.component, format!("component:default/{component}"));
                    // A retry answered after the engine ran it shows more.
                    assert!(d.log_line_count >= 1, "{d:?}");
                    created.insert(d.name.clone());
                }
                (Expect::Refused(code), Err(status)) => {
                    assert_eq!(status.code(), *code, "{call:?}: {status:?}");
                    if *code == Code::FailedPrecondition {
                        assert!(status.message().contains("release freeze"), "{status:?}");
                    }
                    if *code == Code::Internal {
                        assert!(!status.message().contains("poisoned"), "{status:?}");
                    }
                    refused += 1;
                }
                (Expect::Contested, _) => {}
                _ => panic!("{call:?} answered {result:?}"),
            }
        }
        // A request id sent three times at once by one caller: one deployment, three answers.
        for id in &retried {
            let answers = &by_request_id[id.as_str()];
            let names: std::collections::HashSet<_> = answers
                .iter()
                .map(|r| r.as_ref().expect("retried create").name.clone())
                .collect();
            assert_eq!(names.len(), 1, "{id}: {answers:?}");
        }
        // A request id two principals sent at once: the first create wins, the other is refused.
        for id in &contested {
            let answers = &by_request_id[id.as_str()];
            let won: Vec<_> = answers.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "{id}: {answers:?}");
            created.insert(won[0].name.clone());
            let lost = answers
                .iter()
                .find_map(|r| r.as_ref().err())
                .expect("refused");
            assert_eq!(lost.code(), Code::InvalidArgument, "{lost:?}");
            refused += 1;
        }
        assert_eq!(created.len(), 30 + 15 + 5 + 8);

        // Exactly the created deployments exist, each with its first log line, and every call
        // that got past its checks is in the audit trail once: created ones allowed, refused
        // ones failed. The chain verifies.
        let pool = server.store.pool();
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployments")
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(stored, created.len() as i64);
        let first_lines: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deployment_log WHERE seq = 1")
                .fetch_one(pool)
                .await
                .expect("count");
        assert_eq!(first_lines, stored);
        let audited = |outcome: i32| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM audit_events WHERE method = $1 AND outcome = $2",
            )
            .bind("/platform.deployments.v1.DeploymentService/CreateDeployment")
            .bind(outcome)
            .fetch_one(pool)
        };
        use platform_api::platform::audit::v1::Outcome;
        assert_eq!(
            audited(Outcome::Allowed as i32).await.expect("count"),
            created.len() as i64
        );
        assert_eq!(
            audited(Outcome::Failed as i32).await.expect("count"),
            refused
        );
        let report = crate::iam_audit::verify(&admin, "tenants/acme").await;
        assert!(report.ok, "{report:?}");
        server.stop().await;
    }
);

#[tokio::test]
async fn production_needs_the_production_permission() {
    let (_db, server, admin) = setup(Backend::Sqlite).await;
    components(&admin, &["payments"]).await;
    environment(
        &admin,
        "prod",
        epb::EnvironmentType::Production,
        script("true"),
        "",
    )
    .await;
    environment(
        &admin,
        "dev",
        epb::EnvironmentType::Development,
        script("true"),
        "",
    )
    .await;
    for (id, principal, role) in [
        ("dev", "user:dana", "developer"),
        ("dep", "user:derek", "deployer"),
    ] {
        admin
            .iam()
            .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
                parent: "tenants/acme".into(),
                role_binding_id: id.into(),
                role_binding: Some(iam::RoleBinding {
                    principal: principal.into(),
                    role: format!("tenants/acme/roles/{role}"),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("bind");
    }
    let dana = server.user("dana").await;
    deploy(&dana, "payments", "v1", "dev", "")
        .await
        .expect("developers deploy to dev");
    let denied = deploy(&dana, "payments", "v1", "prod", "")
        .await
        .expect_err("not to production");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let derek = server.user("derek").await;
    deploy(&derek, "payments", "v1", "prod", "")
        .await
        .expect("deployers may");
    server.stop().await;
}

/// SIGKILL platformd while deployments run; started again, it finishes every one of them, and
/// no deployment's script ever runs twice at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_deployment() {
    let db = TestDb::new(Backend::Sqlite).await;
    let args = ["--deploy-lease-secs=2", "--deploy-workers=4"];
    let first = ServerProcess::start(&db, &args).await;
    let token = read_bootstrap_token(db.data_dir.path());
    let admin = first.client().await.with_token(&token);
    admin
        .iam()
        .create_tenant(admin.req(iam::CreateTenantRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        }))
        .await
        .expect("tenant");
    let names: Vec<String> = (0..5).map(|i| format!("svc{i}")).collect();
    components(
        &admin,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    // A per-deployment pid lock: a second live run of the same deployment exits 9 (and the
    // deployment would end FAILED). A run killed with its process group leaves a stale lock.
    let body = format!(
        "L={d}/$PLATFORM_DEPLOYMENT.lock; if [ -e $L ] && kill -0 $(cat $L) 2>/dev/null; then exit 9; fi; echo $$ > $L; \
         echo $PLATFORM_DEPLOYMENT >> {d}/runs; sleep 2; rm -f $L",
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
    let mut queued = Vec::new();
    for round in 0..4 {
        for name in &names {
            queued.push(
                deploy(&admin, name, &format!("v{round}"), "dev", "")
                    .await
                    .expect("deploy")
                    .name,
            );
        }
    }
    // Kill it while the first wave runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("runs").exists() {
        assert!(Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("KILL");
    let _ = first.wait_exit(Duration::from_secs(10)).await;

    let second = ServerProcess::start(&db, &args).await;
    let admin = second.client().await.with_token(&token);
    let mut interrupted = 0;
    for name in &queued {
        let d = wait_until(&admin, name, terminal).await;
        assert_eq!(d.state, dpb::DeploymentState::Succeeded as i32, "{d:#?}");
        interrupted += d.interrupted_attempt_count;
        if d.interrupted_attempt_count > 0 {
            assert!(d.attempts.first().is_some_and(|a| a.interrupted), "{d:#?}");
        }
    }
    assert!(interrupted >= 1, "the kill interrupted nothing");
    let runs = std::fs::read_to_string(dir.path().join("runs")).expect("runs");
    for name in &queued {
        let id = name.rsplit('/').next().unwrap_or_default();
        assert!(runs.lines().any(|l| l == id), "{id} never ran");
    }
}
