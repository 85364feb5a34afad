//! Build script of the `uhyve-test-guests` crate: compiles the tiny C test guests in
//! `tests/guests/` into bootable Hermit-style ELF images under `$OUT_DIR/guests/<name>` and
//! exports that directory to the crate as the compile-time environment variable
//! `UHYVE_GUEST_DIR` (the crate's `GUEST_DIR`). uhyve uses this crate only as a dev-dependency,
//! for its tests, benchmark and demo, so building or installing the `uhyve` binary never runs a C
//! compiler.
//!
//! Every `tests/guests/*.c` is one guest; each is linked together with the shared runtime in
//! `tests/guests/rt/` (`start.S`, `runtime.c`) using the linker script `rt/guest.ld`. Every
//! `tests/guests/v2/*.c` is a guest of hypercall interface v2/v3, built into
//! `$OUT_DIR/guests/v2/<name>`: the same runtime compiled with `UHYVE_V2` plus
//! `v2/rt/runtime_v2.c`, linked by `v2/rt/guest.ld` at 4 MiB above 4 GiB (where uhyve puts the
//! RAM of such guests), as position-independent code so that the small code model still works
//! there. Every `tests/guests/pie/*.c` is a position-independent (ET_DYN) v1 guest, built into
//! `$OUT_DIR/guests/pie/<name>`: the same runtime compiled `-fpie`, linked `-static-pie` at 0 by
//! `pie/rt/guest.ld`, so that uhyve's loader chooses its base and applies its relocations. These
//! guests only exist for the x86_64 KVM integration tests and are built on x86_64 Linux, where a
//! C compiler is required: `gcc`, or the one named by `UHYVE_GUEST_CC` or `CC`.
//!
//! Every `tests/guests/aarch64/*.c` is an aarch64 v1 guest, linked with the shared
//! `rt/runtime.c` (compiled for aarch64), `aarch64/rt/start.S` and `aarch64/rt/runtime_a64.c` by
//! `aarch64/rt/guest.ld` at 0x1020_0000, inside the RAM uhyve gives aarch64 v1 guests. Every
//! `tests/guests/aarch64/v2/*.c` is an aarch64 v2/v3 guest (most include the x86_64 guest of the
//! same name from `v2/`), built into `<dir>/v2/<name>` beside them: the same runtime compiled with
//! `UHYVE_V2`, plus `v2/rt/runtime_v2.c` and `aarch64/v2/rt/runtime_v2_a64.c`, linked by
//! `aarch64/v2/rt/guest.ld` at 4 MiB above 4 GiB, where uhyve puts the RAM of such guests. On an
//! aarch64 Linux target they are the guests of `$OUT_DIR/guests/<name>` and
//! `$OUT_DIR/guests/v2/<name>` (the crate's `GUEST_DIR`; the x86_64 kinds are not built there)
//! and need a C compiler for aarch64: `UHYVE_GUEST_CC_AARCH64`, else `aarch64-linux-gnu-gcc` when
//! the build host is not aarch64, else `gcc`. On an x86_64 Linux target they are also built, into
//! `$OUT_DIR/guests-aarch64/<name>` (and `v2/<name>`), when a cross compiler is there
//! (`UHYVE_GUEST_CC_AARCH64`, or an `aarch64-linux-gnu-gcc` that runs), so that host-side tests
//! can load them; without one that directory stays empty. Both places are exported as
//! `UHYVE_AARCH64_GUEST_DIR` (the crate's `AARCH64_GUEST_DIR`). On every other target nothing is
//! built (the directories are still created, empty).
//!
//! The flags keep the guests to general-purpose registers: the KVM on the project's machines
//! emulates every x86 instruction and cannot execute SSE/AVX (see tests/guests/uhyve.h); the
//! aarch64 guests stay off FP/SIMD too, and avoid unaligned accesses, which fault while a
//! secondary cpu runs with its MMU off.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Compiler flags shared by every guest translation unit.
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-mgeneral-regs-only",
    "-mno-red-zone",
];

/// Extra compiler flags of single v1 guests (of both architectures), added after all the others
/// (a later `-O` wins):
/// `gdb_target`, the debuggee of tests/gdb.rs, carries DWARF debug info and is not optimised, so
/// that GDB sees its locals, frames and every line. The other guest images stay as they are.
const PER_GUEST_CFLAGS: &[(&str, &[&str])] = &[("gdb_target", &["-g", "-O0"])];

/// Code generation of the v1 guests, linked in the low 2 GiB: absolute 32-bit addresses.
const V1_CODEGEN: &[&str] = &["-fno-pic", "-mcmodel=small"];

/// Code generation of the v2/v3 guests, linked above 4 GiB: RIP-relative addressing keeps the
/// small code model usable there (the image is still linked as a fixed-address ET_EXEC), and
/// `UHYVE_V2` selects the v2 hypercall wrappers in the shared headers and runtime.
const V2_CODEGEN: &[&str] = &["-fpie", "-mcmodel=small", "-DUHYVE_V2=1"];

/// Compiler flags of the aarch64 guests: those of [`CFLAGS`] that are not x86-specific, FP/SIMD
/// off, no unaligned accesses, no outline atomics (no libgcc) and no branch protection (no
/// PAC/BTI notes or instructions).
const A64_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-mgeneral-regs-only",
    "-mstrict-align",
    "-mno-outline-atomics",
    "-mbranch-protection=none",
];

/// Code generation of the aarch64 v1 guests, linked at a fixed address: ADRP-relative addressing
/// (the small code model), no GOT.
const A64_CODEGEN: &[&str] = &["-fno-pic", "-mcmodel=small"];

/// Code generation of the aarch64 v2/v3 guests: that of the v1 guests (ADRP reaches ±4 GiB from
/// the code, wherever it is linked), and `UHYVE_V2` for the v2 wrappers and the RAM at 4 GiB.
const A64_V2_CODEGEN: &[&str] = &["-fno-pic", "-mcmodel=small", "-DUHYVE_V2=1"];

/// Linker flags of the aarch64 guests: [`LDFLAGS`] with 4 KiB pages (the default maximum page size
/// of aarch64 would align the segments to 64 KiB).
const A64_LDFLAGS: &[&str] = &[
    "-nostdlib",
    "-nostartfiles",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
    "-Wl,-z,max-page-size=0x1000",
];

/// Linker flags: a static, non-PIE ET_EXEC laid out by the linker script of its kind.
const LDFLAGS: &[&str] = &[
    "-nostdlib",
    "-nostartfiles",
    "-static",
    "-no-pie",
    "-Wl,--build-id=none",
];

/// Code generation of the position-independent guests: RIP-relative code; the addresses stored in
/// data become R_X86_64_RELATIVE relocations.
const PIE_CODEGEN: &[&str] = &["-fpie", "-mcmodel=small"];

/// Linker flags of the position-independent guests: a static ET_DYN with its relocation table and
/// PT_DYNAMIC, no interpreter.
const PIE_LDFLAGS: &[&str] = &[
    "-nostdlib",
    "-nostartfiles",
    "-static-pie",
    "-Wl,--build-id=none",
];

/// ELF header byte holding the OS ABI, and the value Hermit kernels carry there.
const EI_OSABI: usize = 7;
const ELFOSABI_STANDALONE: u8 = 0xFF;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: building the uhyve test guests failed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_root = PathBuf::from(env_var("OUT_DIR")?);
    let out_dir = out_root.join("guests");
    // The C sources stay beside the integration tests: this crate lives in `tests/guest-images/`.
    let guest_src = manifest_dir.join("..").join("guests");

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let native_aarch64 = target_arch == "aarch64" && target_os == "linux";
    // On an aarch64 Linux target the aarch64 guests are the guests; elsewhere they have a
    // directory of their own.
    let a64_out = if native_aarch64 {
        out_dir.clone()
    } else {
        out_root.join("guests-aarch64")
    };

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", guest_src.display());
    println!("cargo:rerun-if-env-changed=UHYVE_GUEST_CC");
    println!("cargo:rerun-if-env-changed=UHYVE_GUEST_CC_AARCH64");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rustc-env=UHYVE_GUEST_DIR={}", out_dir.display());
    println!(
        "cargo:rustc-env=UHYVE_AARCH64_GUEST_DIR={}",
        a64_out.display()
    );

    // Start empty so a guest whose source was removed does not linger.
    for dir in [&out_dir, &a64_out] {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }

    if target_os != "linux" || !matches!(target_arch.as_str(), "x86_64" | "aarch64") {
        // The guests only serve the KVM tests (the `kvm` alias above); other hosts do not need them.
        return Ok(());
    }
    if !guest_src.is_dir() {
        return Err(format!(
            "the guest sources {} are missing",
            guest_src.display()
        ));
    }

    if native_aarch64 {
        return build_aarch64_guests(&aarch64_compiler(), &guest_src, &a64_out);
    }

    let cc = compiler();
    let rt = guest_src.join("rt");
    let v1 = GuestKind {
        sources: guest_src.clone(),
        cflags: CFLAGS,
        codegen: V1_CODEGEN,
        ldflags: LDFLAGS,
        runtime: vec![rt.join("start.S"), rt.join("runtime.c")],
        linker_script: rt.join("guest.ld"),
        output: out_dir.clone(),
        per_guest: PER_GUEST_CFLAGS,
    };
    let v2_src = guest_src.join("v2");
    let v2 = GuestKind {
        cflags: CFLAGS,
        codegen: V2_CODEGEN,
        ldflags: LDFLAGS,
        runtime: vec![
            rt.join("start.S"),
            rt.join("runtime.c"),
            v2_src.join("rt").join("runtime_v2.c"),
        ],
        linker_script: v2_src.join("rt").join("guest.ld"),
        output: out_dir.join("v2"),
        sources: v2_src,
        per_guest: &[],
    };
    let pie_src = guest_src.join("pie");
    let pie = GuestKind {
        cflags: CFLAGS,
        codegen: PIE_CODEGEN,
        ldflags: PIE_LDFLAGS,
        runtime: vec![rt.join("start.S"), rt.join("runtime.c")],
        linker_script: pie_src.join("rt").join("guest.ld"),
        output: out_dir.join("pie"),
        sources: pie_src,
        per_guest: &[],
    };
    for kind in [v1, v2, pie] {
        build_kind(&cc, &kind)?;
    }

    // The aarch64 guests too, for the host-side loader checks, if a cross compiler is there.
    if let Some(cc) = aarch64_cross_compiler() {
        build_aarch64_guests(&cc, &guest_src, &a64_out)?;
    }
    Ok(())
}

/// Builds every guest of `kind` (nothing if its source directory does not exist).
fn build_kind(cc: &OsString, kind: &GuestKind) -> Result<(), String> {
    if !kind.sources.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(&kind.output)
        .map_err(|e| format!("cannot create {}: {e}", kind.output.display()))?;
    for source in guest_sources(&kind.sources)? {
        let Some(name) = source.file_stem() else {
            continue;
        };
        let output = kind.output.join(name);
        compile_guest(cc, kind, &source, &output)?;
        mark_standalone(&output)?;
    }
    Ok(())
}

/// Builds the aarch64 guests of `tests/guests/aarch64/` with `cc` into `output`, and those of
/// `tests/guests/aarch64/v2/` into `output/v2`.
fn build_aarch64_guests(cc: &OsString, guest_src: &Path, output: &Path) -> Result<(), String> {
    let a64_src = guest_src.join("aarch64");
    let a64_rt = a64_src.join("rt");
    let runtime = vec![
        a64_rt.join("start.S"),
        guest_src.join("rt").join("runtime.c"),
        a64_rt.join("runtime_a64.c"),
    ];
    let a64_v2_src = a64_src.join("v2");
    let mut v2_runtime = runtime.clone();
    v2_runtime.push(guest_src.join("v2").join("rt").join("runtime_v2.c"));
    v2_runtime.push(a64_v2_src.join("rt").join("runtime_v2_a64.c"));
    let v1 = GuestKind {
        cflags: A64_CFLAGS,
        codegen: A64_CODEGEN,
        ldflags: A64_LDFLAGS,
        runtime,
        linker_script: a64_rt.join("guest.ld"),
        output: output.to_path_buf(),
        sources: a64_src,
        per_guest: PER_GUEST_CFLAGS,
    };
    let v2 = GuestKind {
        cflags: A64_CFLAGS,
        codegen: A64_V2_CODEGEN,
        ldflags: A64_LDFLAGS,
        runtime: v2_runtime,
        linker_script: a64_v2_src.join("rt").join("guest.ld"),
        output: output.join("v2"),
        sources: a64_v2_src,
        per_guest: &[],
    };
    build_kind(cc, &v1)?;
    build_kind(cc, &v2)
}

/// One family of guests: its sources, how they are compiled and linked, where they go.
struct GuestKind {
    /// The directory whose `*.c` files are the guests.
    sources: PathBuf,
    /// Compiler flags of the architecture ([`CFLAGS`] or [`A64_CFLAGS`]).
    cflags: &'static [&'static str],
    /// Code-generation flags added to `cflags`.
    codegen: &'static [&'static str],
    /// Linker flags.
    ldflags: &'static [&'static str],
    /// Runtime sources linked into every guest.
    runtime: Vec<PathBuf>,
    /// The linker script.
    linker_script: PathBuf,
    /// The directory the images go to.
    output: PathBuf,
    /// Extra compiler flags of single guests of this kind, by name.
    per_guest: &'static [(&'static str, &'static [&'static str])],
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

/// The C compiler: `UHYVE_GUEST_CC`, else `CC`, else `gcc`.
fn compiler() -> OsString {
    env::var_os("UHYVE_GUEST_CC")
        .or_else(|| env::var_os("CC"))
        .filter(|cc| !cc.is_empty())
        .unwrap_or_else(|| OsString::from("gcc"))
}

/// The C compiler of a native aarch64 build: `UHYVE_GUEST_CC_AARCH64`, else
/// `aarch64-linux-gnu-gcc` when the build host is not aarch64 (a cross build), else `gcc`.
fn aarch64_compiler() -> OsString {
    if let Some(cc) = env::var_os("UHYVE_GUEST_CC_AARCH64").filter(|cc| !cc.is_empty()) {
        return cc;
    }
    let host = env::var("HOST").unwrap_or_default();
    if host.starts_with("aarch64-") {
        OsString::from("gcc")
    } else {
        OsString::from(AARCH64_CROSS_CC)
    }
}

/// The cross compiler that builds the aarch64 guests on an x86_64 host: `UHYVE_GUEST_CC_AARCH64`
/// (a build failure is then an error), else `aarch64-linux-gnu-gcc` if it runs, else none.
fn aarch64_cross_compiler() -> Option<OsString> {
    if let Some(cc) = env::var_os("UHYVE_GUEST_CC_AARCH64").filter(|cc| !cc.is_empty()) {
        return Some(cc);
    }
    let runs = Command::new(AARCH64_CROSS_CC)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    runs.then(|| OsString::from(AARCH64_CROSS_CC))
}

/// Debian's (and Ubuntu's) name of the aarch64 Linux cross compiler.
const AARCH64_CROSS_CC: &str = "aarch64-linux-gnu-gcc";

/// Every `*.c` directly in the guest directory, sorted for a stable build order.
fn guest_sources(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut sources = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "c") {
            sources.push(path);
        }
    }
    sources.sort();
    Ok(sources)
}

fn compile_guest(
    cc: &OsString,
    kind: &GuestKind,
    source: &Path,
    output: &Path,
) -> Result<(), String> {
    let name = source
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let extra = kind
        .per_guest
        .iter()
        .find(|(guest, _)| *guest == name)
        .map_or(&[][..], |(_, flags)| *flags);
    let mut command = Command::new(cc);
    command
        .args(kind.cflags)
        .args(kind.codegen)
        .args(extra)
        .args(kind.ldflags)
        .arg("-T")
        .arg(&kind.linker_script)
        .arg("-o")
        .arg(output)
        .args(&kind.runtime)
        .arg(source);
    let result = command.output().map_err(|e| {
        format!(
            "cannot run the C compiler {:?}: {e}. uhyve's test guests need gcc on x86_64 Linux \
             (install it, e.g. `apt-get install gcc`, or point UHYVE_GUEST_CC at a compiler) and \
             a C compiler for aarch64 on aarch64 Linux (gcc there, `apt-get install \
             gcc-aarch64-linux-gnu` for a cross build, or point UHYVE_GUEST_CC_AARCH64 at one)",
            cc
        )
    })?;
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !result.status.success() {
        return Err(format!(
            "{:?} failed ({}) compiling {}:\n{stderr}",
            cc,
            result.status,
            source.display()
        ));
    }
    for line in stderr.lines() {
        println!("cargo:warning={}: {line}", source.display());
    }
    Ok(())
}

/// Sets EI_OSABI to ELFOSABI_STANDALONE like a real Hermit kernel (the linker writes 0 = SYSV,
/// which the Hermit loader only warns about).
fn mark_standalone(image: &Path) -> Result<(), String> {
    let mut bytes = fs::read(image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    match bytes.get_mut(EI_OSABI) {
        Some(byte) => *byte = ELFOSABI_STANDALONE,
        None => return Err(format!("{} is not an ELF file", image.display())),
    }
    fs::write(image, &bytes).map_err(|e| format!("cannot write {}: {e}", image.display()))
}
