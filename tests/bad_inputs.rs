//! Bad files, bad options and an unusable `/dev/kvm`: each must give one clear line on stderr
//! naming the problem and a non-zero exit status — never a panic or a backtrace.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Run, UHYVE_BIN, Uhyve, guest, kvm_or_skip};

/// Asserts the run failed with exactly one stderr line that starts like a uhyve error and
/// contains every needle.
fn assert_one_line_error(run: &Run, needles: &[&str]) {
    assert_ne!(run.code(), 0, "{}", run.report());
    run.assert_no_host_crash();
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr\n{}",
        run.report()
    );
    assert!(lines[0].starts_with("uhyve: error: "), "{}", run.report());
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "stderr lacks {needle:?}\n{}",
            run.report()
        );
    }
}

fn copy_of_hello(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::copy(guest("hello"), &path).unwrap();
    path
}

#[test]
fn missing_image() {
    let run = Uhyve::kernel("/nonexistent/hermit-app").run();
    assert_one_line_error(&run, &["/nonexistent/hermit-app", "No such file"]);
}

#[test]
fn image_that_is_no_regular_file() {
    // A directory, an endless device, and a FIFO nobody writes to: an error, never a hang.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    for path in [dir.path(), Path::new("/dev/zero"), fifo.as_path()] {
        let run = Uhyve::kernel(path).run();
        assert_one_line_error(&run, &[&path.display().to_string(), "not a regular file"]);
    }
}

#[test]
fn output_fifo_without_reader_fails_at_once() {
    // Opening a FIFO for writing would wait for a reader for ever (and swallow the first
    // SIGTERM); uhyve says at once that nobody reads it.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("console");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let run = Uhyve::guest("hello")
        .opts([std::ffi::OsStr::new("-o"), fifo.as_os_str()])
        .timeout(std::time::Duration::from_secs(20))
        .run();
    assert_one_line_error(
        &run,
        &[&fifo.display().to_string(), "FIFO that no process reads"],
    );
}

#[test]
fn non_utf8_option_values_name_the_option() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"64\xffM");
    let run = Uhyve::guest("hello")
        .opts([std::ffi::OsStr::new("-m"), bad])
        .run();
    assert_ne!(run.code(), 0, "{}", run.report());
    run.assert_no_host_crash();
    assert!(run.stderr.contains("--memory-size"), "{}", run.report());
    assert!(run.stderr.contains("not valid UTF-8"), "{}", run.report());
    let run = Uhyve::guest("hello").env("HERMIT_MEMORY_SIZE", "x").run();
    assert!(run.stderr.contains("--memory-size"), "{}", run.report());
}

#[test]
fn image_that_is_not_elf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    fs::write(&path, "just some text, not an executable\n").unwrap();
    let run = Uhyve::kernel(&path).run();
    assert_one_line_error(&run, &["notes.txt", "not an ELF"]);
}

#[test]
fn image_for_another_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of_hello(dir.path(), "arm-app");
    let mut bytes = fs::read(&path).unwrap();
    // e_machine (offset 18) = EM_AARCH64.
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let run = Uhyve::kernel(&path).run();
    assert_one_line_error(&run, &["arm-app", "aarch64"]);
}

#[test]
fn truncated_images() {
    let dir = tempfile::tempdir().unwrap();
    let whole = fs::read(guest("hello")).unwrap();
    for cut in [0, 10, 64, 100, whole.len() / 2, whole.len() - 1] {
        let path = dir.path().join(format!("cut-{cut}"));
        fs::write(&path, &whole[..cut]).unwrap();
        let run = Uhyve::kernel(&path).run();
        assert_one_line_error(&run, &[&format!("cut-{cut}")]);
    }
}

#[test]
fn image_without_hermit_note() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of_hello(dir.path(), "plain-elf");
    let mut bytes = fs::read(&path).unwrap();
    let position = bytes
        .windows(7)
        .position(|w| w == b"HERMIT\0")
        .expect("the test guest carries the HERMIT note");
    bytes[position..position + 6].copy_from_slice(b"XXXXXX");
    fs::write(&path, bytes).unwrap();
    let run = Uhyve::kernel(&path).run();
    assert_one_line_error(&run, &["plain-elf", "entry"]);
}

#[test]
fn memory_sizes_out_of_range() {
    let hello = guest("hello");
    let run = Uhyve::kernel(&hello).opts(["-m", "8M"]).run();
    assert_one_line_error(&run, &["too small", "16 MiB"]);
    let run = Uhyve::kernel(&hello).opts(["-m", "4G"]).run();
    assert_one_line_error(&run, &["too large", "3 GiB"]);
    let run = Uhyve::kernel(&hello).opts(["-m", "33M"]).run();
    assert_one_line_error(&run, &["2 MiB"]);
    let run = Uhyve::kernel(&hello).opts(["-m", "99999999999T"]).run();
    assert_ne!(run.code(), 0, "{}", run.report());
    run.assert_no_host_crash();
    assert!(
        run.stderr.contains("too large to represent"),
        "{}",
        run.report()
    );
}

#[test]
fn option_errors_are_reported_by_the_parser() {
    let hello = guest("hello");
    for options in [
        &["-m", "lots"][..],
        &["-c", "0"],
        &["-e", "novalue"],
        &["--bogus"],
    ] {
        let run = Uhyve::kernel(&hello).opts(options.iter().copied()).run();
        assert_eq!(run.code(), 2, "{}", run.report());
        run.assert_no_host_crash();
    }
}

#[test]
fn bad_file_mapping_is_named() {
    let run = Uhyve::kernel(guest("hello"))
        .opts(["--file-mapping", "no-colon-here"])
        .run();
    assert_ne!(run.code(), 0, "{}", run.report());
    run.assert_no_host_crash();
    assert!(run.stderr.contains("no-colon-here"), "{}", run.report());
}

/// Runs `uhyve hello` through a wrapper command, for the `/dev/kvm` tests below.
fn run_wrapped(wrapper: &[&str]) -> Option<std::process::Output> {
    let hello = guest("hello");
    let mut command = Command::new(wrapper[0]);
    command.args(&wrapper[1..]).arg(UHYVE_BIN).arg(hello);
    command.output().ok()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn missing_dev_kvm_is_explained() {
    if !is_root() {
        eprintln!(
            "skipping missing_dev_kvm_is_explained: needs root for a private mount namespace"
        );
        return;
    }
    // A private mount namespace with an empty /dev: /dev/kvm does not exist there.
    let script = "mount -t tmpfs none /dev && exec \"$0\" \"$@\"";
    let Some(output) = run_wrapped(&["unshare", "--mount", "sh", "-c", script]) else {
        eprintln!("skipping missing_dev_kvm_is_explained: unshare is not available");
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("unshare:") || stderr.contains("mount:") {
        eprintln!("skipping missing_dev_kvm_is_explained: cannot make a mount namespace: {stderr}");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/dev/kvm does not exist"), "{stderr}");
}

#[test]
fn dev_kvm_without_permission_is_explained() {
    if !kvm_or_skip("dev_kvm_without_permission_is_explained") {
        return;
    }
    if !is_root() {
        eprintln!(
            "skipping dev_kvm_without_permission_is_explained: needs root to drop privileges"
        );
        return;
    }
    let kvm_mode = fs::metadata("/dev/kvm").map(|m| {
        use std::os::unix::fs::PermissionsExt as _;
        m.permissions().mode()
    });
    if kvm_mode.is_ok_and(|mode| mode & 0o006 != 0) {
        eprintln!("skipping dev_kvm_without_permission_is_explained: /dev/kvm is world-accessible");
        return;
    }
    // The unprivileged user must be able to reach uhyve and the guest, wherever the checkout is:
    // run copies from a world-readable directory.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let uhyve = dir.path().join("uhyve");
    let hello = dir.path().join("hello");
    fs::copy(UHYVE_BIN, &uhyve).unwrap();
    fs::copy(guest("hello"), &hello).unwrap();
    fs::set_permissions(&uhyve, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&hello, fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&uhyve)
        .arg(&hello)
        .output()
        .ok();
    let Some(output) = output else {
        eprintln!("skipping dev_kvm_without_permission_is_explained: setpriv is not available");
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("setpriv:") {
        eprintln!("skipping dev_kvm_without_permission_is_explained: {stderr}");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("kvm group"), "{stderr}");
}

#[test]
fn image_larger_than_guest_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of_hello(dir.path(), "huge-bss");
    let mut bytes = fs::read(&path).unwrap();
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let phoff = word(&bytes, 32) as usize;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    // Grow the memory size (BSS) of the last PT_LOAD segment to 100 MiB.
    let last_load = (0..phnum)
        .rev()
        .map(|i| phoff + i * 56)
        .find(|&ph| u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap()) == 1)
        .expect("the test guest has a PT_LOAD segment");
    bytes[last_load + 40..last_load + 48].copy_from_slice(&(100u64 << 20).to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let run = Uhyve::kernel(&path).opts(["-m", "64M"]).run();
    assert_one_line_error(&run, &["huge-bss", "guest RAM ends at 0x4000000"]);
}
