//! User-space fallback for instructions the hypervisor cannot emulate.
//!
//! Some KVM hosts (KVM-PVM here; also any host when an instruction must be emulated, e.g. an SSE
//! move to MMIO) stop with an emulation failure on SSE arithmetic, XSAVE-family and a few system
//! instructions. On such an exit uhyve reads the vCPU state ([`X86State`]), decodes the
//! instruction at RIP with iced-x86, executes it here against that state and guest memory
//! ([`GuestAccess`]), advances RIP and resumes the guest. An instruction this module does not
//! know stops the VM with its mnemonic and bytes: nothing is ever executed approximately.

pub mod extensions;
pub mod operands;
pub mod sse;
pub mod state;
pub mod system;
#[cfg(test)]
mod testing;
pub mod xsave;

use iced_x86::{Decoder, DecoderOptions, Instruction};
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

pub use self::state::{EmulationError, GuestAccess, X86State};
pub use self::system::SystemServices;
pub use self::xsave::XsaveLayout;
use crate::arch::x86_64::paging::translate_range;
use crate::mem::GuestMemory;
use crate::vcpu::VcpuError;

/// Longest x86 instruction.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// A backend's access to the x86 vCPU state, for the emulator.
pub trait X86Cpu {
    /// Reads the state the emulator works on.
    fn emulation_state(&mut self) -> Result<X86State, VcpuError>;
    /// Writes back what changed between `before` and `after`.
    fn set_emulation_state(&mut self, before: &X86State, after: &X86State)
    -> Result<(), VcpuError>;
    /// The guest's TSC and `IA32_TSC_AUX`.
    fn guest_tsc(&mut self) -> Result<(u64, u32), VcpuError>;
    /// The XSAVE layout of this vCPU.
    fn xsave_layout(&self) -> &XsaveLayout;
}

/// The SIMD extensions beyond SSE2 the fallback implements completely, for the CPUID a guest
/// sees on a hypervisor that cannot execute them itself.
pub fn fallback_simd() -> crate::arch::x86_64::FallbackSimd {
    use iced_x86::CpuidFeature;
    let complete = |feature| sse::complete_extensions().contains(&feature);
    crate::arch::x86_64::FallbackSimd {
        sse3: complete(CpuidFeature::SSE3),
        ssse3: complete(CpuidFeature::SSSE3),
        sse4_1: complete(CpuidFeature::SSE4_1),
        sse4_2: complete(CpuidFeature::SSE4_2),
        popcnt: complete(CpuidFeature::POPCNT),
    }
}

/// Whether the emulator implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    system::supports(instruction) || sse::supports(instruction) || extensions::supports(instruction)
}

/// Decodes the instruction at `state.rip` from `bytes` and executes it against `state` and
/// `memory`. On success RIP points past it; on failure `state` is unchanged.
pub fn emulate(
    bytes: &[u8],
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<Instruction, EmulationError> {
    let instruction = Decoder::with_ip(64, bytes, state.rip, DecoderOptions::NONE).decode();
    if instruction.is_invalid() {
        return Err(EmulationError::Undecodable);
    }
    let mut next = state.clone();
    if sse::execute(&instruction, &mut next, memory)? {
        // The XSAVE family sets XSTATE_BV itself; other instructions put what they modify in use.
        next.mark_modified_components_in_use(state);
    } else if extensions::execute(&instruction, &mut next, memory)? {
        next.mark_modified_components_in_use(state);
    } else if !system::execute(&instruction, &mut next, memory, services)? {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    }
    next.rip = instruction.next_ip();
    *state = next;
    Ok(instruction)
}

/// Guest memory seen through the guest's page tables: every access is translated page by page
/// and checked against guest RAM.
pub struct PagedGuestMemory<'a> {
    mem: &'a GuestMemory,
    root: GuestPhysAddr,
}

impl<'a> PagedGuestMemory<'a> {
    /// Guest memory as the page tables rooted at `root` (CR3) map it.
    pub fn new(mem: &'a GuestMemory, root: GuestPhysAddr) -> Self {
        Self { mem, root }
    }

    fn pieces(
        &self,
        address: u64,
        len: usize,
    ) -> Result<Vec<(GuestPhysAddr, u64)>, EmulationError> {
        translate_range(self.mem, self.root, GuestVirtAddr::new(address), len as u64)
            .map_err(|_| EmulationError::BadAddress { address, len })
    }

    /// Reads up to `max` bytes at `address`, stopping at the first inaccessible byte.
    pub fn read_prefix(&mut self, address: u64, max: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(max);
        for offset in 0..max as u64 {
            let mut byte = [0u8];
            match address.checked_add(offset) {
                Some(at) if self.read(at, &mut byte).is_ok() => bytes.push(byte[0]),
                _ => break,
            }
        }
        bytes
    }
}

impl GuestAccess for PagedGuestMemory<'_> {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError> {
        let mut done = 0;
        for (gpa, len) in self.pieces(address, buf.len())? {
            let len = len as usize;
            self.mem
                .read(gpa, &mut buf[done..done + len])
                .map_err(|_| EmulationError::BadAddress {
                    address,
                    len: buf.len(),
                })?;
            done += len;
        }
        Ok(())
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError> {
        let pieces = self.pieces(address, data.len())?;
        let mut done = 0;
        for (gpa, len) in pieces {
            let len = len as usize;
            self.mem.write(gpa, &data[done..done + len]).map_err(|_| {
                EmulationError::BadAddress {
                    address,
                    len: data.len(),
                }
            })?;
            done += len;
        }
        Ok(())
    }
}

/// [`SystemServices`] backed by a vCPU.
struct BackendServices<'a> {
    cpu: &'a mut dyn X86Cpu,
}

impl SystemServices for BackendServices<'_> {
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError> {
        self.cpu
            .guest_tsc()
            .map_err(|e| EmulationError::Unsupported(format!("rdtscp (cannot read the TSC: {e})")))
    }

    fn supported_xcr0(&self) -> u64 {
        self.cpu.xsave_layout().supported_xcr0
    }

    fn xsave_component(&self, index: u32) -> Option<xsave::XsaveComponent> {
        self.cpu.xsave_layout().component(index)
    }

    fn xsave_extensions(&self) -> xsave::XsaveExtensions {
        self.cpu.xsave_layout().extensions
    }

    fn withheld_xcr0(&self) -> u64 {
        self.cpu.xsave_layout().withheld_xcr0
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError> {
        let mut file = std::fs::File::open("/dev/urandom")
            .map_err(|e| EmulationError::Unsupported(format!("rdrand (no randomness: {e})")))?;
        std::io::Read::read_exact(&mut file, buf)
            .map_err(|e| EmulationError::Unsupported(format!("rdrand (no randomness: {e})")))
    }
}

/// Why the fallback could not execute an instruction.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// Reading or writing the vCPU state failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The instruction cannot be emulated.
    #[error(transparent)]
    Emulation(#[from] EmulationError),
}

/// Executes the instruction at the vCPU's RIP in user space and writes the new state back.
/// `reported` are the instruction bytes the hypervisor gave, if any. Returns the instruction.
pub fn emulate_on_vcpu(
    cpu: &mut dyn X86Cpu,
    mem: &GuestMemory,
    reported: Option<&[u8]>,
) -> Result<Instruction, FallbackError> {
    let before = cpu.emulation_state()?;
    let mut memory = PagedGuestMemory::new(mem, GuestPhysAddr::new(before.cr3));
    let fetched;
    let bytes = match reported {
        Some(bytes) if !bytes.is_empty() => bytes,
        _ => {
            fetched = memory.read_prefix(before.rip, MAX_INSTRUCTION_LEN);
            &fetched
        }
    };
    let mut after = before.clone();
    let instruction = emulate(bytes, &mut after, &mut memory, &mut BackendServices { cpu })?;
    cpu.set_emulation_state(&before, &after)?;
    Ok(instruction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::paging::{PTE_HUGE, PTE_PRESENT, PTE_WRITABLE};

    /// A vCPU for the fallback: its state, and what was written back.
    struct FakeCpu {
        state: X86State,
        written: Option<X86State>,
        layout: XsaveLayout,
    }

    impl X86Cpu for FakeCpu {
        fn emulation_state(&mut self) -> Result<X86State, VcpuError> {
            Ok(self.state.clone())
        }
        fn set_emulation_state(&mut self, _: &X86State, after: &X86State) -> Result<(), VcpuError> {
            self.written = Some(after.clone());
            Ok(())
        }
        fn guest_tsc(&mut self) -> Result<(u64, u32), VcpuError> {
            Ok((1, 0))
        }
        fn xsave_layout(&self) -> &XsaveLayout {
            &self.layout
        }
    }

    /// 4 MiB of RAM, identity-mapped with one 2 MiB page at VA 0x20_0000 → PA 0x20_0000 and
    /// VA 0 → PA 0; tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD).
    fn memory() -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 4 << 20).unwrap();
        let w = |at: u64, v: u64| mem.write_obj(GuestPhysAddr::new(at), &v).unwrap();
        w(0x1000, 0x2000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x2000, 0x3000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x3000, PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        w(0x3008, 0x20_0000 | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        mem
    }

    fn cpu_at(rip: u64) -> FakeCpu {
        let mut state = X86State {
            rip,
            cr3: 0x1000,
            xcr0: 3,
            ..Default::default()
        };
        state.set_gpr(1, 0); // ECX = 0: XCR0
        FakeCpu {
            state,
            written: None,
            layout: XsaveLayout::default(),
        }
    }

    #[test]
    fn executes_reported_bytes_and_advances_rip() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        let xgetbv = [0x0f, 0x01, 0xd0];
        let instruction = emulate_on_vcpu(&mut cpu, &mem, Some(&xgetbv)).unwrap();
        assert_eq!(instruction.to_string(), "xgetbv");
        let written = cpu.written.unwrap();
        assert_eq!(written.rip, 0x20_0003);
        assert_eq!(written.gpr(0), 3);
    }

    #[test]
    fn fetches_the_instruction_through_the_page_tables() {
        let mem = memory();
        // pxor xmm1, xmm1 at the last bytes of a page, crossing into the next one.
        let rip = 0x20_0ffe;
        mem.write(GuestPhysAddr::new(rip), &[0x66, 0x0f, 0xef, 0xc9])
            .unwrap();
        let mut cpu = cpu_at(rip);
        cpu.state.set_xmm(1, u128::MAX);
        let instruction = emulate_on_vcpu(&mut cpu, &mem, None).unwrap();
        assert_eq!(instruction.to_string(), "pxor xmm1,xmm1");
        let written = cpu.written.unwrap();
        assert_eq!(written.xmm(1), 0);
        assert_eq!(written.rip, rip + 4);
        assert_eq!(
            written.xsave[state::XSAVE_HEADER_OFFSET] & 2,
            2,
            "SSE state now in use"
        );
    }

    #[test]
    fn unknown_instructions_are_named_and_nothing_is_written() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        let cpuid = [0x0f, 0xa2];
        let error = emulate_on_vcpu(&mut cpu, &mem, Some(&cpuid)).unwrap_err();
        assert_eq!(error.to_string(), "the emulator does not implement `cpuid`");
        assert!(cpu.written.is_none());
        // Code on an unmapped page cannot even be fetched.
        let mut cpu = cpu_at(0x80_0000_0000);
        let error = emulate_on_vcpu(&mut cpu, &mem, None).unwrap_err();
        assert!(matches!(
            error,
            FallbackError::Emulation(EmulationError::Undecodable)
        ));
    }

    #[test]
    fn memory_operands_outside_ram_are_bad_addresses() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_gpr(3, 0x40_0000); // RBX: the first byte after RAM, not mapped
        // movdqu xmm0, [rbx]
        let error = emulate_on_vcpu(&mut cpu, &mem, Some(&[0xf3, 0x0f, 0x6f, 0x03])).unwrap_err();
        assert!(matches!(
            error,
            FallbackError::Emulation(EmulationError::BadAddress {
                address: 0x40_0000,
                len: 16
            })
        ));
        assert!(cpu.written.is_none());
    }
}
