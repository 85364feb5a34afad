//! The hand-made seeds of the `virtio_net` corpus, written here with a small encoder of the
//! input format (`arbitrary`'s: integers little-endian, an enum variant as a `u32` scaled to the
//! number of variants, a bool as the low bit of a byte), and checked to reach the paths they are
//! made for.

use std::path::Path;

use super::super::virtio_net_model::{Snapshot, Span, complete, walk};
use super::*;

/// The variants of `Step`.
const STEPS: u32 = 15;

/// Bytes of an input, field by field.
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    /// Variant `index` of an enum with `count` variants.
    fn tag(&mut self, index: u32, count: u32) -> &mut Self {
        let scaled = (u64::from(index) << 32).div_ceil(u64::from(count));
        self.u32(scaled as u32)
    }

    fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn bool(&mut self, value: bool) -> &mut Self {
        self.u8(u8::from(value))
    }

    /// `Machine`: RAM size and second region by variant index.
    fn machine(&mut self, ram: u32, second: u32) -> &mut Self {
        self.tag(ram, 3).tag(second, 3);
        for byte in [2, 0, 0, 0, 0, 1] {
            self.u8(byte);
        }
        self.u16(1526)
    }

    /// `Step::Init`: every offered feature, both queues of 2^`power` entries in their standard
    /// areas, DRIVER_OK.
    fn init(&mut self, power: u8) -> &mut Self {
        self.tag(0, STEPS).tag(0, 3);
        for _ in 0..2 {
            // Power(power), Standard, one 64-bit write, enabled.
            self.tag(1, 3).u8(power).tag(0, 5).bool(false).bool(false);
        }
        self.tag(0, 3)
    }

    /// `Step::Init` of a driver that skips FEATURES_OK and leaves both queues disabled.
    fn init_without_features_ok(&mut self) -> &mut Self {
        self.tag(0, STEPS).tag(0, 3);
        for _ in 0..2 {
            self.tag(0, 3).tag(0, 5).bool(false).bool(true);
        }
        self.tag(2, 3)
    }

    /// `Address::Buffers(offset)`.
    fn buffer(&mut self, offset: u16) -> &mut Self {
        self.tag(0, 6).u16(offset)
    }

    /// `Address::Second(offset)`.
    fn second(&mut self, offset: u16) -> &mut Self {
        self.tag(2, 6).u16(offset)
    }

    /// `Step::Post` of descriptors given as (address bytes, length, raw next or not).
    fn post(&mut self, rx: bool, indirect_table: Option<u16>, chain: &[Desc]) -> &mut Self {
        self.tag(7, STEPS).bool(rx);
        match indirect_table {
            None => self.tag(0, 2),
            Some(offset) => self.tag(1, 2).buffer(offset).bool(false),
        };
        self.u8(chain.len() as u8 - 1);
        for desc in chain {
            match desc.at {
                At::Buffer(offset) => self.buffer(offset),
                At::Second(offset) => self.second(offset),
            };
            // Length::Medium(len), Flags::Natural.
            self.tag(2, 7).u16(desc.len).tag(0, 4);
            match desc.next {
                None => self.tag(0, 2),
                Some(next) => self.tag(1, 2).u16(next),
            };
        }
        self
    }

    /// `Step::Fill` of the buffer area at `offset`.
    fn fill(&mut self, offset: u16, len: u16, seed: u8) -> &mut Self {
        self.tag(10, STEPS).buffer(offset).u16(len).u8(seed)
    }

    /// `Step::Notify` of the transmit (or receive) queue.
    fn notify(&mut self, rx: bool) -> &mut Self {
        self.tag(11, STEPS).tag(if rx { 1 } else { 0 }, 3)
    }

    /// `Step::Receive` of a frame of `len` bytes (`FrameLen::Medium`).
    fn receive(&mut self, len: u16, seed: u8) -> &mut Self {
        self.tag(12, STEPS).tag(4, 6).u16(len).u8(seed)
    }

    /// `Step::EventIdx`.
    fn event_idx(&mut self, on: bool) -> &mut Self {
        self.tag(13, STEPS).bool(on)
    }

    /// `Step::Send` of a consistent TCP (or UDP) packet with `payload` bytes at `offset` of the
    /// buffer area, its checksum requested, in one descriptor or split at `split`.
    fn send(&mut self, offset: u16, send: Send) -> &mut Self {
        self.tag(14, STEPS).buffer(offset).u8(1);
        match send.segmentation {
            None => self.bool(false),
            Some(gso_type) => self.bool(true).u8(gso_type),
        };
        self.bool(send.vlan)
            .bool(send.ipv6)
            .tag(u32::from(send.udp), 3);
        self.u16(send.payload).bool(false).u16(send.split).u8(7)
    }
}

#[derive(Default)]
struct Send {
    segmentation: Option<u8>,
    vlan: bool,
    ipv6: bool,
    udp: bool,
    payload: u16,
    split: u16,
}

enum At {
    Buffer(u16),
    Second(u16),
}

struct Desc {
    at: At,
    len: u16,
    next: Option<u16>,
}

fn desc(offset: u16, len: u16) -> Desc {
    Desc {
        at: At::Buffer(offset),
        len,
        next: None,
    }
}

/// The hand-made seeds and regression inputs: (file name, bytes, frames transmitted, frames
/// delivered, times broken).
fn seeds() -> Vec<(&'static str, Vec<u8>, usize, usize, usize)> {
    let mut seeds = Vec::new();
    // A header and a payload out, an Ethernet frame in; a frame that waits for its buffer.
    let mut e = Encoder::default();
    e.machine(0, 0).init(4).fill(0, 64, 1);
    e.post(false, None, &[desc(0, 12), desc(12, 52)])
        .notify(false);
    e.post(true, None, &[desc(0x1000, 12), desc(0x1100, 1514)]);
    e.receive(1526, 3).receive(60, 4);
    e.post(true, None, &[desc(0x2000, 2048)]).notify(true);
    seeds.push(("seed-transmit-receive", e.0, 1, 2, 0));
    // Both directions through indirect tables, 128 KiB and an adjacent second region.
    let mut e = Encoder::default();
    e.machine(1, 1).init(8).fill(0x100, 200, 5);
    let out = [desc(0x100, 12), desc(0x10c, 100), desc(0x170, 80)];
    e.post(false, Some(0x3000), &out).notify(false);
    e.post(true, Some(0x3100), &[desc(0x4000, 40), desc(0x5000, 4000)]);
    e.receive(1000, 7);
    seeds.push(("seed-indirect", e.0, 1, 1, 0));
    // Event indexes: two frames out in two notifications, then one in.
    let mut e = Encoder::default();
    e.machine(0, 0).init(2).event_idx(true).fill(0, 100, 9);
    e.post(false, None, &[desc(0, 40)]).notify(false);
    e.post(false, None, &[desc(40, 60)]).notify(false);
    e.receive(64, 2)
        .post(true, None, &[desc(0x800, 128)])
        .notify(true);
    seeds.push(("seed-event-idx", e.0, 2, 1, 0));
    // Buffers in a second region at 1 MiB; a frame larger than its buffer is dropped.
    let mut e = Encoder::default();
    e.machine(0, 2).init(3);
    let second = |offset, len| Desc {
        at: At::Second(offset),
        len,
        next: None,
    };
    e.post(true, None, &[second(0x100, 12), second(0x200, 50)]);
    e.receive(62, 1)
        .post(true, None, &[second(0x400, 20)])
        .receive(100, 2);
    seeds.push(("seed-second-region", e.0, 0, 1, 0));
    // A transmit chain that loops breaks the card; the driver resets it and starts over.
    let mut e = Encoder::default();
    e.machine(0, 0).init(4).fill(0, 64, 1);
    let looping = Desc {
        at: At::Buffer(0),
        len: 12,
        next: Some(0),
    };
    e.post(false, None, &[looping, desc(0, 12)]).notify(false);
    e.post(true, None, &[desc(0x1000, 100)]).receive(50, 1);
    e.init(4).post(false, None, &[desc(0, 30)]).notify(false);
    seeds.push(("seed-broken-and-reset", e.0, 1, 0, 1));
    // Checksum offload: TCP over IPv4, UDP over IPv6 behind a VLAN tag split in two
    // descriptors, TCP over IPv6 with an odd payload, and a frame asking for segmentation.
    let mut e = Encoder::default();
    e.machine(0, 0).init(4);
    e.send(
        0,
        Send {
            payload: 100,
            ..Send::default()
        },
    );
    let udp6 = Send {
        vlan: true,
        ipv6: true,
        udp: true,
        payload: 300,
        split: 30,
        ..Send::default()
    };
    e.send(0x400, udp6);
    e.send(
        0x800,
        Send {
            ipv6: true,
            payload: 51,
            ..Send::default()
        },
    );
    e.send(
        0xc00,
        Send {
            segmentation: Some(1),
            payload: 10,
            ..Send::default()
        },
    );
    e.notify(false);
    seeds.push(("seed-checksum-offload", e.0, 4, 0, 0));
    // DRIVER_OK without FEATURES_OK used to run the card with queues nobody checked: a receive
    // wrote the used ring of a queue the driver never enabled. Now the queues are checked and
    // the card breaks.
    let mut e = Encoder::default();
    e.machine(0, 0)
        .init_without_features_ok()
        .receive(60, 1)
        .notify(false);
    seeds.push(("regression-driver-ok-without-features-ok", e.0, 0, 0, 1));
    seeds
}

#[test]
fn hand_made_inputs_reach_their_paths() {
    for (name, bytes, transmitted, delivered, broken) in seeds() {
        let stats = run(&bytes);
        if name == "seed-checksum-offload" {
            assert_eq!(stats.checksums, 3, "{stats:?}");
        }
        assert_eq!(
            (stats.transmitted, stats.delivered, stats.broken),
            (transmitted, delivered, broken),
            "{name}: {stats:?}"
        );
    }
}

#[test]
fn the_committed_seeds_are_the_hand_made_ones() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/virtio_net");
    for (name, bytes, ..) in seeds() {
        let committed = std::fs::read(corpus.join(name)).expect("a committed seed");
        assert!(
            committed == bytes,
            "{name} differs: rewrite it (write_seeds)"
        );
    }
}

/// Writes the hand-made seeds into the corpus:
/// `cargo test --lib fuzzing::virtio_net -- --ignored write_seeds`.
#[test]
#[ignore = "rewrites the hand-made files of fuzz/corpus/virtio_net"]
fn write_seeds() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/virtio_net");
    std::fs::create_dir_all(&corpus).unwrap();
    for (name, bytes, ..) in seeds() {
        std::fs::write(corpus.join(name), bytes).unwrap();
    }
}

#[test]
fn empty_and_short_inputs_do_nothing() {
    for data in [&[][..], &[0], &[0xff; 7], &[1; 40]] {
        run(data);
    }
}

/// 64 KiB of zeros with descriptors (at, addr, len, flags, next) written in.
fn memory_with(descriptors: &[(u64, u64, u32, u16, u16)]) -> Snapshot {
    let mut memory = Snapshot::new(vec![(0, vec![0u8; 0x1_0000])]);
    for &(at, addr, len, flags, next) in descriptors {
        let mut bytes = addr.to_le_bytes().to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
        memory.poke(at, &bytes);
    }
    memory
}

#[test]
fn the_reference_walks_chains_as_the_split_ring_defines_them() {
    // 0 -> 1 (indirect table at 0x2000 with two entries: 0 -> 1).
    let memory = memory_with(&[
        (0x1000, 0x8000, 12, NEXT, 1),
        (0x1010, 0x2000, 32, INDIRECT, 0),
        (0x2000, 0x9000, 100, WRITE | NEXT, 1),
        (0x2010, 0xa000, 200, WRITE, 0),
    ]);
    let mut reads = Vec::new();
    let chain = walk(&memory, 0x1000, 4, 0, &mut reads);
    assert!(complete(&chain));
    assert_eq!(
        chain.iter().map(|d| d.addr).collect::<Vec<_>>(),
        [0x8000, 0x9000, 0xa000]
    );
    assert!(reads.contains(&Span::new(0x2010, 16)));
    // A loop ends after the table's size, still saying NEXT.
    let looping = memory_with(&[(0x1000, 0x8000, 12, NEXT, 0)]);
    let chain = walk(&looping, 0x1000, 4, 0, &mut Vec::new());
    assert_eq!(chain.len(), 4);
    assert!(!complete(&chain));
    // Nested indirection and a table of a partial descriptor end the chain.
    let nested = memory_with(&[
        (0x1000, 0x2000, 16, INDIRECT, 0),
        (0x2000, 0x3000, 16, INDIRECT, 0),
    ]);
    assert!(walk(&nested, 0x1000, 4, 0, &mut Vec::new()).is_empty());
    let partial = memory_with(&[(0x1000, 0x2000, 20, INDIRECT, 0)]);
    assert!(walk(&partial, 0x1000, 4, 0, &mut Vec::new()).is_empty());
    // More than 4 GiB in total.
    let huge = memory_with(&[
        (0x1000, 0x8000, u32::MAX, NEXT, 1),
        (0x1010, 0x8000, 1, 0, 0),
    ]);
    assert!(!complete(&walk(&huge, 0x1000, 4, 0, &mut Vec::new())));
}

/// Prints an input file as the target reads it (`cargo fuzz fmt` shows only its bytes):
/// `VIRTIO_NET_INPUT=FILE cargo test --lib show_input -- --ignored --nocapture`.
#[test]
#[ignore = "needs VIRTIO_NET_INPUT"]
fn show_input() {
    let data = std::fs::read(std::env::var("VIRTIO_NET_INPUT").unwrap()).unwrap();
    let mut u = Unstructured::new(&data);
    let machine = Machine::arbitrary(&mut u).unwrap();
    eprintln!("{machine:?}");
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        eprintln!("{step:?}");
    }
    eprintln!("{:?}", run(&data));
}
