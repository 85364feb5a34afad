//! Operand plumbing shared by the emulated instruction families: general-register numbering and
//! the guest-virtual address of a memory operand (base, index, scale, displacement, RIP-relative,
//! FS/GS segment bases), computed with iced-x86 from the vCPU state.

use iced_x86::{Instruction, OpKind, Register};

use super::state::{EmulationError, X86State};

/// The hardware number (0 = RAX … 15 = R15) of a general register of any size.
pub fn gpr_number(register: Register) -> Option<usize> {
    if !register.is_gpr() {
        return None;
    }
    let full = register.full_register();
    let number = full as usize - Register::RAX as usize;
    (number < 16).then_some(number)
}

/// The hardware number of the register whose bits 8–15 `register` is (AH … BH), if it is one.
pub fn high_byte_register(register: Register) -> Option<usize> {
    match register {
        Register::AH => Some(0),
        Register::CH => Some(1),
        Register::DH => Some(2),
        Register::BH => Some(3),
        _ => None,
    }
}

/// Computes operand addresses of one decoded instruction.
pub struct OperandAccess<'a> {
    instruction: &'a Instruction,
}

impl<'a> OperandAccess<'a> {
    /// Operand access for `instruction`.
    pub fn new(instruction: &'a Instruction) -> Self {
        Self { instruction }
    }

    /// The guest-virtual address of memory operand `operand`.
    pub fn memory_address(&self, state: &X86State, operand: u32) -> Result<u64, EmulationError> {
        if self.instruction.op_kind(operand) != OpKind::Memory {
            return Err(EmulationError::Unsupported(self.instruction.to_string()));
        }
        self.instruction
            .virtual_address(operand, 0, |register, _, _| {
                address_register(state, register)
            })
            .ok_or_else(|| EmulationError::Unsupported(self.instruction.to_string()))
    }
}

/// The value iced needs for `register` when computing an effective address: general registers
/// of any address size, RIP, and segment registers as their base.
pub fn address_register(state: &X86State, register: Register) -> Option<u64> {
    match register {
        Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        Register::FS => Some(state.fs_base),
        Register::GS => Some(state.gs_base),
        Register::RIP => Some(state.rip),
        Register::EIP => Some(state.rip & 0xffff_ffff),
        _ => {
            let number = gpr_number(register)?;
            let value = state.gpr(number);
            Some(match register.size() {
                8 => value,
                4 => value & 0xffff_ffff,
                2 => value & 0xffff,
                _ => return None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8], ip: u64) -> Instruction {
        Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode()
    }

    #[test]
    fn register_numbers() {
        assert_eq!(gpr_number(Register::RAX), Some(0));
        assert_eq!(gpr_number(Register::ECX), Some(1));
        assert_eq!(gpr_number(Register::R15D), Some(15));
        assert_eq!(gpr_number(Register::R8W), Some(8));
        assert_eq!(gpr_number(Register::XMM0), None);
        assert_eq!(gpr_number(Register::FS), None);
    }

    #[test]
    fn addresses_with_index_segment_and_rip() {
        let mut state = X86State::default();
        state.set_gpr(0, 0x1000); // rax
        state.set_gpr(3, 0x20); // rbx
        state.fs_base = 0x7000_0000;
        // stmxcsr [rax+rbx*4+8]
        let instruction = decode(&[0x0f, 0xae, 0x5c, 0x98, 0x08], 0x40_0000);
        let access = OperandAccess::new(&instruction);
        assert_eq!(access.memory_address(&state, 0), Ok(0x1000 + 0x80 + 8));
        // stmxcsr fs:[rax]
        let instruction = decode(&[0x64, 0x0f, 0xae, 0x18], 0x40_0000);
        assert_eq!(
            OperandAccess::new(&instruction).memory_address(&state, 0),
            Ok(0x7000_1000)
        );
        // stmxcsr [rip+0x10]: relative to the next instruction (7 bytes long).
        let instruction = decode(&[0x0f, 0xae, 0x1d, 0x10, 0, 0, 0], 0x40_0000);
        assert_eq!(
            OperandAccess::new(&instruction).memory_address(&state, 0),
            Ok(0x40_0017)
        );
        // A register operand has no address.
        let instruction = decode(&[0x48, 0x01, 0xd8], 0); // add rax, rbx
        assert!(
            OperandAccess::new(&instruction)
                .memory_address(&state, 0)
                .is_err()
        );
    }
}
