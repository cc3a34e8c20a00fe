//! The one place a target is chosen.
//!
//! A target only starts (or reaches) the backbone's services and hands back [`Services`]:
//! endpoints, credentials and [`Capabilities`]. What is created on them — topics,
//! subscriptions, bucket, databases, accounts, migrations, grants, the primary's seed — is
//! [`crate::provision`], the same for every target. Everything downstream receives an
//! [`Environment`] and decides by capabilities, never by asking which target ran.
//!
//! Adding a target: one file implementing [`Target`], and one arm in [`Backbone::start`].

mod containers;
mod env;
mod gcp;
mod local;
pub mod workdir;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use containers::{AttachedServices, ContainersBackbone};
pub use env::EnvBackbone;
pub use gcp::{Access, GcpBackbone, GcpOptions};
pub use local::LocalBackbone;

use crate::environment::Environment;
use crate::event_store::DbConfig;
use crate::pubsub::PubsubImplementation;
use crate::topology::Topology;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Emulators and MySQL-compatible servers as local processes (no Docker, no GCP account).
    Local,
    /// Whatever the process environment points at (`rig up`'s variables, or real GCP with
    /// Application Default Credentials): the rig starts nothing and creates nothing.
    Env,
    /// The backbone Terraform deployed in a GCP project (`--project`, `--environment`):
    /// Application Default Credentials; nothing started, created or changed; prod refused
    /// unless allowed, and then read-only.
    Gcp,
    /// The same services as containers on a Docker engine (testcontainers); see
    /// docs/containers.md.
    Containers,
    /// `containers` when a Docker engine answers, `local` otherwise (decided at start).
    Auto,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Local => "local",
            TargetKind::Env => "environment variables",
            TargetKind::Gcp => "gcp",
            TargetKind::Containers => "containers",
            TargetKind::Auto => "auto",
        })
    }
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(TargetKind::Local),
            "env" => Ok(TargetKind::Env),
            "gcp" => Ok(TargetKind::Gcp),
            "containers" => Ok(TargetKind::Containers),
            "auto" => Ok(TargetKind::Auto),
            other => Err(format!(
                "unknown target `{other}`: expected `local`, `containers`, `auto`, `env` or `gcp`"
            )),
        }
    }
}

/// What a target allows, so callers ask about abilities rather than about targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// The rig creates the backbone's resources here, so every scope gets its own isolated
    /// project, bucket and databases (scenarios need this).
    pub provisions: bool,
    /// The primary database is the rig's own stand-in: it may be read whole (checksums). A
    /// live SuiteX primary is only looked at (table list, uptime).
    pub owns_primary: bool,
}

/// What a started (or reached) target hands back: where each service answers, as whom, and
/// what the target allows. Nothing else about a target crosses this line.
#[derive(Debug, Clone)]
pub struct Services {
    /// The target's name for banners and reports.
    pub target: String,
    pub capabilities: Capabilities,
    /// `http://host:port` of a Pub/Sub emulator; `None` for Google's endpoint.
    pub pubsub_endpoint: Option<String>,
    /// What answers at `pubsub_endpoint` (our own service, Google's emulator, or Google).
    pub pubsub: PubsubImplementation,
    /// `http://host:port` of a storage emulator; `None` for Google's endpoint.
    pub storage_endpoint: Option<String>,
    /// The event store server as its schema owner (migrations, DDL).
    pub event_store_admin: DbConfig,
    /// The worker's account on the event store server (`DB_EVENT_STORE_*`).
    pub event_store_worker: DbConfig,
    /// The primary server as an observer with every privilege (it seeds the rig's own primary).
    pub primary_admin: DbConfig,
    /// The SuiteX application's account on the primary server (`DB_*`).
    pub primary_app: DbConfig,
    /// The event store's engine as banners name it (a stand-in says so).
    pub engine: String,
    /// On a target that provisions nothing, the project and bucket that already exist.
    pub existing: Option<Existing>,
    /// How long each service took to answer.
    pub startup: Vec<(String, Duration)>,
}

/// Where an already-deployed backbone lives (its databases are in the [`DbConfig`]s).
#[derive(Debug, Clone)]
pub struct Existing {
    pub project_id: String,
    /// `None`: the Terraform's bucket name.
    pub bucket: Option<String>,
}

/// One kind of target: it has started or reached the services, and stops what it started when
/// dropped.
pub trait Target: Send + Sync {
    fn services(&self) -> &Services;
    /// Each process the target runs: name, pid, log file.
    fn processes(&self) -> Vec<(String, u32, PathBuf)> {
        Vec::new()
    }
    /// The last lines of every service's log, to attach to a failure.
    fn log_tails(&self, _max_bytes: u64) -> String {
        String::new()
    }
    /// Each container the target runs: service name, container id.
    fn containers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

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
    pub fn reach_gcp(options: &GcpOptions) -> anyhow::Result<Self> {
        Ok(Self {
            kind: TargetKind::Gcp,
            target: Box::new(GcpBackbone::reach(options)?),
        })
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

    /// Provisions `topology` under `scope` (its own project, databases and bucket) and returns
    /// the endpoints and credentials to reach it.
    pub async fn deploy(&self, scope: &str, topology: &Topology) -> anyhow::Result<Deployment> {
        self.deploy_with(scope, topology, &crate::event_store::MIGRATOR)
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

/// The scope `rig up` and `rig validate` deploy: the environment's own names.
pub const DEFAULT_SCOPE: &str = "default";

/// A provisioned environment and what provisioning noticed on the way.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub environment: Environment,
    pub divergences: Vec<crate::divergence::Divergence>,
    pub took: Duration,
}
