//! The local target: every service as a child process on a free loopback port, in one temp dir.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{ConnectOptions, Connection, Executor};

use super::{Deployment, db_suffix, dns_suffix};
use crate::environment::Environment;
use crate::event_store::{DbConfig, trusted_sql};
use crate::process::Service;
use crate::provision;
use crate::pubsub::PubsubConnection;
use crate::services::{fake_gcs, mysql, pubsub_emulator};
use crate::storage::StorageConnection;
use crate::targets::TargetKind;
use crate::topology::Topology;

/// The worker's database user, as the epic names it.
pub const WORKER_USER: &str = "sync_worker";
/// The SuiteX application's user on the primary database.
pub const APP_USER: &str = "suitex_app";
/// The rig's privileged user on both servers (created over the root socket).
const ADMIN_USER: &str = "rig_admin";

pub struct LocalBackbone {
    // Fields drop in order: processes stop before their directory is removed.
    services: Vec<Service>,
    http: reqwest::Client,
    pubsub_port: u16,
    storage_port: u16,
    event_store_admin: DbConfig,
    primary_admin: DbConfig,
    worker_password: String,
    app_password: String,
    pub(super) engine: String,
    pub(super) startup_times: Vec<(String, Duration)>,
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
    pub async fn start() -> anyhow::Result<Self> {
        remove_abandoned_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating the rig's temp dir")?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .context("writing the rig's pid file")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let locate = tokio::task::spawn_blocking(|| -> Result<_, crate::services::ServiceError> {
            Ok((
                pubsub_emulator::locate_java()?,
                pubsub_emulator::locate_jar()?,
                fake_gcs::locate()?,
                mysql::Engine::locate()?,
            ))
        });
        let (java, jar, fake_gcs_bin, engine) = locate.await??;
        let root = dir.path();
        let timed = |name: &'static str, started: Instant| (name.to_string(), started.elapsed());
        let started = Instant::now();
        // Everything starts at once: the JVM alone takes over a second.
        let (pubsub, storage, event_store, primary) = tokio::try_join!(
            async {
                let r = pubsub_emulator::start(&java, &jar, root, &http).await?;
                Ok::<_, crate::services::ServiceError>((r, timed("pubsub-emulator", started)))
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
        let ((pubsub_service, pubsub_port), t1) = pubsub;
        let ((storage_service, storage_port), t2) = storage;
        let (event_store, t3) = event_store;
        let (primary, t4) = primary;

        let worker_password = secret();
        let app_password = secret();
        let admin_password = secret();
        let bootstrap = |server: &mysql::MysqlServer, user: &'static str, password: String| {
            let options = server.root_options();
            let admin_password = admin_password.clone();
            async move {
                let mut conn = options.connect().await?;
                for sql in [
                    format!("CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{admin_password}'"),
                    format!("GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION"),
                    format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
                ] {
                    conn.execute(trusted_sql(sql)).await?;
                }
                conn.close().await
            }
        };
        tokio::try_join!(
            bootstrap(&event_store, WORKER_USER, worker_password.clone()),
            bootstrap(&primary, APP_USER, app_password.clone()),
        )
        .context("creating the database users")?;
        let admin_config = |port| DbConfig {
            connection: "mysql".into(),
            host: "127.0.0.1".into(),
            port,
            database: String::new(),
            username: ADMIN_USER.into(),
            password: admin_password.clone(),
        };
        Ok(Self {
            event_store_admin: admin_config(event_store.port),
            primary_admin: admin_config(primary.port),
            services: vec![
                pubsub_service,
                storage_service,
                event_store.service,
                primary.service,
            ],
            http,
            pubsub_port,
            storage_port,
            worker_password,
            app_password,
            engine: engine.label(),
            startup_times: vec![t1, t2, t3, t4],
            dir,
        })
    }

    pub(super) fn processes(&self) -> Vec<(String, u32, std::path::PathBuf)> {
        self.services
            .iter()
            .map(|s| (s.name().to_string(), s.pid(), s.log_path().to_path_buf()))
            .collect()
    }

    pub(super) fn log_tails(&self, max_bytes: u64) -> String {
        self.services
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

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub(super) async fn deploy(
        &self,
        scope: &str,
        topology: &Topology,
        migrator: &sqlx::migrate::Migrator,
    ) -> anyhow::Result<Deployment> {
        let started = Instant::now();
        let default_scope = scope.is_empty() || scope == "default";
        let (project_id, events_db, primary_db, bucket) = if default_scope {
            (
                format!("backbone-{}", topology.environment),
                "events".to_string(),
                "suitex".to_string(),
                topology.bucket.name.clone(),
            )
        } else {
            let mut bucket = format!("{}-{}", topology.bucket.name, dns_suffix(scope));
            bucket.truncate(63);
            (
                format!("rig-{}", dns_suffix(scope)),
                format!("events_{}", db_suffix(scope)),
                format!("suitex_{}", db_suffix(scope)),
                bucket.trim_end_matches('-').to_string(),
            )
        };
        let pubsub = PubsubConnection {
            endpoint: Some(format!("http://127.0.0.1:{}", self.pubsub_port)),
            project_id: project_id.clone(),
        };
        let storage = StorageConnection {
            endpoint: Some(format!("http://127.0.0.1:{}", self.storage_port)),
            project_id,
        };
        let event_store_admin = self.event_store_admin.with_database(&events_db);
        let primary_admin = self.primary_admin.with_database(&primary_db);
        let (_, divergences, _, _) = tokio::try_join!(
            async {
                provision::apply_pubsub(&pubsub, topology)
                    .await
                    .context("provisioning Pub/Sub from the Terraform topology")
            },
            async {
                provision::apply_bucket(&storage, &self.http, &bucket, &topology.bucket)
                    .await
                    .context("creating the payload bucket")
            },
            async {
                create_database(&self.event_store_admin, &events_db, None).await?;
                let pool = event_store_admin.pool(1).await?;
                migrator
                    .run(&pool)
                    .await
                    .with_context(|| format!("applying migrations/ to {events_db}"))?;
                pool.close().await;
                Ok::<_, anyhow::Error>(())
            },
            async {
                create_database(&self.primary_admin, &primary_db, Some(APP_USER)).await?;
                seed_primary(&primary_admin).await
            },
        )?;
        let environment = Environment {
            target: TargetKind::Local,
            scope: if default_scope {
                "default".into()
            } else {
                scope.to_string()
            },
            topology: topology.clone(),
            pubsub,
            storage,
            bucket,
            event_store: DbConfig {
                username: WORKER_USER.into(),
                password: self.worker_password.clone(),
                ..event_store_admin.clone()
            },
            event_store_admin,
            primary: DbConfig {
                username: APP_USER.into(),
                password: self.app_password.clone(),
                ..primary_admin.clone()
            },
            primary_admin,
            engine: self.engine.clone(),
        };
        Ok(Deployment {
            environment,
            divergences,
            took: started.elapsed(),
        })
    }
}

async fn create_database(
    admin: &DbConfig,
    database: &str,
    owner: Option<&str>,
) -> anyhow::Result<()> {
    let mut conn = admin.connect_options().connect().await.with_context(|| {
        format!(
            "connecting to {}:{} as {}",
            admin.host, admin.port, admin.username
        )
    })?;
    conn.execute(trusted_sql(format!(
        "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .await
    .with_context(|| format!("creating database {database}"))?;
    if let Some(owner) = owner {
        conn.execute(trusted_sql(format!(
            "GRANT ALL PRIVILEGES ON `{database}`.* TO '{owner}'@'%'"
        )))
        .await?;
    }
    conn.close().await?;
    Ok(())
}

/// The primary stands for SuiteX's existing database: it has data of its own, so "untouched"
/// can be checked against something.
async fn seed_primary(primary: &DbConfig) -> anyhow::Result<()> {
    let mut conn = primary.connect_options().connect().await?;
    conn.execute(
        "CREATE TABLE tenant_accounts (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            account_id VARCHAR(255) NOT NULL UNIQUE,
            name VARCHAR(255) NOT NULL
        ) ENGINE = InnoDB;
        INSERT INTO tenant_accounts (account_id, name) VALUES
            ('TSTDRV1000001', 'Acme Corp'), ('TSTDRV1000002', 'Globex'), ('TSTDRV1000003', 'Initech');",
    )
    .await
    .context("seeding the primary database")?;
    conn.close().await?;
    Ok(())
}
