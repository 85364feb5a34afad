//! Running a prepared VM: one host thread per vCPU (each creates, runs and drops its own vCPU,
//! Hypervisor.framework's rule), a start gate that releases them together once the boot
//! structures are written, and a supervisor on the calling thread that stops every vCPU when the
//! first one ends (guest Exit, crash, host error or panic) or a stop signal arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use std::net::TcpListener;

use crate::affinity;
use crate::arch::GuestArch;
use crate::confine::ThreadRole;
use crate::debug::Debugger;
use crate::debug::gdb::{self, SessionEnd};
use crate::exits::{EmulationFallback, ExitServices, GuestExit, LoopVcpu, run_vcpu};
use crate::hypervisor::{Hypervisor, VcpuKick};
use crate::stats::{ExitStats, RunStats};
use crate::virtio::DeviceInterrupt;

use super::{ThreadError, Vm, VmError};

impl<H: Hypervisor> Vm<H> {
    /// Runs every vCPU on its own thread until the VM stops: the first vCPU's end (or a stop
    /// signal) is the result; the statistics if they were asked for.
    ///
    /// The GDB server's socket is bound before the confinement; the file restriction comes
    /// before the vCPU threads, which inherit it from the thread that spawns them. After that the
    /// main thread only waits, writes the boot info and kicks.
    pub(super) fn run_vcpus(&self) -> (Result<GuestExit, VmError>, Option<RunStats>) {
        let listener = match self.gdb_listener() {
            Ok(listener) => listener,
            Err(error) => return (Err(error), None),
        };
        let kicks: Mutex<Vec<Option<H::Kick>>> =
            Mutex::new((0..self.cpu_count).map(|_| None).collect());
        let kick_all = || {
            for kick in lock_kicks(&kicks).iter().flatten() {
                kick.kick();
            }
        };
        let bias = self.guest.kernel.load_bias;
        let debugger = (listener.as_ref())
            .map(|_| Debugger::new(self.cpu_count, H::ARCH, &self.guest.mem, &kick_all, bias));
        let killed = AtomicBool::new(false);
        let device_interrupt = CardInterrupt {
            hypervisor: &self.hypervisor,
        };
        let shared = SharedVcpuState {
            services: self.exit_services(debugger.as_ref(), &device_interrupt),
            kicks: &kicks,
        };
        if let Err(error) = self.confiner.restrict_files() {
            return (Err(error.into()), None);
        }
        let gate = StartGate::default();
        let mut supervisor = Supervisor::new(self.cpu_count as usize);
        thread::scope(|scope| {
            let (reports, inbox) = mpsc::channel::<VcpuReport>();
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
                if let Err(source) = spawned {
                    supervisor.finished += 1;
                    supervisor.end_with(Err(ThreadError::VcpuSpawn { cpu, source }.into()));
                }
            }
            drop(reports);
            let gdb = (&listener, &debugger);
            if let Err(error) = self.spawn_helpers(scope, &device_interrupt, gdb, &shared, &killed)
            {
                supervisor.end_with(Err(error.into()));
                shared.stop_all();
            }
            if let Err(error) = self.confiner.restrict_syscalls(ThreadRole::Main) {
                supervisor.end_with(Err(error.into()));
            }
            // Every vCPU is created (or failed) before any runs: then the boot info can carry
            // the TSC frequency, and all vCPUs start at the entry point together.
            let tsc = supervisor.wait_until_ready(&inbox);
            if supervisor.first_end.is_none()
                && let Err(error) = self.write_boot(tsc)
            {
                supervisor.end_with(Err(error));
            }
            gate.open(supervisor.first_end.is_none());
            supervisor.wait_until_finished(&inbox, &shared);
            self.stop_net_io();
        });
        let stats = self.stats.then(|| supervisor.stats());
        if killed.load(Ordering::SeqCst) {
            return (Err(VmError::KilledByDebugger), stats);
        }
        (supervisor.result(), stats)
    }
}

impl<H: Hypervisor> Vm<H> {
    /// What every vCPU's exit loop uses.
    fn exit_services<'s>(
        &'s self,
        debugger: Option<&'s Debugger<'s>>,
        device_interrupt: &'s dyn DeviceInterrupt,
    ) -> ExitServices<'s> {
        ExitServices {
            mem: &self.guest.mem,
            hypercalls: &self.hypercalls,
            fallback: EmulationFallback::new(self.emulation_fallback),
            stop: AtomicBool::new(false),
            debugger,
            devices: self.pci_devices(),
            device_interrupt,
            pci_ecam: self.net.as_ref().and(pci_ecam(H::ARCH)),
        }
    }

    /// The PCI devices the exit loops serve (the network card), if any.
    fn pci_devices(&self) -> Option<&dyn crate::virtio::PciDevices> {
        #[cfg(target_os = "linux")]
        return self
            .net
            .as_ref()
            .map(|net| net as &dyn crate::virtio::PciDevices);
        #[cfg(not(target_os = "linux"))]
        return None;
    }

    /// Starts the helper threads: the network card's receiver and the GDB server.
    fn spawn_helpers<'scope, 'env, K: VcpuKick>(
        &'env self,
        scope: &'scope thread::Scope<'scope, 'env>,
        interrupt: &'env dyn DeviceInterrupt,
        gdb: (&'env Option<TcpListener>, &'env Option<Debugger<'env>>),
        shared: &'env SharedVcpuState<'env, K>,
        killed: &'env AtomicBool,
    ) -> Result<(), ThreadError> {
        self.spawn_net_io(scope, interrupt)?;
        if let (Some(listener), Some(debugger)) = gdb {
            spawn_gdb(scope, listener, debugger, shared, killed)?;
        }
        Ok(())
    }

    /// Starts the network card's I/O thread.
    fn spawn_net_io<'scope, 'env>(
        &'env self,
        scope: &'scope thread::Scope<'scope, 'env>,
        interrupt: &'env dyn DeviceInterrupt,
    ) -> Result<(), ThreadError> {
        #[cfg(target_os = "linux")]
        if let Some(net) = &self.net {
            let mem = self.guest.mem.as_vm_memory();
            let confiner = &self.confiner;
            let receive = move || {
                // The same allowlist as the vCPUs: it reads and writes the backend and eventfds, and
                // raises interrupts.
                if let Err(error) = confiner.restrict_syscalls(ThreadRole::NetIo) {
                    log::error!("network card: no frames for the guest: {error}");
                    return;
                }
                net.run_io(mem, interrupt);
            };
            thread::Builder::new()
                .name("net-io".into())
                .spawn_scoped(scope, receive)
                .map_err(ThreadError::NetSpawn)?;
        }
        let _ = (scope, interrupt);
        Ok(())
    }

    fn stop_net_io(&self) {
        #[cfg(target_os = "linux")]
        if let Some(net) = &self.net {
            net.stop();
        }
    }

    /// The GDB server's socket, if `-s/--gdb-port` asked for one.
    fn gdb_listener(&self) -> Result<Option<TcpListener>, VmError> {
        self.gdb
            .map(|gdb| {
                TcpListener::bind(gdb.0).map_err(|source| VmError::GdbListen {
                    address: gdb.0,
                    source,
                })
            })
            .transpose()
    }
}

/// Starts the GDB server's thread; a kill from GDB stops the VM.
fn spawn_gdb<'scope, 'env, K: VcpuKick>(
    scope: &'scope thread::Scope<'scope, 'env>,
    listener: &'env TcpListener,
    debugger: &'env Debugger<'env>,
    shared: &'env SharedVcpuState<'env, K>,
    killed: &'env AtomicBool,
) -> Result<(), ThreadError> {
    thread::Builder::new()
        .name("gdb".into())
        .spawn_scoped(scope, move || {
            if gdb::serve(listener, debugger) == SessionEnd::Killed {
                killed.store(true, Ordering::SeqCst);
                shared.stop_all();
            }
        })
        .map(|_| ())
        .map_err(ThreadError::GdbSpawn)
}

/// The main thread's view of the vCPU threads while they run.
struct Supervisor {
    count: usize,
    finished: usize,
    first_end: Option<Result<GuestExit, VmError>>,
    per_cpu: Vec<(u32, ExitStats)>,
}

impl Supervisor {
    fn new(count: usize) -> Self {
        Self {
            count,
            finished: 0,
            first_end: None,
            per_cpu: Vec::new(),
        }
    }

    /// Records how the VM ends, unless an earlier end was recorded.
    fn end_with(&mut self, end: Result<GuestExit, VmError>) {
        self.first_end.get_or_insert(end);
    }

    /// Waits until every vCPU is ready (or finished); vCPU 0's TSC frequency.
    fn wait_until_ready(&mut self, inbox: &mpsc::Receiver<VcpuReport>) -> Option<u32> {
        let mut ready = 0usize;
        let mut tsc = None;
        while ready + self.finished < self.count {
            match inbox.recv() {
                Ok(VcpuReport::Ready { cpu, tsc_khz }) => {
                    ready += 1;
                    if cpu == 0 {
                        tsc = tsc_khz;
                    }
                }
                Ok(VcpuReport::Finished { end, stats, cpu }) => {
                    self.finished += 1;
                    self.per_cpu.extend(stats.map(|s| (cpu, s)));
                    self.end_with(end.into_result());
                }
                Err(_) => break,
            }
        }
        tsc
    }

    /// Waits until every vCPU thread has finished, stopping all of them when the first one
    /// ends or a stop signal arrives.
    fn wait_until_finished<K: VcpuKick>(
        &mut self,
        inbox: &mpsc::Receiver<VcpuReport>,
        shared: &SharedVcpuState<'_, K>,
    ) {
        let mut stopping_since: Option<Instant> = None;
        while self.finished < self.count {
            match inbox.recv_timeout(STOP_POLL) {
                Ok(VcpuReport::Finished { cpu, end, stats }) => {
                    self.finished += 1;
                    self.per_cpu.extend(stats.map(|s| (cpu, s)));
                    if !matches!(end, VcpuEnd::Stopped) {
                        self.end_with(end.into_result());
                    }
                    stopping_since.get_or_insert_with(Instant::now);
                    shared.stop_all();
                }
                Ok(VcpuReport::Ready { .. }) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(signal) = crate::signals::stop_requested() {
                        self.end_with(Err(VmError::Stopped(signal)));
                    }
                    if self.first_end.is_some() {
                        // Kick again: cheap, and robust against a vCPU that was between its
                        // stop check and entering the guest when the first kick came.
                        shared.stop_all();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Some(since) = stopping_since {
            log::debug!(
                "all {} vCPUs stopped {:?} after the first one ended",
                self.count,
                since.elapsed()
            );
        }
    }

    fn stats(&mut self) -> RunStats {
        let mut per_cpu = std::mem::take(&mut self.per_cpu);
        per_cpu.sort_by_key(|(cpu, _)| *cpu);
        RunStats {
            per_cpu,
            elapsed: Duration::ZERO,
            network: None,
        }
    }

    fn result(self) -> Result<GuestExit, VmError> {
        self.first_end
            .unwrap_or_else(|| Err(ThreadError::NoResult.into()))
    }
}

/// How often the main thread checks for stop signals while the vCPUs run.
const STOP_POLL: Duration = Duration::from_millis(10);

/// What the vCPU threads share.
struct SharedVcpuState<'a, K> {
    /// What the exit loops use.
    services: ExitServices<'a>,
    /// How to interrupt each vCPU; an entry is present only while its vCPU exists.
    kicks: &'a Mutex<Vec<Option<K>>>,
}

fn lock_kicks<K>(kicks: &Mutex<Vec<Option<K>>>) -> std::sync::MutexGuard<'_, Vec<Option<K>>> {
    // The vector holds plain handles, consistent even if a holder panicked.
    kicks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: VcpuKick> SharedVcpuState<'_, K> {
    fn kicks(&self) -> std::sync::MutexGuard<'_, Vec<Option<K>>> {
        lock_kicks(self.kicks)
    }

    /// Stops the whole VM: every vCPU leaves the guest at once and does not re-enter.
    fn stop_all(&self) {
        self.services.stop.store(true, Ordering::SeqCst);
        self.services.hypercalls.stop();
        if let Some(debugger) = self.services.debugger {
            debugger.shutdown();
        }
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
            Self::Stopped => Err(ThreadError::NoResult.into()),
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

/// Removes a vCPU's kick handle from the registry when dropped, before the vCPU itself goes (a
/// kick after that would do nothing; the registry only lists vCPUs that exist).
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
        let end =
            outcome.unwrap_or_else(|_| VcpuEnd::Failed(ThreadError::VcpuPanicked { cpu }.into()));
        if let Some(debugger) = self.shared.services.debugger {
            let code = match end {
                VcpuEnd::Exit(code) => Some(code),
                _ => None,
            };
            debugger.vcpu_finished(cpu, code);
        }
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
        let registers = self.vm.guest.registers.for_cpu(cpu);
        let (mut vcpu, kick) = match self.vm.hypervisor.create_vcpu(cpu, &registers) {
            Ok(created) => created,
            Err(error) => return VcpuEnd::Failed(error.into()),
        };
        if let Some(slot) = self.shared.kicks().get_mut(cpu as usize) {
            *slot = Some(kick);
        }
        // Declared after `vcpu`, so dropped before it.
        let _registration = KickRegistration {
            shared: self.shared,
            cpu: cpu as usize,
        };
        // The vCPU exists and is set up: from here on, only the run phase's system calls.
        if let Err(error) = self.vm.confiner.restrict_syscalls(ThreadRole::Vcpu) {
            return VcpuEnd::Failed(error.into());
        }
        let ready = VcpuReport::Ready {
            cpu,
            tsc_khz: H::tsc_khz(&vcpu),
        };
        if self.reports.send(ready).is_err() || !self.gate.wait() {
            return VcpuEnd::Stopped;
        }
        let looped = LoopVcpu {
            vcpu: &mut vcpu,
            x86: H::x86_vcpu,
            aarch64: H::aarch64_vcpu,
        };
        let mut stats = stats;
        let started = std::time::Instant::now();
        let result = run_vcpu(looped, &self.shared.services, stats.as_deref_mut());
        if let Some(stats) = stats {
            stats.set_runtime(started.elapsed());
        }
        match result {
            Ok(Some(GuestExit(code))) => VcpuEnd::Exit(code),
            Ok(None) => VcpuEnd::Stopped,
            Err(error) => VcpuEnd::Failed(error.into()),
        }
    }
}

/// The network card's interrupt in the guest.
///
/// On x86_64 a message-signalled interrupt straight to the boot CPU's local APIC at vector
/// 0x20 + the card's line, where the kernel's handler for that line sits (Hermit does not
/// program the I/O APIC on uhyve); nothing to lower. On aarch64 the card's level-triggered SPI,
/// high until the driver reads the ISR.
struct CardInterrupt<'h, H> {
    hypervisor: &'h H,
}

impl<H: Hypervisor> DeviceInterrupt for CardInterrupt<'_, H> {
    fn raise(&self) {
        let result = match H::ARCH {
            GuestArch::X86_64 => {
                const LOCAL_APIC_MSI: u64 = 0xfee0_0000;
                let line = crate::arch::x86_64::layout::NET_INTERRUPT_LINE;
                self.hypervisor
                    .signal_msi(LOCAL_APIC_MSI, 0x20 + u32::from(line))
            }
            GuestArch::Aarch64 => {
                (self.hypervisor).set_spi_level(crate::arch::aarch64::layout::NET_SPI, true)
            }
        };
        if let Err(error) = result {
            log::debug!("network card interrupt: {error}");
        }
    }

    fn lower(&self) {
        if H::ARCH == GuestArch::Aarch64
            && let Err(error) =
                (self.hypervisor).set_spi_level(crate::arch::aarch64::layout::NET_SPI, false)
        {
            log::debug!("network card interrupt: {error}");
        }
    }
}

/// The ECAM window through which guests of `arch` reach PCI configuration space (aarch64; an
/// x86_64 kernel uses ports 0xCF8/0xCFC).
fn pci_ecam(arch: GuestArch) -> Option<std::ops::Range<u64>> {
    (arch == GuestArch::Aarch64).then_some(crate::arch::aarch64::layout::PCI_ECAM)
}
