//! The suite's second official client: Google's Python client (`google-cloud-pubsub`), run as
//! a subprocess (`python/driver.py`) against the same implementation and the same resources
//! the Rust side created. It acknowledges, nacks and extends leases with unary calls while
//! its stream is open, which the Rust client does differently: the checks that matter for a
//! subscriber run through both.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::implementation::repository_root;
use crate::scope::Scope;

pub const INSTALL: &str = "pip install google-cloud-pubsub (or ./x install)";

/// Whether Google's Python client can be imported here; the reason when not.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import google.cloud.pubsub_v1"])
                .output()
                .map_err(|e| {
                    format!("python3 cannot run ({e}): install Python 3, then {INSTALL}")
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "Google's Python client is not installed: {INSTALL} ({})",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or_default()
                ))
            }
        })
        .clone()
}

/// Runs the driver with `spec` (a JSON object with its `command`) and returns what it
/// printed last, as JSON.
pub async fn run(
    scope: &Scope,
    spec: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    available()?;
    let host = scope
        .conn
        .endpoint
        .as_deref()
        .map(|e| e.trim_start_matches("http://").to_string());
    let script = repository_root().join("tests/pubsub_conformance/python/driver.py");
    let input = spec.to_string();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match host {
            Some(host) => {
                command
                    .env("PUBSUB_EMULATOR_HOST", host)
                    .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
            }
            None => {
                command.env_remove("PUBSUB_EMULATOR_HOST");
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting python3 {}: {e}", script.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| format!("writing the spec to the Python driver: {e}"))?;
        }
        child
            .wait_with_output()
            .map_err(|e| format!("waiting for the Python driver: {e}"))
    });
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("the Python client did not finish within {timeout:?}"))?
        .map_err(|e| format!("the Python driver's thread: {e}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: String = stderr
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(format!("the Python client failed ({}): {tail}", out.status));
    }
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .map_err(|e| format!("the Python driver printed no JSON result ({e}): {stdout}"))
}

/// One delivery as the Python client saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub data: String,
    pub key: String,
    pub attempt: Option<i64>,
    pub at: f64,
}

pub fn deliveries(result: &serde_json::Value) -> Vec<Delivery> {
    result["deliveries"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|d| Delivery {
                    data: d["data"].as_str().unwrap_or_default().to_string(),
                    key: d["key"].as_str().unwrap_or_default().to_string(),
                    attempt: d["attempt"].as_i64(),
                    at: d["at"].as_f64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn summary(deliveries: &[Delivery]) -> String {
    let shown: Vec<String> = deliveries
        .iter()
        .take(40)
        .map(|d| match d.attempt {
            Some(a) => format!("{}#{a}@{:.1}s", d.data, d.at),
            None => format!("{}@{:.1}s", d.data, d.at),
        })
        .collect();
    format!("{} deliveries [{}]", deliveries.len(), shown.join(", "))
}
