//! Fuzz target `boot_encoders`: see `uhyve::fuzzing::boot_encoders`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::boot_encoders(data));
