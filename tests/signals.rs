//! A host signal stops a running guest cleanly: the console output is flushed, the private temp
//! directory is removed, and uhyve exits with `128 + signal` and a message. Also with a second
//! vCPU, which on aarch64 waits powered off in the host kernel for a PSCI CPU_ON that never
//! comes: its thread must be kicked out of `KVM_RUN` too. Built for an aarch64 host, the tests
//! run the aarch64 build of the same guest (in the emulated Arm machine of `.ci/aarch64-kvm`).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{UHYVE_BIN, guest, kvm_or_skip};

#[test]
fn sigint_stops_a_spinning_guest_and_cleans_up() {
    if !kvm_or_skip("sigint_stops_a_spinning_guest_and_cleans_up") {
        return;
    }
    interrupt_guest(&[], &[], "spinning\n", libc::SIGINT);
}

#[test]
fn sigterm_stops_a_guest_on_two_vcpus() {
    if !kvm_or_skip("sigterm_stops_a_guest_on_two_vcpus") {
        return;
    }
    interrupt_guest(&["-c", "2"], &[], "spinning\n", libc::SIGTERM);
}

#[test]
fn sigint_stops_a_guest_blocked_on_stdin() {
    if !kvm_or_skip("sigint_stops_a_guest_blocked_on_stdin") {
        return;
    }
    interrupt_guest(&[], &["stdin"], "reading\n", libc::SIGINT);
}

#[test]
fn sigterm_stops_a_guest_whose_stdout_is_never_read() {
    if !kvm_or_skip("sigterm_stops_a_guest_whose_stdout_is_never_read") {
        return;
    }
    // After "flooding" the test stops reading: the pipe fills up and the guest's console write
    // blocks in the host; SIGTERM must still end uhyve.
    interrupt_guest(&[], &["flood"], "flooding\n", libc::SIGTERM);
}

/// Starts the spin guest with uhyve `options` and guest `args`, waits until it printed `ready`,
/// sends `signal` and checks that uhyve stops promptly, reports the signal and leaves no temp
/// files behind.
fn interrupt_guest(options: &[&str], args: &[&str], ready: &str, signal: libc::c_int) {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(UHYVE_BIN)
        .args(options)
        .arg(guest("spin"))
        .args(args)
        .env("TMPDIR", tmp.path())
        // An open pipe nobody writes to: a read from the guest's stdin blocks.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest to reach its loop (it prints "spinning" first).
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(ready.as_bytes()) {
        match stdout.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!(
                "the guest ended before it was ready: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    let temp_dirs = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(
        temp_dirs, 1,
        "uhyve's private temp directory should exist while it runs"
    );

    // Time for a flooding guest to fill the pipe and block in its console write.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("uhyve did not stop within 10 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let name = if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    assert_eq!(status.code(), Some(128 + signal), "{stderr}");
    assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
}
