//! The per-VM table of guest file descriptors.
//!
//! The guest never sees host descriptor numbers. Guest fd 0 is the host's stdin, 1 and 2 are the
//! serial console; every opened file gets the next number from 3 upwards, and numbers are never
//! reused within a run (a stale fd held by one guest task can never reach another task's file).
//! Each open descriptor is an [`OpenFile`] (a host file or directory, a map-only directory or a
//! virtual file), which carries the operations the hypercalls need (read, write, seek, fstat,
//! getdents). The table is shared by all vCPU threads; a lookup hands out an `Arc<OpenFile>` and
//! releases the lock at once, so a slow read on one vCPU does not block the hypercalls of the
//! others, and a concurrent close only drops the table's reference.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::IsolationError;
use super::openfile::OpenFile;

/// The first descriptor number handed out for opened files.
pub const FIRST_FILE_FD: i32 = 3;

/// How many files a guest may hold open at once. Each is a host descriptor of the uhyve
/// process, so the cap keeps a guest well below the usual host limit (1024) and leaves uhyve
/// the descriptors it needs itself (e.g. to delete its temp directory at exit).
pub const MAX_OPEN_FILES: usize = 512;

/// What a guest file descriptor refers to.
#[derive(Debug, Clone)]
pub enum GuestFd {
    /// fd 0: the host's standard input.
    Stdin,
    /// fd 1 or 2: the serial console output.
    Console,
    /// An opened file or directory.
    File(Arc<OpenFile>),
}

#[derive(Debug)]
struct Table {
    files: HashMap<i32, Arc<OpenFile>>,
    /// The next number to hand out; `None` once every positive `i32` has been used.
    next: Option<i32>,
}

/// The guest's file descriptors; `Send + Sync`.
#[derive(Debug)]
pub struct FdTable {
    table: Mutex<Table>,
}

impl Default for FdTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FdTable {
    /// A table with only fds 0, 1 and 2.
    pub fn new() -> Self {
        Self {
            table: Mutex::new(Table {
                files: HashMap::new(),
                next: Some(FIRST_FILE_FD),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table is updated by single, non-panicking map operations, so it is consistent even
        // if a thread panicked while holding the lock.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `file` and returns its new guest fd (3, 4, 5, …).
    pub fn insert(&self, file: OpenFile) -> Result<i32, IsolationError> {
        let mut table = self.lock();
        if table.files.len() >= MAX_OPEN_FILES {
            return Err(IsolationError::TooManyOpenFiles);
        }
        let fd = table.next.ok_or(IsolationError::FdsExhausted)?;
        table.next = fd.checked_add(1);
        table.files.insert(fd, Arc::new(file));
        Ok(fd)
    }

    /// What `fd` refers to, if it is open.
    pub fn get(&self, fd: i32) -> Option<GuestFd> {
        match fd {
            0 => Some(GuestFd::Stdin),
            1 | 2 => Some(GuestFd::Console),
            _ => self.lock().files.get(&fd).cloned().map(GuestFd::File),
        }
    }

    /// The opened file behind `fd`. fds 0–2 (stdin and the console) and fds that are not open
    /// are `EBADF`.
    pub fn file(&self, fd: i32) -> Result<Arc<OpenFile>, IsolationError> {
        match self.get(fd) {
            Some(GuestFd::File(file)) => Ok(file),
            _ => Err(IsolationError::BadFd(fd)),
        }
    }

    /// Closes `fd`. Descriptors below 3 (0–2 and negative numbers) are left alone and succeed;
    /// an fd that is not open is an error. The host file is closed once no operation in flight
    /// still uses it.
    pub fn close(&self, fd: i32) -> Result<(), IsolationError> {
        if fd < FIRST_FILE_FD {
            return Ok(());
        }
        match self.lock().files.remove(&fd) {
            Some(_) => Ok(()),
            None => Err(IsolationError::BadFd(fd)),
        }
    }

    /// Number of opened files (not counting fds 0–2).
    pub fn open_files(&self) -> usize {
        self.lock().files.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_files_are_capped() {
        let table = FdTable::new();
        let open = || OpenFile::host("/null", File::open("/dev/null").unwrap()).unwrap();
        for _ in 0..MAX_OPEN_FILES {
            table.insert(open()).unwrap();
        }
        assert!(matches!(
            table.insert(open()),
            Err(IsolationError::TooManyOpenFiles)
        ));
        assert_eq!(
            IsolationError::TooManyOpenFiles.errno(),
            uhyve_interface::EMFILE
        );
        // Closing one makes room again, under a new number.
        table.close(FIRST_FILE_FD).unwrap();
        let fd = table.insert(open()).unwrap();
        assert_eq!(fd, FIRST_FILE_FD + MAX_OPEN_FILES as i32);
    }

    use super::*;
    use std::fs::File;

    fn scratch_file() -> OpenFile {
        OpenFile::host("/scratch", tempfile::tempfile().unwrap()).unwrap()
    }

    #[test]
    fn console_fds_are_preset() {
        let table = FdTable::new();
        assert!(matches!(table.get(0), Some(GuestFd::Stdin)));
        assert!(matches!(table.get(1), Some(GuestFd::Console)));
        assert!(matches!(table.get(2), Some(GuestFd::Console)));
        assert!(table.get(3).is_none());
        assert!(table.get(-1).is_none());
        assert!(matches!(table.file(1), Err(IsolationError::BadFd(1))));
    }

    #[test]
    fn numbers_count_up_and_are_never_reused() {
        let table = FdTable::new();
        assert_eq!(table.insert(scratch_file()).unwrap(), 3);
        assert_eq!(table.insert(scratch_file()).unwrap(), 4);
        table.close(3).unwrap();
        assert!(table.get(3).is_none());
        assert_eq!(table.insert(scratch_file()).unwrap(), 5);
        assert!(matches!(table.get(4), Some(GuestFd::File(_))));
        assert!(table.file(5).is_ok());
        assert_eq!(table.open_files(), 2);
    }

    #[test]
    fn closing_console_is_ignored_and_unknown_fds_fail() {
        let table = FdTable::new();
        for fd in [0, 1, 2, -1, i32::MIN] {
            assert!(table.close(fd).is_ok());
        }
        assert!(matches!(table.close(3), Err(IsolationError::BadFd(3))));
        let fd = table.insert(scratch_file()).unwrap();
        table.close(fd).unwrap();
        assert!(matches!(table.close(fd), Err(IsolationError::BadFd(_))));
        assert!(matches!(
            table.close(i32::MAX),
            Err(IsolationError::BadFd(_))
        ));
    }

    #[test]
    fn numbers_run_out_cleanly() {
        let table = FdTable::new();
        table.lock().next = Some(i32::MAX);
        assert_eq!(table.insert(scratch_file()).unwrap(), i32::MAX);
        assert!(matches!(
            table.insert(scratch_file()),
            Err(IsolationError::FdsExhausted)
        ));
    }

    #[test]
    fn a_file_in_use_survives_close() {
        use std::io::{Read, Seek, Write};
        let table = FdTable::new();
        let fd = table.insert(scratch_file()).unwrap();
        let file = table.file(fd).unwrap();
        table.close(fd).unwrap();
        (&*file).write_all(b"still open").unwrap();
        (&*file).rewind().unwrap();
        let mut text = String::new();
        (&*file).read_to_string(&mut text).unwrap();
        assert_eq!(text, "still open");
    }

    #[test]
    fn console_fds_have_no_file_operations() {
        let table = FdTable::new();
        for fd in [0, 1, 2, 3, -1] {
            let error = table.file(fd).unwrap_err();
            assert_eq!(error.errno(), uhyve_interface::EBADF, "fd {fd}");
        }
    }

    #[test]
    fn directory_fds_keep_their_own_positions() {
        let dir = tempfile::tempdir().unwrap();
        let open = || OpenFile::host("/d", File::open(dir.path()).unwrap()).unwrap();
        let table = FdTable::new();
        let (a, b) = (table.insert(open()).unwrap(), table.insert(open()).unwrap());
        let count = |fd| {
            let file = table.file(fd).unwrap();
            let mut records = 0;
            while let Some(buffer) = file.getdents(24).unwrap() {
                records += crate::isolation::dir::decode_dirents(&buffer)
                    .unwrap()
                    .len();
            }
            records
        };
        assert_eq!(count(a), 2, ". and ..");
        assert_eq!(count(a), 0);
        assert_eq!(count(b), 2);
        let status = table.file(a).unwrap().fstat().unwrap();
        assert_eq!(status.mode & 0o170000, crate::isolation::status::S_IFDIR);
    }
}
