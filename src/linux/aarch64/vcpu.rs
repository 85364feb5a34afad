//! One aarch64 KVM vCPU: its registers through `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`, the entry
//! state of vCPU 0, and the translation of `KVM_RUN` exits into [`VcpuExit`]. KVM decodes the
//! guest's loads and stores outside RAM itself (only those with an instruction syndrome) and
//! moves PC past them; [`classify_access`] says what each one means.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_ARM_VCPU_PMU_V3, KVM_ARM_VCPU_PMU_V3_CTRL, KVM_ARM_VCPU_PMU_V3_INIT,
    KVM_ARM_VCPU_PMU_V3_IRQ, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_EXIT_ARM_NISV,
    KVM_EXIT_MMIO, KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_SIZE_U32,
    KVM_REG_SIZE_U64, KVM_REG_SIZE_U128, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, kvm_device_attr, kvm_one_reg, kvm_vcpu_init,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd, VmFd};
use uhyve_interface::GuestPhysAddr;

use super::Gic;
use crate::arch::aarch64::InitialRegisters;
use crate::arch::aarch64::debug::{StackPointer, brk_exception_entry, stack_pointer_of};
use crate::arch::aarch64::esr::EsrError;
use crate::hypervisor::aarch64::debug::{
    Aarch64Registers, Aarch64Vcpu, DebugRegisters, brk_immediate, debug_exit_of,
};
use crate::hypervisor::aarch64::{GuestAccess, classify_access};
use crate::hypervisor::{DebugExit, GuestDebug, VcpuError, VcpuExit, VirtualCpu};
use crate::linux::kick::{IOC_WRITE, KickTarget, KvmKick, kvm_ioctl};
use crate::linux::{KvmError, ioctl_error};

/// Every ioctl an aarch64 vCPU issues once it exists: `KVM_RUN`, the register accesses of exit
/// handling and crash reports, and the vGIC initialisation of the first run. The seccomp
/// allowlist of the run phase allows exactly these.
pub(super) const RUN_IOCTLS: [u64; 6] = {
    use kvm_bindings::{kvm_device_attr, kvm_guest_debug, kvm_irq_level};
    use std::mem::size_of;
    [
        kvm_ioctl(0, 0x80, 0),                                    // KVM_RUN
        kvm_ioctl(IOC_WRITE, 0xab, size_of::<kvm_one_reg>()),     // KVM_GET_ONE_REG
        kvm_ioctl(IOC_WRITE, 0xac, size_of::<kvm_one_reg>()),     // KVM_SET_ONE_REG
        kvm_ioctl(IOC_WRITE, 0xe1, size_of::<kvm_device_attr>()), // KVM_SET_DEVICE_ATTR
        kvm_ioctl(IOC_WRITE, 0x9b, size_of::<kvm_guest_debug>()), // KVM_SET_GUEST_DEBUG
        // A VM ioctl: the network card's interrupt line, raised by its I/O thread and lowered
        // by the vCPU that reads its ISR (virtio::service).
        kvm_ioctl(IOC_WRITE, 0x61, size_of::<kvm_irq_level>()), // KVM_IRQ_LINE
    ]
};

/// The id of a 64-bit core register at byte `offset` into `struct kvm_regs`.
const fn core_register(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset as u64 / 4)
}

/// The id of the 128-bit core register at byte `offset` into `struct kvm_regs`.
const fn core_register_128(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U128 | KVM_REG_ARM_CORE as u64 | (offset as u64 / 4)
}

/// The id of the 32-bit core register at byte `offset` into `struct kvm_regs`.
const fn core_register_32(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_CORE as u64 | (offset as u64 / 4)
}

/// The id of the 64-bit system register with encoding `op0, op1, CRn, CRm, op2`.
const fn system_register(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// X0 … X30 are the first 31 words of `struct kvm_regs`.
const fn x_register(number: u8) -> u64 {
    core_register(8 * number as usize)
}
/// `kvm_regs.regs.pc`.
const PC: u64 = core_register(256);
/// `kvm_regs.regs.pstate`.
const PSTATE: u64 = core_register(264);
/// `kvm_regs.regs.sp` (SP_EL0).
const SP_EL0: u64 = core_register(248);
/// `kvm_regs.sp_el1`.
const SP_EL1: u64 = core_register(272);
/// `kvm_regs.elr_el1`.
const ELR_EL1: u64 = core_register(280);
/// `kvm_regs.spsr[KVM_SPSR_EL1]`.
const SPSR_EL1: u64 = core_register(288);
/// `kvm_regs.fp_regs.vregs[n]`.
const fn v_register(number: usize) -> u64 {
    core_register_128(336 + 16 * number)
}
/// `kvm_regs.fp_regs.fpsr`.
const FPSR: u64 = core_register_32(848);
/// `kvm_regs.fp_regs.fpcr`.
const FPCR: u64 = core_register_32(852);
const SCTLR_EL1: u64 = system_register(3, 0, 1, 0, 0);
const CPACR_EL1: u64 = system_register(3, 0, 1, 0, 2);
const TTBR0_EL1: u64 = system_register(3, 0, 2, 0, 0);
const TTBR1_EL1: u64 = system_register(3, 0, 2, 0, 1);
const TCR_EL1: u64 = system_register(3, 0, 2, 0, 2);
const MAIR_EL1: u64 = system_register(3, 0, 10, 2, 0);
const MDSCR_EL1: u64 = system_register(2, 0, 0, 2, 2);
const MPIDR_EL1: u64 = system_register(3, 0, 0, 0, 5);
const ID_AA64MMFR0_EL1: u64 = system_register(3, 0, 0, 7, 0);
const ESR_EL1: u64 = system_register(3, 0, 5, 2, 0);
const FAR_EL1: u64 = system_register(3, 0, 6, 0, 0);
const VBAR_EL1: u64 = system_register(3, 0, 12, 0, 0);

/// MPIDR_EL1 bit 31 is RES1.
const MPIDR_RES1: u64 = 1 << 31;
/// The PMU overflow interrupt: PPI 7 (INTID 23), where Arm's virtual platforms put it.
const PMU_INTERRUPT: u32 = 23;

fn backend_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |e| VcpuError::Backend {
        operation,
        source: Box::new(io::Error::from_raw_os_error(e.errno())),
    }
}

/// An aarch64 KVM vCPU.
pub struct KvmArmCpu {
    id: u32,
    fd: VcpuFd,
    ram_base: u64,
    gic: Arc<Gic>,
    /// The last exit was a load waiting for its value: a hypercall read (of a v2/v3 address)
    /// or a device read.
    pending_read: bool,
    /// The vCPU has not run yet: the vGIC (once per VM) and its PMUv3 still need initialising
    /// before it does. Checked on every run, so that exits after the first take no lock.
    first_run: bool,
    /// The vCPU has a PMUv3 that still needs initialising (after the vGIC, before its first
    /// run).
    pmu_pending: bool,
    /// What its kick handles aim at; cleared when the vCPU is dropped.
    kick_target: Arc<Mutex<Option<KickTarget>>>,
    /// The guest debugging last set (a watchpoint exit is matched against its slots).
    debug: GuestDebug,
    /// The syndrome of the last `BRK` exit, for [`VirtualCpu::reinject_breakpoint`].
    last_brk: Option<u64>,
}

impl Drop for KvmArmCpu {
    fn drop(&mut self) {
        // Before `fd` (and its kvm_run mapping) goes: no kick may touch it afterwards.
        *self.kick_target.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl KvmArmCpu {
    /// Creates vCPU `id` for `target` with PSCI 0.2 (and a PMUv3 if `pmu`): vCPU 0 in the state
    /// `registers`, the others
    /// powered off (the guest starts them with PSCI CPU_ON), every one with MPIDR_EL1 from
    /// `registers` (Aff0 = its id, as the device tree says).
    pub(super) fn new(
        vm: &VmFd,
        id: u32,
        mut target: kvm_vcpu_init,
        registers: &InitialRegisters,
        ram_base: u64,
        gic: Arc<Gic>,
        pmu: bool,
    ) -> Result<Self, KvmError> {
        let mut fd = vm
            .create_vcpu(u64::from(id))
            .map_err(ioctl_error("KVM_CREATE_VCPU"))?;
        target.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if id != 0 {
            target.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        if pmu {
            target.features[0] |= 1 << KVM_ARM_VCPU_PMU_V3;
        }
        fd.vcpu_init(&target)
            .map_err(ioctl_error("KVM_ARM_VCPU_INIT"))?;
        set(&fd, MPIDR_EL1, registers.mpidr_el1 | MPIDR_RES1)?;
        if id == 0 {
            set_entry_registers(&fd, registers)?;
        }
        let kick_target = KickTarget::of_current_thread(&mut fd);
        Ok(Self {
            id,
            fd,
            ram_base,
            gic,
            pending_read: false,
            first_run: true,
            pmu_pending: pmu,
            kick_target,
            debug: GuestDebug::default(),
            last_brk: None,
        })
    }

    /// A handle another thread can use to interrupt this vCPU (see [`KvmKick`]).
    pub fn kick_handle(&self) -> KvmKick {
        KvmKick {
            target: Arc::clone(&self.kick_target),
        }
    }

    /// Gives the vCPU's PMUv3 its overflow interrupt and initialises it; KVM wants this after
    /// the vGIC is initialised and before the vCPU first runs.
    fn initialise_pmu(&self) -> Result<(), VcpuError> {
        let interrupt = PMU_INTERRUPT;
        for (attr, addr, operation) in [
            (
                KVM_ARM_VCPU_PMU_V3_IRQ,
                std::ptr::addr_of!(interrupt) as u64,
                "KVM_ARM_VCPU_PMU_V3_IRQ",
            ),
            (KVM_ARM_VCPU_PMU_V3_INIT, 0, "KVM_ARM_VCPU_PMU_V3_INIT"),
        ] {
            let attr = kvm_device_attr {
                flags: 0,
                group: KVM_ARM_VCPU_PMU_V3_CTRL,
                attr: u64::from(attr),
                addr,
            };
            self.fd
                .set_device_attr(&attr)
                .map_err(backend_error(operation))?;
        }
        Ok(())
    }

    fn register(&self, id: u64) -> Result<u64, VcpuError> {
        get(&self.fd, id).map_err(backend_error("KVM_GET_ONE_REG"))
    }

    fn set_register(&self, id: u64, value: u64) -> Result<(), VcpuError> {
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(backend_error("KVM_SET_ONE_REG"))
    }

    /// A `KVM_EXIT_DEBUG`: what its syndrome means under the debugging last set.
    fn debug_exit(&mut self, arch: &kvm_bindings::kvm_debug_exit_arch) -> VcpuExit {
        let esr = u64::from(arch.hsr) | u64::from(arch.hsr_high) << 32;
        let exit = debug_exit_of(esr, arch.far, &self.debug).unwrap_or(DebugExit::Other);
        self.last_brk = (exit == DebugExit::SoftwareBreakpoint).then_some(esr);
        VcpuExit::Debug(exit)
    }

    /// The stack pointer register `pstate` selects.
    fn stack_pointer_id(pstate: u64) -> u64 {
        match stack_pointer_of(pstate) {
            StackPointer::El0 => SP_EL0,
            StackPointer::El1 => SP_EL1,
        }
    }

    /// Gives the load of the last exit (a hypercall or device read) its value.
    fn complete_read(&mut self, operation: &'static str, value: u64) -> Result<(), VcpuError> {
        let run = self.fd.get_kvm_run();
        if !std::mem::take(&mut self.pending_read) || run.exit_reason != KVM_EXIT_MMIO {
            return Err(VcpuError::Unexpected {
                operation,
                detail: "no read is pending".into(),
            });
        }
        // SAFETY: the exit reason is KVM_EXIT_MMIO, so the `mmio` member of the union is the
        // valid one; KVM copies its `data` into the load's register when the vCPU runs again.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        mmio.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
        Ok(())
    }

    /// A `KVM_EXIT_ARM_NISV`: a data abort outside RAM whose syndrome does not describe the
    /// access (a load/store pair, a write-back form, a SIMD access), which nobody can emulate.
    fn access_without_syndrome(&mut self) -> VcpuExit {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_ARM_NISV, for which KVM fills the `arm_nisv`
        // member of the union.
        let (esr_iss, fault_ipa) = unsafe {
            let nisv = run.__bindgen_anon_1.arm_nisv;
            (nisv.esr_iss, nisv.fault_ipa)
        };
        VcpuExit::Unhandled {
            description: EsrError::NoSyndrome {
                esr: esr_iss,
                ipa: fault_ipa,
            }
            .to_string(),
        }
    }
}

/// Reads register `id`.
fn get(fd: &VcpuFd, id: u64) -> Result<u64, kvm_ioctls::Error> {
    let mut bytes = [0u8; 8];
    fd.get_one_reg(id, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Writes register `id`.
fn set(fd: &VcpuFd, id: u64, value: u64) -> Result<(), KvmError> {
    fd.set_one_reg(id, &value.to_le_bytes())
        .map(|_| ())
        .map_err(ioctl_error("KVM_SET_ONE_REG"))
}

/// Puts vCPU 0 into the entry state of hermit-abi.md §7.3, with TCR_EL1.IPS from the physical
/// address range the vCPU reports and CPACR_EL1 from its reset value.
fn set_entry_registers(fd: &VcpuFd, registers: &InitialRegisters) -> Result<(), KvmError> {
    let mmfr0 = get(fd, ID_AA64MMFR0_EL1).map_err(ioctl_error("KVM_GET_ONE_REG (MMFR0)"))?;
    let registers = registers.with_pa_range_of(mmfr0);
    let cpacr = get(fd, CPACR_EL1).map_err(ioctl_error("KVM_GET_ONE_REG (CPACR_EL1)"))?;
    for (id, value) in [
        (SP_EL1, registers.sp_el1),
        (MAIR_EL1, registers.mair_el1),
        (TCR_EL1, registers.tcr_el1),
        (TTBR0_EL1, registers.ttbr0_el1),
        (TTBR1_EL1, registers.ttbr1_el1),
        (CPACR_EL1, registers.cpacr_el1(cpacr)),
        (MDSCR_EL1, registers.mdscr_el1),
        (SCTLR_EL1, registers.sctlr_el1),
        (PSTATE, registers.cpsr),
        (PC, registers.pc),
        (x_register(0), registers.x0),
        (x_register(1), registers.x1),
    ] {
        set(fd, id, value)?;
    }
    Ok(())
}

/// `data` as a little-endian number (at most 8 bytes are used).
fn little_endian(data: &[u8]) -> u64 {
    let mut value = [0u8; 8];
    let len = data.len().min(8);
    value[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(value)
}

/// What a PSCI system event means to uhyve: Hermit on uhyve ends with an Exit hypercall, so a
/// guest that powers the machine off, resets it or reports a crash instead has not ended the way
/// uhyve understands.
fn system_event(kind: u32) -> VcpuExit {
    let what = match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => "switched the machine off (PSCI SYSTEM_OFF)",
        KVM_SYSTEM_EVENT_RESET => "asked for a reset (PSCI SYSTEM_RESET)",
        KVM_SYSTEM_EVENT_CRASH => "reported a crash (PSCI)",
        _ => "raised an unknown system event",
    };
    VcpuExit::Unhandled {
        description: format!(
            "the guest {what} without an Exit hypercall (KVM system event {kind})"
        ),
    }
}

impl VirtualCpu for KvmArmCpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit, VcpuError> {
        if self.first_run {
            self.gic.initialise_once()?;
            if self.pmu_pending {
                self.initialise_pmu()?;
                self.pmu_pending = false;
            }
            self.first_run = false;
        }
        if self.pending_read {
            return Err(VcpuError::Unexpected {
                operation: "KVM_RUN",
                detail: "the read of the last exit was not answered".into(),
            });
        }
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(VcpuExit::Interrupted);
            }
            Err(e) => return Err(backend_error("KVM_RUN")(e)),
        };
        let access = |address, data: &[u8], is_write| GuestAccess {
            address,
            size: data.len().min(8) as u8,
            is_write,
            value: if is_write { little_endian(data) } else { 0 },
        };
        let exit = match exit {
            KvmExit::MmioWrite(address, data) => {
                classify_access(access(address, data, true), self.ram_base)
            }
            KvmExit::MmioRead(address, data) => {
                classify_access(access(address, data, false), self.ram_base)
            }
            KvmExit::SystemEvent(kind, _) => system_event(kind),
            KvmExit::Unsupported(reason) if reason == KVM_EXIT_ARM_NISV => {
                self.access_without_syndrome()
            }
            KvmExit::Hlt => VcpuExit::Halt,
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::Debug(arch) => self.debug_exit(&arch),
            KvmExit::FailEntry(reason, _) => VcpuExit::FailedEntry { reason },
            KvmExit::Shutdown => VcpuExit::Shutdown,
            other => VcpuExit::Unhandled {
                description: format!("KVM exit {other:?}"),
            },
        };
        self.pending_read = matches!(
            exit,
            VcpuExit::HypercallRead { .. } | VcpuExit::MmioRead { .. }
        );
        Ok(exit)
    }

    fn complete_port_in(&mut self, _value: u32) -> Result<(), VcpuError> {
        Err(VcpuError::Unexpected {
            operation: "complete port read",
            detail: "aarch64 has no I/O ports".into(),
        })
    }

    fn complete_hypercall_read(&mut self, value: u64) -> Result<(), VcpuError> {
        self.complete_read("complete hypercall read", value)
    }

    fn complete_mmio_read(&mut self, value: u64) -> Result<(), VcpuError> {
        self.complete_read("complete device read", value)
    }

    fn page_table_root(&mut self) -> Result<GuestPhysAddr, VcpuError> {
        // Bits 47:1 hold the table address (ASID above, CnP in bit 0).
        Ok(GuestPhysAddr::new(
            self.register(TTBR0_EL1)? & 0x0000_ffff_ffff_fffe,
        ))
    }

    fn instruction_pointer(&mut self) -> Result<u64, VcpuError> {
        self.register(PC)
    }

    fn register_dump(&mut self) -> Result<String, VcpuError> {
        let mut text = String::new();
        for number in 0..31u8 {
            let value = self.register(x_register(number))?;
            text.push_str(&format!("x{number:<2} {value:#018x}"));
            text.push(if number % 4 == 3 { '\n' } else { ' ' });
        }
        text.push_str(&format!(
            "\npc  {:#018x} pstate {:#010x} sp_el1 {:#018x}",
            self.register(PC)?,
            self.register(PSTATE)?,
            self.register(SP_EL1)?
        ));
        text.push_str(&format!(
            "\nesr_el1 {:#x} far_el1 {:#x} vbar_el1 {:#x}",
            self.register(ESR_EL1)?,
            self.register(FAR_EL1)?,
            self.register(VBAR_EL1)?
        ));
        Ok(text)
    }

    fn set_guest_debug(&mut self, debug: &GuestDebug) -> Result<(), VcpuError> {
        self.fd
            .set_guest_debug(&kvm_guest_debug_from(debug))
            .map_err(backend_error("KVM_SET_GUEST_DEBUG"))?;
        self.debug = *debug;
        Ok(())
    }

    fn reinject_breakpoint(&mut self) -> Result<(), VcpuError> {
        let Some(esr) = self.last_brk.take() else {
            return Err(VcpuError::Unexpected {
                operation: "reinject breakpoint",
                detail: "the last exit was no BRK".into(),
            });
        };
        let entry = brk_exception_entry(
            self.register(PC)?,
            self.register(PSTATE)?,
            self.register(VBAR_EL1)?,
            brk_immediate(esr),
        );
        for (id, value) in [
            (ELR_EL1, entry.elr_el1),
            (SPSR_EL1, entry.spsr_el1),
            (ESR_EL1, entry.esr_el1),
            (PSTATE, entry.pstate),
            (PC, entry.pc),
        ] {
            self.set_register(id, value)?;
        }
        Ok(())
    }
}

impl Aarch64Vcpu for KvmArmCpu {
    fn registers(&mut self) -> Result<Aarch64Registers, VcpuError> {
        let mut out = Aarch64Registers {
            pc: self.register(PC)?,
            pstate: self.register(PSTATE)?,
            fpsr: self.register(FPSR)? as u32,
            fpcr: self.register(FPCR)? as u32,
            ..Aarch64Registers::default()
        };
        out.sp = self.register(Self::stack_pointer_id(out.pstate))?;
        for (number, x) in out.x.iter_mut().enumerate() {
            *x = self.register(x_register(number as u8))?;
        }
        for (number, v) in out.v.iter_mut().enumerate() {
            let mut bytes = [0u8; 16];
            self.fd
                .get_one_reg(v_register(number), &mut bytes)
                .map_err(backend_error("KVM_GET_ONE_REG"))?;
            *v = u128::from_le_bytes(bytes);
        }
        Ok(out)
    }

    fn set_registers(&mut self, registers: &Aarch64Registers) -> Result<(), VcpuError> {
        for (number, x) in registers.x.iter().enumerate() {
            self.set_register(x_register(number as u8), *x)?;
        }
        self.set_register(PC, registers.pc)?;
        self.set_register(PSTATE, registers.pstate)?;
        self.set_register(Self::stack_pointer_id(registers.pstate), registers.sp)?;
        for (id, value) in [(FPSR, registers.fpsr), (FPCR, registers.fpcr)] {
            self.fd
                .set_one_reg(id, &value.to_le_bytes())
                .map_err(backend_error("KVM_SET_ONE_REG"))?;
        }
        for (number, v) in registers.v.iter().enumerate() {
            self.fd
                .set_one_reg(v_register(number), &v.to_le_bytes())
                .map_err(backend_error("KVM_SET_ONE_REG"))?;
        }
        Ok(())
    }
}

/// The `KVM_SET_GUEST_DEBUG` argument for `debug`: software breakpoints (every `BRK` exits),
/// single-stepping and the hardware breakpoint and watchpoint registers.
fn kvm_guest_debug_from(debug: &GuestDebug) -> kvm_bindings::kvm_guest_debug {
    use kvm_bindings::{
        KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW, KVM_GUESTDBG_USE_SW_BP,
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
    let registers = DebugRegisters::of(debug);
    for (slot, (&(bvr, bcr), &(wvr, wcr))) in registers
        .breakpoints
        .iter()
        .zip(&registers.watchpoints)
        .enumerate()
    {
        out.arch.dbg_bvr[slot] = bvr;
        out.arch.dbg_bcr[slot] = bcr;
        out.arch.dbg_wvr[slot] = wvr;
        out.arch.dbg_wcr[slot] = wcr;
    }
    if debug.hardware.iter().any(Option::is_some) {
        out.control |= KVM_GUESTDBG_USE_HW;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_have_the_kvm_encoding() {
        // Values as the Linux uapi headers compute them (KVM_REG_ARM_CORE_REG,
        // ARM64_SYS_REG).
        assert_eq!(x_register(0), 0x6030_0000_0010_0000);
        assert_eq!(x_register(1), 0x6030_0000_0010_0002);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(SCTLR_EL1, 0x6030_0000_0013_c080);
        assert_eq!(TCR_EL1, 0x6030_0000_0013_c102);
        assert_eq!(TTBR0_EL1, 0x6030_0000_0013_c100);
        assert_eq!(MAIR_EL1, 0x6030_0000_0013_c510);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(MDSCR_EL1, 0x6030_0000_0013_8012);
        assert_eq!(ID_AA64MMFR0_EL1, 0x6030_0000_0013_c038);
        assert_eq!(SP_EL0, 0x6030_0000_0010_003e);
        assert_eq!(ELR_EL1, 0x6030_0000_0010_0046);
        assert_eq!(SPSR_EL1, 0x6030_0000_0010_0048);
        assert_eq!(v_register(0), 0x6040_0000_0010_0054);
        assert_eq!(v_register(31), 0x6040_0000_0010_00d0);
        assert_eq!(FPSR, 0x6020_0000_0010_00d4);
        assert_eq!(FPCR, 0x6020_0000_0010_00d5);
    }

    #[test]
    fn guest_debug_becomes_the_kvm_argument() {
        use crate::hypervisor::{HardwareBreakpoint, HardwareBreakpointKind};
        assert_eq!(kvm_guest_debug_from(&GuestDebug::default()).control, 0);
        let debug = GuestDebug {
            enabled: true,
            single_step: true,
            software_breakpoints: true,
            hardware: [
                None,
                Some(HardwareBreakpoint {
                    address: 0x4000_0010,
                    kind: HardwareBreakpointKind::Write,
                    len: 8,
                }),
                None,
                None,
            ],
        };
        let arg = kvm_guest_debug_from(&debug);
        assert_eq!(arg.control, 0x3_0003);
        assert_eq!(arg.arch.dbg_wvr[1], 0x4000_0010);
        assert_eq!(arg.arch.dbg_wcr[1] & 1, 1);
        assert_eq!(arg.arch.dbg_bcr, [0; 16]);
    }

    #[test]
    fn system_events_stop_the_vm_with_their_name() {
        for (kind, name) in [
            (KVM_SYSTEM_EVENT_SHUTDOWN, "SYSTEM_OFF"),
            (KVM_SYSTEM_EVENT_RESET, "SYSTEM_RESET"),
            (KVM_SYSTEM_EVENT_CRASH, "crash"),
            (99, "unknown"),
        ] {
            let VcpuExit::Unhandled { description } = system_event(kind) else {
                panic!("{kind}");
            };
            assert!(description.contains(name), "{description}");
            assert!(description.contains("without an Exit hypercall"));
        }
    }

    #[test]
    fn mmio_data_is_little_endian() {
        assert_eq!(little_endian(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
        assert_eq!(little_endian(&[1; 9]), 0x0101_0101_0101_0101);
        assert_eq!(little_endian(&[]), 0);
    }
}
