/*
 * The aarch64-only part of the test guests' runtime: the exception report that the vectors of
 * rt/start.S call, and uhyve_a64_map_page, which adds a page to uhyve's boot tables (they map
 * nothing but the image and the window, so a guest that wants to touch other RAM, or an address
 * without RAM, maps it first). Everything else (string helpers, console output, check(), argv/envp, device
 * tree) is the shared ../../rt/runtime.c, compiled for aarch64 with the transport of
 * ../uhyve_a64.h.
 *
 * The report is one line on the console:
 *   "exception: <kind> from <source>: esr <hex> elr <hex> far <hex>"
 * followed by "stopping at <hex>", the address of the store in rt/start.S with which the guest
 * then makes uhyve stop the VM.
 */
#include "../../uhyve.h"

void uhyve_rt_exception(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far);

/* Called by uhyve_rt_trap (rt/start.S) with the MMU on, on the trap stack. */
void uhyve_rt_exception(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far)
{
	/* The four vectors of each group, and the four groups (Arm ARM D1.3.1). */
	static const char *const kinds[] = {"synchronous", "IRQ", "FIQ", "SError"};
	static const char *const sources[] = {"current EL with SP_EL0", "current EL with SP_ELx",
					      "lower EL (AArch64)", "lower EL (AArch32)"};
	put_str("exception: ");
	put_str(kinds[vector & 3]);
	put_str(" from ");
	put_str(sources[(vector >> 2) & 3]);
	put_str(": esr ");
	put_hex(esr);
	put_str(" elr ");
	put_hex(elr);
	put_str(" far ");
	put_hex(far);
	put_str("\nstopping at ");
	put_hex((uint64_t)(uintptr_t)uhyve_rt_stop);
	put_str("\n");
}

/* Stage-1 descriptor bits (4 KiB granule). */
#define DESC_VALID 0x1ull
#define DESC_TABLE 0x2ull /* table at levels 0-2, page at level 3 */
#define DESC_ADDRESS 0x0000fffffffff000ull

/* Tables for the levels uhyve's boot tables lack: one per level below the root suffices for one
 * page, and the guests map at most two. Zero, like all bss. */
#define SPARE_TABLES 6
static uint64_t spare_tables[SPARE_TABLES][512] __attribute__((aligned(4096)));
static int spare_used;

int uhyve_a64_map_page(uint64_t address, uint64_t attributes)
{
	/* Every table uhyve built lies in the identity-mapped RAM below the image, every spare one
	 * inside the image, so a table's physical address is its virtual one. */
	uint64_t *table = (uint64_t *)(uintptr_t)(uhyve_a64_read_sysreg(ttbr0_el1) & DESC_ADDRESS);
	for (int level = 0; level < 3; level++) {
		unsigned index = (unsigned)(address >> (39 - 9 * level)) & 511;
		volatile uint64_t *entry = &table[index];
		if ((*entry & DESC_VALID) == 0) {
			if (spare_used == SPARE_TABLES)
				return -1;
			*entry = (uint64_t)(uintptr_t)spare_tables[spare_used++] | DESC_VALID | DESC_TABLE;
		} else if ((*entry & DESC_TABLE) == 0) {
			/* A block: uhyve builds none. */
			return -1;
		}
		table = (uint64_t *)(uintptr_t)(*entry & DESC_ADDRESS);
	}
	volatile uint64_t *page = &table[(address >> 12) & 511];
	*page = (address & DESC_ADDRESS) | DESC_VALID | DESC_TABLE | attributes;
	/* Make the new entries visible to the table walker, then drop stale (negative) entries. */
	__asm__ volatile("dsb ishst\n\ttlbi vmalle1\n\tdsb ish\n\tisb" : : : "memory");
	return 0;
}
