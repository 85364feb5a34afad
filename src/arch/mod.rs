//! Per-architecture machine set-up. Each architecture module exports the same names (memory
//! layout, page tables, initial register state), so the VM code reads the same on every arch.
//! [`GuestArch`] is the one place where shared code (the hypercall dispatcher, crash reports)
//! picks the architecture-specific rule: how wide a hypercall argument is and which page-table
//! walker translates a guest-virtual buffer.

pub mod aarch64;
pub mod layout_rules;
pub mod x86_64;

use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::mem::GuestMemory;
use crate::mem::virt::PageWalk;

/// The architecture of a guest (one per VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    /// x86_64: hypercalls are port writes, 4-level page tables with CR3 as root.
    X86_64,
    /// aarch64: hypercalls are stores to the trap window, 4 KiB-granule stage-1 tables with
    /// TTBR0_EL1 as root.
    Aarch64,
}

/// A guest-virtual address that could not be translated, by architecture.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TranslateError {
    /// An x86_64 page-table walk failed.
    #[error(transparent)]
    X86_64(#[from] x86_64::PagingError),
    /// An aarch64 page-table walk failed.
    #[error(transparent)]
    Aarch64(#[from] aarch64::PagingError),
}

impl GuestArch {
    /// The architecture uhyve runs guests of on this host (hardware virtualization runs guests
    /// of the host's own architecture).
    #[cfg(not(target_arch = "aarch64"))]
    pub const HOST: Self = Self::X86_64;
    /// The architecture uhyve runs guests of on this host.
    #[cfg(target_arch = "aarch64")]
    pub const HOST: Self = Self::Aarch64;

    /// The ELF `e_machine` of this architecture's kernels.
    pub fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => EM_X86_64,
            Self::Aarch64 => EM_AARCH64,
        }
    }

    /// The text of the instruction at `rip` in `bytes`, for a diagnostic, and how many bytes it
    /// occupies (x86_64: decoded with iced-x86, 0 bytes if it does not decode; aarch64: the
    /// little-endian word as the assembler's `.inst`).
    pub fn disassemble(self, rip: u64, bytes: &[u8]) -> (String, usize) {
        match self {
            Self::X86_64 => x86_64::disassemble::decode_instruction(rip, bytes),
            Self::Aarch64 => match <[u8; 4]>::try_from(bytes) {
                Ok(word) => (format!(".inst {:#010x}", u32::from_le_bytes(word)), 4),
                Err(_) => ("(incomplete)".to_string(), 0),
            },
        }
    }

    /// The guest-physical parameter address a hypercall argument carries. x86_64 guests pass it
    /// with a 32-bit port write (EAX), so only the low 32 bits count; aarch64 guests store a
    /// whole 64-bit register.
    pub fn parameter_address(self, argument: u64) -> GuestPhysAddr {
        match self {
            Self::X86_64 => GuestPhysAddr::new(argument & 0xFFFF_FFFF),
            Self::Aarch64 => GuestPhysAddr::new(argument),
        }
    }

    /// The page tables rooted at `root` (CR3 or TTBR0_EL1) of a guest of this architecture.
    pub fn page_tables(self, root: GuestPhysAddr) -> GuestPageTables {
        GuestPageTables { arch: self, root }
    }
}

/// Size of the smallest page on every supported architecture.
pub const PAGE_SIZE: u64 = 0x1000;

const _: () = assert!(PAGE_SIZE == x86_64::paging::PAGE_SIZE);
const _: () = assert!(PAGE_SIZE == aarch64::paging::PAGE_SIZE);

/// The page tables of a guest of either architecture, walked as the host sees them: the walker
/// for callers that do not care which architecture the guest has (v1 hypercall buffers, crash
/// reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPageTables {
    arch: GuestArch,
    root: GuestPhysAddr,
}

impl PageWalk for GuestPageTables {
    const PAGE_SIZE: u64 = PAGE_SIZE;
    type Error = TranslateError;

    fn translate(
        &self,
        mem: &GuestMemory,
        vaddr: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, TranslateError> {
        Ok(match self.arch {
            GuestArch::X86_64 => x86_64::PageTables::new(self.root).translate(mem, vaddr)?,
            GuestArch::Aarch64 => aarch64::PageTables::new(self.root).translate(mem, vaddr)?,
        })
    }
}
