//! One KVM virtual CPU: initial x86_64 state, and the translation of `KVM_RUN` exits into
//! [`VcpuExit`].

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    CpuId, KVM_CAP_SYNC_REGS, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, Msrs, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use kvm_ioctls::{SyncReg, VcpuExit as KvmExit, VcpuFd, VmFd};
use uhyve_interface::v2::HypercallAddressV2;
use uhyve_interface::{GuestPhysAddr, HypercallAddress};

use crate::arch::x86_64::emulate::state::XSAVE_AREA_SIZE;
use crate::arch::x86_64::emulate::{PageFault, X86State, XsaveLayout, XsaveScope};
use crate::arch::x86_64::{
    CpuidRegisters, FallbackSimd, InitialRegisters, SegmentDescriptor, adjust_cpuid_leaf,
    restrict_to_fallback,
};
use crate::hypervisor::x86_64::X86Vcpu;
use crate::hypervisor::{
    DebugExit, GuestDebug, HardwareBreakpointKind, InstructionBytes, VcpuError, VcpuExit,
    VirtualCpu,
};
use crate::linux::kick::{IOC_READ, IOC_WRITE, KickTarget, KvmKick, kvm_ioctl};
use crate::linux::{KvmError, ioctl_error};

/// The breakpoint exception vector.
const BREAKPOINT_VECTOR: u32 = 3;
/// DR6.BS: the debug exception came from single-stepping.
const DR6_SINGLE_STEP: u64 = 1 << 14;

/// What a `KVM_EXIT_DEBUG` reports, from its exception vector and DR6/DR7.
fn debug_exit(arch: &kvm_bindings::kvm_debug_exit_arch) -> DebugExit {
    if arch.exception == BREAKPOINT_VECTOR {
        return DebugExit::SoftwareBreakpoint;
    }
    if let Some(slot) = (0..4u8).find(|slot| arch.dr6 & (1 << slot) != 0) {
        let rw = (arch.dr7 >> (16 + 4 * u64::from(slot))) & 0b11;
        return if rw == 0 {
            DebugExit::HardwareBreakpoint(slot)
        } else {
            DebugExit::Watchpoint(slot)
        };
    }
    if arch.dr6 & DR6_SINGLE_STEP != 0 {
        return DebugExit::SingleStep;
    }
    DebugExit::Other
}

/// The `KVM_SET_GUEST_DEBUG` argument for `debug`: DR0–DR3 and DR7 for the hardware slots.
fn kvm_guest_debug_from(debug: &GuestDebug) -> kvm_bindings::kvm_guest_debug {
    use kvm_bindings::{
        KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
        KVM_GUESTDBG_USE_SW_BP,
    };
    let mut out = kvm_bindings::kvm_guest_debug::default();
    if !debug.enabled {
        return out;
    }
    out.control = KVM_GUESTDBG_ENABLE;
    if debug.single_step {
        out.control |= KVM_GUESTDBG_SINGLESTEP;
    }
    if debug.software_breakpoints {
        out.control |= KVM_GUESTDBG_USE_SW_BP;
    }
    let mut dr7 = 0u64;
    for (slot, bp) in debug.hardware.iter().enumerate() {
        let Some(bp) = bp else { continue };
        out.arch.debugreg[slot] = bp.address;
        let rw: u64 = match bp.kind {
            HardwareBreakpointKind::Execute => 0b00,
            HardwareBreakpointKind::Write => 0b01,
            // x86 has no read-only data breakpoint: reads are watched with writes.
            HardwareBreakpointKind::Read | HardwareBreakpointKind::ReadWrite => 0b11,
        };
        let len: u64 = match (bp.kind, bp.len) {
            (HardwareBreakpointKind::Execute, _) | (_, 1) => 0b00,
            (_, 2) => 0b01,
            (_, 8) => 0b10,
            _ => 0b11,
        };
        dr7 |= 0b11 << (2 * slot) | (rw | len << 2) << (16 + 4 * slot);
    }
    if dr7 != 0 {
        out.control |= KVM_GUESTDBG_USE_HW_BP;
        out.arch.debugreg[7] = dr7 | 1 << 10;
    }
    out
}

/// The page-fault exception vector.
const PAGE_FAULT_VECTOR: u8 = 14;
/// `IA32_MISC_ENABLE`; bit 0 enables fast string operations.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_TIME_STAMP_COUNTER`.
const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_AUX` (what RDTSCP returns in ECX).
const MSR_IA32_TSC_AUX: u32 = 0xc000_0103;

/// Every ioctl a vCPU issues after its creation: `KVM_RUN` and what the exit handling, the
/// emulation fallback (`X86Vcpu`) and crash reports read and write. The seccomp allowlist of the
/// run phase allows exactly these; a new vCPU call at run time must be added here.
pub(super) const RUN_IOCTLS: [u64; 14] = {
    use kvm_bindings::{
        kvm_guest_debug, kvm_msrs, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    };
    use std::mem::size_of;
    [
        kvm_ioctl(0, 0x80, 0),                                        // KVM_RUN
        kvm_ioctl(IOC_READ, 0x81, size_of::<kvm_regs>()),             // KVM_GET_REGS
        kvm_ioctl(IOC_WRITE, 0x82, size_of::<kvm_regs>()),            // KVM_SET_REGS
        kvm_ioctl(IOC_READ, 0x83, size_of::<kvm_sregs>()),            // KVM_GET_SREGS
        kvm_ioctl(IOC_WRITE, 0x84, size_of::<kvm_sregs>()),           // KVM_SET_SREGS
        kvm_ioctl(IOC_READ | IOC_WRITE, 0x88, size_of::<kvm_msrs>()), // KVM_GET_MSRS
        kvm_ioctl(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>()),      // KVM_GET_VCPU_EVENTS
        kvm_ioctl(IOC_WRITE, 0xa0, size_of::<kvm_vcpu_events>()),     // KVM_SET_VCPU_EVENTS
        kvm_ioctl(IOC_READ, 0xa4, size_of::<kvm_xsave>()),            // KVM_GET_XSAVE
        kvm_ioctl(IOC_WRITE, 0xa5, size_of::<kvm_xsave>()),           // KVM_SET_XSAVE
        kvm_ioctl(IOC_READ, 0xa6, size_of::<kvm_xcrs>()),             // KVM_GET_XCRS
        kvm_ioctl(IOC_WRITE, 0xa7, size_of::<kvm_xcrs>()),            // KVM_SET_XCRS
        kvm_ioctl(IOC_WRITE, 0x9b, size_of::<kvm_guest_debug>()),     // KVM_SET_GUEST_DEBUG
        // A VM ioctl: the network card's interrupt after a transmission (virtio::service).
        kvm_ioctl(IOC_WRITE, 0xa5, size_of::<kvm_bindings::kvm_msi>()), // KVM_SIGNAL_MSI
    ]
};

/// A KVM vCPU in long mode, ready to run the guest entry point.
pub struct KvmCpu {
    id: u32,
    fd: VcpuFd,
    tsc_khz: Option<u32>,
    xsave_layout: XsaveLayout,
    /// What its kick handles aim at; cleared when the vCPU is dropped.
    kick_target: Arc<Mutex<Option<KickTarget>>>,
    /// What makes reading the state for the emulation fallback cheap.
    emulation: EmulationCache,
}

/// Shortcuts for the emulation fallback's state reads, which on a KVM that cannot execute SSE
/// happen once per emulated instruction.
#[derive(Debug, Default)]
struct EmulationCache {
    /// KVM offers to copy the general and system registers into the `kvm_run` page at every
    /// exit (`KVM_CAP_SYNC_REGS`).
    sync_offered: bool,
    /// It does so: turned on at the fallback's first use, so that a KVM that executes
    /// everything pays nothing for it on its exits.
    sync_on: bool,
    /// The copy in the `kvm_run` page is that of the last exit, and nothing changed the
    /// registers since.
    fresh: bool,
    /// XCR0 as the fallback's last `xsetbv` set it: a KVM that leaves `xsetbv` to uhyve
    /// executes none itself, so XCR0 changes only through the fallback. `None` until then (and
    /// always on a KVM that executes `xsetbv`, as this project's does).
    xcr0: Option<u64>,
}

impl Drop for KvmCpu {
    fn drop(&mut self) {
        // Before `fd` (and its kvm_run mapping) goes: no kick may touch it afterwards.
        *self.kick_target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn backend_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |e| VcpuError::Backend {
        operation,
        source: Box::new(io::Error::from_raw_os_error(e.errno())),
    }
}

fn kvm_segment_from(descriptor: &SegmentDescriptor) -> kvm_segment {
    kvm_segment {
        base: descriptor.base,
        limit: descriptor.limit,
        selector: descriptor.selector,
        type_: descriptor.type_,
        present: u8::from(descriptor.present),
        dpl: descriptor.dpl,
        db: u8::from(descriptor.db),
        s: u8::from(descriptor.s),
        l: u8::from(descriptor.l),
        g: u8::from(descriptor.g),
        avl: u8::from(descriptor.avl),
        unusable: 0,
        padding: 0,
    }
}

impl KvmCpu {
    pub(super) fn new(
        vm: &VmFd,
        id: u32,
        registers: &InitialRegisters,
        cpuid: CpuId,
        fallback_cpuid: Option<FallbackSimd>,
    ) -> Result<Self, KvmError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(ioctl_error("KVM_CREATE_VCPU"))?;

        let xsave_layout = set_cpuid(&fd, cpuid, fallback_cpuid)?;
        set_entry_registers(&fd, registers)?;
        fd.set_mp_state(kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        })
        .map_err(ioctl_error("KVM_SET_MP_STATE"))?;
        enable_fast_strings(&fd);

        let tsc_khz = fd.get_tsc_khz().ok().filter(|&khz| khz != 0);
        let wanted = u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
        let offered = u64::try_from(vm.check_extension_raw(KVM_CAP_SYNC_REGS.into())).unwrap_or(0);
        let emulation = EmulationCache {
            sync_offered: offered & wanted == wanted,
            ..EmulationCache::default()
        };
        let mut fd = fd;
        let kick_target = KickTarget::of_current_thread(&mut fd);
        Ok(Self {
            id,
            fd,
            tsc_khz,
            xsave_layout,
            kick_target,
            emulation,
        })
    }

    /// The general and system registers: from the `kvm_run` page when KVM synchronised them
    /// at the last exit, else by ioctl (and from then on KVM synchronises them at every exit).
    fn synchronised_registers(&mut self) -> Result<(kvm_regs, kvm_sregs), VcpuError> {
        if self.emulation.fresh {
            let synced = self.fd.sync_regs();
            return Ok((synced.regs, synced.sregs));
        }
        let regs = self.fd.get_regs().map_err(backend_error("KVM_GET_REGS"))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(backend_error("KVM_GET_SREGS"))?;
        if self.emulation.sync_offered && !self.emulation.sync_on {
            self.fd.set_sync_valid_reg(SyncReg::Register);
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
            self.emulation.sync_on = true;
        }
        Ok((regs, sregs))
    }

    /// Reads the whole XSAVE area into `area`.
    fn read_xsave_area(&mut self, area: &mut [u8; XSAVE_AREA_SIZE]) -> Result<(), VcpuError> {
        let xsave = self
            .fd
            .get_xsave()
            .map_err(backend_error("KVM_GET_XSAVE"))?;
        for (chunk, word) in area.chunks_exact_mut(4).zip(xsave.region.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(())
    }

    /// Writes `state`'s XSAVE area back.
    fn write_xsave_area(&mut self, state: &X86State) -> Result<(), VcpuError> {
        let mut xsave = kvm_bindings::kvm_xsave::default();
        for (word, chunk) in xsave.region.iter_mut().zip(state.xsave.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        // SAFETY: `xsave` is a complete `kvm_xsave` (4096 bytes) that lives for the call.
        // uhyve never enables dynamically sized state (AMX), so the kernel's XSAVE buffer for
        // this vCPU is at most 4096 bytes and KVM reads nothing beyond the struct.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(backend_error("KVM_SET_XSAVE"))
    }

    /// XCR0 as KVM holds it.
    fn read_xcr0(&mut self) -> Result<u64, VcpuError> {
        let xcrs = self.fd.get_xcrs().map_err(backend_error("KVM_GET_XCRS"))?;
        let valid_xcrs = xcrs.xcrs.get(..xcrs.nr_xcrs as usize).unwrap_or(&xcrs.xcrs);
        Ok(valid_xcrs
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(1, |x| x.value))
    }

    /// A handle another thread can use to interrupt this vCPU (see [`KvmKick`]).
    pub fn kick_handle(&self) -> KvmKick {
        KvmKick {
            target: Arc::clone(&self.kick_target),
        }
    }

    /// The guest TSC frequency KVM reports, in kHz.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.tsc_khz
    }

    /// `(port, size, count)` if the last exit was a port access repeated more than once.
    fn string_io(&mut self) -> Option<(u16, u8, u32)> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return None;
        }
        // SAFETY: the exit reason is KVM_EXIT_IO, so the `io` member of the union is valid.
        let io = unsafe { run.__bindgen_anon_1.io };
        (io.count != 1).then_some((io.port, io.size, io.count))
    }

    /// Details of a `KVM_EXIT_INTERNAL_ERROR`, read from the shared `kvm_run` page.
    fn internal_error(&mut self) -> VcpuExit {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal`
        // / `emulation_failure` members of the union (they share their first fields).
        let (suberror, ndata, flags, size, bytes) = unsafe {
            let failure = run.__bindgen_anon_1.emulation_failure;
            let insn = failure.__bindgen_anon_1.__bindgen_anon_1;
            (
                failure.suberror,
                failure.ndata,
                failure.flags,
                insn.insn_size,
                insn.insn_bytes,
            )
        };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return VcpuExit::Unhandled {
                description: format!("KVM internal error, suberror {suberror}"),
            };
        }
        let has_bytes = ndata >= 1
            && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let instruction = has_bytes.then(|| {
            let len = usize::from(size).min(bytes.len());
            InstructionBytes(bytes[..len].to_vec())
        });
        let rip = self.synchronised_registers().map_or(0, |(r, _)| r.rip);
        VcpuExit::EmulationFailure { rip, instruction }
    }
}

/// Sets the vCPU's CPUID: KVM's supported table, edited for uhyve's guests and — where the
/// user-space fallback executes SIMD instructions — restricted to what it implements. Returns the
/// XSAVE layout the guest then sees.
fn set_cpuid(
    fd: &VcpuFd,
    mut cpuid: CpuId,
    fallback_cpuid: Option<FallbackSimd>,
) -> Result<XsaveLayout, KvmError> {
    for entry in cpuid.as_mut_slice() {
        let mut regs = CpuidRegisters {
            eax: entry.eax,
            ebx: entry.ebx,
            ecx: entry.ecx,
            edx: entry.edx,
        };
        adjust_cpuid_leaf(entry.function, entry.index, &mut regs);
        if let Some(simd) = fallback_cpuid {
            restrict_to_fallback(entry.function, entry.index, &mut regs, simd);
        }
        (entry.eax, entry.ebx, entry.ecx, entry.edx) = (regs.eax, regs.ebx, regs.ecx, regs.edx);
    }
    fd.set_cpuid2(&cpuid)
        .map_err(ioctl_error("KVM_SET_CPUID2"))?;
    // The emulator follows the XSAVE layout the guest sees. That is KVM's copy of the CPUID,
    // which is not always the one just set: KVM-PVM merges its host's leaves 1, 7 and 0xD
    // in (AVX state included), so XSAVE must move those components' bytes too.
    let effective = fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap_or(cpuid);
    let xsave_layout = XsaveLayout::from_cpuid(|function, index| {
        effective
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    });
    // Where the fallback executes SIMD instructions, XGETBV reports every component beyond
    // x87 and SSE disabled, so the guest's feature detection does not pick AVX code.
    let xsave_layout = match fallback_cpuid {
        Some(_) => xsave_layout.withholding_other_components(),
        None => xsave_layout,
    };
    Ok(xsave_layout)
}

/// Sets the entry state: long mode with paging, the GDT's segments, and RIP/RSP/RDI/RSI/RFLAGS.
fn set_entry_registers(fd: &VcpuFd, registers: &InitialRegisters) -> Result<(), KvmError> {
    let mut sregs = fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
    sregs.cr0 = registers.cr0;
    sregs.cr3 = registers.cr3;
    sregs.cr4 = registers.cr4;
    sregs.efer = registers.efer;
    sregs.gdt.base = registers.gdt_base;
    sregs.gdt.limit = registers.gdt_limit;
    let code = kvm_segment_from(&registers.code);
    let data = kvm_segment_from(&registers.data);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.ss) = (data, data, data);
    fd.set_sregs(&sregs).map_err(ioctl_error("KVM_SET_SREGS"))?;

    let mut regs = fd.get_regs().map_err(ioctl_error("KVM_GET_REGS"))?;
    regs.rip = registers.rip;
    regs.rsp = registers.rsp;
    regs.rdi = registers.rdi;
    regs.rsi = registers.rsi;
    regs.rflags = registers.rflags;
    fd.set_regs(&regs).map_err(ioctl_error("KVM_SET_REGS"))?;
    Ok(())
}

/// Turns on fast string operations (`IA32_MISC_ENABLE` bit 0), where KVM lets it be set.
fn enable_fast_strings(fd: &VcpuFd) {
    let misc_enable = kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: 1,
        ..Default::default()
    };
    match Msrs::from_entries(&[misc_enable]) {
        Ok(msrs) => {
            if let Err(e) = fd.set_msrs(&msrs) {
                log::debug!("IA32_MISC_ENABLE not set: {e}");
            }
        }
        Err(e) => log::debug!("IA32_MISC_ENABLE not set: {e:?}"),
    }
}

/// A KVM exit whose data was copied out of the `kvm_run` page.
enum OwnedExit {
    /// `out`: the data (if it fits 8 bytes) and its length.
    PortWrite {
        port: u16,
        value: Option<u64>,
        len: usize,
    },
    /// `in` of `len` bytes.
    PortRead { port: u16, len: usize },
    /// KVM could not handle an exit itself (e.g. an emulation failure).
    InternalError,
    /// Already translated.
    Done(VcpuExit),
}

/// `data` as a little-endian number, if it has at most 8 bytes.
fn little_endian(data: &[u8]) -> Option<u64> {
    let mut value = [0u8; 8];
    value.get_mut(..data.len())?.copy_from_slice(data);
    Some(u64::from_le_bytes(value))
}

/// An `in` of `len` bytes from `port`: a v2/v3 hypercall read, or a plain port read.
fn port_read(port: u16, len: usize) -> VcpuExit {
    if len > 4 {
        return VcpuExit::Unhandled {
            description: format!("string port read of {len} bytes from port {port:#x}"),
        };
    }
    let size = len as u8;
    if HypercallAddressV2::try_from(port).is_ok() {
        VcpuExit::HypercallRead {
            address: port,
            size,
        }
    } else {
        VcpuExit::PortIn { port, size }
    }
}

impl KvmCpu {
    /// An `out` of `len` bytes (`value`) to `port`: a v1 hypercall (the data is the argument: a
    /// 32-bit GPA or the byte), a v2/v3 hypercall (the argument is the whole of RDI), or a plain
    /// port write.
    fn port_write(
        &mut self,
        port: u16,
        value: Option<u64>,
        len: usize,
    ) -> Result<VcpuExit, VcpuError> {
        let Some(value) = value.filter(|_| len <= 4) else {
            return Ok(VcpuExit::Unhandled {
                description: format!("string port write of {len} bytes to port {port:#x}"),
            });
        };
        // At most 4 bytes: the value fits 32 bits.
        let data = value as u32;
        Ok(if HypercallAddress::try_from(port).is_ok() {
            VcpuExit::Hypercall {
                address: port,
                argument: u64::from(data),
            }
        } else if HypercallAddressV2::try_from(port).is_ok() {
            let regs = self.fd.get_regs().map_err(backend_error("KVM_GET_REGS"))?;
            VcpuExit::Hypercall {
                address: port,
                argument: regs.rdi,
            }
        } else {
            VcpuExit::PortOut {
                port,
                data,
                size: len as u8,
            }
        })
    }

    /// KVM reports `rep ins`/`rep outs` as one exit carrying `count` elements; uhyve has no
    /// device that takes string I/O, and treating the elements as one wide access would mis-read
    /// the data, so such an access stops the guest.
    fn refuse_string_io(&mut self, exit: VcpuExit) -> VcpuExit {
        let port_access = matches!(
            exit,
            VcpuExit::Hypercall { .. }
                | VcpuExit::HypercallRead { .. }
                | VcpuExit::PortOut { .. }
                | VcpuExit::PortIn { .. }
        );
        match self.string_io().filter(|_| port_access) {
            Some((port, size, count)) => VcpuExit::Unhandled {
                description: format!(
                    "string port I/O (rep ins/outs) of {count} × {size} bytes on port {port:#x}"
                ),
            },
            None => exit,
        }
    }
}

impl VirtualCpu for KvmCpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit, VcpuError> {
        // Whatever the outcome, the registers may change from here.
        self.emulation.fresh = false;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(VcpuExit::Interrupted);
            }
            Err(e) => return Err(backend_error("KVM_RUN")(e)),
        };
        self.emulation.fresh = self.emulation.sync_on;
        // Copied out of the kvm_run page, so that the vCPU can be asked for more below.
        let exit = match exit {
            KvmExit::IoOut(port, data) => OwnedExit::PortWrite {
                port,
                value: little_endian(data),
                len: data.len(),
            },
            KvmExit::IoIn(port, data) => OwnedExit::PortRead {
                port,
                len: data.len(),
            },
            KvmExit::MmioRead(address, data) => OwnedExit::Done(VcpuExit::MmioRead {
                address,
                size: data.len().min(8) as u8,
            }),
            KvmExit::MmioWrite(address, data) => OwnedExit::Done(VcpuExit::MmioWrite {
                address,
                data: little_endian(data).unwrap_or(0),
                size: data.len().min(8) as u8,
            }),
            KvmExit::Hlt => OwnedExit::Done(VcpuExit::Halt),
            KvmExit::Shutdown => OwnedExit::Done(VcpuExit::Shutdown),
            KvmExit::Debug(arch) => OwnedExit::Done(VcpuExit::Debug(debug_exit(&arch))),
            KvmExit::Intr => OwnedExit::Done(VcpuExit::Interrupted),
            KvmExit::FailEntry(reason, _) => OwnedExit::Done(VcpuExit::FailedEntry { reason }),
            KvmExit::InternalError => OwnedExit::InternalError,
            other => OwnedExit::Done(VcpuExit::Unhandled {
                description: format!("KVM exit {other:?}"),
            }),
        };
        let translated = match exit {
            OwnedExit::PortWrite { port, value, len } => self.port_write(port, value, len)?,
            OwnedExit::PortRead { port, len } => port_read(port, len),
            OwnedExit::InternalError => self.internal_error(),
            OwnedExit::Done(exit) => exit,
        };
        Ok(self.refuse_string_io(translated))
    }

    fn complete_port_in(&mut self, value: u32) -> Result<(), VcpuError> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return Err(VcpuError::Unexpected {
                operation: "complete port read",
                detail: "the last exit was not a port access".into(),
            });
        }
        // SAFETY: the exit reason is KVM_EXIT_IO, so the `io` member of the union is valid.
        let io = unsafe { run.__bindgen_anon_1.io };
        if u32::from(io.direction) != KVM_EXIT_IO_IN {
            return Err(VcpuError::Unexpected {
                operation: "complete port read",
                detail: "the last exit was a port write".into(),
            });
        }
        let len = usize::from(io.size).min(4);
        let run_page = run as *mut kvm_bindings::kvm_run as *mut u8;
        let bytes = value.to_le_bytes();
        // SAFETY: KVM places the data buffer of an I/O exit `data_offset` bytes into the mmapped
        // kvm_run area, with room for `size * count` bytes; `run()` only reports single accesses
        // of at most 4 bytes, so `len` bytes fit there.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                run_page.add(io.data_offset as usize),
                len,
            );
        }
        Ok(())
    }

    fn complete_hypercall_read(&mut self, value: u64) -> Result<(), VcpuError> {
        // A port read: the low 32 bits, truncated to the access size by `complete_port_in`.
        self.complete_port_in(value as u32)
    }

    fn complete_mmio_read(&mut self, value: u64) -> Result<(), VcpuError> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_MMIO {
            return Err(VcpuError::Unexpected {
                operation: "complete MMIO read",
                detail: "the last exit was not a memory access".into(),
            });
        }
        // SAFETY: the exit reason is KVM_EXIT_MMIO, so the `mmio` member of the union is the
        // valid one; KVM copies its `data` into the load's destination on the next KVM_RUN.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        mmio.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
        Ok(())
    }

    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError> {
        let sregs = self
            .fd
            .get_sregs()
            .map_err(backend_error("KVM_GET_SREGS"))?;
        Ok(GuestPhysAddr::new(sregs.cr3))
    }

    fn instruction_pointer(&mut self) -> Result<u64, VcpuError> {
        Ok(self
            .fd
            .get_regs()
            .map_err(backend_error("KVM_GET_REGS"))?
            .rip)
    }

    fn set_guest_debug(&mut self, debug: &GuestDebug) -> Result<(), VcpuError> {
        self.fd
            .set_guest_debug(&kvm_guest_debug_from(debug))
            .map_err(backend_error("KVM_SET_GUEST_DEBUG"))
    }

    fn reinject_breakpoint(&mut self) -> Result<(), VcpuError> {
        // `int3` is a trap: the guest's handler returns after it.
        let mut regs = self.fd.get_regs().map_err(backend_error("KVM_GET_REGS"))?;
        regs.rip += 1;
        self.emulation.fresh = false;
        self.fd
            .set_regs(&regs)
            .map_err(backend_error("KVM_SET_REGS"))?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(backend_error("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = BREAKPOINT_VECTOR as u8;
        events.exception.has_error_code = 0;
        events.flags = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(backend_error("KVM_SET_VCPU_EVENTS"))
    }

    fn register_dump(&mut self) -> Result<String, VcpuError> {
        let r = self.fd.get_regs().map_err(backend_error("KVM_GET_REGS"))?;
        let s = self
            .fd
            .get_sregs()
            .map_err(backend_error("KVM_GET_SREGS"))?;
        Ok(format!(
            "rip {:#018x} rflags {:#010x}\n\
			 rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
			 rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n\
			 r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n\
			 r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n\
			 cr0 {:#018x} cr2 {:#018x} cr3 {:#018x} cr4 {:#018x} efer {:#x}\n\
			 cs {:#06x} ss {:#06x} gdt {:#x}/{:#x} idt {:#x}/{:#x}",
            r.rip,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rbp,
            r.rsp,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.ss.selector,
            s.gdt.base,
            s.gdt.limit,
            s.idt.base,
            s.idt.limit
        ))
    }
}

/// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8 … R15 of `kvm_regs`.
fn gprs_in_hardware_order(r: &kvm_bindings::kvm_regs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// The inverse of [`gprs_in_hardware_order`], with RIP and RFLAGS.
fn kvm_regs_from(gprs: &[u64; 16], rip: u64, rflags: u64) -> kvm_bindings::kvm_regs {
    let [
        rax,
        rcx,
        rdx,
        rbx,
        rsp,
        rbp,
        rsi,
        rdi,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
    ] = *gprs;
    kvm_bindings::kvm_regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rsp,
        rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip,
        rflags,
    }
}

impl X86Vcpu for KvmCpu {
    fn emulation_state(&mut self) -> Result<X86State, VcpuError> {
        self.emulation_state_for(XsaveScope::Full)
    }

    /// Registers from the `kvm_run` page where KVM synchronised them at the last exit (no
    /// ioctl), XCR0 from the cache where the fallback keeps it, and the XSAVE area only if
    /// `scope` asks for it. The area moves whole (`KVM_GET_XSAVE`/`KVM_SET_XSAVE`): the smaller
    /// `KVM_GET_FPU`/`KVM_SET_FPU` ignore the XSAVE header, so they read MXCSR 0 where the guest
    /// has 0x1f80 and write XMM values the guest never sees (both seen on this project's KVM).
    fn emulation_state_for(&mut self, scope: XsaveScope) -> Result<X86State, VcpuError> {
        let (r, s) = self.synchronised_registers()?;
        let mut area = Box::new([0u8; XSAVE_AREA_SIZE]);
        if scope != XsaveScope::Nothing {
            self.read_xsave_area(&mut area)?;
        }
        let xcr0 = match (self.emulation.xcr0, scope) {
            (Some(xcr0), _) => xcr0,
            (None, XsaveScope::Full) => self.read_xcr0()?,
            // Not the guest's: the instruction neither reads nor changes XCR0.
            (None, XsaveScope::Nothing | XsaveScope::Area) => 1,
        };
        Ok(X86State {
            gprs: gprs_in_hardware_order(&r),
            rip: r.rip,
            rflags: r.rflags,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            cr3: s.cr3,
            cr0: s.cr0,
            cr4: s.cr4,
            efer: s.efer,
            cpl: s.ss.dpl,
            xcr0,
            xsave: area,
            xsave_scope: scope,
        })
    }

    fn set_emulation_state(
        &mut self,
        before: &X86State,
        after: &X86State,
    ) -> Result<(), VcpuError> {
        if before.xsave_scope != XsaveScope::Nothing && after.xsave != before.xsave {
            self.write_xsave_area(after)?;
        }
        if before.xsave_scope == XsaveScope::Full && after.xcr0 != before.xcr0 {
            let mut xcrs = kvm_bindings::kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].xcr = 0;
            xcrs.xcrs[0].value = after.xcr0;
            self.fd
                .set_xcrs(&xcrs)
                .map_err(backend_error("KVM_SET_XCRS"))?;
        }
        // `kvm_regs` is exactly the general registers, RIP and RFLAGS: all of it is in `after`.
        let regs = kvm_regs_from(&after.gprs, after.rip, after.rflags);
        self.emulation.fresh = false;
        self.fd
            .set_regs(&regs)
            .map_err(backend_error("KVM_SET_REGS"))
    }

    fn xcr0_kept_by_fallback(&mut self, xcr0: u64) {
        self.emulation.xcr0 = Some(xcr0);
    }

    fn guest_tsc(&mut self) -> Result<(u64, u32), VcpuError> {
        let entry = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = Msrs::from_entries(&[entry(MSR_IA32_TSC), entry(MSR_IA32_TSC_AUX)])
            .map_err(|e| VcpuError::Unexpected {
                operation: "KVM_GET_MSRS",
                detail: format!("{e:?}"),
            })?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(backend_error("KVM_GET_MSRS"))?;
        let entries = msrs.as_slice();
        let tsc = entries.first().filter(|_| read >= 1).map(|e| e.data);
        let aux = entries.get(1).filter(|_| read >= 2).map_or(0, |e| e.data);
        let tsc = tsc.ok_or(VcpuError::Unexpected {
            operation: "KVM_GET_MSRS",
            detail: "IA32_TSC could not be read".into(),
        })?;
        Ok((tsc, aux as u32))
    }

    fn xsave_layout(&self) -> &XsaveLayout {
        &self.xsave_layout
    }

    fn segment_selectors(&mut self) -> Result<[u16; 6], VcpuError> {
        let s = self
            .fd
            .get_sregs()
            .map_err(backend_error("KVM_GET_SREGS"))?;
        Ok([
            s.cs.selector,
            s.ss.selector,
            s.ds.selector,
            s.es.selector,
            s.fs.selector,
            s.gs.selector,
        ])
    }

    fn inject_page_fault(&mut self, fault: PageFault) -> Result<(), VcpuError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(backend_error("KVM_GET_SREGS"))?;
        sregs.cr2 = fault.address;
        self.emulation.fresh = false;
        self.fd
            .set_sregs(&sregs)
            .map_err(backend_error("KVM_SET_SREGS"))?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(backend_error("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = PAGE_FAULT_VECTOR;
        events.exception.has_error_code = 1;
        events.exception.error_code = fault.error_code;
        events.flags = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(backend_error("KVM_SET_VCPU_EVENTS"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ioctls_have_the_numbers_of_the_linux_headers() {
        assert_eq!(
            RUN_IOCTLS,
            [
                0xae80,
                0x8090_ae81,
                0x4090_ae82,
                0x8138_ae83,
                0x4138_ae84,
                0xc008_ae88,
                0x8040_ae9f,
                0x4040_aea0,
                0x9000_aea4,
                0x5000_aea5,
                0x8188_aea6,
                0x4188_aea7,
                0x4048_ae9b,
                0x4020_aea5,
            ]
        );
    }

    #[test]
    fn creation_ioctls_are_not_run_ioctls() {
        // KVM_CREATE_VCPU (on the VM) and KVM_SET_CPUID2 happen before the filter.
        for before in [0xae41u64, 0x4008_ae90] {
            assert!(!RUN_IOCTLS.contains(&before));
        }
    }
}
