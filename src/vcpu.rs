//! The backend-neutral virtual CPU: one trait for every platform and one owned exit value.
//!
//! A backend (`crate::linux` for KVM, `crate::macos` for Hypervisor.framework) implements
//! [`VirtualCpu`] and translates its native exit into [`VcpuExit`]. Everything that decides what
//! an exit *means* — hypercall dispatch, PCI probing, error reporting — lives in shared code and
//! sees only these types.

use std::fmt;

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

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
    /// Memory read outside guest RAM; answer with [`VirtualCpu::complete_mmio_read`].
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
    /// A debug exit (breakpoint or single step).
    Debug,
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
            Self::Debug => "debug",
            Self::EmulationFailure { .. } => "emulation failure",
            Self::Interrupted => "interrupted",
            Self::FailedEntry { .. } => "failed entry",
            Self::Unhandled { .. } => "unhandled",
        }
    }
}

/// Failures talking to the hypervisor about a virtual CPU.
#[derive(Debug, Error)]
pub enum VcpuError {
    /// A hypervisor call failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What uhyve asked the hypervisor to do.
        operation: &'static str,
        /// The error it returned.
        source: std::io::Error,
    },
    /// The hypervisor returned a value uhyve cannot interpret.
    #[error("{operation}: {detail}")]
    Unexpected {
        /// What uhyve asked the hypervisor to do.
        operation: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

/// One virtual CPU of a VM, driven by the thread that created it.
pub trait VirtualCpu {
    /// The CPU id (0 for the boot CPU).
    fn id(&self) -> u32;

    /// Runs the guest until the next exit.
    fn run(&mut self) -> Result<VcpuExit, VcpuError>;

    /// Supplies the value of the last [`VcpuExit::PortIn`] read.
    fn complete_port_in(&mut self, value: u32) -> Result<(), VcpuError>;

    /// Supplies the value of the last [`VcpuExit::MmioRead`].
    fn complete_mmio_read(&mut self, value: u64) -> Result<(), VcpuError>;

    /// Supplies the value of the last [`VcpuExit::HypercallRead`] (truncated to its size).
    fn complete_hypercall_read(&mut self, value: u64) -> Result<(), VcpuError>;

    /// Guest-physical address of the root page table currently in use (x86_64: CR3).
    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError>;

    /// The current instruction pointer.
    fn instruction_pointer(&mut self) -> Result<u64, VcpuError>;

    /// A multi-line dump of the register state, for diagnostics.
    fn register_dump(&mut self) -> Result<String, VcpuError>;

    /// Access to the x86 state for the user-space instruction emulator, where the backend
    /// offers it.
    fn as_x86(&mut self) -> Option<&mut dyn crate::arch::x86_64::emulate::X86Cpu> {
        None
    }
}
