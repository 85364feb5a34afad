//! The v1 forms of FileLseek (−1 on any error) and of FileRead/FileWrite, whose buffers are
//! guest-virtual. Those are translated page by page through the calling vCPU's page tables (CR3
//! or TTBR0_EL1, asked for only when there is something to move) and moved in chunks of at most
//! [`CHUNK_SIZE`] through a per-thread host buffer; the length is capped at the size of guest
//! RAM. A read reports bytes or −errno (EFAULT if the first page is unmapped) in `ret`; a write
//! stops at the first problem and reports the bytes written in `len` (WriteParams has no result
//! field).
//!
//! The guest-virtual access is the section at the end. FileRead and FileWrite see only host
//! bytes, through [`copy_to_guest`] and [`copy_from_guest`]; below those, [`transfer`] moves the
//! chunks, each translated through the guest-virtual door ([`GuestVirtMemory::pieces`]: the
//! accessible prefix of the chunk).

use std::io::{self, SeekFrom};

use uhyve_interface::{
    self as abi, GuestPhysAddr, GuestVirtAddr, HypercallAddress, LseekParams, ReadParams,
    WriteParams,
};

use super::{AlignedBuffer, CHUNK_SIZE, HypercallError, Hypercalls, chunk_len, read_retrying};
use crate::arch::GuestPageTables;
use crate::hypervisor::VcpuError;
use crate::isolation::GuestFd;
use crate::mem::GuestMemory;
use crate::mem::virt::{GuestVirtMemory, Piece, read_pieces, write_pieces};

impl Hypercalls {
    /// FileLseek (v1): `offset` = the new offset or −1.
    pub(super) fn file_lseek(&self, params: &mut LseekParams) {
        params.offset = self
            .lseek(params.fd, params.offset, params.whence)
            .unwrap_or(-1);
    }

    /// Moves the offset of guest `fd`; `None` for a descriptor that is not an open file, a bad
    /// `whence`, a negative absolute offset or a host error.
    fn lseek(&self, fd: i32, offset: i64, whence: i32) -> Option<i64> {
        let file = self.fds.file(fd).ok()?;
        let position = match whence {
            abi::SEEK_SET => SeekFrom::Start(u64::try_from(offset).ok()?),
            abi::SEEK_CUR => SeekFrom::Current(offset),
            abi::SEEK_END => SeekFrom::End(offset),
            _ => return None,
        };
        let result = file.seek(position).ok()?;
        i64::try_from(result).ok()
    }

    /// FileRead (v1): reads into the guest-virtual buffer; `ret` = bytes or −errno.
    pub(super) fn file_read(
        &self,
        mem: &GuestMemory,
        params: &mut ReadParams,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<(), HypercallError> {
        params.ret = self.read(mem, params.fd, params.buf, params.len, page_table_root)?;
        Ok(())
    }

    /// Reads from guest `fd` into the guest-virtual buffer: bytes read or a negative errno.
    fn read(
        &self,
        mem: &GuestMemory,
        fd: i32,
        buf: GuestVirtAddr,
        len: u64,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<i64, HypercallError> {
        let file = match self.fds.get(fd) {
            Some(GuestFd::File(file)) => Some(file),
            Some(GuestFd::Stdin) => None,
            Some(GuestFd::Console) | None => return Ok(-i64::from(abi::EBADF)),
        };
        let total = len.min(mem.size());
        if total == 0 {
            return Ok(0);
        }
        let tables = self.page_tables(HypercallAddress::FileRead, page_table_root)?;
        if file.is_none() {
            // A prompt without a newline must be visible before the guest waits for input.
            self.output.flush();
        }
        let transferred = copy_to_guest(mem, tables, buf, total, |part, done| {
            let result = match &file {
                Some(file) => read_retrying(&mut &**file, part, &self.stopping),
                None => read_retrying(&mut io::stdin().lock(), part, &self.stopping),
            };
            match result {
                // Like read(2) on a terminal or pipe, stdin returns whatever one read delivered.
                Ok(got) => Ok((got, file.is_some())),
                Err(error) if done == 0 => {
                    log::debug!("FileRead fd {fd}: {error}");
                    Err(-i64::from(crate::isolation::guest_errno(&error)))
                }
                Err(_) => Ok((0, false)),
            }
        });
        Ok(match transferred {
            Err(errno) => errno,
            Ok(Transferred::Unmapped) => -i64::from(abi::EFAULT),
            Ok(Transferred::Bytes(done)) => i64::try_from(done).unwrap_or(i64::MAX),
        })
    }

    /// FileWrite (v1): writes the guest-virtual buffer; `len` = the bytes written.
    pub(super) fn file_write(
        &self,
        mem: &GuestMemory,
        params: &mut WriteParams,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<(), HypercallError> {
        params.len = self.write(mem, params.fd, params.buf, params.len, page_table_root)?;
        Ok(())
    }

    /// Writes the guest-virtual buffer to guest `fd`; the number of bytes written.
    fn write(
        &self,
        mem: &GuestMemory,
        fd: i32,
        buf: GuestVirtAddr,
        len: u64,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<u64, HypercallError> {
        let file = match self.fds.get(fd) {
            Some(GuestFd::File(file)) => Some(file),
            Some(GuestFd::Console) => None,
            Some(GuestFd::Stdin) | None => {
                log::debug!("FileWrite to fd {fd}, which is not open for writing");
                return Ok(0);
            }
        };
        let total = len.min(mem.size());
        if total == 0 {
            return Ok(0);
        }
        let tables = self.page_tables(HypercallAddress::FileWrite, page_table_root)?;
        // A write to the console is one unit on it, even if it is copied in several chunks.
        let mut console = file.is_none().then(|| self.output.writer());
        let transferred = copy_from_guest(mem, tables, buf, total, |part, _| {
            let written = match (&file, console.as_mut()) {
                (Some(file), _) => write_counting(file, part),
                (None, Some(console)) => {
                    console.write_all(part);
                    part.len()
                }
                (None, None) => 0,
            };
            Ok::<_, std::convert::Infallible>((written, true))
        });
        let done = match transferred {
            Ok(Transferred::Bytes(done)) => done,
            Ok(Transferred::Unmapped) | Err(_) => 0,
        };
        if done < len {
            log::debug!("FileWrite fd {fd}: wrote {done:#x} of {len:#x} bytes");
        }
        Ok(done)
    }
}

/// Writes as much of `data` as the file accepts; the number of bytes written.
fn write_counting(file: &crate::isolation::OpenFile, data: &[u8]) -> usize {
    let mut written = 0;
    while let Some(rest) = data.get(written..).filter(|rest| !rest.is_empty()) {
        match file.write(rest) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                log::debug!("FileWrite: {error}");
                break;
            }
        }
    }
    written
}

// ---- guest-virtual buffers ----

impl Hypercalls {
    /// The calling vCPU's current page tables.
    fn page_tables(
        &self,
        hypercall: HypercallAddress,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<GuestPageTables, HypercallError> {
        let root = page_table_root().map_err(|source| HypercallError::PageTableRoot {
            hypercall: hypercall.name(),
            source,
        })?;
        Ok(self.arch.page_tables(root))
    }
}

/// What a copy to or from a guest-virtual buffer moved.
enum Transferred {
    /// This many bytes (possibly fewer than asked for).
    Bytes(u64),
    /// Nothing: the first page of the buffer is not accessible.
    Unmapped,
}

/// Fills the guest-virtual buffer `[buf, buf + total)` from the host, one chunk of at most
/// [`CHUNK_SIZE`] bytes at a time: `fill` gets a host buffer as long as the chunk's accessible
/// prefix and the bytes moved so far, puts data at its start and returns how many bytes and
/// whether to go on; those bytes are copied into the guest. The copy ends at the end of the
/// buffer, at an inaccessible page, after a short fill, or when `fill` says so or fails.
fn copy_to_guest<E>(
    mem: &GuestMemory,
    tables: GuestPageTables,
    buf: GuestVirtAddr,
    total: u64,
    mut fill: impl FnMut(&mut [u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    transfer(mem, tables, buf, total, |pieces, part, done| {
        let (got, more) = fill(part, done)?;
        let data = part.get(..got).unwrap_or_default();
        if write_pieces(mem, pieces, data).is_err() {
            // Cannot happen (every piece was checked against RAM); report what arrived before.
            return Ok((0, false));
        }
        Ok((data.len(), more))
    })
}

/// Hands the guest-virtual buffer `[buf, buf + total)` to the host, one chunk of at most
/// [`CHUNK_SIZE`] bytes at a time: `drain` gets the chunk's accessible prefix and the bytes moved
/// so far, and returns how many of them it took and whether to go on. The copy ends as
/// [`copy_to_guest`] does.
fn copy_from_guest<E>(
    mem: &GuestMemory,
    tables: GuestPageTables,
    buf: GuestVirtAddr,
    total: u64,
    mut drain: impl FnMut(&[u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    transfer(mem, tables, buf, total, |pieces, part, done| {
        if read_pieces(mem, pieces, part).is_err() {
            return Ok((0, false));
        }
        drain(part, done)
    })
}

/// Moves data between the guest-virtual buffer `[buf, buf + total)` and the host in chunks of at
/// most [`CHUNK_SIZE`] bytes. Each chunk is translated page by page up to its first inaccessible
/// page; `step` gets its guest-physical pieces, a host buffer of the same size and the bytes moved
/// so far, and returns how many bytes it moved and whether to go on. The transfer ends at the end
/// of the buffer, at an inaccessible page, after a short step, or when `step` says so or fails.
fn transfer<E>(
    mem: &GuestMemory,
    tables: GuestPageTables,
    buf: GuestVirtAddr,
    total: u64,
    mut step: impl FnMut(&[Piece], &mut [u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    SCRATCH.with_borrow_mut(|host| transfer_with(mem, tables, buf, total, host, &mut step))
}

thread_local! {
    /// Each vCPU thread's host buffer for moving guest data in chunks: allocated once, not zeroed
    /// or freed per hypercall, page aligned (for `--io-mode host=direct`).
    static SCRATCH: std::cell::RefCell<AlignedBuffer> =
        std::cell::RefCell::new(AlignedBuffer::default());
}

fn transfer_with<E>(
    mem: &GuestMemory,
    tables: GuestPageTables,
    buf: GuestVirtAddr,
    total: u64,
    host: &mut AlignedBuffer,
    step: &mut impl FnMut(&[Piece], &mut [u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    let host = host.slice(chunk_len(total));
    let guest = GuestVirtMemory::new(mem, tables);
    let mut done = 0u64;
    while done < total {
        let want = (total - done).min(CHUNK_SIZE);
        let Some(vaddr) = buf.checked_add(done) else {
            break;
        };
        let chunk = guest.pieces(vaddr, want);
        if let Some(stop) = &chunk.stop {
            log::debug!("guest buffer not accessible: {stop}");
        }
        let mapped = chunk.covered();
        if mapped == 0 {
            if done == 0 {
                return Ok(Transferred::Unmapped);
            }
            break;
        }
        let Some(part) = host.get_mut(..chunk_len(mapped)) else {
            break;
        };
        let (moved, more) = step(&chunk.pieces, part, done)?;
        done += moved as u64;
        if !more || (moved as u64) < want {
            break;
        }
    }
    Ok(Transferred::Bytes(done))
}
