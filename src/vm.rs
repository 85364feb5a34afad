//! Building and running one VM: reads and loads the Hermit image, lays out guest RAM (page tables,
//! GDT, boot info, FDT), creates the backend VM and vCPU, and runs the exit loop that hands
//! hypercalls to the shared dispatcher and turns every other exit into a decision: continue, stop
//! with the guest's exit code, or stop with an error that explains what happened.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::affinity;
use crate::arch::x86_64::{self as arch, GdtError, MemoryLayout, emulate, layout};
use crate::boot::{self, BootError, BootParams, FdtParams, TlsImage};
use crate::hypercall::{GuestCommandLine, HypercallError, HypercallOutcome, Hypercalls};
use crate::isolation::{FileMap, IsolationError};
use crate::loader::{KernelImage, LoadError, LoadedKernel};
use crate::mem::{GuestMemory, MemoryError};
use crate::output::{OutputError, SerialOutput};
use crate::params::VmConfig;
use crate::stats::{ExitStats, RunStats};
use crate::vcpu::{InstructionBytes, VcpuError, VcpuExit, VirtualCpu};

/// What an emulation failure is, for the crash report.
const EMULATION_FAILURE: &str = "emulation failure: the hypervisor cannot execute this instruction";
/// Why emulation failures happen, for the crash report.
const EMULATION_FAILURE_HINT: &str = "Some KVM hosts (e.g. KVM-PVM) execute every guest \
     instruction in software and lack some instructions (SSE arithmetic, XSAVE, XGETBV)";

/// PCI configuration address port.
const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// PCI configuration data port.
const PCI_CONFIG_DATA: u16 = 0xcfc;

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
    /// The kernel file is not a usable Hermit image.
    #[error("{path}: {source}")]
    Load {
        /// The path as given.
        path: PathBuf,
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
    Paging(#[from] arch::PagingError),
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
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Kvm(#[from] crate::linux::KvmError),
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
    /// What happened, e.g. "triple fault".
    pub what: String,
    /// The instruction pointer, if it could be read.
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
            write!(f, " at RIP {rip:#x}")?;
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

/// The platform's hypervisor objects: on Linux a KVM VM, whose vCPUs each thread creates for
/// itself (Hypervisor.framework requires a vCPU to be created, run and read by one thread).
#[cfg(target_os = "linux")]
struct Backend {
    vm: crate::linux::KvmVm,
}

#[cfg(target_os = "linux")]
type BackendCpu = crate::linux::KvmCpu;
#[cfg(target_os = "linux")]
type Kick = crate::linux::KvmKick;

#[cfg(target_os = "linux")]
impl Backend {
    /// Creates the VM without memory (runs beside the kernel loading).
    fn create() -> Result<Self, VmError> {
        Ok(Self {
            vm: crate::linux::KvmVm::create()?,
        })
    }

    fn map_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        Ok(self.vm.map_memory(mem)?)
    }

    /// Creates vCPU `cpu` on the calling thread, with a handle to interrupt it from others.
    fn create_vcpu(
        &self,
        cpu: u32,
        registers: &arch::InitialRegisters,
    ) -> Result<(BackendCpu, Kick), VmError> {
        let mut vcpu = self.vm.create_vcpu(cpu, registers)?;
        let kick = vcpu.kick_handle();
        Ok((vcpu, kick))
    }
}

#[cfg(target_os = "linux")]
fn tsc_khz(vcpu: &BackendCpu) -> Option<u32> {
    vcpu.tsc_khz()
}

/// No backend on this platform yet: values of these types cannot exist.
#[cfg(not(target_os = "linux"))]
enum Backend {}
#[cfg(not(target_os = "linux"))]
enum BackendCpu {}
#[cfg(not(target_os = "linux"))]
enum Kick {}

#[cfg(not(target_os = "linux"))]
impl Backend {
    fn create() -> Result<Self, VmError> {
        Err(VmError::UnsupportedPlatform)
    }

    fn map_memory(&self, _mem: &GuestMemory) -> Result<(), VmError> {
        match *self {}
    }

    fn create_vcpu(
        &self,
        _cpu: u32,
        _registers: &arch::InitialRegisters,
    ) -> Result<(BackendCpu, Kick), VmError> {
        match *self {}
    }
}

#[cfg(not(target_os = "linux"))]
impl Kick {
    fn kick(&self) {
        match *self {}
    }
}

#[cfg(not(target_os = "linux"))]
fn tsc_khz(vcpu: &BackendCpu) -> Option<u32> {
    match *vcpu {}
}

#[cfg(not(target_os = "linux"))]
impl VirtualCpu for BackendCpu {
    fn id(&self) -> u32 {
        match *self {}
    }
    fn run(&mut self) -> Result<VcpuExit, VcpuError> {
        match *self {}
    }
    fn complete_port_in(&mut self, _: u32) -> Result<(), VcpuError> {
        match *self {}
    }
    fn complete_mmio_read(&mut self, _: u64) -> Result<(), VcpuError> {
        match *self {}
    }
    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError> {
        match *self {}
    }
    fn instruction_pointer(&mut self) -> Result<u64, VcpuError> {
        match *self {}
    }
    fn register_dump(&mut self) -> Result<String, VcpuError> {
        match *self {}
    }
}

/// Everything needed to write the boot info once the TSC frequency is known.
struct BootInfoTemplate {
    layout: MemoryLayout,
    kernel: LoadedKernel,
    bootargs: String,
}

/// A prepared VM: guest RAM laid out, backend created, ready to run.
pub struct Vm {
    // Field order matters: the backend (which maps guest RAM into the hypervisor) is dropped
    // before guest RAM itself.
    backend: Backend,
    hypercalls: Hypercalls,
    output: Arc<SerialOutput>,
    cpu_count: u32,
    affinity: Option<Vec<usize>>,
    /// Initial registers of vCPU 0 (the others differ only in RSI).
    registers: arch::InitialRegisters,
    boot: BootInfoTemplate,
    stats: bool,
    emulation_fallback: bool,
    mem: GuestMemory,
}

/// A kernel loaded into fresh guest RAM, with the layout around it.
struct LoadedGuest {
    mem: GuestMemory,
    layout: MemoryLayout,
    image: KernelImage,
    kernel: LoadedKernel,
}

/// Reads, checks and loads the kernel into fresh guest RAM.
fn load_kernel(config: &VmConfig) -> Result<LoadedGuest, VmError> {
    let path = &config.kernel;
    let bytes = std::fs::read(path).map_err(|source| VmError::ReadKernel {
        path: path.clone(),
        source,
    })?;
    let load_error = |source| VmError::Load {
        path: path.clone(),
        source,
    };
    let image = KernelImage::parse(bytes).map_err(load_error)?;
    let ram_size = config.memory_size.0;
    // A PIE goes to the lowest address above the boot structures that keeps its segments'
    // alignment (0x40000 for every known Hermit image).
    let base = match image.fixed_load_address() {
        Some(fixed) => fixed,
        None => layout::PIE_KERNEL_BASE
            .checked_next_multiple_of(image.load_alignment().max(1))
            .unwrap_or(u64::MAX),
    };
    let footprint = image.footprint();
    let image_end = base.saturating_add(footprint);
    layout::check_memory_size(ram_size)?;
    let layout =
        MemoryLayout::new(ram_size, base..image_end).map_err(|source| VmError::Placement {
            path: path.clone(),
            source,
        })?;
    let mut mem = GuestMemory::new(layout.ram_base(), ram_size)?;
    // Straight into guest RAM: no staging copy, and untouched BSS stays unallocated.
    let image_slot = mem.slice_for_loading(GuestPhysAddr::new(base), footprint)?;
    let kernel = image.load(base, image_slot).map_err(load_error)?;
    Ok(LoadedGuest {
        mem,
        layout,
        image,
        kernel,
    })
}

impl Vm {
    /// Builds the VM described by `config`.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        if config.cpu_count == 0 || config.cpu_count > MAX_CPUS {
            return Err(VmError::CpuCount(config.cpu_count));
        }
        if let Some(list) = &config.affinity {
            affinity::check(list, config.cpu_count)?;
        }
        // Creating the VM waits in the host kernel for milliseconds: do it while the image loads.
        let backend = thread::Builder::new()
            .name("vm-setup".into())
            .spawn(Backend::create)
            .map_err(|error| VmError::Thread {
                cpu: 0,
                reason: format!("cannot start the VM set-up thread: {error}"),
            })?;
        let LoadedGuest {
            mem,
            layout,
            image,
            kernel: loaded,
        } = load_kernel(config)?;
        log::info!(
            "loaded {} (entry version {}, interface v{}) at {:#x}..{:#x}, entry {:#x}",
            config.kernel.display(),
            image.entry_version(),
            image.interface_version(),
            loaded.image_range.start,
            loaded.image_range.end,
            loaded.entry_point
        );
        let pre_0_10_kernel = image
            .kernel_version()
            .is_none_or(|(major, minor, _)| (major, minor) < (0, 10));
        let pml4 =
            arch::build_identity_map(&mem, &layout, loaded.image_range.end, pre_0_10_kernel)?;
        arch::write_gdt(&mem, layout.gdt())?;
        let registers = arch::initial_registers(
            loaded.entry_point,
            pml4,
            layout.boot_info(),
            layout.boot_stack_bottom(),
            0,
        );

        let output = Arc::new(SerialOutput::new(config.output.clone())?);
        let files = FileMap::new(&config.file_mappings, config.tempdir.clone())?;
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
        let bootargs = boot::bootargs(&[], &bootargs_env, &lossy_list(&config.kernel_args));

        let backend = backend.join().map_err(|_| VmError::Thread {
            cpu: 0,
            reason: "the VM set-up thread panicked".into(),
        })??;
        backend.map_memory(&mem)?;
        let hypercalls = Hypercalls::new(Arc::clone(&output), files, cmdline);
        Ok(Self {
            backend,
            hypercalls,
            output,
            cpu_count: config.cpu_count,
            affinity: config.affinity.clone(),
            registers,
            boot: BootInfoTemplate {
                layout,
                kernel: loaded,
                bootargs,
            },
            stats: config.stats,
            emulation_fallback: config.emulation_fallback,
            mem,
        })
    }

    /// Writes the device tree and the boot info (which carry the TSC frequency of vCPU 0).
    fn write_boot_structures(&self, cpu_freq_khz: Option<u32>) -> Result<(), VmError> {
        let BootInfoTemplate {
            layout,
            kernel,
            bootargs,
        } = &self.boot;
        let fdt = boot::build_fdt(&FdtParams {
            ram: layout.ram(),
            num_cpus: self.cpu_count,
            tsc_khz: cpu_freq_khz,
            bootargs: bootargs.clone(),
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
                serial_port: boot::V1_SERIAL_PORT,
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
            mem: &self.mem,
            hypercalls: &self.hypercalls,
            fallback: EmulationFallback::new(self.emulation_fallback),
            stop: AtomicBool::new(false),
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
                            // its stop check and KVM_RUN when the first kick came.
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
struct SharedVcpuState<'a> {
    mem: &'a GuestMemory,
    hypercalls: &'a Hypercalls,
    fallback: EmulationFallback,
    /// Set when the VM stops; every vCPU loop checks it before entering the guest.
    stop: AtomicBool,
    /// How to interrupt each vCPU; an entry is present only while its vCPU exists.
    kicks: Mutex<Vec<Option<Kick>>>,
}

impl SharedVcpuState<'_> {
    fn kicks(&self) -> std::sync::MutexGuard<'_, Vec<Option<Kick>>> {
        // The vector holds plain handles, consistent even if a holder panicked.
        self.kicks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the whole VM: every vCPU leaves the guest at once and does not re-enter.
    fn stop_all(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hypercalls.stop();
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
struct VcpuThread<'scope, 'vm> {
    cpu: u32,
    vm: &'vm Vm,
    shared: &'scope SharedVcpuState<'vm>,
    gate: &'scope StartGate,
    reports: mpsc::Sender<VcpuReport>,
}

/// Removes a vCPU's kick handle from the registry when dropped, before the vCPU itself goes.
struct KickRegistration<'a, 'vm> {
    shared: &'a SharedVcpuState<'vm>,
    cpu: usize,
}

impl Drop for KickRegistration<'_, '_> {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.kicks().get_mut(self.cpu) {
            *slot = None;
        }
    }
}

impl VcpuThread<'_, '_> {
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
        let registers = arch::InitialRegisters {
            rsi: u64::from(cpu),
            ..self.vm.registers
        };
        let (mut vcpu, kick) = match self.vm.backend.create_vcpu(cpu, &registers) {
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
            tsc_khz: tsc_khz(&vcpu),
        };
        if self.reports.send(ready).is_err() || !self.gate.wait() {
            return VcpuEnd::Stopped;
        }
        match run_vcpu(&mut vcpu, self.shared, stats) {
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

/// The user-space fallback for instructions the hypervisor cannot emulate, shared by all vCPUs.
struct EmulationFallback {
    enabled: bool,
    warned: AtomicBool,
}

impl EmulationFallback {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            warned: AtomicBool::new(false),
        }
    }

    /// Executes the instruction at the vCPU's RIP in user space. `None` if the backend offers no
    /// access for it; otherwise the lower-case mnemonic, or why it failed.
    fn execute(
        &self,
        vcpu: &mut dyn VirtualCpu,
        mem: &GuestMemory,
        reported: Option<&[u8]>,
    ) -> Option<Result<String, emulate::FallbackError>> {
        let cpu = vcpu.as_x86()?;
        let result = emulate::emulate_on_vcpu(cpu, mem, reported);
        if let Ok(instruction) = &result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "the hypervisor cannot execute `{instruction}` (RIP {:#x}); uhyve executes such \
                 instructions in user space, which is much slower (--no-emulation-fallback turns \
                 this off; --stats counts them)",
                instruction.ip()
            );
        }
        Some(result.map(|instruction| format!("{:?}", instruction.mnemonic()).to_lowercase()))
    }
}

/// State of the emulated PCI configuration mechanism: no devices, every read is all-ones.
#[derive(Debug, Default)]
struct PciConfigSpace {
    address: u32,
}

/// The exit loop of one vCPU: `Some(exit)` when the guest called Exit, `None` when the VM was
/// stopped from outside this vCPU.
fn run_vcpu(
    vcpu: &mut dyn VirtualCpu,
    shared: &SharedVcpuState<'_>,
    mut stats: Option<&mut ExitStats>,
) -> Result<Option<GuestExit>, VmError> {
    let (mem, hypercalls, fallback) = (shared.mem, shared.hypercalls, &shared.fallback);
    let cpu = vcpu.id();
    let vcpu_error = |source| VmError::Vcpu { cpu, source };
    let mut pci = PciConfigSpace::default();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let exit = vcpu.run().map_err(vcpu_error)?;
        if let Some(stats) = stats.as_deref_mut() {
            stats.record(exit.kind());
        }
        match exit {
            VcpuExit::Hypercall { address, argument } => {
                let mut root = || vcpu.page_table_root();
                match hypercalls.handle(mem, address, argument, &mut root) {
                    HypercallOutcome::Continue => {}
                    HypercallOutcome::Exit(code) => return Ok(Some(GuestExit(code))),
                    HypercallOutcome::Fatal(source) => {
                        return Err(VmError::Hypercall { cpu, source });
                    }
                }
            }
            VcpuExit::PortOut { port, data, size } => {
                if port == PCI_CONFIG_ADDRESS && size == 4 {
                    pci.address = data;
                } else {
                    log::debug!("vCPU {cpu}: ignored write of {data:#x} to port {port:#x}");
                }
            }
            VcpuExit::PortIn { port, size } => {
                if port == PCI_CONFIG_DATA {
                    log::trace!(
                        "vCPU {cpu}: PCI config read at {:#x}: no device",
                        pci.address
                    );
                } else {
                    log::debug!("vCPU {cpu}: read of {size} bytes from unknown port {port:#x}");
                }
                // No device anywhere: PCI config reads and unknown ports read as all-ones.
                vcpu.complete_port_in(u32::MAX).map_err(vcpu_error)?;
            }
            VcpuExit::Halt => {
                // With the in-kernel irqchip KVM handles HLT itself; if it reports one anyway,
                // re-entering waits for the next interrupt.
            }
            VcpuExit::Interrupted => {
                // A host signal interrupted KVM_RUN: a stop request is handled at the top of the
                // loop; any other signal just resumes the guest.
            }
            VcpuExit::MmioRead { address, size } => {
                return Err(crash(
                    vcpu,
                    mem,
                    &format!(
                        "read of {size} bytes from {address:#x}, which is neither RAM nor a device"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::MmioWrite {
                address,
                data,
                size,
            } => {
                return Err(crash(
                    vcpu,
                    mem,
                    &format!(
                        "write of {size} bytes ({data:#x}) to {address:#x}, which is neither RAM nor a device"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::Shutdown => {
                return Err(crash(
                    vcpu,
                    mem,
                    "triple fault (the CPU shut down after an exception it could not handle)",
                    None,
                    None,
                ));
            }
            VcpuExit::EmulationFailure { rip, instruction } => {
                if fallback.enabled {
                    let reported = instruction.as_ref().map(|bytes| bytes.0.as_slice());
                    match fallback.execute(vcpu, mem, reported) {
                        Some(Ok(mnemonic)) => {
                            if let Some(stats) = stats.as_deref_mut() {
                                stats.record_emulated(&mnemonic);
                            }
                            continue;
                        }
                        Some(Err(error)) => {
                            let what = format!(
                                "emulation failure the user-space fallback cannot handle: {error}"
                            );
                            return Err(crash(vcpu, mem, &what, Some(rip), instruction));
                        }
                        None => {}
                    }
                }
                let failure = crash(vcpu, mem, EMULATION_FAILURE, Some(rip), instruction);
                return Err(failure.with_hint(EMULATION_FAILURE_HINT));
            }
            VcpuExit::Debug => {
                return Err(crash(vcpu, mem, "unexpected debug exit", None, None));
            }
            VcpuExit::FailedEntry { reason } => {
                return Err(crash(
                    vcpu,
                    mem,
                    &format!(
                        "the hypervisor refused to enter the guest (hardware reason {reason:#x})"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::Unhandled { description } => {
                return Err(crash(
                    vcpu,
                    mem,
                    &format!("unhandled exit: {description}"),
                    None,
                    None,
                ));
            }
        }
    }
}

impl VmError {
    fn with_hint(self, hint: &'static str) -> Self {
        match self {
            VmError::GuestCrash(mut crash) => {
                crash.hint = Some(hint);
                VmError::GuestCrash(crash)
            }
            other => other,
        }
    }
}

/// Builds a [`GuestCrash`] error, reading RIP and the instruction bytes where the backend did not
/// report them, and logs a register dump at debug level.
fn crash(
    vcpu: &mut dyn VirtualCpu,
    mem: &GuestMemory,
    what: &str,
    rip: Option<u64>,
    bytes: Option<InstructionBytes>,
) -> VmError {
    let rip = rip.or_else(|| vcpu.instruction_pointer().ok());
    let bytes = bytes.or_else(|| {
        let root = vcpu.page_table_root().ok()?;
        read_instruction(mem, root, rip?)
    });
    if log::log_enabled!(log::Level::Debug) {
        match vcpu.register_dump() {
            Ok(dump) => log::debug!("vCPU {} registers:\n{dump}", vcpu.id()),
            Err(e) => log::debug!("vCPU {}: no register dump: {e}", vcpu.id()),
        }
    }
    let instruction = match (rip, bytes) {
        (Some(rip), Some(bytes)) => {
            let (text, len) = decode_instruction(rip, &bytes.0);
            let mut shown = bytes.0;
            if len > 0 {
                shown.truncate(len);
            }
            Some((text, InstructionBytes(shown)))
        }
        _ => None,
    };
    VmError::GuestCrash(GuestCrash {
        cpu: vcpu.id(),
        what: what.to_string(),
        rip,
        instruction,
        hint: None,
    })
}

/// Reads up to 15 instruction bytes at guest-virtual `rip`, stopping at the first unmapped page.
fn read_instruction(mem: &GuestMemory, root: GuestPhysAddr, rip: u64) -> Option<InstructionBytes> {
    const MAX_INSTRUCTION_LEN: u64 = 15;
    let mut bytes = Vec::with_capacity(MAX_INSTRUCTION_LEN as usize);
    // At most two pages: the one holding RIP and, if the instruction may cross it, the next.
    let in_first_page = arch::paging::PAGE_SIZE - rip % arch::paging::PAGE_SIZE;
    for (start, len) in [
        (rip, in_first_page.min(MAX_INSTRUCTION_LEN)),
        (
            rip.checked_add(in_first_page)?,
            MAX_INSTRUCTION_LEN.saturating_sub(in_first_page),
        ),
    ] {
        if len == 0 {
            break;
        }
        let Ok(pieces) = arch::translate_range(mem, root, GuestVirtAddr::new(start), len) else {
            break;
        };
        for (address, piece_len) in pieces {
            let mut piece = vec![0u8; piece_len as usize];
            mem.read(address, &mut piece).ok()?;
            bytes.extend_from_slice(&piece);
        }
    }
    (!bytes.is_empty()).then_some(InstructionBytes(bytes))
}

/// Decodes one x86_64 instruction for a diagnostic, e.g. `xgetbv`. Returns its text and its
/// length in bytes (0 if the bytes do not decode).
pub fn decode_instruction(rip: u64, bytes: &[u8]) -> (String, usize) {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return ("(undecodable)".to_string(), 0);
    }
    let mut text = String::new();
    IntelFormatter::new().format(&instruction, &mut text);
    (text, instruction.len())
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
    fn decodes_the_instructions_this_kvm_cannot_emulate() {
        let decode = |bytes: &[u8]| decode_instruction(0x1000, bytes);
        assert_eq!(
            decode(&[0x0f, 0x01, 0xd0, 0x48, 0xc1]),
            ("xgetbv".into(), 3)
        );
        assert_eq!(decode(&[0x0f, 0x57, 0xc0]), ("xorps xmm0,xmm0".into(), 3));
        assert_eq!(decode(&[0xff, 0xff]), ("(undecodable)".into(), 0));
        assert_eq!(decode(&[]), ("(undecodable)".into(), 0));
    }

    #[test]
    fn crash_messages_name_cpu_rip_and_instruction() {
        let crash = GuestCrash {
            cpu: 0,
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
