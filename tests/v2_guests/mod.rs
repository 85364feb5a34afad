//! The tests of the hypercall interface v2/v3 guests that run unchanged on x86_64 and aarch64
//! (the same C sources of `tests/guests/v2/`, built for each): the console read at its end, the
//! file calls on a mapped directory, more than 3 GiB of RAM, bad buffers, paths, descriptors and
//! whence values, getdents and stat errors, escapes from the mapping and closed stdio. Shared by
//! the x86_64 suite (`tests/guests_v2.rs`) and the aarch64 one (`tests/aarch64_kvm.rs`): each of
//! those crates includes this module.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::common::sandbox::{Sandbox, entries};
use crate::common::v2::{
    INPUT, LIST_NAMES, assert_lists_exactly, listed_names, make_listed_dir, sandbox,
};
use crate::common::{Uhyve, kvm_or_skip};

impl Sandbox {
    /// The v2/v3 guest `name` with `mnt/` mapped as `/data`, running in `cwd/`.
    pub(crate) fn uhyve_v2(&self, name: &str) -> Uhyve {
        self.mapped(Uhyve::v2_guest(name), "/data")
    }
}

#[test]
fn v3_console_input_at_its_end_from_the_start() {
    if !kvm_or_skip("v3_console_input_at_its_end_from_the_start") {
        return;
    }
    for input in [None, Some(Vec::new())] {
        let uhyve = Uhyve::v2_guest("v3_console");
        let uhyve = match input {
            Some(bytes) => uhyve.stdin(bytes),
            None => uhyve,
        };
        let run = uhyve.run();
        run.assert_all_ok()
            .assert_stdout_contains("stdin: []\n")
            .assert_stdout_contains("end: SerialReadByte al: ok\n")
            .assert_stdout_contains("end: SerialReadBuffer len 0: ok\n")
            .assert_stdout_contains("end: FileRead fd 0: ok\n");
    }
}

#[test]
fn v3_file_hypercalls_on_a_mapped_directory() {
    if !kvm_or_skip("v3_file_hypercalls_on_a_mapped_directory") {
        return;
    }
    let sandbox = sandbox();
    fs::write(sandbox.path("mnt/existing.txt"), "existing content\n").unwrap();
    std::os::unix::fs::symlink("existing.txt", sandbox.path("mnt/to_existing")).unwrap();
    make_listed_dir(&sandbox.path("mnt/list"));
    let run = sandbox.uhyve_v2("v3_files").args(["/data"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("v3_files: all ok\n");

    // The listing of /data/list, in 64-byte pieces, printed before "listed".
    let (list, rest) = run.stdout.split_once("listed ").expect("a listing");
    assert_lists_exactly(list, &sandbox.path("mnt/list"), &run);
    assert!(
        rest.starts_with(&format!("{} entries\n", LIST_NAMES.len() + 3)),
        "{}",
        run.report()
    );
    let (_, made) = rest.split_once("made:\n").expect("made's listing");
    let (made, root) = made.split_once("root:\n").expect("the root's listing");
    assert_lists_exactly(made, &sandbox.path("mnt/made"), &run);
    assert_eq!(
        listed_names(root),
        BTreeMap::from([("data".to_owned(), 1)]),
        "{}",
        run.report()
    );

    // FileStat reported the host's metadata.
    let meta = fs::metadata(sandbox.path("mnt/existing.txt")).unwrap();
    let line = format!(
        "existing.txt: ino={} size=17 mode={} nlink=1 mtime={}.{}\n",
        meta.ino(),
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    run.assert_stdout_contains(&line);

    // What the guest left on the host.
    assert_eq!(
        fs::read_to_string(sandbox.path("mnt/kept.txt")).unwrap(),
        "kept by the v3 guest\n"
    );
    assert_eq!(
        fs::read_to_string(sandbox.path("mnt/made/inner.txt")).unwrap(),
        "inner\n"
    );
    assert!(sandbox.path("mnt/made2").is_dir());
    assert!(
        !sandbox.path("mnt/new.txt").exists(),
        "new.txt was unlinked"
    );
    assert!(!sandbox.path("mnt/nope").exists());
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_guests_use_more_than_3_gib_of_ram() {
    if !kvm_or_skip("v3_guests_use_more_than_3_gib_of_ram") {
        return;
    }
    let sandbox = sandbox();
    let run = sandbox
        .uhyve_v2("v3_memory")
        .opts(["-m", "8G"])
        .args(["/data"])
        .run();
    run.assert_all_ok()
        .assert_stdout_contains("ram: 0x100000000..0x300000000\n")
        .assert_stdout_contains("touched 24 words, the highest at 0x2fffffff8\n")
        .assert_stdout_contains("serial from the end of RAM\n")
        .assert_stdout_contains("v3_memory: all ok\n");
    assert_eq!(
        fs::read_to_string(sandbox.path("mnt/high.txt")).unwrap(),
        "0123456789abcdef"
    );
    assert!(sandbox.path("mnt/high-dir").is_dir());
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_file_buffers_outside_ram_get_efault() {
    if !kvm_or_skip("v3_file_buffers_outside_ram_get_efault") {
        return;
    }
    let sandbox = sandbox();
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["file_buffers", "/data/input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("length of all RAM\n")
        .assert_stdout_contains("read into the last 16 bytes of RAM: ok\n")
        .assert_stdout_contains("RAM-END-WRITE\n");
    // 9 bad buffers with 5 checks each, and 5 more checks.
    assert_eq!(
        run.stdout.matches(": ok\n").count(),
        9 * 5 + 6,
        "{}",
        run.report()
    );
    assert_eq!(
        fs::read_to_string(sandbox.path("mnt/input.txt")).unwrap(),
        INPUT
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_bad_paths_get_errors() {
    if !kvm_or_skip("v3_bad_paths_get_errors") {
        return;
    }
    let sandbox = sandbox();
    let before = entries(&sandbox.path("mnt"));
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["paths", "/data"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("path not UTF-8\n")
        .assert_stdout_contains("stat path ending at the end of RAM: ok\n");
    // Only the directory whose path ended exactly at the end of RAM was made.
    let mut expected = before;
    expected.push("at-end".to_owned());
    expected.sort();
    assert_eq!(entries(&sandbox.path("mnt")), expected, "{}", run.report());
    assert!(sandbox.path("mnt/at-end").is_dir());
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_bad_file_descriptors_get_ebadf() {
    if !kvm_or_skip("v3_bad_file_descriptors_get_ebadf") {
        return;
    }
    let run = Uhyve::v2_guest("v3_hostile").args(["bad_fds"]).run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("fd -2147483648\n")
        .assert_stdout_contains("fd 2147483647\n");
    // 6 fds with 6 calls each, and 3 + 3 x 3 calls on the stdio fds.
    assert_eq!(
        run.stdout.matches(": ok\n").count(),
        6 * 6 + 3 + 3 * 3,
        "{}",
        run.report()
    );
}

#[test]
fn v3_bad_whence_gets_einval() {
    if !kvm_or_skip("v3_bad_whence_gets_einval") {
        return;
    }
    let sandbox = sandbox();
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["bad_whence", "/data/input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("position unchanged: ok\n");
    assert_eq!(run.stdout.matches(": ok\n").count(), 9, "{}", run.report());
}

#[test]
fn v3_getdents_errors_lose_no_entries() {
    if !kvm_or_skip("v3_getdents_errors_lose_no_entries") {
        return;
    }
    let sandbox = sandbox();
    make_listed_dir(&sandbox.path("mnt/list"));
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["getdents", "/data/list", "/data/input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("buffer wrapping around: ok\n")
        .assert_stdout_contains("length 2^64 - 1 near the end of RAM: ok\n")
        .assert_stdout_contains("failing calls between pieces: ok\n")
        .assert_stdout_contains("length 2^64 - 1 with 64 KiB left lists everything: ok\n")
        .assert_stdout_contains("getdents on a file: ok\n");
    assert_lists_exactly(&run.stdout, &sandbox.path("mnt/list"), &run);
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_stat_attributes_outside_ram_get_efault() {
    if !kvm_or_skip("v3_stat_attributes_outside_ram_get_efault") {
        return;
    }
    let sandbox = sandbox();
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["stat_attr", "/data/input.txt"])
        .run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("attr wrapping around\n")
        .assert_stdout_contains("fstat into the last 120 bytes of RAM: ok\n")
        .assert_stdout_contains("attr untouched after EINVAL: ok\n")
        .assert_stdout_contains("missing path, attr outside RAM: ok\n");
    assert_eq!(
        run.stdout.matches(": ok\n").count(),
        1 + 5 * 4 + 6,
        "{}",
        run.report()
    );
}

#[test]
fn v3_paths_cannot_escape_the_mapping() {
    if !kvm_or_skip("v3_paths_cannot_escape_the_mapping") {
        return;
    }
    let sandbox = sandbox();
    let before = entries(&sandbox.path("mnt"));
    let run = sandbox
        .uhyve_v2("v3_hostile")
        .args(["escapes", "/data"])
        .run();
    run.assert_no_host_crash().assert_all_ok();
    for line in [
        "stat /data/link/secret: ok\n",
        "stat /data/link_file: ok\n",
        "mkdir /data/link/made: ok\n",
        "mkdir /data/../../made: ok\n",
        "mkdir /data/link_file/made: ok\n",
        "open a symlinked directory outside: ok\n",
        "lstat of a link to the outside: ok\n",
        "mkdir of an unmapped path: ok\n",
    ] {
        run.assert_stdout_contains(line);
    }
    assert_eq!(entries(&sandbox.path("mnt")), before, "{}", run.report());
    sandbox.assert_outside_untouched();
}

#[test]
fn v3_closing_stdio_is_ignored() {
    if !kvm_or_skip("v3_closing_stdio_is_ignored") {
        return;
    }
    let run = Uhyve::v2_guest("v3_hostile").args(["close_stdio"]).run();
    run.assert_all_ok()
        .assert_stdout_contains("fd 1 still works\n");
}
