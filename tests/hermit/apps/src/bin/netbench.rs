//! The guest side of uhyve's network benchmark (benches/uhyve_bench/network.rs): listens on TCP
//! port 7778 (or the first argument), prints `netbench: listening on PORT` and serves one
//! connection after another. The first byte of a connection selects what it does:
//!
//! - `r` + u64 LE n: read n bytes, then write back the count read as a u64 LE (host → guest);
//! - `s` + u64 LE n: write n bytes, then close (guest → host);
//! - `p`: echo 64-byte messages until the client closes (request/response latency);
//! - `q`: exit 0.
//!
//! It prints nothing else unless something fails (then one `netbench: …` line, and it goes on
//! with the next connection).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The size of one ping-pong message.
const MESSAGE: usize = 64;

/// Writes all of `data`. Hermit's socket write answers 0 while its send buffer is full (std's
/// `write_all` takes that for an error): wait a little and go on.
fn send_all(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => std::thread::sleep(Duration::from_millis(1)),
            Ok(n) => data = &data[n..],
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn read_u64(stream: &mut TcpStream) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    stream.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Serves one connection; `Ok(true)` asks to quit.
fn serve(mut stream: TcpStream) -> io::Result<bool> {
    // Small messages must not wait for Nagle's algorithm; a kernel without the option is fine.
    let _ = stream.set_nodelay(true);
    let mut command = [0u8; 1];
    if stream.read(&mut command)? == 0 {
        // A connection that only checked whether the server is up.
        return Ok(false);
    }
    let mut buffer = vec![0u8; 64 * 1024];
    match command[0] {
        b'r' => {
            let wanted = read_u64(&mut stream)?;
            let mut count = 0u64;
            while count < wanted {
                match stream.read(&mut buffer)? {
                    0 => break,
                    n => count += n as u64,
                }
            }
            send_all(&mut stream, &count.to_le_bytes())?;
        }
        b's' => {
            let mut left = read_u64(&mut stream)?;
            while left > 0 {
                let n = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                send_all(&mut stream, &buffer[..n])?;
                left -= n as u64;
            }
        }
        b'p' => {
            let mut message = [0u8; MESSAGE];
            loop {
                match stream.read_exact(&mut message) {
                    Ok(()) => send_all(&mut stream, &message)?,
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(error) => return Err(error),
                }
            }
        }
        b'q' => return Ok(true),
        other => println!("netbench: unknown command byte {other:#04x}"),
    }
    Ok(false)
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(7778);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(error) => {
            println!("netbench: cannot listen on {port}: {error}");
            std::process::exit(2);
        }
    };
    println!("netbench: listening on {port}");
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) => {
                println!("netbench: accept failed: {error}");
                continue;
            }
        };
        match serve(stream) {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => println!("netbench: connection failed: {error}"),
        }
    }
}
