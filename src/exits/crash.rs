//! Guest crash reports: [`GuestCrash`] names the vCPU, what happened, the instruction pointer
//! and the instruction (decoded on x86_64, the raw word on aarch64), read through the guest's
//! page tables where the backend did not report them.

use std::fmt;

use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::arch::GuestArch;
use crate::arch::x86_64::disassemble::{MAX_INSTRUCTION_LEN, store_ending_at};
use crate::hypervisor::{InstructionBytes, VirtualCpu};
use crate::mem::GuestMemory;
use crate::mem::virt::GuestVirtMemory;

/// A description of a guest crash: what happened, where, and the instruction if known.
#[derive(Debug)]
pub struct GuestCrash {
    /// The vCPU that crashed.
    pub cpu: u32,
    /// The guest's architecture (names the instruction pointer).
    pub arch: GuestArch,
    /// What happened, e.g. "triple fault".
    pub what: String,
    /// The instruction pointer (RIP or PC), if it could be read.
    pub rip: Option<u64>,
    /// The instruction at `rip`, decoded, with its bytes.
    pub instruction: Option<(String, InstructionBytes)>,
    /// What `instruction` is to the crash.
    pub instruction_role: InstructionRole,
    /// A hint for the user.
    pub hint: Option<&'static str>,
}

impl fmt::Display for GuestCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest crashed: vCPU {}: {}", self.cpu, self.what)?;
        if let Some(rip) = self.rip {
            let name = match self.arch {
                GuestArch::X86_64 => "RIP",
                GuestArch::Aarch64 => "PC",
            };
            write!(f, " at {name} {rip:#x}")?;
        }
        if let Some((text, bytes)) = &self.instruction {
            let role = match self.instruction_role {
                InstructionRole::Faulting => "instruction",
                InstructionRole::Next => "next instruction",
            };
            write!(f, ", {role} `{text}` ({bytes})")?;
        }
        if let Some(hint) = self.hint {
            write!(f, ". {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GuestCrash {}

/// What the instruction in a crash report is to the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionRole {
    /// The instruction that crashed.
    Faulting,
    /// The one after it: RIP is already past the faulting instruction (a completed store) and
    /// that could not be identified.
    Next,
}

/// What a crash report reads from the guest.
#[derive(Clone, Copy)]
pub(super) struct CrashContext<'a> {
    pub(super) mem: &'a GuestMemory,
    pub(super) arch: GuestArch,
}

/// What is known about a crash before the vCPU is asked for the rest: what happened, and where
/// and at which instruction if the backend reported it.
pub(super) struct Crash {
    what: String,
    rip: Option<u64>,
    bytes: Option<InstructionBytes>,
    hint: Option<&'static str>,
    /// The size of a store that completed before the exit, leaving RIP past it (an x86 KVM MMIO
    /// write): the report looks for the store just before RIP.
    completed_store: Option<u8>,
}

impl Crash {
    /// A crash described by `what`.
    pub(super) fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            rip: None,
            bytes: None,
            hint: None,
            completed_store: None,
        }
    }

    /// The crash is a store of `size` bytes that completed before the exit: on x86_64 (KVM),
    /// RIP is already past it, so the report names the store just before RIP where it is
    /// unambiguous, or says that RIP is the next instruction.
    pub(super) fn after_store(self, size: u8) -> Self {
        Self {
            completed_store: Some(size),
            ..self
        }
    }

    /// The instruction pointer and instruction bytes the backend reported.
    pub(super) fn at(self, rip: u64, bytes: Option<InstructionBytes>) -> Self {
        Self {
            rip: Some(rip),
            bytes,
            ..self
        }
    }

    /// A hint for the user.
    pub(super) fn hint(self, hint: &'static str) -> Self {
        Self {
            hint: Some(hint),
            ..self
        }
    }

    /// The report: reads the instruction pointer and the instruction bytes where the backend
    /// did not report them, and logs a register dump at debug level.
    pub(super) fn report(self, vcpu: &mut dyn VirtualCpu, guest: CrashContext<'_>) -> GuestCrash {
        let rip = self.rip.or_else(|| vcpu.instruction_pointer().ok());
        let bytes = self.bytes.or_else(|| {
            let root = vcpu.page_table_root().ok()?;
            read_instruction(guest, root, rip?)
        });
        if log::log_enabled!(log::Level::Debug) {
            match vcpu.register_dump() {
                Ok(dump) => log::debug!("vCPU {} registers:\n{dump}", vcpu.id()),
                Err(e) => log::debug!("vCPU {}: no register dump: {e}", vcpu.id()),
            }
        }
        let mut instruction = match (rip, bytes) {
            (Some(rip), Some(bytes)) => Some(describe_instruction(guest.arch, rip, bytes)),
            _ => None,
        };
        let mut report = GuestCrash {
            cpu: vcpu.id(),
            arch: guest.arch,
            what: self.what,
            rip,
            instruction: None,
            instruction_role: InstructionRole::Faulting,
            hint: self.hint,
        };
        if let (Some(size), Some(end), GuestArch::X86_64) = (self.completed_store, rip, guest.arch)
        {
            let store = vcpu
                .page_table_root()
                .ok()
                .and_then(|root| read_before(guest, root, end))
                .and_then(|before| store_ending_at(end, &before, size));
            match store {
                Some(store) => {
                    report.rip = Some(store.rip);
                    instruction = Some((store.text, InstructionBytes(store.bytes)));
                }
                None => report.instruction_role = InstructionRole::Next,
            }
        }
        report.instruction = instruction;
        report
    }
}

/// Up to 15 bytes that end at guest-virtual `end`, fewer where the page before `end`'s page does
/// not translate.
fn read_before(guest: CrashContext<'_>, root: GuestPhysAddr, end: u64) -> Option<Vec<u8>> {
    let page_start = end & !0xfff;
    let starts = [end.saturating_sub(MAX_INSTRUCTION_LEN as u64), page_start];
    let reader = GuestVirtMemory::new(guest.mem, guest.arch.page_tables(root));
    starts
        .into_iter()
        .filter(|&start| start < end)
        .find_map(|start| {
            let mut bytes = vec![0u8; usize::try_from(end - start).ok()?];
            let read = reader.read_prefix(GuestVirtAddr::new(start), &mut bytes);
            (read.len == bytes.len()).then_some(bytes)
        })
}

/// The text of the instruction in `bytes` and the bytes it occupies.
fn describe_instruction(
    arch: GuestArch,
    rip: u64,
    bytes: InstructionBytes,
) -> (String, InstructionBytes) {
    let (text, len) = arch.disassemble(rip, &bytes.0);
    let mut shown = bytes.0;
    if len > 0 {
        shown.truncate(len);
    }
    (text, InstructionBytes(shown))
}

/// Reads the instruction bytes at guest-virtual `rip` (x86_64: up to 15, A64: 4), stopping at the
/// first page that does not translate.
fn read_instruction(
    guest: CrashContext<'_>,
    root: GuestPhysAddr,
    rip: u64,
) -> Option<InstructionBytes> {
    let max_len = match guest.arch {
        GuestArch::X86_64 => 15,
        GuestArch::Aarch64 => 4,
    };
    let mut bytes = vec![0u8; max_len];
    let read = GuestVirtMemory::new(guest.mem, guest.arch.page_tables(root))
        .read_prefix(GuestVirtAddr::new(rip), &mut bytes);
    if let Some(stop) = read.stop {
        log::debug!("instruction bytes at {rip:#x}: {stop}");
    }
    bytes.truncate(read.len);
    (!bytes.is_empty()).then_some(InstructionBytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_messages_name_cpu_rip_and_instruction() {
        let crash = GuestCrash {
            cpu: 0,
            arch: GuestArch::X86_64,
            what: "emulation failure".into(),
            rip: Some(0x40_1234),
            instruction: Some(("xgetbv".into(), InstructionBytes(vec![0x0f, 0x01, 0xd0]))),
            instruction_role: InstructionRole::Faulting,
            hint: Some("hint"),
        };
        assert_eq!(
            crash.to_string(),
            "guest crashed: vCPU 0: emulation failure at RIP 0x401234, instruction `xgetbv` (0f 01 d0). hint"
        );
    }

    /// Reads the instruction at `rip` of a guest of `arch` booted with the boot page tables.
    fn instruction_at(arch: GuestArch, rip: impl Fn(u64) -> u64) -> Option<Vec<u8>> {
        const MIB: u64 = 1 << 20;
        let (mem, root) = match arch {
            GuestArch::X86_64 => {
                use crate::arch::x86_64::{build_identity_map, layout};
                let mem = GuestMemory::new(GuestPhysAddr::new(0), 16 * MIB).unwrap();
                let map = layout::MemoryLayout::new(16 * MIB, layout::PIE_KERNEL_BASE..MIB);
                let root = build_identity_map(&mem, &map.unwrap(), MIB, false).unwrap();
                (mem, root)
            }
            GuestArch::Aarch64 => {
                use crate::arch::aarch64::{build_identity_map, layout};
                let image = layout::PIE_KERNEL_BASE..layout::RAM_BASE + MIB;
                let mem = GuestMemory::new(GuestPhysAddr::new(layout::RAM_BASE), 16 * MIB).unwrap();
                let map = layout::MemoryLayout::new(16 * MIB, image.clone()).unwrap();
                let root = build_identity_map(&mem, &map, image.end).unwrap();
                (mem, root)
            }
        };
        let code: Vec<u8> = (1..=16).collect();
        let image_end = match arch {
            GuestArch::X86_64 => 2 * MIB,
            GuestArch::Aarch64 => crate::arch::aarch64::layout::RAM_BASE + MIB,
        };
        let rip = rip(image_end);
        if mem.checked_range(GuestPhysAddr::new(rip), 16).is_ok() {
            mem.write(GuestPhysAddr::new(rip), &code).unwrap();
        }
        read_instruction(CrashContext { mem: &mem, arch }, root, rip).map(|bytes| bytes.0)
    }

    #[test]
    fn instructions_are_read_up_to_the_first_unmapped_page() {
        for arch in [GuestArch::X86_64, GuestArch::Aarch64] {
            let code: Vec<u8> = (1..=16).collect();
            let max = match arch {
                GuestArch::X86_64 => 15,
                GuestArch::Aarch64 => 4,
            };
            // Well inside the mapped image, and across into the unmapped page after it.
            assert_eq!(
                instruction_at(arch, |end| end - 0x100),
                Some(code[..max].to_vec()),
                "{arch:?}"
            );
            assert_eq!(
                instruction_at(arch, |end| end - 3),
                Some(code[..3].to_vec()),
                "{arch:?}"
            );
            assert_eq!(instruction_at(arch, |end| end), None, "{arch:?}");
        }
        // The recursive slot maps the last page of the x86_64 address space onto the PML4: its
        // last entry (the recursive one, 0x10000 | 0x3) is readable up to the end.
        assert_eq!(
            instruction_at(GuestArch::X86_64, |_| u64::MAX - 7),
            Some(vec![0x03, 0, 0x01, 0, 0, 0, 0, 0])
        );
    }
}
