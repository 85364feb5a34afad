//! A TCP echo server for uhyve's network tests: listens on port 7777 (or the first argument),
//! prints `netecho: listening on PORT`, serves one connection (every byte comes back), prints
//! `netecho: echoed N bytes` and exits 0 when the client closes. The guest gets its address
//! from the network it is attached to (the kernel's DHCP client).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Writes all of `data`. Hermit's socket write answers 0 while its send buffer is full (std's
/// `write_all` takes that for an error): wait a little and go on.
fn send_all(stream: &mut TcpStream, mut data: &[u8]) {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => std::thread::sleep(Duration::from_millis(1)),
            Ok(n) => data = &data[n..],
            Err(error) => {
                println!("netecho: write failed: {error}");
                std::process::exit(4);
            }
        }
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(7777);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(error) => {
            println!("netecho: cannot listen on {port}: {error}");
            std::process::exit(2);
        }
    };
    println!("netecho: listening on {port}");
    let (mut stream, peer) = match listener.accept() {
        Ok(connection) => connection,
        Err(error) => {
            println!("netecho: accept failed: {error}");
            std::process::exit(3);
        }
    };
    println!("netecho: connection from {peer}");
    let mut total = 0usize;
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                send_all(&mut stream, &buffer[..n]);
                total += n;
            }
            Err(error) => {
                println!("netecho: read failed: {error}");
                std::process::exit(5);
            }
        }
    }
    println!("netecho: echoed {total} bytes");
}
