//! Writes the prost messages and tonic server traits for `google.pubsub.v1` into
//! `rig/pubsub-service/src/proto/`, from the googleapis revision [`GOOGLEAPIS_REVISION`].
//! Usage (protoc and its well-known types must be installed:
//! `apt-get install protobuf-compiler libprotobuf-dev`):
//!
//! ```text
//! git init /tmp/googleapis && cd /tmp/googleapis
//! git fetch --depth 1 https://github.com/googleapis/googleapis 58bc461d695b3254a0ff88cc3541b6dca7e7a95f
//! git checkout FETCH_HEAD && cd -
//! cargo run --manifest-path rig/pubsub-service/codegen/Cargo.toml -- /tmp/googleapis
//! ```
//!
//! At that revision the output is byte for byte the checked-in file. To move to another
//! revision, change [`GOOGLEAPIS_REVISION`] with the regenerated file in one commit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The googleapis commit the checked-in code is generated from (the last change to
/// `google/pubsub/v1` before 2026-08-22).
const GOOGLEAPIS_REVISION: &str = "58bc461d695b3254a0ff88cc3541b6dca7e7a95f";

/// The checkout's commit, when it is a git checkout.
fn revision(checkout: &Path) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let googleapis = args.next().map(PathBuf::from).ok_or(
        "usage: pubsub-service-codegen GOOGLEAPIS_CHECKOUT [--any-revision] (see this file's header for the pinned checkout)",
    )?;
    let any_revision = args.next().as_deref() == Some("--any-revision");
    match revision(&googleapis) {
        Some(found) if found == GOOGLEAPIS_REVISION => {}
        found if !any_revision => {
            return Err(format!(
                "{} is at {}, not the pinned googleapis revision {GOOGLEAPIS_REVISION}: check that out, or pass --any-revision to generate from another one (then update GOOGLEAPIS_REVISION)",
                googleapis.display(),
                found.as_deref().unwrap_or("no git revision")
            )
            .into());
        }
        _ => {}
    }
    // protoc's well-known types (google/protobuf/*.proto); Debian's libprotobuf-dev puts them here.
    let protobuf_include =
        PathBuf::from(std::env::var("PROTOC_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../src/proto");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        // Message payloads are shared between subscriptions without copying.
        .bytes(".google.pubsub.v1.PubsubMessage.data")
        .out_dir(&out)
        .compile_protos(
            &[googleapis.join("google/pubsub/v1/pubsub.proto")],
            &[googleapis.clone(), protobuf_include],
        )?;
    // Only annotations come from google.api: the messages never reference its types.
    let _ = std::fs::remove_file(out.join("google.api.rs"));
    Ok(())
}
