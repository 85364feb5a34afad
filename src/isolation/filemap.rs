//! The map from guest paths to host files (`--file-mapping HOST:GUEST`), guest-created files and
//! directories, and read-only virtual files.
//!
//! **Mappings.** HOST is canonicalised at start-up. If it does not exist, it is taken to be a file
//! the guest may create: its parent directory must exist and is canonicalised, and the file name is
//! appended. GUEST is cleaned lexically (`.`, `..` and repeated `/` removed, a `..` above `/` is an
//! error) and its leading `/` dropped, so `/a/b`, `a/b` and `a//./b/` are the same key. Text after
//! a second `:` is ignored (as upstream does), with a warning. Two options for the same guest path
//! are an error.
//!
//! **Lookup.** A guest path is cleaned the same way (0.6.9-era kernels send `a/b`, newer ones
//! `/root/a/b`: both work) and the longest prefix that is an entry of the map, compared component
//! by component, wins. Entries are the mappings, the files and directories the guest created under
//! unmapped paths, and the virtual files; every guest path has at most one owner (creating is only
//! possible where nothing owns the path, and virtual files may not overlap anything). For a host
//! entry the remaining components are appended to its host path, so a mapped directory exposes its
//! subtree. Nothing can escape that host path: after lexical cleaning no `..` is left, the parent
//! directory of the final host path is canonicalised and must still lie inside the mapped host path
//! (so a symlinked directory pointing outside is refused), the last component, if it is a symlink
//! and the operation follows links (open, stat), is resolved and checked the same way, and the file
//! is finally opened with `O_NOFOLLOW`. Escapes give `EPERM`. The guest has no hypercall to create
//! symlinks; a *host* process replacing a checked directory by a symlink between the check and the
//! open is outside this threat model.
//!
//! **Map-only directories.** A guest path that no entry owns but below which entries lie (for
//! example `/` or `/etc` when only `/etc/app.conf` is mapped) is a directory that exists only in
//! the map; the guest root always is one unless it is mapped itself. Opening one needs
//! `O_DIRECTORY` (else `EINVAL`, §6.4 of the ABI sheet) and gives a synthetic listing: the next
//! component of every entry below it, sorted by name, `d_ino` 1, `DT_DIR` for directories (mapped
//! host directories, guest-created directories, deeper map-only directories), `DT_REG` for files
//! (the type of a mapped host path is taken from the host, so a mapped device is `DT_CHR`; a
//! mapped host file that does not exist is left out). No `.` and `..` are listed. The listing is taken when the directory is opened.
//! Its status is `S_IFDIR | 0755` with 2 links on device 0, with an inode number derived from its
//! guest path (so that directory-loop checks can tell map-only directories apart); creating it
//! gives `EISDIR`/`EEXIST`, `mkdir` `EEXIST`, `unlink` `EISDIR`.
//!
//! **Unmapped paths.** Opening an unmapped path with `O_CREAT` creates a new file in a private
//! per-VM temp directory (mode 0700, removed with the [`FileMap`]) under a counter-generated name
//! that does not derive from the guest string; [`FileMap::mkdir`] of an unmapped path creates a
//! directory there the same way (its owner always keeps `rwx`, so the temp directory can be
//! removed). The guest path is remembered for the rest of the run, so later opens, stats and
//! unlinks of it find that file; a guest-created directory then acts like a mapping of a temp
//! directory: files and directories below it are ordinary host entries inside it, named as the
//! guest names them. So `/tmp/x` works inside the guest without touching the host's `/tmp`.
//! Unmapped paths without `O_CREAT` are `ENOENT` unless created earlier. At most
//! [`MAX_CREATED_FILES`] paths can be created this way (what lies below a created directory is not
//! counted, like the contents of a mapped directory).
//!
//! **Virtual files** ([`FileMap::add_virtual_file`], at start-up): read-only in-memory files at a
//! guest path that no mapping owns and that neither lies below nor above another entry. Opening
//! one for writing or with `O_TRUNC` is `EROFS`, with `O_CREAT | O_EXCL` `EEXIST`, with
//! `O_DIRECTORY` `ENOTDIR`; `mkdir` of its path is `EROFS`; `unlink` removes it from the map
//! (descriptors open on it keep reading it). Its status is `S_IFREG | 0444`, 1 link, block size
//! 4096, device 0, an inode number derived from its guest path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tempfile::TempDir;

use super::IsolationError;
use super::dir::{DT_DIR, DT_REG, DirEntry, d_type_of};
use super::flags::checked_host_open_flags;
use super::openfile::OpenFile;
use super::status::{FileStatus, FileTime};

/// A cleaned guest path: its components, without `.`, `..` or empty parts. Empty = the guest root.
type GuestKey = Vec<String>;

/// Cleans a guest path lexically: drops empty and `.` components, resolves `..` against the
/// preceding component. Returns `None` if a `..` would climb above the root.
pub fn clean_guest_path(path: &str) -> Option<Vec<String>> {
    let mut components: Vec<String> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop()?;
            }
            name => components.push(name.to_owned()),
        }
    }
    Some(components)
}

fn display_key(key: &[String]) -> String {
    key.join("/")
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
    /// A file the guest created under an unmapped path: its host file in the temp directory.
    CreatedFile(PathBuf),
    /// A directory the guest created under an unmapped path: its host directory in the temp
    /// directory.
    CreatedDir(PathBuf),
    /// A read-only in-memory file.
    Virtual(VirtualFile),
}

#[derive(Debug, Default)]
struct State {
    /// Guest path → guest-created file or directory, or virtual file.
    entries: BTreeMap<GuestKey, Entry>,
    /// Number of `CreatedFile` and `CreatedDir` entries.
    created: usize,
    /// Number for the next host name in the temp directory.
    next: u64,
    /// The private temp directory, created when the guest first creates something (most guests
    /// never do, and then nothing is created on the host at all).
    dir: Option<TempDir>,
}

/// How many files and directories a guest may create outside its mappings (in the private temp
/// directory). Each costs an inode on the host and a map entry of at most `MAX_PATH_LEN` bytes in
/// uhyve.
pub const MAX_CREATED_FILES: usize = 16 * 1024;

/// Where a guest path leads.
enum Target<'k> {
    /// Below the host path `root` (a mapping or a guest-created file or directory), `rest` being
    /// the components after the owning entry's key.
    Host {
        root: PathBuf,
        rest: &'k [String],
        origin: Origin,
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
    /// Cleaned guest path → canonical host path.
    mappings: BTreeMap<GuestKey, PathBuf>,
    /// Where the private temp directory is created.
    temp_parent: PathBuf,
    /// When the map was made: the times reported for map-only directories.
    started: FileTime,
    state: Mutex<State>,
}

impl Drop for FileMap {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(temp) = state.dir.take() {
            let path = temp.path().to_owned();
            if let Err(error) = temp.close() {
                log::warn!(
                    "cannot remove the guest's temp directory {}: {error}",
                    path.display()
                );
            }
        }
    }
}

impl FileMap {
    /// Builds the map from `--file-mapping HOST:GUEST` strings and creates the private temp
    /// directory inside `tempdir` (default: the host's temp directory, `$TMPDIR` or `/tmp`).
    pub fn new(mappings: &[String], tempdir: Option<PathBuf>) -> Result<FileMap, IsolationError> {
        let mut map = BTreeMap::new();
        for spec in mappings {
            let (host, guest) = parse_mapping(spec)?;
            if map.contains_key(&guest) {
                return Err(IsolationError::DuplicateMapping {
                    spec: spec.clone(),
                    guest: display_key(&guest),
                });
            }
            log::debug!(
                "file mapping: guest /{} -> {}",
                display_key(&guest),
                host.display()
            );
            map.insert(guest, host);
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
        Ok(FileMap {
            mappings: map,
            temp_parent: parent,
            started: FileTime::now(),
            state: Mutex::new(State::default()),
        })
    }

    /// The private temp directory holding the files and directories the guest created under
    /// unmapped paths, once the guest created one.
    pub fn temp_dir(&self) -> Option<PathBuf> {
        self.lock_state()
            .dir
            .as_ref()
            .map(|dir| dir.path().to_owned())
    }

    /// Creates the private temp directory now (if it does not exist yet) and returns its path:
    /// the process confinement must know it before restricting itself.
    pub fn create_temp_dir(&self) -> Result<PathBuf, IsolationError> {
        self.temp_dir_in(&mut self.lock_state())
    }

    /// The mapped host paths (for sandbox rules).
    pub fn host_paths(&self) -> impl Iterator<Item = &Path> {
        self.mappings.values().map(PathBuf::as_path)
    }

    /// The guest directory of each mapping: the mapped path for a host directory, its parent for a
    /// host file (cleaned keys; the empty key is the guest root).
    fn mapping_directories(&self) -> BTreeSet<&[String]> {
        self.mappings
            .iter()
            .map(|(guest, host)| {
                if host.is_dir() {
                    guest.as_slice()
                } else {
                    guest.split_last().map_or(&[][..], |(_, parent)| parent)
                }
            })
            .collect()
    }

    /// Guest paths of the virtual files (cleaned keys).
    fn virtual_file_keys(&self) -> Vec<GuestKey> {
        self.lock_state()
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Virtual(_)))
            .map(|(key, _)| key.clone())
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
        let mut directories: BTreeSet<GuestKey> = self
            .mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .map(<[String]>::to_vec)
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
            .map(|dir| format!("/{}", display_key(dir)))
            .collect()
    }

    /// Guest paths of mappings no mount point can reach: files mapped directly under `/`.
    pub fn unmountable_mappings(&self) -> Vec<String> {
        self.mappings
            .iter()
            .filter(|(guest, host)| guest.len() <= 1 && !(host.is_dir() && guest.len() == 1))
            .map(|(guest, _)| format!("/{}", display_key(guest)))
            .collect()
    }

    /// Guest paths of virtual files no mount point can reach: those directly under `/` (and
    /// directly in `/tmp` or `/proc`, which belong to the kernel's own file system).
    pub fn unmountable_virtual_files(&self) -> Vec<String> {
        self.virtual_file_keys()
            .into_iter()
            .filter(|key| virtual_file_mount(key).is_none())
            .map(|key| format!("/{}", display_key(&key)))
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
        let mut directories: BTreeSet<&[String]> = self
            .mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
        directories.extend(
            virtual_files
                .iter()
                .filter_map(|key| key.split_last().map(|(_, parent)| parent))
                .filter(|dir| !dir.is_empty()),
        );
        let directories: Vec<&[String]> = directories.into_iter().collect();
        let first = *directories.first()?;
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
            .chain(virtual_files.iter())
            .filter(|guest| !guest.starts_with(mount))
            .map(|guest| format!("/{}", display_key(guest)))
            .collect();
        Some(LegacyMount {
            point: format!("/{}", display_key(mount)),
            unreachable,
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Updated by single map operations only: consistent even after a panic elsewhere.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where `key` leads: the longest prefix of `key` that is an entry wins.
    fn resolve<'k>(&self, state: &State, key: &'k [String]) -> Target<'k> {
        for n in (0..=key.len()).rev() {
            let Some((prefix, rest)) = key.split_at_checked(n) else {
                continue;
            };
            if let Some(host) = self.mappings.get(prefix) {
                return Target::Host {
                    root: host.clone(),
                    rest,
                    origin: Origin::Mapping,
                };
            }
            match state.entries.get(prefix) {
                Some(Entry::CreatedFile(host)) => {
                    return Target::Host {
                        root: host.clone(),
                        rest,
                        origin: Origin::CreatedFile,
                    };
                }
                Some(Entry::CreatedDir(host)) => {
                    return Target::Host {
                        root: host.clone(),
                        rest,
                        origin: Origin::CreatedDir,
                    };
                }
                Some(Entry::Virtual(file)) if rest.is_empty() => {
                    return Target::Virtual(file.clone());
                }
                Some(Entry::Virtual(_)) => return Target::BelowVirtual,
                None => {}
            }
        }
        if key.is_empty() || self.has_entries_below(state, key) {
            Target::MapDirectory
        } else {
            Target::Unmapped
        }
    }

    /// Whether some entry lies strictly below `key`.
    fn has_entries_below(&self, state: &State, key: &[String]) -> bool {
        let below =
            |candidate: &GuestKey| candidate.len() > key.len() && candidate.starts_with(key);
        let range = (Bound::Included(key), Bound::Unbounded);
        self.mappings
            .range::<[String], _>(range)
            .take_while(|(candidate, _)| candidate.starts_with(key))
            .any(|(candidate, _)| below(candidate))
            || state
                .entries
                .range::<[String], _>(range)
                .take_while(|(candidate, _)| candidate.starts_with(key))
                .any(|(candidate, _)| below(candidate))
    }

    /// The synthetic listing of the map-only directory `key`: the next component of every entry
    /// below it, sorted (see the module documentation).
    fn listing(&self, state: &State, key: &[String]) -> Vec<DirEntry> {
        let depth = key.len();
        let range = (Bound::Included(key), Bound::Unbounded);
        let mut children: BTreeMap<String, u8> = BTreeMap::new();
        let mut add = |candidate: &GuestKey, exact_kind: Option<u8>| {
            if !candidate.starts_with(key) {
                return;
            }
            let Some(name) = candidate.get(depth) else {
                return;
            };
            if candidate.len() > depth + 1 {
                children.insert(name.clone(), DT_DIR);
            } else if let Some(kind) = exact_kind {
                children.entry(name.clone()).or_insert(kind);
            }
        };
        for (candidate, host) in self
            .mappings
            .range::<[String], _>(range)
            .take_while(|(candidate, _)| candidate.starts_with(key))
        {
            let kind = if candidate.len() == depth + 1 {
                fs::metadata(host)
                    .ok()
                    .map(|metadata| d_type_of(metadata.file_type()))
            } else {
                None
            };
            add(candidate, kind);
        }
        for (candidate, entry) in state
            .entries
            .range::<[String], _>(range)
            .take_while(|(candidate, _)| candidate.starts_with(key))
        {
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

    /// The private temp directory, created on first use.
    fn temp_dir_in(&self, state: &mut State) -> Result<PathBuf, IsolationError> {
        if let Some(dir) = &state.dir {
            return Ok(dir.path().to_owned());
        }
        let dir = tempfile::Builder::new()
            .prefix("uhyve-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&self.temp_parent)
            .map_err(|source| IsolationError::TempDir {
                parent: self.temp_parent.clone(),
                source,
            })?;
        let path = dir.path().to_owned();
        state.dir = Some(dir);
        Ok(path)
    }

    /// A new host name in the temp directory for a guest-created item (`kind` is `file` or
    /// `dir`), if the cap allows one more.
    fn new_temp_path(&self, state: &mut State, kind: &str) -> Result<PathBuf, IsolationError> {
        if state.created >= MAX_CREATED_FILES {
            return Err(IsolationError::TooManyCreatedFiles);
        }
        let dir = self.temp_dir_in(state)?;
        let number = state.next;
        state.next = number.wrapping_add(1);
        Ok(dir.join(format!("{kind}-{number}")))
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
        let host_flags = checked_host_open_flags(flags)?;
        let mode = mode.cast_unsigned() & 0o777;
        let key = guest_key(guest_path)?;
        let mut state = self.lock_state();
        let wants_write = host_flags & libc::O_ACCMODE != libc::O_RDONLY;
        let create = host_flags & libc::O_CREAT != 0;
        let exclusive = create && host_flags & libc::O_EXCL != 0;
        let directory = host_flags & libc::O_DIRECTORY != 0;
        match self.resolve(&state, &key) {
            Target::Host { root, rest, .. } => {
                drop(state);
                let host = resolve_inside(&root, rest, guest_path, true)?;
                open_host(guest_path, &host, host_flags, mode)
            }
            Target::Virtual(file) => {
                if exclusive {
                    Err(IsolationError::Exists(guest_path.to_owned()))
                } else if directory {
                    Err(IsolationError::NotADirectory(guest_path.to_owned()))
                } else if wants_write || host_flags & libc::O_TRUNC != 0 {
                    Err(IsolationError::ReadOnly(guest_path.to_owned()))
                } else {
                    Ok(OpenFile::virtual_file(guest_path, file.data, file.status))
                }
            }
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
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
                    let entries = self.listing(&state, &key);
                    let status = FileStatus::map_directory(synthetic_ino(&key), self.started);
                    Ok(OpenFile::map_directory(guest_path, entries, status))
                }
            }
            Target::Unmapped => {
                if !create {
                    return Err(IsolationError::NotFound(guest_path.to_owned()));
                }
                let host = self.new_temp_path(&mut state, "file")?;
                let file = open_host(
                    guest_path,
                    &host,
                    host_flags | libc::O_CREAT | libc::O_EXCL,
                    mode,
                )?;
                log::debug!("guest file {guest_path:?} created as {}", host.display());
                state.entries.insert(key, Entry::CreatedFile(host));
                state.created += 1;
                Ok(file)
            }
        }
    }

    /// Removes `guest_path`: a file inside a mapping (a symlink there is removed itself, not its
    /// target), a file the guest created earlier, or a virtual file (removed from the map).
    /// Map-only and guest-created directories are `EISDIR`, unmapped paths `ENOENT`.
    pub fn unlink(&self, guest_path: &str) -> Result<(), IsolationError> {
        let key = guest_key(guest_path)?;
        let mut state = self.lock_state();
        let (root, rest) = match self.resolve(&state, &key) {
            Target::Host {
                origin: Origin::CreatedFile,
                rest: [],
                ..
            } => {
                let Some(Entry::CreatedFile(host)) = state.entries.remove(&key) else {
                    return Err(IsolationError::NotFound(guest_path.to_owned()));
                };
                state.created = state.created.saturating_sub(1);
                drop(state);
                return match fs::remove_file(&host) {
                    Err(source) if source.kind() != io::ErrorKind::NotFound => {
                        Err(IsolationError::Io {
                            operation: "unlink",
                            path: host,
                            source,
                        })
                    }
                    _ => Ok(()),
                };
            }
            Target::Host {
                origin: Origin::CreatedDir,
                rest: [],
                ..
            }
            | Target::MapDirectory => {
                return Err(IsolationError::IsDirectory(guest_path.to_owned()));
            }
            // A mapped directory itself: decided here, not by the host (which, under Landlock,
            // would refuse to touch the mapping's parent with EACCES first).
            Target::Host { root, rest: [], .. } if root.is_dir() => {
                return Err(IsolationError::IsDirectory(guest_path.to_owned()));
            }
            Target::Host { root, rest, .. } => (root, rest),
            Target::Virtual(_) => {
                state.entries.remove(&key);
                return Ok(());
            }
            Target::BelowVirtual => {
                return Err(IsolationError::NotADirectory(guest_path.to_owned()));
            }
            Target::Unmapped => return Err(IsolationError::NotFound(guest_path.to_owned())),
        };
        drop(state);
        // The last component is not followed: a symlink inside the mapping is removed itself.
        let host = resolve_inside(&root, rest, guest_path, false)?;
        fs::remove_file(&host).map_err(|source| IsolationError::Io {
            operation: "unlink",
            path: host,
            source,
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
        let key = guest_key(guest_path)?;
        let state = self.lock_state();
        match self.resolve(&state, &key) {
            Target::Host { root, rest, .. } => {
                drop(state);
                let host = resolve_inside(&root, rest, guest_path, follow_symlinks)?;
                let metadata = if follow_symlinks {
                    fs::metadata(&host)
                } else {
                    fs::symlink_metadata(&host)
                };
                metadata
                    .map(|metadata| FileStatus::from_metadata(&metadata))
                    .map_err(|source| IsolationError::Io {
                        operation: "stat",
                        path: host,
                        source,
                    })
            }
            Target::Virtual(file) => Ok(file.status),
            Target::MapDirectory => {
                Ok(FileStatus::map_directory(synthetic_ino(&key), self.started))
            }
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::Unmapped => Err(IsolationError::NotFound(guest_path.to_owned())),
        }
    }

    /// Creates the directory `guest_path` with the permission bits `mode & 0o777`: inside a
    /// mapping on the host (the parent must resolve inside the mapping), at an unmapped path in
    /// the private temp directory (registered under that guest path, counted against
    /// [`MAX_CREATED_FILES`]). Existing paths (the guest root and map-only directories included)
    /// are `EEXIST`, a virtual file `EROFS`.
    pub fn mkdir(&self, guest_path: &str, mode: u32) -> Result<(), IsolationError> {
        let key = guest_key(guest_path)?;
        let mode = mode & 0o777;
        let mut state = self.lock_state();
        match self.resolve(&state, &key) {
            Target::Host { root, rest, origin } => {
                drop(state);
                let host = resolve_inside(&root, rest, guest_path, false)?;
                // Inside the temp directory the owner keeps rwx, so it can be removed at exit.
                let mode = if origin == Origin::Mapping {
                    mode
                } else {
                    mode | 0o700
                };
                create_host_dir(&host, mode)
            }
            Target::Virtual(_) => Err(IsolationError::ReadOnly(guest_path.to_owned())),
            Target::BelowVirtual => Err(IsolationError::NotADirectory(guest_path.to_owned())),
            Target::MapDirectory => Err(IsolationError::Exists(guest_path.to_owned())),
            Target::Unmapped => {
                let host = self.new_temp_path(&mut state, "dir")?;
                create_host_dir(&host, mode | 0o700)?;
                log::debug!(
                    "guest directory {guest_path:?} created as {}",
                    host.display()
                );
                state.entries.insert(key, Entry::CreatedDir(host));
                state.created += 1;
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
        let key =
            clean_guest_path(guest_path).ok_or_else(|| conflict("the path climbs above /"))?;
        if key.is_empty() {
            return Err(conflict("the guest root is a directory"));
        }
        let mut state = self.lock_state();
        match self.resolve(&state, &key) {
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
        let status = FileStatus::virtual_file(data.len(), synthetic_ino(&key), FileTime::now());
        log::debug!("virtual file /{} ({} bytes)", display_key(&key), data.len());
        state
            .entries
            .insert(key, Entry::Virtual(VirtualFile { data, status }));
        Ok(())
    }
}

fn guest_key(guest_path: &str) -> Result<GuestKey, IsolationError> {
    if guest_path.is_empty() {
        return Err(IsolationError::NotFound(String::new()));
    }
    clean_guest_path(guest_path).ok_or_else(|| IsolationError::InvalidPath(guest_path.to_owned()))
}

/// The inode number reported by `stat` for a map-only directory or virtual file: a hash of its
/// guest path (stable for the run, never 0 or 1), so that tools detecting directory loops by
/// (device, inode) tell these entries apart. Their Getdents records say `d_ino` 1 (§6.4).
fn synthetic_ino(key: &[String]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish().max(2)
}

/// `mkdir(2)` of a host path.
fn create_host_dir(host: &Path, mode: u32) -> Result<(), IsolationError> {
    DirBuilder::new()
        .mode(mode)
        .create(host)
        .map_err(|source| IsolationError::Io {
            operation: "mkdir",
            path: host.to_path_buf(),
            source,
        })
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

/// Splits `HOST:GUEST` and resolves both sides.
fn parse_mapping(spec: &str) -> Result<(PathBuf, GuestKey), IsolationError> {
    let malformed = |reason| IsolationError::MalformedMapping {
        spec: spec.to_owned(),
        reason,
    };
    let mut parts = spec.split(':');
    let host = parts.next().unwrap_or_default();
    let guest = parts
        .next()
        .ok_or_else(|| malformed("expected HOST:GUEST"))?;
    if parts.next().is_some() {
        log::warn!("--file-mapping {spec:?}: ignoring everything after the second ':'");
    }
    if host.is_empty() {
        return Err(malformed("the host path is empty"));
    }
    if guest.is_empty() {
        return Err(malformed("the guest path is empty"));
    }
    let guest =
        clean_guest_path(guest).ok_or_else(|| malformed("the guest path climbs above /"))?;
    Ok((canonical_host_path(spec, Path::new(host))?, guest))
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

/// The host path for the components `rest` below the mapped host path `root`, guaranteed (at the
/// time of the check) not to leave `root`. With `follow_last`, a symlink as last component is
/// resolved and checked too; otherwise the link itself is returned.
fn resolve_inside(
    root: &Path,
    rest: &[String],
    guest_path: &str,
    follow_last: bool,
) -> Result<PathBuf, IsolationError> {
    let Some((last, dirs)) = rest.split_last() else {
        return Ok(root.to_path_buf());
    };
    let mut parent = root.to_path_buf();
    parent.extend(dirs);
    let parent = fs::canonicalize(&parent).map_err(|source| IsolationError::Io {
        operation: "resolve",
        path: parent,
        source,
    })?;
    let escapes = || IsolationError::Escapes(guest_path.to_owned());
    if !parent.starts_with(root) {
        return Err(escapes());
    }
    let candidate = parent.join(last);
    if follow_last
        && fs::symlink_metadata(&candidate).is_ok_and(|meta| meta.file_type().is_symlink())
    {
        let target = fs::canonicalize(&candidate).map_err(|source| IsolationError::Io {
            operation: "resolve",
            path: candidate,
            source,
        })?;
        if !target.starts_with(root) {
            return Err(escapes());
        }
        return Ok(target);
    }
    Ok(candidate)
}

/// Opens a host path with already translated host flags, never following a final symlink; a
/// directory becomes a directory stream.
fn open_host(
    guest_path: &str,
    path: &Path,
    host_flags: i32,
    mode: u32,
) -> Result<OpenFile, IsolationError> {
    let mut options = OpenOptions::new();
    match host_flags & libc::O_ACCMODE {
        libc::O_WRONLY => options.write(true),
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    options
        .custom_flags((host_flags & !libc::O_ACCMODE) | libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
        .and_then(|file: File| OpenFile::host(guest_path, file))
        .map_err(|source| IsolationError::Io {
            operation: "open",
            path: path.to_path_buf(),
            source,
        })
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
        let extra = format!("{}:x:ignored", dir.path().display());
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
        assert_eq!(
            map.temp_dir(),
            None,
            "nothing is created on the host before it is needed"
        );
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);

        assert!(matches!(
            map.open("/scratch/x", abi::O_RDONLY, 0),
            Err(IsolationError::NotFound(_))
        ));
        let mut file = map
            .open("/scratch/x", abi::O_WRONLY | abi::O_CREAT, 0o644)
            .unwrap();
        let temp = map.temp_dir().unwrap();
        assert!(temp.starts_with(parent.path()));
        let mode = fs::metadata(&temp).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        file.write_all(b"data").unwrap();
        let names: Vec<_> = fs::read_dir(&temp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
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
    use std::os::unix::fs::MetadataExt;

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
