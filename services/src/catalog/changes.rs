//! The catalog's change log and WatchEntities.
//!
//! Every entity write appends a row (created, updated or deleted) in the same transaction, with
//! a per-tenant sequence number taken from a counter row that stays locked until commit, so the
//! numbers appear in commit order and a watcher that has read up to N never later finds a smaller
//! one. The log keeps references, not bodies: a watcher reads the entity's current row when it
//! delivers an event (level-triggered, as Kubernetes watches are), which keeps the log small and
//! makes a burst of updates to one entity cost one read. Rows older than the retention period are
//! pruned by a background task; resuming from before the pruned point is OUT_OF_RANGE.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use platform_api::platform::catalog::v1 as pb;
use sqlx::Row;
use tonic::Status;

use crate::audit::{WatchAccess, timestamp};
use crate::context::CallContext;
use crate::error::Error;
use crate::names::parse_tenant_name;
use crate::store::{Store, WriteTx, now_micros};

use super::{CatalogService, CatalogStore, EntityFilter, EntityKey, bind_all};

/// How long changes are kept (the contract promises at least 7 days).
pub const RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);
/// Changes and snapshot entities read per query.
const BATCH: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Created = 1,
    Updated = 2,
    Deleted = 3,
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct Change {
    pub change: ChangeType,
    pub ref_key: String,
    pub name: String,
    pub uid: String,
}

impl Change {
    pub fn of(change: ChangeType, tenant: &str, entity: &pb::Entity) -> Change {
        Change {
            change,
            ref_key: EntityKey::of(entity).ref_key(),
            name: super::resource_name(tenant, entity),
            uid: entity.uid.clone(),
        }
    }
}

/// Appends changes to the tenant's log inside the caller's transaction.
pub async fn record(tx: &mut WriteTx, tenant: &str, changes: &[Change]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO catalog_change_heads (tenant, seq, pruned_through) VALUES ($1, 0, 0) ON CONFLICT (tenant) DO NOTHING",
    )
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    // Holds the counter row until commit: concurrent writers of this tenant queue here.
    let last: i64 = sqlx::query_scalar(
        "UPDATE catalog_change_heads SET seq = seq + $1 WHERE tenant = $2 RETURNING seq",
    )
    .bind(changes.len() as i64)
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    let first = last - changes.len() as i64 + 1;
    let now = now_micros();
    for (chunk_index, chunk) in changes.chunks(150).enumerate() {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let b = 3 + 5 * i;
                format!(
                    "($1, ${}, ${}, ${}, ${}, ${}, $2)",
                    b,
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO catalog_changes (tenant, seq, change, ref, name, uid, time_us) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(tenant).bind(now);
        for (i, c) in chunk.iter().enumerate() {
            query = query
                .bind(first + (chunk_index * 150 + i) as i64)
                .bind(c.change as i64)
                .bind(c.ref_key.as_str())
                .bind(c.name.as_str())
                .bind(c.uid.as_str());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Removes changes older than [`RETENTION`], remembering per tenant how far it pruned.
pub async fn prune(store: &Store) -> Result<u64, Error> {
    let cutoff = now_micros() - RETENTION.as_micros() as i64;
    let mut tx = store.write_tx().await?;
    let rows = sqlx::query(
        "SELECT tenant, MAX(seq) AS last FROM catalog_changes WHERE time_us < $1 GROUP BY tenant",
    )
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    let mut removed = 0;
    for row in rows {
        let tenant: String = row.try_get("tenant")?;
        let last: i64 = row.try_get("last")?;
        removed += sqlx::query("DELETE FROM catalog_changes WHERE tenant = $1 AND seq <= $2")
            .bind(&tenant)
            .bind(last)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE catalog_change_heads SET pruned_through = $1 WHERE tenant = $2 AND pruned_through < $1")
            .bind(last)
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(removed)
}

/// Prunes the change log once an hour, for the life of the process.
pub async fn run_retention(store: Store) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    loop {
        interval.tick().await;
        match prune(&store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned the catalog change log"),
            Err(err) => tracing::warn!(error = %err, "could not prune the catalog change log"),
        }
    }
}

type Event = Result<pb::WatchEntitiesResponse, Status>;

/// One watcher: its query, what it has reported, and where it is in the log.
struct Watcher {
    store: CatalogStore,
    tenant: String,
    filter: EntityFilter,
    full: bool,
    /// Entities reported as matching (so an update that makes one stop matching is reported).
    known: HashSet<String>,
    /// Started from `after_sequence` (no snapshot), so `known` starts empty for lack of knowledge.
    resumed: bool,
    after: i64,
    out: tokio::sync::mpsc::Sender<Event>,
}

impl Watcher {
    async fn send(
        &self,
        sequence: i64,
        time_us: i64,
        event: pb::watch_entities_response::Event,
    ) -> bool {
        let message = pb::WatchEntitiesResponse {
            sequence,
            time: Some(timestamp(time_us)),
            event: Some(event),
        };
        self.out.send(Ok(message)).await.is_ok()
    }

    /// The current entities among `refs` that match the watch filter.
    async fn matching(&self, refs: &[String]) -> Result<HashMap<String, pb::Entity>, Error> {
        let mut out = HashMap::new();
        if refs.is_empty() {
            return Ok(out);
        }
        let first = self.filter.params.len() + 2;
        let placeholders: Vec<String> =
            (0..refs.len()).map(|i| format!("${}", first + i)).collect();
        let sql = format!(
            "SELECT e.body, e.ref FROM catalog_entities e{} AND e.ref IN ({})",
            self.filter.where_sql(),
            placeholders.join(", ")
        );
        let mut query = bind_all(sqlx::query(&sql).bind(&self.tenant), &self.filter.params);
        for r in refs {
            query = query.bind(r.as_str());
        }
        for row in query.fetch_all(self.store.store.pool()).await? {
            let ref_key: String = row.try_get("ref")?;
            let entity = self.entity(&row, &ref_key).await?;
            out.insert(ref_key, entity);
        }
        Ok(out)
    }

    async fn entity(&self, row: &sqlx::any::AnyRow, ref_key: &str) -> Result<pb::Entity, Error> {
        let mut entity = CatalogStore::entity_from_row(row)?;
        if self.full {
            entity.relations = self.store.relations_of(&self.tenant, ref_key).await?;
        }
        Ok(entity)
    }

    /// Sends every matching entity as `existing`, then `snapshot_complete`. Returns false when
    /// the client went away.
    async fn snapshot(&mut self) -> Result<bool, Error> {
        let head: i64 =
            sqlx::query_scalar("SELECT seq FROM catalog_change_heads WHERE tenant = $1")
                .bind(&self.tenant)
                .fetch_optional(self.store.store.pool())
                .await?
                .unwrap_or(0);
        let now = now_micros();
        let mut last_ref = String::new();
        let mut count = 0;
        loop {
            let n = self.filter.params.len() + 2;
            let sql = format!(
                "SELECT e.body, e.ref FROM catalog_entities e{} AND e.ref > ${n} ORDER BY e.ref LIMIT {BATCH}",
                self.filter.where_sql()
            );
            let rows = bind_all(sqlx::query(&sql).bind(&self.tenant), &self.filter.params)
                .bind(last_ref.as_str())
                .fetch_all(self.store.store.pool())
                .await?;
            for row in &rows {
                let ref_key: String = row.try_get("ref")?;
                let entity = self.entity(row, &ref_key).await?;
                if !self
                    .send(
                        head,
                        now,
                        pb::watch_entities_response::Event::Existing(entity),
                    )
                    .await
                {
                    return Ok(false);
                }
                count += 1;
                self.known.insert(ref_key.clone());
                last_ref = ref_key;
            }
            if (rows.len() as i64) < BATCH {
                break;
            }
        }
        self.after = head;
        let done = pb::SnapshotComplete {
            entity_count: count,
        };
        Ok(self
            .send(
                head,
                now,
                pb::watch_entities_response::Event::SnapshotComplete(done),
            )
            .await)
    }

    /// Delivers the changes committed after `self.after`. Returns (client still there, caught up).
    async fn deliver(&mut self) -> Result<(bool, bool), Error> {
        let rows = sqlx::query(
            "SELECT seq, change, ref, name, uid, time_us FROM catalog_changes WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(&self.tenant)
        .bind(self.after)
        .bind(BATCH)
        .fetch_all(self.store.store.pool())
        .await?;
        let caught_up = (rows.len() as i64) < BATCH;
        let refs: Vec<String> = rows
            .iter()
            .filter(|r| r.try_get::<i64, _>("change").ok() != Some(ChangeType::Deleted as i64))
            .filter_map(|r| r.try_get::<String, _>("ref").ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut current = HashMap::new();
        for chunk in refs.chunks(200) {
            current.extend(self.matching(chunk).await?);
        }
        use pb::watch_entities_response::Event as E;
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let change: i64 = row.try_get("change")?;
            let ref_key: String = row.try_get("ref")?;
            let time_us: i64 = row.try_get("time_us")?;
            self.after = seq;
            let removed = |reason: pb::EntityRemovalReason| -> Result<E, Error> {
                Ok(E::Deleted(pb::EntityRemoved {
                    name: row.try_get("name")?,
                    uid: row.try_get("uid")?,
                    r#ref: ref_key.clone(),
                    reason: reason as i32,
                }))
            };
            let event = if change == ChangeType::Deleted as i64 {
                // Without a filter every entity was visible; with one, only those reported.
                if self.known.remove(&ref_key) || self.filter.clauses.is_empty() {
                    Some(removed(pb::EntityRemovalReason::Deleted)?)
                } else {
                    None
                }
            } else {
                match current.get(&ref_key) {
                    Some(entity) => {
                        let seen = !self.known.insert(ref_key.clone());
                        // Without a snapshot (a resumed watch) an update of an entity this
                        // watcher has not seen yet is still an update.
                        let updated =
                            seen || (self.resumed && change == ChangeType::Updated as i64);
                        Some(if updated {
                            E::Updated(entity.clone())
                        } else {
                            E::Created(entity.clone())
                        })
                    }
                    None if self.known.remove(&ref_key) => {
                        Some(removed(pb::EntityRemovalReason::FilteredOut)?)
                    }
                    // Deleted since (its deletion follows in the log), or never matched.
                    None => None,
                }
            };
            if let Some(event) = event
                && !self.send(seq, time_us, event).await
            {
                return Ok((false, caught_up));
            }
        }
        Ok((true, caught_up))
    }
}

impl CatalogService {
    pub(super) async fn entities_watch(
        &self,
        ctx: Option<CallContext>,
        req: pb::WatchEntitiesRequest,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Event>, Error> {
        let tenant = parse_tenant_name("parent", &req.parent)?;
        let filter = EntityFilter::parse(&req.filter, "")?;
        if req.after_sequence < 0 {
            return Err(Error::invalid_argument(
                "after_sequence",
                "must not be negative",
            ));
        }
        if req.after_sequence > 0 {
            let pruned: i64 = sqlx::query_scalar(
                "SELECT pruned_through FROM catalog_change_heads WHERE tenant = $1",
            )
            .bind(&tenant)
            .fetch_optional(self.pool())
            .await?
            .unwrap_or(0);
            if req.after_sequence < pruned {
                return Err(Error::OutOfRange {
                    message: format!(
                        "changes up to sequence {pruned} are no longer kept; watch again without after_sequence"
                    ),
                });
            }
        }
        let (out, rx) = tokio::sync::mpsc::channel(64);
        let mut watcher = Watcher {
            store: self.store.clone(),
            tenant,
            filter,
            full: req.view == pb::EntityView::Full as i32,
            known: HashSet::new(),
            resumed: req.after_sequence > 0,
            after: req.after_sequence,
            out,
        };
        let notify = self.audit.committed_signal();
        let access: Option<WatchAccess> = self.watch_access.clone();
        tokio::spawn(async move {
            let fail = |err: Error| Status::from(err);
            if req.after_sequence == 0 {
                match watcher.snapshot().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(err) => {
                        let _ = watcher.out.send(Err(fail(err))).await;
                        return;
                    }
                }
            }
            let recheck = access.as_ref().map(|a| a.recheck).unwrap_or(Duration::MAX);
            let mut last_check = std::time::Instant::now();
            loop {
                let notified = notify.notified();
                match watcher.deliver().await {
                    Ok((false, _)) => return,
                    Ok((true, false)) => continue,
                    Ok((true, true)) => {}
                    Err(err) => {
                        let _ = watcher.out.send(Err(fail(err))).await;
                        return;
                    }
                }
                // Woken by a local commit, or polls once a second for other replicas' commits.
                let _ = tokio::time::timeout(recheck.min(Duration::from_secs(1)), notified).await;
                if last_check.elapsed() >= recheck {
                    last_check = std::time::Instant::now();
                    if let (Some(access), Some(ctx)) = (&access, &ctx)
                        && let Some(status) = access.revoked(ctx)
                    {
                        let _ = watcher.out.send(Err(status)).await;
                        return;
                    }
                }
                if watcher.out.is_closed() {
                    return;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
