//! Integration tests of hypercall interfaces v2 and v3: the `uhyve` binary runs the tiny guests of
//! `tests/guests/v2/` (built by `tests/guest-images/build.rs`, linked at 4 MiB above 4 GiB, where
//! uhyve puts the RAM of such guests) on real KVM. Together they make every v2/v3 hypercall —
//! Exit, the serial output and input calls, the file calls, and v3's Getdents, FileStat, FileFstat
//! and Mkdir — from inside a guest, with good and hostile parameters: each guest prints
//! `<case>: ok` per checked result, and these tests assert those lines, the exit status, the
//! console output, and what happened on the host. The first tests need no KVM: they check that
//! every v2/v3 guest is a well-formed Hermit image of the interface version it claims.
#![cfg(kvm)]

mod common;
mod v2_guests;

use std::fs;

use common::v2::{PARAM_CALLS, big_buffer, sandbox};
use common::{Uhyve, all_v2_guests, kvm_or_skip, v2_guest};

/// The v2/v3 guests tests/guest-images/build.rs must produce, with the interface version each
/// announces.
const GUESTS: &[(&str, u32)] = &[
    ("v2_gating", 2),
    ("v3_console", 3),
    ("v3_exit", 3),
    ("v3_files", 3),
    ("v3_hostile", 3),
    ("v3_memory", 3),
];

/// Where the v2/v3 guests are linked: 4 MiB into RAM at 4 GiB.
const LINK_ADDRESS: u64 = 0x1_0040_0000;

/// The status `v3_hostile` returns when uhyve let an attack through that must stop the VM.
const SURVIVED: i32 = 42;

#[test]
fn v2_guests_are_built() {
    for (name, _) in GUESTS {
        v2_guest(name);
    }
    let built: Vec<String> = all_v2_guests()
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<&str> = GUESTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(built, expected, "the v2 guest directory differs");
}

#[test]
fn v2_guests_are_hermit_images_of_their_interface_version() {
    use goblin::elf::{Elf, header};
    for (name, version) in GUESTS {
        let bytes = fs::read(v2_guest(name)).expect("read guest");
        let elf = Elf::parse(&bytes).expect("guest is an ELF file");
        assert_eq!(elf.header.e_type, header::ET_EXEC, "{name}: not ET_EXEC");
        assert_eq!(elf.header.e_ident[header::EI_OSABI], 0xFF, "{name}: OS ABI");
        assert!(elf.dynamic.is_none(), "{name}: has a dynamic section");

        // The reference loader reads the same notes: entry version, kernel version, interface.
        let object = hermit_entry::elf::KernelObject::parse(&bytes)
            .unwrap_or_else(|e| panic!("{name}: hermit-entry rejects it: {e}"));
        assert_eq!(object.start_addr(), Some(LINK_ADDRESS), "{name}");
        assert_eq!(
            object.uhyve_interface_version().map(|v| v.0),
            Some(*version),
            "{name}"
        );
        let kernel = object.hermit_version().expect("an ABI-tag note");
        assert_eq!((kernel.major, kernel.minor), (0, 14), "{name}");

        let image = uhyve::loader::KernelImage::parse(bytes.clone())
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader rejects it: {e}"));
        assert_eq!(image.fixed_load_address(), Some(LINK_ADDRESS), "{name}");
        assert_eq!(image.entry_version(), 4, "{name}");
        assert_eq!(image.interface_version(), *version, "{name}");
        assert_eq!(image.kernel_version(), Some((0, 14, 0)), "{name}");
        assert_eq!(
            image.generation(),
            uhyve::loader::KernelGeneration::FdtMounts,
            "{name}"
        );
    }
}

// ---- Exit and console ----

#[test]
fn v3_exit_code_is_the_register_argument() {
    if !kvm_or_skip("v3_exit_code_is_the_register_argument") {
        return;
    }
    let cases: &[(&[&str], i32)] = &[
        (&["0"], 0),
        (&["1"], 1),
        (&["255"], 255),
        (&["256"], 0),
        (&["-1"], 255),
        (&["-2"], 254),
        // The code sign-extended into all of RDI, and junk above the 32-bit code.
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
    // 3 bytes by `in al`, 'D' by `in ax`, 0xff and 'F' by `in eax` (0xff is data there, not the
    // end), 20 bytes by SerialReadBuffer, the rest by FileRead on fd 0.
    let mut input = b"ABCD\xffFghijklmnopqrstuvwxyz0123".to_vec();
    input.extend_from_slice(b"and the rest through FileRead fd 0\n");
    let run = Uhyve::v2_guest("v3_console").stdin(input).run();
    run.assert_all_ok()
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

// ---- Files ----

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
        .assert_stdout_contains("v1 Exit and FileOpen ignored: ok\n")
        .assert_stdout_contains("v2_gating: all ok\n");
    assert!(!sandbox.path("mnt/v3dir").exists(), "a v2 guest made a dir");
    assert!(!sandbox.path("mnt/v2.txt").exists(), "v2.txt was unlinked");
    sandbox.assert_outside_untouched();
}

// ---- Hostile guests: uhyve must survive every one of them ----

fn assert_params_stop_the_vm(places: &[&str]) {
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
    assert_params_stop_the_vm(&["end", "straddle"]);
}

#[test]
fn v3_parameter_blocks_below_ram_or_wrapping_stop_the_vm() {
    if !kvm_or_skip("v3_parameter_blocks_below_ram_or_wrapping_stop_the_vm") {
        return;
    }
    assert_params_stop_the_vm(&["below", "low", "wrap"]);
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
                // Nothing of a buffer crossing the end of RAM reaches the console.
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
        .assert_stdout_contains("v1 Cmdval untouched: ok\n")
        .assert_stdout_contains("in from v1 ports: all-ones: ok\n")
        .assert_stdout_lacks("LEAK");
}

#[test]
fn v3_unknown_addresses_are_ignored_and_read_all_ones() {
    if !kvm_or_skip("v3_unknown_addresses_are_ignored_and_read_all_ones") {
        return;
    }
    let run = Uhyve::v2_guest("v3_hostile").args(["unknown_ports"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("out to addresses that are no hypercall: ok\n")
        .assert_stdout_contains("in 0x1010: ok\n")
        .assert_stdout_contains("in 0x1190: ok\n")
        .assert_stdout_contains("unknown ports: still running\n")
        .assert_stdout_lacks("LEAK");
    assert_eq!(run.stdout.matches(": ok\n").count(), 16, "{}", run.report());
}

#[test]
fn v3_string_port_reads_are_served_per_element_or_stop_the_vm() {
    if !kvm_or_skip("v3_string_port_reads_are_served_per_element_or_stop_the_vm") {
        return;
    }
    // KVM reports `rep ins` one element per exit, which uhyve serves like single reads, or as one
    // exit with a count, which uhyve refuses with a message (this machine's KVM does the latter).
    // 0x1200 is a reserved v2 address (a hypercall read), 0x1060 none at all (a port read).
    for port in ["4608", "4192"] {
        let run = Uhyve::v2_guest("v3_hostile").args(["rep_ins", port]).run();
        if run.code() == 0 {
            run.assert_all_ok()
                .assert_stdout_contains("rep_ins all-ones: ok\n");
        } else {
            run.assert_stopped_by_host(0)
                .assert_stderr_mentions("string port I/O");
        }
    }
}
