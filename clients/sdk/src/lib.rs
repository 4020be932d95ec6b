//! The platform API from Rust: the generated clients of `platform-api`, made pleasant.
//!
//! A [`Client`] holds one HTTP/2 connection and hands out the service clients; every call they
//! make carries the bearer token and a fresh `x-request-id` (a UUIDv7, unless the caller set
//! one), so each call can be found in the server's log and audit trail. On top:
//!
//! - [`Client::retry`] re-runs an idempotent call (a read, or a write with a `request_id`) with
//!   exponential backoff and jitter while the server answers UNAVAILABLE or RESOURCE_EXHAUSTED;
//! - [`Client::list`] turns any List method into a stream of items that fetches pages as it is
//!   read ([`paginate`] does the same for a page-fetching closure);
//! - [`Client::wait_for_deployment`] waits until a deployment has finished.
//!
//! ```no_run
//! use futures::TryStreamExt;
//! use platform_sdk::{Client, catalog};
//!
//! # async fn run() -> Result<(), platform_sdk::Error> {
//! let client = Client::connect("http://127.0.0.1:50051", Some("TOKEN")).await?;
//! let entities: Vec<catalog::Entity> = client
//!     .list(catalog::ListEntitiesRequest {
//!         parent: "tenants/acme".into(),
//!         filter: "kind = \"Component\"".into(),
//!         ..Default::default()
//!     })
//!     .try_collect()
//!     .await?;
//! println!("{} components", entities.len());
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use platform_api::platform::audit::v1 as audit;
pub use platform_api::platform::catalog::v1 as catalog;
pub use platform_api::platform::deployments::v1 as deployments;
pub use platform_api::platform::environments::v1 as environments;
pub use platform_api::platform::iam::v1 as iam;
pub use platform_api::platform::insights::v1 as insights;
pub use platform_api::platform::secrets::v1 as secrets;
pub use tonic;

/// What can go wrong talking to the platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is malformed or the connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The address is not a URI, e.g. `http://127.0.0.1:50051`.
    #[error("bad address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The token cannot be sent as a header (it has characters outside visible ASCII).
    #[error("the token is not a valid header value")]
    BadToken,
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Adds the credentials and a request id to every call.
#[derive(Clone)]
pub struct CallHeaders {
    authorization: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for CallHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("CallHeaders")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "Bearer ***"),
            )
            .finish()
    }
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        if let Some(value) = &self.authorization {
            metadata.insert("authorization", value.clone());
        }
        if !metadata.contains_key("x-request-id") {
            let id = uuid::Uuid::now_v7().to_string();
            if let Ok(value) = MetadataValue::try_from(id.as_str()) {
                metadata.insert("x-request-id", value);
            }
        }
        Ok(request)
    }
}

/// The channel every service client of a [`Client`] uses.
pub type AuthChannel = InterceptedService<Channel, CallHeaders>;

/// How [`Client::retry`] backs off.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first delay; each next one doubles, up to `max_delay`. Each delay is drawn uniformly
    /// between half of it and all of it, so that many clients do not retry in step.
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Whether a failed call may simply be made again (for an idempotent call).
pub fn is_transient(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
}

/// A connection to the platform API with credentials.
#[derive(Debug, Clone)]
pub struct Client {
    channel: AuthChannel,
    retry: RetryPolicy,
}

impl Client {
    /// Connects to `addr` (e.g. `http://127.0.0.1:50051`), authenticating with `token` if given.
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<Client, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let channel = Channel::from_shared(addr.to_owned())
            .map_err(|e| Error::BadAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(connect_error)?;
        Client::with_channel(channel, token)
    }

    /// A client over an existing channel (for custom TLS or timeouts).
    pub fn with_channel(channel: Channel, token: Option<&str>) -> Result<Client, Error> {
        let authorization = token
            .map(|t| {
                AsciiMetadataValue::try_from(format!("Bearer {t}")).map_err(|_| Error::BadToken)
            })
            .transpose()?;
        Ok(Client {
            channel: InterceptedService::new(channel, CallHeaders { authorization }),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }

    /// The channel, for generated clients not listed below.
    pub fn channel(&self) -> AuthChannel {
        self.channel.clone()
    }

    pub fn catalog(&self) -> catalog::catalog_service_client::CatalogServiceClient<AuthChannel> {
        catalog::catalog_service_client::CatalogServiceClient::new(self.channel())
    }
    pub fn environments(
        &self,
    ) -> environments::environment_service_client::EnvironmentServiceClient<AuthChannel> {
        environments::environment_service_client::EnvironmentServiceClient::new(self.channel())
    }
    pub fn deployments(
        &self,
    ) -> deployments::deployment_service_client::DeploymentServiceClient<AuthChannel> {
        deployments::deployment_service_client::DeploymentServiceClient::new(self.channel())
    }
    pub fn secrets(&self) -> secrets::secret_service_client::SecretServiceClient<AuthChannel> {
        secrets::secret_service_client::SecretServiceClient::new(self.channel())
    }
    pub fn iam(&self) -> iam::iam_service_client::IamServiceClient<AuthChannel> {
        iam::iam_service_client::IamServiceClient::new(self.channel())
    }
    pub fn audit(&self) -> audit::audit_service_client::AuditServiceClient<AuthChannel> {
        audit::audit_service_client::AuditServiceClient::new(self.channel())
    }
    pub fn insights(
        &self,
    ) -> insights::insights_service_client::InsightsServiceClient<AuthChannel> {
        insights::insights_service_client::InsightsServiceClient::new(self.channel())
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts are used up, backing off
    /// between attempts. Only for idempotent calls: reads, and writes with a `request_id` (the
    /// server returns the first result to a retry of the same request id).
    ///
    /// ```no_run
    /// # async fn run(client: platform_sdk::Client) -> Result<(), platform_sdk::Error> {
    /// use platform_sdk::catalog::GetEntityRequest;
    /// let entity = client
    ///     .retry(|| {
    ///         let mut catalog = client.catalog();
    ///         async move {
    ///             catalog
    ///                 .get_entity(GetEntityRequest {
    ///                     name: "tenants/acme/entities/component/default/payments".into(),
    ///                     ..Default::default()
    ///                 })
    ///                 .await
    ///         }
    ///     })
    ///     .await?;
    /// # let _ = entity;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retry<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        retry_with(self.retry, call).await
    }

    /// [`Client::retry`] for the common shape: a fresh service client and a copy of `request` for
    /// each attempt.
    ///
    /// ```no_run
    /// # async fn run(client: platform_sdk::Client) -> Result<(), platform_sdk::Error> {
    /// use platform_sdk::{Client, environments::GetEnvironmentRequest};
    /// let request = GetEnvironmentRequest { name: "tenants/acme/environments/prod".into() };
    /// let prod = client
    ///     .call(Client::environments, request, |mut c, r| async move {
    ///         c.get_environment(r).await
    ///     })
    ///     .await?;
    /// # let _ = prod;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<S, Req, T, F, Fut>(
        &self,
        service: fn(&Client) -> S,
        request: Req,
        mut method: F,
    ) -> Result<T, Error>
    where
        Req: Clone,
        F: FnMut(S, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.retry(|| method(service(self), request.clone())).await
    }

    /// Every item of a List method, page after page, as a stream that fetches the next page when
    /// it is read that far (each page retried like [`Client::retry`]). Works for every List
    /// request of the contract (see [`Paged`]).
    ///
    /// ```no_run
    /// # async fn run(client: platform_sdk::Client) -> Result<(), platform_sdk::Error> {
    /// use futures::TryStreamExt;
    /// use platform_sdk::deployments::ListDeploymentsRequest;
    /// let mut failed = client.list(ListDeploymentsRequest {
    ///     parent: "tenants/acme".into(),
    ///     filter: "state = FAILED".into(),
    ///     ..Default::default()
    /// });
    /// while let Some(deployment) = failed.try_next().await? {
    ///     println!("{} {}", deployment.name, deployment.state_message);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn list<R: Paged>(&self, request: R) -> BoxStream<'static, Result<R::Item, Error>> {
        let client = self.clone();
        paginate(move |page_token| {
            let client = client.clone();
            let mut request = request.clone();
            request.set_page_token(page_token);
            async move {
                client
                    .retry(|| {
                        let page = R::fetch(client.clone(), request.clone());
                        async move { page.await.map(tonic::Response::new) }
                    })
                    .await
            }
        })
        .boxed()
    }

    /// Waits until the deployment `name` has finished (SUCCEEDED, FAILED or CANCELLED) and
    /// returns it, polling with backoff; [`Error::Timeout`] after `timeout`.
    ///
    /// ```no_run
    /// # async fn run(client: platform_sdk::Client) -> Result<(), platform_sdk::Error> {
    /// use std::time::Duration;
    /// use platform_sdk::deployments::DeploymentState;
    /// let done = client
    ///     .wait_for_deployment("tenants/acme/deployments/0193", Duration::from_secs(600))
    ///     .await?;
    /// assert!(done.state() != DeploymentState::Running);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_deployment(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<deployments::Deployment, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let deployment = self
                .retry(|| {
                    let mut c = self.deployments();
                    let name = name.to_owned();
                    async move {
                        c.get_deployment(deployments::GetDeploymentRequest { name })
                            .await
                    }
                })
                .await?;
            if is_finished(&deployment) {
                return Ok(deployment);
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(Error::Timeout(timeout));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// A List request of the contract: where its page token goes, which RPC answers it, and which
/// field of the response holds the items. Implemented for every List method.
pub trait Paged: Clone + Send + Sync + 'static {
    /// The items a page holds.
    type Item: Send + 'static;
    fn set_page_token(&mut self, token: String);
    /// One page: its items and the next page token (empty after the last page).
    fn fetch(
        client: Client,
        request: Self,
    ) -> futures::future::BoxFuture<'static, Result<Page<Self::Item>, Status>>;
}

/// A page of items and the token of the next page (empty after the last).
pub type Page<T> = (Vec<T>, String);

macro_rules! paged {
    ($($request:ty => $item:ty, $service:ident . $method:ident, $field:ident;)*) => {$(
        impl Paged for $request {
            type Item = $item;
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
            fn fetch(
                client: Client,
                request: Self,
            ) -> futures::future::BoxFuture<'static, Result<Page<$item>, Status>> {
                Box::pin(async move {
                    let page = client.$service().$method(request).await?.into_inner();
                    Ok((page.$field, page.next_page_token))
                })
            }
        }
    )*};
}

paged! {
    audit::ListAuditEventsRequest => audit::AuditEvent, audit.list_audit_events, audit_events;
    catalog::ListEntitiesRequest => catalog::Entity, catalog.list_entities, entities;
    catalog::ListEntityRelationsRequest => catalog::RelationWithTarget, catalog.list_entity_relations, relations;
    deployments::ListDeploymentsRequest => deployments::Deployment, deployments.list_deployments, deployments;
    deployments::GetDeploymentLogRequest => deployments::LogLine, deployments.get_deployment_log, lines;
    environments::ListEnvironmentsRequest => environments::Environment, environments.list_environments, environments;
    environments::GetEnvironmentLogRequest => environments::LogLine, environments.get_environment_log, lines;
    iam::ListTenantsRequest => iam::Tenant, iam.list_tenants, tenants;
    iam::ListRolesRequest => iam::Role, iam.list_roles, roles;
    iam::ListRoleBindingsRequest => iam::RoleBinding, iam.list_role_bindings, role_bindings;
    iam::ListGroupsRequest => iam::Group, iam.list_groups, groups;
    iam::ListGroupMembersRequest => iam::GroupMember, iam.list_group_members, members;
    iam::ListServiceAccountsRequest => iam::ServiceAccount, iam.list_service_accounts, service_accounts;
    iam::ListServiceAccountTokensRequest => iam::ServiceAccountToken, iam.list_service_account_tokens, service_account_tokens;
    iam::ListPermissionsRequest => iam::Permission, iam.list_permissions, permissions;
    insights::ListServiceStatusesRequest => insights::ServiceStatus, insights.list_service_statuses, service_statuses;
    insights::ListScorecardsRequest => insights::Scorecard, insights.list_scorecards, scorecards;
    insights::ListScorecardEvaluationsRequest => insights::ScorecardEvaluation, insights.list_scorecard_evaluations, evaluations;
    secrets::ListSecretsRequest => secrets::Secret, secrets.list_secrets, secrets;
    secrets::ListSecretVersionsRequest => secrets::SecretVersion, secrets.list_secret_versions, versions;
    secrets::ListKeyEncryptionKeysRequest => secrets::KeyEncryptionKey, secrets.list_key_encryption_keys, key_encryption_keys;
}

/// [`Client::retry`] with an explicit policy.
pub async fn retry_with<T, F, Fut>(policy: RetryPolicy, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut delay = policy.initial_delay;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if is_transient(&status) && attempt < policy.attempts => {
                tokio::time::sleep(jittered(delay)).await;
                delay = (delay * 2).min(policy.max_delay);
                attempt += 1;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

/// Whether a deployment has reached a terminal state.
pub fn is_finished(deployment: &deployments::Deployment) -> bool {
    use deployments::DeploymentState as S;
    matches!(deployment.state(), S::Succeeded | S::Failed | S::Cancelled)
}

/// A List method as a stream of items: `fetch` gets a page token (empty for the first page)
/// and returns a page of items with the next token (empty after the last page). Pages are
/// fetched as the stream is read.
///
/// ```no_run
/// # async fn run(client: platform_sdk::Client) -> Result<(), platform_sdk::Error> {
/// use futures::TryStreamExt;
/// use platform_sdk::{iam, paginate};
/// let tenants: Vec<iam::Tenant> = paginate(|page_token| {
///     let mut iam = client.iam();
///     async move {
///         let page = iam
///             .list_tenants(iam::ListTenantsRequest { page_token, ..Default::default() })
///             .await?
///             .into_inner();
///         Ok((page.tenants, page.next_page_token))
///     }
/// })
/// .try_collect()
/// .await?;
/// # let _ = tenants;
/// # Ok(())
/// # }
/// ```
pub fn paginate<T, F, Fut>(mut fetch: F) -> impl Stream<Item = Result<T, Error>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Error>>,
{
    futures::stream::try_unfold(Some(String::new()), move |token| {
        let page = token.map(&mut fetch);
        async move {
            let Some(page) = page else {
                return Ok::<_, Error>(None);
            };
            let (items, next) = page.await?;
            let next = (!next.is_empty()).then_some(next);
            Ok(Some((
                futures::stream::iter(items.into_iter().map(Ok::<T, Error>)),
                next,
            )))
        }
    })
    .try_flatten()
}

/// `delay` scaled by a random factor in [0.5, 1].
fn jittered(delay: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_fetched_until_the_token_is_empty() {
        let pages = [
            (vec![1, 2], "a"),
            (vec![3], "b"),
            (vec![], "c"),
            (vec![4], ""),
        ];
        let mut calls = Vec::new();
        let items: Vec<i32> = paginate(|token: String| {
            calls.push(token.clone());
            let index = match token.as_str() {
                "" => 0,
                "a" => 1,
                "b" => 2,
                _ => 3,
            };
            let (items, next) = pages[index].clone();
            async move { Ok((items, next.to_owned())) }
        })
        .try_collect()
        .await
        .expect("items");
        assert_eq!(items, [1, 2, 3, 4]);
        assert_eq!(calls, ["", "a", "b", "c"]);
    }

    #[tokio::test]
    async fn an_error_ends_the_stream() {
        let mut stream = std::pin::pin!(paginate(|token: String| async move {
            if token.is_empty() {
                Ok((vec![1], "next".to_owned()))
            } else {
                Err(Error::Status(Status::permission_denied("no")))
            }
        }));
        assert_eq!(stream.next().await.expect("first").expect("ok"), 1);
        assert!(matches!(stream.next().await, Some(Err(Error::Status(_)))));
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_others_are_not() {
        let policy = RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = 0;
        let ok = retry_with(policy, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Status::unavailable("restarting"))
                } else {
                    Ok(tonic::Response::new(n))
                }
            }
        })
        .await
        .expect("third attempt");
        assert_eq!(ok, 3);
        let mut calls = 0;
        let err = retry_with(policy, || {
            calls += 1;
            async { Err::<tonic::Response<()>, _>(Status::unavailable("down")) }
        })
        .await
        .expect_err("attempts used up");
        assert!(matches!(err, Error::Status(s) if s.code() == Code::Unavailable));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let err = retry_with(policy, || {
            calls += 1;
            async { Err::<tonic::Response<()>, _>(Status::not_found("gone")) }
        })
        .await
        .expect_err("not transient");
        assert!(matches!(err, Error::Status(s) if s.code() == Code::NotFound));
        assert_eq!(calls, 1);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn headers_never_print_the_token() {
        let client = CallHeaders {
            authorization: Some(AsciiMetadataValue::from_static("Bearer secret-token")),
        };
        assert!(!format!("{client:?}").contains("secret-token"));
    }
}
