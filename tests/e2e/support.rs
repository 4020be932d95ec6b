//! Test support: a fresh database per test (an SQLite file in a temporary data dir, or a new
//! PostgreSQL database that is dropped afterwards), the real server started in-process on a
//! free loopback port, the real `platformd` binary started as a process, and a client helper
//! with one method per call.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platformd::Config;
use platformd::config::DatabaseUrl;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The variable that names a PostgreSQL server for the PostgreSQL half of the storage tests.
pub const POSTGRES_URL_VAR: &str = "PLATFORM_TEST_POSTGRES_URL";

/// Which engine a storage test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a storage test body once per engine: `storage_test!(name, |backend| async move {..})`
/// makes `name::sqlite` and `name::postgres`. The PostgreSQL one is skipped (with a note) when
/// `PLATFORM_TEST_POSTGRES_URL` is unset; CI always sets it.
#[macro_export]
macro_rules! storage_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let body = $body;
                body($crate::support::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if !$crate::support::postgres_configured() {
                    return;
                }
                let body = $body;
                body($crate::support::Backend::Postgres).await;
            }
        }
    };
}

pub fn postgres_configured() -> bool {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => true,
        _ => {
            eprintln!("skipping the PostgreSQL half: {POSTGRES_URL_VAR} is not set");
            false
        }
    }
}

/// A fresh, empty database and data directory, removed when dropped.
pub struct TestDb {
    pub data_dir: tempfile::TempDir,
    pub database: DatabaseUrl,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        match backend {
            Backend::Sqlite => TestDb {
                database: DatabaseUrl::Sqlite(data_dir.path().join("platform.db")),
                data_dir,
                postgres: None,
            },
            Backend::Postgres => {
                let admin_url = std::env::var(POSTGRES_URL_VAR).expect("postgres url");
                let name = format!("platform_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = connect_admin(&admin_url).await;
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                TestDb {
                    database: DatabaseUrl::Postgres(with_database(&admin_url, &name)),
                    data_dir,
                    postgres: Some((admin_url, name)),
                }
            }
        }
    }

    /// A server configuration on this database, listening on a free loopback port.
    pub fn config(&self) -> Config {
        let mut config = Config::for_data_dir(self.data_dir.path());
        config.database = self.database.clone();
        config.shutdown_grace = Duration::from_secs(5);
        // In-process servers stop at the end of each test; nobody needs a lame-duck period.
        config.shutdown_drain = Duration::ZERO;
        config
    }

    /// The `--database` argument for the binary.
    pub fn database_arg(&self) -> String {
        match &self.database {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => url.clone(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop cannot await; a short-lived runtime on its own thread drops the database.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = connect_admin(&admin_url).await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            });
        });
        let _ = handle.join();
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach PostgreSQL at {POSTGRES_URL_VAR}: {err}"))
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The real server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: platformd::store::Store,
    pub authenticator: std::sync::Arc<platformd::auth::Authenticator>,
    /// The platform-admin token the first start wrote to the data dir.
    pub admin_token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), platformd::server::ServeError>>>,
}

/// Server log lines for in-process servers, when `PLATFORM_TEST_LOG` names a filter (e.g.
/// `PLATFORM_TEST_LOG=platformd=debug`): an INTERNAL answer's cause is only in the log.
fn init_test_log() {
    if let Ok(filter) = std::env::var("PLATFORM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(db.config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        init_test_log();
        let config_dir = config.data_dir.clone();
        let app = platformd::App::build(config).await.expect("server starts");
        let addr = app.local_addr();
        let store = app.store().clone();
        let authenticator = app.authenticator().clone();
        let admin_token = read_bootstrap_token(&config_dir);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let server = TestServer {
            addr,
            store,
            authenticator,
            admin_token,
            stop: Some(stop),
            task: Some(task),
        };
        server.client().await.wait_serving().await;
        server
    }

    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    /// A client that calls as the bootstrap platform-admin.
    pub async fn admin(&self) -> TestClient {
        self.client().await.with_token(&self.admin_token)
    }

    /// A client that calls as `user:{subject}` (a token signed by the server, no role grants).
    pub async fn user(&self, subject: &str) -> TestClient {
        let (token, _) = self
            .authenticator
            .issue(subject, None, &[], Duration::from_secs(3600), None)
            .expect("issue a user token");
        self.client().await.with_token(&token)
    }

    /// Shuts down gracefully and returns how the server ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads the bootstrap platform-admin token a first start writes.
pub fn read_bootstrap_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join(platformd::server::BOOTSTRAP_TOKEN_FILE))
        .expect("bootstrap token file")
        .trim()
        .to_owned()
}

/// A client of a running server, one method per call the tests make.
#[derive(Clone)]
pub struct TestClient {
    pub channel: Channel,
    pub token: Option<String>,
}

impl TestClient {
    pub async fn connect(addr: SocketAddr) -> TestClient {
        let endpoint = Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5));
        for _ in 0..100 {
            if let Ok(channel) = endpoint.connect().await {
                return TestClient {
                    channel,
                    token: None,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot connect to {addr}");
    }

    /// The same connection, calling with a bearer token.
    pub fn with_token(mut self, token: &str) -> TestClient {
        self.token = Some(token.to_owned());
        self
    }

    /// Wraps a message in a request carrying this client's token.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii token"),
            );
        }
        request
    }

    pub fn iam(
        &self,
    ) -> platform_api::platform::iam::v1::iam_service_client::IamServiceClient<Channel> {
        platform_api::platform::iam::v1::iam_service_client::IamServiceClient::new(
            self.channel.clone(),
        )
    }

    pub fn audit(
        &self,
    ) -> platform_api::platform::audit::v1::audit_service_client::AuditServiceClient<Channel> {
        platform_api::platform::audit::v1::audit_service_client::AuditServiceClient::new(
            self.channel.clone(),
        )
    }

    pub async fn health_check(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(response.into_inner().status())
    }

    /// Polls health until SERVING (or panics after 10 s).
    pub async fn wait_serving(&self) {
        for _ in 0..200 {
            if let Ok(ServingStatus::Serving) = self.health_check("").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never became SERVING");
    }

    /// Lists services through gRPC reflection v1.
    pub async fn reflection_list_services(&self) -> Vec<String> {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(self.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection call")
            .into_inner();
        let response = stream
            .message()
            .await
            .expect("reflection response")
            .expect("one response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer: {other:?}"),
        }
    }

    /// Calls any method by path with raw bytes as the request message.
    pub async fn call_raw(
        &self,
        path: &'static str,
        message: Vec<u8>,
        metadata: &[(&'static str, &str)],
    ) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = self.req(message);
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, value.parse().expect("ascii metadata"));
        }
        grpc.unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
    }
}

/// A codec that passes message bytes through, to send what no generated client would.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The real `platformd` binary running as a child process, with its JSON log collected.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `platformd serve` on a free port and waits until it is SERVING.
    pub async fn start(db: &TestDb, extra_args: &[&str]) -> ServerProcess {
        Self::start_with_env(db, extra_args, &[]).await
    }

    /// As [`ServerProcess::start`], with extra environment variables for the process.
    pub async fn start_with_env(
        db: &TestDb,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut child = Command::new(platformd_bin())
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--data-dir")
            .arg(db.data_dir.path())
            .arg("--database")
            .arg(db.database_arg())
            .arg("--log-format=json")
            .arg("--log-level=info")
            .args(extra_args)
            .envs(env.iter().copied())
            .env_remove("PLATFORM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn platformd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        {
            let log = log.clone();
            // Drains stderr for the whole life of the process so the server never blocks on it.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                        && let Some(addr) = value.get("local_addr").and_then(|a| a.as_str())
                        && let Ok(addr) = addr.parse()
                    {
                        let _ = addr_tx.send(addr);
                    }
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let addr =
            tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("join");
        let addr = match addr {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "platformd did not start: {:?}",
                    log.lock().expect("log").clone()
                );
            }
        };
        let process = ServerProcess { child, addr, log };
        process.client().await.wait_serving().await;
        process
    }

    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.addr).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (SIGTERM = 15, SIGINT = 2) with the system's `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (at most `limit`) and returns its exit code.
    pub async fn wait_exit(mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("platformd did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `platformd` binary cargo built for these tests.
pub fn platformd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_platformd"))
}

/// Runs `platformd` to completion with the given arguments; returns (exit code, stderr).
pub fn run_platformd(args: &[&str], data_dir: &Path) -> (Option<i32>, String) {
    let output = Command::new(platformd_bin())
        .args(args)
        .current_dir(data_dir)
        .env_remove("PLATFORM_CONFIG")
        .env_remove("PLATFORM_DATABASE")
        .env_remove("PLATFORM_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run platformd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Finds the grpcurl binary: `$GRPCURL`, then `.tools/bin/grpcurl` in the repository, then PATH.
pub fn grpcurl() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("GRPCURL") {
        return Some(PathBuf::from(path));
    }
    let repo_tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/grpcurl");
    if repo_tool.exists() {
        return Some(repo_tool);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("grpcurl"))
        .find(|candidate| candidate.exists())
}

/// Sets the field at `path` (outermost first) of a dynamic message to `value`: a repeated field
/// gets that one element, and a message on the way is the one already there (the first, in a
/// list) or a new one. What the contract-driven tests (isolation, hostile input) build requests
/// with.
pub fn set_field_path(
    message: &mut prost_reflect::DynamicMessage,
    path: &[prost_reflect::FieldDescriptor],
    value: prost_reflect::Value,
) {
    use prost_reflect::{DynamicMessage, Value};
    let Some((field, rest)) = path.split_first() else {
        return;
    };
    let value = if rest.is_empty() {
        value
    } else {
        let existing = match message.get_field(field).as_ref() {
            Value::Message(m) => Some(m.clone()),
            Value::List(items) => match items.first() {
                Some(Value::Message(m)) => Some(m.clone()),
                _ => None,
            },
            _ => None,
        };
        let mut child = existing.unwrap_or_else(|| {
            let kind = field.kind();
            let inner = kind
                .as_message()
                .unwrap_or_else(|| panic!("{} is not a message field", field.full_name()));
            DynamicMessage::new(inner.clone())
        });
        set_field_path(&mut child, rest, value);
        Value::Message(child)
    };
    let value = if field.is_list() {
        Value::List(vec![value])
    } else {
        value
    };
    message.set_field(field, value);
}
