//! What an x86_64 backend offers beyond [`super::VirtualCpu`]: the vCPU state the user-space
//! instruction emulator reads and writes back, and injecting the page faults it finds.

use crate::arch::x86_64::emulate::{PageFault, X86State, XsaveLayout, XsaveScope};

use super::{VcpuError, VirtualCpu};

/// An x86_64 vCPU whose state the user-space instruction emulator can work on.
pub trait X86Vcpu: VirtualCpu {
    /// Reads the state the emulator works on, the whole XSAVE area included.
    fn emulation_state(&mut self) -> Result<X86State, VcpuError>;
    /// Reads the state with only the part of the XSAVE area that `scope` names (where the
    /// backend can read less, which is cheaper); `X86State::xsave_scope` says what was read.
    fn emulation_state_for(&mut self, scope: XsaveScope) -> Result<X86State, VcpuError> {
        let _ = scope;
        self.emulation_state()
    }
    /// Writes back what changed between `before` and `after` (of the XSAVE area, only the part
    /// `before` was read with).
    fn set_emulation_state(&mut self, before: &X86State, after: &X86State)
    -> Result<(), VcpuError>;
    /// The fallback executed `xsetbv` for this vCPU, setting XCR0 to `xcr0`: a hypervisor that
    /// leaves `xsetbv` to uhyve executes none itself, so from now on XCR0 changes only through
    /// the fallback and a backend may keep it instead of reading it each time. (`xgetbv` is no
    /// such sign: this project's KVM leaves `xgetbv` to uhyve but executes `xsetbv` itself.)
    fn xcr0_kept_by_fallback(&mut self, xcr0: u64) {
        let _ = xcr0;
    }
    /// The guest's TSC and `IA32_TSC_AUX`.
    fn guest_tsc(&mut self) -> Result<(u64, u32), VcpuError>;
    /// The XSAVE layout of this vCPU.
    fn xsave_layout(&self) -> &XsaveLayout;
    /// Makes the guest take `fault` (#PF, vector 14, CR2 = the address) before it executes
    /// anything else; the rest of the state stays as it is.
    fn inject_page_fault(&mut self, fault: PageFault) -> Result<(), VcpuError>;
    /// The selectors of CS, SS, DS, ES, FS and GS, for a debugger.
    fn segment_selectors(&mut self) -> Result<[u16; 6], VcpuError> {
        Ok([0; 6])
    }
}
