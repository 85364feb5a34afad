/*
 * bench_touch: the host-memory benchmark's guest (benches/uhyve_bench.rs).
 *
 *   bench_touch <kib>    writes one byte per 4 KiB page of the `kib` KiB starting at 1 GiB
 *
 * uhyve's boot map covers only the first GiB for these guests, so the guest first maps the second
 * GiB itself (2 MiB pages, in a page directory of its own hooked into the boot PDPT) unless it is
 * mapped already. RAM must reach 1 GiB + `kib` KiB (run it with -m 3G). Exits 0; 2 if RAM is too
 * small or the second GiB is too small for `kib`; 100 on bad usage.
 */
#include "uhyve.h"

#define GIB (1ULL << 30)
#define PAGE 4096ULL
#define LARGE_PAGE (2ULL << 20)
#define PTE_PRESENT_WRITABLE 0x3ULL
#define PTE_HUGE 0x80ULL
#define PTE_ADDRESS_MASK 0x000ffffffffff000ULL

static uint64_t second_gib_pd[512] __attribute__((aligned(4096)));

/* Identity-maps [1 GiB, 2 GiB) through PDPT entry 1 if the boot map left it empty. */
static void map_second_gib(void)
{
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	volatile uint64_t *pml4 = (volatile uint64_t *)(uintptr_t)(cr3 & PTE_ADDRESS_MASK);
	volatile uint64_t *pdpt = (volatile uint64_t *)(uintptr_t)(pml4[0] & PTE_ADDRESS_MASK);
	if (pdpt[1] & 1)
		return;
	for (uint64_t i = 0; i < 512; i++)
		second_gib_pd[i] = (GIB + i * LARGE_PAGE) | PTE_HUGE | PTE_PRESENT_WRITABLE;
	pdpt[1] = (uint64_t)(uintptr_t)second_gib_pd | PTE_PRESENT_WRITABLE;
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

int main(void)
{
	struct uhyve_args args;
	int64_t kib;
	if (uhyve_get_args(&args) != 0 || args.argc < 2 || parse_int(args.argv[1], &kib) != 0 ||
	    kib < 0) {
		put_str("usage: bench_touch <kib>\n");
		return 100;
	}
	uint64_t bytes = (uint64_t)kib * 1024;
	if (bytes > GIB || uhyve_boot_info->phys_addr_end < GIB + bytes)
		return 2;
	map_second_gib();
	for (uint64_t offset = 0; offset < bytes; offset += PAGE)
		*(volatile uint8_t *)(uintptr_t)(GIB + offset) = 1;
	return 0;
}
