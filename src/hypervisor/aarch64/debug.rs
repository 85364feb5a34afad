//! Guest debugging on aarch64, shared by the backends: the register state a debugger reads and
//! writes ([`Aarch64Registers`] through [`Aarch64Vcpu`]), the debug registers a [`GuestDebug`]
//! amounts to ([`DebugRegisters`]), and what a debug exception's syndrome means
//! ([`debug_exit_of`]).

use super::super::{DebugExit, GuestDebug, HardwareBreakpointKind, VcpuError, VirtualCpu};
use crate::arch::aarch64::debug::{
    EC_BREAKPOINT_LOWER_EL, EC_BRK, EC_SOFTWARE_STEP_LOWER_EL, EC_WATCHPOINT_LOWER_EL, MDSCR_KDE,
    MDSCR_MDE, MDSCR_SS, WatchAccess, breakpoint_registers, watchpoint_matches,
    watchpoint_registers,
};
use crate::arch::aarch64::exception_class;

/// An aarch64 vCPU's registers as a debugger sees them (GDB's `org.gnu.gdb.aarch64.core` and
/// `.fpu` features).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aarch64Registers {
    /// X0 … X30.
    pub x: [u64; 31],
    /// The stack pointer PSTATE selects (SP_EL1 at EL1h, SP_EL0 otherwise).
    pub sp: u64,
    /// The program counter.
    pub pc: u64,
    /// PSTATE (GDB's `cpsr`).
    pub pstate: u64,
    /// V0 … V31.
    pub v: [u128; 32],
    /// FPSR.
    pub fpsr: u32,
    /// FPCR.
    pub fpcr: u32,
}

/// The register access of an aarch64 vCPU that a debugger needs, besides [`VirtualCpu`].
pub trait Aarch64Vcpu: VirtualCpu {
    /// Reads the registers.
    fn registers(&mut self) -> Result<Aarch64Registers, VcpuError>;
    /// Writes the registers.
    fn set_registers(&mut self, registers: &Aarch64Registers) -> Result<(), VcpuError>;
}

/// The values of the debug registers that a [`GuestDebug`] asks for: MDSCR_EL1's debug bits and
/// the first four breakpoint and watchpoint register pairs (the architecture has at least two of
/// each; uhyve offers GDB four hardware slots in all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugRegisters {
    /// MDSCR_EL1.SS, KDE and MDE as wanted (the guest's other MDSCR bits are kept).
    pub mdscr: u64,
    /// DBGBVRn_EL1 / DBGBCRn_EL1 (0: disabled).
    pub breakpoints: [(u64, u64); 4],
    /// DBGWVRn_EL1 / DBGWCRn_EL1 (0: disabled).
    pub watchpoints: [(u64, u64); 4],
}

/// MDSCR_EL1's bits that guest debugging owns.
pub const MDSCR_DEBUG_BITS: u64 = MDSCR_SS | MDSCR_KDE | MDSCR_MDE;

impl DebugRegisters {
    /// The registers for `debug` (all zero when it is off). Hardware slot n becomes breakpoint
    /// register pair n or watchpoint register pair n; a watchpoint no single register pair can
    /// cover stays disabled.
    pub fn of(debug: &GuestDebug) -> Self {
        let mut out = Self::default();
        if !debug.enabled {
            return out;
        }
        for (slot, bp) in debug.hardware.iter().enumerate() {
            let Some(bp) = bp else { continue };
            let access = match bp.kind {
                HardwareBreakpointKind::Execute => {
                    out.breakpoints[slot] = breakpoint_registers(bp.address);
                    continue;
                }
                HardwareBreakpointKind::Read => WatchAccess::Load,
                HardwareBreakpointKind::Write => WatchAccess::Store,
                HardwareBreakpointKind::ReadWrite => WatchAccess::Both,
            };
            if let Some(pair) = watchpoint_registers(bp.address, bp.len, access) {
                out.watchpoints[slot] = pair;
            }
        }
        let hardware = debug.hardware.iter().any(Option::is_some);
        out.mdscr = if debug.single_step { MDSCR_SS } else { 0 }
            | if hardware || debug.single_step {
                MDSCR_KDE | MDSCR_MDE
            } else {
                0
            };
        out
    }
}

/// What a debug exception with syndrome `esr` (and, for a watchpoint, fault address `far`)
/// means under `debug`; `None` if `esr` is no debug exception.
pub fn debug_exit_of(esr: u64, far: u64, debug: &GuestDebug) -> Option<DebugExit> {
    Some(match exception_class(esr) {
        EC_BRK => DebugExit::SoftwareBreakpoint,
        EC_SOFTWARE_STEP_LOWER_EL => DebugExit::SingleStep,
        EC_BREAKPOINT_LOWER_EL => DebugExit::HardwareBreakpoint(0),
        EC_WATCHPOINT_LOWER_EL => debug
            .hardware
            .iter()
            .position(|slot| {
                slot.is_some_and(|bp| {
                    bp.kind != HardwareBreakpointKind::Execute
                        && watchpoint_matches(bp.address, bp.len, far)
                })
            })
            .map_or(DebugExit::Other, |slot| DebugExit::Watchpoint(slot as u8)),
        _ => return None,
    })
}

/// The immediate of a `BRK` syndrome (ISS bits 15:0).
pub fn brk_immediate(esr: u64) -> u16 {
    (esr & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::super::super::HardwareBreakpoint;
    use super::*;

    fn slot(address: u64, kind: HardwareBreakpointKind, len: u8) -> Option<HardwareBreakpoint> {
        Some(HardwareBreakpoint { address, kind, len })
    }

    #[test]
    fn no_debugging_means_zero_registers() {
        assert_eq!(
            DebugRegisters::of(&GuestDebug::default()),
            DebugRegisters::default()
        );
    }

    #[test]
    fn slots_become_breakpoint_or_watchpoint_pairs() {
        let debug = GuestDebug {
            enabled: true,
            single_step: false,
            software_breakpoints: true,
            hardware: [
                slot(0x4000_1000, HardwareBreakpointKind::Execute, 1),
                slot(0x4000_2004, HardwareBreakpointKind::Write, 4),
                None,
                slot(0x4000_2006, HardwareBreakpointKind::ReadWrite, 4), // crosses: refused
            ],
        };
        let registers = DebugRegisters::of(&debug);
        assert_eq!(registers.breakpoints[0], (0x4000_1000, 0x1e7));
        assert_eq!(registers.breakpoints[1], (0, 0));
        assert_eq!(
            registers.watchpoints[1],
            (0x4000_2000, 1 | 0b110 | 0b10 << 3 | 0xf0 << 5)
        );
        assert_eq!(registers.watchpoints[3], (0, 0));
        assert_eq!(registers.mdscr, MDSCR_KDE | MDSCR_MDE);
        let stepping = GuestDebug {
            single_step: true,
            hardware: [None; 4],
            ..debug
        };
        assert_eq!(DebugRegisters::of(&stepping).mdscr, MDSCR_DEBUG_BITS);
    }

    #[test]
    fn syndromes_name_the_debug_event_and_watchpoint_slot() {
        let debug = GuestDebug {
            enabled: true,
            hardware: [
                slot(0x5000, HardwareBreakpointKind::Execute, 1),
                slot(0x6008, HardwareBreakpointKind::Write, 8),
                None,
                None,
            ],
            ..GuestDebug::default()
        };
        let esr = |ec: u64| ec << 26 | 1 << 25;
        assert_eq!(
            debug_exit_of(esr(0x3c) | 7, 0, &debug),
            Some(DebugExit::SoftwareBreakpoint)
        );
        assert_eq!(brk_immediate(esr(0x3c) | 7), 7);
        assert_eq!(
            debug_exit_of(esr(0x32), 0, &debug),
            Some(DebugExit::SingleStep)
        );
        assert_eq!(
            debug_exit_of(esr(0x30), 0, &debug),
            Some(DebugExit::HardwareBreakpoint(0))
        );
        assert_eq!(
            debug_exit_of(esr(0x34), 0x600c, &debug),
            Some(DebugExit::Watchpoint(1))
        );
        assert_eq!(
            debug_exit_of(esr(0x34), 0x9000, &debug),
            Some(DebugExit::Other)
        );
        assert_eq!(debug_exit_of(esr(0x24), 0, &debug), None);
    }
}
