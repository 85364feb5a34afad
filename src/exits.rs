//! What each vCPU exit means: the per-vCPU exit loop hands hypercalls to the shared dispatcher,
//! answers PCI probes and unknown ports, runs the user-space emulation fallback on emulation
//! failures, and turns every other exit into a [`GuestCrash`] report that names the vCPU, the
//! instruction pointer and the instruction (decoded on x86_64, the raw word on aarch64).

use std::sync::atomic::{AtomicBool, Ordering};

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::arch::x86_64::emulate;
use crate::arch::{GuestArch, PAGE_SIZE};
use crate::hypercall::{HypercallOutcome, Hypercalls};
use crate::mem::GuestMemory;
use crate::stats::ExitStats;
use crate::vcpu::{InstructionBytes, VcpuExit, VirtualCpu};
use crate::vm::{GuestCrash, GuestExit, VmError};

/// What an emulation failure is, for the crash report.
const EMULATION_FAILURE: &str = "emulation failure: the hypervisor cannot execute this instruction";
/// Why emulation failures happen, for the crash report.
const EMULATION_FAILURE_HINT: &str = "Some KVM hosts (e.g. KVM-PVM) execute every guest \
     instruction in software and lack some instructions (SSE arithmetic, XSAVE, XGETBV)";

/// PCI configuration address port.
const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// PCI configuration data port.
const PCI_CONFIG_DATA: u16 = 0xcfc;

/// The user-space fallback for instructions the hypervisor cannot emulate, shared by all vCPUs.
pub struct EmulationFallback {
    enabled: bool,
    warned: AtomicBool,
}

impl EmulationFallback {
    /// The fallback, enabled or not.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            warned: AtomicBool::new(false),
        }
    }

    /// Executes the instruction at the vCPU's RIP in user space. `None` if the backend offers no
    /// access for it; otherwise what to count in the statistics (the lower-case mnemonic, or
    /// `#PF` when the instruction faulted in the guest), or why it failed.
    fn execute(
        &self,
        vcpu: &mut dyn VirtualCpu,
        mem: &GuestMemory,
        reported: Option<&[u8]>,
    ) -> Option<Result<String, emulate::FallbackError>> {
        let cpu = vcpu.as_x86()?;
        let result = emulate::emulate_on_vcpu(cpu, mem, reported);
        if let Ok(emulate::Emulated::Executed(instruction)) = &result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "the hypervisor cannot execute `{instruction}` (RIP {:#x}); uhyve executes such \
                 instructions in user space, which is much slower (--no-emulation-fallback turns \
                 this off; --stats counts them)",
                instruction.ip()
            );
        }
        Some(result.map(|outcome| match outcome {
            emulate::Emulated::Executed(instruction) => {
                format!("{:?}", instruction.mnemonic()).to_lowercase()
            }
            emulate::Emulated::PageFault { instruction, fault } => {
                log::debug!(
                    "injected a page fault at {:#x} (error code {:#x}) for {}",
                    fault.address,
                    fault.error_code,
                    instruction.map_or("an instruction fetch".to_owned(), |i| format!("`{i}`"))
                );
                "#PF".to_owned()
            }
        }))
    }
}

/// State of the emulated PCI configuration mechanism: no devices, every read is all-ones.
#[derive(Debug, Default)]
struct PciConfigSpace {
    address: u32,
}

/// What every vCPU's exit loop uses; shared by all vCPU threads.
pub struct ExitServices<'a> {
    /// Guest RAM.
    pub mem: &'a GuestMemory,
    /// The hypercall dispatcher.
    pub hypercalls: &'a Hypercalls,
    /// The emulation fallback.
    pub fallback: EmulationFallback,
    /// Set when the VM stops; every exit loop checks it before entering the guest.
    pub stop: AtomicBool,
}

/// The exit loop of one vCPU: `Some(exit)` when the guest called Exit, `None` when the VM was
/// stopped from outside this vCPU.
pub fn run_vcpu(
    vcpu: &mut dyn VirtualCpu,
    shared: &ExitServices<'_>,
    mut stats: Option<&mut ExitStats>,
) -> Result<Option<GuestExit>, VmError> {
    let (mem, hypercalls, fallback) = (shared.mem, shared.hypercalls, &shared.fallback);
    let cpu = vcpu.id();
    let vcpu_error = |source| VmError::Vcpu { cpu, source };
    let mut pci = PciConfigSpace::default();
    let guest = CrashContext {
        mem,
        arch: hypercalls.arch(),
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let exit = vcpu.run().map_err(vcpu_error)?;
        if let Some(stats) = stats.as_deref_mut() {
            stats.record(exit.kind());
        }
        match exit {
            VcpuExit::Hypercall { address, argument } => {
                let mut root = || vcpu.page_table_root();
                match hypercalls.handle(mem, address, argument, &mut root) {
                    HypercallOutcome::Continue => {}
                    HypercallOutcome::Exit(code) => return Ok(Some(GuestExit(code))),
                    HypercallOutcome::Fatal(source) => {
                        return Err(VmError::Hypercall { cpu, source });
                    }
                }
            }
            VcpuExit::HypercallRead { address, size } => {
                let value = hypercalls.handle_read(address, size);
                vcpu.complete_hypercall_read(value).map_err(vcpu_error)?;
            }
            VcpuExit::PortOut { port, data, size } => {
                if port == PCI_CONFIG_ADDRESS && size == 4 {
                    pci.address = data;
                } else {
                    log::debug!("vCPU {cpu}: ignored write of {data:#x} to port {port:#x}");
                }
            }
            VcpuExit::PortIn { port, size } => {
                if port == PCI_CONFIG_DATA {
                    log::trace!(
                        "vCPU {cpu}: PCI config read at {:#x}: no device",
                        pci.address
                    );
                } else {
                    log::debug!("vCPU {cpu}: read of {size} bytes from unknown port {port:#x}");
                }
                // No device anywhere: PCI config reads and unknown ports read as all-ones.
                vcpu.complete_port_in(u32::MAX).map_err(vcpu_error)?;
            }
            VcpuExit::Halt => {
                // With the in-kernel irqchip KVM handles HLT itself; if it reports one anyway,
                // re-entering waits for the next interrupt.
            }
            VcpuExit::Interrupted => {
                // A kick or host signal ended the run (KVM_RUN returned EINTR, or hv_vcpu_run
                // returned CANCELED): a stop request is handled at the top of the loop; anything
                // else just resumes the guest.
            }
            VcpuExit::MmioRead { address, size } => {
                return Err(crash(
                    vcpu,
                    guest,
                    &format!(
                        "read of {size} bytes from {address:#x}, which is neither RAM nor a device"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::MmioWrite {
                address,
                data,
                size,
            } => {
                return Err(crash(
                    vcpu,
                    guest,
                    &format!(
                        "write of {size} bytes ({data:#x}) to {address:#x}, which is neither RAM nor a device"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::Shutdown => {
                return Err(crash(
                    vcpu,
                    guest,
                    "triple fault (the CPU shut down after an exception it could not handle)",
                    None,
                    None,
                ));
            }
            VcpuExit::EmulationFailure { rip, instruction } => {
                if fallback.enabled {
                    let reported = instruction.as_ref().map(|bytes| bytes.0.as_slice());
                    match fallback.execute(vcpu, mem, reported) {
                        Some(Ok(mnemonic)) => {
                            if let Some(stats) = stats.as_deref_mut() {
                                stats.record_emulated(&mnemonic);
                            }
                            continue;
                        }
                        Some(Err(error)) => {
                            let what = format!(
                                "emulation failure the user-space fallback cannot handle: {error}"
                            );
                            return Err(crash(vcpu, guest, &what, Some(rip), instruction));
                        }
                        None => {}
                    }
                }
                let failure = crash(vcpu, guest, EMULATION_FAILURE, Some(rip), instruction);
                return Err(failure.with_hint(EMULATION_FAILURE_HINT));
            }
            VcpuExit::Debug => {
                return Err(crash(vcpu, guest, "unexpected debug exit", None, None));
            }
            VcpuExit::FailedEntry { reason } => {
                return Err(crash(
                    vcpu,
                    guest,
                    &format!(
                        "the hypervisor refused to enter the guest (hardware reason {reason:#x})"
                    ),
                    None,
                    None,
                ));
            }
            VcpuExit::Unhandled { description } => {
                return Err(crash(
                    vcpu,
                    guest,
                    &format!("unhandled exit: {description}"),
                    None,
                    None,
                ));
            }
        }
    }
}

impl VmError {
    fn with_hint(self, hint: &'static str) -> Self {
        match self {
            VmError::GuestCrash(mut crash) => {
                crash.hint = Some(hint);
                VmError::GuestCrash(crash)
            }
            other => other,
        }
    }
}

/// What a crash report reads from the guest.
#[derive(Clone, Copy)]
struct CrashContext<'a> {
    mem: &'a GuestMemory,
    arch: GuestArch,
}

/// Builds a [`GuestCrash`] error, reading the instruction pointer and the instruction bytes where
/// the backend did not report them, and logs a register dump at debug level.
fn crash(
    vcpu: &mut dyn VirtualCpu,
    guest: CrashContext<'_>,
    what: &str,
    rip: Option<u64>,
    bytes: Option<InstructionBytes>,
) -> VmError {
    let rip = rip.or_else(|| vcpu.instruction_pointer().ok());
    let bytes = bytes.or_else(|| {
        let root = vcpu.page_table_root().ok()?;
        read_instruction(guest, root, rip?)
    });
    if log::log_enabled!(log::Level::Debug) {
        match vcpu.register_dump() {
            Ok(dump) => log::debug!("vCPU {} registers:\n{dump}", vcpu.id()),
            Err(e) => log::debug!("vCPU {}: no register dump: {e}", vcpu.id()),
        }
    }
    let instruction = match (rip, bytes) {
        (Some(rip), Some(bytes)) => Some(describe_instruction(guest.arch, rip, bytes)),
        _ => None,
    };
    VmError::GuestCrash(GuestCrash {
        cpu: vcpu.id(),
        arch: guest.arch,
        what: what.to_string(),
        rip,
        instruction,
        hint: None,
    })
}

/// The text of the instruction in `bytes` and the bytes it occupies.
fn describe_instruction(
    arch: GuestArch,
    rip: u64,
    bytes: InstructionBytes,
) -> (String, InstructionBytes) {
    match arch {
        GuestArch::X86_64 => {
            let (text, len) = decode_instruction(rip, &bytes.0);
            let mut shown = bytes.0;
            if len > 0 {
                shown.truncate(len);
            }
            (text, InstructionBytes(shown))
        }
        GuestArch::Aarch64 => {
            // Every A64 instruction is one little-endian word; shown as the assembler's `.inst`.
            let text = match <[u8; 4]>::try_from(bytes.0.as_slice()) {
                Ok(word) => format!(".inst {:#010x}", u32::from_le_bytes(word)),
                Err(_) => "(incomplete)".to_string(),
            };
            (text, bytes)
        }
    }
}

/// Reads the instruction bytes at guest-virtual `rip` (x86_64: up to 15, A64: 4), stopping at the
/// first unmapped page.
fn read_instruction(
    guest: CrashContext<'_>,
    root: GuestPhysAddr,
    rip: u64,
) -> Option<InstructionBytes> {
    let max_len: u64 = match guest.arch {
        GuestArch::X86_64 => 15,
        GuestArch::Aarch64 => 4,
    };
    let mem = guest.mem;
    let mut bytes = Vec::with_capacity(max_len as usize);
    // At most two pages: the one holding RIP and, if the instruction may cross it, the next.
    let in_first_page = PAGE_SIZE - rip % PAGE_SIZE;
    for (start, len) in [
        (rip, in_first_page.min(max_len)),
        (
            rip.checked_add(in_first_page)?,
            max_len.saturating_sub(in_first_page),
        ),
    ] {
        if len == 0 {
            break;
        }
        let Ok(pieces) = guest
            .arch
            .translate_range(mem, root, GuestVirtAddr::new(start), len)
        else {
            break;
        };
        for (address, piece_len) in pieces {
            let mut piece = vec![0u8; piece_len as usize];
            mem.read(address, &mut piece).ok()?;
            bytes.extend_from_slice(&piece);
        }
    }
    (!bytes.is_empty()).then_some(InstructionBytes(bytes))
}

/// Decodes one x86_64 instruction for a diagnostic, e.g. `xgetbv`. Returns its text and its
/// length in bytes (0 if the bytes do not decode).
pub fn decode_instruction(rip: u64, bytes: &[u8]) -> (String, usize) {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return ("(undecodable)".to_string(), 0);
    }
    let mut text = String::new();
    IntelFormatter::new().format(&instruction, &mut text);
    (text, instruction.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_instructions_this_kvm_cannot_emulate() {
        let decode = |bytes: &[u8]| decode_instruction(0x1000, bytes);
        assert_eq!(
            decode(&[0x0f, 0x01, 0xd0, 0x48, 0xc1]),
            ("xgetbv".into(), 3)
        );
        assert_eq!(decode(&[0x0f, 0x57, 0xc0]), ("xorps xmm0,xmm0".into(), 3));
        assert_eq!(decode(&[0xff, 0xff]), ("(undecodable)".into(), 0));
        assert_eq!(decode(&[]), ("(undecodable)".into(), 0));
    }
}
