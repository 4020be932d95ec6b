//! Runs the real `platform-load` binary against the real `platformd` (started by it, as in
//! `scripts/bench`) with a tiny catalog and short periods, on SQLite and — when
//! PLATFORM_TEST_POSTGRES_URL is set — PostgreSQL, and checks that every scenario's calls
//! succeeded and every figure of the report was produced. Speed is not asserted.

use std::path::PathBuf;
use std::process::Command;

/// `platformd` as cargo built it for this workspace's tests (beside this package's binary).
fn platformd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_platform-load"))
        .with_file_name(format!("platformd{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn every_scenario_runs_without_errors_and_is_reported() {
    let platformd = platformd();
    if !platformd.exists() {
        // `cargo test --workspace` (the README's command) builds it; alone, build it first.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "platformd", "--bin", "platformd"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building platformd failed");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("load.json");
    let markdown = dir.path().join("BENCHMARKS.md");
    std::fs::write(
        &markdown,
        "# Benchmarks\n<!-- load:begin -->\nold\n<!-- load:end -->\n## Analysis\nkept\n",
    )
    .expect("seed markdown");
    let postgres = std::env::var("PLATFORM_TEST_POSTGRES_URL").ok();
    let mut command = Command::new(env!("CARGO_BIN_EXE_platform-load"));
    command
        .arg("--platformd")
        .arg(&platformd)
        .args(["--entities", "120", "--callers", "4", "--connections", "2"])
        .args(["--warmup-secs", "0.2", "--duration-secs", "0.6"])
        .args([
            "--overload-factor",
            "3",
            "--overload-scenario",
            "list-entities",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .args(["--engine", "sqlite"])
        .env_remove("PLATFORM_BENCH_POSTGRES_URL");
    if let Some(url) = &postgres {
        command.args(["--engine", "postgres", "--postgres-url", url]);
    }
    let output = command.output().expect("run platform-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "platform-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), if postgres.is_some() { 2 } else { 1 });
    for run in runs {
        let engine = run["engine"].as_str().expect("engine");
        let scenarios: Vec<&str> = run["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .map(|s| s["scenario"].as_str().expect("name"))
            .collect();
        assert_eq!(
            scenarios,
            [
                "health",
                "get-entity",
                "list-entities",
                "test-permissions",
                "create-deployment",
                "access-secret",
                "mixed"
            ],
            "{engine}"
        );
        for scenario in run["scenarios"].as_array().expect("scenarios") {
            let name = scenario["scenario"].as_str().expect("name");
            assert!(
                scenario["calls"].as_u64().expect("calls") > 0,
                "{engine} {name}: no call completed"
            );
            assert_eq!(
                scenario["errors"],
                serde_json::json!({}),
                "{engine} {name}: calls failed"
            );
            let p50 = scenario["p50_ms"].as_f64().expect("p50");
            let p99 = scenario["p99_ms"].as_f64().expect("p99");
            assert!(p50 > 0.0 && p50 <= p99, "{engine} {name}: {p50} / {p99}");
            assert!(
                scenario["peak_rss_bytes"].as_u64().expect("rss") > 1_000_000,
                "{engine} {name}: server memory not sampled"
            );
        }
        // The overload phase ran at three times the measured list rate and reported. (Whether
        // anything is shed depends on the machine; with the default limit of 1024 usually not.)
        let overload = &run["overload"];
        let capacity = overload["capacity_per_second"].as_f64().expect("capacity");
        let offered = overload["offered_per_second"].as_f64().expect("offered");
        assert!(
            capacity > 0.0 && (offered - 3.0 * capacity).abs() < 1.0,
            "{overload}"
        );
        let answered = overload["admitted"].as_u64().expect("admitted")
            + overload["refused"].as_u64().expect("refused");
        assert!(
            answered > 0,
            "{engine}: the overload phase made no call: {overload}"
        );
        assert_eq!(
            overload["errors"],
            serde_json::json!({}),
            "{engine}: {overload}"
        );
        assert!(
            overload["first_ok_after_ms"].as_f64().is_some(),
            "{overload}"
        );
        assert!(
            overload["recovery"]["calls"].as_u64().expect("calls") > 0,
            "{overload}"
        );
        assert!(overload["peak_rss_bytes"].as_u64().expect("rss") > 1_000_000);
        for field in ["start_empty_ms", "start_seeded_ms", "backlog_drain_secs"] {
            assert!(run[field].as_f64().expect(field) >= 0.0, "{engine} {field}");
        }
        for field in ["idle_rss_empty", "idle_rss_seeded", "peak_rss"] {
            assert!(
                run[field].as_u64().expect(field) > 1_000_000,
                "{engine} {field}"
            );
        }
    }

    let written = std::fs::read_to_string(&markdown).expect("markdown");
    assert!(written.starts_with("# Benchmarks\n<!-- load:begin -->\nMeasured "));
    assert!(
        written.ends_with("<!-- load:end -->\n## Analysis\nkept\n"),
        "{written}"
    );
    assert!(!written.contains("\nold\n"));
    assert!(written.contains("| get-entity |") && written.contains("### Targets"));
    assert!(written.contains("Overload: list-entities offered open-loop"));
    if let Some(url) = &postgres {
        // The database URL is redacted in the recorded command.
        assert!(!written.contains(url.as_str()), "the PostgreSQL URL leaked");
        assert!(written.contains("--postgres-url ***"));
    }
}
