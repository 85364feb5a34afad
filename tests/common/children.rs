//! Child processes of the tests that talk to them while they run (tests/gdb.rs,
//! tests/gdb_aarch64.rs): their output collected by a thread, a deadline, a free TCP port.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the kernel's choice for port 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Output of a child, collected by a thread while it runs.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<String>>);

impl Captured {
    pub fn spawn(pipe: impl Read + Send + 'static) -> (Self, JoinHandle<()>) {
        let captured = Self::default();
        let sink = captured.clone();
        let handle = thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                sink.0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        (captured, handle)
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.text().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// Waits for `child` until `timeout`; kills it (and its process group, which a machine leads:
/// QEMU must not outlive its script) then and returns None.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) of the process group this test's child leads (or of the child
            // alone, for a child without its own group, where the call fails harmlessly).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
