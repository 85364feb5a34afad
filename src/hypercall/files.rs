//! The file calls both address tables share, with one parameter layout: FileOpen, FileClose and
//! FileUnlink (`ret` = a guest fd or 0, or −errno), and the reading of guest paths. Files are
//! reached only through the [`FileMap`](crate::isolation::FileMap) and the guest's descriptors in
//! the [`FdTable`](crate::isolation::FdTable).

use uhyve_interface::{self as abi, CloseParams, GuestPhysAddr, OpenParams, UnlinkParams};

use super::{Hypercalls, MAX_PATH_LEN};
use crate::mem::{GuestMemory, MemoryError};

impl Hypercalls {
    /// FileOpen (both tables): `ret` = the new guest fd or −errno.
    pub(super) fn file_open(&self, mem: &GuestMemory, params: &mut OpenParams) {
        params.ret = self
            .open(mem, params.name, params.flags, params.mode)
            .unwrap_or_else(|errno| -errno);
    }

    /// Opens the guest path at `name`; the new guest fd or a positive errno.
    fn open(
        &self,
        mem: &GuestMemory,
        name: GuestPhysAddr,
        flags: i32,
        mode: i32,
    ) -> Result<i32, i32> {
        let bytes = mem.read_c_string(name, MAX_PATH_LEN).map_err(|error| {
            log::debug!("FileOpen: bad path pointer: {error}");
            match error {
                MemoryError::Unterminated { .. } => abi::EINVAL,
                _ => abi::EFAULT,
            }
        })?;
        let path = std::str::from_utf8(&bytes).map_err(|_| abi::EINVAL)?;
        let file = self.files.open(path, flags, mode).map_err(|error| {
            log::debug!("FileOpen {path:?} flags {flags:#o}: {error}");
            error.errno()
        })?;
        let fd = self.fds.insert(file).map_err(|error| error.errno())?;
        log::debug!("FileOpen {path:?} flags {flags:#o} -> fd {fd}");
        Ok(fd)
    }

    /// FileClose (both tables): `ret` = 0 or −errno.
    pub(super) fn file_close(&self, params: &mut CloseParams) {
        params.ret = match self.fds.close(params.fd) {
            Ok(()) => 0,
            Err(error) => -error.errno(),
        };
    }

    /// FileUnlink (both tables): `ret` = 0 or −errno.
    pub(super) fn file_unlink(&self, mem: &GuestMemory, params: &mut UnlinkParams) {
        params.ret = match self.unlink(mem, params.name) {
            Ok(()) => 0,
            Err(errno) => -errno,
        };
    }

    /// Removes the guest path at `name`; a positive errno on failure.
    fn unlink(&self, mem: &GuestMemory, name: GuestPhysAddr) -> Result<(), i32> {
        let path = if self.interface == 1 {
            // Kernel 0.6.9 does not NUL-terminate the path: read up to a NUL, the limit or the
            // end of RAM.
            let bytes = mem
                .read_until_nul_or_end(name, MAX_PATH_LEN)
                .map_err(|_| abi::EFAULT)?;
            String::from_utf8(bytes).map_err(|_| abi::EINVAL)?
        } else {
            // v2/v3 kernels terminate their paths: as strict as every other path.
            self.guest_path(mem, name)?
        };
        let path = path.as_str();
        self.files.unlink(path).map_err(|error| {
            log::debug!("FileUnlink {path:?}: {error}");
            error.errno()
        })
    }

    /// The UTF-8 guest path at `name` (NUL-terminated, at most [`MAX_PATH_LEN`] bytes).
    pub(super) fn guest_path(&self, mem: &GuestMemory, name: GuestPhysAddr) -> Result<String, i32> {
        let bytes = mem
            .read_c_string(name, MAX_PATH_LEN)
            .map_err(|error| match error {
                MemoryError::Unterminated { .. } => abi::EINVAL,
                _ => abi::EFAULT,
            })?;
        String::from_utf8(bytes).map_err(|_| abi::EINVAL)
    }
}
