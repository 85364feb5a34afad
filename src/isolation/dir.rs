//! Directory streams: listing an open directory as Linux `dirent64` records (Getdents).
//!
//! A [`DirStream`] belongs to one open guest descriptor and keeps that descriptor's position, so
//! two descriptors on one directory are independent. Its entries come either from a host
//! directory (read with `readdir(3)` from the very descriptor that was opened — never by path
//! again — including `.` and `..`, as `getdents64(2)` does) or from a synthetic list built by the
//! file map for a directory that exists only because mappings lie below it.
//!
//! **Encoding** (§6.3 of the ABI sheet): each record is `d_ino` u64, `d_off` i64, `d_reclen` u16,
//! `d_type` u8, the name and a NUL, padded with zeros to a multiple of 8. `d_type` uses Linux
//! numbers (0 unknown, 1 FIFO, 2 character device, 4 directory, 6 block device, 8 regular, 10
//! symlink, 12 socket, 14 whiteout); a host entry of unknown type is looked up with
//! `fstatat(AT_SYMLINK_NOFOLLOW)`.
//!
//! **Positions.** The stream is a byte stream of those records; the position after a record is
//! its `d_off`, and it is what `lseek` reports and accepts: a seek to 0 rewinds (re-reading the
//! host directory), a seek to the end of any record continues there (found by re-reading from the
//! start), anything else (inside a record, past the end, `SEEK_END`) is `EINVAL`.
//!
//! **Bounds.** One call encodes at most `min(buffer_len, MAX_GETDENTS_BYTES)` bytes, so the guest's
//! length never makes the host allocate more than that. An entry that does not fit is kept for
//! the next call; if not even the first one fits, the call fails with `EINVAL` and consumes
//! nothing.

use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, SeekFrom};
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::ptr::NonNull;

use super::IsolationError;

/// `d_type`: unknown.
pub const DT_UNKNOWN: u8 = 0;
/// `d_type`: FIFO.
pub const DT_FIFO: u8 = 1;
/// `d_type`: character device.
pub const DT_CHR: u8 = 2;
/// `d_type`: directory.
pub const DT_DIR: u8 = 4;
/// `d_type`: block device.
pub const DT_BLK: u8 = 6;
/// `d_type`: regular file.
pub const DT_REG: u8 = 8;
/// `d_type`: symbolic link.
pub const DT_LNK: u8 = 10;
/// `d_type`: socket.
pub const DT_SOCK: u8 = 12;
/// `d_type`: whiteout.
pub const DT_WHT: u8 = 14;

/// The most bytes one Getdents call encodes, whatever buffer length the guest passes.
pub const MAX_GETDENTS_BYTES: u64 = 64 * 1024;

/// Offset of `d_name` in a record.
const NAME_OFFSET: usize = 19;

/// One directory entry, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number (`d_ino`).
    pub ino: u64,
    /// Linux `d_type`.
    pub kind: u8,
    /// The name, without NUL.
    pub name: Vec<u8>,
}

impl DirEntry {
    /// Length of this entry's record: header, name, NUL, rounded up to 8.
    pub fn record_len(&self) -> usize {
        (NAME_OFFSET + self.name.len() + 1).next_multiple_of(8)
    }

    /// Appends the record with `d_off = offset` to `out`.
    fn encode(&self, offset: u64, out: &mut Vec<u8>) {
        let len = self.record_len();
        let start = out.len();
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&i64::try_from(offset).unwrap_or(i64::MAX).to_le_bytes());
        // Host names are at most a few hundred bytes (NAME_MAX), far below u16::MAX.
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
        out.push(self.kind);
        out.extend_from_slice(&self.name);
        out.resize(start + len, 0);
    }
}

/// Where a stream's entries come from.
#[derive(Debug)]
enum Source {
    /// A fixed list (a map-only directory), and the index of the next entry.
    Synthetic { entries: Vec<DirEntry>, next: usize },
    /// An open host directory.
    Host(HostDir),
}

impl Source {
    fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        match self {
            Self::Synthetic { entries, next } => {
                let entry = entries.get(*next).cloned();
                if entry.is_some() {
                    *next += 1;
                }
                Ok(entry)
            }
            Self::Host(dir) => dir.next_entry(),
        }
    }

    fn rewind(&mut self) {
        match self {
            Self::Synthetic { next, .. } => *next = 0,
            Self::Host(dir) => dir.rewind(),
        }
    }
}

/// The state of one open directory descriptor: its entries and its position.
#[derive(Debug)]
pub struct DirStream {
    source: Source,
    /// Bytes of records handed out (or skipped by a seek) since the start.
    position: u64,
    /// An entry already read from the source but not handed out yet.
    pending: Option<DirEntry>,
}

impl DirStream {
    /// A stream over a fixed list of entries.
    pub fn synthetic(entries: Vec<DirEntry>) -> Self {
        Self::new(Source::Synthetic { entries, next: 0 })
    }

    /// A stream over the open host directory `file` (which it takes over).
    pub fn host(file: File) -> io::Result<Self> {
        Ok(Self::new(Source::Host(HostDir::new(file)?)))
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            position: 0,
            pending: None,
        }
    }

    /// The host descriptor of a host directory stream.
    pub fn host_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.source {
            Source::Host(dir) => Some(dir.fd()),
            Source::Synthetic { .. } => None,
        }
    }

    fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        match self.pending.take() {
            Some(entry) => Ok(Some(entry)),
            None => self.source.next_entry(),
        }
    }

    /// The next records that fit into `buffer_len` bytes (at most [`MAX_GETDENTS_BYTES`]);
    /// `None` at the end of the directory; `EINVAL` if not even one record fits.
    pub fn getdents(&mut self, buffer_len: u64) -> Result<Option<Vec<u8>>, IsolationError> {
        let limit = usize::try_from(buffer_len.min(MAX_GETDENTS_BYTES)).unwrap_or(0);
        let mut out = Vec::new();
        loop {
            let entry = match self.next_entry() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(source) if out.is_empty() => {
                    return Err(IsolationError::ReadDirectory { source });
                }
                // Report what was read; the error shows up again on the next call.
                Err(_) => break,
            };
            let len = entry.record_len();
            if out.len() + len > limit {
                self.pending = Some(entry);
                if out.is_empty() {
                    return Err(IsolationError::BufferTooSmall {
                        needed: len,
                        available: buffer_len,
                    });
                }
                break;
            }
            self.position += len as u64;
            entry.encode(self.position, &mut out);
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Moves to a record boundary (see the module documentation); the new position.
    pub fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        let target = match to {
            SeekFrom::Start(target) => target,
            SeekFrom::Current(delta) => self
                .position
                .checked_add_signed(delta)
                .ok_or_else(invalid)?,
            SeekFrom::End(_) => return Err(invalid()),
        };
        if target == self.position {
            return Ok(target);
        }
        let old = self.position;
        if self.skip_to(target)? {
            return Ok(target);
        }
        // Back to where the stream was (best effort if the host directory changed meanwhile).
        let _ = self.skip_to(old);
        Err(invalid())
    }

    /// Moves to `target` by rewinding if needed and skipping whole records; whether the stream
    /// is exactly at `target` afterwards (else it stops at the last record boundary before it).
    fn skip_to(&mut self, target: u64) -> io::Result<bool> {
        if target < self.position {
            self.source.rewind();
            self.pending = None;
            self.position = 0;
        }
        while self.position < target {
            let Some(entry) = self.next_entry()? else {
                return Ok(false);
            };
            let len = entry.record_len() as u64;
            if self.position + len > target {
                self.pending = Some(entry);
                return Ok(false);
            }
            self.position += len;
        }
        Ok(true)
    }
}

/// An open host directory stream (`DIR *`), owning the descriptor it was made from.
#[derive(Debug)]
struct HostDir {
    dir: NonNull<libc::DIR>,
}

// SAFETY: a `DIR` stream is not tied to the thread that opened it; `HostDir` is only used through
// `&mut self` (in practice behind the `Mutex` of its `OpenFile`), so it is never used by two
// threads at once.
unsafe impl Send for HostDir {}

/// `DT_WHT` as the host numbers it: glibc's and macOS's `<dirent.h>` both say 14 (the libc crate
/// does not export it).
const HOST_DT_WHT: u8 = 14;

/// Linux `d_type` for a host `d_type`.
fn linux_d_type(host: u8) -> u8 {
    match host {
        libc::DT_FIFO => DT_FIFO,
        libc::DT_CHR => DT_CHR,
        libc::DT_DIR => DT_DIR,
        libc::DT_BLK => DT_BLK,
        libc::DT_REG => DT_REG,
        libc::DT_LNK => DT_LNK,
        libc::DT_SOCK => DT_SOCK,
        HOST_DT_WHT => DT_WHT,
        _ => DT_UNKNOWN,
    }
}

/// A host `mode_t` as `u32` (it is `u16` on macOS).
#[allow(
    clippy::useless_conversion,
    reason = "mode_t is u32 on Linux, u16 on macOS"
)]
fn host_mode(mode: libc::mode_t) -> u32 {
    mode.into()
}

/// Linux `d_type` for a host `st_mode`.
fn d_type_of_mode(mode: u32) -> u8 {
    let kind = mode & host_mode(libc::S_IFMT);
    [
        (libc::S_IFIFO, DT_FIFO),
        (libc::S_IFCHR, DT_CHR),
        (libc::S_IFDIR, DT_DIR),
        (libc::S_IFBLK, DT_BLK),
        (libc::S_IFREG, DT_REG),
        (libc::S_IFLNK, DT_LNK),
        (libc::S_IFSOCK, DT_SOCK),
    ]
    .into_iter()
    .find(|(host, _)| host_mode(*host) == kind)
    .map_or(DT_UNKNOWN, |(_, linux)| linux)
}

/// Linux `d_type` for a host file type.
pub fn d_type_of(file_type: fs::FileType) -> u8 {
    if file_type.is_dir() {
        DT_DIR
    } else if file_type.is_file() {
        DT_REG
    } else if file_type.is_symlink() {
        DT_LNK
    } else if file_type.is_char_device() {
        DT_CHR
    } else if file_type.is_block_device() {
        DT_BLK
    } else if file_type.is_fifo() {
        DT_FIFO
    } else if file_type.is_socket() {
        DT_SOCK
    } else {
        DT_UNKNOWN
    }
}

/// Sets this thread's `errno` to 0 (to tell the end of a directory from a `readdir` error).
fn clear_errno() {
    #[cfg(target_os = "linux")]
    // SAFETY: `__errno_location` returns a valid pointer to this thread's errno.
    unsafe {
        *libc::__errno_location() = 0;
    }
    #[cfg(target_os = "macos")]
    // SAFETY: `__error` returns a valid pointer to this thread's errno.
    unsafe {
        *libc::__error() = 0;
    }
}

impl HostDir {
    fn new(file: File) -> io::Result<Self> {
        let fd = file.into_raw_fd();
        // SAFETY: `fd` is an open descriptor we own; on success the stream owns it.
        let dir = unsafe { libc::fdopendir(fd) };
        match NonNull::new(dir) {
            Some(dir) => Ok(Self { dir }),
            None => {
                let error = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so `fd` is still ours alone; this closes it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Err(error)
            }
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `self.dir` is an open stream; `dirfd` only reads its descriptor number.
        let fd = unsafe { libc::dirfd(self.dir.as_ptr()) };
        // SAFETY: the descriptor stays open as long as the stream, which outlives the borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
    }

    fn rewind(&mut self) {
        // SAFETY: `self.dir` is an open stream, used by this thread only (`&mut self`).
        unsafe { libc::rewinddir(self.dir.as_ptr()) }
    }

    fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        clear_errno();
        // SAFETY: `self.dir` is an open stream, used by this thread only (`&mut self`).
        let entry = unsafe { libc::readdir(self.dir.as_ptr()) };
        if entry.is_null() {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) => Err(error),
            };
        }
        // SAFETY: a non-null result of readdir points to a valid dirent with a NUL-terminated
        // name, valid until the next readdir/rewinddir/closedir on this stream; everything is
        // copied out before that.
        let (ino, host_type, name) = unsafe {
            let entry = &*entry;
            (
                entry.d_ino,
                entry.d_type,
                CStr::from_ptr(entry.d_name.as_ptr()),
            )
        };
        let mut kind = linux_d_type(host_type);
        if kind == DT_UNKNOWN {
            kind = self.type_of(name);
        }
        Ok(Some(DirEntry {
            ino,
            kind,
            name: name.to_bytes().to_vec(),
        }))
    }

    /// The type of entry `name` by `fstatat` (without following a symlink), or unknown.
    fn type_of(&self, name: &CStr) -> u8 {
        let mut status = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the descriptor is open, `name` is NUL-terminated, `status` is writable memory
        // of the right type.
        let result = unsafe {
            libc::fstatat(
                libc::dirfd(self.dir.as_ptr()),
                name.as_ptr(),
                status.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if result != 0 {
            return DT_UNKNOWN;
        }
        // SAFETY: fstatat succeeded and filled `status`.
        let status = unsafe { status.assume_init() };
        d_type_of_mode(host_mode(status.st_mode))
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        // SAFETY: `self.dir` is an open stream that nothing uses after this; closing it also
        // closes its descriptor.
        unsafe {
            libc::closedir(self.dir.as_ptr());
        }
    }
}

/// One decoded `dirent64` record (for tests and debugging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedDirent {
    /// `d_ino`.
    pub ino: u64,
    /// `d_off`.
    pub off: i64,
    /// `d_reclen`.
    pub reclen: u16,
    /// `d_type`.
    pub kind: u8,
    /// The name (without NUL).
    pub name: Vec<u8>,
}

/// Decodes a buffer of `dirent64` records, checking lengths, alignment, the NUL and the zero
/// padding; `None` if the buffer is malformed.
pub fn decode_dirents(mut buffer: &[u8]) -> Option<Vec<DecodedDirent>> {
    let mut records = Vec::new();
    while !buffer.is_empty() {
        let ino = u64::from_le_bytes(buffer.get(0..8)?.try_into().ok()?);
        let off = i64::from_le_bytes(buffer.get(8..16)?.try_into().ok()?);
        let reclen = u16::from_le_bytes(buffer.get(16..18)?.try_into().ok()?);
        let kind = *buffer.get(18)?;
        let len = usize::from(reclen);
        if len % 8 != 0 || len <= NAME_OFFSET {
            return None;
        }
        let record = buffer.get(..len)?;
        let tail = record.get(NAME_OFFSET..)?;
        let nul = tail.iter().position(|&byte| byte == 0)?;
        if tail.get(nul..)?.iter().any(|&byte| byte != 0)
            || (NAME_OFFSET + nul + 1).next_multiple_of(8) != len
        {
            return None;
        }
        records.push(DecodedDirent {
            ino,
            off,
            reclen,
            kind,
            name: tail.get(..nul)?.to_vec(),
        });
        buffer = buffer.get(len..)?;
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(name: &str, kind: u8) -> DirEntry {
        DirEntry {
            ino: 1,
            kind,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn records_are_laid_out_like_dirent64() {
        let mut out = Vec::new();
        entry("a", DT_REG).encode(24, &mut out);
        assert_eq!(out.len(), 24);
        assert_eq!(&out[0..8], &1u64.to_le_bytes());
        assert_eq!(&out[8..16], &24i64.to_le_bytes());
        assert_eq!(&out[16..18], &24u16.to_le_bytes());
        assert_eq!(out[18], DT_REG);
        assert_eq!(&out[19..], b"a\0\0\0\0");
        // 19 + 5 + 1 = 25 → 32; 19 + 4 + 1 = 24 exactly.
        assert_eq!(entry("abcde", DT_DIR).record_len(), 32);
        assert_eq!(entry("abcd", DT_DIR).record_len(), 24);
        let decoded = decode_dirents(&out).unwrap();
        assert_eq!(decoded[0].name, b"a");
        assert!(decode_dirents(&out[..20]).is_none());
    }

    #[test]
    fn synthetic_streams_fill_buffers_with_whole_records() {
        let names = ["alpha", "b", "charlie-is-longer"];
        let mut stream =
            DirStream::synthetic(names.iter().map(|name| entry(name, DT_DIR)).collect());
        let lens: Vec<usize> = names
            .iter()
            .map(|name| entry(name, DT_DIR).record_len())
            .collect();
        // Too small for the first record: EINVAL, nothing consumed.
        let error = stream.getdents(lens[0] as u64 - 1).unwrap_err();
        assert_eq!(error.errno(), uhyve_interface::EINVAL);
        // Room for the first two but not the third.
        let buffer = stream
            .getdents((lens[0] + lens[1] + lens[2] - 1) as u64)
            .unwrap()
            .unwrap();
        let records = decode_dirents(&buffer).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].name, b"alpha");
        assert_eq!(records[0].off, lens[0] as i64);
        assert_eq!(records[1].off, (lens[0] + lens[1]) as i64);
        assert_eq!(
            stream.seek(SeekFrom::Current(0)).unwrap(),
            (lens[0] + lens[1]) as u64
        );
        let buffer = stream.getdents(u64::MAX).unwrap().unwrap();
        assert_eq!(
            decode_dirents(&buffer).unwrap()[0].name,
            names[2].as_bytes()
        );
        assert_eq!(stream.getdents(4096).unwrap(), None);
        assert_eq!(stream.getdents(0).unwrap(), None);

        // Seeking: back to a record boundary, not into a record, not past the end.
        assert_eq!(
            stream.seek(SeekFrom::Start(lens[0] as u64)).unwrap(),
            lens[0] as u64
        );
        let end = (lens[0] + lens[1] + lens[2]) as u64;
        for bad in [
            SeekFrom::Start(1),
            SeekFrom::Start(end + 8),
            SeekFrom::End(0),
            SeekFrom::Current(-1000),
        ] {
            let error = stream.seek(bad).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
            assert_eq!(stream.seek(SeekFrom::Current(0)).unwrap(), lens[0] as u64);
        }
        let records = decode_dirents(&stream.getdents(4096).unwrap().unwrap()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].name, b"b");
        assert_eq!(stream.seek(SeekFrom::Start(end)).unwrap(), end);
        assert_eq!(stream.seek(SeekFrom::Start(0)).unwrap(), 0);
        assert_eq!(
            decode_dirents(&stream.getdents(4096).unwrap().unwrap())
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn guest_buffer_lengths_are_capped() {
        let many: Vec<DirEntry> = (0..10_000)
            .map(|i| entry(&format!("entry-{i:05}"), DT_REG))
            .collect();
        let mut stream = DirStream::synthetic(many);
        let buffer = stream.getdents(u64::MAX).unwrap().unwrap();
        assert!(buffer.len() as u64 <= MAX_GETDENTS_BYTES);
        assert!(buffer.len() as u64 > MAX_GETDENTS_BYTES - 32);
    }

    #[test]
    fn host_directories_are_read_from_the_open_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
        let mut stream = DirStream::host(File::open(dir.path()).unwrap()).unwrap();
        // Renaming the directory does not matter: the stream reads the opened one.
        let moved = dir.path().with_extension("moved");
        fs::rename(dir.path(), &moved).unwrap();
        let mut seen = BTreeMap::new();
        while let Some(buffer) = stream.getdents(64).unwrap() {
            for record in decode_dirents(&buffer).unwrap() {
                let name = String::from_utf8(record.name).unwrap();
                assert!(seen.insert(name, record.kind).is_none());
            }
        }
        fs::rename(&moved, dir.path()).unwrap();
        let expected = BTreeMap::from([
            (".".to_owned(), DT_DIR),
            ("..".to_owned(), DT_DIR),
            ("file".to_owned(), DT_REG),
            ("link".to_owned(), DT_LNK),
            ("sub".to_owned(), DT_DIR),
        ]);
        assert_eq!(seen, expected);
        assert!(stream.host_fd().is_some());
    }

    #[test]
    fn host_types_are_translated() {
        assert_eq!(linux_d_type(libc::DT_REG), DT_REG);
        assert_eq!(linux_d_type(libc::DT_SOCK), DT_SOCK);
        assert_eq!(linux_d_type(99), DT_UNKNOWN);
        assert_eq!(d_type_of_mode(host_mode(libc::S_IFDIR) | 0o755), DT_DIR);
        assert_eq!(d_type_of_mode(host_mode(libc::S_IFLNK)), DT_LNK);
        assert_eq!(d_type_of_mode(0), DT_UNKNOWN);
        let null = fs::metadata("/dev/null").unwrap().file_type();
        assert_eq!(d_type_of(null), DT_CHR);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            d_type_of(fs::metadata(dir.path()).unwrap().file_type()),
            DT_DIR
        );
    }
}
