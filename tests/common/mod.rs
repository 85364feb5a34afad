//! Helpers shared by the integration tests: where the test guests were built (the v1 guests and,
//! in a `v2/` subdirectory, the v2/v3 ones), whether KVM can be used (and what to do when it
//! cannot), and running the `uhyve` binary under a deadline, optionally with bytes on its standard
//! input, so a hung VM fails its test instead of hanging the whole run.

// Each integration-test crate compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod children;
pub mod network;

pub mod sandbox;
pub mod v2;

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The `uhyve` binary built for this test run.
pub const UHYVE_BIN: &str = env!("CARGO_BIN_EXE_uhyve");

/// Default deadline for one uhyve run; `UHYVE_TEST_TIMEOUT` (seconds) overrides it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory the `uhyve-test-guests` crate (`tests/guest-images/`) compiled the test guests
/// into.
pub fn guest_dir() -> PathBuf {
    PathBuf::from(uhyve_test_guests::GUEST_DIR)
}

/// Path of the built test guest `name`; panics if the guest build did not produce it.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "test guest {} was not built (expected from tests/guests/{name}.c by tests/guest-images/build.rs)",
        path.display()
    );
    path
}

/// Every built guest image, sorted by name.
pub fn all_guests() -> Vec<PathBuf> {
    let dir = guest_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the guest directory {}: {e}", dir.display()));
    let mut guests: Vec<PathBuf> = entries
        .map(|entry| entry.expect("guest directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    guests.sort();
    guests
}

/// The directory the v2/v3 test guests (`tests/guests/v2/`) were compiled into.
pub fn v2_guest_dir() -> PathBuf {
    guest_dir().join("v2")
}

/// Path of the built v2/v3 test guest `name`; panics if the guest build did not produce it.
pub fn v2_guest(name: &str) -> PathBuf {
    let path = v2_guest_dir().join(name);
    assert!(
        path.is_file(),
        "test guest {} was not built (expected from tests/guests/v2/{name}.c by tests/guest-images/build.rs)",
        path.display()
    );
    path
}

/// Every built v2/v3 guest image, sorted by name.
pub fn all_v2_guests() -> Vec<PathBuf> {
    let dir = v2_guest_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the guest directory {}: {e}", dir.display()));
    let mut guests: Vec<PathBuf> = entries
        .map(|entry| entry.expect("guest directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    guests.sort();
    guests
}

/// The directory `build.rs` compiled the position-independent test guests (`tests/guests/pie/`)
/// into.
pub fn pie_guest_dir() -> PathBuf {
    guest_dir().join("pie")
}

/// Path of the built position-independent test guest `name`; panics if `build.rs` did not
/// produce it.
pub fn pie_guest(name: &str) -> PathBuf {
    let path = pie_guest_dir().join(name);
    assert!(
        path.is_file(),
        "test guest {} was not built (expected by build.rs from tests/guests/pie/{name}.c)",
        path.display()
    );
    path
}

/// Whether `/dev/kvm` can be opened read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Returns true if the test `name` may use KVM. Without KVM it panics when `UHYVE_REQUIRE_KVM`
/// is set (CI), and otherwise prints why the test is skipped and returns false.
pub fn kvm_or_skip(name: &str) -> bool {
    if kvm_usable() {
        return true;
    }
    if std::env::var_os("UHYVE_REQUIRE_KVM").is_some() {
        panic!("{name}: /dev/kvm cannot be opened read-write, but UHYVE_REQUIRE_KVM is set");
    }
    eprintln!("skipping {name}: /dev/kvm not available");
    false
}

/// Builder for one run of the `uhyve` binary: `uhyve [OPTIONS] <KERNEL> [KERNEL_ARGS]...`.
pub struct Uhyve {
    options: Vec<OsString>,
    kernel: PathBuf,
    kernel_args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
}

impl Uhyve {
    /// A run of the built test guest `name`.
    pub fn guest(name: &str) -> Self {
        Self::kernel(guest(name))
    }

    /// A run of the built v2/v3 test guest `name`.
    pub fn v2_guest(name: &str) -> Self {
        Self::kernel(v2_guest(name))
    }

    /// A run of the built position-independent test guest `name`.
    pub fn pie_guest(name: &str) -> Self {
        Self::kernel(pie_guest(name))
    }

    /// A run of the kernel image at `path`.
    pub fn kernel(path: impl Into<PathBuf>) -> Self {
        let timeout = std::env::var("UHYVE_TEST_TIMEOUT")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        Self {
            options: Vec::new(),
            kernel: path.into(),
            kernel_args: Vec::new(),
            envs: Vec::new(),
            env_clear: false,
            current_dir: None,
            timeout,
            stdin: None,
        }
    }

    /// Adds uhyve options (placed before the kernel path).
    pub fn opts<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.options
            .extend(options.into_iter().map(|o| o.as_ref().to_owned()));
        self
    }

    /// Adds arguments for the guest (placed after the kernel path).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kernel_args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the uhyve process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the uhyve process from an empty environment (plus what [`Uhyve::env`] adds).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Runs uhyve in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Overrides the deadline of this run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Pipes `bytes` into uhyve's standard input and then closes it (without this, standard
    /// input is empty: `/dev/null`).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// The kernel path exactly as passed on the command line.
    pub fn kernel_path(&self) -> &Path {
        &self.kernel
    }

    /// Runs uhyve to completion. Panics (failing the test) if it cannot be started or does not
    /// finish before the deadline; in that case it is killed first.
    pub fn run(self) -> Run {
        let mut command = Command::new(UHYVE_BIN);
        if self.env_clear {
            command.env_clear();
        }
        command
            .args(&self.options)
            .arg(&self.kernel)
            .args(&self.kernel_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let description = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let feeder = feed(child.stdin.take(), self.stdin.unwrap_or_default());
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_with_deadline(&mut child, self.timeout);
        // The guest may stop before it has read everything: a write error just ends the feed.
        feeder.join().expect("input writer thread panicked");
        let run = Run {
            description,
            status: status.unwrap_or_else(|| child.wait().expect("wait for killed uhyve")),
            stdout: join_output(stdout),
            stderr: join_output(stderr),
        };
        if status.is_none() {
            panic!(
                "uhyve did not finish within {:?} and was killed\n{}",
                self.timeout,
                run.report()
            );
        }
        run
    }
}

/// Writes `bytes` into a child's standard input on a separate thread and closes it.
fn feed<W: Write + Send + 'static>(pipe: Option<W>, bytes: Vec<u8>) -> JoinHandle<()> {
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let _ = pipe.write_all(&bytes);
        }
    })
}

/// Reads a child pipe to its end on a separate thread (so neither pipe can fill up and block).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error just ends the capture; what was read so far is still reported.
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

fn join_output(handle: JoinHandle<Vec<u8>>) -> String {
    let bytes = handle.join().expect("output reader thread panicked");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` until `timeout`; on expiry kills it and returns None.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => {
                // The child may exit between try_wait and kill; either way it is gone after.
                let _ = child.kill();
                return None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for uhyve failed: {e}"),
        }
    }
}

/// The outcome of one uhyve run.
pub struct Run {
    description: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code; panics (with the full report) if uhyve was killed by a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(code) => code,
            None => panic!("uhyve was killed by a signal\n{}", self.report()),
        }
    }

    /// A readable account of the run for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.description, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts that uhyve exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit status\n{}",
            self.report()
        );
        self
    }

    /// Asserts that uhyve exited with status 0.
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Asserts that stdout contains `needle`.
    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.report()
        );
        self
    }

    /// Asserts that stdout does not contain `needle`.
    pub fn assert_stdout_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stdout.contains(needle),
            "stdout unexpectedly contains {needle:?}\n{}",
            self.report()
        );
        self
    }

    /// Asserts that the guest's checks all passed: at least one "<check>: ok" line, no "FAIL"
    /// line on stdout, and status 0.
    pub fn assert_all_ok(&self) -> &Self {
        assert!(
            !self.stdout.contains("FAIL"),
            "a guest check failed\n{}",
            self.report()
        );
        assert!(
            self.stdout.contains(": ok\n"),
            "the guest reported no passed check\n{}",
            self.report()
        );
        self.assert_success()
    }

    /// Asserts that uhyve itself did not panic: it exited normally (no signal), not with Rust's
    /// panic status 101, and printed no panic message. A non-zero status is the guest's own
    /// (an application's exit code needs no explanation on stderr).
    pub fn assert_no_host_panic(&self) -> &Self {
        let code = self.code();
        assert_ne!(code, 101, "uhyve panicked\n{}", self.report());
        assert!(
            !self.stderr.contains("panicked"),
            "uhyve panicked\n{}",
            self.report()
        );
        self
    }

    /// Asserts that uhyve did not crash: it exited normally (no signal), not with Rust's panic
    /// status 101, printed no panic message, and explained any non-zero status on stderr.
    pub fn assert_no_host_crash(&self) -> &Self {
        self.assert_no_host_panic();
        let code = self.code();
        if code != 0 && self.stderr.trim().is_empty() {
            if self.stdout.contains("FAIL") {
                panic!("a guest check failed\n{}", self.report());
            }
            panic!(
                "uhyve failed without saying why on stderr\n{}",
                self.report()
            );
        }
        self
    }

    /// Asserts that uhyve stopped the VM because of the guest (a non-zero status other than
    /// `guest_code`, which the guest would have returned had it been allowed to continue), with a
    /// message on stderr, and without crashing itself.
    pub fn assert_stopped_by_host(&self, guest_code: i32) -> &Self {
        self.assert_no_host_crash();
        let code = self.code();
        assert!(
            code != 0 && code != guest_code,
            "uhyve let the guest continue (status {code})\n{}",
            self.report()
        );
        self
    }

    /// Asserts that stderr contains `needle`, ignoring ASCII case.
    pub fn assert_stderr_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.stderr
                .to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase()),
            "stderr does not mention {needle:?}\n{}",
            self.report()
        );
        self
    }
}

/// The real Hermit image `name` from `$UHYVE_TEST_IMAGES` (relative paths are relative to the
/// crate), or `None` after printing why the test `test` is skipped: no usable KVM, or no image
/// folder. With `UHYVE_REQUIRE_IMAGES` set (CI), a missing folder fails the test instead.
pub fn real_image(test: &str, name: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) {
        return None;
    }
    let Some(dir) = std::env::var_os("UHYVE_TEST_IMAGES") else {
        if std::env::var_os("UHYVE_REQUIRE_IMAGES").is_some() {
            panic!("{test}: UHYVE_TEST_IMAGES is not set, but UHYVE_REQUIRE_IMAGES is");
        }
        eprintln!("skipping {test}: UHYVE_TEST_IMAGES is not set");
        return None;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(name);
    assert!(
        path.is_file(),
        "{test}: image {} is missing",
        path.display()
    );
    Some(path)
}

/// The Hermit application `name` built for `arch` by `tests/hermit/build.sh`, from
/// `$UHYVE_HERMIT_APPS/<arch>/<name>` (relative paths are relative to the crate), or `None` after
/// printing why the test `test` is skipped. With `UHYVE_REQUIRE_IMAGES` set (CI), a missing
/// variable fails the test instead. Does not check for KVM (aarch64 images run on a fake).
pub fn hermit_app(test: &str, arch: &str, name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("UHYVE_HERMIT_APPS") else {
        if std::env::var_os("UHYVE_REQUIRE_IMAGES").is_some() {
            panic!(
                "{test}: UHYVE_HERMIT_APPS is not set (run tests/hermit/build.sh), but UHYVE_REQUIRE_IMAGES is"
            );
        }
        eprintln!(
            "skipping {test}: UHYVE_HERMIT_APPS is not set (tests/hermit/build.sh builds the applications)"
        );
        return None;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(arch)
        .join(name);
    assert!(
        path.is_file(),
        "{test}: Hermit application {} is missing (run tests/hermit/build.sh)",
        path.display()
    );
    Some(path)
}

/// The `VM exits:` table of `--stats` (on standard output): the heading's vCPU columns
/// (`cpu0`, …) and the sum of each column, the total column first.
pub fn stats_exit_table(stdout: &str) -> Option<(Vec<String>, Vec<u64>)> {
    let mut lines = stdout
        .lines()
        .skip_while(|line| !line.starts_with("VM exits:"));
    let heading: Vec<String> = lines
        .next()?
        .split_whitespace()
        .skip(3)
        .map(str::to_owned)
        .collect();
    let mut sums = vec![0; heading.len() + 1];
    // Each cell is 8 characters wide and right-aligned, the total first, then one per vCPU; a
    // vCPU without that exit has a blank cell: read the cells by position from the row's end.
    let columns = sums.len();
    for row in lines.take_while(|line| line.starts_with("  ")) {
        let cells_start = row.len().checked_sub(8 * columns)?;
        for (column, sum) in sums.iter_mut().enumerate() {
            let cell = row.get(cells_start + 8 * column..cells_start + 8 * (column + 1))?;
            *sum += cell.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some((heading, sums))
}

/// The `All VM exits: N` line of `--stats`.
pub fn stats_all_exits(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("All VM exits: "))
        .and_then(|count| count.parse().ok())
}
