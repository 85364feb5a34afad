//! `--io-mode`: the open flags uhyve adds to every host file the guest opens through the file
//! map, mapped or created in the private temp directory — `O_DIRECT` (`host=direct`: bypass the
//! host page cache, Linux only) and `O_SYNC` (`host=sync`: a write returns once the data is on the
//! device). Directories are opened without them: Linux refuses `O_DIRECT` for a directory with
//! `EINVAL`, so a directory the guest opens without `O_DIRECTORY` is opened once more without the
//! flags. A regular file on a filesystem that refuses `O_DIRECT` (or, on most, an unaligned
//! transfer of one that accepts it) gives the guest `EINVAL`, as `open(2)` and `read(2)` would; uhyve's
//! transfer buffers are page aligned, so transfers of whole blocks at block offsets work.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};

use super::beneath::open_beneath;
use crate::params::IoMode;

/// The flags of an [`IoMode`] for the host's `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFlags(OFlags);

impl Default for IoFlags {
    /// `--io-mode default`: nothing added.
    fn default() -> Self {
        Self(OFlags::empty())
    }
}

impl IoFlags {
    /// The flags `mode` asks for. Where the host has no `O_DIRECT`, `host=direct` is one warning.
    pub fn new(mode: IoMode) -> Self {
        let mut flags = OFlags::empty();
        if mode.sync {
            flags |= OFlags::SYNC;
        }
        if mode.direct {
            #[cfg(target_os = "linux")]
            {
                flags |= OFlags::DIRECT;
            }
            #[cfg(not(target_os = "linux"))]
            log::warn!(
                "--io-mode host=direct has no effect on this host: it has no O_DIRECT (only \
                 host=sync applies)"
            );
        }
        Self(flags)
    }

    /// The flags to add to an open with the host flags `requested`: none for a directory.
    pub fn for_open(self, requested: OFlags) -> OFlags {
        if requested.contains(OFlags::DIRECTORY) {
            OFlags::empty()
        } else {
            self.0
        }
    }
}

/// [`open_beneath`] with the `--io-mode` flags `io` added to `flags`. If the host refuses them
/// with `EINVAL` and `path` (opened without `O_CREAT`) is a directory, it is opened again without
/// them; anything else keeps the error.
pub fn open_beneath_with(
    root: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
    io: OFlags,
) -> io::Result<OwnedFd> {
    match open_beneath(root, path, flags | io, mode) {
        Err(error)
            if error.raw_os_error() == Some(libc::EINVAL)
                && !io.is_empty()
                && !flags.contains(OFlags::CREATE) =>
        {
            let again = open_beneath(root, path, flags, mode)?;
            match rustix::fs::fstat(&again) {
                Ok(status) if FileType::from_raw_mode(status.st_mode) == FileType::Directory => {
                    Ok(again)
                }
                _ => Err(error),
            }
        }
        result => result,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsFd;

    use uhyve_interface as abi;

    use super::*;
    use crate::isolation::{FileKind, FileMap};

    /// Whether the file system of `dir` lets a file be opened with `O_DIRECT`.
    fn takes_o_direct(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("o_direct-probe");
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path);
        let _ = std::fs::remove_file(&path);
        opened.is_ok()
    }

    #[test]
    fn every_host_file_the_guest_opens_gets_the_io_mode_flags() {
        let dir = tempfile::tempdir().unwrap();
        if !takes_o_direct(dir.path()) {
            eprintln!(
                "SKIPPED every_host_file_the_guest_opens_gets_the_io_mode_flags: the file system \
                 of {} refuses O_DIRECT",
                dir.path().display()
            );
            return;
        }
        std::fs::write(dir.path().join("data.bin"), [7u8; 4096]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mapping = format!("{}:/data", dir.path().display());
        for (direct, sync) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut map =
                FileMap::new(std::slice::from_ref(&mapping), Some(dir.path().to_owned())).unwrap();
            map.set_io_mode(mode(direct, sync));
            let expect = |file: &crate::isolation::OpenFile, what: &str| {
                let flags = file.host_status_flags().unwrap();
                let context = format!("{what}, direct {direct}, sync {sync}: {flags:?}");
                assert_eq!(flags.contains(OFlags::DIRECT), direct, "{context}");
                assert_eq!(flags.contains(OFlags::SYNC), sync, "{context}");
            };
            // A mapped file, read-write and read-only.
            expect(
                &map.open("/data/data.bin", abi::O_RDWR, 0).unwrap(),
                "mapped",
            );
            expect(
                &map.open("/data/data.bin", abi::O_RDONLY, 0).unwrap(),
                "mapped read-only",
            );
            // A new file in a mapping, and one in the private temp directory.
            let create = abi::O_CREAT | abi::O_RDWR;
            expect(
                &map.open("/data/new.bin", create, 0o600).unwrap(),
                "created in the mapping",
            );
            expect(
                &map.open("/scratch/new.bin", create, 0o600).unwrap(),
                "created in the temp directory",
            );
            // Directories open as before, with O_DIRECTORY or without.
            for flags in [abi::O_RDONLY, abi::O_RDONLY | abi::O_DIRECTORY] {
                let sub = map.open("/data/sub", flags, 0).unwrap();
                assert_eq!(sub.kind(), FileKind::HostDirectory);
            }
        }
    }

    fn mode(direct: bool, sync: bool) -> IoMode {
        IoMode { direct, sync }
    }

    #[test]
    fn modes_become_open_flags() {
        let plain = OFlags::RDWR;
        assert_eq!(
            IoFlags::new(mode(false, false)).for_open(plain),
            OFlags::empty()
        );
        assert_eq!(
            IoFlags::new(mode(true, false)).for_open(plain),
            OFlags::DIRECT
        );
        assert_eq!(
            IoFlags::new(mode(false, true)).for_open(plain),
            OFlags::SYNC
        );
        assert_eq!(
            IoFlags::new(mode(true, true)).for_open(plain),
            OFlags::DIRECT | OFlags::SYNC
        );
        // Never for a directory the guest asks for as one.
        let dir = OFlags::RDONLY | OFlags::DIRECTORY;
        assert_eq!(
            IoFlags::new(mode(true, true)).for_open(dir),
            OFlags::empty()
        );
    }

    #[test]
    fn a_directory_opened_without_o_directory_is_opened_without_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let io = OFlags::DIRECT | OFlags::SYNC;
        let opened = open_beneath_with(
            root.as_fd(),
            OsStr::new("sub"),
            OFlags::RDONLY,
            Mode::empty(),
            io,
        )
        .unwrap();
        // Linux refuses O_DIRECT for directories (EINVAL), so this took the second open.
        let status = rustix::fs::fstat(&opened).unwrap();
        assert_eq!(FileType::from_raw_mode(status.st_mode), FileType::Directory);
        // A missing path keeps its own error.
        let error = open_beneath_with(
            root.as_fd(),
            OsStr::new("gone"),
            OFlags::RDONLY,
            Mode::empty(),
            io,
        )
        .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
    }
}
