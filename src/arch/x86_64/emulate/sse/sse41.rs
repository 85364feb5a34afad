//! SSE4.1 integer, blend, insert/extract and test instructions (and the SSE4.2 `pcmpgtq`), in
//! pure Rust on 128-bit values.
//!
//! Most functions have the SSE2 shape `fn(dst, src, imm) -> result`. The variable blends read
//! their mask from the implicit XMM0 (`fn(dst, src, xmm0)`), `ptest` yields RFLAGS instead of a
//! new destination. The floating-point forms of SSE4.1 (`round*`, `dpps`, `dppd`) run on the host
//! (`float`); the blends, inserts and extracts below only move bits, so they raise no SIMD
//! floating-point exception and are exact in pure Rust.

use super::int::{LOW32, all_ones_if, build, lane, lane_mask, lanes, saturate, signed};

/// Semantics of a blend whose mask is the implicit XMM0: `fn(dst, src, xmm0) -> result`.
pub(super) type VariableBlendOp = fn(u128, u128, u128) -> u128;

/// The zero flag in RFLAGS.
pub(super) const ZF: u64 = 1 << 6;
/// The carry flag in RFLAGS.
pub(super) const CF: u64 = 1;

// --- Blends --------------------------------------------------------------------------------

/// Takes each `bits`-wide lane from the source where `select(i)` holds, else from the
/// destination.
fn blend(dst: u128, src: u128, bits: u32, select: impl Fn(u32) -> bool) -> u128 {
    build(bits, |i| lane(if select(i) { src } else { dst }, bits, i))
}
pub(super) fn blendps(dst: u128, src: u128, imm: u8) -> u128 {
    blend(dst, src, 32, |i| imm >> i & 1 != 0)
}
pub(super) fn blendpd(dst: u128, src: u128, imm: u8) -> u128 {
    blend(dst, src, 64, |i| imm >> i & 1 != 0)
}
pub(super) fn pblendw(dst: u128, src: u128, imm: u8) -> u128 {
    blend(dst, src, 16, |i| imm >> i & 1 != 0)
}
/// The variable blends: lane `i` from the source where the top bit of XMM0's lane `i` is set.
fn variable_blend(dst: u128, src: u128, mask: u128, bits: u32) -> u128 {
    blend(dst, src, bits, |i| lane(mask, bits, i) >> (bits - 1) != 0)
}
pub(super) fn blendvps(dst: u128, src: u128, mask: u128) -> u128 {
    variable_blend(dst, src, mask, 32)
}
pub(super) fn blendvpd(dst: u128, src: u128, mask: u128) -> u128 {
    variable_blend(dst, src, mask, 64)
}
pub(super) fn pblendvb(dst: u128, src: u128, mask: u128) -> u128 {
    variable_blend(dst, src, mask, 8)
}

// --- Test ----------------------------------------------------------------------------------

/// ptest: ZF if `dst & src` is zero, CF if `!dst & src` is zero, the other arithmetic flags
/// cleared; the destination is unchanged.
pub(super) fn ptest(dst: u128, src: u128, _: u8) -> (u128, u64) {
    let mut flags = 0;
    if dst & src == 0 {
        flags |= ZF;
    }
    if !dst & src == 0 {
        flags |= CF;
    }
    (dst, flags)
}

// --- Widening moves --------------------------------------------------------------------------

/// Widens the low `from`-bit lanes of `src` to `to` bits, sign- or zero-extended.
fn widen(src: u128, from: u32, to: u32, sign_extend: bool) -> u128 {
    build(to, |i| {
        let value = lane(src, from, i);
        if sign_extend {
            signed(value, from) as u128
        } else {
            value
        }
    })
}

/// Defines the `pmovsx*`/`pmovzx*` family.
macro_rules! widening_moves {
    ($($name:ident: $from:literal => $to:literal, $sign_extend:literal;)*) => {$(
        pub(super) fn $name(_: u128, src: u128, _: u8) -> u128 {
            widen(src, $from, $to, $sign_extend)
        }
    )*};
}

widening_moves! {
    pmovsxbw: 8 => 16, true;
    pmovsxbd: 8 => 32, true;
    pmovsxbq: 8 => 64, true;
    pmovsxwd: 16 => 32, true;
    pmovsxwq: 16 => 64, true;
    pmovsxdq: 32 => 64, true;
    pmovzxbw: 8 => 16, false;
    pmovzxbd: 8 => 32, false;
    pmovzxbq: 8 => 64, false;
    pmovzxwd: 16 => 32, false;
    pmovzxwq: 16 => 64, false;
    pmovzxdq: 32 => 64, false;
}

// --- Lane-wise arithmetic --------------------------------------------------------------------

/// Defines `fn $name(dst, src, imm)` applying `$f(x, y)` on `$bits`-wide lanes.
macro_rules! lanewise {
    ($($name:ident: $bits:literal, $f:expr;)*) => {$(
        pub(super) fn $name(dst: u128, src: u128, _: u8) -> u128 {
            lanes(dst, src, $bits, $f)
        }
    )*};
}

lanewise! {
    pmuldq: 64, |x, y| (signed(x & LOW32, 32) * signed(y & LOW32, 32)) as u128;
    pmulld: 32, |x, y| x * y;
    pcmpeqq: 64, |x, y| all_ones_if(x == y);
    pcmpgtq: 64, |x, y| all_ones_if(signed(x, 64) > signed(y, 64));
    pminsb: 8, |x, y| signed(x, 8).min(signed(y, 8)) as u128;
    pmaxsb: 8, |x, y| signed(x, 8).max(signed(y, 8)) as u128;
    pminsd: 32, |x, y| signed(x, 32).min(signed(y, 32)) as u128;
    pmaxsd: 32, |x, y| signed(x, 32).max(signed(y, 32)) as u128;
    pminuw: 16, |x: u128, y| x.min(y);
    pmaxuw: 16, |x: u128, y| x.max(y);
    pminud: 32, |x: u128, y| x.min(y);
    pmaxud: 32, |x: u128, y| x.max(y);
}

/// packusdw: signed doublewords of the destination, then the source, to unsigned-saturated words.
pub(super) fn packusdw(dst: u128, src: u128, _: u8) -> u128 {
    build(16, |i| {
        let (from, index) = if i < 4 { (dst, i) } else { (src, i - 4) };
        saturate(signed(lane(from, 32, index), 32), 16, false)
    })
}

/// phminposuw: the smallest unsigned word of the source (the lowest index among equals) and
/// its index in bits 16–18; the rest zero.
pub(super) fn phminposuw(_: u128, src: u128, _: u8) -> u128 {
    let (index, minimum) =
        (0..8)
            .map(|i| (i, lane(src, 16, i)))
            .fold((0, lane(src, 16, 0)), |best, candidate| {
                if candidate.1 < best.1 {
                    candidate
                } else {
                    best
                }
            });
    minimum | (u128::from(index) << 16)
}

/// mpsadbw: eight sums of absolute differences of a 4-byte source block (imm8[1:0] × 4) against
/// the destination bytes at offsets (imm8[2] × 4) + 0 … 7.
pub(super) fn mpsadbw(dst: u128, src: u128, imm: u8) -> u128 {
    let source_offset = 4 * u32::from(imm & 3);
    let destination_offset = 4 * u32::from((imm >> 2) & 1);
    build(16, |i| {
        (0..4)
            .map(|k| {
                lane(dst, 8, destination_offset + i + k).abs_diff(lane(src, 8, source_offset + k))
            })
            .sum()
    })
}

// --- Extracts and inserts -------------------------------------------------------------------

/// Lane `imm mod (128 / bits)` of the source (the register forms zero-extend it; `pextrw`
/// is the SSE2 `int::pextrw`).
fn extract(src: u128, bits: u32, imm: u8) -> u128 {
    lane(src, bits, u32::from(imm) % (128 / bits))
}
pub(super) fn pextrb(_: u128, src: u128, imm: u8) -> u128 {
    extract(src, 8, imm)
}
pub(super) fn pextrd(_: u128, src: u128, imm: u8) -> u128 {
    extract(src, 32, imm)
}
pub(super) fn pextrq(_: u128, src: u128, imm: u8) -> u128 {
    extract(src, 64, imm)
}

/// The destination with lane `imm mod (128 / bits)` replaced by the low `bits` of the source.
fn insert(dst: u128, src: u128, bits: u32, imm: u8) -> u128 {
    let shift = bits * (u32::from(imm) % (128 / bits));
    (dst & !(lane_mask(bits) << shift)) | ((src & lane_mask(bits)) << shift)
}
pub(super) fn pinsrb(dst: u128, src: u128, imm: u8) -> u128 {
    insert(dst, src, 8, imm)
}
pub(super) fn pinsrd(dst: u128, src: u128, imm: u8) -> u128 {
    insert(dst, src, 32, imm)
}
pub(super) fn pinsrq(dst: u128, src: u128, imm: u8) -> u128 {
    insert(dst, src, 64, imm)
}

/// insertps: source doubleword imm8[7:6] into destination lane imm8[5:4], then the lanes set in
/// imm8[3:0] zeroed. (For a memory source the caller passes imm8[7:6] = 0: the m32 is lane 0.)
pub(super) fn insertps(dst: u128, src: u128, imm: u8) -> u128 {
    let element = lane(src, 32, u32::from(imm >> 6));
    let inserted = insert(dst, element, 32, (imm >> 4) & 3);
    build(32, |i| {
        if imm >> i & 1 != 0 {
            0
        } else {
            lane(inserted, 32, i)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::int::LOW64;
    use super::*;

    #[test]
    fn minimum_position_blend_and_sad_edges() {
        assert_eq!(
            phminposuw(0, 0xffff_ffff_ffff_ffff_0005_0003_0003_ffff, 0),
            (1 << 16) | 3
        );
        assert_eq!(phminposuw(0, u128::MAX, 0), 0xffff, "all equal: index 0");
        assert_eq!(pblendvb(0x1111, 0x2222, 0x80), 0x1122);
        assert_eq!(packusdw(0xffff_ffff_0001_0000, 0, 0), 0xffff);
        // All 16 bytes 1 against a zero block: every sum is 4.
        assert_eq!(mpsadbw(0x0101_0101_0101_0101_0101_0101_0101_0101, 0, 7), {
            0x0004_0004_0004_0004_0004_0004_0004_0004
        });
        assert_eq!(
            insertps(u128::MAX, 0x1234 << 96, 0xe1),
            0xffff_ffff_0000_1234_ffff_ffff_0000_0000
        );
        assert_eq!(pextrq(0, 7 << 64, 0xff), 7);
        assert_eq!(ptest(1, 2, 0).1, ZF);
        assert_eq!(ptest(3, 1, 0).1, CF);
        assert_eq!(
            pmovsxbq(0, 0x80ff, 0),
            (0xffff_ffff_ffff_ff80 << 64) | LOW64
        );
    }
}
