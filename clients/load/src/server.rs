//! The platformd under test: a child process started from the release binary on a loopback port,
//! so its resident memory is its own (not the load generator's) and it starts exactly as an
//! operator's would. Its JSON log names the bound address; its data directory holds the bootstrap
//! token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A running `platformd serve`.
pub struct Platformd {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// From spawning the process to the health service answering SERVING.
    pub time_to_serving: Duration,
}

impl Platformd {
    /// Starts `binary serve` on `database` with its data in `data_dir` and waits for SERVING.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        database: &str,
        extra_args: &[String],
    ) -> anyhow::Result<Platformd> {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database")
            .arg(database)
            .arg("--log-format=json")
            .arg("--log-level=info")
            .args(extra_args)
            .env_remove("PLATFORM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("platformd stderr")?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
        // Drains the log for the life of the process (a full pipe would stall the server) and
        // passes on the bound address; warnings and errors are echoed for the operator.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(addr) = value.get("local_addr").and_then(|a| a.as_str()) {
                    let _ = addr_tx.send(addr.to_owned());
                }
                if matches!(
                    value.get("level").and_then(|l| l.as_str()),
                    Some("WARN" | "ERROR")
                ) {
                    eprintln!("platformd: {line}");
                }
            }
        });
        let addr =
            tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(60)))
                .await?;
        let Ok(addr) = addr else {
            let _ = child.kill();
            bail!("platformd did not report its address within 60 s");
        };
        let mut server = Platformd {
            child,
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            time_to_serving: Duration::ZERO,
        };
        server.wait_serving(Duration::from_secs(60)).await?;
        server.time_to_serving = started.elapsed();
        Ok(server)
    }

    async fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(channel) = Channel::from_shared(self.addr.clone())?.connect().await
                && let Ok(response) = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("platformd exited during start-up ({status})");
            }
            if Instant::now() > deadline {
                bail!("platformd was not SERVING within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The bootstrap platform-admin token written on the first start.
    pub fn bootstrap_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir.join("bootstrap-admin.token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("platformd did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Platformd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now, anonymous and file-backed (SQLite's memory map) together.
    pub rss: u64,
    /// `RssAnon`: the process's own heap and stacks, without mapped file pages.
    pub anon: u64,
    /// `VmHWM`: the peak of `rss` since the process started.
    pub peak: u64,
}

/// The memory of process `pid` from `/proc/{pid}/status` (Linux).
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        peak: field("VmHWM:")?,
    })
}

/// A fresh PostgreSQL database for one run, created from an admin URL and dropped afterwards.
pub struct PostgresDatabase {
    admin: sqlx::PgConnection,
    name: String,
    pub url: String,
}

impl PostgresDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<PostgresDatabase> {
        use sqlx::Connection;
        let name = format!("platform_load_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .context("creating the run's database")?;
        let base = admin_url
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .map(|(base, _)| base.to_owned())
            .context("the PostgreSQL URL names no database")?;
        Ok(PostgresDatabase {
            admin,
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub async fn drop(mut self) {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await;
    }
}
