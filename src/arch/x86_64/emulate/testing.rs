//! Test support shared by the emulator's test modules: guest memory as one plain buffer, and host
//! services with a fixed TSC, fixed "random" bytes and an XSAVE layout the test chooses.

use super::state::{EmulationError, GuestAccess};
use super::system::SystemServices;
use super::xsave::{XsaveComponent, XsaveExtensions, XsaveLayout};

/// Guest memory for tests: `bytes` seen at guest-virtual address `base`; anything else is a bad
/// address.
pub struct FakeMemory {
    /// Guest-virtual address of `bytes[0]`.
    pub base: u64,
    /// The memory contents.
    pub bytes: Vec<u8>,
}

impl FakeMemory {
    /// `len` bytes of `fill` at `base`.
    pub fn new(base: u64, len: usize, fill: u8) -> Self {
        Self {
            base,
            bytes: vec![fill; len],
        }
    }

    fn range(&self, address: u64, len: usize) -> Result<std::ops::Range<usize>, EmulationError> {
        let bad = EmulationError::BadAddress { address, len };
        let start = address.checked_sub(self.base).ok_or(bad.clone())?;
        let start = usize::try_from(start).map_err(|_| bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if end > self.bytes.len() {
            return Err(bad);
        }
        Ok(start..end)
    }
}

impl GuestAccess for FakeMemory {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError> {
        let range = self.range(address, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError> {
        let range = self.range(address, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn probe_write(&mut self, address: u64, len: usize) -> Result<(), EmulationError> {
        self.range(address, len).map(|_| ())
    }
}

/// [`SystemServices`] for tests: TSC 0x1234_5678_9abc_def0 with `IA32_TSC_AUX` 7, random bytes
/// 0x5a, and `layout`.
pub struct FakeServices {
    /// The XSAVE layout and extensions the virtual CPU reports.
    pub layout: XsaveLayout,
}

impl FakeServices {
    /// x87 | SSE | AVX, with the AVX component at 576 (256 bytes) as on real CPUs, and XSAVEOPT,
    /// XSAVEC and XGETBV with ECX = 1.
    pub fn new() -> Self {
        let mut components = vec![None; 63];
        components[2] = Some(XsaveComponent {
            offset: 576,
            size: 256,
            aligned: false,
        });
        Self::with_layout(XsaveLayout {
            supported_xcr0: 0x7,
            extensions: XsaveExtensions {
                xsaveopt: true,
                compaction: true,
                xgetbv_in_use: true,
            },
            components,
            withheld_xcr0: 0,
        })
    }

    /// Services reporting `layout`.
    pub fn with_layout(layout: XsaveLayout) -> Self {
        Self { layout }
    }
}

impl SystemServices for FakeServices {
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError> {
        Ok((0x1234_5678_9abc_def0, 7))
    }
    fn supported_xcr0(&self) -> u64 {
        self.layout.supported_xcr0
    }
    fn xsave_component(&self, index: u32) -> Option<XsaveComponent> {
        self.layout.component(index)
    }
    fn xsave_extensions(&self) -> XsaveExtensions {
        self.layout.extensions
    }
    fn withheld_xcr0(&self) -> u64 {
        self.layout.withheld_xcr0
    }
    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError> {
        buf.fill(0x5a);
        Ok(())
    }
}

/// Where the tests' instructions are assembled and executed.
pub const CODE: u64 = 0x40_0000;

/// Assembles what `build` emits at [`CODE`].
pub fn assemble(
    build: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Vec<u8> {
    let mut assembler = iced_x86::code_asm::CodeAssembler::new(64).unwrap();
    build(&mut assembler).unwrap();
    assembler.assemble(CODE).unwrap()
}

/// Executes `bytes` at [`CODE`] with `services`.
pub fn run_with(
    bytes: &[u8],
    state: &mut super::X86State,
    memory: &mut dyn GuestAccess,
    services: &mut FakeServices,
) -> Result<iced_x86::Instruction, EmulationError> {
    state.rip = CODE;
    super::emulate(bytes, state, memory, services)
}

/// Executes `bytes` at [`CODE`] with the default [`FakeServices`].
pub fn run(
    bytes: &[u8],
    state: &mut super::X86State,
    memory: &mut dyn GuestAccess,
) -> Result<iced_x86::Instruction, EmulationError> {
    run_with(bytes, state, memory, &mut FakeServices::new())
}
