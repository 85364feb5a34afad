//! System instructions the hypervisor may fail to emulate: XGETBV/XSETBV, the XSAVE family
//! (XSAVE, XSAVEOPT, XRSTOR, FXSAVE, FXRSTOR), LDMXCSR/STMXCSR, RDTSCP, RDRAND and RDSEED.
//!
//! The XSAVE-family instructions move bytes between the guest's save area and the standard-format
//! XSAVE area of [`X86State`] (the same layout the architecture defines for memory), component by
//! component, as selected by XCR0 and EDX:EAX.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::operands::{OperandAccess, gpr_number};
use super::state::{
    EmulationError, GuestAccess, LEGACY_REGION_SIZE, MXCSR_MASK_OFFSET, MXCSR_OFFSET, X86State,
    XMM_OFFSET, XSAVE_AREA_SIZE, XSAVE_HEADER_OFFSET,
};

/// Where the XSAVE state components live, and which XCR0 values the virtual CPU accepts, as
/// CPUID leaf 0xD reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XsaveLayout {
    /// XCR0 bits the virtual CPU supports (CPUID.(EAX=0xD,ECX=0):EDX:EAX).
    pub supported_xcr0: u64,
    /// `(offset, size)` of components 2 … 62 in the standard format; `None` if absent.
    pub components: Vec<Option<(usize, usize)>>,
}

impl XsaveLayout {
    /// Reads the layout with `cpuid(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
    pub fn from_cpuid(mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> Self {
        let [eax, _, _, edx] = cpuid(0xd, 0);
        let supported_xcr0 = (u64::from(edx) << 32) | u64::from(eax);
        let components = (0..63u32)
            .map(|index| {
                if index < 2 || supported_xcr0 & (1 << index) == 0 {
                    return None;
                }
                let [size, offset, _, _] = cpuid(0xd, index);
                Some((offset as usize, size as usize)).filter(|&(_, size)| size != 0)
            })
            .collect();
        Self {
            supported_xcr0,
            components,
        }
    }

    /// `(offset, size)` of component `index` (≥ 2).
    pub fn component(&self, index: u32) -> Option<(usize, usize)> {
        self.components.get(index as usize).copied().flatten()
    }
}

/// Host services some system instructions need.
pub trait SystemServices {
    /// The guest's time-stamp counter and `IA32_TSC_AUX`, for RDTSCP.
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError>;
    /// The XCR0 bits the virtual CPU supports (CPUID leaf 0xD).
    fn supported_xcr0(&self) -> u64;
    /// Where state component `index` (≥ 2) lives in the standard-format XSAVE area:
    /// `(offset, size)`, or `None` if the component does not exist.
    fn xsave_component(&self, index: u32) -> Option<(usize, usize)>;
    /// Fills `buf` with random bytes, for RDRAND/RDSEED.
    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError>;
}

/// Bits of MXCSR that may be set (bits 0–15; DAZ is bit 6).
const MXCSR_VALID_BITS: u32 = 0xffff;
/// Size of the x87 + SSE part of the legacy region FXSAVE writes in 64-bit mode (the rest of the
/// 512-byte region is reserved or available to software and left untouched).
const FXSAVE_WRITTEN: usize = 416;
const _: () = assert!(FXSAVE_WRITTEN <= LEGACY_REGION_SIZE);
/// Offset of XSTATE_BV in the XSAVE header.
const XSTATE_BV_OFFSET: usize = XSAVE_HEADER_OFFSET;
/// Size of the XSAVE header.
const XSAVE_HEADER_SIZE: usize = 64;
/// RFLAGS bits RDRAND/RDSEED define: CF set, OF/SF/ZF/AF/PF cleared.
const ARITHMETIC_FLAGS: u64 = 0x8d5;
/// RFLAGS carry flag.
const CF: u64 = 1;

/// Executes `instruction` if it is one of this module's; `Ok(false)` otherwise.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<bool, EmulationError> {
    let operands = OperandAccess::new(instruction);
    match instruction.mnemonic() {
        Mnemonic::Xgetbv => xgetbv(instruction, state)?,
        Mnemonic::Xsetbv => xsetbv(instruction, state, services)?,
        Mnemonic::Xsave | Mnemonic::Xsaveopt => {
            let address = aligned_operand(instruction, state, &operands, 64)?;
            xsave(state, memory, services, address, requested_features(state))?;
        }
        Mnemonic::Xrstor => {
            let address = aligned_operand(instruction, state, &operands, 64)?;
            xrstor(
                instruction,
                state,
                memory,
                services,
                address,
                requested_features(state),
            )?;
        }
        Mnemonic::Fxsave => {
            let address = aligned_operand(instruction, state, &operands, 16)?;
            fxsave(instruction, state, memory, address)?;
        }
        Mnemonic::Fxrstor => {
            let address = aligned_operand(instruction, state, &operands, 16)?;
            fxrstor(instruction, state, memory, address)?;
        }
        Mnemonic::Ldmxcsr => {
            let address = operands.memory_address(state, 0)?;
            let mut bytes = [0u8; 4];
            memory.read(address, &mut bytes)?;
            let value = u32::from_le_bytes(bytes);
            check_mxcsr(instruction, value)?;
            state.set_mxcsr(value);
        }
        Mnemonic::Stmxcsr => {
            let address = operands.memory_address(state, 0)?;
            memory.write(address, &state.mxcsr().to_le_bytes())?;
        }
        Mnemonic::Rdtscp => {
            let (tsc, aux) = services.read_tsc()?;
            state.set_gpr(0, tsc & 0xffff_ffff);
            state.set_gpr(2, tsc >> 32);
            state.set_gpr(1, u64::from(aux));
        }
        Mnemonic::Rdrand | Mnemonic::Rdseed => random_into_register(instruction, state, services)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// Whether [`execute`] implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    matches!(
        instruction.mnemonic(),
        Mnemonic::Xgetbv
            | Mnemonic::Xsetbv
            | Mnemonic::Xsave
            | Mnemonic::Xsaveopt
            | Mnemonic::Xrstor
            | Mnemonic::Fxsave
            | Mnemonic::Fxrstor
            | Mnemonic::Ldmxcsr
            | Mnemonic::Stmxcsr
            | Mnemonic::Rdtscp
            | Mnemonic::Rdrand
            | Mnemonic::Rdseed
    )
}

fn exception(instruction: &Instruction, exception: &'static str, reason: String) -> EmulationError {
    EmulationError::GuestException {
        instruction: instruction.to_string(),
        exception,
        reason,
    }
}

fn aligned_operand(
    instruction: &Instruction,
    state: &X86State,
    operands: &OperandAccess<'_>,
    alignment: u64,
) -> Result<u64, EmulationError> {
    let address = operands.memory_address(state, 0)?;
    if address % alignment != 0 {
        return Err(exception(
            instruction,
            "#GP",
            format!("save area at {address:#x} is not {alignment}-byte aligned"),
        ));
    }
    Ok(address)
}

fn check_mxcsr(instruction: &Instruction, value: u32) -> Result<(), EmulationError> {
    if value & !MXCSR_VALID_BITS != 0 {
        return Err(exception(
            instruction,
            "#GP",
            format!("MXCSR value {value:#x} sets reserved bits"),
        ));
    }
    Ok(())
}

/// EDX:EAX, the requested-feature bitmap operand of the XSAVE family.
fn requested_features(state: &X86State) -> u64 {
    (state.gpr(2) << 32) | (state.gpr(0) & 0xffff_ffff)
}

fn xgetbv(instruction: &Instruction, state: &mut X86State) -> Result<(), EmulationError> {
    let value = match state.gpr(1) & 0xffff_ffff {
        0 => state.xcr0,
        // XCR0 & XINUSE: the components not in their initial state.
        1 => state.xcr0 & xstate_bv(state.xsave.as_slice()),
        other => {
            return Err(exception(
                instruction,
                "#GP",
                format!("XCR{other} does not exist"),
            ));
        }
    };
    state.set_gpr(0, value & 0xffff_ffff);
    state.set_gpr(2, value >> 32);
    Ok(())
}

fn xsetbv(
    instruction: &Instruction,
    state: &mut X86State,
    services: &mut dyn SystemServices,
) -> Result<(), EmulationError> {
    let register = state.gpr(1) & 0xffff_ffff;
    if register != 0 {
        return Err(exception(
            instruction,
            "#GP",
            format!("XCR{register} cannot be written"),
        ));
    }
    let value = requested_features(state);
    let supported = services.supported_xcr0();
    // x87 must stay enabled, AVX needs SSE, and only supported components may be enabled.
    let invalid = value & 1 == 0 || (value & 4 != 0 && value & 2 == 0) || value & !supported != 0;
    if invalid {
        return Err(exception(
            instruction,
            "#GP",
            format!("XCR0 value {value:#x} is invalid (supported: {supported:#x})"),
        ));
    }
    state.xcr0 = value;
    Ok(())
}

fn xstate_bv(area: &[u8]) -> u64 {
    read_u64(area, XSTATE_BV_OFFSET)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The byte ranges of the standard-format area that hold component `index`, or `None`.
fn component_ranges(
    index: u32,
    services: &dyn SystemServices,
) -> Option<Vec<std::ops::Range<usize>>> {
    match index {
        // x87: control words and pointers (MXCSR excluded), then ST0–ST7.
        0 => Some(vec![0..MXCSR_OFFSET, 32..XMM_OFFSET]),
        // SSE: XMM0–XMM15 (MXCSR is handled on its own).
        1 => Some(std::iter::once(XMM_OFFSET..FXSAVE_WRITTEN).collect()),
        _ => {
            let (offset, size) = services.xsave_component(index)?;
            let end = offset
                .checked_add(size)
                .filter(|&end| end <= XSAVE_AREA_SIZE)?;
            (offset >= XSAVE_HEADER_OFFSET + XSAVE_HEADER_SIZE)
                .then(|| std::iter::once(offset..end).collect())
        }
    }
}

fn xsave(
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
    address: u64,
    requested: u64,
) -> Result<(), EmulationError> {
    let rfbm = requested & state.xcr0;
    let area = state.xsave.as_slice();
    // Gather everything first, so a fault leaves guest memory untouched where possible.
    let mut writes: Vec<(usize, &[u8])> = Vec::new();
    for index in 0..63u32 {
        if rfbm & (1 << index) == 0 {
            continue;
        }
        let Some(ranges) = component_ranges(index, services) else {
            continue;
        };
        for range in ranges {
            writes.push((range.start, &area[range]));
        }
    }
    if rfbm & 0b110 != 0 {
        writes.push((MXCSR_OFFSET, &area[MXCSR_OFFSET..MXCSR_MASK_OFFSET + 4]));
    }
    // XSTATE_BV: for requested components, whether they are in use; others keep their value.
    let mut header = [0u8; 8];
    memory.read(address + XSTATE_BV_OFFSET as u64, &mut header)?;
    let old = u64::from_le_bytes(header);
    let new = (old & !rfbm) | (xstate_bv(area) & rfbm);
    for (offset, bytes) in writes {
        memory.write(address + offset as u64, bytes)?;
    }
    memory.write(address + XSTATE_BV_OFFSET as u64, &new.to_le_bytes())
}

fn xrstor(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
    address: u64,
    requested: u64,
) -> Result<(), EmulationError> {
    let rfbm = requested & state.xcr0;
    let mut header = [0u8; XSAVE_HEADER_SIZE];
    memory.read(address + XSAVE_HEADER_OFFSET as u64, &mut header)?;
    let saved_bv = read_u64(&header, 0);
    let comp_bv = read_u64(&header, 8);
    if comp_bv != 0 || header[16..].iter().any(|&b| b != 0) || saved_bv & !state.xcr0 != 0 {
        return Err(exception(
            instruction,
            "#GP",
            format!("invalid XSAVE header (XSTATE_BV {saved_bv:#x}, XCOMP_BV {comp_bv:#x})"),
        ));
    }
    let mut area = state.xsave.clone();
    if rfbm & 0b110 != 0 {
        let mut mxcsr = [0u8; 4];
        memory.read(address + MXCSR_OFFSET as u64, &mut mxcsr)?;
        let value = u32::from_le_bytes(mxcsr);
        check_mxcsr(instruction, value)?;
        area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&mxcsr);
    }
    for index in 0..63u32 {
        if rfbm & (1 << index) == 0 {
            continue;
        }
        let Some(ranges) = component_ranges(index, services) else {
            continue;
        };
        for range in ranges {
            if saved_bv & (1 << index) != 0 {
                memory.read(address + range.start as u64, &mut area[range])?;
            } else {
                init_component(index, &mut area[..], range);
            }
        }
    }
    let in_use = (xstate_bv(area.as_slice()) & !rfbm) | (saved_bv & rfbm);
    area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&in_use.to_le_bytes());
    state.xsave = area;
    Ok(())
}

/// Puts (part of) a component in its initial state.
fn init_component(index: u32, area: &mut [u8], range: std::ops::Range<usize>) {
    area[range.clone()].fill(0);
    if index == 0 && range.start == 0 {
        // FCW = 0x037F; FSW, abridged FTW (all empty), FOP, FIP, FDP = 0.
        area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    }
}

fn fxsave(
    instruction: &Instruction,
    state: &X86State,
    memory: &mut dyn GuestAccess,
    address: u64,
) -> Result<(), EmulationError> {
    let mut image = [0u8; FXSAVE_WRITTEN];
    image.copy_from_slice(&state.xsave[..FXSAVE_WRITTEN]);
    if !is_rex_w_form(instruction) {
        // 32-bit format: FIP/FDP are 32 bits, followed by the (zero) FCS/FDS selectors.
        image[12..16].fill(0);
        image[20..24].fill(0);
    }
    memory.write(address, &image)
}

fn fxrstor(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    address: u64,
) -> Result<(), EmulationError> {
    let mut image = [0u8; FXSAVE_WRITTEN];
    memory.read(address, &mut image)?;
    let mxcsr = u32::from_le_bytes([image[24], image[25], image[26], image[27]]);
    check_mxcsr(instruction, mxcsr)?;
    if !is_rex_w_form(instruction) {
        image[12..16].fill(0);
        image[20..24].fill(0);
    }
    // MXCSR_MASK is read-only: keep the CPU's value.
    let mask_range = MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4;
    image[mask_range.clone()].copy_from_slice(&state.xsave[mask_range]);
    state.xsave[..FXSAVE_WRITTEN].copy_from_slice(&image);
    // x87 and SSE state are now loaded (in use).
    let in_use = xstate_bv(state.xsave.as_slice()) | 0b11;
    state.xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&in_use.to_le_bytes());
    Ok(())
}

fn is_rex_w_form(instruction: &Instruction) -> bool {
    matches!(
        instruction.code(),
        Code::Fxsave64_m512byte | Code::Fxrstor64_m512byte
    )
}

fn random_into_register(
    instruction: &Instruction,
    state: &mut X86State,
    services: &mut dyn SystemServices,
) -> Result<(), EmulationError> {
    if instruction.op0_kind() != OpKind::Register {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    }
    let register = instruction.op0_register();
    let Some(number) = gpr_number(register) else {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    };
    let mut bytes = [0u8; 8];
    let size = register.size();
    services.random(&mut bytes[..size])?;
    let value = u64::from_le_bytes(bytes);
    let old = state.gpr(number);
    let new = match size {
        2 => (old & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    };
    state.set_gpr(number, new);
    state.rflags = (state.rflags & !ARITHMETIC_FLAGS) | CF;
    Ok(())
}
