//! Fuzz target `virtio_net`: see `uhyve::fuzzing::virtio_net`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| uhyve::fuzzing::virtio_net(data));
