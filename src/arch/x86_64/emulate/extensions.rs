//! The instruction-set extensions beyond SSE that a guest learns about whatever uhyve tells it:
//! KVM-PVM passes its host's CPUID leaves 1 and 7 through, so a guest sees AES-NI, PCLMULQDQ,
//! SHA, BMI1, BMI2, ADX, LZCNT, CLWB and CLFLUSHOPT when the host has them, and its
//! run-time feature detection (`is_x86_feature_detected!`, the `aes`, `sha2`, `ring` crates …)
//! executes them, yet KVM's instruction emulator cannot. The fallback executes them here.
//!
//! [`execute`] runs one decoded instruction of these extensions against an [`X86State`] and
//! guest memory, [`supports`] tells without side effects whether it would, and
//! [`complete_extensions`] names the extensions of which every in-scope form is implemented
//! (`completeness_tests` proves it against iced's list of instruction forms). In scope are the
//! legacy-encoded forms of AES-NI, PCLMULQDQ and SHA (their VEX forms need AVX, whose state the
//! guest is told is off) and the legacy- and VEX-encoded general-register forms of BMI1, BMI2,
//! ADX and LZCNT; EVEX and 256-bit VEX forms are not.
//!
//! - `crypto`: AES-NI, PCLMULQDQ and SHA in pure Rust, from the SDM's definitions (FIPS-197
//!   for the AES transformations, FIPS-180 for the SHA functions), with the legacy-SSE
//!   alignment rule for their 16-byte memory operands.
//! - `bitmanip`: BMI1, BMI2, ADX and LZCNT. What leaves some flags *undefined* (ANDN, BEXTR,
//!   BLSI, BLSMSK, BLSR, BZHI, TZCNT, LZCNT) runs on the host CPU, which is the guest's CPU, so
//!   even the undefined flags are what the guest's hardware produces; such a form is supported
//!   only when the host has its extension. The rest is pure Rust.
//! - CLWB and CLFLUSHOPT have no architectural effect on the emulated state: guest memory is
//!   ordinary host RAM, coherent with every observer, so there is nothing to write back. Their
//!   memory operand must be accessible as for a one-byte load, which is checked.
//!
//! On any error nothing of the state or of guest memory has been changed (none of these
//! instructions writes memory).

mod bitmanip;
#[cfg(test)]
mod completeness_tests;
mod crypto;
#[cfg(all(test, target_arch = "x86_64"))]
mod native_tests;
#[cfg(test)]
mod test_support;

use iced_x86::{Code, CpuidFeature, Instruction, OpKind};

use super::operands::{OperandAccess, gpr_number};
use super::state::{EmulationError, GuestAccess, X86State};

/// The extensions of which every in-scope form (see the module documentation) is implemented
/// and executable on this host: the pure-Rust ones always, BMI1, BMI2 and LZCNT only if the
/// host CPU has them (some of their forms run on it). What a guest may be told about is this
/// list; on KVM-PVM the guest is told about the host's extensions anyway.
pub fn complete_extensions() -> &'static [CpuidFeature] {
    static COMPLETE: std::sync::OnceLock<Vec<CpuidFeature>> = std::sync::OnceLock::new();
    COMPLETE.get_or_init(|| {
        let mut complete = vec![
            CpuidFeature::AES,
            CpuidFeature::PCLMULQDQ,
            CpuidFeature::SHA,
            CpuidFeature::ADX,
            CpuidFeature::CLWB,
            CpuidFeature::CLFLUSHOPT,
        ];
        complete.extend(bitmanip::host_executable_extensions());
        complete
    })
}

/// Whether [`execute`] implements `instruction` (the same decision as its `Ok(false)`).
pub fn supports(instruction: &Instruction) -> bool {
    supports_code(instruction.code())
}

/// Whether [`execute`] implements the instruction form `code`.
fn supports_code(code: Code) -> bool {
    crypto::lookup(code).is_some()
        || bitmanip::lookup(code).is_some()
        || is_cache_line_write_back(code)
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
    } else if let Some(operation) = bitmanip::lookup(code) {
        bitmanip::execute(instruction, operation, state, memory)?;
    } else if is_cache_line_write_back(code) {
        // The line must be accessible as for a load of one byte; nothing else happens.
        let address = OperandAccess::new(instruction).memory_address(state, 0)?;
        memory.read(address, &mut [0u8])?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// A general-register or memory operand of a general-register instruction, or an imm8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GprOperand {
    /// General register by hardware number; the instruction's operand size applies.
    Register(usize),
    /// Guest-virtual address.
    Memory(u64),
    /// An imm8.
    Immediate(u8),
}

impl GprOperand {
    /// Decodes operand `index` of `instruction`.
    fn decode(
        instruction: &Instruction,
        index: u32,
        state: &X86State,
    ) -> Result<Self, EmulationError> {
        let unsupported =
            || EmulationError::Unsupported(format!("{instruction} (operand {index})"));
        match instruction.op_kind(index) {
            OpKind::Register => gpr_number(instruction.op_register(index))
                .map(Self::Register)
                .ok_or_else(unsupported),
            OpKind::Memory => OperandAccess::new(instruction)
                .memory_address(state, index)
                .map(Self::Memory),
            OpKind::Immediate8 => Ok(Self::Immediate(instruction.immediate8())),
            _ => Err(unsupported()),
        }
    }

    /// The operand's value: the low `size` bytes (2, 4 or 8) of a register or of memory,
    /// zero-extended.
    fn read(
        self,
        state: &X86State,
        memory: &mut dyn GuestAccess,
        size: usize,
    ) -> Result<u64, EmulationError> {
        Ok(match self {
            Self::Register(number) => state.gpr(number) & low_bytes_mask(size),
            Self::Memory(address) => {
                let mut bytes = [0u8; 8];
                let access = bytes
                    .get_mut(..size)
                    .ok_or(EmulationError::BadAddress { address, len: size })?;
                memory.read(address, access)?;
                u64::from_le_bytes(bytes)
            }
            Self::Immediate(value) => u64::from(value),
        })
    }
}

/// All-ones in the low `size` bytes (1, 2, 4 or 8).
fn low_bytes_mask(size: usize) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Writes the low `size` bytes of `value` to general register `number`: a 32-bit write
/// zero-extends into the 64-bit register, a 16-bit write keeps the other bits.
fn write_gpr(state: &mut X86State, number: usize, size: usize, value: u64) {
    let merged = match size {
        4 => value & 0xffff_ffff,
        8 => value,
        _ => {
            let mask = low_bytes_mask(size);
            (state.gpr(number) & !mask) | (value & mask)
        }
    };
    state.set_gpr(number, merged);
}

/// The arithmetic flags in RFLAGS (OF, SF, ZF, AF, PF, CF); only the host-executed forms
/// (x86_64 hosts) write more than one of them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ARITHMETIC_FLAGS: u64 = 0x8d5;
/// RFLAGS carry flag.
const CF: u64 = 1 << 0;
/// RFLAGS overflow flag.
const OF: u64 = 1 << 11;
