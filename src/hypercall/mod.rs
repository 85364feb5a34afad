//! The one hypercall dispatcher, for interfaces v1, v2 and v3, shared by every backend and vCPU.
//!
//! A backend turns a guest's hypercall into `(address, argument)` and calls
//! [`Hypercalls::handle`] (or [`Hypercalls::handle_read`] for a load from a hypercall address).
//! The image's interface version, fixed at start-up, picks the address table: v1 ports
//! 0x400–0x840 with packed structs, or the v2 table 0x1010–0x1190 with naturally aligned structs
//! (v3 adds Getdents, FileStat, FileFstat and Mkdir; a v2 guest cannot reach them). An address of
//! the other table is no hypercall and is ignored. For v1 every port except SerialWriteByte
//! passes the guest-physical address of its parameter struct (on x86_64 only the low 32 bits:
//! the guest passes it in EAX); for v2 the argument is a whole register. The struct is copied out
//! of guest RAM, the request is served, and results are copied back; the host never holds a
//! reference into guest memory.
//!
//! Guest input is hostile. A parameter struct, Cmdval slot or serial buffer outside guest RAM has
//! no field to report an error in, so it stops the VM ([`HypercallOutcome::Fatal`], with a message
//! naming the hypercall and the address). Everything else fails *inside* the guest: bad paths,
//! flags and file descriptors give an errno, unmapped buffers EFAULT (v1: −errno or −1 as
//! kernel 0.6.9 expects; v2/v3: −errno in `ret`, or an error tag with the errno). v1
//! FileRead/FileWrite buffers are guest-virtual: they are translated page by page through the
//! guest's page tables; v2/v3 buffers are guest-physical and checked as one range. Either way the
//! length is capped at the size of guest RAM and the data is moved in bounded chunks, so a huge
//! `len` or many virtual pages aliasing one frame cannot make the host allocate or loop without
//! bound. A v1 write that cannot be completed (bad fd, unmapped buffer, host error) stops and
//! reports the bytes actually written in `len` (v1 WriteParams has no result field; kernel 0.6.9
//! reads `len` back). Files are reached only through the [`FileMap`] and the guest's virtual
//! descriptors in the [`FdTable`].
//!
//! This file holds the server, the decoding per interface version, the two dispatch tables and
//! the parameter-block helpers: every call whose results go back into its parameter block is a
//! compute step run by `serve` (or `try_serve`, when the step itself may stop the VM), which
//! reads the block, runs the step and writes the block back. The calls themselves are served in
//! * `cmdline.rs`: [`GuestCommandLine`] and the v1 Cmdsize/Cmdval;
//! * `env_array.rs`: the terminating null old kernels leave out of their environment array;
//! * `console.rs`: SerialWriteByte, SerialWriteBuffer and the reads of standard input;
//! * `files.rs`: FileOpen, FileClose and FileUnlink, which both tables share, and guest paths;
//! * `files_v1.rs`: the v1 FileRead/FileWrite with guest-virtual buffers, and FileLseek;
//! * `files_v2.rs`: the v2/v3 FileRead/FileWrite with guest-physical buffers, and FileLseek;
//! * `files_v3.rs`: Getdents, FileStat, FileFstat and Mkdir.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use uhyve_interface::v2::{HypercallAddressV2, SerialWriteBufferParamsV2};
use uhyve_interface::{ExitParams, GuestPhysAddr, HypercallAddress, SerialWriteBufferParams};

use crate::arch::GuestArch;
use crate::hypervisor::VcpuError;
use crate::isolation::{FdTable, FileMap};
use crate::mem::{GuestMemory, GuestPod};
use crate::output::SerialOutput;

mod cmdline;
mod console;
mod env_array;
mod files;
mod files_v1;
mod files_v2;
mod files_v3;
#[cfg(test)]
mod tests;

use cmdline::CommandLineItems;
pub use cmdline::GuestCommandLine;

/// Longest path (without NUL) read from the guest.
pub const MAX_PATH_LEN: u64 = 4096;

/// Size of the host buffer through which file and console data is moved.
const CHUNK_SIZE: u64 = 64 * 1024;

/// A hypercall the VM cannot continue after.
#[derive(Debug, Error)]
pub enum HypercallError {
    /// The parameter struct does not lie entirely inside guest RAM.
    #[error("{hypercall}: parameter block at {address:#x} lies outside guest RAM")]
    ParamsOutsideRam {
        /// Name of the hypercall.
        hypercall: &'static str,
        /// Guest-physical address the guest passed.
        address: u64,
    },
    /// A guest-physical data buffer does not lie entirely inside guest RAM.
    #[error("{hypercall}: buffer at {address:#x} (length {len:#x}) lies outside guest RAM")]
    BufferOutsideRam {
        /// Name of the hypercall.
        hypercall: &'static str,
        /// Guest-physical address of the buffer.
        address: u64,
        /// Its length.
        len: u64,
    },
    /// A Cmdval pointer array entry or item buffer lies outside guest RAM.
    #[error("{hypercall}: {what} {index} at {address:#x} lies outside guest RAM")]
    SlotOutsideRam {
        /// Name of the hypercall.
        hypercall: &'static str,
        /// Which array and part ("argv array entry", "envp slot", …).
        what: &'static str,
        /// Item number.
        index: usize,
        /// The offending guest-physical address.
        address: u64,
    },
    /// The backend could not report the guest's page-table root.
    #[error("{hypercall}: cannot read the guest's page-table root: {source}")]
    PageTableRoot {
        /// Name of the hypercall.
        hypercall: &'static str,
        /// The backend's error.
        source: VcpuError,
    },
}

/// What the vCPU loop does after a hypercall.
#[derive(Debug)]
pub enum HypercallOutcome {
    /// Resume the guest.
    Continue,
    /// The guest asked to stop with this exit status.
    Exit(i32),
    /// Stop the VM with an error.
    Fatal(HypercallError),
}

/// The hypercall server of one VM; `Send + Sync`, shared by all vCPU threads.
#[derive(Debug)]
pub struct Hypercalls {
    /// The guest's architecture: argument width and page-table format.
    arch: GuestArch,
    output: Arc<SerialOutput>,
    // Field order matters: open files are closed (`fds` dropped) before the temp directory that
    // may hold them is removed (`files` dropped).
    fds: FdTable,
    files: FileMap,
    /// What Cmdsize announces and Cmdval writes.
    cmdline: CommandLineItems,
    net_warned: AtomicBool,
    /// Set when the VM stops: blocking host reads give up instead of retrying.
    stopping: AtomicBool,
    /// The image's interface version (1, 2 or 3): which address table and parameter layouts
    /// apply.
    interface: u32,
}

impl Hypercalls {
    /// A server for `arch` guests writing console output to `output`, resolving files through
    /// `files` and passing `cmdline` to Cmdsize/Cmdval.
    pub fn new(
        arch: GuestArch,
        output: Arc<SerialOutput>,
        files: FileMap,
        cmdline: GuestCommandLine,
    ) -> Self {
        Self {
            arch,
            output,
            files,
            fds: FdTable::new(),
            cmdline: CommandLineItems::new(&cmdline),
            net_warned: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            interface: 1,
        }
    }

    /// This server for a guest speaking interface `version` (1, 2 or 3; the loader accepts no
    /// other): the version picks the address table and the parameter layouts.
    pub fn with_interface(mut self, version: u32) -> Self {
        self.interface = version;
        self
    }

    /// The interface version this server speaks.
    pub fn interface(&self) -> u32 {
        self.interface
    }

    /// Tells hypercalls in progress that the VM is stopping: a read interrupted by the vCPU kick
    /// returns instead of waiting on, and console output to a stalled reader is given up.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.output.stop();
    }

    /// The guest architecture this server decodes for.
    pub fn arch(&self) -> GuestArch {
        self.arch
    }

    /// Serves one hypercall. `page_table_root` is called lazily (only FileRead/FileWrite need the
    /// guest's CR3 or TTBR0_EL1), at most once.
    pub fn handle(
        &self,
        mem: &GuestMemory,
        address: u16,
        argument: u64,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> HypercallOutcome {
        match self.decode(address) {
            Some(Decoded::V1(address)) => self.handle_v1(mem, address, argument, page_table_root),
            Some(Decoded::V2(address)) => self.handle_v2(mem, address, argument),
            None => {
                log::debug!(
                    "ignoring a write to {address:#x}, which is no hypercall of interface v{}",
                    self.interface
                );
                HypercallOutcome::Continue
            }
        }
    }

    /// What `address` means for this guest's interface version.
    fn decode(&self, address: u16) -> Option<Decoded> {
        if self.interface == 1 {
            return HypercallAddress::try_from(address).ok().map(Decoded::V1);
        }
        HypercallAddressV2::try_from(address)
            .ok()
            .filter(|known| known.since_version() <= self.interface)
            .map(Decoded::V2)
    }

    /// Serves a read of hypercall `address` (v2/v3 SerialReadByte): the value the guest reads
    /// (the next input byte; all ones at the end of the input or for any other address).
    pub fn handle_read(&self, address: u16, size: u8) -> u64 {
        if self.decode(address) == Some(Decoded::V2(HypercallAddressV2::SerialReadByte)) {
            return self.serial_read_byte();
        }
        log::debug!("read of {size} bytes from {address:#x}, which is no hypercall: all ones");
        u64::MAX
    }

    /// Serves interface v1 hypercall `address`: `argument` is the byte for SerialWriteByte (Uart)
    /// and the guest-physical address of the parameter block for everything else.
    fn handle_v1(
        &self,
        mem: &GuestMemory,
        address: HypercallAddress,
        argument: u64,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> HypercallOutcome {
        use HypercallAddress as H;
        let at = self.arch.parameter_address(argument);
        log::trace!("hypercall {} argument {argument:#x}", address.name());
        let result = match address {
            H::Uart => self.serial_write_byte(argument),
            H::Exit => read_params::<ExitParams>(mem, address, at)
                .map(|exit| HypercallOutcome::Exit(exit.arg)),
            H::SerialWriteBuffer => read_params::<SerialWriteBufferParams>(mem, address, at)
                .and_then(|p| self.write_console(mem, address.name(), p.buf, p.len)),
            H::Cmdsize => self.cmdline.cmdsize(mem, at),
            H::Cmdval => self.cmdline.cmdval(mem, at),
            H::FileOpen => serve(mem, address, at, |p| self.file_open(mem, p)),
            H::FileClose => serve(mem, address, at, |p| self.file_close(p)),
            H::FileRead => try_serve(mem, address, at, |p| {
                self.file_read(mem, p, page_table_root)
            }),
            H::FileWrite => try_serve(mem, address, at, |p| {
                self.file_write(mem, p, page_table_root)
            }),
            H::FileLseek => serve(mem, address, at, |p| self.file_lseek(p)),
            H::FileUnlink => serve(mem, address, at, |p| self.file_unlink(mem, p)),
            H::Netwrite | H::Netread | H::Netstat => {
                if !self.net_warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "ignoring the deprecated network hypercall {} (port {:#x})",
                        address.name(),
                        address.port()
                    );
                }
                Ok(HypercallOutcome::Continue)
            }
        };
        result.unwrap_or_else(HypercallOutcome::Fatal)
    }

    /// Serves interface v2/v3 hypercall `address`: `argument` is the exit code for Exit, the
    /// byte for SerialWriteByte, and the guest-physical address of the parameter block for
    /// everything else. Buffers inside parameter blocks are guest-physical; results are the
    /// value or a negative errno.
    fn handle_v2(
        &self,
        mem: &GuestMemory,
        address: HypercallAddressV2,
        argument: u64,
    ) -> HypercallOutcome {
        use HypercallAddressV2 as H;
        let at = GuestPhysAddr::new(argument);
        log::trace!(
            "hypercall {} (v{}) argument {argument:#x}",
            address.name(),
            self.interface
        );
        let result = match address {
            // The code is an i32 the guest zero-extended.
            H::Exit => Ok(HypercallOutcome::Exit(argument as u32 as i32)),
            H::SerialWriteByte => self.serial_write_byte(argument),
            H::SerialWriteBuffer => read_params::<SerialWriteBufferParamsV2>(mem, address, at)
                .and_then(|p| self.write_console(mem, address.name(), p.buf, p.len)),
            H::SerialReadBuffer => try_serve(mem, address, at, |p| self.serial_read_buffer(mem, p)),
            H::FileOpen => serve(mem, address, at, |p| self.file_open(mem, p)),
            H::FileClose => serve(mem, address, at, |p| self.file_close(p)),
            H::FileUnlink => serve(mem, address, at, |p| self.file_unlink(mem, p)),
            H::FileRead => serve(mem, address, at, |p| self.file_read_v2(mem, p)),
            H::FileWrite => serve(mem, address, at, |p| self.file_write_v2(mem, p)),
            H::FileLseek => serve(mem, address, at, |p| self.file_lseek_v2(p)),
            H::Getdents => serve(mem, address, at, |p| self.getdents(mem, p)),
            H::FileStat => serve(mem, address, at, |p| self.file_stat(mem, p)),
            H::FileFstat => serve(mem, address, at, |p| self.file_fstat(mem, p)),
            H::Mkdir => serve(mem, address, at, |p| self.mkdir(mem, p)),
            // Reads its address instead (see `handle_read`); a write carries nothing to serve.
            H::SerialReadByte | H::SharedMemOpen | H::SharedMemClose => {
                log::debug!(
                    "ignoring {} (write), which uhyve does not serve",
                    address.name()
                );
                Ok(HypercallOutcome::Continue)
            }
        };
        result.unwrap_or_else(HypercallOutcome::Fatal)
    }
}

/// A hypercall address of either address table, for error messages.
trait HypercallName: Copy {
    fn name(self) -> &'static str;
}

impl HypercallName for HypercallAddress {
    fn name(self) -> &'static str {
        HypercallAddress::name(self)
    }
}

impl HypercallName for HypercallAddressV2 {
    fn name(self) -> &'static str {
        HypercallAddressV2::name(self)
    }
}

/// Which table a guest's hypercall address was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoded {
    /// Interface v1.
    V1(HypercallAddress),
    /// Interface v2/v3.
    V2(HypercallAddressV2),
}

/// The `T` at `at`; outside guest RAM, the error that stops the VM.
fn read_params<T: GuestPod>(
    mem: &GuestMemory,
    hypercall: impl HypercallName,
    at: GuestPhysAddr,
) -> Result<T, HypercallError> {
    mem.read_obj(at)
        .map_err(|_| HypercallError::ParamsOutsideRam {
            hypercall: hypercall.name(),
            address: at.as_u64(),
        })
}

/// Serves a hypercall whose results go back into its parameter block: reads the `P` at `at`, lets
/// `compute` fill in the result fields and writes the block back. A block outside guest RAM stops
/// the VM ([`HypercallError::ParamsOutsideRam`], naming `hypercall`).
fn serve<P: GuestPod>(
    mem: &GuestMemory,
    hypercall: impl HypercallName,
    at: GuestPhysAddr,
    compute: impl FnOnce(&mut P),
) -> Result<HypercallOutcome, HypercallError> {
    try_serve(mem, hypercall, at, |params| {
        compute(params);
        Ok(())
    })
}

/// [`serve`] for a `compute` that may itself stop the VM; the block is then not written back.
fn try_serve<P: GuestPod>(
    mem: &GuestMemory,
    hypercall: impl HypercallName,
    at: GuestPhysAddr,
    compute: impl FnOnce(&mut P) -> Result<(), HypercallError>,
) -> Result<HypercallOutcome, HypercallError> {
    let mut params = read_params(mem, hypercall, at)?;
    compute(&mut params)?;
    write_params(mem, hypercall, at, &params)
}

/// Writes `value` back to `at` and lets the guest go on; outside guest RAM, the error that stops
/// the VM.
fn write_params<T: GuestPod>(
    mem: &GuestMemory,
    hypercall: impl HypercallName,
    at: GuestPhysAddr,
    value: &T,
) -> Result<HypercallOutcome, HypercallError> {
    mem.write_obj(at, value)
        .map_err(|_| HypercallError::ParamsOutsideRam {
            hypercall: hypercall.name(),
            address: at.as_u64(),
        })?;
    Ok(HypercallOutcome::Continue)
}

/// A host buffer length for at most [`CHUNK_SIZE`] bytes.
fn chunk_len(len: u64) -> usize {
    // At most CHUNK_SIZE (64 KiB), which fits every usize.
    len.min(CHUNK_SIZE) as usize
}

/// A host buffer for file data whose usable part starts on a page boundary: a host file opened
/// with `O_DIRECT` (`--io-mode host=direct`) accepts only transfers through such memory (of whole
/// blocks at block offsets, which the guest decides).
#[derive(Debug, Default)]
struct AlignedBuffer {
    bytes: Vec<u8>,
}

impl AlignedBuffer {
    /// The alignment of the usable part: a 4 KiB page, a multiple of every logical block size.
    const ALIGN: usize = 4096;

    /// The first `len` bytes of the usable part (at most [`CHUNK_SIZE`]; contents unspecified),
    /// growing the buffer if needed.
    fn slice(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(CHUNK_SIZE as usize);
        let needed = len + Self::ALIGN;
        if self.bytes.len() < needed {
            self.bytes.resize(needed, 0);
        }
        let address = self.bytes.as_ptr().addr();
        // Below ALIGN: the padding to the next page boundary, which `needed` leaves room for.
        let offset = address.next_multiple_of(Self::ALIGN) - address;
        &mut self.bytes[offset..offset + len]
    }
}

/// One `read`, retried when interrupted by a signal unless the VM is stopping (a read from a
/// terminal or pipe may block for ever; the vCPU kick interrupts it).
fn read_retrying(
    source: &mut impl Read,
    buffer: &mut [u8],
    stopping: &AtomicBool,
) -> io::Result<usize> {
    loop {
        match source.read(buffer) {
            Err(error)
                if error.kind() == io::ErrorKind::Interrupted
                    && !stopping.load(Ordering::SeqCst) =>
            {
                continue;
            }
            result => return result,
        }
    }
}
