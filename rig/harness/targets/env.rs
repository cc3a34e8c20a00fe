//! The `env` target: the backbone the process environment describes — a running `rig up`
//! (source its `--env-file`), or real GCP with `GOOGLE_CLOUD_PROJECT` and Application Default
//! Credentials (no `*_EMULATOR_HOST`). It starts nothing and provisions nothing.

use super::{Capabilities, Existing, Services, Target};
use crate::environment::db_endpoint;
use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use rig_events::pubsub::PubsubImplementation;
use rig_events::reach::Endpoint;

pub struct EnvBackbone {
    services: Services,
    endpoints: Vec<Endpoint>,
}

impl EnvBackbone {
    pub fn reach() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        // A sourced env file of a `rig up` that has stopped: said before anything is tried.
        if let Some(why) = crate::env_file::stale_owner(var) {
            anyhow::bail!(why);
        }
        let project_id = var("GOOGLE_CLOUD_PROJECT").ok_or_else(|| {
            anyhow::anyhow!("GOOGLE_CLOUD_PROJECT is not set: export it (the GCP project), or source `rig up --env-file`'s file")
        })?;
        let event_store = DbConfig::from_env(EVENT_STORE_PREFIX)?;
        let primary = DbConfig::from_env(PRIMARY_PREFIX)?;
        let emulated = var("PUBSUB_EMULATOR_HOST").is_some();
        let remedy = if emulated {
            "start the backbone this environment describes (`rig up --env-file FILE`, then `source FILE`), or correct the variable"
        } else {
            "against Cloud SQL, run from a machine on the SuiteX VPC (the instance has a private IP only), or correct the variable"
        };
        let mut endpoints = Vec::new();
        if let Some(host) = var("PUBSUB_EMULATOR_HOST") {
            endpoints.push(Endpoint::from_url(
                "PUBSUB_EMULATOR_HOST",
                "the Pub/Sub emulator",
                &host,
                remedy,
            ));
        }
        if let Some(url) = var("STORAGE_EMULATOR_HOST") {
            endpoints.push(Endpoint::from_url(
                "STORAGE_EMULATOR_HOST",
                "the storage emulator",
                &url,
                remedy,
            ));
        }
        endpoints.push(db_endpoint(
            EVENT_STORE_PREFIX,
            "the event store's database server",
            &event_store,
            remedy,
        ));
        endpoints.push(db_endpoint(
            PRIMARY_PREFIX,
            "the primary database server",
            &primary,
            remedy,
        ));
        Ok(Self {
            endpoints,
            services: Services {
                target: "environment variables".into(),
                capabilities: Capabilities {
                    provisions: false,
                    owns_primary: false,
                },
                pubsub_endpoint: var("PUBSUB_EMULATOR_HOST").map(|h| format!("http://{h}")),
                pubsub: PubsubImplementation::behind(var("PUBSUB_EMULATOR_HOST").as_deref())
                    .map_err(|e| anyhow::anyhow!(e))?,
                storage_endpoint: var("STORAGE_EMULATOR_HOST"),
                // The worker's account is the only one the environment names: the schema is
                // the deploy's business, not the rig's, on a backbone it did not create.
                event_store_admin: event_store.clone(),
                event_store_worker: event_store,
                primary_admin: primary.clone(),
                primary_app: primary,
                engine: "as configured".into(),
                existing: Some(Existing {
                    project_id,
                    bucket: var("BACKBONE_PAYLOAD_BUCKET"),
                }),
                startup: Vec::new(),
            },
        })
    }
}

impl Target for EnvBackbone {
    fn services(&self) -> &Services {
        &self.services
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.clone()
    }
}
