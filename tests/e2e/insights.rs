//! Insights end to end, on SQLite and PostgreSQL: DORA metrics over a seeded history with fixed
//! timestamps, compared with values computed by hand — the summary, a day's bucket, empty
//! buckets, component / system / group scopes, chosen environments, and the edge cases (no
//! commit time, a commit after its deploy, rollbacks, cancellations, failures never restored
//! within the window).

use std::time::{Duration, Instant};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platform_api::platform::insights::v1 as ipb;
use tonic::Code;

use crate::catalog::{import, setup};
use crate::deployments::{deploy, deploy_all_finished, environment, get, noop, terminal};
use crate::storage_test;
use crate::support::TestClient;

type Insights = ipb::insights_service_client::InsightsServiceClient<tonic::transport::Channel>;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;
/// 2026-10-01T00:00:00Z in microseconds.
const T0: i64 = 1_790_812_800_000_000;

fn ts(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us / 1_000_000,
        nanos: 0,
    }
}

fn secs(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref().expect("a duration").seconds
}

async fn dora(
    client: &TestClient,
    scope: &str,
    environments: &[&str],
    granularity: ipb::DoraGranularity,
) -> Result<ipb::DoraMetrics, tonic::Status> {
    dora_in(
        client,
        (T0, T0 + 10 * DAY),
        scope,
        environments,
        granularity,
    )
    .await
}

async fn dora_in(
    client: &TestClient,
    (start, end): (i64, i64),
    scope: &str,
    environments: &[&str],
    granularity: ipb::DoraGranularity,
) -> Result<ipb::DoraMetrics, tonic::Status> {
    Insights::new(client.channel.clone())
        .get_dora_metrics(
            client.req(ipb::GetDoraMetricsRequest {
                parent: "tenants/acme".into(),
                scope: scope.into(),
                start_time: Some(ts(start)),
                end_time: Some(ts(end)),
                environments: environments
                    .iter()
                    .map(|e| format!("tenants/acme/environments/{e}"))
                    .collect(),
                granularity: granularity as i32,
                ..Default::default()
            }),
        )
        .await
        .map(|r| r.into_inner())
}

/// One fixture row: component, environment, state, end, commit time, rollback target (index).
struct Fixture {
    component: &'static str,
    environment: &'static str,
    state: dpb::DeploymentState,
    end: i64,
    commit: Option<i64>,
    rollback_of: Option<usize>,
}

fn fixtures() -> Vec<Fixture> {
    use dpb::DeploymentState::{Cancelled, Failed, Succeeded};
    let f = |component, environment, state, end, commit, rollback_of| Fixture {
        component,
        environment,
        state,
        end,
        commit,
        rollback_of,
    };
    vec![
        // 0: lead 2 h.
        f(
            "payments",
            "prod",
            Succeeded,
            T0 + DAY + 10 * HOUR,
            Some(T0 + DAY + 8 * HOUR),
            None,
        ),
        // 1: a failure restored by 2 three hours later.
        f(
            "payments",
            "prod",
            Failed,
            T0 + 2 * DAY + 10 * HOUR,
            None,
            None,
        ),
        // 2: lead 5 h; rolled back by 5.
        f(
            "payments",
            "prod",
            Succeeded,
            T0 + 2 * DAY + 13 * HOUR,
            Some(T0 + 2 * DAY + 8 * HOUR),
            None,
        ),
        // 3: no commit time.
        f("billing", "prod", Succeeded, T0 + 3 * DAY, None, None),
        // 4: commit after the deploy.
        f(
            "billing",
            "prod",
            Succeeded,
            T0 + 4 * DAY,
            Some(T0 + 4 * DAY + HOUR),
            None,
        ),
        // 5: a rollback of 2 (left out of lead time).
        f(
            "payments",
            "prod",
            Succeeded,
            T0 + 5 * DAY,
            Some(T0 - 100 * DAY),
            Some(2),
        ),
        // 6: a failure never restored.
        f("billing", "prod", Failed, T0 + 6 * DAY, None, None),
        // 7: cancelled.
        f(
            "payments",
            "prod",
            Cancelled,
            T0 + 6 * DAY + 12 * HOUR,
            None,
            None,
        ),
        // 8: lead 26 h.
        f(
            "payments",
            "prod",
            Succeeded,
            T0 + 7 * DAY,
            Some(T0 + 6 * DAY - 2 * HOUR),
            None,
        ),
        // 9: staging, not counted by default.
        f(
            "payments",
            "staging",
            Succeeded,
            T0 + 3 * DAY,
            Some(T0 + 3 * DAY - HOUR),
            None,
        ),
        // 10: after the window.
        f("payments", "prod", Succeeded, T0 + 11 * DAY, None, None),
        // 11: a failure whose restore (12) comes after the window's end: unrestored.
        f("billing", "prod", Failed, T0 + 8 * DAY, None, None),
        f(
            "billing",
            "prod",
            Succeeded,
            T0 + 10 * DAY + HOUR,
            None,
            None,
        ),
    ]
}

async fn seed(admin: &TestClient, server_pool: &sqlx::AnyPool) {
    let yaml = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: payments\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n  system: shop\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: billing\nspec:\n  type: service\n  lifecycle: production\n  owner: team-b\n---\napiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: shop\nspec:\n  owner: team-a\n---\napiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: team-a\nspec:\n  type: team\n  children: [team-a-sub]\n---\napiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: team-a-sub\nspec:\n  type: team\n  parent: team-a\n  children: []\n---\napiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata:\n  name: team-b\nspec:\n  type: team\n  parent: team-a-sub\n  children: []\n";
    let imported = import(
        admin,
        vec![cat::ImportSource {
            path: "catalog-info.yaml".into(),
            content: yaml.into(),
        }],
        "",
    )
    .await
    .expect("import");
    assert_eq!(imported.failed_count, 0, "{imported:?}");
    environment(admin, "prod", epb::EnvironmentType::Production, noop(), "").await;
    environment(admin, "staging", epb::EnvironmentType::Staging, noop(), "").await;
    // Real deployments (run by the engine), then given the fixture's facts and times.
    let ids = deploy_all_finished(
        admin,
        fixtures().iter().map(|f| (f.component, f.environment)),
    )
    .await;
    for (i, f) in fixtures().iter().enumerate() {
        let id = ids[i].rsplit('/').next().expect("id");
        let rollback_of = f.rollback_of.map(|t| ids[t].clone()).unwrap_or_default();
        sqlx::query(
            "UPDATE deployments SET state = $1, end_time_us = $2, commit_time_us = $3, rollback_of = $4, \
             create_time_us = $5 WHERE tenant = 'acme' AND id = $6",
        )
        .bind(f.state as i64)
        .bind(f.end)
        .bind(f.commit)
        .bind(rollback_of)
        .bind(f.end - HOUR)
        .bind(id)
        .execute(server_pool)
        .await
        .expect("fixture");
    }
}

storage_test!(
    dora_metrics_match_hand_computed_values,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        seed(&admin, server.store.pool()).await;

        let m = dora(&admin, "", &[], ipb::DoraGranularity::Day)
            .await
            .expect("dora");
        assert_eq!(m.scope_type, ipb::DoraScopeType::Tenant as i32);
        assert_eq!(
            m.environments,
            vec!["tenants/acme/environments/prod".to_owned()]
        );
        let s = m.summary.expect("summary");
        let freq = s.deployment_frequency.expect("frequency");
        // 0, 2, 3, 4, 5, 8 succeeded in the window: 6 in 10 days.
        assert_eq!(freq.successful_deployments, 6);
        assert!((freq.days - 10.0).abs() < 1e-9);
        assert!((freq.deployments_per_day - 0.6).abs() < 1e-9);
        assert_eq!(freq.band, ipb::DoraPerformanceBand::High as i32);
        // Lead: 2 h, 5 h, 26 h → median (rank 2) 5 h, p90 (rank 3) 26 h.
        let lead = s.lead_time_for_changes.expect("lead");
        assert_eq!(lead.sample_count, 3);
        assert_eq!(secs(&lead.median), 5 * 3600);
        assert_eq!(secs(&lead.p90), 26 * 3600);
        assert_eq!(lead.excluded_without_commit_time, 1);
        assert_eq!(lead.excluded_commit_after_deploy, 1);
        assert_eq!(lead.excluded_rollbacks, 1);
        assert_eq!(lead.band, ipb::DoraPerformanceBand::Elite as i32);
        // Failure rate: failed 1, 6, 11 and rolled-back 2 over 9 finished.
        let cfr = s.change_failure_rate.expect("cfr");
        assert_eq!(cfr.finished_deployments, 9);
        assert_eq!(cfr.failed_deployments, 3);
        assert_eq!(cfr.rolled_back_deployments, 1);
        assert_eq!(cfr.excluded_cancelled, 1);
        assert!((cfr.rate.expect("rate") - 4.0 / 9.0).abs() < 1e-9);
        assert_eq!(cfr.band, ipb::DoraPerformanceBand::Low as i32);
        // Restore: 1 → 2 after 3 h; 6 and 11 unrestored within the window.
        let ttr = s.time_to_restore.expect("ttr");
        assert_eq!(ttr.sample_count, 1);
        assert_eq!(secs(&ttr.median), 3 * 3600);
        assert_eq!(ttr.unrestored_failures, 2);
        assert_eq!(ttr.band, ipb::DoraPerformanceBand::High as i32);
        assert_eq!(
            s.band,
            ipb::DoraPerformanceBand::Low as i32,
            "the worst band"
        );

        // Ten day buckets, empty ones included; day 2 holds the failure and its restore.
        assert_eq!(m.buckets.len(), 10);
        assert_eq!(m.buckets[0].start_time, Some(ts(T0)));
        let empty = m.buckets[0].figures.expect("figures");
        assert_eq!(empty.band, ipb::DoraPerformanceBand::Unspecified as i32);
        assert_eq!(empty.change_failure_rate.expect("cfr").rate, None);
        let day2 = m.buckets[2].figures.expect("figures");
        assert_eq!(
            day2.deployment_frequency.expect("f").successful_deployments,
            1
        );
        assert_eq!(day2.change_failure_rate.expect("cfr").rate, Some(1.0));
        assert_eq!(secs(&day2.time_to_restore.expect("ttr").median), 3 * 3600);
        assert_eq!(
            secs(&day2.lead_time_for_changes.expect("lead").median),
            5 * 3600
        );

        // Scopes: the component, its system, its owner group (with child groups: team-b too).
        for scope in ["payments", "component:default/payments", "system:shop"] {
            let m = dora(&admin, scope, &[], ipb::DoraGranularity::Unspecified)
                .await
                .expect(scope);
            let s = m.summary.expect("summary");
            assert_eq!(m.component_count, 1, "{scope}");
            assert_eq!(
                s.deployment_frequency.expect("f").successful_deployments,
                4,
                "{scope}: 0, 2, 5, 8"
            );
            assert_eq!(s.change_failure_rate.expect("cfr").failed_deployments, 1);
            assert!(m.buckets.is_empty());
        }
        let group = dora(
            &admin,
            "group:team-a",
            &[],
            ipb::DoraGranularity::Unspecified,
        )
        .await
        .expect("group");
        assert_eq!(group.component_count, 1);
        let mut with_children = Insights::new(admin.channel.clone())
            .get_dora_metrics(admin.req(ipb::GetDoraMetricsRequest {
                parent: "tenants/acme".into(),
                scope: "group:team-a".into(),
                include_child_groups: true,
                start_time: Some(ts(T0)),
                end_time: Some(ts(T0 + 10 * DAY)),
                ..Default::default()
            }))
            .await
            .expect("children")
            .into_inner();
        assert_eq!(with_children.component_count, 2);
        assert_eq!(
            with_children
                .summary
                .take()
                .expect("s")
                .deployment_frequency
                .expect("f")
                .successful_deployments,
            6
        );
        // Chosen environments.
        let staging = dora(&admin, "", &["staging"], ipb::DoraGranularity::Week)
            .await
            .expect("staging");
        let s = staging.summary.expect("summary");
        assert_eq!(s.deployment_frequency.expect("f").successful_deployments, 1);
        // 2026-10-01 is a Thursday: weeks from Monday 09-28, clipped to the window: 2 buckets.
        assert_eq!(staging.buckets.len(), 2);
        assert_eq!(staging.buckets[0].start_time, Some(ts(T0)));

        // Bad input.
        let inverted = Insights::new(admin.channel.clone())
            .get_dora_metrics(admin.req(ipb::GetDoraMetricsRequest {
                parent: "tenants/acme".into(),
                start_time: Some(ts(T0 + DAY)),
                end_time: Some(ts(T0)),
                ..Default::default()
            }))
            .await
            .expect_err("inverted");
        assert_eq!(inverted.code(), Code::InvalidArgument);
        for (scope, code) in [
            ("component:nowhere", Code::NotFound),
            ("bad:ref:x/", Code::InvalidArgument),
        ] {
            let err = dora(&admin, scope, &[], ipb::DoraGranularity::Unspecified)
                .await
                .expect_err(scope);
            assert_eq!(err.code(), code, "{scope}: {err:?}");
        }
        let missing_env = dora(&admin, "", &["nowhere"], ipb::DoraGranularity::Unspecified)
            .await
            .expect_err("no such environment");
        assert_eq!(missing_env.code(), Code::NotFound);
        server.stop().await;
    }
);

fn command(script: &str) -> epb::Driver {
    crate::deployments::script(script)
}

async fn env_with(
    admin: &TestClient,
    id: &str,
    r#type: epb::EnvironmentType,
    driver: epb::Driver,
    promotes_to: &str,
) {
    let target = if promotes_to.is_empty() {
        String::new()
    } else {
        format!("tenants/acme/environments/{promotes_to}")
    };
    environment(admin, id, r#type, driver, &target).await;
}

storage_test!(
    dora_metrics_cut_days_and_follow_changes_to_finished_deployments,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let pool = server.store.pool();
        seed(&admin, pool).await;
        let summary = |m: ipb::DoraMetrics| m.summary.expect("summary");

        // A window whose ends cut days: 12 h after T0 to 2 h after the tenth day. Fixture 12
        // (billing, T0 + 10 d + 1 h) is inside now and restores both billing failures.
        let s = summary(
            dora_in(
                &admin,
                (T0 + 12 * HOUR, T0 + 10 * DAY + 2 * HOUR),
                "",
                &[],
                ipb::DoraGranularity::Day,
            )
            .await
            .expect("cut window"),
        );
        let freq = s.deployment_frequency.expect("frequency");
        assert_eq!(freq.successful_deployments, 7);
        assert!((freq.days - (9.0 + 14.0 / 24.0)).abs() < 1e-9);
        let lead = s.lead_time_for_changes.expect("lead");
        assert_eq!((lead.sample_count, secs(&lead.median)), (3, 5 * 3600));
        assert_eq!(lead.excluded_without_commit_time, 2);
        let cfr = s.change_failure_rate.expect("cfr");
        // 3 failed + 1 rolled back of 10 finished.
        assert_eq!(
            (cfr.finished_deployments, cfr.rolled_back_deployments),
            (10, 1)
        );
        assert_eq!(cfr.rate, Some(0.4));
        // Restores 3 h (payments), 49 h (billing 11 → 12), 97 h (billing 6 → 12, carried over
        // four days of rollups into the cut last day).
        let restore = s.time_to_restore.expect("restore");
        assert_eq!(restore.sample_count, 3);
        assert_eq!(restore.unrestored_failures, 0);
        assert_eq!(secs(&restore.median), 49 * 3600);
        assert_eq!(secs(&restore.p90), 97 * 3600);

        // The day rollups are stored now; changes to finished deployments must reach them.
        let id_of = |i: usize| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM deployments WHERE tenant = 'acme' AND version = $1",
                )
                .bind(format!("v{i}"))
                .fetch_one(&pool)
                .await
                .expect("fixture id")
            }
        };
        let stored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dora_days WHERE tenant = 'acme' AND rollup IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .expect("rollups");
        assert!(stored >= 8, "the window's whole days are stored: {stored}");
        // Fixture 6 (billing's unrestored failure) turns out to have succeeded.
        sqlx::query("UPDATE deployments SET state = $1 WHERE tenant = 'acme' AND id = $2")
            .bind(dpb::DeploymentState::Succeeded as i64)
            .bind(id_of(6).await)
            .execute(pool)
            .await
            .expect("update");
        // Fixture 10 (after the window) becomes a rollback of 8, created inside the window.
        sqlx::query(
            "UPDATE deployments SET rollback_of = $1, create_time_us = $2 WHERE tenant = 'acme' AND id = $3",
        )
        .bind(format!("tenants/acme/deployments/{}", id_of(8).await))
        .bind(T0 + 7 * DAY + HOUR)
        .bind(id_of(10).await)
        .execute(pool)
        .await
        .expect("update");
        let s = summary(
            dora(&admin, "", &[], ipb::DoraGranularity::Unspecified)
                .await
                .expect("after changes"),
        );
        let freq = s.deployment_frequency.expect("frequency");
        assert_eq!(freq.successful_deployments, 7);
        let cfr = s.change_failure_rate.expect("cfr");
        assert_eq!(
            (
                cfr.failed_deployments,
                cfr.rolled_back_deployments,
                cfr.finished_deployments
            ),
            (2, 2, 9)
        );
        let restore = s.time_to_restore.expect("restore");
        assert_eq!((restore.sample_count, restore.unrestored_failures), (1, 1));
        server.stop().await;
    }
);

storage_test!(service_status_shows_what_runs_where, |backend| async move {
    let (_db, server, admin) = setup(backend).await;
    let yaml = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: payments\n  title: Payments\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n  system: shop\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: billing\nspec:\n  type: service\n  lifecycle: experimental\n  owner: team-b\n---\napiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: shop\nspec:\n  owner: team-a\n";
    import(
        &admin,
        vec![cat::ImportSource {
            path: "catalog-info.yaml".into(),
            content: yaml.into(),
        }],
        "",
    )
    .await
    .expect("import");
    use epb::EnvironmentType::{Development, Production, Staging};
    env_with(&admin, "prod", Production, command("sleep 5"), "").await;
    env_with(
        &admin,
        "staging",
        Staging,
        command("test \"$PLATFORM_VERSION\" != bad"),
        "prod",
    )
    .await;
    env_with(&admin, "dev", Development, command("true"), "staging").await;
    env_with(&admin, "sandbox", Development, command("true"), "").await;
    let wait = |name: String| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let d = get(&admin, &name).await;
                if terminal(&d) {
                    return d;
                }
                assert!(Instant::now() < deadline, "{name} never finished");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let v1_dev = wait(
        deploy(&admin, "payments", "v1", "dev", "")
            .await
            .expect("d")
            .name,
    )
    .await;
    wait(
        deploy(&admin, "payments", "v1", "staging", "")
            .await
            .expect("d")
            .name,
    )
    .await;
    let bad = wait(
        deploy(&admin, "payments", "bad", "staging", "")
            .await
            .expect("d")
            .name,
    )
    .await;
    assert_eq!(bad.state, dpb::DeploymentState::Failed as i32);
    let running = deploy(&admin, "payments", "v1", "prod", "")
        .await
        .expect("d");
    let queued = deploy(&admin, "payments", "v2", "prod", "")
        .await
        .expect("d");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&admin, &running.name).await.state != dpb::DeploymentState::Running as i32 {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = Insights::new(admin.channel.clone())
        .get_service_status(admin.req(ipb::GetServiceStatusRequest {
            parent: "tenants/acme".into(),
            component: "payments".into(),
            ..Default::default()
        }))
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.component, "component:default/payments");
    assert_eq!(
        status.entity,
        "tenants/acme/entities/component/default/payments"
    );
    assert_eq!(status.title, "Payments");
    assert_eq!(status.system_ref, "system:default/shop");
    let order: Vec<&str> = status
        .environments
        .iter()
        .map(|e| e.environment.rsplit('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        vec!["dev", "staging", "prod", "sandbox"],
        "promotion order, then the rest"
    );
    let dev = &status.environments[0];
    let current = dev.current.clone().expect("v1 runs in dev");
    assert_eq!(current.version, "v1");
    assert_eq!(current.deployment, v1_dev.name);
    assert!(current.deployed_by.starts_with("user:"));
    assert_eq!(dev.last_outcome, ipb::DeploymentOutcome::Succeeded as i32);
    let staging = &status.environments[1];
    assert_eq!(
        staging.current.clone().expect("v1 still runs").version,
        "v1"
    );
    assert_eq!(staging.last_outcome, ipb::DeploymentOutcome::Failed as i32);
    assert_eq!(staging.last_deployment, bad.name);
    let prod = &status.environments[2];
    assert!(prod.production && prod.current.is_none() && prod.deployment_in_flight);
    let flying: Vec<(String, i32)> = prod
        .in_flight
        .iter()
        .map(|f| (f.deployment.clone(), f.state))
        .collect();
    assert_eq!(
        flying,
        vec![
            (running.name.clone(), ipb::InFlightState::Running as i32),
            (queued.name.clone(), ipb::InFlightState::Queued as i32),
        ]
    );
    let sandbox = &status.environments[3];
    assert!(sandbox.current.is_none() && sandbox.in_flight.is_empty());
    assert_eq!(
        sandbox.last_outcome,
        ipb::DeploymentOutcome::Unspecified as i32
    );

    let only = Insights::new(admin.channel.clone())
        .get_service_status(admin.req(ipb::GetServiceStatusRequest {
            parent: "tenants/acme".into(),
            component: "component:default/payments".into(),
            only_deployed: true,
            ..Default::default()
        }))
        .await
        .expect("only deployed")
        .into_inner();
    assert_eq!(only.environments.len(), 3, "sandbox left out");

    // The matrix: every component, a page at a time; a system scope.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = statuses(
            &admin,
            ipb::ListServiceStatusesRequest {
                environments: vec!["tenants/acme/environments/dev".into()],
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(page.total_size, 2);
        for s in &page.service_statuses {
            assert_eq!(s.environments.len(), 1);
        }
        seen.extend(page.service_statuses.into_iter().map(|s| s.component));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec!["component:default/billing", "component:default/payments"]
    );
    let shop = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            scope: "system:shop".into(),
            ..Default::default()
        },
    )
    .await
    .expect("system scope");
    assert_eq!(shop.total_size, 1);
    assert_eq!(
        shop.service_statuses[0].component,
        "component:default/payments"
    );

    // A catalog filter narrows the list the way ListEntities would, and binds the page token.
    let production = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            filter: "spec.lifecycle = \"production\" OR owner = \"team-b\"".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .expect("filter");
    assert_eq!(production.total_size, 2);
    let experimental = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            filter: "lifecycle = \"experimental\"".into(),
            scope: "group:team-b".into(),
            ..Default::default()
        },
    )
    .await;
    // team-b is not in the catalog, so the scope is NOT_FOUND even with a filter.
    assert_eq!(experimental.expect_err("no group").code(), Code::NotFound);
    let experimental = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            filter: "lifecycle = \"experimental\"".into(),
            ..Default::default()
        },
    )
    .await
    .expect("experimental");
    let components: Vec<&str> = experimental
        .service_statuses
        .iter()
        .map(|s| s.component.as_str())
        .collect();
    assert_eq!(components, ["component:default/billing"]);
    let in_shop = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            scope: "system:shop".into(),
            filter: "NOT lifecycle = \"production\"".into(),
            ..Default::default()
        },
    )
    .await
    .expect("scope and filter");
    assert_eq!(in_shop.total_size, 0, "both must hold");
    let other_query = statuses(
        &admin,
        ipb::ListServiceStatusesRequest {
            filter: "owner = \"team-b\"".into(),
            page_size: 1,
            page_token: production.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("token of another filter");
    assert_eq!(other_query.code(), Code::InvalidArgument);
    for bad in [
        "lifecycle ~ \"x\"",
        "nosuchfield = \"x\"",
        "(lifecycle = \"x\"",
    ] {
        let err = statuses(
            &admin,
            ipb::ListServiceStatusesRequest {
                filter: bad.into(),
                ..Default::default()
            },
        )
        .await
        .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }

    for (component, code) in [
        ("nowhere", Code::NotFound),
        ("system:shop", Code::InvalidArgument),
        ("", Code::InvalidArgument),
    ] {
        let err = Insights::new(admin.channel.clone())
            .get_service_status(admin.req(ipb::GetServiceStatusRequest {
                parent: "tenants/acme".into(),
                component: component.into(),
                ..Default::default()
            }))
            .await
            .expect_err(component);
        assert_eq!(err.code(), code, "{component}: {err:?}");
    }
    server.stop().await;
});

async fn statuses(
    client: &TestClient,
    request: ipb::ListServiceStatusesRequest,
) -> Result<ipb::ListServiceStatusesResponse, tonic::Status> {
    Insights::new(client.channel.clone())
        .list_service_statuses(client.req(ipb::ListServiceStatusesRequest {
            parent: "tenants/acme".into(),
            ..request
        }))
        .await
        .map(|r| r.into_inner())
}

async fn graph(
    client: &TestClient,
    request: ipb::GetDependencyGraphRequest,
) -> Result<ipb::DependencyGraph, tonic::Status> {
    Insights::new(client.channel.clone())
        .get_dependency_graph(client.req(ipb::GetDependencyGraphRequest {
            parent: "tenants/acme".into(),
            ..request
        }))
        .await
        .map(|r| r.into_inner())
}

fn node_refs(g: &ipb::DependencyGraph) -> Vec<(i32, String, bool)> {
    g.nodes
        .iter()
        .map(|n| (n.depth, n.r#ref.clone(), n.resolved))
        .collect()
}

storage_test!(
    dependency_graph_follows_depends_on_and_apis,
    |backend| async move {
        let (_db, server, admin) = setup(backend).await;
        let yaml = "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: web\nspec:\n  type: website\n  lifecycle: production\n  owner: team-a\n  system: shop\n  consumesApis: [orders-api]\n  dependsOn: [resource:db-web]\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: orders\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n  system: shop\n  providesApis: [orders-api]\n  dependsOn: [component:payments]\n---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: payments\nspec:\n  type: service\n  lifecycle: production\n  owner: team-b\n  dependsOn: [component:ghost]\n---\napiVersion: backstage.io/v1alpha1\nkind: Resource\nmetadata:\n  name: db-web\nspec:\n  type: database\n  owner: team-a\n---\napiVersion: backstage.io/v1alpha1\nkind: API\nmetadata:\n  name: orders-api\nspec:\n  type: openapi\n  lifecycle: production\n  owner: team-a\n  definition: openapi\n---\napiVersion: backstage.io/v1alpha1\nkind: System\nmetadata:\n  name: shop\nspec:\n  owner: team-a\n";
        let imported = import(
            &admin,
            vec![cat::ImportSource {
                path: "catalog-info.yaml".into(),
                content: yaml.into(),
            }],
            "",
        )
        .await
        .expect("import");
        assert_eq!(imported.failed_count, 0, "{imported:?}");

        let g = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["web".into()],
                ..Default::default()
            },
        )
        .await
        .expect("graph");
        assert_eq!(g.roots, vec!["component:default/web".to_owned()]);
        assert_eq!(
            node_refs(&g),
            vec![
                (0, "component:default/web".into(), true),
                (1, "component:default/orders".into(), true),
                (1, "resource:default/db-web".into(), true),
                (2, "component:default/payments".into(), true),
                (3, "component:default/ghost".into(), false),
            ]
        );
        assert!(!g.truncated);
        let edges: Vec<(String, String, bool, Vec<String>)> = g
            .edges
            .iter()
            .map(|e| {
                (
                    e.from_ref.clone(),
                    e.to_ref.clone(),
                    e.direct,
                    e.via_apis.clone(),
                )
            })
            .collect();
        assert_eq!(
            edges,
            vec![
                (
                    "component:default/orders".into(),
                    "component:default/payments".into(),
                    true,
                    vec![]
                ),
                (
                    "component:default/payments".into(),
                    "component:default/ghost".into(),
                    true,
                    vec![]
                ),
                (
                    "component:default/web".into(),
                    "component:default/orders".into(),
                    false,
                    vec!["api:default/orders-api".to_owned()]
                ),
                (
                    "component:default/web".into(),
                    "resource:default/db-web".into(),
                    true,
                    vec![]
                ),
            ]
        );
        let web = &g.nodes[0];
        assert_eq!(web.entity, "tenants/acme/entities/component/default/web");
        assert_eq!(
            (web.kind.as_str(), web.r#type.as_str()),
            ("Component", "website")
        );
        assert_eq!(g.nodes[2].kind, "Resource");

        // Limits and exclusions.
        let shallow = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["web".into()],
                max_depth: 1,
                exclude_resources: true,
                ..Default::default()
            },
        )
        .await
        .expect("shallow");
        assert_eq!(
            node_refs(&shallow),
            vec![
                (0, "component:default/web".into(), true),
                (1, "component:default/orders".into(), true),
            ]
        );
        let resolved_only = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["payments".into()],
                exclude_unresolved: true,
                ..Default::default()
            },
        )
        .await
        .expect("resolved only");
        assert_eq!(resolved_only.nodes.len(), 1);
        assert!(resolved_only.edges.is_empty());
        let capped = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["web".into()],
                max_nodes: 2,
                ..Default::default()
            },
        )
        .await
        .expect("capped");
        assert_eq!(capped.nodes.len(), 2);
        assert!(capped.truncated);

        // Dependents: who needs payments (orders directly, web through the API orders provides).
        let dependents = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["component:default/payments".into()],
                direction: ipb::DependencyDirection::Dependents as i32,
                ..Default::default()
            },
        )
        .await
        .expect("dependents");
        assert_eq!(
            node_refs(&dependents),
            vec![
                (0, "component:default/payments".into(), true),
                (1, "component:default/orders".into(), true),
                (2, "component:default/web".into(), true),
            ]
        );
        // A System root stands for its Components; statuses in one environment.
        environment(&admin, "dev", epb::EnvironmentType::Development, noop(), "").await;
        let d = deploy(&admin, "orders", "v7", "dev", "")
            .await
            .expect("deploy");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !terminal(&get(&admin, &d.name).await) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shop = graph(
            &admin,
            ipb::GetDependencyGraphRequest {
                roots: vec!["system:shop".into()],
                max_depth: 1,
                environment: "tenants/acme/environments/dev".into(),
                ..Default::default()
            },
        )
        .await
        .expect("system");
        assert_eq!(
            shop.roots,
            vec![
                "component:default/orders".to_owned(),
                "component:default/web".to_owned()
            ]
        );
        let orders = shop
            .nodes
            .iter()
            .find(|n| n.r#ref == "component:default/orders")
            .expect("orders");
        assert_eq!(
            orders
                .status
                .as_ref()
                .and_then(|s| s.current.as_ref())
                .map(|c| c.version.as_str()),
            Some("v7")
        );
        let db = shop
            .nodes
            .iter()
            .find(|n| n.kind == "Resource")
            .expect("the resource");
        assert!(db.status.is_none(), "statuses are for Components only");

        for (roots, code) in [
            (vec!["api:orders-api".to_owned()], Code::InvalidArgument),
            (vec!["nowhere".to_owned()], Code::NotFound),
            (vec![], Code::InvalidArgument),
        ] {
            let err = graph(
                &admin,
                ipb::GetDependencyGraphRequest {
                    roots: roots.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect_err("bad roots");
            assert_eq!(err.code(), code, "{roots:?}: {err:?}");
        }
        server.stop().await;
    }
);
