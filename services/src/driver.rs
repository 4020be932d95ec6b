//! Step drivers: run one step (provision, deploy or teardown) of an environment and say how it
//! ended.
//!
//! The deployment engine decides *what* to run and resolves everything first (program, argument
//! list, the complete environment, secrets, limits) into a [`StepRequest`]; a [`Driver`] only
//! runs it, streams its output as [`LogLine`]s and returns a [`StepOutcome`]. Keeping resolution
//! out of here keeps this layer small enough to reason about the parts that are easy to get
//! wrong:
//!
//! - **Nothing leaks into the child.** The program is executed directly (no shell to re-parse
//!   arguments), with an empty environment plus exactly the one given, stdin closed, and — the
//!   default — a fresh temporary working directory that is removed when the step ends.
//! - **Nothing outlives the step.** The child leads its own process group, so a timeout or a
//!   cancellation signals the whole group (SIGTERM, a grace period, then SIGKILL) and reaches
//!   grandchildren that a shell script left behind; processes still in the group when the
//!   program exits are stopped the same way. `kill_on_drop` covers the leader if the step future
//!   is dropped midway.
//! - **Output is safe to show and cannot exhaust memory.** Pipes are read in fixed-size chunks
//!   and a line is buffered only up to the line limit; every line has its secrets masked
//!   *before* it is cut (and a secret cut in half at the limit is masked too), invalid UTF-8
//!   becomes U+FFFD and control characters are escaped, so a step cannot forge terminal output.
//! - **A slow or absent log consumer never wedges a step.** Output lines wait for the consumer
//!   (back-pressure on the child, bounded by the step timeout); once the receiver is gone the
//!   pipes are still drained so the child never blocks on a full pipe. System lines are sent with
//!   a short timeout so they can never delay a kill.
//!
//! The trait returns a boxed `'static` future so drivers can be held as `Arc<dyn Driver>` and the
//! step can run on its own task.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Bytes read from a pipe at a time; the unit of memory a reader holds besides one line.
const READ_CHUNK: usize = 8 * 1024;
/// What a line buffer starts with, so that a large line limit costs nothing until used.
const INITIAL_LINE_CAPACITY: usize = 1024;
/// How often the process group is checked for survivors during the grace period.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long to wait for a SIGKILLed leader to be reaped before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long the pipes may stay open after the process group is gone. A process that left the
/// group (e.g. via `setsid`) can hold them open forever; we stop reading rather than hang.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A system line is informational: never let a stalled consumer hold up the step for it.
const SYSTEM_LINE_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Stands in for a secret in every log line.
const MASK: &str = "***";

/// Which kind of step is run; drivers only use it to label logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Provision,
    Deploy,
    Teardown,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Provision => "provision",
            Self::Deploy => "deploy",
            Self::Teardown => "teardown",
        })
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by the driver itself (started, timed out, cancelled, ...).
    System,
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        })
    }
}

/// One line of output, already masked, escaped and cut to the line limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
    /// The line was longer than the limit and `text` holds only its start.
    pub truncated: bool,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The exit status of the program, when it exited by itself (even after a SIGTERM).
    pub exit_code: Option<i32>,
    /// The signal that killed the program, when one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// A one-line summary for people, e.g. "exited with status 0".
    pub message: String,
}

impl StepOutcome {
    /// The program ran to completion with status 0, and nobody stopped it.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.cancelled && !self.timed_out
    }

    /// A step that never ran a program (no such step, an input that cannot be had, …).
    pub fn not_run(message: impl Into<String>) -> Self {
        Self {
            exit_code: None,
            signal: None,
            timed_out: false,
            cancelled: false,
            message: message.into(),
        }
    }
}

/// A command to run, with everything already resolved by the caller.
#[derive(Clone)]
pub struct CommandStep {
    /// A path, or a name looked up in the `PATH` of `env` (absolute paths are safest).
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment of the child: it inherits nothing else from platformd.
    pub env: BTreeMap<String, String>,
    /// `None`: a fresh temporary directory for this run, removed afterwards.
    pub working_directory: Option<PathBuf>,
    /// From the start of the program until the process group is told to stop.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL to the process group.
    pub termination_grace: Duration,
    /// Values shown as `***` in every log line. A value spanning several lines is masked line by
    /// line, since output is masked one line at a time.
    pub secrets: Vec<String>,
    /// Longer lines are cut (at a character boundary) and flagged truncated.
    pub max_line_bytes: usize,
}

impl CommandStep {
    /// A step running `program` with no arguments, an empty environment, a temporary working
    /// directory, a 30 minute timeout, a 10 second grace period and 16 KiB lines.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_directory: None,
            timeout: Duration::from_secs(30 * 60),
            termination_grace: Duration::from_secs(10),
            secrets: Vec::new(),
            max_line_bytes: 16 * 1024,
        }
    }
}

// By hand: the derived form would print environment values and secrets into any log that
// formats a step. Arguments are counted only, as they may carry credentials too.
impl fmt::Debug for CommandStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStep")
            .field("program", &self.program)
            .field("args", &format_args!("<{} redacted>", self.args.len()))
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("working_directory", &self.working_directory)
            .field("timeout", &self.timeout)
            .field("termination_grace", &self.termination_grace)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("max_line_bytes", &self.max_line_bytes)
            .finish()
    }
}

/// One step for one environment.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub kind: StepKind,
    pub environment: String,
    pub command: CommandStep,
    /// Told the process id (= process group id) once the program has started, so the caller
    /// can record it: after a crash of platformd, the worker taking over stops what is left.
    pub started: Option<mpsc::UnboundedSender<u32>>,
}

/// Runs steps. `log` receives the output as it is produced (in order per stream); `cancel`
/// turning `true` stops the step. A dropped `cancel` sender means the step can no longer be
/// cancelled, not that it is.
pub trait Driver: Send + Sync {
    fn run_step(
        &self,
        step: StepRequest,
        log: mpsc::Sender<LogLine>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'static, StepOutcome>;
}

/// Runs nothing: waits `delay` and succeeds. For environments without real infrastructure and
/// for exercising the engine.
#[derive(Debug, Clone, Default)]
pub struct NoopDriver {
    pub delay: Duration,
}

impl Driver for NoopDriver {
    fn run_step(
        &self,
        step: StepRequest,
        log: mpsc::Sender<LogLine>,
        mut cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'static, StepOutcome> {
        let delay = self.delay;
        Box::pin(async move {
            let reporter = Reporter::new(log, Arc::new(Renderer::new(&[], usize::MAX)));
            reporter
                .system(format!(
                    "noop: {} step for environment {}",
                    step.kind, step.environment
                ))
                .await;
            let cancelled = *cancel.borrow() || {
                tokio::select! {
                    () = tokio::time::sleep(delay) => false,
                    () = cancellation(&mut cancel) => true,
                }
            };
            let outcome = if cancelled {
                StepOutcome {
                    cancelled: true,
                    ..StepOutcome::not_run("noop: cancelled".to_owned())
                }
            } else {
                StepOutcome {
                    exit_code: Some(0),
                    ..StepOutcome::not_run("noop: succeeded".to_owned())
                }
            };
            reporter.system(&outcome.message).await;
            outcome
        })
    }
}

/// Runs the step's [`CommandStep`] as a child process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandDriver;

impl Driver for CommandDriver {
    fn run_step(
        &self,
        step: StepRequest,
        log: mpsc::Sender<LogLine>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'static, StepOutcome> {
        Box::pin(run_command(step, log, cancel))
    }
}

async fn run_command(
    request: StepRequest,
    log: mpsc::Sender<LogLine>,
    mut cancel: watch::Receiver<bool>,
) -> StepOutcome {
    let StepRequest {
        kind,
        environment,
        command: step,
        started: started_tx,
    } = request;
    let renderer = Arc::new(Renderer::new(&step.secrets, step.max_line_bytes));
    let reporter = Reporter::new(log.clone(), Arc::clone(&renderer));

    if *cancel.borrow() {
        let outcome = StepOutcome {
            cancelled: true,
            ..StepOutcome::not_run("cancelled: not started".to_owned())
        };
        reporter.system(&outcome.message).await;
        return outcome;
    }

    let (workdir, temp) = match &step.working_directory {
        Some(dir) => (dir.clone(), None),
        None => match tempfile::Builder::new().prefix("platformd-step-").tempdir() {
            Ok(temp) => (temp.path().to_path_buf(), Some(temp)),
            Err(err) => {
                let outcome =
                    StepOutcome::not_run(format!("failed to create working directory: {err}"));
                reporter.system(&outcome.message).await;
                return outcome;
            }
        },
    };

    let outcome = supervise(
        &step,
        &workdir,
        &log,
        &reporter,
        &mut cancel,
        started_tx.as_ref(),
    )
    .await;
    tracing::info!(
        step = %kind,
        environment = %environment,
        exit_code = ?outcome.exit_code,
        signal = ?outcome.signal,
        timed_out = outcome.timed_out,
        cancelled = outcome.cancelled,
        "step process finished"
    );

    if let Some(temp) = temp {
        // Removing a checkout can take a while: keep it off the async workers, but wait for it
        // so the directory is gone when the step is reported done.
        let removed = tokio::task::spawn_blocking(move || temp.close()).await;
        let failure = match removed {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(err) => Some(err.to_string()),
        };
        if let Some(err) = failure {
            tracing::warn!(error = %err, "could not remove a step's temporary working directory");
            reporter
                .system(format!(
                    "could not remove the temporary working directory: {err}"
                ))
                .await;
        }
    }

    reporter.system(&outcome.message).await;
    outcome
}

/// Why the wait for the program ended.
enum Ending {
    Exited(io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Starts the program, streams its output and stops it when asked or out of time.
async fn supervise(
    step: &CommandStep,
    workdir: &Path,
    log: &mpsc::Sender<LogLine>,
    reporter: &Reporter,
    cancel: &mut watch::Receiver<bool>,
    started_tx: Option<&mpsc::UnboundedSender<u32>>,
) -> StepOutcome {
    let mut command = Command::new(&step.program);
    command
        .args(&step.args)
        .env_clear()
        .envs(&step.env)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that one signal reaches everything the program starts.
        .process_group(0)
        // Last resort if this future is dropped: reaches the leader only.
        .kill_on_drop(true);

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return StepOutcome::not_run(format!("failed to start: {err}")),
    };
    let started = Instant::now();
    // The group id is the leader's pid. Never 1 or less: `kill(-1)` would signal every process
    // we may signal, and 0 our own group.
    let pid = child.id();
    if let (Some(tx), Some(pid)) = (started_tx, pid) {
        let _ = tx.send(pid);
    }
    let group = pid
        .and_then(|id| i32::try_from(id).ok())
        .filter(|&id| id > 1)
        .and_then(Pid::from_raw);

    let mut readers = JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(pump(
            stdout,
            LogStream::Stdout,
            log.clone(),
            Arc::clone(&reporter.renderer),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(pump(
            stderr,
            LogStream::Stderr,
            log.clone(),
            Arc::clone(&reporter.renderer),
        ));
    }

    let shown_program = reporter.renderer.mask(&step.program, false);
    tracing::info!(program = %shown_program, pid = ?pid, "step process started");
    let shown_pid = pid.map_or_else(|| "unknown".to_owned(), |id| id.to_string());
    reporter
        .system(format!("started program {shown_program} (pid {shown_pid})"))
        .await;

    let deadline = started.checked_add(step.timeout).unwrap_or_else(far_future);
    let ending = tokio::select! {
        biased;
        status = child.wait() => Ending::Exited(status),
        () = cancellation(cancel) => Ending::Cancelled,
        () = tokio::time::sleep_until(deadline) => Ending::TimedOut,
    };

    let grace = step.termination_grace;
    let (status, timed_out, cancelled) = match ending {
        Ending::Exited(status) => {
            if status.is_err() || group_alive(group) {
                // Background processes must not outlive the step (nor hold its pipes open).
                let _ = terminate_group(
                    &mut child,
                    group,
                    grace,
                    "the program exited but left processes in its process group",
                    reporter,
                )
                .await;
            }
            (status, false, false)
        }
        Ending::TimedOut => {
            tracing::warn!(timeout = ?step.timeout, "step timed out");
            let reason = format!("timed out after {:?}", step.timeout);
            let status = terminate_group(&mut child, group, grace, &reason, reporter).await;
            (status, true, false)
        }
        Ending::Cancelled => {
            tracing::info!("step cancelled");
            let status = terminate_group(&mut child, group, grace, "cancelled", reporter).await;
            (status, false, true)
        }
    };

    let drained = tokio::time::timeout(PIPE_DRAIN_TIMEOUT, async {
        while readers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        readers.abort_all();
        tracing::warn!("step output pipes still open after the process group ended");
        reporter
            .system(format!(
                "stopped reading output: the pipes were still open {PIPE_DRAIN_TIMEOUT:?} after \
                 the process group ended (a process outside the group may hold them)"
            ))
            .await;
    }

    outcome_of(status, timed_out, cancelled, step.timeout)
}

fn outcome_of(
    status: io::Result<ExitStatus>,
    timed_out: bool,
    cancelled: bool,
    timeout: Duration,
) -> StepOutcome {
    let (exit_code, signal, ended) = match &status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (Some(code), None, format!("exited with status {code}")),
            (None, Some(sig)) => (None, Some(sig), format!("killed by signal {sig}")),
            (None, None) => (None, None, format!("ended with {status}")),
        },
        Err(err) => (None, None, format!("failed to wait for the process: {err}")),
    };
    let message = if timed_out {
        format!("timed out after {timeout:?}")
    } else if cancelled {
        "cancelled: process group killed".to_owned()
    } else {
        ended
    };
    StepOutcome {
        exit_code,
        signal,
        timed_out,
        cancelled,
        message,
    }
}

/// SIGTERM to the whole group; once the leader and the rest of the group are gone, or
/// `grace` is over, SIGKILL to whatever is left. Returns the leader's exit status.
async fn terminate_group(
    child: &mut Child,
    group: Option<Pid>,
    grace: Duration,
    reason: &str,
    reporter: &Reporter,
) -> io::Result<ExitStatus> {
    // Signal first, report second: a slow log consumer must not delay the signal.
    signal_group(child, group, Signal::TERM);
    reporter
        .system(format!("{reason}: sent SIGTERM to the process group"))
        .await;

    let deadline = Instant::now().checked_add(grace).unwrap_or_else(far_future);
    let status = tokio::time::timeout_at(deadline, child.wait()).await.ok();
    // The leader may be gone while its children are still shutting down: give them the grace
    // period too.
    while group_alive(group) && Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL_INTERVAL).await;
    }
    if status.is_none() || group_alive(group) {
        signal_group(child, group, Signal::KILL);
        reporter
            .system(format!(
                "still running after {grace:?}: sent SIGKILL to the process group"
            ))
            .await;
    }
    match status {
        Some(status) => status,
        None => match tokio::time::timeout(KILL_WAIT, child.wait()).await {
            Ok(status) => status,
            Err(_) => Err(io::Error::other("the process did not exit after SIGKILL")),
        },
    }
}

fn signal_group(child: &mut Child, group: Option<Pid>, signal: Signal) {
    match group {
        Some(group) => {
            if let Err(err) = rustix::process::kill_process_group(group, signal)
                && err != rustix::io::Errno::SRCH
            {
                tracing::warn!(error = %err, "could not signal a step's process group");
            }
        }
        // Without a group id only the leader can be reached.
        None => {
            if let Err(err) = child.start_kill() {
                tracing::warn!(error = %err, "could not kill a step's process");
            }
        }
    }
}

/// Whether any process of the group still exists (zombies included).
fn group_alive(group: Option<Pid>) -> bool {
    group.is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok())
}

fn far_future() -> Instant {
    // About 30 years, like tokio's own "never".
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Resolves when `cancel` turns true. A dropped sender can no longer cancel: never resolves.
async fn cancellation(cancel: &mut watch::Receiver<bool>) {
    let sender_gone = cancel.wait_for(|cancelled| *cancelled).await.is_err();
    if sender_gone {
        std::future::pending::<()>().await;
    }
}

/// Reads one pipe to its end, sending each line in order.
async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: LogStream,
    log: mpsc::Sender<LogLine>,
    renderer: Arc<Renderer>,
) {
    let mut splitter = LineSplitter::new(renderer.max_line_bytes);
    let mut chunk = vec![0_u8; READ_CHUNK];
    let mut pending = Vec::new();
    // Once the receiver is gone, keep reading (so the child never blocks on a full pipe) but
    // stop rendering and sending.
    let mut open = true;
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(error = %err, %stream, "could not read a step's output");
                pending.push(renderer.system(&format!("stopped reading {stream}: {err}")));
                break;
            }
        };
        splitter.push(chunk.get(..read).unwrap_or_default(), |raw, cut| {
            if open {
                pending.push(renderer.line(stream, raw, cut));
            }
        });
        open = deliver(&log, &mut pending, open).await;
    }
    // A last line without a newline is still a line.
    splitter.finish(|raw, cut| {
        if open {
            pending.push(renderer.line(stream, raw, cut));
        }
    });
    deliver(&log, &mut pending, open).await;
}

/// Sends the pending lines in order; returns whether the receiver is still there.
async fn deliver(log: &mpsc::Sender<LogLine>, pending: &mut Vec<LogLine>, mut open: bool) -> bool {
    for line in pending.drain(..) {
        if open && log.send(line).await.is_err() {
            open = false;
        }
    }
    open
}

/// Sends the driver's own lines, masked like any other.
struct Reporter {
    log: mpsc::Sender<LogLine>,
    renderer: Arc<Renderer>,
}

impl Reporter {
    fn new(log: mpsc::Sender<LogLine>, renderer: Arc<Renderer>) -> Self {
        Self { log, renderer }
    }

    async fn system(&self, text: impl AsRef<str>) {
        if self.log.is_closed() {
            return;
        }
        let line = self.renderer.system(text.as_ref());
        if let Err(mpsc::error::SendTimeoutError::Timeout(_)) =
            self.log.send_timeout(line, SYSTEM_LINE_SEND_TIMEOUT).await
        {
            tracing::warn!("log consumer stalled; dropped a system log line");
        }
    }
}

/// Splits a byte stream into lines on `\n`, holding at most `limit` bytes of a line: the rest of
/// an overlong line is discarded up to its newline, so memory stays bounded whatever the child
/// writes.
struct LineSplitter {
    line: Vec<u8>,
    limit: usize,
    /// Bytes of the current line were discarded.
    cut: bool,
}

impl LineSplitter {
    fn new(max_line_bytes: usize) -> Self {
        // One byte over the limit so that a line of exactly the limit keeps its `\r`.
        let limit = max_line_bytes.saturating_add(1);
        Self {
            line: Vec::with_capacity(limit.min(INITIAL_LINE_CAPACITY)),
            limit,
            cut: false,
        }
    }

    /// Feeds a chunk; `emit(line, cut)` gets each complete line without its `\n` (nor a `\r`
    /// before it).
    fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while let Some(newline) = chunk.iter().position(|&byte| byte == b'\n') {
            let (head, rest) = chunk.split_at(newline);
            self.append(head);
            self.emit(&mut emit);
            chunk = rest.get(1..).unwrap_or_default();
        }
        self.append(chunk);
    }

    /// Emits what is left after the end of the stream, if anything.
    fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.line.is_empty() || self.cut {
            self.emit(&mut emit);
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.line.len());
        let (kept, dropped) = bytes.split_at(room.min(bytes.len()));
        self.line.extend_from_slice(kept);
        self.cut |= !dropped.is_empty();
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        let mut line = self.line.as_slice();
        if !self.cut {
            line = line.strip_suffix(b"\r").unwrap_or(line);
        }
        emit(line, self.cut);
        // `clear` keeps the allocation for the next line.
        self.line.clear();
        self.cut = false;
    }
}

/// Turns raw output into text that is safe to show: secrets masked, invalid UTF-8 replaced,
/// control characters escaped, at most `max_line_bytes` long.
struct Renderer {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<String>,
    max_line_bytes: usize,
}

impl Renderer {
    fn new(secrets: &[String], max_line_bytes: usize) -> Self {
        // Output is masked a line at a time, so a multi-line secret is masked line by line.
        let mut pieces: Vec<String> = secrets
            .iter()
            .flat_map(|secret| secret.split('\n'))
            .map(|piece| piece.strip_suffix('\r').unwrap_or(piece))
            .filter(|piece| !piece.is_empty())
            .map(str::to_owned)
            .collect();
        pieces.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        pieces.dedup();
        Self {
            secrets: pieces,
            max_line_bytes,
        }
    }

    fn line(&self, stream: LogStream, raw: &[u8], cut: bool) -> LogLine {
        let raw = if cut {
            // A character split at the cut would become U+FFFD and hide a secret's prefix from
            // `mask`: drop it.
            raw.get(..raw.len() - incomplete_utf8_tail(raw))
                .unwrap_or_default()
        } else {
            raw
        };
        let text = String::from_utf8_lossy(raw);
        let (text, truncated) = escape(&self.mask(&text, cut), self.max_line_bytes);
        LogLine {
            stream,
            text,
            truncated: truncated || cut,
        }
    }

    fn system(&self, text: &str) -> LogLine {
        let (text, truncated) = escape(&self.mask(text, false), self.max_line_bytes);
        LogLine {
            stream: LogStream::System,
            text,
            truncated,
        }
    }

    /// Replaces every secret by `***`. When the line was `cut`, a secret may have been split by
    /// the cut: an ending that is the start of a secret is masked too.
    fn mask(&self, text: &str, cut: bool) -> String {
        let mut masked = text.to_owned();
        for secret in &self.secrets {
            if masked.contains(secret.as_str()) {
                masked = masked.replace(secret.as_str(), MASK);
            }
        }
        if cut {
            let partial = self
                .secrets
                .iter()
                .filter_map(|secret| {
                    (1..secret.len())
                        .rev()
                        .filter(|&end| secret.is_char_boundary(end))
                        .find(|&end| masked.ends_with(&secret[..end]))
                })
                .max();
            if let Some(partial) = partial {
                masked.truncate(masked.len() - partial);
                masked.push_str(MASK);
            }
        }
        masked
    }
}

/// Escapes control characters other than tab as `\xNN` and stops before `max_bytes` would be
/// exceeded (never inside a character or an escape). Returns the text and whether it was cut.
fn escape(text: &str, max_bytes: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            // Every `Cc` character is below U+00A0, so two hex digits suffice.
            if out.len() + 4 > max_bytes {
                return (out, true);
            }
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            if out.len() + c.len_utf8() > max_bytes {
                return (out, true);
            }
            out.push(c);
        }
    }
    (out, false)
}

/// How many bytes at the end of `bytes` are the start of a multi-byte character whose rest is
/// missing.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper bound for anything a test waits on; only reached when something is broken.
    const PATIENCE: Duration = Duration::from_secs(60);
    /// How long a killed process may take to disappear on a loaded machine.
    const GONE_WITHIN: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> CommandStep {
        let mut step = CommandStep::new("/bin/sh");
        step.args = vec!["-c".to_owned(), script.to_owned()];
        step.env = BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
        step.timeout = PATIENCE;
        step.termination_grace = Duration::from_secs(2);
        step
    }

    fn request(command: CommandStep) -> StepRequest {
        StepRequest {
            kind: StepKind::Deploy,
            environment: "test-env".to_owned(),
            command,
            started: None,
        }
    }

    /// A cancel receiver whose sender is gone: the step can no longer be cancelled.
    fn no_cancel() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    async fn run_with(
        driver: &dyn Driver,
        step: CommandStep,
        cancel: watch::Receiver<bool>,
    ) -> (StepOutcome, Vec<LogLine>) {
        let (tx, mut rx) = mpsc::channel(16);
        let collector = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(line) = rx.recv().await {
                lines.push(line);
            }
            lines
        });
        let outcome = tokio::time::timeout(PATIENCE, driver.run_step(request(step), tx, cancel))
            .await
            .expect("the step ends");
        let lines = tokio::time::timeout(PATIENCE, collector)
            .await
            .expect("the log channel closes")
            .expect("the collector does not panic");
        (outcome, lines)
    }

    async fn run(step: CommandStep) -> (StepOutcome, Vec<LogLine>) {
        run_with(&CommandDriver, step, no_cancel()).await
    }

    fn texts(lines: &[LogLine], stream: LogStream) -> Vec<&str> {
        lines
            .iter()
            .filter(|line| line.stream == stream)
            .map(|line| line.text.as_str())
            .collect()
    }

    /// Waits for a script to write a pid into `path`.
    async fn read_pid(path: &Path) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no pid in {}", path.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gone, or a zombie: dead, just not reaped (reaping orphans is init's job, not ours).
    fn dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    async fn wait_dead(pid: i32) -> bool {
        let deadline = Instant::now() + GONE_WITHIN;
        while !dead(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    #[tokio::test]
    async fn success_captures_both_streams_in_order() {
        let (outcome, lines) = run(sh(
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'crlf\\r\\n'; \
             printf 'no newline'",
        ))
        .await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.message, "exited with status 0");
        assert_eq!(
            texts(&lines, LogStream::Stdout),
            ["out1", "out2", "crlf", "no newline"]
        );
        assert_eq!(texts(&lines, LogStream::Stderr), ["err1", "err2"]);
        let system = texts(&lines, LogStream::System);
        assert!(
            system[0].starts_with("started program /bin/sh (pid "),
            "{system:?}"
        );
        assert_eq!(system.last(), Some(&"exited with status 0"));
        assert!(lines.iter().all(|line| !line.truncated));
    }

    #[tokio::test]
    async fn nonzero_exit_is_reported() {
        let (outcome, _) = run(sh("echo failing >&2; exit 3")).await;
        assert_eq!(outcome.exit_code, Some(3));
        assert_eq!(outcome.signal, None);
        assert!(!outcome.succeeded());
        assert_eq!(outcome.message, "exited with status 3");
    }

    #[tokio::test]
    async fn death_by_signal_is_reported() {
        let (outcome, _) = run(sh("kill -KILL $$")).await;
        assert_eq!(outcome.exit_code, None);
        assert_eq!(outcome.signal, Some(9));
        assert_eq!(outcome.message, "killed by signal 9");
        assert!(!outcome.succeeded());
    }

    #[tokio::test]
    async fn invalid_utf8_and_control_characters_are_made_safe() {
        let (outcome, lines) = run(sh(
            r"printf 'a\377b\033[31mred\tz\r\n'; printf 'nul\000x\rcr\n'",
        ))
        .await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            texts(&lines, LogStream::Stdout),
            ["a\u{FFFD}b\\x1b[31mred\tz", "nul\\x00x\\x0dcr"]
        );
    }

    #[tokio::test]
    async fn huge_line_is_truncated() {
        let mut step = sh("head -c 1000000 /dev/zero | tr '\\0' a; echo; echo after");
        step.max_line_bytes = 4096;
        let (outcome, lines) = run(step).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        let stdout: Vec<&LogLine> = lines
            .iter()
            .filter(|line| line.stream == LogStream::Stdout)
            .collect();
        assert_eq!(stdout.len(), 2);
        assert!(stdout[0].truncated);
        assert_eq!(stdout[0].text.len(), 4096);
        assert!(stdout[0].text.bytes().all(|byte| byte == b'a'));
        assert_eq!(stdout[1].text, "after");
        assert!(!stdout[1].truncated);
    }

    #[test]
    fn a_line_without_newline_uses_bounded_memory() {
        let limit = 1000;
        let mut splitter = LineSplitter::new(limit);
        let chunk = [b'x'; READ_CHUNK];
        let mut emitted = Vec::new();
        for _ in 0..(1 << 20) / READ_CHUNK {
            splitter.push(&chunk, |raw, cut| emitted.push((raw.len(), cut)));
            assert!(splitter.line.len() <= limit + 1);
            assert!(splitter.line.capacity() <= 2 * (limit + 1));
        }
        assert!(emitted.is_empty(), "no newline yet");
        splitter.push(b"tail\nnext", |raw, cut| emitted.push((raw.len(), cut)));
        splitter.finish(|raw, cut| emitted.push((raw.len(), cut)));
        assert_eq!(emitted, [(limit + 1, true), (4, false)]);
    }

    #[test]
    fn lines_are_cut_at_character_boundaries() {
        let renderer = Renderer::new(&[], 5);
        let line = renderer.line(LogStream::Stdout, "ééé".as_bytes(), false);
        assert_eq!((line.text.as_str(), line.truncated), ("éé", true));
        // An escape is never split either.
        let line = renderer.line(LogStream::Stdout, b"ab\x1bc", false);
        assert_eq!((line.text.as_str(), line.truncated), ("ab", true));
        let line = renderer.line(LogStream::Stdout, b"abcde", false);
        assert_eq!((line.text.as_str(), line.truncated), ("abcde", false));
    }

    #[test]
    fn a_secret_split_by_the_line_limit_is_masked() {
        let secret = "s3cr3t-välue".to_owned();
        let renderer = Renderer::new(std::slice::from_ref(&secret), 12);
        let mut splitter = LineSplitter::new(12);
        let mut lines = Vec::new();
        // Cut inside the secret, and inside its two-byte 'ä'.
        for raw in [
            "abc s3cr3t-välue\n",
            "abcdefghi s3cr3t\n",
            "abcdefg s3cr3t-välue\n",
        ] {
            splitter.push(raw.as_bytes(), |raw, cut| {
                lines.push(renderer.line(LogStream::Stdout, raw, cut));
            });
        }
        let shown: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
        assert_eq!(shown, ["abc ***", "abcdefghi **", "abcdefg ***"]);
        assert!(lines.iter().all(|line| !line.text.contains("s3")));
    }

    #[tokio::test]
    async fn secrets_are_masked_everywhere() {
        let mut step = sh(
            "echo \"token=$TOKEN\"; echo \"$TOKEN\" >&2; echo 'key: line-two-of-key'; \
             printf '%s' \"$TOKEN$TOKEN$TOKEN\"",
        );
        step.env
            .insert("TOKEN".to_owned(), "hunter2-secret".to_owned());
        step.secrets = vec![
            "hunter2-secret".to_owned(),
            "line-one\nline-two-of-key".to_owned(),
            String::new(), // an empty secret must not mask everything
        ];
        step.max_line_bytes = 20;
        let (outcome, lines) = run(step).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            texts(&lines, LogStream::Stdout),
            ["token=***", "key: ***", "******"]
        );
        assert_eq!(texts(&lines, LogStream::Stderr), ["***"]);
        assert!(
            lines
                .iter()
                .all(|line| !line.text.contains("hunter") && !line.text.contains("line-two")),
            "{lines:?}"
        );
    }

    #[test]
    fn debug_output_redacts_env_values_and_secrets() {
        let mut step = CommandStep::new("/bin/deploy");
        step.args = vec!["--password=hunter2".to_owned()];
        step.env.insert("API_KEY".to_owned(), "hunter2".to_owned());
        step.secrets = vec!["hunter2".to_owned()];
        let shown = format!("{:?}", request(step));
        assert!(shown.contains("API_KEY"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn the_environment_is_exactly_the_given_one() {
        assert!(
            std::env::vars_os().next().is_some(),
            "the test process has an environment to leak"
        );
        let mut step = CommandStep::new("/usr/bin/env");
        step.env = BTreeMap::from([("ONLY_THIS".to_owned(), "1".to_owned())]);
        let (outcome, lines) = run(step).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(texts(&lines, LogStream::Stdout), ["ONLY_THIS=1"]);
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let mut step = sh("sleep 1000 & echo $! > \"$PID_FILE\"; wait");
        step.env.insert(
            "PID_FILE".to_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        // Long enough for the script to start its grandchild even on a loaded machine.
        step.timeout = Duration::from_secs(3);
        let (outcome, lines) = run(step).await;
        assert!(outcome.timed_out);
        assert!(!outcome.succeeded());
        assert_eq!(outcome.message, "timed out after 3s");
        assert_eq!(outcome.signal, Some(15), "{outcome:?}");
        let system = texts(&lines, LogStream::System);
        assert!(
            system.contains(&"timed out after 3s: sent SIGTERM to the process group"),
            "{system:?}"
        );
        let grandchild = read_pid(&pid_file).await;
        assert!(wait_dead(grandchild).await, "pid {grandchild} survived");
    }

    #[tokio::test]
    async fn sigterm_ignored_escalates_to_sigkill() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        // The pid is written once the trap is set, so the test signals only after that.
        let mut step = sh("trap '' TERM; echo $$ > \"$PID_FILE\"; sleep 1000; sleep 1000");
        step.env.insert(
            "PID_FILE".to_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        step.termination_grace = Duration::from_millis(500);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let running = tokio::spawn(async move { run_with(&CommandDriver, step, cancel_rx).await });
        read_pid(&pid_file).await;
        cancel_tx.send(true).expect("the step is listening");
        let (outcome, lines) = running.await.expect("the step does not panic");
        assert!(outcome.cancelled);
        assert_eq!(outcome.signal, Some(9), "{outcome:?}");
        let system = texts(&lines, LogStream::System);
        assert!(
            system
                .iter()
                .any(|line| line.ends_with("sent SIGKILL to the process group")),
            "{system:?}"
        );
    }

    #[tokio::test]
    async fn cancel_kills_the_grandchild_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let mut step = sh("sleep 1000 & echo $! > \"$PID_FILE\"; wait");
        step.env.insert(
            "PID_FILE".to_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let running = tokio::spawn(async move { run_with(&CommandDriver, step, cancel_rx).await });
        let grandchild = read_pid(&pid_file).await;
        assert!(!dead(grandchild));
        cancel_tx.send(true).expect("the step is listening");
        let (outcome, _) = running.await.expect("the step does not panic");
        assert!(outcome.cancelled);
        assert!(!outcome.timed_out);
        assert!(!outcome.succeeded());
        assert_eq!(outcome.message, "cancelled: process group killed");
        assert!(wait_dead(grandchild).await, "pid {grandchild} survived");
    }

    #[tokio::test]
    async fn processes_left_behind_are_stopped_when_the_program_exits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let mut step = sh("sleep 1000 & echo $! > \"$PID_FILE\"; echo done");
        step.env.insert(
            "PID_FILE".to_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        let (outcome, lines) = run(step).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(texts(&lines, LogStream::Stdout), ["done"]);
        let leftover = read_pid(&pid_file).await;
        assert!(wait_dead(leftover).await, "pid {leftover} survived");
    }

    #[tokio::test]
    async fn a_process_outside_the_group_holding_the_pipes_does_not_hang_the_step() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("pid");
        let mut step = sh("setsid sh -c 'echo $$ > \"$PID_FILE\"; exec sleep 1000' & \
             while [ ! -s \"$PID_FILE\" ]; do sleep 0.05; done; echo bye");
        step.env.insert(
            "PID_FILE".to_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        let (outcome, lines) = run(step).await;
        let escaped = read_pid(&pid_file).await;
        // Ours to clean up: it left the group on purpose, so the driver could not reach it.
        let _ = rustix::process::kill_process(
            Pid::from_raw(escaped).expect("a real pid"),
            Signal::KILL,
        );
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(texts(&lines, LogStream::Stdout), ["bye"]);
        assert!(
            texts(&lines, LogStream::System)
                .iter()
                .any(|line| line.starts_with("stopped reading output")),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_log_receiver_does_not_block_the_child() {
        // Far more than a pipe buffer holds, on both streams.
        let step =
            sh("head -c 2000000 /dev/zero | tr '\\0' '\\n'; head -c 300000 /dev/zero >&2; exit 0");
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let outcome = tokio::time::timeout(
            PATIENCE,
            CommandDriver.run_step(request(step), tx, no_cancel()),
        )
        .await
        .expect("the step ends");
        assert!(outcome.succeeded(), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_missing_or_non_executable_program_fails_to_start() {
        let (outcome, lines) = run(CommandStep::new("/nonexistent/deploy-tool")).await;
        assert_eq!(outcome.exit_code, None);
        assert!(!outcome.succeeded());
        assert!(
            outcome.message.starts_with("failed to start: "),
            "{outcome:?}"
        );
        assert_eq!(
            texts(&lines, LogStream::System).last(),
            Some(&outcome.message.as_str())
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write script");
        let (outcome, _) = run(CommandStep::new(script.to_string_lossy())).await;
        assert_eq!(outcome.exit_code, None);
        assert!(
            outcome.message.starts_with("failed to start: "),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn the_default_working_directory_is_a_fresh_temp_dir_removed_afterwards() {
        let (outcome, lines) = run(sh("pwd; touch made-here")).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        let stdout = texts(&lines, LogStream::Stdout);
        let workdir = PathBuf::from(stdout[0]);
        let temp_root = std::env::temp_dir()
            .canonicalize()
            .expect("temp dir exists");
        assert!(workdir.starts_with(&temp_root), "{workdir:?}");
        assert!(!workdir.exists(), "{workdir:?} was not removed");
    }

    #[tokio::test]
    async fn a_given_working_directory_is_used_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut step = sh("pwd; touch made-here");
        step.working_directory = Some(dir.path().to_path_buf());
        let (outcome, lines) = run(step).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        let expected = dir.path().canonicalize().expect("dir exists");
        assert_eq!(
            texts(&lines, LogStream::Stdout),
            [expected.to_string_lossy()]
        );
        assert!(dir.path().join("made-here").exists());
    }

    #[tokio::test]
    async fn a_step_cancelled_before_it_starts_does_not_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("ran");
        let mut step = sh("touch \"$MARKER\"");
        step.env
            .insert("MARKER".to_owned(), marker.to_string_lossy().into_owned());
        let (_cancel_tx, cancel_rx) = watch::channel(true);
        let (outcome, _) = run_with(&CommandDriver, step, cancel_rx).await;
        assert!(outcome.cancelled);
        assert!(!outcome.succeeded());
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn noop_succeeds_after_its_delay() {
        let driver = NoopDriver {
            delay: Duration::from_millis(10),
        };
        let (outcome, lines) = run_with(&driver, CommandStep::new("unused"), no_cancel()).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(outcome.message, "noop: succeeded");
        assert_eq!(
            texts(&lines, LogStream::System).last(),
            Some(&"noop: succeeded")
        );
    }

    #[tokio::test]
    async fn noop_ends_early_when_cancelled() {
        let driver = NoopDriver {
            delay: Duration::from_secs(3600),
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let running =
            tokio::spawn(
                async move { run_with(&driver, CommandStep::new("unused"), cancel_rx).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel_tx.send(true).expect("the step is listening");
        let (outcome, _) = running.await.expect("the step does not panic");
        assert!(outcome.cancelled);
        assert!(!outcome.succeeded());
    }

    #[test]
    fn success_requires_status_zero_and_no_interruption() {
        let ok = StepOutcome {
            exit_code: Some(0),
            ..StepOutcome::not_run(String::new())
        };
        assert!(ok.succeeded());
        assert!(
            !StepOutcome {
                timed_out: true,
                ..ok.clone()
            }
            .succeeded()
        );
        assert!(
            !StepOutcome {
                cancelled: true,
                ..ok.clone()
            }
            .succeeded()
        );
        assert!(!StepOutcome::not_run(String::new()).succeeded());
    }
}
