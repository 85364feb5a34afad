//! The x86 instruction emulator of the user-space fallback for instructions the hypervisor cannot
//! execute.
//!
//! Some KVM hosts (KVM-PVM here; also any host when an instruction must be emulated, e.g. an SSE
//! move to MMIO) stop with an emulation failure on SSE arithmetic, XSAVE-family and a few system
//! instructions. [`emulate`] decodes the instruction with iced-x86 and executes it against a vCPU
//! state ([`X86State`]), guest memory as the guest's page tables show it ([`GuestAccess`]) and
//! the few host services it needs ([`SystemServices`]); an instruction it does not know is an
//! error naming it: nothing is ever executed approximately. It depends on nothing else in the
//! crate: `crate::exits::emulation` connects it to a vCPU and to guest memory.

pub mod extensions;
pub mod fault;
pub mod integer;
#[cfg(all(any(test, feature = "fuzz-native"), target_arch = "x86_64"))]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod native_harness;
pub mod operands;
pub mod services;
pub mod sse;
pub mod state;
pub mod system;
#[cfg(test)]
mod testing;
pub mod xsave;

use iced_x86::{Decoder, DecoderOptions, Instruction};

pub use self::fault::{PageFault, PagingMode};
pub use self::state::{EmulationError, GuestAccess, X86State, XsaveScope};
pub use self::system::SystemServices;
pub use self::xsave::XsaveLayout;

/// Longest x86 instruction.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// Whether the emulator implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    system::supports(instruction) || sse::supports(instruction) || extensions::supports(instruction)
}

/// What of the extended state executing `instruction` needs (see [`XsaveScope`]): nothing for
/// `rdtscp`, `rdrand` and `rdseed`, which work on general registers only; the XSAVE area for
/// the SSE and extension instructions; the area and XCR0 for everything else (the XSAVE family,
/// `xgetbv`, `xsetbv`).
pub fn xsave_scope(instruction: &Instruction) -> XsaveScope {
    use iced_x86::Mnemonic;
    match instruction.mnemonic() {
        Mnemonic::Rdtscp | Mnemonic::Rdrand | Mnemonic::Rdseed => XsaveScope::Nothing,
        _ if sse::supports(instruction) || extensions::supports(instruction) => XsaveScope::Area,
        _ => XsaveScope::Full,
    }
}

/// Decodes the instruction at `state.rip` from `bytes` and executes it against `state` and
/// `memory`. On success RIP points past it; on failure `state` is unchanged.
pub fn emulate(
    bytes: &[u8],
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<Instruction, EmulationError> {
    let instruction = Decoder::with_ip(64, bytes, state.rip, DecoderOptions::NONE).decode();
    if instruction.is_invalid() {
        return Err(EmulationError::Undecodable);
    }
    let mut next = state.clone();
    if sse::execute(&instruction, &mut next, memory)? {
        // The XSAVE family sets XSTATE_BV itself; other instructions put what they modify in use.
        next.mark_modified_components_in_use(state);
    } else if extensions::execute(&instruction, &mut next, memory)? {
        next.mark_modified_components_in_use(state);
    } else if !system::execute(&instruction, &mut next, memory, services)? {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    }
    next.rip = instruction.next_ip();
    *state = next;
    Ok(instruction)
}
