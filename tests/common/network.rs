//! The host side of the network tests (tests/net_tap.rs, tests/net_user.rs): a client that has
//! the Hermit echo server `netecho` send data back, a one-request HTTP server for the Hermit
//! client `httpget`, and the report of a finished uhyve.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether passt can be run (for `--net user`); skips with a message, or under
/// `UHYVE_REQUIRE_KVM` (CI) panics, when it cannot.
pub fn passt_or_skip(test: &str) -> bool {
    let installed = std::process::Command::new("passt")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if installed {
        return true;
    }
    if std::env::var_os("UHYVE_REQUIRE_KVM").is_some() {
        panic!("{test}: passt is not installed, but UHYVE_REQUIRE_KVM is set");
    }
    eprintln!("skipping {test}: passt is not installed (apt-get install passt)");
    false
}

/// uhyve's standard error for `--net NET` refused by the command line (status 2, no panic).
pub fn refused_net_option(net: &str) -> String {
    let output = std::process::Command::new(super::UHYVE_BIN)
        .args(["--net", net, "nonexistent-kernel"])
        .output()
        .expect("run uhyve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// How long a guest may take to boot, get its address and answer (every instruction is
/// emulated by the host kernel on this project's machines).
pub const DEADLINE: Duration = Duration::from_secs(240);

/// `child`'s output once it ends, or once it has run for `limit`: then it is killed first, so
/// that a guest that never gets its network fails the test with its output instead of holding
/// it (and CI) for ever.
pub fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id() as libc::pid_t;
    let ended = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let ended = ended.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !ended.load(Ordering::SeqCst) {
                if started.elapsed() > limit {
                    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The
                    // pid is the child's until wait_with_output reaps it; only in the instant
                    // between that reap and `ended` could it name a recycled pid.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let output = child.wait_with_output().expect("wait for uhyve");
    ended.store(true, Ordering::SeqCst);
    watchdog.join().expect("the watchdog thread");
    output
}

/// Connects to the echo server at `address` (retrying while the guest boots, until `ended` or
/// [`DEADLINE`]), sends `data` and returns what came back. A connection that ends before any
/// byte came back is retried too: passt accepts for a guest that does not listen yet, then
/// resets.
pub fn echo(address: SocketAddr, data: &[u8], ended: &AtomicBool) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    loop {
        let error = match echo_once(address, data) {
            Ok(back) => return Ok(back),
            Err((error, false)) => error,
            Err((error, true)) => return Err(error),
        };
        if started.elapsed() > DEADLINE || ended.load(Ordering::SeqCst) {
            return Err(format!("no echo from {address}: {error}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One attempt; the error says whether any byte had come back (then a retry cannot help).
fn echo_once(address: SocketAddr, data: &[u8]) -> Result<Vec<u8>, (String, bool)> {
    let early = |error: std::io::Error| (error.to_string(), false);
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(early)?;
    stream.set_read_timeout(Some(DEADLINE)).map_err(early)?;
    // All of it, then all of it back, then the end: the server echoes while the connection is
    // open in both directions.
    stream.write_all(data).map_err(early)?;
    let mut back = vec![0u8; data.len()];
    let mut filled = 0;
    while filled < back.len() {
        match stream.read(&mut back[filled..]) {
            Ok(0) => return Err((format!("the echo ended after {filled} bytes"), filled > 0)),
            Ok(n) => filled += n,
            Err(error) => return Err((format!("reading the echo: {error}"), filled > 0)),
        }
    }
    let late = |error: std::io::Error| (error.to_string(), true);
    stream.shutdown(Shutdown::Write).map_err(late)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).map_err(late)?;
    back.extend_from_slice(&rest);
    Ok(back)
}

/// Has `netecho` behind `uhyve` echo 20,000 bytes: `client` connects (given the data and a
/// flag set once uhyve has ended) while a thread waits for uhyve; checks the echo, netecho's
/// count and the exit status, and returns uhyve's output.
pub fn check_echo(
    uhyve: Child,
    client: impl FnOnce(&[u8], &AtomicBool) -> Result<Vec<u8>, String>,
) -> Output {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let ended = AtomicBool::new(false);
    let (echoed, output) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            // The client gives up after DEADLINE; netecho would wait for it for ever.
            let output = output_within(uhyve, DEADLINE + Duration::from_secs(30));
            ended.store(true, Ordering::SeqCst);
            output
        });
        let echoed = client(&data, &ended);
        (echoed, waiter.join().expect("the waiting thread"))
    });
    let report = report(&output);
    let echoed = echoed.unwrap_or_else(|error| panic!("{error}\n{report}"));
    assert!(
        echoed == data,
        "the echo differs ({} bytes)\n{report}",
        echoed.len()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("netecho: echoed 20000 bytes"), "{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");
    output
}

/// The body [`serve_one_http_request`] answers with.
pub const HTTP_BODY: &str = "Hello from the host side of uhyve's network test.\n";

/// Answers one HTTP request on `listener` with status 200 and [`HTTP_BODY`], in a thread that
/// returns the request line (or gives up once `stop` is set or after [`DEADLINE`]).
pub fn serve_one_http_request(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let (stream, _) = loop {
            match listener.accept() {
                Ok(connection) => break connection,
                Err(_) if started.elapsed() > DEADLINE || stop.load(Ordering::SeqCst) => {
                    return Err("no HTTP request came".into());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(&stream);
        let mut request_line = String::new();
        reader
            .read_line(&mut request_line)
            .map_err(|e| e.to_string())?;
        // The headers, up to the empty line.
        let mut line = String::new();
        while reader.read_line(&mut line).map_err(|e| e.to_string())? > 2 {
            line.clear();
        }
        let response = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{HTTP_BODY}",
            HTTP_BODY.len()
        );
        (&stream)
            .write_all(response.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(request_line.trim_end().to_string())
    })
}

/// uhyve's standard output and error, for assertion messages.
pub fn report(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `uhyve` (started with `httpget` fetching `path` from `listener`'s address) against a
/// one-request server on `listener`, and checks what the server saw and `httpget` printed.
pub fn check_http_fetch(
    listener: TcpListener,
    path: &str,
    uhyve: impl FnOnce(SocketAddr) -> Child,
) {
    let server = listener.local_addr().expect("the server's address");
    let stop = Arc::new(AtomicBool::new(false));
    let request = serve_one_http_request(listener, stop.clone());
    let output = output_within(uhyve(server), DEADLINE);
    stop.store(true, Ordering::SeqCst);
    let request = request.join().expect("the server thread");
    let report = report(&output);
    let request = request.unwrap_or_else(|error| panic!("{error}\n{report}"));
    assert_eq!(request, format!("GET {path} HTTP/1.0"), "{report}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("httpget: status HTTP/1.0 200 OK"),
        "{report}"
    );
    assert!(
        stdout.contains(&format!("httpget: body begin\n{HTTP_BODY}")),
        "{report}"
    );
    assert_eq!(output.status.code(), Some(0), "{report}");
}
