//! Preparing an x86_64 guest: RAM at 0 (interface v1) or 4 GiB (v2/v3), the kernel, the boot
//! identity map, the GDT and vCPU 0's registers (64-bit mode, paging on, RDI = boot info).

use super::{BootPlan, GuestPlan, PreparedGuest, SetupError, load_guest, place_ram_and_kernel};
use crate::arch::x86_64::layout::{FDT_MAX_SIZE, MemoryLayout, RamPlacement};
use crate::arch::x86_64::{build_identity_map, initial_registers, write_gdt};
use crate::boot::BootPlatform;
use crate::hypervisor::EntryRegisters;
use crate::loader::KernelImage;

/// Lays out an x86_64 guest: kernel, page tables, GDT and vCPU 0's registers.
pub fn prepare(image: &KernelImage, plan: &GuestPlan) -> Result<PreparedGuest, SetupError> {
    let placement = RamPlacement::for_interface(image.interface_version());
    let placed = place_ram_and_kernel(image, placement.rules(), plan)?;
    let layout = MemoryLayout::with_rules(&placed.rules, plan.ram_size, placed.kernel)
        .map_err(SetupError::Placement)?;
    let loaded = load_guest(image, &placed.rules, &layout, plan)?;
    let pml4 = build_identity_map(&loaded.mem, &layout, loaded.map_end(), plan.pre_0_10_kernel)?;
    write_gdt(&loaded.mem, layout.gdt())?;
    let registers = initial_registers(
        loaded.kernel.entry_point,
        layout.gdt(),
        pml4,
        layout.boot_info(),
        layout.boot_stack_bottom(),
        0,
    );
    Ok(PreparedGuest {
        registers: EntryRegisters::X86_64(registers),
        page_table_root: pml4,
        boot_info: layout.boot_info(),
        fdt: layout.fdt(),
        boot: BootPlan::new(
            BootPlatform::X86_64,
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
