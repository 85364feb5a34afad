//! Guest-physical memory layout of aarch64 v1 guests: where the hypercall trap window, boot info,
//! device tree, page tables, boot stack and kernel go, and the rules for the RAM size and the
//! kernel's placement.
//!
//! v1 aarch64 guests get their RAM at guest-physical address G = [`RAM_BASE`] = 0x1000_0000
//! (below it sits the GIC at 0x0800_0000). The offsets follow x86_64 where they can; the two
//! differences are that there is no GDT and that the first 16 KiB of RAM (Apple's stage-2 page
//! size) are the hypercall trap window, which the backend maps without access rights, so the
//! boot info and the device tree start at G + 0x4000:
//!
//! | offset from G      | content                                              |
//! |--------------------|------------------------------------------------------|
//! | 0x0 .. 0x4000      | hypercall trap window (no stage-2 access)            |
//! | 0x4000             | boot info (one page)                                 |
//! | 0x5000 .. 0x10000  | flattened device tree (44 KiB at most)               |
//! | 0x10000            | L0 table (TTBR0_EL1)                                 |
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
/// One gibibyte.
const GIB: u64 = 1 << 30;

/// First guest-physical address of RAM (G) for v1 guests (uhyve ≥ 0.6.0).
pub const RAM_BASE: u64 = 0x1000_0000;
/// Size of the hypercall trap window at G: the first 16 KiB (one stage-2 page on Apple
/// silicon) get no access rights, so every guest access there exits as a data abort.
pub const HYPERCALL_WINDOW_SIZE: u64 = 0x4000;
/// Offset of the boot info (one page) from G: the first page after the trap window.
pub const BOOT_INFO_OFFSET: u64 = 0x4000;
/// Offset of the flattened device tree from G.
pub const FDT_OFFSET: u64 = 0x5000;
/// Largest device tree that fits between [`FDT_OFFSET`] and [`PAGE_TABLE_ROOT_OFFSET`] (44 KiB).
pub const FDT_MAX_SIZE: u64 = PAGE_TABLE_ROOT_OFFSET - FDT_OFFSET;
/// Offset of the L0 table (the stage-1 root, TTBR0_EL1) from G.
pub const PAGE_TABLE_ROOT_OFFSET: u64 = 0x10000;
/// Offset of the first further page-table frame from G.
pub const PAGE_TABLES_OFFSET: u64 = 0x11000;
/// Offset (exclusive) where the page-table frame area ends.
pub const PAGE_TABLES_END_OFFSET: u64 = 0x38000;
/// Size of the boot stack directly below the kernel base.
pub const BOOT_STACK_SIZE: u64 = 0x8000;
/// Offset of the kernel base of position-independent (ET_DYN) images from G.
pub const PIE_KERNEL_OFFSET: u64 = 0x40000;

/// Guest-physical hypercall trap window `[G, G + 16 KiB)`.
pub const HYPERCALL_WINDOW: Range<u64> = RAM_BASE..RAM_BASE + HYPERCALL_WINDOW_SIZE;
/// Guest-physical address of the boot info.
pub const BOOT_INFO_ADDRESS: u64 = RAM_BASE + BOOT_INFO_OFFSET;
/// Guest-physical address of the device tree.
pub const FDT_ADDRESS: u64 = RAM_BASE + FDT_OFFSET;
/// Guest-physical address of the L0 table.
pub const PAGE_TABLE_ROOT_ADDRESS: u64 = RAM_BASE + PAGE_TABLE_ROOT_OFFSET;
/// Guest-physical page-table frame area (excluding the L0 table).
pub const PAGE_TABLES: Range<u64> =
    (RAM_BASE + PAGE_TABLES_OFFSET)..(RAM_BASE + PAGE_TABLES_END_OFFSET);
/// Kernel base of position-independent images.
pub const PIE_KERNEL_BASE: u64 = RAM_BASE + PIE_KERNEL_OFFSET;

/// GICv3 distributor (GICD) base and size.
pub const GICD: Range<u64> = 0x0800_0000..0x0801_0000;
/// GICv3 ITS (MSI controller) base and size.
pub const GIC_ITS: Range<u64> = 0x0808_0000..0x080A_0000;
/// GICv3 redistributors (GICR) base and size.
pub const GICR: Range<u64> = 0x080A_0000..0x0900_0000;

/// The PCI host bridge (`/pcie@1000000000` in the device tree, present with `--net`): its ECAM
/// configuration window, 256 MiB for 256 buses (32 devices × 8 functions × 4 KiB each). Hermit's
/// aarch64 kernels map it at a virtual address aligned to its size and refuse a smaller one, so
/// it lies where no RAM can be: right after the 64 GiB that RAM may use.
pub const PCI_ECAM: Range<u64> = V1_ADDRESS_SPACE_END..V1_ADDRESS_SPACE_END + 0x1000_0000;
/// Its I/O window (no device has an I/O BAR, but Hermit's aarch64 kernels insist on one).
pub const PCI_IO: Range<u64> = 0x0b00_0000..0x0b01_0000;
/// Its 32-bit memory window (Hermit ignores 32-bit BARs, but insists on the window).
pub const PCI_MEM32: Range<u64> = 0x0c00_0000..0x0d00_0000;
/// Its 64-bit memory window: Hermit places 64-bit BARs from its start, as uhyve does before the
/// kernel runs.
pub const PCI_MEM64: Range<u64> = 0x0e00_0000..0x0f00_0000;
/// The network card's interrupt: shared peripheral interrupt 3 (GIC INTID 35), level-triggered.
pub const NET_SPI: u32 = 3;

/// Smallest guest RAM accepted.
pub const MIN_MEMORY: u64 = 16 * MIB;
/// End (exclusive) of the v1 guest-physical address space: 64 GiB, the 36-bit IPA space that
/// Hypervisor.framework gives a VM by default (and the upper bound upstream uses for v1 RAM).
pub const V1_ADDRESS_SPACE_END: u64 = 64 * GIB;
/// Largest guest RAM for v1 guests: RAM `[G, G + size)` must end within
/// [`V1_ADDRESS_SPACE_END`], so at most 64 GiB − 256 MiB.
pub const V1_MAX_MEMORY: u64 = V1_ADDRESS_SPACE_END - RAM_BASE;
/// Granularity of the guest RAM size.
pub const MEMORY_GRANULE: u64 = 2 * MIB;
/// Free RAM the kernel needs at least after its 2 MiB-rounded image end (its first heap page).
pub const MIN_FREE_AFTER_IMAGE: u64 = 2 * MIB;

// The boot structures must not overlap, must lie outside the trap window and below the PIE
// kernel base; the GIC must lie below RAM.
const _: () = {
    assert!(HYPERCALL_WINDOW.end <= BOOT_INFO_ADDRESS);
    assert!(BOOT_INFO_ADDRESS + 0x1000 <= FDT_ADDRESS);
    assert!(FDT_ADDRESS + FDT_MAX_SIZE <= PAGE_TABLE_ROOT_ADDRESS);
    assert!(FDT_MAX_SIZE == 44 * 1024);
    assert!(PAGE_TABLE_ROOT_ADDRESS + 0x1000 <= PAGE_TABLES.start);
    assert!(PAGE_TABLES.end + BOOT_STACK_SIZE <= PIE_KERNEL_BASE);
    assert!(RAM_BASE.is_multiple_of(MEMORY_GRANULE));
    assert!(V1_MAX_MEMORY.is_multiple_of(MEMORY_GRANULE));
    assert!(GICD.end <= GIC_ITS.start && GIC_ITS.end <= GICR.start && GICR.end <= RAM_BASE);
    assert!(GICR.end <= PCI_IO.start && PCI_ECAM.start >= V1_ADDRESS_SPACE_END);
    assert!(PCI_IO.end <= PCI_MEM32.start && PCI_MEM32.end <= PCI_MEM64.start);
    assert!(PCI_MEM64.end <= RAM_BASE && PCI_MEM64.end <= 1 << 32);
};

// The "too large" message states the maximum in MiB.
const _: () = assert!(V1_MAX_MEMORY / MIB == 65280);

/// Where the kernel virtual memory of Hermit's aarch64 kernels (0.10 – 0.13) ends: they manage
/// `[image end, 4 GiB)` as kernel virtual memory, take the virtual range of their heap (about as
/// large as RAM) from it, and panic at start-up when it is too small. So ASLR moves the RAM of a
/// v1 guest only within the first 4 GiB.
pub const KERNEL_VIRTUAL_MEMORY_END: u64 = 4 * GIB;

/// Where the RAM of a v1 guest with PCI devices must end: its kernel maps the PCI configuration
/// window ([`PCI_ECAM`], 256 MiB) at a 256 MiB-aligned virtual address in its virtual memory
/// after its heap (which ends within RAM) and below [`KERNEL_VIRTUAL_MEMORY_END`], and a few
/// small mappings come first. RAM ending 512 MiB below 4 GiB leaves an aligned 256 MiB block
/// and 256 MiB for the rest.
pub const PCI_KERNEL_RAM_END: u64 = KERNEL_VIRTUAL_MEMORY_END - 512 * MIB;

/// The shared layout rules with this architecture's values.
pub const RULES: LayoutRules = LayoutRules {
    ram_base: RAM_BASE,
    min_memory: MIN_MEMORY,
    max_memory: V1_MAX_MEMORY,
    max_memory_reason: "aarch64 v1 guests get their RAM at 0x1000_0000 and it must end within the 64 GiB (36-bit) guest-physical address space, so at most 65280 MiB are supported",
    granule: MEMORY_GRANULE,
    page_tables: PAGE_TABLES,
    boot_stack_size: BOOT_STACK_SIZE,
    pie_kernel_base: PIE_KERNEL_BASE,
    min_free_after_image: MIN_FREE_AFTER_IMAGE,
    boot_structures: "hypercall window, boot info, device tree, page tables and boot stack",
    aslr_ram_end: Some(KERNEL_VIRTUAL_MEMORY_END),
};

/// First guest-physical address of RAM (G) for v2/v3 guests: 4 GiB.
pub const HIGH_RAM_BASE: u64 = 4 * GIB;
/// Largest guest RAM for v2/v3 guests: `[4 GiB, 64 GiB)`.
pub const HIGH_MAX_MEMORY: u64 = V1_ADDRESS_SPACE_END - HIGH_RAM_BASE;

/// The layout rules of v2/v3 guests: the v1 offsets from G = 4 GiB, up to 60 GiB of RAM.
pub const HIGH_RULES: LayoutRules = LayoutRules {
    ram_base: HIGH_RAM_BASE,
    min_memory: MIN_MEMORY,
    max_memory: HIGH_MAX_MEMORY,
    max_memory_reason: "aarch64 v2/v3 guests get their RAM between 4 GiB and 64 GiB, so at most 60 GiB",
    granule: MEMORY_GRANULE,
    page_tables: (HIGH_RAM_BASE + PAGE_TABLES_OFFSET)..(HIGH_RAM_BASE + PAGE_TABLES_END_OFFSET),
    boot_stack_size: BOOT_STACK_SIZE,
    pie_kernel_base: HIGH_RAM_BASE + PIE_KERNEL_OFFSET,
    min_free_after_image: MIN_FREE_AFTER_IMAGE,
    boot_structures: "hypercall window, boot info, device tree, page tables and boot stack",
    aslr_ram_end: None,
};

/// Where a guest's RAM starts: it follows the interface version of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamPlacement {
    /// At [`RAM_BASE`] (0x1000_0000): interface v1.
    Low,
    /// At [`HIGH_RAM_BASE`] (4 GiB): interface v2 and v3.
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

/// The checked layout of one aarch64 v1 guest: RAM `[G, G + size)` with G = [`RAM_BASE`] and
/// the kernel image inside it. Constructing it runs [`check_memory_size`] and
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
    /// Checks `ram_size` and the placement of `kernel_image` for a v1 guest and returns the
    /// layout.
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
    fn at(&self, offset: u64) -> u64 {
        self.ram_base().as_u64() + offset
    }

    /// Address of the boot info.
    pub fn boot_info(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.at(BOOT_INFO_OFFSET))
    }

    /// Address of the device tree; it may use at most [`FDT_MAX_SIZE`] bytes.
    pub fn fdt(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.at(FDT_OFFSET))
    }

    /// Address of the L0 table, the stage-1 root (the value for TTBR0_EL1). The x86_64
    /// counterpart is `pml4()`.
    pub fn page_table_root(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.at(PAGE_TABLE_ROOT_OFFSET))
    }

    /// The area further page-table frames are allocated from.
    pub fn page_table_frames(&self) -> Range<u64> {
        self.at(PAGE_TABLES_OFFSET)..self.at(PAGE_TABLES_END_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = RAM_BASE;

    #[test]
    fn memory_size_rules() {
        assert_eq!(check_memory_size(MIN_MEMORY), Ok(()));
        assert_eq!(check_memory_size(64 * MIB), Ok(()));
        assert_eq!(check_memory_size(4 * GIB), Ok(()));
        assert_eq!(check_memory_size(V1_MAX_MEMORY), Ok(()));
        assert_eq!(V1_MAX_MEMORY, 0xF_F000_0000);
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
        let large = check_memory_size(64 * GIB).unwrap_err().to_string();
        assert!(
            large.contains("64 GiB") && large.contains("65280 MiB"),
            "{large}"
        );
        let odd = check_memory_size(17 * MIB).unwrap_err().to_string();
        assert!(odd.contains("2 MiB"), "{odd}");
    }

    #[test]
    fn stack_bottom_is_below_the_kernel() {
        assert_eq!(boot_stack_bottom(PIE_KERNEL_BASE), Ok(G + 0x38000));
        assert_eq!(boot_stack_bottom(G + 0x20_0000), Ok(G + 0x1f_8000));
        assert!(matches!(
            boot_stack_bottom(G + 0x3f000),
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
            check_kernel_placement(PIE_KERNEL_BASE..PIE_KERNEL_BASE, 16 * MIB),
            Err(LayoutError::EmptyImage {
                start: PIE_KERNEL_BASE,
                end: PIE_KERNEL_BASE
            })
        );
        assert_eq!(
            check_kernel_placement(PIE_KERNEL_BASE..G + 0x20_0000, 16 * MIB),
            Ok(())
        );
        // A kernel linked at a low address (as on x86_64) lies below RAM.
        assert_eq!(
            check_kernel_placement(0x40000..0x20_0000, 64 * MIB),
            Err(LayoutError::KernelTooLow {
                start: 0x40000,
                min: PIE_KERNEL_BASE,
                structures: RULES.boot_structures,
            })
        );
        assert!(matches!(
            check_kernel_placement(G + 0x1000..G + 0x20_0000, 64 * MIB),
            Err(LayoutError::KernelTooLow { .. })
        ));
        // Image end G + 15 MiB + 1 rounds to 16 MiB, plus 2 MiB heap needs 18 MiB.
        assert_eq!(
            check_kernel_placement(PIE_KERNEL_BASE..G + 15 * MIB + 1, 16 * MIB),
            Err(LayoutError::KernelDoesNotFit {
                image_end: G + 15 * MIB + 1,
                ram_end: G + 16 * MIB,
                needed: G + 18 * MIB
            })
        );
        assert_eq!(
            check_kernel_placement(PIE_KERNEL_BASE..G + 15 * MIB + 1, 18 * MIB),
            Ok(())
        );
        assert!(check_kernel_placement(PIE_KERNEL_BASE..u64::MAX, V1_MAX_MEMORY).is_err());
    }

    #[test]
    fn layout_addresses() {
        let layout = MemoryLayout::new(64 * MIB, PIE_KERNEL_BASE..G + 0x30_0000).unwrap();
        assert_eq!(layout.ram(), G..G + 64 * MIB);
        assert_eq!(layout.ram_base().as_u64(), 0x1000_0000);
        assert_eq!(layout.ram_size(), 64 * MIB);
        assert_eq!(HYPERCALL_WINDOW, G..G + 0x4000);
        assert_eq!(layout.kernel_base(), G + 0x40000);
        assert_eq!(layout.kernel_image(), G + 0x40000..G + 0x30_0000);
        assert_eq!(layout.boot_info().as_u64(), G + 0x4000);
        assert_eq!(layout.fdt().as_u64(), G + 0x5000);
        assert_eq!(layout.page_table_root().as_u64(), G + 0x10000);
        assert_eq!(layout.page_table_frames(), G + 0x11000..G + 0x38000);
        assert_eq!(layout.boot_stack_bottom(), G + 0x38000);
        assert!(MemoryLayout::new(64 * MIB + 1, PIE_KERNEL_BASE..G + 0x30_0000).is_err());
        assert!(MemoryLayout::new(64 * MIB, G..G + 0x30_0000).is_err());
    }

    #[test]
    fn boot_structures_avoid_the_trap_window() {
        let layout = MemoryLayout::new(16 * MIB, PIE_KERNEL_BASE..G + 0x10_0000).unwrap();
        let base = layout.ram_base().as_u64();
        let window = base..base + HYPERCALL_WINDOW_SIZE;
        for address in [
            layout.boot_info().as_u64(),
            layout.fdt().as_u64(),
            layout.page_table_root().as_u64(),
            layout.page_table_frames().start,
            layout.boot_stack_bottom(),
            layout.kernel_base(),
        ] {
            assert!(!window.contains(&address), "{address:#x}");
        }
    }
}
