//! Helpers shared by the integration test binaries (each includes this module).

use rig::environment::Environment;
use rig::event_store::DbConfig;
use rig::targets::{Backbone, TargetKind};
use rig::topology::Topology;
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnection;

/// The dev environment's topology, read from the repository's Terraform.
pub fn dev_topology() -> Topology {
    Topology::of_repository("dev").unwrap_or_else(|e| panic!("loading the dev topology: {e}"))
}

/// A fresh local backbone with `scope` deployed on it (a failed deploy's error carries the
/// services' logs).
pub async fn deployed(scope: &str) -> (Backbone, Environment) {
    match Backbone::up(TargetKind::Local, scope, &dev_topology()).await {
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
