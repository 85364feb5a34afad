/*
 * uhyve_a64.h: what the aarch64 test guests do differently from the x86_64 ones; ../uhyve.h
 * includes it when compiled for __aarch64__ (rt/start.S includes it for the constants alone).
 *
 * Boot (hermit-abi.md sections 1.5 and 7): vCPU 0 enters _start at EL1h with D, A, I and F masked
 * and the MMU on, with uhyve's boot tables in TTBR0_EL1: every 4 KiB page of [RAM base, image end)
 * is identity-mapped (Normal write-back), and virtual page 0 maps the first page of the hypercall
 * window at the RAM base (Normal non-cacheable). Nothing else is mapped, so a guest keeps all its
 * data inside its own image. X0 = boot info, X1 = cpu id, SP_EL1 = lowest address of the 32 KiB
 * boot stack below the image. The v1 images are linked at UHYVE_A64_LINK_BASE, so their RAM starts
 * at UHYVE_A64_RAM_BASE (a fixed image pins it: uhyve's ASLR moves relocatable images only).
 *
 * Hypercalls (v1): a plain 64-bit `str xN, [xM]` of the argument to the virtual address = port
 * number: the guest-physical address of the packed parameter struct (identity map: its pointer
 * value), or the byte itself for the Uart port. It must be exactly that form (immediate offset, no
 * writeback, no pair), the only form for which the CPU reports an instruction syndrome and so the
 * only one KVM can hand to uhyve.
 *
 * Secondary cpus start powered off and are started with PSCI CPU_ON (`hvc #0`, served by KVM) at
 * uhyve_a64_secondary_entry (rt/start.S) with the MMU off: they reach the hypercall window at its
 * physical address UHYVE_A64_RAM_BASE + port (uhyve_a64_phys_store).
 *
 * The v2/v3 guests of v2/ are compiled with UHYVE_V2 and use the same runtime (start.S,
 * runtime_a64.c), with ../v2/uhyve_v2.h for their hypercalls: their RAM, and so the hypercall
 * window, starts at 4 GiB, and their hypercall addresses (0x1010 ...) lie in the window's second
 * page, which uhyve maps at virtual 0x1000. v2/rt/runtime_v2_a64.c maps the rest of their RAM.
 */
#ifndef UHYVE_GUEST_A64_H
#define UHYVE_GUEST_A64_H

/* ---- Constants (also used by rt/start.S and rt/guest.ld) ---- */

#ifdef UHYVE_V2
/* The v2/v3 guests of v2/ (built with UHYVE_V2): their RAM starts at 4 GiB
 * (src/arch/aarch64/layout.rs, HIGH_RAM_BASE), with uhyve's boot structures at the same offsets
 * as for v1, and v2/rt/guest.ld links them 4 MiB into it, like the x86_64 v2/v3 guests. */
#define UHYVE_A64_RAM_BASE 0x100000000
#define UHYVE_A64_LINK_BASE 0x100400000
#else
/* First guest-physical address of v1 RAM (src/arch/aarch64/layout.rs, RAM_BASE). */
#define UHYVE_A64_RAM_BASE 0x10000000
/* Where rt/guest.ld links the image: 2 MiB into RAM, above uhyve's boot structures and stack. */
#define UHYVE_A64_LINK_BASE 0x10200000
#endif
/* Bytes of the boot stack uhyve reserves below the image. */
#define UHYVE_A64_BOOT_STACK_SIZE 0x8000
/* Secondary cpus with a stack of their own (cpu ids 1 … UHYVE_A64_MAX_CPUS - 1). */
#define UHYVE_A64_MAX_CPUS 4
#define UHYVE_A64_CPU_STACK_SHIFT 14
#define UHYVE_A64_CPU_STACK_SIZE (1 << UHYVE_A64_CPU_STACK_SHIFT)
/* Offset in the hypercall window's first page that the exception report stores to: no hypercall
 * lives there, so uhyve stops the VM and names that store. */
#define UHYVE_A64_STOP_OFFSET 0xff8

/* PSCI 0.2 function ids (SMC64 where the call takes addresses). */
#define PSCI_VERSION 0x84000000
#define PSCI_CPU_OFF 0x84000002
#define PSCI_CPU_ON 0xC4000003
#define PSCI_AFFINITY_INFO 0xC4000004
/* PSCI return codes and AFFINITY_INFO states. */
#define PSCI_SUCCESS 0
#define PSCI_NOT_SUPPORTED (-1)
#define PSCI_INVALID_PARAMETERS (-2)
#define PSCI_ALREADY_ON (-4)
#define PSCI_AFFINITY_ON 0
#define PSCI_AFFINITY_OFF 1
#define PSCI_AFFINITY_ON_PENDING 2

#ifndef __ASSEMBLER__

/* ---- Boot info (hermit-abi.md section 2.1, aarch64 layout, 128 bytes) ---- */
struct uhyve_boot_info {
	uint64_t phys_addr_start;
	uint64_t phys_addr_end;
	uint64_t serial_port_base;
	uint64_t device_tree;
	uint64_t kernel_image_addr_start;
	uint64_t kernel_image_addr_end;
	uint64_t tls_start;
	uint64_t tls_filesz;
	uint64_t tls_memsz;
	uint64_t tls_align;
	uint32_t platform;
	uint32_t pad1;
	uint8_t has_pci;
	uint8_t pad2[7];
	uint64_t num_cpus;
	uint32_t cpu_freq;
	/* i128 nanoseconds, little-endian, 4-byte aligned on aarch64. */
	uint8_t boot_time[16];
	uint32_t pad3;
};

_Static_assert(sizeof(struct uhyve_boot_info) == 128, "boot info size");
_Static_assert(offsetof(struct uhyve_boot_info, device_tree) == 24, "boot info device_tree");
_Static_assert(offsetof(struct uhyve_boot_info, platform) == 80, "boot info platform");
_Static_assert(offsetof(struct uhyve_boot_info, has_pci) == 88, "boot info has_pci");
_Static_assert(offsetof(struct uhyve_boot_info, num_cpus) == 96, "boot info num_cpus");
_Static_assert(offsetof(struct uhyve_boot_info, cpu_freq) == 104, "boot info cpu_freq");
_Static_assert(offsetof(struct uhyve_boot_info, boot_time) == 108, "boot info boot_time");

/* ---- Raw hypercalls ---- */

/* `str value, [address]`: the one store form whose syndrome KVM reports (see above). */
static inline void uhyve_a64_store(uint64_t address, uint64_t value)
{
	__asm__ volatile("str %x0, [%x1]" : : "r"(value), "r"(address) : "memory");
}

/* Issue the hypercall at `port` with the parameter struct `params` (MMU on: virtual page 0). */
static inline void uhyve_hypercall(uint16_t port, volatile void *params)
{
	uhyve_a64_store(port, (uint64_t)(uintptr_t)params);
}

/* The same store to the window's physical address, for a cpu running with the MMU off. */
static inline void uhyve_a64_phys_store(uint16_t port, uint64_t value)
{
	uhyve_a64_store(UHYVE_A64_RAM_BASE + (uint64_t)port, value);
}

/* Waits for an interrupt (interrupts stay masked): stops this cpu for good in a loop. */
static inline void uhyve_halt(void)
{
	__asm__ volatile("wfi" : : : "memory");
}

/* ---- PSCI (served by KVM itself) ---- */

/* `hvc #0` with SMCCC arguments; the result comes back in x0. x1-x3 are clobbered, and SMCCC 1.0
 * allows x4-x17 to be clobbered too. */
static inline int64_t psci_call(uint64_t function, uint64_t a1, uint64_t a2, uint64_t a3)
{
	register uint64_t x0 __asm__("x0") = function;
	register uint64_t x1 __asm__("x1") = a1;
	register uint64_t x2 __asm__("x2") = a2;
	register uint64_t x3 __asm__("x3") = a3;
	__asm__ volatile("hvc #0"
			 : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)
			 :
			 : "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14",
			   "x15", "x16", "x17", "memory");
	return (int64_t)x0;
}

/* ---- System registers ---- */

#define uhyve_a64_read_sysreg(name)                                      \
	({                                                               \
		uint64_t value_;                                         \
		__asm__ volatile("mrs %0, " #name : "=r"(value_));       \
		value_;                                                  \
	})

/* ---- Runtime (rt/start.S, rt/runtime_a64.c) ---- */

/* Where PSCI CPU_ON starts a secondary (physical = virtual: the image is identity-mapped). It sets
 * its stack by its MPIDR Aff0, calls uhyve_a64_secondary(context) and then switches itself off
 * with PSCI CPU_OFF. */
extern char uhyve_a64_secondary_entry[];

/* Runs on a secondary started at uhyve_a64_secondary_entry, MMU off, with x0 of CPU_ON (weak in
 * rt/start.S: by default it does nothing). Only uhyve_a64_phys_store reaches uhyve from there. */
void uhyve_a64_secondary(uint64_t context);

/* The store of the exception report that stops the VM (rt/start.S). */
extern char uhyve_rt_stop[];

/* Stage-1 page attributes for uhyve_a64_map_page: the access flag, never executable, and the
 * memory type (an index into uhyve's MAIR_EL1: 0 = Device-nGnRnE, 4 = Normal write-back). */
#define UHYVE_A64_PAGE_DEVICE ((1ull << 10) | (1ull << 53) | (1ull << 54) | (0ull << 2))
#define UHYVE_A64_PAGE_NORMAL ((1ull << 10) | (1ull << 53) | (1ull << 54) | (4ull << 2) | (3ull << 8))

/* Maps the 4 KiB page at `address` to the same physical address with `attributes` in the tables
 * TTBR0_EL1 points at, taking missing tables from the runtime's bss (rt/runtime_a64.c). Returns
 * 0, or -1 if a level holds a block or the spare tables ran out. */
int uhyve_a64_map_page(uint64_t address, uint64_t attributes);

#endif /* !__ASSEMBLER__ */

#endif
