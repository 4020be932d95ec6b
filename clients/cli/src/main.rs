//! `platformctl`: the platform API from a terminal or a script.
//!
//! Exit codes scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `deploy --wait`: the deployment SUCCEEDED; for `can-i`: allowed) |
//! | 1 | the server refused the request (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED, …), or `can-i` says no, or `audit verify` found a broken chain |
//! | 2 | usage: bad flags or arguments, no tenant, an unreadable file |
//! | 3 | authentication or authorization: UNAUTHENTICATED, PERMISSION_DENIED |
//! | 4 | NOT_FOUND |
//! | 5 | the server or the connection failed: UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, … |
//! | 6 | a deployment waited on ended FAILED or CANCELLED |
//!
//! Errors are one line on standard error: the gRPC code, the server's message, and its field
//! violations.

mod commands;
mod config;
mod output;

use std::process::ExitCode;

use clap::Parser;
use tonic::Code;

use output::{Format, Printer};

/// The platform API's command line.
#[derive(Debug, Parser)]
#[command(name = "platformctl", version, about, propagate_version = true)]
pub struct Cli {
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long, global = true, env = "PLATFORM_ADDR")]
    addr: Option<String>,
    /// The bearer token (prefer the environment or `platformctl login` to a flag: flags show in
    /// process lists).
    #[arg(long, global = true, env = "PLATFORM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The tenant to act in (`acme` or `tenants/acme`).
    #[arg(long, global = true, env = "PLATFORM_TENANT")]
    tenant: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: commands::Command,
}

/// Why a command failed, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    pub fn refused(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

/// One readable line for a gRPC error: code, message, field violations.
pub fn status_line(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut line = format!("{}: {}", code_name(status.code()), status.message().trim());
    if let Some(bad) = status.get_details_bad_request() {
        let fields: Vec<String> = bad
            .field_violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        if !fields.is_empty() && !line.contains(&fields[0]) {
            line.push_str(&format!(" [{}]", fields.join("; ")));
        }
    }
    line
}

/// The canonical upper-case name of a code, as in the gRPC specification.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The exit code for a gRPC error.
pub fn exit_code(code: Code) -> u8 {
    match code {
        Code::Unauthenticated | Code::PermissionDenied => 3,
        Code::NotFound => 4,
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::DataLoss
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::Cancelled => 5,
        _ => 1,
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> CliError {
        CliError {
            code: exit_code(status.code()),
            message: status_line(&status),
        }
    }
}

impl From<platform_sdk::Error> for CliError {
    fn from(error: platform_sdk::Error) -> CliError {
        match error {
            platform_sdk::Error::Status(status) => status.into(),
            platform_sdk::Error::Connect { .. } | platform_sdk::Error::Timeout(_) => CliError {
                code: 5,
                message: error.to_string(),
            },
            platform_sdk::Error::BadToken => CliError {
                code: 3,
                message: error.to_string(),
            },
            platform_sdk::Error::BadAddress { .. } => CliError::usage(error.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(5);
        }
    };
    let printer = Printer { format: cli.output };
    match runtime.block_on(commands::run(cli, printer)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
