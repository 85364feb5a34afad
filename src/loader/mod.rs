//! Hermit kernel image loader: validates a Hermit unikernel ELF file, reads its notes (entry
//! version, uhyve interface version, kernel version), copies its `PT_LOAD` segments into a
//! caller-provided image buffer and applies its dynamic relocations.
//!
//! The ELF structures are parsed with `goblin`'s lazy, program-header-driven pieces (header,
//! program headers, `PT_DYNAMIC`, RELA table, single dynamic symbols, `PT_NOTE` iterator); section
//! headers are never needed. The file is hostile input: every offset, size and address it contains
//! is range-checked with overflow-safe arithmetic before use, and every problem becomes a
//! [`LoadError`] (never a panic). All checks happen in [`KernelImage::parse`]; [`KernelImage::load`]
//! only re-checks the bounds it writes to. Format facts: the Hermit ABI fact sheet, §1 (image format).

use std::ops::Range;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::Elf;
use goblin::elf::dynamic::{
    DT_NEEDED, DT_NULL, DT_PLTRELSZ, DT_RELA, DT_RELAENT, DT_RELASZ, DT_RELSZ, DT_SYMENT,
    DT_SYMTAB, Dynamic,
};
use goblin::elf::header::{
    EI_CLASS, EI_DATA, EI_OSABI, ELFCLASS64, ELFDATA2LSB, ELFMAG, ELFOSABI_STANDALONE, EM_AARCH64,
    EM_X86_64, ET_DYN, ET_EXEC, SELFMAG, SIZEOF_IDENT, et_to_str, machine_to_str,
};
use goblin::elf::note::{NT_GNU_ABI_TAG, NoteDataIterator};
use goblin::elf::program_header::{PT_INTERP, PT_LOAD, PT_NOTE, PT_TLS, ProgramHeader, pt_to_str};
use goblin::elf::reloc::{
    R_AARCH64_ABS64, R_AARCH64_GLOB_DAT, R_AARCH64_NONE, R_AARCH64_RELATIVE, R_X86_64_64,
    R_X86_64_GLOB_DAT, R_X86_64_NONE, R_X86_64_RELATIVE, RelocSection, r_to_str,
};
use goblin::elf::section_header::{SHN_ABS, SHN_UNDEF};
use goblin::elf::sym::{STB_WEAK, Symtab};
use goblin::elf64::header::SIZEOF_EHDR;
use goblin::elf64::program_header::SIZEOF_PHDR;
use goblin::elf64::reloc::SIZEOF_RELA;
use goblin::elf64::sym::SIZEOF_SYM;
use log::{debug, warn};

/// The uhyve hypercall interface versions this uhyve serves.
pub const SUPPORTED_INTERFACE_VERSIONS: [u32; 3] = uhyve_interface::SUPPORTED_INTERFACE_VERSIONS;

/// Hermit entry (boot ABI) versions whose boot-info layout uhyve fills (identical for 3 and 4).
pub const SUPPORTED_ENTRY_VERSIONS: [u8; 2] = [3, 4];

/// Largest memory footprint accepted for a kernel image (1 TiB); anything larger is corrupt.
pub const MAX_FOOTPRINT: u64 = 1 << 40;

/// ELF machine of the host: guests must be built for it (same-architecture virtualization only).
/// Hosts other than x86_64 and aarch64 have no backend; they get the x86_64 value.
pub const HOST_MACHINE: u16 = if cfg!(target_arch = "aarch64") {
    EM_AARCH64
} else {
    EM_X86_64
};

/// Owner name and type of the Hermit entry-version note (descriptor: one byte).
const HERMIT_NOTE_NAME: &str = "HERMIT";
const NT_HERMIT_ENTRY_VERSION: u32 = 0x5A00;
/// Owner name and type of the uhyve interface-version note (descriptor: u32 big-endian).
const UHYVEIF_NOTE_NAME: &str = "UHYVEIF";
const NT_UHYVE_INTERFACE_VERSION: u32 = 0x5B00;
/// Owner name of the GNU ABI-tag note and the OS id Hermit puts in its first word.
const GNU_NOTE_NAME: &str = "GNU";
const ELF_NOTE_OS_HERMIT: u32 = 6;

/// Everything that can be wrong with a kernel image. Each message is one line naming the problem;
/// the caller prefixes the file name.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not an ELF file (bad magic bytes)")]
    NotElf,
    #[error("not a 64-bit ELF file (EI_CLASS is {0}, expected 2)")]
    Not64Bit(u8),
    #[error("not a little-endian ELF file (EI_DATA is {0}, expected 1)")]
    NotLittleEndian(u8),
    #[error(
        "built for {} (e_machine {machine}), but this uhyve runs {} guests",
        machine_name(*machine),
        machine_name(*expected)
    )]
    WrongMachine { machine: u16, expected: u16 },
    #[error(
        "ELF type {e_type} ({}) is not an executable: a Hermit kernel is ET_EXEC or ET_DYN",
        et_to_str(*e_type)
    )]
    NotExecutable { e_type: u16 },
    #[error(
        "file is truncated: {what} (bytes {offset:#x}+{size:#x}) extends beyond the end of the file ({file_len:#x} bytes)"
    )]
    Truncated {
        what: String,
        offset: u64,
        size: u64,
        file_len: u64,
    },
    #[error("program header entry size is {0} bytes, expected 56")]
    BadProgramHeaderSize(u16),
    #[error("cannot parse {what}: {source}")]
    Parse {
        what: &'static str,
        source: goblin::error::Error,
    },
    #[error("no PT_LOAD segment: the file contains nothing to load")]
    NoLoadSegment,
    #[error("has a PT_INTERP segment (asks for a dynamic linker): not a Hermit unikernel")]
    HasInterpreter,
    #[error("needs shared libraries (DT_NEEDED): not a statically linked Hermit unikernel")]
    NeedsSharedLibraries,
    #[error("PT_LOAD segment {index} has p_filesz {filesz:#x} larger than p_memsz {memsz:#x}")]
    SegmentFileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error(
        "PT_LOAD segment {index} at {vaddr:#x} comes before the previous one: segments are not sorted by address"
    )]
    SegmentsNotSorted { index: usize, vaddr: u64 },
    #[error(
        "PT_LOAD segment {index} at {vaddr:#x} overlaps the previous one, which ends at {previous_end:#x}"
    )]
    SegmentsOverlap {
        index: usize,
        vaddr: u64,
        previous_end: u64,
    },
    #[error("PT_LOAD segment {index} has alignment {align:#x}, which is not a power of two")]
    BadSegmentAlignment { index: usize, align: u64 },
    #[error("memory footprint is absurd or overflows ({0}; the limit is 1 TiB)")]
    FootprintTooLarge(String),
    #[error("entry point {entry:#x} lies outside the image ({start:#x}..{end:#x})")]
    EntryOutsideImage { entry: u64, start: u64, end: u64 },
    #[error(
        "TLS template at {vaddr:#x} (+{filesz:#x} bytes) lies outside the image ({start:#x}..{end:#x})"
    )]
    TlsOutsideImage {
        vaddr: u64,
        filesz: u64,
        start: u64,
        end: u64,
    },
    #[error("malformed ELF note: {0}")]
    BadNote(goblin::error::Error),
    #[error("{note} note has a {len}-byte descriptor, expected {expected}")]
    BadNoteDescriptor {
        note: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("missing HERMIT entry-version note (type 0x5a00): not a Hermit kernel, or one too old")]
    MissingEntryVersion,
    #[error("entry version {0}, uhyve supports 3 and 4")]
    UnsupportedEntryVersion(u8),
    #[error("image needs uhyve interface version {0}, this uhyve speaks versions 1, 2 and 3")]
    UnsupportedInterfaceVersion(u32),
    #[error("dynamic section: {tag} is {value:#x}, expected {expected}")]
    BadDynamicEntry {
        tag: &'static str,
        value: u64,
        expected: u64,
    },
    #[error("dynamic section has {0} relocations, which uhyve does not support (only DT_RELA)")]
    UnsupportedRelocationTable(&'static str),
    #[error("dynamic section: DT_RELASZ {0:#x} is not a multiple of the entry size 24")]
    RelaSizeNotMultiple(u64),
    #[error("dynamic section: DT_RELASZ is {0:#x} but DT_RELA is missing")]
    MissingRelaTable(u64),
    #[error(
        "{what} at address {addr:#x} (+{size:#x} bytes) is not inside the file data of a PT_LOAD segment"
    )]
    Unmapped {
        what: &'static str,
        addr: u64,
        size: u64,
    },
    #[error("relocation {index} has type {r_type} ({}), which uhyve does not support", r_to_str(*r_type, *machine))]
    UnknownRelocation {
        index: usize,
        r_type: u32,
        machine: u16,
    },
    #[error(
        "relocation {index} writes 8 bytes at {addr:#x}, outside the image ({start:#x}..{end:#x})"
    )]
    RelocationOutOfImage {
        index: usize,
        addr: u64,
        start: u64,
        end: u64,
    },
    #[error("relocation {index} refers to symbol {symbol}, which is undefined (and not weak)")]
    UndefinedSymbol { index: usize, symbol: usize },
    #[error("image buffer is {got:#x} bytes, but the image's footprint is {expected:#x} bytes")]
    WrongImageSize { got: usize, expected: u64 },
    #[error(
        "image is linked at the fixed address {required:#x} (ET_EXEC) and cannot be loaded at {base:#x}"
    )]
    FixedAddressMismatch { base: u64, required: u64 },
    #[error("load address {base:#x} is not aligned to the segment alignment {align:#x}")]
    MisalignedBase { base: u64, align: u64 },
    #[error("load address {base:#x} plus footprint {footprint:#x} overflows the address space")]
    BaseOverflow { base: u64, footprint: u64 },
}

/// Human-readable architecture name of an ELF machine number.
fn machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        other => machine_to_str(other),
    }
}

/// A thread-local-storage template, as reported to the kernel in the boot info. The kernel copies
/// the template itself; `start` is a guest address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsTemplate {
    pub start: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// What [`KernelImage::load`] reports for the boot info and the initial registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Guest address of the kernel entry point.
    pub entry_point: u64,
    /// Guest addresses the image occupies.
    pub image_range: Range<u64>,
    /// The TLS template, if the kernel has one.
    pub tls: Option<TlsTemplate>,
}

/// One `PT_LOAD` segment, validated: its file bytes lie inside the file and its memory inside the
/// image.
#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    /// Index of the program header (for error messages).
    index: usize,
    file_offset: usize,
    filesz: usize,
    image_offset: usize,
    memsz: usize,
}

/// The value a relocation writes, relative to the load bias (`base - first_vaddr`) or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelocValue {
    /// Load bias plus this (wrapping) value.
    BiasPlus(u64),
    /// This exact value, independent of the load address.
    Absolute(u64),
}

/// One relocation, validated and resolved at parse time.
#[derive(Debug, Clone, Copy)]
struct Relocation {
    /// Position in the RELA table (for error messages).
    index: usize,
    /// Offset of the 8 bytes to write, relative to the image start; checked against the footprint.
    image_offset: usize,
    value: RelocValue,
}

/// What a relocation type does, independent of the architecture numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelocKind {
    None,
    Relative,
    /// `R_*_64` / `R_*_ABS64` and `R_*_GLOB_DAT`: symbol value plus addend.
    Symbol,
}

/// Maps an architecture's relocation number to what uhyve does with it; `None` if unsupported.
fn reloc_kind(machine: u16, r_type: u32) -> Option<RelocKind> {
    match (machine, r_type) {
        (EM_X86_64, R_X86_64_NONE) | (EM_AARCH64, R_AARCH64_NONE) => Some(RelocKind::None),
        (EM_X86_64, R_X86_64_RELATIVE) | (EM_AARCH64, R_AARCH64_RELATIVE) => {
            Some(RelocKind::Relative)
        }
        (EM_X86_64, R_X86_64_64 | R_X86_64_GLOB_DAT)
        | (EM_AARCH64, R_AARCH64_ABS64 | R_AARCH64_GLOB_DAT) => Some(RelocKind::Symbol),
        _ => None,
    }
}

/// A parsed and validated Hermit kernel image. Owns the file bytes.
#[derive(Debug)]
pub struct KernelImage {
    bytes: Vec<u8>,
    position_independent: bool,
    /// `e_entry` as linked.
    entry: u64,
    /// `p_vaddr` of the first `PT_LOAD` segment.
    first_vaddr: u64,
    footprint: u64,
    /// Largest `p_align` of the `PT_LOAD` segments (at least 1).
    load_align: u64,
    segments: Vec<LoadSegment>,
    /// `PT_TLS` as linked (`start` is a link-time address).
    tls: Option<TlsTemplate>,
    entry_version: u8,
    interface_version: u32,
    /// Whether the image carries the UHYVEIF note (kernels ≥ 0.12).
    interface_note: bool,
    kernel_version: Option<(u32, u32, u32)>,
    relocations: Vec<Relocation>,
}

/// The kernel generations that differ in how they learn their command line and where the host
/// file system is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelGeneration {
    /// Before 0.10 (no ABI-tag note): arguments and environment through the Cmdsize/Cmdval
    /// hypercalls; the mount point is built into the kernel (`/root`, or `/host` in tag 0.6.9).
    Legacy,
    /// 0.10 and 0.11: the device tree's `/chosen/bootargs`, and one mount point taken from the
    /// `-mount DIR` kernel argument (or `UHYVE_MOUNT`, default `/root`).
    BootargsMount,
    /// 0.12 and later (the UHYVEIF note): bootargs, and every directory listed in the device
    /// tree's `/uhyve,mounts` node.
    FdtMounts,
}

/// Notes found in the `PT_NOTE` segments.
#[derive(Debug, Default)]
struct Notes {
    entry_version: Option<u8>,
    interface_version: Option<u32>,
    kernel_version: Option<(u32, u32, u32)>,
}

/// Checks that `offset..offset + size` lies inside a file of `file_len` bytes and returns it.
fn file_range(
    what: impl FnOnce() -> String,
    offset: u64,
    size: u64,
    file_len: usize,
) -> Result<Range<usize>, LoadError> {
    let range = offset
        .checked_add(size)
        .filter(|&end| end <= file_len as u64)
        .and_then(|end| Some(usize::try_from(offset).ok()?..usize::try_from(end).ok()?));
    range.ok_or_else(|| LoadError::Truncated {
        what: what(),
        offset,
        size,
        file_len: file_len as u64,
    })
}

/// Translates the link-time address range `addr..addr + size` into a file range, if it lies in the
/// file data of one `PT_LOAD` segment.
fn vaddr_to_file(
    phdrs: &[ProgramHeader],
    what: &'static str,
    addr: u64,
    size: u64,
) -> Result<Range<usize>, LoadError> {
    let unmapped = || LoadError::Unmapped { what, addr, size };
    let end = addr.checked_add(size).ok_or_else(unmapped)?;
    let ph = phdrs
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .find(|ph| {
            addr >= ph.p_vaddr
                && ph
                    .p_vaddr
                    .checked_add(ph.p_filesz)
                    .is_some_and(|seg_end| end <= seg_end)
        })
        .ok_or_else(unmapped)?;
    // `addr >= p_vaddr` was checked above; segment file ranges were checked against the file.
    let start = ph
        .p_offset
        .checked_add(addr - ph.p_vaddr)
        .ok_or_else(unmapped)?;
    let stop = start.checked_add(size).ok_or_else(unmapped)?;
    Ok(usize::try_from(start).map_err(|_| unmapped())?
        ..usize::try_from(stop).map_err(|_| unmapped())?)
}

/// Zeroes `bytes`, writing only the 4 KiB pieces that are not zero already: fresh guest RAM is
/// zero, and reading it (unlike writing) does not make the host allocate memory for it.
fn zero_untouched(bytes: &mut [u8]) {
    for piece in bytes.chunks_mut(4096) {
        // An OR over the whole piece (no early exit) compiles to wide vector loads.
        if piece.iter().fold(0u8, |any, &byte| any | byte) != 0 {
            piece.fill(0);
        }
    }
}

impl KernelImage {
    /// Parses and validates a Hermit kernel image for the host's architecture. Nothing in
    /// `bytes` can make this panic.
    pub fn parse(bytes: Vec<u8>) -> Result<KernelImage, LoadError> {
        Self::parse_for(bytes, HOST_MACHINE)
    }

    /// Parses and validates a Hermit kernel image built for ELF machine `machine` (`EM_X86_64`
    /// or `EM_AARCH64`): lets the aarch64 boot path be built and tested on an x86_64 host.
    pub fn parse_for(bytes: Vec<u8>, machine: u16) -> Result<KernelImage, LoadError> {
        let file_len = bytes.len();

        // Identification, checked before goblin so that each problem gets its own error.
        if bytes.get(..SELFMAG) != Some(&ELFMAG[..]) {
            return Err(LoadError::NotElf);
        }
        let ident = bytes
            .get(..SIZEOF_IDENT)
            .ok_or_else(|| LoadError::Truncated {
                what: "ELF identification".into(),
                offset: 0,
                size: SIZEOF_IDENT as u64,
                file_len: file_len as u64,
            })?;
        // `ident` has SIZEOF_IDENT (16) bytes, so the EI_* indices below are in bounds.
        if ident[EI_CLASS] != ELFCLASS64 {
            return Err(LoadError::Not64Bit(ident[EI_CLASS]));
        }
        if ident[EI_DATA] != ELFDATA2LSB {
            return Err(LoadError::NotLittleEndian(ident[EI_DATA]));
        }
        if ident[EI_OSABI] != ELFOSABI_STANDALONE {
            warn!(
                "ELF OS/ABI is {:#x}, not {ELFOSABI_STANDALONE:#x} (standalone) as Hermit kernels have; loading anyway",
                ident[EI_OSABI]
            );
        }
        file_range(|| "ELF header".into(), 0, SIZEOF_EHDR as u64, file_len)?;
        let header = Elf::parse_header(&bytes).map_err(|source| LoadError::Parse {
            what: "ELF header",
            source,
        })?;
        if header.e_machine != machine {
            return Err(LoadError::WrongMachine {
                machine: header.e_machine,
                expected: machine,
            });
        }
        let position_independent = match header.e_type {
            ET_DYN => true,
            ET_EXEC => false,
            e_type => return Err(LoadError::NotExecutable { e_type }),
        };

        // Header tables.
        if usize::from(header.e_phentsize) != SIZEOF_PHDR {
            return Err(LoadError::BadProgramHeaderSize(header.e_phentsize));
        }
        let ph_table_size = u64::from(header.e_phnum) * SIZEOF_PHDR as u64;
        let ph_range = file_range(
            || "program header table".into(),
            header.e_phoff,
            ph_table_size,
            file_len,
        )?;
        if header.e_shnum != 0 {
            let sh_table_size = u64::from(header.e_shnum) * u64::from(header.e_shentsize);
            file_range(
                || "section header table".into(),
                header.e_shoff,
                sh_table_size,
                file_len,
            )?;
        }
        let ctx = Ctx::new(Container::Big, Endian::Little);
        let phdrs = ProgramHeader::parse(&bytes, ph_range.start, usize::from(header.e_phnum), ctx)
            .map_err(|source| LoadError::Parse {
                what: "program headers",
                source,
            })?;
        for (index, ph) in phdrs.iter().enumerate().filter(|(_, ph)| ph.p_filesz != 0) {
            file_range(
                || format!("segment {index} ({})", pt_to_str(ph.p_type)),
                ph.p_offset,
                ph.p_filesz,
                file_len,
            )?;
        }
        if phdrs.iter().any(|ph| ph.p_type == PT_INTERP) {
            return Err(LoadError::HasInterpreter);
        }

        // Loadable segments: sorted, disjoint, footprint.
        let (segments, first_vaddr, footprint, load_align) = check_load_segments(&phdrs)?;
        let image_end = first_vaddr + footprint; // cannot overflow: checked in check_load_segments
        if !(first_vaddr..image_end).contains(&header.e_entry) {
            return Err(LoadError::EntryOutsideImage {
                entry: header.e_entry,
                start: first_vaddr,
                end: image_end,
            });
        }

        let tls = match phdrs.iter().find(|ph| ph.p_type == PT_TLS) {
            Some(ph) if (ph.p_vaddr, ph.p_filesz, ph.p_memsz, ph.p_align) != (0, 0, 0, 0) => {
                let inside = ph.p_vaddr >= first_vaddr
                    && ph
                        .p_vaddr
                        .checked_add(ph.p_filesz)
                        .is_some_and(|end| end <= image_end);
                if !inside {
                    return Err(LoadError::TlsOutsideImage {
                        vaddr: ph.p_vaddr,
                        filesz: ph.p_filesz,
                        start: first_vaddr,
                        end: image_end,
                    });
                }
                Some(TlsTemplate {
                    start: ph.p_vaddr,
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                    align: ph.p_align,
                })
            }
            _ => None,
        };

        // Notes.
        let notes = read_notes(&bytes, &phdrs, ctx)?;
        let entry_version = notes.entry_version.ok_or(LoadError::MissingEntryVersion)?;
        if !SUPPORTED_ENTRY_VERSIONS.contains(&entry_version) {
            return Err(LoadError::UnsupportedEntryVersion(entry_version));
        }
        let interface_version = notes.interface_version.unwrap_or(1);
        if !SUPPORTED_INTERFACE_VERSIONS.contains(&interface_version) {
            return Err(LoadError::UnsupportedInterfaceVersion(interface_version));
        }

        // Dynamic section and relocations.
        let relocations = read_relocations(
            &bytes,
            &phdrs,
            ctx,
            header.e_machine,
            first_vaddr,
            footprint,
        )?;

        debug!(
            "kernel image: {} at {first_vaddr:#x}, footprint {footprint:#x}, entry {:#x}, entry version {entry_version}, interface {interface_version}, {} relocations",
            if position_independent { "PIE" } else { "fixed" },
            header.e_entry,
            relocations.len()
        );
        Ok(KernelImage {
            bytes,
            position_independent,
            entry: header.e_entry,
            first_vaddr,
            footprint,
            load_align,
            segments,
            tls,
            entry_version,
            interface_version,
            interface_note: notes.interface_version.is_some(),
            kernel_version: notes.kernel_version,
            relocations,
        })
    }

    /// The Hermit entry (boot ABI) version from the HERMIT note: 3 or 4.
    pub fn entry_version(&self) -> u8 {
        self.entry_version
    }

    /// The uhyve interface version from the UHYVEIF note; 1 when the note is absent.
    pub fn interface_version(&self) -> u32 {
        self.interface_version
    }

    /// How the kernel expects its command line and the host file system's mount points
    /// (hermit-abi.md §0 and §8.2), from its notes.
    pub fn generation(&self) -> KernelGeneration {
        match self.kernel_version {
            _ if self.interface_note => KernelGeneration::FdtMounts,
            Some(version) if version >= (0, 12, 0) => KernelGeneration::FdtMounts,
            Some(version) if version >= (0, 10, 0) => KernelGeneration::BootargsMount,
            _ => KernelGeneration::Legacy,
        }
    }

    /// The kernel version (major, minor, patch) from the GNU ABI-tag note, if present.
    pub fn kernel_version(&self) -> Option<(u32, u32, u32)> {
        self.kernel_version
    }

    /// Whether the image is a PIE (`ET_DYN`) that can be loaded anywhere.
    pub fn is_position_independent(&self) -> bool {
        self.position_independent
    }

    /// The address an `ET_EXEC` image must be loaded at; `None` for a PIE.
    pub fn fixed_load_address(&self) -> Option<u64> {
        (!self.position_independent).then_some(self.first_vaddr)
    }

    /// Bytes of guest memory the image occupies (first to last `PT_LOAD`, including BSS).
    pub fn footprint(&self) -> u64 {
        self.footprint
    }

    /// The alignment a load address must have: the largest `PT_LOAD` `p_align` (at least 1).
    /// Strictly, `base - first p_vaddr` must be a multiple of it; Hermit PIEs start at 0.
    pub fn load_alignment(&self) -> u64 {
        self.load_align
    }

    /// Copies the segments into `image` as if it were loaded at guest address `base` and applies
    /// the relocations. `image` must be exactly [`footprint`](Self::footprint) bytes and
    /// zero-filled (gaps between segments are not written); each segment's BSS is zeroed anyway.
    pub fn load(&self, base: u64, image: &mut [u8]) -> Result<LoadedKernel, LoadError> {
        if image.len() as u64 != self.footprint {
            return Err(LoadError::WrongImageSize {
                got: image.len(),
                expected: self.footprint,
            });
        }
        if let Some(required) = self.fixed_load_address()
            && base != required
        {
            return Err(LoadError::FixedAddressMismatch { base, required });
        }
        // The load bias must keep every segment at its alignment; modulo a power of two the
        // wrapping subtraction is exact.
        let bias = base.wrapping_sub(self.first_vaddr);
        if !bias.is_multiple_of(self.load_align) {
            return Err(LoadError::MisalignedBase {
                base,
                align: self.load_align,
            });
        }
        let end = base
            .checked_add(self.footprint)
            .ok_or(LoadError::BaseOverflow {
                base,
                footprint: self.footprint,
            })?;
        let image_len = image.len();

        for seg in &self.segments {
            let truncated = || LoadError::Truncated {
                what: format!("segment {} (PT_LOAD)", seg.index),
                offset: seg.file_offset as u64,
                size: seg.filesz as u64,
                file_len: self.bytes.len() as u64,
            };
            let src = seg
                .file_offset
                .checked_add(seg.filesz)
                .and_then(|file_end| self.bytes.get(seg.file_offset..file_end))
                .ok_or_else(truncated)?;
            let dst = seg
                .image_offset
                .checked_add(seg.memsz)
                .and_then(|mem_end| image.get_mut(seg.image_offset..mem_end))
                .ok_or(LoadError::WrongImageSize {
                    got: image_len,
                    expected: self.footprint,
                })?;
            // filesz <= memsz was checked in `parse`, so the split succeeds and the lengths match.
            let (file_part, bss) = dst.split_at_mut_checked(seg.filesz).ok_or(
                LoadError::SegmentFileSizeExceedsMemSize {
                    index: seg.index,
                    filesz: seg.filesz as u64,
                    memsz: seg.memsz as u64,
                },
            )?;
            file_part.copy_from_slice(src);
            zero_untouched(bss);
        }

        for reloc in &self.relocations {
            let value = match reloc.value {
                RelocValue::BiasPlus(v) => bias.wrapping_add(v),
                RelocValue::Absolute(v) => v,
            };
            let dst = reloc
                .image_offset
                .checked_add(8)
                .and_then(|stop| image.get_mut(reloc.image_offset..stop))
                .ok_or(LoadError::RelocationOutOfImage {
                    index: reloc.index,
                    addr: base.saturating_add(reloc.image_offset as u64),
                    start: base,
                    end,
                })?;
            dst.copy_from_slice(&value.to_le_bytes());
        }

        // e_entry and the TLS start were checked to lie in first_vaddr..first_vaddr + footprint,
        // and base + footprint does not overflow.
        let relocate = |vaddr: u64| base + (vaddr - self.first_vaddr);
        Ok(LoadedKernel {
            entry_point: relocate(self.entry),
            image_range: base..end,
            tls: self.tls.map(|tls| TlsTemplate {
                start: relocate(tls.start),
                ..tls
            }),
        })
    }
}

/// Validates the `PT_LOAD` segments (file ranges were checked by the caller) and returns them with
/// the first address, the footprint and the largest alignment.
fn check_load_segments(
    phdrs: &[ProgramHeader],
) -> Result<(Vec<LoadSegment>, u64, u64, u64), LoadError> {
    let loads: Vec<(usize, &ProgramHeader)> = phdrs
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_LOAD)
        .collect();
    let Some(&(_, first)) = loads.first() else {
        return Err(LoadError::NoLoadSegment);
    };
    let first_vaddr = first.p_vaddr;

    let mut previous_end: Option<u64> = None;
    let mut previous_vaddr = first_vaddr;
    let mut load_align = 1u64;
    for &(index, ph) in &loads {
        if ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentFileSizeExceedsMemSize {
                index,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
            });
        }
        if ph.p_align > 1 {
            if !ph.p_align.is_power_of_two() {
                return Err(LoadError::BadSegmentAlignment {
                    index,
                    align: ph.p_align,
                });
            }
            load_align = load_align.max(ph.p_align);
        }
        if ph.p_vaddr < previous_vaddr {
            return Err(LoadError::SegmentsNotSorted {
                index,
                vaddr: ph.p_vaddr,
            });
        }
        if let Some(previous_end) = previous_end
            && ph.p_vaddr < previous_end
        {
            return Err(LoadError::SegmentsOverlap {
                index,
                vaddr: ph.p_vaddr,
                previous_end,
            });
        }
        let end = ph.p_vaddr.checked_add(ph.p_memsz).ok_or_else(|| {
            LoadError::FootprintTooLarge(format!(
                "segment {index} at {:#x} + {:#x} bytes overflows",
                ph.p_vaddr, ph.p_memsz
            ))
        })?;
        previous_vaddr = ph.p_vaddr;
        previous_end = Some(end);
    }
    // `previous_end` is set because `loads` is non-empty; ends are sorted, so the last is largest.
    let last_end = previous_end.unwrap_or(first_vaddr);
    let footprint = last_end - first_vaddr; // last_end >= first_vaddr: sorted and non-overlapping
    if footprint > MAX_FOOTPRINT {
        return Err(LoadError::FootprintTooLarge(format!(
            "{footprint:#x} bytes"
        )));
    }

    let too_large = || LoadError::FootprintTooLarge(format!("{footprint:#x} bytes"));
    let segments = loads
        .iter()
        .map(|&(index, ph)| {
            Ok(LoadSegment {
                index,
                // A segment without file data may name any offset; it is never read.
                file_offset: if ph.p_filesz == 0 {
                    0
                } else {
                    usize::try_from(ph.p_offset).map_err(|_| too_large())?
                },
                filesz: usize::try_from(ph.p_filesz).map_err(|_| too_large())?,
                image_offset: usize::try_from(ph.p_vaddr - first_vaddr).map_err(|_| too_large())?,
                memsz: usize::try_from(ph.p_memsz).map_err(|_| too_large())?,
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    Ok((segments, first_vaddr, footprint, load_align))
}

/// Reads the Hermit-relevant notes from every `PT_NOTE` segment (the first of each kind wins).
fn read_notes(bytes: &[u8], phdrs: &[ProgramHeader], ctx: Ctx) -> Result<Notes, LoadError> {
    let mut notes = Notes::default();
    for ph in phdrs.iter().filter(|ph| ph.p_type == PT_NOTE) {
        // The segment's file range was checked in `parse`; `get` keeps this panic-free anyway.
        let data = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| LoadError::Truncated {
                what: "PT_NOTE segment".into(),
                offset: ph.p_offset,
                size: ph.p_filesz,
                file_len: bytes.len() as u64,
            })?;
        // Iterating over the segment's bytes alone keeps every note inside its segment.
        let iter = NoteDataIterator {
            data,
            size: data.len(),
            offset: 0,
            ctx: (usize::try_from(ph.p_align).unwrap_or(usize::MAX), ctx),
        };
        for note in iter {
            let note = note.map_err(LoadError::BadNote)?;
            match (note.name, note.n_type) {
                (HERMIT_NOTE_NAME, NT_HERMIT_ENTRY_VERSION) => {
                    let &[version] = note.desc else {
                        return Err(LoadError::BadNoteDescriptor {
                            note: "HERMIT entry-version",
                            len: note.desc.len(),
                            expected: "1",
                        });
                    };
                    notes.entry_version.get_or_insert(version);
                }
                (UHYVEIF_NOTE_NAME, NT_UHYVE_INTERFACE_VERSION) => {
                    let &[a, b, c, d] = note.desc else {
                        return Err(LoadError::BadNoteDescriptor {
                            note: "UHYVEIF interface-version",
                            len: note.desc.len(),
                            expected: "4",
                        });
                    };
                    notes
                        .interface_version
                        .get_or_insert(u32::from_be_bytes([a, b, c, d]));
                }
                (GNU_NOTE_NAME, NT_GNU_ABI_TAG) => {
                    if note.desc.len() != 16 {
                        return Err(LoadError::BadNoteDescriptor {
                            note: "GNU ABI-tag",
                            len: note.desc.len(),
                            expected: "16",
                        });
                    }
                    let word = |i: usize| {
                        note.desc
                            .get(i * 4..i * 4 + 4)
                            .and_then(|w| <[u8; 4]>::try_from(w).ok())
                            .map_or(0, u32::from_le_bytes)
                    };
                    if word(0) == ELF_NOTE_OS_HERMIT {
                        notes
                            .kernel_version
                            .get_or_insert((word(1), word(2), word(3)));
                    } else {
                        warn!(
                            "GNU ABI-tag note names OS {}, not Hermit (6); ignoring it",
                            word(0)
                        );
                    }
                }
                (name, n_type) => debug!("ignoring ELF note {name:?} type {n_type:#x}"),
            }
        }
    }
    Ok(notes)
}

/// Reads `PT_DYNAMIC`, rejects `DT_NEEDED` and non-RELA relocation tables, and resolves every
/// RELA relocation into an image offset and a value.
fn read_relocations(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
    machine: u16,
    first_vaddr: u64,
    footprint: u64,
) -> Result<Vec<Relocation>, LoadError> {
    let Some(dynamic) = Dynamic::parse(bytes, phdrs, ctx).map_err(|source| LoadError::Parse {
        what: "dynamic section",
        source,
    })?
    else {
        return Ok(Vec::new());
    };

    let mut rela = None;
    let mut relasz = 0;
    let mut symtab = None;
    for d in dynamic.dyns.iter().take_while(|d| d.d_tag != DT_NULL) {
        match d.d_tag {
            DT_NEEDED => return Err(LoadError::NeedsSharedLibraries),
            DT_RELA => rela = Some(d.d_val),
            DT_RELASZ => relasz = d.d_val,
            DT_RELAENT if d.d_val != SIZEOF_RELA as u64 => {
                return Err(LoadError::BadDynamicEntry {
                    tag: "DT_RELAENT",
                    value: d.d_val,
                    expected: SIZEOF_RELA as u64,
                });
            }
            DT_SYMENT if d.d_val != SIZEOF_SYM as u64 => {
                return Err(LoadError::BadDynamicEntry {
                    tag: "DT_SYMENT",
                    value: d.d_val,
                    expected: SIZEOF_SYM as u64,
                });
            }
            DT_SYMTAB => symtab = Some(d.d_val),
            DT_RELSZ if d.d_val != 0 => {
                return Err(LoadError::UnsupportedRelocationTable("DT_REL"));
            }
            DT_PLTRELSZ if d.d_val != 0 => {
                return Err(LoadError::UnsupportedRelocationTable("DT_JMPREL (PLT)"));
            }
            _ => {}
        }
    }
    if relasz == 0 {
        return Ok(Vec::new());
    }
    if !relasz.is_multiple_of(SIZEOF_RELA as u64) {
        return Err(LoadError::RelaSizeNotMultiple(relasz));
    }
    let rela = rela.ok_or(LoadError::MissingRelaTable(relasz))?;
    let table = vaddr_to_file(phdrs, "relocation table (DT_RELA)", rela, relasz)?;
    let relocs =
        RelocSection::parse(bytes, table.start, table.len(), true, ctx).map_err(|source| {
            LoadError::Parse {
                what: "relocation table",
                source,
            }
        })?;

    let image_end = first_vaddr + footprint; // checked in check_load_segments
    let mut out = Vec::with_capacity(relocs.len());
    for (index, r) in relocs.iter().enumerate() {
        let kind = reloc_kind(machine, r.r_type).ok_or(LoadError::UnknownRelocation {
            index,
            r_type: r.r_type,
            machine,
        })?;
        if kind == RelocKind::None {
            continue;
        }
        let out_of_image = || LoadError::RelocationOutOfImage {
            index,
            addr: r.r_offset,
            start: first_vaddr,
            end: image_end,
        };
        let image_offset = r
            .r_offset
            .checked_sub(first_vaddr)
            .filter(|off| off.checked_add(8).is_some_and(|end| end <= footprint))
            .and_then(|off| usize::try_from(off).ok())
            .ok_or_else(out_of_image)?;
        let addend = r.r_addend.unwrap_or(0) as u64; // two's complement: wrapping adds below
        let value = match kind {
            RelocKind::None | RelocKind::Relative => RelocValue::BiasPlus(addend),
            RelocKind::Symbol => resolve_symbol(bytes, phdrs, ctx, symtab, index, r.r_sym, addend)?,
        };
        out.push(Relocation {
            index,
            image_offset,
            value,
        });
    }
    Ok(out)
}

/// Computes the value `S + A` of a symbol relocation. Symbol 0 has the value 0; an undefined weak
/// symbol resolves to 0; an undefined strong one is an error.
fn resolve_symbol(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
    symtab: Option<u64>,
    index: usize,
    symbol: usize,
    addend: u64,
) -> Result<RelocValue, LoadError> {
    if symbol == 0 {
        return Ok(RelocValue::Absolute(addend));
    }
    let symtab = symtab.ok_or(LoadError::Unmapped {
        what: "dynamic symbol table (DT_SYMTAB missing)",
        addr: 0,
        size: 0,
    })?;
    let sym_addr = (symbol as u64)
        .checked_mul(SIZEOF_SYM as u64)
        .and_then(|off| symtab.checked_add(off))
        .ok_or(LoadError::Unmapped {
            what: "dynamic symbol",
            addr: symtab,
            size: SIZEOF_SYM as u64,
        })?;
    let range = vaddr_to_file(phdrs, "dynamic symbol", sym_addr, SIZEOF_SYM as u64)?;
    let sym = Symtab::parse(bytes, range.start, 1, ctx)
        .map_err(|source| LoadError::Parse {
            what: "dynamic symbol",
            source,
        })?
        .get(0)
        .ok_or(LoadError::Unmapped {
            what: "dynamic symbol",
            addr: sym_addr,
            size: SIZEOF_SYM as u64,
        })?;
    // st_shndx comes from a u16 field, so it always fits.
    let shndx = u32::try_from(sym.st_shndx).unwrap_or(u32::MAX);
    Ok(match shndx {
        SHN_UNDEF if sym.st_bind() == STB_WEAK => RelocValue::Absolute(0),
        SHN_UNDEF => return Err(LoadError::UndefinedSymbol { index, symbol }),
        SHN_ABS => RelocValue::Absolute(sym.st_value.wrapping_add(addend)),
        _ => RelocValue::BiasPlus(sym.st_value.wrapping_add(addend)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bss_zeroing_writes_only_dirty_pieces() {
        let mut bytes = vec![0u8; 3 * 4096 + 100];
        bytes[5000] = 7;
        bytes[3 * 4096 + 99] = 1;
        zero_untouched(&mut bytes);
        assert!(bytes.iter().all(|&b| b == 0));
    }

    use super::*;
    use goblin::elf::dynamic::{DT_STRSZ, DT_STRTAB};
    use goblin::elf::header::{ELFCLASS32, ELFDATA2MSB, ET_REL};
    use goblin::elf::program_header::PT_DYNAMIC;
    use goblin::elf::sym::STB_GLOBAL;

    // Layout of the synthetic images (file offsets; the single PT_LOAD maps the whole file at
    // `vbase`): ELF header, program headers, 8-byte relocation target slots, a TLS template, notes,
    // then the dynamic section, RELA table, symbol table, string table and interpreter path.
    const DATA: usize = 0x200;
    const TLS_DATA: usize = 0x240;
    const TLS_FILESZ: u64 = 0x10;
    const TLS_MEMSZ: u64 = 0x30;
    const NOTES: usize = 0x280;
    const ENTRY_OFF: u64 = 0x100;
    const BSS: u64 = 0x100;
    const EXEC_ADDR: u64 = 0x80_0000;
    const SLOT_FILL: u8 = 0xAA;

    /// The architecture a test image must NOT be built for.
    const OTHER_MACHINE: u16 = if HOST_MACHINE == EM_X86_64 {
        EM_AARCH64
    } else {
        EM_X86_64
    };

    /// Host numbers of RELATIVE, ABS64 and GLOB_DAT.
    fn r_relative() -> u32 {
        if HOST_MACHINE == EM_X86_64 {
            R_X86_64_RELATIVE
        } else {
            R_AARCH64_RELATIVE
        }
    }
    fn r_abs64() -> u32 {
        if HOST_MACHINE == EM_X86_64 {
            R_X86_64_64
        } else {
            R_AARCH64_ABS64
        }
    }
    fn r_glob_dat() -> u32 {
        if HOST_MACHINE == EM_X86_64 {
            R_X86_64_GLOB_DAT
        } else {
            R_AARCH64_GLOB_DAT
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Rela {
        offset: u64,
        r_type: u32,
        sym: u32,
        addend: i64,
    }

    #[derive(Clone, Copy, Debug)]
    struct TestSym {
        value: u64,
        shndx: u16,
        bind: u8,
    }

    #[derive(Clone, Copy, Debug)]
    struct Phdr {
        p_type: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
        align: u64,
    }

    #[derive(Clone)]
    struct Spec {
        class: u8,
        data: u8,
        osabi: u8,
        e_type: u16,
        machine: u16,
        vbase: u64,
        entry_version: Option<u8>,
        uhyveif: Option<u32>,
        abi_tag: Option<[u32; 4]>,
        relocs: Vec<Rela>,
        syms: Vec<TestSym>,
        needed: bool,
        interp: bool,
        tls: bool,
        /// Last-minute change to the program headers (mutation hook).
        edit_phdrs: fn(&mut Vec<Phdr>),
    }

    fn slot(spec: &Spec, k: u64) -> u64 {
        spec.vbase + DATA as u64 + 8 * k
    }

    /// A good PIE: one RELATIVE relocation in slot 0, TLS, entry version 4, no UHYVEIF note.
    fn pie() -> Spec {
        let mut spec = Spec {
            class: ELFCLASS64,
            data: ELFDATA2LSB,
            osabi: ELFOSABI_STANDALONE,
            e_type: ET_DYN,
            machine: HOST_MACHINE,
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
    fn exec() -> Spec {
        Spec {
            e_type: ET_EXEC,
            vbase: EXEC_ADDR,
            relocs: Vec::new(),
            ..pie()
        }
    }

    fn push_note(out: &mut Vec<u8>, name: &str, n_type: u32, desc: &[u8]) {
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

    fn put(buf: &mut [u8], at: usize, value: &[u8]) {
        buf[at..at + value.len()].copy_from_slice(value);
    }

    /// Builds the ELF file described by `spec`.
    fn build(spec: &Spec) -> Vec<u8> {
        let v = spec.vbase;
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

        // Sizes first, then positions.
        let strtab: &[u8] = b"\0libc.so\0";
        let interp: &[u8] = b"/lib/ld.so\0";
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
        let dyn_len = if has_dynamic { (ndyn + 1) * 16 } else { 0 };
        let rela_off = dyn_off + dyn_len;
        let rela_len = spec.relocs.len() * 24;
        let sym_off = rela_off + rela_len;
        let str_off = sym_off + nsyms * 24;
        let interp_off = str_off + if spec.needed { strtab.len() } else { 0 };
        let file_len = interp_off + if spec.interp { interp.len() } else { 0 };

        let mut f = vec![0u8; file_len];
        f[DATA..TLS_DATA].fill(SLOT_FILL);
        for (i, b) in f[TLS_DATA..TLS_DATA + TLS_FILESZ as usize]
            .iter_mut()
            .enumerate()
        {
            *b = i as u8 + 1;
        }
        put(&mut f, NOTES, &notes);

        let mut dyns: Vec<(u64, u64)> = Vec::new();
        if !spec.relocs.is_empty() {
            dyns.push((DT_RELA, v + rela_off as u64));
            dyns.push((DT_RELASZ, rela_len as u64));
            dyns.push((DT_RELAENT, 24));
        }
        if nsyms > 0 {
            dyns.push((DT_SYMTAB, v + sym_off as u64));
            dyns.push((DT_SYMENT, 24));
        }
        if spec.needed {
            dyns.push((DT_STRTAB, v + str_off as u64));
            dyns.push((DT_STRSZ, strtab.len() as u64));
            dyns.push((DT_NEEDED, 1));
        }
        if has_dynamic {
            dyns.push((DT_NULL, 0));
        }
        for (i, (tag, val)) in dyns.iter().enumerate() {
            put(&mut f, dyn_off + i * 16, &tag.to_le_bytes());
            put(&mut f, dyn_off + i * 16 + 8, &val.to_le_bytes());
        }
        for (i, r) in spec.relocs.iter().enumerate() {
            let at = rela_off + i * 24;
            let info = (u64::from(r.sym) << 32) | u64::from(r.r_type);
            put(&mut f, at, &r.offset.to_le_bytes());
            put(&mut f, at + 8, &info.to_le_bytes());
            put(&mut f, at + 16, &r.addend.to_le_bytes());
        }
        for (i, s) in spec.syms.iter().enumerate() {
            let at = sym_off + (i + 1) * 24;
            f[at + 4] = s.bind << 4;
            put(&mut f, at + 6, &s.shndx.to_le_bytes());
            put(&mut f, at + 8, &s.value.to_le_bytes());
        }
        if spec.needed {
            put(&mut f, str_off, strtab);
        }
        if spec.interp {
            put(&mut f, interp_off, interp);
        }

        let ph = |p_type, offset: usize, filesz: usize, memsz: u64, align| Phdr {
            p_type,
            offset: offset as u64,
            vaddr: v + offset as u64,
            filesz: filesz as u64,
            memsz,
            align,
        };
        let mut phdrs = vec![
            ph(PT_LOAD, 0, file_len, file_len as u64 + BSS, 0x1000),
            ph(PT_NOTE, NOTES, notes.len(), notes.len() as u64, 4),
        ];
        if has_dynamic {
            phdrs.push(ph(PT_DYNAMIC, dyn_off, dyn_len, dyn_len as u64, 8));
        }
        if spec.tls {
            phdrs.push(ph(PT_TLS, TLS_DATA, TLS_FILESZ as usize, TLS_MEMSZ, 8));
        }
        if spec.interp {
            phdrs.push(ph(
                PT_INTERP,
                interp_off,
                interp.len(),
                interp.len() as u64,
                1,
            ));
        }
        (spec.edit_phdrs)(&mut phdrs);
        assert!(
            0x40 + phdrs.len() * 56 <= DATA,
            "too many program headers for the layout"
        );
        for (i, p) in phdrs.iter().enumerate() {
            let at = 0x40 + i * 56;
            put(&mut f, at, &p.p_type.to_le_bytes());
            put(&mut f, at + 4, &4u32.to_le_bytes()); // PF_R
            put(&mut f, at + 8, &p.offset.to_le_bytes());
            put(&mut f, at + 16, &p.vaddr.to_le_bytes());
            put(&mut f, at + 24, &p.vaddr.to_le_bytes());
            put(&mut f, at + 32, &p.filesz.to_le_bytes());
            put(&mut f, at + 40, &p.memsz.to_le_bytes());
            put(&mut f, at + 48, &p.align.to_le_bytes());
        }

        put(&mut f, 0, ELFMAG);
        f[EI_CLASS] = spec.class;
        f[EI_DATA] = spec.data;
        f[6] = 1; // EI_VERSION
        f[EI_OSABI] = spec.osabi;
        put(&mut f, 16, &spec.e_type.to_le_bytes());
        put(&mut f, 18, &spec.machine.to_le_bytes());
        put(&mut f, 20, &1u32.to_le_bytes());
        put(&mut f, 24, &(v + ENTRY_OFF).to_le_bytes());
        put(&mut f, 32, &0x40u64.to_le_bytes()); // e_phoff
        put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut f, 56, &(phdrs.len() as u16).to_le_bytes());
        put(&mut f, 58, &64u16.to_le_bytes()); // e_shentsize
        f
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

    fn read_u64(image: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(image[at..at + 8].try_into().unwrap())
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
            machine: OTHER_MACHINE,
            ..pie()
        });
        assert!(matches!(e, LoadError::WrongMachine { machine, .. } if machine == OTHER_MACHINE));
        assert!(e.to_string().contains(machine_name(HOST_MACHINE)), "{e}");
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

    /// File offset of the dynamic section of a built image (from its PT_DYNAMIC header).
    fn find_dynamic(file: &[u8]) -> usize {
        (0..8)
            .map(|i| 0x40 + i * 56)
            .find(|&at| u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) == PT_DYNAMIC)
            .map(|at| read_u64(file, at + 8) as usize)
            .unwrap()
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
                machine: OTHER_MACHINE,
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
        if HOST_MACHINE == EM_X86_64 {
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
        if HOST_MACHINE == EM_X86_64 {
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
        let references: &[(&str, u64)] = if HOST_MACHINE == EM_X86_64 {
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
}
