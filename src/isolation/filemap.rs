//! The map from guest paths to host files (`--file-mapping HOST:GUEST`).
//!
//! **Mappings.** HOST is canonicalised at start-up. If it does not exist, it is taken to be a file
//! the guest may create: its parent directory must exist and is canonicalised, and the file name is
//! appended. GUEST is cleaned lexically (`.`, `..` and repeated `/` removed, a `..` above `/` is an
//! error) and its leading `/` dropped, so `/a/b`, `a/b` and `a//./b/` are the same key. Text after
//! a second `:` is ignored (as upstream does), with a warning. Two options for the same guest path
//! are an error.
//!
//! **Lookup.** A guest path is cleaned the same way (0.6.9-era kernels send `a/b`, newer ones
//! `/root/a/b`: both work) and the longest mapped prefix, compared component by component, wins.
//! The remaining components are appended to the mapped host path, so a mapped directory exposes its
//! subtree. Nothing can escape that host path: after lexical cleaning no `..` is left, the parent
//! directory of the final host path is canonicalised and must still lie inside the mapped host path
//! (so a symlinked directory pointing outside is refused), the last component, if it is a symlink,
//! is resolved and checked the same way, and the file is finally opened with `O_NOFOLLOW`. Escapes
//! give `EPERM`. The guest has no hypercall to create symlinks; a *host* process replacing a
//! checked directory by a symlink between the check and the open is outside this threat model.
//!
//! **Unmapped paths.** Opening an unmapped path with `O_CREAT` creates a new file in a private
//! per-VM temp directory (mode 0700, removed with the [`FileMap`]) under a counter-generated name
//! that does not derive from the guest string; the guest path is remembered for the rest of the run,
//! so later opens and unlinks of it find that file. So `/tmp/x` works inside the guest without
//! touching the host's `/tmp`. Unmapped paths without `O_CREAT` are `ENOENT` unless created earlier.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tempfile::TempDir;

use super::IsolationError;
use super::flags::checked_host_open_flags;

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

#[derive(Debug, Default)]
struct CreatedFiles {
    /// Guest path → host file in the temp directory.
    paths: HashMap<GuestKey, PathBuf>,
    /// Number for the next file name.
    next: u64,
    /// The private temp directory, created when the guest first creates a file (most guests
    /// never do, and then nothing is created on the host at all).
    dir: Option<TempDir>,
}

/// How many files a guest may create outside its mappings (in the private temp directory). Each
/// costs an inode on the host and a map entry of at most `MAX_PATH_LEN` bytes in uhyve.
pub const MAX_CREATED_FILES: usize = 16 * 1024;

/// The guest's view of host files; `Send + Sync`.
#[derive(Debug)]
pub struct FileMap {
    /// Cleaned guest path → canonical host path.
    mappings: BTreeMap<GuestKey, PathBuf>,
    /// Where the private temp directory is created.
    temp_parent: PathBuf,
    created: Mutex<CreatedFiles>,
}

impl Drop for FileMap {
    fn drop(&mut self) {
        let created = self
            .created
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(temp) = created.dir.take() {
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
            created: Mutex::new(CreatedFiles::default()),
        })
    }

    /// The private temp directory holding the files the guest created under unmapped paths, once
    /// the guest created one.
    pub fn temp_dir(&self) -> Option<PathBuf> {
        self.lock_created()
            .dir
            .as_ref()
            .map(|dir| dir.path().to_owned())
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

    /// The guest directories kernels ≥ 0.12 mount the host file system at (`/uhyve,mounts` in the
    /// device tree; absolute, sorted, unique): every guest path that maps a host directory, and
    /// the parent of every guest path that maps a file. The guest root is never one — a kernel
    /// cannot mount over its root — so a file mapped directly under `/` is listed by
    /// [`FileMap::unmountable_mappings`] instead.
    pub fn mount_points(&self) -> Vec<String> {
        self.mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
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

    /// The one directory kernels 0.10 and 0.11 mount the host file system at (they read a single
    /// mount point, `-mount DIR` on the kernel command line, default `/root`), and the mapped
    /// guest paths that lie outside it. `None` when nothing is mapped.
    ///
    /// Those kernels can only mount at a directory whose parent already exists in their own file
    /// system and which does not exist yet: `/NAME`, or `/tmp/NAME` and `/proc/NAME` (the two
    /// directories they create at boot). The choice is the shallowest such directory that
    /// contains every mapping, or, when there is none, the one that contains the first mapping
    /// that has one. `None` when nothing is mapped or no mapping can be reached at all.
    pub fn legacy_mount_point(&self) -> Option<LegacyMount> {
        let directories: Vec<&[String]> = self
            .mapping_directories()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
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
            .filter(|guest| !guest.starts_with(mount))
            .map(|guest| format!("/{}", display_key(guest)))
            .collect();
        Some(LegacyMount {
            point: format!("/{}", display_key(mount)),
            unreachable,
        })
    }

    fn lock_created(&self) -> MutexGuard<'_, CreatedFiles> {
        // Updated by single map operations only: consistent even after a panic elsewhere.
        self.created
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The longest mapped prefix of `key`: its host path and the remaining components.
    fn lookup<'a>(&'a self, key: &'a [String]) -> Option<(&'a Path, &'a [String])> {
        (0..=key.len()).rev().find_map(|n| {
            let (prefix, rest) = key.split_at_checked(n)?;
            self.mappings.get(prefix).map(|host| (host.as_path(), rest))
        })
    }

    /// Opens `guest_path` with the guest's open `flags` (Hermit numbering) and creation `mode`
    /// (only the permission bits 0o777 are used).
    pub fn open(&self, guest_path: &str, flags: i32, mode: i32) -> Result<File, IsolationError> {
        let host_flags = checked_host_open_flags(flags)?;
        let mode = mode.cast_unsigned() & 0o777;
        let key = guest_key(guest_path)?;
        if let Some((root, rest)) = self.lookup(&key) {
            let host = resolve_inside(root, rest, guest_path, true)?;
            return open_host(&host, host_flags, mode);
        }
        let mut created = self.lock_created();
        if let Some(host) = created.paths.get(&key) {
            return open_host(host, host_flags, mode);
        }
        if host_flags & libc::O_CREAT == 0 {
            return Err(IsolationError::NotFound(guest_path.to_owned()));
        }
        if key.is_empty() {
            return Err(IsolationError::IsDirectory(guest_path.to_owned()));
        }
        if created.paths.len() >= MAX_CREATED_FILES {
            return Err(IsolationError::TooManyCreatedFiles);
        }
        let number = created.next;
        created.next = number.wrapping_add(1);
        let dir = match &created.dir {
            Some(dir) => dir.path().to_owned(),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("uhyve-")
                    .permissions(fs::Permissions::from_mode(0o700))
                    .tempdir_in(&self.temp_parent)
                    .map_err(|source| IsolationError::TempDir {
                        parent: self.temp_parent.clone(),
                        source,
                    })?;
                let path = dir.path().to_owned();
                created.dir = Some(dir);
                path
            }
        };
        let host = dir.join(format!("file-{number}"));
        let file = open_host(&host, host_flags | libc::O_CREAT | libc::O_EXCL, mode)?;
        log::debug!("guest file {guest_path:?} created as {}", host.display());
        created.paths.insert(key, host);
        Ok(file)
    }

    /// Removes `guest_path`: a mapped host file, or a file the guest created earlier.
    pub fn unlink(&self, guest_path: &str) -> Result<(), IsolationError> {
        let key = guest_key(guest_path)?;
        if let Some((root, rest)) = self.lookup(&key) {
            // The last component is not followed: a symlink inside the mapping is removed itself.
            let host = resolve_inside(root, rest, guest_path, false)?;
            return fs::remove_file(&host).map_err(|source| IsolationError::Io {
                operation: "unlink",
                path: host,
                source,
            });
        }
        let host = self
            .lock_created()
            .paths
            .remove(&key)
            .ok_or_else(|| IsolationError::NotFound(guest_path.to_owned()))?;
        match fs::remove_file(&host) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => Err(IsolationError::Io {
                operation: "unlink",
                path: host,
                source,
            }),
            _ => Ok(()),
        }
    }
}

fn guest_key(guest_path: &str) -> Result<GuestKey, IsolationError> {
    if guest_path.is_empty() {
        return Err(IsolationError::NotFound(String::new()));
    }
    clean_guest_path(guest_path).ok_or_else(|| IsolationError::InvalidPath(guest_path.to_owned()))
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

/// The mount point chosen for a 0.10–0.11 kernel ([`FileMap::legacy_mount_point`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMount {
    /// Absolute guest directory, e.g. `/root`.
    pub point: String,
    /// Mapped guest paths outside it (unreachable for such a kernel).
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

/// Opens a host path with already translated host flags, never following a final symlink.
fn open_host(path: &Path, host_flags: i32, mode: u32) -> Result<File, IsolationError> {
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
}
