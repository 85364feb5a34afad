//! The file sandbox seen from a real guest on KVM: opens through a mapped directory that a host
//! thread keeps exchanging with a symlink leading out of the mapping never read the outside file,
//! and opening a FIFO in a mapped directory fails at once instead of blocking the vCPU.
#![cfg(kvm)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Uhyve, kvm_or_skip};
use rustix::fs::{CWD, RenameFlags, renameat_with};

/// `mnt/{sub/f, swap -> ../outside}` and `outside/f` in `root`.
fn tree(root: &Path) {
    for dir in ["mnt/sub", "outside", "cwd"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("mnt/sub/f"), "inside").unwrap();
    fs::write(root.join("outside/f"), "OUTSIDE").unwrap();
    std::os::unix::fs::symlink("../outside", root.join("mnt/swap")).unwrap();
}

#[test]
fn guest_opens_never_follow_a_swapped_in_symlink_out_of_the_mapping() {
    if !kvm_or_skip("guest_opens_never_follow_a_swapped_in_symlink_out_of_the_mapping") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tree(root);
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (stop, flips) = (Arc::clone(&stop), Arc::clone(&flips));
        let (sub, swap) = (root.join("mnt/sub"), root.join("mnt/swap"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &sub, CWD, &swap, RenameFlags::EXCHANGE).unwrap();
                flips.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };
    let mapping = format!("{}:/data", root.join("mnt").display());
    let run = Uhyve::guest("sandbox_race")
        .opts(["--file-mapping", mapping.as_str()])
        .args(["race", "/data/sub/f", "3000"])
        .current_dir(root.join("cwd"))
        .timeout(Duration::from_secs(300))
        .run();
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    eprintln!("{} flips\n{}", flips.load(Ordering::Relaxed), run.stdout);
    run.assert_all_ok();
    assert!(run.stdout.contains("inside: "), "{}", run.report());
}

#[test]
fn guest_open_of_a_fifo_fails_promptly() {
    if !kvm_or_skip("guest_open_of_a_fifo_fails_promptly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tree(root);
    let fifo = root.join("mnt/fifo");
    rustix::fs::mknodat(
        CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let mapping = format!("{}:/data", root.join("mnt").display());
    let run = Uhyve::guest("sandbox_race")
        .opts(["--file-mapping", mapping.as_str()])
        .args(["fifo", "/data/fifo"])
        .current_dir(root.join("cwd"))
        .timeout(Duration::from_secs(120))
        .run();
    run.assert_all_ok();
}
