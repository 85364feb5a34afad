//! The memory-layout rules every architecture shares: the RAM-size limits, the kernel's placement
//! above the boot structures, the boot stack right below the kernel, and an initial RAM disk (a
//! Hermit image archive the kernel reads itself) on the first page after the kernel image, as
//! upstream uhyve places it, with the kernel's minimum free memory still after it. Each architecture's
//! `layout` module describes itself with one [`LayoutRules`] value and its own constants.

use std::ops::Range;

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

/// One mebibyte.
const MIB: u64 = 1 << 20;

/// Alignment of the initial RAM disk: one 4 KiB page.
pub const INITRD_ALIGN: u64 = 0x1000;

/// What an architecture's layout needs the shared rules to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRules {
    /// First guest-physical address of RAM (G).
    pub ram_base: u64,
    /// Smallest RAM size.
    pub min_memory: u64,
    /// Largest RAM size.
    pub max_memory: u64,
    /// Why RAM cannot be larger (completes the "too large" message).
    pub max_memory_reason: &'static str,
    /// RAM sizes are multiples of this (2 MiB).
    pub granule: u64,
    /// The area page-table frames are allocated from (absolute addresses).
    pub page_tables: Range<u64>,
    /// Size of the boot stack below the kernel.
    pub boot_stack_size: u64,
    /// Lowest kernel base (where PIE kernels go).
    pub pie_kernel_base: u64,
    /// Free RAM the kernel needs after its 2 MiB-rounded image end.
    pub min_free_after_image: u64,
    /// What lies below the kernel base, for the "kernel too low" message.
    pub boot_structures: &'static str,
    /// How far ASLR may move RAM (and the relocatable kernel with it): RAM must end at or below
    /// this address (`None`: anywhere within `max_memory` of the base).
    pub aslr_ram_end: Option<u64>,
}

/// Violations of the memory-layout rules.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The requested RAM is smaller than the minimum.
    #[error(
        "guest memory of {size:#x} bytes ({} MiB) is too small: at least {} MiB are required",
        .size / MIB,
        .min / MIB
    )]
    MemoryTooSmall {
        /// Requested size in bytes.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// The requested RAM is larger than the maximum.
    #[error("guest memory of {size:#x} bytes ({} MiB) is too large: {reason}", .size / MIB)]
    MemoryTooLarge {
        /// Requested size in bytes.
        size: u64,
        /// The limit and why it exists.
        reason: &'static str,
    },
    /// The requested RAM is not a multiple of 2 MiB.
    #[error("guest memory of {size:#x} bytes is not a multiple of 2 MiB")]
    MemoryNotAligned {
        /// Requested size in bytes.
        size: u64,
    },
    /// The kernel image range is empty or inverted.
    #[error("kernel image range {start:#x}..{end:#x} is empty or inverted")]
    EmptyImage {
        /// First byte of the image.
        start: u64,
        /// One past the last byte of the image.
        end: u64,
    },
    /// The kernel would overlap the boot structures below the PIE kernel base.
    #[error(
        "kernel image starts at {start:#x}, below {min:#x}: it would overlap the {structures} \
         (a non-relocatable kernel must be linked at or above {min:#x})"
    )]
    KernelTooLow {
        /// First byte of the image.
        start: u64,
        /// Lowest allowed kernel base.
        min: u64,
        /// What it would overlap.
        structures: &'static str,
    },
    /// The boot stack below the kernel would overlap the page-table area.
    #[error(
        "boot stack {bottom:#x}..{kernel_base:#x} below the kernel would overlap the page-table \
         area, which ends at {tables_end:#x}"
    )]
    StackOverlapsPageTables {
        /// Lowest address of the stack (saturated at 0).
        bottom: u64,
        /// Kernel base (top of the stack).
        kernel_base: u64,
        /// End of the page-table area.
        tables_end: u64,
    },
    /// The kernel plus its minimum heap does not fit into guest RAM.
    #[error(
        "kernel image ends at {image_end:#x}, but guest RAM ends at {ram_end:#x}: at least \
         {needed:#x} bytes of RAM are needed (image end rounded up to 2 MiB plus 2 MiB of free \
         memory); increase the memory size"
    )]
    KernelDoesNotFit {
        /// One past the last byte of the image.
        image_end: u64,
        /// One past the last byte of RAM.
        ram_end: u64,
        /// RAM end the image requires.
        needed: u64,
    },
    /// The initial RAM disk is empty.
    #[error("the initial RAM disk is empty")]
    EmptyInitrd,
    /// The initial RAM disk plus the kernel's minimum free memory does not fit into guest RAM.
    #[error(
        "the Hermit image archive ({size} bytes unpacked) does not fit into guest RAM after the \
         kernel: it would start at {start:#x}, RAM ends at {ram_end:#x}; at least {} MiB of guest \
         memory are needed (archive end rounded up to 2 MiB plus 2 MiB of free memory); increase \
         the memory size",
        .needed_size.div_ceil(MIB)
    )]
    InitrdDoesNotFit {
        /// Its size in bytes.
        size: u64,
        /// Where it would start.
        start: u64,
        /// One past the last byte of RAM.
        ram_end: u64,
        /// The RAM size it requires.
        needed_size: u64,
    },
}

/// Rounds `value` up to a multiple of the power of two `align`, or `None` on overflow.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

impl LayoutRules {
    /// Checks a RAM size: at least the minimum, at most the maximum, a multiple of the granule.
    pub fn check_memory_size(&self, bytes: u64) -> Result<(), LayoutError> {
        if bytes < self.min_memory {
            return Err(LayoutError::MemoryTooSmall {
                size: bytes,
                min: self.min_memory,
            });
        }
        if bytes > self.max_memory {
            return Err(LayoutError::MemoryTooLarge {
                size: bytes,
                reason: self.max_memory_reason,
            });
        }
        if !bytes.is_multiple_of(self.granule) {
            return Err(LayoutError::MemoryNotAligned { size: bytes });
        }
        Ok(())
    }

    /// Lowest address of the boot stack that ends at `kernel_base`; fails if the stack would
    /// reach into the page-table area.
    pub fn boot_stack_bottom(&self, kernel_base: u64) -> Result<u64, LayoutError> {
        match kernel_base.checked_sub(self.boot_stack_size) {
            Some(bottom) if bottom >= self.page_tables.end => Ok(bottom),
            other => Err(LayoutError::StackOverlapsPageTables {
                bottom: other.unwrap_or(0),
                kernel_base,
                tables_end: self.page_tables.end,
            }),
        }
    }

    /// Checks where the kernel image lies: at or above the PIE kernel base, and ending —
    /// rounded up to 2 MiB, plus the minimum heap — inside RAM of `ram_size` bytes.
    pub fn check_kernel_placement(
        &self,
        image_range: Range<u64>,
        ram_size: u64,
    ) -> Result<(), LayoutError> {
        let Range { start, end } = image_range;
        if start >= end {
            return Err(LayoutError::EmptyImage { start, end });
        }
        if start < self.pie_kernel_base {
            return Err(LayoutError::KernelTooLow {
                start,
                min: self.pie_kernel_base,
                structures: self.boot_structures,
            });
        }
        self.boot_stack_bottom(start)?;
        let ram_end = self.ram_base.saturating_add(ram_size);
        let needed =
            align_up(end, self.granule).and_then(|e| e.checked_add(self.min_free_after_image));
        match needed {
            Some(needed) if needed <= ram_end => Ok(()),
            _ => Err(LayoutError::KernelDoesNotFit {
                image_end: end,
                ram_end,
                needed: needed.unwrap_or(u64::MAX),
            }),
        }
    }
}

impl LayoutRules {
    /// The same rules with RAM starting at `ram_base` instead (address-space layout
    /// randomisation, `crate::setup::aslr`): every address moves with it, and the largest RAM
    /// shrinks so that RAM still ends within the same address range. `None` if `ram_base` lies
    /// below the rules' own base, is not a multiple of the granule, or lies beyond that range.
    pub fn moved_to(&self, ram_base: u64) -> Option<LayoutRules> {
        let delta = ram_base.checked_sub(self.ram_base)?;
        if !delta.is_multiple_of(self.granule) {
            return None;
        }
        let page_tables =
            self.page_tables.start.checked_add(delta)?..self.page_tables.end.checked_add(delta)?;
        Some(LayoutRules {
            ram_base,
            max_memory: self.max_memory.checked_sub(delta)?,
            page_tables,
            pie_kernel_base: self.pie_kernel_base.checked_add(delta)?,
            ..self.clone()
        })
    }

    /// Where an initial RAM disk of `len` bytes goes in RAM of `ram_size` bytes whose kernel image
    /// ends at `image_end`: on the first [`INITRD_ALIGN`] boundary at or after the image end. Like
    /// the kernel it must leave [`LayoutRules::min_free_after_image`] of RAM after its end rounded
    /// up to the granule. It cannot overlap the kernel, the boot stack or the boot structures: all
    /// of them lie below the image end.
    pub fn place_initrd(
        &self,
        image_end: u64,
        len: u64,
        ram_size: u64,
    ) -> Result<Range<u64>, LayoutError> {
        if len == 0 {
            return Err(LayoutError::EmptyInitrd);
        }
        let ram_end = self.ram_base.saturating_add(ram_size);
        let start = align_up(image_end, INITRD_ALIGN);
        let end = start.and_then(|start| start.checked_add(len));
        let needed = end
            .and_then(|end| align_up(end, self.granule))
            .and_then(|end| end.checked_add(self.min_free_after_image));
        match (start, end, needed) {
            (Some(start), Some(end), Some(needed)) if needed <= ram_end => Ok(start..end),
            _ => Err(LayoutError::InitrdDoesNotFit {
                size: len,
                start: start.unwrap_or(u64::MAX),
                ram_end,
                needed_size: needed.map_or(u64::MAX, |n| n - self.ram_base),
            }),
        }
    }
}

/// The checked part of a guest layout every architecture has: RAM `[G, G + size)` and the
/// kernel image inside it, with the boot stack below the kernel. Constructing it runs all the
/// checks, so every address it returns lies inside RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamLayout {
    ram_base: u64,
    ram_size: u64,
    kernel_image: Range<u64>,
    boot_stack_size: u64,
}

impl RamLayout {
    /// Checks `ram_size` and the placement of `kernel_image` under `rules`.
    pub fn new(
        rules: &LayoutRules,
        ram_size: u64,
        kernel_image: Range<u64>,
    ) -> Result<Self, LayoutError> {
        rules.check_memory_size(ram_size)?;
        rules.check_kernel_placement(kernel_image.clone(), ram_size)?;
        Ok(Self {
            ram_base: rules.ram_base,
            ram_size,
            kernel_image,
            boot_stack_size: rules.boot_stack_size,
        })
    }

    /// First guest-physical address of RAM (G).
    pub fn ram_base(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.ram_base)
    }

    /// Size of guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Guest RAM as a range of guest-physical addresses.
    pub fn ram(&self) -> Range<u64> {
        // Cannot overflow: the size was checked against the architecture's maximum.
        self.ram_base..self.ram_base + self.ram_size
    }

    /// The kernel image's guest-physical range.
    pub fn kernel_image(&self) -> Range<u64> {
        self.kernel_image.clone()
    }

    /// Kernel base (first byte of the image).
    pub fn kernel_base(&self) -> u64 {
        self.kernel_image.start
    }

    /// Lowest address of the boot stack (the initial stack pointer).
    pub fn boot_stack_bottom(&self) -> u64 {
        // Checked in `new`: the kernel base lies at least a stack size above the page tables.
        self.kernel_image.start - self.boot_stack_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LayoutRules {
        crate::arch::x86_64::layout::RULES
    }

    #[test]
    fn an_initrd_goes_on_the_page_after_the_kernel() {
        let rules = rules();
        assert_eq!(
            rules.place_initrd(0x2c_1234, 0x8000, 64 * MIB),
            Ok(0x2c_2000..0x2c_a000)
        );
        // Already aligned: right at the image end.
        assert_eq!(
            rules.place_initrd(0x30_0000, 0x10, 64 * MIB),
            Ok(0x30_0000..0x30_0010)
        );
    }

    #[test]
    fn an_initrd_must_leave_free_memory_inside_ram() {
        let rules = rules();
        // Ends at 60 MiB + 1: rounded up to 62 MiB, plus 2 MiB = 64 MiB fits exactly.
        let start = 0x40_0000;
        let len = 60 * MIB + 1 - start;
        assert!(rules.place_initrd(start, len, 64 * MIB).is_ok());
        let error = rules
            .place_initrd(start, len + 2 * MIB, 64 * MIB)
            .unwrap_err();
        assert!(
            matches!(error, LayoutError::InitrdDoesNotFit { needed_size, .. } if needed_size == 66 * MIB),
            "{error}"
        );
        assert!(error.to_string().contains("66 MiB"), "{error}");
        assert!(matches!(
            rules.place_initrd(u64::MAX - 10, 100, 64 * MIB),
            Err(LayoutError::InitrdDoesNotFit { .. })
        ));
        assert_eq!(
            rules.place_initrd(start, 0, 64 * MIB),
            Err(LayoutError::EmptyInitrd)
        );
    }

    #[test]
    fn moved_rules_keep_the_offsets_and_the_end_of_the_range() {
        let rules = rules();
        let moved = rules.moved_to(0x4000_0000).unwrap();
        assert_eq!(moved.ram_base, 0x4000_0000);
        assert_eq!(moved.pie_kernel_base, 0x4004_0000);
        assert_eq!(moved.page_tables, 0x4001_1000..0x4003_8000);
        assert_eq!(moved.ram_base + moved.max_memory, rules.max_memory);
        assert_eq!(
            (moved.min_memory, moved.granule, moved.boot_stack_size),
            (rules.min_memory, rules.granule, rules.boot_stack_size)
        );
        // A kernel at the moved lowest base fits as it does at the original one.
        assert_eq!(
            moved.check_kernel_placement(0x4004_0000..0x4030_0000, 64 * MIB),
            Ok(())
        );
        assert_eq!(rules.moved_to(0), Some(rules.clone()));
        assert_eq!(rules.moved_to(0x1000), None);
        assert_eq!(rules.moved_to(rules.max_memory + 2 * MIB), None);
        let high = crate::arch::x86_64::layout::HIGH_RULES;
        assert_eq!(high.moved_to(0), None);
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 2 * MIB), Some(0));
        assert_eq!(align_up(1, 2 * MIB), Some(2 * MIB));
        assert_eq!(align_up(2 * MIB, 2 * MIB), Some(2 * MIB));
        assert_eq!(align_up(u64::MAX, 2 * MIB), None);
        assert_eq!(align_up((1 << 30) - 1, 1 << 30), Some(1 << 30));
    }
}
