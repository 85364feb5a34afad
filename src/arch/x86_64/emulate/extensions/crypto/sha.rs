//! The SHA-1 and SHA-256 round and message-schedule steps of the SHA extensions, as the SDM's
//! operation sections define them on doubleword lanes, with the functions of FIPS-180.
//!
//! Lane 0 is bits 31:0 of a register. The SHA-1 instructions hold the state A, B, C, D and the
//! message words W0 … W3 from lane 3 down to lane 0; the SHA-256 message instructions hold
//! W0 … W3 from lane 0 up, and the round instruction the state (A, B, E, F) or (C, D, G, H)
//! from lane 3 down.

/// The four doublewords of `value`, lane 0 (bits 31:0) first.
fn lanes(value: u128) -> [u32; 4] {
    std::array::from_fn(|lane| (value >> (32 * lane)) as u32)
}

/// The register with lanes `words` (lane 0 first).
fn from_lanes(words: [u32; 4]) -> u128 {
    words.iter().enumerate().fold(0, |value, (lane, &word)| {
        value | (u128::from(word) << (32 * lane))
    })
}

// --- SHA-1 -------------------------------------------------------------------------------------

/// The SHA-1 round function and constant of `sha1rnds4` for imm8[1:0] (rounds 0–19, 20–39,
/// 40–59, 60–79).
fn sha1_function(selector: u8, b: u32, c: u32, d: u32) -> (u32, u32) {
    match selector & 3 {
        0 => ((b & c) ^ (!b & d), 0x5a82_7999),
        1 => (b ^ c ^ d, 0x6ed9_eba1),
        2 => ((b & c) ^ (b & d) ^ (c & d), 0x8f1b_bcdc),
        _ => (b ^ c ^ d, 0xca62_c1d6),
    }
}

/// `sha1rnds4`: four SHA-1 rounds on the state A, B, C, D (lanes 3 … 0 of `state`) with the
/// message words W0 + E, W1, W2, W3 (lanes 3 … 0 of `message`); imm8[1:0] selects the round
/// function and constant. Returns the new A, B, C, D.
pub(super) fn sha1_four_rounds(state: u128, message: u128, imm: u8) -> u128 {
    let [d, c, b, a] = lanes(state);
    let [w3, w2, w1, w0_plus_e] = lanes(message);
    let (mut a, mut b, mut c, mut d, mut e) = (a, b, c, d, 0u32);
    for word in [w0_plus_e, w1, w2, w3] {
        let (f, k) = sha1_function(imm, b, c, d);
        let next_a = f
            .wrapping_add(a.rotate_left(5))
            .wrapping_add(word)
            .wrapping_add(e)
            .wrapping_add(k);
        (a, b, c, d, e) = (next_a, a, b.rotate_left(30), c, d);
    }
    from_lanes([d, c, b, a])
}

/// `sha1nexte`: the state variable E after four rounds (A of `previous` rotated left by 30)
/// added to the top lane of `message`; the other lanes of `message` pass through.
pub(super) fn sha1_next_e(previous: u128, message: u128) -> u128 {
    let e = lanes(previous)[3].rotate_left(30);
    let mut words = lanes(message);
    words[3] = words[3].wrapping_add(e);
    from_lanes(words)
}

/// `sha1msg1`: with W0 … W3 in `first` and W4, W5 in the top lanes of `second` (lane 3 first),
/// the partial message words W(i) ^ W(i+2) for i = 0 … 3 (W0 ^ W2 in lane 3).
pub(super) fn sha1_message_1(first: u128, second: u128) -> u128 {
    let [w3, w2, w1, w0] = lanes(first);
    let [_, _, w5, w4] = lanes(second);
    from_lanes([w5 ^ w3, w4 ^ w2, w3 ^ w1, w2 ^ w0])
}

/// `sha1msg2`: completes W16 … W19 from the partial words in `first` (lane 3 first) and W13,
/// W14, W15 in lanes 2 … 0 of `second`: W16 = (first₃ ^ W13) rol 1, …, W19 = (first₀ ^ W16)
/// rol 1.
pub(super) fn sha1_message_2(first: u128, second: u128) -> u128 {
    let [p3, p2, p1, p0] = lanes(first);
    let [w15, w14, w13, _] = lanes(second);
    let w16 = (p0 ^ w13).rotate_left(1);
    let w17 = (p1 ^ w14).rotate_left(1);
    let w18 = (p2 ^ w15).rotate_left(1);
    let w19 = (p3 ^ w16).rotate_left(1);
    from_lanes([w19, w18, w17, w16])
}

// --- SHA-256 -----------------------------------------------------------------------------------

/// Σ0 of FIPS-180 (rounds, applied to A).
fn big_sigma_0(x: u32) -> u32 {
    x.rotate_right(2) ^ x.rotate_right(13) ^ x.rotate_right(22)
}

/// Σ1 of FIPS-180 (rounds, applied to E).
fn big_sigma_1(x: u32) -> u32 {
    x.rotate_right(6) ^ x.rotate_right(11) ^ x.rotate_right(25)
}

/// σ0 of FIPS-180 (message schedule).
fn small_sigma_0(x: u32) -> u32 {
    x.rotate_right(7) ^ x.rotate_right(18) ^ (x >> 3)
}

/// σ1 of FIPS-180 (message schedule).
fn small_sigma_1(x: u32) -> u32 {
    x.rotate_right(17) ^ x.rotate_right(19) ^ (x >> 10)
}

/// `sha256rnds2`: two SHA-256 rounds. `cdgh` holds C, D, G, H and `abef` A, B, E, F (each
/// lane 3 first); lanes 0 and 1 of `xmm0` are the message words plus round constants of the
/// two rounds. Returns the new A, B, E, F (the old `abef` is the new C, D, G, H).
pub(super) fn sha256_two_rounds(cdgh: u128, abef: u128, xmm0: u128) -> u128 {
    let [h, g, d, c] = lanes(cdgh);
    let [f, e, b, a] = lanes(abef);
    let [wk0, wk1, _, _] = lanes(xmm0);
    let (mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h) = (a, b, c, d, e, f, g, h);
    for wk in [wk0, wk1] {
        let choose = (e & f) ^ (!e & g);
        let majority = (a & b) ^ (a & c) ^ (b & c);
        let t1 = choose
            .wrapping_add(big_sigma_1(e))
            .wrapping_add(wk)
            .wrapping_add(h);
        let t2 = majority.wrapping_add(big_sigma_0(a));
        (h, g, f, e) = (g, f, e, t1.wrapping_add(d));
        (d, c, b, a) = (c, b, a, t1.wrapping_add(t2));
    }
    from_lanes([f, e, b, a])
}

/// `sha256msg1`: with W0 … W3 in `first` and W4 in lane 0 of `second`, the partial message
/// words W(i) + σ0(W(i+1)) for i = 0 … 3 (lane 0 first).
pub(super) fn sha256_message_1(first: u128, second: u128) -> u128 {
    let [w0, w1, w2, w3] = lanes(first);
    let w4 = lanes(second)[0];
    from_lanes([
        w0.wrapping_add(small_sigma_0(w1)),
        w1.wrapping_add(small_sigma_0(w2)),
        w2.wrapping_add(small_sigma_0(w3)),
        w3.wrapping_add(small_sigma_0(w4)),
    ])
}

/// `sha256msg2`: completes W16 … W19 from the partial words in `first` (lane 0 first) and W14,
/// W15 in lanes 2 and 3 of `second`: W(16+i) = first_i + σ1(W(14+i)).
pub(super) fn sha256_message_2(first: u128, second: u128) -> u128 {
    let [p0, p1, p2, p3] = lanes(first);
    let [_, _, w14, w15] = lanes(second);
    let w16 = p0.wrapping_add(small_sigma_1(w14));
    let w17 = p1.wrapping_add(small_sigma_1(w15));
    let w18 = p2.wrapping_add(small_sigma_1(w16));
    let w19 = p3.wrapping_add(small_sigma_1(w17));
    from_lanes([w16, w17, w18, w19])
}
