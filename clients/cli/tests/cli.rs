//! platformctl end to end: the real binary against a real platformd (in this process, on a
//! loopback port, on a fresh SQLite database) — the path a new user takes (log in with the
//! bootstrap token, create a tenant, apply a Backstage catalog folder, create environments,
//! deploy and watch, roll back, promote), secrets from stdin, the audit trail, permission checks,
//! output formats, and the exit codes scripts rely on.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

struct Server {
    addr: String,
    admin_token: String,
    authenticator: std::sync::Arc<platformd::auth::Authenticator>,
    _data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start() -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = platformd::Config::for_data_dir(data.path());
        config.listen = "127.0.0.1:0".parse().expect("addr");
        let app = platformd::App::build(config).await.expect("server starts");
        let addr = format!("http://{}", app.local_addr());
        let authenticator = app.authenticator().clone();
        let admin_token =
            std::fs::read_to_string(data.path().join(platformd::server::BOOTSTRAP_TOKEN_FILE))
                .expect("bootstrap token")
                .trim()
                .to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            admin_token,
            authenticator,
            _data: data,
            stop: Some(stop),
        }
    }

    fn user_token(&self, subject: &str) -> String {
        self.authenticator
            .issue(subject, None, &[], Duration::from_secs(3600), None)
            .expect("token")
            .0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs platformctl with a private HOME and config file, the given environment, and `stdin`.
async fn ctl(home: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_platformctl"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("PLATFORM_CONFIG", home.join("platformctl.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("platformctl runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.expect("stdin");
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("platformctl finishes")
        .expect("output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(out: &Output, what: &str) {
    assert_eq!(
        out.code, 0,
        "{what}: stdout {} stderr {}",
        out.stdout, out.stderr
    );
}

const CATALOG: &str = "\
apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: payments
  title: Payments
spec:
  type: service
  lifecycle: production
  owner: team-a
  dependsOn: ['resource:payments-db']
---
apiVersion: backstage.io/v1alpha1
kind: Resource
metadata:
  name: payments-db
spec:
  type: database
  owner: team-a
";

const GROUP: &str = "\
apiVersion: backstage.io/v1alpha1
kind: Group
metadata:
  name: team-a
spec:
  type: team
  children: []
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_logs_in_applies_the_catalog_deploys_and_watches() {
    let server = Server::start().await;
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let addr = server.addr.as_str();
    let base = [("PLATFORM_ADDR", addr)];

    // Log in with the bootstrap token from stdin; the file is private and later commands need
    // no token in the environment.
    let out = ctl(
        home,
        &base,
        &["login", "--tenant", "acme"],
        Some(server.admin_token.as_bytes()),
    )
    .await;
    ok(&out, "login");
    assert!(out.stderr.contains("logged in"), "{}", out.stderr);
    let config = home.join("platformctl.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config)
            .expect("config")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the config holds a token: {mode:o}");
    }
    let out = ctl(home, &[], &["whoami", "-o", "json"], None).await;
    ok(&out, "whoami from the saved settings");

    ok(
        &ctl(home, &[], &["tenants", "create", "acme"], None).await,
        "tenant",
    );
    let again = ctl(home, &[], &["tenants", "create", "acme"], None).await;
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.starts_with("error: ALREADY_EXISTS"),
        "{}",
        again.stderr
    );
    let bad = ctl(home, &[], &["tenants", "create", "Not_A_Name"], None).await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("INVALID_ARGUMENT") && bad.stderr.contains("tenant_id"),
        "one line with the code and the field: {}",
        bad.stderr
    );
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);

    // A folder of descriptors, nested, applied as Backstage files.
    let catalog = tempfile::tempdir().expect("catalog");
    std::fs::create_dir_all(catalog.path().join("teams")).expect("dir");
    std::fs::write(catalog.path().join("catalog-info.yaml"), CATALOG).expect("write");
    std::fs::write(catalog.path().join("teams/team-a.yml"), GROUP).expect("write");
    std::fs::write(catalog.path().join("README.md"), "not a descriptor").expect("write");
    let path = catalog.path().to_str().expect("utf-8");
    let out = ctl(home, &[], &["catalog", "apply", "-f", path], None).await;
    ok(&out, "apply");
    assert!(out.stdout.contains("CREATED"), "{}", out.stdout);
    let out = ctl(home, &[], &["catalog", "list", "-o", "json"], None).await;
    ok(&out, "list");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"payments") && names.contains(&"team-a"));
    let out = ctl(
        home,
        &[],
        &["catalog", "get", "payments", "-o", "yaml"],
        None,
    )
    .await;
    ok(&out, "get");
    assert!(out.stdout.contains("  name: payments\n"), "{}", out.stdout);
    let out = ctl(home, &[], &["catalog", "get", "payments"], None).await;
    assert!(out.stdout.starts_with("KIND"), "a table: {}", out.stdout);
    let out = ctl(home, &[], &["catalog", "graph", "payments"], None).await;
    ok(&out, "graph");
    assert!(
        out.stdout.contains("resource:default/payments-db"),
        "{}",
        out.stdout
    );
    let missing = ctl(home, &[], &["catalog", "get", "ghost"], None).await;
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    assert!(missing.stderr.contains("NOT_FOUND"));

    // Environments with the command driver; a promotion order dev → staging.
    ok(
        &ctl(
            home,
            &[],
            &["environments", "create", "staging", "--type", "staging"],
            None,
        )
        .await,
        "staging",
    );
    let out = ctl(
        home,
        &[],
        &[
            "environments",
            "create",
            "dev",
            "--type",
            "development",
            "--driver",
            "command",
            "--promotes-to",
            "staging",
            "--deploy-command",
            "sh",
            "-c",
            "echo deploying the new version",
        ],
        None,
    )
    .await;
    ok(&out, "dev");
    let out = ctl(
        home,
        &[],
        &[
            "environments",
            "create",
            "broken",
            "--type",
            "staging",
            "--driver",
            "command",
            "--deploy-command",
            "sh",
            "-c",
            "echo boom; exit 3",
        ],
        None,
    )
    .await;
    ok(&out, "broken");
    let out = ctl(home, &[], &["environments", "list"], None).await;
    assert_eq!(
        out.stdout.lines().count(),
        4,
        "header and three: {}",
        out.stdout
    );

    // Deploy and watch: the log streams, and the exit code says how it ended.
    let out = ctl(
        home,
        &[],
        &[
            "deploy", "payments", "v1", "--env", "dev", "--wait", "-o", "json",
        ],
        None,
    )
    .await;
    ok(&out, "deploy v1");
    assert!(
        out.stderr.contains("deploying the new version"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("state SUCCEEDED"), "{}", out.stderr);
    let v1: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v1["state"], "DEPLOYMENT_STATE_SUCCEEDED");
    let failed = ctl(
        home,
        &[],
        &["deploy", "payments", "v1", "--env", "broken", "--wait"],
        None,
    )
    .await;
    assert_eq!(failed.code, 6, "{}", failed.stderr);
    assert!(failed.stderr.contains("boom"), "{}", failed.stderr);
    let out = ctl(
        home,
        &[],
        &[
            "deploy", "payments", "v2", "--env", "dev", "--wait", "-o", "json",
        ],
        None,
    )
    .await;
    ok(&out, "deploy v2");
    let v2: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let v2_name = v2["name"].as_str().expect("name");
    let out = ctl(
        home,
        &[],
        &["rollback", v2_name, "--wait", "-o", "json"],
        None,
    )
    .await;
    ok(&out, "rollback");
    let rolled: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(rolled["version"], "v1");
    assert_eq!(rolled["rollbackOf"], v2_name);
    let v1_name = v1["name"].as_str().expect("name");
    let id = v1_name.rsplit('/').next().expect("id");
    let out = ctl(home, &[], &["promote", id, "--wait", "-o", "json"], None).await;
    ok(&out, "promote by id");
    let promoted: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(promoted["environment"], "tenants/acme/environments/staging");
    let out = ctl(home, &[], &["deployments", "log", v1_name], None).await;
    ok(&out, "log");
    assert!(
        out.stdout.contains("deploying the new version"),
        "{}",
        out.stdout
    );

    // A locked environment refuses deployments, naming the reason.
    ok(
        &ctl(
            home,
            &[],
            &["environments", "lock", "dev", "--reason", "release freeze"],
            None,
        )
        .await,
        "lock",
    );
    let locked = ctl(
        home,
        &[],
        &["deploy", "payments", "v3", "--env", "dev"],
        None,
    )
    .await;
    assert_eq!(locked.code, 1, "{}", locked.stderr);
    assert!(
        locked.stderr.contains("FAILED_PRECONDITION") && locked.stderr.contains("release freeze"),
        "{}",
        locked.stderr
    );
    ok(
        &ctl(home, &[], &["environments", "unlock", "dev"], None).await,
        "unlock",
    );

    // Secrets: the value comes from stdin and never comes back.
    let out = ctl(
        home,
        &[],
        &["secrets", "set", "db-password"],
        Some(b"hunter2-canary"),
    )
    .await;
    ok(&out, "secret");
    assert!(
        out.stdout
            .contains("tenants/acme/secrets/db-password/versions/1"),
        "{}",
        out.stdout
    );
    let out = ctl(
        home,
        &[],
        &["secrets", "set", "db-password"],
        Some(b"second"),
    )
    .await;
    assert!(out.stdout.contains("/versions/2"), "{}", out.stdout);
    let out = ctl(home, &[], &["secrets", "list", "-o", "yaml"], None).await;
    ok(&out, "secrets list");
    assert!(out.stdout.contains("db-password") && !out.stdout.contains("hunter2"));

    // The audit trail: recent events, and an intact chain.
    let out = ctl(
        home,
        &[],
        &["audit", "list", "--limit", "5", "-o", "json"],
        None,
    )
    .await;
    ok(&out, "audit list");
    let events: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(events.as_array().expect("array").len(), 5);
    assert!(!out.stdout.contains("hunter2"));
    // `audit tail` follows events as they are recorded, one JSON object per line.
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_platformctl"))
        .args([
            "audit",
            "tail",
            "-o",
            "json",
            "--filter",
            "method = \"/platform.environments.v1.EnvironmentService/LockEnvironment\"",
        ])
        .env_clear()
        .env("HOME", home)
        .env("PLATFORM_CONFIG", home.join("platformctl.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tail runs");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        tail.stdout.take().expect("stdout"),
    ));
    let mut followed = None;
    // The tail subscribes asynchronously: lock until an event arrives (or give up).
    for _ in 0..20 {
        ok(
            &ctl(
                home,
                &[],
                &["environments", "lock", "dev", "--reason", "tail"],
                None,
            )
            .await,
            "lock",
        );
        ok(
            &ctl(home, &[], &["environments", "unlock", "dev"], None).await,
            "unlock",
        );
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            followed = Some(line);
            break;
        }
    }
    let line = followed.expect("audit tail printed the lock");
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON event per line");
    assert_eq!(
        event["method"],
        "/platform.environments.v1.EnvironmentService/LockEnvironment"
    );
    tail.kill().await.expect("stop tail");

    let out = ctl(home, &[], &["audit", "verify"], None).await;
    ok(&out, "verify");
    assert!(out.stdout.contains("true"), "{}", out.stdout);

    // Permissions: the admin may deploy; a viewer may not, and says so with exit 1.
    let out = ctl(
        home,
        &[],
        &["can-i", "deployments.deployments.create"],
        None,
    )
    .await;
    ok(&out, "can-i");
    assert_eq!(out.stdout.trim(), "yes");
    ok(
        &ctl(
            home,
            &[],
            &[
                "role-bindings",
                "create",
                "vic",
                "--principal",
                "user:vic",
                "--role",
                "viewer",
            ],
            None,
        )
        .await,
        "bind",
    );
    let vic = server.user_token("vic");
    let as_vic = [("PLATFORM_TOKEN", vic.as_str())];
    let out = ctl(
        home,
        &as_vic,
        &["can-i", "deployments.deployments.create"],
        None,
    )
    .await;
    assert_eq!((out.code, out.stdout.trim()), (1, "no"));
    let denied = ctl(
        home,
        &as_vic,
        &["deploy", "payments", "v9", "--env", "dev"],
        None,
    )
    .await;
    assert_eq!(denied.code, 3, "{}", denied.stderr);
    assert!(denied.stderr.contains("PERMISSION_DENIED"));
    let out = ctl(home, &as_vic, &["catalog", "list"], None).await;
    ok(&out, "viewers read the catalog");

    // Exit codes for the remaining failures.
    let bad_token = ctl(
        home,
        &[("PLATFORM_TOKEN", "not-a-token")],
        &["catalog", "list"],
        None,
    )
    .await;
    assert_eq!(bad_token.code, 3, "{}", bad_token.stderr);
    assert!(bad_token.stderr.contains("UNAUTHENTICATED"));
    let usage = ctl(home, &[], &["deploy", "payments", "v1"], None).await;
    assert_eq!(usage.code, 2, "missing --env: {}", usage.stderr);
    let usage = ctl(
        home,
        &[],
        &["environments", "create", "x", "--type", "weird"],
        None,
    )
    .await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let down = ctl(
        home,
        &[("PLATFORM_ADDR", "http://127.0.0.1:9")],
        &["catalog", "list"],
        None,
    )
    .await;
    assert_eq!(down.code, 5, "{}", down.stderr);
    let out = ctl(home, &[], &["completions", "bash"], None).await;
    ok(&out, "completions");
    assert!(out.stdout.contains("platformctl"));
}
