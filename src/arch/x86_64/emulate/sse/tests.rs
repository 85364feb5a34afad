//! Tests of the SSE emulator: a differential harness that runs every implemented instruction
//! form natively (JIT-assembled around the instruction bytes) and through [`execute`] on the
//! same inputs (every imm8 value of the register forms, memory operands misaligned and across a
//! page boundary where allowed), a check of the alignment rule of every form against the host
//! CPU, expectation tests with hand-computed results (SSE/SSE2 here, the later extensions in
//! `extension_expectations`), negative tests and a coverage test over the real Hermit images.

mod extension_expectations;

use iced_x86::code_asm::{self, CodeAssembler};
use iced_x86::{Code, CpuidFeature, Decoder, DecoderOptions, Instruction, MemoryOperand, Register};

use super::super::native_harness::{
    DATA_GPRS, GUEST_BASE, GUEST_RIP, Jit, MEMORY_SIZE, Native, NativeMemory, Rng, UNTOUCHED_GPRS,
    encode, gpr, runs_into_a_fault, xmm,
};
use super::super::state::MXCSR_DEFAULT;
use super::super::testing::FakeMemory;
use super::*;

/// The arithmetic flags compared (OF, SF, ZF, AF, PF, CF).
const ARITHMETIC_FLAGS: u64 = 0x8d5;

// --- Native execution ------------------------------------------------------------------------

// --- Inputs ----------------------------------------------------------------------------------

/// Edge-case doubles: zeros, denormals, infinities, NaNs with payloads, conversion limits.
const F64_EDGES: [u64; 30] = [
    0x0000_0000_0000_0000,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000, // 1.0
    0xbff8_0000_0000_0000, // -1.5
    0x4004_0000_0000_0000, // 2.5
    0x3fb9_9999_9999_999a, // 0.1
    0x3fd5_5555_5555_5555, // 1/3
    0x4620_1ceb_3ae6_2fa9, // ~1e30
    0xc620_1ceb_3ae6_2fa9,
    0x7fef_ffff_ffff_ffff, // MAX
    0x0010_0000_0000_0000, // MIN_POSITIVE
    0x0000_0000_0000_0001, // smallest denormal
    0x800f_ffff_ffff_ffff, // largest negative denormal
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_1234, // quiet NaN with payload
    0x7ff0_0000_0000_5678, // signalling NaN with payload
    0xfff8_0000_0000_0000, // negative quiet NaN (indefinite)
    0x43e0_0000_0000_0000, // 2^63
    0xc3e0_0000_0000_0000, // -2^63
    0x41df_ffff_ffe0_0000, // 2147483647.5
    0xc1e0_0000_0010_0000, // -2147483648.5
    0x41e0_0000_0000_0000, // 2^31
    0x4330_0000_0000_0001, // 2^52 + 1
    0x3fe0_0000_0000_0000, // 0.5
    0xbfe0_0000_0000_0000, // -0.5
    0x400c_0000_0000_0000, // 3.5
    0x47ef_ffff_e000_0000, // f32::MAX as f64
    0x47ef_ffff_f000_0000, // just above f32::MAX (rounding-dependent overflow)
    0x37a0_0000_0000_0001, // below the f32 denormal range
];

/// Edge-case floats, same spirit as [`F64_EDGES`].
const F32_EDGES: [u32; 24] = [
    0x0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0xbfc0_0000,
    0x4020_0000,
    0x3dcc_cccd,
    0x7149_f2ca,
    0xf149_f2ca,
    0x7f7f_ffff,
    0x0080_0000,
    0x0000_0001,
    0x807f_ffff,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_1234,
    0x7f80_5678,
    0xffc0_0000,
    0x4f00_0000,
    0xcf00_0000,
    0x5f00_0000,
    0x3f00_0000,
    0xbf00_0000,
    0x4060_0000,
    0x4b80_0001,
];

/// Edge-case integers for conversions and general registers.
const INT_EDGES: [u64; 12] = [
    0,
    1,
    u64::MAX,
    0x7fff_ffff,
    0xffff_ffff_8000_0000,
    0x8000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    (1 << 53) + 1,
    0x7fff_ffff_ffff_fc00,
    0xffff_ffff,
    0x0123_4567_89ab_cdef,
];

/// A 128-bit input of a random flavour (random bits, doubles, floats, saturation bytes).
fn value(rng: &mut Rng) -> u128 {
    match rng.next() % 5 {
        0 => u128::from(rng.next()) | (u128::from(rng.next()) << 64),
        1 => u128::from(rng.pick(&F64_EDGES)) | (u128::from(rng.pick(&F64_EDGES)) << 64),
        2 => (0..4).fold(0, |acc, i| {
            acc | (u128::from(rng.pick(&F32_EDGES)) << (32 * i))
        }),
        3 => u128::from(rng.pick(&F64_EDGES)) | (u128::from(rng.pick(&INT_EDGES)) << 64),
        _ => (0..16).fold(0, |acc, i| {
            acc | (u128::from(rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, 0xfe])) << (8 * i))
        }),
    }
}

/// One set of inputs.
#[derive(Clone)]
struct Inputs {
    xmm: [u128; 16],
    gprs: [u64; 16],
    rflags: u64,
    mxcsr: u32,
    memory: Vec<u8>,
}

/// Random memory contents shared by all cases (generating 8 KiB per case would dominate the
/// run time); each case re-randomises the bytes around its memory operand.
fn base_memory() -> &'static [u8] {
    static MEMORY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut memory = Vec::with_capacity(MEMORY_SIZE);
        while memory.len() < MEMORY_SIZE {
            memory.extend_from_slice(&value(&mut rng).to_le_bytes());
        }
        memory
    })
}

/// String lengths for the explicit-length string compares: mostly small, some saturating.
const LENGTHS: [u64; 12] = [
    0,
    1,
    7,
    8,
    9,
    16,
    17,
    0xffff_ffff, // -1 as a 32-bit length, 2^32 - 1 as a 64-bit one
    0xffff_fff0, // -16
    0x8000_0000, // i32::MIN
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_fffb, // -5
];

impl Inputs {
    /// Case `case`: rounding mode, DAZ and FTZ cycle with the case number; exceptions masked.
    /// The memory around `offset` is fresh; `setup` adapts the general registers to the form.
    fn new(rng: &mut Rng, case: u32, offset: usize, setup: Setup) -> Self {
        let mut xmm = [0; 16];
        xmm.iter_mut().for_each(|x| *x = value(rng));
        let mut gprs = [0; 16];
        gprs.iter_mut().for_each(|g| {
            *g = if rng.next().is_multiple_of(2) {
                rng.pick(&INT_EDGES)
            } else {
                rng.next()
            }
        });
        if setup.string_lengths {
            for number in [0, 2] {
                gprs[number] = if rng.next().is_multiple_of(2) {
                    rng.pick(&LENGTHS)
                } else {
                    (rng.next() % 40).wrapping_sub(20)
                };
            }
        }
        let mut memory = base_memory().to_vec();
        let window = offset.saturating_sub(16)..(offset + 48).min(MEMORY_SIZE);
        for chunk in memory[window].chunks_mut(16) {
            let fresh = value(rng).to_le_bytes();
            chunk.copy_from_slice(&fresh[..chunk.len()]);
        }
        let mxcsr = 0x1f80
            | ((case & 3) << 13)
            | if case & 4 != 0 { 0x40 } else { 0 }
            | if case & 8 != 0 { 0x8000 } else { 0 }
            | (rng.next() as u32 & 0x3f & if case & 16 != 0 { 0x3f } else { 0 });
        let rflags = 0x2 | (rng.next() & ARITHMETIC_FLAGS);
        Self {
            xmm,
            gprs,
            rflags,
            mxcsr,
            memory,
        }
    }
}

// --- Building test instructions ---------------------------------------------------------------

/// An operand to create an instruction with.
#[derive(Debug, Clone, Copy)]
enum Arg {
    Reg(Register),
    Mem(MemoryOperand),
    Imm(u32),
}

fn create(code: Code, args: &[Arg]) -> Instruction {
    use Arg::{Imm, Mem, Reg};
    let created = match *args {
        [Reg(a), Reg(b)] if code == Code::Maskmovdqu_rDI_xmm_xmm => {
            Instruction::with_maskmovdqu(64, a, b, Register::None)
        }
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(a)] => Instruction::with1(code, a),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(b)] => Instruction::with2(code, a, b),
        [Mem(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Imm(b)] => Instruction::with2(code, a, b),
        [Reg(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, c),
        [Mem(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, c),
        [Reg(a), Mem(b), Imm(c)] => Instruction::with3(code, a, b, c),
        _ => panic!("{code:?}: no constructor for {args:?}"),
    };
    created.unwrap_or_else(|error| panic!("{code:?} {args:?}: {error}"))
}

/// Immediates tried for the memory forms of imm8 forms (the register forms try all 256):
/// shift counts around lane widths, shuffle patterns, every predicate, rounding mode and
/// string-compare aggregation.
const IMMEDIATES: [u32; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0c, 15, 16, 17, 0x1a, 0x1b, 31, 32, 0x3c, 0x4e, 63, 64, 0x71,
    0xb1, 0xff,
];

/// The operand kinds of a form, as far as the harness needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Xmm,
    XmmOrMem,
    /// A general register of the given size in bytes.
    Gpr(usize),
    /// A general register of the given size or memory (of the size the form reads).
    GprOrMem(usize),
    Mem,
    /// The memory at DS:RDI (maskmovdqu).
    RdiMemory,
    Imm8,
}

/// The operand kinds of `code`, read from its iced name (`Addsd_xmm_xmmm64`, `Movd_rm32_xmm`,
/// `Pinsrb_xmm_r32m8_imm8`, `Crc32_r64_rm8`, `Maskmovdqu_rDI_xmm_xmm`, …); the crate is built
/// without iced's op-code tables.
fn operand_kinds(code: Code) -> Vec<Kind> {
    format!("{code:?}")
        .split('_')
        .skip(1)
        // `Lfence_E9`: the ModRM byte of an alias encoding, not an operand.
        .filter(|token| {
            !token
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        })
        .map(|token| match token {
            "xmm" => Kind::Xmm,
            "r16" => Kind::Gpr(2),
            "r32" => Kind::Gpr(4),
            "r64" => Kind::Gpr(8),
            "rm8" => Kind::GprOrMem(1),
            "rm16" => Kind::GprOrMem(2),
            "rm32" | "r32m8" | "r32m16" => Kind::GprOrMem(4),
            "rm64" | "r64m8" | "r64m16" | "r64m32" => Kind::GprOrMem(8),
            "rDI" => Kind::RdiMemory,
            "imm8" => Kind::Imm8,
            _ if token.starts_with("xmmm") => Kind::XmmOrMem,
            _ if token.starts_with('m') => Kind::Mem,
            _ => panic!("{code:?}: operand `{token}` not handled by the harness"),
        })
        .collect()
}

/// What the harness must arrange for a form beyond its explicit operands.
#[derive(Debug, Clone, Copy, Default)]
struct Setup {
    /// RDI addresses the memory (maskmovdqu).
    rdi_is_memory: bool,
    /// RAX and RDX are explicit string lengths (pcmpestr*): mostly small values.
    string_lengths: bool,
}

impl Setup {
    fn of(code: Code) -> Self {
        Self {
            rdi_is_memory: operand_kinds(code).contains(&Kind::RdiMemory),
            string_lengths: matches!(
                string_compare_form(code),
                Some(StringCompare {
                    lengths: Lengths::Explicit { .. },
                    ..
                })
            ),
        }
    }
}

/// Memory operand offsets from the start of the buffer: aligned, misaligned, and straddling
/// the 4 KiB boundary in the middle of the buffer.
const MEMORY_OFFSETS: [u64; 5] = [0x100, 0x103, 0xffa, 0xffc, 0xff0];

/// One instruction to compare: its operands, its memory operand's offset (None: register form)
/// and the MXCSR cases to run.
struct Variant {
    args: Vec<Arg>,
    offset: Option<u64>,
    cases: Vec<u32>,
}

/// Every operand combination tested for `code`: register forms with every imm8 value (8 cases
/// each: every DAZ × FTZ × sticky-flag combination over random rounding modes), and memory
/// forms at [`MEMORY_OFFSETS`] with the [`IMMEDIATES`] (all 32 MXCSR cases each); register
/// numbers vary with `seed` and the imm8.
fn forms(code: Code, seed: usize, rng: &mut Rng) -> Vec<Variant> {
    let kinds = operand_kinds(code);
    let has_imm = kinds.contains(&Kind::Imm8);
    let has_memory = kinds.iter().any(|kind| {
        matches!(
            kind,
            Kind::Mem | Kind::XmmOrMem | Kind::GprOrMem(_) | Kind::RdiMemory
        )
    });
    let must_use_memory = kinds.contains(&Kind::Mem) || kinds.contains(&Kind::RdiMemory);
    let mut memory_choices: Vec<Option<u64>> = if must_use_memory { vec![] } else { vec![None] };
    if has_memory {
        memory_choices.extend(MEMORY_OFFSETS.map(Some));
    }
    let mut result = Vec::new();
    for (index, memory) in memory_choices.iter().enumerate() {
        let immediates: Vec<Option<u32>> = match (has_imm, memory) {
            (false, _) => vec![None],
            (true, None) => (0..=255).map(Some).collect(),
            (true, Some(_)) => IMMEDIATES.iter().map(|&i| Some(i)).collect(),
        };
        let sweep = has_imm && memory.is_none();
        for immediate in &immediates {
            let mut args = Vec::new();
            for (position, kind) in kinds.iter().enumerate() {
                let pick = seed + 7 * index + 3 * position + immediate.unwrap_or(0) as usize;
                let memory_operand = || Arg::Mem(MemoryOperand::with_base_displ(Register::RBX, 0));
                let register = |size| Arg::Reg(gpr(DATA_GPRS[pick % DATA_GPRS.len()], size));
                match *kind {
                    Kind::Xmm => args.push(Arg::Reg(xmm(pick % 16))),
                    Kind::XmmOrMem if memory.is_none() => args.push(Arg::Reg(xmm(pick % 16))),
                    Kind::Gpr(size) => args.push(register(size)),
                    Kind::GprOrMem(size) if memory.is_none() => args.push(register(size)),
                    Kind::XmmOrMem | Kind::GprOrMem(_) | Kind::Mem => args.push(memory_operand()),
                    Kind::RdiMemory => {}
                    Kind::Imm8 => args.push(Arg::Imm(immediate.expect("imm8 form"))),
                }
            }
            let cases = if sweep {
                (0..8).map(|k| 4 * k + (rng.next() % 4) as u32).collect()
            } else {
                (0..CASES).collect()
            };
            result.push(Variant {
                args,
                offset: *memory,
                cases,
            });
        }
    }
    result
}

// --- The differential harness ------------------------------------------------------------------

/// Cases per memory form: covers all rounding modes × DAZ × FTZ × sticky flags.
const CASES: u32 = 32;

/// Runs `bytes`/`decoded` natively and emulated on the same inputs for each of `cases` and
/// compares the results.
fn compare(bytes: &[u8], decoded: &Instruction, offset: Option<u64>, cases: &[u32], rng: &mut Rng) {
    let setup = Setup::of(decoded.code());
    let jit = Jit::new(bytes, setup.rdi_is_memory);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    let host_base = native_memory.0.as_mut_ptr() as u64;
    let offset = offset.unwrap_or(0);
    for &case in cases {
        let inputs = Inputs::new(rng, case, offset as usize, setup);

        native_memory.0.copy_from_slice(&inputs.memory);
        let mut native = Native {
            xmm: inputs.xmm,
            gprs: inputs.gprs,
            rflags: inputs.rflags,
            mxcsr: inputs.mxcsr,
            host_mxcsr: 0,
        };
        native.gprs[3] = host_base + offset;
        jit.run(&mut native);

        let mut state = X86State {
            gprs: inputs.gprs,
            rflags: inputs.rflags,
            ..X86State::default()
        };
        state.gprs[3] = GUEST_BASE + offset;
        if setup.rdi_is_memory {
            state.gprs[7] = GUEST_BASE + offset;
        }
        for (n, value) in inputs.xmm.iter().enumerate() {
            state.set_xmm(n, *value);
        }
        state.set_mxcsr(inputs.mxcsr);
        let mut memory = FakeMemory {
            base: GUEST_BASE,
            bytes: inputs.memory.clone(),
        };
        let outcome = execute(decoded, &mut state, &mut memory);

        let context = || {
            format!(
                "`{decoded}` ({bytes:02x?}) offset {offset:#x} case {case}, mxcsr {:#x}, \
                 rflags {:#x}, xmm {:#x?}, gprs {:#x?}",
                inputs.mxcsr, inputs.rflags, inputs.xmm, inputs.gprs
            )
        };
        assert_eq!(outcome, Ok(true), "{}", context());
        for n in 0..16 {
            if state.xmm(n) != native.xmm[n] {
                panic!(
                    "xmm{n}: emulated {:#x}, native {:#x} after {}",
                    state.xmm(n),
                    native.xmm[n],
                    context()
                );
            }
            let (emulated, expected) = if n == 3 {
                (state.gprs[n] - GUEST_BASE, native.gprs[n] - host_base)
            } else if n == 7 && setup.rdi_is_memory {
                (state.gprs[n], GUEST_BASE + offset)
            } else if UNTOUCHED_GPRS.contains(&n) {
                (state.gprs[n], inputs.gprs[n])
            } else {
                (state.gprs[n], native.gprs[n])
            };
            if emulated != expected {
                panic!(
                    "gpr {n}: emulated {emulated:#x}, native {expected:#x} after {}",
                    context()
                );
            }
        }
        if state.rflags & ARITHMETIC_FLAGS != native.rflags & ARITHMETIC_FLAGS {
            panic!(
                "rflags: emulated {:#x}, native {:#x} after {}",
                state.rflags,
                native.rflags,
                context()
            );
        }
        if state.mxcsr() != native.mxcsr {
            panic!(
                "mxcsr: emulated {:#x}, native {:#x} after {}",
                state.mxcsr(),
                native.mxcsr,
                context()
            );
        }
        if memory.bytes != native_memory.0 {
            let first = (0..MEMORY_SIZE)
                .find(|&i| memory.bytes[i] != native_memory.0[i])
                .unwrap_or(0);
            panic!("memory differs from byte {first:#x} after {}", context());
        }
    }
}

/// Every implemented form, except `ldmxcsr` (random memory would fault natively).
/// Only forms the host CPU can run natively are compared (all of them on the CI machines).
fn implemented_codes() -> impl Iterator<Item = Code> {
    Code::values()
        .filter(|&code| semantics(code).is_some() && code != Code::Ldmxcsr_m32 && host_runs(code))
}

/// Whether the host CPU has every CPUID feature `code` needs.
fn host_runs(code: Code) -> bool {
    code.cpuid_features().iter().all(|feature| match feature {
        CpuidFeature::SSE3 => std::arch::is_x86_feature_detected!("sse3"),
        CpuidFeature::SSSE3 => std::arch::is_x86_feature_detected!("ssse3"),
        CpuidFeature::SSE4_1 => std::arch::is_x86_feature_detected!("sse4.1"),
        CpuidFeature::SSE4_2 => std::arch::is_x86_feature_detected!("sse4.2"),
        CpuidFeature::POPCNT => std::arch::is_x86_feature_detected!("popcnt"),
        // SSE and SSE2 are part of x86_64.
        _ => true,
    })
}

/// Whether the memory variant at `offset` of `code` may run natively: a 16-byte operand of a
/// form that requires alignment would fault (that rule is checked separately).
fn runs_natively(code: Code, decoded: &Instruction, offset: Option<u64>) -> bool {
    match offset {
        Some(offset) => {
            decoded.memory_size().size() != 16 || allows_unaligned(code) || offset % 16 == 0
        }
        None => true,
    }
}

#[test]
fn every_implemented_form_matches_the_host_cpu() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut variants, mut cases) = (0, 0);
    for (seed, code) in implemented_codes().enumerate() {
        for variant in forms(code, seed, &mut rng) {
            let (bytes, decoded) = encode(&create(code, &variant.args));
            if !runs_natively(code, &decoded, variant.offset) {
                continue;
            }
            compare(&bytes, &decoded, variant.offset, &variant.cases, &mut rng);
            variants += 1;
            cases += variant.cases.len();
        }
    }
    assert!(variants > 10_000, "only {variants} variants tested");
    println!("{variants} instruction variants, {cases} cases compared with the host CPU");
}

/// `crc32` with the byte registers AH, CH and DH (the generated forms use AL … R15L; BH is
/// part of the memory base RBX, which differs between the runs, see the expectation tests).
#[test]
fn high_byte_registers_match_the_host_cpu() {
    if !host_runs(Code::Crc32_r32_rm8) {
        println!("skipped: the host has no SSE4.2");
        return;
    }
    use code_asm::{ah, ch, dh, eax, ecx, edx, esi};
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for instruction in [
        assemble(|a| a.crc32(ecx, ah)),
        assemble(|a| a.crc32(edx, ch)),
        assemble(|a| a.crc32(esi, dh)),
        assemble(|a| a.crc32(eax, dh)),
    ] {
        let (bytes, decoded) = encode(&instruction);
        compare(&bytes, &decoded, None, &[0, 1, 2, 3], &mut rng);
    }
}

/// Runs the JIT-compiled `bytes` natively in a child process on `native` (RBX pointing at a
/// copy of `memory` plus `offset`) and tells whether it faulted (#GP: SIGSEGV).
fn faults_natively(bytes: &[u8], setup: Setup, mut native: Native, offset: u64) -> bool {
    let jit = Jit::new(bytes, setup.rdi_is_memory);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    native_memory.0.copy_from_slice(base_memory());
    native.gprs[3] = native_memory.0.as_mut_ptr() as u64 + offset;
    runs_into_a_fault(&jit, native)
}

/// Every form whose memory operand is 16 bytes (and maskmovdqu) with a misaligned operand:
/// the emulator raises #GP exactly where the host CPU faults, with MXCSR's misaligned-SSE mode
/// (AMD's MM bit) clear and, where the host has it, set.
#[test]
fn alignment_rules_match_the_host_cpu() {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut mxcsr_choices = vec![MXCSR_DEFAULT];
    if float::host_mxcsr_mask() & MISALIGNED_SSE_MODE != 0 {
        mxcsr_choices.push(MXCSR_DEFAULT | MISALIGNED_SSE_MODE);
    }
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (seed, code) in implemented_codes().enumerate() {
        let Some(variant) = forms(code, seed, &mut rng)
            .into_iter()
            .find(|variant| variant.offset == Some(0x103))
        else {
            continue;
        };
        let (bytes, decoded) = encode(&create(code, &variant.args));
        let setup = Setup::of(code);
        if decoded.memory_size().size() != 16 && !setup.rdi_is_memory {
            continue;
        }
        for &mxcsr in &mxcsr_choices {
            let inputs = Inputs::new(&mut rng, 0, 0x103, setup);
            let native = Native {
                xmm: inputs.xmm,
                gprs: inputs.gprs,
                rflags: inputs.rflags,
                mxcsr,
                host_mxcsr: 0,
            };
            let faults = faults_natively(&bytes, setup, native, 0x103);

            let mut state = X86State {
                gprs: inputs.gprs,
                ..X86State::default()
            };
            state.set_mxcsr(mxcsr);
            state.gprs[3] = GUEST_BASE + 0x103;
            state.gprs[7] = GUEST_BASE + 0x103;
            for (n, value) in inputs.xmm.iter().enumerate() {
                state.set_xmm(n, *value);
            }
            let mut memory = FakeMemory {
                base: GUEST_BASE,
                bytes: base_memory().to_vec(),
            };
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
                    "{code:?} (`{decoded}`, MXCSR {mxcsr:#x}): host faults: {faults}, emulated: \
                     {outcome:?}"
                ));
            }
            checked += 1;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(checked > 150, "only {checked} forms checked");
    println!("alignment rule of {checked} forms × MXCSR modes checked");
}

// --- Expectation tests (hand-computed results, independent of the host) -------------------------

/// Decodes a single instruction from `bytes` at [`GUEST_RIP`].
fn decode(bytes: &[u8]) -> Instruction {
    let instruction = Decoder::with_ip(64, bytes, GUEST_RIP, DecoderOptions::NONE).decode();
    assert_ne!(instruction.code(), Code::INVALID, "{bytes:02x?}");
    instruction
}

/// Assembles one instruction with iced's code assembler and decodes it.
fn assemble(
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Instruction {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut a).expect("assemble");
    decode(&a.assemble(GUEST_RIP).expect("assemble"))
}

fn memory() -> FakeMemory {
    FakeMemory {
        base: GUEST_BASE,
        bytes: vec![0; MEMORY_SIZE],
    }
}

/// Executes `instruction` and expects it to be implemented and to succeed.
fn run(instruction: &Instruction, state: &mut X86State, memory: &mut FakeMemory) {
    assert_eq!(
        execute(instruction, state, memory),
        Ok(true),
        "{instruction}"
    );
}

#[test]
fn movsd_loads_zero_extend_and_register_moves_merge() {
    use code_asm::{qword_ptr, rbx, xmm0, xmm1};
    let mut state = X86State::default();
    let mut memory = memory();
    state.gprs[3] = GUEST_BASE + 0xffc;
    memory.bytes[0xffc..0x1004].copy_from_slice(&1.5f64.to_le_bytes());
    state.set_xmm(0, u128::MAX);
    run(
        &assemble(|a| a.movsd_2(xmm0, qword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(0), u128::from(1.5f64.to_bits()));

    state.set_xmm(1, (7 << 64) | u128::from(2.0f64.to_bits()));
    state.set_xmm(0, 9 << 64);
    run(
        &assemble(|a| a.movsd_2(xmm0, xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(0), (9 << 64) | u128::from(2.0f64.to_bits()));

    run(
        &assemble(|a| a.movsd_2(qword_ptr(rbx), xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[0xffc..0x1004], 2.0f64.to_le_bytes());
    assert_eq!(memory.bytes[0x1004], 0, "movsd m64 writes exactly 8 bytes");
}

#[test]
fn ucomisd_sets_zf_pf_cf_and_clears_of_sf_af() {
    use code_asm::{xmm0, xmm1};
    let ucomisd = assemble(|a| a.ucomisd(xmm0, xmm1));
    let cases = [
        (1.0, 2.0, 0x01),      // less: CF
        (2.0, 1.0, 0x00),      // greater
        (1.0, 1.0, 0x40),      // equal: ZF
        (f64::NAN, 1.0, 0x45), // unordered: ZF PF CF
        (0.0, -0.0, 0x40),     // +0 == -0
    ];
    for (a, b, flags) in cases {
        let mut state = X86State {
            rflags: 0x2 | 0x8d5,
            ..X86State::default()
        };
        state.set_xmm(0, u128::from(f64::to_bits(a)));
        state.set_xmm(1, u128::from(f64::to_bits(b)));
        run(&ucomisd, &mut state, &mut memory());
        assert_eq!(state.rflags, 0x2 | flags, "ucomisd {a} {b}");
        assert_eq!(
            state.mxcsr(),
            MXCSR_DEFAULT,
            "a quiet NaN raises nothing in ucomisd"
        );
    }
    // A signalling NaN raises IE in ucomisd; a quiet one raises IE in comisd only.
    let mut state = X86State::default();
    state.set_xmm(0, 0x7ff0_0000_0000_0001);
    run(&ucomisd, &mut state, &mut memory());
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 1);
    let mut state = X86State::default();
    state.set_xmm(0, u128::from(f64::NAN.to_bits()));
    run(
        &assemble(|a| a.comisd(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 1);
}

#[test]
fn conversions_give_integer_indefinite_and_set_invalid() {
    use code_asm::{eax, rax, rcx, xmm0, xmm1};
    let mut state = X86State::default();
    state.gprs[0] = 0xdead_beef_dead_beef;
    state.set_xmm(1, u128::from(1e30f64.to_bits()));
    run(
        &assemble(|a| a.cvttsd2si(rax, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.gprs[0], 0x8000_0000_0000_0000);
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 1, "IE");
    run(
        &assemble(|a| a.cvttsd2si(eax, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.gprs[0], 0x8000_0000, "r32 result zero-extends");

    // cvtsi2sd: 2^53 + 1 rounds to even (PE set) under round-to-nearest, merges the upper half.
    let mut state = X86State::default();
    state.gprs[1] = (1 << 53) + 1;
    state.set_xmm(0, 5 << 64);
    run(
        &assemble(|a| a.cvtsi2sd(xmm0, rcx)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(
        state.xmm(0),
        (5 << 64) | u128::from(9_007_199_254_740_992f64.to_bits())
    );
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 0x20, "PE");
    // … and up under round-up.
    state.set_mxcsr(MXCSR_DEFAULT | (2 << 13));
    run(
        &assemble(|a| a.cvtsi2sd(xmm0, rcx)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0) as u64, 9_007_199_254_740_994f64.to_bits());
}

#[test]
fn denormals_follow_daz_and_ftz() {
    use code_asm::{xmm0, xmm1};
    let mulsd = assemble(|a| a.mulsd(xmm0, xmm1));
    let tiny = f64::from_bits(1); // smallest denormal
    for (mxcsr, expected, flags) in [
        (MXCSR_DEFAULT, tiny.to_bits(), 0x02), // DE: a denormal operand
        (MXCSR_DEFAULT | 0x40, 0, 0x00),       // DAZ: operand read as 0
    ] {
        let mut state = X86State::default();
        state.set_mxcsr(mxcsr);
        state.set_xmm(0, u128::from(tiny.to_bits()));
        state.set_xmm(1, u128::from(1.0f64.to_bits()));
        run(&mulsd, &mut state, &mut memory());
        assert_eq!(state.xmm(0), u128::from(expected), "mxcsr {mxcsr:#x}");
        assert_eq!(state.mxcsr(), mxcsr | flags, "mxcsr {mxcsr:#x}");
    }
    // FTZ: a tiny result becomes +0 with UE and PE set.
    let mut state = X86State::default();
    state.set_mxcsr(MXCSR_DEFAULT | 0x8000);
    state.set_xmm(0, u128::from(f64::MIN_POSITIVE.to_bits()));
    state.set_xmm(1, u128::from(0.5f64.to_bits()));
    run(&mulsd, &mut state, &mut memory());
    assert_eq!(state.xmm(0), 0);
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 0x8000 | 0x30);
}

#[test]
fn memory_operands_use_rip_relative_32_bit_and_segment_addressing() {
    let mut memory = memory();
    memory.bytes[0x100..0x108].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());

    // movq xmm0, [rip + disp32]: F3 0F 7E 05 disp32 (8 bytes long).
    let disp = (GUEST_BASE + 0x100 - (GUEST_RIP + 8)) as u32;
    let mut bytes = vec![0xf3, 0x0f, 0x7e, 0x05];
    bytes.extend_from_slice(&disp.to_le_bytes());
    let mut state = X86State::default();
    run(&decode(&bytes), &mut state, &mut memory);
    assert_eq!(state.xmm(0), 0x1122_3344_5566_7788);

    // movq xmm1, [ebx] (address-size override): only EBX's low 32 bits count.
    let mut state = X86State::default();
    state.gprs[3] = 0xffff_ffff_0000_0000 | (GUEST_BASE + 0x100);
    run(
        &decode(&[0x67, 0xf3, 0x0f, 0x7e, 0x0b]),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(1), 0x1122_3344_5566_7788);

    // movq xmm2, fs:[rbx]: FS base added; GS likewise.
    for (prefix, register) in [(0x64u8, 2usize), (0x65, 3)] {
        let mut state = X86State {
            fs_base: GUEST_BASE,
            gs_base: GUEST_BASE,
            ..X86State::default()
        };
        state.gprs[3] = 0x100;
        let modrm = 0x03 | ((register as u8) << 3);
        run(
            &decode(&[prefix, 0xf3, 0x0f, 0x7e, modrm]),
            &mut state,
            &mut memory,
        );
        assert_eq!(state.xmm(register), 0x1122_3344_5566_7788);
    }
}

#[test]
fn mxcsr_loads_and_stores() {
    use code_asm::{dword_ptr, rbx};
    let mut state = X86State::default();
    let mut memory = memory();
    state.gprs[3] = GUEST_BASE;
    memory.bytes[..4].copy_from_slice(&0x9fc1u32.to_le_bytes());
    run(
        &assemble(|a| a.ldmxcsr(dword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.mxcsr(), 0x9fc1);
    run(
        &assemble(|a| a.stmxcsr(dword_ptr(rbx + 8))),
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[8..12], 0x9fc1u32.to_le_bytes());

    // Reserved bits: #GP, MXCSR unchanged.
    memory.bytes[..4].copy_from_slice(&0x1_1f80u32.to_le_bytes());
    let result = execute(
        &assemble(|a| a.ldmxcsr(dword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert!(
        matches!(
            result,
            Err(EmulationError::GuestException {
                exception: "#GP",
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(state.mxcsr(), 0x9fc1);

    // A guest whose MXCSR_MASK lacks DAZ may not set it.
    state.xsave[MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4].copy_from_slice(&0xffbfu32.to_le_bytes());
    memory.bytes[..4].copy_from_slice(&0x1fc0u32.to_le_bytes());
    let result = execute(
        &assemble(|a| a.ldmxcsr(dword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert!(
        matches!(
            result,
            Err(EmulationError::GuestException {
                exception: "#GP",
                ..
            })
        ),
        "{result:?}"
    );
}

// --- Negative tests ----------------------------------------------------------------------------

#[test]
fn misaligned_m128_operands_raise_gp_except_for_unaligned_moves() {
    use code_asm::{rbx, xmm0, xmmword_ptr};
    let mut memory = memory();
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 8;
    let before = state.clone();
    let aligned_only: [Instruction; 4] = [
        assemble(|a| a.movaps(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.movdqa(xmmword_ptr(rbx), xmm0)),
        assemble(|a| a.pxor(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.addpd(xmm0, xmmword_ptr(rbx))),
    ];
    for instruction in &aligned_only {
        let result = execute(instruction, &mut state, &mut memory);
        assert!(
            matches!(
                result,
                Err(EmulationError::GuestException {
                    exception: "#GP",
                    ..
                })
            ),
            "{instruction}: {result:?}"
        );
        assert_eq!(state, before);
        assert!(memory.bytes.iter().all(|&b| b == 0));
    }
    memory.bytes[8] = 0x42;
    run(
        &assemble(|a| a.movups(xmm0, xmmword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(0), 0x42);
    state.gprs[3] = GUEST_BASE + 0xff9;
    run(
        &assemble(|a| a.movdqu(xmmword_ptr(rbx), xmm0)),
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[0xff9], 0x42);
}

#[test]
fn unmasked_exception_raises_xm_and_changes_nothing() {
    use code_asm::{xmm0, xmm1};
    let divsd = assemble(|a| a.divsd(xmm0, xmm1));
    let mut state = X86State::default();
    state.set_mxcsr(MXCSR_DEFAULT & !0x200); // ZM unmasked
    state.set_xmm(0, u128::from(1.0f64.to_bits()));
    let before = state.clone();
    let result = execute(&divsd, &mut state, &mut memory());
    assert!(
        matches!(
            result,
            Err(EmulationError::GuestException {
                exception: "#XM",
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(state, before);

    // The same division with ZM masked: +inf and ZE set.
    state.set_mxcsr(MXCSR_DEFAULT);
    run(&divsd, &mut state, &mut memory());
    assert_eq!(state.xmm(0), u128::from(f64::INFINITY.to_bits()));
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 0x4);
}

/// An exact tiny result (a denormal + 0): with UM unmasked the hardware traps (#XM) although the
/// all-masked operation raises no UE; with UM masked it completes without UE (found by the
/// `x86_emulator` fuzz target, `fuzz/corpus/x86_emulator/regression-exact-tiny-underflow`).
#[test]
fn exact_tiny_result_traps_only_with_underflow_unmasked() {
    use code_asm::{xmm0, xmm1};
    let addss = assemble(|a| a.addss(xmm0, xmm1));
    let mut state = X86State::default();
    state.set_xmm(0, 0xffff); // a single-precision denormal; xmm1 = +0
    state.set_mxcsr(MXCSR_DEFAULT & !0x800); // UM unmasked
    let before = state.clone();
    let result = execute(&addss, &mut state, &mut memory());
    assert!(
        matches!(
            result,
            Err(EmulationError::GuestException {
                exception: "#XM",
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(state, before);

    // UM masked: the exact denormal sum, DE (a denormal operand) and neither UE nor PE.
    state.set_mxcsr(MXCSR_DEFAULT);
    run(&addss, &mut state, &mut memory());
    assert_eq!(state.xmm(0), 0xffff);
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 0x2);
}

#[test]
fn other_instructions_are_not_this_modules() {
    use code_asm::{rax, rbx, xmm0, xmm1, ymm0, ymm1};
    let mut state = X86State::default();
    let before = state.clone();
    for instruction in [
        assemble(|a| a.add(rax, rbx)),
        assemble(|a| a.vaddsd(xmm0, xmm0, xmm1)),
        assemble(|a| a.vmovaps(ymm0, ymm1)),
    ] {
        assert!(!supports(&instruction), "{instruction}");
        assert_eq!(
            execute(&instruction, &mut state, &mut memory()),
            Ok(false),
            "{instruction}"
        );
        assert_eq!(state, before);
    }
}

#[test]
fn bad_memory_is_reported_and_changes_nothing() {
    use code_asm::{qword_ptr, rbx, xmm0, xmmword_ptr};
    let mut memory = memory();
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + MEMORY_SIZE as u64 - 4; // the 8-byte operand runs off the end
    state.set_xmm(0, 0x1234);
    let before = state.clone();
    for instruction in [
        assemble(|a| a.movsd_2(xmm0, qword_ptr(rbx))),
        assemble(|a| a.addsd(xmm0, qword_ptr(rbx))),
        assemble(|a| a.movq(qword_ptr(rbx), xmm0)),
        assemble(|a| a.movups(xmmword_ptr(rbx), xmm0)),
    ] {
        let result = execute(&instruction, &mut state, &mut memory);
        assert!(
            matches!(result, Err(EmulationError::BadAddress { .. })),
            "{instruction}: {result:?}"
        );
        assert_eq!(state, before);
        assert!(memory.bytes.iter().all(|&b| b == 0));
    }
}

// --- Coverage of the real images ---------------------------------------------------------------

/// Every legacy-encoded instruction of a claimed extension (by iced's CPUID features; x87 aside)
/// in the executable sections of `image`.
fn sse_instructions(image: &[u8]) -> Vec<Instruction> {
    let elf = goblin::elf::Elf::parse(image).expect("parse the image");
    let mut found = Vec::new();
    for section in &elf.section_headers {
        if !section.is_executable() || section.sh_type != goblin::elf::section_header::SHT_PROGBITS
        {
            continue;
        }
        let Some(bytes) = section.file_range().and_then(|range| image.get(range)) else {
            continue;
        };
        let mut decoder = Decoder::with_ip(64, bytes, section.sh_addr, DecoderOptions::NONE);
        found.extend(decoder.iter().filter(|instruction| {
            let features = instruction.cpuid_features();
            instruction.encoding() == iced_x86::EncodingKind::Legacy
                && !features.contains(&CpuidFeature::FPU)
                && features
                    .iter()
                    .any(|feature| complete_extensions().contains(feature))
        }));
    }
    found
}

#[test]
fn every_sse_instruction_of_the_hermit_images_is_supported() {
    let Some(directory) = std::env::var_os("UHYVE_TEST_IMAGES") else {
        println!("skipped: UHYVE_TEST_IMAGES is not set");
        return;
    };
    let mut missing = std::collections::BTreeSet::new();
    for name in ["x86_64-hello_world", "x86_64-hello_c"] {
        let path = std::path::Path::new(&directory).join(name);
        let image =
            std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let instructions = sse_instructions(&image);
        assert!(
            !instructions.is_empty(),
            "{name}: no SSE instructions found"
        );
        println!(
            "{name}: {} instructions of the claimed extensions",
            instructions.len()
        );
        for instruction in instructions
            .iter()
            .filter(|instruction| !supports(instruction))
        {
            missing.insert(format!(
                "{:?} (e.g. `{instruction}` at {:#x})",
                instruction.code(),
                instruction.ip()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "unsupported forms:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
