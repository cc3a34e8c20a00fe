//! The worker under test: any command, run as `sh -c 'exec COMMAND'` in its own process group
//! (killed with the rig: `process::spawn_supervised`), N replicas, with the environment `rig up`
//! exports, stdout and stderr captured to files. Ready when our Pub/Sub service sees it open a
//! stream on, or pull, the raw subscription, or when it prints its ready line; one that is not
//! ready in time, or exits first, fails with the tail of its stderr. Every start, ready and exit
//! (with its code or signal) goes into the journal.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rig_verify::history::{Event, ReadyVia, WorkerExit, WorkerReady, WorkerStart};

use super::journal::Journal;
use crate::process::{log_tail, signal_group, spawn_supervised};

/// How much of a worker's stderr an error shows.
const STDERR_TAIL_BYTES: u64 = 3000;
/// A replica that exits on its own is started again (as its supervisor would) at most this
/// many times in a run.
pub const MAX_RESTARTS: u32 = 10;

/// Why the worker could not be run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Command(String),
    #[error("could not start the worker `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the worker `{}` (replica {}) exited before it was ready ({}); the last lines of its stderr ({}):\n{}",
        .0.command, .0.replica, .0.status, .0.stderr, .0.tail
    )]
    ExitedAtStart(Box<ExitedAtStart>),
    #[error(
        "the worker `{}` (replica {}) was not ready within {:?}: it neither opened a stream on nor pulled {}{}. Raise --ready-timeout if it starts slowly. The last lines of its stderr ({}):\n{}",
        .0.command, .0.replica, .0.waited, .0.subscription, .0.line, .0.stderr, .0.tail
    )]
    NotReady(Box<NotReady>),
}

/// A replica that exited before it was ready: what it was and what it said.
#[derive(Debug)]
pub struct ExitedAtStart {
    pub command: String,
    pub replica: u32,
    pub status: String,
    pub stderr: String,
    pub tail: String,
}

/// A replica that neither pulled nor printed its ready line in time.
#[derive(Debug)]
pub struct NotReady {
    pub command: String,
    pub replica: u32,
    pub waited: Duration,
    pub subscription: String,
    pub line: String,
    pub stderr: String,
    pub tail: String,
}

/// A worker command line that names something runnable.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    line: String,
}

/// Shell words that run the rest of the line (so the program is the next word).
const PREFIXES: &[&str] = &["exec", "env", "nice", "nohup", "setsid", "time", "command"];

impl WorkerCommand {
    /// Checks that the line's program exists (on PATH, or as a path from `workdir`) before
    /// anything is started, so that a typo is a clear error and not a worker that "dies at once".
    pub fn parse(line: &str, workdir: &Path) -> Result<Self, WorkerError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(WorkerError::Command(
                "--worker is empty: give the command that starts your worker, e.g. --worker 'php laravel/bin/worker.php'".into(),
            ));
        }
        let program = line
            .split_whitespace()
            .find(|word| !PREFIXES.contains(word) && !is_assignment(word))
            .map(|w| w.trim_matches(|c| c == '\'' || c == '"'))
            .unwrap_or_default();
        if program.is_empty() {
            return Err(WorkerError::Command(format!(
                "--worker `{line}` names no program to run"
            )));
        }
        // A shell construct (a subshell, a builtin, a pipeline's first word) is the shell's to
        // judge: it fails at start with the shell's own words if it is wrong.
        if program.contains(['(', ')', '{', '}', '$', '`', '|', ';', '&', '<', '>']) {
            return Ok(Self { line: line.into() });
        }
        let found = if program.contains('/') {
            let path = workdir.join(program);
            executable(&path).then_some(path)
        } else {
            on_path(program)
        };
        match found {
            Some(_) => Ok(Self { line: line.into() }),
            None if program.contains('/') => Err(WorkerError::Command(format!(
                "unknown command `{program}` in --worker `{line}`: {} is not an executable file",
                workdir.join(program).display()
            ))),
            None => Err(WorkerError::Command(format!(
                "unknown command `{program}` in --worker `{line}`: not found on PATH; give its full path, or install it"
            ))),
        }
    }

    pub fn line(&self) -> &str {
        &self.line
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

/// How every replica is started.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub command: WorkerCommand,
    /// Set on top of the rig's own environment.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Where `worker-N.stdout` and `worker-N.stderr` go.
    pub out: PathBuf,
    /// A line on stdout that says the worker is ready (`READY`), besides its first pull.
    pub ready_line: Option<String>,
    pub ready_timeout: Duration,
    /// The raw subscription, for error messages.
    pub subscription: String,
}

struct Replica {
    child: Option<Child>,
    /// Set by the stdout reader when the ready line goes by (one flag per start).
    ready_line: Arc<AtomicBool>,
    restarts: u32,
    /// The runner asked it to stop: its exit is expected.
    stopping: bool,
}

/// The replicas of the worker; each one's process group is killed when this drops.
pub struct Workers {
    spec: WorkerSpec,
    replicas: Vec<Replica>,
    journal: Journal,
}

impl Workers {
    pub fn new(spec: WorkerSpec, replicas: u32, journal: Journal) -> Self {
        Self {
            spec,
            replicas: (0..replicas.max(1))
                .map(|_| Replica {
                    child: None,
                    ready_line: Arc::new(AtomicBool::new(false)),
                    restarts: 0,
                    stopping: false,
                })
                .collect(),
            journal,
        }
    }

    pub fn count(&self) -> u32 {
        self.replicas.len() as u32
    }

    pub fn command(&self) -> &str {
        self.spec.command.line()
    }

    fn stdout_path(&self, replica: u32) -> PathBuf {
        self.spec.out.join(format!("worker-{replica}.stdout"))
    }

    pub fn stderr_path(&self, replica: u32) -> PathBuf {
        self.spec.out.join(format!("worker-{replica}.stderr"))
    }

    pub fn stderr_tail(&self, replica: u32) -> String {
        log_tail(&self.stderr_path(replica), STDERR_TAIL_BYTES)
    }

    /// Starts replica `replica`; returns when it started (wall clock, ms).
    pub fn spawn(&mut self, replica: u32) -> Result<u64, WorkerError> {
        let spawn_error = |source| WorkerError::Spawn {
            command: self.spec.command.line().to_string(),
            source,
        };
        let stderr = append(&self.stderr_path(replica)).map_err(spawn_error)?;
        let mut stdout_file = append(&self.stdout_path(replica)).map_err(spawn_error)?;
        let mut command = Command::new("sh");
        // `exec`: the worker itself leads the group and gets the signals, not a shell.
        command
            .arg("-c")
            .arg(format!("exec {}", self.spec.command.line()))
            .current_dir(&self.spec.workdir)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = spawn_supervised(command).map_err(spawn_error)?;
        let started = self.journal.record(Event::WorkerStart(WorkerStart {
            replica,
            pid: Some(child.id()),
        }));
        let flag = Arc::new(AtomicBool::new(false));
        if let Some(pipe) = child.stdout.take() {
            let ready_line = self.spec.ready_line.clone();
            let flag = flag.clone();
            // Copies stdout to its file and watches for the ready line; ends when the
            // worker's stdout closes.
            std::thread::Builder::new()
                .name(format!("worker-{replica}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        let _ = writeln!(stdout_file, "{line}");
                        if ready_line.as_deref().is_some_and(|r| line.trim() == r) {
                            flag.store(true, Ordering::SeqCst);
                        }
                    }
                })
                .map_err(spawn_error)?;
        }
        let r = &mut self.replicas[replica as usize];
        r.child = Some(child);
        r.ready_line = flag;
        r.stopping = false;
        Ok(started)
    }

    fn ready_line_seen(&self, replica: u32) -> bool {
        self.replicas[replica as usize]
            .ready_line
            .load(Ordering::SeqCst)
    }

    /// `Some(status)` once the replica has exited (it is then reaped and no longer running).
    fn reap(&mut self, replica: u32) -> Option<ExitStatus> {
        let r = &mut self.replicas[replica as usize];
        let status = r.child.as_mut()?.try_wait().ok().flatten()?;
        r.child = None;
        Some(status)
    }

    pub fn running(&self, replica: u32) -> bool {
        self.replicas[replica as usize].child.is_some()
    }

    fn record_exit(&self, replica: u32, status: ExitStatus, expected: bool) {
        self.journal.record(Event::WorkerExit(WorkerExit {
            replica,
            code: status.code(),
            signal: status.signal(),
            expected,
        }));
    }

    /// Replicas that exited on their own since the last look, with how (journalled as not
    /// expected).
    pub fn exited_on_their_own(&mut self) -> Vec<(u32, String)> {
        let mut exited = Vec::new();
        for replica in 0..self.count() {
            if self.replicas[replica as usize].stopping {
                continue;
            }
            if let Some(status) = self.reap(replica) {
                self.record_exit(replica, status, false);
                exited.push((replica, status.to_string()));
            }
        }
        exited
    }

    /// Whether a replica that exited on its own may be started again.
    pub fn may_restart(&mut self, replica: u32) -> bool {
        let r = &mut self.replicas[replica as usize];
        r.restarts += 1;
        r.restarts <= MAX_RESTARTS
    }

    /// SIGKILLs the replica's process group and reaps it.
    pub fn kill(&mut self, replica: u32) {
        let r = &mut self.replicas[replica as usize];
        let Some(mut child) = r.child.take() else {
            return;
        };
        let _ = signal_group(child.id(), libc::SIGKILL);
        if let Ok(status) = child.wait() {
            self.record_exit(replica, status, true);
        }
    }

    /// Asks the replica to stop cleanly: SIGTERM to its process group. Its exit is expected.
    pub fn terminate(&mut self, replica: u32) {
        let r = &mut self.replicas[replica as usize];
        r.stopping = true;
        if let Some(child) = &r.child {
            let _ = signal_group(child.id(), libc::SIGTERM);
        }
    }

    /// Reaps the replica if it has exited after a signal the runner sent.
    pub fn reap_expected(&mut self, replica: u32) -> bool {
        match self.reap(replica) {
            Some(status) => {
                self.record_exit(replica, status, true);
                true
            }
            None => !self.running(replica),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = signal_group(child.id(), libc::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// The replicas, shared between the fault schedule and the run's supervision.
pub type SharedWorkers = std::sync::Mutex<Workers>;

fn lock(workers: &SharedWorkers) -> std::sync::MutexGuard<'_, Workers> {
    workers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `replica` and waits until it is ready: our Pub/Sub service saw a stream opened on, or
/// a pull of, the raw subscription since it started (`pulled_since`), or it printed its ready
/// line. Journals the ready record.
pub async fn start_ready(
    workers: &SharedWorkers,
    replica: u32,
    pulled_since: impl Fn(u64) -> Option<ReadyVia>,
) -> Result<(), WorkerError> {
    let started_ms = lock(workers).spawn(replica)?;
    let (timeout, journal) = {
        let w = lock(workers);
        (w.spec.ready_timeout, w.journal.clone())
    };
    let started = Instant::now();
    loop {
        let via = {
            let w = lock(workers);
            w.ready_line_seen(replica)
                .then_some(ReadyVia::ReadyLine)
                .or_else(|| pulled_since(started_ms))
        };
        if let Some(via) = via {
            journal.record(Event::WorkerReady(WorkerReady { replica, via }));
            return Ok(());
        }
        let exited = {
            let mut w = lock(workers);
            let exited = w.reap(replica);
            if let Some(status) = exited {
                w.record_exit(replica, status, false);
            } else if started.elapsed() > timeout {
                w.kill(replica);
                return Err(WorkerError::NotReady(Box::new(NotReady {
                    command: w.command().to_string(),
                    replica,
                    waited: timeout,
                    subscription: w.spec.subscription.clone(),
                    line: w
                        .spec
                        .ready_line
                        .as_ref()
                        .map_or_else(String::new, |l| format!(" nor printed `{l}` on stdout")),
                    stderr: w.stderr_path(replica).display().to_string(),
                    tail: w.stderr_tail(replica),
                })));
            }
            exited
        };
        if let Some(status) = exited {
            // What it wrote last may still be on its way to the file.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let w = lock(workers);
            return Err(WorkerError::ExitedAtStart(Box::new(ExitedAtStart {
                command: w.command().to_string(),
                replica,
                status: status.to_string(),
                stderr: w.stderr_path(replica).display().to_string(),
                tail: w.stderr_tail(replica),
            })));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Stops `replica` the way a deployment does (SIGTERM to its group), waits up to `grace` for it
/// to exit, then SIGKILLs what is left.
pub async fn stop(workers: &SharedWorkers, replica: u32, grace: Duration) {
    lock(workers).terminate(replica);
    let started = Instant::now();
    while started.elapsed() < grace {
        if lock(workers).reap_expected(replica) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tracing::warn!("worker replica {replica} did not stop within {grace:?} of SIGTERM: SIGKILL");
    lock(workers).kill(replica);
}

pub fn kill(workers: &SharedWorkers, replica: u32) {
    lock(workers).kill(replica);
}

pub fn exited_on_their_own(workers: &SharedWorkers) -> Vec<(u32, String)> {
    lock(workers).exited_on_their_own()
}

pub fn may_restart(workers: &SharedWorkers, replica: u32) -> bool {
    lock(workers).may_restart(replica)
}

pub fn count(workers: &SharedWorkers) -> u32 {
    lock(workers).count()
}
