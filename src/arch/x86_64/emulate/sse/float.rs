//! Floating-point instructions of SSE, SSE2, SSE3 and SSE4.1, executed on the host CPU.
//!
//! Each operation runs the very instruction the guest executed on host XMM registers, under the
//! guest's MXCSR (rounding mode, DAZ, FTZ) with every exception masked, so results, NaN
//! payloads, denormal handling, the approximations of `rcp*`/`rsqrt*` and the exception flags
//! are bit-identical to what the guest's CPU (this very CPU) would produce. The caller merges
//! the raised flags into the guest MXCSR and turns a raised flag whose exception the guest left
//! unmasked into a `#XM` stop.
//!
//! Operand convention of the asm templates: `xmm0` is the destination XMM value (`a`), `xmm1`
//! the XMM or memory source (`b`, zero-extended), `rax`/`eax` the general-register or integer
//! source and the general-register result.
//!
//! An imm8 that selects behaviour (the predicate of `cmpps`, the rounding control of `roundps`,
//! the masks of `dpps`) cannot be a run-time operand of a host instruction, so such a form has
//! one template per imm8 value the hardware distinguishes: its table line names the imm8 bits
//! the instruction reads (the others are reserved and ignored, which the tests check on the
//! host for all 256 values) and the values of each nibble, from which the templates are
//! instantiated with const generics.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;
#[cfg(target_arch = "x86_64")]
use std::mem::offset_of;

use iced_x86::Code;

/// What a host operation produces (only x86_64 hosts execute operations natively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Output {
    /// The new value of the destination XMM register.
    Xmm,
    /// A general register (r32 results are zero-extended).
    Gpr,
    /// ZF, PF and CF (OF, SF, AF cleared) — ucomis*/comis*.
    Flags,
}

/// Inputs and outputs of one host execution; read and written by the asm templates.
#[repr(C, align(16))]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HostContext {
    /// Destination XMM value in, result out.
    pub(super) a: u128,
    /// Source XMM or memory value.
    pub(super) b: u128,
    /// Integer source in, general-register result out.
    pub(super) gpr: u64,
    /// RFLAGS after the instruction.
    pub(super) flags: u64,
    /// MXCSR to run under in, MXCSR after the instruction out.
    pub(super) mxcsr: u32,
    /// The host's own MXCSR while the operation runs.
    saved_mxcsr: u32,
}

impl HostContext {
    /// A context with destination `a` and source `b` (whose low quadword is also the integer
    /// source).
    pub(super) fn new(a: u128, b: u128) -> Self {
        Self {
            a,
            b,
            gpr: b as u64,
            ..Self::default()
        }
    }
}

/// A host operation and the kind of result it yields.
#[derive(Clone, Copy)]
pub(super) struct HostOp {
    /// Runs the instruction on the host with the given imm8 (ignored by forms without one).
    pub(super) run: fn(&mut HostContext, u8),
    /// Where its result goes.
    pub(super) output: Output,
}

/// The host's MXCSR_MASK: on other hosts nothing runs natively; the architectural default.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn host_mxcsr_mask() -> u32 {
    0xffbf
}

/// No host execution on other architectures: floating-point forms are unsupported there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn lookup(_: Code) -> Option<HostOp> {
    None
}

/// The legacy FXSAVE region, the only way to read MXCSR_MASK.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(16))]
struct FxsaveArea([u8; 512]);

/// The host's MXCSR_MASK: the MXCSR bits `ldmxcsr` accepts (0xffbf when FXSAVE reports 0).
/// The guest runs on this CPU, so it is also the guest's mask.
#[cfg(target_arch = "x86_64")]
pub(super) fn host_mxcsr_mask() -> u32 {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        let mut area = FxsaveArea([0; 512]);
        // SAFETY: `fxsave` writes exactly 512 bytes to the 16-byte aligned buffer it is given,
        // which is `area`; it changes no register.
        unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
        match u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]]) {
            0 => 0xffbf,
            mask => mask,
        }
    })
}
/// The six exception flags.
pub(super) const EXCEPTION_FLAGS: u32 = 0x3f;
/// The six exception masks.
pub(super) const EXCEPTION_MASKS: u32 = 0x3f << 7;

/// Runs `op` with control byte `imm` under the guest's `mxcsr` with all exceptions masked;
/// returns the exception flags the operation raised (bits 0–5) — the context holds the results.
pub(super) fn run(op: HostOp, context: &mut HostContext, mxcsr: u32, imm: u8) -> u32 {
    context.mxcsr = (mxcsr & host_mxcsr_mask() & !EXCEPTION_FLAGS) | EXCEPTION_MASKS;
    (op.run)(context, imm);
    context.mxcsr & EXCEPTION_FLAGS
}

/// Runs the asm text `$text` (plus optional `const` operands) on `$context`: loads the operands
/// and the MXCSR to run under, executes the text, stores the results and restores the host MXCSR.
#[cfg(target_arch = "x86_64")]
macro_rules! host_asm {
    ($context:expr, $text:expr $(, $name:ident = const $value:expr)*) => {{
        let context: &mut HostContext = $context;
        // SAFETY: the template reads and writes only `*context` (through a pointer to a live,
        // exclusively borrowed, 16-byte aligned struct, at field offsets computed by the
        // compiler), clobbers only the declared registers, and pushes one quadword which it pops
        // again. The host MXCSR is saved first and restored last; the value loaded in between has
        // only bits the host supports and all exceptions masked (see `run`), so neither `ldmxcsr`
        // nor the operation can fault. Constant operands are imm8 values of the instruction.
        unsafe {
            asm!(
                "stmxcsr [{ctx} + {saved}]",
                "ldmxcsr [{ctx} + {mxcsr}]",
                "movdqa xmm0, [{ctx} + {a}]",
                "movdqa xmm1, [{ctx} + {b}]",
                "mov rax, [{ctx} + {gpr}]",
                $text,
                "pushfq",
                "pop rdx",
                "mov [{ctx} + {flags}], rdx",
                "mov [{ctx} + {gpr}], rax",
                "movdqa [{ctx} + {a}], xmm0",
                "stmxcsr [{ctx} + {mxcsr}]",
                "ldmxcsr [{ctx} + {saved}]",
                ctx = in(reg) std::ptr::from_mut(context),
                saved = const offset_of!(HostContext, saved_mxcsr),
                mxcsr = const offset_of!(HostContext, mxcsr),
                a = const offset_of!(HostContext, a),
                b = const offset_of!(HostContext, b),
                gpr = const offset_of!(HostContext, gpr),
                flags = const offset_of!(HostContext, flags),
                $($name = const $value,)*
                out("rax") _,
                out("rdx") _,
                out("xmm0") _,
                out("xmm1") _,
            );
        }
    }};
}

/// `match $low { … }` calling `$template::<$high, LOW>` for each listed low nibble; the listed
/// values are the non-zero ones, so the `_` arm is the low nibble 0.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_low_nibble {
    ($template:ident, $context:expr, $high:literal, $low:expr, [$($value:literal)*]) => {
        match $low {
            $($value => $template::<$high, $value>($context),)*
            _ => $template::<$high, 0>($context),
        }
    };
}

/// Defines `lookup`: one host function per instruction form from its asm text, and for imm8
/// forms one template per distinguished imm8 value.
#[cfg(target_arch = "x86_64")]
macro_rules! host_ops {
    (
        plain { $($code:ident => $output:ident, $text:literal;)* }
        imm8 {
            $($imm_code:ident => $mnemonic:literal, bits $mask:literal,
                high [$($high:literal)*], low $lows:tt;)*
        }
    ) => {
        /// The host operation executing `code`, if it is one of this table.
        pub(super) fn lookup(code: Code) -> Option<HostOp> {
            match code {
                $(Code::$code => {
                    fn run(context: &mut HostContext, _: u8) {
                        host_asm!(context, $text);
                    }
                    Some(HostOp { run, output: Output::$output })
                })*
                $(Code::$imm_code => {
                    /// The instruction with imm8 `HIGH * 16 + LOW`.
                    fn template<const HIGH: u8, const LOW: u8>(context: &mut HostContext) {
                        host_asm!(
                            context,
                            concat!($mnemonic, " xmm0, xmm1, {imm}"),
                            imm = const HIGH * 16 + LOW
                        );
                    }
                    /// Runs the template of the imm8 bits the instruction reads. The listed
                    /// nibble values are the non-zero ones, so each `_` arm is the nibble 0.
                    fn run(context: &mut HostContext, imm: u8) {
                        let imm = imm & $mask;
                        match imm >> 4 {
                            $($high => dispatch_low_nibble!(
                                template, context, $high, imm & 15, $lows
                            ),)*
                            _ => dispatch_low_nibble!(template, context, 0, imm & 15, $lows),
                        }
                    }
                    Some(HostOp { run, output: Output::Xmm })
                })*
                _ => None,
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
host_ops! {
    plain {
        Addss_xmm_xmmm32 => Xmm, "addss xmm0, xmm1";
        Addsd_xmm_xmmm64 => Xmm, "addsd xmm0, xmm1";
        Addps_xmm_xmmm128 => Xmm, "addps xmm0, xmm1";
        Addpd_xmm_xmmm128 => Xmm, "addpd xmm0, xmm1";
        Subss_xmm_xmmm32 => Xmm, "subss xmm0, xmm1";
        Subsd_xmm_xmmm64 => Xmm, "subsd xmm0, xmm1";
        Subps_xmm_xmmm128 => Xmm, "subps xmm0, xmm1";
        Subpd_xmm_xmmm128 => Xmm, "subpd xmm0, xmm1";
        Mulss_xmm_xmmm32 => Xmm, "mulss xmm0, xmm1";
        Mulsd_xmm_xmmm64 => Xmm, "mulsd xmm0, xmm1";
        Mulps_xmm_xmmm128 => Xmm, "mulps xmm0, xmm1";
        Mulpd_xmm_xmmm128 => Xmm, "mulpd xmm0, xmm1";
        Divss_xmm_xmmm32 => Xmm, "divss xmm0, xmm1";
        Divsd_xmm_xmmm64 => Xmm, "divsd xmm0, xmm1";
        Divps_xmm_xmmm128 => Xmm, "divps xmm0, xmm1";
        Divpd_xmm_xmmm128 => Xmm, "divpd xmm0, xmm1";
        Minss_xmm_xmmm32 => Xmm, "minss xmm0, xmm1";
        Minsd_xmm_xmmm64 => Xmm, "minsd xmm0, xmm1";
        Minps_xmm_xmmm128 => Xmm, "minps xmm0, xmm1";
        Minpd_xmm_xmmm128 => Xmm, "minpd xmm0, xmm1";
        Maxss_xmm_xmmm32 => Xmm, "maxss xmm0, xmm1";
        Maxsd_xmm_xmmm64 => Xmm, "maxsd xmm0, xmm1";
        Maxps_xmm_xmmm128 => Xmm, "maxps xmm0, xmm1";
        Maxpd_xmm_xmmm128 => Xmm, "maxpd xmm0, xmm1";
        Sqrtss_xmm_xmmm32 => Xmm, "sqrtss xmm0, xmm1";
        Sqrtsd_xmm_xmmm64 => Xmm, "sqrtsd xmm0, xmm1";
        Sqrtps_xmm_xmmm128 => Xmm, "sqrtps xmm0, xmm1";
        Sqrtpd_xmm_xmmm128 => Xmm, "sqrtpd xmm0, xmm1";
        Rcpss_xmm_xmmm32 => Xmm, "rcpss xmm0, xmm1";
        Rcpps_xmm_xmmm128 => Xmm, "rcpps xmm0, xmm1";
        Rsqrtss_xmm_xmmm32 => Xmm, "rsqrtss xmm0, xmm1";
        Rsqrtps_xmm_xmmm128 => Xmm, "rsqrtps xmm0, xmm1";
        Addsubps_xmm_xmmm128 => Xmm, "addsubps xmm0, xmm1";
        Addsubpd_xmm_xmmm128 => Xmm, "addsubpd xmm0, xmm1";
        Haddps_xmm_xmmm128 => Xmm, "haddps xmm0, xmm1";
        Haddpd_xmm_xmmm128 => Xmm, "haddpd xmm0, xmm1";
        Hsubps_xmm_xmmm128 => Xmm, "hsubps xmm0, xmm1";
        Hsubpd_xmm_xmmm128 => Xmm, "hsubpd xmm0, xmm1";
        Ucomiss_xmm_xmmm32 => Flags, "ucomiss xmm0, xmm1";
        Ucomisd_xmm_xmmm64 => Flags, "ucomisd xmm0, xmm1";
        Comiss_xmm_xmmm32 => Flags, "comiss xmm0, xmm1";
        Comisd_xmm_xmmm64 => Flags, "comisd xmm0, xmm1";
        Cvtsi2ss_xmm_rm32 => Xmm, "cvtsi2ss xmm0, eax";
        Cvtsi2ss_xmm_rm64 => Xmm, "cvtsi2ss xmm0, rax";
        Cvtsi2sd_xmm_rm32 => Xmm, "cvtsi2sd xmm0, eax";
        Cvtsi2sd_xmm_rm64 => Xmm, "cvtsi2sd xmm0, rax";
        Cvtss2si_r32_xmmm32 => Gpr, "cvtss2si eax, xmm1";
        Cvtss2si_r64_xmmm32 => Gpr, "cvtss2si rax, xmm1";
        Cvttss2si_r32_xmmm32 => Gpr, "cvttss2si eax, xmm1";
        Cvttss2si_r64_xmmm32 => Gpr, "cvttss2si rax, xmm1";
        Cvtsd2si_r32_xmmm64 => Gpr, "cvtsd2si eax, xmm1";
        Cvtsd2si_r64_xmmm64 => Gpr, "cvtsd2si rax, xmm1";
        Cvttsd2si_r32_xmmm64 => Gpr, "cvttsd2si eax, xmm1";
        Cvttsd2si_r64_xmmm64 => Gpr, "cvttsd2si rax, xmm1";
        Cvtss2sd_xmm_xmmm32 => Xmm, "cvtss2sd xmm0, xmm1";
        Cvtsd2ss_xmm_xmmm64 => Xmm, "cvtsd2ss xmm0, xmm1";
        Cvtps2pd_xmm_xmmm64 => Xmm, "cvtps2pd xmm0, xmm1";
        Cvtpd2ps_xmm_xmmm128 => Xmm, "cvtpd2ps xmm0, xmm1";
        Cvtdq2ps_xmm_xmmm128 => Xmm, "cvtdq2ps xmm0, xmm1";
        Cvtdq2pd_xmm_xmmm64 => Xmm, "cvtdq2pd xmm0, xmm1";
        Cvtps2dq_xmm_xmmm128 => Xmm, "cvtps2dq xmm0, xmm1";
        Cvttps2dq_xmm_xmmm128 => Xmm, "cvttps2dq xmm0, xmm1";
        Cvtpd2dq_xmm_xmmm128 => Xmm, "cvtpd2dq xmm0, xmm1";
        Cvttpd2dq_xmm_xmmm128 => Xmm, "cvttpd2dq xmm0, xmm1";
    }
    imm8 {
        // Legacy compares read the predicate from imm8[2:0].
        Cmpps_xmm_xmmm128_imm8 => "cmpps", bits 0x07, high [], low [1 2 3 4 5 6 7];
        Cmppd_xmm_xmmm128_imm8 => "cmppd", bits 0x07, high [], low [1 2 3 4 5 6 7];
        Cmpss_xmm_xmmm32_imm8 => "cmpss", bits 0x07, high [], low [1 2 3 4 5 6 7];
        Cmpsd_xmm_xmmm64_imm8 => "cmpsd", bits 0x07, high [], low [1 2 3 4 5 6 7];
        // Rounding: imm8[1:0] mode, [2] use MXCSR.RC, [3] suppress the precision exception.
        Roundps_xmm_xmmm128_imm8 => "roundps", bits 0x0f, high [],
            low [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
        Roundpd_xmm_xmmm128_imm8 => "roundpd", bits 0x0f, high [],
            low [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
        Roundss_xmm_xmmm32_imm8 => "roundss", bits 0x0f, high [],
            low [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
        Roundsd_xmm_xmmm64_imm8 => "roundsd", bits 0x0f, high [],
            low [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
        // Dot products: imm8[7:4] (dpps) or [5:4] (dppd) select the products, the low bits
        // the result lanes.
        Dpps_xmm_xmmm128_imm8 => "dpps", bits 0xff,
            high [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15],
            low [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15];
        Dppd_xmm_xmmm128_imm8 => "dppd", bits 0x33, high [1 2 3], low [1 2 3];
    }
}
