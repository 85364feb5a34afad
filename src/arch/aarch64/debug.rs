//! The aarch64 debug architecture as a debugger on the host uses it, for every backend: the
//! `BRK #0` breakpoint instruction, the exception classes of debug exceptions, the values of the
//! hardware breakpoint and watchpoint registers (DBGBVR/DBGBCR, DBGWVR/DBGWCR) for one address,
//! MDSCR_EL1 and PSTATE bits of single-stepping, and the exception entry that hands a guest its
//! own `BRK` back as if no debugger were there. Plain values only: the backends copy them into
//! `KVM_SET_GUEST_DEBUG` or Hypervisor.framework's system registers.

/// `BRK #0`, the software breakpoint instruction GDB's aarch64 target writes (little endian).
pub const BRK_0: [u8; 4] = 0xd420_0000u32.to_le_bytes();

/// Exception class of a hardware breakpoint taken from a lower exception level.
pub const EC_BREAKPOINT_LOWER_EL: u8 = 0x30;
/// Exception class of a completed software step taken from a lower exception level.
pub const EC_SOFTWARE_STEP_LOWER_EL: u8 = 0x32;
/// Exception class of a watchpoint taken from a lower exception level.
pub const EC_WATCHPOINT_LOWER_EL: u8 = 0x34;
/// Exception class of a `BRK` instruction (AArch64).
pub const EC_BRK: u8 = 0x3c;

/// MDSCR_EL1.SS: software step enabled.
pub const MDSCR_SS: u64 = 1;
/// MDSCR_EL1.KDE: debug exceptions at the exception level of the kernel (EL1).
pub const MDSCR_KDE: u64 = 1 << 13;
/// MDSCR_EL1.MDE: hardware breakpoints and watchpoints enabled.
pub const MDSCR_MDE: u64 = 1 << 15;
/// PSTATE.SS: the software step state machine is active-not-pending (one instruction to run).
pub const PSTATE_SS: u64 = 1 << 21;
/// PSTATE.D, A, I and F: all exceptions masked (as on entry to an exception vector).
const PSTATE_DAIF: u64 = 0xf << 6;
/// PSTATE.M for EL1 with SP_EL1 (EL1h).
const MODE_EL1H: u64 = 0b0101;
/// PSTATE.M for EL1 with SP_EL0 (EL1t).
const MODE_EL1T: u64 = 0b0100;
/// ESR.IL: a 32-bit instruction.
const ESR_IL: u64 = 1 << 25;

/// The stack pointer that PSTATE selects: what GDB's `sp` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackPointer {
    /// SP_EL0 (at EL0, or at EL1 with PSTATE.SP = 0).
    El0,
    /// SP_EL1 (at EL1 with PSTATE.SP = 1).
    El1,
}

/// The stack pointer in use under `pstate`.
pub fn stack_pointer_of(pstate: u64) -> StackPointer {
    let el = (pstate >> 2) & 0b11;
    if el >= 1 && pstate & 1 == 1 {
        StackPointer::El1
    } else {
        StackPointer::El0
    }
}

/// DBGBVRn_EL1 and DBGBCRn_EL1 of an enabled breakpoint on the instruction at `address`:
/// unlinked address match, all four byte lanes of an A64 instruction, at EL1 and EL0.
pub fn breakpoint_registers(address: u64) -> (u64, u64) {
    let enabled = 1;
    let el1_and_el0 = 0b11 << 1;
    let all_lanes = 0b1111 << 5;
    (address & !0b11, enabled | el1_and_el0 | all_lanes)
}

/// What a watchpoint matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAccess {
    /// Loads.
    Load,
    /// Stores.
    Store,
    /// Loads and stores.
    Both,
}

/// DBGWVRn_EL1 and DBGWCRn_EL1 of an enabled watchpoint on `len` bytes at `address` (1, 2, 4
/// or 8 bytes within one aligned doubleword; `None` otherwise), at EL1 and EL0.
pub fn watchpoint_registers(address: u64, len: u8, access: WatchAccess) -> Option<(u64, u64)> {
    let offset = address & 0b111;
    if !matches!(len, 1 | 2 | 4 | 8) || offset + u64::from(len) > 8 {
        return None;
    }
    let byte_lanes = ((1u64 << len) - 1) << offset;
    let load_store = match access {
        WatchAccess::Load => 0b01,
        WatchAccess::Store => 0b10,
        WatchAccess::Both => 0b11,
    };
    let enabled = 1;
    let el1_and_el0 = 0b11 << 1;
    Some((
        address & !0b111,
        enabled | el1_and_el0 | load_store << 3 | byte_lanes << 5,
    ))
}

/// Whether a watchpoint on `len` bytes at `address` matches an access at `fault_address` (the
/// FAR of a watchpoint exception, which names an address the access touched).
pub fn watchpoint_matches(address: u64, len: u8, fault_address: u64) -> bool {
    let first = address & !0b111;
    // An access may start below the watched bytes (an unaligned or wider access): compare
    // doublewords, as the hardware does.
    fault_address & !0b111 == first
        || (fault_address >= address && fault_address - address < u64::from(len))
}

/// The registers of a vCPU after it took a synchronous exception to EL1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExceptionEntry {
    /// The vector entry it runs next.
    pub pc: u64,
    /// EL1h with all exceptions masked.
    pub pstate: u64,
    /// ELR_EL1: where the exception was taken.
    pub elr_el1: u64,
    /// SPSR_EL1: PSTATE before.
    pub spsr_el1: u64,
    /// ESR_EL1: the syndrome.
    pub esr_el1: u64,
}

/// The exception entry of a `BRK #imm` at `pc`, executed with `pstate`, into the vectors at
/// `vbar_el1`: what the guest would have seen without a debugger that traps `BRK`.
pub fn brk_exception_entry(pc: u64, pstate: u64, vbar_el1: u64, imm: u16) -> ExceptionEntry {
    let mode = pstate & 0b1111;
    let vector = if mode == MODE_EL1H {
        0x200 // current EL, SP_ELx
    } else if mode == MODE_EL1T {
        0x000 // current EL, SP_EL0
    } else {
        0x400 // lower EL, AArch64
    };
    ExceptionEntry {
        pc: (vbar_el1 & !0x7ff).wrapping_add(vector),
        pstate: PSTATE_DAIF | MODE_EL1H,
        elr_el1: pc,
        spsr_el1: pstate & 0xffff_ffff,
        esr_el1: u64::from(EC_BRK) << 26 | ESR_IL | u64::from(imm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brk_0_is_the_a64_encoding() {
        assert_eq!(BRK_0, [0x00, 0x00, 0x20, 0xd4]);
    }

    #[test]
    fn breakpoint_control_matches_an_a64_instruction_at_el1() {
        let (value, control) = breakpoint_registers(0x4000_1236);
        assert_eq!(value, 0x4000_1234);
        // E, PMC = 0b11, BAS = 0b1111, BT = 0 (unlinked address match).
        assert_eq!(control, 0x1e7);
    }

    #[test]
    fn watchpoint_byte_lanes_follow_address_and_length() {
        assert_eq!(
            watchpoint_registers(0x1000, 8, WatchAccess::Store),
            Some((0x1000, 1 | 0b110 | 0b10 << 3 | 0xff << 5))
        );
        assert_eq!(
            watchpoint_registers(0x1004, 4, WatchAccess::Load),
            Some((0x1000, 1 | 0b110 | 0b01 << 3 | 0xf0 << 5))
        );
        assert_eq!(
            watchpoint_registers(0x1003, 1, WatchAccess::Both),
            Some((0x1000, 1 | 0b110 | 0b11 << 3 | 0x08 << 5))
        );
        // Crossing a doubleword, or an odd length: no single watchpoint covers it.
        assert_eq!(watchpoint_registers(0x1006, 4, WatchAccess::Both), None);
        assert_eq!(watchpoint_registers(0x1000, 3, WatchAccess::Both), None);
        assert_eq!(watchpoint_registers(u64::MAX, 8, WatchAccess::Both), None);
    }

    #[test]
    fn watchpoint_hits_are_matched_by_doubleword() {
        assert!(watchpoint_matches(0x1004, 4, 0x1004));
        assert!(watchpoint_matches(0x1004, 4, 0x1000));
        assert!(!watchpoint_matches(0x1004, 4, 0x1008));
        assert!(!watchpoint_matches(u64::MAX - 1, 1, 0));
    }

    #[test]
    fn stack_pointer_follows_pstate() {
        assert_eq!(stack_pointer_of(0x3c5), StackPointer::El1);
        assert_eq!(stack_pointer_of(0x3c4), StackPointer::El0);
        assert_eq!(stack_pointer_of(0x0), StackPointer::El0);
    }

    #[test]
    fn brk_entry_uses_the_vector_of_the_current_mode() {
        let at_el1h = brk_exception_entry(0x4000_0000, 0x6000_0005, 0x8000_0800, 0x3e8);
        assert_eq!(
            at_el1h,
            ExceptionEntry {
                pc: 0x8000_0a00,
                pstate: 0x3c5,
                elr_el1: 0x4000_0000,
                spsr_el1: 0x6000_0005,
                esr_el1: 0xf200_03e8,
            }
        );
        assert_eq!(brk_exception_entry(0, 0x4, 0x8000_0800, 0).pc, 0x8000_0800);
        assert_eq!(brk_exception_entry(0, 0x0, 0x8000_0800, 0).pc, 0x8000_0c00);
        // VBAR's low 11 bits are RES0; a hostile value cannot overflow.
        assert_eq!(
            brk_exception_entry(0, 0x5, u64::MAX, 0).pc,
            0xffff_ffff_ffff_fa00
        );
    }
}
