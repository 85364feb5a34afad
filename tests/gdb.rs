//! Integration tests of the GDB server (`-s/--gdb-port`) with the real `gdb`: uhyve runs a test
//! guest (mostly `gdb_target`, built with debug info, see tests/guests/gdb_target.c) and waits
//! for GDB; `gdb -batch -nx` drives it with a command file, and the tests check both GDB's output
//! and uhyve's. Without `gdb` (or KVM) the tests are skipped with a message; under
//! `UHYVE_REQUIRE_KVM` (CI) a missing `gdb` fails them.
//!
//! Watchpoints: KVM-PVM (this project's machines) accepts the debug registers but never
//! delivers data breakpoints; `uhyve::linux::probe_data_breakpoints` finds out which kind of
//! host runs the test, and the watchpoint test asserts the trigger only where they are delivered.
#![cfg(kvm)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::children::{Captured, free_port, wait_deadline};
use common::{UHYVE_BIN, Uhyve, guest, kvm_or_skip, real_image};

/// The exit code of tests/guests/gdb_target.c.
const TARGET_EXIT: i32 = 7;
/// Deadline of one uhyve or gdb run.
const DEADLINE: Duration = Duration::from_secs(90);

/// Whether the test `name` can run: KVM and `gdb` are there. Without `gdb` it fails under
/// `UHYVE_REQUIRE_KVM` and is skipped (with a message) otherwise.
fn gdb_or_skip(name: &str) -> bool {
    if !kvm_or_skip(name) {
        return false;
    }
    let found = Command::new("gdb")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("UHYVE_REQUIRE_KVM").is_some() {
            panic!(
                "{name}: `gdb` is not installed, but UHYVE_REQUIRE_KVM is set (apt-get install gdb)"
            );
        }
        eprintln!("skipping {name}: `gdb` is not installed");
    }
    found
}

/// A uhyve process waiting for (or serving) GDB.
struct Session {
    child: Child,
    port: u16,
    kernel: PathBuf,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
}

/// How a uhyve session ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn report(&self) -> String {
        format!(
            "uhyve status: {}\n--- uhyve stdout ---\n{}\n--- uhyve stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Session {
    /// Starts `uhyve OPTIONS -s 127.0.0.1:PORT KERNEL ARGS` and waits for its "waiting for GDB"
    /// line.
    fn start(kernel: &Path, options: &[&str], args: &[&str]) -> Self {
        let port = free_port();
        let mut child = Command::new(UHYVE_BIN)
            .args(options)
            .arg("-s")
            .arg(format!("127.0.0.1:{port}"))
            .arg(kernel)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start uhyve");
        let (stdout, out) = Captured::spawn(child.stdout.take().unwrap());
        let (stderr, err) = Captured::spawn(child.stderr.take().unwrap());
        let session = Self {
            child,
            port,
            kernel: kernel.to_owned(),
            stdout,
            stderr,
            readers: vec![out, err],
        };
        if !session
            .stderr
            .wait_for("waiting for GDB", Duration::from_secs(30))
        {
            let ended = session.finish();
            panic!("uhyve did not wait for GDB\n{}", ended.report());
        }
        session
    }

    /// Waits for uhyve to end (killing it after the deadline, which fails the test).
    fn finish(mut self) -> Ended {
        let status = wait_deadline(&mut self.child, DEADLINE);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let ended = Ended {
            status: status.unwrap_or_else(|| self.child.wait().expect("wait for uhyve")),
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        };
        assert!(
            status.is_some(),
            "uhyve did not finish within {DEADLINE:?} and was killed\n{}",
            ended.report()
        );
        ended
    }

    /// Starts `gdb -batch -nx -ex 'file KERNEL' -x CMDFILE </dev/null` with `commands` after
    /// the connection to this session.
    fn gdb(&self, commands: &str) -> Gdb {
        let script = std::env::temp_dir().join(format!(
            "uhyve-gdb-test-{}-{}.gdb",
            std::process::id(),
            self.port
        ));
        let text = format!(
            "set pagination off\nset confirm off\ntarget remote 127.0.0.1:{}\n{commands}",
            self.port
        );
        std::fs::write(&script, text).expect("write the gdb command file");
        let mut child = Command::new("gdb")
            .args(["-batch", "-nx", "-ex"])
            .arg(format!("file {}", self.kernel.display()))
            .arg("-x")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gdb");
        let (stdout, out) = Captured::spawn(child.stdout.take().unwrap());
        // GDB's errors and its notices share one transcript.
        let (_, err) = {
            let sink = stdout.clone();
            let pipe = child.stderr.take().unwrap();
            let handle = thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    sink.0.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
            ((), handle)
        };
        Gdb {
            child,
            output: stdout,
            readers: vec![out, err],
            script,
        }
    }
}

/// A running `gdb`.
struct Gdb {
    child: Child,
    output: Captured,
    readers: Vec<JoinHandle<()>>,
    script: PathBuf,
}

impl Gdb {
    /// Waits for gdb to end; its whole transcript.
    fn finish(mut self) -> String {
        let status = wait_deadline(&mut self.child, DEADLINE);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.script);
        let output = self.output.text();
        assert!(
            status.is_some(),
            "gdb did not finish within {DEADLINE:?} and was killed\n--- gdb ---\n{output}"
        );
        output
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill(gdb, {signal})");
    }
}

/// Runs `commands` in gdb against `kernel` under uhyve; gdb's transcript and uhyve's end.
fn debug(kernel: &Path, options: &[&str], commands: &str) -> (String, Ended) {
    let session = Session::start(kernel, options, &[]);
    let gdb = session.gdb(commands).finish();
    let ended = session.finish();
    (gdb, ended)
}

fn assert_has(gdb: &str, ended: &Ended, needle: &str) {
    assert!(
        gdb.contains(needle),
        "gdb's output lacks {needle:?}\n--- gdb ---\n{gdb}\n{}",
        ended.report()
    );
}

fn assert_exit(ended: &Ended, code: i32, gdb: &str) {
    assert_eq!(
        ended.status.code(),
        Some(code),
        "uhyve's status\n--- gdb ---\n{gdb}\n{}",
        ended.report()
    );
}

/// The values of `info registers rip` lines in gdb's output.
fn rips(gdb: &str) -> Vec<u64> {
    gdb.lines()
        .filter_map(|line| line.strip_prefix("rip"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// Break at a function, backtrace, locals, registers, writing a variable, three single steps,
/// deleting the breakpoints and running to the guest's exit.
#[test]
fn break_inspect_modify_step_and_exit() {
    if !gdb_or_skip("break_inspect_modify_step_and_exit") {
        return;
    }
    let (gdb, ended) = debug(
        &guest("gdb_target"),
        &[],
        "break compute\ncontinue\nbt\ninfo locals\nprint input\ninfo registers rip\n\
         set var gdb_value = 1234\nstepi\ninfo registers rip\nstepi\ninfo registers rip\n\
         stepi\ninfo registers rip\ndelete\ncontinue\n",
    );
    assert_has(&gdb, &ended, "Breakpoint 1, compute (input=5)");
    assert_has(&gdb, &ended, "#0  compute (input=5)");
    assert!(
        gdb.lines()
            .any(|l| l.starts_with("#1 ") && l.contains("in main ()")),
        "the backtrace lacks the caller main\n--- gdb ---\n{gdb}"
    );
    assert_has(&gdb, &ended, "doubled = ");
    assert_has(&gdb, &ended, "$1 = 5");
    let rips = rips(&gdb);
    assert_eq!(
        rips.len(),
        4,
        "four `info registers rip`\n--- gdb ---\n{gdb}"
    );
    for pair in rips.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "stepi did not move rip\n--- gdb ---\n{gdb}"
        );
    }
    assert_has(&gdb, &ended, "exited with code 07");
    assert!(
        ended.stdout.contains("gdb_value = 1234") && ended.stdout.contains("compute(5) = 1244"),
        "the guest did not see the value GDB wrote\n{}",
        ended.report()
    );
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// A hardware (debug register) execute breakpoint.
#[test]
fn hardware_breakpoint() {
    if !gdb_or_skip("hardware_breakpoint") {
        return;
    }
    let (gdb, ended) = debug(
        &guest("gdb_target"),
        &[],
        "hbreak count_up\ncontinue\nbt\ndelete\ncontinue\n",
    );
    assert_has(&gdb, &ended, "Hardware assisted breakpoint 1");
    assert_has(&gdb, &ended, "Breakpoint 1, count_up (rounds=5)");
    assert_has(&gdb, &ended, "in main ()");
    assert_has(&gdb, &ended, "exited with code 07");
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// A write watchpoint on a global: accepted everywhere; it triggers where the host delivers data
/// breakpoints (the probe), and KVM-PVM does not.
#[test]
fn write_watchpoint() {
    if !gdb_or_skip("write_watchpoint") {
        return;
    }
    let delivered = uhyve::linux::probe_data_breakpoints()
        .expect("the data breakpoint probe must reach a verdict on a working KVM");
    let (gdb, ended) = debug(
        &guest("gdb_target"),
        &[],
        "break count_up\ncontinue\nwatch gdb_counter\ncontinue\ndelete\ncontinue\n",
    );
    assert_has(&gdb, &ended, "Hardware watchpoint 2: gdb_counter");
    if delivered {
        eprintln!("write_watchpoint: this KVM delivers data breakpoints: checking the trigger");
        assert_has(&gdb, &ended, "Old value = 0");
        assert_has(&gdb, &ended, "New value = 1");
    } else {
        eprintln!(
            "write_watchpoint: this KVM does NOT deliver data breakpoints (KVM-PVM; \
             probe_data_breakpoints): checking only that `watch` is accepted and the run completes"
        );
        assert!(
            !gdb.contains("Old value"),
            "a watchpoint triggered although the probe saw none\n--- gdb ---\n{gdb}"
        );
    }
    assert_has(&gdb, &ended, "exited with code 07");
    assert!(
        ended.stdout.contains("gdb_counter = 5"),
        "{}",
        ended.report()
    );
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// `-c 2`: a breakpoint hit by vCPU 1 is GDB thread 2.
#[test]
fn breakpoint_on_second_vcpu() {
    if !gdb_or_skip("breakpoint_on_second_vcpu") {
        return;
    }
    let (gdb, ended) = debug(
        &guest("gdb_target"),
        &["-c", "2"],
        "break on_secondary\ncontinue\ninfo threads\nthread 2\nbt\ndelete\ncontinue\n",
    );
    assert_has(
        &gdb,
        &ended,
        "Thread 2 hit Breakpoint 1, on_secondary (cpu_id=1)",
    );
    assert!(
        gdb.lines()
            .any(|l| l.starts_with("* 2 ") && l.contains("on_secondary")),
        "info threads does not show thread 2 current in on_secondary\n--- gdb ---\n{gdb}"
    );
    assert!(
        gdb.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("Thread 1.1")),
        "info threads does not list thread 1\n--- gdb ---\n{gdb}"
    );
    assert_has(&gdb, &ended, "[Switching to thread 2 (Thread 1.2)]");
    assert_has(&gdb, &ended, "uhyve_rt_secondary");
    assert_has(&gdb, &ended, "exited with code 07");
    assert!(ended.stdout.contains("secondary ran"), "{}", ended.report());
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// Ctrl-C (SIGINT to gdb) stops a spinning guest; `kill` then ends uhyve with a clear status.
#[test]
fn interrupt_then_kill() {
    if !gdb_or_skip("interrupt_then_kill") {
        return;
    }
    let session = Session::start(&guest("spin"), &[], &[]);
    let gdb = session.gdb("continue\ninfo registers rip\nkill\n");
    assert!(
        session.stdout.wait_for("spinning", Duration::from_secs(30)),
        "the guest did not start spinning"
    );
    thread::sleep(Duration::from_millis(300));
    gdb.signal(libc::SIGINT);
    let gdb = gdb.finish();
    let ended = session.finish();
    assert_has(&gdb, &ended, "Program received signal SIGINT, Interrupt.");
    assert_eq!(rips(&gdb).len(), 1, "--- gdb ---\n{gdb}");
    assert!(
        ended.status.code().is_some_and(|c| c != 0 && c != 101),
        "uhyve's status after kill\n{}",
        ended.report()
    );
    assert!(
        ended.stderr.contains("killed by GDB"),
        "uhyve does not say why it ended\n{}",
        ended.report()
    );
}

/// `detach` lets the guest run to its own end.
#[test]
fn detach_lets_the_guest_finish() {
    if !gdb_or_skip("detach_lets_the_guest_finish") {
        return;
    }
    let (gdb, ended) = debug(
        &guest("gdb_target"),
        &[],
        "break compute\ncontinue\ndetach\n",
    );
    assert_has(&gdb, &ended, "Breakpoint 1, compute");
    assert_has(&gdb, &ended, "detached");
    assert!(
        ended.stdout.contains("gdb_target done"),
        "{}",
        ended.report()
    );
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// The real Hermit image (position-independent, loaded where uhyve chooses: GDB learns the load
/// bias from qOffsets; it also uses the emulation fallback): break at the application's main.
#[test]
fn hermit_hello_world_breaks_at_main() {
    if !gdb_or_skip("hermit_hello_world_breaks_at_main") {
        return;
    }
    let Some(image) = real_image("hermit_hello_world_breaks_at_main", "x86_64-hello_world") else {
        return;
    };
    // Rust's legacy mangling: GDB names the function `hello_world::main::h<hash>`.
    let listing = Command::new("gdb")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("file {}", image.display()))
        .args(["-ex", "info functions ^hello_world::main::h"])
        .stdin(Stdio::null())
        .output()
        .expect("run gdb");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let main = listing
        .split_whitespace()
        .find(|word| word.starts_with("hello_world::main::h"))
        .unwrap_or_else(|| panic!("no hello_world::main in the image\n{listing}"))
        .to_owned();
    let (gdb, ended) = debug(
        &image,
        &[],
        &format!("break {main}\ncontinue\nbt 1\ndelete\ncontinue\n"),
    );
    assert_has(&gdb, &ended, "Breakpoint 1, 0x");
    assert_has(&gdb, &ended, &format!("in {main} ()"));
    assert_has(&gdb, &ended, "exited normally");
    assert!(ended.stdout.contains("Hello, world!"), "{}", ended.report());
    assert_exit(&ended, 0, &gdb);
}

/// A stop signal while uhyve waits for GDB ends it at once, as without a debugger.
#[test]
fn a_stop_signal_while_waiting_for_gdb_ends_uhyve() {
    if !kvm_or_skip("a_stop_signal_while_waiting_for_gdb_ends_uhyve") {
        return;
    }
    let session = Session::start(&guest("gdb_target"), &[], &[]);
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    let result = unsafe { libc::kill(session.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(result, 0, "kill(uhyve, SIGTERM)");
    let ended = session.finish();
    assert_eq!(
        ended.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        ended.report()
    );
    assert!(
        ended.stderr.contains("stopped by SIGTERM"),
        "{}",
        ended.report()
    );
}

/// A port in use: one clear line and a non-zero status.
#[test]
fn port_in_use_is_one_clear_line() {
    if !kvm_or_skip("port_in_use_is_one_clear_line") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let run = Uhyve::guest("hello")
        .opts(["-s", &format!("127.0.0.1:{port}")])
        .run();
    run.assert_no_host_panic();
    assert_ne!(run.code(), 0, "{}", run.report());
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "more than one line\n{}",
        run.report()
    );
    run.assert_stderr_mentions("--gdb-port")
        .assert_stderr_mentions("address already in use")
        .assert_stdout_lacks("Hello");
}

/// GDB going away abruptly (SIGKILL while the guest is stopped at a breakpoint) is a detach:
/// uhyve removes the breakpoints and the guest runs on to its own end.
#[test]
fn abrupt_disconnect_lets_the_guest_continue() {
    if !gdb_or_skip("abrupt_disconnect_lets_the_guest_continue") {
        return;
    }
    let session = Session::start(&guest("gdb_target"), &[], &[]);
    let gdb = session.gdb("break compute\ncontinue\npython import time; time.sleep(60)\n");
    assert!(
        gdb.output
            .wait_for("Breakpoint 1, compute", Duration::from_secs(30)),
        "gdb did not stop at the breakpoint\n{}",
        gdb.output.text()
    );
    gdb.signal(libc::SIGKILL);
    let transcript = gdb.finish();
    let ended = session.finish();
    assert!(
        ended.stdout.contains("gdb_target done"),
        "{}",
        ended.report()
    );
    assert_exit(&ended, TARGET_EXIT, &transcript);
}

/// One RSP packet with its checksum.
fn packet(body: &[u8]) -> Vec<u8> {
    let sum = body.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let mut out = b"$".to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out
}

/// Reads one reply packet's body (acks skipped); None when the connection ended or timed out.
fn reply(stream: &mut TcpStream) -> Option<String> {
    let mut body = Vec::new();
    let mut byte = [0u8];
    let mut in_packet = false;
    loop {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        match (in_packet, byte[0]) {
            (false, b'$') => in_packet = true,
            (false, _) => {}
            (true, b'#') => {
                let mut sum = [0u8; 2];
                stream.read_exact(&mut sum).ok()?;
                stream.write_all(b"+").ok()?;
                return Some(String::from_utf8_lossy(&body).into_owned());
            }
            (true, b) => body.push(b),
        }
    }
}

/// Malformed packets: those gdbstub parses (huge or unmapped reads, unknown threads, registers,
/// breakpoint kinds, queries) get an answer (an error, or empty for "unsupported") and uhyve still
/// answers a valid packet after them; one gdbstub cannot parse (`mzz,1`) ends the connection, which
/// uhyve treats as a detach (one warning); raw garbage after it goes nowhere. uhyve never crashes or
/// hangs: the guest runs to its end.
#[test]
fn malformed_packets_never_crash_uhyve() {
    if !kvm_or_skip("malformed_packets_never_crash_uhyve") {
        return;
    }
    let session = Session::start(&guest("gdb_target"), &[], &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", session.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answered: &[&[u8]] = &[
        b"qSupported:multiprocess+",
        b"m0,ffffffffffffffff",
        b"mffffffffffff0000,10",
        b"Hgp99.99",
        b"p9999",
        b"z9,0,0",
        b"X400000,2:",
        b"qNoSuchQuery",
        b"",
    ];
    for body in answered {
        stream.write_all(&packet(body)).unwrap();
        assert!(
            reply(&mut stream).is_some(),
            "no answer to the malformed packet {:?}",
            String::from_utf8_lossy(body)
        );
    }
    stream.write_all(&packet(b"?")).unwrap();
    let stop = reply(&mut stream).expect("an answer to `?` after the malformed packets");
    assert!(
        stop.starts_with('T') || stop.starts_with('S'),
        "stop reply {stop:?}"
    );
    stream.write_all(&packet(b"mzz,1")).unwrap();
    assert_eq!(
        reply(&mut stream),
        None,
        "gdbstub ends the connection on `mzz,1`"
    );
    let mut garbage = vec![0u8; 4096];
    for (i, byte) in garbage.iter_mut().enumerate() {
        *byte = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let _ = stream.write_all(b"$$##\x03$m400000");
    let _ = stream.write_all(&garbage);
    drop(stream);
    let ended = session.finish();
    assert!(!ended.stderr.contains("panicked"), "{}", ended.report());
    assert!(
        ended.stderr.contains("GDB connection ended"),
        "{}",
        ended.report()
    );
    assert!(
        ended.stdout.contains("gdb_target done"),
        "{}",
        ended.report()
    );
    assert_eq!(ended.status.code(), Some(TARGET_EXIT), "{}", ended.report());
}
