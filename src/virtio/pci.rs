//! The device side of the virtio 1.x PCI transport ("modern" virtio-pci, what Hermit kernels
//! 0.11 and later accept; they skip legacy devices): the PCI configuration space of one device
//! with its four virtio capabilities, and BAR 0, a 16 KiB memory BAR holding the common
//! configuration, the queue notification area, the ISR status and the device configuration.
//! Every access is decoded from an offset and a length the guest chose, so every combination is
//! answered: reads of nothing return zeros (all-ones outside the configuration space), writes to
//! read-only or unknown registers are ignored.

use virtio_queue::{Queue, QueueT};

use super::VirtioDevice;

/// Red Hat's PCI vendor id, which virtio devices use.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern virtio PCI device ids are 0x1040 + the virtio device id.
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// The size of BAR 0.
pub const BAR_SIZE: u64 = 0x4000;
/// BAR type bits: a prefetchable 64-bit memory BAR (Hermit maps only those).
const BAR_64_BIT: u32 = 0b1100;

/// BAR 0 offsets of the four regions.
const COMMON: u64 = 0x0000;
/// The common configuration of virtio 1.2, with `queue_notify_data` and `queue_reset` at its
/// end (read as 0: their features are not offered); Hermit refuses a shorter one.
const COMMON_LEN: u64 = 0x3c;
const NOTIFY: u64 = 0x1000;
const NOTIFY_LEN: u64 = 0x1000;
/// Each queue's notification address is `NOTIFY + queue * NOTIFY_MULTIPLIER`.
const NOTIFY_MULTIPLIER: u32 = 4;
const ISR: u64 = 0x2000;
const ISR_LEN: u64 = 4;
const DEVICE: u64 = 0x3000;
const DEVICE_LEN: u64 = 0x1000;

/// Capability offsets in the configuration space.
const CAPABILITIES: u8 = 0x40;
/// `virtio_pci_cap.cfg_type` values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI status: a capabilities list is present.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// "No MSI-X vector": the transport offers no MSI-X, so every vector read back is this.
const NO_VECTOR: u16 = 0xffff;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// The driver accepted the features.
    pub const FEATURES_OK: u8 = 8;
    /// The device failed and must be reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// ISR status bits.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// What a BAR 0 write asks of the device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarWrite {
    /// Nothing for the device.
    None,
    /// The driver notified queue `n` (it has new buffers).
    QueueNotify(u16),
    /// The driver set DRIVER_OK: the device may start using its queues.
    Activated,
    /// The driver reset the device (status 0): the device drops its queue state.
    Reset,
}

/// The configuration access that byte `offset` of an ECAM window (the PCIe enhanced
/// configuration mechanism: 4 KiB per function, bus in bits 27:20, device 19:15, function
/// 14:12) makes: the address of its dword in the format of port 0xCF8 (enable bit set) and the
/// byte within the dword. `None` for the extended space past a function's first 256 bytes (no
/// device here has extended capabilities) and past the 256 buses.
pub fn ecam_config_address(offset: u64) -> Option<(u32, u8)> {
    let register = offset & 0xfff;
    if register >= 0x100 || offset >= 1 << 28 {
        return None;
    }
    let function = ((offset >> 12) & 0xffff) as u32;
    Some((
        1 << 31 | function << 8 | (register as u32 & 0xfc),
        (register & 3) as u8,
    ))
}

/// One virtio device on the PCI bus.
pub struct VirtioPciTransport<D: VirtioDevice> {
    device: D,
    /// BAR 0's guest-physical base (32-bit memory BAR).
    bar_base: u32,
    /// The next read of BAR 0 returns its size mask (the driver wrote all ones).
    bar_sizing: bool,
    /// The same for BAR 0's upper half (BAR 1).
    bar_high_sizing: bool,
    command: u16,
    interrupt_line: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    device_status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
}

/// Little-endian bytes of `value` at `offset` of a register of `width` bytes, for a read of
/// `data.len()` bytes at `at` (any part of the register the read covers).
fn put(data: &mut [u8], at: u64, offset: u64, width: u64, value: u64) {
    let bytes = value.to_le_bytes();
    for (i, byte) in data.iter_mut().enumerate() {
        let Some(position) = at.checked_add(i as u64) else {
            return;
        };
        if let Some(index) = position.checked_sub(offset).filter(|i| *i < width) {
            *byte = bytes[index as usize];
        }
    }
}

/// `data` as a little-endian number (at most 8 bytes).
fn value_of(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = data.len().min(8);
    bytes[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(bytes)
}

impl<D: VirtioDevice> VirtioPciTransport<D> {
    /// The transport of `device` with BAR 0 at `bar_base` (16 KiB aligned) and the legacy
    /// interrupt line `interrupt_line`.
    pub fn new(device: D, bar_base: u32, interrupt_line: u8) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            // A size of 0 or one that is not a power of two is refused by the crate: such a
            // queue is created with the crate's largest size instead (it never happens for the
            // devices here, whose sizes are constants).
            .map(|&max| Queue::new(max).unwrap_or_else(|_| Queue::new(256).expect("valid size")))
            .collect();
        Self {
            device,
            bar_base: bar_base & !(BAR_SIZE as u32 - 1),
            bar_sizing: false,
            bar_high_sizing: false,
            command: 0,
            interrupt_line,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            device_status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            isr: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The queues as the driver set them up.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    /// The device and its queue `index` together (the device moves buffers through it).
    ///
    /// # Panics
    ///
    /// If the device has no queue `index` (a constant of the caller's device model).
    pub fn device_and_queue(&mut self, index: u16) -> (&mut D, &mut Queue) {
        (&mut self.device, &mut self.queues[usize::from(index)])
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The device status the driver wrote.
    pub fn device_status(&self) -> u8 {
        self.device_status
    }

    /// Whether the guest-physical address `address` lies in BAR 0; its offset there. The BAR
    /// decodes whatever the command register says: Hermit never sets its memory-space bit.
    pub fn bar_offset(&self, address: u64) -> Option<u64> {
        address
            .checked_sub(u64::from(self.bar_base))
            .filter(|offset| *offset < BAR_SIZE)
    }

    /// Whether a read at BAR 0 offset `offset` reads (and so clears) the ISR status.
    pub fn reads_isr(offset: u64) -> bool {
        (ISR..ISR + ISR_LEN).contains(&offset)
    }

    /// Marks a queue interrupt (ISR bit 0); the caller raises the interrupt line.
    pub fn signal_used_queue(&mut self) {
        self.isr |= ISR_QUEUE;
    }

    /// The guest-physical address at which the driver notifies queue `queue`.
    pub fn notify_address(&self, queue: u16) -> u64 {
        u64::from(self.bar_base) + NOTIFY + u64::from(queue) * u64::from(NOTIFY_MULTIPLIER)
    }

    /// Marks the device broken (DEVICE_NEEDS_RESET and a configuration interrupt).
    pub fn set_needs_reset(&mut self) {
        self.device_status |= status::DEVICE_NEEDS_RESET;
        self.isr |= ISR_CONFIG;
    }

    /// Reads a dword of the PCI configuration space (`offset` is rounded down to a dword).
    pub fn config_read(&mut self, offset: u8) -> u32 {
        let offset = offset & !3;
        let device_id = MODERN_DEVICE_BASE.wrapping_add(self.device.device_type());
        match offset {
            0x00 => u32::from(VIRTIO_VENDOR) | u32::from(device_id) << 16,
            0x04 => u32::from(self.command) | u32::from(STATUS_CAPABILITIES) << 16,
            // Revision 1 (modern), class: network controller / Ethernet for a network card.
            0x08 => 1 | class_code(self.device.device_type()) << 8,
            0x0c => 0,
            // BAR 0 is a prefetchable 64-bit memory BAR (type 0b10 in bits 2:1, bit 3), as
            // Hermit maps only those; its upper half (BAR 1) is 0: the BAR lies below 4 GiB.
            0x10 => {
                let address = if std::mem::take(&mut self.bar_sizing) {
                    !(BAR_SIZE as u32 - 1)
                } else {
                    self.bar_base
                };
                address | BAR_64_BIT
            }
            0x14 => {
                if std::mem::take(&mut self.bar_high_sizing) {
                    u32::MAX
                } else {
                    0
                }
            }
            // Subsystem vendor and id: the virtio device id, as the specification suggests.
            0x2c => u32::from(VIRTIO_VENDOR) | u32::from(self.device.device_type()) << 16,
            0x34 => u32::from(CAPABILITIES),
            // Interrupt pin A.
            0x3c => u32::from(self.interrupt_line) | 1 << 8,
            _ => self.capability_dword(offset),
        }
    }

    /// Writes a dword of the PCI configuration space: the command register, BAR 0 (sizing or a
    /// new base) and the interrupt line; everything else is read-only.
    pub fn config_write(&mut self, offset: u8, value: u32) {
        match offset & !3 {
            0x04 => self.command = (value & 0x0407) as u16,
            0x10 if value == u32::MAX => self.bar_sizing = true,
            0x10 => self.bar_base = value & !(BAR_SIZE as u32 - 1),
            // The upper half stays 0 (a driver moving the BAR above 4 GiB is not followed).
            0x14 if value == u32::MAX => self.bar_high_sizing = true,
            0x3c => self.interrupt_line = value as u8,
            _ => {}
        }
    }

    fn capability_dword(&self, offset: u8) -> u32 {
        // (configuration offset, cfg_type, BAR offset, length, next capability)
        const LIST: [(u8, u8, u64, u64, u8); 4] = [
            (0x40, CAP_COMMON, COMMON, COMMON_LEN, 0x50),
            (0x50, CAP_NOTIFY, NOTIFY, NOTIFY_LEN, 0x64),
            (0x64, CAP_ISR, ISR, ISR_LEN, 0x74),
            (0x74, CAP_DEVICE, DEVICE, DEVICE_LEN, 0),
        ];
        for (at, cfg_type, bar_offset, length, next) in LIST {
            let cap_len: u8 = if cfg_type == CAP_NOTIFY { 20 } else { 16 };
            if offset < at || offset >= at + cap_len {
                continue;
            }
            return match offset - at {
                // cap_vndr (vendor-specific), cap_next, cap_len, cfg_type.
                0 => {
                    0x09 | u32::from(next) << 8
                        | u32::from(cap_len) << 16
                        | u32::from(cfg_type) << 24
                }
                // bar 0, id 0, padding.
                4 => 0,
                8 => bar_offset as u32,
                12 => length as u32,
                _ => NOTIFY_MULTIPLIER,
            };
        }
        0
    }

    /// Reads `data.len()` bytes at `offset` of BAR 0.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if (COMMON..COMMON + COMMON_LEN).contains(&offset) {
            self.read_common(offset - COMMON, data);
        } else if Self::reads_isr(offset) {
            // Reading the ISR status clears it.
            put(
                data,
                offset - ISR,
                0,
                1,
                u64::from(std::mem::take(&mut self.isr)),
            );
        } else if offset >= DEVICE && offset.saturating_add(len) <= DEVICE + DEVICE_LEN {
            self.device.read_config(offset - DEVICE, data);
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn read_common(&self, at: u64, data: &mut [u8]) {
        let features = self.device.features();
        let feature_word = |select: u32| match select {
            0 => features & 0xffff_ffff,
            1 => features >> 32,
            _ => 0,
        };
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features & 0xffff_ffff,
            1 => self.driver_features >> 32,
            _ => 0,
        };
        let queue = self.selected_queue();
        let queue_size = queue.map_or(0, |q| q.size());
        let queue_ready = queue.is_some_and(|q| q.ready());
        let (desc, avail, used) = queue.map_or((0, 0, 0), |q| {
            (q.desc_table(), q.avail_ring(), q.used_ring())
        });
        let registers: [(u64, u64, u64); 18] = [
            (0x00, 4, u64::from(self.device_feature_select)),
            (0x04, 4, feature_word(self.device_feature_select)),
            (0x08, 4, u64::from(self.driver_feature_select)),
            (0x0c, 4, driver_word),
            (0x10, 2, u64::from(NO_VECTOR)),
            (0x12, 2, self.queues.len() as u64),
            (0x14, 1, u64::from(self.device_status)),
            (0x15, 1, u64::from(self.config_generation)),
            (0x16, 2, u64::from(self.queue_select)),
            (0x18, 2, u64::from(queue_size)),
            (0x1a, 2, u64::from(NO_VECTOR)),
            (0x1c, 2, u64::from(queue_ready)),
            // queue_notify_off: the queue's index (times NOTIFY_MULTIPLIER in the area).
            (0x1e, 2, u64::from(self.queue_select)),
            (0x20, 8, desc),
            (0x28, 8, avail),
            (0x30, 8, used),
            (0x38, 2, 0),
            (0x3a, 2, 0),
        ];
        for (offset, width, value) in registers {
            put(data, at, offset, width, value);
        }
    }

    /// Writes `data` at `offset` of BAR 0; what the device model has to do about it.
    pub fn bar_write(&mut self, offset: u64, data: &[u8]) -> BarWrite {
        if (NOTIFY..NOTIFY + NOTIFY_LEN).contains(&offset) {
            let queue = (offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
            return match u16::try_from(queue) {
                Ok(queue) if usize::from(queue) < self.queues.len() => BarWrite::QueueNotify(queue),
                _ => BarWrite::None,
            };
        }
        if offset >= DEVICE && offset.saturating_add(data.len() as u64) <= DEVICE + DEVICE_LEN {
            self.device.write_config(offset - DEVICE, data);
            return BarWrite::None;
        }
        if offset < COMMON + COMMON_LEN {
            return self.write_common(offset - COMMON, data);
        }
        BarWrite::None
    }

    fn write_common(&mut self, at: u64, data: &[u8]) -> BarWrite {
        let value = value_of(data);
        let width = data.len() as u64;
        // The driver writes each field with its natural width; 64-bit queue addresses may be
        // written as two 32-bit halves.
        match (at, width) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0c, 4) => self.write_driver_features(value as u32),
            (0x14, 1) => return self.write_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) => self.with_queue(|q| q.set_size(value as u16)),
            (0x1c, 2) => self.with_queue(|q| q.set_ready(value == 1)),
            (0x20 | 0x28 | 0x30, 8) => {
                self.write_queue_address(at, Some(value as u32), Some((value >> 32) as u32))
            }
            (0x20 | 0x28 | 0x30, 4) => self.write_queue_address(at, Some(value as u32), None),
            (0x24 | 0x2c | 0x34, 4) => self.write_queue_address(at - 4, None, Some(value as u32)),
            _ => {}
        }
        BarWrite::None
    }

    fn write_driver_features(&mut self, word: u32) {
        // Features may change only before FEATURES_OK, and only to ones the device offers.
        if self.device_status & status::FEATURES_OK != 0 {
            return;
        }
        let offered = self.device.features();
        let (mask, shift) = match self.driver_feature_select {
            0 => (0xffff_ffffu64, 0),
            1 => (0xffff_ffff << 32, 32),
            _ => return,
        };
        let word = (u64::from(word) << shift) & offered;
        self.driver_features = (self.driver_features & !mask) | word;
    }

    fn write_status(&mut self, value: u8) -> BarWrite {
        if value == 0 {
            self.reset();
            return BarWrite::Reset;
        }
        let before = self.device_status;
        let mut value = value;
        // FEATURES_OK holds only if the driver accepted VIRTIO_F_VERSION_1.
        let version_1 = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        if value & status::FEATURES_OK != 0 && self.driver_features & version_1 == 0 {
            value &= !status::FEATURES_OK;
        }
        self.device_status = value | (before & status::DEVICE_NEEDS_RESET);
        // Whenever DRIVER_OK comes on, with FEATURES_OK or (from a driver that skipped it)
        // without: the device model checks the queues before it uses them.
        if before & status::DRIVER_OK == 0 && self.device_status & status::DRIVER_OK != 0 {
            // With VIRTIO_RING_F_EVENT_IDX the driver suppresses notifications and interrupts
            // through the rings' event fields instead of their flags: the queues must know.
            let event_idx = 1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
            for queue in &mut self.queues {
                queue.set_event_idx(self.driver_features & event_idx != 0);
            }
            return BarWrite::Activated;
        }
        BarWrite::None
    }

    fn with_queue(&mut self, change: impl FnOnce(&mut Queue)) {
        // Queue registers are frozen once the driver is running.
        if self.device_status & status::DRIVER_OK != 0 {
            return;
        }
        if let Some(queue) = self.queues.get_mut(usize::from(self.queue_select)) {
            change(queue);
        }
    }

    fn write_queue_address(&mut self, at: u64, low: Option<u32>, high: Option<u32>) {
        self.with_queue(|queue| match at {
            0x20 => queue.set_desc_table_address(low, high),
            0x28 => queue.set_avail_ring_address(low, high),
            _ => queue.set_used_ring_address(low, high),
        });
    }

    /// Back to the state after power-on (the driver wrote status 0).
    fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.device_status = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.queue_select = 0;
        self.isr = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
    }
}

/// The PCI class code (class, subclass, programming interface) of a virtio device type.
fn class_code(device_type: u16) -> u32 {
    match device_type {
        // Network controller, Ethernet.
        1 => 0x02_00_00,
        // Other.
        _ => 0xff_00_00,
    }
}

#[cfg(test)]
mod tests;
