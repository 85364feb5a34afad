//! The Hypervisor.framework backend. This module is its platform-neutral vCPU logic: everything
//! between HVF's raw calls and uhyve's [`VirtualCpu`] — register set-up at entry, turning HVF
//! exits (data aborts for hypercalls and MMIO, WFI, HVC/SMC, debug exceptions, system-register
//! traps — of which the performance monitors are emulated as registers without counters —,
//! cancellation) into [`VcpuExit`], advancing PC past every handled access when the guest resumes
//! (so a crash report still names the faulting instruction), and answering hypercall reads.
//!
//! Guest debugging uses HVF's debug-exception traps (MDCR_EL2.TDE, which also traps the guest's
//! debug register accesses): [`VirtualCpu::set_guest_debug`] saves the guest's own MDSCR_EL1 and
//! breakpoint and watchpoint registers and puts the debugger's in their place (the guest keeps
//! seeing its own values), a single step sets PSTATE.SS for one run, BRK, software step,
//! breakpoint and watchpoint exceptions become [`VcpuExit::Debug`],
//! [`VirtualCpu::reinject_breakpoint`] enters the guest's own BRK exception, and
//! [`Aarch64Vcpu`] gives a debugger the registers. The encodings are shared with the other aarch64
//! backends (`crate::hypervisor::aarch64::debug`, `crate::arch::aarch64::debug`).
//!
//! The macOS-only adapter (`macos`, built where the `hvf` cfg holds) implements
//! [`HvfVcpuOps`] with the real `hv_vcpu_*` calls and owns the VM; everything else builds and is
//! tested on any host against a scripted fake (`tests/hvf_fake_vm.rs`). Like every backend it depends only on
//! `crate::hypervisor`, `crate::arch` and `crate::mem`.

#[cfg(hvf)]
pub mod macos;

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::arch::aarch64::debug::{
    EC_BREAKPOINT_LOWER_EL, EC_BRK, EC_SOFTWARE_STEP_LOWER_EL, EC_WATCHPOINT_LOWER_EL, PSTATE_SS,
    StackPointer, brk_exception_entry, stack_pointer_of,
};
use crate::arch::aarch64::esr::{self, DataAbort, EC_DATA_ABORT_LOWER_EL, EC_DATA_ABORT_SAME_EL};
use crate::arch::aarch64::{InitialRegisters, decode_data_abort};
use crate::hypervisor::aarch64::debug::{
    Aarch64Registers, Aarch64Vcpu, DebugRegisters, MDSCR_DEBUG_BITS, brk_immediate, debug_exit_of,
};
use crate::hypervisor::aarch64::{GuestAccess, classify_access};
use crate::hypervisor::{
    DebugExit, GuestDebug, HardwareBreakpointKind, VcpuError, VcpuExit, VirtualCpu,
};

/// A general register, PC, CPSR or a floating-point status register, as HVF names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// X0 … X30.
    X(u8),
    /// The program counter.
    Pc,
    /// PSTATE.
    Cpsr,
    /// FPCR, the floating-point control register.
    Fpcr,
    /// FPSR, the floating-point status register.
    Fpsr,
}

/// The system registers uhyve sets or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysReg {
    /// Stack pointer at EL1.
    SpEl1,
    /// Multiprocessor affinity.
    MpidrEl1,
    /// Memory attribute indirection.
    MairEl1,
    /// Translation control.
    TcrEl1,
    /// Translation table base 0.
    Ttbr0El1,
    /// Translation table base 1.
    Ttbr1El1,
    /// Architectural feature access control.
    CpacrEl1,
    /// Monitor debug system control.
    MdscrEl1,
    /// System control.
    SctlrEl1,
    /// Memory model feature register 0 (read-only: PARange).
    IdAa64Mmfr0El1,
    /// Stack pointer at EL0 (also EL1's with PSTATE.SP = 0).
    SpEl0,
    /// Exception link register of EL1: where an exception to EL1 was taken.
    ElrEl1,
    /// Saved PSTATE of an exception to EL1.
    SpsrEl1,
    /// Syndrome of an exception to EL1.
    EsrEl1,
    /// Vector base address of EL1.
    VbarEl1,
    /// Breakpoint value register `DBGBVR<n>_EL1` (n < 16; uhyve uses 0 … 3).
    DbgBvr(u8),
    /// Breakpoint control register `DBGBCR<n>_EL1`.
    DbgBcr(u8),
    /// Watchpoint value register `DBGWVR<n>_EL1`.
    DbgWvr(u8),
    /// Watchpoint control register `DBGWCR<n>_EL1`.
    DbgWcr(u8),
}

/// What `hv_vcpu_run` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvfExit {
    /// Another thread called `hv_vcpus_exit`.
    Canceled,
    /// A guest exception: ESR_EL2, FAR and the faulting IPA.
    Exception {
        /// ESR_EL2.
        syndrome: u64,
        /// FAR_EL2.
        virtual_address: u64,
        /// The faulting IPA (guest-physical address).
        physical_address: u64,
    },
    /// The virtual timer fired (only without the in-kernel GIC).
    VtimerActivated,
    /// Any other exit reason.
    Unknown(u32),
}

/// An error of a raw HVF call.
#[derive(Debug, Error)]
#[error("{call} returned {}", return_name(*.code))]
pub struct HvfError {
    /// The call, e.g. "hv_vcpu_run".
    pub call: &'static str,
    /// Its `hv_return_t` (Apple's codes are 0xfae94xxx).
    pub code: u32,
}

/// The name of an `hv_return_t`, with its value (codes of Apple's `hv_kern_types.h`:
/// `0xfae94000 | n`).
pub fn return_name(code: u32) -> String {
    let name = match code {
        0 => "HV_SUCCESS",
        0xfae9_4001 => "HV_ERROR",
        0xfae9_4002 => "HV_BUSY",
        0xfae9_4003 => "HV_BAD_ARGUMENT",
        0xfae9_4004 => "HV_ILLEGAL_GUEST_STATE",
        0xfae9_4005 => "HV_NO_RESOURCES",
        0xfae9_4006 => "HV_NO_DEVICE",
        0xfae9_4007 => "HV_DENIED",
        0xfae9_4008 => "HV_EXISTS",
        0xfae9_400f => "HV_UNSUPPORTED",
        _ => return format!("{code:#x}"),
    };
    format!("{name} ({code:#x})")
}

/// The raw vCPU calls of Hypervisor.framework. Implementations must be used only by the thread
/// that created the vCPU (HVF's rule).
pub trait HvfVcpuOps {
    /// `hv_vcpu_run` and the exit information.
    fn run(&mut self) -> Result<HvfExit, HvfError>;
    /// `hv_vcpu_get_reg`.
    fn reg(&mut self, reg: Reg) -> Result<u64, HvfError>;
    /// `hv_vcpu_set_reg`.
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HvfError>;
    /// `hv_vcpu_get_sys_reg`.
    fn sys_reg(&mut self, reg: SysReg) -> Result<u64, HvfError>;
    /// `hv_vcpu_set_sys_reg`.
    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), HvfError>;
    /// `hv_vcpu_get_simd_fp_reg` of Q`number` (0 … 31), as one 128-bit value (lane 0 in the
    /// lowest byte).
    fn simd_fp_reg(&mut self, number: u8) -> Result<u128, HvfError>;
    /// `hv_vcpu_set_simd_fp_reg` of Q`number` (0 … 31).
    fn set_simd_fp_reg(&mut self, number: u8, value: u128) -> Result<(), HvfError>;
    /// `hv_vcpu_set_trap_debug_exceptions`: whether the guest's debug exceptions (BRK, software
    /// step, breakpoints, watchpoints) exit to the host instead of reaching the guest
    /// (MDCR_EL2.TDE).
    fn set_trap_debug_exceptions(&mut self, trap: bool) -> Result<(), HvfError>;
    /// `hv_vcpu_set_trap_debug_reg_accesses`: whether the guest's accesses to MDSCR_EL1 and the
    /// breakpoint and watchpoint registers exit to the host (MDCR_EL2.TDA).
    fn set_trap_debug_reg_accesses(&mut self, trap: bool) -> Result<(), HvfError>;
}

/// Exception class of WFI/WFE: the guest idles; it resumes after the instruction.
const EC_WFX: u8 = 0x01;
/// ISS bit 0 of a WFx trap: set for WFE, clear for WFI.
const WFX_ISS_WFE: u64 = 1;
/// How long a vCPU thread sleeps on a trapped WFI before re-entering the guest. WFI may end at
/// any time (the architecture allows spurious wake-ups), so this only bounds the extra latency
/// of an interrupt, while an idle guest no longer spins a host core. A kick ends the sleep.
pub const WFI_IDLE: std::time::Duration = std::time::Duration::from_millis(1);
/// Exception class of a trapped MSR, MRS or system instruction.
const EC_SYSTEM_REGISTER: u8 = 0x18;
// BRK and, while a debugger traps them, the other debug exceptions (software step 0x32,
// breakpoint 0x30, watchpoint 0x34) are debug exits. Everything else (HVC 0x16, SMC 0x17 — uhyve
// offers no PSCI —, other system-register traps, …) is reported by name as an unhandled exit.

/// A trapped MRS or MSR (exception class 0x18), as its syndrome describes it. Two kinds are
/// emulated by the vCPU itself:
///
/// - the EL0 performance-monitor registers (op0 = 3, op1 = 3, CRn = 9: PMCR_EL0 …
///   PMUSERENR_EL0). Hypervisor.framework gives guests no PMU and traps these, while Hermit's
///   aarch64 kernels program PMUSERENR, PMCNTENSET and PMCR at start-up (seen on real KVM, which
///   offers a PMU). They read as zero and writes are ignored: the guest sees a PMU without
///   counters.
/// - while a debugger debugs the guest, MDSCR_EL1 and the breakpoint and watchpoint registers
///   (whose accesses trap then): the guest sees its own values, not the debugger's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SystemRegisterAccess {
    /// op0, op1, CRn, CRm, op2: which register.
    encoding: [u8; 5],
    /// The transfer register (31: XZR).
    register: u8,
    /// An MRS (a read into `register`) rather than an MSR.
    is_read: bool,
}

impl SystemRegisterAccess {
    /// The access an EC 0x18 syndrome describes.
    fn of(syndrome: u64) -> Self {
        let iss = syndrome & 0x01FF_FFFF;
        let field = |shift: u32, bits: u32| ((iss >> shift) & ((1 << bits) - 1)) as u8;
        Self {
            encoding: [
                field(20, 2),
                field(14, 3),
                field(10, 4),
                field(1, 4),
                field(17, 3),
            ],
            register: field(5, 5),
            is_read: iss & 1 == 1,
        }
    }

    /// The MRS target register (`None` for an MSR, or an MRS into XZR).
    fn target(&self) -> Option<u8> {
        (self.is_read && self.register != esr::XZR).then_some(self.register)
    }

    /// Whether it is one of the EL0 performance-monitor registers.
    fn is_performance_monitor(&self) -> bool {
        matches!(self.encoding, [3, 3, 9, _, _])
    }

    /// The debug register it is, if guest debugging owns it: MDSCR_EL1 or a DBGBVR, DBGBCR,
    /// DBGWVR or DBGWCR.
    fn debug_register(&self) -> Option<SysReg> {
        match self.encoding {
            [2, 0, 0, 2, 2] => Some(SysReg::MdscrEl1),
            [2, 0, 0, n, 4] => Some(SysReg::DbgBvr(n)),
            [2, 0, 0, n, 5] => Some(SysReg::DbgBcr(n)),
            [2, 0, 0, n, 6] => Some(SysReg::DbgWvr(n)),
            [2, 0, 0, n, 7] => Some(SysReg::DbgWcr(n)),
            _ => None,
        }
    }
}

/// Where the guest's own value of `reg` is kept while the debugger owns it (`None` for a
/// register the debugger leaves alone: slots from 4 on).
fn own_register(guest: &mut DebugRegisters, reg: SysReg) -> Option<&mut u64> {
    let slot = |n: u8| (n < DEBUG_SLOTS).then_some(usize::from(n));
    match reg {
        SysReg::MdscrEl1 => Some(&mut guest.mdscr),
        SysReg::DbgBvr(n) => slot(n).map(|n| &mut guest.breakpoints[n].0),
        SysReg::DbgBcr(n) => slot(n).map(|n| &mut guest.breakpoints[n].1),
        SysReg::DbgWvr(n) => slot(n).map(|n| &mut guest.watchpoints[n].0),
        SysReg::DbgWcr(n) => slot(n).map(|n| &mut guest.watchpoints[n].1),
        _ => None,
    }
}

fn hvf_error(operation: &'static str) -> impl FnOnce(HvfError) -> VcpuError {
    move |error| VcpuError::Backend {
        operation,
        source: Box::new(error),
    }
}

/// The guest debugging of one vCPU: what the debugger asked for, and the guest's own debug
/// registers that its registers displaced.
#[derive(Debug, Default)]
struct DebugState {
    /// What [`VirtualCpu::set_guest_debug`] last asked for (off by default).
    wanted: GuestDebug,
    /// While debugging is on: the guest's own MDSCR_EL1 (the whole register) and breakpoint and
    /// watchpoint registers of slots 0 … 3, restored when debugging goes off.
    guest: Option<DebugRegisters>,
    /// The debugger's registers as last written for `wanted` (`None`: not written yet, or a
    /// write failed, so the next [`VirtualCpu::set_guest_debug`] writes them all again).
    applied: Option<DebugRegisters>,
    /// The immediate of the BRK the last exit stopped at, for [`VirtualCpu::reinject_breakpoint`].
    brk: Option<u16>,
}

impl DebugState {
    /// Whether the next run executes one instruction only.
    fn single_step(&self) -> bool {
        self.wanted.enabled && self.wanted.single_step
    }
}

/// The four debug system registers of hardware slot `n` with their values in `registers`:
/// DBGBVRn, DBGBCRn, DBGWVRn, DBGWCRn.
fn slot_registers(registers: &DebugRegisters, n: u8) -> [(SysReg, u64); 4] {
    let (bvr, bcr) = registers.breakpoints[usize::from(n)];
    let (wvr, wcr) = registers.watchpoints[usize::from(n)];
    [
        (SysReg::DbgBvr(n), bvr),
        (SysReg::DbgBcr(n), bcr),
        (SysReg::DbgWvr(n), wvr),
        (SysReg::DbgWcr(n), wcr),
    ]
}

/// The system register that holds the stack pointer PSTATE selects.
fn stack_pointer_register(pstate: u64) -> SysReg {
    match stack_pointer_of(pstate) {
        StackPointer::El1 => SysReg::SpEl1,
        StackPointer::El0 => SysReg::SpEl0,
    }
}

/// The hardware slots uhyve's debugging uses: breakpoint and watchpoint register pairs 0 … 3,
/// one for each of [`GuestDebug::hardware`].
const DEBUG_SLOTS: u8 = 4;

/// A vCPU driven through [`HvfVcpuOps`]: the backend-neutral view of an HVF vCPU.
pub struct HvfCpu<T: HvfVcpuOps> {
    ops: T,
    id: u32,
    /// First guest-physical address of RAM: hypercall addresses are IPA − RAM base.
    ram_base: u64,
    /// The hypercall read (a load from the window) waiting for its value.
    pending_load: Option<DataAbort>,
    /// The last exit was an access (or WFI) the host handled: PC moves past it when the guest
    /// resumes. Until then PC names the instruction, as crash reports want.
    step_over: bool,
    /// Guest debugging.
    debug: DebugState,
}

impl<T: HvfVcpuOps> HvfCpu<T> {
    /// Puts a freshly created vCPU into the entry state of hermit-abi.md §7.3, with TCR_EL1.IPS
    /// set from the physical address range the vCPU reports.
    pub fn new(
        mut ops: T,
        id: u32,
        ram_base: u64,
        registers: &InitialRegisters,
    ) -> Result<Self, VcpuError> {
        let mmfr0 = ops
            .sys_reg(SysReg::IdAa64Mmfr0El1)
            .map_err(hvf_error("read ID_AA64MMFR0_EL1"))?;
        let registers = registers.with_pa_range_of(mmfr0);
        let cpacr = ops
            .sys_reg(SysReg::CpacrEl1)
            .map_err(hvf_error("read CPACR_EL1"))?;
        let system = [
            (SysReg::SpEl1, registers.sp_el1),
            (SysReg::MpidrEl1, registers.mpidr_el1),
            (SysReg::MairEl1, registers.mair_el1),
            (SysReg::TcrEl1, registers.tcr_el1),
            (SysReg::Ttbr0El1, registers.ttbr0_el1),
            (SysReg::Ttbr1El1, registers.ttbr1_el1),
            (SysReg::CpacrEl1, registers.cpacr_el1(cpacr)),
            (SysReg::MdscrEl1, registers.mdscr_el1),
            (SysReg::SctlrEl1, registers.sctlr_el1),
        ];
        for (reg, value) in system {
            ops.set_sys_reg(reg, value)
                .map_err(hvf_error("set a system register"))?;
        }
        let general = [
            (Reg::Cpsr, registers.cpsr),
            (Reg::Pc, registers.pc),
            (Reg::X(0), registers.x0),
            (Reg::X(1), registers.x1),
        ];
        for (reg, value) in general {
            ops.set_reg(reg, value)
                .map_err(hvf_error("set a register"))?;
        }
        Ok(Self {
            ops,
            id,
            ram_base,
            pending_load: None,
            step_over: false,
            debug: DebugState::default(),
        })
    }

    /// The raw calls, e.g. for the adapter's own clean-up.
    pub fn ops(&mut self) -> &mut T {
        &mut self.ops
    }

    /// Sets or clears PSTATE.SS (written only when it changes).
    fn set_step_bit(&mut self, set: bool) -> Result<(), VcpuError> {
        let cpsr = self.ops.reg(Reg::Cpsr).map_err(hvf_error("read CPSR"))?;
        let wanted = if set {
            cpsr | PSTATE_SS
        } else {
            cpsr & !PSTATE_SS
        };
        if wanted != cpsr {
            self.ops
                .set_reg(Reg::Cpsr, wanted)
                .map_err(hvf_error("set CPSR"))?;
        }
        Ok(())
    }

    /// MDSCR_EL1 and the breakpoint and watchpoint registers of the debugger's slots, as the
    /// vCPU has them now.
    fn read_debug_registers(&mut self) -> Result<DebugRegisters, VcpuError> {
        let mut read = |reg| {
            self.ops
                .sys_reg(reg)
                .map_err(hvf_error("read a debug register"))
        };
        let mut registers = DebugRegisters {
            mdscr: read(SysReg::MdscrEl1)?,
            ..DebugRegisters::default()
        };
        for n in 0..DEBUG_SLOTS {
            let slot = usize::from(n);
            registers.breakpoints[slot] = (read(SysReg::DbgBvr(n))?, read(SysReg::DbgBcr(n))?);
            registers.watchpoints[slot] = (read(SysReg::DbgWvr(n))?, read(SysReg::DbgWcr(n))?);
        }
        Ok(registers)
    }

    /// Writes the breakpoint and watchpoint registers of `registers` (slots 0 … 3) and
    /// MDSCR_EL1 = `mdscr`.
    fn write_debug_registers(
        &mut self,
        registers: &DebugRegisters,
        mdscr: u64,
    ) -> Result<(), VcpuError> {
        for n in 0..DEBUG_SLOTS {
            for (reg, value) in slot_registers(registers, n) {
                self.ops
                    .set_sys_reg(reg, value)
                    .map_err(hvf_error("set a debug register"))?;
            }
        }
        self.ops
            .set_sys_reg(SysReg::MdscrEl1, mdscr)
            .map_err(hvf_error("set MDSCR_EL1"))
    }

    /// Whether the guest's debug exceptions and debug register accesses exit to the host.
    fn set_debug_traps(&mut self, trap: bool) -> Result<(), VcpuError> {
        self.ops
            .set_trap_debug_exceptions(trap)
            .map_err(hvf_error("hv_vcpu_set_trap_debug_exceptions"))?;
        // MDCR_EL2.TDE makes the architecture trap debug register accesses anyway; asking for it
        // says so to the framework as well.
        self.ops
            .set_trap_debug_reg_accesses(trap)
            .map_err(hvf_error("hv_vcpu_set_trap_debug_reg_accesses"))
    }

    /// Turns debugging on, or changes it: the first time the guest's own debug registers are
    /// saved; the debugger's are written whenever they change (a debugger sets the same
    /// debugging before every run).
    fn start_debugging(&mut self, debug: &GuestDebug) -> Result<(), VcpuError> {
        let guest = match self.debug.guest {
            Some(guest) => guest,
            None => {
                let guest = self.read_debug_registers()?;
                self.debug.guest = Some(guest);
                self.debug.applied = None;
                guest
            }
        };
        self.debug.wanted = *debug;
        let wanted = DebugRegisters::of(debug);
        if self.debug.applied == Some(wanted) {
            return Ok(());
        }
        self.debug.applied = None;
        self.set_debug_traps(true)?;
        // The guest keeps its other MDSCR bits (e.g. TDCC).
        let mdscr = (guest.mdscr & !MDSCR_DEBUG_BITS) | wanted.mdscr;
        self.write_debug_registers(&wanted, mdscr)?;
        self.debug.applied = Some(wanted);
        Ok(())
    }

    /// Turns debugging off: the guest's own debug registers and MDSCR_EL1 come back, debug
    /// exceptions reach the guest again. Nothing to do if debugging is off already.
    fn stop_debugging(&mut self) -> Result<(), VcpuError> {
        self.debug.wanted = GuestDebug::default();
        self.debug.applied = None;
        let Some(guest) = self.debug.guest else {
            return Ok(());
        };
        self.write_debug_registers(&guest, guest.mdscr)?;
        self.set_debug_traps(false)?;
        self.set_step_bit(false)?;
        self.debug.guest = None;
        Ok(())
    }

    /// The debug exit of a debug exception with syndrome `syndrome` and fault address `far`.
    fn debug_exit(&mut self, syndrome: u64, far: u64) -> Result<VcpuExit, VcpuError> {
        let exit = match debug_exit_of(syndrome, far, &self.debug.wanted) {
            Some(DebugExit::SoftwareBreakpoint) => {
                self.debug.brk = Some(brk_immediate(syndrome));
                DebugExit::SoftwareBreakpoint
            }
            // The syndrome does not say which breakpoint matched: the one on PC's instruction.
            Some(DebugExit::HardwareBreakpoint(_)) => self.breakpoint_at_pc()?,
            Some(exit) => exit,
            None => DebugExit::Other,
        };
        Ok(VcpuExit::Debug(exit))
    }

    /// The hardware breakpoint on the instruction at PC ([`DebugExit::Other`] if none is).
    fn breakpoint_at_pc(&mut self) -> Result<DebugExit, VcpuError> {
        let pc = self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))?;
        let slot = self.debug.wanted.hardware.iter().position(|slot| {
            slot.is_some_and(|bp| {
                bp.kind == HardwareBreakpointKind::Execute && bp.address & !0b11 == pc & !0b11
            })
        });
        Ok(slot.map_or(DebugExit::Other, |n| DebugExit::HardwareBreakpoint(n as u8)))
    }

    /// Lets the guest take the exception of the `BRK #imm` at PC, as it would without a
    /// debugger: PC moves to its vector, with ELR_EL1, SPSR_EL1 and ESR_EL1 set.
    fn enter_brk_exception(&mut self, imm: u16) -> Result<(), VcpuError> {
        let pc = self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))?;
        let pstate = self.ops.reg(Reg::Cpsr).map_err(hvf_error("read CPSR"))?;
        let vbar = self
            .ops
            .sys_reg(SysReg::VbarEl1)
            .map_err(hvf_error("read VBAR_EL1"))?;
        let entry = brk_exception_entry(pc, pstate, vbar, imm);
        let system = [
            (SysReg::ElrEl1, entry.elr_el1),
            (SysReg::SpsrEl1, entry.spsr_el1),
            (SysReg::EsrEl1, entry.esr_el1),
        ];
        for (reg, value) in system {
            self.ops
                .set_sys_reg(reg, value)
                .map_err(hvf_error("set an exception register"))?;
        }
        self.ops
            .set_reg(Reg::Cpsr, entry.pstate)
            .map_err(hvf_error("set CPSR"))?;
        self.ops
            .set_reg(Reg::Pc, entry.pc)
            .map_err(hvf_error("set PC"))
    }

    /// Hands a trapped BRK to the guest while the debugger wants no software breakpoints;
    /// `true` if the exit was one.
    fn handed_to_guest(&mut self, exit: HvfExit) -> Result<bool, VcpuError> {
        let HvfExit::Exception { syndrome, .. } = exit else {
            return Ok(false);
        };
        let debug = &self.debug.wanted;
        if esr::exception_class(syndrome) != EC_BRK || !debug.enabled || debug.software_breakpoints
        {
            return Ok(false);
        }
        self.enter_brk_exception(brk_immediate(syndrome))?;
        Ok(true)
    }

    /// Emulates a trapped system-register access the vCPU answers itself; `true` if it did (the
    /// guest then resumes after the instruction).
    fn emulated(&mut self, exit: HvfExit) -> Result<bool, VcpuError> {
        let HvfExit::Exception { syndrome, .. } = exit else {
            return Ok(false);
        };
        if esr::exception_class(syndrome) != EC_SYSTEM_REGISTER {
            return Ok(false);
        }
        let access = SystemRegisterAccess::of(syndrome);
        if access.is_performance_monitor() {
            if let Some(target) = access.target() {
                self.ops
                    .set_reg(Reg::X(target), 0)
                    .map_err(hvf_error("set the MRS target register"))?;
            }
            return Ok(true);
        }
        match access.debug_register() {
            Some(reg) if self.debug.guest.is_some() => {
                self.debug_register_access(access, reg)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A trapped MRS or MSR of debug register `reg` while debugging. MDSCR_EL1 and slots 0 … 3
    /// are the debugger's: the guest reads and writes its own values, which come back when
    /// debugging goes off (a write to MDSCR_EL1 takes effect at once for its other bits).
    /// Higher slots the debugger leaves alone are the vCPU's own registers.
    fn debug_register_access(
        &mut self,
        access: SystemRegisterAccess,
        reg: SysReg,
    ) -> Result<(), VcpuError> {
        let written = if access.is_read {
            None
        } else if access.register == esr::XZR {
            Some(0)
        } else {
            let source = self.ops.reg(Reg::X(access.register));
            Some(source.map_err(hvf_error("read the MSR source register"))?)
        };
        let debugger_bits = DebugRegisters::of(&self.debug.wanted).mdscr;
        let guest = self.debug.guest.as_mut().ok_or(VcpuError::Unexpected {
            operation: "emulate a debug register access",
            detail: "debugging is off".into(),
        })?;
        let read = match (own_register(guest, reg), written) {
            (Some(own), Some(value)) => {
                *own = value;
                if reg == SysReg::MdscrEl1 {
                    let mdscr = (value & !MDSCR_DEBUG_BITS) | debugger_bits;
                    self.ops
                        .set_sys_reg(reg, mdscr)
                        .map_err(hvf_error("set MDSCR_EL1"))?;
                }
                None
            }
            (Some(own), None) => Some(*own),
            (None, Some(value)) => {
                self.ops
                    .set_sys_reg(reg, value)
                    .map_err(hvf_error("set a debug register"))?;
                None
            }
            (None, None) => Some(
                self.ops
                    .sys_reg(reg)
                    .map_err(hvf_error("read a debug register"))?,
            ),
        };
        if let (Some(value), Some(target)) = (read, access.target()) {
            self.ops
                .set_reg(Reg::X(target), value)
                .map_err(hvf_error("set the MRS target register"))?;
        }
        Ok(())
    }

    fn advance_pc(&mut self) -> Result<(), VcpuError> {
        let pc = self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))?;
        self.ops
            .set_reg(Reg::Pc, pc.wrapping_add(4))
            .map_err(hvf_error("set PC"))
    }

    /// Turns one data abort into an exit.
    fn data_abort(&mut self, syndrome: u64, ipa: u64) -> Result<VcpuExit, VcpuError> {
        let ops = &mut self.ops;
        let mut register_error = None;
        let decoded = decode_data_abort(syndrome, ipa, |number| {
            ops.reg(Reg::X(number)).unwrap_or_else(|error| {
                register_error = Some(error);
                0
            })
        });
        if let Some(error) = register_error {
            return Err(hvf_error("read the source register")(error));
        }
        let access = match decoded {
            Ok(access) => access,
            Err(error) => {
                return Ok(VcpuExit::Unhandled {
                    description: format!("data abort at {ipa:#x}: {error}"),
                });
            }
        };
        let exit = classify_access(
            GuestAccess {
                address: ipa,
                size: access.size,
                is_write: access.is_write,
                value: access.value,
            },
            self.ram_base,
        );
        match exit {
            // The guest resumes after the store.
            VcpuExit::Hypercall { .. } => self.step_over = true,
            VcpuExit::HypercallRead { .. } => self.pending_load = Some(access),
            _ => {}
        }
        Ok(exit)
    }

    /// Turns one HVF exit the vCPU does not handle itself into an exit.
    fn translate(&mut self, exit: HvfExit) -> Result<VcpuExit, VcpuError> {
        match exit {
            HvfExit::Canceled => Ok(VcpuExit::Interrupted),
            HvfExit::VtimerActivated => Ok(VcpuExit::Unhandled {
                description: "virtual timer exit (the in-kernel GIC should deliver it)".into(),
            }),
            HvfExit::Unknown(reason) => Ok(VcpuExit::Unhandled {
                description: format!("Hypervisor.framework exit reason {reason}"),
            }),
            HvfExit::Exception {
                syndrome,
                virtual_address,
                physical_address,
            } => match esr::exception_class(syndrome) {
                EC_DATA_ABORT_LOWER_EL | EC_DATA_ABORT_SAME_EL => {
                    self.data_abort(syndrome, physical_address)
                }
                EC_WFX => {
                    self.step_over = true;
                    if syndrome & WFX_ISS_WFE == 0 {
                        // WFI: idle briefly; the thread's unpark (every kick) wakes it early.
                        std::thread::park_timeout(WFI_IDLE);
                    } else {
                        // WFE (spin-wait loops): give the host CPU away, come back at once.
                        std::thread::yield_now();
                    }
                    Ok(VcpuExit::Halt)
                }
                EC_BRK
                | EC_SOFTWARE_STEP_LOWER_EL
                | EC_BREAKPOINT_LOWER_EL
                | EC_WATCHPOINT_LOWER_EL => self.debug_exit(syndrome, virtual_address),
                ec => Ok(VcpuExit::Unhandled {
                    description: format!(
                        "guest exception: {} (ESR {syndrome:#x})",
                        esr::exception_class_name(ec)
                    ),
                }),
            },
        }
    }
}

impl<T: HvfVcpuOps> VirtualCpu for HvfCpu<T> {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit, VcpuError> {
        self.debug.brk = None;
        loop {
            let completed = std::mem::take(&mut self.step_over);
            if completed {
                self.advance_pc()?;
            }
            let stepping = self.debug.single_step();
            if stepping {
                // With PSTATE.SS set one instruction runs, then the step exception comes. After
                // an instruction the host completed (PC moved past it) that step is done: with
                // PSTATE.SS clear the exception comes before the next instruction.
                self.set_step_bit(!completed)?;
            }
            let exit = self.ops.run().map_err(hvf_error("hv_vcpu_run"))?;
            if stepping {
                // The step clears PSTATE.SS; an exit before it completes (a trapped access, a
                // kick) leaves it set.
                self.set_step_bit(false)?;
            }
            if self.emulated(exit)? {
                self.step_over = true;
                continue;
            }
            if self.handed_to_guest(exit)? {
                continue;
            }
            return self.translate(exit);
        }
    }
    fn complete_port_in(&mut self, _value: u32) -> Result<(), VcpuError> {
        Err(VcpuError::Unexpected {
            operation: "complete port read",
            detail: "aarch64 has no I/O ports".into(),
        })
    }

    fn complete_hypercall_read(&mut self, value: u64) -> Result<(), VcpuError> {
        let Some(load) = self.pending_load.take() else {
            return Err(VcpuError::Unexpected {
                operation: "complete hypercall read",
                detail: "no hypercall read is pending".into(),
            });
        };
        if let Some(target) = load.load_target() {
            self.ops
                .set_reg(Reg::X(target), load.load_result(value))
                .map_err(hvf_error("set the load's target register"))?;
        }
        self.step_over = true;
        Ok(())
    }

    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError> {
        let ttbr0 = self
            .ops
            .sys_reg(SysReg::Ttbr0El1)
            .map_err(hvf_error("read TTBR0_EL1"))?;
        // Bits 47:1 hold the table address (ASID above, CnP in bit 0).
        Ok(GuestPhysAddr::new(ttbr0 & 0x0000_ffff_ffff_fffe))
    }

    fn instruction_pointer(&mut self) -> Result<u64, VcpuError> {
        self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))
    }

    /// Debugging on: debug exceptions and debug register accesses exit to the host, the
    /// debugger's breakpoints and watchpoints fill slots 0 … 3 (unused ones disabled),
    /// MDSCR_EL1 carries its SS, KDE and MDE bits over the guest's other bits, and each run
    /// steps one instruction if asked. Off: the guest's own registers come back.
    fn set_guest_debug(&mut self, debug: &GuestDebug) -> Result<(), VcpuError> {
        if debug.enabled {
            self.start_debugging(debug)
        } else {
            self.stop_debugging()
        }
    }

    /// The guest's own BRK (the last exit, reported as [`DebugExit::SoftwareBreakpoint`]): the
    /// guest takes its exception at the next run, PC at its vector (not past the BRK).
    fn reinject_breakpoint(&mut self) -> Result<(), VcpuError> {
        let Some(imm) = self.debug.brk else {
            return Err(VcpuError::Unexpected {
                operation: "reinject breakpoint",
                detail: "the last exit was no BRK".into(),
            });
        };
        self.enter_brk_exception(imm)?;
        self.debug.brk = None;
        Ok(())
    }

    fn register_dump(&mut self) -> Result<String, VcpuError> {
        let mut text = String::new();
        for number in 0..31u8 {
            let value = self
                .ops
                .reg(Reg::X(number))
                .map_err(hvf_error("read a register"))?;
            text.push_str(&format!("x{number:<2} {value:#018x}"));
            text.push(if number % 4 == 3 { '\n' } else { ' ' });
        }
        let pc = self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))?;
        let cpsr = self.ops.reg(Reg::Cpsr).map_err(hvf_error("read CPSR"))?;
        text.push_str(&format!("\npc  {pc:#018x} cpsr {cpsr:#010x}"));
        Ok(text)
    }
}

impl<T: HvfVcpuOps> Aarch64Vcpu for HvfCpu<T> {
    /// The registers, with PC where the guest resumes: past an instruction the host completed
    /// (a hypercall), which PC otherwise names until the next run.
    fn registers(&mut self) -> Result<Aarch64Registers, VcpuError> {
        if std::mem::take(&mut self.step_over) {
            self.advance_pc()?;
        }
        let mut registers = Aarch64Registers::default();
        for (number, x) in (0u8..).zip(&mut registers.x) {
            *x = self
                .ops
                .reg(Reg::X(number))
                .map_err(hvf_error("read a register"))?;
        }
        registers.pc = self.ops.reg(Reg::Pc).map_err(hvf_error("read PC"))?;
        registers.pstate = self.ops.reg(Reg::Cpsr).map_err(hvf_error("read CPSR"))?;
        registers.sp = self
            .ops
            .sys_reg(stack_pointer_register(registers.pstate))
            .map_err(hvf_error("read SP"))?;
        for (number, v) in (0u8..).zip(&mut registers.v) {
            *v = self
                .ops
                .simd_fp_reg(number)
                .map_err(hvf_error("read a SIMD&FP register"))?;
        }
        // Both are 32-bit registers (the framework widens them).
        registers.fpsr = self.ops.reg(Reg::Fpsr).map_err(hvf_error("read FPSR"))? as u32;
        registers.fpcr = self.ops.reg(Reg::Fpcr).map_err(hvf_error("read FPCR"))? as u32;
        Ok(registers)
    }

    /// Writes the registers; SP goes to the stack pointer the new PSTATE selects, and the guest
    /// resumes at the PC written.
    fn set_registers(&mut self, registers: &Aarch64Registers) -> Result<(), VcpuError> {
        // The debugger's PC replaces any move past a completed instruction.
        self.step_over = false;
        let general = (0u8..)
            .zip(registers.x)
            .map(|(number, value)| (Reg::X(number), value))
            .chain([
                (Reg::Pc, registers.pc),
                (Reg::Cpsr, registers.pstate),
                (Reg::Fpsr, u64::from(registers.fpsr)),
                (Reg::Fpcr, u64::from(registers.fpcr)),
            ]);
        for (reg, value) in general {
            self.ops
                .set_reg(reg, value)
                .map_err(hvf_error("set a register"))?;
        }
        self.ops
            .set_sys_reg(stack_pointer_register(registers.pstate), registers.sp)
            .map_err(hvf_error("set SP"))?;
        for (number, value) in (0u8..).zip(registers.v) {
            self.ops
                .set_simd_fp_reg(number, value)
                .map_err(hvf_error("set a SIMD&FP register"))?;
        }
        Ok(())
    }
}
