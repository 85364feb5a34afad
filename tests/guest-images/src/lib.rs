//! Where the build script compiled uhyve's tiny C test guests: the directory holding one ELF
//! image per `tests/guests/*.c`, and the v2/v3 guests of `tests/guests/v2/*.c` in its `v2/`
//! subdirectory. Empty on hosts other than x86_64 Linux. Used by uhyve's integration tests,
//! benchmark and demo example through a dev-dependency, so that building uhyve itself needs no C
//! compiler.

/// The directory of the built test guests (`<name>` for v1 guests, `v2/<name>` for v2/v3 ones).
pub const GUEST_DIR: &str = env!("UHYVE_GUEST_DIR");
