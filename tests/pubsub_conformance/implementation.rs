//! The Pub/Sub implementations the suite runs against, and how each is reached.
//!
//! Google's emulator is a JVM that takes seconds to start. Under `cargo test` all trials run in
//! one process and share one emulator, started with the rig's own code. Under nextest every
//! trial is its own process; starting a JVM for each would cost a minute on two cores, so the
//! first trial of a run starts one emulator for the whole run, under a watchdog that kills it
//! as soon as the nextest process (the trials' parent) is gone. Isolation comes from a unique
//! project id (or, against GCP, unique resource names) per check, never from the process.

// The shared emulator's watchdog and lock need getppid, pre_exec and flock, which std does
// not offer. Each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rig_harness::process::Service;
use rig_harness::services::pubsub_emulator;

/// One implementation of the Pub/Sub v1 API, as it names itself in trial names, JSON and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// Our own service (`rig/pubsub-service`).
    OurService,
    /// Google's emulator from the Cloud CLI.
    GoogleEmulator,
    /// Real Pub/Sub, only when pointed at a project with credentials (`RIG_TARGET=env`).
    Gcp,
}

impl Implementation {
    pub const ALL: [Implementation; 3] = [
        Implementation::OurService,
        Implementation::GoogleEmulator,
        Implementation::Gcp,
    ];

    /// The trial-name prefix and the JSON file name.
    pub fn id(self) -> &'static str {
        match self {
            Implementation::OurService => "pubsub_service",
            Implementation::GoogleEmulator => "google_emulator",
            Implementation::Gcp => "gcp",
        }
    }

    /// A behaviour this implementation gets wrong fails the run only where the implementation
    /// is ours or the reference itself. Google's emulator getting it wrong is its divergence.
    pub fn failure_is_divergence(self) -> bool {
        self == Implementation::GoogleEmulator
    }

    pub fn is_local(self) -> bool {
        self != Implementation::Gcp
    }

    /// The same implementation as the rest of the rig names it.
    pub fn rig_name(self) -> rig_events::pubsub::PubsubImplementation {
        match self {
            Implementation::OurService => rig_events::pubsub::PubsubImplementation::PubsubService,
            Implementation::GoogleEmulator => {
                rig_events::pubsub::PubsubImplementation::GoogleEmulator
            }
            Implementation::Gcp => rig_events::pubsub::PubsubImplementation::Google,
        }
    }
}

/// Where checks reach an implementation.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`, or `None` for pubsub.googleapis.com.
    pub url: Option<String>,
    /// The project every check of a real-GCP run works in; local runs make one per check.
    pub gcp_project: Option<String>,
}

/// What keeps a started implementation alive: dropped when the harness ends.
pub enum Running {
    OurService(#[allow(dead_code)] pubsub_service::RunningService),
    Emulator(
        #[allow(dead_code)] Service,
        #[allow(dead_code)] tempfile::TempDir,
    ),
    SharedEmulator,
    Remote,
}

/// The emulator's version as its jar names it (`0.8.20`), for reports.
pub fn emulator_version() -> Option<String> {
    let jar = pubsub_emulator::locate_jar().ok()?;
    let name = jar.file_stem()?.to_str()?.to_string();
    name.strip_prefix("cloud-pubsub-emulator-")
        .map(|v| v.trim_end_matches("-all").to_string())
}

/// Whether this run should also go to real Pub/Sub, the way the rest of the rig is pointed at
/// GCP: `RIG_TARGET=env` (or `gcp`) with `GOOGLE_CLOUD_PROJECT` set and no
/// `PUBSUB_EMULATOR_HOST` (credentials come from Application Default Credentials).
pub fn gcp_project_from_env() -> Option<String> {
    let target = std::env::var("RIG_TARGET").ok()?;
    if target != "gcp" && target != "env" {
        return None;
    }
    if std::env::var("PUBSUB_EMULATOR_HOST").is_ok_and(|h| !h.is_empty()) {
        return None;
    }
    std::env::var("GOOGLE_CLOUD_PROJECT")
        .ok()
        .filter(|p| !p.is_empty())
}

pub async fn start(implementation: Implementation) -> Result<(Running, Endpoint), String> {
    match implementation {
        Implementation::GoogleEmulator => {
            if let Ok(run_id) = std::env::var("NEXTEST_RUN_ID") {
                let port = tokio::task::spawn_blocking(move || shared_emulator(&run_id))
                    .await
                    .map_err(|e| format!("starting the shared emulator: {e}"))??;
                Ok((
                    Running::SharedEmulator,
                    Endpoint {
                        url: Some(format!("http://127.0.0.1:{port}")),
                        gcp_project: None,
                    },
                ))
            } else {
                let java = pubsub_emulator::locate_java().map_err(|e| e.to_string())?;
                let jar = pubsub_emulator::locate_jar().map_err(|e| e.to_string())?;
                let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
                let http = reqwest::Client::new();
                let (service, port) = pubsub_emulator::start(&java, &jar, dir.path(), &http)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    Running::Emulator(service, dir),
                    Endpoint {
                        url: Some(format!("http://127.0.0.1:{port}")),
                        gcp_project: None,
                    },
                ))
            }
        }
        Implementation::OurService => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let service = pubsub_service::PubsubService::start(addr)
                .await
                .map_err(|e| format!("starting our Pub/Sub service on {addr}: {e}"))?;
            let endpoint = Endpoint {
                url: Some(service.endpoint()),
                gcp_project: None,
            };
            Ok((Running::OurService(service), endpoint))
        }
        Implementation::Gcp => {
            let project = gcp_project_from_env().ok_or(
                "real Pub/Sub needs RIG_TARGET=env, GOOGLE_CLOUD_PROJECT, no PUBSUB_EMULATOR_HOST and Application Default Credentials",
            )?;
            Ok((
                Running::Remote,
                Endpoint {
                    url: None,
                    gcp_project: Some(project),
                },
            ))
        }
    }
}

/// The port of the emulator this nextest run shares, starting it if this trial is the first.
fn shared_emulator(run_id: &str) -> Result<u16, String> {
    let dir = std::env::temp_dir().join(format!("rig-pubsub-conformance-{run_id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let _held = Flock::exclusive(&lock)?;
    let port_file = dir.join("port");
    if let Some(port) = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    {
        return Ok(port);
    }
    // SAFETY: getppid has no preconditions.
    let runner = unsafe { libc::getppid() };
    if runner <= 1 {
        return Err("the test runner is gone; not starting a shared emulator".into());
    }
    let java = pubsub_emulator::locate_java().map_err(|e| e.to_string())?;
    let jar = pubsub_emulator::locate_jar().map_err(|e| e.to_string())?;
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = rig_harness::services::free_port().map_err(|e| format!("free port: {e}"))?;
        match start_watched(&dir, runner, &java, &jar, port) {
            Ok(()) => {
                std::fs::write(&port_file, port.to_string())
                    .map_err(|e| format!("{}: {e}", port_file.display()))?;
                return Ok(port);
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Starts the emulator under a shell watchdog that kills it (and removes `dir`) once the
/// `runner` process exits, or after an hour at most.
fn start_watched(
    dir: &Path,
    runner: i32,
    java: &Path,
    jar: &Path,
    port: u16,
) -> Result<(), String> {
    const WATCHDOG: &str = r#"
runner="$1"; java="$2"; jar="$3"; port="$4"; dir="$5"
"$java" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto -jar "$jar" --host=127.0.0.1 --port="$port" &
emulator=$!
waited=0
while kill -0 "$runner" 2>/dev/null && kill -0 "$emulator" 2>/dev/null && [ "$waited" -lt 7200 ]; do
    sleep 0.5; waited=$((waited + 1))
done
kill -9 "$emulator" 2>/dev/null
wait "$emulator" 2>/dev/null
rm -rf "$dir"
"#;
    let log_path = dir.join(format!("emulator-{port}.log"));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(runner.to_string())
        .arg(java)
        .arg(jar)
        .arg(port.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: nextest's clean-up of this trial must not take it down.
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the emulator's watchdog: {e}"))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the Pub/Sub emulator exited during start-up ({status}); log {}:\n{}",
                log_path.display(),
                rig_harness::process::log_tail(&log_path, 2000)
            ));
        }
        if emulator_answers(port) {
            // The watchdog is nobody's child once this trial exits; it ends with the runner.
            std::mem::forget(child);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the process group we just created.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    Err(format!(
        "the Pub/Sub emulator did not answer within 90 s; log {}:\n{}",
        log_path.display(),
        rig_harness::process::log_tail(&log_path, 2000)
    ))
}

/// The emulator answers REST once it is ready for admin calls (the gRPC port opens earlier).
fn emulator_answers(port: u16) -> bool {
    use std::io::Read as _;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /v1/projects/rig-readiness/topics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// An advisory lock held until dropped: it orders trials of one run that start the emulator.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> Result<Self, String> {
        // SAFETY: flock(2) on a descriptor we own for the lifetime of the guard.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("lock: {}", std::io::Error::last_os_error()));
        }
        Ok(Self(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
