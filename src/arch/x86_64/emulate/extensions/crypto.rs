//! AES-NI, PCLMULQDQ and SHA (SHA-NI): the legacy-SSE encoded XMM forms, in pure Rust.
//!
//! Every form is `xmm1 = f(xmm1, xmm2/m128 [, imm8] [, XMM0])`: operand 0 is the destination
//! and first source, operand 1 the second source, an imm8 the round constant of
//! `aeskeygenassist`, the quadword selector of `pclmulqdq` or the round function of
//! `sha1rnds4`, and `sha256rnds2` also reads the implicit XMM0. The transformations are in
//! `aes` (FIPS-197) and `sha` (FIPS-180, arranged as the SDM's operation sections); the
//! carry-less multiplication is here. A 16-byte memory operand must be 16-byte aligned (`#GP`
//! otherwise, SDM exception class 4) unless AMD's misaligned-SSE mode (MXCSR.MM) is on, in
//! which only the aligned and non-temporal moves, none of these, still check; and AMD CPUs do
//! not check the SHA forms at all (see [`requires_alignment`]). No flags or MXCSR bits are
//! affected.

mod aes;
mod sha;
#[cfg(test)]
mod tests;

use iced_x86::{Code, Instruction, OpKind};

use super::super::state::{EmulationError, GuestAccess, X86State};

/// MXCSR.MM (AMD): misaligned-SSE mode.
const MISALIGNED_SSE_MODE: u32 = 1 << 17;

/// The inputs of one crypto form.
#[derive(Debug, Clone, Copy)]
pub(super) struct CryptoInputs {
    /// Operand 0, the destination register's old value.
    pub(super) first: u128,
    /// Operand 1, register or memory.
    pub(super) second: u128,
    /// The imm8, or 0 for forms without one.
    pub(super) imm: u8,
    /// The implicit XMM0 (read by `sha256rnds2` only).
    pub(super) xmm0: u128,
}

/// The semantics of a crypto form: its inputs to the new destination value.
pub(super) type CryptoOp = fn(&CryptoInputs) -> u128;

/// The semantics of `code`, if it is a crypto form of this module.
pub(super) fn lookup(code: Code) -> Option<CryptoOp> {
    let operation: CryptoOp = match code {
        Code::Aesenc_xmm_xmmm128 => |i| aes::encrypt_round(i.first, i.second),
        Code::Aesenclast_xmm_xmmm128 => |i| aes::encrypt_last_round(i.first, i.second),
        Code::Aesdec_xmm_xmmm128 => |i| aes::decrypt_round(i.first, i.second),
        Code::Aesdeclast_xmm_xmmm128 => |i| aes::decrypt_last_round(i.first, i.second),
        Code::Aesimc_xmm_xmmm128 => |i| aes::inverse_mix_columns(i.second),
        Code::Aeskeygenassist_xmm_xmmm128_imm8 => |i| aes::key_generation_assist(i.second, i.imm),
        Code::Pclmulqdq_xmm_xmmm128_imm8 => {
            |i| carry_less_multiply_quadwords(i.first, i.second, i.imm)
        }
        Code::Sha1rnds4_xmm_xmmm128_imm8 => |i| sha::sha1_four_rounds(i.first, i.second, i.imm),
        Code::Sha1nexte_xmm_xmmm128 => |i| sha::sha1_next_e(i.first, i.second),
        Code::Sha1msg1_xmm_xmmm128 => |i| sha::sha1_message_1(i.first, i.second),
        Code::Sha1msg2_xmm_xmmm128 => |i| sha::sha1_message_2(i.first, i.second),
        Code::Sha256rnds2_xmm_xmmm128 => |i| sha::sha256_two_rounds(i.first, i.second, i.xmm0),
        Code::Sha256msg1_xmm_xmmm128 => |i| sha::sha256_message_1(i.first, i.second),
        Code::Sha256msg2_xmm_xmmm128 => |i| sha::sha256_message_2(i.first, i.second),
        _ => return None,
    };
    Some(operation)
}

/// Executes the crypto form `instruction` with semantics `operation`: reads both sources
/// (checking the alignment of a memory source) before writing the destination register.
pub(super) fn execute(
    instruction: &Instruction,
    operation: CryptoOp,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
) -> Result<(), EmulationError> {
    let unsupported = || EmulationError::Unsupported(instruction.to_string());
    let destination = match instruction.op_kind(0) {
        OpKind::Register if instruction.op_register(0).is_xmm() => {
            instruction.op_register(0).number()
        }
        _ => return Err(unsupported()),
    };
    let second = match instruction.op_kind(1) {
        OpKind::Register if instruction.op_register(1).is_xmm() => {
            state.xmm(instruction.op_register(1).number())
        }
        OpKind::Memory => {
            let address = super::OperandAccess::new(instruction).memory_address(state, 1)?;
            let checked = requires_alignment(instruction.code(), state.mxcsr(), host_is_amd());
            if address % 16 != 0 && checked {
                return Err(EmulationError::guest_exception(
                    instruction,
                    "#GP",
                    format!("16-byte memory operand at {address:#x} is not 16-byte aligned"),
                ));
            }
            let mut bytes = [0u8; 16];
            memory.read(address, &mut bytes)?;
            u128::from_le_bytes(bytes)
        }
        _ => return Err(unsupported()),
    };
    let imm = match instruction.op_count() {
        3.. if instruction.op_kind(2) == OpKind::Immediate8 => instruction.immediate8(),
        _ => 0,
    };
    let inputs = CryptoInputs {
        first: state.xmm(destination),
        second,
        imm,
        xmm0: state.xmm(0),
    };
    state.set_xmm(destination, operation(&inputs));
    Ok(())
}

/// Whether the 16-byte memory operand of `code` must be 16-byte aligned under `mxcsr` on a
/// host CPU from AMD (`amd`) or another vendor. The SDM makes all these forms exception class
/// 4: aligned, except in AMD's misaligned-SSE mode (MXCSR.MM). AMD's CPUs do not check the SHA
/// forms at all (measured on Zen 5 and assumed for every AMD design with SHA; `native_tests`
/// compares the rule with the host), so on them a misaligned SHA operand is read like any
/// other.
pub(super) fn requires_alignment(code: Code, mxcsr: u32, amd: bool) -> bool {
    let sha = matches!(
        code,
        Code::Sha1rnds4_xmm_xmmm128_imm8
            | Code::Sha1nexte_xmm_xmmm128
            | Code::Sha1msg1_xmm_xmmm128
            | Code::Sha1msg2_xmm_xmmm128
            | Code::Sha256rnds2_xmm_xmmm128
            | Code::Sha256msg1_xmm_xmmm128
            | Code::Sha256msg2_xmm_xmmm128
    );
    mxcsr & MISALIGNED_SSE_MODE == 0 && !(sha && amd)
}

/// Whether the host CPU (the guest's CPU) is AMD's or Hygon's (a licensed AMD design), by the
/// vendor string of CPUID leaf 0.
#[cfg(target_arch = "x86_64")]
pub(super) fn host_is_amd() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(|| {
        let leaf_0 = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [leaf_0.ebx, leaf_0.edx, leaf_0.ecx]
            .iter()
            .flat_map(|register| register.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
    })
}

/// Other hosts run no x86 guests; the SDM's rule applies.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn host_is_amd() -> bool {
    false
}

/// The carry-less (GF(2)\[x\]) product of two 64-bit polynomials.
fn carry_less_multiply(a: u64, b: u64) -> u128 {
    (0..64)
        .filter(|bit| (b >> bit) & 1 != 0)
        .fold(0, |product, bit| product ^ (u128::from(a) << bit))
}

/// `pclmulqdq`: the carry-less product of the quadword of `first` that imm8 bit 0 selects and
/// the quadword of `second` that imm8 bit 4 selects (0: low, 1: high); other bits are ignored.
fn carry_less_multiply_quadwords(first: u128, second: u128, imm: u8) -> u128 {
    let quadword = |value: u128, high: bool| {
        if high {
            (value >> 64) as u64
        } else {
            value as u64
        }
    };
    carry_less_multiply(
        quadword(first, imm & 0x01 != 0),
        quadword(second, imm & 0x10 != 0),
    )
}
