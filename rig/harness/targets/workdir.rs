//! The local target's temp dir, removed on every path out — including a signal in the middle
//! of start-up, when blocking threads may still be copying ~100 MB datadirs into it. Removing
//! the dir under a running copy used to fail (the copy kept adding files) or be undone (the
//! copy recreated it), leaving a dir without an owner file that no later rig removed.
//!
//! So writers register while they work ([`WorkDir::enter`]) and check [`Busy::cancelled`]
//! between files; dropping the `WorkDir` cancels them, waits until none is left, then removes
//! the dir.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a drop waits for writers; a file copy checks for cancellation every file.
const WRITERS_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Activity {
    cancelled: AtomicBool,
    writers: Mutex<usize>,
    idle: Condvar,
}

pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    activity: Arc<Activity>,
}

/// A writer at work in the dir; the dir is not removed until it is dropped.
pub struct Busy {
    activity: Arc<Activity>,
}

impl Busy {
    /// The dir is being removed: stop writing into it.
    pub fn cancelled(&self) -> bool {
        self.activity.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut writers = self
            .activity
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *writers = writers.saturating_sub(1);
        self.activity.idle.notify_all();
    }
}

impl WorkDir {
    pub fn new(dir: tempfile::TempDir) -> Self {
        Self {
            dir: Some(dir),
            activity: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Registers a writer, or `None` when the dir is already being removed.
    pub fn enter(&self) -> Option<Busy> {
        let mut writers = self
            .activity
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.activity.cancelled.load(Ordering::SeqCst) {
            return None;
        }
        *writers += 1;
        Some(Busy {
            activity: self.activity.clone(),
        })
    }
}

impl WorkDir {
    /// Removes the dir now, from a shared reference, once its processes were killed: for a
    /// rig that is interrupted while other threads still hold its backbone (and will not get
    /// to drop it). Dying processes may still close files for a moment, hence the retries.
    pub fn remove_now(&self) {
        self.activity.cancelled.store(true, Ordering::SeqCst);
        let path = self.path();
        for _ in 0..40 {
            match std::fs::remove_dir_all(path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        if path.exists() {
            tracing::warn!("could not remove {}", path.display());
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let writers = self
            .activity
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.activity.cancelled.store(true, Ordering::SeqCst);
        let (writers, timeout) = self
            .activity
            .idle
            .wait_timeout_while(writers, WRITERS_GRACE, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            tracing::warn!(
                "{} writers still busy in {} after {WRITERS_GRACE:?}; removing it anyway",
                *writers,
                self.path().display()
            );
        }
        drop(writers);
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                // One retry: a writer that timed out may have added a file meanwhile.
                if std::fs::remove_dir_all(&path).is_err() && path.exists() {
                    tracing::warn!("could not remove {}: {e}", path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_waits_for_writers_and_removes_what_they_wrote() {
        let dir = WorkDir::new(tempfile::tempdir().unwrap());
        let path = dir.path().to_path_buf();
        let busy = dir.enter().unwrap();
        let target = path.join("data");
        let writer = std::thread::spawn(move || {
            std::fs::create_dir(&target).unwrap();
            let mut n = 0;
            // Keeps writing until told to stop, like a datadir copy.
            while !busy.cancelled() {
                std::fs::write(target.join(format!("f{n}")), b"x").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(dir);
        assert!(writer.join().unwrap() > 0);
        assert!(!path.exists(), "{} outlived its WorkDir", path.display());
    }

    #[test]
    fn no_writer_enters_a_dir_being_removed() {
        let dir = WorkDir::new(tempfile::tempdir().unwrap());
        dir.activity.cancelled.store(true, Ordering::SeqCst);
        assert!(dir.enter().is_none());
    }
}
