//! The Docker side of the containers target: whether an engine answers, the images (built from
//! this repository's files by `compose/images.sh`, once), the labels every container carries,
//! and the two nets under "no container outlives its rig":
//! - a *reaper*: one small detached shell per rig process that waits for that process to end —
//!   however it ends: return, panic, SIGTERM, SIGKILL — and then removes every container
//!   labelled with its run (testcontainers' own cleanup runs only on `Drop`);
//! - a *sweep* at every start that removes what a rig on this host left behind when the reaper
//!   itself could not run (a reboot, a killed reaper).
//!
//! Parallel rigs (nextest runs each test in its own process) never touch each other's
//! containers: each process has its own run id, and the sweep only removes containers whose
//! owning process is gone.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Every container the rig starts carries these labels.
pub const LABEL_RUN: &str = "backbone-rig.run";
pub const LABEL_PID: &str = "backbone-rig.pid";
pub const LABEL_HOST: &str = "backbone-rig.host";
pub const LABEL_SERVICE: &str = "backbone-rig.service";

/// Selects the Pub/Sub implementation, with the values the local target takes.
pub const PUBSUB_CHOICE: &str = "RIG_PUBSUB";

/// This process's run id: all containers it starts are labelled with it.
pub fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// This machine's name, so that a sweep on a shared engine only judges its own host's rigs.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The labels of a container of `service` started by this process.
pub fn labels(service: &str) -> Vec<(String, String)> {
    vec![
        (LABEL_RUN.into(), run_id().into()),
        (LABEL_PID.into(), std::process::id().to_string()),
        (LABEL_HOST.into(), host_name()),
        (LABEL_SERVICE.into(), service.into()),
    ]
}

fn docker() -> Command {
    let mut command =
        Command::new(std::env::var_os("RIG_DOCKER").unwrap_or_else(|| "docker".into()));
    command.stdin(Stdio::null());
    command
}

/// Runs a short docker command with a time limit; its stdout, or why it failed.
fn docker_output(args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = docker()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run `docker`: {e} (install the Docker CLI, or set RIG_DOCKER)")
        })?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`docker {}` did not answer within {limit:?}",
                    args.join(" ")
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The engine's version when a Docker engine answers, else why not (for loud skips and `auto`).
pub fn engine_version() -> Result<String, String> {
    static ANSWER: OnceLock<Result<String, String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            docker_output(
                &["version", "--format", "{{.Server.Version}}"],
                Duration::from_secs(10),
            )
            .map_err(|e| format!("no Docker engine answers ({e})"))
        })
        .clone()
}

/// Which Pub/Sub the containers target runs: our own service unless `RIG_PUBSUB` asks for
/// Google's emulator, as on the local target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubsubImage {
    /// Google's Pub/Sub emulator (the local Cloud SDK's jar on Java from Debian).
    Emulator,
    /// This repository's own Pub/Sub service (`rig/pubsub-service`).
    Service,
}

impl PubsubImage {
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(PUBSUB_CHOICE).as_deref() {
            Err(_) | Ok("") | Ok("pubsub-service") => Ok(PubsubImage::Service),
            Ok("google-emulator") => Ok(PubsubImage::Emulator),
            Ok(other) => anyhow::bail!(
                "{PUBSUB_CHOICE}={other}: expected `google-emulator` (Google's Pub/Sub emulator) or `pubsub-service` (rig/pubsub-service)"
            ),
        }
    }

    fn images_arg(self) -> &'static str {
        match self {
            PubsubImage::Emulator => "pubsub-emulator",
            PubsubImage::Service => "pubsub-service",
        }
    }
}

/// The images the containers target runs, as `repository:tag`.
#[derive(Debug, Clone)]
pub struct Images {
    pub mysql: String,
    pub fake_gcs: String,
    pub pubsub: String,
    pub pubsub_kind: PubsubImage,
}

/// Where `compose/` is (its scripts build the images): in this repository, or `RIG_COMPOSE_DIR`.
pub fn compose_dir() -> PathBuf {
    std::env::var_os("RIG_COMPOSE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| rig_topology::repository_root().join("compose"))
}

/// The images, built by `compose/images.sh` when their tag is missing (the first run on a machine
/// takes a few minutes; later runs find every tag and build nothing).
pub fn ensure_images(pubsub: PubsubImage) -> anyhow::Result<Images> {
    // One build at a time per process: parallel backbones in one test binary share the result.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let script = compose_dir().join("images.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(["mysql", "fake-gcs", pubsub.images_arg()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} failed ({}): see its message above; it needs a Docker engine, root or sudo and debootstrap for the Debian base (`./x install`)",
            script.display(),
            output.status
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{} printed no {name} line", script.display()))
    };
    Ok(Images {
        mysql: get("RIG_MYSQL_IMAGE")?,
        fake_gcs: get("RIG_FAKE_GCS_IMAGE")?,
        pubsub: get(match pubsub {
            PubsubImage::Emulator => "RIG_PUBSUB_EMULATOR_IMAGE",
            PubsubImage::Service => "RIG_PUBSUB_SERVICE_IMAGE",
        })?,
        pubsub_kind: pubsub,
    })
}

/// `repository[:tag]` split for testcontainers (a registry's `host:port/` is part of the name).
pub fn split_image(image: &str) -> (String, String) {
    let name_end = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_end..].rfind(':') {
        Some(i) => (
            image[..name_end + i].to_string(),
            image[name_end + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// Starts this process's reaper once: it outlives the process (its own session, no death
/// signal) and removes the run's containers as soon as the process is gone.
pub fn ensure_reaper() -> anyhow::Result<()> {
    static REAPER: OnceLock<Result<(), String>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            use std::os::unix::process::CommandExt;
            // A zombie still answers `kill -0`: its state line says Z.
            let script = r#"
pid="$1"; label="$2"; docker="$3"
while kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 1
done
ids="$("$docker" ps -aq --filter "label=$label")"
[ -z "$ids" ] || "$docker" rm -f -v $ids >/dev/null 2>&1
"#;
            Command::new("sh")
                .args(["-c", script, "backbone-rig-reaper"])
                .arg(std::process::id().to_string())
                .arg(format!("{LABEL_RUN}={}", run_id()))
                .arg(std::env::var_os("RIG_DOCKER").unwrap_or_else(|| "docker".into()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: Ctrl-C in a terminal must not stop it with the rig.
                .process_group(0)
                .spawn()
                .map(|_| ())
                .map_err(|e| format!("starting the container reaper (sh): {e}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A container a rig on this host started, whose rig is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    pub id: String,
    pub pid: u32,
    pub service: String,
}

/// Which of `docker ps` lines (`ID PID HOST SERVICE`) are abandoned: on this host, owner dead.
pub fn abandoned(listing: &str, this_host: &str, alive: impl Fn(u32) -> bool) -> Vec<Abandoned> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?;
            let pid = fields.next()?.parse::<u32>().ok()?;
            let host = fields.next()?;
            let service = fields.next().unwrap_or("?");
            (host == this_host && !alive(pid)).then(|| Abandoned {
                id: id.to_string(),
                pid,
                service: service.to_string(),
            })
        })
        .collect()
}

/// Removes the containers of rigs on this host that are gone; returns how many.
pub fn remove_abandoned() -> anyhow::Result<usize> {
    let format = format!(
        "{{{{.ID}}}} {{{{.Label \"{LABEL_PID}\"}}}} {{{{.Label \"{LABEL_HOST}\"}}}} {{{{.Label \"{LABEL_SERVICE}\"}}}}"
    );
    let listing = docker_output(
        &[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL_PID}"),
            "--format",
            &format,
        ],
        Duration::from_secs(20),
    )
    .map_err(|e| anyhow::anyhow!("listing the rig's containers: {e}"))?;
    let gone = abandoned(&listing, &host_name(), crate::process::process_alive);
    if gone.is_empty() {
        return Ok(0);
    }
    for container in &gone {
        tracing::info!(
            "removing container {} ({}) left by a rig that is gone (pid {})",
            container.id,
            container.service,
            container.pid
        );
    }
    let mut args = vec!["rm", "-f", "-v"];
    args.extend(gone.iter().map(|c| c.id.as_str()));
    match docker_output(&args, Duration::from_secs(60)) {
        Ok(_) => {}
        // Two rigs starting at once sweep the same leftovers: the other one's removal is as
        // good as ours.
        Err(e) if removed_by_someone_else(&e) => {}
        Err(e) => anyhow::bail!("removing abandoned containers: {e}"),
    }
    Ok(gone.len())
}

/// Whether every complaint of `docker rm` is that a container is already being removed or
/// already gone.
fn removed_by_someone_else(stderr: &str) -> bool {
    let mut lines = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .peekable();
    lines.peek().is_some()
        && lines.all(|l| l.contains("is already in progress") || l.contains("No such container"))
}

/// The containers this process's run still has (for tests and `rig up`'s listing).
pub fn containers_of_run(run: &str) -> anyhow::Result<Vec<String>> {
    let listing = docker_output(
        &["ps", "-aq", "--filter", &format!("label={LABEL_RUN}={run}")],
        Duration::from_secs(20),
    )
    .map_err(|e| anyhow::anyhow!("listing containers of run {run}: {e}"))?;
    Ok(listing.lines().map(str::to_string).collect())
}

/// The last `lines` lines of a container's output, for failure reports.
pub fn log_tail(id: &str, lines: usize) -> String {
    let mut command = docker();
    command.args(["logs", "--tail", &lines.to_string(), id]);
    match command.output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("(docker logs failed: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_racing_another_rig_counts_its_removals_as_done() {
        let racing = "Error response from daemon: removal of container 1c6420c12695 is already in progress\nError response from daemon: No such container: dcdc2c78fc12";
        assert!(removed_by_someone_else(racing));
        let mixed = "Error response from daemon: removal of container 1c6420c12695 is already in progress\nError response from daemon: cannot remove container: device or resource busy";
        assert!(!removed_by_someone_else(mixed));
        assert!(!removed_by_someone_else(""));
    }

    #[test]
    fn image_references_split_at_the_tag_not_the_registry_port() {
        assert_eq!(
            split_image("backbone-rig/mysql-standin:0123abcd"),
            ("backbone-rig/mysql-standin".into(), "0123abcd".into())
        );
        assert_eq!(split_image("mysql:8.4"), ("mysql".into(), "8.4".into()));
        assert_eq!(
            split_image("mirror.example:5000/library/mysql"),
            ("mirror.example:5000/library/mysql".into(), "latest".into())
        );
        assert_eq!(
            split_image("mirror.example:5000/mysql:8.4.3"),
            ("mirror.example:5000/mysql".into(), "8.4.3".into())
        );
    }

    #[test]
    fn only_this_hosts_containers_of_dead_rigs_are_abandoned() {
        let listing = "aaa 100 here event-store-db\nbbb 200 here primary-db\nccc 100 elsewhere primary-db\nddd notapid here x\n";
        let gone = abandoned(listing, "here", |pid| pid == 200);
        assert_eq!(
            gone,
            vec![Abandoned {
                id: "aaa".into(),
                pid: 100,
                service: "event-store-db".into()
            }]
        );
    }
}
