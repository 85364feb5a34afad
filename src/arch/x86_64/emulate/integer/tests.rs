//! Differential tests of the integer instructions against the host CPU: every form, of every
//! size, with random registers, flags and memory, run natively by the JIT harness and by the
//! emulator, must leave the same general registers, status flags and memory (AF is not compared
//! after the logical instructions, where the CPU leaves it undefined). The conditions of `jcc`
//! are checked against the host's `setcc`, which uses the same condition codes.

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::*;
use crate::arch::x86_64::emulate::native_harness::{
    DATA_GPRS, GUEST_BASE, GUEST_RIP, Jit, MEMORY_SIZE, Native, NativeMemory, Rng, encode, gpr,
};
use crate::arch::x86_64::emulate::testing::FakeMemory;

/// RBX holds the memory operand's base.
const MEMORY_BASE: usize = 3;
/// Cases per instruction form.
const CASES: usize = 200;

/// The forms tested: (code, operand size, shape).
#[derive(Clone, Copy)]
enum Shape {
    RegReg,
    RegImm,
    RegMem,
    MemReg,
    MemImm,
    Reg,
    Mem,
}

fn forms() -> Vec<(Code, usize, Shape)> {
    use Code as C;
    use Shape as S;
    vec![
        (C::Add_rm8_r8, 1, S::RegReg),
        (C::Add_rm16_r16, 2, S::RegReg),
        (C::Add_rm32_r32, 4, S::RegReg),
        (C::Add_rm64_r64, 8, S::RegReg),
        (C::Add_rm64_imm8, 8, S::RegImm),
        (C::Add_rm32_imm32, 4, S::RegImm),
        (C::Add_r64_rm64, 8, S::RegMem),
        (C::Add_rm32_r32, 4, S::MemReg),
        (C::Add_rm64_imm8, 8, S::MemImm),
        (C::Sub_rm8_r8, 1, S::RegReg),
        (C::Sub_rm16_r16, 2, S::RegReg),
        (C::Sub_rm32_r32, 4, S::RegReg),
        (C::Sub_rm64_r64, 8, S::RegReg),
        (C::Sub_rm64_imm32, 8, S::RegImm),
        (C::Sub_r32_rm32, 4, S::RegMem),
        (C::Cmp_rm8_r8, 1, S::RegReg),
        (C::Cmp_rm16_imm16, 2, S::RegImm),
        (C::Cmp_rm32_r32, 4, S::RegReg),
        (C::Cmp_rm64_r64, 8, S::RegReg),
        (C::Cmp_rm64_imm8, 8, S::RegImm),
        (C::Cmp_r64_rm64, 8, S::RegMem),
        (C::Cmp_rm32_imm8, 4, S::MemImm),
        (C::And_rm32_r32, 4, S::RegReg),
        (C::And_rm64_imm8, 8, S::RegImm),
        (C::Or_rm16_r16, 2, S::RegReg),
        (C::Or_rm64_r64, 8, S::RegReg),
        (C::Xor_rm8_r8, 1, S::RegReg),
        (C::Xor_rm32_r32, 4, S::RegReg),
        (C::Xor_rm64_r64, 8, S::MemReg),
        (C::Test_rm8_r8, 1, S::RegReg),
        (C::Test_rm32_r32, 4, S::RegReg),
        (C::Test_rm64_r64, 8, S::RegReg),
        (C::Test_rm32_imm32, 4, S::RegImm),
        (C::Inc_rm8, 1, S::Reg),
        (C::Inc_rm16, 2, S::Reg),
        (C::Inc_rm32, 4, S::Reg),
        (C::Inc_rm64, 8, S::Reg),
        (C::Inc_rm32, 4, S::Mem),
        (C::Dec_rm8, 1, S::Reg),
        (C::Dec_rm32, 4, S::Reg),
        (C::Dec_rm64, 8, S::Reg),
        (C::Dec_rm64, 8, S::Mem),
        (C::Mov_rm8_r8, 1, S::RegReg),
        (C::Mov_rm16_r16, 2, S::RegReg),
        (C::Mov_rm32_r32, 4, S::RegReg),
        (C::Mov_rm64_r64, 8, S::RegReg),
        (C::Mov_r32_imm32, 4, S::RegImm),
        (C::Mov_rm64_imm32, 8, S::RegImm),
        (C::Mov_r64_rm64, 8, S::RegMem),
        (C::Mov_r32_rm32, 4, S::RegMem),
        (C::Mov_rm64_r64, 8, S::MemReg),
        (C::Mov_rm16_r16, 2, S::MemReg),
        (C::Mov_rm32_imm32, 4, S::MemImm),
    ]
}

/// A memory operand at [RBX + disp] inside the test buffer.
fn memory_operand(rng: &mut Rng, size: usize) -> MemoryOperand {
    let displacement = rng.below((MEMORY_SIZE - 8) as u64) as i64 & !(size as i64 - 1);
    MemoryOperand::with_base_displ(Register::RBX, displacement)
}

fn build(code: Code, size: usize, shape: Shape, rng: &mut Rng) -> Instruction {
    let register = |rng: &mut Rng| gpr(rng.pick(&DATA_GPRS), size);
    let immediate = |rng: &mut Rng| rng.next() as i32 as i64;
    let built = match shape {
        Shape::RegReg => Instruction::with2(code, register(rng), register(rng)),
        Shape::RegImm => match code {
            Code::Add_rm64_imm8 | Code::Cmp_rm64_imm8 | Code::And_rm64_imm8 => {
                Instruction::with2(code, register(rng), rng.next() as i8 as i32)
            }
            Code::Cmp_rm16_imm16 => {
                Instruction::with2(code, register(rng), rng.next() as u16 as u32)
            }
            _ => Instruction::with2(code, register(rng), immediate(rng) as i32),
        },
        Shape::RegMem => Instruction::with2(code, register(rng), memory_operand(rng, size)),
        Shape::MemReg => Instruction::with2(code, memory_operand(rng, size), register(rng)),
        Shape::MemImm => match code {
            Code::Add_rm64_imm8 | Code::Cmp_rm32_imm8 => {
                Instruction::with2(code, memory_operand(rng, size), rng.next() as i8 as i32)
            }
            _ => Instruction::with2(code, memory_operand(rng, size), immediate(rng) as i32),
        },
        Shape::Reg => Instruction::with1(code, register(rng)),
        Shape::Mem => Instruction::with1(code, memory_operand(rng, size)),
    };
    built.unwrap_or_else(|error| panic!("{code:?}: {error}"))
}

/// Which flags to compare after `instruction`.
fn compared_flags(instruction: &Instruction) -> u64 {
    match instruction.mnemonic() {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => STATUS & !AF,
        _ => STATUS,
    }
}

fn compare(bytes: &[u8], decoded: &Instruction, rng: &mut Rng) {
    let jit = Jit::new(bytes, false);
    let mut native_memory = Box::new(NativeMemory([0; MEMORY_SIZE]));
    let host_base = native_memory.0.as_mut_ptr() as u64;
    for case in 0..CASES {
        let mut gprs = [0u64; 16];
        for value in &mut gprs {
            // Small values too, so that carries, zero and equal operands come up.
            *value = if rng.below(4) == 0 {
                rng.below(4)
            } else {
                rng.next()
            };
        }
        let rflags = (rng.next() & STATUS) | 0x202;
        let bytes_in: Vec<u8> = (0..MEMORY_SIZE).map(|_| rng.next() as u8).collect();
        native_memory.0.copy_from_slice(&bytes_in);
        let mut native = Native {
            gprs,
            rflags,
            mxcsr: 0x1f80,
            ..Native::default()
        };
        native.gprs[MEMORY_BASE] = host_base;
        jit.run(&mut native);

        let mut state = X86State {
            gprs,
            rflags,
            rip: GUEST_RIP,
            ..X86State::default()
        };
        state.gprs[MEMORY_BASE] = GUEST_BASE;
        let mut memory = FakeMemory {
            base: GUEST_BASE,
            bytes: bytes_in.clone(),
        };
        let context = || format!("`{decoded}` case {case}, rflags {rflags:#x}, gprs {gprs:#x?}");
        assert_eq!(
            execute(decoded, &mut state, &mut memory),
            Ok(true),
            "{}",
            context()
        );
        for n in DATA_GPRS {
            assert_eq!(state.gprs[n], native.gprs[n], "gpr {n} after {}", context());
        }
        let flags = compared_flags(decoded);
        assert_eq!(
            state.rflags & flags,
            native.rflags & flags,
            "rflags after {}",
            context()
        );
        assert_eq!(
            memory.bytes[..],
            native_memory.0[..],
            "memory after {}",
            context()
        );
        assert_eq!(state.rip, decoded.next_ip(), "{}", context());
    }
}

#[test]
fn every_form_matches_the_host_cpu() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (code, size, shape) in forms() {
        for _ in 0..4 {
            let (bytes, decoded) = encode(&build(code, size, shape, &mut rng));
            assert!(supports(&decoded), "`{decoded}` is not supported");
            compare(&bytes, &decoded, &mut rng);
        }
    }
}

#[test]
fn lea_and_high_byte_registers_match_the_host_cpu() {
    let mut rng = Rng(0x0bad_cafe_f00d_1234);
    let lea = |rng: &mut Rng, size: usize| {
        let memory = MemoryOperand::with_base_index_scale_displ_size(
            gpr(rng.pick(&DATA_GPRS), 8),
            gpr(rng.pick(&DATA_GPRS), 8),
            *[1, 2, 4, 8].get(rng.below(4) as usize).unwrap_or(&1),
            rng.next() as i32 as i64,
            1,
        );
        let code = if size == 8 {
            Code::Lea_r64_m
        } else {
            Code::Lea_r32_m
        };
        Instruction::with2(code, gpr(rng.pick(&DATA_GPRS), size), memory).unwrap()
    };
    for size in [4, 8] {
        for _ in 0..8 {
            let (bytes, decoded) = encode(&lea(&mut rng, size));
            compare(&bytes, &decoded, &mut rng);
        }
    }
    for (code, destination, source) in [
        (Code::Add_rm8_r8, Register::AH, Register::CL),
        (Code::Mov_rm8_r8, Register::DL, Register::AH),
        (Code::Xor_rm8_r8, Register::DH, Register::CH),
        (Code::Sub_rm8_r8, Register::CH, Register::AH),
    ] {
        let (bytes, decoded) = encode(&Instruction::with2(code, destination, source).unwrap());
        compare(&bytes, &decoded, &mut rng);
    }
}

#[test]
fn conditions_match_the_hosts_setcc() {
    use Code as C;
    let setcc = [
        C::Seto_rm8,
        C::Setno_rm8,
        C::Setb_rm8,
        C::Setae_rm8,
        C::Sete_rm8,
        C::Setne_rm8,
        C::Setbe_rm8,
        C::Seta_rm8,
        C::Sets_rm8,
        C::Setns_rm8,
        C::Setp_rm8,
        C::Setnp_rm8,
        C::Setl_rm8,
        C::Setge_rm8,
        C::Setle_rm8,
        C::Setg_rm8,
    ];
    for code in setcc {
        let (bytes, decoded) = encode(&Instruction::with1(code, Register::AL).unwrap());
        let jit = Jit::new(&bytes, false);
        for flags in 0..64u64 {
            // Every combination of CF, PF, ZF, SF, OF (and AF, which no condition reads).
            let rflags = [CF, PF, AF, ZF, SF, OF]
                .iter()
                .enumerate()
                .filter(|(n, _)| flags & (1 << n) != 0)
                .fold(0x202, |all, (_, flag)| all | flag);
            let mut native = Native {
                rflags,
                mxcsr: 0x1f80,
                ..Native::default()
            };
            jit.run(&mut native);
            let expected = native.gprs[0] & 1 == 1;
            assert_eq!(
                condition_holds(decoded.condition_code(), rflags),
                expected,
                "`{decoded}` with rflags {rflags:#x}"
            );
        }
    }
}

#[test]
fn jumps_go_to_their_target_or_past_when_not_taken() {
    let mut state = X86State {
        rip: GUEST_RIP,
        rflags: 0x202 | ZF,
        ..X86State::default()
    };
    let mut memory = FakeMemory::new(GUEST_BASE, 16, 0);
    // jne -0x10 (not taken with ZF), je -0x10 (taken), jmp +0x100.
    let decode = |bytes: &[u8], rip: u64| {
        iced_x86::Decoder::with_ip(64, bytes, rip, iced_x86::DecoderOptions::NONE).decode()
    };
    let jne = decode(&[0x75, 0xf0], GUEST_RIP);
    assert_eq!(execute(&jne, &mut state, &mut memory), Ok(true));
    assert_eq!(state.rip, GUEST_RIP + 2);
    let je = decode(&[0x74, 0xf0], state.rip);
    assert_eq!(execute(&je, &mut state, &mut memory), Ok(true));
    assert_eq!(state.rip, GUEST_RIP + 4 - 0x10);
    let jmp = decode(&[0xe9, 0x00, 0x01, 0x00, 0x00], state.rip);
    let start = state.rip;
    assert_eq!(execute(&jmp, &mut state, &mut memory), Ok(true));
    assert_eq!(state.rip, start + 5 + 0x100);
}

#[test]
fn other_instructions_and_forms_are_not_this_modules() {
    let decode = |bytes: &[u8]| {
        iced_x86::Decoder::with_ip(64, bytes, GUEST_RIP, iced_x86::DecoderOptions::NONE).decode()
    };
    for bytes in [
        &[0xf0, 0x48, 0x01, 0x03][..], // lock add [rbx], rax
        &[0x0f, 0x20, 0xd8],           // mov rax, cr3
        &[0x8c, 0xd8],                 // mov eax, ds
        &[0xff, 0xe0],                 // jmp rax
        &[0xe8, 0, 0, 0, 0],           // call
        &[0xee],                       // out dx, al
        &[0x48, 0xf7, 0xe1],           // mul rcx
        &[0x64, 0x48, 0x8d, 0x03],     // lea rax, fs:[rbx]
    ] {
        let instruction = decode(bytes);
        assert!(!supports(&instruction), "`{instruction}`");
    }
    // A memory operand outside the memory: an error, and nothing changed.
    let mut state = X86State::default();
    state.set_gpr(3, 0x10);
    let before = state.clone();
    let mut memory = FakeMemory::new(GUEST_BASE, 16, 0);
    let add = decode(&[0x48, 0x01, 0x03]); // add [rbx], rax
    assert!(execute(&add, &mut state, &mut memory).is_err());
    assert_eq!(state, before);
}
