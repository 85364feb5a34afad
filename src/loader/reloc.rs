//! Dynamic relocations of a kernel image: reading `PT_DYNAMIC` (rejecting `DT_NEEDED` and
//! relocation tables other than `DT_RELA`), resolving every RELA entry at parse time into an image
//! offset and a value (load-bias relative or absolute, through the dynamic symbol table for symbol
//! relocations), and writing those values once the load address is known.

use std::ops::Range;

use goblin::container::Ctx;
use goblin::elf::dynamic::{
    DT_NEEDED, DT_NULL, DT_PLTRELSZ, DT_RELA, DT_RELAENT, DT_RELASZ, DT_RELSZ, DT_SYMENT,
    DT_SYMTAB, Dynamic,
};
use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use goblin::elf::program_header::{PT_LOAD, ProgramHeader};
use goblin::elf::reloc::{
    R_AARCH64_ABS64, R_AARCH64_GLOB_DAT, R_AARCH64_NONE, R_AARCH64_RELATIVE, R_X86_64_64,
    R_X86_64_GLOB_DAT, R_X86_64_NONE, R_X86_64_RELATIVE, Reloc, RelocSection,
};
use goblin::elf::section_header::{SHN_ABS, SHN_UNDEF};
use goblin::elf::sym::{STB_WEAK, Symtab};
use goblin::elf64::reloc::SIZEOF_RELA;
use goblin::elf64::sym::SIZEOF_SYM;

use super::LoadError;

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
pub(super) struct Relocation {
    /// Position in the RELA table (for error messages).
    index: usize,
    /// Offset of the 8 bytes to write, relative to the image start; checked against the footprint.
    image_offset: usize,
    value: RelocValue,
}

/// What a relocation type does, independent of the architecture numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelocKind {
    None,
    Relative,
    /// `R_*_64` / `R_*_ABS64` and `R_*_GLOB_DAT`: symbol value plus addend.
    Symbol,
}

/// Maps an architecture's relocation number to what uhyve does with it; `None` if unsupported.
pub(super) fn reloc_kind(machine: u16, r_type: u32) -> Option<RelocKind> {
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

/// Reads `PT_DYNAMIC`, rejects `DT_NEEDED` and non-RELA relocation tables, and resolves every
/// RELA relocation into an image offset and a value.
pub(super) fn read_relocations(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
    machine: u16,
    first_vaddr: u64,
    footprint: u64,
) -> Result<Vec<Relocation>, LoadError> {
    let Some(dynamic) = read_dynamic(bytes, phdrs, ctx)? else {
        return Ok(Vec::new());
    };
    let Some(relocs) = rela_table(bytes, phdrs, ctx, &dynamic)? else {
        return Ok(Vec::new());
    };
    let resolver = Resolver {
        bytes,
        phdrs,
        ctx,
        machine,
        symtab: dynamic.symtab,
        first_vaddr,
        footprint,
    };
    let mut out = Vec::with_capacity(relocs.len());
    for (index, r) in relocs.iter().enumerate() {
        if let Some(relocation) = resolver.resolve(index, &r)? {
            out.push(relocation);
        }
    }
    Ok(out)
}

/// The entries of the dynamic section that uhyve uses.
#[derive(Debug, Default)]
struct DynamicInfo {
    /// `DT_RELA`: address of the RELA table.
    rela: Option<u64>,
    /// `DT_RELASZ`: size of the RELA table in bytes.
    relasz: u64,
    /// `DT_SYMTAB`: address of the dynamic symbol table.
    symtab: Option<u64>,
}

/// Reads the dynamic section up to `DT_NULL`, if there is one, checking the entry sizes and
/// rejecting what a static Hermit unikernel cannot have.
fn read_dynamic(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
) -> Result<Option<DynamicInfo>, LoadError> {
    let Some(dynamic) = Dynamic::parse(bytes, phdrs, ctx).map_err(|source| LoadError::Parse {
        what: "dynamic section",
        source,
    })?
    else {
        return Ok(None);
    };
    let mut info = DynamicInfo::default();
    for d in dynamic.dyns.iter().take_while(|d| d.d_tag != DT_NULL) {
        match d.d_tag {
            DT_NEEDED => return Err(LoadError::NeedsSharedLibraries),
            DT_RELA => info.rela = Some(d.d_val),
            DT_RELASZ => info.relasz = d.d_val,
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
            DT_SYMTAB => info.symtab = Some(d.d_val),
            DT_RELSZ if d.d_val != 0 => {
                return Err(LoadError::UnsupportedRelocationTable("DT_REL"));
            }
            DT_PLTRELSZ if d.d_val != 0 => {
                return Err(LoadError::UnsupportedRelocationTable("DT_JMPREL (PLT)"));
            }
            _ => {}
        }
    }
    Ok(Some(info))
}

/// Parses the RELA table the dynamic section names; `None` if it is empty.
fn rela_table<'a>(
    bytes: &'a [u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
    dynamic: &DynamicInfo,
) -> Result<Option<RelocSection<'a>>, LoadError> {
    let relasz = dynamic.relasz;
    if relasz == 0 {
        return Ok(None);
    }
    if !relasz.is_multiple_of(SIZEOF_RELA as u64) {
        return Err(LoadError::RelaSizeNotMultiple(relasz));
    }
    let rela = dynamic.rela.ok_or(LoadError::MissingRelaTable(relasz))?;
    let table = vaddr_to_file(phdrs, "relocation table (DT_RELA)", rela, relasz)?;
    RelocSection::parse(bytes, table.start, table.len(), true, ctx)
        .map(Some)
        .map_err(|source| LoadError::Parse {
            what: "relocation table",
            source,
        })
}

/// Everything needed to resolve the relocations of one image.
struct Resolver<'a> {
    bytes: &'a [u8],
    phdrs: &'a [ProgramHeader],
    ctx: Ctx,
    machine: u16,
    /// `DT_SYMTAB`, if present.
    symtab: Option<u64>,
    first_vaddr: u64,
    footprint: u64,
}

impl Resolver<'_> {
    /// Validates relocation `index` and resolves its value; `None` for an `R_*_NONE`.
    fn resolve(&self, index: usize, r: &Reloc) -> Result<Option<Relocation>, LoadError> {
        let kind = reloc_kind(self.machine, r.r_type).ok_or(LoadError::UnknownRelocation {
            index,
            r_type: r.r_type,
            machine: self.machine,
        })?;
        if kind == RelocKind::None {
            return Ok(None);
        }
        let image_end = self.first_vaddr + self.footprint; // checked in check_load_segments
        let out_of_image = || LoadError::RelocationOutOfImage {
            index,
            addr: r.r_offset,
            start: self.first_vaddr,
            end: image_end,
        };
        let image_offset = r
            .r_offset
            .checked_sub(self.first_vaddr)
            .filter(|off| off.checked_add(8).is_some_and(|end| end <= self.footprint))
            .and_then(|off| usize::try_from(off).ok())
            .ok_or_else(out_of_image)?;
        let addend = r.r_addend.unwrap_or(0) as u64; // two's complement: wrapping adds below
        let value = match kind {
            RelocKind::None | RelocKind::Relative => RelocValue::BiasPlus(addend),
            RelocKind::Symbol => self.resolve_symbol(index, r.r_sym, addend)?,
        };
        Ok(Some(Relocation {
            index,
            image_offset,
            value,
        }))
    }

    /// Computes the value `S + A` of a symbol relocation. Symbol 0 has the value 0; an undefined
    /// weak symbol resolves to 0; an undefined strong one is an error.
    fn resolve_symbol(
        &self,
        index: usize,
        symbol: usize,
        addend: u64,
    ) -> Result<RelocValue, LoadError> {
        if symbol == 0 {
            return Ok(RelocValue::Absolute(addend));
        }
        let symtab = self.symtab.ok_or(LoadError::Unmapped {
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
        let range = vaddr_to_file(self.phdrs, "dynamic symbol", sym_addr, SIZEOF_SYM as u64)?;
        let sym = Symtab::parse(self.bytes, range.start, 1, self.ctx)
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
}

/// Writes every relocation into `image`, which is loaded at `base..end` with load bias `bias`
/// (`base - first_vaddr`).
pub(super) fn apply_relocations(
    relocations: &[Relocation],
    image: &mut [u8],
    bias: u64,
    base: u64,
    end: u64,
) -> Result<(), LoadError> {
    for reloc in relocations {
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
    Ok(())
}
