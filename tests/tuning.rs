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
        run.stdout.contains("\nRun statistics:\nVM exits:")
            && run.stdout.contains("\nAll VM exits: "),
        "{}",
        run.report()
    );
}

/// A decimal number the guest printed after `label`.
fn printed_dec(run: &Run, label: &str) -> u64 {
    let line = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("the guest printed no {label:?}\n{}", run.report()));
    line.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{label:?} {line:?}: {e}\n{}", run.report()))
}

#[test]
fn pit_answers_the_guests_timer_ports() {
    if !kvm_or_skip("pit_answers_the_guests_timer_ports") {
        return;
    }
    let run = Uhyve::guest("pit").opts(["--pit", "-v"]).run();
    run.assert_success();
    // The status byte of channel 0 echoes what the guest programmed (access low/high byte,
    // mode 2; bits 6 and 7 are the null-count flag and the output pin).
    let status = printed_hex(&run, "status ");
    assert_eq!(status & 0x3f, 0x34, "{}", run.report());
    // The counter runs: a later reading differs, and both lie below the reload value.
    let counter: Vec<u64> = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("counter "))
        .map(|values| {
            values
                .split(' ')
                .map(|value| u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(counter.len(), 2, "{}", run.report());
    assert_ne!(counter[0], counter[1], "{}", run.report());
    assert!(printed_dec(&run, "reads ") < 1000, "{}", run.report());
    // Port 0x61 is not part of it (no dummy speaker): uhyve's all-ones, as without --pit.
    assert_eq!(printed_hex(&run, "port61 "), 0xff, "{}", run.report());
    assert!(
        run.stderr
            .contains("--pit: KVM emulates an i8254 PIT (ports 0x40-0x43)"),
        "{}",
        run.report()
    );
}

#[test]
fn without_pit_the_timer_ports_read_as_all_ones() {
    if !kvm_or_skip("without_pit_the_timer_ports_read_as_all_ones") {
        return;
    }
    // uhyve's answer to a port no device owns: writes are ignored, reads give all-ones.
    let run = Uhyve::guest("pit").run();
    run.assert_success()
        .assert_stdout_contains("status 0xff\ncounter 0xffff 0xffff\nreads 1000\nport61 0xff\n");
}

/// What `KVM_CHECK_EXTENSION(KVM_CAP_X86_DISABLE_EXITS)` reports for a VM here, asked directly.
fn idle_exits_kvm_offers() -> u32 {
    /// `KVM_CAP_X86_DISABLE_EXITS`.
    const CAP: libc::c_ulong = 143;
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    u32::try_from(vm.check_extension_raw(CAP)).unwrap_or(0)
}

/// The names uhyve gives the `KVM_X86_DISABLE_EXITS_*` bits of `mask`, in their order.
fn idle_exit_names(mask: u32) -> String {
    [
        (1, "MWAIT"),
        (2, "HLT"),
        (4, "PAUSE"),
        (8, "C-state requests"),
    ]
    .iter()
    .filter(|(bit, _)| mask & bit != 0)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(", ")
}

#[test]
fn cpu_pm_disables_what_this_kvm_offers_and_guests_still_run() {
    if !kvm_or_skip("cpu_pm_disables_what_this_kvm_offers_and_guests_still_run") {
        return;
    }
    let offered = idle_exits_kvm_offers() & 0xf;
    // Two vCPUs: both check in, then the secondary parks in a HLT loop while the first exits.
    let run = Uhyve::guest("smp")
        .opts(["--cpu-pm", "-v", "--cpu-count", "2"])
        .args(["checkin"])
        .run();
    run.assert_code(102).assert_stdout_contains("checked in: 2");
    if offered == 0 {
        assert!(
            run.stderr.contains(
                "--cpu-pm has no effect on this host: KVM offers to run none of MWAIT, HLT, \
                 PAUSE or C-state requests without exits"
            ),
            "{}",
            run.report()
        );
    } else {
        let enabled = format!(
            "--cpu-pm: the guest's {} run without exits",
            idle_exit_names(offered)
        );
        assert!(run.stderr.contains(&enabled), "{}", run.report());
        assert!(!run.stderr.contains("no effect"), "{}", run.report());
    }
    // Without the option nothing is said about it.
    let run = Uhyve::guest("smp")
        .opts(["-v", "--cpu-count", "2"])
        .args(["checkin"])
        .run();
    run.assert_code(102);
    assert!(!run.stderr.contains("--cpu-pm"), "{}", run.report());
}

/// A guest RAM size no other mapping of uhyve has: 46 MiB.
const ODD_RAM_MIB: u64 = 46;

/// A running uhyve process with the `spin` guest, killed when dropped.
struct Spinning {
    child: std::process::Child,
}

impl Spinning {
    /// Starts the spin guest with `options` and `ODD_RAM_MIB` of RAM and waits until it spins.
    fn start(options: &[&str]) -> Self {
        use std::io::Read;
        let mut child = std::process::Command::new(common::UHYVE_BIN)
            .args(options)
            .args(["--memory-size", &format!("{ODD_RAM_MIB}M")])
            .arg(common::guest("spin"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start uhyve");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"spinning\n") {
            match stdout.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => {
                    let _ = child.kill();
                    panic!("the guest ended early: {}", String::from_utf8_lossy(&seen));
                }
            }
        }
        Self { child }
    }

    /// The smaps block of the guest-RAM mapping: a read-write `MAP_NORESERVE` mapping (`nr`) of
    /// `ODD_RAM_MIB`, or a little more: with the same flags the host kernel may merge it with an
    /// adjacent `MAP_NORESERVE` mapping, such as a piece of a malloc arena (at most 64 MiB).
    fn guest_ram_smaps(&self) -> String {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id()))
            .expect("read smaps");
        let size_kib = ODD_RAM_MIB * 1024;
        let is_guest_ram = |block: &String| {
            let size = block.lines().find_map(|line| {
                line.strip_prefix("Size:")?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse::<u64>()
                    .ok()
            });
            // Readable, writable and not reserved: not the PROT_NONE rest of a malloc arena.
            let flags: Vec<&str> = block
                .lines()
                .find_map(|line| line.strip_prefix("VmFlags:"))
                .map(|flags| flags.split_whitespace().collect())
                .unwrap_or_default();
            let ram_like = ["rd", "wr", "nr"].iter().all(|flag| flags.contains(flag));
            ram_like && size.is_some_and(|size| (size_kib..size_kib + 64 * 1024).contains(&size))
        };
        // Blocks start with an address range line ("start-end perms …").
        let mut blocks = Vec::new();
        for line in smaps.lines() {
            let header = line
                .split(' ')
                .next()
                .is_some_and(|range| range.contains('-') && !range.ends_with(':'));
            if header || blocks.is_empty() {
                blocks.push(String::new());
            }
            let block = blocks.last_mut().expect("a block");
            block.push_str(line);
            block.push('\n');
        }
        let found: Vec<&String> = blocks.iter().filter(|b| is_guest_ram(b)).collect();
        assert_eq!(
            found.len(),
            1,
            "guest RAM mapping ({size_kib} kB) in:\n{smaps}"
        );
        found[0].clone()
    }

    /// Stops uhyve (SIGTERM) and returns its standard error.
    fn stop(mut self) -> String {
        use std::io::Read;
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `VmFlags` of an smaps block.
fn vm_flags(block: &str) -> Vec<&str> {
    block
        .lines()
        .find_map(|line| line.strip_prefix("VmFlags:"))
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

/// The `THPeligible` value of an smaps block.
fn thp_eligible(block: &str) -> &str {
    block
        .lines()
        .find_map(|line| line.strip_prefix("THPeligible:"))
        .unwrap_or_default()
        .trim()
}

/// The bracketed choice of a sysfs switch such as `always [madvise] never`, or its whole value.
fn host_setting(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or(text.trim())
        .to_owned()
}

#[test]
fn thp_and_ksm_mark_the_guest_ram_mapping() {
    if !kvm_or_skip("thp_and_ksm_mark_the_guest_ram_mapping") {
        return;
    }
    let thp_mode = host_setting("/sys/kernel/mm/transparent_hugepage/enabled");
    let ksm_run = host_setting("/sys/kernel/mm/ksm/run");

    let spinning = Spinning::start(&["--thp", "--ksm"]);
    let block = spinning.guest_ram_smaps();
    let stderr = spinning.stop();
    let flags = vm_flags(&block);
    assert!(flags.contains(&"hg"), "{block}");
    assert!(flags.contains(&"mg"), "{block}");
    // Eligible for huge pages unless the host switched them off.
    let eligible = if thp_mode == "never" { "0" } else { "1" };
    assert!(
        thp_eligible(&block) == eligible,
        "THP mode {thp_mode}:\n{block}"
    );
    // One warning each where the host has the feature switched off, none otherwise.
    assert_eq!(
        stderr.contains("--thp has no effect"),
        thp_mode == "never",
        "{stderr}"
    );
    assert_eq!(
        stderr.contains(
            "--ksm has no effect: guest RAM is marked for kernel samepage merging, \
                         but this host has it switched off"
        ),
        ksm_run == "0",
        "{stderr}"
    );
}

#[test]
fn without_thp_and_ksm_the_guest_ram_mapping_is_plain() {
    if !kvm_or_skip("without_thp_and_ksm_the_guest_ram_mapping_is_plain") {
        return;
    }
    let thp_mode = host_setting("/sys/kernel/mm/transparent_hugepage/enabled");
    let spinning = Spinning::start(&[]);
    let block = spinning.guest_ram_smaps();
    let stderr = spinning.stop();
    let flags = vm_flags(&block);
    assert!(!flags.contains(&"hg"), "{block}");
    assert!(!flags.contains(&"mg"), "{block}");
    // In "madvise" mode only advised memory is eligible; "always" makes every mapping so.
    let eligible = if thp_mode == "always" { "1" } else { "0" };
    assert!(
        thp_eligible(&block) == eligible,
        "THP mode {thp_mode}:\n{block}"
    );
    assert!(!stderr.contains("has no effect"), "{stderr}");
}

/// How the file system of `dir` treats `O_DIRECT`: `None` if it refuses to open a file with it,
/// else whether it takes an unaligned write (tmpfs does on recent kernels, ext4 does not).
fn o_direct_support(dir: &std::path::Path) -> Option<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("o_direct-probe");
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let unaligned = opened.ok().map(|mut file| file.write(b"abc").is_ok());
    let _ = std::fs::remove_file(&path);
    unaligned
}

/// Runs `direct_io` on `guest_path` with `--io-mode mode`, `dir` mapped at `/data` and the
/// private temp directory in `dir` too.
fn direct_io(dir: &std::path::Path, mode: &str, guest_path: &str) -> Run {
    let mapping = format!("{}:/data", dir.display());
    let tempdir = dir.display().to_string();
    let run = Uhyve::guest("direct_io")
        .opts(["--io-mode", mode, "--file-mapping", &mapping])
        .opts(["--tempdir", &tempdir])
        .args([guest_path])
        .run();
    run.assert_no_host_crash().assert_success();
    run
}

#[test]
fn direct_io_takes_whole_blocks_and_fails_cleanly_where_the_file_system_refuses() {
    if !kvm_or_skip("direct_io_takes_whole_blocks_and_fails_cleanly_where_the_file_system_refuses")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(unaligned_ok) = o_direct_support(dir.path()) else {
        panic!(
            "the file system of {} refuses O_DIRECT: run the tests with TMPDIR on one that takes it",
            dir.path().display()
        );
    };
    // A mapped file and one in the private temp directory (an unmapped path).
    for path in ["/data/direct.bin", "/scratch/direct.bin"] {
        let run = direct_io(dir.path(), "host=direct,sync", path);
        run.assert_stdout_contains("aligned write 8192\naligned read 8192\n")
            .assert_stdout_contains("aligned compare: ok\n");
        if unaligned_ok {
            run.assert_stdout_contains("unaligned read 100\nunaligned write 10\n");
        } else {
            // The host's EINVAL reaches the guest as its errno (v1 FileWrite: 0 bytes).
            run.assert_stdout_contains("unaligned read -22\nunaligned write 0\n");
        }
    }
    // The data the guest wrote is on the host.
    let data = std::fs::read(dir.path().join("direct.bin")).unwrap();
    assert_eq!(data.len(), 8192);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 7 + 1) as u8)
    );
}

#[test]
fn without_direct_io_unaligned_transfers_work() {
    if !kvm_or_skip("without_direct_io_unaligned_transfers_work") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for mode in ["default", "host=sync"] {
        direct_io(dir.path(), mode, "/data/plain.bin")
            .assert_stdout_contains("aligned compare: ok\n")
            .assert_stdout_contains("unaligned read 100\nunaligned write 10\n");
    }
}

#[test]
fn file_operations_work_with_direct_and_sync_io_on_tmpfs() {
    if !kvm_or_skip("file_operations_work_with_direct_and_sync_io_on_tmpfs") {
        return;
    }
    // tmpfs takes O_DIRECT for transfers of any size (Linux 6.6 and later).
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) if o_direct_support(dir.path()) == Some(true) => dir,
        _ => {
            eprintln!(
                "SKIPPED file_operations_work_with_direct_and_sync_io_on_tmpfs: no /dev/shm \
                 that takes unaligned O_DIRECT transfers"
            );
            return;
        }
    };
    let mapping = format!("{}:/data", dir.path().display());
    let tempdir = dir.path().display().to_string();
    let run = Uhyve::guest("file_ops")
        .opts(["--io-mode", "host=direct,sync", "--file-mapping", &mapping])
        .opts(["--tempdir", &tempdir])
        .args(["/data/kept.txt", "keep"])
        .run();
    run.assert_all_ok();
    let content = std::fs::read_to_string(dir.path().join("kept.txt")).unwrap();
    assert_eq!(content, "hello file\n");
}
