//! Guest-physical memory layout of x86_64 guests: where the GDT, boot info, device tree, page
//! tables, boot stack and kernel go, and the rules for the RAM size and the kernel's placement.
//!
//! Interface-v1 guests (Hermit kernels up to 0.13) get their RAM at guest-physical address 0
//! ([`RAM_BASE`], at most 3 GiB, below the 32-bit hole); interface-v2/v3 guests (kernel `main`)
//! at 4 GiB ([`HIGH_RAM_BASE`], up to 64 GiB, so more than 3 GiB of RAM): [`RamPlacement`]. All
//! boot structures live in the first 256 KiB of RAM, below the kernel, where the kernel's memory
//! bookkeeping never hands them out (G = the RAM base):
//!
//! | offset from G      | content                                              |
//! |--------------------|------------------------------------------------------|
//! | 0x1000             | GDT (3 entries)                                      |
//! | 0x2000             | boot info (one page)                                 |
//! | 0x3000 .. 0x10000  | flattened device tree (52 KiB at most)               |
//! | 0x10000            | PML4                                                 |
//! | 0x11000 .. 0x38000 | further page-table frames (bump-allocated)           |
//! | kernel − 0x8000    | boot stack (32 KiB, ends at the kernel base)         |
//! | 0x40000            | kernel base of position-independent images           |

use std::ops::Range;

use uhyve_interface::GuestPhysAddr;

pub use crate::arch::layout_rules::LayoutError;
pub(crate) use crate::arch::layout_rules::align_up;
use crate::arch::layout_rules::{LayoutRules, RamLayout};

/// One mebibyte.
const MIB: u64 = 1 << 20;

/// First guest-physical address of RAM (G) for v1 guests.
pub const RAM_BASE: u64 = 0;
/// First guest-physical address of RAM (G) for v2/v3 guests: 4 GiB.
pub const HIGH_RAM_BASE: u64 = 1 << 32;
/// End (exclusive) of the guest-physical address space v2/v3 guests may use: 64 GiB.
pub const HIGH_RAM_LIMIT: u64 = 64 << 30;
/// Offset of the GDT from G.
pub const GDT_OFFSET: u64 = 0x1000;
/// Offset of the boot info (one page) from G.
pub const BOOT_INFO_OFFSET: u64 = 0x2000;
/// Offset of the flattened device tree from G.
pub const FDT_OFFSET: u64 = 0x3000;
/// Largest device tree that fits between [`FDT_OFFSET`] and [`PML4_OFFSET`] (52 KiB).
pub const FDT_MAX_SIZE: u64 = PML4_OFFSET - FDT_OFFSET;
/// Offset of the PML4 (the root page table, CR3) from G.
pub const PML4_OFFSET: u64 = 0x10000;
/// Offset of the first further page-table frame from G.
pub const PAGE_TABLES_OFFSET: u64 = 0x11000;
/// Offset (exclusive) where the page-table frame area ends.
pub const PAGE_TABLES_END_OFFSET: u64 = 0x38000;
/// Size of the boot stack directly below the kernel base.
pub const BOOT_STACK_SIZE: u64 = 0x8000;
/// Offset of the kernel base of position-independent (ET_DYN) images from G.
pub const PIE_KERNEL_OFFSET: u64 = 0x40000;

/// Guest-physical address of the GDT.
pub const GDT_ADDRESS: u64 = RAM_BASE + GDT_OFFSET;
/// Guest-physical address of the boot info.
pub const BOOT_INFO_ADDRESS: u64 = RAM_BASE + BOOT_INFO_OFFSET;
/// Guest-physical address of the device tree.
pub const FDT_ADDRESS: u64 = RAM_BASE + FDT_OFFSET;
/// Guest-physical address of the PML4.
pub const PML4_ADDRESS: u64 = RAM_BASE + PML4_OFFSET;
/// Guest-physical page-table frame area (excluding the PML4).
pub const PAGE_TABLES: Range<u64> =
    (RAM_BASE + PAGE_TABLES_OFFSET)..(RAM_BASE + PAGE_TABLES_END_OFFSET);
/// Kernel base of position-independent images.
pub const PIE_KERNEL_BASE: u64 = RAM_BASE + PIE_KERNEL_OFFSET;

/// Largest guest RAM for v2/v3 guests: 4 GiB … 64 GiB.
pub const HIGH_MAX_MEMORY: u64 = HIGH_RAM_LIMIT - HIGH_RAM_BASE;

/// Real-mode memory below 1 MiB, where PC firmware keeps its tables: Hermit kernels read
/// 0x9F000..0xA0000 and 0xF0000..0x10_0000 looking for an MP floating pointer (hermit-abi.md
/// §9.1). Where guest RAM does not cover it (RAM moved by ASLR, or v2/v3 RAM at 4 GiB), the KVM
/// backend maps it read-only and zero-filled, so the search finds nothing instead of stopping the
/// VM with a read outside RAM.
pub const LOW_MEMORY: Range<u64> = 0..0x10_0000;

/// Where the network card's BAR 0 lies: in the 32-bit hole above v1 RAM (which ends by 3 GiB).
pub const NET_BAR: u64 = 0xfe00_0000;
/// The network card's legacy interrupt line: the guest's handler runs at vector 0x20 + line
/// (Hermit does not program the I/O APIC on uhyve; the card sends an MSI to that vector).
pub const NET_INTERRUPT_LINE: u8 = 11;

/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 * MIB;
/// Largest guest RAM for v1 guests: RAM must end below the 32-bit hole at 3 GiB.
pub const V1_MAX_MEMORY: u64 = 0xC000_0000;
/// Granularity of the guest RAM size (the identity map uses 2 MiB pages).
pub const MEMORY_GRANULE: u64 = 2 * MIB;
/// Free RAM the kernel needs at least after its 2 MiB-rounded image end (its first heap page).
pub const MIN_FREE_AFTER_IMAGE: u64 = 2 * MIB;

// The boot structures must not overlap, and all of them must lie below the PIE kernel base.
const _: () = {
    assert!(GDT_ADDRESS + 24 <= BOOT_INFO_ADDRESS);
    assert!(BOOT_INFO_ADDRESS + 0x1000 <= FDT_ADDRESS);
    assert!(FDT_ADDRESS + FDT_MAX_SIZE <= PML4_ADDRESS);
    assert!(FDT_MAX_SIZE == 52 * 1024);
    assert!(PML4_ADDRESS + 0x1000 <= PAGE_TABLES.start);
    assert!(PAGE_TABLES.end + BOOT_STACK_SIZE <= PIE_KERNEL_BASE);
    assert!(RAM_BASE.is_multiple_of(MEMORY_GRANULE));
};

/// Where a guest's RAM starts: it follows the interface version of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamPlacement {
    /// At [`RAM_BASE`] (0), at most 3 GiB: interface v1.
    Low,
    /// At [`HIGH_RAM_BASE`] (4 GiB), up to 60 GiB: interface v2 and v3.
    High,
}

impl RamPlacement {
    /// The placement for images speaking `interface_version`.
    pub fn for_interface(interface_version: u32) -> Self {
        if interface_version >= 2 {
            Self::High
        } else {
            Self::Low
        }
    }

    /// The layout rules of this placement.
    pub fn rules(self) -> &'static LayoutRules {
        match self {
            Self::Low => &RULES,
            Self::High => &HIGH_RULES,
        }
    }
}

/// The layout rules of v2/v3 guests: the v1 offsets from G = 4 GiB, up to 60 GiB of RAM.
pub const HIGH_RULES: LayoutRules = LayoutRules {
    ram_base: HIGH_RAM_BASE,
    min_memory: MIN_MEMORY,
    max_memory: HIGH_MAX_MEMORY,
    max_memory_reason: "v2/v3 guests get at most 60 GiB: their RAM lies between 4 GiB and 64 GiB",
    granule: MEMORY_GRANULE,
    page_tables: (HIGH_RAM_BASE + PAGE_TABLES_OFFSET)..(HIGH_RAM_BASE + PAGE_TABLES_END_OFFSET),
    boot_stack_size: BOOT_STACK_SIZE,
    pie_kernel_base: HIGH_RAM_BASE + PIE_KERNEL_OFFSET,
    min_free_after_image: MIN_FREE_AFTER_IMAGE,
    aslr_ram_end: None,
    boot_structures: "GDT, boot info, device tree, page tables and boot stack",
};

/// The layout rules of v1 guests.
pub const RULES: LayoutRules = LayoutRules {
    ram_base: RAM_BASE,
    min_memory: MIN_MEMORY,
    max_memory: V1_MAX_MEMORY,
    max_memory_reason: "v1 guests (Hermit kernels up to 0.13) support at most 3 GiB, because their RAM must stay below the 32-bit hole at 0xc000_0000 that is reserved for the local APIC, the I/O APIC and PCI",
    granule: MEMORY_GRANULE,
    page_tables: PAGE_TABLES,
    boot_stack_size: BOOT_STACK_SIZE,
    pie_kernel_base: PIE_KERNEL_BASE,
    min_free_after_image: MIN_FREE_AFTER_IMAGE,
    aslr_ram_end: None,
    boot_structures: "GDT, boot info, device tree, page tables and boot stack",
};

/// Checks the guest RAM size for a v1 guest: at least [`MIN_MEMORY`], at most
/// [`V1_MAX_MEMORY`], and a multiple of [`MEMORY_GRANULE`].
pub fn check_memory_size(bytes: u64) -> Result<(), LayoutError> {
    RULES.check_memory_size(bytes)
}

/// Lowest address of the 32 KiB boot stack that ends at `kernel_base`. Fails if the stack
/// would reach into the page-table area.
pub fn boot_stack_bottom(kernel_base: u64) -> Result<u64, LayoutError> {
    RULES.boot_stack_bottom(kernel_base)
}

/// Checks where the kernel image lies: at or above [`PIE_KERNEL_BASE`] and ending — rounded up
/// to 2 MiB, plus [`MIN_FREE_AFTER_IMAGE`] of heap — inside guest RAM of `ram_size` bytes.
pub fn check_kernel_placement(image_range: Range<u64>, ram_size: u64) -> Result<(), LayoutError> {
    RULES.check_kernel_placement(image_range, ram_size)
}

/// The checked layout of one v1 guest: RAM `[G, G + size)` with G = [`RAM_BASE`] and the
/// kernel image inside it. Constructing it runs [`check_memory_size`] and
/// [`check_kernel_placement`], so every address it returns lies inside RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    ram: RamLayout,
}

impl std::ops::Deref for MemoryLayout {
    type Target = RamLayout;

    /// The parts every architecture shares: RAM range, kernel image, boot stack.
    fn deref(&self) -> &RamLayout {
        &self.ram
    }
}

impl MemoryLayout {
    /// Checks `ram_size` and the placement of `kernel_image` for a v1 guest (RAM at 0) and
    /// returns the layout.
    pub fn new(ram_size: u64, kernel_image: Range<u64>) -> Result<Self, LayoutError> {
        Self::placed(RamPlacement::Low, ram_size, kernel_image)
    }

    /// [`MemoryLayout::new`] with RAM where `placement` puts it.
    pub fn placed(
        placement: RamPlacement,
        ram_size: u64,
        kernel_image: Range<u64>,
    ) -> Result<Self, LayoutError> {
        Self::with_rules(placement.rules(), ram_size, kernel_image)
    }

    /// [`MemoryLayout::new`] under `rules`: those of a [`RamPlacement`], possibly moved to
    /// another RAM base ([`LayoutRules::moved_to`]).
    pub fn with_rules(
        rules: &LayoutRules,
        ram_size: u64,
        kernel_image: Range<u64>,
    ) -> Result<Self, LayoutError> {
        Ok(Self {
            ram: RamLayout::new(rules, ram_size, kernel_image)?,
        })
    }

    /// G + `offset` (inside RAM: every offset used lies below the checked kernel base).
    fn at(&self, offset: u64) -> GuestPhysAddr {
        GuestPhysAddr::new(self.ram_base().as_u64() + offset)
    }

    /// Address of the GDT.
    pub fn gdt(&self) -> GuestPhysAddr {
        self.at(GDT_OFFSET)
    }

    /// Address of the boot info.
    pub fn boot_info(&self) -> GuestPhysAddr {
        self.at(BOOT_INFO_OFFSET)
    }

    /// Address of the device tree; it may use at most [`FDT_MAX_SIZE`] bytes.
    pub fn fdt(&self) -> GuestPhysAddr {
        self.at(FDT_OFFSET)
    }

    /// Address of the PML4.
    pub fn pml4(&self) -> GuestPhysAddr {
        self.at(PML4_OFFSET)
    }

    /// The area further page-table frames are allocated from.
    pub fn page_table_frames(&self) -> Range<u64> {
        self.at(PAGE_TABLES_OFFSET).as_u64()..self.at(PAGE_TABLES_END_OFFSET).as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn memory_size_rules() {
        assert_eq!(check_memory_size(MIN_MEMORY), Ok(()));
        assert_eq!(check_memory_size(64 * MIB), Ok(()));
        assert_eq!(check_memory_size(V1_MAX_MEMORY), Ok(()));
        assert_eq!(
            check_memory_size(14 * MIB),
            Err(LayoutError::MemoryTooSmall {
                size: 14 * MIB,
                min: MIN_MEMORY
            })
        );
        assert_eq!(
            check_memory_size(0),
            Err(LayoutError::MemoryTooSmall {
                size: 0,
                min: MIN_MEMORY
            })
        );
        assert_eq!(
            check_memory_size(V1_MAX_MEMORY + 2 * MIB),
            Err(LayoutError::MemoryTooLarge {
                size: V1_MAX_MEMORY + 2 * MIB,
                reason: RULES.max_memory_reason,
            })
        );
        assert!(check_memory_size(u64::MAX).is_err());
        assert_eq!(
            check_memory_size(17 * MIB),
            Err(LayoutError::MemoryNotAligned { size: 17 * MIB })
        );
    }

    #[test]
    fn memory_errors_say_what_is_allowed() {
        let small = check_memory_size(MIB).unwrap_err().to_string();
        assert!(small.contains("16 MiB"), "{small}");
        let large = check_memory_size(4 * GIB).unwrap_err().to_string();
        assert!(large.contains("3 GiB") && large.contains("hole"), "{large}");
        let odd = check_memory_size(17 * MIB).unwrap_err().to_string();
        assert!(odd.contains("2 MiB"), "{odd}");
    }

    #[test]
    fn stack_bottom_is_below_the_kernel() {
        assert_eq!(boot_stack_bottom(PIE_KERNEL_BASE), Ok(0x38000));
        assert_eq!(boot_stack_bottom(0x20_0000), Ok(0x1f_8000));
        assert!(matches!(
            boot_stack_bottom(0x3f000),
            Err(LayoutError::StackOverlapsPageTables { .. })
        ));
        assert!(matches!(
            boot_stack_bottom(0x1000),
            Err(LayoutError::StackOverlapsPageTables { bottom: 0, .. })
        ));
    }

    #[test]
    fn kernel_placement_rules() {
        assert_eq!(
            check_kernel_placement(
                Range {
                    start: 0x40000,
                    end: 0x1_0000
                },
                16 * MIB
            ),
            Err(LayoutError::EmptyImage {
                start: 0x40000,
                end: 0x1_0000
            })
        );
        assert_eq!(check_kernel_placement(0x40000..0x20_0000, 16 * MIB), Ok(()));
        // ET_EXEC linked at 0x10000 overlaps the boot structures.
        assert_eq!(
            check_kernel_placement(0x10000..0x20_0000, 64 * MIB),
            Err(LayoutError::KernelTooLow {
                start: 0x10000,
                min: PIE_KERNEL_BASE,
                structures: RULES.boot_structures,
            })
        );
        // Image end 15 MiB + 1 rounds to 16 MiB, plus 2 MiB heap needs 18 MiB.
        assert_eq!(
            check_kernel_placement(0x40000..15 * MIB + 1, 16 * MIB),
            Err(LayoutError::KernelDoesNotFit {
                image_end: 15 * MIB + 1,
                ram_end: 16 * MIB,
                needed: 18 * MIB
            })
        );
        assert_eq!(
            check_kernel_placement(0x40000..15 * MIB + 1, 18 * MIB),
            Ok(())
        );
        assert!(check_kernel_placement(0x40000..u64::MAX, V1_MAX_MEMORY).is_err());
        assert_eq!(
            check_kernel_placement(0x50000..0x50000, 16 * MIB),
            Err(LayoutError::EmptyImage {
                start: 0x50000,
                end: 0x50000
            })
        );
    }

    #[test]
    fn placement_error_names_both_numbers() {
        let message = check_kernel_placement(0x40000..0x100_0000, 16 * MIB)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("0x1000000") && message.contains("0x1200000"),
            "{message}"
        );
    }

    #[test]
    fn layout_addresses() {
        let layout = MemoryLayout::new(64 * MIB, PIE_KERNEL_BASE..0x30_0000).unwrap();
        assert_eq!(layout.ram(), 0..64 * MIB);
        assert_eq!(layout.ram_base().as_u64(), 0);
        assert_eq!(layout.ram_size(), 64 * MIB);
        assert_eq!(layout.kernel_base(), 0x40000);
        assert_eq!(layout.kernel_image(), 0x40000..0x30_0000);
        assert_eq!(layout.gdt().as_u64(), 0x1000);
        assert_eq!(layout.boot_info().as_u64(), 0x2000);
        assert_eq!(layout.fdt().as_u64(), 0x3000);
        assert_eq!(layout.pml4().as_u64(), 0x10000);
        assert_eq!(layout.page_table_frames(), 0x11000..0x38000);
        assert_eq!(layout.boot_stack_bottom(), 0x38000);
        assert!(MemoryLayout::new(64 * MIB + 1, PIE_KERNEL_BASE..0x30_0000).is_err());
        assert!(MemoryLayout::new(64 * MIB, 0..0x30_0000).is_err());
    }

    #[test]
    fn v2_guests_get_ram_from_4_gib_and_more_than_3_gib_of_it() {
        let g = HIGH_RAM_BASE;
        let placement = RamPlacement::for_interface(3);
        assert_eq!(placement, RamPlacement::High);
        assert_eq!(RamPlacement::for_interface(1), RamPlacement::Low);
        let layout = MemoryLayout::placed(placement, 8 * GIB, g + 0x40000..g + 0x30_0000).unwrap();
        assert_eq!(layout.ram(), g..g + 8 * GIB);
        assert_eq!(layout.gdt().as_u64(), g + 0x1000);
        assert_eq!(layout.boot_info().as_u64(), g + 0x2000);
        assert_eq!(layout.fdt().as_u64(), g + 0x3000);
        assert_eq!(layout.pml4().as_u64(), g + 0x10000);
        assert_eq!(layout.page_table_frames(), g + 0x11000..g + 0x38000);
        assert_eq!(layout.boot_stack_bottom(), g + 0x38000);
        // Up to 64 GiB of address space; a kernel linked below G does not fit.
        assert!(MemoryLayout::placed(placement, 60 * GIB, g + 0x40000..g + 0x30_0000).is_ok());
        let too_large = MemoryLayout::placed(placement, 62 * GIB, g + 0x40000..g + 0x30_0000);
        assert!(matches!(too_large, Err(LayoutError::MemoryTooLarge { .. })));
        assert!(matches!(
            MemoryLayout::placed(placement, 64 * MIB, 0x40000..0x30_0000),
            Err(LayoutError::KernelTooLow { .. })
        ));
    }
}
