//! The TAP backend (`uhyve::virtio::tap`) against a real TAP interface: uhyve's side writes a
//! frame with its 12-byte virtio header and a packet socket on the interface sees the bare
//! Ethernet frame; a frame sent through the packet socket arrives at uhyve's side behind a
//! virtio header. Needs root (CAP_NET_ADMIN) and /dev/net/tun: skipped with a message
//! elsewhere, a failure under UHYVE_REQUIRE_KVM (CI, which runs as root).
#![cfg(target_os = "linux")]

use std::io::ErrorKind;
use std::process::Command;
use std::time::{Duration, Instant};

use uhyve::virtio::net::NET_HEADER_LEN;
use uhyve::virtio::tap::Tap;

/// A TAP interface created for one test, removed afterwards (it disappears with its last
/// descriptor, as the test creates it non-persistent).
fn tap_or_skip(name: &str) -> Option<Tap> {
    match Tap::open("uhyvet%d") {
        Ok(tap) => Some(tap),
        Err(error) => {
            if std::env::var_os("UHYVE_REQUIRE_KVM").is_some() {
                panic!("{name}: {error}, but UHYVE_REQUIRE_KVM is set");
            }
            eprintln!("skipping {name}: {error}");
            None
        }
    }
}

/// A raw packet socket bound to interface `name` (brought up first).
fn packet_socket(name: &str) -> libc::c_int {
    let up = Command::new("ip")
        .args(["link", "set", "dev", name, "up"])
        .status()
        .expect("run ip");
    assert!(up.success(), "ip link set {name} up");
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the descriptor is closed at the end of the test.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(fd >= 0, "socket(AF_PACKET)");
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "if_nametoindex({name})");
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it an address.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: `address` is a sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(bound, 0, "bind to {name}");
    fd
}

/// An Ethernet frame from `source` of an experimental EtherType with `payload`.
fn ethernet(source: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, source]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn frames_cross_with_their_virtio_header() {
    let Some(tap) = tap_or_skip("frames_cross_with_their_virtio_header") else {
        return;
    };
    assert!(tap.name().starts_with("uhyvet"), "{}", tap.name());
    let socket = packet_socket(tap.name());

    // uhyve → interface: the header is consumed, the frame arrives bare.
    let sent = ethernet(1, b"from the guest");
    let mut with_header = vec![0u8; NET_HEADER_LEN];
    with_header.extend_from_slice(&sent);
    tap.send(&with_header).expect("send to the TAP");
    let mut buffer = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let received = loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                socket,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 && buffer[..n as usize] == sent[..] {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(received, "the interface did not see the frame");

    // interface → uhyve: the frame arrives behind a (zeroed) virtio header.
    let back = ethernet(2, b"to the guest");
    // SAFETY: the frame is valid for its length.
    let n = unsafe { libc::send(socket, back.as_ptr().cast(), back.len(), 0) };
    assert_eq!(n, back.len() as isize, "send on the packet socket");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut frame = [0u8; 2048];
    let got = loop {
        match tap.receive(&mut frame) {
            Ok(len) if frame[NET_HEADER_LEN..len] == back[..] => break Some(len),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) => panic!("receive from the TAP: {error}"),
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(got, Some(NET_HEADER_LEN + back.len()));
    // SAFETY: closing the socket this test opened.
    unsafe { libc::close(socket) };
}
