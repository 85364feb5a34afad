/*
 * The part of the runtime only v2/v3 guests have (see ../uhyve_v2.h): mapping all of RAM before
 * main, the device-tree lookup and the application arguments from /chosen/bootargs (v2+ has no
 * Cmdsize/Cmdval).
 *
 * uhyve's boot page tables for a kernel >= 0.10 identity-map RAM only from its start up to the
 * 2 MiB page holding the image end (hermit-abi.md section 3.5): a Hermit kernel builds its own map
 * of the rest. The guests need the rest too (buffers at the end of RAM, the memory test), so
 * uhyve_v2_start fills one page directory per GiB of RAM with 2 MiB pages, hooks them into the
 * PDPT uhyve made (RAM lies in [4 GiB, 64 GiB), all below PML4 entry 0), and reloads CR3. The new
 * directories repeat uhyve's translations for what it had mapped, so replacing its entries is
 * harmless even for the code doing it.
 *
 * The aarch64 v2/v3 guests (../../aarch64/v2/) link this file as well, for everything but that
 * mapping: theirs is uhyve_v2_start in ../../aarch64/v2/rt/runtime_v2_a64.c.
 */
#include "../uhyve_v2.h"

#if !defined(__aarch64__)
#define PAGE_2M (1ull << 21)
#define GIB (1ull << 30)
#define PTE_PRESENT 0x1ull
#define PTE_WRITABLE 0x2ull
#define PTE_HUGE 0x80ull
#define PTE_ADDRESS 0x000ffffffffff000ull
/* v2/v3 RAM lies in [4 GiB, 64 GiB). */
#define MAX_RAM_GIB 60

static uint64_t ram_directories[MAX_RAM_GIB][512] __attribute__((aligned(4096)));
#endif /* !__aarch64__ */

uint64_t v2_ram_start(void)
{
	return uhyve_boot_info->phys_addr_start;
}

uint64_t v2_ram_end(void)
{
	return uhyve_boot_info->phys_addr_end;
}

#if !defined(__aarch64__)
static __attribute__((noreturn)) void start_failed(const char *why)
{
	put_str("v2 runtime: ");
	put_str(why);
	put_str("\n");
	hc_exit(99);
}

void uhyve_v2_start(void)
{
	uint64_t start = v2_ram_start() & ~(GIB - 1);
	uint64_t end = v2_ram_end();
	if (v2_ram_start() < (4ull << 30) || end <= v2_ram_start() || end > (64ull << 30))
		start_failed("RAM is not where v2/v3 guests expect it");
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & PTE_ADDRESS);
	if (!(pml4[0] & PTE_PRESENT))
		start_failed("uhyve's PML4 has no entry for the RAM");
	uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & PTE_ADDRESS);
	size_t n = 0;
	for (uint64_t gib = start; gib < end; gib += GIB, n++) {
		uint64_t *pd = ram_directories[n];
		for (size_t i = 0; i < 512; i++) {
			uint64_t page = gib + i * PAGE_2M;
			pd[i] = page < end ? page | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE : 0;
		}
		pdpt[(gib >> 30) & 511] = gpa(pd) | PTE_PRESENT | PTE_WRITABLE;
	}
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}
#endif /* !__aarch64__ */

/* ---- Arguments ---- */

#define MAX_ARGS 64

/*
 * Splits `line` into words the way uhyve quotes them (src/boot.rs): blanks separate words, '...'
 * is literal, a backslash outside quotes escapes the next character, "..." takes \" \\ \$ \`
 * literally. The words go to `out`, one NUL-terminated string after the other (at most len + 1
 * bytes: no word is longer than its source, and a separator or the end follows each); returns
 * their number.
 */
static int split_words(const char *line, size_t len, char *out)
{
	int count = 0;
	size_t i = 0;
	for (;;) {
		while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n'))
			i++;
		if (i >= len || line[i] == 0)
			return count;
		count++;
		while (i < len && line[i] != 0 && line[i] != ' ' && line[i] != '\t' && line[i] != '\n') {
			char c = line[i++];
			if (c == '\'') {
				while (i < len && line[i] != '\'')
					*out++ = line[i++];
				i++;
			} else if (c == '"') {
				while (i < len && line[i] != '"') {
					if (line[i] == '\\' && i + 1 < len &&
					    (line[i + 1] == '"' || line[i + 1] == '\\' || line[i + 1] == '$' ||
					     line[i + 1] == '`'))
						i++;
					*out++ = line[i++];
				}
				i++;
			} else if (c == '\\' && i < len) {
				*out++ = line[i++];
			} else {
				*out++ = c;
			}
		}
		*out++ = 0;
	}
}

int uhyve_v2_args(char ***argv)
{
	static char *args[MAX_ARGS + 1];
	uint32_t len = 0;
	const char *bootargs = fdt_property("chosen", "bootargs", &len);
	args[0] = NULL;
	*argv = args;
	if (bootargs == NULL)
		return 0;
	char *words = arena_alloc((size_t)len + 1);
	if (words == NULL)
		return 0;
	int count = split_words(bootargs, len, words);
	int argc = 0;
	int after_separator = 0;
	for (const char *word = words; count > 0; count--, word += strlen(word) + 1) {
		if (after_separator && argc < MAX_ARGS)
			args[argc++] = (char *)word;
		else if (strcmp(word, "--") == 0)
			after_separator = 1;
	}
	args[argc] = NULL;
	return argc;
}

void put_escaped(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			hc_putc((char)c);
		} else {
			hc_putc('\\');
			hc_putc('x');
			hc_putc("0123456789abcdef"[c >> 4]);
			hc_putc("0123456789abcdef"[c & 0xf]);
		}
	}
}
