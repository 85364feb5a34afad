//! Building and running one VM on any [`Hypervisor`]: reads and loads the Hermit image for the
//! hypervisor's architecture (a kernel ELF, or a Hermit image archive: its `hermit.toml` merged
//! into the user's configuration, its files served as read-only virtual files or its tar placed
//! into guest RAM for the kernel, see [`crate::archive`]), lays out guest RAM (x86_64: page
//! tables, GDT, boot info, FDT; aarch64: [`crate::arch::aarch64::prepare_image`]), creates the
//! hypervisor's VM, and runs every
//! vCPU on its own thread (each creates its own vCPU; a start gate releases them together once
//! the boot info is written). The first vCPU to end stops the whole VM; its Exit code or error is
//! the result. What each exit means is decided in [`crate::exits`].

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::affinity;
use crate::arch::x86_64::{GdtError, layout};
use crate::arch::{GuestArch, aarch64, x86_64};
use crate::archive::{self, ArchiveError, ArchiveLimits, HermitArchive};
use crate::boot::{self, BootError, BootParams, FdtParams, InitialRamdisk, TlsImage};
use crate::exits::{EmulationFallback, ExitServices, run_vcpu};
use crate::hypercall::{GuestCommandLine, HypercallError, Hypercalls};
use crate::isolation::{FileMap, IsolationError};
use crate::loader::{KernelGeneration, KernelImage, LoadError, LoadedKernel};
use crate::mem::{GuestMemory, MemoryError};
use crate::output::{OutputError, SerialOutput};
use crate::params::{HermitImageMode, VmConfig};
use crate::stats::{ExitStats, RunStats};
use crate::vcpu::{InstructionBytes, VcpuError, VirtualCpu};

/// Everything that can stop uhyve before or while running a guest.
#[derive(Debug, Error)]
pub enum VmError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel image {path}: {source}")]
    ReadKernel {
        /// The path as given.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The kernel path names no regular file (a directory, a device, a FIFO…).
    #[error("{path}: not a regular file (a kernel image or Hermit image archive is expected)")]
    ImageNotAFile {
        /// The path as given.
        path: PathBuf,
    },
    /// The kernel file is larger than any image uhyve accepts.
    #[error("{path}: {size} bytes is too large for a kernel image (at most {limit} bytes)")]
    ImageTooLarge {
        /// The path as given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },
    /// The kernel file is not a usable Hermit image.
    #[error("{path}: {source}")]
    Load {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        source: LoadError,
    },
    /// The Hermit image archive is unusable.
    #[error("{path}: {source}")]
    Archive {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        source: ArchiveError,
    },
    /// The kernel inside a Hermit image archive is not a usable Hermit image.
    #[error("{path}: the kernel {kernel:?} in the Hermit image archive: {source}")]
    ArchiveKernel {
        /// The archive's path as given.
        path: PathBuf,
        /// The kernel's path inside the archive.
        kernel: String,
        /// What is wrong with it.
        source: LoadError,
    },
    /// The image or memory size does not fit the guest layout.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// Writing the GDT failed.
    #[error("cannot write the guest GDT: {0}")]
    Gdt(#[from] GdtError),
    /// The image does not fit the guest memory layout.
    #[error("{path}: {source}")]
    Placement {
        /// The path as given.
        path: PathBuf,
        /// Why it does not fit.
        source: layout::LayoutError,
    },
    /// Building page tables failed.
    #[error("cannot build the guest page tables: {0}")]
    Paging(#[from] x86_64::PagingError),
    /// The aarch64 guest could not be prepared.
    #[error("cannot prepare the aarch64 guest: {0}")]
    Aarch64Setup(aarch64::PrepareError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Boot info or device tree could not be written.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The file mappings are invalid.
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    /// The output target cannot be opened.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The hypervisor could not be set up.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[error(transparent)]
    Kvm(#[from] crate::linux::KvmError),
    /// Hypervisor.framework could not be set up.
    #[cfg(all(target_os = "macos", target_arch = "aarch64"))]
    #[error(transparent)]
    Hvf(#[from] crate::macos::HvfVmError),
    /// Running a vCPU failed on the host side.
    #[error("vCPU {cpu}: {source}")]
    Vcpu {
        /// The vCPU id.
        cpu: u32,
        /// The failure.
        source: VcpuError,
    },
    /// A hypercall could not be answered.
    #[error("vCPU {cpu}: guest hypercall failed: {source}")]
    Hypercall {
        /// The vCPU id.
        cpu: u32,
        /// The failure.
        source: HypercallError,
    },
    /// The guest stopped in a way that is not an orderly exit.
    #[error("{0}")]
    GuestCrash(GuestCrash),
    /// An unusable number of vCPUs.
    #[error("--cpu-count {0}: uhyve supports 1 to {max} vCPUs", max = MAX_CPUS)]
    CpuCount(u32),
    /// More vCPUs than this hypervisor offers.
    #[error("--cpu-count {requested}: this hypervisor offers at most {max} vCPUs per VM")]
    TooManyCpus {
        /// What was asked for.
        requested: u32,
        /// The hypervisor's limit.
        max: u32,
    },
    /// The `--affinity` list cannot be used.
    #[error(transparent)]
    Affinity(#[from] affinity::AffinityError),
    /// A vCPU thread could not be started or ended abnormally.
    #[error("vCPU {cpu}: {reason}")]
    Thread {
        /// The vCPU id.
        cpu: u32,
        /// What happened.
        reason: String,
    },
    /// A host signal asked uhyve to stop.
    #[error("stopped by {}", crate::signals::signal_name(*.0))]
    Stopped(i32),
    /// This platform has no backend yet.
    #[error("uhyve cannot run guests on this platform yet")]
    UnsupportedPlatform,
}

/// A description of a guest crash: what happened, where, and the instruction if known.
#[derive(Debug)]
pub struct GuestCrash {
    /// The vCPU that crashed.
    pub cpu: u32,
    /// The guest's architecture (names the instruction pointer).
    pub arch: GuestArch,
    /// What happened, e.g. "triple fault".
    pub what: String,
    /// The instruction pointer (RIP or PC), if it could be read.
    pub rip: Option<u64>,
    /// The instruction at `rip`, decoded, with its bytes.
    pub instruction: Option<(String, InstructionBytes)>,
    /// A hint for the user.
    pub hint: Option<&'static str>,
}

impl fmt::Display for GuestCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest crashed: vCPU {}: {}", self.cpu, self.what)?;
        if let Some(rip) = self.rip {
            let name = match self.arch {
                GuestArch::X86_64 => "RIP",
                GuestArch::Aarch64 => "PC",
            };
            write!(f, " at {name} {rip:#x}")?;
        }
        if let Some((text, bytes)) = &self.instruction {
            write!(f, ", instruction `{text}` ({bytes})")?;
        }
        if let Some(hint) = self.hint {
            write!(f, ". {hint}")?;
        }
        Ok(())
    }
}

/// How a run ended when the guest itself asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit(pub i32);

/// A platform's hypervisor as the VM sees it: one VM whose vCPUs are each created, run and read
/// by their own thread (Hypervisor.framework's rule, which KVM also satisfies).
pub trait Hypervisor: Send + Sync + Sized {
    /// The architecture of the guests it runs.
    const ARCH: GuestArch;
    /// Its virtual CPUs.
    type Cpu: VirtualCpu;
    /// Makes a running vCPU return to the host; used from other threads.
    type Kick: VcpuKick;

    /// Makes guest RAM visible to the guest.
    ///
    /// # Safety
    ///
    /// `mem` must outlive the hypervisor's VM: the hypervisor keeps its host address, and the
    /// guest (and the framework) write there for as long as the VM exists. [`Vm`] owns both and
    /// drops the hypervisor first.
    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), VmError>;

    /// The most vCPUs this hypervisor can give one VM, where it has a limit below [`MAX_CPUS`].
    fn max_cpus(&self) -> Option<u32> {
        None
    }

    /// Creates vCPU `cpu` on the calling thread in the state `entry`, with a handle that
    /// interrupts it from other threads.
    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(Self::Cpu, Self::Kick), VmError>;

    /// The time-stamp counter frequency `cpu` runs with, where the architecture has one; it goes
    /// into the boot info.
    fn tsc_khz(_cpu: &Self::Cpu) -> Option<u32> {
        None
    }
}

/// Interrupts a running vCPU from another thread.
pub trait VcpuKick: Send {
    /// Makes the vCPU leave the guest as soon as possible (its run returns
    /// [`crate::vcpu::VcpuExit::Interrupted`]).
    fn kick(&self);
}

/// The state a vCPU starts in, for the guest's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRegisters {
    /// An x86_64 vCPU in 64-bit mode.
    X86_64(x86_64::InitialRegisters),
    /// An aarch64 vCPU at EL1.
    Aarch64(aarch64::InitialRegisters),
}

impl EntryRegisters {
    /// The state of vCPU `cpu`: the boot CPU's, with the CPU id in RSI (x86_64) or in X1 and
    /// MPIDR_EL1.Aff0 (aarch64).
    pub fn for_cpu(&self, cpu: u32) -> Self {
        match *self {
            Self::X86_64(registers) => Self::X86_64(x86_64::InitialRegisters {
                rsi: u64::from(cpu),
                ..registers
            }),
            Self::Aarch64(registers) => Self::Aarch64(aarch64::InitialRegisters {
                x1: u64::from(cpu),
                mpidr_el1: u64::from(cpu & 0xFF),
                ..registers
            }),
        }
    }
}

/// The hypervisor uhyve uses on this platform.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub type HostHypervisor = crate::linux::KvmVm;
/// The hypervisor uhyve uses on this platform.
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub type HostHypervisor = crate::macos::HvfVm;
/// No hypervisor on this platform: [`Vm::new`] reports it.
#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
pub type HostHypervisor = NoHypervisor;

/// Stands in for the hypervisor on platforms uhyve has no backend for; cannot be created.
#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
pub enum NoHypervisor {}

#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
impl NoHypervisor {
    fn create() -> Result<Self, VmError> {
        Err(VmError::UnsupportedPlatform)
    }
}

#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
impl Hypervisor for NoHypervisor {
    const ARCH: GuestArch = GuestArch::HOST;
    type Cpu = crate::hvf::HvfCpu<NoHypervisorCpu>;
    type Kick = NoHypervisorCpu;

    unsafe fn map_memory(&self, _mem: &GuestMemory) -> Result<(), VmError> {
        match *self {}
    }

    fn create_vcpu(
        &self,
        _cpu: u32,
        _entry: &EntryRegisters,
    ) -> Result<(Self::Cpu, Self::Kick), VmError> {
        match *self {}
    }
}

/// The vCPU of [`NoHypervisor`]; cannot exist.
#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
pub enum NoHypervisorCpu {}

#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
impl VcpuKick for NoHypervisorCpu {
    fn kick(&self) {
        match *self {}
    }
}

#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "macos", target_arch = "aarch64")
)))]
impl crate::hvf::HvfVcpuOps for NoHypervisorCpu {
    fn run(&mut self) -> Result<crate::hvf::HvfExit, crate::hvf::HvfError> {
        match *self {}
    }
    fn reg(&mut self, _: crate::hvf::Reg) -> Result<u64, crate::hvf::HvfError> {
        match *self {}
    }
    fn set_reg(&mut self, _: crate::hvf::Reg, _: u64) -> Result<(), crate::hvf::HvfError> {
        match *self {}
    }
    fn sys_reg(&mut self, _: crate::hvf::SysReg) -> Result<u64, crate::hvf::HvfError> {
        match *self {}
    }
    fn set_sys_reg(&mut self, _: crate::hvf::SysReg, _: u64) -> Result<(), crate::hvf::HvfError> {
        match *self {}
    }
}

/// What is needed to write the x86_64 boot info once vCPU 0 reports its TSC frequency.
struct BootInfoTemplate {
    layout: x86_64::MemoryLayout,
    kernel: LoadedKernel,
    bootargs: String,
    /// `/uhyve,mounts`.
    mounts: Vec<String>,
    /// Where the initial RAM disk lies, if there is one.
    initrd: Option<Range<u64>>,
    /// The boot info's `serial_port_base`: the v1 Uart port, or the v2/v3 SerialWriteBuffer
    /// address.
    serial_port: u16,
}

/// How the guest kernel learns where to mount the host file system (the `--file-mapping`
/// directories and those holding the virtual files of a Hermit image archive), by kernel
/// generation: nothing for pre-0.10 kernels (their mount point is built in), `-mount DIR` on the
/// command line for 0.10–0.11 (one directory), the device tree's `/uhyve,mounts` for ≥ 0.12.
/// Mappings and virtual files the kernel cannot reach are reported with a warning, except the
/// `expected_unreachable` ones (an archive's `hermit.toml` and kernel, which usually sit at its
/// root, where no mount can reach).
struct MountHandoff {
    /// Kernel arguments to put before the environment in bootargs.
    kernel_args: Vec<String>,
    /// Directories for `/uhyve,mounts`.
    fdt_mounts: Vec<String>,
}

impl MountHandoff {
    fn new(
        generation: KernelGeneration,
        files: &FileMap,
        env: &[(String, String)],
        kernel_options: &[String],
        expected_unreachable: &[String],
    ) -> Self {
        let mut handoff = Self {
            kernel_args: Vec::new(),
            fdt_mounts: Vec::new(),
        };
        let warn_unreachable = |paths: Vec<String>, why: &str| {
            let paths: Vec<String> = paths
                .into_iter()
                .filter(|path| !expected_unreachable.contains(path))
                .collect();
            if !paths.is_empty() {
                log::warn!("the guest cannot reach {} ({why})", paths.join(", "));
            }
        };
        match generation {
            KernelGeneration::Legacy => {}
            KernelGeneration::BootargsMount => {
                if env.iter().any(|(key, _)| key == "UHYVE_MOUNT")
                    || kernel_options.iter().any(|option| option == "-mount")
                {
                    // The user chose the mount point; `env=UHYVE_MOUNT=…` or the kernel's own
                    // `-mount` carries it.
                    return handoff;
                }
                let Some(mount) = files.legacy_mount_point() else {
                    let mut unreachable = files.unmountable_mappings();
                    unreachable.extend(files.unmountable_virtual_files());
                    warn_unreachable(unreachable, "no directory to mount");
                    return handoff;
                };
                warn_unreachable(
                    mount.unreachable,
                    &format!(
                        "this kernel (0.10/0.11) mounts host files at one directory only, {}",
                        mount.point
                    ),
                );
                handoff.kernel_args = vec!["-mount".to_owned(), boot::shell_word(&mount.point)];
            }
            KernelGeneration::FdtMounts => {
                let mut unreachable = files.unmountable_mappings();
                unreachable.extend(files.unmountable_virtual_files());
                warn_unreachable(
                    unreachable,
                    "a file directly under /, /tmp or /proc has no directory to mount",
                );
                handoff.fdt_mounts = files.mount_points();
            }
        }
        handoff
    }
}

/// A prepared VM: guest RAM laid out, hypervisor created, ready to run.
pub struct Vm<H: Hypervisor = HostHypervisor> {
    // Field order matters: the hypervisor (which maps guest RAM into the guest) is dropped
    // before guest RAM itself.
    hypervisor: H,
    hypercalls: Hypercalls,
    output: Arc<SerialOutput>,
    cpu_count: u32,
    affinity: Option<Vec<usize>>,
    /// Initial registers of vCPU 0 (the others differ only in their CPU id).
    registers: EntryRegisters,
    /// x86_64: the boot info and FDT are written when the vCPUs exist (they carry vCPU 0's TSC
    /// frequency). aarch64 writes them while preparing the guest.
    deferred_boot: Option<BootInfoTemplate>,
    stats: bool,
    emulation_fallback: bool,
    mem: GuestMemory,
}

/// Guest RAM with the kernel and everything around it, ready for the vCPUs.
struct PreparedGuest {
    mem: GuestMemory,
    registers: EntryRegisters,
    deferred_boot: Option<BootInfoTemplate>,
}

/// The guest's image as read from the file the user named: the kernel, the configuration to run
/// it with, and for a Hermit image archive what else goes to the guest.
struct GuestImage<'c> {
    kernel: KernelImage,
    /// The user's configuration, with an archive's `hermit.toml` merged in.
    config: Cow<'c, VmConfig>,
    /// Read-only files for the file map (an archive in the external mode): path relative to
    /// the guest root, content.
    virtual_files: Vec<(String, Arc<[u8]>)>,
    /// Guest paths of an archive's configuration and kernel, which need no mount.
    archive_own_files: Vec<String>,
    /// The decompressed archive for the kernel (the internal mode).
    initrd: Option<InitialRamdisk>,
}

/// Largest kernel image or Hermit image archive file read (an archive unpacks to at most
/// [`ArchiveLimits::DEFAULT`], 1 GiB; kernels are a few MiB).
pub const MAX_IMAGE_FILE_SIZE: u64 = 1 << 30;

/// Reads the image file at `path`: a regular file of at most [`MAX_IMAGE_FILE_SIZE`] bytes, so
/// that `/dev/zero`, a FIFO or a huge file gives an error instead of a hang or exhausted memory.
fn read_image_file(path: &std::path::Path) -> Result<Vec<u8>, VmError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| VmError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore the flag).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(VmError::ImageNotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = |size| VmError::ImageTooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_IMAGE_FILE_SIZE,
    };
    if metadata.len() > MAX_IMAGE_FILE_SIZE {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The file may grow while it is read: never take more than the limit.
    file.take(MAX_IMAGE_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads the image `config.kernel` for `arch`: a kernel ELF, or a Hermit image archive (told
/// apart by the gzip magic, not by the file name) whose configuration is merged into `config`
/// and whose files are prepared for `config.hermit_image_mode`.
fn read_image(config: &VmConfig, arch: GuestArch) -> Result<GuestImage<'_>, VmError> {
    let path = &config.kernel;
    let bytes = read_image_file(path)?;
    if !archive::is_archive(&bytes) {
        let kernel =
            KernelImage::parse_for(bytes, arch.elf_machine()).map_err(|source| VmError::Load {
                path: path.clone(),
                source,
            })?;
        return Ok(GuestImage {
            kernel,
            config: Cow::Borrowed(config),
            virtual_files: Vec::new(),
            archive_own_files: Vec::new(),
            initrd: None,
        });
    }
    let archive_error = |source| VmError::Archive {
        path: path.clone(),
        source,
    };
    let unpacked = HermitArchive::unpack(&bytes, &ArchiveLimits::DEFAULT).map_err(archive_error)?;
    drop(bytes);
    let image_config = unpacked.config();
    let merged = image_config
        .apply(config)
        .map_err(|error| archive_error(error.into()))?;
    let kernel = KernelImage::parse_for(unpacked.kernel().to_vec(), arch.elf_machine()).map_err(
        |source| VmError::ArchiveKernel {
            path: path.clone(),
            kernel: image_config.kernel.clone(),
            source,
        },
    )?;
    log::info!(
        "{}: Hermit image archive with {} files, kernel {}, {} mode",
        path.display(),
        unpacked.file_count(),
        image_config.kernel,
        config.hermit_image_mode
    );
    let archive_own_files = vec![
        format!("/{}", archive::CONFIG_FILE),
        format!("/{}", image_config.kernel),
    ];
    let (virtual_files, initrd) = match config.hermit_image_mode {
        HermitImageMode::External => (unpacked.files(), None),
        HermitImageMode::Internal => (Vec::new(), Some(InitialRamdisk(unpacked.tar()))),
    };
    Ok(GuestImage {
        kernel,
        config: Cow::Owned(merged),
        virtual_files,
        archive_own_files,
        initrd,
    })
}

/// Adds an archive's files to the file map as read-only virtual files under `/`. A file that a
/// `--file-mapping` covers is left out with a warning: what the user maps wins.
fn add_virtual_files(
    files: &mut FileMap,
    virtual_files: Vec<(String, Arc<[u8]>)>,
) -> Result<(), VmError> {
    let mut hidden = Vec::new();
    for (path, data) in virtual_files {
        let guest = format!("/{path}");
        match files.add_virtual_file(&guest, data) {
            Ok(()) => {}
            Err(IsolationError::VirtualFileConflict { .. }) => hidden.push(guest),
            Err(error) => return Err(error.into()),
        }
    }
    if !hidden.is_empty() {
        log::warn!(
            "--file-mapping hides these files of the Hermit image archive: {}",
            hidden.join(", ")
        );
    }
    Ok(())
}

/// Checks the vCPU count and the affinity list of `config`.
fn check_cpus(config: &VmConfig) -> Result<(), VmError> {
    if config.cpu_count == 0 || config.cpu_count > MAX_CPUS {
        return Err(VmError::CpuCount(config.cpu_count));
    }
    if let Some(list) = &config.affinity {
        affinity::check(list, config.cpu_count)?;
    }
    Ok(())
}

/// Where a kernel goes: its fixed address, or for a PIE the lowest address at or above
/// `pie_base` that keeps its segments' alignment (0x40000 for every known Hermit image).
fn kernel_base(image: &KernelImage, pie_base: u64) -> u64 {
    match image.fixed_load_address() {
        Some(fixed) => fixed,
        None => pie_base
            .checked_next_multiple_of(image.load_alignment().max(1))
            .unwrap_or(u64::MAX),
    }
}

/// Lays out an x86_64 guest: kernel, page tables, GDT and vCPU 0's registers. The boot info and
/// FDT follow once the TSC frequency is known.
fn prepare_x86_64(
    config: &VmConfig,
    image: &KernelImage,
    pre_0_10_kernel: bool,
    bootargs: String,
    mounts: Vec<String>,
    initrd: Option<&InitialRamdisk>,
) -> Result<PreparedGuest, VmError> {
    let path = &config.kernel;
    let ram_size = config.memory_size.0;
    // Interface v1 guests get RAM at 0 (at most 3 GiB), v2/v3 guests at 4 GiB.
    let placement = x86_64::layout::RamPlacement::for_interface(image.interface_version());
    let rules = placement.rules();
    let base = kernel_base(image, rules.pie_kernel_base);
    let footprint = image.footprint();
    rules.check_memory_size(ram_size)?;
    let layout =
        x86_64::MemoryLayout::placed(placement, ram_size, base..base.saturating_add(footprint))
            .map_err(|source| VmError::Placement {
                path: path.clone(),
                source,
            })?;
    let mut mem = GuestMemory::new(layout.ram_base(), ram_size)?;
    // Straight into guest RAM: no staging copy, and untouched BSS stays unallocated.
    let image_slot = mem.slice_for_loading(GuestPhysAddr::new(base), footprint)?;
    let kernel = image
        .load(base, image_slot)
        .map_err(|source| VmError::Load {
            path: path.clone(),
            source,
        })?;
    let initrd = match initrd {
        Some(InitialRamdisk(bytes)) => {
            let range = rules
                .place_initrd(kernel.image_range.end, bytes.len() as u64, ram_size)
                .map_err(|source| VmError::Placement {
                    path: path.clone(),
                    source,
                })?;
            mem.write(GuestPhysAddr::new(range.start), bytes)?;
            log::info!(
                "Hermit image archive for the kernel at {:#x}..{:#x}",
                range.start,
                range.end
            );
            Some(range)
        }
        None => None,
    };
    // The kernel reads the initial RAM disk through the boot identity map.
    let map_end = initrd
        .as_ref()
        .map_or(kernel.image_range.end, |range| range.end);
    let pml4 = x86_64::build_identity_map(&mem, &layout, map_end, pre_0_10_kernel)?;
    x86_64::write_gdt(&mem, layout.gdt())?;
    let registers = x86_64::initial_registers(
        kernel.entry_point,
        layout.gdt(),
        pml4,
        layout.boot_info(),
        layout.boot_stack_bottom(),
        0,
    );
    Ok(PreparedGuest {
        mem,
        registers: EntryRegisters::X86_64(registers),
        deferred_boot: Some(BootInfoTemplate {
            layout,
            kernel,
            bootargs,
            mounts,
            initrd,
            serial_port: boot::serial_port_for_interface(image.interface_version()),
        }),
    })
}

/// Lays out an aarch64 guest completely: kernel, stage-1 tables, FDT, boot info and vCPU 0's
/// registers (see [`aarch64::prepare_image`]).
fn prepare_aarch64(
    config: &VmConfig,
    image: &KernelImage,
    bootargs: String,
    mounts: Vec<String>,
    initrd: Option<InitialRamdisk>,
) -> Result<PreparedGuest, VmError> {
    let path = &config.kernel;
    aarch64::layout::RamPlacement::for_interface(image.interface_version())
        .rules()
        .check_memory_size(config.memory_size.0)?;
    let setup = aarch64::GuestSetup {
        ram_size: config.memory_size.0,
        num_cpus: config.cpu_count,
        bootargs,
        mounts,
        initrd,
        // The vCPU replaces it with the PARange it reports (crate::hvf::HvfCpu::new).
        pa_range: 0,
        boot_time: time::OffsetDateTime::now_utc(),
    };
    let prepared = aarch64::prepare_image(image, &setup).map_err(|error| match error {
        aarch64::PrepareError::Load(source) => VmError::Load {
            path: path.clone(),
            source,
        },
        aarch64::PrepareError::Layout(source) => VmError::Placement {
            path: path.clone(),
            source,
        },
        other => VmError::Aarch64Setup(other),
    })?;
    Ok(PreparedGuest {
        mem: prepared.mem,
        registers: EntryRegisters::Aarch64(prepared.registers),
        deferred_boot: None,
    })
}

impl Vm<HostHypervisor> {
    /// Builds the VM described by `config` on this platform's hypervisor.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        Self::with_hypervisor(config, || Ok(HostHypervisor::create()?))
    }
}

impl<H: Hypervisor> Vm<H> {
    /// Builds the VM described by `config` on the hypervisor that `create` makes (called on its
    /// own thread, while the image loads: creating a VM can wait in the host kernel).
    pub fn with_hypervisor(
        config: &VmConfig,
        create: impl FnOnce() -> Result<H, VmError> + Send + 'static,
    ) -> Result<Self, VmError>
    where
        H: 'static,
    {
        check_cpus(config)?;
        let hypervisor = thread::Builder::new()
            .name("vm-setup".into())
            .spawn(create)
            .map_err(|error| VmError::Thread {
                cpu: 0,
                reason: format!("cannot start the VM set-up thread: {error}"),
            })?;
        let GuestImage {
            kernel: image,
            config: merged,
            virtual_files,
            archive_own_files,
            initrd,
        } = read_image(config, H::ARCH)?;
        // From here on, the configuration with a Hermit image archive's settings merged in.
        let config: &VmConfig = &merged;
        check_cpus(config)?;
        let generation = image.generation();
        let pre_0_10_kernel = generation == KernelGeneration::Legacy;
        if pre_0_10_kernel && !config.kernel_options.is_empty() {
            log::warn!(
                "kernels before Hermit 0.10 take no kernel arguments; ignoring {}",
                config.kernel_options.join(" ")
            );
        }

        let output = Arc::new(SerialOutput::new(config.output.clone())?);
        let mut files = FileMap::new(&config.file_mappings, config.tempdir.clone())?;
        add_virtual_files(&mut files, virtual_files)?;
        let mut args: Vec<OsString> = vec![config.kernel.clone().into_os_string()];
        args.extend(config.kernel_args.iter().cloned());
        let cmdline = GuestCommandLine {
            args,
            env: config.env.clone(),
        };
        // Kernels >= 0.10 read arguments and environment from `/chosen/bootargs`; older ones ask
        // with Cmdsize/Cmdval, so their device tree does not need to carry the environment.
        let bootargs_env = if pre_0_10_kernel {
            Vec::new()
        } else {
            lossy_pairs(&cmdline.env)
        };
        let handoff = MountHandoff::new(
            generation,
            &files,
            &bootargs_env,
            &config.kernel_options,
            &archive_own_files,
        );
        // The kernel splits bootargs with shell rules: each option stays one word.
        let kernel_words: Vec<String> = config
            .kernel_options
            .iter()
            .map(|option| boot::shell_word(option))
            .chain(handoff.kernel_args)
            .collect();
        let bootargs = boot::bootargs(
            &kernel_words,
            &bootargs_env,
            &lossy_list(&config.kernel_args),
        );

        let PreparedGuest {
            mem,
            registers,
            deferred_boot,
        } = match H::ARCH {
            GuestArch::X86_64 => prepare_x86_64(
                config,
                &image,
                pre_0_10_kernel,
                bootargs,
                handoff.fdt_mounts,
                initrd.as_ref(),
            )?,
            GuestArch::Aarch64 => {
                prepare_aarch64(config, &image, bootargs, handoff.fdt_mounts, initrd)?
            }
        };
        log::info!(
            "loaded {} (entry version {}, interface v{}), entry {:#x}",
            config.kernel.display(),
            image.entry_version(),
            image.interface_version(),
            match registers {
                EntryRegisters::X86_64(r) => r.rip,
                EntryRegisters::Aarch64(r) => r.pc,
            }
        );

        let hypervisor = hypervisor.join().map_err(|_| VmError::Thread {
            cpu: 0,
            reason: "the VM set-up thread panicked".into(),
        })??;
        if let Some(max) = hypervisor.max_cpus()
            && config.cpu_count > max
        {
            return Err(VmError::TooManyCpus {
                requested: config.cpu_count,
                max,
            });
        }
        // SAFETY: `mem` and `hypervisor` both move into the returned Vm, whose field order drops
        // the hypervisor first; on the error paths below, `hypervisor` (declared after `mem`) is
        // dropped before it.
        unsafe { hypervisor.map_memory(&mem) }?;
        let hypercalls = Hypercalls::new(H::ARCH, Arc::clone(&output), files, cmdline)
            .with_interface(image.interface_version());
        Ok(Self {
            hypervisor,
            hypercalls,
            output,
            cpu_count: config.cpu_count,
            affinity: config.affinity.clone(),
            registers,
            deferred_boot,
            stats: config.stats,
            emulation_fallback: config.emulation_fallback,
            mem,
        })
    }

    /// Writes the x86_64 device tree and boot info (which carry the TSC frequency of vCPU 0).
    fn write_boot_structures(&self, cpu_freq_khz: Option<u32>) -> Result<(), VmError> {
        let Some(BootInfoTemplate {
            layout,
            kernel,
            bootargs,
            mounts,
            initrd,
            serial_port,
        }) = &self.deferred_boot
        else {
            return Ok(());
        };
        let fdt = boot::build_fdt(&FdtParams {
            ram: layout.ram(),
            num_cpus: self.cpu_count,
            tsc_khz: cpu_freq_khz,
            bootargs: bootargs.clone(),
            mounts: mounts.clone(),
            initrd: initrd.clone(),
        })?;
        boot::write_fdt(&self.mem, layout.fdt(), &fdt)?;
        boot::write_boot_info(
            &self.mem,
            layout.boot_info(),
            &BootParams {
                ram: layout.ram(),
                kernel_image: kernel.image_range.clone(),
                tls: kernel.tls.as_ref().map(|t| TlsImage {
                    start: t.start,
                    filesz: t.filesz,
                    memsz: t.memsz,
                    align: t.align,
                }),
                num_cpus: self.cpu_count,
                cpu_freq_khz,
                boot_time: time::OffsetDateTime::now_utc(),
                serial_port: *serial_port,
                // uhyve emulates no PCI devices, so a scan could only find nothing: telling the
                // kernel spares it 2048 port exits (every bus and slot) at boot.
                has_pci: false,
                fdt_address: Some(layout.fdt().as_u64()),
            },
        )?;
        Ok(())
    }

    /// Runs the guest on one thread per vCPU until it exits. Returns the exit code of the first
    /// Exit hypercall, or the first failure of any vCPU.
    pub fn run(&mut self) -> Result<GuestExit, VmError> {
        let started = Instant::now();
        let (result, stats) = self.run_vcpus();
        self.output.flush();
        if let Some(mut stats) = stats {
            stats.elapsed = started.elapsed();
            eprint!("{stats}");
        }
        result
    }

    fn run_vcpus(&self) -> (Result<GuestExit, VmError>, Option<RunStats>) {
        let count = self.cpu_count as usize;
        let shared = SharedVcpuState {
            services: ExitServices {
                mem: &self.mem,
                hypercalls: &self.hypercalls,
                fallback: EmulationFallback::new(self.emulation_fallback),
                stop: AtomicBool::new(false),
            },
            kicks: Mutex::new((0..count).map(|_| None).collect()),
        };
        let gate = StartGate::default();
        let (reports, inbox) = mpsc::channel::<VcpuReport>();
        let mut per_cpu: Vec<(u32, ExitStats)> = Vec::new();
        let result = thread::scope(|scope| {
            let mut finished = 0usize;
            let mut first_end: Option<Result<GuestExit, VmError>> = None;
            for cpu in 0..self.cpu_count {
                let context = VcpuThread {
                    cpu,
                    vm: self,
                    shared: &shared,
                    gate: &gate,
                    reports: reports.clone(),
                };
                let spawned = thread::Builder::new()
                    .name(format!("vcpu-{cpu}"))
                    .spawn_scoped(scope, move || context.run());
                if let Err(error) = spawned {
                    finished += 1;
                    first_end.get_or_insert(Err(VmError::Thread {
                        cpu,
                        reason: error.to_string(),
                    }));
                }
            }
            drop(reports);

            // Every vCPU is created (or failed) before any runs: then the boot info can carry
            // the TSC frequency, and all vCPUs start at the entry point together.
            let mut ready = 0usize;
            let mut tsc = None;
            while ready + finished < count {
                match inbox.recv() {
                    Ok(VcpuReport::Ready { cpu, tsc_khz }) => {
                        ready += 1;
                        if cpu == 0 {
                            tsc = tsc_khz;
                        }
                    }
                    Ok(VcpuReport::Finished { end, stats, cpu }) => {
                        finished += 1;
                        per_cpu.extend(stats.map(|s| (cpu, s)));
                        first_end.get_or_insert(end.into_result());
                    }
                    Err(_) => break,
                }
            }
            if first_end.is_none()
                && let Err(error) = self.write_boot_structures(tsc)
            {
                first_end = Some(Err(error));
            }
            gate.open(first_end.is_none());

            let mut stopping_since: Option<Instant> = None;
            while finished < count {
                match inbox.recv_timeout(STOP_POLL) {
                    Ok(VcpuReport::Finished { cpu, end, stats }) => {
                        finished += 1;
                        per_cpu.extend(stats.map(|s| (cpu, s)));
                        if !matches!(end, VcpuEnd::Stopped) && first_end.is_none() {
                            first_end = Some(end.into_result());
                        }
                        stopping_since.get_or_insert_with(Instant::now);
                        shared.stop_all();
                    }
                    Ok(VcpuReport::Ready { .. }) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(signal) = crate::signals::stop_requested() {
                            first_end.get_or_insert(Err(VmError::Stopped(signal)));
                        }
                        if first_end.is_some() {
                            // Kick again: cheap, and robust against a vCPU that was between
                            // its stop check and entering the guest when the first kick came.
                            shared.stop_all();
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            if let Some(since) = stopping_since {
                log::debug!(
                    "all {count} vCPUs stopped {:?} after the first one ended",
                    since.elapsed()
                );
            }
            first_end.unwrap_or_else(|| {
                Err(VmError::Thread {
                    cpu: 0,
                    reason: "every vCPU thread ended without a result".into(),
                })
            })
        });
        per_cpu.sort_by_key(|(cpu, _)| *cpu);
        let stats = self.stats.then_some(RunStats {
            per_cpu,
            elapsed: Duration::ZERO,
        });
        (result, stats)
    }
}

/// How often the main thread checks for stop signals while the vCPUs run.
const STOP_POLL: Duration = Duration::from_millis(10);

/// The most vCPUs one VM may have (x2APIC ids and thread count stay sane).
pub const MAX_CPUS: u32 = 256;

/// What the vCPU threads share.
struct SharedVcpuState<'a, K> {
    /// What the exit loops use.
    services: ExitServices<'a>,
    /// How to interrupt each vCPU; an entry is present only while its vCPU exists.
    kicks: Mutex<Vec<Option<K>>>,
}

impl<K: VcpuKick> SharedVcpuState<'_, K> {
    fn kicks(&self) -> std::sync::MutexGuard<'_, Vec<Option<K>>> {
        // The vector holds plain handles, consistent even if a holder panicked.
        self.kicks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the whole VM: every vCPU leaves the guest at once and does not re-enter.
    fn stop_all(&self) {
        self.services.stop.store(true, Ordering::SeqCst);
        self.services.hypercalls.stop();
        for kick in self.kicks().iter().flatten() {
            kick.kick();
        }
    }
}

/// Holds the vCPU threads until the main thread has written the boot info.
#[derive(Default)]
struct StartGate {
    /// `None` while closed; then whether to run (`true`) or give up (`false`).
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, run: bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
        self.opened.notify_all();
    }

    /// Waits until the gate opens; whether to run.
    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(run) = *state {
                return run;
            }
            state = self.opened.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// How one vCPU ended.
enum VcpuEnd {
    /// The guest called Exit.
    Exit(i32),
    /// The VM was stopped from outside this vCPU.
    Stopped,
    /// This vCPU failed.
    Failed(VmError),
}

impl VcpuEnd {
    fn into_result(self) -> Result<GuestExit, VmError> {
        match self {
            Self::Exit(code) => Ok(GuestExit(code)),
            Self::Failed(error) => Err(error),
            Self::Stopped => Err(VmError::Thread {
                cpu: 0,
                reason: "stopped before it started".into(),
            }),
        }
    }
}

/// What a vCPU thread tells the main thread.
enum VcpuReport {
    /// Created and waiting at the start gate.
    Ready { cpu: u32, tsc_khz: Option<u32> },
    /// Done (or failed to start), with its statistics.
    Finished {
        cpu: u32,
        end: VcpuEnd,
        stats: Option<ExitStats>,
    },
}

/// One vCPU thread.
struct VcpuThread<'scope, 'vm, H: Hypervisor> {
    cpu: u32,
    vm: &'vm Vm<H>,
    shared: &'scope SharedVcpuState<'vm, H::Kick>,
    gate: &'scope StartGate,
    reports: mpsc::Sender<VcpuReport>,
}

/// Removes a vCPU's kick handle from the registry when dropped, before the vCPU itself goes.
struct KickRegistration<'a, 'vm, K: VcpuKick> {
    shared: &'a SharedVcpuState<'vm, K>,
    cpu: usize,
}

impl<K: VcpuKick> Drop for KickRegistration<'_, '_, K> {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.kicks().get_mut(self.cpu) {
            *slot = None;
        }
    }
}

impl<H: Hypervisor> VcpuThread<'_, '_, H> {
    fn run(self) {
        let cpu = self.cpu;
        let reports = self.reports.clone();
        let mut stats = self.vm.stats.then(ExitStats::new);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.create_and_run(stats.as_mut())
        }));
        let end = outcome.unwrap_or_else(|_| {
            VcpuEnd::Failed(VmError::Thread {
                cpu,
                reason: "the vCPU thread panicked".into(),
            })
        });
        // A failing vCPU takes the whole VM down at once.
        if !matches!(end, VcpuEnd::Stopped) {
            self.shared.stop_all();
        }
        // The main thread may already be gone only if it stopped waiting; nothing to do then.
        let _ = reports.send(VcpuReport::Finished { cpu, end, stats });
    }

    fn create_and_run(&self, stats: Option<&mut ExitStats>) -> VcpuEnd {
        let cpu = self.cpu;
        if let Some(host_cpu) = self.vm.affinity.as_ref().and_then(|l| l.get(cpu as usize))
            && let Err(error) = affinity::pin_current_thread(*host_cpu)
        {
            return VcpuEnd::Failed(error.into());
        }
        let registers = self.vm.registers.for_cpu(cpu);
        let (mut vcpu, kick) = match self.vm.hypervisor.create_vcpu(cpu, &registers) {
            Ok(created) => created,
            Err(error) => return VcpuEnd::Failed(error),
        };
        if let Some(slot) = self.shared.kicks().get_mut(cpu as usize) {
            *slot = Some(kick);
        }
        // Declared after `vcpu`, so dropped before it.
        let _registration = KickRegistration {
            shared: self.shared,
            cpu: cpu as usize,
        };
        let ready = VcpuReport::Ready {
            cpu,
            tsc_khz: H::tsc_khz(&vcpu),
        };
        if self.reports.send(ready).is_err() || !self.gate.wait() {
            return VcpuEnd::Stopped;
        }
        match run_vcpu(&mut vcpu, &self.shared.services, stats) {
            Ok(Some(GuestExit(code))) => VcpuEnd::Exit(code),
            Ok(None) => VcpuEnd::Stopped,
            Err(error) => VcpuEnd::Failed(error),
        }
    }
}

fn lossy_list(items: &[OsString]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
}

fn lossy_pairs(items: &[(OsString, OsString)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// Builds and runs the VM described by `config`; returns the guest's exit code.
pub fn run(config: &VmConfig) -> Result<i32, VmError> {
    let mut vm = Vm::new(config)?;
    vm.run().map(|GuestExit(code)| code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_messages_name_cpu_rip_and_instruction() {
        let crash = GuestCrash {
            cpu: 0,
            arch: GuestArch::X86_64,
            what: "emulation failure".into(),
            rip: Some(0x40_1234),
            instruction: Some(("xgetbv".into(), InstructionBytes(vec![0x0f, 0x01, 0xd0]))),
            hint: Some("hint"),
        };
        assert_eq!(
            crash.to_string(),
            "guest crashed: vCPU 0: emulation failure at RIP 0x401234, instruction `xgetbv` (0f 01 d0). hint"
        );
    }
}
