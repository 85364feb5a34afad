//! The options that tune the VM rather than the guest — `--no-aslr`, `--thp`, `--ksm`, `--pit`,
//! `--cpu-pm`, `--io-mode` — on real KVM with the tiny test guests: what each one changes, seen
//! from the guest or from the host, and what stays as it was without it. Address-space layout
//! randomisation uses the position-independent guest `tests/guests/pie/aslr.c`.
#![cfg(kvm)]

mod common;

use std::collections::BTreeSet;

use common::{Run, Uhyve, kvm_or_skip};

/// One mebibyte.
const MIB: u64 = 1 << 20;

/// A hexadecimal number the guest printed after `label` (`label 0x…`).
fn printed_hex(run: &Run, label: &str) -> u64 {
    let line = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("the guest printed no {label:?}\n{}", run.report()));
    let digits = line.trim().trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .unwrap_or_else(|e| panic!("{label:?} {line:?}: {e}\n{}", run.report()))
}

/// The kernel base and RAM base the `aslr` guest found itself at.
fn bases(run: &Run) -> (u64, u64) {
    (
        printed_hex(run, "load base "),
        printed_hex(run, "RAM base "),
    )
}

#[test]
fn aslr_moves_a_relocatable_guest_between_runs() {
    if !kvm_or_skip("aslr_moves_a_relocatable_guest_between_runs") {
        return;
    }
    let mut ram_bases = BTreeSet::new();
    for _ in 0..5 {
        let run = Uhyve::pie_guest("aslr").opts(["-v"]).run();
        run.assert_all_ok();
        let (kernel, ram) = bases(&run);
        // The kernel keeps its offset above 2 MiB-aligned RAM, which ends below the 32-bit hole.
        assert_eq!(kernel - ram, 0x40000, "{}", run.report());
        assert_eq!(ram % (2 * MIB), 0, "{}", run.report());
        assert!(ram + 64 * MIB <= 0xC000_0000, "{}", run.report());
        // uhyve logs the same choice.
        let logged = format!(
            "kernel base {kernel:#x}, guest RAM from {ram:#x} (ASLR: 2 MiB-aligned RAM base "
        );
        assert!(run.stderr.contains(&logged), "{}", run.report());
        ram_bases.insert(ram);
    }
    // 5 draws from about 1500 bases are all equal with a probability below 10^-12.
    assert!(ram_bases.len() >= 2, "{ram_bases:x?}");
}

#[test]
fn without_aslr_a_relocatable_guest_gets_the_lowest_base() {
    if !kvm_or_skip("without_aslr_a_relocatable_guest_gets_the_lowest_base") {
        return;
    }
    for _ in 0..2 {
        let run = Uhyve::pie_guest("aslr").opts(["-v", "--no-aslr"]).run();
        run.assert_all_ok();
        assert_eq!(bases(&run), (0x40000, 0), "{}", run.report());
        assert!(
            run.stderr
                .contains("kernel base 0x40000, guest RAM from 0x0 (ASLR off: the lowest base)"),
            "{}",
            run.report()
        );
    }
}

#[test]
fn a_guest_linked_at_a_fixed_address_stays_there() {
    if !kvm_or_skip("a_guest_linked_at_a_fixed_address_stays_there") {
        return;
    }
    let run = Uhyve::guest("hello").opts(["-v"]).run();
    run.assert_success();
    assert!(
        run.stderr.contains(
            "kernel base 0x400000, guest RAM from 0x0 (the image is linked at a fixed address)"
        ),
        "{}",
        run.report()
    );
}

#[test]
fn moved_ram_leaves_low_memory_zero_filled_and_read_only() {
    if !kvm_or_skip("moved_ram_leaves_low_memory_zero_filled_and_read_only") {
        return;
    }
    // Reads: the MP-table search areas below 1 MiB read as zeros, RAM or not.
    let run = Uhyve::pie_guest("aslr").args(["low"]).run();
    run.assert_all_ok();
    let (_, ram) = bases(&run);
    if ram != 0 {
        run.assert_stdout_contains("MP search area 0x9f000 reads zeros: ok")
            .assert_stdout_contains("MP search area 0xf0000 reads zeros: ok");
    }
    // A write there stops the VM with a report, unless RAM happened to start at 0 (1 in ~1500).
    let run = Uhyve::pie_guest("aslr").args(["lowwrite"]).run();
    let (_, ram) = bases(&run);
    if ram == 0 {
        run.assert_all_ok().assert_stdout_contains("written\n");
    } else {
        run.assert_stopped_by_host(0)
            .assert_stdout_lacks("written\n");
        assert!(
            run.stderr.contains(
                "write of 8 bytes (0x5a5a) to 0x9f000, which is neither RAM nor a device"
            ),
            "{}",
            run.report()
        );
    }
}

#[test]
fn a_crash_report_names_the_randomised_instruction_pointer() {
    if !kvm_or_skip("a_crash_report_names_the_randomised_instruction_pointer") {
        return;
    }
    let run = Uhyve::pie_guest("aslr").args(["crash"]).run();
    run.assert_stopped_by_host(0)
        .assert_stdout_contains("crashing\n");
    let (kernel, _) = bases(&run);
    let rip = run
        .stderr
        .split("at RIP 0x")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .unwrap_or_else(|| panic!("no RIP in the report\n{}", run.report()));
    // The guest's code is its first 4 KiB page.
    assert!((kernel..kernel + 0x1000).contains(&rip), "{}", run.report());
    assert!(run.stderr.contains("triple fault"), "{}", run.report());
    assert!(
        run.stderr.contains("instruction `ud2` (0f 0b)"),
        "{}",
        run.report()
    );
}

#[test]
fn statistics_work_with_aslr() {
    if !kvm_or_skip("statistics_work_with_aslr") {
        return;
    }
    let run = Uhyve::pie_guest("aslr").opts(["--stats"]).run();
    run.assert_all_ok();
    assert!(
        run.stderr.contains("uhyve statistics:") && run.stderr.contains("vCPU exits: "),
        "{}",
        run.report()
    );
}
