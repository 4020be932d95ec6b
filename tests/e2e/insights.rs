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
use crate::deployments::{deploy, environment, get, terminal};
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
    Insights::new(client.channel.clone())
        .get_dora_metrics(
            client.req(ipb::GetDoraMetricsRequest {
                parent: "tenants/acme".into(),
                scope: scope.into(),
                start_time: Some(ts(T0)),
                end_time: Some(ts(T0 + 10 * DAY)),
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
    let noop = epb::Driver {
        driver: Some(epb::driver::Driver::Noop(epb::NoopDriver::default())),
    };
    environment(
        admin,
        "prod",
        epb::EnvironmentType::Production,
        noop.clone(),
        "",
    )
    .await;
    environment(admin, "staging", epb::EnvironmentType::Staging, noop, "").await;
    // Real deployments (run by the engine), then given the fixture's facts and times.
    let mut ids = Vec::new();
    for (i, f) in fixtures().iter().enumerate() {
        let d = deploy(admin, f.component, &format!("v{i}"), f.environment, "")
            .await
            .expect("deploy");
        ids.push(d.name);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &ids {
        while !terminal(&get(admin, name).await) {
            assert!(Instant::now() < deadline, "{name} never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
