//! The `env` target: the backbone the process environment describes — a running `rig up`
//! (source its `--env-file`), or real GCP with `GOOGLE_CLOUD_PROJECT` and Application Default
//! Credentials (no `*_EMULATOR_HOST`). It starts nothing and provisions nothing.

use super::{Capabilities, Existing, Services, Target};
use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use rig_events::pubsub::PubsubImplementation;

pub struct EnvBackbone {
    services: Services,
}

impl EnvBackbone {
    pub fn reach() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let project_id = var("GOOGLE_CLOUD_PROJECT").ok_or_else(|| {
            anyhow::anyhow!("GOOGLE_CLOUD_PROJECT is not set: export it (the GCP project), or source `rig up --env-file`'s file")
        })?;
        let event_store = DbConfig::from_env(EVENT_STORE_PREFIX)?;
        let primary = DbConfig::from_env(PRIMARY_PREFIX)?;
        Ok(Self {
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
}
