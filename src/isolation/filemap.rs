//! The map from guest paths to host files (`--file-mapping HOST:GUEST[:ro|:rw]`), guest-created
//! files and directories, and read-only virtual files.
//!
//! **Mappings** ([`super::mapping`]). HOST is canonicalised and *opened* at start-up: a directory
//! as a descriptor of itself, a file (existing or to be created: then its parent must exist) as the
//! descriptor of its parent directory plus its name. GUEST is cleaned lexically (`.`, `..` and
//! repeated `/` removed, a `..` above `/` is an error) and its leading `/` dropped, so `/a/b`,
//! `a/b` and `a//./b/` are the same key. An optional third field is `ro` (the guest may not
//! modify anything in the tree: every open for writing, with `O_CREAT` or with `O_TRUNC`, every
//! `unlink` and `mkdir` there is `EROFS`) or `rw` (the default); anything else is an error. Two
//! options for the same guest path are an error.
//!
//! **Lookup.** A guest path is cleaned the same way (0.6.9-era kernels send `a/b`, newer ones
//! `/root/a/b`: both work) and the longest prefix that is an entry of the map, compared component
//! by component, wins. Entries are the mappings, the files and directories the guest created under
//! unmapped paths, and the virtual files; every guest path has at most one owner (creating is only
//! possible where nothing owns the path, and virtual files may not overlap anything). A guest path
//! ending in `/` (or `/.`) names a directory: on a file it is `ENOTDIR`, as on Linux.
//!
//! **Host files, race-free** ([`super::beneath`]). The remaining components below a host entry
//! are never turned into a host path string: they are resolved by the kernel relative to the
//! entry's directory descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so no
//! path can leave the mapped tree, whatever a host process renames or replaces meanwhile. After
//! lexical cleaning no `..` is left; relative symlinks inside a mapping that stay inside work,
//! absolute symlinks and symlinks leading out fail. The kernel's `EXDEV` for such an escape
//! reaches the guest as `EPERM` (its `EXDEV` would suggest a cross-device rename that was never
//! asked for; `EPERM` is what uhyve has always answered), magic links as `ELOOP`. A single-file
//! mapping is opened as its name in its parent's descriptor with `O_NOFOLLOW` (a symlink put there
//! later: `ELOOP`). `unlink` and `mkdir` resolve the parent directory that way (an `O_PATH`
//! descriptor) and call `unlinkat`/`mkdirat` on the last component, which is never followed, so
//! a symlink is removed itself. `stat` opens the path `O_PATH` (with `O_NOFOLLOW` for `lstat`) the
//! same way and asks `fstat`. On macOS the resolution walks component by component with
//! `openat(O_NOFOLLOW)` and refuses every symlink.
//!
//! **Never block on open.** Host files are opened with `O_NONBLOCK`, then inspected with `fstat`:
//! FIFOs and sockets are refused with `ENXIO` (what Linux answers for a FIFO without a reader in
//! non-blocking mode and for a socket; a FIFO would otherwise block the vCPU thread forever, so
//! that neither a stop signal nor another vCPU could end the VM). Regular files, directories and
//! block devices get `O_NONBLOCK` cleared again; character devices keep it.
//!
//! **Single-file mappings are mount points.** The guest cannot unlink the host file behind a
//! single-file mapping (`EBUSY`, also when it names that file through another mapping of its
//! directory), nor make a directory there (`EEXIST`, or `EBUSY` while the file is missing). A mapped
//! file that was not a regular file at start-up (e.g. `--file-mapping /dev/full:/full`) is never
//! created by `O_CREAT` (the flag is dropped; with `O_EXCL` it is `EEXIST`). A missing regular-file
//! mapping may be created, as a regular file. Unlinking a mapped directory is `EISDIR`.
//!
//! **Map-only directories.** A guest path that no entry owns but below which entries lie (for
//! example `/` or `/etc` when only `/etc/app.conf` is mapped) is a directory that exists only in
//! the map; the guest root always is one unless it is mapped itself. Opening one needs
//! `O_DIRECTORY` (else `EINVAL`, §6.4 of the ABI sheet) and gives a synthetic listing: the next
//! component of every entry below it, sorted by name, `d_ino` 1, `DT_DIR` for directories (mapped
//! host directories, guest-created directories, deeper map-only directories), `DT_REG` for files
//! (the type of a mapped host file is taken from the host, so a mapped device is `DT_CHR`; a
//! mapped host file that does not exist is left out). No `.` and `..` are listed. The listing is
//! taken when the directory is opened. Its status is `S_IFDIR | 0755` with 2 links on device 0,
//! with an inode number derived from its guest path (so that directory-loop checks can tell
//! map-only directories apart); creating it gives `EISDIR`/`EEXIST`, `mkdir` `EEXIST`, `unlink`
//! `EISDIR`.
//!
//! **Unmapped paths** ([`super::tempdir`]). Opening an unmapped path with `O_CREAT` creates a new
//! file in the private per-VM temp directory (mode 0700, created with the [`FileMap`], locked,
//! removed with it; left-overs of killed processes are removed at the next start) under a
//! counter-generated name that does not derive from the guest string, through the directory's
//! descriptor; [`FileMap::mkdir`] of an unmapped path creates a directory there the same way (its
//! owner always keeps `rwx`, so the temp directory can be removed). The guest path is remembered
//! for the rest of the run, so later opens, stats and unlinks of it find that file; a
//! guest-created directory then acts like a mapping of a temp directory: files and directories
//! below it are ordinary host entries inside it, named as the guest names them. So `/tmp/x` works
//! inside the guest without touching the host's `/tmp`. Unmapped paths without `O_CREAT` are
//! `ENOENT` unless created earlier. At most [`MAX_CREATED_FILES`] paths can be created this way,
//! with at most [`MAX_CREATED_PATH_BYTES`] bytes of guest paths in all (each path is stored as one
//! string); beyond either, `ENOSPC`. What lies below a created directory is not counted, like the
//! contents of a mapped directory.
//!
//! **Virtual files** ([`FileMap::add_virtual_file`], at start-up): read-only in-memory files at a
//! guest path that no mapping owns and that neither lies below nor above another entry. Opening
//! one for writing or with `O_TRUNC` is `EROFS`, with `O_CREAT | O_EXCL` `EEXIST`, with
//! `O_DIRECTORY` `ENOTDIR`; `mkdir` of its path is `EROFS`; `unlink` removes it from the map
//! (descriptors open on it keep reading it). Its status is `S_IFREG | 0444`, 1 link, block size
//! 4096, device 0, an inode number derived from its guest path.
//!
//! **Host trees** ([`FileMap::host_trees`]): every mapped tree and the temp directory, with the
//! descriptors held here, for a process confinement (Landlock) applied before the guest runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::IsolationError;
use super::beneath::{self, LOOKUP_ONLY, open_beneath};
use super::dir::{DT_DIR, DT_REG, DirEntry, d_type_of};
use super::flags::checked_host_open_flags;
use super::io_mode::{IoFlags, open_beneath_with};
use super::mapping::{self, Anchor, HostTree, Mapping};
use super::openfile::OpenFile;
use super::status::{FileStatus, FileTime};
use super::tempdir::{self, PrivateTempDir};

/// A cleaned guest path: its components joined by `/`, without a leading `/`, `.`, `..` or empty
/// parts. Empty = the guest root. One string per key keeps the map's memory proportional to the
/// path bytes (a `Vec<String>` of 2 000 one-byte components costs ~100 KiB).
type GuestKey = String;

/// Cleans a guest path lexically: drops empty and `.` components, resolves `..` against the
/// preceding component. Returns `None` if a `..` would climb above the root.
pub fn clean_guest_path(path: &str) -> Option<Vec<String>> {
    clean_components(path).map(|parts| parts.into_iter().map(str::to_owned).collect())
}

/// [`clean_guest_path`] without copying the components.
fn clean_components(path: &str) -> Option<Vec<&str>> {
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop()?;
            }
            name => components.push(name),
        }
    }
    Some(components)
}

/// The components of a key (for the mount-point computations).
fn components_of(key: &str) -> Vec<String> {
    key.split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A guest path as the map sees it.
struct GuestPath<'p> {
    /// As the guest wrote it (for messages).
    raw: &'p str,
    /// The cleaned components.
    parts: Vec<&'p str>,
    /// The cleaned components joined by `/`.
    key: GuestKey,
    /// It ends in `/` or `/.` below the root: only a directory matches.
    wants_directory: bool,
}

impl<'p> GuestPath<'p> {
    fn parse(raw: &'p str) -> Result<Self, IsolationError> {
        if raw.is_empty() {
            return Err(IsolationError::NotFound(String::new()));
        }
        let parts =
            clean_components(raw).ok_or_else(|| IsolationError::InvalidPath(raw.to_owned()))?;
        let key = parts.join("/");
        let wants_directory = !parts.is_empty() && (raw.ends_with('/') || raw.ends_with("/."));
        Ok(Self {
            raw,
            parts,
            key,
            wants_directory,
        })
    }

    /// The key of the first `n` components (a slice of [`GuestPath::key`]).
    fn prefix(&self, n: usize) -> &str {
        let bytes: usize = self.parts[..n].iter().map(|part| part.len()).sum();
        &self.key[..bytes + n.saturating_sub(1)]
    }
}

/// A read-only in-memory file.
#[derive(Clone)]
struct VirtualFile {
    data: Arc<[u8]>,
    status: FileStatus,
}

impl std::fmt::Debug for VirtualFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualFile")
            .field("len", &self.data.len())
            .finish()
    }
}

/// An entry of the map that is not a `--file-mapping`.
#[derive(Debug, Clone)]
enum Entry {
    /// A file the guest created under an unmapped path: its name in the temp directory.
    CreatedFile(String),
    /// A directory the guest created under an unmapped path: its name in the temp directory.
    CreatedDir(String),
    /// A read-only in-memory file.
    Virtual(VirtualFile),
}

#[derive(Debug, Default)]
struct State {
    /// Guest path → guest-created file or directory, or virtual file.
    entries: BTreeMap<GuestKey, Entry>,
    /// Number of `CreatedFile` and `CreatedDir` entries.
    created: usize,
    /// Bytes of the keys of `CreatedFile` and `CreatedDir` entries.
    created_key_bytes: usize,
    /// Number for the next host name in the temp directory.
    next: u64,
}

/// How many files and directories a guest may create outside its mappings (in the private temp
/// directory). Each costs an inode on the host and a map entry in uhyve.
pub const MAX_CREATED_FILES: usize = 16 * 1024;

/// How many bytes of guest paths the entries of guest-created files and directories may hold in
/// all: 256 bytes per path for [`MAX_CREATED_FILES`] paths.
pub const MAX_CREATED_PATH_BYTES: usize = 4 * 1024 * 1024;

/// A host entry's base: the directory descriptor its remaining components are resolved against.
enum Base<'m> {
    /// Below a directory, first through `prefix` (a guest-created directory's name in the temp
    /// directory) if given.
    Directory {
        fd: BorrowedFd<'m>,
        shown: &'m Path,
        prefix: Option<String>,
    },
    /// A single file `name` in the directory `parent`.
    File {
        parent: BorrowedFd<'m>,
        shown: &'m Path,
        name: OsString,
        /// Not a regular file at start-up: never created.
        special: bool,
    },
}

/// Where a guest path leads.
enum Target<'m, 'k> {
    /// Below a host entry, `rest` being the components after the owning entry's key.
    Host {
        base: Base<'m>,
        rest: &'k [&'k str],
        origin: Origin,
        writable: bool,
    },
    /// Exactly a virtual file.
    Virtual(VirtualFile),
    /// Below a virtual file.
    BelowVirtual,
    /// A directory that exists only in the map.
    MapDirectory,
    /// Nothing.
    Unmapped,
}

/// What owns a [`Target::Host`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Mapping,
    CreatedFile,
    CreatedDir,
}

/// The guest's view of host files; `Send + Sync`.
#[derive(Debug)]
pub struct FileMap {
    /// Cleaned guest path → opened host side.
    mappings: BTreeMap<GuestKey, Mapping>,
    /// The private temp directory (removed when the map is dropped).
    temp: PrivateTempDir,
    /// When the map was made: the times reported for map-only directories.
    started: FileTime,
    /// The flags `--io-mode` adds to every host file the guest opens.
    io: IoFlags,
    state: Mutex<State>,
}

impl FileMap {
    /// Builds the map from `--file-mapping HOST:GUEST[:ro|:rw]` strings, removes stale temp
    /// directories of killed uhyve processes from `tempdir` (default: the host's temp directory,
    /// `$TMPDIR` or `/tmp`) and creates the private temp directory there.
    pub fn new(mappings: &[String], tempdir: Option<PathBuf>) -> Result<FileMap, IsolationError> {
        let mut map = BTreeMap::new();
        for spec in mappings {
            let (guest, mapping) = parse_mapping(spec)?;
            if map.contains_key(&guest) {
                return Err(IsolationError::DuplicateMapping {
                    spec: spec.clone(),
                    guest,
                });
            }
            log::debug!(
                "file mapping: guest /{guest} -> {}{}",
                mapping.host.display(),
                if mapping.writable { "" } else { " (read-only)" }
            );
            map.insert(guest, mapping);
        }
        let parent = tempdir.unwrap_or_else(std::env::temp_dir);
        match fs::metadata(&parent) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(IsolationError::TempDir {
                    source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                    parent,
                });
            }
            Err(source) => return Err(IsolationError::TempDir { parent, source }),
        }
        tempdir::remove_stale(&parent);
        let temp = PrivateTempDir::create(&parent)?;
        beneath::probe(temp.fd())
            .map_err(|source| IsolationError::NoBeneathResolution { source })?;
        Ok(FileMap {
            mappings: map,
            temp,
            started: FileTime::now(),
            io: IoFlags::default(),
            state: Mutex::new(State::default()),
        })
    }

    /// Adds the flags of `mode` to every host file the guest opens from now on (`--io-mode`,
    /// see [`super::io_mode`]).
    pub fn set_io_mode(&mut self, mode: crate::params::IoMode) {
        self.io = IoFlags::new(mode);
    }

    /// The private temp directory holding the files and directories the guest creates under
    /// unmapped paths (always `Some`: it is created with the map).
    pub fn temp_dir(&self) -> Option<PathBuf> {
        Some(self.temp.path().to_owned())
    }

    /// The mapped host paths (canonical).
    pub fn host_paths(&self) -> impl Iterator<Item = &Path> {
        self.mappings.values().map(|mapping| mapping.host.as_path())
    }

    /// Every host tree the guest can reach, with its descriptor: each mapping's root (for a
    /// single-file mapping the file, or its parent directory while the file does not exist) and
    /// the private temp directory (writable).
    pub fn host_trees(&self) -> Vec<HostTree<'_>> {
        let mut trees: Vec<HostTree<'_>> = self.mappings.values().map(Mapping::host_tree).collect();
        trees.push(HostTree {
            path: self.temp.path(),
            fd: self.temp.fd(),
            writable: true,
            directory: true,
        });
        trees
    }

    /// The guest directory of each mapping: the mapped path for a host directory, its parent for a
    /// host file (as components; empty is the guest root).
    fn mapping_directories(&self) -> BTreeSet<Vec<String>> {
        self.mappings
            .iter()
            .map(|(guest, mapping)| {
                let mut directory = components_of(guest);
                if !mapping.is_directory() {
                    directory.pop();
                }
                directory
            })
            .collect()
    }

    /// Guest paths of the virtual files (as components).
    fn virtual_file_keys(&self) -> Vec<Vec<String>> {
        self.lock_state()
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Virtual(_)))
            .map(|(key, _)| components_of(key))
            .collect()
    }

    /// The guest directories kernels ≥ 0.12 mount the host file system at (`/uhyve,mounts` in the
    /// device tree; absolute, sorted, unique): every guest path that maps a host directory, the
    /// parent of every guest path that maps a file, and for virtual files the top-level directory
    /// they lie in (`/data` for `/data/a/b.txt`; one level deeper below `/tmp` and `/proc`, which
    /// the kernel creates itself, see [`FileMap::legacy_mount_point`]). A directory below another
    /// mount point is left out: the kernel sends uhyve the full path of everything below a mount,
    /// so the outer mount reaches it, and a kernel cannot mount inside a uhyve mount. The guest
    /// root is never one — a kernel cannot mount over its root — so a file mapped directly under
    /// `/` is listed by [`FileMap::unmountable_mappings`] instead, and a virtual file there by
    /// [`FileMap::unmountable_virtual_files`].
    pub fn mount_points(&self) -> Vec<String> {
        let mut directories: BTreeSet<Vec<String>> = self
            .mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
        for key in self.virtual_file_keys() {
            if let Some(mount) = virtual_file_mount(&key) {
                directories.insert(mount.to_vec());
            }
        }
        directories
            .iter()
            .filter(|dir| {
                !directories
                    .iter()
                    .any(|outer| outer.len() < dir.len() && dir.starts_with(outer))
            })
            .map(|dir| format!("/{}", dir.join("/")))
            .collect()
    }

    /// Guest paths of mappings no mount point can reach: files mapped directly under `/`.
    pub fn unmountable_mappings(&self) -> Vec<String> {
        self.mappings
            .iter()
            .filter(|(guest, mapping)| {
                let depth = components_of(guest).len();
                depth <= 1 && !(mapping.is_directory() && depth == 1)
            })
            .map(|(guest, _)| format!("/{guest}"))
            .collect()
    }

    /// Guest paths of virtual files no mount point can reach: those directly under `/` (and
    /// directly in `/tmp` or `/proc`, which belong to the kernel's own file system).
    pub fn unmountable_virtual_files(&self) -> Vec<String> {
        self.virtual_file_keys()
            .into_iter()
            .filter(|key| virtual_file_mount(key).is_none())
            .map(|key| format!("/{}", key.join("/")))
            .collect()
    }

    /// The one directory kernels 0.10 and 0.11 mount the host file system at (they read a single
    /// mount point, `-mount DIR` on the kernel command line, default `/root`), and the mapped
    /// guest paths and virtual files that lie outside it. `None` when nothing is mapped.
    ///
    /// Those kernels can only mount at a directory whose parent already exists in their own file
    /// system and which does not exist yet: `/NAME`, or `/tmp/NAME` and `/proc/NAME` (the two
    /// directories they create at boot). The choice is the shallowest such directory that
    /// contains every mapping and every virtual file not directly under `/`, or, when there is
    /// none, the one that contains the first of them that has one. `None` when nothing is
    /// mapped or nothing can be reached at all.
    pub fn legacy_mount_point(&self) -> Option<LegacyMount> {
        let virtual_files = self.virtual_file_keys();
        let mut directories: BTreeSet<Vec<String>> = self
            .mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
        directories.extend(
            virtual_files
                .iter()
                .filter_map(|key| key.split_last().map(|(_, parent)| parent.to_vec()))
                .filter(|dir| !dir.is_empty()),
        );
        let directories: Vec<Vec<String>> = directories.into_iter().collect();
        let first = directories.first()?.as_slice();
        let common = directories.iter().skip(1).fold(first, |common, dir| {
            let shared = common
                .iter()
                .zip(dir.iter())
                .take_while(|(a, b)| a == b)
                .count();
            &common[..shared]
        });
        let mount = legacy_mountable_prefix(common).or_else(|| {
            directories
                .iter()
                .find_map(|dir| legacy_mountable_prefix(dir))
        })?;
        let unreachable = self
            .mappings
            .keys()
            .map(|key| components_of(key))
            .chain(virtual_files.iter().cloned())
            .filter(|guest| !guest.starts_with(mount))
            .map(|guest| format!("/{}", guest.join("/")))
            .collect();
        Some(LegacyMount {
            point: format!("/{}", mount.join("/")),
            unreachable,
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Updated by single map operations only: consistent even after a panic elsewhere.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The base of a mapping.
    fn mapping_base(mapping: &Mapping) -> Base<'_> {
        match &mapping.anchor {
            Anchor::Directory(fd) => Base::Directory {
                fd: fd.as_fd(),
                shown: &mapping.host,
                prefix: None,
            },
            Anchor::File {
                parent,
                parent_path,
                name,
                special,
                ..
            } => Base::File {
                parent: parent.as_fd(),
                shown: parent_path,
                name: name.clone(),
                special: *special,
            },
        }
    }

    /// Where `path` leads: the longest prefix of its key that is an entry wins.
    fn resolve<'m, 'k>(&'m self, state: &State, path: &'k GuestPath<'_>) -> Target<'m, 'k> {
        for n in (0..=path.parts.len()).rev() {
            let prefix = path.prefix(n);
            let rest = &path.parts[n..];
            if let Some(mapping) = self.mappings.get(prefix) {
                return Target::Host {
                    base: Self::mapping_base(mapping),
                    rest,
                    origin: Origin::Mapping,
                    writable: mapping.writable,
                };
            }
            let (base, origin) = match state.entries.get(prefix) {
                Some(Entry::CreatedFile(name)) => (
                    Base::File {
                        parent: self.temp.fd(),
                        shown: self.temp.path(),
                        name: name.into(),
                        special: false,
                    },
                    Origin::CreatedFile,
                ),
                Some(Entry::CreatedDir(name)) => (
                    Base::Directory {
                        fd: self.temp.fd(),
                        shown: self.temp.path(),
                        prefix: Some(name.clone()),
                    },
                    Origin::CreatedDir,
                ),
                Some(Entry::Virtual(file)) if rest.is_empty() => {
                    return Target::Virtual(file.clone());
                }
                Some(Entry::Virtual(_)) => return Target::BelowVirtual,
                None => continue,
            };
            return Target::Host {
                base,
                rest,
                origin,
                writable: true,
            };
        }
        if path.parts.is_empty() || self.has_entries_below(state, &path.key) {
            Target::MapDirectory
        } else {
            Target::Unmapped
        }
    }

    /// Whether some entry lies strictly below `key`.
    fn has_entries_below(&self, state: &State, key: &str) -> bool {
        let prefix = directory_prefix(key);
        keys_below(&self.mappings, &prefix).any(|(candidate, _)| candidate.len() > prefix.len())
            || keys_below(&state.entries, &prefix)
                .any(|(candidate, _)| candidate.len() > prefix.len())
    }

    /// The synthetic listing of the map-only directory `key`: the next component of every entry
    /// below it, sorted (see the module documentation).
    fn listing(&self, state: &State, key: &str) -> Vec<DirEntry> {
        let prefix = directory_prefix(key);
        let mut children: BTreeMap<String, u8> = BTreeMap::new();
        let mut add = |candidate: &str, exact_kind: Option<u8>| {
            let below = &candidate[prefix.len()..];
            if below.is_empty() {
                return;
            }
            match below.split_once('/') {
                Some((name, _)) => {
                    children.insert(name.to_owned(), DT_DIR);
                }
                None => {
                    if let Some(kind) = exact_kind {
                        children.entry(below.to_owned()).or_insert(kind);
                    }
                }
            }
        };
        for (candidate, mapping) in keys_below(&self.mappings, &prefix) {
            let exact = !candidate[prefix.len()..].contains('/');
            add(candidate, if exact { mapped_d_type(mapping) } else { None });
        }
        for (candidate, entry) in keys_below(&state.entries, &prefix) {
            let kind = match entry {
                Entry::CreatedDir(_) => DT_DIR,
                Entry::CreatedFile(_) | Entry::Virtual(_) => DT_REG,
            };
            add(candidate, Some(kind));
        }
        children
            .into_iter()
            .map(|(name, kind)| DirEntry {
                ino: 1,
                kind,
                name: name.into_bytes(),
            })
            .collect()
    }

    /// A new name in the temp directory for a guest-created item at `key` (`kind` is `file` or
    /// `dir`), if the caps allow one more.
    fn new_temp_name(
        &self,
        state: &mut State,
        key: &str,
        kind: &str,
    ) -> Result<String, IsolationError> {
        if state.created >= MAX_CREATED_FILES {
            return Err(IsolationError::TooManyCreatedFiles);
        }
        if state.created_key_bytes.saturating_add(key.len()) > MAX_CREATED_PATH_BYTES {
            return Err(IsolationError::CreatedPathsTooLong);
        }
        let number = state.next;
        state.next = number.wrapping_add(1);
        Ok(format!("{kind}-{number}"))
    }

    /// Registers a guest-created item (counted against the caps).
    fn insert_created(state: &mut State, key: GuestKey, entry: Entry) {
        state.created += 1;
        state.created_key_bytes += key.len();
        state.entries.insert(key, entry);
    }

    /// Opens `guest_path` with the guest's open `flags` (Hermit numbering) and creation `mode`
    /// (only the permission bits 0o777 are used): a host file or directory, a map-only directory
    /// or a virtual file (see the module documentation). `O_DIRECTORY` on anything but a directory
    /// is `ENOTDIR`.
    pub fn open(
        &self,
        guest_path: &str,
        flags: i32,
        mode: i32,
    ) -> Result<OpenFile, IsolationError> {
        let flags = OFlags::from_bits_retain(checked_host_open_flags(flags)?.cast_unsigned());
        let io = self.io.for_open(flags);
        let mode = permission_bits(mode.cast_unsigned());
        let path = GuestPath::parse(guest_path)?;
        let mut state = self.lock_state();
        let target = self.resolve(&state, &path);
        match target {
            Target::Host {
                base,
                rest,
                writable,
                ..
            } => {
                drop(state);
                if !writable && wants_modification(flags) {
                    return Err(IsolationError::ReadOnly(guest_path.to_owned()));
                }
                open_in(&base, rest, &path, flags, mode, io)
            }
            Target::Unmapped => self.create_file(&mut state, &path, flags, mode, io),
            other => self.open_in_map(&state, other, &path, flags),
        }
    }

    /// Opens a virtual file or map-only directory (or fails for the other targets).
    fn open_in_map(
        &self,
        state: &State,
        target: Target<'_, '_>,
        path: &GuestPath<'_>,
        flags: OFlags,
    ) -> Result<OpenFile, IsolationError> {
        let guest_path = path.raw;
        let create = flags.contains(OFlags::CREATE);
        let exclusive = create && flags.contains(OFlags::EXCL);
        let directory = flags.contains(OFlags::DIRECTORY);
        let wants_write = flags & OFlags::RWMODE != OFlags::RDONLY;
        match target {
            Target::Virtual(file) => {
                if exclusive {
                    Err(IsolationError::Exists(guest_path.to_owned()))
                } else if directory || path.wants_directory {
                    Err(IsolationError::NotADirectory(guest_path.to_owned()))
                } else if wants_write || flags.contains(OFlags::TRUNC) {
                    Err(IsolationError::ReadOnly(guest_path.to_owned()))
                } else {
                    Ok(OpenFile::virtual_file(guest_path, file.data, file.status))
                }
            }
            Target::MapDirectory => {
                if exclusive {
                    Err(IsolationError::Exists(guest_path.to_owned()))
                } else if create || wants_write {
                    Err(IsolationError::IsDirectory(guest_path.to_owned()))
                } else if !directory {
                    Err(IsolationError::DirectoryNeedsODirectory(
                        guest_path.to_owned(),
                    ))
                } else {
                    let entries = self.listing(state, &path.key);
                    let status = FileStatus::map_directory(synthetic_ino(&path.key), self.started);
                    Ok(OpenFile::map_directory(guest_path, entries, status))
                }
            }
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::Host { .. } | Target::Unmapped => {
                Err(IsolationError::NotFound(guest_path.to_owned()))
            }
        }
    }

    /// Creates the unmapped `path` (with `O_CREAT`) as a new file in the temp directory, with
    /// the `--io-mode` flags `io`.
    fn create_file(
        &self,
        state: &mut State,
        path: &GuestPath<'_>,
        flags: OFlags,
        mode: Mode,
        io: OFlags,
    ) -> Result<OpenFile, IsolationError> {
        if !flags.contains(OFlags::CREATE) {
            return Err(IsolationError::NotFound(path.raw.to_owned()));
        }
        if path.wants_directory {
            return Err(IsolationError::IsDirectory(path.raw.to_owned()));
        }
        let name = self.new_temp_name(state, &path.key, "file")?;
        let flags = flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        let opened = open_beneath_with(self.temp.fd(), OsStr::new(&name), flags, mode, io)
            .map_err(|source| {
                // A file system that refuses the flags (O_DIRECT) does so after creating the
                // file: remove it, the name is this attempt's own.
                if !io.is_empty() {
                    let _ = rustix::fs::unlinkat(self.temp.fd(), name.as_str(), AtFlags::empty());
                }
                host_error("create", self.temp.path(), &name, path, source)
            })?;
        let file = finish_open(path.raw, opened, flags)?;
        log::debug!("guest file {:?} created as {name}", path.raw);
        Self::insert_created(state, path.key.clone(), Entry::CreatedFile(name));
        Ok(file)
    }

    /// Removes `guest_path`: a file inside a mapping (a symlink there is removed itself, not its
    /// target), a file the guest created earlier, or a virtual file (removed from the map).
    /// Map-only and guest-created directories are `EISDIR`, unmapped paths `ENOENT`, the file of a
    /// single-file mapping `EBUSY`, anything in a read-only mapping `EROFS`.
    pub fn unlink(&self, guest_path: &str) -> Result<(), IsolationError> {
        let path = GuestPath::parse(guest_path)?;
        let mut state = self.lock_state();
        match self.resolve(&state, &path) {
            Target::Host {
                origin: Origin::CreatedFile,
                rest: [],
                ..
            } if !path.wants_directory => {
                let Some(Entry::CreatedFile(name)) = state.entries.remove(&path.key) else {
                    return Err(IsolationError::NotFound(guest_path.to_owned()));
                };
                state.created = state.created.saturating_sub(1);
                state.created_key_bytes = state.created_key_bytes.saturating_sub(path.key.len());
                drop(state);
                match rustix::fs::unlinkat(self.temp.fd(), name.as_str(), AtFlags::empty()) {
                    Err(error) if error != rustix::io::Errno::NOENT => Err(host_error(
                        "unlink",
                        self.temp.path(),
                        &name,
                        &path,
                        error.into(),
                    )),
                    _ => Ok(()),
                }
            }
            Target::Host {
                origin: Origin::CreatedDir,
                rest: [],
                ..
            }
            | Target::MapDirectory => Err(IsolationError::IsDirectory(guest_path.to_owned())),
            Target::Host {
                base,
                rest,
                writable,
                ..
            } => {
                drop(state);
                if !writable {
                    return Err(IsolationError::ReadOnly(guest_path.to_owned()));
                }
                self.unlink_in(&base, rest, &path)
            }
            Target::Virtual(_) => {
                state.entries.remove(&path.key);
                Ok(())
            }
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::Unmapped => Err(IsolationError::NotFound(guest_path.to_owned())),
        }
    }

    /// Unlinks `rest` below a host base: `unlinkat` in the parent resolved beneath the base.
    fn unlink_in(
        &self,
        base: &Base<'_>,
        rest: &[&str],
        path: &GuestPath<'_>,
    ) -> Result<(), IsolationError> {
        let (fd, shown, prefix) = match base {
            Base::File { .. } if rest.is_empty() => {
                return Err(IsolationError::Busy(path.raw.to_owned()));
            }
            Base::File { parent, name, .. } => return Err(not_below_file(*parent, name, path)),
            Base::Directory { fd, shown, prefix } => (*fd, *shown, prefix.as_deref()),
        };
        let components: Vec<&str> = prefix.into_iter().chain(rest.iter().copied()).collect();
        let Some((last, parents)) = components.split_last() else {
            return Err(IsolationError::IsDirectory(path.raw.to_owned()));
        };
        let parent = open_parent(fd, shown, parents, path)?;
        if self.is_mapped_file(parent.as_fd(), last) {
            return Err(IsolationError::Busy(path.raw.to_owned()));
        }
        let name = if path.wants_directory {
            format!("{last}/")
        } else {
            (*last).to_owned()
        };
        rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty())
            .map_err(|error| host_error("unlink", shown, &components.join("/"), path, error.into()))
    }

    /// Whether `name` in the directory `parent` is the file of a single-file mapping.
    fn is_mapped_file(&self, parent: BorrowedFd<'_>, name: &str) -> bool {
        let Ok(directory) = rustix::fs::fstat(parent) else {
            return false;
        };
        self.mappings.values().any(|mapping| match &mapping.anchor {
            Anchor::File {
                parent: mapped_parent,
                name: mapped_name,
                ..
            } => {
                mapped_name.as_os_str() == OsStr::new(name)
                    && rustix::fs::fstat(mapped_parent).is_ok_and(|mapped| {
                        (mapped.st_dev, mapped.st_ino) == (directory.st_dev, directory.st_ino)
                    })
            }
            Anchor::Directory(_) => false,
        })
    }

    /// The status of `guest_path` (`stat`, or `lstat` without `follow_symlinks`). Host paths
    /// follow the rules of [`FileMap::open`]: a symlink inside a mapping is reported itself by
    /// `lstat`, and followed by `stat` only if its target stays inside (else `EPERM`).
    pub fn stat(
        &self,
        guest_path: &str,
        follow_symlinks: bool,
    ) -> Result<FileStatus, IsolationError> {
        let path = GuestPath::parse(guest_path)?;
        let state = self.lock_state();
        match self.resolve(&state, &path) {
            Target::Host { base, rest, .. } => {
                drop(state);
                stat_in(&base, rest, &path, follow_symlinks)
            }
            Target::Virtual(_) | Target::BelowVirtual if path.wants_directory => {
                Err(IsolationError::NotADirectory(guest_path.to_owned()))
            }
            Target::Virtual(file) => Ok(file.status),
            Target::MapDirectory => Ok(FileStatus::map_directory(
                synthetic_ino(&path.key),
                self.started,
            )),
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::Unmapped => Err(IsolationError::NotFound(guest_path.to_owned())),
        }
    }

    /// Creates the directory `guest_path` with the permission bits `mode & 0o777`: inside a
    /// mapping on the host (the parent must resolve inside the mapping), at an unmapped path in
    /// the private temp directory (registered under that guest path, counted against
    /// [`MAX_CREATED_FILES`]). Existing paths (the guest root and map-only directories included)
    /// are `EEXIST`, a virtual file or a read-only mapping `EROFS`.
    pub fn mkdir(&self, guest_path: &str, mode: u32) -> Result<(), IsolationError> {
        let path = GuestPath::parse(guest_path)?;
        let mut state = self.lock_state();
        match self.resolve(&state, &path) {
            Target::Host {
                base,
                rest,
                origin,
                writable,
            } => {
                drop(state);
                if !writable {
                    return Err(IsolationError::ReadOnly(guest_path.to_owned()));
                }
                // Inside the temp directory the owner keeps rwx, so it can be removed at exit.
                let mode = match origin {
                    Origin::Mapping => mode,
                    Origin::CreatedFile | Origin::CreatedDir => mode | 0o700,
                };
                mkdir_in(&base, rest, &path, permission_bits(mode))
            }
            Target::Virtual(_) => Err(IsolationError::ReadOnly(guest_path.to_owned())),
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::MapDirectory => Err(IsolationError::Exists(guest_path.to_owned())),
            Target::Unmapped => {
                let name = self.new_temp_name(&mut state, &path.key, "dir")?;
                rustix::fs::mkdirat(self.temp.fd(), name.as_str(), permission_bits(mode | 0o700))
                    .map_err(|error| {
                    host_error("mkdir", self.temp.path(), &name, &path, error.into())
                })?;
                log::debug!("guest directory {guest_path:?} created as {name}");
                Self::insert_created(&mut state, path.key.clone(), Entry::CreatedDir(name));
                Ok(())
            }
        }
    }

    /// Adds a read-only in-memory file at `guest_path` (at start-up, before the guest runs). The
    /// path must not be the guest root, must not lie inside a mapping or another entry, and no
    /// entry may lie below it.
    pub fn add_virtual_file(
        &mut self,
        guest_path: &str,
        data: Arc<[u8]>,
    ) -> Result<(), IsolationError> {
        let conflict = |reason| IsolationError::VirtualFileConflict {
            guest: guest_path.to_owned(),
            reason,
        };
        let path = GuestPath::parse(guest_path).map_err(|_| conflict("the path climbs above /"))?;
        if path.parts.is_empty() {
            return Err(conflict("the guest root is a directory"));
        }
        let mut state = self.lock_state();
        match self.resolve(&state, &path) {
            Target::Unmapped => {}
            Target::MapDirectory => return Err(conflict("other entries lie below it")),
            Target::Host {
                origin: Origin::Mapping,
                ..
            } => return Err(conflict("it lies inside a --file-mapping")),
            Target::Host { .. } | Target::Virtual(_) | Target::BelowVirtual => {
                return Err(conflict("it is already in the map"));
            }
        }
        let status =
            FileStatus::virtual_file(data.len(), synthetic_ino(&path.key), FileTime::now());
        log::debug!("virtual file /{} ({} bytes)", path.key, data.len());
        state.entries.insert(
            path.key.clone(),
            Entry::Virtual(VirtualFile { data, status }),
        );
        Ok(())
    }
}

/// Parses and opens one `--file-mapping`: its cleaned guest key and its host side.
fn parse_mapping(spec: &str) -> Result<(GuestKey, Mapping), IsolationError> {
    let (host, guest, writable) = mapping::split_spec(spec)?;
    let guest = clean_components(guest)
        .ok_or_else(|| IsolationError::MalformedMapping {
            spec: spec.to_owned(),
            reason: "the guest path climbs above /",
        })?
        .join("/");
    Ok((guest, mapping::open_host(spec, Path::new(host), writable)?))
}

/// `key` followed by `/` (empty for the root): the common prefix of every key below it.
fn directory_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    }
}

/// The entries of `map` whose keys start with `prefix` (a [`directory_prefix`]).
fn keys_below<'a, V>(
    map: &'a BTreeMap<GuestKey, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(candidate, _)| candidate.starts_with(prefix))
}

/// The Linux `d_type` of a mapping's host path, `None` if it does not exist.
fn mapped_d_type(mapping: &Mapping) -> Option<u8> {
    match &mapping.anchor {
        Anchor::Directory(_) => Some(DT_DIR),
        Anchor::File { parent, name, .. } => {
            let flags = LOOKUP_ONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(parent, name, flags, Mode::empty()).ok()?;
            let metadata = File::from(fd).metadata().ok()?;
            Some(d_type_of(metadata.file_type()))
        }
    }
}

/// The permission bits of a guest mode as a host [`Mode`].
fn permission_bits(mode: u32) -> Mode {
    Mode::from_bits_truncate((mode & 0o777) as rustix::fs::RawMode)
}

/// Whether open flags can modify the file system: writing, creating or truncating.
fn wants_modification(flags: OFlags) -> bool {
    flags & OFlags::RWMODE != OFlags::RDONLY || flags.intersects(OFlags::CREATE | OFlags::TRUNC)
}

/// The path relative to a directory base for `rest`: `.` for the base itself; a trailing `/`
/// when the guest path names a directory.
fn relative_path(prefix: Option<&str>, rest: &[&str], wants_directory: bool) -> String {
    let mut relative = prefix
        .into_iter()
        .chain(rest.iter().copied())
        .collect::<Vec<_>>()
        .join("/");
    if relative.is_empty() {
        relative.push('.');
    } else if wants_directory {
        relative.push('/');
    }
    relative
}

/// The error for a host operation: an escape (`EXDEV` from the resolution) becomes
/// [`IsolationError::Escapes`], everything else keeps its errno.
fn host_error(
    operation: &'static str,
    shown: &Path,
    relative: &str,
    path: &GuestPath<'_>,
    source: io::Error,
) -> IsolationError {
    if source.raw_os_error() == Some(libc::EXDEV) {
        IsolationError::Escapes(path.raw.to_owned())
    } else {
        IsolationError::Io {
            operation,
            path: shown.join(relative),
            source,
        }
    }
}

/// The error for a path below a single file (or naming it as a directory): `ENOENT` if the file
/// does not exist, else `ENOTDIR`.
fn not_below_file(parent: BorrowedFd<'_>, name: &OsStr, path: &GuestPath<'_>) -> IsolationError {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => IsolationError::NotFound(path.raw.to_owned()),
        _ => IsolationError::NotADirectory(path.raw.to_owned()),
    }
}

/// The directory `parents` below `fd`, resolved beneath it, as a lookup-only descriptor.
fn open_parent(
    fd: BorrowedFd<'_>,
    shown: &Path,
    parents: &[&str],
    path: &GuestPath<'_>,
) -> Result<OwnedFd, IsolationError> {
    let relative = relative_path(None, parents, false);
    open_beneath(
        fd,
        OsStr::new(&relative),
        LOOKUP_ONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .map_err(|source| host_error("resolve", shown, &relative, path, source))
}

/// Opens `rest` below a host base (see the module documentation), with the `--io-mode` flags
/// `io`.
fn open_in(
    base: &Base<'_>,
    rest: &[&str],
    path: &GuestPath<'_>,
    flags: OFlags,
    mode: Mode,
    io: OFlags,
) -> Result<OpenFile, IsolationError> {
    let (fd, shown, relative, flags) = match base {
        Base::Directory { fd, shown, prefix } => {
            let relative = relative_path(prefix.as_deref(), rest, path.wants_directory);
            (*fd, *shown, OsString::from(relative), flags)
        }
        Base::File {
            parent,
            shown,
            name,
            special,
        } => {
            if !rest.is_empty() || path.wants_directory {
                return Err(not_below_file(*parent, name, path));
            }
            let mut flags = flags | OFlags::NOFOLLOW;
            if *special {
                if flags.contains(OFlags::CREATE | OFlags::EXCL) {
                    return Err(IsolationError::Exists(path.raw.to_owned()));
                }
                flags.remove(OFlags::CREATE);
            }
            (*parent, *shown, name.clone(), flags)
        }
    };
    let opened = open_beneath_with(fd, &relative, flags | OFlags::NONBLOCK, mode, io)
        .map_err(|source| host_error("open", shown, &relative.to_string_lossy(), path, source))?;
    finish_open(path.raw, opened, flags)
}

/// Turns a descriptor opened with `O_NONBLOCK` into an [`OpenFile`]: FIFOs and sockets are
/// refused (`ENXIO`); regular files, directories and block devices lose `O_NONBLOCK` again unless
/// `requested` has it; character devices keep it.
fn finish_open(
    guest_path: &str,
    opened: OwnedFd,
    requested: OFlags,
) -> Result<OpenFile, IsolationError> {
    let failed = |operation, source: io::Error| IsolationError::Descriptor {
        operation,
        path: guest_path.to_owned(),
        source,
    };
    let status = rustix::fs::fstat(&opened).map_err(|error| failed("fstat", error.into()))?;
    match FileType::from_raw_mode(status.st_mode) {
        FileType::Fifo | FileType::Socket => {
            return Err(IsolationError::SpecialFile(guest_path.to_owned()));
        }
        FileType::CharacterDevice => {}
        _ if !requested.contains(OFlags::NONBLOCK) => {
            let current =
                rustix::fs::fcntl_getfl(&opened).map_err(|error| failed("fcntl", error.into()))?;
            rustix::fs::fcntl_setfl(&opened, current - OFlags::NONBLOCK)
                .map_err(|error| failed("fcntl", error.into()))?;
        }
        _ => {}
    }
    OpenFile::host(guest_path, File::from(opened)).map_err(|source| failed("open", source))
}

/// The status of `rest` below a host base: an `O_PATH` descriptor resolved beneath it (with
/// `O_NOFOLLOW` for `lstat` and always for a single-file mapping), then `fstat`.
fn stat_in(
    base: &Base<'_>,
    rest: &[&str],
    path: &GuestPath<'_>,
    follow_symlinks: bool,
) -> Result<FileStatus, IsolationError> {
    let lookup = LOOKUP_ONLY | OFlags::NOFOLLOW;
    let (fd, shown, relative, flags) = match base {
        Base::Directory { fd, shown, prefix } => {
            let relative = relative_path(prefix.as_deref(), rest, path.wants_directory);
            let flags = if follow_symlinks { LOOKUP_ONLY } else { lookup };
            (*fd, *shown, OsString::from(relative), flags)
        }
        Base::File {
            parent,
            shown,
            name,
            ..
        } => {
            if !rest.is_empty() || path.wants_directory {
                return Err(not_below_file(*parent, name, path));
            }
            (*parent, *shown, name.clone(), lookup)
        }
    };
    let shown_path = || shown.join(&relative);
    let opened = open_beneath(fd, &relative, flags, Mode::empty())
        .map_err(|source| host_error("stat", shown, &relative.to_string_lossy(), path, source))?;
    File::from(opened)
        .metadata()
        .map(|metadata| FileStatus::from_metadata(&metadata))
        .map_err(|source| IsolationError::Io {
            operation: "stat",
            path: shown_path(),
            source,
        })
}

/// Creates the directory `rest` below a host base: `mkdirat` in the parent resolved beneath it.
fn mkdir_in(
    base: &Base<'_>,
    rest: &[&str],
    path: &GuestPath<'_>,
    mode: Mode,
) -> Result<(), IsolationError> {
    let (fd, shown, prefix) = match base {
        Base::File { parent, name, .. } if rest.is_empty() => {
            return Err(
                match rustix::fs::statat(*parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(rustix::io::Errno::NOENT) => IsolationError::Busy(path.raw.to_owned()),
                    _ => IsolationError::Exists(path.raw.to_owned()),
                },
            );
        }
        Base::File { parent, name, .. } => return Err(not_below_file(*parent, name, path)),
        Base::Directory { fd, shown, prefix } => (*fd, *shown, prefix.as_deref()),
    };
    let components: Vec<&str> = prefix.into_iter().chain(rest.iter().copied()).collect();
    let Some((last, parents)) = components.split_last() else {
        return Err(IsolationError::Exists(path.raw.to_owned()));
    };
    let parent = open_parent(fd, shown, parents, path)?;
    rustix::fs::mkdirat(&parent, *last, mode)
        .map_err(|error| host_error("mkdir", shown, &components.join("/"), path, error.into()))
}

/// The inode number reported by `stat` for a map-only directory or virtual file: a hash of its
/// guest path (stable for the run, never 0 or 1), so that tools detecting directory loops by
/// (device, inode) tell these entries apart. Their Getdents records say `d_ino` 1 (§6.4).
fn synthetic_ino(key: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish().max(2)
}

/// Directories the file system of kernels 0.10–0.11 creates at boot: a mount point can be made
/// inside them, not at them.
const LEGACY_KERNEL_DIRECTORIES: [&str; 2] = ["tmp", "proc"];

/// The part of `dir` a 0.10–0.11 kernel can mount at: its first component, or its first two when
/// the first is a directory the kernel creates itself. `None` if `dir` is too short for that.
fn legacy_mountable_prefix(dir: &[String]) -> Option<&[String]> {
    let top = dir.first()?;
    let depth = if LEGACY_KERNEL_DIRECTORIES.contains(&top.as_str()) {
        2
    } else {
        1
    };
    dir.get(..depth)
}

/// The mount point through which kernels ≥ 0.12 reach the virtual file `key`: the mountable
/// prefix of its directory; `None` directly under `/`, `/tmp` or `/proc`.
fn virtual_file_mount(key: &[String]) -> Option<&[String]> {
    let (_, directory) = key.split_last()?;
    legacy_mountable_prefix(directory)
}

/// The mount point chosen for a 0.10–0.11 kernel ([`FileMap::legacy_mount_point`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMount {
    /// Absolute guest directory, e.g. `/root`.
    pub point: String,
    /// Mapped guest paths and virtual files outside it (unreachable for such a kernel).
    pub unreachable: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn created_files_are_capped_and_removed_with_the_map() {
        let parent = tempfile::tempdir().unwrap();
        let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
        let create = abi::O_CREAT | abi::O_WRONLY;
        for i in 0..MAX_CREATED_FILES {
            drop(map.open(&format!("/t/{i}"), create, 0o600).unwrap());
        }
        let temp = map.temp_dir().unwrap();
        let refused = map.open("/t/one-more", create, 0o600).unwrap_err();
        assert!(matches!(refused, IsolationError::TooManyCreatedFiles));
        assert_eq!(refused.errno(), abi::ENOSPC);
        // Files created earlier can still be reopened.
        drop(map.open("/t/7", abi::O_RDONLY, 0).unwrap());
        // An open file does not keep the temp directory alive.
        let still_open = map.open("/t/8", abi::O_RDONLY, 0).unwrap();
        drop(map);
        assert!(!temp.exists(), "temp dir {} left behind", temp.display());
        drop(still_open);
    }

    use super::*;
    use std::io::{Read, Write};
    use uhyve_interface as abi;

    fn specs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn key(s: &str) -> Vec<String> {
        clean_guest_path(s).unwrap()
    }

    #[test]
    fn guest_paths_are_cleaned() {
        assert_eq!(key("/a/b"), key("a/b"));
        assert_eq!(key("a//./b/"), vec!["a", "b"]);
        assert_eq!(key("/root/x/../y"), vec!["root", "y"]);
        assert_eq!(key("/"), Vec::<String>::new());
        assert_eq!(key("..."), vec!["..."]);
        assert_eq!(clean_guest_path("/.."), None);
        assert_eq!(clean_guest_path("a/../../etc/passwd"), None);
    }

    #[test]
    fn malformed_mappings_name_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        for bad in [
            "nocolon".to_string(),
            format!(":{}", "guest"),
            format!("{host}:"),
            format!("{host}:/.."),
        ] {
            let error = FileMap::new(std::slice::from_ref(&bad), None).unwrap_err();
            assert!(
                matches!(error, IsolationError::MalformedMapping { .. }),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains(&bad), "{error}");
        }
    }

    #[test]
    fn duplicate_guest_paths_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display();
        let error = FileMap::new(
            &specs(&[&format!("{host}:/a/b"), &format!("{host}:a//b/")]),
            None,
        )
        .unwrap_err();
        assert!(matches!(error, IsolationError::DuplicateMapping { .. }));
        assert!(error.to_string().contains("/a/b"));
    }

    #[test]
    fn host_paths_are_canonicalised_or_need_a_parent() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let indirect = format!("{}/sub/../sub/.:data", dir.path().display());
        let missing_file = format!("{}/sub/new.txt:out.txt", dir.path().display());
        let extra = format!("{}:x:rw", dir.path().display());
        let map = FileMap::new(&specs(&[&indirect, &missing_file, &extra]), None).unwrap();
        let canonical = fs::canonicalize(dir.path()).unwrap();
        let hosts: Vec<&Path> = map.host_paths().collect();
        assert!(hosts.contains(&canonical.join("sub").as_path()));
        assert!(hosts.contains(&canonical.join("sub/new.txt").as_path()));
        assert!(hosts.contains(&canonical.as_path()));

        let missing_dir = format!("{}/nope/new.txt:x", dir.path().display());
        let error = FileMap::new(&[missing_dir], None).unwrap_err();
        assert!(matches!(error, IsolationError::HostPath { .. }), "{error}");
    }

    #[test]
    fn mount_points_cover_directories_and_parents_of_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"").unwrap();
        let d = dir.path().display();
        let map = FileMap::new(
            &specs(&[
                &format!("{d}:/root"),
                &format!("{d}/f:/etc/f"),
                &format!("{d}/f:top"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(map.mount_points(), vec!["/etc", "/root"]);
        assert_eq!(map.unmountable_mappings(), vec!["/top"]);
    }

    /// A map with the given guest paths, each mapping a directory (names ending in `.txt`: a
    /// file).
    fn map_of(guests: &[&str]) -> (tempfile::TempDir, FileMap) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f.txt"), b"").unwrap();
        let d = dir.path().display();
        let specs: Vec<String> = guests
            .iter()
            .map(|guest| {
                if guest.ends_with(".txt") {
                    format!("{d}/f.txt:{guest}")
                } else {
                    format!("{d}:{guest}")
                }
            })
            .collect();
        let map = FileMap::new(&specs, None).unwrap();
        (dir, map)
    }

    fn legacy(guests: &[&str]) -> Option<(String, Vec<String>)> {
        let (_dir, map) = map_of(guests);
        map.legacy_mount_point()
            .map(|mount| (mount.point, mount.unreachable))
    }

    #[test]
    fn legacy_kernels_get_the_shallowest_common_mountable_directory() {
        let none: Vec<String> = Vec::new();
        assert_eq!(legacy(&[]), None);
        assert_eq!(legacy(&["/data"]), Some(("/data".into(), none.clone())));
        assert_eq!(
            legacy(&["/root/a", "/root/b/c"]),
            Some(("/root".into(), none.clone()))
        );
        assert_eq!(
            legacy(&["/root/a/cfg.txt"]),
            Some(("/root".into(), none.clone()))
        );
        // /tmp and /proc exist in those kernels: the mount goes one level deeper.
        assert_eq!(legacy(&["/tmp/x/y"]), Some(("/tmp/x".into(), none.clone())));
        assert_eq!(
            legacy(&["/proc/info.txt", "/proc/sys/x"]),
            Some(("/proc/sys".into(), vec!["/proc/info.txt".to_owned()]))
        );
        // /tmp itself cannot be a mount point.
        assert_eq!(legacy(&["/tmp"]), None);
    }

    #[test]
    fn legacy_kernels_cannot_reach_mappings_outside_the_one_mount_point() {
        // No common top directory: the first mapping's wins, the others are reported.
        assert_eq!(
            legacy(&["/cfg", "/data/x"]),
            Some(("/cfg".into(), vec!["/data/x".to_owned()]))
        );
        // A file directly under / has no directory to mount.
        assert_eq!(legacy(&["/top.txt"]), None);
        assert_eq!(
            legacy(&["/top.txt", "/root"]),
            Some(("/root".into(), vec!["/top.txt".to_owned()]))
        );
        let (_dir, map) = map_of(&["/top.txt", "/root"]);
        assert_eq!(map.unmountable_mappings(), vec!["/top.txt"]);
        assert_eq!(map.mount_points(), vec!["/root"]);
    }

    /// A map with the given `--file-mapping` guest directories (each a host directory) and
    /// virtual files.
    fn map_with_virtual(guests: &[&str], virtual_files: &[&str]) -> (tempfile::TempDir, FileMap) {
        let (dir, mut map) = map_of(guests);
        for path in virtual_files {
            map.add_virtual_file(path, Arc::from(&b"v"[..])).unwrap();
        }
        (dir, map)
    }

    #[test]
    fn virtual_files_are_reached_through_their_top_level_directory() {
        let (_dir, map) = map_with_virtual(
            &[],
            &[
                "/hermit.toml",
                "/data/a.txt",
                "/data/deep/b.txt",
                "/etc/app/c.conf",
                "/tmp/cache/d",
                "/tmp/e",
            ],
        );
        assert_eq!(map.mount_points(), vec!["/data", "/etc", "/tmp/cache"]);
        assert_eq!(
            map.unmountable_virtual_files(),
            vec!["/hermit.toml", "/tmp/e"]
        );
        assert!(map.unmountable_mappings().is_empty());
    }

    #[test]
    fn mount_points_below_another_are_left_out() {
        // A mapping below a directory of virtual files, and one mapping below another.
        let (_dir, map) = map_with_virtual(&["/data/sub", "/srv", "/srv/inner"], &["/data/x.txt"]);
        assert_eq!(map.mount_points(), vec!["/data", "/srv"]);
    }

    #[test]
    fn legacy_kernels_mount_where_the_virtual_files_are() {
        let (_dir, map) = map_with_virtual(&[], &["/hermit.toml", "/app", "/data/in.txt"]);
        let mount = map.legacy_mount_point().unwrap();
        assert_eq!(mount.point, "/data");
        assert_eq!(mount.unreachable, vec!["/app", "/hermit.toml"]);
        let (_dir, map) = map_with_virtual(&["/data/host"], &["/data/in.txt"]);
        let mount = map.legacy_mount_point().unwrap();
        assert_eq!(mount.point, "/data");
        assert!(mount.unreachable.is_empty());
        // Only files directly under /: nothing to mount.
        let (_dir, map) = map_with_virtual(&[], &["/hermit.toml"]);
        assert_eq!(map.legacy_mount_point(), None);
        assert!(map.mount_points().is_empty());
    }

    #[test]
    fn longest_prefix_wins_and_subtrees_are_exposed() {
        let outer = tempfile::tempdir().unwrap();
        let inner = tempfile::tempdir().unwrap();
        fs::create_dir(outer.path().join("deep")).unwrap();
        fs::write(outer.path().join("deep/file"), b"outer").unwrap();
        fs::write(inner.path().join("file"), b"inner").unwrap();
        let map = FileMap::new(
            &specs(&[
                &format!("{}:/root", outer.path().display()),
                &format!("{}:/root/deep", inner.path().display()),
            ]),
            None,
        )
        .unwrap();
        let read = |path: &str| {
            let mut text = String::new();
            map.open(path, abi::O_RDONLY, 0)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        };
        assert_eq!(read("/root/deep/file"), "inner");
        assert_eq!(read("root/deep/file"), "inner");
        // /root/deeper is not /root/deep: prefixes compare whole components.
        assert!(matches!(
            map.open("/root/deeper/file", abi::O_RDONLY, 0),
            Err(e) if e.errno() == abi::ENOENT
        ));
        // `..` is resolved lexically inside the guest namespace, never on the host.
        assert_eq!(read("/root/deep/../deep/file"), "inner");
    }

    #[test]
    fn an_unusable_tempdir_is_refused_at_start() {
        let file = tempfile::NamedTempFile::new().unwrap();
        for parent in [Path::new("/nonexistent/uhyve"), file.path()] {
            assert!(matches!(
                FileMap::new(&[], Some(parent.to_path_buf())),
                Err(IsolationError::TempDir { .. })
            ));
        }
    }

    #[test]
    fn unmapped_files_live_in_the_private_temp_dir() {
        let parent = tempfile::tempdir().unwrap();
        let map = FileMap::new(&[], Some(parent.path().to_path_buf())).unwrap();
        // The temp directory exists from the start (for a process confinement), empty but for
        // its lock file.
        let temp = map.temp_dir().unwrap();
        assert!(temp.starts_with(parent.path()));
        let mode = fs::metadata(&temp).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let created = || -> Vec<_> {
            fs::read_dir(&temp)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|name| name != super::super::tempdir::LOCK_FILE)
                .collect()
        };
        assert!(created().is_empty());

        assert!(matches!(
            map.open("/scratch/x", abi::O_RDONLY, 0),
            Err(IsolationError::NotFound(_))
        ));
        let mut file = map
            .open("/scratch/x", abi::O_WRONLY | abi::O_CREAT, 0o644)
            .unwrap();
        file.write_all(b"data").unwrap();
        let names = created();
        assert_eq!(names.len(), 1);
        assert!(!names[0].to_string_lossy().contains("scratch"));
        // Found again, under either spelling.
        let mut text = String::new();
        map.open("scratch//x", abi::O_RDONLY, 0)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "data");
        assert!(matches!(
            map.open("/scratch/x", abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL, 0o644),
            Err(e) if e.errno() == abi::EEXIST
        ));
        map.unlink("/scratch/x").unwrap();
        assert!(matches!(
            map.open("/scratch/x", abi::O_RDONLY, 0),
            Err(IsolationError::NotFound(_))
        ));
        assert!(matches!(
            map.unlink("/scratch/x"),
            Err(IsolationError::NotFound(_))
        ));
        assert!(matches!(
            map.open("/", abi::O_WRONLY | abi::O_CREAT, 0o644),
            Err(IsolationError::IsDirectory(_))
        ));
        assert!(matches!(
            map.open("", abi::O_WRONLY | abi::O_CREAT, 0o644),
            Err(IsolationError::NotFound(_))
        ));

        map.open("/other", abi::O_WRONLY | abi::O_CREAT, 0o644)
            .unwrap();
        drop(map);
        assert!(!temp.exists());
    }

    #[test]
    fn symlinks_cannot_leave_the_mapping() {
        if crate::isolation::beneath::skip_without_openat2("symlinks_cannot_leave_the_mapping") {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, b"secret").unwrap();
        let mapped = tempfile::tempdir().unwrap();
        fs::write(mapped.path().join("real"), b"real").unwrap();
        std::os::unix::fs::symlink(&secret, mapped.path().join("to_secret")).unwrap();
        std::os::unix::fs::symlink(outside.path(), mapped.path().join("to_outside")).unwrap();
        std::os::unix::fs::symlink("real", mapped.path().join("to_real")).unwrap();
        let map = FileMap::new(&[format!("{}:/data", mapped.path().display())], None).unwrap();

        for path in ["/data/to_secret", "/data/to_outside/secret"] {
            let error = map.open(path, abi::O_WRONLY | abi::O_TRUNC, 0).unwrap_err();
            assert!(
                matches!(error, IsolationError::Escapes(_)),
                "{path}: {error}"
            );
            assert_eq!(error.errno(), abi::EPERM);
        }
        assert!(matches!(
            map.unlink("/data/to_outside/secret"),
            Err(IsolationError::Escapes(_))
        ));
        assert!(matches!(
            map.open("/data/to_outside/new", abi::O_WRONLY | abi::O_CREAT, 0o644),
            Err(IsolationError::Escapes(_))
        ));
        assert!(map.open("/data/../secret", abi::O_RDONLY, 0).is_err());
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
        assert!(!outside.path().join("new").exists());

        // A link that stays inside is fine; unlinking a link removes the link only.
        let mut text = String::new();
        map.open("/data/to_real", abi::O_RDONLY, 0)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "real");
        map.unlink("/data/to_secret").unwrap();
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
    }

    #[test]
    fn bad_flags_and_paths_are_rejected() {
        let map = FileMap::new(&[], None).unwrap();
        assert!(matches!(
            map.open("/x", abi::O_CREAT | abi::O_DIRECTORY, 0),
            Err(IsolationError::InvalidFlags(_))
        ));
        assert!(matches!(
            map.open("/../x", abi::O_RDONLY, 0),
            Err(IsolationError::InvalidPath(_))
        ));
        assert!(matches!(
            map.unlink("/../x"),
            Err(IsolationError::InvalidPath(_))
        ));
    }

    use crate::isolation::dir::{DT_LNK, decode_dirents};
    use crate::isolation::guest_errno;
    use crate::isolation::openfile::FileKind;
    use crate::isolation::status::{S_IFDIR, S_IFLNK, S_IFREG};
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The rest of the entries of `file`, read with Getdents calls of `buffer_len` bytes, with
    /// the checks every buffer must pass: whole records, `d_off` = position after the record.
    fn list(file: &OpenFile, buffer_len: u64) -> Vec<(String, u8)> {
        let mut entries = Vec::new();
        let mut position = i64::try_from((&*file).stream_position().unwrap()).unwrap();
        while let Some(buffer) = file.getdents(buffer_len).unwrap() {
            assert!(buffer.len() as u64 <= buffer_len);
            let records = decode_dirents(&buffer).expect("well-formed dirent64 records");
            assert!(!records.is_empty());
            for record in records {
                position += i64::from(record.reclen);
                assert_eq!(record.off, position);
                entries.push((String::from_utf8(record.name).unwrap(), record.kind));
            }
        }
        assert_eq!(file.getdents(buffer_len).unwrap(), None);
        entries
    }

    fn names(entries: &[(String, u8)]) -> Vec<&str> {
        entries.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn errno<T: std::fmt::Debug>(result: Result<T, IsolationError>) -> i32 {
        result.unwrap_err().errno()
    }

    #[test]
    fn host_directories_are_listed_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected: Vec<String> = (0..40).map(|i| format!("file-{i:02}")).collect();
        for name in &expected {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("link")).unwrap();
        let long = "n".repeat(200);
        fs::write(dir.path().join(&long), b"").unwrap();
        expected.extend([".", "..", "sub", "link", &long].map(String::from));
        expected.sort();
        let map = FileMap::new(&[format!("{}:/data", dir.path().display())], None).unwrap();

        let file = map
            .open("/data", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        assert_eq!(file.kind(), FileKind::HostDirectory);
        // A buffer too small for the next record: EINVAL, and nothing is consumed.
        assert_eq!(errno(file.getdents(19)), abi::EINVAL);
        assert_eq!(errno(file.getdents(0)), abi::EINVAL);
        // 256 bytes hold the 224-byte record of the long name, so every entry fits somewhere.
        let mut entries = list(&file, 256);
        entries.sort();
        assert_eq!(
            entries
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>(),
            expected
        );
        let kind = |name: &str| entries.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(kind("."), DT_DIR);
        assert_eq!(kind("sub"), DT_DIR);
        assert_eq!(kind("link"), DT_LNK);
        assert_eq!(kind("file-07"), DT_REG);

        // Rewinding lists everything again; a second descriptor has its own position.
        assert_eq!(file.seek(SeekFrom::Start(0)).unwrap(), 0);
        let other = map
            .open("/data/", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        let first = decode_dirents(&file.getdents(256).unwrap().unwrap()).unwrap();
        assert_eq!(list(&other, 4096).len(), expected.len());
        assert_eq!(list(&file, 4096).len(), expected.len() - first.len());
        // Seeking back to a record boundary continues there; into a record is EINVAL.
        let boundary = u64::try_from(first[0].off).unwrap();
        assert_eq!(file.seek(SeekFrom::Start(boundary)).unwrap(), boundary);
        assert_eq!(list(&file, 4096).len(), expected.len() - 1);
        let error = file.seek(SeekFrom::Start(boundary - 1)).unwrap_err();
        assert_eq!(guest_errno(&error), abi::EINVAL);
    }

    #[test]
    fn host_directories_open_without_o_directory_as_before() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"x").unwrap();
        let map = FileMap::new(&[format!("{}:/data", dir.path().display())], None).unwrap();
        let file = map.open("/data", abi::O_RDONLY, 0).unwrap();
        assert_eq!(file.kind(), FileKind::HostDirectory);
        let error = file.read(&mut [0; 8]).unwrap_err();
        assert_eq!(guest_errno(&error), abi::EISDIR);
        assert_eq!(names(&list(&file, 4096)).len(), 3);
        // Writing to a directory is refused by the host, as before.
        assert_eq!(errno(map.open("/data", abi::O_WRONLY, 0)), abi::EISDIR);
        // O_DIRECTORY on a file is ENOTDIR; a file's getdents too.
        assert_eq!(
            errno(map.open("/data/f", abi::O_RDONLY | abi::O_DIRECTORY, 0)),
            abi::ENOTDIR
        );
        let regular = map.open("/data/f", abi::O_RDONLY, 0).unwrap();
        assert_eq!(regular.kind(), FileKind::HostFile);
        assert_eq!(errno(regular.getdents(4096)), abi::ENOTDIR);
        assert_eq!(
            errno(map.open("/data/f/below", abi::O_RDONLY, 0)),
            abi::ENOTDIR
        );
    }

    #[test]
    fn map_only_directories_have_synthetic_listings() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("conf"), b"c").unwrap();
        let d = dir.path().display();
        let mut map = FileMap::new(
            &specs(&[
                &format!("{d}:/root"),
                &format!("{d}/conf:/etc/app.conf"),
                &format!("{d}:/etc/deep/er/dir"),
                &format!("{d}/conf:/top"),
                &format!("{d}/missing:/etc/missing"),
            ]),
            None,
        )
        .unwrap();
        map.add_virtual_file("/etc/hermit.img", Arc::from(&b"image"[..]))
            .unwrap();
        map.add_virtual_file("/v/only", Arc::from(&b""[..]))
            .unwrap();

        let root = map.open("/", abi::O_RDONLY | abi::O_DIRECTORY, 0).unwrap();
        assert_eq!(root.kind(), FileKind::MapDirectory);
        assert_eq!(
            list(&root, 4096),
            vec![
                ("etc".to_owned(), DT_DIR),
                ("root".to_owned(), DT_DIR),
                ("top".to_owned(), DT_REG),
                ("v".to_owned(), DT_DIR),
            ]
        );
        let etc = map
            .open("etc", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        // Small buffers: one record per call, same result; the missing host file is left out.
        assert_eq!(
            list(&etc, 32),
            vec![
                ("app.conf".to_owned(), DT_REG),
                ("deep".to_owned(), DT_DIR),
                ("hermit.img".to_owned(), DT_REG),
            ]
        );
        let deep = map
            .open("/etc/deep/er", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        assert_eq!(list(&deep, 4096), vec![("dir".to_owned(), DT_DIR)]);
        // Synthetic records carry d_ino 1.
        let root = map.open("/", abi::O_RDONLY | abi::O_DIRECTORY, 0).unwrap();
        assert_eq!(errno(root.getdents(8)), abi::EINVAL);
        let records = decode_dirents(&root.getdents(4096).unwrap().unwrap()).unwrap();
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|record| record.ino == 1));

        // O_DIRECTORY is required; writing or creating is refused.
        assert_eq!(errno(map.open("/etc", abi::O_RDONLY, 0)), abi::EINVAL);
        assert_eq!(errno(map.open("/", abi::O_RDONLY, 0)), abi::EINVAL);
        assert_eq!(errno(map.open("/etc", abi::O_RDWR, 0)), abi::EISDIR);
        assert_eq!(
            errno(map.open("/etc", abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL, 0)),
            abi::EEXIST
        );
        assert_eq!(errno(map.unlink("/etc")), abi::EISDIR);
        // Not below any mapping: ENOENT, also with O_DIRECTORY.
        assert_eq!(
            errno(map.open("/nothing", abi::O_RDONLY | abi::O_DIRECTORY, 0)),
            abi::ENOENT
        );
    }

    #[test]
    fn an_empty_map_has_an_empty_root() {
        let map = FileMap::new(&[], None).unwrap();
        let root = map.open("/", abi::O_RDONLY | abi::O_DIRECTORY, 0).unwrap();
        assert_eq!(root.getdents(4096).unwrap(), None);
        assert_eq!(map.stat("/", true).unwrap().mode, S_IFDIR | 0o755);
        assert_eq!(errno(map.stat("/x", true)), abi::ENOENT);
    }

    #[test]
    fn stat_follows_the_rules_of_open() {
        if crate::isolation::beneath::skip_without_openat2("stat_follows_the_rules_of_open") {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        let mapped = tempfile::tempdir().unwrap();
        fs::write(mapped.path().join("real"), b"12345").unwrap();
        fs::create_dir(mapped.path().join("sub")).unwrap();
        let symlink = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, mapped.path().join(name)).unwrap();
        };
        symlink(Path::new("real"), "to_real");
        symlink(&outside.path().join("secret"), "to_secret");
        symlink(outside.path(), "to_outside");
        symlink(Path::new("gone"), "dangling");
        let mut map = FileMap::new(
            &[
                format!("{}:/data", mapped.path().display()),
                format!("{}/real:/etc/real", mapped.path().display()),
            ],
            None,
        )
        .unwrap();
        map.add_virtual_file("/img/app", Arc::from(&b"virtual!"[..]))
            .unwrap();

        let real = map.stat("/data/real", true).unwrap();
        assert_eq!((real.mode & 0o170000, real.size), (S_IFREG, 5));
        assert_eq!(
            real.ino,
            fs::metadata(mapped.path().join("real")).unwrap().ino()
        );
        assert_eq!(map.stat("/data/real", false).unwrap(), real);
        assert_eq!(map.stat("/etc/real", true).unwrap().ino, real.ino);
        assert_eq!(map.stat("/data/sub", true).unwrap().file_type(), S_IFDIR);
        assert_eq!(map.stat("/data", true).unwrap().file_type(), S_IFDIR);
        // A link inside: stat reports the target, lstat the link.
        assert_eq!(map.stat("/data/to_real", true).unwrap().ino, real.ino);
        let link = map.stat("/data/to_real", false).unwrap();
        assert_eq!((link.file_type(), link.size), (S_IFLNK, 4));
        // A link leading out: lstat is fine, stat is EPERM like open, through a linked
        // directory both are.
        assert_eq!(
            map.stat("/data/to_secret", false).unwrap().file_type(),
            S_IFLNK
        );
        assert_eq!(errno(map.stat("/data/to_secret", true)), abi::EPERM);
        assert_eq!(
            errno(map.stat("/data/to_outside/secret", false)),
            abi::EPERM
        );
        assert_eq!(errno(map.stat("/data/to_outside/secret", true)), abi::EPERM);
        assert_eq!(errno(map.stat("/data/dangling", true)), abi::ENOENT);
        assert_eq!(
            map.stat("/data/dangling", false).unwrap().file_type(),
            S_IFLNK
        );
        assert_eq!(errno(map.stat("/data/none", true)), abi::ENOENT);
        assert_eq!(errno(map.stat("/data/real/x", true)), abi::ENOTDIR);
        assert_eq!(errno(map.stat("/../x", true)), abi::EINVAL);

        // Map-only directories and virtual files, each with its own inode number.
        let mut inos = BTreeSet::new();
        for path in ["/", "/etc", "/img", "/img/app"] {
            let status = map.stat(path, false).unwrap();
            assert_eq!(status.dev, 0);
            assert!(inos.insert(status.ino), "{path}");
            if path != "/img/app" {
                assert_eq!((status.mode, status.nlink), (S_IFDIR | 0o755, 2), "{path}");
            }
        }
        assert_eq!(
            map.stat("img/", true).unwrap(),
            map.stat("/img", true).unwrap()
        );
        let virt = map.stat("/img/app", true).unwrap();
        assert_eq!((virt.mode, virt.nlink), (S_IFREG | 0o444, 1));
        assert_eq!((virt.size, virt.blksize), (8, 4096));
        assert_eq!(errno(map.stat("/img/app/x", true)), abi::ENOTDIR);
        assert_eq!(errno(map.stat("/elsewhere", true)), abi::ENOENT);

        // fstat agrees with stat.
        let open = |path, flags| map.open(path, flags, 0).unwrap().fstat().unwrap();
        assert_eq!(open("/data/real", abi::O_RDONLY).ino, real.ino);
        assert_eq!(open("/data/to_real", abi::O_RDONLY).ino, real.ino);
        let dir = open("/data/sub", abi::O_RDONLY | abi::O_DIRECTORY);
        assert_eq!(dir.ino, map.stat("/data/sub", true).unwrap().ino);
        assert_eq!(dir.file_type(), S_IFDIR);
        assert_eq!(
            open("/etc", abi::O_RDONLY | abi::O_DIRECTORY),
            map.stat("/etc", true).unwrap()
        );
        assert_eq!(open("/img/app", abi::O_RDONLY), virt);
    }

    #[test]
    fn created_files_have_their_temp_files_status() {
        let parent = tempfile::tempdir().unwrap();
        let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
        let mut file = map
            .open("/tmp/out", abi::O_WRONLY | abi::O_CREAT, 0o640)
            .unwrap();
        file.write_all(b"abc").unwrap();
        let status = map.stat("/tmp/out", true).unwrap();
        assert_eq!(status.size, 3);
        assert_eq!(status.mode & 0o170000, S_IFREG);
        assert_eq!(file.fstat().unwrap().ino, status.ino);
        // Its parent is now a map-only directory listing it.
        assert_eq!(map.stat("/tmp", true).unwrap().mode, S_IFDIR | 0o755);
        let tmp = map
            .open("/tmp", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        assert_eq!(list(&tmp, 4096), vec![("out".to_owned(), DT_REG)]);
        assert_eq!(errno(map.stat("/tmp/out/x", true)), abi::ENOTDIR);
        assert_eq!(errno(map.mkdir("/tmp/out/x", 0o755)), abi::ENOTDIR);
        assert_eq!(errno(map.mkdir("/tmp/out", 0o755)), abi::EEXIST);
        assert_eq!(errno(map.mkdir("/tmp", 0o755)), abi::EEXIST);
        map.unlink("/tmp/out").unwrap();
        assert_eq!(errno(map.stat("/tmp/out", true)), abi::ENOENT);
        assert_eq!(errno(map.stat("/tmp", true)), abi::ENOENT);
    }

    #[test]
    fn mkdir_inside_a_mapping_creates_host_directories() {
        if crate::isolation::beneath::skip_without_openat2(
            "mkdir_inside_a_mapping_creates_host_directories",
        ) {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let mapped = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), mapped.path().join("to_outside")).unwrap();
        let map = FileMap::new(&[format!("{}:/data", mapped.path().display())], None).unwrap();

        map.mkdir("/data/new", 0o40750).unwrap();
        let host = mapped.path().join("new");
        let metadata = fs::metadata(&host).unwrap();
        assert!(metadata.is_dir());
        // The process umask may clear bits, never add them; the type bits are dropped.
        assert_eq!(metadata.mode() & 0o7777 & !0o750, 0);
        map.mkdir("/data/new/deeper", 0o755).unwrap();
        assert!(mapped.path().join("new/deeper").is_dir());

        assert_eq!(errno(map.mkdir("/data/new", 0o755)), abi::EEXIST);
        assert_eq!(errno(map.mkdir("/data", 0o755)), abi::EEXIST);
        assert_eq!(errno(map.mkdir("/", 0o755)), abi::EEXIST);
        assert_eq!(errno(map.mkdir("/data/to_outside", 0o755)), abi::EEXIST);
        // Through a symlinked parent leading out: refused, nothing created outside.
        assert_eq!(errno(map.mkdir("/data/to_outside/evil", 0o755)), abi::EPERM);
        assert!(!outside.path().join("evil").exists());
        assert_eq!(errno(map.mkdir("/data/missing/x", 0o755)), abi::ENOENT);
        assert_eq!(errno(map.mkdir("/../x", 0o755)), abi::EINVAL);

        // A file created inside the new directory is listed by it.
        drop(
            map.open("/data/new/f", abi::O_WRONLY | abi::O_CREAT, 0o644)
                .unwrap(),
        );
        let dir = map
            .open("/data/new", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        let mut found = names(&list(&dir, 4096))
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        found.sort();
        assert_eq!(found, [".", "..", "deeper", "f"]);
    }

    #[test]
    fn mkdir_of_unmapped_paths_makes_private_directories() {
        let parent = tempfile::tempdir().unwrap();
        let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
        map.mkdir("/work", 0o000).unwrap();
        let temp = map.temp_dir().unwrap();
        assert!(temp.starts_with(parent.path()));
        assert_eq!(errno(map.mkdir("/work", 0o755)), abi::EEXIST);
        assert_eq!(map.stat("/work", true).unwrap().file_type(), S_IFDIR);
        assert_eq!(errno(map.unlink("/work")), abi::EISDIR);

        // Below it, everything works like inside a mapped directory.
        let mut file = map
            .open("/work/a.txt", abi::O_RDWR | abi::O_CREAT, 0o600)
            .unwrap();
        file.write_all(b"hello").unwrap();
        map.mkdir("/work/sub", 0o000).unwrap();
        drop(
            map.open("/work/sub/b", abi::O_WRONLY | abi::O_CREAT, 0o600)
                .unwrap(),
        );
        assert_eq!(map.stat("/work/a.txt", false).unwrap().size, 5);
        let dir = map
            .open("/work", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        let mut found: Vec<(String, u8)> = list(&dir, 4096);
        found.sort();
        assert_eq!(
            found,
            vec![
                (".".to_owned(), DT_DIR),
                ("..".to_owned(), DT_DIR),
                ("a.txt".to_owned(), DT_REG),
                ("sub".to_owned(), DT_DIR),
            ]
        );
        // The root lists it as a directory.
        let root = map.open("/", abi::O_RDONLY | abi::O_DIRECTORY, 0).unwrap();
        assert_eq!(list(&root, 4096), vec![("work".to_owned(), DT_DIR)]);
        // Nested unmapped mkdir works without the parent (like unmapped creates).
        map.mkdir("/x/y", 0o755).unwrap();
        assert_eq!(map.stat("/x", true).unwrap().mode, S_IFDIR | 0o755);
        map.unlink("/work/a.txt").unwrap();
        assert_eq!(errno(map.stat("/work/a.txt", true)), abi::ENOENT);

        // Everything, even mode-0 directories, disappears with the map.
        drop(file);
        drop(map);
        assert!(!temp.exists(), "temp dir {} left behind", temp.display());
    }

    #[test]
    fn mkdir_counts_against_the_creation_cap() {
        let parent = tempfile::tempdir().unwrap();
        let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
        for i in 0..MAX_CREATED_FILES {
            map.mkdir(&format!("/d{i}"), 0o700).unwrap();
        }
        assert_eq!(errno(map.mkdir("/one-more", 0o700)), abi::ENOSPC);
        assert_eq!(
            errno(map.open("/one-more", abi::O_WRONLY | abi::O_CREAT, 0o600)),
            abi::ENOSPC
        );
        // Inside a created directory is not counted.
        drop(
            map.open("/d0/inside", abi::O_WRONLY | abi::O_CREAT, 0o600)
                .unwrap(),
        );
    }

    #[test]
    fn virtual_files_are_read_only_and_can_be_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = FileMap::new(&[format!("{}:/data", dir.path().display())], None).unwrap();
        map.add_virtual_file("/app/image.bin", Arc::from(&b"0123456789"[..]))
            .unwrap();
        map.add_virtual_file("/app/other", Arc::from(&b"x"[..]))
            .unwrap();

        let file = map.open("/app/image.bin", abi::O_RDONLY, 0).unwrap();
        assert_eq!(file.kind(), FileKind::Virtual);
        let mut buf = [0; 4];
        assert_eq!(file.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"0123");
        assert_eq!(file.seek(SeekFrom::End(-2)).unwrap(), 8);
        assert_eq!(file.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(guest_errno(&file.write(b"x").unwrap_err()), abi::EBADF);
        assert_eq!(errno(file.getdents(4096)), abi::ENOTDIR);
        // O_CREAT without O_EXCL opens it read-only.
        drop(map.open("/app/image.bin", abi::O_CREAT, 0o644).unwrap());

        for (flags, expected) in [
            (abi::O_WRONLY, abi::EROFS),
            (abi::O_RDWR, abi::EROFS),
            (abi::O_RDONLY | abi::O_TRUNC, abi::EROFS),
            (abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL, abi::EEXIST),
            (abi::O_RDONLY | abi::O_DIRECTORY, abi::ENOTDIR),
        ] {
            assert_eq!(
                errno(map.open("/app/image.bin", flags, 0o644)),
                expected,
                "{flags:#o}"
            );
        }
        assert_eq!(errno(map.mkdir("/app/image.bin", 0o755)), abi::EROFS);
        assert_eq!(errno(map.mkdir("/app/image.bin/x", 0o755)), abi::ENOTDIR);
        assert_eq!(
            errno(map.open("/app/image.bin/x", abi::O_WRONLY | abi::O_CREAT, 0o644)),
            abi::ENOTDIR
        );

        let app = map
            .open("/app", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        assert_eq!(
            list(&app, 4096),
            vec![
                ("image.bin".to_owned(), DT_REG),
                ("other".to_owned(), DT_REG)
            ]
        );
        map.unlink("/app/image.bin").unwrap();
        assert_eq!(
            errno(map.open("/app/image.bin", abi::O_RDONLY, 0)),
            abi::ENOENT
        );
        assert_eq!(errno(map.stat("/app/image.bin", true)), abi::ENOENT);
        assert_eq!(errno(map.unlink("/app/image.bin")), abi::ENOENT);
        let app = map
            .open("/app", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap();
        assert_eq!(list(&app, 4096), vec![("other".to_owned(), DT_REG)]);
        // A descriptor opened before keeps reading.
        assert_eq!(file.seek(SeekFrom::Start(0)).unwrap(), 0);
        assert_eq!(file.read(&mut buf).unwrap(), 4);
        // After the unlink the path is free: creating it makes a private temp file.
        drop(
            map.open("/app/image.bin", abi::O_WRONLY | abi::O_CREAT, 0o644)
                .unwrap(),
        );
        assert_eq!(
            map.stat("/app/image.bin", true).unwrap().mode & 0o222,
            0o200
        );
    }

    #[test]
    fn virtual_files_may_not_overlap_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"").unwrap();
        let d = dir.path().display();
        let mut map = FileMap::new(
            &specs(&[&format!("{d}:/data"), &format!("{d}/f:/etc/f")]),
            None,
        )
        .unwrap();
        let data: Arc<[u8]> = Arc::from(&b"v"[..]);
        for (path, reason) in [
            ("/", "root"),
            ("/data", "mapped"),
            ("/data/inside", "inside a mapping"),
            ("/etc/f/below", "below a mapped file"),
            ("/etc", "above a mapping"),
            ("/..", "climbs"),
        ] {
            let error = map.add_virtual_file(path, data.clone()).unwrap_err();
            assert!(
                matches!(error, IsolationError::VirtualFileConflict { .. }),
                "{reason}: {error}"
            );
        }
        map.add_virtual_file("/img/a", data.clone()).unwrap();
        for path in ["/img/a", "/img/a/b", "/img"] {
            assert!(map.add_virtual_file(path, data.clone()).is_err(), "{path}");
        }
    }
}
