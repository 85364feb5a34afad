//! The GDB server on aarch64 Linux KVM, with the real GDB: uhyve for aarch64 runs inside the
//! emulated Arm machine of `.ci/aarch64-kvm/` (`run-in-vm`, KVM in the machine) and listens on
//! 0.0.0.0:6677 there; QEMU forwards a host port to it (`UHYVE_A64_HOSTFWD`), and
//! `gdb-multiarch -batch -nx` on this host drives it with a command file, as a developer would
//! debug a remote board. The tests check GDB's transcript and uhyve's exit status.
//!
//! They run from `.ci/aarch64-kvm/run-tests`, which builds uhyve for aarch64 and sets
//! `UHYVE_A64_UHYVE` (that binary) and `UHYVE_A64_GUESTS` (the aarch64 test guests, with
//! `gdb_target` built with debug info). Without them the tests are skipped with a message;
//! `UHYVE_REQUIRE_A64_GDB` (set by run-tests) turns every skip into a failure. Each test boots
//! its own emulated machine, one at a time.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};

use common::children::{Captured, free_port, wait_deadline};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The exit code of tests/guests/gdb_target.c.
const TARGET_EXIT: i32 = 7;
/// The port uhyve's GDB server listens on inside the machine.
const GUEST_PORT: u16 = 6677;
/// Deadline of one machine (boot, uhyve, the guest) and of one gdb run.
const DEADLINE: Duration = Duration::from_secs(300);
/// The status of `crash` when uhyve lets it survive (tests/guests/aarch64/crash.c).
const SURVIVED: i32 = 42;

/// One emulated machine at a time: each takes both host cores while it boots.
static MACHINE: Mutex<()> = Mutex::new(());

/// What a test needs: the aarch64 uhyve, its guests and gdb-multiarch; `None` (skipped, with a
/// message) when they are not there, a failure under `UHYVE_REQUIRE_A64_GDB`.
fn setup_or_skip(name: &str) -> Option<(PathBuf, PathBuf)> {
    let uhyve = std::env::var_os("UHYVE_A64_UHYVE").map(PathBuf::from);
    let guests = std::env::var_os("UHYVE_A64_GUESTS").map(PathBuf::from);
    let gdb = Command::new("gdb-multiarch")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let why = match (&uhyve, &guests) {
        (None, _) | (_, None) => {
            "UHYVE_A64_UHYVE and UHYVE_A64_GUESTS are not set (.ci/aarch64-kvm/run-tests sets them)"
        }
        _ if !gdb => "`gdb-multiarch` is not installed (apt-get install gdb-multiarch)",
        (Some(uhyve), Some(guests)) => return Some((uhyve.clone(), guests.clone())),
    };
    if std::env::var_os("UHYVE_REQUIRE_A64_GDB").is_some() {
        panic!("{name}: {why}, but UHYVE_REQUIRE_A64_GDB is set");
    }
    eprintln!("skipping {name}: {why}");
    None
}

/// How the machine ended: the status of uhyve in it and everything it printed.
struct Ended {
    status: ExitStatus,
    output: String,
}

/// uhyve for aarch64 in the emulated machine, waiting for (or serving) GDB.
struct Machine {
    child: Child,
    port: u16,
    kernel: PathBuf,
    output: Captured,
    reader: Option<JoinHandle<()>>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Machine {
    /// Boots the machine with `uhyve -s 0.0.0.0:6677 KERNEL ARGS` and waits for uhyve's
    /// "waiting for GDB" line.
    fn start(uhyve: &Path, kernel: &Path, args: &[&str]) -> Self {
        let one_at_a_time = MACHINE.lock().unwrap_or_else(|p| p.into_inner());
        let port = free_port();
        let run_in_vm = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/aarch64-kvm/run-in-vm");
        let mut child = Command::new(run_in_vm)
            .arg(uhyve)
            .arg("-s")
            .arg(format!("0.0.0.0:{GUEST_PORT}"))
            .arg(kernel)
            .args(args)
            .env("UHYVE_A64_HOSTFWD", format!("{port}:{GUEST_PORT}"))
            .env("UHYVE_A64_FILES", kernel)
            .env("UHYVE_A64_TIMEOUT", DEADLINE.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start run-in-vm");
        let (output, reader) = Captured::spawn(child.stdout.take().unwrap());
        let machine = Self {
            child,
            port,
            kernel: kernel.to_owned(),
            output,
            reader: Some(reader),
            _one_at_a_time: one_at_a_time,
        };
        if !machine.output.wait_for("waiting for GDB", DEADLINE) {
            let ended = machine.finish();
            panic!("uhyve did not wait for GDB\n{}", ended.output);
        }
        machine
    }

    /// Waits for the machine to end.
    fn finish(mut self) -> Ended {
        let status = wait_deadline(&mut self.child, DEADLINE);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let output = self.output.text();
        let status = status.unwrap_or_else(|| panic!("the machine did not end\n{output}"));
        Ended { status, output }
    }

    /// Runs `gdb-multiarch -batch -nx` with `commands` after connecting; its transcript.
    fn gdb(&self, commands: &str) -> String {
        self.gdb_interrupted(commands, None)
    }

    /// Like [`Machine::gdb`]; with `interrupt_after`, GDB gets a SIGINT (Ctrl-C) one second
    /// after the machine printed that line.
    fn gdb_interrupted(&self, commands: &str, interrupt_after: Option<&str>) -> String {
        let script = std::env::temp_dir().join(format!(
            "uhyve-gdb-a64-{}-{}.gdb",
            std::process::id(),
            self.port
        ));
        let text = format!(
            "set pagination off\nset confirm off\ntarget remote 127.0.0.1:{}\n{commands}",
            self.port
        );
        std::fs::write(&script, text).expect("write the gdb command file");
        let mut child = Command::new("gdb-multiarch")
            .args(["-batch", "-nx", "-ex"])
            .arg(format!("file {}", self.kernel.display()))
            .arg("-x")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gdb-multiarch");
        let (out, out_reader) = Captured::spawn(child.stdout.take().unwrap());
        let (err, err_reader) = Captured::spawn(child.stderr.take().unwrap());
        if let Some(line) = interrupt_after {
            assert!(
                self.output.wait_for(line, DEADLINE),
                "the machine never printed {line:?}\n{}",
                self.output.text()
            );
            thread::sleep(Duration::from_secs(1));
            // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
            let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            assert_eq!(result, 0, "kill(gdb, SIGINT)");
        }
        let status = wait_deadline(&mut child, DEADLINE);
        let _ = (out_reader.join(), err_reader.join());
        let _ = std::fs::remove_file(&script);
        let transcript = format!("{}{}", out.text(), err.text());
        assert!(status.is_some(), "gdb did not finish\n{transcript}");
        transcript
    }
}

/// Runs `commands` in GDB against `guest` (with `args`) under uhyve in the machine.
fn debug(name: &str, guest: &str, args: &[&str], commands: &str) -> Option<(String, Ended)> {
    let (uhyve, guests) = setup_or_skip(name)?;
    let machine = Machine::start(&uhyve, &guests.join(guest), args);
    let gdb = machine.gdb(commands);
    let ended = machine.finish();
    Some((gdb, ended))
}

fn assert_has(gdb: &str, ended: &Ended, needle: &str) {
    assert!(
        gdb.contains(needle),
        "gdb's output lacks {needle:?}\n--- gdb ---\n{gdb}\n--- machine ---\n{}",
        ended.output
    );
}

fn assert_exit(ended: &Ended, code: i32, gdb: &str) {
    assert_eq!(
        ended.status.code(),
        Some(code),
        "uhyve's status\n--- gdb ---\n{gdb}\n--- machine ---\n{}",
        ended.output
    );
}

/// The values of `info registers pc` lines in gdb's output.
fn pcs(gdb: &str) -> Vec<u64> {
    gdb.lines()
        .filter_map(|line| line.strip_prefix("pc "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// Break at a function, backtrace, locals, registers, writing a variable, three single steps,
/// deleting the breakpoints and running to the guest's exit.
#[test]
fn break_inspect_modify_step_and_exit() {
    let Some((gdb, ended)) = debug(
        "break_inspect_modify_step_and_exit",
        "gdb_target",
        &[],
        "info threads\nbreak compute\ncontinue\nbt\ninfo locals\ninfo registers pc\n\
         print gdb_value\nset var gdb_value = 100\nstepi\nstepi\nstepi\ninfo registers pc\n\
         delete\ncontinue\n",
    ) else {
        return;
    };
    assert_has(&gdb, &ended, "Thread 1.1");
    assert_has(&gdb, &ended, "Breakpoint 1, compute (input=5)");
    assert_has(&gdb, &ended, "in main () at");
    assert_has(&gdb, &ended, "doubled = ");
    assert_has(&gdb, &ended, "$1 = 42");
    assert_has(&gdb, &ended, "exited with code 07");
    let pcs = pcs(&gdb);
    assert_eq!(pcs.len(), 2, "--- gdb ---\n{gdb}");
    // Three A64 instructions of 4 bytes each.
    assert_eq!(pcs[1], pcs[0] + 12, "--- gdb ---\n{gdb}");
    assert!(
        ended.output.contains("gdb_value = 100"),
        "the guest did not see GDB's write\n{}",
        ended.output
    );
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// A hardware breakpoint (DBGBVR/DBGBCR), then a write watchpoint and a read watchpoint
/// (DBGWVR/DBGWCR): aarch64 watchpoints can match loads alone, which x86 cannot.
#[test]
fn hardware_breakpoint_and_watchpoints() {
    let Some((gdb, ended)) = debug(
        "hardware_breakpoint_and_watchpoints",
        "gdb_target",
        &[],
        "hbreak compute\ncontinue\nrwatch gdb_value\ncontinue\ndelete\nhbreak count_up\n\
         continue\nwatch gdb_counter\ncontinue\ncontinue\ndelete\ncontinue\n",
    ) else {
        return;
    };
    assert_has(&gdb, &ended, "Hardware assisted breakpoint 1 at");
    assert_has(&gdb, &ended, "Breakpoint 1, compute (input=5)");
    assert_has(&gdb, &ended, "Hardware read watchpoint 2: gdb_value");
    assert_has(&gdb, &ended, "Value = 42");
    assert_has(&gdb, &ended, "Breakpoint 3, count_up (rounds=5)");
    assert_has(&gdb, &ended, "Hardware watchpoint 4: gdb_counter");
    assert_has(&gdb, &ended, "Old value = 0\nNew value = 1");
    assert_has(&gdb, &ended, "Old value = 1\nNew value = 2");
    assert_has(&gdb, &ended, "exited with code 07");
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// Ctrl-C (SIGINT to gdb) stops a spinning guest; `kill` then ends uhyve with a clear status.
#[test]
fn interrupt_then_kill() {
    let Some((uhyve, guests)) = setup_or_skip("interrupt_then_kill") else {
        return;
    };
    let machine = Machine::start(&uhyve, &guests.join("spin"), &[]);
    let gdb = machine.gdb_interrupted("continue\ninfo registers pc\nkill\n", Some("spinning"));
    let ended = machine.finish();
    assert_has(&gdb, &ended, "received signal SIGINT");
    assert_eq!(pcs(&gdb).len(), 1, "--- gdb ---\n{gdb}");
    assert!(
        ended.output.contains("killed by GDB"),
        "uhyve does not say why it ended\n{}",
        ended.output
    );
    assert!(
        ended.status.code().is_some_and(|c| c != 0 && c != 125),
        "uhyve's status after kill: {:?}\n{}",
        ended.status,
        ended.output
    );
}

/// `detach` removes the breakpoints and lets the guest run to its own end.
#[test]
fn detach_lets_the_guest_finish() {
    let Some((gdb, ended)) = debug(
        "detach_lets_the_guest_finish",
        "gdb_target",
        &[],
        "break compute\ncontinue\ndetach\n",
    ) else {
        return;
    };
    assert_has(&gdb, &ended, "Breakpoint 1, compute");
    assert_has(&gdb, &ended, "detached");
    assert!(ended.output.contains("gdb_target done"), "{}", ended.output);
    assert_exit(&ended, TARGET_EXIT, &gdb);
}

/// A `BRK` of the guest's own, which GDB did not set, reaches the guest's vectors exactly as
/// without a debugger (tests/aarch64_kvm.rs checks that run): uhyve hands the exception back.
#[test]
fn the_guests_own_brk_behaves_as_without_a_debugger() {
    let Some((gdb, ended)) = debug(
        "the_guests_own_brk_behaves_as_without_a_debugger",
        "crash",
        &["brk"],
        "continue\n",
    ) else {
        return;
    };
    let brk = ended
        .output
        .lines()
        .find_map(|line| line.strip_prefix("brk at "))
        .and_then(|hex| u64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no brk address\n{}", ended.output));
    let report = format!("esr 0xf2000077 elr {brk:#x} ");
    assert!(
        ended.output.contains(&report),
        "the guest's vectors did not see its BRK ({report})\n--- gdb ---\n{gdb}\n{}",
        ended.output
    );
    assert!(!ended.output.contains("survived"), "{}", ended.output);
    assert!(
        ended.status.code().is_some_and(|c| c != 0 && c != SURVIVED),
        "{}",
        ended.output
    );
}

/// The real Hermit aarch64 image of `$UHYVE_TEST_IMAGES` (position-independent, loaded where
/// uhyve chooses: GDB learns the load bias from qOffsets): break at the application's main,
/// then run to "Hello, world!" and exit 0.
#[test]
fn hermit_hello_world_breaks_at_main() {
    let name = "hermit_hello_world_breaks_at_main";
    let Some((uhyve, _)) = setup_or_skip(name) else {
        return;
    };
    let Some(image) = std::env::var_os("UHYVE_TEST_IMAGES")
        .map(|dir| PathBuf::from(dir).join("aarch64-hello_world"))
        .filter(|image| image.exists())
    else {
        if std::env::var_os("UHYVE_REQUIRE_A64_GDB").is_some() {
            panic!("{name}: no aarch64-hello_world in $UHYVE_TEST_IMAGES");
        }
        eprintln!("skipping {name}: no aarch64-hello_world in $UHYVE_TEST_IMAGES");
        return;
    };
    // Rust's legacy mangling: GDB names the function `hello_world::main::h<hash>`.
    let listing = Command::new("gdb-multiarch")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("file {}", image.display()))
        .args(["-ex", "info functions ^hello_world::main::h"])
        .stdin(Stdio::null())
        .output()
        .expect("run gdb-multiarch");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let main = listing
        .split_whitespace()
        .find(|word| word.starts_with("hello_world::main::h"))
        .unwrap_or_else(|| panic!("no hello_world::main in the image\n{listing}"))
        .to_owned();
    let machine = Machine::start(&uhyve, &image, &[]);
    let gdb = machine.gdb(&format!(
        "break {main}\ncontinue\nbt 1\ninfo registers pc\ndelete\ncontinue\n"
    ));
    let ended = machine.finish();
    assert_has(&gdb, &ended, "Breakpoint 1, 0x");
    assert_has(&gdb, &ended, &format!("in {main} ()"));
    assert_has(&gdb, &ended, "exited normally");
    assert!(ended.output.contains("Hello, world!"), "{}", ended.output);
    assert_exit(&ended, 0, &gdb);
}
