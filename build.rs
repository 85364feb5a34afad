//! Build script: declares the platform `cfg` aliases (`kvm`, `hvf`). It runs no C compiler: the C
//! test guests are built by the dev-only `uhyve-test-guests` crate (`tests/guest-images/`), so
//! `cargo install` needs none.

fn main() {
    // Each platform condition is written once, here: `kvm` where the KVM backend runs guests,
    // `hvf` where the Hypervisor.framework backend does.
    cfg_aliases::cfg_aliases! {
        kvm: { all(target_os = "linux", target_arch = "x86_64") },
        hvf: { all(target_os = "macos", target_arch = "aarch64") },
    }
    println!("cargo:rerun-if-changed=build.rs");
}
