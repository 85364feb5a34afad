//! The x86_64 half of the KVM backend: creates the VM (memory slots, in-kernel irqchip, x2APIC
//! API, and on request an in-kernel PIT and guest idle instructions without exits:
//! [`VmFeatures`]), creates vCPUs in the initial state computed by `crate::setup`, and turns
//! KVM's exits into the backend-neutral [`crate::hypervisor::VcpuExit`].

mod probe;
mod vcpu;

use std::sync::OnceLock;

use kvm_bindings::{
    KVM_CAP_X86_DISABLE_EXITS, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_X86_DISABLE_EXITS_CSTATE, KVM_X86_DISABLE_EXITS_HLT, KVM_X86_DISABLE_EXITS_MWAIT,
    KVM_X86_DISABLE_EXITS_PAUSE, kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

pub use self::probe::{SimdExecution, probe_data_breakpoints};
pub use self::vcpu::KvmCpu;
use super::kick::{self, KvmKick};
use super::{KvmError, ioctl_error, open_kvm};
use crate::arch::GuestArch;
use crate::arch::x86_64::FallbackSimd;
use crate::arch::x86_64::layout::LOW_MEMORY;
use crate::hypervisor::x86_64::X86Vcpu;
use crate::hypervisor::{EntryRegisters, Hypervisor, HypervisorError, VcpuError, VmFeatures};
use crate::mem::GuestMemory;

/// `KVM_CAP_X2APIC_API`.
const CAP_X2APIC_API: u32 = 129;
/// `KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK`.
const X2APIC_API_FLAGS: u64 = 1 | 2;

/// The exits `--cpu-pm` asks KVM to disable (`KVM_CAP_X86_DISABLE_EXITS`), with their names.
const IDLE_EXITS: [(u32, &str); 4] = [
    (KVM_X86_DISABLE_EXITS_MWAIT, "MWAIT"),
    (KVM_X86_DISABLE_EXITS_HLT, "HLT"),
    (KVM_X86_DISABLE_EXITS_PAUSE, "PAUSE"),
    (KVM_X86_DISABLE_EXITS_CSTATE, "C-state requests"),
];

/// A KVM virtual machine with guest RAM registered as memory slot 0 (and, where RAM does not
/// cover it, zero-filled read-only [`LOW_MEMORY`] as slot 1).
pub struct KvmVm {
    // Declared first, so dropped first: the VM goes before the memory it maps.
    vm: VmFd,
    /// The zero-filled memory behind slot 1, once it is mapped.
    low_memory: OnceLock<GuestMemory>,
    /// What KVM supports, read once; each vCPU gets an edited copy.
    supported_cpuid: kvm_bindings::CpuId,
    /// When this KVM cannot execute SIMD instructions: what the user-space fallback executes,
    /// which is all the guest's CPUID may then offer.
    fallback_cpuid: Option<FallbackSimd>,
}

impl KvmVm {
    /// Opens `/dev/kvm` and creates a VM with an in-kernel irqchip, the x2APIC API and the
    /// `features` asked for. Guest RAM is registered later with [`KvmVm::map_memory`], so this
    /// (slow: creating the irqchip waits in the host kernel) can run while the kernel image is
    /// being loaded.
    pub fn create(features: VmFeatures) -> Result<Self, KvmError> {
        // Whether KVM executes SSE itself decides the guest's CPUID; the probe VM runs beside the
        // creation of the real one.
        let probe = std::thread::Builder::new()
            .name("simd-probe".into())
            .spawn(probe::detect_simd_execution);
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(ioctl_error("KVM_CREATE_VM"))?;
        vm.create_irq_chip()
            .map_err(ioctl_error("KVM_CREATE_IRQCHIP"))?;
        if features.pit {
            create_pit(&kvm, &vm)?;
        }
        if features.cpu_power_management {
            disable_idle_exits(&vm);
        }
        let x2apic = kvm_enable_cap {
            cap: CAP_X2APIC_API,
            args: [X2APIC_API_FLAGS, 0, 0, 0],
            ..Default::default()
        };
        if let Err(e) = vm.enable_cap(&x2apic) {
            log::warn!("KVM refused the x2APIC API ({e}); continuing with the xAPIC default");
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_error("KVM_GET_SUPPORTED_CPUID"))?;
        kick::install_kick_handler()?;
        let simd = probe.ok().and_then(|probe| probe.join().ok()).flatten();
        let fallback_cpuid = match simd {
            Some(SimdExecution::Emulated) => {
                let simd = FallbackSimd::of_the_emulator();
                log::info!(
                    "this KVM cannot execute SSE instructions itself (a probe VM stopped with an \
                     emulation failure): the guest's CPUID offers only what uhyve's user-space \
                     fallback executes ({simd:?})"
                );
                Some(simd)
            }
            Some(SimdExecution::Native) => None,
            None => {
                log::debug!("SIMD execution probe inconclusive: the guest sees KVM's CPUID");
                None
            }
        };
        Ok(Self {
            vm,
            low_memory: OnceLock::new(),
            supported_cpuid,
            fallback_cpuid,
        })
    }

    /// Maps [`LOW_MEMORY`] zero-filled and read-only as slot 1 (a guest write there exits as
    /// an MMIO write); without `KVM_CAP_READONLY_MEM` it stays unmapped.
    fn map_low_memory(&self) -> Result<(), KvmError> {
        if !self.vm.check_extension(Cap::ReadonlyMem) {
            log::debug!("KVM lacks read-only memory slots: low memory stays unmapped");
            return Ok(());
        }
        let size = LOW_MEMORY.end - LOW_MEMORY.start;
        let zeros = GuestMemory::new(uhyve_interface::GuestPhysAddr::new(LOW_MEMORY.start), size)
            .map_err(KvmError::LowMemory)?;
        let zeros = self.low_memory.get_or_init(|| zeros);
        let region = kvm_userspace_memory_region {
            slot: 1,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: zeros.base().as_u64(),
            memory_size: zeros.size(),
            userspace_addr: zeros.host_address() as u64,
        };
        // SAFETY: the region describes exactly the mapping owned by `zeros`, which lives in
        // `self.low_memory` and is dropped after `self.vm` (field order), so KVM never reads
        // host memory that is not this zero-filled area; read-only, KVM never writes it.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION (low memory)"))
    }
}

/// Creates the in-kernel i8254 PIT (`--pit`, flags 0); KVM then answers the guest's ports
/// 0x40–0x43 itself. Port 0x61 (speaker gate) stays with uhyve: KVM handles it only with its
/// dummy speaker (`KVM_PIT_SPEAKER_DUMMY`), which uhyve does not ask for.
fn create_pit(kvm: &Kvm, vm: &VmFd) -> Result<(), KvmError> {
    if !kvm.check_extension(Cap::Pit2) {
        return Err(KvmError::MissingCapability("KVM_CAP_PIT2 (for --pit)"));
    }
    vm.create_pit2(kvm_pit_config::default())
        .map_err(ioctl_error("KVM_CREATE_PIT2"))?;
    log::info!("--pit: KVM emulates an i8254 PIT (ports 0x40-0x43)");
    Ok(())
}

/// Asks KVM to let the guest's MWAIT, HLT, PAUSE and C-state requests run without exits
/// (`--cpu-pm`), as far as it offers to; what it does not do is logged, nothing fails.
fn disable_idle_exits(vm: &VmFd) {
    let offered = vm.check_extension_raw(KVM_CAP_X86_DISABLE_EXITS.into());
    let plan = match IdleExits::offered(offered) {
        Ok(plan) => plan,
        Err(reason) => {
            log::warn!("--cpu-pm has no effect on this host: {reason}");
            return;
        }
    };
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_DISABLE_EXITS,
        args: [u64::from(plan.mask), 0, 0, 0],
        ..Default::default()
    };
    match vm.enable_cap(&cap) {
        Ok(()) => log::info!("--cpu-pm: {plan}"),
        Err(error) => log::warn!(
            "--cpu-pm has no effect on this host: KVM refused to run the guest's {} without \
             exits ({error})",
            exit_names(plan.mask)
        ),
    }
}

/// The exits `--cpu-pm` disables: those of [`IDLE_EXITS`] that KVM offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdleExits {
    /// The `KVM_X86_DISABLE_EXITS_*` bits to enable.
    mask: u32,
}

impl IdleExits {
    /// The plan for what `KVM_CHECK_EXTENSION(KVM_CAP_X86_DISABLE_EXITS)` reported, or why
    /// there is nothing to do.
    fn offered(reported: i32) -> Result<Self, String> {
        let wanted = IDLE_EXITS.iter().fold(0, |mask, (bit, _)| mask | bit);
        let mask = u32::try_from(reported).unwrap_or(0) & wanted;
        if mask == 0 {
            return Err(format!(
                "KVM offers to run none of MWAIT, HLT, PAUSE or C-state requests without exits \
                 (KVM_CAP_X86_DISABLE_EXITS reports {reported:#x})"
            ));
        }
        Ok(Self { mask })
    }
}

impl std::fmt::Display for IdleExits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest's {} run without exits", exit_names(self.mask))?;
        let missing = IDLE_EXITS.iter().fold(0, |mask, (bit, _)| mask | bit) & !self.mask;
        if missing != 0 {
            write!(f, "; KVM does not offer it for {}", exit_names(missing))?;
        }
        Ok(())
    }
}

/// The names of the [`IDLE_EXITS`] bits in `mask`, in their order.
fn exit_names(mask: u32) -> String {
    IDLE_EXITS
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Hypervisor for KvmVm {
    const ARCH: GuestArch = GuestArch::X86_64;
    type Cpu = KvmCpu;
    type Kick = KvmKick;
    const RUN_IOCTLS: &'static [u64] = &vcpu::RUN_IOCTLS;

    fn signal_msi(&self, address: u64, data: u32) -> Result<(), HypervisorError> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(ioctl_error("KVM_SIGNAL_MSI"))
            .map_err(|e| HypervisorError::Backend(Box::new(e)))
    }

    fn mmio_write_eventfd(
        &self,
        address: u64,
        eventfd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<bool, HypervisorError> {
        super::register_mmio_eventfd(&self.vm, address, eventfd)
    }

    /// Registers `mem` as the VM's RAM (memory slot 0).
    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), HypervisorError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: mem.base().as_u64(),
            memory_size: mem.size(),
            userspace_addr: mem.host_address() as u64,
        };
        // SAFETY: the region describes exactly the mapping owned by `mem`, which the caller
        // guarantees outlives the VM, so KVM never accesses host memory that is not guest RAM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION"))?;
        if mem.base().as_u64() >= LOW_MEMORY.end {
            self.map_low_memory()?;
        }
        Ok(())
    }

    /// Creates vCPU `cpu` in the given initial state, on the calling thread (the thread that
    /// will run it: the kick signal is aimed at it).
    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(KvmCpu, KvmKick), HypervisorError> {
        let EntryRegisters::X86_64(registers) = entry else {
            return Err(HypervisorError::Vcpu {
                cpu,
                source: VcpuError::Unexpected {
                    operation: "create vCPU",
                    detail: "KVM runs x86_64 guests only".into(),
                },
            });
        };
        let vcpu = KvmCpu::new(
            &self.vm,
            cpu,
            registers,
            self.supported_cpuid.clone(),
            self.fallback_cpuid,
        )?;
        let kick = vcpu.kick_handle();
        Ok((vcpu, kick))
    }

    fn tsc_khz(cpu: &KvmCpu) -> Option<u32> {
        cpu.tsc_khz()
    }

    fn x86_vcpu(cpu: &mut KvmCpu) -> Option<&mut dyn X86Vcpu> {
        Some(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_pm_disables_the_idle_exits_kvm_offers() {
        let all = IdleExits::offered(0xf).unwrap();
        assert_eq!(all.mask, 0xf);
        assert_eq!(
            all.to_string(),
            "the guest's MWAIT, HLT, PAUSE, C-state requests run without exits"
        );
        // A KVM without MWAIT (as on the project's machines): the rest, and what is missing.
        let some = IdleExits::offered(0xe).unwrap();
        assert_eq!(some.mask, 0xe);
        assert_eq!(
            some.to_string(),
            "the guest's HLT, PAUSE, C-state requests run without exits; KVM does not offer it \
             for MWAIT"
        );
        // Bits uhyve does not know are not asked for.
        assert_eq!(IdleExits::offered(0x12).unwrap().mask, 0x2);
    }

    #[test]
    fn cpu_pm_explains_why_it_has_no_effect() {
        for reported in [0, -1, 0x10] {
            let reason = IdleExits::offered(reported).unwrap_err();
            assert!(
                reason.starts_with("KVM offers to run none of MWAIT, HLT, PAUSE or C-state"),
                "{reason}"
            );
            assert!(reason.contains(&format!("{reported:#x}")), "{reason}");
        }
    }
}
