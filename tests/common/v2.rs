//! What the tests of the v2/v3 guests share across architectures (`tests/guests_v2.rs` on x86_64,
//! `tests/aarch64_kvm.rs` on aarch64, which run the same guest sources): the input file of the
//! hostile file tests, the 80 KiB line block of `v3_console`, the directory `v3_files` and
//! `v3_hostile` list and the check of their `entry <name> <d_type>` lines, and the hypercalls
//! `v3_hostile params` aims at bad addresses.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::Run;
use super::sandbox::{Sandbox, entries};

/// The 32-byte file the hostile file tests read.
pub const INPUT: &str = "0123456789abcdefghijklmnopqrstuv";

/// The file sandbox with `mnt/input.txt` ([`INPUT`]).
pub fn sandbox() -> Sandbox {
    Sandbox::new().with_file("mnt/input.txt", INPUT)
}

/// The 80 KiB v3_console writes in one SerialWriteBuffer call.
pub fn big_buffer() -> String {
    (0..1280)
        .map(|k| format!("{:.<63}\n", format!("big {k:04} ")))
        .collect()
}

/// The names of the `entry <name> <d_type>` lines in `text`, with how often each came.
pub fn listed_names(text: &str) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for line in text.lines() {
        if let Some((name, _d_type)) = line
            .strip_prefix("entry ")
            .and_then(|rest| rest.rsplit_once(' '))
        {
            *names.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    names
}

/// Asserts that `listing` names every entry of `dir`, `.` and `..` exactly once, and nothing else.
pub fn assert_lists_exactly(listing: &str, dir: &Path, run: &Run) {
    let mut expected: BTreeMap<String, usize> =
        entries(dir).into_iter().map(|name| (name, 1)).collect();
    expected.insert(".".into(), 1);
    expected.insert("..".into(), 1);
    assert_eq!(
        listed_names(listing),
        expected,
        "Getdents did not list every entry exactly once\n{}",
        run.report()
    );
}

/// Names of assorted lengths (records of 24 to 64 bytes) for a listed directory.
pub const LIST_NAMES: &[&str] = &[
    "a",
    "bb",
    "ccc",
    "file-with-a-longer-name.txt",
    "forty-characters-long-name-0123456789abc",
    "e.txt",
    "f_f",
    "g-1",
    "g-2",
    "g-3",
    "h",
    "space name",
];

/// Creates `dir` with a file per [`LIST_NAMES`] entry and a subdirectory `sub`.
pub fn make_listed_dir(dir: &Path) {
    fs::create_dir(dir).unwrap();
    for name in LIST_NAMES {
        fs::write(dir.join(name), name).unwrap();
    }
    fs::create_dir(dir.join("sub")).unwrap();
}

/// The hypercalls `v3_hostile params` can aim at a bad address, and their names in uhyve's
/// messages.
pub const PARAM_CALLS: &[(&str, &str)] = &[
    ("serial_write", "SerialWriteBuffer"),
    ("serial_read", "SerialReadBuffer"),
    ("write", "FileWrite"),
    ("open", "FileOpen"),
    ("close", "FileClose"),
    ("read", "FileRead"),
    ("lseek", "FileLseek"),
    ("unlink", "FileUnlink"),
    ("getdents", "Getdents"),
    ("stat", "FileStat"),
    ("fstat", "FileFstat"),
    ("mkdir", "Mkdir"),
];
