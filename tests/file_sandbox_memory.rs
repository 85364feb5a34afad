//! uhyve's memory per guest action stays bounded: a guest creating as many files as it may under
//! unmapped 4 KiB paths of ~2 000 one-byte components (the worst case for per-component
//! bookkeeping) makes the map grow by a few MiB, not by gigabytes. Runs in its own process so that
//! the resident set size measures this map alone; it is printed before and after.
//!
//! `UHYVE_MEMORY_FILES` sets how many creations are attempted (default 16 384, the cap on created
//! files).

#![cfg(target_os = "linux")]

use uhyve::isolation::FileMap;
use uhyve_interface as abi;

/// The resident set size of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn deep_created_paths_keep_the_map_small() {
    let attempts: usize = std::env::var("UHYVE_MEMORY_FILES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(16 * 1024);
    let parent = tempfile::tempdir().unwrap();
    let map = FileMap::new(&[], Some(parent.path().to_owned())).unwrap();
    let deep = |i: usize| format!("/{}{i:06}", "a/".repeat(2_040));
    let before = rss_kib();
    let mut created = 0;
    for i in 0..attempts {
        match map.open(&deep(i), abi::O_WRONLY | abi::O_CREAT, 0o600) {
            Ok(_) => created += 1,
            Err(error) => {
                eprintln!("creation {i} refused: {error}");
                break;
            }
        }
    }
    let after = rss_kib();
    eprintln!(
        "{created} files with {}-byte paths: RSS {before} KiB before, {after} KiB after (+{} KiB)",
        deep(0).len(),
        after.saturating_sub(before)
    );
    assert!(created > 0);
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "the map grew by {} KiB",
        after - before
    );
}
