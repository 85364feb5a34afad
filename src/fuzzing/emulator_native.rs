//! The `x86_emulator` target's comparison with the host CPU (feature `fuzz-native`, x86_64
//! hosts): an instruction of the SSE and extension modules, which the emulator's differential
//! tests compare with the host CPU, runs again on the host through the same JIT harness
//! (`emulate::native_harness`) when it touches only what that harness loads and stores: general
//! registers other than RSP and RDI, XMM registers, the arithmetic flags, MXCSR, and memory
//! through `[RBX + displacement]`. Everything the emulator then reports must match the host.
//! An instruction the host rejects or faults on after the emulator accepted it kills the fuzzer
//! with that signal, which libFuzzer reports as a crash: a divergence as well.

use iced_x86::{CpuidFeature, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register};

use crate::arch::x86_64::emulate::native_harness::{
    Jit, MEMORY_SIZE, Native, NativeMemory, UNTOUCHED_GPRS,
};
use crate::arch::x86_64::emulate::{X86State, extensions, sse, xsave};

/// CF, PF, AF, ZF, SF and OF: the flags the comparison loads and checks.
const ARITHMETIC_FLAGS: u64 = 0x8d5;

/// The instructions the comparison leaves out although their module executes them: they move
/// x87 or XSAVE state the harness does not load.
const NOT_COMPARED: [Mnemonic; 6] = [
    Mnemonic::Fxsave,
    Mnemonic::Fxsave64,
    Mnemonic::Fxrstor,
    Mnemonic::Fxrstor64,
    Mnemonic::Emms,
    Mnemonic::Femms,
];

/// Whether the host CPU runs every CPUID feature `instruction` needs (as far as is known here).
fn host_runs(instruction: &Instruction) -> bool {
    instruction
        .cpuid_features()
        .iter()
        .all(|feature| match feature {
            CpuidFeature::X64 | CpuidFeature::SSE | CpuidFeature::SSE2 => true,
            CpuidFeature::SSE3 => std::arch::is_x86_feature_detected!("sse3"),
            CpuidFeature::SSSE3 => std::arch::is_x86_feature_detected!("ssse3"),
            CpuidFeature::SSE4_1 => std::arch::is_x86_feature_detected!("sse4.1"),
            CpuidFeature::SSE4_2 => std::arch::is_x86_feature_detected!("sse4.2"),
            CpuidFeature::POPCNT => std::arch::is_x86_feature_detected!("popcnt"),
            CpuidFeature::AES => std::arch::is_x86_feature_detected!("aes"),
            CpuidFeature::PCLMULQDQ => std::arch::is_x86_feature_detected!("pclmulqdq"),
            CpuidFeature::SHA => std::arch::is_x86_feature_detected!("sha"),
            CpuidFeature::BMI1 => std::arch::is_x86_feature_detected!("bmi1"),
            CpuidFeature::BMI2 => std::arch::is_x86_feature_detected!("bmi2"),
            CpuidFeature::ADX => std::arch::is_x86_feature_detected!("adx"),
            CpuidFeature::LZCNT => std::arch::is_x86_feature_detected!("lzcnt"),
            _ => false,
        })
}

/// Whether `instruction` (executed by the emulator) can run in the harness: module, CPU
/// features, registers and memory operands as described in the module documentation.
fn comparable(instruction: &Instruction) -> bool {
    let module = sse::supports(instruction) || extensions::supports(instruction);
    if !module || xsave::supports(instruction) || NOT_COMPARED.contains(&instruction.mnemonic()) {
        return false;
    }
    if !host_runs(instruction) || instruction.is_ip_rel_memory_operand() {
        return false;
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(instruction);
    let memory_ok = info.used_memory().iter().all(|memory| {
        memory.base() == Register::RBX
            && memory.index() == Register::None
            && !matches!(memory.segment(), Register::FS | Register::GS)
    });
    let uses_memory = !info.used_memory().is_empty();
    let registers_ok = info.used_registers().iter().all(|used| {
        let register = used.register();
        let full = register.full_register();
        if register.is_xmm() {
            return true;
        }
        let gpr = register.is_gpr() && !matches!(full, Register::RSP | Register::RDI);
        // With a memory operand RBX holds its address, which differs between the two runs.
        let rbx_as_data = uses_memory && full == Register::RBX && used.access() != OpAccess::Read;
        gpr && !rbx_as_data
    });
    memory_ok && registers_ok
}

/// The emulator's run of one instruction: the state and the guest memory (seen at
/// `memory_base`, [`MEMORY_SIZE`] bytes) before and after.
pub(super) struct EmulatedRun<'a> {
    pub(super) before: &'a X86State,
    pub(super) after: &'a X86State,
    pub(super) memory_base: u64,
    pub(super) memory_before: &'a [u8],
    pub(super) memory_after: &'a [u8],
}

/// Runs `instruction` (`bytes`, which the emulator executed as `run` shows) on the host CPU and
/// checks that both agree. The flags of `run.before` other than the arithmetic ones must be
/// clear (the caller arranges that).
pub(super) fn compare_with_host(instruction: &Instruction, bytes: &[u8], run: &EmulatedRun) {
    let EmulatedRun {
        before,
        after,
        memory_base,
        ..
    } = *run;
    if !comparable(instruction) || before.rflags & !ARITHMETIC_FLAGS != 2 {
        return;
    }
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    native_memory.0.copy_from_slice(run.memory_before);
    let host_base = native_memory.0.as_mut_ptr() as u64;
    let to_host = |value: u64| value.wrapping_sub(memory_base).wrapping_add(host_base);
    let mut native = Native {
        xmm: std::array::from_fn(|n| before.xmm(n)),
        gprs: before.gprs,
        rflags: before.rflags,
        mxcsr: before.mxcsr(),
        host_mxcsr: 0,
    };
    let rbx_is_address =
        (0..instruction.op_count()).any(|n| instruction.op_kind(n) == iced_x86::OpKind::Memory);
    if rbx_is_address {
        native.gprs[3] = to_host(before.gprs[3]);
    }
    let length = instruction.len();
    Jit::new(&bytes[..length], false).run(&mut native);
    let context = || {
        format!(
            "`{instruction}` ({:02x?}) from {before:?}",
            &bytes[..length]
        )
    };
    for n in 0..16 {
        assert_eq!(after.xmm(n), native.xmm[n], "xmm{n} after {}", context());
        if UNTOUCHED_GPRS.contains(&n) {
            assert_eq!(after.gprs[n], before.gprs[n], "gpr {n} after {}", context());
            continue;
        }
        let emulated = if n == 3 && rbx_is_address {
            to_host(after.gprs[3])
        } else {
            after.gprs[n]
        };
        assert_eq!(emulated, native.gprs[n], "gpr {n} after {}", context());
    }
    let flags = |value: u64| value & ARITHMETIC_FLAGS;
    assert_eq!(
        flags(after.rflags),
        flags(native.rflags),
        "rflags after {}",
        context()
    );
    assert_eq!(after.mxcsr(), native.mxcsr, "mxcsr after {}", context());
    assert!(
        run.memory_after == native_memory.0,
        "memory after {}",
        context()
    );
}
