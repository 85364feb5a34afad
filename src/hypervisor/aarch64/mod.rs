//! What a guest's load or store outside its RAM means on aarch64, for every backend: a store to a
//! v1 or v2/v3 hypercall address of the trapped window (the first 16 KiB of RAM) is a hypercall,
//! a load of a v2/v3 address is a hypercall read, any other access in the window is a stray one
//! (most likely a null pointer: the guest maps the window at virtual address 0), and an access
//! elsewhere is plain MMIO. Hypervisor.framework reaches this after decoding the syndrome itself,
//! KVM with the access it decoded in the host kernel. Guest debugging's aarch64 side is
//! [`debug`].

pub mod debug;

use uhyve_interface::HypercallAddress;
use uhyve_interface::v2::HypercallAddressV2;

use super::VcpuExit;
use crate::arch::aarch64::layout::HYPERCALL_WINDOW_SIZE;

/// One decoded load or store at a guest-physical address without RAM behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAccess {
    /// The guest-physical address (IPA).
    pub address: u64,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// `true` for a store.
    pub is_write: bool,
    /// For stores: the value stored.
    pub value: u64,
}

/// The exit `access` amounts to in a VM whose RAM (and hypercall window) starts at `ram_base`.
/// For a [`VcpuExit::HypercallRead`] the backend still owes the guest the loaded value.
pub fn classify_access(access: GuestAccess, ram_base: u64) -> VcpuExit {
    let GuestAccess {
        address: ipa,
        size,
        is_write,
        value,
    } = access;
    let offset = ipa.wrapping_sub(ram_base);
    let in_window = ipa >= ram_base && offset < HYPERCALL_WINDOW_SIZE;
    let address = u16::try_from(offset).ok().filter(|_| in_window);
    let v1 = address.filter(|&a| HypercallAddress::try_from(a).is_ok());
    let v2 = address.filter(|&a| HypercallAddressV2::try_from(a).is_ok());
    if let Some(address) = v1.or(v2).filter(|_| is_write) {
        return VcpuExit::Hypercall {
            address,
            argument: value,
        };
    }
    if let Some(address) = v2.filter(|_| !is_write) {
        return VcpuExit::HypercallRead { address, size };
    }
    if in_window {
        let kind = if is_write { "write" } else { "read" };
        return VcpuExit::Unhandled {
            description: format!(
                "{kind} of {size} bytes at offset {offset:#x} of the hypercall window \
                 (guest-physical {ipa:#x}), which is no hypercall (a null-pointer access?)"
            ),
        };
    }
    if is_write {
        VcpuExit::MmioWrite {
            address: ipa,
            data: value,
            size,
        }
    } else {
        VcpuExit::MmioRead { address: ipa, size }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000_0000;

    fn store(address: u64, value: u64) -> GuestAccess {
        GuestAccess {
            address,
            size: 8,
            is_write: true,
            value,
        }
    }

    fn load(address: u64, size: u8) -> GuestAccess {
        GuestAccess {
            address,
            size,
            is_write: false,
            value: 0,
        }
    }

    #[test]
    fn stores_to_hypercall_addresses_are_hypercalls_of_either_table() {
        assert_eq!(
            classify_access(store(BASE + 0x540, 0x1234_5678_9abc), BASE),
            VcpuExit::Hypercall {
                address: 0x540,
                argument: 0x1234_5678_9abc
            }
        );
        assert_eq!(
            classify_access(store(BASE + 0x1010, 3), BASE),
            VcpuExit::Hypercall {
                address: 0x1010,
                argument: 3
            }
        );
    }

    #[test]
    fn loads_are_hypercall_reads_only_at_v2_addresses() {
        assert_eq!(
            classify_access(load(BASE + 0x1040, 1), BASE),
            VcpuExit::HypercallRead {
                address: 0x1040,
                size: 1
            }
        );
        // A load of a v1 port and a store-free access elsewhere in the window are stray.
        for access in [load(BASE + 0x540, 4), store(BASE + 0x8, 0)] {
            assert!(matches!(
                classify_access(access, BASE),
                VcpuExit::Unhandled { description } if description.contains("hypercall window")
            ));
        }
    }

    #[test]
    fn accesses_outside_the_window_are_mmio() {
        assert_eq!(
            classify_access(store(0x0900_0000, 7), BASE),
            VcpuExit::MmioWrite {
                address: 0x0900_0000,
                data: 7,
                size: 8
            }
        );
        assert_eq!(
            classify_access(load(BASE + 0x4000, 2), BASE),
            VcpuExit::MmioRead {
                address: BASE + 0x4000,
                size: 2
            }
        );
        // Below RAM, and at the very top of the address space.
        assert!(matches!(
            classify_access(store(BASE - 8, 0), BASE),
            VcpuExit::MmioWrite { .. }
        ));
        assert!(matches!(
            classify_access(load(u64::MAX - 7, 8), BASE),
            VcpuExit::MmioRead { .. }
        ));
    }
}
