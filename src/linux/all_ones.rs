//! Host memory that reads as all-ones, for guest-physical ranges where no device answers: a
//! KVM memory slot over it (read-only) lets the guest read such a range without an exit per
//! access, while its writes still exit to uhyve. The PCI configuration space of empty slots is
//! the use: Hermit's aarch64 kernels read the vendor id of all 8192 devices of 256 buses at
//! boot, which would otherwise be 8192 exits.
//!
//! However large the range, it costs one mebibyte: the same page-cache chunk of an anonymous
//! memory file (memfd), filled with 0xFF once, is mapped read-only again and again into one
//! contiguous reservation.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bytes mapped per `mmap` call: the memfd's size.
const CHUNK: usize = 1 << 20;

/// A read-only mapping of `len` bytes that all read 0xFF; unmapped on drop.
#[derive(Debug)]
pub struct AllOnes {
    address: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only host memory owned by this value; nothing in it is
// thread-bound, and it is only read (by KVM on the guest's behalf) while it exists.
unsafe impl Send for AllOnes {}
// SAFETY: as above; shared references give no way to write to it.
unsafe impl Sync for AllOnes {}

impl AllOnes {
    /// Maps `len` bytes (a multiple of 1 MiB) reading as all-ones.
    pub fn new(len: usize) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(CHUNK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an all-ones mapping is a non-zero multiple of 1 MiB",
            ));
        }
        let file = filled_memfd()?;
        // SAFETY: a new private reservation chosen by the kernel (address NULL), touching no
        // existing mapping; the result is checked below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Owned from here: an error below unmaps the whole reservation.
        let mapping = Self { address, len };
        for offset in (0..len).step_by(CHUNK) {
            // SAFETY: MAP_FIXED replaces 1 MiB of the reservation made above, which this value
            // owns and nothing else uses yet; the file is 1 MiB long.
            let chunk = unsafe {
                libc::mmap(
                    address.cast::<u8>().add(offset).cast(),
                    CHUNK,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if chunk == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(mapping)
    }

    /// The host address of the first byte.
    pub fn host_address(&self) -> u64 {
        self.address as u64
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// The mapped bytes.
    #[cfg(test)]
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `address`, mapped read-only for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.address.cast::<u8>(), self.len) }
    }
}

impl Drop for AllOnes {
    fn drop(&mut self) {
        // SAFETY: the whole reservation this value made and owns; nothing refers to it after
        // drop (the VM whose memory slot used it is gone first).
        unsafe { libc::munmap(self.address, self.len) };
    }
}

/// A memfd of [`CHUNK`] bytes of 0xFF.
fn filled_memfd() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"uhyve-all-ones".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0xff; CHUNK], 0)?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_reads_as_ones() {
        let mapping = AllOnes::new(4 * CHUNK).unwrap();
        assert_eq!(mapping.size(), 4 * CHUNK as u64);
        assert_eq!(mapping.host_address(), mapping.as_slice().as_ptr() as u64);
        assert!(mapping.as_slice().iter().all(|&byte| byte == 0xff));
    }

    #[test]
    fn a_length_that_is_not_whole_mebibytes_is_refused() {
        assert!(AllOnes::new(0).is_err());
        assert!(AllOnes::new(CHUNK + 4096).is_err());
    }

    #[test]
    fn a_large_mapping_costs_one_chunk() {
        // 255 MiB, as for 255 PCI buses: created quickly, and all of it reads as ones.
        let mapping = AllOnes::new(255 * CHUNK).unwrap();
        let bytes = mapping.as_slice();
        assert_eq!(bytes[0], 0xff);
        assert_eq!(bytes[bytes.len() - 1], 0xff);
        assert_eq!(bytes[200 * CHUNK + 12345], 0xff);
    }
}
