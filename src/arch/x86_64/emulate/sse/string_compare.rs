//! The SSE4.2 packed string compares `pcmpestri`, `pcmpestrm`, `pcmpistri` and `pcmpistrm`, in
//! pure Rust.
//!
//! The control byte selects the element format (imm8[1:0]: unsigned/signed bytes or words), the
//! aggregation (imm8[3:2]: equal any, ranges, equal each, equal ordered), the polarity
//! (imm8[5:4]) and the output (imm8[6]: lowest/highest index, bit/element mask); imm8[7] is
//! reserved and ignored. The string lengths are explicit (the absolute values of EAX and EDX,
//! RAX and RDX with REX.W, saturated to the element count) or implicit (up to the first zero
//! element). The index goes to ECX, the mask to XMM0; CF, ZF, SF and OF report the result, AF
//! and PF are cleared. The memory operand needs no alignment.

use super::int::{build, lane, lane_mask, signed};
use super::sse41::{CF, ZF};

/// The sign flag in RFLAGS.
const SF: u64 = 1 << 7;
/// The overflow flag in RFLAGS.
const OF: u64 = 1 << 11;

/// How a string compare finds its lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lengths {
    /// EAX and EDX (`wide`: RAX and RDX).
    Explicit {
        /// REX.W: the 64-bit registers hold the lengths.
        wide: bool,
    },
    /// Up to the first zero element.
    Implicit,
}

/// What a string compare writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    /// An index into ECX.
    Index,
    /// A mask into XMM0.
    Mask,
}

/// One string-compare instruction form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StringCompare {
    /// Where the lengths come from.
    pub(super) lengths: Lengths,
    /// What is written.
    pub(super) output: Output,
}

/// The element format of a control byte.
#[derive(Clone, Copy)]
struct Format {
    /// Bits per element (8 or 16).
    bits: u32,
    /// Signed elements.
    signed: bool,
}

impl Format {
    fn new(imm: u8) -> Self {
        Self {
            bits: if imm & 1 != 0 { 16 } else { 8 },
            signed: imm & 2 != 0,
        }
    }

    /// Elements per register: 16 or 8.
    fn count(&self) -> u32 {
        128 / self.bits
    }

    /// Element `index` of `value` as a comparable integer.
    fn element(&self, value: u128, index: u32) -> i128 {
        let raw = lane(value, self.bits, index);
        if self.signed {
            signed(raw, self.bits)
        } else {
            raw as i128
        }
    }
}

/// The length of a null-terminated string in `value`: the index of its first zero element.
pub(super) fn implicit_length(value: u128, imm: u8) -> u32 {
    let format = Format::new(imm);
    (0..format.count())
        .find(|&i| lane(value, format.bits, i) == 0)
        .unwrap_or(format.count())
}

/// An explicit length: the absolute value of the register, saturated to the element count.
pub(super) fn explicit_length(register: i64, imm: u8) -> u32 {
    let count = Format::new(imm).count();
    register.unsigned_abs().min(u64::from(count)) as u32
}

/// The result of a string compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// IntRes2: one bit per element.
    pub(super) result: u32,
    /// The ECX value of the index forms.
    pub(super) index: u32,
    /// The XMM0 value of the mask forms.
    pub(super) mask: u128,
    /// CF, ZF, SF and OF (AF and PF clear).
    pub(super) flags: u64,
}

/// Compares `first` (operand 1, valid elements `first_length`) with `second` (operand 2, valid
/// elements `second_length`) under control byte `imm`.
pub(super) fn compare(
    first: u128,
    second: u128,
    imm: u8,
    first_length: u32,
    second_length: u32,
) -> Outcome {
    let format = Format::new(imm);
    let count = format.count();
    let operands = Operands {
        format,
        first,
        second,
        first_length,
        second_length,
    };
    let aggregated = match (imm >> 2) & 3 {
        0 => operands.equal_any(),
        1 => operands.ranges(),
        2 => operands.equal_each(),
        _ => operands.equal_ordered(),
    };
    // Polarity.
    let all = (1u32 << count) - 1;
    let second_valid = (1u32 << second_length.min(count)) - 1;
    let result = match (imm >> 4) & 3 {
        1 => !aggregated & all,
        3 => aggregated ^ second_valid,
        _ => aggregated,
    };
    outcome(format, imm, result, first_length, second_length)
}

/// The two operands of a string comparison, as elements.
struct Operands {
    format: Format,
    first: u128,
    second: u128,
    first_length: u32,
    second_length: u32,
}

impl Operands {
    fn count(&self) -> u32 {
        self.format.count()
    }
    fn a(&self, i: u32) -> i128 {
        self.format.element(self.first, i)
    }
    fn b(&self, j: u32) -> i128 {
        self.format.element(self.second, j)
    }
    fn a_valid(&self, i: u32) -> bool {
        i < self.first_length
    }
    fn b_valid(&self, j: u32) -> bool {
        j < self.second_length
    }

    /// Bit j for every element j of the second operand for which `hit(j)` holds.
    fn bits(&self, hit: impl Fn(u32) -> bool) -> u32 {
        (0..self.count()).map(|j| u32::from(hit(j)) << j).sum()
    }

    /// Equal any: is element j of the second operand one of the first operand's elements?
    fn equal_any(&self) -> u32 {
        let first = 0..self.first_length.min(self.count());
        self.bits(|j| self.b_valid(j) && first.clone().any(|i| self.a(i) == self.b(j)))
    }

    /// Ranges: is element j inside one of the [low, high] pairs of the first operand?
    fn ranges(&self) -> u32 {
        self.bits(|j| {
            self.b_valid(j)
                && (0..self.count() / 2).any(|pair| {
                    let (low, high) = (2 * pair, 2 * pair + 1);
                    self.a_valid(low)
                        && self.a_valid(high)
                        && self.a(low) <= self.b(j)
                        && self.b(j) <= self.a(high)
                })
        })
    }

    /// Equal each: element-wise equality; two invalid elements are equal.
    fn equal_each(&self) -> u32 {
        self.bits(|i| match (self.a_valid(i), self.b_valid(i)) {
            (true, true) => self.a(i) == self.b(i),
            (false, false) => true,
            _ => false,
        })
    }

    /// Equal ordered: does the first operand's string occur in the second at position j? Past
    /// the end of the first string everything matches; past the end of the second string
    /// nothing does.
    fn equal_ordered(&self) -> u32 {
        self.bits(|j| {
            (0..self.count() - j)
                .all(|i| !self.a_valid(i) || (self.b_valid(j + i) && self.a(i) == self.b(j + i)))
        })
    }
}

/// The index, mask and flags that report `result`.
fn outcome(format: Format, imm: u8, result: u32, first_length: u32, second_length: u32) -> Outcome {
    let count = format.count();
    let most_significant = imm & 0x40 != 0;
    let index = if result == 0 {
        count
    } else if most_significant {
        31 - result.leading_zeros()
    } else {
        result.trailing_zeros()
    };
    let mask = if most_significant {
        build(format.bits, |i| {
            if result >> i & 1 != 0 {
                lane_mask(format.bits)
            } else {
                0
            }
        })
    } else {
        u128::from(result)
    };
    let mut flags = 0;
    if result != 0 {
        flags |= CF;
    }
    if second_length < count {
        flags |= ZF;
    }
    if first_length < count {
        flags |= SF;
    }
    if result & 1 != 0 {
        flags |= OF;
    }
    Outcome {
        result,
        index,
        mask,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `text` as an XMM value (zero-padded).
    fn text(text: &[u8]) -> u128 {
        let mut bytes = [0u8; 16];
        bytes[..text.len()].copy_from_slice(text);
        u128::from_le_bytes(bytes)
    }

    #[test]
    fn aggregations_on_null_terminated_bytes() {
        let haystack = text(b"hello, world");
        let length = |value| implicit_length(value, 0);
        assert_eq!(length(haystack), 12);
        // Equal any: the first of ", " in the haystack is at 5.
        let set = text(b", ");
        let outcome = compare(set, haystack, 0x00, length(set), length(haystack));
        assert_eq!(outcome.index, 5);
        assert_eq!(outcome.result, (1 << 5) | (1 << 6));
        assert_eq!(outcome.flags, CF | ZF | SF);
        // Ranges: lowercase letters, then with negative polarity (most significant index).
        let range = text(b"az");
        let outcome = compare(range, haystack, 0x04, length(range), length(haystack));
        assert_eq!(outcome.result, 0x0f9f, "all but ',' and ' ' are in a-z");
        let outcome = compare(range, haystack, 0x54, length(range), length(haystack));
        assert_eq!(outcome.result, 0xf060, "negated, the invalid tail too");
        assert_eq!(outcome.index, 15);
        // Masked negative: the invalid tail is not inverted.
        let outcome = compare(range, haystack, 0x34, length(range), length(haystack));
        assert_eq!(outcome.result, 0x0060);
        // Equal ordered: "wor" occurs at 7.
        let needle = text(b"wor");
        let outcome = compare(needle, haystack, 0x0c, length(needle), length(haystack));
        assert_eq!(outcome.index, 7);
        // Equal each with a bit mask expanded to bytes.
        let outcome = compare(haystack, haystack, 0x48, 12, 12);
        assert_eq!(
            outcome.mask,
            u128::MAX,
            "invalid elements compare equal too"
        );
        assert_eq!(outcome.flags, CF | ZF | SF | OF);
    }

    #[test]
    fn explicit_lengths_saturate_and_words_halve_the_count() {
        assert_eq!(explicit_length(-3, 0), 3);
        assert_eq!(explicit_length(i64::MIN, 0), 16);
        assert_eq!(explicit_length(100, 1), 8);
        // An empty set matches nothing: the index is the element count.
        let outcome = compare(0, 0, 0x01, 0, 8);
        assert_eq!(outcome.index, 8);
        assert_eq!(outcome.flags, SF);
    }
}
