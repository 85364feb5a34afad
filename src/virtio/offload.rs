//! Checksum offload for the guest's frames: the card offers VIRTIO_NET_F_CSUM, so a driver may
//! leave the TCP or UDP checksum of a frame it sends to the device (virtio header flag
//! NEEDS_CSUM), and VIRTIO_NET_F_GUEST_CSUM, so it may skip checking the checksums of frames
//! it receives (every frame uhyve delivers has complete checksums: TAP offloads stay off and
//! passt computes its own). On this project's hosts a guest instruction costs about a
//! microsecond, and a checksum over a full frame is thousands of them; uhyve computes it
//! natively.
//!
//! The checksum is computed from scratch, pseudo-header included, from the frame as parsed
//! (etherparse), whatever the driver left in the field: the virtio specification wants the
//! pseudo-header sum there, Hermit 0.11 (smoltcp) leaves zero. NEEDS_CSUM on a frame that is
//! not TCP or UDP over IPv4 or IPv6 is ignored: Hermit 0.11 sets it on every frame, ARP
//! included, with a checksum offset of 0 that would overwrite the frame's own bytes. The
//! header that leaves uhyve is all zeros (no flags, no segmentation): the host side always
//! gets frames that are complete as they are.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use thiserror::Error;

use super::net::NET_HEADER_LEN;

/// `flags` bit of the virtio header: the device is to complete the checksum.
const NEEDS_CSUM: u8 = 1;
/// Where the checksum lies in a TCP and in a UDP header.
const TCP_CHECKSUM_AT: usize = 16;
const UDP_CHECKSUM_AT: usize = 6;

/// A frame from the guest that the card cannot send.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OffloadError {
    /// The frame asks for segmentation, which the card does not offer.
    #[error("the frame asks for segmentation offload (gso_type {0}), which was not offered")]
    Segmentation(u8),
    /// The frame is shorter than its virtio header.
    #[error("a frame shorter than its virtio header")]
    Short,
}

/// Completes the checksum of `frame` (virtio header first) if its header asks for it, then
/// clears the header.
pub fn finish_tx_frame(frame: &mut [u8]) -> Result<(), OffloadError> {
    let (header, ethernet) = frame
        .split_at_mut_checked(NET_HEADER_LEN)
        .ok_or(OffloadError::Short)?;
    let (flags, gso_type) = (header[0], header[1]);
    if gso_type != 0 {
        return Err(OffloadError::Segmentation(gso_type));
    }
    if flags & NEEDS_CSUM != 0
        && let Some((at, checksum)) = transport_checksum(ethernet)
    {
        ethernet[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    }
    header.fill(0);
    Ok(())
}

/// Where the TCP or UDP checksum of `ethernet` lies, and its correct value; `None` for a frame
/// that is not TCP or UDP over IP (or does not parse).
fn transport_checksum(ethernet: &[u8]) -> Option<(usize, u16)> {
    let packet = SlicedPacket::from_ethernet(ethernet).ok()?;
    let (source, destination) = match packet.net? {
        NetSlice::Ipv4(ip) => (
            Address::V4(ip.header().source()),
            Address::V4(ip.header().destination()),
        ),
        NetSlice::Ipv6(ip) => (
            Address::V6(ip.header().source()),
            Address::V6(ip.header().destination()),
        ),
        NetSlice::Arp(_) => return None,
    };
    let (segment, field, checksum) = match packet.transport? {
        TransportSlice::Tcp(tcp) => {
            let checksum = match (source, destination) {
                (Address::V4(s), Address::V4(d)) => tcp.calc_checksum_ipv4(s, d),
                (Address::V6(s), Address::V6(d)) => tcp.calc_checksum_ipv6(s, d),
                _ => return None,
            };
            (tcp.slice(), TCP_CHECKSUM_AT, checksum.ok()?)
        }
        TransportSlice::Udp(udp) => {
            let header = udp.to_header();
            let checksum = match (source, destination) {
                (Address::V4(s), Address::V4(d)) => {
                    header.calc_checksum_ipv4_raw(s, d, udp.payload())
                }
                (Address::V6(s), Address::V6(d)) => {
                    header.calc_checksum_ipv6_raw(s, d, udp.payload())
                }
                _ => return None,
            };
            (udp.slice(), UDP_CHECKSUM_AT, checksum.ok()?)
        }
        _ => return None,
    };
    // The segment is a sub-slice of `ethernet`: its offset is the difference of the addresses.
    let start = (segment.as_ptr() as usize).checked_sub(ethernet.as_ptr() as usize)?;
    let at = start.checked_add(field)?;
    (at + 2 <= ethernet.len()).then_some((at, checksum))
}

/// An IP address of either family, as bytes.
#[derive(Debug, Clone, Copy)]
enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[cfg(test)]
mod tests;
