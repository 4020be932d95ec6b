//! DORA benchmark: a tenant with 100,000 finished deployments over 90 days (20 components, one
//! production environment; 85% succeeded, 10% failed, 5% cancelled, 1% rollbacks, commit times
//! up to 5 days before each end), then GetDoraMetrics over the 90 days up to now through the real
//! server (gRPC over loopback) for the tenant, one component, and with a per-day breakdown.
//! Reports the first call (which computes and stores the day rollups: the seeding bypasses the
//! API, so every day starts stale) and the median and slowest of the 10 calls after it, on
//! SQLite and — with PLATFORM_BENCH_POSTGRES_URL — PostgreSQL. It asserts nothing.
//!
//! `cargo bench -p platformd --bench insights` (BENCH_DEPLOYMENTS, default 100000).

use std::time::{Duration, Instant};

use platform_api::platform::environments::v1 as epb;
use platform_api::platform::insights::v1 as ipb;
use platformd::config::DatabaseUrl;

mod common;
use common::{PostgresDb, Server, req};

const DAY_US: i64 = 86_400_000_000;

/// A small deterministic generator, so every run seeds the same history.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

async fn run(name: &str, database: DatabaseUrl, data_dir: &std::path::Path, total: usize) {
    let server = Server::start(&database, data_dir, |c| c.engine.workers = 0).await;
    server.create_tenant("acme").await;
    let (channel, token, store) = (
        server.channel.clone(),
        server.token.clone(),
        server.store.clone(),
    );
    let docs: String = (0..20)
        .map(|i| format!("---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"))
        .collect();
    platform_api::platform::catalog::v1::catalog_service_client::CatalogServiceClient::new(
        channel.clone(),
    )
    .import_entities(req(
        &token,
        platform_api::platform::catalog::v1::ImportEntitiesRequest {
            parent: "tenants/acme".into(),
            sources: vec![platform_api::platform::catalog::v1::ImportSource {
                path: "c.yaml".into(),
                content: docs,
            }],
            ..Default::default()
        },
    ))
    .await
    .expect("components");
    epb::environment_service_client::EnvironmentServiceClient::new(channel.clone())
        .create_environment(req(
            &token,
            epb::CreateEnvironmentRequest {
                parent: "tenants/acme".into(),
                environment_id: "prod".into(),
                environment: Some(epb::Environment {
                    r#type: epb::EnvironmentType::Production as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("environment");

    // The history, written straight into the table (the figures are about reading it).
    let end = platformd::store::now_micros();
    let start = end - 90 * DAY_US;
    let mut rng = Lcg(42);
    let seeded = Instant::now();
    for chunk in 0..total.div_ceil(1000) {
        let mut tx = store.write_tx().await.expect("tx");
        for i in chunk * 1000..((chunk + 1) * 1000).min(total) {
            let finished = start + (i as i64 * (90 * DAY_US / total as i64));
            let roll = rng.next() % 100;
            let state: i64 = match roll {
                0..=84 => 4,  // SUCCEEDED
                85..=94 => 5, // FAILED
                _ => 6,       // CANCELLED
            };
            let rollback_of = if roll == 0 && i > 0 {
                format!("tenants/acme/deployments/d{}", i - 1)
            } else {
                String::new()
            };
            let commit = finished - (rng.next() % (5 * DAY_US as u64)) as i64;
            sqlx::query(
                "INSERT INTO deployments (tenant, id, uid, component, environment, state, version, commit_sha, requested_by, \
                 rollback_of, promoted_from, create_time_us, start_time_us, end_time_us, update_time_us, cancel_requested, \
                 attempt_count, lease_owner, lease_expires_us, log_seq, etag, body, lane, commit_time_us) \
                 VALUES ('acme', $1, $1, $2, 'prod', $3, 'v', '', 'user:bench', $4, '', $5, $5, $6, $6, 0, 1, '', 0, 0, '', $7, $8, $9)",
            )
            .bind(format!("d{i}"))
            .bind(format!("component:default/svc-{}", i % 20))
            .bind(state)
            .bind(rollback_of)
            .bind(finished - 60_000_000)
            .bind(finished)
            .bind(Vec::<u8>::new())
            .bind(format!("acme/prod/component:default/svc-{}", i % 20))
            .bind(commit)
            .execute(&mut *tx)
            .await
            .expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    if store.engine() == platformd::store::Engine::Postgres {
        sqlx::query("ANALYZE deployments")
            .execute(store.pool())
            .await
            .expect("analyze");
    }
    let seed_secs = seeded.elapsed().as_secs_f64();

    let client = ipb::insights_service_client::InsightsServiceClient::new(channel);
    let measure = |scope: &'static str, granularity: ipb::DoraGranularity| {
        let token = token.clone();
        let mut client = client.clone();
        async move {
            let mut times = Vec::new();
            for _ in 0..11 {
                let t = Instant::now();
                let m = client
                    .get_dora_metrics(req(
                        &token,
                        ipb::GetDoraMetricsRequest {
                            parent: "tenants/acme".into(),
                            scope: scope.into(),
                            start_time: Some(platformd::audit::timestamp(start)),
                            end_time: Some(platformd::audit::timestamp(end + 1)),
                            granularity: granularity as i32,
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect("dora")
                    .into_inner();
                times.push(t.elapsed());
                assert!(
                    m.summary
                        .and_then(|s| s.change_failure_rate)
                        .is_some_and(|c| c.finished_deployments > 0),
                    "the history is counted"
                );
            }
            // The first call of the first series computes and stores every day's rollup.
            let first = times.remove(0);
            times.sort();
            (first, times[times.len() / 2], times[times.len() - 1])
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let tenant = measure("", ipb::DoraGranularity::Unspecified).await;
    let component = measure("svc-3", ipb::DoraGranularity::Unspecified).await;
    let daily = measure("", ipb::DoraGranularity::Day).await;
    println!(
        "| {name} | {total} | {seed_secs:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
        ms(tenant.0),
        ms(tenant.1),
        ms(tenant.2),
        ms(component.1),
        ms(component.2),
        ms(daily.1),
        ms(daily.2)
    );
    server.stop().await;
}

fn main() {
    let total: usize = std::env::var("BENCH_DEPLOYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| engine | deployments (90 days) | seed s | first call (computes the day rollups) ms | tenant, summary: ms median / max | one component | tenant, 90 daily buckets |");
        println!("|---|---|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("BENCH_SKIP_SQLITE").is_none() {
            run("SQLite", DatabaseUrl::Sqlite(dir.path().join("platform.db")), dir.path(), total).await;
        }
        if let Ok(admin_url) = std::env::var("PLATFORM_BENCH_POSTGRES_URL") {
            let db = PostgresDb::create(&admin_url).await;
            let pg_dir = tempfile::tempdir().expect("tempdir");
            run("PostgreSQL", db.url.clone(), pg_dir.path(), total).await;
            db.drop().await;
        }
    });
}
