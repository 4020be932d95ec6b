//! Server configuration: command-line flags, then `PLATFORM_*` environment variables, then an
//! optional TOML file, then built-in defaults — in that order of precedence.
//!
//! clap resolves flag-over-environment; the file only fills what neither gave, so every setting
//! is declared once here with its default. Validation happens in [`ServeArgs::resolve`], so that
//! a bad setting is one clear line and exit code 2 before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file name of the SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "platform.db";

/// Flags of `platformd serve`. Every one can also come from a `PLATFORM_*` variable or the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "PLATFORM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for gRPC, gRPC-Web and health [default: 127.0.0.1:50051].
    #[arg(long, env = "PLATFORM_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the embedded database and other state [default: ./platform-data].
    #[arg(long, env = "PLATFORM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://…` or `postgres://…` [default: SQLite file in the data dir].
    #[arg(long, env = "PLATFORM_DATABASE")]
    pub database: Option<String>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "PLATFORM_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `platformd=debug,sqlx=warn` [default: info].
    #[arg(long, env = "PLATFORM_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Seconds in-flight calls get to finish after SIGINT/SIGTERM [default: 30].
    #[arg(long, env = "PLATFORM_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Milliseconds after SIGINT/SIGTERM during which the server still accepts connections but
    /// answers new calls UNAVAILABLE (health NOT_SERVING), so load balancers and clients move
    /// away before it closes its port [default: 1000].
    #[arg(long, env = "PLATFORM_SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    /// Largest accepted request message in bytes [default: 4194304 (4 MiB)].
    #[arg(long, env = "PLATFORM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Calls served at once across all connections before new ones are shed with
    /// RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "PLATFORM_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Calls per second each principal may make before further calls are refused with
    /// RESOURCE_EXHAUSTED; 0 = no per-principal limit [default: 0].
    #[arg(long, env = "PLATFORM_RATE_LIMIT_PER_PRINCIPAL")]
    pub rate_limit_per_principal: Option<u32>,
    /// Calls a principal that has been quiet may make at once, above its steady rate [default:
    /// twice the rate].
    #[arg(long, env = "PLATFORM_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Maximum database connections in the pool [default: 16 for PostgreSQL, 8 for SQLite].
    #[arg(long, env = "PLATFORM_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Seconds to wait for a free database connection before failing with UNAVAILABLE [default: 5].
    #[arg(long, env = "PLATFORM_DB_ACQUIRE_TIMEOUT_SECS")]
    pub db_acquire_timeout_secs: Option<u64>,
    /// PostgreSQL: seconds one statement may run before the server cancels it (the call fails
    /// with UNAVAILABLE and its transaction rolls back); 0 = no limit [default: 30].
    #[arg(long, env = "PLATFORM_DB_STATEMENT_TIMEOUT_SECS")]
    pub db_statement_timeout_secs: Option<u64>,
    /// Times a call rolled back by the database for a conflict with a concurrent transaction
    /// (serialization failure, deadlock) is run again before ABORTED is returned [default: 3].
    #[arg(long, env = "PLATFORM_DB_CONFLICT_RETRIES")]
    pub db_conflict_retries: Option<u32>,
    /// Browser origins allowed to call over gRPC-Web (comma-separated); `*` allows any
    /// [default: *]. Credentials are bearer tokens, never cookies, so `*` is not a CSRF risk.
    #[arg(long, env = "PLATFORM_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Option<Vec<String>>,
    /// An identity provider's JWKS file (reloaded on SIGHUP); without it only tokens platformd
    /// signs itself are accepted.
    #[arg(long, env = "PLATFORM_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted `iss` of identity-provider tokens (comma-separated).
    #[arg(long, env = "PLATFORM_JWT_ISSUERS", value_delimiter = ',')]
    pub jwt_issuers: Option<Vec<String>>,
    /// Algorithms accepted for identity-provider tokens, never taken from a token
    /// [default: RS256,ES256,EdDSA].
    #[arg(long, env = "PLATFORM_JWT_ALGORITHMS", value_delimiter = ',')]
    pub jwt_algorithms: Option<Vec<String>>,
    /// Required `aud` of every token [default: platform-api].
    #[arg(long, env = "PLATFORM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway in seconds for `exp` and `nbf` [default: 30].
    #[arg(long, env = "PLATFORM_JWT_LEEWAY_SECS")]
    pub jwt_leeway_secs: Option<u64>,
    /// Deployment and environment steps run at once by this process [default: 4].
    #[arg(long, env = "PLATFORM_DEPLOY_WORKERS")]
    pub deploy_workers: Option<usize>,
    /// Seconds a worker's claim on a deployment lasts without renewal; after a crash, another
    /// worker takes the deployment over once it expires [default: 30].
    #[arg(long, env = "PLATFORM_DEPLOY_LEASE_SECS")]
    pub deploy_lease_secs: Option<u64>,
    /// Attempts a deployment gets before interrupted runs make it FAILED [default: 3].
    #[arg(long, env = "PLATFORM_DEPLOY_MAX_ATTEMPTS")]
    pub deploy_max_attempts: Option<u32>,
    /// The longest time-to-live, in hours, a preview environment may be given at creation or
    /// renewal [default: 720, 30 days].
    #[arg(long, env = "PLATFORM_PREVIEW_MAX_TTL_HOURS")]
    pub preview_max_ttl_hours: Option<u64>,
    /// File of key-encryption keys for secrets, `KEY_ID:BASE64_OF_32_BYTES` per line (the first
    /// is primary). Keys may also come from the `PLATFORM_SECRET_KEYS` variable (same form).
    /// Without either, a key file is generated in the data dir on first start (development).
    #[arg(long, env = "PLATFORM_SECRET_KEYS_FILE")]
    pub secret_keys_file: Option<PathBuf>,
    /// The id of the key that wraps new data keys [default: the first key loaded].
    #[arg(long, env = "PLATFORM_SECRET_PRIMARY_KEY")]
    pub secret_primary_key: Option<String>,
}

/// The same settings as [`ServeArgs`], as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    shutdown_grace_secs: Option<u64>,
    shutdown_drain_ms: Option<u64>,
    max_message_bytes: Option<usize>,
    max_concurrent_requests: Option<usize>,
    rate_limit_per_principal: Option<u32>,
    rate_limit_burst: Option<u32>,
    db_max_connections: Option<u32>,
    db_acquire_timeout_secs: Option<u64>,
    db_statement_timeout_secs: Option<u64>,
    db_conflict_retries: Option<u32>,
    cors_allowed_origins: Option<Vec<String>>,
    jwks_file: Option<PathBuf>,
    jwt_issuers: Option<Vec<String>>,
    jwt_algorithms: Option<Vec<String>>,
    jwt_audience: Option<String>,
    jwt_leeway_secs: Option<u64>,
    deploy_workers: Option<usize>,
    deploy_lease_secs: Option<u64>,
    deploy_max_attempts: Option<u32>,
    preview_max_ttl_hours: Option<u64>,
    secret_keys_file: Option<PathBuf>,
    secret_primary_key: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The resolved, validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: DatabaseUrl,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub shutdown_drain: Duration,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    /// The per-principal rate limit; `None` when off.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    pub db_max_connections: Option<u32>,
    pub db_acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`; `None` leaves the server's default.
    pub db_statement_timeout: Option<Duration>,
    /// Re-runs of a call rolled back for a database conflict.
    pub db_conflict_retries: u32,
    pub cors_allowed_origins: Vec<String>,
    pub auth: crate::auth::AuthConfig,
    /// How often an open audit Watch re-checks its caller's token and permission (60 s; tests
    /// shorten it).
    pub watch_recheck: Duration,
    pub engine: EngineConfig,
    /// Where the secrets' key-encryption keys come from.
    pub keys: crate::secrets::KeyringConfig,
}

/// The deployment engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Steps run at once by this process (0: this replica runs none, only serves the API).
    pub workers: usize,
    /// How long a claim lasts without renewal (renewed every third of it).
    pub lease: Duration,
    /// Attempts before interrupted runs fail a deployment.
    pub max_attempts: u32,
    /// How often idle workers look for work other replicas queued (local work wakes them at once).
    pub poll: Duration,
    /// Longest stored log line; longer ones are cut and flagged.
    pub max_line_bytes: usize,
    /// Most lines stored per deployment or environment; later ones are dropped with a note.
    pub max_log_lines: i64,
    /// How often the preview-environment reaper looks for expired environments.
    pub reaper_interval: Duration,
    /// The longest time-to-live a preview environment may be given.
    pub max_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 4,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            poll: Duration::from_secs(1),
            max_line_bytes: 16 * 1024,
            max_log_lines: 100_000,
            reaper_interval: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A database URL whose engine is known. Its `Debug` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => write!(f, "{}", redact_url(url)),
        }
    }
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH` or `postgres://…`/`postgresql://…`.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(ConfigError::new(
                    "database",
                    "an SQLite URL needs a file path (in-memory databases lose everything)",
                ));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let after_scheme = raw
                .split_once("://")
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            if after_scheme.is_empty() || after_scheme.starts_with('/') {
                return Err(ConfigError::new(
                    "database",
                    format!("`{}` names no PostgreSQL host", redact_url(raw)),
                ));
            }
            return Ok(DatabaseUrl::Postgres(raw.to_owned()));
        }
        Err(ConfigError::new(
            "database",
            format!(
                "`{}` is not a supported database URL (use sqlite://PATH or postgres://…)",
                redact_url(raw)
            ),
        ))
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn engine(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

/// Replaces the password of a URL with `***` so that it can be logged or shown in an error.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

/// A setting that cannot be used, named so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration `{setting}`: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }
}

impl ServeArgs {
    /// Merges flags/environment with the optional file and the defaults, and validates the result.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };

        let listen_raw = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            ConfigError::new(
                "listen",
                format!("`{listen_raw}` is not an address like 127.0.0.1:50051"),
            )
        })?;

        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./platform-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data-dir", "must not be empty"));
        }

        let database = match self.database.or(file.database) {
            Some(raw) => DatabaseUrl::parse(&raw)?,
            None => DatabaseUrl::Sqlite(data_dir.join(SQLITE_FILE_NAME)),
        };

        let log_format = match self
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log-format",
                    format!("`{other}` is neither `text` nor `json`"),
                ));
            }
        };
        let log_level = self
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_owned());
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&log_level) {
            return Err(ConfigError::new("log-level", err.to_string()));
        }

        let max_message_bytes = self
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(4 * 1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(ConfigError::new(
                "max-message-bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let max_concurrent_requests = self
            .max_concurrent_requests
            .or(file.max_concurrent_requests)
            .unwrap_or(1024);
        if max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "max-concurrent-requests",
                "must be at least 1",
            ));
        }
        let rate_limit = match self
            .rate_limit_per_principal
            .or(file.rate_limit_per_principal)
            .unwrap_or(0)
        {
            0 => None,
            per_second => {
                let burst = self
                    .rate_limit_burst
                    .or(file.rate_limit_burst)
                    .unwrap_or(per_second.saturating_mul(2));
                if burst == 0 {
                    return Err(ConfigError::new("rate-limit-burst", "must be at least 1"));
                }
                Some(crate::ratelimit::RateLimit {
                    per_second: f64::from(per_second),
                    burst: f64::from(burst),
                })
            }
        };
        let db_max_connections = self.db_max_connections.or(file.db_max_connections);
        if db_max_connections == Some(0) {
            return Err(ConfigError::new("db-max-connections", "must be at least 1"));
        }

        let mut auth = crate::auth::AuthConfig {
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::EdDSA,
            ],
            ..crate::auth::AuthConfig::default()
        };
        if let Some(algorithms) = self.jwt_algorithms.or(file.jwt_algorithms) {
            auth.algorithms = algorithms
                .iter()
                .map(|a| {
                    a.trim().parse::<jsonwebtoken::Algorithm>().map_err(|_| {
                        ConfigError::new("jwt-algorithms", format!("`{a}` is not a JWT algorithm"))
                    })
                })
                .collect::<Result<_, _>>()?;
            if auth.algorithms.iter().any(|a| {
                matches!(
                    a,
                    jsonwebtoken::Algorithm::HS256
                        | jsonwebtoken::Algorithm::HS384
                        | jsonwebtoken::Algorithm::HS512
                )
            }) {
                return Err(ConfigError::new(
                    "jwt-algorithms",
                    "HMAC algorithms are refused: a JWKS holds public keys",
                ));
            }
        }
        if let Some(issuers) = self.jwt_issuers.or(file.jwt_issuers) {
            auth.issuers = issuers;
        }
        if let Some(audience) = self.jwt_audience.or(file.jwt_audience) {
            auth.audience = audience;
        }
        if let Some(leeway) = self.jwt_leeway_secs.or(file.jwt_leeway_secs) {
            if leeway > 300 {
                return Err(ConfigError::new("jwt-leeway-secs", "at most 300 seconds"));
            }
            auth.leeway = Duration::from_secs(leeway);
        }
        auth.jwks_path = self.jwks_file.or(file.jwks_file);

        let mut engine = EngineConfig::default();
        if let Some(workers) = self.deploy_workers.or(file.deploy_workers) {
            if workers > 256 {
                return Err(ConfigError::new("deploy-workers", "at most 256"));
            }
            engine.workers = workers;
        }
        if let Some(lease) = self.deploy_lease_secs.or(file.deploy_lease_secs) {
            if !(1..=3600).contains(&lease) {
                return Err(ConfigError::new(
                    "deploy-lease-secs",
                    "between 1 and 3600 seconds",
                ));
            }
            engine.lease = Duration::from_secs(lease);
        }
        if let Some(attempts) = self.deploy_max_attempts.or(file.deploy_max_attempts) {
            if !(1..=100).contains(&attempts) {
                return Err(ConfigError::new("deploy-max-attempts", "between 1 and 100"));
            }
            engine.max_attempts = attempts;
        }
        if let Some(hours) = self.preview_max_ttl_hours.or(file.preview_max_ttl_hours) {
            if !(1..=24 * 366).contains(&hours) {
                return Err(ConfigError::new(
                    "preview-max-ttl-hours",
                    "between 1 hour and 366 days",
                ));
            }
            engine.max_ttl = Duration::from_secs(hours * 3600);
        }

        let keys = crate::secrets::KeyringConfig {
            file: self.secret_keys_file.or(file.secret_keys_file),
            primary: self.secret_primary_key.or(file.secret_primary_key),
            data_dir: data_dir.clone(),
        };
        if let Some(id) = &keys.primary
            && !crate::secrets::keyring::valid_key_id(id)
        {
            return Err(ConfigError::new(
                "secret-primary-key",
                "key ids are 1-64 characters of [A-Za-z0-9._-]",
            ));
        }
        Ok(Config {
            keys,
            engine,
            watch_recheck: Duration::from_secs(60),
            auth,
            listen,
            data_dir,
            database,
            log_format,
            log_level,
            shutdown_grace: Duration::from_secs(
                self.shutdown_grace_secs
                    .or(file.shutdown_grace_secs)
                    .unwrap_or(30),
            ),
            shutdown_drain: Duration::from_millis(
                self.shutdown_drain_ms
                    .or(file.shutdown_drain_ms)
                    .unwrap_or(1000),
            ),
            max_message_bytes,
            max_concurrent_requests,
            rate_limit,
            db_max_connections,
            db_acquire_timeout: Duration::from_secs(
                self.db_acquire_timeout_secs
                    .or(file.db_acquire_timeout_secs)
                    .unwrap_or(5)
                    .max(1),
            ),
            db_statement_timeout: match self
                .db_statement_timeout_secs
                .or(file.db_statement_timeout_secs)
                .unwrap_or(30)
            {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            db_conflict_retries: self
                .db_conflict_retries
                .or(file.db_conflict_retries)
                .unwrap_or(3)
                .min(10),
            cors_allowed_origins: self
                .cors_allowed_origins
                .or(file.cors_allowed_origins)
                .unwrap_or_else(|| vec!["*".to_owned()]),
        })
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new("config", format!("cannot read {}: {err}", path.display()))
    })?;
    toml::from_str(&text).map_err(|err| {
        ConfigError::new(
            "config",
            format!("{}: {}", path.display(), err.message().trim()),
        )
    })
}

impl Config {
    /// A configuration for tests and embedding: defaults, listening on an ephemeral loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".to_owned()),
            data_dir: Some(data_dir),
            ..ServeArgs::default()
        };
        match args.resolve() {
            Ok(config) => config,
            // The defaults above are valid by construction; a failure here is a bug in this file.
            Err(err) => unreachable!("default configuration is invalid: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_example_is_a_valid_configuration() {
        let text = include_str!("../../examples/replica.toml");
        let file: FileConfig = toml::from_str(text).expect("every key is a known setting");
        assert_eq!(file.db_statement_timeout_secs, Some(30));
        assert!(file.database.is_some_and(|d| d.starts_with("postgres://")));
        assert!(file.secret_keys_file.is_some());
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("platform.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\nlog_format = \"json\"\nshutdown_grace_secs = 3\n",
        )
        .expect("write");
        let config = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:7000".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(
            config.database,
            DatabaseUrl::Sqlite(PathBuf::from("./platform-data").join(SQLITE_FILE_NAME))
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("platform.toml");
        std::fs::write(&file, "listn = \"x\"\n").expect("write");
        let err = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .expect_err("unknown key");
        assert!(err.to_string().contains("listn"), "{err}");

        let err = ServeArgs {
            listen: Some("nowhere".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect_err("bad listen");
        assert_eq!(err.setting, "listen");
    }

    #[test]
    fn database_urls_select_the_engine() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/p.db").expect("ok"),
            DatabaseUrl::Sqlite("/var/lib/p.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://rel/p.db?mode=rwc").expect("ok"),
            DatabaseUrl::Sqlite("rel/p.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db")
                .expect("ok")
                .engine(),
            "postgres"
        );
        for bad in [
            "mysql://h/db",
            "sqlite://",
            "sqlite::memory:",
            "postgres://",
            "",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://user:hunter2@db:5432/x?sslmode=disable"),
            "postgres://user:***@db:5432/x?sslmode=disable"
        );
        let err = DatabaseUrl::parse("postgresx://user:hunter2@db/x").expect_err("bad scheme");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let dbg = format!(
            "{:?}",
            DatabaseUrl::parse("postgres://u:hunter2@h/db").expect("ok")
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
