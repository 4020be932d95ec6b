//! Gives every call a request id — the caller's `x-request-id` when it sends a sane one, a new
//! UUIDv7 otherwise — and makes it visible everywhere: in the request extensions (for handlers
//! and audit), in a tracing span that wraps every log line of the call, and in the response
//! metadata, so a user's bug report and the server's log lines can be matched.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// The metadata key, lowercase as HTTP/2 requires.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Caller-chosen ids longer than this are replaced, so logs cannot be flooded through them.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A call's request id: printable ASCII, at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts a caller's id if it is 1–128 visible ASCII characters.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_REQUEST_ID_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| RequestId(raw.to_owned()))
    }

    /// A new, time-ordered id.
    pub fn generate() -> Self {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads the request id of a tonic request (set by [`RequestIdLayer`]).
pub fn request_id_of<T>(request: &tonic::Request<T>) -> Option<&RequestId> {
    request.extensions().get::<RequestId>()
}

/// The tower layer; outermost, so that everything inside runs in the call's span.
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::generate);
        let header = HeaderValue::from_str(id.as_str()).ok();
        if let Some(value) = &header {
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER, value.clone());
        }
        let span = tracing::info_span!(
            "call",
            request_id = %id,
            method = %request.uri().path(),
        );
        request.extensions_mut().insert(id);
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                let elapsed_us = started.elapsed().as_micros() as u64;
                match result {
                    Ok(mut response) => {
                        // A trailers-only response (every error) carries grpc-status here;
                        // successful unary and streaming calls carry it in trailers.
                        let grpc_status = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0")
                            .to_owned();
                        tracing::debug!(grpc_status, elapsed_us, "call finished");
                        if let Some(value) = header {
                            response.headers_mut().insert(REQUEST_ID_HEADER, value);
                        }
                        Ok(response)
                    }
                    Err(err) if is_shed(&err) => {
                        // Shed calls are answered RESOURCE_EXHAUSTED by tonic. A log line each
                        // would add work exactly when there is too much: one a second at most.
                        tracing::debug!(
                            elapsed_us,
                            "call shed: the server is at its concurrency limit"
                        );
                        shed_warning();
                        Err(err)
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, elapsed_us, "call failed in transport");
                        Err(err)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Was the call refused by the load-shedding layer? (The stack's errors are `BoxError`s.)
fn is_shed<E: 'static>(err: &E) -> bool {
    (err as &dyn std::any::Any)
        .downcast_ref::<tower::BoxError>()
        .is_some_and(|e| e.is::<tower::load_shed::error::Overloaded>())
}

/// Shed calls, warned about once a second.
static SHED: crate::telemetry::CountedWarning = crate::telemetry::CountedWarning::new();

fn shed_warning() {
    if let Some(shed) = SHED.add() {
        tracing::warn!(
            shed,
            "shedding load: calls refused with RESOURCE_EXHAUSTED at the concurrency limit since the last warning"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_load_shedder_refusals_count_as_shed() {
        let shed: tower::BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert!(is_shed(&shed));
        let other: tower::BoxError = "connection reset".into();
        assert!(!is_shed(&other));
        assert!(!is_shed(&std::io::Error::other("not boxed")));
    }

    #[test]
    fn caller_ids_are_kept_only_when_sane() {
        assert_eq!(
            RequestId::parse("abc-123").map(|r| r.0),
            Some("abc-123".to_owned())
        );
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("has space").is_none());
        assert!(RequestId::parse("new\nline").is_none());
        assert!(RequestId::parse(&"x".repeat(129)).is_none());
        assert!(RequestId::parse(&"x".repeat(128)).is_some());
    }

    #[test]
    fn generated_ids_are_unique_uuids() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(a.as_str()).is_ok());
    }
}
