//! platformd: the platform API server, as a library so that tests and tools can start the
//! real server in-process; `main.rs` is only the command line around it.
//!
//! Shared plumbing lives beside the services: `config`, `error`, `store`, `request_id`,
//! `limits`, `telemetry`, `contract`, and `server`, which assembles them.

pub mod cli;
pub mod config;
pub mod contract;
pub mod error;
pub mod limits;
pub mod request_id;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use server::App;
