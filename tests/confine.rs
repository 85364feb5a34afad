//! uhyve's process confinement (`src/confine/`, `docs/security.md`).
//!
//! Landlock and seccomp are per process (or thread) and irreversible, so the tests of the
//! mechanisms themselves run in a child: this test binary re-executed with `CONFINE_CHILD` set
//! to the scenario, running only the test that asked for it (`--exact`). The child confines
//! itself with `uhyve::confine` and then makes the host calls directly — not through uhyve's
//! file map — so what refuses them is the host kernel. The end-to-end tests run the `uhyve`
//! binary with its defaults (Landlock where available, seccomp on).
#![cfg(target_os = "linux")]

mod common;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sandbox::Sandbox;
use common::{Uhyve, kvm_or_skip};
use uhyve::confine::landlock::{self, Probe};
use uhyve::confine::seccomp::{self, TEST_VIOLATION_ENV, VIOLATION_STATUS};
use uhyve::confine::{ThreadRole, TreeAccess};

/// The environment variable that makes a re-executed test binary run one child scenario.
const CHILD_ENV: &str = "CONFINE_CHILD";

/// Runs `test` of this binary again in a child process with `CONFINE_CHILD=scenario` and
/// `dirs` in `CONFINE_INSIDE` / `CONFINE_OUTSIDE`.
fn run_child(test: &str, scenario: &str, inside: &Path, outside: &Path) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env("CONFINE_INSIDE", inside)
        .env("CONFINE_OUTSIDE", outside)
        .output()
        .unwrap()
}

/// The scenario this process runs as a child, with its two directories.
fn child_scenario() -> Option<(String, PathBuf, PathBuf)> {
    let scenario = std::env::var(CHILD_ENV).ok()?;
    let dir = |key: &str| PathBuf::from(std::env::var_os(key).unwrap());
    Some((scenario, dir("CONFINE_INSIDE"), dir("CONFINE_OUTSIDE")))
}

/// Ends the child with `code` at once (the harness would make calls a filter forbids).
fn end_child(code: i32) -> ! {
    io::stdout().flush().ok();
    std::process::exit(code)
}

fn landlock_available(test: &str) -> bool {
    match landlock::probe() {
        Probe::Abi(_) => true,
        Probe::Missing(errno) => {
            eprintln!("skipping {test}: this kernel has no Landlock (errno {errno})");
            false
        }
    }
}

/// Two directories with one file each: `inside/kept.txt` and `outside/secret.txt`.
fn two_trees() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("inside");
    let outside = root.path().join("outside");
    fs::create_dir(&inside).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(inside.join("kept.txt"), "inside\n").unwrap();
    fs::write(outside.join("secret.txt"), "secret\n").unwrap();
    (root, inside, outside)
}

fn is_refused<T>(result: io::Result<T>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EACCES))
}

/// The child side of the Landlock tests: restrict to `inside` (writable or not), then try.
fn landlock_child(writable: bool, inside: &Path, outside: &Path) -> ! {
    let tree = TreeAccess {
        path: inside.to_owned(),
        writable,
        directory: true,
    };
    landlock::restrict(&[tree], &[]).unwrap();
    let checks = [
        ("read inside", File::open(inside.join("kept.txt")).is_ok()),
        ("list inside", fs::read_dir(inside).is_ok()),
        (
            "read outside refused",
            is_refused(File::open(outside.join("secret.txt"))),
        ),
        ("list outside refused", is_refused(fs::read_dir(outside))),
        (
            "create outside refused",
            is_refused(File::create(outside.join("new.txt"))),
        ),
        ("read /etc refused", is_refused(File::open("/etc/hostname"))),
        (
            "create inside as allowed",
            File::create(inside.join("new.txt")).is_ok() == writable,
        ),
        (
            "write inside as allowed",
            fs::OpenOptions::new()
                .append(true)
                .open(inside.join("kept.txt"))
                .is_ok()
                == writable,
        ),
    ];
    let mut failed = false;
    for (name, ok) in checks {
        println!("{name}: {}", if ok { "ok" } else { "FAIL" });
        failed |= !ok;
    }
    end_child(i32::from(failed))
}

fn check_landlock_child(test: &str, scenario: &str) {
    let (_root, inside, outside) = two_trees();
    let output = run_child(test, scenario, &inside, &outside);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("read outside refused: ok"), "{stdout}");
    assert_eq!(
        fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "secret\n"
    );
    assert!(!outside.join("new.txt").exists());
}

#[test]
fn landlock_lets_the_kernel_refuse_paths_outside_a_writable_tree() {
    const TEST: &str = "landlock_lets_the_kernel_refuse_paths_outside_a_writable_tree";
    if let Some((scenario, inside, outside)) = child_scenario() {
        if scenario == "landlock-rw" {
            landlock_child(true, &inside, &outside);
        }
        return;
    }
    if landlock_available(TEST) {
        check_landlock_child(TEST, "landlock-rw");
    }
}

#[test]
fn landlock_read_only_trees_refuse_writes() {
    const TEST: &str = "landlock_read_only_trees_refuse_writes";
    if let Some((scenario, inside, outside)) = child_scenario() {
        if scenario == "landlock-ro" {
            landlock_child(false, &inside, &outside);
        }
        return;
    }
    if landlock_available(TEST) {
        let (_root, inside, outside) = two_trees();
        let output = run_child(TEST, "landlock-ro", &inside, &outside);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(
            fs::read_to_string(inside.join("kept.txt")).unwrap(),
            "inside\n"
        );
        assert!(!inside.join("new.txt").exists());
    }
}

/// The child side of the seccomp tests: the run phase's filter (with KVM_RUN as the one ioctl),
/// then one call.
fn seccomp_child(scenario: &str) -> ! {
    let filter = seccomp::build_filter(&[0xae80], std::process::id()).unwrap();
    seccomp::install_violation_handler().unwrap();
    seccomp::install(&filter, ThreadRole::Vcpu).unwrap();
    match scenario {
        "seccomp-allowed" => {
            // Allowed: memory that is not executable, writes, a clock, getrandom.
            let buffer = vec![7u8; 1 << 20];
            let mut random = [0u8; 8];
            // SAFETY: getrandom into a local buffer of the given length.
            let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
            println!(
                "allowed calls: {} {got} {:?}",
                buffer.len(),
                std::time::Instant::now()
            );
            end_child(0)
        }
        "seccomp-socket" => {
            // SAFETY: a system call with constant arguments; the filter stops it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "seccomp-exec-mapping" => {
            // SAFETY: an anonymous mapping nobody uses; the filter stops it.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }
        "seccomp-other-ioctl" => {
            let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: TCGETS writes at most one termios into `termios`; the filter stops it.
            unsafe { libc::ioctl(1, libc::TCGETS, termios.as_mut_ptr()) };
        }
        _ => {}
    }
    end_child(0)
}

#[test]
fn seccomp_filter_allows_the_run_phase_and_kills_on_anything_else() {
    const TEST: &str = "seccomp_filter_allows_the_run_phase_and_kills_on_anything_else";
    if let Some((scenario, _, _)) = child_scenario() {
        if scenario.starts_with("seccomp-") {
            seccomp_child(&scenario);
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let allowed = run_child(TEST, "seccomp-allowed", dir.path(), dir.path());
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    for (scenario, number) in [
        ("seccomp-socket", libc::SYS_socket),
        ("seccomp-exec-mapping", libc::SYS_mmap),
        ("seccomp-other-ioctl", libc::SYS_ioctl),
    ] {
        let output = run_child(TEST, scenario, dir.path(), dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(VIOLATION_STATUS),
            "{scenario}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "uhyve: seccomp: forbidden system call {number} on a vCPU thread\n"
            )),
            "{scenario}: {stderr}"
        );
    }
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_ends_uhyve_with_a_message() {
    if !kvm_or_skip("a_forbidden_call_on_a_vcpu_thread_ends_uhyve_with_a_message") {
        return;
    }
    for (thread, name) in [("vcpu", "a vCPU thread"), ("main", "the main thread")] {
        let run = Uhyve::guest("hello").env(TEST_VIOLATION_ENV, thread).run();
        run.assert_code(VIOLATION_STATUS)
            .assert_stderr_mentions(&format!(
                "uhyve: seccomp: forbidden system call {} on {name}",
                libc::SYS_socket
            ));
    }
}

#[test]
fn a_forbidden_call_on_the_network_io_thread_ends_uhyve_with_a_message() {
    let test = "a_forbidden_call_on_the_network_io_thread_ends_uhyve_with_a_message";
    if !kvm_or_skip(test) || !common::network::passt_or_skip(test) {
        return;
    }
    let run = Uhyve::guest("spin")
        .opts(["--net", "user"])
        .env(TEST_VIOLATION_ENV, "net")
        .run();
    run.assert_code(VIOLATION_STATUS)
        .assert_stderr_mentions(&format!(
            "uhyve: seccomp: forbidden system call {} on the network I/O thread",
            libc::SYS_socket
        ));
}

#[test]
fn a_memory_fault_under_the_filter_is_named_not_taken_for_a_violation() {
    if !kvm_or_skip("a_memory_fault_under_the_filter_is_named_not_taken_for_a_violation") {
        return;
    }
    // Rust's own SIGSEGV handler would re-arm itself with rt_sigaction, which the filter forbids.
    let run = Uhyve::guest("hello")
        .env(TEST_VIOLATION_ENV, "vcpu-fault")
        .run();
    run.assert_code(128 + libc::SIGSEGV)
        .assert_stderr_mentions("uhyve: fatal memory fault: SIGSEGV at 0x")
        .assert_stderr_mentions("on a vCPU thread");
    assert!(
        !run.stderr.contains("forbidden system call"),
        "{}",
        run.report()
    );
}

#[test]
fn seccomp_none_turns_the_filter_off() {
    if !kvm_or_skip("seccomp_none_turns_the_filter_off") {
        return;
    }
    let run = Uhyve::guest("hello")
        .opts(["--seccomp", "none"])
        .env(TEST_VIOLATION_ENV, "vcpu")
        .run();
    run.assert_success();
    let run = Uhyve::guest("hello")
        .env("HERMIT_SECCOMP", "none")
        .env(TEST_VIOLATION_ENV, "main")
        .run();
    run.assert_success();
}

#[test]
fn a_guest_reads_and_writes_mapped_files_with_isolation_on() {
    if !kvm_or_skip("a_guest_reads_and_writes_mapped_files_with_isolation_on") {
        return;
    }
    let mode = match landlock::probe() {
        Probe::Abi(_) => "strict",
        Probe::Missing(_) => "normal",
    };
    let sandbox = Sandbox::new();
    let run = sandbox
        .mapped(Uhyve::guest("file_ops"), "data")
        .opts(["--file-isolation", mode, "-v"])
        .args(["data/kept.txt", "keep"])
        .run();
    run.assert_all_ok();
    if mode == "strict" {
        run.assert_stderr_mentions("Landlock: file access restricted");
    }
    let content = fs::read_to_string(sandbox.path("mnt/kept.txt")).unwrap();
    assert_eq!(content, "hello file\n");
    sandbox.assert_outside_untouched();
}

#[test]
fn file_isolation_none_skips_landlock() {
    if !kvm_or_skip("file_isolation_none_skips_landlock") {
        return;
    }
    let run = Uhyve::guest("hello")
        .env("HERMIT_FILE_ISOLATION", "none")
        .opts(["-v"])
        .run();
    run.assert_success();
    assert!(!run.report().contains("Landlock: file access restricted"));
}
