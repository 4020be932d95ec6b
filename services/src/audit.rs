//! The audit log: one hash chain per tenant (and one for the platform scope), written in the same
//! transaction as the change it records, and the `AuditService` that lists, watches and verifies
//! it.
//!
//! Appending locks the chain's head row (`UPDATE … RETURNING`), so concurrent writers of one
//! tenant — in one process or across replicas — queue on that row and never fork the chain; on
//! SQLite the IMMEDIATE write transaction already serialises them. The head is stored apart from
//! the events so that a deleted tail is detected too. If the record cannot be written, the
//! transaction fails and the change with it (fail closed).
//!
//! Hash (version 1): SHA-256 over `prev_hash` followed by every field except the hash itself,
//! each as a big-endian length-prefixed byte string (integers as 8-byte big-endian), in the order
//! of [`canonical_bytes`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use platform_api::platform::audit::v1 as pb;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::context::CallContext;
use crate::error::Error;
use crate::filter::{self, Op};
use crate::names;
use crate::pagination;
use crate::store::{Engine, Store, WriteTx, now_micros};

pub const HASH_VERSION: i32 = 1;
const ZERO_HASH: [u8; 32] = [0; 32];

/// What happened to the call a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    Failed,
}

impl Outcome {
    fn as_i32(self) -> i32 {
        match self {
            Outcome::Allowed => pb::Outcome::Allowed as i32,
            Outcome::Denied => pb::Outcome::Denied as i32,
            Outcome::Failed => pb::Outcome::Failed as i32,
        }
    }
}

/// One record to append. Holds names of changed fields, never values.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub chain: String,
    pub event_time_us: i64,
    pub actor: String,
    pub actor_token_id: String,
    pub permission: String,
    pub resource: String,
    pub method: String,
    pub outcome: i32,
    pub grpc_code: i32,
    pub request_id: String,
    pub peer: String,
    pub user_agent: String,
    pub changed_fields: Vec<String>,
}

impl AuditRecord {
    /// The record of a call described by its context.
    pub fn of_call(
        ctx: &CallContext,
        outcome: Outcome,
        code: tonic::Code,
        changed_fields: &[&str],
    ) -> Self {
        AuditRecord {
            chain: ctx.chain().to_owned(),
            event_time_us: now_micros(),
            actor: ctx.principal.clone(),
            actor_token_id: ctx.token_id.clone(),
            permission: ctx.permission.to_owned(),
            resource: ctx.resource.clone(),
            method: ctx.method.clone(),
            outcome: outcome.as_i32(),
            grpc_code: code as i32,
            request_id: ctx.request_id.clone(),
            peer: ctx.peer.clone(),
            user_agent: ctx.user_agent.clone(),
            changed_fields: changed_fields.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}

/// The canonical encoding hashed for a record at `seq` (hash version 1).
pub fn canonical_bytes(record: &AuditRecord, seq: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut put = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    put(&i64::from(HASH_VERSION).to_be_bytes());
    put(record.chain.as_bytes());
    put(&seq.to_be_bytes());
    put(&record.event_time_us.to_be_bytes());
    put(record.actor.as_bytes());
    put(record.actor_token_id.as_bytes());
    put(record.permission.as_bytes());
    put(record.resource.as_bytes());
    put(record.method.as_bytes());
    put(&i64::from(record.outcome).to_be_bytes());
    put(&i64::from(record.grpc_code).to_be_bytes());
    put(record.request_id.as_bytes());
    put(record.peer.as_bytes());
    put(record.user_agent.as_bytes());
    put(&(record.changed_fields.len() as i64).to_be_bytes());
    for field in &record.changed_fields {
        put(field.as_bytes());
    }
    out
}

pub fn chain_hash(prev_hash: &[u8], record: &AuditRecord, seq: i64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical_bytes(record, seq));
    hasher.finalize().into()
}

/// Moves `chain`'s head `count` records on inside `tx`; returns the new last sequence number
/// and the hash the first of those records links to.
///
/// The `UPDATE … RETURNING` locks the head row until commit: concurrent appenders to the chain
/// wait here. A chain's first record creates its head first (once per chain, so not on every
/// append).
async fn head_advance(tx: &mut WriteTx, chain: &str, count: i64) -> Result<(i64, Vec<u8>), Error> {
    let advance = "UPDATE audit_heads SET seq = seq + $2 WHERE chain = $1 RETURNING seq, hash";
    let head = match sqlx::query(advance)
        .bind(chain)
        .bind(count)
        .fetch_optional(&mut **tx)
        .await?
    {
        Some(head) => head,
        None => {
            sqlx::query(
                "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (chain) DO NOTHING",
            )
            .bind(chain)
            .bind(ZERO_HASH.to_vec())
            .execute(&mut **tx)
            .await?;
            sqlx::query(advance)
                .bind(chain)
                .bind(count)
                .fetch_one(&mut **tx)
                .await?
        }
    };
    Ok((head.try_get("seq")?, head.try_get("hash")?))
}

/// The audit log: appends inside callers' transactions and wakes watchers after commits.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
    committed: Arc<Notify>,
}

impl AuditLog {
    pub fn new(store: Store) -> Self {
        AuditLog {
            store,
            committed: Arc::new(Notify::new()),
        }
    }

    /// Appends a record to its chain inside `tx`; returns its sequence number.
    #[instrument(skip_all, fields(chain = %record.chain))]
    pub async fn append(&self, tx: &mut WriteTx, record: &AuditRecord) -> Result<i64, Error> {
        let seqs = self.append_all(tx, std::slice::from_ref(record)).await?;
        seqs.first()
            .copied()
            .ok_or_else(|| Error::internal("appending one audit record numbered none"))
    }

    /// Appends records, of one chain or several, inside `tx`, each chain's in the order given;
    /// returns their sequence numbers in that order.
    ///
    /// A chain's head is advanced once for all of its records and its events are written in
    /// multi-row inserts, so a group commit (`deployments::group_commit`) costs a few statements
    /// whatever its size. Heads are locked in chain-name order, so two multi-chain appenders on
    /// PostgreSQL cannot deadlock.
    #[instrument(skip_all, fields(records = records.len()))]
    pub async fn append_all(
        &self,
        tx: &mut WriteTx,
        records: &[AuditRecord],
    ) -> Result<Vec<i64>, Error> {
        let mut chains: Vec<&str> = records.iter().map(|r| r.chain.as_str()).collect();
        chains.sort_unstable();
        chains.dedup();
        let mut seqs = vec![0i64; records.len()];
        let mut links: Vec<(usize, Vec<u8>, [u8; 32])> = Vec::with_capacity(records.len());
        for chain in chains {
            let members: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].chain == chain)
                .collect();
            let count = i64::try_from(members.len()).unwrap_or(i64::MAX);
            let (last, mut prev_hash) = head_advance(tx, chain, count).await?;
            let mut seq = last - count;
            for i in members {
                seq += 1;
                let hash = chain_hash(&prev_hash, &records[i], seq);
                seqs[i] = seq;
                links.push((i, std::mem::replace(&mut prev_hash, hash.to_vec()), hash));
            }
            sqlx::query("UPDATE audit_heads SET hash = $1 WHERE chain = $2")
                .bind(prev_hash)
                .bind(chain)
                .execute(&mut **tx)
                .await?;
        }
        const COLUMNS: usize = 17;
        for chunk in links.chunks(crate::store::MAX_BIND_PARAMETERS / COLUMNS) {
            let sql = format!(
                "INSERT INTO audit_events (chain, seq, event_time_us, actor, actor_token_id, permission, \
                 resource, method, outcome, grpc_code, request_id, peer, user_agent, changed_fields, \
                 prev_hash, hash, hash_version) VALUES {}",
                crate::store::values_placeholders(chunk.len(), COLUMNS)
            );
            let mut insert = sqlx::query(&sql);
            for (i, prev_hash, hash) in chunk {
                let record = &records[*i];
                let changed = serde_json::to_string(&record.changed_fields)
                    .map_err(|e| Error::internal(format!("encoding changed fields: {e}")))?;
                insert = insert
                    .bind(record.chain.clone())
                    .bind(seqs[*i])
                    .bind(record.event_time_us)
                    .bind(record.actor.clone())
                    .bind(record.actor_token_id.clone())
                    .bind(record.permission.clone())
                    .bind(record.resource.clone())
                    .bind(record.method.clone())
                    .bind(record.outcome)
                    .bind(record.grpc_code)
                    .bind(record.request_id.clone())
                    .bind(record.peer.clone())
                    .bind(record.user_agent.clone())
                    .bind(changed)
                    .bind(prev_hash.clone())
                    .bind(hash.to_vec())
                    .bind(HASH_VERSION);
            }
            insert.execute(&mut **tx).await?;
        }
        Ok(seqs)
    }

    /// Signalled after every commit made through this log (every audited mutation), for live
    /// watchers of any service to re-read.
    pub fn committed_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Tells live watchers that new records may have been committed.
    pub fn notify_committed(&self) {
        self.committed.notify_waiters();
    }

    /// Writes one record in its own transaction (denials, failed calls, token issuance).
    pub async fn append_now(&self, record: &AuditRecord) -> Result<i64, Error> {
        let mut tx = self.store.write_tx().await?;
        let seq = self.append(&mut tx, record).await?;
        tx.commit().await?;
        self.notify_committed();
        Ok(seq)
    }

    /// Records a call that failed after authorization. Its change rolled back; the record says so.
    /// A failure to record is logged: the call has failed already and must not be masked.
    pub async fn record_failure(&self, ctx: &CallContext, err: &Error, changed_fields: &[&str]) {
        let record = AuditRecord::of_call(ctx, Outcome::Failed, err.code(), changed_fields);
        if let Err(audit_err) = self.append_now(&record).await {
            tracing::error!(error = %audit_err, "could not audit a failed call");
        }
    }

    /// Commits a mutation with its audit record, or records its failure. The one way handlers
    /// finish a mutating call: the change and its record commit together or not at all.
    pub async fn finish<T>(
        &self,
        ctx: &CallContext,
        mut tx: WriteTx,
        result: Result<T, Error>,
        changed_fields: &[&str],
    ) -> Result<T, Error> {
        match result {
            Ok(value) => {
                let record =
                    AuditRecord::of_call(ctx, Outcome::Allowed, tonic::Code::Ok, changed_fields);
                self.append(&mut tx, &record).await?;
                tx.commit().await?;
                self.notify_committed();
                Ok(value)
            }
            Err(err) => {
                drop(tx);
                self.record_failure(ctx, &err, changed_fields).await;
                Err(err)
            }
        }
    }

    async fn head(&self, chain: &str) -> Result<Option<(i64, Vec<u8>)>, Error> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = $1")
            .bind(chain)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("seq")?, row.try_get("hash")?)),
            None => None,
        })
    }

    /// Walks a chain from the start and reports the first broken link, if any.
    #[instrument(skip(self, anchors))]
    pub async fn verify_chain(
        &self,
        chain: &str,
        anchors: &[pb::ChainAnchor],
    ) -> Result<pb::VerifyAuditChainResponse, Error> {
        let mut expected_seq = 1i64;
        let mut prev_hash = ZERO_HASH.to_vec();
        let mut verified = 0i64;
        let mut broken: Option<pb::BrokenLink> = None;
        'pages: loop {
            let rows = sqlx::query(&format!(
                "{SELECT_EVENTS} WHERE chain = $1 AND seq >= $2 ORDER BY seq LIMIT 1000"
            ))
            .bind(chain)
            .bind(expected_seq)
            .fetch_all(self.store.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let (record, seq, stored_prev, stored_hash, version) = match record_from_row(row) {
                    Ok(parts) => parts,
                    Err(detail) => {
                        broken = Some(link(
                            expected_seq,
                            pb::BrokenLinkReason::Malformed,
                            &[],
                            &[],
                            detail,
                        ));
                        break 'pages;
                    }
                };
                if seq != expected_seq {
                    broken = Some(pb::BrokenLink {
                        sequence: seq,
                        reason: pb::BrokenLinkReason::SequenceGap as i32,
                        expected_sequence: expected_seq,
                        detail: format!(
                            "event {expected_seq} is missing; the next stored event is {seq}"
                        ),
                        ..Default::default()
                    });
                    break 'pages;
                }
                if version != HASH_VERSION {
                    broken = Some(link(
                        seq,
                        pb::BrokenLinkReason::Malformed,
                        &[],
                        &[],
                        format!("unknown hash version {version}"),
                    ));
                    break 'pages;
                }
                if stored_prev != prev_hash {
                    broken = Some(link(
                        seq,
                        pb::BrokenLinkReason::PrevHashMismatch,
                        &prev_hash,
                        &stored_prev,
                        "prev_hash does not match the hash of the event before it".into(),
                    ));
                    break 'pages;
                }
                let computed = chain_hash(&prev_hash, &record, seq);
                if stored_hash != computed {
                    broken = Some(link(
                        seq,
                        pb::BrokenLinkReason::HashMismatch,
                        &computed,
                        &stored_hash,
                        "the event's content does not match its hash (edited after it was written)"
                            .into(),
                    ));
                    break 'pages;
                }
                prev_hash = stored_hash;
                verified += 1;
                expected_seq = seq + 1;
            }
        }
        let head = self.head(chain).await?;
        let (head_seq, head_hash) = head.clone().unwrap_or((0, ZERO_HASH.to_vec()));
        if broken.is_none() && (head_seq != expected_seq - 1 || head_hash != prev_hash) {
            broken = Some(pb::BrokenLink {
                sequence: expected_seq,
                reason: pb::BrokenLinkReason::HeadMismatch as i32,
                expected_hash: head_hash.clone(),
                found_hash: prev_hash.clone(),
                expected_sequence: head_seq,
                detail: format!(
                    "the chain's head is event {head_seq} but the stored events end at {}",
                    expected_seq - 1
                ),
            });
        }
        if broken.is_none() {
            for anchor in anchors {
                let stored: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT hash FROM audit_events WHERE chain = $1 AND seq = $2",
                )
                .bind(chain)
                .bind(anchor.sequence)
                .fetch_optional(self.store.pool())
                .await?;
                if stored.as_deref() != Some(anchor.hash.as_slice()) {
                    broken = Some(link(
                        anchor.sequence,
                        pb::BrokenLinkReason::AnchorMismatch,
                        &anchor.hash,
                        stored.as_deref().unwrap_or_default(),
                        "the event at this anchor differs from the hash the caller kept".into(),
                    ));
                    break;
                }
            }
        }
        Ok(pb::VerifyAuditChainResponse {
            tenant: chain_parent(chain),
            ok: broken.is_none(),
            verified_count: verified,
            head_sequence: head_seq,
            head_hash,
            broken_link: broken,
            verify_time: Some(timestamp(now_micros())),
        })
    }
}

fn link(
    seq: i64,
    reason: pb::BrokenLinkReason,
    expected: &[u8],
    found: &[u8],
    detail: String,
) -> pb::BrokenLink {
    pb::BrokenLink {
        sequence: seq,
        reason: reason as i32,
        expected_hash: expected.to_vec(),
        found_hash: found.to_vec(),
        expected_sequence: seq,
        detail,
    }
}

const SELECT_EVENTS: &str = "SELECT chain, seq, event_time_us, actor, actor_token_id, permission, resource, \
     method, outcome, grpc_code, request_id, peer, user_agent, changed_fields, prev_hash, hash, \
     hash_version FROM audit_events";

type StoredEvent = (AuditRecord, i64, Vec<u8>, Vec<u8>, i32);

fn record_from_row(row: &AnyRow) -> Result<StoredEvent, String> {
    let get_err = |e: sqlx::Error| format!("unreadable column: {e}");
    let changed: String = row.try_get("changed_fields").map_err(get_err)?;
    let changed_fields: Vec<String> = serde_json::from_str(&changed)
        .map_err(|e| format!("changed_fields is not a JSON list: {e}"))?;
    let record = AuditRecord {
        chain: row.try_get("chain").map_err(get_err)?,
        event_time_us: row.try_get("event_time_us").map_err(get_err)?,
        actor: row.try_get("actor").map_err(get_err)?,
        actor_token_id: row.try_get("actor_token_id").map_err(get_err)?,
        permission: row.try_get("permission").map_err(get_err)?,
        resource: row.try_get("resource").map_err(get_err)?,
        method: row.try_get("method").map_err(get_err)?,
        outcome: row.try_get("outcome").map_err(get_err)?,
        grpc_code: row.try_get("grpc_code").map_err(get_err)?,
        request_id: row.try_get("request_id").map_err(get_err)?,
        peer: row.try_get("peer").map_err(get_err)?,
        user_agent: row.try_get("user_agent").map_err(get_err)?,
        changed_fields,
    };
    Ok((
        record,
        row.try_get("seq").map_err(get_err)?,
        row.try_get("prev_hash").map_err(get_err)?,
        row.try_get("hash").map_err(get_err)?,
        row.try_get("hash_version").map_err(get_err)?,
    ))
}

/// Microseconds since the epoch of an optional timestamp (saturating: a hostile value cannot
/// overflow), the inverse of [`timestamp`].
pub fn micros(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| {
        t.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(t.nanos) / 1000)
    })
}

pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn chain_parent(chain: &str) -> String {
    if chain.is_empty() {
        String::new()
    } else {
        format!("tenants/{chain}")
    }
}

fn event_name(chain: &str, seq: i64) -> String {
    if chain.is_empty() {
        format!("auditEvents/{seq}")
    } else {
        format!("tenants/{chain}/auditEvents/{seq}")
    }
}

fn to_proto(row: &AnyRow) -> Result<pb::AuditEvent, Error> {
    let (record, seq, prev_hash, hash, version) = record_from_row(row).map_err(Error::internal)?;
    Ok(pb::AuditEvent {
        name: event_name(&record.chain, seq),
        sequence: seq,
        tenant: chain_parent(&record.chain),
        event_time: Some(timestamp(record.event_time_us)),
        actor: record.actor,
        actor_token_id: record.actor_token_id,
        permission: record.permission,
        resource: record.resource,
        method: record.method,
        outcome: record.outcome,
        grpc_code: record.grpc_code,
        request_id: record.request_id,
        peer: record.peer,
        user_agent: record.user_agent,
        changed_fields: record.changed_fields,
        prev_hash,
        hash,
        hash_version: version,
    })
}

/// Parses the chain of a `parent`/`tenant` field: `tenants/{t}` or "" (platform).
fn parse_chain(field: &str, parent: &str) -> Result<String, Error> {
    if parent.is_empty() {
        Ok(String::new())
    } else {
        names::parse_tenant_name(field, parent)
    }
}

/// A filter turned into SQL with bound parameters (never caller text in the SQL).
struct SqlFilter {
    clauses: Vec<String>,
    params: Vec<Param>,
}

fn audit_filter(filter_text: &str, first_param: usize, engine: Engine) -> Result<SqlFilter, Error> {
    let mut out = SqlFilter {
        clauses: Vec::new(),
        params: Vec::new(),
    };
    let mut n = first_param;
    let bad = |msg: String| Error::invalid_argument("filter", msg);
    for term in filter::parse(filter_text)? {
        let column = match term.field.as_str() {
            "actor" | "permission" | "resource" | "method" | "request_id" | "actor_token_id" => {
                term.field.clone()
            }
            "outcome" | "sequence" | "event_time" | "grpc_code" | "changed_fields" => {
                term.field.clone()
            }
            other => return Err(bad(format!("unknown field `{}`", names::printable(other)))),
        };
        let sql_op = |op: Op| -> Result<&'static str, Error> {
            Ok(match op {
                Op::Eq => "=",
                Op::Ne => "<>",
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Ge => ">=",
                Op::Has => return Err(bad(format!("`:` is not supported for `{column}`"))),
            })
        };
        match column.as_str() {
            "actor" | "permission" | "resource" | "method" | "request_id" | "actor_token_id" => {
                if !matches!(term.op, Op::Eq | Op::Ne) {
                    return Err(bad(format!("`{column}` supports = and !=")));
                }
                let prefix_ok = matches!(column.as_str(), "permission" | "resource");
                if prefix_ok && term.value.ends_with('*') {
                    let prefix = term.value.trim_end_matches('*');
                    // Prefix match without LIKE, so `%` and `_` in the value mean themselves.
                    let not = if term.op == Op::Ne { "NOT " } else { "" };
                    out.clauses
                        .push(format!("{not}(substr({column}, 1, length(${n})) = ${n})"));
                    out.params.push(Param::Text(prefix.to_owned()));
                } else {
                    out.clauses
                        .push(format!("{column} {} ${n}", sql_op(term.op)?));
                    out.params.push(Param::Text(term.value.clone()));
                }
                n += 1;
            }
            "outcome" => {
                if !matches!(term.op, Op::Eq | Op::Ne) {
                    return Err(bad("`outcome` supports = and !=".into()));
                }
                let value = match term.value.as_str() {
                    "ALLOWED" => pb::Outcome::Allowed,
                    "DENIED" => pb::Outcome::Denied,
                    "FAILED" => pb::Outcome::Failed,
                    _ => return Err(bad("outcome is ALLOWED, DENIED or FAILED".into())),
                };
                out.clauses
                    .push(format!("outcome {} ${n}", sql_op(term.op)?));
                out.params.push(Param::Int(value as i64));
                n += 1;
            }
            "sequence" | "grpc_code" => {
                let value: i64 = term
                    .value
                    .parse()
                    .map_err(|_| bad(format!("`{column}` takes an integer")))?;
                let col = if column == "sequence" {
                    "seq"
                } else {
                    "grpc_code"
                };
                out.clauses.push(format!("{col} {} ${n}", sql_op(term.op)?));
                out.params.push(Param::Int(value));
                n += 1;
            }
            "event_time" => {
                let ts: prost_types::Timestamp = term
                    .value
                    .parse()
                    .map_err(|_| bad("`event_time` takes an RFC 3339 time in quotes".into()))?;
                let micros = ts
                    .seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(ts.nanos) / 1000);
                out.clauses
                    .push(format!("event_time_us {} ${n}", sql_op(term.op)?));
                out.params.push(Param::Int(micros));
                n += 1;
            }
            "changed_fields" => {
                if term.op != Op::Has {
                    return Err(bad("`changed_fields` supports `:` only".into()));
                }
                // JSON list of strings: match the quoted element exactly.
                let quoted = serde_json::to_string(&term.value)
                    .map_err(|e| Error::internal(e.to_string()))?;
                out.clauses.push(match engine {
                    Engine::Sqlite => format!("(instr(changed_fields, ${n}) > 0)"),
                    Engine::Postgres => format!("(strpos(changed_fields, ${n}) > 0)"),
                });
                out.params.push(Param::Text(quoted));
                n += 1;
            }
            _ => unreachable!("fields are matched above"),
        }
    }
    Ok(out)
}

enum Param {
    Text(String),
    Int(i64),
}

/// Binds the parameters of a filter, in order, after the query's own.
fn bind_filter<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    filter: &'q SqlFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for param in &filter.params {
        query = match param {
            Param::Text(text) => query.bind(text.as_str()),
            Param::Int(value) => query.bind(*value),
        };
    }
    query
}

/// The `AuditService` implementation.
#[derive(Debug, Clone)]
pub struct AuditService {
    store: Store,
    log: AuditLog,
    access: Option<WatchAccess>,
}

/// What a live Watch re-checks while it stays open: the caller may lose the permission, or its
/// token may expire or be revoked, long after the stream was authorized.
#[derive(Clone)]
pub struct WatchAccess {
    pub gate: crate::authz::Gate,
    pub authenticator: std::sync::Arc<crate::auth::Authenticator>,
    /// How often to re-check.
    pub recheck: Duration,
}

impl std::fmt::Debug for WatchAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchAccess")
    }
}

impl WatchAccess {
    /// `Some(status)` when the caller of `ctx` may no longer watch.
    pub fn revoked(&self, ctx: &CallContext) -> Option<Status> {
        if !ctx.token_id.is_empty() && self.authenticator.is_revoked(&ctx.token_id) {
            return Some(Status::unauthenticated("bearer token has been revoked"));
        }
        if ctx.token_expire_us > 0 && now_micros() >= ctx.token_expire_us {
            return Some(Status::unauthenticated("bearer token has expired"));
        }
        if !self.gate.allows(ctx, &ctx.resource, ctx.permission) {
            return Some(Status::permission_denied(
                "the caller no longer holds the watch permission",
            ));
        }
        None
    }
}

impl AuditService {
    pub fn new(store: Store, log: AuditLog, access: Option<WatchAccess>) -> Self {
        AuditService { store, log, access }
    }

    async fn list(
        &self,
        req: &pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse, Error> {
        let chain = parse_chain("parent", &req.parent)?;
        let page_size = pagination::page_size(req.page_size)?;
        let ascending = match req.order_by.trim() {
            "" | "sequence desc" => false,
            "sequence" | "sequence asc" => true,
            _ => {
                return Err(Error::invalid_argument(
                    "order_by",
                    "must be `sequence desc` or `sequence`",
                ));
            }
        };
        let fingerprint =
            pagination::query_fingerprint(&[&chain, &req.filter, &ascending.to_string()]);
        let after = pagination::decode_token(fingerprint, &req.page_token)?
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    Error::invalid_argument("page_token", "not a page token of this query")
                })
            })
            .transpose()?;
        let filter = audit_filter(&req.filter, 2, self.store.engine())?;
        let mut where_sql = String::from(" WHERE chain = $1");
        for clause in &filter.clauses {
            where_sql.push_str(" AND ");
            where_sql.push_str(clause);
        }
        let total: i64 = bind_filter(
            sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM audit_events{where_sql}"
            ))
            .bind(&chain),
            &filter,
        )
        .fetch_one(self.store.pool())
        .await?
        .try_get("n")?;
        let n = 2 + filter.params.len();
        let (cmp, order) = if ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        let mut sql = format!("{SELECT_EVENTS}{where_sql}");
        if after.is_some() {
            sql.push_str(&format!(" AND seq {cmp} ${n}"));
        }
        sql.push_str(&format!(" ORDER BY seq {order} LIMIT {}", page_size + 1));
        let mut query = bind_filter(sqlx::query(&sql).bind(&chain), &filter);
        if let Some(after) = after {
            query = query.bind(after);
        }
        let rows = query.fetch_all(self.store.pool()).await?;
        let more = rows.len() as i64 > page_size;
        let mut events = rows
            .iter()
            .take(page_size as usize)
            .map(to_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => pagination::encode_token(fingerprint, &last.sequence.to_string()),
            _ => String::new(),
        };
        events.shrink_to_fit();
        Ok(pb::ListAuditEventsResponse {
            audit_events: events,
            next_page_token,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
        })
    }

    async fn get(&self, req: &pb::GetAuditEventRequest) -> Result<pb::AuditEvent, Error> {
        let bad = || {
            Error::invalid_argument(
                "name",
                "must be `tenants/{tenant}/auditEvents/{sequence}` or `auditEvents/{sequence}`",
            )
        };
        let (chain, seq) = match req.name.rsplit_once("/auditEvents/") {
            Some((parent, seq)) => (names::parse_tenant_name("name", parent)?, seq),
            None => (
                String::new(),
                req.name.strip_prefix("auditEvents/").ok_or_else(bad)?,
            ),
        };
        let seq: i64 = seq.parse().ok().filter(|s: &i64| *s >= 1).ok_or_else(bad)?;
        let row = sqlx::query(&format!("{SELECT_EVENTS} WHERE chain = $1 AND seq = $2"))
            .bind(&chain)
            .bind(seq)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "audit event",
                name: req.name.clone(),
            })?;
        to_proto(&row)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAuditEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditService {
    #[instrument(skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Ok(Response::new(self.list(request.get_ref()).await?))
    }

    #[instrument(skip_all)]
    async fn get_audit_event(
        &self,
        request: Request<pb::GetAuditEventRequest>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        Ok(Response::new(self.get(request.get_ref()).await?))
    }

    #[instrument(skip_all)]
    async fn watch_audit_events(
        &self,
        request: Request<pb::WatchAuditEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let ctx = CallContext::of(&request).ok();
        let access = self.access.clone();
        let req = request.into_inner();
        let chain = parse_chain("parent", &req.parent)?;
        let filter = audit_filter(&req.filter, 3, self.store.engine())?;
        let start = match req.after_sequence {
            Some(n) if n < 0 => {
                return Err(
                    Error::invalid_argument("after_sequence", "must not be negative").into(),
                );
            }
            Some(n) => n,
            None => self
                .log
                .head(&chain)
                .await?
                .map(|(seq, _)| seq)
                .unwrap_or(0),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        let notify = self.log.committed.clone();
        tokio::spawn(async move {
            let mut after = start;
            let mut where_sql = String::from(" WHERE chain = $1 AND seq > $2");
            for clause in &filter.clauses {
                where_sql.push_str(" AND ");
                where_sql.push_str(clause);
            }
            let sql = format!("{SELECT_EVENTS}{where_sql} ORDER BY seq LIMIT 500");
            let mut idle = Duration::ZERO;
            let mut last_check = std::time::Instant::now();
            loop {
                let notified = notify.notified();
                let rows = bind_filter(sqlx::query(&sql).bind(&chain).bind(after), &filter)
                    .fetch_all(store.pool())
                    .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(Error::from(err)))).await;
                        return;
                    }
                };
                let caught_up = rows.len() < 500;
                for row in &rows {
                    let event = match to_proto(row) {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = tx.send(Err(err.into())).await;
                            return;
                        }
                    };
                    after = event.sequence;
                    let message = pb::WatchAuditEventsResponse {
                        kind: Some(pb::watch_audit_events_response::Kind::AuditEvent(event)),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // the client went away
                    }
                }
                if !rows.is_empty() {
                    idle = Duration::ZERO;
                }
                if !caught_up {
                    continue;
                }
                // Events matching no filter still move the resume point forward via heartbeats.
                if idle >= Duration::from_secs(15) {
                    idle = Duration::ZERO;
                    let head = sqlx::query_scalar::<_, i64>(
                        "SELECT seq FROM audit_heads WHERE chain = $1",
                    )
                    .bind(&chain)
                    .fetch_optional(store.pool())
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                    let heartbeat = pb::WatchHeartbeat {
                        head_sequence: head.max(after),
                        heartbeat_time: Some(timestamp(now_micros())),
                        caught_up: true,
                    };
                    let message = pb::WatchAuditEventsResponse {
                        kind: Some(pb::watch_audit_events_response::Kind::Heartbeat(heartbeat)),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                // Woken by a local commit, or polls once a second for other replicas' commits.
                let wait = access
                    .as_ref()
                    .map(|a| a.recheck.min(Duration::from_secs(1)))
                    .unwrap_or(Duration::from_secs(1));
                let waited = tokio::time::timeout(wait, notified).await;
                if waited.is_err() {
                    idle += wait;
                }
                let recheck = access.as_ref().map(|a| a.recheck).unwrap_or(Duration::MAX);
                if last_check.elapsed() >= recheck {
                    last_check = std::time::Instant::now();
                    if let (Some(access), Some(ctx)) = (&access, &ctx)
                        && let Some(status) = access.revoked(ctx)
                    {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[instrument(skip_all)]
    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let req = request.into_inner();
        let chain = parse_chain("tenant", &req.tenant)?;
        if req.anchors.len() > 100 {
            return Err(Error::invalid_argument("anchors", "at most 100").into());
        }
        Ok(Response::new(
            self.log.verify_chain(&chain, &req.anchors).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            chain: "acme".into(),
            event_time_us: 1,
            actor: "user:a".into(),
            actor_token_id: String::new(),
            permission: "iam.roleBindings.create".into(),
            resource: "tenants/acme".into(),
            method: "/m".into(),
            outcome: 1,
            grpc_code: 0,
            request_id: "r".into(),
            peer: String::new(),
            user_agent: String::new(),
            changed_fields: vec!["role".into()],
        }
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = chain_hash(&ZERO_HASH, &record(), 1);
        let mut variants = Vec::new();
        let mut r = record();
        r.chain = "acme2".into();
        variants.push((r, 1));
        variants.push((record(), 2));
        let mut r = record();
        r.actor = "user:b".into();
        variants.push((r, 1));
        let mut r = record();
        r.outcome = 2;
        variants.push((r, 1));
        let mut r = record();
        r.changed_fields.push("x".into());
        variants.push((r, 1));
        let mut r = record();
        r.event_time_us = 2;
        variants.push((r, 1));
        // Field boundaries are length-prefixed: moving bytes between fields changes the hash.
        let mut r = record();
        r.actor = "user:ab".into();
        r.actor_token_id = String::new();
        variants.push((r, 1));
        for (variant, seq) in variants {
            assert_ne!(chain_hash(&ZERO_HASH, &variant, seq), base, "{variant:?}");
        }
        assert_ne!(chain_hash(&[1; 32], &record(), 1), base);
    }

    #[test]
    fn filters_become_bound_parameters() {
        let f = audit_filter(
            r#"actor = "user:x' OR 1=1 --" AND outcome = "DENIED" AND resource = "tenants/a/*""#,
            2,
            Engine::Sqlite,
        )
        .expect("valid");
        assert_eq!(f.clauses.len(), 3);
        assert!(f.clauses.iter().all(|c| !c.contains("OR 1=1")));
        for bad in [
            "nope = 1",
            "outcome = MAYBE",
            "sequence = x",
            "event_time > \"yesterday\"",
            "actor < \"a\"",
        ] {
            assert!(audit_filter(bad, 2, Engine::Postgres).is_err(), "{bad}");
        }
    }
}
