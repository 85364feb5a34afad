//! SSSE3 instructions on XMM registers (byte shuffle, horizontal add/subtract, absolute value,
//! sign, multiply-add, rounded high multiply, byte align), in pure Rust on 128-bit values.
//!
//! Same shape as the SSE2 integer semantics: `fn(dst, src, imm) -> result`, `dst` the old
//! destination, `src` the source operand, `imm` the imm8 (only `palignr` has one). None of these
//! instructions touches MXCSR or RFLAGS.

use super::int::{build, lane, lanes, saturate, signed};

/// pshufb: byte `i` is the destination byte selected by the low 4 bits of source byte `i`, or
/// 0 when that source byte has its top bit set.
pub(super) fn pshufb(dst: u128, src: u128, _: u8) -> u128 {
    build(8, |i| {
        let selector = lane(src, 8, i);
        if selector & 0x80 != 0 {
            0
        } else {
            lane(dst, 8, (selector & 15) as u32)
        }
    })
}

/// Horizontal operation on `bits`-wide lanes: result lanes are `f(a[2k], a[2k + 1])` for the
/// pairs of the destination, then of the source.
fn horizontal(dst: u128, src: u128, bits: u32, f: impl Fn(u128, u128) -> u128) -> u128 {
    let per_source = 64 / bits;
    build(bits, |i| {
        let (from, pair) = if i < per_source {
            (dst, i)
        } else {
            (src, i - per_source)
        };
        f(lane(from, bits, 2 * pair), lane(from, bits, 2 * pair + 1))
    })
}

pub(super) fn phaddw(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 16, u128::wrapping_add)
}
pub(super) fn phaddd(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 32, u128::wrapping_add)
}
pub(super) fn phaddsw(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 16, |x, y| {
        saturate(signed(x, 16) + signed(y, 16), 16, true)
    })
}
pub(super) fn phsubw(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 16, u128::wrapping_sub)
}
pub(super) fn phsubd(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 32, u128::wrapping_sub)
}
pub(super) fn phsubsw(dst: u128, src: u128, _: u8) -> u128 {
    horizontal(dst, src, 16, |x, y| {
        saturate(signed(x, 16) - signed(y, 16), 16, true)
    })
}

/// pmaddubsw: unsigned destination bytes times signed source bytes, adjacent products added
/// with signed saturation into words.
pub(super) fn pmaddubsw(dst: u128, src: u128, _: u8) -> u128 {
    lanes(dst, src, 16, |x, y| {
        let product = |k: u32| lane(x, 8, k) as i128 * signed(lane(y, 8, k), 8);
        saturate(product(0) + product(1), 16, true)
    })
}

/// pmulhrsw: signed word product, scaled by 2^-15 with rounding.
pub(super) fn pmulhrsw(dst: u128, src: u128, _: u8) -> u128 {
    lanes(dst, src, 16, |x, y| {
        ((((signed(x, 16) * signed(y, 16)) >> 14) + 1) >> 1) as u128
    })
}

/// psign: the destination lane negated, zeroed or kept as the source lane is negative, zero or
/// positive.
fn sign(dst: u128, src: u128, bits: u32) -> u128 {
    lanes(dst, src, bits, |x, y| match signed(y, bits) {
        0 => 0,
        negative if negative < 0 => x.wrapping_neg(),
        _ => x,
    })
}
pub(super) fn psignb(dst: u128, src: u128, _: u8) -> u128 {
    sign(dst, src, 8)
}
pub(super) fn psignw(dst: u128, src: u128, _: u8) -> u128 {
    sign(dst, src, 16)
}
pub(super) fn psignd(dst: u128, src: u128, _: u8) -> u128 {
    sign(dst, src, 32)
}

/// pabs: the absolute value of each source lane (the most negative value stays as is).
fn absolute(src: u128, bits: u32) -> u128 {
    lanes(src, 0, bits, |x, _| signed(x, bits).unsigned_abs())
}
pub(super) fn pabsb(_: u128, src: u128, _: u8) -> u128 {
    absolute(src, 8)
}
pub(super) fn pabsw(_: u128, src: u128, _: u8) -> u128 {
    absolute(src, 16)
}
pub(super) fn pabsd(_: u128, src: u128, _: u8) -> u128 {
    absolute(src, 32)
}

/// palignr: the destination:source concatenation (destination high) shifted right by imm8
/// bytes; the low 16 bytes (zero beyond the 32 bytes).
pub(super) fn palignr(dst: u128, src: u128, imm: u8) -> u128 {
    let shift = u32::from(imm);
    build(8, |i| match i + shift {
        byte @ 0..16 => lane(src, 8, byte),
        byte @ 16..32 => lane(dst, 8, byte - 16),
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_shuffle_align_and_sign_edges() {
        let bytes = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        assert_eq!(
            pshufb(bytes, 0x8000_0000_0000_0000_0000_0000_0000_0f01, 0),
            0x0f01
        );
        assert_eq!(palignr(1, 2 << 120, 15), (1 << 8) | 2);
        assert_eq!(palignr(u128::MAX, u128::MAX, 32), 0);
        assert_eq!(psignb(0x80, 0xff, 0), 0x80, "-(-128) wraps");
        assert_eq!(pabsw(0, 0x8000_ffff, 0), 0x8000_0001);
        assert_eq!(pmulhrsw(0x4000, 0x4000, 0), 0x2000);
    }
}
