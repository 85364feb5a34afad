//! Shared by the Hermit test applications (each includes this file with `#[path]`): one way to
//! report a check, so every application prints the lines the host-side tests look for.
//!
//! The package deliberately has no library target: the kernel (`libhermit.a`) is linked into
//! every binary directly (see build.rs), which a library bundling it could not guarantee.

use std::sync::atomic::{AtomicUsize, Ordering};

static FAILURES: AtomicUsize = AtomicUsize::new(0);

/// Prints `ok: NAME` or `CHECK FAILED: NAME: DETAIL` and remembers failures.
pub fn check(name: &str, ok: bool, detail: impl std::fmt::Display) {
    if ok {
        println!("ok: {name}");
    } else {
        println!("CHECK FAILED: {name}: {detail}");
        FAILURES.fetch_add(1, Ordering::SeqCst);
    }
}

/// Ends the application: `PROGRAM: all checks passed` and status 0, or the number of failed
/// checks and status 1.
pub fn finish(program: &str) -> ! {
    let failures = FAILURES.load(Ordering::SeqCst);
    if failures == 0 {
        println!("{program}: all checks passed");
        std::process::exit(0);
    }
    println!("{program}: {failures} check(s) failed");
    std::process::exit(1);
}
