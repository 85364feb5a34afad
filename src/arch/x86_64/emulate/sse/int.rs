//! Integer, logic, shuffle and plain-move semantics of SSE/SSE2 instructions and the SSE3
//! duplicating moves, in pure Rust on 128-bit values (lane 0 in the least significant bits, as
//! in the XMM register file), and the lane helpers the later extensions' modules share.
//!
//! Every function has the shape `fn(dst, src, imm) -> result`: `dst` is the old destination
//! value (0 when the destination is memory or a general register), `src` the source operand
//! zero-extended to 128 bits (an immediate shift count is passed as `src` too), `imm` the
//! instruction's imm8 (0 when it has none). None of these instructions can raise a SIMD
//! floating-point exception.

/// Semantics of a non-floating-point instruction form.
pub(super) type PureOp = fn(u128, u128, u8) -> u128;

/// The low 64 bits of an XMM register.
pub(super) const LOW64: u128 = u64::MAX as u128;
/// The low 32 bits of an XMM register.
pub(super) const LOW32: u128 = u32::MAX as u128;

/// All-ones in the low `bits` bits (`bits` in 1 ..= 128).
pub(super) fn lane_mask(bits: u32) -> u128 {
    u128::MAX >> (128 - bits)
}

/// Lane `index` of width `bits`.
pub(super) fn lane(value: u128, bits: u32, index: u32) -> u128 {
    (value >> (bits * index)) & lane_mask(bits)
}

/// Sign-extends the low `bits` bits of `value`.
pub(super) fn signed(value: u128, bits: u32) -> i128 {
    ((value << (128 - bits)) as i128) >> (128 - bits)
}

/// Applies `f` to each pair of `bits`-wide lanes of `a` and `b`.
pub(super) fn lanes(a: u128, b: u128, bits: u32, f: impl Fn(u128, u128) -> u128) -> u128 {
    (0..128 / bits).fold(0, |acc, i| {
        acc | ((f(lane(a, bits, i), lane(b, bits, i)) & lane_mask(bits)) << (bits * i))
    })
}

/// Builds a value from `count` lanes of width `bits` given by `f(index)`.
pub(super) fn build(bits: u32, f: impl Fn(u32) -> u128) -> u128 {
    (0..128 / bits).fold(0, |acc, i| acc | ((f(i) & lane_mask(bits)) << (bits * i)))
}

/// Clamps a signed value into the range of a `bits`-wide signed or unsigned integer.
pub(super) fn saturate(value: i128, bits: u32, is_signed: bool) -> u128 {
    let (min, max) = if is_signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    (value.clamp(min, max) as u128) & lane_mask(bits)
}

/// All-ones or zero lane for a comparison result.
pub(super) fn all_ones_if(condition: bool) -> u128 {
    if condition { u128::MAX } else { 0 }
}

// --- Moves --------------------------------------------------------------------------------

/// The source as is (full moves, movd/movq to or from general registers, stores).
pub(super) fn copy(_: u128, src: u128, _: u8) -> u128 {
    src
}
/// The low quadword of the source, zero-extended (movq xmm, xmm/m64).
pub(super) fn copy_low64(_: u128, src: u128, _: u8) -> u128 {
    src & LOW64
}
/// movhps/movhpd xmm, m64: the high quadword is loaded.
pub(super) fn load_high64(dst: u128, src: u128, _: u8) -> u128 {
    (dst & LOW64) | (src << 64)
}
/// movlps/movlpd xmm, m64: the low quadword is loaded.
pub(super) fn load_low64(dst: u128, src: u128, _: u8) -> u128 {
    (dst & !LOW64) | (src & LOW64)
}
/// movhps/movhpd m64, xmm: the high quadword is stored.
pub(super) fn high64(_: u128, src: u128, _: u8) -> u128 {
    src >> 64
}
/// movhlps: high quadword of the source into the low quadword of the destination.
pub(super) fn move_high_to_low(dst: u128, src: u128, _: u8) -> u128 {
    (dst & !LOW64) | (src >> 64)
}
/// movlhps: low quadword of the source into the high quadword of the destination.
pub(super) fn move_low_to_high(dst: u128, src: u128, _: u8) -> u128 {
    (dst & LOW64) | (src << 64)
}

/// movddup: the low quadword of the source in both quadwords.
pub(super) fn movddup(_: u128, src: u128, _: u8) -> u128 {
    (src & LOW64) | (src << 64)
}
/// movsldup: the even doublewords of the source, each duplicated.
pub(super) fn movsldup(_: u128, src: u128, _: u8) -> u128 {
    build(32, |i| lane(src, 32, i & !1))
}
/// movshdup: the odd doublewords of the source, each duplicated.
pub(super) fn movshdup(_: u128, src: u128, _: u8) -> u128 {
    build(32, |i| lane(src, 32, i | 1))
}

// --- Masks --------------------------------------------------------------------------------

/// The sign bits of the `bits`-wide lanes of `src`.
fn sign_mask(src: u128, bits: u32) -> u128 {
    (0..128 / bits).fold(0, |acc, i| acc | ((lane(src, bits, i) >> (bits - 1)) << i))
}
pub(super) fn movmskps(_: u128, src: u128, _: u8) -> u128 {
    sign_mask(src, 32)
}
pub(super) fn movmskpd(_: u128, src: u128, _: u8) -> u128 {
    sign_mask(src, 64)
}
pub(super) fn pmovmskb(_: u128, src: u128, _: u8) -> u128 {
    sign_mask(src, 8)
}
pub(super) fn pextrw(_: u128, src: u128, imm: u8) -> u128 {
    lane(src, 16, u32::from(imm & 7))
}
pub(super) fn pinsrw(dst: u128, src: u128, imm: u8) -> u128 {
    let shift = 16 * u32::from(imm & 7);
    (dst & !(0xffff << shift)) | ((src & 0xffff) << shift)
}

// --- Logic --------------------------------------------------------------------------------

pub(super) fn and(dst: u128, src: u128, _: u8) -> u128 {
    dst & src
}
pub(super) fn and_not(dst: u128, src: u128, _: u8) -> u128 {
    !dst & src
}
pub(super) fn or(dst: u128, src: u128, _: u8) -> u128 {
    dst | src
}
pub(super) fn xor(dst: u128, src: u128, _: u8) -> u128 {
    dst ^ src
}

// --- Lane-wise arithmetic and comparisons (one function per lane width via a macro) --------

/// Defines `fn $name(dst, src, imm)` applying `$f(x, y)` on `$bits`-wide lanes.
macro_rules! lanewise {
    ($($name:ident: $bits:literal, $f:expr;)*) => {$(
        pub(super) fn $name(dst: u128, src: u128, _: u8) -> u128 {
            lanes(dst, src, $bits, $f)
        }
    )*};
}

const fn wrapping_add(x: u128, y: u128) -> u128 {
    x.wrapping_add(y)
}
const fn wrapping_sub(x: u128, y: u128) -> u128 {
    x.wrapping_sub(y)
}
fn equal(x: u128, y: u128) -> u128 {
    all_ones_if(x == y)
}

lanewise! {
    paddb: 8, wrapping_add;
    paddw: 16, wrapping_add;
    paddd: 32, wrapping_add;
    paddq: 64, wrapping_add;
    psubb: 8, wrapping_sub;
    psubw: 16, wrapping_sub;
    psubd: 32, wrapping_sub;
    psubq: 64, wrapping_sub;
    pcmpeqb: 8, equal;
    pcmpeqw: 16, equal;
    pcmpeqd: 32, equal;
    pcmpgtb: 8, |x, y| all_ones_if(signed(x, 8) > signed(y, 8));
    pcmpgtw: 16, |x, y| all_ones_if(signed(x, 16) > signed(y, 16));
    pcmpgtd: 32, |x, y| all_ones_if(signed(x, 32) > signed(y, 32));
    paddusb: 8, |x, y| saturate((x + y) as i128, 8, false);
    paddusw: 16, |x, y| saturate((x + y) as i128, 16, false);
    psubusb: 8, |x: u128, y| x.saturating_sub(y);
    psubusw: 16, |x: u128, y| x.saturating_sub(y);
    paddsb: 8, |x, y| saturate(signed(x, 8) + signed(y, 8), 8, true);
    paddsw: 16, |x, y| saturate(signed(x, 16) + signed(y, 16), 16, true);
    psubsb: 8, |x, y| saturate(signed(x, 8) - signed(y, 8), 8, true);
    psubsw: 16, |x, y| saturate(signed(x, 16) - signed(y, 16), 16, true);
    pminub: 8, |x: u128, y| x.min(y);
    pmaxub: 8, |x: u128, y| x.max(y);
    pminsw: 16, |x, y| signed(x, 16).min(signed(y, 16)) as u128;
    pmaxsw: 16, |x, y| signed(x, 16).max(signed(y, 16)) as u128;
    pavgb: 8, |x, y| (x + y + 1) >> 1;
    pavgw: 16, |x, y| (x + y + 1) >> 1;
    pmullw: 16, |x, y| x * y;
    pmulhw: 16, |x, y| ((signed(x, 16) * signed(y, 16)) >> 16) as u128;
    pmulhuw: 16, |x, y| (x * y) >> 16;
    pmuludq: 64, |x, y| (x & LOW32) * (y & LOW32);
    pmaddwd: 32, |x, y| (signed(x & 0xffff, 16) * signed(y & 0xffff, 16)
        + signed(x >> 16, 16) * signed(y >> 16, 16)) as u128;
    psadbw: 64, |x, y| (0..8).map(|i| lane(x, 8, i).abs_diff(lane(y, 8, i))).sum();
}

// --- Shifts ---------------------------------------------------------------------------------

/// Shift count of a shift by an XMM/m128 operand or an imm8: the low quadword of `src`.
fn count(src: u128) -> u128 {
    src & LOW64
}

/// Defines logical shifts (`$op` is `<<` or `>>`), all-zero for counts ≥ the lane width.
macro_rules! logical_shift {
    ($($name:ident: $bits:literal, $left:literal;)*) => {$(
        pub(super) fn $name(dst: u128, src: u128, _: u8) -> u128 {
            let n = count(src);
            if n >= $bits {
                return 0;
            }
            // `n` < $bits ≤ 64 here.
            let n = n as u32;
            lanes(dst, 0, $bits, |x, _| if $left { x << n } else { x >> n })
        }
    )*};
}

logical_shift! {
    psllw: 16, true;
    pslld: 32, true;
    psllq: 64, true;
    psrlw: 16, false;
    psrld: 32, false;
    psrlq: 64, false;
}

/// Arithmetic right shift of `bits`-wide lanes, counts saturating at `bits - 1`.
fn arithmetic_shift(dst: u128, src: u128, bits: u32) -> u128 {
    let n = count(src).min(u128::from(bits - 1)) as u32;
    lanes(dst, 0, bits, |x, _| (signed(x, bits) >> n) as u128)
}
pub(super) fn psraw(dst: u128, src: u128, _: u8) -> u128 {
    arithmetic_shift(dst, src, 16)
}
pub(super) fn psrad(dst: u128, src: u128, _: u8) -> u128 {
    arithmetic_shift(dst, src, 32)
}
/// pslldq: byte shift left by the imm8 (passed as `src`), all-zero above 15.
pub(super) fn pslldq(dst: u128, src: u128, _: u8) -> u128 {
    if src > 15 { 0 } else { dst << (8 * src) }
}
/// psrldq: byte shift right by the imm8 (passed as `src`), all-zero above 15.
pub(super) fn psrldq(dst: u128, src: u128, _: u8) -> u128 {
    if src > 15 { 0 } else { dst >> (8 * src) }
}

// --- Shuffles, unpacks, packs --------------------------------------------------------------

/// Interleaves the `bits`-wide lanes of the low (`high == false`) or high halves of `a` and `b`.
pub(super) fn unpack(a: u128, b: u128, bits: u32, high: bool) -> u128 {
    let base = if high { 64 / bits } else { 0 };
    build(bits, |i| {
        let from = if i % 2 == 0 { a } else { b };
        lane(from, bits, base + i / 2)
    })
}

/// Defines the unpack family.
macro_rules! unpacks {
    ($($name:ident: $bits:literal, $high:literal;)*) => {$(
        pub(super) fn $name(dst: u128, src: u128, _: u8) -> u128 {
            unpack(dst, src, $bits, $high)
        }
    )*};
}

unpacks! {
    punpcklbw: 8, false;
    punpcklwd: 16, false;
    punpckldq: 32, false;
    punpcklqdq: 64, false;
    punpckhbw: 8, true;
    punpckhwd: 16, true;
    punpckhdq: 32, true;
    punpckhqdq: 64, true;
}

/// Selector `i` (2 bits each) of an imm8.
pub(super) fn selector(imm: u8, i: u32) -> u32 {
    u32::from(imm >> (2 * i)) & 3
}
pub(super) fn pshufd(_: u128, src: u128, imm: u8) -> u128 {
    build(32, |i| lane(src, 32, selector(imm, i)))
}
pub(super) fn pshuflw(_: u128, src: u128, imm: u8) -> u128 {
    (src & !LOW64)
        | build(16, |i| {
            if i < 4 {
                lane(src, 16, selector(imm, i))
            } else {
                0
            }
        })
}
pub(super) fn pshufhw(_: u128, src: u128, imm: u8) -> u128 {
    let high = build(16, |i| {
        if i < 4 {
            lane(src, 16, 4 + selector(imm, i))
        } else {
            0
        }
    });
    (src & LOW64) | (high << 64)
}
pub(super) fn shufps(dst: u128, src: u128, imm: u8) -> u128 {
    build(32, |i| {
        lane(if i < 2 { dst } else { src }, 32, selector(imm, i))
    })
}
pub(super) fn shufpd(dst: u128, src: u128, imm: u8) -> u128 {
    lane(dst, 64, u32::from(imm & 1)) | (lane(src, 64, u32::from((imm >> 1) & 1)) << 64)
}

/// Packs the `2 * bits`-wide signed lanes of `a` then `b` into saturated `bits`-wide lanes.
pub(super) fn pack(a: u128, b: u128, bits: u32, is_signed: bool) -> u128 {
    let per_source = 64 / bits;
    build(bits, |i| {
        let (from, index) = if i < per_source {
            (a, i)
        } else {
            (b, i - per_source)
        };
        saturate(
            signed(lane(from, 2 * bits, index), 2 * bits),
            bits,
            is_signed,
        )
    })
}
pub(super) fn packsswb(dst: u128, src: u128, _: u8) -> u128 {
    pack(dst, src, 8, true)
}
pub(super) fn packssdw(dst: u128, src: u128, _: u8) -> u128 {
    pack(dst, src, 16, true)
}
pub(super) fn packuswb(dst: u128, src: u128, _: u8) -> u128 {
    pack(dst, src, 8, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_helpers_handle_full_width_and_signs() {
        assert_eq!(lane_mask(128), u128::MAX);
        assert_eq!(signed(0x80, 8), -128);
        assert_eq!(saturate(300, 8, false), 255);
        assert_eq!(saturate(-300, 8, true), 0x80);
        assert_eq!(psrlq(u128::MAX, 64, 0), 0);
        assert_eq!(psraw(0x8000, 100, 0), 0xffff);
        assert_eq!(pslldq(1, 16, 0), 0);
        assert_eq!(psrldq(0x100, 1, 0), 1);
    }

    #[test]
    fn shuffles_pick_the_selected_lanes() {
        let v = 0x3333_3333_2222_2222_1111_1111_0000_0000u128;
        assert_eq!(
            pshufd(0, v, 0x1b),
            0x0000_0000_1111_1111_2222_2222_3333_3333
        );
        assert_eq!(punpcklqdq(1, 2, 0), (2 << 64) | 1);
        assert_eq!(punpckhqdq(1 << 64, 2 << 64, 0), (2 << 64) | 1);
    }
}
