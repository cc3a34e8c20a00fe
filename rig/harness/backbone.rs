//! A running (or reached) backbone: the one place a target is chosen ([`Backbone::start`]),
//! and where provisioning meets it ([`Backbone::deploy`]). Callers get a [`Deployment`]:
//! the [`Environment`] to use, and what provisioning noticed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rig_events::pubsub::PubsubImplementation;
use rig_topology::Topology;

use crate::environment::Environment;
use crate::targets::{
    Capabilities, ContainersBackbone, EnvBackbone, GcpBackbone, GcpOptions, LocalBackbone,
    ServiceControl, Services, Target, TargetKind,
};

/// A running (or reached) backbone. Dropping it stops everything its target started.
pub struct Backbone {
    kind: TargetKind,
    target: Box<dyn Target>,
}

impl Backbone {
    /// Starts `kind`; the local target runs the Pub/Sub `RIG_PUBSUB` names (our own service
    /// by default).
    pub async fn start(kind: TargetKind) -> anyhow::Result<Self> {
        let pubsub = PubsubImplementation::chosen().map_err(|e| anyhow::anyhow!(e))?;
        Self::start_with(kind, pubsub).await
    }

    /// Starts `kind` with the given local Pub/Sub (ignored by targets that start nothing; the
    /// containers target reads `RIG_PUBSUB` itself, see docs/containers.md).
    pub async fn start_with(
        kind: TargetKind,
        pubsub: PubsubImplementation,
    ) -> anyhow::Result<Self> {
        let (kind, target): (_, Box<dyn Target>) = match kind {
            TargetKind::Local => (kind, Box::new(LocalBackbone::start(pubsub).await?)),
            TargetKind::Env => (kind, Box::new(EnvBackbone::reach()?)),
            TargetKind::Gcp => (
                kind,
                Box::new(GcpBackbone::reach(&GcpOptions::from_env()?)?),
            ),
            TargetKind::Containers => (kind, Box::new(ContainersBackbone::start().await?)),
            TargetKind::Auto => match crate::containers::engine_version() {
                Ok(_) => (
                    TargetKind::Containers,
                    Box::new(ContainersBackbone::start().await?),
                ),
                Err(why) => {
                    tracing::info!("target auto: {why}; taking the local target");
                    (
                        TargetKind::Local,
                        Box::new(LocalBackbone::start(pubsub).await?),
                    )
                }
            },
        };
        Self::with_target(kind, target).await
    }

    /// A backbone on services someone else started (the compose stack: see
    /// [`ContainersBackbone::attach`]); provisioned like any other target's.
    pub async fn with_target(kind: TargetKind, target: Box<dyn Target>) -> anyhow::Result<Self> {
        let backbone = Self { kind, target };
        backbone.preflight().await?;
        for (service, took) in backbone.startup_times() {
            tracing::debug!("{service} answered after {took:?}");
        }
        if backbone.capabilities().provisions {
            let started = Instant::now();
            crate::provision::accounts(backbone.services())
                .await
                .map_err(|e| backbone.with_logs(e))?;
            tracing::debug!("accounts created in {:?}", started.elapsed());
        }
        Ok(backbone)
    }

    /// Reaches the GCP backbone `options` name (the CLI's `--project`, `--environment`,
    /// `--allow-prod`; [`Backbone::start`] reads the same from the process environment).
    pub async fn reach_gcp(options: &GcpOptions) -> anyhow::Result<Self> {
        let backbone = Self {
            kind: TargetKind::Gcp,
            target: Box::new(GcpBackbone::reach(options)?),
        };
        backbone.preflight().await?;
        Ok(backbone)
    }

    /// On a backbone the rig did not start: every endpoint it was pointed at answers, and
    /// where Google's own endpoints are used, credentials give a token — asked once, within
    /// seconds, before anything waits on them. What does not is named, with what to do.
    pub async fn preflight(&self) -> Result<(), Unready> {
        let services = self.services();
        if services.capabilities.provisions {
            // Started here, and waited for until each service answered.
            return Ok(());
        }
        let needs_google =
            services.pubsub_endpoint.is_none() || services.storage_endpoint.is_none();
        let endpoints = self.target.endpoints();
        probe(needs_google, &endpoints).await
    }

    /// Starts `kind` and deploys `scope` of `topology` on it: what `rig up`, `rig validate`,
    /// the tests and the benchmarks all begin with.
    pub async fn up(
        kind: TargetKind,
        scope: &str,
        topology: &Topology,
    ) -> anyhow::Result<(Self, Deployment)> {
        let pubsub = PubsubImplementation::chosen().map_err(|e| anyhow::anyhow!(e))?;
        Self::up_with(kind, pubsub, scope, topology).await
    }

    /// [`Backbone::up`] with the given local Pub/Sub (the CLI's `--pubsub`).
    pub async fn up_with(
        kind: TargetKind,
        pubsub: PubsubImplementation,
        scope: &str,
        topology: &Topology,
    ) -> anyhow::Result<(Self, Deployment)> {
        let backbone = Self::start_with(kind, pubsub).await?;
        let deployment = backbone.deploy(scope, topology).await?;
        Ok((backbone, deployment))
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    pub fn services(&self) -> &Services {
        self.target.services()
    }

    pub fn capabilities(&self) -> Capabilities {
        self.services().capabilities
    }

    /// Which Pub/Sub this backbone runs, as banners, reports and JUnit name it.
    pub fn pubsub(&self) -> PubsubImplementation {
        self.services().pubsub
    }

    /// The event store's engine as banners name it (a MariaDB says it is a stand-in).
    pub fn engine(&self) -> &str {
        &self.services().engine
    }

    /// How long each service took to answer, for banners and benchmarks.
    pub fn startup_times(&self) -> &[(String, Duration)] {
        &self.services().startup
    }

    /// Each service's name, pid and log file (for "what is running" and orphan checks).
    pub fn processes(&self) -> Vec<(String, u32, PathBuf)> {
        self.target.processes()
    }

    /// The last lines of every service's log: attach these to any failure report.
    pub fn log_tails(&self, max_bytes: u64) -> String {
        self.target.log_tails(max_bytes)
    }

    /// Each container the target runs: service name, container id.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.target.containers()
    }

    /// Stops what the target started and removes its temp dir now, while other threads may
    /// still hold the backbone: what an interrupted `rig scenarios` does before it exits.
    pub fn abort(&self) {
        self.target.abort();
    }

    /// How to kill, restart, freeze and thaw the target's services (`None` on a target that
    /// runs nothing of its own: env, gcp, an attached compose stack).
    pub fn control(&self) -> Option<&dyn ServiceControl> {
        self.target.control()
    }

    /// Provisions `topology` under `scope` (its own project, databases and bucket) and returns
    /// the endpoints and credentials to reach it.
    pub async fn deploy(&self, scope: &str, topology: &Topology) -> anyhow::Result<Deployment> {
        self.deploy_with(scope, topology, &rig_events::event_store::MIGRATOR)
            .await
    }

    /// [`Backbone::deploy`] with other migrations (the scenarios' mutation tests use a broken
    /// copy of `migrations/` this way).
    pub async fn deploy_with(
        &self,
        scope: &str,
        topology: &Topology,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<Deployment> {
        let started = Instant::now();
        let (environment, divergences) =
            crate::provision::deploy(self.services(), scope, topology, migrator)
                .await
                .map_err(|e| self.with_logs(e))?;
        Ok(Deployment {
            environment,
            divergences,
            took: started.elapsed(),
        })
    }

    /// Whoever provisions sees why it failed: the services' own words travel with the error.
    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let logs = self.log_tails(1500);
        if logs.is_empty() {
            return e;
        }
        e.context(format!(
            "provisioning failed; service logs (last lines):\n{logs}"
        ))
    }
}

/// Asks, at the same time, whether every endpoint of `endpoints` answers and, when
/// `needs_google`, whether Application Default Credentials give a token: each within seconds,
/// both named when both fail. What every command pointed at a backbone it did not start does
/// before it waits on anything (here, in `rig drift` and `rig worker`).
pub async fn probe(
    needs_google: bool,
    endpoints: &[rig_events::reach::Endpoint],
) -> Result<(), Unready> {
    let (credentials, reached) = tokio::join!(
        async {
            if needs_google {
                rig_events::adc::probe().await.map(Some)
            } else {
                Ok(None)
            }
        },
        rig_events::reach::probe_all(endpoints),
    );
    match (credentials, reached) {
        (Ok(source), Ok(())) => {
            if let Some(source) = source {
                tracing::info!("Google credentials from {source}");
            }
            Ok(())
        }
        (Err(credentials), Ok(())) => Err(Unready::Credentials(credentials)),
        (Ok(_), Err(unreachable)) => Err(Unready::Unreachable(unreachable)),
        (Err(credentials), Err(unreachable)) => Err(Unready::Both {
            credentials,
            unreachable,
        }),
    }
}

/// Why a backbone the rig was pointed at cannot be used, one line per cause.
#[derive(Debug, thiserror::Error)]
pub enum Unready {
    #[error(transparent)]
    Unreachable(#[from] rig_events::reach::Unreachable),
    #[error(transparent)]
    Credentials(#[from] rig_events::adc::NoCredentials),
    #[error("{credentials}\n{unreachable}")]
    Both {
        #[source]
        credentials: rig_events::adc::NoCredentials,
        unreachable: rig_events::reach::Unreachable,
    },
}

/// A provisioned environment and what provisioning noticed on the way.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub environment: Environment,
    pub divergences: Vec<crate::divergence::Divergence>,
    pub took: Duration,
}
