//! The report: one table per engine (each scenario with its ratio to the health-check baseline),
//! start-up and memory figures, the targets of the benchmarks issue with whether each was met, and
//! the machine the figures came from. Printed as Markdown (ready for BENCHMARKS.md) and written as
//! JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::scenario::{Load, Measured, Scenario};

const MIB: f64 = 1024.0 * 1024.0;
const BEGIN: &str = "<!-- load:begin -->";
const END: &str = "<!-- load:end -->";

/// Everything one engine's run measured.
#[derive(Debug, serde::Serialize)]
pub struct EngineRun {
    pub engine: String,
    pub scenarios: Vec<Measured>,
    /// Spawn to SERVING on the empty database, and on the seeded one after a restart.
    pub start_empty_ms: Option<f64>,
    pub start_seeded_ms: Option<f64>,
    /// Resident memory 1 s after start, idle: on the empty database and on the seeded one.
    pub idle_rss_empty: Option<u64>,
    pub idle_rss_seeded: Option<u64>,
    /// The server's peak resident memory over seeding and every scenario (`VmHWM`).
    pub peak_rss: Option<u64>,
    /// Seconds the engine took, after the last scenario, to finish the deployments the
    /// scenarios queued (`None`: not measured, or still not finished at the limit).
    pub backlog_drain_secs: Option<f64>,
    /// The overload phase, when it ran.
    pub overload: Option<crate::overload::Overloaded>,
}

impl EngineRun {
    pub fn new(engine: &str) -> EngineRun {
        EngineRun {
            engine: engine.into(),
            scenarios: Vec::new(),
            start_empty_ms: None,
            start_seeded_ms: None,
            idle_rss_empty: None,
            idle_rss_seeded: None,
            peak_rss: None,
            backlog_drain_secs: None,
            overload: None,
        }
    }

    pub fn push(&mut self, measured: Measured) {
        self.scenarios.push(measured);
    }

    pub fn scenario(&self, scenario: Scenario) -> Option<&Measured> {
        self.scenarios.iter().find(|m| m.scenario == scenario)
    }

    /// Throughput of `scenario` over the health-check baseline's.
    fn ratio(&self, scenario: Scenario) -> Option<f64> {
        let baseline = self.scenario(Scenario::Health)?.per_second;
        (baseline > 0.0).then(|| self.scenario(scenario).map(|m| m.per_second / baseline))?
    }
}

/// The machine, the settings and every engine's run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub callers: usize,
    pub connections: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub entities: usize,
    pub runs: Vec<EngineRun>,
}

impl Report {
    pub fn new(command: &str, load: Load, connections: usize, entities: usize) -> Report {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Report {
            date: today(),
            command: command.into(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
                .unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .map_or(0.0, |kib| kib / MIB),
            callers: load.callers,
            connections,
            warmup_secs: load.warmup.as_secs_f64(),
            duration_secs: load.duration.as_secs_f64(),
            entities,
            runs: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} on {} ({} cores, {:.0} GiB), client and server on the same machine, with\n`{}`: {} callers over {} connections, {} s warm-up then {} s measured per scenario, {} catalog entities.\n",
            self.date,
            self.cpu,
            self.cores,
            self.memory_gib,
            self.command,
            self.callers,
            self.connections,
            self.warmup_secs,
            self.duration_secs,
            self.entities,
        );
        for run in &self.runs {
            let _ = writeln!(out, "### {}\n", run.engine);
            let _ = writeln!(
                out,
                "| scenario | calls/s | × health | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | server RSS MiB, peak (anonymous) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|");
            for m in &run.scenarios {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} ({}) |",
                    m.scenario.name(),
                    m.per_second,
                    run.ratio(m.scenario)
                        .map_or("–".into(), |r| format!("{r:.2}")),
                    m.p50_ms,
                    m.p90_ms,
                    m.p99_ms,
                    m.p999_ms,
                    errors(m),
                    mib(m.peak_rss_bytes),
                    mib(m.peak_rss_anon_bytes),
                );
            }
            let _ = writeln!(
                out,
                "\n{} Start to SERVING: {} ms on the empty database, {} ms on the seeded one. Idle RSS: {} MiB empty, {} MiB seeded; peak RSS over the run (seeding included): {} MiB.\n",
                match run.backlog_drain_secs {
                    Some(secs) => format!("The engine finished the deployments the scenarios had queued {secs:.0} s after the last one; then the server was restarted."),
                    None => "The engine had not finished the deployments the scenarios queued within the load generator's limit, so the seeded restart (and its idle figure) includes that work.".to_owned(),
                },
                float(run.start_empty_ms),
                float(run.start_seeded_ms),
                mib(run.idle_rss_empty),
                mib(run.idle_rss_seeded),
                mib(run.peak_rss),
            );
            if let Some(o) = &run.overload {
                let _ = writeln!(
                    out,
                    "Overload: {} offered open-loop at {:.0}/s ({}× the {:.0}/s measured above) for {:.0} s. \
                     Admitted {} (p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms); refused with RESOURCE_EXHAUSTED {} \
                     (p50 {:.2} ms, p99 {:.2} ms); other errors: {}; not sent by the generator: {}. \
                     Server RSS {} MiB before, {} MiB peak. After the load stopped, the first call was served in {} ms \
                     and the next second ran {:.0}/s, p99 {:.2} ms, errors {}.\n",
                    o.scenario.name(),
                    o.offered_per_second,
                    o.factor,
                    o.capacity_per_second,
                    o.seconds,
                    o.admitted,
                    o.admitted_p50_ms,
                    o.admitted_p99_ms,
                    o.admitted_max_ms,
                    o.refused,
                    o.refused_p50_ms,
                    o.refused_p99_ms,
                    error_counts(&o.errors),
                    o.not_sent,
                    mib(o.rss_before_bytes),
                    mib(o.peak_rss_bytes),
                    o.first_ok_after_ms
                        .map_or("–".into(), |v| format!("{v:.1}")),
                    o.recovery.per_second,
                    o.recovery.p99_ms,
                    errors(&o.recovery),
                );
            }
        }
        if !self.runs.is_empty() {
            out.push_str(&self.targets());
        }
        out
    }

    /// The targets of the benchmarks issue, each with every engine's figure.
    fn targets(&self) -> String {
        type Check = (&'static str, fn(&EngineRun) -> Option<(String, bool)>);
        let checks: [Check; 6] = [
            (
                "Authorized GetEntity ≥ 60% of health-check throughput",
                |run| {
                    let r = run.ratio(Scenario::GetEntity)?;
                    Some((format!("{:.0}%", r * 100.0), r >= 0.6))
                },
            ),
            (
                "CreateDeployment ≥ 2,000/s with p99 ≤ 20 ms (32 callers)",
                |run| {
                    let m = run.scenario(Scenario::CreateDeployment)?;
                    Some((
                        format!("{:.0}/s, p99 {:.1} ms", m.per_second, m.p99_ms),
                        m.per_second >= 2000.0 && m.p99_ms <= 20.0,
                    ))
                },
            ),
            ("Filtered List over 100,000 entities p99 ≤ 20 ms", |run| {
                let m = run.scenario(Scenario::ListEntities)?;
                Some((format!("p99 {:.1} ms", m.p99_ms), m.p99_ms <= 20.0))
            }),
            ("Idle RSS ≤ 50 MB", |run| {
                let rss = run.idle_rss_empty?.max(run.idle_rss_seeded.unwrap_or(0)) as f64;
                Some((format!("{:.0} MB", rss / 1e6), rss <= 50e6))
            }),
            ("RSS ≤ 300 MB serving the mixed workload", |run| {
                let mixed = run.scenario(Scenario::Mixed)?;
                let rss = mixed.peak_rss_bytes? as f64;
                let anon = mixed.peak_rss_anon_bytes.unwrap_or(0) as f64;
                Some((
                    format!("{:.0} MB ({:.0} MB anonymous)", rss / 1e6, anon / 1e6),
                    rss <= 300e6,
                ))
            }),
            ("Start to SERVING ≤ 500 ms on the seeded database", |run| {
                let ms = run.start_seeded_ms?;
                Some((format!("{ms:.0} ms"), ms <= 500.0))
            }),
        ];
        let mut out = String::from("### Targets\n\n| target |");
        for run in &self.runs {
            let _ = write!(out, " {} |", run.engine);
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(self.runs.len()));
        out.push('\n');
        for (target, check) in checks {
            let _ = write!(out, "| {target} |");
            for run in &self.runs {
                let cell = match check(run) {
                    Some((figure, true)) => format!("{figure}: met"),
                    Some((figure, false)) => format!("{figure}: **missed**"),
                    None => "not measured".into(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }
}

/// Writes `generated` into `path` between the markers if the file has them (keeping the
/// hand-written text around them), else as the whole file.
pub fn write_markdown(path: &Path, generated: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let content = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{BEGIN}\n{generated}{}",
            &existing[..begin],
            &existing[end..]
        ),
        _ => format!("{BEGIN}\n{generated}{END}\n"),
    };
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// One line per scenario for the progress output.
pub fn summary_line(m: &Measured) -> String {
    format!(
        "{:<18} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
        m.scenario.name(),
        m.per_second,
        m.p50_ms,
        m.p99_ms,
        errors(m)
    )
}

/// One line for the overload phase's progress output.
pub fn overload_line(o: &crate::overload::Overloaded) -> String {
    format!(
        "overload ×{} {:>9.0}/s offered: admitted {} (p99 {:.2} ms), refused {} (p99 {:.2} ms), other {}",
        o.factor,
        o.offered_per_second,
        o.admitted,
        o.admitted_p99_ms,
        o.refused,
        o.refused_p99_ms,
        error_counts(&o.errors)
    )
}

fn errors(m: &Measured) -> String {
    error_counts(&m.errors)
}

fn error_counts(errors: &std::collections::BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| format!("{:.0}", b as f64 / MIB))
}

fn float(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.0}"))
}

/// Today's date (UTC) as `YYYY-MM-DD`, the date part of a protobuf `Timestamp`'s RFC 3339 form.
fn today() -> String {
    let rfc3339 = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
    rfc3339.get(..10).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_keep_the_hand_written_text() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("B.md");
        std::fs::write(&path, format!("# Head\n{BEGIN}\nold\n{END}\n## Analysis\n")).expect("w");
        write_markdown(&path, "new\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("r"),
            format!("# Head\n{BEGIN}\nnew\n{END}\n## Analysis\n")
        );
        let fresh = dir.path().join("C.md");
        write_markdown(&fresh, "only\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&fresh).expect("r"),
            format!("{BEGIN}\nonly\n{END}\n")
        );
    }

    #[test]
    fn today_is_a_plausible_date() {
        let date = today();
        assert_eq!(date.len(), 10);
        assert!(date.as_str() > "2024-01-01", "{date}");
    }
}
