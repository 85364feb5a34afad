//! The network card of a running VM: its PCI transport, its host backend and the interrupt that
//! tells the guest about used buffers. The vCPU threads reach it through PCI configuration
//! accesses to device 00:01.0 (x86_64: ports 0xCF8/0xCFC; aarch64: the ECAM window) and BAR 0
//! accesses. Both queues are served off
//! the vCPU threads, by one I/O thread ([`NetService::run_io`]) that polls the backend and one
//! eventfd per queue. The guest's queue notifications signal those eventfds: inside KVM, without
//! an exit to uhyve, where the hypervisor can (KVM_IOEVENTFD, [`NetService::route_notifications`]),
//! otherwise from the MMIO exit.
//!
//! A chain the device cannot use marks the device broken (DEVICE_NEEDS_RESET): the guest loses
//! its network, uhyve and the other guest activity go on.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::link::{HostLink, Received};
use super::net::{MAX_FRAME_LEN, NUM_BUFFERS, NetCounters, NetDevice, RX_QUEUE, TX_QUEUE};
use super::pci::{BarWrite, VirtioPciTransport, status};
use super::{DeviceInterrupt, PciDevices};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;

/// How long the I/O thread sleeps in `poll` before it looks at the stop flag again.
const IO_POLL: Duration = Duration::from_millis(50);

/// What raises the card's interrupt in the guest.
pub type Interrupt<'a> = &'a dyn DeviceInterrupt;

/// Where the card sits in the guest-physical address space and which interrupt it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardPlacement {
    /// Where BAR 0 lies until the guest moves it (16 KiB aligned, below 4 GiB).
    pub bar_base: u32,
    /// The interrupt line in the configuration space (x86_64: the guest's handler runs at
    /// vector 0x20 + line; aarch64: the SPI the device tree's interrupt map names).
    pub interrupt_line: u8,
}

/// The network card of one VM.
pub struct NetService {
    transport: Mutex<VirtioPciTransport<NetDevice>>,
    link: HostLink,
    /// Signalled when the guest notifies the transmit queue (by KVM or by the MMIO exit).
    tx_notified: EventFd,
    /// Signalled when the guest notifies the receive queue (new buffers), activates the card,
    /// or uhyve stops it.
    rx_notified: EventFd,
    stop: AtomicBool,
    /// A breakage by the guest was reported at warning level (later ones go to debug: a guest
    /// that resets and breaks the card in a loop must not flood the terminal).
    warned: AtomicBool,
}

/// The PCI configuration address (port 0xCF8) of the card's dword `register`, if `address`
/// names the card (enable bit set, bus 0, slot 1, function 0).
fn card_register(address: u32) -> Option<u8> {
    let enabled = address & 1 << 31 != 0;
    let bus = (address >> 16) & 0xff;
    let slot = (address >> 11) & 0x1f;
    let function = (address >> 8) & 0x7;
    (enabled && bus == 0 && slot == super::NET_SLOT && function == 0)
        .then_some((address & 0xfc) as u8)
}

impl NetService {
    /// The card with address `mac`, connected to `link`, at `placement`.
    pub fn new(link: HostLink, mac: [u8; 6], placement: CardPlacement) -> std::io::Result<Self> {
        // The configuration's `mtu`: a full Ethernet frame and its virtio header (see
        // NetDevice::features).
        let device = NetDevice::new(mac, 1526);
        Ok(Self {
            transport: Mutex::new(VirtioPciTransport::new(
                device,
                placement.bar_base,
                placement.interrupt_line,
            )),
            link,
            tx_notified: EventFd::new(EFD_NONBLOCK)?,
            rx_notified: EventFd::new(EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        })
    }

    /// Has `register(address, eventfd)` (the hypervisor's KVM_IOEVENTFD) route the guest's
    /// notifications of both queues straight to the I/O thread's eventfds; returns whether it
    /// did. Where it cannot, the notifications keep arriving as MMIO exits, which signal the
    /// same eventfds.
    pub fn route_notifications<E: std::fmt::Display>(
        &self,
        register: impl Fn(u64, &EventFd) -> Result<bool, E>,
    ) -> bool {
        let transport = self.transport();
        let routes = [
            (transport.notify_address(TX_QUEUE), &self.tx_notified),
            (transport.notify_address(RX_QUEUE), &self.rx_notified),
        ];
        for (address, eventfd) in routes {
            match register(address, eventfd) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(error) => {
                    log::info!("network card: notifications stay MMIO exits: {error}");
                    return false;
                }
            }
        }
        true
    }

    fn transport(&self) -> MutexGuard<'_, VirtioPciTransport<NetDevice>> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames and bytes moved so far.
    pub fn counters(&self) -> NetCounters {
        self.transport().device().counters
    }

    /// What the card is connected to, for messages.
    pub fn description(&self) -> String {
        self.link.description()
    }

    /// Marks the card broken by the guest because of `what`, and says so (once at warning level).
    fn break_card(
        &self,
        transport: &mut VirtioPciTransport<NetDevice>,
        what: &dyn std::fmt::Display,
    ) {
        if self.warned.swap(true, Ordering::Relaxed) {
            log::debug!("network card broken by the guest (again): {what}");
        } else {
            log::warn!("network card broken by the guest: {what} (the guest must reset it)");
        }
        transport.set_needs_reset();
    }

    fn running(transport: &VirtioPciTransport<NetDevice>) -> bool {
        let status = transport.device_status();
        status & status::DRIVER_OK != 0 && status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Sends what the guest posted on the transmit queue.
    fn transmit(
        &self,
        transport: &mut VirtioPciTransport<NetDevice>,
        mem: &GuestMemoryMmap,
        interrupt: Interrupt<'_>,
    ) {
        if !Self::running(transport) {
            return;
        }
        let mut frames = Vec::new();
        let (device, queue) = transport.device_and_queue(TX_QUEUE);
        let result = device.take_tx_frames(queue, mem, &mut frames);
        for frame in &mut frames {
            if let Err(error) = super::offload::finish_tx_frame(frame) {
                log::debug!("network card: frame not sent: {error}");
                transport.device_mut().counters.tx_dropped += 1;
                continue;
            }
            // A full interface queue drops the frame, as a congested link would.
            if let Err(error) = self.link.send(frame) {
                log::debug!("network card: frame not sent: {error}");
                transport.device_mut().counters.tx_dropped += 1;
            }
        }
        match result {
            Ok(false) => {}
            Ok(true) => {
                transport.signal_used_queue();
                interrupt.raise();
            }
            Err(error) => {
                self.break_card(transport, &error);
                interrupt.raise();
            }
        }
    }

    /// Stops [`NetService::run_io`].
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.rx_notified.write(1);
    }

    /// The I/O thread: sends what the guest posts on the transmit queue, moves frames from the
    /// backend into the guest's receive buffers, until [`NetService::stop`].
    pub fn run_io(&self, mem: &GuestMemoryMmap, interrupt: Interrupt<'_>) {
        let mut frame = vec![0u8; MAX_FRAME_LEN];
        // A frame read from the backend that found no guest buffer yet; while there is one,
        // the backend is not read (the guest's pace holds the host side back).
        let mut waiting: Option<usize> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let (tx, rx, backend) = self.wait(waiting.is_none());
            if tx {
                let mut transport = self.transport();
                self.transmit(&mut transport, mem, interrupt);
            }
            if waiting.is_some() && !rx {
                continue;
            }
            if waiting.is_none() && !backend {
                continue;
            }
            match self.receive_into_guest(&mut frame, waiting.take(), mem, interrupt) {
                Ok(held) => waiting = held,
                Err(()) => return,
            }
        }
    }

    /// Waits (up to [`IO_POLL`]) for a notification or, if `backend` is wanted, a frame from
    /// the backend; which of the three is ready (the notifications are consumed).
    fn wait(&self, backend: bool) -> (bool, bool, bool) {
        let entry = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            entry(self.tx_notified.as_raw_fd()),
            entry(self.rx_notified.as_raw_fd()),
            entry(if backend { self.link.as_raw_fd() } else { -1 }),
        ];
        // SAFETY: an array of three valid pollfds (a negative fd is ignored), for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 3, IO_POLL.as_millis() as libc::c_int) };
        let ready = |i: usize| fds[i].revents != 0;
        let tx = ready(0) && self.tx_notified.read().is_ok();
        let rx = ready(1) && self.rx_notified.read().is_ok();
        (tx, rx, ready(2))
    }

    /// Delivers `held` (a frame already in `frame`) and then what the backend has, until the
    /// backend has nothing or the guest has no buffer: returns the length of the frame left
    /// waiting for a buffer, or `Err` when the backend has gone or the card stops.
    fn receive_into_guest(
        &self,
        frame: &mut [u8],
        mut held: Option<usize>,
        mem: &GuestMemoryMmap,
        interrupt: Interrupt<'_>,
    ) -> Result<Option<usize>, ()> {
        for delivered in 0u32.. {
            // A host side that floods the card (even one no driver runs yet, whose frames are
            // dropped) must not keep the thread from stopping.
            if self.stop.load(Ordering::SeqCst) {
                return Err(());
            }
            // A host side that floods the guest must not hold its transmissions back.
            if delivered % 16 == 15 && self.tx_notified.read().is_ok() {
                let mut transport = self.transport();
                self.transmit(&mut transport, mem, interrupt);
            }
            let len = match held.take() {
                Some(len) => len,
                None => match self.link.receive(frame) {
                    Received::Frame(len) => len,
                    Received::Nothing => return Ok(None),
                    Received::Gone(reason) => {
                        log::error!(
                            "network card: {} has gone ({reason}): the guest's network is down",
                            self.link.description()
                        );
                        return Err(());
                    }
                },
            };
            let mut transport = self.transport();
            if !Self::running(&transport) {
                // No driver yet: the frame is dropped, as a link without a receiver drops it.
                transport.device_mut().counters.rx_dropped += 1;
                continue;
            }
            let mergeable = transport.driver_features() & 1 << VIRTIO_NET_F_MRG_RXBUF != 0;
            let (device, queue) = transport.device_and_queue(RX_QUEUE);
            let delivered = if mergeable {
                device.deliver_rx_frame_mergeable(queue, mem, &frame[..len])
            } else {
                // One buffer per frame: num_buffers is 1 (virtio 1.x, 5.1.6.4), whatever the
                // backend left in the header.
                if let Some(field) = frame.get_mut(NUM_BUFFERS..NUM_BUFFERS + 2) {
                    field.copy_from_slice(&1u16.to_le_bytes());
                }
                device.deliver_rx_frame(queue, mem, &frame[..len])
            };
            match delivered {
                Ok(Some(wanted)) => {
                    if wanted {
                        transport.signal_used_queue();
                        drop(transport);
                        interrupt.raise();
                    }
                }
                Ok(None) => return Ok(Some(len)),
                Err(error) => {
                    self.break_card(&mut transport, &error);
                    drop(transport);
                    interrupt.raise();
                }
            }
        }
        Ok(None)
    }
}

impl PciDevices for NetService {
    /// A PCI configuration read of the dword `address` names (+ `byte` for a narrower access);
    /// `None` if it is not the card's.
    fn config_read(&self, address: u32, byte: u8, size: u8) -> Option<u32> {
        let register = card_register(address)?;
        let dword = self.transport().config_read(register);
        let shifted = dword >> (8 * u32::from(byte & 3));
        Some(match size {
            1 => shifted & 0xff,
            2 => shifted & 0xffff,
            _ => shifted,
        })
    }

    /// A PCI configuration write; ignored unless it is the card's.
    fn config_write(&self, address: u32, byte: u8, size: u8, value: u32) {
        let Some(register) = card_register(address) else {
            return;
        };
        let mut transport = self.transport();
        let value = if size >= 4 {
            value
        } else {
            // A narrower write changes only its bytes of the dword.
            let shift = 8 * u32::from(byte & 3);
            let mask = (if size == 1 { 0xff } else { 0xffff }) << shift;
            let old = transport.config_read(register);
            (old & !mask) | ((value << shift) & mask)
        };
        transport.config_write(register, value);
    }

    /// A read of `size` bytes at guest-physical `address`, if it lies in the card's BAR. A read
    /// of the ISR clears it and lowers the interrupt, under the card's lock: the I/O thread sets
    /// ISR bits under the same lock and raises the interrupt after, so a lowered line never
    /// hides bits set later.
    fn mmio_read(&self, address: u64, size: u8, interrupt: &dyn DeviceInterrupt) -> Option<u64> {
        let mut transport = self.transport();
        let offset = transport.bar_offset(address)?;
        let mut data = [0u8; 8];
        transport.bar_read(offset, &mut data[..usize::from(size.min(8))]);
        if VirtioPciTransport::<NetDevice>::reads_isr(offset) {
            interrupt.lower();
        }
        Some(u64::from_le_bytes(data))
    }

    /// A write at guest-physical `address`; `false` if it is not in the card's BAR.
    fn mmio_write(
        &self,
        mem: &GuestMemoryMmap,
        address: u64,
        size: u8,
        value: u64,
        interrupt: &dyn DeviceInterrupt,
    ) -> bool {
        let mut transport = self.transport();
        let Some(offset) = transport.bar_offset(address) else {
            return false;
        };
        let bytes = value.to_le_bytes();
        match transport.bar_write(offset, &bytes[..usize::from(size.min(8))]) {
            BarWrite::QueueNotify(TX_QUEUE) => {
                let _ = self.tx_notified.write(1);
            }
            BarWrite::QueueNotify(_) => {
                let _ = self.rx_notified.write(1);
            }
            BarWrite::Activated => {
                let valid = transport.queues_mut().iter().all(|q| q.is_valid(mem));
                if !valid {
                    self.break_card(&mut transport, &"queues activated outside RAM");
                    drop(transport);
                    interrupt.raise();
                    return true;
                }
                drop(transport);
                let _ = self.rx_notified.write(1);
            }
            BarWrite::Reset | BarWrite::None => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bus_0_slot_1_function_0_is_the_card() {
        assert_eq!(card_register(0x8000_0800), Some(0));
        assert_eq!(card_register(0x8000_083c), Some(0x3c));
        assert_eq!(card_register(0x8000_083f), Some(0x3c));
        assert_eq!(card_register(0x0000_0800), None, "enable bit clear");
        assert_eq!(card_register(0x8000_0000), None, "slot 0");
        assert_eq!(card_register(0x8001_0800), None, "bus 1");
        assert_eq!(card_register(0x8000_0900), None, "function 1");
    }
}
