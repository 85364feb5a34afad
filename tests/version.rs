//! `uhyve --version` prints `uhyve <package version>`, followed by ` (commit <hash>)` when the
//! binary was built from a git checkout (build.rs), and exits 0; `-V` is the same.

mod common;

use std::process::Command;

use common::UHYVE_BIN;

#[test]
fn version_names_the_package_version() {
    for flag in ["--version", "-V"] {
        let output = Command::new(UHYVE_BIN)
            .arg(flag)
            .output()
            .expect("run uhyve");
        assert!(output.status.success(), "uhyve {flag}: {output:?}");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 version line");
        let line = stdout.trim_end();
        let expected = format!("uhyve {}", env!("CARGO_PKG_VERSION"));
        let rest = line
            .strip_prefix(&expected)
            .unwrap_or_else(|| panic!("uhyve {flag} printed {line:?}, expected {expected:?}…"));
        if !rest.is_empty() {
            let commit = rest
                .strip_prefix(" (commit ")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("uhyve {flag}: unexpected suffix in {line:?}"));
            assert!(
                commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                "uhyve {flag}: {commit:?} is no commit hash"
            );
        }
    }
}
