//! Provisioning: what every target gets created on it, from the one description of the
//! backbone — topics and subscriptions and the bucket from the Terraform ([`rig_topology`]),
//! databases, accounts, `migrations/` and grants on the event store, and the primary's seed.
//!
//! Targets only start or reach services ([`crate::targets`]); they all come here. On a target
//! that provisions nothing (GCP, a running `rig up`) this only names what is already there.

mod bucket;
mod databases;
mod pubsub;

use anyhow::Context;

use crate::divergence::Divergence;
use crate::environment::Environment;
use crate::targets::Services;
use rig_events::pubsub::PubsubConnection;
use rig_events::storage::StorageConnection;
use rig_topology::Topology;

pub use bucket::apply_bucket;
pub use databases::accounts;
pub use pubsub::apply_pubsub;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Pubsub(#[from] rig_events::pubsub::PubsubError),
    #[error(transparent)]
    Storage(#[from] rig_events::storage::StorageError),
    #[error("{action}")]
    Request {
        action: String,
        #[source]
        source: google_cloud_pubsub::Error,
    },
}

fn request(action: String) -> impl FnOnce(google_cloud_pubsub::Error) -> ProvisionError {
    move |source| ProvisionError::Request { action, source }
}

/// The scope `rig up` and `rig validate` deploy: the environment's own names.
pub const DEFAULT_SCOPE: &str = "default";

/// The names one scope's resources get. The default scope uses the environment's own names
/// (`events`, `suitex`, the Terraform's bucket); any other gets suffixed, isolated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeNames {
    pub scope: String,
    pub project_id: String,
    pub bucket: String,
    pub event_store_database: String,
    pub primary_database: String,
}

impl ScopeNames {
    pub fn new(scope: &str, topology: &Topology) -> Self {
        if is_default(scope) {
            return Self {
                scope: DEFAULT_SCOPE.into(),
                project_id: format!("backbone-{}", topology.environment),
                bucket: topology.bucket.name.clone(),
                event_store_database: "events".into(),
                primary_database: "suitex".into(),
            };
        }
        let mut bucket = format!("{}-{}", topology.bucket.name, dns_suffix(scope));
        bucket.truncate(63);
        Self {
            scope: scope.to_string(),
            project_id: format!("rig-{}", dns_suffix(scope)),
            bucket: bucket.trim_end_matches('-').to_string(),
            event_store_database: format!("events_{}", db_suffix(scope)),
            primary_database: format!("suitex_{}", db_suffix(scope)),
        }
    }
}

fn is_default(scope: &str) -> bool {
    scope.is_empty() || scope == DEFAULT_SCOPE
}

/// Creates `scope`'s resources on `services` as the Terraform and `migrator` say (or, on a
/// target that provisions nothing, names what is there) and returns the environment to use,
/// with every setting a stand-in did not keep.
pub async fn deploy(
    services: &Services,
    scope: &str,
    topology: &Topology,
    migrator: &sqlx::migrate::Migrator,
) -> anyhow::Result<(Environment, Vec<Divergence>)> {
    let Some(names) = scope_names(services, scope, topology)? else {
        return Ok((existing_environment(services, topology)?, Vec::new()));
    };
    let environment = environment(services, topology, &names);
    let http = rig_events::storage::http_client()?;
    let started = std::time::Instant::now();
    let took = |what: &str| tracing::debug!("{what} provisioned in {:?}", started.elapsed());
    let (_, divergences, _, _) = tokio::try_join!(
        async {
            apply_pubsub(&environment.pubsub, topology)
                .await
                .context("provisioning Pub/Sub from the Terraform topology")?;
            took("Pub/Sub");
            Ok(())
        },
        async {
            let divergences =
                apply_bucket(&environment.storage, &http, &names.bucket, &topology.bucket)
                    .await
                    .context("creating the payload bucket")?;
            took("the bucket");
            Ok(divergences)
        },
        async {
            databases::event_store(services, &names.event_store_database, migrator).await?;
            took("the event store");
            Ok(())
        },
        async {
            databases::primary(services, &names.primary_database).await?;
            took("the primary");
            Ok::<_, anyhow::Error>(())
        },
    )?;
    Ok((environment, divergences))
}

/// `None` when the target provisions nothing (then only the default scope exists there).
fn scope_names(
    services: &Services,
    scope: &str,
    topology: &Topology,
) -> anyhow::Result<Option<ScopeNames>> {
    if services.capabilities.provisions {
        return Ok(Some(ScopeNames::new(scope, topology)));
    }
    if !is_default(scope) {
        anyhow::bail!(
            "target {} provisions nothing, so it cannot make the isolated scope `{scope}`: scenarios need a target that provisions (`--target local`), or `--target gcp`, which runs the staging-safe ones on the acceptance resources",
            services.target
        );
    }
    Ok(None)
}

fn environment(services: &Services, topology: &Topology, names: &ScopeNames) -> Environment {
    Environment {
        target: services.target.clone(),
        capabilities: services.capabilities,
        backbone_environment: topology.environment.clone(),
        scope: names.scope.clone(),
        pubsub: PubsubConnection {
            endpoint: services.pubsub_endpoint.clone(),
            project_id: names.project_id.clone(),
            implementation: services.pubsub,
        },
        storage: StorageConnection {
            endpoint: services.storage_endpoint.clone(),
            project_id: names.project_id.clone(),
        },
        bucket: names.bucket.clone(),
        event_store: services
            .event_store_worker
            .with_database(&names.event_store_database),
        event_store_admin: services
            .event_store_admin
            .with_database(&names.event_store_database),
        primary: services.primary_app.with_database(&names.primary_database),
        primary_admin: services
            .primary_admin
            .with_database(&names.primary_database),
        engine: services.engine.clone(),
    }
}

/// A backbone someone else deployed: its databases are the ones the credentials name.
fn existing_environment(services: &Services, topology: &Topology) -> anyhow::Result<Environment> {
    let existing = services.existing.as_ref().with_context(|| {
        format!(
            "target {} provisions nothing and names no existing project",
            services.target
        )
    })?;
    let names = ScopeNames {
        scope: DEFAULT_SCOPE.into(),
        project_id: existing.project_id.clone(),
        bucket: existing
            .bucket
            .clone()
            .unwrap_or_else(|| topology.bucket.name.clone()),
        event_store_database: services.event_store_worker.database.clone(),
        primary_database: services.primary_app.database.clone(),
    };
    Ok(environment(services, topology, &names))
}

/// `scope` lowercased, with every other character than `[a-z0-9]` replaced by `separator`.
fn scope_suffix(scope: &str, separator: char) -> String {
    scope
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                separator
            }
        })
        .collect()
}

/// `scope` as a suffix safe for database names (`[a-z0-9_]`).
pub(crate) fn db_suffix(scope: &str) -> String {
    scope_suffix(scope, '_')
}

/// `scope` as a suffix safe for project ids and bucket names (`[a-z0-9-]`).
pub(crate) fn dns_suffix(scope: &str) -> String {
    scope_suffix(scope, '-')
}
