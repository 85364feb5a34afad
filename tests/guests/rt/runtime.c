/*
 * The tiny runtime linked into every test guest: the C side of the entry point, string helpers,
 * console output through hc_putc, a bump allocator, argv/envp retrieval via Cmdsize/Cmdval, and
 * device-tree property lookup.
 * See uhyve.h for the interface. The v2/v3 guests (compiled with UHYVE_V2) link it too, with
 * their own hypercall wrappers (v2/uhyve_v2.h), without Cmdsize/Cmdval, and with
 * v2/rt/runtime_v2.c, whose uhyve_v2_start runs before main. The aarch64 guests of aarch64/ link
 * it as well, compiled for aarch64 (uhyve.h then takes the transport from aarch64/uhyve_a64.h),
 * with aarch64/rt/start.S in place of rt/start.S.
 */
#ifdef UHYVE_V2
#include "../v2/uhyve_v2.h"
#else
#include "../uhyve.h"
#endif

const struct uhyve_boot_info *uhyve_boot_info;
int check_failures;

/* Called by _start on cpu 0 with the top of the boot stack already in RSP. */
__attribute__((noreturn, used)) void uhyve_rt_start(const struct uhyve_boot_info *boot_info,
						    uint64_t cpu_id)
{
	(void)cpu_id;
	uhyve_boot_info = boot_info;
#ifdef UHYVE_V2
	uhyve_v2_start();
#endif
	hc_exit(main());
}

/*
 * The mem* functions are written as plain byte loops; the build passes -fno-builtin and
 * -fno-tree-loop-distribute-patterns so gcc does not turn these loops back into calls to themselves.
 */
void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;
	for (size_t i = 0; i < n; i++)
		d[i] = (unsigned char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	if (d < s) {
		for (size_t i = 0; i < n; i++)
			d[i] = s[i];
	} else {
		for (size_t i = n; i > 0; i--)
			d[i - 1] = s[i - 1];
	}
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;
	while (n < max && s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return (unsigned char)*a - (unsigned char)*b;
}

void put_bytes(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		hc_putc(s[i]);
}

void put_str(const char *s)
{
	put_bytes(s, strlen(s));
}

void put_dec(int64_t v)
{
	char buf[24];
	size_t i = sizeof(buf);
	/* Work on the negative magnitude so INT64_MIN needs no special case. */
	int negative = v < 0;
	int64_t n = negative ? v : -v;
	do {
		buf[--i] = (char)('0' - (n % 10));
		n /= 10;
	} while (n != 0);
	if (negative)
		buf[--i] = '-';
	put_bytes(buf + i, sizeof(buf) - i);
}

void put_hex(uint64_t v)
{
	char buf[18];
	size_t i = sizeof(buf);
	do {
		buf[--i] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v != 0);
	buf[--i] = 'x';
	buf[--i] = '0';
	put_bytes(buf + i, sizeof(buf) - i);
}

void check(const char *name, int ok, int64_t got)
{
	put_str(name);
	if (ok) {
		put_str(": ok\n");
	} else {
		check_failures++;
		put_str(": FAIL (got ");
		put_dec(got);
		put_str(")\n");
	}
}

int parse_int(const char *s, int64_t *out)
{
	int negative = 0;
	int64_t v = 0;
	if (*s == '-' || *s == '+') {
		negative = *s == '-';
		s++;
	}
	if (*s == 0)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		int digit = *s - '0';
		/* Accumulate negatively; stop before overflowing. */
		if (v < (INT64_MIN + digit) / 10)
			return -1;
		v = v * 10 - digit;
	}
	if (!negative) {
		if (v == INT64_MIN)
			return -1;
		v = -v;
	}
	*out = v;
	return 0;
}

static unsigned char arena[256 * 1024] __attribute__((aligned(16)));
static size_t arena_used;

void *arena_alloc(size_t n)
{
	size_t rounded = (n + 15) & ~(size_t)15;
	if (rounded < n || rounded > sizeof(arena) - arena_used)
		return NULL;
	void *p = &arena[arena_used];
	arena_used += rounded;
	return p;
}

#ifndef UHYVE_V2
/* Bytes after every Cmdval buffer that the host must not touch. */
#define GUARD_LEN 8
#define GUARD_BYTE 0xA5
/* Fill value of the buffers before Cmdval, so an unwritten buffer is visibly unterminated. */
#define FILL_BYTE 0xFF

/* Allocates `count` buffers of the announced `sizes` (plus guard bytes) and a NULL-terminated
 * array of their addresses. Returns NULL if a size is out of range or the arena is full. */
static char **alloc_items(int count, const int32_t *sizes)
{
	char **items = arena_alloc(((size_t)count + 1) * sizeof(char *));
	if (items == NULL)
		return NULL;
	for (int i = 0; i < count; i++) {
		if (sizes[i] < 1 || sizes[i] > 65536)
			return NULL;
		char *buf = arena_alloc((size_t)sizes[i] + GUARD_LEN);
		if (buf == NULL)
			return NULL;
		memset(buf, FILL_BYTE, (size_t)sizes[i]);
		memset(buf + sizes[i], GUARD_BYTE, GUARD_LEN);
		items[i] = buf;
	}
	items[count] = NULL;
	return items;
}

/* Counts items whose guard bytes were touched or which lack a NUL exactly at the announced end. */
static int count_violations(int count, char **items, const int32_t *sizes)
{
	int bad = 0;
	for (int i = 0; i < count; i++) {
		size_t size = (size_t)sizes[i];
		int guard_ok = 1;
		for (size_t g = 0; g < GUARD_LEN; g++)
			if ((unsigned char)items[i][size + g] != GUARD_BYTE)
				guard_ok = 0;
		if (!guard_ok || strnlen(items[i], size) != size - 1) {
			bad++;
			/* Terminate it so the guest can still print it safely. */
			items[i][size - 1] = 0;
		}
	}
	return bad;
}

int uhyve_get_args(struct uhyve_args *out)
{
	static struct CmdsizeParams sizes;
	memset(&sizes, 0, sizeof(sizes));
	sizes.argc = -1;
	sizes.envc = -1;
	hc_cmdsize(&sizes);
	if (sizes.argc < 0 || sizes.argc > UHYVE_MAX_ARGC_ENVC || sizes.envc < 0 ||
	    sizes.envc > UHYVE_MAX_ARGC_ENVC)
		return -1;

	/* Copy the sizes out of the packed struct into aligned arrays. */
	static int32_t argsz[UHYVE_MAX_ARGC_ENVC], envsz[UHYVE_MAX_ARGC_ENVC];
	memcpy(argsz, (const void *)sizes.argsz, sizeof(argsz));
	memcpy(envsz, (const void *)sizes.envsz, sizeof(envsz));

	char **argv = alloc_items(sizes.argc, argsz);
	char **envp = alloc_items(sizes.envc, envsz);
	if (argv == NULL || envp == NULL)
		return -1;

	struct CmdvalParams val = {.argv = (uintptr_t)argv, .envp = (uintptr_t)envp};
	hc_cmdval(&val);

	out->argc = sizes.argc;
	out->argv = argv;
	out->envc = sizes.envc;
	out->envp = envp;
	out->violations = count_violations(sizes.argc, argv, argsz) +
			  count_violations(sizes.envc, envp, envsz);
	return 0;
}
#endif /* !UHYVE_V2 */

/* ---- Device tree ---- */

#define FDT_MAGIC 0xd00dfeedu
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4

uint32_t fdt_be32(const void *at)
{
	const uint8_t *p = at;
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

uint64_t fdt_be64(const void *at)
{
	const uint8_t *p = at;
	return ((uint64_t)fdt_be32(p) << 32) | fdt_be32(p + 4);
}

static size_t align4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

/* Whether the node name `name` is `node` or `node@unit`. */
static int node_matches(const char *name, const char *node)
{
	size_t n = strlen(node);
	return memcmp(name, node, n) == 0 && (name[n] == 0 || name[n] == '@');
}

const char *fdt_property(const char *node, const char *prop, uint32_t *len)
{
	const uint8_t *fdt = (const uint8_t *)(uintptr_t)uhyve_boot_info->device_tree;
	if (fdt == NULL || fdt_be32(fdt) != FDT_MAGIC)
		return NULL;
	const uint8_t *p = fdt + fdt_be32(fdt + 8);
	const char *strings = (const char *)fdt + fdt_be32(fdt + 12);
	int depth = 0, in_node = 0;
	for (;;) {
		uint32_t token = fdt_be32(p);
		p += 4;
		if (token == FDT_BEGIN_NODE) {
			const char *name = (const char *)p;
			depth++;
			in_node = depth == 2 && node_matches(name, node);
			p += align4(strlen(name) + 1);
		} else if (token == FDT_END_NODE) {
			depth--;
			in_node = 0;
		} else if (token == FDT_PROP) {
			uint32_t size = fdt_be32(p), name_offset = fdt_be32(p + 4);
			const char *value = (const char *)p + 8;
			if (in_node && strcmp(strings + name_offset, prop) == 0) {
				*len = size;
				return value;
			}
			p += 8 + align4(size);
		} else if (token != FDT_NOP) {
			return NULL;
		}
	}
}
