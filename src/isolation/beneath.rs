//! Race-free resolution of a relative path *below* a directory descriptor.
//!
//! Every host file the guest reaches is opened relative to a directory descriptor held since
//! start-up (a mapping's root, the parent of a single-file mapping, or the private temp
//! directory), never by a host path string. Whatever a host process does meanwhile — replacing a
//! directory by a symlink, renaming trees — the result lies below that descriptor:
//!
//! - **Linux**: `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`. The kernel resolves
//!   every component (symlinks included) and fails with `EXDEV` as soon as the walk would leave
//!   the directory, so relative symlinks that stay inside work, absolute symlinks and symlinks
//!   leaving the tree fail, and `/proc` magic links fail with `ELOOP`. A concurrent rename can make
//!   the kernel answer `EAGAIN`; the call is retried a few times.
//! - **Other Unix hosts** (macOS), and Linux without `openat2` (kernels before 5.6, `qemu-user`;
//!   [`probe`] finds out once and says so): a portable walk, one `openat(O_NOFOLLOW |
//!   O_DIRECTORY)` per directory component and `O_NOFOLLOW` on the last one. Each step is
//!   relative to the descriptor of the previous one, so it is just as race-free, but *every*
//!   symlink is refused (`ELOOP`).
//!
//! Descriptors that only name a file (for `*at` calls or `fstat`) are opened with
//! [`LOOKUP_ONLY`]: `O_PATH` on Linux (no read permission needed, works on symlinks with
//! `O_NOFOLLOW`), plain `O_RDONLY` elsewhere.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags};

/// Open flags for a descriptor that only names a file or directory.
#[cfg(target_os = "linux")]
pub const LOOKUP_ONLY: OFlags = OFlags::PATH;
/// Open flags for a descriptor that only names a file or directory.
#[cfg(not(target_os = "linux"))]
pub const LOOKUP_ONLY: OFlags = OFlags::RDONLY;

/// How often `openat2` is retried when the kernel reports a concurrent rename (`EAGAIN`).
#[cfg(target_os = "linux")]
const RENAME_RACE_RETRIES: usize = 16;

/// Set once `openat2` answered `ENOSYS`: from then on every lookup uses the portable walk.
#[cfg(target_os = "linux")]
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens `path` (relative, `/`-separated, without `..`; `.` for `root` itself) below `root` with
/// `flags` (`O_CLOEXEC` is added) and, when `flags` contain `O_CREAT`, the permission bits `mode`.
/// Leaving `root` fails with `EXDEV` on Linux; see the module documentation.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    // openat2 rejects a mode without O_CREAT (EINVAL); openat ignores it.
    let mode = if flags.contains(OFlags::CREATE) {
        mode
    } else {
        Mode::empty()
    };
    #[cfg(target_os = "linux")]
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        match open_resolving_beneath(root, path, flags | OFlags::CLOEXEC, mode) {
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
                OPENAT2_MISSING.store(true, Ordering::Relaxed);
            }
            result => return result,
        }
    }
    open_walking(root, path, flags | OFlags::CLOEXEC, mode)
}

/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, retried on `EAGAIN`.
#[cfg(target_os = "linux")]
fn open_resolving_beneath(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut attempt = 0;
    loop {
        match rustix::fs::openat2(root, path, flags, mode, resolve) {
            Err(rustix::io::Errno::AGAIN) if attempt < RENAME_RACE_RETRIES => attempt += 1,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// The portable walk: every directory component with `O_NOFOLLOW | O_DIRECTORY`, the last one
/// with `O_NOFOLLOW` (and `O_DIRECTORY` after a trailing `/`). `..` is refused with `EXDEV`.
pub fn open_walking(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let components: Vec<&OsStr> = path
        .as_bytes()
        .split(|byte| *byte == b'/')
        .filter(|component| !component.is_empty() && *component != b".")
        .map(OsStr::from_bytes)
        .collect();
    if components.contains(&OsStr::new("..")) {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let Some((last, directories)) = components.split_last() else {
        return rustix::fs::openat(root, ".", flags | OFlags::CLOEXEC, mode).map_err(Into::into);
    };
    let step = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current: Option<OwnedFd> = None;
    for directory in directories {
        let base = current.as_ref().map_or(root, AsFd::as_fd);
        current = Some(rustix::fs::openat(base, *directory, step, Mode::empty())?);
    }
    let mut last_flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if path.as_bytes().ends_with(b"/") {
        last_flags |= OFlags::DIRECTORY;
    }
    let base = current.as_ref().map_or(root, AsFd::as_fd);
    let opened = rustix::fs::openat(base, *last, last_flags, mode)?;
    // With O_PATH, O_NOFOLLOW opens a symlink itself; a caller that wanted it followed gets
    // ELOOP, like every other symlink on this walk.
    #[cfg(target_os = "linux")]
    if flags.contains(OFlags::PATH)
        && !flags.contains(OFlags::NOFOLLOW)
        && rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&opened)?.st_mode)
            == rustix::fs::FileType::Symlink
    {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(opened)
}

/// Checks at start-up that `directory` can be resolved below; on Linux, finds out whether the
/// kernel has `openat2` (5.6 or later) and, if not, says once that symlinks inside mappings are
/// refused (the portable walk).
pub fn probe(directory: BorrowedFd<'_>) -> io::Result<()> {
    open_beneath(
        directory,
        OsStr::new("."),
        LOOKUP_ONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .map(drop)?;
    #[cfg(target_os = "linux")]
    if OPENAT2_MISSING.load(Ordering::Relaxed) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            log::warn!(
                "this kernel has no openat2 (Linux before 5.6): guest paths are resolved one \
                 component at a time, and symlinks inside mappings are refused"
            );
        }
    }
    Ok(())
}

/// For tests that need `openat2` (symlinks followed inside a tree): `true`, with a visible
/// message, where the kernel lacks it (e.g. the aarch64 test build under `qemu-user`), which
/// makes the portable walk refuse every symlink.
#[cfg(test)]
pub(crate) fn skip_without_openat2(test: &str) -> bool {
    let dir = tempfile::tempdir().expect("a temp directory");
    let root = rustix::fs::open(dir.path(), LOOKUP_ONLY | OFlags::DIRECTORY, Mode::empty())
        .expect("open the temp directory");
    #[cfg(target_os = "linux")]
    let missing = matches!(
        rustix::fs::openat2(
            &root,
            ".",
            LOOKUP_ONLY,
            Mode::empty(),
            rustix::fs::ResolveFlags::BENEATH
        ),
        Err(rustix::io::Errno::NOSYS)
    );
    #[cfg(not(target_os = "linux"))]
    let missing = {
        drop(root);
        true
    };
    if missing {
        eprintln!("SKIPPED {test}: no openat2 here (symlinks inside mappings are refused)");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn read(fd: OwnedFd) -> String {
        let mut text = String::new();
        fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    fn errno(result: io::Result<OwnedFd>) -> i32 {
        result.unwrap_err().raw_os_error().unwrap()
    }

    /// A tree `root/{dir/file, link_in -> dir/file, up_in -> ../root/dir/file, abs -> /…,
    /// out -> outside}` and an outside directory with a `secret`.
    fn tree() -> (tempfile::TempDir, tempfile::TempDir, OwnedFd) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "secret").unwrap();
        fs::create_dir(root.path().join("dir")).unwrap();
        fs::write(root.path().join("dir/file"), "inside").unwrap();
        symlink("dir/file", root.path().join("link_in")).unwrap();
        symlink("../dir/file", root.path().join("dir/up_in")).unwrap();
        symlink(root.path().join("dir/file"), root.path().join("abs")).unwrap();
        symlink(outside.path(), root.path().join("out")).unwrap();
        let fd =
            rustix::fs::open(root.path(), LOOKUP_ONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        (root, outside, fd)
    }

    #[test]
    fn paths_below_the_root_open_and_escapes_fail() {
        if crate::isolation::beneath::skip_without_openat2(
            "paths_below_the_root_open_and_escapes_fail",
        ) {
            return;
        }
        let (_root, _outside, fd) = tree();
        let open =
            |path: &str| open_beneath(fd.as_fd(), OsStr::new(path), OFlags::RDONLY, Mode::empty());
        assert_eq!(read(open("dir/file").unwrap()), "inside");
        assert_eq!(read(open("link_in").unwrap()), "inside");
        assert_eq!(read(open("dir/up_in").unwrap()), "inside");
        assert!(open(".").is_ok());
        assert_eq!(errno(open("out/secret")), libc::EXDEV);
        assert_eq!(errno(open("abs")), libc::EXDEV);
        assert_eq!(errno(open("../x")), libc::EXDEV);
        assert_eq!(errno(open("dir/file/")), libc::ENOTDIR);
        assert_eq!(errno(open("missing")), libc::ENOENT);
        assert_eq!(errno(open("/proc/self/root/etc/passwd")), libc::EXDEV);
    }

    #[test]
    fn the_portable_walk_refuses_every_symlink() {
        let (_root, _outside, fd) = tree();
        let open =
            |path: &str| open_walking(fd.as_fd(), OsStr::new(path), OFlags::RDONLY, Mode::empty());
        assert_eq!(read(open("dir/file").unwrap()), "inside");
        assert_eq!(read(open("./dir//file").unwrap()), "inside");
        assert!(open(".").is_ok());
        assert_eq!(errno(open("link_in")), libc::ELOOP);
        assert_eq!(errno(open("out/secret")), libc::ENOTDIR);
        assert_eq!(errno(open("abs")), libc::ELOOP);
        assert_eq!(errno(open("../x")), libc::EXDEV);
        assert_eq!(errno(open("dir/file/")), libc::ENOTDIR);
        // A lookup-only descriptor (stat): following a symlink is refused too, naming the link
        // itself (lstat) works.
        let lookup =
            |path: &str, flags| open_walking(fd.as_fd(), OsStr::new(path), flags, Mode::empty());
        assert_eq!(errno(lookup("link_in", LOOKUP_ONLY)), libc::ELOOP);
        #[cfg(target_os = "linux")] // O_PATH opens a link itself; macOS has no O_PATH
        assert!(lookup("link_in", LOOKUP_ONLY | OFlags::NOFOLLOW).is_ok());
        assert!(lookup("dir/file", LOOKUP_ONLY).is_ok());
    }

    #[test]
    fn the_kernel_has_openat2() {
        let dir = tempfile::tempdir().unwrap();
        let fd =
            rustix::fs::open(dir.path(), LOOKUP_ONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        probe(fd.as_fd()).unwrap();
    }
}
