//! Where the build script compiled uhyve's tiny C test guests: the directory holding one ELF
//! image per `tests/guests/*.c`, and the v2/v3 guests of `tests/guests/v2/*.c` in its `v2/`
//! subdirectory, on x86_64 Linux; on aarch64 Linux it holds the aarch64 guests of
//! `tests/guests/aarch64/*.c` instead, and in `v2/` those of `tests/guests/aarch64/v2/*.c`. Empty
//! on other hosts. The aarch64 guests also have a directory of their own, [`AARCH64_GUEST_DIR`],
//! which an x86_64 build fills when an aarch64 cross compiler is installed, so that host-side
//! tests can load them anywhere. Used by uhyve's integration tests, benchmark and demo example
//! through a dev-dependency, so that building uhyve itself needs no C compiler.

/// The directory of the built test guests (`<name>` for v1 guests, `v2/<name>` for v2/v3 ones;
/// the aarch64 guests on an aarch64 target).
pub const GUEST_DIR: &str = env!("UHYVE_GUEST_DIR");

/// The directory of the built aarch64 test guests (`<name>` per `tests/guests/aarch64/<name>.c`,
/// `v2/<name>` per `tests/guests/aarch64/v2/<name>.c`): [`GUEST_DIR`] on an aarch64 Linux target;
/// on x86_64 Linux a directory of its own, empty when no aarch64 cross compiler
/// (`aarch64-linux-gnu-gcc` or `UHYVE_GUEST_CC_AARCH64`) was found.
pub const AARCH64_GUEST_DIR: &str = env!("UHYVE_AARCH64_GUEST_DIR");
