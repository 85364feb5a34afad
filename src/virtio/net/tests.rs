//! The network card against a driver written here: rings and buffers laid out in guest memory
//! by hand, as a guest's driver would, including hostile ones.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const RAM: u64 = 0x10_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const BUFFERS: u64 = 0x8000;
const SIZE: u16 = 16;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// A driver's view of one queue.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    avail_idx: u16,
}

impl<'m> Driver<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self { mem, avail_idx: 0 }
    }

    fn queue(&self, event_idx: bool) -> Queue {
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_size(SIZE);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        assert!(queue.is_valid(self.mem));
        queue
    }

    fn descriptor(&self, index: u16, address: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(index);
        self.mem.write_obj(address, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    fn post(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// (descriptor id, length) of used element `n`.
    fn used(&self, n: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(n % SIZE);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// A driver on `mem`, its queue (with event indexes or not) and a card.
fn card(mem: &GuestMemoryMmap, event_idx: bool) -> (Driver<'_>, Queue, NetDevice) {
    let driver = Driver::new(mem);
    let queue = driver.queue(event_idx);
    (driver, queue, NetDevice::new([2, 0, 0, 0, 0, 1], 1500))
}

fn header_and(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; NET_HEADER_LEN];
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn transmitted_frames_come_out_whole_and_their_buffers_go_back() {
    let mem = memory();
    let mut driver = Driver::new(&mem);
    let mut queue = driver.queue(false);
    // Frame 1: header and payload in two descriptors; frame 2: one descriptor.
    mem.write_slice(&[0; NET_HEADER_LEN], GuestAddress(BUFFERS))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(BUFFERS + 0x100))
        .unwrap();
    mem.write_slice(&header_and(b"world!"), GuestAddress(BUFFERS + 0x200))
        .unwrap();
    driver.descriptor(0, BUFFERS, NET_HEADER_LEN as u32, NEXT, 1);
    driver.descriptor(1, BUFFERS + 0x100, 5, 0, 0);
    driver.descriptor(2, BUFFERS + 0x200, NET_HEADER_LEN as u32 + 6, 0, 0);
    driver.post(0);
    driver.post(2);
    let mut device = NetDevice::new([2, 0, 0, 0, 0, 1], 1500);
    let mut frames = Vec::new();
    let interrupt = device
        .take_tx_frames(&mut queue, &mem, &mut frames)
        .unwrap();
    assert!(interrupt);
    assert_eq!(frames, vec![header_and(b"hello"), header_and(b"world!")]);
    assert_eq!(driver.used_idx(), 2);
    assert_eq!(driver.used(0), (0, 0));
    assert_eq!(driver.used(1), (2, 0));
    assert_eq!(device.counters.tx_frames, 2);
    assert_eq!(device.counters.tx_bytes, 11);
    // Nothing new: nothing taken, no interrupt.
    let mut more = Vec::new();
    assert!(!device.take_tx_frames(&mut queue, &mem, &mut more).unwrap());
    assert!(more.is_empty());
}

#[test]
fn a_received_frame_fills_the_next_posted_buffer() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    let frame = header_and(b"ping");
    // No buffer posted yet: the frame waits.
    assert_eq!(
        device.deliver_rx_frame(&mut queue, &mem, &frame).unwrap(),
        None
    );
    // A buffer split in two descriptors (header, then data).
    driver.descriptor(0, BUFFERS, NET_HEADER_LEN as u32, NEXT | WRITE, 1);
    driver.descriptor(1, BUFFERS + 0x100, 1514, WRITE, 0);
    driver.post(0);
    assert_eq!(
        device.deliver_rx_frame(&mut queue, &mem, &frame).unwrap(),
        Some(true)
    );
    let mut data = [0u8; 4];
    mem.read_slice(&mut data, GuestAddress(BUFFERS + 0x100))
        .unwrap();
    assert_eq!(&data, b"ping");
    assert_eq!(driver.used(0), (0, frame.len() as u32));
    assert_eq!(device.counters.rx_frames, 1);
    assert_eq!(device.counters.rx_bytes, 4);
}

#[test]
fn a_frame_too_large_for_the_buffer_is_dropped_and_the_buffer_returned() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    driver.descriptor(0, BUFFERS, 16, WRITE, 0);
    driver.post(0);
    let frame = header_and(&[7; 100]);
    assert_eq!(
        device.deliver_rx_frame(&mut queue, &mem, &frame).unwrap(),
        Some(true)
    );
    assert_eq!(driver.used(0), (0, 0));
    assert_eq!(device.counters.rx_frames, 0);
    assert_eq!(device.counters.rx_dropped, 1);
}

/// Posts `count` receive buffers of `len` bytes each (one descriptor each, heads 0, 1, ...).
fn post_rx_buffers(driver: &mut Driver<'_>, count: u16, len: u32) {
    for n in 0..count {
        let address = BUFFERS + 0x1000 * u64::from(n);
        driver.descriptor(n, address, len, WRITE, 0);
        driver.post(n);
    }
}

#[test]
fn with_mergeable_buffers_a_large_frame_spreads_and_says_how_many() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    // Hermit's buffers with VIRTIO_NET_F_MRG_RXBUF: a header and 1514 bytes.
    post_rx_buffers(&mut driver, 3, 1526);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let frame = header_and(&payload);
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &frame)
            .unwrap(),
        Some(true)
    );
    // Two buffers, published together; the third stays posted.
    assert_eq!(driver.used_idx(), 2);
    assert_eq!(driver.used(0), (0, 1526));
    assert_eq!(driver.used(1), (1, frame.len() as u32 - 1526));
    let mut first = vec![0u8; 1526];
    let mut second = vec![0u8; frame.len() - 1526];
    mem.read_slice(&mut first, GuestAddress(BUFFERS)).unwrap();
    mem.read_slice(&mut second, GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([first[NUM_BUFFERS], first[11]]), 2);
    assert_eq!(&first[..NUM_BUFFERS], &frame[..NUM_BUFFERS]);
    assert_eq!([&first[NET_HEADER_LEN..], &second[..]].concat(), payload);
    assert_eq!(device.counters.rx_frames, 1);
    assert_eq!(device.counters.rx_bytes, 3000);
    // A small frame takes the third buffer alone, num_buffers 1.
    let small = header_and(b"pong");
    device
        .deliver_rx_frame_mergeable(&mut queue, &mem, &small)
        .unwrap();
    assert_eq!(driver.used(2), (2, small.len() as u32));
    let num_buffers: u16 = mem
        .read_obj(GuestAddress(BUFFERS + 0x2000 + NUM_BUFFERS as u64))
        .unwrap();
    assert_eq!(num_buffers, 1);
}

#[test]
fn with_mergeable_buffers_too_few_posted_leaves_the_queue_as_it_was() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    post_rx_buffers(&mut driver, 1, 1526);
    let frame = header_and(&[9; 3000]);
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &frame)
            .unwrap(),
        None
    );
    assert_eq!(driver.used_idx(), 0);
    assert_eq!(queue.next_avail(), 0, "the buffer taken is given back");
    // A second buffer arrives: now the frame goes in.
    driver.descriptor(1, BUFFERS + 0x1000, 1526, WRITE, 0);
    driver.post(1);
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &frame)
            .unwrap(),
        Some(true)
    );
    assert_eq!(driver.used_idx(), 2);
}

#[test]
fn with_mergeable_buffers_event_indexes_count_every_buffer_of_the_frame() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, true);
    post_rx_buffers(&mut driver, 3, 1526);
    // used_event 0: the driver wants an interrupt once element 0 is used, which is the first
    // of the frame's two buffers, not the one virtio-queue added last.
    let used_event = AVAIL + 4 + 2 * u64::from(SIZE);
    mem.write_obj(0u16, GuestAddress(used_event)).unwrap();
    let frame = header_and(&[5; 2000]);
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &frame)
            .unwrap(),
        Some(true)
    );
    // used_event 5, far ahead: no interrupt for the next one.
    mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &header_and(b"x"))
            .unwrap(),
        Some(false)
    );
}

#[test]
fn with_mergeable_buffers_a_frame_shorter_than_its_header_goes_in_as_it_is() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    post_rx_buffers(&mut driver, 1, 1526);
    let short = [7u8; 5];
    assert_eq!(
        device
            .deliver_rx_frame_mergeable(&mut queue, &mem, &short)
            .unwrap(),
        Some(true)
    );
    assert_eq!(driver.used(0), (0, 5));
}

#[test]
fn with_mergeable_buffers_one_shorter_than_the_header_breaks_the_card() {
    let mem = memory();
    let (mut driver, mut queue, mut device) = card(&mem, false);
    post_rx_buffers(&mut driver, 2, 8);
    let error = device
        .deliver_rx_frame_mergeable(&mut queue, &mem, &header_and(b"data"))
        .unwrap_err();
    assert!(
        error.to_string().contains("shorter than the header"),
        "{error}"
    );
}

#[test]
fn hostile_transmit_chains_are_errors_not_host_accesses() {
    type Setup = fn(&Driver<'_>);
    let cases: [(&str, Setup); 5] = [
        ("outside RAM", |d| d.descriptor(0, RAM - 4, 64, 0, 0)),
        ("address overflow", |d| {
            d.descriptor(0, u64::MAX - 8, 64, 0, 0)
        }),
        ("device-writable", |d| {
            d.descriptor(0, BUFFERS, 64, WRITE, 0)
        }),
        ("loop", |d| d.descriptor(0, BUFFERS, 64, NEXT, 0)),
        ("next out of the table", |d| {
            d.descriptor(0, BUFFERS, 64, NEXT, SIZE + 3)
        }),
    ];
    for (name, setup) in cases {
        let mem = memory();
        let mut driver = Driver::new(&mem);
        let mut queue = driver.queue(false);
        setup(&driver);
        driver.post(0);
        let mut device = NetDevice::new([2, 0, 0, 0, 0, 1], 1500);
        let mut frames = Vec::new();
        let result = device.take_tx_frames(&mut queue, &mem, &mut frames);
        assert!(
            matches!(
                result,
                Err(VirtioError::BadChain {
                    queue: TX_QUEUE,
                    ..
                })
            ),
            "{name}: {result:?}"
        );
        assert!(frames.is_empty(), "{name}");
    }
}

#[test]
fn a_frame_longer_than_the_limit_is_refused() {
    let mem = memory();
    let mut driver = Driver::new(&mem);
    let mut queue = driver.queue(false);
    // Sixteen descriptors of 8 KiB each, chained: 128 KiB.
    for index in 0..SIZE {
        let next = if index + 1 < SIZE { NEXT } else { 0 };
        driver.descriptor(index, BUFFERS, 0x2000, next, index + 1);
    }
    driver.post(0);
    let mut device = NetDevice::new([2, 0, 0, 0, 0, 1], 1500);
    let result = device.take_tx_frames(&mut queue, &mem, &mut Vec::new());
    assert!(
        matches!(result, Err(VirtioError::BadChain { .. })),
        "{result:?}"
    );
}

#[test]
fn event_indexes_suppress_interrupts_the_driver_does_not_want() {
    let mem = memory();
    let mut driver = Driver::new(&mem);
    let mut queue = driver.queue(true);
    mem.write_slice(&header_and(b"x"), GuestAddress(BUFFERS))
        .unwrap();
    driver.descriptor(0, BUFFERS, NET_HEADER_LEN as u32 + 1, 0, 0);
    driver.descriptor(1, BUFFERS, NET_HEADER_LEN as u32 + 1, 0, 0);
    // used_event (after the avail ring) = 1: interrupt only once used idx passes 1.
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
    mem.write_obj(1u16, used_event).unwrap();
    driver.post(0);
    let mut device = NetDevice::new([2, 0, 0, 0, 0, 1], 1500);
    let mut frames = Vec::new();
    assert!(
        !device
            .take_tx_frames(&mut queue, &mem, &mut frames)
            .unwrap()
    );
    driver.post(1);
    assert!(
        device
            .take_tx_frames(&mut queue, &mem, &mut frames)
            .unwrap()
    );
    assert_eq!(frames.len(), 2);
    // The device asks to be notified at the next buffer (avail_event after the used ring).
    let avail_event = GuestAddress(USED + 4 + 8 * u64::from(SIZE));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
}

#[test]
fn the_configuration_space_holds_mac_status_and_mtu() {
    let device = NetDevice::new([2, 0x11, 0x22, 0x33, 0x44, 0x55], 1500);
    let mut config = [0u8; 14];
    device.read_config(0, &mut config);
    assert_eq!(&config[..6], &[2, 0x11, 0x22, 0x33, 0x44, 0x55]);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert_eq!(
        u16::from_le_bytes([config[8], config[9]]),
        1,
        "one queue pair"
    );
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1500);
    assert_eq!(&config[12..], &[0, 0]);
    let mut far = [0xffu8; 4];
    device.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    assert_eq!(device.device_type(), 1);
    assert_ne!(device.features() & 1 << VIRTIO_F_VERSION_1, 0);
}
