//! `InsightsService`: views computed from the platform's own records: the DORA metrics
//! ([`dora`]), service status ([`status`]), the dependency graph ([`graph`]), and scorecards
//! (definitions in [`scorecards`], evaluated on demand by [`evaluate`]).

pub mod dora;
mod dora_days;
pub mod evaluate;
pub mod graph;
pub mod scorecards;
pub mod status;

use platform_api::platform::insights::v1 as pb;
use tonic::Request;
use tracing::instrument;

use crate::audit::AuditLog;
use crate::context::CallContext;
use crate::error::{Error, RpcResult, respond};
use crate::store::Store;

/// `catalog.v1.RelationType.RELATION_TYPE_PARENT_OF`, as stored in `catalog_relations.type`.
const PARENT_OF: i64 = 13;

/// NOT_FOUND (naming the entity as the caller wrote it) unless the catalog holds `reference`.
async fn entity_require(
    store: &Store,
    tenant: &str,
    reference: &str,
    as_written: &str,
) -> Result<(), Error> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT ref FROM catalog_entities WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(reference)
            .fetch_optional(store.pool())
            .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(Error::NotFound {
            resource_type: "entity",
            name: as_written.to_owned(),
        }),
    }
}

/// A Group and, with `descendants`, every Group below it through `parentOf` (breadth-first; the
/// visited list ends cycles).
async fn groups_under(
    store: &Store,
    tenant: &str,
    group: String,
    descendants: bool,
) -> Result<Vec<String>, Error> {
    let mut groups = vec![group];
    let mut next = 0;
    while descendants && next < groups.len() && groups.len() < 10_000 {
        let children: Vec<String> = sqlx::query_scalar(
            "SELECT target_ref FROM catalog_relations WHERE tenant = $1 AND source_ref = $2 AND type = $3",
        )
        .bind(tenant)
        .bind(&groups[next])
        .bind(PARENT_OF)
        .fetch_all(store.pool())
        .await?;
        for child in children {
            if !groups.contains(&child) {
                groups.push(child);
            }
        }
        next += 1;
    }
    Ok(groups)
}

/// The `InsightsService` implementation.
#[derive(Debug, Clone)]
pub struct InsightsService {
    store: Store,
    audit: AuditLog,
}

impl InsightsService {
    pub fn new(store: Store, audit: AuditLog) -> Self {
        InsightsService { store, audit }
    }
}

#[tonic::async_trait]
impl pb::insights_service_server::InsightsService for InsightsService {
    #[instrument(skip_all)]
    async fn get_dora_metrics(
        &self,
        request: Request<pb::GetDoraMetricsRequest>,
    ) -> RpcResult<pb::DoraMetrics> {
        respond(dora::dora_metrics_get(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn get_service_status(
        &self,
        request: Request<pb::GetServiceStatusRequest>,
    ) -> RpcResult<pb::ServiceStatus> {
        respond(status::service_status_get(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn list_service_statuses(
        &self,
        request: Request<pb::ListServiceStatusesRequest>,
    ) -> RpcResult<pb::ListServiceStatusesResponse> {
        respond(status::service_statuses_list(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn get_dependency_graph(
        &self,
        request: Request<pb::GetDependencyGraphRequest>,
    ) -> RpcResult<pb::DependencyGraph> {
        respond(graph::dependency_graph_get(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn create_scorecard(
        &self,
        request: Request<pb::CreateScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        let ctx = CallContext::of(&request)?;
        respond(
            scorecards::scorecard_create(&self.store, &self.audit, &ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        respond(scorecards::scorecard_get(&self.store, &request.get_ref().name).await)
    }
    #[instrument(skip_all)]
    async fn list_scorecards(
        &self,
        request: Request<pb::ListScorecardsRequest>,
    ) -> RpcResult<pb::ListScorecardsResponse> {
        respond(scorecards::scorecards_list(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn update_scorecard(
        &self,
        request: Request<pb::UpdateScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        let ctx = CallContext::of(&request)?;
        respond(
            scorecards::scorecard_update(&self.store, &self.audit, &ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn delete_scorecard(
        &self,
        request: Request<pb::DeleteScorecardRequest>,
    ) -> RpcResult<()> {
        let ctx = CallContext::of(&request)?;
        respond(
            scorecards::scorecard_delete(&self.store, &self.audit, &ctx, request.into_inner())
                .await,
        )
    }
    #[instrument(skip_all)]
    async fn evaluate_entity(
        &self,
        request: Request<pb::EvaluateEntityRequest>,
    ) -> RpcResult<pb::EvaluateEntityResponse> {
        respond(evaluate::entity_evaluate(&self.store, request.get_ref()).await)
    }
    #[instrument(skip_all)]
    async fn list_scorecard_evaluations(
        &self,
        request: Request<pb::ListScorecardEvaluationsRequest>,
    ) -> RpcResult<pb::ListScorecardEvaluationsResponse> {
        respond(evaluate::scorecard_evaluations_list(&self.store, request.get_ref()).await)
    }
}
