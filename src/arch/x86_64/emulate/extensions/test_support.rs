//! Helpers of the expectation tests of `crypto` and `bitmanip`: instructions assembled with
//! iced and decoded as uhyve sees them, a small guest memory, and assertions on outcomes.

use iced_x86::code_asm::CodeAssembler;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction};

use super::super::testing::FakeMemory;
use super::*;

/// Guest-virtual base of the test memory.
pub(super) const GUEST_BASE: u64 = 0x40_0000;
/// Size of the test memory (two 4 KiB pages).
pub(super) const MEMORY_SIZE: usize = 0x2000;
/// RIP the test instructions are decoded at.
const GUEST_RIP: u64 = 0x20_0000;

/// Assembles one instruction with iced's code assembler and decodes it at the test RIP.
pub(super) fn assemble(
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Instruction {
    let mut assembler = CodeAssembler::new(64).expect("64-bit assembler");
    build(&mut assembler).expect("assemble");
    let bytes = assembler.assemble(GUEST_RIP).expect("assemble");
    let instruction = Decoder::with_ip(64, &bytes, GUEST_RIP, DecoderOptions::NONE).decode();
    assert_ne!(instruction.code(), Code::INVALID, "{bytes:02x?}");
    instruction
}

/// Zeroed test memory at [`GUEST_BASE`].
pub(super) fn memory() -> FakeMemory {
    FakeMemory::new(GUEST_BASE, MEMORY_SIZE, 0)
}

/// Executes `instruction` and expects it to be this module's and to succeed.
pub(super) fn run(instruction: &Instruction, state: &mut X86State, memory: &mut FakeMemory) {
    assert_eq!(
        execute(instruction, state, memory),
        Ok(true),
        "{instruction}"
    );
}

/// Executes `instruction` and expects it to fail with `expected`'s kind of error (the same
/// exception, or a bad address) without changing the state or the memory.
pub(super) fn expect_failure(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut FakeMemory,
    expected: &str,
) {
    let before = state.clone();
    let bytes_before = memory.bytes.clone();
    let outcome = execute(instruction, state, memory);
    let kind = match &outcome {
        Err(EmulationError::GuestException { exception, .. }) => *exception,
        Err(EmulationError::BadAddress { .. }) => "bad address",
        _ => "",
    };
    assert_eq!(kind, expected, "{instruction}: {outcome:?}");
    assert_eq!(*state, before, "{instruction}: the state changed");
    assert!(
        memory.bytes == bytes_before,
        "{instruction}: memory changed"
    );
}
