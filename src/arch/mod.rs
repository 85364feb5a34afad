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

use crate::mem::{GuestMemory, MemoryError};

/// The architecture of a guest (one per VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    /// x86_64: hypercalls are port writes, 4-level page tables with CR3 as root.
    X86_64,
    /// aarch64: hypercalls are stores to the trap window, 4 KiB-granule stage-1 tables with
    /// TTBR0_EL1 as root.
    Aarch64,
}

/// A guest-virtual range that could not be translated, by architecture.
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

    /// The guest-physical parameter address a hypercall argument carries. x86_64 guests pass it
    /// with a 32-bit port write (EAX), so only the low 32 bits count; aarch64 guests store a
    /// whole 64-bit register.
    pub fn parameter_address(self, argument: u64) -> GuestPhysAddr {
        match self {
            Self::X86_64 => GuestPhysAddr::new(argument & 0xFFFF_FFFF),
            Self::Aarch64 => GuestPhysAddr::new(argument),
        }
    }

    /// Translates `[vaddr, vaddr + len)` through the guest page tables rooted at `root` (CR3 or
    /// TTBR0_EL1) into guest-physical pieces inside guest RAM.
    pub fn translate_range(
        self,
        mem: &GuestMemory,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
        len: u64,
    ) -> Result<Vec<(GuestPhysAddr, u64)>, TranslateError> {
        Ok(match self {
            Self::X86_64 => x86_64::translate_range(mem, root, vaddr, len)?,
            Self::Aarch64 => aarch64::translate_range(mem, root, vaddr, len)?,
        })
    }
}

/// Size of the smallest page on every supported architecture.
pub const PAGE_SIZE: u64 = 0x1000;

/// Splits the guest-virtual range `[vaddr, vaddr + len)` into guest-physical pieces, translating
/// every 4 KiB page on its own with `walk` (guest buffers are never assumed to be physically
/// contiguous) and merging physically adjacent pages. Each piece lies entirely inside guest RAM.
/// `wraps` is the error for a range that runs past the end of the address space, `outside`
/// the one for a page whose translation leaves guest RAM.
pub(crate) fn translate_pages<E>(
    mem: &GuestMemory,
    vaddr: GuestVirtAddr,
    len: u64,
    mut walk: impl FnMut(GuestVirtAddr) -> Result<GuestPhysAddr, E>,
    wraps: impl Fn() -> E,
    outside: impl Fn(u64, MemoryError) -> E,
) -> Result<Vec<(GuestPhysAddr, u64)>, E> {
    let start = vaddr.as_u64();
    let mut pieces: Vec<(GuestPhysAddr, u64)> = Vec::new();
    let mut done = 0u64;
    while done < len {
        let va = start.checked_add(done).ok_or_else(&wraps)?;
        let in_page = (PAGE_SIZE - (va & (PAGE_SIZE - 1))).min(len - done);
        let pa = walk(GuestVirtAddr::new(va))?;
        mem.checked_range(pa, in_page)
            .map_err(|source| outside(va, source))?;
        match pieces.last_mut() {
            Some((last_pa, last_len))
                if last_pa.as_u64().checked_add(*last_len) == Some(pa.as_u64()) =>
            {
                *last_len += in_page;
            }
            _ => pieces.push((pa, in_page)),
        }
        done += in_page;
    }
    Ok(pieces)
}
