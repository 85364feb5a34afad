//! File status (`stat`) in a host-neutral form with Linux numbering.
//!
//! [`FileStatus`] carries what the guest's `FileAttr` (interface v3, §6.3 of the ABI sheet) needs,
//! converted from the host's [`fs::Metadata`] through [`MetadataExt`], so it is the same on Linux
//! and macOS (whose `struct stat` differs in field types and names). The file type bits of `mode`
//! are translated explicitly into Linux's `S_IF*` numbers; the permission bits (0o7777) are the
//! same everywhere. Entries that exist only in uhyve's file map (map-only directories, virtual
//! files) get synthetic values on device 0: see [`FileStatus::map_directory`] and
//! [`FileStatus::virtual_file`].

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{SystemTime, UNIX_EPOCH};

/// Mask of the file type bits in [`FileStatus::mode`].
pub const S_IFMT: u32 = 0o170000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;

/// A point in time as seconds and nanoseconds since the Unix epoch (`struct timespec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileTime {
    /// Whole seconds (negative before 1970).
    pub sec: i64,
    /// Nanoseconds, 0 to 999 999 999.
    pub nsec: u32,
}

impl FileTime {
    /// The current time.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => Self {
                sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nsec: since.subsec_nanos(),
            },
            Err(_) => Self::default(),
        }
    }

    fn from_parts(sec: i64, nsec: i64) -> Self {
        Self {
            sec,
            nsec: u32::try_from(nsec.clamp(0, 999_999_999)).unwrap_or(0),
        }
    }
}

/// What `stat(2)` reports about a file, with Linux numbering (the guest's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStatus {
    /// Device of the file system holding the file.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// File type ([`S_IFMT`] bits, Linux numbering) and permission bits (0o7777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device files.
    pub rdev: u64,
    /// Size in bytes.
    pub size: i64,
    /// Preferred I/O block size.
    pub blksize: i64,
    /// Number of 512-byte blocks allocated.
    pub blocks: i64,
    /// Last access.
    pub atime: FileTime,
    /// Last modification.
    pub mtime: FileTime,
    /// Last status change.
    pub ctime: FileTime,
}

/// Saturating `u64` → `i64` (sizes beyond `i64::MAX` do not exist on real file systems).
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl FileStatus {
    /// Converts host metadata (from `stat`, `lstat` or `fstat`).
    pub fn from_metadata(metadata: &fs::Metadata) -> Self {
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            S_IFDIR
        } else if file_type.is_file() {
            S_IFREG
        } else if file_type.is_symlink() {
            S_IFLNK
        } else if file_type.is_char_device() {
            S_IFCHR
        } else if file_type.is_block_device() {
            S_IFBLK
        } else if file_type.is_fifo() {
            S_IFIFO
        } else if file_type.is_socket() {
            S_IFSOCK
        } else {
            0
        };
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            nlink: metadata.nlink(),
            mode: kind | (metadata.mode() & 0o7777),
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev(),
            size: signed(metadata.size()),
            blksize: signed(metadata.blksize()),
            blocks: signed(metadata.blocks()),
            atime: FileTime::from_parts(metadata.atime(), metadata.atime_nsec()),
            mtime: FileTime::from_parts(metadata.mtime(), metadata.mtime_nsec()),
            ctime: FileTime::from_parts(metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// A directory that exists only in the file map: `S_IFDIR | 0755`, 2 links, device 0, inode
    /// `ino`, all times `time`.
    pub fn map_directory(ino: u64, time: FileTime) -> Self {
        Self {
            ino,
            nlink: 2,
            mode: S_IFDIR | 0o755,
            blksize: 4096,
            atime: time,
            mtime: time,
            ctime: time,
            ..Self::default()
        }
    }

    /// A read-only in-memory file of `len` bytes: `S_IFREG | 0444`, 1 link, device 0, inode
    /// `ino`, block size 4096, all times `time`.
    pub fn virtual_file(len: usize, ino: u64, time: FileTime) -> Self {
        let size = i64::try_from(len).unwrap_or(i64::MAX);
        Self {
            ino,
            nlink: 1,
            mode: S_IFREG | 0o444,
            size,
            blksize: 4096,
            blocks: size.saturating_add(511) / 512,
            atime: time,
            mtime: time,
            ctime: time,
            ..Self::default()
        }
    }

    /// The file type bits ([`S_IFMT`]) of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_metadata_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"12345").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("f", &link).unwrap();

        let status = FileStatus::from_metadata(&fs::metadata(&file).unwrap());
        assert_eq!(status.mode, S_IFREG | 0o640);
        assert_eq!(status.size, 5);
        assert_eq!(status.nlink, 1);
        let host = fs::metadata(&file).unwrap();
        assert_eq!((status.dev, status.ino), (host.dev(), host.ino()));
        assert_eq!(status.mtime.sec, host.mtime());
        assert!(status.mtime.nsec < 1_000_000_000);

        let status = FileStatus::from_metadata(&fs::symlink_metadata(&link).unwrap());
        assert_eq!(status.file_type(), S_IFLNK);
        assert_eq!(status.size, 1);
        let status = FileStatus::from_metadata(&fs::metadata(dir.path()).unwrap());
        assert_eq!(status.file_type(), S_IFDIR);
        let status = FileStatus::from_metadata(&fs::metadata("/dev/null").unwrap());
        assert_eq!(status.file_type(), S_IFCHR);
    }

    #[test]
    fn synthetic_entries_have_fixed_modes() {
        let time = FileTime { sec: 7, nsec: 9 };
        let dir = FileStatus::map_directory(5, time);
        assert_eq!((dir.mode, dir.nlink, dir.ino), (S_IFDIR | 0o755, 2, 5));
        assert_eq!(dir.mtime, time);
        let file = FileStatus::virtual_file(513, 6, time);
        assert_eq!(
            (file.mode, file.nlink, file.size),
            (S_IFREG | 0o444, 1, 513)
        );
        assert_eq!((file.blksize, file.blocks), (4096, 2));
        assert!(FileTime::now().sec > 1_600_000_000);
    }
}
