//! The guest's sandboxed view of host files.
//!
//! A guest names files by *guest* paths; it never sees host paths. [`FileMap`] (built from the
//! `--file-mapping HOST:GUEST[:ro|:rw]` options, [`mapping`]) decides which host file a guest path
//! means: the longest mapped guest prefix wins and a mapped directory exposes its subtree. Every
//! host file is reached relative to a directory descriptor opened at start-up, resolved by the
//! kernel so that it can never leave that directory ([`beneath`]: `openat2` with
//! `RESOLVE_BENEATH` on Linux), neither through `..` nor through symlinks, whatever happens on the
//! host meanwhile; read-only mappings refuse every modification with `EROFS`; FIFOs and sockets
//! are refused instead of blocking a vCPU. Files the guest creates under unmapped paths live in a
//! private, locked per-VM temp directory that disappears with the [`FileMap`] ([`tempdir`];
//! left-overs of killed processes are removed at the next start). [`FileMap::host_trees`] lists
//! every reachable host tree with its descriptor, for a process confinement. [`FdTable`] hands out the guest's virtual file descriptors (3, 4, 5, … never
//! reused; 0–2 are the console), and [`flags`] translates open flags and errno values between the
//! Hermit (= Linux x86) numbering of the ABI and the host's; [`io_mode`] adds the flags of
//! `--io-mode` to every host file the guest opens.
//!
//! Besides host files, the map knows directories that exist only because mappings lie below them
//! (with a synthetic listing) and read-only in-memory *virtual* files; an open descriptor is an
//! [`OpenFile`] of one of those kinds, which lists directories as Linux `dirent64` records
//! ([`dir`]) and reports [`FileStatus`] in Linux numbering ([`status`]).
//!
//! Everything here is plain host-side bookkeeping: reading the guest's parameters out of guest
//! memory is the job of [`crate::hypercall`].

pub mod beneath;
pub mod dir;
pub mod fdtable;
pub mod filemap;
pub mod flags;
pub mod io_mode;
pub mod mapping;
pub mod openfile;
#[cfg(test)]
mod sandbox_tests;
pub mod status;
pub mod tempdir;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use dir::MAX_GETDENTS_BYTES;
pub use fdtable::{FdTable, GuestFd};
pub use filemap::{FileMap, LegacyMount};
pub use flags::{errno, guest_errno, host_open_flags};
pub use mapping::HostTree;
pub use openfile::{FileKind, OpenFile};
pub use status::{FileStatus, FileTime};

/// Failures of the file map (at start-up) and of guest file operations (at run time).
///
/// Run-time variants become a negative errno for the guest through [`IsolationError::errno`].
#[derive(Debug, Error)]
pub enum IsolationError {
    /// A `--file-mapping` option is not of the form `HOST:GUEST[:ro|:rw]`.
    #[error("invalid --file-mapping {spec:?}: {reason}")]
    MalformedMapping {
        /// The option as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host side of a `--file-mapping` cannot be resolved.
    #[error("--file-mapping {spec:?}: cannot resolve host path {path}: {source}")]
    HostPath {
        /// The option as given.
        spec: String,
        /// The host path that failed.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Two `--file-mapping` options name the same guest path.
    #[error("--file-mapping {spec:?}: guest path /{guest} is already mapped")]
    DuplicateMapping {
        /// The second option naming the path.
        spec: String,
        /// The cleaned guest path.
        guest: String,
    },
    /// The private temp directory could not be created.
    #[error("cannot create a private temp directory in {parent}: {source}")]
    TempDir {
        /// The directory it should have been created in.
        parent: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The host cannot resolve paths below the private temp directory's descriptor.
    #[error("the file sandbox cannot resolve paths below a directory descriptor: {source}")]
    NoBeneathResolution {
        /// What the operating system said.
        source: io::Error,
    },
    /// A guest path is empty or climbs above the guest root with `..`.
    #[error("invalid guest path {0:?}")]
    InvalidPath(String),
    /// A guest path is neither mapped nor a file the guest created earlier.
    #[error("guest path {0:?} does not exist")]
    NotFound(String),
    /// A guest path resolves (through a symlink) outside the host path it is mapped to.
    #[error("guest path {0:?} resolves outside its mapped host directory")]
    Escapes(String),
    /// The guest asked to create, write or unlink a directory that exists only in the map (the
    /// guest root included) or a directory it created.
    #[error("guest path {0:?} is a directory")]
    IsDirectory(String),
    /// A map-only directory was opened without `O_DIRECTORY`.
    #[error("guest path {0:?} is a directory and can only be opened with O_DIRECTORY")]
    DirectoryNeedsODirectory(String),
    /// A path component or an opened file is not a directory.
    #[error("guest path {0:?} is not a directory")]
    NotADirectory(String),
    /// The guest asked to remove or replace the file of a single-file mapping (a mount point).
    #[error("guest path {0:?} is the file of a --file-mapping")]
    Busy(String),
    /// The guest opened a FIFO or socket (which could block uhyve).
    #[error("guest path {0:?} is a FIFO or socket")]
    SpecialFile(String),
    /// The guest asked to modify a read-only (virtual) file or something in a read-only mapping.
    #[error("guest path {0:?} is read-only")]
    ReadOnly(String),
    /// The guest asked to create something that exists.
    #[error("guest path {0:?} exists")]
    Exists(String),
    /// A Getdents buffer too small for even one directory entry.
    #[error(
        "getdents buffer of {available} bytes is too small for the next entry ({needed} bytes)"
    )]
    BufferTooSmall {
        /// Bytes the next entry needs.
        needed: usize,
        /// Bytes the guest offered.
        available: u64,
    },
    /// Reading an open host directory failed.
    #[error("reading a host directory: {source}")]
    ReadDirectory {
        /// What the operating system said.
        source: io::Error,
    },
    /// A host operation on an open guest file failed.
    #[error("{operation} of guest file {path:?}: {source}")]
    Descriptor {
        /// What was attempted (e.g. "fstat").
        operation: &'static str,
        /// The guest path the file was opened by.
        path: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A virtual file cannot be added at a guest path (at start-up).
    #[error("cannot add virtual file {guest:?}: {reason}")]
    VirtualFileConflict {
        /// The guest path.
        guest: String,
        /// Why not.
        reason: &'static str,
    },
    /// Unsupported open-flag combination (e.g. `O_CREAT | O_DIRECTORY`).
    #[error("invalid open flags {0:#o}")]
    InvalidFlags(i32),
    /// A guest file descriptor that is not open.
    #[error("guest file descriptor {0} is not open")]
    BadFd(i32),
    /// The guest holds the maximum number of open files.
    #[error("the guest has too many open files")]
    TooManyOpenFiles,
    /// The guest created the maximum number of files in its private temp directory.
    #[error("the guest created too many files in its private temp directory")]
    TooManyCreatedFiles,
    /// The guest paths of the files the guest created would exceed their byte budget.
    #[error("the guest's created files have too many path bytes in all")]
    CreatedPathsTooLong,
    /// The guest opened more files than file descriptor numbers exist.
    #[error("no guest file descriptor numbers left")]
    FdsExhausted,
    /// A host operation on a resolved file failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was attempted (e.g. "open").
        operation: &'static str,
        /// The host path involved.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

impl IsolationError {
    /// The (positive) Hermit errno the guest receives for this error.
    pub fn errno(&self) -> i32 {
        use uhyve_interface as abi;
        match self {
            Self::InvalidPath(_)
            | Self::InvalidFlags(_)
            | Self::DirectoryNeedsODirectory(_)
            | Self::BufferTooSmall { .. } => abi::EINVAL,
            Self::NotFound(_) => abi::ENOENT,
            Self::Escapes(_) => abi::EPERM,
            Self::IsDirectory(_) => abi::EISDIR,
            Self::NotADirectory(_) => abi::ENOTDIR,
            Self::ReadOnly(_) => abi::EROFS,
            Self::Exists(_) => abi::EEXIST,
            Self::ReadDirectory { source } | Self::Descriptor { source, .. } => guest_errno(source),
            Self::BadFd(_) => abi::EBADF,
            Self::TooManyOpenFiles => abi::EMFILE,
            Self::TooManyCreatedFiles | Self::CreatedPathsTooLong => abi::ENOSPC,
            Self::Busy(_) => errno::EBUSY,
            Self::SpecialFile(_) => errno::ENXIO,
            Self::Io { source, .. } => guest_errno(source),
            Self::MalformedMapping { .. }
            | Self::HostPath { .. }
            | Self::DuplicateMapping { .. }
            | Self::TempDir { .. }
            | Self::NoBeneathResolution { .. }
            | Self::VirtualFileConflict { .. }
            | Self::FdsExhausted => abi::EIO,
        }
    }
}
