//! Environments end to end, on SQLite and PostgreSQL: provision and teardown steps run by the
//! `command` driver (real shell scripts) and watched live, failures, forced deletes that stop
//! running work, locks, expiry and the reaper, filters and paging, and bad input.

use std::time::{Duration, Instant};

use futures::StreamExt;
use platform_api::platform::audit::v1 as audit;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::iam::v1 as iam;
use tonic::Code;

use crate::catalog::{import, setup};
use crate::storage_test;
use crate::support::{Backend, TestClient};

type Environments =
    epb::environment_service_client::EnvironmentServiceClient<tonic::transport::Channel>;

fn environments(client: &TestClient) -> Environments {
    Environments::new(client.channel.clone())
}

fn step(script: &str) -> epb::CommandStep {
    epb::CommandStep {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// A `command` driver with the given provision and teardown scripts.
fn driver(provision: Option<&str>, teardown: Option<&str>) -> epb::Driver {
    epb::Driver {
        driver: Some(epb::driver::Driver::Command(epb::CommandDriver {
            deploy: Some(step("sleep 30")),
            provision: provision.map(step),
            teardown: teardown.map(step),
            ..Default::default()
        })),
    }
}

fn name(id: &str) -> String {
    format!("tenants/acme/environments/{id}")
}

async fn create(
    client: &TestClient,
    id: &str,
    env: epb::Environment,
) -> Result<epb::Environment, tonic::Status> {
    environments(client)
        .create_environment(client.req(epb::CreateEnvironmentRequest {
            parent: "tenants/acme".into(),
            environment_id: id.into(),
            environment: Some(env),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

fn typed(t: epb::EnvironmentType) -> epb::Environment {
    epb::Environment {
        r#type: t as i32,
        ..Default::default()
    }
}

async fn get(client: &TestClient, id: &str) -> epb::Environment {
    environments(client)
        .get_environment(client.req(epb::GetEnvironmentRequest { name: name(id) }))
        .await
        .expect("get environment")
        .into_inner()
}

async fn delete(
    client: &TestClient,
    id: &str,
    force: bool,
) -> Result<epb::Environment, tonic::Status> {
    environments(client)
        .delete_environment(client.req(epb::DeleteEnvironmentRequest {
            name: name(id),
            force,
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

fn state(env: &epb::Environment) -> epb::EnvironmentState {
    epb::EnvironmentState::try_from(env.state).expect("a known state")
}

/// Polls until the environment is in `want` (generous deadline: the machine is shared).
async fn wait_state(
    client: &TestClient,
    id: &str,
    want: epb::EnvironmentState,
) -> epb::Environment {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let env = get(client, id).await;
        if state(&env) == want {
            return env;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {want:?}: {env:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log(
    client: &TestClient,
    id: &str,
    operation: epb::EnvironmentOperationType,
) -> Vec<String> {
    environments(client)
        .get_environment_log(client.req(epb::GetEnvironmentLogRequest {
            name: name(id),
            operation: operation as i32,
            ..Default::default()
        }))
        .await
        .expect("log")
        .into_inner()
        .lines
        .into_iter()
        .map(|l| l.text)
        .collect()
}

/// The fields an INVALID_ARGUMENT names in its BadRequest details, comma-separated.
pub(crate) fn field_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

storage_test!(
    provision_watch_and_teardown_run_the_driver,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("provisioned");
        let provision = format!(
            "echo provisioning $PLATFORM_ENVIRONMENT_TYPE; sleep 1; echo ok > {}; echo done >&2",
            marker.display()
        );
        let teardown = format!("echo tearing down; rm {}", marker.display());
        let env = create(
            &admin,
            "staging",
            epb::Environment {
                r#type: epb::EnvironmentType::Staging as i32,
                display_name: "Staging".into(),
                labels: [("team".to_owned(), "payments".to_owned())].into(),
                variables: [("REGION".to_owned(), "eu".to_owned())].into(),
                driver: Some(driver(Some(&provision), Some(&teardown))),
                ..Default::default()
            },
        )
        .await
        .expect("create");
        assert_eq!(state(&env), epb::EnvironmentState::Provisioning);
        assert_eq!(env.name, name("staging"));
        assert!(!env.uid.is_empty() && !env.etag.is_empty());
        assert!(
            env.creator
                .as_ref()
                .is_some_and(|a| !a.principal.is_empty())
        );

        // Watch it: the snapshot first, then the provision log, then READY.
        let mut stream = environments(&admin)
            .watch_environment(admin.req(epb::WatchEnvironmentRequest {
                name: name("staging"),
                after_sequence: 0,
            }))
            .await
            .expect("watch")
            .into_inner();
        let mut lines = Vec::new();
        let mut snapshots = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
            match event.expect("event").event.expect("set") {
                epb::watch_environment_response::Event::Environment(e) => {
                    let ready = state(&e) == epb::EnvironmentState::Ready;
                    snapshots.push(e);
                    if ready {
                        break;
                    }
                }
                epb::watch_environment_response::Event::LogLine(l) => lines.push(l),
            }
        }
        assert_eq!(state(&snapshots[0]), epb::EnvironmentState::Provisioning);
        let ready = snapshots.last().expect("snapshots");
        assert_eq!(state(ready), epb::EnvironmentState::Ready, "{snapshots:?}");
        let provisioning = ready.provisioning.as_ref().expect("provisioning record");
        assert_eq!(
            provisioning.state,
            epb::EnvironmentOperationState::Succeeded as i32
        );
        assert_eq!(provisioning.attempt_count, 1);
        assert_eq!(
            provisioning.result.as_ref().and_then(|r| r.exit_code),
            Some(0)
        );
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert!(texts.contains(&"provisioning staging"), "{texts:?}");
        assert!(texts.contains(&"done"), "{texts:?}");
        let seqs: Vec<i64> = lines.iter().map(|l| l.sequence).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "no gaps");
        assert!(
            lines
                .iter()
                .all(|l| l.operation == epb::EnvironmentOperationType::Provision as i32)
        );
        assert!(marker.exists(), "the provision script ran");

        // Deployments run here now; delete refuses while one runs, force cancels it.
        import(
            &admin,
            vec![platform_api::platform::catalog::v1::ImportSource {
                path: "c.yaml".into(),
                content: "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: payments\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n".into(),
            }],
            "",
        )
        .await
        .expect("component");
        let deployment =
            dpb::deployment_service_client::DeploymentServiceClient::new(admin.channel.clone())
                .create_deployment(admin.req(dpb::CreateDeploymentRequest {
                    parent: "tenants/acme".into(),
                    deployment: Some(dpb::Deployment {
                        component: "payments".into(),
                        version: "v1".into(),
                        environment: name("staging"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
                .expect("deploy")
                .into_inner();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut deployments =
            dpb::deployment_service_client::DeploymentServiceClient::new(admin.channel.clone());
        loop {
            let d = deployments
                .get_deployment(admin.req(dpb::GetDeploymentRequest {
                    name: deployment.name.clone(),
                }))
                .await
                .expect("get")
                .into_inner();
            if d.state == dpb::DeploymentState::Running as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "never started: {d:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = delete(&admin, "staging", false).await.expect_err("busy");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(
            state(&get(&admin, "staging").await),
            epb::EnvironmentState::Ready
        );

        let deleting = delete(&admin, "staging", true)
            .await
            .expect("forced delete");
        assert_eq!(state(&deleting), epb::EnvironmentState::Terminating);
        let gone = wait_state(&admin, "staging", epb::EnvironmentState::Terminated).await;
        let d = deployments
            .get_deployment(admin.req(dpb::GetDeploymentRequest {
                name: deployment.name.clone(),
            }))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(d.state, dpb::DeploymentState::Cancelled as i32, "{d:?}");
        let teardown = gone.teardown.as_ref().expect("teardown record");
        assert_eq!(
            teardown.state,
            epb::EnvironmentOperationState::Succeeded as i32
        );
        assert!(gone.purge_time.is_some() && gone.delete_time.is_some());
        assert!(!marker.exists(), "the teardown script ran");
        let teardown_log = log(&admin, "staging", epb::EnvironmentOperationType::Teardown).await;
        assert!(
            teardown_log.iter().any(|l| l == "tearing down"),
            "{teardown_log:?}"
        );
        assert!(
            !teardown_log.iter().any(|l| l.starts_with("provisioning")),
            "the operation filter holds"
        );

        // A watch of a TERMINATED environment sends the backlog and ends with OK.
        let events: Vec<_> = environments(&admin)
            .watch_environment(admin.req(epb::WatchEnvironmentRequest {
                name: name("staging"),
                after_sequence: 0,
            }))
            .await
            .expect("watch")
            .into_inner()
            .collect()
            .await;
        assert!(events.iter().all(Result::is_ok));
        assert!(events.len() > lines.len());

        // Terminated: readable, listed only with show_deleted, its id not reusable yet.
        let listed = environments(&admin)
            .list_environments(admin.req(epb::ListEnvironmentsRequest {
                parent: "tenants/acme".into(),
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.total_size, 0);
        let listed = environments(&admin)
            .list_environments(admin.req(epb::ListEnvironmentsRequest {
                parent: "tenants/acme".into(),
                show_deleted: true,
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.environments.len(), 1);
        let again = create(&admin, "staging", typed(epb::EnvironmentType::Staging))
            .await
            .expect_err("id taken until purged");
        assert_eq!(again.code(), Code::AlreadyExists);
        let changed = environments(&admin)
            .update_environment(admin.req(epb::UpdateEnvironmentRequest {
                environment: Some(epb::Environment {
                    name: name("staging"),
                    description: "late".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
                ..Default::default()
            }))
            .await
            .expect_err("terminated is final");
        assert_eq!(changed.code(), Code::FailedPrecondition);
        server.stop().await;
    }
);

storage_test!(
    failures_and_forced_deletes_of_provisioning,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        // A failing provision step: FAILED with a message; a plain delete retries the teardown,
        // which fails too; a forced delete skips it.
        create(
            &admin,
            "broken",
            epb::Environment {
                r#type: epb::EnvironmentType::Development as i32,
                driver: Some(driver(Some("echo no quota >&2; exit 3"), Some("exit 4"))),
                ..Default::default()
            },
        )
        .await
        .expect("create");
        let failed = wait_state(&admin, "broken", epb::EnvironmentState::Failed).await;
        assert!(
            failed.state_message.contains("status 3"),
            "{}",
            failed.state_message
        );
        let lines = log(&admin, "broken", epb::EnvironmentOperationType::Provision).await;
        assert!(lines.iter().any(|l| l == "no quota"), "{lines:?}");
        let retried = delete(&admin, "broken", false).await.expect("delete");
        assert_eq!(state(&retried), epb::EnvironmentState::Terminating);
        let failed = wait_state(&admin, "broken", epb::EnvironmentState::Failed).await;
        assert_eq!(
            failed.teardown.as_ref().map(|t| t.state),
            Some(epb::EnvironmentOperationState::Failed as i32)
        );
        let forced = delete(&admin, "broken", true).await.expect("forced");
        assert_eq!(state(&forced), epb::EnvironmentState::Terminated);
        assert_eq!(
            forced.teardown.as_ref().map(|t| t.state),
            Some(epb::EnvironmentOperationState::Skipped as i32)
        );

        // A forced delete while provisioning runs: the provision step is stopped (its process
        // group killed), then the teardown runs.
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        create(
            &admin,
            "slow",
            epb::Environment {
                r#type: epb::EnvironmentType::Development as i32,
                driver: Some(driver(
                    Some(&format!("echo $$ > {}; sleep 300", pid_file.display())),
                    Some("echo torn down"),
                )),
                ..Default::default()
            },
        )
        .await
        .expect("create");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "provision never started");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let busy = delete(&admin, "slow", false)
            .await
            .expect_err("provisioning");
        assert_eq!(busy.code(), Code::FailedPrecondition);
        delete(&admin, "slow", true).await.expect("forced");
        let gone = wait_state(&admin, "slow", epb::EnvironmentState::Terminated).await;
        assert_eq!(
            gone.provisioning.as_ref().map(|p| p.state),
            Some(epb::EnvironmentOperationState::Cancelled as i32),
            "{gone:?}"
        );
        assert_eq!(
            gone.teardown.as_ref().map(|t| t.state),
            Some(epb::EnvironmentOperationState::Succeeded as i32)
        );
        let pid = std::fs::read_to_string(&pid_file).expect("pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the provision script was killed"
        );
        server.stop().await;
    }
);

storage_test!(locks_expiry_and_the_reaper, |backend: Backend| async move {
    let (_db, server, admin) = setup(backend).await;
    let preview = |ttl: i64| epb::Environment {
        r#type: epb::EnvironmentType::Preview as i32,
        expiration: Some(epb::environment::Expiration::Ttl(prost_types::Duration {
            seconds: ttl,
            nanos: 0,
        })),
        ..Default::default()
    };
    let short = create(&admin, "pr-1", preview(2)).await.expect("preview");
    assert_eq!(
        state(&short),
        epb::EnvironmentState::Ready,
        "noop: nothing to provision"
    );
    assert!(matches!(
        short.expiration,
        Some(epb::environment::Expiration::ExpireTime(_))
    ));
    create(&admin, "pr-2", preview(2)).await.expect("preview");
    create(&admin, "pr-3", preview(3600))
        .await
        .expect("preview");

    // pr-2 is locked: it does not expire while locked, and cannot be deleted.
    let locked = environments(&admin)
        .lock_environment(admin.req(epb::LockEnvironmentRequest {
            name: name("pr-2"),
            reason: "demo on friday".into(),
            ..Default::default()
        }))
        .await
        .expect("lock")
        .into_inner();
    assert_eq!(
        locked.lock.as_ref().map(|l| l.reason.as_str()),
        Some("demo on friday")
    );
    let twice = environments(&admin)
        .lock_environment(admin.req(epb::LockEnvironmentRequest {
            name: name("pr-2"),
            reason: "again".into(),
            ..Default::default()
        }))
        .await
        .expect_err("already locked");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert!(
        twice.message().contains("demo on friday"),
        "{}",
        twice.message()
    );
    let refused = delete(&admin, "pr-2", true).await.expect_err("locked");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // The reaper terminates pr-1 as system:platformd, audited; pr-2 (locked) and pr-3 stay.
    let gone = wait_state(&admin, "pr-1", epb::EnvironmentState::Terminated).await;
    assert_eq!(
        gone.teardown
            .as_ref()
            .and_then(|t| t.requested_by.as_ref())
            .map(|a| a.principal.as_str()),
        Some("system:platformd")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state(&get(&admin, "pr-2").await),
        epb::EnvironmentState::Ready
    );
    assert_eq!(
        state(&get(&admin, "pr-3").await),
        epb::EnvironmentState::Ready
    );
    let events = admin
        .audit()
        .list_audit_events(admin.req(audit::ListAuditEventsRequest {
            parent: "tenants/acme".into(),
            ..Default::default()
        }))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    assert!(
        events
            .iter()
            .any(|e| e.actor == "system:platformd" && e.resource == name("pr-1")),
        "the reaper's termination is audited"
    );

    // Renew: only with an expiry, never past the maximum TTL; unlocking lets pr-2 expire.
    let renewed = environments(&admin)
        .renew_environment(admin.req(epb::RenewEnvironmentRequest {
            name: name("pr-3"),
            expiration: Some(epb::renew_environment_request::Expiration::Ttl(
                prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                },
            )),
            ..Default::default()
        }))
        .await
        .expect("renew")
        .into_inner();
    assert_ne!(renewed.etag, get(&admin, "pr-2").await.etag);
    let too_long = environments(&admin)
        .renew_environment(admin.req(epb::RenewEnvironmentRequest {
            name: name("pr-3"),
            expiration: Some(epb::renew_environment_request::Expiration::Ttl(
                prost_types::Duration {
                    seconds: 365 * 24 * 3600,
                    nanos: 0,
                },
            )),
            ..Default::default()
        }))
        .await
        .expect_err("past the maximum TTL");
    assert_eq!(too_long.code(), Code::InvalidArgument);
    create(&admin, "dev", typed(epb::EnvironmentType::Development))
        .await
        .expect("dev");
    let no_expiry = environments(&admin)
        .renew_environment(admin.req(epb::RenewEnvironmentRequest {
            name: name("dev"),
            expiration: Some(epb::renew_environment_request::Expiration::Ttl(
                prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                },
            )),
            ..Default::default()
        }))
        .await
        .expect_err("nothing to renew");
    assert_eq!(no_expiry.code(), Code::FailedPrecondition);
    environments(&admin)
        .unlock_environment(admin.req(epb::UnlockEnvironmentRequest {
            name: name("pr-2"),
            ..Default::default()
        }))
        .await
        .expect("unlock");
    wait_state(&admin, "pr-2", epb::EnvironmentState::Terminated).await;
    let not_locked = environments(&admin)
        .unlock_environment(admin.req(epb::UnlockEnvironmentRequest {
            name: name("dev"),
            ..Default::default()
        }))
        .await
        .expect_err("not locked");
    assert_eq!(not_locked.code(), Code::FailedPrecondition);
    server.stop().await;
});

storage_test!(
    list_filters_order_and_pages,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        for (id, t, team, display) in [
            ("alpha", epb::EnvironmentType::Development, "web", "Zeta"),
            ("bravo", epb::EnvironmentType::Staging, "web", "Yankee"),
            ("charlie", epb::EnvironmentType::Production, "data", "Xray"),
            (
                "delta",
                epb::EnvironmentType::Development,
                "data",
                "Whiskey",
            ),
            ("echo", epb::EnvironmentType::Development, "web", "Victor"),
        ] {
            create(
                &admin,
                id,
                epb::Environment {
                    r#type: t as i32,
                    display_name: display.into(),
                    labels: [("team".to_owned(), team.to_owned())].into(),
                    promotes_to: if id == "bravo" {
                        name("alpha")
                    } else {
                        String::new()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        }
        environments(&admin)
            .lock_environment(admin.req(epb::LockEnvironmentRequest {
                name: name("charlie"),
                reason: "freeze".into(),
                ..Default::default()
            }))
            .await
            .expect("lock");
        let list = |filter: &str, order_by: &str, page_size: i32, page_token: String| {
            let req = admin.req(epb::ListEnvironmentsRequest {
                parent: "tenants/acme".into(),
                filter: filter.into(),
                order_by: order_by.into(),
                page_size,
                page_token,
                ..Default::default()
            });
            let mut client = environments(&admin);
            async move { client.list_environments(req).await.map(|r| r.into_inner()) }
        };
        let ids = |r: &epb::ListEnvironmentsResponse| -> Vec<String> {
            r.environments
                .iter()
                .map(|e| e.name.rsplit('/').next().unwrap_or_default().to_owned())
                .collect()
        };
        for (filter, want) in [
            ("type = \"DEVELOPMENT\"", vec!["alpha", "delta", "echo"]),
            ("labels.team = \"web\"", vec!["alpha", "bravo", "echo"]),
            ("labels.team != \"web\"", vec!["charlie", "delta"]),
            (
                "type = \"DEVELOPMENT\" AND labels.team = \"data\"",
                vec!["delta"],
            ),
            ("locked = true", vec!["charlie"]),
            (
                "(type = \"STAGING\" OR type = \"PRODUCTION\")",
                vec!["bravo", "charlie"],
            ),
            (
                "promotes_to = \"tenants/acme/environments/alpha\"",
                vec!["bravo"],
            ),
            (
                "state = \"READY\" AND create_time > \"2000-01-01T00:00:00Z\"",
                vec!["alpha", "bravo", "charlie", "delta", "echo"],
            ),
        ] {
            let r = list(filter, "", 0, String::new()).await.expect(filter);
            assert_eq!(ids(&r), want, "{filter}");
            assert_eq!(r.total_size as usize, want.len(), "{filter}");
        }
        // Pages of two, ordered by display name descending, cover everything once.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = list("", "display_name desc", 2, token.clone())
                .await
                .expect("page");
            assert_eq!(r.total_size, 5);
            seen.extend(ids(&r));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
        let first = list("", "", 2, String::new()).await.expect("page");
        let wrong = list("type = \"STAGING\"", "", 2, first.next_page_token)
            .await
            .expect_err("token of another query");
        assert_eq!(wrong.code(), Code::InvalidArgument);
        for (filter, order_by) in [
            ("colour = \"red\"", ""),
            ("type = \"HUGE\"", ""),
            ("create_time > \"yesterday\"", ""),
            ("", "size"),
        ] {
            let bad = list(filter, order_by, 0, String::new())
                .await
                .expect_err(filter);
            assert_eq!(bad.code(), Code::InvalidArgument, "{filter} {order_by}");
        }
        server.stop().await;
    }
);

storage_test!(
    bad_input_permissions_etags_and_retries,
    |backend: Backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let invalid = [
            (
                "Bad_Id",
                typed(epb::EnvironmentType::Development),
                "environment_id",
            ),
            ("ok", epb::Environment::default(), "environment.type"),
            (
                "ok",
                epb::Environment {
                    r#type: epb::EnvironmentType::Staging as i32,
                    expiration: Some(epb::environment::Expiration::Ttl(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    })),
                    ..Default::default()
                },
                "environment.ttl",
            ),
            (
                "ok",
                epb::Environment {
                    r#type: epb::EnvironmentType::Staging as i32,
                    variables: [("PLATFORM_TENANT".to_owned(), "x".to_owned())].into(),
                    ..Default::default()
                },
                "environment.variables[PLATFORM_TENANT]",
            ),
            (
                "ok",
                epb::Environment {
                    r#type: epb::EnvironmentType::Staging as i32,
                    driver: Some(epb::Driver {
                        driver: Some(epb::driver::Driver::Command(epb::CommandDriver::default())),
                    }),
                    ..Default::default()
                },
                "environment.driver.command.deploy",
            ),
            (
                "ok",
                epb::Environment {
                    r#type: epb::EnvironmentType::Staging as i32,
                    promotes_to: "environments/x".into(),
                    ..Default::default()
                },
                "environment.promotes_to",
            ),
        ];
        for (id, env, field) in invalid {
            let status = create(&admin, id, env).await.expect_err(field);
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(field_of(&status), field);
        }
        let missing = create(
            &admin,
            "ok",
            epb::Environment {
                r#type: epb::EnvironmentType::Staging as i32,
                promotes_to: name("nowhere"),
                ..Default::default()
            },
        )
        .await
        .expect_err("promotes to nothing");
        assert_eq!(missing.code(), Code::NotFound);
        let secrets = create(
            &admin,
            "ok",
            epb::Environment {
                r#type: epb::EnvironmentType::Staging as i32,
                secret_bindings: [("DB".to_owned(), "tenants/acme/secrets/db".to_owned())].into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("no such secret");
        assert_eq!(secrets.code(), Code::InvalidArgument);
        assert!(secrets.message().contains("does not exist"), "{secrets:?}");

        // validate_only writes nothing; a retried request_id creates once.
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut client = environments(&admin);
        let dry = client
            .create_environment(admin.req(epb::CreateEnvironmentRequest {
                parent: "tenants/acme".into(),
                environment_id: "dev".into(),
                environment: Some(typed(epb::EnvironmentType::Development)),
                validate_only: true,
                ..Default::default()
            }))
            .await
            .expect("dry run")
            .into_inner();
        assert_eq!(dry.name, name("dev"));
        let nothing = client
            .get_environment(admin.req(epb::GetEnvironmentRequest { name: name("dev") }))
            .await
            .expect_err("not written");
        assert_eq!(nothing.code(), Code::NotFound);
        let mut created = Vec::new();
        for _ in 0..2 {
            created.push(
                client
                    .create_environment(admin.req(epb::CreateEnvironmentRequest {
                        parent: "tenants/acme".into(),
                        environment_id: "dev".into(),
                        environment: Some(typed(epb::EnvironmentType::Development)),
                        request_id: request_id.clone(),
                        ..Default::default()
                    }))
                    .await
                    .expect("create")
                    .into_inner(),
            );
        }
        assert_eq!(created[0].uid, created[1].uid);
        create(&admin, "staging", typed(epb::EnvironmentType::Staging))
            .await
            .expect("staging");

        // Updates: masks, etags, cycles.
        let update = |env: epb::Environment, paths: &[&str]| {
            let req = admin.req(epb::UpdateEnvironmentRequest {
                environment: Some(env),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                ..Default::default()
            });
            let mut client = environments(&admin);
            async move { client.update_environment(req).await.map(|r| r.into_inner()) }
        };
        let dev = get(&admin, "dev").await;
        let updated = update(
            epb::Environment {
                name: name("dev"),
                etag: dev.etag.clone(),
                description: "shared dev".into(),
                promotes_to: name("staging"),
                ..Default::default()
            },
            &["description", "promotes_to"],
        )
        .await
        .expect("update");
        assert_eq!(updated.description, "shared dev");
        assert_eq!(updated.promotes_to, name("staging"));
        assert_eq!(updated.display_name, "dev", "untouched fields stay");
        let stale = update(
            epb::Environment {
                name: name("dev"),
                etag: dev.etag.clone(),
                description: "again".into(),
                ..Default::default()
            },
            &["description"],
        )
        .await
        .expect_err("stale etag");
        assert_eq!(stale.code(), Code::Aborted);
        let cycle = update(
            epb::Environment {
                name: name("staging"),
                promotes_to: name("dev"),
                ..Default::default()
            },
            &["promotes_to"],
        )
        .await
        .expect_err("cycle");
        assert_eq!(cycle.code(), Code::InvalidArgument);
        for paths in [vec!["type"], vec![], vec!["colour"]] {
            let bad = update(
                epb::Environment {
                    name: name("dev"),
                    ..Default::default()
                },
                &paths,
            )
            .await
            .expect_err("bad mask");
            assert_eq!(bad.code(), Code::InvalidArgument, "{paths:?}");
        }

        // A developer creates and locks environments, but may not set drivers or delete.
        admin
            .iam()
            .create_role_binding(admin.req(iam::CreateRoleBindingRequest {
                parent: "tenants/acme".into(),
                role_binding_id: "dana".into(),
                role_binding: Some(iam::RoleBinding {
                    principal: "user:dana".into(),
                    role: "tenants/acme/roles/developer".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("bind");
        let dana = server.user("dana").await;
        create(&dana, "dana-dev", typed(epb::EnvironmentType::Development))
            .await
            .expect("developers create environments");
        let with_driver = create(
            &dana,
            "dana-cmd",
            epb::Environment {
                r#type: epb::EnvironmentType::Development as i32,
                driver: Some(driver(None, None)),
                ..Default::default()
            },
        )
        .await
        .expect_err("drivers need their own permission");
        assert_eq!(with_driver.code(), Code::PermissionDenied);
        let no_delete = delete(&dana, "dana-dev", false)
            .await
            .expect_err("no delete");
        assert_eq!(no_delete.code(), Code::PermissionDenied);
        assert_eq!(
            state(&get(&admin, "dana-dev").await),
            epb::EnvironmentState::Ready
        );
        let stranger = server.user("mallory").await;
        let hidden = environments(&stranger)
            .get_environment(stranger.req(epb::GetEnvironmentRequest { name: name("dev") }))
            .await
            .expect_err("no access");
        assert_eq!(hidden.code(), Code::PermissionDenied);
        server.stop().await;
    }
);
