//! Preparing guest RAM for a kernel, in the same two steps for both architectures:
//! [`prepare`] places RAM where the image's interface version wants it, loads and relocates the
//! kernel, places an initial RAM disk after it if there is one, builds the boot page tables (and
//! on x86_64 the GDT) and computes vCPU 0's registers; [`PreparedGuest::write_boot`] then writes
//! the device tree and the boot info, once what they report is known (on x86_64 the TSC rate of
//! vCPU 0). The architecture-specific parts are in [`x86_64`] and [`aarch64`]; the kernel's
//! placement (with its randomisation, [`aslr`]), the initial RAM disk, the TLS template and the
//! device-tree size check exist once, here and in [`crate::boot`].

pub mod aarch64;
pub mod aslr;
pub mod x86_64;

use std::ops::Range;

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::arch::GuestArch;
use crate::arch::layout_rules::{LayoutError, LayoutRules, RamLayout};
use crate::boot::{self, BootError, BootParams, BootPlatform, FdtParams, InitialRamdisk};
use crate::hypervisor::EntryRegisters;
use crate::loader::{KernelImage, LoadError, LoadedKernel};
use crate::mem::{GuestMemory, MemoryError, RamAdvice};

/// Why a guest could not be prepared.
#[derive(Debug, Error)]
pub enum SetupError {
    /// The memory size is not one the layout accepts.
    #[error(transparent)]
    MemorySize(LayoutError),
    /// The image (or the initial RAM disk after it) does not fit the layout.
    #[error(transparent)]
    Placement(LayoutError),
    /// The image could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The x86_64 boot page tables could not be built.
    #[error("cannot build the guest page tables: {0}")]
    X86PageTables(#[from] crate::arch::x86_64::PagingError),
    /// The x86_64 GDT could not be written.
    #[error("cannot write the guest GDT: {0}")]
    Gdt(#[from] crate::arch::x86_64::GdtError),
    /// The aarch64 stage-1 tables could not be built.
    #[error("cannot build the guest page tables: {0}")]
    Aarch64PageTables(#[from] crate::arch::aarch64::paging::PagingError),
    /// The boot info or device tree could not be built or written.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// An aarch64 v1 guest with PCI devices has too much RAM for its kernel to map the PCI
    /// configuration window.
    #[error(
        "with -n/--net, aarch64 guests of interface v1 (Hermit 0.11 and older) get at most \
         {max_mib} MiB of RAM: their kernel maps the 256 MiB PCI configuration window into its \
         virtual memory below 4 GiB, which guest RAM above {limit:#x} leaves no room for"
    )]
    PciWindow {
        /// The largest RAM size, in MiB.
        max_mib: u64,
        /// Where RAM must end.
        limit: u64,
    },
    /// Address-space layout randomisation chose a RAM base the layout rules cannot move to
    /// (cannot happen: the choice stays within them).
    #[error("guest RAM cannot start at {0:#x}")]
    RamBase(u64),
}

impl SetupError {
    /// Whether the error is about the image itself (its placement or loading), so that the
    /// message should name the image file.
    pub fn concerns_the_image(&self) -> bool {
        matches!(self, Self::Placement(_) | Self::Load(_))
    }
}

/// What the guest is to be given besides the image.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// Number of vCPUs.
    pub num_cpus: u32,
    /// `/chosen/bootargs`.
    pub bootargs: String,
    /// `/uhyve,mounts` (see [`FdtParams::mounts`]).
    pub mounts: Vec<String>,
    /// A Hermit image archive for the kernel (the internal mode), placed on the first page after
    /// the kernel image and announced in the device tree (see [`FdtParams::initrd`]).
    pub initrd: Option<InitialRamdisk>,
    /// A kernel before Hermit 0.10 (x86_64: its boot map must cover the first GiB).
    pub pre_0_10_kernel: bool,
    /// The random value the RAM base of a relocatable kernel is drawn from
    /// ([`aslr::place_guest`]); `None` puts it at the lowest base (ASLR off).
    pub aslr_random: Option<u64>,
    /// What the host kernel is asked to do with guest RAM (`--thp`, `--ksm`).
    pub ram_advice: RamAdvice,
    /// The guest gets PCI devices (`--net`); on aarch64 its kernel then maps the PCI host
    /// bridge's configuration window, which limits where its RAM may end.
    pub pci: bool,
}

/// A guest ready for its vCPUs: RAM with the kernel, tables and registers in place; the boot
/// info and device tree follow with [`PreparedGuest::write_boot`].
#[derive(Debug)]
pub struct PreparedGuest {
    /// Guest RAM.
    pub mem: GuestMemory,
    /// Entry registers of vCPU 0 (the others differ only in their CPU id).
    pub registers: EntryRegisters,
    /// The loaded kernel.
    pub kernel: LoadedKernel,
    /// The root of the boot page tables (x86_64: CR3, aarch64: TTBR0_EL1).
    pub page_table_root: GuestPhysAddr,
    /// Where the initial RAM disk lies, if there is one.
    pub initrd: Option<Range<u64>>,
    /// Where the boot info goes.
    pub boot_info: GuestPhysAddr,
    /// Where the device tree goes.
    pub fdt: GuestPhysAddr,
    /// What the boot structures report.
    boot: BootPlan,
}

/// What [`PreparedGuest::write_boot`] writes besides the values only known at start.
#[derive(Debug, Clone)]
struct BootPlan {
    platform: BootPlatform,
    /// Size of the device-tree area.
    fdt_max_size: u64,
    /// The device tree without the TSC rate.
    fdt: FdtParams,
    /// The boot info's `serial_port_base`.
    serial_port: u16,
    /// The boot info's `has_pci`: the guest has PCI devices to find.
    has_pci: bool,
}

impl BootPlan {
    /// What the boot structures of a guest with `ram`, prepared as `plan` says, report.
    fn new(
        platform: BootPlatform,
        fdt_max_size: u64,
        ram: Range<u64>,
        plan: &GuestPlan,
        loaded: &LoadedGuest,
        interface_version: u32,
    ) -> Self {
        Self {
            platform,
            fdt_max_size,
            fdt: FdtParams {
                ram,
                num_cpus: plan.num_cpus,
                tsc_khz: None,
                bootargs: plan.bootargs.clone(),
                mounts: plan.mounts.clone(),
                initrd: loaded.initrd.clone(),
                pci: false,
            },
            serial_port: boot::serial_port_for_interface(interface_version),
            has_pci: false,
        }
    }
}

impl PreparedGuest {
    /// Tells the kernel that it has PCI devices to scan for: the boot info's `has_pci`
    /// (x86_64) and the device tree's PCI host bridge (aarch64).
    pub fn announce_pci(&mut self) {
        self.boot.has_pci = true;
        self.boot.fdt.pci = true;
    }

    /// Writes the device tree and the boot info: `cpu_freq_khz` is vCPU 0's TSC rate where the
    /// architecture has one, `boot_time` the wall-clock time the guest starts at.
    pub fn write_boot(
        &self,
        cpu_freq_khz: Option<u32>,
        boot_time: time::OffsetDateTime,
    ) -> Result<(), SetupError> {
        let plan = &self.boot;
        let fdt = boot::build_fdt_for(
            &FdtParams {
                tsc_khz: cpu_freq_khz,
                ..plan.fdt.clone()
            },
            plan.platform,
        )?;
        boot::write_fdt(&self.mem, self.fdt, plan.fdt_max_size, &fdt)?;
        let params = BootParams {
            ram: plan.fdt.ram.clone(),
            kernel_image: self.kernel.image_range.clone(),
            tls: self.kernel.tls,
            num_cpus: plan.fdt.num_cpus,
            cpu_freq_khz,
            boot_time,
            serial_port: plan.serial_port,
            // Without a device a scan could only find nothing: telling the kernel spares it 2048
            // port exits (every bus and slot) at boot.
            has_pci: self.boot.has_pci,
            fdt_address: Some(self.fdt.as_u64()),
        };
        boot::write_boot_info(&self.mem, self.boot_info, &params, plan.platform)?;
        Ok(())
    }
}

/// Prepares `image` for a guest of `arch` as `plan` describes.
pub fn prepare(
    arch: GuestArch,
    image: &KernelImage,
    plan: &GuestPlan,
) -> Result<PreparedGuest, SetupError> {
    match arch {
        GuestArch::X86_64 => x86_64::prepare(image, plan),
        GuestArch::Aarch64 => aarch64::prepare(image, plan),
    }
}

/// The kernel and the initial RAM disk in guest RAM.
struct LoadedGuest {
    mem: GuestMemory,
    kernel: LoadedKernel,
    initrd: Option<Range<u64>>,
}

impl LoadedGuest {
    /// Where the boot identity map must reach: the kernel, and the initial RAM disk, which the
    /// kernel reads through it.
    fn map_end(&self) -> u64 {
        self.initrd
            .as_ref()
            .map_or(self.kernel.image_range.end, |range| range.end)
    }
}

/// Where RAM and the kernel go (see [`aslr`]).
struct Placed {
    /// The layout rules with RAM at its chosen base.
    rules: LayoutRules,
    /// The guest-physical range of the kernel image.
    kernel: Range<u64>,
}

/// Places RAM and `image` under `rules` as `plan` says, after checking the memory size.
fn place_ram_and_kernel(
    image: &KernelImage,
    rules: &LayoutRules,
    plan: &GuestPlan,
) -> Result<Placed, SetupError> {
    rules
        .check_memory_size(plan.ram_size)
        .map_err(SetupError::MemorySize)?;
    let facts = aslr::ImageFacts {
        relocatable: image.is_position_independent(),
        pre_0_10_kernel: plan.pre_0_10_kernel,
        lowest_base: image.load_base(rules.pie_kernel_base),
        footprint: image.footprint(),
        alignment: image.load_alignment(),
    };
    let placement = aslr::place_guest(rules, plan.ram_size, &facts, plan.aslr_random);
    log::info!("{placement}");
    let rules = rules
        .moved_to(placement.ram_base)
        .ok_or(SetupError::RamBase(placement.ram_base))?;
    let kernel = placement.kernel_base..placement.kernel_base.saturating_add(facts.footprint);
    Ok(Placed { rules, kernel })
}

/// Creates guest RAM of `layout`, loads `image` at the start of its kernel range straight into
/// it (no staging copy; untouched BSS stays unallocated) and places the initial RAM disk after it.
fn load_guest(
    image: &KernelImage,
    rules: &LayoutRules,
    layout: &RamLayout,
    plan: &GuestPlan,
) -> Result<LoadedGuest, SetupError> {
    let mut mem = GuestMemory::new(layout.ram_base(), layout.ram_size())?;
    // Before the kernel is copied in, so that its pages are already backed as asked.
    mem.advise(plan.ram_advice);
    let base = layout.kernel_base();
    let slot = mem.slice_for_loading(GuestPhysAddr::new(base), image.footprint())?;
    let kernel = image.load(base, slot)?;
    let initrd = match &plan.initrd {
        Some(InitialRamdisk(bytes)) => {
            let range = rules
                .place_initrd(
                    kernel.image_range.end,
                    bytes.len() as u64,
                    layout.ram_size(),
                )
                .map_err(SetupError::Placement)?;
            mem.write(GuestPhysAddr::new(range.start), bytes)?;
            log::info!(
                "Hermit image archive for the kernel at {:#x}..{:#x}",
                range.start,
                range.end
            );
            Some(range)
        }
        None => None,
    };
    Ok(LoadedGuest {
        mem,
        kernel,
        initrd,
    })
}
