//! Expectation tests of the bit-manipulation forms with hand-computed results and the flags
//! the SDM defines (undefined flags are the host's and compared by `native_tests` only):
//! PDEP/PEXT examples, TZCNT/LZCNT of 0, BEXTR/BZHI beyond the operand size, MULX with one
//! register for both halves, ADCX/ADOX carry chains, operand-size rules; CLWB/CLFLUSHOPT; and
//! the negative tests. Forms that run on the host are skipped if the host lacks them.

use iced_x86::code_asm::{
    ax, byte_ptr, cx, dword_ptr, eax, ebx, ecx, edx, qword_ptr, r8, r8d, r9, r9d, rax, rbx, rcx,
    rdx, word_ptr,
};

use super::super::ARITHMETIC_FLAGS;
use super::super::test_support::{GUEST_BASE, assemble, expect_failure, memory, run};
use super::*;

const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;

/// The flags every BMI instruction defines except AF and PF (and, for TZCNT/LZCNT, OF and SF).
const DEFINED: u64 = CF | ZF | SF | OF;
/// What TZCNT and LZCNT define.
const COUNT_DEFINED: u64 = CF | ZF;

/// Whether `instruction` is executable here (the host-run forms need the host's extension).
fn available(instruction: &Instruction) -> bool {
    let executable = lookup(instruction.code()).is_some();
    if !executable {
        println!("skipped `{instruction}`: the host lacks its extension");
    }
    executable
}

/// Runs `instruction` with the general registers `registers` (number, value) set and RFLAGS
/// `rflags`; returns the state after.
fn execute_with(instruction: &Instruction, registers: &[(usize, u64)], rflags: u64) -> X86State {
    let mut state = X86State {
        rflags,
        ..X86State::default()
    };
    for &(number, value) in registers {
        state.set_gpr(number, value);
    }
    run(instruction, &mut state, &mut memory());
    state
}

/// Asserts result `expected` in register `number` and the `mask` flags `flags`.
fn check(state: &X86State, number: usize, expected: u64, mask: u64, flags: u64, what: &str) {
    assert_eq!(state.gpr(number), expected, "{what}: result");
    assert_eq!(state.rflags & mask, flags, "{what}: flags");
}

#[test]
fn pdep_and_pext_scatter_and_gather_bits() {
    let pdep = assemble(|a| a.pdep(eax, ecx, edx));
    let pext = assemble(|a| a.pext(eax, ecx, edx));
    // Deposit 1011 into the bits of mask F0F0 (positions 4–7, 12–15): bits 4, 5, 7 set.
    let state = execute_with(&pdep, &[(0, u64::MAX), (1, 0b1011), (2, 0xf0f0)], 0x2 | CF);
    check(
        &state,
        0,
        0xb0,
        ARITHMETIC_FLAGS,
        CF,
        "pdep: flags unchanged",
    );
    let state = execute_with(&pext, &[(1, 0xb0), (2, 0xf0f0)], 0x2 | ZF | OF);
    check(
        &state,
        0,
        0b1011,
        ARITHMETIC_FLAGS,
        ZF | OF,
        "pext: flags unchanged",
    );
    // The SDM's figure: PEXT of bits 31:24 and 7:0 …
    let state = execute_with(&pext, &[(1, 0x1234_5678), (2, 0xff00_00ff)], 0x2);
    check(&state, 0, 0x1278, 0, 0, "pext of two bytes");
    // … the 32-bit forms see only 32 bits of mask and source; 64-bit forms all.
    let state = execute_with(&pdep, &[(1, u64::MAX), (2, u64::MAX)], 0x2);
    check(&state, 0, 0xffff_ffff, 0, 0, "pdep r32 zero-extends");
    let pdep64 = assemble(|a| a.pdep(rax, rcx, rdx));
    let state = execute_with(&pdep64, &[(1, 0b11), (2, 1 << 63 | 1)], 0x2);
    check(&state, 0, 1 << 63 | 1, 0, 0, "pdep r64");
    let pext64 = assemble(|a| a.pext(rax, rcx, qword_ptr(rbx)));
    let mut state = X86State::default();
    let mut memory = memory();
    memory.bytes[0x20..0x28].copy_from_slice(&(u64::MAX << 60).to_le_bytes());
    state.set_gpr(3, GUEST_BASE + 0x20);
    state.set_gpr(1, 0xa000_0000_0000_0000);
    run(&pext64, &mut state, &mut memory);
    assert_eq!(state.gpr(0), 0b1010);
}

#[test]
fn shifts_and_rotates_mask_the_count_and_keep_the_flags() {
    let cases: [(Instruction, u64, u64, u64); 7] = [
        (assemble(|a| a.shlx(eax, ecx, edx)), 0x8000_0001, 33, 0x2),
        (
            assemble(|a| a.shrx(eax, ecx, edx)),
            0xffff_ffff_8000_0000,
            31,
            0x1,
        ),
        (
            assemble(|a| a.sarx(eax, ecx, edx)),
            0x8000_0000,
            4,
            0xf800_0000,
        ),
        (
            assemble(|a| a.sarx(rax, rcx, rdx)),
            1 << 63,
            63 + 64,
            u64::MAX,
        ),
        (
            assemble(|a| a.shlx(rax, rcx, rdx)),
            3,
            64 + 62,
            0xc000_0000_0000_0000,
        ),
        (
            assemble(|a| a.rorx(eax, ecx, 40)),
            0x1234_5678,
            0,
            0x7812_3456,
        ),
        (
            assemble(|a| a.rorx(rax, rcx, 4)),
            0x1234_5678_9abc_def1,
            0,
            0x1123_4567_89ab_cdef,
        ),
    ];
    for (instruction, source, count, expected) in cases {
        let state = execute_with(
            &instruction,
            &[(0, u64::MAX), (1, source), (2, count)],
            0x2 | SF | CF,
        );
        let what = instruction.to_string();
        check(&state, 0, expected, ARITHMETIC_FLAGS, SF | CF, &what);
    }
}

#[test]
fn mulx_writes_low_then_high_and_keeps_the_flags() {
    let mulx = assemble(|a| a.mulx(r8d, r9d, ecx));
    let state = execute_with(&mulx, &[(2, 0xffff_ffff), (1, 3), (8, u64::MAX)], 0x2 | ZF);
    check(&state, 9, 0xffff_fffd, ARITHMETIC_FLAGS, ZF, "mulx low");
    check(&state, 8, 2, 0, 0, "mulx high");
    let mulx = assemble(|a| a.mulx(r8, r9, qword_ptr(rbx)));
    let mut state = X86State::default();
    let mut memory = memory();
    memory.bytes[0xffc..0x1004].copy_from_slice(&u64::MAX.to_le_bytes());
    state.set_gpr(3, GUEST_BASE + 0xffc);
    state.set_gpr(2, u64::MAX);
    run(&mulx, &mut state, &mut memory);
    assert_eq!((state.gpr(8), state.gpr(9)), (u64::MAX - 1, 1));
    // One register for both halves: it ends with the high half.
    let mulx = assemble(|a| a.mulx(rax, rax, rcx));
    let state = execute_with(&mulx, &[(2, 1 << 63), (1, 4)], 0x2);
    check(&state, 0, 2, 0, 0, "mulx with one destination");
}

#[test]
fn adcx_and_adox_chain_their_own_carries() {
    let adcx = assemble(|a| a.adcx(eax, ecx));
    let adox = assemble(|a| a.adox(rax, rcx));
    // CF in and out; OF, SF, ZF untouched.
    let state = execute_with(&adcx, &[(0, 0xffff_ffff_ffff_ffff), (1, 0)], 0x2 | CF | OF);
    check(
        &state,
        0,
        0,
        ARITHMETIC_FLAGS,
        CF | OF,
        "adcx wraps a 32-bit carry",
    );
    let state = execute_with(&adcx, &[(0, 5), (1, 6)], 0x2 | ZF | SF);
    check(
        &state,
        0,
        11,
        ARITHMETIC_FLAGS,
        ZF | SF,
        "adcx without carry",
    );
    // OF in and out; CF untouched.
    let state = execute_with(&adox, &[(0, u64::MAX), (1, 1)], 0x2 | CF);
    check(
        &state,
        0,
        0,
        ARITHMETIC_FLAGS,
        CF | OF,
        "adox carries into OF",
    );
    let state = execute_with(&adox, &[(0, 1), (1, 1)], 0x2 | OF);
    check(&state, 0, 3, ARITHMETIC_FLAGS, 0, "adox consumes OF");
}

#[test]
fn bmi1_results_and_defined_flags() {
    let andn = assemble(|a| a.andn(eax, ecx, edx));
    if available(&andn) {
        let state = execute_with(&andn, &[(0, u64::MAX), (1, 0xf0f0), (2, 0xffff)], 0x2 | CF);
        check(&state, 0, 0x0f0f, DEFINED, 0, "andn");
        let state = execute_with(&andn, &[(1, u64::MAX), (2, u64::MAX)], 0x2);
        check(&state, 0, 0, DEFINED, ZF, "andn to zero");
    }
    let bextr = assemble(|a| a.bextr(eax, ecx, edx));
    if available(&bextr) {
        // Start 4, length 8.
        let state = execute_with(&bextr, &[(1, 0x1234_5678), (2, 0x0804)], 0x2 | CF | OF);
        check(&state, 0, 0x67, CF | ZF | OF, 0, "bextr");
        // Start beyond the operand size: 0; a length beyond it: everything above the start.
        let state = execute_with(&bextr, &[(1, 0x1234_5678), (2, 0xff20)], 0x2);
        check(&state, 0, 0, CF | ZF | OF, ZF, "bextr start 32");
        let state = execute_with(&bextr, &[(1, 0x1234_5678), (2, 0xff10)], 0x2);
        check(&state, 0, 0x1234, CF | ZF | OF, 0, "bextr length 255");
    }
    let cases = [
        (assemble(|a| a.blsi(eax, ecx)), 0b10_1000, 0b1000, CF),
        (assemble(|a| a.blsi(eax, ecx)), 0, 0, ZF),
        (assemble(|a| a.blsmsk(eax, ecx)), 0b10_1000, 0b1111, 0),
        (assemble(|a| a.blsmsk(eax, ecx)), 0, 0xffff_ffff, CF | SF),
        (assemble(|a| a.blsr(eax, ecx)), 0b10_1000, 0b10_0000, 0),
        (assemble(|a| a.blsr(eax, ecx)), 0, 0, CF | ZF),
        (assemble(|a| a.blsr(rax, rcx)), 1 << 63, 0, ZF),
        (assemble(|a| a.blsi(rax, rcx)), 1 << 63, 1 << 63, CF | SF),
    ];
    for (instruction, source, expected, flags) in cases {
        if available(&instruction) {
            let state = execute_with(&instruction, &[(0, u64::MAX), (1, source)], 0x2 | OF);
            let what = format!("{instruction} of {source:#x}");
            check(&state, 0, expected, DEFINED, flags, &what);
        }
    }
}

#[test]
fn tzcnt_and_lzcnt_of_zero_give_the_operand_size_and_set_cf() {
    let cases = [
        (assemble(|a| a.tzcnt(eax, ecx)), 0, 32, CF),
        (assemble(|a| a.tzcnt(rax, rcx)), 0, 64, CF),
        (assemble(|a| a.tzcnt(eax, ecx)), 0x10, 4, 0),
        (assemble(|a| a.tzcnt(eax, ecx)), 1, 0, ZF),
        (assemble(|a| a.lzcnt(eax, ecx)), 0, 32, CF),
        (assemble(|a| a.lzcnt(rax, rcx)), 0, 64, CF),
        (assemble(|a| a.lzcnt(eax, ecx)), 1, 31, 0),
        (assemble(|a| a.lzcnt(eax, ecx)), 0x8000_0000, 0, ZF),
        // The upper half of a 64-bit source is not seen by the 32-bit form.
        (assemble(|a| a.lzcnt(eax, ecx)), 1 << 40, 32, CF),
    ];
    for (instruction, source, expected, flags) in cases {
        if available(&instruction) {
            let state = execute_with(&instruction, &[(0, u64::MAX), (1, source)], 0x2);
            let what = format!("{instruction} of {source:#x}");
            check(&state, 0, expected, COUNT_DEFINED, flags, &what);
        }
    }
    // 16-bit forms write only AX.
    for (instruction, expected) in [
        (assemble(|a| a.tzcnt(ax, cx)), 16),
        (assemble(|a| a.lzcnt(ax, cx)), 16),
    ] {
        if available(&instruction) {
            let state = execute_with(&instruction, &[(0, 0x1234_5678_9abc_def0)], 0x2);
            let what = instruction.to_string();
            let merged = 0x1234_5678_9abc_0000 | expected;
            check(&state, 0, merged, COUNT_DEFINED, CF, &what);
        }
    }
    // A memory source.
    let tzcnt = assemble(|a| a.tzcnt(ax, word_ptr(rbx)));
    if available(&tzcnt) {
        let mut memory = memory();
        memory.bytes[0xfff..0x1001].copy_from_slice(&0x8000u16.to_le_bytes());
        let mut state = X86State::default();
        state.set_gpr(3, GUEST_BASE + 0xfff);
        run(&tzcnt, &mut state, &mut memory);
        assert_eq!(state.gpr(0), 15);
    }
}

#[test]
fn bzhi_clears_from_the_index_and_flags_an_index_beyond_the_size() {
    let bzhi = assemble(|a| a.bzhi(eax, ecx, edx));
    let bzhi64 = assemble(|a| a.bzhi(rax, rcx, rdx));
    if !available(&bzhi) {
        return;
    }
    let cases = [
        (&bzhi, u64::MAX, 8, 0xff, 0),
        (&bzhi, u64::MAX, 0, 0, ZF),
        (&bzhi, u64::MAX, 31, 0x7fff_ffff, 0),
        (&bzhi, 0x8000_0000, 32, 0x8000_0000, CF | SF),
        (&bzhi, u64::MAX, 0x1_0108, 0xff, 0), // only bits 7:0 of the index count
        (&bzhi64, u64::MAX, 63, u64::MAX >> 1, 0),
        (&bzhi64, u64::MAX, 64, u64::MAX, CF | SF),
    ];
    for (instruction, source, index, expected, flags) in cases {
        let state = execute_with(instruction, &[(1, source), (2, index)], 0x2 | OF);
        let what = format!("{instruction} of {source:#x} at {index}");
        check(&state, 0, expected, DEFINED, flags, &what);
    }
}

#[test]
fn cache_line_write_backs_only_check_the_address() {
    let mut memory = memory();
    memory.bytes[0x40] = 0x5a;
    for instruction in [
        assemble(|a| a.clwb(byte_ptr(rbx + 0x40))),
        assemble(|a| a.clflushopt(byte_ptr(rbx + 0x40))),
    ] {
        let mut state = X86State::default();
        state.set_gpr(3, GUEST_BASE);
        let before = state.clone();
        run(&instruction, &mut state, &mut memory);
        assert_eq!(state, before);
        assert_eq!(memory.bytes[0x40], 0x5a);
        state.set_gpr(3, GUEST_BASE + 0x2000 - 0x40); // the operand is the first byte after
        expect_failure(&instruction, &mut state, &mut memory, "bad address");
    }
}

#[test]
fn inaccessible_memory_operands_change_nothing() {
    let mut memory = memory();
    let mut state = X86State {
        rflags: 0x2 | CF,
        ..X86State::default()
    };
    state.set_gpr(3, GUEST_BASE + 0x2000 - 2); // 4- and 8-byte operands run off the end
    state.set_gpr(0, 0x1111);
    state.set_gpr(2, 0x2222);
    let instructions = [
        assemble(|a| a.adcx(eax, dword_ptr(rbx))),
        assemble(|a| a.mulx(rax, rcx, qword_ptr(rbx))),
        assemble(|a| a.pdep(eax, ecx, dword_ptr(rbx))),
        assemble(|a| a.rorx(rax, qword_ptr(rbx), 3)),
        assemble(|a| a.shlx(eax, dword_ptr(rbx), edx)),
        assemble(|a| a.andn(rax, rcx, qword_ptr(rbx))),
        assemble(|a| a.bextr(eax, dword_ptr(rbx), ebx)),
        assemble(|a| a.blsr(eax, dword_ptr(rbx))),
        assemble(|a| a.tzcnt(eax, dword_ptr(rbx))),
        assemble(|a| a.lzcnt(rax, qword_ptr(rbx))),
    ];
    for instruction in instructions.iter().filter(|i| available(i)) {
        expect_failure(instruction, &mut state, &mut memory, "bad address");
    }
}

#[test]
fn other_instructions_are_not_this_modules() {
    use iced_x86::code_asm::xmm0;
    let mut state = X86State::default();
    for instruction in [
        assemble(|a| a.bsf(eax, ecx)),
        assemble(|a| a.adc(eax, ecx)),
        assemble(|a| a.bextr(eax, ecx, 0x0804)), // TBM's XOP form
        assemble(|a| a.vaesenc(xmm0, xmm0, xmm0)),
        assemble(|a| a.clflush(byte_ptr(rbx))),
    ] {
        assert!(!super::super::supports(&instruction), "{instruction}");
        assert_eq!(
            super::super::execute(&instruction, &mut state, &mut memory()),
            Ok(false),
            "{instruction}"
        );
    }
    assert_eq!(state, X86State::default());
}

#[test]
fn the_fallback_dispatches_here_and_advances_rip() {
    use super::super::super::testing::FakeServices;
    let tzcnt = [0xf3, 0x0f, 0xbc, 0xc1]; // tzcnt eax, ecx
    let mut state = X86State {
        rip: 0x20_0000,
        ..X86State::default()
    };
    state.set_gpr(1, 0x100);
    let instruction =
        super::super::super::emulate(&tzcnt, &mut state, &mut memory(), &mut FakeServices::new());
    if lookup(Code::Tzcnt_r32_rm32).is_some() {
        assert_eq!(
            instruction.map(|i| i.to_string()),
            Ok("tzcnt eax,ecx".into())
        );
        assert_eq!((state.rip, state.gpr(0)), (0x20_0004, 8));
    } else {
        assert_eq!(
            instruction,
            Err(EmulationError::Unsupported("tzcnt eax,ecx".into()))
        );
    }
}
