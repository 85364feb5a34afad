//! Test-only builder of synthetic Hermit kernel ELF files: a [`Spec`] describes the image (class,
//! machine, notes, relocations, symbols, extra segments, a program-header mutation hook) and
//! [`build`] writes the bytes. The loader tests start from the good [`pie`] and [`exec`] specs and
//! change one thing at a time.
//!
//! Layout of the synthetic images (file offsets; the single `PT_LOAD` maps the whole file at
//! `vbase`): ELF header, program headers, 8-byte relocation target slots, a TLS template, notes,
//! then the dynamic section, RELA table, symbol table, string table and interpreter path.

use goblin::elf::dynamic::{
    DT_NEEDED, DT_NULL, DT_RELA, DT_RELAENT, DT_RELASZ, DT_STRSZ, DT_STRTAB, DT_SYMENT, DT_SYMTAB,
};
use goblin::elf::header::{
    EI_CLASS, EI_DATA, EI_OSABI, ELFCLASS64, ELFDATA2LSB, ELFMAG, ELFOSABI_STANDALONE, EM_AARCH64,
    EM_X86_64, ET_DYN, ET_EXEC,
};
use goblin::elf::note::NT_GNU_ABI_TAG;
use goblin::elf::program_header::{PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_NOTE, PT_TLS};
use goblin::elf::reloc::{
    R_AARCH64_ABS64, R_AARCH64_GLOB_DAT, R_AARCH64_RELATIVE, R_X86_64_64, R_X86_64_GLOB_DAT,
    R_X86_64_RELATIVE,
};

use crate::arch::GuestArch;

use super::notes::{NT_HERMIT_ENTRY_VERSION, NT_UHYVE_INTERFACE_VERSION};

/// File offset (and, at `vbase`, address) of the 8-byte relocation target slots.
pub(super) const DATA: usize = 0x200;
/// File offset of the TLS template's initialised bytes (1, 2, 3, …).
pub(super) const TLS_DATA: usize = 0x240;
pub(super) const TLS_FILESZ: u64 = 0x10;
pub(super) const TLS_MEMSZ: u64 = 0x30;
/// File offset of the notes.
pub(super) const NOTES: usize = 0x280;
/// `e_entry - vbase`.
pub(super) const ENTRY_OFF: u64 = 0x100;
/// Bytes of BSS after the file data in the `PT_LOAD` segment.
pub(super) const BSS: u64 = 0x100;
/// Link address of the [`exec`] image.
pub(super) const EXEC_ADDR: u64 = 0x80_0000;
/// The byte the relocation slots are filled with before relocation.
pub(super) const SLOT_FILL: u8 = 0xAA;

/// Size of the ELF header, where the program headers start.
const EHDR_SIZE: usize = 0x40;
/// Size of one program header.
const PHDR_SIZE: usize = 56;
/// Size of one dynamic entry, RELA entry and symbol.
const DYN_SIZE: usize = 16;
const RELA_SIZE: usize = 24;
const SYM_SIZE: usize = 24;

/// The ELF machine of the host, which `KernelImage::parse` expects.
pub(super) fn host_machine() -> u16 {
    GuestArch::HOST.elf_machine()
}

/// The architecture a test image must NOT be built for.
pub(super) fn other_machine() -> u16 {
    if host_machine() == EM_X86_64 {
        EM_AARCH64
    } else {
        EM_X86_64
    }
}

/// Host numbers of RELATIVE, ABS64 and GLOB_DAT.
pub(super) fn r_relative() -> u32 {
    if host_machine() == EM_X86_64 {
        R_X86_64_RELATIVE
    } else {
        R_AARCH64_RELATIVE
    }
}
pub(super) fn r_abs64() -> u32 {
    if host_machine() == EM_X86_64 {
        R_X86_64_64
    } else {
        R_AARCH64_ABS64
    }
}
pub(super) fn r_glob_dat() -> u32 {
    if host_machine() == EM_X86_64 {
        R_X86_64_GLOB_DAT
    } else {
        R_AARCH64_GLOB_DAT
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Rela {
    pub(super) offset: u64,
    pub(super) r_type: u32,
    pub(super) sym: u32,
    pub(super) addend: i64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TestSym {
    pub(super) value: u64,
    pub(super) shndx: u16,
    pub(super) bind: u8,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Phdr {
    pub(super) p_type: u32,
    pub(super) offset: u64,
    pub(super) vaddr: u64,
    pub(super) filesz: u64,
    pub(super) memsz: u64,
    pub(super) align: u64,
}

#[derive(Clone)]
pub(super) struct Spec {
    pub(super) class: u8,
    pub(super) data: u8,
    pub(super) osabi: u8,
    pub(super) e_type: u16,
    pub(super) machine: u16,
    pub(super) vbase: u64,
    pub(super) entry_version: Option<u8>,
    pub(super) uhyveif: Option<u32>,
    pub(super) abi_tag: Option<[u32; 4]>,
    pub(super) relocs: Vec<Rela>,
    pub(super) syms: Vec<TestSym>,
    pub(super) needed: bool,
    pub(super) interp: bool,
    pub(super) tls: bool,
    /// Last-minute change to the program headers (mutation hook).
    pub(super) edit_phdrs: fn(&mut Vec<Phdr>),
}

/// Address of relocation target slot `k`.
pub(super) fn slot(spec: &Spec, k: u64) -> u64 {
    spec.vbase + DATA as u64 + 8 * k
}

/// A good PIE: one RELATIVE relocation in slot 0, TLS, entry version 4, no UHYVEIF note.
pub(super) fn pie() -> Spec {
    let mut spec = Spec {
        class: ELFCLASS64,
        data: ELFDATA2LSB,
        osabi: ELFOSABI_STANDALONE,
        e_type: ET_DYN,
        machine: host_machine(),
        vbase: 0,
        entry_version: Some(4),
        uhyveif: None,
        abi_tag: None,
        relocs: Vec::new(),
        syms: Vec::new(),
        needed: false,
        interp: false,
        tls: true,
        edit_phdrs: |_| {},
    };
    spec.relocs.push(Rela {
        offset: slot(&spec, 0),
        r_type: r_relative(),
        sym: 0,
        addend: 0x1234,
    });
    spec
}

/// A good ET_EXEC linked at `EXEC_ADDR`, without a dynamic section.
pub(super) fn exec() -> Spec {
    Spec {
        e_type: ET_EXEC,
        vbase: EXEC_ADDR,
        relocs: Vec::new(),
        ..pie()
    }
}

/// Appends one ELF note (4-byte aligned name and descriptor).
pub(super) fn push_note(out: &mut Vec<u8>, name: &str, n_type: u32, desc: &[u8]) {
    let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(4), 0);
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(desc);
    pad(out);
}

/// Writes `value` at offset `at` of `buf`.
pub(super) fn put(buf: &mut [u8], at: usize, value: &[u8]) {
    buf[at..at + value.len()].copy_from_slice(value);
}

pub(super) fn read_u64(image: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(image[at..at + 8].try_into().unwrap())
}

/// File offset of the dynamic section of a built image (from its PT_DYNAMIC header).
pub(super) fn find_dynamic(file: &[u8]) -> usize {
    (0..8)
        .map(|i| EHDR_SIZE + i * PHDR_SIZE)
        .find(|&at| u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) == PT_DYNAMIC)
        .map(|at| read_u64(file, at + 8) as usize)
        .unwrap()
}

/// The string table (only present with `needed`: it names the library) and interpreter path.
const STRTAB: &[u8] = b"\0libc.so\0";
const INTERP: &[u8] = b"/lib/ld.so\0";

/// Where [`build`] puts the variable-size tables of an image (file offsets and lengths).
struct Layout {
    notes: Vec<u8>,
    /// Symbols including the null symbol 0; none at all without `spec.syms`.
    nsyms: usize,
    has_dynamic: bool,
    dyn_off: usize,
    dyn_len: usize,
    rela_off: usize,
    rela_len: usize,
    sym_off: usize,
    str_off: usize,
    interp_off: usize,
    file_len: usize,
}

impl Layout {
    /// Sizes first, then positions.
    fn of(spec: &Spec) -> Layout {
        let notes = notes(spec);
        let nsyms = if spec.syms.is_empty() {
            0
        } else {
            spec.syms.len() + 1
        };
        let mut ndyn = 0;
        if !spec.relocs.is_empty() {
            ndyn += 3;
        }
        if nsyms > 0 {
            ndyn += 2;
        }
        if spec.needed {
            ndyn += 3;
        }
        let has_dynamic = ndyn > 0;
        let dyn_off = NOTES + notes.len();
        let dyn_len = if has_dynamic {
            (ndyn + 1) * DYN_SIZE
        } else {
            0
        };
        let rela_off = dyn_off + dyn_len;
        let rela_len = spec.relocs.len() * RELA_SIZE;
        let sym_off = rela_off + rela_len;
        let str_off = sym_off + nsyms * SYM_SIZE;
        let interp_off = str_off + if spec.needed { STRTAB.len() } else { 0 };
        let file_len = interp_off + if spec.interp { INTERP.len() } else { 0 };
        Layout {
            notes,
            nsyms,
            has_dynamic,
            dyn_off,
            dyn_len,
            rela_off,
            rela_len,
            sym_off,
            str_off,
            interp_off,
            file_len,
        }
    }
}

/// The notes of `spec`: GNU ABI tag, HERMIT entry version, UHYVEIF interface version.
fn notes(spec: &Spec) -> Vec<u8> {
    let mut notes = Vec::new();
    if let Some(abi) = spec.abi_tag {
        let desc: Vec<u8> = abi.iter().flat_map(|w| w.to_le_bytes()).collect();
        push_note(&mut notes, "GNU", NT_GNU_ABI_TAG, &desc);
    }
    if let Some(version) = spec.entry_version {
        push_note(&mut notes, "HERMIT", NT_HERMIT_ENTRY_VERSION, &[version]);
    }
    if let Some(version) = spec.uhyveif {
        push_note(
            &mut notes,
            "UHYVEIF",
            NT_UHYVE_INTERFACE_VERSION,
            &version.to_be_bytes(),
        );
    }
    notes
}

/// Builds the ELF file described by `spec`.
pub(super) fn build(spec: &Spec) -> Vec<u8> {
    let layout = Layout::of(spec);
    let mut f = vec![0u8; layout.file_len];
    f[DATA..TLS_DATA].fill(SLOT_FILL);
    for (i, b) in f[TLS_DATA..TLS_DATA + TLS_FILESZ as usize]
        .iter_mut()
        .enumerate()
    {
        *b = i as u8 + 1;
    }
    put(&mut f, NOTES, &layout.notes);
    write_dynamic(&mut f, spec, &layout);
    write_relocations_and_symbols(&mut f, spec, &layout);
    if spec.needed {
        put(&mut f, layout.str_off, STRTAB);
    }
    if spec.interp {
        put(&mut f, layout.interp_off, INTERP);
    }
    let phdrs = program_headers(spec, &layout);
    write_program_headers(&mut f, &phdrs);
    write_elf_header(&mut f, spec, phdrs.len());
    f
}

/// Writes the dynamic section: RELA table, symbol table, `DT_NEEDED`, as `spec` asks.
fn write_dynamic(f: &mut [u8], spec: &Spec, layout: &Layout) {
    let v = spec.vbase;
    let mut dyns: Vec<(u64, u64)> = Vec::new();
    if !spec.relocs.is_empty() {
        dyns.push((DT_RELA, v + layout.rela_off as u64));
        dyns.push((DT_RELASZ, layout.rela_len as u64));
        dyns.push((DT_RELAENT, RELA_SIZE as u64));
    }
    if layout.nsyms > 0 {
        dyns.push((DT_SYMTAB, v + layout.sym_off as u64));
        dyns.push((DT_SYMENT, SYM_SIZE as u64));
    }
    if spec.needed {
        dyns.push((DT_STRTAB, v + layout.str_off as u64));
        dyns.push((DT_STRSZ, STRTAB.len() as u64));
        dyns.push((DT_NEEDED, 1));
    }
    if layout.has_dynamic {
        dyns.push((DT_NULL, 0));
    }
    for (i, (tag, val)) in dyns.iter().enumerate() {
        put(f, layout.dyn_off + i * DYN_SIZE, &tag.to_le_bytes());
        put(f, layout.dyn_off + i * DYN_SIZE + 8, &val.to_le_bytes());
    }
}

/// Writes the RELA entries and the symbols (after the null symbol 0).
fn write_relocations_and_symbols(f: &mut [u8], spec: &Spec, layout: &Layout) {
    for (i, r) in spec.relocs.iter().enumerate() {
        let at = layout.rela_off + i * RELA_SIZE;
        let info = (u64::from(r.sym) << 32) | u64::from(r.r_type);
        put(f, at, &r.offset.to_le_bytes());
        put(f, at + 8, &info.to_le_bytes());
        put(f, at + 16, &r.addend.to_le_bytes());
    }
    for (i, s) in spec.syms.iter().enumerate() {
        let at = layout.sym_off + (i + 1) * SYM_SIZE;
        f[at + 4] = s.bind << 4;
        put(f, at + 6, &s.shndx.to_le_bytes());
        put(f, at + 8, &s.value.to_le_bytes());
    }
}

/// The program headers of `spec`, after its `edit_phdrs` hook.
fn program_headers(spec: &Spec, layout: &Layout) -> Vec<Phdr> {
    let ph = |p_type, offset: usize, filesz: usize, memsz: u64, align| Phdr {
        p_type,
        offset: offset as u64,
        vaddr: spec.vbase + offset as u64,
        filesz: filesz as u64,
        memsz,
        align,
    };
    let file_len = layout.file_len;
    let notes_len = layout.notes.len();
    let mut phdrs = vec![
        ph(PT_LOAD, 0, file_len, file_len as u64 + BSS, 0x1000),
        ph(PT_NOTE, NOTES, notes_len, notes_len as u64, 4),
    ];
    if layout.has_dynamic {
        let (dyn_off, dyn_len) = (layout.dyn_off, layout.dyn_len);
        phdrs.push(ph(PT_DYNAMIC, dyn_off, dyn_len, dyn_len as u64, 8));
    }
    if spec.tls {
        phdrs.push(ph(PT_TLS, TLS_DATA, TLS_FILESZ as usize, TLS_MEMSZ, 8));
    }
    if spec.interp {
        let len = INTERP.len();
        phdrs.push(ph(PT_INTERP, layout.interp_off, len, len as u64, 1));
    }
    (spec.edit_phdrs)(&mut phdrs);
    phdrs
}

fn write_program_headers(f: &mut [u8], phdrs: &[Phdr]) {
    assert!(
        EHDR_SIZE + phdrs.len() * PHDR_SIZE <= DATA,
        "too many program headers for the layout"
    );
    for (i, p) in phdrs.iter().enumerate() {
        let at = EHDR_SIZE + i * PHDR_SIZE;
        put(f, at, &p.p_type.to_le_bytes());
        put(f, at + 4, &4u32.to_le_bytes()); // PF_R
        put(f, at + 8, &p.offset.to_le_bytes());
        put(f, at + 16, &p.vaddr.to_le_bytes());
        put(f, at + 24, &p.vaddr.to_le_bytes());
        put(f, at + 32, &p.filesz.to_le_bytes());
        put(f, at + 40, &p.memsz.to_le_bytes());
        put(f, at + 48, &p.align.to_le_bytes());
    }
}

fn write_elf_header(f: &mut [u8], spec: &Spec, phnum: usize) {
    put(f, 0, ELFMAG);
    f[EI_CLASS] = spec.class;
    f[EI_DATA] = spec.data;
    f[6] = 1; // EI_VERSION
    f[EI_OSABI] = spec.osabi;
    put(f, 16, &spec.e_type.to_le_bytes());
    put(f, 18, &spec.machine.to_le_bytes());
    put(f, 20, &1u32.to_le_bytes());
    put(f, 24, &(spec.vbase + ENTRY_OFF).to_le_bytes());
    put(f, 32, &(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(f, 54, &(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    put(f, 56, &(phnum as u16).to_le_bytes());
    put(f, 58, &64u16.to_le_bytes()); // e_shentsize
}
