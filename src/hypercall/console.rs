//! The console calls: SerialWriteByte (the v1 Uart port) and SerialWriteBuffer of both tables,
//! and the v2/v3 SerialReadBuffer and SerialReadByte, which read the host's standard input. Their
//! buffers are guest-physical and there is no field to report an error in: a buffer outside guest
//! RAM stops the VM. A write is one unit on the console, even when copied in several chunks.

use std::io;

use uhyve_interface::GuestPhysAddr;
use uhyve_interface::v2::{HypercallAddressV2, SerialReadBufferParams};

use super::{CHUNK_SIZE, HypercallError, HypercallOutcome, Hypercalls, chunk_len, read_retrying};
use crate::mem::GuestMemory;

impl Hypercalls {
    /// SerialWriteByte (v1: the Uart port): the low byte of `argument` to the console.
    pub(super) fn serial_write_byte(
        &self,
        argument: u64,
    ) -> Result<HypercallOutcome, HypercallError> {
        self.output.write_byte(argument.to_le_bytes()[0]);
        Ok(HypercallOutcome::Continue)
    }

    /// Copies `len` bytes at guest-physical `buf` to the console as one unit. A range outside
    /// guest RAM stops the VM: the serial hypercalls have no field to report an error in.
    pub(super) fn write_console(
        &self,
        mem: &GuestMemory,
        hypercall: &'static str,
        buf: GuestPhysAddr,
        len: u64,
    ) -> Result<HypercallOutcome, HypercallError> {
        if len == 0 {
            // An empty buffer may carry any (dangling) address.
            return Ok(HypercallOutcome::Continue);
        }
        let outside = || HypercallError::BufferOutsideRam {
            hypercall,
            address: buf.as_u64(),
            len,
        };
        mem.checked_range(buf, len).map_err(|_| outside())?;
        // One call is one unit on the console, even if it is copied in several chunks.
        let mut console = self.output.writer();
        let mut chunk = vec![0u8; chunk_len(len)];
        let mut done = 0u64;
        while done < len {
            let step = (len - done).min(CHUNK_SIZE);
            let part = chunk.get_mut(..chunk_len(step)).ok_or_else(outside)?;
            let address = buf.checked_add(done).ok_or_else(outside)?;
            mem.read(address, part).map_err(|_| outside())?;
            console.write_all(part);
            done += step;
        }
        Ok(HypercallOutcome::Continue)
    }

    /// SerialReadBuffer: up to `maxlen` bytes of the host's standard input into the guest's
    /// buffer (blocking until some arrive); `len` = bytes read, 0 at the end of the input or on
    /// an error. A buffer outside guest RAM stops the VM (there is no error field).
    pub(super) fn serial_read_buffer(
        &self,
        mem: &GuestMemory,
        params: &mut SerialReadBufferParams,
    ) -> Result<(), HypercallError> {
        let (buf, maxlen) = (params.buf, params.maxlen.min(CHUNK_SIZE));
        params.len = 0;
        if maxlen == 0 {
            return Ok(());
        }
        mem.checked_range(buf, maxlen)
            .map_err(|_| HypercallError::BufferOutsideRam {
                hypercall: HypercallAddressV2::SerialReadBuffer.name(),
                address: buf.as_u64(),
                len: maxlen,
            })?;
        self.output.flush();
        let mut data = vec![0u8; chunk_len(maxlen)];
        match read_retrying(&mut io::stdin().lock(), &mut data, &self.stopping) {
            Ok(got) => {
                let got = got.min(data.len());
                // Inside the range checked above.
                let _ = mem.write(buf, &data[..got]);
                params.len = got as u64;
            }
            Err(error) => log::debug!("SerialReadBuffer: {error}"),
        }
        Ok(())
    }

    /// SerialReadByte (a read of its address): the next byte of standard input, or all ones at
    /// the end of the input or on an error.
    pub(super) fn serial_read_byte(&self) -> u64 {
        let mut byte = [0u8];
        self.output.flush();
        match read_retrying(&mut io::stdin().lock(), &mut byte, &self.stopping) {
            Ok(1) => return u64::from(byte[0]),
            Ok(_) => log::debug!("SerialReadByte: end of input"),
            Err(error) => log::debug!("SerialReadByte: {error}"),
        }
        u64::MAX
    }
}
