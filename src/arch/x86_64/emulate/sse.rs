//! SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2 and POPCNT instructions with XMM, general-register
//! and memory operands (moves, integer, logic, shuffles, floating point, string compares, CRC32).
//!
//! [`execute`] runs one decoded legacy-encoded (non-VEX) instruction of these extensions against
//! an [`X86State`] and guest memory; [`supports`] tells, without side effects, whether it would;
//! [`complete_extensions`] names the extensions of which every such form is implemented (what
//! uhyve may announce to the guest through CPUID). Instruction forms are looked up by iced's
//! [`Code`]: pure integer, logic, shuffle and move semantics in Rust (`int` for SSE/SSE2/SSE3,
//! `ssse3`, `sse41`, `string_compare` for the SSE4.2 string compares, `general` for CRC32 and
//! POPCNT), floating point executed on the host CPU under the guest's MXCSR (`float`, with one
//! template per distinguished imm8 value where the imm8 selects the operation), and a few
//! special forms (movss/movsd, MXCSR load/store, maskmovdqu, prefetch and fences). Operands are
//! decoded uniformly: operand 0 is the destination (the first source of `ptest` and the string
//! compares), operand 1 the source, an imm8 the control byte; implicit operands (XMM0 of the
//! variable blends and of `pcmpxstrm`, EAX/EDX/ECX of the string compares, DS:RDI of
//! `maskmovdqu`) are named by the semantics. Legacy-SSE rules are enforced: a 16-byte memory
//! operand must be 16-byte aligned (`#GP` otherwise) except for the forms the SDM exempts
//! (unaligned moves, `lddqu`, the string compares; narrower operands are never checked), and in
//! AMD's misaligned-SSE mode (MXCSR.MM) only the aligned and non-temporal moves check; a SIMD
//! floating-point exception the guest left unmasked stops with `#XM`. On any error nothing of
//! the state or of guest memory has been changed.
//!
//! Out of scope, and so never claimed: the MMX-register forms of these extensions (`mm`
//! operands), the x87 `fisttp` of SSE3, and VEX/EVEX encodings.
//!
//! Floating point needs an x86_64 host (the only host that runs x86_64 guests); built for
//! another architecture, the module supports only the non-floating-point forms.
//!
//! Exception flags are computed with all exceptions masked. For a guest that unmasked underflow
//! (UM) that is not enough, as an exact tiny result traps on hardware (#XM) but sets no flag
//! when masked: the operation then runs a second time with flush-to-zero, which detects
//! tininess the same way (`unmasked_underflow`).

#[cfg(test)]
mod completeness_tests;
mod float;
mod general;
mod int;
mod sse41;
mod ssse3;
mod string_compare;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

use iced_x86::{Code, CpuidFeature, Instruction, OpKind};

use super::operands::{address_register, gpr_number};
use super::state::{EmulationError, GuestAccess, MXCSR_MASK_OFFSET, X86State};
use float::{EXCEPTION_FLAGS, HostContext, HostOp, Output};
use int::{LOW32, LOW64, PureOp};
use sse41::VariableBlendOp;
use string_compare::{Lengths, StringCompare};

/// Semantics that also yield the six arithmetic flags: `fn(dst, src, imm) -> (result, flags)`.
type FlagsOp = fn(u128, u128, u8) -> (u128, u64);

/// The extensions of which every legacy-encoded form with XMM, general-register or memory
/// operands is implemented (MMX-register forms and the x87 `fisttp` are outside that scope);
/// `completeness_tests` proves the claim against iced's list of all instruction forms. Only
/// these may be announced to a guest whose SIMD instructions may end up here, and only those
/// the host CPU has too: the floating-point forms run on the host.
pub fn complete_extensions() -> &'static [CpuidFeature] {
    #[cfg(target_arch = "x86_64")]
    const COMPLETE: &[CpuidFeature] = &[
        CpuidFeature::SSE,
        CpuidFeature::SSE2,
        CpuidFeature::SSE3,
        CpuidFeature::SSSE3,
        CpuidFeature::SSE4_1,
        CpuidFeature::SSE4_2,
        CpuidFeature::POPCNT,
    ];
    // Without host floating point only the pure-integer extensions are complete.
    #[cfg(not(target_arch = "x86_64"))]
    const COMPLETE: &[CpuidFeature] = &[
        CpuidFeature::SSSE3,
        CpuidFeature::SSE4_2,
        CpuidFeature::POPCNT,
    ];
    COMPLETE
}

/// How an instruction form is executed.
#[derive(Clone, Copy)]
enum Semantics {
    /// `dst = f(dst, src, imm)` in pure Rust; no floating-point exceptions.
    Pure(PureOp),
    /// `(dst, arithmetic flags) = f(dst, src, imm)` in pure Rust (ptest, popcnt).
    PureWithFlags(FlagsOp),
    /// `dst = f(dst, src, xmm0)`: the blends whose mask is the implicit XMM0.
    VariableBlend(VariableBlendOp),
    /// A packed string compare (implicit EAX/EDX lengths, ECX or XMM0 result, flags).
    StringCompare(StringCompare),
    /// maskmovdqu: the bytes of operand 1 selected by operand 2 stored at DS:RDI.
    MaskedStore,
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

/// Defines a lookup function `$lookup(code) -> Option<$type>` from a table with one line per
/// semantic function.
macro_rules! semantics_table {
    ($lookup:ident -> $type:ty { $($function:path => $($code:ident)|+;)* }) => {
        /// The pure-Rust semantics of `code`, if it is one of this table.
        fn $lookup(code: Code) -> Option<$type> {
            match code {
                $($(Code::$code)|+ => Some($function),)*
                _ => None,
            }
        }
    };
}

semantics_table! { pure_op -> PureOp {
    int::copy => Movaps_xmm_xmmm128 | Movaps_xmmm128_xmm | Movups_xmm_xmmm128 | Movups_xmmm128_xmm
        | Movapd_xmm_xmmm128 | Movapd_xmmm128_xmm | Movupd_xmm_xmmm128 | Movupd_xmmm128_xmm
        | Movdqa_xmm_xmmm128 | Movdqa_xmmm128_xmm | Movdqu_xmm_xmmm128 | Movdqu_xmmm128_xmm
        | Lddqu_xmm_m128 | Movntdq_m128_xmm | Movntps_m128_xmm | Movntpd_m128_xmm
        | Movnti_m32_r32 | Movnti_m64_r64 | Movd_xmm_rm32 | Movd_rm32_xmm | Movq_xmm_rm64
        | Movq_rm64_xmm | Movlps_m64_xmm | Movlpd_m64_xmm | Movntdqa_xmm_m128;
    int::copy_low64 => Movq_xmm_xmmm64 | Movq_xmmm64_xmm;
    int::load_high64 => Movhps_xmm_m64 | Movhpd_xmm_m64;
    int::load_low64 => Movlps_xmm_m64 | Movlpd_xmm_m64;
    int::high64 => Movhps_m64_xmm | Movhpd_m64_xmm;
    int::move_high_to_low => Movhlps_xmm_xmm;
    int::move_low_to_high => Movlhps_xmm_xmm;
    int::movmskps => Movmskps_r32_xmm | Movmskps_r64_xmm;
    int::movmskpd => Movmskpd_r32_xmm | Movmskpd_r64_xmm;
    int::pmovmskb => Pmovmskb_r32_xmm | Pmovmskb_r64_xmm;
    int::pextrw => Pextrw_r32_xmm_imm8 | Pextrw_r64_xmm_imm8 | Pextrw_r32m16_xmm_imm8
        | Pextrw_r64m16_xmm_imm8;
    int::pinsrw => Pinsrw_xmm_r32m16_imm8 | Pinsrw_xmm_r64m16_imm8;
    int::and => Pand_xmm_xmmm128 | Andps_xmm_xmmm128 | Andpd_xmm_xmmm128;
    int::and_not => Pandn_xmm_xmmm128 | Andnps_xmm_xmmm128 | Andnpd_xmm_xmmm128;
    int::or => Por_xmm_xmmm128 | Orps_xmm_xmmm128 | Orpd_xmm_xmmm128;
    int::xor => Pxor_xmm_xmmm128 | Xorps_xmm_xmmm128 | Xorpd_xmm_xmmm128;
    int::paddb => Paddb_xmm_xmmm128;
    int::paddw => Paddw_xmm_xmmm128;
    int::paddd => Paddd_xmm_xmmm128;
    int::paddq => Paddq_xmm_xmmm128;
    int::psubb => Psubb_xmm_xmmm128;
    int::psubw => Psubw_xmm_xmmm128;
    int::psubd => Psubd_xmm_xmmm128;
    int::psubq => Psubq_xmm_xmmm128;
    int::pcmpeqb => Pcmpeqb_xmm_xmmm128;
    int::pcmpeqw => Pcmpeqw_xmm_xmmm128;
    int::pcmpeqd => Pcmpeqd_xmm_xmmm128;
    int::pcmpgtb => Pcmpgtb_xmm_xmmm128;
    int::pcmpgtw => Pcmpgtw_xmm_xmmm128;
    int::pcmpgtd => Pcmpgtd_xmm_xmmm128;
    int::paddusb => Paddusb_xmm_xmmm128;
    int::paddusw => Paddusw_xmm_xmmm128;
    int::psubusb => Psubusb_xmm_xmmm128;
    int::psubusw => Psubusw_xmm_xmmm128;
    int::paddsb => Paddsb_xmm_xmmm128;
    int::paddsw => Paddsw_xmm_xmmm128;
    int::psubsb => Psubsb_xmm_xmmm128;
    int::psubsw => Psubsw_xmm_xmmm128;
    int::pminub => Pminub_xmm_xmmm128;
    int::pmaxub => Pmaxub_xmm_xmmm128;
    int::pminsw => Pminsw_xmm_xmmm128;
    int::pmaxsw => Pmaxsw_xmm_xmmm128;
    int::pavgb => Pavgb_xmm_xmmm128;
    int::pavgw => Pavgw_xmm_xmmm128;
    int::pmullw => Pmullw_xmm_xmmm128;
    int::pmulhw => Pmulhw_xmm_xmmm128;
    int::pmulhuw => Pmulhuw_xmm_xmmm128;
    int::pmuludq => Pmuludq_xmm_xmmm128;
    int::pmaddwd => Pmaddwd_xmm_xmmm128;
    int::psadbw => Psadbw_xmm_xmmm128;
    int::psllw => Psllw_xmm_imm8 | Psllw_xmm_xmmm128;
    int::pslld => Pslld_xmm_imm8 | Pslld_xmm_xmmm128;
    int::psllq => Psllq_xmm_imm8 | Psllq_xmm_xmmm128;
    int::psrlw => Psrlw_xmm_imm8 | Psrlw_xmm_xmmm128;
    int::psrld => Psrld_xmm_imm8 | Psrld_xmm_xmmm128;
    int::psrlq => Psrlq_xmm_imm8 | Psrlq_xmm_xmmm128;
    int::psraw => Psraw_xmm_imm8 | Psraw_xmm_xmmm128;
    int::psrad => Psrad_xmm_imm8 | Psrad_xmm_xmmm128;
    int::pslldq => Pslldq_xmm_imm8;
    int::psrldq => Psrldq_xmm_imm8;
    int::punpcklbw => Punpcklbw_xmm_xmmm128;
    int::punpcklwd => Punpcklwd_xmm_xmmm128;
    int::punpckldq => Punpckldq_xmm_xmmm128 | Unpcklps_xmm_xmmm128;
    int::punpcklqdq => Punpcklqdq_xmm_xmmm128 | Unpcklpd_xmm_xmmm128;
    int::punpckhbw => Punpckhbw_xmm_xmmm128;
    int::punpckhwd => Punpckhwd_xmm_xmmm128;
    int::punpckhdq => Punpckhdq_xmm_xmmm128 | Unpckhps_xmm_xmmm128;
    int::punpckhqdq => Punpckhqdq_xmm_xmmm128 | Unpckhpd_xmm_xmmm128;
    int::pshufd => Pshufd_xmm_xmmm128_imm8;
    int::pshuflw => Pshuflw_xmm_xmmm128_imm8;
    int::pshufhw => Pshufhw_xmm_xmmm128_imm8;
    int::shufps => Shufps_xmm_xmmm128_imm8;
    int::shufpd => Shufpd_xmm_xmmm128_imm8;
    int::packsswb => Packsswb_xmm_xmmm128;
    int::packssdw => Packssdw_xmm_xmmm128;
    int::packuswb => Packuswb_xmm_xmmm128;
    int::movddup => Movddup_xmm_xmmm64;
    int::movsldup => Movsldup_xmm_xmmm128;
    int::movshdup => Movshdup_xmm_xmmm128;
    ssse3::pshufb => Pshufb_xmm_xmmm128;
    ssse3::phaddw => Phaddw_xmm_xmmm128;
    ssse3::phaddd => Phaddd_xmm_xmmm128;
    ssse3::phaddsw => Phaddsw_xmm_xmmm128;
    ssse3::phsubw => Phsubw_xmm_xmmm128;
    ssse3::phsubd => Phsubd_xmm_xmmm128;
    ssse3::phsubsw => Phsubsw_xmm_xmmm128;
    ssse3::pmaddubsw => Pmaddubsw_xmm_xmmm128;
    ssse3::pmulhrsw => Pmulhrsw_xmm_xmmm128;
    ssse3::psignb => Psignb_xmm_xmmm128;
    ssse3::psignw => Psignw_xmm_xmmm128;
    ssse3::psignd => Psignd_xmm_xmmm128;
    ssse3::pabsb => Pabsb_xmm_xmmm128;
    ssse3::pabsw => Pabsw_xmm_xmmm128;
    ssse3::pabsd => Pabsd_xmm_xmmm128;
    ssse3::palignr => Palignr_xmm_xmmm128_imm8;
    sse41::blendps => Blendps_xmm_xmmm128_imm8;
    sse41::blendpd => Blendpd_xmm_xmmm128_imm8;
    sse41::pblendw => Pblendw_xmm_xmmm128_imm8;
    sse41::pmovsxbw => Pmovsxbw_xmm_xmmm64;
    sse41::pmovsxbd => Pmovsxbd_xmm_xmmm32;
    sse41::pmovsxbq => Pmovsxbq_xmm_xmmm16;
    sse41::pmovsxwd => Pmovsxwd_xmm_xmmm64;
    sse41::pmovsxwq => Pmovsxwq_xmm_xmmm32;
    sse41::pmovsxdq => Pmovsxdq_xmm_xmmm64;
    sse41::pmovzxbw => Pmovzxbw_xmm_xmmm64;
    sse41::pmovzxbd => Pmovzxbd_xmm_xmmm32;
    sse41::pmovzxbq => Pmovzxbq_xmm_xmmm16;
    sse41::pmovzxwd => Pmovzxwd_xmm_xmmm64;
    sse41::pmovzxwq => Pmovzxwq_xmm_xmmm32;
    sse41::pmovzxdq => Pmovzxdq_xmm_xmmm64;
    sse41::pmuldq => Pmuldq_xmm_xmmm128;
    sse41::pmulld => Pmulld_xmm_xmmm128;
    sse41::pcmpeqq => Pcmpeqq_xmm_xmmm128;
    sse41::pcmpgtq => Pcmpgtq_xmm_xmmm128;
    sse41::pminsb => Pminsb_xmm_xmmm128;
    sse41::pmaxsb => Pmaxsb_xmm_xmmm128;
    sse41::pminsd => Pminsd_xmm_xmmm128;
    sse41::pmaxsd => Pmaxsd_xmm_xmmm128;
    sse41::pminuw => Pminuw_xmm_xmmm128;
    sse41::pmaxuw => Pmaxuw_xmm_xmmm128;
    sse41::pminud => Pminud_xmm_xmmm128;
    sse41::pmaxud => Pmaxud_xmm_xmmm128;
    sse41::packusdw => Packusdw_xmm_xmmm128;
    sse41::phminposuw => Phminposuw_xmm_xmmm128;
    sse41::mpsadbw => Mpsadbw_xmm_xmmm128_imm8;
    sse41::pextrb => Pextrb_r32m8_xmm_imm8 | Pextrb_r64m8_xmm_imm8;
    sse41::pextrd => Pextrd_rm32_xmm_imm8 | Extractps_rm32_xmm_imm8 | Extractps_r64m32_xmm_imm8;
    sse41::pextrq => Pextrq_rm64_xmm_imm8;
    sse41::pinsrb => Pinsrb_xmm_r32m8_imm8 | Pinsrb_xmm_r64m8_imm8;
    sse41::pinsrd => Pinsrd_xmm_rm32_imm8;
    sse41::pinsrq => Pinsrq_xmm_rm64_imm8;
    sse41::insertps => Insertps_xmm_xmmm32_imm8;
    general::crc32_8 => Crc32_r32_rm8 | Crc32_r64_rm8;
    general::crc32_16 => Crc32_r32_rm16;
    general::crc32_32 => Crc32_r32_rm32;
    general::crc32_64 => Crc32_r64_rm64;
} }

semantics_table! { flags_op -> FlagsOp {
    sse41::ptest => Ptest_xmm_xmmm128;
    general::popcnt => Popcnt_r16_rm16 | Popcnt_r32_rm32 | Popcnt_r64_rm64;
} }

semantics_table! { variable_blend_op -> VariableBlendOp {
    sse41::blendvps => Blendvps_xmm_xmmm128;
    sse41::blendvpd => Blendvpd_xmm_xmmm128;
    sse41::pblendvb => Pblendvb_xmm_xmmm128;
} }

/// The string-compare form `code`, if it is one.
fn string_compare_form(code: Code) -> Option<StringCompare> {
    use string_compare::Output::{Index, Mask};
    let (lengths, output) = match code {
        Code::Pcmpestri_xmm_xmmm128_imm8 => (Lengths::Explicit { wide: false }, Index),
        Code::Pcmpestri64_xmm_xmmm128_imm8 => (Lengths::Explicit { wide: true }, Index),
        Code::Pcmpestrm_xmm_xmmm128_imm8 => (Lengths::Explicit { wide: false }, Mask),
        Code::Pcmpestrm64_xmm_xmmm128_imm8 => (Lengths::Explicit { wide: true }, Mask),
        Code::Pcmpistri_xmm_xmmm128_imm8 => (Lengths::Implicit, Index),
        Code::Pcmpistrm_xmm_xmmm128_imm8 => (Lengths::Implicit, Mask),
        _ => return None,
    };
    Some(StringCompare { lengths, output })
}

/// How `code` is executed, if this module implements it.
fn semantics(code: Code) -> Option<Semantics> {
    let special = match code {
        Code::Movss_xmm_xmmm32 | Code::Movss_xmmm32_xmm => Semantics::MoveScalar(LOW32),
        Code::Movsd_xmm_xmmm64 | Code::Movsd_xmmm64_xmm => Semantics::MoveScalar(LOW64),
        Code::Ldmxcsr_m32 => Semantics::LoadMxcsr,
        Code::Stmxcsr_m32 => Semantics::StoreMxcsr,
        Code::Maskmovdqu_rDI_xmm_xmm => Semantics::MaskedStore,
        // Every ModRM encoding of the fences (E8–EF, F0–F7, F8–FF) is the same fence.
        Code::Prefetchnta_m8
        | Code::Prefetcht0_m8
        | Code::Prefetcht1_m8
        | Code::Prefetcht2_m8
        | Code::Sfence
        | Code::Sfence_F9
        | Code::Sfence_FA
        | Code::Sfence_FB
        | Code::Sfence_FC
        | Code::Sfence_FD
        | Code::Sfence_FE
        | Code::Sfence_FF
        | Code::Lfence
        | Code::Lfence_E9
        | Code::Lfence_EA
        | Code::Lfence_EB
        | Code::Lfence_EC
        | Code::Lfence_ED
        | Code::Lfence_EE
        | Code::Lfence_EF
        | Code::Mfence
        | Code::Mfence_F1
        | Code::Mfence_F2
        | Code::Mfence_F3
        | Code::Mfence_F4
        | Code::Mfence_F5
        | Code::Mfence_F6
        | Code::Mfence_F7 => Semantics::NoEffect,
        _ => {
            return pure_op(code)
                .map(Semantics::Pure)
                .or_else(|| flags_op(code).map(Semantics::PureWithFlags))
                .or_else(|| variable_blend_op(code).map(Semantics::VariableBlend))
                .or_else(|| string_compare_form(code).map(Semantics::StringCompare))
                .or_else(|| float::lookup(code).map(Semantics::Host));
        }
    };
    Some(special)
}

/// MXCSR.MM (AMD): misaligned-SSE mode, in which most legacy-SSE forms accept a misaligned
/// 16-byte operand.
const MISALIGNED_SSE_MODE: u32 = 1 << 17;

/// Forms whose 16-byte memory operand need not be aligned: the unaligned moves, `lddqu` and
/// the SSE4.2 string compares (SDM exception class 4 exempts them).
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
            | Code::Pcmpestri_xmm_xmmm128_imm8
            | Code::Pcmpestri64_xmm_xmmm128_imm8
            | Code::Pcmpestrm_xmm_xmmm128_imm8
            | Code::Pcmpestrm64_xmm_xmmm128_imm8
            | Code::Pcmpistri_xmm_xmmm128_imm8
            | Code::Pcmpistrm_xmm_xmmm128_imm8
    )
}

/// Forms whose 16-byte memory operand must be aligned even in AMD's misaligned-SSE mode
/// (MXCSR.MM): the aligned moves and the non-temporal moves.
fn requires_alignment_in_misaligned_mode(code: Code) -> bool {
    matches!(
        code,
        Code::Movaps_xmm_xmmm128
            | Code::Movaps_xmmm128_xmm
            | Code::Movapd_xmm_xmmm128
            | Code::Movapd_xmmm128_xmm
            | Code::Movdqa_xmm_xmmm128
            | Code::Movdqa_xmmm128_xmm
            | Code::Movntps_m128_xmm
            | Code::Movntpd_m128_xmm
            | Code::Movntdq_m128_xmm
            | Code::Movntdqa_xmm_m128
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
    /// General register by hardware number and its size in bytes (1, 2, 4 or 8; the low bits).
    Gpr { number: usize, size: usize },
    /// AH, CH, DH or BH: bits 8–15 of the general register with hardware number 0 … 3.
    HighByte(usize),
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
            } else if let Some(low) = super::operands::high_byte_register(register) {
                Ok(Operand::HighByte(low))
            } else if register.is_gpr() {
                let number = gpr_number(register).ok_or_else(unsupported)?;
                Ok(Operand::Gpr {
                    number,
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

/// `#GP` unless a 16-byte memory operand of an alignment-checked form is 16-byte aligned. In
/// AMD's misaligned-SSE mode (MXCSR.MM set in `mxcsr`) only the aligned and non-temporal moves
/// still check.
fn check_alignment(
    instruction: &Instruction,
    operand: Operand,
    mxcsr: u32,
) -> Result<(), EmulationError> {
    let code = instruction.code();
    let checked = !allows_unaligned(code)
        && (mxcsr & MISALIGNED_SSE_MODE == 0 || requires_alignment_in_misaligned_mode(code));
    match operand {
        Operand::Memory { address, size: 16 } if address % 16 != 0 && checked => {
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

/// All-ones in the low `size` bytes of a general register (`size` 1, 2, 4 or 8).
fn low_bytes_mask(size: usize) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Reads `operand`, zero-extended to 128 bits.
fn read(
    state: &X86State,
    memory: &mut dyn GuestAccess,
    operand: Operand,
) -> Result<u128, EmulationError> {
    Ok(match operand {
        Operand::Xmm(number) => state.xmm(number),
        Operand::Gpr { number, size } => u128::from(state.gpr(number) & low_bytes_mask(size)),
        Operand::HighByte(number) => u128::from((state.gpr(number) >> 8) as u8),
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
        // A 32-bit write zero-extends; 8- and 16-bit writes keep the other bits.
        Operand::Gpr { number, size: 4 } => state.set_gpr(number, u64::from(value as u32)),
        Operand::Gpr { number, size } => {
            let mask = low_bytes_mask(size);
            let merged = (state.gpr(number) & !mask) | (value as u64 & mask);
            state.set_gpr(number, merged);
        }
        Operand::HighByte(number) => {
            let merged = (state.gpr(number) & !0xff00) | (u64::from(value as u8) << 8);
            state.set_gpr(number, merged);
        }
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
    /// The destination's old value if it is a register (zero-extended), else 0.
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
        check_alignment(instruction, destination, state.mxcsr())?;
        check_alignment(instruction, source, state.mxcsr())?;
        let mut imm = match instruction.op_count() {
            3.. if instruction.op_kind(2) == OpKind::Immediate8 => instruction.immediate8(),
            _ => 0,
        };
        // insertps with an m32 source inserts that doubleword: imm8[7:6] selects nothing.
        if instruction.code() == Code::Insertps_xmm_xmmm32_imm8
            && matches!(source, Operand::Memory { .. })
        {
            imm &= 0x3f;
        }
        let old = match destination {
            Operand::Xmm(_) | Operand::Gpr { .. } | Operand::HighByte(_) => {
                read(state, memory, destination)?
            }
            Operand::Memory { .. } | Operand::Immediate(_) => 0,
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

/// The arithmetic flags in RFLAGS (OF, SF, ZF, AF, PF, CF): what ucomis*/comis*, ptest,
/// popcnt and the string compares write.
const ARITHMETIC_FLAGS: u64 = 0x8d5;

/// RFLAGS with the arithmetic flags replaced by `flags`.
fn with_arithmetic_flags(rflags: u64, flags: u64) -> u64 {
    (rflags & !ARITHMETIC_FLAGS) | (flags & ARITHMETIC_FLAGS)
}

/// MXCSR.UM (underflow masked), MXCSR.FTZ (flush to zero) and the UE flag.
const UNDERFLOW_MASK: u32 = 1 << 11;
const FLUSH_TO_ZERO: u32 = 1 << 15;
const UNDERFLOW_FLAG: u32 = 1 << 4;

/// UE if `op` underflows for a guest that left underflow unmasked, else 0. With UM masked the
/// hardware raises UE only for a tiny *inexact* result (what the all-masked run reports), with
/// UM unmasked it traps on every tiny result, exact ones included. Flush-to-zero detects
/// tininess the same way as an unmasked UM, so for such a guest the operation runs once more
/// with FTZ set (still all masked; the result is discarded) and its UE flag tells.
fn unmasked_underflow(op: HostOp, inputs: &Inputs, mxcsr: u32) -> u32 {
    if mxcsr & UNDERFLOW_MASK != 0 {
        return 0;
    }
    let mut probe = HostContext::new(inputs.old, inputs.value);
    float::run(op, &mut probe, mxcsr | FLUSH_TO_ZERO, inputs.imm) & UNDERFLOW_FLAG
}

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
    let raised =
        float::run(op, &mut context, mxcsr, inputs.imm) | unmasked_underflow(op, inputs, mxcsr);
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
            state.rflags = with_arithmetic_flags(state.rflags, context.flags);
        }
    }
    state.set_mxcsr(mxcsr | raised);
    Ok(())
}

/// Executes a packed string compare on fetched operands: lengths from EAX/EDX (RAX/RDX) or the
/// null elements, the index into ECX or the mask into XMM0, and the flags. Cannot fail.
fn execute_string_compare(state: &mut X86State, form: StringCompare, inputs: &Inputs) {
    let imm = inputs.imm;
    let (first_length, second_length) = match form.lengths {
        Lengths::Explicit { wide } => {
            let length = |number: usize| {
                let register = state.gpr(number);
                let signed = if wide {
                    register as i64
                } else {
                    i64::from(register as u32 as i32)
                };
                string_compare::explicit_length(signed, imm)
            };
            (length(0), length(2))
        }
        Lengths::Implicit => (
            string_compare::implicit_length(inputs.old, imm),
            string_compare::implicit_length(inputs.value, imm),
        ),
    };
    let outcome =
        string_compare::compare(inputs.old, inputs.value, imm, first_length, second_length);
    match form.output {
        string_compare::Output::Index => state.set_gpr(1, u64::from(outcome.index)),
        string_compare::Output::Mask => state.set_xmm(0, outcome.mask),
    }
    state.rflags = with_arithmetic_flags(state.rflags, outcome.flags);
}

/// maskmovdqu: stores the bytes of operand 1 whose byte in operand 2 has its top bit set at
/// DS:RDI (segment override and address size honoured; no alignment needed). Every run of
/// selected bytes is read first, so an inaccessible byte fails before anything is written;
/// unselected bytes are neither read nor written.
fn masked_store(
    instruction: &Instruction,
    state: &X86State,
    memory: &mut dyn GuestAccess,
) -> Result<(), EmulationError> {
    let (Operand::Xmm(data), Operand::Xmm(selector)) = (
        operand(instruction, 1, state)?,
        operand(instruction, 2, state)?,
    ) else {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    };
    let address = instruction
        .virtual_address(0, 0, |register, _, _| address_register(state, register))
        .ok_or_else(|| EmulationError::Unsupported(instruction.to_string()))?;
    let data = state.xmm(data).to_le_bytes();
    let selected = state
        .xmm(selector)
        .to_le_bytes()
        .map(|byte| byte & 0x80 != 0);
    let mut runs = Vec::new();
    let mut start = None;
    for (index, &is_selected) in selected.iter().chain([&false]).enumerate() {
        match (start, is_selected) {
            (None, true) => start = Some(index),
            (Some(first), false) => {
                runs.push(first..index);
                start = None;
            }
            _ => {}
        }
    }
    let at = |offset: usize| address.wrapping_add(offset as u64);
    let mut scratch = [0u8; 16];
    for run in &runs {
        memory.read(at(run.start), &mut scratch[..run.len()])?;
    }
    for run in runs {
        memory.write(at(run.start), &data[run])?;
    }
    Ok(())
}

/// Executes `instruction` (already decoded; `instruction.ip()` = RIP, `next_ip()` known) if it
/// is an instruction form this module implements. Returns Ok(true) if executed (the caller
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
        Semantics::PureWithFlags(function) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            let (result, flags) = function(inputs.old, inputs.value, inputs.imm);
            write(instruction, state, memory, inputs.destination, result)?;
            state.rflags = with_arithmetic_flags(state.rflags, flags);
        }
        Semantics::VariableBlend(function) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            let result = function(inputs.old, inputs.value, state.xmm(0));
            write(instruction, state, memory, inputs.destination, result)?;
        }
        Semantics::StringCompare(form) => {
            let inputs = Inputs::fetch(instruction, state, memory)?;
            execute_string_compare(state, form, &inputs);
        }
        Semantics::MaskedStore => masked_store(instruction, state, memory)?,
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
