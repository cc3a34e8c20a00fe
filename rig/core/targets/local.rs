//! The local target: every service as a child process on a free loopback port, in one temp dir.

use std::time::Instant;

use anyhow::Context;
use sqlx::{ConnectOptions, Connection, Executor};

use super::{Capabilities, Services, Target};
use crate::event_store::{DbConfig, trusted_sql};
use crate::process::Service;
use crate::provision::{APP_USER, WORKER_USER};
use crate::pubsub::PubsubImplementation;
use crate::services::{fake_gcs, mysql, pubsub_emulator};

/// The rig's privileged user on both servers (created over the root socket).
const ADMIN_USER: &str = "rig_admin";

pub struct LocalBackbone {
    // Fields drop in order: processes stop before their directory is removed.
    /// Our own Pub/Sub, in this process (when chosen). Only held: dropping it stops it.
    #[allow(dead_code)]
    pubsub_service: Option<pubsub_service::RunningService>,
    processes: Vec<Service>,
    services: Services,
    dir: tempfile::TempDir,
}

const DIR_PREFIX: &str = "backbone-rig-";
const OWNER_FILE: &str = "rig.pid";

/// A rig that was SIGKILLed could not remove its temp dir (its children died with it, see
/// `process.rs`); the next rig removes such dirs once their owner is gone.
fn remove_abandoned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX) && !n.starts_with("backbone-rig-datadir-"));
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if let (true, Some(pid)) = (is_ours, owner)
            && !crate::process::process_alive(pid)
        {
            tracing::info!(
                "removing {} left by a rig that was killed (pid {pid})",
                path.display()
            );
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl LocalBackbone {
    pub async fn start(pubsub: PubsubImplementation) -> anyhow::Result<Self> {
        if pubsub == PubsubImplementation::Google {
            anyhow::bail!(
                "the local target cannot run real Pub/Sub: use `--target env` against GCP"
            );
        }
        remove_abandoned_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating the rig's temp dir")?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .context("writing the rig's pid file")?;
        let http = crate::storage::http_client()?;
        let google_emulator = pubsub == PubsubImplementation::GoogleEmulator;
        let locate =
            tokio::task::spawn_blocking(move || -> Result<_, crate::services::ServiceError> {
                let emulator = if google_emulator {
                    Some((
                        pubsub_emulator::locate_java()?,
                        pubsub_emulator::locate_jar()?,
                    ))
                } else {
                    None
                };
                Ok((emulator, fake_gcs::locate()?, mysql::Engine::locate()?))
            });
        let (emulator, fake_gcs_bin, engine) = locate.await??;
        let root = dir.path();
        let timed = |name: &'static str, started: Instant| (name.to_string(), started.elapsed());
        let started = Instant::now();
        // Everything starts at once: the JVM alone takes over a second.
        let (pubsub_started, storage, event_store, primary) = tokio::try_join!(
            async {
                let r = match &emulator {
                    Some((java, jar)) => {
                        let (process, port) =
                            pubsub_emulator::start(java, jar, root, &http).await?;
                        (None, Some(process), port)
                    }
                    None => {
                        // In process: ready as soon as its socket is bound.
                        let running =
                            pubsub_service::PubsubService::start(([127, 0, 0, 1], 0).into())
                                .await
                                .map_err(|source| crate::services::ServiceError::Spawn {
                                    service: "pubsub-service (binding a loopback port)".into(),
                                    source,
                                })?;
                        let port = running.local_addr().port();
                        (Some(running), None, port)
                    }
                };
                let name = if emulator.is_some() {
                    "pubsub-emulator"
                } else {
                    "pubsub-service"
                };
                Ok::<_, crate::services::ServiceError>((r, timed(name, started)))
            },
            async {
                let r = fake_gcs::start(&fake_gcs_bin, root, &http).await?;
                Ok((r, timed("fake-gcs-server", started)))
            },
            async {
                let r = mysql::start(&engine, "event-store-db", root).await?;
                Ok((r, timed("event-store-db", started)))
            },
            async {
                let r = mysql::start(&engine, "primary-db", root).await?;
                Ok((r, timed("primary-db", started)))
            },
        )?;
        let ((pubsub_service, pubsub_process, pubsub_port), t1) = pubsub_started;
        let ((storage_service, storage_port), t2) = storage;
        let (event_store, t3) = event_store;
        let (primary, t4) = primary;

        let admin_password = secret();
        let bootstrap = |server: &mysql::MysqlServer| {
            let options = server.root_options();
            let admin_password = admin_password.clone();
            async move {
                let mut conn = options.connect().await?;
                for sql in [
                    format!("CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{admin_password}'"),
                    format!("GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION"),
                ] {
                    conn.execute(trusted_sql(sql)).await?;
                }
                conn.close().await
            }
        };
        tokio::try_join!(bootstrap(&event_store), bootstrap(&primary))
            .context("creating the rig's admin account on the database servers")?;
        let account = |port, username: &str, password: String| DbConfig {
            connection: "mysql".into(),
            host: "127.0.0.1".into(),
            port,
            database: String::new(),
            username: username.into(),
            password,
        };
        let services = Services {
            target: "local".into(),
            capabilities: Capabilities {
                provisions: true,
                owns_primary: true,
            },
            pubsub_endpoint: Some(format!("http://127.0.0.1:{pubsub_port}")),
            pubsub,
            storage_endpoint: Some(format!("http://127.0.0.1:{storage_port}")),
            event_store_admin: account(event_store.port, ADMIN_USER, admin_password.clone()),
            event_store_worker: account(event_store.port, WORKER_USER, secret()),
            primary_admin: account(primary.port, ADMIN_USER, admin_password.clone()),
            primary_app: account(primary.port, APP_USER, secret()),
            engine: engine.label(),
            existing: None,
            startup: vec![t1, t2, t3, t4],
        };
        Ok(Self {
            pubsub_service,
            processes: pubsub_process
                .into_iter()
                .chain([storage_service, event_store.service, primary.service])
                .collect(),
            services,
            dir,
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Target for LocalBackbone {
    fn services(&self) -> &Services {
        &self.services
    }

    fn processes(&self) -> Vec<(String, u32, std::path::PathBuf)> {
        self.processes
            .iter()
            .map(|s| (s.name().to_string(), s.pid(), s.log_path().to_path_buf()))
            .collect()
    }

    fn log_tails(&self, max_bytes: u64) -> String {
        self.processes
            .iter()
            .map(|s| {
                format!(
                    "--- {} ({}) ---\n{}",
                    s.name(),
                    s.log_path().display(),
                    s.log_tail(max_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
