/*
 * The aarch64 part of the v2/v3 guests' runtime: uhyve_v2_start, which runs before main and maps
 * all of RAM. Everything else of the v2 runtime (RAM range, arguments from /chosen/bootargs,
 * put_escaped) is the shared ../../../v2/rt/runtime_v2.c, compiled for aarch64.
 *
 * uhyve's boot tables (src/arch/aarch64/paging.rs) identity-map [RAM base, image end) with 4 KiB
 * pages and virtual 0 .. 16 KiB on the hypercall window; nothing else. The guests need the rest of
 * RAM too (buffers and paths at its very end, v3_memory), so uhyve_v2_start completes the identity
 * map up to the end of RAM: each 2 MiB of RAM whose level-2 entry is empty gets a 2 MiB block, and
 * the 2 MiB that uhyve gave a level-3 table (the one holding the image end) gets its missing pages.
 * Level-2 tables for the GiB beyond the first come from this file's bss. Entries uhyve wrote are
 * left as they are, so the code doing this never loses its own mapping. Stops the guest with
 * status 99 (and a line saying why) if the tables are not what it expects.
 */
#include "../../../v2/uhyve_v2.h"

/* Stage-1 descriptor bits (4 KiB granule). */
#define DESC_VALID 0x1ull
#define DESC_TABLE 0x2ull /* table at levels 0-2, page at level 3; clear: a block */
#define DESC_ADDRESS 0x0000fffffffff000ull
/* Normal write-back memory (AttrIndx 4 of uhyve's MAIR_EL1), inner shareable, access flag. */
#define DESC_NORMAL ((4ull << 2) | (3ull << 8) | (1ull << 10))

#define PAGE 0x1000ull
#define BLOCK (1ull << 21)
/* v2/v3 RAM lies in [4 GiB, 64 GiB). */
#define MAX_RAM_GIB 60

static uint64_t level2_tables[MAX_RAM_GIB][512] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void start_failed(const char *why)
{
	put_str("v2 runtime: ");
	put_str(why);
	put_str("\n");
	hc_exit(99);
}

static uint64_t *table_at(uint64_t descriptor)
{
	/* Every table lies in identity-mapped RAM: uhyve's below the image, the spare ones in it. */
	return (uint64_t *)(uintptr_t)(descriptor & DESC_ADDRESS);
}

void uhyve_v2_start(void)
{
	uint64_t start = v2_ram_start(), end = v2_ram_end();
	if (start != UHYVE_A64_RAM_BASE || end <= start || end > (64ull << 30) ||
	    ((start | end) & (BLOCK - 1)) != 0)
		start_failed("RAM is not where v2/v3 guests expect it");
	uint64_t *level0 = table_at(uhyve_a64_read_sysreg(ttbr0_el1));
	if ((level0[0] & (DESC_VALID | DESC_TABLE)) != (DESC_VALID | DESC_TABLE))
		start_failed("uhyve's level-0 table has no table for the RAM");
	uint64_t *level1 = table_at(level0[0]);
	size_t spare = 0;
	for (uint64_t chunk = start; chunk < end; chunk += BLOCK) {
		volatile uint64_t *l1 = &level1[(chunk >> 30) & 511];
		if ((*l1 & DESC_VALID) == 0) {
			if (spare == MAX_RAM_GIB)
				start_failed("out of level-2 tables");
			*l1 = gpa(level2_tables[spare++]) | DESC_VALID | DESC_TABLE;
		} else if ((*l1 & DESC_TABLE) == 0) {
			start_failed("uhyve's tables hold a 1 GiB block");
		}
		volatile uint64_t *l2 = &table_at(*l1)[(chunk >> 21) & 511];
		if ((*l2 & DESC_VALID) == 0) {
			*l2 = chunk | DESC_VALID | DESC_NORMAL;
			continue;
		}
		if ((*l2 & DESC_TABLE) == 0)
			start_failed("uhyve's tables hold a 2 MiB block");
		volatile uint64_t *level3 = table_at(*l2);
		for (uint64_t i = 0; i < 512; i++)
			if ((level3[i] & DESC_VALID) == 0)
				level3[i] = (chunk + i * PAGE) | DESC_VALID | DESC_TABLE | DESC_NORMAL;
	}
	/* Make the new entries visible to the table walker, then drop stale (negative) entries. */
	__asm__ volatile("dsb ishst\n\ttlbi vmalle1\n\tdsb ish\n\tisb" : : : "memory");
}
