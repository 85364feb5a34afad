//! Fuzz target `sandbox_paths`: see `uhyve::fuzzing::sandbox_paths`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::sandbox_paths(data));
