//! An HTTP client for uhyve's network tests: `httpget HOST:PORT PATH` connects to HOST:PORT (an
//! IPv4 address and port), sends `GET PATH HTTP/1.0`, prints the response's status line as
//! `httpget: status LINE`, its body between `httpget: body begin` and `httpget: body end`, and
//! `httpget: N body bytes`, and exits 0 on status 200, 1 on any other status, 2 on a bad
//! argument and 3 on a network error. It retries the connection for a while: the kernel's DHCP
//! client may still be at work when main starts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn fail(code: i32, message: String) -> ! {
    println!("httpget: {message}");
    std::process::exit(code);
}

fn connect(address: SocketAddr) -> TcpStream {
    let started = Instant::now();
    loop {
        match TcpStream::connect(address) {
            Ok(stream) => return stream,
            Err(error) if started.elapsed() > Duration::from_secs(120) => {
                fail(3, format!("cannot connect to {address}: {error}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Writes all of `data`; Hermit's socket write answers 0 while its send buffer is full.
fn send_all(stream: &mut TcpStream, mut data: &[u8]) {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => std::thread::sleep(Duration::from_millis(1)),
            Ok(n) => data = &data[n..],
            Err(error) => fail(3, format!("write failed: {error}")),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(path)) = (args.next(), args.next()) else {
        fail(2, "usage: httpget HOST:PORT PATH".into())
    };
    let address: SocketAddr = address
        .parse()
        .unwrap_or_else(|_| fail(2, format!("not an address and port: {address}")));
    let mut stream = connect(address);
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: httpget\r\n\r\n");
    send_all(&mut stream, request.as_bytes());
    let mut response = Vec::new();
    if let Err(error) = stream.read_to_end(&mut response) {
        fail(3, format!("read failed: {error}"));
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    println!("httpget: status {status}");
    println!("httpget: body begin");
    println!("{body}");
    println!("httpget: body end");
    println!("httpget: {} body bytes", body.len());
    let ok = status.split_whitespace().nth(1) == Some("200");
    std::process::exit(if ok { 0 } else { 1 });
}
