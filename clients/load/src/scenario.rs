//! The scenarios and the closed-loop driver. N callers share M HTTP/2 connections; each caller
//! issues its next call as soon as the previous one answers, for the warm-up and then for the
//! measured duration. Only calls that start and finish inside the measured period are counted, so
//! throughput is `calls / duration` and no warm-up or drain skews the figures. Latencies go into
//! one HDR histogram per caller (3 significant digits), merged at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use platform_api::platform::catalog::v1 as cat;
use platform_api::platform::deployments::v1 as dep;
use platform_api::platform::iam::v1 as iam;
use platform_api::platform::secrets::v1 as sec;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::req;
use crate::seed::{DEPLOYED_COMPONENTS, Fixture};

/// What a scenario calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// grpc.health.v1.Health/Check without credentials: the baseline.
    Health,
    /// CatalogService.GetEntity of a random Component, as a developer.
    GetEntity,
    /// CatalogService.ListEntities filtered on one owner (about 200 matches), a page of 100.
    ListEntities,
    /// IamService.TestPermissions of four permissions on a random entity, as a developer.
    TestPermissions,
    /// DeploymentService.CreateDeployment to the development environment, as a developer.
    CreateDeployment,
    /// SecretService.AccessSecretVersion of `latest` (decrypt + audited read), as a bot.
    AccessSecret,
    /// A portal's mix as a developer: 60% GetEntity, 15% ListEntities, 10% TestPermissions,
    /// 10% ListDeployments, 5% CreateDeployment.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::GetEntity => "get-entity",
            Scenario::ListEntities => "list-entities",
            Scenario::TestPermissions => "test-permissions",
            Scenario::CreateDeployment => "create-deployment",
            Scenario::AccessSecret => "access-secret",
            Scenario::Mixed => "mixed",
        }
    }
}

/// How hard to drive.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub callers: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one scenario measured.
#[derive(Debug, serde::Serialize)]
pub struct Measured {
    pub scenario: Scenario,
    pub calls: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed calls in the measured period by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// The server's largest resident set sampled during the measured period, in bytes: all of
    /// it, and the anonymous part alone (without SQLite's mapped file pages).
    pub peak_rss_bytes: Option<u64>,
    pub peak_rss_anon_bytes: Option<u64>,
}

/// Latencies in microseconds, 1 µs to 120 s, three significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds are valid")
}

/// One caller's typed clients on its connection.
pub(crate) struct Clients {
    health: HealthClient<Channel>,
    catalog: cat::catalog_service_client::CatalogServiceClient<Channel>,
    iam: iam::iam_service_client::IamServiceClient<Channel>,
    deployments: dep::deployment_service_client::DeploymentServiceClient<Channel>,
    secrets: sec::secret_service_client::SecretServiceClient<Channel>,
}

impl Clients {
    pub(crate) fn new(channel: Channel) -> Clients {
        Clients {
            health: HealthClient::new(channel.clone()),
            catalog: cat::catalog_service_client::CatalogServiceClient::new(channel.clone()),
            iam: iam::iam_service_client::IamServiceClient::new(channel.clone()),
            deployments: dep::deployment_service_client::DeploymentServiceClient::new(
                channel.clone(),
            ),
            secrets: sec::secret_service_client::SecretServiceClient::new(channel),
        }
    }
}

/// A small deterministic generator per caller (the runs are reproducible, no extra dependency).
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    fn below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

/// Numbers the versions of created deployments across callers and scenarios.
static VERSIONS: AtomicU64 = AtomicU64::new(0);

/// One call a caller makes; a scenario is a fixed op or a weighted pick of them.
#[derive(Clone, Copy)]
enum Op {
    Health,
    GetEntity,
    ListEntities,
    TestPermissions,
    CreateDeployment,
    AccessSecret,
    ListDeployments,
}

fn pick(scenario: Scenario, rng: &mut Lcg) -> Op {
    match scenario {
        Scenario::Health => Op::Health,
        Scenario::GetEntity => Op::GetEntity,
        Scenario::ListEntities => Op::ListEntities,
        Scenario::TestPermissions => Op::TestPermissions,
        Scenario::CreateDeployment => Op::CreateDeployment,
        Scenario::AccessSecret => Op::AccessSecret,
        Scenario::Mixed => match rng.below(100) {
            0..60 => Op::GetEntity,
            60..75 => Op::ListEntities,
            75..85 => Op::TestPermissions,
            85..95 => Op::ListDeployments,
            _ => Op::CreateDeployment,
        },
    }
}

pub(crate) async fn call(
    scenario: Scenario,
    clients: &mut Clients,
    fixture: &Fixture,
    rng: &mut Lcg,
) -> Result<(), tonic::Status> {
    let developer = fixture.developer_token.as_str();
    match pick(scenario, rng) {
        Op::ListDeployments => {
            clients
                .deployments
                .list_deployments(req(
                    developer,
                    dep::ListDeploymentsRequest {
                        parent: format!("tenants/{}", fixture.tenant),
                        filter: format!("component = \"svc-{}\"", rng.below(DEPLOYED_COMPONENTS)),
                        page_size: 20,
                        ..Default::default()
                    },
                ))
                .await?;
        }
        Op::Health => {
            clients.health.check(HealthCheckRequest::default()).await?;
        }
        Op::GetEntity => {
            clients
                .catalog
                .get_entity(req(
                    developer,
                    cat::GetEntityRequest {
                        name: fixture.entity_name(rng.below(fixture.entities)),
                        ..Default::default()
                    },
                ))
                .await?;
        }
        Op::ListEntities => {
            clients
                .catalog
                .list_entities(req(
                    developer,
                    cat::ListEntitiesRequest {
                        parent: format!("tenants/{}", fixture.tenant),
                        filter: format!("owner = \"team-{}\"", rng.below(fixture.owners)),
                        page_size: 100,
                        ..Default::default()
                    },
                ))
                .await?;
        }
        Op::TestPermissions => {
            clients
                .iam
                .test_permissions(req(
                    developer,
                    iam::TestPermissionsRequest {
                        resource: fixture.entity_name(rng.below(fixture.entities)),
                        permissions: vec![
                            "catalog.entities.get".into(),
                            "catalog.entities.update".into(),
                            "catalog.entities.delete".into(),
                            "deployments.deployments.create".into(),
                        ],
                    },
                ))
                .await?;
        }
        Op::CreateDeployment => {
            let version = VERSIONS.fetch_add(1, Ordering::Relaxed);
            clients
                .deployments
                .create_deployment(req(
                    developer,
                    dep::CreateDeploymentRequest {
                        parent: format!("tenants/{}", fixture.tenant),
                        deployment: Some(dep::Deployment {
                            component: format!("svc-{}", rng.below(DEPLOYED_COMPONENTS)),
                            version: format!("load-{version}"),
                            environment: fixture.environment.clone(),
                            ..Default::default()
                        }),
                        request_id: uuid::Uuid::new_v4().to_string(),
                        ..Default::default()
                    },
                ))
                .await?;
        }
        Op::AccessSecret => {
            clients
                .secrets
                .access_secret_version(req(
                    &fixture.bot_token,
                    sec::AccessSecretVersionRequest {
                        name: fixture.secret_version.clone(),
                    },
                ))
                .await?;
        }
    }
    Ok(())
}

/// Drives `scenario` with `load.callers` callers spread over `channels`; samples the server's
/// memory (process `server_pid`, if local) every 50 ms of the measured period.
pub async fn drive(
    scenario: Scenario,
    channels: &[Channel],
    fixture: &Arc<Fixture>,
    load: Load,
    server_pid: Option<u32>,
) -> Measured {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let measure_until = measure_from + load.duration;
    let mut callers = Vec::with_capacity(load.callers);
    for index in 0..load.callers {
        let mut clients = Clients::new(channels[index % channels.len()].clone());
        let fixture = fixture.clone();
        callers.push(tokio::spawn(async move {
            let mut rng = Lcg(index as u64 * 7_919 + 17);
            let mut latencies = latency_histogram();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let began = Instant::now();
                if began >= measure_until {
                    break;
                }
                let outcome = call(scenario, &mut clients, &fixture, &mut rng).await;
                let ended = Instant::now();
                if began < measure_from || ended > measure_until {
                    continue;
                }
                match outcome {
                    Ok(()) => latencies.saturating_record(
                        u64::try_from(ended.duration_since(began).as_micros()).unwrap_or(u64::MAX),
                    ),
                    Err(status) => {
                        *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let sampler = server_pid.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let (mut rss, mut anon) = (0, 0);
            while Instant::now() < measure_until {
                if let Some(memory) = crate::server::memory(pid) {
                    rss = rss.max(memory.rss);
                    anon = anon.max(memory.anon);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (rss, anon)
        })
    });
    let mut latencies = latency_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for caller in callers {
        if let Ok((histogram, caller_errors)) = caller.await {
            let _ = latencies.add(histogram);
            for (code, count) in caller_errors {
                *errors.entry(code).or_default() += count;
            }
        }
    }
    let (peak_rss_bytes, peak_rss_anon_bytes) = match sampler {
        Some(task) => task.await.ok().unzip(),
        None => (None, None),
    };
    let seconds = load.duration.as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Measured {
        scenario,
        calls: latencies.len(),
        seconds,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: latencies.max() as f64 / 1000.0,
        errors,
        peak_rss_bytes,
        peak_rss_anon_bytes,
    }
}
