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

/// A free TCP port on the loopback interface. The OS picks it; the tiny window before the
/// service binds it is acceptable for a test rig.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
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
