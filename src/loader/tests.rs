//! Unit tests of the loader: synthetic images from [`super::test_elf`] with one defect each,
//! truncation and random corruption (parse and load must fail cleanly, never panic), the malformed
//! fixtures, and the real Hermit images from `$UHYVE_TEST_IMAGES` cross-checked against
//! hermit-entry's loader.

use goblin::elf::dynamic::DT_RELSZ;
use goblin::elf::header::{ELFCLASS32, ELFDATA2MSB, EM_AARCH64, EM_X86_64, ET_REL};
use goblin::elf::program_header::{PT_LOAD, PT_TLS};
use goblin::elf::section_header::{SHN_ABS, SHN_UNDEF};
use goblin::elf::sym::{STB_GLOBAL, STB_WEAK};

use super::error::machine_name;
use super::notes::NT_HERMIT_ENTRY_VERSION;
use super::reloc::{RelocKind, reloc_kind};
use super::segments::zero_untouched;
use super::test_elf::*;
use super::*;

#[test]
fn bss_zeroing_writes_only_dirty_pieces() {
    let mut bytes = vec![0u8; 3 * 4096 + 100];
    bytes[5000] = 7;
    bytes[3 * 4096 + 99] = 1;
    zero_untouched(&mut bytes);
    assert!(bytes.iter().all(|&b| b == 0));
}

fn parse(spec: &Spec) -> Result<KernelImage, LoadError> {
    KernelImage::parse(build(spec))
}

fn parse_err(spec: &Spec) -> LoadError {
    match parse(spec) {
        Ok(_) => panic!("malformed image was accepted"),
        Err(e) => e,
    }
}

/// Loads `kernel` at `base` into a fresh zeroed buffer.
fn load_at(kernel: &KernelImage, base: u64) -> Result<(LoadedKernel, Vec<u8>), LoadError> {
    let mut image = vec![0u8; kernel.footprint() as usize];
    let loaded = kernel.load(base, &mut image)?;
    Ok((loaded, image))
}

/// Parses (and, if that succeeds, loads) arbitrary bytes; must return, never panic.
fn parse_and_load(bytes: Vec<u8>) -> Result<LoadedKernel, LoadError> {
    let kernel = KernelImage::parse(bytes)?;
    if kernel.footprint() > 1 << 26 {
        // Accepted by `parse` (limit 1 TiB) but too big to allocate in a test.
        return Err(LoadError::FootprintTooLarge("test limit".into()));
    }
    let base = kernel.fixed_load_address().unwrap_or(0x20_0000);
    let mut image = vec![0u8; kernel.footprint() as usize];
    kernel.load(base, &mut image)
}

#[test]
fn pie_parses_with_expected_metadata() {
    let spec = pie();
    let file_len = build(&spec).len() as u64;
    let kernel = parse(&spec).unwrap();
    assert!(kernel.is_position_independent());
    assert_eq!(kernel.fixed_load_address(), None);
    assert_eq!(kernel.entry_version(), 4);
    assert_eq!(kernel.interface_version(), 1);
    assert_eq!(kernel.kernel_version(), None);
    assert_eq!(kernel.footprint(), file_len + BSS);
    assert_eq!(kernel.load_alignment(), 0x1000);
}

#[test]
fn pie_loads_and_relocates_at_two_bases() {
    let spec = pie();
    let file = build(&spec);
    let kernel = KernelImage::parse(file.clone()).unwrap();
    for base in [0x4_0000u64, 0x1_2345_6000] {
        let (loaded, image) = load_at(&kernel, base).unwrap();
        assert_eq!(loaded.entry_point, base + ENTRY_OFF);
        assert_eq!(loaded.image_range, base..base + kernel.footprint());
        assert_eq!(
            loaded.tls,
            Some(TlsTemplate {
                start: base + TLS_DATA as u64,
                filesz: TLS_FILESZ,
                memsz: TLS_MEMSZ,
                align: 8,
            })
        );
        assert_eq!(read_u64(&image, DATA), base + 0x1234);
        // Everything else is the file, then zeroed BSS.
        assert_eq!(image[..DATA], file[..DATA]);
        assert_eq!(image[DATA + 8..file.len()], file[DATA + 8..]);
        assert!(image[file.len()..].iter().all(|&b| b == 0));
    }
}

#[test]
fn load_zeroes_bss_even_in_a_dirty_buffer() {
    let kernel = parse(&pie()).unwrap();
    let mut image = vec![0x55u8; kernel.footprint() as usize];
    kernel.load(0x20_0000, &mut image).unwrap();
    let bss_start = (kernel.footprint() - BSS) as usize;
    assert!(image[bss_start..].iter().all(|&b| b == 0));
}

#[test]
fn exec_loads_at_its_fixed_address() {
    let spec = exec();
    let file = build(&spec);
    let kernel = KernelImage::parse(file.clone()).unwrap();
    assert!(!kernel.is_position_independent());
    assert_eq!(kernel.fixed_load_address(), Some(EXEC_ADDR));
    let (loaded, image) = load_at(&kernel, EXEC_ADDR).unwrap();
    assert_eq!(loaded.entry_point, EXEC_ADDR + ENTRY_OFF);
    assert_eq!(
        loaded.image_range,
        EXEC_ADDR..EXEC_ADDR + kernel.footprint()
    );
    assert_eq!(loaded.tls.unwrap().start, EXEC_ADDR + TLS_DATA as u64);
    assert_eq!(image[..file.len()], file[..]);
}

#[test]
fn exec_is_rejected_at_another_base() {
    let kernel = parse(&exec()).unwrap();
    for base in [0, EXEC_ADDR + 0x1000, 0x4_0000] {
        assert!(matches!(
            load_at(&kernel, base),
            Err(LoadError::FixedAddressMismatch {
                required: EXEC_ADDR,
                ..
            })
        ));
    }
}

#[test]
fn load_base_is_the_fixed_address_or_the_next_aligned_pie_base() {
    let kernel = parse(&exec()).unwrap();
    for pie_base in [0, 0x4_0000, EXEC_ADDR + 1, u64::MAX] {
        assert_eq!(kernel.load_base(pie_base), EXEC_ADDR);
    }

    let kernel = parse(&pie()).unwrap();
    assert_eq!(kernel.load_alignment(), 0x1000);
    assert_eq!(kernel.load_base(0), 0);
    assert_eq!(kernel.load_base(0x20_0000), 0x20_0000);
    assert_eq!(kernel.load_base(0x20_0001), 0x20_1000);
    assert_eq!(kernel.load_base(0x20_0fff), 0x20_1000);
    // No aligned address at or above it.
    assert_eq!(kernel.load_base(u64::MAX - 0xffe), u64::MAX);
    let base = kernel.load_base(0x4_0123);
    assert_eq!(base, 0x4_1000);
    assert_eq!(load_at(&kernel, base).unwrap().0.image_range.start, base);

    let kernel = parse(&Spec {
        edit_phdrs: |p| p[0].align = 0x20_0000,
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.load_base(0x4_0000), 0x20_0000);
    assert!(load_at(&kernel, kernel.load_base(0x4_0000)).is_ok());

    // Without alignment (p_align 0 or 1), any address will do.
    let kernel = parse(&Spec {
        edit_phdrs: |p| p[0].align = 0,
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.load_alignment(), 1);
    assert_eq!(kernel.load_base(0x4_0123), 0x4_0123);
    assert_eq!(kernel.load_base(u64::MAX), u64::MAX);
}

#[test]
fn every_prefix_of_good_images_fails_cleanly() {
    for spec in [pie(), exec()] {
        let file = build(&spec);
        assert!(parse_and_load(file.clone()).is_ok());
        for len in 0..file.len() {
            let result = parse_and_load(file[..len].to_vec());
            assert!(result.is_err(), "prefix of {len} bytes was accepted");
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let file = build(&pie());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut bytes = file.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let _ = parse_and_load(bytes);
    }
}

#[test]
fn rejects_non_elf_input() {
    for bytes in [
        &b""[..],
        b"\x7fEL",
        b"#!/bin/sh\necho hello\n",
        b"MZ\x90\x00",
    ] {
        assert!(matches!(
            KernelImage::parse(bytes.to_vec()),
            Err(LoadError::NotElf)
        ));
    }
}

#[test]
fn rejects_wrong_class_endianness_machine_and_type() {
    let e = parse_err(&Spec {
        class: ELFCLASS32,
        ..pie()
    });
    assert!(matches!(e, LoadError::Not64Bit(1)), "{e}");
    let e = parse_err(&Spec {
        data: ELFDATA2MSB,
        ..pie()
    });
    assert!(matches!(e, LoadError::NotLittleEndian(2)), "{e}");
    let e = parse_err(&Spec {
        machine: other_machine(),
        ..pie()
    });
    assert!(matches!(e, LoadError::WrongMachine { machine, .. } if machine == other_machine()));
    assert!(e.to_string().contains(machine_name(host_machine())), "{e}");
    let e = parse_err(&Spec {
        e_type: ET_REL,
        ..pie()
    });
    assert!(
        matches!(e, LoadError::NotExecutable { e_type: ET_REL }),
        "{e}"
    );
}

#[test]
fn other_osabi_only_warns() {
    assert!(parse(&Spec { osabi: 0, ..pie() }).is_ok());
}

#[test]
fn rejects_truncated_header_tables() {
    let mut file = build(&pie());
    put(&mut file, 32, &0xFFFF_FFFF_FFFF_FFF0u64.to_le_bytes()); // e_phoff
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(&e, LoadError::Truncated { what, .. } if what == "program header table"));

    let mut file = build(&pie());
    put(&mut file, 40, &0x10_0000u64.to_le_bytes()); // e_shoff
    put(&mut file, 60, &3u16.to_le_bytes()); // e_shnum
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(&e, LoadError::Truncated { what, .. } if what == "section header table"));

    let mut file = build(&pie());
    put(&mut file, 54, &32u16.to_le_bytes()); // e_phentsize
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(e, LoadError::BadProgramHeaderSize(32)));
}

#[test]
fn rejects_missing_or_unsupported_entry_version() {
    let e = parse_err(&Spec {
        entry_version: None,
        ..pie()
    });
    assert!(matches!(e, LoadError::MissingEntryVersion), "{e}");
    let e = parse_err(&Spec {
        entry_version: Some(2),
        ..pie()
    });
    assert_eq!(e.to_string(), "entry version 2, uhyve supports 3 and 4");
    let e = parse_err(&Spec {
        entry_version: Some(5),
        ..pie()
    });
    assert!(matches!(e, LoadError::UnsupportedEntryVersion(5)));
    let kernel = parse(&Spec {
        entry_version: Some(3),
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.entry_version(), 3);
}

#[test]
fn checks_the_uhyve_interface_version() {
    for (version, _) in [(0, ()), (4, ())] {
        let e = parse_err(&Spec {
            uhyveif: Some(version),
            ..pie()
        });
        assert_eq!(
            e.to_string(),
            format!(
                "image needs uhyve interface version {version}, this uhyve speaks versions 1, 2 and 3"
            )
        );
    }
    for version in [2, 3] {
        let kernel = parse(&Spec {
            uhyveif: Some(version),
            ..pie()
        })
        .unwrap();
        assert_eq!(kernel.interface_version(), version);
    }
    let e = parse_err(&Spec {
        uhyveif: Some(0x0100_0000),
        ..pie()
    });
    assert!(matches!(
        e,
        LoadError::UnsupportedInterfaceVersion(0x0100_0000)
    ));
    let kernel = parse(&Spec {
        uhyveif: Some(1),
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.interface_version(), 1);
}

#[test]
fn the_generation_follows_the_abi_tag_and_the_interface_note() {
    let generation = |abi_tag: Option<[u32; 4]>, uhyveif: Option<u32>| {
        parse(&Spec {
            abi_tag,
            uhyveif,
            ..pie()
        })
        .unwrap()
        .generation()
    };
    assert_eq!(generation(None, None), KernelGeneration::Legacy);
    assert_eq!(
        generation(Some([6, 0, 8, 0]), None),
        KernelGeneration::Legacy
    );
    assert_eq!(
        generation(Some([6, 0, 10, 0]), None),
        KernelGeneration::BootargsMount
    );
    assert_eq!(
        generation(Some([6, 0, 11, 0]), None),
        KernelGeneration::BootargsMount
    );
    assert_eq!(
        generation(Some([6, 0, 12, 0]), None),
        KernelGeneration::FdtMounts
    );
    assert_eq!(
        generation(Some([6, 0, 13, 2]), Some(1)),
        KernelGeneration::FdtMounts
    );
    // The interface note alone is enough (it first appeared in 0.12).
    assert_eq!(generation(None, Some(1)), KernelGeneration::FdtMounts);
}

#[test]
fn reads_the_kernel_version_from_the_abi_tag() {
    let kernel = parse(&Spec {
        abi_tag: Some([6, 0, 13, 2]),
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.kernel_version(), Some((0, 13, 2)));
    // A tag for another OS is not a Hermit kernel version.
    let kernel = parse(&Spec {
        abi_tag: Some([0, 5, 10, 0]),
        ..pie()
    })
    .unwrap();
    assert_eq!(kernel.kernel_version(), None);
}

#[test]
fn rejects_bad_note_descriptors() {
    let mut spec = pie();
    spec.entry_version = None;
    let mut file = build(&spec);
    // Replace the (absent) HERMIT note by one with a 4-byte descriptor, in place of slot data:
    // point the PT_NOTE header at a hand-made note in the data area.
    let mut note = Vec::new();
    push_note(&mut note, "HERMIT", NT_HERMIT_ENTRY_VERSION, &[4, 0, 0, 0]);
    put(&mut file, DATA, &note);
    put(&mut file, 0x40 + 56 + 8, &(DATA as u64).to_le_bytes()); // PT_NOTE p_offset
    put(
        &mut file,
        0x40 + 56 + 32,
        &(note.len() as u64).to_le_bytes(),
    ); // p_filesz
    let e = KernelImage::parse(file.clone()).unwrap_err();
    assert!(
        matches!(e, LoadError::BadNoteDescriptor { len: 4, .. }),
        "{e}"
    );

    // A note header claiming more bytes than its segment holds.
    put(&mut file, DATA + 4, &0x100u32.to_le_bytes()); // n_descsz
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(e, LoadError::BadNote(_)), "{e}");
}

#[test]
fn rejects_unknown_relocation_type() {
    let mut spec = pie();
    spec.relocs[0].r_type = 37;
    let e = parse_err(&spec);
    assert!(matches!(
        e,
        LoadError::UnknownRelocation {
            index: 0,
            r_type: 37,
            ..
        }
    ));
    assert!(e.to_string().contains("type 37"), "{e}");
}

#[test]
fn rejects_relocation_outside_the_image() {
    let footprint = parse(&pie()).unwrap().footprint();
    for offset in [footprint - 7, footprint, u64::MAX - 3, u64::MAX] {
        let mut spec = pie();
        spec.relocs[0].offset = offset;
        let e = parse_err(&spec);
        assert!(
            matches!(e, LoadError::RelocationOutOfImage { index: 0, .. }),
            "{e}"
        );
    }
    // Below the image start of an ET_EXEC.
    let mut spec = exec();
    spec.relocs.push(Rela {
        offset: 0x1000,
        r_type: r_relative(),
        sym: 0,
        addend: 0,
    });
    assert!(matches!(
        parse_err(&spec),
        LoadError::RelocationOutOfImage { .. }
    ));
    // The last 8 bytes of the image are fine.
    let mut spec = pie();
    spec.relocs[0].offset = footprint - 8;
    let kernel = parse(&spec).unwrap();
    let (_, image) = load_at(&kernel, 0x20_0000).unwrap();
    assert_eq!(read_u64(&image, footprint as usize - 8), 0x20_0000 + 0x1234);
}

#[test]
fn rejects_bad_relocation_tables() {
    // DT_RELA pointing outside every segment.
    let mut spec = pie();
    spec.edit_phdrs = |p| p[0].filesz = NOTES as u64 + 0x20;
    let e = parse_err(&spec);
    assert!(
        matches!(
            e,
            LoadError::Unmapped {
                what: "relocation table (DT_RELA)",
                ..
            }
        ),
        "{e}"
    );
    // DT_RELAENT other than 24.
    let mut file = build(&pie());
    let dyn_off = find_dynamic(&file);
    put(&mut file, dyn_off + 2 * 16 + 8, &16u64.to_le_bytes());
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(
        e,
        LoadError::BadDynamicEntry {
            tag: "DT_RELAENT",
            value: 16,
            ..
        }
    ));
    // DT_RELASZ not a multiple of 24.
    let mut file = build(&pie());
    put(&mut file, dyn_off + 16 + 8, &20u64.to_le_bytes());
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(e, LoadError::RelaSizeNotMultiple(20)));
    // DT_REL (instead of DT_RELA) relocations.
    let mut file = build(&pie());
    put(&mut file, dyn_off + 16, &DT_RELSZ.to_le_bytes());
    let e = KernelImage::parse(file).unwrap_err();
    assert!(matches!(e, LoadError::UnsupportedRelocationTable("DT_REL")));
}

#[test]
fn resolves_symbol_relocations() {
    let mut spec = pie();
    spec.syms = vec![
        TestSym {
            value: 0x300,
            shndx: 1,
            bind: STB_GLOBAL,
        },
        TestSym {
            value: 0,
            shndx: SHN_UNDEF as u16,
            bind: STB_WEAK,
        },
        TestSym {
            value: 0xDEAD_0000,
            shndx: SHN_ABS as u16,
            bind: STB_GLOBAL,
        },
    ];
    spec.relocs = vec![
        Rela {
            offset: slot(&spec, 0),
            r_type: r_abs64(),
            sym: 1,
            addend: 0x10,
        },
        Rela {
            offset: slot(&spec, 1),
            r_type: r_glob_dat(),
            sym: 1,
            addend: 0,
        },
        Rela {
            offset: slot(&spec, 2),
            r_type: r_abs64(),
            sym: 2,
            addend: 0x10,
        },
        Rela {
            offset: slot(&spec, 3),
            r_type: r_abs64(),
            sym: 3,
            addend: 0xBE,
        },
        Rela {
            offset: slot(&spec, 4),
            r_type: r_abs64(),
            sym: 0,
            addend: 0x77,
        },
        Rela {
            offset: slot(&spec, 5),
            r_type: 0,
            sym: 0,
            addend: 0,
        }, // R_*_NONE
    ];
    let kernel = parse(&spec).unwrap();
    let base = 0x40_0000;
    let (_, image) = load_at(&kernel, base).unwrap();
    assert_eq!(read_u64(&image, DATA), base + 0x310);
    assert_eq!(read_u64(&image, DATA + 8), base + 0x300);
    assert_eq!(read_u64(&image, DATA + 16), 0);
    assert_eq!(read_u64(&image, DATA + 24), 0xDEAD_00BE);
    assert_eq!(read_u64(&image, DATA + 32), 0x77);
    assert_eq!(
        read_u64(&image, DATA + 40),
        u64::from_le_bytes([SLOT_FILL; 8])
    );

    // An undefined strong symbol cannot be resolved.
    spec.syms[1].bind = STB_GLOBAL;
    let e = parse_err(&spec);
    assert!(
        matches!(
            e,
            LoadError::UndefinedSymbol {
                index: 2,
                symbol: 2
            }
        ),
        "{e}"
    );
    // A symbol index beyond the file.
    spec.relocs.truncate(1);
    spec.relocs[0].sym = 0x00FF_FFFF;
    assert!(matches!(parse_err(&spec), LoadError::Unmapped { .. }));
}

#[test]
fn reloc_kind_maps_both_architectures() {
    for (machine, rel, abs, glob) in [(EM_X86_64, 8, 1, 6), (EM_AARCH64, 1027, 257, 1025)] {
        assert_eq!(reloc_kind(machine, rel), Some(RelocKind::Relative));
        assert_eq!(reloc_kind(machine, abs), Some(RelocKind::Symbol));
        assert_eq!(reloc_kind(machine, glob), Some(RelocKind::Symbol));
        assert_eq!(reloc_kind(machine, 0), Some(RelocKind::None));
        assert_eq!(reloc_kind(machine, 7), None); // JUMP_SLOT on x86_64
        assert_eq!(reloc_kind(machine, 1026), None); // JUMP_SLOT on aarch64
    }
    assert_eq!(reloc_kind(EM_X86_64, 1027), None);
    assert_eq!(reloc_kind(EM_AARCH64, 8), None);
}

#[test]
fn rejects_bad_segment_layouts() {
    let e = parse_err(&Spec {
        edit_phdrs: |p| p.retain(|p| p.p_type != PT_LOAD),
        ..pie()
    });
    assert!(matches!(e, LoadError::NoLoadSegment), "{e}");

    let e = parse_err(&Spec {
        edit_phdrs: |p| p[0].memsz = p[0].filesz - 1,
        ..pie()
    });
    assert!(
        matches!(e, LoadError::SegmentFileSizeExceedsMemSize { index: 0, .. }),
        "{e}"
    );

    // A second PT_LOAD starting inside the first one.
    let overlapping = |p: &mut Vec<Phdr>| {
        let mut second = p[0];
        second.vaddr += p[0].memsz - 8;
        second.offset = 0;
        second.filesz = 0x10;
        second.memsz = 0x10;
        p.insert(1, second);
    };
    let e = parse_err(&Spec {
        edit_phdrs: overlapping,
        ..pie()
    });
    assert!(
        matches!(e, LoadError::SegmentsOverlap { index: 1, .. }),
        "{e}"
    );

    // A second PT_LOAD below the first one.
    let unsorted = |p: &mut Vec<Phdr>| {
        let mut second = p[0];
        second.vaddr = 0x1000;
        second.memsz = 0x10;
        second.filesz = 0x10;
        p.insert(1, second);
    };
    let e = parse_err(&Spec {
        edit_phdrs: unsorted,
        ..exec()
    });
    assert!(
        matches!(
            e,
            LoadError::SegmentsNotSorted {
                index: 1,
                vaddr: 0x1000
            }
        ),
        "{e}"
    );

    // A PT_LOAD whose file bytes lie beyond the end of the file.
    let e = parse_err(&Spec {
        edit_phdrs: |p| p[0].filesz += 1,
        ..pie()
    });
    assert!(matches!(&e, LoadError::Truncated { what, .. } if what == "segment 0 (PT_LOAD)"));

    let e = parse_err(&Spec {
        edit_phdrs: |p| p[0].align = 0x1800,
        ..pie()
    });
    assert!(
        matches!(
            e,
            LoadError::BadSegmentAlignment {
                index: 0,
                align: 0x1800
            }
        ),
        "{e}"
    );
}

#[test]
fn rejects_absurd_footprints() {
    let e = parse_err(&Spec {
        edit_phdrs: |p| p[0].memsz = (1 << 40) + 1,
        ..pie()
    });
    assert!(matches!(e, LoadError::FootprintTooLarge(_)), "{e}");
    let e = parse_err(&Spec {
        edit_phdrs: |p| p[0].memsz = u64::MAX,
        ..exec()
    });
    assert!(matches!(e, LoadError::FootprintTooLarge(_)), "{e}");
    // Exactly 1 TiB is still accepted by `parse` (no memory is allocated there).
    assert!(
        parse(&Spec {
            edit_phdrs: |p| p[0].memsz = 1 << 40,
            ..pie()
        })
        .is_ok()
    );
}

#[test]
fn rejects_entry_and_tls_outside_the_image() {
    let mut file = build(&pie());
    put(&mut file, 24, &0x10_0000u64.to_le_bytes()); // e_entry
    let e = KernelImage::parse(file).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::EntryOutsideImage {
                entry: 0x10_0000,
                ..
            }
        ),
        "{e}"
    );

    let e = parse_err(&Spec {
        edit_phdrs: |p| {
            if let Some(tls) = p.iter_mut().find(|p| p.p_type == PT_TLS) {
                tls.vaddr = 0x10_0000;
            }
        },
        ..pie()
    });
    assert!(matches!(e, LoadError::TlsOutsideImage { .. }), "{e}");
}

#[test]
fn tls_absent_or_all_zero_is_none() {
    let kernel = parse(&Spec {
        tls: false,
        ..pie()
    })
    .unwrap();
    assert_eq!(load_at(&kernel, 0).unwrap().0.tls, None);
    let zero_tls = |p: &mut Vec<Phdr>| {
        if let Some(tls) = p.iter_mut().find(|p| p.p_type == PT_TLS) {
            *tls = Phdr {
                p_type: PT_TLS,
                offset: 0,
                vaddr: 0,
                filesz: 0,
                memsz: 0,
                align: 0,
            };
        }
    };
    let kernel = parse(&Spec {
        edit_phdrs: zero_tls,
        ..pie()
    })
    .unwrap();
    assert_eq!(load_at(&kernel, 0).unwrap().0.tls, None);
}

#[test]
fn rejects_images_that_are_not_unikernels() {
    let e = parse_err(&Spec {
        interp: true,
        ..pie()
    });
    assert!(matches!(e, LoadError::HasInterpreter), "{e}");
    let e = parse_err(&Spec {
        needed: true,
        ..pie()
    });
    assert!(matches!(e, LoadError::NeedsSharedLibraries), "{e}");
}

#[test]
fn load_rejects_wrong_buffers_and_bases() {
    let kernel = parse(&pie()).unwrap();
    let footprint = kernel.footprint() as usize;
    for len in [0, footprint - 1, footprint + 1] {
        let mut image = vec![0u8; len];
        assert!(matches!(
            kernel.load(0, &mut image),
            Err(LoadError::WrongImageSize { .. })
        ));
    }
    let mut image = vec![0u8; footprint];
    assert!(matches!(
        kernel.load(0x20_0800, &mut image),
        Err(LoadError::MisalignedBase { align: 0x1000, .. })
    ));
    let kernel = parse(&Spec {
        edit_phdrs: |p| p[0].memsz = 0x2000,
        ..pie()
    })
    .unwrap();
    let mut image = vec![0u8; 0x2000];
    assert!(matches!(
        kernel.load(!0xFFF, &mut image),
        Err(LoadError::BaseOverflow { .. })
    ));
}

#[test]
fn error_messages_are_single_lines() {
    let errors = [
        parse_err(&Spec {
            machine: other_machine(),
            ..pie()
        }),
        parse_err(&Spec {
            entry_version: None,
            ..pie()
        }),
        KernelImage::parse(build(&pie())[..100].to_vec()).unwrap_err(),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    }
}

#[test]
fn malformed_fixtures_are_rejected() {
    let not_elf = include_bytes!("../../tests/fixtures/malformed/not-elf.txt");
    assert!(matches!(
        KernelImage::parse(not_elf.to_vec()),
        Err(LoadError::NotElf)
    ));
    let elf32 = include_bytes!("../../tests/fixtures/malformed/elf32-header.bin");
    assert!(matches!(
        KernelImage::parse(elf32.to_vec()),
        Err(LoadError::Not64Bit(1))
    ));
    let truncated = include_bytes!("../../tests/fixtures/malformed/x86_64-truncated-phdrs.bin");
    let e = KernelImage::parse(truncated.to_vec()).unwrap_err();
    if host_machine() == EM_X86_64 {
        assert!(
            matches!(&e, LoadError::Truncated { what, .. } if what == "program header table"),
            "{e}"
        );
    } else {
        assert!(
            matches!(
                e,
                LoadError::WrongMachine {
                    machine: EM_X86_64,
                    ..
                }
            ),
            "{e}"
        );
    }
}

/// Real Hermit images from `$UHYVE_TEST_IMAGES` (see `/work/shared/hermit-images/README.md`).
#[test]
fn real_hermit_images() {
    let Some(dir) = std::env::var_os("UHYVE_TEST_IMAGES") else {
        eprintln!("real_hermit_images: skipped (set UHYVE_TEST_IMAGES to the image folder)");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();

    let hello_world = read("x86_64-hello_world");
    let aarch64 = read("aarch64-hello_world");
    if host_machine() == EM_X86_64 {
        let kernel = KernelImage::parse(hello_world.clone()).unwrap();
        assert!(kernel.is_position_independent());
        assert_eq!(kernel.entry_version(), 4);
        assert_eq!(kernel.interface_version(), 1);
        assert_eq!(kernel.kernel_version(), None);
        assert_eq!(kernel.footprint(), 0x9a3c0 + 0x2240);
        assert_eq!(kernel.relocations.len(), 2245);
        for base in [0x4_0000u64, 0x1234_0000] {
            let (loaded, _) = load_at(&kernel, base).unwrap();
            assert_eq!(loaded.entry_point, base + 0x360e0);
            assert_eq!(loaded.image_range, base..base + kernel.footprint());
            assert_eq!(
                loaded.tls,
                Some(TlsTemplate {
                    start: base + 0x906f8,
                    filesz: 0x20,
                    memsz: 0x81,
                    align: 8
                })
            );
        }

        let kernel = KernelImage::parse(read("x86_64-hello_c")).unwrap();
        assert!(!kernel.is_position_independent());
        assert_eq!(kernel.fixed_load_address(), Some(0x80_0000));
        assert_eq!(kernel.entry_version(), 4);
        assert_eq!(kernel.interface_version(), 1);
        let (loaded, _) = load_at(&kernel, 0x80_0000).unwrap();
        assert_eq!(loaded.entry_point, 0x8422a0);
        assert_eq!(loaded.image_range, 0x80_0000..0x80_0000 + 0x147480);
        assert_eq!(
            loaded.tls,
            Some(TlsTemplate {
                start: 0x8ca000,
                filesz: 0,
                memsz: 4,
                align: 4
            })
        );
        assert!(matches!(
            load_at(&kernel, 0x40_0000),
            Err(LoadError::FixedAddressMismatch { .. })
        ));

        let e = KernelImage::parse(aarch64.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::WrongMachine {
                    machine: EM_AARCH64,
                    ..
                }
            ),
            "{e}"
        );
        // The aarch64 boot path can still be prepared (and tested) on this host.
        let kernel = KernelImage::parse_for(aarch64, EM_AARCH64).unwrap();
        assert!(kernel.is_position_independent());
        assert_eq!(kernel.kernel_version(), Some((0, 11, 0)));
        assert_eq!(kernel.interface_version(), 1);
        assert_eq!(kernel.load_alignment(), 0x10000);
        let base = 0x1000_0000 + 0x4_0000;
        let (loaded, image) = load_at(&kernel, base).unwrap();
        assert_eq!(loaded.entry_point, base + 0x64c4c);
        assert_eq!(loaded.image_range.start, base);
        assert!(
            loaded
                .tls
                .is_some_and(|tls| tls.start >= base && tls.align == 8)
        );
        assert_eq!(image.len() as u64, kernel.footprint());
    } else {
        let e = KernelImage::parse(hello_world.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::WrongMachine {
                    machine: EM_X86_64,
                    ..
                }
            ),
            "{e}"
        );
        let kernel = KernelImage::parse(aarch64).unwrap();
        assert_eq!(kernel.kernel_version(), Some((0, 11, 0)));
        let (loaded, _) = load_at(&kernel, 0x1000_0000).unwrap();
        assert_eq!(loaded.entry_point, 0x1000_0000 + 0x64c4c);
    }

    // Byte-for-byte cross-check against hermit-entry's loader (fine on these well-formed
    // files; it panics on malformed ones, which is why uhyve does not use it).
    let references: &[(&str, u64)] = if host_machine() == EM_X86_64 {
        &[
            ("x86_64-hello_world", 0x4_0000),
            ("x86_64-hello_c", 0x80_0000),
        ]
    } else {
        &[("aarch64-hello_world", 0x1000_0000)]
    };
    for &(name, base) in references {
        let file = read(name);
        let reference = hermit_entry::elf::KernelObject::parse(&file).unwrap();
        let mut expected = vec![std::mem::MaybeUninit::new(0u8); reference.mem_size()];
        let expected_kernel = reference.load_kernel(&mut expected, base);
        let kernel = KernelImage::parse(file.clone()).unwrap();
        let (loaded, image) = load_at(&kernel, base).unwrap();
        // SAFETY: every byte of `expected` was initialized by `MaybeUninit::new(0)` above.
        let expected: Vec<u8> = expected
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert!(
            image == expected,
            "loaded image differs from hermit-entry's"
        );
        assert_eq!(loaded.entry_point, expected_kernel.entry_point);
        assert_eq!(
            loaded.image_range,
            expected_kernel.load_info.kernel_image_addr_range
        );
        let tls = expected_kernel.load_info.tls_info.unwrap();
        assert_eq!(
            loaded.tls,
            Some(TlsTemplate {
                start: tls.start,
                filesz: tls.filesz,
                memsz: tls.memsz,
                align: tls.align,
            })
        );
    }

    // Truncation at ~200 lengths (denser near the start, where the headers are).
    let len = hello_world.len();
    let mut lengths: Vec<usize> = (0..180).map(|i| len * i / 180).collect();
    lengths.extend([1, 4, 15, 16, 63, 64, 100, 0x2a8, 0x2b0, 0x2c0, 0x338, 0x400]);
    lengths.extend([len - 1, len - 64, len - 1000]);
    for cut in lengths {
        let result = parse_and_load(hello_world[..cut].to_vec());
        assert!(result.is_err(), "truncation at {cut} bytes was accepted");
    }
}
