//! Integration tests of the aarch64 KVM backend: the `uhyve` binary runs the tiny aarch64 test
//! guests of `tests/guests/aarch64/` (built by `tests/guest-images/build.rs`, which on an aarch64
//! Linux target makes them the crate's guests) on real KVM, one behaviour per guest: console
//! output, exit codes, arguments and environment, the file hypercalls, hostile parameters, crashes
//! (an undefined instruction, an MMIO store, a store without a syndrome) and PSCI secondaries.
//! Then the guests of hypercall interfaces v2 and v3 of `tests/guests/aarch64/v2/` (the x86_64
//! guests of `tests/guests/v2/` built for aarch64, whose RAM uhyve puts at 4 GiB), checked as
//! `tests/guests_v2.rs` checks them on x86_64: Exit, the console calls with piped input, every
//! file call, v2 guests kept from v3 calls and v1 ports, more than 3 GiB of RAM, hostile
//! parameters; and what differs on aarch64, where uhyve stops a guest that touches its hypercall
//! window anywhere but at a hypercall address. Last the real Hermit 0.11.0 `aarch64-hello_world`
//! image when `UHYVE_TEST_IMAGES` names its folder. Without a usable `/dev/kvm` each test is
//! skipped (fails with `UHYVE_REQUIRE_KVM`). What each guest prints and why is described at the
//! top of its C file.
#![cfg(all(target_os = "linux", target_arch = "aarch64"))]

mod common;
mod v1_guests;
mod v2_guests;

use std::fs;
use std::time::Duration;

use common::sandbox::{SECRET, Sandbox};
use common::v2::{PARAM_CALLS, big_buffer, sandbox};
use common::{Run, Uhyve, kvm_or_skip, real_image};

/// What the guests return when uhyve lets them go on after something it must stop.
const SURVIVED: i32 = 42;

/// Deadline of the real Hermit image: it runs at emulation speed when KVM itself runs under
/// QEMU's TCG.
const REAL_IMAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// The address the guest printed on its line `"<prefix><hex>"`.
fn printed_address(run: &Run, prefix: &str) -> u64 {
    let hex = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("the guest printed no {prefix:?} line\n{}", run.report()));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{hex:?}: {e}\n{}", run.report()))
}

// ---- Output and exit status ----

#[test]
fn hello_prints_through_both_console_hypercalls() {
    if !kvm_or_skip("hello_prints_through_both_console_hypercalls") {
        return;
    }
    let run = Uhyve::guest("hello").run();
    run.assert_success();
    assert_eq!(
        run.stdout,
        "hello from aarch64 (uart)\nhello from aarch64 (serial buffer)\n",
        "{}",
        run.report()
    );
}

// ---- Files ----

// ---- Hostile guests: uhyve must survive every one of them ----

#[test]
fn hostile_parameter_blocks_outside_ram_stop_the_vm() {
    if !kvm_or_skip("hostile_parameter_blocks_outside_ram_stop_the_vm") {
        return;
    }
    for attack in [
        "write_param_outside_ram",
        "write_param_straddles_end",
        "write_param_below_ram",
    ] {
        let run = Uhyve::guest("hostile").args([attack]).run();
        run.assert_stopped_by_host(SURVIVED)
            .assert_stderr_mentions("write")
            .assert_stderr_mentions("outside guest RAM")
            .assert_stdout_lacks("survived");
    }
    let run = Uhyve::guest("hostile")
        .args(["exit_param_outside_ram"])
        .run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived");
}

#[test]
fn hostile_read_buffers_get_errors() {
    if !kvm_or_skip("hostile_read_buffers_get_errors") {
        return;
    }
    let sandbox = Sandbox::new();
    fs::write(sandbox.path("mnt/input.txt"), SECRET).unwrap();
    let run = sandbox
        .uhyve("hostile")
        .args(["read_bad_buffers", "data/input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("read buf crossing end of map: ok\n")
        .assert_stdout_contains("read still works: ok\n");
}

#[test]
fn hostile_serial_buffers_do_not_crash() {
    if !kvm_or_skip("hostile_serial_buffers_do_not_crash") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["serial_bad_buffers"]).run();
    run.assert_no_host_crash();
    if run.code() != SURVIVED {
        run.assert_stopped_by_host(SURVIVED);
    }
    assert!(
        run.stdout.len() < 4096,
        "uhyve printed {} bytes for a 4-byte tail of RAM",
        run.stdout.len()
    );
}

#[test]
fn hostile_paths_cannot_escape_the_mapping() {
    if !kvm_or_skip("hostile_paths_cannot_escape_the_mapping") {
        return;
    }
    let paths = [
        "../../etc/passwd",
        "/../etc/passwd",
        "data/../../etc/passwd",
        "/etc/passwd",
        "../outside/secret",
        "data/../outside/secret",
        "data/link/secret",
        "data/link_file",
    ];
    let sandbox = Sandbox::new();
    let run = sandbox
        .uhyve("hostile")
        .args(["open_must_fail"])
        .args(paths)
        .run();
    run.assert_no_host_crash().assert_all_ok();
    for path in paths {
        run.assert_stdout_contains(&format!("open {path}: ok\n"));
    }
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_creates_and_unlinks_stay_inside_the_sandbox() {
    if !kvm_or_skip("hostile_creates_and_unlinks_stay_inside_the_sandbox") {
        return;
    }
    let sandbox = Sandbox::new();
    let creates = [
        "../escaped",
        "data/../escaped",
        "data/../outside/created",
        "data/link/created",
        "data/link_file",
    ];
    let run = sandbox
        .uhyve("hostile")
        .args(["create_anything"])
        .args(creates)
        .run();
    run.assert_no_host_crash().assert_success();
    for path in creates {
        run.assert_stdout_contains(&format!("create {path}: "));
    }
    let unlinks = ["data/link/secret", "../outside/secret", "data/link_file"];
    let run = sandbox
        .uhyve("hostile")
        .args(["unlink_anything"])
        .args(unlinks)
        .run();
    run.assert_no_host_crash().assert_success();
    for path in unlinks {
        run.assert_stdout_contains(&format!("unlink {path}: "));
    }
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_file_descriptors_get_errors() {
    if !kvm_or_skip("hostile_file_descriptors_get_errors") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["bad_fds"]).run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("fd 2147483647\n");
    assert_eq!(
        run.stdout.matches(": ok\n").count(),
        6 * 4,
        "{}",
        run.report()
    );
    let run = Uhyve::guest("hostile").args(["close_stdio"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("fd 1 still works\n");
}

#[test]
fn unserved_hypercalls_are_ignored() {
    if !kvm_or_skip("unserved_hypercalls_are_ignored") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["unserved_hypercalls"]).run();
    run.assert_success()
        .assert_stdout_contains("unserved hypercalls: ok\n");
}

#[test]
fn a_stray_store_to_the_hypercall_window_stops_the_vm() {
    if !kvm_or_skip("a_stray_store_to_the_hypercall_window_stops_the_vm") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["stray_window_store"]).run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived")
        .assert_stderr_mentions("offset 0x8 of the hypercall window");
}

#[test]
fn hostile_cmdval_pointers_do_not_crash() {
    if !kvm_or_skip("hostile_cmdval_pointers_do_not_crash") {
        return;
    }
    for attack in ["cmdval_outside_ram", "cmdval_bad_slots"] {
        let run = Uhyve::guest("hostile").args([attack]).run();
        run.assert_no_host_crash();
        if run.code() != SURVIVED {
            run.assert_stopped_by_host(SURVIVED);
        }
    }
}

// ---- Crashes: a non-zero status and a message naming the PC ----

#[test]
fn an_undefined_instruction_is_reported_by_the_guest_vectors_and_stops_the_vm() {
    if !kvm_or_skip("an_undefined_instruction_is_reported_by_the_guest_vectors_and_stops_the_vm") {
        return;
    }
    // KVM never sees the exception: the guest's vectors (rt/start.S) report it and stop with a
    // store uhyve must refuse, naming that store's PC.
    let run = Uhyve::guest("crash").args(["udf"]).run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived");
    let udf = printed_address(&run, "udf at ");
    let stop = printed_address(&run, "stopping at ");
    run.assert_stdout_contains(&format!(
        "exception: synchronous from current EL with SP_ELx: esr 0x2000000 elr {udf:#x} "
    ))
    .assert_stderr_mentions(&format!("PC {stop:#x}"))
    .assert_stderr_mentions("hypercall window");
}

#[test]
fn the_guests_own_brk_reaches_its_vectors() {
    if !kvm_or_skip("the_guests_own_brk_reaches_its_vectors") {
        return;
    }
    // Without a debugger KVM does not trap BRK: the guest's vectors see EC 0x3c, imm 0x77.
    let run = Uhyve::guest("crash").args(["brk"]).run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived");
    let brk = printed_address(&run, "brk at ");
    run.assert_stdout_contains(&format!(
        "exception: synchronous from current EL with SP_ELx: esr 0xf2000077 elr {brk:#x} "
    ));
}

#[test]
fn an_mmio_store_crash_names_the_store() {
    if !kvm_or_skip("an_mmio_store_crash_names_the_store") {
        return;
    }
    let run = Uhyve::guest("crash").args(["mmio"]).run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived")
        .assert_stdout_lacks("exception:");
    let target = printed_address(&run, "target ");
    let store = printed_address(&run, "store at ");
    run.assert_stderr_mentions(&format!(
        "write of 4 bytes (0x1234) to {target:#x}, which is neither RAM nor a device"
    ))
    .assert_stderr_mentions(&format!("PC {store:#x}"));
}

#[test]
fn a_store_without_syndrome_is_refused_not_taken_for_a_hypercall() {
    if !kvm_or_skip("a_store_without_syndrome_is_refused_not_taken_for_a_hypercall") {
        return;
    }
    // The pair stores the address of an Exit block with code 0 to the Exit address: a uhyve that
    // decoded it anyway would end with status 0, which assert_stopped_by_host refuses.
    let run = Uhyve::guest("crash").args(["nisv"]).run();
    run.assert_stopped_by_host(SURVIVED)
        .assert_stdout_lacks("survived");
    let stp = printed_address(&run, "stp at ");
    run.assert_stderr_mentions("no instruction syndrome")
        .assert_stderr_mentions(&format!("PC {stp:#x}"));
}

// ---- Secondary cpus (PSCI) ----

#[test]
fn cpu_on_starts_the_second_vcpu_and_cpu_off_stops_it() {
    if !kvm_or_skip("cpu_on_starts_the_second_vcpu_and_cpu_off_stops_it") {
        return;
    }
    let run = Uhyve::guest("smp").opts(["-c", "2"]).run();
    run.assert_success()
        .assert_stdout_contains("psci version ")
        .assert_stdout_contains("cpu 1 up\nCPU_ON: ok\ncpu 1 off: ok\n");
}

#[test]
fn cpu_on_of_a_missing_vcpu_fails() {
    if !kvm_or_skip("cpu_on_of_a_missing_vcpu_fails") {
        return;
    }
    // With one vCPU there is no cpu 1: KVM answers INVALID_PARAMETERS.
    let run = Uhyve::guest("smp").opts(["-c", "1"]).run();
    run.assert_code(1)
        .assert_stdout_contains("CPU_ON failed: -2\n")
        .assert_stdout_lacks("cpu 1 up");
}

// ---- Interfaces v2 and v3: exit and console ----

#[test]
fn v3_exit_code_is_the_stored_value() {
    if !kvm_or_skip("v3_exit_code_is_the_stored_value") {
        return;
    }
    let cases: &[(&[&str], i32)] = &[
        (&["0"], 0),
        (&["1"], 1),
        (&["255"], 255),
        (&["256"], 0),
        (&["-1"], 255),
        (&["-2"], 254),
        // The code sign-extended into all of the stored register, and junk above the code.
        (&["raw", "-2"], 254),
        (&["raw", "81985529216486659"], 3),
        (&["return", "7"], 7),
    ];
    for (args, status) in cases {
        let run = Uhyve::v2_guest("v3_exit").args(*args).run();
        run.assert_code(*status);
        assert_eq!(run.stdout, "", "{}", run.report());
    }
}

#[test]
fn v3_console_output_and_input() {
    if !kvm_or_skip("v3_console_output_and_input") {
        return;
    }
    // 3 bytes by `ldrb`, 'D' by `ldrh`, 0xff and 'F' by `ldr w` (0xff is data there, not the
    // end), 20 bytes by SerialReadBuffer, the rest by FileRead on fd 0.
    let mut input = b"ABCD\xffFghijklmnopqrstuvwxyz0123".to_vec();
    input.extend_from_slice(b"and the rest through FileRead fd 0\n");
    let run = Uhyve::v2_guest("v3_console").stdin(input).run();
    run.assert_all_ok()
        .assert_stdout_contains("boot info serial_port_base is SerialWriteBuffer: ok\n")
        .assert_stdout_contains("console: SerialWriteByte\n[!]\nconsole: SerialWriteBuffer\n")
        .assert_stdout_contains(&big_buffer())
        .assert_stdout_contains("END-OF-RAM-OK\n")
        .assert_stdout_contains("console: FileWrite fd 1\n")
        .assert_stdout_contains("console: FileWrite fd 2\n")
        .assert_stdout_contains(
            "stdin: [ABCD\\xffFghijklmnopqrstuvwxyz0123and the rest through FileRead fd 0\\x0a]\n",
        )
        .assert_stdout_contains("SerialReadByte zero-extends: ok\n")
        .assert_stdout_contains("end: SerialReadByte eax again: ok\n")
        .assert_stdout_contains("end: SerialReadBuffer buffer untouched: ok\n");
    assert_eq!(
        run.stdout.matches("big ").count(),
        1280,
        "the big buffer came out more than once\n{}",
        run.report()
    );
}

// ---- Interfaces v2 and v3: files, gating, memory ----

#[test]
fn v2_guests_cannot_reach_the_v3_calls() {
    if !kvm_or_skip("v2_guests_cannot_reach_the_v3_calls") {
        return;
    }
    let sandbox = sandbox();
    fs::write(sandbox.path("mnt/existing.txt"), "existing content\n").unwrap();
    let run = sandbox.uhyve_v2("v2_gating").args(["/data"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("v2: SerialWriteBuffer\n")
        .assert_stdout_contains("Mkdir ignored: ok\n")
        .assert_stdout_contains("Getdents ignored: ok\n")
        .assert_stdout_contains("FileStat ignored: ok\n")
        .assert_stdout_contains("FileFstat ignored: ok\n")
        .assert_stdout_contains("in from v3 addresses: all-ones: ok\n")
        .assert_stdout_contains("v1 Exit and FileOpen ignored: ok\n")
        .assert_stdout_contains("v2_gating: all ok\n");
    assert!(!sandbox.path("mnt/v3dir").exists(), "a v2 guest made a dir");
    assert!(!sandbox.path("mnt/v2.txt").exists(), "v2.txt was unlinked");
    sandbox.assert_outside_untouched();
}

// ---- Interfaces v2 and v3: hostile guests ----

fn assert_v3_params_stop_the_vm(places: &[&str]) {
    for place in places {
        for (call, hypercall) in PARAM_CALLS {
            let run = Uhyve::v2_guest("v3_hostile")
                .args(["params", call, place])
                .run();
            run.assert_stopped_by_host(SURVIVED)
                .assert_stderr_mentions(&format!("{hypercall}: parameter block at 0x"))
                .assert_stderr_mentions("outside guest RAM")
                .assert_stdout_lacks("survived");
        }
    }
}

#[test]
fn v3_parameter_blocks_at_or_across_the_end_of_ram_stop_the_vm() {
    if !kvm_or_skip("v3_parameter_blocks_at_or_across_the_end_of_ram_stop_the_vm") {
        return;
    }
    assert_v3_params_stop_the_vm(&["end", "straddle"]);
}

#[test]
fn v3_parameter_blocks_below_ram_or_wrapping_stop_the_vm() {
    if !kvm_or_skip("v3_parameter_blocks_below_ram_or_wrapping_stop_the_vm") {
        return;
    }
    assert_v3_params_stop_the_vm(&["below", "low", "wrap"]);
}

#[test]
fn v3_serial_buffers_outside_ram_stop_the_vm() {
    if !kvm_or_skip("v3_serial_buffers_outside_ram_stop_the_vm") {
        return;
    }
    for (attack, hypercall) in [
        ("serial_write_buffer", "SerialWriteBuffer"),
        ("serial_read_buffer", "SerialReadBuffer"),
    ] {
        for place in ["end", "straddle", "below", "low", "wrap", "huge"] {
            let run = Uhyve::v2_guest("v3_hostile")
                .args([attack, place])
                .stdin("input that must not land anywhere\n")
                .run();
            run.assert_stopped_by_host(SURVIVED)
                .assert_stderr_mentions(&format!("{hypercall}: buffer at 0x"))
                .assert_stderr_mentions("outside guest RAM")
                .assert_stdout_lacks("survived")
                .assert_stdout_lacks("TAIL");
        }
    }
}

#[test]
fn v1_ports_do_nothing_for_a_v3_guest() {
    if !kvm_or_skip("v1_ports_do_nothing_for_a_v3_guest") {
        return;
    }
    let run = Uhyve::v2_guest("v3_hostile").args(["v1_ports"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("v1 Exit ignored: ok\n")
        .assert_stdout_contains("v1 FileOpen untouched: ok\n")
        .assert_stdout_contains("v1 Cmdval untouched: ok\n")
        .assert_stdout_lacks("LEAK");
    assert_eq!(run.stdout.matches(": ok\n").count(), 9, "{}", run.report());
}

#[test]
fn v3_stores_without_a_served_store_are_ignored_and_loads_read_all_ones() {
    if !kvm_or_skip("v3_stores_without_a_served_store_are_ignored_and_loads_read_all_ones") {
        return;
    }
    let run = Uhyve::v2_guest("v3_hostile").args(["unknown_ports"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("stores to v2 addresses without a store: ignored: ok\n")
        .assert_stdout_contains("load 0x1010: ok\n")
        .assert_stdout_contains("load 0x1190: ok\n")
        .assert_stdout_contains("load 0x1210: ok\n")
        .assert_stdout_contains("unknown ports: still running\n")
        .assert_stdout_lacks("LEAK");
    assert_eq!(run.stdout.matches(": ok\n").count(), 17, "{}", run.report());
}

#[test]
fn v3_stray_accesses_to_the_hypercall_window_stop_the_vm() {
    if !kvm_or_skip("v3_stray_accesses_to_the_hypercall_window_stop_the_vm") {
        return;
    }
    // Offsets that are no hypercall address (of either table): a store there is refused, even
    // with a FileWrite of "LEAK" behind it.
    for offset in [
        0x8u64, 0x600, 0x1000, 0x1018, 0x1060, 0x11a0, 0x1300, 0x3ff8,
    ] {
        let run = Uhyve::v2_guest("v3_hostile")
            .args(["window_store", &offset.to_string()])
            .run();
        run.assert_stopped_by_host(SURVIVED)
            .assert_stdout_lacks("survived")
            .assert_stdout_lacks("LEAK")
            .assert_stderr_mentions(&format!(
                "write of 8 bytes at offset {offset:#x} of the hypercall window"
            ));
    }
    // Loads are hypercall reads at v2/v3 addresses only: the v1 ports and other offsets are
    // stray.
    for offset in [0x540u64, 0x800, 0x1000, 0x1060, 0x3ff8] {
        let run = Uhyve::v2_guest("v3_hostile")
            .args(["window_load", &offset.to_string()])
            .run();
        run.assert_stopped_by_host(SURVIVED)
            .assert_stdout_lacks("survived")
            .assert_stderr_mentions(&format!(
                "read of 4 bytes at offset {offset:#x} of the hypercall window"
            ));
    }
}

// ---- The real Hermit image ----

#[test]
fn the_real_aarch64_hello_world_runs_to_completion() {
    let Some(path) = real_image(
        "the_real_aarch64_hello_world_runs_to_completion",
        "aarch64-hello_world",
    ) else {
        return;
    };
    let run = Uhyve::kernel(path).timeout(REAL_IMAGE_TIMEOUT).run();
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("Hello, world!");
}
