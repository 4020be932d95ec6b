//! The nouns and verbs of platformctl, each a thin layer over one or two RPCs through the SDK.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use futures::{StreamExt, TryStreamExt};
use platform_sdk::{Client, audit, catalog, deployments, environments, iam, secrets};

use crate::config::{self, FileConfig, Settings};
use crate::output::{Column, Printer};
use crate::{Cli, CliError};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Save the server address, token and tenant for later commands (checks the token first).
    Login {
        /// The token (the bootstrap token, a service account's, or one `platformd token issue`
        /// printed). Read from standard input when absent.
        #[arg(long = "with-token", visible_alias = "token-value")]
        token_value: Option<String>,
    },
    /// Who the token belongs to.
    Whoami,
    /// Print the web portal's address with your token (and tenant) in its fragment, which the
    /// browser keeps to itself: open it to be signed in. Treat it like the token.
    Portal,
    /// Tenants.
    #[command(subcommand)]
    Tenants(Tenants),
    /// Role bindings: who holds which role in the tenant.
    #[command(subcommand, visible_alias = "members")]
    RoleBindings(RoleBindings),
    /// The software catalog.
    #[command(subcommand)]
    Catalog(Catalog),
    /// Environments.
    #[command(subcommand, visible_alias = "env")]
    Environments(Environments),
    /// Deploy VERSION of COMPONENT to an environment.
    Deploy {
        component: String,
        /// The artifact: an image tag, a git SHA, a package version.
        #[arg(id = "artifact_version", value_name = "VERSION")]
        version: String,
        /// The environment id.
        #[arg(long)]
        env: String,
        /// Why (shown in the deployment and the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        /// The commit the version was built from.
        #[arg(long, default_value = "")]
        commit: String,
        /// Follow the deployment, its state and its log, until it ends; exit 0 only if it
        /// SUCCEEDED.
        #[arg(long)]
        wait: bool,
    },
    /// Deployments.
    #[command(subcommand)]
    Deployments(Deployments),
    /// Roll back: deploy again the version that last succeeded before DEPLOYMENT.
    Rollback {
        deployment: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        wait: bool,
    },
    /// Promote DEPLOYMENT's version to the next environment of the promotion order.
    Promote {
        deployment: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        wait: bool,
    },
    /// Secrets.
    #[command(subcommand)]
    Secrets(Secrets),
    /// The audit trail.
    #[command(subcommand)]
    Audit(Audit),
    /// Whether the caller holds PERMISSION on RESOURCE (exit 0 yes, 1 no).
    CanI {
        /// e.g. `deployments.deployments.create`.
        permission: String,
        /// A resource name, e.g. `tenants/acme/environments/prod`; default the tenant.
        resource: Option<String>,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum Tenants {
    Create {
        id: String,
        #[arg(long, default_value = "")]
        display_name: String,
    },
    List,
    Get {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleBindings {
    /// Bind PRINCIPAL (`user:alice`, `group:…`, `serviceAccount:…`) to ROLE (`developer` or a role
    /// name) in the tenant.
    Create {
        id: String,
        #[arg(long)]
        principal: String,
        #[arg(long)]
        role: String,
    },
    List,
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Catalog {
    /// Import Backstage descriptor files (`-f` a file or a folder, searched for .yaml/.yml).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// Check everything, store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// One entity by reference (`payments`, `api:orders`, `component:default/payments`).
    Get { entity: String },
    /// Entities, optionally filtered (`kind = "Component" AND spec.lifecycle = "production"`).
    List {
        #[arg(long, default_value = "")]
        filter: String,
        /// Free-text search.
        #[arg(long, default_value = "")]
        query: String,
    },
    /// The relations around an entity.
    Graph {
        entity: String,
        #[arg(long, default_value_t = 2)]
        depth: i32,
    },
}

#[derive(Debug, Subcommand)]
pub enum Environments {
    /// Create an environment with a driver: `noop`, or `command` running `--deploy-command`.
    Create {
        id: String,
        /// development, staging, production or preview.
        #[arg(long = "type")]
        kind: String,
        #[arg(long, default_value = "noop")]
        driver: String,
        /// For the command driver: the program and its arguments, run for each deployment.
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        deploy_command: Vec<String>,
        /// The next environment in the promotion order.
        #[arg(long, default_value = "")]
        promotes_to: String,
    },
    List,
    Get {
        id: String,
    },
    /// Freeze deployments to the environment.
    Lock {
        id: String,
        #[arg(long)]
        reason: String,
    },
    Unlock {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Deployments {
    List {
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    Get {
        deployment: String,
    },
    /// The whole log of a deployment.
    Log {
        deployment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Secrets {
    /// Store a new version of secret NAME (created if missing), read from standard input or
    /// `--from-file`; never from an argument.
    Set {
        name: String,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Recent events, newest first.
    List {
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Follow events as they are recorded (Ctrl-C to stop).
    Tail {
        #[arg(long, default_value = "")]
        filter: String,
    },
    /// Check the tenant's hash chain end to end (exit 1 if broken).
    Verify,
}

const TENANT_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("display name", "displayName"),
    ("state", "state"),
];
const BINDING_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("principal", "principal"),
    ("role", "role"),
    ("resource", "resource"),
];
const ENTITY_COLUMNS: &[Column] = &[
    ("kind", "kind"),
    ("name", "metadata.name"),
    ("owner", "componentSpec.owner"),
    ("lifecycle", "componentSpec.lifecycle"),
    ("title", "metadata.title"),
];
const ENVIRONMENT_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("type", "type"),
    ("state", "state"),
    ("locked by", "lock.lockedBy"),
    ("promotes to", "promotesTo"),
];
const DEPLOYMENT_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("component", "component"),
    ("version", "version"),
    ("environment", "environment"),
    ("state", "state"),
];
const SECRET_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("latest", "latestVersionNumber"),
    ("updated", "updateTime"),
];
const EVENT_COLUMNS: &[Column] = &[
    ("seq", "sequence"),
    ("time", "eventTime"),
    ("actor", "actor"),
    ("method", "method"),
    ("outcome", "outcome"),
    ("resource", "resource"),
];

/// Who the client's token belongs to.
async fn caller_of(client: &Client) -> Result<iam::GetCallerResponse, CliError> {
    let request = iam::GetCallerRequest::default();
    Ok(client
        .call(Client::iam, request, |mut c, r| async move {
            c.get_caller(r).await
        })
        .await?)
}

async fn connect(settings: &Settings) -> Result<Client, CliError> {
    Ok(Client::connect(&settings.addr, settings.token.as_deref()).await?)
}

/// `name`, or `tenants/{t}/{collection}/{name}` when `name` is a bare id.
fn child(tenant: &str, collection: &str, name: &str) -> String {
    if name.starts_with("tenants/") {
        name.to_owned()
    } else {
        format!("{tenant}/{collection}/{name}")
    }
}

/// The portal's address on `addr` (the API's own port), signed in through the fragment.
fn portal_url(addr: &str, token: &str, tenant: Option<&str>) -> String {
    let base = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", addr.trim_end_matches('/'))
    };
    let tenant = tenant
        .map(|t| format!("&tenant={}", t.trim_start_matches("tenants/")))
        .unwrap_or_default();
    format!("{base}/#token={token}{tenant}")
}

/// An entity reference as a resource name (`payments` → `…/entities/component/default/payments`).
fn entity_name(tenant: &str, reference: &str) -> String {
    if reference.starts_with("tenants/") {
        return reference.to_owned();
    }
    let (kind, rest) = match reference.split_once(':') {
        Some((kind, rest)) if !rest.contains(':') => (kind.to_ascii_lowercase(), rest),
        _ => ("component".to_owned(), reference),
    };
    let (namespace, name) = rest.split_once('/').unwrap_or(("default", rest));
    format!(
        "{tenant}/entities/{kind}/{}/{name}",
        namespace.to_ascii_lowercase()
    )
}

pub async fn run(cli: Cli, out: Printer) -> Result<(), CliError> {
    let settings = Settings::resolve(cli.addr, cli.token, cli.tenant)?;
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "platformctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Login { token_value } => login(settings, token_value).await,
        Command::Whoami => {
            let client = connect(&settings).await?;
            let caller = caller_of(&client).await?;
            out.one(
                &caller,
                &[
                    ("principal", "principal"),
                    ("platform admin", "platformAdmin"),
                ],
            )
        }
        Command::Portal => {
            let token = settings.token.as_deref().ok_or_else(|| {
                CliError::usage("no token: run `platformctl login` or set PLATFORM_TOKEN")
            })?;
            println!(
                "{}",
                portal_url(&settings.addr, token, settings.tenant.as_deref())
            );
            eprintln!("open it in a browser; it holds your token, so do not share it");
            Ok(())
        }
        Command::Tenants(c) => tenants(settings, out, c).await,
        Command::RoleBindings(c) => role_bindings(settings, out, c).await,
        Command::Catalog(c) => catalog_cmd(settings, out, c).await,
        Command::Environments(c) => environments_cmd(settings, out, c).await,
        Command::Deploy {
            component,
            version,
            env,
            reason,
            commit,
            wait,
        } => {
            let tenant = settings.tenant_name()?;
            let client = connect(&settings).await?;
            let request = deployments::CreateDeploymentRequest {
                parent: tenant.clone(),
                deployment: Some(deployments::Deployment {
                    component,
                    version,
                    environment: child(&tenant, "environments", &env),
                    commit_sha: commit,
                    reason,
                    ..Default::default()
                }),
                // A retry of this request (after a dropped connection) returns the first
                // deployment instead of creating a second.
                request_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            };
            let created = client
                .call(Client::deployments, request, |mut c, r| async move {
                    c.create_deployment(r).await
                })
                .await?;
            finish_deployment(&client, out, created, wait).await
        }
        Command::Deployments(c) => deployments_cmd(settings, out, c).await,
        Command::Rollback {
            deployment,
            reason,
            wait,
        } => redeploy(settings, out, Redeploy::Rollback, &deployment, reason, wait).await,
        Command::Promote {
            deployment,
            reason,
            wait,
        } => redeploy(settings, out, Redeploy::Promote, &deployment, reason, wait).await,
        Command::Secrets(c) => secrets_cmd(settings, out, c).await,
        Command::Audit(c) => audit_cmd(settings, out, c).await,
        Command::CanI {
            permission,
            resource,
        } => {
            let tenant = settings.tenant_name()?;
            let client = connect(&settings).await?;
            let resource = resource.unwrap_or(tenant);
            let request = iam::TestPermissionsRequest {
                resource: resource.clone(),
                permissions: vec![permission.clone()],
            };
            let granted = client
                .call(Client::iam, request, |mut c, r| async move {
                    c.test_permissions(r).await
                })
                .await?;
            if granted.permissions.contains(&permission) {
                println!("yes");
                Ok(())
            } else {
                println!("no");
                Err(CliError {
                    code: 1,
                    message: format!("{permission} is not granted on {resource}"),
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Redeploy {
    Rollback,
    Promote,
}

/// A deployment made from another one: a rollback or a promotion, then [`finish_deployment`].
async fn redeploy(
    settings: Settings,
    out: Printer,
    kind: Redeploy,
    deployment: &str,
    reason: String,
    wait: bool,
) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    let name = child(&tenant, "deployments", deployment);
    // A retry (after a dropped connection) returns the first deployment, never a second.
    let request_id = uuid::Uuid::new_v4().to_string();
    let created = match kind {
        Redeploy::Rollback => {
            let request = deployments::RollbackDeploymentRequest {
                name,
                reason,
                request_id,
                ..Default::default()
            };
            client
                .call(Client::deployments, request, |mut c, r| async move {
                    c.rollback_deployment(r).await
                })
                .await?
        }
        Redeploy::Promote => {
            let request = deployments::PromoteDeploymentRequest {
                name,
                reason,
                request_id,
                ..Default::default()
            };
            client
                .call(Client::deployments, request, |mut c, r| async move {
                    c.promote_deployment(r).await
                })
                .await?
        }
    };
    finish_deployment(&client, out, created, wait).await
}

async fn login(settings: Settings, token_value: Option<String>) -> Result<(), CliError> {
    let token = match token_value.or(settings.token.clone()) {
        Some(t) => t,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::usage(format!("cannot read the token from stdin: {e}")))?;
            text
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::usage(
            "no token: pass --with-token or pipe it on stdin",
        ));
    }
    let client = Client::connect(&settings.addr, Some(&token)).await?;
    let caller = caller_of(&client).await?;
    let path = config::save(&FileConfig {
        addr: Some(settings.addr.clone()),
        token: Some(token),
        tenant: settings.tenant.clone(),
    })?;
    eprintln!(
        "logged in to {} as {}; settings saved in {}",
        settings.addr,
        caller.principal,
        path.display()
    );
    Ok(())
}

async fn tenants(settings: Settings, out: Printer, command: Tenants) -> Result<(), CliError> {
    let client = connect(&settings).await?;
    match command {
        Tenants::Create { id, display_name } => {
            let tenant = client
                .iam()
                .create_tenant(iam::CreateTenantRequest {
                    tenant_id: id,
                    tenant: Some(iam::Tenant {
                        display_name,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(&tenant, TENANT_COLUMNS)
        }
        Tenants::List => {
            let tenants: Vec<iam::Tenant> = client
                .list(iam::ListTenantsRequest::default())
                .try_collect()
                .await?;
            out.list(&tenants, TENANT_COLUMNS)
        }
        Tenants::Get { id } => {
            let name = if id.starts_with("tenants/") {
                id
            } else {
                format!("tenants/{id}")
            };
            let tenant = client
                .call(
                    Client::iam,
                    iam::GetTenantRequest { name },
                    |mut c, r| async move { c.get_tenant(r).await },
                )
                .await?;
            out.one(&tenant, TENANT_COLUMNS)
        }
    }
}

async fn role_bindings(
    settings: Settings,
    out: Printer,
    command: RoleBindings,
) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    match command {
        RoleBindings::Create {
            id,
            principal,
            role,
        } => {
            let binding = client
                .iam()
                .create_role_binding(iam::CreateRoleBindingRequest {
                    parent: tenant.clone(),
                    role_binding_id: id,
                    role_binding: Some(iam::RoleBinding {
                        principal,
                        role: child(&tenant, "roles", &role),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(&binding, BINDING_COLUMNS)
        }
        RoleBindings::List => {
            let bindings: Vec<iam::RoleBinding> = client
                .list(iam::ListRoleBindingsRequest {
                    parent: tenant,
                    ..Default::default()
                })
                .try_collect()
                .await?;
            out.list(&bindings, BINDING_COLUMNS)
        }
        RoleBindings::Delete { id } => {
            client
                .iam()
                .delete_role_binding(iam::DeleteRoleBindingRequest {
                    name: child(&tenant, "roleBindings", &id),
                    ..Default::default()
                })
                .await?;
            eprintln!("deleted");
            Ok(())
        }
    }
}

/// The descriptor files under `path`: the file itself, or every .yaml/.yml below a folder (sorted,
/// so imports are reproducible).
fn descriptor_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            descriptor_files(&entry, out)?;
        } else if entry.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(entry);
        }
    }
    Ok(())
}

async fn catalog_cmd(settings: Settings, out: Printer, command: Catalog) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    match command {
        Catalog::Apply { paths, dry_run } => {
            let mut files = Vec::new();
            for path in &paths {
                descriptor_files(path, &mut files)?;
            }
            if files.is_empty() {
                return Err(CliError::usage("no .yaml or .yml files found"));
            }
            let mut sources = Vec::new();
            for file in &files {
                let content = std::fs::read_to_string(file)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
                sources.push(catalog::ImportSource {
                    path: file.display().to_string(),
                    content,
                });
            }
            let request = catalog::ImportEntitiesRequest {
                parent: tenant,
                sources,
                validate_only: dry_run,
                request_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            };
            let result = client
                .call(Client::catalog, request, |mut c, r| async move {
                    c.import_entities(r).await
                })
                .await?;
            for r in &result.results {
                for issue in r.errors.iter().chain(&r.warnings) {
                    let source = files
                        .get(r.source_index as usize)
                        .map(|f| f.display().to_string())
                        .unwrap_or_default();
                    eprintln!(
                        "{source}:{}: {} {}: {}",
                        r.line,
                        if r.errors.contains(issue) {
                            "error"
                        } else {
                            "warning"
                        },
                        issue.field,
                        issue.message
                    );
                }
            }
            out.one(
                &result,
                &[
                    ("created", "createdCount"),
                    ("updated", "updatedCount"),
                    ("unchanged", "unchangedCount"),
                    ("failed", "failedCount"),
                    ("warnings", "warningCount"),
                ],
            )?;
            if result.failed_count > 0 {
                return Err(CliError::refused(format!(
                    "{} document(s) could not be imported",
                    result.failed_count
                )));
            }
            Ok(())
        }
        Catalog::Get { entity } => {
            let name = entity_name(&tenant, &entity);
            let request = catalog::GetEntityRequest {
                name,
                ..Default::default()
            };
            let entity = client
                .call(Client::catalog, request, |mut c, r| async move {
                    c.get_entity(r).await
                })
                .await?;
            out.one(&entity, ENTITY_COLUMNS)
        }
        Catalog::List { filter, query } => {
            let entities: Vec<catalog::Entity> = client
                .list(catalog::ListEntitiesRequest {
                    parent: tenant,
                    filter,
                    query,
                    page_size: 500,
                    ..Default::default()
                })
                .try_collect()
                .await?;
            out.list(&entities, ENTITY_COLUMNS)
        }
        Catalog::Graph { entity, depth } => {
            let root = entity_name(&tenant, &entity);
            let request = catalog::TraverseEntityGraphRequest {
                parent: tenant,
                roots: vec![root],
                // Every relation type: the whole neighbourhood.
                relation_types: (1..=14).collect(),
                direction: catalog::TraversalDirection::Both as i32,
                max_depth: depth,
                ..Default::default()
            };
            let graph = client
                .call(Client::catalog, request, |mut c, r| async move {
                    c.traverse_entity_graph(r).await
                })
                .await?;
            if out.format == crate::output::Format::Table {
                let edges: Vec<serde_json::Value> = crate::output::json_of(&graph)
                    .get("edges")
                    .and_then(|e| e.as_array().cloned())
                    .unwrap_or_default();
                print!(
                    "{}",
                    crate::output::table(
                        &edges,
                        &[
                            ("source", "sourceRef"),
                            ("relation", "type"),
                            ("target", "targetRef")
                        ]
                    )
                );
                Ok(())
            } else {
                out.one(&graph, &[])
            }
        }
    }
}

fn environment_type(text: &str) -> Result<environments::EnvironmentType, CliError> {
    use environments::EnvironmentType as T;
    Ok(match text.to_ascii_lowercase().as_str() {
        "development" | "dev" => T::Development,
        "staging" => T::Staging,
        "production" | "prod" => T::Production,
        "preview" => T::Preview,
        other => {
            return Err(CliError::usage(format!(
                "unknown environment type `{other}` (development, staging, production, preview)"
            )));
        }
    })
}

async fn environments_cmd(
    settings: Settings,
    out: Printer,
    command: Environments,
) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    let get = |id: String| {
        let client = client.clone();
        let name = child(&tenant, "environments", &id);
        async move {
            let request = environments::GetEnvironmentRequest { name };
            client
                .call(Client::environments, request, |mut c, r| async move {
                    c.get_environment(r).await
                })
                .await
        }
    };
    match command {
        Environments::Create {
            id,
            kind,
            driver,
            deploy_command,
            promotes_to,
        } => {
            let driver = match driver.as_str() {
                "noop" => environments::driver::Driver::Noop(environments::NoopDriver::default()),
                "command" => {
                    let Some((program, args)) = deploy_command.split_first() else {
                        return Err(CliError::usage(
                            "the command driver needs --deploy-command PROGRAM [ARGS…]",
                        ));
                    };
                    environments::driver::Driver::Command(environments::CommandDriver {
                        deploy: Some(environments::CommandStep {
                            program: program.clone(),
                            args: args.to_vec(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                }
                other => {
                    return Err(CliError::usage(format!(
                        "unknown driver `{other}` (noop, command)"
                    )));
                }
            };
            let environment = client
                .environments()
                .create_environment(environments::CreateEnvironmentRequest {
                    parent: tenant.clone(),
                    environment_id: id,
                    environment: Some(environments::Environment {
                        r#type: environment_type(&kind)? as i32,
                        driver: Some(environments::Driver {
                            driver: Some(driver),
                        }),
                        promotes_to: if promotes_to.is_empty() {
                            String::new()
                        } else {
                            child(&tenant, "environments", &promotes_to)
                        },
                        ..Default::default()
                    }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(&environment, ENVIRONMENT_COLUMNS)
        }
        Environments::List => {
            let list: Vec<environments::Environment> = client
                .list(environments::ListEnvironmentsRequest {
                    parent: tenant,
                    ..Default::default()
                })
                .try_collect()
                .await?;
            out.list(&list, ENVIRONMENT_COLUMNS)
        }
        Environments::Get { id } => out.one(&get(id).await?, ENVIRONMENT_COLUMNS),
        Environments::Lock { id, reason } => {
            let environment = client
                .environments()
                .lock_environment(environments::LockEnvironmentRequest {
                    name: child(&tenant, "environments", &id),
                    reason,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(&environment, ENVIRONMENT_COLUMNS)
        }
        Environments::Unlock { id } => {
            let environment = client
                .environments()
                .unlock_environment(environments::UnlockEnvironmentRequest {
                    name: child(&tenant, "environments", &id),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(&environment, ENVIRONMENT_COLUMNS)
        }
    }
}

/// Prints a created deployment; with `wait`, follows it to its end (state changes and log lines
/// on standard error as they happen) and fails unless it SUCCEEDED.
async fn finish_deployment(
    client: &Client,
    out: Printer,
    created: deployments::Deployment,
    wait: bool,
) -> Result<(), CliError> {
    if !wait {
        return out.one(&created, DEPLOYMENT_COLUMNS);
    }
    eprintln!(
        "{}: {} → {}",
        created.name, created.version, created.environment
    );
    let mut last_state = None;
    let mut stream = client
        .deployments()
        .watch_deployment(deployments::WatchDeploymentRequest {
            name: created.name.clone(),
            after_sequence: 0,
        })
        .await?
        .into_inner();
    let mut finished = None;
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(deployments::watch_deployment_response::Event::Deployment(d)) => {
                if last_state != Some(d.state) {
                    eprintln!(
                        "state {}",
                        d.state()
                            .as_str_name()
                            .trim_start_matches("DEPLOYMENT_STATE_")
                    );
                    last_state = Some(d.state);
                }
                if platform_sdk::is_finished(&d) {
                    finished = Some(d);
                    break;
                }
            }
            Some(deployments::watch_deployment_response::Event::LogLine(line)) => {
                eprintln!("  | {}", line.text);
            }
            None => {}
        }
    }
    // The stream may end without a final snapshot (e.g. the server restarted): ask.
    let done = match finished {
        Some(d) => d,
        None => {
            client
                .wait_for_deployment(&created.name, Duration::from_secs(3600))
                .await?
        }
    };
    out.one(&done, DEPLOYMENT_COLUMNS)?;
    if done.state() == deployments::DeploymentState::Succeeded {
        Ok(())
    } else {
        Err(CliError {
            code: 6,
            message: format!(
                "{} ended {}{}",
                done.name,
                done.state()
                    .as_str_name()
                    .trim_start_matches("DEPLOYMENT_STATE_"),
                if done.state_message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", done.state_message)
                }
            ),
        })
    }
}

async fn deployments_cmd(
    settings: Settings,
    out: Printer,
    command: Deployments,
) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    match command {
        Deployments::List { filter, limit } => {
            let list: Vec<deployments::Deployment> = client
                .list(deployments::ListDeploymentsRequest {
                    parent: tenant,
                    filter,
                    page_size: limit.min(1000) as i32,
                    ..Default::default()
                })
                .take(limit)
                .try_collect()
                .await?;
            out.list(&list, DEPLOYMENT_COLUMNS)
        }
        Deployments::Get { deployment } => {
            let name = child(&tenant, "deployments", &deployment);
            let request = deployments::GetDeploymentRequest { name };
            let d = client
                .call(Client::deployments, request, |mut c, r| async move {
                    c.get_deployment(r).await
                })
                .await?;
            out.one(&d, DEPLOYMENT_COLUMNS)
        }
        Deployments::Log { deployment } => {
            let name = child(&tenant, "deployments", &deployment);
            let lines: Vec<deployments::LogLine> = client
                .list(deployments::GetDeploymentLogRequest {
                    name,
                    ..Default::default()
                })
                .try_collect()
                .await?;
            if out.format == crate::output::Format::Table {
                for line in &lines {
                    println!("{}", line.text);
                }
                Ok(())
            } else {
                out.list(&lines, &[])
            }
        }
    }
}

async fn secrets_cmd(settings: Settings, out: Printer, command: Secrets) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    match command {
        Secrets::Set { name, from_file } => {
            let mut value = Vec::new();
            match &from_file {
                Some(path) => {
                    value = std::fs::read(path).map_err(|e| {
                        CliError::usage(format!("cannot read {}: {e}", path.display()))
                    })?;
                }
                None => {
                    std::io::stdin()
                        .read_to_end(&mut value)
                        .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
                }
            }
            let secret = child(&tenant, "secrets", &name);
            let id = secret.rsplit('/').next().unwrap_or_default().to_owned();
            match client
                .secrets()
                .create_secret(secrets::CreateSecretRequest {
                    parent: tenant.clone(),
                    secret_id: id,
                    secret: Some(secrets::Secret::default()),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(s.into()),
            }
            let version = client
                .secrets()
                .add_secret_version(secrets::AddSecretVersionRequest {
                    parent: secret,
                    payload: Some(secrets::SecretPayload {
                        data: value,
                        data_crc32c: None,
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.one(
                &version,
                &[
                    ("version", "name"),
                    ("state", "state"),
                    ("size", "sizeBytes"),
                ],
            )
        }
        Secrets::List => {
            let list: Vec<secrets::Secret> = client
                .list(secrets::ListSecretsRequest {
                    parent: tenant,
                    ..Default::default()
                })
                .try_collect()
                .await?;
            out.list(&list, SECRET_COLUMNS)
        }
    }
}

async fn audit_cmd(settings: Settings, out: Printer, command: Audit) -> Result<(), CliError> {
    let tenant = settings.tenant_name()?;
    let client = connect(&settings).await?;
    match command {
        Audit::List { filter, limit } => {
            let events: Vec<audit::AuditEvent> = client
                .list(audit::ListAuditEventsRequest {
                    parent: tenant,
                    filter,
                    page_size: limit.min(1000) as i32,
                    ..Default::default()
                })
                .take(limit)
                .try_collect()
                .await?;
            out.list(&events, EVENT_COLUMNS)
        }
        Audit::Tail { filter } => {
            let mut stream = client
                .audit()
                .watch_audit_events(audit::WatchAuditEventsRequest {
                    parent: tenant,
                    filter,
                    after_sequence: None,
                })
                .await?
                .into_inner();
            while let Some(event) = stream.next().await {
                if let Some(audit::watch_audit_events_response::Kind::AuditEvent(e)) = event?.kind {
                    match out.format {
                        crate::output::Format::Table => print!(
                            "{}",
                            crate::output::table(&[crate::output::json_of(&e)], EVENT_COLUMNS)
                                .lines()
                                .nth(1)
                                .map(|l| format!("{l}\n"))
                                .unwrap_or_default()
                        ),
                        crate::output::Format::Json => {
                            println!("{}", crate::output::json_of(&e));
                        }
                        crate::output::Format::Yaml => {
                            print!("---\n{}", crate::output::yaml(&crate::output::json_of(&e)));
                        }
                    }
                }
            }
            Ok(())
        }
        Audit::Verify => {
            let request = audit::VerifyAuditChainRequest {
                tenant,
                ..Default::default()
            };
            let result = client
                .call(Client::audit, request, |mut c, r| async move {
                    c.verify_audit_chain(r).await
                })
                .await?;
            out.one(
                &result,
                &[
                    ("ok", "ok"),
                    ("verified", "verifiedCount"),
                    ("head", "headSequence"),
                ],
            )?;
            if result.ok {
                Ok(())
            } else {
                Err(CliError::refused("the audit chain is broken"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_portal_address_carries_the_token_in_its_fragment() {
        assert_eq!(
            portal_url("http://127.0.0.1:50051/", "t.k.n", Some("tenants/acme")),
            "http://127.0.0.1:50051/#token=t.k.n&tenant=acme"
        );
        assert_eq!(
            portal_url("10.0.0.1:443", "t", None),
            "http://10.0.0.1:443/#token=t"
        );
    }

    #[test]
    fn references_become_resource_names() {
        let t = "tenants/acme";
        assert_eq!(
            entity_name(t, "payments"),
            "tenants/acme/entities/component/default/payments"
        );
        assert_eq!(
            entity_name(t, "API:shop/orders"),
            "tenants/acme/entities/api/shop/orders"
        );
        assert_eq!(
            entity_name(t, "tenants/acme/entities/group/default/team-a"),
            "tenants/acme/entities/group/default/team-a"
        );
        assert_eq!(
            child(t, "environments", "prod"),
            "tenants/acme/environments/prod"
        );
        assert_eq!(
            child(t, "deployments", "tenants/acme/deployments/1"),
            "tenants/acme/deployments/1"
        );
    }
}
