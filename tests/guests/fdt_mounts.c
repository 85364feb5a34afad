/*
 * fdt_mounts: a guest that announces itself as a Hermit 0.13.2 kernel (GNU ABI-tag note) speaking
 * uhyve interface 1 (UHYVEIF note), the generation that learns the mapped directories from the
 * device tree. It walks the FDT, prints every mount point of `/uhyve,mounts` and the content of
 * `<mount>/from-host.txt` read with the file hypercalls by full guest path (as such a kernel
 * sends it), and prints `/chosen/bootargs` (which must not carry a -mount for this generation).
 */
#include "uhyve.h"

UHYVE_KERNEL_NOTES(13, 2, 1);

static char path[256];
static char content[128];

int main(void)
{
	uint32_t len = 0;
	const char *bootargs = fdt_property("chosen", "bootargs", &len);
	put_str("bootargs: ");
	put_str(bootargs ? bootargs : "(none)");
	put_str("\n");
	const char *mounts = fdt_property("uhyve,mounts", "mounts", &len);
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
	return 0;
}
