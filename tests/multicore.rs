//! Integration tests of multi-core guests (`-c/--cpu-count N`): the `smp` test guest
//! (`tests/guests/smp.c`) checks that every vCPU starts with its own id and that they share memory
//! coherently, that an Exit hypercall or a crash on one vCPU stops all of them (even one spinning
//! with interrupts off), and that output of concurrent vCPUs is never mixed within a hypercall;
//! plus `--stats` per-vCPU counts, `--affinity` and the real Hermit hello_world image on several
//! vCPUs (when `UHYVE_TEST_IMAGES` names the image folder).
#![cfg(kvm)]

mod common;

use std::time::{Duration, Instant};

use common::{Run, Uhyve, kvm_or_skip, real_image};

/// Lines each of cpu 0 and cpu 1 prints in `concurrent_print` mode (see smp.c).
const PRINT_LINES: usize = 200;
/// Length of one such line, newline included.
const LINE_LEN: usize = 100;

/// Upper bound on the wall time of a run whose guest exits at once from cpu 1 while cpu 0 spins.
/// Far below the harness deadline; the 100 ms target belongs in benchmarks.
const PROMPT_EXIT: Duration = Duration::from_secs(5);

/// Runs the smp guest in `mode` on `cpus` vCPUs with extra uhyve `options`.
fn smp(mode: &str, cpus: u32, options: &[&str]) -> Run {
    Uhyve::guest("smp")
        .opts(["-c", &cpus.to_string()])
        .opts(options.iter().copied())
        .args([mode])
        .run()
}

/// Asserts that the guest's own exit `code` became uhyve's status and uhyve did not panic.
/// (Not `assert_no_host_crash`: a guest may exit non-zero, even with 101, Rust's panic status,
/// without uhyve saying anything on stderr.)
fn assert_guest_code(run: &Run, code: i32) {
    assert!(
        !run.stderr.contains("panicked"),
        "uhyve panicked\n{}",
        run.report()
    );
    run.assert_code(code);
}

/// Asserts a successful `checkin` on `cpus` vCPUs: exit code 100 + cpus and the report line.
fn assert_checked_in(run: &Run, cpus: u32) {
    run.assert_stdout_contains(&format!("checked in: {cpus}\n"))
        .assert_stdout_lacks("smp: ");
    assert_guest_code(run, 100 + i32::try_from(cpus).expect("small cpu count"));
}

/// The exact line `cpu` prints as its `number`th line in `concurrent_print` mode.
fn expected_line(cpu: u32, number: usize) -> String {
    let prefix = format!("cpu{cpu} line {number:03} ");
    let fill = "x".repeat(LINE_LEN - 1 - prefix.len());
    format!("{prefix}{fill}")
}

// ---- Start-up: every vCPU runs, with its own id ----

#[test]
fn every_cpu_checks_in() {
    if !kvm_or_skip("every_cpu_checks_in") {
        return;
    }
    for cpus in [1, 2, 4, 8] {
        assert_checked_in(&smp("checkin", cpus, &[]), cpus);
    }
}

#[test]
fn more_vcpus_than_host_cpus_all_check_in() {
    if !kvm_or_skip("more_vcpus_than_host_cpus_all_check_in") {
        return;
    }
    for cpus in [16, 64] {
        assert_checked_in(&smp("checkin", cpus, &[]), cpus);
    }
}

#[test]
fn smp_modes_that_need_two_cpus_refuse_one() {
    if !kvm_or_skip("smp_modes_that_need_two_cpus_refuse_one") {
        return;
    }
    // The guest itself must not mistake a single vCPU for success (negative test of the guest).
    let run = smp("concurrent_print", 1, &[]);
    run.assert_stdout_contains("smp: this mode needs at least 2 cpus");
    assert_guest_code(&run, 1);
}

// ---- Stopping: one vCPU's exit or crash ends the whole VM ----

#[test]
fn exit_from_a_secondary_stops_a_spinning_cpu0() {
    if !kvm_or_skip("exit_from_a_secondary_stops_a_spinning_cpu0") {
        return;
    }
    for cpus in [2, 4] {
        let started = Instant::now();
        let run = smp("exit_from_cpu1", cpus, &[]);
        let elapsed = started.elapsed();
        run.assert_stdout_contains("cpu1 exiting\n");
        assert_guest_code(&run, 7);
        assert!(
            elapsed < PROMPT_EXIT,
            "-c {cpus}: uhyve took {elapsed:?} to stop the other vCPUs\n{}",
            run.report()
        );
    }
}

#[test]
fn crash_of_a_secondary_is_reported_with_its_id() {
    if !kvm_or_skip("crash_of_a_secondary_is_reported_with_its_id") {
        return;
    }
    let run = smp("crash_cpu1", 2, &[]);
    run.assert_no_host_crash().assert_stderr_mentions("vCPU 1");
    assert_ne!(run.code(), 0, "{}", run.report());
}

// ---- Output of concurrent vCPUs ----

#[test]
fn exit_ends_the_vm_while_another_vcpu_is_blocked_on_stdout() {
    use std::process::{Command, Stdio};
    if !kvm_or_skip("exit_ends_the_vm_while_another_vcpu_is_blocked_on_stdout") {
        return;
    }
    // stdout is a pipe this test never reads: cpu 1's console writes block once it is full,
    // then cpu 0 exits with 9 (smp.c, flood_then_exit).
    let mut child = Command::new(common::UHYVE_BIN)
        .args(["-c", "2"])
        .arg(common::guest("smp"))
        .arg("flood_then_exit")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("uhyve did not end after the guest's Exit while a vCPU was blocked on stdout");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(9), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn concurrent_output_is_never_mixed_within_a_line() {
    if !kvm_or_skip("concurrent_output_is_never_mixed_within_a_line") {
        return;
    }
    let run = smp("concurrent_print", 2, &[]);
    run.assert_no_host_crash().assert_success();
    let expected: [Vec<String>; 2] =
        [0, 1].map(|cpu| (0..PRINT_LINES).map(|n| expected_line(cpu, n)).collect());
    let mut next = [0usize; 2];
    assert!(
        run.stdout.ends_with('\n'),
        "output ends mid-line\n{}",
        run.report()
    );
    for (index, line) in run.stdout.lines().enumerate() {
        let cpu = match line.get(..4) {
            Some("cpu0") => 0,
            Some("cpu1") => 1,
            _ => panic!("line {index} is no cpu's line: {line:?}\n{}", run.report()),
        };
        let want = expected[cpu].get(next[cpu]).map(String::as_str);
        assert_eq!(
            Some(line),
            want,
            "line {index}: cpu {cpu}'s line {} expected (mixed or out of order)\n{}",
            next[cpu],
            run.report()
        );
        next[cpu] += 1;
    }
    assert_eq!(
        next,
        [PRINT_LINES; 2],
        "lines printed per cpu\n{}",
        run.report()
    );
}

// ---- Options: --stats and --affinity ----

/// The number in a `--stats` line `  <label>: <n> exits` or `  <label>: <n>`.
#[test]
fn stats_count_exits_per_vcpu() {
    if !kvm_or_skip("stats_count_exits_per_vcpu") {
        return;
    }
    let run = smp("checkin", 2, &["--stats"]);
    assert_checked_in(&run, 2);
    let Some((columns, sums)) = common::stats_exit_table(&run.stdout) else {
        panic!("--stats lacks the VM exits table\n{}", run.report());
    };
    // One column per vCPU, no more.
    assert_eq!(columns, ["cpu0", "cpu1"], "{}", run.report());
    let (total, cpu0, cpu1) = (sums[0], sums[1], sums[2]);
    // Cpu 0 made at least the Cmdsize, Cmdval, output and Exit hypercalls.
    assert!(cpu0 >= 4, "{}", run.report());
    assert!(cpu1 >= 1, "{}", run.report());
    assert_eq!(
        total,
        cpu0 + cpu1,
        "the total column is not the per-vCPU sum\n{}",
        run.report()
    );
    assert_eq!(
        common::stats_all_exits(&run.stdout),
        Some(total),
        "{}",
        run.report()
    );
    assert!(
        run.stdout.contains("CPU runtimes:\n  cpu 0: ") && run.stdout.contains("\n  cpu 1: "),
        "{}",
        run.report()
    );
}

#[test]
fn affinity_pins_each_vcpu() {
    if !kvm_or_skip("affinity_pins_each_vcpu") {
        return;
    }
    assert_checked_in(&smp("checkin", 2, &["--affinity", "0,1"]), 2);
    assert_checked_in(&smp("checkin", 2, &["--affinity", "0-1"]), 2);
}

/// Asserts that uhyve refused the options before running the guest, with a one-line message.
fn assert_refused(run: &Run) {
    run.assert_no_host_crash();
    assert_ne!(run.code(), 0, "{}", run.report());
    assert!(
        !run.stdout.contains("checked in"),
        "the guest ran\n{}",
        run.report()
    );
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "expected a one-line message\n{}",
        run.report()
    );
}

#[test]
fn affinity_of_the_wrong_length_is_refused() {
    if !kvm_or_skip("affinity_of_the_wrong_length_is_refused") {
        return;
    }
    let run = smp("checkin", 2, &["--affinity", "0"]);
    assert_refused(&run);
    run.assert_stderr_mentions("affinity");
}

#[test]
fn affinity_naming_a_missing_host_cpu_is_refused() {
    if !kvm_or_skip("affinity_naming_a_missing_host_cpu_is_refused") {
        return;
    }
    let run = smp("checkin", 1, &["--affinity", "999"]);
    assert_refused(&run);
    run.assert_stderr_mentions("999");
}

// ---- The real Hermit image on several vCPUs ----

#[test]
fn hello_world_runs_on_several_cpus() {
    let Some(path) = real_image("hello_world_runs_on_several_cpus", "x86_64-hello_world") else {
        return;
    };
    for cpus in ["2", "4"] {
        let run = Uhyve::kernel(&path)
            .opts(["-c", cpus])
            .timeout(Duration::from_secs(300))
            .run();
        run.assert_no_host_crash()
            .assert_success()
            .assert_stdout_contains("Hello, world!\n");
    }
}

#[test]
fn hello_c_boots_every_application_processor() {
    // Unlike hello_world (built without SMP), the C image starts every CPU it is given.
    let Some(path) = real_image(
        "hello_c_boots_every_application_processor",
        "x86_64-hello_c",
    ) else {
        return;
    };
    for cpus in [2u32, 4] {
        // Kernel 0.6.9 has a start-up race of its own: an application processor can register
        // with the scheduler before the processors below it have (it panics with "insertion
        // index (is N) should be <= len (is M)", N > M; with 4 CPUs N is 1, 2 or 3). It shows
        // up rarely, under host load; only that guest-side panic is retried.
        let mut attempts = 0;
        let run = loop {
            attempts += 1;
            let run = Uhyve::kernel(&path)
                .opts(["-c", &cpus.to_string()])
                .timeout(Duration::from_secs(300))
                .run();
            let kernel_race = run.code() == 1
                && run.stdout.contains("insertion index (is ")
                && run.stdout.contains("should be <= len (is ");
            if kernel_race && attempts < 5 {
                eprintln!("hello_c -c {cpus}: the kernel's own start-up race hit; retrying");
                continue;
            }
            break run;
        };
        run.assert_no_host_crash()
            .assert_success()
            .assert_stdout_contains("Hello World!!!\n");
        for cpu in 1..cpus {
            run.assert_stdout_contains(&format!(
                "[{cpu}][INFO] Entering idle loop for application processor"
            ));
        }
    }
}

#[test]
fn expected_lines_follow_the_guest_format() {
    // The parser above relies on smp.c's line format: 100 bytes with the newline.
    assert_eq!(expected_line(0, 17).len() + 1, LINE_LEN);
    assert!(expected_line(1, 199).starts_with("cpu1 line 199 xxxx"));
}
