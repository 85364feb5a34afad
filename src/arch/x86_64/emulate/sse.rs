//! SSE/SSE2 instructions (moves, integer, logic, scalar and packed floating point).

use iced_x86::Instruction;

use super::state::{EmulationError, GuestAccess, X86State};

/// Executes `instruction` if this module implements it.
pub fn execute(
    instruction: &Instruction,
    _state: &mut X86State,
    _memory: &mut dyn GuestAccess,
) -> Result<bool, EmulationError> {
    Ok(supports(instruction))
}

/// Whether [`execute`] implements `instruction`.
pub fn supports(_instruction: &Instruction) -> bool {
    false
}
