//! One `--file-mapping HOST:GUEST[:ro|:rw]` option: parsed, its host side canonicalised and
//! opened once at start-up ([`Mapping`]), and the host trees the mappings expose ([`HostTree`]).
//!
//! A mapped host **directory** is held as an `O_PATH` descriptor of the directory itself; every
//! guest path below it is resolved relative to that descriptor ([`super::beneath`]). A mapped
//! **file** (existing or not yet existing) is held as the descriptor of its parent directory plus
//! its file name, and is opened with `O_NOFOLLOW`. A file that exists at start-up additionally
//! keeps an `O_PATH` descriptor of its own (for sandbox rules), and whether it is a regular file is
//! remembered: a non-regular one (a device, a FIFO) is never created or replaced by the guest.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use super::IsolationError;
use super::beneath::LOOKUP_ONLY;

/// What a mapping's host path is.
#[derive(Debug)]
pub enum Anchor {
    /// A host directory: its descriptor.
    Directory(OwnedFd),
    /// A host file, existing or not, reached as `name` in the directory `parent`.
    File {
        /// The parent directory's descriptor.
        parent: OwnedFd,
        /// The parent directory's canonical host path.
        parent_path: PathBuf,
        /// The file name in `parent`.
        name: OsString,
        /// The file's own descriptor if it existed at start-up.
        existing: Option<OwnedFd>,
        /// Whether it existed at start-up as something else than a regular file.
        special: bool,
    },
}

/// A parsed and opened `--file-mapping`.
#[derive(Debug)]
pub struct Mapping {
    /// The canonical host path.
    pub host: PathBuf,
    /// `false` for `:ro`.
    pub writable: bool,
    /// How the host path is reached.
    pub anchor: Anchor,
}

impl Mapping {
    /// Whether the host path is a directory.
    pub fn is_directory(&self) -> bool {
        matches!(self.anchor, Anchor::Directory(_))
    }

    /// The host tree this mapping exposes (see [`HostTree`]).
    pub fn host_tree(&self) -> HostTree<'_> {
        match &self.anchor {
            Anchor::Directory(fd) => HostTree {
                path: &self.host,
                fd: fd.as_fd(),
                writable: self.writable,
                directory: true,
            },
            Anchor::File {
                existing: Some(fd), ..
            } => HostTree {
                path: &self.host,
                fd: fd.as_fd(),
                writable: self.writable,
                directory: false,
            },
            Anchor::File {
                parent,
                parent_path,
                existing: None,
                ..
            } => HostTree {
                path: parent_path,
                fd: parent.as_fd(),
                writable: self.writable,
                directory: true,
            },
        }
    }
}

/// A host tree the guest can reach, for sandbox rules (e.g. Landlock `path_beneath`).
#[derive(Debug, Clone, Copy)]
pub struct HostTree<'m> {
    /// Its canonical host path (for messages).
    pub path: &'m Path,
    /// Its descriptor (held by the [`FileMap`](super::FileMap)).
    pub fd: BorrowedFd<'m>,
    /// Whether the guest may modify it.
    pub writable: bool,
    /// A directory (its whole subtree) rather than a single file.
    pub directory: bool,
}

/// Splits `HOST:GUEST[:ro|:rw]` into the host path, the guest path and whether it is writable.
pub fn split_spec(spec: &str) -> Result<(&str, &str, bool), IsolationError> {
    let malformed = |reason| IsolationError::MalformedMapping {
        spec: spec.to_owned(),
        reason,
    };
    let mut parts = spec.split(':');
    let host = parts.next().unwrap_or_default();
    let guest = parts
        .next()
        .ok_or_else(|| malformed("expected HOST:GUEST[:ro|:rw]"))?;
    let writable = match parts.next() {
        None | Some("rw") => true,
        Some("ro") => false,
        Some(_) => return Err(malformed("only :ro or :rw may follow the guest path")),
    };
    if parts.next().is_some() {
        return Err(malformed("only :ro or :rw may follow the guest path"));
    }
    if host.is_empty() {
        return Err(malformed("the host path is empty"));
    }
    if guest.is_empty() {
        return Err(malformed("the guest path is empty"));
    }
    Ok((host, guest, writable))
}

/// Canonicalises and opens the host side of `spec` (see the module documentation).
pub fn open_host(spec: &str, host: &Path, writable: bool) -> Result<Mapping, IsolationError> {
    let failed = |path: &Path, source: io::Error| IsolationError::HostPath {
        spec: spec.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    let host = canonical_host_path(spec, host)?;
    let directory = LOOKUP_ONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let anchor = match rustix::fs::open(&host, directory, Mode::empty()) {
        Ok(fd) => Anchor::Directory(fd),
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {
            let parent_path = host.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = host.file_name().unwrap_or_default().to_owned();
            let parent = rustix::fs::open(&parent_path, directory, Mode::empty())
                .map_err(|error| failed(&parent_path, error.into()))?;
            let lookup = LOOKUP_ONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let existing = match rustix::fs::openat(&parent, &name, lookup, Mode::empty()) {
                Ok(fd) => Some(fd),
                Err(rustix::io::Errno::NOENT) => None,
                Err(error) => return Err(failed(&host, error.into())),
            };
            let special = match &existing {
                Some(fd) => {
                    let stat =
                        rustix::fs::fstat(fd).map_err(|error| failed(&host, error.into()))?;
                    FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
                }
                None => false,
            };
            Anchor::File {
                parent,
                parent_path,
                name,
                existing,
                special,
            }
        }
        Err(error) => return Err(failed(&host, error.into())),
    };
    Ok(Mapping {
        host,
        writable,
        anchor,
    })
}

/// Canonicalises an existing host path; for a missing one, canonicalises its parent (which must
/// exist) and appends the file name.
fn canonical_host_path(spec: &str, host: &Path) -> Result<PathBuf, IsolationError> {
    let failed = |path: &Path, source| IsolationError::HostPath {
        spec: spec.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    match fs::canonicalize(host) {
        Ok(path) => Ok(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            log::warn!(
                "--file-mapping {spec}: the host path {} does not exist; the guest can create it",
                host.display()
            );
            let name = host.file_name().ok_or_else(|| failed(host, error))?;
            let parent = match host.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let parent = fs::canonicalize(parent).map_err(|source| failed(parent, source))?;
            Ok(parent.join(name))
        }
        Err(error) => Err(failed(host, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_option_is_ro_rw_or_nothing() {
        assert_eq!(split_spec("d:/data").unwrap(), ("d", "/data", true));
        assert_eq!(split_spec("d:/data:rw").unwrap(), ("d", "/data", true));
        assert_eq!(split_spec("d:/data:ro").unwrap(), ("d", "/data", false));
        for bad in ["d:/data:", "d:/data:RO", "d:/data:ro:x", "d:/data:readonly"] {
            let error = split_spec(bad).unwrap_err();
            assert!(
                matches!(error, IsolationError::MalformedMapping { .. }),
                "{bad}"
            );
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn host_sides_are_opened_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        let canonical = fs::canonicalize(dir.path()).unwrap();
        let directory = open_host("s", dir.path(), true).unwrap();
        assert!(directory.is_directory());
        let tree = directory.host_tree();
        assert_eq!(
            (tree.path, tree.directory, tree.writable),
            (&*canonical, true, true)
        );

        let file = open_host("s", &dir.path().join("file"), false).unwrap();
        assert!(!file.is_directory());
        let tree = file.host_tree();
        assert_eq!(tree.path, canonical.join("file"));
        assert_eq!((tree.directory, tree.writable), (false, false));
        assert!(matches!(file.anchor, Anchor::File { special: false, .. }));

        let missing = open_host("s", &dir.path().join("new"), true).unwrap();
        let tree = missing.host_tree();
        assert_eq!((tree.path, tree.directory), (&*canonical, true));

        let device = open_host("s", Path::new("/dev/null"), true).unwrap();
        assert!(matches!(device.anchor, Anchor::File { special: true, .. }));
    }
}
