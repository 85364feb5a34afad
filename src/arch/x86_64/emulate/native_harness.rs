//! The native side of the emulator's differential tests: a JIT-assembled harness that loads a
//! register file (all general and XMM registers, RFLAGS, MXCSR) into the host CPU, runs one
//! instruction, and stores everything back, plus the deterministic input generator and the
//! instruction encoding helpers the test modules share (`sse::tests`,
//! `extensions::native_tests`), and for the `x86_emulator` fuzz target's comparison with the host
//! (feature `fuzz-native`).

use iced_x86::code_asm::{self, AsmRegister64, AsmRegisterXmm, CodeAssembler};
use iced_x86::{Decoder, DecoderOptions, Encoder, Instruction, Register};

/// Guest-virtual base of the fake guest memory.
pub(crate) const GUEST_BASE: u64 = 0x40_0000;
/// Size of the memory buffer (two 4 KiB pages).
pub(crate) const MEMORY_SIZE: usize = 0x2000;
/// RIP the test instructions are decoded at.
pub(crate) const GUEST_RIP: u64 = 0x20_0000;

/// Register file exchanged with the JIT-compiled harness.
#[repr(C, align(16))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Native {
    pub(crate) xmm: [u128; 16],
    pub(crate) gprs: [u64; 16],
    pub(crate) rflags: u64,
    pub(crate) mxcsr: u32,
    pub(crate) host_mxcsr: u32,
}

/// The page-aligned memory the native instruction works on.
#[repr(C, align(4096))]
pub(crate) struct NativeMemory(pub(crate) [u8; MEMORY_SIZE]);

pub(crate) const GPRS: [AsmRegister64; 16] = [
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
pub(crate) const XMMS: [AsmRegisterXmm; 16] = [
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
/// RSP and RDI (the context pointer) are neither loaded nor used by test instructions.
pub(crate) const UNTOUCHED_GPRS: [usize; 2] = [4, 7];

/// Executable code: loads a [`Native`] (pointer in RDI), runs the instruction, stores it back.
pub(crate) struct Jit {
    code: *mut libc::c_void,
    len: usize,
}

impl Jit {
    /// The harness around `instruction_bytes`; with `rdi_is_memory` RDI holds RBX (the memory
    /// operand) while the instruction runs (maskmovdqu's implicit DS:RDI).
    pub(crate) fn new(instruction_bytes: &[u8], rdi_is_memory: bool) -> Self {
        let code = Self::assemble(instruction_bytes, rdi_is_memory).expect("assemble the harness");
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

    fn assemble(
        instruction_bytes: &[u8],
        rdi_is_memory: bool,
    ) -> Result<Vec<u8>, iced_x86::IcedError> {
        use code_asm::{dword_ptr, qword_ptr, rdi, xmmword_ptr};
        let field = |offset: usize| i32::try_from(offset).expect("small offset");
        let xmm_at = field(std::mem::offset_of!(Native, xmm));
        let gprs_at = field(std::mem::offset_of!(Native, gprs));
        let rflags_at = field(std::mem::offset_of!(Native, rflags));
        let mxcsr_at = field(std::mem::offset_of!(Native, mxcsr));
        let host_mxcsr_at = field(std::mem::offset_of!(Native, host_mxcsr));
        let loaded = || (0..16).filter(|n| !UNTOUCHED_GPRS.contains(n));
        let saved = [
            code_asm::rbx,
            code_asm::rbp,
            code_asm::r12,
            code_asm::r13,
            code_asm::r14,
            code_asm::r15,
        ];

        let mut a = CodeAssembler::new(64)?;
        for register in saved {
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
        if rdi_is_memory {
            a.push(rdi)?;
            a.mov(rdi, code_asm::rbx)?;
        }
        a.db(instruction_bytes)?;
        if rdi_is_memory {
            a.pop(rdi)?;
        }
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
        for register in saved.iter().rev() {
            a.pop(*register)?;
        }
        a.ret()?;
        a.assemble(0)
    }

    pub(crate) fn run(&self, context: &mut Native) {
        // SAFETY: `code` is the harness assembled in `new`: a SysV function taking the context
        // pointer in RDI that saves/restores every callee-saved register, RDI and the host MXCSR,
        // keeps the stack balanced, and runs one test instruction that touches only registers
        // other than RSP/RDI and memory inside the test buffer.
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

/// xorshift64* — deterministic test inputs.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value below `bound` (> 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
    pub(crate) fn pick<T: Copy>(&mut self, values: &[T]) -> T {
        values[self.below(values.len() as u64) as usize]
    }
}

/// General registers a test instruction may use (not RBX = memory base, RSP, RDI).
pub(crate) const DATA_GPRS: [usize; 13] = [0, 1, 2, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15];

/// The `size`-byte general register with hardware number `number` (SPL … DIL, not AH … BH,
/// for numbers 4 … 7 of the byte registers).
pub(crate) fn gpr(number: usize, size: usize) -> Register {
    let index = match size {
        1 if number < 4 => Register::AL as usize + number,
        1 => Register::AL as usize + number + 4,
        2 => Register::AX as usize + number,
        4 => Register::EAX as usize + number,
        _ => Register::RAX as usize + number,
    };
    Register::try_from(index).expect("valid GPR number")
}

pub(crate) fn xmm(number: usize) -> Register {
    Register::try_from(Register::XMM0 as usize + number).expect("valid XMM number")
}

/// Encodes `instruction` and decodes it back at [`GUEST_RIP`] (as uhyve would see it).
pub(crate) fn encode(instruction: &Instruction) -> (Vec<u8>, Instruction) {
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

/// Runs `jit` on `native` in a forked child and tells whether the instruction faulted (SIGSEGV
/// or SIGBUS: a #GP or #PF); the child's memory is a copy, so nothing it does is seen here.
pub(crate) fn runs_into_a_fault(jit: &Jit, mut native: Native) -> bool {
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
