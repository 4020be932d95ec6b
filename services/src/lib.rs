//! platformd: the platform API server, as a library so that tests and tools can start the
//! real server in-process; `main.rs` is only the command line around it.
//!
//! One module per service (`iam`, `audit`, `catalog`), each with its handlers and storage queries; shared
//! plumbing beside them: `auth` (tokens), `authz` (the gate every call passes), `context` (who
//! is calling), `config`, `error`, `store`, `idempotency`, `names`, `filter`, `pagination`,
//! `request_id`, `limits` and `ratelimit`, `telemetry`, `contract`, and `server`, which assembles them.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod context;
pub mod contract;
pub mod deployments;
pub mod driver;
pub mod environments;
pub mod error;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod iam;
pub mod idempotency;
pub mod insights;
pub mod limits;
pub mod names;
pub mod pagination;
pub mod portal;
pub mod ratelimit;
pub mod request_id;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use server::App;
