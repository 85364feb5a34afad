//! What the emulator needs from its host beyond guest memory ([`SystemServices`]: the TSC, the
//! virtual CPU's XSAVE layout, randomness), the XSAVE layout facts those services describe, and
//! helpers shared by the system and XSAVE-family instructions.

use super::state::{EmulationError, X86State};

/// Host services some system instructions need.
pub trait SystemServices {
    /// The guest's time-stamp counter and `IA32_TSC_AUX`, for RDTSCP.
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError>;
    /// The XCR0 bits the virtual CPU supports (CPUID leaf 0xD).
    fn supported_xcr0(&self) -> u64;
    /// State component `index` (≥ 2): its standard-format offset, size and compacted-format
    /// alignment, or `None` if the component does not exist.
    fn xsave_component(&self, index: u32) -> Option<XsaveComponent>;
    /// The optional XSAVE-family instructions the virtual CPU reports (XSAVEOPT, XSAVEC,
    /// XGETBV with ECX = 1).
    fn xsave_extensions(&self) -> XsaveExtensions;
    /// XCR0 bits XGETBV reports as clear even when they are set (`XsaveLayout::withheld_xcr0`).
    fn withheld_xcr0(&self) -> u64;
    /// Fills `buf` with random bytes, for RDRAND/RDSEED.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError>;
}

/// One XSAVE state component (2 … 62) as CPUID.(EAX=0xD,ECX=i) describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XsaveComponent {
    /// Offset in the standard format (EBX).
    pub offset: usize,
    /// Size in bytes (EAX).
    pub size: usize,
    /// Whether the compacted format starts it on a 64-byte boundary (ECX bit 1).
    pub aligned: bool,
}

/// The optional XSAVE-family instructions, CPUID.(EAX=0xD,ECX=1):EAX.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XsaveExtensions {
    /// XSAVEOPT exists (bit 0).
    pub xsaveopt: bool,
    /// XSAVEC and the compacted form of XRSTOR exist (bit 1).
    pub compaction: bool,
    /// XGETBV with ECX = 1 returns `XCR0 & XINUSE` (bit 2).
    pub xgetbv_in_use: bool,
}

impl XsaveExtensions {
    /// Decodes CPUID.(EAX=0xD,ECX=1):EAX.
    pub fn from_cpuid_eax(eax: u32) -> Self {
        Self {
            xsaveopt: eax & 1 != 0,
            compaction: eax & 2 != 0,
            xgetbv_in_use: eax & 4 != 0,
        }
    }
}

/// EDX:EAX, the 64-bit operand of XSETBV and the instruction mask of the XSAVE family.
pub(super) fn edx_eax(state: &X86State) -> u64 {
    (state.gpr(2) << 32) | (state.gpr(0) & 0xffff_ffff)
}
