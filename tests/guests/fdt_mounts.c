/*
 * fdt_mounts: a guest that announces itself as a Hermit 0.13.2 kernel (GNU ABI-tag note) speaking
 * uhyve interface 1 (UHYVEIF note), the generation that learns the mapped directories from the
 * device tree. It walks the FDT, prints every mount point of `/uhyve,mounts` and the content of
 * `<mount>/from-host.txt` read with the file hypercalls by full guest path (as such a kernel
 * sends it), and prints `/chosen/bootargs` (which must not carry a -mount for this generation).
 */
#include "uhyve.h"

/* The notes of a 0.13.2 kernel; guest.ld puts them into the PT_NOTE segment. */
struct note_abi_tag {
	uint32_t namesz, descsz, type;
	char name[4];
	uint32_t desc[4];
};
__attribute__((section(".note.ABI-tag"), used, aligned(4))) static const struct note_abi_tag abi_tag = {
	4, 16, 1, "GNU", {6, 0, 13, 2}};

struct note_interface {
	uint32_t namesz, descsz, type;
	char name[8];
	uint8_t desc[4];
};
__attribute__((section(".note.hermit.uhyve-interface-version"), used,
	       aligned(4))) static const struct note_interface interface_version = {
	8, 4, 0x5B00, "UHYVEIF", {0, 0, 0, 1}};

#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static size_t align4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

/* The value of property `prop` of the node `node` directly below the root, or NULL. */
static const char *fdt_property(const uint8_t *fdt, const char *node, const char *prop, uint32_t *len)
{
	if (be32(fdt) != 0xd00dfeedu)
		return 0;
	const uint8_t *p = fdt + be32(fdt + 8);
	const char *strings = (const char *)fdt + be32(fdt + 12);
	int depth = 0, in_node = 0;
	for (;;) {
		uint32_t token = be32(p);
		p += 4;
		if (token == FDT_BEGIN_NODE) {
			const char *name = (const char *)p;
			depth++;
			in_node = depth == 2 && strcmp(name, node) == 0;
			p += align4(strlen(name) + 1);
		} else if (token == FDT_END_NODE) {
			depth--;
			in_node = 0;
		} else if (token == FDT_PROP) {
			uint32_t size = be32(p), name_offset = be32(p + 4);
			const char *value = (const char *)p + 8;
			if (in_node && strcmp(strings + name_offset, prop) == 0) {
				*len = size;
				return value;
			}
			p += 8 + align4(size);
		} else if (token != FDT_NOP) {
			return 0;
		}
	}
}

static char path[256];
static char content[128];

int main(void)
{
	const uint8_t *fdt = (const uint8_t *)(uintptr_t)uhyve_boot_info->device_tree;
	uint32_t len = 0;
	const char *bootargs = fdt_property(fdt, "chosen", "bootargs", &len);
	put_str("bootargs: ");
	put_str(bootargs ? bootargs : "(none)");
	put_str("\n");
	const char *mounts = fdt_property(fdt, "uhyve,mounts", "mounts", &len);
	if (!mounts) {
		put_str("no /uhyve,mounts node\n");
		return 1;
	}
	for (uint32_t at = 0; at < len;) {
		const char *mount = mounts + at;
		size_t n = strnlen(mount, len - at);
		at += (uint32_t)n + 1;
		if (n + sizeof("/from-host.txt") > sizeof(path))
			return 2;
		memcpy(path, mount, n);
		memcpy(path + n, "/from-host.txt", sizeof("/from-host.txt"));
		put_str("mount ");
		put_str(mount);
		put_str(": ");
		int fd = hc_open(path, 0, 0);
		int64_t got = fd > 0 ? hc_read(fd, content, sizeof(content) - 1) : -1;
		if (got < 0) {
			put_str("cannot read ");
			put_str(path);
			put_str("\n");
			continue;
		}
		content[got] = 0;
		put_str(content);
		hc_close(fd);
	}
	(void)abi_tag;
	(void)interface_version;
	return 0;
}
