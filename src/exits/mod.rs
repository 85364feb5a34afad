//! What each vCPU exit means: the per-vCPU exit loop hands hypercalls to the shared dispatcher,
//! answers PCI probes and unknown ports, runs the user-space emulation fallback on emulation
//! failures ([`emulation`]), and turns every other exit into a [`GuestCrash`] report
//! ([`crash`]).

pub mod crash;
pub mod emulation;

use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

use crate::debug::{DebugVcpu, Debugger, Go};
use crate::hypercall::{HypercallError, HypercallOutcome, Hypercalls};
use crate::hypervisor::aarch64::debug::Aarch64Vcpu;
use crate::hypervisor::x86_64::X86Vcpu;
use crate::hypervisor::{InstructionBytes, VcpuError, VcpuExit, VirtualCpu};
use crate::mem::GuestMemory;
use crate::stats::ExitStats;
use crate::virtio::{DeviceInterrupt, PciDevices};

pub use self::crash::GuestCrash;
use self::crash::{Crash, CrashContext};
pub use self::emulation::EmulationFallback;

/// What an emulation failure is, for the crash report.
const EMULATION_FAILURE: &str = "emulation failure: the hypervisor cannot execute this instruction";
/// Why emulation failures happen, for the crash report.
const EMULATION_FAILURE_HINT: &str = "Some KVM hosts (e.g. KVM-PVM) execute every guest \
     instruction in software and lack some instructions (SSE arithmetic, XSAVE, XGETBV)";

/// PCI configuration address port.
const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// PCI configuration data port.
const PCI_CONFIG_DATA: u16 = 0xcfc;

/// How a run ended when the guest itself asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit(pub i32);

/// Why a vCPU's exit loop stopped the VM.
#[derive(Debug, Error)]
pub enum ExitError {
    /// Running the vCPU failed on the host side.
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
    #[error(transparent)]
    GuestCrash(#[from] GuestCrash),
}

/// The most instructions the emulation fallback executes per exit (a run, see
/// [`emulation::emulate_on_vcpu`]): interrupts wait for the end of a run, so it stays short.
const EMULATION_RUN_LIMIT: usize = 64;

/// State of the emulated PCI configuration mechanism: no devices, every read is all-ones.
#[derive(Debug, Default)]
struct PciConfigSpace {
    address: u32,
}

/// What every vCPU's exit loop uses; shared by all vCPU threads.
pub struct ExitServices<'a> {
    /// Guest RAM.
    pub mem: &'a GuestMemory,
    /// The hypercall dispatcher.
    pub hypercalls: &'a Hypercalls,
    /// The emulation fallback.
    pub fallback: EmulationFallback,
    /// Set when the VM stops; every exit loop checks it before entering the guest.
    pub stop: AtomicBool,
    /// The debugger (`-s/--gdb-port`), if one is attached.
    pub debugger: Option<&'a Debugger<'a>>,
    /// The PCI devices (the network card of `--net`), if any.
    pub devices: Option<&'a dyn PciDevices>,
    /// The devices' interrupt in the guest.
    pub device_interrupt: &'a dyn DeviceInterrupt,
    /// The guest-physical ECAM window of the PCI host bridge (aarch64), if the guest has one.
    pub pci_ecam: Option<std::ops::Range<u64>>,
}

/// One vCPU as its exit loop drives it: the backend-neutral vCPU, and its x86 state access for
/// the emulation fallback where the backend offers it.
pub struct LoopVcpu<'v, C: VirtualCpu> {
    /// The vCPU.
    pub vcpu: &'v mut C,
    /// Its x86 side (the hypervisor's [`crate::hypervisor::Hypervisor::x86_vcpu`]).
    pub x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
    /// Its aarch64 register access for a debugger
    /// ([`crate::hypervisor::Hypervisor::aarch64_vcpu`]).
    pub aarch64: fn(&mut C) -> Option<&mut dyn Aarch64Vcpu>,
}

/// What the loop does after one exit.
enum Next {
    /// Enter the guest again.
    Resume,
    /// The guest called Exit.
    Exit(GuestExit),
}

/// The exit loop of one vCPU: `Some(exit)` when the guest called Exit, `None` when the VM was
/// stopped from outside this vCPU.
pub fn run_vcpu<C: VirtualCpu>(
    cpu: LoopVcpu<'_, C>,
    shared: &ExitServices<'_>,
    mut stats: Option<&mut ExitStats>,
) -> Result<Option<GuestExit>, ExitError> {
    let LoopVcpu { vcpu, x86, aarch64 } = cpu;
    let mut pci = PciConfigSpace::default();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(debugger) = shared.debugger {
            let lent = DebugVcpu {
                vcpu: &mut *vcpu,
                x86,
                aarch64,
            };
            if debugger.before_run(lent) == Go::Stop {
                return Ok(None);
            }
        }
        let id = vcpu.id();
        let exit = vcpu
            .run()
            .map_err(|source| ExitError::Vcpu { cpu: id, source })?;
        if let Some(debugger) = shared.debugger
            && debugger.after_exit(&mut *vcpu, &exit)
        {
            continue;
        }
        if let Some(stats) = stats.as_deref_mut() {
            stats.record(exit.kind());
        }
        let mut handler = ExitHandler {
            vcpu: &mut *vcpu,
            x86,
            shared,
            pci: &mut pci,
            stats: stats.as_deref_mut(),
        };
        if let Next::Exit(exit) = handler.handle(exit)? {
            return Ok(Some(exit));
        }
    }
}

/// Handles one exit of one vCPU.
struct ExitHandler<'a, 's, C: VirtualCpu> {
    vcpu: &'a mut C,
    x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
    shared: &'a ExitServices<'s>,
    pci: &'a mut PciConfigSpace,
    stats: Option<&'a mut ExitStats>,
}

impl<C: VirtualCpu> ExitHandler<'_, '_, C> {
    fn handle(&mut self, exit: VcpuExit) -> Result<Next, ExitError> {
        let cpu = self.vcpu.id();
        let vcpu_error = |source| ExitError::Vcpu { cpu, source };
        match exit {
            VcpuExit::Hypercall { address, argument } => return self.hypercall(address, argument),
            VcpuExit::HypercallRead { address, size } => {
                let value = self.shared.hypercalls.handle_read(address, size);
                self.vcpu
                    .complete_hypercall_read(value)
                    .map_err(vcpu_error)?;
            }
            VcpuExit::PortOut { port, data, size } => self.port_out(port, data, size),
            VcpuExit::PortIn { port, size } => {
                let value = self.port_in(port, size);
                self.vcpu.complete_port_in(value).map_err(vcpu_error)?;
            }
            VcpuExit::MmioRead { address, size } => match self.device_read(address, size) {
                Some(value) => self.vcpu.complete_mmio_read(value).map_err(vcpu_error)?,
                None => return Err(self.crash(Crash::new(describe_fatal(&exit))).into()),
            },
            VcpuExit::MmioWrite {
                address,
                data,
                size,
            } if self.device_write(address, data, size) => {}
            // With the in-kernel irqchip KVM handles HLT itself; if it reports one anyway,
            // re-entering waits for the next interrupt. An interrupted run (a kick or a host
            // signal) resumes too: a stop request is handled at the top of the loop.
            VcpuExit::Halt | VcpuExit::Interrupted => {}
            VcpuExit::EmulationFailure { rip, instruction } => {
                self.emulation_failure(rip, instruction)?;
            }
            VcpuExit::MmioWrite { size, .. } => {
                let crash = Crash::new(describe_fatal(&exit)).after_store(size);
                return Err(self.crash(crash).into());
            }
            other => return Err(self.crash(Crash::new(describe_fatal(&other))).into()),
        }
        Ok(Next::Resume)
    }

    fn port_out(&mut self, port: u16, data: u32, size: u8) {
        let devices = self.shared.devices;
        match (port, devices) {
            (PCI_CONFIG_ADDRESS, _) if size == 4 => self.pci.address = data,
            (PCI_CONFIG_DATA..=0xcff, Some(devices)) => {
                let byte = (port - PCI_CONFIG_DATA) as u8;
                devices.config_write(self.pci.address, byte, size, data);
            }
            _ => log::debug!(
                "vCPU {}: ignored write of {data:#x} to port {port:#x}",
                self.vcpu.id()
            ),
        }
    }

    /// A port read: a device's configuration register, else all-ones (no device there).
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        if let (PCI_CONFIG_DATA..=0xcff, Some(devices)) = (port, self.shared.devices) {
            let byte = (port - PCI_CONFIG_DATA) as u8;
            if let Some(value) = devices.config_read(self.pci.address, byte, size) {
                return value;
            }
        }
        if port != PCI_CONFIG_DATA {
            log::debug!(
                "vCPU {}: read of {size} bytes from unknown port {port:#x}",
                self.vcpu.id()
            );
        }
        u32::MAX
    }

    fn device_read(&self, address: u64, size: u8) -> Option<u64> {
        let devices = self.shared.devices?;
        if let Some(offset) = self.ecam_offset(address) {
            return Some(ecam_read(devices, offset, size));
        }
        devices.mmio_read(address, size, self.shared.device_interrupt)
    }

    fn device_write(&self, address: u64, data: u64, size: u8) -> bool {
        let Some(devices) = self.shared.devices else {
            return false;
        };
        if let Some(offset) = self.ecam_offset(address) {
            if let Some((config, byte)) = crate::virtio::pci::ecam_config_address(offset) {
                devices.config_write(config, byte, size.min(4), data as u32);
            }
            return true;
        }
        let mem = self.shared.mem.as_vm_memory();
        devices.mmio_write(mem, address, size, data, self.shared.device_interrupt)
    }

    /// The offset of `address` in the ECAM window, if it lies there.
    fn ecam_offset(&self, address: u64) -> Option<u64> {
        let window = self.shared.pci_ecam.as_ref()?;
        window.contains(&address).then(|| address - window.start)
    }

    fn hypercall(&mut self, address: u16, argument: u64) -> Result<Next, ExitError> {
        let mut root = || self.vcpu.page_table_root();
        let (mem, hypercalls) = (self.shared.mem, self.shared.hypercalls);
        match hypercalls.handle(mem, address, argument, &mut root) {
            HypercallOutcome::Continue => Ok(Next::Resume),
            HypercallOutcome::Exit(code) => Ok(Next::Exit(GuestExit(code))),
            HypercallOutcome::Fatal(source) => Err(ExitError::Hypercall {
                cpu: self.vcpu.id(),
                source,
            }),
        }
    }

    /// Runs the user-space fallback on an instruction the hypervisor could not execute, or
    /// reports the crash.
    fn emulation_failure(
        &mut self,
        rip: u64,
        instruction: Option<InstructionBytes>,
    ) -> Result<(), ExitError> {
        let fallback = &self.shared.fallback;
        if fallback.enabled()
            && let Some(x86) = (self.x86)(self.vcpu)
        {
            let reported = instruction.as_ref().map(|bytes| bytes.0.as_slice());
            // One instruction at a time under a debugger (single steps stay single).
            let run_limit = if self.shared.debugger.is_some() {
                1
            } else {
                EMULATION_RUN_LIMIT
            };
            match fallback.execute(x86, self.shared.mem, reported, run_limit) {
                Ok(mnemonics) => {
                    if let Some(stats) = self.stats.as_deref_mut() {
                        for mnemonic in &mnemonics {
                            stats.record_emulated(mnemonic);
                        }
                    }
                    return Ok(());
                }
                Err(error) => {
                    let what =
                        format!("emulation failure the user-space fallback cannot handle: {error}");
                    return Err(self.crash(Crash::new(what).at(rip, instruction)).into());
                }
            }
        }
        let crash = Crash::new(EMULATION_FAILURE)
            .at(rip, instruction)
            .hint(EMULATION_FAILURE_HINT);
        Err(self.crash(crash).into())
    }

    fn crash(&mut self, crash: Crash) -> GuestCrash {
        let guest = CrashContext {
            mem: self.shared.mem,
            arch: self.shared.hypercalls.arch(),
        };
        crash.report(&mut *self.vcpu, guest)
    }
}

/// A read of `size` bytes at `offset` of the ECAM window: the configuration register of a
/// device, all-ones where no device answers (as an empty slot reads), zeros in a device's
/// extended configuration space (no extended capabilities).
fn ecam_read(devices: &dyn PciDevices, offset: u64, size: u8) -> u64 {
    let all_ones = match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    match crate::virtio::pci::ecam_config_address(offset) {
        Some((config, byte)) => devices
            .config_read(config, byte, size.min(4))
            .map_or(all_ones, u64::from),
        None => {
            let function_start = crate::virtio::pci::ecam_config_address(offset & !0xfff);
            let present = function_start
                .is_some_and(|(config, _)| devices.config_read(config, 0, 4).is_some());
            if present { 0 } else { all_ones }
        }
    }
}

/// What a fatal exit means, for the crash report.
fn describe_fatal(exit: &VcpuExit) -> String {
    match exit {
        VcpuExit::MmioRead { address, size } => {
            format!("read of {size} bytes from {address:#x}, which is neither RAM nor a device")
        }
        VcpuExit::MmioWrite {
            address,
            data,
            size,
        } => format!(
            "write of {size} bytes ({data:#x}) to {address:#x}, which is neither RAM nor a device"
        ),
        VcpuExit::Shutdown => {
            "triple fault (the CPU shut down after an exception it could not handle)".into()
        }
        VcpuExit::Debug(_) => "unexpected debug exit".into(),
        VcpuExit::FailedEntry { reason } => {
            format!("the hypervisor refused to enter the guest (hardware reason {reason:#x})")
        }
        VcpuExit::Unhandled { description } => format!("unhandled exit: {description}"),
        other => format!("unexpected exit: {}", other.kind()),
    }
}
