//! The real aarch64 Hermit image, prepared on this (any) host exactly as the Hypervisor.framework
//! backend will prepare it: parsed, relocated, laid out, with page tables, FDT, boot info and entry
//! registers, all checked. Needs `$UHYVE_TEST_IMAGES` (no KVM, no aarch64 host).

use std::path::PathBuf;

use uhyve::arch::GuestArch;
use uhyve::arch::aarch64::{layout, virt_to_phys};
use uhyve::boot::InitialRamdisk;
use uhyve::hypervisor::EntryRegisters;
use uhyve::loader::KernelImage;
use uhyve::setup::{self, GuestPlan, PreparedGuest};
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

fn image() -> Option<Vec<u8>> {
    let Some(dir) = std::env::var_os("UHYVE_TEST_IMAGES") else {
        if std::env::var_os("UHYVE_REQUIRE_IMAGES").is_some() {
            panic!("UHYVE_TEST_IMAGES is not set, but UHYVE_REQUIRE_IMAGES is");
        }
        eprintln!("skipping the aarch64 image test: UHYVE_TEST_IMAGES is not set");
        return None;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("aarch64-hello_world");
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The aarch64 image `bytes` prepared as `plan` says, with its boot structures written.
fn prepare_guest(bytes: Vec<u8>, plan: &GuestPlan) -> PreparedGuest {
    let image = KernelImage::parse_for(bytes, goblin::elf::header::EM_AARCH64).unwrap();
    let guest = setup::prepare(GuestArch::Aarch64, &image, plan).unwrap();
    guest
        .write_boot(None, time::OffsetDateTime::UNIX_EPOCH)
        .unwrap();
    guest
}

/// The plan of the first tests: 64 MiB, one vCPU, an argument.
fn hello_plan(aslr_random: Option<u64>) -> GuestPlan {
    GuestPlan {
        ram_size: 64 << 20,
        num_cpus: 1,
        bootargs: "-- hello".into(),
        mounts: Vec::new(),
        initrd: None,
        pre_0_10_kernel: false,
        aslr_random,
        ram_advice: Default::default(),
        pci: false,
    }
}

#[test]
fn the_real_aarch64_image_is_prepared_as_hvf_will_run_it() {
    let Some(bytes) = image() else {
        return;
    };
    let guest = prepare_guest(bytes, &hello_plan(None));
    assert_prepared_at(&guest, layout::RAM_BASE, 64 << 20);
}

#[test]
fn with_aslr_the_real_aarch64_image_moves_with_its_ram() {
    let Some(bytes) = image() else {
        return;
    };
    let mut bases = std::collections::BTreeSet::new();
    for random in [1, 1000, 0x1234_5678_9abc, u64::MAX] {
        let guest = prepare_guest(bytes.clone(), &hello_plan(Some(random)));
        let g = guest.mem.base().as_u64();
        // 2 MiB-aligned, above the GIC, ending within the 36-bit address space.
        assert_eq!(g % (2 << 20), 0, "{g:#x}");
        assert!(
            g >= layout::RAM_BASE && g + (64 << 20) <= 64 << 30,
            "{g:#x}"
        );
        assert_prepared_at(&guest, g, 64 << 20);
        bases.insert(g);
    }
    assert_eq!(bases.len(), 4, "{bases:x?}");
}

/// With PCI devices (`--net`) the v1 kernel maps a 256 MiB configuration window below 4 GiB:
/// ASLR keeps RAM ending by 3.5 GiB, and RAM that cannot end there is one clear error.
#[test]
fn with_pci_devices_v1_ram_leaves_the_kernel_room_for_the_pci_window() {
    let Some(bytes) = image() else {
        return;
    };
    for random in [1, 1000, 0x1234_5678_9abc, u64::MAX] {
        let plan = GuestPlan {
            pci: true,
            ..hello_plan(Some(random))
        };
        let guest = prepare_guest(bytes.clone(), &plan);
        let end = guest.mem.base().as_u64() + (64 << 20);
        assert!(end <= layout::PCI_KERNEL_RAM_END, "{end:#x}");
    }
    let image = KernelImage::parse_for(bytes, goblin::elf::header::EM_AARCH64).unwrap();
    let largest = layout::PCI_KERNEL_RAM_END - layout::RAM_BASE;
    let fits = GuestPlan {
        ram_size: largest,
        pci: true,
        ..hello_plan(None)
    };
    setup::prepare(GuestArch::Aarch64, &image, &fits).unwrap();
    let too_large = GuestPlan {
        ram_size: largest + (2 << 20),
        ..fits
    };
    let error = setup::prepare(GuestArch::Aarch64, &image, &too_large).unwrap_err();
    assert!(
        error.to_string().contains("at most 3328 MiB of RAM"),
        "{error}"
    );
}

/// Checks the prepared `guest` with RAM `[g, g + ram_size)`: kernel, registers, tables, boot
/// info and FDT where hermit-abi.md puts them relative to `g`.
fn assert_prepared_at(guest: &PreparedGuest, g: u64, ram_size: u64) {
    let kernel_base = g + 0x4_0000;
    let entry = kernel_base + 0x64c4c;
    assert_eq!(guest.kernel.entry_point, entry);
    assert_eq!(guest.kernel.image_range.start, kernel_base);
    assert_eq!(guest.page_table_root, GuestPhysAddr::new(g + 0x1_0000));

    let EntryRegisters::Aarch64(r) = &guest.registers else {
        panic!("aarch64 registers expected: {:?}", guest.registers);
    };
    assert_eq!(r.pc, entry);
    assert_eq!(r.x0, guest.boot_info.as_u64());
    assert_eq!(r.x1, 0);
    assert_eq!(r.sp_el1, kernel_base - 0x8000);
    assert_eq!(r.ttbr0_el1, g + 0x1_0000);
    assert_eq!(r.cpsr, 0x3c5);

    // The entry point, the boot info and the FDT are identity mapped; the v1 hypercall
    // addresses hit the hypercall page at the start of RAM.
    let walk = |va: u64| virt_to_phys(&guest.mem, guest.page_table_root, GuestVirtAddr::new(va));
    assert_eq!(walk(entry), Ok(GuestPhysAddr::new(entry)));
    let boot_info = guest.boot_info.as_u64();
    assert_eq!(walk(boot_info), Ok(GuestPhysAddr::new(boot_info)));
    assert_eq!(walk(0x540), Ok(GuestPhysAddr::new(g + 0x540)));
    assert!(walk(guest.kernel.image_range.end + 0x10_0000).is_err());

    // Boot info fields at the aarch64 offsets of hermit-abi.md §2.1.
    let mut info = [0u8; 128];
    guest.mem.read(guest.boot_info, &mut info).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(info[at..at + 8].try_into().unwrap());
    assert_eq!((u64_at(0), u64_at(8)), (g, g + ram_size));
    assert_eq!(u64_at(24), guest.fdt.as_u64());
    assert_eq!(
        (u64_at(32), u64_at(40)),
        (kernel_base, guest.kernel.image_range.end)
    );
    assert_eq!(u32::from_le_bytes(info[80..84].try_into().unwrap()), 1);
    assert_eq!(u64_at(96), 1);

    // The FDT: the magic, and the nodes the 0.11 kernel reads.
    let mut fdt = vec![0u8; 0x2000];
    guest.mem.read(guest.fdt, &mut fdt).unwrap();
    assert_eq!(&fdt[..4], &0xd00d_feedu32.to_be_bytes());
    let text = String::from_utf8_lossy(&fdt);
    let memory_node = format!("memory@{g:x}");
    for needle in [
        memory_node.as_str(),
        "intc@8000000",
        "arm,gic-v3",
        "arm,armv8-timer",
        "-- hello",
    ] {
        assert!(text.contains(needle), "the FDT lacks {needle}");
    }
}

#[test]
fn a_hermit_image_archive_is_placed_after_the_aarch64_kernel_for_the_internal_mode() {
    let Some(bytes) = image() else {
        return;
    };
    // Any bytes stand in for the decompressed archive; 3 MiB reach past the kernel's own map.
    let mut tar = vec![0x11u8; 3 << 20];
    tar[..5].copy_from_slice(b"first");
    let last = tar.len() - 1;
    tar[last] = 0x5a;
    let setup = GuestPlan {
        ram_size: 64 << 20,
        num_cpus: 1,
        bootargs: String::new(),
        mounts: Vec::new(),
        initrd: Some(InitialRamdisk(tar.clone().into())),
        pre_0_10_kernel: false,
        aslr_random: None,
        ram_advice: Default::default(),
        pci: false,
    };
    let guest = prepare_guest(bytes.clone(), &setup);
    let initrd = guest.initrd.clone().expect("an initrd range");
    assert_eq!(
        initrd.start,
        guest.kernel.image_range.end.next_multiple_of(0x1000)
    );
    assert_eq!(initrd.end - initrd.start, tar.len() as u64);
    let mut start = [0u8; 5];
    guest
        .mem
        .read(GuestPhysAddr::new(initrd.start), &mut start)
        .unwrap();
    assert_eq!(&start, b"first");
    // The kernel reads it through the boot identity map, to its last byte.
    let walk = |va: u64| virt_to_phys(&guest.mem, guest.page_table_root, GuestVirtAddr::new(va));
    assert_eq!(walk(initrd.end - 1), Ok(GuestPhysAddr::new(initrd.end - 1)));
    // The FDT names it in /chosen.
    let mut fdt = vec![0u8; 0x2000];
    guest.mem.read(guest.fdt, &mut fdt).unwrap();
    let text = String::from_utf8_lossy(&fdt);
    assert!(
        text.contains("linux,initrd-start"),
        "the FDT lacks the initrd"
    );
    assert!(
        text.contains("linux,initrd-end"),
        "the FDT lacks the initrd end"
    );

    // Too little RAM for it: a layout error naming the archive.
    let image = KernelImage::parse_for(bytes, goblin::elf::header::EM_AARCH64).unwrap();
    let plan = GuestPlan {
        ram_size: 16 << 20,
        initrd: Some(InitialRamdisk(vec![0u8; 14 << 20].into())),
        ..setup
    };
    let error = setup::prepare(GuestArch::Aarch64, &image, &plan).unwrap_err();
    assert!(error.to_string().contains("does not fit"), "{error}");
}
