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
    /// Operator tools for tokens, run on the server's data dir and database.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a token signed with the server's key, offline, and print it to standard output.
    Issue(TokenIssueArgs),
}

#[derive(Debug, clap::Args)]
struct TokenIssueArgs {
    /// The token's subject; it acts as `user:SUBJECT`.
    #[arg(long)]
    subject: String,
    /// The tenant the role applies in (required with a tenant role).
    #[arg(long)]
    tenant: Option<String>,
    /// A built-in role the token carries: viewer, developer, deployer, secret-admin, admin
    /// (with --tenant), or platform-admin (without).
    #[arg(long)]
    role: Option<String>,
    /// Lifetime, e.g. 30m, 12h, 7d [default: 24h].
    #[arg(long, default_value = "24h")]
    ttl: String,
    #[command(flatten)]
    server: ServeArgs,
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
            Command::Token(TokenCommand::Issue(args)) => token_issue(args).await,
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

/// Parses `90s`, `30m`, `12h`, `7d` (or plain seconds).
fn parse_ttl(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

async fn token_issue(args: TokenIssueArgs) -> ExitCode {
    let config = match args.server.resolve() {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    telemetry::init(config.log_format, "warn");
    if args.subject.is_empty()
        || args.subject.len() > 256
        || !args.subject.bytes().all(|b| b.is_ascii_graphic())
    {
        return fail("--subject must be 1-256 printable characters without spaces");
    }
    let Some(ttl) = parse_ttl(&args.ttl).filter(|t| t.as_secs() <= 365 * 86_400) else {
        return fail("--ttl must be like 30m, 12h or 7d, at most 365d");
    };
    if let Some(tenant) = &args.tenant
        && !crate::names::is_dns_label(tenant)
    {
        return fail("--tenant must be a tenant id (a lowercase DNS label)");
    }
    let roles: Vec<String> = args.role.clone().into_iter().collect();
    match (args.role.as_deref(), &args.tenant) {
        (Some("platform-admin"), Some(_)) => {
            return fail("platform-admin spans all tenants; leave out --tenant");
        }
        (Some("platform-admin"), None) | (None, _) => {}
        (Some(role), Some(_))
            if ["viewer", "developer", "deployer", "secret-admin", "admin"].contains(&role) => {}
        (Some(role), Some(_)) => return fail(format!("unknown built-in role `{role}`")),
        (Some(_), None) => return fail("a tenant role needs --tenant"),
    }
    let settings = PoolSettings {
        max_connections: Some(1),
        acquire_timeout: config.db_acquire_timeout,
    };
    let store = match Store::connect(&config.database, &settings).await {
        Ok(store) => store,
        Err(err) => return fail(err),
    };
    if let Err(err) = store.migrate().await {
        return fail(err);
    }
    let key = match crate::auth::SigningKey::load_or_create(&config.data_dir) {
        Ok(key) => key,
        Err(err) => return fail(err),
    };
    let authenticator = match crate::auth::Authenticator::new(config.auth.clone(), key) {
        Ok(a) => a,
        Err(err) => return fail(err),
    };
    let (token, claims) =
        match authenticator.issue(&args.subject, args.tenant.as_deref(), &roles, ttl, None) {
            Ok(issued) => issued,
            Err(err) => return fail(err),
        };
    // Recorded like every token platformd signs, so RevokeToken can find it, and audited.
    let jti = claims.jti.clone().unwrap_or_default();
    let recorded = async {
        let mut tx = store.write_tx().await?;
        sqlx::query(
            "INSERT INTO iam_tokens (jti, tenant, service_account, subject, display_name, issuer, issue_time_us, expire_time_us, revoke_time_us, revoke_reason) \
             VALUES ($1, $2, '', $3, 'issued offline with platformd token issue', $4, $5, $6, NULL, '')",
        )
        .bind(&jti)
        .bind(args.tenant.clone().unwrap_or_default())
        .bind(format!("user:{}", args.subject))
        .bind(crate::context::SYSTEM_PRINCIPAL)
        .bind(crate::store::now_micros())
        .bind(i64::try_from(claims.exp).unwrap_or(i64::MAX / 1_000_000).saturating_mul(1_000_000))
        .execute(&mut *tx)
        .await?;
        let audit = crate::audit::AuditLog::new(store.clone());
        let ctx = crate::context::CallContext::system("platformd:token-issue", "iam.tokens.issue", None, &format!("user:{}", args.subject));
        let record = crate::audit::AuditRecord::of_call(&ctx, crate::audit::Outcome::Allowed, tonic::Code::Ok, &["token"]);
        audit.append(&mut tx, &record).await?;
        tx.commit().await?;
        Ok::<(), crate::error::Error>(())
    }
    .await;
    store.close().await;
    if let Err(err) = recorded {
        return fail(format!("could not record the token: {err}"));
    }
    println!("{token}");
    ExitCode::SUCCESS
}
