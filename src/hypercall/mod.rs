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

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use uhyve_interface::{
    self as abi, CloseParams, CmdsizeParams, CmdvalParams, ExitParams, GuestPhysAddr,
    GuestVirtAddr, HypercallAddress, LseekParams, MAX_ARGC_ENVC, OpenParams, ReadParams,
    SerialWriteBufferParams, UnlinkParams, WriteParams,
};

use uhyve_interface::v2::{
    FileAttr, FstatParams, GETDENT_END_OF_DIRECTORY, GETDENT_ERROR, GETDENT_SUCCESS, GetdentParams,
    GetdentResult, HypercallAddressV2, LseekParamsV2, MkdirParams, ReadParamsV2, STAT_FOLLOW,
    STAT_NO_FOLLOW, STATUS_ERROR, STATUS_SUCCESS, SerialReadBufferParams,
    SerialWriteBufferParamsV2, StatParams, StatusResult, Timespec, WriteParamsV2,
};

use crate::arch::{GuestArch, PAGE_SIZE};
use crate::isolation::{FdTable, FileMap, GuestFd};
use crate::mem::{GuestMemory, GuestPod, MemoryError};
use crate::output::SerialOutput;
use crate::vcpu::VcpuError;

/// Longest path (without NUL) read from the guest.
pub const MAX_PATH_LEN: u64 = 4096;

/// Size of the host buffer through which file and console data is moved.
const CHUNK_SIZE: u64 = 64 * 1024;

/// What the guest's program sees as its command line: item 0 and the arguments for Cmdval, and the
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCommandLine {
    /// `[kernel path as given, application arguments…]`.
    pub args: Vec<OsString>,
    /// `KEY`/`VALUE` pairs, at most 128 (already capped by the caller).
    pub env: Vec<(OsString, OsString)>,
}

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
    /// What Cmdsize announces.
    sizes: CmdsizeParams,
    /// The argument items Cmdval writes, NUL included, exactly `sizes.argsz[k]` bytes each.
    arg_items: Vec<Vec<u8>>,
    /// The environment items (`KEY=VALUE\0`), exactly `sizes.envsz[k]` bytes each.
    env_items: Vec<Vec<u8>>,
    net_warned: AtomicBool,
    /// Set when the VM stops: blocking host reads give up instead of retrying.
    stopping: AtomicBool,
    /// The image's interface version (1, 2 or 3): which address table and parameter layouts
    /// apply.
    interface: u32,
}

/// The items `CmdsizeParams::update` keeps: those whose size fits an `i32`, at most 128.
fn announced_items(items: impl Iterator<Item = Vec<u8>>, sizes: &[i32]) -> Vec<Vec<u8>> {
    items
        .filter(|item| i32::try_from(item.len()).is_ok())
        .zip(sizes)
        .map(|(mut item, &size)| {
            // Equal by construction; truncating keeps "never more than announced" unconditional.
            item.truncate(usize::try_from(size).unwrap_or(0));
            item
        })
        .collect()
}

fn nul_terminated(parts: &[&OsStr]) -> Vec<u8> {
    let mut item: Vec<u8> = parts.iter().flat_map(|p| p.as_bytes()).copied().collect();
    item.push(0);
    item
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
        let (path, args) = match cmdline.args.split_first() {
            Some((path, args)) => (path.as_os_str(), args),
            None => (OsStr::new(""), &[][..]),
        };
        let mut sizes = CmdsizeParams::default();
        let (dropped_args, dropped_env) = sizes.update(path, args, &cmdline.env);
        if dropped_args > 0 || dropped_env > 0 {
            log::warn!(
                "the guest sees at most {MAX_ARGC_ENVC} arguments and environment entries: \
                 dropping {dropped_args} arguments and {dropped_env} environment entries"
            );
        }
        let (argsz, envsz) = (sizes.argsz, sizes.envsz);
        let argc = usize::try_from(sizes.argc).unwrap_or(0);
        let envc = usize::try_from(sizes.envc).unwrap_or(0);
        let arg_items = announced_items(
            std::iter::once(path)
                .chain(args.iter().map(OsString::as_os_str))
                .map(|arg| nul_terminated(&[arg])),
            argsz.get(..argc).unwrap_or_default(),
        );
        let env_items = announced_items(
            cmdline
                .env
                .iter()
                .map(|(key, value)| nul_terminated(&[key, OsStr::new("="), value])),
            envsz.get(..envc).unwrap_or_default(),
        );
        Self {
            arch,
            output,
            files,
            fds: FdTable::new(),
            sizes,
            arg_items,
            env_items,
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
    /// returns instead of waiting on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
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
            let mut byte = [0u8];
            self.output.flush();
            match read_retrying(&mut io::stdin().lock(), &mut byte, &self.stopping) {
                Ok(1) => return u64::from(byte[0]),
                Ok(_) => log::debug!("SerialReadByte: end of input"),
                Err(error) => log::debug!("SerialReadByte: {error}"),
            }
        } else {
            log::debug!("read of {size} bytes from {address:#x}, which is no hypercall: all ones");
        }
        u64::MAX
    }

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
            H::Uart => {
                self.output.write_byte(argument.to_le_bytes()[0]);
                Ok(HypercallOutcome::Continue)
            }
            H::Exit => read_params::<ExitParams>(mem, address, at)
                .map(|exit| HypercallOutcome::Exit(exit.arg)),
            H::SerialWriteBuffer => self.serial_write_buffer(mem, at),
            H::Cmdsize => write_params(mem, address, at, &self.sizes),
            H::Cmdval => self.cmdval(mem, at),
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

    fn serial_write_buffer(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::SerialWriteBuffer;
        let params: SerialWriteBufferParams = read_params(mem, HYPERCALL, at)?;
        self.write_console(mem, HYPERCALL.name(), params.buf, params.len)
    }

    /// Copies `len` bytes at guest-physical `buf` to the console as one unit. A range outside
    /// guest RAM stops the VM: the serial hypercalls have no field to report an error in.
    fn write_console(
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

    fn cmdval(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        let params: CmdvalParams = read_params(mem, HypercallAddress::Cmdval, at)?;
        let (argv, envp) = (params.argv, params.envp);
        fill_slots(
            mem,
            argv,
            &self.arg_items,
            ("argv array entry", "argv slot"),
        )?;
        fill_slots(
            mem,
            envp,
            &self.env_items,
            ("envp array entry", "envp slot"),
        )?;
        Ok(HypercallOutcome::Continue)
    }

    /// FileOpen (both tables): `ret` = the new guest fd or −errno.
    fn file_open(&self, mem: &GuestMemory, params: &mut OpenParams) {
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
    fn file_close(&self, params: &mut CloseParams) {
        params.ret = match self.fds.close(params.fd) {
            Ok(()) => 0,
            Err(error) => -error.errno(),
        };
    }

    /// FileLseek (v1): `offset` = the new offset or −1.
    fn file_lseek(&self, params: &mut LseekParams) {
        params.offset = self
            .lseek(params.fd, params.offset, params.whence)
            .unwrap_or(-1);
    }

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

    /// FileUnlink (both tables): `ret` = 0 or −errno.
    fn file_unlink(&self, mem: &GuestMemory, params: &mut UnlinkParams) {
        params.ret = match self.unlink(mem, params.name) {
            Ok(()) => 0,
            Err(errno) => -errno,
        };
    }

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

    /// FileRead (v1): reads into the guest-virtual buffer; `ret` = bytes or −errno.
    fn file_read(
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
        let transferred = transfer(mem, tables, buf, total, |pieces, part, done| {
            let result = match &file {
                Some(file) => read_retrying(&mut &**file, part, &self.stopping),
                None => read_retrying(&mut io::stdin().lock(), part, &self.stopping),
            };
            let got = match result {
                Ok(got) => got,
                Err(error) if done == 0 => {
                    log::debug!("FileRead fd {fd}: {error}");
                    return Err(-i64::from(crate::isolation::guest_errno(&error)));
                }
                Err(_) => return Ok((0, false)),
            };
            let data = part.get(..got).unwrap_or_default();
            if scatter(mem, pieces, data).is_err() {
                // Cannot happen (every piece was checked against RAM); report what arrived before.
                return Ok((0, false));
            }
            // Like read(2) on a terminal or pipe, stdin returns whatever one read delivered.
            Ok((data.len(), file.is_some()))
        });
        Ok(match transferred {
            Err(errno) => errno,
            Ok(Transferred::Unmapped) => -i64::from(abi::EFAULT),
            Ok(Transferred::Bytes(done)) => i64::try_from(done).unwrap_or(i64::MAX),
        })
    }

    /// FileWrite (v1): writes the guest-virtual buffer; `len` = the bytes written.
    fn file_write(
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
        let transferred = transfer(mem, tables, buf, total, |pieces, part, _| {
            if gather(mem, pieces, part).is_err() {
                return Ok::<_, std::convert::Infallible>((0, false));
            }
            let written = match (&file, console.as_mut()) {
                (Some(file), _) => write_counting(file, part),
                (None, Some(console)) => {
                    console.write_all(part);
                    part.len()
                }
                (None, None) => 0,
            };
            Ok((written, true))
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

impl Hypercalls {
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
            H::SerialWriteByte => {
                self.output.write_byte(argument.to_le_bytes()[0]);
                Ok(HypercallOutcome::Continue)
            }
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

    /// SerialReadBuffer: up to `maxlen` bytes of the host's standard input into the guest's
    /// buffer (blocking until some arrive); `len` = bytes read, 0 at the end of the input or on
    /// an error. A buffer outside guest RAM stops the VM (there is no error field).
    fn serial_read_buffer(
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
}

impl Hypercalls {
    /// FileRead (v2/v3): reads into the guest-physical buffer; `ret` = bytes or −errno.
    fn file_read_v2(&self, mem: &GuestMemory, params: &mut ReadParamsV2) {
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
        let mut chunk = vec![0u8; chunk_len(len)];
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
    fn file_write_v2(&self, mem: &GuestMemory, params: &mut WriteParamsV2) {
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
        let mut chunk = vec![0u8; chunk_len(len)];
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
    fn file_lseek_v2(&self, params: &mut LseekParamsV2) {
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

impl Hypercalls {
    /// Getdents (v3): the next directory entries of `fd` as `Dirent64` records in the
    /// guest-physical buffer.
    fn getdents(&self, mem: &GuestMemory, params: &mut GetdentParams) {
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
    fn file_stat(&self, mem: &GuestMemory, params: &mut StatParams) {
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
    fn file_fstat(&self, mem: &GuestMemory, params: &mut FstatParams) {
        let status = self
            .fds
            .file(params.fd)
            .and_then(|file| file.fstat())
            .map_err(|error| error.errno());
        params.ret = write_status(mem, params.attr, status);
    }

    /// Mkdir (v3): creates the directory at a guest path. `len` may count the NUL or not, so the
    /// NUL must come within `len + 1` bytes (and the path be at most [`MAX_PATH_LEN`] long).
    fn mkdir(&self, mem: &GuestMemory, params: &mut MkdirParams) {
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

    /// The UTF-8 guest path at `name` (NUL-terminated, at most [`MAX_PATH_LEN`] bytes).
    fn guest_path(&self, mem: &GuestMemory, name: GuestPhysAddr) -> Result<String, i32> {
        let bytes = mem
            .read_c_string(name, MAX_PATH_LEN)
            .map_err(|error| match error {
                MemoryError::Unterminated { .. } => abi::EINVAL,
                _ => abi::EFAULT,
            })?;
        String::from_utf8(bytes).map_err(|_| abi::EINVAL)
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

/// A v2/v3 byte-count result: the count, or the negated errno.
fn count_or_errno(result: Result<u64, i32>) -> i64 {
    match result {
        Ok(done) => i64::try_from(done).unwrap_or(i64::MAX),
        Err(errno) => -i64::from(errno),
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

/// The page tables through which a guest-virtual buffer is translated.
#[derive(Debug, Clone, Copy)]
struct GuestPageTables {
    /// Their format.
    arch: GuestArch,
    /// The root table (CR3 or TTBR0_EL1).
    root: GuestPhysAddr,
}

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
        Ok(GuestPageTables {
            arch: self.arch,
            root,
        })
    }
}

/// Writes item k into the buffer whose GPA is the k-th u64 of the array at `array`.
fn fill_slots(
    mem: &GuestMemory,
    array: GuestPhysAddr,
    items: &[Vec<u8>],
    (entry_what, slot_what): (&'static str, &'static str),
) -> Result<(), HypercallError> {
    for (index, item) in items.iter().enumerate() {
        let entry_error = |address| HypercallError::SlotOutsideRam {
            hypercall: HypercallAddress::Cmdval.name(),
            what: entry_what,
            index,
            address,
        };
        // index < 128, so index * 8 cannot overflow.
        let entry = array
            .checked_add(index as u64 * 8)
            .ok_or_else(|| entry_error(array.as_u64()))?;
        let slot: u64 = mem
            .read_obj(entry)
            .map_err(|_| entry_error(entry.as_u64()))?;
        mem.write(GuestPhysAddr::new(slot), item)
            .map_err(|_| HypercallError::SlotOutsideRam {
                hypercall: HypercallAddress::Cmdval.name(),
                what: slot_what,
                index,
                address: slot,
            })?;
    }
    Ok(())
}

/// A host buffer length for at most [`CHUNK_SIZE`] bytes.
fn chunk_len(len: u64) -> usize {
    // At most CHUNK_SIZE (64 KiB), which fits every usize.
    len.min(CHUNK_SIZE) as usize
}

/// What a [`transfer`] moved.
enum Transferred {
    /// This many bytes (possibly fewer than asked for).
    Bytes(u64),
    /// Nothing: the first page of the buffer is not accessible.
    Unmapped,
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
    mut step: impl FnMut(&[(GuestPhysAddr, u64)], &mut [u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    SCRATCH.with_borrow_mut(|host| transfer_with(mem, tables, buf, total, host, &mut step))
}

thread_local! {
    /// Each vCPU thread's host buffer for moving guest data in chunks: allocated once, not zeroed
    /// or freed per hypercall.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn transfer_with<E>(
    mem: &GuestMemory,
    tables: GuestPageTables,
    buf: GuestVirtAddr,
    total: u64,
    host: &mut Vec<u8>,
    step: &mut impl FnMut(&[(GuestPhysAddr, u64)], &mut [u8], u64) -> Result<(usize, bool), E>,
) -> Result<Transferred, E> {
    if host.len() < chunk_len(total) {
        host.resize(chunk_len(total), 0);
    }
    let mut done = 0u64;
    while done < total {
        let want = (total - done).min(CHUNK_SIZE);
        let Some(vaddr) = buf.checked_add(done) else {
            break;
        };
        let pieces = translate_prefix(mem, tables, vaddr, want);
        let mapped: u64 = pieces.iter().map(|&(_, piece_len)| piece_len).sum();
        if mapped == 0 {
            if done == 0 {
                return Ok(Transferred::Unmapped);
            }
            break;
        }
        let Some(part) = host.get_mut(..chunk_len(mapped)) else {
            break;
        };
        let (moved, more) = step(&pieces, part, done)?;
        done += moved as u64;
        if !more || (moved as u64) < want {
            break;
        }
    }
    Ok(Transferred::Bytes(done))
}

/// Translates the longest translatable prefix of `[vaddr, vaddr + len)`, one page at a time.
/// Every returned piece lies inside guest RAM; an empty result means the first page is unusable.
fn translate_prefix(
    mem: &GuestMemory,
    tables: GuestPageTables,
    vaddr: GuestVirtAddr,
    len: u64,
) -> Vec<(GuestPhysAddr, u64)> {
    let mut pieces = Vec::new();
    let mut done = 0u64;
    while done < len {
        let Some(page_start) = vaddr.checked_add(done) else {
            break;
        };
        let in_page = (PAGE_SIZE - page_start.as_u64() % PAGE_SIZE).min(len - done);
        match tables
            .arch
            .translate_range(mem, tables.root, page_start, in_page)
        {
            Ok(mut page) => pieces.append(&mut page),
            Err(error) => {
                log::debug!("guest buffer not accessible: {error}");
                break;
            }
        }
        done += in_page;
    }
    pieces
}

/// Copies `data` into the guest-physical pieces, in order, until `data` is used up.
fn scatter(
    mem: &GuestMemory,
    pieces: &[(GuestPhysAddr, u64)],
    data: &[u8],
) -> Result<(), MemoryError> {
    let mut rest = data;
    for &(address, piece_len) in pieces {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(rest.len().min(chunk_len(piece_len)));
        mem.write(address, head)?;
        rest = tail;
    }
    Ok(())
}

/// Fills `buffer` from the guest-physical pieces, in order.
fn gather(
    mem: &GuestMemory,
    pieces: &[(GuestPhysAddr, u64)],
    buffer: &mut [u8],
) -> Result<(), MemoryError> {
    let mut rest = buffer;
    for &(address, piece_len) in pieces {
        if rest.is_empty() {
            break;
        }
        let split = rest.len().min(chunk_len(piece_len));
        let (head, tail) = rest.split_at_mut(split);
        mem.read(address, head)?;
        rest = tail;
    }
    Ok(())
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

#[cfg(test)]
mod tests;
