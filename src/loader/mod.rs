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
//!
//! This module owns [`KernelImage`] (parsing step by step: identification, ELF header, program
//! headers, entry point, TLS template; then loading at an address) and what it reports
//! ([`LoadedKernel`], [`TlsTemplate`], [`KernelGeneration`]). The pieces live beside it:
//! `segments` (the `PT_LOAD` layout and copying), `notes` (`PT_NOTE`), `reloc` (the dynamic
//! section and relocations) and `error` ([`LoadError`]).

use std::ops::Range;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{
    EI_CLASS, EI_DATA, EI_OSABI, ELFCLASS64, ELFDATA2LSB, ELFMAG, ELFOSABI_STANDALONE, ET_DYN,
    ET_EXEC, SELFMAG, SIZEOF_IDENT,
};
use goblin::elf::program_header::{PT_INTERP, PT_TLS, ProgramHeader, pt_to_str};
use goblin::elf::{Elf, Header};
use goblin::elf64::header::SIZEOF_EHDR;
use goblin::elf64::program_header::SIZEOF_PHDR;
use log::{debug, warn};

use crate::arch::GuestArch;

/// The uhyve hypercall interface versions this uhyve serves.
pub const SUPPORTED_INTERFACE_VERSIONS: [u32; 3] = uhyve_interface::SUPPORTED_INTERFACE_VERSIONS;

/// Hermit entry (boot ABI) versions whose boot-info layout uhyve fills (identical for 3 and 4).
pub const SUPPORTED_ENTRY_VERSIONS: [u8; 2] = [3, 4];

/// Largest memory footprint accepted for a kernel image (1 TiB); anything larger is corrupt.
pub const MAX_FOOTPRINT: u64 = 1 << 40;

mod error;
mod notes;
mod reloc;
mod segments;

pub use error::LoadError;
use notes::read_notes;
use reloc::{Relocation, apply_relocations, read_relocations};
use segments::{LoadSegment, SegmentLayout, check_load_segments};

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
    /// What was added to the link-time addresses (0 for an `ET_EXEC` image): the offset a
    /// debugger applies to the image's symbols.
    pub load_bias: u64,
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

impl KernelImage {
    /// Parses and validates a Hermit kernel image for the host's architecture (guests must be
    /// built for it: same-architecture virtualization only). Nothing in `bytes` can make this
    /// panic.
    pub fn parse(bytes: Vec<u8>) -> Result<KernelImage, LoadError> {
        Self::parse_for(bytes, GuestArch::HOST.elf_machine())
    }

    /// Parses and validates a Hermit kernel image built for ELF machine `machine` (`EM_X86_64`
    /// or `EM_AARCH64`): lets the aarch64 boot path be built and tested on an x86_64 host.
    pub fn parse_for(bytes: Vec<u8>, machine: u16) -> Result<KernelImage, LoadError> {
        check_identification(&bytes)?;
        let (header, position_independent) = read_elf_header(&bytes, machine)?;
        let ctx = Ctx::new(Container::Big, Endian::Little);
        let phdrs = read_program_headers(&bytes, &header, ctx)?;

        let layout = check_load_segments(&phdrs)?;
        let image = layout.image_range();
        if !image.contains(&header.e_entry) {
            return Err(LoadError::EntryOutsideImage {
                entry: header.e_entry,
                start: image.start,
                end: image.end,
            });
        }
        let tls = tls_template(&phdrs, &image)?;

        let notes = read_notes(&bytes, &phdrs, ctx)?;
        let entry_version = notes.checked_entry_version()?;
        let interface_version = notes.checked_interface_version()?;

        let relocations = read_relocations(
            &bytes,
            &phdrs,
            ctx,
            header.e_machine,
            layout.first_vaddr,
            layout.footprint,
        )?;

        let SegmentLayout {
            segments,
            first_vaddr,
            footprint,
            load_align,
        } = layout;
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

    /// Where the image is placed: its fixed load address, or for a PIE the lowest address at or
    /// above `pie_base` that keeps its segments' alignment (`u64::MAX` if there is none).
    pub fn load_base(&self, pie_base: u64) -> u64 {
        match self.fixed_load_address() {
            Some(fixed) => fixed,
            None => pie_base
                .checked_next_multiple_of(self.load_alignment().max(1))
                .unwrap_or(u64::MAX),
        }
    }

    /// Copies the segments into `image` as if it were loaded at guest address `base` and applies
    /// the relocations. `image` must be exactly [`footprint`](Self::footprint) bytes and
    /// zero-filled (gaps between segments are not written); each segment's BSS is zeroed anyway.
    pub fn load(&self, base: u64, image: &mut [u8]) -> Result<LoadedKernel, LoadError> {
        let (bias, end) = self.check_placement(base, image.len())?;
        for segment in &self.segments {
            segment.copy_into(&self.bytes, image, self.footprint)?;
        }
        apply_relocations(&self.relocations, image, bias, base, end)?;

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
            load_bias: bias,
        })
    }

    /// Checks that the image can be loaded at `base` into a buffer of `image_len` bytes and
    /// returns the load bias (`base - first_vaddr`) and the end of the image.
    fn check_placement(&self, base: u64, image_len: usize) -> Result<(u64, u64), LoadError> {
        if image_len as u64 != self.footprint {
            return Err(LoadError::WrongImageSize {
                got: image_len,
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
        Ok((bias, end))
    }
}

/// Checks the ELF identification bytes, before goblin so that each problem gets its own error.
fn check_identification(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.get(..SELFMAG) != Some(&ELFMAG[..]) {
        return Err(LoadError::NotElf);
    }
    let ident = bytes
        .get(..SIZEOF_IDENT)
        .ok_or_else(|| LoadError::Truncated {
            what: "ELF identification".into(),
            offset: 0,
            size: SIZEOF_IDENT as u64,
            file_len: bytes.len() as u64,
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
    Ok(())
}

/// Reads the ELF header, checks that it is built for `machine` and is an executable, and tells
/// whether it is position independent (`ET_DYN`) or linked at a fixed address (`ET_EXEC`).
fn read_elf_header(bytes: &[u8], machine: u16) -> Result<(Header, bool), LoadError> {
    file_range(|| "ELF header".into(), 0, SIZEOF_EHDR as u64, bytes.len())?;
    let header = Elf::parse_header(bytes).map_err(|source| LoadError::Parse {
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
    Ok((header, position_independent))
}

/// Reads the program headers after checking that both header tables lie inside the file, checks
/// that every segment's file data does, and rejects a `PT_INTERP` segment.
fn read_program_headers(
    bytes: &[u8],
    header: &Header,
    ctx: Ctx,
) -> Result<Vec<ProgramHeader>, LoadError> {
    let file_len = bytes.len();
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
    let phdrs = ProgramHeader::parse(bytes, ph_range.start, usize::from(header.e_phnum), ctx)
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
    Ok(phdrs)
}

/// The `PT_TLS` template as linked, if there is one (an all-zero `PT_TLS` counts as none); its
/// initialised bytes must lie inside the link-time `image`.
fn tls_template(
    phdrs: &[ProgramHeader],
    image: &Range<u64>,
) -> Result<Option<TlsTemplate>, LoadError> {
    let Some(ph) = phdrs.iter().find(|ph| ph.p_type == PT_TLS) else {
        return Ok(None);
    };
    if (ph.p_vaddr, ph.p_filesz, ph.p_memsz, ph.p_align) == (0, 0, 0, 0) {
        return Ok(None);
    }
    let inside = ph.p_vaddr >= image.start
        && ph
            .p_vaddr
            .checked_add(ph.p_filesz)
            .is_some_and(|end| end <= image.end);
    if !inside {
        return Err(LoadError::TlsOutsideImage {
            vaddr: ph.p_vaddr,
            filesz: ph.p_filesz,
            start: image.start,
            end: image.end,
        });
    }
    Ok(Some(TlsTemplate {
        start: ph.p_vaddr,
        filesz: ph.p_filesz,
        memsz: ph.p_memsz,
        align: ph.p_align,
    }))
}

#[cfg(test)]
mod test_elf;
#[cfg(test)]
mod tests;
