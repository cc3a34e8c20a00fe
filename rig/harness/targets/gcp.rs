//! Target `gcp`: the backbone that Terraform deployed in a real project. The rig starts
//! nothing and never creates, changes or deletes infrastructure; it reaches Google's endpoints
//! with Application Default Credentials (which may themselves impersonate the worker: `gcloud
//! auth application-default login --impersonate-service-account=…`).
//!
//! Guard rails, all checked before anything is contacted:
//! - `--project` must be the project the environment's `terraform.tfvars` names;
//! - prod is refused unless `--allow-prod`, and even then only read-only checks run;
//! - in dev and staging, rows may only be written to the acceptance database the Terraform
//!   declares (`events_acceptance`), never to the real ledger.
//!
//! Every endpoint can be pointed at a stand-in (`RIG_GCP_PUBSUB_ENDPOINT`,
//! `RIG_GCP_STORAGE_ENDPOINT`, ...): that is how the whole path, except authentication, is
//! tested against a local backbone.

use anyhow::bail;

use super::{Capabilities, Existing, Services, Target};
use crate::environment::db_endpoint;
use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use rig_events::reach::Endpoint;
use rig_topology::{CloudSpec, Topology};

/// Which project and environment, and whether prod may be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpOptions {
    pub project: String,
    pub environment: String,
    /// `--allow-prod`: prod may be read, never written.
    pub allow_prod: bool,
}

/// What a run against GCP may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// dev and staging: probes and acceptance rows, through the acceptance resources only.
    Acceptance,
    /// prod with `--allow-prod`: reads only.
    ReadOnly,
}

impl GcpOptions {
    /// `GOOGLE_CLOUD_PROJECT`, `BACKBONE_ENVIRONMENT` and `RIG_ALLOW_PROD=1`, the variables
    /// behind the CLI's `--project`, `--environment` and `--allow-prod`.
    pub fn from_env() -> anyhow::Result<GcpOptions> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(GcpOptions {
            project: var("GOOGLE_CLOUD_PROJECT").ok_or_else(|| {
                anyhow::anyhow!("target gcp needs the project: --project or GOOGLE_CLOUD_PROJECT")
            })?,
            environment: var("BACKBONE_ENVIRONMENT").ok_or_else(|| {
                anyhow::anyhow!(
                    "target gcp needs the environment: --environment or BACKBONE_ENVIRONMENT"
                )
            })?,
            allow_prod: var("RIG_ALLOW_PROD").as_deref() == Some("1"),
        })
    }

    /// The environment's Terraform, as the guard rails read it.
    pub fn spec(&self) -> anyhow::Result<CloudSpec> {
        let root = Topology::default_root();
        Ok(CloudSpec::load(&root, &self.environment)?)
    }

    /// Checks the guard rails against the Terraform; says what to do when one is not met.
    pub fn admit(&self, spec: &CloudSpec) -> anyhow::Result<Access> {
        if spec.project_id != self.project {
            bail!(
                "--project {} but envs/{}/terraform.tfvars names project_id {}: pass --project {} (or the right --environment)",
                self.project,
                self.environment,
                spec.project_id,
                spec.project_id
            );
        }
        if spec.event_store.acceptance_databases.is_empty() {
            if !self.allow_prod {
                bail!(
                    "refusing {}: it has no acceptance resources (prod); pass --allow-prod to run read-only checks",
                    self.environment
                );
            }
            return Ok(Access::ReadOnly);
        }
        if self.environment == "prod" {
            bail!(
                "envs/prod declares acceptance resources: fix the Terraform (acceptance_enabled = false) before running anything against prod"
            );
        }
        Ok(Access::Acceptance)
    }
}

/// The reached project: endpoints (Google's, or a stand-in's), the worker's connection to the
/// acceptance database, the app's to the primary. It provisions nothing.
pub struct GcpBackbone {
    services: Services,
    endpoints: Vec<Endpoint>,
}

impl GcpBackbone {
    /// Admits `options` (see [`GcpOptions::admit`]); only [`Access::Acceptance`] reaches a
    /// backbone, read-only runs (`rig drift`) need none.
    pub fn reach(options: &GcpOptions) -> anyhow::Result<GcpBackbone> {
        let spec = options.spec()?;
        if options.admit(&spec)? == Access::ReadOnly {
            bail!(
                "{} is read-only for the rig: run `rig drift --allow-prod` (or `rig validate --target gcp --allow-prod`, which runs the same comparison)",
                options.environment
            );
        }
        let event_store = DbConfig::from_env(EVENT_STORE_PREFIX)?;
        if !spec
            .event_store
            .acceptance_databases
            .contains(&event_store.database)
        {
            bail!(
                "DB_EVENT_STORE_DATABASE is {:?}: acceptance runs write only to {} (the Terraform's acceptance database), never to the ledger {:?}; export DB_EVENT_STORE_DATABASE={}",
                event_store.database,
                spec.event_store.acceptance_databases.join(" or "),
                spec.event_store.database,
                spec.event_store
                    .acceptance_databases
                    .first()
                    .map_or("events_acceptance", String::as_str)
            );
        }
        let primary = DbConfig::from_env(PRIMARY_PREFIX)?;
        let endpoints = GcpEndpoints::from_env();
        let vpc = "run from a machine on the SuiteX VPC (Cloud SQL has a private IP only), or correct the variable";
        let mut probed: Vec<Endpoint> = [
            (
                "RIG_GCP_PUBSUB_ENDPOINT",
                "the Pub/Sub stand-in",
                &endpoints.pubsub,
            ),
            (
                "RIG_GCP_STORAGE_ENDPOINT",
                "the storage stand-in",
                &endpoints.storage,
            ),
        ]
        .into_iter()
        .filter_map(|(variable, service, url)| {
            url.as_deref().map(|url| {
                Endpoint::from_url(
                    variable,
                    service,
                    url,
                    "start the stand-in or unset the variable to reach Google",
                )
            })
        })
        .collect();
        probed.push(db_endpoint(
            EVENT_STORE_PREFIX,
            "the event store's Cloud SQL instance",
            &event_store,
            vpc,
        ));
        probed.push(db_endpoint(
            PRIMARY_PREFIX,
            "the primary database server",
            &primary,
            vpc,
        ));
        Ok(GcpBackbone {
            endpoints: probed,
            services: Services {
                target: format!("gcp {}", options.project),
                capabilities: Capabilities {
                    provisions: false,
                    owns_primary: false,
                },
                pubsub: rig_events::pubsub::PubsubImplementation::behind(
                    endpoints.pubsub.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
                pubsub_endpoint: endpoints.pubsub,
                storage_endpoint: endpoints.storage,
                // The rig holds no administrative database credentials in GCP.
                event_store_admin: event_store.clone(),
                event_store_worker: event_store,
                primary_admin: primary.clone(),
                primary_app: primary,
                engine: format!("Cloud SQL instance {} (as deployed)", spec.event_store.name),
                existing: Some(Existing {
                    project_id: options.project.clone(),
                    bucket: None,
                }),
                startup: Vec::new(),
            },
        })
    }
}

/// Base URLs of the Google APIs the gcp target and `rig drift` reach. `None` is Google's own endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcpEndpoints {
    pub pubsub: Option<String>,
    pub storage: Option<String>,
    pub sqladmin: Option<String>,
    pub servicenetworking: Option<String>,
    pub resourcemanager: Option<String>,
}

/// `(variable, service)`: the variables that point a service at a stand-in.
pub const ENDPOINT_VARIABLES: &[(&str, &str)] = &[
    ("RIG_GCP_PUBSUB_ENDPOINT", "pubsub"),
    ("RIG_GCP_STORAGE_ENDPOINT", "storage"),
    ("RIG_GCP_SQLADMIN_ENDPOINT", "sqladmin"),
    ("RIG_GCP_SERVICENETWORKING_ENDPOINT", "servicenetworking"),
    ("RIG_GCP_RESOURCEMANAGER_ENDPOINT", "resourcemanager"),
];

impl GcpEndpoints {
    /// Google's endpoints, except where a `RIG_GCP_*_ENDPOINT` variable points at a stand-in.
    pub fn from_env() -> GcpEndpoints {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        GcpEndpoints {
            pubsub: var("RIG_GCP_PUBSUB_ENDPOINT"),
            storage: var("RIG_GCP_STORAGE_ENDPOINT"),
            sqladmin: var("RIG_GCP_SQLADMIN_ENDPOINT"),
            servicenetworking: var("RIG_GCP_SERVICENETWORKING_ENDPOINT"),
            resourcemanager: var("RIG_GCP_RESOURCEMANAGER_ENDPOINT"),
        }
    }

    /// Every endpoint at one base URL (a stand-in serving all of them).
    pub fn all_at(base: &str) -> GcpEndpoints {
        let s = Some(base.trim_end_matches('/').to_string());
        GcpEndpoints {
            pubsub: s.clone(),
            storage: s.clone(),
            sqladmin: s.clone(),
            servicenetworking: s.clone(),
            resourcemanager: s,
        }
    }

    /// `service=url` for each overridden endpoint, for the report's header.
    pub fn overridden(&self) -> Vec<String> {
        [
            ("pubsub", &self.pubsub),
            ("storage", &self.storage),
            ("sqladmin", &self.sqladmin),
            ("servicenetworking", &self.servicenetworking),
            ("resourcemanager", &self.resourcemanager),
        ]
        .into_iter()
        .filter_map(|(name, e)| e.as_ref().map(|e| format!("{name}={e}")))
        .collect()
    }
}

impl Target for GcpBackbone {
    fn services(&self) -> &Services {
        &self.services
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.clone()
    }
}
