//! Preparing an aarch64 guest: RAM at 0x1000_0000 (interface v1) or 4 GiB (v2/v3), its first
//! 16 KiB the hypercall trap window, the kernel, the stage-1 identity map (whose first page maps
//! virtual address 0 to the window) and vCPU 0's registers (EL1h, MMU on, X0 = boot info). Plain
//! Rust, so it is tested on any host, including x86_64 CI machines with the real aarch64 image.

use super::{BootPlan, GuestPlan, PreparedGuest, SetupError, load_guest, place_ram_and_kernel};
use crate::arch::aarch64::layout::{FDT_MAX_SIZE, MemoryLayout, PCI_KERNEL_RAM_END, RamPlacement};
use crate::arch::aarch64::{build_identity_map, initial_registers};
use crate::arch::layout_rules::LayoutRules;
use crate::boot::BootPlatform;
use crate::hypervisor::EntryRegisters;
use crate::loader::KernelImage;

/// Lays out an aarch64 guest: kernel, stage-1 tables and vCPU 0's registers. TCR_EL1.IPS is
/// left 0: the vCPU sets it from the PARange it reports (`crate::hvf::HvfCpu::new`).
pub fn prepare(image: &KernelImage, plan: &GuestPlan) -> Result<PreparedGuest, SetupError> {
    let placement = RamPlacement::for_interface(image.interface_version());
    let rules = rules_for(placement.rules(), plan)?;
    let placed = place_ram_and_kernel(image, &rules, plan)?;
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

/// The layout rules of `plan`'s guest: those of its interface version, and for a v1 guest with
/// PCI devices RAM that ends by [`PCI_KERNEL_RAM_END`] (ASLR included).
fn rules_for(rules: &LayoutRules, plan: &GuestPlan) -> Result<LayoutRules, SetupError> {
    let mut rules = rules.clone();
    // Only v1 kernels (RAM placed below 4 GiB by ASLR) manage [image end, 4 GiB) as their
    // virtual memory.
    if plan.pci && rules.aslr_ram_end.is_some() {
        let ram_end = rules.ram_base.saturating_add(plan.ram_size);
        if ram_end > PCI_KERNEL_RAM_END {
            return Err(SetupError::PciWindow {
                max_mib: (PCI_KERNEL_RAM_END - rules.ram_base) >> 20,
                limit: PCI_KERNEL_RAM_END,
            });
        }
        rules.aslr_ram_end = Some(PCI_KERNEL_RAM_END);
    }
    Ok(rules)
}
