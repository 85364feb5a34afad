//! The tests of the v1 guests that are built from the same C sources for x86_64 and aarch64
//! (`exit_code`, `args_env`, `file_ops`, and the buffer and path attacks of `hostile`), shared by
//! the x86_64 suite (`tests/guests.rs`) and the aarch64 one (`tests/aarch64_kvm.rs`): each of
//! those crates includes this module, so the same test runs on both architectures' KVM.

use std::fs;

use crate::common::sandbox::Sandbox;
use crate::common::{Uhyve, kvm_or_skip};

impl Sandbox {
    /// The guest `name` with `mnt/` mapped as `data` (a relative guest path), running in `cwd/`.
    pub(crate) fn uhyve(&self, name: &str) -> Uhyve {
        self.mapped(Uhyve::guest(name), "data")
    }
}

#[test]
fn exit_code_becomes_the_process_status() {
    if !kvm_or_skip("exit_code_becomes_the_process_status") {
        return;
    }
    for (guest_code, status) in [
        ("0", 0),
        ("1", 1),
        ("3", 3),
        ("42", 42),
        ("255", 255),
        ("-1", 255),
        ("256", 0),
    ] {
        let run = Uhyve::guest("exit_code").args([guest_code]).run();
        run.assert_code(status);
        assert_eq!(run.stdout, "", "{}", run.report());
    }
}

#[test]
fn arguments_and_environment_reach_the_guest() {
    if !kvm_or_skip("arguments_and_environment_reach_the_guest") {
        return;
    }
    let uhyve = Uhyve::guest("args_env")
        .opts(["-e", "ALPHA=1", "-e", "BETA=two words"])
        .args(["x", "with space", "", "ünïcode"]);
    let kernel = uhyve.kernel_path().display().to_string();
    let run = uhyve.run();
    run.assert_all_ok();
    assert_eq!(
        run.stdout,
        format!(
            "argc=5\narg={kernel}\narg=x\narg=with space\narg=\narg=ünïcode\n\
             envc=2\nenv=ALPHA=1\nenv=BETA=two words\nsizes respected: ok\n"
        ),
        "{}",
        run.report()
    );
}

#[test]
fn file_hypercalls_round_trip() {
    if !kvm_or_skip("file_hypercalls_round_trip") {
        return;
    }
    for path in ["data/roundtrip.txt", "/data/roundtrip.txt"] {
        let sandbox = Sandbox::new();
        let run = sandbox.uhyve("file_ops").args([path]).run();
        run.assert_all_ok()
            .assert_stdout_contains("file_ops: all ok\n");
        assert!(
            !sandbox.path("mnt/roundtrip.txt").exists(),
            "the guest unlinked the file, but it is still on the host"
        );
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn file_written_by_the_guest_lands_on_the_host() {
    if !kvm_or_skip("file_written_by_the_guest_lands_on_the_host") {
        return;
    }
    let sandbox = Sandbox::new();
    let run = sandbox
        .uhyve("file_ops")
        .args(["data/kept.txt", "keep"])
        .run();
    run.assert_all_ok();
    let content = fs::read_to_string(sandbox.path("mnt/kept.txt")).expect("file on host");
    assert_eq!(content, "hello file\n");
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_write_buffers_are_refused() {
    if !kvm_or_skip("hostile_write_buffers_are_refused") {
        return;
    }
    let run = Uhyve::guest("hostile").args(["write_bad_buffers"]).run();
    // Either the guest learns that nothing was written, or uhyve stops it with a message.
    run.assert_no_host_crash().assert_stdout_lacks("FAIL");
    if run.code() == 0 {
        run.assert_all_ok();
    }
}

#[test]
fn hostile_unterminated_paths_get_errors() {
    if !kvm_or_skip("hostile_unterminated_paths_get_errors") {
        return;
    }
    let sandbox = Sandbox::new();
    let run = sandbox.uhyve("hostile").args(["open_unterminated"]).run();
    run.assert_no_host_crash()
        .assert_all_ok()
        .assert_stdout_contains("open non-utf8 path: ok\n");
    sandbox.assert_outside_untouched();
}
