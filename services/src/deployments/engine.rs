//! The deployment engine: workers that claim queued work from the database, run the
//! environment's driver, stream its output into the log, and record the outcome.
//!
//! Durability comes from the database, not from the process. A worker claims a deployment (or an
//! environment's provision/teardown step) with a conditional UPDATE that sets a lease — its
//! owner and an expiry — and renews the lease while the driver runs. If the process dies, the
//! lease runs out and any worker (after a restart, or on another replica) takes the work over as
//! a new attempt, marking the interrupted one. Claims are compare-and-set on the row (state and
//! lease as read), so two workers never both win one item, on SQLite or on PostgreSQL, and no
//! lock is held while a driver runs. On PostgreSQL a claim first takes the row with `FOR UPDATE
//! SKIP LOCKED`, so replicas racing for the queue skip each other's rows instead of waiting.
//!
//! Order and exclusivity: a queued deployment is claimable only when no deployment of the same
//! (component, environment) is RUNNING and none older is still QUEUED, so each lane runs one at a
//! time in creation order on every replica at once. Queued deployments wait while their
//! environment is provisioning or locked, and are cancelled when it fails or is deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use platform_api::platform::deployments::v1 as dpb;
use platform_api::platform::environments::v1 as epb;
use prost::Message;
use sqlx::Row;
use tokio::sync::{Notify, mpsc, watch};

use crate::audit::{AuditLog, timestamp};
use crate::config::EngineConfig;
use crate::context::SYSTEM_PRINCIPAL;
use crate::driver::{self, Driver, LogStream, StepKind, StepOutcome};
use crate::error::Error;
use crate::secrets::{Keyring, inject};
use crate::store::{self, Store, WriteTx, now_micros};

use super::{deployment_load, deployment_load_for_update, deployment_save};

/// States, as stored (the proto enums' numbers).
pub(super) const QUEUED: i64 = dpb::DeploymentState::Queued as i64;
pub(super) const RUNNING: i64 = dpb::DeploymentState::Running as i64;
pub(super) const SUCCEEDED: i64 = dpb::DeploymentState::Succeeded as i64;
pub(super) const FAILED: i64 = dpb::DeploymentState::Failed as i64;
pub(super) const CANCELLED: i64 = dpb::DeploymentState::Cancelled as i64;

pub(super) const ENV_PROVISIONING: i64 = epb::EnvironmentState::Provisioning as i64;
pub(super) const ENV_READY: i64 = epb::EnvironmentState::Ready as i64;
const ENV_FAILED: i64 = epb::EnvironmentState::Failed as i64;
const ENV_TERMINATING: i64 = epb::EnvironmentState::Terminating as i64;
const ENV_TERMINATED: i64 = epb::EnvironmentState::Terminated as i64;
const OP_PENDING: i64 = epb::EnvironmentOperationState::Pending as i64;
const OP_RUNNING: i64 = epb::EnvironmentOperationState::Running as i64;
const OP_PROVISION: i64 = epb::EnvironmentOperationType::Provision as i64;
const OP_TEARDOWN: i64 = epb::EnvironmentOperationType::Teardown as i64;

/// How long a TERMINATED environment stays readable.
pub(crate) const PURGE_AFTER_US: i64 = 7 * 24 * 3600 * 1_000_000;
/// Log lines are written in batches of at most this many, at least this often.
const LOG_BATCH: usize = 200;
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// The engine of one platformd process.
pub struct Engine {
    store: Store,
    audit: AuditLog,
    config: EngineConfig,
    /// Wakes idle workers when this process queued work.
    work: Arc<Notify>,
    /// This process, for lease owners and `Attempt.worker`.
    instance: String,
    /// Cancellation switches of the deployments this process runs, by `{tenant}/{id}`.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Opens the secrets injected into steps.
    keyring: Arc<Keyring>,
    /// Turns true when the server shuts down: workers stop claiming and hand back what they run.
    stopping: watch::Sender<bool>,
    /// The workers [`Engine::start`] spawned, awaited by [`Engine::hand_back`].
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Where a step's log goes: a deployment's or an environment's.
#[derive(Debug, Clone)]
struct LogTarget {
    tenant: String,
    id: String,
    /// `None` for a deployment; the operation type for an environment.
    operation: Option<i64>,
    attempt: i64,
}

/// Appends lines to a log inside `tx`, numbering them after the parent row's `log_seq`. Past
/// `max_lines`, lines are dropped and one SYSTEM note says so.
async fn log_append(
    tx: &mut WriteTx,
    target: &LogTarget,
    lines: &[(i64, String, bool)],
    max_lines: i64,
) -> Result<(), Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let parent = if target.operation.is_some() {
        "environments"
    } else {
        "deployments"
    };
    // A no-op UPDATE … RETURNING reads the counter under the row lock, so concurrent appenders
    // (a worker's lines, a cancel's note) queue instead of taking the same numbers.
    let last: i64 = sqlx::query_scalar(&format!(
        "UPDATE {parent} SET log_seq = log_seq WHERE tenant = $1 AND id = $2 RETURNING log_seq"
    ))
    .bind(&target.tenant)
    .bind(&target.id)
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or(0);
    if last > max_lines {
        return Ok(()); // the note was written when the limit was reached
    }
    let room = (max_lines - last).max(0) as usize;
    let mut rows: Vec<(i64, &str, bool)> = lines
        .iter()
        .take(room)
        .map(|(s, t, tr)| (*s, t.as_str(), *tr))
        .collect();
    let note = format!("log limit of {max_lines} lines reached; later lines are dropped");
    if lines.len() > room {
        rows.push((dpb::LogStream::System as i64, note.as_str(), false));
    }
    let now = now_micros();
    for (i, (stream, text, truncated)) in rows.iter().enumerate() {
        let seq = last + 1 + i as i64;
        // Only environment log rows have an operation ($9); binding it for deployments would
        // be one parameter too many for PostgreSQL.
        let mut insert = match target.operation {
            None => sqlx::query(
                "INSERT INTO deployment_log (tenant, deployment, seq, time_us, stream, text, truncated, attempt) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            ),
            Some(_) => sqlx::query(
                "INSERT INTO environment_log (tenant, environment, seq, time_us, stream, text, truncated, attempt, operation) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            ),
        }
        .bind(&target.tenant)
        .bind(&target.id)
        .bind(seq)
        .bind(now)
        .bind(*stream)
        .bind(*text)
        .bind(i64::from(*truncated))
        .bind(target.attempt);
        if let Some(operation) = target.operation {
            insert = insert.bind(operation);
        }
        insert.execute(&mut **tx).await?;
    }
    sqlx::query(&format!(
        "UPDATE {parent} SET log_seq = $1 WHERE tenant = $2 AND id = $3"
    ))
    .bind(last + rows.len() as i64)
    .bind(&target.tenant)
    .bind(&target.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends one SYSTEM line to a log.
async fn system_note(tx: &mut WriteTx, target: &LogTarget, text: String) -> Result<(), Error> {
    log_append(
        tx,
        target,
        &[(dpb::LogStream::System as i64, text, false)],
        i64::MAX,
    )
    .await
}

/// Appends one SYSTEM line to a deployment's log.
pub(super) async fn deployment_note(
    tx: &mut WriteTx,
    tenant: &str,
    id: &str,
    attempt: i64,
    text: String,
) -> Result<(), Error> {
    let target = LogTarget {
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        operation: None,
        attempt,
    };
    system_note(tx, &target, text).await
}

/// Appends one SYSTEM line to an environment's log, for the step `operation`.
pub(crate) async fn environment_note(
    tx: &mut WriteTx,
    tenant: &str,
    id: &str,
    operation: i64,
    attempt: i64,
    text: String,
) -> Result<(), Error> {
    let target = LogTarget {
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        operation: Some(operation),
        attempt,
    };
    system_note(tx, &target, text).await
}

fn stream_number(stream: LogStream) -> i64 {
    match stream {
        LogStream::Stdout => dpb::LogStream::Stdout as i64,
        LogStream::Stderr => dpb::LogStream::Stderr as i64,
        LogStream::System => dpb::LogStream::System as i64,
    }
}

fn duration_of(d: &Option<prost_types::Duration>) -> Option<Duration> {
    d.as_ref().and_then(|d| {
        u64::try_from(d.seconds)
            .ok()
            .map(|s| Duration::from_secs(s) + Duration::from_nanos(d.nanos.max(0) as u64))
    })
}

fn env_type_name(t: i32) -> &'static str {
    match epb::EnvironmentType::try_from(t) {
        Ok(epb::EnvironmentType::Development) => "development",
        Ok(epb::EnvironmentType::Staging) => "staging",
        Ok(epb::EnvironmentType::Production) => "production",
        Ok(epb::EnvironmentType::Preview) => "preview",
        _ => "unspecified",
    }
}

/// The driver step to run, or `None` when the driver has no such step.
fn step_of(
    env: &epb::Environment,
    kind: StepKind,
    facts: BTreeMap<String, String>,
    max_line_bytes: usize,
) -> Option<(Box<dyn Driver>, driver::CommandStep)> {
    let driver = env.driver.as_ref().and_then(|d| d.driver.as_ref());
    match driver {
        None | Some(epb::driver::Driver::Noop(_)) => {
            let delay = match driver {
                Some(epb::driver::Driver::Noop(n)) => duration_of(&n.delay).unwrap_or_default(),
                _ => Duration::ZERO,
            };
            // The noop driver has a deploy step only; provisioning and teardown are skipped.
            (kind == StepKind::Deploy).then(|| {
                (
                    Box::new(driver::NoopDriver { delay }) as Box<dyn Driver>,
                    driver::CommandStep::new("noop"),
                )
            })
        }
        Some(epb::driver::Driver::Command(command)) => {
            let step = match kind {
                StepKind::Deploy => command.deploy.as_ref(),
                StepKind::Provision => command.provision.as_ref(),
                StepKind::Teardown => command.teardown.as_ref(),
            }?;
            // Only PATH, HOME, LANG and TZ of platformd's own environment are passed on.
            let mut vars: BTreeMap<String, String> = ["PATH", "HOME", "LANG", "TZ"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
                .collect();
            vars.extend(command.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            vars.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            vars.extend(env.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
            vars.extend(facts);
            let mut run = driver::CommandStep::new(step.program.clone());
            run.args = step.args.clone();
            run.env = vars;
            let dir = if step.working_directory.is_empty() {
                &command.working_directory
            } else {
                &step.working_directory
            };
            run.working_directory = (!dir.is_empty()).then(|| dir.into());
            run.timeout = duration_of(&step.timeout)
                .or_else(|| duration_of(&command.timeout))
                .unwrap_or(Duration::from_secs(30 * 60));
            run.termination_grace =
                duration_of(&command.termination_grace_period).unwrap_or(Duration::from_secs(10));
            run.max_line_bytes = max_line_bytes;
            Some((Box::new(driver::CommandDriver) as Box<dyn Driver>, run))
        }
    }
}

/// Hands opened secrets to a step: as environment variables (after the environment's
/// `variables`, before the platform's facts, which no binding may name) and as the values its
/// log masks.
fn inject_into(command: &mut driver::CommandStep, injected: &[inject::Injected]) {
    for secret in injected {
        command
            .env
            .insert(secret.variable.clone(), secret.value.to_string());
        command.secrets.push(secret.value.to_string());
    }
}

/// An environment as the engine reads it.
struct EnvRow {
    tenant: String,
    id: String,
    body: epb::Environment,
}

async fn environment_load<'e, E>(
    executor: E,
    tenant: &str,
    id: &str,
) -> Result<Option<EnvRow>, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT body FROM environments WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(executor)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let body: Vec<u8> = row.try_get("body")?;
    let body = epb::Environment::decode(body.as_slice())
        .map_err(|e| Error::internal(format!("stored environment: {e}")))?;
    Ok(Some(EnvRow {
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        body,
    }))
}

/// Writes an environment's body with its mirrored columns (state) and a new etag.
async fn environment_save(tx: &mut WriteTx, env: &mut EnvRow, op_state: i64) -> Result<(), Error> {
    let now = now_micros();
    env.body.update_time = Some(timestamp(now));
    env.body.etag = uuid::Uuid::new_v4().simple().to_string();
    let purge = env
        .body
        .purge_time
        .as_ref()
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
    sqlx::query(
        "UPDATE environments SET state = $1, body = $2, etag = $3, update_time_us = $4, op_state = $5, purge_time_us = $6 \
         WHERE tenant = $7 AND id = $8",
    )
    .bind(i64::from(env.body.state))
    .bind(env.body.encode_to_vec())
    .bind(&env.body.etag)
    .bind(now)
    .bind(op_state)
    .bind(purge)
    .bind(&env.tenant)
    .bind(&env.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What one claim gave a worker.
enum Claimed {
    Deployment {
        tenant: String,
        id: String,
    },
    Environment {
        tenant: String,
        id: String,
        op_type: i64,
    },
}

/// What [`Engine::step_hand_back`] did.
enum HandBack {
    /// The lease is released and the attempt marked handed back.
    Done,
    /// Another worker holds the work now, or it has ended.
    NotOurs,
    /// A user cancelled it meanwhile: it ends CANCELLED instead.
    CancelRequested,
}

impl Engine {
    pub fn new(
        store: Store,
        audit: AuditLog,
        config: EngineConfig,
        work: Arc<Notify>,
        keyring: Arc<Keyring>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "platformd".to_owned());
        Engine {
            store,
            audit,
            config,
            work,
            instance: format!(
                "{host}:{}/{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            running: Mutex::new(HashMap::new()),
            keyring,
            stopping: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
        }
    }

    /// Resolves (audited) and opens the secrets bound to an environment for a provision or
    /// teardown step. The inner `Err` is why the step cannot run.
    async fn secrets_for_step(
        &self,
        tenant: &str,
        env: &epb::Environment,
        env_id: &str,
    ) -> Result<Result<Vec<inject::Injected>, String>, Error> {
        if env.secret_bindings.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut tx = self.store.write_tx().await?;
        let inputs = match inject::bindings_resolve(
            &mut tx,
            &self.audit,
            tenant,
            env_id,
            &env.secret_bindings,
            "platformd:environment-secret-injection",
            &env.name,
        )
        .await?
        {
            Ok(inputs) => inputs,
            Err(message) => return Ok(Err(message)),
        };
        tx.commit().await?;
        self.audit.notify_committed();
        Ok(inject::inputs_open(&self.store, &self.keyring, tenant, &inputs).await)
    }

    /// Starts the configured number of workers; they run until [`Engine::hand_back`].
    pub fn start(self: &Arc<Self>) {
        let mut workers = self.workers.lock();
        for n in 0..self.config.workers {
            let engine = self.clone();
            workers.push(tokio::spawn(async move { engine.worker(n).await }));
        }
    }

    /// For a shutdown: the workers stop claiming work, stop the steps they run (the driver's
    /// cancellation: SIGTERM to the process group, a grace period, SIGKILL) and release their
    /// leases, so another replica — or this server after its restart — runs them again at once
    /// instead of after the lease has run out. Resolves when every worker has stopped.
    pub async fn hand_back(&self) {
        self.stopping.send_replace(true);
        let workers = std::mem::take(&mut *self.workers.lock());
        for worker in workers {
            let _ = worker.await;
        }
    }

    /// Stops a deployment this process is running (a local CancelDeployment); other replicas
    /// notice the request when they next renew their lease.
    pub fn cancel_local(&self, tenant: &str, id: &str) {
        if let Some(switch) = self.running.lock().get(&format!("{tenant}/{id}")) {
            let _ = switch.send(true);
        }
    }

    /// Kills the process group a dead worker on this host left behind for a row, if it is still
    /// there and really is that step (its environment names it: pids are reused).
    async fn leftover_stop(
        &self,
        tx: &mut WriteTx,
        table: &str,
        tenant: &str,
        id: &str,
        fact: &str,
        value: &str,
    ) -> Result<(), Error> {
        let pid: i64 = sqlx::query_scalar(&format!(
            "SELECT run_pid FROM {table} WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(0);
        if pid <= 1 {
            return Ok(());
        }
        let marker = format!("{fact}={value}");
        let ours = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
            .unwrap_or(false);
        if ours
            && let Some(group) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
        {
            tracing::warn!(pid, %tenant, %id, "stopping a step left running by a worker that died");
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        sqlx::query(&format!(
            "UPDATE {table} SET run_pid = 0 WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn worker(&self, n: usize) {
        let worker = format!("{}/worker-{n}", self.instance);
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            let woken = self.work.notified();
            match self.claim(&worker).await {
                Ok(Some(claimed)) => {
                    let result = match &claimed {
                        Claimed::Deployment { tenant, id } => {
                            self.deployment_run(&worker, tenant, id).await
                        }
                        Claimed::Environment {
                            tenant,
                            id,
                            op_type,
                        } => {
                            self.environment_step_run(&worker, tenant, id, *op_type)
                                .await
                        }
                    };
                    if self.store.pool().is_closed() {
                        // Shutting down: the step's lease runs out and another worker (or this
                        // server after a restart) takes it up; nothing to warn about.
                        return;
                    }
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "a deployment step ended with a storage error; its lease will expire and it will be retried");
                    }
                    self.audit.notify_committed();
                    continue;
                }
                Ok(None) => {}
                Err(_) if self.store.pool().is_closed() => return, // shutting down
                Err(err) => tracing::warn!(error = %err, "could not look for deployment work"),
            }
            tokio::select! {
                _ = tokio::time::timeout(self.config.poll, woken) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Claims the next piece of work: environment steps first (deployments may wait on them),
    /// then deployments in creation order. Also settles queued deployments that can never run.
    async fn claim(&self, worker: &str) -> Result<Option<Claimed>, Error> {
        if let Some(c) = self.environment_claim(worker).await? {
            return Ok(Some(c));
        }
        let now = now_micros();
        // Three small queries instead of one with ORs, so that each is an index walk:
        // abandoned runs (expired leases), queued work that can never run (its environment
        // failed or is going away), and the head of every lane that may start now.
        let columns = "d.tenant, d.id, d.state, d.lease_expires_us, d.cancel_requested, e.state AS env_state, e.locked AS env_locked";
        let mut candidates = sqlx::query(&format!(
            "SELECT {columns} FROM deployments d JOIN environments e ON e.tenant = d.tenant AND e.id = d.environment \
             WHERE d.state = $1 AND d.lease_expires_us < $2 ORDER BY d.create_time_us LIMIT 10"
        ))
        .bind(RUNNING)
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        candidates.extend(
            sqlx::query(&format!(
                "SELECT {columns} FROM environments e JOIN deployments d ON d.tenant = e.tenant AND d.environment = e.id \
                 WHERE e.state <> $1 AND e.state <> $2 AND d.state = $3 LIMIT 50"
            ))
            .bind(ENV_READY)
            .bind(ENV_PROVISIONING)
            .bind(QUEUED)
            .fetch_all(self.store.pool())
            .await?,
        );
        // The head of every lane: a loose index scan visits each lane with queued work once
        // (`lanes`), then takes its oldest queued deployment, if the lane runs nothing and its
        // environment is ready and unlocked. On SQLite, CROSS JOIN keeps the planner from
        // walking the whole queue from `deployments` instead. PostgreSQL takes each head with
        // LATERAL and an index MIN (with the join SQLite needs it walked every queued deployment
        // of the environment: 53 ms a claim with 13,000 queued; 15 ms now).
        let lanes = "WITH RECURSIVE lanes(lane) AS ( \
               SELECT (SELECT q.lane FROM deployments q WHERE q.state = $1 ORDER BY q.lane LIMIT 1) \
               UNION ALL \
               SELECT (SELECT q.lane FROM deployments q WHERE q.state = $1 AND q.lane > lanes.lane ORDER BY q.lane LIMIT 1) \
               FROM lanes WHERE lanes.lane IS NOT NULL)";
        let heads = match self.store.engine() {
            crate::store::Engine::Sqlite => format!(
                "{lanes} SELECT {columns} FROM lanes l CROSS JOIN deployments d \
                 JOIN environments e ON e.tenant = d.tenant AND e.id = d.environment \
                 WHERE l.lane IS NOT NULL AND d.state = $1 AND d.lane = l.lane AND d.create_time_us = \
                     (SELECT MIN(h.create_time_us) FROM deployments h WHERE h.state = $1 AND h.lane = l.lane) \
                 AND e.state = $2 AND e.locked = 0 \
                 AND NOT EXISTS (SELECT 1 FROM deployments o WHERE o.state = $3 AND o.lane = d.lane) \
                 AND NOT EXISTS (SELECT 1 FROM deployments o WHERE o.state = $1 AND o.lane = d.lane \
                     AND o.create_time_us = d.create_time_us AND o.id < d.id) \
                 ORDER BY d.create_time_us, d.id LIMIT 50"
            ),
            crate::store::Engine::Postgres => format!(
                "{lanes} SELECT {columns} FROM lanes l CROSS JOIN LATERAL \
                   (SELECT * FROM deployments h WHERE h.state = $1 AND h.lane = l.lane AND h.create_time_us = \
                     (SELECT MIN(m.create_time_us) FROM deployments m WHERE m.state = $1 AND m.lane = l.lane) \
                    ORDER BY h.id LIMIT 1) d \
                 JOIN environments e ON e.tenant = d.tenant AND e.id = d.environment \
                 WHERE l.lane IS NOT NULL AND e.state = $2 AND e.locked = 0 \
                 AND NOT EXISTS (SELECT 1 FROM deployments o WHERE o.state = $3 AND o.lane = d.lane) \
                 ORDER BY d.create_time_us, d.id LIMIT 50"
            ),
        };
        candidates.extend(
            sqlx::query(&heads)
                .bind(QUEUED)
                .bind(ENV_READY)
                .bind(RUNNING)
                .fetch_all(self.store.pool())
                .await?,
        );
        for row in candidates {
            let tenant: String = row.try_get("tenant")?;
            let id: String = row.try_get("id")?;
            let state: i64 = row.try_get("state")?;
            let lease: i64 = row.try_get("lease_expires_us")?;
            let cancel: i64 = row.try_get("cancel_requested")?;
            let env_state: i64 = row.try_get("env_state")?;
            let env_locked: i64 = row.try_get("env_locked")?;
            if state == QUEUED {
                if cancel == 1 {
                    self.deployment_settle(&tenant, &id, CANCELLED, "cancelled before it started")
                        .await?;
                    continue;
                }
                if env_state != ENV_READY && env_state != ENV_PROVISIONING {
                    self.deployment_settle(
                        &tenant,
                        &id,
                        CANCELLED,
                        "environment failed or was deleted before the deployment started",
                    )
                    .await?;
                    continue;
                }
                if env_state == ENV_PROVISIONING || env_locked == 1 {
                    continue; // waits for the environment
                }
            }
            if self
                .deployment_claim(worker, &tenant, &id, state, lease)
                .await?
            {
                return Ok(Some(Claimed::Deployment { tenant, id }));
            }
        }
        Ok(None)
    }

    /// Ends a QUEUED deployment without running it.
    async fn deployment_settle(
        &self,
        tenant: &str,
        id: &str,
        state: i64,
        message: &str,
    ) -> Result<(), Error> {
        let mut tx = self.store.write_tx().await?;
        let Some(mut d) = deployment_load_for_update(&mut tx, tenant, id).await? else {
            return Ok(());
        };
        if i64::from(d.body.state) != QUEUED {
            return Ok(()); // someone else moved it
        }
        let now = now_micros();
        transition(&mut d.body, state, message, now);
        if d.body.cancellation.is_none() && state == CANCELLED {
            d.body.cancellation = Some(dpb::Cancellation {
                requested_by: Some(dpb::Actor {
                    principal: SYSTEM_PRINCIPAL.to_owned(),
                    display_name: String::new(),
                }),
                request_time: Some(timestamp(now)),
                reason: message.to_owned(),
            });
        }
        deployment_note(
            &mut tx,
            tenant,
            id,
            0,
            format!("{}: {message}", state_name(state)),
        )
        .await?;
        deployment_save(&mut tx, &mut d, None).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        Ok(())
    }

    /// Compare-and-set claim of one deployment: starts an attempt (taking over an expired one).
    async fn deployment_claim(
        &self,
        worker: &str,
        tenant: &str,
        id: &str,
        seen_state: i64,
        seen_lease: i64,
    ) -> Result<bool, Error> {
        let mut tx = self.store.write_tx().await?;
        if !self
            .lock_or_skip(&mut tx, "deployments", tenant, id)
            .await?
        {
            return Ok(false);
        }
        let now = now_micros();
        let lease_until = now + self.config.lease.as_micros() as i64;
        let won = sqlx::query(
            "UPDATE deployments SET state = $1, lease_owner = $2, lease_expires_us = $3 \
             WHERE tenant = $4 AND id = $5 AND state = $6 AND lease_expires_us = $7",
        )
        .bind(RUNNING)
        .bind(worker)
        .bind(lease_until)
        .bind(tenant)
        .bind(id)
        .bind(seen_state)
        .bind(seen_lease)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            return Ok(false);
        }
        let Some(mut d) = deployment_load(&mut *tx, tenant, id).await? else {
            return Ok(false);
        };
        let mut notes = Vec::new();
        let handed_back = d.body.attempts.last().is_some_and(|a| a.handed_back);
        if seen_state == RUNNING && handed_back {
            notes.push(format!(
                "taking over after attempt {} was handed back",
                d.body.attempt_count
            ));
        } else if seen_state == RUNNING {
            // Taking over from a worker that stopped renewing its lease: first stop what it
            // left running on this host, so the step never runs twice at once.
            self.leftover_stop(
                &mut tx,
                "deployments",
                tenant,
                id,
                "PLATFORM_DEPLOYMENT",
                id,
            )
            .await?;
            d.body.interrupted_attempt_count += 1;
            if let Some(last) = d.body.attempts.last_mut() {
                last.interrupted = true;
                last.end_time = Some(timestamp(now));
            }
            notes.push(format!(
                "attempt {} was interrupted (its worker stopped renewing the lease)",
                d.body.attempt_count
            ));
            if d.body.attempt_count >= self.config.max_attempts as i32 {
                let message = format!(
                    "interrupted {} times; giving up",
                    d.body.interrupted_attempt_count
                );
                self.claim_fail(tx, (tenant, id), &mut d, notes, message, now)
                    .await?;
                return Ok(false);
            }
        } else {
            transition(&mut d.body, RUNNING, "running", now);
            d.body.start_time.get_or_insert(timestamp(now));
        }
        d.body.attempt_count += 1;
        d.body.attempts.push(dpb::Attempt {
            number: d.body.attempt_count,
            start_time: Some(timestamp(now)),
            end_time: None,
            interrupted: false,
            worker: worker.to_owned(),
            handed_back: false,
        });
        // The snapshot is captured once, when the first attempt starts (rollbacks bring theirs).
        if d.body.snapshot.is_none() {
            let env = environment_load(&mut *tx, tenant, &d.environment_id).await?;
            let (driver, variables, bindings) = match &env {
                Some(env) => (
                    match env.body.driver.as_ref().and_then(|d| d.driver.as_ref()) {
                        Some(epb::driver::Driver::Command(_)) => "command",
                        _ => "noop",
                    },
                    env.body.variables.clone(),
                    env.body.secret_bindings.clone(),
                ),
                None => ("noop", Default::default(), Default::default()),
            };
            // Each binding becomes one concrete version now; a rollback copies these.
            let secrets = match inject::bindings_resolve(
                &mut tx,
                &self.audit,
                tenant,
                &d.environment_id,
                &bindings,
                "platformd:deployment-secret-injection",
                &d.body.name,
            )
            .await?
            {
                Ok(secrets) => secrets,
                Err(message) => {
                    if let Some(last) = d.body.attempts.last_mut() {
                        last.end_time = Some(timestamp(now));
                    }
                    self.claim_fail(tx, (tenant, id), &mut d, notes, message, now)
                        .await?;
                    return Ok(false);
                }
            };
            d.body.snapshot = Some(dpb::Snapshot {
                version: d.body.version.clone(),
                commit_sha: d.body.commit_sha.clone(),
                driver: driver.to_owned(),
                variables,
                secrets,
                capture_time: Some(timestamp(now)),
                copied_from: String::new(),
            });
        }
        notes.push(format!(
            "attempt {} started on {worker}",
            d.body.attempt_count
        ));
        for note in notes {
            deployment_note(&mut tx, tenant, id, i64::from(d.body.attempt_count), note).await?;
        }
        deployment_save(&mut tx, &mut d, Some((worker, lease_until))).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        Ok(true)
    }

    /// On PostgreSQL, locks the row a claim is about to take, or reports at once that another
    /// replica's claim holds it (`FOR UPDATE SKIP LOCKED`), so workers of several replicas
    /// spread over the queue instead of queueing on one row's lock. The claim's compare-and-set
    /// then decides as on SQLite, where one writer at a time makes this unnecessary.
    async fn lock_or_skip(
        &self,
        tx: &mut WriteTx,
        table: &'static str,
        tenant: &str,
        id: &str,
    ) -> Result<bool, Error> {
        if self.store.engine() != store::Engine::Postgres {
            return Ok(true);
        }
        let free: Option<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE tenant = $1 AND id = $2 FOR UPDATE SKIP LOCKED"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(free.is_some())
    }

    /// Ends a claimed deployment FAILED before its step runs (too many interruptions, an input
    /// that cannot be had), with its notes, and commits.
    async fn claim_fail(
        &self,
        mut tx: WriteTx,
        (tenant, id): (&str, &str),
        d: &mut super::DeploymentRow,
        mut notes: Vec<String>,
        message: String,
        now: i64,
    ) -> Result<(), Error> {
        transition(&mut d.body, FAILED, &message, now);
        d.body.result = Some(dpb::DriverResult {
            message: message.clone(),
            ..Default::default()
        });
        notes.push(format!("FAILED: {message}"));
        for note in notes {
            deployment_note(&mut tx, tenant, id, i64::from(d.body.attempt_count), note).await?;
        }
        deployment_save(&mut tx, d, Some(("", 0))).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        self.work.notify_waiters(); // the lane's next deployment may start
        Ok(())
    }

    /// Runs the claimed deployment's current attempt to its end.
    async fn deployment_run(&self, worker: &str, tenant: &str, id: &str) -> Result<(), Error> {
        let Some(d) = deployment_load(self.store.pool(), tenant, id).await? else {
            return Ok(());
        };
        let attempt = i64::from(d.body.attempt_count);
        let env = environment_load(self.store.pool(), tenant, &d.environment_id).await?;
        let snapshot = d.body.snapshot.clone().unwrap_or_default();
        let (cancel_tx, cancel_rx) = watch::channel(d.cancel_requested);
        let key = format!("{tenant}/{id}");
        self.running.lock().insert(key.clone(), cancel_tx.clone());
        let injected =
            inject::inputs_open(&self.store, &self.keyring, tenant, &snapshot.secrets).await;
        let outcome = match (env, injected) {
            (_, Err(message)) => Some(StepOutcome::not_run(message)),
            (None, _) => Some(StepOutcome::not_run("its environment no longer exists")),
            (Some(mut env), Ok(injected)) => {
                // A rollback runs with the variables of the deployment it returns to.
                env.body.variables = snapshot.variables.clone();
                let facts: BTreeMap<String, String> = [
                    ("PLATFORM_TENANT", tenant.to_owned()),
                    ("PLATFORM_ENVIRONMENT", env.id.clone()),
                    (
                        "PLATFORM_ENVIRONMENT_NAME",
                        format!("tenants/{tenant}/environments/{}", env.id),
                    ),
                    (
                        "PLATFORM_ENVIRONMENT_TYPE",
                        env_type_name(env.body.r#type).to_owned(),
                    ),
                    ("PLATFORM_STEP", "deploy".to_owned()),
                    ("PLATFORM_ATTEMPT", attempt.to_string()),
                    ("PLATFORM_DEPLOYMENT", id.to_owned()),
                    ("PLATFORM_DEPLOYMENT_NAME", d.body.name.clone()),
                    ("PLATFORM_COMPONENT", d.body.component.clone()),
                    ("PLATFORM_VERSION", snapshot.version.clone()),
                    ("PLATFORM_COMMIT_SHA", snapshot.commit_sha.clone()),
                    ("PLATFORM_REASON", d.body.reason.clone()),
                    (
                        "PLATFORM_REQUESTED_BY",
                        d.body
                            .requested_by
                            .as_ref()
                            .map(|a| a.principal.clone())
                            .unwrap_or_default(),
                    ),
                    ("PLATFORM_ROLLBACK_OF", d.body.rollback_of.clone()),
                    ("PLATFORM_PROMOTED_FROM", d.body.promoted_from.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                match step_of(
                    &env.body,
                    StepKind::Deploy,
                    facts,
                    self.config.max_line_bytes,
                ) {
                    None => Some(StepOutcome::not_run(
                        "the environment's driver has no deploy step",
                    )),
                    Some((driver, mut command)) => {
                        inject_into(&mut command, &injected);
                        let target = LogTarget {
                            tenant: tenant.to_owned(),
                            id: id.to_owned(),
                            operation: None,
                            attempt,
                        };
                        self.step_run(
                            worker,
                            "deployments",
                            target,
                            driver,
                            driver::StepRequest {
                                kind: StepKind::Deploy,
                                environment: env.id.clone(),
                                command,
                                started: None,
                            },
                            cancel_tx,
                            cancel_rx,
                        )
                        .await?
                    }
                }
            }
        };
        self.running.lock().remove(&key);
        self.deployment_finish(worker, tenant, id, outcome).await
    }

    /// Records the end of an attempt, if this worker still holds the lease.
    async fn deployment_finish(
        &self,
        worker: &str,
        tenant: &str,
        id: &str,
        outcome: Option<StepOutcome>,
    ) -> Result<(), Error> {
        let Some(outcome) = outcome else {
            return Ok(()); // the lease was lost; whoever holds it now finishes
        };
        let mut tx = self.store.write_tx().await?;
        let Some(mut d) = deployment_load_for_update(&mut tx, tenant, id).await? else {
            return Ok(());
        };
        if d.lease_owner != worker || i64::from(d.body.state) != RUNNING {
            return Ok(());
        }
        let now = now_micros();
        let state = if outcome.succeeded() {
            SUCCEEDED
        } else if outcome.cancelled && d.cancel_requested {
            CANCELLED
        } else {
            FAILED
        };
        let message = if state == CANCELLED {
            let by = d
                .body
                .cancellation
                .as_ref()
                .and_then(|c| c.requested_by.as_ref())
                .map(|a| a.principal.clone())
                .unwrap_or_default();
            format!("cancelled by {by}")
        } else {
            outcome.message.clone()
        };
        if let Some(last) = d.body.attempts.last_mut() {
            last.end_time = Some(timestamp(now));
        }
        d.body.result = Some(dpb::DriverResult {
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            timed_out: outcome.timed_out,
            message: outcome.message.clone(),
        });
        transition(&mut d.body, state, &message, now);
        deployment_note(
            &mut tx,
            tenant,
            id,
            i64::from(d.body.attempt_count),
            format!("{}: {message}", state_name(state)),
        )
        .await?;
        deployment_save(&mut tx, &mut d, Some(("", 0))).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        self.work.notify_waiters(); // the lane's next deployment may start
        Ok(())
    }

    /// Runs a driver step while renewing the lease on `table`'s row and streaming its output to
    /// the log. `None` when the lease was lost (another worker owns the work now).
    #[allow(clippy::too_many_arguments)]
    async fn step_run(
        &self,
        worker: &str,
        table: &'static str,
        target: LogTarget,
        driver: Box<dyn Driver>,
        request: driver::StepRequest,
        cancel_tx: watch::Sender<bool>,
        cancel_rx: watch::Receiver<bool>,
    ) -> Result<Option<StepOutcome>, Error> {
        let (log_tx, mut log_rx) = mpsc::channel::<driver::LogLine>(1024);
        let (pid_tx, mut pid_rx) = mpsc::unbounded_channel::<u32>();
        let mut request = request;
        request.started = Some(pid_tx);
        let step = driver.run_step(request, log_tx, cancel_rx);
        tokio::pin!(step);
        let renew_every =
            (self.config.lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut renew = tokio::time::interval(renew_every);
        let mut flush = tokio::time::interval(LOG_FLUSH);
        let mut pending: Vec<(i64, String, bool)> = Vec::new();
        let mut lost = false;
        let mut stopping = self.stopping.subscribe();
        let mut handing_back = false;
        let cancel_column = if table == "deployments" {
            "cancel_requested"
        } else {
            "op_cancel"
        };
        let outcome = loop {
            tokio::select! {
                outcome = &mut step => break outcome,
                true = async { stopping.wait_for(|stop| *stop).await.is_ok() }, if !handing_back => {
                    handing_back = true;
                    let text = "platformd is shutting down: stopping this attempt to hand it back";
                    pending.push((stream_number(LogStream::System), text.to_owned(), false));
                    let _ = cancel_tx.send(true);
                }
                line = log_rx.recv() => {
                    if let Some(line) = line {
                        pending.push((stream_number(line.stream), line.text, line.truncated));
                        if pending.len() >= LOG_BATCH {
                            self.log_flush(&target, &mut pending).await?;
                        }
                    }
                }
                _ = flush.tick() => self.log_flush(&target, &mut pending).await?,
                // Writes go through write_tx like every other, so on SQLite they queue for
                // their turn instead of sleeping in the busy handler.
                Some(pid) = pid_rx.recv() => {
                    let mut tx = self.store.write_tx().await?;
                    sqlx::query(&format!("UPDATE {table} SET run_pid = $1 WHERE tenant = $2 AND id = $3 AND lease_owner = $4"))
                        .bind(i64::from(pid))
                        .bind(&target.tenant)
                        .bind(&target.id)
                        .bind(worker)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                _ = renew.tick() => {
                    let until = now_micros() + self.config.lease.as_micros() as i64;
                    let row = async {
                        let mut tx = self.store.write_tx().await?;
                        let row = sqlx::query(&format!(
                            "UPDATE {table} SET lease_expires_us = $1 WHERE tenant = $2 AND id = $3 AND lease_owner = $4 RETURNING {cancel_column} AS c"
                        ))
                        .bind(until)
                        .bind(&target.tenant)
                        .bind(&target.id)
                        .bind(worker)
                        .fetch_optional(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        Ok::<_, Error>(row)
                    }
                    .await;
                    match row {
                        Ok(None) => {
                            lost = true;
                            let _ = cancel_tx.send(true);
                        }
                        Ok(Some(row)) => {
                            if row.try_get::<i64, _>("c").unwrap_or(0) == 1 {
                                let _ = cancel_tx.send(true);
                            }
                        }
                        Err(_) if self.store.pool().is_closed() => {} // shutting down
                        Err(err) => tracing::warn!(error = %err, "could not renew a deployment lease"),
                    }
                }
            }
        };
        while let Ok(line) = log_rx.try_recv() {
            pending.push((stream_number(line.stream), line.text, line.truncated));
        }
        self.log_flush(&target, &mut pending).await?;
        // A step that ended by itself while the shutdown stopped it (it finished, or a user's
        // cancel was first) is recorded as it ended; only one the shutdown stopped is handed back.
        if handing_back && !lost && outcome.cancelled {
            return match self.step_hand_back(worker, table, &target).await? {
                HandBack::Done | HandBack::NotOurs => Ok(None),
                HandBack::CancelRequested => Ok(Some(outcome)),
            };
        }
        Ok((!lost).then_some(outcome))
    }

    /// Releases the lease of a step stopped for a shutdown, if this worker still holds it. A
    /// deployment's attempt is recorded as handed back (not interrupted: the next worker does
    /// not count it toward giving up); an environment step is taken over like an interrupted
    /// one.
    async fn step_hand_back(
        &self,
        worker: &str,
        table: &'static str,
        target: &LogTarget,
    ) -> Result<HandBack, Error> {
        let (tenant, id) = (target.tenant.as_str(), target.id.as_str());
        let mut tx = self.store.write_tx().await?;
        if table == "deployments" {
            let Some(mut d) = deployment_load_for_update(&mut tx, tenant, id).await? else {
                return Ok(HandBack::NotOurs);
            };
            if d.lease_owner != worker || i64::from(d.body.state) != RUNNING {
                return Ok(HandBack::NotOurs);
            }
            if d.cancel_requested {
                return Ok(HandBack::CancelRequested);
            }
            if let Some(last) = d.body.attempts.last_mut() {
                last.end_time = Some(timestamp(now_micros()));
                last.handed_back = true;
            }
            deployment_save(&mut tx, &mut d, Some(("", 0))).await?;
        } else {
            let released = sqlx::query(
                "UPDATE environments SET lease_expires_us = 0 WHERE tenant = $1 AND id = $2 AND lease_owner = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(worker)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if released == 0 {
                return Ok(HandBack::NotOurs);
            }
        }
        sqlx::query(&format!(
            "UPDATE {table} SET run_pid = 0 WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let text = format!(
            "attempt {} handed back (its server shut down); the next worker runs it again",
            target.attempt
        );
        system_note(&mut tx, target, text).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        Ok(HandBack::Done)
    }

    async fn log_flush(
        &self,
        target: &LogTarget,
        pending: &mut Vec<(i64, String, bool)>,
    ) -> Result<(), Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.write_tx().await?;
        log_append(&mut tx, target, pending, self.config.max_log_lines).await?;
        tx.commit().await?;
        pending.clear();
        self.audit.notify_committed();
        Ok(())
    }

    // ------------------------------------------------------------ environment steps

    /// Claims a pending (or abandoned) provision/teardown step. A teardown waits until no
    /// deployment runs in the environment.
    async fn environment_claim(&self, worker: &str) -> Result<Option<Claimed>, Error> {
        let now = now_micros();
        let rows = sqlx::query(
            "SELECT tenant, id, op_type, op_state, lease_expires_us FROM environments e \
             WHERE (op_state = $1 OR (op_state = $2 AND lease_expires_us < $3)) \
             AND (op_type = $4 OR NOT EXISTS (SELECT 1 FROM deployments d WHERE d.tenant = e.tenant AND d.environment = e.id AND d.state = $5)) \
             LIMIT 10",
        )
        .bind(OP_PENDING)
        .bind(OP_RUNNING)
        .bind(now)
        .bind(OP_PROVISION)
        .bind(RUNNING)
        .fetch_all(self.store.pool())
        .await?;
        for row in rows {
            let tenant: String = row.try_get("tenant")?;
            let id: String = row.try_get("id")?;
            let op_type: i64 = row.try_get("op_type")?;
            let op_state: i64 = row.try_get("op_state")?;
            let lease: i64 = row.try_get("lease_expires_us")?;
            let mut tx = self.store.write_tx().await?;
            if !self
                .lock_or_skip(&mut tx, "environments", &tenant, &id)
                .await?
            {
                continue;
            }
            let until = now + self.config.lease.as_micros() as i64;
            let won = sqlx::query(
                "UPDATE environments SET op_state = $1, lease_owner = $2, lease_expires_us = $3 \
                 WHERE tenant = $4 AND id = $5 AND op_state = $6 AND lease_expires_us = $7 AND op_type = $8",
            )
            .bind(OP_RUNNING)
            .bind(worker)
            .bind(until)
            .bind(&tenant)
            .bind(&id)
            .bind(op_state)
            .bind(lease)
            .bind(op_type)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !won {
                continue;
            }
            let Some(mut env) = environment_load(&mut *tx, &tenant, &id).await? else {
                continue;
            };
            if op_state == OP_RUNNING {
                self.leftover_stop(
                    &mut tx,
                    "environments",
                    &tenant,
                    &id,
                    "PLATFORM_ENVIRONMENT",
                    &id,
                )
                .await?;
            }
            let operation = operation_of(&mut env.body, op_type);
            if op_state == OP_RUNNING {
                operation.interrupted_attempt_count += 1;
            }
            operation.attempt_count += 1;
            operation.state = OP_RUNNING as i32;
            operation.start_time.get_or_insert(timestamp(now));
            let attempt = i64::from(operation.attempt_count);
            environment_save(&mut tx, &mut env, OP_RUNNING).await?;
            let target = LogTarget {
                tenant: tenant.clone(),
                id: id.clone(),
                operation: Some(op_type),
                attempt,
            };
            let text = if op_state == OP_RUNNING {
                format!("attempt {attempt} started on {worker} (the previous one was interrupted)")
            } else {
                format!("attempt {attempt} started on {worker}")
            };
            system_note(&mut tx, &target, text).await?;
            tx.commit().await?;
            self.audit.notify_committed();
            return Ok(Some(Claimed::Environment {
                tenant,
                id,
                op_type,
            }));
        }
        Ok(None)
    }

    async fn environment_step_run(
        &self,
        worker: &str,
        tenant: &str,
        id: &str,
        op_type: i64,
    ) -> Result<(), Error> {
        let Some(mut env) = environment_load(self.store.pool(), tenant, id).await? else {
            return Ok(());
        };
        let kind = if op_type == OP_PROVISION {
            StepKind::Provision
        } else {
            StepKind::Teardown
        };
        let attempt = i64::from(operation_of(&mut env.body, op_type).attempt_count);
        let facts: BTreeMap<String, String> = [
            ("PLATFORM_TENANT", tenant.to_owned()),
            ("PLATFORM_ENVIRONMENT", id.to_owned()),
            (
                "PLATFORM_ENVIRONMENT_NAME",
                format!("tenants/{tenant}/environments/{id}"),
            ),
            (
                "PLATFORM_ENVIRONMENT_TYPE",
                env_type_name(env.body.r#type).to_owned(),
            ),
            ("PLATFORM_STEP", kind.to_string()),
            ("PLATFORM_ATTEMPT", attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let step = step_of(&env.body, kind, facts, self.config.max_line_bytes);
        let injected = match &step {
            Some(_) => self.secrets_for_step(tenant, &env.body, id).await?,
            None => Ok(Vec::new()),
        };
        let outcome = match (step, injected) {
            (None, _) => Some(StepOutcome::not_run("skipped: the driver has no such step")),
            (Some(_), Err(message)) => Some(StepOutcome::not_run(message)),
            (Some((driver, mut command)), Ok(injected)) => {
                inject_into(&mut command, &injected);
                let (cancel_tx, cancel_rx) = watch::channel(false);
                let target = LogTarget {
                    tenant: tenant.to_owned(),
                    id: id.to_owned(),
                    operation: Some(op_type),
                    attempt,
                };
                self.step_run(
                    worker,
                    "environments",
                    target,
                    driver,
                    driver::StepRequest {
                        kind,
                        environment: id.to_owned(),
                        command,
                        started: None,
                    },
                    cancel_tx,
                    cancel_rx,
                )
                .await?
            }
        };
        let Some(outcome) = outcome else {
            return Ok(()); // lease lost
        };
        let mut tx = self.store.write_tx().await?;
        // Row lock first (see deployment_load_for_update), then read.
        crate::store::row_lock(&mut tx, "environments", tenant, id).await?;
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT lease_owner FROM environments WHERE tenant = $1 AND id = $2 AND op_type = $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(op_type)
        .fetch_optional(&mut *tx)
        .await?;
        if owner.as_deref() != Some(worker) {
            return Ok(());
        }
        let Some(mut env) = environment_load(&mut *tx, tenant, id).await? else {
            return Ok(());
        };
        let now = now_micros();
        let skipped = outcome.message.starts_with("skipped");
        let op_state = if outcome.cancelled {
            epb::EnvironmentOperationState::Cancelled
        } else if skipped {
            epb::EnvironmentOperationState::Skipped
        } else if outcome.succeeded() {
            epb::EnvironmentOperationState::Succeeded
        } else {
            epb::EnvironmentOperationState::Failed
        };
        let ok = matches!(
            op_state,
            epb::EnvironmentOperationState::Succeeded | epb::EnvironmentOperationState::Skipped
        );
        {
            let operation = operation_of(&mut env.body, op_type);
            operation.state = op_state as i32;
            operation.end_time = Some(timestamp(now));
            operation.result = Some(epb::DriverResult {
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                timed_out: outcome.timed_out,
                message: outcome.message.clone(),
            });
        }
        let step = if op_type == OP_PROVISION {
            "provision"
        } else {
            "teardown"
        };
        // An environment deleted while it was provisioning goes on to its teardown, whatever
        // the provision step did (DeleteEnvironment left the teardown record PENDING).
        let teardown_next = op_type == OP_PROVISION && i64::from(env.body.state) == ENV_TERMINATING;
        if !teardown_next {
            if ok {
                if op_type == OP_PROVISION {
                    env.body.state = ENV_READY as i32;
                    env.body.state_message = String::new();
                } else {
                    env.body.state = ENV_TERMINATED as i32;
                    env.body.state_message = String::new();
                    env.body.purge_time = Some(timestamp(now + PURGE_AFTER_US));
                }
            } else {
                env.body.state = ENV_FAILED as i32;
                env.body.state_message = format!("{step} step {}", outcome.message);
            }
        }
        let (next_type, next_state) = if teardown_next {
            (OP_TEARDOWN, OP_PENDING)
        } else {
            (op_type, op_state as i64)
        };
        environment_save(&mut tx, &mut env, next_state).await?;
        sqlx::query(
            "UPDATE environments SET lease_owner = '', lease_expires_us = 0, op_type = $1, op_cancel = 0, run_pid = 0 \
             WHERE tenant = $2 AND id = $3",
        )
        .bind(next_type)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let target = LogTarget {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            operation: Some(op_type),
            attempt: i64::from(operation_of(&mut env.body, op_type).attempt_count),
        };
        system_note(
            &mut tx,
            &target,
            format!(
                "{step} {}: {}",
                if ok { "finished" } else { "failed" },
                outcome.message
            ),
        )
        .await?;
        tx.commit().await?;
        self.audit.notify_committed();
        self.work.notify_waiters(); // deployments waiting for this environment
        Ok(())
    }
}

/// The operation record of the given type in an environment body (created if missing).
fn operation_of(env: &mut epb::Environment, op_type: i64) -> &mut epb::EnvironmentOperation {
    let slot = if op_type == OP_PROVISION {
        &mut env.provisioning
    } else {
        &mut env.teardown
    };
    slot.get_or_insert_with(|| epb::EnvironmentOperation {
        r#type: op_type as i32,
        state: OP_PENDING as i32,
        ..Default::default()
    })
}

/// Moves a deployment to `state`, recording the transition (and its end time when terminal).
pub(super) fn transition(d: &mut dpb::Deployment, state: i64, message: &str, now: i64) {
    d.state = state as i32;
    d.state_message = message.to_owned();
    d.state_history.push(dpb::StateTransition {
        state: state as i32,
        time: Some(timestamp(now)),
        message: message.to_owned(),
    });
    if matches!(state, SUCCEEDED | FAILED | CANCELLED) {
        d.end_time = Some(timestamp(now));
    }
}

pub(super) fn state_name(state: i64) -> &'static str {
    match state {
        QUEUED => "QUEUED",
        RUNNING => "RUNNING",
        SUCCEEDED => "SUCCEEDED",
        FAILED => "FAILED",
        CANCELLED => "CANCELLED",
        _ => "UNSPECIFIED",
    }
}
