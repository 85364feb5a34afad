//! Fuzz target `x86_emulator`: see `uhyve::fuzzing::x86_emulator`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::x86_emulator(data));
