//! The x86 page-fault facts the emulator works with: the controls that decide page permissions
//! and the #PF (vector 14) an access raises. The page walker (`crate::arch::x86_64::paging`)
//! uses the same types.

/// The vCPU controls that decide page permissions (SDM vol. 3, 4.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingMode {
    /// The access is made at CPL 3.
    pub user: bool,
    /// CR0.WP: supervisor writes respect read-only pages.
    pub write_protect: bool,
    /// EFER.NXE: PTE bit 63 forbids fetches (otherwise it is a reserved bit).
    pub no_execute: bool,
    /// CR4.SMEP: supervisor fetches from user pages fault.
    pub smep: bool,
    /// CR4.SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC is set.
    pub smap: bool,
    /// RFLAGS.AC.
    pub alignment_check: bool,
}

/// The page fault (#PF, vector 14) the guest's CPU would raise for an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub address: u64,
    /// The error code: P (bit 0), W/R (1), U/S (2), RSVD (3), I/D (4).
    pub error_code: u32,
}

/// Error-code bit 0: the fault was a protection violation (the page was present).
pub const PF_PROTECTION: u32 = 1 << 0;
/// Error-code bit 1: a write.
pub const PF_WRITE: u32 = 1 << 1;
/// Error-code bit 2: a user-mode access.
pub const PF_USER: u32 = 1 << 2;
/// Error-code bit 3: a reserved bit was set in a paging entry.
pub const PF_RESERVED: u32 = 1 << 3;
/// Error-code bit 4: an instruction fetch.
pub const PF_FETCH: u32 = 1 << 4;
