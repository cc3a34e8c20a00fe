//! An env file belongs to one backbone. `rig up --env-file F` claims `F` before it starts
//! anything — the directory must take a file, and a file another live `rig up` wrote is not
//! overwritten unless asked — marks it with its own pid ([`OWNER_VARIABLE`], exported with
//! the rest, so a shell that sourced it carries the mark), and removes it when it stops. A
//! file left by a killed rig names a pid that is gone: `--target env` says so before it tries
//! anything ([`stale_owner`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The variable that names the process whose backbone the environment describes.
pub const OWNER_VARIABLE: &str = "RIG_BACKBONE_PID";

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error(
        "--env-file {}: the directory {} does not exist (or is not a directory); create it or choose another path",
        path.display(),
        dir.display()
    )]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error(
        "--env-file {}: cannot write in {} ({source}); choose a directory you can write to",
        path.display(),
        dir.display()
    )]
    NotWritable {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--env-file {}: it belongs to the backbone of `rig up` pid {pid}, which is still running; stop that one (kill {pid}), choose another file, or pass --replace-env-file",
        path.display()
    )]
    OwnedByLiveBackbone { path: PathBuf, pid: u32 },
    #[error("--env-file {}: cannot read it ({source})", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--env-file {}: `rig up` pid {pid} took it over meanwhile; not overwriting it",
        path.display()
    )]
    TakenOver { path: PathBuf, pid: u32 },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whose file it is: a `rig up` that stays with its backbone, or `rig provision`, whose
/// backbone (a compose stack) outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Marked with this process's pid and removed when the claim is dropped.
    ThisProcess,
    /// Not marked, and left in place.
    Nobody,
}

/// An env file this process may write.
#[derive(Debug)]
pub struct EnvFile {
    path: PathBuf,
    ownership: Ownership,
    replace: bool,
    written: bool,
}

/// The pid an env file's mark names, if it has one.
pub fn owner_in(text: &str) -> Option<u32> {
    let prefix = format!("export {OWNER_VARIABLE}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.trim_matches('\''))
        .and_then(|v| v.parse().ok())
}

fn owner_of(path: &Path) -> Result<Option<u32>, EnvFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(owner_in(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EnvFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl EnvFile {
    /// Checks, before anything is started, that `path` can be written and is not another live
    /// backbone's (unless `replace`).
    pub fn claim(path: &Path, ownership: Ownership, replace: bool) -> Result<Self, EnvFileError> {
        let dir = directory_of(path);
        if !dir.is_dir() {
            return Err(EnvFileError::NoDirectory {
                path: path.to_path_buf(),
                dir,
            });
        }
        // Trying is the only reliable answer (permissions, read-only mounts, ACLs, quotas).
        tempfile::NamedTempFile::new_in(&dir).map_err(|source| EnvFileError::NotWritable {
            path: path.to_path_buf(),
            dir: dir.clone(),
            source,
        })?;
        if let Some(pid) = owner_of(path)? {
            let alive = pid != std::process::id() && crate::process::process_alive(pid);
            if alive && !replace {
                return Err(EnvFileError::OwnedByLiveBackbone {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            if alive {
                tracing::warn!(
                    "replacing {} of the running `rig up` pid {pid} (--replace-env-file)",
                    path.display()
                );
            } else {
                tracing::info!(
                    "replacing {}: the backbone that wrote it (pid {pid}) is gone",
                    path.display()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            ownership,
            replace,
            written: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mark to export with the environment (`None` for a file nobody owns).
    pub fn owner_export(&self) -> Option<(String, String)> {
        (self.ownership == Ownership::ThisProcess)
            .then(|| (OWNER_VARIABLE.to_string(), std::process::id().to_string()))
    }

    /// Writes `contents` readable by its owner only: the environment holds database
    /// passwords. A new file (mode 0600) replaces the old one by rename, so an existing file's
    /// mode (say 0644), or a reader holding it open, never sees the passwords.
    pub fn write(&mut self, contents: &str) -> Result<(), EnvFileError> {
        use std::os::unix::fs::PermissionsExt;
        // Two rigs started on one file at once both found it free: the later one to write
        // must not replace the file of the one that is now running.
        if let Some(pid) = owner_of(&self.path)?
            && !self.replace
            && pid != std::process::id()
            && crate::process::process_alive(pid)
        {
            return Err(EnvFileError::TakenOver {
                path: self.path.clone(),
                pid,
            });
        }
        let error = |source| EnvFileError::Write {
            path: self.path.clone(),
            source,
        };
        let mut file = tempfile::NamedTempFile::new_in(directory_of(&self.path)).map_err(error)?;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
        file.write_all(contents.as_bytes()).map_err(error)?;
        file.as_file().sync_all().map_err(error)?;
        file.persist(&self.path).map_err(|e| error(e.error))?;
        self.written = true;
        Ok(())
    }
}

impl Drop for EnvFile {
    /// The backbone is stopping: its file goes with it, if it is still this process's.
    fn drop(&mut self) {
        if self.ownership != Ownership::ThisProcess || !self.written {
            return;
        }
        if let Ok(Some(pid)) = owner_of(&self.path)
            && pid == std::process::id()
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// When the environment carries an owner mark whose process is gone: the refusal to give,
/// before anything is tried against endpoints nobody serves any more.
pub fn stale_owner(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let pid: u32 = lookup(OWNER_VARIABLE)?.trim().parse().ok()?;
    (!crate::process::process_alive(pid)).then(|| {
        format!(
            "the backbone that wrote this environment ({OWNER_VARIABLE}={pid}: `rig up` pid {pid}) is gone: start a new one with `rig up --env-file FILE`, `source FILE` again, and retry"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn the_owner_mark_is_read_back() {
        assert_eq!(
            owner_in("export A='b'\nexport RIG_BACKBONE_PID='42'\n"),
            Some(42)
        );
        assert_eq!(owner_in("export A='b'\n"), None);
    }

    #[test]
    fn a_live_backbones_file_is_refused_and_a_dead_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.env");
        // pid 1 is always alive, and never this process.
        std::fs::write(&path, "export RIG_BACKBONE_PID='1'\n").unwrap();
        let err = EnvFile::claim(&path, Ownership::ThisProcess, false).unwrap_err();
        assert!(
            err.to_string().contains("pid 1, which is still running"),
            "{err}"
        );
        assert!(EnvFile::claim(&path, Ownership::ThisProcess, true).is_ok());
        std::fs::write(&path, format!("export RIG_BACKBONE_PID='{}'\n", dead_pid())).unwrap();
        assert!(EnvFile::claim(&path, Ownership::ThisProcess, false).is_ok());
    }

    #[test]
    fn a_written_file_is_private_marked_and_removed_with_its_claim() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.env");
        let mut file = EnvFile::claim(&path, Ownership::ThisProcess, false).unwrap();
        let (name, value) = file.owner_export().unwrap();
        file.write(&format!("export {name}='{value}'\n")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(owner_of(&path).unwrap(), Some(std::process::id()));
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_directory_is_named_before_anything_starts() {
        let err = EnvFile::claim(
            Path::new("/nonexistent-dir/b.env"),
            Ownership::Nobody,
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_stale_mark_is_named() {
        let pid = dead_pid();
        let why = stale_owner(|_| Some(pid.to_string())).unwrap();
        assert!(why.contains(&format!("pid {pid}) is gone")), "{why}");
        assert_eq!(stale_owner(|_| Some("1".into())), None);
        assert_eq!(stale_owner(|_| None), None);
    }
}
