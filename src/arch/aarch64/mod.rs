//! aarch64: exception-syndrome decoding, the debug architecture, guest memory layout, stage-1 page tables and the
//! initial register state of a vCPU.
//!
//! Everything here is plain Rust that builds and is tested on every host; the Hypervisor.framework
//! backend (and any other aarch64 backend) only copies these values into its own structures.

pub mod debug;
pub mod esr;
pub mod layout;
pub mod paging;
pub mod registers;

pub use esr::{DataAbort, EsrError, decode_data_abort, exception_class, exception_class_name};
pub use layout::{
    LayoutError, MemoryLayout, boot_stack_bottom, check_kernel_placement, check_memory_size,
};
pub use paging::{PageTables, PagingError, build_identity_map, virt_to_phys};
pub use registers::{InitialRegisters, initial_registers};
