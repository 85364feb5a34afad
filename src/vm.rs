//! Building and running one VM: reads and loads the Hermit image, lays out guest RAM (page tables,
//! GDT, boot info, FDT), creates the backend VM, and runs every vCPU on its own thread (each
//! creates its own vCPU; a start gate releases them together once the boot info is written). The
//! first vCPU to end stops the whole VM; its Exit code or error is the result. What each exit
//! means is decided in [`crate::exits`].

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::affinity;
use crate::arch::x86_64::{self as arch, GdtError, MemoryLayout, layout};
use crate::boot::{self, BootError, BootParams, FdtParams, TlsImage};
use crate::exits::{EmulationFallback, ExitServices, run_vcpu};
use crate::hypercall::{GuestCommandLine, HypercallError, Hypercalls};
use crate::isolation::{FileMap, IsolationError};
use crate::loader::{KernelImage, LoadError, LoadedKernel};
use crate::mem::{GuestMemory, MemoryError};
use crate::output::{OutputError, SerialOutput};
use crate::params::VmConfig;
use crate::stats::{ExitStats, RunStats};
use crate::vcpu::{InstructionBytes, VcpuError};

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
impl crate::vcpu::VirtualCpu for BackendCpu {
    fn id(&self) -> u32 {
        match *self {}
    }
    fn run(&mut self) -> Result<crate::vcpu::VcpuExit, VcpuError> {
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
    /// What the exit loops use.
    services: ExitServices<'a>,
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
