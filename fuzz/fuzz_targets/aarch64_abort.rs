//! Fuzz target `aarch64_abort`: see `uhyve::fuzzing::aarch64_abort`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::aarch64_abort(data));
