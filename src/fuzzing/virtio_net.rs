//! Fuzz target `virtio_net`: the virtio network card (`NetDevice` behind `VirtioPciTransport`)
//! under an arbitrary guest driver, wired up as the VM's network service wires it (a transmit
//! notification sends on the spot through the checksum offload, DRIVER_OK has the queues
//! checked, a failure marks the card DEVICE_NEEDS_RESET, a broken card moves no frames), without
//! a host backend: received frames come from the input, sent ones are only checked.
//!
//! The input is a small machine (64, 128 or 256 KiB of RAM at 0, maybe a second 64 KiB region
//! right after it or at 1 MiB) and up to [`MAX_STEPS`] driver steps, read one after the other:
//! well-formed initialisations (features, queue sizes, ring addresses from plausible layouts to
//! raw values, with or without FEATURES_OK and DRIVER_OK); raw status, common-configuration,
//! BAR and PCI configuration accesses; descriptor chains posted on either queue, direct or
//! through an indirect table (addresses in the buffer area, the rings, the second region, across
//! the end of RAM or raw; lengths from a header to 4 GiB; natural, reversed, indirect or raw
//! flags; automatic or raw next indexes); TCP and UDP packets over IPv4 or IPv6 posted for
//! sending (checksum requested, segmentation maybe, lengths consistent or skewed); raw writes
//! to the available index and anywhere in RAM; notifications; received frames up to the card's
//! largest.
//!
//! Checks, partly against a reference that reads a copy of guest memory (`virtio_net_model`):
//!
//! * no panic; a transmit that never ended would collect frames until libFuzzer reports the
//!   process out of memory;
//! * a transmit writes nothing but its used ring and returns frames of 12 to 65562 bytes; a
//!   receive writes nothing but its used ring and the device-writable descriptors of the buffer
//!   it takes;
//! * where the device's own used-ring writes cannot change what it reads, a transmit returns
//!   exactly the frames posted and fails exactly at the first unusable chain, and a receive
//!   fails, waits, drops or delivers as the reference says, the frame's bytes in the buffer's
//!   descriptors and the right used element;
//! * the checksum offload refuses exactly the frames asking for segmentation and otherwise
//!   clears the header and changes at most one 16-bit field, on request, to a checksum that a
//!   sum of this module's own confirms;
//! * the counters follow; DEVICE_NEEDS_RESET stays set until a reset; a running card has both
//!   queues enabled; a well-formed initialisation reads back what it wrote.

use arbitrary::{Arbitrary, Unstructured};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::virtio_net_model::{
    DESCRIPTOR_SIZE, INDIRECT, NEXT, QueueView, RxOutcome, Snapshot, WRITE, predict_rx, predict_tx,
    used_ring,
};
use crate::virtio::net::{MAX_FRAME_LEN, NET_HEADER_LEN, NetDevice, RX_QUEUE, TX_QUEUE};
use crate::virtio::offload::{self, OffloadError};
use crate::virtio::pci::{BAR_SIZE, BarWrite, VirtioPciTransport, status};

/// The rings of queue `q` in the plausible layouts start at `RINGS + q * QUEUE_AREA`.
const RINGS: u64 = 0x1000;
const QUEUE_AREA: u64 = 0x4000;
/// Buffers from here to the end of the first region.
const BUFFERS: u64 = RINGS + 2 * QUEUE_AREA;
/// The second region, when it is not right after the first.
const SECOND_APART: u64 = 0x10_0000;
const SECOND_SIZE: u64 = 0x1_0000;
/// Most driver steps per input.
pub(super) const MAX_STEPS: usize = 64;
/// Most descriptors per posted chain.
const MAX_CHAIN: usize = 8;
/// VIRTIO_F_VERSION_1.
const VERSION_1: u64 = 1 << 32;
/// Common configuration registers a driver writes: (offset, width).
const COMMON_REGISTERS: [(u64, usize); 13] = [
    (0x00, 4),
    (0x08, 4),
    (0x0c, 4),
    (0x14, 1),
    (0x16, 2),
    (0x18, 2),
    (0x1c, 2),
    (0x20, 8),
    (0x24, 4),
    (0x28, 8),
    (0x2c, 4),
    (0x30, 8),
    (0x34, 4),
];

#[derive(Debug, Arbitrary)]
pub(super) enum RamSize {
    K64,
    K128,
    K256,
}

#[derive(Debug, Arbitrary)]
pub(super) enum SecondRegion {
    None,
    /// Right after the first region (buffers may cross from one into the other).
    Adjacent,
    /// At 1 MiB, with a hole before it.
    Apart,
}

/// The machine: guest RAM and the card's identity.
#[derive(Debug, Arbitrary)]
pub(super) struct Machine {
    pub ram: RamSize,
    pub second: SecondRegion,
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// A guest-physical address.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Address {
    /// In the buffer area (after the rings of the plausible layouts).
    Buffers(u16),
    /// In the ring area.
    Rings(u16),
    /// In the second region (where it would be, if there is none).
    Second(u16),
    /// This many bytes below the end of the first region.
    RamEnd(u8),
    /// This many bytes below the end of the second region.
    SecondEnd(u8),
    Raw(u64),
}

/// A descriptor's length.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Length {
    /// The 12-byte virtio header.
    Header,
    Small(u8),
    Medium(u16),
    /// A full Ethernet frame and its header.
    Ethernet,
    /// The card's largest frame.
    Max,
    /// This much below 4 GiB.
    Huge(u8),
    Raw(u32),
}

/// A descriptor's flags. NEXT is added for all but the last descriptor, except for raw flags.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Flags {
    /// Device-writable on the receive queue, device-readable on the transmit queue.
    Natural,
    /// The other way round.
    Reversed,
    /// An indirect descriptor (pointing at whatever its address is).
    Indirect,
    Raw(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) enum Next {
    /// The following descriptor of the chain.
    Auto,
    Raw(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub(super) struct Descriptor {
    pub at: Address,
    pub len: Length,
    pub flags: Flags,
    pub next: Next,
}

/// 1 to [`MAX_CHAIN`] descriptors: a count byte, then the descriptors.
#[derive(Debug)]
pub(super) struct Chain(pub Vec<Descriptor>);

impl<'a> Arbitrary<'a> for Chain {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = usize::from(u8::arbitrary(u)?) % MAX_CHAIN + 1;
        (0..len)
            .map(|_| Descriptor::arbitrary(u))
            .collect::<arbitrary::Result<_>>()
            .map(Chain)
    }
}

/// Where a posted chain's descriptors go.
#[derive(Debug, Arbitrary)]
pub(super) enum Placement {
    /// In the queue's descriptor table, at the driver's next free slots.
    Direct,
    /// In a table at `table`, named by one indirect descriptor of the queue's table (its length
    /// that of the table unless given).
    Indirect { table: Address, len: Option<u32> },
}

#[derive(Debug, Arbitrary)]
pub(super) enum QueueSize {
    /// The size the card offers.
    Max,
    /// 2 to the power of this (mod 9).
    Power(u8),
    Raw(u16),
}

/// Where a queue's rings go.
#[derive(Debug, Arbitrary)]
pub(super) enum Rings {
    /// Its own 16 KiB area: table, available ring and used ring 4 KiB apart.
    Standard,
    /// Its own area, each ring right after the previous one (as the specification packs them).
    Tight,
    /// The receive queue's area, for both queues.
    Shared,
    /// Anywhere in the ring area (misaligned ones are refused by the queue).
    Offsets(u16, u16, u16),
    Raw(Address, Address, Address),
}

#[derive(Debug, Arbitrary)]
pub(super) struct QueueInit {
    pub size: QueueSize,
    pub rings: Rings,
    /// Ring addresses as two 32-bit halves instead of one 64-bit write.
    pub halves: bool,
    /// The queue is not enabled.
    pub disabled: bool,
}

#[derive(Debug, Arbitrary)]
pub(super) enum Features {
    /// Everything the card offers.
    Offered,
    /// Everything but VIRTIO_F_VERSION_1 (the card then refuses FEATURES_OK).
    WithoutVersion1,
    Raw(u32, u32),
}

#[derive(Debug, PartialEq, Eq, Arbitrary)]
pub(super) enum Finish {
    /// FEATURES_OK, then DRIVER_OK after the queues.
    Ready,
    /// FEATURES_OK, no DRIVER_OK.
    FeaturesOnly,
    /// DRIVER_OK without FEATURES_OK.
    SkipFeatures,
}

/// A driver's initialisation (virtio 1.x §3.1.1).
#[derive(Debug, Arbitrary)]
pub(super) struct Init {
    pub features: Features,
    pub queues: [QueueInit; 2],
    pub finish: Finish,
}

#[derive(Debug, Arbitrary)]
pub(super) enum BarOffset {
    /// Inside the BAR.
    Bar(u16),
    Raw(u64),
}

#[derive(Debug, Arbitrary)]
pub(super) enum AvailChange {
    /// Publish this many more entries (whatever the ring holds).
    Advance(u8),
    Raw(u16),
}

#[derive(Debug, Arbitrary)]
pub(super) enum NotifyQueue {
    Tx,
    Rx,
    /// This offset in the notification area (and past it).
    Raw(u16),
}

#[derive(Debug, Arbitrary)]
pub(super) enum FrameLen {
    Empty,
    Header,
    Small(u8),
    Ethernet,
    Medium(u16),
    Max,
}

/// A frame from the host: its length and a seed for its bytes.
#[derive(Debug, Arbitrary)]
pub(super) struct Frame {
    pub len: FrameLen,
    pub seed: u8,
}

#[derive(Debug, Arbitrary)]
pub(super) enum Protocol {
    Tcp,
    Udp,
    /// Another IP protocol number.
    Other(u8),
}

/// A plausible frame to send: virtio header, Ethernet (maybe with a VLAN tag), IPv4 or IPv6,
/// TCP or UDP, payload; lengths consistent unless skewed.
#[derive(Debug, Arbitrary)]
pub(super) struct Packet {
    pub at: Address,
    /// The virtio header's flags (NEEDS_CSUM is bit 0) and gso_type.
    pub flags: u8,
    pub segmentation: Option<u8>,
    pub vlan: bool,
    pub ipv6: bool,
    pub protocol: Protocol,
    /// Payload bytes (mod 2048).
    pub payload: u16,
    /// Added to the IP length field.
    pub skew: Option<i8>,
    /// The chain's second descriptor starts this far in (0 or past the end: one descriptor).
    pub split: u16,
    pub seed: u8,
}

/// One thing the driver (or the host) does.
#[derive(Debug, Arbitrary)]
pub(super) enum Step {
    Init(Init),
    Status(u8),
    /// Register `n` (mod 13) of [`COMMON_REGISTERS`].
    Common(u8, u64),
    Bar(BarOffset, u8, u64),
    BarRead(BarOffset, u8),
    Config(u8, u32),
    ConfigRead(u8),
    Post {
        rx: bool,
        placement: Placement,
        chain: Chain,
    },
    Avail {
        rx: bool,
        change: AvailChange,
    },
    /// Up to 8 bytes of a value anywhere.
    Poke(Address, u64, u8),
    /// Patterned bytes (a frame's worth at most) anywhere.
    Fill(Address, u16, u8),
    Notify(NotifyQueue),
    Receive(Frame),
    /// Event indexes on or off for both queues (the card does not offer them yet; its queues
    /// support them).
    EventIdx(bool),
    /// Writes a packet and posts it on the transmit queue.
    Send(Packet),
}

/// Guest RAM: the first region's size, the second region's base.
struct Layout {
    ram: u64,
    second: Option<u64>,
}

impl Layout {
    fn regions(&self) -> Vec<(u64, u64)> {
        let mut regions = vec![(0, self.ram)];
        regions.extend(self.second.map(|base| (base, SECOND_SIZE)));
        regions
    }

    fn second_base(&self) -> u64 {
        self.second.unwrap_or(self.ram)
    }

    fn resolve(&self, address: Address) -> u64 {
        match address {
            Address::Buffers(offset) => BUFFERS + u64::from(offset) % (self.ram - BUFFERS),
            Address::Rings(offset) => RINGS + u64::from(offset) % (2 * QUEUE_AREA),
            Address::Second(offset) => self.second_base() + u64::from(offset) % SECOND_SIZE,
            Address::RamEnd(back) => self.ram - u64::from(back),
            Address::SecondEnd(back) => self.second_base() + SECOND_SIZE - u64::from(back),
            Address::Raw(address) => address,
        }
    }
}

impl Length {
    fn bytes(self) -> u32 {
        match self {
            Length::Header => NET_HEADER_LEN as u32,
            Length::Small(len) => u32::from(len),
            Length::Medium(len) => u32::from(len),
            Length::Ethernet => NET_HEADER_LEN as u32 + 1514,
            Length::Max => MAX_FRAME_LEN as u32,
            Length::Huge(back) => u32::MAX - u32::from(back),
            Length::Raw(len) => len,
        }
    }
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let len = match self.len {
            FrameLen::Empty => 0,
            FrameLen::Header => NET_HEADER_LEN,
            FrameLen::Small(len) => usize::from(len),
            FrameLen::Ethernet => NET_HEADER_LEN + 1514,
            FrameLen::Medium(len) => usize::from(len),
            FrameLen::Max => MAX_FRAME_LEN,
        };
        pattern(len, self.seed)
    }
}

/// `len` bytes that differ from their neighbours and from other seeds' bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// What one input did (for the unit tests: which paths the seeds reach).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub transmitted: usize,
    pub delivered: usize,
    pub dropped: usize,
    pub broken: usize,
    /// Transmits and receives the reference predicted exactly.
    pub exact: usize,
    /// Checksums the offload completed.
    pub checksums: usize,
}

/// The card as the VM's network service runs it, and the driver's bookkeeping.
struct Harness {
    mem: GuestMemoryMmap,
    layout: Layout,
    transport: VirtioPciTransport<NetDevice>,
    /// BAR offsets of the common configuration and the notification area; the notification
    /// offset multiplier (from the capability list, as a driver finds them).
    common: u64,
    notify: u64,
    multiplier: u64,
    /// The driver's next free descriptor slot per queue.
    free: [u16; 2],
    /// A received frame that found no buffer yet.
    waiting: Option<Vec<u8>>,
    stats: Stats,
}

/// Runs the input's driver steps against a fresh card.
pub fn virtio_net(data: &[u8]) {
    run(data);
}

pub(super) fn run(data: &[u8]) -> Stats {
    let mut u = Unstructured::new(data);
    let Ok(machine) = Machine::arbitrary(&mut u) else {
        return Stats::default();
    };
    let mut harness = Harness::new(&machine);
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        harness.step(&step);
    }
    harness.stats
}

impl Harness {
    fn new(machine: &Machine) -> Self {
        let ram = 0x1_0000
            << match machine.ram {
                RamSize::K64 => 0,
                RamSize::K128 => 1,
                RamSize::K256 => 2,
            };
        let second = match machine.second {
            SecondRegion::None => None,
            SecondRegion::Adjacent => Some(ram),
            SecondRegion::Apart => Some(SECOND_APART),
        };
        let layout = Layout { ram, second };
        let ranges: Vec<_> = layout
            .regions()
            .into_iter()
            .map(|(base, size)| (GuestAddress(base), size as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).expect("fuzzing guest RAM");
        let device = NetDevice::new(machine.mac, machine.mtu);
        let mut transport = VirtioPciTransport::new(device, 0xfe00_0000, 11);
        let (common, notify, multiplier) = probe(&mut transport);
        Self {
            mem,
            layout,
            transport,
            common,
            notify,
            multiplier,
            free: [0; 2],
            waiting: None,
            stats: Stats::default(),
        }
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Init(init) => self.init(init),
            Step::Status(value) => self.write_status(*value),
            Step::Common(register, value) => {
                let (offset, width) = COMMON_REGISTERS[usize::from(*register) % 13];
                self.bar_write(self.common + offset, &value.to_le_bytes()[..width]);
            }
            Step::Bar(offset, width, value) => {
                let width = usize::from(*width) % 9;
                self.bar_write(bar_offset(offset), &value.to_le_bytes()[..width]);
            }
            Step::BarRead(offset, width) => {
                let mut data = [0u8; 8];
                let width = usize::from(*width) % 9;
                self.transport
                    .bar_read(bar_offset(offset), &mut data[..width]);
            }
            Step::Config(offset, value) => {
                let broken = self.broken();
                self.transport.config_write(*offset, *value);
                assert!(!broken || self.broken(), "a PCI write cleared NEEDS_RESET");
            }
            Step::ConfigRead(offset) => {
                self.transport.config_read(*offset);
            }
            Step::Post {
                rx,
                placement,
                chain,
            } => self.post(queue_of(*rx), placement, chain),
            Step::Avail { rx, change } => {
                let queue = self.view(queue_of(*rx));
                let Some(at) = queue.avail.checked_add(2) else {
                    return;
                };
                let idx: u16 = self.mem.read_obj(GuestAddress(at)).unwrap_or(0);
                let idx = match change {
                    AvailChange::Advance(n) => idx.wrapping_add(u16::from(*n)),
                    AvailChange::Raw(idx) => *idx,
                };
                let _ = self.mem.write_obj(idx, GuestAddress(at));
            }
            Step::Poke(at, value, width) => {
                let width = usize::from(*width) % 8 + 1;
                let at = self.layout.resolve(*at);
                let _ = self
                    .mem
                    .write_slice(&value.to_le_bytes()[..width], GuestAddress(at));
            }
            Step::Fill(at, len, seed) => {
                let at = self.layout.resolve(*at);
                let bytes = pattern(usize::from(*len), *seed);
                let _ = self.mem.write_slice(&bytes, GuestAddress(at));
            }
            Step::Notify(queue) => {
                let offset = match queue {
                    NotifyQueue::Tx => u64::from(TX_QUEUE) * self.multiplier,
                    NotifyQueue::Rx => u64::from(RX_QUEUE) * self.multiplier,
                    NotifyQueue::Raw(offset) => u64::from(*offset),
                };
                self.bar_write(self.notify + offset, &[0, 0]);
            }
            Step::Receive(frame) => self.receive(frame.bytes()),
            Step::EventIdx(on) => {
                for queue in self.transport.queues_mut() {
                    queue.set_event_idx(*on);
                }
            }
            Step::Send(packet) => self.send(packet),
        }
    }

    fn broken(&self) -> bool {
        self.transport.device_status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// As the network service decides: the driver is ready and the card is not broken.
    fn running(&self) -> bool {
        self.transport.device_status() & status::DRIVER_OK != 0 && !self.broken()
    }

    fn view(&mut self, queue: u16) -> QueueView {
        QueueView::of(&self.transport.queues_mut()[usize::from(queue)])
    }

    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut data = [0u8; 8];
        self.transport.bar_read(offset, &mut data[..width]);
        u64::from_le_bytes(data)
    }

    fn write_status(&mut self, value: u8) {
        self.bar_write(self.common + 0x14, &[value]);
    }

    /// A BAR write and what the network service does about it.
    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let broken = self.broken();
        let outcome = self.transport.bar_write(offset, data);
        if outcome == BarWrite::Reset {
            assert_eq!(self.transport.device_status(), 0, "status after a reset");
            self.free = [0; 2];
        } else {
            assert!(
                !broken || self.broken(),
                "NEEDS_RESET cleared without a reset"
            );
        }
        match outcome {
            BarWrite::QueueNotify(TX_QUEUE) => self.transmit(),
            BarWrite::QueueNotify(queue) => {
                assert_eq!(queue, RX_QUEUE, "a notification of a queue the card lacks");
                self.retry_waiting();
            }
            BarWrite::Activated => {
                let mem = &self.mem;
                if self.transport.queues_mut().iter().all(|q| q.is_valid(mem)) {
                    self.retry_waiting();
                } else {
                    self.break_card();
                }
            }
            BarWrite::Reset | BarWrite::None => {}
        }
    }

    fn snapshot(&self) -> Snapshot {
        let regions = self.layout.regions().into_iter().map(|(base, size)| {
            let mut bytes = vec![0u8; size as usize];
            self.mem
                .read_slice(&mut bytes, GuestAddress(base))
                .expect("read guest RAM");
            (base, bytes)
        });
        Snapshot::new(regions.collect())
    }

    /// A transmit notification: the frames of the transmit queue, checked against the
    /// reference.
    fn transmit(&mut self) {
        if !self.running() {
            return;
        }
        let before = self.snapshot();
        let queue = self.view(TX_QUEUE);
        assert!(
            queue.ready,
            "the card runs with a transmit queue the driver did not enable"
        );
        let expected = predict_tx(&before, &queue);
        let counters = self.transport.device().counters;
        let mut frames = Vec::new();
        let (device, tx) = self.transport.device_and_queue(TX_QUEUE);
        let result = device.take_tx_frames(tx, &self.mem, &mut frames);
        let after = self.snapshot();
        if let Some(address) = before.changed_outside(&after, &[used_ring(&queue)]) {
            panic!("a transmit wrote guest memory at {address:#x}, outside its used ring");
        }
        for frame in &frames {
            assert!(
                (NET_HEADER_LEN..=MAX_FRAME_LEN).contains(&frame.len()),
                "a transmitted frame of {} bytes",
                frame.len()
            );
        }
        let now = self.transport.device().counters;
        assert_eq!(now.tx_frames, counters.tx_frames + frames.len() as u64);
        let bytes: usize = frames.iter().map(|f| f.len() - NET_HEADER_LEN).sum();
        assert_eq!(now.tx_bytes, counters.tx_bytes + bytes as u64);
        if expected.exact {
            self.stats.exact += 1;
            assert_eq!(result.is_ok(), expected.ok, "transmit: {result:?}");
            assert!(
                frames == expected.frames,
                "transmit: other frames than posted"
            );
            if let Ok(interrupt) = result {
                let wanted = !frames.is_empty() && self.interrupt_wanted(&queue);
                assert!(queue.event_idx || interrupt == wanted, "transmit interrupt");
            }
        }
        self.stats.transmitted += frames.len();
        // As the network service sends them: checksums completed, the header cleared.
        for frame in &frames {
            self.stats.checksums += usize::from(check_offload(frame));
        }
        match result {
            Ok(true) => self.transport.signal_used_queue(),
            Ok(false) => {}
            Err(_) => self.break_card(),
        }
    }

    fn break_card(&mut self) {
        self.transport.set_needs_reset();
        self.stats.broken += 1;
    }

    /// A frame from the host: into the guest if the card runs (it waits if there is no buffer),
    /// dropped otherwise.
    fn receive(&mut self, frame: Vec<u8>) {
        if self.running() && self.deliver(&frame) {
            self.waiting = Some(frame);
        }
    }

    /// The waiting frame, after the driver posted buffers.
    fn retry_waiting(&mut self) {
        if let Some(frame) = self.waiting.take() {
            self.receive(frame);
        }
    }

    /// Delivers `frame` and checks it against the reference; whether it must wait.
    fn deliver(&mut self, frame: &[u8]) -> bool {
        let before = self.snapshot();
        let queue = self.view(RX_QUEUE);
        assert!(
            queue.ready,
            "the card runs with a receive queue the driver did not enable"
        );
        let expected = predict_rx(&before, &queue, frame);
        let counters = self.transport.device().counters;
        let (device, rx) = self.transport.device_and_queue(RX_QUEUE);
        let result = device.deliver_rx_frame(rx, &self.mem, frame);
        let after = self.snapshot();
        let mut allowed = expected.writable.clone();
        allowed.push(used_ring(&queue));
        if let Some(address) = before.changed_outside(&after, &allowed) {
            panic!("a receive wrote guest memory at {address:#x}, outside its buffer");
        }
        let now = self.transport.device().counters;
        let delivered = now.rx_frames - counters.rx_frames;
        assert!(delivered == 0 || delivered == 1 && matches!(result, Ok(Some(_))));
        if delivered == 1 {
            let len = frame.len().saturating_sub(NET_HEADER_LEN) as u64;
            assert_eq!(now.rx_bytes, counters.rx_bytes + len);
        }
        if expected.exact {
            self.stats.exact += 1;
            self.check_receive(&queue, &expected.outcome, &result, frame, delivered);
        }
        match result {
            Ok(None) => true,
            Ok(Some(interrupt)) => {
                self.stats.delivered += delivered as usize;
                self.stats.dropped += 1 - delivered as usize;
                if interrupt {
                    self.transport.signal_used_queue();
                }
                false
            }
            Err(_) => {
                self.break_card();
                false
            }
        }
    }

    /// A receive against the reference's exact outcome.
    fn check_receive<E: std::fmt::Debug>(
        &mut self,
        queue: &QueueView,
        expected: &RxOutcome,
        result: &Result<Option<bool>, E>,
        frame: &[u8],
        delivered: u64,
    ) {
        let used_element = |harness: &Self| {
            let at = queue.used + 4 + 8 * u64::from(queue.next_used % queue.size);
            let id: u32 = harness.mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = harness
                .mem
                .read_obj(GuestAddress(at + 4))
                .expect("used ring");
            let idx: u16 = harness
                .mem
                .read_obj(GuestAddress(queue.used + 2))
                .expect("used ring");
            (id, len, idx)
        };
        let next_used = queue.next_used.wrapping_add(1);
        if let Ok(Some(interrupt)) = result {
            let wanted = self.interrupt_wanted(queue);
            assert!(queue.event_idx || *interrupt == wanted, "receive interrupt");
        }
        match (expected, result) {
            (RxOutcome::NoBuffer, Ok(None)) | (RxOutcome::Broken, Err(_)) => {}
            (RxOutcome::Dropped(head), Ok(Some(_))) => {
                assert_eq!(delivered, 0, "a frame too large for its buffer");
                assert_eq!(used_element(self), (u32::from(*head), 0, next_used));
            }
            (RxOutcome::Delivered(head, pieces), Ok(Some(_))) => {
                assert_eq!(delivered, 1);
                let len = frame.len() as u32;
                assert_eq!(used_element(self), (u32::from(*head), len, next_used));
                for (at, range) in pieces {
                    let mut bytes = vec![0u8; range.len()];
                    self.mem
                        .read_slice(&mut bytes, GuestAddress(*at))
                        .expect("a written buffer");
                    assert!(bytes == frame[range.clone()], "frame bytes at {at:#x}");
                }
            }
            _ => panic!("receive: expected {expected:?}, got {result:?}"),
        }
    }

    /// Without event indexes: whether the available ring's flags (as the device read them,
    /// after its writes) leave VRING_AVAIL_F_NO_INTERRUPT clear.
    fn interrupt_wanted(&self, queue: &QueueView) -> bool {
        let flags: u16 = self
            .mem
            .read_obj(GuestAddress(queue.avail))
            .expect("the available ring");
        flags & 1 == 0
    }

    /// A well-formed initialisation, checking that the registers read back.
    fn init(&mut self, init: &Init) {
        let common = self.common;
        self.write_status(0);
        self.write_status(status::ACKNOWLEDGE);
        self.write_status(status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0;
        for word in 0..2u32 {
            self.bar_write(common, &word.to_le_bytes());
            offered |= self.read(common + 0x04, 4) << (32 * word);
        }
        let wanted = match init.features {
            Features::Offered => offered,
            Features::WithoutVersion1 => offered & !VERSION_1,
            Features::Raw(low, high) => u64::from(high) << 32 | u64::from(low),
        };
        for word in 0..2u32 {
            self.bar_write(common + 0x08, &word.to_le_bytes());
            let half = (wanted >> (32 * word)) as u32;
            self.bar_write(common + 0x0c, &half.to_le_bytes());
        }
        assert_eq!(self.transport.driver_features(), wanted & offered);
        let mut driver = status::ACKNOWLEDGE | status::DRIVER;
        if init.finish != Finish::SkipFeatures {
            self.write_status(driver | status::FEATURES_OK);
            let accepted = wanted & offered & VERSION_1 != 0;
            let features_ok = self.read(common + 0x14, 1) as u8 & status::FEATURES_OK != 0;
            assert_eq!(
                features_ok, accepted,
                "FEATURES_OK needs VIRTIO_F_VERSION_1"
            );
            if features_ok {
                driver |= status::FEATURES_OK;
            }
        }
        assert_eq!(self.read(common + 0x12, 2), 2, "two queues");
        for (index, queue) in init.queues.iter().enumerate() {
            self.init_queue(index as u16, queue);
        }
        if init.finish != Finish::FeaturesOnly {
            self.write_status(driver | status::DRIVER_OK);
        }
    }

    fn init_queue(&mut self, index: u16, init: &QueueInit) {
        let common = self.common;
        self.bar_write(common + 0x16, &index.to_le_bytes());
        let max = self.read(common + 0x18, 2) as u16;
        let size = match init.size {
            QueueSize::Max => max,
            QueueSize::Power(power) => 1 << (power % 9),
            QueueSize::Raw(size) => size,
        };
        self.bar_write(common + 0x18, &size.to_le_bytes());
        let valid = size != 0 && size <= max && size.is_power_of_two();
        let size = if valid { size } else { max };
        assert_eq!(self.read(common + 0x18, 2) as u16, size, "queue size");
        let area = |queue: u64| RINGS + queue * QUEUE_AREA;
        let base = area(u64::from(index));
        let (desc, avail, used) = match init.rings {
            Rings::Standard => (base, base + 0x1000, base + 0x2000),
            Rings::Tight => {
                let avail = base + DESCRIPTOR_SIZE * u64::from(size);
                (base, avail, (avail + 6 + 2 * u64::from(size) + 3) & !3)
            }
            Rings::Shared => (area(0), area(0) + 0x1000, area(0) + 0x2000),
            Rings::Offsets(desc, avail, used) => {
                let at = |offset: u16| RINGS + u64::from(offset) % (2 * QUEUE_AREA);
                (at(desc), at(avail), at(used))
            }
            Rings::Raw(desc, avail, used) => (
                self.layout.resolve(desc),
                self.layout.resolve(avail),
                self.layout.resolve(used),
            ),
        };
        // A driver starts from fresh rings: zero flags and indexes.
        for ring in [avail, used] {
            let _ = self.mem.write_obj(0u32, GuestAddress(ring));
        }
        // (register, address, alignment the queue requires)
        for (register, address, align) in [(0x20, desc, 16), (0x28, avail, 2), (0x30, used, 4)] {
            let before = self.read(common + register, 8);
            if init.halves {
                self.bar_write(common + register, &(address as u32).to_le_bytes());
                let high = (address >> 32) as u32;
                self.bar_write(common + register + 4, &high.to_le_bytes());
            } else {
                self.bar_write(common + register, &address.to_le_bytes());
            }
            // A misaligned address is refused; in halves, only its low half is (the high
            // half then goes with the low half the queue kept).
            let expected = match (address % align == 0, init.halves) {
                (true, _) => address,
                (false, false) => before,
                (false, true) => address & !0xffff_ffff | before & 0xffff_ffff,
            };
            assert_eq!(self.read(common + register, 8), expected, "ring address");
        }
        if !init.disabled {
            self.bar_write(common + 0x1c, &1u16.to_le_bytes());
        }
        assert_eq!(self.read(common + 0x1c, 2), u64::from(!init.disabled));
    }

    /// Writes `chain` into queue `queue`'s descriptor table (or an indirect table) and
    /// publishes it in the available ring.
    fn post(&mut self, queue: u16, placement: &Placement, chain: &Chain) {
        let view = self.view(queue);
        let size = view.size;
        let slot = |n: u16| {
            view.desc
                .wrapping_add(DESCRIPTOR_SIZE * u64::from(n % size))
        };
        let free = self.free[usize::from(queue)];
        let writable = queue == RX_QUEUE;
        let count = chain.0.len() as u16;
        match placement {
            Placement::Direct => {
                for (n, descriptor) in chain.0.iter().enumerate() {
                    let n = free.wrapping_add(n as u16);
                    let last = n == free.wrapping_add(count - 1);
                    let following = n.wrapping_add(1) % size;
                    self.write_descriptor(slot(n), descriptor, writable, last, following);
                }
                self.free[usize::from(queue)] = free.wrapping_add(count) % size;
            }
            Placement::Indirect { table, len } => {
                let table = self.layout.resolve(*table);
                for (n, descriptor) in chain.0.iter().enumerate() {
                    let at = table.wrapping_add(DESCRIPTOR_SIZE * n as u64);
                    let last = n + 1 == chain.0.len();
                    self.write_descriptor(at, descriptor, writable, last, n as u16 + 1);
                }
                let len = len.unwrap_or(u32::from(count) * DESCRIPTOR_SIZE as u32);
                self.write_raw_descriptor(slot(free), table, len, INDIRECT, 0);
                self.free[usize::from(queue)] = free.wrapping_add(1) % size;
            }
        }
        // The available ring: the head in the next entry, then the index.
        let Some(idx_at) = view.avail.checked_add(2) else {
            return;
        };
        let Ok(idx) = self.mem.read_obj::<u16>(GuestAddress(idx_at)) else {
            return;
        };
        let entry = view.avail.wrapping_add(4 + 2 * u64::from(idx % size));
        let _ = self.mem.write_obj(free % size, GuestAddress(entry));
        let _ = self
            .mem
            .write_obj(idx.wrapping_add(1), GuestAddress(idx_at));
    }

    /// Writes `packet` and posts it on the transmit queue (one or two descriptors).
    fn send(&mut self, packet: &Packet) {
        let bytes = packet_bytes(packet);
        let at = self.layout.resolve(packet.at);
        let _ = self.mem.write_slice(&bytes, GuestAddress(at));
        let len = bytes.len() as u32;
        let split = u32::from(packet.split);
        let pieces = if (1..len).contains(&split) {
            vec![
                (at, split),
                (at.wrapping_add(u64::from(split)), len - split),
            ]
        } else {
            vec![(at, len)]
        };
        let chain = pieces.into_iter().map(|(at, len)| Descriptor {
            at: Address::Raw(at),
            len: Length::Raw(len),
            flags: Flags::Natural,
            next: Next::Auto,
        });
        self.post(TX_QUEUE, &Placement::Direct, &Chain(chain.collect()));
    }

    fn write_descriptor(
        &self,
        at: u64,
        descriptor: &Descriptor,
        writable: bool,
        last: bool,
        following: u16,
    ) {
        let next_flag = if last { 0 } else { NEXT };
        let direction = |write: bool| if write { WRITE } else { 0 };
        let flags = match descriptor.flags {
            Flags::Natural => direction(writable) | next_flag,
            Flags::Reversed => direction(!writable) | next_flag,
            Flags::Indirect => INDIRECT | next_flag,
            Flags::Raw(flags) => flags,
        };
        let next = match descriptor.next {
            Next::Auto => following,
            Next::Raw(next) => next,
        };
        let address = self.layout.resolve(descriptor.at);
        self.write_raw_descriptor(at, address, descriptor.len.bytes(), flags, next);
    }

    fn write_raw_descriptor(&self, at: u64, address: u64, len: u32, flags: u16, next: u16) {
        let mut bytes = [0u8; DESCRIPTOR_SIZE as usize];
        bytes[..8].copy_from_slice(&address.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&bytes, GuestAddress(at));
    }
}

/// The bytes of `packet`, virtio header first.
fn packet_bytes(packet: &Packet) -> Vec<u8> {
    let payload = pattern(usize::from(packet.payload % 2048), packet.seed);
    let (protocol, mut segment) = match packet.protocol {
        Protocol::Tcp => {
            let mut tcp = vec![0u8; 20];
            tcp[..4].copy_from_slice(&[0x1f, 0x90, 0xc3, 0x50]);
            tcp[12] = 5 << 4;
            tcp[13] = 0x18;
            tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
            (6, tcp)
        }
        Protocol::Udp => {
            let mut udp = vec![0x00, 0x35, 0xc3, 0x51, 0, 0, 0, 0];
            let len = (8 + payload.len()) as u16;
            udp[4..6].copy_from_slice(&len.to_be_bytes());
            (17, udp)
        }
        Protocol::Other(protocol) => (protocol, Vec::new()),
    };
    segment.extend_from_slice(&payload);
    let skewed = |len: usize| {
        let skew = i32::from(packet.skew.unwrap_or(0));
        (len as i32 + skew).clamp(0, 0xffff) as u16
    };
    let mut frame = vec![packet.flags, packet.segmentation.unwrap_or(0), 0, 0, 0, 0];
    let ip_header = if packet.ipv6 { 40 } else { 20 };
    let link_header = if packet.vlan { 18 } else { 14 };
    let checksum_at = if protocol == 17 { 6 } else { 16 };
    frame.extend_from_slice(&((link_header + ip_header) as u16).to_le_bytes());
    frame.extend_from_slice(&(checksum_at as u16).to_le_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
    if packet.vlan {
        frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    if packet.ipv6 {
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&skewed(segment.len()).to_be_bytes());
        frame.extend_from_slice(&[protocol, 64]);
        for host in [1, 2] {
            frame.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]);
        }
    } else {
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&skewed(20 + segment.len()).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2]);
        let checksum = !internet_sum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
    }
    frame.extend_from_slice(&segment);
    frame
}

/// The one's-complement sum of `bytes` as big-endian 16-bit words (RFC 1071), folded.
fn internet_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Runs the checksum offload on a transmitted frame as the network service does, and checks
/// it: segmentation is refused, the header leaves cleared, nothing but one 16-bit field of the
/// frame changes and only on request, and a checksum it writes is right. Whether it wrote one.
fn check_offload(frame: &[u8]) -> bool {
    let mut sent = frame.to_vec();
    let result = offload::finish_tx_frame(&mut sent);
    let gso_type = frame[1];
    if gso_type != 0 {
        assert_eq!(result, Err(OffloadError::Segmentation(gso_type)));
        return false;
    }
    assert_eq!(result, Ok(()));
    assert_eq!(sent.len(), frame.len());
    assert!(
        sent[..NET_HEADER_LEN].iter().all(|b| *b == 0),
        "header cleared"
    );
    let (before, after) = (&frame[NET_HEADER_LEN..], &sent[NET_HEADER_LEN..]);
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    if changed.is_empty() {
        return false;
    }
    assert!(frame[0] & 1 != 0, "a checksum completed without NEEDS_CSUM");
    assert!(
        changed.len() <= 2 && changed[changed.len() - 1] - changed[0] <= 1,
        "the offload changed bytes {changed:?}"
    );
    assert_ne!(checksum_ok(after), Some(false), "a wrong checksum");
    true
}

/// Whether the TCP or UDP checksum of a plain frame (Ethernet II, at most one VLAN tag, IPv4
/// unfragmented or IPv6 without extension headers, lengths from the IP header) is right;
/// `None` for other frames.
fn checksum_ok(ethernet: &[u8]) -> Option<bool> {
    let be16 = |bytes: &[u8], at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *bytes.get(at)?,
            *bytes.get(at + 1)?,
        ])))
    };
    let (ethertype, ip_at) = match be16(ethernet, 12)? {
        0x8100 => (be16(ethernet, 16)?, 18),
        ethertype => (ethertype, 14),
    };
    let ip = ethernet.get(ip_at..)?;
    let (mut pseudo, protocol, segment) = match ethertype {
        0x0800 => {
            let header = usize::from(*ip.first()? & 0xf) * 4;
            let total = be16(ip, 2)?;
            if *ip.first()? >> 4 != 4 || header < 20 || be16(ip, 6)? & 0x3fff != 0 {
                return None;
            }
            let pseudo = ip.get(12..20)?.to_vec();
            (pseudo, *ip.get(9)?, ip.get(header..total)?)
        }
        0x86dd => {
            let len = be16(ip, 4)?;
            if *ip.first()? >> 4 != 6 || len == 0 {
                return None;
            }
            (ip.get(8..40)?.to_vec(), *ip.get(6)?, ip.get(40..40 + len)?)
        }
        _ => return None,
    };
    let segment = match protocol {
        6 if segment.len() >= 20 => segment,
        // A UDP length of 0 (an IPv6 jumbogram's) is left to the offload's parser.
        17 if be16(segment, 4)? >= 8 => segment.get(..be16(segment, 4)?)?,
        _ => return None,
    };
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes()[2..]);
    pseudo.extend_from_slice(segment);
    Some(internet_sum(&pseudo) == 0xffff)
}

fn queue_of(rx: bool) -> u16 {
    if rx { RX_QUEUE } else { TX_QUEUE }
}

fn bar_offset(offset: &BarOffset) -> u64 {
    match offset {
        BarOffset::Bar(offset) => u64::from(*offset) % BAR_SIZE,
        BarOffset::Raw(offset) => *offset,
    }
}

/// Finds the common configuration and the notification area in the capability list, as a
/// driver does, checking the list on the way.
fn probe(transport: &mut VirtioPciTransport<NetDevice>) -> (u64, u64, u64) {
    let (mut common, mut notify) = (None, None);
    let mut at = transport.config_read(0x34) as u8;
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        let header = transport.config_read(at);
        assert_eq!(header & 0xff, 0x09, "a vendor-specific capability");
        let offset = u64::from(transport.config_read(at.wrapping_add(8)));
        match (header >> 24) as u8 {
            1 => common = Some(offset),
            2 => {
                let multiplier = u64::from(transport.config_read(at.wrapping_add(16)));
                notify = Some((offset, multiplier));
            }
            _ => {}
        }
        at = (header >> 8) as u8;
    }
    assert_eq!(at, 0, "the capability list ends");
    let common = common.expect("a common configuration capability");
    let (notify, multiplier) = notify.expect("a notification capability");
    (common, notify, multiplier)
}

#[cfg(test)]
mod tests;
