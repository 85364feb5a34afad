//! The aarch64 side of guest debugging: GDB's register set (`org.gnu.gdb.aarch64.core` and
//! `.fpu`) through the backend's [`Aarch64Vcpu`] register access.

use super::Registers as AnyRegisters;
use crate::hypervisor::VirtualCpu;
use crate::hypervisor::aarch64::debug::{Aarch64Registers, Aarch64Vcpu};

/// GDB's aarch64 registers.
type Registers = gdbstub_arch::aarch64::reg::AArch64CoreRegs;

fn aarch64_of<C: VirtualCpu>(
    vcpu: &mut C,
    aarch64: fn(&mut C) -> Option<&mut dyn Aarch64Vcpu>,
) -> Result<&mut dyn Aarch64Vcpu, String> {
    aarch64(vcpu).ok_or_else(|| "this vCPU offers no aarch64 registers".to_string())
}

/// Reads the registers of a stopped vCPU.
pub(super) fn read_registers<C: VirtualCpu>(
    vcpu: &mut C,
    aarch64: fn(&mut C) -> Option<&mut dyn Aarch64Vcpu>,
) -> Result<AnyRegisters, String> {
    let r = aarch64_of(vcpu, aarch64)?
        .registers()
        .map_err(|e| e.to_string())?;
    Ok(AnyRegisters::Aarch64(Box::new(Registers {
        x: r.x,
        sp: r.sp,
        pc: r.pc,
        // PSTATE as AArch64 defines it fits 32 bits.
        cpsr: r.pstate as u32,
        v: r.v,
        fpcr: r.fpcr,
        fpsr: r.fpsr,
    })))
}

/// Writes the registers of a stopped vCPU.
pub(super) fn write_registers<C: VirtualCpu>(
    vcpu: &mut C,
    aarch64: fn(&mut C) -> Option<&mut dyn Aarch64Vcpu>,
    r: &Registers,
) -> Result<(), String> {
    let cpu = aarch64_of(vcpu, aarch64)?;
    let registers = Aarch64Registers {
        x: r.x,
        sp: r.sp,
        pc: r.pc,
        pstate: u64::from(r.cpsr),
        v: r.v,
        fpsr: r.fpsr,
        fpcr: r.fpcr,
    };
    cpu.set_registers(&registers).map_err(|e| e.to_string())
}
