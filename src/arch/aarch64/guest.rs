//! Preparing an aarch64 guest exactly as the Hypervisor.framework backend will: parse and
//! relocate the image, lay out guest RAM, place an initial RAM disk after the kernel if there is
//! one, build the stage-1 tables, write the FDT and the boot info, and compute vCPU 0's entry
//! registers. Plain Rust, so it is tested on any host (including
//! the x86_64 CI machines, with the real aarch64 Hermit image).

use goblin::elf::header::EM_AARCH64;
use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use super::layout::{self, FDT_MAX_SIZE, LayoutError, MemoryLayout};
use super::paging::{self, PagingError};
use super::registers::{InitialRegisters, initial_registers};
use crate::boot::{self, BootError, BootParams, FdtParams, FdtPlatform, InitialRamdisk, TlsImage};
use crate::loader::{KernelImage, LoadError, LoadedKernel};
use crate::mem::{GuestMemory, MemoryError};

/// Why an aarch64 guest could not be prepared.
#[derive(Debug, Error)]
pub enum PrepareError {
    /// The image is not a usable aarch64 Hermit kernel.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The image or memory size does not fit the layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The page tables could not be built.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The FDT or boot info could not be built.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The FDT does not fit its area.
    #[error("the device tree ({size} bytes) does not fit its {max}-byte area")]
    FdtTooLarge {
        /// Its size.
        size: usize,
        /// The area's size.
        max: u64,
    },
}

/// What the VM needs besides the image.
#[derive(Debug, Clone)]
pub struct GuestSetup {
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// Number of vCPUs.
    pub num_cpus: u32,
    /// `/chosen/bootargs`.
    pub bootargs: String,
    /// `/uhyve,mounts` (see [`FdtParams::mounts`]).
    pub mounts: Vec<String>,
    /// A Hermit image archive for the kernel (the internal mode), placed on the first page after
    /// the kernel image and announced in the FDT (see [`FdtParams::initrd`]).
    pub initrd: Option<InitialRamdisk>,
    /// ID_AA64MMFR0_EL1.PARange of the host, for TCR_EL1.IPS.
    pub pa_range: u8,
    /// Wall-clock time at VM creation.
    pub boot_time: time::OffsetDateTime,
}

/// A guest ready to run: RAM with everything in place, and vCPU 0's registers.
#[derive(Debug)]
pub struct PreparedGuest {
    /// Guest RAM.
    pub mem: GuestMemory,
    /// Where everything is.
    pub layout: MemoryLayout,
    /// The loaded kernel.
    pub kernel: LoadedKernel,
    /// The root of the stage-1 tables (TTBR0_EL1).
    pub ttbr0: GuestPhysAddr,
    /// Entry registers of vCPU 0 (the others differ in X1 and MPIDR_EL1).
    pub registers: InitialRegisters,
    /// Where the initial RAM disk lies, if there is one.
    pub initrd: Option<std::ops::Range<u64>>,
}

/// Prepares the aarch64 Hermit image `bytes` as described by `setup`.
pub fn prepare_guest(bytes: Vec<u8>, setup: &GuestSetup) -> Result<PreparedGuest, PrepareError> {
    prepare_image(&KernelImage::parse_for(bytes, EM_AARCH64)?, setup)
}

/// Prepares the parsed aarch64 Hermit image `image` as described by `setup`.
pub fn prepare_image(
    image: &KernelImage,
    setup: &GuestSetup,
) -> Result<PreparedGuest, PrepareError> {
    // Interface v1 guests get RAM at 0x1000_0000, v2/v3 guests at 4 GiB.
    let placement = layout::RamPlacement::for_interface(image.interface_version());
    let base = match image.fixed_load_address() {
        Some(fixed) => fixed,
        None => placement
            .rules()
            .pie_kernel_base
            .checked_next_multiple_of(image.load_alignment().max(1))
            .unwrap_or(u64::MAX),
    };
    let image_end = base.saturating_add(image.footprint());
    let layout = MemoryLayout::placed(placement, setup.ram_size, base..image_end)?;
    let mut mem = GuestMemory::new(layout.ram_base(), setup.ram_size)?;
    let slot = mem.slice_for_loading(GuestPhysAddr::new(base), image.footprint())?;
    let kernel = image.load(base, slot)?;
    let initrd = match &setup.initrd {
        Some(InitialRamdisk(bytes)) => {
            let range = placement.rules().place_initrd(
                kernel.image_range.end,
                bytes.len() as u64,
                setup.ram_size,
            )?;
            mem.write(GuestPhysAddr::new(range.start), bytes)?;
            Some(range)
        }
        None => None,
    };
    // The kernel reads the initial RAM disk through the boot identity map.
    let map_end = initrd
        .as_ref()
        .map_or(kernel.image_range.end, |range| range.end);
    let ttbr0 = paging::build_identity_map(&mem, &layout, map_end)?;

    let fdt = boot::build_fdt_for(
        &FdtParams {
            ram: layout.ram(),
            num_cpus: setup.num_cpus,
            tsc_khz: None,
            bootargs: setup.bootargs.clone(),
            mounts: setup.mounts.clone(),
            initrd: initrd.clone(),
        },
        FdtPlatform::Aarch64,
    )?;
    if fdt.len() as u64 > FDT_MAX_SIZE {
        return Err(PrepareError::FdtTooLarge {
            size: fdt.len(),
            max: FDT_MAX_SIZE,
        });
    }
    mem.write(layout.fdt(), &fdt)?;
    let boot_info = boot::encode_boot_info_aarch64(&BootParams {
        ram: layout.ram(),
        kernel_image: kernel.image_range.clone(),
        tls: kernel.tls.map(|tls| TlsImage {
            start: tls.start,
            filesz: tls.filesz,
            memsz: tls.memsz,
            align: tls.align,
        }),
        num_cpus: setup.num_cpus,
        // Hypervisor.framework offers no TSC-like frequency; the kernel reads CNTFRQ_EL0.
        cpu_freq_khz: None,
        boot_time: setup.boot_time,
        serial_port: boot::serial_port_for_interface(image.interface_version()),
        has_pci: false,
        fdt_address: Some(layout.fdt().as_u64()),
    })?;
    mem.write(layout.boot_info(), &boot_info)?;
    let registers = initial_registers(
        kernel.entry_point,
        ttbr0,
        layout.boot_info(),
        layout.boot_stack_bottom(),
        0,
        setup.pa_range,
    );
    Ok(PreparedGuest {
        mem,
        layout,
        kernel,
        ttbr0,
        registers,
        initrd,
    })
}
