//! The user-space emulation fallback, connected to a vCPU: on an emulation failure it reads the
//! x86 vCPU state ([`X86Vcpu`]), fetches the instruction through the guest's page tables, lets
//! the emulator (`crate::arch::x86_64::emulate`) execute it against guest memory as the guest's
//! page tables and permissions show it ([`PagedGuestMemory`]), and writes the new state back —
//! or injects the page fault the guest's CPU would have raised.

use std::sync::atomic::{AtomicBool, Ordering};

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use crate::arch::x86_64::emulate::{
    EmulationError, GuestAccess, MAX_INSTRUCTION_LEN, PageFault, PagingMode, SystemServices,
    X86State, XsaveScope, emulate, integer, xsave, xsave_scope,
};
use crate::arch::x86_64::paging::{AccessKind, CheckedPageTables, CheckedTranslateError};
use crate::hypervisor::VcpuError;
use crate::hypervisor::x86_64::X86Vcpu;
use crate::mem::GuestMemory;
use crate::mem::virt::{GuestVirtMemory, VirtError};

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

    /// Whether the user asked for it (`--no-emulation-fallback` turns it off).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Executes the instruction at the vCPU's RIP in user space, and after it up to
    /// `run_limit` − 1 further SSE or extension instructions that follow it (a run, see
    /// [`emulate_on_vcpu`]): what to count in the statistics (the lower-case mnemonic of each
    /// instruction, or `#PF` when the first faulted in the guest), or why it failed.
    pub fn execute(
        &self,
        cpu: &mut dyn X86Vcpu,
        mem: &GuestMemory,
        reported: Option<&[u8]>,
        run_limit: usize,
    ) -> Result<Vec<String>, FallbackError> {
        let result = emulate_on_vcpu(cpu, mem, reported, run_limit);
        if let Ok(Emulated::Executed(instruction, _)) = &result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "the hypervisor cannot execute `{instruction}` (RIP {:#x}); uhyve executes such \
                 instructions in user space, which is much slower (--no-emulation-fallback turns \
                 this off; --stats counts them)",
                instruction.ip()
            );
        }
        let mnemonic = |i: &Instruction| format!("{:?}", i.mnemonic()).to_lowercase();
        result.map(|outcome| match outcome {
            Emulated::Executed(instruction, run) => std::iter::once(&instruction)
                .chain(&run)
                .map(mnemonic)
                .collect(),
            Emulated::PageFault { instruction, fault } => {
                log::debug!(
                    "injected a page fault at {:#x} (error code {:#x}) for {}",
                    fault.address,
                    fault.error_code,
                    instruction.map_or("an instruction fetch".to_owned(), |i| format!("`{i}`"))
                );
                vec!["#PF".to_owned()]
            }
        })
    }
}

/// Guest memory seen through the guest's page tables: every access goes through the
/// guest-virtual door with the page permissions the guest's CPU would enforce for it (a violation
/// is the page fault the guest must see) and is checked against guest RAM. Reads and writes are
/// all or nothing: every page is translated and checked before the first byte moves.
pub struct PagedGuestMemory<'a> {
    mem: &'a GuestMemory,
    root: GuestPhysAddr,
    mode: PagingMode,
}

impl<'a> PagedGuestMemory<'a> {
    /// Guest memory as the page tables rooted at `root` (CR3) map it, for accesses in `mode`.
    pub fn new(mem: &'a GuestMemory, root: GuestPhysAddr, mode: PagingMode) -> Self {
        Self { mem, root, mode }
    }

    /// Guest memory as the guest's CPU sees it for `access`.
    fn door(&self, access: AccessKind) -> GuestVirtMemory<'a, CheckedPageTables> {
        GuestVirtMemory::new(
            self.mem,
            CheckedPageTables::new(self.root, access, self.mode),
        )
    }

    /// Fetches up to `max` instruction bytes at `address`, stopping at the first byte the guest
    /// could not fetch; that byte's page fault, if it was one, comes with the bytes.
    pub fn fetch(&mut self, address: u64, max: usize) -> (Vec<u8>, Option<PageFault>) {
        let mut bytes = vec![0u8; max];
        let fetched = self
            .door(AccessKind::Fetch)
            .read_prefix(GuestVirtAddr::new(address), &mut bytes);
        bytes.truncate(fetched.len);
        let fault = match fetched.stop {
            Some(VirtError::Walk(CheckedTranslateError::PageFault(fault))) => Some(fault),
            _ => None,
        };
        (bytes, fault)
    }
}

/// The emulator's error for an access of `len` bytes at `address` that the door refused: the page
/// fault the guest's CPU would raise, or a bad address for anything else (non-canonical, outside
/// RAM, wrapping around the address space).
fn access_error(
    address: u64,
    len: usize,
    error: VirtError<CheckedTranslateError>,
) -> EmulationError {
    match error {
        VirtError::Walk(CheckedTranslateError::PageFault(fault)) => {
            EmulationError::PageFault(fault)
        }
        _ => EmulationError::BadAddress { address, len },
    }
}

impl GuestAccess for PagedGuestMemory<'_> {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError> {
        self.door(AccessKind::Read)
            .read(GuestVirtAddr::new(address), buf)
            .map_err(|error| access_error(address, buf.len(), error))
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError> {
        self.door(AccessKind::Write)
            .write(GuestVirtAddr::new(address), data)
            .map_err(|error| access_error(address, data.len(), error))
    }

    fn probe_write(&mut self, address: u64, len: usize) -> Result<(), EmulationError> {
        self.door(AccessKind::Write)
            .check(GuestVirtAddr::new(address), len as u64)
            .map_err(|error| access_error(address, len, error))
    }
}

/// [`SystemServices`] backed by a vCPU.
struct BackendServices<'a> {
    cpu: &'a mut dyn X86Vcpu,
}

impl SystemServices for BackendServices<'_> {
    fn read_tsc(&mut self) -> Result<(u64, u32), EmulationError> {
        self.cpu
            .guest_tsc()
            .map_err(|e| EmulationError::Unsupported(format!("rdtscp (cannot read the TSC: {e})")))
    }

    fn supported_xcr0(&self) -> u64 {
        self.cpu.xsave_layout().supported_xcr0
    }

    fn xsave_component(&self, index: u32) -> Option<xsave::XsaveComponent> {
        self.cpu.xsave_layout().component(index)
    }

    fn xsave_extensions(&self) -> xsave::XsaveExtensions {
        self.cpu.xsave_layout().extensions
    }

    fn withheld_xcr0(&self) -> u64 {
        self.cpu.xsave_layout().withheld_xcr0
    }

    fn random(&mut self, buf: &mut [u8]) -> Result<(), EmulationError> {
        let mut file = std::fs::File::open("/dev/urandom")
            .map_err(|e| EmulationError::Unsupported(format!("rdrand (no randomness: {e})")))?;
        std::io::Read::read_exact(&mut file, buf)
            .map_err(|e| EmulationError::Unsupported(format!("rdrand (no randomness: {e})")))
    }
}

/// Why the fallback could not execute an instruction.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// Reading or writing the vCPU state failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The instruction cannot be emulated.
    #[error(transparent)]
    Emulation(#[from] EmulationError),
}

/// What the fallback did with the instruction at RIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulated {
    /// Executed it, and then the instructions of the second field (the rest of its run); RIP
    /// points past the last.
    Executed(Instruction, Vec<Instruction>),
    /// It (or fetching it) touched a page the guest's CPU would refuse: the page fault was
    /// injected into the guest, which handles it from the unchanged state (RIP at the
    /// instruction). `instruction` is `None` when the fault happened while fetching it.
    PageFault {
        /// The faulting instruction, if it could be fetched.
        instruction: Option<Instruction>,
        /// The fault.
        fault: PageFault,
    },
}

/// Executes the instruction at the vCPU's RIP in user space and writes the new state back, or
/// injects the page fault the guest's CPU would have raised for it. `reported` are the
/// instruction bytes the hypervisor gave, if any.
///
/// A run: after an SSE or extension instruction, the ones that directly follow it and are SSE
/// or extension instructions too are executed on the same state (up to `run_limit` in all), and
/// the state is written back once, so such a sequence costs one exit instead of one each. The
/// run ends before the first other instruction and before one that fails or faults (the guest
/// then meets it itself, and it comes back here alone).
pub fn emulate_on_vcpu(
    cpu: &mut dyn X86Vcpu,
    mem: &GuestMemory,
    reported: Option<&[u8]>,
    run_limit: usize,
) -> Result<Emulated, FallbackError> {
    // With the hypervisor's bytes the instruction is known first, and only the part of the
    // XSAVE area it works on is read.
    let scope = reported
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode())
        .filter(|instruction| !instruction.is_invalid())
        .map_or(XsaveScope::Full, |instruction| xsave_scope(&instruction));
    let before = cpu.emulation_state_for(scope)?;
    let mut memory =
        PagedGuestMemory::new(mem, GuestPhysAddr::new(before.cr3), before.paging_mode());
    let fetched;
    let bytes = match reported {
        Some(bytes) if !bytes.is_empty() => bytes,
        _ => {
            let (bytes, fault) = memory.fetch(before.rip, MAX_INSTRUCTION_LEN);
            let decodable = !Decoder::with_ip(64, &bytes, before.rip, DecoderOptions::NONE)
                .decode()
                .is_invalid();
            if let (false, Some(fault)) = (decodable, fault) {
                cpu.inject_page_fault(fault)?;
                return Ok(Emulated::PageFault {
                    instruction: None,
                    fault,
                });
            }
            fetched = bytes;
            &fetched
        }
    };
    let mut after = before.clone();
    match emulate(bytes, &mut after, &mut memory, &mut BackendServices { cpu }) {
        Ok(instruction) => {
            let run = continue_run(&mut after, &mut memory, cpu, &instruction, run_limit);
            cpu.set_emulation_state(&before, &after)?;
            if instruction.mnemonic() == Mnemonic::Xsetbv {
                cpu.xcr0_kept_by_fallback(after.xcr0);
            }
            Ok(Emulated::Executed(instruction, run))
        }
        Err(EmulationError::PageFault(fault)) => {
            cpu.inject_page_fault(fault)?;
            let instruction =
                Decoder::with_ip(64, bytes, before.rip, DecoderOptions::NONE).decode();
            Ok(Emulated::PageFault {
                instruction: Some(instruction),
                fault,
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Executes, on `state`, the instructions that follow `first` (if it is an SSE or extension
/// instruction itself) while they are SSE, extension or the integer instructions of
/// `emulate::integer` on registers (loop control and address arithmetic between SSE code), until
/// `run_limit` instructions in all, the first other instruction, or the first one that fails;
/// returns those executed after `first`.
fn continue_run(
    state: &mut X86State,
    memory: &mut PagedGuestMemory<'_>,
    cpu: &mut dyn X86Vcpu,
    first: &Instruction,
    run_limit: usize,
) -> Vec<Instruction> {
    /// RFLAGS.TF: the guest single-steps itself and must see a debug trap after each one.
    const TRAP_FLAG: u64 = 1 << 8;
    let mut run = Vec::new();
    if xsave_scope(first) != XsaveScope::Area
        || state.xsave_scope == XsaveScope::Nothing
        || state.rflags & TRAP_FLAG != 0
    {
        return run;
    }
    while run.len() + 1 < run_limit {
        let (bytes, _) = memory.fetch(state.rip, MAX_INSTRUCTION_LEN);
        let next = Decoder::with_ip(64, &bytes, state.rip, DecoderOptions::NONE).decode();
        if next.is_invalid() {
            break;
        }
        // On failure both leave the state (and guest memory) as it was.
        let executed = if integer::supports(&next) && !integer::touches_memory(&next) {
            integer::execute(&next, state, memory).is_ok_and(|done| done)
        } else if xsave_scope(&next) == XsaveScope::Area {
            let services = &mut BackendServices { cpu: &mut *cpu };
            emulate(&bytes, state, memory, services).is_ok()
        } else {
            false
        };
        if !executed {
            break;
        }
        run.push(next);
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::emulate::X86State;
    use crate::arch::x86_64::emulate::{XsaveLayout, state};
    use crate::arch::x86_64::paging::{PTE_HUGE, PTE_NO_EXECUTE, PTE_PRESENT, PTE_WRITABLE};
    use crate::hypervisor::{VcpuExit, VirtualCpu};

    /// A vCPU for the fallback: its state, and what was written back.
    struct FakeCpu {
        state: X86State,
        written: Option<X86State>,
        layout: XsaveLayout,
        injected: Option<PageFault>,
    }

    impl VirtualCpu for FakeCpu {
        fn id(&self) -> u32 {
            0
        }
        fn run(&mut self) -> Result<VcpuExit, VcpuError> {
            unreachable!("the fallback never runs the vCPU")
        }
        fn complete_port_in(&mut self, _: u32) -> Result<(), VcpuError> {
            unreachable!()
        }
        fn complete_hypercall_read(&mut self, _: u64) -> Result<(), VcpuError> {
            unreachable!()
        }
        fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError> {
            Ok(GuestPhysAddr::new(self.state.cr3))
        }
        fn instruction_pointer(&mut self) -> Result<u64, VcpuError> {
            Ok(self.state.rip)
        }
        fn register_dump(&mut self) -> Result<String, VcpuError> {
            Ok(String::new())
        }
    }

    impl X86Vcpu for FakeCpu {
        fn emulation_state(&mut self) -> Result<X86State, VcpuError> {
            Ok(self.state.clone())
        }
        fn set_emulation_state(&mut self, _: &X86State, after: &X86State) -> Result<(), VcpuError> {
            self.written = Some(after.clone());
            Ok(())
        }
        fn guest_tsc(&mut self) -> Result<(u64, u32), VcpuError> {
            Ok((1, 0))
        }
        fn xsave_layout(&self) -> &XsaveLayout {
            &self.layout
        }
        fn inject_page_fault(&mut self, fault: PageFault) -> Result<(), VcpuError> {
            self.injected = Some(fault);
            Ok(())
        }
    }

    /// 4 MiB of RAM, identity-mapped with one 2 MiB page at VA 0x20_0000 → PA 0x20_0000 and
    /// VA 0 → PA 0; tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD). VA 0x40_0000 maps a
    /// read-only, no-execute alias of PA 0x20_0000; VA 0x60_0000 maps a 2 MiB page outside RAM.
    fn memory() -> GuestMemory {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 4 << 20).unwrap();
        let w = |at: u64, v: u64| mem.write_obj(GuestPhysAddr::new(at), &v).unwrap();
        w(0x1000, 0x2000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x2000, 0x3000 | PTE_PRESENT | PTE_WRITABLE);
        w(0x3000, PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        w(0x3008, 0x20_0000 | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        w(0x3010, 0x20_0000 | PTE_PRESENT | PTE_HUGE | PTE_NO_EXECUTE);
        w(0x3018, 0x1000_0000 | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
        mem
    }

    fn cpu_at(rip: u64) -> FakeCpu {
        let mut state = X86State {
            rip,
            cr3: 0x1000,
            xcr0: 3,
            ..Default::default()
        };
        state.set_gpr(1, 0); // ECX = 0: XCR0
        FakeCpu {
            state,
            written: None,
            layout: XsaveLayout::default(),
            injected: None,
        }
    }

    #[test]
    fn executes_reported_bytes_and_advances_rip() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        let xgetbv = [0x0f, 0x01, 0xd0];
        let Emulated::Executed(instruction, _) =
            emulate_on_vcpu(&mut cpu, &mem, Some(&xgetbv), 1).unwrap()
        else {
            panic!("xgetbv was not executed");
        };
        assert_eq!(instruction.to_string(), "xgetbv");
        let written = cpu.written.unwrap();
        assert_eq!(written.rip, 0x20_0003);
        assert_eq!(written.gpr(0), 3);
    }

    #[test]
    fn fetches_the_instruction_through_the_page_tables() {
        let mem = memory();
        // pxor xmm1, xmm1 at the last bytes of a page, crossing into the next one.
        let rip = 0x20_0ffe;
        mem.write(GuestPhysAddr::new(rip), &[0x66, 0x0f, 0xef, 0xc9])
            .unwrap();
        let mut cpu = cpu_at(rip);
        cpu.state.set_xmm(1, u128::MAX);
        let Emulated::Executed(instruction, _) = emulate_on_vcpu(&mut cpu, &mem, None, 1).unwrap()
        else {
            panic!("pxor was not executed");
        };
        assert_eq!(instruction.to_string(), "pxor xmm1,xmm1");
        let written = cpu.written.unwrap();
        assert_eq!(written.xmm(1), 0);
        assert_eq!(written.rip, rip + 4);
        assert_eq!(
            written.xsave[state::XSAVE_HEADER_OFFSET] & 2,
            2,
            "SSE state now in use"
        );
    }

    /// pxor xmm1,xmm1; paddq xmm1,xmm2; movq xmm3,[rbx] at 0x20_0000, then `inc eax`.
    fn sse_run_code(mem: &GuestMemory) -> Vec<u8> {
        let code = [
            0x66, 0x0f, 0xef, 0xc9, 0x66, 0x0f, 0xd4, 0xca, 0xf3, 0x0f, 0x7e, 0x1b, 0xff, 0xc0,
        ];
        mem.write(GuestPhysAddr::new(0x20_0000), &code).unwrap();
        code[..4].to_vec()
    }

    #[test]
    fn sse_instructions_that_follow_run_in_the_same_exit() {
        let mem = memory();
        let first = sse_run_code(&mem);
        mem.write_obj(GuestPhysAddr::new(0x20_1000), &0x55u64)
            .unwrap();
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_xmm(1, 7);
        cpu.state.set_xmm(2, 40);
        cpu.state.set_gpr(3, 0x20_1000); // RBX
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&first), 64).unwrap();
        let Emulated::Executed(instruction, run) = outcome else {
            panic!("not executed: {outcome:?}");
        };
        assert_eq!(instruction.to_string(), "pxor xmm1,xmm1");
        let run: Vec<String> = run.iter().map(ToString::to_string).collect();
        assert_eq!(run, ["paddq xmm1,xmm2", "movq xmm3,[rbx]", "inc eax"]);
        // One write-back, with RIP at the integer instruction with a memory operand that
        // follows (the zeros after the code: `add [rax],al`), which the guest executes itself.
        let written = cpu.written.unwrap();
        assert_eq!(written.rip, 0x20_000e);
        assert_eq!(written.gpr(0), 1);
        assert_eq!((written.xmm(1), written.xmm(3)), (40, 0x55));
    }

    #[test]
    fn a_guest_that_single_steps_itself_gets_no_run() {
        let mem = memory();
        let first = sse_run_code(&mem);
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.rflags |= 1 << 8;
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&first), 64).unwrap();
        assert!(matches!(&outcome, Emulated::Executed(_, run) if run.is_empty()));
        assert_eq!(cpu.written.as_ref().unwrap().rip, 0x20_0004);
    }

    #[test]
    fn a_run_stops_at_its_limit_and_before_an_instruction_that_faults() {
        let mem = memory();
        let first = sse_run_code(&mem);
        let mut cpu = cpu_at(0x20_0000);
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&first), 2).unwrap();
        assert!(matches!(&outcome, Emulated::Executed(_, run) if run.len() == 1));
        assert_eq!(cpu.written.as_ref().unwrap().rip, 0x20_0008);
        // RBX outside RAM: the run ends before the load, nothing is injected, and the guest
        // meets the load itself.
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_gpr(3, 0x60_0000);
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&first), 64).unwrap();
        assert!(matches!(&outcome, Emulated::Executed(_, run) if run.len() == 1));
        assert_eq!(cpu.written.as_ref().unwrap().rip, 0x20_0008);
        assert!(cpu.injected.is_none());
    }

    #[test]
    fn unknown_instructions_are_named_and_nothing_is_written() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        let cpuid = [0x0f, 0xa2];
        let error = emulate_on_vcpu(&mut cpu, &mem, Some(&cpuid), 1).unwrap_err();
        assert_eq!(error.to_string(), "the emulator does not implement `cpuid`");
        assert!(cpu.written.is_none());
        // Bytes that do not decode, fetched from mapped memory.
        let mut cpu = cpu_at(0x20_0000);
        mem.write(GuestPhysAddr::new(0x20_0000), &[0xff; 15])
            .unwrap();
        let error = emulate_on_vcpu(&mut cpu, &mem, None, 1).unwrap_err();
        assert!(matches!(
            error,
            FallbackError::Emulation(EmulationError::Undecodable)
        ));
    }

    #[test]
    fn fetching_from_unmapped_or_no_execute_pages_is_a_page_fault() {
        use crate::arch::x86_64::paging::{PF_FETCH, PF_PROTECTION};
        let mem = memory();
        for (rip, error_code) in [
            (0x80_0000_0000, PF_FETCH),
            (0x40_0000, PF_FETCH | PF_PROTECTION),
        ] {
            let mut cpu = cpu_at(rip);
            let outcome = emulate_on_vcpu(&mut cpu, &mem, None, 1).unwrap();
            let fault = PageFault {
                address: rip,
                error_code,
            };
            assert_eq!(
                outcome,
                Emulated::PageFault {
                    instruction: None,
                    fault
                }
            );
            assert_eq!(cpu.injected, Some(fault));
            assert!(cpu.written.is_none(), "nothing else changes");
        }
        // An instruction that straddles into a no-execute page faults on that page.
        let rip = 0x3f_fffe;
        mem.write(GuestPhysAddr::new(rip), &[0x66, 0x0f]).unwrap();
        let mut cpu = cpu_at(rip);
        let outcome = emulate_on_vcpu(&mut cpu, &mem, None, 1).unwrap();
        assert!(
            matches!(outcome, Emulated::PageFault { fault, .. } if fault.address == 0x40_0000),
            "{outcome:?}"
        );
    }

    #[test]
    fn fetches_stop_at_the_first_byte_the_guest_cannot_fetch() {
        use crate::arch::x86_64::paging::{PF_FETCH, PF_PROTECTION};
        let mem = memory();
        mem.write(GuestPhysAddr::new(0x3f_fffd), &[1, 2, 3])
            .unwrap();
        let mut memory = PagedGuestMemory::new(
            &mem,
            GuestPhysAddr::new(0x1000),
            cpu_at(0).state.paging_mode(),
        );
        // Page-wise: the whole instruction from one page, or the part before a no-execute page
        // with that page's fault.
        assert_eq!(memory.fetch(0x20_0000, 15), (vec![0; 15], None));
        assert_eq!(
            memory.fetch(0x3f_fffd, 15),
            (
                vec![1, 2, 3],
                Some(PageFault {
                    address: 0x40_0000,
                    error_code: PF_FETCH | PF_PROTECTION
                })
            )
        );
        // An unmapped page is a not-present fault; a page outside RAM is no fault the guest sees.
        assert_eq!(
            memory.fetch(u64::MAX, 15),
            (
                vec![],
                Some(PageFault {
                    address: u64::MAX,
                    error_code: PF_FETCH
                })
            )
        );
        assert_eq!(memory.fetch(0x60_0000, 15), (vec![], None));
    }

    #[test]
    fn stores_to_read_only_pages_inject_the_page_fault_the_cpu_would_raise() {
        use crate::arch::x86_64::paging::{PF_PROTECTION, PF_WRITE};
        let mem = memory();
        // movhps [rbx], xmm0 and xsave [rbx]: stores the hypervisor itself cannot execute.
        for bytes in [&[0x0f, 0x17, 0x03][..], &[0x0f, 0xae, 0x23][..]] {
            let mut cpu = cpu_at(0x20_0000);
            cpu.state.set_gpr(3, 0x40_0040); // RBX: the read-only alias
            cpu.state.set_gpr(0, 3); // EAX: x87 | SSE for xsave
            cpu.state.set_xmm(0, u128::MAX);
            let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(bytes), 1).unwrap();
            let fault = PageFault {
                address: 0x40_0040,
                error_code: PF_PROTECTION | PF_WRITE,
            };
            assert!(
                matches!(&outcome, Emulated::PageFault { instruction: Some(_), fault: f } if *f == fault),
                "{outcome:?}"
            );
            assert_eq!(cpu.injected, Some(fault));
            assert!(
                cpu.written.is_none(),
                "state unchanged, RIP at the instruction"
            );
            let mut page = [0u8; 64];
            mem.read(GuestPhysAddr::new(0x20_0040), &mut page).unwrap();
            assert_eq!(page, [0; 64], "nothing was stored");
            // Without CR0.WP a supervisor store goes through.
            let mut cpu = cpu_at(0x20_0000);
            cpu.state.cr0 &= !state::CR0_WP;
            cpu.state.set_gpr(3, 0x40_0040);
            cpu.state.set_gpr(0, 3);
            let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(bytes), 1).unwrap();
            assert!(matches!(outcome, Emulated::Executed(..)), "{outcome:?}");
            mem.write(GuestPhysAddr::new(0x20_0040), &[0; 1024])
                .unwrap();
        }
        // Reads of the read-only page work; a store to an unmapped page is a not-present fault.
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_gpr(3, 0x40_0040);
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&[0x0f, 0x16, 0x03]), 1).unwrap(); // movhps xmm0, [rbx]
        assert!(matches!(outcome, Emulated::Executed(..)), "{outcome:?}");
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_gpr(3, 0x80_0000);
        let outcome = emulate_on_vcpu(&mut cpu, &mem, Some(&[0x0f, 0x17, 0x03]), 1).unwrap();
        assert_eq!(
            outcome,
            Emulated::PageFault {
                instruction: Some(
                    Decoder::with_ip(64, &[0x0f, 0x17, 0x03], 0x20_0000, DecoderOptions::NONE)
                        .decode()
                ),
                fault: PageFault {
                    address: 0x80_0000,
                    error_code: PF_WRITE
                }
            }
        );
    }

    #[test]
    fn memory_operands_outside_ram_are_bad_addresses() {
        let mem = memory();
        let mut cpu = cpu_at(0x20_0000);
        cpu.state.set_gpr(3, 0x60_0000); // RBX: mapped to a page outside RAM
        // movdqu xmm0, [rbx]
        let error =
            emulate_on_vcpu(&mut cpu, &mem, Some(&[0xf3, 0x0f, 0x6f, 0x03]), 1).unwrap_err();
        assert!(matches!(
            error,
            FallbackError::Emulation(EmulationError::BadAddress {
                address: 0x60_0000,
                len: 16
            })
        ));
        assert!(cpu.written.is_none());
    }
}
