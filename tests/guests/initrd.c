/*
 * initrd: a guest that announces itself as a Hermit 0.13.2 kernel (so uhyve identity-maps only up
 * to the end of what it loads) and reads the Hermit image archive uhyve hands it in the internal
 * mode: it finds `/chosen/linux,initrd-start` and `linux,initrd-end` in the device tree, checks
 * that the memory reservation block reserves exactly that range, that the range starts with a
 * ustar header, and walks the tar: prints every entry's name and size, the content of
 * `data/message.txt` and the last byte of `data/big.bin` (which lies far beyond the kernel). Exits
 * 0 when everything was found, 1 otherwise. Without an initrd it prints "no initrd" and exits 2.
 */
#include "uhyve.h"

UHYVE_KERNEL_NOTES(13, 2, 1);

/* A tar size field: octal digits, possibly space- or NUL-terminated. */
static uint64_t octal(const uint8_t *field, size_t n)
{
	uint64_t value = 0;
	for (size_t i = 0; i < n && field[i] >= '0' && field[i] <= '7'; i++)
		value = value * 8 + (uint64_t)(field[i] - '0');
	return value;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

int main(void)
{
	const uint8_t *fdt = (const uint8_t *)(uintptr_t)uhyve_boot_info->device_tree;
	if (fdt_be32(fdt) != 0xd00dfeedu) {
		put_str("bad device tree\n");
		return 1;
	}
	uint32_t len = 0;
	const char *start_prop = fdt_property("chosen", "linux,initrd-start", &len);
	if (!start_prop || len != 8) {
		put_str("no initrd\n");
		return 2;
	}
	const char *end_prop = fdt_property("chosen", "linux,initrd-end", &len);
	if (!end_prop || len != 8) {
		put_str("no initrd end\n");
		return 1;
	}
	uint64_t start = fdt_be64(start_prop), end = fdt_be64(end_prop);
	put_str("initrd: ");
	put_hex(start);
	put_str("..");
	put_hex(end);
	put_str("\n");
	check("initrd after the kernel image", start >= uhyve_boot_info->kernel_image_addr_end, (int64_t)start);
	check("initrd inside RAM", end > start && end <= uhyve_boot_info->phys_addr_end, (int64_t)end);
	check("initrd page aligned", (start & 0xfff) == 0, (int64_t)start);

	/* The memory reservation block: (address, size) pairs ending with a zero pair. */
	const uint8_t *reservation = fdt + fdt_be32(fdt + 16);
	int reserved = 0;
	for (; fdt_be64(reservation) || fdt_be64(reservation + 8); reservation += 16)
		reserved |= fdt_be64(reservation) == start && fdt_be64(reservation + 8) == end - start;
	check("initrd reserved", reserved, 0);

	const uint8_t *tar = (const uint8_t *)(uintptr_t)start;
	check("ustar magic", memcmp(tar + 257, "ustar", 5) == 0, tar[257]);
	int found_message = 0, found_big = 0, entries = 0;
	for (const uint8_t *header = tar; header + 512 <= (const uint8_t *)(uintptr_t)end;) {
		if (all_zero(header, 512))
			break;
		char name[101];
		memcpy(name, header, 100);
		name[100] = 0;
		uint64_t size = octal(header + 124, 12);
		const uint8_t *data = header + 512;
		entries++;
		put_str("entry ");
		put_str(name);
		put_str(" ");
		put_dec((int64_t)size);
		put_str("\n");
		if (strcmp(name, "data/message.txt") == 0 && size < 128) {
			put_str("message: ");
			put_bytes((const char *)data, size);
			found_message = 1;
		}
		if (strcmp(name, "data/big.bin") == 0 && size > 0) {
			put_str("big last byte: ");
			put_hex(data[size - 1]);
			put_str("\n");
			found_big = 1;
		}
		header = data + ((size + 511) & ~(uint64_t)511);
	}
	check("tar entries", entries > 0, entries);
	check("message found", found_message, 0);
	check("big file found", found_big, 0);
	return check_failures != 0;
}
