//! The race a check-then-use file sandbox loses: while the guest opens, creates and unlinks files
//! through `/data/sub/…`, a host thread keeps exchanging the mapped directory `sub` with a symlink
//! to a directory outside the mapping (`renameat2(RENAME_EXCHANGE)`, atomic). Not one open may
//! read the outside file, no file may appear outside, and no outside file may disappear.
//!
//! `UHYVE_RACE_ROUNDS` sets the number of rounds (default 20 000; each round opens, creates and
//! unlinks once).

#![cfg(target_os = "linux")]

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{CWD, RenameFlags, renameat_with};
use uhyve::isolation::FileMap;
use uhyve_interface as abi;

/// What the guest achieved outside the mapping.
#[derive(Debug, Default, PartialEq, Eq)]
struct Escapes {
    reads: u64,
    creates: u64,
    unlinks: u64,
}

fn rounds() -> u64 {
    std::env::var("UHYVE_RACE_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(20_000)
}

/// Builds `mapped/{sub/f, link -> outside}` and `outside/{f, victim}`.
fn tree(mapped: &Path, outside: &Path) {
    fs::create_dir(mapped.join("sub")).unwrap();
    fs::write(mapped.join("sub/f"), b"inside").unwrap();
    fs::write(outside.join("f"), b"OUTSIDE").unwrap();
    fs::write(outside.join("victim"), b"keep me").unwrap();
    std::os::unix::fs::symlink(outside, mapped.join("link")).unwrap();
}

/// Runs the guest operations while `sub` and `link` are exchanged; counts the escapes.
fn race(map: &FileMap, mapped: &Path, outside: &Path, rounds: u64) -> Escapes {
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (stop, flips) = (Arc::clone(&stop), Arc::clone(&flips));
        let (sub, link) = (mapped.join("sub"), mapped.join("link"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &sub, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                flips.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut escapes = Escapes::default();
    for round in 0..rounds {
        if let Ok(mut file) = map.open("/data/sub/f", abi::O_RDONLY, 0) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            if text == "OUTSIDE" {
                escapes.reads += 1;
            }
        }
        let created = format!("/data/sub/new-{round}");
        let _ = map.open(&created, abi::O_WRONLY | abi::O_CREAT, 0o644);
        let _ = map.unlink("/data/sub/victim");
        if !outside.join("victim").exists() {
            escapes.unlinks += 1;
            fs::write(outside.join("victim"), b"keep me").unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    escapes.creates = fs::read_dir(outside)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("new-")
        })
        .count() as u64;
    eprintln!(
        "{rounds} rounds, {} flips: {escapes:?}",
        flips.load(Ordering::Relaxed)
    );
    escapes
}

#[test]
fn a_directory_swapped_for_a_symlink_never_leads_out_of_the_mapping() {
    let mapped = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    tree(mapped.path(), outside.path());
    let map = FileMap::new(&[format!("{}:/data", mapped.path().display())], None).unwrap();
    let escapes = race(&map, mapped.path(), outside.path(), rounds());
    assert_eq!(escapes, Escapes::default());
    assert_eq!(fs::read(outside.path().join("f")).unwrap(), b"OUTSIDE");
}
