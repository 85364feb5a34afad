//! x86_64 4-level page tables: the host-side walk that translates guest-virtual addresses
//! (hypercall buffers) and the builder of the boot identity map.
//!
//! The walk trusts nothing it reads: every table pointer and every resulting address is checked
//! against guest RAM through [`GuestMemory`], and non-present entries end the walk with an error.

use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::mem::{GuestMemory, MemoryError};

/// Present bit of a page-table entry.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Writable bit.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-size bit: the entry maps a 1 GiB (PDPT) or 2 MiB (PD) page.
pub const PTE_HUGE: u64 = 1 << 7;
/// Bits 12..52 of an entry: the physical frame address.
pub const PTE_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Size of the smallest page.
pub const PAGE_SIZE: u64 = 0x1000;

/// Failures of a guest page-table walk.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PagingError {
    /// The address is not canonical (bits 63..48 differ from bit 47).
    #[error("guest virtual address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// An entry on the walk is not present.
    #[error("guest virtual address {vaddr:#x} is not mapped (level {level} entry not present)")]
    NotMapped {
        /// The address being translated.
        vaddr: u64,
        /// 4 = PML4 … 1 = PT.
        level: u8,
    },
    /// A table or the final address lies outside guest RAM.
    #[error("page-table walk for {vaddr:#x} left guest RAM: {source}")]
    OutsideRam {
        /// The address being translated.
        vaddr: u64,
        /// The failed access.
        source: MemoryError,
    },
}

fn is_canonical(vaddr: u64) -> bool {
    let upper = vaddr >> 47;
    upper == 0 || upper == 0x1ffff
}

/// Translates one guest-virtual address to a guest-physical address by walking the 4-level
/// tables rooted at `root` (CR3), honouring 1 GiB and 2 MiB pages.
pub fn virt_to_phys(
    mem: &GuestMemory,
    root: GuestPhysAddr,
    vaddr: GuestVirtAddr,
) -> Result<GuestPhysAddr, PagingError> {
    let va = vaddr.as_u64();
    if !is_canonical(va) {
        return Err(PagingError::NonCanonical(va));
    }
    let mut table = root.as_u64() & PTE_ADDRESS_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let index = (va >> shift) & 0x1ff;
        let entry_address = GuestPhysAddr::new(table + index * 8);
        let entry: u64 = mem
            .read_obj(entry_address)
            .map_err(|source| PagingError::OutsideRam { vaddr: va, source })?;
        if entry & PTE_PRESENT == 0 {
            return Err(PagingError::NotMapped { vaddr: va, level });
        }
        let frame = entry & PTE_ADDRESS_MASK;
        let is_leaf = level == 1 || ((level == 2 || level == 3) && entry & PTE_HUGE != 0);
        if is_leaf {
            let page_mask = (1u64 << shift) - 1;
            let physical = (frame & !page_mask) | (va & page_mask);
            mem.checked_range(GuestPhysAddr::new(physical), 1)
                .map_err(|source| PagingError::OutsideRam { vaddr: va, source })?;
            return Ok(GuestPhysAddr::new(physical));
        }
        table = frame;
    }
    unreachable!("level 1 entries are always leaves")
}

/// Splits the guest-virtual range `[vaddr, vaddr + len)` into guest-physical pieces, translating
/// every 4 KiB page on its own (guest buffers are never assumed to be physically contiguous).
/// Each returned piece lies entirely inside guest RAM.
pub fn translate_range(
    mem: &GuestMemory,
    root: GuestPhysAddr,
    vaddr: GuestVirtAddr,
    len: u64,
) -> Result<Vec<(GuestPhysAddr, u64)>, PagingError> {
    let start = vaddr.as_u64();
    let mut pieces: Vec<(GuestPhysAddr, u64)> = Vec::new();
    let mut done = 0u64;
    while done < len {
        let va = start
            .checked_add(done)
            .ok_or(PagingError::NonCanonical(u64::MAX))?;
        let in_page = (PAGE_SIZE - (va & (PAGE_SIZE - 1))).min(len - done);
        let pa = virt_to_phys(mem, root, GuestVirtAddr::new(va))?;
        mem.checked_range(pa, in_page)
            .map_err(|source| PagingError::OutsideRam { vaddr: va, source })?;
        match pieces.last_mut() {
            Some((last_pa, last_len)) if last_pa.as_u64() + *last_len == pa.as_u64() => {
                *last_len += in_page;
            }
            _ => pieces.push((pa, in_page)),
        }
        done += in_page;
    }
    Ok(pieces)
}

#[cfg(test)]
mod walk_tests {
    use super::*;

    const ROOT: u64 = 0x1000;

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000, RAM 0..16 MiB.
    fn memory_with_tables() -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 << 20).unwrap();
        let w = |at: u64, v: u64| mem.write_obj(GuestPhysAddr::new(at), &v).unwrap();
        w(0x1000, 0x2000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x2000, 0x3000 | PTE_PRESENT | PTE_WRITABLE);
        // PD[0] -> PT; PD[1] = 2 MiB page at 4 MiB; PD[2] = 2 MiB page far outside RAM.
        w(0x3000, 0x4000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x3008, 0x40_0000 | PTE_PRESENT | PTE_HUGE);
        w(0x3010, 0x10_0000_0000 | PTE_PRESENT | PTE_HUGE);
        // PT[5] -> frame 0x9000, PT[6] -> frame 0x7000 (not contiguous), PT[7] not present.
        w(0x4000 + 5 * 8, 0x9000 | PTE_PRESENT);
        w(0x4000 + 6 * 8, 0x7000 | PTE_PRESENT);
        mem
    }

    #[test]
    fn walks_4k_and_2m_pages() {
        let mem = memory_with_tables();
        let root = GuestPhysAddr::new(ROOT);
        let t = |va: u64| virt_to_phys(&mem, root, GuestVirtAddr::new(va));
        assert_eq!(t(0x5123), Ok(GuestPhysAddr::new(0x9123)));
        assert_eq!(t(0x20_0042), Ok(GuestPhysAddr::new(0x40_0042)));
        assert_eq!(
            t(0x7000),
            Err(PagingError::NotMapped {
                vaddr: 0x7000,
                level: 1
            })
        );
        assert!(matches!(t(0x40_0000), Err(PagingError::OutsideRam { .. })));
        assert_eq!(
            t(0x8000_0000_0000),
            Err(PagingError::NonCanonical(0x8000_0000_0000))
        );
        assert_eq!(
            t(0x80_0000_0000),
            Err(PagingError::NotMapped {
                vaddr: 0x80_0000_0000,
                level: 4
            })
        );
    }

    #[test]
    fn ranges_are_translated_page_by_page() {
        let mem = memory_with_tables();
        let root = GuestPhysAddr::new(ROOT);
        let pieces = translate_range(&mem, root, GuestVirtAddr::new(0x5ff0), 0x20).unwrap();
        assert_eq!(
            pieces,
            vec![
                (GuestPhysAddr::new(0x9ff0), 0x10),
                (GuestPhysAddr::new(0x7000), 0x10)
            ]
        );
        assert!(translate_range(&mem, root, GuestVirtAddr::new(0x6ff0), 0x20).is_err());
        assert!(translate_range(&mem, root, GuestVirtAddr::new(u64::MAX - 4), 0x20).is_err());
        assert_eq!(
            translate_range(&mem, root, GuestVirtAddr::new(0x5000), 0),
            Ok(vec![])
        );
    }

    #[test]
    fn table_pointers_outside_ram_are_errors() {
        let mem = memory_with_tables();
        assert!(matches!(
            virt_to_phys(&mem, GuestPhysAddr::new(0x7fff_f000), GuestVirtAddr::new(0)),
            Err(PagingError::OutsideRam { .. })
        ));
    }
}
