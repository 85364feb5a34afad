//! Expectation tests of the crypto forms with results from the standards, independent of the
//! host CPU: an AES round of FIPS-197 Appendix B, AES-128 encryption and decryption of
//! Appendix C.1 with the key schedule built by `aeskeygenassist`, SHA-1 and SHA-256 of "abc"
//! (FIPS-180 examples) with the message schedule built by the message instructions, carry-less
//! products; and the negative tests (misaligned and inaccessible memory operands).

use iced_x86::code_asm::{rbx, xmm0, xmm1, xmm2, xmm3, xmmword_ptr};

use super::super::super::state::MXCSR_DEFAULT;
use super::super::test_support::{GUEST_BASE, assemble, expect_failure, memory, run};
use super::*;

/// Bytes as an XMM value (byte 0 = bits 7:0).
fn from_bytes(bytes: [u8; 16]) -> u128 {
    u128::from_le_bytes(bytes)
}

/// Runs the register form `instruction` on XMM1 (destination) and XMM2 (source).
fn apply(instruction: &Instruction, first: u128, second: u128, xmm0_value: u128) -> u128 {
    let mut state = X86State::default();
    state.set_xmm(0, xmm0_value);
    state.set_xmm(1, first);
    state.set_xmm(2, second);
    run(instruction, &mut state, &mut memory());
    state.xmm(1)
}

// --- AES ---------------------------------------------------------------------------------------

#[test]
fn aesenc_computes_round_one_of_fips_197_appendix_b() {
    let start_of_round_1 = from_bytes([
        0x19, 0x3d, 0xe3, 0xbe, 0xa0, 0xf4, 0xe2, 0x2b, 0x9a, 0xc6, 0x8d, 0x2a, 0xe9, 0xf8, 0x48,
        0x08,
    ]);
    let round_key_1 = from_bytes([
        0xa0, 0xfa, 0xfe, 0x17, 0x88, 0x54, 0x2c, 0xb1, 0x23, 0xa3, 0x39, 0x39, 0x2a, 0x6c, 0x76,
        0x05,
    ]);
    let start_of_round_2 = from_bytes([
        0xa4, 0x9c, 0x7f, 0xf2, 0x68, 0x9f, 0x35, 0x2b, 0x6b, 0x5b, 0xea, 0x43, 0x02, 0x6a, 0x50,
        0x49,
    ]);
    let aesenc = assemble(|a| a.aesenc(xmm1, xmm2));
    assert_eq!(
        apply(&aesenc, start_of_round_1, round_key_1, 0),
        start_of_round_2
    );
}

/// The AES-128 round keys of `key`, expanded with `aeskeygenassist` (the word shuffling and
/// XOR chain done here).
fn expand_key(key: u128) -> [u128; 11] {
    const RCON: [u32; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];
    let mut keys = [key; 11];
    for round in 1..11 {
        let rcon = RCON[round - 1];
        let assist = assemble(|a| a.aeskeygenassist(xmm1, xmm2, rcon));
        // Lane 3 of the result: RotWord(SubWord(w3)) ^ Rcon.
        let temp = (apply(&assist, 0, keys[round - 1], 0) >> 96) as u32;
        let mut words = [0u32; 4];
        let mut previous = temp;
        for (lane, word) in words.iter_mut().enumerate() {
            *word = (keys[round - 1] >> (32 * lane)) as u32 ^ previous;
            previous = *word;
        }
        keys[round] = words.iter().enumerate().fold(0, |key, (lane, &word)| {
            key | (u128::from(word) << (32 * lane))
        });
    }
    keys
}

#[test]
fn aes_128_encrypts_and_decrypts_fips_197_appendix_c1() {
    let key = from_bytes(std::array::from_fn(|i| i as u8));
    let plaintext = from_bytes(std::array::from_fn(|i| (i as u8) * 0x11));
    let ciphertext = from_bytes([
        0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4, 0xc5,
        0x5a,
    ]);
    let keys = expand_key(key);
    // FIPS-197 A.1: the last round key of 000102…0f is 13111d7f e3944a17 f307a78b 4d2b30c5.
    assert_eq!(
        keys[10].to_le_bytes()[..4],
        [0x13, 0x11, 0x1d, 0x7f],
        "round key 10"
    );

    let aesenc = assemble(|a| a.aesenc(xmm1, xmm2));
    let aesenclast = assemble(|a| a.aesenclast(xmm1, xmm2));
    let mut state = plaintext ^ keys[0];
    for round_key in &keys[1..10] {
        state = apply(&aesenc, state, *round_key, 0);
    }
    state = apply(&aesenclast, state, keys[10], 0);
    assert_eq!(state, ciphertext);

    // The equivalent inverse cipher: InvMixColumns applied to the middle round keys.
    let aesimc = assemble(|a| a.aesimc(xmm1, xmm2));
    let aesdec = assemble(|a| a.aesdec(xmm1, xmm2));
    let aesdeclast = assemble(|a| a.aesdeclast(xmm1, xmm2));
    let mut state = ciphertext ^ keys[10];
    for round_key in keys[1..10].iter().rev() {
        let decryption_key = apply(&aesimc, u128::MAX, *round_key, 0);
        state = apply(&aesdec, state, decryption_key, 0);
    }
    state = apply(&aesdeclast, state, keys[0], 0);
    assert_eq!(state, plaintext);
}

#[test]
fn aeskeygenassist_uses_words_one_and_three_and_the_whole_imm8() {
    let assist = |imm| assemble(|a| a.aeskeygenassist(xmm1, xmm2, imm));
    // X1 = 00000001, X3 = 0; X0 and X2 (all ones) are ignored. SubWord(X1) = 6363637c (S(01) =
    // 7c, S(00) = 63), RotWord of it 7c636363; SubWord(X3) = 63636363.
    let source = from_lanes([0xffff_ffff, 1, 0xffff_ffff, 0]);
    assert_eq!(
        apply(&assist(0x1b), u128::MAX, source, 0),
        from_lanes([
            0x6363_637c,
            0x7c63_6363 ^ 0x1b,
            0x6363_6363,
            0x6363_6363 ^ 0x1b
        ])
    );
    // The round constant is all eight bits of the imm8.
    assert_eq!(
        apply(&assist(0xff), 0, 0, 0),
        from_lanes([0x6363_6363, 0x6363_639c, 0x6363_6363, 0x6363_639c])
    );
}

// --- PCLMULQDQ -----------------------------------------------------------------------------------

#[test]
fn pclmulqdq_multiplies_the_selected_quadwords_without_carries() {
    // Polynomials over GF(2): first = (x + 1 : x² + 1), second = (x² + x + 1 : x + 1), high
    // quadword first.
    let first = (0x3u128 << 64) | 0x5;
    let second = (0x7u128 << 64) | 0x3;
    for (imm, expected) in [
        (0x00, 0xf),  // (x² + 1)(x + 1) = x³ + x² + x + 1
        (0x01, 0x5),  // (x + 1)(x + 1) = x² + 1
        (0x10, 0x1b), // (x² + 1)(x² + x + 1) = x⁴ + x³ + x + 1
        (0x11, 0x9),  // (x + 1)(x² + x + 1) = x³ + 1
        (0xee, 0xf),  // only bits 0 and 4 select
        (0xff, 0x9),
    ] {
        let pclmulqdq = assemble(|a| a.pclmulqdq(xmm1, xmm2, imm));
        assert_eq!(
            apply(&pclmulqdq, first, second, 0),
            expected,
            "imm {imm:#x}"
        );
    }
    let pclmulqdq = assemble(|a| a.pclmulqdq(xmm1, xmm2, 0x11));
    // (Σ xⁱ, i < 64)² = Σ x²ⁱ: every even bit of the 128-bit product.
    assert_eq!(
        apply(&pclmulqdq, u128::MAX, u128::MAX, 0),
        0x5555_5555_5555_5555_5555_5555_5555_5555
    );
    assert_eq!(apply(&pclmulqdq, 1 << 127, 1 << 127, 0), 1 << 126);
}

// --- SHA -----------------------------------------------------------------------------------------

/// The first `N` primes.
fn primes<const N: usize>() -> [u64; N] {
    let mut found = [0; N];
    let mut count = 0;
    let mut candidate = 2;
    while count < N {
        if (2..candidate).all(|divisor| candidate % divisor != 0) {
            found[count] = candidate;
            count += 1;
        }
        candidate += 1;
    }
    found
}

/// ⌊value^(1/degree)⌋ by bisection (degree 2 or 3, `value` < 2¹⁰⁵: the root is below 2³⁶).
fn integer_root(value: u128, degree: u32) -> u128 {
    let (mut low, mut high) = (0u128, 1u128 << 36);
    while low < high {
        let middle = (low + high).div_ceil(2);
        if middle.pow(degree) <= value {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low
}

/// The first 32 bits of the fractional part of `prime`^(1/degree) (FIPS-180's definition of the
/// SHA-256 constants and initial hash value).
fn fractional_root_bits(prime: u64, degree: u32) -> u32 {
    integer_root(u128::from(prime) << (32 * degree), degree) as u32
}

/// XMM lanes (lane 0 first) as a value.
fn from_lanes(words: [u32; 4]) -> u128 {
    words.iter().enumerate().fold(0, |value, (lane, &word)| {
        value | (u128::from(word) << (32 * lane))
    })
}

/// Lane `lane` of `value`.
fn lane(value: u128, lane: usize) -> u32 {
    (value >> (32 * lane)) as u32
}

/// The single padded block of the message "abc" as big-endian words.
fn abc_block() -> [u32; 16] {
    let mut block = [0u32; 16];
    block[0] = 0x6162_6380;
    block[15] = 24;
    block
}

#[test]
fn sha256_of_abc_with_the_sha_instructions() {
    let primes = primes::<64>();
    let round_constants = primes.map(|prime| fractional_root_bits(prime, 3));
    let initial: [u32; 8] = std::array::from_fn(|i| fractional_root_bits(primes[i], 2));
    assert_eq!(round_constants[0], 0x428a_2f98, "FIPS-180 K0");
    assert_eq!(initial[0], 0x6a09_e667, "FIPS-180 H0");

    // Message schedule: four words at a time with sha256msg1, the W(t-7) addition done here,
    // and sha256msg2; lanes hold W(t) … W(t+3) from lane 0 up.
    let sha256msg1 = assemble(|a| a.sha256msg1(xmm1, xmm2));
    let sha256msg2 = assemble(|a| a.sha256msg2(xmm1, xmm2));
    let mut schedule = [0u32; 64];
    schedule[..16].copy_from_slice(&abc_block());
    for t in (16..64).step_by(4) {
        let group = |start: usize| from_lanes(std::array::from_fn(|i| schedule[start + i]));
        let partial = apply(&sha256msg1, group(t - 16), group(t - 12), 0);
        let partial = from_lanes(std::array::from_fn(|i| {
            lane(partial, i).wrapping_add(schedule[t - 7 + i])
        }));
        let words = apply(&sha256msg2, partial, group(t - 4), 0);
        for i in 0..4 {
            schedule[t + i] = lane(words, i);
        }
    }
    // Against FIPS-180's recurrence.
    for t in 16..64 {
        let sigma_0 = |x: u32| x.rotate_right(7) ^ x.rotate_right(18) ^ (x >> 3);
        let sigma_1 = |x: u32| x.rotate_right(17) ^ x.rotate_right(19) ^ (x >> 10);
        let expected = sigma_1(schedule[t - 2])
            .wrapping_add(schedule[t - 7])
            .wrapping_add(sigma_0(schedule[t - 15]))
            .wrapping_add(schedule[t - 16]);
        assert_eq!(schedule[t], expected, "W{t}");
    }

    // Rounds, two per sha256rnds2, with W + K in XMM0; the state as (A, B, E, F) and
    // (C, D, G, H), lane 3 first.
    let sha256rnds2 = assemble(|a| a.sha256rnds2(xmm1, xmm2));
    let [a, b, c, d, e, f, g, h] = initial;
    let mut abef = from_lanes([f, e, b, a]);
    let mut cdgh = from_lanes([h, g, d, c]);
    for t in (0..64).step_by(2) {
        let message = from_lanes([
            schedule[t].wrapping_add(round_constants[t]),
            schedule[t + 1].wrapping_add(round_constants[t + 1]),
            0xdead_beef, // ignored
            0xfeed_f00d,
        ]);
        let next = apply(&sha256rnds2, cdgh, abef, message);
        (cdgh, abef) = (abef, next);
    }
    let state = [
        lane(abef, 3),
        lane(abef, 2),
        lane(cdgh, 3),
        lane(cdgh, 2),
        lane(abef, 1),
        lane(abef, 0),
        lane(cdgh, 1),
        lane(cdgh, 0),
    ];
    let digest: Vec<u32> = state
        .iter()
        .zip(initial)
        .map(|(word, initial)| word.wrapping_add(initial))
        .collect();
    assert_eq!(
        digest,
        [
            0xba78_16bf,
            0x8f01_cfea,
            0x4141_40de,
            0x5dae_2223,
            0xb003_61a3,
            0x9617_7a9c,
            0xb410_ff61,
            0xf200_15ad
        ]
    );
}

#[test]
fn sha1_of_abc_with_the_sha_instructions() {
    // Message schedule: lanes hold W(t) … W(t+3) from lane 3 down.
    let group_of = |words: &[u32]| from_lanes([words[3], words[2], words[1], words[0]]);
    let sha1msg1 = assemble(|a| a.sha1msg1(xmm1, xmm2));
    let sha1msg2 = assemble(|a| a.sha1msg2(xmm1, xmm2));
    let mut schedule = [0u32; 80];
    schedule[..16].copy_from_slice(&abc_block());
    for t in (16..80).step_by(4) {
        let partial = apply(
            &sha1msg1,
            group_of(&schedule[t - 16..]),
            group_of(&schedule[t - 12..]),
            0,
        ) ^ group_of(&schedule[t - 8..]);
        let words = apply(&sha1msg2, partial, group_of(&schedule[t - 4..]), 0);
        for i in 0..4 {
            schedule[t + i] = lane(words, 3 - i);
        }
    }
    for t in 16..80 {
        let expected = (schedule[t - 3] ^ schedule[t - 8] ^ schedule[t - 14] ^ schedule[t - 16])
            .rotate_left(1);
        assert_eq!(schedule[t], expected, "W{t}");
    }

    // Rounds, four per sha1rnds4 (imm8 = the round group); E enters with the first message
    // words and is carried by sha1nexte afterwards.
    let initial = [
        0x6745_2301u32,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let sha1nexte = assemble(|a| a.sha1nexte(xmm1, xmm2));
    let mut abcd = from_lanes([initial[3], initial[2], initial[1], initial[0]]);
    let initial_e = u128::from(initial[4]) << 96;
    let mut previous = abcd;
    for group in 0..20 {
        let message = group_of(&schedule[4 * group..]);
        let message_and_e = if group == 0 {
            message.wrapping_add(initial_e)
        } else {
            apply(&sha1nexte, previous, message, 0)
        };
        let sha1rnds4 = assemble(|a| a.sha1rnds4(xmm1, xmm2, (group / 5) as u32));
        previous = abcd;
        abcd = apply(&sha1rnds4, abcd, message_and_e, 0);
    }
    let e = lane(apply(&sha1nexte, previous, initial_e, 0), 3);
    let digest = [
        lane(abcd, 3).wrapping_add(initial[0]),
        lane(abcd, 2).wrapping_add(initial[1]),
        lane(abcd, 1).wrapping_add(initial[2]),
        lane(abcd, 0).wrapping_add(initial[3]),
        e,
    ];
    assert_eq!(
        digest,
        [
            0xa999_3e36,
            0x4706_816a,
            0xba3e_2571,
            0x7850_c26c,
            0x9cd0_d89d
        ]
    );
}

#[test]
fn sha1rnds4_reads_only_imm8_bits_1_0() {
    let state = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    let message = 0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0;
    for selector in 0..4u32 {
        let reference = apply(
            &assemble(|a| a.sha1rnds4(xmm1, xmm2, selector)),
            state,
            message,
            0,
        );
        for high in [0x04u32, 0x80, 0xfc] {
            let instruction = assemble(|a| a.sha1rnds4(xmm1, xmm2, selector | high));
            assert_eq!(apply(&instruction, state, message, 0), reference);
        }
    }
}

// --- Memory operands and negative tests ----------------------------------------------------------

#[test]
fn memory_sources_are_read_at_their_guest_address() {
    let mut memory = memory();
    let round_key = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
    memory.bytes[0x1000..0x1010].copy_from_slice(&round_key.to_le_bytes());
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 0x1000;
    state.set_xmm(3, 0x1234);
    let expected = apply(&assemble(|a| a.aesenc(xmm1, xmm2)), 0x1234, round_key, 0);
    run(
        &assemble(|a| a.aesenc(xmm3, xmmword_ptr(rbx))),
        &mut state,
        &mut memory,
    );
    assert_eq!(state.xmm(3), expected);
    assert_eq!(
        state.xsave[super::super::super::state::XSAVE_HEADER_OFFSET],
        0
    );
}

#[test]
fn misaligned_memory_operands_raise_gp_except_where_the_cpu_allows_them() {
    let forms = [
        assemble(|a| a.aesenc(xmm1, xmmword_ptr(rbx))),
        assemble(|a| a.aeskeygenassist(xmm1, xmmword_ptr(rbx), 1)),
        assemble(|a| a.pclmulqdq(xmm1, xmmword_ptr(rbx), 0x11)),
        assemble(|a| a.sha256rnds2(xmm1, xmmword_ptr(rbx))),
    ];
    for instruction in &forms {
        let mut memory = memory();
        let mut state = X86State::default();
        state.gprs[3] = GUEST_BASE + 0xff8; // misaligned, across the page boundary
        state.set_xmm(1, 7);
        let sha = instruction.mnemonic() == iced_x86::Mnemonic::Sha256rnds2;
        if sha && host_is_amd() {
            run(instruction, &mut state, &mut memory);
        } else {
            expect_failure(instruction, &mut state, &mut memory, "#GP");
        }
        // In AMD's misaligned-SSE mode the operand is read wherever it is.
        let mut state = X86State::default();
        state.gprs[3] = GUEST_BASE + 0xff8;
        state.set_mxcsr(MXCSR_DEFAULT | MISALIGNED_SSE_MODE);
        run(instruction, &mut state, &mut memory);
    }
    // The rule itself, for both vendors.
    let sha = Code::Sha1msg1_xmm_xmmm128;
    let aes = Code::Aesdec_xmm_xmmm128;
    assert!(requires_alignment(sha, MXCSR_DEFAULT, false));
    assert!(!requires_alignment(sha, MXCSR_DEFAULT, true));
    assert!(requires_alignment(aes, MXCSR_DEFAULT, true));
    assert!(!requires_alignment(
        aes,
        MXCSR_DEFAULT | MISALIGNED_SSE_MODE,
        false
    ));
}

#[test]
fn inaccessible_memory_operands_change_nothing() {
    let mut memory = memory();
    let mut state = X86State::default();
    state.gprs[3] = GUEST_BASE + 0x1ff0 + 0x10; // just past the end
    state.set_xmm(0, 1);
    state.set_xmm(1, 2);
    for instruction in [
        assemble(|a| a.aesdeclast(xmm1, xmmword_ptr(rbx))),
        assemble(|a| a.sha1rnds4(xmm1, xmmword_ptr(rbx), 3)),
        assemble(|a| a.sha256rnds2(xmm0, xmmword_ptr(rbx))),
    ] {
        expect_failure(&instruction, &mut state, &mut memory, "bad address");
    }
}

#[test]
fn the_fallback_dispatches_here_and_puts_sse_state_in_use() {
    use super::super::super::state::XSAVE_HEADER_OFFSET;
    use super::super::super::testing::FakeServices;
    let aesenc = [0x66, 0x0f, 0x38, 0xdc, 0xca]; // aesenc xmm1, xmm2
    let mut state = X86State {
        rip: 0x20_0000,
        ..X86State::default()
    };
    state.set_xmm(2, 1);
    let instruction =
        super::super::super::emulate(&aesenc, &mut state, &mut memory(), &mut FakeServices::new());
    assert_eq!(
        instruction.map(|i| i.to_string()),
        Ok("aesenc xmm1,xmm2".into())
    );
    assert_eq!(state.rip, 0x20_0005);
    // All-zero state: ShiftRows/SubBytes give 63…63, MixColumns keeps it; XOR the key.
    assert_eq!(state.xmm(1), 0x6363_6363_6363_6363_6363_6363_6363_6362);
    assert_eq!(state.xsave[XSAVE_HEADER_OFFSET] & 2, 2, "SSE state in use");
}
