use etherparse::PacketBuilder;

use super::*;

const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

/// A frame with a correct checksum built by etherparse, behind a zero virtio header.
fn frame(builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> Vec<u8> {
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let mut bytes = vec![0; NET_HEADER_LEN];
    builder.write(&mut bytes, &payload).unwrap();
    bytes
}

fn tcp_v4() -> Vec<u8> {
    frame(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv4([10, 0, 5, 3], [10, 0, 5, 1], 64)
            .tcp(7777, 40000, 12345, 65535),
    )
}

/// The frame as a driver hands it over: NEEDS_CSUM, the checksum field holding `left`.
fn as_offloaded(mut bytes: Vec<u8>, field: usize, left: u16) -> Vec<u8> {
    bytes[0] = NEEDS_CSUM;
    bytes[NET_HEADER_LEN + field..NET_HEADER_LEN + field + 2].copy_from_slice(&left.to_be_bytes());
    bytes
}

#[test]
fn tcp_over_ipv4_gets_its_checksum_whatever_the_field_held() {
    let complete = tcp_v4();
    let field = 14 + 20 + TCP_CHECKSUM_AT;
    for left in [0, 0x1234, 0xffff] {
        let mut sent = as_offloaded(complete.clone(), field, left);
        finish_tx_frame(&mut sent).unwrap();
        assert_eq!(sent, complete, "field held {left:#x}");
    }
}

#[test]
fn tcp_and_udp_over_ipv6_and_udp_over_ipv4_too() {
    let payload = [0x5au8; 333];
    let mut cases = Vec::new();
    let mut udp_v4 = vec![0; NET_HEADER_LEN];
    PacketBuilder::ethernet2(MACS.0, MACS.1)
        .ipv4([10, 0, 5, 3], [10, 0, 5, 1], 64)
        .udp(5353, 53)
        .write(&mut udp_v4, &payload)
        .unwrap();
    cases.push((udp_v4, 14 + 20 + UDP_CHECKSUM_AT));
    let mut udp_v6 = vec![0; NET_HEADER_LEN];
    PacketBuilder::ethernet2(MACS.0, MACS.1)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(5353, 53)
        .write(&mut udp_v6, &payload)
        .unwrap();
    cases.push((udp_v6, 14 + 40 + UDP_CHECKSUM_AT));
    let tcp_v6 = frame(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(80, 40000, 1, 1000),
    );
    cases.push((tcp_v6, 14 + 40 + TCP_CHECKSUM_AT));
    for (complete, field) in cases {
        let mut sent = as_offloaded(complete.clone(), field, 0);
        finish_tx_frame(&mut sent).unwrap();
        assert_eq!(sent, complete);
    }
}

#[test]
fn other_frames_pass_unchanged_with_a_clear_header() {
    // ARP as Hermit 0.11 sends it: NEEDS_CSUM, csum_start 14, csum_offset 0.
    let mut arp = vec![0; NET_HEADER_LEN];
    arp[0] = NEEDS_CSUM;
    arp[6] = 14;
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MACS.0);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0x11; 20]);
    let mut sent = arp.clone();
    finish_tx_frame(&mut sent).unwrap();
    assert_eq!(&sent[NET_HEADER_LEN..], &arp[NET_HEADER_LEN..]);
    assert_eq!(&sent[..NET_HEADER_LEN], &[0; NET_HEADER_LEN]);
}

#[test]
fn truncated_and_garbage_frames_neither_panic_nor_grow() {
    let complete = as_offloaded(tcp_v4(), 14 + 20 + TCP_CHECKSUM_AT, 0);
    for len in 0..complete.len() {
        let mut cut = complete[..len].to_vec();
        let result = finish_tx_frame(&mut cut);
        assert_eq!(cut.len(), len);
        assert_eq!(result.is_err(), len < NET_HEADER_LEN, "length {len}");
    }
}

#[test]
fn segmentation_requests_are_refused() {
    let mut frame = tcp_v4();
    frame[1] = 1;
    assert_eq!(
        finish_tx_frame(&mut frame),
        Err(OffloadError::Segmentation(1))
    );
}
