//! The vCPU state the user-space instruction emulator works on, and its access to guest memory.
//!
//! [`X86State`] is a plain copy of what the backend reports: general registers, RIP, RFLAGS,
//! segment bases, CR3, XCR0 and the whole XSAVE area in the standard (non-compacted) format
//! (`KVM_GET_XSAVE`). The XMM registers and MXCSR are read and written inside that area, so
//! XSAVE/XRSTOR-style instructions and SSE instructions see one consistent state.

use thiserror::Error;

use super::fault::{PageFault, PagingMode};

/// Size of the XSAVE area uhyve exchanges with the backend (`struct kvm_xsave`).
pub const XSAVE_AREA_SIZE: usize = 4096;
/// Offset of MXCSR in the legacy (FXSAVE) region.
pub const MXCSR_OFFSET: usize = 24;
/// Offset of MXCSR_MASK in the legacy region.
pub const MXCSR_MASK_OFFSET: usize = 28;
/// Offset of XMM0 in the legacy region.
pub const XMM_OFFSET: usize = 160;
/// Size of the legacy (FXSAVE) region.
pub const LEGACY_REGION_SIZE: usize = 512;
/// Offset of the XSAVE header (XSTATE_BV, XCOMP_BV).
pub const XSAVE_HEADER_OFFSET: usize = 512;
/// MXCSR after reset: all exceptions masked, round to nearest.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Why an instruction could not be emulated. Every variant stops the VM with a message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EmulationError {
    /// The instruction is not one the emulator implements.
    #[error("the emulator does not implement `{0}`")]
    Unsupported(String),
    /// The bytes at RIP do not decode to an instruction.
    #[error("the bytes at RIP do not decode to an instruction")]
    Undecodable,
    /// A memory operand is not mapped or lies outside guest RAM.
    #[error("memory operand at {address:#x} ({len} bytes) is not accessible")]
    BadAddress {
        /// Guest-virtual address.
        address: u64,
        /// Access length.
        len: usize,
    },
    /// A memory operand (or the instruction itself) is on a page the guest's CPU would refuse
    /// for this access: the guest must see the page fault (#PF) the CPU would raise.
    #[error("page fault at {:#x} (error code {:#x})", .0.address, .0.error_code)]
    PageFault(PageFault),
    /// The instruction would raise an exception in the guest (e.g. #GP for a misaligned
    /// operand, #UD for an invalid XCR); uhyve does not inject exceptions, so it stops the guest.
    #[error("`{instruction}` would raise {exception} in the guest: {reason}")]
    GuestException {
        /// The instruction text.
        instruction: String,
        /// "#GP", "#UD", "#XM", …
        exception: &'static str,
        /// Why.
        reason: String,
    },
}

impl EmulationError {
    /// The error for `instruction` raising `exception` (e.g. "#GP") in the guest.
    pub fn guest_exception(
        instruction: &iced_x86::Instruction,
        exception: &'static str,
        reason: String,
    ) -> Self {
        Self::GuestException {
            instruction: instruction.to_string(),
            exception,
            reason,
        }
    }
}

/// What of the extended state an instruction works on, so that a backend reads (and writes
/// back) only that: the XSAVE area is the costliest part of the state to move, XCR0 one more
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XsaveScope {
    /// Neither (e.g. `rdtscp`, `rdrand`): the area's contents and XCR0 are not the guest's.
    Nothing,
    /// The XSAVE area but not XCR0 (SSE and the other extension instructions); `xcr0` is not
    /// the guest's. (The area's legacy region alone is no cheaper to move correctly: KVM's
    /// `KVM_GET_FPU` and `KVM_SET_FPU` ignore the XSAVE header, so with XSAVE's init
    /// optimisation they read stale values and write values the guest never sees.)
    Area,
    /// The XSAVE area and XCR0 (the XSAVE family, `xgetbv`, `xsetbv`).
    #[default]
    Full,
}

/// A copy of the vCPU state, as read from and written back to the backend.
#[derive(Clone, PartialEq, Eq)]
pub struct X86State {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8 … R15 (hardware encoding order).
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// FS segment base.
    pub fs_base: u64,
    /// GS segment base.
    pub gs_base: u64,
    /// Page-table root.
    pub cr3: u64,
    /// CR0 (WP decides whether supervisor writes respect read-only pages).
    pub cr0: u64,
    /// CR4 (SMEP, SMAP).
    pub cr4: u64,
    /// EFER (NXE).
    pub efer: u64,
    /// Current privilege level (the DPL of SS).
    pub cpl: u8,
    /// Extended control register 0.
    pub xcr0: u64,
    /// The XSAVE area in standard format: x87 and SSE state (legacy region), header, AVX….
    pub xsave: Box<[u8; XSAVE_AREA_SIZE]>,
    /// Which part of `xsave` holds the guest's state (the rest is zero).
    pub xsave_scope: XsaveScope,
}

impl std::fmt::Debug for X86State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X86State")
            .field("rip", &format_args!("{:#x}", self.rip))
            .field("rflags", &format_args!("{:#x}", self.rflags))
            .field("gprs", &self.gprs)
            .field("xcr0", &format_args!("{:#x}", self.xcr0))
            .field("mxcsr", &format_args!("{:#x}", self.mxcsr()))
            .finish_non_exhaustive()
    }
}

impl Default for X86State {
    fn default() -> Self {
        let mut state = Self {
            gprs: [0; 16],
            rip: 0,
            rflags: 0x2,
            fs_base: 0,
            gs_base: 0,
            cr3: 0,
            // Long mode with paging and write protection, as a kernel runs.
            cr0: CR0_PG | CR0_WP | 0x31,
            cr4: 0x20,
            efer: EFER_NXE | 0x500,
            cpl: 0,
            xcr0: 1,
            xsave: Box::new([0; XSAVE_AREA_SIZE]),
            xsave_scope: XsaveScope::Full,
        };
        state.set_mxcsr(MXCSR_DEFAULT);
        state
    }
}

/// CR0.WP.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.SMEP.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP.
pub const CR4_SMAP: u64 = 1 << 21;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;

impl X86State {
    /// The controls that decide page permissions for this vCPU's accesses.
    pub fn paging_mode(&self) -> PagingMode {
        PagingMode {
            user: self.cpl == 3,
            write_protect: self.cr0 & CR0_WP != 0,
            no_execute: self.efer & EFER_NXE != 0,
            smep: self.cr4 & CR4_SMEP != 0,
            smap: self.cr4 & CR4_SMAP != 0,
            alignment_check: self.rflags & RFLAGS_AC != 0,
        }
    }

    /// XMM register `index` (0 … 15) as a little-endian 128-bit value.
    pub fn xmm(&self, index: usize) -> u128 {
        let at = XMM_OFFSET + 16 * (index & 15);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.xsave[at..at + 16]);
        u128::from_le_bytes(bytes)
    }

    /// Sets XMM register `index` (0 … 15).
    pub fn set_xmm(&mut self, index: usize, value: u128) {
        let at = XMM_OFFSET + 16 * (index & 15);
        self.xsave[at..at + 16].copy_from_slice(&value.to_le_bytes());
    }

    /// The MXCSR register.
    pub fn mxcsr(&self) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.xsave[MXCSR_OFFSET..MXCSR_OFFSET + 4]);
        u32::from_le_bytes(bytes)
    }

    /// Sets the MXCSR register.
    pub fn set_mxcsr(&mut self, value: u32) {
        self.xsave[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the XSAVE header's XSTATE_BV bits of the x87 (0) and SSE (1) components that differ
    /// from `before`. A component whose bit is clear is in its initial state, and loading the
    /// area (XRSTOR, `KVM_SET_XSAVE`) would discard its bytes: state an instruction modified is in
    /// use by definition.
    pub fn mark_modified_components_in_use(&mut self, before: &X86State) {
        let x87 = [0..MXCSR_OFFSET, 32..XMM_OFFSET];
        let sse = [MXCSR_OFFSET..MXCSR_OFFSET + 4, XMM_OFFSET..XMM_OFFSET + 256];
        let changed = |ranges: &[std::ops::Range<usize>]| {
            ranges
                .iter()
                .any(|range| self.xsave[range.clone()] != before.xsave[range.clone()])
        };
        let mut in_use = 0u8;
        if changed(&x87) {
            in_use |= 1;
        }
        if changed(&sse) {
            in_use |= 2;
        }
        self.xsave[XSAVE_HEADER_OFFSET] |= in_use;
    }

    /// General register by hardware number (0 = RAX … 15 = R15).
    pub fn gpr(&self, number: usize) -> u64 {
        self.gprs[number & 15]
    }

    /// Sets a general register by hardware number.
    pub fn set_gpr(&mut self, number: usize, value: u64) {
        self.gprs[number & 15] = value;
    }
}

/// The emulator's access to guest memory by guest-virtual address (translated through the
/// guest's page tables, page by page, bounds-checked against guest RAM).
pub trait GuestAccess {
    /// Reads `buf.len()` bytes at guest-virtual `address`.
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError>;
    /// Writes `data` at guest-virtual `address`.
    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError>;
    /// Checks, without writing, that `len` bytes at `address` could be written (the error a
    /// `write` there would give).
    fn probe_write(&mut self, address: u64, len: usize) -> Result<(), EmulationError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_components_are_marked_in_use() {
        let before = X86State::default();
        let mut after = before.clone();
        after.mark_modified_components_in_use(&before);
        assert_eq!(after.xsave[XSAVE_HEADER_OFFSET], 0);
        after.set_xmm(15, 1);
        after.mark_modified_components_in_use(&before);
        assert_eq!(after.xsave[XSAVE_HEADER_OFFSET], 0b10);
        let mut after = before.clone();
        after.set_mxcsr(0x1fc0);
        after.xsave[32] = 1; // ST0
        after.mark_modified_components_in_use(&before);
        assert_eq!(after.xsave[XSAVE_HEADER_OFFSET], 0b11);
    }

    #[test]
    fn xmm_and_mxcsr_live_in_the_xsave_area() {
        let mut state = X86State::default();
        assert_eq!(state.mxcsr(), MXCSR_DEFAULT);
        state.set_xmm(3, 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(state.xmm(3), 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(state.xsave[XMM_OFFSET + 48], 0xff);
        assert_eq!(state.xmm(2), 0);
        state.set_mxcsr(0x9fc0);
        assert_eq!(&state.xsave[24..28], &0x9fc0u32.to_le_bytes());
    }
}
