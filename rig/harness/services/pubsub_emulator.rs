//! Google's Pub/Sub emulator (a Java jar shipped with the Google Cloud CLI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ServiceError, find_binary, free_port, http_ok, wait_until_ready, with_port_retries};
use crate::process::Service;

pub const JAR_OVERRIDE: &str = "RIG_PUBSUB_EMULATOR_JAR";
pub const JAVA_OVERRIDE: &str = "RIG_JAVA";

/// The emulator jar: `RIG_PUBSUB_EMULATOR_JAR`, else found under the Cloud SDK that `gcloud` on
/// PATH belongs to.
pub fn locate_jar() -> Result<PathBuf, ServiceError> {
    if let Some(path) = std::env::var_os(JAR_OVERRIDE).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing(&format!(
                "{JAR_OVERRIDE} points at {}, which is not a file",
                path.display()
            )))
        };
    }
    let gcloud = find_binary("RIG_GCLOUD", &["gcloud"], &[])
        .ok_or_else(|| missing("gcloud is not on PATH"))?;
    // bin/gcloud sits at the root of the SDK; resolving the symlink avoids running gcloud (slow).
    let sdk_root = std::fs::canonicalize(&gcloud)
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .ok_or_else(|| missing("could not resolve the Cloud SDK root from gcloud"))?;
    let lib = sdk_root.join("platform/pubsub-emulator/lib");
    let jar = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cloud-pubsub-emulator-") && n.ends_with(".jar"))
        })
    });
    jar.ok_or_else(|| {
        missing(&format!(
            "no cloud-pubsub-emulator-*.jar under {}",
            lib.display()
        ))
    })
}

fn missing(detail: &str) -> ServiceError {
    ServiceError::Missing {
        what: "Pub/Sub emulator".into(),
        how_to_get_it: format!(
            "{detail}. Install it with `apt-get install google-cloud-cli-pubsub-emulator` \
             (or `gcloud components install pubsub-emulator`), or set {JAR_OVERRIDE} to the jar"
        ),
    }
}

pub fn locate_java() -> Result<PathBuf, ServiceError> {
    find_binary(JAVA_OVERRIDE, &["java"], &[]).ok_or_else(|| ServiceError::Missing {
        what: "java (for the Pub/Sub emulator)".into(),
        how_to_get_it: format!(
            "`apt-get install default-jre-headless`, or set {JAVA_OVERRIDE} to a java binary"
        ),
    })
}

/// Starts the emulator; returns it with its port once the REST API answers.
pub async fn start(
    java: &Path,
    jar: &Path,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<(Service, u16), ServiceError> {
    with_port_retries(|| start_once(java, jar, dir, http)).await
}

async fn start_once(
    java: &Path,
    jar: &Path,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<(Service, u16), ServiceError> {
    let spawn_err = |source| ServiceError::Spawn {
        service: "pubsub-emulator".into(),
        source,
    };
    let port = free_port().map_err(spawn_err)?;
    let mut command = Command::new(java);
    // C1 only and a serial GC: the emulator's start-up dominates `rig up`, and its steady-state
    // speed is bounded by the clients on this kind of machine anyway.
    command
        .args([
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Xshare:auto",
        ])
        .arg("-jar")
        .arg(jar)
        .arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .current_dir(dir);
    let mut service = Service::spawn("pubsub-emulator", command, &dir.join("pubsub-emulator.log"))
        .map_err(spawn_err)?;
    let url = format!("http://127.0.0.1:{port}/v1/projects/rig-readiness/topics");
    wait_until_ready(&mut service, Duration::from_secs(90), || {
        http_ok(http, &url)
    })
    .await?;
    Ok((service, port))
}
