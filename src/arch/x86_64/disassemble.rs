//! Disassembling one x86_64 instruction for diagnostics (crash reports), with iced-x86.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// Decodes one x86_64 instruction for a diagnostic, e.g. `xgetbv`. Returns its text and its
/// length in bytes (0 if the bytes do not decode).
pub fn decode_instruction(rip: u64, bytes: &[u8]) -> (String, usize) {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return ("(undecodable)".to_string(), 0);
    }
    let mut text = String::new();
    IntelFormatter::new().format(&instruction, &mut text);
    (text, instruction.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_instructions_this_kvm_cannot_emulate() {
        let decode = |bytes: &[u8]| decode_instruction(0x1000, bytes);
        assert_eq!(
            decode(&[0x0f, 0x01, 0xd0, 0x48, 0xc1]),
            ("xgetbv".into(), 3)
        );
        assert_eq!(decode(&[0x0f, 0x57, 0xc0]), ("xorps xmm0,xmm0".into(), 3));
        assert_eq!(decode(&[0xff, 0xff]), ("(undecodable)".into(), 0));
        assert_eq!(decode(&[]), ("(undecodable)".into(), 0));
    }
}
