//! The XSAVE family: XSAVE, XSAVEOPT, XSAVEC, XRSTOR (standard and compacted form), FXSAVE and
//! FXRSTOR, and the description of the XSAVE state components they need ([`XsaveLayout`], from
//! CPUID leaf 0xD).
//!
//! [`X86State`] holds the vCPU's XSAVE area in the standard format, exactly as `KVM_GET_XSAVE`
//! returns it. A component whose XSTATE_BV bit is clear in that area is in its initial
//! configuration, whatever its bytes hold. XINUSE (the components not known to be in their initial
//! configuration) is that XSTATE_BV, plus SSE whenever MXCSR is not 1F80H: the SDM allows, but
//! does not require, a processor to report SSE as not in use then (an AMD Zen host was seen doing
//! both), and counting it in use makes the SDM's MXCSR exceptions for XSAVEC and XSAVEOPT fall
//! out of the general rule. RFBM is `XCR0 & EDX:EAX`; only what it selects is read or written.
//! XSAVEOPT and XSAVEC are #UD unless CPUID.(EAX=0xD,ECX=1):EAX reports them.
//!
//! - XSAVE stores every requested component at its standard offset (the initial configuration
//!   for one not in use) and MXCSR/MXCSR_MASK when SSE or AVX is requested; in the header it
//!   rewrites only XSTATE_BV, whose bits outside RFBM keep their value.
//! - XSAVEOPT is XSAVE with the init optimisation: requested components not in use are not
//!   stored (MXCSR still is). Its modified optimisation is never applied, which the architecture
//!   always allows.
//! - XSAVEC stores the compacted format: the requested components in use, component 2 … 62 one
//!   after the other from offset 576 in the order of their numbers, each starting on a 64-byte
//!   boundary if CPUID.(EAX=0xD,ECX=i):ECX\[1\] says so; MXCSR/MXCSR_MASK only with SSE. In the
//!   header it writes XSTATE_BV = XINUSE & RFBM and XCOMP_BV = RFBM | bit 63, nothing else; the
//!   legacy region outside the saved components (including bytes 416 … 511) is not written.
//! - XRSTOR reads the header first. Standard form (XCOMP_BV\[63\] = 0): #GP if XSTATE_BV sets a bit
//!   XCR0 does not or if header bytes 8 … 23 are not zero; MXCSR is loaded when SSE or AVX is
//!   requested. Compacted form: #GP if the CPU has no XSAVEC, if XCOMP_BV\[62:0\] sets a bit XCR0
//!   does not, if XSTATE_BV sets a bit outside XCOMP_BV\[62:0\] (bit 63 included: hardware faults
//!   on it), or if header bytes 16 … 63 are not zero; MXCSR is loaded only if RFBM and XSTATE_BV
//!   both select SSE, and set to 1F80H if RFBM selects SSE and XSTATE_BV does not. Either form:
//!   a requested component whose XSTATE_BV bit is clear is put in its initial configuration, a
//!   reserved MXCSR bit is #GP, MXCSR_MASK is never loaded, and XINUSE for the requested
//!   components becomes XSTATE_BV (SSE stays marked in use while MXCSR is not 1F80H, so that
//!   loading the area back with `KVM_SET_XSAVE` keeps MXCSR).
//! - FXSAVE/FXRSTOR move the first 416 bytes of the legacy region.
//!
//! Every fault leaves the state unchanged, and a save writes guest memory only once every byte it
//! will write is known to be accessible. A requested component the layout does not describe, or
//! that does not fit the 4096-byte area, stops the VM instead of being skipped. The x87 pointers
//! use the 32-bit format unless the instruction is a REX.W form.
//!
//! Not implemented: XSAVES/XRSTORS. They need the CPL (#GP unless 0) and IA32_XSS, neither of
//! which [`X86State`] carries, so they stop the VM as unknown instructions.

use std::ops::Range;

use iced_x86::{Instruction, Mnemonic};

use super::operands::OperandAccess;
use super::services::{SystemServices, edx_eax};
use super::state::{
    EmulationError, GuestAccess, LEGACY_REGION_SIZE, MXCSR_DEFAULT, MXCSR_MASK_OFFSET,
    MXCSR_OFFSET, X86State, XMM_OFFSET, XSAVE_AREA_SIZE, XSAVE_HEADER_OFFSET,
};

pub use super::services::{XsaveComponent, XsaveExtensions};

/// Where the XSAVE state components live, which XCR0 values and which optional XSAVE-family
/// instructions the virtual CPU supports, as CPUID leaf 0xD reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XsaveLayout {
    /// XCR0 bits the virtual CPU supports (CPUID.(EAX=0xD,ECX=0):EDX:EAX).
    pub supported_xcr0: u64,
    /// The optional instructions (CPUID.(EAX=0xD,ECX=1):EAX).
    pub extensions: XsaveExtensions,
    /// Components 0 … 62, indexed by number; `None` for 0 and 1 (the legacy region) and for
    /// components the CPU does not support.
    pub components: Vec<Option<XsaveComponent>>,
    /// XCR0 bits XGETBV reports as clear although XSETBV may set them: state components whose
    /// instructions (AVX, AVX-512, …) the user-space fallback cannot execute, on a hypervisor
    /// that cannot hide them from the guest's CPUID (KVM-PVM passes leaves 1, 7 and 0xD of the
    /// host through). OS-aware feature detection (`is_x86_feature_detected!`, libm, the kernel's
    /// own `XCr0::read`) checks XCR0 with XGETBV and then reports those extensions unavailable.
    /// XSAVE/XRSTOR still move the components' bytes. 0 everywhere else.
    pub withheld_xcr0: u64,
}

impl XsaveLayout {
    /// Reads the layout with `cpuid(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
    pub fn from_cpuid(mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> Self {
        let [eax, _, _, edx] = cpuid(0xd, 0);
        let supported_xcr0 = (u64::from(edx) << 32) | u64::from(eax);
        let [extensions, _, _, _] = cpuid(0xd, 1);
        let components = (0..63u32)
            .map(|index| {
                if index < 2 || supported_xcr0 & (1 << index) == 0 {
                    return None;
                }
                let [size, offset, flags, _] = cpuid(0xd, index);
                (size != 0).then_some(XsaveComponent {
                    offset: offset as usize,
                    size: size as usize,
                    aligned: flags & 2 != 0,
                })
            })
            .collect();
        Self {
            supported_xcr0,
            extensions: XsaveExtensions::from_cpuid_eax(extensions),
            components,
            withheld_xcr0: 0,
        }
    }

    /// This layout, with every XCR0 component but x87 and SSE withheld from XGETBV (see
    /// [`XsaveLayout::withheld_xcr0`]).
    pub fn withholding_other_components(mut self) -> Self {
        self.withheld_xcr0 = self.supported_xcr0 & !0b11;
        self
    }

    /// Component `index` (≥ 2), if the CPU supports it.
    pub fn component(&self, index: u32) -> Option<XsaveComponent> {
        self.components.get(index as usize).copied().flatten()
    }
}

/// XCR0/XSTATE_BV bit of the x87 state component.
const X87: u64 = 1 << 0;
/// XCR0/XSTATE_BV bit of the SSE state component (XMM registers, MXCSR).
const SSE: u64 = 1 << 1;
/// XCR0/XSTATE_BV bit of the AVX state component (upper halves of the YMM registers).
const AVX: u64 = 1 << 2;
/// XCOMP_BV bit 63: the save area uses the compacted format.
const COMPACTED_FORMAT: u64 = 1 << 63;
/// The bytes of the x87 state component in the legacy region: FCW … FDP, then ST0–ST7 (MXCSR and
/// MXCSR_MASK, between them, belong to SSE).
const X87_RANGES: [Range<usize>; 2] = [0..MXCSR_OFFSET, 32..XMM_OFFSET];
/// XMM0–XMM15 in the legacy region.
const XMM_RANGE: Range<usize> = XMM_OFFSET..XMM_OFFSET + 16 * 16;
/// MXCSR and MXCSR_MASK.
const MXCSR_FIELDS: Range<usize> = MXCSR_OFFSET..MXCSR_MASK_OFFSET + 4;
/// Size of the part of the legacy region FXSAVE writes in 64-bit mode (x87 and SSE state; the
/// rest of the 512-byte region is reserved or available to software and left untouched).
const FXSAVE_WRITTEN: usize = XMM_RANGE.end;
const _: () = assert!(FXSAVE_WRITTEN <= LEGACY_REGION_SIZE);
/// Offset of XSTATE_BV in the save area.
const XSTATE_BV_OFFSET: usize = XSAVE_HEADER_OFFSET;
/// Offset of XCOMP_BV in the save area.
const XCOMP_BV_OFFSET: usize = XSAVE_HEADER_OFFSET + 8;
/// Size of the XSAVE header.
const XSAVE_HEADER_SIZE: usize = 64;
/// Where the extended region (components 2 … 62) starts, and the first compacted component.
const EXTENDED_REGION_OFFSET: usize = XSAVE_HEADER_OFFSET + XSAVE_HEADER_SIZE;
/// Header bytes the standard form of XRSTOR requires to be zero (XCOMP_BV and the next 8).
const STANDARD_HEADER_ZERO: Range<usize> = 8..24;
/// Header bytes the compacted form of XRSTOR requires to be zero (everything after XCOMP_BV).
const COMPACTED_HEADER_ZERO: Range<usize> = 16..XSAVE_HEADER_SIZE;
/// The x87 control word in its initial configuration (all exceptions masked, 64-bit precision,
/// round to nearest); every other x87 field starts at 0 (abridged tag word 0: all empty).
const FCW_INITIAL: u16 = 0x037f;

/// The instructions of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XsaveInstruction {
    Xsave,
    Xsaveopt,
    Xsavec,
    Xrstor,
    Fxsave,
    Fxrstor,
}

fn classify(instruction: &Instruction) -> Option<XsaveInstruction> {
    use XsaveInstruction as X;
    Some(match instruction.mnemonic() {
        Mnemonic::Xsave | Mnemonic::Xsave64 => X::Xsave,
        Mnemonic::Xsaveopt | Mnemonic::Xsaveopt64 => X::Xsaveopt,
        Mnemonic::Xsavec | Mnemonic::Xsavec64 => X::Xsavec,
        Mnemonic::Xrstor | Mnemonic::Xrstor64 => X::Xrstor,
        Mnemonic::Fxsave | Mnemonic::Fxsave64 => X::Fxsave,
        Mnemonic::Fxrstor | Mnemonic::Fxrstor64 => X::Fxrstor,
        _ => return None,
    })
}

/// Whether [`execute`] implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    classify(instruction).is_some()
}

/// Executes `instruction` if it is one of this module's; `Ok(false)` otherwise. On error, neither
/// `state` nor guest memory has been changed (except where a write fails half-way although the
/// same bytes could be read just before, which guest RAM does not do).
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<bool, EmulationError> {
    use XsaveInstruction as X;
    let Some(kind) = classify(instruction) else {
        return Ok(false);
    };
    let extensions = services.xsave_extensions();
    let missing = match kind {
        X::Xsaveopt if !extensions.xsaveopt => Some("XSAVEOPT"),
        X::Xsavec if !extensions.compaction => Some("XSAVEC"),
        _ => None,
    };
    if let Some(name) = missing {
        return Err(EmulationError::guest_exception(
            instruction,
            "#UD",
            format!("CPUID.(EAX=0DH,ECX=1):EAX does not report {name}"),
        ));
    }
    let alignment = if matches!(kind, X::Fxsave | X::Fxrstor) {
        16
    } else {
        64
    };
    let address = aligned_operand(instruction, state, alignment)?;
    let rfbm = edx_eax(state) & state.xcr0;
    let area = SaveArea { address };
    match kind {
        X::Xsave => save_standard(instruction, state, memory, &*services, area, rfbm, false)?,
        X::Xsaveopt => save_standard(instruction, state, memory, &*services, area, rfbm, true)?,
        X::Xsavec => save_compacted(instruction, state, memory, &*services, area, rfbm)?,
        X::Xrstor => restore(instruction, state, memory, &*services, area, rfbm)?,
        X::Fxsave => fxsave(instruction, state, memory, area)?,
        X::Fxrstor => fxrstor(instruction, state, memory, area)?,
    }
    Ok(true)
}

/// XINUSE as the emulator tracks it (see the module documentation), within XCR0.
pub fn in_use(state: &X86State) -> u64 {
    let mut in_use = xstate_bv(state.xsave.as_slice());
    if state.mxcsr() != MXCSR_DEFAULT {
        in_use |= SSE;
    }
    in_use & state.xcr0
}

fn aligned_operand(
    instruction: &Instruction,
    state: &X86State,
    alignment: u64,
) -> Result<u64, EmulationError> {
    let address = OperandAccess::new(instruction).memory_address(state, 0)?;
    if address % alignment != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#GP",
            format!("save area at {address:#x} is not {alignment}-byte aligned"),
        ));
    }
    Ok(address)
}

/// The guest's save area.
#[derive(Clone, Copy)]
struct SaveArea {
    /// Guest-virtual address of its first byte.
    address: u64,
}

impl SaveArea {
    /// The guest-virtual address of the `len` bytes at `offset`.
    fn at(self, offset: usize, len: usize) -> Result<u64, EmulationError> {
        u64::try_from(offset)
            .ok()
            .and_then(|offset| self.address.checked_add(offset))
            .ok_or(EmulationError::BadAddress {
                address: self.address,
                len: offset.saturating_add(len),
            })
    }

    fn read(
        self,
        memory: &mut dyn GuestAccess,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), EmulationError> {
        memory.read(self.at(offset, buf.len())?, buf)
    }
}

/// What a save instruction will write into the save area, written only once every target byte is
/// known to be accessible.
struct PendingWrites {
    area: SaveArea,
    /// `(offset in the save area, bytes)`.
    writes: Vec<(usize, Vec<u8>)>,
}

impl PendingWrites {
    fn new(area: SaveArea) -> Self {
        Self {
            area,
            writes: Vec::new(),
        }
    }

    fn push(&mut self, offset: usize, bytes: Vec<u8>) {
        self.writes.push((offset, bytes));
    }

    /// Checks that every target may be written (the page fault a store would raise comes out
    /// here), then writes: a save area that is partly inaccessible is reported with nothing
    /// written.
    fn commit(self, memory: &mut dyn GuestAccess) -> Result<(), EmulationError> {
        for (offset, bytes) in &self.writes {
            memory.probe_write(self.area.at(*offset, bytes.len())?, bytes.len())?;
        }
        for (offset, bytes) in &self.writes {
            memory.write(self.area.at(*offset, bytes.len())?, bytes)?;
        }
        Ok(())
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// XSTATE_BV of a standard-format area.
fn xstate_bv(area: &[u8]) -> u64 {
    read_u64(area, XSTATE_BV_OFFSET)
}

fn set_xstate_bv(area: &mut [u8], value: u64) {
    area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&value.to_le_bytes());
}

/// The component numbers (0 … 62) whose bits `mask` sets, in increasing order.
fn components(mask: u64) -> impl Iterator<Item = u32> {
    (0..63u32).filter(move |index| mask & (1 << index) != 0)
}

fn unknown_component(instruction: &Instruction, index: u32, why: &str) -> EmulationError {
    EmulationError::Unsupported(format!(
        "{instruction} (XSAVE state component {index} {why})"
    ))
}

/// Where component `index` lives in the standard-format area of [`X86State`].
fn component_ranges(
    instruction: &Instruction,
    index: u32,
    services: &dyn SystemServices,
) -> Result<Vec<Range<usize>>, EmulationError> {
    match index {
        0 => Ok(X87_RANGES.to_vec()),
        1 => Ok(Vec::from([XMM_RANGE])),
        _ => {
            let component = services.xsave_component(index).ok_or_else(|| {
                unknown_component(instruction, index, "is not described by CPUID leaf 0xD")
            })?;
            component
                .offset
                .checked_add(component.size)
                .filter(|&end| end <= XSAVE_AREA_SIZE && component.offset >= EXTENDED_REGION_OFFSET)
                .map(|end| std::iter::once(component.offset..end).collect())
                .ok_or_else(|| {
                    unknown_component(instruction, index, "lies outside the 4096-byte XSAVE area")
                })
        }
    }
}

/// The offsets of components 2 … 62 selected by `components` (XCOMP_BV) in the compacted format
/// (SDM vol. 1, 13.4.3): the first at 576, each next one right after its predecessor, rounded up
/// to a multiple of 64 if CPUID says the component is aligned.
fn compacted_offsets(
    instruction: &Instruction,
    components_present: u64,
    services: &dyn SystemServices,
) -> Result<Vec<(u32, usize)>, EmulationError> {
    let mut next = EXTENDED_REGION_OFFSET;
    let mut offsets = Vec::new();
    for index in components(components_present & !(X87 | SSE)) {
        let component = services.xsave_component(index).ok_or_else(|| {
            unknown_component(instruction, index, "is not described by CPUID leaf 0xD")
        })?;
        let offset = if component.aligned {
            next.checked_next_multiple_of(64)
        } else {
            Some(next)
        };
        let (offset, end) = offset
            .and_then(|offset| Some((offset, offset.checked_add(component.size)?)))
            .ok_or_else(|| unknown_component(instruction, index, "has an impossible size"))?;
        offsets.push((index, offset));
        next = end;
    }
    Ok(offsets)
}

/// The initial configuration of the bytes `range` of component `index`.
fn initial_value(index: u32, range: &Range<usize>) -> Vec<u8> {
    let mut bytes = vec![0u8; range.len()];
    if index == 0 && range.start == 0 {
        bytes[0..2].copy_from_slice(&FCW_INITIAL.to_le_bytes());
    }
    bytes
}

/// The current value of the bytes `range` of component `index`, as the instruction stores it:
/// from the area if its XSTATE_BV bit is set, the initial configuration otherwise, and the x87
/// pointers in the instruction's format.
fn component_bytes(
    instruction: &Instruction,
    state: &X86State,
    index: u32,
    range: Range<usize>,
) -> Vec<u8> {
    let area = state.xsave.as_slice();
    if xstate_bv(area) & (1 << index) == 0 {
        return initial_value(index, &range);
    }
    let mut bytes = area[range.clone()].to_vec();
    if index == 0 && range.start == 0 {
        fix_x87_pointers(instruction, &mut bytes);
    }
    bytes
}

/// XSAVE, and XSAVEOPT (`init_optimisation`): the standard format.
fn save_standard(
    instruction: &Instruction,
    state: &X86State,
    memory: &mut dyn GuestAccess,
    services: &dyn SystemServices,
    area: SaveArea,
    rfbm: u64,
    init_optimisation: bool,
) -> Result<(), EmulationError> {
    let in_use = in_use(state);
    let mut old = [0u8; 8];
    area.read(memory, XSTATE_BV_OFFSET, &mut old)?;
    let new_xstate_bv = (u64::from_le_bytes(old) & !rfbm) | (in_use & rfbm);
    let mut writes = PendingWrites::new(area);
    for index in components(rfbm) {
        if init_optimisation && in_use & (1 << index) == 0 {
            continue;
        }
        for range in component_ranges(instruction, index, services)? {
            writes.push(
                range.start,
                component_bytes(instruction, state, index, range),
            );
        }
    }
    if rfbm & (SSE | AVX) != 0 {
        writes.push(MXCSR_OFFSET, state.xsave[MXCSR_FIELDS].to_vec());
    }
    writes.push(XSTATE_BV_OFFSET, new_xstate_bv.to_le_bytes().to_vec());
    writes.commit(memory)
}

/// XSAVEC: the compacted format with the init optimisation.
fn save_compacted(
    instruction: &Instruction,
    state: &X86State,
    memory: &mut dyn GuestAccess,
    services: &dyn SystemServices,
    area: SaveArea,
    rfbm: u64,
) -> Result<(), EmulationError> {
    let saved = in_use(state) & rfbm;
    let mut writes = PendingWrites::new(area);
    for index in components(saved & (X87 | SSE)) {
        for range in component_ranges(instruction, index, services)? {
            writes.push(
                range.start,
                component_bytes(instruction, state, index, range),
            );
        }
    }
    if saved & SSE != 0 {
        writes.push(MXCSR_OFFSET, state.xsave[MXCSR_FIELDS].to_vec());
    }
    for (index, offset) in compacted_offsets(instruction, rfbm, services)? {
        if saved & (1 << index) != 0 {
            for range in component_ranges(instruction, index, services)? {
                writes.push(offset, component_bytes(instruction, state, index, range));
            }
        }
    }
    writes.push(XSTATE_BV_OFFSET, saved.to_le_bytes().to_vec());
    writes.push(
        XCOMP_BV_OFFSET,
        (rfbm | COMPACTED_FORMAT).to_le_bytes().to_vec(),
    );
    writes.commit(memory)
}

fn invalid_header(instruction: &Instruction, reason: String) -> EmulationError {
    EmulationError::guest_exception(
        instruction,
        "#GP",
        format!("invalid XSAVE header: {reason}"),
    )
}

/// Where the save area XRSTOR reads keeps the extended components.
enum Format {
    /// At their standard offsets.
    Standard,
    /// At these offsets: `(component, offset)` for every component XCOMP_BV selects.
    Compacted(Vec<(u32, usize)>),
}

/// Checks the header of a save area for XRSTOR and tells its format.
fn check_header(
    instruction: &Instruction,
    state: &X86State,
    services: &dyn SystemServices,
    header: &[u8; XSAVE_HEADER_SIZE],
) -> Result<Format, EmulationError> {
    let saved = read_u64(header, 0);
    let present = read_u64(header, 8);
    let nonzero = |range: Range<usize>| header[range].iter().any(|&byte| byte != 0);
    if present & COMPACTED_FORMAT == 0 {
        if saved & !state.xcr0 != 0 {
            return Err(invalid_header(
                instruction,
                format!(
                    "XSTATE_BV {saved:#x} sets bits XCR0 {:#x} does not",
                    state.xcr0
                ),
            ));
        }
        if nonzero(STANDARD_HEADER_ZERO) {
            return Err(invalid_header(
                instruction,
                "the standard format needs bytes 8..24 (XCOMP_BV and the next 8) to be 0".into(),
            ));
        }
        return Ok(Format::Standard);
    }
    if !services.xsave_extensions().compaction {
        return Err(invalid_header(
            instruction,
            "compacted format (XCOMP_BV bit 63) without XSAVEC support".into(),
        ));
    }
    let present = present & !COMPACTED_FORMAT;
    if present & !state.xcr0 != 0 {
        return Err(invalid_header(
            instruction,
            format!(
                "XCOMP_BV {present:#x} sets bits XCR0 {:#x} does not",
                state.xcr0
            ),
        ));
    }
    // Bit 63 included: it never names a component, and hardware faults on it.
    if saved & !present != 0 {
        return Err(invalid_header(
            instruction,
            format!("XSTATE_BV {saved:#x} sets bits XCOMP_BV {present:#x} does not"),
        ));
    }
    if nonzero(COMPACTED_HEADER_ZERO) {
        return Err(invalid_header(
            instruction,
            "the compacted format needs bytes 16..64 to be 0".into(),
        ));
    }
    Ok(Format::Compacted(compacted_offsets(
        instruction,
        present,
        services,
    )?))
}

fn check_mxcsr(
    instruction: &Instruction,
    state: &X86State,
    value: u32,
) -> Result<(), EmulationError> {
    let reserved = value & !super::sse::guest_mxcsr_mask(state);
    if reserved != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#GP",
            format!("MXCSR value {value:#x} sets reserved bits {reserved:#x}"),
        ));
    }
    Ok(())
}

/// What XRSTOR does with MXCSR.
enum MxcsrUpdate {
    /// Leaves it alone.
    Keep,
    /// Loads it from the save area (#GP on reserved bits).
    Load,
    /// Sets it to 1F80H (compacted form, SSE requested but not in XSTATE_BV).
    Initialise,
}

/// XRSTOR, both forms.
fn restore(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &dyn SystemServices,
    area: SaveArea,
    rfbm: u64,
) -> Result<(), EmulationError> {
    let mut header = [0u8; XSAVE_HEADER_SIZE];
    area.read(memory, XSAVE_HEADER_OFFSET, &mut header)?;
    let saved = read_u64(&header, 0);
    let format = check_header(instruction, state, services, &header)?;
    let loaded = rfbm & saved;
    let mut new = state.xsave.clone();
    for index in components(rfbm) {
        for range in component_ranges(instruction, index, services)? {
            if loaded & (1 << index) == 0 {
                new[range.clone()].copy_from_slice(&initial_value(index, &range));
                continue;
            }
            let source = match &format {
                Format::Compacted(offsets) if index >= 2 => offsets
                    .iter()
                    .find(|(present, _)| *present == index)
                    .map(|&(_, offset)| offset)
                    .ok_or_else(|| {
                        unknown_component(instruction, index, "is missing from XCOMP_BV")
                    })?,
                _ => range.start,
            };
            area.read(memory, source, &mut new[range])?;
        }
    }
    if loaded & X87 != 0 {
        fix_x87_pointers(instruction, &mut new[..]);
    }
    let mxcsr = match format {
        Format::Standard if rfbm & (SSE | AVX) != 0 => MxcsrUpdate::Load,
        Format::Compacted(_) if rfbm & loaded & SSE != 0 => MxcsrUpdate::Load,
        Format::Compacted(_) if rfbm & SSE != 0 => MxcsrUpdate::Initialise,
        _ => MxcsrUpdate::Keep,
    };
    let mut in_use = (xstate_bv(new.as_slice()) & !rfbm) | loaded;
    let value = match mxcsr {
        MxcsrUpdate::Keep => None,
        MxcsrUpdate::Initialise => Some(MXCSR_DEFAULT),
        MxcsrUpdate::Load => {
            let mut bytes = [0u8; 4];
            area.read(memory, MXCSR_OFFSET, &mut bytes)?;
            let value = u32::from_le_bytes(bytes);
            check_mxcsr(instruction, state, value)?;
            Some(value)
        }
    };
    if let Some(value) = value {
        new[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&value.to_le_bytes());
        // A non-default MXCSR puts SSE in use (XMM registers that were not in use are 0):
        // loading the area back (KVM_SET_XSAVE) would otherwise reset MXCSR.
        if value != MXCSR_DEFAULT && in_use & SSE == 0 {
            new[XMM_RANGE].fill(0);
            in_use |= SSE;
        }
    }
    set_xstate_bv(&mut new[..], in_use);
    state.xsave = new;
    Ok(())
}

fn fxsave(
    instruction: &Instruction,
    state: &X86State,
    memory: &mut dyn GuestAccess,
    area: SaveArea,
) -> Result<(), EmulationError> {
    let mut image = [0u8; FXSAVE_WRITTEN];
    for (index, range) in X87_RANGES
        .into_iter()
        .map(|range| (0, range))
        .chain([(1, XMM_RANGE)])
    {
        image[range.clone()].copy_from_slice(&component_bytes(instruction, state, index, range));
    }
    image[MXCSR_FIELDS].copy_from_slice(&state.xsave[MXCSR_FIELDS]);
    memory.write(area.at(0, FXSAVE_WRITTEN)?, &image)
}

fn fxrstor(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    area: SaveArea,
) -> Result<(), EmulationError> {
    let mut image = [0u8; FXSAVE_WRITTEN];
    area.read(memory, 0, &mut image)?;
    let mxcsr = u32::from_le_bytes([image[24], image[25], image[26], image[27]]);
    check_mxcsr(instruction, state, mxcsr)?;
    fix_x87_pointers(instruction, &mut image);
    // MXCSR_MASK is read-only: keep the CPU's value.
    let mask_range = MXCSR_MASK_OFFSET..MXCSR_MASK_OFFSET + 4;
    image[mask_range.clone()].copy_from_slice(&state.xsave[mask_range]);
    state.xsave[..FXSAVE_WRITTEN].copy_from_slice(&image);
    // x87 and SSE state are now loaded (in use).
    let in_use = xstate_bv(state.xsave.as_slice()) | X87 | SSE;
    set_xstate_bv(&mut state.xsave[..], in_use);
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
            | Mnemonic::Xsavec64
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

#[cfg(test)]
mod tests;

#[cfg(all(test, target_arch = "x86_64"))]
mod host_tests;
