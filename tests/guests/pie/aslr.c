/*
 * aslr: a position-independent (ET_DYN) guest that uhyve's loader places and relocates. It poses
 * as a Hermit 0.13.2 kernel (uhyve interface 1), the generation whose RAM address-space layout
 * randomisation may move. Prints "load base 0x…" (the run-time address of its first byte, the
 * ELF header, which the linker script loads) and "RAM base 0x…" (from the boot info), and checks
 * that the boot info names the same image start, that a pointer stored in data (an
 * R_X86_64_RELATIVE relocation) was relocated to the run-time address, and that the kernel lies
 * 0x40000 above the RAM base. Exits 0 if every check passed, 1 otherwise. The words of its
 * arguments (/chosen/bootargs) add: "low" maps the first 2 MiB of guest-physical memory into its
 * page tables and checks that the MP-table search areas below 1 MiB read as zeros (RAM or, when
 * RAM was moved, uhyve's read-only low memory); "lowwrite" then also writes there; "crash" ends in
 * a triple fault (ud2 without an IDT), for the crash report.
 */
#include "../uhyve.h"

UHYVE_KERNEL_NOTES(13, 2, 1);

extern char _start[];
/* Defined by the linker: the first byte of the first PT_LOAD, which holds the ELF header. */
extern const char __ehdr_start[];

/* Right only after the loader applied this pointer's relocation. */
static const char *volatile stored_start = _start;

/* Whether `word` is one of the space-separated words of `text`. */
static int has_word(const char *text, const char *word)
{
	size_t n = strlen(word);
	for (const char *at = text; *at;) {
		while (*at == ' ')
			at++;
		size_t len = 0;
		while (at[len] && at[len] != ' ')
			len++;
		if (len == n && memcmp(at, word, n) == 0)
			return 1;
		at += len;
	}
	return 0;
}

/* A page directory for the first GiB, should the boot tables have none. */
static uint64_t low_pd[512] __attribute__((aligned(4096)));

/* Identity-maps guest-physical 0 .. 2 MiB with one 2 MiB page (the boot tables map only RAM). */
static void map_low_2mib(void)
{
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & ~0xfffULL);
	/* RAM lies below 512 GiB: PML4 entry 0 exists. */
	uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & 0x000ffffffffff000ULL);
	if (!(pdpt[0] & 1))
		pdpt[0] = (uint64_t)(uintptr_t)low_pd | 3;
	uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[0] & 0x000ffffffffff000ULL);
	if (!(pd[0] & 1))
		pd[0] = 0x83; /* present, writable, 2 MiB page at 0 */
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

/* Whether the 8-byte words of [start, end) all read as zero. */
static int reads_zero(uint64_t start, uint64_t end)
{
	uint64_t bits = 0;
	for (uint64_t at = start; at < end; at += 8)
		bits |= *(volatile uint64_t *)(uintptr_t)at;
	return bits == 0;
}

int main(void)
{
	uint64_t base = (uint64_t)(uintptr_t)__ehdr_start;
	uint64_t ram = uhyve_boot_info->phys_addr_start;
	put_str("load base ");
	put_hex(base);
	put_str("\nRAM base ");
	put_hex(ram);
	put_str("\n");
	check("boot info names the image start",
	      uhyve_boot_info->kernel_image_addr_start == base,
	      (int64_t)uhyve_boot_info->kernel_image_addr_start);
	check("stored pointer relocated", stored_start == _start, (int64_t)(uintptr_t)stored_start);
	check("kernel 0x40000 above RAM", base - ram == 0x40000, (int64_t)(base - ram));
	uint32_t len = 0;
	const char *bootargs = fdt_property("chosen", "bootargs", &len);
	if (!bootargs)
		bootargs = "";
	if (has_word(bootargs, "low") || has_word(bootargs, "lowwrite")) {
		map_low_2mib();
		if (ram >= 0x100000) {
			check("MP search area 0x9f000 reads zeros", reads_zero(0x9f000, 0xa0000), 0);
			check("MP search area 0xf0000 reads zeros", reads_zero(0xf0000, 0x100000), 0);
		} else {
			put_str("RAM starts at 0: low memory is RAM\n");
		}
	}
	if (has_word(bootargs, "lowwrite")) {
		put_str("writing to 0x9f000\n");
		*(volatile uint64_t *)(uintptr_t)0x9f000 = 0x5a5a;
		put_str("written\n");
	}
	if (has_word(bootargs, "crash")) {
		put_str("crashing\n");
		__asm__ volatile("ud2");
	}
	return check_failures ? 1 : 0;
}
