//! aarch64 stage-1 page tables (4 KiB granule, 48-bit VA, TTBR0 only): the host-side walk that
//! translates guest-virtual addresses ([`PageTables`], the walker through which the guest-virtual
//! door `crate::mem::virt` reaches aarch64 guest memory) and the builder of the boot tables.
//!
//! The walk trusts nothing it reads: every table pointer and every resulting address is checked
//! against guest RAM through [`GuestMemory`]; invalid and reserved descriptors end the walk with
//! an error. It follows 4 KiB pages and also 1 GiB (level 1) and 2 MiB (level 2) blocks, although
//! the boot tables never contain blocks.
//!
//! The builder ([`build_identity_map`]) writes the boot tables of the fact sheet (§7.2): L0\[511\]
//! points back at L0 (the kernel's recursive mapping), VA page 0 maps the hypercall page at G
//! (Normal non-cacheable), and every 4 KiB page of [G, image end) is identity-mapped (Normal
//! write-back). Levels are numbered as the Arm architecture does: 0 (root) … 3 (pages).

use std::ops::Range;

use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use super::layout::{HYPERCALL_WINDOW_SIZE, MemoryLayout, align_up};
use crate::mem::virt::PageWalk;
use crate::mem::{GuestMemory, MemoryError};

/// Descriptor bit 0: valid.
pub const DESC_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0–2) or page (level 3); clear = block at levels 1–2.
pub const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
/// Shift of the AttrIndx field (bits 4:2), an index into MAIR_EL1.
pub const DESC_ATTR_INDEX_SHIFT: u32 = 2;
/// SH = 3: inner shareable (bits 9:8).
pub const DESC_INNER_SHAREABLE: u64 = 3 << 8;
/// Access flag (bit 10).
pub const DESC_ACCESS_FLAG: u64 = 1 << 10;
/// Contiguous hint (bit 52): the entry is one of 16 adjacent, aligned entries with the same
/// attributes and consecutive output addresses.
pub const DESC_CONTIGUOUS: u64 = 1 << 52;
/// Software bit 55: marks the recursive ("self") L0 entry.
pub const DESC_SELF_MARKER: u64 = 1 << 55;
/// Bits 47:12 of a descriptor: the output address.
pub const DESC_ADDRESS_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// MAIR_EL1 index of Normal non-cacheable memory.
pub const MAIR_INDEX_NORMAL_NC: u64 = 3;
/// MAIR_EL1 index of Normal write-back memory.
pub const MAIR_INDEX_NORMAL: u64 = 4;

/// Flags of table descriptors and of write-back pages (0x713): valid, table/page, AttrIndx 4,
/// inner shareable, access flag.
pub const TABLE_FLAGS: u64 = DESC_VALID
    | DESC_TABLE_OR_PAGE
    | (MAIR_INDEX_NORMAL << DESC_ATTR_INDEX_SHIFT)
    | DESC_INNER_SHAREABLE
    | DESC_ACCESS_FLAG;
/// Flags of identity-mapped pages (0x713; [`DESC_CONTIGUOUS`] is added per 64 KiB group).
pub const PAGE_FLAGS: u64 = TABLE_FLAGS;
/// Flags of the hypercall page (0x70F): AttrIndx 3, Normal non-cacheable.
pub const HYPERCALL_PAGE_FLAGS: u64 = DESC_VALID
    | DESC_TABLE_OR_PAGE
    | (MAIR_INDEX_NORMAL_NC << DESC_ATTR_INDEX_SHIFT)
    | DESC_INNER_SHAREABLE
    | DESC_ACCESS_FLAG;
/// Flags of the recursive L0 entry: table flags plus the software self marker.
pub const SELF_ENTRY_FLAGS: u64 = TABLE_FLAGS | DESC_SELF_MARKER;

const _: () = {
    assert!(TABLE_FLAGS == 0x713);
    assert!(HYPERCALL_PAGE_FLAGS == 0x70F);
};

/// Size of a page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Number of VA bits translated through TTBR0_EL1 (T0SZ = 16).
pub const VA_BITS: u32 = 48;
/// The L0 slot that points back at the L0 table itself.
pub const RECURSIVE_SLOT: usize = 511;
/// Entries per table.
const ENTRIES: u64 = 512;
/// Pages covered by one contiguous-hint group (64 KiB).
const CONTIGUOUS_GROUP: u64 = 16 * PAGE_SIZE;

/// Failures of a guest page-table walk or of building the boot tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PagingError {
    /// The address lies outside the 48-bit range that TTBR0_EL1 translates.
    #[error("guest virtual address {0:#x} lies outside the 48-bit TTBR0 range")]
    OutsideTtbr0Range(u64),
    /// A descriptor on the walk is invalid (bit 0 clear).
    #[error("guest virtual address {vaddr:#x} is not mapped (level {level} descriptor invalid)")]
    NotMapped {
        /// The address being translated.
        vaddr: u64,
        /// 0 = root … 3 = page level.
        level: u8,
    },
    /// A descriptor has a reserved encoding (a block at level 0, or type 0b01 at level 3).
    #[error(
        "guest virtual address {vaddr:#x}: level {level} descriptor {descriptor:#x} has a \
         reserved encoding"
    )]
    ReservedDescriptor {
        /// The address being translated.
        vaddr: u64,
        /// 0 = root … 3 = page level.
        level: u8,
        /// The raw descriptor.
        descriptor: u64,
    },
    /// A table or the final address lies outside guest RAM.
    #[error("page-table walk for {vaddr:#x} left guest RAM: {source}")]
    OutsideRam {
        /// The address being translated.
        vaddr: u64,
        /// The failed access.
        source: MemoryError,
    },
    /// The map to build would be empty, inverted or overflow.
    #[error(
        "cannot build the boot page tables: kernel image {kernel_base:#x}..{image_end:#x} is \
         empty or not addressable"
    )]
    InvalidMapRange {
        /// First byte of the kernel image.
        kernel_base: u64,
        /// One past the last byte of the kernel image.
        image_end: u64,
    },
    /// The identity map would reach the recursive L0 slot.
    #[error(
        "cannot identity-map up to {map_end:#x}: the map would reach the recursive L0 slot at \
         {limit:#x}"
    )]
    MapTooLarge {
        /// End (exclusive) of the requested map.
        map_end: u64,
        /// First address covered by L0 entry 511.
        limit: u64,
    },
    /// The page-table frame area is used up.
    #[error(
        "page-table frame area {area_start:#x}..{area_end:#x} is too small to map 4 KiB pages up \
         to {map_end:#x} (each 2 MiB of kernel image needs one 4 KiB table)"
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

/// Index into the table of `level` (0 … 3) for `address`.
fn table_index(address: u64, level: u8) -> u64 {
    (address >> level_shift(level)) & (ENTRIES - 1)
}

/// log2 of the span of one entry at `level`: 39, 30, 21, 12.
fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - u32::from(level.min(3)))
}

/// Translates one guest-virtual address to a guest-physical address by walking the 4-level
/// tables rooted at `ttbr0` (TTBR0_EL1; the ASID in bits 63:48 and CnP are ignored), honouring
/// 1 GiB and 2 MiB blocks.
pub fn virt_to_phys(
    mem: &GuestMemory,
    ttbr0: GuestPhysAddr,
    vaddr: GuestVirtAddr,
) -> Result<GuestPhysAddr, PagingError> {
    let va = vaddr.as_u64();
    if va >> VA_BITS != 0 {
        return Err(PagingError::OutsideTtbr0Range(va));
    }
    let outside = |source| PagingError::OutsideRam { vaddr: va, source };
    let mut table = ttbr0.as_u64() & DESC_ADDRESS_MASK;
    for level in 0..=3u8 {
        // Cannot overflow: table < 2^48 and the index is below 512.
        let entry_address = GuestPhysAddr::new(table + table_index(va, level) * 8);
        let descriptor: u64 = mem.read_obj(entry_address).map_err(outside)?;
        if descriptor & DESC_VALID == 0 {
            return Err(PagingError::NotMapped { vaddr: va, level });
        }
        // Levels 0–2: table; levels 1–2: block; level 3: page. A block at level 0 and type
        // 0b01 at level 3 are reserved.
        let is_leaf = match (level, descriptor & DESC_TABLE_OR_PAGE != 0) {
            (3, true) | (1 | 2, false) => true,
            (0..=2, true) => false,
            _ => {
                return Err(PagingError::ReservedDescriptor {
                    vaddr: va,
                    level,
                    descriptor,
                });
            }
        };
        if is_leaf {
            let page_mask = (1u64 << level_shift(level)) - 1;
            let physical = (descriptor & DESC_ADDRESS_MASK & !page_mask) | (va & page_mask);
            mem.checked_range(GuestPhysAddr::new(physical), 1)
                .map_err(outside)?;
            return Ok(GuestPhysAddr::new(physical));
        }
        table = descriptor & DESC_ADDRESS_MASK;
    }
    // Level 3 either returns a leaf or a reserved-descriptor error above.
    Err(PagingError::NotMapped {
        vaddr: va,
        level: 3,
    })
}

/// The stage-1 tables rooted at TTBR0_EL1, walked as the host sees them ([`virt_to_phys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTables {
    ttbr0: GuestPhysAddr,
}

impl PageTables {
    /// The tables rooted at `ttbr0` (TTBR0_EL1).
    pub fn new(ttbr0: GuestPhysAddr) -> Self {
        Self { ttbr0 }
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
        virt_to_phys(mem, self.ttbr0, vaddr)
    }
}

/// Hands out zeroed 4 KiB frames from the page-table area, lowest first.
struct FrameAllocator<'a> {
    mem: &'a GuestMemory,
    next: u64,
    area: Range<u64>,
    map_end: u64,
}

impl FrameAllocator<'_> {
    fn allocate(&mut self) -> Result<u64, PagingError> {
        let frame = self.next;
        match frame.checked_add(PAGE_SIZE) {
            Some(end) if frame >= self.area.start && end <= self.area.end => {
                zero_table(self.mem, frame)?;
                self.next = end;
                Ok(frame)
            }
            _ => Err(PagingError::TableAreaExhausted {
                area_start: self.area.start,
                area_end: self.area.end,
                map_end: self.map_end,
            }),
        }
    }
}

fn zero_table(mem: &GuestMemory, address: u64) -> Result<(), PagingError> {
    mem.zero(GuestPhysAddr::new(address), PAGE_SIZE)
        .map_err(|source| PagingError::TableWrite { address, source })
}

fn write_descriptor(mem: &GuestMemory, address: u64, descriptor: u64) -> Result<(), PagingError> {
    mem.write_obj(GuestPhysAddr::new(address), &descriptor)
        .map_err(|source| PagingError::TableWrite { address, source })
}

fn read_descriptor(mem: &GuestMemory, address: u64) -> Result<u64, PagingError> {
    mem.read_obj(GuestPhysAddr::new(address))
        .map_err(|source| PagingError::TableWrite { address, source })
}

/// Returns the level-3 table that maps `va`, creating the missing tables on the way.
fn level3_table(
    mem: &GuestMemory,
    root: u64,
    frames: &mut FrameAllocator<'_>,
    va: u64,
) -> Result<u64, PagingError> {
    let mut table = root;
    for level in 0..=2u8 {
        // Cannot overflow: tables lie in the layout's page-table area, far below 2^63.
        let slot = table + table_index(va, level) * 8;
        let descriptor = read_descriptor(mem, slot)?;
        table = if descriptor & DESC_VALID == 0 {
            let frame = frames.allocate()?;
            write_descriptor(mem, slot, frame | TABLE_FLAGS)?;
            frame
        } else {
            // Only the builder wrote this table, and it writes table descriptors only.
            descriptor & DESC_ADDRESS_MASK
        };
    }
    Ok(table)
}

/// Builds the boot page tables for `layout` in guest memory and returns the L0 address (the
/// value for TTBR0_EL1).
///
/// * L0\[511\] = L0 | 0x713 | bit 55 (recursive self entry);
/// * VA 0x0–0x3FFF → PA G … G + 0x3FFF with flags 0x70F (the hypercall window, Normal
///   non-cacheable: v1 addresses in its first page, v2/v3 addresses in its second);
/// * every 4 KiB page of [G, `image_end`) (end rounded up to 4 KiB) → itself with flags 0x713,
///   plus the contiguous hint (bit 52) on each page whose whole aligned 64 KiB group is mapped;
/// * table descriptors 0x713; tables are zeroed and bump-allocated from the layout's
///   page-table area (one level-3 table per 2 MiB), running out of it is an error.
pub fn build_identity_map(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    image_end: u64,
) -> Result<GuestPhysAddr, PagingError> {
    let ram_base = layout.ram_base().as_u64();
    let kernel_base = layout.kernel_base();
    let map_end = align_up(image_end, PAGE_SIZE)
        .filter(|_| image_end > kernel_base)
        .ok_or(PagingError::InvalidMapRange {
            kernel_base,
            image_end,
        })?;
    let limit = (RECURSIVE_SLOT as u64) << level_shift(0);
    if map_end > limit {
        return Err(PagingError::MapTooLarge { map_end, limit });
    }
    let root = layout.page_table_root().as_u64();
    zero_table(mem, root)?;
    write_descriptor(
        mem,
        root + RECURSIVE_SLOT as u64 * 8,
        root | SELF_ENTRY_FLAGS,
    )?;
    let area = layout.page_table_frames();
    let mut frames = FrameAllocator {
        mem,
        next: area.start,
        area,
        map_end,
    };

    // The RAM base is 2 MiB aligned; align down defensively.
    let mut va = ram_base & !(PAGE_SIZE - 1);
    while va < map_end {
        let table = level3_table(mem, root, &mut frames, va)?;
        // Up to the end of this level-3 table's 2 MiB, or the end of the map.
        let chunk_end = align_up(va + 1, ENTRIES * PAGE_SIZE).map_or(map_end, |e| e.min(map_end));
        while va < chunk_end {
            let group_start = va & !(CONTIGUOUS_GROUP - 1);
            let whole_group = group_start >= ram_base
                && group_start
                    .checked_add(CONTIGUOUS_GROUP)
                    .is_some_and(|end| end <= map_end);
            let hint = if whole_group { DESC_CONTIGUOUS } else { 0 };
            write_descriptor(mem, table + table_index(va, 3) * 8, va | PAGE_FLAGS | hint)?;
            // Cannot overflow: va < map_end <= limit.
            va += PAGE_SIZE;
        }
    }

    // Mapped last, so that it wins should G ever be 0: the whole 16 KiB trap window (v1
    // addresses 0x400 … 0x880 lie in page 0, v2/v3 addresses 0x1010 … 0x1210 in page 1).
    let table = level3_table(mem, root, &mut frames, 0)?;
    for page in 0..HYPERCALL_WINDOW_SIZE / PAGE_SIZE {
        write_descriptor(
            mem,
            table + page * 8,
            (ram_base + page * PAGE_SIZE) | HYPERCALL_PAGE_FLAGS,
        )?;
    }
    Ok(GuestPhysAddr::new(root))
}

#[cfg(test)]
mod walk_tests {
    use super::*;
    use crate::mem::virt::{GuestVirtMemory, Piece, VirtError};

    const G: u64 = 0x1000_0000;

    /// RAM G .. G + 16 MiB; L0 at G + 0x1000, L1 at +0x2000, L2 at +0x3000, L3 at +0x4000.
    fn memory_with_tables() -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(G), 16 << 20).unwrap();
        let w = |at: u64, v: u64| mem.write_obj(GuestPhysAddr::new(G + at), &v).unwrap();
        w(0x1000, (G + 0x2000) | TABLE_FLAGS);
        // L0[1]: a block descriptor, reserved at level 0.
        w(0x1008, 0x0000_0001);
        w(0x2000, (G + 0x3000) | TABLE_FLAGS);
        // L1[1]: 1 GiB block at PA 0 (VA 1 GiB + x -> PA x).
        w(0x2008, DESC_VALID | DESC_ACCESS_FLAG);
        // L2[0] -> L3; L2[1]: 2 MiB block at G + 2 MiB; L2[2]: 2 MiB block far outside RAM.
        w(0x3000, (G + 0x4000) | TABLE_FLAGS);
        w(0x3008, (G + 0x20_0000) | DESC_VALID);
        w(0x3010, 0x10_0000_0000 | DESC_VALID);
        // L2[3] -> a table outside RAM.
        w(0x3018, 0x7fff_f000 | TABLE_FLAGS);
        // L3[5] -> G + 0x9000, L3[6] -> G + 0x7000, L3[7] invalid, L3[8] reserved type 0b01.
        w(0x4000 + 5 * 8, (G + 0x9000) | PAGE_FLAGS);
        w(0x4000 + 6 * 8, (G + 0x7000) | PAGE_FLAGS);
        w(0x4000 + 8 * 8, (G + 0x8000) | DESC_VALID);
        mem
    }

    fn t(mem: &GuestMemory, va: u64) -> Result<u64, PagingError> {
        virt_to_phys(mem, GuestPhysAddr::new(G + 0x1000), GuestVirtAddr::new(va))
            .map(GuestPhysAddr::as_u64)
    }

    #[test]
    fn walks_pages_and_blocks() {
        let mem = memory_with_tables();
        assert_eq!(t(&mem, 0x5123), Ok(G + 0x9123));
        assert_eq!(t(&mem, 0x20_0042), Ok(G + 0x20_0042));
        assert_eq!(t(&mem, (1 << 30) + G + 0x123), Ok(G + 0x123));
        // ASID and CnP bits of TTBR0 are ignored.
        let ttbr0 = GuestPhysAddr::new((0xABCD << 48) | (G + 0x1000) | 1);
        assert_eq!(
            virt_to_phys(&mem, ttbr0, GuestVirtAddr::new(0x5123)),
            Ok(GuestPhysAddr::new(G + 0x9123))
        );
    }

    #[test]
    fn invalid_and_reserved_descriptors_are_errors() {
        let mem = memory_with_tables();
        assert_eq!(
            t(&mem, 0x7000),
            Err(PagingError::NotMapped {
                vaddr: 0x7000,
                level: 3
            })
        );
        assert_eq!(
            t(&mem, 0x8000),
            Err(PagingError::ReservedDescriptor {
                vaddr: 0x8000,
                level: 3,
                descriptor: (G + 0x8000) | DESC_VALID
            })
        );
        assert!(matches!(
            t(&mem, 1 << 39),
            Err(PagingError::ReservedDescriptor { level: 0, .. })
        ));
        assert_eq!(
            t(&mem, 2 << 39),
            Err(PagingError::NotMapped {
                vaddr: 2 << 39,
                level: 0
            })
        );
        assert_eq!(
            t(&mem, 1 << 48),
            Err(PagingError::OutsideTtbr0Range(1 << 48))
        );
        assert!(t(&mem, u64::MAX).is_err());
    }

    #[test]
    fn addresses_outside_ram_are_errors() {
        let mem = memory_with_tables();
        // Block result outside RAM, a table pointer outside RAM, a 1 GiB block result below RAM.
        assert!(matches!(
            t(&mem, 0x40_0000),
            Err(PagingError::OutsideRam { .. })
        ));
        assert!(matches!(
            t(&mem, 0x60_0000),
            Err(PagingError::OutsideRam { .. })
        ));
        assert!(matches!(
            t(&mem, 1 << 30),
            Err(PagingError::OutsideRam { .. })
        ));
        assert!(matches!(
            virt_to_phys(&mem, GuestPhysAddr::new(0), GuestVirtAddr::new(0)),
            Err(PagingError::OutsideRam { .. })
        ));
    }

    #[test]
    fn ranges_are_translated_page_by_page() {
        let mem = memory_with_tables();
        let door = GuestVirtMemory::new(&mem, PageTables::new(GuestPhysAddr::new(G + 0x1000)));
        let range = |va: u64, len| door.pieces(GuestVirtAddr::new(va), len).complete();
        let piece = |pa: u64, len| Piece::new(GuestPhysAddr::new(pa), len);
        assert_eq!(
            range(0x5ff0, 0x20),
            Ok(vec![piece(G + 0x9ff0, 0x10), piece(G + 0x7000, 0x10)])
        );
        assert_eq!(range(0x20_0ff0, 0x20), Ok(vec![piece(G + 0x20_0ff0, 0x20)]));
        assert_eq!(
            range(0x6ff0, 0x20),
            Err(VirtError::Walk(PagingError::NotMapped {
                vaddr: 0x7000,
                level: 3
            }))
        );
        assert_eq!(
            range(u64::MAX - 4, 0x20),
            Err(VirtError::Walk(PagingError::OutsideTtbr0Range(
                u64::MAX - 4
            )))
        );
        assert_eq!(range(0x5000, 0), Ok(vec![]));
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use crate::arch::aarch64::layout::{PIE_KERNEL_BASE, RAM_BASE as G};

    const MIB: u64 = 1 << 20;

    fn setup(ram: u64, image_end: u64) -> (GuestMemory, MemoryLayout) {
        let mem = GuestMemory::new(GuestPhysAddr::new(G), ram).unwrap();
        let layout = MemoryLayout::new(ram, PIE_KERNEL_BASE..image_end).unwrap();
        (mem, layout)
    }

    fn translate(mem: &GuestMemory, root: GuestPhysAddr, va: u64) -> Result<u64, PagingError> {
        virt_to_phys(mem, root, GuestVirtAddr::new(va)).map(GuestPhysAddr::as_u64)
    }

    fn entry(mem: &GuestMemory, at: u64) -> u64 {
        mem.read_obj(GuestPhysAddr::new(at)).unwrap()
    }

    #[test]
    fn boot_tables_map_what_the_kernel_needs() {
        let image_end = G + 0x30_0000;
        let (mem, layout) = setup(16 * MIB, image_end);
        let root = build_identity_map(&mem, &layout, image_end).unwrap();
        assert_eq!(root, layout.page_table_root());
        // Entry point, boot info, FDT, stack, last image byte: identity-mapped.
        for va in [
            G + 0x4_1234,
            layout.boot_info().as_u64(),
            layout.fdt().as_u64(),
            layout.boot_stack_bottom(),
            image_end - 1,
        ] {
            assert_eq!(translate(&mem, root, va), Ok(va), "{va:#x}");
        }
        // The hypercall window: v1 addresses 0x400 … 0x880 and v2/v3 addresses 0x1010 …
        // 0x1210 hit G + addr; the window ends after 16 KiB.
        assert_eq!(translate(&mem, root, 0x400), Ok(G + 0x400));
        assert_eq!(translate(&mem, root, 0x880), Ok(G + 0x880));
        assert_eq!(translate(&mem, root, 0x1010), Ok(G + 0x1010));
        assert_eq!(translate(&mem, root, 0x1210), Ok(G + 0x1210));
        assert_eq!(
            translate(&mem, root, 0x4000),
            Err(PagingError::NotMapped {
                vaddr: 0x4000,
                level: 3
            })
        );
        assert_eq!(
            translate(&mem, root, image_end),
            Err(PagingError::NotMapped {
                vaddr: image_end,
                level: 3
            })
        );
        assert!(matches!(
            translate(&mem, root, G + 0x40_0000),
            Err(PagingError::NotMapped { level: 2, .. })
        ));
        assert!(matches!(
            translate(&mem, root, G - 0x1000),
            Err(PagingError::NotMapped { level: 2, .. })
        ));
    }

    #[test]
    fn descriptors_carry_the_sheet_flags() {
        let image_end = G + 0x30_8000;
        let (mem, layout) = setup(16 * MIB, image_end);
        let root = build_identity_map(&mem, &layout, image_end)
            .unwrap()
            .as_u64();
        assert_eq!(root, G + 0x10000);
        assert_eq!(entry(&mem, root + 511 * 8), root | 0x713 | (1 << 55));
        // L0[0] -> L1 (first frame), L1[0] -> L2, L2[128] -> L3 of G … G + 2 MiB.
        let l1 = G + 0x11000;
        assert_eq!(entry(&mem, root), l1 | 0x713);
        let l2 = G + 0x12000;
        assert_eq!(entry(&mem, l1), l2 | 0x713);
        let l3 = G + 0x13000;
        assert_eq!(entry(&mem, l2 + 128 * 8), l3 | 0x713);
        assert_eq!(entry(&mem, l3), G | 0x713 | (1 << 52));
        assert_eq!(
            entry(&mem, l3 + 0x40 * 8),
            (G + 0x40000) | 0x713 | (1 << 52)
        );
        // The second 2 MiB got the next frame; its tail group G + 0x30_0000 … + 0x31_0000 is only
        // half mapped, so it carries no contiguous hint.
        let l3b = G + 0x14000;
        assert_eq!(entry(&mem, l2 + 129 * 8), l3b | 0x713);
        assert_eq!(
            entry(&mem, l3b + 0xff * 8),
            (G + 0x2f_f000) | 0x713 | (1 << 52)
        );
        assert_eq!(entry(&mem, l3b + 0x100 * 8), (G + 0x30_0000) | 0x713);
        assert_eq!(entry(&mem, l3b + 0x107 * 8), (G + 0x30_7000) | 0x713);
        assert_eq!(entry(&mem, l3b + 0x108 * 8), 0);
        // The hypercall page's L3 table is allocated last, under L2[0].
        let hypercall_l3 = G + 0x15000;
        assert_eq!(entry(&mem, l2), hypercall_l3 | 0x713);
        for page in 0..4 {
            assert_eq!(
                entry(&mem, hypercall_l3 + page * 8),
                (G + page * 0x1000) | 0x70F
            );
        }
        assert_eq!(entry(&mem, hypercall_l3 + 4 * 8), 0);
    }

    #[test]
    fn recursive_slot_points_at_l0() {
        let (mem, layout) = setup(16 * MIB, G + 0x10_0000);
        let root = build_identity_map(&mem, &layout, G + 0x10_0000).unwrap();
        // L0[511] four times: the L0 table itself as a 4 KiB page.
        assert_eq!(
            translate(&mem, root, 0x0000_FFFF_FFFF_F000),
            Ok(root.as_u64())
        );
        assert_eq!(
            translate(&mem, root, 0x0000_FFFF_FFFF_FFF8),
            Ok(root.as_u64() + 511 * 8)
        );
    }

    #[test]
    fn rebuilding_over_old_tables_starts_clean() {
        let (mem, layout) = setup(16 * MIB, G + 0x30_0000);
        mem.write(GuestPhysAddr::new(G + 0x10000), &[0xFF; 0x28000])
            .unwrap();
        let root = build_identity_map(&mem, &layout, G + 0x30_0000).unwrap();
        assert!(matches!(
            translate(&mem, root, G + 0x30_0000),
            Err(PagingError::NotMapped { .. })
        ));
        assert_eq!(translate(&mem, root, 0x8), Ok(G + 0x8));
    }

    #[test]
    fn exhausting_the_frame_area_is_an_error() {
        // 39 frames: L1, L2, the hypercall L3 and 36 L3 tables of 2 MiB each = 72 MiB.
        let (mem, layout) = setup(128 * MIB, G + 72 * MIB);
        let root = build_identity_map(&mem, &layout, G + 72 * MIB).unwrap();
        assert_eq!(
            translate(&mem, root, G + 72 * MIB - 1),
            Ok(G + 72 * MIB - 1)
        );
        assert_eq!(translate(&mem, root, 0x540), Ok(G + 0x540));
        let (mem, layout) = setup(128 * MIB, G + 72 * MIB + 1);
        assert_eq!(
            build_identity_map(&mem, &layout, G + 72 * MIB + 1),
            Err(PagingError::TableAreaExhausted {
                area_start: G + 0x11000,
                area_end: G + 0x38000,
                map_end: G + 72 * MIB + 0x1000
            })
        );
        let message = build_identity_map(&mem, &layout, G + 72 * MIB + 1)
            .unwrap_err()
            .to_string();
        assert!(message.contains("2 MiB"), "{message}");
    }

    #[test]
    fn hostile_image_ends_are_rejected() {
        let (mem, layout) = setup(16 * MIB, G + 0x10_0000);
        assert!(matches!(
            build_identity_map(&mem, &layout, G + 0x1000),
            Err(PagingError::InvalidMapRange { .. })
        ));
        assert!(matches!(
            build_identity_map(&mem, &layout, u64::MAX),
            Err(PagingError::InvalidMapRange { .. })
        ));
        assert!(matches!(
            build_identity_map(&mem, &layout, (511 << 39) + 1),
            Err(PagingError::MapTooLarge { .. })
        ));
    }

    #[test]
    fn tables_outside_ram_are_an_error() {
        // RAM smaller than the layout assumes: the L0 table at G + 0x10000 lies outside it.
        let mem = GuestMemory::new(GuestPhysAddr::new(G), 0x10000).unwrap();
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..G + 0x10_0000).unwrap();
        assert!(matches!(
            build_identity_map(&mem, &layout, G + 0x10_0000),
            Err(PagingError::TableWrite { .. })
        ));
    }
}
