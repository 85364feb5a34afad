//! The floor: the smallest KVM host that does what a uhyve run must do at the least, so uhyve's
//! figures can be judged against it. It opens `/dev/kvm`, creates a VM with one anonymous
//! (`MAP_NORESERVE`) RAM slot of the requested size, the same identity map and GDT as uhyve
//! (uhyve's own library functions), an in-kernel irqchip and one vCPU in long mode, and runs a
//! hand-assembled guest: `n` times `out dx, al` to [`LOOP_PORT`], then one `out` to
//! [`EXIT_PORT`]. The host answers every exit by re-entering the guest, and exits the process
//! with status 0 at the exit port without tearing anything down.
//!
//! The benchmark runs it in a child process (the bench binary re-executed with `--floor`), so it
//! is timed exactly like the `uhyve` binary.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use uhyve::arch::x86_64::{
    GdtError, LayoutError, MemoryLayout, PagingError, SegmentDescriptor, build_identity_map,
    initial_registers, write_gdt,
};
use uhyve::mem::{GuestMemory, MemoryError};
use uhyve_interface::GuestPhysAddr;

/// Port of the loop's `out` (the Uart port, as in the uhyve guest it is compared with).
pub const LOOP_PORT: u16 = 0x800;
/// Port of the final `out` that ends the run (uhyve's Exit port).
pub const EXIT_PORT: u16 = 0x540;
/// Where the guest code is loaded (the test guests' link address).
const CODE_BASE: u64 = 0x40_0000;

/// What can stop the floor.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("floor: guest RAM: {0}")]
    Memory(#[from] MemoryError),
    #[error("floor: memory layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("floor: page tables: {0}")]
    Paging(#[from] PagingError),
    #[error("floor: GDT: {0}")]
    Gdt(#[from] GdtError),
    #[error("floor: {operation} failed: {source}")]
    Kvm {
        operation: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("floor: unexpected vCPU exit {0}")]
    UnexpectedExit(String),
}

fn kvm_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Kvm { operation, source }
}

/// The guest code; it expects RCX = loop count, DX = [`LOOP_PORT`].
///
/// ```text
/// 0:  85 c9          test ecx, ecx
/// 2:  74 05          jz   9
/// 4:  ee             out  dx, al
/// 5:  ff c9          dec  ecx
/// 7:  75 fb          jnz  4
/// 9:  66 ba lo hi    mov  dx, EXIT_PORT
/// 13: ee             out  dx, al
/// 14: f4             hlt
/// ```
pub fn guest_code() -> [u8; 15] {
    let [lo, hi] = EXIT_PORT.to_le_bytes();
    [
        0x85, 0xc9, 0x74, 0x05, 0xee, 0xff, 0xc9, 0x75, 0xfb, 0x66, 0xba, lo, hi, 0xee, 0xf4,
    ]
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

/// Boots the floor VM with `ram_size` bytes of RAM, runs `iterations` loop exits and exits the
/// process with status 0 at the exit port. Returns only on failure.
pub fn run(ram_size: u64, iterations: u32) -> Result<std::convert::Infallible, FloorError> {
    let code = guest_code();
    let code_len = u64::try_from(code.len()).unwrap_or(u64::MAX);
    let layout = MemoryLayout::new(ram_size, CODE_BASE..CODE_BASE.saturating_add(code_len))?;
    let mem = GuestMemory::new(layout.ram_base(), ram_size)?;
    mem.write(GuestPhysAddr::new(CODE_BASE), &code)?;
    // The test guests carry no ABI tag, so uhyve gives them the legacy map (the first GiB).
    let pml4 = build_identity_map(&mem, &layout, layout.kernel_image().end, true)?;
    write_gdt(&mem, layout.gdt())?;
    let registers = initial_registers(
        CODE_BASE,
        layout.gdt(),
        pml4,
        layout.boot_info(),
        layout.boot_stack_bottom(),
        0,
    );

    let kvm = Kvm::new().map_err(kvm_error("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: mem.base().as_u64(),
        memory_size: mem.size(),
        userspace_addr: mem.host_address() as u64,
    };
    // SAFETY: the region is exactly the mapping `mem` owns, and `mem` lives until the process
    // exits (this function never returns normally; on error the VM is dropped before `mem`).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))?;
    vm.create_irq_chip()
        .map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_error("KVM_CREATE_VCPU"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
    sregs.cr0 = registers.cr0;
    sregs.cr3 = registers.cr3;
    sregs.cr4 = registers.cr4;
    sregs.efer = registers.efer;
    sregs.gdt.base = registers.gdt_base;
    sregs.gdt.limit = registers.gdt_limit;
    let data = kvm_segment_from(&registers.data);
    sregs.cs = kvm_segment_from(&registers.code);
    (sregs.ds, sregs.es, sregs.ss) = (data, data, data);
    vcpu.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))?;

    let mut regs = vcpu.get_regs().map_err(kvm_error("KVM_GET_REGS"))?;
    regs.rip = registers.rip;
    regs.rsp = registers.rsp;
    regs.rflags = registers.rflags;
    regs.rcx = u64::from(iterations);
    regs.rdx = u64::from(LOOP_PORT);
    vcpu.set_regs(&regs).map_err(kvm_error("KVM_SET_REGS"))?;

    loop {
        match vcpu.run().map_err(kvm_error("KVM_RUN"))? {
            VcpuExit::IoOut(EXIT_PORT, _) => std::process::exit(0),
            VcpuExit::IoOut(LOOP_PORT, _) => {}
            other => return Err(FloorError::UnexpectedExit(format!("{other:?}"))),
        }
    }
}
