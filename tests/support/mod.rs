//! Helpers shared by the integration test binaries (each includes this module).
// Each test binary uses a part of these helpers; the rest is dead code in that binary.
#![allow(dead_code)]

pub mod processes;

use chrono::Utc;
use rig_events::event_store::{DbConfig, NewEvent};
use rig_harness::backbone::Backbone;
use rig_harness::environment::Environment;
use rig_harness::targets::TargetKind;
use rig_topology::Topology;
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnection;
use uuid::Uuid;

/// The dev environment's topology, read from the repository's Terraform.
pub fn dev_topology() -> Topology {
    Topology::of_repository("dev").unwrap_or_else(|e| panic!("loading the dev topology: {e}"))
}

/// A fresh local backbone with `scope` deployed on it (a failed deploy's error carries the
/// services' logs).
pub async fn deployed(scope: &str) -> (Backbone, Environment) {
    deployed_with(scope, &dev_topology()).await
}

/// [`deployed`] with another topology (a test's edited copy of the Terraform).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub async fn deployed_with(scope: &str, topology: &Topology) -> (Backbone, Environment) {
    match Backbone::up(TargetKind::Local, scope, topology).await {
        Ok((backbone, deployment)) => (backbone, deployment.environment),
        Err(e) => panic!("bringing up the local backbone with scope {scope}: {e:#}"),
    }
}

pub async fn connect(config: &DbConfig) -> MySqlConnection {
    config
        .connect_options()
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connecting as {} to {}:{}/{}: {e}",
                config.username, config.host, config.port, config.database
            )
        })
}

/// A valid event on `aggregate_id` with `payload`, created now.
pub fn event(aggregate_id: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        account_id: "TSTDRV1000001".into(),
        event_id: Uuid::new_v4(),
        aggregate_type: "salesorder".into(),
        aggregate_id: aggregate_id.into(),
        payload: payload.to_string(),
        created_at: Utc::now(),
    }
}

/// A runtime for tests that drive the backbone from plain `#[test]` functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// The rig's own temp dirs under `tmp` (the shared datadir template is a cache, not a leak).
pub fn rig_dirs(tmp: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(tmp)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("backbone-rig-") && !n.starts_with("backbone-rig-datadir-")
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
