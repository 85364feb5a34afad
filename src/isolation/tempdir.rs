//! The private per-VM temp directory for files and directories the guest creates under unmapped
//! guest paths, and the removal of such directories left behind by killed uhyve processes.
//!
//! The directory (`uhyve-XXXXXX`, mode 0700) is created eagerly with the [`FileMap`] (a process
//! confinement applied before the guest runs needs it to exist) and reached only through its
//! directory descriptor. It holds a lock file, [`LOCK_FILE`], exclusively `flock`ed for the whole
//! run: the lock is taken on a file of another name that is then renamed into place, so a lock
//! file under its final name is always already locked by its creator. Dropping the
//! [`PrivateTempDir`] removes the directory; after `SIGKILL` it stays, and the next uhyve removes
//! it at start-up ([`remove_stale`]): a `uhyve-*` directory in the same parent that is a real
//! directory (not a symlink), owned by the effective user, holds a [`LOCK_FILE`] and whose lock
//! can be taken (its holder is gone — `flock` locks die with their process) is deleted. Anything
//! else is left alone.
//!
//! [`FileMap`]: super::FileMap

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use tempfile::TempDir;

use super::IsolationError;
use super::beneath::LOOKUP_ONLY;

/// The name prefix of private temp directories.
const PREFIX: &str = "uhyve-";
/// The lock file inside a private temp directory, held for the life of its uhyve process.
pub const LOCK_FILE: &str = ".uhyve.lock";
/// The name the lock file has before it is locked.
const UNLOCKED_LOCK_FILE: &str = ".uhyve.lock.new";

/// The private temp directory of one [`FileMap`](super::FileMap), removed when dropped.
#[derive(Debug)]
pub struct PrivateTempDir {
    /// `None` only while being dropped.
    dir: Option<TempDir>,
    /// The directory's descriptor: every access goes through it.
    fd: OwnedFd,
    /// The locked lock file (unlocked when closed).
    _lock: OwnedFd,
}

impl PrivateTempDir {
    /// Creates a new private temp directory in `parent` and locks it.
    pub fn create(parent: &Path) -> Result<Self, IsolationError> {
        let failed = |source: io::Error| IsolationError::TempDir {
            parent: parent.to_path_buf(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(failed)?;
        let fd = rustix::fs::open(
            dir.path(),
            LOOKUP_ONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|error| failed(error.into()))?;
        let lock = create_locked(fd.as_fd()).map_err(failed)?;
        Ok(Self {
            dir: Some(dir),
            fd,
            _lock: lock,
        })
    }

    /// The directory's host path (for messages and sandbox rules; never used to reach files).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), TempDir::path)
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PrivateTempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(error) = dir.close() {
                log::warn!(
                    "cannot remove the guest's temp directory {}: {error}",
                    path.display()
                );
            }
        }
    }
}

/// Creates [`LOCK_FILE`] in `dir`, locked: locked under another name, then renamed.
fn create_locked(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let lock = rustix::fs::openat(
        dir,
        UNLOCKED_LOCK_FILE,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
    rustix::fs::renameat(dir, UNLOCKED_LOCK_FILE, dir, LOCK_FILE)?;
    Ok(lock)
}

/// Removes the private temp directories of dead uhyve processes from `parent` (see the module
/// documentation). Best effort: failures are logged, never fatal. Returns the removed paths.
pub fn remove_stale(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let user = rustix::process::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().starts_with(PREFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        if is_stale(&path, &name, user) {
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    log::info!("removed stale temp directory {}", path.display());
                    removed.push(path);
                }
                Err(error) => log::warn!("cannot remove stale {}: {error}", path.display()),
            }
        }
    }
    removed
}

/// Whether `path` is a directory of ours whose lock file nobody holds.
fn is_stale(path: &Path, name: &OsStr, user: u32) -> bool {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return false;
    };
    if !metadata.is_dir() || metadata.uid() != user || name.is_empty() {
        return false;
    }
    let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(dir) = rustix::fs::open(path, directory, Mode::empty()) else {
        return false;
    };
    let lock_flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(lock) = rustix::fs::openat(&dir, LOCK_FILE, lock_flags, Mode::empty()) else {
        return false;
    };
    // Taken only if its holder is gone; released when `lock` is closed, after the removal
    // decision (a live uhyve never lets its lock go while its directory exists).
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_private_locked_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let temp = PrivateTempDir::create(parent.path()).unwrap();
        let path = temp.path().to_owned();
        assert!(path.starts_with(parent.path()));
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o700);
        assert!(path.join(LOCK_FILE).is_file());
        assert!(!path.join(UNLOCKED_LOCK_FILE).exists());
        // A live directory is never stale, not even for this very process.
        assert!(remove_stale(parent.path()).is_empty());
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn only_unlocked_directories_of_ours_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str, lock: bool| {
            let dir = parent.path().join(name);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("file-0"), b"left behind").unwrap();
            if lock {
                fs::write(dir.join(LOCK_FILE), b"").unwrap();
            }
            dir
        };
        let stale = make("uhyve-stale", true);
        let held = make("uhyve-held", true);
        let unlocked_without_lock_file = make("uhyve-nolock", false);
        let foreign = make("other-stale", true);
        fs::write(parent.path().join("uhyve-file"), b"").unwrap();
        std::os::unix::fs::symlink(&stale, parent.path().join("uhyve-link")).unwrap();
        // A live holder of `held`'s lock (another open file description, as another process).
        let holder = fs::File::open(held.join(LOCK_FILE)).unwrap();
        rustix::fs::flock(&holder, FlockOperation::NonBlockingLockExclusive).unwrap();

        let removed = remove_stale(parent.path());
        assert_eq!(removed, vec![stale.clone()]);
        assert!(!stale.exists());
        assert!(held.join("file-0").exists());
        assert!(unlocked_without_lock_file.exists());
        assert!(foreign.exists());
        assert!(parent.path().join("uhyve-file").exists());
        assert!(fs::symlink_metadata(parent.path().join("uhyve-link")).is_ok());
        drop(holder);
        assert_eq!(remove_stale(parent.path()), vec![held.clone()]);
    }
}
