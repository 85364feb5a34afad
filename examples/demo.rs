//! Runs uhyve on its built-in demo guest (`tests/guests/hello.c`, compiled by the dev-only
//! `uhyve-test-guests` crate, so this needs `gcc`), the same way the `uhyve` binary runs any image:
//! `cargo run --release --example demo [ARGS...]`.

use std::ffi::OsString;
use std::path::PathBuf;

fn main() {
    let guest = PathBuf::from(uhyve_test_guests::GUEST_DIR).join("hello");
    let mut args: Vec<OsString> = vec!["uhyve".into(), guest.into_os_string()];
    args.extend(std::env::args_os().skip(1));
    std::process::exit(uhyve::cli::main_with_args(args));
}
