//! Fuzz target `hypercall`: see `uhyve::fuzzing::hypercall`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::hypercall(data));
