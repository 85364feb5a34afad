//! Build script: declares the platform `cfg` aliases (`kvm`, `hvf`) and the version string
//! `uhyve --version` prints, exported as the compile-time environment variable `UHYVE_VERSION`:
//! the package version, followed by the git commit when the crate is built from a git checkout
//! (`0.2.0 (commit 0123456789ab)`), or the package version alone (a crate from crates.io, a
//! source tarball, no `git` installed). It runs no C compiler: the C test guests are built by the
//! dev-only `uhyve-test-guests` crate (`tests/guest-images/`), so `cargo install` needs none.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Each platform condition is written once, here: `kvm` where the x86_64 KVM backend runs
    // guests, `kvm_arm` where the aarch64 one does, `hvf` where the Hypervisor.framework backend
    // does, `host_backend` where any of them does.
    cfg_aliases::cfg_aliases! {
        kvm: { all(target_os = "linux", target_arch = "x86_64") },
        kvm_arm: { all(target_os = "linux", target_arch = "aarch64") },
        hvf: { all(target_os = "macos", target_arch = "aarch64") },
        host_backend: { any(kvm, kvm_arm, hvf) },
    }
    println!("cargo:rerun-if-changed=build.rs");

    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let version = match git_commit(&manifest_dir) {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version,
    };
    println!("cargo:rustc-env=UHYVE_VERSION={version}");
}

/// The checked-out commit, if `dir` is the top of a git work tree (not merely somewhere inside
/// one, as an unpacked crate under a git-managed home directory would be) and `git` runs. Asks
/// cargo to run this script again when the checked-out commit changes.
fn git_commit(dir: &Path) -> Option<String> {
    // `.git` is a directory in a clone and a file in a linked work tree.
    if !dir.join(".git").exists() {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names the branch; the branch's file (or packed-refs) names the commit. Only existing
    // files are watched: cargo reruns the script every time for a missing one.
    let mut watched = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(dir, &["rev-parse", "--git-path", &branch])?);
    }
    watched.push(git(dir, &["rev-parse", "--git-path", "packed-refs"])?);
    for path in watched {
        let path = dir.join(path);
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}

/// The trimmed standard output of `git ARGS` run in `dir`, or `None` if it fails or prints
/// nothing.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
