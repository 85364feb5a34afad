//! The file-system calls interface v3 adds: Getdents, FileStat, FileFstat and Mkdir. Their
//! results are tagged (success, end of directory, or an error with its errno); attribute and
//! directory buffers are guest-physical, and one outside guest RAM is EFAULT.

use uhyve_interface::v2::{
    FileAttr, FstatParams, GETDENT_END_OF_DIRECTORY, GETDENT_ERROR, GETDENT_SUCCESS, GetdentParams,
    GetdentResult, MkdirParams, STAT_FOLLOW, STAT_NO_FOLLOW, STATUS_ERROR, STATUS_SUCCESS,
    StatParams, StatusResult, Timespec,
};
use uhyve_interface::{self as abi, GuestPhysAddr};

use super::{Hypercalls, MAX_PATH_LEN};
use crate::mem::{GuestMemory, MemoryError};

impl Hypercalls {
    /// Getdents (v3): the next directory entries of `fd` as `Dirent64` records in the
    /// guest-physical buffer.
    pub(super) fn getdents(&self, mem: &GuestMemory, params: &mut GetdentParams) {
        let (fd, buf, len) = (params.fd, params.buf, params.len);
        // Checked before the stream moves, so a bad buffer loses no entries; at most
        // MAX_GETDENTS_BYTES of it are ever written.
        let writable = len.min(crate::isolation::MAX_GETDENTS_BYTES);
        let outcome = self
            .fds
            .file(fd)
            .map_err(|error| error.errno())
            .and_then(|file| {
                if writable > 0 {
                    mem.checked_range(buf, writable).map_err(|_| abi::EFAULT)?;
                }
                file.getdents(len).map_err(|error| error.errno())
            })
            .and_then(|records| match records {
                None => Ok(None),
                Some(bytes) => {
                    mem.write(buf, &bytes).map_err(|_| abi::EFAULT)?;
                    Ok(Some(bytes.len() as u64))
                }
            });
        params.ret = match outcome {
            Ok(Some(written)) => GetdentResult {
                tag: GETDENT_SUCCESS,
                value: written,
                ..GetdentResult::default()
            },
            Ok(None) => GetdentResult {
                tag: GETDENT_END_OF_DIRECTORY,
                ..GetdentResult::default()
            },
            Err(errno) => GetdentResult {
                tag: GETDENT_ERROR,
                value: u64::from(errno as u32),
                ..GetdentResult::default()
            },
        };
    }

    /// FileStat (v3): metadata of a guest path, following symbolic links or not.
    pub(super) fn file_stat(&self, mem: &GuestMemory, params: &mut StatParams) {
        let (name, kind, attr) = (params.name, params.kind, params.attr);
        let status = match kind {
            STAT_FOLLOW | STAT_NO_FOLLOW => self.guest_path(mem, name).and_then(|path| {
                self.files
                    .stat(&path, kind == STAT_FOLLOW)
                    .map_err(|error| error.errno())
            }),
            _ => Err(abi::EINVAL),
        };
        params.ret = write_status(mem, attr, status);
    }

    /// FileFstat (v3): metadata of an open guest descriptor (fds 0–2: EBADF).
    pub(super) fn file_fstat(&self, mem: &GuestMemory, params: &mut FstatParams) {
        let status = self
            .fds
            .file(params.fd)
            .and_then(|file| file.fstat())
            .map_err(|error| error.errno());
        params.ret = write_status(mem, params.attr, status);
    }

    /// Mkdir (v3): creates the directory at a guest path. `len` may count the NUL or not, so the
    /// NUL must come within `len + 1` bytes (and the path be at most [`MAX_PATH_LEN`] long).
    pub(super) fn mkdir(&self, mem: &GuestMemory, params: &mut MkdirParams) {
        let limit = params.len.min(MAX_PATH_LEN);
        let created = mem
            .read_c_string(params.path, limit)
            .map_err(|error| match error {
                MemoryError::Unterminated { .. } => abi::EINVAL,
                _ => abi::EFAULT,
            })
            .and_then(|bytes| String::from_utf8(bytes).map_err(|_| abi::EINVAL))
            .and_then(|path| {
                self.files
                    .mkdir(&path, 0o777)
                    .map_err(|error| error.errno())
            });
        params.ret = match created {
            Ok(()) => StatusResult {
                tag: STATUS_SUCCESS,
                errno: 0,
            },
            Err(errno) => StatusResult {
                tag: STATUS_ERROR,
                errno,
            },
        };
    }
}

/// Writes `status` as a [`FileAttr`] to `attr` and returns the result to report: success, the
/// errno of a failed lookup, or EFAULT when `attr` lies outside guest RAM.
fn write_status(
    mem: &GuestMemory,
    attr: GuestPhysAddr,
    status: Result<crate::isolation::FileStatus, i32>,
) -> StatusResult {
    let error = |errno| StatusResult {
        tag: STATUS_ERROR,
        errno,
    };
    let status = match status {
        Ok(status) => status,
        Err(errno) => return error(errno),
    };
    let time = |t: crate::isolation::FileTime| Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as i32,
        _padding: 0,
    };
    let wire = FileAttr {
        st_dev: status.dev,
        st_ino: status.ino,
        st_nlink: status.nlink,
        st_mode: status.mode,
        st_uid: status.uid,
        st_gid: status.gid,
        _padding: 0,
        st_rdev: status.rdev,
        st_size: status.size,
        st_blksize: status.blksize,
        st_blocks: status.blocks,
        st_atim: time(status.atime),
        st_mtim: time(status.mtime),
        st_ctim: time(status.ctime),
    };
    match mem.write_obj(attr, &wire) {
        Ok(()) => StatusResult {
            tag: STATUS_SUCCESS,
            errno: 0,
        },
        Err(_) => error(abi::EFAULT),
    }
}
