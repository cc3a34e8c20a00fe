//! Where a sync worker finds the backbone: exactly what `rig up` exports to one.

use crate::event_store::{DbConfig, EVENT_STORE_PREFIX};
use crate::pubsub::{PubsubConnection, PubsubImplementation};
use crate::reach::Endpoint;
use crate::storage::StorageConnection;

/// The backbone as a worker or a producer reaches it: Pub/Sub, the bucket's storage, the
/// payload bucket and the worker's event store connection (`DB_EVENT_STORE_*`).
#[derive(Debug, Clone)]
pub struct Connections {
    pub pubsub: PubsubConnection,
    pub storage: StorageConnection,
    /// The payload bucket's name: the only one a claim check may point into.
    pub bucket: String,
    /// The worker's connection (`DB_EVENT_STORE_*`): SELECT and INSERT on the ledger only.
    pub event_store: DbConfig,
}

/// The variables a worker needs that are unset or wrong, every one of them at once.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct VariablesMissing {
    pub problems: Vec<String>,
}

impl Connections {
    /// What a worker reads from `lookup` (the process environment, as `rig up` exports it):
    /// `GOOGLE_CLOUD_PROJECT`, `DB_EVENT_STORE_*`, and optionally `PUBSUB_EMULATOR_HOST`,
    /// `RIG_PUBSUB`, `STORAGE_EMULATOR_HOST` and `BACKBONE_PAYLOAD_BUCKET` (else `bucket`).
    /// Every required variable that is unset is named, not only the first.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        bucket: &str,
    ) -> Result<Self, VariablesMissing> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut problems = Vec::new();
        let hint = "export it, or source the env file of a running `rig up --env-file FILE`";
        let project = var("GOOGLE_CLOUD_PROJECT");
        if project.is_none() {
            problems.push(format!(
                "GOOGLE_CLOUD_PROJECT is not set (the Pub/Sub project): {hint}"
            ));
        }
        for key in ["HOST", "DATABASE", "USERNAME"] {
            let name = format!("{EVENT_STORE_PREFIX}{key}");
            if var(&name).is_none() {
                problems.push(format!("{name} is not set: {hint}"));
            }
        }
        let event_store = DbConfig::from_lookup(EVENT_STORE_PREFIX, var);
        let emulator = var("PUBSUB_EMULATOR_HOST");
        let implementation = match (&emulator, var(crate::pubsub::RIG_PUBSUB)) {
            (None, _) => Ok(PubsubImplementation::Google),
            (Some(_), Some(chosen)) => chosen.parse(),
            (Some(_), None) => Ok(PubsubImplementation::GoogleEmulator),
        };
        let implementation = implementation.unwrap_or_else(|e| {
            problems.push(e);
            PubsubImplementation::Google
        });
        let event_store = match event_store {
            Ok(config) => Some(config),
            // Already named above when a variable is missing; an invalid one is named here.
            Err(crate::event_store::config::ConfigError::Missing(_)) => None,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        match (project, event_store) {
            (Some(project_id), Some(event_store)) if problems.is_empty() => Ok(Connections {
                pubsub: PubsubConnection {
                    endpoint: emulator.map(|h| format!("http://{h}")),
                    project_id: project_id.clone(),
                    implementation,
                },
                storage: StorageConnection {
                    endpoint: var("STORAGE_EMULATOR_HOST"),
                    project_id,
                },
                bucket: var("BACKBONE_PAYLOAD_BUCKET").unwrap_or_else(|| bucket.to_string()),
                event_store,
            }),
            _ => Err(VariablesMissing { problems }),
        }
    }

    /// The endpoints the worker reaches directly, named by their variables. Google's own
    /// endpoints are left to the credentials check.
    pub fn endpoints(&self, remedy: &str) -> Vec<Endpoint> {
        let mut endpoints = Vec::new();
        if let Some(url) = &self.pubsub.endpoint {
            endpoints.push(Endpoint::from_url(
                "PUBSUB_EMULATOR_HOST",
                format!("Pub/Sub ({})", self.pubsub.implementation),
                url,
                remedy,
            ));
        }
        if let Some(url) = &self.storage.endpoint {
            endpoints.push(Endpoint::from_url(
                "STORAGE_EMULATOR_HOST",
                "the storage emulator",
                url,
                remedy,
            ));
        }
        endpoints.push(db_endpoint(
            EVENT_STORE_PREFIX,
            "the event store's database server",
            &self.event_store,
            remedy,
        ));
        endpoints
    }

    /// Whether a Google endpoint (and so Application Default Credentials) is used.
    pub fn uses_google(&self) -> bool {
        !self.pubsub.is_emulator() || !self.storage.is_emulator()
    }
}

/// A database server's endpoint, named by its `{prefix}HOST`/`{prefix}PORT` variables.
pub fn db_endpoint(prefix: &str, service: &str, config: &DbConfig, remedy: &str) -> Endpoint {
    Endpoint::mysql(
        format!("{prefix}HOST/{prefix}PORT"),
        service,
        if config.host.contains(':') && !config.host.starts_with('[') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        },
        remedy,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_missing_variable_is_named_at_once() {
        let err = Connections::from_lookup(|_| None, "b").unwrap_err();
        let text = err.to_string();
        for name in [
            "GOOGLE_CLOUD_PROJECT",
            "DB_EVENT_STORE_HOST",
            "DB_EVENT_STORE_DATABASE",
            "DB_EVENT_STORE_USERNAME",
        ] {
            assert!(text.contains(&format!("{name} is not set")), "{text}");
        }
    }

    #[test]
    fn what_rig_up_exports_is_enough() {
        let vars: HashMap<&str, &str> = [
            ("GOOGLE_CLOUD_PROJECT", "backbone-dev"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:1"),
            ("RIG_PUBSUB", "pubsub-service"),
            ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2"),
            ("DB_EVENT_STORE_HOST", "127.0.0.1"),
            ("DB_EVENT_STORE_PORT", "3"),
            ("DB_EVENT_STORE_DATABASE", "events"),
            ("DB_EVENT_STORE_USERNAME", "sync_worker"),
        ]
        .into_iter()
        .collect();
        let c = Connections::from_lookup(|k| vars.get(k).map(|v| v.to_string()), "bucket").unwrap();
        assert_eq!(c.bucket, "bucket");
        assert!(!c.uses_google());
        let addresses: Vec<String> = c.endpoints("r").into_iter().map(|e| e.address).collect();
        assert_eq!(addresses, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }
}
