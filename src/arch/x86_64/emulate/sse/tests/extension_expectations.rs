//! Expectation tests with hand-computed results (independent of the host CPU) for the forms
//! added with SSE3, SSSE3, SSE4.1, SSE4.2 and POPCNT and the late SSE/SSE2 ones (compares,
//! reciprocal approximations, `maskmovdqu`, fence aliases), and their negative tests.

use code_asm::{
    ah, ax, bh, byte_ptr, cx, dword_ptr, eax, ecx, qword_ptr, rax, rbx, rcx, xmm0, xmm1, xmm2,
    xmm3, xmmword_ptr,
};

use super::*;

/// Four floats as an XMM value (lane 0 first).
fn f32x4(lanes: [f32; 4]) -> u128 {
    lanes.iter().enumerate().fold(0, |acc, (i, lane)| {
        acc | (u128::from(lane.to_bits()) << (32 * i))
    })
}

/// Two doubles as an XMM value (lane 0 first).
fn f64x2(low: f64, high: f64) -> u128 {
    u128::from(low.to_bits()) | (u128::from(high.to_bits()) << 64)
}

/// Bytes as an XMM value (byte 0 first, zero-padded).
fn bytes(text: &[u8]) -> u128 {
    let mut value = [0u8; 16];
    value[..text.len()].copy_from_slice(text);
    u128::from_le_bytes(value)
}

/// The fault `execute` reports, or a panic if it succeeded or failed otherwise.
fn guest_exception(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut FakeMemory,
) -> &'static str {
    match execute(instruction, state, memory) {
        Err(EmulationError::GuestException { exception, .. }) => exception,
        other => panic!("{instruction}: {other:?}"),
    }
}

// --- SSE and SSE2 -------------------------------------------------------------------------------

#[test]
fn cmplesd_of_libm_compares_with_rip_relative_memory() {
    // cmplesd xmm0, [rip + disp32]: F2 0F C2 05 disp32 02 (9 bytes), as in libm's sin/exp.
    let disp = (GUEST_BASE + 0x100 - (GUEST_RIP + 9)) as u32;
    let mut encoded = vec![0xf2, 0x0f, 0xc2, 0x05];
    encoded.extend_from_slice(&disp.to_le_bytes());
    encoded.push(0x02);
    let cmplesd = decode(&encoded);
    assert_eq!(cmplesd.code(), Code::Cmpsd_xmm_xmmm64_imm8);
    assert_eq!(cmplesd.memory_base(), Register::RIP);
    let mut memory = memory();
    memory.bytes[0x100..0x108].copy_from_slice(&2.0f64.to_le_bytes());

    for (value, expected) in [(1.0, u64::MAX), (2.0, u64::MAX), (3.0, 0)] {
        let mut state = X86State::default();
        state.set_xmm(0, f64x2(value, 7.0));
        run(&cmplesd, &mut state, &mut memory);
        assert_eq!(
            state.xmm(0),
            f64x2(f64::from_bits(expected), 7.0),
            "{value}"
        );
        assert_eq!(state.mxcsr(), MXCSR_DEFAULT);
    }
    // LE is a signalling predicate: a quiet NaN compares false and raises IE.
    let mut state = X86State::default();
    state.set_xmm(0, f64x2(f64::NAN, 7.0));
    run(&cmplesd, &mut state, &mut memory);
    assert_eq!(state.xmm(0), f64x2(0.0, 7.0));
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT | 1);
}

#[test]
fn cmpps_predicates_and_reserved_imm_bits() {
    // Lanes: less, equal, greater, unordered.
    let a = f32x4([1.0, 2.0, 3.0, f32::NAN]);
    let b = f32x4([2.0; 4]);
    // eq, lt, le, unord, neq, nlt, nle, ord: the lanes that are true.
    let truth: [[bool; 4]; 8] = [
        [false, true, false, false],
        [true, false, false, false],
        [true, true, false, false],
        [false, false, false, true],
        [true, false, true, true],
        [false, true, true, true],
        [false, false, true, true],
        [true, true, true, false],
    ];
    for predicate in 0..8u32 {
        let expected = (0..4).fold(0u128, |acc, lane| {
            acc | if truth[predicate as usize][lane] {
                0xffff_ffff << (32 * lane)
            } else {
                0
            }
        });
        // imm8[7:3] are reserved: the legacy encoding reads only imm8[2:0].
        for imm in [predicate, predicate | 0xf8] {
            let mut state = X86State::default();
            state.set_xmm(0, a);
            state.set_xmm(1, b);
            run(
                &assemble(|asm| asm.cmpps(xmm0, xmm1, imm)),
                &mut state,
                &mut memory(),
            );
            assert_eq!(
                state.xmm(0),
                expected,
                "predicate {predicate}, imm {imm:#x}"
            );
        }
    }
}

#[test]
fn reciprocal_approximations_are_within_the_documented_error() {
    let mut state = X86State::default();
    state.set_xmm(1, f32x4([3.0, 0.25, 1e10, -7.0]));
    run(
        &assemble(|a| a.rcpps(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    for (lane, input) in [3.0f32, 0.25, 1e10, -7.0].iter().enumerate() {
        let approximation = f32::from_bits((state.xmm(0) >> (32 * lane)) as u32);
        let relative_error = (f64::from(approximation) * f64::from(*input) - 1.0).abs();
        assert!(
            relative_error <= 1.5 / 4096.0,
            "rcpps {input}: {approximation}"
        );
    }
    // rsqrtss: the low lane only, the rest of the destination kept.
    state.set_xmm(0, f32x4([0.0, 5.0, 6.0, 7.0]));
    state.set_xmm(1, f32x4([4.0, 0.0, 0.0, 0.0]));
    run(
        &assemble(|a| a.rsqrtss(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    let approximation = f32::from_bits(state.xmm(0) as u32);
    assert!(
        (approximation - 0.5).abs() <= 0.5 * 1.5 / 4096.0,
        "{approximation}"
    );
    assert_eq!(
        state.xmm(0) >> 32,
        f32x4([5.0, 6.0, 7.0, 0.0]) & ((1 << 96) - 1)
    );
    assert_eq!(state.mxcsr(), MXCSR_DEFAULT, "no exception flags");
}

#[test]
fn maskmovdqu_stores_only_the_selected_bytes_at_ds_rdi() {
    let maskmovdqu = assemble(|a| a.maskmovdqu(xmm1, xmm2));
    let mut memory = FakeMemory::new(GUEST_BASE, MEMORY_SIZE, 0xaa);
    let mut state = X86State::default();
    state.gprs[7] = GUEST_BASE + 0xffd; // unaligned, across the 4 KiB boundary
    state.set_xmm(1, bytes(b"0123456789abcdef"));
    // Bytes 0, 2, 3 and 15 selected (top bit), byte 1 has only low bits set.
    state.set_xmm(2, 0xff00_0000_0000_0000_0000_0000_8080_7f80);
    run(&maskmovdqu, &mut state, &mut memory);
    let stored = &memory.bytes[0xffd..0x100d];
    let mut expected = [0xaa; 16];
    expected[0] = b'0';
    expected[2] = b'2';
    expected[3] = b'3';
    expected[15] = b'f';
    assert_eq!(stored, expected);
    assert_eq!(memory.bytes[0xffc], 0xaa);
    assert_eq!(memory.bytes[0x100d], 0xaa);

    // An FS override adds the FS base: 64 66 0F F7 CA is maskmovdqu xmm1, xmm2 at FS:RDI.
    let mut state = X86State {
        fs_base: GUEST_BASE,
        ..X86State::default()
    };
    state.gprs[7] = 0x10;
    state.set_xmm(1, 0x42);
    state.set_xmm(2, 0x80);
    run(
        &decode(&[0x64, 0x66, 0x0f, 0xf7, 0xca]),
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[0x10], 0x42);
    assert_eq!(memory.bytes[0x11], 0xaa);

    // An address-size override (67) makes it DS:EDI: the upper half of RDI does not count.
    let mut state = X86State::default();
    state.gprs[7] = 0xffff_ffff_0000_0000 | (GUEST_BASE + 0x20);
    state.set_xmm(1, 0x4300);
    state.set_xmm(2, 0x8000);
    run(
        &decode(&[0x67, 0x66, 0x0f, 0xf7, 0xca]),
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[0x20..0x22], [0xaa, 0x43]);
}

#[test]
fn every_fence_encoding_is_a_no_op() {
    for modrm in 0xe8..=0xffu8 {
        let fence = decode(&[0x0f, 0xae, modrm]);
        let mut state = X86State::default();
        let before = state.clone();
        run(&fence, &mut state, &mut memory());
        assert_eq!(state, before, "{fence}");
    }
}

// --- SSE3 -----------------------------------------------------------------------------------------

#[test]
fn sse3_horizontal_and_alternating_arithmetic_and_duplicating_moves() {
    let mut state = X86State::default();
    state.set_xmm(0, f32x4([1.0, 2.0, 3.0, 4.0]));
    state.set_xmm(1, f32x4([10.0, 20.0, 30.0, 40.0]));
    run(
        &assemble(|a| a.haddps(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), f32x4([3.0, 7.0, 30.0, 70.0]));

    state.set_xmm(0, f32x4([1.0; 4]));
    state.set_xmm(1, f32x4([0.5; 4]));
    run(
        &assemble(|a| a.addsubps(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), f32x4([0.5, 1.5, 0.5, 1.5]));

    state.set_xmm(0, f64x2(5.0, 8.0));
    state.set_xmm(1, f64x2(1.0, 4.0));
    run(
        &assemble(|a| a.hsubpd(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), f64x2(-3.0, -3.0));

    // movddup m64 needs no alignment; movshdup/movsldup duplicate odd/even lanes.
    let mut memory = memory();
    memory.bytes[0x103..0x10b].copy_from_slice(&2.5f64.to_le_bytes());
    state.gprs[3] = GUEST_BASE + 0x103;
    run(
        &assemble(|a| a.movddup(xmm2, qword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(2), f64x2(2.5, 2.5));
    state.set_xmm(1, f32x4([1.0, 2.0, 3.0, 4.0]));
    run(
        &assemble(|a| a.movshdup(xmm2, xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(2), f32x4([2.0, 2.0, 4.0, 4.0]));
    run(
        &assemble(|a| a.movsldup(xmm2, xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(2), f32x4([1.0, 1.0, 3.0, 3.0]));
}

// --- SSSE3 ----------------------------------------------------------------------------------------

#[test]
fn ssse3_shuffle_align_multiply_add_and_saturation() {
    let mut state = X86State::default();
    let text = bytes(b"0123456789abcdef");
    // pshufb with a reversing selector; a set top bit zeroes the byte.
    state.set_xmm(0, text);
    state.set_xmm(
        1,
        u128::from_le_bytes([15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0x80]),
    );
    run(
        &assemble(|a| a.pshufb(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), bytes(b"fedcba987654321\0"));

    // palignr: destination:source shifted right by 4 bytes.
    state.set_xmm(0, bytes(b"ABCDEFGHIJKLMNOP"));
    state.set_xmm(1, text);
    run(
        &assemble(|a| a.palignr(xmm0, xmm1, 4)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), bytes(b"456789abcdefABCD"));

    // pmaddubsw: 255 × 127 + 255 × 127 saturates to 32767; 255 × -128 × 2 to -32768.
    state.set_xmm(0, 0xffff_ffff);
    state.set_xmm(1, 0x8080_7f7f);
    run(
        &assemble(|a| a.pmaddubsw(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0x8000_7fff);

    // phaddsw saturates; psignd negates, zeroes or keeps.
    state.set_xmm(0, 0x7fff_7fff);
    state.set_xmm(1, 0);
    run(
        &assemble(|a| a.phaddsw(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0x7fff);
    state.set_xmm(0, 0x0000_0005_0000_0005_0000_0005_0000_0005);
    state.set_xmm(1, 0x0000_0001_0000_0000_ffff_ffff_0000_0009);
    run(
        &assemble(|a| a.psignd(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0x0000_0005_0000_0000_ffff_fffb_0000_0005);

    // pmulhrsw: 0.5 × 0.5 = 0.25 in Q15; pabsb of -128 stays 0x80.
    state.set_xmm(0, 0x4000);
    state.set_xmm(1, 0x4000);
    run(
        &assemble(|a| a.pmulhrsw(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0x2000);
    state.set_xmm(1, 0x0080_ff01);
    run(
        &assemble(|a| a.pabsb(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0x0080_0101);
}

// --- SSE4.1 ---------------------------------------------------------------------------------------

#[test]
fn roundsd_follows_every_rounding_control() {
    // imm8: 0 nearest, 1 down, 2 up, 3 toward zero, 4 MXCSR.RC (here: up); +8 suppresses PE.
    let cases: [(u32, f64, f64); 5] = [
        (0, 2.0, -2.0),
        (1, 2.0, -3.0),
        (2, 3.0, -2.0),
        (3, 2.0, -2.0),
        (4, 3.0, -2.0),
    ];
    for (mode, from_positive, from_negative) in cases {
        for (input, expected) in [(2.5, from_positive), (-2.5, from_negative)] {
            for suppress in [0, 8] {
                let mut state = X86State::default();
                state.set_mxcsr(MXCSR_DEFAULT | (2 << 13));
                state.set_xmm(0, f64x2(0.0, 9.0));
                state.set_xmm(1, f64x2(input, 1.0));
                run(
                    &assemble(|a| a.roundsd(xmm0, xmm1, mode | suppress)),
                    &mut state,
                    &mut memory(),
                );
                assert_eq!(state.xmm(0), f64x2(expected, 9.0), "mode {mode} of {input}");
                let precision = if suppress == 0 { 0x20 } else { 0 };
                assert_eq!(state.mxcsr(), MXCSR_DEFAULT | (2 << 13) | precision);
            }
        }
    }
}

#[test]
fn dot_products_select_products_and_result_lanes() {
    let mut state = X86State::default();
    let a = f32x4([1.0, 2.0, 3.0, 4.0]);
    let b = f32x4([5.0, 6.0, 7.0, 8.0]);
    for (imm, expected) in [
        (0xf1, f32x4([70.0, 0.0, 0.0, 0.0])),
        (0x3f, f32x4([17.0; 4])),
        (0x8a, f32x4([0.0, 32.0, 0.0, 32.0])),
        (0x0f, 0),
    ] {
        state.set_xmm(0, a);
        state.set_xmm(1, b);
        run(
            &assemble(|asm| asm.dpps(xmm0, xmm1, imm)),
            &mut state,
            &mut memory(),
        );
        assert_eq!(state.xmm(0), expected, "dpps imm {imm:#x}");
    }
    state.set_xmm(0, f64x2(1.5, 2.0));
    state.set_xmm(1, f64x2(2.0, 4.0));
    run(
        &assemble(|asm| asm.dppd(xmm0, xmm1, 0x32)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), f64x2(0.0, 11.0));
}

#[test]
fn sse41_blends_tests_and_lane_moves() {
    let mut memory = memory();
    let mut state = X86State::default();
    // blendvps: XMM0's sign bits pick lanes 1 and 3 from the source.
    state.set_xmm(0, f32x4([1.0, -1.0, 0.0, -0.0]));
    state.set_xmm(1, f32x4([10.0, 11.0, 12.0, 13.0]));
    state.set_xmm(2, f32x4([20.0, 21.0, 22.0, 23.0]));
    run(
        &assemble(|a| a.blendvps(xmm1, xmm2)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(1), f32x4([10.0, 21.0, 12.0, 23.0]));

    // ptest: ZF when the AND is zero, CF when the ANDN is zero; OF SF AF PF cleared.
    for (dst, src, flags) in [
        (0b1100, 0b0011, 0x40),
        (0b1111, 0b0011, 0x01),
        (0b1, 0b11, 0),
    ] {
        state.rflags = 0x2 | 0x8d5;
        state.set_xmm(0, dst);
        state.set_xmm(1, src);
        run(&assemble(|a| a.ptest(xmm0, xmm1)), &mut state, &mut memory);
        assert_eq!(state.rflags, 0x2 | flags, "ptest {dst:#b} {src:#b}");
    }

    // pextrb to memory writes one byte; pextrb to a register zero-extends.
    state.gprs[3] = GUEST_BASE + 0x105;
    state.set_xmm(3, bytes(b"0123456789abcdef"));
    run(
        &assemble(|a| a.pextrb(byte_ptr(rbx), xmm3, 0x1e)), // imm8[3:0] = 14
        &mut state,
        &mut memory,
    );
    assert_eq!(memory.bytes[0x104..0x107], [0, b'e', 0]);
    state.gprs[0] = u64::MAX;
    run(
        &assemble(|a| a.pextrb(rax, xmm3, 1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.gprs[0], u64::from(b'1'));

    // pinsrb from a byte register's 32-bit name; insertps from m32 ignores imm8[7:6].
    state.gprs[1] = 0xffff_ff41;
    run(
        &assemble(|a| a.pinsrb(xmm3, ecx, 2)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(3), bytes(b"01A3456789abcdef"));
    memory.bytes[0x105..0x109].copy_from_slice(&9.0f32.to_le_bytes());
    state.set_xmm(2, f32x4([1.0, 2.0, 3.0, 4.0]));
    run(
        &assemble(|a| a.insertps(xmm2, dword_ptr(rbx), 0xe1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(2), f32x4([0.0, 2.0, 9.0, 4.0]));

    // pmovsxbw sign-extends 8 bytes (m64, no alignment needed).
    memory.bytes[0x105..0x10d].copy_from_slice(&[0x80, 0x7f, 0xff, 1, 0, 2, 3, 4]);
    run(
        &assemble(|a| a.pmovsxbw(xmm1, qword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(1), 0x0004_0003_0002_0000_0001_ffff_007f_ff80);

    // phminposuw: minimum 3 at index 2.
    state.set_xmm(1, 0x0009_0008_0007_0006_0005_0003_0004_ffff);
    run(
        &assemble(|a| a.phminposuw(xmm1, xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(1), (2 << 16) | 3);
}

#[test]
fn sse41_integer_arithmetic() {
    let mut state = X86State::default();
    // pmuldq: signed 32 × 32 → 64 of the even doublewords.
    state.set_xmm(0, 0x0000_0000_0000_0002_0000_0000_ffff_fffd);
    state.set_xmm(1, 0x0000_0000_7fff_ffff_0000_0000_0000_0004);
    run(
        &assemble(|a| a.pmuldq(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(
        state.xmm(0),
        (0xffff_fffe_u128 << 64) | 0xffff_ffff_ffff_fff4
    );
    // packusdw: -1 → 0, 70000 → 65535.
    state.set_xmm(0, 0x0001_1170_ffff_ffff);
    state.set_xmm(1, 0);
    run(
        &assemble(|a| a.packusdw(xmm0, xmm1)),
        &mut state,
        &mut memory(),
    );
    assert_eq!(state.xmm(0), 0xffff_0000);
    // mpsadbw with source block 1 and destination offset 4.
    state.set_xmm(
        0,
        u128::from_le_bytes([0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    );
    state.set_xmm(
        1,
        u128::from_le_bytes([0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]),
    );
    run(
        &assemble(|a| a.mpsadbw(xmm0, xmm1, 0b101)),
        &mut state,
        &mut memory(),
    );
    // Window k of the destination is k+1 … k+4 against 1 … 4: a distance of 4k.
    assert_eq!(
        state.xmm(0),
        (0..8).fold(0u128, |acc, k| acc | ((4 * k) << (16 * k)))
    );
}

// --- SSE4.2 and POPCNT ----------------------------------------------------------------------------

#[test]
fn string_compares_find_characters_and_substrings() {
    let mut memory = memory();
    memory.bytes[0x103..0x113].copy_from_slice(b"hello, world\0xyz");
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 0x103; // string compares need no alignment
    state.rflags = 0x2 | 0x8d5;

    // Equal any with the set ", ": the first hit is at 5; ZF (null in memory), SF (null in set).
    state.set_xmm(1, bytes(b", "));
    run(
        &assemble(|a| a.pcmpistri(xmm1, xmmword_ptr(rbx), 0x00)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.gprs[1], 5);
    assert_eq!(state.rflags, 0x2 | 0x01 | 0x40 | 0x80);

    // Equal ordered, explicit lengths: "wor" (EAX = 3) in the first 12 bytes (EDX = -12).
    state.set_xmm(1, bytes(b"worXXXXXXXXXXXXX"));
    state.gprs[0] = 3;
    state.gprs[2] = (-12i64) as u64;
    run(
        &assemble(|a| a.pcmpestri(xmm1, xmmword_ptr(rbx), 0x0c)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.gprs[1], 7);
    assert_eq!(state.rflags, 0x2 | 0x01 | 0x40 | 0x80);

    // Ranges a-z as a byte mask into XMM0 (imm8[6]): letters of "hello, world".
    state.set_xmm(1, bytes(b"az"));
    run(
        &assemble(|a| a.pcmpistrm(xmm1, xmmword_ptr(rbx), 0x44)),
        &mut state,
        &mut memory,
    );
    let letters: u128 = (0..12)
        .filter(|&i| i != 5 && i != 6)
        .fold(0, |acc, i| acc | (0xff << (8 * i)));
    assert_eq!(state.xmm(0), letters);
    assert_eq!(state.rflags & 0x800, 0x800, "OF: byte 0 is a letter");
}

#[test]
fn crc32_and_pcmpgtq() {
    let mut memory = memory();
    memory.bytes[0x100..0x109].copy_from_slice(b"123456789");
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 0x100;
    // The CRC-32C check value: initial value and final XOR all-ones.
    state.gprs[0] = 0xffff_ffff;
    run(
        &assemble(|a| a.crc32(rax, qword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    state.gprs[3] = GUEST_BASE + 0x108;
    run(
        &assemble(|a| a.crc32(eax, byte_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.gprs[0] ^ 0xffff_ffff, 0xe306_9283);
    // CRC of the single byte 1 from 0 is entry 1 of the CRC-32C table, here read from BH.
    state.gprs[0] = 0;
    state.gprs[3] = 0x0100;
    run(&assemble(|a| a.crc32(eax, bh)), &mut state, &mut memory);
    assert_eq!(state.gprs[0], 0xf26b_8303);
    // AH is bits 8–15 of RAX (here 1, fed into the running value 0x100); a 32-bit destination
    // zero-extends.
    state.gprs[0] = 0xffff_ffff_0000_0100;
    run(&assemble(|a| a.crc32(eax, ah)), &mut state, &mut memory);
    assert_eq!(state.gprs[0], 0xf26b_8302);

    // pcmpgtq is signed: -1 < 1.
    state.set_xmm(0, (1u128 << 64) | u128::from(u64::MAX));
    state.set_xmm(1, (u128::from(u64::MAX) << 64) | 1);
    run(
        &assemble(|a| a.pcmpgtq(xmm0, xmm1)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(0), u128::from(u64::MAX) << 64);
}

#[test]
fn popcnt_counts_and_sets_only_zf() {
    let mut state = X86State::default();
    for (source, count, flags) in [(0u64, 0, 0x40), (0xf0f0, 8, 0), (u64::MAX, 64, 0)] {
        state.rflags = 0x2 | 0x8d5;
        state.gprs[1] = source;
        state.gprs[0] = 0x1234;
        run(&assemble(|a| a.popcnt(rax, rcx)), &mut state, &mut memory());
        assert_eq!(state.gprs[0], count);
        assert_eq!(state.rflags, 0x2 | flags);
    }
    // popcnt r16 counts the low 16 bits and keeps the rest of the destination.
    state.gprs[0] = 0xdead_beef_0000_0000;
    state.gprs[1] = 0xffff_0003;
    run(&assemble(|a| a.popcnt(ax, cx)), &mut state, &mut memory());
    assert_eq!(state.gprs[0], 0xdead_beef_0000_0002);
}

// --- Negative tests ---------------------------------------------------------------------------------

#[test]
fn alignment_of_the_new_forms() {
    let mut memory = memory();
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 8;
    let before = state.clone();
    for instruction in [
        assemble(|a| a.haddps(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.movntdqa(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.movshdup(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.roundps(xmm0, xmmword_ptr(rbx), 0)),
        assemble(|a| a.pshufb(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.ptest(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.cmpps(xmm0, xmmword_ptr(rbx), 1)),
    ] {
        assert_eq!(
            guest_exception(&instruction, &mut state, &mut memory),
            "#GP",
            "{instruction}"
        );
        assert_eq!(state, before);
    }
    for instruction in [
        assemble(|a| a.pcmpistri(xmm0, xmmword_ptr(rbx), 0)),
        assemble(|a| a.pcmpestrm(xmm0, xmmword_ptr(rbx), 0)),
        assemble(|a| a.pmovzxbw(xmm0, qword_ptr(rbx))),
        assemble(|a| a.cmpsd_3(xmm0, qword_ptr(rbx), 1)),
        assemble(|a| a.lddqu(xmm0, xmmword_ptr(rbx))),
    ] {
        run(&instruction, &mut state.clone(), &mut memory);
    }
    // AMD's misaligned-SSE mode (MXCSR.MM): arithmetic accepts the operand, aligned and
    // non-temporal moves still fault.
    state.set_mxcsr(MXCSR_DEFAULT | (1 << 17));
    run(
        &assemble(|a| a.haddps(xmm0, xmmword_ptr(rbx))),
        &mut state.clone(),
        &mut memory,
    );
    for instruction in [
        assemble(|a| a.movaps(xmm0, xmmword_ptr(rbx))),
        assemble(|a| a.movntdqa(xmm0, xmmword_ptr(rbx))),
    ] {
        assert_eq!(
            guest_exception(&instruction, &mut state, &mut memory),
            "#GP",
            "{instruction}"
        );
    }
}

#[test]
fn bad_memory_of_the_new_forms_changes_nothing() {
    let mut memory = FakeMemory::new(GUEST_BASE, MEMORY_SIZE, 0x55);
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + MEMORY_SIZE as u64 - 4;
    state.gprs[7] = GUEST_BASE + MEMORY_SIZE as u64 - 8; // maskmovdqu: bytes 8 … 15 outside
    state.set_xmm(0, u128::MAX);
    state.set_xmm(1, u128::MAX);
    let before = state.clone();
    for instruction in [
        assemble(|a| a.crc32(rax, qword_ptr(rbx))),
        assemble(|a| a.pextrq(qword_ptr(rbx), xmm0, 1)),
        assemble(|a| a.pcmpistri(xmm0, xmmword_ptr(rbx), 0)),
        assemble(|a| a.pmovsxwd(xmm0, qword_ptr(rbx))),
        // Selects every byte, the first 8 of which are accessible: none may be written.
        assemble(|a| a.maskmovdqu(xmm0, xmm1)),
    ] {
        let result = execute(&instruction, &mut state, &mut memory);
        assert!(
            matches!(result, Err(EmulationError::BadAddress { .. })),
            "{instruction}: {result:?}"
        );
        assert_eq!(state, before);
        assert!(memory.bytes.iter().all(|&b| b == 0x55), "{instruction}");
    }
}

#[test]
fn unmasked_exceptions_of_the_new_forms_stop_with_xm() {
    let mut memory = memory();
    // Inexact rounding with PM unmasked: #XM unless imm8[3] suppresses the precision exception.
    let mut state = X86State::default();
    state.set_mxcsr(MXCSR_DEFAULT & !0x1000);
    state.set_xmm(1, f64x2(2.5, 0.0));
    let before = state.clone();
    let round = assemble(|a| a.roundsd(xmm0, xmm1, 0));
    assert_eq!(guest_exception(&round, &mut state, &mut memory), "#XM");
    assert_eq!(state, before);
    run(
        &assemble(|a| a.roundsd(xmm0, xmm1, 8)),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(0), f64x2(2.0, 0.0));

    // A signalling NaN in a quiet compare with IM unmasked.
    let mut state = X86State::default();
    state.set_mxcsr(MXCSR_DEFAULT & !0x80);
    state.set_xmm(1, 0x7ff0_0000_0000_0001);
    let before = state.clone();
    let compare = assemble(|a| a.cmpsd_3(xmm0, xmm1, 0));
    assert_eq!(guest_exception(&compare, &mut state, &mut memory), "#XM");
    assert_eq!(state, before);

    // dpps overflowing with OM unmasked.
    let mut state = X86State::default();
    state.set_mxcsr(MXCSR_DEFAULT & !0x400);
    state.set_xmm(0, f32x4([f32::MAX; 4]));
    state.set_xmm(1, f32x4([2.0; 4]));
    let before = state.clone();
    let dpps = assemble(|a| a.dpps(xmm0, xmm1, 0xff));
    assert_eq!(guest_exception(&dpps, &mut state, &mut memory), "#XM");
    assert_eq!(state, before);
}
