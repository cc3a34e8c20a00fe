//! A throwaway MySQL-compatible server. On machines without MySQL 8 this is MariaDB — a stand-in,
//! named as such in every banner and report (see [`Engine::label`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{ServiceError, find_binary, free_port, wait_until_ready, with_port_retries};
use crate::process::Service;

pub const SERVER_OVERRIDE: &str = "RIG_MYSQLD";
pub const INSTALL_DB_OVERRIDE: &str = "RIG_MYSQL_INSTALL_DB";

/// The server binaries and what they are.
#[derive(Debug, Clone)]
pub struct Engine {
    pub server: PathBuf,
    pub install_db: PathBuf,
    /// As the server reports it, e.g. `10.11.19-MariaDB-0+deb12u1`.
    pub version: String,
}

impl Engine {
    pub fn locate() -> Result<Self, ServiceError> {
        let how = "`apt-get install --no-install-recommends mariadb-server` \
                   (MariaDB is the local stand-in for MySQL 8.4)";
        let server = find_binary(
            SERVER_OVERRIDE,
            &["mariadbd", "mysqld"],
            &["/usr/sbin", "/usr/local/sbin"],
        )
        .ok_or_else(|| ServiceError::Missing {
            what: "mariadbd".into(),
            how_to_get_it: format!("{how}, or set {SERVER_OVERRIDE}"),
        })?;
        let install_db = find_binary(
            INSTALL_DB_OVERRIDE,
            &["mariadb-install-db", "mysql_install_db"],
            &["/usr/bin", "/usr/local/bin"],
        )
        .ok_or_else(|| ServiceError::Missing {
            what: "mariadb-install-db".into(),
            how_to_get_it: format!("{how}, or set {INSTALL_DB_OVERRIDE}"),
        })?;
        let output = Command::new(&server)
            .arg("--version")
            .output()
            .map_err(|source| ServiceError::Spawn {
                service: server.display().to_string(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)"
        let version = text
            .split_whitespace()
            .skip_while(|w| *w != "Ver")
            .nth(1)
            .unwrap_or("unknown")
            .to_string();
        Ok(Self {
            server,
            install_db,
            version,
        })
    }

    pub fn is_mariadb(&self) -> bool {
        self.version.contains("MariaDB")
    }

    /// What reports call this engine: a MariaDB is always labelled as the stand-in it is.
    pub fn label(&self) -> String {
        if self.is_mariadb() {
            format!(
                "MariaDB {} (local stand-in for Cloud SQL MySQL 8.4)",
                self.version.split('-').next().unwrap_or(&self.version)
            )
        } else {
            format!("MySQL {}", self.version)
        }
    }

    /// A freshly initialised data directory, copied from a per-version template that is built
    /// once per machine (install-db takes ~0.5 s; a copy takes a few ms).
    fn prepare_datadir(&self, datadir: &Path) -> Result<(), ServiceError> {
        let io_err = |source| ServiceError::Spawn {
            service: "mariadb-install-db".into(),
            source,
        };
        let safe_version: String = self
            .version
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let template = std::env::temp_dir().join(format!("backbone-rig-datadir-{safe_version}"));
        // One template build per process at a time; other processes race safely through the
        // unique staging dir and the atomic rename below.
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
        if !template.join("mysql").is_dir() {
            let staging = std::env::temp_dir().join(format!(
                "backbone-rig-datadir-{safe_version}.{}",
                uuid::Uuid::new_v4().simple()
            ));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(io_err)?;
            let output = Command::new(&self.install_db)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", staging.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .output()
                .map_err(io_err)?;
            if !output.status.success() {
                return Err(ServiceError::Exited {
                    service: "mariadb-install-db".into(),
                    status: output.status.to_string(),
                    log: "(stderr)".into(),
                    tail: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
            // Another rig may have won the race; either template is fine.
            if std::fs::rename(&staging, &template).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        copy_dir(&template, datadir).map_err(io_err)
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A running server: TCP on loopback for clients, a socket for the rig's root bootstrap.
pub struct MysqlServer {
    pub service: Service,
    pub port: u16,
    pub socket: PathBuf,
}

impl MysqlServer {
    /// Root over the local socket: only the rig uses it, to create users and databases.
    pub fn root_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .socket(&self.socket)
            .username("root")
            .disable_statement_logging()
    }
}

pub async fn start(engine: &Engine, name: &str, dir: &Path) -> Result<MysqlServer, ServiceError> {
    with_port_retries(|| start_once(engine, name, dir)).await
}

async fn start_once(engine: &Engine, name: &str, dir: &Path) -> Result<MysqlServer, ServiceError> {
    let spawn_err = |source| ServiceError::Spawn {
        service: name.to_string(),
        source,
    };
    let datadir = dir.join(format!("{name}-data"));
    let engine_clone = engine.clone();
    let datadir_clone = datadir.clone();
    tokio::task::spawn_blocking(move || engine_clone.prepare_datadir(&datadir_clone))
        .await
        .map_err(|e| spawn_err(std::io::Error::other(e)))??;
    let port = free_port().map_err(spawn_err)?;
    let socket = dir.join(format!("{name}.sock"));
    let mut command = Command::new(&engine.server);
    command
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("{name}.pid")).display()
        ))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            // Without these, --no-defaults gives latin1; Cloud SQL defaults to utf8mb4.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=2",
            // MySQL 8's default; MariaDB's 16M would reject the 12 MB payloads the ledger keeps.
            "--max-allowed-packet=64M",
            "--max-connections=500",
        ]);
    let mut service =
        Service::spawn(name, command, &dir.join(format!("{name}.log"))).map_err(spawn_err)?;
    let options = MySqlConnectOptions::new()
        .socket(&socket)
        .username("root")
        .disable_statement_logging();
    wait_until_ready(&mut service, Duration::from_secs(60), || {
        let options = options.clone();
        async move {
            let conn = options.connect().await.map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(())
        }
    })
    .await?;
    Ok(MysqlServer {
        service,
        port,
        socket,
    })
}
