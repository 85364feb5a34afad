//! Preparing an aarch64 guest: RAM at 0x1000_0000 (interface v1) or 4 GiB (v2/v3), its first
//! 16 KiB the hypercall trap window, the kernel, the stage-1 identity map (whose first page maps
//! virtual address 0 to the window) and vCPU 0's registers (EL1h, MMU on, X0 = boot info). Plain
//! Rust, so it is tested on any host, including x86_64 CI machines with the real aarch64 image.

use super::{BootPlan, GuestPlan, PreparedGuest, SetupError, load_guest, place_ram_and_kernel};
use crate::arch::aarch64::layout::{FDT_MAX_SIZE, MemoryLayout, RamPlacement};
use crate::arch::aarch64::{build_identity_map, initial_registers};
use crate::boot::BootPlatform;
use crate::hypervisor::EntryRegisters;
use crate::loader::KernelImage;

/// Lays out an aarch64 guest: kernel, stage-1 tables and vCPU 0's registers. TCR_EL1.IPS is
/// left 0: the vCPU sets it from the PARange it reports (`crate::hvf::HvfCpu::new`).
pub fn prepare(image: &KernelImage, plan: &GuestPlan) -> Result<PreparedGuest, SetupError> {
    let placement = RamPlacement::for_interface(image.interface_version());
    let placed = place_ram_and_kernel(image, placement.rules(), plan)?;
    let layout = MemoryLayout::with_rules(&placed.rules, plan.ram_size, placed.kernel)
        .map_err(SetupError::Placement)?;
    let loaded = load_guest(image, &placed.rules, &layout, plan)?;
    let ttbr0 = build_identity_map(&loaded.mem, &layout, loaded.map_end())?;
    let registers = initial_registers(
        loaded.kernel.entry_point,
        ttbr0,
        layout.boot_info(),
        layout.boot_stack_bottom(),
        0,
    );
    Ok(PreparedGuest {
        registers: EntryRegisters::Aarch64(registers),
        page_table_root: ttbr0,
        boot_info: layout.boot_info(),
        fdt: layout.fdt(),
        boot: BootPlan::new(
            BootPlatform::Aarch64,
            FDT_MAX_SIZE,
            layout.ram(),
            plan,
            &loaded,
            image.interface_version(),
        ),
        mem: loaded.mem,
        kernel: loaded.kernel,
        initrd: loaded.initrd,
    })
}
