/*
 * uhyve.h: the hypercall interface v1 (x86_64, and aarch64 through aarch64/uhyve_a64.h) as seen
 * from a test guest, plus the tiny runtime every guest links against (rt/runtime.c, rt/start.S;
 * the aarch64 guests of aarch64/ use aarch64/rt/start.S instead).
 *
 * The packed parameter structs mirror interface/src/parameters.rs byte for byte (the sizes and
 * offsets are checked below with _Static_assert). A hypercall is `out dx, eax` with dx = port and
 * eax = the 32-bit guest-physical address of the struct; uhyve identity-maps the first GiB, so the
 * address of a stack or static variable is its guest-physical address. The Uart port takes the
 * byte itself.
 *
 * Guests are built general-purpose-registers only (-mgeneral-regs-only): the KVM on the project's
 * machines cannot emulate SSE/AVX instructions.
 *
 * On aarch64 (compiled for __aarch64__) the packed structs, constants, wrappers and runtime are
 * the same; what differs comes from aarch64/uhyve_a64.h: the boot-info layout, the transport (a
 * 64-bit `str` of the argument to the virtual address = port number, which uhyve's page tables map
 * to its hypercall window) and the way a cpu halts.
 *
 * The v2/v3 guests of tests/guests/v2/ include this header through v2/uhyve_v2.h and are compiled
 * with UHYVE_V2 defined: they share the constants, the v1 packed structs that v2 keeps (Open,
 * Close, Unlink), the boot info and the runtime, but not the v1 hypercall wrappers below (v2/v3
 * pass the argument in RDI, and have no Cmdsize/Cmdval); uhyve_v2.h supplies their own.
 */
#ifndef UHYVE_GUEST_H
#define UHYVE_GUEST_H

#include <stddef.h>
#include <stdint.h>

/* ---- Ports (interface/src/lib.rs, HypercallAddress) ---- */
#define UHYVE_PORT_FILE_WRITE 0x400
#define UHYVE_PORT_FILE_OPEN 0x440
#define UHYVE_PORT_FILE_CLOSE 0x480
#define UHYVE_PORT_FILE_READ 0x500
#define UHYVE_PORT_EXIT 0x540
#define UHYVE_PORT_FILE_LSEEK 0x580
#define UHYVE_PORT_NETWRITE 0x640
#define UHYVE_PORT_NETREAD 0x680
#define UHYVE_PORT_NETSTAT 0x700
#define UHYVE_PORT_CMDSIZE 0x740
#define UHYVE_PORT_CMDVAL 0x780
#define UHYVE_PORT_UART 0x800
#define UHYVE_PORT_FILE_UNLINK 0x840
#define UHYVE_PORT_SERIAL_WRITE_BUFFER 0x880

#define UHYVE_MAX_ARGC_ENVC 128

/* ---- Open flags (Hermit = Linux x86 numbering), whence, errno ---- */
#define O_RDONLY 00
#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_EXCL 0200
#define O_TRUNC 01000
#define O_APPEND 02000
#define O_DIRECT 040000
#define O_DIRECTORY 0200000

#define SEEK_SET 0
#define SEEK_CUR 1
#define SEEK_END 2

#define EPERM 1
#define ENOENT 2
#define EIO 5
#define EBADF 9
#define EFAULT 14
#define EEXIST 17
#define EISDIR 21
#define EINVAL 22
#define EROFS 30
#define EOVERFLOW 75

/* ---- Parameter structs (interface/src/parameters.rs) ---- */
struct __attribute__((packed)) CmdsizeParams {
	int32_t argc;
	int32_t argsz[UHYVE_MAX_ARGC_ENVC];
	int32_t envc;
	int32_t envsz[UHYVE_MAX_ARGC_ENVC];
};

struct __attribute__((packed)) CmdvalParams {
	uint64_t argv; /* GPA of an array of argc GPAs */
	uint64_t envp; /* GPA of an array of envc GPAs */
};

struct __attribute__((packed)) ExitParams {
	int32_t arg;
};

struct __attribute__((packed)) OpenParams {
	uint64_t name; /* GPA of the NUL-terminated path */
	int32_t flags;
	int32_t mode;
	int32_t ret;
};

struct __attribute__((packed)) CloseParams {
	int32_t fd;
	int32_t ret;
};

struct __attribute__((packed)) ReadParams {
	int32_t fd;
	uint64_t buf; /* guest-virtual address */
	uint64_t len;
	int64_t ret;
};

struct __attribute__((packed)) WriteParams {
	int32_t fd;
	uint64_t buf; /* guest-virtual address */
	uint64_t len; /* in: bytes to write; out: bytes written */
};

struct __attribute__((packed)) LseekParams {
	int32_t fd;
	int64_t offset; /* in: requested offset; out: resulting offset or -1 */
	int32_t whence;
};

struct __attribute__((packed)) UnlinkParams {
	uint64_t name; /* GPA of the path */
	int32_t ret;
};

struct __attribute__((packed)) SerialWriteBufferParams {
	uint64_t buf; /* guest-physical address */
	uint64_t len;
};

_Static_assert(sizeof(struct CmdsizeParams) == 1032, "CmdsizeParams size");
_Static_assert(offsetof(struct CmdsizeParams, envc) == 516, "CmdsizeParams.envc");
_Static_assert(offsetof(struct CmdsizeParams, envsz) == 520, "CmdsizeParams.envsz");
_Static_assert(sizeof(struct CmdvalParams) == 16, "CmdvalParams size");
_Static_assert(sizeof(struct ExitParams) == 4, "ExitParams size");
_Static_assert(sizeof(struct OpenParams) == 20, "OpenParams size");
_Static_assert(offsetof(struct OpenParams, ret) == 16, "OpenParams.ret");
_Static_assert(sizeof(struct CloseParams) == 8, "CloseParams size");
_Static_assert(sizeof(struct ReadParams) == 28, "ReadParams size");
_Static_assert(offsetof(struct ReadParams, buf) == 4, "ReadParams.buf");
_Static_assert(offsetof(struct ReadParams, ret) == 20, "ReadParams.ret");
_Static_assert(sizeof(struct WriteParams) == 20, "WriteParams size");
_Static_assert(offsetof(struct WriteParams, len) == 12, "WriteParams.len");
_Static_assert(sizeof(struct LseekParams) == 16, "LseekParams size");
_Static_assert(offsetof(struct LseekParams, whence) == 12, "LseekParams.whence");
_Static_assert(sizeof(struct UnlinkParams) == 12, "UnlinkParams size");
_Static_assert(sizeof(struct SerialWriteBufferParams) == 16, "SerialWriteBufferParams size");

/* ---- Boot info (hermit-abi.md section 2.1, x86_64 layout, 128 bytes) ---- */
#if defined(__aarch64__)
/* The aarch64 layout and the aarch64 transport. */
#include "aarch64/uhyve_a64.h"
#else
struct uhyve_boot_info {
	uint64_t phys_addr_start;
	uint64_t phys_addr_end;
	uint16_t serial_port_base;
	uint8_t pad0[6];
	uint64_t device_tree;
	uint64_t kernel_image_addr_start;
	uint64_t kernel_image_addr_end;
	uint64_t tls_start;
	uint64_t tls_filesz;
	uint64_t tls_memsz;
	uint64_t tls_align;
	uint32_t platform;
	uint32_t pad1;
	uint8_t has_pci;
	uint8_t pad2[7];
	uint64_t num_cpus;
	uint32_t cpu_freq;
	uint32_t pad3;
	uint64_t boot_time_lo;
	uint64_t boot_time_hi;
};

_Static_assert(sizeof(struct uhyve_boot_info) == 128, "boot info size");
_Static_assert(offsetof(struct uhyve_boot_info, device_tree) == 24, "boot info device_tree");
_Static_assert(offsetof(struct uhyve_boot_info, platform) == 80, "boot info platform");
_Static_assert(offsetof(struct uhyve_boot_info, has_pci) == 88, "boot info has_pci");
_Static_assert(offsetof(struct uhyve_boot_info, num_cpus) == 96, "boot info num_cpus");
_Static_assert(offsetof(struct uhyve_boot_info, cpu_freq) == 104, "boot info cpu_freq");
_Static_assert(offsetof(struct uhyve_boot_info, boot_time_lo) == 112, "boot info boot_time");

/* ---- Raw hypercalls ---- */

/* The low 32 bits of the guest-physical address of `p` (identity map: VA == GPA). */
static inline uint32_t uhyve_gpa32(const volatile void *p)
{
	return (uint32_t)(uintptr_t)p;
}

/* `out dx, eax`: the hypercall with a raw 32-bit value (normally a parameter-struct GPA). */
static inline void uhyve_out32(uint16_t port, uint32_t value)
{
	__asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

/* `out dx, al`. */
static inline void uhyve_out8(uint16_t port, uint8_t value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

/* Issue the hypercall at `port` with the parameter struct `params`. */
static inline void uhyve_hypercall(uint16_t port, volatile void *params)
{
	uhyve_out32(port, uhyve_gpa32(params));
}

/* Waits for an interrupt with interrupts off: stops this cpu for good. */
static inline void uhyve_halt(void)
{
	__asm__ volatile("cli; hlt");
}
#endif /* !__aarch64__ */

#ifndef UHYVE_V2
static inline void hc_putc(char c)
{
#if defined(__aarch64__)
	uhyve_a64_store(UHYVE_PORT_UART, (uint8_t)c);
#else
	uhyve_out8(UHYVE_PORT_UART, (uint8_t)c);
#endif
}

__attribute__((noreturn)) static inline void hc_exit(int code)
{
	volatile struct ExitParams p = {.arg = code};
	uhyve_hypercall(UHYVE_PORT_EXIT, &p);
	for (;;)
		uhyve_halt();
}

static inline void hc_write_buffer(const void *buf, uint64_t len)
{
	volatile struct SerialWriteBufferParams p = {.buf = (uintptr_t)buf, .len = len};
	uhyve_hypercall(UHYVE_PORT_SERIAL_WRITE_BUFFER, &p);
}

/* FileWrite; returns the `len` the host left in the struct (bytes written). */
static inline uint64_t hc_write(int fd, const void *buf, uint64_t len)
{
	volatile struct WriteParams p = {.fd = fd, .buf = (uintptr_t)buf, .len = len};
	uhyve_hypercall(UHYVE_PORT_FILE_WRITE, &p);
	return p.len;
}

static inline int hc_open(const char *path, int flags, int mode)
{
	volatile struct OpenParams p = {.name = (uintptr_t)path, .flags = flags, .mode = mode, .ret = -1};
	uhyve_hypercall(UHYVE_PORT_FILE_OPEN, &p);
	return p.ret;
}

static inline int hc_close(int fd)
{
	volatile struct CloseParams p = {.fd = fd, .ret = -1};
	uhyve_hypercall(UHYVE_PORT_FILE_CLOSE, &p);
	return p.ret;
}

/* FileRead with a raw 64-bit buffer address (which may deliberately be bogus). */
static inline int64_t hc_read_raw(int fd, uint64_t buf, uint64_t len)
{
	volatile struct ReadParams p = {.fd = fd, .buf = buf, .len = len, .ret = -1};
	uhyve_hypercall(UHYVE_PORT_FILE_READ, &p);
	return p.ret;
}

static inline int64_t hc_read(int fd, void *buf, uint64_t len)
{
	return hc_read_raw(fd, (uintptr_t)buf, len);
}

static inline int64_t hc_lseek(int fd, int64_t offset, int whence)
{
	volatile struct LseekParams p = {.fd = fd, .offset = offset, .whence = whence};
	uhyve_hypercall(UHYVE_PORT_FILE_LSEEK, &p);
	return p.offset;
}

static inline int hc_unlink(const char *path)
{
	volatile struct UnlinkParams p = {.name = (uintptr_t)path, .ret = -1};
	uhyve_hypercall(UHYVE_PORT_FILE_UNLINK, &p);
	return p.ret;
}

static inline void hc_cmdsize(struct CmdsizeParams *p)
{
	uhyve_hypercall(UHYVE_PORT_CMDSIZE, p);
}

static inline void hc_cmdval(struct CmdvalParams *p)
{
	uhyve_hypercall(UHYVE_PORT_CMDVAL, p);
}
#endif /* !UHYVE_V2 */

/* ---- Runtime (rt/runtime.c) ---- */

/* The boot info uhyve passed in RDI (aarch64: X0). */
extern const struct uhyve_boot_info *uhyve_boot_info;

/* Each guest defines main(); its return value becomes the Exit hypercall's code. */
int main(void);

/* freestanding string helpers (gcc may also call the mem* ones for struct copies) */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);

/* Console output, byte by byte through hc_putc (v1: the Uart port 0x800; v2: SerialWriteByte). */
void put_str(const char *s);
void put_bytes(const char *s, size_t n);
void put_dec(int64_t v);
void put_hex(uint64_t v);
/* Prints "<name>: ok\n" or "<name>: FAIL (got <got>)\n"; counts failures. */
void check(const char *name, int ok, int64_t got);
/* Number of failed check() calls so far. */
extern int check_failures;

/* Parses an optionally signed decimal integer; returns 0 on success, -1 on malformed input. */
int parse_int(const char *s, int64_t *out);

/* Bump allocator over a static arena; returns NULL when exhausted. Alignment 16. */
void *arena_alloc(size_t n);

#ifndef UHYVE_V2
/* argv/envp fetched with Cmdsize + Cmdval into arena buffers (NULL-terminated arrays). */
struct uhyve_args {
	int argc;
	char **argv;
	int envc;
	char **envp;
	/* Items the host wrote past their announced size or left unterminated. */
	int violations;
};

/* Fetches the arguments and environment; returns 0, or -1 if the host reported nonsense sizes. */
int uhyve_get_args(struct uhyve_args *out);
#endif /* !UHYVE_V2 */

/* ---- Device tree ---- */

/* Big-endian loads (device-tree cells). */
uint32_t fdt_be32(const void *p);
uint64_t fdt_be64(const void *p);
/* The value (and its length in *len) of property `prop` of the node `node` (or `node@unit`)
 * directly below the root of the device tree the boot info points to, or NULL. */
const char *fdt_property(const char *node, const char *prop, uint32_t *len);

/* ---- Notes: posing as a newer Hermit kernel ---- */
struct uhyve_note_abi_tag {
	uint32_t namesz, descsz, type;
	char name[4];
	uint32_t desc[4];
};

struct uhyve_note_interface {
	uint32_t namesz, descsz, type;
	char name[8];
	uint8_t desc[4]; /* big-endian u32 */
};

/*
 * At file scope, UHYVE_KERNEL_NOTES(13, 2, 1); makes the guest a Hermit 0.13.2 kernel (GNU
 * ABI-tag note, OS 6 = Hermit) speaking uhyve interface 1 (UHYVEIF note); rt/guest.ld and
 * v2/rt/guest.ld put both into the PT_NOTE segment after the entry-version note of rt/start.S.
 */
#define UHYVE_KERNEL_NOTES(minor, patch, interface)                                        \
	__attribute__((section(".note.ABI-tag"), used, aligned(4))) static const struct      \
		uhyve_note_abi_tag uhyve_abi_tag = {4, 16, 1, "GNU", {6, 0, (minor), (patch)}}; \
	__attribute__((section(".note.hermit.uhyve-interface-version"), used, aligned(4)))  \
		static const struct uhyve_note_interface uhyve_interface_note = {            \
			8, 4, 0x5B00, "UHYVEIF", {0, 0, 0, (interface)}}

#endif
