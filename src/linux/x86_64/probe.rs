//! Finds out whether this host's KVM executes SSE instructions itself, before the guest's CPUID
//! is fixed (KVM refuses a CPUID change once a vCPU has run).
//!
//! A throw-away VM with one vCPU in 64-bit mode runs `xorps xmm0, xmm0; hlt` from a 16 KiB
//! memory slot that holds its own page tables. On KVM backed by hardware virtualization the
//! instruction executes and the vCPU stops at the `hlt` (no in-kernel irqchip, so HLT exits to
//! user space). A KVM that executes guest code in the host kernel's instruction emulator (KVM-PVM)
//! stops at the `xorps` with an emulation failure: SIMD and XSAVE instructions there reach uhyve's
//! user-space fallback, so the guest must only be told about what that fallback implements. The
//! probe costs one VM, one vCPU and one `KVM_RUN` (about 2 ms of CPU on KVM-PVM), and runs on its
//! own thread while the real VM is created.
//!
//! Most hosts need no probe at all: where the CPU offers VMX or SVM and no software KVM module
//! (`kvm_pvm`) is loaded, KVM runs guests in hardware and executes their SIMD code natively; one
//! CPUID instruction and one `stat` decide that ([`detect_simd_execution`]).

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// How the probe's SSE instruction ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdExecution {
    /// KVM executed it: SIMD and XSAVE instructions run natively.
    Native,
    /// KVM stopped with an emulation failure: such instructions end in uhyve's fallback.
    Emulated,
}

/// Size of the probe's guest memory: code page, PML4, PDPT, PD.
const PROBE_MEMORY: usize = 0x4000;
/// Guest-physical address of the PML4; the PDPT and PD follow it.
const PML4: u64 = 0x1000;
/// `xorps xmm0, xmm0; hlt`, at guest address 0.
const PROBE_CODE: [u8; 4] = [0x0f, 0x57, 0xc0, 0xf4];
/// CR0: PE, MP, ET, NE, PG.
const CR0: u64 = 0x8000_0033;
/// CR4: PAE, OSFXSR, OSXMMEXCPT.
const CR4: u64 = 0x20 | 1 << 9 | 1 << 10;
/// EFER: LME, LMA.
const EFER: u64 = 0x500;
/// Present, writable (and, in the PD, a 2 MiB page).
const TABLE: u64 = 0x3;
const LARGE_PAGE: u64 = 0x83;

/// Anonymous private memory for the probe, unmapped on drop.
struct ProbeMemory {
    address: *mut libc::c_void,
}

impl ProbeMemory {
    fn new() -> Option<Self> {
        // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing;
        // no existing memory is affected.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PROBE_MEMORY,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (address != libc::MAP_FAILED).then_some(Self { address })
    }

    fn write(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        assert!(at + bytes.len() <= PROBE_MEMORY, "probe layout overflow");
        // SAFETY: the range was just checked to lie inside the mapping, which this struct owns
        // exclusively (`&mut self`) and which stays mapped until drop.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.address.cast::<u8>().add(at),
                bytes.len(),
            );
        }
    }
}

impl Drop for ProbeMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the probe VM that referenced it
        // was dropped before (see `probe_simd_execution`).
        unsafe { libc::munmap(self.address, PROBE_MEMORY) };
    }
}

/// Where a loaded KVM-PVM module shows up.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Whether the host CPU offers hardware virtualization: VMX (CPUID.1:ECX bit 5) or SVM
/// (CPUID.80000001h:ECX bit 2).
fn host_has_hardware_virtualization() -> bool {
    use std::arch::x86_64::__cpuid;
    let vmx = __cpuid(1).ecx & (1 << 5) != 0;
    let svm = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    vmx || svm
}

/// How this host's KVM executes SIMD instructions: `Native` at once where KVM runs guests in
/// hardware (VMX/SVM present, no KVM-PVM module), otherwise what [`probe_simd_execution`] finds.
pub fn detect_simd_execution() -> Option<SimdExecution> {
    if host_has_hardware_virtualization() && !std::path::Path::new(PVM_MODULE).exists() {
        log::debug!("SIMD execution: native (the CPU has VMX/SVM and no software KVM is loaded)");
        return Some(SimdExecution::Native);
    }
    probe_simd_execution()
}

/// Runs the probe; `None` if the probe VM could not be set up or stopped in an unexpected way
/// (the caller then keeps the host's CPUID, as on any normal KVM).
pub fn probe_simd_execution() -> Option<SimdExecution> {
    let started = std::time::Instant::now();
    let mut memory = ProbeMemory::new()?;
    memory.write(0, &PROBE_CODE);
    memory.write(PML4, &((PML4 + 0x1000) | TABLE).to_le_bytes());
    memory.write(PML4 + 0x1000, &((PML4 + 0x2000) | TABLE).to_le_bytes());
    memory.write(PML4 + 0x2000, &LARGE_PAGE.to_le_bytes());
    let result = run_probe(&memory);
    if let Err(step) = &result {
        log::debug!("SIMD execution probe failed at {step}; assuming native execution");
    }
    log::debug!(
        "SIMD execution probe: {:?} in {:.2} ms",
        result,
        started.elapsed().as_secs_f64() * 1e3
    );
    // The VM (inside run_probe) is gone before `memory` is unmapped here.
    result.ok().flatten()
}

/// A VM with one vCPU in 64-bit mode at guest address 0 of `memory` (identity-mapped by its page
/// tables), RSP at the PML4. The VM is returned with the vCPU: it must outlive it.
fn probe_vcpu(memory: &ProbeMemory) -> Result<(VmFd, VcpuFd), String> {
    let failed = |step: &str| {
        let step = step.to_owned();
        move |error: kvm_ioctls::Error| format!("{step}: {error}")
    };
    let kvm = Kvm::new().map_err(failed("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(failed("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: PROBE_MEMORY as u64,
        userspace_addr: memory.address as u64,
    };
    // SAFETY: the region is exactly the probe mapping, which outlives `vm` (the caller drops
    // the memory only after this function, and with it the VM, has returned).
    unsafe { vm.set_user_memory_region(region) }.map_err(failed("KVM_SET_USER_MEMORY_REGION"))?;
    let vcpu = vm.create_vcpu(0).map_err(failed("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(failed("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(failed("KVM_SET_CPUID2"))?;

    let mut sregs = vcpu.get_sregs().map_err(failed("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    (sregs.cs, sregs.ds, sregs.es, sregs.ss) = (code, data, data, data);
    (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (CR0, PML4, CR4, EFER);
    vcpu.set_sregs(&sregs).map_err(failed("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(failed("KVM_GET_REGS"))?;
    (regs.rip, regs.rflags, regs.rsp) = (0, 0x2, PML4);
    vcpu.set_regs(&regs).map_err(failed("KVM_SET_REGS"))?;

    Ok((vm, vcpu))
}

fn run_probe(memory: &ProbeMemory) -> Result<Option<SimdExecution>, String> {
    let (_vm, mut vcpu) = probe_vcpu(memory)?;
    let failed = |step: &str| {
        let step = step.to_owned();
        move |error: kvm_ioctls::Error| format!("{step}: {error}")
    };
    let outcome = match vcpu.run().map_err(failed("KVM_RUN"))? {
        VcpuExit::Hlt => Some(SimdExecution::Native),
        VcpuExit::InternalError => {
            // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the union is the
            // valid one; only its first field is read.
            let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            (suberror == KVM_INTERNAL_ERROR_EMULATION).then_some(SimdExecution::Emulated)
        }
        other => {
            log::debug!("SIMD execution probe: unexpected exit {other:?}");
            None
        }
    };
    Ok(outcome)
}

/// `mov dword ptr [DATA_PROBE_TARGET], eax; hlt`, at guest address 0.
const DATA_PROBE_CODE: [u8; 8] = [0x89, 0x04, 0x25, 0x00, 0x08, 0x00, 0x00, 0xf4];
/// The address the data-breakpoint probe writes (inside the code page, mapped writable).
const DATA_PROBE_TARGET: u64 = 0x800;

/// Whether this host's KVM delivers data breakpoints (a DR0 write watchpoint set through
/// `KVM_SET_GUEST_DEBUG` with `KVM_GUESTDBG_USE_HW_BP`) to user space as `KVM_EXIT_DEBUG`.
///
/// A throw-away VM runs `mov [0x800], eax; hlt` with a 4-byte write breakpoint on 0x800: a KVM
/// running the guest in hardware stops with a debug exit after the store; KVM-PVM accepts the
/// debug registers but its instruction emulator never checks them for data accesses, and the vCPU
/// reaches the `hlt`. `None` if the probe VM could not be set up or stopped in another way. GDB
/// watchpoints (`watch`) only trigger where this is `Some(true)`; execute breakpoints and single
/// steps are delivered on both.
pub fn probe_data_breakpoints() -> Option<bool> {
    use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP, kvm_guest_debug};
    let mut memory = ProbeMemory::new()?;
    memory.write(0, &DATA_PROBE_CODE);
    memory.write(PML4, &((PML4 + 0x1000) | TABLE).to_le_bytes());
    memory.write(PML4 + 0x1000, &((PML4 + 0x2000) | TABLE).to_le_bytes());
    memory.write(PML4 + 0x2000, &LARGE_PAGE.to_le_bytes());
    let result = (|| -> Result<Option<bool>, String> {
        let (_vm, mut vcpu) = probe_vcpu(&memory)?;
        let mut debug = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
            ..Default::default()
        };
        debug.arch.debugreg[0] = DATA_PROBE_TARGET;
        // L0 and GE, RW0 = 01 (write), LEN0 = 11 (4 bytes), bit 10 (always 1).
        debug.arch.debugreg[7] = 1 | 1 << 9 | 1 << 10 | 0b01 << 16 | 0b11 << 18;
        vcpu.set_guest_debug(&debug)
            .map_err(|e| format!("KVM_SET_GUEST_DEBUG: {e}"))?;
        Ok(match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::Debug(_) => Some(true),
            VcpuExit::Hlt => Some(false),
            other => {
                log::debug!("data breakpoint probe: unexpected exit {other:?}");
                None
            }
        })
    })();
    if let Err(step) = &result {
        log::debug!("data breakpoint probe failed at {step}");
    }
    // The VM (inside the closure) is gone before `memory` is unmapped here.
    result.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_gives_an_answer_where_kvm_works() {
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            assert!(
                std::env::var_os("UHYVE_REQUIRE_KVM").is_none(),
                "/dev/kvm is not usable, but UHYVE_REQUIRE_KVM is set"
            );
            eprintln!("skipping the SIMD probe test: /dev/kvm is not usable");
            return;
        }
        let answer = probe_simd_execution();
        eprintln!("SIMD execution on this host: {answer:?}");
        assert!(
            answer.is_some(),
            "the probe must reach a verdict on a working KVM"
        );
        // Repeatable: a second VM gives the same verdict.
        assert_eq!(probe_simd_execution(), answer);
    }

    #[test]
    fn the_data_breakpoint_probe_gives_an_answer_where_kvm_works() {
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            eprintln!("skipping the data breakpoint probe test: /dev/kvm is not usable");
            return;
        }
        let answer = probe_data_breakpoints();
        eprintln!("data breakpoints delivered on this host: {answer:?}");
        assert!(
            answer.is_some(),
            "the probe must reach a verdict on a working KVM"
        );
        assert_eq!(probe_data_breakpoints(), answer);
    }
}
