//! What everything downstream of a target sees: endpoints, credentials and what the target
//! allows. Not the target itself, and not the topology (callers hold that).

use crate::targets::Capabilities;
use rig_events::Connections;
pub use rig_events::db_endpoint;
use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use rig_events::pubsub::PubsubConnection;
use rig_events::reach::Endpoint;
use rig_events::storage::StorageConnection;
use rig_events::worker::WorkerOptions;
use rig_topology::Topology;

/// One deployed backbone: a Pub/Sub project, a bucket, an event store database and a primary
/// database, with the credentials of each role.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The target's name, for reports only: decide by [`Environment::capabilities`].
    pub target: String,
    pub capabilities: Capabilities,
    /// The Terraform environment this was deployed from (`dev`, `staging`, `prod`).
    pub backbone_environment: String,
    /// The name this deployment was made under (scenarios each get their own).
    pub scope: String,
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
    /// What a worker or a producer needs of this environment.
    pub fn connections(&self) -> Connections {
        Connections {
            pubsub: self.pubsub.clone(),
            storage: self.storage.clone(),
            bucket: self.bucket.clone(),
            event_store: self.event_store.clone(),
        }
    }

    /// Every endpoint of this environment the rig can reach directly (stand-ins and databases;
    /// Google's own endpoints are vouched for by credentials instead), named by the variables
    /// `rig up` exports for them.
    pub fn endpoints(&self, remedy: &str) -> Vec<Endpoint> {
        let mut endpoints = self.connections().endpoints(remedy);
        endpoints.push(db_endpoint(
            PRIMARY_PREFIX,
            "the primary database server",
            &self.primary,
            remedy,
        ));
        endpoints
    }

    /// The variables a worker, the Laravel app or a shell needs, in the order `rig up` prints them.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.service_vars();
        vars.extend(self.database_vars());
        vars
    }

    /// Pub/Sub, storage, the project, the environment and the bucket.
    fn service_vars(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let Some(host) = self.pubsub.emulator_host() {
            vars.push(("PUBSUB_EMULATOR_HOST".into(), host.to_string()));
            vars.push((
                rig_events::pubsub::RIG_PUBSUB.into(),
                self.pubsub.implementation.to_string(),
            ));
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
            self.backbone_environment.clone(),
        ));
        vars.push(("BACKBONE_PAYLOAD_BUCKET".into(), self.bucket.clone()));
        vars
    }

    /// The event store's connection, then the primary's: `DB_PASSWORD` is the last line
    /// `rig up` prints, which scripts wait for.
    fn database_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.event_store.env_vars(EVENT_STORE_PREFIX);
        vars.extend(self.primary.env_vars(PRIMARY_PREFIX));
        vars
    }
}

/// The variables naming what a worker reads and writes, from the Terraform.
pub const RAW_SUBSCRIPTION_VAR: &str = "BACKBONE_RAW_SUBSCRIPTION";
pub const MERGED_TOPIC_VAR: &str = "BACKBONE_MERGED_TOPIC";
pub const DEAD_LETTER_TOPIC_VAR: &str = "BACKBONE_DEAD_LETTER_TOPIC";
pub const MAX_DELIVERY_ATTEMPTS_VAR: &str = "BACKBONE_MAX_DELIVERY_ATTEMPTS";

impl Environment {
    /// [`Environment::env_vars`] and what a worker takes from the Terraform: its subscription
    /// on the raw topic, the merged and dead-letter topics, and the subscription's
    /// dead-letter attempts (docs/bring-your-own-worker.md). What `rig up` exports.
    pub fn worker_env_vars(&self, topology: &Topology) -> anyhow::Result<Vec<(String, String)>> {
        let worker = WorkerOptions::from_topology(topology)?;
        let mut names = vec![
            (RAW_SUBSCRIPTION_VAR.to_string(), worker.subscription),
            (MERGED_TOPIC_VAR.into(), worker.merged_topic),
            (DEAD_LETTER_TOPIC_VAR.into(), worker.dead_letter_topic),
        ];
        if let Some(attempts) = worker.max_delivery_attempts {
            names.push((MAX_DELIVERY_ATTEMPTS_VAR.into(), attempts.to_string()));
        }
        // Beside the bucket, before the database credentials.
        let mut vars = self.service_vars();
        vars.extend(names);
        vars.extend(self.database_vars());
        Ok(vars)
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
