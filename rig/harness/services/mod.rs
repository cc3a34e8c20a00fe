//! The local stand-ins for the backbone's services: where their binaries are, how to start them,
//! and how to tell by protocol that they answer. Nothing here knows about topics or tables.

pub mod fake_gcs;
pub mod mysql;
pub mod pubsub_emulator;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::Service;

/// Why a local service could not be started, always with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} not found: {how_to_get_it}")]
    Missing { what: String, how_to_get_it: String },
    #[error("{service} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        service: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error(
        "{service} did not answer within {waited:?} (last error: {last_error}); last lines of {log}:\n{tail}"
    )]
    NotReady {
        service: String,
        waited: Duration,
        last_error: String,
        log: String,
        tail: String,
    },
    #[error("could not start {service}: {source}")]
    Spawn {
        service: String,
        #[source]
        source: std::io::Error,
    },
}

/// A free TCP port on the loopback interface, for a service to bind a moment later.
///
/// Picked at random *below* the kernel's ephemeral range: a port the OS handed out with
/// `bind(0)` can be taken again in that window by any outgoing connection (seen under parallel
/// tests: the emulator failed with "Address already in use"). Services are still started
/// with a retry on bind failure (see [`is_port_taken`]).
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (15_000u16, ephemeral_low.saturating_sub(1));
    if high > low {
        for _ in 0..64 {
            let random = u16::from_le_bytes(
                uuid::Uuid::new_v4().as_bytes()[..2]
                    .try_into()
                    .unwrap_or([0, 0]),
            );
            let port = low + random % (high - low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a start-up failure was a lost race for the port (then a retry on another port
/// is the fix).
fn mentions_port_taken(log: &str) -> bool {
    // Java and MariaDB say "Address already in use", Go says "address already in use".
    log.to_ascii_lowercase().contains("address already in use")
}

pub fn is_port_taken(error: &ServiceError) -> bool {
    match error {
        ServiceError::Exited { tail, .. } | ServiceError::NotReady { tail, .. } => {
            mentions_port_taken(tail)
        }
        _ => false,
    }
}

/// How many ports a service start tries before giving up.
pub const PORT_ATTEMPTS: usize = 3;

/// Runs `start` again (it picks a new port each time) when it lost its port to someone else.
pub async fn with_port_retries<T, F, Fut>(mut start: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ServiceError>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(e) if attempt < PORT_ATTEMPTS && is_port_taken(&e) => {
                tracing::warn!("port taken while starting a service; retrying on another port");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// First existing file among an override variable, names on PATH and extra directories.
pub fn find_binary(override_var: &str, names: &[&str], extra_dirs: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let dirs = path_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain(extra_dirs.iter().map(Path::new));
    for dir in dirs {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A lookup that costs a process start (`mariadbd --version` ~30 ms, asking Python where a
/// wheel is ~130 ms of CPU on our 2-core machine, competing with the servers starting beside
/// it), remembered per user in `$XDG_CACHE_HOME/backbone-rig/lookups/<name>` (else
/// `~/.cache/backbone-rig/lookups/<name>`). The answer is reused only while `key` (what it depends
/// on: a binary's path, size and modification time, the search path, ...) is unchanged and
/// `valid` accepts it; otherwise `compute` runs again and its answer replaces the old one.
/// Removing the directory is always safe.
pub(crate) fn cached_lookup(
    name: &str,
    key: &str,
    valid: impl Fn(&str) -> bool,
    compute: impl FnOnce() -> Option<String>,
) -> Option<String> {
    cached_lookup_in(cache_dir(), name, key, valid, compute)
}

fn cached_lookup_in(
    dir: Option<PathBuf>,
    name: &str,
    key: &str,
    valid: impl Fn(&str) -> bool,
    compute: impl FnOnce() -> Option<String>,
) -> Option<String> {
    let file = dir.map(|dir| dir.join(name));
    let remembered = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| {
            let (stored_key, value) = text.split_once('\n')?;
            (stored_key == key && valid(value)).then(|| value.to_string())
        });
    if remembered.is_some() {
        return remembered;
    }
    let value = compute()?;
    if let Some(file) = file {
        // Written whole under a unique name, then renamed: readers never see half of it.
        let staging = file.with_extension(uuid::Uuid::new_v4().simple().to_string());
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&staging, format!("{key}\n{value}")))
            .and_then(|()| std::fs::rename(&staging, &file));
        if written.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
    }
    Some(value)
}

/// Where [`cached_lookup`] keeps its answers: the user's own cache directory (not the shared
/// temp dir, where another user could plant a binary path for the rig to run).
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("backbone-rig").join("lookups"))
}

/// What a cached answer about `binary` depends on: its path, size and modification time.
pub(crate) fn binary_identity(binary: &Path) -> String {
    let metadata = std::fs::metadata(binary).ok();
    let modified = metadata
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "{} {} {modified}",
        binary.display(),
        metadata.map_or(0, |m| m.len())
    )
}

/// Polls `probe` until it succeeds, the service dies, or `limit` passes.
pub async fn wait_until_ready<F, Fut>(
    service: &mut Service,
    limit: Duration,
    mut probe: F,
) -> Result<Duration, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut last_error;
    loop {
        if let Some(status) = service.exited() {
            return Err(ServiceError::Exited {
                service: service.name().to_string(),
                status: status.to_string(),
                log: service.log_path().display().to_string(),
                tail: service.log_tail(4000),
            });
        }
        match probe().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last_error = e,
        }
        // A JVM whose server failed to bind keeps running: read the log rather than wait.
        let tail = service.log_tail(4000);
        if mentions_port_taken(&tail) {
            return Err(ServiceError::NotReady {
                service: service.name().to_string(),
                waited: start.elapsed(),
                last_error: "its port was taken before it could bind".into(),
                log: service.log_path().display().to_string(),
                tail,
            });
        }
        if start.elapsed() > limit {
            return Err(ServiceError::NotReady {
                service: service.name().to_string(),
                waited: limit,
                last_error,
                log: service.log_path().display().to_string(),
                tail: service.log_tail(4000),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP GET that must answer 2xx: the readiness probe of both emulators.
pub async fn http_ok(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_lookup_is_reused_only_while_its_key_holds_and_its_answer_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let cache = || Some(dir.path().join("nested"));
        let any = |_: &str| true;
        let first = cached_lookup_in(cache(), "thing", "key 1", any, || Some("a".into()));
        assert_eq!(first.as_deref(), Some("a"));
        // Same key: the remembered answer, without computing.
        let again = cached_lookup_in(cache(), "thing", "key 1", any, || panic!("recomputed"));
        assert_eq!(again.as_deref(), Some("a"));
        // Another key: computed again, and that answer replaces the old one.
        let changed = cached_lookup_in(cache(), "thing", "key 2", any, || Some("b".into()));
        assert_eq!(changed.as_deref(), Some("b"));
        let back = cached_lookup_in(cache(), "thing", "key 1", any, || Some("c".into()));
        assert_eq!(back.as_deref(), Some("c"));
        // An answer that no longer holds (a binary removed, say) is not used.
        let invalid = cached_lookup_in(cache(), "thing", "key 1", |v| v != "c", || None);
        assert_eq!(invalid, None, "nothing valid remembered and nothing found");
        // No cache directory: always computed.
        assert_eq!(
            cached_lookup_in(None, "thing", "key 1", any, || Some("d".into())).as_deref(),
            Some("d")
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["thing"], "no staging file left behind");
    }

    #[test]
    fn a_lost_port_race_is_recognised_in_every_services_words() {
        let exited = |tail: &str| ServiceError::Exited {
            service: "s".into(),
            status: "exit status: 1".into(),
            log: "l".into(),
            tail: tail.into(),
        };
        assert!(is_port_taken(&exited(
            "java.net.BindException: Address already in use"
        )));
        assert!(is_port_taken(&exited(
            "listen tcp 127.0.0.1:1: bind: address already in use"
        )));
        assert!(is_port_taken(&exited(
            "[ERROR] Can't start server: Bind on TCP/IP port. Got error: 98: Address already in use"
        )));
        assert!(!is_port_taken(&exited(
            "Aria engine: log initialization failed"
        )));
    }

    #[test]
    fn free_ports_can_be_bound() {
        let port = free_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
