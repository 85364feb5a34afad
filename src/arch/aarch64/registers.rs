//! The initial register state of every aarch64 vCPU: EL1h with D, A, I and F masked, the MMU on
//! with the boot page tables in TTBR0_EL1, at the kernel entry point with the Hermit entry
//! convention (X0 = boot info, X1 = cpu id, SP_EL1 = bottom of the boot stack).
//!
//! [`InitialRegisters`] is backend-neutral; the backend writes it into the vCPU (on the vCPU's own
//! thread under Hypervisor.framework) and leaves everything not listed here at its reset value.
//! CPACR_EL1 is the one register whose value depends on what the vCPU reports: the backend reads
//! it and ORs in [`InitialRegisters::cpacr_el1_set`] (see [`InitialRegisters::cpacr_el1`]).

use uhyve_interface::GuestPhysAddr;

/// PSTATE.M = 0b0101: EL1 using SP_EL1 (EL1h).
pub const PSTATE_EL1H: u64 = 0b0101;
/// PSTATE.F: FIQ masked.
pub const PSTATE_F: u64 = 1 << 6;
/// PSTATE.I: IRQ masked.
pub const PSTATE_I: u64 = 1 << 7;
/// PSTATE.A: SError masked.
pub const PSTATE_A: u64 = 1 << 8;
/// PSTATE.D: debug exceptions masked.
pub const PSTATE_D: u64 = 1 << 9;

/// MAIR_EL1 attribute 0: Device-nGnRnE.
pub const MAIR_DEVICE_NGNRNE: u64 = 0x00;
/// MAIR_EL1 attribute 1: Device-nGnRE.
pub const MAIR_DEVICE_NGNRE: u64 = 0x04;
/// MAIR_EL1 attribute 2: Device-GRE.
pub const MAIR_DEVICE_GRE: u64 = 0x0C;
/// MAIR_EL1 attribute 3: Normal, inner/outer non-cacheable.
pub const MAIR_NORMAL_NC: u64 = 0x44;
/// MAIR_EL1 attribute 4: Normal, inner/outer write-back non-transient, read/write-allocate.
pub const MAIR_NORMAL: u64 = 0xFF;
/// MAIR_EL1 with attributes 0 … 4 as above (0xFF_440C_0400).
pub const MAIR_EL1: u64 = MAIR_DEVICE_NGNRNE
    | (MAIR_DEVICE_NGNRE << 8)
    | (MAIR_DEVICE_GRE << 16)
    | (MAIR_NORMAL_NC << 24)
    | (MAIR_NORMAL << 32);

/// TCR_EL1.T0SZ = 16 (48-bit VA through TTBR0).
pub const TCR_T0SZ_48: u64 = 16;
/// TCR_EL1.IRGN0 = 0b01: inner write-back read/write-allocate table walks.
pub const TCR_IRGN0_WBWA: u64 = 1 << 8;
/// TCR_EL1.ORGN0 = 0b01: outer write-back read/write-allocate table walks.
pub const TCR_ORGN0_WBWA: u64 = 1 << 10;
/// TCR_EL1.SH0 = 0b11: inner shareable table walks.
pub const TCR_SH0_INNER: u64 = 3 << 12;
/// TCR_EL1.TG0 = 0b00: 4 KiB granule (the field's value is zero).
pub const TCR_TG0_4K: u64 = 0;
/// The TTBR0 half of TCR_EL1 (0x3510); the TTBR1 half repeats it 16 bits up (T1SZ = 16,
/// IRGN1/ORGN1 = WBWA, SH1 = inner, TG1 field 0).
pub const TCR_HALF: u64 =
    TCR_T0SZ_48 | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA | TCR_SH0_INNER | TCR_TG0_4K;
/// Shift of TCR_EL1.IPS (bits 34:32), the intermediate physical address size.
pub const TCR_IPS_SHIFT: u32 = 32;

/// CPACR_EL1.FPEN = 0b11: FP/SIMD instructions do not trap at EL0 or EL1.
pub const CPACR_FPEN: u64 = 3 << 20;

/// SCTLR_EL1.M: stage-1 MMU on.
pub const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.C: data caches on.
pub const SCTLR_C: u64 = 1 << 2;
/// SCTLR_EL1.SA: SP alignment check at EL1.
pub const SCTLR_SA: u64 = 1 << 3;
/// SCTLR_EL1.SA0: SP alignment check at EL0.
pub const SCTLR_SA0: u64 = 1 << 4;
/// SCTLR_EL1.SED: SETEND disabled (AArch32).
pub const SCTLR_SED: u64 = 1 << 8;
/// SCTLR_EL1.EOS: exception exit is context synchronizing.
pub const SCTLR_EOS: u64 = 1 << 11;
/// SCTLR_EL1.I: instruction caches on.
pub const SCTLR_I: u64 = 1 << 12;
/// SCTLR_EL1.DZE: DC ZVA allowed at EL0.
pub const SCTLR_DZE: u64 = 1 << 14;
/// SCTLR_EL1.UCT: CTR_EL0 readable at EL0.
pub const SCTLR_UCT: u64 = 1 << 15;
/// SCTLR_EL1.nTWI: WFI does not trap at EL0.
pub const SCTLR_NTWI: u64 = 1 << 16;
/// SCTLR_EL1.nTWE: WFE does not trap at EL0.
pub const SCTLR_NTWE: u64 = 1 << 18;
/// SCTLR_EL1.TSCXT: SCXTNUM_EL0 access traps at EL0.
pub const SCTLR_TSCXT: u64 = 1 << 20;
/// SCTLR_EL1.EIS: exception entry is context synchronizing.
pub const SCTLR_EIS: u64 = 1 << 22;
/// SCTLR_EL1.SPAN: PSTATE.PAN unchanged on exception entry.
pub const SCTLR_SPAN: u64 = 1 << 23;
/// SCTLR_EL1.UCI: cache maintenance instructions allowed at EL0.
pub const SCTLR_UCI: u64 = 1 << 26;
/// SCTLR_EL1 at entry (0x04D5_D91D); A, WXN and EE stay clear.
pub const SCTLR_EL1: u64 = SCTLR_M
    | SCTLR_C
    | SCTLR_SA
    | SCTLR_SA0
    | SCTLR_SED
    | SCTLR_EOS
    | SCTLR_I
    | SCTLR_DZE
    | SCTLR_UCT
    | SCTLR_NTWI
    | SCTLR_NTWE
    | SCTLR_TSCXT
    | SCTLR_EIS
    | SCTLR_SPAN
    | SCTLR_UCI;

const _: () = {
    assert!(MAIR_EL1 == 0xFF_440C_0400);
    assert!(TCR_HALF == 0x3510);
    assert!(SCTLR_EL1 == 0x04D5_D91D);
    assert!(PSTATE_EL1H | PSTATE_F | PSTATE_I | PSTATE_A | PSTATE_D == 0x3C5);
};

/// General-purpose and system registers a vCPU starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialRegisters {
    /// PC = entry point.
    pub pc: u64,
    /// X0 = guest-physical (= virtual) address of the boot info.
    pub x0: u64,
    /// X1 = CPU id, 0 … n−1.
    pub x1: u64,
    /// SP_EL1 = bottom (lowest address) of the boot stack.
    pub sp_el1: u64,
    /// CPSR/PSTATE = 0x3C5 (EL1h, D, A, I, F masked).
    pub cpsr: u64,
    /// MPIDR_EL1 = cpu id & 0xFF (Aff0).
    pub mpidr_el1: u64,
    /// MAIR_EL1 = 0xFF_440C_0400.
    pub mair_el1: u64,
    /// TCR_EL1 = 0x3510_3510 | (PARange << 32).
    pub tcr_el1: u64,
    /// TTBR0_EL1 = guest-physical address of the L0 table.
    pub ttbr0_el1: u64,
    /// TTBR1_EL1 = 0.
    pub ttbr1_el1: u64,
    /// Bits to OR into the CPACR_EL1 value the vCPU reports (FPEN = 0b11).
    pub cpacr_el1_set: u64,
    /// MDSCR_EL1 = 0.
    pub mdscr_el1: u64,
    /// SCTLR_EL1 = 0x04D5_D91D.
    pub sctlr_el1: u64,
}

impl InitialRegisters {
    /// The CPACR_EL1 value to write, given the value `current` read from the vCPU.
    pub fn cpacr_el1(&self, current: u64) -> u64 {
        current | self.cpacr_el1_set
    }

    /// The same state with TCR_EL1.IPS set for a vCPU whose ID_AA64MMFR0_EL1 is `mmfr0`: its
    /// PARange (bits 3:0), capped at 48 bits (0b101) because the boot tables use no 52-bit
    /// descriptors.
    pub fn with_pa_range_of(self, mmfr0: u64) -> Self {
        let pa_range = (mmfr0 & 0xF).min(PA_RANGE_48_BITS);
        let ips_mask = 0x7 << TCR_IPS_SHIFT;
        Self {
            tcr_el1: (self.tcr_el1 & !ips_mask) | (pa_range << TCR_IPS_SHIFT),
            ..self
        }
    }
}

/// ID_AA64MMFR0_EL1.PARange (and TCR_EL1.IPS) for 48-bit physical addresses.
pub const PA_RANGE_48_BITS: u64 = 0b101;

/// The initial state of vCPU `cpu_id`: every vCPU gets the same values except X1 and MPIDR_EL1.
/// TCR_EL1.IPS is 0 here: it depends on the vCPU's physical address range, which the vCPU sets
/// with [`InitialRegisters::with_pa_range_of`] once it exists.
pub fn initial_registers(
    entry: u64,
    ttbr0: GuestPhysAddr,
    boot_info_gpa: GuestPhysAddr,
    stack_bottom: u64,
    cpu_id: u32,
) -> InitialRegisters {
    InitialRegisters {
        pc: entry,
        x0: boot_info_gpa.as_u64(),
        x1: u64::from(cpu_id),
        sp_el1: stack_bottom,
        cpsr: PSTATE_EL1H | PSTATE_F | PSTATE_I | PSTATE_A | PSTATE_D,
        mpidr_el1: u64::from(cpu_id & 0xFF),
        mair_el1: MAIR_EL1,
        tcr_el1: TCR_HALF | (TCR_HALF << 16),
        ttbr0_el1: ttbr0.as_u64(),
        ttbr1_el1: 0,
        cpacr_el1_set: CPACR_FPEN,
        mdscr_el1: 0,
        sctlr_el1: SCTLR_EL1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ips_field_follows_the_vcpu_pa_range() {
        let regs = at(0, 0);
        // Apple M1 reports PARange 0b0001 (36 bits) in its guests; the rest of TCR stays.
        let m1 = regs.with_pa_range_of(0x0000_0000_1101_2121);
        assert_eq!(m1.tcr_el1, 0x1_3510_3510);
        assert_eq!(
            regs.with_pa_range_of(0b0101).tcr_el1 >> TCR_IPS_SHIFT,
            0b101
        );
        // 52 bits (0b0110) and reserved values are capped at 48 bits.
        assert_eq!(
            regs.with_pa_range_of(0b0110).tcr_el1 >> TCR_IPS_SHIFT,
            0b101
        );
        assert_eq!(regs.with_pa_range_of(0xF).tcr_el1 >> TCR_IPS_SHIFT, 0b101);
        // Lower to higher and back.
        assert_eq!(
            regs.with_pa_range_of(5).with_pa_range_of(2).tcr_el1,
            at(0, 2).tcr_el1
        );
    }

    const G: u64 = 0x1000_0000;

    fn at(cpu_id: u32, pa_range: u64) -> InitialRegisters {
        initial_registers(
            G + 0x6_4c4c,
            GuestPhysAddr::new(G + 0x10000),
            GuestPhysAddr::new(G + 0x4000),
            G + 0x38000,
            cpu_id,
        )
        .with_pa_range_of(pa_range)
    }

    #[test]
    fn registers_follow_the_entry_convention() {
        let regs = at(3, 2);
        assert_eq!(regs.pc, G + 0x6_4c4c);
        assert_eq!(regs.x0, G + 0x4000);
        assert_eq!(regs.x1, 3);
        assert_eq!(regs.sp_el1, G + 0x38000);
        assert_eq!(regs.cpsr, 0x3C5);
        assert_eq!(regs.mpidr_el1, 3);
        assert_eq!(regs.mair_el1, 0xFF_440C_0400);
        assert_eq!(regs.tcr_el1, 0x2_3510_3510);
        assert_eq!(regs.ttbr0_el1, G + 0x10000);
        assert_eq!(regs.ttbr1_el1, 0);
        assert_eq!(regs.cpacr_el1_set, 3 << 20);
        assert_eq!(regs.mdscr_el1, 0);
        assert_eq!(regs.sctlr_el1, 0x04D5_D91D);
    }

    #[test]
    fn cpacr_keeps_the_reported_bits() {
        let regs = at(0, 0);
        assert_eq!(regs.cpacr_el1(0), 0x30_0000);
        assert_eq!(regs.cpacr_el1(0x1_0000), 0x31_0000);
        assert_eq!(regs.cpacr_el1(0x30_0000), 0x30_0000);
    }

    #[test]
    fn pa_range_goes_into_ips() {
        assert_eq!(at(0, 0).tcr_el1, 0x3510_3510);
        assert_eq!(at(0, 5).tcr_el1, 0x5_3510_3510);
        // At most 48 bits (the boot tables use no 52-bit descriptors); nothing else in TCR
        // changes.
        assert_eq!(at(0, 0xFF).tcr_el1, 0x5_3510_3510);
    }

    #[test]
    fn only_x1_and_mpidr_differ_between_cpus() {
        let (a, b) = (at(0, 1), at(0x1_0102, 1));
        assert_eq!(b.x1, 0x1_0102);
        // MPIDR_EL1 carries Aff0 only.
        assert_eq!(b.mpidr_el1, 0x02);
        assert_eq!(
            InitialRegisters {
                x1: 0,
                mpidr_el1: 0,
                ..b
            },
            a
        );
        assert_eq!(at(u32::MAX, 1).mpidr_el1, 0xFF);
    }
}
