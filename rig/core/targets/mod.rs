//! The one place a target is chosen. Everything downstream receives an [`Environment`]
//! (endpoints and credentials) and cannot tell which target produced it except by asking.

mod local;

use std::fmt;
use std::time::Duration;

pub use local::LocalBackbone;

use crate::environment::Environment;
use crate::topology::Topology;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Emulators and a MySQL-compatible server as local processes (no Docker, no GCP account).
    Local,
    /// Whatever the process environment points at (`rig up`'s variables, or real GCP with
    /// Application Default Credentials): the rig starts nothing.
    FromEnvironment,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Local => "local",
            TargetKind::FromEnvironment => "environment variables",
        })
    }
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(TargetKind::Local),
            "env" => Ok(TargetKind::FromEnvironment),
            "gcp" => Err(
                "for real GCP use `--target env` with GOOGLE_CLOUD_PROJECT, Application Default Credentials and DB_EVENT_STORE_*/DB_* set (see README, Targets)"
                    .into(),
            ),
            "containers" => Err(
                "target `containers` is not available yet: no Docker engine on the machines this was built on (see README, Targets)"
                    .into(),
            ),
            other => Err(format!("unknown target `{other}`: expected `local` or `env`")),
        }
    }
}

/// A running backbone. Dropping it stops every process it started and removes its files.
pub enum Backbone {
    Local(LocalBackbone),
}

impl Backbone {
    pub async fn start(kind: TargetKind) -> anyhow::Result<Self> {
        match kind {
            TargetKind::Local => Ok(Backbone::Local(LocalBackbone::start().await?)),
            TargetKind::FromEnvironment => anyhow::bail!(
                "a backbone described by environment variables is not started by the rig: use it with `rig validate --target env` or `rig worker`"
            ),
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Backbone::Local(_) => TargetKind::Local,
        }
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
        let deployed = match self {
            Backbone::Local(local) => local.deploy(scope, topology, migrator).await,
        };
        // Whoever provisions sees why it failed: the services' own words travel with the error.
        deployed.map_err(|e| {
            e.context(format!(
                "provisioning failed; service logs (last lines):\n{}",
                self.log_tails(1500)
            ))
        })
    }

    /// The event store's engine as banners name it (a MariaDB says it is a stand-in).
    pub fn engine(&self) -> &str {
        match self {
            Backbone::Local(local) => &local.engine,
        }
    }

    /// How long each service took to answer, for banners and benchmarks.
    pub fn startup_times(&self) -> &[(String, Duration)] {
        match self {
            Backbone::Local(local) => &local.startup_times,
        }
    }

    /// Each service's name, pid and log file (for "what is running" and orphan checks).
    pub fn processes(&self) -> Vec<(String, u32, std::path::PathBuf)> {
        match self {
            Backbone::Local(local) => local.processes(),
        }
    }

    /// The last lines of every service's log: attach these to any failure report.
    pub fn log_tails(&self, max_bytes: u64) -> String {
        match self {
            Backbone::Local(local) => local.log_tails(max_bytes),
        }
    }
}

/// A provisioned environment and what provisioning noticed on the way.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub environment: Environment,
    pub divergences: Vec<crate::divergence::Divergence>,
    pub took: Duration,
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
