//! Writes the prost messages and tonic server traits for `google.pubsub.v1` into
//! `rig/pubsub-service/src/proto/`. Usage (protoc and its well-known types must be installed:
//! `apt-get install protobuf-compiler libprotobuf-dev`):
//!
//! ```text
//! git clone --depth 1 https://github.com/googleapis/googleapis /tmp/googleapis
//! cargo run --manifest-path rig/pubsub-service/codegen/Cargo.toml -- /tmp/googleapis
//! ```

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let googleapis = std::env::args().nth(1).map(PathBuf::from).ok_or(
        "usage: pubsub-service-codegen GOOGLEAPIS_CHECKOUT (git clone https://github.com/googleapis/googleapis)",
    )?;
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
