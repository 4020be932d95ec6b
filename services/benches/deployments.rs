//! Deployment benchmark: 32 concurrent callers create deployments through the real server
//! (in-process, gRPC over loopback; each create is one transaction with its audit record), then
//! a second server on the same database with engine workers drains the queue with the `noop`
//! driver. Reports creates/s with median and p99 latency, and deployments driven per second, on
//! SQLite and — when PLATFORM_BENCH_POSTGRES_URL is set — PostgreSQL. It asserts nothing.
//!
//! `cargo bench -p platformd --bench deployments` (BENCH_DEPLOYMENTS, default 20000, the number
//! created; BENCH_CALLERS, default 32).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use platformd::config::DatabaseUrl;

mod common;
use common::{PostgresDb, Server, req};

const COMPONENTS: usize = 50;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A server on `database`; `workers` engine workers (0: the API alone) polling every 100 ms.
async fn start(database: &DatabaseUrl, data_dir: &std::path::Path, workers: usize) -> Server {
    Server::start(database, data_dir, |config| {
        config.engine.workers = workers;
        config.engine.poll = Duration::from_millis(100);
    })
    .await
}

async fn run(
    name: &str,
    database: DatabaseUrl,
    data_dir: &std::path::Path,
    total: usize,
    callers: usize,
) {
    // Phase 1: creates only (no workers), so the figure is the API's.
    let server = start(&database, data_dir, 0).await;
    server.create_tenant("acme").await;
    let (channel, token) = (server.channel.clone(), server.token.clone());
    let docs: String = (0..COMPONENTS)
        .map(|i| format!("---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"))
        .collect();
    cat::catalog_service_client::CatalogServiceClient::new(channel.clone())
        .import_entities(req(
            &token,
            cat::ImportEntitiesRequest {
                parent: "tenants/acme".into(),
                sources: vec![cat::ImportSource {
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
                environment_id: "dev".into(),
                environment: Some(epb::Environment {
                    r#type: epb::EnvironmentType::Development as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("environment");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let channel = channel.clone();
        let token = token.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = dpb::deployment_service_client::DeploymentServiceClient::new(channel);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let t = Instant::now();
                client
                    .create_deployment(req(
                        &token,
                        dpb::CreateDeploymentRequest {
                            parent: "tenants/acme".into(),
                            deployment: Some(dpb::Deployment {
                                component: format!("svc-{}", i % COMPONENTS),
                                version: format!("v{i}"),
                                environment: "tenants/acme/environments/dev".into(),
                                ..Default::default()
                            }),
                            request_id: uuid::Uuid::new_v4().to_string(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect("create");
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let creates = total as f64 / elapsed.as_secs_f64();
    server.stop().await;

    // Phase 2: a server with workers drains the queue (noop driver, 50 lanes).
    let server = start(&database, data_dir, 8).await;
    let mut client =
        dpb::deployment_service_client::DeploymentServiceClient::new(server.channel.clone());
    let started = Instant::now();
    loop {
        let left = client
            .list_deployments(req(
                &token,
                dpb::ListDeploymentsRequest {
                    parent: "tenants/acme".into(),
                    filter: "state = \"QUEUED\" OR state = \"RUNNING\"".into(),
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner()
            .total_size;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let driven = total as f64 / started.elapsed().as_secs_f64();
    server.stop().await;
    println!(
        "| {name} | {total} | {callers} | {creates:.0} | {:.2} / {:.2} | {driven:.0} |",
        ms(at(0.5)),
        ms(at(0.99))
    );
}

fn main() {
    let total: usize = std::env::var("BENCH_DEPLOYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let callers: usize = std::env::var("BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| engine | deployments | callers | creates/s | create ms median / p99 | driven/s (noop, 8 workers) |");
        println!("|---|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("BENCH_SKIP_SQLITE").is_none() {
            run("SQLite", DatabaseUrl::Sqlite(dir.path().join("platform.db")), dir.path(), total, callers).await;
        }
        if let Ok(admin_url) = std::env::var("PLATFORM_BENCH_POSTGRES_URL") {
            let db = PostgresDb::create(&admin_url).await;
            let pg_dir = tempfile::tempdir().expect("tempdir");
            run("PostgreSQL", db.url.clone(), pg_dir.path(), total, callers).await;
            db.drop().await;
        }
    });
}
