//! The `PT_LOAD` segments of a kernel image: checking them (file size within memory size,
//! power-of-two alignment, sorted by address, disjoint, a footprint of at most
//! [`MAX_FOOTPRINT`]), and copying each one's file bytes into the image buffer with its BSS
//! zeroed.

use std::ops::Range;

use goblin::elf::program_header::{PT_LOAD, ProgramHeader};

use super::{LoadError, MAX_FOOTPRINT};

/// One `PT_LOAD` segment, validated: its file bytes lie inside the file and its memory inside the
/// image.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadSegment {
    /// Index of the program header (for error messages).
    index: usize,
    file_offset: usize,
    filesz: usize,
    image_offset: usize,
    memsz: usize,
}

/// The validated `PT_LOAD` segments and the link-time memory they span.
#[derive(Debug)]
pub(super) struct SegmentLayout {
    pub(super) segments: Vec<LoadSegment>,
    /// `p_vaddr` of the first segment.
    pub(super) first_vaddr: u64,
    /// From the first segment's start to the last one's end, BSS included.
    pub(super) footprint: u64,
    /// Largest `p_align` of the segments (at least 1).
    pub(super) load_align: u64,
}

impl SegmentLayout {
    /// The link-time addresses of the image (`first_vaddr + footprint` cannot overflow: checked
    /// in [`check_load_segments`]).
    pub(super) fn image_range(&self) -> Range<u64> {
        self.first_vaddr..self.first_vaddr + self.footprint
    }
}

/// Validates the `PT_LOAD` segments (file ranges were checked by the caller) and returns them with
/// the first address, the footprint and the largest alignment.
pub(super) fn check_load_segments(phdrs: &[ProgramHeader]) -> Result<SegmentLayout, LoadError> {
    let loads: Vec<(usize, &ProgramHeader)> = phdrs
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_LOAD)
        .collect();
    let Some(&(_, first)) = loads.first() else {
        return Err(LoadError::NoLoadSegment);
    };
    let first_vaddr = first.p_vaddr;

    let mut previous: Option<(u64, u64)> = None; // (p_vaddr, end) of the previous segment
    for &(index, ph) in &loads {
        check_segment(index, ph)?;
        let end = check_placement(index, ph, previous)?;
        previous = Some((ph.p_vaddr, end));
    }
    // `previous` is set because `loads` is non-empty; ends are sorted, so the last is largest.
    let last_end = previous.map_or(first_vaddr, |(_, end)| end);
    let footprint = last_end - first_vaddr; // last_end >= first_vaddr: sorted and non-overlapping
    if footprint > MAX_FOOTPRINT {
        return Err(LoadError::FootprintTooLarge(format!(
            "{footprint:#x} bytes"
        )));
    }
    // Every alignment above 1 was checked to be a power of two.
    let load_align = loads.iter().map(|(_, ph)| ph.p_align).fold(1, u64::max);

    let segments = loads
        .iter()
        .map(|&(index, ph)| LoadSegment::new(index, ph, first_vaddr, footprint))
        .collect::<Result<Vec<_>, LoadError>>()?;
    Ok(SegmentLayout {
        segments,
        first_vaddr,
        footprint,
        load_align,
    })
}

/// Checks one segment on its own: file size within memory size, power-of-two alignment.
fn check_segment(index: usize, ph: &ProgramHeader) -> Result<(), LoadError> {
    if ph.p_filesz > ph.p_memsz {
        return Err(LoadError::SegmentFileSizeExceedsMemSize {
            index,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        });
    }
    if ph.p_align > 1 && !ph.p_align.is_power_of_two() {
        return Err(LoadError::BadSegmentAlignment {
            index,
            align: ph.p_align,
        });
    }
    Ok(())
}

/// Checks that a segment starts at or after the previous one's start (`previous`: its `p_vaddr`
/// and end) and after its end, and returns the segment's end.
fn check_placement(
    index: usize,
    ph: &ProgramHeader,
    previous: Option<(u64, u64)>,
) -> Result<u64, LoadError> {
    if let Some((previous_vaddr, previous_end)) = previous {
        if ph.p_vaddr < previous_vaddr {
            return Err(LoadError::SegmentsNotSorted {
                index,
                vaddr: ph.p_vaddr,
            });
        }
        if ph.p_vaddr < previous_end {
            return Err(LoadError::SegmentsOverlap {
                index,
                vaddr: ph.p_vaddr,
                previous_end,
            });
        }
    }
    ph.p_vaddr.checked_add(ph.p_memsz).ok_or_else(|| {
        LoadError::FootprintTooLarge(format!(
            "segment {index} at {:#x} + {:#x} bytes overflows",
            ph.p_vaddr, ph.p_memsz
        ))
    })
}

impl LoadSegment {
    /// Converts a checked segment of an image starting at `first_vaddr` with `footprint` bytes.
    fn new(
        index: usize,
        ph: &ProgramHeader,
        first_vaddr: u64,
        footprint: u64,
    ) -> Result<LoadSegment, LoadError> {
        let too_large = || LoadError::FootprintTooLarge(format!("{footprint:#x} bytes"));
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
    }

    /// Copies the segment's file bytes from `file` into `image` (the whole image, `footprint`
    /// bytes) and zeroes its BSS.
    pub(super) fn copy_into(
        &self,
        file: &[u8],
        image: &mut [u8],
        footprint: u64,
    ) -> Result<(), LoadError> {
        let truncated = || LoadError::Truncated {
            what: format!("segment {} (PT_LOAD)", self.index),
            offset: self.file_offset as u64,
            size: self.filesz as u64,
            file_len: file.len() as u64,
        };
        let src = self
            .file_offset
            .checked_add(self.filesz)
            .and_then(|file_end| file.get(self.file_offset..file_end))
            .ok_or_else(truncated)?;
        let image_len = image.len();
        let dst = self
            .image_offset
            .checked_add(self.memsz)
            .and_then(|mem_end| image.get_mut(self.image_offset..mem_end))
            .ok_or(LoadError::WrongImageSize {
                got: image_len,
                expected: footprint,
            })?;
        // filesz <= memsz was checked in `parse`, so the split succeeds and the lengths match.
        let (file_part, bss) = dst.split_at_mut_checked(self.filesz).ok_or(
            LoadError::SegmentFileSizeExceedsMemSize {
                index: self.index,
                filesz: self.filesz as u64,
                memsz: self.memsz as u64,
            },
        )?;
        file_part.copy_from_slice(src);
        zero_untouched(bss);
        Ok(())
    }
}

/// Zeroes `bytes`, writing only the 4 KiB pieces that are not zero already: fresh guest RAM is
/// zero, and reading it (unlike writing) does not make the host allocate memory for it.
pub(super) fn zero_untouched(bytes: &mut [u8]) {
    for piece in bytes.chunks_mut(4096) {
        // An OR over the whole piece (no early exit) compiles to wide vector loads.
        if piece.iter().fold(0u8, |any, &byte| any | byte) != 0 {
            piece.fill(0);
        }
    }
}
