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
    /// Operator tools for the secrets' key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the key-encryption keys and how many data keys each wraps.
    List(ServeArgs),
    /// Generate a new key, put it first (primary) in the key file, and re-wrap every data key to
    /// it. Running servers pick the new key up from the file; afterwards the old key can go.
    Rotate(ServeArgs),
    /// Re-wrap every data key to the current primary key (after adding a key by hand).
    Rewrap(ServeArgs),
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
            Command::Keys(command) => keys(command).await,
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
    let store = match Store::connect(&config.database, &PoolSettings::one_connection(&config)).await
    {
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
    let store = match Store::connect(&config.database, &PoolSettings::one_connection(&config)).await
    {
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

async fn keys(command: KeysCommand) -> ExitCode {
    let (args, verb) = match command {
        KeysCommand::List(args) => (args, "list"),
        KeysCommand::Rotate(args) => (args, "rotate"),
        KeysCommand::Rewrap(args) => (args, "rewrap"),
    };
    let config = match args.resolve() {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    telemetry::init(config.log_format, "warn");
    let store = match Store::connect(&config.database, &PoolSettings::one_connection(&config)).await
    {
        Ok(store) => store,
        Err(err) => return fail(err),
    };
    if let Err(err) = store.migrate().await {
        return fail(err);
    }
    let result = keys_run(&store, &config, verb).await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

async fn keys_run(store: &Store, config: &crate::config::Config, verb: &str) -> Result<(), String> {
    use crate::secrets::{self, Keyring, keyring};
    let ring = Keyring::load(config.keys.clone()).map_err(|e| e.to_string())?;
    if verb == "rotate" {
        if ring.primary_is_explicit() {
            return Err(
                "the primary key is set with --secret-primary-key: add the new key to the key \
                 file, make it primary, then run `platformd keys rewrap`"
                    .into(),
            );
        }
        let Some(path) = ring.key_file() else {
            return Err(format!(
                "the keys come from {} only: add a new key there first (first entry = primary), \
                 then run `platformd keys rewrap`",
                keyring::KEYS_ENV
            ));
        };
        let old = std::fs::read_to_string(&path)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (id, line) = keyring::new_key_entry("key");
        // The new key goes first: it becomes the primary for every server reading this file.
        let contents = zeroize::Zeroizing::new(format!("{}\n{}", line.as_str(), old.as_str()));
        keyring::write_key_file(&path, &contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        ring.reload().map_err(|e| e.to_string())?;
        println!(
            "added key-encryption key {id} to {} as the primary key",
            path.display()
        );
    }
    if verb == "rotate" || verb == "rewrap" {
        let target = ring.primary_id();
        let mut total = 0;
        loop {
            let (done, remaining) = secrets::data_keys_rewrap(store, &ring, &target, 1000)
                .await
                .map_err(|e| e.to_string())?;
            total += done;
            if remaining == 0 {
                break;
            }
            if done == 0 {
                return Err(format!(
                    "{remaining} data keys could not be re-wrapped (another process changed them?); run again"
                ));
            }
        }
        let audit = crate::audit::AuditLog::new(store.clone());
        let ctx = crate::context::CallContext::system(
            &format!("platformd:keys-{verb}"),
            "secrets.keys.rewrap",
            None,
            &format!("keyEncryptionKeys/{target}"),
        );
        let record = crate::audit::AuditRecord::of_call(
            &ctx,
            crate::audit::Outcome::Allowed,
            tonic::Code::Ok,
            &["key_encryption_key_id"],
        );
        audit.append_now(&record).await.map_err(|e| e.to_string())?;
        println!("re-wrapped {total} data keys to {target}; every data key is now wrapped by it");
    }
    let counts = secrets::data_key_counts(store)
        .await
        .map_err(|e| e.to_string())?;
    for key in ring.keys() {
        println!(
            "{}\t{}\t{:?}\t{} data keys",
            key.id,
            if key.primary {
                "primary"
            } else {
                "decrypt-only"
            },
            key.source,
            counts.get(&key.id).copied().unwrap_or_default()
        );
    }
    for (id, n) in counts.iter().filter(|(id, _)| !ring.holds(id)) {
        println!("{id}\tMISSING\t-\t{n} data keys");
    }
    Ok(())
}
