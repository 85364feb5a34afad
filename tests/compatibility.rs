//! The drop-in promise, checked against its documentation: every row of `docs/compatibility.md`
//! (each upstream option, environment variable and configuration key, and this uhyve's own) is
//! tried on the real binary and must be accepted; the options there and in README.md's options
//! table are exactly the long options of `uhyve --help`; the configuration keys there are exactly
//! the configuration file's schema. No KVM needed: the kernel path does not exist, so uhyve stops
//! before creating a VM.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::UHYVE_BIN;

const COMPATIBILITY: &str = include_str!("../docs/compatibility.md");
const README: &str = include_str!("../README.md");
const MISSING_KERNEL: &str = "/nonexistent/uhyve-compatibility-kernel";

/// One table row: the names in its first cell, the example in its second.
#[derive(Debug)]
struct Row {
    names: Vec<String>,
    example: String,
}

/// The rows of `docs/compatibility.md`'s tables whose first cell is a name in backticks.
fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for line in COMPATIBILITY.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        rows.push(Row {
            names: unquote(cells[1]).split(", ").map(str::to_owned).collect(),
            example: unquote(cells[2]),
        });
    }
    rows
}

fn uhyve(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let config_home = tempfile::tempdir().unwrap();
    let mut command = Command::new(UHYVE_BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERMIT_") {
            command.env_remove(&key);
        }
    }
    command
        .env("XDG_CONFIG_HOME", config_home.path())
        .envs(envs.iter().copied())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run uhyve")
}

/// Asserts that uhyve accepted what it was given: `--help`/`--version` succeed; anything else
/// fails only on the missing kernel (or a host limit such as the sample's CPU affinity), with
/// one error line, never as a usage or configuration error.
fn assert_accepted(what: &str, output: &Output, informational: bool) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("{what}: status {:?}\nstderr:\n{stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{report}");
    if informational {
        assert_eq!(output.status.code(), Some(0), "{report}");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(stderr.contains("uhyve: error: "), "{report}");
    assert!(!stderr.contains("config file"), "{report}");
}

#[test]
fn every_documented_option_variable_and_key_is_accepted() {
    let rows = rows();
    assert!(rows.len() > 40, "too few rows parsed: {rows:?}");
    for row in rows {
        let name = &row.names[0];
        if name.starts_with('-') {
            let mut args: Vec<&str> = row.example.split_whitespace().collect();
            let informational = matches!(args[..], ["--help"] | ["--version"]);
            args.push(MISSING_KERNEL);
            assert_accepted(&row.example, &uhyve(&args, &[]), informational);
        } else if let Some((key, value)) = row.example.split_once('=')
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            assert_eq!(key, name, "{row:?}");
            let output = uhyve(&[MISSING_KERNEL], &[(key, value)]);
            assert_accepted(&row.example, &output, false);
        } else {
            let (section, key) = name.split_once('.').expect("section.key");
            assert!(row.example.starts_with(&format!("{key} =")), "{row:?}");
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("uhyve.toml");
            std::fs::write(&file, format!("[{section}]\n{}\n", row.example)).unwrap();
            let output = uhyve(&["--config", file.to_str().unwrap(), MISSING_KERNEL], &[]);
            assert_accepted(&format!("[{section}] {}", row.example), &output, false);
        }
    }
}

/// `uhyve --help`.
fn help() -> String {
    let output = uhyve(&["--help"], &[]);
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The options of `--help`: each as its first cell would be written, `-o, --output` or
/// `--stats`.
fn help_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words[0].ends_with(',') {
                format!("{} {}", words[0], words[1])
            } else {
                words[0].to_owned()
            }
        })
        .collect()
}

#[test]
fn the_documented_options_are_those_of_help() {
    let help = help();
    let documented: BTreeSet<String> = rows()
        .iter()
        .filter(|row| row.names[0].starts_with('-'))
        .map(|row| row.names.join(", "))
        .collect();
    assert_eq!(
        documented,
        help_options(&help),
        "docs/compatibility.md vs --help"
    );
    for row in rows() {
        let name = &row.names[0];
        if name.starts_with("HERMIT_") || name == "RUST_LOG" {
            assert!(help.contains(name.as_str()), "{name} is not in --help");
        }
    }
}

#[test]
fn the_readme_options_table_is_that_of_help() {
    let table: BTreeSet<String> = README
        .lines()
        .skip_while(|line| *line != "| option | meaning |")
        .skip(2)
        .take_while(|line| line.starts_with("| `"))
        .map(|line| {
            let cell = line.trim_start_matches("| `");
            let cell = &cell[..cell.find('`').unwrap()];
            // `-m, --memory-size SIZE` → `-m, --memory-size`.
            let words: Vec<&str> = cell.split_whitespace().collect();
            if words[0].ends_with(',') {
                format!("{} {}", words[0], words[1])
            } else {
                words[0].to_owned()
            }
        })
        .collect();
    let mut from_help = help_options(&help());
    from_help.remove("-h, --help");
    from_help.remove("-V, --version");
    assert_eq!(table, from_help, "README.md's options table vs --help");
}

/// The keys a section of the configuration file accepts, as its "unknown field" error lists
/// them (the schema itself is the only source).
fn schema_fields(text: &str) -> BTreeSet<String> {
    let problem = uhyve::config_file::parse(text).unwrap_err();
    // "…, expected one of `a`, `b`" or, for a single field, "…, expected `a`".
    let (_, expected) = problem
        .message
        .split_once("expected one of ")
        .or_else(|| problem.message.split_once("expected "))
        .unwrap_or_else(|| panic!("{problem:?}"));
    expected
        .split(", ")
        .map(|field| field.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn the_documented_keys_are_those_of_the_schema() {
    let mut schema = BTreeSet::new();
    for section in schema_fields("[probe_section]\n") {
        for key in schema_fields(&format!("[{section}]\nprobe_key = 1\n")) {
            schema.insert(format!("{section}.{key}"));
        }
    }
    let documented: BTreeSet<String> = rows()
        .iter()
        .map(|row| row.names[0].clone())
        .filter(|name| name.contains('.'))
        .collect();
    assert_eq!(
        documented, schema,
        "docs/compatibility.md vs the configuration schema"
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/uhyve.toml")
            .is_file()
    );
}
