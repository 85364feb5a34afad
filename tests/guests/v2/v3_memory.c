/*
 * v3_memory: a v3 guest with more than 3 GiB of RAM (the test runs it with -m 8G), which only
 * v2/v3 guests can have: their RAM starts at 4 GiB, above the 32-bit hole. Argument: the guest
 * path of a mapped directory (MNT).
 *
 *   RAM range     boot info phys_addr_start is 4 GiB, phys_addr_end - start is the size the
 *                 device tree's /memory reg announces, at least 3.5 GiB; printed for the test;
 *                 the boot info's image start is the link address (4 MiB into RAM)
 *   memory        the runtime mapped all of RAM (2 MiB pages, rt/runtime_v2.c); a distinct 64-bit
 *                 value is written at every 256 MiB of RAM from offset 3 GiB - 8, across the
 *                 guest-physical 8 GiB boundary, and into the last 16 bytes of RAM, then all are
 *                 read back (distinct host pages: no aliasing, nothing lost)
 *   hypercalls    with buffers high in RAM: FileWrite of MNT/high.txt from the last 16 bytes of
 *                 RAM, FileRead back to 512 MiB - 12345 before the end of RAM (3 GiB or more
 *                 into it), SerialWriteBuffer of the last bytes of RAM, FileStat into the last
 *                 120 bytes of RAM, Mkdir of MNT/high-dir whose path ends with its NUL in the
 *                 last byte of RAM
 * Ends with "v3_memory: all ok" and status 0 if every check passed.
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(3);

#define GIB (1ull << 30)
#define MIB (1ull << 20)

static volatile uint64_t *word(uint64_t address)
{
	return (volatile uint64_t *)(uintptr_t)address;
}

/* The value stored at `address`: distinct for every address. */
static uint64_t pattern(uint64_t address)
{
	return address ^ 0x5a5a0000a5a5ull;
}

static uint64_t targets[64];
static size_t n_targets;

static void memory(uint64_t start, uint64_t end)
{
	for (uint64_t a = start + 3 * GIB - 8; a + 8 <= end - 16 && n_targets < 60; a += 256 * MIB)
		targets[n_targets++] = a;
	if (8 * GIB + 8 <= end - 16) {
		targets[n_targets++] = 8 * GIB - 8;
		targets[n_targets++] = 8 * GIB;
	}
	targets[n_targets++] = end - 16;
	targets[n_targets++] = end - 8;
	for (size_t i = 0; i < n_targets; i++)
		*word(targets[i]) = pattern(targets[i]);
	int all = 1;
	for (size_t i = 0; i < n_targets; i++) {
		uint64_t got = *word(targets[i]);
		if (got != pattern(targets[i])) {
			all = 0;
			put_str("mismatch at ");
			put_hex(targets[i]);
			put_str("\n");
		}
	}
	put_str("touched ");
	put_dec((int64_t)n_targets);
	put_str(" words, the highest at ");
	put_hex(end - 8);
	put_str("\n");
	check("memory above 3 GiB reads back", all, (int64_t)n_targets);
}

static void hypercalls(const char *mnt, uint64_t end)
{
	static char path[512];
	size_t n = strlen(mnt);
	memcpy(path, mnt, n);
	memcpy(path + n, "/high.txt", sizeof("/high.txt"));

	char *last = (char *)(uintptr_t)(end - 16);
	memcpy(last, "0123456789abcdef", 16);
	int fd = hc_open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
	check("create high.txt", fd > 2, fd);
	int64_t ret = hc_write(fd, last, 16);
	check("write from the last 16 bytes of RAM", ret == 16, ret);
	ret = hc_lseek(fd, 0, SEEK_SET);
	/* At least 3 GiB into RAM, as RAM has 3.5 GiB at least. */
	char *high = (char *)(uintptr_t)(end - 512 * MIB + 12345);
	memset(high, 0, 16);
	ret = hc_read(fd, high, 16);
	check("read to 512 MiB before the end of RAM",
	      ret == 16 && memcmp(high, "0123456789abcdef", 16) == 0, ret);
	hc_close(fd);

	static const char tail[] = "serial from the end of RAM\n";
	char *t = (char *)(uintptr_t)(end - (sizeof(tail) - 1));
	memcpy(t, tail, sizeof(tail) - 1);
	hc_write_buffer(t, sizeof(tail) - 1);

	struct FileAttr *attr = (struct FileAttr *)(uintptr_t)(end - sizeof(struct FileAttr));
	memset(attr, 0, sizeof(*attr));
	struct StatusResult st = hc_stat(path, STAT_FOLLOW, attr);
	check("stat into the last 120 bytes of RAM", status_ok(st) && attr->st_size == 16,
	      status_value(st));

	static const char dir[] = "/high-dir";
	char *p = (char *)(uintptr_t)(end - (n + sizeof(dir)));
	memcpy(p, mnt, n);
	memcpy(p + n, dir, sizeof(dir));
	st = hc_mkdir(p);
	check("mkdir with a path at the end of RAM", status_ok(st), status_value(st));
}

int main(void)
{
	char **argv;
	if (uhyve_v2_args(&argv) != 1) {
		put_str("usage: v3_memory MOUNT\n");
		return 100;
	}
	uint64_t start = v2_ram_start(), end = v2_ram_end();
	put_str("ram: ");
	put_hex(start);
	put_str("..");
	put_hex(end);
	put_str("\n");
	check("RAM starts at 4 GiB", start == 4 * GIB, (int64_t)start);
	uint64_t image = uhyve_boot_info->kernel_image_addr_start;
	check("image at its link address", image == start + 4 * MIB, (int64_t)image);
	uint32_t len = 0;
	const char *reg = fdt_property("memory", "reg", &len);
	check("device tree /memory reg", reg != NULL && len == 16, len);
	if (reg != NULL && len == 16) {
		check("device tree RAM start", fdt_be64(reg) == start, (int64_t)fdt_be64(reg));
		check("device tree RAM size", fdt_be64(reg + 8) == end - start, (int64_t)fdt_be64(reg + 8));
	}
	if (end - start < 3 * GIB + 512 * MIB) {
		put_str("run me with more than 3.5 GiB of RAM\n");
		return 1;
	}
	memory(start, end);
	hypercalls(argv[0], end);
	if (check_failures == 0)
		put_str("v3_memory: all ok\n");
	return check_failures != 0;
}
