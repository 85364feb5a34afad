//! Virtio devices for guests: the device side of the virtio 1.x PCI transport ([`pci`]) that a
//! Hermit kernel probes for (x86_64: on the legacy configuration ports; aarch64: behind the ECAM
//! host bridge of the device tree), and the devices behind it (so far the network card of
//! [`net`]). The split virtqueues themselves are rust-vmm's `virtio-queue` crate, which reads
//! the guest's rings through `vm-memory` with every address and chain checked.
//!
//! On Linux, [`service`] runs the card in a VM over a TAP interface ([`tap`]) or a passt
//! process ([`passt`]), either one a [`link::HostLink`]; see docs/networking.md for what is
//! still missing (the Hypervisor.framework backend).

#[cfg(target_os = "linux")]
pub mod link;
pub mod net;
pub mod offload;
#[cfg(target_os = "linux")]
pub mod passt;
pub mod pci;
#[cfg(target_os = "linux")]
pub mod service;
#[cfg(target_os = "linux")]
pub mod tap;

use thiserror::Error;

/// The network card's PCI slot on bus 0 (device 00:01.0).
pub const NET_SLOT: u32 = 1;

/// Failures of a virtio device that mark it broken (the guest sees DEVICE_NEEDS_RESET).
#[derive(Debug, Error)]
pub enum VirtioError {
    /// The driver activated a queue whose rings do not lie in guest RAM or whose size is bad.
    #[error("queue {queue}: its rings are not valid (size {size}, outside RAM or misaligned)")]
    InvalidQueue {
        /// The queue index.
        queue: u16,
        /// Its size.
        size: u16,
    },
    /// A descriptor chain the device cannot use (out of RAM, a loop, lengths that overflow,
    /// the wrong direction).
    #[error("queue {queue}: bad descriptor chain: {detail}")]
    BadChain {
        /// The queue index.
        queue: u16,
        /// What was wrong.
        detail: String,
    },
    /// The rings could not be read or written.
    #[error("queue {queue}: {source}")]
    Queue {
        /// The queue index.
        queue: u16,
        /// The error of `virtio-queue`.
        source: virtio_queue::Error,
    },
}

/// How a device's interrupt reaches the guest: on x86_64 a message (one MSI per event, nothing
/// to take back), on aarch64 a level-triggered line of the GIC (an SPI), high from the moment
/// the device sets ISR bits until the driver reads the ISR, which clears them.
pub trait DeviceInterrupt: Sync {
    /// The device set ISR bits: the guest is to run its handler.
    fn raise(&self);
    /// The driver read (and so cleared) the ISR: a level-triggered line goes low.
    fn lower(&self);
}

/// The PCI devices of a VM as the vCPU exit loops reach them: configuration accesses (x86_64:
/// ports 0xCF8/0xCFC; aarch64: an ECAM window, see [`pci::ecam_config_address`]) and memory
/// accesses to their BARs. `None`/`false`: not a device's.
pub trait PciDevices: Sync {
    /// A configuration read of `size` bytes at byte `byte` of the dword that `address` (in the
    /// format of port 0xCF8) names.
    fn config_read(&self, address: u32, byte: u8, size: u8) -> Option<u32>;
    /// A configuration write.
    fn config_write(&self, address: u32, byte: u8, size: u8, value: u32);
    /// A read of `size` bytes at guest-physical `address`; reading the ISR lowers `interrupt`.
    fn mmio_read(&self, address: u64, size: u8, interrupt: &dyn DeviceInterrupt) -> Option<u64>;
    /// A write of `size` bytes at guest-physical `address`; `interrupt` raises the device's
    /// interrupt in the guest.
    fn mmio_write(
        &self,
        mem: &vm_memory::GuestMemoryMmap,
        address: u64,
        size: u8,
        value: u64,
        interrupt: &dyn DeviceInterrupt,
    ) -> bool;
}

/// A virtio device behind a transport: its identity, features, configuration space and queues.
pub trait VirtioDevice: Send {
    /// The virtio device id (1: network card).
    fn device_type(&self) -> u16;
    /// The features the device offers (virtio feature bits, VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// The largest size of each of its queues (the number of queues is this slice's length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads `data.len()` bytes of its configuration space at `offset` (zeros past its end).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space (most devices ignore this).
    fn write_config(&mut self, offset: u64, data: &[u8]);
}
