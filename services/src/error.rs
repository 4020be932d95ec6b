//! The one error type of the server, independent of the transport.
//!
//! Handlers and the store return [`Error`]; it becomes a `tonic::Status` in exactly one place
//! (`From<Error> for Status`). Every variant says what the client may see; what only operators may
//! see (SQL errors, I/O errors, internal state) lives in `Internal` and is logged, never sent.
//! Rich details (field violations, precondition failures, resource info) follow Google's
//! `google.rpc` error model, so standard clients can read them.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One bad field in a request: the path of the field (`environment.display_name`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// No such resource (or the caller may not know whether it exists).
    #[error("{resource_type} `{name}` not found")]
    NotFound {
        resource_type: &'static str,
        name: String,
    },
    /// The resource the caller tried to create exists already.
    #[error("{resource_type} `{name}` already exists")]
    AlreadyExists {
        resource_type: &'static str,
        name: String,
    },
    /// The system is not in a state where the call can run (e.g. a locked environment).
    #[error("failed precondition: {message}")]
    FailedPrecondition { message: String },
    /// A concurrency conflict, e.g. a stale etag; the client should re-read and retry.
    #[error("aborted: {message}")]
    Aborted { message: String },
    /// The database rolled the call back for a conflict with a concurrent transaction
    /// (serialization failure, deadlock): nothing was written and the same call may simply run
    /// again. ABORTED to clients, marked with [`RETRY_HEADER`] so the gate re-runs it.
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// No credentials, or credentials that failed a check.
    #[error("unauthenticated: {message}")]
    Unauthenticated { message: String },
    /// Authenticated but not allowed.
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// A position outside what is kept or exists (e.g. a watch resuming from pruned history).
    #[error("out of range: {message}")]
    OutOfRange { message: String },
    /// A limit was hit (request size, quota, overload).
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },
    /// The method is part of the contract but not served by this release.
    #[error("unimplemented: {message}")]
    Unimplemented { message: String },
    /// A dependency (usually the database) is temporarily unreachable; retrying may help.
    #[error("unavailable: {message}")]
    Unavailable { message: String },
    /// Stored data is unreadable (e.g. a ciphertext that fails authenticated decryption).
    #[error("data loss: {message}")]
    DataLoss { message: String },
    /// A bug or an unexpected failure. `internal_message` is for logs only.
    #[error("internal error: {internal_message}")]
    Internal { internal_message: String },
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(internal_message: impl Into<String>) -> Self {
        Error::Internal {
            internal_message: internal_message.into(),
        }
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Error::Unimplemented {
            message: message.into(),
        }
    }

    /// The gRPC code this error maps to; the table clients and SDKs rely on.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::Aborted { .. } | Error::Conflict { .. } => Code::Aborted,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::OutOfRange { .. } => Code::OutOfRange,
            Error::Unimplemented { .. } => Code::Unimplemented,
            Error::Unavailable { .. } => Code::Unavailable,
            Error::DataLoss { .. } => Code::DataLoss,
            Error::Internal { .. } => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = err.code();
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(code, summarize(&violations), details)
            }
            Error::NotFound {
                resource_type,
                ref name,
            }
            | Error::AlreadyExists {
                resource_type,
                ref name,
            } => {
                let details = ErrorDetails::with_resource_info(resource_type, name.clone(), "", "");
                Status::with_error_details(code, err.to_string(), details)
            }
            Error::FailedPrecondition { ref message } => {
                let details =
                    ErrorDetails::with_precondition_failure_violation("STATE", "", message.clone());
                Status::with_error_details(code, message.clone(), details)
            }
            Error::Conflict { message } => {
                let mut status = Status::new(code, message);
                status.metadata_mut().insert(
                    RETRY_HEADER,
                    tonic::metadata::MetadataValue::from_static("conflict"),
                );
                status
            }
            Error::Aborted { message }
            | Error::Unauthenticated { message }
            | Error::PermissionDenied { message }
            | Error::ResourceExhausted { message }
            | Error::OutOfRange { message }
            | Error::Unimplemented { message }
            | Error::Unavailable { message }
            | Error::DataLoss { message } => Status::new(code, message),
            Error::Internal { internal_message } => {
                // The request span carries the request id, so this line and the client's report
                // can be matched; the client learns nothing about the cause.
                tracing::error!(error = %internal_message, "internal error");
                Status::internal(
                    "internal error; the server log has details under this call's request id",
                )
            }
        }
    }
}

/// Marks a response whose call was rolled back for a conflict and may run again unchanged.
pub const RETRY_HEADER: &str = "x-platform-retry";

/// What a gRPC handler returns.
pub type RpcResult<T> = Result<tonic::Response<T>, Status>;

/// Turns a handler's result into its gRPC response (errors through `From<Error> for Status`).
pub fn respond<T>(result: Result<T, Error>) -> RpcResult<T> {
    result.map(tonic::Response::new).map_err(Status::from)
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut => Error::Unavailable {
                message: "the database is busy; retry with backoff".to_owned(),
            },
            sqlx::Error::PoolClosed => Error::Unavailable {
                message: "the server is shutting down".to_owned(),
            },
            // The connection broke or could not be made: the database is away, for now.
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
                Error::Unavailable {
                    message: "the database cannot be reached; retry with backoff".to_owned(),
                }
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // PostgreSQL: statement_timeout (or a cancel) stopped the statement.
                Some("57014") => Error::Unavailable {
                    message: "the database took too long; retry with backoff".to_owned(),
                },
                // PostgreSQL: the connection failed, or the server is shutting down or starting.
                Some(code)
                    if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") =>
                {
                    Error::Unavailable {
                        message: "the database cannot be reached; retry with backoff".to_owned(),
                    }
                }
                // PostgreSQL: a serialization failure or a deadlock with a concurrent
                // transaction (another replica, say); nothing was written.
                Some("40001" | "40P01") => Error::Conflict {
                    message: "conflict with a concurrent change; nothing was written, retry"
                        .to_owned(),
                },
                _ => Error::internal(format!("database: {db}")),
            },
            other => Error::internal(format!("database: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status: Status = Error::InvalidArgument(vec![
            FieldViolation::new("environment_id", "must be a lowercase DNS label"),
            FieldViolation::new("environment.type", "required"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["environment_id", "environment.type"]);
    }

    #[test]
    fn internal_messages_stay_on_the_server() {
        let status: Status =
            Error::internal("database: password authentication failed for hunter2").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
        assert!(!status.message().contains("database"));
    }

    #[test]
    fn not_found_names_the_resource() {
        let status: Status = Error::NotFound {
            resource_type: "environment",
            name: "tenants/a/environments/dev".into(),
        }
        .into();
        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_error_details();
        assert_eq!(
            info.resource_info().expect("resource info").resource_name,
            "tenants/a/environments/dev"
        );
    }

    #[test]
    fn pool_exhaustion_is_retryable() {
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).code(),
            Code::Unavailable
        );
    }
}
