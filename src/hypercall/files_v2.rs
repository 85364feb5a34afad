//! The v2/v3 FileRead, FileWrite and FileLseek. Buffers are guest-physical: checked as one
//! range against guest RAM (outside it: EFAULT) and moved in chunks of at most
//! [`CHUNK_SIZE`](super::CHUNK_SIZE); results are the value or −errno.

use std::io::{self, SeekFrom};

use uhyve_interface::v2::{LseekParamsV2, ReadParamsV2, WriteParamsV2};
use uhyve_interface::{self as abi, GuestPhysAddr};

use super::{AlignedBuffer, Hypercalls, chunk_len, read_retrying};
use crate::isolation::GuestFd;
use crate::mem::GuestMemory;

impl Hypercalls {
    /// FileRead (v2/v3): reads into the guest-physical buffer; `ret` = bytes or −errno.
    pub(super) fn file_read_v2(&self, mem: &GuestMemory, params: &mut ReadParamsV2) {
        params.ret = count_or_errno(self.read_physical(mem, params.fd, params.buf, params.len));
    }

    /// Reads from guest `fd` into `[buf, buf + len)` (which must lie in guest RAM): bytes read
    /// (fewer at the end of the file; stdin returns what one read delivered) or an errno.
    fn read_physical(
        &self,
        mem: &GuestMemory,
        fd: i32,
        buf: GuestPhysAddr,
        len: u64,
    ) -> Result<u64, i32> {
        let file = match self.fds.get(fd) {
            Some(GuestFd::File(file)) => Some(file),
            Some(GuestFd::Stdin) => None,
            Some(GuestFd::Console) | None => return Err(abi::EBADF),
        };
        if len == 0 {
            return Ok(0);
        }
        mem.checked_range(buf, len).map_err(|_| abi::EFAULT)?;
        if file.is_none() {
            // A prompt without a newline must be visible before the guest waits for input.
            self.output.flush();
        }
        let mut buffer = AlignedBuffer::default();
        let chunk = buffer.slice(chunk_len(len));
        let mut done = 0u64;
        while done < len {
            let part = &mut chunk[..chunk_len(len - done)];
            let result = match &file {
                Some(file) => read_retrying(&mut &**file, part, &self.stopping),
                None => read_retrying(&mut io::stdin().lock(), part, &self.stopping),
            };
            let got = match result {
                Ok(got) => got.min(part.len()),
                Err(error) if done == 0 => return Err(crate::isolation::guest_errno(&error)),
                Err(_) => break,
            };
            // `buf + done` lies inside the range checked above.
            let at = GuestPhysAddr::new(buf.as_u64() + done);
            mem.write(at, &part[..got]).map_err(|_| abi::EFAULT)?;
            done += got as u64;
            if got < part.len() || file.is_none() {
                break;
            }
        }
        Ok(done)
    }

    /// FileWrite (v2/v3): writes the guest-physical buffer; `ret` = bytes or −errno.
    pub(super) fn file_write_v2(&self, mem: &GuestMemory, params: &mut WriteParamsV2) {
        params.ret = count_or_errno(self.write_physical(mem, params.fd, params.buf, params.len));
    }

    /// Writes `[buf, buf + len)` (which must lie in guest RAM) to guest `fd`: bytes written, or
    /// an errno if nothing could be written.
    fn write_physical(
        &self,
        mem: &GuestMemory,
        fd: i32,
        buf: GuestPhysAddr,
        len: u64,
    ) -> Result<u64, i32> {
        let file = match self.fds.get(fd) {
            Some(GuestFd::File(file)) => Some(file),
            Some(GuestFd::Console) => None,
            Some(GuestFd::Stdin) | None => return Err(abi::EBADF),
        };
        if len == 0 {
            return Ok(0);
        }
        mem.checked_range(buf, len).map_err(|_| abi::EFAULT)?;
        // A write to the console is one unit on it, even if it is copied in several chunks.
        let mut console = file.is_none().then(|| self.output.writer());
        let mut buffer = AlignedBuffer::default();
        let chunk = buffer.slice(chunk_len(len));
        let mut done = 0u64;
        while done < len {
            let part = &mut chunk[..chunk_len(len - done)];
            // `buf + done` lies inside the range checked above.
            mem.read(GuestPhysAddr::new(buf.as_u64() + done), part)
                .map_err(|_| abi::EFAULT)?;
            let written = match (&file, console.as_mut()) {
                (Some(file), _) => match file.write(part) {
                    Ok(written) => written,
                    Err(error) if done == 0 => return Err(crate::isolation::guest_errno(&error)),
                    Err(_) => 0,
                },
                (None, Some(console)) => {
                    console.write_all(part);
                    part.len()
                }
                (None, None) => 0,
            };
            done += written as u64;
            if written < part.len() {
                break;
            }
        }
        Ok(done)
    }

    /// FileLseek (v2/v3): `offset` = the new offset or −errno.
    pub(super) fn file_lseek_v2(&self, params: &mut LseekParamsV2) {
        params.offset = match self.lseek_errno(params.fd, params.offset, params.whence) {
            Ok(offset) => offset,
            Err(errno) => -i64::from(errno),
        };
    }

    /// lseek with an errno: EBADF for a descriptor that is not an open file, EINVAL for a bad
    /// `whence` or a negative result, the host's errno otherwise.
    fn lseek_errno(&self, fd: i32, offset: i64, whence: u32) -> Result<i64, i32> {
        let file = self.fds.file(fd).map_err(|error| error.errno())?;
        let position = match i32::try_from(whence) {
            Ok(abi::SEEK_SET) => SeekFrom::Start(u64::try_from(offset).map_err(|_| abi::EINVAL)?),
            Ok(abi::SEEK_CUR) => SeekFrom::Current(offset),
            Ok(abi::SEEK_END) => SeekFrom::End(offset),
            _ => return Err(abi::EINVAL),
        };
        let result = file
            .seek(position)
            .map_err(|error| crate::isolation::guest_errno(&error))?;
        i64::try_from(result).map_err(|_| abi::EOVERFLOW)
    }
}

/// A v2/v3 byte-count result: the count, or the negated errno.
fn count_or_errno(result: Result<u64, i32>) -> i64 {
    match result {
        Ok(done) => i64::try_from(done).unwrap_or(i64::MAX),
        Err(errno) => -i64::from(errno),
    }
}
