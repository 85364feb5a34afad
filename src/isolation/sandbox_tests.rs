//! Tests of the file sandbox's defences through the public [`FileMap`] operations: read-only
//! mappings, FIFOs and sockets, single-file mappings as mount points, faithful errno values,
//! trailing slashes, symlinks, the bookkeeping budget and the host trees.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rustix::fs::OFlags;
use uhyve_interface as abi;

use super::errno::{EBUSY, ELOOP, ENAMETOOLONG, ENXIO};
use super::filemap::{MAX_CREATED_FILES, MAX_CREATED_PATH_BYTES};
use super::{FileMap, IsolationError};

fn errno<T: std::fmt::Debug>(result: Result<T, IsolationError>) -> i32 {
    result.unwrap_err().errno()
}

fn map(specs: &[String]) -> FileMap {
    FileMap::new(specs, None).unwrap()
}

const WRITE_CAPABLE: [i32; 5] = [
    abi::O_WRONLY,
    abi::O_RDWR,
    abi::O_RDONLY | abi::O_CREAT,
    abi::O_RDONLY | abi::O_TRUNC,
    abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL,
];

#[test]
fn read_only_mappings_refuse_every_modification() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    let d = dir.path().display();
    let map = map(&[format!("{d}:/ro:ro"), format!("{d}/f:/rofile:ro")]);

    let mut text = String::new();
    use std::io::Read;
    map.open("/ro/f", abi::O_RDONLY, 0)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "data");
    drop(map.open("/rofile", abi::O_RDONLY, 0).unwrap());
    drop(
        map.open("/ro/sub", abi::O_RDONLY | abi::O_DIRECTORY, 0)
            .unwrap(),
    );
    assert!(map.stat("/ro/f", true).is_ok());
    for flags in WRITE_CAPABLE {
        for path in ["/ro/f", "/ro/new", "/rofile", "/ro/sub/new"] {
            assert_eq!(
                errno(map.open(path, flags, 0o644)),
                abi::EROFS,
                "{path} {flags:#o}"
            );
        }
    }
    assert_eq!(errno(map.unlink("/ro/f")), abi::EROFS);
    assert_eq!(errno(map.unlink("/rofile")), abi::EROFS);
    assert_eq!(errno(map.mkdir("/ro/newdir", 0o755)), abi::EROFS);
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"data");
    assert!(!dir.path().join("new").exists());
    assert!(!dir.path().join("newdir").exists());
}

#[test]
fn read_write_mappings_allow_modification() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let d = dir.path().display();
    let map = map(&[format!("{d}:/rw:rw"), format!("{d}:/default")]);
    for root in ["/rw", "/default"] {
        for flags in WRITE_CAPABLE {
            let path = format!("{root}/new-{flags}");
            drop(map.open(&path, flags | abi::O_CREAT, 0o644).unwrap());
            map.unlink(&path).unwrap();
        }
        map.mkdir(&format!("{root}/d"), 0o755).unwrap();
        fs::remove_dir(dir.path().join("d")).unwrap();
    }
}

/// Creates a FIFO at `path`.
fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let result = unsafe { libc::mkfifo(path.as_ptr(), 0o600) };
    assert_eq!(result, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Runs `open` on another thread and fails (instead of hanging) if it blocks.
fn promptly<T: Send + 'static>(open: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(open()).unwrap());
    receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("open blocked")
}

#[test]
fn fifos_and_sockets_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
    let d = dir.path().display();
    let map = std::sync::Arc::new(map(&[format!("{d}:/data"), format!("{d}/fifo:/fifo")]));
    for (path, flags) in [
        ("/data/fifo", abi::O_RDONLY),
        ("/data/fifo", abi::O_WRONLY),
        ("/data/fifo", abi::O_RDWR),
        ("/fifo", abi::O_RDONLY),
        ("/data/socket", abi::O_RDONLY),
        ("/data/socket", abi::O_WRONLY),
    ] {
        let map = std::sync::Arc::clone(&map);
        let result = promptly(move || map.open(path, flags, 0).map(drop));
        assert_eq!(errno(result), ENXIO, "{path} {flags:#o}");
    }
    // stat of a FIFO is fine (nothing is opened for reading).
    assert!(map.stat("/data/fifo", true).is_ok());
}

#[test]
fn o_nonblock_stays_only_on_character_devices() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let d = dir.path().display();
    let map = map(&[format!("{d}:/data"), "/dev/null:/null".to_owned()]);
    let nonblocking = |path: &str| {
        let file = map.open(path, abi::O_RDONLY, 0).unwrap();
        let fd = file.file_fd().unwrap();
        rustix::fs::fcntl_getfl(fd.as_fd())
            .unwrap()
            .contains(OFlags::NONBLOCK)
    };
    assert!(!nonblocking("/data/f"));
    assert!(nonblocking("/null"));
}

#[test]
fn single_file_mappings_cannot_be_unlinked_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.txt"), b"mapped").unwrap();
    fs::write(dir.path().join("other"), b"other").unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    let d = dir.path().display();
    let map = map(&[
        format!("{d}:/data"),
        format!("{d}/f.txt:/f"),
        format!("{d}/missing:/new"),
        format!("{d}/fifo:/special"),
    ]);
    // The mapped file itself, also through the mapping of its directory: EBUSY.
    assert_eq!(errno(map.unlink("/f")), EBUSY);
    assert_eq!(errno(map.unlink("/data/f.txt")), EBUSY);
    assert_eq!(fs::read(dir.path().join("f.txt")).unwrap(), b"mapped");
    assert_eq!(errno(map.mkdir("/f", 0o755)), abi::EEXIST);
    // Other files of the directory can be unlinked.
    map.unlink("/data/other").unwrap();
    assert!(!dir.path().join("other").exists());

    // A missing mapped file: no directory in its place, but a regular file may be created, and
    // then it is a mount point too.
    assert_eq!(errno(map.mkdir("/new", 0o755)), EBUSY);
    assert_eq!(errno(map.open("/new", abi::O_RDONLY, 0)), abi::ENOENT);
    drop(
        map.open("/new", abi::O_WRONLY | abi::O_CREAT, 0o644)
            .unwrap(),
    );
    assert!(dir.path().join("missing").is_file());
    assert_eq!(errno(map.unlink("/new")), EBUSY);

    // A non-regular mapped file is never created: O_CREAT is dropped, O_EXCL is EEXIST.
    assert_eq!(
        errno(map.open(
            "/special",
            abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL,
            0o644
        )),
        abi::EEXIST
    );
    fs::remove_file(&fifo).unwrap();
    assert_eq!(
        errno(map.open("/special", abi::O_WRONLY | abi::O_CREAT, 0o644)),
        abi::ENOENT
    );
    assert!(!fifo.exists());

    // A symlink put in place of a mapped file on the host is not followed.
    fs::remove_file(dir.path().join("f.txt")).unwrap();
    symlink("/etc/passwd", dir.path().join("f.txt")).unwrap();
    assert_eq!(errno(map.open("/f", abi::O_RDONLY, 0)), ELOOP);
    assert_eq!(
        map.stat("/f", true).unwrap().file_type(),
        super::status::S_IFLNK
    );
}

#[test]
fn host_errno_values_reach_the_guest_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file.txt"), b"x").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    symlink("loop_b", dir.path().join("loop_a")).unwrap();
    symlink("loop_a", dir.path().join("loop_b")).unwrap();
    let d = dir.path().display();
    let map = map(&[format!("{d}:/data")]);

    // ENOTDIR: a file as a directory component, or named with a trailing slash.
    assert_eq!(
        errno(map.open("/data/file.txt/x", abi::O_RDONLY, 0)),
        abi::ENOTDIR
    );
    for path in ["/data/file.txt/", "/data/file.txt/."] {
        assert_eq!(
            errno(map.open(path, abi::O_RDONLY, 0)),
            abi::ENOTDIR,
            "{path}"
        );
        assert_eq!(errno(map.stat(path, true)), abi::ENOTDIR, "{path}");
        assert_eq!(errno(map.stat(path, false)), abi::ENOTDIR, "{path}");
    }
    assert_eq!(errno(map.unlink("/data/file.txt/")), abi::ENOTDIR);
    assert!(dir.path().join("file.txt").exists());
    // A directory with a trailing slash is fine.
    drop(map.open("/data/sub/", abi::O_RDONLY, 0).unwrap());
    assert!(map.stat("/data/sub/", true).is_ok());
    // ELOOP: a symlink loop inside the mapping.
    assert_eq!(errno(map.open("/data/loop_a", abi::O_RDONLY, 0)), ELOOP);
    // ENAMETOOLONG: a component longer than NAME_MAX.
    let long = format!("/data/{}", "n".repeat(300));
    assert_eq!(
        errno(map.open(&long, abi::O_WRONLY | abi::O_CREAT, 0o644)),
        ENAMETOOLONG
    );
    assert_eq!(errno(map.stat(&long, true)), ENAMETOOLONG);
    // EACCES: only without CAP_DAC_OVERRIDE (root reads everything).
    if !rustix::process::geteuid().is_root() {
        fs::write(dir.path().join("secret"), b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(
            errno(map.open("/data/secret", abi::O_RDONLY, 0)),
            super::errno::EACCES
        );
    }
}

#[test]
fn trailing_slashes_on_map_entries_need_directories() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.txt"), b"x").unwrap();
    let d = dir.path().display();
    let mut map = map(&[format!("{d}/f.txt:/etc/f.txt")]);
    map.add_virtual_file("/v/file", std::sync::Arc::from(&b"v"[..]))
        .unwrap();
    drop(
        map.open("/made", abi::O_WRONLY | abi::O_CREAT, 0o644)
            .unwrap(),
    );
    for path in ["/etc/f.txt/", "/v/file/", "/made/"] {
        assert_eq!(
            errno(map.open(path, abi::O_RDONLY, 0)),
            abi::ENOTDIR,
            "{path}"
        );
        assert_eq!(errno(map.stat(path, true)), abi::ENOTDIR, "{path}");
    }
    assert_eq!(
        errno(map.open("/fresh/", abi::O_WRONLY | abi::O_CREAT, 0o644)),
        abi::EISDIR
    );
    assert!(map.stat("/etc/", true).is_ok());
    assert!(map.stat("/v/", true).is_ok());
}

#[test]
fn symlinks_stay_inside_or_fail() {
    if crate::isolation::beneath::skip_without_openat2("symlinks_stay_inside_or_fail") {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    fs::write(dir.path().join("a/real"), b"real").unwrap();
    fs::create_dir(dir.path().join("b")).unwrap();
    symlink("../a/real", dir.path().join("b/up")).unwrap();
    symlink(
        dir.path().join("a/real"),
        dir.path().join("absolute_inside"),
    )
    .unwrap();
    symlink("../../../../../../../../..", dir.path().join("climb")).unwrap();
    let d = dir.path().display();
    let map = map(&[format!("{d}:/data")]);
    // A relative symlink that stays inside works, through other directories too.
    assert_eq!(map.stat("/data/b/up", true).unwrap().size, 4);
    drop(map.open("/data/b/up", abi::O_RDONLY, 0).unwrap());
    // An absolute symlink fails even when it points inside; so does one climbing out.
    assert_eq!(
        errno(map.open("/data/absolute_inside", abi::O_RDONLY, 0)),
        abi::EPERM
    );
    let escape = format!("/data/climb{}", outside.path().join("secret").display());
    assert_eq!(errno(map.open(&escape, abi::O_RDONLY, 0)), abi::EPERM);
    assert_eq!(errno(map.unlink(&escape)), abi::EPERM);
    assert_eq!(
        errno(map.mkdir(&format!("{escape}-dir"), 0o755)),
        abi::EPERM
    );
    assert!(outside.path().join("secret").exists());
}

#[test]
fn created_paths_are_stored_compactly_within_a_budget() {
    let parent = tempfile::tempdir().unwrap();
    let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
    // 4 KiB paths of ~2 000 one-byte components.
    let deep = |i: usize| format!("{}/{i:06}", "a/".repeat(2_040));
    let mut created = 0;
    let refused = loop {
        match map.open(&deep(created), abi::O_WRONLY | abi::O_CREAT, 0o600) {
            Ok(_) => created += 1,
            Err(error) => break error,
        }
        assert!(created <= MAX_CREATED_FILES);
    };
    assert_eq!(refused.errno(), abi::ENOSPC);
    assert!(matches!(refused, IsolationError::CreatedPathsTooLong));
    let key_len = deep(0).len();
    assert_eq!(created, MAX_CREATED_PATH_BYTES / key_len);
    // Unlinking gives the budget back.
    map.unlink(&deep(0)).unwrap();
    drop(
        map.open(&deep(created), abi::O_WRONLY | abi::O_CREAT, 0o600)
            .unwrap(),
    );
    assert_eq!(errno(map.mkdir(&deep(created + 1), 0o700)), abi::ENOSPC);
    // Short paths still fit in what is left.
    drop(map.open("/s", abi::O_WRONLY | abi::O_CREAT, 0o600).unwrap());
}

#[test]
fn host_trees_list_every_mapping_root_and_the_temp_dir() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"").unwrap();
    let canonical = fs::canonicalize(dir.path()).unwrap();
    let d = dir.path().display();
    let map = map(&[
        format!("{d}:/data:ro"),
        format!("{d}/f:/f"),
        format!("{d}/missing:/m:ro"),
    ]);
    let trees: Vec<(&Path, bool, bool)> = map
        .host_trees()
        .iter()
        .map(|tree| (tree.path, tree.writable, tree.directory))
        .collect();
    let temp = map.temp_dir().unwrap();
    let file = canonical.join("f");
    assert_eq!(
        trees,
        vec![
            (canonical.as_path(), false, true),
            (file.as_path(), true, false),
            (canonical.as_path(), false, true),
            (temp.as_path(), true, true),
        ]
    );
    // Every descriptor names its path.
    for tree in map.host_trees() {
        let by_fd = rustix::fs::fstat(tree.fd).unwrap();
        let by_path = rustix::fs::stat(tree.path).unwrap();
        assert_eq!(
            (by_fd.st_dev, by_fd.st_ino),
            (by_path.st_dev, by_path.st_ino)
        );
    }
}
