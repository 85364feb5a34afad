//! What a hypervisor backend is to the rest of uhyve: the [`Hypervisor`] (one VM: map guest RAM,
//! create vCPUs), its [`VirtualCpu`]s with their one owned, backend-neutral exit value
//! [`VcpuExit`], the [`VcpuKick`] that interrupts a running vCPU, the state a vCPU starts in
//! ([`EntryRegisters`]), and the errors of both ([`HypervisorError`], [`VcpuError`]).
//!
//! A backend (`crate::linux` for KVM, `crate::hvf` for Hypervisor.framework) implements these
//! traits and translates its native exits into [`VcpuExit`]; it depends on nothing above this
//! module. Everything that decides what an exit *means* — hypercall dispatch, PCI probing, error
//! reporting — lives in shared code and sees only these types. x86_64 backends additionally
//! implement [`x86_64::X86Vcpu`], the state access the user-space instruction emulator needs;
//! aarch64 backends share [`aarch64::classify_access`], what a load or store without RAM means.

pub mod aarch64;
pub mod thread_kick;
pub mod x86_64;

use std::fmt;

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::arch::{GuestArch, aarch64 as arm, x86_64 as x86};
use crate::mem::GuestMemory;

/// The bytes of the instruction at which the guest stopped, as far as the backend knows them.
#[derive(Clone, PartialEq, Eq)]
pub struct InstructionBytes(pub Vec<u8>);

impl fmt::Debug for InstructionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for InstructionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Why a virtual CPU returned to the host. Owned: holds no borrow of backend state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// The guest issued a hypercall: a write to `address` (an x86_64 port, an aarch64 offset
    /// into the hypercall window) of a v1 or v2/v3 hypercall. `argument` is what the guest
    /// passed: on x86_64 the port data (the low 32 bits of a parameter block's GPA, or a byte)
    /// for v1 addresses and RDI for v2/v3 addresses; on aarch64 the stored register. The
    /// interface version of the VM decides what the address means.
    Hypercall {
        /// The hypercall address.
        address: u16,
        /// The raw argument the guest passed.
        argument: u64,
    },
    /// The guest read a hypercall address (v2/v3 SerialReadByte); answer with
    /// [`VirtualCpu::complete_hypercall_read`] before running again.
    HypercallRead {
        /// The hypercall address.
        address: u16,
        /// Access size in bytes.
        size: u8,
    },
    /// Port write that is not a hypercall.
    PortOut {
        /// Port number.
        port: u16,
        /// Data, zero-extended.
        data: u32,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
    },
    /// Port read; answer with [`VirtualCpu::complete_port_in`] before running again.
    PortIn {
        /// Port number.
        port: u16,
        /// Access size in bytes (1, 2 or 4).
        size: u8,
    },
    /// Memory read outside guest RAM (no device answers: the VM stops).
    MmioRead {
        /// Guest-physical address.
        address: u64,
        /// Access size in bytes (1 to 8).
        size: u8,
    },
    /// Memory write outside guest RAM.
    MmioWrite {
        /// Guest-physical address.
        address: u64,
        /// Data, zero-extended.
        data: u64,
        /// Access size in bytes (1 to 8).
        size: u8,
    },
    /// The guest halted and the backend wants the host to decide (normally handled in-kernel).
    Halt,
    /// The guest shut down (x86: triple fault).
    Shutdown,
    /// A debug exit (breakpoint, watchpoint or single step) of the guest debugging that
    /// [`VirtualCpu::set_guest_debug`] enabled.
    Debug(DebugExit),
    /// The hypervisor could not emulate an instruction.
    EmulationFailure {
        /// Instruction pointer of the failing instruction.
        rip: u64,
        /// The instruction bytes, where the backend reports them.
        instruction: Option<InstructionBytes>,
    },
    /// The run was interrupted by the host (a stop request); not a guest event.
    Interrupted,
    /// The hypervisor refused to enter the guest (invalid state).
    FailedEntry {
        /// Backend-specific reason code.
        reason: u64,
    },
    /// Any other exit the backend reports but uhyve does not handle.
    Unhandled {
        /// Backend-specific description of the exit.
        description: String,
    },
}

impl VcpuExit {
    /// A short name of the exit kind, for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hypercall { address, .. } | Self::HypercallRead { address, .. } => {
                uhyve_interface::hypercall_name(*address).unwrap_or("unknown hypercall")
            }
            Self::PortOut { .. } => "port out",
            Self::PortIn { .. } => "port in",
            Self::MmioRead { .. } => "mmio read",
            Self::MmioWrite { .. } => "mmio write",
            Self::Halt => "halt",
            Self::Shutdown => "shutdown",
            Self::Debug(_) => "debug",
            Self::EmulationFailure { .. } => "emulation failure",
            Self::Interrupted => "interrupted",
            Self::FailedEntry { .. } => "failed entry",
            Self::Unhandled { .. } => "unhandled",
        }
    }
}

/// What a [`VcpuExit::Debug`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugExit {
    /// A software breakpoint instruction (x86: `int3`); the instruction pointer is at it.
    SoftwareBreakpoint,
    /// One instruction was executed in single-step mode.
    SingleStep,
    /// Hardware breakpoint `n` ([`GuestDebug::hardware`]) matched an instruction fetch.
    HardwareBreakpoint(u8),
    /// Hardware watchpoint `n` matched a data access.
    Watchpoint(u8),
    /// A debug exit the backend could not attribute.
    Other,
}

/// What a hardware breakpoint slot watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareBreakpointKind {
    /// Instruction fetch.
    Execute,
    /// Data reads (aarch64; x86 debug registers watch reads only together with writes).
    Read,
    /// Data writes.
    Write,
    /// Data reads and writes.
    ReadWrite,
}

/// One hardware breakpoint or watchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareBreakpoint {
    /// Guest-virtual address.
    pub address: u64,
    /// What it matches.
    pub kind: HardwareBreakpointKind,
    /// Length in bytes (1, 2, 4 or 8; 1 for [`HardwareBreakpointKind::Execute`]).
    pub len: u8,
}

/// The guest debugging a debugger wants of a vCPU for its next runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Debugging is on at all (off: the guest runs as without a debugger).
    pub enabled: bool,
    /// Exit after every instruction.
    pub single_step: bool,
    /// Software breakpoint instructions exit to the host instead of reaching the guest.
    pub software_breakpoints: bool,
    /// The hardware breakpoint slots (x86: DR0–DR3).
    pub hardware: [Option<HardwareBreakpoint>; 4],
}

/// Failures talking to the hypervisor about a virtual CPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// A hypervisor call failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What uhyve asked the hypervisor to do.
        operation: &'static str,
        /// The error it returned (an `io::Error` for KVM, a return code for
        /// Hypervisor.framework).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hypervisor returned a value uhyve cannot interpret, or was asked out of order.
    #[error("{operation}: {detail}")]
    Unexpected {
        /// What uhyve asked the hypervisor to do.
        operation: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

/// Failures of the hypervisor itself: opening it, creating the VM, mapping guest RAM, creating a
/// vCPU.
#[derive(Debug, Error)]
pub enum HypervisorError {
    /// The backend failed; its own error says how (e.g. `/dev/kvm` missing, an entitlement
    /// missing, a failing call).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// Creating or setting up a vCPU failed.
    #[error("vCPU {cpu}: {source}")]
    Vcpu {
        /// The vCPU id.
        cpu: u32,
        /// The failure.
        source: VcpuError,
    },
}

/// What the user asked of the hypervisor's VM besides RAM and vCPUs (`--pit`, `--cpu-pm`). A
/// backend that cannot provide one of them says so in one warning and runs the guest without it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmFeatures {
    /// An in-kernel i8254 programmable interval timer (x86_64 KVM).
    pub pit: bool,
    /// Let the guest's idle and spin-wait instructions (x86: HLT, MWAIT, PAUSE and C-state
    /// requests) run without exits, where the hypervisor allows it.
    pub cpu_power_management: bool,
}

/// One virtual CPU of a VM, driven by the thread that created it.
pub trait VirtualCpu {
    /// The CPU id (0 for the boot CPU).
    fn id(&self) -> u32;

    /// Runs the guest until the next exit.
    fn run(&mut self) -> Result<VcpuExit, VcpuError>;

    /// Supplies the value of the last [`VcpuExit::PortIn`] read.
    fn complete_port_in(&mut self, value: u32) -> Result<(), VcpuError>;

    /// Supplies the value of the last [`VcpuExit::HypercallRead`] (truncated to its size).
    fn complete_hypercall_read(&mut self, value: u64) -> Result<(), VcpuError>;

    /// Guest-physical address of the root page table currently in use (x86_64: CR3).
    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError>;

    /// The current instruction pointer.
    fn instruction_pointer(&mut self) -> Result<u64, VcpuError>;

    /// A multi-line dump of the register state, for diagnostics.
    fn register_dump(&mut self) -> Result<String, VcpuError>;

    /// Supplies the value of the last [`VcpuExit::MmioRead`] (truncated to its size): what a
    /// device model answered.
    fn complete_mmio_read(&mut self, _value: u64) -> Result<(), VcpuError> {
        Err(VcpuError::Unexpected {
            operation: "complete MMIO read",
            detail: "this hypervisor backend serves no device reads".into(),
        })
    }

    /// Sets the guest debugging of the next runs (the debug extension a GDB server uses).
    fn set_guest_debug(&mut self, _debug: &GuestDebug) -> Result<(), VcpuError> {
        Err(VcpuError::Unexpected {
            operation: "set guest debug",
            detail: "this hypervisor backend offers no guest debugging".into(),
        })
    }

    /// Lets the guest take the breakpoint exception of the software breakpoint instruction at
    /// its instruction pointer, one the debugger did not set (reported as
    /// [`DebugExit::SoftwareBreakpoint`] because [`GuestDebug::software_breakpoints`] is on).
    fn reinject_breakpoint(&mut self) -> Result<(), VcpuError> {
        Err(VcpuError::Unexpected {
            operation: "reinject breakpoint",
            detail: "this hypervisor backend offers no guest debugging".into(),
        })
    }
}

/// A platform's hypervisor as the VM sees it: one VM whose vCPUs are each created, run and read
/// by their own thread (Hypervisor.framework's rule, which KVM also satisfies).
pub trait Hypervisor: Send + Sync + Sized {
    /// The architecture of the guests it runs.
    const ARCH: GuestArch;
    /// Its virtual CPUs.
    type Cpu: VirtualCpu;
    /// Makes a running vCPU return to the host; used from other threads.
    type Kick: VcpuKick;
    /// The `ioctl` request numbers the backend issues once its vCPUs exist (running them,
    /// reading and writing their registers), for the run phase's seccomp allowlist
    /// (`crate::confine`); none for a backend without ioctls.
    const RUN_IOCTLS: &'static [u64] = &[];

    /// Makes guest RAM visible to the guest.
    ///
    /// # Safety
    ///
    /// `mem` must outlive the hypervisor's VM: the hypervisor keeps its host address, and the
    /// guest (and the framework) write there for as long as the VM exists. `crate::vm::Vm` owns
    /// both and drops the hypervisor first.
    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), HypervisorError>;

    /// Sends the message-signalled interrupt `data` to `address` (x86: the local APIC's
    /// 0xFEE0_0000 window, `data` the vector), from any thread; devices use it.
    fn signal_msi(&self, _address: u64, _data: u32) -> Result<(), HypervisorError> {
        Err(HypervisorError::Backend(
            "this hypervisor backend cannot inject interrupts".into(),
        ))
    }

    /// Sets the level of the shared peripheral interrupt `spi` (aarch64: GIC INTID 32 + `spi`),
    /// from any thread; a level-triggered device keeps it high until the driver has seen it.
    fn set_spi_level(&self, _spi: u32, _high: bool) -> Result<(), HypervisorError> {
        Err(HypervisorError::Backend(
            "this hypervisor backend has no interrupt lines".into(),
        ))
    }

    /// Has the hypervisor signal `eventfd` for every guest write to the guest-physical address
    /// `address` instead of reporting it as an exit (KVM_IOEVENTFD); `false` where it cannot,
    /// and the write then arrives as an MMIO exit as before.
    #[cfg(target_os = "linux")]
    fn mmio_write_eventfd(
        &self,
        _address: u64,
        _eventfd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<bool, HypervisorError> {
        Ok(false)
    }

    /// Lets the guest read the guest-physical `range` (outside RAM, 1 MiB aligned) as all-ones,
    /// as where no device answers, without an exit per read; writes there still exit as MMIO
    /// writes. `false` where the hypervisor cannot: the reads then exit.
    fn map_all_ones(&self, _range: std::ops::Range<u64>) -> Result<bool, HypervisorError> {
        Ok(false)
    }

    /// The most vCPUs this hypervisor can give one VM, where it has a limit of its own.
    fn max_cpus(&self) -> Option<u32> {
        None
    }

    /// Creates vCPU `cpu` on the calling thread in the state `entry`, with a handle that
    /// interrupts it from other threads.
    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(Self::Cpu, Self::Kick), HypervisorError>;

    /// The time-stamp counter frequency `cpu` runs with, where the architecture has one; it goes
    /// into the boot info.
    fn tsc_khz(_cpu: &Self::Cpu) -> Option<u32> {
        None
    }

    /// The x86 state access of `cpu` for the user-space instruction emulator, where this
    /// hypervisor's vCPUs offer it (x86_64 backends).
    fn x86_vcpu(_cpu: &mut Self::Cpu) -> Option<&mut dyn x86_64::X86Vcpu> {
        None
    }

    /// The aarch64 register access of `cpu` for a debugger, where this hypervisor's vCPUs offer
    /// it (aarch64 backends).
    fn aarch64_vcpu(_cpu: &mut Self::Cpu) -> Option<&mut dyn aarch64::debug::Aarch64Vcpu> {
        None
    }
}

/// Interrupts a running vCPU from another thread.
pub trait VcpuKick: Send {
    /// Makes the vCPU leave the guest as soon as possible (its run returns
    /// [`VcpuExit::Interrupted`]).
    fn kick(&self);
}

/// The state a vCPU starts in, for the guest's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRegisters {
    /// An x86_64 vCPU in 64-bit mode.
    X86_64(x86::InitialRegisters),
    /// An aarch64 vCPU at EL1.
    Aarch64(arm::InitialRegisters),
}

impl EntryRegisters {
    /// The state of vCPU `cpu`: the boot CPU's, with the CPU id in RSI (x86_64) or in X1 and
    /// MPIDR_EL1.Aff0 (aarch64).
    pub fn for_cpu(&self, cpu: u32) -> Self {
        match *self {
            Self::X86_64(registers) => Self::X86_64(x86::InitialRegisters {
                rsi: u64::from(cpu),
                ..registers
            }),
            Self::Aarch64(registers) => Self::Aarch64(arm::InitialRegisters {
                x1: u64::from(cpu),
                mpidr_el1: u64::from(cpu & 0xFF),
                ..registers
            }),
        }
    }

    /// Where the vCPU starts executing.
    pub fn entry_point(&self) -> u64 {
        match self {
            Self::X86_64(registers) => registers.rip,
            Self::Aarch64(registers) => registers.pc,
        }
    }
}
