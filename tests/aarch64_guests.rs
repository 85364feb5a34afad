//! The aarch64 test guests of `tests/guests/aarch64/`, checked on any host without running them:
//! each is a Hermit ELF image that uhyve's loader accepts for aarch64, and `uhyve::setup::prepare`
//! lays it out as the KVM backend will run it (linked at 0x1020_0000 in RAM at 0x1000_0000 even
//! with ASLR on, entered at `_start` with the boot stack right below it, the whole image up to the
//! end of its bss identity-mapped, virtual page 0 on the hypercall window), and the hand-written
//! instructions the guests and `tests/aarch64_kvm.rs` depend on are the ones intended. The same
//! for the v2/v3 guests of `tests/guests/aarch64/v2/`: images of the interface version they claim,
//! linked at 0x1_0040_0000 in RAM at 4 GiB, with the v1 and v2/v3 hypercall addresses on the
//! window of that RAM. The guests come from `uhyve_test_guests::AARCH64_GUEST_DIR` (the v2/v3 ones
//! from its `v2/`): built on an aarch64 Linux target, and on x86_64 when an aarch64 cross compiler
//! is installed. Without them the tests are skipped, unless `UHYVE_REQUIRE_AARCH64_GUESTS` is set
//! (then they fail).

use std::fs;
use std::path::{Path, PathBuf};

use goblin::elf::{Elf, header, program_header};
use uhyve::arch::GuestArch;
use uhyve::arch::aarch64::{layout, virt_to_phys};
use uhyve::hypervisor::EntryRegisters;
use uhyve::loader::KernelImage;
use uhyve::setup::{self, GuestPlan, PreparedGuest};
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

/// Guests tests/guest-images/build.rs must produce from tests/guests/aarch64/*.c.
const GUESTS: &[&str] = &[
    "args_env",
    "crash",
    "exit_code",
    "file_ops",
    "gdb_target",
    "hello",
    "hostile",
    "smp",
    "spin",
];

/// The v2/v3 guests tests/guest-images/build.rs must produce from tests/guests/aarch64/v2/*.c,
/// with the interface version each announces.
const V2_GUESTS: &[(&str, u32)] = &[
    ("v2_gating", 2),
    ("v3_console", 3),
    ("v3_exit", 3),
    ("v3_files", 3),
    ("v3_hostile", 3),
    ("v3_memory", 3),
];

/// Where tests/guests/aarch64/rt/guest.ld links every guest (UHYVE_A64_LINK_BASE).
const LINK_BASE: u64 = 0x1020_0000;
/// Where tests/guests/aarch64/v2/rt/guest.ld links every v2/v3 guest: 4 MiB into RAM at 4 GiB.
const V2_LINK_BASE: u64 = 0x1_0040_0000;
/// The size of a page in uhyve's stage-1 tables.
const PAGE: u64 = 0x1000;

/// The built aarch64 v1 guests, sorted by name, or `None` after saying why the test `test` is
/// skipped.
fn guests(test: &str) -> Option<Vec<PathBuf>> {
    guests_in(&PathBuf::from(uhyve_test_guests::AARCH64_GUEST_DIR), test)
}

/// The built aarch64 v2/v3 guests, like [`guests`].
fn v2_guests(test: &str) -> Option<Vec<PathBuf>> {
    guests_in(
        &PathBuf::from(uhyve_test_guests::AARCH64_GUEST_DIR).join("v2"),
        test,
    )
}

/// The guest images directly in `dir`, sorted by name, or `None` (see [`guests`]). Without a
/// cross compiler `v2/` is not even created.
fn guests_in(dir: &Path, test: &str) -> Option<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.expect("guest directory entry").path())
            .filter(|path| path.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    if paths.is_empty() {
        if std::env::var_os("UHYVE_REQUIRE_AARCH64_GUESTS").is_some() {
            panic!(
                "{test}: no aarch64 guest was built in {} (install gcc-aarch64-linux-gnu or set \
                 UHYVE_GUEST_CC_AARCH64), but UHYVE_REQUIRE_AARCH64_GUESTS is set",
                dir.display()
            );
        }
        eprintln!("skipping {test}: no aarch64 cross compiler built the aarch64 guests");
        return None;
    }
    paths.sort();
    Some(paths)
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The address of symbol `symbol` in `elf`.
fn symbol(elf: &Elf<'_>, symbol: &str) -> Option<u64> {
    elf.syms
        .iter()
        .find(|sym| elf.strtab.get_at(sym.st_name) == Some(symbol))
        .map(|sym| sym.st_value)
}

/// The instruction word at virtual address `at` of the image `bytes`.
fn instruction(elf: &Elf<'_>, bytes: &[u8], at: u64) -> u32 {
    let segment = elf
        .program_headers
        .iter()
        .find(|ph| {
            ph.p_type == program_header::PT_LOAD
                && (ph.p_vaddr..ph.p_vaddr + ph.p_filesz).contains(&at)
        })
        .unwrap_or_else(|| panic!("{at:#x} lies in no loaded file bytes"));
    let offset = usize::try_from(segment.p_offset + (at - segment.p_vaddr)).unwrap();
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// Prepares `bytes` as uhyve will for a run with `random` as the ASLR draw.
fn prepare(bytes: Vec<u8>, random: Option<u64>) -> PreparedGuest {
    prepare_with_ram(bytes, random, 64 << 20)
}

/// [`prepare`] with `ram_size` bytes of RAM.
fn prepare_with_ram(bytes: Vec<u8>, random: Option<u64>, ram_size: u64) -> PreparedGuest {
    let image = KernelImage::parse_for(bytes, header::EM_AARCH64).unwrap();
    let plan = GuestPlan {
        ram_size,
        num_cpus: 2,
        bootargs: "-- first".into(),
        mounts: Vec::new(),
        initrd: None,
        pre_0_10_kernel: false,
        aslr_random: random,
        ram_advice: Default::default(),
        pci: false,
    };
    let guest = setup::prepare(GuestArch::Aarch64, &image, &plan).unwrap();
    guest
        .write_boot(None, time::OffsetDateTime::UNIX_EPOCH)
        .unwrap();
    guest
}

#[test]
fn all_aarch64_guests_are_built() {
    let Some(paths) = guests("all_aarch64_guests_are_built") else {
        return;
    };
    let names: Vec<String> = paths.iter().map(|path| name(path)).collect();
    assert_eq!(names, GUESTS, "the built aarch64 guests");
}

#[test]
fn aarch64_guests_are_hermit_images() {
    let Some(paths) = guests("aarch64_guests_are_hermit_images") else {
        return;
    };
    for path in paths {
        let name = name(&path);
        let bytes = fs::read(&path).unwrap();
        let elf = Elf::parse(&bytes).expect("an ELF file");
        assert_eq!(elf.header.e_type, header::ET_EXEC, "{name}: not ET_EXEC");
        assert_eq!(elf.header.e_machine, header::EM_AARCH64, "{name}");
        assert_eq!(elf.header.e_ident[header::EI_OSABI], 0xFF, "{name}: OS ABI");
        assert!(elf.interpreter.is_none(), "{name}: has PT_INTERP");
        assert!(elf.dynamic.is_none(), "{name}: has a dynamic section");
        assert_eq!(Some(elf.header.e_entry), symbol(&elf, "_start"), "{name}");
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 2, "{name}: text and data segments");
        for load in &loads {
            assert!(
                load.p_vaddr >= LINK_BASE,
                "{name}: a segment below the link base"
            );
            assert_eq!(load.p_align, PAGE, "{name}: segment alignment");
        }
        assert!(
            loads[0].is_executable()
                && (loads[0].p_vaddr..loads[0].p_vaddr + loads[0].p_memsz)
                    .contains(&elf.header.e_entry),
            "{name}: entry point outside the executable segment"
        );
        let note = elf
            .program_headers
            .iter()
            .find(|ph| ph.p_type == program_header::PT_NOTE)
            .expect("a PT_NOTE");
        let start = usize::try_from(note.p_offset).unwrap();
        let mut expected = Vec::new();
        for word in [7u32, 1, 0x5A00] {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        expected.extend_from_slice(b"HERMIT\0\0\x04\0\0\0");
        assert_eq!(
            bytes.get(start..start + expected.len()),
            Some(&expected[..]),
            "{name}: entry-version note"
        );

        // The reference loader (hermit-entry) only takes images of the architecture it was
        // compiled for.
        if cfg!(target_arch = "aarch64") {
            let object = hermit_entry::elf::KernelObject::parse(&bytes)
                .unwrap_or_else(|e| panic!("{name}: hermit-entry rejects it: {e}"));
            assert_eq!(object.start_addr(), Some(LINK_BASE), "{name}");
        }
        let image = KernelImage::parse_for(bytes.clone(), header::EM_AARCH64)
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader rejects it: {e}"));
        assert_eq!(image.fixed_load_address(), Some(LINK_BASE), "{name}");
        assert_eq!(image.entry_version(), 4, "{name}");
        assert_eq!(image.interface_version(), 1, "{name}");
    }
}

#[test]
fn aarch64_guests_are_laid_out_as_kvm_will_run_them() {
    let Some(paths) = guests("aarch64_guests_are_laid_out_as_kvm_will_run_them") else {
        return;
    };
    for path in paths {
        let name = name(&path);
        let bytes = fs::read(&path).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let image_end = elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
            .map(|ph| ph.p_vaddr + ph.p_memsz)
            .max()
            .unwrap();
        assert_eq!(image_end % PAGE, 0, "{name}: the image ends inside a page");
        let tail = symbol(&elf, "uhyve_a64_tail").expect("the tail page of rt/guest.ld");
        assert_eq!(
            tail + PAGE,
            image_end,
            "{name}: the tail page is the last one"
        );

        // A fixed image pins RAM to 0x1000_0000 whatever ASLR draws.
        for random in [None, Some(0x1234_5678), Some(u64::MAX)] {
            let guest = prepare(bytes.clone(), random);
            let g = guest.mem.base().as_u64();
            assert_eq!(g, layout::RAM_BASE, "{name} with ASLR {random:?}");
            assert_eq!(guest.kernel.entry_point, elf.header.e_entry, "{name}");
            assert_eq!(guest.kernel.image_range, LINK_BASE..image_end, "{name}");

            let EntryRegisters::Aarch64(r) = &guest.registers else {
                panic!("{name}: aarch64 registers expected");
            };
            assert_eq!(r.pc, elf.header.e_entry, "{name}");
            assert_eq!((r.x0, r.x1), (guest.boot_info.as_u64(), 0), "{name}");
            // rt/start.S adds the 32 KiB to SP: the boot stack must end at the image.
            assert_eq!(r.sp_el1 + 0x8000, LINK_BASE, "{name}");
            assert_eq!(r.ttbr0_el1, g + 0x1_0000, "{name}");

            let walk =
                |va: u64| virt_to_phys(&guest.mem, guest.page_table_root, GuestVirtAddr::new(va));
            for va in [
                r.pc,
                r.sp_el1,
                LINK_BASE - 1,
                tail,
                image_end - 1,
                guest.boot_info.as_u64(),
            ] {
                assert_eq!(walk(va), Ok(GuestPhysAddr::new(va)), "{name}: {va:#x}");
            }
            // The v1 hypercall addresses and the stop offset of the vectors hit the window.
            for port in [0x400, 0x540, 0x800, 0x880, 0xff8] {
                assert_eq!(walk(port), Ok(GuestPhysAddr::new(g + port)), "{name}");
            }
            // Past the image nothing is mapped: hostile.c's crossing buffers rely on it.
            assert!(walk(image_end).is_err(), "{name}: {image_end:#x} is mapped");

            // The code uhyve loaded is the file's.
            let mut word = [0u8; 4];
            guest.mem.read(GuestPhysAddr::new(r.pc), &mut word).unwrap();
            assert_eq!(
                u32::from_le_bytes(word),
                instruction(&elf, &bytes, r.pc),
                "{name}"
            );
        }
    }
}

/// Instruction classes (mask, value) of the hand-written instructions.
const CBNZ_X1: (u32, u32) = (0xFF00_001F, 0xB500_0001);
const UDF_0: (u32, u32) = (0xFFFF_FFFF, 0x0000_0000);
/// `str wT, [xN]` (unsigned offset 0).
const STR_W_NO_OFFSET: (u32, u32) = (0xFFFF_FC00, 0xB900_0000);
/// `str xT, [xN]` (unsigned offset 0).
const STR_X_NO_OFFSET: (u32, u32) = (0xFFFF_FC00, 0xF900_0000);
/// `stp xT, xT2, [xN]` (signed offset 0).
const STP_X_NO_OFFSET: (u32, u32) = (0xFFFF_8000, 0xA900_0000);

#[test]
fn the_hand_written_aarch64_instructions_are_the_intended_ones() {
    let test = "the_hand_written_aarch64_instructions_are_the_intended_ones";
    let Some(mut paths) = guests(test) else {
        return;
    };
    // The v2/v3 guests share the runtime and its vectors.
    paths.extend(v2_guests(test).unwrap_or_default());
    for path in paths {
        let name = name(&path);
        let bytes = fs::read(&path).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let expect = |label: &str, (mask, value): (u32, u32)| {
            let at = symbol(&elf, label).unwrap_or_else(|| panic!("{name}: no {label}"));
            let word = instruction(&elf, &bytes, at);
            assert_eq!(
                word & mask,
                value,
                "{name}: {label} at {at:#x} is {word:#010x}"
            );
        };
        // _start parks every cpu but 0; the vectors end in a plain store (it has a syndrome).
        expect("_start", CBNZ_X1);
        expect("uhyve_rt_stop", STR_X_NO_OFFSET);
        if name == "crash" {
            expect("crash_udf_instruction", UDF_0);
            expect("crash_mmio_store", STR_W_NO_OFFSET);
            expect("crash_nisv_store", STP_X_NO_OFFSET);
        }
        // The vector table is 2 KiB aligned (VBAR_EL1 bits 10:0 are RES0).
        let vectors = symbol(&elf, "uhyve_rt_vectors").expect("the vectors");
        assert_eq!(vectors % 0x800, 0, "{name}: vectors at {vectors:#x}");
    }
}

// ---- The v2/v3 guests ----

/// The interface version the v2/v3 guest `name` must announce.
fn v2_version(name: &str) -> u32 {
    V2_GUESTS
        .iter()
        .find(|(guest, _)| *guest == name)
        .map(|(_, version)| *version)
        .unwrap_or_else(|| panic!("{name}: not a known v2/v3 guest"))
}

#[test]
fn all_aarch64_v2_guests_are_built() {
    let Some(paths) = v2_guests("all_aarch64_v2_guests_are_built") else {
        return;
    };
    let names: Vec<String> = paths.iter().map(|path| name(path)).collect();
    let expected: Vec<&str> = V2_GUESTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected, "the built aarch64 v2/v3 guests");
}

#[test]
fn aarch64_v2_guests_are_hermit_images_of_their_interface_version() {
    let Some(paths) = v2_guests("aarch64_v2_guests_are_hermit_images_of_their_interface_version")
    else {
        return;
    };
    for path in paths {
        let name = name(&path);
        let version = v2_version(&name);
        let bytes = fs::read(&path).unwrap();
        let elf = Elf::parse(&bytes).expect("an ELF file");
        assert_eq!(elf.header.e_type, header::ET_EXEC, "{name}: not ET_EXEC");
        assert_eq!(elf.header.e_machine, header::EM_AARCH64, "{name}");
        assert_eq!(elf.header.e_ident[header::EI_OSABI], 0xFF, "{name}: OS ABI");
        assert!(elf.interpreter.is_none(), "{name}: has PT_INTERP");
        assert!(elf.dynamic.is_none(), "{name}: has a dynamic section");
        assert_eq!(Some(elf.header.e_entry), symbol(&elf, "_start"), "{name}");
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 2, "{name}: text and data segments");
        for load in &loads {
            assert!(
                load.p_vaddr >= V2_LINK_BASE,
                "{name}: a segment below the link base"
            );
            assert_eq!(load.p_align, PAGE, "{name}: segment alignment");
        }

        if cfg!(target_arch = "aarch64") {
            let object = hermit_entry::elf::KernelObject::parse(&bytes)
                .unwrap_or_else(|e| panic!("{name}: hermit-entry rejects it: {e}"));
            assert_eq!(object.start_addr(), Some(V2_LINK_BASE), "{name}");
            assert_eq!(
                object.uhyve_interface_version().map(|v| v.0),
                Some(version),
                "{name}"
            );
            let kernel = object.hermit_version().expect("an ABI-tag note");
            assert_eq!((kernel.major, kernel.minor), (0, 14), "{name}");
        }
        let image = KernelImage::parse_for(bytes.clone(), header::EM_AARCH64)
            .unwrap_or_else(|e| panic!("{name}: uhyve's loader rejects it: {e}"));
        assert_eq!(image.fixed_load_address(), Some(V2_LINK_BASE), "{name}");
        assert_eq!(image.entry_version(), 4, "{name}");
        assert_eq!(image.interface_version(), version, "{name}");
        assert_eq!(image.kernel_version(), Some((0, 14, 0)), "{name}");
        assert_eq!(
            image.generation(),
            uhyve::loader::KernelGeneration::FdtMounts,
            "{name}"
        );
    }
}

/// The v1 and v2/v3 hypercall addresses, and the stop offset of the guests' vectors.
const WINDOW_ADDRESSES: &[u64] = &[
    0x400, 0x540, 0x800, 0x880, 0xff8, 0x1010, 0x1020, 0x1030, 0x1040, 0x1050, 0x1100, 0x1110,
    0x1120, 0x1130, 0x1140, 0x1150, 0x1160, 0x1170, 0x1180, 0x1190, 0x1200, 0x1210,
];

#[test]
fn aarch64_v2_guests_are_laid_out_in_ram_at_4_gib() {
    let Some(paths) = v2_guests("aarch64_v2_guests_are_laid_out_in_ram_at_4_gib") else {
        return;
    };
    for path in paths {
        let name = name(&path);
        let bytes = fs::read(&path).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let image_end = elf
            .program_headers
            .iter()
            .filter(|ph| ph.p_type == program_header::PT_LOAD)
            .map(|ph| ph.p_vaddr + ph.p_memsz)
            .max()
            .unwrap();
        assert_eq!(image_end % PAGE, 0, "{name}: the image ends inside a page");

        // A fixed image pins RAM to 4 GiB whatever ASLR draws; v3_memory also runs with 8 GiB.
        let mut runs = vec![
            (None, 64 << 20),
            (Some(0x1234_5678), 64 << 20),
            (Some(u64::MAX), 64 << 20),
        ];
        if name == "v3_memory" {
            runs.push((None, 8 << 30));
        }
        for (random, ram_size) in runs {
            let guest = prepare_with_ram(bytes.clone(), random, ram_size);
            let g = guest.mem.base().as_u64();
            assert_eq!(g, layout::HIGH_RAM_BASE, "{name} with ASLR {random:?}");
            assert_eq!(guest.kernel.entry_point, elf.header.e_entry, "{name}");
            assert_eq!(guest.kernel.image_range, V2_LINK_BASE..image_end, "{name}");
            assert_eq!(
                guest.boot_info.as_u64(),
                g + layout::BOOT_INFO_OFFSET,
                "{name}"
            );

            let EntryRegisters::Aarch64(r) = &guest.registers else {
                panic!("{name}: aarch64 registers expected");
            };
            assert_eq!(r.pc, elf.header.e_entry, "{name}");
            assert_eq!((r.x0, r.x1), (guest.boot_info.as_u64(), 0), "{name}");
            assert_eq!(r.sp_el1 + 0x8000, V2_LINK_BASE, "{name}");
            assert_eq!(r.ttbr0_el1, g + 0x1_0000, "{name}");

            // What the runtime reads from the boot info: RAM and the serial port (the
            // SerialWriteBuffer address for v2/v3).
            let mut info = [0u8; 24];
            guest.mem.read(guest.boot_info, &mut info).unwrap();
            let field = |i: usize| u64::from_le_bytes(info[i * 8..i * 8 + 8].try_into().unwrap());
            assert_eq!((field(0), field(1)), (g, g + ram_size), "{name}: RAM");
            assert_eq!(field(2), 0x1030, "{name}: serial_port_base");

            let walk =
                |va: u64| virt_to_phys(&guest.mem, guest.page_table_root, GuestVirtAddr::new(va));
            for va in [
                r.pc,
                r.sp_el1,
                g,
                V2_LINK_BASE - 1,
                image_end - 1,
                guest.boot_info.as_u64(),
            ] {
                assert_eq!(walk(va), Ok(GuestPhysAddr::new(va)), "{name}: {va:#x}");
            }
            for &address in WINDOW_ADDRESSES {
                assert_eq!(
                    walk(address),
                    Ok(GuestPhysAddr::new(g + address)),
                    "{name}: hypercall address {address:#x}"
                );
            }
            // uhyve maps nothing past the image: the runtime maps the rest of RAM itself.
            assert!(walk(image_end).is_err(), "{name}: {image_end:#x} is mapped");

            let mut word = [0u8; 4];
            guest.mem.read(GuestPhysAddr::new(r.pc), &mut word).unwrap();
            assert_eq!(
                u32::from_le_bytes(word),
                instruction(&elf, &bytes, r.pc),
                "{name}"
            );
        }
    }
}
