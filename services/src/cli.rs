//! The `platformd` command line: `serve` runs the server, `migrate` brings a database's schema
//! up to date and exits. Start-up problems print one line naming the problem and exit with code
//! 2; they never panic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;
use crate::server::{App, shutdown_signal};
use crate::store::{PoolSettings, Store};
use crate::telemetry;

/// Exit code for a configuration or start-up problem the operator must fix.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "platformd", version, about = "The platform API server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (migrating the database first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(ServeArgs),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("platformd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
        }
    })
}

fn fail(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("platformd: {err}");
    ExitCode::from(EXIT_CONFIG)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    telemetry::init(config.log_format, &config.log_level);
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => return fail(err),
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    telemetry::init(config.log_format, &config.log_level);
    if let crate::config::DatabaseUrl::Sqlite(path) = &config.database
        && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(err) = std::fs::create_dir_all(parent)
    {
        return fail(format!("cannot create {}: {err}", parent.display()));
    }
    let settings = PoolSettings {
        max_connections: Some(1),
        acquire_timeout: config.db_acquire_timeout,
    };
    let store = match Store::connect(&config.database, &settings).await {
        Ok(store) => store,
        Err(err) => return fail(err),
    };
    let result = store.migrate().await;
    store.close().await;
    match result {
        Ok(report) => {
            println!(
                "migrated {}: applied {:?}, schema version {:?}",
                store.describe(),
                report.applied,
                report.current
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(err),
    }
}
