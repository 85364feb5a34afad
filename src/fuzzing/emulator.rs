//! Fuzz target `x86_emulator`: the x86 instruction emulator on arbitrary instruction bytes, vCPU
//! state (registers, control registers, XSAVE area) and guest memory. The emulator must never
//! panic, must leave the state unchanged when it fails, and must move RIP past exactly the
//! instruction it executed.

use arbitrary::{Arbitrary, Unstructured};

use crate::arch::x86_64::emulate::services::{XsaveComponent, XsaveExtensions};
use crate::arch::x86_64::emulate::state::XSAVE_AREA_SIZE;
use crate::arch::x86_64::emulate::{
    EmulationError, GuestAccess, MAX_INSTRUCTION_LEN, SystemServices, X86State, emulate,
};

/// Guest-virtual address of the fake guest memory.
const MEMORY_BASE: u64 = 0x40_0000;
/// Size of the fake guest memory (two pages).
const MEMORY_SIZE: usize = 0x2000;

/// The vCPU state, memory and host services an instruction runs with.
#[derive(Debug, Arbitrary)]
struct EmulatorInput {
    instruction: [u8; MAX_INSTRUCTION_LEN],
    gprs: [u64; 16],
    /// Registers set to an address inside the fake memory (bit n: GPR n).
    gprs_into_memory: u16,
    rflags: u64,
    fs_base: u64,
    gs_base: u64,
    cr0_wp: bool,
    cr4: u64,
    efer_nxe: bool,
    user_mode: bool,
    xcr0: u8,
    mxcsr: u32,
    xmm: [u128; 16],
    xsave_patches: Vec<(u16, Vec<u8>)>,
    memory_fill: u8,
    memory_patches: Vec<(u16, Vec<u8>)>,
    /// Write accesses fail (as on a read-only page).
    read_only: bool,
    supported_xcr0: u8,
    xsaveopt: bool,
    compaction: bool,
    xgetbv_in_use: bool,
    withheld_xcr0: u8,
}

/// Guest memory for the target: one buffer at [`MEMORY_BASE`].
#[derive(Clone)]
struct FlatMemory {
    bytes: Vec<u8>,
    read_only: bool,
}

impl FlatMemory {
    fn range(&self, address: u64, len: usize) -> Result<std::ops::Range<usize>, EmulationError> {
        let bad = || EmulationError::BadAddress { address, len };
        let start = usize::try_from(address.checked_sub(MEMORY_BASE).ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        Ok(start..end.ok_or_else(bad)?)
    }
}

impl GuestAccess for FlatMemory {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError> {
        let range = self.range(address, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError> {
        self.probe_write(address, data.len())?;
        let range = self.range(address, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn probe_write(&mut self, address: u64, len: usize) -> Result<(), EmulationError> {
        self.range(address, len)?;
        if self.read_only {
            return Err(EmulationError::BadAddress { address, len });
        }
        Ok(())
    }
}

/// Host services with a fixed TSC and the input's XSAVE facts (x87, SSE and AVX at its usual
/// offset).
struct FuzzServices {
    supported_xcr0: u64,
    extensions: XsaveExtensions,
    withheld_xcr0: u64,
}

impl SystemServices for FuzzServices {
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError> {
        Ok((0x0123_4567_89ab_cdef, 3))
    }
    fn supported_xcr0(&self) -> u64 {
        self.supported_xcr0
    }
    fn xsave_component(&self, index: u32) -> Option<XsaveComponent> {
        (index == 2 && self.supported_xcr0 & 4 != 0).then_some(XsaveComponent {
            offset: 576,
            size: 256,
            aligned: false,
        })
    }
    fn xsave_extensions(&self) -> XsaveExtensions {
        self.extensions
    }
    fn withheld_xcr0(&self) -> u64 {
        self.withheld_xcr0
    }
    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError> {
        buf.fill(0xa5);
        Ok(())
    }
}

/// The state the input describes.
fn state_of(input: &EmulatorInput) -> X86State {
    let mut state = X86State::default();
    for (number, value) in input.gprs.iter().enumerate() {
        state.gprs[number] = if input.gprs_into_memory >> number & 1 == 1 {
            MEMORY_BASE + value % MEMORY_SIZE as u64
        } else {
            *value
        };
    }
    state.rip = 0x20_0000;
    state.rflags = (input.rflags & 0x3f_7fd5) | 2;
    state.fs_base = input.fs_base;
    state.gs_base = input.gs_base;
    let wp = if input.cr0_wp { 1 << 16 } else { 0 };
    state.cr0 = (state.cr0 & !(1 << 16)) | wp;
    state.cr4 = input.cr4;
    state.efer = if input.efer_nxe {
        state.efer
    } else {
        state.efer & !(1 << 11)
    };
    state.cpl = if input.user_mode { 3 } else { 0 };
    state.xcr0 = u64::from(input.xcr0 & 7) | 1;
    for (index, value) in input.xmm.iter().enumerate() {
        state.set_xmm(index, *value);
    }
    // Only the bits every x86_64 CPU accepts (the state comes from the hypervisor, which checks).
    state.set_mxcsr(input.mxcsr & 0xffff);
    for (offset, bytes) in input.xsave_patches.iter().take(4) {
        let offset = usize::from(*offset) % XSAVE_AREA_SIZE;
        let len = bytes.len().min(XSAVE_AREA_SIZE - offset);
        state.xsave[offset..offset + len].copy_from_slice(&bytes[..len]);
    }
    state
}

/// Runs one arbitrary instruction through the emulator and checks its promises.
pub fn x86_emulator(data: &[u8]) {
    let Ok(input) = EmulatorInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut memory = FlatMemory {
        bytes: vec![input.memory_fill; MEMORY_SIZE],
        read_only: input.read_only,
    };
    for (offset, bytes) in input.memory_patches.iter().take(4) {
        let offset = usize::from(*offset) % MEMORY_SIZE;
        let len = bytes.len().min(MEMORY_SIZE - offset);
        memory.bytes[offset..offset + len].copy_from_slice(&bytes[..len]);
    }
    let mut services = FuzzServices {
        supported_xcr0: u64::from(input.supported_xcr0 & 7) | 3,
        extensions: XsaveExtensions {
            xsaveopt: input.xsaveopt,
            compaction: input.compaction,
            xgetbv_in_use: input.xgetbv_in_use,
        },
        withheld_xcr0: u64::from(input.withheld_xcr0 & 4),
    };
    let before = state_of(&input);
    let mut state = before.clone();
    #[cfg(all(feature = "fuzz-native", target_arch = "x86_64"))]
    let memory_before = memory.clone();
    match emulate(&input.instruction, &mut state, &mut memory, &mut services) {
        Ok(instruction) => {
            assert_eq!(state.rip, instruction.next_ip(), "`{instruction}`");
            assert!(instruction.len() <= MAX_INSTRUCTION_LEN);
            #[cfg(all(feature = "fuzz-native", target_arch = "x86_64"))]
            compare_with_host(&input.instruction, before, memory_before, &mut services);
        }
        Err(error) => assert_eq!(state, before, "state changed although {error}"),
    }
}

/// Emulates the instruction again with only the arithmetic flags of `before` (the others would
/// change how the host runs it: TF, AC, …) and a loadable MXCSR, and compares the outcome with
/// the host CPU's.
#[cfg(all(feature = "fuzz-native", target_arch = "x86_64"))]
fn compare_with_host(
    bytes: &[u8],
    mut before: X86State,
    memory: FlatMemory,
    services: &mut FuzzServices,
) {
    before.rflags = (before.rflags & 0x8d5) | 2;
    // The XSAVE patches may have set reserved MXCSR bits, which the harness cannot load.
    before.set_mxcsr(before.mxcsr() & 0xffff);
    let (mut after, mut memory_after) = (before.clone(), memory.clone());
    if let Ok(instruction) = emulate(bytes, &mut after, &mut memory_after, services) {
        let run = super::emulator_native::EmulatedRun {
            before: &before,
            after: &after,
            memory_base: MEMORY_BASE,
            memory_before: &memory.bytes,
            memory_after: &memory_after.bytes,
        };
        super::emulator_native::compare_with_host(&instruction, bytes, &run);
    }
}
