//! The virtio network card (virtio 1.x device type 1): what it offers (MAC, link status,
//! checksum offload, mergeable receive buffers, event indexes and VIRTIO_F_VERSION_1), its
//! configuration space, and moving Ethernet frames between its two queues and a host backend:
//! [`NetDevice::take_tx_frames`] collects what the guest sent,
//! [`NetDevice::deliver_rx_frame`] puts one received frame into a buffer the guest posted
//! ([`NetDevice::deliver_rx_frame_mergeable`] into as many as it needs). Every frame crosses
//! with the 12-byte `virtio_net_hdr_v1` in front, as TAP devices with `IFF_VNET_HDR` expect it.
//!
//! The guest's rings are hostile input: `virtio-queue` walks the chains (a loop or an indirect
//! table out of RAM ends the chain with an error), and every buffer is read or written through
//! `vm-memory`, which refuses addresses outside RAM. A chain this device cannot use is an error
//! that marks the device broken; it never reaches host memory outside guest RAM.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use vm_memory::{Bytes, GuestMemory};

use super::{VirtioDevice, VirtioError};

/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_net_hdr_v1)`: the header in front of every frame.
pub const NET_HEADER_LEN: usize = 12;
/// Offset of `num_buffers` in the header: how many receive buffers the frame fills (1 unless
/// VIRTIO_NET_F_MRG_RXBUF spreads it over several).
pub const NUM_BUFFERS: usize = 10;
/// The largest frame the device moves, header included (a 64 KiB GSO frame and its headers).
pub const MAX_FRAME_LEN: usize = 65_562;

/// The network card's identity and state.
#[derive(Debug, Clone)]
pub struct NetDevice {
    mac: [u8; 6],
    mtu: u16,
    /// Frames and bytes moved, per direction (for `--stats`).
    pub counters: NetCounters,
}

/// Frames and bytes moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: u64,
    /// Frames of the guest the host side did not take (a full TAP queue, passt gone).
    pub tx_dropped: u64,
    /// Frames from the host that no guest driver was there to take, or that did not fit the
    /// buffer it posted.
    pub rx_dropped: u64,
}

impl NetDevice {
    /// A card with address `mac` and maximum transmission unit `mtu`.
    pub fn new(mac: [u8; 6], mtu: u16) -> Self {
        Self {
            mac,
            mtu,
            counters: NetCounters::default(),
        }
    }

    /// Takes every frame the guest posted on the transmit queue (each with its virtio header),
    /// returning their buffers to the guest; whether the guest wants an interrupt for them.
    pub fn take_tx_frames<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        frames: &mut Vec<Vec<u8>>,
    ) -> Result<bool, VirtioError> {
        let mut used_any = false;
        loop {
            let chains: Vec<_> = queue.iter(mem).map_err(queue_error(TX_QUEUE))?.collect();
            if chains.is_empty() {
                break;
            }
            for chain in chains {
                let head = chain.head_index();
                let mut frame = Vec::new();
                for descriptor in descriptors_of(chain, TX_QUEUE)? {
                    if descriptor.is_write_only() {
                        return Err(bad_chain(TX_QUEUE, "a transmit buffer is device-writable"));
                    }
                    let len = descriptor.len() as usize;
                    if frame.len().saturating_add(len) > MAX_FRAME_LEN {
                        return Err(bad_chain(TX_QUEUE, "a frame longer than 65562 bytes"));
                    }
                    let start = frame.len();
                    frame.resize(start + len, 0);
                    mem.read_slice(&mut frame[start..], descriptor.addr())
                        .map_err(|e| bad_chain(TX_QUEUE, &format!("buffer outside RAM: {e}")))?;
                }
                if frame.len() < NET_HEADER_LEN {
                    return Err(bad_chain(TX_QUEUE, "a frame shorter than its header"));
                }
                queue
                    .add_used(mem, head, 0)
                    .map_err(queue_error(TX_QUEUE))?;
                used_any = true;
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += (frame.len() - NET_HEADER_LEN) as u64;
                frames.push(frame);
            }
            // With event indexes: ask for the next notification, then look again (buffers
            // may have arrived in between).
            if !queue
                .enable_notification(mem)
                .map_err(queue_error(TX_QUEUE))?
            {
                break;
            }
        }
        if !used_any {
            return Ok(false);
        }
        wants_interrupt(queue, mem, TX_QUEUE)
    }

    /// Delivers `frame` (its virtio header first) into the next receive buffer; `Ok(None)` if
    /// the guest posted none (the caller keeps the frame and waits for a notification),
    /// otherwise whether the guest wants an interrupt.
    pub fn deliver_rx_frame<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        frame: &[u8],
    ) -> Result<Option<bool>, VirtioError> {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            queue
                .enable_notification(mem)
                .map_err(queue_error(RX_QUEUE))?;
            // A buffer may have been posted before notifications were back on.
            return match queue.pop_descriptor_chain(mem) {
                Some(chain) => self.fill_rx_chain(queue, mem, chain, frame).map(Some),
                None => Ok(None),
            };
        };
        self.fill_rx_chain(queue, mem, chain, frame).map(Some)
    }

    /// Delivers `frame` (its virtio header first) with VIRTIO_NET_F_MRG_RXBUF negotiated: into
    /// as many receive buffers as it needs, the first header's `num_buffers` saying how many.
    /// `Ok(None)` if the guest posted too few (none is used; the caller keeps the frame and
    /// waits), otherwise whether the guest wants an interrupt. A buffer shorter than the header
    /// breaks the card, as any buffer that is not the device's to write.
    pub fn deliver_rx_frame_mergeable<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        frame: &[u8],
    ) -> Result<Option<bool>, VirtioError> {
        let Some(buffers) = take_rx_buffers(queue, mem, frame.len())? else {
            return Ok(None);
        };
        // Fewer than 2^16 buffers: the queue holds at most QUEUE_SIZE.
        let count = u16::try_from(buffers.len()).unwrap_or(u16::MAX);
        let mut header = [0u8; NET_HEADER_LEN];
        let header_len = NET_HEADER_LEN.min(frame.len());
        header[..header_len].copy_from_slice(&frame[..header_len]);
        header[NUM_BUFFERS..].copy_from_slice(&count.to_le_bytes());
        let mut written = 0usize;
        let mut used = Vec::with_capacity(buffers.len());
        for (head, descriptors) in buffers {
            let mut in_buffer = 0u32;
            for descriptor in descriptors {
                if written == frame.len() {
                    break;
                }
                let len = (descriptor.len() as usize).min(frame.len() - written);
                let mut piece = frame[written..written + len].to_vec();
                // The part of the header this piece holds, with num_buffers set.
                for (i, byte) in piece.iter_mut().enumerate() {
                    if let Some(patched) = header.get(written + i) {
                        *byte = *patched;
                    }
                }
                mem.write_slice(&piece, descriptor.addr())
                    .map_err(|e| bad_chain(RX_QUEUE, &format!("buffer outside RAM: {e}")))?;
                written += len;
                in_buffer += len as u32;
            }
            used.push((head, in_buffer));
        }
        let wanted = publish_used(queue, mem, &used)?;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len().saturating_sub(NET_HEADER_LEN) as u64;
        Ok(Some(wanted))
    }

    fn fill_rx_chain<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        chain: virtio_queue::DescriptorChain<&M>,
        frame: &[u8],
    ) -> Result<bool, VirtioError> {
        let head = chain.head_index();
        let mut written = 0usize;
        for descriptor in descriptors_of(chain, RX_QUEUE)? {
            if written == frame.len() {
                break;
            }
            if !descriptor.is_write_only() {
                return Err(bad_chain(RX_QUEUE, "a receive buffer is device-readable"));
            }
            let len = (descriptor.len() as usize).min(frame.len() - written);
            mem.write_slice(&frame[written..written + len], descriptor.addr())
                .map_err(|e| bad_chain(RX_QUEUE, &format!("buffer outside RAM: {e}")))?;
            written += len;
        }
        if written < frame.len() {
            // The guest's buffer is too small for the frame: it is dropped, as a NIC drops a
            // frame larger than its buffer, and the buffer goes back empty.
            self.counters.rx_dropped += 1;
            queue
                .add_used(mem, head, 0)
                .map_err(queue_error(RX_QUEUE))?;
            return wants_interrupt(queue, mem, RX_QUEUE);
        }
        queue
            .add_used(mem, head, written as u32)
            .map_err(queue_error(RX_QUEUE))?;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len().saturating_sub(NET_HEADER_LEN) as u64;
        wants_interrupt(queue, mem, RX_QUEUE)
    }
}

/// A receive buffer the device may fill: its head index and its (device-writable) descriptors.
type RxBuffer = (u16, Vec<virtio_queue::desc::split::Descriptor>);

/// Takes receive buffers from `queue` until they hold `len` bytes; `None` (and the queue as it
/// was) if the guest has not posted enough yet.
fn take_rx_buffers<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    len: usize,
) -> Result<Option<Vec<RxBuffer>>, VirtioError> {
    let mut buffers: Vec<RxBuffer> = Vec::new();
    let mut capacity = 0usize;
    while capacity < len {
        let mut chain = queue.pop_descriptor_chain(mem);
        if chain.is_none() {
            queue
                .enable_notification(mem)
                .map_err(queue_error(RX_QUEUE))?;
            // A buffer may have been posted before notifications were back on.
            chain = queue.pop_descriptor_chain(mem);
        }
        let Some(chain) = chain else {
            for _ in 0..buffers.len() {
                queue.go_to_previous_position();
            }
            return Ok(None);
        };
        let head = chain.head_index();
        let descriptors = descriptors_of(chain, RX_QUEUE)?;
        if descriptors.iter().any(|d| !d.is_write_only()) {
            return Err(bad_chain(RX_QUEUE, "a receive buffer is device-readable"));
        }
        let size = descriptors
            .iter()
            .fold(0usize, |sum, d| sum.saturating_add(d.len() as usize));
        if size < NET_HEADER_LEN {
            return Err(bad_chain(
                RX_QUEUE,
                "a receive buffer shorter than the header",
            ));
        }
        capacity = capacity.saturating_add(size);
        buffers.push((head, descriptors));
    }
    Ok(Some(buffers))
}

/// Puts the receive buffers `used` (head, bytes written) of one frame into the used ring and
/// makes them visible to the driver at once: a driver that reads `num_buffers` from the first
/// may take the others right away (Hermit unwraps them). The elements but the last are written
/// first, then `virtio-queue` adds the last and publishes the index. Returns whether the driver
/// wants an interrupt: with event indexes, if its `used_event` names any of them.
fn publish_used<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    used: &[(u16, u32)],
) -> Result<bool, VirtioError> {
    let Some((&(last_head, last_len), earlier)) = used.split_last() else {
        return Ok(false);
    };
    let base = queue.next_used();
    let size = queue.size().max(1);
    for (n, &(head, len)) in earlier.iter().enumerate() {
        let slot = u64::from(base.wrapping_add(n as u16) % size);
        let mut element = [0u8; 8];
        element[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        // struct virtq_used: flags, idx, then 8-byte elements.
        let at = queue
            .used_ring()
            .checked_add(4 + 8 * slot)
            .ok_or_else(|| bad_chain(RX_QUEUE, "used ring past the address space"))?;
        mem.write_slice(&element, vm_memory::GuestAddress(at))
            .map_err(|e| bad_chain(RX_QUEUE, &format!("used ring outside RAM: {e}")))?;
    }
    queue.set_next_used(base.wrapping_add(earlier.len() as u16));
    queue
        .add_used(mem, last_head, last_len)
        .map_err(queue_error(RX_QUEUE))?;
    // virtio-queue's check covers the element it added; the earlier ones are checked here.
    let wanted = wants_interrupt(queue, mem, RX_QUEUE)?;
    if wanted || !queue.event_idx_enabled() || earlier.is_empty() {
        return Ok(wanted);
    }
    let used_event_at = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()))
        .ok_or_else(|| bad_chain(RX_QUEUE, "available ring past the address space"))?;
    let used_event = u16::from_le(
        mem.read_obj(vm_memory::GuestAddress(used_event_at))
            .map_err(|e| bad_chain(RX_QUEUE, &format!("available ring outside RAM: {e}")))?,
    );
    let new = queue.next_used();
    Ok(new.wrapping_sub(used_event).wrapping_sub(1) < used.len() as u16)
}

/// The descriptors of `chain`, all of them or an error: `virtio-queue` ends a chain early
/// (without an error of its own) when it loops, is longer than the queue, names a descriptor or
/// indirect table outside RAM or totals more than 4 GiB; its last descriptor then still says
/// "next".
fn descriptors_of<M>(
    chain: virtio_queue::DescriptorChain<M>,
    queue: u16,
) -> Result<Vec<virtio_queue::desc::split::Descriptor>, VirtioError>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let descriptors: Vec<_> = chain.collect();
    match descriptors.last() {
        None => Err(bad_chain(queue, "an empty chain (its head is unreadable)")),
        Some(last) if last.has_next() => Err(bad_chain(
            queue,
            "a chain that loops, outgrows the queue or leaves RAM",
        )),
        Some(_) => Ok(descriptors),
    }
}

/// Whether the driver wants an interrupt for the buffers just added to `queue`'s used ring: by
/// the event index when that feature was negotiated (virtio-queue decides), otherwise unless
/// the available ring's flags say VRING_AVAIL_F_NO_INTERRUPT, which virtio-queue does not look
/// at.
fn wants_interrupt<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    index: u16,
) -> Result<bool, VirtioError> {
    let by_event_index = queue.needs_notification(mem).map_err(queue_error(index))?;
    if queue.event_idx_enabled() || !by_event_index {
        return Ok(by_event_index);
    }
    let flags: u16 = mem
        .read_obj(vm_memory::GuestAddress(queue.avail_ring()))
        .map_err(|e| bad_chain(index, &format!("available ring outside RAM: {e}")))?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}

fn queue_error(queue: u16) -> impl Fn(virtio_queue::Error) -> VirtioError {
    move |source| VirtioError::Queue { queue, source }
}

fn bad_chain(queue: u16, detail: &str) -> VirtioError {
    VirtioError::BadChain {
        queue,
        detail: detail.to_string(),
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u16 {
        1
    }

    /// VIRTIO_NET_F_MTU is not offered: Hermit 0.11 sizes its transmit and receive buffers
    /// from the configuration's `mtu` field whether or not the feature is negotiated, and
    /// asserts that every frame is shorter than it, while with the feature it also lets
    /// smoltcp send frames of exactly that length (a guest panic on the first full-size
    /// frame). Without the feature smoltcp keeps its 1500-byte frames, and the field (see
    /// [`NetDevice::new`]) gives room for them with their header.
    ///
    /// VIRTIO_NET_F_CSUM and VIRTIO_NET_F_GUEST_CSUM: the guest's TCP and UDP checksums are
    /// computed by uhyve ([`super::offload`]) and not checked by the guest.
    /// VIRTIO_RING_F_EVENT_IDX: the queues follow it when the driver takes it (Hermit 0.11
    /// does not ask for it; tests/guests/virtio_net.c does).
    /// VIRTIO_NET_F_MRG_RXBUF: Hermit 0.11 takes it (its receive buffers then hold a header and
    /// 1514 bytes); a frame larger than one buffer spreads over several.
    /// No segmentation offload (TSO/UFO): Hermit 0.11's driver takes none.
    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_MRG_RXBUF
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(at as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests;
