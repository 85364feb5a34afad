//! Per-architecture machine set-up. Each architecture module exports the same names (memory
//! layout, page tables, initial register state), so the VM code reads the same on every arch.

pub mod aarch64;
pub mod layout_rules;
pub mod x86_64;

use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::mem::{GuestMemory, MemoryError};

/// Size of the smallest page on every supported architecture.
const PAGE_SIZE: u64 = 0x1000;

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
