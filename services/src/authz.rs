//! The gate every platform call passes before its handler: authentication, then authorization
//! against Casbin, with denials audited (DESIGN.md, "The request path", steps 2 and 3).
//!
//! It is a tower layer rather than per-handler code so that no handler can forget it: every RPC
//! is looked up in the one permission table (`platform_policy::permissions`); an RPC of the
//! contract without an entry is denied. The resource an RPC acts on is read from the request
//! message itself — the field the table names, found by field number with a small wire-format
//! scan (no second full decode) — so the tenant being authorized is the tenant in the request.
//! On success the handler finds a [`CallContext`] in the request extensions.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use platform_policy::PolicyEngine;
use platform_policy::permissions::{self, ResourceSource};
use prost::Message;
use prost_types::FileDescriptorSet;
use tonic::Status;
use tower::{Layer, Service};

use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::auth::{Authenticator, TokenSource, VerifiedToken};
use crate::context::CallContext;
use crate::error::Error;
use crate::names;
use crate::request_id::RequestId;
use crate::store::{Store, now_micros};

/// Field-number paths of each RPC's resource field, resolved once from the descriptor set.
#[derive(Debug, Default)]
struct FieldPaths(HashMap<(String, String), Vec<u32>>);

impl FieldPaths {
    fn resolve() -> Result<Self, String> {
        let set = FileDescriptorSet::decode(platform_api::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("descriptor set: {e}"))?;
        let mut messages = HashMap::new();
        for file in &set.file {
            for message in &file.message_type {
                messages.insert(
                    format!(".{}.{}", file.package(), message.name()),
                    message.clone(),
                );
            }
        }
        let mut inputs = HashMap::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    inputs.insert(
                        format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        method.input_type().to_owned(),
                    );
                }
            }
        }
        let mut paths = HashMap::new();
        for entry in permissions::all() {
            let field_paths: Vec<&str> = match entry.resource {
                ResourceSource::Field(p)
                | ResourceSource::TenantOf(p)
                | ResourceSource::TenantIdField(p) => vec![p],
                ResourceSource::Scoped { tenant, resource } => vec![tenant, resource],
                ResourceSource::Platform | ResourceSource::AnyAuthenticated => vec![],
            };
            for field_path in field_paths {
                let mut message_type = inputs
                    .get(entry.method)
                    .ok_or_else(|| {
                        format!(
                            "{} is in the permission table but not in the contract",
                            entry.method
                        )
                    })?
                    .clone();
                let mut numbers = Vec::new();
                for part in field_path.split('.') {
                    let message = messages.get(&message_type).ok_or_else(|| {
                        format!("{}: unknown message {message_type}", entry.method)
                    })?;
                    let field = message
                        .field
                        .iter()
                        .find(|f| f.name() == part)
                        .ok_or_else(|| format!("{}: no field `{field_path}`", entry.method))?;
                    numbers.push(field.number() as u32);
                    message_type = field.type_name().to_owned();
                }
                paths.insert((entry.method.to_owned(), field_path.to_owned()), numbers);
            }
        }
        Ok(FieldPaths(paths))
    }
}

/// The request bytes are not a valid protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedMessage;

/// Reads the string at a field-number path from an encoded protobuf message. Follows proto
/// semantics: the last occurrence of a string wins, repeated occurrences of a message merge.
/// `Ok(None)` when absent; `Err` when the bytes are not a valid message.
pub fn extract_string(message: &[u8], path: &[u32]) -> Result<Option<String>, MalformedMessage> {
    let Some((&first, rest)) = path.split_first() else {
        return Ok(None);
    };
    let mut buf = message;
    let mut last_string: Option<&[u8]> = None;
    let mut nested: Vec<u8> = Vec::new();
    let mut found_nested = false;
    while buf.has_remaining() {
        let key = prost::encoding::decode_varint(&mut buf).map_err(|_| MalformedMessage)?;
        let number = (key >> 3) as u32;
        let wire_type = key & 7;
        if number == 0 {
            return Err(MalformedMessage);
        }
        match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut buf).map_err(|_| MalformedMessage)?;
            }
            1 => {
                if buf.remaining() < 8 {
                    return Err(MalformedMessage);
                }
                buf.advance(8);
            }
            5 => {
                if buf.remaining() < 4 {
                    return Err(MalformedMessage);
                }
                buf.advance(4);
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).map_err(|_| MalformedMessage)?
                    as usize;
                if buf.remaining() < len {
                    return Err(MalformedMessage);
                }
                let payload = &buf[..len];
                if number == first {
                    if rest.is_empty() {
                        last_string = Some(payload);
                    } else {
                        nested.extend_from_slice(payload);
                        found_nested = true;
                    }
                }
                buf.advance(len);
            }
            _ => return Err(MalformedMessage),
        }
    }
    if rest.is_empty() {
        return match last_string {
            Some(bytes) => std::str::from_utf8(bytes)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| MalformedMessage),
            None => Ok(None),
        };
    }
    if found_nested {
        extract_string(&nested, rest)
    } else {
        Ok(None)
    }
}

/// Everything the gate needs, shared by all connections.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    authenticator: Arc<Authenticator>,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
    store: Store,
    paths: FieldPaths,
    /// How often a call rolled back for a database conflict is run again.
    conflict_retries: u32,
    /// Per-principal rate limits, when configured.
    rate_limiter: Option<crate::ratelimit::RateLimiter>,
    /// Set when the server shuts down: new calls are answered UNAVAILABLE.
    draining: std::sync::atomic::AtomicBool,
    /// Audit records of calls without valid credentials, per peer address.
    anonymous_audit: crate::ratelimit::RateLimiter,
}

/// The actor of audit records for calls without valid credentials.
pub const ANONYMOUS_PRINCIPAL: &str = "anonymous";

/// Records of refused calls without valid credentials per peer address: a steady rate and a
/// burst (a client misconfigured for a while is recorded whole; a flood is counted, not stored).
pub const ANONYMOUS_AUDIT_BUDGET: crate::ratelimit::RateLimit = crate::ratelimit::RateLimit {
    per_second: 20.0,
    burst: 500.0,
};

/// Anonymous calls over their peer's budget, warned about once a second.
static ANONYMOUS_UNAUDITED: crate::telemetry::CountedWarning =
    crate::telemetry::CountedWarning::new();

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// What the gate decided for one call.
enum Decision {
    /// Not a platform method (health, reflection): no authentication needed; the body is
    /// passed on untouched.
    Open(tonic::body::Body),
    Allowed(Box<CallContext>, Bytes),
    Rejected(Status),
    /// Refused before the request body was read (no or bad credentials, a rate limit). The
    /// body is read (up to a bound) before answering, so that an HTTP/1.1 (gRPC-Web) connection
    /// stays usable for the client's next call instead of being closed under it.
    RejectedUnread(Status, tonic::body::Body),
}

impl Gate {
    pub fn new(
        authenticator: Arc<Authenticator>,
        policy: Arc<PolicyEngine>,
        audit: AuditLog,
        store: Store,
        conflict_retries: u32,
        rate_limit: Option<crate::ratelimit::RateLimit>,
    ) -> Result<Self, String> {
        Ok(Gate {
            inner: Arc::new(GateInner {
                authenticator,
                policy,
                audit,
                store,
                paths: FieldPaths::resolve()?,
                conflict_retries,
                rate_limiter: rate_limit.map(crate::ratelimit::RateLimiter::new),
                draining: Default::default(),
                anonymous_audit: crate::ratelimit::RateLimiter::new(ANONYMOUS_AUDIT_BUDGET),
            }),
        })
    }

    /// From now on, new calls of the contract are answered UNAVAILABLE; calls already admitted
    /// run to their end. (Health and reflection stay open, so probes see NOT_SERVING.)
    pub fn start_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.inner.policy
    }

    /// Is the caller of `ctx` allowed `permission` on `resource`? Counts role grants carried by an
    /// offline-issued token as well as bindings.
    pub fn allows(&self, ctx: &CallContext, resource: &str, permission: &str) -> bool {
        allows(&self.inner.policy, ctx, resource, permission)
    }

    async fn decide(&self, parts: &http::request::Parts, body: tonic::body::Body) -> Decision {
        let path = parts.uri.path();
        let Some(entry) = permissions::rpc_permission(path) else {
            if crate::contract::rpc_by_path(path).is_some() {
                // A contract method missing from the table is denied, never let through. (Paths
                // outside the contract fall through to UNIMPLEMENTED.)
                return Decision::Rejected(Status::permission_denied(format!(
                    "{} has no entry in the permission table",
                    names::printable(path)
                )));
            }
            return Decision::Open(body);
        };
        if self
            .inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Decision::RejectedUnread(
                Status::unavailable(
                    "the server is shutting down; retry (another replica, or this one after its restart)",
                ),
                body,
            );
        }
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let token = match header {
            None => {
                self.audit_anonymous(parts, entry.permission).await;
                return Decision::RejectedUnread(
                    Error::Unauthenticated {
                        message: "no bearer token: send `authorization: Bearer <token>`".into(),
                    }
                    .into(),
                    body,
                );
            }
            Some(value) => match crate::auth::parse_authorization_header(value) {
                Ok(token) => token,
                Err(err) => {
                    self.audit_anonymous(parts, entry.permission).await;
                    return Decision::RejectedUnread(Error::from(err).into(), body);
                }
            },
        };
        let verified = match self.inner.authenticator.verify(token) {
            Ok(verified) => verified,
            Err(err) => {
                if err == crate::auth::AuthError::Revoked {
                    self.audit_revoked_use(parts, entry.permission, token).await;
                } else {
                    self.audit_anonymous(parts, entry.permission).await;
                }
                return Decision::RejectedUnread(Error::from(err).into(), body);
            }
        };
        if let Some(limiter) = &self.inner.rate_limiter
            && let Err(wait) = limiter.check(&principal_of(&verified))
        {
            let message = format!(
                "rate limit: {} calls per second per principal; retry in {} ms",
                limiter.limit().per_second,
                wait.as_millis().max(1)
            );
            return Decision::RejectedUnread(Error::ResourceExhausted { message }.into(), body);
        }

        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => return Decision::Rejected(Status::from_error(Box::new(err))),
        };
        let message = match grpc_message(&bytes) {
            Ok(message) => message,
            Err(status) => return Decision::Rejected(status),
        };

        // Read every string field the table may ask for; a malformed message is refused here.
        let mut fields: HashMap<&str, String> = HashMap::new();
        for ((method, field_path), numbers) in &self.inner.paths.0 {
            if method != entry.method {
                continue;
            }
            match extract_string(message, numbers) {
                Ok(value) => {
                    fields.insert(field_path.as_str(), value.unwrap_or_default());
                }
                Err(MalformedMessage) => {
                    return Decision::Rejected(Status::invalid_argument(
                        "the request is not a valid protobuf message",
                    ));
                }
            }
        }
        if let ResourceSource::TenantIdField(field) = entry.resource
            && !names::is_dns_label(fields.get(field).map(String::as_str).unwrap_or_default())
        {
            return Decision::Rejected(
                Error::invalid_argument(field, "must be a lowercase DNS label").into(),
            );
        }
        for (field, value) in &fields {
            if !value.is_empty()
                && names::validate_resource_name(field, value).is_err()
                && !matches!(entry.resource, ResourceSource::TenantIdField(_))
            {
                return Decision::Rejected(
                    Error::invalid_argument(*field, "must be a well-formed resource name").into(),
                );
            }
        }
        let Some(target) = entry.target(|path| fields.get(path).cloned().unwrap_or_default())
        else {
            return Decision::Rejected(
                Error::invalid_argument(
                    "name",
                    "names no resource this call can act on (check the tenant in the name)",
                )
                .into(),
            );
        };
        let resource = target.resource.clone();
        let tenant = target.tenant.clone();
        let (request_id, peer, user_agent) = call_facts(parts);
        let ctx = CallContext {
            principal: principal_of(&verified),
            token_id: verified.claims.jti.clone().unwrap_or_default(),
            token_issuer: verified.claims.iss.clone(),
            token_expire_us: i64::try_from(verified.claims.exp)
                .unwrap_or(i64::MAX / 1_000_000)
                .saturating_mul(1_000_000),
            token_grants: grants_of(&verified),
            method: path.to_owned(),
            permission: entry.permission,
            resource,
            tenant,
            request_id,
            peer,
            user_agent,
        };
        let allowed = match entry.resource {
            ResourceSource::AnyAuthenticated => true,
            // Lists marked "partial" in the table are still decided on the whole resource here:
            // handlers do not narrow yet, so a caller bound only below it is denied (never shown
            // more than it may see).
            _ => allows_in(
                &self.inner.policy,
                &ctx,
                ctx.tenant.as_deref(),
                &ctx.resource,
                entry.permission,
            ),
        };
        let allowed = allowed || self.owner_allows(&ctx).await;
        if !allowed {
            self.audit_denial(&ctx).await;
            return Decision::Rejected(
                Error::PermissionDenied {
                    message: format!(
                        "{} lacks `{}` on this resource",
                        ctx.principal, entry.permission
                    ),
                }
                .into(),
            );
        }
        Decision::Allowed(Box::new(ctx), bytes)
    }

    /// Catalog ownership (asked only after the policy said no): the owner role of the entity the
    /// call targets, if the caller's catalog User belongs to the owning Group. What that role
    /// permits is the policy engine's answer, as for any binding.
    async fn owner_allows(&self, ctx: &CallContext) -> bool {
        let Some(tenant) = ctx.tenant.as_deref() else {
            return false;
        };
        if crate::catalog::ownership::entity_of_resource(&ctx.resource).is_none() {
            return false;
        }
        match crate::catalog::ownership::owner_role_for(
            &self.inner.store,
            &ctx.principal,
            tenant,
            &ctx.resource,
        )
        .await
        {
            Ok(Some(role)) => self.inner.policy.role_includes(&role, ctx.permission),
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(error = %err, "could not evaluate catalog ownership; denying");
                false
            }
        }
    }

    /// Records a denied call (PERMISSION_DENIED).
    async fn audit_denial(&self, ctx: &CallContext) {
        self.audit_refusal(ctx, tonic::Code::PermissionDenied).await;
    }

    /// Records the use of an authentic token that has been revoked — who, with which token id,
    /// calling what — in the chain of the service account's tenant (else the platform's). Only a
    /// token the server signed or an identity provider vouches for gets here, so an anonymous
    /// caller cannot fill the trail with it.
    async fn audit_revoked_use(
        &self,
        parts: &http::request::Parts,
        permission: &'static str,
        token: &str,
    ) {
        let Some(verified) = self.inner.authenticator.revoked_token_identity(token) else {
            return;
        };
        let principal = principal_of(&verified);
        let tenant = principal
            .strip_prefix("serviceAccount:tenants/")
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned);
        let ctx = refused_context(parts, permission, principal, Some(&verified), tenant);
        self.audit_refusal(&ctx, tonic::Code::Unauthenticated).await;
    }

    /// Records a call refused for missing or invalid credentials in the platform chain, as
    /// `anonymous` (the body is not read, so no resource is named). Anyone can send such calls,
    /// so each peer address gets a budget of records ([`ANONYMOUS_AUDIT_BUDGET`]); calls beyond
    /// it are counted in a warning once a second instead of growing the chain without bound.
    async fn audit_anonymous(&self, parts: &http::request::Parts, permission: &'static str) {
        let ctx = refused_context(
            parts,
            permission,
            ANONYMOUS_PRINCIPAL.to_owned(),
            None,
            None,
        );
        let address = ctx
            .peer
            .rsplit_once(':')
            .map_or(ctx.peer.as_str(), |(ip, _)| ip);
        if self.inner.anonymous_audit.check(address).is_err() {
            if let Some(unaudited) = ANONYMOUS_UNAUDITED.add() {
                tracing::warn!(
                    unaudited,
                    "calls without valid credentials over a peer's audit budget were refused without an audit record"
                );
            }
            return;
        }
        self.audit_refusal(&ctx, tonic::Code::Unauthenticated).await;
    }

    /// Records a refused call in the tenant's chain when the tenant exists, else in the
    /// platform chain (so that probing random tenant names creates no chains).
    async fn audit_refusal(&self, ctx: &CallContext, code: tonic::Code) {
        let mut record = AuditRecord::of_call(ctx, Outcome::Denied, code, &[]);
        if let Some(tenant) = &ctx.tenant {
            let exists = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_one(self.inner.store.pool())
                .await
                .map(|n| n > 0)
                .unwrap_or(false);
            if !exists {
                record.chain = String::new();
            }
        }
        record.event_time_us = now_micros();
        if let Err(err) = self.inner.audit.append_now(&record).await {
            tracing::error!(error = %err, "could not audit a denied call");
        }
    }
}

/// The principal a verified token speaks for. Only tokens platformd signed itself can name a
/// service account; an identity provider's `sub` is always a user, whatever it looks like.
pub fn principal_of(token: &VerifiedToken) -> String {
    let sub = &token.claims.sub;
    match token.source {
        TokenSource::Platform if sub.starts_with("serviceAccount:") => sub.clone(),
        _ => format!("user:{sub}"),
    }
}

/// Role grants embedded in a platform-signed token (offline-issued and bootstrap tokens);
/// identity-provider tokens never carry any.
pub fn grants_of(token: &VerifiedToken) -> Vec<(Option<String>, String)> {
    match token.source {
        TokenSource::Platform => token
            .claims
            .roles
            .iter()
            .map(|role| (token.claims.tenant.clone(), role.clone()))
            .collect(),
        TokenSource::IdentityProvider => Vec::new(),
    }
}

fn allows(policy: &PolicyEngine, ctx: &CallContext, resource: &str, permission: &str) -> bool {
    allows_in(
        policy,
        ctx,
        names::tenant_of(resource),
        resource,
        permission,
    )
}

fn allows_in(
    policy: &PolicyEngine,
    ctx: &CallContext,
    tenant: Option<&str>,
    resource: &str,
    permission: &str,
) -> bool {
    if policy.is_allowed(&ctx.principal, tenant, resource, permission) {
        return true;
    }
    ctx.token_grants.iter().any(|(grant_tenant, role)| {
        let tenant_matches = match grant_tenant {
            None => role == "platform-admin",
            Some(t) => tenant == Some(t.as_str()),
        };
        tenant_matches && policy.role_includes(role, permission)
    })
}

/// The payload of the single gRPC message of a unary or server-streaming request.
fn grpc_message(body: &[u8]) -> Result<&[u8], Status> {
    if body.len() < 5 {
        return Err(Status::invalid_argument(
            "the request carries no gRPC message",
        ));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "compressed request messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(Status::invalid_argument(
            "the request must carry exactly one gRPC message",
        ));
    }
    Ok(&body[5..])
}

impl<S> Layer<S> for Gate {
    type Service = GateService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            gate: self.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GateService<S> {
    gate: Gate,
    inner: S,
}

impl<S> Service<Request<tonic::body::Body>> for GateService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match gate.decide(&parts, body).await {
                Decision::Open(body) => inner.call(Request::from_parts(parts, body)).await,
                Decision::Rejected(status) => Ok(status.into_http()),
                Decision::RejectedUnread(status, body) => {
                    // Bounded, so a caller who never finishes its body cannot hold the call
                    // open: past 64 KiB or a second the connection is simply closed after the
                    // answer, as before.
                    let drain = http_body_util::Limited::new(body, 64 * 1024).collect();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                    Ok(status.into_http())
                }
                Decision::Allowed(ctx, bytes) => {
                    parts.extensions.insert(*ctx);
                    call_with_conflict_retries(
                        &mut inner,
                        &parts,
                        bytes,
                        gate.inner.conflict_retries,
                    )
                    .await
                }
            }
        })
    }
}

/// The context of a call refused before authorization (no valid credentials), for its audit
/// record: who it claims to be if the token is authentic, what it called, and from where. It
/// names no resource, since the refused request's body is never read.
fn refused_context(
    parts: &http::request::Parts,
    permission: &'static str,
    principal: String,
    token: Option<&VerifiedToken>,
    tenant: Option<String>,
) -> CallContext {
    let (request_id, peer, user_agent) = call_facts(parts);
    CallContext {
        principal,
        token_id: token.and_then(|t| t.claims.jti.clone()).unwrap_or_default(),
        token_issuer: token.map(|t| t.claims.iss.clone()).unwrap_or_default(),
        token_expire_us: 0,
        token_grants: Vec::new(),
        method: parts.uri.path().to_owned(),
        permission,
        resource: String::new(),
        tenant,
        request_id,
        peer,
        user_agent,
    }
}

/// The request id, peer address and user agent of a call, for its context and audit records.
fn call_facts(parts: &http::request::Parts) -> (String, String, String) {
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let peer = parts
        .extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(names::printable)
        .unwrap_or_default();
    (request_id, peer, user_agent)
}

/// Calls `inner`; a call the database rolled back for a conflict with a concurrent transaction
/// (its response carries [`crate::error::RETRY_HEADER`]) wrote nothing, so it runs again, up to
/// `retries` times with a growing pause. The request is in memory here, so it can be re-sent.
async fn call_with_conflict_retries<S>(
    inner: &mut S,
    parts: &http::request::Parts,
    bytes: Bytes,
    retries: u32,
) -> Result<S::Response, S::Error>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>,
{
    let mut attempt = 0;
    loop {
        std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
        let response = inner.call(request_again(parts, bytes.clone())).await?;
        let conflict = response.headers().contains_key(crate::error::RETRY_HEADER);
        if !conflict || attempt >= retries {
            return Ok(response);
        }
        attempt += 1;
        tracing::debug!(attempt, "re-running a call rolled back for a conflict");
        tokio::time::sleep(std::time::Duration::from_millis(5 << attempt.min(6))).await;
    }
}

/// A request with the same head as `parts` and `bytes` as its body.
fn request_again(parts: &http::request::Parts, bytes: Bytes) -> Request<tonic::body::Body> {
    let body =
        tonic::body::Body::new(http_body_util::Full::new(bytes).map_err(|never| match never {}));
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_string(number: u32, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(value.len() as u64, &mut out);
        out.extend_from_slice(value.as_bytes());
        out
    }

    #[tokio::test]
    async fn conflicts_are_retried_with_the_same_request_then_given_up() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        // Fails with a conflict until the third call.
        let service = {
            let (calls, seen) = (calls.clone(), seen.clone());
            tower::service_fn(move |request: Request<tonic::body::Body>| {
                let (calls, seen) = (calls.clone(), seen.clone());
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let body = request.into_body().collect().await.map(|b| b.to_bytes());
                    seen.lock().push(body.unwrap_or_default());
                    let status = if n < 2 {
                        Status::from(Error::Conflict {
                            message: "deadlock".into(),
                        })
                    } else {
                        Status::ok("")
                    };
                    Ok::<_, std::convert::Infallible>(status.into_http())
                }
            })
        };
        let (parts, ()) = Request::builder()
            .uri("/platform.x.v1.X/Y")
            .body(())
            .expect("request")
            .into_parts();
        let mut retried = service.clone();
        let response =
            call_with_conflict_retries(&mut retried, &parts, Bytes::from_static(b"msg"), 3)
                .await
                .expect("infallible");
        assert!(!response.headers().contains_key(crate::error::RETRY_HEADER));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(
            seen.lock().iter().all(|b| b.as_ref() == b"msg"),
            "the same message each time"
        );

        calls.store(0, Ordering::SeqCst);
        let mut once = service;
        let response = call_with_conflict_retries(&mut once, &parts, Bytes::from_static(b"msg"), 1)
            .await
            .expect("infallible");
        assert!(
            response.headers().contains_key(crate::error::RETRY_HEADER),
            "given up: ABORTED"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn extracts_top_level_and_nested_strings() {
        let mut msg = encode_string(1, "tenants/a");
        msg.extend(encode_string(1, "tenants/b")); // last one wins, as in proto3
        assert_eq!(
            extract_string(&msg, &[1]).expect("ok").as_deref(),
            Some("tenants/b")
        );
        assert_eq!(extract_string(&msg, &[2]).expect("ok"), None);

        let inner = encode_string(1, "tenants/x/groups/g");
        let mut outer = vec![8, 150, 1]; // field 1 varint 150
        let mut wrapped = Vec::new();
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut wrapped);
        prost::encoding::encode_varint(inner.len() as u64, &mut wrapped);
        wrapped.extend(&inner);
        outer.extend(wrapped);
        assert_eq!(
            extract_string(&outer, &[3, 1]).expect("ok").as_deref(),
            Some("tenants/x/groups/g")
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[0xff_u8][..],
            &[0x0a, 0x05, b'a'],
            &[0x0b],
            &[0x00, 0x00],
            &[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(extract_string(bad, &[1]).is_err(), "{bad:?}");
        }
        let invalid_utf8 = [0x0a, 0x02, 0xc3, 0x28];
        assert!(extract_string(&invalid_utf8, &[1]).is_err());
    }

    #[test]
    fn every_table_entry_resolves_to_a_field() {
        let paths = FieldPaths::resolve().expect("all resource fields resolve");
        assert!(!paths.0.is_empty());
    }
}
