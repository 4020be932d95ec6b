//! `platform-load`: the platform API's load generator.
//!
//! It starts the release `platformd` as a child process on a fresh SQLite file and/or a fresh
//! PostgreSQL database (or targets a running server), seeds a catalog and the rest through the
//! public API, and drives each scenario with N closed-loop callers over M HTTP/2 connections after a
//! warm-up. Every scenario's throughput is reported as a ratio to the gRPC health Check measured on
//! the same server, connections and concurrency in the same run: absolute figures drift on a
//! shared machine, the ratio is the cost of authentication, authorization, storage and audit over
//! bare gRPC. It also measures the server's resident memory (idle, per scenario, peak) and its time
//! from spawn to SERVING on the seeded database.

mod overload;
mod report;
mod scenario;
mod seed;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tonic::transport::{Channel, Endpoint};

use report::{EngineRun, Report};
use scenario::{Load, Scenario};
use server::Platformd;

/// A request carrying `token` as its bearer credential.
pub fn req<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    Sqlite,
    Postgres,
}

/// Drives the platform API with a load and reports throughput, latency and memory.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Storage engines to run on, each with its own freshly started platformd.
    #[arg(long = "engine", value_enum, default_values = ["sqlite"])]
    engines: Vec<Engine>,

    /// PostgreSQL URL of a database the load generator may create databases from (a fresh one per
    /// run, dropped afterwards). Required for `--engine postgres`.
    #[arg(long, env = "PLATFORM_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,

    /// The platformd binary to start [default: `platformd` next to this program].
    #[arg(long)]
    platformd: Option<PathBuf>,

    /// An extra argument for `platformd serve` (repeatable), e.g. `--platformd-arg=--sqlite-mmap-mib=0`.
    #[arg(long = "platformd-arg", allow_hyphen_values = true)]
    platformd_args: Vec<String>,

    /// Drive an already running server at this address instead of starting one (seeds a new
    /// tenant in it; needs a platform-admin `--token`). Memory is measured only with `--server-pid`.
    #[arg(long, conflicts_with = "engines")]
    target: Option<String>,

    /// The platform-admin token for `--target`.
    #[arg(long, env = "PLATFORM_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The process id of the `--target` server, to sample its memory.
    #[arg(long)]
    server_pid: Option<u32>,

    /// Scenarios to run (health, the baseline, always runs first).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,

    /// Components in the seeded catalog.
    #[arg(long, default_value_t = 100_000)]
    entities: usize,

    /// Concurrent closed-loop callers.
    #[arg(long, default_value_t = 32)]
    callers: usize,

    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,

    /// Seconds of warm-up before each scenario's measured period.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// Seconds each scenario is measured for.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// After the scenarios, offer this many times the measured throughput of
    /// `--overload-scenario` open-loop for `--duration-secs` (0: no overload phase). Give the
    /// server a concurrency limit to shed at, e.g. `--platformd-arg=--max-concurrent-requests=64`.
    #[arg(long, default_value_t = 0.0)]
    overload_factor: f64,

    /// The scenario the overload phase offers.
    #[arg(long, value_enum, default_value = "get-entity")]
    overload_scenario: Scenario,

    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write the Markdown report to this file (between `<!-- load:begin -->` and
    /// `<!-- load:end -->` if the file has them, so hand-written analysis around them stays).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.callers == 0 || args.connections == 0 {
        bail!("--callers and --connections must be at least 1");
    }
    if !(args.overload_factor >= 0.0 && args.overload_factor.is_finite()) {
        bail!("--overload-factor must be a number ≥ 0");
    }
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--duration-secs must be positive and --warmup-secs not negative");
    }
    let load = Load {
        callers: args.callers,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
    };
    let mut scenarios = vec![Scenario::Health];
    let chosen = if args.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        args.scenarios.clone()
    };
    scenarios.extend(chosen.into_iter().filter(|s| *s != Scenario::Health));

    let mut report = Report::new(&args_line(), load, args.connections, args.entities);
    if let Some(target) = &args.target {
        let token = args.token.as_deref().context("--target needs --token")?;
        let channels = connect(target, args.connections).await?;
        let tenant = format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        eprintln!("seeding tenant {tenant} on {target}");
        let fixture =
            Arc::new(seed::seed(channels[0].clone(), token, &tenant, args.entities).await?);
        let mut run = EngineRun::new("target");
        for scenario in &scenarios {
            run.push(scenario::drive(*scenario, &channels, &fixture, load, args.server_pid).await);
        }
        overload_phase(&mut run, &channels, &fixture, &args, load, args.server_pid).await;
        report.runs.push(run);
    } else {
        let binary = match &args.platformd {
            Some(path) => path.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("program directory")?
                .join("platformd"),
        };
        for engine in &args.engines {
            let run = match engine {
                Engine::Sqlite => {
                    let dir = tempfile::tempdir()?;
                    let database = format!("sqlite://{}", dir.path().join("platform.db").display());
                    run_engine(
                        "SQLite",
                        &binary,
                        dir.path(),
                        &database,
                        &scenarios,
                        &args,
                        load,
                    )
                    .await?
                }
                Engine::Postgres => {
                    let admin_url = args
                        .postgres_url
                        .as_deref()
                        .context("--engine postgres needs --postgres-url")?;
                    let dir = tempfile::tempdir()?;
                    let database = server::PostgresDatabase::create(admin_url).await?;
                    let run = run_engine(
                        "PostgreSQL",
                        &binary,
                        dir.path(),
                        &database.url,
                        &scenarios,
                        &args,
                        load,
                    )
                    .await;
                    database.drop().await;
                    run?
                }
            };
            report.runs.push(run);
        }
    }

    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        report::write_markdown(path, &report.markdown())?;
    }
    Ok(())
}

/// One engine: start on an empty database, seed, drive every scenario, then restart on the
/// seeded database to time start-up and idle memory there.
async fn run_engine(
    label: &str,
    binary: &std::path::Path,
    data_dir: &std::path::Path,
    database: &str,
    scenarios: &[Scenario],
    args: &Args,
    load: Load,
) -> anyhow::Result<EngineRun> {
    eprintln!("{label}: starting {}", binary.display());
    let mut run = EngineRun::new(label);
    let server = Platformd::start(binary, data_dir, database, &args.platformd_args).await?;
    run.start_empty_ms = Some(server.time_to_serving.as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.idle_rss_empty = server::memory(server.pid()).map(|m| m.rss);
    let token = server.bootstrap_token()?;
    let channels = connect(&server.addr, args.connections).await?;
    let fixture = Arc::new(seed::seed(channels[0].clone(), &token, "load", args.entities).await?);
    for scenario in scenarios {
        let measured =
            scenario::drive(*scenario, &channels, &fixture, load, Some(server.pid())).await;
        eprintln!("  {}", report::summary_line(&measured));
        run.push(measured);
    }
    overload_phase(
        &mut run,
        &channels,
        &fixture,
        args,
        load,
        Some(server.pid()),
    )
    .await;
    run.peak_rss = server::memory(server.pid()).map(|m| m.peak);
    // The engine is still running what the create scenarios queued; let it finish, so the
    // restart below measures an idle server (and say how long the backlog took).
    run.backlog_drain_secs = drain_backlog(channels[0].clone(), &fixture).await?;
    drop(channels);
    server.stop().await?;

    let server = Platformd::start(binary, data_dir, database, &args.platformd_args).await?;
    run.start_seeded_ms = Some(server.time_to_serving.as_secs_f64() * 1000.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.idle_rss_seeded = server::memory(server.pid()).map(|m| m.rss);
    server.stop().await?;
    Ok(run)
}

/// The overload phase, when `--overload-factor` asks for it: its capacity is the closed-loop
/// throughput of the scenario measured in this run (measured now if it was not run).
async fn overload_phase(
    run: &mut EngineRun,
    channels: &[Channel],
    fixture: &Arc<seed::Fixture>,
    args: &Args,
    load: Load,
    server_pid: Option<u32>,
) {
    if args.overload_factor <= 0.0 {
        return;
    }
    let scenario = args.overload_scenario;
    if run.scenario(scenario).is_none() {
        run.push(scenario::drive(scenario, channels, fixture, load, server_pid).await);
    }
    let capacity = run.scenario(scenario).map_or(0.0, |m| m.per_second);
    let overloaded = overload::run(
        scenario,
        capacity,
        args.overload_factor,
        channels,
        fixture,
        load,
        server_pid,
    )
    .await;
    eprintln!("  {}", report::overload_line(&overloaded));
    run.overload = Some(overloaded);
}

/// Waits (at most [`DRAIN_LIMIT`]) until no deployment of the fixture's tenant is queued or
/// running; the seconds it took, or `None` if the backlog outlasted the limit.
async fn drain_backlog(channel: Channel, fixture: &seed::Fixture) -> anyhow::Result<Option<f64>> {
    use platform_api::platform::deployments::v1 as dep;
    let mut client = dep::deployment_service_client::DeploymentServiceClient::new(channel);
    let started = std::time::Instant::now();
    loop {
        let left = client
            .list_deployments(req(
                &fixture.developer_token,
                dep::ListDeploymentsRequest {
                    parent: format!("tenants/{}", fixture.tenant),
                    filter: "state = \"QUEUED\" OR state = \"RUNNING\"".into(),
                    page_size: 1,
                    ..Default::default()
                },
            ))
            .await
            .context("ListDeployments")?
            .into_inner()
            .total_size;
        if left == 0 {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > DRAIN_LIMIT {
            eprintln!("  {left} deployments still queued or running after {DRAIN_LIMIT:?}");
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long [`drain_backlog`] waits.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);

/// `connections` separate HTTP/2 connections to `addr`.
async fn connect(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            Endpoint::from_shared(addr.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    Ok(channels)
}

/// The command line as run, for the report, with the token and the database URL (which may hold
/// a password) redacted.
fn args_line() -> String {
    let mut redact_next = false;
    let words: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, word)| {
            if i == 0 {
                return "platform-load".to_owned();
            }
            if std::mem::take(&mut redact_next) {
                return "***".to_owned();
            }
            for secret in ["--token", "--postgres-url"] {
                if word == secret {
                    redact_next = true;
                }
                if word.starts_with(&format!("{secret}=")) {
                    return format!("{secret}=***");
                }
            }
            word
        })
        .collect();
    words.join(" ")
}
