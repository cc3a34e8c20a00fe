//! Child processes that cannot outlive the rig.
//!
//! Three layers make orphans impossible in practice:
//! - every child runs in its own process group, and [`Service`]'s `Drop` kills that group and
//!   waits for it, so dropping an environment (or unwinding from a panic) stops everything;
//! - every child is spawned with `PR_SET_PDEATHSIG = SIGKILL` from one dedicated thread that lives
//!   as long as the rig's process, so even a SIGKILLed or aborted rig takes its children with it
//!   (the signal fires when the *spawning thread* ends, which is why spawning happens on a thread
//!   that never ends rather than on a runtime worker thread that may be retired);
//! - the rig's binaries turn SIGINT/SIGTERM into an orderly drop.

// Process supervision needs the system calls std does not offer: PR_SET_PDEATHSIG between
// fork and exec, and killing a whole process group. Each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("rig-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static, so this loop only ends with the process.
                loop {
                    std::thread::park();
                }
            })
            .expect("the OS refused to start the rig's spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `command` in its own process group with `PR_SET_PDEATHSIG = SIGKILL`, from the rig's
/// spawner thread (see the module docs): the child cannot outlive the rig. The caller sets
/// stdin/stdout/stderr; whoever holds the [`Child`] must kill its group when done (as
/// [`Service`] does on drop, and the verify runner's workers).
pub fn spawn_supervised(mut command: Command) -> std::io::Result<Child> {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "the rig exited while starting a child",
                ));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send((command, tx))
        .map_err(|_| std::io::Error::other("the rig's spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the rig's spawner thread is gone"))?
}

/// What started a [`Service`], kept so that it can be started again the same way.
struct Recipe {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    envs: Vec<(OsString, Option<OsString>)>,
}

impl Recipe {
    fn of(command: &Command) -> Self {
        Self {
            program: command.get_program().to_owned(),
            args: command.get_args().map(OsStr::to_owned).collect(),
            dir: command.get_current_dir().map(Path::to_path_buf),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned)))
                .collect(),
        }
    }

    fn command(&self, keep_arg: &dyn Fn(&OsStr) -> bool) -> Command {
        let mut command = Command::new(&self.program);
        command.args(self.args.iter().filter(|a| keep_arg(a)));
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        for (k, v) in &self.envs {
            match v {
                Some(v) => command.env(k, v),
                None => command.env_remove(k),
            };
        }
        command
    }
}

/// A running child process with its log, killed (with its whole process group) on drop.
pub struct Service {
    name: String,
    child: Child,
    log_path: PathBuf,
    recipe: Recipe,
    /// The child was waited for: its pid (and so its group id) may belong to someone else now.
    reaped: bool,
}

impl Service {
    /// Starts `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, command: Command, log_path: &Path) -> std::io::Result<Self> {
        let log = File::create(log_path)?;
        let recipe = Recipe::of(&command);
        let child = Self::start(command, log)?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            recipe,
            reaped: false,
        })
    }

    fn start(mut command: Command, log: File) -> std::io::Result<Child> {
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn_supervised(command)
    }

    /// SIGKILLs the process group (the service crashes: nothing it has not written survives).
    pub fn kill(&mut self) -> std::io::Result<()> {
        if !self.reaped {
            signal_group(self.child.id(), libc::SIGKILL)?;
        }
        self.child.wait()?;
        self.reaped = true;
        Ok(())
    }

    /// Starts the command again, as first spawned but for the arguments `keep_arg` refuses
    /// (a one-time `--init-file`), with its output appended to the same log. A process still
    /// running is killed first. The caller waits until it answers.
    pub fn respawn(&mut self, keep_arg: &dyn Fn(&OsStr) -> bool) -> std::io::Result<()> {
        if self.exited().is_none() {
            self.kill()?;
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log_path)?;
        self.child = Self::start(self.recipe.command(keep_arg), log)?;
        self.reaped = false;
        Ok(())
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) the process group: a frozen service keeps its
    /// connections open and answers nothing.
    pub fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        if self.reaped {
            return Err(std::io::Error::other(format!(
                "{} is not running",
                self.name
            )));
        }
        signal_group(
            self.child.id(),
            if frozen { libc::SIGSTOP } else { libc::SIGCONT },
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `Some(status)` when the child has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Kills the child's whole process group now, from a shared reference: for a rig that is
    /// interrupted while other threads still hold its backbone. `Drop` still reaps it.
    pub fn kill_group(&self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }

    /// The last `max_bytes` of the child's log, for error messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log_path, max_bytes)
    }
}

/// The last `max_bytes` of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_else(|e| format!("(log {} unreadable: {e})", path.display()))
}

impl Drop for Service {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = signal_group(self.child.id(), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process with this pid exists (zombies count as gone for our purposes only after
/// their parent reaped them; [`Service`] always reaps).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Sends `signal` to the process group led by `pid` (a child spawned with
/// [`spawn_supervised`] leads its own group, so this reaches what it started too).
pub fn signal_group(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pgid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("pid {pid} is out of range")))?;
    // SAFETY: kill(2) takes plain integers; no memory is involved.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to the process `pid`: to a worker or a service the
/// caller started.
pub fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("pid {pid} is out of range")))?;
    // SAFETY: kill(2) takes plain integers; no memory is involved.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
