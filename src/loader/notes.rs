//! The `PT_NOTE` segments of a kernel image: the HERMIT entry-version note (boot ABI version), the
//! UHYVEIF interface-version note (kernels ≥ 0.12) and the GNU ABI-tag note (kernel version).
//! Every note is read from its own segment's bytes, so none can reach outside it; the first note
//! of each kind wins and unknown notes are ignored.

use goblin::container::Ctx;
use goblin::elf::note::{NT_GNU_ABI_TAG, Note, NoteDataIterator};
use goblin::elf::program_header::{PT_NOTE, ProgramHeader};
use log::{debug, warn};

use super::{LoadError, SUPPORTED_ENTRY_VERSIONS, SUPPORTED_INTERFACE_VERSIONS};

/// Owner name and type of the Hermit entry-version note (descriptor: one byte).
const HERMIT_NOTE_NAME: &str = "HERMIT";
pub(super) const NT_HERMIT_ENTRY_VERSION: u32 = 0x5A00;
/// Owner name and type of the uhyve interface-version note (descriptor: u32 big-endian).
const UHYVEIF_NOTE_NAME: &str = "UHYVEIF";
pub(super) const NT_UHYVE_INTERFACE_VERSION: u32 = 0x5B00;
/// Owner name of the GNU ABI-tag note and the OS id Hermit puts in its first word.
const GNU_NOTE_NAME: &str = "GNU";
const ELF_NOTE_OS_HERMIT: u32 = 6;

/// Notes found in the `PT_NOTE` segments.
#[derive(Debug, Default)]
pub(super) struct Notes {
    pub(super) entry_version: Option<u8>,
    pub(super) interface_version: Option<u32>,
    pub(super) kernel_version: Option<(u32, u32, u32)>,
}

impl Notes {
    /// The entry version, which must be present and one uhyve supports.
    pub(super) fn checked_entry_version(&self) -> Result<u8, LoadError> {
        let entry_version = self.entry_version.ok_or(LoadError::MissingEntryVersion)?;
        if !SUPPORTED_ENTRY_VERSIONS.contains(&entry_version) {
            return Err(LoadError::UnsupportedEntryVersion(entry_version));
        }
        Ok(entry_version)
    }

    /// The interface version (1 without the UHYVEIF note), which must be one uhyve serves.
    pub(super) fn checked_interface_version(&self) -> Result<u32, LoadError> {
        let interface_version = self.interface_version.unwrap_or(1);
        if !SUPPORTED_INTERFACE_VERSIONS.contains(&interface_version) {
            return Err(LoadError::UnsupportedInterfaceVersion(interface_version));
        }
        Ok(interface_version)
    }

    /// Records `note` if it is one of the Hermit-relevant kinds and the first of its kind.
    fn record(&mut self, note: &Note) -> Result<(), LoadError> {
        match (note.name, note.n_type) {
            (HERMIT_NOTE_NAME, NT_HERMIT_ENTRY_VERSION) => {
                let version = entry_version(note.desc)?;
                self.entry_version.get_or_insert(version);
            }
            (UHYVEIF_NOTE_NAME, NT_UHYVE_INTERFACE_VERSION) => {
                let version = interface_version(note.desc)?;
                self.interface_version.get_or_insert(version);
            }
            (GNU_NOTE_NAME, NT_GNU_ABI_TAG) => {
                if let Some(version) = hermit_kernel_version(note.desc)? {
                    self.kernel_version.get_or_insert(version);
                }
            }
            (name, n_type) => debug!("ignoring ELF note {name:?} type {n_type:#x}"),
        }
        Ok(())
    }
}

/// Reads the Hermit-relevant notes from every `PT_NOTE` segment (the first of each kind wins).
pub(super) fn read_notes(
    bytes: &[u8],
    phdrs: &[ProgramHeader],
    ctx: Ctx,
) -> Result<Notes, LoadError> {
    let mut notes = Notes::default();
    for ph in phdrs.iter().filter(|ph| ph.p_type == PT_NOTE) {
        let data = segment_data(bytes, ph)?;
        // Iterating over the segment's bytes alone keeps every note inside its segment.
        let iter = NoteDataIterator {
            data,
            size: data.len(),
            offset: 0,
            ctx: (usize::try_from(ph.p_align).unwrap_or(usize::MAX), ctx),
        };
        for note in iter {
            notes.record(&note.map_err(LoadError::BadNote)?)?;
        }
    }
    Ok(notes)
}

/// The file bytes of a `PT_NOTE` segment.
fn segment_data<'a>(bytes: &'a [u8], ph: &ProgramHeader) -> Result<&'a [u8], LoadError> {
    // The segment's file range was checked in `parse`; `get` keeps this panic-free anyway.
    usize::try_from(ph.p_offset)
        .ok()
        .zip(usize::try_from(ph.p_filesz).ok())
        .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| LoadError::Truncated {
            what: "PT_NOTE segment".into(),
            offset: ph.p_offset,
            size: ph.p_filesz,
            file_len: bytes.len() as u64,
        })
}

/// The descriptor of the HERMIT entry-version note: one byte.
fn entry_version(desc: &[u8]) -> Result<u8, LoadError> {
    let &[version] = desc else {
        return Err(LoadError::BadNoteDescriptor {
            note: "HERMIT entry-version",
            len: desc.len(),
            expected: "1",
        });
    };
    Ok(version)
}

/// The descriptor of the UHYVEIF interface-version note: a big-endian u32.
fn interface_version(desc: &[u8]) -> Result<u32, LoadError> {
    let &[a, b, c, d] = desc else {
        return Err(LoadError::BadNoteDescriptor {
            note: "UHYVEIF interface-version",
            len: desc.len(),
            expected: "4",
        });
    };
    Ok(u32::from_be_bytes([a, b, c, d]))
}

/// The descriptor of the GNU ABI-tag note: four little-endian words, OS id then version. Tags for
/// other OSes than Hermit are not a Hermit kernel version (`None`, with a warning).
fn hermit_kernel_version(desc: &[u8]) -> Result<Option<(u32, u32, u32)>, LoadError> {
    if desc.len() != 16 {
        return Err(LoadError::BadNoteDescriptor {
            note: "GNU ABI-tag",
            len: desc.len(),
            expected: "16",
        });
    }
    let word = |i: usize| {
        desc.get(i * 4..i * 4 + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, u32::from_le_bytes)
    };
    if word(0) == ELF_NOTE_OS_HERMIT {
        Ok(Some((word(1), word(2), word(3))))
    } else {
        warn!(
            "GNU ABI-tag note names OS {}, not Hermit (6); ignoring it",
            word(0)
        );
        Ok(None)
    }
}
