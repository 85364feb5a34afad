//! The bit-manipulation forms that leave flags undefined, executed on the host CPU.
//!
//! Each form has a template running the register form of the very instruction the guest
//! executed: `rcx` holds operand 1 (the source), `rdx` operand 2 (the second source, if any),
//! `rax` receives the result, and RFLAGS holds the guest's arithmetic flags before and the
//! instruction's after. Memory operands are read by the caller and passed as values. Since the
//! guest runs on this CPU, result and flags — the undefined ones included, whatever the CPU
//! does with them — are exactly what the guest's hardware would produce. A form is looked up
//! only if the host has its extension.

use std::arch::asm;
use std::mem::offset_of;

use iced_x86::{Code, CpuidFeature};

use super::super::ARITHMETIC_FLAGS;

/// Inputs and outputs of one host execution; read and written by the templates.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HostContext {
    /// Operand 1.
    first: u64,
    /// Operand 2, or 0.
    second: u64,
    /// The result (only the operand size's low bits count).
    result: u64,
    /// The guest's arithmetic flags in, the host's RFLAGS after the instruction out.
    flags: u64,
}

/// A host-executed form: its template.
#[derive(Clone, Copy)]
pub(in super::super) struct HostOp {
    template: fn(&mut HostContext),
}

/// Runs `operation` on `first` and `second` with the arithmetic flags of `rflags`; returns the
/// result and the RFLAGS value after the instruction.
pub(super) fn run(operation: HostOp, first: u64, second: u64, rflags: u64) -> (u64, u64) {
    let mut context = HostContext {
        first,
        second,
        result: 0,
        flags: rflags & ARITHMETIC_FLAGS,
    };
    (operation.template)(&mut context);
    (context.result, context.flags)
}

/// The extension of a host-executed form, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostExtension {
    Bmi1,
    Bmi2,
    Lzcnt,
}

impl HostExtension {
    /// Whether the host CPU has the extension.
    fn available(self) -> bool {
        match self {
            Self::Bmi1 => std::arch::is_x86_feature_detected!("bmi1"),
            Self::Bmi2 => std::arch::is_x86_feature_detected!("bmi2"),
            Self::Lzcnt => std::arch::is_x86_feature_detected!("lzcnt"),
        }
    }

    fn feature(self) -> CpuidFeature {
        match self {
            Self::Bmi1 => CpuidFeature::BMI1,
            Self::Bmi2 => CpuidFeature::BMI2,
            Self::Lzcnt => CpuidFeature::LZCNT,
        }
    }
}

/// The extensions of the host-executed forms that the host has.
pub(super) fn available_extensions() -> Vec<CpuidFeature> {
    [
        HostExtension::Bmi1,
        HostExtension::Bmi2,
        HostExtension::Lzcnt,
    ]
    .into_iter()
    .filter(|extension| extension.available())
    .map(HostExtension::feature)
    .collect()
}

/// Runs the asm text `$text` on `$context`: replaces the arithmetic flags with the context's,
/// loads the operands, executes the text, stores the result and the flags.
macro_rules! host_asm {
    ($context:expr, $text:literal) => {{
        let context: &mut HostContext = $context;
        // SAFETY: the template reads and writes only `*context` (through a pointer to a live,
        // exclusively borrowed struct, at field offsets computed by the compiler), clobbers
        // only the declared registers and the arithmetic flags (the other RFLAGS bits, DF and
        // AC among them, are the host's own throughout), and pushes one quadword at a time,
        // which it pops again. The instruction is one the host has (`lookup` checks CPUID
        // first) and cannot fault on register operands.
        unsafe {
            asm!(
                "pushfq",
                "pop rax",
                "and rax, {keep}",
                "or rax, [{ctx} + {flags}]",
                "push rax",
                "popfq",
                "mov rcx, [{ctx} + {first}]",
                "mov rdx, [{ctx} + {second}]",
                "mov eax, 0",
                $text,
                "pushfq",
                "pop qword ptr [{ctx} + {flags}]",
                "mov [{ctx} + {result}], rax",
                ctx = in(reg) std::ptr::from_mut(context),
                first = const offset_of!(HostContext, first),
                second = const offset_of!(HostContext, second),
                result = const offset_of!(HostContext, result),
                flags = const offset_of!(HostContext, flags),
                keep = const !(ARITHMETIC_FLAGS as i64),
                out("rax") _,
                out("rcx") _,
                out("rdx") _,
            );
        }
    }};
}

/// Defines `lookup`: one template per form from its asm text, gated by its extension.
macro_rules! host_ops {
    ($($code:ident => $extension:ident, $text:literal;)*) => {
        /// The host operation executing `code`, if it is one of this table and the host has
        /// its extension.
        pub(super) fn lookup(code: Code) -> Option<HostOp> {
            let (extension, template): (HostExtension, fn(&mut HostContext)) = match code {
                $(Code::$code => (HostExtension::$extension, |context| host_asm!(context, $text)),)*
                _ => return None,
            };
            extension.available().then_some(HostOp { template })
        }
    };
}

host_ops! {
    VEX_Andn_r32_r32_rm32 => Bmi1, "andn eax, ecx, edx";
    VEX_Andn_r64_r64_rm64 => Bmi1, "andn rax, rcx, rdx";
    VEX_Bextr_r32_rm32_r32 => Bmi1, "bextr eax, ecx, edx";
    VEX_Bextr_r64_rm64_r64 => Bmi1, "bextr rax, rcx, rdx";
    VEX_Blsi_r32_rm32 => Bmi1, "blsi eax, ecx";
    VEX_Blsi_r64_rm64 => Bmi1, "blsi rax, rcx";
    VEX_Blsmsk_r32_rm32 => Bmi1, "blsmsk eax, ecx";
    VEX_Blsmsk_r64_rm64 => Bmi1, "blsmsk rax, rcx";
    VEX_Blsr_r32_rm32 => Bmi1, "blsr eax, ecx";
    VEX_Blsr_r64_rm64 => Bmi1, "blsr rax, rcx";
    Tzcnt_r16_rm16 => Bmi1, "tzcnt ax, cx";
    Tzcnt_r32_rm32 => Bmi1, "tzcnt eax, ecx";
    Tzcnt_r64_rm64 => Bmi1, "tzcnt rax, rcx";
    VEX_Bzhi_r32_rm32_r32 => Bmi2, "bzhi eax, ecx, edx";
    VEX_Bzhi_r64_rm64_r64 => Bmi2, "bzhi rax, rcx, rdx";
    Lzcnt_r16_rm16 => Lzcnt, "lzcnt ax, cx";
    Lzcnt_r32_rm32 => Lzcnt, "lzcnt eax, ecx";
    Lzcnt_r64_rm64 => Lzcnt, "lzcnt rax, rcx";
}
