//! Fuzz target `loader`: see `uhyve::fuzzing::loader`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::loader(data));
