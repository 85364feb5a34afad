//! Platform-neutral edits of the CPUID leaves a guest sees: the hypervisor sets what the host
//! supports (e.g. KVM_GET_SUPPORTED_CPUID), passes each leaf through [`adjust_cpuid_leaf`], and
//! installs the result on every vCPU.
//!
//! The edits tell the kernel it runs virtualized, offer the TSC-deadline timer and MSRs, hide the
//! performance-monitoring unit and replace the brand string (which contains no "GHz", so the
//! kernel's brand-string frequency guess fails cleanly and it uses the boot-info TSC rate).
//!
//! On a hypervisor that cannot execute SIMD instructions natively (KVM-PVM executes every guest
//! instruction in the host kernel's emulator, which lacks SSE arithmetic, XSAVE and more), a guest
//! may only be told about what either that emulator or uhyve's user-space fallback executes:
//! [`restrict_to_fallback`] then keeps, per leaf, a list of known-good bits and clears the rest
//! (AVX, AVX2, AVX-512, FMA, F16C, BMI1, MOVBE, LZCNT, RDPID, XSAVES, AVX state in XCR0, …; the
//! fallback's own AES-NI, PCLMULQDQ, SHA, BMI2, ADX and CLWB stay), so the kernel's checks and
//! `is_x86_feature_detected!` take paths that can run.
//!
//! KVM-PVM does not apply all of it: it merges its host's own bits of leaves 1, 7 and 0xD into
//! the CPUID it keeps for the vCPU (only the hypervisor, x2APIC, TSC-deadline and CX16 bits follow
//! the table uhyve sets), so there the guest still reads AVX and friends in CPUID. What makes
//! OS-aware detection (the kernel, `std`'s `is_x86_feature_detected!`, libm) reject them is the
//! second half of the policy: the fallback's XGETBV reports XCR0 without the AVX and AVX-512
//! state components (`emulate::xsave::XsaveLayout::withheld_xcr0`), and every AVX-family
//! extension requires that state.

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

/// The extensions beyond SSE2 that the user-space fallback implements completely (see
/// `emulate::sse::complete_extensions` and `emulate::extensions::complete_extensions`); a
/// restricted CPUID keeps only these of the optional instruction sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackSimd {
    /// SSE3 (leaf 1 ECX bit 0).
    pub sse3: bool,
    /// SSSE3 (leaf 1 ECX bit 9).
    pub ssse3: bool,
    /// SSE4.1 (leaf 1 ECX bit 19).
    pub sse4_1: bool,
    /// SSE4.2 (leaf 1 ECX bit 20).
    pub sse4_2: bool,
    /// POPCNT (leaf 1 ECX bit 23).
    pub popcnt: bool,
    /// AES-NI (leaf 1 ECX bit 25).
    pub aes: bool,
    /// PCLMULQDQ (leaf 1 ECX bit 1).
    pub pclmulqdq: bool,
    /// SHA (leaf 7 EBX bit 29).
    pub sha: bool,
    /// BMI2 (leaf 7 EBX bit 8).
    pub bmi2: bool,
    /// ADX (leaf 7 EBX bit 19).
    pub adx: bool,
    /// CLWB (leaf 7 EBX bit 24).
    pub clwb: bool,
}

impl FallbackSimd {
    /// What the user-space fallback implements completely, for the CPUID a guest sees on a
    /// hypervisor that cannot execute these instruction sets itself.
    pub fn of_the_emulator() -> Self {
        use super::emulate::{extensions, sse};
        use iced_x86::CpuidFeature;
        let complete = |feature| {
            sse::complete_extensions().contains(&feature)
                || extensions::complete_extensions().contains(&feature)
        };
        Self {
            sse3: complete(CpuidFeature::SSE3),
            ssse3: complete(CpuidFeature::SSSE3),
            sse4_1: complete(CpuidFeature::SSE4_1),
            sse4_2: complete(CpuidFeature::SSE4_2),
            popcnt: complete(CpuidFeature::POPCNT),
            aes: complete(CpuidFeature::AES),
            pclmulqdq: complete(CpuidFeature::PCLMULQDQ),
            sha: complete(CpuidFeature::SHA),
            bmi2: complete(CpuidFeature::BMI2),
            adx: complete(CpuidFeature::ADX),
            clwb: complete(CpuidFeature::CLWB),
        }
    }
}

/// Leaf 7: structured extended features (sub-leaf 0 and 1).
pub const LEAF_EXTENDED_FEATURES: u32 = 0x7;
/// Leaf 0xD: XSAVE state components.
pub const LEAF_XSAVE: u32 = 0xD;
/// Leaf 0x8000_0001: AMD/extended feature bits.
pub const LEAF_EXTENDED_INFO: u32 = 0x8000_0001;
/// Leaf 0x8000_0008: address sizes and AMD extended feature bits (EBX).
pub const LEAF_ADDRESS_SIZES: u32 = 0x8000_0008;

/// A mask with the given bit numbers set.
const fn bits(list: &[u32]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < list.len() {
        mask |= 1 << list[i];
        i += 1;
    }
    mask
}

/// Leaf 1 ECX bits that need no instruction the emulators lack: DTES64 2, DS-CPL 4, EST 7, TM2 8,
/// CNXT-ID 10, SDBG 11, xTPR 14, PCID 17, DCA 18, x2APIC 21, TSC-deadline 24, XSAVE 26 (the
/// fallback), OSXSAVE 27 (a mirror of CR4), RDRAND 30 (KVM-PVM executes it), hypervisor 31. Not
/// kept: MONITOR 3, VMX 5, SMX 6, FMA 12, CX16 13 (KVM-PVM fails on CMPXCHG16B), PDCM 15, MOVBE 22
/// (KVM-PVM raises #UD), AVX 28, F16C 29; SSE3 0, PCLMULQDQ 1, SSSE3 9, SSE4.1 19, SSE4.2 20,
/// POPCNT 23 and AES 25 only as [`FallbackSimd`] says.
const LEAF1_ECX_KEEP: u32 = bits(&[2, 4, 7, 8, 10, 11, 14, 17, 18, 21, 24, 26, 27, 30, 31]);
/// Leaf 7 sub-leaf 0 EBX: FSGSBASE 0, TSC_ADJUST 1, FDP_EXCPTN_ONLY 6, SMEP 7, ERMS 9,
/// deprecated FPU CS/DS 13, RDSEED 18, SMAP 20, CLFLUSHOPT 23; BMI2 8, ADX 19, CLWB 24 and SHA 29
/// only as [`FallbackSimd`] says. (Not: SGX, BMI1 — KVM-PVM runs its TZCNT as BSF —, HLE, AVX2,
/// INVPCID, RTM, MPX, AVX-512*, Intel PT.)
const LEAF7_EBX_KEEP: u32 = bits(&[0, 1, 6, 7, 9, 13, 18, 20, 23]);
/// Leaf 7 sub-leaf 0 EDX: fast short REP MOV 4, MD_CLEAR 10, and the speculation-control bits
/// 26–31 (MSR interfaces, no instructions).
const LEAF7_EDX_KEEP: u32 = bits(&[4, 10, 26, 27, 28, 29, 30, 31]);
/// Leaf 7 sub-leaf 1 EAX: fast zero-length MOVSB 10, fast short STOSB 11, fast short CMPSB 12.
const LEAF7_1_EAX_KEEP: u32 = bits(&[10, 11, 12]);
/// Leaf 0xD sub-leaf 1 EAX: XSAVEOPT 0, XSAVEC 1, XGETBV with ECX = 1 2 (all executed by the
/// fallback); not XSAVES 3 or XFD 4.
const XSAVE_EXTENSIONS_KEEP: u32 = bits(&[0, 1, 2]);
/// XCR0 components the fallback can hold: x87 and SSE.
const XCR0_FALLBACK: u32 = 0b11;
/// Size of the XSAVE area with only x87 and SSE enabled (legacy region and header).
const XSAVE_LEGACY_SIZE: u32 = 576;
/// Leaf 0x8000_0001 ECX: LAHF/SAHF 0, CmpLegacy 1, AltMovCr8 4, MisAlignSse 7 (the fallback
/// honours MXCSR.MM), OSVW 9, TopologyExtensions 22. (Not: SVM, ABM/LZCNT — KVM-PVM runs it as
/// BSR —, SSE4a, 3DNowPrefetch, XOP, FMA4, TBM, MONITORX, …)
const LEAF_EXT_ECX_KEEP: u32 = bits(&[0, 1, 4, 7, 9, 22]);
/// Leaf 0x8000_0001 EDX bits cleared: MMX extensions 22, 3DNow! extensions 30, 3DNow! 31.
const LEAF_EXT_EDX_CLEAR: u32 = bits(&[22, 30, 31]);
/// Leaf 0x8000_0008 EBX: XSAVEERPTR 2, and the speculation-control bits 12, 14–19, 24–26. (Not:
/// CLZERO, INVLPGB, RDPRU, MCOMMIT, WBNOINVD.)
const LEAF_ADDR_EBX_KEEP: u32 = bits(&[2, 12, 14, 15, 16, 17, 18, 19, 24, 25, 26]);

/// Leaves that only describe features [`restrict_to_fallback`] hides: SGX (0x12), Intel PT
/// (0x14), Key Locker (0x19), AMX (0x1D, 0x1E), AVX10 (0x24).
const HIDDEN_LEAVES: [u32; 6] = [0x12, 0x14, 0x19, 0x1D, 0x1E, 0x24];

/// The mask of the bits whose flag is set in `(kept, bit)`.
fn kept_bits(list: &[(bool, u32)]) -> u32 {
    list.iter()
        .filter(|(kept, _)| *kept)
        .fold(0, |mask, (_, bit)| mask | 1 << bit)
}

/// Restricts leaf `function`, sub-leaf `index` (after [`adjust_cpuid_leaf`]) to what a guest can
/// execute when the hypervisor cannot run SIMD instructions natively and uhyve's fallback
/// executes them, with `simd` saying which extensions beyond SSE2 the fallback implements. Only
/// bits are cleared, never set, so the result stays within what the host supports.
pub fn restrict_to_fallback(
    function: u32,
    index: u32,
    regs: &mut CpuidRegisters,
    simd: FallbackSimd,
) {
    match (function, index) {
        (LEAF_FEATURES, _) => {
            let optional = kept_bits(&[
                (simd.sse3, 0),
                (simd.pclmulqdq, 1),
                (simd.ssse3, 9),
                (simd.sse4_1, 19),
                (simd.sse4_2, 20),
                (simd.popcnt, 23),
                (simd.aes, 25),
            ]);
            regs.ecx &= LEAF1_ECX_KEEP | optional;
        }
        (LEAF_EXTENDED_FEATURES, 0) => {
            let optional = kept_bits(&[
                (simd.bmi2, 8),
                (simd.adx, 19),
                (simd.clwb, 24),
                (simd.sha, 29),
            ]);
            regs.ebx &= LEAF7_EBX_KEEP | optional;
            regs.ecx = 0;
            regs.edx &= LEAF7_EDX_KEEP;
        }
        (LEAF_EXTENDED_FEATURES, 1) => {
            regs.eax &= LEAF7_1_EAX_KEEP;
            (regs.ebx, regs.ecx, regs.edx) = (0, 0, 0);
        }
        (LEAF_EXTENDED_FEATURES, _) => *regs = CpuidRegisters::default(),
        (LEAF_XSAVE, 0) => {
            regs.eax &= XCR0_FALLBACK;
            regs.edx = 0;
            (regs.ebx, regs.ecx) = (XSAVE_LEGACY_SIZE, XSAVE_LEGACY_SIZE);
        }
        (LEAF_XSAVE, 1) => {
            regs.eax &= XSAVE_EXTENSIONS_KEEP;
            regs.ebx = XSAVE_LEGACY_SIZE;
            (regs.ecx, regs.edx) = (0, 0);
        }
        (LEAF_XSAVE, _) => *regs = CpuidRegisters::default(),
        (LEAF_EXTENDED_INFO, _) => {
            regs.ecx &= LEAF_EXT_ECX_KEEP;
            regs.edx &= !LEAF_EXT_EDX_CLEAR;
        }
        (LEAF_ADDRESS_SIZES, _) => regs.ebx &= LEAF_ADDR_EBX_KEEP,
        _ if HIDDEN_LEAVES.contains(&function) => *regs = CpuidRegisters::default(),
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

    fn restricted(function: u32, index: u32, regs: CpuidRegisters) -> CpuidRegisters {
        let mut regs = regs;
        restrict_to_fallback(function, index, &mut regs, FallbackSimd::default());
        regs
    }

    /// What this project's KVM-PVM host reports (read by a test guest), restricted.
    #[test]
    fn the_fallback_hides_what_neither_emulator_executes() {
        // Leaf 1: SSE3, PCLMUL, SSSE3, FMA, CX16, SSE4.1/4.2, x2APIC, MOVBE, POPCNT,
        // TSC-deadline, AES, XSAVE, AVX, F16C, RDRAND, hypervisor.
        let leaf1 = restricted(
            1,
            0,
            CpuidRegisters {
                eax: 0xb00f21,
                ebx: 0x20800,
                ecx: 0xf7f8_3203,
                edx: 0x178b_fbff,
            },
        );
        let ecx_bit = |bit: u32| leaf1.ecx & (1 << bit) != 0;
        for (bit, name) in [(0, "SSE3"), (1, "PCLMULQDQ"), (9, "SSSE3"), (12, "FMA")] {
            assert!(!ecx_bit(bit), "{name} must be hidden");
        }
        for (bit, name) in [
            (13, "CX16"),
            (22, "MOVBE"),
            (25, "AES"),
            (28, "AVX"),
            (29, "F16C"),
        ] {
            assert!(!ecx_bit(bit), "{name} must be hidden");
        }
        for (bit, name) in [
            (21, "x2APIC"),
            (24, "TSC-deadline"),
            (26, "XSAVE"),
            (30, "RDRAND"),
        ] {
            assert!(ecx_bit(bit), "{name} must stay");
        }
        assert!(ecx_bit(31), "hypervisor");
        assert_eq!(
            leaf1.edx, 0x178b_fbff,
            "leaf 1 EDX (x87, MMX, FXSR, SSE, SSE2, …) stays"
        );
        assert_eq!(leaf1.eax, 0xb00f21);

        // Leaf 7: FSGSBASE, BMI1, AVX2, SMEP, BMI2, ERMS, INVPCID, AVX-512, RDSEED, ADX, SMAP, …
        let leaf7 = restricted(
            7,
            0,
            CpuidRegisters {
                eax: 1,
                ebx: 0xf1bf_03ab,
                ecx: 0x5f46,
                edx: 0x110,
            },
        );
        assert_eq!(leaf7.eax, 1, "the number of sub-leaves stays");
        assert_eq!(
            leaf7.ebx,
            1 | 1 << 1 | 1 << 7 | 1 << 9 | 1 << 18 | 1 << 20 | 1 << 23,
            "FSGSBASE, TSC_ADJUST, SMEP, ERMS, RDSEED, SMAP, CLFLUSHOPT"
        );
        assert_eq!(leaf7.ecx, 0, "AVX-512 VBMI, GFNI, VAES, RDPID, … hidden");
        assert_eq!(
            leaf7.edx,
            1 << 4,
            "FSRM stays, AVX512_VP2INTERSECT is hidden"
        );
        assert_eq!(
            restricted(
                7,
                1,
                CpuidRegisters {
                    eax: 0x30,
                    ..Default::default()
                }
            )
            .eax,
            0,
            "AVX-VNNI and AVX512_BF16 hidden"
        );

        // Leaf 0xD: only x87 and SSE state; XSAVEOPT, XSAVEC and XGETBV1 but not XSAVES.
        let xsave = restricted(
            0xd,
            0,
            CpuidRegisters {
                eax: 0xe7,
                ebx: 0x980,
                ecx: 0x980,
                edx: 0,
            },
        );
        assert_eq!(
            xsave,
            CpuidRegisters {
                eax: 3,
                ebx: 576,
                ecx: 576,
                edx: 0
            }
        );
        let extensions = restricted(
            0xd,
            1,
            CpuidRegisters {
                eax: 0xf,
                ebx: 0x980,
                ecx: 0x1800,
                edx: 0,
            },
        );
        assert_eq!(
            extensions,
            CpuidRegisters {
                eax: 7,
                ebx: 576,
                ecx: 0,
                edx: 0
            }
        );
        assert_eq!(
            restricted(
                0xd,
                2,
                CpuidRegisters {
                    eax: 0x100,
                    ebx: 0x240,
                    ..Default::default()
                }
            ),
            CpuidRegisters::default(),
            "the AVX component is gone"
        );

        // Extended leaves: LZCNT (executed as BSR by KVM-PVM), SSE4a, 3DNow!, CLZERO… hidden.
        let ext = restricted(
            0x8000_0001,
            0,
            CpuidRegisters {
                eax: 0xb00f21,
                ebx: 0x4000_0000,
                ecx: 0x0040_03f3,
                edx: 0xebd3_fbff,
            },
        );
        assert_eq!(
            ext.ecx & (1 << 5 | 1 << 6 | 1 << 8),
            0,
            "LZCNT, SSE4a, PREFETCHW"
        );
        assert_eq!(ext.ecx & 1, 1, "LAHF/SAHF stays");
        assert_eq!(
            ext.edx & (1 << 30 | 1 << 31 | 1 << 22),
            0,
            "3DNow!, MMX extensions"
        );
        assert_ne!(
            ext.edx & 1 << 27,
            0,
            "RDTSCP stays (the fallback executes it)"
        );
        assert_ne!(ext.edx & 1 << 29, 0, "long mode stays");
        let sizes = restricted(
            0x8000_0008,
            0,
            CpuidRegisters {
                eax: 0x3030,
                ebx: 0x5002_0005,
                ..Default::default()
            },
        );
        assert_eq!(sizes.eax, 0x3030, "address sizes stay");
        assert_eq!(sizes.ebx & 1, 0, "CLZERO hidden");
        assert_eq!(
            restricted(0x12, 0, ONES),
            CpuidRegisters::default(),
            "SGX leaf"
        );
        assert_eq!(
            restricted(0x1d, 0, ONES),
            CpuidRegisters::default(),
            "AMX leaf"
        );
        // Leaves without instruction-set bits stay as they are.
        for function in [0, 0xb, 0x16, 0x4000_0000, 0x8000_0007] {
            assert_eq!(restricted(function, 0, ONES), ONES, "leaf {function:#x}");
        }
    }

    #[test]
    fn the_fallbacks_own_extensions_are_kept_only_when_complete() {
        let all = CpuidRegisters {
            ecx: u32::MAX,
            ..Default::default()
        };
        let mut regs = all;
        restrict_to_fallback(1, 0, &mut regs, FallbackSimd::default());
        assert_eq!(regs.ecx & (1 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 23), 0);
        let mut regs = all;
        let simd = FallbackSimd {
            sse3: true,
            ssse3: true,
            sse4_1: true,
            sse4_2: true,
            popcnt: true,
            aes: true,
            pclmulqdq: true,
            sha: true,
            bmi2: true,
            adx: true,
            clwb: true,
        };
        restrict_to_fallback(1, 0, &mut regs, simd);
        assert_eq!(
            regs.ecx & (1 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 23),
            1 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 23
        );
        assert_eq!(
            regs.ecx & (1 << 1 | 1 << 25),
            1 << 1 | 1 << 25,
            "PCLMULQDQ, AES"
        );
        let mut leaf7 = CpuidRegisters {
            ebx: u32::MAX,
            ..Default::default()
        };
        restrict_to_fallback(7, 0, &mut leaf7, simd);
        assert_eq!(
            leaf7.ebx & (1 << 8 | 1 << 19 | 1 << 24 | 1 << 29),
            1 << 8 | 1 << 19 | 1 << 24 | 1 << 29,
            "BMI2, ADX, CLWB, SHA"
        );
        assert_eq!(leaf7.ebx & (1 << 3 | 1 << 5), 0, "never BMI1 or AVX2");
        // Never set what the host lacks.
        let mut regs = CpuidRegisters::default();
        restrict_to_fallback(1, 0, &mut regs, simd);
        assert_eq!(regs, CpuidRegisters::default());
    }
}
