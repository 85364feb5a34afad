//! BMI1, BMI2, ADX and LZCNT: general-register bit manipulation, with 16- (TZCNT, LZCNT),
//! 32- and 64-bit operands and a general-register or memory source.
//!
//! Operands follow iced's order: operand 0 is the destination, operands 1 and 2 the sources
//! (for MULX operand 0 receives the high and operand 1 the low half of RDX/EDX × operand 2;
//! for ADCX and ADOX the destination is also the first addend). A 32-bit result zero-extends
//! into the 64-bit register, a 16-bit one keeps the register's upper bits. Memory operands
//! have no alignment requirement.
//!
//! - Flags unaffected (MULX, PDEP, PEXT, RORX, SARX, SHLX, SHRX) and ADCX (only CF) and ADOX
//!   (only OF, which is its carry) are pure Rust: they define every bit they write.
//! - ANDN, BEXTR, BLSI, BLSMSK, BLSR, BZHI, TZCNT and LZCNT leave AF and PF (TZCNT and LZCNT
//!   also OF and SF) *undefined*. Whatever the guest's CPU puts there is what the guest sees, and
//!   the guest's CPU is this host's CPU, so these run on the host (`host`) with the guest's
//!   flags loaded, which makes even the undefined flags exact. They are supported only if the
//!   host has the extension: on a CPU without BMI1 or LZCNT the encodings of TZCNT and LZCNT
//!   mean BSF and BSR, and the VEX forms fault, so executing them anyway would be wrong.

#[cfg(target_arch = "x86_64")]
mod host;
#[cfg(test)]
mod tests;

use iced_x86::{Code, CpuidFeature, Instruction};

use super::super::state::{EmulationError, GuestAccess, X86State};
#[cfg(target_arch = "x86_64")]
use super::ARITHMETIC_FLAGS;
use super::{CF, GprOperand, OF, write_gpr};

/// `fn(first source, second source, operand bits) -> result`; flags unaffected.
type PureOp = fn(u64, u64, u32) -> u64;

/// How a form is executed.
#[derive(Clone, Copy)]
pub(super) enum BitOp {
    /// `operand 0 = f(operand 1, operand 2)`; flags unaffected.
    Pure(PureOp),
    /// `operand 0 += operand 1 + carry` where the carry is RFLAGS bit `carry_flag` (CF for
    /// ADCX, OF for ADOX), which receives the carry out; no other flag changes.
    AddWithCarry { carry_flag: u64 },
    /// MULX: operand 1 = low half, then operand 0 = high half of RDX × operand 2 (so the high
    /// half wins if both name the same register); flags unaffected.
    MultiplyUnsigned,
    /// `(operand 0, arithmetic flags) = f(operand 1, operand 2, flags)` run on the host.
    #[cfg(target_arch = "x86_64")]
    Host(host::HostOp),
}

/// The semantics of `code`, if it is a form of this module executable here.
pub(super) fn lookup(code: Code) -> Option<BitOp> {
    let pure: PureOp = match code {
        Code::VEX_Pdep_r32_r32_rm32 | Code::VEX_Pdep_r64_r64_rm64 => parallel_bits_deposit,
        Code::VEX_Pext_r32_r32_rm32 | Code::VEX_Pext_r64_r64_rm64 => parallel_bits_extract,
        Code::VEX_Rorx_r32_rm32_imm8 | Code::VEX_Rorx_r64_rm64_imm8 => rotate_right,
        Code::VEX_Sarx_r32_rm32_r32 | Code::VEX_Sarx_r64_rm64_r64 => shift_arithmetic_right,
        Code::VEX_Shlx_r32_rm32_r32 | Code::VEX_Shlx_r64_rm64_r64 => shift_left,
        Code::VEX_Shrx_r32_rm32_r32 | Code::VEX_Shrx_r64_rm64_r64 => shift_logical_right,
        Code::VEX_Mulx_r32_r32_rm32 | Code::VEX_Mulx_r64_r64_rm64 => {
            return Some(BitOp::MultiplyUnsigned);
        }
        Code::Adcx_r32_rm32 | Code::Adcx_r64_rm64 => {
            return Some(BitOp::AddWithCarry { carry_flag: CF });
        }
        Code::Adox_r32_rm32 | Code::Adox_r64_rm64 => {
            return Some(BitOp::AddWithCarry { carry_flag: OF });
        }
        #[cfg(target_arch = "x86_64")]
        _ => return host::lookup(code).map(BitOp::Host),
        #[cfg(not(target_arch = "x86_64"))]
        _ => return None,
    };
    Some(BitOp::Pure(pure))
}

/// The extensions with forms that run on the host which the host has (all of BMI1, BMI2 and
/// LZCNT on a CPU with them): only then is every form of them executable.
pub(super) fn host_executable_extensions() -> Vec<CpuidFeature> {
    #[cfg(target_arch = "x86_64")]
    {
        host::available_extensions()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Executes the form `instruction` with semantics `operation`: every source (and a memory
/// operand) is read before any register or flag is written.
pub(super) fn execute(
    instruction: &Instruction,
    operation: BitOp,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<(), EmulationError> {
    let unsupported = || EmulationError::Unsupported(instruction.to_string());
    let GprOperand::Register(destination) = GprOperand::decode(instruction, 0, state)? else {
        return Err(unsupported());
    };
    let size = instruction.op_register(0).size();
    let bits = 8 * size as u32;
    let source = |index: u32, memory: &mut dyn GuestAccess| {
        GprOperand::decode(instruction, index, state)?.read(state, memory, size)
    };
    match operation {
        BitOp::Pure(function) => {
            let result = function(source(1, memory)?, source(2, memory)?, bits);
            write_gpr(state, destination, size, result);
        }
        BitOp::AddWithCarry { carry_flag } => {
            let addend = source(1, memory)?;
            let old = state.gpr(destination) & super::low_bytes_mask(size);
            let carry_in = u128::from(state.rflags & carry_flag != 0);
            let sum = u128::from(old) + u128::from(addend) + carry_in;
            let carry_out = (sum >> bits) & 1 != 0;
            write_gpr(state, destination, size, sum as u64);
            state.rflags = if carry_out {
                state.rflags | carry_flag
            } else {
                state.rflags & !carry_flag
            };
        }
        BitOp::MultiplyUnsigned => {
            let GprOperand::Register(low_destination) = GprOperand::decode(instruction, 1, state)?
            else {
                return Err(unsupported());
            };
            let multiplier = source(2, memory)?;
            let multiplicand = state.gpr(2) & super::low_bytes_mask(size);
            let product = u128::from(multiplicand) * u128::from(multiplier);
            write_gpr(state, low_destination, size, product as u64);
            write_gpr(state, destination, size, (product >> bits) as u64);
        }
        #[cfg(target_arch = "x86_64")]
        BitOp::Host(operation) => {
            let first = source(1, memory)?;
            let second = match instruction.op_count() {
                3.. => source(2, memory)?,
                _ => 0,
            };
            let (result, flags) = host::run(operation, first, second, state.rflags);
            write_gpr(state, destination, size, result);
            state.rflags = (state.rflags & !ARITHMETIC_FLAGS) | (flags & ARITHMETIC_FLAGS);
        }
    }
    Ok(())
}

/// The low `bits` bits set.
fn width_mask(bits: u32) -> u64 {
    u64::MAX >> (64 - bits)
}

/// PDEP: the low bits of `source`, in order, to the positions of the set bits of `mask`.
fn parallel_bits_deposit(source: u64, mask: u64, bits: u32) -> u64 {
    let mut remaining = mask & width_mask(bits);
    let mut result = 0;
    let mut next_source_bit = 0;
    while remaining != 0 {
        let lowest = remaining & remaining.wrapping_neg();
        if (source >> next_source_bit) & 1 != 0 {
            result |= lowest;
        }
        next_source_bit += 1;
        remaining &= remaining - 1;
    }
    result
}

/// PEXT: the bits of `source` at the set bits of `mask`, packed, in order, into the low bits.
fn parallel_bits_extract(source: u64, mask: u64, bits: u32) -> u64 {
    let mut remaining = mask & width_mask(bits);
    let mut result = 0;
    let mut next_result_bit = 0;
    while remaining != 0 {
        let lowest = remaining & remaining.wrapping_neg();
        if source & lowest != 0 {
            result |= 1 << next_result_bit;
        }
        next_result_bit += 1;
        remaining &= remaining - 1;
    }
    result
}

/// RORX: `source` rotated right within `bits` by the imm8 modulo `bits`.
fn rotate_right(source: u64, count: u64, bits: u32) -> u64 {
    let count = count as u32 & (bits - 1);
    if bits == 32 {
        u64::from((source as u32).rotate_right(count))
    } else {
        source.rotate_right(count)
    }
}

/// SARX: `source` shifted right by `count` modulo `bits`, copying the sign bit.
fn shift_arithmetic_right(source: u64, count: u64, bits: u32) -> u64 {
    let count = count as u32 & (bits - 1);
    let sign_extended = ((source << (64 - bits)) as i64) >> (64 - bits);
    (sign_extended >> count) as u64 & width_mask(bits)
}

/// SHLX: `source` shifted left by `count` modulo `bits`.
fn shift_left(source: u64, count: u64, bits: u32) -> u64 {
    (source << (count as u32 & (bits - 1))) & width_mask(bits)
}

/// SHRX: `source` shifted right by `count` modulo `bits`, shifting in zeros.
fn shift_logical_right(source: u64, count: u64, bits: u32) -> u64 {
    (source & width_mask(bits)) >> (count as u32 & (bits - 1))
}
