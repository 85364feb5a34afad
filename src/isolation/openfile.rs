//! What a guest file descriptor refers to: [`OpenFile`].
//!
//! [`FileMap::open`](super::FileMap::open) returns one of four kinds, all behind the same
//! operations (each one answers the way the matching Linux system call would on such a file):
//!
//! | kind | read | write | seek | getdents | fstat |
//! |---|---|---|---|---|---|
//! | host file (regular, or any other non-directory) | host | host | host | `ENOTDIR` | host |
//! | host directory | `EISDIR` | `EISDIR` | record boundaries | host entries | host |
//! | map-only directory | `EISDIR` | `EISDIR` | record boundaries | synthetic entries | `S_IFDIR\|0755` |
//! | virtual file (read-only, in memory) | memory | `EBADF` | memory | `ENOTDIR` | `S_IFREG\|0444` |
//!
//! Every operation takes `&self`: an `OpenFile` is shared (`Arc`) between the descriptor table
//! and the operations in flight on several vCPUs. The position of a directory or virtual file is
//! behind a per-descriptor lock; a host file's position is the host descriptor's own.
//! Directory listing and seeking is described in [`super::dir`].

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use super::IsolationError;
use super::dir::{DirEntry, DirStream};
use super::status::FileStatus;

/// The kind of an [`OpenFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A host file that is not a directory.
    HostFile,
    /// A host directory.
    HostDirectory,
    /// A directory that exists only in the file map.
    MapDirectory,
    /// A read-only in-memory file.
    Virtual,
}

#[derive(Debug)]
enum Inner {
    File(File),
    /// A host or map-only directory; `status` is set for a map-only one.
    Directory {
        stream: Mutex<DirStream>,
        status: Option<FileStatus>,
    },
    Virtual {
        data: Arc<[u8]>,
        position: Mutex<u64>,
        status: FileStatus,
    },
}

/// An open file of the guest (see the module documentation); `Send + Sync`.
#[derive(Debug)]
pub struct OpenFile {
    /// The guest path it was opened by (for messages).
    path: String,
    inner: Inner,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state is updated by non-panicking steps; it is usable after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl OpenFile {
    /// An opened host file; a directory becomes a directory stream.
    pub(crate) fn host(path: &str, file: File) -> io::Result<Self> {
        let inner = if file.metadata()?.is_dir() {
            Inner::Directory {
                stream: Mutex::new(DirStream::host(file)?),
                status: None,
            }
        } else {
            Inner::File(file)
        };
        Ok(Self {
            path: path.to_owned(),
            inner,
        })
    }

    /// A directory that exists only in the file map, listing `entries`.
    pub(crate) fn map_directory(path: &str, entries: Vec<DirEntry>, status: FileStatus) -> Self {
        Self {
            path: path.to_owned(),
            inner: Inner::Directory {
                stream: Mutex::new(DirStream::synthetic(entries)),
                status: Some(status),
            },
        }
    }

    /// A read-only in-memory file.
    pub(crate) fn virtual_file(path: &str, data: Arc<[u8]>, status: FileStatus) -> Self {
        Self {
            path: path.to_owned(),
            inner: Inner::Virtual {
                data,
                position: Mutex::new(0),
                status,
            },
        }
    }

    /// The host descriptor of a host file that is not a directory (for tests).
    #[cfg(test)]
    pub(crate) fn file_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match &self.inner {
            Inner::File(file) => Some(file.as_fd()),
            _ => None,
        }
    }

    /// The guest path this file was opened by.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The host descriptor's file status flags (`fcntl(F_GETFL)`) of a host file that is not a
    /// directory.
    #[cfg(all(test, target_os = "linux"))]
    pub(crate) fn host_status_flags(&self) -> Option<rustix::fs::OFlags> {
        match &self.inner {
            Inner::File(file) => rustix::fs::fcntl_getfl(file).ok(),
            _ => None,
        }
    }

    /// What kind of file this is.
    pub fn kind(&self) -> FileKind {
        match &self.inner {
            Inner::File(_) => FileKind::HostFile,
            Inner::Directory { status: None, .. } => FileKind::HostDirectory,
            Inner::Directory {
                status: Some(_), ..
            } => FileKind::MapDirectory,
            Inner::Virtual { .. } => FileKind::Virtual,
        }
    }

    /// Reads at the current position: bytes read (0 at the end). Directories: `EISDIR`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::File(file) => (&mut &*file).read(buf),
            Inner::Directory { .. } => Err(os_error(libc::EISDIR)),
            Inner::Virtual { data, position, .. } => {
                let mut position = lock(position);
                let start = usize::try_from(*position).unwrap_or(usize::MAX);
                let available = data.get(start..).unwrap_or_default();
                let n = available.len().min(buf.len());
                buf[..n].copy_from_slice(&available[..n]);
                *position += n as u64;
                Ok(n)
            }
        }
    }

    /// Writes at the current position: bytes written. Directories: `EISDIR`; virtual files
    /// (opened read-only): `EBADF`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.inner {
            Inner::File(file) => (&mut &*file).write(buf),
            Inner::Directory { .. } => Err(os_error(libc::EISDIR)),
            Inner::Virtual { .. } => Err(os_error(libc::EBADF)),
        }
    }

    /// Moves the position: the new position. Directories accept record boundaries only (see
    /// [`super::dir`]); virtual files any position from 0 to `i64::MAX` (reads past the end
    /// return 0); a negative result is `EINVAL`.
    pub fn seek(&self, to: SeekFrom) -> io::Result<u64> {
        match &self.inner {
            Inner::File(file) => (&mut &*file).seek(to),
            Inner::Directory { stream, .. } => lock(stream).seek(to),
            Inner::Virtual { data, position, .. } => {
                let mut position = lock(position);
                let target = match to {
                    SeekFrom::Start(target) => Some(target),
                    SeekFrom::Current(delta) => position.checked_add_signed(delta),
                    SeekFrom::End(delta) => (data.len() as u64).checked_add_signed(delta),
                }
                .filter(|&target| i64::try_from(target).is_ok())
                .ok_or_else(|| os_error(libc::EINVAL))?;
                *position = target;
                Ok(target)
            }
        }
    }

    /// The file's status (`fstat`).
    pub fn fstat(&self) -> Result<FileStatus, IsolationError> {
        let failed = |source| IsolationError::Descriptor {
            operation: "fstat",
            path: self.path.clone(),
            source,
        };
        match &self.inner {
            Inner::File(file) => file
                .metadata()
                .map(|metadata| FileStatus::from_metadata(&metadata))
                .map_err(failed),
            Inner::Directory {
                status: Some(status),
                ..
            }
            | Inner::Virtual { status, .. } => Ok(*status),
            Inner::Directory { stream, .. } => {
                let stream = lock(stream);
                let fd = stream
                    .host_fd()
                    .ok_or_else(|| failed(os_error(libc::EBADF)))?;
                // A second descriptor for the call only: `File` wants to own one.
                let file = File::from(fd.try_clone_to_owned().map_err(failed)?);
                file.metadata()
                    .map(|metadata| FileStatus::from_metadata(&metadata))
                    .map_err(failed)
            }
        }
    }

    /// The next directory entries as `dirent64` records fitting into `buffer_len` bytes (at most
    /// [`super::dir::MAX_GETDENTS_BYTES`]); `None` at the end of the directory. Errors: not a
    /// directory → `ENOTDIR`, not even one record fits → `EINVAL` (nothing is consumed).
    pub fn getdents(&self, buffer_len: u64) -> Result<Option<Vec<u8>>, IsolationError> {
        match &self.inner {
            Inner::Directory { stream, .. } => lock(stream).getdents(buffer_len),
            Inner::File(_) | Inner::Virtual { .. } => {
                Err(IsolationError::NotADirectory(self.path.clone()))
            }
        }
    }
}

/// Like `Read for File`.
impl Read for OpenFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        OpenFile::read(self, buf)
    }
}

/// Like `Write for File`.
impl Write for OpenFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        OpenFile::write(self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Like `Seek for File`.
impl Seek for OpenFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        OpenFile::seek(self, to)
    }
}

/// Like `Read for &File`: reads through a shared reference.
impl Read for &OpenFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        OpenFile::read(self, buf)
    }
}

/// Like `Write for &File`: writes through a shared reference.
impl Write for &OpenFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        OpenFile::write(self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Like `Seek for &File`: seeks through a shared reference.
impl Seek for &OpenFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        OpenFile::seek(self, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::dir::{DT_REG, decode_dirents};
    use crate::isolation::status::{FileTime, S_IFDIR, S_IFREG};

    fn virtual_file(data: &[u8]) -> OpenFile {
        let status = FileStatus::virtual_file(data.len(), 2, FileTime::default());
        OpenFile::virtual_file("/v", Arc::from(data), status)
    }

    #[test]
    fn virtual_files_read_and_seek_in_memory() {
        let file = virtual_file(b"hello world");
        assert_eq!(file.kind(), FileKind::Virtual);
        let mut buf = [0; 5];
        assert_eq!(file.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(file.seek(SeekFrom::Current(1)).unwrap(), 6);
        let mut rest = String::new();
        (&file).read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "world");
        assert_eq!(file.read(&mut buf).unwrap(), 0);
        assert_eq!(file.seek(SeekFrom::End(-5)).unwrap(), 6);
        assert_eq!(file.seek(SeekFrom::Start(100)).unwrap(), 100);
        assert_eq!(file.read(&mut buf).unwrap(), 0);
        for bad in [
            SeekFrom::End(-12),
            SeekFrom::Current(-101),
            SeekFrom::Start(u64::MAX),
        ] {
            let error = file.seek(bad).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
        assert_eq!((&file).stream_position().unwrap(), 100);
    }

    #[test]
    fn virtual_files_refuse_writes_and_listing() {
        let file = virtual_file(b"data");
        let error = file.write(b"x").unwrap_err();
        assert_eq!(
            crate::isolation::guest_errno(&error),
            uhyve_interface::EBADF
        );
        let error = file.getdents(4096).unwrap_err();
        assert_eq!(error.errno(), uhyve_interface::ENOTDIR);
        let status = file.fstat().unwrap();
        assert_eq!((status.mode, status.size), (S_IFREG | 0o444, 4));
    }

    #[test]
    fn directories_refuse_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let host = OpenFile::host("/d", File::open(dir.path()).unwrap()).unwrap();
        assert_eq!(host.kind(), FileKind::HostDirectory);
        let map = OpenFile::map_directory(
            "/",
            vec![DirEntry {
                ino: 1,
                kind: DT_REG,
                name: b"x".to_vec(),
            }],
            FileStatus::map_directory(3, FileTime::default()),
        );
        assert_eq!(map.kind(), FileKind::MapDirectory);
        for file in [&host, &map] {
            let errno = |error: io::Error| crate::isolation::guest_errno(&error);
            assert_eq!(errno(file.read(&mut [0; 4]).unwrap_err()), 21);
            assert_eq!(errno(file.write(b"x").unwrap_err()), 21);
            assert_eq!(file.fstat().unwrap().mode & 0o170000, S_IFDIR);
            assert!(file.getdents(4096).unwrap().is_some());
        }
        let records = decode_dirents(&map.getdents(4096).unwrap().unwrap_or_default());
        assert_eq!(records, Some(vec![]));
        let status = host.fstat().unwrap();
        let expected = FileStatus::from_metadata(&std::fs::metadata(dir.path()).unwrap());
        assert_eq!((status.dev, status.ino), (expected.dev, expected.ino));
    }

    #[test]
    fn host_files_pass_through() {
        let file = OpenFile::host("/f", tempfile::tempfile().unwrap()).unwrap();
        assert_eq!(file.kind(), FileKind::HostFile);
        assert_eq!(file.write(b"abc").unwrap(), 3);
        assert_eq!(file.seek(SeekFrom::Start(1)).unwrap(), 1);
        let mut buf = [0; 8];
        assert_eq!(file.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"bc");
        assert_eq!(file.fstat().unwrap().size, 3);
        assert_eq!(
            file.getdents(4096).unwrap_err().errno(),
            uhyve_interface::ENOTDIR
        );
        assert_eq!(file.path(), "/f");
    }
}
