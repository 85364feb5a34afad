use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use super::*;

/// A link over one end of a socket pair, and the other end as passt's.
fn linked() -> (PasstLink, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (PasstLink::over(ours, "test".into()).unwrap(), theirs)
}

fn framed(ethernet: &[u8]) -> Vec<u8> {
    let mut bytes = (ethernet.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(ethernet);
    bytes
}

#[test]
fn a_sent_frame_loses_its_virtio_header_and_gains_a_length() {
    let (link, mut passt) = linked();
    let mut frame = vec![0xaa; NET_HEADER_LEN];
    frame.extend_from_slice(&[1, 2, 3, 4, 5]);
    link.send(&frame).unwrap();
    let mut got = [0u8; 9];
    passt.read_exact(&mut got).unwrap();
    assert_eq!(got, [0, 0, 0, 5, 1, 2, 3, 4, 5]);
}

#[test]
fn received_frames_are_cut_at_their_lengths_whatever_the_reads() {
    let (link, mut passt) = linked();
    let mut frame = vec![0xff; MAX_FRAME_LEN];
    assert_eq!(
        link.receive(&mut frame).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let mut stream = framed(&[7; 60]);
    stream.extend(framed(&[8; 1514]));
    // The first frame and part of the second's prefix.
    passt.write_all(&stream[..66]).unwrap();
    assert_eq!(link.receive(&mut frame).unwrap(), NET_HEADER_LEN + 60);
    assert_eq!(&frame[..NET_HEADER_LEN], &[0; NET_HEADER_LEN]);
    assert_eq!(&frame[NET_HEADER_LEN..NET_HEADER_LEN + 60], &[7; 60]);
    assert_eq!(
        link.receive(&mut frame).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    passt.write_all(&stream[66..]).unwrap();
    assert_eq!(link.receive(&mut frame).unwrap(), NET_HEADER_LEN + 1514);
    assert_eq!(&frame[NET_HEADER_LEN..NET_HEADER_LEN + 1514], &[8; 1514]);
    drop(passt);
    assert_eq!(
        link.receive(&mut frame).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn many_large_frames_pass_through_the_buffer_in_order() {
    let (link, mut passt) = linked();
    let writer = std::thread::spawn(move || {
        for n in 0..40u8 {
            passt.write_all(&framed(&[n; 65_000])).unwrap();
        }
    });
    let mut frame = vec![0; MAX_FRAME_LEN];
    let mut n = 0u8;
    while n < 40 {
        match link.receive(&mut frame) {
            Ok(len) => {
                assert_eq!(len, NET_HEADER_LEN + 65_000);
                assert!(
                    frame[NET_HEADER_LEN..len].iter().all(|&b| b == n),
                    "frame {n}"
                );
                n += 1;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(error) => panic!("{error}"),
        }
    }
    writer.join().unwrap();
}

#[test]
fn a_passt_that_stops_reading_breaks_the_link_within_the_timeout() {
    let (link, _passt) = linked();
    let mut frame = vec![0u8; NET_HEADER_LEN + 1500];
    let started = std::time::Instant::now();
    // Nobody reads: the socket fills, a send times out, the link is broken for good.
    let failed = (0..100_000).find_map(|_| link.send(&frame).err());
    assert!(failed.is_some(), "every send went through");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(link.send(&frame).is_err(), "a later send must fail at once");
    assert_eq!(
        link.receive(&mut frame).unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[test]
fn a_length_no_ethernet_frame_has_is_an_error() {
    let (link, mut passt) = linked();
    passt
        .write_all(&((MAX_ETHERNET_FRAME + 1) as u32).to_be_bytes())
        .unwrap();
    let mut frame = vec![0; MAX_FRAME_LEN];
    assert_eq!(
        link.receive(&mut frame).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

#[test]
fn forwards_become_passts_port_options() {
    let forward = |protocol, host_address: Option<IpAddr>| PortForward {
        protocol,
        host_address,
        host_port: 8080,
        guest_port: 80,
    };
    assert_eq!(
        passt_forward_arguments(&forward(ForwardProtocol::Tcp, None)),
        ["--tcp-ports", "8080:80"].map(OsString::from)
    );
    assert_eq!(
        passt_forward_arguments(&forward(
            ForwardProtocol::Udp,
            Some("127.0.0.1".parse().unwrap())
        )),
        ["--udp-ports", "127.0.0.1/8080:80"].map(OsString::from)
    );
    assert_eq!(
        passt_forward_arguments(&forward(ForwardProtocol::Tcp, Some("::1".parse().unwrap()))),
        ["--tcp-ports", "::1/8080:80"].map(OsString::from)
    );
}

#[test]
fn the_reason_of_a_failed_start_skips_passts_noise() {
    let stderr = "Failed to send 47 bytes to syslog\nDon't run as root. Changing to nobody...\n\
                  Failed to send 67 bytes to syslog\n\
                  Failed to bind any port for '-t 127.0.0.1/8080:80', exiting\n";
    assert_eq!(
        failure_reason(stderr),
        "Failed to bind any port for '-t 127.0.0.1/8080:80', exiting"
    );
    assert_eq!(failure_reason(""), "no message");
}

#[test]
fn connecting_to_a_missing_socket_names_it() {
    let error = PasstLink::connect(Path::new("/nonexistent/passt.socket")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--net passt:/nonexistent/passt.socket: cannot connect to passt's socket: No such file or \
         directory (os error 2)"
    );
}
