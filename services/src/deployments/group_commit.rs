//! Group commit of `CreateDeployment`: concurrent creates queue to one task, which commits all
//! of them together — each with its audit record — in one transaction of a few multi-row
//! statements.
//!
//! Why: a write transaction holds SQLite's one write lock from BEGIN to COMMIT, and each
//! statement inside it is a round trip to the connection's thread, then a wait for the runtime
//! to resume the caller behind every other ready task. A create alone made about eleven such
//! trips, so creates were bounded by that serial chain (about 800/s at 32 callers, with CPU to
//! spare) however few microseconds SQLite itself spent. A batch pays the trips once. No create
//! waits for a batch to fill: the task takes whatever queued while the previous batch committed
//! (a batch of one when the load is light), so batching adds no latency of its own.
//!
//! Each create keeps its own outcome. A check that fails (an unknown environment or component,
//! a lock, the production permission, a request id reused for another request) refuses that
//! create alone, audited as failed in the same transaction. If the transaction itself fails, each
//! create of the batch is retried alone, so one create can never fail the others; a database
//! that is unavailable fails them all at once instead of one timeout after another. A create
//! whose caller has gone (deadline, cancel) before its batch starts is not written.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use platform_api::platform::deployments::v1 as pb;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::instrument;

use super::{
    TargetEnvironment, check_production, deployment_current, deployment_new, deployments_insert,
    environment_target,
};
use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::authz::Gate;
use crate::context::CallContext;
use crate::error::Error;
use crate::idempotency::{self, Stored};
use crate::store::Store;

/// Creates one transaction commits at most. Bounds the statements' size (22 parameters a row)
/// and how long one batch holds the write lock.
const MAX_BATCH: usize = 256;

/// The audit record's changed fields of a create.
const CHANGED_FIELDS: &[&str] = &["deployment"];

/// A validated `CreateDeploymentRequest`, with the names parsed.
#[derive(Debug)]
pub(super) struct NewDeploymentRequest {
    pub ctx: CallContext,
    pub tenant: String,
    pub environment_id: String,
    /// The environment as the caller named it, for NOT_FOUND.
    pub environment_name: String,
    /// The canonical component reference, `component:{namespace}/{name}`.
    pub component: String,
    /// The client's fields of the new deployment.
    pub given: pb::Deployment,
    pub request_id: String,
    pub validate_only: bool,
}

struct Queued {
    request: NewDeploymentRequest,
    reply: oneshot::Sender<Result<pb::Deployment, Error>>,
}

/// Where handlers queue creates; the committing task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct CreateQueue {
    sender: mpsc::Sender<Queued>,
}

impl CreateQueue {
    /// Starts the committing task (needs a Tokio runtime).
    pub fn start(store: Store, audit: AuditLog, gate: Gate, work: Arc<Notify>) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
        let committer = Committer {
            store,
            audit,
            gate,
            work,
        };
        tokio::spawn(committer.run(receiver));
        CreateQueue { sender }
    }

    /// Queues a create and waits for its batch to commit.
    pub async fn create(&self, request: NewDeploymentRequest) -> Result<pb::Deployment, Error> {
        let stopped = || Error::Unavailable {
            message: "the server is shutting down".to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Queued { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// How one create of a batch was answered.
enum Answer {
    /// Inserted in this batch, audited as allowed.
    Created(pb::Deployment),
    /// Nothing written: a `validate_only` create, or a retry of a create made earlier in the
    /// same batch.
    Unchanged(pb::Deployment),
    /// A retry of a create committed before: its stored result, to be read again as it is now.
    Replayed(pb::Deployment),
    /// Refused by a check, audited as failed (unless `validate_only`).
    Refused(Error),
}

struct Committer {
    store: Store,
    audit: AuditLog,
    gate: Gate,
    work: Arc<Notify>,
}

impl Committer {
    async fn run(self, mut receiver: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Callers gone before their batch starts (deadline, cancel) are not written.
            batch.retain(|queued| !queued.reply.is_closed());
            self.commit(std::mem::take(&mut batch)).await;
        }
    }

    async fn commit(&self, batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        let requests: Vec<&NewDeploymentRequest> = batch.iter().map(|q| &q.request).collect();
        match self.try_commit(&requests).await {
            Ok(answers) => {
                for (queued, answer) in batch.into_iter().zip(answers) {
                    self.deliver(queued.reply, answer);
                }
            }
            Err(Error::Unavailable { message }) => {
                for queued in batch {
                    let _ = queued.reply.send(Err(Error::Unavailable {
                        message: message.clone(),
                    }));
                }
            }
            Err(err) if batch.len() == 1 => {
                if let Some(queued) = batch.into_iter().next() {
                    if !queued.request.validate_only {
                        self.audit
                            .record_failure(&queued.request.ctx, &err, CHANGED_FIELDS)
                            .await;
                    }
                    let _ = queued.reply.send(Err(err));
                }
            }
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    creates = batch.len(),
                    "a group commit of deployments failed; committing each alone"
                );
                for queued in batch {
                    Box::pin(self.commit(vec![queued])).await;
                }
            }
        }
    }

    fn deliver(&self, reply: oneshot::Sender<Result<pb::Deployment, Error>>, answer: Answer) {
        let _ = match answer {
            Answer::Created(d) | Answer::Unchanged(d) => reply.send(Ok(d)),
            Answer::Refused(err) => reply.send(Err(err)),
            Answer::Replayed(stored) => {
                // A read; it must not hold up the next batch.
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _ = reply.send(deployment_current(&store, stored).await);
                });
                Ok(())
            }
        };
    }

    /// Decides and writes a batch in one transaction; the answers are in the batch's order.
    #[instrument(skip_all, fields(creates = requests.len()))]
    async fn try_commit(&self, requests: &[&NewDeploymentRequest]) -> Result<Vec<Answer>, Error> {
        let mut tx = self.store.write_tx().await?;

        // What the batch reads: earlier results of its request ids, its environments, and which
        // of its components exist — one query per scope, environment and tenant.
        let mut stored: HashMap<(String, String), Stored> = HashMap::new();
        let mut scopes: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in requests.iter().filter(|r| !r.request_id.is_empty()) {
            scopes
                .entry(r.ctx.chain())
                .or_default()
                .push(r.request_id.as_str());
        }
        for (scope, ids) in scopes {
            for (id, found) in idempotency::lookup_many(&mut tx, scope, &ids).await? {
                stored.insert((scope.to_owned(), id), found);
            }
        }
        let mut environments: HashMap<(&str, &str), Option<TargetEnvironment>> = HashMap::new();
        for r in requests {
            let key = (r.tenant.as_str(), r.environment_id.as_str());
            if let Entry::Vacant(slot) = environments.entry(key) {
                slot.insert(environment_target(&mut *tx, key.0, key.1).await?);
            }
        }
        let mut components: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in requests {
            components
                .entry(r.tenant.as_str())
                .or_default()
                .push(r.component.as_str());
        }
        let mut existing: HashSet<(String, String)> = HashSet::new();
        for (tenant, refs) in components {
            for found in components_existing(&mut tx, tenant, &refs).await? {
                existing.insert((tenant.to_owned(), found));
            }
        }

        // Each create's answer, in order; a retry of a create made earlier in this batch gets
        // that create.
        let mut answers = Vec::with_capacity(requests.len());
        let mut created_here: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            let key = (r.ctx.chain(), r.request_id.as_str());
            if !r.request_id.is_empty() {
                if let Some(found) = stored.get(&(key.0.to_owned(), key.1.to_owned())) {
                    answers.push(match found.answer::<pb::Deployment>(&r.ctx) {
                        Ok(d) => Answer::Replayed(d),
                        Err(err) => Answer::Refused(err),
                    });
                    continue;
                }
                if let Some(&first) = created_here.get(&key) {
                    let (earlier, Answer::Created(d)) = (requests[first], &answers[first]) else {
                        return Err(Error::internal("a batch's first create was not created"));
                    };
                    answers.push(if earlier.ctx.principal == r.ctx.principal {
                        Answer::Unchanged(d.clone())
                    } else {
                        Answer::Refused(Error::invalid_argument(
                            "request_id",
                            "was already used for a different request",
                        ))
                    });
                    continue;
                }
            }
            let env = environments
                .get(&(r.tenant.as_str(), r.environment_id.as_str()))
                .and_then(Option::as_ref);
            let checked = self.check(r, env, &existing);
            answers.push(match checked {
                Ok(env) => {
                    let d =
                        deployment_new(&r.ctx, &r.tenant, r.given.clone(), env, r.validate_only);
                    if r.validate_only {
                        Answer::Unchanged(d)
                    } else {
                        if !r.request_id.is_empty() {
                            created_here.insert(key, i);
                        }
                        Answer::Created(d)
                    }
                }
                Err(err) => Answer::Refused(err),
            });
        }

        // The writes: the new deployments with their first log lines, their request ids, and
        // every record — allowed or failed — in the callers' chains.
        let mut rows = Vec::new();
        let mut remembered = Vec::new();
        let mut records = Vec::new();
        for (r, answer) in requests.iter().zip(&answers) {
            match answer {
                Answer::Created(d) => {
                    rows.push((&r.ctx, d, r.environment_id.as_str()));
                    remembered.push((&r.ctx, r.request_id.as_str(), d));
                    records.push(AuditRecord::of_call(
                        &r.ctx,
                        Outcome::Allowed,
                        tonic::Code::Ok,
                        CHANGED_FIELDS,
                    ));
                }
                Answer::Refused(err) if !r.validate_only => records.push(AuditRecord::of_call(
                    &r.ctx,
                    Outcome::Failed,
                    err.code(),
                    CHANGED_FIELDS,
                )),
                _ => {}
            }
        }
        if records.is_empty() {
            // Nothing to write (validate_only, or retries only).
            drop(tx);
            return Ok(answers);
        }
        deployments_insert(&mut tx, &rows).await?;
        idempotency::remember_many(&mut tx, &remembered).await?;
        self.audit.append_all(&mut tx, &records).await?;
        tx.commit().await?;
        self.audit.notify_committed();
        if !rows.is_empty() {
            self.work.notify_one();
        }
        Ok(answers)
    }

    /// The checks of one create against what its batch read; the environment it goes to.
    fn check<'e>(
        &self,
        r: &NewDeploymentRequest,
        env: Option<&'e TargetEnvironment>,
        existing: &HashSet<(String, String)>,
    ) -> Result<&'e TargetEnvironment, Error> {
        let env = env.ok_or_else(|| Error::NotFound {
            resource_type: "environment",
            name: r.environment_name.clone(),
        })?;
        if !existing.contains(&(r.tenant.clone(), r.component.clone())) {
            return Err(Error::NotFound {
                resource_type: "component",
                name: r.component.clone(),
            });
        }
        check_production(&self.gate, &r.ctx, env)?;
        env.check_open()?;
        Ok(env)
    }
}

/// Which of `refs` are entities of `tenant` in the catalog.
async fn components_existing(
    tx: &mut crate::store::WriteTx,
    tenant: &str,
    refs: &[&str],
) -> Result<Vec<String>, Error> {
    let mut found = Vec::new();
    // One parameter is the tenant.
    for chunk in refs.chunks(crate::store::MAX_BIND_PARAMETERS - 1) {
        let sql = format!(
            "SELECT ref FROM catalog_entities WHERE tenant = $1 AND ref IN ({})",
            crate::store::placeholder_list(2, chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(tenant);
        for r in chunk {
            query = query.bind(*r);
        }
        found.extend(query.fetch_all(&mut **tx).await?);
    }
    Ok(found)
}
