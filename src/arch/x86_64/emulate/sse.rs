//! SSE/SSE2 instructions (moves, integer, logic, scalar and packed floating point).
//!
//! [`execute`] runs one decoded legacy-encoded (non-VEX) SSE/SSE2 instruction against an
//! [`X86State`] and guest memory; [`supports`] tells, without side effects, whether it would.
//! Instruction forms are looked up by iced's [`Code`] in three tables: pure integer, logic,
//! shuffle and move semantics (`int`), floating point executed on the host CPU under the
//! guest's MXCSR (`float`), and a few special forms (movss/movsd, MXCSR load/store, prefetch and
//! fences). Operands are decoded uniformly: operand 0 is the destination, operand 1 the source,
//! an imm8 the control byte. Legacy-SSE rules are enforced: a 16-byte memory operand must be
//! 16-byte aligned (`#GP` otherwise) except for the explicitly unaligned moves; a SIMD
//! floating-point exception the guest left unmasked stops with `#XM`. On any error nothing of
//! the state or of guest memory has been changed.
//!
//! Floating point needs an x86_64 host (the only host that runs x86_64 guests); built for
//! another architecture, the module supports only the non-floating-point forms.
//!
//! Known limit: exception flags are computed with all exceptions masked. For underflow this is
//! what the guest sees unless it unmasked UM: an exact tiny result then traps on hardware (#XM)
//! while here it completes without the UE flag.

mod float;
mod int;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

use iced_x86::{Code, Instruction, OpKind};

use super::operands::address_register;
use super::state::{EmulationError, GuestAccess, MXCSR_MASK_OFFSET, X86State};
use float::{EXCEPTION_FLAGS, HostContext, HostOp, Output};
use int::{LOW32, LOW64, PureOp};

/// How an instruction form is executed.
#[derive(Clone, Copy)]
enum Semantics {
    /// `dst = f(dst, src, imm)` in pure Rust; no floating-point exceptions.
    Pure(PureOp),
    /// movss/movsd with the given low-lane mask: register to register merges into the low lane,
    /// a load from memory zero-extends, a store writes the low lane.
    MoveScalar(u128),
    /// Floating point, executed on the host.
    Host(HostOp),
    /// `ldmxcsr m32`.
    LoadMxcsr,
    /// `stmxcsr m32`.
    StoreMxcsr,
    /// No effect on the emulated state (prefetch hints, fences: the vCPU is stopped anyway).
    NoEffect,
}

/// Defines `pure_op`: the integer/logic/shuffle/move table, one line per semantic function.
macro_rules! pure_table {
    ($($function:ident => $($code:ident)|+;)*) => {
        /// The pure-Rust semantics of `code`, if it is one of this table.
        fn pure_op(code: Code) -> Option<PureOp> {
            match code {
                $($(Code::$code)|+ => Some(int::$function),)*
                _ => None,
            }
        }
    };
}

pure_table! {
    copy => Movaps_xmm_xmmm128 | Movaps_xmmm128_xmm | Movups_xmm_xmmm128 | Movups_xmmm128_xmm
        | Movapd_xmm_xmmm128 | Movapd_xmmm128_xmm | Movupd_xmm_xmmm128 | Movupd_xmmm128_xmm
        | Movdqa_xmm_xmmm128 | Movdqa_xmmm128_xmm | Movdqu_xmm_xmmm128 | Movdqu_xmmm128_xmm
        | Lddqu_xmm_m128 | Movntdq_m128_xmm | Movntps_m128_xmm | Movntpd_m128_xmm
        | Movnti_m32_r32 | Movnti_m64_r64 | Movd_xmm_rm32 | Movd_rm32_xmm | Movq_xmm_rm64
        | Movq_rm64_xmm | Movlps_m64_xmm | Movlpd_m64_xmm;
    copy_low64 => Movq_xmm_xmmm64 | Movq_xmmm64_xmm;
    load_high64 => Movhps_xmm_m64 | Movhpd_xmm_m64;
    load_low64 => Movlps_xmm_m64 | Movlpd_xmm_m64;
    high64 => Movhps_m64_xmm | Movhpd_m64_xmm;
    move_high_to_low => Movhlps_xmm_xmm;
    move_low_to_high => Movlhps_xmm_xmm;
    movmskps => Movmskps_r32_xmm | Movmskps_r64_xmm;
    movmskpd => Movmskpd_r32_xmm | Movmskpd_r64_xmm;
    pmovmskb => Pmovmskb_r32_xmm | Pmovmskb_r64_xmm;
    pextrw => Pextrw_r32_xmm_imm8 | Pextrw_r64_xmm_imm8;
    pinsrw => Pinsrw_xmm_r32m16_imm8 | Pinsrw_xmm_r64m16_imm8;
    and => Pand_xmm_xmmm128 | Andps_xmm_xmmm128 | Andpd_xmm_xmmm128;
    and_not => Pandn_xmm_xmmm128 | Andnps_xmm_xmmm128 | Andnpd_xmm_xmmm128;
    or => Por_xmm_xmmm128 | Orps_xmm_xmmm128 | Orpd_xmm_xmmm128;
    xor => Pxor_xmm_xmmm128 | Xorps_xmm_xmmm128 | Xorpd_xmm_xmmm128;
    paddb => Paddb_xmm_xmmm128;
    paddw => Paddw_xmm_xmmm128;
    paddd => Paddd_xmm_xmmm128;
    paddq => Paddq_xmm_xmmm128;
    psubb => Psubb_xmm_xmmm128;
    psubw => Psubw_xmm_xmmm128;
    psubd => Psubd_xmm_xmmm128;
    psubq => Psubq_xmm_xmmm128;
    pcmpeqb => Pcmpeqb_xmm_xmmm128;
    pcmpeqw => Pcmpeqw_xmm_xmmm128;
    pcmpeqd => Pcmpeqd_xmm_xmmm128;
    pcmpgtb => Pcmpgtb_xmm_xmmm128;
    pcmpgtw => Pcmpgtw_xmm_xmmm128;
    pcmpgtd => Pcmpgtd_xmm_xmmm128;
    paddusb => Paddusb_xmm_xmmm128;
    paddusw => Paddusw_xmm_xmmm128;
    psubusb => Psubusb_xmm_xmmm128;
    psubusw => Psubusw_xmm_xmmm128;
    paddsb => Paddsb_xmm_xmmm128;
    paddsw => Paddsw_xmm_xmmm128;
    psubsb => Psubsb_xmm_xmmm128;
    psubsw => Psubsw_xmm_xmmm128;
    pminub => Pminub_xmm_xmmm128;
    pmaxub => Pmaxub_xmm_xmmm128;
    pminsw => Pminsw_xmm_xmmm128;
    pmaxsw => Pmaxsw_xmm_xmmm128;
    pavgb => Pavgb_xmm_xmmm128;
    pavgw => Pavgw_xmm_xmmm128;
    pmullw => Pmullw_xmm_xmmm128;
    pmulhw => Pmulhw_xmm_xmmm128;
    pmulhuw => Pmulhuw_xmm_xmmm128;
    pmuludq => Pmuludq_xmm_xmmm128;
    pmaddwd => Pmaddwd_xmm_xmmm128;
    psadbw => Psadbw_xmm_xmmm128;
    psllw => Psllw_xmm_imm8 | Psllw_xmm_xmmm128;
    pslld => Pslld_xmm_imm8 | Pslld_xmm_xmmm128;
    psllq => Psllq_xmm_imm8 | Psllq_xmm_xmmm128;
    psrlw => Psrlw_xmm_imm8 | Psrlw_xmm_xmmm128;
    psrld => Psrld_xmm_imm8 | Psrld_xmm_xmmm128;
    psrlq => Psrlq_xmm_imm8 | Psrlq_xmm_xmmm128;
    psraw => Psraw_xmm_imm8 | Psraw_xmm_xmmm128;
    psrad => Psrad_xmm_imm8 | Psrad_xmm_xmmm128;
    pslldq => Pslldq_xmm_imm8;
    psrldq => Psrldq_xmm_imm8;
    punpcklbw => Punpcklbw_xmm_xmmm128;
    punpcklwd => Punpcklwd_xmm_xmmm128;
    punpckldq => Punpckldq_xmm_xmmm128 | Unpcklps_xmm_xmmm128;
    punpcklqdq => Punpcklqdq_xmm_xmmm128 | Unpcklpd_xmm_xmmm128;
    punpckhbw => Punpckhbw_xmm_xmmm128;
    punpckhwd => Punpckhwd_xmm_xmmm128;
    punpckhdq => Punpckhdq_xmm_xmmm128 | Unpckhps_xmm_xmmm128;
    punpckhqdq => Punpckhqdq_xmm_xmmm128 | Unpckhpd_xmm_xmmm128;
    pshufd => Pshufd_xmm_xmmm128_imm8;
    pshuflw => Pshuflw_xmm_xmmm128_imm8;
    pshufhw => Pshufhw_xmm_xmmm128_imm8;
    shufps => Shufps_xmm_xmmm128_imm8;
    shufpd => Shufpd_xmm_xmmm128_imm8;
    packsswb => Packsswb_xmm_xmmm128;
    packssdw => Packssdw_xmm_xmmm128;
    packuswb => Packuswb_xmm_xmmm128;
}

/// How `code` is executed, if this module implements it.
fn semantics(code: Code) -> Option<Semantics> {
    let special = match code {
        Code::Movss_xmm_xmmm32 | Code::Movss_xmmm32_xmm => Semantics::MoveScalar(LOW32),
        Code::Movsd_xmm_xmmm64 | Code::Movsd_xmmm64_xmm => Semantics::MoveScalar(LOW64),
        Code::Ldmxcsr_m32 => Semantics::LoadMxcsr,
        Code::Stmxcsr_m32 => Semantics::StoreMxcsr,
        Code::Prefetchnta_m8
        | Code::Prefetcht0_m8
        | Code::Prefetcht1_m8
        | Code::Prefetcht2_m8
        | Code::Sfence
        | Code::Lfence
        | Code::Mfence => Semantics::NoEffect,
        _ => {
            return pure_op(code)
                .map(Semantics::Pure)
                .or_else(|| float::lookup(code).map(Semantics::Host));
        }
    };
    Some(special)
}

/// Forms whose 16-byte memory operand need not be aligned.
fn allows_unaligned(code: Code) -> bool {
    matches!(
        code,
        Code::Movups_xmm_xmmm128
            | Code::Movups_xmmm128_xmm
            | Code::Movupd_xmm_xmmm128
            | Code::Movupd_xmmm128_xmm
            | Code::Movdqu_xmm_xmmm128
            | Code::Movdqu_xmmm128_xmm
            | Code::Lddqu_xmm_m128
    )
}

/// Whether [`execute`] implements `instruction` (the same decision as its `Ok(false)`).
pub fn supports(instruction: &Instruction) -> bool {
    semantics(instruction.code()).is_some()
}

/// A decoded operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    /// XMM register by number.
    Xmm(usize),
    /// General register by hardware number and its size in bytes.
    Gpr { number: usize, size: usize },
    /// Guest-virtual address and access size in bytes.
    Memory { address: u64, size: usize },
    /// An imm8.
    Immediate(u8),
}

/// Decodes operand `index` of `instruction`.
fn operand(
    instruction: &Instruction,
    index: u32,
    state: &X86State,
) -> Result<Operand, EmulationError> {
    let unsupported = || EmulationError::Unsupported(format!("{instruction} (operand {index})"));
    match instruction.op_kind(index) {
        OpKind::Register => {
            let register = instruction.op_register(index);
            if register.is_xmm() {
                Ok(Operand::Xmm(register.number()))
            } else if register.is_gpr32() || register.is_gpr64() {
                Ok(Operand::Gpr {
                    number: register.number(),
                    size: register.size(),
                })
            } else {
                Err(unsupported())
            }
        }
        OpKind::Memory => {
            let address = instruction
                .virtual_address(index, 0, |register, _, _| address_register(state, register))
                .ok_or_else(unsupported)?;
            Ok(Operand::Memory {
                address,
                size: instruction.memory_size().size(),
            })
        }
        OpKind::Immediate8 => Ok(Operand::Immediate(instruction.immediate8())),
        _ => Err(unsupported()),
    }
}

/// `#GP` unless a 16-byte memory operand of an alignment-checked form is 16-byte aligned.
fn check_alignment(instruction: &Instruction, operand: Operand) -> Result<(), EmulationError> {
    match operand {
        Operand::Memory { address, size: 16 }
            if address % 16 != 0 && !allows_unaligned(instruction.code()) =>
        {
            Err(EmulationError::guest_exception(
                instruction,
                "#GP",
                format!("16-byte memory operand at {address:#x} is not 16-byte aligned"),
            ))
        }
        _ => Ok(()),
    }
}

/// The bytes of a memory access of `size` bytes, or `BadAddress` for a size above 16.
fn access_bytes(
    bytes: &mut [u8; 16],
    address: u64,
    size: usize,
) -> Result<&mut [u8], EmulationError> {
    bytes
        .get_mut(..size)
        .ok_or(EmulationError::BadAddress { address, len: size })
}

/// Reads `operand`, zero-extended to 128 bits.
fn read(
    state: &X86State,
    memory: &mut dyn GuestAccess,
    operand: Operand,
) -> Result<u128, EmulationError> {
    Ok(match operand {
        Operand::Xmm(number) => state.xmm(number),
        Operand::Gpr { number, size: 4 } => u128::from(state.gpr(number) as u32),
        Operand::Gpr { number, .. } => u128::from(state.gpr(number)),
        Operand::Memory { address, size } => {
            let mut bytes = [0u8; 16];
            memory.read(address, access_bytes(&mut bytes, address, size)?)?;
            u128::from_le_bytes(bytes)
        }
        Operand::Immediate(value) => u128::from(value),
    })
}

/// Writes the low bits of `value` to `operand` (an r32 write zero-extends into the r64).
fn write(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    operand: Operand,
    value: u128,
) -> Result<(), EmulationError> {
    match operand {
        Operand::Xmm(number) => state.set_xmm(number, value),
        Operand::Gpr { number, size: 4 } => state.set_gpr(number, u64::from(value as u32)),
        Operand::Gpr { number, .. } => state.set_gpr(number, value as u64),
        Operand::Memory { address, size } => {
            let mut bytes = value.to_le_bytes();
            memory.write(address, access_bytes(&mut bytes, address, size)?)?;
        }
        Operand::Immediate(_) => {
            return Err(EmulationError::Unsupported(format!(
                "{instruction} (immediate destination)"
            )));
        }
    }
    Ok(())
}

/// The MXCSR bits the guest may set: the MXCSR_MASK of its XSAVE area, or, when the backend
/// left that field 0, the mask of the host CPU the guest runs on.
pub(super) fn guest_mxcsr_mask(state: &X86State) -> u32 {
    let mut bytes = [0u8; 4];
    // The range is a constant inside the fixed-size XSAVE area.
    bytes.copy_from_slice(&state.xsave[MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4]);
    match u32::from_le_bytes(bytes) {
        0 => float::host_mxcsr_mask(),
        mask => mask,
    }
}

/// The decoded operands and input values of a two-operand (plus optional imm8) form.
struct Inputs {
    /// Operand 0.
    destination: Operand,
    /// Operand 1.
    source: Operand,
    /// The destination's old value if it is an XMM register, else 0.
    old: u128,
    /// The source value, zero-extended.
    value: u128,
    /// The imm8 operand 2, or 0.
    imm: u8,
}

impl Inputs {
    /// Decodes the operands, checks alignment and reads the source (nothing is written).
    fn fetch(
        instruction: &Instruction,
        state: &X86State,
        memory: &mut dyn GuestAccess,
    ) -> Result<Self, EmulationError> {
        let destination = operand(instruction, 0, state)?;
        let source = operand(instruction, 1, state)?;
        check_alignment(instruction, destination)?;
        check_alignment(instruction, source)?;
        let imm = match instruction.op_count() {
            3.. if instruction.op_kind(2) == OpKind::Immediate8 => instruction.immediate8(),
            _ => 0,
        };
        let old = match destination {
            Operand::Xmm(number) => state.xmm(number),
            _ => 0,
        };
        let value = read(state, memory, source)?;
        Ok(Self {
            destination,
            source,
            old,
            value,
            imm,
        })
    }
}

/// RFLAGS bits written by ucomis*/comis*: OF, SF, ZF, AF, PF, CF.
const COMPARE_FLAGS: u64 = 0x8d5;

/// Runs a floating-point operation on the host and commits its result, or reports `#XM`.
fn execute_on_host(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    op: HostOp,
    inputs: &Inputs,
) -> Result<(), EmulationError> {
    let destination = inputs.destination;
    let mxcsr = state.mxcsr();
    let mut context = HostContext::new(inputs.old, inputs.value);
    let raised = float::run(op, &mut context, mxcsr);
    let unmasked = raised & !(mxcsr >> 7) & EXCEPTION_FLAGS;
    if unmasked != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#XM",
            format!(
                "unmasked SIMD floating-point exception (MXCSR flags {unmasked:#x}, MXCSR {mxcsr:#x})"
            ),
        ));
    }
    match op.output {
        Output::Xmm => write(instruction, state, memory, destination, context.a)?,
        Output::Gpr => write(
            instruction,
            state,
            memory,
            destination,
            u128::from(context.gpr),
        )?,
        Output::Flags => {
            state.rflags = (state.rflags & !COMPARE_FLAGS) | (context.flags & COMPARE_FLAGS);
        }
    }
    state.set_mxcsr(mxcsr | raised);
    Ok(())
}

/// Executes `instruction` (already decoded; `instruction.ip()` = RIP, `next_ip()` known) if it
/// is an SSE/SSE2 instruction this module implements. Returns Ok(true) if executed (the caller
/// then sets RIP = next_ip), Ok(false) if it is not an instruction of this module (the caller
/// tries others), Err for a guest-side problem (bad memory operand, #GP for a misaligned
/// operand of an aligned-move/packed-op with a 16-byte memory operand, unmasked SIMD FP
/// exception -> EmulationError::GuestException). On Err nothing has been changed.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<bool, EmulationError> {
    let Some(semantics) = semantics(instruction.code()) else {
        return Ok(false);
    };
    match semantics {
        Semantics::NoEffect => {}
        Semantics::LoadMxcsr => {
            let source = operand(instruction, 0, state)?;
            let value = read(state, memory, source)? as u32;
            let reserved = value & !guest_mxcsr_mask(state);
            if reserved != 0 {
                return Err(EmulationError::guest_exception(
                    instruction,
                    "#GP",
                    format!("MXCSR value {value:#x} sets reserved bits {reserved:#x}"),
                ));
            }
            state.set_mxcsr(value);
        }
        Semantics::StoreMxcsr => {
            let destination = operand(instruction, 0, state)?;
            let value = u128::from(state.mxcsr());
            write(instruction, state, memory, destination, value)?;
        }
        Semantics::Pure(function) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            let result = function(inputs.old, inputs.value, inputs.imm);
            write(instruction, state, memory, inputs.destination, result)?;
        }
        Semantics::MoveScalar(mask) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            let result = match (inputs.destination, inputs.source) {
                (Operand::Xmm(_), Operand::Xmm(_)) => (inputs.old & !mask) | (inputs.value & mask),
                _ => inputs.value & mask,
            };
            write(instruction, state, memory, inputs.destination, result)?;
        }
        Semantics::Host(op) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            execute_on_host(instruction, state, memory, op, &inputs)?;
        }
    }
    Ok(true)
}
