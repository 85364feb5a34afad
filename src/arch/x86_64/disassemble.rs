//! Disassembling one x86_64 instruction for diagnostics (crash reports), with iced-x86, and
//! finding the store that ends where a vCPU stopped after it (KVM reports an MMIO write once the
//! instruction has completed, with RIP already past it).

use iced_x86::{
    Decoder, DecoderOptions, Formatter, InstructionInfoFactory, IntelFormatter, OpAccess,
};

/// The longest x86 instruction, in bytes.
pub const MAX_INSTRUCTION_LEN: usize = 15;

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

/// A store found by [`store_ending_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreBefore {
    /// Its address (guest-virtual).
    pub rip: u64,
    /// Its text.
    pub text: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The instruction that ends exactly at `end`, given the bytes just before it (`before` holds
/// the bytes at `end - before.len()` up to `end`), and writes `size` bytes of memory: the store
/// an MMIO write exit reports once RIP has moved past it. `None` unless exactly one start offset
/// gives such an instruction (x86 code cannot be decoded backwards unambiguously).
pub fn store_ending_at(end: u64, before: &[u8], size: u8) -> Option<StoreBefore> {
    let mut factory = InstructionInfoFactory::new();
    let mut found = None;
    for len in 1..=before.len().min(MAX_INSTRUCTION_LEN) {
        let start = before.len() - len;
        let rip = end.checked_sub(len as u64)?;
        let bytes = &before[start..];
        let instruction = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode();
        if instruction.is_invalid() || instruction.len() != len {
            continue;
        }
        let writes = factory
            .info(&instruction)
            .used_memory()
            .iter()
            .any(|memory| {
                matches!(
                    memory.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                ) && memory.memory_size().size() == usize::from(size)
            });
        if !writes {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let mut text = String::new();
        IntelFormatter::new().format(&instruction, &mut text);
        found = Some(StoreBefore {
            rip,
            text,
            bytes: bytes.to_vec(),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_before_rip_is_found_when_unambiguous() {
        // nop; mov dword ptr [rax],1234h — the bytes end where KVM leaves RIP.
        let code = [0x90, 0xc7, 0x00, 0x34, 0x12, 0x00, 0x00];
        let end = 0x1000 + code.len() as u64;
        let store = store_ending_at(end, &code, 4).unwrap();
        assert_eq!(store.rip, 0x1001);
        assert_eq!(store.text, "mov dword ptr [rax],1234h");
        assert_eq!(store.bytes, &code[1..]);
        // `00 00` (add [rax],al) also ends there, but writes 1 byte, not 4.
        let add = store_ending_at(end, &code, 1).unwrap();
        assert_eq!(add.text, "add [rax],al");
        // A size no candidate writes, and bytes that are no store.
        assert_eq!(store_ending_at(end, &code, 8), None);
        assert_eq!(store_ending_at(0x1002, &[0x90, 0x90], 4), None);
        assert_eq!(store_ending_at(0x10, &[], 4), None);
    }

    #[test]
    fn an_ambiguous_store_is_not_guessed() {
        // mov [rax],eax (89 00) and, one byte earlier, mov [rax+0],eax... both 4-byte stores
        // ending at the same place once a byte before them reads as a valid prefix: 2e (cs).
        let code = [0x2e, 0x89, 0x00];
        assert_eq!(store_ending_at(0x103, &code, 4), None);
    }

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
