//! Real Rust applications on a current Hermit kernel (0.11.0, built from the crates.io source by
//! `tests/hermit/build.sh` into `$UHYVE_HERMIT_APPS`) run end to end on KVM, with one and two
//! vCPUs: the demo passes every check it makes (arguments, environment, a `/tmp` file round trip
//! inside the kernel, a file round trip in a host directory mapped with `--file-mapping`, threads),
//! `std::process::exit(3)` gives status 3, a panic gives a non-zero status and its message, a
//! multi-threaded application runs on every vCPU, and a floating-point workload gives the right
//! results. On a KVM that cannot execute SSE/XSAVE this needs the emulation fallback. Built for an
//! aarch64 host, the same tests run the aarch64 applications (inside the emulated Arm machine of
//! `.ci/aarch64-kvm`), where Hermit 0.11 schedules on one vCPU only.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Run, Uhyve, hermit_app, kvm_or_skip};

/// The application `name` for this host's architecture, or `None` (skip) without KVM or without
/// built applications.
fn app(test: &str, name: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) {
        return None;
    }
    hermit_app(test, std::env::consts::ARCH, name)
}

/// The vCPUs a Hermit 0.11 application uses when it is given two: all on x86_64; one on aarch64,
/// where that kernel reports a single processor (its other vCPUs stay powered off).
const VCPUS_USED_OF_TWO: u64 = if cfg!(target_arch = "x86_64") { 2 } else { 1 };

/// Runs `path` with `options` and `args`, under a generous deadline (every guest instruction
/// may be emulated by the host kernel here).
fn run(path: &Path, options: &[&str], args: &[&str]) -> Run {
    Uhyve::kernel(path)
        .opts(options.iter().copied())
        .args(args.iter().copied())
        .timeout(Duration::from_secs(300))
        .run()
}

/// The exit count of each vCPU from the `--stats` table (the sum of its column).
fn exits_per_vcpu(run: &Run) -> Vec<u64> {
    common::stats_exit_table(&run.stdout)
        .map(|(_, sums)| sums[1..].to_vec())
        .unwrap_or_default()
}

/// A host directory mapped into the guest, holding `from-host.txt`.
fn mapped_directory() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("from-host.txt"),
        "greetings from the host\n",
    )
    .unwrap();
    dir
}

fn demo_passes_every_check(test: &str, cpus: &str, guest_dir: &str) {
    let Some(path) = app(test, "demo") else {
        return;
    };
    let host = mapped_directory();
    let mapping = format!("{}:{guest_dir}", host.path().display());
    let run = Uhyve::kernel(&path)
        .opts([
            "-c",
            cpus,
            "--file-mapping",
            &mapping,
            "-e",
            "DEMO_GREETING=hello from the test",
            "-e",
            &format!("DEMO_MAPPED_DIR={guest_dir}"),
            "-e",
            "DEMO_EXPECT_ARGS=first|second arg|",
        ])
        .args(["first", "second arg", ""])
        .timeout(Duration::from_secs(300))
        .run();
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("Welcome to Hermit 0.11.0")
        .assert_stdout_contains("ok: arguments arrive in order")
        .assert_stdout_contains("demo: env DEMO_GREETING=hello from the test")
        .assert_stdout_contains("ok: read host file in mapped directory")
        .assert_stdout_contains("ok: append to file in mapped directory")
        .assert_stdout_contains("ok: four threads share a mutex")
        .assert_stdout_contains("demo: all checks passed")
        .assert_stdout_lacks("CHECK FAILED");
    let written = std::fs::read_to_string(host.path().join("from-guest.txt")).unwrap();
    assert_eq!(
        written,
        "written by the Hermit demo; the host said \"greetings from the host\"\nappended line\n",
        "{}",
        run.report()
    );
    assert!(
        !host.path().join("scratch.txt").exists(),
        "the guest removed its scratch file"
    );
}

#[test]
fn demo_passes_every_check_on_one_vcpu() {
    demo_passes_every_check("demo_passes_every_check_on_one_vcpu", "1", "/data");
}

#[test]
fn demo_passes_every_check_on_two_vcpus() {
    demo_passes_every_check("demo_passes_every_check_on_two_vcpus", "2", "/data");
}

#[test]
fn demo_reaches_a_mapping_below_the_default_mount_point() {
    demo_passes_every_check(
        "demo_reaches_a_mapping_below_the_default_mount_point",
        "1",
        "/root/shared",
    );
}

#[test]
fn demo_without_a_mapping_cannot_see_host_files() {
    let test = "demo_without_a_mapping_cannot_see_host_files";
    let Some(path) = app(test, "demo") else {
        return;
    };
    // The guest looks for a directory nobody mapped: the read must fail inside the guest.
    let run = run(&path, &["-e", "DEMO_MAPPED_DIR=/data"], &[]);
    run.assert_no_host_panic()
        .assert_stdout_contains("CHECK FAILED: read host file in mapped directory")
        .assert_code(1);
}

fn exit3_exits_with_3(test: &str, cpus: &str) {
    let Some(path) = app(test, "exit3") else {
        return;
    };
    run(&path, &["-c", cpus], &[])
        .assert_no_host_panic()
        .assert_stdout_contains("exit3: exiting with status 3")
        .assert_code(3);
}

#[test]
fn exit3_exits_with_3_on_one_vcpu() {
    exit3_exits_with_3("exit3_exits_with_3_on_one_vcpu", "1");
}

#[test]
fn exit3_exits_with_3_on_two_vcpus() {
    exit3_exits_with_3("exit3_exits_with_3_on_two_vcpus", "2");
}

fn a_panic_is_never_success(test: &str, cpus: &str) {
    let Some(path) = app(test, "panic") else {
        return;
    };
    let run = run(&path, &["-c", cpus], &[]);
    run.assert_no_host_panic()
        .assert_stdout_contains("deliberate panic in a Hermit application");
    assert_ne!(run.code(), 0, "{}", run.report());
}

#[test]
fn a_panic_is_never_success_on_one_vcpu() {
    a_panic_is_never_success("a_panic_is_never_success_on_one_vcpu", "1");
}

#[test]
fn a_panic_is_never_success_on_two_vcpus() {
    a_panic_is_never_success("a_panic_is_never_success_on_two_vcpus", "2");
}

#[test]
fn threads_run_on_every_vcpu() {
    let test = "threads_run_on_every_vcpu";
    let Some(path) = app(test, "threads") else {
        return;
    };
    let run = run(&path, &["-c", "2", "--stats"], &[]);
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains(&format!("threads: {VCPUS_USED_OF_TWO} vCPU(s)"))
        .assert_stdout_contains("threads: all checks passed");
    // Each worker prints 11 lines from the vCPU it runs on; the kernel's own start-up on vCPU 1
    // makes far fewer exits than that.
    let exits = exits_per_vcpu(&run);
    assert_eq!(exits.len(), 2, "{}", run.report());
    let busy = exits.iter().filter(|&&count| count >= 11).count() as u64;
    assert!(
        busy == VCPUS_USED_OF_TWO,
        "{VCPUS_USED_OF_TWO} vCPU(s) ran workers: exits {exits:?}\n{}",
        run.report()
    );
}

#[test]
fn threads_run_with_cpu_pm_and_pit() {
    let test = "threads_run_with_cpu_pm_and_pit";
    let Some(path) = app(test, "threads") else {
        return;
    };
    // The idle vCPU halts with whatever exits KVM leaves (tests/tuning.rs checks which), and
    // the kernel ignores the in-kernel PIT: the application runs as without the options.
    let run = run(&path, &["-c", "2", "--cpu-pm", "--pit"], &[]);
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains(&format!(
            "threads: 2 threads on {VCPUS_USED_OF_TWO} vCPU(s) joined"
        ))
        .assert_stdout_contains("threads: all checks passed");
}

fn float_workload_is_exact(test: &str, cpus: &str) {
    let Some(path) = app(test, "float") else {
        return;
    };
    run(&path, &["-c", cpus], &[])
        .assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("float: 2.718282 1.5e-300 0.30000000000000004")
        .assert_stdout_contains("float: all checks passed")
        .assert_stdout_lacks("CHECK FAILED");
}

#[test]
fn float_workload_is_exact_on_one_vcpu() {
    float_workload_is_exact("float_workload_is_exact_on_one_vcpu", "1");
}

#[test]
fn float_workload_is_exact_on_two_vcpus() {
    float_workload_is_exact("float_workload_is_exact_on_two_vcpus", "2");
}

#[test]
fn exit3_runs_with_its_ram_at_a_random_base() {
    let test = "exit3_runs_with_its_ram_at_a_random_base";
    let Some(path) = app(test, "exit3") else {
        return;
    };
    // ASLR is on by default: RAM and the relocatable kernel move; the guest runs as at 0.
    let random = run(&path, &["-v"], &[]);
    random.assert_no_host_panic().assert_code(3);
    assert!(
        random.stderr.contains("(ASLR: 2 MiB-aligned RAM base "),
        "{}",
        random.report()
    );
    let lowest = run(&path, &["-v", "--no-aslr"], &[]);
    lowest.assert_no_host_panic().assert_code(3);
    let at_lowest = if cfg!(target_arch = "x86_64") {
        "kernel base 0x40000, guest RAM from 0x0 (ASLR off: the lowest base)"
    } else {
        "kernel base 0x10040000, guest RAM from 0x10000000 (ASLR off: the lowest base)"
    };
    assert!(lowest.stderr.contains(at_lowest), "{}", lowest.report());
}
