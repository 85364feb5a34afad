//! System instructions the hypervisor may fail to emulate: XGETBV/XSETBV, the XSAVE family
//! (XSAVE, XSAVEOPT, XRSTOR, FXSAVE, FXRSTOR), RDTSCP, RDRAND and RDSEED. (LDMXCSR/STMXCSR belong
//! to the SSE module.)
//!
//! The XSAVE-family instructions move bytes between the guest's save area and the standard-format
//! XSAVE area of [`X86State`] (the same layout the architecture defines for memory), component by
//! component, as selected by XCR0 and EDX:EAX.

use iced_x86::{Instruction, Mnemonic, OpKind};

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

/// The instructions of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemInstruction {
    Xgetbv,
    Xsetbv,
    Xsave,
    Xrstor,
    Fxsave,
    Fxrstor,
    Rdtscp,
    Random,
}

fn classify(instruction: &Instruction) -> Option<SystemInstruction> {
    use SystemInstruction as S;
    Some(match instruction.mnemonic() {
        Mnemonic::Xgetbv => S::Xgetbv,
        Mnemonic::Xsetbv => S::Xsetbv,
        // XSAVEOPT may skip components in their initial state; saving them anyway is allowed.
        Mnemonic::Xsave | Mnemonic::Xsave64 | Mnemonic::Xsaveopt | Mnemonic::Xsaveopt64 => S::Xsave,
        Mnemonic::Xrstor | Mnemonic::Xrstor64 => S::Xrstor,
        Mnemonic::Fxsave | Mnemonic::Fxsave64 => S::Fxsave,
        Mnemonic::Fxrstor | Mnemonic::Fxrstor64 => S::Fxrstor,
        Mnemonic::Rdtscp => S::Rdtscp,
        Mnemonic::Rdrand | Mnemonic::Rdseed => S::Random,
        _ => return None,
    })
}

/// Executes `instruction` if it is one of this module's; `Ok(false)` otherwise.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<bool, EmulationError> {
    use SystemInstruction as S;
    let Some(kind) = classify(instruction) else {
        return Ok(false);
    };
    let operands = OperandAccess::new(instruction);
    let requested = requested_features(state);
    match kind {
        S::Xgetbv => xgetbv(instruction, state)?,
        S::Xsetbv => xsetbv(instruction, state, services)?,
        S::Xsave => {
            let address = aligned_operand(instruction, state, &operands, 64)?;
            xsave(instruction, state, memory, services, address, requested)?;
        }
        S::Xrstor => {
            let address = aligned_operand(instruction, state, &operands, 64)?;
            xrstor(instruction, state, memory, services, address, requested)?;
        }
        S::Fxsave => {
            let address = aligned_operand(instruction, state, &operands, 16)?;
            fxsave(instruction, state, memory, address)?;
        }
        S::Fxrstor => {
            let address = aligned_operand(instruction, state, &operands, 16)?;
            fxrstor(instruction, state, memory, address)?;
        }
        S::Rdtscp => {
            let (tsc, aux) = services.read_tsc()?;
            state.set_gpr(0, tsc & 0xffff_ffff);
            state.set_gpr(2, tsc >> 32);
            state.set_gpr(1, u64::from(aux));
        }
        S::Random => random_into_register(instruction, state, services)?,
    }
    Ok(true)
}

/// Whether [`execute`] implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    classify(instruction).is_some()
}

fn aligned_operand(
    instruction: &Instruction,
    state: &X86State,
    operands: &OperandAccess<'_>,
    alignment: u64,
) -> Result<u64, EmulationError> {
    let address = operands.memory_address(state, 0)?;
    if address % alignment != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#GP",
            format!("save area at {address:#x} is not {alignment}-byte aligned"),
        ));
    }
    Ok(address)
}

fn check_mxcsr(
    instruction: &Instruction,
    state: &X86State,
    value: u32,
) -> Result<(), EmulationError> {
    if value & !super::sse::guest_mxcsr_mask(state) != 0 {
        return Err(EmulationError::guest_exception(
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
            return Err(EmulationError::guest_exception(
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
        return Err(EmulationError::guest_exception(
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
        return Err(EmulationError::guest_exception(
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

/// `(component, byte range)` of every existing component selected by `rfbm`.
fn requested_ranges(
    rfbm: u64,
    services: &dyn SystemServices,
) -> impl Iterator<Item = (u32, std::ops::Range<usize>)> + '_ {
    (0..63u32)
        .filter(move |index| rfbm & (1 << index) != 0)
        .filter_map(move |index| Some((index, component_ranges(index, services)?)))
        .flat_map(|(index, ranges)| ranges.into_iter().map(move |range| (index, range)))
}

fn xsave(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
    address: u64,
    requested: u64,
) -> Result<(), EmulationError> {
    let rfbm = requested & state.xcr0;
    let mut area = state.xsave.clone();
    fix_x87_pointers(instruction, &mut area[..]);
    let area = area.as_slice();
    // Gather everything first, so a fault leaves guest memory untouched where possible.
    let mut writes: Vec<(usize, &[u8])> = requested_ranges(rfbm, services)
        .map(|(_, range)| (range.start, &area[range]))
        .collect();
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
        return Err(EmulationError::guest_exception(
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
        check_mxcsr(instruction, state, value)?;
        area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&mxcsr);
    }
    for (index, range) in requested_ranges(rfbm, services) {
        if saved_bv & (1 << index) != 0 {
            memory.read(address + range.start as u64, &mut area[range])?;
        } else {
            init_component(index, &mut area[..], range);
        }
    }
    if rfbm & saved_bv & 1 != 0 {
        fix_x87_pointers(instruction, &mut area[..]);
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
    fix_x87_pointers(instruction, &mut image);
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
    check_mxcsr(instruction, state, mxcsr)?;
    fix_x87_pointers(instruction, &mut image);
    // MXCSR_MASK is read-only: keep the CPU's value.
    let mask_range = MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4;
    image[mask_range.clone()].copy_from_slice(&state.xsave[mask_range]);
    state.xsave[..FXSAVE_WRITTEN].copy_from_slice(&image);
    // x87 and SSE state are now loaded (in use).
    let in_use = xstate_bv(state.xsave.as_slice()) | 0b11;
    state.xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&in_use.to_le_bytes());
    Ok(())
}

/// Whether the instruction uses the 64-bit layout of the x87 instruction and data pointers
/// (REX.W forms); the others store 32-bit offsets followed by (zero) selectors.
fn is_rex_w_form(instruction: &Instruction) -> bool {
    matches!(
        instruction.mnemonic(),
        Mnemonic::Fxsave64
            | Mnemonic::Fxrstor64
            | Mnemonic::Xsave64
            | Mnemonic::Xsaveopt64
            | Mnemonic::Xrstor64
    )
}

/// Rewrites the x87 pointer fields (bytes 8..24 of the legacy region) into the 32-bit format
/// unless the instruction is a REX.W form.
fn fix_x87_pointers(instruction: &Instruction, legacy: &mut [u8]) {
    if !is_rex_w_form(instruction) && legacy.len() >= 24 {
        legacy[12..16].fill(0);
        legacy[20..24].fill(0);
    }
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

#[cfg(test)]
mod tests {
    use super::super::testing::FakeMemory;
    use super::super::{emulate, state::XSAVE_AREA_SIZE};
    use super::*;
    use iced_x86::code_asm::*;

    struct FakeServices {
        layout: XsaveLayout,
    }

    impl FakeServices {
        fn new() -> Self {
            // x87 | SSE | AVX, with the AVX component at 576 (256 bytes), as on real CPUs.
            let mut components = vec![None; 63];
            components[2] = Some((576, 256));
            Self {
                layout: XsaveLayout {
                    supported_xcr0: 0x7,
                    components,
                },
            }
        }
    }

    impl SystemServices for FakeServices {
        fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError> {
            Ok((0x1234_5678_9abc_def0, 7))
        }
        fn supported_xcr0(&self) -> u64 {
            self.layout.supported_xcr0
        }
        fn xsave_component(&self, index: u32) -> Option<(usize, usize)> {
            self.layout.component(index)
        }
        fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError> {
            buf.fill(0x5a);
            Ok(())
        }
    }

    const CODE: u64 = 0x40_0000;
    const DATA: u64 = 0x10_0000;

    fn assemble(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut assembler = CodeAssembler::new(64).unwrap();
        build(&mut assembler).unwrap();
        assembler.assemble(CODE).unwrap()
    }

    fn run(
        bytes: &[u8],
        state: &mut X86State,
        memory: &mut FakeMemory,
    ) -> Result<Instruction, EmulationError> {
        state.rip = CODE;
        emulate(bytes, state, memory, &mut FakeServices::new())
    }

    fn state_with_data() -> X86State {
        let mut state = X86State {
            xcr0: 0x7,
            ..Default::default()
        };
        for index in 0..16 {
            state.set_xmm(
                index,
                0x0101_0101_0101_0101_0101_0101_0101_0101 * (index as u128 + 1),
            );
        }
        state.set_mxcsr(0x1fa0);
        state.xsave[MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4]
            .copy_from_slice(&0xffffu32.to_le_bytes());
        state.xsave[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        state.xsave[32..42].copy_from_slice(&[9; 10]); // ST0
        state.xsave[576..576 + 256].fill(0x77); // upper halves of YMM0–15
        state.xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&7u64.to_le_bytes());
        state.set_gpr(0, 0x7); // EAX: requested features
        state.set_gpr(2, 0); // EDX
        state.set_gpr(3, DATA); // RBX: save area
        state
    }

    #[test]
    fn xgetbv_reads_xcr0_and_xinuse() {
        let bytes = assemble(|a| a.xgetbv());
        let mut state = state_with_data();
        state.xcr0 = 0x7;
        state.xsave[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&3u64.to_le_bytes());
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        state.set_gpr(1, 0);
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!((state.gpr(0), state.gpr(2)), (7, 0));
        assert_eq!(state.rip, CODE + 3);
        state.set_gpr(1, 1);
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(0), 3);
        state.set_gpr(1, 2);
        state.rip = CODE;
        let before = state.clone();
        let error = run(&bytes, &mut state, &mut memory).unwrap_err();
        assert!(matches!(
            error,
            EmulationError::GuestException {
                exception: "#GP",
                ..
            }
        ));
        assert_eq!(state, before, "a failed instruction changes nothing");
    }

    #[test]
    fn xsetbv_accepts_only_valid_supported_values() {
        let bytes = assemble(|a| a.xsetbv());
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State::default();
        let mut try_set = |value: u64, register: u64| {
            state.set_gpr(0, value & 0xffff_ffff);
            state.set_gpr(2, value >> 32);
            state.set_gpr(1, register);
            run(&bytes, &mut state, &mut memory).map(|_| state.xcr0)
        };
        assert_eq!(try_set(0x3, 0), Ok(0x3));
        assert_eq!(try_set(0x7, 0), Ok(0x7));
        for bad in [0x0, 0x2, 0x5, 0xf, 1 << 40] {
            assert!(try_set(bad, 0).is_err(), "XCR0 {bad:#x} must be refused");
        }
        assert!(try_set(0x3, 1).is_err(), "only XCR0 is writable");
    }

    #[test]
    fn xsave_then_xrstor_round_trips_every_component() {
        let save = assemble(|a| a.xsave(ptr(rbx)));
        let restore = assemble(|a| a.xrstor(ptr(rbx)));
        let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
        memory.bytes[512..576].fill(0); // a clean header, as after a first XSAVE of a zeroed area
        let mut state = state_with_data();
        let saved = state.clone();
        run(&save, &mut state, &mut memory).unwrap();
        // Data landed at the architectural offsets; the header says all three are in use.
        assert_eq!(&memory.bytes[160..176], &saved.xsave[160..176]);
        assert_eq!(&memory.bytes[24..28], &0x1fa0u32.to_le_bytes());
        assert_eq!(&memory.bytes[576..832], &[0x77; 256][..]);
        assert_eq!(read_u64(&memory.bytes, 512), 7);
        // Bytes no component owns stay untouched.
        assert_eq!(&memory.bytes[416..512], &[0xaa; 96][..]);

        let mut clobbered = saved.clone();
        for index in 0..16 {
            clobbered.set_xmm(index, 0);
        }
        clobbered.set_mxcsr(0x1f80);
        clobbered.xsave[576..832].fill(0);
        clobbered.xsave[32..42].fill(0);
        run(&restore, &mut clobbered, &mut memory).unwrap();
        clobbered.rip = saved.rip;
        assert_eq!(clobbered.xsave[..], saved.xsave[..]);
    }

    #[test]
    fn xrstor_initialises_components_missing_from_xstate_bv() {
        let restore = assemble(|a| a.xrstor(ptr(rbx)));
        let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
        memory.bytes[512..576].fill(0);
        memory.bytes[512] = 0b001; // only x87 saved
        memory.bytes[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
        memory.bytes[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
        let mut state = state_with_data();
        run(&restore, &mut state, &mut memory).unwrap();
        assert_eq!(
            state.xmm(5),
            0,
            "SSE not in XSTATE_BV: XMM registers are initialised"
        );
        assert_eq!(
            state.mxcsr(),
            0x1f00,
            "MXCSR is loaded whenever SSE is requested"
        );
        assert_eq!(&state.xsave[0..2], &0x027fu16.to_le_bytes());
        assert_eq!(&state.xsave[576..832], &[0u8; 256][..], "AVX initialised");
        assert_eq!(read_u64(state.xsave.as_slice(), XSTATE_BV_OFFSET), 1);
    }

    #[test]
    fn xsave_family_faults_are_refused_without_side_effects() {
        let mut memory = FakeMemory::new(DATA, 8192, 0xaa);
        memory.bytes[512..576].fill(0);
        for (bytes, address) in [
            (assemble(|a| a.xsave(ptr(rbx))), DATA + 8),
            (assemble(|a| a.xrstor(ptr(rbx))), DATA + 32),
            (assemble(|a| a.fxsave(ptr(rbx))), DATA + 4),
            (assemble(|a| a.fxrstor(ptr(rbx))), DATA + 8),
        ] {
            let mut state = state_with_data();
            state.set_gpr(3, address);
            state.rip = CODE;
            let before = state.clone();
            let error = run(&bytes, &mut state, &mut memory).unwrap_err();
            assert!(
                matches!(
                    error,
                    EmulationError::GuestException {
                        exception: "#GP",
                        ..
                    }
                ),
                "{error}"
            );
            assert_eq!(state, before);
        }
        // A compacted-format header is refused by XRSTOR.
        let restore = assemble(|a| a.xrstor(ptr(rbx)));
        memory.bytes[520..528].copy_from_slice(&(1u64 << 63 | 7).to_le_bytes());
        let mut state = state_with_data();
        assert!(run(&restore, &mut state, &mut memory).is_err());
        // An area outside memory is a bad address.
        let mut state = state_with_data();
        state.set_gpr(3, DATA + 0x10_0000);
        let save = assemble(|a| a.xsave(ptr(rbx)));
        assert!(matches!(
            run(&save, &mut state, &mut memory),
            Err(EmulationError::BadAddress { .. })
        ));
    }

    #[test]
    fn fxsave_and_fxrstor_move_the_legacy_region() {
        let save = assemble(|a| a.fxsave64(ptr(rbx)));
        let restore = assemble(|a| a.fxrstor64(ptr(rbx)));
        let mut memory = FakeMemory::new(DATA, 512, 0xaa);
        let mut state = state_with_data();
        let saved = state.clone();
        run(&save, &mut state, &mut memory).unwrap();
        assert_eq!(&memory.bytes[..416], &saved.xsave[..416]);
        assert_eq!(
            &memory.bytes[416..],
            &[0xaa; 96][..],
            "bytes 416..512 are not written"
        );
        let mut clobbered = saved.clone();
        clobbered.set_xmm(15, 0);
        clobbered.set_mxcsr(0x1f80);
        memory.bytes[28..32].fill(0); // a different MXCSR_MASK in memory is ignored
        run(&restore, &mut clobbered, &mut memory).unwrap();
        assert_eq!(clobbered.xmm(15), saved.xmm(15));
        assert_eq!(clobbered.mxcsr(), saved.mxcsr());
        assert_eq!(&clobbered.xsave[28..32], &0xffffu32.to_le_bytes());
        // Reserved MXCSR bits in the image fault.
        memory.bytes[24..28].copy_from_slice(&0x1_0000u32.to_le_bytes());
        assert!(run(&restore, &mut clobbered, &mut memory).is_err());
    }

    #[test]
    fn rdtscp_and_random_numbers() {
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State {
            gprs: [u64::MAX; 16],
            ..Default::default()
        };
        run(&assemble(|a| a.rdtscp()), &mut state, &mut memory).unwrap();
        assert_eq!(
            (state.gpr(0), state.gpr(2), state.gpr(1)),
            (0x9abc_def0, 0x1234_5678, 7)
        );

        state.rflags = 0x2 | 0x8d4; // OF SF ZF AF PF set, CF clear
        run(&assemble(|a| a.rdrand(eax)), &mut state, &mut memory).unwrap();
        assert_eq!(
            state.gpr(0),
            0x5a5a_5a5a,
            "a 32-bit destination zero-extends"
        );
        assert_eq!(state.rflags, 0x2 | 1, "CF set, OF/SF/ZF/AF/PF clear");
        state.gprs[3] = u64::MAX;
        run(&assemble(|a| a.rdseed(bx)), &mut state, &mut memory).unwrap();
        assert_eq!(
            state.gpr(3),
            0xffff_ffff_ffff_5a5a,
            "a 16-bit destination merges"
        );
        run(&assemble(|a| a.rdrand(r12)), &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(12), 0x5a5a_5a5a_5a5a_5a5a);
    }

    #[test]
    fn unknown_instructions_are_refused_by_name() {
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State::default();
        let error = run(&assemble(|a| a.cpuid()), &mut state, &mut memory).unwrap_err();
        assert_eq!(error, EmulationError::Unsupported("cpuid".into()));
        assert_eq!(
            run(&[0xff, 0xff], &mut state, &mut memory).unwrap_err(),
            EmulationError::Undecodable
        );
        assert_eq!(XSAVE_AREA_SIZE, 4096);
    }

    #[test]
    fn xsave_layout_from_cpuid() {
        let layout = XsaveLayout::from_cpuid(|leaf, sub| match (leaf, sub) {
            (0xd, 0) => [0x7, 0x340, 0x340, 0],
            (0xd, 2) => [256, 576, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(layout.supported_xcr0, 7);
        assert_eq!(layout.component(2), Some((576, 256)));
        assert_eq!(layout.component(3), None);
        assert_eq!(layout.component(99), None);
    }

    /// A 64-byte aligned buffer for native FXSAVE/XSAVE.
    #[cfg(target_arch = "x86_64")]
    #[repr(C, align(64))]
    struct Aligned([u8; 512]);

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fxsave64_matches_the_host_cpu() {
        // Put known XMM and MXCSR values into the host CPU with FXRSTOR64, read them back with a
        // native FXSAVE64, and compare with the emulator saving the same state.
        let mut image = Aligned([0; 512]);
        // SAFETY: FXSAVE64 writes 512 bytes into the aligned, live buffer.
        unsafe { std::arch::asm!("fxsave64 [{}]", in(reg) image.0.as_mut_ptr()) };
        for (index, chunk) in image.0[160..416].chunks_exact_mut(16).enumerate() {
            chunk.fill(0x0f_u8.wrapping_mul(index as u8 + 1));
        }
        image.0[24..28].copy_from_slice(&0x3fa0u32.to_le_bytes());
        let mut native = Aligned([0xcc; 512]);
        // SAFETY: restores an image the CPU itself produced (only XMM values and a valid MXCSR
        // changed), saves it again, and finally restores the original state so the test thread
        // continues with its own registers; both buffers are aligned and live.
        unsafe {
            let mut original = Aligned([0; 512]);
            std::arch::asm!(
                "fxsave64 [{original}]",
                "fxrstor64 [{image}]",
                "fxsave64 [{native}]",
                "fxrstor64 [{original}]",
                original = in(reg) original.0.as_mut_ptr(),
                image = in(reg) image.0.as_ptr(),
                native = in(reg) native.0.as_mut_ptr(),
            );
        }
        let mut state = X86State::default();
        state.xsave[..512].copy_from_slice(&native.0);
        state.set_gpr(3, DATA);
        let mut memory = FakeMemory::new(DATA, 512, 0xaa);
        memory.bytes[416..].copy_from_slice(&native.0[416..]);
        run(&assemble(|a| a.fxsave64(ptr(rbx))), &mut state, &mut memory).unwrap();
        assert_eq!(&memory.bytes[..], &native.0[..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rdrand_flags_match_the_host_cpu() {
        if !std::arch::is_x86_feature_detected!("rdrand") {
            eprintln!("skipping rdrand_flags_match_the_host_cpu: the host has no RDRAND");
            return;
        }
        let flags: u64;
        // SAFETY: RDRAND only writes RAX and the flags, which are declared; pushfq/pop read them
        // back through the stack the asm block is allowed to use.
        unsafe {
            std::arch::asm!(
                "2:",
                "rdrand rax",
                "jnc 2b",
                "pushfq",
                "pop {flags}",
                flags = out(reg) flags,
                out("rax") _,
            );
        }
        let mut state = X86State {
            rflags: 0x2 | 0x8d4,
            ..Default::default()
        };
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        run(&assemble(|a| a.rdrand(rax)), &mut state, &mut memory).unwrap();
        assert_eq!(state.rflags & ARITHMETIC_FLAGS, flags & ARITHMETIC_FLAGS);
    }
}
