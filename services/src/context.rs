//! The operation context of a call (after omicron's `OpContext`): who is calling, with which
//! token, what they are allowed to do here, and the facts every audit record needs. The
//! authorization layer builds it once per call; handlers and data-store methods take it.

use crate::error::Error;

/// The principal the server itself acts as (bootstrap, background tasks).
pub const SYSTEM_PRINCIPAL: &str = "system:platformd";

#[derive(Debug, Clone)]
pub struct CallContext {
    /// `user:{sub}`, `serviceAccount:tenants/{t}/serviceAccounts/{id}` or `system:…`.
    pub principal: String,
    /// The `jti` of the caller's token, when it has one.
    pub token_id: String,
    /// The issuer of the caller's token.
    pub token_issuer: String,
    /// The expiry of the caller's token (microseconds), 0 if none.
    pub token_expire_us: i64,
    /// Role grants carried by an offline-issued token: (tenant or None for platform, role id).
    pub token_grants: Vec<(Option<String>, String)>,
    /// The full gRPC method, `/platform.iam.v1.IamService/CreateTenant`.
    pub method: String,
    /// The permission the call was authorized with.
    pub permission: &'static str,
    /// The resource the call was authorized on ("" at platform scope).
    pub resource: String,
    /// The tenant the call acts in; `None` at platform scope.
    pub tenant: Option<String>,
    pub request_id: String,
    pub peer: String,
    pub user_agent: String,
}

impl CallContext {
    /// The context the authorization layer attached to a request.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<CallContext, Error> {
        request
            .extensions()
            .get::<CallContext>()
            .cloned()
            .ok_or_else(|| {
                Error::internal("call reached a handler without an authorization context")
            })
    }

    /// A context for what the server does on its own (bootstrap, background tasks).
    pub fn system(
        method: &str,
        permission: &'static str,
        tenant: Option<&str>,
        resource: &str,
    ) -> Self {
        CallContext {
            principal: SYSTEM_PRINCIPAL.to_owned(),
            token_id: String::new(),
            token_issuer: String::new(),
            token_expire_us: 0,
            token_grants: Vec::new(),
            method: method.to_owned(),
            permission,
            resource: resource.to_owned(),
            tenant: tenant.map(str::to_owned),
            request_id: uuid::Uuid::now_v7().to_string(),
            peer: String::new(),
            user_agent: String::new(),
        }
    }

    /// The audit chain this call's records go to: its tenant, or "" for the platform chain.
    pub fn chain(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }
}
