//! Per-architecture machine set-up. Each architecture module exports the same names (memory
//! layout, page tables, initial register state), so the VM code reads the same on every arch.

pub mod aarch64;
pub mod x86_64;
