//! The AES transformations of FIPS-197 as AES-NI applies them to an XMM register.
//!
//! The 128-bit state is the register's bytes in memory order: byte `r + 4c` (bits
//! `8(r + 4c) + 7 : 8(r + 4c)`) is row `r`, column `c` of the FIPS-197 state array, so a
//! column is one doubleword. The S-box is computed at compile time from its definition (the
//! multiplicative inverse in GF(2⁸) followed by the affine transformation), its inverse by
//! inverting that table.

/// The AES polynomial x⁸ + x⁴ + x³ + x + 1 without its x⁸ term.
const REDUCTION: u8 = 0x1b;

/// Product in GF(2⁸) modulo the AES polynomial.
const fn multiply(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= REDUCTION;
        }
        b >>= 1;
    }
    product
}

/// The multiplicative inverse in GF(2⁸) (a²⁵⁴), with 0 mapped to 0.
const fn inverse(a: u8) -> u8 {
    let mut result = 1;
    let mut exponent = 254;
    let mut power = a;
    while exponent != 0 {
        if exponent & 1 != 0 {
            result = multiply(result, power);
        }
        power = multiply(power, power);
        exponent >>= 1;
    }
    result
}

/// SubBytes of one byte: the inverse, then the affine transformation
/// `b ^ rotl(b, 1) ^ rotl(b, 2) ^ rotl(b, 3) ^ rotl(b, 4) ^ 0x63`.
const fn substitute(value: u8) -> u8 {
    let b = inverse(value);
    b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63
}

/// The S-box.
const S_BOX: [u8; 256] = {
    let mut table = [0; 256];
    let mut index = 0;
    while index < 256 {
        table[index] = substitute(index as u8);
        index += 1;
    }
    table
};

/// The inverse S-box.
const INVERSE_S_BOX: [u8; 256] = {
    let mut table = [0; 256];
    let mut index = 0;
    while index < 256 {
        table[S_BOX[index] as usize] = index as u8;
        index += 1;
    }
    table
};

/// The state's bytes (`r + 4c` order).
type State = [u8; 16];

fn state(value: u128) -> State {
    value.to_le_bytes()
}

fn value(state: State) -> u128 {
    u128::from_le_bytes(state)
}

fn sub_bytes(state: State) -> State {
    state.map(|byte| S_BOX[usize::from(byte)])
}

fn inverse_sub_bytes(state: State) -> State {
    state.map(|byte| INVERSE_S_BOX[usize::from(byte)])
}

/// ShiftRows: row `r` rotated left by `r` columns.
fn shift_rows(state: State) -> State {
    std::array::from_fn(|index| {
        let (row, column) = (index % 4, index / 4);
        state[row + 4 * ((column + row) % 4)]
    })
}

/// InvShiftRows: row `r` rotated right by `r` columns.
fn inverse_shift_rows(state: State) -> State {
    std::array::from_fn(|index| {
        let (row, column) = (index % 4, index / 4);
        state[row + 4 * ((column + 4 - row) % 4)]
    })
}

/// Multiplies every column by the circulant matrix whose first row is `coefficients`:
/// `out[r] = Σ_k coefficients[(k - r) mod 4] · in[k]`.
fn mix_columns_with(state: State, coefficients: [u8; 4]) -> State {
    std::array::from_fn(|index| {
        let (row, column) = (index % 4, index / 4);
        (0..4).fold(0, |sum, k| {
            sum ^ multiply(coefficients[(k + 4 - row) % 4], state[k + 4 * column])
        })
    })
}

/// MixColumns: the matrix with first row {02} {03} {01} {01}.
fn mix_columns(state: State) -> State {
    mix_columns_with(state, [0x02, 0x03, 0x01, 0x01])
}

/// InvMixColumns: the matrix with first row {0e} {0b} {0d} {09}.
fn inverse_mix_columns_of(state: State) -> State {
    mix_columns_with(state, [0x0e, 0x0b, 0x0d, 0x09])
}

/// `aesenc`: ShiftRows, SubBytes, MixColumns, then AddRoundKey.
pub(super) fn encrypt_round(state_value: u128, round_key: u128) -> u128 {
    value(mix_columns(sub_bytes(shift_rows(state(state_value))))) ^ round_key
}

/// `aesenclast`: ShiftRows, SubBytes, then AddRoundKey.
pub(super) fn encrypt_last_round(state_value: u128, round_key: u128) -> u128 {
    value(sub_bytes(shift_rows(state(state_value)))) ^ round_key
}

/// `aesdec` (the equivalent inverse cipher's round): InvShiftRows, InvSubBytes,
/// InvMixColumns, then AddRoundKey.
pub(super) fn decrypt_round(state_value: u128, round_key: u128) -> u128 {
    value(inverse_mix_columns_of(inverse_sub_bytes(
        inverse_shift_rows(state(state_value)),
    ))) ^ round_key
}

/// `aesdeclast`: InvShiftRows, InvSubBytes, then AddRoundKey.
pub(super) fn decrypt_last_round(state_value: u128, round_key: u128) -> u128 {
    value(inverse_sub_bytes(inverse_shift_rows(state(state_value)))) ^ round_key
}

/// `aesimc`: InvMixColumns of a round key (for the equivalent inverse cipher).
pub(super) fn inverse_mix_columns(round_key: u128) -> u128 {
    value(inverse_mix_columns_of(state(round_key)))
}

/// SubWord: the S-box applied to each byte of a doubleword.
fn sub_word(word: u32) -> u32 {
    u32::from_le_bytes(word.to_le_bytes().map(|byte| S_BOX[usize::from(byte)]))
}

/// `aeskeygenassist`: from doublewords X1 (bits 63:32) and X3 (bits 127:96) of `source`,
/// `[SubWord(X1), RotWord(SubWord(X1)) ^ RCON, SubWord(X3), RotWord(SubWord(X3)) ^ RCON]`
/// (lowest doubleword first) with RCON the zero-extended imm8. RotWord moves the lowest byte
/// to the top: a rotation right by 8 bits.
pub(super) fn key_generation_assist(source: u128, round_constant: u8) -> u128 {
    let rcon = u32::from(round_constant);
    let x1 = sub_word((source >> 32) as u32);
    let x3 = sub_word((source >> 96) as u32);
    [x1, x1.rotate_right(8) ^ rcon, x3, x3.rotate_right(8) ^ rcon]
        .iter()
        .enumerate()
        .fold(0, |result, (lane, &word)| {
            result | (u128::from(word) << (32 * lane))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_box_matches_fips_197_samples() {
        // FIPS-197 Figure 7 and 14: S(00) = 63, S(53) = ed, S(ff) = 16; inverse entries.
        assert_eq!(S_BOX[0x00], 0x63);
        assert_eq!(S_BOX[0x53], 0xed);
        assert_eq!(S_BOX[0xff], 0x16);
        assert_eq!(S_BOX[0x01], 0x7c);
        assert_eq!(INVERSE_S_BOX[0x63], 0x00);
        assert_eq!(INVERSE_S_BOX[0x00], 0x52);
        // FIPS-197 4.2: {57} · {83} = {c1}, {57} · {13} = {fe}.
        assert_eq!(multiply(0x57, 0x83), 0xc1);
        assert_eq!(multiply(0x57, 0x13), 0xfe);
    }

    #[test]
    fn row_and_column_transformations_invert_each_other() {
        let sample: State = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        assert_eq!(inverse_shift_rows(shift_rows(sample)), sample);
        assert_eq!(inverse_mix_columns_of(mix_columns(sample)), sample);
        assert_eq!(inverse_sub_bytes(sub_bytes(sample)), sample);
        // Row 1 rotates by one column: byte 1 (row 1, column 0) comes from column 1 (byte 5).
        assert_eq!(shift_rows(sample)[1], sample[5]);
        assert_eq!(shift_rows(sample)[0], sample[0]);
    }
}
