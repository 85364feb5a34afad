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

use iced_x86::code_asm::{self, AsmRegister64, AsmRegisterXmm, CodeAssembler};
use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, Encoder, Instruction, MemoryOperand,
    OpCodeOperandKind, Register,
};

use super::super::state::MXCSR_DEFAULT;
use super::super::testing::FakeMemory;
use super::*;

/// Guest-virtual base of the fake guest memory.
const GUEST_BASE: u64 = 0x40_0000;
/// Size of the memory buffer (two 4 KiB pages).
const MEMORY_SIZE: usize = 0x2000;
/// RIP the test instructions are decoded at.
const GUEST_RIP: u64 = 0x20_0000;
/// MXCSR.MM (AMD): misaligned-SSE mode.
const MISALIGNED_SSE_MODE: u32 = 1 << 17;
/// The memory base register of the test instructions: RBX.
const MEMORY_BASE: usize = 3;

// --- Native execution ------------------------------------------------------------------------

/// Register file exchanged with the JIT-compiled harness.
#[repr(C, align(16))]
#[derive(Debug, Clone, Default)]
struct Native {
    xmm: [u128; 16],
    gprs: [u64; 16],
    rflags: u64,
    mxcsr: u32,
    host_mxcsr: u32,
}

/// The page-aligned memory the native instruction works on.
#[repr(C, align(4096))]
struct NativeMemory([u8; MEMORY_SIZE]);

const GPRS: [AsmRegister64; 16] = [
    code_asm::rax,
    code_asm::rcx,
    code_asm::rdx,
    code_asm::rbx,
    code_asm::rsp,
    code_asm::rbp,
    code_asm::rsi,
    code_asm::rdi,
    code_asm::r8,
    code_asm::r9,
    code_asm::r10,
    code_asm::r11,
    code_asm::r12,
    code_asm::r13,
    code_asm::r14,
    code_asm::r15,
];
const XMMS: [AsmRegisterXmm; 16] = [
    code_asm::xmm0,
    code_asm::xmm1,
    code_asm::xmm2,
    code_asm::xmm3,
    code_asm::xmm4,
    code_asm::xmm5,
    code_asm::xmm6,
    code_asm::xmm7,
    code_asm::xmm8,
    code_asm::xmm9,
    code_asm::xmm10,
    code_asm::xmm11,
    code_asm::xmm12,
    code_asm::xmm13,
    code_asm::xmm14,
    code_asm::xmm15,
];
/// RSP and RDI (the register-file pointer) are neither loaded nor used by test instructions.
const UNTOUCHED_GPRS: [usize; 2] = [4, 7];
/// General registers a test instruction may name (not RBX = memory base, RSP, RDI).
const DATA_GPRS: [usize; 13] = [0, 1, 2, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15];

/// Executable code: loads a [`Native`] (pointer in RDI), runs the instruction, stores it back.
struct Jit {
    code: *mut libc::c_void,
    len: usize,
}

impl Jit {
    fn new(instruction_bytes: &[u8]) -> Self {
        let code = Self::assemble(instruction_bytes).expect("assemble the harness");
        let len = code.len().next_multiple_of(4096);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; no
        // existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap for the JIT harness");
        // SAFETY: `map` is a fresh writable mapping of `len` ≥ `code.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), map.cast::<u8>(), code.len()) };
        // SAFETY: changes the protection of the mapping created above only.
        let status = unsafe { libc::mprotect(map, len, libc::PROT_READ | libc::PROT_EXEC) };
        assert_eq!(status, 0, "mprotect for the JIT harness");
        Self { code: map, len }
    }

    /// A SysV function `fn(*mut Native)`: saves the callee-saved registers and the host MXCSR,
    /// loads everything, runs the instruction, stores everything, restores.
    fn assemble(instruction_bytes: &[u8]) -> Result<Vec<u8>, iced_x86::IcedError> {
        use code_asm::{dword_ptr, qword_ptr, rdi, xmmword_ptr};
        let field = |offset: usize| i32::try_from(offset).expect("small offset");
        let xmm_at = field(std::mem::offset_of!(Native, xmm));
        let gprs_at = field(std::mem::offset_of!(Native, gprs));
        let rflags_at = field(std::mem::offset_of!(Native, rflags));
        let mxcsr_at = field(std::mem::offset_of!(Native, mxcsr));
        let host_mxcsr_at = field(std::mem::offset_of!(Native, host_mxcsr));
        let loaded = || (0..16).filter(|n| !UNTOUCHED_GPRS.contains(n));
        let callee_saved = [
            code_asm::rbx,
            code_asm::rbp,
            code_asm::r12,
            code_asm::r13,
            code_asm::r14,
            code_asm::r15,
        ];

        let mut a = CodeAssembler::new(64)?;
        for register in callee_saved {
            a.push(register)?;
        }
        a.stmxcsr(dword_ptr(rdi + host_mxcsr_at))?;
        a.ldmxcsr(dword_ptr(rdi + mxcsr_at))?;
        for (n, register) in XMMS.iter().enumerate() {
            a.movdqu(*register, xmmword_ptr(rdi + xmm_at + field(16 * n)))?;
        }
        a.push(qword_ptr(rdi + rflags_at))?;
        a.popfq()?;
        for n in loaded() {
            a.mov(GPRS[n], qword_ptr(rdi + gprs_at + field(8 * n)))?;
        }
        a.db(instruction_bytes)?;
        a.pushfq()?;
        a.pop(qword_ptr(rdi + rflags_at))?;
        for n in loaded() {
            a.mov(qword_ptr(rdi + gprs_at + field(8 * n)), GPRS[n])?;
        }
        for (n, register) in XMMS.iter().enumerate() {
            a.movdqu(xmmword_ptr(rdi + xmm_at + field(16 * n)), *register)?;
        }
        a.stmxcsr(dword_ptr(rdi + mxcsr_at))?;
        a.ldmxcsr(dword_ptr(rdi + host_mxcsr_at))?;
        for register in callee_saved.iter().rev() {
            a.pop(*register)?;
        }
        a.ret()?;
        a.assemble(0)
    }

    fn run(&self, context: &mut Native) {
        // SAFETY: `code` is the harness assembled in `new`: a SysV function taking the context
        // pointer in RDI that saves/restores every callee-saved register and the host MXCSR,
        // keeps RDI and the stack balanced, and runs one test instruction that touches only
        // registers other than RSP/RDI and memory inside the test buffer.
        let function: unsafe extern "sysv64" fn(*mut Native) =
            unsafe { std::mem::transmute(self.code) };
        // SAFETY: see above; `context` is a live exclusive reference.
        unsafe { function(context) };
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, which nothing references now.
        unsafe { libc::munmap(self.code, self.len) };
    }
}

// --- Inputs ----------------------------------------------------------------------------------

/// xorshift64* — deterministic test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
    fn pick<T: Copy>(&mut self, values: &[T]) -> T {
        values[self.below(values.len() as u64) as usize]
    }
}

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

fn gpr(number: usize, size: usize) -> Register {
    let first = match size {
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    Register::try_from(first as usize + number).expect("valid GPR number")
}

fn xmm(number: usize) -> Register {
    Register::try_from(Register::XMM0 as usize + number).expect("valid XMM number")
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

/// Encodes `instruction` and decodes it back at [`GUEST_RIP`] (as uhyve would see it).
fn encode(instruction: &Instruction) -> (Vec<u8>, Instruction) {
    let mut encoder = Encoder::new(64);
    encoder
        .encode(instruction, GUEST_RIP)
        .unwrap_or_else(|error| panic!("encode {instruction}: {error}"));
    let bytes = encoder.take_buffer();
    let decoded = Decoder::with_ip(64, &bytes, GUEST_RIP, DecoderOptions::NONE).decode();
    assert_eq!(
        decoded.code(),
        instruction.code(),
        "{instruction} round trip"
    );
    (bytes, decoded)
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
    let jit = Jit::new(bytes);
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
    let jit = Jit::new(bytes);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    let mut native = Native {
        rflags: 0x2,
        mxcsr,
        ..Native::default()
    };
    native.gprs[MEMORY_BASE] = native_memory.0.as_mut_ptr() as u64 + offset;
    // SAFETY: the child only runs the prepared machine code (no allocation, no locks) and
    // leaves with `_exit`; the parent waits for it. Nothing is shared but copied memory.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls in the forked child; `native` is its own copy.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            jit.run(&mut native);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child created above.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child, "waitpid");
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        assert!(
            signal == libc::SIGSEGV || signal == libc::SIGBUS,
            "signal {signal}"
        );
        true
    } else {
        assert_eq!(libc::WEXITSTATUS(status), 0);
        false
    }
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
