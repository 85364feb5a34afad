//! Platform-neutral edits of the CPUID leaves a guest sees: the hypervisor sets what the host
//! supports (e.g. KVM_GET_SUPPORTED_CPUID), passes each leaf through [`adjust_cpuid_leaf`], and
//! installs the result on every vCPU.
//!
//! The edits tell the kernel it runs virtualized, offer the TSC-deadline timer and MSRs, hide the
//! performance-monitoring unit and replace the brand string (which contains no "GHz", so the
//! kernel's brand-string frequency guess fails cleanly and it uses the boot-info TSC rate).

/// Leaf 1: processor info and feature bits.
pub const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0xA: architectural performance monitoring.
pub const LEAF_PERFMON: u32 = 0xA;
/// First of the three brand-string leaves.
pub const LEAF_BRAND_FIRST: u32 = 0x8000_0002;
/// Last of the three brand-string leaves.
pub const LEAF_BRAND_LAST: u32 = 0x8000_0004;

/// Leaf 1 ECX bit 31: running under a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: TSC-deadline mode of the local APIC timer.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX bit 5: RDMSR/WRMSR.
pub const EDX_MSR: u32 = 1 << 5;

/// The brand string reported in leaves 0x8000_0002..=0x8000_0004 (without its NUL).
pub const BRAND_STRING: &str = "uhyve - unikernel hypervisor";

/// The 48 bytes of the three brand-string leaves: [`BRAND_STRING`], then NULs.
const BRAND_BYTES: [u8; 48] = {
    let text = BRAND_STRING.as_bytes();
    // At least one NUL must follow the text.
    assert!(text.len() < 48);
    let mut bytes = [0u8; 48];
    let mut i = 0;
    while i < text.len() {
        bytes[i] = text[i];
        i += 1;
    }
    bytes
};

/// The four output registers of one CPUID leaf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidRegisters {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Applies the uhyve edits to leaf `function`, sub-leaf `index`. Leaves not listed are left
/// unchanged; none of the edited leaves has sub-leaves, so `index` does not select anything.
pub fn adjust_cpuid_leaf(function: u32, index: u32, regs: &mut CpuidRegisters) {
    // The edited leaves ignore ECX on input; every sub-leaf gets the same edit.
    let _ = index;
    match function {
        LEAF_FEATURES => {
            regs.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            regs.edx |= EDX_MSR;
        }
        LEAF_PERFMON => *regs = CpuidRegisters::default(),
        LEAF_BRAND_FIRST..=LEAF_BRAND_LAST => {
            // In range 0..=2 because of the match arm; each leaf carries 16 bytes.
            let start = (function - LEAF_BRAND_FIRST) as usize * 16;
            let word = |i: usize| {
                let at = start + 4 * i;
                u32::from_le_bytes([
                    BRAND_BYTES[at],
                    BRAND_BYTES[at + 1],
                    BRAND_BYTES[at + 2],
                    BRAND_BYTES[at + 3],
                ])
            };
            *regs = CpuidRegisters {
                eax: word(0),
                ebx: word(1),
                ecx: word(2),
                edx: word(3),
            };
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, regs: CpuidRegisters) -> CpuidRegisters {
        let mut regs = regs;
        adjust_cpuid_leaf(function, 0, &mut regs);
        regs
    }

    const ONES: CpuidRegisters = CpuidRegisters {
        eax: u32::MAX,
        ebx: u32::MAX,
        ecx: u32::MAX,
        edx: u32::MAX,
    };

    #[test]
    fn feature_leaf_gains_hypervisor_tsc_deadline_and_msr() {
        let regs = leaf(
            1,
            CpuidRegisters {
                eax: 0x906ea,
                ebx: 0x0800,
                ecx: 0x1,
                edx: 0x10,
            },
        );
        assert_eq!(
            regs,
            CpuidRegisters {
                eax: 0x906ea,
                ebx: 0x0800,
                ecx: 0x8100_0001,
                edx: 0x30,
            }
        );
        // Bits already set stay set.
        assert_eq!(leaf(1, ONES), ONES);
    }

    #[test]
    fn perfmon_leaf_is_zeroed() {
        assert_eq!(leaf(0xA, ONES), CpuidRegisters::default());
    }

    #[test]
    fn brand_string_spans_the_three_leaves() {
        let mut bytes = Vec::new();
        for function in LEAF_BRAND_FIRST..=LEAF_BRAND_LAST {
            let r = leaf(function, ONES);
            for word in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
        }
        assert_eq!(bytes.len(), 48);
        let nul = bytes.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&bytes[..nul], BRAND_STRING.as_bytes());
        assert!(bytes[nul..].iter().all(|&b| b == 0));
        // The string fits into 32 bytes, so the last leaf is all zero.
        assert_eq!(leaf(LEAF_BRAND_LAST, ONES), CpuidRegisters::default());
    }

    #[test]
    fn other_leaves_and_sub_leaves_are_untouched_or_edited_alike() {
        for function in [
            0,
            2,
            7,
            0xB,
            0x15,
            0x16,
            0x4000_0000,
            0x8000_0001,
            0x8000_0005,
        ] {
            assert_eq!(leaf(function, ONES), ONES, "leaf {function:#x}");
        }
        let mut regs = CpuidRegisters::default();
        adjust_cpuid_leaf(1, 5, &mut regs);
        assert_eq!(regs.ecx, ECX_HYPERVISOR | ECX_TSC_DEADLINE);
    }
}
