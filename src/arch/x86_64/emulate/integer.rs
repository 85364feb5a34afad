//! The integer instructions a run of emulated instructions goes on through (see
//! `crate::exits::emulation`): the loop control and address arithmetic that sit between SSE
//! instructions in real code. `mov`, `lea`, `add`, `sub`, `cmp`, `and`, `or`, `xor`, `test`,
//! `inc` and `dec` on general registers and memory, of 8, 16, 32 and 64 bits, and near `jmp` and
//! `jcc` with a direct target. The status flags (CF, PF, AF, ZF, SF, OF) are computed as the CPU
//! computes them (AF is cleared by the logical instructions, for which the manuals leave it
//! undefined); everything else (prefixes other than a segment override, other registers, other
//! operand kinds) is not this module's, and a run ends before it.

use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::operands::{OperandAccess, gpr_number, high_byte_register};
use super::state::{EmulationError, GuestAccess, X86State};

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
/// The status flags the arithmetic instructions set.
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// What an instruction of this module does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Mov,
    Lea,
    Add,
    Sub,
    Cmp,
    And,
    Or,
    Xor,
    Test,
    Inc,
    Dec,
    Jump,
}

/// The operation of `instruction`, if it is one of this module's with operands it handles.
fn operation(instruction: &Instruction) -> Option<Operation> {
    use Operation as O;
    if instruction.has_lock_prefix()
        || instruction.has_rep_prefix()
        || instruction.has_repne_prefix()
    {
        return None;
    }
    let operation = match instruction.mnemonic() {
        Mnemonic::Mov => O::Mov,
        Mnemonic::Lea => O::Lea,
        Mnemonic::Add => O::Add,
        Mnemonic::Sub => O::Sub,
        Mnemonic::Cmp => O::Cmp,
        Mnemonic::And => O::And,
        Mnemonic::Or => O::Or,
        Mnemonic::Xor => O::Xor,
        Mnemonic::Test => O::Test,
        Mnemonic::Inc => O::Inc,
        Mnemonic::Dec => O::Dec,
        Mnemonic::Jmp => O::Jump,
        _ if instruction.is_jcc_short_or_near() => O::Jump,
        _ => return None,
    };
    if operation == O::Jump {
        return (instruction.op_count() == 1 && instruction.op0_kind() == OpKind::NearBranch64)
            .then_some(O::Jump);
    }
    let operands_ok = (0..instruction.op_count()).all(|n| match instruction.op_kind(n) {
        OpKind::Register => gpr_number(instruction.op_register(n)).is_some(),
        OpKind::Memory => instruction.memory_size().size() <= 8,
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => true,
        _ => false,
    });
    // `lea` with a segment override would add no segment base; iced's address would.
    let lea_ok = operation != O::Lea || instruction.segment_prefix() == Register::None;
    let size_ok = matches!(operand_size(instruction), 1 | 2 | 4 | 8);
    (operands_ok && lea_ok && size_ok).then_some(operation)
}

/// Whether this module executes `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    operation(instruction).is_some()
}

/// Whether `instruction` reads or writes memory (`lea` only computes an address). A run of
/// emulated instructions leaves those to the guest: the emulator moves memory bytewise, so a
/// store or load that the CPU makes atomically (a plain aligned `mov`, which is how relaxed
/// atomics and lock releases compile) could be seen torn by another vCPU.
pub fn touches_memory(instruction: &Instruction) -> bool {
    instruction.mnemonic() != Mnemonic::Lea
        && (0..instruction.op_count()).any(|n| instruction.op_kind(n) == OpKind::Memory)
}

/// The size in bytes of operand 0 (the destination, or the first source of `cmp`/`test`).
fn operand_size(instruction: &Instruction) -> usize {
    match instruction.op0_kind() {
        OpKind::Register => instruction.op0_register().size(),
        _ => instruction.memory_size().size(),
    }
}

/// All ones in the low `size` bytes.
fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// The value of operand `n`, `size` bytes wide.
fn read(
    instruction: &Instruction,
    n: u32,
    size: usize,
    state: &X86State,
    memory: &mut dyn GuestAccess,
) -> Result<u64, EmulationError> {
    Ok(match instruction.op_kind(n) {
        OpKind::Register => {
            let register = instruction.op_register(n);
            let unsupported = || EmulationError::Unsupported(instruction.to_string());
            match high_byte_register(register) {
                Some(number) => (state.gpr(number) >> 8) & 0xff,
                None => state.gpr(gpr_number(register).ok_or_else(unsupported)?) & mask(size),
            }
        }
        OpKind::Memory => {
            let address = OperandAccess::new(instruction).memory_address(state, n)?;
            let mut bytes = [0u8; 8];
            memory.read(address, &mut bytes[..size])?;
            u64::from_le_bytes(bytes)
        }
        _ => instruction.immediate(n) & mask(size),
    })
}

/// Writes `value` (`size` bytes) to operand 0: a 32-bit register write clears bits 32–63, an
/// 8- or 16-bit one keeps the other bits.
fn write(
    instruction: &Instruction,
    size: usize,
    value: u64,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<(), EmulationError> {
    if instruction.op0_kind() == OpKind::Memory {
        let address = OperandAccess::new(instruction).memory_address(state, 0)?;
        return memory.write(address, &value.to_le_bytes()[..size]);
    }
    let register = instruction.op0_register();
    if let Some(number) = high_byte_register(register) {
        let old = state.gpr(number);
        state.set_gpr(number, (old & !0xff00) | ((value & 0xff) << 8));
        return Ok(());
    }
    let number =
        gpr_number(register).ok_or_else(|| EmulationError::Unsupported(instruction.to_string()))?;
    let old = state.gpr(number);
    let new = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => (old & !mask(size)) | (value & mask(size)),
    };
    state.set_gpr(number, new);
    Ok(())
}

/// ZF, SF and PF of `result` (`size` bytes).
fn result_flags(result: u64, size: usize) -> u64 {
    let sign = 1u64 << (8 * size - 1);
    let mut flags = 0;
    if result & mask(size) == 0 {
        flags |= ZF;
    }
    if result & sign != 0 {
        flags |= SF;
    }
    if (result as u8).count_ones().is_multiple_of(2) {
        flags |= PF;
    }
    flags
}

/// `a + b` (or `a − b` when `subtract`) of `size` bytes, and the status flags it sets.
fn add_or_sub(a: u64, b: u64, size: usize, subtract: bool) -> (u64, u64) {
    let m = mask(size);
    let sign_shift = 8 * size - 1;
    let (a, b) = (a & m, b & m);
    let (result, carry) = if subtract {
        (a.wrapping_sub(b) & m, a < b)
    } else {
        let wide = u128::from(a) + u128::from(b);
        ((wide as u64) & m, wide > u128::from(m))
    };
    let overflow = if subtract {
        ((a ^ b) & (a ^ result)) >> sign_shift & 1 == 1
    } else {
        ((a ^ result) & (b ^ result)) >> sign_shift & 1 == 1
    };
    let mut flags = result_flags(result, size);
    if carry {
        flags |= CF;
    }
    if overflow {
        flags |= OF;
    }
    if (a ^ b ^ result) & 0x10 != 0 {
        flags |= AF;
    }
    (result, flags)
}

/// Whether condition `condition` holds for `rflags`.
fn condition_holds(condition: ConditionCode, rflags: u64) -> bool {
    let set = |flag: u64| rflags & flag != 0;
    match condition {
        ConditionCode::o => set(OF),
        ConditionCode::no => !set(OF),
        ConditionCode::b => set(CF),
        ConditionCode::ae => !set(CF),
        ConditionCode::e => set(ZF),
        ConditionCode::ne => !set(ZF),
        ConditionCode::be => set(CF) || set(ZF),
        ConditionCode::a => !set(CF) && !set(ZF),
        ConditionCode::s => set(SF),
        ConditionCode::ns => !set(SF),
        ConditionCode::p => set(PF),
        ConditionCode::np => !set(PF),
        ConditionCode::l => set(SF) != set(OF),
        ConditionCode::ge => set(SF) == set(OF),
        ConditionCode::le => set(ZF) || set(SF) != set(OF),
        ConditionCode::g => !set(ZF) && set(SF) == set(OF),
        ConditionCode::None => true,
    }
}

/// Executes `instruction` if it is one of this module's: `Ok(true)` with RIP set (past it, or to
/// the jump target), `Ok(false)` if it is not; on `Err` the state is unchanged and memory is
/// written only if the error came from that very write.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<bool, EmulationError> {
    use Operation as O;
    let Some(operation) = operation(instruction) else {
        return Ok(false);
    };
    if operation == O::Jump {
        let taken = condition_holds(instruction.condition_code(), state.rflags);
        state.rip = if taken {
            instruction.near_branch_target()
        } else {
            instruction.next_ip()
        };
        return Ok(true);
    }
    let size = operand_size(instruction);
    let mut next = state.clone();
    let (result, flags, writes) = match operation {
        O::Mov => (read(instruction, 1, size, state, memory)?, None, true),
        O::Lea => {
            let address = OperandAccess::new(instruction).memory_address(state, 1)?;
            (address & mask(size), None, true)
        }
        O::Inc | O::Dec => {
            let value = read(instruction, 0, size, state, memory)?;
            let (result, flags) = add_or_sub(value, 1, size, operation == O::Dec);
            // CF is left as it was.
            (result, Some((flags & !CF) | (state.rflags & CF)), true)
        }
        O::Add | O::Sub | O::Cmp => {
            let a = read(instruction, 0, size, state, memory)?;
            let b = read(instruction, 1, size, state, memory)?;
            let (result, flags) = add_or_sub(a, b, size, operation != O::Add);
            (result, Some(flags), operation != O::Cmp)
        }
        O::And | O::Or | O::Xor | O::Test => {
            let a = read(instruction, 0, size, state, memory)?;
            let b = read(instruction, 1, size, state, memory)?;
            let result = match operation {
                O::Or => a | b,
                O::Xor => a ^ b,
                _ => a & b,
            } & mask(size);
            (
                result,
                Some(result_flags(result, size)),
                operation != O::Test,
            )
        }
        O::Jump => unreachable!("handled above"),
    };
    if let Some(flags) = flags {
        next.rflags = (state.rflags & !STATUS) | flags;
    }
    if writes {
        write(instruction, size, result, &mut next, memory)?;
    }
    next.rip = instruction.next_ip();
    *state = next;
    Ok(true)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
