//! What everything downstream of a target sees: endpoints and credentials, nothing else.

use crate::event_store::{DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use crate::pubsub::PubsubConnection;
use crate::storage::StorageConnection;
use crate::targets::TargetKind;
use crate::topology::Topology;

/// One deployed backbone: a Pub/Sub project, a bucket, an event store database and a primary
/// database, with the credentials of each role.
#[derive(Debug, Clone)]
pub struct Environment {
    pub target: TargetKind,
    /// The name this deployment was made under (scenarios each get their own).
    pub scope: String,
    pub topology: Topology,
    pub pubsub: PubsubConnection,
    pub storage: StorageConnection,
    /// The payload bucket's name in this deployment.
    pub bucket: String,
    /// The worker's connection (`DB_EVENT_STORE_*`): SELECT and INSERT on the ledger only.
    pub event_store: DbConfig,
    /// The migration owner's connection (DDL on the event store database).
    pub event_store_admin: DbConfig,
    /// The SuiteX tenant application's connection (`DB_*`).
    pub primary: DbConfig,
    /// A privileged connection to the primary server, to observe it without being the app.
    pub primary_admin: DbConfig,
    /// The event store's engine, e.g. "MariaDB 10.11.19 (local stand-in for Cloud SQL MySQL 8.4)".
    pub engine: String,
}

impl Environment {
    /// The variables a worker, the Laravel app or a shell needs, in the order `rig up` prints them.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let Some(host) = self.pubsub.emulator_host() {
            vars.push(("PUBSUB_EMULATOR_HOST".into(), host.to_string()));
        }
        if let Some(endpoint) = &self.storage.endpoint {
            vars.push(("STORAGE_EMULATOR_HOST".into(), endpoint.clone()));
        }
        vars.push((
            "GOOGLE_CLOUD_PROJECT".into(),
            self.pubsub.project_id.clone(),
        ));
        vars.push((
            "BACKBONE_ENVIRONMENT".into(),
            self.topology.environment.clone(),
        ));
        vars.push(("BACKBONE_PAYLOAD_BUCKET".into(), self.bucket.clone()));
        vars.extend(self.event_store.env_vars(EVENT_STORE_PREFIX));
        vars.extend(self.primary.env_vars(PRIMARY_PREFIX));
        vars
    }
}

impl Environment {
    /// The backbone the process environment describes: `rig up`'s variables locally, or in GCP
    /// `GOOGLE_CLOUD_PROJECT` with Application Default Credentials (no emulator hosts set).
    pub fn from_process_env(topology: Topology) -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let project_id = var("GOOGLE_CLOUD_PROJECT").ok_or_else(|| {
            anyhow::anyhow!("GOOGLE_CLOUD_PROJECT is not set: export it (the GCP project), or source `rig up --env-file`'s file")
        })?;
        let event_store = DbConfig::from_env(EVENT_STORE_PREFIX)?;
        let primary = DbConfig::from_env(PRIMARY_PREFIX)?;
        Ok(Self {
            target: TargetKind::FromEnvironment,
            scope: "default".into(),
            pubsub: PubsubConnection {
                endpoint: var("PUBSUB_EMULATOR_HOST").map(|h| format!("http://{h}")),
                project_id: project_id.clone(),
            },
            storage: StorageConnection {
                endpoint: var("STORAGE_EMULATOR_HOST"),
                project_id,
            },
            bucket: var("BACKBONE_PAYLOAD_BUCKET").unwrap_or_else(|| topology.bucket.name.clone()),
            topology,
            event_store_admin: event_store.clone(),
            event_store,
            primary_admin: primary.clone(),
            primary,
            engine: "as configured".into(),
        })
    }
}

/// `export NAME='value'` with the value quoted for POSIX shells.
pub fn shell_export(name: &str, value: &str) -> String {
    format!("export {name}='{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_export;

    #[test]
    fn quotes_values_for_the_shell() {
        assert_eq!(shell_export("A", "x y"), "export A='x y'");
        assert_eq!(shell_export("A", "it's"), r"export A='it'\''s'");
    }
}
