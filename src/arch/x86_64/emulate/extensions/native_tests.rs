//! Differential tests of every implemented form against the host CPU: each form is
//! JIT-assembled into a harness that loads all general and XMM registers, RFLAGS and MXCSR from
//! a register file, runs the instruction natively and stores everything back; the same
//! instruction, decoded as uhyve would see it, goes through [`execute`] on the same inputs.
//! Compared exactly: all 16 general registers, all 16 XMM registers, OF/SF/ZF/AF/PF/CF (so also
//! the flags an instruction leaves unchanged or undefined) and the memory.
//!
//! Inputs are random and edge-case values (for the bit-manipulation forms also small counts,
//! BEXTR/BZHI controls around the operand size, values with few bits set); register forms run
//! with every imm8 value where the imm8 selects behaviour, memory forms with operands at
//! aligned, misaligned and page-straddling offsets where the alignment rule allows them (for
//! the 16-byte crypto operands: misaligned ones in AMD's misaligned-SSE mode, where the host
//! has it). A separate test checks the alignment rule against the host by running misaligned
//! forms in a child process. Forms the host CPU lacks are skipped with a message.

use iced_x86::{Code, CpuidFeature, Instruction, MemoryOperand, OpCodeOperandKind, Register};

use super::super::native_harness::{
    DATA_GPRS, GUEST_BASE, Jit, MEMORY_SIZE, Native, NativeMemory, Rng, UNTOUCHED_GPRS, encode,
    gpr, runs_into_a_fault, xmm,
};
use super::super::state::MXCSR_DEFAULT;
use super::super::testing::FakeMemory;
use super::*;

/// MXCSR.MM (AMD): misaligned-SSE mode.
const MISALIGNED_SSE_MODE: u32 = 1 << 17;
/// The memory base register of the test instructions: RBX.
const MEMORY_BASE: usize = 3;

// --- Native execution ------------------------------------------------------------------------

// --- Inputs ----------------------------------------------------------------------------------

/// Edge-case integers: zero, one, sign and carry boundaries of 16, 32 and 64 bits.
const INT_EDGES: [u64; 16] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX - 1,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0xffff_ffff_8000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0x0123_4567_89ab_cdef,
];

/// Counts, bit indices and BEXTR fields around the 16-, 32- and 64-bit operand sizes.
const SMALL_EDGES: [u64; 14] = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255];

/// A general-register or memory input of a random flavour.
fn integer(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => rng.next(),
        1 => rng.pick(&INT_EDGES),
        // A BEXTR control or BZHI index: start/index byte and length byte around the sizes,
        // sometimes with junk above bit 15.
        2 => {
            let junk = if rng.below(4) == 0 {
                rng.next() << 16
            } else {
                0
            };
            rng.pick(&SMALL_EDGES) | (rng.pick(&SMALL_EDGES) << 8) | junk
        }
        3 => rng.below(80),
        // Few leading or trailing zeros, a single bit, a short run.
        4 => rng.next() >> rng.below(64),
        _ => match rng.below(3) {
            0 => 1 << rng.below(64),
            1 => rng.next() << rng.below(64),
            _ => (u64::MAX >> rng.below(64)) << rng.below(64),
        },
    }
}

/// An XMM input: random, or lanes of edge values.
fn vector(rng: &mut Rng) -> u128 {
    match rng.below(4) {
        0 => u128::from(rng.pick(&INT_EDGES)) | (u128::from(rng.pick(&INT_EDGES)) << 64),
        1 => (0..16).fold(0, |acc, i| {
            acc | (u128::from(rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, 0x63])) << (8 * i))
        }),
        _ => u128::from(rng.next()) | (u128::from(rng.next()) << 64),
    }
}

/// One set of inputs.
struct Inputs {
    xmm: [u128; 16],
    gprs: [u64; 16],
    rflags: u64,
    memory: Vec<u8>,
}

/// Random memory contents shared by all cases (filling 8 KiB per case would dominate the run
/// time); each case re-randomises the bytes around its memory operand.
fn base_memory() -> &'static [u8] {
    static MEMORY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        (0..MEMORY_SIZE / 8)
            .flat_map(|_| integer(&mut rng).to_le_bytes())
            .collect()
    })
}

impl Inputs {
    /// Random registers and flags; fresh memory from 16 bytes before to 32 bytes after `offset`.
    fn new(rng: &mut Rng, offset: usize) -> Self {
        let xmm = std::array::from_fn(|_| vector(rng));
        let gprs = std::array::from_fn(|_| integer(rng));
        let mut memory = base_memory().to_vec();
        let window = offset.saturating_sub(16)..(offset + 32).min(MEMORY_SIZE);
        for chunk in memory[window].chunks_mut(8) {
            let fresh = integer(rng).to_le_bytes();
            chunk.copy_from_slice(&fresh[..chunk.len()]);
        }
        let rflags = 0x2 | (rng.next() & ARITHMETIC_FLAGS);
        Self {
            xmm,
            gprs,
            rflags,
            memory,
        }
    }
}

// --- Building test instructions ----------------------------------------------------------------

/// The operand kinds of a form, as far as the harness needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Xmm,
    XmmOrMem,
    /// A general register of the given size in bytes.
    Gpr(usize),
    /// A general register of the given size or memory.
    GprOrMem(usize),
    Mem,
    Imm8,
}

/// The operand kinds of `code`, from iced's op-code tables.
fn operand_kinds(code: Code) -> Vec<Kind> {
    use OpCodeOperandKind as K;
    code.op_code()
        .op_kinds()
        .iter()
        .map(|kind| match kind {
            K::xmm_reg => Kind::Xmm,
            K::xmm_or_mem => Kind::XmmOrMem,
            K::r16_reg => Kind::Gpr(2),
            K::r32_reg | K::r32_vvvv => Kind::Gpr(4),
            K::r64_reg | K::r64_vvvv => Kind::Gpr(8),
            K::r16_or_mem => Kind::GprOrMem(2),
            K::r32_or_mem => Kind::GprOrMem(4),
            K::r64_or_mem => Kind::GprOrMem(8),
            K::mem => Kind::Mem,
            K::imm8 => Kind::Imm8,
            other => panic!("{code:?}: operand kind {other:?} not handled by the harness"),
        })
        .collect()
}

/// An operand to create an instruction with.
#[derive(Debug, Clone, Copy)]
enum Arg {
    Reg(Register),
    Mem,
    Imm(u32),
}

fn create(code: Code, args: &[Arg]) -> Instruction {
    let memory = MemoryOperand::with_base_displ(Register::RBX, 0);
    let created = match *args {
        [Arg::Mem] => Instruction::with1(code, memory),
        [Arg::Reg(a), Arg::Reg(b)] => Instruction::with2(code, a, b),
        [Arg::Reg(a), Arg::Mem] => Instruction::with2(code, a, memory),
        [Arg::Reg(a), Arg::Reg(b), Arg::Reg(c)] => Instruction::with3(code, a, b, c),
        [Arg::Reg(a), Arg::Reg(b), Arg::Mem] => Instruction::with3(code, a, b, memory),
        [Arg::Reg(a), Arg::Mem, Arg::Reg(c)] => Instruction::with3(code, a, memory, c),
        [Arg::Reg(a), Arg::Reg(b), Arg::Imm(c)] => Instruction::with3(code, a, b, c),
        [Arg::Reg(a), Arg::Mem, Arg::Imm(c)] => Instruction::with3(code, a, memory, c),
        _ => panic!("{code:?}: no constructor for {args:?}"),
    };
    created.unwrap_or_else(|error| panic!("{code:?} {args:?}: {error}"))
}

/// Whether the host CPU has every extension `code` needs.
fn host_runs(code: Code) -> bool {
    let leaf_7 = std::arch::x86_64::__cpuid_count(7, 0);
    code.cpuid_features().iter().all(|feature| match feature {
        CpuidFeature::AES => std::arch::is_x86_feature_detected!("aes"),
        CpuidFeature::PCLMULQDQ => std::arch::is_x86_feature_detected!("pclmulqdq"),
        CpuidFeature::SHA => std::arch::is_x86_feature_detected!("sha"),
        CpuidFeature::BMI1 => std::arch::is_x86_feature_detected!("bmi1"),
        CpuidFeature::BMI2 => std::arch::is_x86_feature_detected!("bmi2"),
        CpuidFeature::ADX => std::arch::is_x86_feature_detected!("adx"),
        CpuidFeature::LZCNT => std::arch::is_x86_feature_detected!("lzcnt"),
        CpuidFeature::CLFLUSHOPT => leaf_7.ebx & (1 << 23) != 0,
        CpuidFeature::CLWB => leaf_7.ebx & (1 << 24) != 0,
        _ => true,
    })
}

/// Every implemented form the host can run; the others are named and skipped.
fn comparable_codes() -> Vec<Code> {
    let (runs, skipped): (Vec<Code>, Vec<Code>) = Code::values()
        .filter(|&code| supports_code(code))
        .partition(|&code| host_runs(code));
    if !skipped.is_empty() {
        println!("skipped, the host CPU lacks them: {skipped:?}");
    }
    runs
}

/// Memory operand offsets of the general-register forms: aligned, misaligned, straddling the
/// page boundary in the middle of the buffer.
const GPR_MEMORY_OFFSETS: [u64; 5] = [0x100, 0x103, 0xff9, 0xffe, 0xfff];
/// Offsets of the 16-byte crypto operands: aligned (the second one ends at the page boundary).
const ALIGNED_OFFSETS: [u64; 2] = [0x100, 0xff0];
/// Misaligned and page-straddling offsets of the 16-byte operands, run in misaligned-SSE mode.
const MISALIGNED_OFFSETS: [u64; 3] = [0x103, 0xff8, 0xffc];
/// Immediates tried with the memory forms (the register forms try all 256).
const IMMEDIATES: [u32; 10] = [0, 1, 2, 3, 0x10, 0x11, 0x1b, 0x36, 0x80, 0xff];

/// One instruction to compare: operands, memory offset (None: register form), MXCSR, cases.
struct Variant {
    args: Vec<Arg>,
    offset: Option<u64>,
    mxcsr: u32,
    cases: usize,
}

/// Whether the host lets a guest set MXCSR.MM.
fn host_has_misaligned_sse_mode() -> bool {
    /// The legacy FXSAVE region, where MXCSR_MASK is (bytes 28 … 31).
    #[repr(C, align(16))]
    struct FxsaveArea([u8; 512]);
    let mut area = FxsaveArea([0; 512]);
    // SAFETY: `fxsave64` writes exactly 512 bytes to the 16-byte aligned buffer it is given,
    // which is `area`; it changes no register.
    unsafe {
        std::arch::asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack));
    }
    let mask = u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]]);
    mask & MISALIGNED_SSE_MODE != 0
}

/// Every operand combination tested for `code`: register forms with several register choices
/// (one where all general registers coincide) and every imm8, memory forms at the offsets
/// the alignment rule allows.
fn variants(code: Code, rng: &mut Rng) -> Vec<Variant> {
    let kinds = operand_kinds(code);
    let has_imm = kinds.contains(&Kind::Imm8);
    let xmm_memory = kinds.contains(&Kind::XmmOrMem);
    let may_use_memory = kinds
        .iter()
        .any(|kind| matches!(kind, Kind::XmmOrMem | Kind::GprOrMem(_) | Kind::Mem));
    let must_use_memory = kinds.contains(&Kind::Mem);

    let mut placements: Vec<(Option<u64>, u32)> = Vec::new();
    if !must_use_memory {
        placements.push((None, MXCSR_DEFAULT));
    }
    if may_use_memory {
        if xmm_memory {
            placements.extend(ALIGNED_OFFSETS.map(|offset| (Some(offset), MXCSR_DEFAULT)));
            // Misaligned operands where the host accepts them: in misaligned-SSE mode, and
            // the SHA forms on AMD CPUs even without it.
            let lenient = [MXCSR_DEFAULT, MXCSR_DEFAULT | MISALIGNED_SSE_MODE]
                .into_iter()
                .filter(|&mxcsr| mxcsr == MXCSR_DEFAULT || host_has_misaligned_sse_mode())
                .find(|&mxcsr| !crypto::requires_alignment(code, mxcsr, crypto::host_is_amd()));
            if let Some(mxcsr) = lenient {
                placements.extend(MISALIGNED_OFFSETS.map(|offset| (Some(offset), mxcsr)));
            }
        } else {
            placements.extend(GPR_MEMORY_OFFSETS.map(|offset| (Some(offset), MXCSR_DEFAULT)));
        }
    }

    let mut result = Vec::new();
    for (offset, mxcsr) in placements {
        let immediates: Vec<Option<u32>> = match (has_imm, offset) {
            (false, _) => vec![None],
            (true, None) => (0..=255).map(Some).collect(),
            (true, Some(_)) => IMMEDIATES.map(Some).to_vec(),
        };
        // Register choices: random ones, and (register forms) one with all GPRs the same.
        let choices = if has_imm { 1 } else { 4 };
        for immediate in &immediates {
            for choice in 0..choices {
                let same = offset.is_none() && choice == choices - 1 && !has_imm;
                let shared_gpr = rng.pick(&DATA_GPRS);
                let mut register = |size| {
                    let number = if same {
                        shared_gpr
                    } else {
                        rng.pick(&DATA_GPRS)
                    };
                    Arg::Reg(gpr(number, size))
                };
                let mut args = Vec::new();
                for kind in &kinds {
                    args.push(match (*kind, offset) {
                        (Kind::Xmm, _) | (Kind::XmmOrMem, None) => {
                            Arg::Reg(xmm((shared_gpr + args.len() * 5 + choice) % 16))
                        }
                        (Kind::Gpr(size), _) | (Kind::GprOrMem(size), None) => register(size),
                        (Kind::XmmOrMem | Kind::GprOrMem(_) | Kind::Mem, _) => Arg::Mem,
                        (Kind::Imm8, _) => Arg::Imm(immediate.expect("imm8 form")),
                    });
                }
                let cases = match (has_imm, offset) {
                    (true, None) => 4,
                    (true, Some(_)) => 8,
                    (false, _) => 128,
                };
                result.push(Variant {
                    args,
                    offset,
                    mxcsr,
                    cases,
                });
            }
        }
    }
    result
}

// --- The differential harness ------------------------------------------------------------------

/// Runs `bytes`/`decoded` natively and emulated on `cases` random inputs and compares.
fn compare(bytes: &[u8], decoded: &Instruction, variant: &Variant, rng: &mut Rng) {
    let jit = Jit::new(bytes, false);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    let host_base = native_memory.0.as_mut_ptr() as u64;
    let offset = variant.offset.unwrap_or(0);
    for case in 0..variant.cases {
        let inputs = Inputs::new(rng, offset as usize);

        native_memory.0.copy_from_slice(&inputs.memory);
        let mut native = Native {
            xmm: inputs.xmm,
            gprs: inputs.gprs,
            rflags: inputs.rflags,
            mxcsr: variant.mxcsr,
            host_mxcsr: 0,
        };
        native.gprs[MEMORY_BASE] = host_base + offset;
        jit.run(&mut native);

        let mut state = X86State {
            gprs: inputs.gprs,
            rflags: inputs.rflags,
            ..X86State::default()
        };
        state.gprs[MEMORY_BASE] = GUEST_BASE + offset;
        for (n, value) in inputs.xmm.iter().enumerate() {
            state.set_xmm(n, *value);
        }
        state.set_mxcsr(variant.mxcsr);
        let mut memory = FakeMemory {
            base: GUEST_BASE,
            bytes: inputs.memory.clone(),
        };
        let outcome = execute(decoded, &mut state, &mut memory);

        let context = || {
            format!(
                "`{decoded}` ({bytes:02x?}) offset {offset:#x} case {case}, rflags {:#x}, \
                 gprs {:#x?}, xmm {:#x?}",
                inputs.rflags, inputs.gprs, inputs.xmm
            )
        };
        assert_eq!(outcome, Ok(true), "{}", context());
        for n in 0..16 {
            assert_eq!(
                state.xmm(n),
                native.xmm[n],
                "xmm{n} (emulated, native) after {}",
                context()
            );
            let (emulated, expected) = if n == MEMORY_BASE {
                (state.gprs[n] - GUEST_BASE, native.gprs[n] - host_base)
            } else if UNTOUCHED_GPRS.contains(&n) {
                (state.gprs[n], inputs.gprs[n])
            } else {
                (state.gprs[n], native.gprs[n])
            };
            assert_eq!(
                emulated,
                expected,
                "gpr {n} (emulated, native) after {}",
                context()
            );
        }
        assert_eq!(
            state.rflags & ARITHMETIC_FLAGS,
            native.rflags & ARITHMETIC_FLAGS,
            "flags (emulated, native) after {}",
            context()
        );
        assert_eq!(state.mxcsr(), native.mxcsr, "mxcsr after {}", context());
        assert!(
            memory.bytes == native_memory.0,
            "memory differs after {}",
            context()
        );
    }
}

#[test]
fn every_implemented_form_matches_the_host_cpu() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut codes, mut variant_count, mut cases) = (0, 0, 0);
    for code in comparable_codes() {
        codes += 1;
        for variant in variants(code, &mut rng) {
            let (bytes, decoded) = encode(&create(code, &variant.args));
            compare(&bytes, &decoded, &variant, &mut rng);
            variant_count += 1;
            cases += variant.cases;
        }
    }
    println!("{codes} forms, {variant_count} variants, {cases} cases compared with the host CPU");
    assert!(variant_count > 0, "nothing compared");
}

/// Runs `bytes` natively in a child process with RBX at `offset` in a buffer and MXCSR
/// `mxcsr`, and tells whether it faulted (#GP: SIGSEGV or SIGBUS).
fn faults_natively(bytes: &[u8], offset: u64, mxcsr: u32) -> bool {
    let jit = Jit::new(bytes, false);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    let mut native = Native {
        rflags: 0x2,
        mxcsr,
        ..Native::default()
    };
    native.gprs[MEMORY_BASE] = native_memory.0.as_mut_ptr() as u64 + offset;
    runs_into_a_fault(&jit, native)
}

/// Every form with a memory operand, misaligned: the emulator raises #GP exactly where the
/// host CPU faults, with MXCSR.MM clear and, where the host has it, set.
#[test]
fn alignment_rules_match_the_host_cpu() {
    let mut mxcsr_choices = vec![MXCSR_DEFAULT];
    if host_has_misaligned_sse_mode() {
        mxcsr_choices.push(MXCSR_DEFAULT | MISALIGNED_SSE_MODE);
    }
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let (mut checked, mut faulting) = (0, 0);
    let mut mismatches = Vec::new();
    for code in comparable_codes() {
        let kinds = operand_kinds(code);
        if !kinds
            .iter()
            .any(|kind| matches!(kind, Kind::XmmOrMem | Kind::GprOrMem(_) | Kind::Mem))
        {
            continue;
        }
        let args: Vec<Arg> = kinds
            .iter()
            .map(|kind| match kind {
                Kind::Xmm => Arg::Reg(xmm(rng.below(16) as usize)),
                Kind::Gpr(size) => Arg::Reg(gpr(rng.pick(&DATA_GPRS), *size)),
                Kind::Imm8 => Arg::Imm(1),
                _ => Arg::Mem,
            })
            .collect();
        let (bytes, decoded) = encode(&create(code, &args));
        for &mxcsr in &mxcsr_choices {
            let faults = faults_natively(&bytes, 0x103, mxcsr);
            let mut state = X86State::default();
            state.set_mxcsr(mxcsr);
            state.gprs[MEMORY_BASE] = GUEST_BASE + 0x103;
            let before = state.clone();
            let mut memory = FakeMemory::new(GUEST_BASE, MEMORY_SIZE, 0);
            let outcome = execute(&decoded, &mut state, &mut memory);
            let emulated_gp = matches!(
                outcome,
                Err(EmulationError::GuestException {
                    exception: "#GP",
                    ..
                })
            );
            if emulated_gp != faults {
                mismatches.push(format!(
                    "{code:?} (`{decoded}`, MXCSR {mxcsr:#x}): host faults: {faults}, \
                     emulated: {outcome:?}"
                ));
            }
            if emulated_gp {
                assert_eq!(state, before, "{decoded}: a #GP changes nothing");
                faulting += 1;
            }
            checked += 1;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    println!(
        "alignment rule checked {checked} times ({} forms × {} MXCSR modes), {faulting} #GP",
        checked / mxcsr_choices.len(),
        mxcsr_choices.len()
    );
}
