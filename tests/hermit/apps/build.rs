//! Links the Hermit kernel: `libhermit.a` in `$HERMIT_LIB_DIR` (set by ../build.sh), which is
//! what the `hermit` crate's build script does after building the kernel itself.

fn main() {
    let dir = std::env::var("HERMIT_LIB_DIR")
        .expect("HERMIT_LIB_DIR must name the directory holding libhermit.a (see ../build.sh)");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=static=hermit");
    println!("cargo:rerun-if-env-changed=HERMIT_LIB_DIR");
    println!("cargo:rerun-if-changed={dir}/libhermit.a");
}
