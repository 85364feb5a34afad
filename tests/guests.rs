//! Integration tests: the `uhyve` binary runs the tiny test guests of `tests/guests/` (built by
//! `tests/guest-images/build.rs`) on real KVM, one behaviour per guest, and the real Hermit sample
//! images when `UHYVE_TEST_IMAGES` names their directory. The first tests need no KVM: they check that every
//! built guest is a well-formed Hermit image and uses general-purpose registers only.
#![cfg(kvm)]

mod common;
mod v1_guests;

use std::ffi::OsStr;
use std::fs;
use std::process::Command;

use common::sandbox::{SECRET, Sandbox};
use common::{Uhyve, all_guests, all_v2_guests, guest, kvm_or_skip, pie_guest};

/// The guest that uses SSE/XSAVE instructions on purpose, to test uhyve's emulation fallback.
const EMULATION_GUEST: &str = "emulated";
/// The guests allowed to use SSE/XSAVE instructions: the emulation guest, the one that reports
/// what a guest's feature detection concludes (it needs XSETBV/XGETBV), and the one that checks
/// that the fallback's stores respect page protection.
const SIMD_GUESTS: &[&str] = &[EMULATION_GUEST, "cpu_features", "page_fault", "bench_sse"];

/// Guests tests/guest-images/build.rs must produce.
const GUESTS: &[&str] = &[
    "args_env",
    "bench_exit",
    "bench_file",
    "bench_hypercalls",
    "bench_sse",
    "bench_touch",
    "boot_info",
    "cpu_features",
    "direct_io",
    "emulated",
    "env_array",
    "exit_code",
    "fdt_mounts",
    "file_ops",
    "gdb_target",
    "hello",
    "hostile",
    "initrd",
    "page_fault",
    "pit",
    "sandbox_race",
    "serial_buffer",
    "serial_byte",
    "smp",
    "spin",
    "stdout_write",
    "triple_fault",
    "virtio_net",
];

/// Register names and mnemonics the KVM here cannot emulate (matched as whole words in objdump
/// output). Any `%xmm`, `%ymm` or `%zmm` operand is caught by the register prefixes.
const FORBIDDEN_REGISTERS: &[&str] = &["%xmm", "%ymm", "%zmm"];
const FORBIDDEN_MNEMONICS: &[&str] = &[
    "xsave",
    "xsaveopt",
    "xsavec",
    "xsaves",
    "xsave64",
    "xrstor",
    "xrstors",
    "xrstor64",
    "fxsave",
    "fxsave64",
    "fxrstor",
    "fxrstor64",
    "xgetbv",
    "xsetbv",
    "ldmxcsr",
    "stmxcsr",
    "vldmxcsr",
    "vstmxcsr",
];

/// Lines of `objdump -d` output that use a register or instruction the emulator lacks.
fn forbidden_lines(disassembly: &str) -> Vec<&str> {
    disassembly
        .lines()
        .filter(|line| {
            // objdump lines: "  addr:\tbytes\tmnemonic operands"; the instruction is the last field.
            let Some(insn) = line.split('\t').nth(2) else {
                return false;
            };
            // Drop objdump's trailing comment ("# 4008c8 <symbol>") and symbol references, whose
            // names could look like mnemonics.
            let insn = insn.split('#').next().unwrap_or_default();
            let insn = insn
                .split('<')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let uses_register = FORBIDDEN_REGISTERS.iter().any(|r| insn.contains(r));
            let uses_mnemonic = insn
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| FORBIDDEN_MNEMONICS.contains(&word));
            uses_register || uses_mnemonic
        })
        .collect()
}

#[test]
fn all_guests_are_built() {
    for name in GUESTS {
        guest(name);
    }
    assert_eq!(
        all_guests().len(),
        GUESTS.len(),
        "the guest directory holds guests this test does not know: {:?}",
        all_guests()
    );
}

#[test]
fn guests_use_general_purpose_registers_only() {
    // The v2/v3 guests of tests/guests/v2/ (tested by tests/guests_v2.rs) run on the same KVM.
    let v2_guests = all_v2_guests();
    assert!(!v2_guests.is_empty(), "no v2/v3 guest was built");
    // So do the position-independent guests of tests/guests/pie/ (tests/tuning.rs).
    let pie_guests = vec![pie_guest("aslr")];
    for path in all_guests().into_iter().chain(v2_guests).chain(pie_guests) {
        let emulation_guest = SIMD_GUESTS
            .iter()
            .any(|name| path.file_name() == Some(std::ffi::OsStr::new(name)));
        let output = Command::new("objdump")
            .arg("-d")
            .arg(&path)
            .output()
            .expect("objdump (binutils) is needed to check the test guests");
        assert!(
            output.status.success(),
            "objdump -d {} failed",
            path.display()
        );
        let disassembly = String::from_utf8_lossy(&output.stdout);
        assert!(
            disassembly.contains("<_start>:"),
            "objdump shows no code for {}",
            path.display()
        );
        let bad = forbidden_lines(&disassembly);
        if emulation_guest {
            // The one guest that uses them on purpose: it must really contain them.
            assert!(
                !bad.is_empty(),
                "{} lost its SSE/XSAVE instructions",
                path.display()
            );
            continue;
        }
        assert!(
            bad.is_empty(),
            "{} uses instructions the KVM here cannot emulate:\n{}",
            path.display(),
            bad.join("\n")
        );
    }
}

#[test]
fn forbidden_instruction_scan_catches_sse_and_xsave() {
    let dirty = "  400000:\t0f 57 c0             \txorps  %xmm0,%xmm0\n\
                 \x20 400003:\t0f ae 27             \txsave  (%rdi)\n\
                 \x20 400006:\t0f 01 d0             \txgetbv\n\
                 \x20 400009:\tc5 fd 6f 07          \tvmovdqa (%rdi),%ymm0\n\
                 \x20 40000d:\t0f ae 10             \tldmxcsr (%rax)\n";
    assert_eq!(forbidden_lines(dirty).len(), 5);
    let clean = "0000000000400000 <_start>:\n\
                 \x20 400000:\t85 f6                \ttest   %esi,%esi\n\
                 \x20 400002:\t48 8b 07             \tmov    (%rdi),%rax   # xsave_area\n\
                 \x20 400005:\tee                   \tout    %al,(%dx)\n\
                 \x20 400006:\te8 00 00 00 00       \tcall   40000b <fxsave_wrapper>\n";
    assert!(forbidden_lines(clean).is_empty());
}

#[test]
fn guests_are_hermit_images() {
    use goblin::elf::{Elf, header, program_header};
    for path in all_guests() {
        let bytes = fs::read(&path).expect("read guest");
        let elf = Elf::parse(&bytes).expect("guest is an ELF file");
        let name = path.display();
        assert_eq!(elf.header.e_type, header::ET_EXEC, "{name}: not ET_EXEC");
        assert_eq!(
            elf.header.e_machine,
            header::EM_X86_64,
            "{name}: not x86_64"
        );
        assert_eq!(elf.header.e_ident[header::EI_OSABI], 0xFF, "{name}: OS ABI");
        assert!(elf.interpreter.is_none(), "{name}: has PT_INTERP");
        assert!(elf.dynamic.is_none(), "{name}: has a dynamic section");
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
            .collect();
        let first = loads.first().expect("a PT_LOAD");
        assert!(first.p_vaddr >= 0x40000, "{name}: linked below 0x40000");
        assert!(
            loads.iter().any(|ph| ph.is_executable()
                && (ph.p_vaddr..ph.p_vaddr + ph.p_memsz).contains(&elf.header.e_entry)),
            "{name}: entry point outside the executable segment"
        );
        let note = elf
            .program_headers
            .iter()
            .find(|ph| ph.p_type == program_header::PT_NOTE)
            .expect("a PT_NOTE");
        let start = usize::try_from(note.p_offset).unwrap();
        let end = start + usize::try_from(note.p_filesz).unwrap();
        // namesz 7, descsz 1, type 0x5A00, "HERMIT\0" + 1 byte padding, version 4 + 3 padding.
        let mut expected = Vec::new();
        for word in [7u32, 1, 0x5A00] {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        expected.extend_from_slice(b"HERMIT\0\0\x04\0\0\0");
        // The segment starts with that note; guests posing as newer kernels add more after it.
        assert_eq!(
            bytes.get(start..start + expected.len()),
            Some(&expected[..]),
            "{name}: entry-version note"
        );
        assert!(end >= start + expected.len(), "{name}: PT_NOTE too short");

        // The reference loader (hermit-entry) and uhyve's own loader must accept it at its link
        // address, as a v1 guest with entry version 4.
        let object = hermit_entry::elf::KernelObject::parse(&bytes)
            .unwrap_or_else(|e| panic!("{name}: hermit-entry rejects it: {e}"));
        assert_eq!(object.start_addr(), Some(first.p_vaddr), "{name}");
        let image = uhyve::loader::KernelImage::parse(bytes.clone())
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader rejects it: {e}"));
        assert_eq!(image.fixed_load_address(), Some(0x400000), "{name}");
        assert_eq!(image.entry_version(), 4, "{name}");
        assert_eq!(image.interface_version(), 1, "{name}");
        let footprint = usize::try_from(image.footprint()).unwrap();
        let mut memory = vec![0u8; footprint];
        let loaded = image
            .load(0x400000, &mut memory)
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader cannot load it: {e}"));
        assert_eq!(loaded.entry_point, elf.header.e_entry, "{name}");
        assert_eq!(loaded.tls, None, "{name}: unexpected TLS segment");
    }
}

// ---- Output ----

#[test]
fn hello_prints_greeting_and_arguments() {
    if !kvm_or_skip("hello_prints_greeting_and_arguments") {
        return;
    }
    let uhyve = Uhyve::guest("hello").args(["first", "second arg"]);
    let kernel = uhyve.kernel_path().display().to_string();
    let run = uhyve.run();
    run.assert_success();
    assert_eq!(
        run.stdout,
        format!(
            "Hello from a uhyve demo guest!\nargv[0] = {kernel}\nargv[1] = first\n\
             argv[2] = second arg\n"
        ),
        "{}",
        run.report()
    );
}

#[test]
fn option_like_guest_arguments_reach_the_guest() {
    if !kvm_or_skip("option_like_guest_arguments_reach_the_guest") {
        return;
    }
    // Everything after KERNEL belongs to the guest, even if it looks like a uhyve option.
    let run = Uhyve::guest("hello").args(["-v", "--x", "-m", "1G"]).run();
    run.assert_success()
        .assert_stdout_contains("argv[1] = -v\nargv[2] = --x\nargv[3] = -m\nargv[4] = 1G\n");
}

#[test]
fn serial_byte_port_reaches_stdout() {
    if !kvm_or_skip("serial_byte_port_reaches_stdout") {
        return;
    }
    let run = Uhyve::guest("serial_byte").run();
    run.assert_success();
    assert_eq!(run.stdout, "serial byte output works\n", "{}", run.report());
}

#[test]
fn serial_buffer_reaches_stdout() {
    if !kvm_or_skip("serial_buffer_reaches_stdout") {
        return;
    }
    let run = Uhyve::guest("serial_buffer").run();
    run.assert_success();
    let mut expected = String::from("serial buffer output works\n");
    for l in 0..128u32 {
        for c in 0..63u32 {
            let digit = u8::try_from((l + c) % 64).unwrap();
            expected.push(char::from(b'0' + digit));
        }
        expected.push('\n');
    }
    assert!(run.stdout == expected, "{}", run.report());
}

#[test]
fn file_write_to_fd_1_and_2_reaches_stdout() {
    if !kvm_or_skip("file_write_to_fd_1_and_2_reaches_stdout") {
        return;
    }
    let run = Uhyve::guest("stdout_write").run();
    run.assert_all_ok()
        .assert_stdout_contains("written to fd 1\n")
        .assert_stdout_contains("written to fd 2\n");
}

#[test]
fn output_option_redirects_to_a_file() {
    if !kvm_or_skip("output_option_redirects_to_a_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console.txt");
    let run = Uhyve::guest("serial_byte")
        .opts([OsStr::new("-o"), file.as_os_str()])
        .run();
    run.assert_success()
        .assert_stdout_lacks("serial byte output works");
    let written = fs::read_to_string(&file).expect("the -o file was created");
    assert_eq!(written, "serial byte output works\n");
}

#[test]
fn output_option_none_discards_output() {
    if !kvm_or_skip("output_option_none_discards_output") {
        return;
    }
    let run = Uhyve::guest("hello").opts(["-o", "none"]).run();
    run.assert_success()
        .assert_stdout_lacks("Hello from a uhyve demo guest!");
    // The same guest without -o does print (so the run above really ran it).
    Uhyve::guest("hello")
        .run()
        .assert_success()
        .assert_stdout_contains("Hello from a uhyve demo guest!");
}

#[test]
fn stats_option_keeps_the_run_working() {
    if !kvm_or_skip("stats_option_keeps_the_run_working") {
        return;
    }
    let run = Uhyve::guest("serial_byte").opts(["--stats"]).run();
    run.assert_success()
        .assert_stdout_contains("serial byte output works\n");
    // Statistics follow the guest's output on stdout, as upstream prints them: a table row
    // `  KIND:  total  cpu0` per exit kind; one SerialWriteByte exit per byte and the final Exit.
    assert!(
        run.stdout
            .starts_with("serial byte output works\nRun statistics:\n"),
        "{}",
        run.report()
    );
    let count = |kind: &str| {
        run.stdout
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|words| words.len() == 3 && words[0] == format!("{kind}:"))
            .filter(|words| words[1] == words[2])
            .and_then(|words| words[1].parse::<usize>().ok())
    };
    let line = "serial byte output works\n";
    assert_eq!(
        count("SerialWriteByte"),
        Some(line.len()),
        "{}",
        run.report()
    );
    assert_eq!(count("Exit"), Some(1), "{}", run.report());
}

#[test]
fn options_come_from_upstream_environment_variables() {
    if !kvm_or_skip("options_come_from_upstream_environment_variables") {
        return;
    }
    let run = Uhyve::guest("boot_info")
        .env("HERMIT_MEMORY_SIZE", "32M")
        .env("HERMIT_STATS", "1")
        .run();
    run.assert_all_ok();
    assert_eq!(
        boot_info_field(&run.stdout, "phys_addr_end"),
        Some("0x2000000"),
        "{}",
        run.report()
    );
    // HERMIT_STATS=1 printed the statistics, on standard output as upstream.
    assert!(
        run.stdout.contains("\nRun statistics:\nVM exits:"),
        "{}",
        run.report()
    );
}

// ---- Exit status ----

#[test]
fn triple_fault_is_reported_as_a_crash() {
    if !kvm_or_skip("triple_fault_is_reported_as_a_crash") {
        return;
    }
    let run = Uhyve::guest("triple_fault").run();
    run.assert_no_host_crash()
        .assert_stdout_contains("about to triple fault\n")
        .assert_stdout_lacks("survived");
    assert_ne!(
        run.code(),
        0,
        "a triple fault must not look like success\n{}",
        run.report()
    );
}

// ---- Arguments, environment, boot info ----

#[test]
fn the_host_environment_reaches_the_guest_only_when_asked_for() {
    if !kvm_or_skip("the_host_environment_reaches_the_guest_only_when_asked_for") {
        return;
    }
    let uhyve = || {
        Uhyve::guest("args_env")
            .env("UHYVE_TEST_KEPT", "from host")
            .env("UHYVE_TEST_OVERRIDDEN", "from host")
    };
    // As upstream: no host environment by default, a host's secrets stay on the host.
    let run = uhyve().opts(["-e", "UHYVE_TEST_ADDED=new"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("envc=1\nenv=UHYVE_TEST_ADDED=new\n")
        .assert_stdout_lacks("from host");
    // No environment is announced as one empty item (see `environment_arrays_old_kernels_leave_open_are_closed`).
    let run = uhyve().run();
    run.assert_all_ok().assert_stdout_contains("envc=1\nenv=\n");
    // `-e host` passes it; `-e KEY=VALUE` entries apply on top, wherever `host` stands.
    let run = uhyve()
        .env_clear()
        .env("UHYVE_TEST_KEPT", "from host")
        .env("UHYVE_TEST_OVERRIDDEN", "from host")
        .opts([
            "-e",
            "UHYVE_TEST_OVERRIDDEN=from cli",
            "-e",
            "host",
            "-e",
            "UHYVE_TEST_ADDED=new",
        ])
        .run();
    run.assert_all_ok()
        .assert_stdout_contains("env=UHYVE_TEST_KEPT=from host\n")
        .assert_stdout_contains("env=UHYVE_TEST_OVERRIDDEN=from cli\n")
        .assert_stdout_lacks("env=UHYVE_TEST_OVERRIDDEN=from host\n")
        .assert_stdout_contains("env=UHYVE_TEST_ADDED=new\n");
}

/// Hermit kernels up to 0.8 never write the null that ends their environment array; uhyve finds the
/// array by its `Vec` header and writes it, but only when exactly one array matches.
#[test]
fn environment_arrays_old_kernels_leave_open_are_closed() {
    if !kvm_or_skip("environment_arrays_old_kernels_leave_open_are_closed") {
        return;
    }
    for env in [
        &[][..],
        &["-e", "A=1"][..],
        &["-e", "A=1", "-e", "B=2", "-e", "C=3"][..],
    ] {
        let run = Uhyve::guest("env_array").opts(env).run();
        run.assert_all_ok()
            .assert_stdout_contains("spare slot nulled: ok\n")
            .assert_stdout_contains("other vec left alone: ok\n");
    }
    // No environment still gives the guest one (empty) item to find the array by.
    Uhyve::guest("env_array")
        .run()
        .assert_all_ok()
        .assert_stdout_contains("envc=1\n");
    // Two arrays that both match: neither is written.
    Uhyve::guest("env_array")
        .opts(["-e", "A=1"])
        .args(["ambiguous"])
        .run()
        .assert_all_ok()
        .assert_stdout_contains("two matching arrays: first left alone: ok\n")
        .assert_stdout_contains("two matching arrays: second left alone: ok\n");
}

#[test]
fn more_than_128_arguments_are_capped() {
    if !kvm_or_skip("more_than_128_arguments_are_capped") {
        return;
    }
    let args: Vec<String> = (0..200).map(|i| format!("arg{i}")).collect();
    let run = Uhyve::guest("args_env").args(&args).run();
    run.assert_all_ok()
        .assert_stdout_contains("argc=128\n")
        .assert_stdout_contains("arg=arg126\n")
        .assert_stdout_lacks("arg=arg127\n");
}

/// The `name=value` lines the boot_info guest printed.
fn boot_info_field<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

/// Runs the boot_info guest with `options` and checks the fields that do not depend on them.
fn boot_info_run(options: &[&str]) -> common::Run {
    let run = Uhyve::guest("boot_info").opts(options).run();
    run.assert_all_ok();
    let field = |name| boot_info_field(&run.stdout, name);
    assert_eq!(field("phys_addr_start"), Some("0x0"), "{}", run.report());
    assert_eq!(field("serial_port_base"), Some("0x800"), "{}", run.report());
    assert_eq!(field("platform"), Some("0x1"), "{}", run.report());
    assert_eq!(
        field("kernel_image_addr_start"),
        Some("0x400000"),
        "{}",
        run.report()
    );
    run
}

#[test]
fn boot_info_reports_the_memory_size() {
    if !kvm_or_skip("boot_info_reports_the_memory_size") {
        return;
    }
    for (options, ram_end) in [
        (&[][..], "0x4000000"),
        (&["-m", "32M"][..], "0x2000000"),
        (&["--memory-size", "128M"][..], "0x8000000"),
    ] {
        let run = boot_info_run(options);
        let field = |name| boot_info_field(&run.stdout, name);
        assert_eq!(field("phys_addr_end"), Some(ram_end), "{}", run.report());
        assert_eq!(field("num_cpus"), Some("0x1"), "{}", run.report());
    }
}

#[test]
fn boot_info_reports_the_cpu_count() {
    if !kvm_or_skip("boot_info_reports_the_cpu_count") {
        return;
    }
    let run = boot_info_run(&["--cpu-count", "1"]);
    let num_cpus = boot_info_field(&run.stdout, "num_cpus");
    assert_eq!(num_cpus, Some("0x1"), "{}", run.report());
}

#[test]
fn boot_info_reports_tsc_frequency_and_device_tree() {
    if !kvm_or_skip("boot_info_reports_tsc_frequency_and_device_tree") {
        return;
    }
    let run = boot_info_run(&[]);
    let cpu_freq = boot_info_field(&run.stdout, "cpu_freq");
    assert!(
        cpu_freq.is_some_and(|khz| khz != "0x0"),
        "the TSC frequency from KVM must reach the guest\n{}",
        run.report()
    );
    let device_tree = boot_info_field(&run.stdout, "device_tree");
    assert_eq!(device_tree, Some("0x3000"), "{}", run.report());
    run.assert_stdout_contains("fdt magic: ok");
}

// ---- Files ----

// ---- Hostile guests: uhyve must survive every one of them ----

#[test]
fn hostile_write_params_outside_ram_stop_the_vm() {
    if !kvm_or_skip("hostile_write_params_outside_ram_stop_the_vm") {
        return;
    }
    for attack in ["write_param_outside_ram", "write_param_straddles_end"] {
        let run = Uhyve::guest("hostile").args([attack]).run();
        run.assert_stopped_by_host(42)
            .assert_stderr_mentions("write")
            .assert_stdout_lacks("survived");
    }
}

#[test]
fn hostile_string_port_io_is_served_per_element_or_stops_the_vm() {
    if !kvm_or_skip("hostile_string_port_io_is_served_per_element_or_stops_the_vm") {
        return;
    }
    // KVM either reports `rep outs`/`rep ins` one element per exit (this machine's software
    // emulator does), which uhyve serves like single accesses, or as one exit with a count, which
    // uhyve refuses with a message rather than mis-reading the elements as one wide access.
    for (attack, per_element_output) in [("rep_outs", "AB\nrep_outs: ok"), ("rep_ins", ": ok")] {
        let run = Uhyve::guest("hostile").args([attack]).run();
        if run.code() == 0 {
            run.assert_all_ok()
                .assert_stdout_contains(per_element_output);
        } else {
            run.assert_stopped_by_host(0)
                .assert_stderr_mentions("string port I/O");
        }
    }
}

#[test]
fn an_mmio_store_crash_names_the_store_not_the_next_instruction() {
    if !kvm_or_skip("an_mmio_store_crash_names_the_store_not_the_next_instruction") {
        return;
    }
    // KVM reports an MMIO write with RIP already past the store.
    let run = Uhyve::guest("hostile").args(["mmio_store"]).run();
    run.assert_stopped_by_host(42);
    let at = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("store at "))
        .expect("the guest prints the store's address");
    let at = u64::from_str_radix(at.trim_start_matches("0x"), 16).unwrap();
    run.assert_stderr_mentions("write of 4 bytes (0x1234)")
        .assert_stderr_mentions(&format!(
            "RIP {at:#x}, instruction `mov dword ptr [rax],1234h` (c7 00 34 12 00 00)"
        ));
}

#[test]
fn hostile_exit_params_outside_ram_stop_the_vm() {
    if !kvm_or_skip("hostile_exit_params_outside_ram_stop_the_vm") {
        return;
    }
    let run = Uhyve::guest("hostile")
        .args(["exit_param_outside_ram"])
        .run();
    run.assert_stopped_by_host(42)
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
        .assert_stdout_contains("read still works: ok\n");
}

#[test]
fn hostile_read_through_a_single_file_mapping() {
    if !kvm_or_skip("hostile_read_through_a_single_file_mapping") {
        return;
    }
    let sandbox = Sandbox::new();
    let mapping = format!("{}:input.txt", sandbox.path("outside/secret").display());
    let run = Uhyve::guest("hostile")
        .opts(["--file-mapping", mapping.as_str()])
        .args(["read_bad_buffers", "input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("read still works: ok\n");
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_serial_buffers_do_not_crash() {
    if !kvm_or_skip("hostile_serial_buffers_do_not_crash") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["serial_bad_buffers"]).run();
    run.assert_no_host_crash();
    if run.code() != 42 {
        run.assert_stopped_by_host(42);
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
        "data/../../../../../../etc/passwd",
        "/etc/passwd",
        "etc/passwd",
        "../outside/secret",
        "data/../outside/secret",
        "data/link/secret",
        "/data/link/secret",
        "data/link_file",
        "data/link/../outside/secret",
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
fn hostile_creates_stay_inside_the_sandbox() {
    if !kvm_or_skip("hostile_creates_stay_inside_the_sandbox") {
        return;
    }
    let paths = [
        "../escaped",
        "data/../escaped",
        "data/../../escaped",
        "data/../outside/created",
        "data/link/created",
        "data/link_file",
    ];
    let sandbox = Sandbox::new();
    let run = sandbox
        .uhyve("hostile")
        .args(["create_anything"])
        .args(paths)
        .run();
    run.assert_no_host_crash().assert_success();
    for path in paths {
        run.assert_stdout_contains(&format!("create {path}: "));
    }
    sandbox.assert_outside_untouched();
    // Whatever was created inside the mapping must not be a way out either.
    assert!(sandbox.path("mnt/link").is_symlink());
    assert!(sandbox.path("mnt/link_file").is_symlink());
}

#[test]
fn hostile_unlinks_cannot_remove_outside_files() {
    if !kvm_or_skip("hostile_unlinks_cannot_remove_outside_files") {
        return;
    }
    let paths = [
        "data/link/secret",
        "data/../outside/secret",
        "../outside/secret",
        "data/link_file",
    ];
    let sandbox = Sandbox::new();
    let run = sandbox
        .uhyve("hostile")
        .args(["unlink_anything"])
        .args(paths)
        .run();
    run.assert_no_host_crash().assert_success();
    for path in paths {
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
}

#[test]
fn closing_stdio_is_ignored() {
    if !kvm_or_skip("closing_stdio_is_ignored") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["close_stdio"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("fd 1 still works\n");
}

#[test]
fn unknown_ports_are_ignored() {
    if !kvm_or_skip("unknown_ports_are_ignored") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["unknown_ports"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("unknown ports: ok\n");
}

#[test]
fn hostile_cmdval_pointers_do_not_crash() {
    if !kvm_or_skip("hostile_cmdval_pointers_do_not_crash") {
        return;
    }
    for attack in ["cmdval_outside_ram", "cmdval_bad_slots"] {
        let run = Uhyve::guest("hostile").args([attack]).run();
        run.assert_no_host_crash();
        if run.code() != 42 {
            run.assert_stopped_by_host(42);
        }
    }
}

#[test]
fn kernels_from_0_12_find_every_mapped_directory_in_the_device_tree() {
    if !kvm_or_skip("kernels_from_0_12_find_every_mapped_directory_in_the_device_tree") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    fs::write(data.path().join("from-host.txt"), "data directory\n").unwrap();
    fs::write(config.path().join("from-host.txt"), "config directory\n").unwrap();
    let run = Uhyve::guest("fdt_mounts")
        .opts([
            "--file-mapping",
            &format!("{}:/data", data.path().display()),
            "--file-mapping",
            &format!("{}:/etc/app", config.path().display()),
        ])
        .run();
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("mount /data: data directory\n")
        .assert_stdout_contains("mount /etc/app: config directory\n")
        .assert_stdout_lacks("-mount")
        .assert_stdout_lacks("cannot read");
    // Without mappings there is no node (such a kernel then mounts /root by itself).
    let run = Uhyve::guest("fdt_mounts").run();
    run.assert_stdout_contains("no /uhyve,mounts node");
}

#[test]
fn stores_to_read_only_pages_fault_whoever_executes_them() {
    if !kvm_or_skip("stores_to_read_only_pages_fault_whoever_executes_them") {
        return;
    }
    let run = Uhyve::guest("page_fault").opts(["--stats"]).run();
    run.assert_no_host_crash().assert_all_ok();
    // On a KVM that cannot execute movhps/xsave, the fallback injected those faults.
    if run.stdout.contains("Emulated in user space") && run.stdout.contains("movhps") {
        assert!(run.stdout.contains("\n  #PF: "), "{}", run.report());
    }
}

#[test]
fn instructions_the_hypervisor_lacks_are_emulated() {
    if !kvm_or_skip("instructions_the_hypervisor_lacks_are_emulated") {
        return;
    }
    let run = Uhyve::guest(EMULATION_GUEST).opts(["--stats"]).run();
    run.assert_all_ok();
    // Without the fallback, a KVM that lacks these instructions stops the guest with a report.
    let run = Uhyve::guest(EMULATION_GUEST)
        .opts(["--no-emulation-fallback"])
        .run();
    if run.code() != 0 {
        run.assert_no_host_crash()
            .assert_stderr_mentions("emulation failure");
    }
}

/// Loops of SSE instructions (each one emulated on a KVM that cannot execute SSE) keep their
/// values from one instruction to the next: the float loop must end with the value it started
/// with, the memchr loop must never find its byte. A fallback that lost XMM state between
/// instructions (as writing it back with KVM_SET_FPU did, in about half the runs) fails this.
#[test]
fn emulated_sse_loops_keep_their_values() {
    if !kvm_or_skip("emulated_sse_loops_keep_their_values") {
        return;
    }
    for _ in 0..4 {
        for kernel in ["float", "memchr"] {
            let run = Uhyve::guest("bench_sse").args([kernel, "300"]).run();
            run.assert_code(0);
        }
    }
}

/// `usable=` of `feature` in the cpu_features guest's output.
fn feature_usable(stdout: &str, feature: &str) -> Option<bool> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&format!("feature {feature}:")))?;
    Some(line.ends_with("usable=1"))
}

#[test]
fn guests_detect_only_extensions_that_can_run() {
    if !kvm_or_skip("guests_detect_only_extensions_that_can_run") {
        return;
    }
    let run = Uhyve::guest("cpu_features").opts(["-v"]).run();
    run.assert_no_host_crash().assert_success();
    assert_eq!(
        feature_usable(&run.stdout, "sse2"),
        Some(true),
        "{}",
        run.report()
    );
    let fallback = run
        .stderr
        .contains("cannot execute SSE instructions itself");
    if !fallback {
        // A KVM that runs SIMD code natively: the guest sees the host's features unchanged.
        assert!(run.stdout.contains("xcr0 written="), "{}", run.report());
        let line = run.stdout.lines().find(|l| l.starts_with("xcr0 ")).unwrap();
        let (written, read) = line.split_once(" read=").unwrap();
        assert_eq!(
            written.trim_start_matches("xcr0 written="),
            read,
            "{}",
            run.report()
        );
        return;
    }
    // The SIMD instructions end in uhyve's fallback: nothing it cannot execute may look usable,
    // even where the hypervisor shows the host's CPUID leaves to the guest (KVM-PVM does).
    for feature in ["avx", "fma", "f16c", "avx2", "avx512f", "lzcnt", "sse4a"] {
        assert_eq!(
            feature_usable(&run.stdout, feature),
            Some(false),
            "{feature} must not be usable\n{}",
            run.report()
        );
    }
    assert!(
        run.stdout.contains(" read=0x3\n"),
        "XCR0 reads back as x87 | SSE\n{}",
        run.report()
    );
}
