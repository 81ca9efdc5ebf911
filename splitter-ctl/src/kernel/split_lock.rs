//! One writer of split words at a time, across processes. The daemon's rollout steps,
//! promotions, rollbacks and drills, and the CLI's `weight` and `rollback`, each read the word,
//! decide and write under an exclusive `flock` on `split.lock` in the state directory. That is
//! the compare-and-set the kernel map lacks: no writer decides on a word that another writer is
//! replacing, so no update is lost (a rollout that finds the word changed pauses instead of
//! writing over it).
//!
//! A rollback must never wait on a stuck process: taking the lock gives up after `WAIT` and the
//! writer goes on without it, with a warning.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::model::error::chain;

/// The lock file, in the state directory.
pub const FILE: &str = "split.lock";
/// The longest a writer waits for the lock before it writes without it.
pub const WAIT: Duration = Duration::from_millis(200);
/// How often a waiting writer tries again.
const RETRY: Duration = Duration::from_micros(200);

/// The lock file, opened once (the daemon keeps it for its whole life, so that taking the lock
/// costs a `flock`, not an open).
#[derive(Debug)]
pub struct SplitLockFile {
    file: Option<File>,
    path: PathBuf,
}

/// The lock, while held; dropping it releases it.
#[derive(Debug)]
pub struct SplitLock<'a> {
    file: Option<&'a File>,
}

#[must_use]
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl SplitLockFile {
    /// Opens (creating it) the lock file of `state_dir`. When it cannot be opened, every
    /// `hold` goes on unlocked, with a warning.
    #[must_use]
    pub fn open(state_dir: &Path) -> Self {
        let path = path(state_dir);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .inspect_err(|error| tracing::warn!(path = %path.display(), error = %chain(error), "cannot open the split-word lock; split words are written without it"))
            .ok();
        Self { file, path }
    }

    /// Takes the lock, waiting up to `WAIT`; past it (another writer is stuck holding it) the
    /// caller goes on unlocked.
    #[must_use]
    pub fn hold(&self) -> SplitLock<'_> {
        let Some(file) = &self.file else {
            return SplitLock { file: None };
        };
        let deadline = Instant::now() + WAIT;
        loop {
            // SAFETY: flock on a descriptor this struct owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return SplitLock { file: Some(file) };
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    path = %self.path.display(),
                    wait_ms = WAIT.as_millis(),
                    "another writer holds the split-word lock; writing without it"
                );
                return SplitLock { file: None };
            }
            thread::sleep(RETRY);
        }
    }
}

impl SplitLock<'_> {
    /// Whether the lock is held (false when the writer went on without it).
    #[must_use]
    pub const fn held(&self) -> bool {
        self.file.is_some()
    }
}

impl Drop for SplitLock<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.file {
            // SAFETY: unlocks the descriptor locked in `hold`, which outlives this guard.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_bounded_wait() {
        let dir = std::env::temp_dir().join(format!("splitter-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Two writers, as two processes would be: two open files of one lock.
        let (daemon, cli) = (SplitLockFile::open(&dir), SplitLockFile::open(&dir));
        let first = daemon.hold();
        assert!(first.held());
        let started = Instant::now();
        let second = cli.hold();
        assert!(!second.held(), "a second holder while the first holds it");
        assert!(started.elapsed() >= WAIT, "it waited");
        assert!(
            started.elapsed() < WAIT * 5,
            "and no longer than about WAIT"
        );
        drop(first);
        assert!(cli.hold().held(), "free again once dropped");
        assert!(daemon.hold().held(), "and again for the first writer");
        let missing = SplitLockFile::open(&dir.join("no-such-dir"));
        assert!(!missing.hold().held(), "no lock file: go on without");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
