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
use goblin::elf::header::{
    EI_CLASS, EI_DATA, EI_OSABI, ELFCLASS64, ELFDATA2LSB, ELFMAG, ELFOSABI_STANDALONE, EM_AARCH64,
    EM_X86_64, ET_DYN, ET_EXEC, SELFMAG, SIZEOF_IDENT,
};
use goblin::elf::program_header::{PT_INTERP, PT_LOAD, PT_TLS, ProgramHeader, pt_to_str};
use goblin::elf64::header::SIZEOF_EHDR;
use goblin::elf64::program_header::SIZEOF_PHDR;
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

mod error;
mod notes;
mod reloc;

pub use error::LoadError;
use notes::read_notes;
use reloc::{Relocation, apply_relocations, read_relocations};

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
        let entry_version = notes.checked_entry_version()?;
        let interface_version = notes.checked_interface_version()?;

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

#[cfg(test)]
mod test_elf;
#[cfg(test)]
mod tests;
