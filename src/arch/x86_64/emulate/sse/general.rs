//! The general-register instructions of SSE4.2 (`crc32`) and POPCNT, in pure Rust.
//!
//! `crc32` has the SSE2 shape `fn(dst, src, imm) -> result` (the old destination register is
//! the running CRC); `popcnt` also yields the new arithmetic flags.

use super::sse41::ZF;

/// The CRC-32C (Castagnoli) polynomial 11EDC6F41h in the bit-reflected form `crc32` works in.
const CASTAGNOLI_REFLECTED: u32 = 0x82f6_3b78;

/// Feeds the low `bytes` bytes of `src` (least significant first) into the running CRC held in
/// the low 32 bits of `dst`; the result is zero-extended (also into an r64 destination).
fn crc32(dst: u128, src: u128, bytes: u32) -> u128 {
    let mut crc = dst as u32;
    for index in 0..bytes {
        crc ^= u32::from((src >> (8 * index)) as u8);
        for _ in 0..8 {
            let feedback = if crc & 1 != 0 {
                CASTAGNOLI_REFLECTED
            } else {
                0
            };
            crc = (crc >> 1) ^ feedback;
        }
    }
    u128::from(crc)
}
pub(super) fn crc32_8(dst: u128, src: u128, _: u8) -> u128 {
    crc32(dst, src, 1)
}
pub(super) fn crc32_16(dst: u128, src: u128, _: u8) -> u128 {
    crc32(dst, src, 2)
}
pub(super) fn crc32_32(dst: u128, src: u128, _: u8) -> u128 {
    crc32(dst, src, 4)
}
pub(super) fn crc32_64(dst: u128, src: u128, _: u8) -> u128 {
    crc32(dst, src, 8)
}

/// popcnt (any operand size: the source arrives zero-extended): the number of set bits; ZF if
/// the source is zero, OF, SF, AF, PF and CF cleared.
pub(super) fn popcnt(_: u128, src: u128, _: u8) -> (u128, u64) {
    let flags = if src == 0 { ZF } else { 0 };
    (u128::from(src.count_ones()), flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_and_popcnt_flags() {
        // The CRC-32C check value: "123456789" with initial value and final XOR all-ones.
        let crc = b"123456789"
            .iter()
            .fold(0xffff_ffff, |crc, &byte| crc32_8(crc, u128::from(byte), 0));
        assert_eq!(crc as u32 ^ 0xffff_ffff, 0xe306_9283);
        // Bytes in one wide step equal bytes one at a time.
        let word = u128::from(u32::from_le_bytes(*b"1234"));
        let bytewise = b"1234"
            .iter()
            .fold(7, |crc, &b| crc32_8(crc, u128::from(b), 0));
        assert_eq!(crc32_32(7, word, 0), bytewise);
        assert_eq!(popcnt(0, 0, 0), (0, ZF));
        assert_eq!(popcnt(0, u128::from(u64::MAX), 0), (64, 0));
    }
}
