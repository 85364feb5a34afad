//! The `virtio_net` target's reference: what the network card may do to guest memory, worked out
//! from a copy of that memory taken before each transmit or receive, independently of
//! `virtio-queue` and `NetDevice`.
//!
//! [`Snapshot`] is guest RAM as plain bytes (accesses across adjacent regions work, holes and
//! addresses past the end do not, as with `vm-memory`). [`walk`] follows a descriptor chain the
//! way the virtio 1.x split ring defines it and `virtio-queue` implements it (a chain ends at a
//! descriptor without NEXT; a loop, a next index outside the table, an unreadable descriptor, a
//! second level of indirection, a misaligned indirect table or more than 4 GiB in total end it
//! early, its last descriptor still saying NEXT). [`predict_tx`] and [`predict_rx`] say which
//! frames a transmit must return and where a receive must write; they are exact only when the
//! device's own writes (its used ring) cannot change what it reads next, which
//! [`TxPrediction::exact`] and [`RxPrediction::exact`] tell.

use std::ops::Range;

use virtio_queue::{Queue, QueueT};

use crate::virtio::net::{MAX_FRAME_LEN, NET_HEADER_LEN};

/// Descriptor flags (virtio 1.x §2.7.5).
pub(super) const NEXT: u16 = 1;
pub(super) const WRITE: u16 = 2;
pub(super) const INDIRECT: u16 = 4;
/// The size of one descriptor.
pub(super) const DESCRIPTOR_SIZE: u64 = 16;

/// A queue's registers and indexes as the device sees them.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueView {
    pub ready: bool,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl QueueView {
    pub fn of(queue: &Queue) -> Self {
        Self {
            ready: queue.ready(),
            size: queue.size(),
            desc: queue.desc_table(),
            avail: queue.avail_ring(),
            used: queue.used_ring(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            event_idx: queue.event_idx_enabled(),
        }
    }
}

/// Guest-physical bytes `start..end` (`end` saturates at `u64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            start,
            end: start.saturating_add(len),
        }
    }

    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }
}

/// The used ring of a queue: flags, index, the elements and `avail_event` after them — every
/// byte the device may write besides the buffers.
pub(super) fn used_ring(queue: &QueueView) -> Span {
    Span::new(queue.used, 6 + 8 * u64::from(queue.size))
}

/// The available ring of a queue: flags, index, the ring and `used_event`.
fn avail_ring(queue: &QueueView) -> Span {
    Span::new(queue.avail, 6 + 2 * u64::from(queue.size))
}

/// Guest RAM as bytes, region by region.
#[derive(Clone)]
pub(super) struct Snapshot {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    pub fn new(regions: Vec<(u64, Vec<u8>)>) -> Self {
        Self { regions }
    }

    /// The region holding `address` and the offset there.
    fn locate(&self, address: u64) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .find_map(|(index, (base, bytes))| {
                let offset = address.checked_sub(*base)?;
                (offset < bytes.len() as u64).then_some((index, offset as usize))
            })
    }

    /// The pieces (region, byte range) of `len` bytes at `address`, if all of them are RAM.
    fn pieces(&self, address: u64, len: u64) -> Option<Vec<(usize, Range<usize>)>> {
        address.checked_add(len)?;
        let mut pieces = Vec::new();
        let (mut at, mut left) = (address, len);
        while left > 0 {
            let (region, offset) = self.locate(at)?;
            let take = (self.regions[region].1.len() - offset).min(left as usize);
            pieces.push((region, offset..offset + take));
            at += take as u64;
            left -= take as u64;
        }
        Some(pieces)
    }

    /// Whether `len` bytes at `address` are all RAM.
    pub fn is_ram(&self, address: u64, len: u64) -> bool {
        self.pieces(address, len).is_some()
    }

    pub fn read(&self, address: u64, len: u64) -> Option<Vec<u8>> {
        let mut bytes = Vec::with_capacity(len.min(MAX_FRAME_LEN as u64) as usize);
        for (region, range) in self.pieces(address, len)? {
            bytes.extend_from_slice(&self.regions[region].1[range]);
        }
        Some(bytes)
    }

    pub fn u16(&self, address: u64) -> Option<u16> {
        let bytes = self.read(address, 2)?;
        Some(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    /// Writes `bytes` at `address` (nothing if any of them is not RAM).
    pub fn poke(&mut self, address: u64, bytes: &[u8]) {
        let Some(pieces) = self.pieces(address, bytes.len() as u64) else {
            return;
        };
        let mut from = 0;
        for (region, range) in pieces {
            let len = range.len();
            self.regions[region].1[range].copy_from_slice(&bytes[from..from + len]);
            from += len;
        }
    }

    /// The first byte that differs in `after` outside every span of `allowed`.
    pub fn changed_outside(&self, after: &Snapshot, allowed: &[Span]) -> Option<u64> {
        for ((base, old), (_, new)) in self.regions.iter().zip(&after.regions) {
            if old == new {
                continue;
            }
            let changed = old.iter().zip(new).enumerate().filter(|(_, (a, b))| a != b);
            for (offset, _) in changed {
                let address = base + offset as u64;
                if !allowed.iter().any(|span| span.contains(address)) {
                    return Some(address);
                }
            }
        }
        None
    }
}

/// One descriptor as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    fn read(memory: &Snapshot, address: u64) -> Option<Self> {
        let bytes = memory.read(address, DESCRIPTOR_SIZE)?;
        let word = |range: Range<usize>| {
            let mut value = [0u8; 8];
            value[..range.len()].copy_from_slice(&bytes[range]);
            u64::from_le_bytes(value)
        };
        Some(Self {
            addr: word(0..8),
            len: word(8..12) as u32,
            flags: word(12..14) as u16,
            next: word(14..16) as u16,
        })
    }

    pub fn span(&self) -> Span {
        Span::new(self.addr, u64::from(self.len))
    }
}

/// The descriptors of the chain with head `head` in the table at `table` with `size` entries,
/// as far as the device can follow it; the spans of the tables it read go to `reads`. The chain
/// is usable when it is not empty and its last descriptor does not say NEXT ([`complete`]).
pub(super) fn walk(
    memory: &Snapshot,
    table: u64,
    size: u16,
    head: u16,
    reads: &mut Vec<Span>,
) -> Vec<Descriptor> {
    let (mut table, mut size, mut budget, mut index) = (table, size, size, head);
    let mut indirect = false;
    let mut total = 0u32;
    let mut chain = Vec::new();
    while budget > 0 && index < size {
        let Some(at) = table.checked_add(u64::from(index) * DESCRIPTOR_SIZE) else {
            break;
        };
        reads.push(Span::new(at, DESCRIPTOR_SIZE));
        let Some(descriptor) = Descriptor::read(memory, at) else {
            break;
        };
        if descriptor.flags & INDIRECT != 0 {
            // One level only, a whole number of descriptors, at most 65535 of them.
            let entries = descriptor.len / DESCRIPTOR_SIZE as u32;
            if indirect
                || descriptor.len % DESCRIPTOR_SIZE as u32 != 0
                || entries > u32::from(u16::MAX)
            {
                break;
            }
            (table, size, budget, index) = (descriptor.addr, entries as u16, entries as u16, 0);
            indirect = true;
            continue;
        }
        let Some(sum) = total.checked_add(descriptor.len) else {
            break;
        };
        total = sum;
        chain.push(descriptor);
        if descriptor.flags & NEXT == 0 {
            break;
        }
        index = descriptor.next;
        budget -= 1;
    }
    chain
}

/// Whether a walked chain is usable.
pub(super) fn complete(chain: &[Descriptor]) -> bool {
    chain.last().is_some_and(|last| last.flags & NEXT == 0)
}

/// Whether the device can write a used element and the used index for its `nth` used buffer.
fn used_writable(memory: &Snapshot, queue: &QueueView, nth: u16) -> bool {
    let slot = 4 + 8 * u64::from(nth % queue.size);
    queue
        .used
        .checked_add(slot)
        .is_some_and(|at| memory.is_ram(at, 8))
        && memory.is_ram(queue.used.saturating_add(2), 2)
}

/// Where the device writes when it asks for notifications again: `avail_event` with event
/// indexes, the used ring's flags without.
pub(super) fn notification_field(queue: &QueueView) -> Option<u64> {
    if queue.event_idx {
        queue.used.checked_add(4 + 8 * u64::from(queue.size))
    } else {
        Some(queue.used)
    }
}

/// Whether the device can read what decides on an interrupt: `used_event` with event indexes,
/// the available ring's flags (VRING_AVAIL_F_NO_INTERRUPT) without.
fn interrupt_fields_readable(memory: &Snapshot, queue: &QueueView) -> bool {
    if queue.event_idx {
        queue
            .avail
            .checked_add(4 + 2 * u64::from(queue.size))
            .is_some_and(|at| memory.is_ram(at, 2))
    } else {
        memory.is_ram(queue.avail, 2)
    }
}

/// What a transmit must return.
pub(super) struct TxPrediction {
    /// The frames, in order, up to the first chain that breaks the device (if any).
    pub frames: Vec<Vec<u8>>,
    /// Whether it succeeds.
    pub ok: bool,
    /// Whether the prediction holds: nothing the device reads lies in its used ring.
    pub exact: bool,
}

/// What `NetDevice::take_tx_frames` must do with the transmit queue `queue` over `memory`.
pub(super) fn predict_tx(memory: &Snapshot, queue: &QueueView) -> TxPrediction {
    let mut reads = vec![avail_ring(queue)];
    let mut frames = Vec::new();
    let ok = predict_tx_frames(memory, queue, &mut reads, &mut frames);
    let used = used_ring(queue);
    TxPrediction {
        frames,
        ok,
        exact: !reads.iter().any(|read| read.overlaps(&used)),
    }
}

fn predict_tx_frames(
    memory: &Snapshot,
    queue: &QueueView,
    reads: &mut Vec<Span>,
    frames: &mut Vec<Vec<u8>>,
) -> bool {
    if !queue.ready || queue.avail == 0 {
        return false;
    }
    let Some(idx) = queue.avail.checked_add(2).and_then(|at| memory.u16(at)) else {
        return false;
    };
    let pending = idx.wrapping_sub(queue.next_avail);
    if pending > queue.size {
        return false;
    }
    // The heads, up to the first slot that cannot be read.
    let heads: Vec<u16> = (0..pending)
        .map_while(|n| {
            let slot = queue.next_avail.wrapping_add(n) % queue.size;
            memory.u16(queue.avail.checked_add(4 + 2 * u64::from(slot))?)
        })
        .collect();
    if heads.is_empty() {
        return true;
    }
    let mut next_used = queue.next_used;
    for head in heads {
        let chain = walk(memory, queue.desc, queue.size, head, reads);
        if !complete(&chain) {
            return false;
        }
        let mut frame = Vec::new();
        for descriptor in chain {
            if descriptor.flags & WRITE != 0
                || frame.len() + descriptor.len as usize > MAX_FRAME_LEN
            {
                return false;
            }
            reads.push(descriptor.span());
            let Some(bytes) = memory.read(descriptor.addr, u64::from(descriptor.len)) else {
                return false;
            };
            frame.extend_from_slice(&bytes);
        }
        if frame.len() < NET_HEADER_LEN || !used_writable(memory, queue, next_used) {
            return false;
        }
        next_used = next_used.wrapping_add(1);
        frames.push(frame);
    }
    notification_field(queue).is_some_and(|at| memory.is_ram(at, 2))
        && interrupt_fields_readable(memory, queue)
}

/// What a receive must do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RxOutcome {
    /// No buffer: the frame waits.
    NoBuffer,
    /// The device breaks.
    Broken,
    /// The buffer (its head) is too small: it goes back empty.
    Dropped(u16),
    /// The frame fills the buffer (its head): frame bytes `range` at guest address `at`.
    Delivered(u16, Vec<(u64, Range<usize>)>),
}

/// What a receive must do, and where it may write.
pub(super) struct RxPrediction {
    pub outcome: RxOutcome,
    /// Whether `outcome` holds: nothing the device reads lies in its used ring, and the pieces
    /// it writes overlap neither each other nor the used ring.
    pub exact: bool,
    /// Every device-writable descriptor of the chains the device may take, whatever it does.
    pub writable: Vec<Span>,
}

/// The head of the next buffer, as `pop_descriptor_chain` finds it.
fn pop(memory: &Snapshot, queue: &QueueView) -> Option<u16> {
    if !queue.ready || queue.avail == 0 {
        return None;
    }
    let idx = memory.u16(queue.avail.checked_add(2)?)?;
    let pending = idx.wrapping_sub(queue.next_avail);
    if pending > queue.size || pending == 0 {
        return None;
    }
    let slot = queue.next_avail % queue.size;
    memory.u16(queue.avail.checked_add(4 + 2 * u64::from(slot))?)
}

/// The device-writable descriptors of the chain in the slot the device takes next, whether or
/// not the driver published it.
fn writable_of_next_slot(memory: &Snapshot, queue: &QueueView) -> Vec<Span> {
    let slot = queue.next_avail % queue.size;
    let Some(head) = queue
        .avail
        .checked_add(4 + 2 * u64::from(slot))
        .and_then(|at| memory.u16(at))
    else {
        return Vec::new();
    };
    walk(memory, queue.desc, queue.size, head, &mut Vec::new())
        .iter()
        .filter(|descriptor| descriptor.flags & WRITE != 0)
        .map(Descriptor::span)
        .collect()
}

/// What `NetDevice::deliver_rx_frame` must do with `frame` on the receive queue `queue`.
pub(super) fn predict_rx(memory: &Snapshot, queue: &QueueView, frame: &[u8]) -> RxPrediction {
    // Without a buffer the device writes the notification field, then looks once more: in that
    // state of memory.
    let mut notified = memory.clone();
    let field = notification_field(queue);
    if let Some(at) = field {
        let value = if queue.event_idx { queue.next_avail } else { 0 };
        notified.poke(at, &value.to_le_bytes());
    }
    let mut writable = writable_of_next_slot(memory, queue);
    writable.extend(writable_of_next_slot(&notified, queue));
    let mut reads = vec![avail_ring(queue)];
    let (outcome, pieces) = match pop(memory, queue) {
        Some(head) => predict_fill(memory, queue, head, frame, &mut reads),
        None if !field.is_some_and(|at| memory.is_ram(at, 2))
            || !memory.is_ram(queue.avail.saturating_add(2), 2) =>
        {
            (RxOutcome::Broken, Vec::new())
        }
        None => match pop(&notified, queue) {
            Some(head) => predict_fill(&notified, queue, head, frame, &mut reads),
            None => (RxOutcome::NoBuffer, Vec::new()),
        },
    };
    let used = used_ring(queue);
    let spans: Vec<Span> = pieces
        .iter()
        .map(|(at, len)| Span::new(*at, *len))
        .collect();
    let disjoint = spans.iter().enumerate().all(|(n, span)| {
        !span.overlaps(&used) && spans[n + 1..].iter().all(|other| !span.overlaps(other))
    });
    RxPrediction {
        outcome,
        exact: disjoint && !reads.iter().any(|read| read.overlaps(&used)),
        writable,
    }
}

/// Filling the chain `head` with `frame`: the outcome and the (address, length) pieces written.
fn predict_fill(
    memory: &Snapshot,
    queue: &QueueView,
    head: u16,
    frame: &[u8],
    reads: &mut Vec<Span>,
) -> (RxOutcome, Vec<(u64, u64)>) {
    let chain = walk(memory, queue.desc, queue.size, head, reads);
    if !complete(&chain) {
        return (RxOutcome::Broken, Vec::new());
    }
    let mut written = 0usize;
    let mut pieces = Vec::new();
    let mut placed = Vec::new();
    for descriptor in chain {
        if written == frame.len() {
            break;
        }
        let len = (descriptor.len as usize).min(frame.len() - written);
        pieces.push((descriptor.addr, len as u64));
        if descriptor.flags & WRITE == 0 || !memory.is_ram(descriptor.addr, len as u64) {
            return (RxOutcome::Broken, pieces);
        }
        placed.push((descriptor.addr, written..written + len));
        written += len;
    }
    if !used_writable(memory, queue, queue.next_used) || !interrupt_fields_readable(memory, queue) {
        return (RxOutcome::Broken, pieces);
    }
    if written < frame.len() {
        (RxOutcome::Dropped(head), pieces)
    } else {
        (RxOutcome::Delivered(head, placed), pieces)
    }
}
