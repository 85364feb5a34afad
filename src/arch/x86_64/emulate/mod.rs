//! User-space fallback for instructions the hypervisor cannot emulate.
//!
//! Some KVM hosts (KVM-PVM here; also any host when an instruction must be emulated, e.g. an SSE
//! move to MMIO) stop with an emulation failure on SSE arithmetic, XSAVE-family and a few system
//! instructions. On such an exit uhyve reads the vCPU state ([`X86State`]), decodes the
//! instruction at RIP with iced-x86, executes it here against that state and guest memory
//! ([`GuestAccess`]), advances RIP and resumes the guest. An instruction this module does not
//! know stops the VM with its mnemonic and bytes: nothing is ever executed approximately.

pub mod sse;
pub mod state;

pub use state::{EmulationError, GuestAccess, X86State};
