//! Assembles and runs the server: the data directory, the store and its migrations, then the
//! tower stack every call goes through, in the order DESIGN.md gives:
//!
//! 1. request id and the call's tracing span (outermost, so every later log line has it);
//! 2. CORS and gRPC-Web translation, so browsers reach the same services on the same port;
//! 3. load shedding over a global concurrency limit (RESOURCE_EXHAUSTED when full), deadlines
//!    from `grpc-timeout` (tonic), and the request message size limit;
//! 4. the services: health, reflection (v1 and v1alpha), and the platform services; a call to
//!    a contract method that has no implementation yet answers UNIMPLEMENTED, naming it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::{info, warn};

use std::sync::Arc;

use platform_policy::PolicyEngine;

use crate::audit::{AuditLog, AuditService};
use crate::auth::{Authenticator, SigningKey};
use crate::authz::Gate;
use crate::config::{Config, ConfigError};
use crate::contract;
use crate::iam::{self, IamService};
use crate::limits::MessageSizeLimitLayer;
use crate::request_id::RequestIdLayer;
use crate::store::{OpenError, PoolSettings, Store};

/// Why the server could not start. Each is an operator's configuration problem: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("authorization policy: {0}")]
    Policy(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("secrets: {0}")]
    Secrets(String),
}

/// Why a running server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("server failed: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

/// A server that has opened its store and bound its port, ready to run.
pub struct App {
    config: Config,
    store: Store,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    routes: Routes,
    health: HealthReporter,
    authenticator: Arc<Authenticator>,
    gate: Gate,
    keyring: Arc<crate::secrets::Keyring>,
    /// The deployment engine, handed back at shutdown.
    engine: Arc<crate::deployments::engine::Engine>,
}

/// Where the first start writes the platform-admin credential.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-admin.token";
/// The subject of the bootstrap credential (`user:bootstrap-admin`).
pub const BOOTSTRAP_SUBJECT: &str = "bootstrap-admin";

impl App {
    /// Prepares the data directory, opens and migrates the store, and binds the listen address.
    pub async fn build(config: Config) -> Result<App, StartError> {
        prepare_data_dir(&config.data_dir)?;
        let store = Store::connect(&config.database, &PoolSettings::of(&config)).await?;
        let report = store.migrate().await?;
        store.start_checkpointer(Duration::from_millis(500));
        info!(
            database = %store.describe(),
            applied = ?report.applied,
            schema_version = ?report.current,
            "database ready"
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let signing_key = SigningKey::load_or_create(&config.data_dir)
            .map_err(|e| StartError::Auth(e.to_string()))?;
        let authenticator = Arc::new(
            Authenticator::new(config.auth.clone(), signing_key)
                .map_err(|e| StartError::Auth(e.to_string()))?,
        );
        let sync = Arc::new(iam::PolicySync::default());
        let (snapshot, revoked) = sync
            .load_initial(&store)
            .await
            .map_err(|e| StartError::Policy(e.to_string()))?;
        authenticator.set_revoked(revoked);
        let policy = Arc::new(
            PolicyEngine::new(snapshot)
                .await
                .map_err(|e| StartError::Policy(e.to_string()))?,
        );
        let audit = AuditLog::new(store.clone());
        let gate = Gate::new(
            authenticator.clone(),
            policy,
            audit.clone(),
            store.clone(),
            config.db_conflict_retries,
            config.rate_limit,
        )
        .map_err(StartError::Policy)?;
        bootstrap(&config, &store, &audit, &authenticator).await?;
        let keyring = Arc::new(
            crate::secrets::Keyring::load(config.keys.clone())
                .map_err(|e| StartError::Secrets(e.to_string()))?,
        );
        crate::secrets::keys_check_complete(&store, &keyring)
            .await
            .map_err(StartError::Secrets)?;

        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = routes(health_service)?;
        tokio::spawn(sync.clone().run(
            store.clone(),
            gate.policy().clone(),
            authenticator.clone(),
            Duration::from_secs(1),
        ));
        let iam = IamService::new(
            store.clone(),
            audit.clone(),
            gate.clone(),
            authenticator.clone(),
            sync,
        );
        let watch_access = crate::audit::WatchAccess {
            gate: gate.clone(),
            authenticator: authenticator.clone(),
            recheck: config.watch_recheck,
        };
        crate::catalog::index_backfill(&store)
            .await
            .map_err(|e| StartError::Catalog(format!("re-indexing stored entities: {e}")))?;
        tokio::spawn(crate::catalog::run_change_retention(store.clone()));
        crate::deployments::commit_time_backfill(&store)
            .await
            .map_err(|e| {
                StartError::Catalog(format!("back-filling deployment commit times: {e}"))
            })?;
        let catalog = crate::catalog::CatalogService::new(
            store.clone(),
            audit.clone(),
            Some(watch_access.clone()),
        );
        // The deployment engine: workers claim queued work from the database (see
        // deployments::engine); `work` wakes them when this process queues something.
        let work = Arc::new(tokio::sync::Notify::new());
        let engine = Arc::new(crate::deployments::engine::Engine::new(
            store.clone(),
            audit.clone(),
            config.engine.clone(),
            work.clone(),
            keyring.clone(),
        ));
        engine.start();
        let deployments = crate::deployments::DeploymentService::new(
            store.clone(),
            audit.clone(),
            gate.clone(),
            engine.clone(),
            work.clone(),
            Some(watch_access.clone()),
        );
        let environments = crate::environments::EnvironmentService::new(
            store.clone(),
            audit.clone(),
            gate.clone(),
            work.clone(),
            config.engine.clone(),
            Some(watch_access.clone()),
        );
        environments.start_reaper();
        let secrets =
            crate::secrets::SecretService::new(store.clone(), audit.clone(), keyring.clone());
        let audit_service = AuditService::new(store.clone(), audit.clone(), Some(watch_access));
        routes = routes
            .add_service(
                // The per-method limit is enforced by MessageSizeLimitLayer; tonic's own cap is
                // per service, so it is set to the largest any catalog method may receive.
                platform_api::platform::catalog::v1::catalog_service_server::CatalogServiceServer::new(catalog)
                    .max_decoding_message_size(config.max_message_bytes.max(crate::limits::BULK_MESSAGE_BYTES)),
            )
            .add_service(
                platform_api::platform::deployments::v1::deployment_service_server::DeploymentServiceServer::new(deployments)
                    .max_decoding_message_size(config.max_message_bytes),
            )
            .add_service(
                platform_api::platform::environments::v1::environment_service_server::EnvironmentServiceServer::new(environments)
                    .max_decoding_message_size(config.max_message_bytes),
            )
            .add_service(
                platform_api::platform::insights::v1::insights_service_server::InsightsServiceServer::new(
                    crate::insights::InsightsService::new(store.clone(), audit.clone()),
                )
                .max_decoding_message_size(config.max_message_bytes),
            )
            .add_service(
                platform_api::platform::secrets::v1::secret_service_server::SecretServiceServer::new(secrets)
                    .max_decoding_message_size(config.max_message_bytes),
            )
            .add_service(
                platform_api::platform::iam::v1::iam_service_server::IamServiceServer::new(iam)
                    .max_decoding_message_size(config.max_message_bytes),
            )
            .add_service(
                platform_api::platform::audit::v1::audit_service_server::AuditServiceServer::new(
                    audit_service,
                )
                .max_decoding_message_size(config.max_message_bytes),
            );
        Ok(App {
            config,
            store,
            listener,
            local_addr,
            routes,
            health,
            authenticator,
            gate,
            keyring,
            engine,
        })
    }

    /// The bound address (useful when the configured port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store, for tests that inspect what a call wrote.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authenticator, for tests and tools that issue tokens in-process.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// The authorization gate (and through it the policy engine).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives in-flight calls the grace
    /// period to finish, and closes the database.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let App {
            config,
            store,
            listener,
            local_addr,
            routes,
            health,
            authenticator,
            gate,
            keyring,
            engine,
        } = self;
        tokio::spawn(reload_on_sighup(authenticator, keyring));
        let layers = tower::ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(cors_layer(&config.cors_allowed_origins))
            // Before gRPC-Web, which refuses any other HTTP/1.1 request.
            .layer(crate::portal::PortalLayer)
            .layer(tonic_web::GrpcWebLayer::new())
            .load_shed()
            .concurrency_limit(config.max_concurrent_requests)
            .layer(MessageSizeLimitLayer::new(config.max_message_bytes))
            .layer(gate.clone())
            .into_inner();

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);

        set_serving(&health, ServingStatus::Serving).await;
        info!(%local_addr, "platformd serving (gRPC, gRPC-Web, reflection, health)");

        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                info!(drain = ?config.shutdown_drain, grace = ?config.shutdown_grace, "shutting down: new calls refused; waiting for in-flight calls");
                set_serving(&health, ServingStatus::NotServing).await;
                gate.start_draining();
                // Running deployments are handed back while the calls drain (both need the
                // database, which closes after them).
                let drained = async {
                    // Lame duck first: connections stay open and new calls get UNAVAILABLE, a
                    // clear answer, instead of a connection closed under a request in flight
                    // on the wire. Then the port closes and open connections get GOAWAY.
                    tokio::select! {
                        result = &mut server => return result,
                        () = tokio::time::sleep(config.shutdown_drain) => {}
                    }
                    let _ = stop_tx.send(());
                    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                        Ok(result) => result,
                        Err(_) => {
                            warn!("grace period over; calls still running are cut off");
                            Ok(())
                        }
                    }
                };
                let handed_back = async {
                    if tokio::time::timeout(config.shutdown_grace, engine.hand_back()).await.is_err() {
                        warn!("grace period over; deployment steps still running are left to their leases");
                    }
                };
                let (result, ()) = tokio::join!(drained, handed_back);
                result
            }
        };
        store.close().await;
        info!("platformd stopped");
        result.map_err(ServeError)
    }
}

/// On the first start on an empty database, creates the platform-admin credential: a token for
/// `user:bootstrap-admin` carrying the platform-admin role, written to
/// `<data-dir>/bootstrap-admin.token` (mode 0600). Only its path is logged, never the token.
/// Replicas race safely: the one whose transaction records the bootstrap first writes the file.
async fn bootstrap(
    config: &Config,
    store: &Store,
    audit: &AuditLog,
    authenticator: &Authenticator,
) -> Result<(), StartError> {
    let fail = |e: &dyn std::fmt::Display| StartError::Bootstrap(e.to_string());
    if store
        .meta_get("bootstrap_time")
        .await
        .map_err(|e| fail(&e))?
        .is_some()
    {
        return Ok(());
    }
    let ttl = Duration::from_secs(365 * 24 * 3600);
    let (token, claims) = authenticator
        .issue(
            BOOTSTRAP_SUBJECT,
            None,
            &["platform-admin".to_owned()],
            ttl,
            None,
        )
        .map_err(|e| fail(&e))?;
    let jti = claims.jti.clone().unwrap_or_default();
    let now = crate::store::now_micros();
    let mut tx = store.write_tx().await.map_err(|e| fail(&e))?;
    let stored = store
        .meta_put_if_absent(&mut tx, "bootstrap_time", &now.to_string())
        .await
        .map_err(|e| fail(&e))?;
    if stored != now.to_string() {
        return Ok(()); // another replica bootstrapped first
    }
    sqlx::query(
        "INSERT INTO iam_tokens (jti, tenant, service_account, subject, display_name, issuer, issue_time_us, expire_time_us, revoke_time_us, revoke_reason) \
         VALUES ($1, '', '', $2, 'bootstrap platform-admin credential', $3, $4, $5, NULL, '')",
    )
    .bind(&jti)
    .bind(format!("user:{BOOTSTRAP_SUBJECT}"))
    .bind(crate::context::SYSTEM_PRINCIPAL)
    .bind(now)
    .bind(i64::try_from(claims.exp).unwrap_or(i64::MAX / 1_000_000).saturating_mul(1_000_000))
    .execute(&mut *tx)
    .await
    .map_err(|e| fail(&e))?;
    let ctx =
        crate::context::CallContext::system("platformd:bootstrap", "iam.tokens.issue", None, "");
    let record = crate::audit::AuditRecord::of_call(
        &ctx,
        crate::audit::Outcome::Allowed,
        tonic::Code::Ok,
        &["bootstrap_admin_token"],
    );
    audit.append(&mut tx, &record).await.map_err(|e| fail(&e))?;
    let path = config.data_dir.join(BOOTSTRAP_TOKEN_FILE);
    write_secret_file(&path, token.as_bytes())
        .map_err(|e| fail(&format!("writing {}: {e}", path.display())))?;
    tx.commit().await.map_err(|e| fail(&e))?;
    info!(path = %path.display(), "first start: a platform-admin token was written to this file (mode 0600); it is not logged");
    Ok(())
}

/// Writes a file only its owner can read (0600), replacing an older one.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reloads the identity provider's keys and the secrets' key-encryption keys on SIGHUP.
async fn reload_on_sighup(
    authenticator: Arc<Authenticator>,
    keyring: Arc<crate::secrets::Keyring>,
) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!("cannot listen for SIGHUP; JWKS reloads need a restart");
            return;
        };
        while hangup.recv().await.is_some() {
            match authenticator.reload_jwks() {
                Ok(()) => info!("SIGHUP: identity provider keys reloaded"),
                Err(err) => {
                    warn!(error = %err, "SIGHUP: keeping the previous identity provider keys")
                }
            }
            match keyring.reload() {
                Ok(()) => info!("SIGHUP: secret key-encryption keys reloaded"),
                Err(err) => {
                    warn!(error = %err, "SIGHUP: keeping the previous secret key-encryption keys")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (authenticator, keyring);
}

/// Marks the server (`""`) and every service of the contract with one status.
async fn set_serving(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in platform_api::SERVICE_NAMES {
        health.set_service_status(service, status).await;
    }
}

fn routes(
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Routes, StartError> {
    let reflection = || {
        // Both reflection versions describe both, so that grpcurl of any age lists everything.
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(platform_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let mut builder = Routes::builder();
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = builder
        .routes()
        .into_axum_router()
        .fallback(unimplemented_method);
    Ok(Routes::from(router))
}

/// Answers calls that no registered service handles: UNIMPLEMENTED, saying whether the method is
/// part of the contract (and only waiting for its implementation) or does not exist at all.
async fn unimplemented_method(uri: http::Uri) -> http::Response<tonic::body::Body> {
    let path = uri.path();
    let status = match contract::rpc_by_path(path) {
        Some(rpc) => tonic::Status::unimplemented(format!(
            "{}.{} is part of the platform API contract but is not implemented by this server version yet",
            rpc.service, rpc.method
        )),
        None => tonic::Status::unimplemented(format!("unknown method `{}`", truncate(path, 200))),
    };
    status.into_http()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn cors_layer(allowed_origins: &[String]) -> CorsLayer {
    let origin = if allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("grpc-timeout"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("x-request-id"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("x-request-id"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// Creates the data directory if needed and proves that it is writable, so that a bad path is
/// reported at start-up in one line rather than at the first write.
fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = terminate => info!("SIGTERM received"),
    }
}
