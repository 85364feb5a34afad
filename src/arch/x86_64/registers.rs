//! The initial register state of every x86_64 vCPU: 64-bit long mode with paging on and
//! interrupts off, at the kernel entry point with the Hermit entry convention (RDI = boot info,
//! RSI = cpu id, RSP = bottom of the boot stack).
//!
//! [`InitialRegisters`] is backend-neutral; the backend writes it into its own register structs
//! and leaves everything not listed here (FS, GS, TR, LDTR, IDTR, APIC base, other GPRs) at its
//! reset value.

use uhyve_interface::GuestPhysAddr;

use super::gdt::{GDT_LIMIT, SegmentDescriptor, code_segment, data_segment};

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hard-wired to 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native FPU error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: no-execute enable.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS bit 1, which always reads as one. IF is clear.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Control registers, segments and general-purpose registers a vCPU starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialRegisters {
    /// CR0 = PE | ET | NE | PG (0x8000_0031).
    pub cr0: u64,
    /// CR3 = guest-physical address of the PML4.
    pub cr3: u64,
    /// CR4 = PAE (0x20).
    pub cr4: u64,
    /// EFER = LME | LMA | NXE (0xD00).
    pub efer: u64,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// CS.
    pub code: SegmentDescriptor,
    /// DS, ES and SS.
    pub data: SegmentDescriptor,
    /// Entry point.
    pub rip: u64,
    /// Bottom (lowest address) of the boot stack.
    pub rsp: u64,
    /// Guest-physical (= virtual) address of the boot info.
    pub rdi: u64,
    /// CPU id, 0 … n−1.
    pub rsi: u64,
    /// RFLAGS = 0x2 (interrupts off).
    pub rflags: u64,
}

/// The initial state of vCPU `cpu_id`: every vCPU gets the same values except RSI.
pub fn initial_registers(
    entry: u64,
    gdt: GuestPhysAddr,
    pml4: GuestPhysAddr,
    boot_info_gpa: GuestPhysAddr,
    stack_bottom: u64,
    cpu_id: u32,
) -> InitialRegisters {
    InitialRegisters {
        cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
        cr3: pml4.as_u64(),
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA | EFER_NXE,
        gdt_base: gdt.as_u64(),
        gdt_limit: GDT_LIMIT,
        code: code_segment(),
        data: data_segment(),
        rip: entry,
        rsp: stack_bottom,
        rdi: boot_info_gpa.as_u64(),
        rsi: u64::from(cpu_id),
        rflags: RFLAGS_RESERVED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_follow_the_entry_convention() {
        let regs = initial_registers(
            0x4_1234,
            GuestPhysAddr::new(0x1000),
            GuestPhysAddr::new(0x10000),
            GuestPhysAddr::new(0x2000),
            0x38000,
            3,
        );
        assert_eq!(regs.cr0, 0x8000_0031);
        assert_eq!(regs.cr3, 0x10000);
        assert_eq!(regs.cr4, 0x20);
        assert_eq!(regs.efer, 0xD00);
        assert_eq!(regs.gdt_base, 0x1000);
        assert_eq!(regs.gdt_limit, 23);
        assert_eq!(regs.code.selector, 0x08);
        assert!(regs.code.l && !regs.code.db);
        assert_eq!(regs.data.selector, 0x10);
        assert_eq!(regs.rip, 0x4_1234);
        assert_eq!(regs.rsp, 0x38000);
        assert_eq!(regs.rdi, 0x2000);
        assert_eq!(regs.rsi, 3);
        assert_eq!(regs.rflags, 0x2);
    }

    #[test]
    fn only_rsi_differs_between_cpus() {
        let at = |id| {
            initial_registers(
                0x40000,
                GuestPhysAddr::new(0x1000),
                GuestPhysAddr::new(0x10000),
                GuestPhysAddr::new(0x2000),
                0x38000,
                id,
            )
        };
        let (a, b) = (at(0), at(u32::MAX));
        assert_eq!(b.rsi, 0xFFFF_FFFF);
        assert_eq!(InitialRegisters { rsi: 0, ..b }, a);
    }
}
