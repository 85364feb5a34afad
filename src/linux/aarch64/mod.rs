//! The aarch64 half of the KVM backend: a VM with the largest IPA size KVM offers up to 48 bits,
//! guest RAM as one memory slot that leaves out the hypercall window (its first 16 KiB, so that
//! the guest's stores there reach uhyve as MMIO exits), a vGICv3 at the addresses uhyve's device
//! tree describes ([`GICD`], [`GICR`]), and vCPUs initialised for the host's preferred target
//! with PSCI 0.2: vCPU 0 starts at the entry in the state `crate::arch::aarch64` computes, the
//! others start powered off and wait in the host kernel for the guest's PSCI CPU_ON (which KVM
//! serves itself, as it serves CPU_OFF and AFFINITY_INFO), each with a PMUv3 where KVM offers
//! one. A store without an instruction
//! syndrome is reported to uhyve (`KVM_CAP_ARM_NISV_TO_USER`) and stops the VM with a message,
//! instead of failing `KVM_RUN`.

mod vcpu;

use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::{
    KVM_CAP_ARM_NISV_TO_USER, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_MEM_READONLY, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_enable_cap, kvm_userspace_memory_region,
    kvm_vcpu_init,
};
use kvm_ioctls::{Cap, DeviceFd, VmFd};

pub use self::vcpu::KvmArmCpu;
use super::all_ones::AllOnes;
use super::kick::{self, KvmKick};
use super::{KvmError, ioctl_error, open_kvm};
use crate::arch::GuestArch;
use crate::arch::aarch64::layout::{GICD, GICR, HYPERCALL_WINDOW_SIZE};
use crate::hypervisor::aarch64::debug::Aarch64Vcpu;
use crate::hypervisor::{EntryRegisters, Hypervisor, HypervisorError, VcpuError, VmFeatures};
use crate::mem::GuestMemory;

/// The IPA size asked for when KVM offers more than its default of 40 bits.
const WANTED_IPA_BITS: u32 = 48;
/// KVM's IPA size when the VM type does not name one.
const DEFAULT_IPA_BITS: u32 = 40;
/// Size of one vCPU's GICv3 redistributor (RD_base and SGI_base frames).
const REDISTRIBUTOR_SIZE: u64 = 0x2_0000;

/// The vGICv3 of a VM. KVM wants it initialised once every vCPU exists and before any runs; the
/// first vCPU to run does that (uhyve creates all vCPUs before it starts any).
pub(crate) struct Gic {
    device: DeviceFd,
    initialised: Mutex<Option<Result<(), String>>>,
}

impl Gic {
    /// Creates the vGICv3 with its distributor at [`GICD`] and redistributors from [`GICR`].
    fn create(vm: &VmFd) -> Result<Self, KvmError> {
        let mut request = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let device = vm
            .create_device(&mut request)
            .map_err(ioctl_error("KVM_CREATE_DEVICE (vGICv3)"))?;
        for (kind, address, what) in [
            (
                KVM_VGIC_V3_ADDR_TYPE_DIST,
                GICD.start,
                "vGICv3 distributor address",
            ),
            (
                KVM_VGIC_V3_ADDR_TYPE_REDIST,
                GICR.start,
                "vGICv3 redistributor address",
            ),
        ] {
            let attr = kvm_device_attr {
                flags: 0,
                group: KVM_DEV_ARM_VGIC_GRP_ADDR,
                attr: u64::from(kind),
                addr: std::ptr::addr_of!(address) as u64,
            };
            device
                .set_device_attr(&attr)
                .map_err(|e| ioctl_error(what)(e))?;
        }
        Ok(Self {
            device,
            initialised: Mutex::new(None),
        })
    }

    /// Initialises the vGIC the first time it is called; later calls return the first result.
    pub(crate) fn initialise_once(&self) -> Result<(), VcpuError> {
        let mut state = self.initialised.lock().unwrap_or_else(|p| p.into_inner());
        let result = state.get_or_insert_with(|| {
            let attr = kvm_device_attr {
                flags: 0,
                group: KVM_DEV_ARM_VGIC_GRP_CTRL,
                attr: u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
                addr: 0,
            };
            self.device
                .set_device_attr(&attr)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()).to_string())
        });
        result.clone().map_err(|detail| VcpuError::Unexpected {
            operation: "KVM_DEV_ARM_VGIC_CTRL_INIT",
            detail,
        })
    }
}

/// A KVM virtual machine for aarch64 guests.
pub struct KvmArmVm {
    // Declared first, so dropped first: the VM goes before the memory it maps.
    vm: VmFd,
    /// Host memory reading as all-ones behind memory slot 1 ([`Hypervisor::map_all_ones`]);
    /// dropped after the VM.
    all_ones: OnceLock<AllOnes>,
    gic: Arc<Gic>,
    /// The host's preferred vCPU target, read once.
    target: kvm_vcpu_init,
    /// Where guest RAM (and its hypercall window) starts, once it is mapped.
    ram_base: OnceLock<u64>,
    /// The most vCPUs KVM and the redistributor area allow.
    max_cpus: u32,
    /// KVM gives vCPUs a PMUv3 (Hermit's aarch64 kernels program its registers at start-up,
    /// which are undefined instructions without one).
    pmu: bool,
}

/// The `irq` of KVM_IRQ_LINE for the shared peripheral interrupt `spi`: the interrupt type
/// (KVM_ARM_IRQ_TYPE_SPI) in bits 31:24, the GIC INTID (32 + `spi`) in bits 15:0.
fn spi_irq_line(spi: u32) -> u32 {
    const KVM_ARM_IRQ_TYPE_SPI: u32 = 1;
    const FIRST_SPI_INTID: u32 = 32;
    KVM_ARM_IRQ_TYPE_SPI << 24 | (FIRST_SPI_INTID + spi) & 0xffff
}

/// The VM type asking for an IPA size: KVM's default where the host offers no more than that,
/// else the host's limit up to [`WANTED_IPA_BITS`].
fn vm_type_for_ipa_limit(host_limit: i32) -> u64 {
    match u32::try_from(host_limit) {
        Ok(limit) if limit > DEFAULT_IPA_BITS => u64::from(limit.min(WANTED_IPA_BITS)),
        _ => 0,
    }
}

impl KvmArmVm {
    /// Opens `/dev/kvm` and creates a VM with a vGICv3. Of the `features`, none exists on
    /// aarch64: each one asked for is one warning.
    pub fn create(features: VmFeatures) -> Result<Self, KvmError> {
        if features.pit {
            log::warn!("--pit has no effect on aarch64: the i8254 PIT is an x86 device");
        }
        if features.cpu_power_management {
            log::warn!(
                "--cpu-pm has no effect on aarch64: KVM_CAP_X86_DISABLE_EXITS is an x86 setting"
            );
        }
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::OneReg, "KVM_CAP_ONE_REG"),
            (Cap::ArmPsci02, "KVM_CAP_ARM_PSCI_0_2"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let vm_type = vm_type_for_ipa_limit(kvm.get_host_ipa_limit());
        let vm = kvm
            .create_vm_with_type(vm_type)
            .map_err(ioctl_error("KVM_CREATE_VM"))?;
        let nisv = kvm_enable_cap {
            cap: KVM_CAP_ARM_NISV_TO_USER,
            ..Default::default()
        };
        if let Err(e) = vm.enable_cap(&nisv) {
            log::warn!(
                "KVM refused KVM_CAP_ARM_NISV_TO_USER ({e}): a guest access without an \
                 instruction syndrome will end the vCPU with a KVM_RUN error"
            );
        }
        let gic = Gic::create(&vm)?;
        let mut target = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut target)
            .map_err(ioctl_error("KVM_ARM_PREFERRED_TARGET"))?;
        let pmu = kvm.check_extension(Cap::ArmPmuV3);
        if !pmu {
            log::warn!(
                "KVM offers no PMUv3 (KVM_CAP_ARM_PMU_V3): guests that use the performance \
                 monitors, as Hermit's aarch64 kernels do at start-up, will fault"
            );
        }
        kick::install_kick_handler()?;
        let redistributors = (GICR.end - GICR.start) / REDISTRIBUTOR_SIZE;
        let max_cpus = u32::try_from(kvm.get_max_vcpus())
            .unwrap_or(u32::MAX)
            .min(u32::try_from(redistributors).unwrap_or(u32::MAX));
        Ok(Self {
            vm,
            all_ones: OnceLock::new(),
            gic: Arc::new(gic),
            target,
            ram_base: OnceLock::new(),
            max_cpus,
            pmu,
        })
    }
}

impl Hypervisor for KvmArmVm {
    const ARCH: GuestArch = GuestArch::Aarch64;
    type Cpu = KvmArmCpu;
    type Kick = KvmKick;
    const RUN_IOCTLS: &'static [u64] = &vcpu::RUN_IOCTLS;

    /// Registers `mem` as the VM's RAM (memory slot 0), all but its first 16 KiB: the guest's
    /// accesses to that hypercall window exit to uhyve.
    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), HypervisorError> {
        let window = HYPERCALL_WINDOW_SIZE;
        let base = mem.base().as_u64();
        let (Some(guest_phys_addr), Some(memory_size)) =
            (base.checked_add(window), mem.size().checked_sub(window))
        else {
            return Err(HypervisorError::Backend(
                "guest RAM is smaller than its hypercall window".into(),
            ));
        };
        if self.ram_base.set(base).is_err() {
            return Err(HypervisorError::Backend("guest RAM is mapped twice".into()));
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr,
            memory_size,
            // The window is the first bytes of the mapping: the slot starts that far in.
            userspace_addr: mem.host_address() as u64 + window,
        };
        // SAFETY: the region lies inside the mapping owned by `mem` (its first 16 KiB left out),
        // which the caller guarantees outlives the VM, so KVM never accesses host memory that
        // is not guest RAM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION"))?;
        Ok(())
    }

    fn max_cpus(&self) -> Option<u32> {
        Some(self.max_cpus)
    }

    fn set_spi_level(&self, spi: u32, high: bool) -> Result<(), HypervisorError> {
        self.vm
            .set_irq_line(spi_irq_line(spi), high)
            .map_err(ioctl_error("KVM_IRQ_LINE"))
            .map_err(|e| HypervisorError::Backend(Box::new(e)))
    }

    fn mmio_write_eventfd(
        &self,
        address: u64,
        eventfd: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<bool, HypervisorError> {
        super::register_mmio_eventfd(&self.vm, address, eventfd)
    }

    /// A read-only memory slot (slot 1, `KVM_MEM_READONLY`) over host memory of 0xFF bytes.
    fn map_all_ones(&self, range: std::ops::Range<u64>) -> Result<bool, HypervisorError> {
        const ALL_ONES_SLOT: u32 = 1;
        let backend = |e: std::io::Error| HypervisorError::Backend(Box::new(e));
        if !open_kvm()?.check_extension(Cap::ReadonlyMem) || self.all_ones.get().is_some() {
            return Ok(false);
        }
        let len = range.end.saturating_sub(range.start);
        let mapping = AllOnes::new(usize::try_from(len).unwrap_or(0)).map_err(backend)?;
        let region = kvm_userspace_memory_region {
            slot: ALL_ONES_SLOT,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: range.start,
            memory_size: mapping.size(),
            userspace_addr: mapping.host_address(),
        };
        // SAFETY: the region is exactly the mapping, which `self.all_ones` keeps until after
        // the VM is dropped (field order), and KVM only reads it (a read-only slot).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION (all-ones)"))?;
        let _ = self.all_ones.set(mapping);
        Ok(true)
    }

    /// Creates vCPU `cpu` on the calling thread: vCPU 0 in the state `entry`, the others powered
    /// off until the guest starts them with PSCI CPU_ON.
    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(KvmArmCpu, KvmKick), HypervisorError> {
        let EntryRegisters::Aarch64(registers) = entry else {
            return Err(HypervisorError::Vcpu {
                cpu,
                source: VcpuError::Unexpected {
                    operation: "create vCPU",
                    detail: "this KVM runs aarch64 guests only".into(),
                },
            });
        };
        let Some(&ram_base) = self.ram_base.get() else {
            return Err(HypervisorError::Backend(
                "a vCPU was created before guest RAM was mapped".into(),
            ));
        };
        let vcpu = KvmArmCpu::new(
            &self.vm,
            cpu,
            self.target,
            registers,
            ram_base,
            Arc::clone(&self.gic),
            self.pmu,
        )?;
        let kick = vcpu.kick_handle();
        Ok((vcpu, kick))
    }

    fn aarch64_vcpu(cpu: &mut KvmArmCpu) -> Option<&mut dyn Aarch64Vcpu> {
        Some(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipa_size_is_the_hosts_up_to_48_bits() {
        // No IPA-size capability, or no more than the default: KVM's default VM type.
        for limit in [-1, 0, 32, 40] {
            assert_eq!(vm_type_for_ipa_limit(limit), 0, "{limit}");
        }
        assert_eq!(vm_type_for_ipa_limit(44), 44);
        assert_eq!(vm_type_for_ipa_limit(48), 48);
        assert_eq!(vm_type_for_ipa_limit(52), 48);
    }

    #[test]
    fn spi_lines_carry_the_spi_type_and_the_intid() {
        assert_eq!(spi_irq_line(0), 0x0100_0020);
        assert_eq!(spi_irq_line(3), 0x0100_0023);
    }

    #[test]
    fn the_redistributor_area_holds_123_vcpus() {
        assert_eq!((GICR.end - GICR.start) / REDISTRIBUTOR_SIZE, 123);
    }
}
