//! The kinds of target, and what a target hands back.
//!
//! A target only starts (or reaches) the backbone's services and hands back [`Services`]:
//! endpoints, credentials and [`Capabilities`]. What is created on them — topics,
//! subscriptions, bucket, databases, accounts, migrations, grants, the primary's seed — is
//! [`crate::provision`], the same for every target. Everything downstream receives an
//! [`crate::environment::Environment`] and decides by capabilities, never by asking which
//! target ran. A target is chosen in one place, [`crate::backbone::Backbone::start`].
//!
//! Adding a target: one file implementing [`Target`], and one arm in `Backbone::start`.

mod containers;
mod env;
mod gcp;
mod local;
pub mod workdir;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use containers::{AttachedServices, ContainersBackbone};
pub use env::EnvBackbone;
pub use gcp::{Access, ENDPOINT_VARIABLES, GcpBackbone, GcpEndpoints, GcpOptions};
pub use local::LocalBackbone;

use rig_events::event_store::DbConfig;
use rig_events::pubsub::PubsubImplementation;
use rig_events::reach::Endpoint;

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
    /// Stops what the target started, now, though others still hold it (an interrupted rig
    /// that exits without dropping it). Containers need nothing here: the reaper removes them
    /// once the rig is gone.
    fn abort(&self) {}
    /// The endpoints this target was pointed at rather than started, named by the variables
    /// that gave them: each is probed once before anything waits on it.
    fn endpoints(&self) -> Vec<Endpoint> {
        Vec::new()
    }
    /// How to fault this target's services from outside (`rig verify`'s event-store and GCS
    /// faults); `None` where the rig runs nothing it could stop (env, gcp).
    fn control(&self) -> Option<&dyn ServiceControl> {
        None
    }
}

/// A backbone service the rig can fault from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The event store's database server (the ledger).
    EventStore,
    /// The storage service (the claim-check bucket).
    Storage,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::EventStore => "the event store server",
            Service::Storage => "the storage service",
        })
    }
}

/// What [`ServiceControl`] hands back: its work happens on the target's own clients.
pub type ControlFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// Kill, restart, freeze and thaw a target's services, as a crash, a restart or a stall of
/// the real ones would happen. Endpoints and credentials stay the same throughout: a client
/// that reconnects finds the same server with the same data (the storage service of the local
/// and containers targets keeps objects in memory, so a restart loses them: a GCS outage is
/// a freeze).
pub trait ServiceControl: Send + Sync {
    /// Stops `service` at once, as a crash would (SIGKILL; `docker stop -t 0`).
    fn kill(&self, service: Service) -> ControlFuture<'_>;
    /// Starts a killed `service` again on the same port and data; resolves once it answers.
    fn restart(&self, service: Service) -> ControlFuture<'_>;
    /// Freezes `service` (SIGSTOP; `docker pause`): its connections stay open and nothing
    /// answers until [`ServiceControl::thaw`].
    fn freeze(&self, service: Service) -> ControlFuture<'_>;
    /// Lets a frozen `service` run on (SIGCONT; `docker unpause`).
    fn thaw(&self, service: Service) -> ControlFuture<'_>;
}
