//! Scale-out benchmark on PostgreSQL: 1, 2 and 3 platformd replicas (in this process, each with
//! its own port, pool and policy engine, all on one database) serve 32 concurrent callers spread
//! evenly over them. Reports CreateDeployment per second (a write with its audit record) and
//! authorized GetEnvironment per second, with median and p99, and the ratio to one replica. It
//! asserts nothing. Client and servers share this machine's cores, so the ratio shows what the
//! shared database allows here, not what more machines would add.
//!
//! `PLATFORM_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p platformd
//! --bench replicas` (BENCH_SECONDS per measurement, default 5; BENCH_CALLERS, default 32).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use tonic::transport::Channel;

mod common;
use common::{PostgresDb, Server, req};

const COMPONENTS: usize = 50;

/// Runs `call` from `callers` tasks over the replicas' channels (caller i uses replica i mod n)
/// for `seconds`; returns calls per second, median and p99 in ms.
async fn drive<F, Fut>(
    channels: &[Channel],
    callers: usize,
    seconds: u64,
    call: F,
) -> (f64, f64, f64)
where
    F: Fn(Channel, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let channel = channels[c % channels.len()].clone();
        let call = call.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                call(channel.clone(), i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("caller"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    (latencies.len() as f64 / elapsed, at(0.5), at(0.99))
}

async fn seed(channel: Channel, token: &str) {
    let docs: String = (0..COMPONENTS)
        .map(|i| format!("---\napiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata:\n  name: svc-{i}\nspec:\n  type: service\n  lifecycle: production\n  owner: team-a\n"))
        .collect();
    cat::catalog_service_client::CatalogServiceClient::new(channel.clone())
        .import_entities(req(
            token,
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
    epb::environment_service_client::EnvironmentServiceClient::new(channel)
        .create_environment(req(
            token,
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
}

fn main() {
    let Ok(admin_url) = std::env::var("PLATFORM_BENCH_POSTGRES_URL") else {
        eprintln!("set PLATFORM_BENCH_POSTGRES_URL to run the replica benchmark");
        return;
    };
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let callers: usize = std::env::var("BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = PostgresDb::create(&admin_url).await;
        let dir = tempfile::tempdir().expect("tempdir");
        // Each replica: its own port, pool and policy engine; the API's figures, no engine.
        let replica = || Server::start(&db.url, dir.path(), |c| c.engine.workers = 0);
        let mut replicas = vec![replica().await];
        replicas[0].create_tenant("acme").await;
        let token = replicas[0].token.clone();
        seed(replicas[0].channel.clone(), &token).await;
        println!("| replicas | callers | creates/s | create ms median / p99 | ratio | reads/s (GetEnvironment) | read ms median / p99 | ratio |");
        println!("|---|---|---|---|---|---|---|---|");
        let (mut base_creates, mut base_reads) = (0.0, 0.0);
        for n in 1..=3 {
            while replicas.len() < n {
                replicas.push(replica().await);
            }
            let channels: Vec<Channel> = replicas.iter().map(|r| r.channel.clone()).collect();
            let t = token.clone();
            let (creates, c50, c99) = drive(&channels, callers, seconds, move |channel, i| {
                let token = t.clone();
                async move {
                    dpb::deployment_service_client::DeploymentServiceClient::new(channel)
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
                }
            })
            .await;
            let reads = if n <= 2 {
                let t = token.clone();
                Some(
                    drive(&channels, callers, seconds, move |channel, _| {
                        let token = t.clone();
                        async move {
                            epb::environment_service_client::EnvironmentServiceClient::new(channel)
                                .get_environment(req(
                                    &token,
                                    epb::GetEnvironmentRequest {
                                        name: "tenants/acme/environments/dev".into(),
                                    },
                                ))
                                .await
                                .expect("get");
                        }
                    })
                    .await,
                )
            } else {
                None
            };
            if n == 1 {
                base_creates = creates;
                base_reads = reads.map(|r| r.0).unwrap_or(1.0);
            }
            let reads_cells = match reads {
                Some((r, r50, r99)) => format!(
                    "{r:.0} | {r50:.2} / {r99:.2} | {:.2}",
                    r / base_reads
                ),
                None => "— | — | —".to_owned(),
            };
            println!(
                "| {n} | {callers} | {creates:.0} | {c50:.2} / {c99:.2} | {:.2} | {reads_cells} |",
                creates / base_creates
            );
        }
        for r in replicas {
            r.stop().await;
        }
        db.drop().await;
    });
}
