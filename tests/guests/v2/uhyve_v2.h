/*
 * uhyve_v2.h: the hypercall interfaces v2 and v3 (x86_64, and aarch64 for the guests of
 * ../aarch64/v2/) as seen from a test guest, and the parts of the runtime only v2/v3 guests have
 * (rt/runtime_v2.c). Everything shared with the v1 guests (boot info, open flags, errno values,
 * the packed Open/Close/Unlink structs that v2 keeps, string and console helpers) comes from
 * ../uhyve.h.
 *
 * Transport (hermit-abi.md section 6.1): `out dx, eax` with DX = the address (a port number),
 * EAX = anything and RDI = the whole 64-bit argument: the guest-physical address of the parameter
 * struct, the exit code (an i32 zero-extended) for Exit, the byte for SerialWriteByte.
 * SerialReadByte is an `in` from its address. Buffers inside parameter structs are
 * guest-physical; the guest's RAM starts at 4 GiB and uhyve identity-maps it, so the address of a
 * stack or static variable is its guest-physical address. Results are the value or a negative
 * errno (v3: a tag and an errno).
 *
 * On aarch64 (compiled for __aarch64__) a hypercall is a plain 64-bit `str` of the argument to the
 * virtual address = the hypercall address: uhyve's boot tables map virtual 0 .. 16 KiB to its
 * hypercall window, the first 16 KiB of RAM (see ../aarch64/uhyve_a64.h). SerialReadByte is a
 * load from its address. The wrappers for these keep the x86 names (uhyve_v2_out, uhyve_in8 ...),
 * so that the guests' sources serve both architectures; the aarch64 runtime maps all of RAM
 * identically too (../aarch64/v2/rt/runtime_v2_a64.c), so addresses are guest-physical there as
 * well.
 *
 * The natural-layout parameter structs mirror interface/src/v2.rs with their padding spelled out;
 * sizes and offsets are checked below. The wrappers preset every result field (HC_UNSET, or the
 * None tag) so that a call uhyve ignored is visible.
 */
#ifndef UHYVE_GUEST_V2_H
#define UHYVE_GUEST_V2_H

#ifndef UHYVE_V2
#error "v2/v3 guests are compiled with -DUHYVE_V2 (tests/guest-images/build.rs does so for v2/*.c)"
#endif

#include "../uhyve.h"

/* ---- Addresses (interface/src/v2.rs, HypercallAddressV2) ---- */
#define UHYVE_V2_EXIT 0x1010
#define UHYVE_V2_SERIAL_WRITE_BYTE 0x1020
#define UHYVE_V2_SERIAL_WRITE_BUFFER 0x1030
#define UHYVE_V2_SERIAL_READ_BYTE 0x1040
#define UHYVE_V2_SERIAL_READ_BUFFER 0x1050
#define UHYVE_V2_FILE_WRITE 0x1100
#define UHYVE_V2_FILE_OPEN 0x1110
#define UHYVE_V2_FILE_CLOSE 0x1120
#define UHYVE_V2_FILE_READ 0x1130
#define UHYVE_V2_FILE_LSEEK 0x1140
#define UHYVE_V2_FILE_UNLINK 0x1150
/* Version 3 only. */
#define UHYVE_V3_GETDENTS 0x1160
#define UHYVE_V3_FILE_STAT 0x1170
#define UHYVE_V3_FILE_FSTAT 0x1180
#define UHYVE_V3_MKDIR 0x1190
/* Reserved, not served. */
#define UHYVE_V2_SHARED_MEM_OPEN 0x1200
#define UHYVE_V2_SHARED_MEM_CLOSE 0x1210

#define ENOTDIR 20

/* What the wrappers preset a result to: a value no hypercall returns. */
#define HC_UNSET (-999999)

/* GetdentResult tags. */
#define GETDENT_NONE 0
#define GETDENT_SUCCESS 1
#define GETDENT_END_OF_DIRECTORY 2
#define GETDENT_ERROR 3

/* StatusResult tags (Mkdir, FileStat, FileFstat). */
#define STATUS_NONE 0
#define STATUS_SUCCESS 1
#define STATUS_ERROR 2

/* FileStat kinds. */
#define STAT_FOLLOW 0
#define STAT_NO_FOLLOW 1

/* st_mode file types and d_type values (Linux numbering). */
#define S_IFMT 0170000
#define S_IFDIR 0040000
#define S_IFREG 0100000
#define S_IFLNK 0120000
#define DT_DIR 4
#define DT_REG 8
#define DT_LNK 10

/* ---- Parameter structs (natural layout, interface/src/v2.rs) ---- */
struct WriteParamsV2 {
	uint64_t len;
	int64_t ret; /* bytes written or -errno */
	uint64_t buf;
	int32_t fd;
	uint32_t pad;
};

struct ReadParamsV2 {
	uint64_t len;
	int64_t ret; /* bytes read or -errno */
	uint64_t buf;
	int32_t fd;
	uint32_t pad;
};

struct LseekParamsV2 {
	int64_t offset; /* in: requested; out: resulting offset or -errno */
	uint32_t whence;
	int32_t fd;
};

struct SerialWriteBufferParamsV2 {
	uint64_t len; /* note: len before buf, unlike v1 */
	uint64_t buf;
};

struct SerialReadBufferParams {
	uint64_t maxlen;
	uint64_t len; /* out: bytes read, 0 at the end of the input */
	uint64_t buf;
};

struct GetdentResult {
	uint32_t tag;
	uint32_t pad;
	uint64_t value; /* SUCCESS: bytes written; ERROR: the errno in the low 32 bits */
};

struct GetdentParams {
	int32_t fd;
	uint32_t pad;
	uint64_t buf;
	uint64_t len;
	struct GetdentResult ret;
};

struct StatusResult {
	uint32_t tag;
	int32_t err; /* the (positive) errno when tag is STATUS_ERROR */
};

struct MkdirParams {
	uint64_t path;
	uint64_t len; /* the path's length, with or without its NUL */
	struct StatusResult ret;
};

struct StatParams {
	uint64_t name;
	uint32_t kind;
	uint32_t pad;
	uint64_t attr;
	struct StatusResult ret;
};

struct FstatParams {
	int32_t fd;
	uint32_t pad;
	uint64_t attr;
	struct StatusResult ret;
};

struct Timespec {
	int64_t tv_sec;
	int32_t tv_nsec;
	uint32_t pad;
};

struct FileAttr {
	uint64_t st_dev;
	uint64_t st_ino;
	uint64_t st_nlink;
	uint32_t st_mode;
	uint32_t st_uid;
	uint32_t st_gid;
	uint32_t pad;
	uint64_t st_rdev;
	int64_t st_size;
	int64_t st_blksize;
	int64_t st_blocks;
	struct Timespec st_atim;
	struct Timespec st_mtim;
	struct Timespec st_ctim;
};

/* A record Getdents writes (Linux dirent64); d_reclen is a multiple of 8. */
struct Dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	uint16_t d_reclen;
	uint8_t d_type;
	char d_name[];
};

_Static_assert(sizeof(struct WriteParamsV2) == 32, "WriteParamsV2 size");
_Static_assert(offsetof(struct WriteParamsV2, buf) == 16, "WriteParamsV2.buf");
_Static_assert(offsetof(struct WriteParamsV2, fd) == 24, "WriteParamsV2.fd");
_Static_assert(sizeof(struct ReadParamsV2) == 32, "ReadParamsV2 size");
_Static_assert(offsetof(struct ReadParamsV2, fd) == 24, "ReadParamsV2.fd");
_Static_assert(sizeof(struct LseekParamsV2) == 16, "LseekParamsV2 size");
_Static_assert(offsetof(struct LseekParamsV2, fd) == 12, "LseekParamsV2.fd");
_Static_assert(sizeof(struct SerialWriteBufferParamsV2) == 16, "SerialWriteBufferParamsV2");
_Static_assert(sizeof(struct SerialReadBufferParams) == 24, "SerialReadBufferParams size");
_Static_assert(offsetof(struct SerialReadBufferParams, buf) == 16, "SerialReadBufferParams.buf");
_Static_assert(sizeof(struct GetdentParams) == 40, "GetdentParams size");
_Static_assert(offsetof(struct GetdentParams, ret) == 24, "GetdentParams.ret");
_Static_assert(sizeof(struct MkdirParams) == 24, "MkdirParams size");
_Static_assert(sizeof(struct StatParams) == 32, "StatParams size");
_Static_assert(offsetof(struct StatParams, attr) == 16, "StatParams.attr");
_Static_assert(sizeof(struct FstatParams) == 24, "FstatParams size");
_Static_assert(sizeof(struct FileAttr) == 120, "FileAttr size");
_Static_assert(offsetof(struct FileAttr, st_mode) == 24, "FileAttr.st_mode");
_Static_assert(offsetof(struct FileAttr, st_size) == 48, "FileAttr.st_size");
_Static_assert(offsetof(struct FileAttr, st_mtim) == 88, "FileAttr.st_mtim");
_Static_assert(offsetof(struct Dirent64, d_name) == 19, "Dirent64.d_name");

/* ---- The notes that make an image a v2/v3 guest ---- */
/*
 * Every v2/v3 guest states its interface version at file scope: UHYVE_INTERFACE_NOTES(3);
 * It poses as a kernel newer than the last release (0.14.0; a kernel `main` speaks v2/v3).
 */
#define UHYVE_INTERFACE_NOTES(version) UHYVE_KERNEL_NOTES(14, 0, version)

/* ---- Raw transport ---- */

#if defined(__aarch64__)
/* `str` of `argument` to the virtual address `address`: the v2/v3 hypercall at `address`. */
static inline void uhyve_v2_out(uint16_t address, uint64_t argument)
{
	uhyve_a64_store(address, argument);
}

/* Loads of 1, 2, 4 or 8 bytes from the virtual address `address` (the hypercall window): `ldrb`,
 * `ldrh`, `ldr w`, `ldr x` with an immediate offset, forms that have an instruction syndrome. */
static inline uint8_t uhyve_in8(uint16_t address)
{
	uint32_t value;
	__asm__ volatile("ldrb %w0, [%x1]" : "=r"(value) : "r"((uint64_t)address) : "memory");
	return (uint8_t)value;
}

static inline uint16_t uhyve_in16(uint16_t address)
{
	uint32_t value;
	__asm__ volatile("ldrh %w0, [%x1]" : "=r"(value) : "r"((uint64_t)address) : "memory");
	return (uint16_t)value;
}

static inline uint32_t uhyve_in32(uint16_t address)
{
	uint32_t value;
	__asm__ volatile("ldr %w0, [%x1]" : "=r"(value) : "r"((uint64_t)address) : "memory");
	return value;
}

static inline uint64_t uhyve_in64(uint16_t address)
{
	uint64_t value;
	__asm__ volatile("ldr %x0, [%x1]" : "=r"(value) : "r"((uint64_t)address) : "memory");
	return value;
}
#else
/* `out dx, eax` with RDI = `argument`: the v2/v3 hypercall at `address`. */
static inline void uhyve_v2_out(uint16_t address, uint64_t argument)
{
	__asm__ volatile("outl %%eax, %%dx" : : "a"(0x1234u), "d"(address), "D"(argument) : "memory");
}

/* `in` of 1, 2 or 4 bytes from `port`. */
static inline uint8_t uhyve_in8(uint16_t port)
{
	uint8_t value;
	__asm__ volatile("inb %%dx, %%al" : "=a"(value) : "d"(port) : "memory");
	return value;
}

static inline uint16_t uhyve_in16(uint16_t port)
{
	uint16_t value;
	__asm__ volatile("inw %%dx, %%ax" : "=a"(value) : "d"(port) : "memory");
	return value;
}

static inline uint32_t uhyve_in32(uint16_t port)
{
	uint32_t value;
	__asm__ volatile("inl %%dx, %%eax" : "=a"(value) : "d"(port) : "memory");
	return value;
}
#endif /* !__aarch64__ */

/* The guest-physical address of `p` (identity map: VA == GPA). */
static inline uint64_t gpa(const volatile void *p)
{
	return (uint64_t)(uintptr_t)p;
}

/* ---- Hypercalls ---- */

__attribute__((noreturn)) static inline void hc_exit(int code)
{
	/* Hermit passes the i32 zero-extended. */
	uhyve_v2_out(UHYVE_V2_EXIT, (uint32_t)code);
	for (;;)
		uhyve_halt();
}

static inline void hc_putc(char c)
{
	uhyve_v2_out(UHYVE_V2_SERIAL_WRITE_BYTE, (uint8_t)c);
}

static inline void hc_write_buffer_raw(uint64_t buf, uint64_t len)
{
	struct SerialWriteBufferParamsV2 p = {.len = len, .buf = buf};
	uhyve_v2_out(UHYVE_V2_SERIAL_WRITE_BUFFER, gpa(&p));
}

static inline void hc_write_buffer(const void *buf, uint64_t len)
{
	hc_write_buffer_raw(gpa(buf), len);
}

/* SerialReadByte as a 4-byte `in` (aarch64: `ldr w`): the byte zero-extended, all-ones at the end
 * of the input. */
static inline uint32_t hc_read_byte(void)
{
	return uhyve_in32(UHYVE_V2_SERIAL_READ_BYTE);
}

/* SerialReadBuffer: the `len` uhyve reports (0 at the end of the input). */
static inline uint64_t hc_read_buffer_raw(uint64_t buf, uint64_t maxlen)
{
	struct SerialReadBufferParams p = {.maxlen = maxlen, .len = (uint64_t)HC_UNSET, .buf = buf};
	uhyve_v2_out(UHYVE_V2_SERIAL_READ_BUFFER, gpa(&p));
	return p.len;
}

static inline uint64_t hc_read_buffer(void *buf, uint64_t maxlen)
{
	return hc_read_buffer_raw(gpa(buf), maxlen);
}

static inline int64_t hc_write_raw(int fd, uint64_t buf, uint64_t len)
{
	struct WriteParamsV2 p = {.len = len, .ret = HC_UNSET, .buf = buf, .fd = fd};
	uhyve_v2_out(UHYVE_V2_FILE_WRITE, gpa(&p));
	return p.ret;
}

static inline int64_t hc_write(int fd, const void *buf, uint64_t len)
{
	return hc_write_raw(fd, gpa(buf), len);
}

static inline int64_t hc_read_raw(int fd, uint64_t buf, uint64_t len)
{
	struct ReadParamsV2 p = {.len = len, .ret = HC_UNSET, .buf = buf, .fd = fd};
	uhyve_v2_out(UHYVE_V2_FILE_READ, gpa(&p));
	return p.ret;
}

static inline int64_t hc_read(int fd, void *buf, uint64_t len)
{
	return hc_read_raw(fd, gpa(buf), len);
}

static inline int64_t hc_lseek(int fd, int64_t offset, uint32_t whence)
{
	struct LseekParamsV2 p = {.offset = offset, .whence = whence, .fd = fd};
	uhyve_v2_out(UHYVE_V2_FILE_LSEEK, gpa(&p));
	return p.offset;
}

/* FileOpen with the packed v1 OpenParams: the new fd or -errno. */
static inline int hc_open_raw(uint64_t name, int flags, int mode)
{
	struct OpenParams p = {.name = name, .flags = flags, .mode = mode, .ret = HC_UNSET};
	uhyve_v2_out(UHYVE_V2_FILE_OPEN, gpa(&p));
	return p.ret;
}

static inline int hc_open(const char *path, int flags, int mode)
{
	return hc_open_raw(gpa(path), flags, mode);
}

static inline int hc_close(int fd)
{
	struct CloseParams p = {.fd = fd, .ret = HC_UNSET};
	uhyve_v2_out(UHYVE_V2_FILE_CLOSE, gpa(&p));
	return p.ret;
}

static inline int hc_unlink_raw(uint64_t name)
{
	struct UnlinkParams p = {.name = name, .ret = HC_UNSET};
	uhyve_v2_out(UHYVE_V2_FILE_UNLINK, gpa(&p));
	return p.ret;
}

static inline int hc_unlink(const char *path)
{
	return hc_unlink_raw(gpa(path));
}

static inline struct GetdentResult hc_getdents_raw(int fd, uint64_t buf, uint64_t len)
{
	struct GetdentParams p = {.fd = fd, .buf = buf, .len = len, .ret = {.tag = GETDENT_NONE}};
	uhyve_v2_out(UHYVE_V3_GETDENTS, gpa(&p));
	return p.ret;
}

static inline struct GetdentResult hc_getdents(int fd, void *buf, uint64_t len)
{
	return hc_getdents_raw(fd, gpa(buf), len);
}

static inline struct StatusResult hc_stat_raw(uint64_t name, uint32_t kind, uint64_t attr)
{
	struct StatParams p = {.name = name, .kind = kind, .attr = attr, .ret = {.tag = STATUS_NONE}};
	uhyve_v2_out(UHYVE_V3_FILE_STAT, gpa(&p));
	return p.ret;
}

static inline struct StatusResult hc_stat(const char *path, uint32_t kind, struct FileAttr *attr)
{
	return hc_stat_raw(gpa(path), kind, gpa(attr));
}

static inline struct StatusResult hc_fstat_raw(int fd, uint64_t attr)
{
	struct FstatParams p = {.fd = fd, .attr = attr, .ret = {.tag = STATUS_NONE}};
	uhyve_v2_out(UHYVE_V3_FILE_FSTAT, gpa(&p));
	return p.ret;
}

static inline struct StatusResult hc_fstat(int fd, struct FileAttr *attr)
{
	return hc_fstat_raw(fd, gpa(attr));
}

static inline struct StatusResult hc_mkdir_raw(uint64_t path, uint64_t len)
{
	struct MkdirParams p = {.path = path, .len = len, .ret = {.tag = STATUS_NONE}};
	uhyve_v2_out(UHYVE_V3_MKDIR, gpa(&p));
	return p.ret;
}

/* Mkdir of a NUL-terminated path, passing its length without the NUL. */
static inline struct StatusResult hc_mkdir(const char *path)
{
	return hc_mkdir_raw(gpa(path), strlen(path));
}

/* ---- Result checks ---- */

/* Whether a v3 status is success, or the error `err`. */
static inline int status_ok(struct StatusResult r)
{
	return r.tag == STATUS_SUCCESS && r.err == 0;
}

static inline int status_err(struct StatusResult r, int err)
{
	return r.tag == STATUS_ERROR && r.err == err;
}

/* A status folded into one number for check(): 0 success, the errno, or -(100 + tag). */
static inline int64_t status_value(struct StatusResult r)
{
	if (r.tag == STATUS_SUCCESS)
		return 0;
	if (r.tag == STATUS_ERROR)
		return r.err;
	return -100 - (int64_t)r.tag;
}

static inline int getdent_err(struct GetdentResult r, int err)
{
	return r.tag == GETDENT_ERROR && (int32_t)r.value == err;
}

/* A Getdents result folded into one number: the bytes, the errno negated, or -(100 + tag). */
static inline int64_t getdent_value(struct GetdentResult r)
{
	if (r.tag == GETDENT_SUCCESS)
		return (int64_t)r.value;
	if (r.tag == GETDENT_ERROR)
		return -(int64_t)(int32_t)r.value;
	return -100 - (int64_t)r.tag;
}

/* ---- v2 runtime (rt/runtime_v2.c) ---- */

/* Run by the runtime before main: extends uhyve's identity map (which only covers the start of
 * RAM up to the image) to all of RAM with 2 MiB pages (aarch64: 2 MiB blocks, and 4 KiB pages
 * next to the image; ../aarch64/v2/rt/runtime_v2_a64.c); stops the guest if it cannot. */
void uhyve_v2_start(void);

/* Guest RAM [v2_ram_start(), v2_ram_end()) from the boot info; all of it is mapped. */
uint64_t v2_ram_start(void);
uint64_t v2_ram_end(void);


/* The application arguments: the words after `--` in FDT /chosen/bootargs, split with the shell
 * quoting rules uhyve uses. Returns their number (at most 64) and sets *argv (NULL-terminated). */
int uhyve_v2_args(char ***argv);

/* Prints `n` bytes, printable ASCII as is and every other byte as \xNN. */
void put_escaped(const char *s, size_t n);

#endif
