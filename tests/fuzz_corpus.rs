//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same entry points the
//! fuzzers use (`uhyve::fuzzing`), so that every corpus file — including the regression inputs of
//! fixed bugs — is a test under `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

/// The files of one target's corpus, sorted (an absent corpus is an empty one).
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("list the corpus").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in uhyve::fuzzing::TARGETS {
        assert!(
            !corpus_files(target).is_empty(),
            "fuzz/corpus/{target} is empty"
        );
    }
}

/// Feeds every corpus file of `target` to its entry point, naming the file if it panics.
fn replay(target: &str) {
    let (_, entry) = uhyve::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    for path in corpus_files(target) {
        let data = fs::read(&path).expect("read a corpus file");
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn loader_corpus() {
    replay("loader");
}

#[test]
fn hypercall_corpus() {
    replay("hypercall");
}

#[test]
fn sandbox_paths_corpus() {
    replay("sandbox_paths");
}

#[test]
fn x86_emulator_corpus() {
    replay("x86_emulator");
}

#[test]
fn aarch64_abort_corpus() {
    replay("aarch64_abort");
}

#[test]
fn boot_encoders_corpus() {
    replay("boot_encoders");
}

#[test]
fn virtio_net_corpus() {
    replay("virtio_net");
}
