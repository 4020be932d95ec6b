//! `InsightsService`: views computed from the platform's own records. This release serves the
//! DORA metrics ([`dora`]), service status ([`status`]) and the dependency graph ([`graph`]);
//! scorecards answer UNIMPLEMENTED, naming themselves.

pub mod dora;
pub mod graph;
pub mod status;

use platform_api::platform::insights::v1 as pb;
use tonic::Request;
use tracing::instrument;

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
}

impl InsightsService {
    pub fn new(store: Store) -> Self {
        InsightsService { store }
    }
}

fn not_yet<T>(method: &str) -> RpcResult<T> {
    respond(Err(Error::unimplemented(format!(
        "platform.insights.v1.InsightsService.{method} is part of the platform API contract but is not implemented by this server version yet"
    ))))
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
    async fn create_scorecard(
        &self,
        _request: Request<pb::CreateScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        not_yet("CreateScorecard")
    }
    async fn get_scorecard(
        &self,
        _request: Request<pb::GetScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        not_yet("GetScorecard")
    }
    async fn list_scorecards(
        &self,
        _request: Request<pb::ListScorecardsRequest>,
    ) -> RpcResult<pb::ListScorecardsResponse> {
        not_yet("ListScorecards")
    }
    async fn update_scorecard(
        &self,
        _request: Request<pb::UpdateScorecardRequest>,
    ) -> RpcResult<pb::Scorecard> {
        not_yet("UpdateScorecard")
    }
    async fn delete_scorecard(
        &self,
        _request: Request<pb::DeleteScorecardRequest>,
    ) -> RpcResult<()> {
        not_yet("DeleteScorecard")
    }
    async fn evaluate_entity(
        &self,
        _request: Request<pb::EvaluateEntityRequest>,
    ) -> RpcResult<pb::EvaluateEntityResponse> {
        not_yet("EvaluateEntity")
    }
    async fn list_scorecard_evaluations(
        &self,
        _request: Request<pb::ListScorecardEvaluationsRequest>,
    ) -> RpcResult<pb::ListScorecardEvaluationsResponse> {
        not_yet("ListScorecardEvaluations")
    }
}
