//! x86_64: guest memory layout, GDT, page tables and the initial register state of a vCPU.

pub mod cpuid;
pub mod disassemble;
pub mod emulate;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod registers;

pub use cpuid::{CpuidRegisters, FallbackSimd, adjust_cpuid_leaf, restrict_to_fallback};
pub use gdt::{GdtError, SegmentDescriptor, write_gdt};
pub use layout::{
    LayoutError, MemoryLayout, boot_stack_bottom, check_kernel_placement, check_memory_size,
};
pub use paging::{PageTables, PagingError, build_identity_map, virt_to_phys};
pub use registers::{InitialRegisters, initial_registers};
