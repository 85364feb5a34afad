//! x86_64: guest memory layout, GDT, page tables and the initial register state of a vCPU.

pub mod paging;
