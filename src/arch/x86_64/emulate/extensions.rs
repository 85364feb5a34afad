//! The instruction-set extensions beyond SSE that a guest learns about whatever uhyve tells it:
//! KVM-PVM passes its host's CPUID leaves 1 and 7 through, so a guest sees AES-NI, PCLMULQDQ,
//! SHA, CLWB and CLFLUSHOPT when the host has them, and its run-time feature detection
//! (`is_x86_feature_detected!`, the `aes`, `sha2`, `ring` crates …) executes them, yet KVM's
//! instruction emulator cannot. The fallback executes them here.
//!
//! [`execute`] runs one decoded instruction of these extensions against an [`X86State`] and
//! guest memory, [`supports`] tells without side effects whether it would, and
//! [`complete_extensions`] names the extensions of which every in-scope form is implemented
//! (`completeness_tests` proves it against iced's list of instruction forms). In scope are the
//! legacy-encoded forms of AES-NI, PCLMULQDQ and SHA (their VEX forms need AVX, whose state the
//! guest is told is off); EVEX and 256-bit VEX forms are not.
//!
//! - `crypto`: AES-NI, PCLMULQDQ and SHA in pure Rust, from the SDM's definitions (FIPS-197
//!   for the AES transformations, FIPS-180 for the SHA functions), with the legacy-SSE
//!   alignment rule for their 16-byte memory operands.
//! - CLWB and CLFLUSHOPT have no architectural effect on the emulated state: guest memory is
//!   ordinary host RAM, coherent with every observer, so there is nothing to write back. Their
//!   memory operand must be accessible as for a one-byte load, which is checked.
//!
//! On any error nothing of the state or of guest memory has been changed (none of these
//! instructions writes memory).

#[cfg(test)]
mod completeness_tests;
mod crypto;
#[cfg(test)]
mod test_support;

use iced_x86::{Code, CpuidFeature, Instruction};

use super::operands::OperandAccess;
use super::state::{EmulationError, GuestAccess, X86State};

/// The extensions of which every in-scope form (see the module documentation) is implemented.
/// What a guest may be told about is this list; on KVM-PVM the guest is told about the host's
/// extensions anyway.
pub fn complete_extensions() -> &'static [CpuidFeature] {
    &[
        CpuidFeature::AES,
        CpuidFeature::PCLMULQDQ,
        CpuidFeature::SHA,
        CpuidFeature::CLWB,
        CpuidFeature::CLFLUSHOPT,
    ]
}

/// Whether [`execute`] implements `instruction` (the same decision as its `Ok(false)`).
pub fn supports(instruction: &Instruction) -> bool {
    supports_code(instruction.code())
}

/// Whether [`execute`] implements the instruction form `code`.
fn supports_code(code: Code) -> bool {
    crypto::lookup(code).is_some() || is_cache_line_write_back(code)
}

/// CLWB and CLFLUSHOPT.
fn is_cache_line_write_back(code: Code) -> bool {
    matches!(code, Code::Clwb_m8 | Code::Clflushopt_m8)
}

/// Executes `instruction` (decoded at RIP) if it is a form of this module: Ok(true) if executed
/// (the caller then advances RIP), Ok(false) if it is not one of this module's, Err for a
/// guest-side problem (inaccessible memory operand, #GP for a misaligned 16-byte operand).
/// On Err nothing has been changed.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<bool, EmulationError> {
    let code = instruction.code();
    if let Some(operation) = crypto::lookup(code) {
        crypto::execute(instruction, operation, state, memory)?;
    } else if is_cache_line_write_back(code) {
        // The line must be accessible as for a load of one byte; nothing else happens.
        let address = OperandAccess::new(instruction).memory_address(state, 0)?;
        memory.read(address, &mut [0u8])?;
    } else {
        return Ok(false);
    }
    Ok(true)
}
