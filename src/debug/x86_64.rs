//! The x86_64 side of guest debugging: GDB's register set through the state access the
//! emulation fallback uses ([`X86Vcpu`]), and the `int3` breakpoint instruction.

use super::Registers as AnyRegisters;
use crate::hypervisor::VirtualCpu;
use crate::hypervisor::x86_64::X86Vcpu;

/// GDB's x86_64 registers (general-purpose, RIP, EFLAGS, segments, x87, SSE).
type Registers = gdbstub_arch::x86::reg::X86_64CoreRegs;

/// The x86 breakpoint instruction.
pub(super) const INT3: u8 = 0xcc;

/// GDB's register order (RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8…R15) as hardware numbers.
const GDB_TO_HARDWARE: [usize; 16] = [0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];
/// Offsets in the legacy (FXSAVE) region of the XSAVE area.
const FCW: usize = 0;
const FSW: usize = 2;
const FTW: usize = 4;
const FOP: usize = 6;
const FIP: usize = 8;
const FDP: usize = 16;
const ST0: usize = 32;

fn x86_of<C: VirtualCpu>(
    vcpu: &mut C,
    x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
) -> Result<&mut dyn X86Vcpu, String> {
    x86(vcpu).ok_or_else(|| "this vCPU offers no x86 state".to_string())
}

fn u16_at(area: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([area[at], area[at + 1]])
}

fn u32_at(area: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(area[at..at + 4].try_into().unwrap_or_default())
}

/// Reads the registers of a stopped vCPU.
pub(super) fn read_registers<C: VirtualCpu>(
    vcpu: &mut C,
    x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
) -> Result<AnyRegisters, String> {
    let cpu = x86_of(vcpu, x86)?;
    let state = cpu.emulation_state().map_err(|e| e.to_string())?;
    let selectors = cpu.segment_selectors().map_err(|e| e.to_string())?;
    let mut r = Registers {
        rip: state.rip,
        eflags: state.rflags as u32,
        mxcsr: state.mxcsr(),
        ..Registers::default()
    };
    for (gdb, hw) in GDB_TO_HARDWARE.iter().enumerate() {
        r.regs[gdb] = state.gprs[*hw];
    }
    let [cs, ss, ds, es, fs, gs] = selectors.map(u32::from);
    r.segments = gdbstub_arch::x86::reg::X86SegmentRegs {
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
    };
    let area = &state.xsave[..];
    for (i, st) in r.st.iter_mut().enumerate() {
        st.copy_from_slice(&area[ST0 + 16 * i..ST0 + 16 * i + 10]);
    }
    for (i, xmm) in r.xmm.iter_mut().enumerate() {
        *xmm = state.xmm(i);
    }
    // The abridged tag (a bit per register, 1 = valid) as the full one (11 = empty).
    let abridged = area[FTW];
    let ftag = (0..8).fold(0u32, |tag, i| {
        tag | if abridged & (1 << i) != 0 {
            0
        } else {
            0b11 << (2 * i)
        }
    });
    r.fpu = gdbstub_arch::x86::reg::X87FpuInternalRegs {
        fctrl: u32::from(u16_at(area, FCW)),
        fstat: u32::from(u16_at(area, FSW)),
        ftag,
        fiseg: 0,
        fioff: u32_at(area, FIP),
        foseg: 0,
        fooff: u32_at(area, FDP),
        fop: u32::from(u16_at(area, FOP)),
    };
    Ok(AnyRegisters::X86_64(Box::new(r)))
}

/// Writes the general-purpose registers, RIP, RFLAGS, x87 and SSE registers of a stopped vCPU
/// (segment selectors stay as they are).
pub(super) fn write_registers<C: VirtualCpu>(
    vcpu: &mut C,
    x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
    r: &Registers,
) -> Result<(), String> {
    let cpu = x86_of(vcpu, x86)?;
    let before = cpu.emulation_state().map_err(|e| e.to_string())?;
    let mut after = before.clone();
    for (gdb, hw) in GDB_TO_HARDWARE.iter().enumerate() {
        after.gprs[*hw] = r.regs[gdb];
    }
    after.rip = r.rip;
    after.rflags = (before.rflags & !0xffff_ffff) | u64::from(r.eflags);
    for (i, xmm) in r.xmm.iter().enumerate() {
        after.set_xmm(i, *xmm);
    }
    after.set_mxcsr(r.mxcsr);
    for (i, st) in r.st.iter().enumerate() {
        after.xsave[ST0 + 16 * i..ST0 + 16 * i + 10].copy_from_slice(st);
    }
    after.xsave[FCW..FCW + 2].copy_from_slice(&(r.fpu.fctrl as u16).to_le_bytes());
    after.xsave[FSW..FSW + 2].copy_from_slice(&(r.fpu.fstat as u16).to_le_bytes());
    after.mark_modified_components_in_use(&before);
    cpu.set_emulation_state(&before, &after)
        .map_err(|e| e.to_string())
}
