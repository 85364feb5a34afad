//! x86_64 4-level page tables: the host-side walks that translate guest-virtual addresses and the
//! builder of the boot identity map.
//!
//! [`PageTables`] (the host's view: present or not) and [`CheckedPageTables`] (as the guest's CPU
//! would for one kind of access, with its permission checks) are the walkers through which the
//! guest-virtual door `crate::mem::virt` reaches x86_64 guest memory. The walk trusts nothing it
//! reads: every table pointer and every resulting address is checked against guest RAM through
//! [`GuestMemory`], and non-present entries end the walk with an error.
//!
//! The builder ([`build_identity_map`]) writes the boot page tables: an identity map (VA = GPA)
//! with 2 MiB pages and the recursive PML4 slot 511 that kernels up to 0.10 rely on.

use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use super::layout::{MemoryLayout, align_up};
use crate::mem::virt::PageWalk;
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
    /// The identity map to build would be empty, inverted or overflow.
    #[error(
        "cannot build the identity map: kernel image {kernel_base:#x}..{image_end:#x} is empty \
         or not addressable"
    )]
    InvalidMapRange {
        /// First byte of the kernel image.
        kernel_base: u64,
        /// One past the last byte of the kernel image.
        image_end: u64,
    },
    /// The identity map would reach the recursive PML4 slot.
    #[error(
        "cannot identity-map up to {map_end:#x}: the map would reach the recursive PML4 slot at \
         {limit:#x}"
    )]
    MapTooLarge {
        /// End (exclusive) of the requested map.
        map_end: u64,
        /// First address covered by PML4 entry 511.
        limit: u64,
    },
    /// The page-table frame area is used up.
    #[error(
        "page-table frame area {area_start:#x}..{area_end:#x} is too small to identity-map up to \
         {map_end:#x}"
    )]
    TableAreaExhausted {
        /// First frame of the area.
        area_start: u64,
        /// End (exclusive) of the area.
        area_end: u64,
        /// End (exclusive) of the requested map.
        map_end: u64,
    },
    /// A page table could not be written to guest memory.
    #[error("cannot write the page table at guest address {address:#x}: {source}")]
    TableWrite {
        /// Guest-physical address of the table.
        address: u64,
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

/// PTE bit 2: user-mode accesses allowed.
pub const PTE_USER: u64 = 1 << 2;
/// PTE bit 63: instruction fetches forbidden (with EFER.NXE).
pub const PTE_NO_EXECUTE: u64 = 1 << 63;

/// What a guest memory access does, for the permission checks of [`virt_to_phys_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

pub use crate::arch::x86_64::emulate::fault::{
    PF_FETCH, PF_PROTECTION, PF_RESERVED, PF_USER, PF_WRITE, PageFault, PagingMode,
};

/// Why a permission-checked translation failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckedTranslateError {
    /// The guest's CPU would raise a page fault: the guest must see it.
    #[error("page fault at {:#x} (error code {:#x})", .0.address, .0.error_code)]
    PageFault(PageFault),
    /// The walk itself failed (non-canonical address, tables or pages outside RAM): no fault
    /// the guest could handle.
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// Translates one guest-virtual address like [`virt_to_phys`], but as the guest's CPU would for
/// an `access` in `mode`: a non-present entry, a reserved bit, or a permission the combined
/// entries do not grant (write to read-only with CR0.WP or at CPL 3, user access to supervisor
/// page, fetch from a no-execute page, SMEP/SMAP) is the [`PageFault`] the CPU would raise.
/// Accessed and dirty bits are not updated.
pub fn virt_to_phys_checked(
    mem: &GuestMemory,
    root: GuestPhysAddr,
    vaddr: GuestVirtAddr,
    access: AccessKind,
    mode: PagingMode,
) -> Result<GuestPhysAddr, CheckedTranslateError> {
    let va = vaddr.as_u64();
    if !is_canonical(va) {
        return Err(PagingError::NonCanonical(va).into());
    }
    let mut error_code = match access {
        AccessKind::Read => 0,
        AccessKind::Write => PF_WRITE,
        AccessKind::Fetch => PF_FETCH,
    };
    if mode.user {
        error_code |= PF_USER;
    }
    let fault = |error_code| {
        Err(CheckedTranslateError::PageFault(PageFault {
            address: va,
            error_code,
        }))
    };
    let (mut writable, mut user, mut executable) = (true, true, true);
    let mut table = root.as_u64() & PTE_ADDRESS_MASK;
    for level in (1..=4u8).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let index = (va >> shift) & 0x1ff;
        let entry: u64 = mem
            .read_obj(GuestPhysAddr::new(table + index * 8))
            .map_err(|source| PagingError::OutsideRam { vaddr: va, source })?;
        if entry & PTE_PRESENT == 0 {
            return fault(error_code);
        }
        let reserved = (entry & PTE_NO_EXECUTE != 0 && !mode.no_execute)
            || (level == 4 && entry & PTE_HUGE != 0);
        if reserved {
            return fault(error_code | PF_PROTECTION | PF_RESERVED);
        }
        writable &= entry & PTE_WRITABLE != 0;
        user &= entry & PTE_USER != 0;
        executable &= entry & PTE_NO_EXECUTE == 0;
        let frame = entry & PTE_ADDRESS_MASK;
        let is_leaf = level == 1 || ((level == 2 || level == 3) && entry & PTE_HUGE != 0);
        if !is_leaf {
            table = frame;
            continue;
        }
        // A user access needs the user bit on every level; with SMAP a supervisor data access
        // to a user page needs RFLAGS.AC; a write needs the writable bit on every level unless
        // it is a supervisor write with CR0.WP clear.
        let user_denied = mode.user && !user;
        let smap_denied = !mode.user && user && mode.smap && !mode.alignment_check;
        let read_only = !writable && (mode.user || mode.write_protect);
        let denied = match access {
            AccessKind::Read => user_denied || smap_denied,
            AccessKind::Write => user_denied || smap_denied || read_only,
            AccessKind::Fetch => {
                user_denied || (mode.no_execute && !executable) || (!mode.user && user && mode.smep)
            }
        };
        if denied {
            return fault(error_code | PF_PROTECTION);
        }
        let page_mask = (1u64 << shift) - 1;
        let physical = (frame & !page_mask) | (va & page_mask);
        mem.checked_range(GuestPhysAddr::new(physical), 1)
            .map_err(|source| PagingError::OutsideRam { vaddr: va, source })?;
        return Ok(GuestPhysAddr::new(physical));
    }
    unreachable!("level 1 entries are always leaves")
}

/// The 4-level page tables rooted at CR3, walked as the host sees them: every present mapping
/// translates, whatever its permissions ([`virt_to_phys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTables {
    root: GuestPhysAddr,
}

impl PageTables {
    /// The tables rooted at `root` (CR3).
    pub fn new(root: GuestPhysAddr) -> Self {
        Self { root }
    }
}

impl PageWalk for PageTables {
    const PAGE_SIZE: u64 = PAGE_SIZE;
    type Error = PagingError;

    fn translate(
        &self,
        mem: &GuestMemory,
        vaddr: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, PagingError> {
        virt_to_phys(mem, self.root, vaddr)
    }
}

/// The 4-level page tables rooted at CR3, walked as the guest's CPU would for one kind of access
/// in one paging mode ([`virt_to_phys_checked`]): a page it would refuse is its page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedPageTables {
    root: GuestPhysAddr,
    access: AccessKind,
    mode: PagingMode,
}

impl CheckedPageTables {
    /// The tables rooted at `root` (CR3), for an `access` in `mode`.
    pub fn new(root: GuestPhysAddr, access: AccessKind, mode: PagingMode) -> Self {
        Self { root, access, mode }
    }
}

impl PageWalk for CheckedPageTables {
    const PAGE_SIZE: u64 = PAGE_SIZE;
    type Error = CheckedTranslateError;

    fn translate(
        &self,
        mem: &GuestMemory,
        vaddr: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, CheckedTranslateError> {
        virt_to_phys_checked(mem, self.root, vaddr, self.access, self.mode)
    }
}

#[cfg(test)]
mod walk_tests {
    use super::*;
    use crate::mem::virt::{GuestVirtMemory, Piece, VirtError};

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
        let door = GuestVirtMemory::new(&mem, PageTables::new(GuestPhysAddr::new(ROOT)));
        let range = |va: u64, len| door.pieces(GuestVirtAddr::new(va), len).complete();
        let piece = |pa: u64, len| Piece::new(GuestPhysAddr::new(pa), len);
        assert_eq!(
            range(0x5ff0, 0x20),
            Ok(vec![piece(0x9ff0, 0x10), piece(0x7000, 0x10)])
        );
        // The 4 KiB pieces of a 2 MiB page are physically adjacent.
        assert_eq!(range(0x20_0ff0, 0x20), Ok(vec![piece(0x40_0ff0, 0x20)]));
        assert_eq!(
            range(0x6ff0, 0x20),
            Err(VirtError::Walk(PagingError::NotMapped {
                vaddr: 0x7000,
                level: 1
            }))
        );
        assert_eq!(
            range(u64::MAX - 4, 0x20),
            Err(VirtError::Walk(PagingError::NotMapped {
                vaddr: u64::MAX - 4,
                level: 4
            }))
        );
        assert_eq!(range(0x5000, 0), Ok(vec![]));
    }

    /// PML4 → PDPT → PD → PT at 0x1000/0x2000/0x3000/0x4000 with the given flags on the upper
    /// levels and on PT[5] (→ frame 0x9000); PT[6] not present.
    fn memory_with_flags(upper: u64, leaf: u64) -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 << 20).unwrap();
        let w = |at: u64, v: u64| mem.write_obj(GuestPhysAddr::new(at), &v).unwrap();
        w(0x1000, 0x2000 | PTE_PRESENT | upper);
        w(0x2000, 0x3000 | PTE_PRESENT | upper);
        w(0x3000, 0x4000 | PTE_PRESENT | upper);
        w(0x4000 + 5 * 8, 0x9000 | PTE_PRESENT | leaf);
        mem
    }

    fn check(mem: &GuestMemory, va: u64, access: AccessKind, mode: PagingMode) -> Result<u64, u32> {
        match virt_to_phys_checked(
            mem,
            GuestPhysAddr::new(ROOT),
            GuestVirtAddr::new(va),
            access,
            mode,
        ) {
            Ok(pa) => Ok(pa.as_u64()),
            Err(CheckedTranslateError::PageFault(fault)) => {
                assert_eq!(fault.address, va);
                Err(fault.error_code)
            }
            Err(other) => panic!("{other}"),
        }
    }

    const KERNEL: PagingMode = PagingMode {
        user: false,
        write_protect: true,
        no_execute: true,
        smep: false,
        smap: false,
        alignment_check: false,
    };

    #[test]
    fn supervisor_writes_to_read_only_pages_fault_only_with_cr0_wp() {
        let mem = memory_with_flags(PTE_WRITABLE, 0);
        assert_eq!(check(&mem, 0x5010, AccessKind::Read, KERNEL), Ok(0x9010));
        assert_eq!(
            check(&mem, 0x5010, AccessKind::Write, KERNEL),
            Err(PF_PROTECTION | PF_WRITE)
        );
        let no_wp = PagingMode {
            write_protect: false,
            ..KERNEL
        };
        assert_eq!(check(&mem, 0x5010, AccessKind::Write, no_wp), Ok(0x9010));
        // A read-only upper level makes the whole subtree read-only.
        let mem = memory_with_flags(0, PTE_WRITABLE);
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Write, KERNEL),
            Err(PF_PROTECTION | PF_WRITE)
        );
    }

    #[test]
    fn not_present_pages_fault_without_the_protection_bit() {
        let mem = memory_with_flags(PTE_WRITABLE, PTE_WRITABLE);
        assert_eq!(
            check(&mem, 0x6000, AccessKind::Write, KERNEL),
            Err(PF_WRITE)
        );
        assert_eq!(
            check(&mem, 0x6000, AccessKind::Fetch, KERNEL),
            Err(PF_FETCH)
        );
        assert_eq!(check(&mem, 0x6000, AccessKind::Read, KERNEL), Err(0));
    }

    #[test]
    fn user_mode_needs_the_user_bit_on_every_level() {
        let user = PagingMode {
            user: true,
            ..KERNEL
        };
        let mem = memory_with_flags(PTE_WRITABLE | PTE_USER, PTE_WRITABLE | PTE_USER);
        assert_eq!(check(&mem, 0x5000, AccessKind::Write, user), Ok(0x9000));
        let mem = memory_with_flags(PTE_WRITABLE, PTE_WRITABLE | PTE_USER);
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Read, user),
            Err(PF_PROTECTION | PF_USER)
        );
        // User writes respect read-only pages even without CR0.WP.
        let mem = memory_with_flags(PTE_WRITABLE | PTE_USER, PTE_USER);
        let user_no_wp = PagingMode {
            write_protect: false,
            ..user
        };
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Write, user_no_wp),
            Err(PF_PROTECTION | PF_WRITE | PF_USER)
        );
    }

    #[test]
    fn fetches_respect_nx_and_smep_and_data_respects_smap() {
        let mem = memory_with_flags(PTE_WRITABLE, PTE_WRITABLE | PTE_NO_EXECUTE);
        assert_eq!(check(&mem, 0x5000, AccessKind::Read, KERNEL), Ok(0x9000));
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Fetch, KERNEL),
            Err(PF_PROTECTION | PF_FETCH)
        );
        // Without EFER.NXE bit 63 is reserved.
        let no_nx = PagingMode {
            no_execute: false,
            ..KERNEL
        };
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Read, no_nx),
            Err(PF_PROTECTION | PF_RESERVED)
        );
        let mem = memory_with_flags(PTE_WRITABLE | PTE_USER, PTE_WRITABLE | PTE_USER);
        let smep = PagingMode {
            smep: true,
            ..KERNEL
        };
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Fetch, smep),
            Err(PF_PROTECTION | PF_FETCH)
        );
        let smap = PagingMode {
            smap: true,
            ..KERNEL
        };
        assert_eq!(
            check(&mem, 0x5000, AccessKind::Write, smap),
            Err(PF_PROTECTION | PF_WRITE)
        );
        let smap_ac = PagingMode {
            alignment_check: true,
            ..smap
        };
        assert_eq!(check(&mem, 0x5000, AccessKind::Write, smap_ac), Ok(0x9000));
    }

    #[test]
    fn checked_ranges_stop_at_the_first_faulting_page() {
        let mem = memory_with_flags(PTE_WRITABLE, PTE_WRITABLE);
        let door = |root: u64, access| {
            GuestVirtMemory::new(
                &mem,
                CheckedPageTables::new(GuestPhysAddr::new(root), access, KERNEL),
            )
        };
        assert_eq!(
            door(ROOT, AccessKind::Write).check(GuestVirtAddr::new(0x5ff8), 16),
            Err(VirtError::Walk(CheckedTranslateError::PageFault(
                PageFault {
                    address: 0x6000,
                    error_code: PF_WRITE
                }
            )))
        );
        assert!(matches!(
            door(0x7fff_f000, AccessKind::Read).check(GuestVirtAddr::new(0), 1),
            Err(VirtError::Walk(CheckedTranslateError::Paging(
                PagingError::OutsideRam { .. }
            )))
        ));
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

/// Size of a large page (PD leaf).
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Span of one PD (512 large pages).
const PD_SPAN: u64 = 1 << 30;
/// Span of one PDPT (512 PDs).
const PDPT_SPAN: u64 = 1 << 39;
/// Entries per table.
const ENTRIES: usize = 512;
/// The PML4 slot that points back at the PML4 itself.
pub const RECURSIVE_SLOT: usize = 511;
/// Flags of upper-level entries: present, writable.
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE;
/// Flags of 2 MiB leaves: present, writable, page size (0x83).
const LARGE_PAGE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;

/// Index into the table at the level whose entries span `1 << shift` bytes.
fn table_index(address: u64, shift: u32) -> usize {
    // Masked to 9 bits, always < 512.
    ((address >> shift) & 0x1ff) as usize
}

/// Hands out zeroed 4 KiB frames from the page-table area, lowest first.
struct FrameAllocator {
    next: u64,
    area: std::ops::Range<u64>,
}

impl FrameAllocator {
    fn allocate(&mut self) -> Option<u64> {
        let frame = self.next;
        let end = frame.checked_add(PAGE_SIZE)?;
        if frame < self.area.start || end > self.area.end {
            return None;
        }
        self.next = end;
        Some(frame)
    }
}

/// Writes one 512-entry table to guest memory at `address`.
fn write_table(mem: &GuestMemory, address: u64, table: &[u64; ENTRIES]) -> Result<(), PagingError> {
    let mut bytes = [0u8; PAGE_SIZE as usize];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(table) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write(GuestPhysAddr::new(address), &bytes)
        .map_err(|source| PagingError::TableWrite { address, source })
}

/// End (exclusive, 2 MiB aligned) of the identity map for an image ending at `image_end`.
///
/// The image end is treated inclusively, as upstream does: the 2 MiB page that contains
/// `image_end` is mapped too (so an exactly aligned end maps one extra page). For `legacy`
/// kernels (< 0.10) the map also covers the whole 1 GiB region containing `kernel_base`:
/// kernel 0.6.9 unmaps every page from its rounded image end to the end of that region and
/// panics if one of them is not mapped.
fn identity_map_end(kernel_base: u64, image_end: u64, legacy: bool) -> Option<u64> {
    if image_end < kernel_base {
        return None;
    }
    let image_map_end = (image_end & !(LARGE_PAGE_SIZE - 1)).checked_add(LARGE_PAGE_SIZE)?;
    if legacy {
        let gib_end = (kernel_base & !(PD_SPAN - 1)).checked_add(PD_SPAN)?;
        Some(image_map_end.max(gib_end))
    } else {
        Some(image_map_end)
    }
}

/// Builds the boot page tables for `layout` in guest memory and returns the PML4 address (CR3).
///
/// Identity-maps (VA = GPA) guest memory from the RAM base with 2 MiB pages (leaf flags 0x83,
/// upper levels 0x3) and points PML4 entry 511 back at the PML4 itself (flags 0x3). `legacy`
/// selects the map for images without the GNU ABI-tag note (kernels < 0.10): everything up to
/// the end of the 1 GiB region that contains the kernel base, or up to the image end if that is
/// larger. Otherwise only RAM base ..= `image_end` is mapped (rounded up to 2 MiB). PDPTs and
/// PDs are bump-allocated from the layout's page-table area; running out of it is an error.
pub fn build_identity_map(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    image_end: u64,
    legacy: bool,
) -> Result<GuestPhysAddr, PagingError> {
    let kernel_base = layout.kernel_base();
    let invalid = PagingError::InvalidMapRange {
        kernel_base,
        image_end,
    };
    let map_end = identity_map_end(kernel_base, image_end, legacy).ok_or(invalid)?;
    let limit = RECURSIVE_SLOT as u64 * PDPT_SPAN;
    if map_end > limit {
        return Err(PagingError::MapTooLarge { map_end, limit });
    }
    let area = layout.page_table_frames();
    let exhausted = || PagingError::TableAreaExhausted {
        area_start: area.start,
        area_end: area.end,
        map_end,
    };
    let mut frames = FrameAllocator {
        next: area.start,
        area: area.clone(),
    };
    let pml4_address = layout.pml4().as_u64();
    let mut pml4 = [0u64; ENTRIES];
    pml4[RECURSIVE_SLOT] = pml4_address | TABLE_FLAGS;

    // The RAM base is 2 MiB aligned (it is 0 for v1 guests); align down defensively.
    let mut address = layout.ram_base().as_u64() & !(LARGE_PAGE_SIZE - 1);
    while address < map_end {
        // One PDPT per 512 GiB region.
        let pdpt_address = frames.allocate().ok_or_else(exhausted)?;
        let pdpt_index = table_index(address, 39);
        let pdpt_end = align_up(address + 1, PDPT_SPAN).map_or(map_end, |e| e.min(map_end));
        let mut pdpt = [0u64; ENTRIES];
        while address < pdpt_end {
            // One PD per 1 GiB region.
            let pd_address = frames.allocate().ok_or_else(exhausted)?;
            let pd_index = table_index(address, 30);
            let pd_end = align_up(address + 1, PD_SPAN).map_or(pdpt_end, |e| e.min(pdpt_end));
            let mut pd = [0u64; ENTRIES];
            while address < pd_end {
                pd[table_index(address, 21)] = address | LARGE_PAGE_FLAGS;
                // Cannot overflow: address < map_end <= limit, which is 2 MiB aligned.
                address += LARGE_PAGE_SIZE;
            }
            write_table(mem, pd_address, &pd)?;
            pdpt[pd_index] = pd_address | TABLE_FLAGS;
        }
        write_table(mem, pdpt_address, &pdpt)?;
        pml4[pdpt_index] = pdpt_address | TABLE_FLAGS;
    }
    write_table(mem, pml4_address, &pml4)?;
    Ok(GuestPhysAddr::new(pml4_address))
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use crate::arch::x86_64::layout::PIE_KERNEL_BASE;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn translate(mem: &GuestMemory, root: GuestPhysAddr, va: u64) -> Result<u64, PagingError> {
        virt_to_phys(mem, root, GuestVirtAddr::new(va)).map(GuestPhysAddr::as_u64)
    }

    fn entry(mem: &GuestMemory, at: u64) -> u64 {
        mem.read_obj(GuestPhysAddr::new(at)).unwrap()
    }

    #[test]
    fn legacy_map_covers_the_kernels_gigabyte() {
        let ram = 64 * MIB;
        let mem = GuestMemory::new(GuestPhysAddr::new(0), ram).unwrap();
        let layout = MemoryLayout::new(ram, PIE_KERNEL_BASE..0x30_0000).unwrap();
        let root = build_identity_map(&mem, &layout, 0x30_0000, true).unwrap();
        assert_eq!(root.as_u64(), 0x10000);
        // Kernel, boot info, stack and the last byte of RAM are identity-mapped.
        for va in [0x40000, 0x41234, 0x2000, 0x38000, 0x2f_ffff, ram - 1] {
            assert_eq!(translate(&mem, root, va), Ok(va), "{va:#x}");
        }
        // The last 2 MiB page of the first GiB is mapped (beyond RAM, so the walk reports it as
        // outside RAM rather than unmapped); its PD entry is a 2 MiB leaf.
        assert!(matches!(
            translate(&mem, root, GIB - 1),
            Err(PagingError::OutsideRam { .. })
        ));
        assert_eq!(entry(&mem, 0x12000 + 511 * 8), (GIB - 2 * MIB) | 0x83);
        // Nothing beyond the first GiB.
        assert_eq!(
            translate(&mem, root, GIB),
            Err(PagingError::NotMapped {
                vaddr: GIB,
                level: 3
            })
        );
        // Only one PDPT and one PD were used.
        assert_eq!(entry(&mem, 0x10000), 0x11000 | 0x3);
        assert_eq!(entry(&mem, 0x11000), 0x12000 | 0x3);
        assert_eq!(entry(&mem, 0x12000), 0x83);
        assert_eq!(entry(&mem, 0x11008), 0);
    }

    #[test]
    fn recursive_slot_points_at_the_pml4() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 * MIB).unwrap();
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..0x10_0000).unwrap();
        let root = build_identity_map(&mem, &layout, 0x10_0000, true).unwrap();
        assert_eq!(entry(&mem, 0x10000 + 511 * 8), 0x10000 | 0x3);
        // PML4[511] -> PML4 -> PML4 -> PML4[511] as a 4 KiB leaf: the PML4 itself.
        assert_eq!(translate(&mem, root, 0xFFFF_FFFF_FFFF_F000), Ok(0x10000));
        assert_eq!(
            translate(&mem, root, 0xFFFF_FFFF_FFFF_FFF8),
            Ok(0x10000 + 511 * 8)
        );
    }

    #[test]
    fn modern_map_stops_after_the_image_end_page() {
        let ram = 64 * MIB;
        let mem = GuestMemory::new(GuestPhysAddr::new(0), ram).unwrap();
        let layout = MemoryLayout::new(ram, PIE_KERNEL_BASE..0x30_0000).unwrap();
        let root = build_identity_map(&mem, &layout, 0x30_0000, false).unwrap();
        for va in [0, 0x2000, 0x40000, 0x30_0000, 0x3f_ffff] {
            assert_eq!(translate(&mem, root, va), Ok(va), "{va:#x}");
        }
        assert_eq!(
            translate(&mem, root, 0x40_0000),
            Err(PagingError::NotMapped {
                vaddr: 0x40_0000,
                level: 2
            })
        );
        // An exactly aligned end still maps the page that starts there (inclusive range).
        let layout = MemoryLayout::new(ram, PIE_KERNEL_BASE..0x40_0000).unwrap();
        let root = build_identity_map(&mem, &layout, 0x40_0000, false).unwrap();
        assert_eq!(translate(&mem, root, 0x40_0000), Ok(0x40_0000));
    }

    #[test]
    fn legacy_map_extends_to_an_image_past_the_gigabyte() {
        let ram = 0xC000_0000;
        let mem = GuestMemory::new(GuestPhysAddr::new(0), ram).unwrap();
        let image_end = GIB + 5 * MIB;
        let layout = MemoryLayout::new(ram, PIE_KERNEL_BASE..image_end).unwrap();
        let root = build_identity_map(&mem, &layout, image_end, true).unwrap();
        assert_eq!(translate(&mem, root, GIB + 5 * MIB), Ok(GIB + 5 * MIB));
        assert_eq!(
            translate(&mem, root, GIB + 6 * MIB - 1),
            Ok(GIB + 6 * MIB - 1)
        );
        assert!(matches!(
            translate(&mem, root, GIB + 6 * MIB),
            Err(PagingError::NotMapped { level: 2, .. })
        ));
        // Second PD allocated right after the first.
        assert_eq!(entry(&mem, 0x11008), 0x13000 | 0x3);
    }

    #[test]
    fn exhausting_the_frame_area_is_an_error() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 * MIB).unwrap();
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..0x10_0000).unwrap();
        // 0x27000 bytes = 39 frames: one PDPT and 38 PDs map 38 GiB.
        assert!(build_identity_map(&mem, &layout, 38 * GIB - 1, false).is_ok());
        assert_eq!(
            build_identity_map(&mem, &layout, 38 * GIB, false),
            Err(PagingError::TableAreaExhausted {
                area_start: 0x11000,
                area_end: 0x38000,
                map_end: 38 * GIB + 2 * MIB
            })
        );
    }

    #[test]
    fn hostile_image_ends_are_rejected() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 * MIB).unwrap();
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..0x10_0000).unwrap();
        assert!(matches!(
            build_identity_map(&mem, &layout, 0x1000, true),
            Err(PagingError::InvalidMapRange { .. })
        ));
        assert!(matches!(
            build_identity_map(&mem, &layout, u64::MAX, false),
            Err(PagingError::InvalidMapRange { .. })
        ));
        assert!(matches!(
            build_identity_map(&mem, &layout, 511 * (1 << 39), false),
            Err(PagingError::MapTooLarge { .. })
        ));
    }

    #[test]
    fn tables_outside_ram_are_an_error() {
        // RAM smaller than the layout assumes: the PML4 at 0x10000 lies outside it.
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x10000).unwrap();
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..0x10_0000).unwrap();
        assert!(matches!(
            build_identity_map(&mem, &layout, 0x10_0000, true),
            Err(PagingError::TableWrite { .. })
        ));
    }
}
