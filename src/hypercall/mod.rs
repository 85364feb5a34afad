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

    /// The file map (e.g. for sandbox rules or mount points).
    pub fn files(&self) -> &FileMap {
        &self.files
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
        let params = self.arch.parameter_address(argument);
        log::trace!("hypercall {} argument {argument:#x}", address.name());
        let result = match address {
            H::Uart => {
                self.output.write_byte(argument.to_le_bytes()[0]);
                Ok(HypercallOutcome::Continue)
            }
            H::Exit => read_params::<ExitParams>(mem, address, params)
                .map(|exit| HypercallOutcome::Exit(exit.arg)),
            H::SerialWriteBuffer => self.serial_write_buffer(mem, params),
            H::Cmdsize => write_params(mem, address, params, &self.sizes),
            H::Cmdval => self.cmdval(mem, params),
            H::FileOpen => self.file_open(mem, params),
            H::FileClose => self.file_close(mem, params),
            H::FileRead => self.file_read(mem, params, page_table_root),
            H::FileWrite => self.file_write(mem, params, page_table_root),
            H::FileLseek => self.file_lseek(mem, params),
            H::FileUnlink => self.file_unlink(mem, params),
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

    fn file_open(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileOpen;
        let mut params: OpenParams = read_params(mem, HYPERCALL, at)?;
        let (name, flags, mode) = (params.name, params.flags, params.mode);
        params.ret = match self.open(mem, name, flags, mode) {
            Ok(fd) => fd,
            Err(errno) => -errno,
        };
        write_params(mem, HYPERCALL, at, &params)
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

    fn file_close(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileClose;
        let mut params: CloseParams = read_params(mem, HYPERCALL, at)?;
        let fd = params.fd;
        params.ret = match self.fds.close(fd) {
            Ok(()) => 0,
            Err(error) => -error.errno(),
        };
        write_params(mem, HYPERCALL, at, &params)
    }

    fn file_lseek(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileLseek;
        let mut params: LseekParams = read_params(mem, HYPERCALL, at)?;
        let (fd, offset, whence) = (params.fd, params.offset, params.whence);
        params.offset = self.lseek(fd, offset, whence).unwrap_or(-1);
        write_params(mem, HYPERCALL, at, &params)
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

    fn file_unlink(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileUnlink;
        let mut params: UnlinkParams = read_params(mem, HYPERCALL, at)?;
        let name = params.name;
        params.ret = match self.unlink(mem, name) {
            Ok(()) => 0,
            Err(errno) => -errno,
        };
        write_params(mem, HYPERCALL, at, &params)
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

    fn file_read(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileRead;
        let mut params: ReadParams = read_params(mem, HYPERCALL, at)?;
        let (fd, buf, len) = (params.fd, params.buf, params.len);
        params.ret = self.read(mem, fd, buf, len, page_table_root)?;
        write_params(mem, HYPERCALL, at, &params)
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

    fn file_write(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
        page_table_root: &mut dyn FnMut() -> Result<GuestPhysAddr, VcpuError>,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddress = HypercallAddress::FileWrite;
        let mut params: WriteParams = read_params(mem, HYPERCALL, at)?;
        let (fd, buf, len) = (params.fd, params.buf, params.len);
        params.len = self.write(mem, fd, buf, len, page_table_root)?;
        write_params(mem, HYPERCALL, at, &params)
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
        let params = GuestPhysAddr::new(argument);
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
            H::SerialWriteBuffer => read_params::<SerialWriteBufferParamsV2>(mem, address, params)
                .and_then(|p| self.write_console(mem, address.name(), p.buf, p.len)),
            H::SerialReadBuffer => self.serial_read_buffer(mem, params),
            H::FileOpen => self.file_open(mem, params),
            H::FileClose => self.file_close(mem, params),
            H::FileUnlink => self.file_unlink(mem, params),
            H::FileRead => self.file_read_v2(mem, params),
            H::FileWrite => self.file_write_v2(mem, params),
            H::FileLseek => self.file_lseek_v2(mem, params),
            H::Getdents => self.getdents(mem, params),
            H::FileStat => self.file_stat(mem, params),
            H::FileFstat => self.file_fstat(mem, params),
            H::Mkdir => self.mkdir(mem, params),
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
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::SerialReadBuffer;
        let mut params: SerialReadBufferParams = read_params(mem, HYPERCALL, at)?;
        let (buf, maxlen) = (params.buf, params.maxlen.min(CHUNK_SIZE));
        params.len = 0;
        if maxlen > 0 {
            mem.checked_range(buf, maxlen)
                .map_err(|_| HypercallError::BufferOutsideRam {
                    hypercall: HYPERCALL.name(),
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
        }
        write_params(mem, HYPERCALL, at, &params)
    }
}

impl Hypercalls {
    /// FileRead (v2/v3): reads into the guest-physical buffer; `ret` = bytes or −errno.
    fn file_read_v2(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::FileRead;
        let mut params: ReadParamsV2 = read_params(mem, HYPERCALL, at)?;
        params.ret = count_or_errno(self.read_physical(mem, params.fd, params.buf, params.len));
        write_params(mem, HYPERCALL, at, &params)
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
    fn file_write_v2(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::FileWrite;
        let mut params: WriteParamsV2 = read_params(mem, HYPERCALL, at)?;
        params.ret = count_or_errno(self.write_physical(mem, params.fd, params.buf, params.len));
        write_params(mem, HYPERCALL, at, &params)
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
    fn file_lseek_v2(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::FileLseek;
        let mut params: LseekParamsV2 = read_params(mem, HYPERCALL, at)?;
        params.offset = match self.lseek_errno(params.fd, params.offset, params.whence) {
            Ok(offset) => offset,
            Err(errno) => -i64::from(errno),
        };
        write_params(mem, HYPERCALL, at, &params)
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
    fn getdents(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::Getdents;
        let mut params: GetdentParams = read_params(mem, HYPERCALL, at)?;
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
        write_params(mem, HYPERCALL, at, &params)
    }

    /// FileStat (v3): metadata of a guest path, following symbolic links or not.
    fn file_stat(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::FileStat;
        let mut params: StatParams = read_params(mem, HYPERCALL, at)?;
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
        write_params(mem, HYPERCALL, at, &params)
    }

    /// FileFstat (v3): metadata of an open guest descriptor (fds 0–2: EBADF).
    fn file_fstat(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::FileFstat;
        let mut params: FstatParams = read_params(mem, HYPERCALL, at)?;
        let status = self
            .fds
            .file(params.fd)
            .and_then(|file| file.fstat())
            .map_err(|error| error.errno());
        params.ret = write_status(mem, params.attr, status);
        write_params(mem, HYPERCALL, at, &params)
    }

    /// Mkdir (v3): creates the directory at a guest path. `len` may count the NUL or not, so the
    /// NUL must come within `len + 1` bytes (and the path be at most [`MAX_PATH_LEN`] long).
    fn mkdir(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        const HYPERCALL: HypercallAddressV2 = HypercallAddressV2::Mkdir;
        let mut params: MkdirParams = read_params(mem, HYPERCALL, at)?;
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
        write_params(mem, HYPERCALL, at, &params)
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
mod tests {
    use super::*;
    use crate::arch::x86_64::paging::{PTE_HUGE, PTE_PRESENT, PTE_WRITABLE};
    use crate::output::OutputTarget;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};
    use tempfile::TempDir;

    /// 4 MiB of guest RAM at GPA 0.
    const RAM: u64 = 4 << 20;
    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT (first 2 MiB, 4 KiB pages) at 0x4000.
    const ROOT: u64 = 0x1000;
    /// Parameter structs.
    const PARAMS: u64 = 0x10000;
    /// Path strings.
    const STRING: u64 = 0x11000;
    /// A buffer in the 2 MiB identity page at 2 MiB.
    const BUF: u64 = 0x30_0000;
    /// Virtual pages 0x100 and 0x101 map to the non-contiguous frames 0x150 and 0x140.
    const SPLIT_VA: u64 = 0x10_0000;
    const SPLIT_PA: [u64; 2] = [0x15_0000, 0x14_0000];
    /// Virtual page 0x120 is not present.
    const HOLE_VA: u64 = 0x12_0000;

    fn guest_memory() -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), RAM).unwrap();
        let entry = |at: u64, value: u64| mem.write_obj(GuestPhysAddr::new(at), &value).unwrap();
        let flags = PTE_PRESENT | PTE_WRITABLE;
        entry(ROOT, 0x2000 | flags);
        entry(0x2000, 0x3000 | flags);
        entry(0x3000, 0x4000 | flags);
        entry(0x3008, 0x20_0000 | flags | PTE_HUGE);
        for page in 0..512u64 {
            let frame = match page {
                0x100 => SPLIT_PA[0],
                0x101 => SPLIT_PA[1],
                0x120 => continue,
                _ => page * PAGE_SIZE,
            };
            entry(0x4000 + page * 8, frame | flags);
        }
        mem
    }

    struct Guest {
        mem: GuestMemory,
        calls: Hypercalls,
        output: Arc<SerialOutput>,
        console: PathBuf,
        mapped: TempDir,
        _console_dir: TempDir,
    }

    fn guest_with(cmdline: GuestCommandLine) -> Guest {
        let console_dir = tempfile::tempdir().unwrap();
        let console = console_dir.path().join("console");
        let output = Arc::new(SerialOutput::new(OutputTarget::File(console.clone())).unwrap());
        let mapped = tempfile::tempdir().unwrap();
        let files = FileMap::new(&[format!("{}:/root", mapped.path().display())], None).unwrap();
        Guest {
            mem: guest_memory(),
            calls: Hypercalls::new(GuestArch::X86_64, Arc::clone(&output), files, cmdline),
            output,
            console,
            mapped,
            _console_dir: console_dir,
        }
    }

    fn guest() -> Guest {
        guest_with(GuestCommandLine {
            args: vec!["/path/to/kernel".into(), "-v".into(), "hello".into()],
            env: vec![("A".into(), "1".into()), ("LONG".into(), "value".into())],
        })
    }

    fn pa(address: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(address)
    }

    fn is_continue(outcome: &HypercallOutcome) -> bool {
        matches!(outcome, HypercallOutcome::Continue)
    }

    impl Guest {
        fn call(&self, address: HypercallAddress, argument: u64) -> HypercallOutcome {
            self.calls
                .handle(&self.mem, address.port(), argument, &mut || Ok(pa(ROOT)))
        }

        fn call_ok<T: GuestPod>(&self, address: HypercallAddress, params: T) -> T {
            self.mem.write_obj(pa(PARAMS), &params).unwrap();
            let outcome = self.call(address, PARAMS);
            assert!(is_continue(&outcome), "{outcome:?}");
            self.mem.read_obj(pa(PARAMS)).unwrap()
        }

        fn console(&self) -> String {
            self.output.flush();
            String::from_utf8(std::fs::read(&self.console).unwrap()).unwrap()
        }

        fn put_string(&self, text: &[u8]) -> GuestPhysAddr {
            self.mem.write(pa(STRING), text).unwrap();
            self.mem
                .write(pa(STRING + text.len() as u64), &[0])
                .unwrap();
            pa(STRING)
        }

        fn open(&self, path: &str, flags: i32, mode: i32) -> i32 {
            let name = self.put_string(path.as_bytes());
            self.open_at(name, flags, mode)
        }

        fn open_at(&self, name: GuestPhysAddr, flags: i32, mode: i32) -> i32 {
            let params = OpenParams {
                name,
                flags,
                mode,
                ret: -1,
            };
            self.call_ok(HypercallAddress::FileOpen, params).ret
        }

        fn close(&self, fd: i32) -> i32 {
            self.call_ok(HypercallAddress::FileClose, CloseParams { fd, ret: -1 })
                .ret
        }

        fn write(&self, fd: i32, buf: u64, len: u64) -> u64 {
            let params = WriteParams {
                fd,
                buf: GuestVirtAddr::new(buf),
                len,
            };
            self.call_ok(HypercallAddress::FileWrite, params).len
        }

        fn read(&self, fd: i32, buf: u64, len: u64) -> i64 {
            let params = ReadParams {
                fd,
                buf: GuestVirtAddr::new(buf),
                len,
                ret: 0,
            };
            self.call_ok(HypercallAddress::FileRead, params).ret
        }

        fn lseek(&self, fd: i32, offset: i64, whence: i32) -> i64 {
            let params = LseekParams { fd, offset, whence };
            self.call_ok(HypercallAddress::FileLseek, params).offset
        }

        fn unlink_at(&self, name: GuestPhysAddr) -> i32 {
            let params = UnlinkParams { name, ret: -1 };
            self.call_ok(HypercallAddress::FileUnlink, params).ret
        }

        fn unlink(&self, path: &str) -> i32 {
            let name = self.put_string(path.as_bytes());
            self.unlink_at(name)
        }

        fn host(&self, name: &str) -> PathBuf {
            self.mapped.path().join(name)
        }

        fn bytes(&self, address: u64, len: usize) -> Vec<u8> {
            let mut bytes = vec![0; len];
            self.mem.read(pa(address), &mut bytes).unwrap();
            bytes
        }
    }

    #[test]
    fn hypercalls_are_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Hypercalls>();
        shared::<SerialOutput>();
    }

    #[test]
    fn serial_bytes_and_buffers_reach_the_output() {
        let g = guest();
        // Only the low byte of the port data counts.
        assert!(is_continue(&g.call(HypercallAddress::Uart, 0x1234_5641)));
        assert!(is_continue(
            &g.call(HypercallAddress::Uart, u64::from(b'\n'))
        ));
        g.mem.write(pa(0x20000), b"buffered\n").unwrap();
        let params = SerialWriteBufferParams {
            buf: pa(0x20000),
            len: 9,
        };
        g.call_ok(HypercallAddress::SerialWriteBuffer, params);
        assert_eq!(g.console(), "A\nbuffered\n");
    }

    #[test]
    fn serial_buffers_outside_ram_are_fatal() {
        let g = guest();
        for (buf, len) in [(RAM - 4, 8), (RAM, 1), (u64::MAX, 2), (0, u64::MAX)] {
            let params = SerialWriteBufferParams { buf: pa(buf), len };
            g.mem.write_obj(pa(PARAMS), &params).unwrap();
            match g.call(HypercallAddress::SerialWriteBuffer, PARAMS) {
                HypercallOutcome::Fatal(error) => {
                    let message = error.to_string();
                    assert!(
                        message.starts_with("SerialWriteBuffer: buffer at"),
                        "{message}"
                    );
                    assert!(message.contains(&format!("{buf:#x}")), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        let empty = SerialWriteBufferParams {
            buf: pa(u64::MAX),
            len: 0,
        };
        g.call_ok(HypercallAddress::SerialWriteBuffer, empty);
        assert_eq!(g.console(), "");
    }

    #[test]
    fn parameter_blocks_outside_ram_are_fatal() {
        let g = guest();
        let structured = HypercallAddress::ALL.into_iter().filter(|address| {
            !matches!(
                address,
                HypercallAddress::Uart
                    | HypercallAddress::Netwrite
                    | HypercallAddress::Netread
                    | HypercallAddress::Netstat
            )
        });
        for address in structured {
            // Straddling the end of RAM (every struct is at least 4 bytes) and far outside.
            for argument in [RAM - 2, 0xFFFF_F000] {
                match g.call(address, argument) {
                    HypercallOutcome::Fatal(error) => assert_eq!(
                        error.to_string(),
                        format!(
                            "{}: parameter block at {argument:#x} lies outside guest RAM",
                            address.name()
                        )
                    ),
                    other => panic!("{}: {other:?}", address.name()),
                }
            }
        }
    }

    #[test]
    fn only_the_low_32_bits_address_the_parameters() {
        let g = guest();
        g.mem.write_obj(pa(PARAMS), &ExitParams { arg: 7 }).unwrap();
        assert!(matches!(
            g.call(HypercallAddress::Exit, 0xdead_0000_0000 | PARAMS),
            HypercallOutcome::Exit(7)
        ));
    }

    #[test]
    fn exit_reports_the_status() {
        let g = guest();
        for status in [0, 42, -1] {
            g.mem
                .write_obj(pa(PARAMS), &ExitParams { arg: status })
                .unwrap();
            assert!(matches!(
                g.call(HypercallAddress::Exit, PARAMS),
                HypercallOutcome::Exit(s) if s == status
            ));
        }
    }

    #[test]
    fn network_ports_are_ignored() {
        let g = guest();
        for address in [
            HypercallAddress::Netwrite,
            HypercallAddress::Netread,
            HypercallAddress::Netstat,
        ] {
            assert!(is_continue(&g.call(address, 0xFFFF_FFFF)));
        }
    }

    /// Runs Cmdsize, places one 0x100-byte slot per item at `slots` (pre-filled with a canary)
    /// and runs Cmdval. Returns the sizes.
    fn cmdsize_then_cmdval(g: &Guest) -> CmdsizeParams {
        let sizes = g.call_ok(HypercallAddress::Cmdsize, CmdsizeParams::default());
        let (argc, envc) = (sizes.argc as u64, sizes.envc as u64);
        g.mem.write(pa(0x40000), &[0xAA; 0x10000]).unwrap();
        g.mem.write(pa(0x60000), &[0xAA; 0x10000]).unwrap();
        for k in 0..argc {
            g.mem
                .write_obj(pa(0x30000 + 8 * k), &(0x40000 + 0x100 * k))
                .unwrap();
        }
        for k in 0..envc {
            g.mem
                .write_obj(pa(0x38000 + 8 * k), &(0x60000 + 0x100 * k))
                .unwrap();
        }
        let params = CmdvalParams {
            argv: pa(0x30000),
            envp: pa(0x38000),
        };
        g.call_ok(HypercallAddress::Cmdval, params);
        sizes
    }

    #[test]
    fn cmdsize_and_cmdval_agree_and_respect_slot_sizes() {
        let g = guest();
        let sizes = cmdsize_then_cmdval(&g);
        let (argc, argsz, envc, envsz) = (sizes.argc, sizes.argsz, sizes.envc, sizes.envsz);
        assert_eq!(argc, 3);
        assert_eq!(&argsz[..3], &[16, 3, 6]);
        assert_eq!(envc, 2);
        assert_eq!(&envsz[..2], &[4, 11]);
        let expected_args: [&[u8]; 3] = [b"/path/to/kernel\0", b"-v\0", b"hello\0"];
        for (k, expected) in expected_args.iter().enumerate() {
            let slot = g.bytes(0x40000 + 0x100 * k as u64, 0x100);
            assert_eq!(&slot[..expected.len()], *expected);
            assert!(slot[expected.len()..].iter().all(|&b| b == 0xAA), "arg {k}");
        }
        let expected_env: [&[u8]; 2] = [b"A=1\0", b"LONG=value\0"];
        for (k, expected) in expected_env.iter().enumerate() {
            let slot = g.bytes(0x60000 + 0x100 * k as u64, 0x100);
            assert_eq!(&slot[..expected.len()], *expected);
            assert!(slot[expected.len()..].iter().all(|&b| b == 0xAA), "env {k}");
        }
        // Slots beyond the announced counts are untouched.
        assert!(g.bytes(0x40300, 0x100).iter().all(|&b| b == 0xAA));
        assert!(g.bytes(0x60200, 0x100).iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn cmdval_writes_only_the_announced_items() {
        let args: Vec<OsString> = (0..200).map(|i| format!("arg{i}").into()).collect();
        let g = guest_with(GuestCommandLine {
            args,
            env: Vec::new(),
        });
        let sizes = cmdsize_then_cmdval(&g);
        let (argc, envc) = (sizes.argc, sizes.envc);
        assert_eq!((argc, envc), (128, 0));
        assert_eq!(&g.bytes(0x40000 + 0x100 * 127, 8), b"arg127\0\xAA");
        assert!(
            g.bytes(0x40000 + 0x100 * 128, 0x100)
                .iter()
                .all(|&b| b == 0xAA)
        );
    }

    #[test]
    fn cmdval_pointers_outside_ram_are_fatal() {
        let g = guest();
        let run = |argv: u64, envp: u64| {
            let params = CmdvalParams {
                argv: pa(argv),
                envp: pa(envp),
            };
            g.mem.write_obj(pa(PARAMS), &params).unwrap();
            match g.call(HypercallAddress::Cmdval, PARAMS) {
                HypercallOutcome::Fatal(error) => error.to_string(),
                other => panic!("{other:?}"),
            }
        };
        // Argument array outside RAM, or straddling its end.
        assert!(run(RAM + 0x1000, 0x38000).contains("Cmdval: argv array entry 0 at 0x401000"));
        assert!(run(RAM - 12, 0x38000).contains("argv array entry 1"));
        assert!(run(u64::MAX - 7, 0x38000).contains("argv array entry"));
        // A slot pointer outside RAM, or a slot running past its end.
        g.mem.write_obj(pa(0x30000), &0x40000u64).unwrap();
        g.mem.write_obj(pa(0x30008), &(RAM - 2)).unwrap();
        assert!(run(0x30000, 0x38000).contains("Cmdval: argv slot 1 at 0x3ffffe"));
        g.mem.write_obj(pa(0x30008), &0x40100u64).unwrap();
        g.mem.write_obj(pa(0x30010), &0x40200u64).unwrap();
        g.mem.write_obj(pa(0x38000), &u64::MAX).unwrap();
        assert!(run(0x30000, 0x38000).contains("envp slot 0"));
    }

    #[test]
    fn files_in_a_mapped_directory() {
        let g = guest();
        let fd = g.open(
            "/root/f.txt",
            abi::O_RDWR | abi::O_CREAT | abi::O_TRUNC,
            0o644,
        );
        assert_eq!(fd, 3);
        g.mem.write(pa(BUF), b"hello world").unwrap();
        assert_eq!(g.write(fd, BUF, 11), 11);
        assert_eq!(std::fs::read(g.host("f.txt")).unwrap(), b"hello world");
        assert_eq!(g.lseek(fd, 6, abi::SEEK_SET), 6);
        assert_eq!(g.read(fd, BUF + 0x1000, 100), 5);
        assert_eq!(g.bytes(BUF + 0x1000, 5), b"world");
        assert_eq!(g.read(fd, BUF + 0x1000, 100), 0);
        assert_eq!(g.lseek(fd, -5, abi::SEEK_END), 6);
        assert_eq!(g.lseek(fd, 1, abi::SEEK_CUR), 7);
        assert_eq!(g.lseek(fd, -1, abi::SEEK_SET), -1);
        assert_eq!(g.lseek(fd, 0, 3), -1);
        assert_eq!(g.close(fd), 0);
        assert_eq!(g.close(fd), -abi::EBADF);
        // 0.6.9-era kernels send paths relative to the mount; fds are never reused.
        let fd = g.open("root/f.txt", abi::O_RDONLY, 0);
        assert_eq!(fd, 4);
        assert_eq!(g.read(fd, BUF, 5), 5);
        assert_eq!(g.bytes(BUF, 5), b"hello");
        assert_eq!(g.close(fd), 0);
        assert_eq!(
            g.open(
                "/root/f.txt",
                abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL,
                0o644
            ),
            -abi::EEXIST
        );
        assert_eq!(g.unlink("/root/f.txt"), 0);
        assert!(!g.host("f.txt").exists());
        assert_eq!(g.open("/root/f.txt", abi::O_RDONLY, 0), -abi::ENOENT);
        assert_eq!(g.unlink("/root/f.txt"), -abi::ENOENT);
        assert_eq!(g.open("/root", abi::O_WRONLY, 0), -abi::EISDIR);
        assert_eq!(
            g.open("/root/d", abi::O_CREAT | abi::O_DIRECTORY, 0o755),
            -abi::EINVAL
        );
    }

    #[test]
    fn buffers_spanning_non_contiguous_frames() {
        let g = guest();
        let fd = g.open("/root/split", abi::O_RDWR | abi::O_CREAT, 0o644);
        assert!(fd >= 3);
        // The virtual buffer [SPLIT_VA + 0xF00, + 0x200) lies in two frames, in reverse order.
        g.mem
            .write(pa(SPLIT_PA[0] + 0xF00), &[b'a'; 0x100])
            .unwrap();
        g.mem.write(pa(SPLIT_PA[1]), &[b'b'; 0x100]).unwrap();
        assert_eq!(g.write(fd, SPLIT_VA + 0xF00, 0x200), 0x200);
        let mut expected = vec![b'a'; 0x100];
        expected.extend_from_slice(&[b'b'; 0x100]);
        assert_eq!(std::fs::read(g.host("split")).unwrap(), expected);

        g.mem.write(pa(SPLIT_PA[0] + 0xF00), &[0; 0x100]).unwrap();
        g.mem.write(pa(SPLIT_PA[1]), &[0; 0x100]).unwrap();
        assert_eq!(g.lseek(fd, 0xC0, abi::SEEK_SET), 0xC0);
        assert_eq!(g.read(fd, SPLIT_VA + 0xFC0, 0x100), 0x100);
        assert_eq!(g.bytes(SPLIT_PA[0] + 0xFC0, 0x40), vec![b'a'; 0x40]);
        assert_eq!(g.bytes(SPLIT_PA[1], 0xC0), vec![b'b'; 0xC0]);
        assert_eq!(g.bytes(SPLIT_PA[1] + 0xC0, 0x40), vec![0; 0x40]);
        // The frames the identity map would have used are untouched.
        assert!(g.bytes(SPLIT_VA + 0xF00, 0x200).iter().all(|&b| b == 0));
    }

    #[test]
    fn unmapped_guest_paths_use_the_private_temp_dir() {
        let g = guest();
        let guest_path = format!("/tmp/uhyve-hypercall-test-{}-x", std::process::id());
        assert!(!Path::new(&guest_path).exists());
        assert_eq!(g.open(&guest_path, abi::O_RDONLY, 0), -abi::ENOENT);
        let fd = g.open(&guest_path, abi::O_WRONLY | abi::O_CREAT, 0o600);
        assert!(fd >= 3);
        g.mem.write(pa(BUF), b"private").unwrap();
        assert_eq!(g.write(fd, BUF, 7), 7);
        assert_eq!(g.close(fd), 0);
        assert!(
            !Path::new(&guest_path).exists(),
            "the host's /tmp was touched"
        );

        let fd = g.open(&guest_path, abi::O_RDONLY, 0);
        assert!(fd >= 3);
        assert_eq!(g.read(fd, BUF + 0x100, 64), 7);
        assert_eq!(g.bytes(BUF + 0x100, 7), b"private");
        assert_eq!(g.close(fd), 0);
        assert_eq!(g.unlink(&guest_path), 0);
        assert_eq!(g.open(&guest_path, abi::O_RDONLY, 0), -abi::ENOENT);
        assert_eq!(g.unlink(&guest_path), -abi::ENOENT);
        assert!(!Path::new(&guest_path).exists());
    }

    #[test]
    fn escapes_from_the_mapping_are_refused() {
        let g = guest();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        std::os::unix::fs::symlink(&secret, g.host("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), g.host("dirlink")).unwrap();
        let flags = abi::O_WRONLY | abi::O_TRUNC;
        assert_eq!(g.open("/root/link", flags, 0), -abi::EPERM);
        assert_eq!(g.open("/root/dirlink/secret", flags, 0), -abi::EPERM);
        assert_eq!(g.unlink("/root/dirlink/secret"), -abi::EPERM);
        let climb = format!("/root/../../..{}", secret.display());
        assert_eq!(g.open(&climb, flags, 0), -abi::EINVAL);
        let lexical = format!("/root/..{}", secret.display());
        assert_eq!(g.open(&lexical, flags, 0), -abi::ENOENT);
        assert_eq!(g.unlink(&lexical), -abi::ENOENT);
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
    }

    #[test]
    fn bad_file_descriptors() {
        let g = guest();
        for fd in [99, -1, 1, 2, i32::MIN] {
            assert_eq!(g.read(fd, BUF, 10), -i64::from(abi::EBADF), "read fd {fd}");
        }
        for fd in [99, -1, 0, i32::MAX] {
            assert_eq!(g.write(fd, BUF, 10), 0, "write fd {fd}");
            assert_eq!(g.lseek(fd, 0, abi::SEEK_SET), -1, "lseek fd {fd}");
        }
        assert_eq!(g.lseek(1, 0, abi::SEEK_CUR), -1);
        assert_eq!(g.close(99), -abi::EBADF);
        for fd in [0, 1, 2, -5] {
            assert_eq!(g.close(fd), 0);
        }
    }

    #[test]
    fn unmapped_buffers() {
        let g = guest();
        std::fs::write(g.host("data"), vec![b'd'; 0x3000]).unwrap();
        let fd = g.open("/root/data", abi::O_RDWR, 0);
        assert!(fd >= 3);
        for buf in [HOLE_VA, RAM + 0x1000, 0x8000_0000_0000, u64::MAX - 4] {
            assert_eq!(g.read(fd, buf, 16), -i64::from(abi::EFAULT), "{buf:#x}");
            assert_eq!(g.write(fd, buf, 16), 0, "{buf:#x}");
        }
        assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0, "nothing was consumed");
        // A buffer running into the hole: only the mapped prefix is used.
        assert_eq!(g.read(fd, HOLE_VA - 0x800, 0x1000), 0x800);
        assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0x800);
        assert_eq!(g.write(fd, HOLE_VA - 0x800, 0x1000), 0x800);
        assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0x1000);
        // A bad fd needs no page-table root, a good one does: a failing backend is fatal.
        let failing = &mut || {
            Err(VcpuError::Unexpected {
                operation: "get registers",
                detail: "test".into(),
            })
        };
        let params = ReadParams {
            fd: 99,
            buf: GuestVirtAddr::new(BUF),
            len: 16,
            ret: 0,
        };
        g.mem.write_obj(pa(PARAMS), &params).unwrap();
        let outcome = g
            .calls
            .handle(&g.mem, HypercallAddress::FileRead.port(), PARAMS, failing);
        assert!(is_continue(&outcome));
        g.mem
            .write_obj(pa(PARAMS), &ReadParams { fd, ..params })
            .unwrap();
        match g
            .calls
            .handle(&g.mem, HypercallAddress::FileRead.port(), PARAMS, failing)
        {
            HypercallOutcome::Fatal(error) => assert!(error.to_string().starts_with("FileRead:")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_lengths_return_quickly() {
        let g = guest();
        std::fs::write(g.host("small"), b"0123456789").unwrap();
        let start = Instant::now();
        let fd = g.open("/root/small", abi::O_RDWR, 0);
        assert_eq!(g.read(fd, BUF, u64::MAX), 10);
        assert_eq!(g.bytes(BUF, 10), b"0123456789");
        // Writes stop where the guest mapping ends (4 MiB) or at the RAM-size cap.
        assert_eq!(g.write(fd, RAM - 0x1000, u64::MAX), 0x1000);
        let written = g.write(fd, 0, u64::MAX);
        assert_eq!(written, HOLE_VA, "stops at the first unmapped page");
        assert_eq!(g.write(1, BUF, u64::MAX), RAM - BUF);
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn paths_at_the_end_of_ram_and_bad_strings() {
        let g = guest();
        // Unterminated up to the end of RAM, outside RAM, not UTF-8.
        g.mem.write(pa(RAM - 4), b"abcd").unwrap();
        assert_eq!(g.open_at(pa(RAM - 4), abi::O_RDONLY, 0), -abi::EINVAL);
        assert_eq!(g.open_at(pa(RAM), abi::O_RDONLY, 0), -abi::EFAULT);
        assert_eq!(g.open_at(pa(u64::MAX), abi::O_RDONLY, 0), -abi::EFAULT);
        assert_eq!(g.open("/root/\u{fffd}", abi::O_RDONLY, 0), -abi::ENOENT);
        let bad = g.put_string(b"/root/\xff\xfe");
        assert_eq!(g.open_at(bad, abi::O_RDONLY, 0), -abi::EINVAL);
        assert_eq!(g.unlink_at(bad), -abi::EINVAL);
        assert_eq!(g.unlink_at(pa(RAM)), -abi::EFAULT);
        assert_eq!(g.open("", abi::O_RDONLY, 0), -abi::ENOENT);

        // Kernel 0.6.9 sends unlink paths without NUL: read until the end of RAM.
        let fd = g.open("/root/zz", abi::O_WRONLY | abi::O_CREAT, 0o644);
        assert_eq!(g.close(fd), 0);
        g.mem.write(pa(RAM - 8), b"/root/zz").unwrap();
        assert_eq!(g.unlink_at(pa(RAM - 8)), 0);
        assert!(!g.host("zz").exists());
    }

    #[test]
    fn writes_to_fd_1_and_2_reach_the_console() {
        let g = guest();
        g.mem.write(pa(BUF), b"to stdout\nto stderr\n").unwrap();
        assert_eq!(g.write(1, BUF, 10), 10);
        assert_eq!(g.write(2, BUF + 10, 10), 10);
        // Spanning non-contiguous frames works for the console too.
        g.mem.write(pa(SPLIT_PA[0] + 0xFFE), b"ab").unwrap();
        g.mem.write(pa(SPLIT_PA[1]), b"c\n").unwrap();
        assert_eq!(g.write(1, SPLIT_VA + 0xFFE, 4), 4);
        assert_eq!(g.console(), "to stdout\nto stderr\nabc\n");
    }

    // ---- interface v2/v3 ----

    fn guest_v(version: u32) -> Guest {
        let mut g = guest();
        g.calls = std::mem::replace(
            &mut g.calls,
            Hypercalls::new(
                GuestArch::X86_64,
                Arc::clone(&g.output),
                FileMap::new(&[], None).unwrap(),
                GuestCommandLine::default(),
            ),
        )
        .with_interface(version);
        g
    }

    impl Guest {
        fn call_v2(&self, address: HypercallAddressV2, argument: u64) -> HypercallOutcome {
            self.calls
                .handle(&self.mem, address as u16, argument, &mut || {
                    panic!("v2 hypercalls take physical addresses")
                })
        }

        fn call_v2_ok<T: GuestPod>(&self, address: HypercallAddressV2, params: T) -> T {
            self.mem.write_obj(pa(PARAMS), &params).unwrap();
            let outcome = self.call_v2(address, PARAMS);
            assert!(is_continue(&outcome), "{outcome:?}");
            self.mem.read_obj(pa(PARAMS)).unwrap()
        }

        fn open_v2(&self, path: &str, flags: i32, mode: i32) -> i32 {
            let params = OpenParams {
                name: self.put_string(path.as_bytes()),
                flags,
                mode,
                ret: -1,
            };
            self.call_v2_ok(HypercallAddressV2::FileOpen, params).ret
        }

        fn write_v2(&self, fd: i32, buf: u64, len: u64) -> i64 {
            let params = WriteParamsV2 {
                fd,
                buf: pa(buf),
                len,
                ret: i64::MIN,
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::FileWrite, params).ret
        }

        fn read_v2(&self, fd: i32, buf: u64, len: u64) -> i64 {
            let params = ReadParamsV2 {
                fd,
                buf: pa(buf),
                len,
                ret: i64::MIN,
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::FileRead, params).ret
        }

        fn lseek_v2(&self, fd: i32, offset: i64, whence: u32) -> i64 {
            let params = LseekParamsV2 { fd, offset, whence };
            self.call_v2_ok(HypercallAddressV2::FileLseek, params)
                .offset
        }

        fn mkdir_v3(&self, path: &str) -> StatusResult {
            let params = MkdirParams {
                path: self.put_string(path.as_bytes()),
                len: path.len() as u64 + 1,
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::Mkdir, params).ret
        }

        fn getdents_v3(&self, fd: i32, buf: u64, len: u64) -> GetdentResult {
            let params = GetdentParams {
                fd,
                buf: pa(buf),
                len,
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::Getdents, params).ret
        }

        fn stat_v3(&self, path: &str, kind: u32, attr: u64) -> StatusResult {
            let params = StatParams {
                name: self.put_string(path.as_bytes()),
                kind,
                attr: pa(attr),
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::FileStat, params).ret
        }

        fn fstat_v3(&self, fd: i32, attr: u64) -> StatusResult {
            let params = FstatParams {
                fd,
                attr: pa(attr),
                ..Default::default()
            };
            self.call_v2_ok(HypercallAddressV2::FileFstat, params).ret
        }

        /// Names listed by Getdents on `fd`, read `chunk` bytes at a time, until the end.
        fn list_v3(&self, fd: i32, chunk: u64) -> Vec<String> {
            let mut names = Vec::new();
            loop {
                let result = self.getdents_v3(fd, BUF, chunk);
                match result.tag {
                    GETDENT_END_OF_DIRECTORY => return names,
                    GETDENT_SUCCESS => {
                        let bytes = self.bytes(BUF, result.value as usize);
                        let records = crate::isolation::dir::decode_dirents(&bytes).unwrap();
                        assert!(!records.is_empty());
                        names.extend(
                            records
                                .into_iter()
                                .map(|r| String::from_utf8(r.name).unwrap()),
                        );
                    }
                    _ => panic!("getdents failed: {result:?}"),
                }
            }
        }
    }

    const OK: StatusResult = StatusResult {
        tag: STATUS_SUCCESS,
        errno: 0,
    };

    fn failed(errno: i32) -> StatusResult {
        StatusResult {
            tag: STATUS_ERROR,
            errno,
        }
    }

    fn guest_v_mapped(version: u32) -> Guest {
        let mut g = guest_v(version);
        let files = FileMap::new(&[format!("{}:/root", g.mapped.path().display())], None).unwrap();
        g.calls = Hypercalls::new(
            GuestArch::X86_64,
            Arc::clone(&g.output),
            files,
            GuestCommandLine::default(),
        )
        .with_interface(version);
        g
    }

    #[test]
    fn v2_exit_takes_the_code_from_the_register_and_console_calls_use_physical_buffers() {
        let g = guest_v(2);
        assert!(matches!(
            g.call_v2(HypercallAddressV2::Exit, 0xFFFF_FFFF),
            HypercallOutcome::Exit(-1)
        ));
        assert!(matches!(
            g.call_v2(HypercallAddressV2::Exit, 3),
            HypercallOutcome::Exit(3)
        ));
        assert!(is_continue(
            &g.call_v2(HypercallAddressV2::SerialWriteByte, 0x141)
        ));
        g.mem.write(pa(BUF), b"bc\n").unwrap();
        let buffer = SerialWriteBufferParamsV2 {
            buf: pa(BUF),
            len: 3,
        };
        g.call_v2_ok(HypercallAddressV2::SerialWriteBuffer, buffer);
        assert_eq!(g.console(), "Abc\n");

        // No error field: a buffer outside RAM stops the VM, naming the hypercall.
        for (buf, len) in [(RAM - 2, 3), (u64::MAX, 2)] {
            let bad = SerialWriteBufferParamsV2 { buf: pa(buf), len };
            g.mem.write_obj(pa(PARAMS), &bad).unwrap();
            match g.call_v2(HypercallAddressV2::SerialWriteBuffer, PARAMS) {
                HypercallOutcome::Fatal(error) => {
                    assert!(error.to_string().contains("SerialWriteBuffer"), "{error}")
                }
                other => panic!("{other:?}"),
            }
        }
        // A parameter block outside RAM stops the VM too.
        assert!(matches!(
            g.call_v2(HypercallAddressV2::SerialWriteBuffer, RAM - 8),
            HypercallOutcome::Fatal(HypercallError::ParamsOutsideRam { .. })
        ));
        assert!(matches!(
            g.call_v2(HypercallAddressV2::FileRead, u64::MAX),
            HypercallOutcome::Fatal(HypercallError::ParamsOutsideRam { .. })
        ));
    }

    #[test]
    fn each_version_knows_only_its_own_addresses() {
        // A v1 port on a v2 guest, a v2 address on a v1 guest, and the v3-only calls on a v2
        // guest are ignored: the parameter block stays as it was.
        let v2 = guest_v_mapped(2);
        let untouched = MkdirParams {
            path: v2.put_string(b"/root/d"),
            len: 8,
            ret: StatusResult { tag: 77, errno: 77 },
        };
        for address in [
            HypercallAddressV2::Mkdir,
            HypercallAddressV2::Getdents,
            HypercallAddressV2::FileStat,
            HypercallAddressV2::FileFstat,
        ] {
            let after = v2.call_v2_ok(address, untouched);
            assert_eq!(after.ret, untouched.ret, "{}", address.name());
        }
        assert!(!v2.host("d").exists());
        assert!(is_continue(&v2.call(HypercallAddress::Exit, PARAMS)));
        assert!(is_continue(&v2.calls.handle(
            &v2.mem,
            0x1234,
            0,
            &mut || { unreachable!() }
        )));

        let v1 = guest();
        assert!(is_continue(&v1.call_v2(HypercallAddressV2::Exit, 1)));
        let v3 = guest_v_mapped(3);
        let mkdir = MkdirParams {
            path: v3.put_string(b"/root/d"),
            ..untouched
        };
        assert_eq!(v3.call_v2_ok(HypercallAddressV2::Mkdir, mkdir).ret, OK);
        assert!(v3.host("d").is_dir());
        // Reads of anything but SerialReadByte give all ones.
        assert_eq!(
            v3.calls.handle_read(HypercallAddressV2::Exit as u16, 1),
            u64::MAX
        );
        assert_eq!(v1.calls.handle_read(0x1018, 4), u64::MAX);
    }

    #[test]
    fn v2_files_read_write_and_seek_through_physical_buffers_with_negative_errnos() {
        let g = guest_v_mapped(2);
        let fd = g.open_v2("/root/f", abi::O_RDWR | abi::O_CREAT, 0o644);
        assert!(fd > 2, "{fd}");
        // A buffer straddling the non-contiguous frames of SPLIT_VA is no problem: it is physical.
        g.mem.write(pa(SPLIT_PA[1]), b"0123456789").unwrap();
        assert_eq!(g.write_v2(fd, SPLIT_PA[1], 10), 10);
        assert_eq!(std::fs::read(g.host("f")).unwrap(), b"0123456789");
        assert_eq!(g.lseek_v2(fd, 2, abi::SEEK_SET as u32), 2);
        assert_eq!(g.read_v2(fd, BUF, 4), 4);
        assert_eq!(g.bytes(BUF, 4), b"2345");
        assert_eq!(g.lseek_v2(fd, -1, abi::SEEK_END as u32), 9);
        assert_eq!(g.read_v2(fd, BUF, 100), 1);
        assert_eq!(g.read_v2(fd, BUF, 100), 0);
        assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_CUR as u32), 10);

        // Errors come back as -errno, and nothing outside RAM is touched.
        assert_eq!(g.read_v2(fd, RAM - 2, 4), -i64::from(abi::EFAULT));
        assert_eq!(g.write_v2(fd, u64::MAX - 1, 4), -i64::from(abi::EFAULT));
        assert_eq!(g.read_v2(99, BUF, 4), -i64::from(abi::EBADF));
        assert_eq!(g.write_v2(0, BUF, 4), -i64::from(abi::EBADF));
        assert_eq!(g.read_v2(1, BUF, 4), -i64::from(abi::EBADF));
        assert_eq!(
            g.lseek_v2(fd, -20, abi::SEEK_SET as u32),
            -i64::from(abi::EINVAL)
        );
        assert_eq!(g.lseek_v2(fd, 0, 7), -i64::from(abi::EINVAL));
        assert_eq!(g.lseek_v2(fd, 0, u32::MAX), -i64::from(abi::EINVAL));
        assert_eq!(g.lseek_v2(1, 0, 0), -i64::from(abi::EBADF));
        // A zero-length transfer may carry any address.
        assert_eq!(g.read_v2(fd, u64::MAX, 0), 0);

        // Console writes through fd 1.
        g.mem.write(pa(BUF), b"out\n").unwrap();
        assert_eq!(g.write_v2(1, BUF, 4), 4);
        assert_eq!(g.console(), "out\n");

        let close = g.call_v2_ok(HypercallAddressV2::FileClose, CloseParams { fd, ret: -1 });
        assert_eq!({ close.ret }, 0);
        assert_eq!(g.read_v2(fd, BUF, 1), -i64::from(abi::EBADF));
        let name = g.put_string(b"/root/f");
        let unlink = g.call_v2_ok(
            HypercallAddressV2::FileUnlink,
            UnlinkParams { name, ret: -1 },
        );
        assert_eq!({ unlink.ret }, 0);
        assert!(!g.host("f").exists());
        assert_eq!(
            g.open_v2("/elsewhere/../root/f", abi::O_RDONLY, 0),
            -abi::ENOENT
        );
        // Only v1 reads an unlink path up to the end of RAM (kernel 0.6.9 sends no NUL).
        g.mem.write(pa(RAM - 8), b"/root/zz").unwrap();
        let unlink = UnlinkParams {
            name: pa(RAM - 8),
            ret: -1,
        };
        let unlink = g.call_v2_ok(HypercallAddressV2::FileUnlink, unlink);
        assert_eq!({ unlink.ret }, -abi::EINVAL);
    }

    #[test]
    fn v3_mkdir_and_getdents_list_directories_in_pieces() {
        let g = guest_v_mapped(3);
        assert_eq!(g.mkdir_v3("/root/dir"), OK);
        assert_eq!(g.mkdir_v3("/root/dir"), failed(abi::EEXIST));
        assert_eq!(g.mkdir_v3("/root/missing/dir"), failed(abi::ENOENT));
        assert!(g.host("dir").is_dir());
        for index in 0..20 {
            std::fs::write(g.host(&format!("dir/file-{index:02}")), b"x").unwrap();
        }
        let fd = g.open_v2("/root/dir", abi::O_RDONLY | abi::O_DIRECTORY, 0);
        assert!(fd > 2, "{fd}");
        // 64-byte pieces hold about two records each: every name comes exactly once.
        let mut names = g.list_v3(fd, 64);
        names.sort();
        let mut expected: Vec<String> = (0..20).map(|i| format!("file-{i:02}")).collect();
        expected.extend([".".into(), "..".into()]);
        expected.sort();
        assert_eq!(names, expected);
        // Rewinding starts the listing again.
        assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_SET as u32), 0);
        assert_eq!(g.list_v3(fd, 1 << 20).len(), 22);

        // Errors: a buffer too small for one record, a buffer outside RAM, no directory, bad fd.
        assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_SET as u32), 0);
        let error = |errno: i32| GetdentResult {
            tag: GETDENT_ERROR,
            value: errno as u64,
            ..Default::default()
        };
        assert_eq!(g.getdents_v3(fd, BUF, 8), error(abi::EINVAL));
        assert_eq!(g.getdents_v3(fd, RAM - 16, 4096), error(abi::EFAULT));
        assert_eq!(g.getdents_v3(fd, u64::MAX - 8, 4096), error(abi::EFAULT));
        assert_eq!(g.getdents_v3(99, BUF, 4096), error(abi::EBADF));
        assert_eq!(g.getdents_v3(1, BUF, 4096), error(abi::EBADF));
        let file = g.open_v2("/root/dir/file-00", abi::O_RDONLY, 0);
        assert_eq!(g.getdents_v3(file, BUF, 4096), error(abi::ENOTDIR));
        // A directory is no file to read.
        assert_eq!(g.read_v2(fd, BUF, 16), -i64::from(abi::EISDIR));

        // The guest root lists the mount points.
        let root = g.open_v2("/", abi::O_RDONLY | abi::O_DIRECTORY, 0);
        assert_eq!(g.list_v3(root, 4096), ["root"]);

        // Mkdir paths: `len` counts the NUL or not, but a longer string is refused; the path
        // must lie inside RAM.
        let params = MkdirParams {
            path: g.put_string(b"/root/y"),
            len: 7,
            ..Default::default()
        };
        assert_eq!(g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret, OK);
        assert!(g.host("y").is_dir());
        let params = MkdirParams {
            path: g.put_string(b"/root/x"),
            len: 6,
            ..Default::default()
        };
        let ret = g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret;
        assert_eq!(ret, failed(abi::EINVAL));
        for outside in [RAM, u64::MAX] {
            let params = MkdirParams {
                path: pa(outside),
                len: 100,
                ..Default::default()
            };
            let ret = g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret;
            assert_eq!(ret, failed(abi::EFAULT));
        }
        assert!(!g.host("x").exists());
    }

    #[test]
    fn v3_stat_and_fstat_fill_the_file_attributes() {
        let g = guest_v_mapped(3);
        std::fs::write(g.host("data"), vec![7u8; 5000]).unwrap();
        std::os::unix::fs::symlink("data", g.host("link")).unwrap();
        const ATTR: u64 = BUF + 0x1000;
        let attr = || g.mem.read_obj::<FileAttr>(pa(ATTR)).unwrap();

        assert_eq!(g.stat_v3("/root/link", STAT_FOLLOW, ATTR), OK);
        let followed = attr();
        assert_eq!(followed.st_size, 5000);
        assert_eq!(followed.st_mode & 0o170000, 0o100000);
        assert_eq!(followed.st_nlink, 1);
        let host = std::fs::metadata(g.host("data")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(followed.st_ino, host.ino());
        assert_eq!(followed.st_mtim.tv_sec, host.mtime());
        assert_eq!(i64::from(followed.st_mtim.tv_nsec), host.mtime_nsec());

        assert_eq!(g.stat_v3("/root/link", STAT_NO_FOLLOW, ATTR), OK);
        assert_eq!(attr().st_mode & 0o170000, 0o120000);
        assert_eq!(g.stat_v3("/root", STAT_FOLLOW, ATTR), OK);
        assert_eq!(attr().st_mode & 0o170000, 0o040000);
        assert_eq!(g.stat_v3("/", STAT_FOLLOW, ATTR), OK);
        assert_eq!(attr().st_mode & 0o170000, 0o040000);

        let fd = g.open_v2("/root/data", abi::O_RDONLY, 0);
        g.mem.write(pa(ATTR), &[0u8; 120]).unwrap();
        assert_eq!(g.fstat_v3(fd, ATTR), OK);
        assert_eq!(attr(), followed);

        // Errors: no such path, a bad kind, attributes outside RAM, bad descriptors.
        assert_eq!(
            g.stat_v3("/root/none", STAT_FOLLOW, ATTR),
            failed(abi::ENOENT)
        );
        assert_eq!(
            g.stat_v3("/elsewhere", STAT_FOLLOW, ATTR),
            failed(abi::ENOENT)
        );
        assert_eq!(g.stat_v3("/root/data", 2, ATTR), failed(abi::EINVAL));
        assert_eq!(
            g.stat_v3("/root/data", STAT_FOLLOW, RAM - 8),
            failed(abi::EFAULT)
        );
        assert_eq!(g.fstat_v3(fd, u64::MAX - 4), failed(abi::EFAULT));
        assert_eq!(g.fstat_v3(99, ATTR), failed(abi::EBADF));
        assert_eq!(g.fstat_v3(0, ATTR), failed(abi::EBADF));
        let params = StatParams {
            name: pa(RAM + 5),
            kind: STAT_FOLLOW,
            attr: pa(ATTR),
            ..Default::default()
        };
        let ret = g.call_v2_ok(HypercallAddressV2::FileStat, params).ret;
        assert_eq!(ret, failed(abi::EFAULT));
    }
}
