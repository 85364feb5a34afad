//! The fuzzers' entry points: one `pub fn <target>(data: &[u8])` per guest-facing parser, shared
//! by the cargo-fuzz crate in `fuzz/` and by the corpus replay test (`tests/fuzz_corpus.rs`), so
//! that every corpus file is also a regression test under `cargo test`.
//!
//! Each entry point accepts any bytes and panics only when it finds a bug: a panic inside uhyve,
//! a broken invariant (a loaded image outside its range, a device tree that does not parse back,
//! a file touched outside the sandbox) or, for the x86 emulator, a result that differs from the
//! host CPU. Not part of uhyve's interface: hidden from the documentation and free to change.
//!
//! * [`loader`]: `KernelImage::parse_for` on arbitrary bytes, for both machines, then `load`.
//! * [`hypercall`]: the hypercall dispatcher over arbitrary guest RAM, for interfaces 1, 2 and 3.
//! * [`sandbox_paths`]: `FileMap` with arbitrary mappings and guest paths.
//! * [`x86_emulator`]: the x86 instruction emulator on arbitrary bytes and vCPU state.
//! * [`aarch64_abort`]: the aarch64 data-abort syndrome decoder.
//! * [`boot_encoders`]: the boot info and device tree encoders.
//! * [`virtio_net`]: the virtio network card and its PCI transport under an arbitrary driver.

mod boot_encoders;
mod emulator;
#[cfg(all(feature = "fuzz-native", target_arch = "x86_64"))]
mod emulator_native;
mod fdt_reader;
mod hypercall;
mod hypercall_requests;
mod loader;
mod sandbox;
mod sandbox_tree;
mod syndrome;
mod virtio_net;
mod virtio_net_model;

pub use boot_encoders::boot_encoders;
pub use emulator::x86_emulator;
pub use hypercall::hypercall;
pub use loader::loader;
pub use sandbox::sandbox_paths;
pub use syndrome::aarch64_abort;
pub use virtio_net::virtio_net;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/corpus/<name>` and `fuzz/fuzz_targets/<name>.rs` call
/// them.
pub const TARGETS: [(&str, Target); 7] = [
    ("loader", loader),
    ("hypercall", hypercall),
    ("sandbox_paths", sandbox_paths),
    ("x86_emulator", x86_emulator),
    ("aarch64_abort", aarch64_abort),
    ("boot_encoders", boot_encoders),
    ("virtio_net", virtio_net),
];
