//! [`LoadError`]: everything that can be wrong with a kernel image, one variant per problem, each
//! with a one-line message (other code and the integration tests compare these texts). The
//! variants are listed in the order the loader checks: identification and headers, segments,
//! notes, dynamic section and relocations, then the load-time checks of [`KernelImage::load`].
//!
//! [`KernelImage::load`]: super::KernelImage::load

use goblin::elf::header::{EM_AARCH64, EM_X86_64, et_to_str, machine_to_str};
use goblin::elf::reloc::r_to_str;

/// Everything that can be wrong with a kernel image. Each message is one line naming the problem;
/// the caller prefixes the file name.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // Reading any part of the file.
    #[error(
        "file is truncated: {what} (bytes {offset:#x}+{size:#x}) extends beyond the end of the file ({file_len:#x} bytes)"
    )]
    Truncated {
        what: String,
        offset: u64,
        size: u64,
        file_len: u64,
    },
    #[error("cannot parse {what}: {source}")]
    Parse {
        what: &'static str,
        source: goblin::error::Error,
    },

    // Identification and ELF header.
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

    // Program headers.
    #[error("program header entry size is {0} bytes, expected 56")]
    BadProgramHeaderSize(u16),
    #[error("has a PT_INTERP segment (asks for a dynamic linker): not a Hermit unikernel")]
    HasInterpreter,

    // `PT_LOAD` segments, entry point and TLS template.
    #[error("no PT_LOAD segment: the file contains nothing to load")]
    NoLoadSegment,
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

    // Notes.
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

    // Dynamic section and relocations.
    #[error("needs shared libraries (DT_NEEDED): not a statically linked Hermit unikernel")]
    NeedsSharedLibraries,
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

    // Loading at a given address (`KernelImage::load`).
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
pub(super) fn machine_name(machine: u16) -> &'static str {
    match machine {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        other => machine_to_str(other),
    }
}
