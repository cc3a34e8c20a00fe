//! A throwaway MySQL-compatible server. On machines without MySQL 8 this is MariaDB — a stand-in,
//! named as such in every banner and report (see [`Engine::label`]).

// The datadir template is made sparse and copied hole-preserving (fallocate, lseek with
// SEEK_DATA/SEEK_HOLE), which std does not offer. Each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{ServiceError, find_binary, free_port, wait_until_ready, with_port_retries};
use crate::process::Service;
use crate::targets::workdir::{Busy, WorkDir};

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
        // "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)";
        // remembered per user while the binary is the same file.
        let mut spawn_error = None;
        let version = super::cached_lookup(
            "mysqld-version",
            &super::binary_identity(&server),
            |v| !v.is_empty() && v != "unknown",
            || {
                let output = Command::new(&server)
                    .arg("--version")
                    .output()
                    .map_err(|e| spawn_error = Some(e))
                    .ok()?;
                let text = String::from_utf8_lossy(&output.stdout);
                let version = text.split_whitespace().skip_while(|w| *w != "Ver").nth(1);
                Some(version.unwrap_or("unknown").to_string())
            },
        )
        .ok_or_else(|| ServiceError::Spawn {
            service: server.display().to_string(),
            source: spawn_error.unwrap_or_else(|| std::io::Error::other("could not be run")),
        })?;
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
    /// once per machine (install-db takes ~0.5 s). The template is sparse: 96 MB of its 113 MB
    /// are the zeros of an unused redo log and system tablespace, which a plain copy writes
    /// out for every server (~70 ms per server on our 2-core machine); holes copy as holes,
    /// ~6 MB of data in a few ms.
    fn prepare_datadir(&self, datadir: &Path, busy: &Busy) -> Result<(), ServiceError> {
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
        // "sparse": templates built before holes were punched stay unused (and dense).
        let template =
            std::env::temp_dir().join(format!("backbone-rig-datadir-{safe_version}-sparse"));
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
            // A tmpdir of its own: a server starting up deletes every `#sql*` file in its
            // tmpdir as an orphan, so two bootstraps sharing /tmp (two test processes on a
            // fresh machine) destroyed each other's temporary tables.
            let tmpdir = std::path::PathBuf::from(format!("{}.tmp", staging.display()));
            std::fs::create_dir_all(&tmpdir).map_err(io_err)?;
            let output = Command::new(&self.install_db)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", staging.display()))
                .arg(format!("--tmpdir={}", tmpdir.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .output()
                .map_err(io_err)?;
            let _ = std::fs::remove_dir_all(&tmpdir);
            if !output.status.success() {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(ServiceError::Exited {
                    service: "mariadb-install-db".into(),
                    status: output.status.to_string(),
                    log: "(stderr)".into(),
                    tail: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
            // Holes change no byte a reader sees: a failure only leaves the template dense.
            if let Err(e) = punch_zero_blocks(&staging) {
                tracing::debug!("leaving the datadir template dense: {e}");
            }
            // Another rig may have won the race; either template is fine.
            if std::fs::rename(&staging, &template).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        copy_dir(&template, datadir, busy).map_err(io_err)
    }
}

/// Copies a directory tree into `to`, which must not exist yet while its parent must: if the
/// rig's temp dir was removed meanwhile (a signal during start-up), the copy fails instead of
/// recreating it, unowned, for nobody to remove.
fn copy_dir(from: &Path, to: &Path, busy: &Busy) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        if busy.cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the rig is stopping",
            ));
        }
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target, busy)?;
        } else {
            copy_sparse(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The block size holes are punched in (ext4's and tmpfs's page size).
const BLOCK: usize = 4096;

/// Turns every all-zero block of the files under `dir` into a hole (content unchanged).
fn punch_zero_blocks(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            punch_zero_blocks(&entry.path())?;
            continue;
        }
        // Only the big files are worth it (ib_logfile0, ibdata1).
        if entry.metadata()?.len() < 1024 * 1024 {
            continue;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(entry.path())?;
        let fd = file.as_raw_fd();
        let punch = |start: u64, end: u64| -> std::io::Result<()> {
            if end <= start {
                return Ok(());
            }
            // SAFETY: fallocate(2) on a descriptor this function owns; no memory involved.
            let rc = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start as libc::off_t,
                    (end - start) as libc::off_t,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let mut block = vec![0u8; BLOCK];
        let (mut offset, mut zeros_from) = (0u64, None);
        loop {
            let n = read_block(&mut file, &mut block)?;
            if n == 0 {
                break;
            }
            let zero = n == BLOCK && block.iter().all(|&b| b == 0);
            match (zero, zeros_from) {
                (true, None) => zeros_from = Some(offset),
                (false, Some(start)) => {
                    punch(start, offset)?;
                    zeros_from = None;
                }
                _ => {}
            }
            offset += n as u64;
        }
        if let Some(start) = zeros_from {
            punch(start, offset)?;
        }
    }
    Ok(())
}

/// Fills `block` as far as the file allows.
fn read_block(file: &mut std::fs::File, block: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut filled = 0;
    while filled < block.len() {
        match file.read(&mut block[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Copies a file's data and leaves its holes as holes (`std::fs::copy` writes them out as
/// zeros on ext4). Falls back to a plain copy where the file system cannot say where its
/// data is.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::io::AsRawFd;
    let mut source = std::fs::File::open(from)?;
    let metadata = source.metadata()?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    target.set_permissions(metadata.permissions())?;
    target.set_len(metadata.len())?;
    let fd = source.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek(2) on a descriptor this function owns; no memory involved.
        let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let error = std::io::Error::last_os_error();
        // ENXIO: no data after `offset`.
        if error.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(error)
        }
    };
    let mut offset = 0;
    while offset < metadata.len() {
        let data = match seek(offset, libc::SEEK_DATA) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && offset == 0 => {
                drop(target);
                std::fs::remove_file(to)?;
                return std::fs::copy(from, to).map(|_| ());
            }
            Err(e) => return Err(e),
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(metadata.len());
        source.seek(SeekFrom::Start(data))?;
        target.seek(SeekFrom::Start(data))?;
        std::io::copy(&mut (&mut source).take(hole - data), &mut target)?;
        offset = hole;
    }
    Ok(())
}

/// The rig's privileged account on each server. The datadir template's own accounts (root on
/// localhost, 127.0.0.1, ::1 and the host name, all without a password) are removed before
/// the server accepts its first connection: see [`start`].
pub const ADMIN_USER: &str = "rig_admin";

/// A running server: TCP on loopback for clients, a socket for the rig's bootstrap.
pub struct MysqlServer {
    pub service: Service,
    pub port: u16,
    pub socket: PathBuf,
    admin_password: String,
}

impl MysqlServer {
    /// The rig's admin account over the local socket: only the rig uses it, to create users
    /// and databases.
    pub fn admin_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .socket(&self.socket)
            .username(ADMIN_USER)
            .password(&self.admin_password)
            .disable_statement_logging()
    }
}

/// The accounts a fresh server has: only the rig's admin, with `admin_password`. Run through
/// `--init-file`, i.e. before the server accepts any connection, so there is no moment when an
/// account without a password can be used (install-db's root accounts have none).
fn init_sql(engine: &Engine, admin_password: &str) -> String {
    let remove_defaults = if engine.is_mariadb() {
        // Every account but the locked system one that owns the sys views.
        "DELETE FROM mysql.global_priv WHERE User <> 'mariadb.sys';\nFLUSH PRIVILEGES;\n"
    } else {
        "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1', 'root'@'%';\n\
         ALTER USER 'root'@'localhost' ACCOUNT LOCK;\n"
    };
    format!(
        "{remove_defaults}CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{admin_password}';\n\
         GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION;\n"
    )
}

/// Starts a server whose only account is [`ADMIN_USER`] with `admin_password` (hex: it is
/// written into SQL).
pub async fn start(
    engine: &Engine,
    name: &str,
    workdir: &WorkDir,
    admin_password: &str,
) -> Result<MysqlServer, ServiceError> {
    with_port_retries(|| start_once(engine, name, workdir, admin_password)).await
}

async fn start_once(
    engine: &Engine,
    name: &str,
    workdir: &WorkDir,
    admin_password: &str,
) -> Result<MysqlServer, ServiceError> {
    let dir = workdir.path();
    let spawn_err = |source| ServiceError::Spawn {
        service: name.to_string(),
        source,
    };
    let datadir = dir.join(format!("{name}-data"));
    // Left by an attempt that lost its port to another process: start from the template again.
    let _ = std::fs::remove_dir_all(&datadir);
    let engine_clone = engine.clone();
    let datadir_clone = datadir.clone();
    let busy = workdir.enter().ok_or_else(|| {
        spawn_err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the rig is stopping",
        ))
    })?;
    tokio::task::spawn_blocking(move || engine_clone.prepare_datadir(&datadir_clone, &busy))
        .await
        .map_err(|e| spawn_err(std::io::Error::other(e)))??;
    let port = free_port().map_err(spawn_err)?;
    let socket = dir.join(format!("{name}.sock"));
    // Each server's temporary tables in its own dir: in the shared /tmp a test run saw one
    // server's internal temp table vanish under it (six test processes, a dozen servers), and
    // the rig's private dir goes with the rig.
    let tmpdir = dir.join(format!("{name}-tmp"));
    std::fs::create_dir_all(&tmpdir).map_err(spawn_err)?;
    let init_file = dir.join(format!("{name}-init.sql"));
    write_owner_only(&init_file, &init_sql(engine, admin_password)).map_err(spawn_err)?;
    let mut command = Command::new(&engine.server);
    command
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("{name}.pid")).display()
        ))
        .arg(format!("--port={port}"))
        .arg(format!("--init-file={}", init_file.display()))
        .args([
            "--bind-address=127.0.0.1",
            // Without these, --no-defaults gives latin1; Cloud SQL defaults to utf8mb4.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--skip-name-resolve",
            // No replica reads a binlog here, and Cloud SQL's own is not what is under test.
            "--skip-log-bin",
            // A commit is written to the OS at once but flushed to disk about once a second: it
            // survives this server crashing, not the machine (Cloud SQL runs with 1). The rig's
            // datadir is a throwaway removed on exit, so the machine-crash guarantee proves
            // nothing here, while a flush per commit makes every test's appends wait on the
            // disk. Figures measured on it say so: `cargo bench --bench pipeline` also runs
            // with 1 (README, "Measured figures").
            "--innodb-flush-log-at-trx-commit=2",
            // MySQL 8's default; MariaDB's 16M would reject the 12 MB payloads the ledger keeps.
            "--max-allowed-packet=64M",
            "--max-connections=500",
        ]);
    let service =
        Service::spawn(name, command, &dir.join(format!("{name}.log"))).map_err(spawn_err)?;
    let server = MysqlServer {
        service,
        port,
        socket,
        admin_password: admin_password.to_string(),
    };
    let options = server.admin_options();
    let mut service = server.service;
    let ready = wait_until_ready(&mut service, Duration::from_secs(60), || {
        let options = options.clone();
        async move {
            let conn = options.connect().await.map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(())
        }
    })
    .await;
    // The server has read it (or failed): the password need not stay on disk.
    let _ = std::fs::remove_file(&init_file);
    ready?;
    Ok(MysqlServer { service, ..server })
}

/// A file only the rig's user can read (the dir is private too; this is belt and braces).
fn write_owner_only(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
