//! Secrets benchmark: 32 concurrent callers through the real server (in-process, gRPC over
//! loopback) for a few seconds each: the gRPC health Check as the same-run baseline, then
//! AccessSecretVersion (authorize, unwrap the data key, decrypt, audit, answer) of a 1 KiB value,
//! then AddSecretVersion (seal + audited write). Reports calls per second, median and p99, and
//! the ratio to the baseline, on SQLite and — with PLATFORM_BENCH_POSTGRES_URL — PostgreSQL.
//! It asserts nothing.
//!
//! `cargo bench -p platformd --bench secrets` (BENCH_SECONDS, default 5; BENCH_CALLERS, 32).

use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_api::platform::secrets::v1 as spb;
use platformd::config::DatabaseUrl;

mod common;
use common::{PostgresDb, Server, req};

/// Runs `call` from `callers` tasks for `seconds`; returns (calls/s, median ms, p99 ms).
async fn drive<F, Fut>(callers: usize, seconds: u64, call: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                call().await;
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

async fn run(
    name: &str,
    database: DatabaseUrl,
    data_dir: &std::path::Path,
    seconds: u64,
    callers: usize,
) {
    let server = Server::start(&database, data_dir, |c| c.engine.workers = 0).await;
    server.create_tenant("acme").await;
    let (channel, token) = (server.channel.clone(), server.token.clone());
    let mut secrets = spb::secret_service_client::SecretServiceClient::new(channel.clone());
    secrets
        .create_secret(req(
            &token,
            spb::CreateSecretRequest {
                parent: "tenants/acme".into(),
                secret_id: "db".into(),
                secret: Some(spb::Secret::default()),
                ..Default::default()
            },
        ))
        .await
        .expect("secret");
    let version = secrets
        .add_secret_version(req(
            &token,
            spb::AddSecretVersionRequest {
                parent: "tenants/acme/secrets/db".into(),
                payload: Some(spb::SecretPayload {
                    data: vec![7u8; 1024],
                    data_crc32c: None,
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("version")
        .into_inner();

    let health_channel = channel.clone();
    let (health, h50, h99) = drive(callers, seconds, move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(health_channel.clone());
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("health");
        }
    })
    .await;
    let (t, c, v) = (token.clone(), channel.clone(), version.name.clone());
    let (access, a50, a99) = drive(callers, seconds, move || {
        let (t, v) = (t.clone(), v.clone());
        let mut client = spb::secret_service_client::SecretServiceClient::new(c.clone());
        async move {
            let payload = client
                .access_secret_version(req(&t, spb::AccessSecretVersionRequest { name: v }))
                .await
                .expect("access")
                .into_inner()
                .payload
                .expect("payload");
            assert_eq!(payload.data.len(), 1024);
        }
    })
    .await;
    let (t, c) = (token.clone(), channel.clone());
    let (add, d50, d99) = drive(callers, seconds, move || {
        let t = t.clone();
        let mut client = spb::secret_service_client::SecretServiceClient::new(c.clone());
        async move {
            client
                .add_secret_version(req(
                    &t,
                    spb::AddSecretVersionRequest {
                        parent: "tenants/acme/secrets/db".into(),
                        payload: Some(spb::SecretPayload {
                            data: vec![9u8; 1024],
                            data_crc32c: None,
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .expect("add");
        }
    })
    .await;
    println!("| {name} | health (baseline) | {health:.0} | {h50:.2} / {h99:.2} | 1.00 |");
    println!(
        "| {name} | AccessSecretVersion | {access:.0} | {a50:.2} / {a99:.2} | {:.2} |",
        access / health
    );
    println!(
        "| {name} | AddSecretVersion | {add:.0} | {d50:.2} / {d99:.2} | {:.2} |",
        add / health
    );
    server.stop().await;
}

fn main() {
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
        println!("| engine | call | calls/s | ms median / p99 | ratio to health |");
        println!("|---|---|---|---|---|");
        let dir = tempfile::tempdir().expect("tempdir");
        run(
            "SQLite",
            DatabaseUrl::Sqlite(dir.path().join("platform.db")),
            dir.path(),
            seconds,
            callers,
        )
        .await;
        if let Ok(admin_url) = std::env::var("PLATFORM_BENCH_POSTGRES_URL") {
            let db = PostgresDb::create(&admin_url).await;
            let pg_dir = tempfile::tempdir().expect("tempdir");
            run(
                "PostgreSQL",
                db.url.clone(),
                pg_dir.path(),
                seconds,
                callers,
            )
            .await;
            db.drop().await;
        }
    });
}
