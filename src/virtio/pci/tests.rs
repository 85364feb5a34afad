//! The PCI transport as a Hermit kernel's virtio-pci driver uses it: identification, BAR
//! sizing, the capability list, the initialisation sequence, notifications, the ISR, and
//! accesses of every offset and length.

use super::*;
use crate::virtio::net::NetDevice;

const BASE: u32 = 0xfe00_0000;

fn transport() -> VirtioPciTransport<NetDevice> {
    VirtioPciTransport::new(NetDevice::new([2, 0, 0, 0, 0, 9], 1500), BASE, 11)
}

fn write(t: &mut VirtioPciTransport<NetDevice>, offset: u64, value: u64, width: usize) -> BarWrite {
    t.bar_write(offset, &value.to_le_bytes()[..width])
}

fn read(t: &mut VirtioPciTransport<NetDevice>, offset: u64, width: usize) -> u64 {
    let mut data = [0u8; 8];
    t.bar_read(offset, &mut data[..width]);
    u64::from_le_bytes(data)
}

#[test]
fn the_device_identifies_as_a_modern_virtio_network_card() {
    let mut t = transport();
    assert_eq!(t.config_read(0), 0x1041_1af4);
    assert_eq!(t.config_read(8) >> 8, 0x02_00_00);
    assert_eq!(t.config_read(8) & 0xff, 1, "revision 1 (modern)");
    assert_ne!(t.config_read(4) >> 16 & u32::from(STATUS_CAPABILITIES), 0);
    assert_eq!(t.config_read(0x3c), 11 | 1 << 8, "line 11, pin INTA");
    assert_eq!(t.config_read(0x2c) >> 16, 1, "subsystem id: virtio network");
}

#[test]
fn bar_0_sizes_like_a_16_kib_memory_bar() {
    let mut t = transport();
    t.config_write(0x10, u32::MAX);
    assert_eq!(
        t.config_read(0x10),
        0xffff_c00c,
        "size mask, prefetchable 64-bit memory BAR"
    );
    assert_eq!(
        t.config_read(0x10),
        BASE | 0xc,
        "the size mask is read once"
    );
    t.config_write(0x14, u32::MAX);
    assert_eq!(t.config_read(0x14), u32::MAX, "upper half: below 4 GiB");
    assert_eq!(t.config_read(0x14), 0);
    t.config_write(0x04, 0b10);
    assert_eq!(t.bar_offset(u64::from(BASE) + 0x10), Some(0x10));
    assert_eq!(t.bar_offset(u64::from(BASE) + BAR_SIZE), None);
    assert_eq!(t.bar_offset(u64::from(BASE) - 1), None);
    t.config_write(0x10, 0xd000_1234);
    assert_eq!(t.config_read(0x10), 0xd000_000c, "aligned to the BAR size");
}

#[test]
fn the_capability_list_names_the_four_regions() {
    let mut t = transport();
    let mut at = t.config_read(0x34) as u8;
    let mut found = Vec::new();
    while at != 0 {
        let header = t.config_read(at);
        assert_eq!(header & 0xff, 0x09, "vendor-specific capability");
        let cfg_type = (header >> 24) as u8;
        let offset = t.config_read(at + 8);
        let length = t.config_read(at + 12);
        found.push((cfg_type, offset, length));
        if cfg_type == CAP_NOTIFY {
            assert_eq!(t.config_read(at + 16), NOTIFY_MULTIPLIER);
        }
        at = (header >> 8) as u8;
    }
    assert_eq!(
        found,
        vec![
            (1, 0x0000, 0x3c),
            (2, 0x1000, 0x1000),
            (3, 0x2000, 4),
            (4, 0x3000, 0x1000),
        ]
    );
}

#[test]
fn a_driver_initialises_the_device_and_notifies_its_queues() {
    let mut t = transport();
    let version_1 = 1u64 << 32;
    assert_eq!(write(&mut t, 0x14, 0, 1), BarWrite::Reset);
    write(
        &mut t,
        0x14,
        u64::from(status::ACKNOWLEDGE | status::DRIVER),
        1,
    );
    // Features: word 1 holds VIRTIO_F_VERSION_1 (bit 32).
    write(&mut t, 0x00, 1, 4);
    assert_eq!(read(&mut t, 0x04, 4) & 1, 1);
    write(&mut t, 0x00, 0, 4);
    let offered_low = read(&mut t, 0x04, 4);
    write(&mut t, 0x08, 0, 4);
    write(&mut t, 0x0c, 0xffff_ffff, 4);
    assert_eq!(
        t.driver_features(),
        offered_low,
        "only offered features stick"
    );
    // FEATURES_OK does not hold without VERSION_1.
    write(
        &mut t,
        0x14,
        u64::from(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
        1,
    );
    assert_eq!(read(&mut t, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    write(&mut t, 0x08, 1, 4);
    write(&mut t, 0x0c, 1, 4);
    assert_eq!(t.driver_features() & version_1, version_1);
    let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write(&mut t, 0x14, u64::from(features_ok), 1);
    assert_eq!(read(&mut t, 0x14, 1) as u8, features_ok);
    // Queue 1: size, rings (in 32-bit halves), enable.
    assert_eq!(read(&mut t, 0x12, 2), 2, "two queues");
    write(&mut t, 0x16, 1, 2);
    assert_eq!(read(&mut t, 0x18, 2), 256);
    write(&mut t, 0x18, 64, 2);
    write(&mut t, 0x20, 0x1000, 4);
    write(&mut t, 0x24, 0x1, 4);
    write(&mut t, 0x28, 0x2000, 8);
    write(&mut t, 0x30, 0x3000, 8);
    write(&mut t, 0x1c, 1, 2);
    assert_eq!(read(&mut t, 0x20, 8), 0x1_0000_1000);
    assert_eq!(read(&mut t, 0x1e, 2), 1, "notify offset = queue index");
    assert_eq!(read(&mut t, 0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(
        write(&mut t, 0x14, u64::from(features_ok | status::DRIVER_OK), 1),
        BarWrite::Activated
    );
    let queue = &t.queues_mut()[1];
    assert_eq!((queue.size(), queue.ready()), (64, true));
    assert_eq!(
        queue.event_idx_enabled(),
        t.driver_features() & 1 << 29 != 0,
        "event indexes as negotiated"
    );
    // Frozen now.
    write(&mut t, 0x18, 8, 2);
    assert_eq!(read(&mut t, 0x18, 2), 64);
    assert_eq!(write(&mut t, 0x1000 + 4, 1, 2), BarWrite::QueueNotify(1));
    assert_eq!(write(&mut t, 0x1000, 0, 2), BarWrite::QueueNotify(0));
    assert_eq!(
        write(&mut t, 0x1000 + 8, 0, 2),
        BarWrite::None,
        "no queue 2"
    );
    // A reset forgets everything.
    assert_eq!(write(&mut t, 0x14, 0, 1), BarWrite::Reset);
    assert_eq!(t.device_status(), 0);
    assert_eq!(t.driver_features(), 0);
    assert!(!t.queues_mut()[1].ready());
}

#[test]
fn driver_ok_without_features_ok_still_has_the_queues_checked() {
    // Otherwise the card would run (DRIVER_OK) with queues nobody checked, and a receive would
    // write the used ring of a queue the driver never enabled (at guest address 0).
    let mut t = transport();
    let driver = status::ACKNOWLEDGE | status::DRIVER;
    write(&mut t, 0x14, u64::from(driver), 1);
    assert_eq!(
        write(&mut t, 0x14, u64::from(driver | status::DRIVER_OK), 1),
        BarWrite::Activated
    );
    assert_eq!(
        write(&mut t, 0x14, u64::from(driver | status::DRIVER_OK), 1),
        BarWrite::None,
        "only when DRIVER_OK comes on"
    );
}

#[test]
fn reading_the_isr_clears_it() {
    let mut t = transport();
    t.signal_used_queue();
    assert_eq!(read(&mut t, 0x2000, 1), 1);
    assert_eq!(read(&mut t, 0x2000, 1), 0);
    t.set_needs_reset();
    assert_eq!(read(&mut t, 0x2000, 1), 2);
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn the_device_configuration_is_the_cards() {
    let mut t = transport();
    assert_eq!(read(&mut t, 0x3000, 4), 0x0000_0002);
    assert_eq!(read(&mut t, 0x3004, 2), 0x0900);
    assert_eq!(read(&mut t, 0x300a, 2), 1500);
}

#[test]
fn every_offset_and_length_is_answered() {
    let mut t = transport();
    for offset in 0..=255u8 {
        let _ = t.config_read(offset);
    }
    for offset in (0..BAR_SIZE + 16).chain([u64::MAX - 3, u64::MAX]) {
        for len in 0..=8 {
            let mut data = [0u8; 8];
            t.bar_read(offset, &mut data[..len]);
            let _ = t.bar_write(offset, &[0xa5; 8][..len]);
        }
    }
}

#[test]
fn ecam_offsets_name_bus_device_function_and_register() {
    // Bus 0, device 1, function 0, register 0x3c: the card's interrupt line.
    assert_eq!(ecam_config_address(0x803c), Some((0x8000_083c, 0)));
    assert_eq!(ecam_config_address(0x803d), Some((0x8000_083c, 1)));
    assert_eq!(ecam_config_address(0x8000), Some((0x8000_0800, 0)));
    // Bus 3, device 31, function 7, register 0xfc.
    let offset = 3 << 20 | 31 << 15 | 7 << 12 | 0xfc;
    assert_eq!(ecam_config_address(offset), Some((0x8003_fffc, 0)));
    // The extended configuration space and offsets past 256 buses are nobody's.
    assert_eq!(ecam_config_address(0x8100), None);
    assert_eq!(ecam_config_address(0x8fff), None);
    assert_eq!(ecam_config_address(1 << 28), None);
    assert_eq!(ecam_config_address(u64::MAX), None);
}
